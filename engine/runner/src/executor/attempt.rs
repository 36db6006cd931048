//! One step: its inputs rendered, its retry policy, each attempt (claims, memoization, GPU
//! lease, timeout, cancel) and the plugin or builtin call itself.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

use kiln_plugin_host::{
    BeforeLaunch, FailureKind, InstanceSlot, ProcessTracker, RetryContext, StepEvent,
    StepInvocation,
};
use kiln_store::{PluginIdentity, StepStatus};
use kiln_workflow::{ExprContext, RetryOn, Step, render_inputs_until};

use super::events::{notify, persist_events};
use super::{RunUpdate, Runner, StepOutcome, kind_name, retry_reason};
use crate::builtins::{self, BuiltinCtx};
use crate::gpu::GpuLease;
use crate::{Error, Result, memo, ownership};

impl Runner {
    /// Render a step's inputs, then run it with its retry policy. Rendering is bounded by
    /// its work budget and by the step's `timeout`, and a cancelled run does not render.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_step(
        &self,
        run_id: &str,
        created_by: &str,
        step: &Step,
        ctx: &ExprContext,
        cancel: CancellationToken,
        updates: Option<UnboundedSender<RunUpdate>>,
        mut resuming: bool,
        attempts: i64,
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
                    attempts,
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
            // The attempt's start may still be queued (a step that launches nothing): read
            // the step as recorded after it.
            if store.flush().await.is_err() {
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
        attempts: i64,
    ) -> Result<StepOutcome> {
        let store = &self.inner.store;
        let ws = &self.inner.ws;
        let is_plugin = !step.uses.starts_with("builtin/");
        let log_path = is_plugin.then(|| ws.step_log(run_id, &step.id, 1));
        let attempt = if resuming {
            store.resume_step(run_id, &step.id).await?
        } else {
            // The plugin that runs the step is recorded with its start (one write).
            let loaded = is_plugin.then(|| self.plugins.get(&step.uses)).flatten();
            let plugin = loaded.map(|p| PluginIdentity {
                name: &p.info.name,
                version: &p.info.version,
                digest: &p.info.digest,
            });
            let log_path = log_path.as_ref().map(|p| p.display().to_string());
            // A plugin step's start need not be durable before the step runs, only before it
            // launches a program (the attempt number keys every launch): the process capability
            // awaits `before_launch`, which flushes the journal. Builtins wait for it.
            if loaded.is_some() {
                let attempt = attempts + 1;
                store.start_step_soon(
                    run_id,
                    &step.id,
                    attempt,
                    inputs,
                    log_path.as_deref(),
                    plugin,
                );
                attempt
            } else {
                store
                    .start_step(run_id, &step.id, inputs, log_path.as_deref(), plugin)
                    .await?
            }
        };
        notify(
            updates,
            RunUpdate::StepStarted {
                step_id: step.id.clone(),
                attempt,
            },
        );
        let (tx, rx) = unbounded_channel::<StepEvent>();
        // Ends with the attempt: an execution dropped (a server's shutdown) writes nothing more.
        let drain = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(persist_events(
            store.clone(),
            run_id.to_owned(),
            step.id.clone(),
            rx,
            updates.clone(),
        )));
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
        // The step's `timeout` bounds the whole attempt: waiting for GPUs and a plugin
        // instance too.
        let timeout = step.timeout.map(|t| t.as_duration());
        let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
        let deadline_passed = || async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let timed_out = |t: Duration, doing: &str| {
            StepOutcome::failed(
                RetryOn::Failure,
                format!(
                    "timed out after {} (the step's `timeout`) {doing}",
                    humantime_like(t)
                ),
            )
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
                match self.plugins.get(&step.uses) {
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
        let slurm = matches!(
            self.inner.config.launcher,
            kiln_supervisor::Launcher::Slurm(_)
        );
        let lease: Option<GpuLease> = if slurm || !self.inner.gpus.managed() {
            // Under Slurm the job holds the step's GPUs (`--gres`), not this machine's slots.
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
                        _ = deadline_passed() => {
                            return Ok(timed_out(timeout.unwrap_or_default(), &format!("while waiting for {n} free GPU(s)")));
                        }
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

        // A place in the plugin engine's instance pool, waited for like GPUs.
        let slot = if is_plugin {
            let engine = self.plugins.engine();
            match engine.try_instance_slot() {
                Some(slot) => Some(slot),
                None => {
                    let n = engine.instance_slots();
                    log(
                        "info",
                        format!("waiting for a free plugin instance (all {n} are in use)"),
                    );
                    tokio::select! {
                        slot = engine.instance_slot() => Some(slot),
                        _ = cancel.cancelled() => return Ok(StepOutcome::cancelled()),
                        _ = deadline_passed() => {
                            return Ok(timed_out(
                                timeout.unwrap_or_default(),
                                "while waiting for a free plugin instance",
                            ));
                        }
                    }
                }
            }
        } else {
            None
        };

        // A frozen engine that wakes up after another engine took its run over (and
        // re-attached to these programs) must not stop them on a timeout or cancel of its own.
        // Confirmed with a renewal that covers the grace period: no takeover while they stop.
        let tracker = ProcessTracker::guarded({
            let (store, run_id) = (self.inner.store.clone(), run_id.to_owned());
            let hold = self
                .inner
                .engine
                .ttl()
                .max(self.inner.config.kill_grace * 2);
            Arc::new(move || {
                let (store, run_id) = (store.clone(), run_id.clone());
                Box::pin(async move { store.holds_lease(&run_id, hold).await })
            })
        });
        let work = async {
            if let Some(slot) = slot {
                self.run_plugin_step(
                    run_id,
                    step,
                    attempt,
                    inputs,
                    &tracker,
                    tx.clone(),
                    retry,
                    lease.as_ref(),
                    slot,
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
        let outcome = tokio::select! {
            r = async {
                match (deadline, timeout) {
                    (Some(d), Some(t)) => tokio::time::timeout_at(d, work).await.map_err(|_| t),
                    _ => Ok(work.await),
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
        slot: InstanceSlot,
    ) -> std::result::Result<Value, (FailureKind, String)> {
        let ws = &self.inner.ws;
        let plugins = &self.plugins;
        let Some(plugin) = plugins.get(&step.uses) else {
            return Err((
                FailureKind::Plugin,
                format!("plugin `{}` is not installed", step.uses),
            ));
        };
        // Rendered values are checked against the kinds the action declares: the plugin never
        // sees a number where it asked for a string.
        let action = step.action.as_deref().unwrap_or_default();
        if let Some(info) = plugin.info.actions.iter().find(|a| a.name == action) {
            crate::catalog::plugin_action_spec(info)
                .check_kinds(inputs)
                .map_err(|e| {
                    (
                        FailureKind::InvalidInput,
                        format!("{}.{action}: {e}", step.uses),
                    )
                })?;
        }
        let dirs = ownership::step_dirs(ws, &step.uses, inputs)
            .map_err(|e| (FailureKind::InvalidInput, e.to_string()))?;
        let inv = StepInvocation {
            run_id: run_id.to_owned(),
            step_id: step.id.clone(),
            attempt: attempt.max(1) as u32,
            action: step.action.clone().unwrap_or_default(),
            inputs: inputs.clone(),
            dirs,
            log_dir: ws.log_dir(run_id),
            state_dir: ws.attempt_state_dir(run_id, &step.id, attempt),
            processes: tracker.clone(),
            events: Some(events),
            retry,
            gpus: lease.map(GpuLease::grant),
            launcher: crate::launchers::for_step(
                &self.inner.config.launcher,
                run_id,
                &step.id,
                step.resources.gpus,
                step.timeout.map(|t| t.as_duration()),
            ),
            // The step's start may still be queued: it is durable before anything is launched,
            // and nothing is launched once another engine holds the run (fenced).
            before_launch: Some(BeforeLaunch::new({
                let (store, run_id) = (self.inner.store.clone(), run_id.to_owned());
                move || {
                    let (store, run_id) = (store.clone(), run_id.clone());
                    async move { store.flush_run(&run_id).await.map_err(|e| e.to_string()) }
                }
            })),
        };
        plugins
            .run(&step.uses, &inv, slot)
            .await
            .map_err(|f| (f.kind, f.message))
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
