//! Logs (paged and live over SSE), checkpoints and epoch metrics of runs: the HTTP side of the
//! run service's log pages (`kiln_runner::service::logs` says how a step's log is read and
//! paged).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiPath, ApiQuery, offset, whole_number};
use crate::problem::{ApiResult, Problem};
use crate::state::AppState;

/// Lines per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// How often a live follower looks for new output.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Step id. Default: the running step with program output, else the last step with
    /// program output, else the first step.
    pub step: Option<String>,
    /// Where to start: `next_offset` of the previous page (0, the default, is the beginning).
    /// With `Accept: text/event-stream`, the `Last-Event-ID` header takes precedence.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    pub offset: Option<String>,
    /// Lines per page (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    pub limit: Option<String>,
}

/// A page of a step's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub run_id: String,
    pub step: String,
    /// `output` (the programs' output; offsets are bytes) or `events` (structured events of a
    /// step without program output; offsets are event sequence numbers).
    pub source: String,
    pub lines: Vec<String>,
    /// Pass as `offset` to get the lines after this page.
    pub next_offset: u64,
    /// The step is in a terminal state and no more output is left.
    pub finished: bool,
}

/// A weights file of a training.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    /// The step whose training directory holds the file.
    pub step: String,
    /// File name, e.g. `best.pt`, `last.pt`, `epoch10.pt`.
    pub name: String,
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
    /// Last modification, RFC 3339 UTC.
    pub modified: Option<String>,
    /// `best.pt`, or reported as the best checkpoint by the training.
    pub best: bool,
    /// Epoch reported with the checkpoint, when known.
    pub epoch: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointList {
    pub run_id: String,
    pub checkpoints: Vec<CheckpointView>,
}

/// A page of a step's log (`Accept: application/json`), or its lines live as Server-Sent
/// Events (`Accept: text/event-stream`): each line is an event whose `id` is the offset after
/// it (reconnect with `Last-Event-ID` to resume); when the step has ended and everything was
/// sent, a last `event: end` with data `{"status": "<step status>"}` closes the stream.
#[utoipa::path(get, path = "/runs/{id}/logs", operation_id = "get_run_logs",
    params(("id" = String, Path, description = "run id or a unique prefix"), LogQuery,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, maximum = 9223372036854775807_i64,
            description = "SSE: resume after this offset (the `id` of the last event received); \
                           checked, but unused, without `Accept: text/event-stream`")),
    responses(
        (status = 200, content((LogPage = "application/json"), (String = "text/event-stream"))),
        (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn run_logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Response> {
    let limit = match &q.limit {
        Some(raw) => whole_number("limit", raw, 1, MAX_LIMIT as u64, "invalid_limit")? as usize,
        None => DEFAULT_LIMIT,
    };
    let query_offset = match &q.offset {
        Some(raw) => offset("offset", raw, "invalid_offset")?,
        None => 0,
    };
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(offset(
            "Last-Event-ID",
            v.to_str().unwrap_or("(not text)"),
            "invalid_last_event_id",
        )?),
        None => None,
    };
    let run = state.store().run(&id).await?;
    let step = state
        .service()
        .pick_step(&run.id, q.step.as_deref())
        .await?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !sse {
        let page = state
            .service()
            .log_page(&run.id, Some(&step.step_id), query_offset, limit)
            .await?;
        return Ok(Json(LogPage {
            run_id: run.id,
            step: page.step,
            source: page.source.to_owned(),
            lines: page.lines.into_iter().map(|(l, _)| l).collect(),
            next_offset: page.next_offset,
            finished: page.finished,
        })
        .into_response());
    }
    let offset = last_event_id.unwrap_or(query_offset);
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(follow(state, run.id, step.step_id, offset, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Feed a live follower until the step has ended and everything was sent, or the client left.
async fn follow(
    state: AppState,
    run_id: String,
    step_id: String,
    mut offset: u64,
    tx: tokio::sync::mpsc::Sender<SseEvent>,
) {
    loop {
        if state.shutdown().is_cancelled() {
            return;
        }
        let mut full = false;
        match state
            .service()
            .log_page(&run_id, Some(&step_id), offset, DEFAULT_LIMIT)
            .await
        {
            Ok(page) => {
                full = page.lines.len() >= DEFAULT_LIMIT;
                for (line, after) in page.lines {
                    let event = SseEvent::default().id(after.to_string()).data(line);
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                offset = page.next_offset;
                if page.finished {
                    let data = serde_json::json!({ "status": page.status.to_string() });
                    let _ = tx
                        .send(SseEvent::default().event("end").data(data.to_string()))
                        .await;
                    return;
                }
            }
            Err(kiln_runner::Error::Store(kiln_store::Error::RunNotFound(_)))
            | Err(kiln_runner::Error::NotFound(..)) => {
                // The run was deleted while being followed.
                let data = serde_json::json!({ "status": "deleted" });
                let _ = tx
                    .send(SseEvent::default().event("end").data(data.to_string()))
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(target: "errors.api", run_id, step_id, "following a log: {e}");
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
            // The server is stopping: end the stream without `end`, so the client resumes
            // with Last-Event-ID against the restarted server.
            _ = state.shutdown().cancelled() => return,
        }
    }
}

/// The weights files of the run's trainings: every step with `project` and `training_name`
/// inputs has its `projects/<project>/model/training/<name>/weights/` listed (each directory
/// once, under the first step naming it).
#[utoipa::path(get, path = "/runs/{id}/checkpoints", operation_id = "get_run_checkpoints",
    params(("id" = String, Path, description = "run id or a unique prefix")),
    responses((status = 200, body = CheckpointList), (status = 404, body = Problem)))]
pub async fn run_checkpoints(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<CheckpointList>> {
    let run = state.store().run(&id).await?;
    let checkpoints = state
        .service()
        .checkpoints(&run.id)
        .await?
        .into_iter()
        .map(|c| CheckpointView {
            step: c.step,
            name: c.name,
            path: c.path,
            size: c.size,
            modified: c.modified,
            best: c.best,
            epoch: c.epoch,
        })
        .collect();
    Ok(Json(CheckpointList {
        run_id: run.id,
        checkpoints,
    }))
}

/// The metrics a training step reported for one epoch.
#[derive(Debug, Serialize, ToSchema)]
pub struct EpochView {
    pub step: String,
    pub epoch: i64,
    /// Losses, precision/recall, mAP... as the trainer names them (e.g. `train/box_loss`,
    /// `metrics/mAP50(B)`, `coco/bbox_mAP`); the last value the epoch reported for each.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsView {
    pub run_id: String,
    /// By step, then epoch.
    pub epochs: Vec<EpochView>,
}

/// The metrics of every epoch the run's training steps reported (what a chart per epoch
/// shows), by step then epoch.
#[utoipa::path(get, path = "/runs/{id}/metrics", operation_id = "get_run_metrics",
    params(("id" = String, Path, description = "run id or a unique prefix")),
    responses((status = 200, body = MetricsView), (status = 404, body = Problem)))]
pub async fn run_metrics(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<MetricsView>> {
    let run = state.store().run(&id).await?;
    let epochs = state
        .store()
        .epoch_metrics(&run.id)
        .await?
        .into_iter()
        .map(|e| EpochView {
            step: e.step_id,
            epoch: e.epoch,
            metrics: e.metrics,
        })
        .collect();
    Ok(Json(MetricsView {
        run_id: run.id,
        epochs,
    }))
}
