//! The run service: every run-level operation, one way, for `kiln` and `kiln serve` alike.
//!
//! Submitting (validate, resolve params, create and start), executing, resuming, retrying,
//! cancelling (an engine's runs, or a dead engine's surviving programs), deleting and purging;
//! and for the training façade: finding a training's run, previewing a config, extracting a
//! release, exporting best weights, reading log pages and checkpoints. The CLI and the HTTP API
//! are adapters: they turn arguments or requests into these calls and [`Error`]s into exit codes
//! or problem documents. Neither reaches past this module into the plugin host or the store's
//! writes.

mod catalog;
mod logs;
mod orphans;
mod reload;
mod stored;
mod training;

pub use catalog::{CatalogEntry, Checker, WorkflowCatalog};
pub use logs::CheckpointView;
pub use logs::{LogLine, LogPage, OUTPUT_LEVEL};
pub use reload::{HotReload, MAX_WAIT, OnChange, QUIET, read_grants};
pub use training::{
    CheckpointFile, ConfigPreview, ConfigRequest, ExportedBest, FRAMEWORK_WORKFLOWS, FrameworkInfo,
    MAX_LISTED, PREVIEW_NAME, ProjectInfo, ReleaseFile, WeightFiles,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use kiln_store::{RunRecord, RunStatus, Store};
use kiln_workflow::{Diagnostics, Workflow};

use crate::{EngineCatalog, Error, Result, RunLease, RunUpdate, Runner, Workspace, ownership};
pub use stored::StoredDefinition;
use stored::StoredDefinitions;

/// A run ready to execute: its record, its workflow as stored, and its lease (held by this
/// engine; none for a run queued for another engine to claim).
pub struct Execution {
    pub run: RunRecord,
    pub workflow: Arc<Workflow>,
    lease: Option<RunLease>,
    /// Pinned to the plugins the run was checked against: it executes with those.
    runner: Runner,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution")
            .field("run", &self.run.id)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl Execution {
    /// Whether this engine holds the run's lease (else the run waits for an engine that
    /// meets its requirements).
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// The engine whose expired lease this execution took over, if it did.
    pub fn taken_from(&self) -> Option<&str> {
        self.lease.as_ref().and_then(RunLease::taken_from)
    }
}

/// What a cancel did.
#[derive(Debug)]
pub enum Cancelled {
    /// An engine executes the run: it was asked to stop it (it stops the programs itself).
    Requested(RunRecord),
    /// No engine held the run: its surviving programs were stopped here and it was recorded
    /// `cancelled`.
    Stopped(RunRecord),
}

/// A plugin file as the service describes it: a loaded plugin, or a file that does not load.
#[derive(Debug, Clone, Default)]
pub struct PluginSummary {
    /// The plugin's name; for a file that never loaded, its file name.
    pub name: String,
    pub version: String,
    pub digest: String,
    /// The `kiln:plugin` version it was built against.
    pub interface: String,
    pub file: PathBuf,
    /// Programs the operator granted it.
    pub programs: Vec<String>,
    /// Programs it says it launches.
    pub launches: Vec<String>,
    /// (name, description, inputs, outputs) of each action.
    pub actions: Vec<ActionSummary>,
    /// Whether new runs can use it (this version).
    pub loaded: bool,
    /// Why the file as it is now is not used (the version described, if loaded, stays).
    pub problem: Option<String>,
}

/// An action of a plugin.
#[derive(Debug, Clone)]
pub struct ActionSummary {
    pub name: String,
    pub description: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// Every run-level operation over one workspace, its store and its plugins. Cheap to clone.
#[derive(Clone)]
pub struct RunService {
    runner: Runner,
    workflows: Arc<WorkflowCatalog>,
    stored: StoredDefinitions,
}

impl RunService {
    /// The service over `runner`; `workflows_dir` holds the workflows it starts by name.
    pub fn new(runner: Runner, workflows_dir: PathBuf) -> Self {
        let workflows = Arc::new(Self::catalog(&runner, workflows_dir));
        Self {
            runner,
            workflows,
            stored: StoredDefinitions::new(),
        }
    }

    /// The workflows of `dir`, each validated against the plugins installed when it loads.
    fn catalog(runner: &Runner, dir: PathBuf) -> WorkflowCatalog {
        let runner = runner.clone();
        WorkflowCatalog::new(dir).with_checker(Arc::new(move |wf: &Workflow| {
            check_with(&runner.current(), wf)
        }))
    }

    /// The same service, starting workflows by name from `dir` instead.
    #[must_use]
    pub fn with_workflows(mut self, dir: PathBuf) -> Self {
        self.workflows = Arc::new(Self::catalog(&self.runner, dir));
        self
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    pub fn store(&self) -> &Store {
        self.runner.store()
    }

    pub fn workspace(&self) -> &Workspace {
        self.runner.workspace()
    }

    pub fn workflows(&self) -> &WorkflowCatalog {
        &self.workflows
    }

    /// The installed plugins.
    /// Programs (trainers) this process follows now, launched or re-attached.
    pub fn programs_followed(&self) -> usize {
        kiln_plugin_host::programs_followed()
    }

    pub fn plugins(&self) -> Vec<PluginSummary> {
        let installed = self.runner.installed_plugins();
        let problem_of = |file: &std::path::Path| {
            installed
                .problems()
                .iter()
                .find(|p| p.path == file)
                .map(|p| p.message.clone())
        };
        let mut out: Vec<PluginSummary> = installed
            .plugins()
            .map(|p| PluginSummary {
                name: p.info.name.clone(),
                version: p.info.version.clone(),
                digest: p.info.digest.clone(),
                interface: p.info.interface.clone(),
                file: p.info.path.clone(),
                programs: p.info.programs.clone(),
                launches: p.info.launches.clone(),
                loaded: true,
                problem: problem_of(&p.info.path),
                actions: p
                    .info
                    .actions
                    .iter()
                    .map(|a| ActionSummary {
                        name: a.name.clone(),
                        description: a.description.clone(),
                        inputs: a.inputs.iter().map(|i| i.name.clone()).collect(),
                        outputs: a.output_names().map(str::to_owned).collect(),
                    })
                    .collect(),
            })
            .collect();
        for problem in installed.problems() {
            if !out.iter().any(|p| p.file == problem.path) {
                out.push(PluginSummary {
                    name: problem
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    file: problem.path.clone(),
                    problem: Some(problem.message.clone()),
                    ..PluginSummary::default()
                });
            }
        }
        out
    }

    /// Checks `workflow` against the builtins, the installed plugins and the machine's GPUs.
    pub fn check(&self, workflow: &Workflow) -> std::result::Result<(), Diagnostics> {
        check_with(&self.runner.current(), workflow)
    }

    /// The workflow named `name` in the workflows directory, with its text.
    pub fn workflow(&self, name: &str) -> Result<(Arc<Workflow>, Arc<str>)> {
        let dir = self.workflows.dir();
        match self
            .workflows
            .get(name)
            .map_err(|e| Error::io("reading the workflows in", dir, e))?
        {
            Some(found) => Ok(found),
            None => {
                // A file named for it that does not load: say why, not just "unknown".
                let entries = self
                    .workflows
                    .entries()
                    .map_err(|e| Error::io("reading the workflows in", dir, e))?;
                let invalid = entries.iter().find_map(|e| {
                    let stem = e.path.file_stem()?.to_str()?;
                    (e.workflow.is_none() && stem == name)
                        .then(|| e.problem.clone())
                        .flatten()
                });
                Err(Error::UnknownWorkflow {
                    name: name.to_owned(),
                    known: self
                        .workflows
                        .names()
                        .map_err(|e| Error::io("reading the workflows in", dir, e))?,
                    invalid,
                })
            }
        }
    }

    /// Validates `workflow`, resolves `params` and records the run, started (`running`, its
    /// lease held by this engine, in one commit). Nothing is recorded when anything is wrong.
    /// With `queue_elsewhere`, a run whose requirements this engine does not meet is recorded
    /// `queued` for another engine (the execution is then not leased); without it, refused.
    pub async fn submit(
        &self,
        workflow: Arc<Workflow>,
        yaml: &str,
        params: BTreeMap<String, Value>,
        created_by: &str,
        queue_elsewhere: bool,
    ) -> Result<Execution> {
        let runner = self.runner.current();
        check_with(&runner, &workflow)?;
        let params = kiln_workflow::resolve_params(&workflow, params)?;
        let (run, lease) = runner
            .start(
                &workflow,
                yaml.to_owned(),
                &params,
                created_by,
                queue_elsewhere,
            )
            .await?;
        Ok(Execution {
            run,
            workflow,
            lease,
            runner,
        })
    }

    /// Claims up to `limit` runs that no live engine holds (their engine stopped or died, or
    /// they were queued for an engine like this one), ready to execute here. A claimed run
    /// that cannot continue with the plugins installed here is given back and reported.
    /// `skip`: runs not to claim (they could not continue here before).
    pub async fn claim(
        &self,
        limit: usize,
        skip: &std::collections::HashSet<String>,
    ) -> Result<(Vec<Execution>, Vec<(String, Error)>)> {
        let mut ready = Vec::new();
        let mut refused = Vec::new();
        for lease in self.runner.engine().claim(limit, skip).await? {
            let run = match self.run(lease.run_id()).await {
                Ok(run) => run,
                Err(e) => {
                    refused.push((lease.run_id().to_owned(), e));
                    continue;
                }
            };
            match self.stored(&run) {
                Ok((workflow, runner)) => ready.push(Execution {
                    run,
                    workflow,
                    lease: Some(lease),
                    runner,
                }),
                Err(e) => refused.push((run.id.clone(), e)),
            }
        }
        Ok((ready, refused))
    }

    /// Records this engine stopped, freeing the leases of the runs it executes for other
    /// engines (a clean shutdown; their programs keep running for the next owner).
    pub async fn stop_engine(&self, reason: &str) -> Result<u64> {
        self.runner.engine().stop(reason).await
    }

    /// Executes a run to its end (see [`Runner::execute`]).
    pub async fn execute(
        &self,
        execution: Execution,
        cancel: CancellationToken,
        updates: Option<UnboundedSender<RunUpdate>>,
    ) -> Result<RunRecord> {
        let params = execution
            .run
            .params
            .as_object()
            .cloned()
            .unwrap_or_default();
        execution
            .runner
            .execute(
                &execution.run,
                execution.lease,
                &execution.workflow,
                &params,
                cancel,
                updates,
            )
            .await
    }

    /// A run by id or unique prefix.
    pub async fn run(&self, id: &str) -> Result<RunRecord> {
        Ok(self.store().run(id).await?)
    }

    /// The workflow stored with `run`, parsed, with each step's dependencies.
    pub fn definition(&self, run: &RunRecord) -> Result<Arc<StoredDefinition>> {
        Ok(self.stored.of(run)?)
    }

    /// The workflow stored with `run`, checked against what is installed now, and a runner
    /// pinned to those plugins.
    fn stored(&self, run: &RunRecord) -> Result<(Arc<Workflow>, Runner)> {
        let workflow = self.stored.of(run)?.workflow.clone();
        let runner = self.runner.current();
        check_with(&runner, &workflow).map_err(|d| {
            Error::Input(format!(
                "{d}\nrun {} cannot continue with the installed plugins",
                run.id
            ))
        })?;
        Ok((workflow, runner))
    }

    /// A run whose engine died, ready to continue where it stopped (its succeeded steps reused,
    /// its running steps re-attached).
    pub async fn resume(&self, id: &str) -> Result<Execution> {
        let run = self.run(id).await?;
        if run.status.is_terminal() {
            return Err(Error::Conflict(format!(
                "run {} already {}; nothing to resume (to run its failed steps again: retry it)",
                run.id, run.status
            )));
        }
        let (workflow, runner) = self.stored(&run)?;
        self.must_meet(&runner, &workflow, &run)?;
        let lease = self.lease(&run).await?;
        Ok(Execution {
            run,
            workflow,
            lease: Some(lease),
            runner,
        })
    }

    /// Refuses a run this engine cannot execute (labels its steps ask for, GPUs).
    fn must_meet(&self, runner: &Runner, workflow: &Workflow, run: &RunRecord) -> Result<()> {
        let unmet = self.runner.engine().unmet(&runner.requirements(workflow));
        if unmet.is_empty() {
            return Ok(());
        }
        Err(Error::Input(format!(
            "this engine lacks {} that run {} asks for (`runs_on`, `resources.gpus`); an \
             engine of `kiln serve` that offers them takes it over",
            unmet.join(", "),
            run.id
        )))
    }

    /// The lease of `run`, taken now and held by what this process does with the run next
    /// (so a delete and a retry of one run cannot overlap); held by a live engine: a conflict.
    async fn lease(&self, run: &RunRecord) -> Result<RunLease> {
        self.runner.engine().acquire(&run.id).await
    }

    /// A failed or cancelled run, reset to run its unfinished steps again with fresh retry
    /// budgets, reusing the outputs of the steps that succeeded. With `queue_elsewhere`, a run
    /// this engine cannot execute (its labels) is reset and left `queued` for an engine that
    /// can (the execution is then not leased); without it, refused.
    pub async fn retry(&self, id: &str, queue_elsewhere: bool) -> Result<Execution> {
        let run = self.run(id).await?;
        if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
            let hint = if run.status.is_terminal() {
                ""
            } else {
                " (an interrupted run continues with resume)"
            };
            return Err(Error::Conflict(format!(
                "run {} is {}; only failed or cancelled runs can be retried{hint}",
                run.id, run.status
            )));
        }
        let (workflow, runner) = self.stored(&run)?;
        let meets = match self.must_meet(&runner, &workflow, &run) {
            Ok(()) => true,
            Err(e) if !queue_elsewhere => return Err(e),
            Err(_) => false,
        };
        let lease = self.lease(&run).await?;
        self.store().reset_for_retry(&run.id).await?;
        let run = self.store().run(&run.id).await?;
        Ok(Execution {
            run,
            workflow,
            // Given back at once when another engine must execute it.
            lease: meets.then_some(lease),
            runner,
        })
    }

    /// Cancels a run: the engine executing it is asked to stop it; when no engine holds it,
    /// its surviving programs get SIGTERM, then SIGKILL after `grace`, and it is recorded
    /// `cancelled` here.
    pub async fn cancel(&self, id: &str, grace: std::time::Duration) -> Result<Cancelled> {
        let run = self.run(id).await?;
        if run.status.is_terminal() {
            return Err(Error::Conflict(format!(
                "run {} already {}",
                run.id, run.status
            )));
        }
        self.store().request_cancel(&run.id).await?;
        let _lease = match self.lease(&run).await {
            Ok(lease) => lease,
            Err(Error::Conflict(_)) => return Ok(Cancelled::Requested(run)),
            Err(e) => return Err(e),
        };
        if let Err(foreign) = orphans::stop(
            &self.workspace().state_dir(&run.id),
            self.runner.launcher(),
            grace,
        )
        .await
        {
            return Err(Error::Conflict(format!(
                "run {} has programs on another machine that did not stop when asked ({}); the \
                 cancel is recorded: the engine that takes the run over next stops the run; or \
                 stop them there and cancel again",
                run.id,
                foreign.join(", ")
            )));
        }
        let store = self.store();
        for step in store.steps(&run.id).await? {
            if !step.status.is_terminal() {
                store
                    .finish_step(
                        &run.id,
                        &step.step_id,
                        kiln_store::StepStatus::Cancelled,
                        None,
                        Some("cancelled"),
                    )
                    .await?;
            }
        }
        let run = store
            .finish_run(&run.id, RunStatus::Cancelled, Some("cancelled"), None)
            .await?;
        Ok(Cancelled::Stopped(run))
    }

    /// Deletes a finished run's records; with `purge` first what it owns on disk (see
    /// [`ownership::purge`]). A run still executing is refused: cancel it first.
    pub async fn delete(&self, id: &str, purge: bool) -> Result<Option<ownership::PurgeReport>> {
        let run = self.run(id).await?;
        let not_finished =
            || Error::Conflict(format!("run {} is {}; cancel it first", run.id, run.status));
        if !run.status.is_terminal() {
            return Err(not_finished());
        }
        // Held until the records are gone: no retry or resume starts meanwhile.
        let _lease = match self.lease(&run).await {
            Ok(lease) => lease,
            Err(Error::Conflict(_)) => return Err(not_finished()),
            Err(e) => return Err(e),
        };
        let run = self.run(&run.id).await?;
        if !run.status.is_terminal() {
            return Err(not_finished());
        }
        let report = match purge {
            true => Some(ownership::purge(self.workspace(), self.store(), &run.id).await?),
            false => None,
        };
        self.store().delete_run(&run.id).await?;
        Ok(report)
    }
}

/// Checks `workflow` against the builtins, `runner`'s plugins and the machine's GPUs.
fn check_with(runner: &Runner, workflow: &Workflow) -> std::result::Result<(), Diagnostics> {
    workflow.validate(&EngineCatalog {
        plugins: runner.plugins(),
        gpus: runner.gpu_limit(),
    })
}
