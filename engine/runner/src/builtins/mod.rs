//! Steps the engine runs itself (`uses: builtin/<name>`): they need the workspace or the
//! database, which plugins never reach.

mod dataset;
mod export_best;
mod extract_release;
mod register_model;

pub use export_best::is_exported_best;
pub use extract_release::{extraction_status, release_of};

use serde_json::Value;

use kiln_store::Store;
use kiln_workflow::ActionSpec;

use crate::workspace::Workspace;
use crate::{Error, Result};

/// The builtins and what they take and return. None is memoizable: each already does no work
/// twice, and each keeps records (a dataset's users, exported weights, a registered model) that
/// reusing its outputs would skip.
pub fn specs() -> Vec<(&'static str, ActionSpec)> {
    vec![
        (
            "builtin/extract-release",
            ActionSpec::new(
                ["project", "release"],
                ["slug"],
                [
                    "layout",
                    "dataset_dir",
                    "class_names",
                    "nc",
                    "splits",
                    // YOLO releases
                    "data_yaml",
                    // COCO releases: per split
                    "data_root",
                    "annotations",
                    "images",
                    "counts",
                    "slug",
                    "files",
                    "release_sha256",
                    "extracted",
                ],
            )
            .not_memoizable(),
        ),
        (
            "builtin/export-best",
            ActionSpec::new(
                ["project", "training_name", "best_weights"],
                ["resolved_yaml", "config_file", "metrics", "extra"],
                [
                    "weights",
                    "weights_sha256",
                    "config_path",
                    "report_path",
                    "artifacts_dir",
                    "logs_dir",
                ],
            )
            .not_memoizable(),
        ),
        (
            "builtin/register-model",
            ActionSpec::new(
                ["name", "project", "weights"],
                [
                    "task",
                    "framework",
                    "format",
                    "config_path",
                    "input_size",
                    "class_names",
                    "metrics",
                    "dataset",
                    "base_model",
                ],
                ["model_id", "name", "version", "file_path"],
            )
            .not_memoizable(),
        ),
    ]
}

/// What a builtin step can use.
pub struct BuiltinCtx<'a> {
    pub ws: &'a Workspace,
    pub store: &'a Store,
    pub run_id: &'a str,
    pub step_id: &'a str,
    pub created_by: &'a str,
    pub inputs: &'a Value,
    pub log: &'a (dyn Fn(&str) + Send + Sync),
}

impl BuiltinCtx<'_> {
    fn log(&self, message: &str) {
        (self.log)(message)
    }
}

/// Run builtin `uses` (e.g. `builtin/extract-release`).
pub async fn run(uses: &str, ctx: &BuiltinCtx<'_>) -> Result<Value> {
    match uses {
        // Unzipping is blocking file work: it runs in `block_in_place` inside.
        "builtin/extract-release" => extract_release::run(ctx).await,
        "builtin/export-best" => tokio::task::block_in_place(|| export_best::run(ctx)),
        "builtin/register-model" => register_model::run(ctx).await,
        other => Err(Error::Input(format!("unknown builtin `{other}`"))),
    }
}

pub(crate) fn input_str<'v>(inputs: &'v Value, name: &str) -> Result<&'v str> {
    match inputs.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::Null) | None => Err(Error::Input(format!("input `{name}` is required"))),
        Some(other) => Err(Error::Input(format!(
            "input `{name}` must be a non-empty string, got {other}"
        ))),
    }
}

pub(crate) fn opt_str<'v>(inputs: &'v Value, name: &str) -> Result<Option<&'v str>> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::Input(format!(
            "input `{name}` must be a string, got {other}"
        ))),
    }
}
