//! The HTTP API (axum). Each handler carries its OpenAPI description (`#[utoipa::path]`), and
//! the router is built from route sets of those handlers (`utoipa_axum::routes!`): one call adds
//! a route and its description, so the router and the OpenAPI document it serves at
//! `/api/v1/openapi.json` list the same routes. The schemas are those of the `rag-api` types
//! (`ToSchema`, derived with its `openapi` feature). `doc` adds what the router's layers and
//! `auth` decide (time limits, credentials, the errors they answer); a test compares the
//! document with the routes the router holds.

mod doc;
mod error;
mod parse_errors;
mod server;

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::records::DocumentRecord;
use crate::spool::{SpoolWriter, Spooled};
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use futures_util::stream::{self, Stream};
use rag_api::{
    ChunkingOptions, DeleteResponse, DocumentInfo, DocumentList, EmbedRequest, EmbedResponse,
    ErrorBody, HealthReport, JobList, JobState, JobStatus, SearchRequest, SearchResponse,
    UploadResponse,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::broadcast;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::code_for_status;
pub use error::ApiError;
pub use server::{serve, ServerLimits};

use crate::node::{DeleteError, Node, UploadContent, UploadRequest};
use crate::queue::{Cancel, QueueError};
use crate::time::rfc3339;

const MAX_EMBED_TEXTS: usize = 256;

type AppState = Arc<Node>;

/// What the routes' own layers enforce.
struct RouteLimits {
    /// Time limit of the plain request/response routes (`request_timeout_secs`).
    timeout: Duration,
    /// Hard limit of an upload's body (`max_upload_bytes` and room for the form around it).
    upload_bytes: usize,
    /// Limit of a JSON body (`http.max_json_bytes`).
    json_bytes: usize,
}

impl RouteLimits {
    /// Limits for building the document alone: their values do not change it.
    const ANY: RouteLimits = RouteLimits {
        timeout: Duration::from_secs(30),
        upload_bytes: 1 << 20,
        json_bytes: 1 << 20,
    };

    fn of(node: &Node) -> RouteLimits {
        let c = node.config();
        RouteLimits {
            timeout: Duration::from_secs(c.request_timeout_secs.max(1)),
            upload_bytes: c.max_upload_bytes as usize + (1 << 20),
            json_bytes: c.http.max_json_bytes,
        }
    }
}

/// Every route with its layers, and the OpenAPI document of exactly those routes.
fn routes(limits: &RouteLimits) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    // The one limit of JSON bodies: axum's extractors apply it while reading.
    let json_limit = DefaultBodyLimit::max(limits.json_bytes);
    // Plain request/response routes get a time limit; uploads and streams do not.
    let mut timed = OpenApiRouter::default()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job, cancel_job))
        .routes(routes!(rag_get_job))
        .routes(routes!(search))
        .routes(routes!(list_documents))
        .routes(routes!(get_document, delete_document))
        .routes(routes!(embed))
        .routes(routes!(health))
        .routes(routes!(openapi))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(import))
        .layer(json_limit)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ));
    doc::time_limited(timed.get_openapi_mut());
    let uploads = OpenApiRouter::default()
        .routes(routes!(upload))
        .routes(routes!(rag_upload))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.upload_bytes));
    let streams = OpenApiRouter::default()
        .routes(routes!(job_events))
        .routes(routes!(ws));
    let (router, api) = OpenApiRouter::with_openapi(doc::base())
        .merge(timed)
        .merge(uploads)
        .merge(streams)
        .split_for_parts();
    (router, doc::finish(api))
}

/// The OpenAPI document the router serves.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes(&RouteLimits::ANY).1
}

/// The document as served: built once with the router.
#[derive(Clone)]
struct ApiDocument(bytes::Bytes);

pub fn router(node: Arc<Node>) -> Router {
    let (routes, api) = routes(&RouteLimits::of(&node));
    let document = ApiDocument(
        serde_json::to_vec(&api)
            .expect("the OpenAPI document serializes")
            .into(),
    );
    routes
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(Extension(document))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            authenticate,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(node)
}

/// Checks the caller's credential against what the route needs (see `auth`).
async fn authenticate(
    State(node): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let access = crate::auth::required(req.method(), req.uri().path());
    let headers = req.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    match node.authorize(access, presented) {
        Ok(()) => next.run(req).await,
        Err(crate::auth::Denied::Unauthenticated) => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid API key: send `Authorization: Bearer <key>`",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
        Err(crate::auth::Denied::Forbidden) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this operation needs the admin token",
        )
        .into_response(),
    }
}

