//! Runs executing in the server process: started by the API, recovered at start-up, cancelled
//! on request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use kiln_runner::RunService;
use kiln_runner::service::Execution;

use crate::problem::ApiError;

#[derive(Clone)]
pub struct RunManager {
    service: RunService,
    active: Arc<Mutex<HashMap<String, Active>>>,
    accepting: Arc<AtomicBool>,
}

/// A run executing in this process.
struct Active {
    cancel: CancellationToken,
    /// Changes (to `true`) once the execution has ended: the run's end is durable by then.
    ended: watch::Receiver<bool>,
}

impl RunManager {
    pub fn new(service: RunService) -> Self {
        Self {
            service,
            active: Default::default(),
            accepting: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// New runs are refused (503) while the server shuts down.
    pub fn accepting_or_refuse(&self) -> Result<(), ApiError> {
        if self.accepting() {
            return Ok(());
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down and accepts no new runs; retry against the restarted \
             server",
        ))
    }

    /// Records and starts a run of the workflow named `workflow` (from the workflows
    /// directory) with `params` on behalf of `created_by`; it executes in this process.
    pub async fn submit(
        &self,
        workflow: &str,
        params: serde_json::Map<String, serde_json::Value>,
        created_by: &str,
    ) -> Result<kiln_store::RunRecord, ApiError> {
        self.accepting_or_refuse()?;
        let (workflow, yaml) = self.service.workflow(workflow)?;
        let execution = self
            .service
            .submit(workflow, &yaml, params.into_iter().collect(), created_by)
            .await?;
        let run = execution.run.clone();
        self.start(execution);
        Ok(run)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// How many runs execute in this process now.
    pub fn executing(&self) -> usize {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the run executes in this process; `None` when it does not, else a receiver that
    /// changes once its execution has ended.
    fn ended(&self, run_id: &str) -> Option<watch::Receiver<bool>> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .map(|a| a.ended.clone())
    }

    /// Execute a run in the background.
    pub fn start(&self, execution: Execution) {
        let token = CancellationToken::new();
        let run_id = execution.run.id.clone();
        let (ended_tx, ended) = watch::channel(false);
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                run_id.clone(),
                Active {
                    cancel: token.clone(),
                    ended,
                },
            );
        let (service, active) = (self.service.clone(), self.active.clone());
        tracing::info!(target: "operations.training", run_id = %run_id, workflow = %execution.run.workflow_name, "run started");
        tokio::spawn(async move {
            match service.execute(execution, token, None).await {
                Ok(done) => tracing::info!(
                    target: "operations.training",
                    run_id = %done.id,
                    status = %done.status,
                    error = done.error_message.as_deref().unwrap_or(""),
                    "run finished"
                ),
                Err(e) => {
                    tracing::error!(target: "errors.training", run_id = %run_id, "run could not be executed: {e}")
                }
            }
            active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run_id);
            ended_tx.send_replace(true);
        });
    }

    /// Cancel a run: directly when it executes here; else through the run service (the engine
    /// that executes it is asked to stop it, or, when none does, its surviving programs are
    /// stopped here).
    pub async fn cancel(&self, id: &str) -> Result<kiln_store::RunRecord, kiln_runner::Error> {
        let run = self.service.run(id).await?;
        if run.status.is_terminal() {
            return Err(kiln_runner::Error::Conflict(format!(
                "run {} already {}",
                run.id, run.status
            )));
        }
        let token = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run.id)
            .map(|a| a.cancel.clone());
        match token {
            Some(token) => {
                self.service.store().request_cancel(&run.id).await?;
                token.cancel();
                Ok(run)
            }
            None => {
                let grace = self.service.runner().kill_grace();
                match self.service.cancel(&run.id, grace).await? {
                    kiln_runner::service::Cancelled::Requested(run)
                    | kiln_runner::service::Cancelled::Stopped(run) => Ok(run),
                }
            }
        }
    }

    /// Wait until the run is no longer executing in this process, at most `timeout`; whether
    /// it is not.
    pub async fn wait_stopped(&self, run_id: &str, timeout: std::time::Duration) -> bool {
        let Some(mut ended) = self.ended(run_id) else {
            return true;
        };
        tokio::time::timeout(timeout, ended.wait_for(|ended| *ended))
            .await
            .is_ok()
    }

    /// Wait until the run has ended, at most until `deadline` or until `stop` is cancelled
    /// (the server shuts down); the run's record as it then is. A run executing here is
    /// awaited; one that another engine executes is looked up every [`POLL`].
    pub async fn wait_ended(
        &self,
        id: &str,
        deadline: tokio::time::Instant,
        stop: &CancellationToken,
    ) -> Result<kiln_store::RunRecord, kiln_runner::Error> {
        const POLL: std::time::Duration = std::time::Duration::from_millis(250);
        let mut run = self.service.run(id).await?;
        loop {
            if run.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(run);
            }
            let mut ended = self.ended(&run.id);
            if ended.is_none() {
                // Not executing here, or its execution ended since the read above (the end is
                // durable before it leaves the table): look again at once.
                run = self.service.run(&run.id).await?;
                if run.status.is_terminal() {
                    return Ok(run);
                }
            }
            let poll = tokio::time::Instant::now() + POLL;
            tokio::select! {
                _ = stop.cancelled() => return self.service.run(&run.id).await,
                _ = tokio::time::sleep_until(deadline.min(poll)) => {}
                Ok(_) = async {
                    match ended.as_mut() {
                        Some(ended) => ended.wait_for(|ended| *ended).await.map(|_| ()),
                        None => std::future::pending().await,
                    }
                } => {}
            }
            run = self.service.run(&run.id).await?;
        }
    }

    /// Resume the runs that were active when their engine stopped (and that no other process is
    /// executing). Returns how many were resumed.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for run in self.service.store().active_runs().await? {
            match self.service.resume(&run.id).await {
                Ok(execution) => {
                    tracing::info!(target: "operations.training", run_id = %run.id, "recovering run");
                    self.start(execution);
                    n += 1;
                }
                // Another process executes it: not ours to recover.
                Err(kiln_runner::Error::Conflict(_)) => {}
                Err(e) => {
                    tracing::error!(target: "errors.training", run_id = %run.id, "cannot recover: {e}")
                }
            }
        }
        Ok(n)
    }
}
