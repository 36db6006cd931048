//! `builtin/export-best`: put the best weights at the stable
//! `projects/<project>/model/training/<name>/weights/best.pt` and write `artifacts/` beside it:
//! the resolved training config (`config.yaml`) and a report (`report.json`) with the metrics.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{BuiltinCtx, input_str, opt_str};
use crate::{Error, Result};

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
    let stable = training_dir.join("weights").join("best.pt");
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
    let config_path = match opt_str(ctx.inputs, "resolved_yaml")? {
        Some(yaml) => {
            let p = artifacts.join("config.yaml");
            write_atomic(&p, yaml.as_bytes())?;
            Some(p)
        }
        None => None,
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
    ctx.log(&format!("best weights at {} (sha256 {sha})", rel(&stable)));
    Ok(json!({
        "weights": rel(&stable),
        "weights_sha256": sha,
        "config_path": config_path.as_deref().map(rel),
        "report_path": rel(&report_path),
        "artifacts_dir": rel(&artifacts),
    }))
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