/// Errors produced by layers (body limit, timeout, method routing) come without a JSON body:
/// give them the same `{code, message}` shape as ours.
async fn json_errors(mut resp: Response) -> Response {
    // One rule for malformed or mistyped input: 400 (axum's extractors say 422 for a body
    // that parses but does not fit the type).
    if resp.status() == StatusCode::UNPROCESSABLE_ENTITY {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let mut out = ApiError::new(status, code_for_status(status), message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

/// `Json` whose rejections are our JSON errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            // A 422 (well-formed but mistyped) becomes 400 in `json_errors`, like every 422.
            Err(rej) => Err(ApiError::new(
                rej.status(),
                code_for_status(rej.status()),
                rej.body_text(),
            )),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

// Described for the OpenAPI document; `upload` reads the fields as they stream in.
/// The upload form (`multipart/form-data`): only `file` is required, and no field may be given
/// twice.
#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The document. Its type is detected from its content: PDF, DOCX, XLSX, XLS, ODS, text,
    /// Markdown, CSV, HTML.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// JSON object of string values, e.g. `{"team": "finance"}`: stored with the document,
    /// returned with its hits and usable in search filters. At most `http.max_metadata_bytes`.
    #[schema(required = false, example = r#"{"team": "finance"}"#)]
    metadata: String,
    /// Id of the document, 1–128 characters of `A-Z a-z 0-9 - _ . :`; an existing id is
    /// replaced. Default: `doc-` and the first 24 hex digits of the file's sha256.
    #[schema(required = false)]
    document_id: String,
    /// JSON `{"max_tokens": n, "overlap_tokens": n}` overriding the node's chunking for this
    /// job.
    #[schema(
        required = false,
        example = r#"{"max_tokens": 256, "overlap_tokens": 32}"#
    )]
    chunking: String,
    /// The document's language for the keyword index's analyzers: `pt`, `en`, `es`, `fr`,
    /// `de`, `it` (also `pt-BR`, `por`, `Portuguese`), or `auto` to detect it per chunk.
    /// Stored as the metadata key `language`. Default: the node's `keyword.default_language`,
    /// else detected.
    #[schema(required = false, example = "pt")]
    language: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    operation_id = "uploadDocument",
    summary = "Upload a document for ingestion",
    description = "Stores the file durably (fsync) and queues a job; answers at once with 202. Jobs run one at a time per node, in upload order; follow one with `GET /api/v1/jobs/{id}`, its events or the WebSocket. Identical bytes already indexed under the same `document_id` complete at once with `duplicate: true`.",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Accepted: the bytes are on disk (fsynced) and the job is queued", body = UploadResponse,
            headers(("Location" = String, description = "The job: `/api/v1/jobs/{job_id}`"))),
        (status = 400, description = "`invalid_request`: not a multipart form, a malformed one, an unknown field, a field given twice (two `file` parts), no `file`, invalid metadata, document id, chunking or language", body = ErrorBody),
        (status = 408, description = "`upload_stalled`: the upload sent nothing for `http.body_idle_timeout_secs`; its spool file is removed", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the file is larger than `max_upload_bytes`; `field_too_large`: `metadata` above `http.max_metadata_bytes` or another field above `http.max_field_bytes`", body = ErrorBody),
        (status = 429, description = "`queue_full`: `max_queue_depth` jobs are waiting", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn upload(
    State(node): State<AppState>,
    mp: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut mp = mp.map_err(|r| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("expected multipart/form-data: {}", r.body_text()),
        )
    })?;
    let http = &node.config().http;
    let idle = Duration::from_secs(http.body_idle_timeout_secs.max(1));
    let max = node.config().max_upload_bytes;
    let mut file: Option<(String, UploadContent, SpoolGuard)> = None;
    let mut document_id = None;
    let mut metadata = None;
    let mut chunking: Option<ChunkingOptions> = None;
    let mut language: Option<String> = None;
    let bad = |m: String| ApiError::bad_request(m);
    while let Some(mut field) = stalled_after(idle, mp.next_field())
        .await?
        .map_err(|e| bad(format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or("").to_owned();
        let seen = match name.as_str() {
            "file" => file.is_some(),
            "metadata" => metadata.is_some(),
            "document_id" => document_id.is_some(),
            "chunking" => chunking.is_some(),
            "language" => language.is_some(),
            _ => false,
        };
        if seen {
            return Err(bad(format!(
                "the form has more than one {name:?} field: send one document per upload"
            )));
        }
        match name.as_str() {
            "file" => {
                let filename = field.file_name().unwrap_or("upload").to_owned();
                // Streamed to disk while it arrives and hashed on the way: a large upload never
                // sits in memory whole (see `spool` for how it is written).
                let path = node.spool_path();
                let guard = SpoolGuard(path.clone());
                let mut out = SpoolWriter::create(&path)
                    .await
                    .map_err(ApiError::internal)?;
                let too_large = || {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("file exceeds the upload limit of {max} bytes"),
                    )
                };
                while let Some(chunk) = next_chunk(&mut field, idle).await.map_err(|e| {
                    if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                        too_large()
                    } else {
                        e
                    }
                })? {
                    if out.size() + chunk.len() as u64 > max {
                        drain(&mut field, idle).await;
                        return Err(too_large());
                    }
                    out.write(&chunk).await.map_err(ApiError::internal)?;
                }
                let Spooled { size, sha256 } = out
                    .finish(node.spool_is_durable_copy())
                    .await
                    .map_err(ApiError::internal)?;
                file = Some((
                    filename,
                    UploadContent::Spooled { path, sha256, size },
                    guard,
                ));
            }
            "metadata" => {
                let text =
                    text_field(&mut field, "metadata", http.max_metadata_bytes, idle).await?;
                metadata = Some(if text.trim().is_empty() {
                    BTreeMap::new()
                } else {
                    serde_json::from_str(&text).map_err(|e| {
                        bad(format!(
                            "metadata must be a JSON object of string values: {e}"
                        ))
                    })?
                });
            }
            "document_id" => {
                let text =
                    text_field(&mut field, "document_id", http.max_field_bytes, idle).await?;
                document_id = Some(text.trim().to_owned()).filter(|t| !t.is_empty());
            }
            "chunking" => {
                let text = text_field(&mut field, "chunking", http.max_field_bytes, idle).await?;
                chunking = Some(serde_json::from_str(&text).map_err(|e| {
                    bad(format!(
                        "chunking must be {{\"max_tokens\": n, \"overlap_tokens\": n}}: {e}"
                    ))
                })?);
            }
            "language" => {
                let text = text_field(&mut field, "language", http.max_field_bytes, idle).await?;
                language = Some(text.trim().to_owned());
            }
            other => {
                return Err(bad(format!(
                    "unknown form field {other:?} (expected file, metadata, document_id, chunking, language)"
                )))
            }
        }
    }
    let (filename, content, _guard) =
        file.ok_or_else(|| bad("the form has no `file` field".into()))?;
    let n = node.clone();
    let job = blocking(move || {
        n.upload(UploadRequest {
            filename,
            content,
            document_id,
            metadata: metadata.unwrap_or_default(),
            chunking,
            language,
        })
    })
    .await??;
    let body = UploadResponse {
        job_id: job.status.job_id.clone(),
        document_id: job.status.document_id.clone(),
        status: JobState::Queued,
        message: "accepted: the document is stored and queued for processing".into(),
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.status.job_id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// [`upload`] on the route of the original plan's gateway.
#[utoipa::path(
    post,
    path = "/api/v1/rag/upload",
    tag = "jobs",
    operation_id = "ragUpload",
    summary = "Upload a document (the gateway's route, the same as POST /api/v1/jobs)",
    description = "Stores the file durably (fsync) and queues a job; answers at once with 202. Jobs run one at a time per node, in upload order; follow one with `GET /api/v1/jobs/{id}`, its events or the WebSocket. Identical bytes already indexed under the same `document_id` complete at once with `duplicate: true`.",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Accepted: the bytes are on disk (fsynced) and the job is queued", body = UploadResponse,
            headers(("Location" = String, description = "The job: `/api/v1/jobs/{job_id}`"))),
        (status = 400, description = "`invalid_request`: not a multipart form, a malformed one, an unknown field, a field given twice (two `file` parts), no `file`, invalid metadata, document id, chunking or language", body = ErrorBody),
        (status = 408, description = "`upload_stalled`: the upload sent nothing for `http.body_idle_timeout_secs`; its spool file is removed", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the file is larger than `max_upload_bytes`; `field_too_large`: `metadata` above `http.max_metadata_bytes` or another field above `http.max_field_bytes`", body = ErrorBody),
        (status = 429, description = "`queue_full`: `max_queue_depth` jobs are waiting", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn rag_upload(
    state: State<AppState>,
    mp: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    upload(state, mp).await
}

/// `fut`, unless the client sends nothing for `idle`: a stalled upload is aborted (408) and
/// everything it holds (its connection, its spool file) is released.
async fn stalled_after<T>(
    idle: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(idle, fut).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "upload_stalled",
            format!("the upload sent nothing for {} s", idle.as_secs()),
        )
    })
}

