//! Engines and run leases: which process executes which run when several share one database.
//!
//! An *engine* is a process that executes runs (`kiln serve`, `kiln run`, `kiln resume`, ...).
//! It registers in `engines` and renews itself, moving its `expires_ms` forward. A run is
//! executed by the engine holding its *lease*, `runs.lease_owner`: valid while that engine is
//! not stopped and has not expired. So one renewal (one row of `engines`) keeps all of an
//! engine's leases, and renewing never locks a run's row (which the engine's own writes lock:
//! no deadlock between them). Times are the database's clock in milliseconds, so engines on
//! machines whose clocks differ still agree on when a lease has expired. Every acquisition
//! increments `runs.lease_epoch`; this process remembers the owner and epoch of each lease it
//! holds (the journal's `Fences`), and every write of that run's state checks them in its
//! transaction ([`Error::LeaseLost`] once another engine has taken the run over).
//!
//! A lease is free when it has no owner, when its owner has expired, or when its owner was
//! recorded stopped ([`Store::stop_engine`]: a clean shutdown, or a dead process found by an
//! engine on the same machine).

use std::time::Duration;

use serde::Serialize;
use sqlx::{AnyConnection, FromRow, Row};

use crate::journal::Fence;
use crate::journal::Statement;
use crate::{Error, Result, Store, columns, query_err, time_fmt};

/// An engine about to register.
#[derive(Debug, Clone)]
pub struct NewEngine {
    pub id: String,
    /// `serve` or the command (`run`, `resume`, ...).
    pub kind: String,
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: tells a rebooted machine from the one that was.
    pub boot_id: String,
    pub pid: i64,
    /// The process's start time in clock ticks since boot: tells it from a recycled pid.
    pub pid_start: i64,
    /// What the engine offers runs (`host`, `gpus` and the operator's labels).
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// How long its leases live without a renewal.
    pub ttl: Duration,
}

/// An engine as recorded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineRecord {
    pub id: String,
    pub kind: String,
    pub host: String,
    pub boot_id: String,
    pub pid: i64,
    pub pid_start: i64,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub started_at: String,
    /// Milliseconds since the engine was last seen renewing, by the database's clock.
    pub silent_ms: i64,
    pub stopped_at: Option<String>,
    pub stop_reason: Option<String>,
    /// Runs whose lease it holds now.
    pub leases: i64,
}

#[derive(FromRow)]
struct EngineRow {
    id: String,
    kind: String,
    host: String,
    boot_id: String,
    pid: i64,
    pid_start: i64,
    labels_json: String,
    started_at: String,
    silent_ms: i64,
    stopped_at: Option<String>,
    stop_reason: Option<String>,
    leases: i64,
}

impl TryFrom<EngineRow> for EngineRecord {
    type Error = Error;

    fn try_from(row: EngineRow) -> Result<Self> {
        const DOING: &str = "reading an engine";
        let labels = match columns::json(Some(row.labels_json), "labels_json", DOING)? {
            Some(serde_json::Value::Object(labels)) => labels,
            _ => Default::default(),
        };
        Ok(Self {
            id: row.id,
            kind: row.kind,
            host: row.host,
            boot_id: row.boot_id,
            pid: row.pid,
            pid_start: row.pid_start,
            labels,
            started_at: row.started_at,
            silent_ms: row.silent_ms,
            stopped_at: row.stopped_at,
            stop_reason: row.stop_reason,
            leases: row.leases,
        })
    }
}

/// A run's lease, held by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: String,
    pub owner: String,
    pub epoch: i64,
    /// The engine that held it before (expired or stopped), when there was one.
    pub taken_from: Option<String>,
}

