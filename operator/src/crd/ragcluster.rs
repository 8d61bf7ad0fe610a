// kube's printcolumn(...) attributes repeat `type_ = …` by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of rag-node pods that share one Redis (job queue + replicated index log).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "rag.ragnode.dev",
    version = "v1alpha1",
    kind = "RagCluster",
    namespaced,
    status = "RagClusterStatus",
    shortname = "ragc",
    category = "rag",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Documents", type_ = "integer", json_path = ".status.documents"),
    printcolumn(name = "Queue", type_ = "integer", json_path = ".status.queueDepth"),
    printcolumn(
        name = "Lag(ms)",
        type_ = "integer",
        json_path = ".status.maxApplyLagMs",
        priority = 1
    ),
    printcolumn(
        name = "Last backup",
        type_ = "date",
        json_path = ".status.backup.lastSuccessful.completedAt",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RagClusterSpec {
    /// Number of rag-node pods. `kubectl scale ragcluster NAME --replicas=N` sets it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// rag-node image; default: the operator's `--node-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` (default) or `Never`.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// CPU and memory of each rag-node container. Default: requests 500m / 1Gi, memory limit 4Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default)]
    pub model: ModelSpec,
    /// Claims mounted read-only into every node at `/sources/NAME`; IngestJob `path` sources
    /// read files from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_volumes: Vec<SourceVolume>,
    /// Default chunking of every document (an IngestJob may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<ChunkingSpec>,
    #[serde(default)]
    pub redis: RedisSpec,
    #[serde(default)]
    pub auth: AuthSpec,
    /// Scheduling and metadata of the rag-node pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodOverrides>,
    /// Upper bound of one upload, bytes (default 100 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub max_upload_bytes: Option<i64>,
    /// Log format of the nodes: `json` (default) or `text`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Backups of the index to an S3-compatible bucket, on a schedule or on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Search defaults of the nodes: the mode of searches that name none, and the languages of
    /// the keyword index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSpec>,
}

/// The pattern of a language code of the keyword index (ISO 639-1).
pub const LANGUAGE_PATTERN: &str = r"^(pt|en|es|fr|de|it)$";

/// A document's language: one of those, or `auto` (detect it, whatever the defaults say).
pub const DOCUMENT_LANGUAGE_PATTERN: &str = r"^(auto|pt|en|es|fr|de|it)$";

/// How the nodes search and analyse text. Every field left out keeps the node's default.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchSpec {
    /// The mode of searches that name none: `hybrid` (default; dense and keyword rankings
    /// fused), `dense` (embeddings only) or `keyword` (the keyword index only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "search_mode_schema")]
    pub default_mode: Option<SearchMode>,
    /// Languages of the keyword index (`pt`, `en`, `es`, `fr`, `de`, `it`; default `pt`, `en`),
    /// each listed once: each chunk's language is detected among them for its stemming and
    /// stop words, and the first one is the fallback when detection is unsure. Changing the
    /// list rebuilds each node's keyword index when the node restarts (the pods roll on the
    /// change), which takes a while on a large index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 6), inner(regex(pattern = LANGUAGE_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub languages: Vec<String>,
    /// Language of uploaded documents that give none (an IngestJob's or source's `language`,
    /// or the API's `language` field), instead of detecting it. Default: detect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LANGUAGE_PATTERN))]
    pub default_language: Option<String>,
}

/// The search mode is the API's own type (`rag_api::SearchMode`, which has no JSON schema
/// derive): its schema is written here, without the `null` among the values that API servers
/// before the fix of kubernetes#104969 mishandle (`nullable` admits an unset field).
pub use rag_api::SearchMode;

/// As [`search_mode_schema`], for the same reason.
fn precision_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "nullable": true,
        "enum": ["fp32", "bf16", "auto"],
    })
}

fn search_mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "nullable": true,
        "enum": ["hybrid", "dense", "keyword"],
    })
}

/// Backups: one node of the cluster stores a snapshot of its index (a compacted copy of its
/// LMDB environment and a manifest) under `target`; the log is then trimmed below it. Request
/// one at any time by setting the annotation `rag.ragnode.dev/backup-request` to a new value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// `s3://bucket/prefix`.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$"))]
    pub target: String,
    /// Cron schedule in UTC (`minute hour day-of-month month day-of-week`, or `@daily`…).
    /// Without one, backups run only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Snapshots kept under the target; older ones are deleted after each backup. 0 keeps all.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 0, max = 10000))]
    pub keep: u32,
    /// Nodes that start without an index (scale-up, a lost volume, a cluster recreated on
    /// the same target) restore the newest snapshot and replay only the log after it.
    #[serde(default = "default_true")]
    pub restore_new_nodes: bool,
    /// Seconds a backup may take before it counts as failed (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30))]
    pub timeout_seconds: Option<u32>,
    #[serde(default)]
    pub s3: S3Spec,
}

