//! Logs (paged and live over SSE) and checkpoints of runs.
use axum::extract::{Path, State};
use utoipa::OpenApi;

use crate::problem::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi()]
pub struct Api;

pub async fn run_logs(State(_s): State<AppState>, Path(_id): Path<String>) -> ApiResult<()> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "being written",
    ))
}
pub async fn run_checkpoints(State(_s): State<AppState>, Path(_id): Path<String>) -> ApiResult<()> {
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "being written",
    ))
}
