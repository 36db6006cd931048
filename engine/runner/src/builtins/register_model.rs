//! `builtin/register-model`: record the trained model in the registry, with its lineage
//! (run, dataset, base model). Idempotent per (run, step): a re-run updates the same record.

use serde_json::{Value, json};

use super::{BuiltinCtx, input_str, opt_str};
use crate::workspace::check_name;
use crate::{Error, Result};

/// A file a model references: given relative to the workspace, without `..`; recorded as
/// where it really is (symlinks resolved), which must be inside the workspace, so the registry
/// names real locations (see `ownership::purge`).
fn workspace_file(
    ctx: &BuiltinCtx<'_>,
    input: &str,
    path: &str,
    must_exist: bool,
) -> Result<String> {
    let given = std::path::Path::new(path);
    if given.is_absolute()
        || given
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::Input(format!(
            "input `{input}`: `{path}` must be a path relative to the workspace, without `..`"
        )));
    }
    let abs = ctx.ws.root().join(given);
    if must_exist && !abs.is_file() {
        return Err(Error::Input(format!(
            "input `{input}`: {} does not exist",
            abs.display()
        )));
    }
    let real = crate::ownership::resolve(ctx.ws, given);
    let root = std::fs::canonicalize(ctx.ws.root()).unwrap_or_else(|_| ctx.ws.root().to_owned());
    match real.strip_prefix(&root) {
        Ok(relative) => Ok(relative.display().to_string()),
        Err(_) => Err(Error::Input(format!(
            "input `{input}`: `{path}` leads outside the workspace (to {})",
            real.display()
        ))),
    }
}

pub(crate) async fn run(ctx: &BuiltinCtx<'_>) -> Result<Value> {
    let name = input_str(ctx.inputs, "name")?;
    check_name("model name", name)?;
    let project = input_str(ctx.inputs, "project")?;
    check_name("project", project)?;
    let weights = workspace_file(ctx, "weights", input_str(ctx.inputs, "weights")?, true)?;
    let config_path = match opt_str(ctx.inputs, "config_path")? {
        Some(path) => Some(workspace_file(ctx, "config_path", path, false)?),
        None => None,
    };
    let input_size = match ctx.inputs.get("input_size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            Error::Input(format!("input `input_size` must be an integer, got {v}"))
        })?),
    };
    let class_names = match ctx.inputs.get("class_names") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => {
            return Err(Error::Input(format!(
                "input `class_names` must be a list, got {other}"
            )));
        }
    };
    let model = kiln_store::NewModel {
        name: name.to_owned(),
        project: project.to_owned(),
        task: opt_str(ctx.inputs, "task")?.map(str::to_owned),
        framework: match opt_str(ctx.inputs, "framework")? {
            Some(f) => {
                check_name("framework", f)?;
                Some(f.to_owned())
            }
            None => None,
        },
        // The weights' extension unless given (`pt`, `pth`, …).
        format: Some(match opt_str(ctx.inputs, "format")? {
            Some(f) => f.to_owned(),
            None => std::path::Path::new(&weights)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("pt")
                .to_owned(),
        }),
        file_path: weights,
        config_path,
        input_size,
        class_names,
        metrics: ctx.inputs.get("metrics").filter(|m| !m.is_null()).cloned(),
        dataset: opt_str(ctx.inputs, "dataset")?.map(str::to_owned),
        training_run_id: ctx.run_id.to_owned(),
        training_step_id: ctx.step_id.to_owned(),
        base_model: opt_str(ctx.inputs, "base_model")?.map(str::to_owned),
        created_by: ctx.created_by.to_owned(),
    };
    let record = ctx.store.register_model(&model).await?;
    ctx.log(&format!(
        "registered model {} version {} ({})",
        record.name, record.version, record.id
    ));
    Ok(json!({
        "model_id": record.id,
        "name": record.name,
        "version": record.version,
        "file_path": record.file_path,
    }))
}