fn default_keep() -> u32 {
    7
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Endpoint of an S3-compatible service (MinIO, Ceph, …); default AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Secret with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (omit when the pods get
    /// credentials another way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

fn default_replicas() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// The persistent volume of each rag-node pod (its LMDB index and upload spool).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// Storage class; default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// The embedding model. Default: all-MiniLM-L6-v2 baked into the image. Or a model directory
/// (`model.safetensors`, `tokenizer.json`, `config.json`) on a PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Claim holding the model, mounted read-only into every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<String>,
    /// Directory of the model inside that claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// Precision of the embedding GEMMs (`fp32`, `bf16`, `auto` = bf16 where the CPU has
    /// AMX). Fixed when the cluster's index is created; unset = the nodes' default (fp32). A
    /// change to another explicit precision than the index's is refused (condition
    /// `SpecRejected`) and the pods keep running as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "precision_schema")]
    pub precision: Option<ModelPrecision>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelPrecision {
    Fp32,
    Bf16,
    Auto,
}

impl ModelPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelPrecision::Fp32 => "fp32",
            ModelPrecision::Bf16 => "bf16",
            ModelPrecision::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<ModelPrecision> {
        [
            ModelPrecision::Fp32,
            ModelPrecision::Bf16,
            ModelPrecision::Auto,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceVolume {
    /// Name of the volume in IngestJob `path` sources (and its directory `/sources/NAME`).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"))]
    pub name: String,
    /// A PersistentVolumeClaim in the cluster's namespace (ReadOnlyMany, or ReadWriteOnce
    /// with every node on one machine).
    pub persistent_volume_claim: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChunkingSpec {
    /// Tokens per chunk (the model's window is 256).
    #[schemars(range(min = 16, max = 256))]
    pub max_tokens: u32,
    /// Tokens shared by neighbouring chunks.
    #[schemars(range(min = 0, max = 128))]
    pub overlap_tokens: u32,
}

/// Where the cluster's Redis comes from.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// An operator-managed Redis (StatefulSet, AOF with fsync on every write, generated
    /// password). Used unless `external` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// An existing Redis instead of a managed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    /// Redis image; default: the operator's `--redis-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Volume of the append-only file; default 1Gi of the default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// `redis://host:port[/db]` or `rediss://…`, without the password.
    #[schemars(regex(pattern = r"^rediss?://"))]
    pub url: String,
    /// Secret key holding the password, if Redis needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// API authentication of the nodes: on by default. Without secret names the operator generates
/// `NAME-auth` with keys `api-key` and `admin-token`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Existing Secret key with the API key (at least 16 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Existing Secret key with the admin token (needed to delete documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret_ref: Option<SecretKeyRef>,
}

fn default_true() -> bool {
    true
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            enabled: true,
            api_key_secret_ref: None,
            admin_token_secret_ref: None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum ClusterPhase {
    /// Objects created, pods not ready yet.
    #[default]
    Provisioning,
    /// Every replica ready.
    Running,
    /// Some replicas ready.
    Degraded,
    /// No replica ready after having been running, or the spec cannot be applied.
    Failed,
    /// Reconciliation paused by annotation.
    Paused,
}

impl ClusterPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPhase::Provisioning => "Provisioning",
            ClusterPhase::Running => "Running",
            ClusterPhase::Degraded => "Degraded",
            ClusterPhase::Failed => "Failed",
            ClusterPhase::Paused => "Paused",
        }
    }
    pub const ALL: [ClusterPhase; 5] = [
        ClusterPhase::Provisioning,
        ClusterPhase::Running,
        ClusterPhase::Degraded,
        ClusterPhase::Failed,
        ClusterPhase::Paused,
    ];
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RagClusterStatus {
    /// Pods of the StatefulSet (the scale subresource reads it).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default)]
    pub phase: ClusterPhase,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Documents in the index (the most any live node reports).
    #[serde(default)]
    pub documents: i64,
    #[serde(default)]
    pub chunks: i64,
    /// Jobs waiting in the cluster's queue.
    #[serde(default)]
    pub queue_depth: i64,
    /// Largest index-log apply lag of the live nodes, milliseconds.
    #[serde(default)]
    pub max_apply_lag_ms: i64,
    /// Nodes with a live heartbeat in Redis.
    #[serde(default)]
    pub live_nodes: i32,
    /// In-cluster URL of the client Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Always written (`null` without backups), so a merge patch clears it.
    #[serde(default)]
    pub backup: Option<BackupStatus>,
    /// How the live nodes embed (from their heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingStatus>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingStatus {
    /// The precision of the cluster's index (`fp32`, `bf16`), as the live nodes report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Live nodes per kernel: `amx`, `avx512_bf16`, `emulated` (bf16 in software on a CPU
    /// without bf16 instructions), `avx512`, `portable`.
    #[serde(default)]
    pub kernels: BTreeMap<String, i32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The backup under way (always written, `null` when none, so a merge patch clears it).
    #[serde(default)]
    pub running: Option<RunningBackup>,
    /// When the schedule last started a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    /// The last value of the `rag.ragnode.dev/backup-request` annotation acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<CompletedBackup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailedBackup>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunningBackup {
    /// Id of the control command the nodes answer.
    pub id: String,
    pub started_at: String,
    /// `schedule` or `request`.
    pub trigger: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompletedBackup {
    /// The snapshot's id under the target.
    pub snapshot: String,
    pub completed_at: String,
    /// The node that took it.
    pub node: String,
    pub documents: i64,
    pub chunks: i64,
    pub size_bytes: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedBackup {
    pub time: String,
    pub message: String,
}
