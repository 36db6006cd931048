//! Structured log lines (engine and plugin messages), reported checkpoints and the metrics of
//! each epoch.

use serde::Serialize;

use crate::journal::Statement;
use crate::{Result, Store, query_err, time_fmt};

/// One structured log line of a run.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct Event {
    pub seq: i64,
    pub step_id: Option<String>,
    pub at: String,
    pub level: String,
    pub message: String,
}

/// A checkpoint reported by a training step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checkpoint {
    pub step_id: String,
    pub path: String,
    pub epoch: Option<i64>,
    pub is_best: bool,
    pub reported_at: String,
}

/// A row of `checkpoints` as [`Store::checkpoints`] selects it.
#[derive(sqlx::FromRow)]
struct CheckpointRow {
    step_id: String,
    path: String,
    epoch: Option<i64>,
    is_best: i64,
    reported_at: String,
}

impl From<CheckpointRow> for Checkpoint {
    fn from(row: CheckpointRow) -> Self {
        Checkpoint {
            step_id: row.step_id,
            path: row.path,
            epoch: row.epoch,
            is_best: row.is_best != 0,
            reported_at: row.reported_at,
        }
    }
}

/// The metrics a step reported for one epoch, merged over the epoch's reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpochMetrics {
    pub step_id: String,
    pub epoch: i64,
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

const EVENT_DOING: &str = "appending a log line";

#[derive(Clone)]
struct NewEvent {
    run_id: String,
    step_id: Option<String>,
    at: String,
    level: String,
    message: String,
}

fn new_event(run_id: &str, step_id: Option<&str>, level: &str, message: &str) -> NewEvent {
    NewEvent {
        run_id: run_id.to_owned(),
        step_id: step_id.map(str::to_owned),
        at: time_fmt::now(),
        level: level.to_owned(),
        message: message.to_owned(),
    }
}

impl NewEvent {
    /// The insert as one statement: where the writer holds SQLite's write lock, the next
    /// number cannot be taken by another.
    fn statement(&self) -> Statement {
        Statement {
            sql: INSERT_EVENT.into(),
            args: vec![
                self.run_id.clone().into(),
                self.step_id.clone().into(),
                self.at.clone().into(),
                self.level.clone().into(),
                self.message.clone().into(),
            ],
        }
    }
}

/// A log line with the run's next sequence number, unless another took it.
const INSERT_EVENT: &str = "INSERT INTO events (run_id, seq, step_id, at, level, message) \
     VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = $1), $2, $3, $4, $5) \
     ON CONFLICT (run_id, seq) DO NOTHING";

/// Inserts with the run's next sequence number; sequence numbers are dense per run. Another
/// process appending to the same run at the same moment takes a number first: try the next.
async fn insert_event(conn: &mut sqlx::AnyConnection, e: NewEvent) -> Result<()> {
    for _ in 0..10 {
        let inserted = sqlx::query(INSERT_EVENT)
            .bind(&e.run_id)
            .bind(&e.step_id)
            .bind(&e.at)
            .bind(&e.level)
            .bind(&e.message)
            .execute(&mut *conn)
            .await
            .map_err(query_err(EVENT_DOING))?
            .rows_affected();
        if inserted == 1 {
            return Ok(());
        }
    }
    Err(crate::Error::Conflict(format!(
        "run {}: could not take a sequence number for a log line",
        e.run_id
    )))
}

impl Store {
    /// Append a log line to a run; durable when it returns.
    pub async fn append_event(
        &self,
        run_id: &str,
        step_id: Option<&str>,
        level: &str,
        message: &str,
    ) -> Result<()> {
        let event = new_event(run_id, step_id, level, message);
        self.journal()
            .now_with(
                EVENT_DOING,
                Some(run_id),
                Some(vec![event.statement()]),
                move |conn| Box::pin(insert_event(conn, event.clone())),
            )
            .await
    }

    /// Append a log line to a run, durable with the next commit.
    pub fn append_event_soon(
        &self,
        run_id: &str,
        step_id: Option<&str>,
        level: &str,
        message: &str,
    ) {
        let event = new_event(run_id, step_id, level, message);
        self.journal()
            .soon_with(EVENT_DOING, Some(run_id), event.statement(), move |conn| {
                Box::pin(insert_event(conn, event.clone()))
            });
    }

