//! Workflows and plugins the server offers.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use kiln_workflow::Workflow;

use crate::problem::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    paths(workflows, plugins),
    components(schemas(WorkflowView, PluginView, ActionView))
)]
pub struct Api;

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    pub name: String,
    pub description: Option<String>,
    pub file: String,
    /// Param specs: type, required, default, enum, description.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub steps: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActionView {
    pub name: String,
    pub description: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub actions: Vec<ActionView>,
    /// Programs the operator granted (configs/plugins.yaml).
    pub grants: Vec<String>,
}

/// The workflows of the server's workflows directory (files that do not parse are skipped),
/// with their paths, sorted by name.
pub(crate) fn workflows_in_dir(state: &AppState) -> ApiResult<Vec<(std::path::PathBuf, Workflow)>> {
    let dir = &state.config().workflows_dir;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", dir.display())))?;
    let mut out: Vec<(std::path::PathBuf, Workflow)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter_map(|p| Workflow::load(&p).ok().map(|wf| (p, wf)))
        .collect();
    out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    Ok(out)
}

/// Workflows that `POST /runs` can start.
#[utoipa::path(get, path = "/api/v1/workflows", operation_id = "list_workflows", responses((status = 200, body = Vec<WorkflowView>)))]
pub async fn workflows(State(state): State<AppState>) -> ApiResult<Json<Vec<WorkflowView>>> {
    let out = workflows_in_dir(&state)?
        .into_iter()
        .map(|(path, wf)| WorkflowView {
            params: serde_json::to_value(&wf.params).unwrap_or_default(),
            steps: wf.steps.iter().map(|s| s.id.clone()).collect(),
            file: path.display().to_string(),
            description: wf.description,
            name: wf.name,
        })
        .collect();
    Ok(Json(out))
}

/// Installed plugins with their actions and grants.
#[utoipa::path(get, path = "/api/v1/plugins", operation_id = "list_plugins", responses((status = 200, body = Vec<PluginView>)))]
pub async fn plugins(State(state): State<AppState>) -> ApiResult<Json<Vec<PluginView>>> {
    Ok(Json(
        state
            .runner()
            .plugins()
            .plugins()
            .map(|p| PluginView {
                name: p.info.name.clone(),
                version: p.info.version.clone(),
                digest: p.info.digest.clone(),
                grants: p.info.programs.clone(),
                actions: p
                    .info
                    .actions
                    .iter()
                    .map(|a| ActionView {
                        name: a.name.clone(),
                        description: a.description.clone(),
                        inputs: a.inputs.iter().map(|i| i.name.clone()).collect(),
                        outputs: a.outputs.clone(),
                    })
                    .collect(),
            })
            .collect(),
    ))
}
