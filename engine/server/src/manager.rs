//! Runs executing in the server process: started by the API, claimed from the database (runs
//! whose engine stopped or died, runs queued for an engine like this one), cancelled on
//! request, and handed back on shutdown.

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
    /// Claims stop while this many runs execute here (runs triggered here always start).
    max_claimed: usize,
    /// Set when a round of claims stopped for want of room (more runs may wait): the end of a
    /// run here then starts the next round at once instead of at the next tick.
    room_wanted: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

/// How often the server looks for runs to claim.
pub const CLAIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Most runs claimed in one transaction.
const CLAIM_BATCH: usize = 16;
/// Default of [`RunManager::with_max_claimed`].
pub const DEFAULT_MAX_CLAIMED: usize = 64;

/// A run executing in this process.
struct Active {
    cancel: CancellationToken,
    /// Ends the execution without a write and without touching its programs (shutdown).
    abort: tokio::task::AbortHandle,
    /// Which execution of the run this is: an execution that ends removes only its own entry.
    generation: u64,
    /// Changes (to `true`) once the execution has ended: the run's end is durable by then.
    ended: watch::Receiver<bool>,
}

impl RunManager {
    pub fn new(service: RunService) -> Self {
        Self {
            service,
            active: Default::default(),
            accepting: Arc::new(AtomicBool::new(true)),
            max_claimed: DEFAULT_MAX_CLAIMED,
            room_wanted: Default::default(),
            wake: Default::default(),
        }
    }

    /// Claim runs from the database only while fewer than `n` execute here, so engines share
    /// a queue instead of one taking all of it.
    pub fn with_max_claimed(mut self, n: usize) -> Self {
        self.max_claimed = n.max(1);
        self
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
            .submit(
                workflow,
                &yaml,
                params.into_iter().collect(),
                created_by,
                true,
            )
            .await?;
        let run = execution.run.clone();
        if execution.is_leased() {
            self.start(execution);
        } else {
            tracing::info!(target: "operations.training", run_id = %run.id, "run queued for an engine that meets its requirements");
        }
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
        // Registered before the task can end (and remove it).
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let (service, table) = (self.service.clone(), self.active.clone());
        let (room_wanted, wake) = (self.room_wanted.clone(), self.wake.clone());
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "operations.training", run_id = %run_id, workflow = %execution.run.workflow_name, "run started");
        let task = tokio::spawn({
            let (run_id, token) = (run_id.clone(), token.clone());
            async move {
                match service.execute(execution, token, None).await {
                    Ok(done) => tracing::info!(
                        target: "operations.training",
                        run_id = %done.id,
                        status = %done.status,
                        error = done.error_message.as_deref().unwrap_or(""),
                        "run finished"
                    ),
                    Err(e @ kiln_runner::Error::LeaseLost { .. }) => {
                        tracing::warn!(target: "operations.training", run_id = %run_id, "{e}")
                    }
                    Err(e) => {
                        tracing::error!(target: "errors.training", run_id = %run_id, "run could not be executed: {e}")
                    }
                }
                {
                    let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
                    if table
                        .get(&run_id)
                        .is_some_and(|a| a.generation == generation)
                    {
                        table.remove(&run_id);
                    }
                }
                ended_tx.send_replace(true);
                if room_wanted.swap(false, Ordering::SeqCst) {
                    wake.notify_one();
                }
            }
        });
        active.insert(
            run_id,
            Active {
                cancel: token,
                abort: task.abort_handle(),
                generation,
                ended,
            },
        );
    }

    /// Stops executing every run here without a write and without touching their programs,
    /// and records this engine stopped, so other engines (or the next start) take the runs
    /// over at once.
    pub async fn hand_back(&self) {
        self.abort_all();
        match self.service.stop_engine("shut down").await {
            Ok(freed) => {
                tracing::info!(target: "operations.training", runs = freed, "leases handed back")
            }
            Err(e) => {
                tracing::error!(target: "errors.training", "cannot hand the leases back: {e}")
            }
        }
    }

    /// Stops executing every run here without a write and without touching their programs
    /// (their leases run out, and another engine, or the next start, takes them over).
    pub fn abort_all(&self) {
        let aborted: Vec<(String, Active)> = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, active) in &aborted {
            active.abort.abort();
        }
    }

    /// Claims runs no live engine holds, every [`CLAIM_EVERY`], until `stop` is cancelled.
    pub async fn claim_forever(&self, stop: CancellationToken) {
        /// Engines silent this long (and holding nothing) are forgotten, once an hour.
        const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
        let mut refused: std::collections::HashSet<String> = Default::default();
        let mut pruned: Option<tokio::time::Instant> = None;
        loop {
            if pruned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600)) {
                pruned = Some(tokio::time::Instant::now());
                match self.service.store().prune_engines(FORGET_AFTER).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(target: "operations.training", engines = n, "forgot engines silent for a day")
                    }
                    Err(e) => tracing::warn!(target: "errors.training", "{e}"),
                }
            }
            if self.accepting() {
                match self.claim(&mut refused).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(target: "operations.training", runs = n, "claimed runs")
                    }
                    Ok(_) => {}
                    // The database file was replaced: said once already, and the server stops.
                    Err(kiln_runner::Error::Store(kiln_store::Error::DatabaseLost { .. })) => {}
                    Err(e) => tracing::warn!(target: "errors.training", "cannot claim runs: {e}"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(CLAIM_EVERY) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One round of claims, batch after batch while there is work and room; how many runs
    /// started. `refused`: runs already reported as unable to continue here.
    async fn claim(
        &self,
        refused: &mut std::collections::HashSet<String>,
    ) -> Result<usize, kiln_runner::Error> {
        let mut started = 0;
        loop {
            let room = self.max_claimed.saturating_sub(self.executing());
            let batch = room.min(CLAIM_BATCH);
            if batch == 0 {
                self.room_wanted.store(true, Ordering::SeqCst);
                return Ok(started);
            }
            // Runs that cannot continue here are given back and would be claimed again: only
            // a batch of runs that all started calls for another.
            let n = self.claim_batch(batch, refused).await?;
            started += n;
            if n < batch {
                return Ok(started);
            }
        }
    }

    /// Claims up to `batch` runs; how many started.
    async fn claim_batch(
        &self,
        batch: usize,
        refused: &mut std::collections::HashSet<String>,
    ) -> Result<usize, kiln_runner::Error> {
        let (ready, unable) = self.service.claim(batch, refused).await?;
        for (run_id, e) in unable {
            if refused.insert(run_id.clone()) {
                tracing::error!(target: "errors.training", run_id = %run_id, "cannot continue the run on this engine: {e}");
            }
        }
        let n = ready.len();
        for execution in ready {
            let run = &execution.run;
            match execution.taken_from() {
                Some(engine) => {
                    tracing::info!(target: "operations.training", run_id = %run.id, status = %run.status, from = engine, "recovering run: its engine's lease expired")
                }
                None => {
                    tracing::info!(target: "operations.training", run_id = %run.id, status = %run.status, "recovering run: no live engine holds it")
                }
            }
            self.start(execution);
        }
        Ok(n)
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
        // Executing here (`id` is its full id): its record is read once, when it has ended (its
        // end durable by then) or at the deadline.
        if let Some(mut ended) = self.ended(id) {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = ended.wait_for(|ended| *ended) => {}
            }
        }
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
}
