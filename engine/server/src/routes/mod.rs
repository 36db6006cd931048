//! The route table. Every endpoint names the claim it needs right here, next to its path:
//! `on(get(handler), Claim::X)`. Handlers live in one module per resource.

mod catalog;
mod logs;
mod models;
mod runs;
mod training;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{self, Claim};
use crate::problem::ApiError;
use crate::state::AppState;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// `router` guarded by `claim`.
fn on(router: MethodRouter<AppState>, claim: Claim) -> MethodRouter<AppState> {
    router.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        auth::require(claim, req, next)
    }))
}

pub fn router(state: AppState) -> Router {
    use Claim::*;
    let api = Router::new()
        // Runs
        .route(
            "/runs",
            on(get(runs::list), ViewTrainingRuns).merge(on(post(runs::create), CreateTrainingRun)),
        )
        .route("/runs/stats", on(get(runs::stats), ViewTrainingRuns))
        .route(
            "/runs/{id}",
            on(get(runs::show), ViewTrainingRuns)
                .merge(on(delete(runs::remove), DeleteTrainingRun)),
        )
        .route(
            "/runs/{id}/cancel",
            on(post(runs::cancel), ScheduleTrainingRun),
        )
        .route(
            "/runs/{id}/retry",
            on(post(runs::retry), ScheduleTrainingRun),
        )
        .route("/runs/{id}/logs", on(get(logs::run_logs), ViewTrainingRuns))
        .route(
            "/runs/{id}/checkpoints",
            on(get(logs::run_checkpoints), ViewTrainingRuns),
        )
        .route(
            "/runs/{id}/export-best",
            on(post(models::export_best), PublishTrainingRunTrainedModel),
        )
        // Models
        .route("/models", on(get(models::list), ViewTrainingRuns))
        .route("/models/{id}", on(get(models::show), ViewTrainingRuns))
        .route(
            "/models/{id}/publish",
            on(post(models::publish), PublishTrainingRunTrainedModel),
        )
        .route(
            "/models/{id}/promote",
            on(post(models::promote), PublishTrainingRunTrainedModel),
        )
        // Training façade
        .route(
            "/training/config/default",
            on(get(training::default_config), ViewTrainingRuns),
        )
        .route(
            "/training/config/resolve",
            on(post(training::resolve_config), ViewTrainingRuns),
        )
        .route(
            "/training/start",
            on(post(training::start), CreateTrainingRun),
        )
        .route(
            "/training/stop",
            on(post(training::stop), ScheduleTrainingRun),
        )
        .route("/training/logs", on(get(training::logs), ViewTrainingRuns))
        .route(
            "/training/checkpoints",
            on(get(training::checkpoints), ViewTrainingRuns),
        )
        .route(
            "/training/check-extracted",
            on(get(training::check_extracted), ViewTrainingRuns),
        )
        .route(
            "/training/extract-release",
            on(post(training::extract_release), CreateTrainingRun),
        )
        // Catalog
        .route("/workflows", on(get(catalog::workflows), ViewTrainingRuns))
        .route("/plugins", on(get(catalog::plugins), ViewTrainingRuns))
        // The API description is public.
        .route("/openapi.json", get(openapi_json))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_layer,
        ))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(middleware::from_fn(log_requests))
        .layer(middleware::from_fn(refuse_large_bodies))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // A handler that panics is a 500 problem, not a dropped connection.
        .layer(CatchPanicLayer::custom(panicked))
        .with_state(state)
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::internal(format!("a handler panicked: {what}")).into_response()
}

/// Each module's part of the OpenAPI document.
pub fn openapi_parts() -> Vec<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    vec![
        runs::Api::openapi(),
        logs::Api::openapi(),
        models::Api::openapi(),
        training::Api::openapi(),
        catalog::Api::openapi(),
    ]
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(crate::openapi::openapi())
}

async fn method_not_allowed(OriginalUri(uri): OriginalUri, req: Request) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; the `Allow` header lists its methods",
            req.method(),
            uri.path()
        ),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(
        "no_such_endpoint",
        format!(
            "no endpoint {} {}; the API lives under /api/v1 (see /api/v1/openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// A body announced larger than [`BODY_LIMIT`] is refused at once (413), before any of it is
/// waited for.
async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        return ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// One log line per request under `app.backend`.
async fn log_requests(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(target: "errors.api", %method, %path, status, ms, "request failed");
    } else {
        tracing::info!(target: "app.backend", %method, %path, status, ms, "request");
    }
    response
}
