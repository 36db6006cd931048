//! The web monitor: a static page (`engine/server/ui/`: HTML, CSS, JavaScript modules and the
//! vendored chart and graph libraries) compiled into the binary and served at `/ui/`. It talks
//! to the API under `/api/v1` with the token the person signs in with, like any other client:
//! the server gives it nothing the API does not.
//!
//! Every asset is served with its SHA-256 as `ETag` (`Cache-Control: no-cache`: a browser
//! revalidates, and gets a 304 when nothing changed) and a Content-Security-Policy that allows
//! nothing but this server: no external scripts, styles, fonts or connections.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::problem::ApiError;
use crate::state::AppState;

/// Where the page is served.
pub const UI_PREFIX: &str = "/ui/";

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Assets;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(UI_PREFIX) }))
        .route("/ui", get(|| async { Redirect::to(UI_PREFIX) }))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found(
            "no_such_asset",
            format!("the web monitor has no file `{path}`; open {UI_PREFIX}"),
        )
        .into_response();
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let etag = HeaderValue::from_str(&etag).expect("hex is a valid header value");
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mime = match path.rsplit_once('.').map(|(_, ext)| ext) {
        // mime_guess does not know every module extension the same way across versions.
        Some("mjs" | "js") => "text/javascript; charset=utf-8".to_owned(),
        Some("html") => "text/html; charset=utf-8".to_owned(),
        Some("css") => "text/css; charset=utf-8".to_owned(),
        _ => file.metadata.mimetype().to_owned(),
    };
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&mime)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            )],
            file.data.into_owned(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
