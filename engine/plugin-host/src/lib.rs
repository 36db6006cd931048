//! The WebAssembly plugin host: loads plugin components, sandboxes them, and serves their host
//! calls.
//!
//! Architecture invariant: this is the only crate that touches wasmtime. It knows nothing about
//! SQL or workflows: a step arrives as a [`StepInvocation`] and its logs, progress and checkpoints
//! leave as [`StepEvent`]s on a channel that the runner persists.
//!
//! Each host capability lives in its own module under [`capability`] and decides its own grants:
//! `log`, `progress` and `process` (launching granted programs under the supervisor).

mod bindings;
mod cache;
pub mod capability;
mod engine;
mod grants;
mod invocation;
mod registry;
mod sandbox;

pub use capability::process::{ProcessTracker, StopGuard, launch_log, programs_followed};
pub use engine::{HostConfig, InstanceSlot, MAX_INSTANCE_SLOTS, PluginEngine, SHORT_CALL_SLOTS};
pub use grants::{GrantError, Grants, PluginGrant};
pub use invocation::{
    BeforeLaunch, FailureKind, GpuGrant, GrantedDir, RetryContext, RetryReason, Role, StepEvent,
    StepFailure, StepInvocation,
};
pub use registry::{
    ActionInfo, INTERFACE_VERSION, InputInfo, InputKind, LoadedPlugin, OutputInfo, PluginInfo,
    PluginProblem, PluginRegistry, SUPPORTED_INTERFACES, check_plugin_name, interface_version,
};

use std::path::PathBuf;

/// Errors of loading plugins. Failures of a running step are [`StepFailure`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // `error`, not `source`: the message already says it (a chain would say it twice).
    #[error("cannot read plugin directory {path}: {error}")]
    ReadDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot read plugin {path}: {error}")]
    ReadPlugin {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a usable Kiln plugin component: {message}")]
    InvalidPlugin { path: PathBuf, message: String },
    #[error("plugins {first} and {second} both call themselves `{name}`; remove one")]
    DuplicatePlugin {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Grants(#[from] GrantError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
