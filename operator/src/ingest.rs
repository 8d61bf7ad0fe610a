//! Planning an IngestJob without I/O: validating its sources, naming and labelling each
//! document, and turning a node's job status into the document's progress.

use std::collections::{BTreeMap, BTreeSet};

use rag_api::{JobState, JobStatus};

use crate::crd::{DocumentProgress, IngestJob, KeyRef, Source, VolumePath};

/// Where a source's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind<'a> {
    Url(&'a str),
    ConfigMap(&'a KeyRef),
    Secret(&'a KeyRef),
    Inline(&'a str),
    Path(&'a VolumePath),
}

/// Where a node finds `p`: the volume is mounted at `/sources/VOLUME`.
pub fn node_path(p: &VolumePath) -> String {
    format!("/sources/{}/{}", p.volume, p.path)
}

pub fn kind(source: &Source) -> Result<SourceKind<'_>, String> {
    let mut found = Vec::new();
    if let Some(u) = &source.url {
        found.push(SourceKind::Url(u));
    }
    if let Some(r) = &source.config_map_key_ref {
        found.push(SourceKind::ConfigMap(r));
    }
    if let Some(r) = &source.secret_key_ref {
        found.push(SourceKind::Secret(r));
    }
    if let Some(t) = &source.inline {
        found.push(SourceKind::Inline(t));
    }
    if let Some(p) = &source.path {
        found.push(SourceKind::Path(p));
    }
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        0 => Err(format!(
            "source {:?} names no document: set one of url, configMapKeyRef, secretKeyRef, inline, path",
            source.name
        )),
        _ => Err(format!(
            "source {:?} names more than one of url, configMapKeyRef, secretKeyRef, inline, path",
            source.name
        )),
    }
}

/// Checks what the schema cannot express: one kind per source, unique names and document ids,
/// URLs with a host, sane chunking.
pub fn validate(job: &IngestJob) -> Result<(), String> {
    let spec = &job.spec;
    if spec.sources.is_empty() {
        return Err("spec.sources is empty".into());
    }
    let mut names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for s in &spec.sources {
        if !names.insert(&s.name) {
            return Err(format!("two sources are named {:?}", s.name));
        }
        if !ids.insert(document_id(s)) {
            return Err(format!("two sources write document {:?}", document_id(s)));
        }
        if let SourceKind::Path(p) = kind(s)? {
            let bad =
                p.path.starts_with('/') || p.path.split('/').any(|c| c == ".." || c.is_empty());
            if bad {
                return Err(format!(
                    "source {:?}: path must be relative to its volume, without `..` or empty parts",
                    s.name
                ));
            }
        }
        if let SourceKind::Url(u) = kind(s)? {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .ok_or_else(|| format!("source {:?}: only http(s) URLs are supported", s.name))?;
            if rest.split('/').next().unwrap_or("").is_empty() {
                return Err(format!("source {:?}: the URL has no host", s.name));
            }
        }
    }
    if let Some(c) = spec.chunking {
        if c.overlap_tokens >= c.max_tokens {
            return Err(format!(
                "chunking.overlapTokens ({}) must be below maxTokens ({})",
                c.overlap_tokens, c.max_tokens
            ));
        }
    }
    Ok(())
}

pub fn document_id(s: &Source) -> String {
    s.document_id.clone().unwrap_or_else(|| s.name.clone())
}

/// File name given to the node; its extension helps detection, so keep the original one.
pub fn filename(s: &Source) -> String {
    if let Some(f) = &s.filename {
        return f.clone();
    }
    match kind(s) {
        Ok(SourceKind::Url(u)) => u
            .split(['?', '#'])
            .next()
            .and_then(|p| p.rsplit('/').next())
            .filter(|f| !f.is_empty() && !f.contains(':'))
            .map(str::to_owned)
            .unwrap_or_else(|| s.name.clone()),
        Ok(SourceKind::ConfigMap(r)) | Ok(SourceKind::Secret(r)) => r.key.clone(),
        Ok(SourceKind::Path(p)) => p.path.rsplit('/').next().unwrap_or(&s.name).to_owned(),
        Ok(SourceKind::Inline(_)) if !s.name.contains('.') => format!("{}.txt", s.name),
        _ => s.name.clone(),
    }
}

/// The job's metadata, then the source's, then where the document came from.
pub fn metadata(job: &IngestJob, s: &Source) -> BTreeMap<String, String> {
    let mut m = job.spec.metadata.clone();
    m.extend(s.metadata.clone());
    m.insert(
        "ingestjob".into(),
        format!(
            "{}/{}",
            job.metadata.namespace.clone().unwrap_or_default(),
            job.metadata.name.clone().unwrap_or_default()
        ),
    );
    m.insert("source".into(), s.name.clone());
    m
}

/// The language given to a source's document: its own, else the job's; `None` lets the node
/// decide (its `keyword.default_language`, else detection).
pub fn language(job: &IngestJob, s: &Source) -> Option<String> {
    s.language.clone().or_else(|| job.spec.language.clone())
}

/// The options of a source's upload: document id, metadata, the job's chunking, language.
pub fn upload_options(job: &IngestJob, s: &Source) -> rag_client::Upload {
    rag_client::Upload {
        document_id: Some(document_id(s)),
        metadata: metadata(job, s),
        chunking: job.spec.chunking.map(|c| rag_api::ChunkingOptions {
            max_tokens: c.max_tokens as usize,
            overlap_tokens: c.overlap_tokens as usize,
        }),
        language: language(job, s),
    }
}

/// Progress of every source: kept from the last status where the source is unchanged,
/// `pending` for new ones.
pub fn documents(job: &IngestJob) -> Vec<DocumentProgress> {
    let previous = job
        .status
        .as_ref()
        .map(|s| s.documents.clone())
        .unwrap_or_default();
    job.spec
        .sources
        .iter()
        .map(|s| {
            previous
                .iter()
                .find(|d| d.source == s.name && d.document_id == document_id(s))
                .cloned()
                .unwrap_or_else(|| DocumentProgress {
                    source: s.name.clone(),
                    document_id: document_id(s),
                    job_id: None,
                    state: "pending".into(),
                    chunks: None,
                    message: None,
                })
        })
        .collect()
}

/// A document's progress from its job on the node.
pub fn observe(doc: &mut DocumentProgress, job: &JobStatus) {
    doc.state = job.state.as_str().into();
    doc.chunks = job.chunks.map(i64::from);
    doc.message = match (&job.error, job.state) {
        (Some(e), _) => Some(format!("{}: {}", e.code, e.message)),
        // "identical to the indexed document" and the like; progress notes are not kept.
        (None, JobState::Completed) if job.duplicate => job.message.clone(),
        _ => None,
    };
}

pub fn fail(doc: &mut DocumentProgress, message: String) {
    doc.state = "failed".into();
    doc.message = Some(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IngestJobSpec;

    fn job(spec: serde_json::Value) -> IngestJob {
        let spec: IngestJobSpec = serde_json::from_value(spec).unwrap();
        let mut j = IngestJob::new("load", spec);
        j.metadata.namespace = Some("search".into());
        j
    }

    #[test]
    fn sources_name_exactly_one_document() {
        let ok = job(serde_json::json!({"clusterRef": "docs", "sources": [
            {"name": "a", "url": "https://example.org/files/report.pdf?x=1"},
            {"name": "b", "configMapKeyRef": {"name": "cm", "key": "notes.md"}},
            {"name": "c", "inline": "hello"},
            {"name": "d", "secretKeyRef": {"name": "s", "key": "contract.docx"}, "documentId": "contract"},
            {"name": "e", "path": {"volume": "shared", "path": "handbook/travel.pdf"}},
        ]}));
        validate(&ok).unwrap();
        let s = &ok.spec.sources;
        assert_eq!(filename(&s[0]), "report.pdf");
        assert_eq!(filename(&s[1]), "notes.md");
        assert_eq!(filename(&s[2]), "c.txt");
        assert_eq!(document_id(&s[3]), "contract");
        assert_eq!(filename(&s[4]), "travel.pdf");
        assert_eq!(
            node_path(s[4].path.as_ref().unwrap()),
            "/sources/shared/handbook/travel.pdf"
        );
        let m = metadata(&ok, &s[0]);
        assert_eq!(m["ingestjob"], "search/load");
        assert_eq!(m["source"], "a");

        for (bad, why) in [
            (serde_json::json!([{"name": "a"}]), "names no document"),
            (
                serde_json::json!([{"name": "a", "inline": "x", "url": "http://h/x"}]),
                "more than one",
            ),
            (
                serde_json::json!([{"name": "a", "inline": "x"}, {"name": "a", "inline": "y"}]),
                "two sources are named",
            ),
            (
                serde_json::json!([{"name": "a", "inline": "x"}, {"name": "b", "inline": "y", "documentId": "a"}]),
                "two sources write",
            ),
            (
                serde_json::json!([{"name": "a", "url": "http:///x"}]),
                "no host",
            ),
            (
                serde_json::json!([{"name": "a", "path": {"volume": "v", "path": "../x"}}]),
                "relative",
            ),
            (
                serde_json::json!([{"name": "a", "path": {"volume": "v", "path": "/etc/passwd"}}]),
                "relative",
            ),
        ] {
            let j = job(serde_json::json!({"clusterRef": "docs", "sources": bad}));
            let err = validate(&j).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let j = job(
            serde_json::json!({"clusterRef": "docs", "sources": [{"name": "a", "inline": "x"}],
            "chunking": {"maxTokens": 64, "overlapTokens": 64}}),
        );
        assert!(validate(&j).unwrap_err().contains("overlapTokens"));
    }

    #[test]
    fn upload_options_carry_chunking_and_the_language_of_source_or_job() {
        let j = job(serde_json::json!({"clusterRef": "docs", "language": "pt",
        "chunking": {"maxTokens": 128, "overlapTokens": 16},
        "metadata": {"team": "ops"},
        "sources": [
            {"name": "a", "inline": "olá"},
            {"name": "b", "inline": "hello", "language": "en", "documentId": "doc-b"},
        ]}));
        let a = upload_options(&j, &j.spec.sources[0]);
        assert_eq!(a.language.as_deref(), Some("pt"));
        assert_eq!(a.document_id.as_deref(), Some("a"));
        assert_eq!(a.metadata["team"], "ops");
        let c = a.chunking.unwrap();
        assert_eq!((c.max_tokens, c.overlap_tokens), (128, 16));
        let b = upload_options(&j, &j.spec.sources[1]);
        assert_eq!(b.language.as_deref(), Some("en"));
        assert_eq!(b.document_id.as_deref(), Some("doc-b"));

        // Neither says: the node decides.
        let j = job(serde_json::json!({"clusterRef": "docs", "sources": [
            {"name": "a", "inline": "x"},
            {"name": "b", "inline": "y", "language": "de"},
        ]}));
        let a = upload_options(&j, &j.spec.sources[0]);
        assert_eq!(a.language, None);
        assert!(a.chunking.is_none());
        assert_eq!(
            upload_options(&j, &j.spec.sources[1]).language.as_deref(),
            Some("de")
        );
    }

    #[test]
    fn progress_survives_and_follows_node_jobs() {
        let mut j = job(serde_json::json!({"clusterRef": "docs", "sources": [
            {"name": "a", "inline": "x"}, {"name": "b", "inline": "y"}]}));
        let mut docs = documents(&j);
        assert!(docs.iter().all(|d| d.state == "pending"));
        docs[0].job_id = Some("j1".into());
        let status: JobStatus = serde_json::from_value(serde_json::json!({
            "job_id": "j1", "document_id": "a", "filename": "a.txt", "content_type": "text/plain",
            "size_bytes": 1, "sha256": "ab", "status": "failed", "stage": "extracting", "percent": 10, "attempts": 1,
            "created_at": "2026-11-27T00:00:00Z", "timings": {}, "duplicate": false,
            "error": {"code": "unsupported_type", "message": "cannot read this"},
            "metadata": {}, "chunking": {"max_tokens": 256, "overlap_tokens": 32}
        }))
        .unwrap();
        observe(&mut docs[0], &status);
        assert_eq!(docs[0].state, "failed");
        assert_eq!(
            docs[0].message.as_deref(),
            Some("unsupported_type: cannot read this")
        );
        j.status = Some(crate::crd::IngestJobStatus {
            documents: docs,
            ..Default::default()
        });
        let again = documents(&j);
        assert_eq!(again[0].job_id.as_deref(), Some("j1"));
        assert_eq!(again[1].state, "pending");
    }
}
