//! Typed async client of the rag-node HTTP API (the original plan's RAGServiceClient).
//!
//! - Idempotent calls (reads, search, delete) are retried on transport errors, `429`, `502`,
//!   `503` and `504`, with exponential backoff and full jitter, honouring `Retry-After`.
//! - Uploads are retried only when the node said it did not take them (`429`, `503`): a
//!   transport error mid-upload may have been accepted, so it is reported, not repeated.
//! - A circuit breaker stops calling a node that keeps failing, and lets one trial call
//!   through after a pause.

mod breaker;
mod retry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use breaker::CircuitBreaker;
use futures_util::{Stream, StreamExt};
use rag_api::{
    DeleteResponse, DocumentInfo, DocumentList, ErrorBody, HealthReport, JobStatus, SearchRequest,
    SearchResponse, UploadResponse, API_PREFIX,
};
use reqwest::{Method, StatusCode};
pub use retry::RetryPolicy;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with an error (`{code, message}`).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the circuit breaker is open after repeated failures; retry later")]
    CircuitOpen,
    #[error("unexpected response: {0}")]
    Decode(String),
    #[error("job {job_id} did not finish within {waited:?} (last state {state:?})")]
    WaitTimeout {
        job_id: String,
        waited: Duration,
        state: rag_api::JobState,
    },
}

