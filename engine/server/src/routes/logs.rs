//! Logs (paged and live over SSE) and checkpoints of runs.
//!
//! A step's log is the raw output of the programs it launched, `.kiln/runs/<run>/logs/<step>.log`
//! then `<step>-2.log`, … for later launches, read as one stream: `offset` is a byte offset into
//! the concatenation of those files (for a single launch, simply into `<step>.log`), so pages stay
//! stable while the last file grows. Lines are split on `\n` and `\r` (the trainer redraws its
//! progress lines with `\r` + `ESC[K`), ANSI escapes are stripped and empty lines dropped; a
//! partial last line waits until it is completed or the step ends. A step that launched no
//! program (builtins, or a plugin step that ended without output) serves its structured events
//! instead; there `offset` is the run's event sequence number (`source: events`).

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use kiln_store::{StepRecord, StepStatus};

use crate::extract::{ApiPath, ApiQuery, MAX_OFFSET, whole_number};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    paths(run_logs, run_checkpoints),
    components(schemas(LogPage, CheckpointView, CheckpointList))
)]
pub struct Api;

/// Lines per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// Bytes of program output read per page at most.
const READ_BUDGET: u64 = 1 << 20;
/// A line longer than this without a line break is served in pieces.
const MAX_LINE: usize = 64 << 10;
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

