//! The HTTP API (`kiln serve`): triggers, follows, stops and deletes runs, serves logs,
//! checkpoints and the model registry, and executes triggered runs in the same process.
//!
//! Architecture invariant: this is the only crate that knows HTTP (axum) and the API's JSON
//! shapes. It reaches the database only through `kiln-store` and runs only through
//! `kiln-runner`. Every endpoint declares the claim it needs next to its route (`routes/`).
//!
//! Log targets: `app.backend` (one line per request), `operations.training` (runs started,
//! finished, recovered), `errors.api` / `errors.training` (failures).

pub mod auth;
mod extract;
mod http;
mod limits;
mod manager;
mod metrics;
mod openapi;
mod problem;
mod routes;
mod state;
mod ui;

pub use auth::{Claim, Roles, issue_token};
pub use http::{BodyTimeout, SHUTDOWN_GRACE};
pub use limits::{LimitsError, ServerLimits};
pub use manager::RunManager;
pub use openapi::openapi;
pub use problem::ApiError;
pub use state::{AppState, ServerConfig};

use std::net::SocketAddr;

/// Serve the API on `addr` until `shutdown` resolves. Runs that were active when an earlier
/// engine stopped are recovered first; on shutdown no new run is accepted, live log streams
/// end, requests in flight get [`SHUTDOWN_GRACE`] to finish, and runs in flight are left to
/// their supervised programs for the next start to re-attach to. A SQLite database file
/// replaced or removed meanwhile stops the server the same way, without a write, and is its
/// error. The connection limits and
/// timeouts are the state's [`ServerLimits`] (see `http.rs`).
pub async fn serve(
    state: AppState,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    state.limits().validate()?;
    // Listening first: a server that cannot (the port taken) claims nothing, and records its
    // engine stopped.
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            if let Err(e) = state.service().stop_engine("cannot listen").await {
                tracing::warn!(target: "app.backend", "cannot record the engine's stop: {e}");
            }
            anyhow::bail!("cannot listen on {addr}: {e}");
        }
    };
    // Runs whose engine stopped or died (this machine's earlier server among them), and runs
    // queued for an engine like this one, are claimed now and every second.
    let claims = tokio::spawn({
        let (manager, stop) = (state.manager().clone(), state.shutdown().clone());
        async move { manager.claim_forever(stop).await }
    });
    // Workflows, plugins and grants changed on disk are used by new runs (hot reload).
    let roles_file = state.workspace().configs_dir().join("roles.yaml");
    let roles_state = state.clone();
    let on_roles: kiln_runner::service::OnChange = (
        roles_file.clone(),
        Box::new(move || roles_state.reload_roles(&roles_file)),
    );
    let _hot_reload = match state.service().watch(vec![on_roles]) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::warn!(target: "app.backend", "hot reload is off: {e}");
            None
        }
    };
    let local = listener.local_addr()?;
    tracing::info!(target: "app.backend", %local, "listening");
    // Written, not printed: a closed stderr must not stop the server.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("kiln API listening on http://{local}/api/v1 (OpenAPI: /api/v1/openapi.json); web monitor: http://{local}/ui/\n")
            .as_bytes(),
    );
    let manager = state.manager().clone();
    let stop = state.shutdown().clone();
    let limits = state.limits().clone();
    // A database file replaced or removed under the server (a backup restored over it): it
    // stops at once, writing nothing more (see kiln-store's `database_file`).
    let store = state.service().store().clone();
    let lost = {
        let (store, manager, stop) = (store.clone(), manager.clone(), stop.clone());
        async move {
            store.database_lost_wait(LOOK_EVERY).await;
            manager.stop_accepting();
            stop.cancel();
            // Requests in flight fail at once (their writes are refused): no long drain.
            tokio::time::sleep(LOST_GRACE).await;
        }
    };
    let signal = tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            manager.stop_accepting();
            tracing::info!(target: "app.backend", "shutting down: no new runs accepted");
            stop.cancel();
        }
    });
    let manager = state.manager().clone();
    tokio::select! {
        () = http::serve(listener, routes::router(state), limits, stop) => {}
        () = lost => {}
    }
    signal.abort();
    claims.abort();
    if let Some(why) = store.database_lost() {
        // Nothing is written: the runs' leases run out for the next engine to take over.
        manager.abort_all();
        anyhow::bail!(why);
    }
    manager.hand_back().await;
    Ok(())
}

/// How often the server looks whether its database file is still the one it opened.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long requests in flight get once the database file is found replaced.
const LOST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
