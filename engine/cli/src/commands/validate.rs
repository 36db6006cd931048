//! `kiln validate FILE`.

use crate::output::{errln, outln};
use std::path::Path;
use std::time::Duration;

use kiln_runner::EngineCatalog;
use kiln_workflow::Workflow;

use crate::context::Context;
use crate::exit::Exit;

/// A workflow file that validates: the workflow, its text and the plugins it was checked against.
pub type Valid = (
    Workflow,
    String,
    std::sync::Arc<kiln_plugin_host::PluginRegistry>,
);

/// Parse and validate a workflow against the builtins and installed plugins. On problems, prints
/// every diagnostic to stderr and returns `Err(Exit::InvalidInput)`.
pub async fn load_valid(
    ctx: &Context,
    file: &Path,
    kill_grace: Duration,
    instance_slots: usize,
) -> anyhow::Result<Result<Valid, Exit>> {
    let (workflow, source) = match Workflow::load_with_source(file) {
        Ok(w) => w,
        Err(diags) => {
            errln!("{diags}");
            errln!("{} problem(s) in {}", diags.len(), file.display());
            return Ok(Err(Exit::InvalidInput));
        }
    };
    let plugins = ctx.plugins(kill_grace, instance_slots).await?;
    let catalog = EngineCatalog {
        plugins: &plugins,
        gpus: match ctx.launcher()? {
            kiln_supervisor::Launcher::Local => Some(ctx.gpus()?.len() as u32),
            kiln_supervisor::Launcher::Slurm(_) => None,
        },
    };
    if let Err(diags) = workflow.validate(&catalog) {
        errln!("{diags}");
        errln!("{} problem(s) in {}", diags.len(), file.display());
        return Ok(Err(Exit::InvalidInput));
    }
    Ok(Ok((workflow, source, plugins)))
}

pub async fn validate(ctx: &Context, file: &Path) -> anyhow::Result<Exit> {
    Ok(
        match load_valid(ctx, file, Duration::from_secs(10), 0).await? {
            Ok((workflow, _, _)) => {
                outln!(
                    "{}: workflow `{}` is valid ({} steps)",
                    file.display(),
                    workflow.name,
                    workflow.steps.len()
                );
                Exit::Success
            }
            Err(exit) => exit,
        },
    )
}
