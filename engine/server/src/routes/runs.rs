//! Runs: trigger, list, show, stats, cancel, delete.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use kiln_runner::service::StoredDefinition;
use kiln_store::{RunRecord, RunStatus, StepRecord};

use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath, ApiQuery, MAX_OFFSET, whole_number};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// `POST /runs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// Name of a workflow in the server's workflows directory (see `GET /workflows`).
    pub workflow: String,
    /// Params of the workflow.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A step of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub step_id: String,
    pub uses: String,
    pub action: Option<String>,
    /// queued | running | succeeded | failed | cancelled | skipped
    pub status: String,
    pub attempt: i64,
    #[schema(value_type = Option<Object>)]
    pub outputs: Option<serde_json::Value>,
    /// Latest progress report: percent, epoch, epochs, metrics, message.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    pub error_message: Option<String>,
    /// failure | infrastructure
    pub failure_kind: Option<String>,
    /// Attempts retried so far after failures of the step itself, and after infrastructure
    /// failures (a lost machine or program).
    pub failure_retries: i64,
    pub infrastructure_retries: i64,
    /// When this attempt retries an earlier one: `failure` or `infrastructure`, and the earlier
    /// attempt's error.
    pub retry_reason: Option<String>,
    pub retry_error: Option<String>,
    pub plugin_name: Option<String>,
    pub plugin_version: Option<String>,
    pub plugin_digest: Option<String>,
    pub gpus: Option<String>,
    pub cached_from: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The steps this one waits for (its `needs` and the steps whose outputs it uses), from
    /// the workflow the run started with: the edges of the run's DAG.
    pub needs: Vec<String>,
}

impl From<StepRecord> for StepView {
    fn from(s: StepRecord) -> Self {
        Self {
            step_id: s.step_id,
            uses: s.uses,
            action: s.action,
            status: s.status.to_string(),
            attempt: s.attempt,
            outputs: s.outputs,
            progress: s.progress,
            error_message: s.error_message,
            failure_kind: s.failure_kind,
            failure_retries: s.failure_retries,
            infrastructure_retries: s.infrastructure_retries,
            retry_reason: s.retry_reason,
            retry_error: s.retry_error,
            plugin_name: s.plugin_name,
            plugin_version: s.plugin_version,
            plugin_digest: s.plugin_digest,
            gpus: s.gpus,
            cached_from: s.cached_from,
            started_at: s.started_at,
            finished_at: s.finished_at,
            duration_ms: s.duration_ms,
            needs: Vec::new(),
        }
    }
}

/// A run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub workflow_name: String,
    /// queued | running | succeeded | failed | cancelled
    pub status: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub error_message: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<serde_json::Value>,
    pub created_by: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The engine executing the run (holding its lease); none while it waits for one, and
    /// once it has ended.
    pub engine: Option<String>,
    /// Present on `GET /runs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepView>>,
}

