//! Run records.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::sync::Arc;

use crate::journal::Statement;
use crate::{
    Error, Lease, NewStep, Result, RunStatus, Store, TrainingRef, columns, query_err, time_fmt,
};

/// What the engine knows when a run is created.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub workflow_name: String,
    pub workflow_file: Option<String>,
    pub workflow_yaml: String,
    pub params: serde_json::Value,
    pub created_by: String,
    /// What an engine must offer to execute it (labels, GPUs); opaque to the store.
    pub requires: Option<serde_json::Value>,
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub workflow_name: String,
    pub workflow_file: Option<String>,
    #[serde(skip)]
    pub workflow_yaml: String,
    pub status: RunStatus,
    pub params: serde_json::Value,
    pub error_message: Option<String>,
    pub metrics: Option<serde_json::Value>,
    pub created_by: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The engine holding the run's lease (executing it), when one does.
    pub engine: Option<String>,
}

/// Steps by status (as stored), and per `uses` the number of finished steps with their total
/// duration in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    pub by_status: Vec<(String, i64)>,
    pub durations: Vec<(String, i64, i64)>,
}

/// Counts of runs by status.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunStats {
    pub total: i64,
    pub by_status: Vec<(RunStatus, i64)>,
    /// succeeded / (succeeded + failed + cancelled); None when no run has finished.
    pub success_rate: Option<f64>,
}

const RUN_COLUMNS: &str = "id, workflow_name, workflow_file, workflow_yaml, status, params_json, \
    error_message, metrics_json, created_by, created_at, started_at, finished_at, duration_ms, \
    lease_owner";

/// A row of `runs` as [`RUN_COLUMNS`] select it.
#[derive(FromRow, serde::Deserialize)]
struct RunRow {
    id: String,
    workflow_name: String,
    workflow_file: Option<String>,
    workflow_yaml: String,
    status: String,
    /// NOT NULL in the schema; read as JSON `null` were it NULL.
    params_json: Option<String>,
    error_message: Option<String>,
    metrics_json: Option<String>,
    created_by: String,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    duration_ms: Option<i64>,
    lease_owner: Option<String>,
}

const READING: &str = "reading a run";

impl TryFrom<RunRow> for RunRecord {
    type Error = Error;

    fn try_from(row: RunRow) -> Result<Self> {
        Ok(RunRecord {
            status: columns::status(&row.status, READING)?,
            params: columns::json(row.params_json, "params_json", READING)?.unwrap_or_default(),
            metrics: columns::json(row.metrics_json, "metrics_json", READING)?,
            id: row.id,
            workflow_name: row.workflow_name,
            workflow_file: row.workflow_file,
            workflow_yaml: row.workflow_yaml,
            error_message: row.error_message,
            created_by: row.created_by,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            duration_ms: row.duration_ms,
            engine: row.lease_owner,
        })
    }
}

/// A run read by any query: a column of the wrong type is an error while reading a run (not
/// `query_as`, which would report it as an error of the query that listed the runs).
fn run_from_row(row: &AnyRow) -> Result<RunRecord> {
    RunRow::from_row(row)
        .map_err(query_err(READING))?
        .try_into()
}

/// Whether `key` can name a record at all: not empty, and without NUL, which PostgreSQL cannot
/// store in text (binding it is an error there, while SQLite would just find nothing).
pub(crate) fn lookup_key_ok(key: &str) -> bool {
    !key.is_empty() && !key.contains('\0')
}

