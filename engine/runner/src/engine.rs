//! This process as an *engine*: its record in the database, the leases of the runs it executes,
//! and their renewal.
//!
//! One engine executes a run at a time: the one holding the run's lease (`kiln_store`'s
//! `leases` module doc). An engine registers on its first lease (reading commands never do),
//! renews all its leases every third of the lease's time to live with one statement, and
//! tells each [`RunLease`] when its lease was lost: taken over by another engine (a renewal
//! that reaches the database says so; an engine recorded stopped holds nothing), or refused to
//! one of its writes. Whoever executes the run then
//! stops acting on it without touching its programs (the new owner re-attaches to them); the
//! store's fencing refuses any write that was already on its way.
//!
//! A lease is free at once when its engine is recorded stopped: a clean stop, or an engine of
//! the same machine and pid namespace that finds another engine's process gone
//! ([`EngineSession::reap_local`]: no process with its pid and start time). Any other engine
//! (another machine, another container, a restarted machine) is taken over when it expires.
//!
//! Labels: an engine offers `host` (its host name), `gpus` (how many devices it leases, as
//! text) and the operator's labels; a run requires the labels its steps name in `runs_on` and
//! as many GPUs as its largest local step ([`Requirements`]), and an engine only claims the
//! runs it satisfies.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use kiln_store::{Lease, NewEngine, Store};
use kiln_supervisor::ProcessIdentity;

use crate::{Error, Result};

/// Default time to live of a lease: how long after its engine's last renewal another engine
/// may take a run over.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// What a run needs from the engine that executes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Labels the engine must offer with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// GPUs the engine must be able to lease (its largest local step's `resources.gpus`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.gpus == 0
    }

    /// As stored with the run (`None` when it needs nothing in particular).
    pub fn to_json(&self) -> Option<Value> {
        (!self.is_empty()).then(|| serde_json::to_value(self).unwrap_or_default())
    }

    /// As read back from a run (anything unreadable asks for what no engine has, so the run
    /// waits for an operator rather than running where it should not).
    pub fn from_json(value: Option<&Value>) -> Self {
        match value {
            None => Self::default(),
            Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| Self {
                labels: BTreeMap::from([("unreadable-requirements".into(), v.to_string())]),
                gpus: u32::MAX,
            }),
        }
    }

    /// What an engine with `labels` and `gpus` lacks of these requirements (empty: none).
    pub fn unmet(&self, labels: &Map<String, Value>, gpus: u32) -> Vec<String> {
        let mut unmet: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, v)| labels.get(*k).and_then(Value::as_str) != Some(v.as_str()))
            .map(|(k, v)| format!("label {k}={v}"))
            .collect();
        if self.gpus > gpus {
            unmet.push(format!("{} GPUs", self.gpus));
        }
        unmet
    }
}

/// This process's engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineSession {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    gpus: u32,
    /// This engine (id, labels, lease time to live), as every lease-taking transaction
    /// records it.
    record: NewEngine,
    /// The renewal task runs.
    renewing: std::sync::atomic::AtomicBool,
    /// Where the last claim stopped looking through the queue.
    cursor: tokio::sync::Mutex<Option<(String, String)>>,
    held: Mutex<HashMap<String, Held>>,
    counters: LeaseCounters,
}

struct Held {
    epoch: i64,
    since: Instant,
    lost: watch::Sender<Option<String>>,
}

/// What this engine's leases went through, for `/metrics`.
#[derive(Debug, Default)]
pub struct LeaseCounters {
    pub renewals: AtomicU64,
    pub renewal_failures: AtomicU64,
    pub takeovers: AtomicU64,
    pub lost: AtomicU64,
    pub claims: AtomicU64,
}

/// The lease of a run this process executes (or changes: retry, delete, cancel). Dropping it
/// gives the lease back.
pub struct RunLease {
    session: EngineSession,
    lease: Lease,
    lost: watch::Receiver<Option<String>>,
    /// The run's end was recorded under this lease, which freed it.
    ended: bool,
    /// Taken in the commit that created the run: nothing has touched the run since.
    created: bool,
}

impl std::fmt::Debug for RunLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunLease({:?})", self.lease)
    }
}

impl RunLease {
    pub fn run_id(&self) -> &str {
        &self.lease.run_id
    }

    pub fn epoch(&self) -> i64 {
        self.lease.epoch
    }

    /// Whether this lease was taken in the commit that created its run (see
    /// [`EngineSession::adopt_created`]).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The engine it was taken from, when it was taken over.
    pub fn taken_from(&self) -> Option<&str> {
        self.lease.taken_from.as_deref()
    }

