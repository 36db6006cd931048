//! The DAG executor.
//!
//! Policy:
//! - A step starts when every step it depends on (`needs` plus expression references) has
//!   succeeded, at most `max_parallel` steps at a time, in file order among ready steps.
//! - When a step fails (after its retries), no new step starts (fail fast, like Argo's default).
//!   Steps already running are left to finish, so no training in flight is thrown away; steps
//!   that never started are marked `skipped` with the reason, and the run fails with the first
//!   failure.
//! - When the run is cancelled (Ctrl-C, `kiln runs cancel`), running steps are stopped: their
//!   programs get SIGTERM, then SIGKILL after the grace period, and the step is `cancelled` only
//!   once no process of its group remains. Steps not started are `cancelled` too.
//! - A step's `timeout` bounds each attempt (wall clock, host waits included); a timed-out
//!   attempt's programs are stopped like a cancel and the attempt fails.
//! - Retries (`retry: {max, backoff, on}`): trainer/step failures and infrastructure failures
//!   (a program lost without an exit status) have separate budgets of `max` retries each; the
//!   wait before retry n is `backoff * 2^(n-1)`. The plugin learns why it is retried, so a
//!   training resumes from its checkpoint after an infrastructure failure.
//! - Execution is resumable: `execute` on a run that was interrupted (the engine was killed)
//!   reuses the outputs of succeeded steps and continues running steps in their *current*
//!   attempt, whose launches re-attach to the programs still running (or read how they ended)
//!   instead of starting them again. One engine executes a run at a time: the one holding its
//!   lease (`crate::engine`); an engine that loses the lease stops acting on the run at once,
//!   leaving its programs to the engine that took it over.
//! - Memoization is opt-in (`cache: true`): same plugin digest, action, inputs and input file
//!   digests reuse earlier outputs; the step records `cached_from`.

mod attempt;
mod events;
mod schedule;

use events::{ended, finished, notify, watch_run};
use schedule::Schedule;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use kiln_plugin_host::{PluginRegistry, RetryReason};
use kiln_store::{NewRun, NewStep, RunRecord, RunStatus, StepEnd, StepStatus, Store};
use kiln_workflow::{ExprContext, RetryOn, Workflow};

use crate::engine::{EngineSession, Requirements, RunLease};
use crate::gpu::GpuPool;
use crate::{Error, Result, Workspace, ownership};

/// What a watcher (the CLI's progress display) hears about a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunUpdate {
    StepStarted {
        step_id: String,
        attempt: i64,
    },
    StepProgress {
        step_id: String,
        percent: Option<f64>,
        epoch: Option<u32>,
        epochs: Option<u32>,
        message: Option<String>,
    },
    StepLog {
        step_id: String,
        level: String,
        message: String,
    },
    StepFinished {
        step_id: String,
        status: StepStatus,
        error: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most steps running at once.
    pub max_parallel: usize,
    /// Grace between SIGTERM and SIGKILL when stopping a step's programs.
    pub kill_grace: Duration,
    /// The machine's GPU devices.
    pub gpus: Vec<u32>,
    /// Where plugin steps' programs run (`configs/launchers.yaml`).
    pub launcher: kiln_supervisor::Launcher,
    /// This process as an engine: `serve`, or the command that executes runs.
    pub engine_kind: String,
    /// The labels this engine offers besides `host` and `gpus`.
    pub labels: Map<String, Value>,
    /// How long a run's lease lives unless its engine renews it.
    pub lease_ttl: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_parallel: 4,
            kill_grace: Duration::from_secs(10),
            gpus: Vec::new(),
            launcher: kiln_supervisor::Launcher::Local,
            engine_kind: "run".into(),
            labels: Map::new(),
            lease_ttl: crate::engine::DEFAULT_LEASE_TTL,
        }
    }
}

struct Inner {
    store: Store,
    /// The newest plugins: what a run that starts now uses (hot reload replaces them).
    installed: std::sync::RwLock<Arc<PluginRegistry>>,
    ws: Workspace,
    config: RunnerConfig,
    gpus: GpuPool,
    engine: EngineSession,
}

/// Creates and executes runs. Cheap to clone.
///
/// A runner is pinned to one set of plugins: a run executes with the exact components (digests)
/// it started with, whatever is installed meanwhile ([`Runner::current`] pins the newest).
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
    plugins: Arc<PluginRegistry>,
}

struct StepOutcome {
    status: StepStatus,
    outputs: Option<Value>,
    error: Option<String>,
    kind: Option<RetryOn>,
    cached_from: Option<String>,
}

