//! Who the caller is: what a client (the web monitor) shows and hides by.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Caller, Claim};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// The token's name (`anonymous` when the server runs with `--insecure-no-auth`).
    pub name: String,
    /// The claims the token carries; the API refuses what needs another (403).
    pub claims: Vec<Claim>,
    /// The server accepts requests without tokens (`--insecure-no-auth`).
    pub insecure: bool,
}

/// The caller's token: its name and claims. Any valid token may ask.
#[utoipa::path(get, path = "/session", operation_id = "get_session",
    responses((status = 200, body = Session), (status = 401, body = crate::problem::Problem)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Session> {
    let claims = Claim::ALL
        .into_iter()
        .filter(|c| caller.claims.contains(c))
        .collect();
    Json(Session {
        name: caller.name,
        claims,
        insecure: state.insecure(),
    })
}
