//! `kiln run FILE --param k=v ...`: validate, record, execute with live progress; Ctrl-C cancels.
//! Also the shared execution of `kiln resume` and `kiln runs retry`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use kiln_runner::RunService;
use kiln_runner::service::Execution;
use kiln_store::RunStatus;

use crate::cli::{ExecOptions, RunArgs};
use crate::commands::validate::load_valid;
use crate::context::Context;
use crate::exit::Exit;
use crate::output::{errln, outln};
use crate::progress::Progress;

/// Whether a YAML value holds a NaN or infinite number (JSON has none: they would become null).
fn has_non_finite(value: &serde_norway::Value) -> bool {
    match value {
        serde_norway::Value::Number(n) => n.as_f64().is_some_and(|f| !f.is_finite()),
        serde_norway::Value::Sequence(items) => items.iter().any(has_non_finite),
        serde_norway::Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| has_non_finite(k) || has_non_finite(v)),
        serde_norway::Value::Tagged(tagged) => has_non_finite(&tagged.value),
        _ => false,
    }
}

/// Parse `key=value` params; values are YAML (`epochs=2`, `overrides={epochs: 2}`).
fn parse_params(raw: &[String]) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let mut out = BTreeMap::new();
    for p in raw {
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("--param `{p}` is not KEY=VALUE"));
        };
        let key = k.trim();
        if key.is_empty() {
            return Err(format!("--param `{p}` has an empty key"));
        }
        let value = if v.trim().is_empty() {
            serde_json::Value::String(String::new())
        } else {
            kiln_workflow::limits::check_yaml(v)
                .map_err(|e| format!("--param {key}: the value is too large: {e}"))?;
            let yaml: serde_norway::Value = serde_norway::from_str(v)
                .map_err(|e| format!("--param {key}: `{v}` is not a valid YAML value: {e}"))?;
            if has_non_finite(&yaml) {
                return Err(format!(
                    "--param {key}: `{v}` holds NaN or infinity, which a param cannot be \
                     (params are JSON values)"
                ));
            }
            serde_json::to_value(&yaml)
                .map_err(|e| format!("--param {key}: `{v}` is not a JSON value: {e}"))?
        };
        if out.insert(key.to_owned(), value).is_some() {
            return Err(format!("--param {key} is given twice"));
        }
    }
    Ok(out)
}

pub async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<Exit> {
    let provided = match parse_params(&args.params) {
        Ok(p) => p,
        Err(e) => {
            errln!("error: {e}");
            return Ok(Exit::InvalidInput);
        }
    };
    // The database opens while the plugins load (polled first, so its connection starts first).
    let grace = Duration::from_secs(args.exec.kill_grace_secs);
    let slots = args.exec.max_parallel;
    let (store, valid) = tokio::join!(ctx.store(), load_valid(ctx, &args.file, grace, slots));
    let (workflow, yaml, plugins) = match valid? {
        Ok(v) => v,
        Err(exit) => return Ok(exit),
    };
    let service = ctx.service_with(store?, &args.exec, plugins)?;
    let created_by = args
        .created_by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into());
    let execution = match service
        .submit(Arc::new(workflow), &yaml, provided, &created_by, false)
        .await
    {
        Ok(execution) => execution,
        Err(kiln_runner::Error::Params(errors)) => {
            errln!("{errors}");
            errln!(
                "the run was not started; fix the params of {}",
                args.file.display()
            );
            return Ok(Exit::InvalidInput);
        }
        Err(e) => return Err(e.into()),
    };
    errln!(
        "run {} ({}) started",
        execution.run.id,
        execution.workflow.name
    );
    execute(service, execution, &args.exec).await
}

/// Execute a run with live progress and Ctrl-C handling; prints the outcome. The last thing
/// the command does with `service`.
pub async fn execute(
    service: RunService,
    execution: Execution,
    exec: &ExecOptions,
) -> anyhow::Result<Exit> {
    let outcome = follow(&service, execution, exec).await;
    // Not dropped: the process ends once the command has closed its database, and its memory
    // goes back with it. Dropping the plugin engine here (the instance pool's mappings, the
    // compiled code, the type registry) delayed that close: `chain5` took ~0.9 ms longer
    // (benches/README.md). Nothing of it needs a drop: the store is closed through the
    // context, the epoch ticker and the lease renewal end with the process.
    std::mem::forget(service);
    outcome
}

/// [`execute`]'s work.
async fn follow(
    service: &RunService,
    execution: Execution,
    exec: &ExecOptions,
) -> anyhow::Result<Exit> {
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = Progress::start(&execution.workflow, rx);
    // A database file replaced or removed under the run (a backup restored) stops it at once,
    // as a killed engine would stop: nothing more is written, launched programs keep running
    // under their supervisors, and `kiln resume` continues the run (see kiln-store's
    // `database_file`).
    let result = tokio::select! {
        result = service.execute(execution, cancel, Some(tx)) => result,
        why = service.store().database_lost_wait(LOOK_EVERY) => {
            return Err(anyhow::anyhow!(why));
        }
    };
    progress.finish().await;
    let finished = result?;
    let secs = finished.duration_ms.unwrap_or(0) as f64 / 1000.0;
    match finished.status {
        RunStatus::Succeeded => errln!("run {} succeeded in {secs:.1}s", finished.id),
        status => errln!(
            "run {} {status} after {secs:.1}s: {}\n  see: kiln logs {}",
            finished.id,
            finished.error_message.as_deref().unwrap_or(""),
            finished.id
        ),
    }
    if exec.json {
        let steps = service.store().steps(&finished.id).await?;
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"run": finished, "steps": steps}))?
        );
    } else {
        outln!("{}", finished.id);
    }
    Ok(if finished.status == RunStatus::Succeeded {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// How often a run looks whether its database file is still the one it opened.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// First Ctrl-C (or SIGTERM) cancels the run cleanly; a second one exits at once.
async fn cancel_on_signal(cancel: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term_recv = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term_recv => {}
    }
    errln!("cancelling: stopping running steps (press Ctrl-C again to quit at once)");
    cancel.cancel();
    let _ = tokio::signal::ctrl_c().await;
    errln!(
        "quitting without waiting; launched programs keep running (kiln resume continues the run)"
    );
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_yaml_values() {
        let p = parse_params(&[
            "epochs=2".into(),
            "name=demo".into(),
            "overrides={epochs: 2, amp: false}".into(),
            "empty=".into(),
        ])
        .unwrap();
        assert_eq!(p["epochs"], 2);
        assert_eq!(p["name"], "demo");
        assert_eq!(p["overrides"]["amp"], false);
        assert_eq!(p["empty"], "");
        assert!(parse_params(&["novalue".into()]).is_err());
        assert!(parse_params(&["a=1".into(), "a=2".into()]).is_err());
    }
}
