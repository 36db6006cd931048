//! The route table. Every endpoint is registered once, with the claim it needs right next to
//! it: `on(routes!(module::handler), Claim::X)`. The handler's `#[utoipa::path]` gives its method,
//! its path (under `/api/v1`) and its OpenAPI operation, so what is served and what is documented
//! cannot drift apart. Handlers live in one module per resource.

mod catalog;
mod logs;
mod models;
mod runs;
mod session;
mod training;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::auth::{self, Claim};
use crate::problem::ApiError;
use crate::state::AppState;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// Where the API is served; the paths of the handlers' `#[utoipa::path]` are relative to it.
pub const API_PREFIX: &str = "/api/v1";

/// `routes` guarded by `claim` (a route layer: a method the route lacks is still a 405).
fn on(routes: UtoipaMethodRouter<AppState>, claim: Claim) -> UtoipaMethodRouter<AppState> {
    routes.map(|router| {
        router.route_layer(middleware::from_fn(move |req: Request, next: Next| {
            auth::require(claim, req, next)
        }))
    })
}

/// `routes` open to any valid token.
fn signed_in(routes: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    routes.map(|router| router.route_layer(middleware::from_fn(auth::require_token)))
}

/// Every guarded endpoint with its OpenAPI operation; paths relative to [`API_PREFIX`].
pub fn api() -> OpenApiRouter<AppState> {
    use Claim::*;
    OpenApiRouter::default()
        // Runs
        .routes(on(routes!(runs::list), ViewTrainingRuns))
        .routes(on(routes!(runs::create), CreateTrainingRun))
        .routes(on(routes!(runs::stats), ViewTrainingRuns))
        .routes(on(routes!(runs::show), ViewTrainingRuns))
        .routes(on(routes!(runs::remove), DeleteTrainingRun))
        .routes(on(routes!(runs::cancel), ScheduleTrainingRun))
        .routes(on(routes!(runs::retry), ScheduleTrainingRun))
        .routes(on(routes!(logs::run_logs), ViewTrainingRuns))
        .routes(on(routes!(logs::run_checkpoints), ViewTrainingRuns))
        .routes(on(routes!(logs::run_metrics), ViewTrainingRuns))
        .routes(on(
            routes!(models::export_best),
            PublishTrainingRunTrainedModel,
        ))
        // Models
        .routes(on(routes!(models::list), ViewTrainingRuns))
        .routes(on(routes!(models::show), ViewTrainingRuns))
        .routes(on(routes!(models::publish), PublishTrainingRunTrainedModel))
        .routes(on(routes!(models::promote), PublishTrainingRunTrainedModel))
        // Training façade
        .routes(on(routes!(training::frameworks), ViewTrainingRuns))
        .routes(on(routes!(training::default_config), ViewTrainingRuns))
        .routes(on(routes!(training::resolve_config), ViewTrainingRuns))
        .routes(on(routes!(training::start), CreateTrainingRun))
        .routes(on(routes!(training::stop), ScheduleTrainingRun))
        .routes(on(routes!(training::logs), ViewTrainingRuns))
        .routes(on(routes!(training::checkpoints), ViewTrainingRuns))
        .routes(on(routes!(training::check_extracted), ViewTrainingRuns))
        .routes(on(routes!(training::extract_release), CreateTrainingRun))
        // Catalog
        .routes(on(routes!(catalog::workflows), ViewTrainingRuns))
        .routes(on(routes!(catalog::plugins), ViewTrainingRuns))
        .routes(on(routes!(catalog::projects), ViewTrainingRuns))
        // Who is asking
        .routes(signed_in(routes!(session::show)))
}

pub fn router(state: AppState) -> Router {
    let api = Router::from(api())
        // The API description is public.
        .route("/openapi.json", get(openapi_json))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_layer,
        ))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest(API_PREFIX, api)
        .merge(crate::ui::routes())
        .merge(crate::metrics::routes(state.clone()))
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
    // A 503 is an orderly refusal (the server is stopping, or at its connection bound), told
    // to the client with when to retry: not a failure of the server's.
    if status >= 500 && status != 503 {
        tracing::error!(target: "errors.api", %method, %path, status, ms, "request failed");
    } else {
        tracing::info!(target: "app.backend", %method, %path, status, ms, "request");
    }
    response
}
