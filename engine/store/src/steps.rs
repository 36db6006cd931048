//! Step records: one row per step of a run, updated as the step moves through its states.

use serde::Serialize;
use sqlx::FromRow;
use sqlx::any::AnyRow;

use crate::journal::{Arg, Statement};
use crate::{Error, Result, StepStatus, Store, columns, query_err, time_fmt};

/// A step as planned when the run is created.
#[derive(Debug, Clone)]
pub struct NewStep {
    pub step_id: String,
    pub uses: String,
    pub action: Option<String>,
}

/// A step as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepRecord {
    pub run_id: String,
    pub step_id: String,
    pub position: i64,
    pub uses: String,
    pub action: Option<String>,
    pub status: StepStatus,
    pub attempt: i64,
    pub inputs: Option<serde_json::Value>,
    pub outputs: Option<serde_json::Value>,
    pub progress: Option<serde_json::Value>,
    pub error_message: Option<String>,
    pub plugin_name: Option<String>,
    pub plugin_version: Option<String>,
    pub plugin_digest: Option<String>,
    pub log_path: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// `failure` or `infrastructure` for failed steps.
    pub failure_kind: Option<String>,
    /// Retries used so far, per kind.
    pub failure_retries: i64,
    pub infrastructure_retries: i64,
    /// GPU devices leased to the step, e.g. "0,1".
    pub gpus: Option<String>,
    /// `<run>/<step>` whose memoized outputs this step reused.
    pub cached_from: Option<String>,
    /// Set while the current attempt retries an earlier one: `failure` or `infrastructure`.
    pub retry_reason: Option<String>,
    pub retry_error: Option<String>,
}

/// Which plugin ran a step.
#[derive(Debug, Clone)]
pub struct PluginIdentity<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub digest: &'a str,
}

/// A row of `steps`.
#[derive(FromRow, serde::Deserialize)]
struct StepRow {
    run_id: String,
    step_id: String,
    position: i64,
    uses: String,
    action: Option<String>,
    status: String,
    attempt: i64,
    inputs_json: Option<String>,
    outputs_json: Option<String>,
    progress_json: Option<String>,
    error_message: Option<String>,
    plugin_name: Option<String>,
    plugin_version: Option<String>,
    plugin_digest: Option<String>,
    log_path: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    duration_ms: Option<i64>,
    failure_kind: Option<String>,
    failure_retries: i64,
    infrastructure_retries: i64,
    gpus: Option<String>,
    cached_from: Option<String>,
    retry_reason: Option<String>,
    retry_error: Option<String>,
}

const READING: &str = "reading a step";

impl TryFrom<StepRow> for StepRecord {
    type Error = Error;

    fn try_from(row: StepRow) -> Result<Self> {
        Ok(StepRecord {
            status: columns::status(&row.status, READING)?,
            inputs: columns::json(row.inputs_json, "inputs_json", READING)?,
            outputs: columns::json(row.outputs_json, "outputs_json", READING)?,
            progress: columns::json(row.progress_json, "progress_json", READING)?,
            run_id: row.run_id,
            step_id: row.step_id,
            position: row.position,
            uses: row.uses,
            action: row.action,
            attempt: row.attempt,
            error_message: row.error_message,
            plugin_name: row.plugin_name,
            plugin_version: row.plugin_version,
            plugin_digest: row.plugin_digest,
            log_path: row.log_path,
            started_at: row.started_at,
            finished_at: row.finished_at,
            duration_ms: row.duration_ms,
            failure_kind: row.failure_kind,
            failure_retries: row.failure_retries,
            infrastructure_retries: row.infrastructure_retries,
            gpus: row.gpus,
            cached_from: row.cached_from,
            retry_reason: row.retry_reason,
            retry_error: row.retry_error,
        })
    }
}

