//! The training façade: one call per thing a training UI does (base config, config preview,
//! start, stop, logs, checkpoints, dataset extraction), built on workflows, the plugin host and
//! the workspace layout.
//!
//! A training is named by `(project_id, training_name)`; its runs are the runs whose params
//! carry `project` and `training_name`. Every path a request names is checked to be a plain
//! name (no `/`, `..` or hidden files) before it touches the file system.
//!
//! The handlers are here; `dto.rs` holds the request and response types, `names.rs` the checks
//! of the names and release paths.

mod dto;
mod names;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{Map, Value};

use kiln_runner::service::{ConfigRequest, FRAMEWORK_WORKFLOWS};

use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, offset};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::state::AppState;

use dto::{
    CheckExtractedQuery, CheckpointFile, Checkpoints, ConfigOption, DefaultConfig,
    DefaultConfigQuery, ExtractRelease, ExtractionState, Framework, FrameworkList, LogsQuery,
    ResolveConfig, ResolvedConfig, StartTraining, StopTraining, TrainingLogs, TrainingQuery,
    TrainingRun,
};
use names::{
    base_config_rel, parse_zip_path, plain_name, relative_paths, release_file,
    release_of_dataset_path, task_folder,
};

/// Most log lines one `GET /training/logs` returns.
const TRAINING_LOG_LINES: usize = 1000;

/// The frameworks trainings can be started with: each one's workflow, its tasks, its plugin's
/// version, and what (if anything) keeps a training from starting.
#[utoipa::path(get, path = "/training/frameworks", operation_id = "list_training_frameworks",
    responses((status = 200, body = FrameworkList)))]
pub async fn frameworks(State(state): State<AppState>) -> Json<FrameworkList> {
    let frameworks = state
        .service()
        .frameworks()
        .into_iter()
        .map(|f| Framework {
            startable: f.problem.is_none(),
            name: f.name,
            workflow: f.workflow,
            tasks: f.tasks,
            plugin_version: f.plugin_version,
            problem: f.problem,
        })
        .collect();
    Json(FrameworkList { frameworks })
}

