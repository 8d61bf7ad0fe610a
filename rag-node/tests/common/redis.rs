//! A real `redis-server` per test, on a free loopback port, with its data in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
    /// `rediss://` with this password, when started by [`RedisServer::start_tls`].
    tls_password: Option<String>,
}

impl RedisServer {
    /// `appendfsync always`: an acknowledged write survives `kill -9` of Redis.
    pub fn start(dir: &Path) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: super::free_port(),
            dir: dir.to_owned(),
            extra: Vec::new(),
            tls_password: None,
        };
        std::fs::create_dir_all(dir).unwrap();
        r.spawn();
        r
    }

    /// TLS only (no plain port), a password, and a CA of its own at `dir/ca.crt`.
    pub fn start_tls(dir: &Path, password: &str) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap();
        let sh = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=rag-test-ca",
        ]);
        sh(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        sh(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let port = super::free_port();
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let mut r = RedisServer {
            child: None,
            port,
            dir: dir.to_owned(),
            extra: vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                p("server.crt"),
                "--tls-key-file".into(),
                p("server.key"),
                "--tls-ca-cert-file".into(),
                p("ca.crt"),
                "--tls-auth-clients".into(),
                "no".into(),
                "--requirepass".into(),
                password.into(),
            ],
            tls_password: Some(password.into()),
        };
        r.spawn();
        r
    }

    fn cli_args(&self) -> Vec<String> {
        let mut a = vec!["-p".to_string(), self.port.to_string()];
        if let Some(pw) = &self.tls_password {
            let ca = self.dir.join("ca.crt").to_string_lossy().into_owned();
            a.extend([
                "--tls".into(),
                "--cacert".into(),
                ca,
                "-a".into(),
                pw.clone(),
                "--no-auth-warning".into(),
            ]);
        }
        a
    }

    fn spawn(&mut self) {
        let mut port_args = vec!["--port".to_string(), self.port.to_string()];
        if !self.extra.is_empty() {
            port_args = self.extra.clone();
        }
        let child = Command::new("redis-server")
            .args(&port_args)
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (installed by scripts/install-deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("redis-cli")
                .args(self.cli_args())
                .arg("ping")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        match &self.tls_password {
            Some(pw) => format!("rediss://:{pw}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the server: `STOP` makes a Redis that hangs
    /// (connections accepted by the kernel, never answered) instead of one that refuses.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts again on the same port and data (its append-only file).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(self.cli_args())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
