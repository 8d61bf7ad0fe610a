//! The parts of the OpenAPI document that no single handler knows: its title and tags, the
//! errors the routes' layers answer (time limit), and the credentials `auth` requires of each
//! route with the errors of a missing or insufficient one. The routes, their parameters, bodies
//! and answers come from the handlers' `#[utoipa::path]` (see the parent module).

use axum::http::Method;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Type};

use crate::auth::Access;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "rag-node HTTP API",
        description = "Upload documents, follow their ingestion, and search them. Every error \
            answer, including those of body limits, time limits, routing (404 `not_found` for an \
            unknown route, 405 `method_not_allowed` for a wrong method) and requests the HTTP \
            parser refuses, is JSON `{code, message}` (`ErrorBody`) with a stable `code`; bad \
            input is always 400 `invalid_request`, never 422. docs/api.md explains every code."
    ),
    tags(
        (name = "jobs", description = "Uploads and imports, and the jobs that ingest them"),
        (name = "search", description = "Semantic search over the indexed chunks"),
        (name = "documents", description = "The indexed documents"),
        (name = "embeddings", description = "The node's embedding model"),
        (name = "probes", description = "Health, liveness, readiness and metrics"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The document's frame, before the routes are added.
pub(super) fn base() -> OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// Routes under the time limit may answer 408.
pub(super) fn time_limited(api: &mut OpenApi) {
    for (_, _, op) in operations(api) {
        add(
            op,
            "408",
            "`timeout`: the request took longer than `request_timeout_secs`",
        );
    }
}

/// The security schemes, each operation's requirement (from `auth::required`, the rule the
/// router applies) with the 401/403 answers it brings, and 500.
pub(super) fn finish(mut api: OpenApi) -> OpenApi {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "`Authorization: Bearer <key>` (the scheme in any case). The API key allows \
                     everything an application does; deleting a document needs the admin token \
                     where the node has one (it is accepted everywhere). A node in cluster mode \
                     always has an API key; a standalone node without keys is open.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Api-Key",
            "The same key or token as `bearer`, in its own header.",
        ))),
    );
    for (method, path, op) in operations(&mut api) {
        let access = crate::auth::required(&method, &path);
        if access == Access::Public {
            op.security = Some(Vec::new());
        } else {
            let none: [&str; 0] = [];
            op.security = Some(vec![
                SecurityRequirement::new("bearer", none),
                SecurityRequirement::new("api_key", none),
            ]);
            let unauthorized =
                error("`unauthorized`: no credential, or a wrong one (on a node that has keys)");
            let unauthorized = ResponseBuilder::from(unauthorized)
                .header(
                    "WWW-Authenticate",
                    HeaderBuilder::new()
                        .schema(
                            utoipa::openapi::ObjectBuilder::new()
                                .schema_type(Type::String)
                                .build(),
                        )
                        .description(Some("`Bearer`"))
                        .build(),
                )
                .build();
            op.responses
                .responses
                .entry("401".into())
                .or_insert(RefOr::T(unauthorized));
        }
        if access == Access::Admin {
            add(
                op,
                "403",
                "`forbidden`: the API key, where the route needs the admin token",
            );
        }
        // These handlers have nothing that can fail.
        if !["/livez", "/api/v1/openapi.json", "/api/v1/ws"].contains(&path.as_str()) {
            add(
                op,
                "500",
                "`internal_error`: a bug or an I/O failure; the message says which",
            );
        }
    }
    api
}

/// A JSON error answer (`ErrorBody`).
fn error(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// Adds an error answer, unless the handler describes that status itself.
fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.into())
        .or_insert_with(|| RefOr::T(error(description)));
}

/// Every operation of the document: method, path, operation.
pub(super) fn operations(api: &mut OpenApi) -> Vec<(Method, String, &mut Operation)> {
    let mut out = Vec::new();
    for (path, item) in api.paths.paths.iter_mut() {
        for (method, op) in item_operations(item) {
            out.push((method, path.clone(), op));
        }
    }
    out
}

fn item_operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::OPTIONS, item.options.as_mut()),
        (Method::HEAD, item.head.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::TRACE, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}
