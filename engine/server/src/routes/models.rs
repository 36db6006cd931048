//! The model registry: list, show with lineage, publish, promote; and re-exporting a run's best
//! weights.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use kiln_store::{ModelRecord, STAGES};

use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// A registered model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    pub name: String,
    pub project: String,
    /// Counts up per (project, name).
    pub version: i64,
    pub task: Option<String>,
    /// The framework that trained it (ultralytics, mmdetection); null for older models.
    pub framework: Option<String>,
    pub format: Option<String>,
    /// Weights, relative to the workspace.
    pub file_path: String,
    pub config_path: Option<String>,
    pub input_size: Option<i64>,
    pub class_names: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    /// The dataset release it was trained on.
    pub dataset: Option<String>,
    pub training_run_id: Option<String>,
    pub training_step_id: Option<String>,
    pub base_model: Option<String>,
    pub is_published: bool,
    pub published_at: Option<String>,
    /// development | testing | production
    pub stage: String,
    /// When the model was last promoted to production.
    pub production_at: Option<String>,
    pub created_by: String,
    pub created_on: String,
}

impl From<ModelRecord> for ModelView {
    fn from(m: ModelRecord) -> Self {
        Self {
            id: m.id,
            name: m.name,
            project: m.project,
            version: m.version,
            task: m.task,
            framework: m.framework,
            format: m.format,
            file_path: m.file_path,
            config_path: m.config_path,
            input_size: m.input_size,
            class_names: m.class_names,
            metrics: m.metrics,
            dataset: m.dataset,
            training_run_id: m.training_run_id,
            training_step_id: m.training_step_id,
            base_model: m.base_model,
            is_published: m.is_published,
            published_at: m.published_at,
            stage: m.stage,
            production_at: m.production_at,
            created_by: m.created_by,
            created_on: m.created_on,
        }
    }
}

/// A short reference to a registered model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRef {
    pub id: String,
    pub project: String,
    pub name: String,
    pub version: i64,
    pub stage: String,
    pub is_published: bool,
    pub created_on: String,
}

impl From<&ModelRecord> for ModelRef {
    fn from(m: &ModelRecord) -> Self {
        Self {
            id: m.id.clone(),
            project: m.project.clone(),
            name: m.name.clone(),
            version: m.version,
            stage: m.stage.clone(),
            is_published: m.is_published,
            created_on: m.created_on.clone(),
        }
    }
}

/// The run that trained a model.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingRunView {
    pub id: String,
    /// queued | running | succeeded | failed | cancelled
    pub status: String,
    pub workflow_name: String,
    #[schema(value_type = Object)]
    pub params: Value,
    pub created_by: String,
    pub finished_at: Option<String>,
}

/// Where a model came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lineage {
    /// Null when the model was not trained by a recorded run, or the run was deleted.
    pub training_run: Option<TrainingRunView>,
    pub training_step_id: Option<String>,
    /// The weights training started from, as given to the training.
    pub base_model: Option<String>,
    /// The registered model those weights belong to, when they are one.
    pub base_model_record: Option<ModelRef>,
    /// The dataset release.
    pub dataset: Option<String>,
}

/// A model with its lineage and the other versions of its (project, name).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDetail {
    pub model: ModelView,
    pub lineage: Lineage,
    /// Other versions, newest first.
    pub versions: Vec<ModelRef>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only models of this project.
    pub project: Option<String>,
    /// Only published (`true`) or unpublished (`false`) models.
    pub published: Option<bool>,
}

/// `POST /models/{id}/promote` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    #[schema(value_type = Stage)]
    pub stage: String,
}

/// A model's stage (`kiln_store::STAGES`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Stage {
    Development,
    Testing,
    Production,
}

/// What re-exporting a run's best weights produced.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportView {
    pub run_id: String,
    /// The run's `builtin/export-best` step, or `export` when the workflow has none.
    pub step: String,
    /// The inputs the export ran with.
    #[schema(value_type = Object)]
    pub inputs: Value,
    /// weights, weights_sha256, config_path, report_path, artifacts_dir (relative to the
    /// workspace).
    #[schema(value_type = Object)]
    pub outputs: Value,
}

async fn model(state: &AppState, id: &str) -> ApiResult<ModelRecord> {
    state.store().model(id).await.map_err(|e| match e {
        kiln_store::Error::ModelNotFound(_) => ApiError::not_found(
            "model_not_found",
            format!(
                "no model `{id}`; GET /api/v1/models lists the registered models and their ids"
            ),
        ),
        other => other.into(),
    })
}

