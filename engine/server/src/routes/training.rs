//! The training façade.
use axum::extract::State;
use utoipa::OpenApi;

use crate::problem::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi()]
pub struct Api;

fn todo_() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "being written",
    )
}
pub async fn default_config(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn resolve_config(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn start(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn stop(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn logs(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn checkpoints(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn check_extracted(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn extract_release(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
