//! Workflows and plugins the server offers.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::{ApiError, ApiResult};
use crate::state::AppState;

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

/// Workflows that `POST /runs` can start (files of the workflows directory that parse), sorted
/// by name.
#[utoipa::path(get, path = "/workflows", operation_id = "list_workflows", responses((status = 200, body = Vec<WorkflowView>)))]
pub async fn workflows(State(state): State<AppState>) -> ApiResult<Json<Vec<WorkflowView>>> {
    let catalog = state.service().workflows();
    let entries = catalog
        .entries()
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", catalog.dir().display())))?;
    let mut out: Vec<WorkflowView> = entries
        .iter()
        .filter_map(|entry| {
            let wf = entry.workflow.as_ref().ok()?;
            Some(WorkflowView {
                params: serde_json::to_value(&wf.params).unwrap_or_default(),
                steps: wf.steps.iter().map(|s| s.id.clone()).collect(),
                file: entry.path.display().to_string(),
                description: wf.description.clone(),
                name: wf.name.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

/// Installed plugins with their actions and grants.
#[utoipa::path(get, path = "/plugins", operation_id = "list_plugins", responses((status = 200, body = Vec<PluginView>)))]
pub async fn plugins(State(state): State<AppState>) -> ApiResult<Json<Vec<PluginView>>> {
    Ok(Json(
        state
            .service()
            .plugins()
            .into_iter()
            .map(|p| PluginView {
                name: p.name,
                version: p.version,
                digest: p.digest,
                grants: p.programs,
                actions: p
                    .actions
                    .into_iter()
                    .map(|a| ActionView {
                        name: a.name,
                        description: a.description,
                        inputs: a.inputs,
                        outputs: a.outputs,
                    })
                    .collect(),
            })
            .collect(),
    ))
}