/// A step read by any query: a column of the wrong type is an error while reading a step.
fn step_from_row(row: &AnyRow) -> Result<StepRecord> {
    StepRow::from_row(row)
        .map_err(query_err(READING))?
        .try_into()
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct StepEnd {
    pub status: StepStatus,
    pub outputs: Option<serde_json::Value>,
    pub error_message: Option<String>,
    /// `failure` or `infrastructure`, for a failed step.
    pub failure_kind: Option<String>,
    /// `<run>/<step>` whose memoized outputs a succeeded step reused.
    pub cached_from: Option<String>,
}

const END_DOING: &str = "finishing a step";

/// The end of a step as one statement: its duration from the start recorded in `started_ms`.
fn end_statement(run_id: String, step_id: String, end: StepEnd) -> Statement {
    let (now, now_ms) = time_fmt::now_with_millis();
    Statement {
        sql: "UPDATE steps SET status = $1, outputs_json = $2, error_message = $3, \
              finished_at = $4, duration_ms = $5 - started_ms, failure_kind = $6, \
              cached_from = $7 WHERE run_id = $8 AND step_id = $9"
            .into(),
        args: vec![
            end.status.as_str().into(),
            end.outputs.map(|o| o.to_string()).into(),
            end.error_message.into(),
            now.into(),
            now_ms.into(),
            end.failure_kind.into(),
            end.cached_from.into(),
            run_id.into(),
            step_id.into(),
        ],
    }
}

/// The inserts of a run's planned steps, all `queued`, for the run's creating transaction:
/// many rows per statement (each statement is a round trip to the database).
pub(crate) fn insert_steps(run_id: &str, steps: &[NewStep]) -> Vec<Statement> {
    /// Rows per statement: 6 parameters each, well under SQLite's and PostgreSQL's limits.
    const ROWS: usize = 256;
    let mut statements = Vec::new();
    for (chunk_no, chunk) in steps.chunks(ROWS).enumerate() {
        let mut sql = String::from(
            "INSERT INTO steps (run_id, step_id, position, uses, action, status) VALUES ",
        );
        let mut args = Vec::with_capacity(chunk.len() * 6);
        for (i, step) in chunk.iter().enumerate() {
            let n = i * 6;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6
            ));
            args.extend([
                run_id.into(),
                step.step_id.clone().into(),
                ((chunk_no * ROWS + i) as i64).into(),
                step.uses.clone().into(),
                step.action.clone().into(),
                StepStatus::Queued.as_str().into(),
            ]);
        }
        statements.push(Statement {
            sql: sql.into(),
            args,
        });
    }
    statements
}

const START_DOING: &str = "starting a step";

/// The start of a step's attempt, as written.
#[derive(Clone)]
struct StepStart {
    run_id: String,
    step_id: String,
    /// The attempt's number when the caller knows it; else the recorded one + 1.
    attempt: Option<i64>,
    inputs: String,
    log_path: Option<String>,
    plugin: Option<(String, String, String)>,
    at: String,
    at_ms: i64,
}

/// The start of a step's attempt; `RETURNING attempt` follows when the attempt is wanted.
macro_rules! start_sql {
    () => {
        "UPDATE steps SET status = $1, attempt = COALESCE($10, attempt + 1), \
         inputs_json = $2, log_path = $3, started_at = $4, started_ms = $11, finished_at = NULL, \
         duration_ms = NULL, error_message = NULL, failure_kind = NULL, cached_from = NULL, \
         outputs_json = NULL, progress_json = NULL, retry_reason = NULL, \
         retry_error = NULL, plugin_name = COALESCE($5, plugin_name), \
         plugin_version = COALESCE($6, plugin_version), \
         plugin_digest = COALESCE($7, plugin_digest) \
         WHERE run_id = $8 AND step_id = $9"
    };
}

impl StepStart {
    fn new(
        run_id: &str,
        step_id: &str,
        attempt: Option<i64>,
        inputs: &serde_json::Value,
        log_path: Option<&str>,
        plugin: Option<PluginIdentity<'_>>,
    ) -> Self {
        let (at, at_ms) = time_fmt::now_with_millis();
        Self {
            run_id: run_id.to_owned(),
            step_id: step_id.to_owned(),
            attempt,
            inputs: inputs.to_string(),
            log_path: log_path.map(str::to_owned),
            plugin: plugin.map(|p| (p.name.to_owned(), p.version.to_owned(), p.digest.to_owned())),
            at,
            at_ms,
        }
    }