    /// The store refused a write under this lease (another engine took the run over before
    /// the renewal noticed): it is lost, for `reason`.
    pub fn refused(&self, reason: &str) {
        let inner = &self.session.inner;
        let held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get(&self.lease.run_id)
            && h.epoch == self.lease.epoch
        {
            lose(inner, &self.lease.run_id, h, reason.to_owned());
        }
    }

    /// The run's end was recorded under this lease (which freed it in the same commit).
    pub fn ended(&mut self) {
        self.ended = true;
    }

    /// Resolves, with the reason, once the lease is lost.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the engine stopped".into(),
        }
    }
}

impl Drop for RunLease {
    fn drop(&mut self) {
        let inner = &self.session.inner;
        {
            let mut held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
            if held
                .get(&self.lease.run_id)
                .is_some_and(|h| h.epoch == self.lease.epoch)
            {
                held.remove(&self.lease.run_id);
            }
        }
        if self.ended {
            inner.store.forget_lease(&self.lease);
            return;
        }
        // Freed in the database, so another engine need not wait for it to expire; the
        // store's close waits for it. The store keeps fencing the run's writes if another
        // engine took it over meanwhile.
        inner.store.release_lease_soon(self.lease.clone());
    }
}

/// Where this process runs: the host name, and `<boot id>/<pid namespace>` (processes with the
/// same one see each other's pids; containers on one machine share the boot id, not the pid
/// namespace).
fn machine() -> (String, String) {
    (kiln_supervisor::host_name(), kiln_supervisor::machine_id())
}

/// Whether `engine`'s process is provably gone: it ran on this machine, in this pid namespace
/// (host name, boot id and namespace recorded with it), and no process with its pid and start
/// time runs. Anything else may be alive.
pub fn provably_gone(engine: &kiln_store::EngineRecord) -> bool {
    let (host, machine_id) = machine();
    engine.host == host
        && engine.boot_id == machine_id
        && !process_alive(engine.pid, engine.pid_start)
}