/// An offset given as `raw` (a query parameter or header named `what`).
pub(crate) fn offset(what: &str, raw: &str, code: &'static str) -> ApiResult<u64> {
    whole_number(what, raw, 0, MAX_OFFSET, code)
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
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", operation_id = "get_run_logs",
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
    let step = pick_step(&state, &run.id, q.step.as_deref()).await?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !sse {
        let page = read_page(&state, &run.id, &step.step_id, query_offset, limit).await?;
        return Ok(Json(LogPage {
            run_id: run.id,
            step: step.step_id,
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
        match read_page(&state, &run_id, &step_id, offset, DEFAULT_LIMIT).await {
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
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                // The run was deleted while being followed.
                let data = serde_json::json!({ "status": "deleted" });
                let _ = tx
                    .send(SseEvent::default().event("end").data(data.to_string()))
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(target: "errors.api", run_id, step_id, "following a log: {}", e.detail);
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

/// The step `want`, or the default step: the running one with program output, else the last
/// one with program output, else the first.
async fn pick_step(state: &AppState, run_id: &str, want: Option<&str>) -> ApiResult<StepRecord> {
    let steps = state.store().steps(run_id).await?;
    let names = || {
        steps
            .iter()
            .map(|s| s.step_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(want) = want {
        return steps
            .iter()
            .find(|s| s.step_id == want)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(
                    "step_not_found",
                    format!(
                        "run {run_id} has no step `{want}`; pass one of its steps as `step`: {}",
                        names()
                    ),
                )
            });
    }
    let log_dir = state.workspace().log_dir(run_id);
    let with_output: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| log_file(&log_dir, &s.step_id, 1).is_file())
        .collect();
    with_output
        .iter()
        .find(|s| s.status == StepStatus::Running)
        .or(with_output.last())
        .copied()
        .or(steps.first())
        .cloned()
        .ok_or_else(|| ApiError::not_found("step_not_found", format!("run {run_id} has no steps")))
}

fn log_file(log_dir: &FsPath, step: &str, launch: usize) -> PathBuf {
    match launch {
        1 => log_dir.join(format!("{step}.log")),
        n => log_dir.join(format!("{step}-{n}.log")),
    }
}

/// The step's output files, launch by launch, with their current lengths.
fn output_files(log_dir: &FsPath, step: &str) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    for n in 1.. {
        let path = log_file(log_dir, step, n);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push((path, m.len())),
            _ => break,
        }
    }
    files
}

pub(crate) struct Page {
    pub source: &'static str,
    /// Each line with the offset after it.
    pub lines: Vec<(String, u64)>,
    pub next_offset: u64,
    pub finished: bool,
    pub status: StepStatus,
}

/// Up to `limit` lines of the step's log after `offset`.
pub(crate) async fn read_page(
    state: &AppState,
    run_id: &str,
    step_id: &str,
    offset: u64,
    limit: usize,
) -> ApiResult<Page> {
    // The status is read before the output, so output written before the step ended is never
    // missed by a page that says `finished`.
    let run = state.store().run(run_id).await?;
    let step = state.store().step(run_id, step_id).await?;
    let ended = step.status.is_terminal() || run.status.is_terminal();
    let log_dir = state.workspace().log_dir(run_id);
    let files = output_files(&log_dir, step_id);
    if !files.is_empty() {
        let total: u64 = files.iter().map(|(_, len)| len).sum();
        let (lines, next_offset) =
            tokio::task::spawn_blocking(move || read_output(&files, offset, limit, ended))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::internal(format!("reading the log of {step_id}: {e}")))?;
        return Ok(Page {
            source: "output",
            lines,
            finished: ended && next_offset >= total,
            next_offset,
            status: step.status,
        });
    }
    if !ended && !step.uses.starts_with("builtin/") {
        // A plugin step whose program has not written yet: its output will come.
        return Ok(Page {
            source: "output",
            lines: Vec::new(),
            next_offset: offset,
            finished: false,
            status: step.status,
        });
    }
    // Structured events; `events_after` spans the run's steps, so filter in batches.
    const BATCH: i64 = 500;
    let mut lines = Vec::new();
    let mut cursor = offset as i64;
    let mut exhausted = false;
    'batches: while lines.len() < limit {
        let batch = state.store().events_after(run_id, cursor, BATCH).await?;
        for e in &batch {
            cursor = e.seq;
            if e.step_id.as_deref() == Some(step_id) {
                lines.push((
                    format!("{} {} {}", e.at, e.level, clean(e.message.as_bytes())),
                    e.seq as u64,
                ));
                if lines.len() >= limit {
                    break 'batches;
                }
            }
        }
        if (batch.len() as i64) < BATCH {
            exhausted = true;
            break;
        }
    }
    let next_offset = (cursor.max(0) as u64).max(offset);
    Ok(Page {
        source: "events",
        lines,
        next_offset,
        finished: ended && exhausted,
        status: step.status,
    })
}

/// Read lines from the concatenation of `files` (with the lengths they had when listed) from
/// byte `offset`. Returns the lines, each with the offset after it, and the offset to continue
/// from. A trailing partial line is held back unless its launch is over (a later file exists, or
/// the step `ended`) or it is longer than [`MAX_LINE`].
fn read_output(
    files: &[(PathBuf, u64)],
    offset: u64,
    limit: usize,
    ended: bool,
) -> std::io::Result<(Vec<(String, u64)>, u64)> {
    let mut lines = Vec::new();
    let mut pos = offset;
    let mut base = 0u64;
    let mut budget = READ_BUDGET;
    for (i, (path, len)) in files.iter().enumerate() {
        let end = base + len;
        if pos >= end {
            base = end;
            continue;
        }
        let start = pos - base;
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.take((len - start).min(budget)).read_to_end(&mut buf)?;
        budget -= buf.len() as u64;
        let buf_end = start + buf.len() as u64;
        let file_done = buf_end >= *len;
        let mut seg = 0;
        for (j, &b) in buf.iter().enumerate() {
            if b == b'\n' || b == b'\r' {
                let line = clean(&buf[seg..j]);
                seg = j + 1;
                pos = base + start + seg as u64;
                if !line.is_empty() {
                    lines.push((line, pos));
                    if lines.len() >= limit {
                        return Ok((lines, pos));
                    }
                }
            }
        }
        let rest = &buf[seg..];
        if !rest.is_empty() {
            let last = i + 1 == files.len();
            if !((file_done && (!last || ended)) || rest.len() >= MAX_LINE) {
                return Ok((lines, pos));
            }
            pos = base + buf_end;
            let line = clean(rest);
            if !line.is_empty() {
                lines.push((line, pos));
                if lines.len() >= limit {
                    return Ok((lines, pos));
                }
            }
        }
        if !file_done || buf.is_empty() {
            // Read budget spent (or the file shrank): continue on the next page.
            return Ok((lines, pos));
        }
        base = end;
    }
    Ok((lines, pos))
}

/// A line without ANSI escape sequences, control characters or trailing blanks.
fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \
                Some(']') => {
                    while let Some(n) = chars.next() {
                        if n == '\x07' {
                            break;
                        }
                        if n == '\x1b' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // Two-character sequences (ESC 7, ESC =, …).
                _ => {}
            },
            '\t' | '\n' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    let trimmed = out.trim_end();
    if trimmed.trim_start().is_empty() {
        String::new()
    } else {
        trimmed.to_owned()
    }
}

/// The weights files of the run's trainings: every step with `project` and `training_name`
/// inputs has its `projects/<project>/model/training/<name>/weights/` listed (each directory
/// once, under the first step naming it).
#[utoipa::path(get, path = "/api/v1/runs/{id}/checkpoints", operation_id = "get_run_checkpoints",
    params(("id" = String, Path, description = "run id or a unique prefix")),
    responses((status = 200, body = CheckpointList), (status = 404, body = Problem)))]
