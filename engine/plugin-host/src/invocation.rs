//! One step handed to a plugin, and what comes back.

use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::ProcessTracker;

pub use crate::capability::files::{GrantedDir, Role};

/// A step to run in a plugin.
#[derive(Debug, Clone)]
pub struct StepInvocation {
    pub run_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub action: String,
    /// The step's resolved `with` inputs (a JSON object).
    pub inputs: serde_json::Value,
    pub dirs: Vec<GrantedDir>,
    /// Folder for this step's process output, e.g. `<run>/logs`; launch N writes
    /// `<step>.log` (N = 1) or `<step>-N.log`.
    pub log_dir: PathBuf,
    /// Folder for the supervisor records of this step's launches.
    pub state_dir: PathBuf,
    /// Processes this step launched, so the runner can stop them on cancel or timeout.
    pub processes: ProcessTracker,
    /// Logs, progress and checkpoints are sent here as they happen.
    pub events: Option<tokio::sync::mpsc::UnboundedSender<StepEvent>>,
    /// Set when this attempt retries an earlier one.
    pub retry: Option<RetryContext>,
    /// GPU devices leased to the step (and the lock descriptors that hold them).
    pub gpus: Option<GpuGrant>,
    /// Where the step's programs run (here, or as Slurm jobs holding the step's GPUs).
    pub launcher: kiln_supervisor::Launcher,
    /// Awaited before each program the step launches (see [`BeforeLaunch`]).
    pub before_launch: Option<BeforeLaunch>,
}

type BeforeLaunchFn =
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// What must hold before a step launches a program: the runner makes the step's start (its
/// attempt number, which keys every launch) durable here, so a restarted engine re-attaches
/// instead of launching twice. An error refuses the launch.
#[derive(Clone)]
pub struct BeforeLaunch(Arc<BeforeLaunchFn>);

impl BeforeLaunch {
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(f())))
    }

    pub(crate) async fn run(&self) -> Result<(), String> {
        (self.0)().await
    }
}

impl std::fmt::Debug for BeforeLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeLaunch")
    }
}

/// Why an attempt runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    Failure,
    Infrastructure,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryContext {
    pub reason: RetryReason,
    pub previous_error: String,
}

/// GPUs leased to a step. Launched programs get `CUDA_VISIBLE_DEVICES` set to `devices`, and
/// inherit `lock_fds` so that the lease is held until the last process of the training exits,
/// even if the engine dies first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuGrant {
    pub devices: Vec<u32>,
    pub lock_fds: Vec<std::os::fd::RawFd>,
}

/// What a plugin reports while it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepEvent {
    Log {
        level: String,
        message: String,
    },
    Progress {
        percent: Option<f64>,
        epoch: Option<u32>,
        epochs: Option<u32>,
        metrics: serde_json::Map<String, serde_json::Value>,
        message: Option<String>,
    },
    Checkpoint {
        host_path: String,
        epoch: Option<u32>,
        best: bool,
    },
    /// A program was launched; its output is appended to `log_path`.
    Launched {
        program: String,
        pid: i32,
        log_path: PathBuf,
    },
}

/// Why a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The step's inputs are wrong.
    InvalidInput,
    /// The launched program (the trainer) failed.
    ProgramFailed,
    /// The plugin asked for something it was not granted.
    Denied,
    /// The plugin trapped, panicked, ran out of memory or CPU budget, or reported an internal
    /// error.
    Plugin,
    /// The machine or engine lost the step's program (it vanished without an exit status).
    Infrastructure,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StepFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl StepFailure {
    pub fn plugin(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Plugin,
            message: message.into(),
        }
    }
}
