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
//!   instead of starting them again. One process executes a run at a time (`RunLock`).
//! - Memoization is opt-in (`cache: true`): same plugin digest, action, inputs and input file
//!   digests reuse earlier outputs; the step records `cached_from`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use kiln_plugin_host::{
    FailureKind, GrantedDir, PluginRegistry, ProcessTracker, RetryContext, RetryReason, StepEvent,
    StepInvocation,
};
use kiln_store::{
    NewRun, NewStep, PluginIdentity, RunRecord, RunStatus, StepEnd, StepStatus, Store,
};
use kiln_workflow::{ExprContext, RetryOn, Step, Workflow, render_inputs_until};

use crate::builtins::{self, BuiltinCtx};
use crate::gpu::{GpuLease, GpuPool};
use crate::run_lock::RunLock;
use crate::{Error, Result, Workspace, memo, ownership};

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
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_parallel: 4,
            kill_grace: Duration::from_secs(10),
            gpus: Vec::new(),
        }
    }
}

struct Inner {
    store: Store,
    plugins: Arc<PluginRegistry>,
    ws: Workspace,
    config: RunnerConfig,
    gpus: GpuPool,
}

/// Creates and executes runs. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
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
        let gpus = GpuPool::new(config.gpus.clone(), ws.kiln_dir().join("gpus"));
        Self {
            inner: Arc::new(Inner {
                store,
                plugins,
                ws,
                config,
                gpus,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn plugins(&self) -> &PluginRegistry {
        &self.inner.plugins
    }

    pub fn workspace(&self) -> &Workspace {
        &self.inner.ws
    }

    /// Number of GPUs the machine has (for validation).
    pub fn gpu_count(&self) -> u32 {
        self.inner.gpus.count()
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
        self.record(workflow, workflow_yaml, params, created_by, None)
            .await
    }

    /// [`Self::create`] for a run this process executes at once: the run lock is taken first
    /// and the run is recorded `running`, in the same commit as its creation. Pass the lock to
    /// [`Self::execute`].
    pub async fn start(
        &self,
        workflow: &Workflow,
        workflow_yaml: String,
        params: &Map<String, Value>,
        created_by: &str,
    ) -> Result<(RunRecord, RunLock)> {
        let id = uuid::Uuid::now_v7().to_string();
        let lock = RunLock::acquire(&self.inner.ws.run_dir(&id))
            .map_err(|e| Error::Input(format!("run {id}: {e}")))?;
        let run = self
            .record(workflow, workflow_yaml, params, created_by, Some(id))
            .await?;
        Ok((run, lock))
    }

    /// Records a run; `started`: the id of a run whose lock the caller holds.
    async fn record(
        &self,
        workflow: &Workflow,
        workflow_yaml: String,
        params: &Map<String, Value>,
        created_by: &str,
        started: Option<String>,
    ) -> Result<RunRecord> {
        let is_started = started.is_some();
        let id = started.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
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
                },
                &steps,
                &trainings,
                is_started,
            )
            .await
            .map_err(ownership::conflict)?;
        Ok(run)
    }

    /// Execute a run to its end: a new run, one interrupted by an engine crash (resumed), or a
    /// failed one reset for retry. Returns the final run record. `lock`: the run lock when the
    /// run was recorded running by [`Self::start`]; without it the lock is taken here (held by
    /// another process: an error) and the run marked running.
    pub async fn execute(
        &self,
        run: &RunRecord,
        lock: Option<RunLock>,
        workflow: &Workflow,
        params: &Map<String, Value>,
        cancel: CancellationToken,
        updates: Option<UnboundedSender<RunUpdate>>,
    ) -> Result<RunRecord> {
        let store = &self.inner.store;
        let _lock = match lock {
            Some(lock) => lock,
            None => {
                let lock = RunLock::acquire(&self.inner.ws.run_dir(&run.id))
                    .map_err(|e| Error::Input(format!("run {}: {e}", run.id)))?;
                store.start_run(&run.id).await?;
                lock
            }
        };
        let watcher = tokio::spawn(watch_run(store.clone(), run.id.clone(), cancel.clone()));

        let deps: HashMap<&str, Vec<&str>> = workflow
            .steps
            .iter()
            .map(|s| (s.id.as_str(), workflow.dependencies(&s.id)))
            .collect();
        let mut done: HashMap<String, StepStatus> = HashMap::new();
        let mut started: HashSet<String> = HashSet::new();
        let mut ctx = ExprContext::new(params.clone());
        let mut tasks: JoinSet<(String, StepOutcome)> = JoinSet::new();
        let mut first_failure: Option<String> = None;
        let mut cancelled = false;
        let mut metrics: Option<Value> = None;

        // What an earlier execution of this run already did.
        let mut interrupted: HashSet<String> = HashSet::new();
        for record in store.steps(&run.id).await? {
            match record.status {
                StepStatus::Succeeded => {
                    if let Some(Value::Object(out)) = &record.outputs {
                        if let Some(m @ Value::Object(_)) = out.get("metrics") {
                            metrics = Some(m.clone());
                        }
                        ctx.set_outputs(record.step_id.clone(), out.clone());
                    }
                    done.insert(record.step_id, StepStatus::Succeeded);
                }
                StepStatus::Running => {
                    interrupted.insert(record.step_id);
                }
                StepStatus::Failed => {
                    first_failure.get_or_insert(format!(
                        "step `{}` failed: {}",
                        record.step_id,
                        record.error_message.as_deref().unwrap_or("unknown error")
                    ));
                    done.insert(record.step_id, StepStatus::Failed);
                }
                StepStatus::Skipped | StepStatus::Cancelled => {
                    done.insert(record.step_id, record.status);
                }
                StepStatus::Queued => {}
            }
        }

        loop {
            // A step that ended because of the cancel can be joined before the cancel itself is
            // seen below: check it here, or its dependents would be skipped and the run
            // reported as succeeded.
            cancelled |= cancel.is_cancelled();
            // Start what is ready (interrupted steps first: their programs may be running), skip
            // what can never run.
            let can_start = !cancelled && first_failure.is_none();
            for step in &workflow.steps {
                if started.contains(&step.id) || done.contains_key(&step.id) {
                    continue;
                }
                let resuming = interrupted.contains(&step.id);
                if !can_start && !resuming {
                    continue;
                }
                let my_deps = &deps[step.id.as_str()];
                if let Some(bad) = my_deps
                    .iter()
                    .find(|d| done.get(**d).is_some_and(|s| *s != StepStatus::Succeeded))
                {
                    let reason = format!("not run: `{bad}` did not succeed");
                    store.end_step_soon(&run.id, &step.id, ended(StepStatus::Skipped, &reason));
                    notify(
                        &updates,
                        finished(&step.id, StepStatus::Skipped, Some(reason)),
                    );
                    done.insert(step.id.clone(), StepStatus::Skipped);
                    continue;
                }
                let ready = my_deps
                    .iter()
                    .all(|d| done.get(*d) == Some(&StepStatus::Succeeded));
                if !ready || (!resuming && tasks.len() >= self.inner.config.max_parallel.max(1)) {
                    continue;
                }
                started.insert(step.id.clone());
                let this = self.clone();
                let (run_id, created_by) = (run.id.clone(), run.created_by.clone());
                let (step, token, updates) = (step.clone(), cancel.child_token(), updates.clone());
                let ctx = ctx.only(my_deps.iter().copied());
                tasks.spawn(async move {
                    let outcome = this
                        .run_step(&run_id, &created_by, &step, &ctx, token, updates, resuming)
                        .await;
                    (step.id, outcome)
                });
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (step_id, outcome) = match joined {
                        Ok(pair) => pair,
                        Err(e) => {
                            // A panicking step task is a bug; record it rather than lose the run.
                            first_failure.get_or_insert(format!("internal error in a step: {e}"));
                            continue;
                        }
                    };
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
                    done.insert(step_id, outcome.status);
                }
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                }
            }
        }
        watcher.abort();

        // Steps that never started.
        for step in &workflow.steps {
            if done.contains_key(&step.id) || started.contains(&step.id) {
                continue;
            }
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

    /// Render a step's inputs, then run it with its retry policy. Rendering is bounded by
    /// its work budget and by the step's `timeout`, and a cancelled run does not render.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        run_id: &str,
        created_by: &str,
        step: &Step,
        ctx: &ExprContext,
        cancel: CancellationToken,
        updates: Option<UnboundedSender<RunUpdate>>,
        mut resuming: bool,
    ) -> StepOutcome {
        let store = &self.inner.store;
        if cancel.is_cancelled() {
            return StepOutcome::cancelled();
        }
        let deadline = step
            .timeout
            .and_then(|t| std::time::Instant::now().checked_add(t.as_duration()));
        let inputs = match render_inputs_until(step, ctx, deadline) {
            Ok(inputs) => inputs,
            Err(e) => {
                // The step failed without an attempt: record it as started, with no inputs.
                let recorded = match resuming {
                    true => Ok(0),
                    false => {
                        store
                            .start_step(run_id, &step.id, &Value::Null, None, None)
                            .await
                    }
                };
                let message = match recorded {
                    Ok(_) => e.to_string(),
                    Err(store_error) => format!("{e} (and recording it failed: {store_error})"),
                };
                return StepOutcome::failed(RetryOn::Failure, message);
            }
        };
        let policy = step.retry.clone().unwrap_or_default();
        // An interrupted attempt that was itself a retry keeps telling the plugin why.
        let mut retry: Option<RetryContext> = None;
        // True only for the first attempt after an engine restart (for the step's log).
        let mut restarted = resuming;
        if resuming
            && let Ok(record) = store.step(run_id, &step.id).await
            && let Some(reason) = record.retry_reason.as_deref()
        {
            retry = Some(RetryContext {
                reason: retry_reason(reason == "infrastructure"),
                previous_error: record.retry_error.unwrap_or_default(),
            });
        }
        loop {
            let outcome = match self
                .attempt(
                    run_id,
                    created_by,
                    step,
                    &inputs,
                    &cancel,
                    &updates,
                    resuming,
                    restarted,
                    retry.clone(),
                )
                .await
            {
                Ok(o) => o,
                Err(e) => StepOutcome::failed(RetryOn::Failure, e.to_string()),
            };
            let Some(kind) = outcome.kind else {
                return outcome;
            };
            if cancel.is_cancelled() {
                return outcome;
            }
            let Ok(record) = store.step(run_id, &step.id).await else {
                return outcome;
            };
            let infrastructure = kind == RetryOn::Infrastructure;
            let used = if infrastructure {
                record.infrastructure_retries
            } else {
                record.failure_retries
            } as u32;
            let budget = policy.retries(kind);
            if used >= budget {
                return outcome;
            }
            let delay = policy.delay(used + 1);
            let error = outcome.error.clone().unwrap_or_default();
            let message = format!(
                "attempt {} failed ({}): {error}; retrying in {:.0?} (retry {} of {budget} for {} failures)",
                record.attempt,
                kind_name(kind),
                delay,
                used + 1,
                kind_name(kind)
            );
            store.append_event_soon(run_id, Some(&step.id), "warn", &message);
            notify(
                &updates,
                RunUpdate::StepLog {
                    step_id: step.id.clone(),
                    level: "warn".into(),
                    message,
                },
            );
            // The next attempt is recorded before the wait: an engine that dies meanwhile
            // resumes it instead of failing (and counting) the previous one again.
            if store
                .begin_retry(run_id, &step.id, infrastructure, &error)
                .await
                .is_err()
            {
                return outcome;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return StepOutcome::cancelled(),
            }
            resuming = true;
            restarted = false;
            retry = Some(RetryContext {
                reason: retry_reason(infrastructure),
                previous_error: error,
            });
        }
    }

    /// One attempt of a step. `resuming`: the attempt is already recorded (an interrupted one,
    /// or a retry begun by `begin_retry`), so it is continued rather than counted anew.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        run_id: &str,
        created_by: &str,
        step: &Step,
        inputs: &Value,
        cancel: &CancellationToken,
        updates: &Option<UnboundedSender<RunUpdate>>,
        resuming: bool,
        restarted: bool,
        retry: Option<RetryContext>,
    ) -> Result<StepOutcome> {
        let store = &self.inner.store;
        let ws = &self.inner.ws;
        let is_plugin = !step.uses.starts_with("builtin/");
        let log_path = is_plugin.then(|| ws.log_dir(run_id).join(format!("{}.log", step.id)));
        let attempt = if resuming {
            store.resume_step(run_id, &step.id).await?
        } else {
            // The plugin that runs the step is recorded with its start (one commit).
            let plugin = is_plugin
                .then(|| self.inner.plugins.get(&step.uses))
                .flatten()
                .map(|p| PluginIdentity {
                    name: &p.info.name,
                    version: &p.info.version,
                    digest: &p.info.digest,
                });
            store
                .start_step(
                    run_id,
                    &step.id,
                    inputs,
                    log_path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .as_deref(),
                    plugin,
                )
                .await?
        };
        notify(
            updates,
            RunUpdate::StepStarted {
                step_id: step.id.clone(),
                attempt,
            },
        );
        let (tx, rx) = unbounded_channel::<StepEvent>();
        let drain = tokio::spawn(persist_events(
            store.clone(),
            run_id.to_owned(),
            step.id.clone(),
            rx,
            updates.clone(),
        ));
        if restarted {
            let _ = tx.send(StepEvent::Log {
                level: "info".into(),
                message: format!("continuing attempt {attempt} after an engine restart"),
            });
        }
        let outcome = self
            .attempt_inner(
                run_id, created_by, step, inputs, cancel, attempt, resuming, retry, &tx,
            )
            .await;
        drop(tx);
        let _ = drain.await;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt_inner(
        &self,
        run_id: &str,
        created_by: &str,
        step: &Step,
        inputs: &Value,
        cancel: &CancellationToken,
        attempt: i64,
        resuming: bool,
        retry: Option<RetryContext>,
        tx: &UnboundedSender<StepEvent>,
    ) -> Result<StepOutcome> {
        let store = &self.inner.store;
        let ws = &self.inner.ws;
        let is_plugin = !step.uses.starts_with("builtin/");
        let log = |level: &str, message: String| {
            let _ = tx.send(StepEvent::Log {
                level: level.into(),
                message,
            });
        };

        // The training folder the step works in must be the run's own.
        if let Err(e) = ownership::claim_for_step(ws, store, run_id, inputs).await {
            return match e {
                Error::Conflict(message) | Error::Input(message) => {
                    Ok(StepOutcome::failed(RetryOn::Failure, message))
                }
                other => Err(other),
            };
        }

        // Memoized outputs.
        let cache_key = if step.cache {
            let implementation = if is_plugin {
                match self.inner.plugins.get(&step.uses) {
                    Some(p) => format!("{}@{}", p.info.name, p.info.digest),
                    None => step.uses.clone(),
                }
            } else {
                format!("{}@kiln-{}", step.uses, env!("CARGO_PKG_VERSION"))
            };
            Some(memo::cache_key(
                &implementation,
                step.action.as_deref(),
                inputs,
                ws.root(),
            ))
        } else {
            None
        };
        if let Some(key) = &cache_key
            && !resuming
            && let Some(hit) = store.cached_outputs(key).await?
        {
            let from = format!("{}/{}", hit.run_id, hit.step_id);
            log(
                "info",
                format!(
                    "cached: reused the outputs of step `{}` of run {}",
                    hit.step_id, hit.run_id
                ),
            );
            let mut outcome = StepOutcome::succeeded(hit.outputs);
            outcome.cached_from = Some(from);
            return Ok(outcome);
        }

        // GPU slots.
        let lease: Option<GpuLease> = if !self.inner.gpus.managed() {
            None
        } else if let Some(devices) = store
            .step(run_id, &step.id)
            .await?
            .gpus
            .filter(|_| resuming)
        {
            let devices: Vec<u32> = devices.split(',').filter_map(|d| d.parse().ok()).collect();
            Some(
                self.inner
                    .gpus
                    .relock(&devices)
                    .map_err(|e| Error::io("locking GPUs in", &ws.kiln_dir(), e))?,
            )
        } else if step.resources.gpus == 0 {
            Some(self.inner.gpus.none())
        } else {
            let n = step.resources.gpus;
            let lease = match self
                .inner
                .gpus
                .try_lease(n)
                .map_err(|e| Error::io("locking GPUs in", &ws.kiln_dir(), e))?
            {
                Some(l) => l,
                None => {
                    log("info", format!("waiting for {n} free GPU(s)"));
                    tokio::select! {
                        l = self.inner.gpus.lease(n) => l.map_err(|e| Error::io("locking GPUs in", &ws.kiln_dir(), e))?,
                        _ = cancel.cancelled() => return Ok(StepOutcome::cancelled()),
                    }
                }
            };
            let devices = lease
                .devices
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            store.set_step_gpus(run_id, &step.id, &devices).await?;
            log("info", format!("leased GPU(s) {devices}"));
            Some(lease)
        };

        let tracker = ProcessTracker::default();
        let work = async {
            if is_plugin {
                self.run_plugin_step(
                    run_id,
                    step,
                    attempt,
                    inputs,
                    &tracker,
                    tx.clone(),
                    retry,
                    lease.as_ref(),
                )
                .await
            } else {
                let log_tx = tx.clone();
                let log = move |message: &str| {
                    let _ = log_tx.send(StepEvent::Log {
                        level: "info".into(),
                        message: message.to_owned(),
                    });
                };
                let ctx = BuiltinCtx {
                    ws,
                    store,
                    run_id,
                    step_id: &step.id,
                    created_by,
                    inputs,
                    log: &log,
                };
                builtins::run(&step.uses, &ctx)
                    .await
                    .map_err(|e| (FailureKind::InvalidInput, e.to_string()))
            }
        };
        let timeout = step.timeout.map(|t| t.as_duration());
        let outcome = tokio::select! {
            r = async {
                match timeout {
                    Some(t) => tokio::time::timeout(t, work).await.map_err(|_| t),
                    None => Ok(work.await),
                }
            } => match r {
                Ok(Ok(outputs)) => StepOutcome::succeeded(outputs),
                Ok(Err((FailureKind::Infrastructure, message))) => StepOutcome::failed(RetryOn::Infrastructure, message),
                Ok(Err((_, message))) => StepOutcome::failed(RetryOn::Failure, message),
                Err(t) => {
                    tracker.terminate_all(self.inner.config.kill_grace).await;
                    StepOutcome::failed(RetryOn::Failure, format!(
                        "timed out after {} (the step's `timeout`); its programs were stopped",
                        humantime_like(t)
                    ))
                }
            },
            _ = cancel.cancelled() => {
                tracker.terminate_all(self.inner.config.kill_grace).await;
                StepOutcome::cancelled()
            }
        };
        drop(lease);
        if outcome.status == StepStatus::Succeeded
            && let Some(Value::Object(out)) = &outcome.outputs
        {
            if let Some(epoch) = out.get("resumed_from_epoch").and_then(Value::as_i64) {
                log(
                    "info",
                    format!("training resumed from its checkpoint at epoch {epoch}"),
                );
            }
            if let (Some(key), Some(outputs)) = (&cache_key, &outcome.outputs) {
                store.store_outputs(key, outputs, run_id, &step.id).await?;
            }
        }
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_plugin_step(
        &self,
        run_id: &str,
        step: &Step,
        attempt: i64,
        inputs: &Value,
        tracker: &ProcessTracker,
        events: UnboundedSender<StepEvent>,
        retry: Option<RetryContext>,
        lease: Option<&GpuLease>,
    ) -> std::result::Result<Value, (FailureKind, String)> {
        let ws = &self.inner.ws;
        let plugins = &self.inner.plugins;
        if plugins.get(&step.uses).is_none() {
            return Err((
                FailureKind::Plugin,
                format!("plugin `{}` is not installed", step.uses),
            ));
        }
        let dirs = granted_dirs(ws, &step.uses, inputs)
            .map_err(|e| (FailureKind::InvalidInput, e.to_string()))?;
        let inv = StepInvocation {
            run_id: run_id.to_owned(),
            step_id: step.id.clone(),
            attempt: attempt.max(1) as u32,
            action: step.action.clone().unwrap_or_default(),
            inputs: inputs.clone(),
            dirs,
            log_dir: ws.log_dir(run_id),
            state_dir: ws
                .run_dir(run_id)
                .join("state")
                .join(&step.id)
                .join(format!("attempt-{attempt}")),
            processes: tracker.clone(),
            events: Some(events),
            retry,
            gpus: lease.map(GpuLease::grant),
        };
        plugins
            .run(&step.uses, &inv)
            .await
            .map_err(|f| (f.kind, f.message))
    }
}

/// Poll for cancel requests made from other processes (`kiln runs cancel`) and keep the run's
/// heartbeat fresh.
async fn watch_run(store: Store, run_id: String, cancel: CancellationToken) {
    let mut beat = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if store.cancel_requested(&run_id).await.unwrap_or(false) {
            cancel.cancel();
        }
        if beat.elapsed() >= Duration::from_secs(5) {
            beat = tokio::time::Instant::now();
            let _ = store.heartbeat(&run_id).await;
        }
    }
}