impl StepOutcome {
    fn failed(kind: RetryOn, error: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Failed,
            outputs: None,
            error: Some(error.into()),
            kind: Some(kind),
            cached_from: None,
        }
    }

    fn succeeded(outputs: Value) -> Self {
        Self {
            status: StepStatus::Succeeded,
            outputs: Some(outputs),
            error: None,
            kind: None,
            cached_from: None,
        }
    }

    fn cancelled() -> Self {
        Self {
            status: StepStatus::Cancelled,
            outputs: None,
            error: Some("cancelled".into()),
            kind: None,
            cached_from: None,
        }
    }
}

/// The workflow of a run as it was when the run was created (the definition is stored with the
/// run), for resuming, retrying and recovering it.
pub fn stored_workflow(
    run: &RunRecord,
) -> std::result::Result<Workflow, kiln_workflow::Diagnostics> {
    let file = run
        .workflow_file
        .clone()
        .unwrap_or_else(|| format!("run {}", run.id));
    Workflow::parse(&run.workflow_yaml, &file)
}

fn retry_reason(infrastructure: bool) -> RetryReason {
    if infrastructure {
        RetryReason::Infrastructure
    } else {
        RetryReason::Failure
    }
}

fn kind_name(kind: RetryOn) -> &'static str {
    match kind {
        RetryOn::Failure => "failure",
        RetryOn::Infrastructure => "infrastructure",
    }
}

