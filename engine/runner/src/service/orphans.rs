//! Stopping the programs a dead engine left running: every launch recorded under the run's
//! state folder whose program (pid and start time) still runs, or whose process group is alive,
//! and every Slurm job recorded there that has not ended.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_supervisor::{Launcher, SlurmOptions};

/// SIGTERM, then SIGKILL after `grace`, to each surviving program group of the run whose
/// launches' state is under `state` ([`crate::Workspace::state_dir`]); Slurm jobs are cancelled
/// the same way (`scancel`), asking Slurm with the workspace's `launcher` options.
///
/// A launch recorded on another machine (or container) is asked to stop through its
/// supervisor (a stop request in its state folder) and waited for until it ends or its
/// supervisor falls silent (which stops it); one that does neither in time is returned, and the
/// run must not be recorded cancelled.
pub(super) async fn stop(
    state: &Path,
    launcher: &Launcher,
    grace: Duration,
) -> Result<(), Vec<String>> {
    let Survivors {
        groups,
        jobs,
        unrecorded,
        foreign,
    } = survivors(state);
    let mut unstopped = Vec::new();
    for (dir, what) in foreign {
        if !kiln_supervisor::stop_by_request(&dir, grace).await {
            unstopped.push(what);
        }
    }
    if !unstopped.is_empty() {
        return Err(unstopped);
    }
    let slurm = match launcher {
        Launcher::Slurm(options) => options.clone(),
        // Launched under Slurm before the workspace went back to local: ask on PATH.
        Launcher::Local => SlurmOptions::default(),
    };
    for id in jobs {
        match slurm.state(&id).await {
            Ok(s) if s.is_ended() => {}
            _ => slurm.terminate(&id, grace).await,
        }
    }
    // Submitted by an engine that died before it recorded the job id: found by the job's name.
    for dir in unrecorded {
        slurm.cancel_launch(&dir, grace).await;
    }
    for pgid in groups {
        kiln_supervisor::terminate_group(pgid, grace).await;
    }
    Ok(())
}

/// What a dead engine left under a run's state folder.
struct Survivors {
    /// Process groups of launches whose program is still the recorded process.
    groups: Vec<i32>,
    /// Slurm jobs recorded there.
    jobs: Vec<String>,
    /// Launches submitted to Slurm without a recorded job id.
    unrecorded: Vec<PathBuf>,
    /// Launches of another machine without a recorded exit: their folder, and "pid P on
    /// HOST".
    foreign: Vec<(PathBuf, String)>,
}

fn survivors(state: &Path) -> Survivors {
    let mut groups = Vec::new();
    let mut jobs = Vec::new();
    let mut unrecorded = Vec::new();
    let mut foreign = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![state.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        if let Ok(Some(job)) = kiln_supervisor::slurm::read_job(&dir) {
            jobs.push(job.job_id);
            continue;
        }
        if dir.join("slurm-job.sh").is_file() {
            unrecorded.push(dir.clone());
            continue;
        }
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n == "child.json")
                && let Ok(Some(child)) = kiln_supervisor::read_child(&dir)
            {
                if !child.is_local() {
                    // Asked to stop whatever its heartbeat says: a supervisor that beats again
                    // later (its folder was out of reach) must not go on.
                    if matches!(kiln_supervisor::read_exit(&dir), Ok(None)) {
                        foreign.push((dir.clone(), format!("pid {} on {}", child.pid, child.host)));
                    }
                    continue;
                }
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
    Survivors {
        groups,
        jobs,
        unrecorded,
        foreign,
    }
}
