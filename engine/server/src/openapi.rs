//! The OpenAPI 3 document, generated from the handlers' annotations.
//!
//! The annotations give each operation its success responses and the errors particular to it;
//! [`ErrorResponses`] then adds the errors every operation of its kind can answer (401, 403,
//! 429, 500 and 503 everywhere; 400 with parameters or a body; 404 with a path parameter; 408,
//! 413, 415 and 422 with a JSON body) and makes every error response an
//! `application/problem+json` [`Problem`](crate::problem::Problem), so the document cannot
//! forget a status that the extractors, the auth layer or the connection bound produce.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, Type};
use utoipa::openapi::{ObjectBuilder, Schema};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln API", description = "Trigger, follow and stop ML training runs; publish models."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(crate::problem::Problem, crate::auth::Claim))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What an error status means, for its description in the document.
fn describe(status: &str) -> &'static str {
    match status {
        "400" => {
            "The request is malformed: a path or query parameter, header or JSON body that does \
             not parse or is out of range (`invalid_path`, `invalid_query`, `invalid_limit`, \
             `invalid_offset`, `invalid_last_event_id`, `malformed_json`, ...)."
        }
        "401" => "No bearer token, or a malformed, unknown or revoked one (`unauthorized`).",
        "403" => "The token lacks the claim this endpoint needs (`forbidden`).",
        "404" => "What the request names does not exist (`run_not_found`, `model_not_found`, ...).",
        "408" => "The request body did not arrive within `--body-timeout` (`body_timeout`).",
        "409" => {
            "The request conflicts with the current state (`ambiguous_run_id`, `run_finished`, \
             `run_still_active`, ...)."
        }
        "413" => "The request body is larger than 1 MiB (`body_too_large`).",
        "415" => {
            "The body is not sent as `Content-Type: application/json` (`unsupported_media_type`)."
        }
        "422" => {
            "The body is well-formed JSON whose content cannot be accepted (`invalid_body`: \
             unknown field, wrong type, missing field; or a name, workflow, param or config the \
             server rejects)."
        }
        "429" => {
            "The token id is locked out after repeated failed authentications \
             (`too_many_failures`); retry after `Retry-After` seconds."
        }
        "500" => "An internal error (`internal`, `plugin_failed`, ...).",
        "503" => {
            "The server serves its maximum of connections (`too_many_connections`) or is \
             shutting down (`shutting_down`); retry after `Retry-After` seconds."
        }
        _ => "An error.",
    }
}

/// Adds the errors that every operation can answer and makes every error a problem document.
struct ErrorResponses;

impl ErrorResponses {
    fn complete(path: &str, op: &mut Operation) {
        // A parameter is absent or has a value: it is never `null` (utoipa makes an optional
        // header nullable).
        for p in op.parameters.iter_mut().flatten() {
            if let Some(RefOr::T(Schema::Object(schema))) = &mut p.schema
                && let SchemaType::Array(types) = &schema.schema_type
            {
                let types: Vec<Type> = types
                    .iter()
                    .filter(|t| **t != Type::Null)
                    .cloned()
                    .collect();
                if let [one] = types.as_slice() {
                    schema.schema_type = SchemaType::Type(one.clone());
                }
            }
        }
        let params = op.parameters.as_deref().unwrap_or_default();
        let has_path = params
            .iter()
            .any(|p| matches!(p.parameter_in, ParameterIn::Path));
        let has_body = op.request_body.is_some();
        let mut statuses = vec!["401", "403", "429", "500", "503"];
        if !params.is_empty() || has_body {
            statuses.push("400");
        }
        if has_path {
            statuses.push("404");
            // A run id may be a prefix that matches several runs.
            if path.starts_with("/api/v1/runs/{id}") {
                statuses.push("409");
            }
        }
        if has_body {
            statuses.extend(["408", "413", "415", "422"]);
        }
        let responses = &mut op.responses.responses;
        for status in statuses {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::T(Response::new("")));
        }
        for (status, response) in responses.iter_mut() {
            let RefOr::T(response) = response else {
                continue;
            };
            if !status.starts_with(['4', '5']) {
                continue;
            }
            if response.description.is_empty() {
                response.description = describe(status).to_owned();
            }
            response.content.clear();
            response.content.insert(
                PROBLEM_JSON.to_owned(),
                Content::new(Some(Ref::from_schema_name("Problem"))),
            );
            if matches!(status.as_str(), "429" | "503") {
                let seconds: Schema = ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .into();
                response.headers.insert(
                    "Retry-After".to_owned(),
                    HeaderBuilder::new()
                        .schema(seconds)
                        .description(Some("Seconds to wait before retrying."))
                        .build(),
                );
            }
        }
    }
}

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in operations(item) {
                Self::complete(path, op);
            }
        }
    }
}

/// The operations of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// The whole document: the base, the operations of the route table (`routes::api`) under
/// [`routes::API_PREFIX`], and [`ErrorResponses`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi().nest(routes::API_PREFIX, routes::api().into_openapi());
    // Every operation has a `tags` list, empty: the document says the same as when it was
    // derived with `#[openapi(paths(...))]`, which writes one (`routes!` writes none).
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            op.tags.get_or_insert_with(Vec::new);
        }
    }
    ErrorResponses.modify(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_have_unique_ids_and_problem_errors() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let mut ids = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default().to_owned();
                assert!(
                    ids.insert(id.clone()),
                    "{method} {path}: duplicate id `{id}`"
                );
                for (status, response) in op["responses"].as_object().unwrap() {
                    if status.starts_with(['4', '5']) {
                        assert_eq!(
                            response["content"][PROBLEM_JSON]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                        assert!(response["description"].as_str().unwrap().len() > 5);
                    }
                }
                for status in ["401", "403", "429", "500", "503"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} lacks {status}"
                    );
                }
                for p in op["parameters"].as_array().into_iter().flatten() {
                    assert!(
                        p["schema"]["type"].is_string() || p["schema"]["$ref"].is_string(),
                        "{method} {path}: a parameter is never null: {p}"
                    );
                    assert!(
                        matches!(p["in"].as_str(), Some("query" | "path" | "header")),
                        "{method} {path}: {p}"
                    );
                    if p["in"] == "path" {
                        assert!(
                            path.contains(&format!("{{{}}}", p["name"].as_str().unwrap())),
                            "{method} {path}: {p}"
                        );
                    }
                }
            }
        }
        assert!(ids.len() >= 24, "{ids:?}");
    }

    #[test]
    fn documented_enums_are_the_store_vocabularies() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let stages: Vec<&str> = doc["components"]["schemas"]["Stage"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(stages, kiln_store::STAGES);
        let list = &doc["paths"]["/api/v1/runs"]["get"]["parameters"];
        let status = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "status")
            .unwrap();
        let documented: Vec<&str> = status["schema"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let statuses: Vec<&str> = kiln_store::RunStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(documented, statuses);
    }
}