    /// The start as one statement (the attempt number is the caller's or the next one).
    fn statement(self) -> Statement {
        let (name, version, digest) = match self.plugin {
            Some((n, v, d)) => (Some(n), Some(v), Some(d)),
            None => (None, None, None),
        };
        Statement {
            sql: start_sql!().into(),
            args: vec![
                StepStatus::Running.as_str().into(),
                self.inputs.into(),
                self.log_path.into(),
                self.at.into(),
                name.into(),
                version.into(),
                digest.into(),
                self.run_id.into(),
                self.step_id.into(),
                self.attempt.into(),
                self.at_ms.into(),
            ],
        }
    }

    /// Writes the start; returns the attempt number.
    async fn write(self, conn: &mut sqlx::AnyConnection) -> Result<i64> {
        let missing = format!("run {} has no step `{}`", self.run_id, self.step_id);
        let mut query = sqlx::query_scalar::<_, i64>(concat!(start_sql!(), " RETURNING attempt"));
        for arg in self.statement().args {
            query = match arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
            };
        }
        query
            .fetch_optional(&mut *conn)
            .await
            .map_err(query_err(START_DOING))?
            .ok_or(Error::Corrupt {
                doing: START_DOING,
                message: missing,
            })
    }
}

impl Store {
    /// Record the planned steps of a run, all `queued`, in one transaction.
    /// A step starts a new attempt with these resolved inputs (and, for a plugin step, the
    /// plugin that runs it); returns the attempt number. Durable when it returns: whatever the
    /// attempt launches is keyed by this number.
    pub async fn start_step(
        &self,
        run_id: &str,
        step_id: &str,
        inputs: &serde_json::Value,
        log_path: Option<&str>,
        plugin: Option<PluginIdentity<'_>>,
    ) -> Result<i64> {
        let start = StepStart::new(run_id, step_id, None, inputs, log_path, plugin);
        self.journal()
            .now(START_DOING, Some(run_id), move |conn| {
                Box::pin(start.clone().write(conn))
            })
            .await
    }

    /// Start attempt `attempt` of a step (the attempt this engine knows to be next), durable
    /// with the next commit like a step's end. For a caller that flushes before anything keyed
    /// by the attempt number happens (a launch). Lost in a crash, the step is `queued` on
    /// resume and runs again as the same attempt.
    pub fn start_step_soon(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: i64,
        inputs: &serde_json::Value,
        log_path: Option<&str>,
        plugin: Option<PluginIdentity<'_>>,
    ) {
        let start = StepStart::new(run_id, step_id, Some(attempt), inputs, log_path, plugin);
        self.journal()
            .soon_statement(START_DOING, Some(run_id), start.statement());
    }

    /// The latest progress report of a running step, durable with the next commit.
    pub fn set_step_progress_soon(
        &self,
        run_id: &str,
        step_id: &str,
        progress: &serde_json::Value,
    ) {
        const DOING: &str = "recording progress";
        let statement = Statement {
            sql: "UPDATE steps SET progress_json = $1 WHERE run_id = $2 AND step_id = $3".into(),
            args: vec![progress.to_string().into(), run_id.into(), step_id.into()],
        };
        self.journal()
            .soon_statement(DOING, Some(run_id), statement);
    }

    /// The latest progress report of a running step.
    pub async fn set_step_progress(
        &self,
        run_id: &str,
        step_id: &str,
        progress: &serde_json::Value,
    ) -> Result<()> {
        self.set_step_progress_soon(run_id, step_id, progress);
        self.journal().flush(None).await
    }

