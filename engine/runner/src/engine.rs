//! This process as an *engine*: its record in the database, the leases of the runs it executes,
//! and their renewal.
//!
//! One engine executes a run at a time: the one holding the run's lease (`kiln_store`'s
//! `leases` module doc). An engine registers on its first lease (reading commands never do),
//! renews all its leases every third of the lease's time to live with one statement, and
//! tells each [`RunLease`] when its lease was lost: not renewed (the database out of reach for
//! most of the time to live) or taken over by another engine. Whoever executes the run then
//! stops acting on it without touching its programs (the new owner re-attaches to them); the
//! store's fencing refuses any write that was already on its way.
//!
//! A lease is free at once when its engine is recorded stopped: a clean stop, or an engine on
//! this machine that finds another engine's process gone ([`EngineSession::reap_local`]: same
//! boot, pid no longer running with its start time; or another boot of this machine). Engines on
//! other machines are taken over when their leases expire.
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
    id: String,
    kind: String,
    store: Store,
    ttl: Duration,
    labels: Map<String, Value>,
    gpus: u32,
    registered: tokio::sync::OnceCell<()>,
    /// The registration is committed (it may ride with the first run's creation until then).
    durable: tokio::sync::OnceCell<()>,
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
        // Freed in the database, so another engine need not wait for it to expire (where no
        // runtime is left, the process is ending: it expires, or the engine's stop frees it).
        // The store keeps fencing the run's writes if another engine took it over meanwhile.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, lease) = (inner.store.clone(), self.lease.clone());
            rt.spawn(async move {
                if let Err(e) = store.release_lease(&lease).await {
                    tracing::warn!(target: "errors.store", run_id = %lease.run_id, "cannot release a lease: {e}");
                }
            });
        }
    }
}

/// Where this process runs: the host name, and `<boot id>/<pid namespace>` (processes with the
/// same one see each other's pids; containers on one machine share the boot id, not the pid
/// namespace).
fn machine() -> (String, String) {
    (kiln_supervisor::host_name(), kiln_supervisor::machine_id())
}

