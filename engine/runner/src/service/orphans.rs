//! Stopping the programs a dead engine left running: every launch recorded under the run's
//! state folder whose program (pid and start time) still runs, or whose process group is alive.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// SIGTERM, then SIGKILL after `grace`, to each surviving program group of the run whose
/// launches' state is under `state` ([`crate::Workspace::state_dir`]).
pub(super) async fn stop(state: &Path, grace: Duration) {
    for pgid in surviving_groups(state) {
        kiln_supervisor::terminate_group(pgid, grace).await;
    }
}

/// Process groups of launches under `state` whose program is still the recorded process.
fn surviving_groups(state: &Path) -> Vec<i32> {
    let mut groups = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![state.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n == "child.json")
                && let Ok(Some(child)) = kiln_supervisor::read_child(&dir)
            {
                let identity = kiln_supervisor::ProcessIdentity {
                    pid: child.pid,
                    start_ticks: child.start_ticks,
                };
                if identity.is_running() || kiln_supervisor::group_alive(child.pgid) {
                    groups.push(child.pgid);
                }
            }
        }
    }
    groups
}