impl Store {
    /// Record a new run with its planned steps and claim the training folders it is known to
    /// write, in one commit: either all of it is recorded or nothing is
    /// ([`Error::TrainingTaken`] when another run owns one of the trainings). With a `lease`
    /// (the engine that executes it now, for how long) the run is recorded `running` at once,
    /// its lease held by that engine (epoch 1, fenced in this process), else `queued` for any
    /// engine to claim.
    pub async fn create_run(
        &self,
        run: &NewRun,
        steps: &[NewStep],
        trainings: &[TrainingRef],
        lease: Option<&crate::NewEngine>,
    ) -> Result<(RunRecord, Option<Lease>)> {
        const DOING: &str = "creating a run";
        let owner = lease.map(|e| e.id.clone());
        let (now, now_ms) = time_fmt::now_with_millis();
        let (status, started_at, started_ms) = match owner {
            Some(_) => (RunStatus::Running, Some(now.clone()), Some(now_ms)),
            None => (RunStatus::Queued, None, None),
        };
        let mut statements = Vec::with_capacity(3);
        if let Some(engine) = lease {
            statements.push(crate::leases::engine_statement(engine, self.now_ms_sql()));
        }
        statements.push(Statement {
            sql: "INSERT INTO runs (id, workflow_name, workflow_file, workflow_yaml, status, \
                  params_json, created_by, created_at, started_at, heartbeat_at, requires_json, \
                  lease_owner, lease_epoch, created_ms, started_ms) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13, $14)"
                .into(),
            args: vec![
                run.id.clone().into(),
                run.workflow_name.clone().into(),
                run.workflow_file.clone().into(),
                run.workflow_yaml.clone().into(),
                status.as_str().into(),
                run.params.to_string().into(),
                run.created_by.clone().into(),
                now.clone().into(),
                started_at.clone().into(),
                run.requires.as_ref().map(|r| r.to_string()).into(),
                owner.clone().into(),
                i64::from(owner.is_some()).into(),
                now_ms.into(),
                started_ms.into(),
            ],
        });
        statements.extend(crate::steps::insert_steps(&run.id, steps));
        let record = RunRecord {
            id: run.id.clone(),
            workflow_name: run.workflow_name.clone(),
            workflow_file: run.workflow_file.clone(),
            workflow_yaml: run.workflow_yaml.clone(),
            status,
            params: run.params.clone(),
            error_message: None,
            metrics: None,
            created_by: run.created_by.clone(),
            created_at: now,
            started_at,
            finished_at: None,
            duration_ms: None,
            engine: owner,
        };
        // Claims decide between two statements on what they find: through sqlx only.
        let shared = Arc::new((statements.clone(), run.id.clone(), trainings.to_vec()));
        let direct = trainings.is_empty().then_some(statements);
        self.journal()
            .now_with(DOING, None, direct, move |conn| {
                let shared = shared.clone();
                Box::pin(async move {
                    let (statements, run_id, trainings) = &*shared;
                    for statement in statements {
                        statement.execute(conn, DOING).await?;
                    }
                    for training in trainings {
                        crate::ownership::claim(conn, run_id, training, DOING).await?;
                    }
                    Ok(())
                })
            })
            .await?;
        let lease = lease.map(|engine| self.hold(&record.id, &engine.id, 1, None));
        Ok((record, lease))
    }

    /// Mark a run as running (its start time is set once).
    pub async fn start_run(&self, id: &str) -> Result<()> {
        let (now, now_ms) = time_fmt::now_with_millis();
        let statement = Statement {
            sql: "UPDATE runs SET status = $1, started_at = COALESCE(started_at, $2), \
                  started_ms = COALESCE(started_ms, $4), heartbeat_at = $2 WHERE id = $3"
                .into(),
            args: vec![
                RunStatus::Running.as_str().into(),
                now.into(),
                id.into(),
                now_ms.into(),
            ],
        };
        self.journal()
            .now_statement("starting a run", Some(id), statement)
            .await
    }