impl Runner {
    pub fn new(
        store: Store,
        plugins: Arc<PluginRegistry>,
        ws: Workspace,
        config: RunnerConfig,
    ) -> Self {
        let gpus = GpuPool::new(
            config.gpus.clone(),
            ws.gpu_dir(&kiln_supervisor::host_name()),
        );
        let engine = EngineSession::new(
            store.clone(),
            &config.engine_kind,
            config.labels.clone(),
            gpus.count(),
            config.lease_ttl,
        );
        Self {
            inner: Arc::new(Inner {
                engine,
                store,
                installed: std::sync::RwLock::new(plugins.clone()),
                ws,
                config,
                gpus,
            }),
            plugins,
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This process as an engine (its leases).
    pub fn engine(&self) -> &EngineSession {
        &self.inner.engine
    }

    /// What an engine must offer to execute `workflow`: the labels its steps ask for in
    /// `runs_on`, and, when programs run on the engine's machine, its largest step's GPUs.
    pub fn requirements(&self, workflow: &Workflow) -> Requirements {
        let mut requires = Requirements::default();
        for step in &workflow.steps {
            for (k, v) in &step.runs_on {
                requires.labels.insert(k.clone(), v.clone());
            }
            if matches!(self.inner.config.launcher, kiln_supervisor::Launcher::Local) {
                requires.gpus = requires.gpus.max(step.resources.gpus);
            }
        }
        requires
    }

    /// The plugins this runner is pinned to.
    pub fn plugins(&self) -> &PluginRegistry {
        &self.plugins
    }

    /// The newest installed plugins.
    pub fn installed_plugins(&self) -> Arc<PluginRegistry> {
        self.inner
            .installed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A runner pinned to the newest installed plugins, for a run that starts now.
    pub fn current(&self) -> Runner {
        Runner {
            inner: self.inner.clone(),
            plugins: self.installed_plugins(),
        }
    }

    /// Install `plugins` for the runs that start from now on; running runs keep theirs.
    pub fn install_plugins(&self, plugins: Arc<PluginRegistry>) {
        *self
            .inner
            .installed
            .write()
            .unwrap_or_else(|e| e.into_inner()) = plugins;
    }

    pub fn workspace(&self) -> &Workspace {
        &self.inner.ws
    }

    /// Grace between SIGTERM and SIGKILL when stopping a step's programs.
    pub fn kill_grace(&self) -> Duration {
        self.inner.config.kill_grace
    }

    /// Number of GPUs the machine has (for validation).
    pub fn gpu_count(&self) -> u32 {
        self.inner.gpus.count()
    }

    /// The GPUs `resources.gpus` is checked against: this machine's, or None when Slurm places
    /// the steps.
    pub fn gpu_limit(&self) -> Option<u32> {
        match self.inner.config.launcher {
            kiln_supervisor::Launcher::Local => Some(self.gpu_count()),
            kiln_supervisor::Launcher::Slurm(_) => None,
        }
    }

    /// Where plugin steps' programs run.
    pub fn launcher(&self) -> &kiln_supervisor::Launcher {
        &self.inner.config.launcher
    }

    /// Record a new run of `workflow` with resolved `params` and its planned steps, and claim
    /// the training folders its steps name through params alone (see [`crate::ownership`]):
    /// a training another run owns, or a folder no run owns, refuses the run.
    pub async fn create(
        &self,
        workflow: &Workflow,
        workflow_yaml: String,
        params: &Map<String, Value>,
        created_by: &str,
    ) -> Result<RunRecord> {
        Ok(self
            .record(workflow, workflow_yaml, params, created_by, false)
            .await?
            .0)
    }

    /// [`Self::create`] for a run this process executes at once: the run is recorded
    /// `running` with its lease held by this engine, in the same commit as its creation. Pass
    /// the lease to [`Self::execute`]. With `queue_elsewhere`, a run whose requirements this
    /// engine does not meet is recorded `queued` instead (no lease), for an engine that meets
    /// them to claim; without it, such a run is refused.
    pub async fn start(
        &self,
        workflow: &Workflow,
        workflow_yaml: String,
        params: &Map<String, Value>,
        created_by: &str,
        queue_elsewhere: bool,
    ) -> Result<(RunRecord, Option<RunLease>)> {
        let unmet = self.inner.engine.unmet(&self.requirements(workflow));
        if !unmet.is_empty() && !queue_elsewhere {
            return Err(Error::Input(format!(
                "this engine lacks {} that workflow `{}` asks for (`runs_on`,                  `resources.gpus`); run it through `kiln serve` engines that offer them                  (`kiln serve --label KEY=VALUE`)",
                unmet.join(", "),
                workflow.name
            )));
        }
        if unmet.is_empty() {
            self.inner.engine.register();
        }
        self.record(
            workflow,
            workflow_yaml,
            params,
            created_by,
            unmet.is_empty(),
        )
        .await
    }

    /// Records a run; `leased`: held by this engine from its creation, and `running`.
    async fn record(
        &self,
        workflow: &Workflow,
        workflow_yaml: String,
        params: &Map<String, Value>,
        created_by: &str,
        leased: bool,
    ) -> Result<(RunRecord, Option<RunLease>)> {
        let id = uuid::Uuid::now_v7().to_string();
        let file = workflow.file().display().to_string();
        let trainings = ownership::planned_trainings(&self.inner.ws, workflow, params)?;
        for training in &trainings {
            ownership::check_unowned_folder(&self.inner.ws, &self.inner.store, training, None)
                .await?;
        }
        let steps: Vec<NewStep> = workflow
            .steps
            .iter()
            .map(|s| NewStep {
                step_id: s.id.clone(),
                uses: s.uses.clone(),
                action: s.action.clone(),
            })
            .collect();
        let run = self
            .inner
            .store
            .create_run(
                &NewRun {
                    id: id.clone(),
                    workflow_name: workflow.name.clone(),
                    workflow_file: (!file.is_empty()).then_some(file),
                    workflow_yaml,
                    params: Value::Object(params.clone()),
                    created_by: created_by.to_owned(),
                    requires: self.requirements(workflow).to_json(),
                },
                &steps,
                &trainings,
                leased.then(|| self.inner.engine.record()),
            )
            .await
            .map_err(ownership::conflict)?;
        let (run, lease) = run;
        Ok((run, lease.map(|l| self.inner.engine.adopt_created(l))))
    }

    /// Start step `i` in its own task, with the outputs of only its dependencies. `attempts`:
    /// the step's attempts as recorded when this execution began (its next is that + 1).
    #[allow(clippy::too_many_arguments)]
    fn spawn_step(
        &self,
        tasks: &mut JoinSet<(usize, StepOutcome)>,
        run: &RunRecord,
        workflow: &Workflow,
        i: usize,
        ctx: &ExprContext,
        cancel: &CancellationToken,
        updates: &Option<UnboundedSender<RunUpdate>>,
        resuming: bool,
        attempts: i64,
    ) {
        let step = workflow.steps[i].clone();
        let ctx = ctx.only(workflow.dependencies(&step.id));
        let this = self.clone();
        let (run_id, created_by) = (run.id.clone(), run.created_by.clone());
        let (token, updates) = (cancel.child_token(), updates.clone());
        tasks.spawn(async move {
            let outcome = this
                .run_step(
                    &run_id,
                    &created_by,
                    &step,
                    &ctx,
                    token,
                    updates,
                    resuming,
                    attempts,
                )
                .await;
            (i, outcome)
        });
    }

    /// Execute a run to its end: a new run, one interrupted by an engine crash (resumed), or a
    /// failed one reset for retry. Returns the final run record. `lease`: the run's lease when
    /// the caller took it (see [`Self::start`] and the run service); without it the lease is
    /// taken here (held by another engine: a conflict). A run not yet recorded `running` is
    /// marked so. When the lease is lost meanwhile, execution stops at once, without a write
    /// and without touching the run's programs: [`Error::LeaseLost`].
    pub async fn execute(
        &self,
        run: &RunRecord,
        lease: Option<RunLease>,
        workflow: &Workflow,
        params: &Map<String, Value>,
        cancel: CancellationToken,
        updates: Option<UnboundedSender<RunUpdate>>,
    ) -> Result<RunRecord> {
        let mut lease = match lease {
            Some(lease) => lease,
            None => self.inner.engine.acquire(&run.id).await?,
        };
        let done = tokio::select! {
            // Dropping the execution drops its step tasks (a `JoinSet`): plugin calls end where
            // they are, supervised programs keep running for the new owner.
            done = self.execute_leased(run, lease.created(), workflow, params, cancel, updates) => match done {
                // A write refused by the store's fencing: the lease went to another engine
                // before this one's renewal noticed.
                Err(Error::Store(kiln_store::Error::LeaseLost { message, .. })) => {
                    lease.refused(&message);
                    Err(Error::LeaseLost { run: run.id.clone(), reason: message })
                }
                done => done,
            },
            reason = lease.lost() => Err(Error::LeaseLost { run: run.id.clone(), reason }),
        };
        if done.is_ok() {
            lease.ended();
        }
        done
    }

    /// `created`: the lease was taken in the commit that created the run, so nothing has
    /// touched it: its steps are all queued as created, with no attempt, and are not read back.
    async fn execute_leased(
        &self,
        run: &RunRecord,
        created: bool,
        workflow: &Workflow,
        params: &Map<String, Value>,
        cancel: CancellationToken,
        updates: Option<UnboundedSender<RunUpdate>>,
    ) -> Result<RunRecord> {
        let store = &self.inner.store;
        // A run recorded `running` at its creation is not marked again.
        if run.status != RunStatus::Running {
            store.start_run(&run.id).await?;
        }
        // Ends with the execution, however it ends (a lost lease drops it mid-way).
        let watcher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watch_run(
            store.clone(),
            run.id.clone(),
            cancel.clone(),
        )));

        // Dependencies by index: deciding what to start costs the edges involved.
        let index: HashMap<&str, usize> = workflow
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let deps: Vec<Vec<usize>> = workflow
            .steps
            .iter()
            .map(|s| {
                workflow
                    .dependencies(&s.id)
                    .into_iter()
                    .filter_map(|d| index.get(d).copied())
                    .collect()
            })
            .collect();
        let mut schedule = Schedule::new(deps);
        let mut ctx = ExprContext::new(params.clone());
        let mut tasks: JoinSet<(usize, StepOutcome)> = JoinSet::new();
        let mut first_failure: Option<String> = None;
        let mut cancelled = false;
        let mut metrics: Option<Value> = None;

        // What an earlier execution of this run already did.
        let mut interrupted: BTreeSet<usize> = BTreeSet::new();
        // Only this engine changes them while it holds the run's lease.
        let mut attempts: Vec<i64> = vec![0; workflow.steps.len()];
        // Under the lease its creation took, the steps are as that commit wrote them (queued,
        // no attempt); any other lease may follow an execution, a cancel or a retry.
        let recorded = if created {
            Vec::new()
        } else {
            store.steps(&run.id).await?
        };
        for record in recorded {
            let Some(&i) = index.get(record.step_id.as_str()) else {
                continue;
            };
            attempts[i] = record.attempt;
            match record.status {
                StepStatus::Succeeded => {
                    if let Some(Value::Object(out)) = &record.outputs {
                        if let Some(m @ Value::Object(_)) = out.get("metrics") {
                            metrics = Some(m.clone());
                        }
                        ctx.set_outputs(record.step_id.clone(), out.clone());
                    }
                    schedule.end(i, StepStatus::Succeeded);
                }
                StepStatus::Running => {
                    interrupted.insert(i);
                }
                StepStatus::Failed => {
                    first_failure.get_or_insert(format!(
                        "step `{}` failed: {}",
                        record.step_id,
                        record.error_message.as_deref().unwrap_or("unknown error")
                    ));
                    schedule.end(i, StepStatus::Failed);
                }
                StepStatus::Skipped | StepStatus::Cancelled => schedule.end(i, record.status),
                StepStatus::Queued => {}
            }
        }

        let max_parallel = self.inner.config.max_parallel.max(1);
        loop {
            // A step that ended because of the cancel can be joined before the cancel itself is
            // seen below: check it here, or its dependents would be skipped and the run
            // reported as succeeded.
            cancelled |= cancel.is_cancelled();
            let can_start = !cancelled && first_failure.is_none();
            // Interrupted steps first, whatever the limit or an earlier failure: their programs
            // may be running.
            for &i in &interrupted {
                if schedule.is_ready(i) {
                    schedule.start(i);
                    self.spawn_step(
                        &mut tasks,
                        run,
                        workflow,
                        i,
                        &ctx,
                        &cancel,
                        &updates,
                        true,
                        attempts[i],
                    );
                }
            }
            // Then ready steps in file order while there is room. A step whose dependency did
            // not succeed is skipped, and its dependents become ready in turn.
            let mut cursor = 0;
            while can_start && tasks.len() < max_parallel {
                let Some(i) = schedule.next_ready(cursor) else {
                    break;
                };
                cursor = i + 1;
                let step = &workflow.steps[i];
                if let Some(bad) = schedule.failed_dependency(i) {
                    let reason = format!("not run: `{}` did not succeed", workflow.steps[bad].id);
                    store.end_step_soon(&run.id, &step.id, ended(StepStatus::Skipped, &reason));
                    notify(
                        &updates,
                        finished(&step.id, StepStatus::Skipped, Some(reason)),
                    );
                    schedule.end(i, StepStatus::Skipped);
                    // Its dependents may be ready now, before the cursor.
                    cursor = 0;
                    continue;
                }
                schedule.start(i);
                self.spawn_step(
                    &mut tasks,
                    run,
                    workflow,
                    i,
                    &ctx,
                    &cancel,
                    &updates,
                    false,
                    attempts[i],
                );
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (i, outcome) = match joined {
                        Ok(pair) => pair,
                        Err(e) => {
                            // A panicking step task is a bug; record it rather than lose the run.
                            first_failure.get_or_insert(format!("internal error in a step: {e}"));
                            continue;
                        }
                    };
                    let step_id = workflow.steps[i].id.clone();
                    // Durable with the next commit: the start of a step that needs it, or the
                    // run's end.
                    store.end_step_soon(&run.id, &step_id, StepEnd {
                        status: outcome.status,
                        outputs: outcome.outputs.clone(),
                        error_message: outcome.error.clone(),
                        failure_kind: outcome.kind.map(|k| kind_name(k).to_owned()),
                        cached_from: outcome.cached_from.clone(),
                    });
                    notify(&updates, finished(&step_id, outcome.status, outcome.error.clone()));
                    if let (StepStatus::Succeeded, Some(Value::Object(out))) = (outcome.status, &outcome.outputs) {
                        if let Some(m @ Value::Object(_)) = out.get("metrics") {
                            metrics = Some(m.clone());
                        }
                        ctx.set_outputs(step_id.clone(), out.clone());
                    }
                    if outcome.status == StepStatus::Failed {
                        first_failure.get_or_insert(format!(
                            "step `{step_id}` failed: {}",
                            outcome.error.as_deref().unwrap_or("unknown error")
                        ));
                    }
                    schedule.end(i, outcome.status);
                }
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                }
            }
        }
        drop(watcher);

        // Steps that never started.
        for i in schedule.never_started().collect::<Vec<_>>() {
            let step = &workflow.steps[i];
            let (status, reason) = if cancelled {
                (
                    StepStatus::Cancelled,
                    "run cancelled before the step started".to_owned(),
                )
            } else {
                (
                    StepStatus::Skipped,
                    match &first_failure {
                        Some(f) => format!("not run: {f}"),
                        None => "not run".to_owned(),
                    },
                )
            };
            store.end_step_soon(&run.id, &step.id, ended(status, &reason));
            notify(&updates, finished(&step.id, status, Some(reason)));
        }
        let (status, error) = if cancelled {
            (RunStatus::Cancelled, Some("cancelled".to_owned()))
        } else if let Some(f) = first_failure {
            (RunStatus::Failed, Some(f))
        } else {
            (RunStatus::Succeeded, None)
        };
        Ok(store
            .finish_run(&run.id, status, error.as_deref(), metrics.as_ref())
            .await?)
    }
}