    /// Log lines of a run after sequence number `after`, at most `limit`.
    pub async fn events_after(&self, run_id: &str, after: i64, limit: i64) -> Result<Vec<Event>> {
        sqlx::query_as(
            "SELECT seq, step_id, at, level, message FROM events \
             WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("reading log lines"))
    }

    /// Log lines of a run, optionally of one step, in order.
    pub async fn events(&self, run_id: &str, step_id: Option<&str>) -> Result<Vec<Event>> {
        match step_id {
            Some(s) => sqlx::query_as(
                "SELECT seq, step_id, at, level, message FROM events \
                 WHERE run_id = $1 AND step_id = $2 ORDER BY seq",
            )
            .bind(run_id)
            .bind(s)
            .fetch_all(self.pool())
            .await,
            None => sqlx::query_as(
                "SELECT seq, step_id, at, level, message FROM events WHERE run_id = $1 ORDER BY seq",
            )
            .bind(run_id)
            .fetch_all(self.pool())
            .await,
        }
        .map_err(query_err("reading log lines"))
    }

    /// Record (or refresh) a checkpoint reported by a step.
    pub async fn record_checkpoint(
        &self,
        run_id: &str,
        step_id: &str,
        path: &str,
        epoch: Option<i64>,
        is_best: bool,
    ) -> Result<()> {
        const DOING: &str = "recording a checkpoint";
        let statement = Statement {
            sql: "INSERT INTO checkpoints (run_id, step_id, path, epoch, is_best, reported_at) \
                  VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, step_id, path) DO \
                  UPDATE SET epoch = excluded.epoch, is_best = excluded.is_best, \
                  reported_at = excluded.reported_at"
                .into(),
            args: vec![
                run_id.into(),
                step_id.into(),
                path.into(),
                epoch.into(),
                i64::from(is_best).into(),
                time_fmt::now().into(),
            ],
        };
        self.journal()
            .now_statement(DOING, Some(run_id), statement)
            .await
    }

    pub async fn checkpoints(&self, run_id: &str) -> Result<Vec<Checkpoint>> {
        let rows: Vec<CheckpointRow> = sqlx::query_as(
            "SELECT step_id, path, epoch, is_best, reported_at FROM checkpoints \
             WHERE run_id = $1 ORDER BY step_id, path",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("reading checkpoints"))?;
        Ok(rows.into_iter().map(Checkpoint::from).collect())
    }

    /// The metrics of epoch `epoch` of a step (all the epoch's reports merged so far), durable
    /// with the next commit. Replaces what an earlier report of the epoch recorded.
    pub fn set_epoch_metrics_soon(
        &self,
        run_id: &str,
        step_id: &str,
        epoch: i64,
        metrics: &serde_json::Map<String, serde_json::Value>,
    ) {
        const DOING: &str = "recording an epoch's metrics";
        let fenced = Some(run_id);
        let (run_id, step_id, metrics) = (
            run_id.to_owned(),
            step_id.to_owned(),
            serde_json::Value::Object(metrics.clone()).to_string(),
        );
        let statement = Statement {
            sql: "INSERT INTO epoch_metrics (run_id, step_id, epoch, metrics_json, reported_at) \
                  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, step_id, epoch) DO UPDATE \
                  SET metrics_json = excluded.metrics_json, reported_at = excluded.reported_at"
                .into(),
            args: vec![
                run_id.into(),
                step_id.into(),
                epoch.into(),
                metrics.into(),
                time_fmt::now().into(),
            ],
        };
        self.journal().soon_statement(DOING, fenced, statement);
    }

    /// The metrics of every epoch the run's steps reported, by step then epoch. A row whose JSON
    /// is not an object (a damaged database) reads as no metrics.
    pub async fn epoch_metrics(&self, run_id: &str) -> Result<Vec<EpochMetrics>> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT step_id, epoch, metrics_json FROM epoch_metrics WHERE run_id = $1 \
             ORDER BY step_id, epoch",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("reading epoch metrics"))?;
        Ok(rows
            .into_iter()
            .map(|(step_id, epoch, json)| EpochMetrics {
                step_id,
                epoch,
                metrics: serde_json::from_str(&json).unwrap_or_default(),
            })
            .collect())
    }
}
