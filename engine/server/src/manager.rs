//! Runs executing in the server process: started by the API, recovered at start-up, cancelled
//! on request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use kiln_runner::{RunLock, Runner};
use kiln_store::RunRecord;
use kiln_workflow::Workflow;

#[derive(Clone)]
pub struct RunManager {
    runner: Runner,
    active: Arc<Mutex<HashMap<String, CancellationToken>>>,
    accepting: Arc<AtomicBool>,
}

impl RunManager {
    pub fn new(runner: Runner) -> Self {
        Self {
            runner,
            active: Default::default(),
            accepting: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    pub fn is_active(&self, run_id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(run_id)
    }

    /// Execute `run` in the background (`lock`: its run lock, when it was recorded running).
    pub fn start(&self, run: RunRecord, lock: Option<RunLock>, workflow: Workflow) {
        let token = CancellationToken::new();
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.id.clone(), token.clone());
        let (runner, active) = (self.runner.clone(), self.active.clone());
        tokio::spawn(async move {
            let params = run.params.as_object().cloned().unwrap_or_default();
            tracing::info!(target: "operations.training", run_id = %run.id, workflow = %run.workflow_name, "run started");
            match runner
                .execute(&run, lock, &workflow, &params, token, None)
                .await
            {
                Ok(done) => tracing::info!(
                    target: "operations.training",
                    run_id = %done.id,
                    status = %done.status,
                    error = done.error_message.as_deref().unwrap_or(""),
                    "run finished"
                ),
                Err(e) => {
                    tracing::error!(target: "errors.training", run_id = %run.id, "run could not be executed: {e}")
                }
            }
            active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run.id);
        });
    }

    /// Cancel a run: directly when it executes here, else through the store (the engine that
    /// executes it polls for the request).
    pub async fn cancel(&self, run_id: &str) -> Result<(), kiln_store::Error> {
        self.runner.store().request_cancel(run_id).await?;
        if let Some(token) = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
        {
            token.cancel();
        }
        Ok(())
    }

    /// Wait until the run is no longer executing in this process (after a cancel).
    pub async fn wait_stopped(&self, run_id: &str, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.is_active(run_id) {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        true
    }

    /// Resume the runs that were active when their engine stopped (and that no other process is
    /// executing). Returns how many were resumed.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for run in self.runner.store().active_runs().await? {
            if RunLock::is_held(&self.runner.workspace().run_dir(&run.id)) {
                continue;
            }
            match kiln_runner::stored_workflow(&run) {
                Ok(workflow) => {
                    tracing::info!(target: "operations.training", run_id = %run.id, "recovering run");
                    self.start(run, None, workflow);
                    n += 1;
                }
                Err(e) => {
                    tracing::error!(target: "errors.training", run_id = %run.id, "cannot recover: {e}")
                }
            }
        }
        Ok(n)
    }
}
