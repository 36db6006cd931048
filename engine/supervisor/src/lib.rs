//! Launching training programs so that they outlive the engine.
//!
//! The engine never spawns a training program directly. It writes a [`LaunchSpec`] into a
//! per-launch *state directory* and starts a small **supervisor** process (`kiln supervise DIR`,
//! the same binary) in a new session. The supervisor starts the program in its own process group,
//! sends its stdout and stderr to an append-only log file, and when the program ends writes the
//! exit status to `DIR/exit.json`. Every record is written atomically (temp file, fsync, rename),
//! so an engine that was killed and restarted can learn what happened from disk alone:
//!
//! ```text
//! DIR/spec.json    what to run (written by the engine)
//! DIR/child.json   pid, process group and start time of the program (written by the supervisor)
//! DIR/exit.json    exit code or signal, or why it could not start (written by the supervisor)
//! ```
//!
//! Architecture invariant: this crate knows nothing about plugins, workflows or the database.

mod proc_info;
mod records;
mod supervise;

pub use proc_info::{ProcessIdentity, group_alive, signal_group};
pub use records::{ChildRecord, ExitRecord, LaunchSpec, read_child, read_exit, read_spec};
pub use supervise::run as supervise_main;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Errors of launching and following supervised programs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write launch state in {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the supervisor {exe}: {source}")]
    SpawnSupervisor {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start `{program}`: {message}")]
    Start { program: String, message: String },
    #[error("the supervisor of `{program}` ended without recording an exit status (see {log})")]
    SupervisorLost { program: String, log: PathBuf },
    #[error("malformed supervisor record {path}: {message}")]
    Record { path: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A program running under a supervisor.
#[derive(Debug)]
pub struct Supervised {
    supervisor: tokio::process::Child,
    state_dir: PathBuf,
    child: ChildRecord,
    program: String,
}

impl Supervised {
    /// Start `spec` under a supervisor run from `supervisor_exe` (normally the `kiln` binary).
    /// Returns once the program has started, with its pid and process group known.
    pub async fn launch(
        supervisor_exe: &Path,
        state_dir: &Path,
        spec: &LaunchSpec,
    ) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|source| Error::State {
            path: state_dir.to_owned(),
            source,
        })?;
        records::write_json_atomic(&state_dir.join(records::SPEC_FILE), spec).map_err(
            |source| Error::State {
                path: state_dir.to_owned(),
                source,
            },
        )?;
        let supervisor_log =
            std::fs::File::create(state_dir.join("supervisor.log")).map_err(|source| {
                Error::State {
                    path: state_dir.to_owned(),
                    source,
                }
            })?;
        let mut supervisor = tokio::process::Command::new(supervisor_exe)
            .arg("supervise")
            .arg(state_dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(supervisor_log)
            // The supervisor must survive the engine: never kill it when the handle drops.
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| Error::SpawnSupervisor {
                exe: supervisor_exe.to_owned(),
                source,
            })?;
        let program = spec.program.display().to_string();
        // Wait for the supervisor to record the started child (or its failure to start).
        loop {
            if let Some(child) = records::read_child(state_dir)? {
                return Ok(Self {
                    supervisor,
                    state_dir: state_dir.to_owned(),
                    child,
                    program,
                });
            }
            if let Some(exit) = records::read_exit(state_dir)? {
                let message = exit
                    .start_error
                    .unwrap_or_else(|| "it exited before it was recorded".into());
                return Err(Error::Start { program, message });
            }
            if let Ok(Some(_)) = supervisor.try_wait() {
                // Re-check once: the records may have landed just before it exited.
                if let Some(exit) = records::read_exit(state_dir)? {
                    let message = exit.start_error.unwrap_or_else(|| "exited early".into());
                    return Err(Error::Start { program, message });
                }
                if records::read_child(state_dir)?.is_none() {
                    return Err(Error::SupervisorLost {
                        program,
                        log: state_dir.join("supervisor.log"),
                    });
                }
                continue;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The started program's identity (pid, process group, start time).
    pub fn child(&self) -> &ChildRecord {
        &self.child
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Wait for the program to end and return its recorded exit status. Does not hold a thread.
    pub async fn wait(&mut self) -> Result<ExitRecord> {
        let _ = self.supervisor.wait().await;
        records::read_exit(&self.state_dir)?.ok_or_else(|| Error::SupervisorLost {
            program: self.program.clone(),
            log: self.state_dir.join("supervisor.log"),
        })
    }

    /// The exit record if the program has already ended.
    pub fn try_exit(&mut self) -> Result<Option<ExitRecord>> {
        records::read_exit(&self.state_dir)
    }

    /// Ask the whole process group to stop: SIGTERM, then SIGKILL after `grace`.
    /// Returns once no process of the group remains.
    pub async fn terminate(&mut self, grace: Duration) {
        terminate_group(self.child.pgid, grace).await;
        let _ = self.supervisor.wait().await;
    }
}

/// SIGTERM a process group, wait up to `grace` for it to empty, then SIGKILL it and wait until it
/// is empty.
pub async fn terminate_group(pgid: i32, grace: Duration) {
    signal_group(pgid, proc_info::Sig::Term);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while group_alive(pgid) {
        signal_group(pgid, proc_info::Sig::Kill);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests;