/// Who holds a run's lease, when this process could not take it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseHolder {
    pub owner: String,
    /// Milliseconds until it expires unless renewed.
    pub expires_in_ms: i64,
    pub engine: Option<EngineRecord>,
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.engine {
            Some(e) => write!(
                f,
                "engine {} (`kiln {}`, pid {} on {})",
                self.owner, e.kind, e.pid, e.host
            )?,
            None => write!(f, "engine {}", self.owner)?,
        }
        write!(
            f,
            " holds its lease, renewed until {:.1} s from now",
            self.expires_in_ms.max(0) as f64 / 1000.0
        )
    }
}

const ENGINE_COLUMNS: &str = "e.id, e.kind, e.host, e.boot_id, e.pid, e.pid_start, e.labels_json, \
    e.started_at, e.stopped_at, e.stop_reason";

/// The condition under which a run's lease may be taken (`{now}`: the database's time): no
/// owner, or an owner that stopped or expired.
const FREE: &str = "(lease_owner IS NULL OR NOT EXISTS (SELECT 1 FROM engines e \
    WHERE e.id = lease_owner AND e.stopped_at IS NULL AND e.expires_ms >= {now}))";

/// Most free runs one claim looks through.
pub const CLAIM_SCAN: i64 = 1024;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Store {
    /// SQL for the database's current time in milliseconds since the Unix epoch.
    pub(crate) fn now_ms_sql(&self) -> &'static str {
        if self.sqlite {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        }
    }

    fn sql(&self, template: &str) -> String {
        template
            .replace("{free}", FREE)
            .replace("{now}", self.now_ms_sql())
    }

    /// Records that an engine stopped (`reason`: a clean shutdown, or how another engine
    /// found it dead) and frees its leases at once. Returns how many leases it held.
    pub async fn stop_engine(&self, id: &str, reason: &str) -> Result<u64> {
        const DOING: &str = "recording an engine's stop";
        let mut tx = self.begin_write(DOING).await?;
        sqlx::query(
            "UPDATE engines SET stopped_at = $1, stop_reason = $2 WHERE id = $3 \
             AND stopped_at IS NULL",
        )
        .bind(time_fmt::now())
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(query_err(DOING))?;
        let freed = sqlx::query("UPDATE runs SET lease_owner = NULL WHERE lease_owner = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_err(DOING))?
            .rows_affected();
        tx.commit().await.map_err(query_err(DOING))?;
        Ok(freed)
    }

    /// Forgets engines that have held no lease and not renewed for `idle` (stopped, or dead on
    /// a machine no engine looks at): `engines` would otherwise only grow. Returns how many.
    pub async fn prune_engines(&self, idle: Duration) -> Result<u64> {
        Ok(sqlx::query(&self.sql(
            "DELETE FROM engines WHERE seen_ms < {now} - $1 \
             AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.lease_owner = engines.id)",
        ))
        .bind(millis(idle))
        .execute(self.write_pool("forgetting old engines")?)
        .await
        .map_err(query_err("forgetting old engines"))?
        .rows_affected())
    }

    /// Engines not recorded stopped, on `host` (every host: `None`), oldest first.
    pub async fn engines(&self, host: Option<&str>) -> Result<Vec<EngineRecord>> {
        const DOING: &str = "listing engines";
        let sql = self.sql(&format!(
            "SELECT {ENGINE_COLUMNS}, {{now}} - e.seen_ms AS silent_ms, \
             (SELECT COUNT(*) FROM runs r WHERE r.lease_owner = e.id) AS leases \
             FROM engines e WHERE e.stopped_at IS NULL AND ($1 IS NULL OR e.host = $1) \
             ORDER BY e.started_at, e.id"
        ));
        let rows: Vec<EngineRow> = sqlx::query_as(&sql)
            .bind(host)
            .fetch_all(self.pool())
            .await
            .map_err(query_err(DOING))?;
        rows.into_iter().map(EngineRecord::try_from).collect()
    }

    /// Takes the lease of `run_id` for `owner` when it is free (see the module doc); else who
    /// holds it. On success this process fences its writes of the run with the new epoch.
    pub async fn acquire_lease(
        &self,
        run_id: &str,
        engine: &NewEngine,
    ) -> Result<std::result::Result<Lease, LeaseHolder>> {
        const DOING: &str = "taking a run's lease";
        let owner = engine.id.as_str();
        let mut tx = self.begin_write(DOING).await?;
        upsert_engine(&mut tx, engine, self.now_ms_sql()).await?;
        let previous: Option<Option<String>> =
            sqlx::query_scalar("SELECT lease_owner FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err(DOING))?;
        let Some(previous) = previous else {
            return Err(Error::RunNotFound(run_id.to_owned()));
        };
        let epoch: Option<i64> = sqlx::query_scalar(&self.sql(
            "UPDATE runs SET lease_owner = $1, lease_epoch = lease_epoch + 1 \
             WHERE id = $2 AND {free} RETURNING lease_epoch",
        ))
        .bind(owner)
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err(DOING))?;
        tx.commit().await.map_err(query_err(DOING))?;
        match epoch {
            Some(epoch) => Ok(Ok(self.hold(run_id, owner, epoch, previous))),
            None => Ok(Err(self.lease_holder(run_id).await?.ok_or_else(|| {
                Error::Conflict(format!(
                    "the lease of run {run_id} changed hands; try again"
                ))
            })?)),
        }
    }

    /// Remembers a lease this process holds (its writes of the run are fenced with it).
    pub(crate) fn hold(
        &self,
        run_id: &str,
        owner: &str,
        epoch: i64,
        previous: Option<String>,
    ) -> Lease {
        self.fences
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                run_id.to_owned(),
                Fence {
                    owner: owner.to_owned(),
                    epoch,
                },
            );
        Lease {
            run_id: run_id.to_owned(),
            owner: owner.to_owned(),
            taken_from: previous.filter(|p| p != owner),
            epoch,
        }
    }

    /// Who holds the lease of `run_id` (none: `None`).
    pub async fn lease_holder(&self, run_id: &str) -> Result<Option<LeaseHolder>> {
        const DOING: &str = "reading a run's lease";
        let row = sqlx::query(&self.sql(
            "SELECT r.lease_owner, e.expires_ms - {now} AS expires_in FROM runs r \
             LEFT JOIN engines e ON e.id = r.lease_owner WHERE r.id = $1",
        ))
        .bind(run_id)
        .fetch_optional(self.pool())
        .await
        .map_err(query_err(DOING))?;
        let Some(row) = row else { return Ok(None) };
        let owner: Option<String> = row.try_get("lease_owner").map_err(query_err(DOING))?;
        let Some(owner) = owner else { return Ok(None) };
        let expires_in_ms: Option<i64> = row.try_get("expires_in").map_err(query_err(DOING))?;
        let engine = self
            .engines(None)
            .await?
            .into_iter()
            .find(|e| e.id == owner);
        Ok(Some(LeaseHolder {
            owner,
            expires_in_ms: expires_in_ms.unwrap_or(0),
            engine,
        }))
    }

    /// Renews engine `owner` (so all its leases) for `ttl` more. Returns the runs (with their
    /// epochs) whose lease it still holds: a lease this process remembers and that is not
    /// among them was taken over. An engine recorded stopped (by a clean shutdown, or by an
    /// engine of its machine that found its process gone) is not renewed: it holds nothing.
    pub async fn renew_leases(&self, owner: &str, ttl: Duration) -> Result<Vec<(String, i64)>> {
        const DOING: &str = "renewing leases";
        let renewed = sqlx::query(&self.sql(
            "UPDATE engines SET seen_ms = {now}, expires_ms = CASE \
             WHEN expires_ms > {now} + $1 THEN expires_ms ELSE {now} + $1 END \
             WHERE id = $2 AND stopped_at IS NULL",
        ))
        .bind(millis(ttl))
        .bind(owner)
        .execute(self.write_pool(DOING)?)
        .await
        .map_err(query_err(DOING))?
        .rows_affected();
        if renewed == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT id, lease_epoch FROM runs WHERE lease_owner = $1")
            .bind(owner)
            .fetch_all(self.pool())
            .await
            .map_err(query_err(DOING))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(query_err(DOING))
    }

    /// Of `runs` (a run and the lease epoch this engine holds on it), those whose end freed
    /// that lease: finished, with no owner, at the same epoch. A renewal meets such a run
    /// between the commit of its end ([`Store::finish_run`] frees the lease) and the moment
    /// the engine lets the lease go: that is no takeover. A takeover changes the owner and the
    /// epoch; an engine found dead has its leases freed while its runs are still running.
    pub async fn finished_with_lease(&self, runs: &[(String, i64)]) -> Result<Vec<String>> {
        const DOING: &str = "reading the leases of finished runs";
        let mut finished = Vec::new();
        for (run, epoch) in runs {
            let row = sqlx::query(
                "SELECT id FROM runs WHERE id = $1 AND lease_epoch = $2 \
                 AND lease_owner IS NULL AND status IN ('succeeded', 'failed', 'cancelled')",
            )
            .bind(run)
            .bind(*epoch)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err(DOING))?;
            if row.is_some() {
                finished.push(run.clone());
            }
        }
        Ok(finished)
    }

    /// Gives up the lease of a run this process holds, so another engine can take the run at
    /// once. The fence is forgotten only when no other engine took the lease meanwhile (the
    /// epoch is unchanged, or the run is gone): after a takeover it stays, so that anything
    /// this process still tries to write for the run is refused.
    pub async fn release_lease(&self, lease: &Lease) -> Result<()> {
        const DOING: &str = "releasing a run's lease";
        let released = sqlx::query(
            "UPDATE runs SET lease_owner = NULL WHERE id = $1 \
             AND lease_epoch = $3 AND (lease_owner = $2 OR lease_owner IS NULL)",
        )
        .bind(&lease.run_id)
        .bind(&lease.owner)
        .bind(lease.epoch)
        .execute(self.write_pool(DOING)?)
        .await
        .map_err(query_err(DOING))?
        .rows_affected();
        let gone = released == 0
            && sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM runs WHERE id = $1")
                .bind(&lease.run_id)
                .fetch_one(self.pool())
                .await
                .map_err(query_err(DOING))?
                == 0;
        if released == 1 || gone {
            self.forget_lease(lease);
        }
        Ok(())
    }

    /// [`Self::release_lease`] on a task of its own, for a lease dropped where nothing can wait
    /// (a failure is logged); [`Store::close`] waits for it. What the journal holds is
    /// committed first, while the lease is still this process's: released first, the run's
    /// queued writes would be refused as if another engine had taken it over. Without a
    /// runtime (the process is ending), or once the database file was found replaced, nothing
    /// is done: the lease expires, or the engine's stop frees it.
    pub fn release_lease_soon(&self, lease: Lease) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The database file was replaced: nothing is written any more (said once already).
        if self.file.lost_already().is_some() {
            return;
        }
        let store = self.clone();
        self.background.spawn_on(
            async move {
                if let Err(e) = store.flush().await {
                    tracing::warn!(target: "errors.store", run_id = %lease.run_id, "before releasing a lease: {e}");
                }
                if let Err(e) = store.release_lease(&lease).await {
                    tracing::warn!(target: "errors.store", run_id = %lease.run_id, "cannot release a lease: {e}");
                }
            },
            &rt,
        );
    }

    /// Forgets the fence of a lease whose run has ended (its end freed the lease in the same
    /// commit): nothing of this execution is left to write.
    pub fn forget_lease(&self, lease: &Lease) {
        let mut fences = self.fences.lock().unwrap_or_else(|e| e.into_inner());
        if fences
            .get(&lease.run_id)
            .is_some_and(|f| f.epoch == lease.epoch)
        {
            fences.remove(&lease.run_id);
        }
    }

    /// Claims, for `engine`, up to `limit` queued or running runs whose lease is free and
    /// which `accept` takes (the run's id and `requires_json`, `None` when it has none), oldest
    /// first, looking through at most [`CLAIM_SCAN`] free runs. On PostgreSQL the candidates
    /// are locked with `FOR UPDATE SKIP LOCKED`: engines claiming at once each get different
    /// runs instead of waiting for one another.
    ///
    /// `cursor` is where the previous claim stopped looking (created_at, id): the next one
    /// goes on from there, and from the oldest run once it reached the end, so runs further
    /// than one scan behind those it cannot take are reached too.
    pub async fn claim_runs(
        &self,
        engine: &NewEngine,
        limit: i64,
        accept: &(dyn Fn(&str, Option<&serde_json::Value>) -> bool + Sync),
        cursor: &mut Option<(String, String)>,
    ) -> Result<Vec<Lease>> {
        const DOING: &str = "claiming runs";
        const PAGE: i64 = 64;
        let owner = engine.id.as_str();
        let mut tx = self.begin_write(DOING).await?;
        upsert_engine(&mut tx, engine, self.now_ms_sql()).await?;
        let lock = if self.sqlite {
            ""
        } else {
            " FOR UPDATE SKIP LOCKED"
        };
        let page_sql = self.sql(&format!(
            "SELECT id, requires_json, lease_owner, created_at FROM runs \
             WHERE status IN ('queued', 'running') AND {{free}} \
             AND (created_at > $1 OR (created_at = $1 AND id > $2)) \
             ORDER BY created_at, id LIMIT $3{lock}"
        ));
        let mut claimed = Vec::new();
        // Keyset paging: runs no engine here can take (their labels) do not hide the others.
        let (mut after_at, mut after_id) = cursor.take().unwrap_or_default();
        let started_mid = !after_at.is_empty();
        let mut scanned = 0;
        let mut wrapped = false;
        'pages: while (claimed.len() as i64) < limit && scanned < CLAIM_SCAN {
            let page = sqlx::query(&page_sql)
                .bind(&after_at)
                .bind(&after_id)
                .bind(PAGE)
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err(DOING))?;
            let last_page = (page.len() as i64) < PAGE;
            scanned += page.len() as i64;
            for row in page {
                if claimed.len() as i64 >= limit {
                    break 'pages;
                }
                let id: String = row.try_get("id").map_err(query_err(DOING))?;
                after_at = row.try_get("created_at").map_err(query_err(DOING))?;
                after_id = id.clone();
                let requires: Option<String> =
                    row.try_get("requires_json").map_err(query_err(DOING))?;
                let previous: Option<String> =
                    row.try_get("lease_owner").map_err(query_err(DOING))?;
                let requires = columns::json(requires, "requires_json", DOING)?;
                if !accept(&id, requires.as_ref()) {
                    continue;
                }
                let epoch: Option<i64> = sqlx::query_scalar(&self.sql(
                    "UPDATE runs SET lease_owner = $1, lease_epoch = lease_epoch + 1 \
                 WHERE id = $2 AND {free} RETURNING lease_epoch",
                ))
                .bind(owner)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err(DOING))?;
                if let Some(epoch) = epoch {
                    claimed.push((id, epoch, previous));
                }
            }
            if last_page {
                if started_mid && !wrapped {
                    // From the oldest again, for what lies before where this scan began.
                    (after_at, after_id) = (String::new(), String::new());
                    wrapped = true;
                    continue;
                }
                after_at.clear();
                break;
            }
        }
        // Where to go on next time (nothing: from the oldest).
        *cursor = (!after_at.is_empty()).then_some((after_at, after_id));
        tx.commit().await.map_err(query_err(DOING))?;
        Ok(claimed
            .into_iter()
            .map(|(id, epoch, previous)| self.hold(&id, owner, epoch, previous))
            .collect())
    }

    /// Fails with [`Error::LeaseLost`] when this process holds `run_id`'s lease and another
    /// engine has taken it over since; for writes outside the journal, in their transaction.
    pub(crate) async fn check_lease(&self, conn: &mut AnyConnection, run_id: &str) -> Result<()> {
        let fence = self
            .fences
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .cloned();
        let Some(fence) = fence else { return Ok(()) };
        match crate::journal::check_fence(conn, run_id, &fence).await {
            None => Ok(()),
            Some(message) => Err(Error::LeaseLost {
                run: run_id.to_owned(),
                message,
            }),
        }
    }

    /// Whether this process may still act on `run_id` for the next `ttl`: it holds no lease
    /// on it (nothing to check), or, in one transaction, its engine is renewed for `ttl` (so
    /// no other engine can take the run over meanwhile) and the run's lease is still the one
    /// it holds (owner and epoch). Anything else, a failed query included, answers no: an
    /// engine that cannot tell must not act.
    pub async fn holds_lease(&self, run_id: &str, ttl: Duration) -> bool {
        let fence = self
            .fences
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .cloned();
        let Some(fence) = fence else { return true };
        let confirmed = || async {
            let mut tx = self.begin_write("confirming a lease").await.ok()?;
            let renewed = sqlx::query(&self.sql(
                "UPDATE engines SET seen_ms = {now}, expires_ms = CASE \
                 WHEN expires_ms > {now} + $1 THEN expires_ms ELSE {now} + $1 END \
                 WHERE id = $2 AND stopped_at IS NULL AND expires_ms >= {now}",
            ))
            .bind(millis(ttl))
            .bind(&fence.owner)
            .execute(&mut *tx)
            .await
            .ok()?
            .rows_affected();
            // Through the fence check: an UPDATE of the run's row, which a concurrent claim
            // on PostgreSQL waits for (a plain read would see the row as it was).
            let held = crate::journal::check_fence(&mut tx, run_id, &fence)
                .await
                .is_none();
            tx.commit().await.ok()?;
            Some(renewed == 1 && held)
        };
        // A failed query is not an answer: asked again before saying no.
        for pause in [0, 250, 1000] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if let Some(held) = confirmed().await {
                return held;
            }
        }
        false
    }

    /// A write transaction for the state of `run_id`, its lease checked first.
    pub(crate) async fn begin_run_write(
        &self,
        doing: &'static str,
        run_id: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.begin_write(doing).await?;
        self.check_lease(&mut tx, run_id).await?;
        Ok(tx)
    }
}

