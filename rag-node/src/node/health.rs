//! The node's health report: the queue, the index's integrity, the index log (cluster mode), an
//! embedding of a fixed text and a search with it — each check timed.

use std::time::Instant;

use rag_api::{HealthCheck, HealthReport, SearchRequest};

use super::Node;

fn check(name: &str, f: impl FnOnce() -> Result<String, String>) -> HealthCheck {
    let t = Instant::now();
    let (ok, message) = match f() {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    HealthCheck {
        name: name.into(),
        ok,
        message,
        took_ms: t.elapsed().as_secs_f64() * 1000.0,
    }
}

impl Node {
    /// The detailed report behind `/api/v1/health` and `rag-node health`: each check with its
    /// outcome and how long it took.
    pub fn health(&self) -> HealthReport {
        let mut depth = 0;
        let mut checks = vec![check("queue", || {
            depth = self.queue.depth().map_err(|e| e.to_string())?;
            Ok(format!("{depth} job(s) waiting"))
        })];
        checks.push(check("index_integrity", || {
            self.index
                .integrity()
                .map(|s| {
                    format!(
                        "{} documents, {} chunks, {} bytes, arroy trees {}",
                        s.documents,
                        s.chunks,
                        s.bytes,
                        if s.ann_ready { "built" } else { "not in use" }
                    )
                })
                .map_err(|e| format!("{e:#}"))
        }));
        checks.push(check("keyword_index", || {
            let k = self.index.keyword_status();
            match k.error {
                Some(e) => Err(e),
                None => Ok(format!(
                    "{} chunks, {} bytes, {} document change(s) awaiting the next commit; at start: {}",
                    k.chunks, k.bytes, k.uncommitted, k.recovery
                )),
            }
        }));
        if let Some(log) = self.log.status() {
            checks.push(check("index_log", || match (&log.error, &log.position) {
                (Some(e), _) => Err(e.clone()),
                (None, Some(p)) => Ok(format!(
                    "applied up to {} (epoch {}), lag {} ms",
                    p.entry, p.epoch, log.lag_ms
                )),
                (None, None) => Ok("nothing logged yet".into()),
            }));
        }
        let mut probe = Vec::new();
        checks.push(check("embedding", || {
            let v = self
                .embedder
                .embed(&["health check"])
                .map_err(|e| e.to_string())?
                .remove(0);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if v.len() != self.embedder.dimensions()
                || (norm - 1.0).abs() > 1e-3
                || v.iter().any(|x| !x.is_finite())
            {
                return Err(format!("bad embedding: {} dims, norm {norm}", v.len()));
            }
            probe = v;
            Ok(format!("{} dims, unit norm", self.embedder.dimensions()))
        }));
        checks.push(check("search", || {
            if probe.is_empty() {
                return Err("skipped: no embedding".into());
            }
            let mut req = SearchRequest::new("health check");
            req.k = 1;
            // Both indexes: the vector scan and a keyword query.
            req.mode = Some(rag_api::SearchMode::Hybrid);
            let out = crate::search::search(&self.index, &probe, &req, &self.search_defaults())
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{} candidate(s), strategy {}, mode {}",
                out.candidates,
                out.strategy.as_str(),
                out.mode.as_str()
            ))
        }));
        let stats = self.index.stats();
        HealthReport {
            status: if checks.iter().all(|c| c.ok) {
                "ok"
            } else {
                "degraded"
            }
            .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: self.embedder.model_id().into(),
            dimensions: self.embedder.dimensions(),
            documents: stats.documents,
            chunks: stats.chunks,
            queue_depth: depth,
            keyword_uncommitted: self.index.keyword_status().uncommitted,
            embedding: self.numerics(),
            checks,
        }
    }
}
