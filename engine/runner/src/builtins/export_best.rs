//! `builtin/export-best`: put the best weights at the stable
//! `projects/<project>/model/training/<name>/weights/best.<ext>` (the framework's extension kept:
//! `.pt` for Ultralytics, `.pth` for MMDetection) and write `artifacts/` beside it: the resolved
//! training config (`config.yaml` from `resolved_yaml`, or a `config_file` already in the
//! training's folder) and a report (`report.json`) with the metrics; and the run's program logs
//! (the trainer's among them) under `logs/<run>/`, so the training folder holds them whatever
//! the framework.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{BuiltinCtx, input_str, opt_str};
use crate::{Error, Result};

/// Whether `name` is the stable best weights export writes (`best.pt`, `best.pth`, …).
pub fn is_exported_best(name: &str) -> bool {
    name.strip_prefix("best.")
        .is_some_and(|ext| !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric()))
}

pub(crate) fn run(ctx: &BuiltinCtx<'_>) -> Result<Value> {
    let project = input_str(ctx.inputs, "project")?;
    let training = input_str(ctx.inputs, "training_name")?;
    let best = PathBuf::from(input_str(ctx.inputs, "best_weights")?);
    let training_dir = ctx.ws.training_dir(project, training)?;
    if !best.starts_with(ctx.ws.root()) || best.components().any(|c| c.as_os_str() == "..") {
        return Err(Error::Input(format!(
            "input `best_weights`: {} is outside the workspace {}",
            best.display(),
            ctx.ws.root().display()
        )));
    }
    if !best.is_file() {
        return Err(Error::Input(format!(
            "input `best_weights`: {} does not exist; did the training step finish?",
            best.display()
        )));
    }
    // The weights keep their format's extension (a `.pth` is no `.pt`); none reads as `.pt`.
    let ext = best
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("pt");
    let stable = training_dir.join("weights").join(format!("best.{ext}"));
    if best != stable {
        copy_atomic(&best, &stable)?;
    }
    let sha = {
        let mut f = std::fs::File::open(&stable).map_err(|e| Error::io("reading", &stable, e))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(|e| Error::io("reading", &stable, e))?;
        hex::encode(h.finalize())
    };
    let artifacts = training_dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).map_err(|e| Error::io("creating", &artifacts, e))?;
    let config_path = match (
        opt_str(ctx.inputs, "resolved_yaml")?,
        opt_str(ctx.inputs, "config_file")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(Error::Input(
                "give `resolved_yaml` or `config_file`, not both".into(),
            ));
        }
        (Some(yaml), None) => {
            let p = artifacts.join("config.yaml");
            write_atomic(&p, yaml.as_bytes())?;
            Some(p)
        }
        (None, Some(file)) => {
            let p = PathBuf::from(file);
            if !p.starts_with(&training_dir)
                || p.components().any(|c| c.as_os_str() == "..")
                || !p.is_file()
            {
                return Err(Error::Input(format!(
                    "input `config_file`: {file} is not a file in the training's folder {}",
                    training_dir.display()
                )));
            }
            Some(p)
        }
        (None, None) => None,
    };
    let rel = |p: &Path| {
        ctx.ws
            .relative(p)
            .unwrap_or_else(|| p.to_path_buf())
            .display()
            .to_string()
    };
    let report = json!({
        "project": project,
        "training_name": training,
        "run_id": ctx.run_id,
        "weights": rel(&stable),
        "weights_sha256": sha,
        "source_weights": rel(&best),
        "config": config_path.as_deref().map(rel),
        "metrics": ctx.inputs.get("metrics").cloned().unwrap_or(Value::Null),
        "extra": ctx.inputs.get("extra").cloned().unwrap_or(Value::Null),
        "exported_at": kiln_store::now(),
    });
    let report_path = artifacts.join("report.json");
    write_atomic(
        &report_path,
        &serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )?;
    let logs = copy_logs(
        &ctx.ws.log_dir(ctx.run_id),
        &training_dir.join("logs").join(ctx.run_id),
    )?;
    ctx.log(&format!("best weights at {} (sha256 {sha})", rel(&stable)));
    Ok(json!({
        "weights": rel(&stable),
        "weights_sha256": sha,
        "config_path": config_path.as_deref().map(rel),
        "report_path": rel(&report_path),
        "artifacts_dir": rel(&artifacts),
        "logs_dir": logs.as_deref().map(rel),
    }))
}

/// Copies the run's program logs (`<step>.log`, …) into `to`; None when the run has none (an
/// export outside a run).
fn copy_logs(from: &Path, to: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(None);
    };
    std::fs::create_dir_all(to).map_err(|e| Error::io("creating", to, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        // Regular files only: a link there is not the engine's.
        let is_log = entry.file_type().is_ok_and(|t| t.is_file())
            && path.extension().is_some_and(|e| e == "log");
        if is_log {
            copy_atomic(&path, &to.join(entry.file_name()))?;
        }
    }
    Ok(Some(to.to_owned()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    }
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(|e| Error::io("copying", from, e))?;
    std::fs::rename(&tmp, to).map_err(|e| Error::io("renaming into", to, e))
}
