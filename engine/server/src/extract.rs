//! Extractors whose rejections are problem details naming what was wrong: `ApiJson<T>` for
//! bodies (unknown field, wrong type, missing field, body too large, wrong content type, body
//! too slow), `ApiQuery<T>` for query strings and `ApiPath<T>` for path parameters (bad
//! percent-encoding, invalid UTF-8); and [`whole_number`], the one parser of numeric query
//! parameters and headers.

use std::error::Error as _;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::http::BodyTimeout;
use crate::problem::{ApiError, ApiResult};

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!(
                        "the request body does not match the expected shape: {}",
                        body_text(&e.body_text())
                    ),
                ),
                JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
                    "malformed_json",
                    format!(
                        "the request body is not valid JSON: {}",
                        body_text(&e.body_text())
                    ),
                ),
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON with `Content-Type: application/json`",
                ),
                JsonRejection::BytesRejection(e) if body_timed_out(&e) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time (see `--body-timeout` of `kiln \
                     serve`); send the whole body at once",
                ),
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!(
                            "the request body is larger than {} bytes",
                            crate::routes::BODY_LIMIT
                        ),
                    )
                }
                // The body could not be read at all (a broken chunk, a reset): not its content.
                other => ApiError::bad_request("unreadable_body", other.body_text()),
            }),
        }
    }
}

/// Whether reading the body failed because it missed its deadline ([`BodyTimeout`]).
fn body_timed_out(e: &axum::extract::rejection::BytesRejection) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if err.is::<BodyTimeout>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn body_text(text: &str) -> String {
    // axum prefixes "Failed to deserialize the JSON body into the target type: "
    text.split_once(": ")
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// A query string extractor answering problem details instead of axum's plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("the query string is invalid: {}", body_text(&e.body_text())),
                )
            })
    }
}

/// A path extractor answering problem details (`invalid_path`) instead of axum's plain-text 400,
/// e.g. for a parameter that is not valid UTF-8 once percent-decoded.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|e| match e {
                PathRejection::FailedToDeserializePathParams(e) => ApiError::bad_request(
                    "invalid_path",
                    format!(
                        "the path is invalid: {}; path segments must be percent-encoded UTF-8",
                        e.body_text()
                    ),
                ),
                other => ApiError::internal(other.body_text()),
            })
    }
}

/// `raw` (a query parameter or header named `what`) as a whole number in `min..=max`, written
/// as plain decimal digits: no sign, blanks, leading zeros or fractions, and nothing that wraps
/// around or is silently clamped. Any other text is a 400 with `code`.
pub(crate) fn whole_number(
    what: &str,
    raw: &str,
    min: u64,
    max: u64,
    code: &'static str,
) -> ApiResult<u64> {
    let canonical = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    match raw.parse::<u64>() {
        Ok(n) if canonical && (min..=max).contains(&n) => Ok(n),
        _ => {
            let shown: String = raw.chars().take(40).collect();
            let more = if raw.chars().count() > 40 { "…" } else { "" };
            Err(ApiError::bad_request(
                code,
                format!("{what} must be a whole number from {min} to {max}; got `{shown}{more}`"),
            ))
        }
    }
}

/// The largest offset: offsets are stored and compared as signed 64-bit numbers.
pub(crate) const MAX_OFFSET: u64 = i64::MAX as u64;

/// An offset given as `raw` (a query parameter or header named `what`): 0 to [`MAX_OFFSET`].
pub(crate) fn offset(what: &str, raw: &str, code: &'static str) -> ApiResult<u64> {
    whole_number(what, raw, 0, MAX_OFFSET, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_plain_digits_in_range() {
        let n = |raw: &str| whole_number("offset", raw, 0, MAX_OFFSET, "invalid_offset");
        assert_eq!(n("0").unwrap(), 0);
        assert_eq!(n("42").unwrap(), 42);
        assert_eq!(n("9223372036854775807").unwrap(), MAX_OFFSET);
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "01",
            "1.0",
            "1e3",
            "abc",
            "9223372036854775808",
            "18446744073709551616",
            "\u{661}",
        ] {
            let e = n(bad).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "invalid_offset"),
                "{bad:?}"
            );
            assert!(
                e.detail.contains("offset must be a whole number from 0 to"),
                "{e:?}"
            );
        }
        assert!(whole_number("limit", "0", 1, 500, "invalid_limit").is_err());
        assert!(whole_number("limit", "501", 1, 500, "invalid_limit").is_err());
    }
}