impl RunView {
    /// The run; with `steps`, also its steps, their dependencies from `definition` (the
    /// run's stored workflow, [`kiln_runner::RunService::definition`]; none where it no
    /// longer parses, written by another version).
    pub fn new(r: RunRecord, steps: Option<(Vec<StepRecord>, Option<&StoredDefinition>)>) -> Self {
        Self {
            id: r.id,
            workflow_name: r.workflow_name,
            status: r.status.to_string(),
            params: r.params,
            error_message: r.error_message,
            metrics: r.metrics,
            created_by: r.created_by,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms,
            engine: r.engine,
            steps: steps.map(|(steps, definition)| {
                steps
                    .into_iter()
                    .map(|step| {
                        let needs = definition
                            .and_then(|d| d.dependencies.get(&step.step_id))
                            .cloned()
                            .unwrap_or_default();
                        StepView {
                            needs,
                            ..StepView::from(step)
                        }
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    /// Pass as `offset` for the next page; absent on the last page.
    pub next_offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunStats {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
    /// Succeeded / finished runs; null when none has finished.
    pub success_rate: Option<f64>,
}

/// Largest page of `GET /runs`.
const MAX_PAGE: u64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs with this status.
    #[param(inline, value_type = Option<RunStatusParam>)]
    pub status: Option<String>,
    /// Page size (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// Runs to skip: 0 (the default) or the `next_offset` of the previous page.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    pub offset: Option<String>,
}

/// A run status.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum RunStatusParam {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Also delete what the run owns on disk: its logs and state, the training folders it owns
    /// (refused while a registered model references a file in one) and the extracted datasets
    /// no other run used.
    #[serde(default)]
    pub purge_outputs: bool,
}

/// Trigger a run.
#[utoipa::path(post, path = "/runs", operation_id = "create_run", request_body = CreateRun,
    responses((status = 201, body = RunView), (status = 409, description = "a training the run names belongs to another run", body = Problem), (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateRun>,
) -> ApiResult<impl IntoResponse> {
    let run = state
        .manager()
        .submit(&body.workflow, body.params, &caller.name)
        .await?;
    Ok((StatusCode::CREATED, Json(RunView::new(run, None))))
}

/// List runs, newest first.
#[utoipa::path(get, path = "/runs", operation_id = "list_runs", params(ListQuery), responses((status = 200, body = RunPage)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<RunPage>> {
    // Exactly as documented (lowercase), unlike the CLI's forgiving parse.
    let status = q
        .status
        .as_deref()
        .map(|raw| {
            RunStatus::ALL
                .iter()
                .copied()
                .find(|s| s.as_str() == raw)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_status",
                        format!(
                            "unknown status `{raw}`; use one of: {}",
                            RunStatus::ALL
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })
        })
        .transpose()?;
    let limit = match &q.limit {
        Some(raw) => whole_number("limit", raw, 1, MAX_PAGE, "invalid_limit")? as i64,
        None => 50,
    };
    let offset = match &q.offset {
        Some(raw) => whole_number("offset", raw, 0, MAX_OFFSET, "invalid_offset")? as i64,
        None => 0,
    };
    let runs = state.store().page_runs(status, limit + 1, offset).await?;
    let more = runs.len() as i64 > limit;
    Ok(Json(RunPage {
        // Past the largest offset there is nothing more to ask for.
        next_offset: more.then(|| offset.checked_add(limit)).flatten(),
        runs: runs
            .into_iter()
            .take(limit as usize)
            .map(|r| RunView::new(r, None))
            .collect(),
    }))
}

/// Longest `GET /runs/{id}?wait=` in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// Seconds to wait for the run to end before answering (long poll): the answer comes as
    /// soon as the run is succeeded, failed or cancelled, or when the time is up, with the run
    /// as it then is. 0 (the default) answers at once.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 60)]
    pub wait: Option<String>,
}

/// A run with its steps, progress and metrics; with `wait`, once it has ended (or the wait is
/// up).
#[utoipa::path(get, path = "/runs/{id}", operation_id = "get_run", params(("id" = String, Path, description = "run id or a unique prefix"), ShowQuery),
    responses((status = 200, body = RunView), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ShowQuery>,
) -> ApiResult<Json<RunView>> {
    let wait = match &q.wait {
        Some(raw) => whole_number("wait", raw, 0, MAX_WAIT_SECS, "invalid_wait")?,
        None => 0,
    };
    let run = if wait == 0 {
        state.store().run(&id).await?
    } else {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
        state
            .manager()
            .wait_ended(&id, deadline, state.shutdown())
            .await?
    };
    let steps = state.store().steps(&run.id).await?;
    let definition = state.service().definition(&run).ok();
    Ok(Json(RunView::new(
        run,
        Some((steps, definition.as_deref())),
    )))
}

/// Counts by status and the success rate.
#[utoipa::path(get, path = "/runs/stats", operation_id = "run_stats", responses((status = 200, body = RunStats)))]
pub async fn stats(State(state): State<AppState>) -> ApiResult<Json<RunStats>> {
    let s = state.store().run_stats().await?;
    Ok(Json(RunStats {
        total: s.total,
        by_status: s
            .by_status
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        success_rate: s.success_rate,
    }))
}

/// Cancel a run: its programs get SIGTERM, then SIGKILL after the grace period.
#[utoipa::path(post, path = "/runs/{id}/cancel", operation_id = "cancel_run", params(("id" = String, Path)),
    responses((status = 202, body = RunView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let run = state.manager().cancel(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(RunView::new(run, None))))
}

/// Run a failed or cancelled run again from its unfinished steps, reusing the outputs of the
/// steps that succeeded.
#[utoipa::path(post, path = "/runs/{id}/retry", operation_id = "retry_run", params(("id" = String, Path)),
    responses((status = 202, body = RunView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn retry(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    state.manager().accepting_or_refuse()?;
    let execution = state.service().retry(&id, true).await?;
    let run = execution.run.clone();
    // Not leased: queued for an engine that offers the labels its steps ask for.
    if execution.is_leased() {
        state.manager().start(execution);
    }
    Ok((StatusCode::ACCEPTED, Json(RunView::new(run, None))))
}

/// Delete a run's record, cancelling it first if it is active. With `purge_outputs=true` the
/// files the run owns go too: its run folder, the training folders it owns and the datasets no
/// other run used; a registered model referencing a file in one of its training folders refuses
/// the purge (409) and nothing is deleted.
#[utoipa::path(delete, path = "/runs/{id}", operation_id = "delete_run", params(("id" = String, Path), DeleteQuery),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let run = state.store().run(&id).await?;
    if !run.status.is_terminal() {
        state.manager().cancel(&run.id).await?;
        let stopped = state
            .manager()
            .wait_stopped(&run.id, std::time::Duration::from_secs(120))
            .await;
        let ended = state.store().run(&run.id).await?.status.is_terminal();
        if !stopped || !ended {
            return Err(ApiError::conflict(
                "run_still_active",
                format!(
                    "run {} is still being stopped by its engine; retry the delete shortly",
                    run.id
                ),
            ));
        }
    }
    let report = state.service().delete(&run.id, q.purge_outputs).await?;
    if let Some(report) = report {
        tracing::info!(target: "operations.training", run_id = %run.id, deleted = ?report.deleted, kept = ?report.kept, "run outputs purged");
    }
    tracing::info!(target: "operations.training", run_id = %run.id, purge = q.purge_outputs, "run deleted");
    Ok(StatusCode::NO_CONTENT)
}