impl Error {
    /// Worth retrying an idempotent call.
    fn retryable(&self) -> bool {
        match self {
            Error::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Error::Transport(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            _ => false,
        }
    }

    /// The node refused without storing anything: safe to retry even an upload.
    fn rejected(&self) -> bool {
        matches!(
            self,
            Error::Api {
                status: 429 | 503,
                ..
            }
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Counts against the node's health (client errors like 404 do not).
    fn is_failure(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status >= 500,
            Error::Transport(_) => true,
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Options of an upload.
#[derive(Debug, Clone, Default)]
pub struct Upload {
    pub document_id: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Chunking of this document instead of the node's default.
    pub chunking: Option<rag_api::ChunkingOptions>,
    /// The document's language (`pt`, `en`, …; `auto` = detect), for the keyword index's
    /// analyzers; default: the node's `keyword.default_language`, else detected.
    pub language: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    api_key: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
    failure_threshold: u32,
    open_for: Duration,
}

impl ClientBuilder {
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Time limit of one HTTP request (uploads included).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }

    /// Open the circuit after `failures` consecutive failures, for `open_for`.
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.failure_threshold = failures;
        self.open_for = open_for;
        self
    }

    pub fn build(self) -> Result<Client> {
        let http = reqwest::Client::builder().timeout(self.timeout).build()?;
        Ok(Client {
            http,
            base: self.base.trim_end_matches('/').to_owned(),
            api_key: self.api_key,
            retry: self.retry,
            breaker: Arc::new(CircuitBreaker::new(self.failure_threshold, self.open_for)),
        })
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    retry: RetryPolicy,
    breaker: Arc<CircuitBreaker>,
}

impl Client {
    /// `base` is the node's URL, e.g. `http://127.0.0.1:8080`.
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            api_key: None,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }

    pub fn new(base: impl Into<String>) -> Result<Client> {
        Client::builder(base).build()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// One attempt: the circuit breaker, the request, the error shape.
    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        if !self.breaker.allow() {
            return Err(Error::CircuitOpen);
        }
        let result = async {
            let resp = req.send().await?;
            decode(resp).await
        }
        .await;
        match &result {
            Err(e) if e.is_failure() => self.breaker.failure(),
            _ => self.breaker.success(),
        }
        result
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy gives up.
    async fn with_retries<T, F, Fut>(&self, only_rejections: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut n = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let again = if only_rejections {
                        e.rejected()
                    } else {
                        e.retryable()
                    };
                    n += 1;
                    if !again || n >= self.retry.max_attempts {
                        return Err(e);
                    }
                    let delay = e
                        .retry_after()
                        .map(|d| d.min(self.retry.max_delay))
                        .unwrap_or_else(|| self.retry.delay(n));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        self.with_retries(false, || self.send(self.request(Method::GET, &url)))
            .await
    }

    /// Uploads a document; the answer comes as soon as it is stored and queued.
    pub async fn upload(
        &self,
        filename: &str,
        bytes: Vec<u8>,
        opts: &Upload,
    ) -> Result<UploadResponse> {
        let url = self.url("/jobs");
        let metadata =
            serde_json::to_string(&opts.metadata).map_err(|e| Error::Decode(e.to_string()))?;
        self.with_retries(true, || {
            let mut form = reqwest::multipart::Form::new()
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(bytes.clone()).file_name(filename.to_owned()),
                )
                .text("metadata", metadata.clone());
            if let Some(id) = &opts.document_id {
                form = form.text("document_id", id.clone());
            }
            if let Some(c) = &opts.chunking {
                form = form.text("chunking", serde_json::json!(c).to_string());
            }
            if let Some(l) = &opts.language {
                form = form.text("language", l.clone());
            }
            self.send(self.request(Method::POST, &url).multipart(form))
        })
        .await
    }

    /// Queues a file the node reads itself (under one of its `import_roots`).
    pub async fn import(&self, path: &str, opts: &Upload) -> Result<UploadResponse> {
        let url = self.url("/jobs/import");
        let body = serde_json::json!({
            "path": path,
            "document_id": opts.document_id,
            "metadata": opts.metadata,
            "chunking": opts.chunking,
            "language": opts.language,
        });
        self.with_retries(true, || {
            self.send(self.request(Method::POST, &url).json(&body))
        })
        .await
    }

    /// Cancels a queued job (409 `job_not_queued` once it started); returns its final status.
    pub async fn cancel_job(&self, id: &str) -> Result<JobStatus> {
        let url = self.url(&format!("/jobs/{id}"));
        self.with_retries(false, || self.send(self.request(Method::DELETE, &url)))
            .await
    }

    pub async fn job(&self, id: &str) -> Result<JobStatus> {
        self.get(&format!("/jobs/{id}")).await
    }

    /// Polls the job (backing off from 100 ms to 2 s) until it is completed or failed.
    pub async fn wait_for_job(&self, id: &str, timeout: Duration) -> Result<JobStatus> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let job = self.job(id).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            if started.elapsed() >= timeout {
                return Err(Error::WaitTimeout {
                    job_id: id.to_owned(),
                    waited: started.elapsed(),
                    state: job.state,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// The job's updates as they happen (Server-Sent Events), ending after its final state.
    pub async fn events(&self, id: &str) -> Result<impl Stream<Item = Result<JobStatus>>> {
        let url = self.url(&format!("/jobs/{id}/events"));
        let resp = self
            .request(Method::GET, &url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(decode::<JobStatus>(resp)
                .await
                .err()
                .unwrap_or_else(|| Error::Decode("an error status with a success body".into())));
        }
        let mut buf = String::new();
        let mut done = false;
        Ok(resp
            .bytes_stream()
            .map(move |chunk| -> Vec<Result<JobStatus>> {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => return vec![Err(e.into())],
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                let mut out = Vec::new();
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    let data: String = frame
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect::<Vec<_>>()
                        .join("\n");
                    if !data.is_empty() && !done {
                        let parsed: Result<JobStatus> =
                            serde_json::from_str(&data).map_err(|e| Error::Decode(e.to_string()));
                        done = parsed.as_ref().is_ok_and(|j| j.state.is_terminal());
                        out.push(parsed);
                    }
                }
                out
            })
            .flat_map(futures_util::stream::iter)
            .scan(false, |finished, item| {
                if *finished {
                    return futures_util::future::ready(None);
                }
                *finished = item.as_ref().is_ok_and(|j| j.state.is_terminal());
                futures_util::future::ready(Some(item))
            }))
    }

    pub async fn search(&self, req: &SearchRequest) -> Result<SearchResponse> {
        let url = self.url("/search");
        self.with_retries(false, || {
            self.send(self.request(Method::POST, &url).json(req))
        })
        .await
    }

    pub async fn documents(&self, cursor: Option<&str>, limit: usize) -> Result<DocumentList> {
        let mut path = format!("/documents?limit={limit}");
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        self.get(&path).await
    }

    pub async fn document(&self, id: &str) -> Result<DocumentInfo> {
        self.get(&format!("/documents/{id}")).await
    }

    /// Deleting twice is harmless, so this is retried like a read.
    pub async fn delete_document(&self, id: &str) -> Result<DeleteResponse> {
        let url = self.url(&format!("/documents/{id}"));
        self.with_retries(false, || self.send(self.request(Method::DELETE, &url)))
            .await
    }

    /// The detailed health report; a degraded node answers 503 with the report, which is
    /// returned as well (check `status`).
    pub async fn health(&self) -> Result<HealthReport> {
        let url = self.url("/health");
        if !self.breaker.allow() {
            return Err(Error::CircuitOpen);
        }
        let resp = self.request(Method::GET, &url).send().await?;
        let text = resp.text().await?;
        serde_json::from_str(&text).map_err(|_| Error::Decode(text))
    }
}

/// Success bodies become `T`; error bodies become [`Error::Api`].
async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = resp.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()));
    }
    let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
    Err(Error::Api {
        status: status.as_u16(),
        code: body
            .as_ref()
            .map(|b| b.code.clone())
            .unwrap_or_else(|| code_for(status)),
        message: body
            .map(|b| b.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        retry_after,
    })
}

fn code_for(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace(' ', "_")
}