pub async fn run_checkpoints(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<CheckpointList>> {
    let run = state.store().run(&id).await?;
    let checkpoints = checkpoints_of(&state, &run.id).await?;
    Ok(Json(CheckpointList {
        run_id: run.id,
        checkpoints,
    }))
}

/// The checkpoints of run `run_id` (a full id).
pub(crate) async fn checkpoints_of(
    state: &AppState,
    run_id: &str,
) -> ApiResult<Vec<CheckpointView>> {
    let ws = state.workspace();
    let steps = state.store().steps(run_id).await?;
    let recorded = state.store().checkpoints(run_id).await?;
    // Each weights directory once, with the steps that name it in their inputs.
    let mut dirs: Vec<(PathBuf, Vec<&StepRecord>)> = Vec::new();
    for step in &steps {
        let Some(inputs) = &step.inputs else { continue };
        let (Some(project), Some(training)) = (
            inputs.get("project").and_then(|v| v.as_str()),
            inputs.get("training_name").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let Ok(dir) = ws.training_dir(project, training) else {
            continue;
        };
        let weights = dir.join("weights");
        match dirs.iter_mut().find(|(d, _)| *d == weights) {
            Some((_, named_by)) => named_by.push(step),
            None => dirs.push((weights, vec![step])),
        }
    }
    let mut out = Vec::new();
    for (weights, named_by) in dirs {
        // The training step: the one that reported checkpoints there, else the one whose
        // outputs name its best weights, else the first naming the directory.
        let step = named_by
            .iter()
            .find(|s| {
                recorded
                    .iter()
                    .any(|c| c.step_id == s.step_id && FsPath::new(&c.path).starts_with(&weights))
            })
            .or_else(|| {
                named_by.iter().find(|s| {
                    s.outputs
                        .as_ref()
                        .is_some_and(|o| o.get("best_weights").is_some())
                })
            })
            .unwrap_or(&named_by[0]);
        let Ok(entries) = std::fs::read_dir(&weights) else {
            continue;
        };
        let mut files: Vec<CheckpointView> = entries
            .flatten()
            .filter_map(|entry| {
                let meta = entry.metadata().ok().filter(|m| m.is_file())?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    return None;
                }
                let abs = entry.path();
                let rel = ws
                    .relative(&abs)
                    .unwrap_or_else(|| abs.clone())
                    .display()
                    .to_string();
                let record = recorded.iter().find(|c| {
                    let p = FsPath::new(&c.path);
                    p == abs || p == FsPath::new(&rel)
                });
                Some(CheckpointView {
                    step: step.step_id.clone(),
                    best: name == "best.pt" || record.is_some_and(|c| c.is_best),
                    epoch: record.and_then(|c| c.epoch),
                    path: rel,
                    size: meta.len(),
                    modified: meta.modified().ok().map(kiln_store::timestamp),
                    name,
                })
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(files);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_redraws_become_lines() {
        assert_eq!(clean(b"\x1b[K  1/2 10%"), "  1/2 10%");
        assert_eq!(clean(b"\x1b[1;32mok\x1b[0m  "), "ok");
        assert_eq!(clean(b"\x1b]0;title\x07x"), "x");
        assert_eq!(clean(b" \x1b[K "), "");
    }

    #[test]
    fn pages_split_on_cr_and_lf_and_hold_back_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("train.log");
        let b = dir.path().join("train-2.log");
        std::fs::write(&a, b"one\r\x1b[Ktwo\r\n\nthree").unwrap();
        std::fs::write(&b, b"four\nfi").unwrap();
        let files = vec![(a.clone(), 18), (b.clone(), 7)];
        let (lines, next) = read_output(&files, 0, 100, false).unwrap();
        let texts: Vec<_> = lines.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three", "four"]);
        assert_eq!(next, 23);
        assert_eq!(lines[0].1, 4);
        // Paging resumes exactly after a line.
        let (lines, next2) = read_output(&files, 0, 2, false).unwrap();
        assert_eq!(lines.len(), 2);
        let (rest, _) = read_output(&files, next2, 100, false).unwrap();
        assert_eq!(rest[0].0, "three");
        // Once the step ended, the partial line is served.
        let (lines, end) = read_output(&files, next, 100, true).unwrap();
        assert_eq!(lines[0].0, "fi");
        assert_eq!(end, 25);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_200_123);
        assert_eq!(kiln_store::timestamp(t), "2024-03-01T00:00:00.123Z");
    }
}
