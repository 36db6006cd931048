//! The on-disk records shared by the engine and the supervisor.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub(crate) const SPEC_FILE: &str = "spec.json";
pub(crate) const CHILD_FILE: &str = "child.json";
pub(crate) const EXIT_FILE: &str = "exit.json";
/// Rewritten by the supervisor every second while the program runs: engines that cannot see
/// its processes (another machine or container) know from it that it still runs.
pub(crate) const HEARTBEAT_FILE: &str = "heartbeat";
/// Written by an engine that cannot signal the program itself (see [`HEARTBEAT_FILE`]): the
/// grace in seconds; the supervisor then stops the program's group (SIGTERM, SIGKILL after the
/// grace).
pub(crate) const STOP_FILE: &str = "stop-request";

/// What to run. The environment is complete: nothing is inherited from the engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaunchSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// stdout and stderr are appended here.
    pub log_path: PathBuf,
    /// Variables taken from the supervisor's own environment when it has them: what a
    /// scheduler sets for the job, e.g. Slurm's CUDA_VISIBLE_DEVICES for `--gres=gpu:N`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherit_env: Vec<String>,
    /// The program is killed when its supervisor dies (a job that a scheduler kills must not
    /// leave it running, out of the scheduler's sight). Locally the program outlives a killed
    /// supervisor, which the engine then reports as lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub die_with_supervisor: bool,
    /// [`crate::machine_id`] of the engine that wrote it (set when the launch is written):
    /// only there can a supervisor about to start be seen in `/proc`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine: String,
}

/// The started program, as recorded by the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChildRecord {
    pub pid: i32,
    /// The program leads its own process group: pgid == pid.
    pub pgid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): with the pid it
    /// identifies the process even after the pid is recycled.
    pub start_ticks: u64,
    pub supervisor_pid: i32,
    /// Start time of the supervisor, like `start_ticks`.
    #[serde(default)]
    pub supervisor_start_ticks: u64,
    pub started_at: String,
    /// Where the pids above mean something: [`crate::machine_id`] of the supervisor (empty in
    /// records of earlier versions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine: String,
    /// The supervisor's host name, for messages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

impl ChildRecord {
    /// Whether its pids are this machine's (see [`crate::machine_id`]; records of earlier
    /// versions name no machine and are taken as this one's).
    pub fn is_local(&self) -> bool {
        self.machine.is_empty() || self.machine == crate::machine_id()
    }
}

/// How the program ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the program could not be started at all.
    pub start_error: Option<String>,
    pub finished_at: String,
    /// The first termination signal the supervisor received and passed on to the program (a
    /// scheduler stopping the job), when it got one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_signal: Option<i32>,
}

impl ExitRecord {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// "exit code 1", "killed by signal 15 (SIGTERM)", or the start error.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.start_error {
            return format!("could not start: {e}");
        }
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}{}", signal_name(s)),
            (None, None) => "ended with an unknown status".into(),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// How a record must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Survives a crash of any process (written to a temp file, renamed over: readers see all
    /// of it or nothing), not a crash of the machine. For the records of a program that a
    /// machine crash kills anyway: `spec.json` and `child.json`. After a reboot such a record may
    /// be missing or unreadable; [`read_json`] then reads it as absent (see there).
    Process,
    /// Also survives a crash of the machine (the file and the rename fsynced): `exit.json`, the
    /// one record that outlives its program.
    Machine,
}

/// Write `value` as JSON to `path` so that readers see either nothing or the whole record.
pub(crate) fn write_json_atomic<T: Serialize>(
    path: &Path,
    value: &T,
    durability: Durability,
) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
        if durability == Durability::Machine {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if durability == Durability::Machine {
        sync_folder_of(path)?;
    }
    Ok(())
}

/// Make the rename into `path` durable: fsync its folder.
fn sync_folder_of(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Make a record written with [`Durability::Process`] survive a crash of the machine as
/// [`Durability::Machine`] does: the file, then its folder (the rename), fsynced. Until this
/// returns, a machine crash may leave it missing or empty, which [`read_json`] reads as absent.
pub(crate) fn make_durable(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    sync_folder_of(path)
}

/// Writes `value` to `path` as [`write_json_atomic`] does (not fsynced), but only if `path`
/// does not exist: the complete file appears at once or the write fails with `AlreadyExists`
/// (a hard link to a temporary file, which never replaces).
///
/// On a file system without hard links (some FUSE and SMB mounts) the file is created with
/// `O_EXCL` and written in place instead: still exclusive, but a reader may briefly see it
/// incomplete.
pub(crate) fn write_json_new<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.{}-{n}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            file.write_all(&bytes)
        }
        done => done,
    }
}

/// When this machine booted (`btime` of /proc/stat), if known.
fn boot_time() -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Whether `path` was last written before this machine booted: whatever it describes is not
/// running any more, and a record of it that was not fsynced may have lost its content.
fn written_before_boot(path: &Path) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    matches!((modified, boot_time()), (Some(m), Some(boot)) if m < boot)
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Some(value)),
            // A record written with `Durability::Process` before a machine crash: the program
            // it describes died with the machine. Absent, not corrupt: the launch is then "not
            // started" (and starts) or "lost" (an infrastructure failure, retried).
            Err(e) if written_before_boot(path) => {
                tracing::warn!(
                    "{} was written before the last reboot and cannot be read ({e}); reading it \
                     as absent",
                    path.display()
                );
                Ok(None)
            }
            Err(e) => Err(Error::Record {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Record {
            path: path.to_owned(),
            message: e.to_string(),
        }),
    }
}

pub fn read_spec(state_dir: &Path) -> Result<Option<LaunchSpec>> {
    read_json(&state_dir.join(SPEC_FILE))
}

pub fn read_child(state_dir: &Path) -> Result<Option<ChildRecord>> {
    read_json(&state_dir.join(CHILD_FILE))
}

pub fn read_exit(state_dir: &Path) -> Result<Option<ExitRecord>> {
    read_json(&state_dir.join(EXIT_FILE))
}
