//! Commands that act on an existing run: `resume`, `runs cancel`, `runs retry`, `runs delete`,
//! each one call of the run service.

use std::time::Duration;

use kiln_runner::service::Cancelled;

use crate::cli::ExecArgs;
use crate::commands::run::execute;
use crate::context::Context;
use crate::exit::Exit;
use crate::output::errln;

pub async fn resume(ctx: &Context, args: ExecArgs) -> anyhow::Result<Exit> {
    let service = ctx.service(&args.exec).await?;
    let execution = service.resume(&args.run).await?;
    errln!(
        "resuming run {} ({})",
        execution.run.id,
        execution.run.workflow_name
    );
    execute(service, execution, &args.exec).await
}

pub async fn retry(ctx: &Context, args: ExecArgs) -> anyhow::Result<Exit> {
    let service = ctx.service(&args.exec).await?;
    let execution = service.retry(&args.run, false).await?;
    errln!(
        "retrying run {} from its unfinished steps",
        execution.run.id
    );
    execute(service, execution, &args.exec).await
}

pub async fn cancel(ctx: &Context, id: &str, kill_grace_secs: u64) -> anyhow::Result<Exit> {
    let service = ctx.service_without_plugins().await?;
    let grace = Duration::from_secs(kill_grace_secs);
    match service.cancel(id, grace).await? {
        Cancelled::Stopped(run) => {
            errln!("run {} cancelled", run.id);
            Ok(Exit::Success)
        }
        // An engine is executing the run: it polls for the request and stops the steps itself.
        Cancelled::Requested(run) => {
            errln!(
                "cancel requested; another kiln process executes run {}, waiting for it to stop the run",
                run.id
            );
            let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(60);
            loop {
                let now = service.run(&run.id).await?;
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
    }
}

/// `kiln runs delete RUN [--purge-outputs]`: a finished run only (cancel it first).
pub async fn delete(ctx: &Context, id: &str, purge_outputs: bool) -> anyhow::Result<Exit> {
    let service = ctx.service_without_plugins().await?;
    let run = service.run(id).await?;
    if let Some(report) = service.delete(&run.id, purge_outputs).await? {
        for path in &report.deleted {
            errln!("deleted {path}");
        }
        for (path, why) in &report.kept {
            errln!("kept {path}: {why}");
        }
    }
    errln!("run {} deleted", run.id);
    Ok(Exit::Success)
}