/// A framework's base config for a task (`configs/<framework>/<task>/default.yaml`, or
/// `default.py` for MMDetection).
#[utoipa::path(get, path = "/training/config/default", operation_id = "get_training_default_config", params(DefaultConfigQuery),
    responses((status = 200, body = DefaultConfig), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn default_config(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<DefaultConfigQuery>,
) -> ApiResult<Json<DefaultConfig>> {
    plain_name("framework", &q.framework, StatusCode::BAD_REQUEST)?;
    plain_name("task", &q.task, StatusCode::BAD_REQUEST)?;
    let (file, yaml, config) = state
        .service()
        .default_config(&q.framework, task_folder(&q.task))?;
    Ok(Json(DefaultConfig {
        path: state.workspace().display(&file),
        framework: q.framework,
        task: q.task,
        format: if config.is_some() { "yaml" } else { "python" }.into(),
        yaml,
        config,
    }))
}

/// Merge overrides onto a base config and preview the exact command line, without starting
/// anything. In user mode, overrides only developer mode allows are dropped and listed in
/// `rejected`; unknown or mistyped keys are a 422.
#[utoipa::path(post, path = "/training/config/resolve", operation_id = "resolve_training_config", request_body = ResolveConfig,
    responses((status = 200, body = ResolvedConfig), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn resolve_config(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ResolveConfig>,
) -> ApiResult<Json<ResolvedConfig>> {
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    plain_name("framework", &body.framework, invalid)?;
    plain_name("task", &body.task, invalid)?;
    if let Some(name) = &body.training_name {
        plain_name("training_name", name, invalid)?;
    }
    if let Some(project) = &body.project_id {
        plain_name("project_id", project, invalid)?;
    }
    let training_name_problem = match (&body.project_id, &body.training_name) {
        (Some(project), Some(name)) => state.service().training_name_problem(project, name).await?,
        _ => None,
    };
    let preview = state
        .service()
        .preview_config(&ConfigRequest {
            framework: body.framework.clone(),
            task: task_folder(&body.task).to_owned(),
            mode: body.mode.as_str().to_owned(),
            overrides: body.overrides,
            data: body.data,
            training_name: body.training_name,
            base_config: body
                .base_config
                .as_deref()
                .map(|b| base_config_rel(&body.framework, b)),
        })
        .await
        .map_err(|e| match e {
            kiln_runner::Error::Input(message) => ApiError::new(invalid, "invalid_config", message),
            other => other.into(),
        })?;
    let rejected: Vec<dto::RejectedKey> =
        plugin_list(&body.framework, "rejected", preview.rejected)?;
    let options: Vec<ConfigOption> = plugin_list(&body.framework, "options", preview.options)?;
    // Workspace paths as the workspace names them (the command line, the config's paths).
    let root = state.workspace().root().to_owned();
    let relative = |text: String| {
        let mut v = Value::String(text);
        relative_paths(&mut v, &root);
        v.as_str().unwrap_or_default().to_owned()
    };
    let mut config = preview.config;
    relative_paths(&mut config, &root);
    Ok(Json(ResolvedConfig {
        resolved_yaml: relative(preview.resolved_yaml),
        format: preview.format,
        cli_preview: relative(preview.cli_preview),
        config,
        rejected,
        options,
        training_name_problem,
    }))
}

/// A list output of a framework plugin's resolve-config (none when it gave none).
fn plugin_list<T: serde::de::DeserializeOwned>(
    framework: &str,
    output: &str,
    value: Value,
) -> ApiResult<Vec<T>> {
    match value {
        Value::Null => Ok(Vec::new()),
        v => serde_json::from_value(v).map_err(|e| {
            ApiError::internal(format!(
                "plugin `{framework}` returned a malformed `{output}`: {e}"
            ))
        }),
    }
}

/// Start a training: runs the framework's standard workflow (`ultralytics-detect` for
/// `ultralytics`, `mmdetection-detect` for `mmdetection`: extract the release, resolve the config,
/// train, export, register). A training name belongs to one run: a second start is a 409 naming it.
#[utoipa::path(post, path = "/training/start", operation_id = "start_training", request_body = StartTraining,
    responses((status = 201, body = TrainingRun), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<StartTraining>,
) -> ApiResult<impl IntoResponse> {
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    plain_name("project_id", &body.project_id, invalid)?;
    plain_name("training_name", &body.training_name, invalid)?;
    plain_name("task", &body.task, invalid)?;
    let Some((_, workflow)) = FRAMEWORK_WORKFLOWS
        .iter()
        .find(|(f, _)| *f == body.framework)
    else {
        return Err(ApiError::new(
            invalid,
            "unknown_framework",
            format!(
                "no training workflow for framework `{}`; frameworks: {}",
                body.framework,
                FRAMEWORK_WORKFLOWS
                    .iter()
                    .map(|(f, _)| *f)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let release = match (&body.release, &body.dataset_path) {
        (Some(release), None) => release_file(&body.project_id, release)?,
        (None, Some(path)) => release_of_dataset_path(state.service(), &body.project_id, path)?,
        _ => {
            return Err(ApiError::new(
                invalid,
                "invalid_body",
                "give the dataset as `release` (a release ZIP) or `dataset_path` (a release ZIP \
                 or an extracted dataset folder), exactly one of them",
            ));
        }
    };
    state
        .service()
        .release(&body.project_id, &release)
        .map_err(|e| ApiError::from(e).with_status(invalid))?;
    let mut params = Map::new();
    params.insert("project".into(), body.project_id.clone().into());
    params.insert("release".into(), release.into());
    params.insert("training_name".into(), body.training_name.clone().into());
    params.insert("task".into(), task_folder(&body.task).into());
    params.insert("mode".into(), body.mode.as_str().into());
    params.insert("overrides".into(), Value::Object(body.config));
    if let Some(base) = &body.base_config {
        params.insert(
            "base_config".into(),
            base_config_rel(&body.framework, base).into(),
        );
    }
    let run = state
        .manager()
        .submit(workflow, params, &caller.name)
        .await?;
    tracing::info!(target: "operations.training", run_id = %run.id, project = %body.project_id,
        training = %body.training_name, "training started");
    Ok((
        StatusCode::CREATED,
        Json(TrainingRun {
            run_id: run.id,
            status: run.status.to_string(),
        }),
    ))
}

/// Stop the active run of a training: its programs get SIGTERM, then SIGKILL after the grace
/// period.
#[utoipa::path(post, path = "/training/stop", operation_id = "stop_training", request_body = StopTraining,
    responses((status = 202, body = TrainingRun), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn stop(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<StopTraining>,
) -> ApiResult<impl IntoResponse> {
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    plain_name("project_id", &body.project_id, invalid)?;
    plain_name("training_name", &body.training_name, invalid)?;
    let run = state
        .service()
        .training_run(&body.project_id, &body.training_name)
        .await?
        .filter(|run| !run.status.is_terminal());
    let Some(run) = run else {
        return Err(ApiError::not_found(
            "no_active_training",
            format!(
                "training `{}` of project `{}` has no active run; nothing to stop",
                body.training_name, body.project_id
            ),
        ));
    };
    let run = state.manager().cancel(&run.id).await?;
    tracing::info!(target: "operations.training", run_id = %run.id, "training stop requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(TrainingRun {
            run_id: run.id,
            status: run.status.to_string(),
        }),
    ))
}

/// The training program's output of a training's run, page by page.
#[utoipa::path(get, path = "/training/logs", operation_id = "get_training_logs", params(LogsQuery),
    responses((status = 200, body = TrainingLogs), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn logs(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<TrainingLogs>> {
    plain_name("project_id", &q.project_id, StatusCode::BAD_REQUEST)?;
    plain_name("training_name", &q.training_name, StatusCode::BAD_REQUEST)?;
    let offset = match &q.offset {
        Some(raw) => offset("offset", raw, "invalid_offset")?,
        None => 0,
    };
    let service = state.service();
    let Some(run) = service
        .training_run(&q.project_id, &q.training_name)
        .await?
    else {
        return Err(ApiError::not_found(
            "training_not_found",
            format!(
                "training `{}` of project `{}` has no runs; start it with POST /training/start",
                q.training_name, q.project_id
            ),
        ));
    };
    let steps = state.store().steps(&run.id).await?;
    let train = steps
        .iter()
        .find(|s| s.action.as_deref() == Some("train"))
        .or_else(|| steps.iter().find(|s| s.step_id == "train"));
    let Some(train) = train else {
        return Ok(Json(TrainingLogs {
            run_id: run.id,
            lines: Vec::new(),
            next_offset: offset,
            finished: run.status.is_terminal(),
        }));
    };
    let page = service
        .log_page(&run.id, Some(&train.step_id), offset, TRAINING_LOG_LINES)
        .await?;
    Ok(Json(TrainingLogs {
        run_id: run.id,
        lines: page.lines.into_iter().map(|(line, _)| line).collect(),
        next_offset: page.next_offset,
        finished: page.finished,
    }))
}

/// Files of a training's `weights/` folder (`best.pt`, `last.pt`, periodic checkpoints).
#[utoipa::path(get, path = "/training/checkpoints", operation_id = "list_training_checkpoints", params(TrainingQuery),
    responses((status = 200, body = Checkpoints), (status = 400, body = Problem)))]
pub async fn checkpoints(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<TrainingQuery>,
) -> ApiResult<Json<Checkpoints>> {
    plain_name("project_id", &q.project_id, StatusCode::BAD_REQUEST)?;
    plain_name("training_name", &q.training_name, StatusCode::BAD_REQUEST)?;
    let weights = state
        .service()
        .weight_files(&q.project_id, &q.training_name)?;
    Ok(Json(Checkpoints {
        project_id: q.project_id,
        training_name: q.training_name,
        checkpoints: weights
            .files
            .into_iter()
            .map(|f| CheckpointFile {
                name: f.name,
                path: f.path,
                size: f.size,
                modified: f.modified,
                best: f.best,
            })
            .collect(),
    }))
}

/// Whether a release ZIP is already extracted (its dataset folder holds this very archive).
#[utoipa::path(get, path = "/training/check-extracted", operation_id = "check_release_extracted", params(CheckExtractedQuery),
    responses((status = 200, body = ExtractionState), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn check_extracted(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<CheckExtractedQuery>,
) -> ApiResult<Json<ExtractionState>> {
    let (project, file) = parse_zip_path(&q.zip_path)?;
    let (dataset, extracted) = state
        .service()
        .extraction_status(&project, &file)
        .await
        .map_err(|e| match e {
            kiln_runner::Error::Input(message) => {
                ApiError::bad_request("invalid_zip_path", message)
            }
            other => other.into(),
        })?;
    let ws = state.workspace();
    Ok(Json(ExtractionState {
        zip_path: q.zip_path,
        extracted: extracted.is_some(),
        dataset_dir: ws.display(&dataset),
        data_yaml: extracted.flatten().map(|p| ws.display(&p)),
    }))
}

/// Extract a release ZIP into `projects/<project>/training_data/<zip stem>/` (does nothing
/// when that very archive is already extracted). Returns the `builtin/extract-release` outputs:
/// layout (yolo or coco), dataset_dir, class_names, nc, splits, data_yaml (YOLO), data_root,
/// annotations, images and counts per split (COCO), slug, files, release_sha256, extracted.
#[utoipa::path(post, path = "/training/extract-release", operation_id = "extract_release", request_body = ExtractRelease,
    responses((status = 200, body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn extract_release(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<ExtractRelease>,
) -> ApiResult<Json<Value>> {
    // In a body, a malformed path is unprocessable content (422), like every body field.
    let (project, file) = parse_zip_path(&body.zip_path)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.detail))?;
    let outputs = state
        .service()
        .extract_release(&project, &file, &caller.name)
        .await
        .map_err(|e| match e {
            kiln_runner::Error::Input(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_release", message)
            }
            other => other.into(),
        })?;
    let mut outputs = outputs;
    relative_paths(&mut outputs, state.workspace().root());
    Ok(Json(outputs))
}
