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
//! - `kiln_engine_programs_followed`: programs (trainers) this engine follows now
//! - `kiln_engines{host}`: engines sharing the database that renewed within three lease times
//! - `kiln_engine_leases_held`, and counters of this engine since it started:
//!   `kiln_engine_lease_renewals_total`, `kiln_engine_lease_renewal_failures_total`,
//!   `kiln_engine_runs_claimed_total` (created here or claimed), `kiln_engine_takeovers_total`
//!   (claimed from an engine whose lease had expired), `kiln_engine_leases_lost_total`
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
    let gauge = |value: usize| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        g
    };
    registry.register(
        "engine_runs_executing",
        "Runs this engine executes now",
        gauge(state.manager().executing()),
    );
    registry.register(
        "engine_programs_followed",
        "Programs (trainers) this engine follows now",
        gauge(state.service().programs_followed()),
    );
    let engine = state.service().runner().engine();
    let ttl_ms = i64::try_from(engine.ttl().as_millis()).unwrap_or(i64::MAX / 4);
    let mut hosts: std::collections::BTreeMap<String, i64> = Default::default();
    for e in state.store().engines(None).await? {
        if e.silent_ms <= 3 * ttl_ms {
            *hosts.entry(e.host).or_default() += 1;
        }
    }
    registry.register(
        "engines",
        "Engines sharing the database, by host (renewed within three lease times)",
        family(
            hosts
                .into_iter()
                .map(|(host, n)| (vec![("host".to_owned(), host)], n)),
        ),
    );
    registry.register(
        "engine_leases_held",
        "Runs whose lease this engine holds",
        gauge(engine.holding()),
    );
    let counters = engine.counters();
    for (name, help, value) in [
        (
            "engine_lease_renewals",
            "Renewals of this engine's leases",
            &counters.renewals,
        ),
        (
            "engine_lease_renewal_failures",
            "Renewals of this engine's leases that failed",
            &counters.renewal_failures,
        ),
        (
            "engine_runs_claimed",
            "Runs this engine took a lease on (created here, or claimed)",
            &counters.claims,
        ),
        (
            "engine_takeovers",
            "Runs claimed from an engine whose lease had expired",
            &counters.takeovers,
        ),
        (
            "engine_leases_lost",
            "Leases this engine lost to another engine or by failing to renew",
            &counters.lost,
        ),
    ] {
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        counter.inc_by(value.load(std::sync::atomic::Ordering::Relaxed));
        registry.register(name, help, counter);
    }
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
