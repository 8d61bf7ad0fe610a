// kube's printcolumn(...) attributes repeat `type_ = …` by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ChunkingSpec, DOCUMENT_LANGUAGE_PATTERN};

/// Documents to ingest into a RagCluster of the same namespace.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "rag.ragnode.dev",
    version = "v1alpha1",
    kind = "IngestJob",
    namespaced,
    status = "IngestJobStatus",
    shortname = "ij",
    category = "rag",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterRef"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Chunks", type_ = "integer", json_path = ".status.chunks"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IngestJobSpec {
    /// Name of the RagCluster (same namespace).
    #[schemars(length(min = 1, max = 63))]
    pub cluster_ref: String,
    /// The documents; each names exactly one of `url`, `configMapKeyRef`, `secretKeyRef`,
    /// `inline`, `path`.
    #[schemars(length(min = 1, max = 1000))]
    pub sources: Vec<Source>,
    /// Metadata given to every document (searchable with a metadata filter).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Chunking of these documents instead of the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<ChunkingSpec>,
    /// Language of every document of the job (`pt`, `en`, `es`, `fr`, `de`, `it`, or `auto` to
    /// detect it per chunk even where the cluster has a `search.defaultLanguage`), for the
    /// keyword index's stemming and stop words; a source's own `language` overrides it.
    /// Default: the cluster's `search.defaultLanguage`, else detected per chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DOCUMENT_LANGUAGE_PATTERN))]
    pub language: Option<String>,
    /// Delete the IngestJob this long after it finished (the documents stay indexed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Unique within the job; the document id unless `documentId` is set.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
    pub name: String,
    /// Document id in the index; uploading again with the same id replaces the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub document_id: Option<String>,
    /// File name given to the node (its extension helps type detection); default: from the
    /// URL or key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// An `http://` or `https://` URL the operator downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: Option<String>,
    /// A key of a ConfigMap (`data` or `binaryData`) in the job's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// A key of a Secret in the job's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// Text given inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// A file on one of the RagCluster's `sourceVolumes`, read by the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<VolumePath>,
    /// Metadata of this document only (added to the job's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Language of this document (`pt`, `en`, `es`, `fr`, `de`, `it`, or `auto` to detect it)
    /// instead of the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DOCUMENT_LANGUAGE_PATTERN))]
    pub language: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumePath {
    /// A name from the RagCluster's `sourceVolumes`.
    pub volume: String,
    /// Relative path of the file in that volume.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum IngestPhase {
    /// Waiting for the spec to be valid or the cluster to be ready.
    #[default]
    Pending,
    /// Documents handed to the cluster's queue.
    Queued,
    /// The cluster is processing them.
    Running,
    /// Every document indexed.
    Succeeded,
    /// At least one document failed (see `documents`), or the spec is invalid.
    Failed,
}

impl IngestPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestPhase::Pending => "Pending",
            IngestPhase::Queued => "Queued",
            IngestPhase::Running => "Running",
            IngestPhase::Succeeded => "Succeeded",
            IngestPhase::Failed => "Failed",
        }
    }
    pub fn is_finished(self) -> bool {
        matches!(self, IngestPhase::Succeeded | IngestPhase::Failed)
    }
    pub const ALL: [IngestPhase; 5] = [
        IngestPhase::Pending,
        IngestPhase::Queued,
        IngestPhase::Running,
        IngestPhase::Succeeded,
        IngestPhase::Failed,
    ];
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentProgress {
    /// The source's name.
    pub source: String,
    pub document_id: String,
    /// The node's job id, once uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `pending`, or the node's job state: `queued`, `processing`, `completed`, `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<i64>,
    /// The reason of a failure, or a note (e.g. "identical to the indexed document").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl DocumentProgress {
    pub fn is_finished(&self) -> bool {
        self.state == "completed" || self.state == "failed"
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestJobStatus {
    #[serde(default)]
    pub phase: IngestPhase,
    /// `done/total`, e.g. `3/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default)]
    pub documents_total: i32,
    #[serde(default)]
    pub documents_succeeded: i32,
    #[serde(default)]
    pub documents_failed: i32,
    #[serde(default)]
    pub chunks: i64,
    #[serde(default)]
    pub documents: Vec<DocumentProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
