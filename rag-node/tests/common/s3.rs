//! moto's S3-compatible server (installed by scripts/setup-moto.sh) on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MotoServer {
    child: Child,
    pub port: u16,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RAGNODE_MOTO_SERVER") {
        return p.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    cache.join("rag-node/venv-moto/bin/moto_server")
}

impl MotoServer {
    pub async fn start() -> MotoServer {
        let port = super::free_port();
        let child = Command::new(binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server (scripts/setup-moto.sh installs it)");
        let s = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(s.endpoint()).await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn create_bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "creating bucket: {}", r.status());
    }

    /// Ids of the complete snapshots (those with a manifest) under `bucket/prefix/`, sorted.
    pub async fn snapshot_ids(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = reqwest::get(format!(
            "{}/{bucket}?list-type=2&prefix={prefix}/",
            self.endpoint()
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        let mut ids: Vec<String> = xml
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .filter_map(|k| k.strip_prefix(&format!("{prefix}/")))
            .filter_map(|k| k.strip_suffix("/manifest.json"))
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    }

    /// What a process needs to reach this server through object_store's S3 client.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
