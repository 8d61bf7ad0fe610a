//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rag_node::embed::Embedder;

/// The model installed by scripts/setup-model.sh (the test command runs it first).
pub fn model_dir() -> PathBuf {
    std::env::var_os("RAGNODE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(rag_node::embed::default_model_dir)
}

pub fn embedder() -> Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        Arc::new(Embedder::load(&model_dir()).expect("model installed by scripts/setup-model.sh"))
    })
    .clone()
}

/// Fixtures kept in the repository (`rag-node/tests/fixtures`, described in its README).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub mod corpus;
pub mod openapi;
pub mod redis;
pub mod s3;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `rag-node serve` process on a free loopback port. Its helpers (`send`, `upload`,
/// `get_json`, `job`, `search`, …) check every answer against the OpenAPI document the node
/// serves (see `openapi`).
pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    spec: tokio::sync::OnceCell<Arc<openapi::Spec>>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub async fn start(data_dir: &std::path::Path, extra: &[&str]) -> Server {
        Server::start_with_key(data_dir, extra, None).await
    }

    /// A server whose client sends `key` as its bearer token.
    pub async fn start_with_key(
        data_dir: &std::path::Path,
        extra: &[&str],
        key: Option<&str>,
    ) -> Server {
        Server::start_full(data_dir, extra, key, &[]).await
    }

    /// … with extra environment variables for the process.
    pub async fn start_full(
        data_dir: &std::path::Path,
        extra: &[&str],
        key: Option<&str>,
        envs: &[(String, String)],
    ) -> Server {
        let port = free_port();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {k}").parse().unwrap(),
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rag-node"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .arg("--model-dir")
            .arg(model_dir())
            .args(extra)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting rag-node");
        let s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(headers)
                .build()
                .unwrap(),
            spec: tokio::sync::OnceCell::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = s.client.get(format!("{}/readyz", s.base)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server did not become ready; log: {}",
                std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The OpenAPI document this node serves (fetched once).
    pub async fn spec(&self) -> Arc<openapi::Spec> {
        self.spec
            .get_or_init(|| async {
                let r = self
                    .client
                    .get(self.url("/api/v1/openapi.json"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                Arc::new(openapi::Spec::new(r.json().await.unwrap()))
            })
            .await
            .clone()
    }

    /// Checks an answer to `method path` against the node's OpenAPI document.
    pub async fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) {
        self.spec()
            .await
            .check(method, path, status, content_type, body);
    }

    /// Sends `req` (built on any client) and checks the answer against the node's OpenAPI
    /// document before handing it back, body included.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let spec = self.spec().await;
        let (client, req) = req.build_split();
        let req = req.unwrap();
        let (method, path) = (req.method().clone(), req.url().path().to_owned());
        let r = client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, headers) = (r.status(), r.headers().clone());
        let body = r.bytes().await.unwrap();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        spec.check(method.as_str(), &path, status.as_u16(), content_type, &body);
        let mut back = axum::http::Response::new(body);
        *back.status_mut() = status;
        *back.headers_mut() = headers;
        reqwest::Response::from(back)
    }

    pub async fn upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        self.send(self.client.post(self.url("/api/v1/jobs")).multipart(form))
            .await
    }

    /// GET `path` (e.g. `/api/v1/health`) and decode its JSON body, whatever the status.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.send(self.client.get(self.url(path)))
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.send(self.client.get(self.url(path)))
            .await
            .text()
            .await
            .unwrap()
    }

    pub async fn job(&self, id: &str) -> rag_api::JobStatus {
        self.get_json(&format!("/api/v1/jobs/{id}")).await
    }

    /// Polls until the job is completed or failed.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> rag_api::JobStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.job(id).await;
            if j.state.is_terminal() {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} still {:?} after {timeout:?}",
                j.state
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn search(&self, req: &rag_api::SearchRequest) -> rag_api::SearchResponse {
        let r = self
            .send(self.client.post(self.url("/api/v1/search")).json(req))
            .await;
        assert_eq!(
            r.status(),
            200,
            "search failed: {}",
            r.text().await.unwrap_or_default()
        );
        r.json().await.unwrap()
    }

    /// Graceful stop (SIGTERM) and wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not stop after SIGTERM");
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
