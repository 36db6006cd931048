//! Structured log lines (engine and plugin messages) and reported checkpoints.

use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store, query_err, time_fmt};

/// One structured log line of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
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

impl Store {
    /// Append a log line to a run. Sequence numbers are dense per run; two writers that pick
    /// the same number (PostgreSQL, concurrent steps) retry with the next one.
    pub async fn append_event(
        &self,
        run_id: &str,
        step_id: Option<&str>,
        level: &str,
        message: &str,
    ) -> Result<()> {
        let mut tries = 0;
        loop {
            let result = sqlx::query(
                "INSERT INTO events (run_id, seq, step_id, at, level, message) \
                 VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = $1), $2, $3, $4, $5)",
            )
            .bind(run_id)
            .bind(step_id)
            .bind(time_fmt::now())
            .bind(level)
            .bind(message)
            .execute(self.pool())
            .await;
            match result {
                Ok(_) => return Ok(()),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && tries < 10 => {
                    tries += 1;
                }
                Err(e) => return Err(query_err("appending a log line")(e)),
            }
        }
    }

    /// Log lines of a run after sequence number `after`, at most `limit`.
    pub async fn events_after(&self, run_id: &str, after: i64, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT seq, step_id, at, level, message FROM events \
             WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("reading log lines"))?;
        rows.iter()
            .map(|row| {
                let e = || query_err("reading log lines");
                Ok(Event {
                    seq: row.try_get("seq").map_err(e())?,
                    step_id: row.try_get("step_id").map_err(e())?,
                    at: row.try_get("at").map_err(e())?,
                    level: row.try_get("level").map_err(e())?,
                    message: row.try_get("message").map_err(e())?,
                })
            })
            .collect()
    }

    /// Log lines of a run, optionally of one step, in order.
    pub async fn events(&self, run_id: &str, step_id: Option<&str>) -> Result<Vec<Event>> {
        let rows = match step_id {
            Some(s) => sqlx::query(
                "SELECT seq, step_id, at, level, message FROM events \
                 WHERE run_id = $1 AND step_id = $2 ORDER BY seq",
            )
            .bind(run_id)
            .bind(s)
            .fetch_all(self.pool())
            .await,
            None => sqlx::query(
                "SELECT seq, step_id, at, level, message FROM events WHERE run_id = $1 ORDER BY seq",
            )
            .bind(run_id)
            .fetch_all(self.pool())
            .await,
        }
        .map_err(query_err("reading log lines"))?;
        rows.iter()
            .map(|row| {
                let e = query_err("reading log lines");
                Ok(Event {
                    seq: row.try_get("seq").map_err(e)?,
                    step_id: row
                        .try_get("step_id")
                        .map_err(query_err("reading log lines"))?,
                    at: row.try_get("at").map_err(query_err("reading log lines"))?,
                    level: row
                        .try_get("level")
                        .map_err(query_err("reading log lines"))?,
                    message: row
                        .try_get("message")
                        .map_err(query_err("reading log lines"))?,
                })
            })
            .collect()
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
        sqlx::query(
            "INSERT INTO checkpoints (run_id, step_id, path, epoch, is_best, reported_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, step_id, path) DO UPDATE SET \
             epoch = excluded.epoch, is_best = excluded.is_best, reported_at = excluded.reported_at",
        )
        .bind(run_id)
        .bind(step_id)
        .bind(path)
        .bind(epoch)
        .bind(is_best as i64)
        .bind(time_fmt::now())
        .execute(self.pool())
        .await
        .map_err(query_err("recording a checkpoint"))?;
        Ok(())
    }

    pub async fn checkpoints(&self, run_id: &str) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT step_id, path, epoch, is_best, reported_at FROM checkpoints \
             WHERE run_id = $1 ORDER BY step_id, path",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err("reading checkpoints"))?;
        rows.iter()
            .map(|row| {
                let best: i64 = row
                    .try_get("is_best")
                    .map_err(query_err("reading checkpoints"))?;
                Ok(Checkpoint {
                    step_id: row
                        .try_get("step_id")
                        .map_err(query_err("reading checkpoints"))?,
                    path: row
                        .try_get("path")
                        .map_err(query_err("reading checkpoints"))?,
                    epoch: row
                        .try_get("epoch")
                        .map_err(query_err("reading checkpoints"))?,
                    is_best: best != 0,
                    reported_at: row
                        .try_get("reported_at")
                        .map_err(query_err("reading checkpoints"))?,
                })
            })
            .collect()
    }
}
