//! Kiln workflows: parsing and validation of workflow YAML files.
//!
//! This crate never executes anything. It reads a workflow file ([`Workflow::load`]),
//! checks it against the actions that exist ([`Workflow::validate`] with a [`Catalog`]),
//! resolves params ([`resolve_params`]) and renders the `with` inputs of a step
//! ([`render_inputs`]) for the engine that runs it.
//!
//! Every problem is reported as a [`Diagnostic`] with the position of the offending node.

mod catalog;
mod diagnostic;
mod expr;
pub mod limits;
mod model;
mod params;
mod parse;
mod position;
mod validate;

use std::path::Path;

pub use catalog::{
    ActionSpec, Catalog, CatalogError, CatalogErrorKind, InputKind, InputSpec, MemoryCatalog,
};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use expr::{
    ExprContext, RenderBudget, RenderError, render_input, render_inputs, render_inputs_until,
};
pub use model::{
    DEFAULT_BACKOFF, MAX_RETRIES, MAX_RETRY_DELAY, ParamSpec, ParamType, Resources, RetryOn,
    RetryPolicy, Step, Timeout, Workflow,
};
pub use params::{ParamError, ParamErrors, resolve_params};
pub use parse::{is_label, is_plain_name};

impl Workflow {
    /// Reads and parses a workflow file (structural checks only; see [`Self::validate`]).
    /// Files over [`limits::MAX_FILE_BYTES`] are refused before they are read whole.
    pub fn load(path: impl AsRef<Path>) -> Result<Workflow, Diagnostics> {
        Self::load_with_source(path).map(|(workflow, _)| workflow)
    }

    /// [`Self::load`], with the text it parsed (read once: what is stored with a run is what
    /// was validated).
    pub fn load_with_source(path: impl AsRef<Path>) -> Result<(Workflow, String), Diagnostics> {
        let path = path.as_ref();
        let cannot_read = |err: std::io::Error| {
            Diagnostic::new(path, 1, 1, format!("cannot read workflow file: {err}"))
        };
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => {
                return Err(Diagnostic::new(path, 1, 1, "not a regular file".to_owned())
                    .with_help("give the path of a workflow file")
                    .into());
            }
            Ok(meta) if meta.len() > limits::MAX_FILE_BYTES as u64 => {
                return Err(parse::too_large(path, meta.len() as usize).into());
            }
            Ok(_) => {}
            Err(e) => return Err(cannot_read(e).into()),
        }
        let source = limits::read_text(path, limits::MAX_FILE_BYTES).map_err(cannot_read)?;
        let workflow = Self::parse(&source, path)?;
        Ok((workflow, source))
    }

    /// Parses a workflow from its source: YAML syntax, known keys, value types, names,
    /// timeouts and param specs. `file` is only used in diagnostics.
    pub fn parse(source: &str, file: impl AsRef<Path>) -> Result<Workflow, Diagnostics> {
        parse::parse(source, file.as_ref())
    }
}

/// JSON Schema (draft 2020-12) of the workflow file format, for editors.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Workflow);
    schema.to_value()
}
