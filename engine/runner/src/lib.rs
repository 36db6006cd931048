//! Running workflows: the DAG executor, the builtin steps and the workspace layout.
//!
//! A run flows: [`Runner::create`] records the run and its planned steps (`queued`), then
//! [`Runner::execute`] walks the DAG, rendering each step's inputs from params and upstream
//! outputs, running builtins in-process and plugin steps through `kiln-plugin-host`, persisting
//! every state change, log line, progress report and checkpoint through `kiln-store`.
//!
//! Architecture invariant: this crate wires the others together and holds the execution policy;
//! it never touches SQL (only `kiln-store`) or wasmtime (only `kiln-plugin-host`).

pub mod builtins;
mod catalog;
pub mod engine;
mod executor;
pub mod gpu;
pub mod launchers;
mod memo;
pub mod ownership;
pub mod service;
pub mod workspace;

pub use catalog::EngineCatalog;
pub use engine::{EngineSession, Requirements, RunLease};
pub use executor::{RunUpdate, Runner, RunnerConfig, stored_workflow};
pub use service::RunService;
pub use workspace::Workspace;

use std::path::{Path, PathBuf};

/// Errors of preparing or running a workflow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step's input is wrong; the message names the input and what to do.
    #[error("{0}")]
    Input(String),
    /// What the request would do belongs to another run (or to no run), or the run is not in
    /// a state that allows it; the message names the owner or the state and what to do.
    #[error("{0}")]
    Conflict(String),
    /// Something named in the request does not exist.
    #[error("{1}")]
    NotFound(Missing, String),
    #[error("no workflow named `{name}`; workflows: {}{}", if known.is_empty() { "none".to_owned() } else { known.join(", ") }, invalid.as_ref().map(|p| format!("\n{p}")).unwrap_or_default())]
    UnknownWorkflow {
        name: String,
        known: Vec<String>,
        /// The problem of a workflow file of that name that is invalid, if there is one.
        invalid: Option<String>,
    },
    /// The operator's configuration is broken; the message names the file.
    #[error("{0}")]
    Config(String),
    /// A plugin misbehaved (returned nothing usable, trapped, crashed).
    #[error("{0}")]
    Plugin(String),
    #[error("{doing} {path}: {source}")]
    Io {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another engine took the run over (or this one could not renew its lease): this
    /// process stopped acting on it; the run goes on with the new owner.
    #[error(
        "run {run}: this engine lost its lease ({reason}) and stopped executing it; the run continues on the engine that holds it now"
    )]
    LeaseLost { run: String, reason: String },
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    #[error(transparent)]
    Workflow(#[from] kiln_workflow::Diagnostics),
    #[error(transparent)]
    Params(#[from] kiln_workflow::ParamErrors),
    #[error(transparent)]
    Plugins(#[from] kiln_plugin_host::Error),
}

impl Error {
    pub(crate) fn io(doing: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            doing,
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`Error::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Framework,
    Task,
    Release,
    Training,
    Step,
}
