//! Prometheus metrics of a node (text exposition format at `/metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub content_type: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

pub struct Metrics {
    registry: Registry,
    pub queue_size: Gauge,
    pub job_duration: Family<JobLabels, Histogram>,
    pub embedding_duration: Histogram,
    pub search_duration: Histogram,
    pub index_vectors: Gauge,
    pub index_bytes: Gauge,
    /// Cluster mode: age of the newest index-log entry this node has not applied yet.
    pub log_lag_ms: Gauge,
    pub jobs_total: Family<OutcomeLabels, Counter>,
    pub query_cache_hits: Counter,
    /// Time the keyword index takes to answer one query (keyword and hybrid searches).
    pub keyword_query_duration: Histogram,
    pub keyword_index_bytes: Gauge,
    pub keyword_index_chunks: Gauge,
    pub searches: Family<ModeLabels, Counter>,
    process_cpu: Counter<f64, AtomicU64>,
    cpu_reported: std::sync::Mutex<f64>,
    process_rss: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let queue_size = Gauge::default();
        registry.register(
            "ragnode_queue_size",
            "Jobs waiting in the queue",
            queue_size.clone(),
        );
        let job_duration = Family::<JobLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 16))
        });
        registry.register(
            "ragnode_job_duration_seconds",
            "Time from claim to finish of a job",
            job_duration.clone(),
        );
        let embedding_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "ragnode_embedding_duration_seconds",
            "Time to embed one batch",
            embedding_duration.clone(),
        );
        let search_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "ragnode_search_duration_seconds",
            "Search latency, query embedding included",
            search_duration.clone(),
        );
        let index_vectors = Gauge::default();
        registry.register(
            "ragnode_index_vectors",
            "Vectors (chunks) in the index",
            index_vectors.clone(),
        );
        let index_bytes = Gauge::default();
        registry.register(
            "ragnode_index_bytes",
            "Bytes used by the LMDB environment",
            index_bytes.clone(),
        );
        let log_lag_ms = Gauge::default();
        registry.register(
            "ragnode_log_lag_milliseconds",
            "Cluster mode: how far behind the replicated index log this node's index is",
            log_lag_ms.clone(),
        );
        let jobs_total = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ragnode_jobs",
            "Jobs finished, by outcome",
            jobs_total.clone(),
        );
        let query_cache_hits = Counter::default();
        registry.register(
            "ragnode_query_cache_hits",
            "Searches whose query embedding came from the cache",
            query_cache_hits.clone(),
        );
        let keyword_query_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "ragnode_keyword_query_duration_seconds",
            "Time the keyword index takes to answer one query",
            keyword_query_duration.clone(),
        );
        let keyword_index_bytes = Gauge::default();
        registry.register(
            "ragnode_keyword_index_bytes",
            "Bytes of the keyword index's files",
            keyword_index_bytes.clone(),
        );
        let keyword_index_chunks = Gauge::default();
        registry.register(
            "ragnode_keyword_index_chunks",
            "Chunks in the keyword index",
            keyword_index_chunks.clone(),
        );
        let searches = Family::<ModeLabels, Counter>::default();
        registry.register("ragnode_searches", "Searches, by mode", searches.clone());
        let process_cpu = Counter::<f64, AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "CPU time used by the process (user + system)",
            process_cpu.clone(),
        );
        let process_rss = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            process_rss.clone(),
        );
        let process_start: Gauge = Gauge::default();
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the epoch",
            process_start.clone(),
        );
        process_start.set((crate::time::now_ms() / 1000) as i64);
        Metrics {
            registry,
            queue_size,
            job_duration,
            embedding_duration,
            search_duration,
            index_vectors,
            index_bytes,
            log_lag_ms,
            jobs_total,
            query_cache_hits,
            keyword_query_duration,
            keyword_index_bytes,
            keyword_index_chunks,
            searches,
            process_cpu,
            cpu_reported: std::sync::Mutex::new(0.0),
            process_rss,
        }
    }

    pub fn job_finished(&self, content_type: &str, outcome: &str, seconds: f64) {
        self.job_duration
            .get_or_create(&JobLabels {
                content_type: content_type.into(),
                outcome: outcome.into(),
            })
            .observe(seconds);
        self.jobs_total
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        if let Some((cpu, rss)) = process_stats() {
            // A counter only moves forward: add what was used since the last scrape.
            let mut last = self.cpu_reported.lock().unwrap_or_else(|e| e.into_inner());
            if cpu > *last {
                self.process_cpu.inc_by(cpu - *last);
                *last = cpu;
            }
            self.process_rss.set(rss as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// (CPU seconds, resident bytes) of this process, from /proc.
pub fn process_stats() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, pages * 4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        m.job_finished("pdf", "completed", 1.5);
        m.search_duration.observe(0.01);
        let text = m.encode();
        for name in [
            "ragnode_queue_size",
            "ragnode_job_duration_seconds_count{content_type=\"pdf\",outcome=\"completed\"} 1",
            "ragnode_embedding_duration_seconds",
            "ragnode_search_duration_seconds_count 1",
            "ragnode_index_vectors",
            "ragnode_index_bytes",
            "ragnode_keyword_query_duration_seconds",
            "ragnode_keyword_index_bytes",
            "ragnode_keyword_index_chunks",
            "ragnode_jobs_total{outcome=\"completed\"} 1",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