/// Directories a plugin step is granted, from its `project` and `training_name` inputs:
/// the project's training data (read-only), the training's output (read-write) and the
/// plugin's own configuration folder `configs/<plugin>` (read-only).
fn granted_dirs(ws: &Workspace, plugin: &str, inputs: &Value) -> Result<Vec<GrantedDir>> {
    let mut dirs = Vec::new();
    if let Some(project) = inputs.get("project").and_then(Value::as_str) {
        dirs.push(GrantedDir {
            role: "training-data".into(),
            host_path: ws.training_data_dir(project)?,
            guest_path: "/data".into(),
            writable: false,
        });
        if let Some(training) = inputs.get("training_name").and_then(Value::as_str) {
            dirs.push(GrantedDir {
                role: "training-output".into(),
                host_path: ws.training_dir(project, training)?,
                guest_path: "/output".into(),
                writable: true,
            });
        }
    }
    let config = ws.configs_dir().join(plugin);
    if config.is_dir() {
        dirs.push(GrantedDir {
            role: "config".into(),
            host_path: config,
            guest_path: "/config".into(),
            writable: false,
        });
    }
    Ok(dirs)
}

/// Store what a step reports, and tell the watcher.
async fn persist_events(
    store: Store,
    run_id: String,
    step_id: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StepEvent>,
    updates: Option<UnboundedSender<RunUpdate>>,
) {
    while let Some(event) = rx.recv().await {
        let result = match &event {
            StepEvent::Log { level, message } => {
                notify(
                    &updates,
                    RunUpdate::StepLog {
                        step_id: step_id.clone(),
                        level: level.clone(),
                        message: message.clone(),
                    },
                );
                store.append_event_soon(&run_id, Some(&step_id), level, message);
                Ok(())
            }
            StepEvent::Progress {
                percent,
                epoch,
                epochs,
                metrics,
                message,
            } => {
                notify(
                    &updates,
                    RunUpdate::StepProgress {
                        step_id: step_id.clone(),
                        percent: *percent,
                        epoch: *epoch,
                        epochs: *epochs,
                        message: message.clone(),
                    },
                );
                let progress = json!({
                    "percent": percent, "epoch": epoch, "epochs": epochs,
                    "metrics": metrics, "message": message,
                });
                store.set_step_progress_soon(&run_id, &step_id, &progress);
                Ok(())
            }
            StepEvent::Checkpoint {
                host_path,
                epoch,
                best,
            } => {
                store
                    .record_checkpoint(&run_id, &step_id, host_path, epoch.map(i64::from), *best)
                    .await
            }
            StepEvent::Launched {
                program,
                pid,
                log_path,
            } => {
                let message = format!(
                    "launched {program} (pid {pid}); output in {}",
                    log_path.display()
                );
                store.append_event_soon(&run_id, Some(&step_id), "info", &message);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(target: "errors.store", run_id, step_id, "cannot record a step event: {e}");
        }
    }
}

/// The end of a step that did not run (skipped, cancelled), with why.
fn ended(status: StepStatus, reason: &str) -> StepEnd {
    StepEnd {
        status,
        outputs: None,
        error_message: Some(reason.to_owned()),
        failure_kind: None,
        cached_from: None,
    }
}

fn notify(updates: &Option<UnboundedSender<RunUpdate>>, update: RunUpdate) {
    if let Some(tx) = updates {
        let _ = tx.send(update);
    }
}

fn finished(step_id: &str, status: StepStatus, error: Option<String>) -> RunUpdate {
    RunUpdate::StepFinished {
        step_id: step_id.to_owned(),
        status,
        error,
    }
}

fn humantime_like(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}
