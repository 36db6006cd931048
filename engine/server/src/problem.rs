//! Errors as RFC 9457 problem details (`application/problem+json`) with a stable
//! machine-readable `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable, e.g. `run_not_found`.
    pub code: &'static str,
    pub detail: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

/// The body of every error response (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What was wrong and what to do.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Answer with `Retry-After: secs`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The same problem under another status (a body field is a 422 where a query is a 400).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(target: "errors.api", "{detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {detail}"),
        )
    }
}

impl From<kiln_store::Error> for ApiError {
    fn from(e: kiln_store::Error) -> Self {
        match e {
            kiln_store::Error::RunNotFound(_) => Self::not_found("run_not_found", e.to_string()),
            // The prefix is well-formed; it is the runs that exist that make it ambiguous.
            kiln_store::Error::AmbiguousRun { .. } => {
                Self::conflict("ambiguous_run_id", e.to_string())
            }
            kiln_store::Error::ModelNotFound(_) => {
                Self::not_found("model_not_found", e.to_string())
            }
            kiln_store::Error::Conflict(_) => Self::conflict("conflict", e.to_string()),
            // The server stops within a second; the restarted one answers.
            kiln_store::Error::DatabaseLost { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_lost",
                e.to_string(),
            ),
            other => Self::internal(other),
        }
    }
}

impl From<kiln_runner::Error> for ApiError {
    fn from(e: kiln_runner::Error) -> Self {
        use kiln_runner::{Error, Missing};
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match e {
            Error::Input(message) => Self::new(unprocessable, "invalid_input", message),
            Error::Conflict(message) => Self::conflict("conflict", message),
            Error::NotFound(what, message) => Self::not_found(
                match what {
                    Missing::Framework => "unknown_framework",
                    Missing::Task => "unknown_task",
                    Missing::Release => "release_not_found",
                    Missing::Training => "training_not_found",
                    Missing::Step => "step_not_found",
                },
                message,
            ),
            e @ Error::UnknownWorkflow { .. } => {
                Self::new(unprocessable, "unknown_workflow", e.to_string())
            }
            Error::Workflow(d) => Self::new(unprocessable, "invalid_workflow", d.to_string()),
            Error::Params(e) => Self::new(unprocessable, "invalid_params", e.to_string()),
            Error::Store(e) => e.into(),
            Error::Config(message) => {
                tracing::error!(target: "errors.api", "{message}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "invalid_operator_config",
                    message,
                )
            }
            Error::Plugin(message) => {
                tracing::error!(target: "errors.api", "{message}");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed", message)
            }
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("https://kiln.dev/problems/{}", self.code.replace('_', "-")),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