    /// Record the end of a run: status, error, metrics, finish time and duration (from its
    /// start, else its creation); its lease is free from then on (a retry or delete may take it
    /// at once, from any engine). Durable when it returns, with everything queued before it
    /// (its steps' ends and log lines); returns the run as recorded then.
    pub async fn finish_run(
        &self,
        id: &str,
        status: RunStatus,
        error_message: Option<&str>,
        metrics: Option<&serde_json::Value>,
    ) -> Result<RunRecord> {
        let (now, now_ms) = time_fmt::now_with_millis();
        let statement = Statement {
            sql: "UPDATE runs SET status = $1, error_message = $2, metrics_json = $3, \
                  finished_at = $4, duration_ms = $5 - COALESCE(started_ms, created_ms), \
                  started_at = COALESCE(started_at, created_at), \
                  started_ms = COALESCE(started_ms, created_ms), lease_owner = NULL \
                  WHERE id = $6"
                .into(),
            args: vec![
                status.as_str().into(),
                error_message.map(str::to_owned).into(),
                metrics.map(|m| m.to_string()).into(),
                now.into(),
                now_ms.into(),
                id.into(),
            ],
        };
        self.journal()
            .now_statement("finishing a run", Some(id), statement)
            .await?;
        self.run_with_id(id)
            .await?
            .ok_or_else(|| Error::RunNotFound(id.to_owned()))
    }

