//! The HTTP API (axum). Routes are listed in [`ROUTES`] and described by `openapi.json`, served
//! at `/api/v1/openapi.json`; a test keeps the two in step.

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
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use rag_api::{
    ChunkingOptions, DeleteResponse, DocumentInfo, DocumentList, EmbedRequest, EmbedResponse,
    JobList, JobState, JobStatus, SearchRequest, UploadResponse,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::broadcast;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use error::code_for_status;
pub use error::ApiError;
pub use server::{serve, ServerLimits};

use crate::node::{DeleteError, Node, UploadContent, UploadRequest};
use crate::queue::{Cancel, QueueError};
use crate::time::rfc3339;

/// Every route: (method, path). The OpenAPI document must describe each of them.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{id}"),
    ("delete", "/api/v1/jobs/{id}"),
    ("post", "/api/v1/jobs/import"),
    ("get", "/api/v1/jobs/{id}/events"),
    ("post", "/api/v1/rag/upload"),
    ("get", "/api/v1/rag/jobs/{id}"),
    ("get", "/api/v1/ws"),
    ("post", "/api/v1/search"),
    ("get", "/api/v1/documents"),
    ("get", "/api/v1/documents/{id}"),
    ("delete", "/api/v1/documents/{id}"),
    ("post", "/api/v1/embed"),
    ("get", "/api/v1/health"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/livez"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

pub const OPENAPI: &str = include_str!("openapi.json");

const MAX_EMBED_TEXTS: usize = 256;

type AppState = Arc<Node>;

pub fn router(node: Arc<Node>) -> Router {
    let timeout = Duration::from_secs(node.config().request_timeout_secs.max(1));
    let upload_limit = node.config().max_upload_bytes as usize + (1 << 20);
    // The one limit of JSON bodies: axum's extractors apply it while reading.
    let json_limit = DefaultBodyLimit::max(node.config().http.max_json_bytes);

    // Plain request/response routes get a time limit; uploads and streams do not.
    let timed = Router::new()
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/api/v1/rag/jobs/{id}", get(get_job))
        .route("/api/v1/search", post(search))
        .route("/api/v1/documents", get(list_documents))
        .route(
            "/api/v1/documents/{id}",
            get(get_document).delete(delete_document),
        )
        .route("/api/v1/embed", post(embed))
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/jobs/import", post(import))
        .layer(json_limit)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    let uploads = Router::new()
        .route("/api/v1/jobs", post(upload))
        .route("/api/v1/rag/upload", post(upload))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(upload_limit));
    let streams = Router::new()
        .route("/api/v1/jobs/{id}/events", get(job_events))
        .route("/api/v1/ws", get(ws));

    Router::new()
        .merge(timed)
        .merge(uploads)
        .merge(streams)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
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
            other => {
                return Err(bad(format!(
                    "unknown form field {other:?} (expected file, metadata, document_id, chunking)"
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    path: String,
    document_id: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    chunking: Option<ChunkingOptions>,
}

/// Queues a file the node reads itself, from under one of its `import_roots` (see `import`
/// for how the file is opened). The route is among the timed ones: a file system that stops
/// answering (a hung network volume) fails the request with 408, not the client.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    /// The name of `status` in earlier versions.
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(100) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n => Ok(n.min(1000)),
    }
}

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

#[derive(Deserialize)]
struct WsParams {
    job_id: Option<String>,
}

/// WebSocket: streams job updates as JSON text messages. `?job_id=` or a message
/// `{"subscribe": ["id", ...]}` narrows the stream; an empty list means every job.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

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

async fn health(State(node): State<AppState>) -> Result<Response, ApiError> {
    let report = blocking(move || node.health()).await?;
    let status = if report.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(report)).into_response())
}

async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

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

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "openapi.json lacks {method} {path}"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| {
                p.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters")
                    .count()
            })
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "openapi.json documents routes that do not exist"
        );
    }
}
