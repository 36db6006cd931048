//! Commands that act on an existing run: `resume`, `runs cancel`, `runs retry`, `runs delete`.

use crate::output::errln;
use std::time::Duration;

use kiln_runner::{EngineCatalog, RunLock};
use kiln_store::{RunRecord, RunStatus, StepStatus, Store};
use kiln_workflow::Workflow;

use crate::cli::ExecArgs;
use crate::commands::run::execute;
use crate::context::Context;
use crate::exit::Exit;

async fn find_run(store: &Store, id: &str) -> anyhow::Result<Result<RunRecord, Exit>> {
    match store.run(id).await {
        Ok(r) => Ok(Ok(r)),
        Err(e @ (kiln_store::Error::RunNotFound(_) | kiln_store::Error::AmbiguousRun { .. })) => {
            errln!("error: {e}");
            Ok(Err(Exit::InvalidInput))
        }
        Err(e) => Err(e.into()),
    }
}

/// The workflow as it was when the run was created (stored with the run).
fn stored_workflow(run: &RunRecord) -> Result<Workflow, Exit> {
    kiln_runner::stored_workflow(run).map_err(|diags| {
        errln!("{diags}");
        errln!("the stored workflow of run {} no longer parses", run.id);
        Exit::InvalidInput
    })
}

/// Continue or re-run `run` (already prepared) through the runner.
async fn continue_run(ctx: &Context, run: RunRecord, args: &ExecArgs) -> anyhow::Result<Exit> {
    let workflow = match stored_workflow(&run) {
        Ok(w) => w,
        Err(exit) => return Ok(exit),
    };
    let plugins = ctx
        .plugins(Duration::from_secs(args.exec.kill_grace_secs))
        .await?;
    let catalog = EngineCatalog {
        plugins: &plugins,
        gpus: ctx.gpus()?.len() as u32,
    };
    if let Err(diags) = workflow.validate(&catalog) {
        errln!("{diags}");
        errln!("run {} cannot continue with the installed plugins", run.id);
        return Ok(Exit::InvalidInput);
    }
    let runner = ctx.runner(&args.exec, plugins).await?;
    execute(&runner, &run, None, &workflow, &args.exec).await
}

pub async fn resume(ctx: &Context, args: ExecArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let run = match find_run(&store, &args.run).await? {
        Ok(r) => r,
        Err(exit) => return Ok(exit),
    };
    if run.status.is_terminal() {
        errln!(
            "error: run {} already {}; nothing to resume (to run its failed steps again: kiln runs retry {})",
            run.id,
            run.status,
            run.id
        );
        return Ok(Exit::InvalidInput);
    }
    errln!("resuming run {} ({})", run.id, run.workflow_name);
    continue_run(ctx, run, &args).await
}

pub async fn retry(ctx: &Context, args: ExecArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let run = match find_run(&store, &args.run).await? {
        Ok(r) => r,
        Err(exit) => return Ok(exit),
    };
    if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
        errln!(
            "error: run {} is {}; only failed or cancelled runs can be retried{}",
            run.id,
            run.status,
            if run.status.is_terminal() {
                ""
            } else {
                " (an interrupted run continues with kiln resume)"
            }
        );
        return Ok(Exit::InvalidInput);
    }
    if RunLock::is_held(&ctx.ws.run_dir(&run.id)) {
        errln!(
            "error: run {} is being executed by another kiln process",
            run.id
        );
        return Ok(Exit::InvalidInput);
    }
    store.reset_for_retry(&run.id).await?;
    let run = store.run(&run.id).await?;
    errln!("retrying run {} from its unfinished steps", run.id);
    continue_run(ctx, run, &args).await
}

pub async fn cancel(ctx: &Context, id: &str, kill_grace_secs: u64) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let run = match find_run(&store, id).await? {
        Ok(r) => r,
        Err(exit) => return Ok(exit),
    };
    if run.status.is_terminal() {
        errln!("error: run {} already {}", run.id, run.status);
        return Ok(Exit::InvalidInput);
    }
    store.request_cancel(&run.id).await?;
    let run_dir = ctx.ws.run_dir(&run.id);
    // An engine is executing the run: it polls for the request and stops the steps itself.
    if let Err(busy) = RunLock::acquire(&run_dir) {
        errln!("cancel requested; {busy}, waiting for it to stop the run");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(kill_grace_secs + 60);
        loop {
            let now = store.run(&run.id).await?;
            if now.status.is_terminal() {
                errln!("run {} {}", now.id, now.status);
                return Ok(Exit::Success);
            }
            if tokio::time::Instant::now() > deadline {
                errln!(
                    "error: the engine executing run {} has not stopped it yet",
                    run.id
                );
                return Ok(Exit::Failure);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // No engine: stop the programs the run left running ourselves, then record the end.
    let _lock = RunLock::acquire(&run_dir).map_err(|e| anyhow::anyhow!(e))?;
    let grace = Duration::from_secs(kill_grace_secs);
    for pgid in surviving_groups(&run_dir.join("state")) {
        kiln_supervisor::terminate_group(pgid, grace).await;
    }
    for step in store.steps(&run.id).await? {
        if matches!(step.status, StepStatus::Queued | StepStatus::Running) {
            store
                .finish_step(
                    &run.id,
                    &step.step_id,
                    StepStatus::Cancelled,
                    None,
                    Some("cancelled"),
                )
                .await?;
        }
    }
    let run = store
        .finish_run(&run.id, RunStatus::Cancelled, Some("cancelled"), None)
        .await?;
    errln!("run {} cancelled", run.id);
    Ok(Exit::Success)
}

/// Process groups of launches under `state` whose program is still the recorded process.
fn surviving_groups(state: &std::path::Path) -> Vec<i32> {
    let mut groups = Vec::new();
    let mut dirs = vec![state.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n == "child.json")
                && let Ok(Some(child)) = kiln_supervisor::read_child(&dir)
            {
                let identity = kiln_supervisor::ProcessIdentity {
                    pid: child.pid,
                    start_ticks: child.start_ticks,
                };
                if identity.is_running() || kiln_supervisor::group_alive(child.pgid) {
                    groups.push(child.pgid);
                }
            }
        }
    }
    groups
}

/// `kiln runs delete RUN [--purge-outputs]`: a finished run only (cancel it first).
pub async fn delete(ctx: &Context, id: &str, purge_outputs: bool) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let run = match find_run(&store, id).await? {
        Ok(r) => r,
        Err(exit) => return Ok(exit),
    };
    if !run.status.is_terminal() || RunLock::is_held(&ctx.ws.run_dir(&run.id)) {
        errln!(
            "error: run {} is {}; cancel it first (kiln runs cancel {})",
            run.id,
            run.status,
            run.id
        );
        return Ok(Exit::InvalidInput);
    }
    if purge_outputs {
        let report = kiln_runner::ownership::purge(&ctx.ws, &store, &run.id).await?;
        for path in &report.deleted {
            errln!("deleted {path}");
        }
        for (path, why) in &report.kept {
            errln!("kept {path}: {why}");
        }
    }
    store.delete_run(&run.id).await?;
    errln!("run {} deleted", run.id);
    Ok(Exit::Success)
}