    /// The run with exactly this id, if there is one.
    async fn run_with_id(&self, id: &str) -> Result<Option<RunRecord>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        if let Some(rows) = self.read_direct::<RunRow>(&sql, &[&id]) {
            return rows.into_iter().next().map(RunRecord::try_from).transpose();
        }
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("reading a run"))?
            .as_ref()
            .map(run_from_row)
            .transpose()
    }

    /// Delete a run and everything recorded with it (steps, events, checkpoints, epoch metrics).
    pub async fn delete_run(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_run_write("deleting a run", id).await?;
        for sql in [
            "DELETE FROM events WHERE run_id = $1",
            "DELETE FROM checkpoints WHERE run_id = $1",
            "DELETE FROM epoch_metrics WHERE run_id = $1",
            "DELETE FROM steps WHERE run_id = $1",
            "DELETE FROM trainings WHERE run_id = $1",
            "DELETE FROM dataset_uses WHERE run_id = $1",
            "DELETE FROM runs WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("deleting a run"))?;
        }
        tx.commit().await.map_err(query_err("deleting a run"))
    }

    /// Runs that were executing when their engine stopped (status queued or running).
    pub async fn active_runs(&self) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'running') ORDER BY created_at"
        );
        let rows = sqlx::query(&sql)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("listing active runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    /// Runs, newest first, skipping `offset`, optionally only those with `status`.
    pub async fn page_runs(
        &self,
        status: Option<RunStatus>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<RunRecord>> {
        let rows = match status {
            Some(s) => {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
                );
                sqlx::query(&sql).bind(s.as_str()).bind(limit).bind(offset).fetch_all(self.pool()).await
            }
            None => {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
                );
                sqlx::query(&sql).bind(limit).bind(offset).fetch_all(self.pool()).await
            }
        }
        .map_err(query_err("listing runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    /// Ask the engine executing a run to cancel it (it polls for this).
    pub async fn request_cancel(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET cancel_requested_at = $1 WHERE id = $2 AND cancel_requested_at IS NULL")
            .bind(time_fmt::now())
            .bind(id)
            .execute(self.write_pool("requesting a cancel")?)
            .await
            .map_err(query_err("requesting a cancel"))?;
        Ok(())
    }

    pub async fn cancel_requested(&self, id: &str) -> Result<bool> {
        let at: Option<String> =
            sqlx::query_scalar("SELECT cancel_requested_at FROM runs WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(query_err("reading a cancel request"))?
                .flatten();
        Ok(at.is_some())
    }

    /// Prepare a failed or cancelled run to run again from its unfinished steps: those steps go
    /// back to `queued` (keeping their attempt count and outputs of succeeded steps), the run to
    /// `queued` with its end cleared.
    pub async fn reset_for_retry(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_run_write("retrying a run", id).await?;
        sqlx::query(
            "UPDATE steps SET status = 'queued', error_message = NULL, failure_kind = NULL, \
             failure_retries = 0, infrastructure_retries = 0 \
             WHERE run_id = $1 AND status IN ('failed', 'cancelled', 'skipped')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(query_err("retrying a run"))?;
        sqlx::query(
            "UPDATE runs SET status = 'queued', error_message = NULL, finished_at = NULL, \
             duration_ms = NULL, cancel_requested_at = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(query_err("retrying a run"))?;
        tx.commit().await.map_err(query_err("retrying a run"))
    }

    /// The run with this id, or the only run whose id starts with `id_or_prefix`.
    ///
    /// The prefix is matched literally and case-sensitively on every backend: no `LIKE` (whose
    /// `%` and `_` are wildcards, and which SQLite compares case-insensitively), no range over
    /// the column (whose order depends on the database's collation on PostgreSQL), but
    /// `substr(id, 1, length(prefix)) = prefix`, where both databases count characters and
    /// compare equal strings equal. An empty prefix, or one PostgreSQL could not even store (a
    /// NUL character), matches nothing.
    pub async fn run(&self, id_or_prefix: &str) -> Result<RunRecord> {
        if !lookup_key_ok(id_or_prefix) {
            return Err(Error::RunNotFound(id_or_prefix.to_owned()));
        }
        if let Some(run) = self.run_with_id(id_or_prefix).await? {
            return Ok(run);
        }
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE substr(id, 1, length($1)) = $1 ORDER BY id LIMIT 5"
        );
        let rows = sqlx::query(&sql)
            .bind(id_or_prefix)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("reading a run"))?;
        match rows.as_slice() {
            [one] => run_from_row(one),
            [] => Err(Error::RunNotFound(id_or_prefix.to_owned())),
            many => Err(Error::AmbiguousRun {
                prefix: id_or_prefix.to_owned(),
                candidates: many
                    .iter()
                    .filter_map(|r| r.try_get::<String, _>("id").ok())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Runs, newest first, optionally only those with `status`.
    pub async fn list_runs(&self, status: Option<RunStatus>, limit: i64) -> Result<Vec<RunRecord>> {
        let rows = match status {
            Some(s) => {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                );
                sqlx::query(&sql).bind(s.as_str()).bind(limit).fetch_all(self.pool()).await
            }
            None => {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, id DESC LIMIT $1"
                );
                sqlx::query(&sql).bind(limit).fetch_all(self.pool()).await
            }
        }
        .map_err(query_err("listing runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    /// Counts by status and the success rate of finished runs.
    /// Steps by status, and the finished ones' count and total duration by `uses`: what an
    /// operator's metrics show.
    pub async fn step_stats(&self) -> Result<StepStats> {
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) AS n FROM steps GROUP BY status")
                .fetch_all(self.pool())
                .await
                .map_err(query_err("counting steps"))?;
        let durations: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT uses, COUNT(*) AS n, CAST(SUM(duration_ms) AS BIGINT) AS ms FROM steps \
             WHERE duration_ms IS NOT NULL GROUP BY uses",
        )
        .fetch_all(self.pool())
        .await
        .map_err(query_err("summing step durations"))?;
        Ok(StepStats {
            by_status,
            durations: durations
                .into_iter()
                .map(|(uses, n, ms)| (uses, n, ms.unwrap_or(0)))
                .collect(),
        })
    }

    pub async fn run_stats(&self) -> Result<RunStats> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
                .fetch_all(self.pool())
                .await
                .map_err(query_err("counting runs"))?;
        let mut by_status: Vec<(RunStatus, i64)> = RunStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for (status, n) in rows {
            if let Ok(s) = status.parse::<RunStatus>()
                && let Some(slot) = by_status.iter_mut().find(|(k, _)| *k == s)
            {
                slot.1 = n;
            }
        }
        let count = |s: RunStatus| {
            by_status
                .iter()
                .find(|(k, _)| *k == s)
                .map_or(0, |(_, n)| *n)
        };
        let finished =
            count(RunStatus::Succeeded) + count(RunStatus::Failed) + count(RunStatus::Cancelled);
        Ok(RunStats {
            total: by_status.iter().map(|(_, n)| n).sum(),
            success_rate: (finished > 0)
                .then(|| count(RunStatus::Succeeded) as f64 / finished as f64),
            by_status,
        })
    }
}