/// Registered models, newest first.
#[utoipa::path(get, path = "/models", operation_id = "list_models", params(ListQuery),
    responses((status = 200, body = Vec<ModelView>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<ModelView>>> {
    let models = state
        .store()
        .find_models(q.project.as_deref(), q.published)
        .await?;
    Ok(Json(models.into_iter().map(ModelView::from).collect()))
}

/// A model with its lineage (training run, base model, dataset) and its other versions.
#[utoipa::path(get, path = "/models/{id}", operation_id = "get_model", params(("id" = String, Path, description = "model id")),
    responses((status = 200, body = ModelDetail), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ModelDetail>> {
    let m = model(&state, &id).await?;
    let training_run = match &m.training_run_id {
        Some(run_id) => match state.store().run(run_id).await {
            Ok(r) => Some(TrainingRunView {
                id: r.id,
                status: r.status.to_string(),
                workflow_name: r.workflow_name,
                params: r.params,
                created_by: r.created_by,
                finished_at: r.finished_at,
            }),
            Err(kiln_store::Error::RunNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let all = state.store().list_models(None).await?;
    let base_model_record = m.base_model.as_deref().and_then(|base| {
        let root = state.workspace().root();
        all.iter()
            .find(|o| {
                o.id != m.id
                    && (o.id == base
                        || o.file_path == base
                        || root.join(&o.file_path) == std::path::Path::new(base))
            })
            .map(ModelRef::from)
    });
    let mut versions: Vec<ModelRef> = all
        .iter()
        .filter(|o| o.project == m.project && o.name == m.name && o.id != m.id)
        .map(ModelRef::from)
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    Ok(Json(ModelDetail {
        lineage: Lineage {
            training_run,
            training_step_id: m.training_step_id.clone(),
            base_model: m.base_model.clone(),
            base_model_record,
            dataset: m.dataset.clone(),
        },
        model: m.into(),
        versions,
    }))
}

/// Publish a model (idempotent: the first publication time is kept).
#[utoipa::path(post, path = "/models/{id}/publish", operation_id = "publish_model", params(("id" = String, Path, description = "model id")),
    responses((status = 200, body = ModelView), (status = 404, body = Problem)))]
pub async fn publish(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ModelView>> {
    model(&state, &id).await?;
    let m = state.store().publish_model(&id).await?;
    tracing::info!(target: "operations.training", model_id = %m.id, name = %m.name, version = m.version, "model published");
    Ok(Json(m.into()))
}

/// Move a model to a stage; promotion to `production` records the date.
#[utoipa::path(post, path = "/models/{id}/promote", operation_id = "promote_model", params(("id" = String, Path, description = "model id")),
    request_body = Promote,
    responses((status = 200, body = ModelView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn promote(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Promote>,
) -> ApiResult<Json<ModelView>> {
    if !STAGES.contains(&body.stage.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stage",
            format!(
                "unknown stage `{}`; use one of: {}",
                body.stage,
                STAGES.join(", ")
            ),
        ));
    }
    model(&state, &id).await?;
    let m = state.store().promote_model(&id, &body.stage).await?;
    tracing::info!(target: "operations.training", model_id = %m.id, stage = %m.stage, "model promoted");
    Ok(Json(m.into()))
}

/// Run the export of a finished run's best weights again (`builtin/export-best`): with the
/// inputs its export step recorded, else with the training step's `best_weights` output and its
/// `project` / `training_name` inputs.
#[utoipa::path(post, path = "/runs/{id}/export-best", operation_id = "export_run_best",
    params(("id" = String, Path, description = "run id or a unique prefix")),
    responses((status = 200, body = ExportView), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn export_best(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ExportView>> {
    let run = state.store().run(&id).await?;
    let exported = state
        .service()
        .export_best(&run, &caller.name)
        .await
        .map_err(|e| match e {
            kiln_runner::Error::Input(message) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "export_failed",
                format!(
                    "cannot export the best weights of run {}: {message}",
                    run.id
                ),
            ),
            other => other.into(),
        })?;
    let (step_id, inputs, outputs) = (exported.step, exported.inputs, exported.outputs);
    tracing::info!(target: "operations.training", run_id = %run.id, by = %caller.name, "best weights exported again");
    Ok(Json(ExportView {
        run_id: run.id,
        step: step_id,
        inputs,
        outputs,
    }))
}