/// Whether the process `pid` started at `start_ticks` may still run: it does (same start
/// time, not a zombie), or a process with that pid exists that `/proc` does not show to us
/// (`hidepid`), which cannot be told apart.
fn process_alive(pid: i64, start_ticks: i64) -> bool {
    let Some(pid) = i32::try_from(pid).ok().filter(|p| *p > 0) else {
        return false;
    };
    let identity = ProcessIdentity {
        pid,
        start_ticks: u64::try_from(start_ticks).unwrap_or(0),
    };
    if identity.is_running() {
        return true;
    }
    if std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
        // Visible, and another process (recycled pid) or a zombie.
        return false;
    }
    match rustix::process::Pid::from_raw(pid) {
        // ESRCH: no such process; EPERM and success: one exists that we cannot inspect.
        Some(p) => !matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

impl EngineSession {
    /// An engine of `kind` (`serve`, `run`, ...) over `store`, offering `labels` (besides
    /// `host` and `gpus`), whose leases live `ttl` unless renewed.
    pub fn new(
        store: Store,
        kind: &str,
        mut labels: Map<String, Value>,
        gpus: u32,
        ttl: Duration,
    ) -> Self {
        let (host, machine_id) = machine();
        labels.insert("host".into(), Value::String(host.clone()));
        labels.insert("gpus".into(), Value::String(gpus.to_string()));
        let ttl = ttl.max(Duration::from_millis(300));
        let pid = std::process::id() as i32;
        let start = ProcessIdentity::of(pid).map_or(0, |p| p.start_ticks);
        let record = NewEngine {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.to_owned(),
            host,
            boot_id: machine_id,
            pid: i64::from(pid),
            pid_start: i64::try_from(start).unwrap_or(i64::MAX),
            labels,
            ttl,
        };
        Self {
            inner: Arc::new(Inner {
                store,
                gpus,
                record,
                renewing: Default::default(),
                cursor: Default::default(),
                held: Default::default(),
                counters: Default::default(),
            }),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.inner.record.ttl
    }

    pub fn counters(&self) -> &LeaseCounters {
        &self.inner.counters
    }

    /// What this engine lacks to execute a run with `requires`.
    pub fn unmet(&self, requires: &Requirements) -> Vec<String> {
        requires.unmet(&self.inner.record.labels, self.inner.gpus)
    }

    /// How this engine is recorded: with every lease it takes (see `kiln_store`'s
    /// `upsert_engine`).
    pub fn record(&self) -> &NewEngine {
        &self.inner.record
    }

    /// Starts renewing this engine's leases (once); it is recorded with its first lease.
    pub fn register(&self) {
        if !self
            .inner
            .renewing
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tokio::spawn(renew(Arc::downgrade(&self.inner)));
        }
    }

    /// Records engines of this process's machine and pid namespace whose process is provably
    /// gone as stopped, which frees their leases at once. Returns how many. Only proof counts:
    /// the same host name, boot and pid namespace, and no process with the recorded pid (or
    /// one with another start time). An engine of another machine (whatever its host name),
    /// or one whose process this engine cannot see, is left to expire.
    pub async fn reap_local(&self) -> Result<usize> {
        let (host, _) = machine();
        let mut reaped = 0;
        for engine in self.inner.store.engines(Some(&host)).await? {
            if engine.id == self.inner.record.id || !provably_gone(&engine) {
                continue;
            }
            let reason = format!("its process (pid {}) is gone", engine.pid);
            let freed = self.inner.store.stop_engine(&engine.id, &reason).await?;
            tracing::info!(target: "operations.training", engine = %engine.id, freed, "engine found dead: {reason}");
            reaped += 1;
        }
        Ok(reaped)
    }

    /// Takes the lease of `run_id` (after freeing the leases of this machine's dead engines);
    /// held by a live engine: [`Error::Conflict`] naming it.
    pub async fn acquire(&self, run_id: &str) -> Result<RunLease> {
        if self
            .inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(run_id)
        {
            // A second execution here would share the first one's fencing.
            return Err(Error::Conflict(format!(
                "run {run_id} is still being executed by this engine; wait for it to stop"
            )));
        }
        self.register();
        self.reap_local().await?;
        match self
            .inner
            .store
            .acquire_lease(run_id, &self.inner.record)
            .await?
        {
            Ok(lease) => Ok(self.adopt(lease)),
            Err(holder) => Err(Error::Conflict(format!(
                "run {run_id} is being executed by another engine: {holder}"
            ))),
        }
    }

    /// Claims up to `limit` runs no live engine holds whose requirements this engine meets,
    /// leaving out `skip` and the runs this process still executes (under a lease it has
    /// lost but not yet let go: a second execution beside it would share its fencing).
    pub async fn claim(
        &self,
        limit: usize,
        skip: &std::collections::HashSet<String>,
    ) -> Result<Vec<RunLease>> {
        self.register();
        self.reap_local().await?;
        let held: std::collections::HashSet<String> = self
            .inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let this = self.clone();
        let accept = move |id: &str, requires: Option<&Value>| {
            !held.contains(id)
                && !skip.contains(id)
                && this.unmet(&Requirements::from_json(requires)).is_empty()
        };
        let leases = self
            .inner
            .store
            .claim_runs(
                &self.inner.record,
                i64::try_from(limit).unwrap_or(i64::MAX),
                &accept,
                &mut *self.inner.cursor.lock().await,
            )
            .await?;
        Ok(leases.into_iter().map(|l| self.adopt(l)).collect())
    }

    /// A lease just granted to this engine, tracked until it is dropped or lost.
    pub fn adopt(&self, lease: Lease) -> RunLease {
        let (tx, lost) = watch::channel(None);
        if lease.taken_from.is_some() {
            self.inner
                .counters
                .takeovers
                .fetch_add(1, Ordering::Relaxed);
        }
        self.inner.counters.claims.fetch_add(1, Ordering::Relaxed);
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                lease.run_id.clone(),
                Held {
                    epoch: lease.epoch,
                    since: Instant::now(),
                    lost: tx,
                },
            );
        RunLease {
            session: self.clone(),
            lease,
            lost,
            ended: false,
            created: false,
        }
    }

    /// The lease taken in the commit that created its run (see [`Self::adopt`]): nothing has
    /// touched the run since, so its steps are as that commit wrote them.
    pub fn adopt_created(&self, lease: Lease) -> RunLease {
        let mut adopted = self.adopt(lease);
        adopted.created = true;
        adopted
    }

    /// Records this engine stopped: its leases are free for other engines at once.
    pub async fn stop(&self, reason: &str) -> Result<u64> {
        if !self.inner.renewing.load(Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner.store.handing_back();
        Ok(self
            .inner
            .store
            .stop_engine(&self.inner.record.id, reason)
            .await?)
    }

    /// How many runs' leases this engine holds now.
    pub fn holding(&self) -> usize {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Renews the engine's leases every third of their time to live while the engine exists; a
/// lease missing from a renewal (taken over, or the engine recorded stopped) is lost.
async fn renew(inner: Weak<Inner>) {
    let Some(ttl) = inner.upgrade().map(|i| i.record.ttl) else {
        return;
    };
    let mut renewed = Instant::now();
    let mut previous_strays: std::collections::HashSet<(String, i64)> = Default::default();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let Some(inner) = inner.upgrade() else { return };
        let started = Instant::now();
        match inner
            .store
            .renew_leases(&inner.record.id, inner.record.ttl)
            .await
        {
            Ok(kept) => {
                renewed = started;
                inner.counters.renewals.fetch_add(1, Ordering::Relaxed);
                let kept: HashMap<String, i64> = kept.into_iter().collect();
                let missing =
                    |run: &String, h: &Held| h.since < started && kept.get(run) != Some(&h.epoch);
                // A run whose end was committed while its execution had not yet let the lease
                // go is missing too, and was reported lost ("another engine has taken the run
                // over", with one engine): such runs are asked for, and kept out.
                let unsure: Vec<(String, i64)> = {
                    let held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
                    held.iter()
                        .filter(|(run, h)| missing(run, h))
                        .map(|(run, h)| (run.clone(), h.epoch))
                        .collect()
                };
                let finished: std::collections::HashSet<(String, i64)> = if unsure.is_empty() {
                    Default::default()
                } else {
                    let ids = inner
                        .store
                        .finished_with_lease(&unsure)
                        .await
                        .unwrap_or_default();
                    unsure
                        .into_iter()
                        .filter(|(run, _)| ids.contains(run))
                        .collect()
                };
                let strays: std::collections::HashSet<(String, i64)> = {
                    let held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
                    for (run, h) in held.iter() {
                        if missing(run, h) && !finished.contains(&(run.clone(), h.epoch)) {
                            let reason = "another engine has taken the run over".to_owned();
                            lose(&inner, run, h, reason);
                        }
                    }
                    kept.iter()
                        .filter(|(run, _)| !held.contains_key(*run))
                        .map(|(run, epoch)| (run.clone(), *epoch))
                        .collect()
                };
                // Leases the database gives this engine that nothing here executes (their
                // release failed): given back once seen on two renewals in a row, so that a
                // lease taken in between is never mistaken for one.
                for (run, epoch) in strays.intersection(&previous_strays) {
                    let lease = Lease {
                        run_id: run.clone(),
                        owner: inner.record.id.clone(),
                        epoch: *epoch,
                        taken_from: None,
                    };
                    if let Err(e) = inner.store.release_lease(&lease).await {
                        tracing::warn!(target: "errors.store", run_id = %run, "cannot release a lease: {e}");
                    }
                }
                previous_strays = strays;
            }
            Err(e) => {
                // Not a loss by itself: whether another engine took a run over is the
                // database's to say, at the next renewal that reaches it. Meanwhile fencing
                // refuses this engine's writes to a run taken over, and its programs are only
                // stopped after the lease is confirmed.
                inner
                    .counters
                    .renewal_failures
                    .fetch_add(1, Ordering::Relaxed);
                if matches!(e, kiln_store::Error::DatabaseLost { .. }) {
                    // The database file was replaced: said once already, and the process stops.
                    tracing::debug!(target: "errors.store", "cannot renew this engine's leases: {e}");
                } else {
                    tracing::warn!(target: "errors.store", silent_s = renewed.elapsed().as_secs(), "cannot renew this engine's leases: {e}");
                }
            }
        }
    }
}

fn lose(inner: &Inner, run: &str, held: &Held, reason: String) {
    if held.lost.borrow().is_some() {
        return;
    }
    inner.counters.lost.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(target: "operations.training", run_id = %run, "lease lost: {reason}");
    held.lost.send_replace(Some(reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_alive_only_with_its_pid_and_start_time() {
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        assert!(process_alive(i64::from(me.pid), me.start_ticks as i64));
        // The same pid with another start time: a recycled pid, not the engine.
        assert!(!process_alive(i64::from(me.pid), me.start_ticks as i64 + 1));
        assert!(!process_alive(i64::from(i32::MAX), 1));
        assert!(!process_alive(-5, 1));
        assert!(!process_alive(i64::MAX, 1));
    }

    #[test]
    fn requirements_name_what_an_engine_lacks() {
        let labels: Map<String, Value> = serde_json::from_str(r#"{"pool": "big"}"#).unwrap();
        let wants = Requirements {
            labels: BTreeMap::from([
                ("pool".to_owned(), "big".to_owned()),
                ("zone".to_owned(), "eu".to_owned()),
            ]),
            gpus: 2,
        };
        assert_eq!(wants.unmet(&labels, 1), vec!["label zone=eu", "2 GPUs"]);
        assert!(Requirements::default().unmet(&labels, 0).is_empty());
        let back = Requirements::from_json(wants.to_json().as_ref());
        assert_eq!(back, wants);
        // Unreadable requirements are met by no engine.
        let odd = Requirements::from_json(Some(&serde_json::json!({"labels": 3})));
        assert!(!odd.unmet(&labels, 64).is_empty());
    }
}