/// Records `engine` as live for `engine.ttl` more, in the transaction of `conn`: every
/// transaction that takes a lease records its engine first, so a lease never names an
/// engine that is not recorded (which would count as free). An engine recorded stopped
/// comes back: its earlier leases were freed when it was stopped, and the runs it still
/// executes under them are fenced off.
pub(crate) async fn upsert_engine(
    conn: &mut AnyConnection,
    engine: &NewEngine,
    now_sql: &str,
) -> Result<()> {
    engine_statement(engine, now_sql)
        .execute(conn, "recording an engine")
        .await
}

/// Records `engine` (or renews its record) as one statement; `now_sql`: the database's clock.
pub(crate) fn engine_statement(engine: &NewEngine, now_sql: &str) -> Statement {
    Statement {
        sql: "INSERT INTO engines (id, kind, host, boot_id, pid, pid_start, labels_json, \
              started_at, seen_ms, expires_ms) \
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, {now} + $9) \
              ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms, \
              expires_ms = excluded.expires_ms, stopped_at = NULL, stop_reason = NULL"
            .replace("{now}", now_sql)
            .into(),
        args: vec![
            engine.id.clone().into(),
            engine.kind.clone().into(),
            engine.host.clone().into(),
            engine.boot_id.clone().into(),
            engine.pid.into(),
            engine.pid_start.into(),
            serde_json::Value::Object(engine.labels.clone())
                .to_string()
                .into(),
            time_fmt::now().into(),
            millis(engine.ttl).into(),
        ],
    }
}