/// The boot id part of [`machine`]'s second value.
fn boot_of(boot_and_ns: &str) -> &str {
    boot_and_ns.split('/').next().unwrap_or_default()
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
        let (host, _) = machine();
        labels.insert("host".into(), Value::String(host));
        labels.insert("gpus".into(), Value::String(gpus.to_string()));
        Self {
            inner: Arc::new(Inner {
                id: uuid::Uuid::now_v7().to_string(),
                kind: kind.to_owned(),
                store,
                ttl: ttl.max(Duration::from_millis(300)),
                labels,
                gpus,
                registered: Default::default(),
                durable: Default::default(),
                held: Default::default(),
                counters: Default::default(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    pub fn labels(&self) -> &Map<String, Value> {
        &self.inner.labels
    }

    pub fn counters(&self) -> &LeaseCounters {
        &self.inner.counters
    }

    /// What this engine lacks to execute a run with `requires`.
    pub fn unmet(&self, requires: &Requirements) -> Vec<String> {
        requires.unmet(&self.inner.labels, self.inner.gpus)
    }

    /// Records this engine (once) and starts renewing its leases.
    pub async fn register(&self) -> Result<()> {
        self.inner
            .registered
            .get_or_try_init(|| async {
                let (host, boot_id) = machine();
                let pid = std::process::id() as i32;
                let start = ProcessIdentity::of(pid).map_or(0, |p| p.start_ticks);
                self.inner.store.register_engine(&NewEngine {
                    id: self.inner.id.clone(),
                    kind: self.inner.kind.clone(),
                    host,
                    boot_id,
                    pid: i64::from(pid),
                    pid_start: i64::try_from(start).unwrap_or(i64::MAX),
                    labels: self.inner.labels.clone(),
                    ttl: self.inner.ttl,
                });
                tokio::spawn(renew(Arc::downgrade(&self.inner)));
                Ok::<(), Error>(())
            })
            .await?;
        Ok(())
    }

    /// [`Self::register`], committed: before this engine takes a lease outside the commit
    /// that creates a run (a lease whose owner is not recorded would count as free).
    async fn register_durably(&self) -> Result<()> {
        self.register().await?;
        self.inner
            .durable
            .get_or_try_init(|| async { self.inner.store.flush().await })
            .await?;
        Ok(())
    }

    /// Records engines of this machine whose process is gone (or that ran before its last
    /// boot) as stopped, which frees their leases at once. Returns how many.
    pub async fn reap_local(&self) -> Result<usize> {
        let (host, boot) = machine();
        let mut reaped = 0;
        for engine in self.inner.store.engines(Some(&host)).await? {
            if engine.id == self.inner.id {
                continue;
            }
            let reason = if boot_of(&engine.boot_id) != boot_of(&boot) {
                "its machine has restarted since".to_owned()
            } else if engine.boot_id != boot {
                // Another container of this machine: its pids are not ours to judge.
                continue;
            } else {
                let identity = ProcessIdentity {
                    pid: i32::try_from(engine.pid).unwrap_or(0),
                    start_ticks: u64::try_from(engine.pid_start).unwrap_or(0),
                };
                if identity.is_running() {
                    continue;
                }
                format!("its process (pid {}) is gone", engine.pid)
            };
            let freed = self.inner.store.stop_engine(&engine.id, &reason).await?;
            tracing::info!(target: "operations.training", engine = %engine.id, freed, "engine found dead: {reason}");
            reaped += 1;
        }
        Ok(reaped)
    }

    /// Takes the lease of `run_id` (after freeing the leases of this machine's dead engines);
    /// held by a live engine: [`Error::Conflict`] naming it.
    pub async fn acquire(&self, run_id: &str) -> Result<RunLease> {
        self.register_durably().await?;
        self.reap_local().await?;
        match self
            .inner
            .store
            .acquire_lease(run_id, &self.inner.id)
            .await?
        {
            Ok(lease) => Ok(self.adopt(lease)),
            Err(holder) => Err(Error::Conflict(format!(
                "run {run_id} is being executed by another engine: {holder}"
            ))),
        }
    }

    /// Claims up to `limit` runs no live engine holds whose requirements this engine meets.
    pub async fn claim(&self, limit: usize) -> Result<Vec<RunLease>> {
        self.register_durably().await?;
        self.reap_local().await?;
        let this = self.clone();
        let accept = move |requires: Option<&Value>| {
            this.unmet(&Requirements::from_json(requires)).is_empty()
        };
        let leases = self
            .inner
            .store
            .claim_runs(
                &self.inner.id,
                i64::try_from(limit).unwrap_or(i64::MAX),
                &accept,
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
        }
    }

    /// Records this engine stopped: its leases are free for other engines at once.
    pub async fn stop(&self, reason: &str) -> Result<u64> {
        if self.inner.registered.get().is_none() {
            return Ok(0);
        }
        Ok(self.inner.store.stop_engine(&self.inner.id, reason).await?)
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
/// lease missing from a renewal (taken over) or not renewed for two thirds of its time to live
/// (the database out of reach) is lost.
async fn renew(inner: Weak<Inner>) {
    let Some(ttl) = inner.upgrade().map(|i| i.ttl) else {
        return;
    };
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let Some(inner) = inner.upgrade() else { return };
        let started = Instant::now();
        match inner.store.renew_leases(&inner.id, inner.ttl).await {
            Ok(kept) => {
                renewed = started;
                inner.counters.renewals.fetch_add(1, Ordering::Relaxed);
                let kept: HashMap<String, i64> = kept.into_iter().collect();
                let held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
                for (run, h) in held.iter() {
                    if h.since < started && kept.get(run) != Some(&h.epoch) {
                        lose(
                            &inner,
                            run,
                            h,
                            "another engine has taken the run over".into(),
                        );
                    }
                }
            }
            Err(e) => {
                inner
                    .counters
                    .renewal_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "errors.store", "cannot renew this engine's leases: {e}");
                if renewed.elapsed() >= ttl * 2 / 3 {
                    let held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
                    for (run, h) in held.iter() {
                        lose(
                            &inner,
                            run,
                            h,
                            format!(
                                "its lease could not be renewed for {} s ({e})",
                                renewed.elapsed().as_secs()
                            ),
                        );
                    }
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