    /// Record the end of a step (also for steps that never started: skipped, cancelled).
    /// Durable when it returns.
    pub async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        status: StepStatus,
        outputs: Option<&serde_json::Value>,
        error_message: Option<&str>,
    ) -> Result<()> {
        let end = StepEnd {
            status,
            outputs: outputs.cloned(),
            error_message: error_message.map(str::to_owned),
            failure_kind: None,
            cached_from: None,
        };
        let fenced = Some(run_id);
        let statement = end_statement(run_id.to_owned(), step_id.to_owned(), end);
        self.journal()
            .now_statement(END_DOING, fenced, statement)
            .await
    }

    /// Record the end of a step, durable with the next commit (the start of a step that
    /// depends on it, the run's end, or at most the journal's linger later).
    pub fn end_step_soon(&self, run_id: &str, step_id: &str, end: StepEnd) {
        let statement = end_statement(run_id.to_owned(), step_id.to_owned(), end);
        self.journal()
            .soon_statement(END_DOING, Some(run_id), statement);
    }

    /// A step interrupted by an engine crash continues its current attempt (no new attempt).
    pub async fn resume_step(&self, run_id: &str, step_id: &str) -> Result<i64> {
        Ok(self.step(run_id, step_id).await?.attempt)
    }

    /// Begin the next attempt of a failed step as a retry, in one transaction: count the retry
    /// against the budget of its kind (`infrastructure` or not), bump the attempt and record why.
    /// An engine that dies while waiting for the backoff resumes this new attempt, so a retry is
    /// never counted twice. Returns the new attempt number.
    pub async fn begin_retry(
        &self,
        run_id: &str,
        step_id: &str,
        infrastructure: bool,
        previous_error: &str,
    ) -> Result<i64> {
        let counter = if infrastructure {
            "infrastructure_retries = infrastructure_retries + 1"
        } else {
            "failure_retries = failure_retries + 1"
        };
        let sql = format!(
            "UPDATE steps SET {counter}, attempt = attempt + 1, status = $1, retry_reason = $2, \
             retry_error = $3, started_at = $4, started_ms = $7, finished_at = NULL, \
             duration_ms = NULL, error_message = NULL, failure_kind = NULL, outputs_json = NULL, progress_json = NULL, \
             gpus = NULL WHERE run_id = $5 AND step_id = $6"
        );
        const DOING: &str = "beginning a retry";
        let (now, now_ms) = time_fmt::now_with_millis();
        let mut tx = self.begin_run_write(DOING, run_id).await?;
        sqlx::query(&sql)
            .bind(StepStatus::Running.as_str())
            .bind(if infrastructure {
                "infrastructure"
            } else {
                "failure"
            })
            .bind(previous_error)
            .bind(now)
            .bind(run_id)
            .bind(step_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_err(DOING))?;
        tx.commit().await.map_err(query_err(DOING))?;
        Ok(self.step(run_id, step_id).await?.attempt)
    }

    /// Record the GPU devices leased to a step.
    pub async fn set_step_gpus(&self, run_id: &str, step_id: &str, gpus: &str) -> Result<()> {
        const DOING: &str = "recording GPUs";
        let mut tx = self.begin_run_write(DOING, run_id).await?;
        sqlx::query("UPDATE steps SET gpus = $1 WHERE run_id = $2 AND step_id = $3")
            .bind(gpus)
            .bind(run_id)
            .bind(step_id)
            .execute(&mut *tx)
            .await
            .map_err(query_err(DOING))?;
        tx.commit().await.map_err(query_err(DOING))
    }

    pub async fn step(&self, run_id: &str, step_id: &str) -> Result<StepRecord> {
        let row = sqlx::query("SELECT * FROM steps WHERE run_id = $1 AND step_id = $2")
            .bind(run_id)
            .bind(step_id)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("reading a step"))?
            .ok_or_else(|| Error::Corrupt {
                doing: "reading a step",
                message: format!("run {run_id} has no step `{step_id}`"),
            })?;
        step_from_row(&row)
    }

    /// The steps of a run in workflow order.
    pub async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>> {
        const SQL: &str = "SELECT * FROM steps WHERE run_id = $1 ORDER BY position";
        if let Some(rows) = self.read_direct::<StepRow>(SQL, &[&run_id]) {
            return rows.into_iter().map(StepRecord::try_from).collect();
        }
        let rows = sqlx::query(SQL)
            .bind(run_id)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("reading steps"))?;
        rows.iter().map(step_from_row).collect()
    }
}
