//! Workflows and plugins the server offers.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    /// The workflow's name (`POST /runs` starts it by this name); for a file that never was
    /// valid, its file name.
    pub name: String,
    pub description: Option<String>,
    pub file: String,
    /// Param specs: type, required, default, enum, description.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub steps: Vec<String>,
    /// Whether `POST /runs` can start it (the file as it is now, or its last valid version).
    pub startable: bool,
    /// Why the file as it is now is not used (its diagnostics, file:line:col); its last valid
    /// version, if any, is what `POST /runs` starts meanwhile.
    pub problem: Option<String>,
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
    /// The plugin's name (`uses:`); for a file that never loaded, its file name.
    pub name: String,
    pub version: String,
    pub digest: String,
    /// The `kiln:plugin` version it was built against.
    pub interface: String,
    pub file: String,
    pub actions: Vec<ActionView>,
    /// Programs the operator granted (configs/plugins.yaml).
    pub grants: Vec<String>,
    /// Programs the plugin says it launches.
    pub launches: Vec<String>,
    /// Whether new runs can use it.
    pub loaded: bool,
    /// Why the file as it is now is not used (the version described, if loaded, stays in use);
    /// also the grants file's errors.
    pub problem: Option<String>,
}

/// The workflow files of the workflows directory, sorted by name: those `POST /runs` can start,
/// and those that are invalid, with their diagnostics.
#[utoipa::path(get, path = "/workflows", operation_id = "list_workflows", responses((status = 200, body = Vec<WorkflowView>)))]
pub async fn workflows(State(state): State<AppState>) -> ApiResult<Json<Vec<WorkflowView>>> {
    let catalog = state.service().workflows();
    let entries = catalog
        .entries()
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", catalog.dir().display())))?;
    let mut out: Vec<WorkflowView> = entries
        .iter()
        .map(|entry| match &entry.workflow {
            Some(wf) => WorkflowView {
                params: serde_json::to_value(&wf.params).unwrap_or_default(),
                steps: wf.steps.iter().map(|s| s.id.clone()).collect(),
                file: entry.path.display().to_string(),
                description: wf.description.clone(),
                name: wf.name.clone(),
                startable: true,
                problem: entry.problem.clone(),
            },
            None => WorkflowView {
                name: entry
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                description: None,
                file: entry.path.display().to_string(),
                params: serde_json::json!({}),
                steps: Vec::new(),
                startable: false,
                problem: entry.problem.clone(),
            },
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

/// Installed plugins with their actions and grants, and plugin files that do not load.
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
                interface: p.interface,
                file: p.file.display().to_string(),
                grants: p.programs,
                launches: p.launches,
                loaded: p.loaded,
                problem: p.problem,
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

/// A release ZIP of a project (`projects/<project>/releases/<file>`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseView {
    /// The `release` of POST /training/start.
    pub file: String,
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
    /// Last modification, RFC 3339 UTC.
    pub modified: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    /// The `project_id` of the training endpoints.
    pub name: String,
    /// Sorted by file name (at most 1,000).
    pub releases: Vec<ReleaseView>,
    /// The project has more release ZIPs than listed.
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    /// The folders of `projects/` with plain names, sorted (at most 1,000).
    pub projects: Vec<ProjectView>,
    /// There are more projects than listed.
    pub truncated: bool,
}

/// The projects of the workspace with their release ZIPs (what a training can start from).
#[utoipa::path(get, path = "/projects", operation_id = "list_projects",
    responses((status = 200, body = ProjectList), (status = 500, body = crate::problem::Problem)))]
pub async fn projects(State(state): State<AppState>) -> ApiResult<Json<ProjectList>> {
    let service = state.service().clone();
    let (projects, truncated) = tokio::task::spawn_blocking(move || service.projects())
        .await
        .map_err(|e| ApiError::internal(format!("listing projects: {e}")))??;
    let projects = projects
        .into_iter()
        .map(|p| ProjectView {
            releases: p
                .releases
                .into_iter()
                .map(|r| ReleaseView {
                    path: format!("projects/{}/releases/{}", p.name, r.file),
                    file: r.file,
                    size: r.size,
                    modified: r.modified,
                })
                .collect(),
            name: p.name,
            truncated: p.truncated,
        })
        .collect();
    Ok(Json(ProjectList {
        projects,
        truncated,
    }))
}
