//! `GET /metrics`: the engine's state in the Prometheus text format, for the monitoring an
//! operator already runs. Needs a token with ViewTrainingRuns like the API (Prometheus sends it
//! with `authorization: {credentials: TOKEN}` in its scrape config). Read from the database at
//! each scrape, so every engine sharing it reports the same runs and steps, and its own
//! executions:
//!
//! - `kiln_runs{status}`: runs by status
//! - `kiln_steps{status}`: steps by status (`queued` ones wait for their turn or their needs)
//! - `kiln_step_duration_seconds_sum{uses}` / `_count{uses}`: finished steps' time by plugin
//!   or builtin
//! - `kiln_engine_runs_executing`: runs this engine executes now
//! - `kiln_build_info{version}`

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::problem::{ApiError, ApiResult};
use crate::state::AppState;

type Labels = Vec<(String, String)>;

fn family<T: Into<i64>>(rows: impl IntoIterator<Item = (Labels, T)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).set(value.into());
    }
    family
}

pub async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let runs = state.store().run_stats().await?;
    let steps = state.store().step_stats().await?;
    let mut registry = Registry::with_prefix("kiln");
    registry.register(
        "runs",
        "Runs by status",
        family(
            runs.by_status
                .iter()
                .map(|(s, n)| (vec![("status".to_owned(), s.to_string())], *n)),
        ),
    );
    registry.register(
        "steps",
        "Steps by status",
        family(
            steps
                .by_status
                .iter()
                .map(|(s, n)| (vec![("status".to_owned(), s.clone())], *n)),
        ),
    );
    // A summary by hand: seconds as a float gauge pair, Prometheus' _sum / _count convention.
    let sum = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let count = Family::<Labels, Gauge>::default();
    for (uses, n, ms) in &steps.durations {
        let labels = vec![("uses".to_owned(), uses.clone())];
        sum.get_or_create(&labels).set(*ms as f64 / 1000.0);
        count.get_or_create(&labels).set(*n);
    }
    registry.register(
        "step_duration_seconds_sum",
        "Total time of finished steps, by plugin or builtin",
        sum,
    );
    registry.register(
        "step_duration_seconds_count",
        "Finished steps, by plugin or builtin",
        count,
    );
    let executing = Gauge::<i64>::default();
    executing.set(state.manager().executing() as i64);
    registry.register(
        "engine_runs_executing",
        "Runs this engine executes now",
        executing,
    );
    registry.register(
        "build_info",
        "The kiln version",
        family([(
            vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())],
            1,
        )]),
    );
    let mut text = String::new();
    encode(&mut text, &registry)
        .map_err(|e| ApiError::internal(format!("encoding the metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `/metrics`, behind the API's authentication and the ViewTrainingRuns claim.
pub fn routes(state: AppState) -> axum::Router<AppState> {
    use axum::middleware;
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(metrics).route_layer(middleware::from_fn(
                |req: axum::extract::Request, next: middleware::Next| {
                    crate::auth::require(crate::auth::Claim::ViewTrainingRuns, req, next)
                },
            )),
        )
        .layer(middleware::from_fn_with_state(
            state,
            crate::auth::authenticate_layer,
        ))
}
