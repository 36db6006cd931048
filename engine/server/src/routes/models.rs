//! The model registry.
use axum::extract::{Path, State};
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
pub async fn list(State(_s): State<AppState>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn show(State(_s): State<AppState>, Path(_id): Path<String>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn publish(State(_s): State<AppState>, Path(_id): Path<String>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn promote(State(_s): State<AppState>, Path(_id): Path<String>) -> ApiResult<()> {
    Err(todo_())
}
pub async fn export_best(State(_s): State<AppState>, Path(_id): Path<String>) -> ApiResult<()> {
    Err(todo_())
}