/// The next piece of a form field as it arrives.
async fn next_chunk(
    field: &mut axum::extract::multipart::Field<'_>,
    idle: Duration,
) -> Result<Option<bytes::Bytes>, ApiError> {
    stalled_after(idle, field.chunk()).await?.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.body_text(),
            )
        } else {
            ApiError::bad_request(format!("reading the upload: {e}"))
        }
    })
}

/// Reads (and drops) the rest of a refused field, up to the hard body limit, so the client gets
/// the answer instead of a connection reset mid-send. Memory stays flat: nothing is kept.
async fn drain(field: &mut axum::extract::multipart::Field<'_>, idle: Duration) {
    while let Ok(Some(_)) = next_chunk(field, idle).await {}
}

/// A text form field, refused as soon as it passes `cap` bytes (never buffered whole first).
async fn text_field(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &str,
    cap: usize,
    idle: Duration,
) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = next_chunk(field, idle).await? {
        if buf.len() + chunk.len() > cap {
            drain(field, idle).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "field_too_large",
                format!("the {name:?} field exceeds its limit of {cap} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::bad_request(format!("the {name:?} field is not UTF-8")))
}

/// A file for the node to read and ingest, as if its bytes were uploaded.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    /// Absolute path on the node, under one of its `import_roots`.
    #[schema(example = "/sources/shared/handbook/travel.pdf")]
    path: String,
    /// As the upload's `document_id`.
    document_id: Option<String>,
    /// As the upload's `metadata`.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// As the upload's `chunking`.
    chunking: Option<ChunkingOptions>,
    /// As the upload's `language`.
    language: Option<String>,
}

/// Queues a file the node reads itself, from under one of its `import_roots` (see `import`
/// for how the file is opened). The route is among the timed ones: a file system that stops
/// answering (a hung network volume) fails the request with 408, not the client.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/import",
    tag = "jobs",
    operation_id = "importFile",
    summary = "Queue a file the node can read instead of uploading it",
    description = "The file must be a regular file under one of the node's `import_roots` (e.g. a volume mounted into the pod). It is opened once beneath its root (symbolic links that leave the root are not followed) and read like an upload of its bytes; the answer is an upload's.",
    request_body = ImportRequest,
    responses(
        (status = 202, description = "Stored and queued", body = UploadResponse),
        (status = 400, description = "`invalid_request`: a malformed or mistyped body, an unknown field; `not_a_file`: a directory, FIFO, socket or device", body = ErrorBody),
        (status = 403, description = "`import_disabled`: the node has no `import_roots`; `path_not_allowed`: any path outside them, existing or not", body = ErrorBody),
        (status = 404, description = "`not_found`: no such file inside a root", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the file is larger than `max_upload_bytes`, or the body larger than `http.max_json_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorBody),
        (status = 429, description = "`queue_full`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn import(
    State(node): State<AppState>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<Response, ApiError> {
    let job = blocking(move || -> Result<_, ApiError> {
        use crate::import::ImportError;
        use crate::node::ImportFailure;
        node.import(crate::node::ImportRequest {
            path: req.path,
            document_id: req.document_id,
            metadata: req.metadata,
            chunking: req.chunking,
            language: req.language,
        })
        .map_err(|e| match e {
            ImportFailure::Upload(e) => e.into(),
            ImportFailure::Import(e) => {
                let (status, code) = match &e {
                    ImportError::Disabled => (StatusCode::FORBIDDEN, "import_disabled"),
                    ImportError::NotAllowed(_) => (StatusCode::FORBIDDEN, "path_not_allowed"),
                    ImportError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                    ImportError::NotAFile(_) => (StatusCode::BAD_REQUEST, "not_a_file"),
                    ImportError::TooLarge { .. } => {
                        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
                    }
                    ImportError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
                };
                ApiError::new(status, code, e.to_string())
            }
        })
    })
    .await??;
    let body = UploadResponse {
        job_id: job.status.job_id.clone(),
        document_id: job.status.document_id.clone(),
        status: JobState::Queued,
        message: "accepted: the file is stored and queued for processing".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Removes a spool file when the upload does not make it into the queue (error, client gone);
/// once queued the file has been renamed and this finds nothing to remove.
struct SpoolGuard(std::path::PathBuf);

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "getJob",
    summary = "Status of a job",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody),
    )
)]
async fn get_job(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job = blocking(move || node.job(&id).map(|j| (j, id))).await??;
    match job {
        (Some(j), _) => Ok(Json(j)),
        (None, id) => Err(ApiError::not_found("job", &id)),
    }
}

/// [`get_job`] on the route of the original plan's gateway.
#[utoipa::path(
    get,
    path = "/api/v1/rag/jobs/{id}",
    tag = "jobs",
    operation_id = "ragGetJob",
    summary = "Status of a job (the gateway's route, the same as GET /api/v1/jobs/{id})",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody),
    )
)]
async fn rag_get_job(
    state: State<AppState>,
    id: Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    get_job(state, id).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "cancelJob",
    summary = "Cancel a queued job",
    description = "A queued job fails with error code `cancelled`, its bytes are dropped and no node will start it. A job that is processing or finished is not changed.",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled: the job's final status", body = JobStatus),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 409, description = "`job_not_queued`: the job is processing or finished", body = ErrorBody),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody),
    )
)]
async fn cancel_job(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let (outcome, id) = blocking(move || node.cancel_job(&id).map(|o| (o, id))).await??;
    match outcome {
        Cancel::Cancelled(job) => Ok(Json(job.status)),
        Cancel::NotFound => Err(ApiError::not_found("job", &id)),
        Cancel::NotQueued(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_not_queued",
            format!(
                "job {id} is {}; only queued jobs can be cancelled",
                state.as_str()
            ),
        )),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    status: Option<String>,
    /// The name of `status` in earlier versions (an alias).
    #[param(value_type = Option<JobState>)]
    state: Option<String>,
    /// Jobs per page; above 1000 counts as 1000.
    #[param(minimum = 1, default = 100)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(100) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n => Ok(n.min(1000)),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    operation_id = "listJobs",
    summary = "List jobs, newest first",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "`invalid_request`: an unknown status, a limit of 0 or not a number, an unknown parameter", body = ErrorBody),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody),
    )
)]
async fn list_jobs(
    State(node): State<AppState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(p) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let state = match p.status.as_deref().or(p.state.as_deref()) {
        None | Some("") => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status {s:?} (queued, processing, completed, failed)"
            ))
        })?),
    };
    let limit = page_limit(p.limit)?;
    let (jobs, next) = blocking(move || node.jobs(state, limit, p.cursor.as_deref())).await??;
    Ok(Json(JobList {
        jobs,
        next_cursor: next,
    }))
}

/// Server-Sent Events: the job's current status, then every change, ending after a final state.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/events",
    tag = "jobs",
    operation_id = "jobEvents",
    summary = "Server-Sent Events of a job",
    description = "Each event is `event: job` with a `JobStatus` (JSON) as its `data`: the current status first, then every change; the stream ends after `completed` or `failed`. A comment line keeps an idle stream alive every 15 s.",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "An event stream; each event's data is a JobStatus", content_type = "text/event-stream", body = String),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 503, description = "`queue_unavailable`: the cluster's Redis is down or does not answer", body = ErrorBody),
    )
)]
async fn job_events(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading the current state so no update falls in between.
    let rx = node.job_updates();
    let (n, jid) = (node.clone(), id.clone());
    let current = blocking(move || n.job(&jid))
        .await??
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    struct St {
        node: Arc<Node>,
        rx: broadcast::Receiver<JobStatus>,
        id: String,
        first: Option<JobStatus>,
        done: bool,
    }
    let st = St {
        node,
        rx,
        id,
        first: Some(current),
        done: false,
    };
    let events = stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let status = match st.first.take() {
            Some(s) => s,
            None => loop {
                match st.rx.recv().await {
                    Ok(s) if s.job_id == st.id => break s,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed updates: the stored status is the truth.
                        match st.node.job(&st.id) {
                            Ok(Some(j)) => break j,
                            _ => return None,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        };
        st.done = status.state.is_terminal();
        let ev = Event::default()
            .event("job")
            .json_data(&status)
            .unwrap_or_else(|_| Event::default());
        Some((Ok(ev), st))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WsParams {
    /// Only this job's updates (a `subscribe` message replaces the filter).
    job_id: Option<String>,
}

/// WebSocket: streams job updates as JSON text messages. `?job_id=` or a message
/// `{"subscribe": ["id", ...]}` narrows the stream; an empty list means every job.
#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "jobs",
    operation_id = "jobUpdatesWebSocket",
    summary = "WebSocket of job updates",
    description = "Upgrade to a WebSocket. Each text message from the node is a `JobStatus` (JSON), for every job; `?job_id=` or a message `{\"subscribe\": [ids]}` narrows the stream (an empty list: all jobs again). A message that is not such an object, and updates dropped because the client reads too slowly, are answered with an `ErrorBody` message (`invalid_request`, `lagged`).",
    params(WsParams),
    responses(
        (status = 101, description = "Switching protocols: the WebSocket is open"),
        (status = 400, description = "`invalid_request`: not a WebSocket handshake", body = ErrorBody),
    )
)]
async fn ws(
    State(node): State<AppState>,
    Query(p): Query<WsParams>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| ws_session(socket, node, p.job_id))
}

async fn ws_session(mut socket: WebSocket, node: Arc<Node>, job_id: Option<String>) {
    let mut rx = node.job_updates();
    let mut filter: HashSet<String> = job_id.into_iter().collect();
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(status) => {
                    if !filter.is_empty() && !filter.contains(&status.job_id) {
                        continue;
                    }
                    let text = serde_json::to_string(&status).unwrap_or_default();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let msg = serde_json::json!({"code": "lagged", "message": format!("{n} updates were dropped; re-read job status")});
                    if socket.send(Message::Text(msg.to_string().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    #[derive(Deserialize)]
                    struct Sub { subscribe: Vec<String> }
                    match serde_json::from_str::<Sub>(&t) {
                        Ok(s) => filter = s.subscribe.into_iter().collect(),
                        Err(e) => {
                            let msg = serde_json::json!({"code": "invalid_request", "message": format!("expected {{\"subscribe\": [job ids]}}: {e}")});
                            let _ = socket.send(Message::Text(msg.to_string().into())).await;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/search",
    tag = "search",
    operation_id = "search",
    summary = "Semantic search",
    description = "Embeds the query and returns the chunks most similar to it (cosine similarity), best first. Searches never wait for ingestion.",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Hits, best first", body = SearchResponse),
        (status = 400, description = "`invalid_request`: malformed or mistyped JSON, an unknown or missing field, a value out of range", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is larger than `http.max_json_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorBody),
    )
)]
async fn search(
    State(node): State<AppState>,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Response, ApiError> {
    let out = blocking(move || node.search(&req)).await??;
    Ok(Json(out).into_response())
}

fn document_info(d: DocumentRecord) -> DocumentInfo {
    DocumentInfo {
        document_id: d.document_id,
        filename: d.filename,
        content_type: d.content_type,
        sha256: d.sha256,
        size_bytes: d.size_bytes,
        pages: d.pages,
        chunks: d.chunks,
        metadata: d.metadata,
        created_at: rfc3339(d.created_at_ms),
        updated_at: rfc3339(d.updated_at_ms),
        job_id: d.job_id,
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DocParams {
    /// Documents per page; above 1000 counts as 1000.
    #[param(minimum = 1, default = 100)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/documents",
    tag = "documents",
    operation_id = "listDocuments",
    summary = "List documents in id order",
    params(DocParams),
    responses(
        (status = 200, description = "A page of documents", body = DocumentList),
        (status = 400, description = "`invalid_request`: a limit of 0 or not a number, an unknown parameter", body = ErrorBody),
    )
)]
async fn list_documents(
    State(node): State<AppState>,
    q: Result<Query<DocParams>, QueryRejection>,
) -> Result<Json<DocumentList>, ApiError> {
    let Query(p) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page_limit(p.limit)?;
    let (docs, next) = blocking(move || node.documents(p.cursor.as_deref(), limit))
        .await?
        .map_err(ApiError::internal)?;
    Ok(Json(DocumentList {
        documents: docs.into_iter().map(document_info).collect(),
        next_cursor: next,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/documents/{id}",
    tag = "documents",
    operation_id = "getDocument",
    summary = "A document",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 200, description = "The document", body = DocumentInfo),
        (status = 404, description = "`not_found`: no such document", body = ErrorBody),
    )
)]
async fn get_document(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DocumentInfo>, ApiError> {
    let i = id.clone();
    let doc = blocking(move || node.document(&i))
        .await?
        .map_err(ApiError::internal)?;
    doc.map(|d| Json(document_info(d)))
        .ok_or_else(|| ApiError::not_found("document", &id))
}

#[utoipa::path(
    delete,
    path = "/api/v1/documents/{id}",
    tag = "documents",
    operation_id = "deleteDocument",
    summary = "Delete a document and its chunks",
    description = "Removes the document and its chunks from search. Needs the admin token when the node has one. Neither an invalid nor an unknown id reaches the cluster's index log.",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 200, description = "Deleted", body = DeleteResponse),
        (status = 400, description = "`invalid_request`: not a valid document id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such document", body = ErrorBody),
    )
)]
async fn delete_document(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let i = id.clone();
    match blocking(move || node.delete_document(&i)).await? {
        Ok(n) => Ok(Json(DeleteResponse {
            document_id: id,
            deleted: true,
            chunks_removed: n,
        })),
        Err(DeleteError::Invalid(m)) => Err(ApiError::bad_request(m)),
        Err(DeleteError::NotFound(_)) => Err(ApiError::not_found("document", &id)),
        Err(DeleteError::Internal(e)) => Err(ApiError::internal(format!("{e:#}"))),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/embed",
    tag = "embeddings",
    operation_id = "embed",
    summary = "Embed texts with the node's model",
    request_body = EmbedRequest,
    responses(
        (status = 200, description = "Unit vectors, in the order of the texts", body = EmbedResponse),
        (status = 400, description = "`invalid_request`: malformed or mistyped JSON, no texts or more than 256", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is larger than `http.max_json_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = ErrorBody),
    )
)]
async fn embed(
    State(node): State<AppState>,
    ApiJson(req): ApiJson<EmbedRequest>,
) -> Result<Json<EmbedResponse>, ApiError> {
    if req.texts.is_empty() || req.texts.len() > MAX_EMBED_TEXTS {
        return Err(ApiError::bad_request(format!(
            "texts must hold 1 to {MAX_EMBED_TEXTS} strings"
        )));
    }
    let n = node.clone();
    let embeddings = blocking(move || {
        let refs: Vec<&str> = req.texts.iter().map(String::as_str).collect();
        n.embed(&refs)
    })
    .await?
    .map_err(ApiError::internal)?;
    Ok(Json(EmbedResponse {
        model: node.model_id().to_owned(),
        dimensions: node.dimensions(),
        embeddings,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "probes",
    operation_id = "health",
    summary = "Detailed health: queue, index integrity, embedding and search self-tests",
    responses(
        (status = 200, description = "Every check passed", body = HealthReport),
        (status = 503, description = "Degraded: the failing checks say why", body = HealthReport),
    )
)]
async fn health(State(node): State<AppState>) -> Result<Response, ApiError> {
    let report = blocking(move || node.health()).await?;
    let status = if report.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(report)).into_response())
}

// Described for the OpenAPI document; `livez` and `readyz` answer it (the HTTP tests check
// their answers against it).
/// The answer of the probes.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Probe {
    /// `ok` (`/livez`) or `ready` (`/readyz`).
    #[schema(example = "ready")]
    status: String,
    /// Cluster mode: why Redis cannot be used now; the node stays ready and serves searches
    /// from its own index.
    #[schema(required = false)]
    degraded: String,
}

#[utoipa::path(
    get,
    path = "/livez",
    tag = "probes",
    operation_id = "livez",
    summary = "Liveness: the process is up",
    responses((status = 200, description = "The process is alive", body = Probe))
)]
async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    operation_id = "readyz",
    summary = "Readiness: model loaded, index open, queue answering",
    description = "Answers within `http.probe_timeout_ms`. In cluster mode an unreachable or hanging Redis leaves the node ready (`degraded` says why): it still serves searches from its own index.",
    responses(
        (status = 200, description = "Ready", body = Probe),
        (status = 503, description = "`not_ready`: the queue does not answer", body = ErrorBody),
    )
)]
async fn readyz(State(node): State<AppState>) -> Response {
    // The model and index are loaded before the server starts; the queue must answer. In a
    // cluster an unreachable Redis does not make the node unready: it still serves searches
    // from its own index (uploads get 503 meanwhile). The probe answers within
    // `probe_timeout_ms` whatever Redis does: a Redis that hangs instead of refusing would
    // otherwise fail every node's probe at once and empty the Service.
    let cluster = node.is_cluster();
    let degraded =
        |m: String| Json(serde_json::json!({"status": "ready", "degraded": m})).into_response();
    if let Some(m) = node.redis_known_down() {
        return degraded(m);
    }
    let bound = Duration::from_millis(node.config().http.probe_timeout_ms.max(1));
    let answer = tokio::time::timeout(bound, blocking(move || node.queue_depth())).await;
    match answer {
        Ok(Ok(Ok(_))) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Ok(Err(QueueError::Unavailable(m)))) if cluster => degraded(m),
        Err(_) if cluster => degraded(format!(
            "Redis did not answer within {} ms",
            bound.as_millis()
        )),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the queue did not answer within {} ms", bound.as_millis()),
        )
        .into_response(),
        Ok(Ok(Err(e))) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("queue: {e}"),
        )
        .into_response(),
        Ok(Err(e)) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    responses((status = 200, description = "The Prometheus text exposition format (0.0.4)", content_type = "text/plain", body = String))
)]
async fn metrics(State(node): State<AppState>) -> Result<Response, ApiError> {
    let text = blocking(move || node.metrics_text()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    summary = "This document",
    description = "OpenAPI 3.1, generated from the node's router and the rag-api types.",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
async fn openapi(Extension(doc): Extension<ApiDocument>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const METHODS: [&str; 9] = [
        "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
    ];

    /// (method, path) of every route the router holds, read from the router itself. axum has no
    /// API that lists routes; its `Debug` output shows each route's path and the methods it
    /// answers (`get: None` for one it does not). A change of that output fails the asserts
    /// here, never passes them silently.
    fn served(router: &Router<AppState>) -> BTreeSet<(String, String)> {
        let text = format!("{router:?}");
        let routed = text
            .split("fallback_router:")
            .next()
            .expect("a path router");
        let (routes, paths) = routed
            .split_once("node: Node { paths: {")
            .expect("the Debug output of axum's router lists its paths");
        let id = |piece: &str| piece.split(')').next().unwrap().to_owned();
        let paths: BTreeMap<String, String> = paths
            .split("RouteId(")
            .skip(1)
            .map(|p| {
                let path = p.split('"').nth(1).expect("a quoted path");
                (id(p), path.to_owned())
            })
            .collect();
        let mut out = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for piece in routes.split("RouteId(").skip(1) {
            ids.insert(id(piece));
            let path = &paths[&id(piece)];
            for m in METHODS {
                let value = piece
                    .split_once(&format!(" {m}: "))
                    .unwrap_or_else(|| panic!("no `{m}` in the route of {path}: {piece}"))
                    .1;
                if !value.starts_with("None") {
                    out.insert((m.to_owned(), path.clone()));
                }
            }
        }
        assert_eq!(
            ids,
            paths.keys().cloned().collect(),
            "every route has a path"
        );
        out
    }

    fn documented(api: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(api).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (m, _) in item.as_object().unwrap() {
                assert!(METHODS.contains(&m.as_str()), "{path}: {m} is not a method");
                out.insert((m.clone(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn the_document_describes_exactly_the_routes_of_the_router() {
        let (router, api) = routes(&RouteLimits::ANY);
        let served = served(&router);
        assert!(
            served.contains(&("get".into(), "/api/v1/openapi.json".into())) && served.len() > 15,
            "{served:?}"
        );
        let documented = documented(&api);
        assert_eq!(
            served.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "routes the document lacks"
        );
        assert_eq!(
            documented.difference(&served).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "documented routes the router does not serve"
        );
    }

    /// Every `$ref` of `v`.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match x.as_str() {
                        Some(r) if k == "$ref" => out.push(r.to_owned()),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_operation_is_complete() {
        let doc = serde_json::to_value(openapi_document()).unwrap();
        let version = doc["openapi"].as_str().unwrap();
        assert!(version.starts_with("3.1"), "{version}");
        let tags: BTreeSet<&str> = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let what = format!("{method} {path}");
                let id = op["operationId"].as_str().expect(&what);
                assert!(ids.insert(id.to_owned()), "{what}: operationId {id} twice");
                assert!(op["summary"].is_string(), "{what}: no summary");
                let tag = op["tags"][0].as_str().expect(&what);
                assert!(tags.contains(tag), "{what}: undeclared tag {tag}");
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{what}: no responses");
                for (status, r) in responses {
                    assert!(r["description"].is_string(), "{what} {status}");
                    match r["content"].as_object() {
                        Some(content) => {
                            for (media, c) in content {
                                assert!(c["schema"].is_object(), "{what} {status} {media}");
                            }
                        }
                        None => assert_eq!(status, "101", "{what} {status}: no content"),
                    }
                }
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "path" {
                        let name = p["name"].as_str().unwrap();
                        assert!(path.contains(&format!("{{{name}}}")), "{what}: {name}");
                    }
                }
                // The public routes are those `auth` lets through without a credential.
                let m: axum::http::Method = method.to_uppercase().parse().unwrap();
                let public = crate::auth::required(&m, path) == crate::auth::Access::Public;
                let security = op["security"].as_array().expect(&what);
                assert_eq!(security.is_empty(), public, "{what}");
                assert_eq!(op["responses"]["401"].is_object(), !public, "{what}");
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").expect(&r);
            assert!(doc["components"]["schemas"][name].is_object(), "{r}");
        }
        // What the handlers enforce and what the schemas state are the same numbers.
        let schemas = &doc["components"]["schemas"];
        let k = &schemas["SearchRequest"]["properties"]["k"];
        assert_eq!(k["maximum"], rag_api::MAX_K as f64);
        assert_eq!(k["default"], rag_api::DEFAULT_K);
        let texts = &schemas["EmbedRequest"]["properties"]["texts"];
        assert_eq!(texts["maxItems"], MAX_EMBED_TEXTS);
    }
}
