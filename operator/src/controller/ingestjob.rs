//! Reconciles an IngestJob: reads each source, hands it to the cluster through the rag-client
//! (the node stores it durably in the cluster's Redis queue and answers with a job id),
//! mirrors the node jobs' progress into status, cancels queued work when the IngestJob is
//! deleted, and removes finished IngestJobs after `ttlSecondsAfterFinished`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::ResourceExt;
use serde_json::json;

use crate::context::{Context, Error};
use crate::crd::{set_condition, IngestJob, IngestJobStatus, IngestPhase, RagCluster};
use crate::ingest::{self, SourceKind};
use crate::status::ingest_status;

const FINALIZER: &str = "rag.ragnode.dev/cancel";
const POLL: Duration = Duration::from_secs(2);
/// Bytes one source may have when the cluster sets no limit (the nodes' default).
const DEFAULT_MAX_BYTES: i64 = 100 << 20;

pub async fn reconcile(job: Arc<IngestJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = job.namespace().unwrap_or_default();
    let retry_key = format!("ingestjob/{ns}/{}", job.name_any());
    let api: Api<IngestJob> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cancel(&job, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    ctx.metrics.reconciled(
        "ingestjob",
        result.as_ref().err().map(Error::metric_label),
        started.elapsed(),
    );
    if result.is_ok() {
        ctx.outcome(retry_key, true);
    }
    result
}

pub fn error_policy(job: Arc<IngestJob>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(ingestjob = %job.name_any(), namespace = ?job.namespace(), error = %err, "reconcile failed");
    let key = format!(
        "ingestjob/{}/{}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    );
    Action::requeue(ctx.outcome(key, false))
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn save(job: &IngestJob, ctx: &Context, st: &IngestJobStatus) -> Result<(), Error> {
    let api: Api<IngestJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    api.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": st})),
    )
    .await?;
    ctx.metrics.job_observed(&key(job), Some(st.phase.as_str()));
    Ok(())
}

fn key(job: &IngestJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// Not accepted (yet): phase and a condition that say why.
async fn hold(
    job: &IngestJob,
    ctx: &Context,
    phase: IngestPhase,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let mut st = job.status.clone().unwrap_or_default();
    let changed = !st
        .conditions
        .iter()
        .any(|c| c.type_ == "Accepted" && c.reason == reason && c.message == message);
    st.phase = phase;
    st.observed_generation = job.metadata.generation;
    set_condition(
        &mut st.conditions,
        "Accepted",
        false,
        reason,
        message.clone(),
        job.metadata.generation,
        &now(),
    );
    if phase == IngestPhase::Failed {
        set_condition(
            &mut st.conditions,
            "Failed",
            true,
            reason,
            message.clone(),
            job.metadata.generation,
            &now(),
        );
    }
    if Some(&st) == job.status.as_ref() {
        // Still waiting for the same reason: no write (hundreds of waiting jobs would
        // otherwise patch the API server every few seconds).
        ctx.metrics.job_observed(&key(job), Some(st.phase.as_str()));
        return Ok(());
    }
    if changed {
        ctx.event(job, true, reason, message).await;
    }
    save(job, ctx, &st).await
}

async fn apply(job: &IngestJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let previous = job.status.clone().unwrap_or_default();
    if previous.phase.is_finished() && previous.observed_generation == job.metadata.generation {
        return expire(job, ctx, &previous).await;
    }
    if crate::crd::is_paused(&job.metadata) {
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    if let Err(why) = ingest::validate(job) {
        hold(job, ctx, IngestPhase::Failed, "InvalidSpec", why).await?;
        return Ok(Action::await_change());
    }
    let clusters: Api<RagCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(rc) = clusters.get_opt(&job.spec.cluster_ref).await? else {
        hold(
            job,
            ctx,
            IngestPhase::Pending,
            "ClusterNotFound",
            format!("RagCluster {ns}/{} does not exist", job.spec.cluster_ref),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    let ready = rc.status.as_ref().map(|s| s.ready_replicas).unwrap_or(0);
    if ready == 0 {
        hold(
            job,
            ctx,
            IngestPhase::Pending,
            "ClusterNotReady",
            format!(
                "RagCluster {ns}/{} has no ready node yet",
                job.spec.cluster_ref
            ),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let client = ctx.node_client(&rc).await?;
    let max_bytes = rc.spec.max_upload_bytes.unwrap_or(DEFAULT_MAX_BYTES);

    let mut st = previous.clone();
    st.observed_generation = job.metadata.generation;
    set_condition(
        &mut st.conditions,
        "Accepted",
        true,
        "ClusterReady",
        format!("documents go to RagCluster {}", job.spec.cluster_ref),
        job.metadata.generation,
        &now(),
    );
    let mut docs = ingest::documents(job);

    // Hand over what is not handed over yet, saving status after each upload so an operator
    // restart never uploads a document twice.
    for (i, source) in job.spec.sources.iter().enumerate() {
        if docs[i].job_id.is_some() || docs[i].is_finished() {
            continue;
        }
        let bytes = match read_source(ctx, &ns, source, max_bytes).await {
            Ok(b) => b,
            Err(why) => {
                ingest::fail(&mut docs[i], why);
                continue;
            }
        };
        // The source's language, else the job's.
        let opts = ingest::upload_options(job, source);
        let sent = match ingest::kind(source) {
            Ok(SourceKind::Path(p)) => {
                if !rc.spec.source_volumes.iter().any(|v| v.name == p.volume) {
                    ingest::fail(
                        &mut docs[i],
                        format!(
                            "volume {:?} is not among RagCluster {}'s sourceVolumes",
                            p.volume,
                            rc.name_any()
                        ),
                    );
                    continue;
                }
                client.import(&ingest::node_path(p), &opts).await
            }
            _ => client.upload(&ingest::filename(source), bytes, &opts).await,
        };
        match sent {
            Ok(up) => {
                docs[i].job_id = Some(up.job_id);
                docs[i].state = up.status.as_str().into();
            }
            Err(rag_client::Error::Api {
                status,
                code,
                message,
                ..
            }) if (400..500).contains(&status) && status != 429 => {
                ingest::fail(&mut docs[i], format!("{code}: {message}"));
            }
            Err(e) => {
                // The cluster is busy or unreachable: keep what was done and try again soon.
                st = ingest_status(&st, docs, &now());
                save(job, ctx, &st).await?;
                return Err(Error::Upload {
                    source_name: source.name.clone(),
                    error: e,
                });
            }
        }
        st = ingest_status(&st, docs.clone(), &now());
        save(job, ctx, &st).await?;
    }

    for d in docs
        .iter_mut()
        .filter(|d| d.job_id.is_some() && !d.is_finished())
    {
        match client.job(d.job_id.as_deref().unwrap()).await {
            Ok(status) => ingest::observe(d, &status),
            Err(rag_client::Error::Api { status: 404, .. }) => ingest::fail(
                d,
                "job_lost: the cluster no longer knows this job (its Redis lost it); apply the IngestJob again".into(),
            ),
            Err(e) => tracing::info!(job = %key(job), error = %e, "job status not read this round"),
        }
    }
    let st2 = ingest_status(&st, docs, &now());
    if st2.phase != previous.phase {
        let warning = st2.phase == IngestPhase::Failed;
        let note = match st2.phase {
            IngestPhase::Succeeded | IngestPhase::Failed => st2
                .conditions
                .iter()
                .find(|c| c.type_ == "Complete")
                .map(|c| c.message.clone())
                .unwrap_or_default(),
            p => {
                format!(
                    "{} of {} documents done",
                    st2.documents_succeeded + st2.documents_failed,
                    st2.documents_total
                ) + if p == IngestPhase::Queued {
                    ", all queued"
                } else {
                    ""
                }
            }
        };
        ctx.event(job, warning, st2.phase.as_str(), note).await;
    }
    if st2 != previous {
        save(job, ctx, &st2).await?;
    } else {
        ctx.metrics
            .job_observed(&key(job), Some(st2.phase.as_str()));
    }
    if st2.phase.is_finished() {
        return expire(job, ctx, &st2).await;
    }
    Ok(Action::requeue(POLL))
}

/// Deletes a finished IngestJob once its TTL passed; otherwise wakes up when it will.
async fn expire(job: &IngestJob, ctx: &Context, st: &IngestJobStatus) -> Result<Action, Error> {
    ctx.metrics.job_observed(&key(job), Some(st.phase.as_str()));
    let (Some(ttl), Some(done)) = (
        job.spec.ttl_seconds_after_finished,
        st.completed_at.as_ref(),
    ) else {
        return Ok(Action::await_change());
    };
    let age = k8s_openapi::jiff::Timestamp::now()
        .duration_since(done.0)
        .as_secs();
    if age >= ttl {
        let api: Api<IngestJob> =
            Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
        api.delete(&job.name_any(), &DeleteParams::background())
            .await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(Duration::from_secs(
        (ttl - age).max(1) as u64
    )))
}

/// Deleting an IngestJob cancels its documents that are still queued (ones already indexed
/// stay; a running one finishes).
async fn cancel(job: &IngestJob, ctx: &Context) -> Result<Action, Error> {
    ctx.metrics.job_observed(&key(job), None);
    let Some(st) = &job.status else {
        return Ok(Action::await_change());
    };
    let queued: Vec<&str> = st
        .documents
        .iter()
        .filter(|d| d.state == "queued")
        .filter_map(|d| d.job_id.as_deref())
        .collect();
    if queued.is_empty() {
        return Ok(Action::await_change());
    }
    let clusters: Api<RagCluster> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let Some(rc) = clusters.get_opt(&job.spec.cluster_ref).await? else {
        return Ok(Action::await_change());
    };
    let client = ctx.node_client(&rc).await?;
    for id in queued {
        match client.cancel_job(id).await {
            Ok(_) => {}
            // Already running or finished: nothing left to cancel.
            Err(rag_client::Error::Api {
                status: 404 | 409, ..
            }) => {}
            Err(e) => {
                return Err(Error::Cancel {
                    job_id: id.to_string(),
                    error: e,
                })
            }
        }
    }
    Ok(Action::await_change())
}

async fn read_source(
    ctx: &Context,
    ns: &str,
    source: &crate::crd::Source,
    max: i64,
) -> Result<Vec<u8>, String> {
    let too_big = |n: usize| {
        format!(
            "source {:?} is {n} bytes, over the cluster's upload limit of {max}",
            source.name
        )
    };
    let bytes = match ingest::kind(source)? {
        SourceKind::Inline(text) => text.as_bytes().to_vec(),
        SourceKind::ConfigMap(r) => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            let cm = api
                .get_opt(&r.name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("ConfigMap {ns}/{} not found", r.name))?;
            if let Some(t) = cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                t.as_bytes().to_vec()
            } else if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(&r.key)) {
                b.0.clone()
            } else {
                return Err(format!("ConfigMap {ns}/{} has no key {:?}", r.name, r.key));
            }
        }
        SourceKind::Secret(r) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let s = api
                .get_opt(&r.name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("Secret {ns}/{} not found", r.name))?;
            s.data
                .and_then(|d| d.get(&r.key).cloned())
                .map(|b| b.0)
                .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?
        }
        SourceKind::Url(url) => fetch(url, max as usize)
            .await
            .map_err(|e| format!("download {url}: {e}"))?,
        // Read by the node itself from its mounted volume.
        SourceKind::Path(_) => Vec::new(),
    };
    if bytes.len() as i64 > max {
        return Err(too_big(bytes.len()));
    }
    Ok(bytes)
}

/// Downloads at most `max` bytes (a bigger body is refused before it is all read).
async fn fetch(url: &str, max: usize) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n as usize > max) {
        return Err(format!(
            "{} bytes is over the upload limit of {max}",
            resp.content_length().unwrap()
        ));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        out.extend_from_slice(&chunk);
        if out.len() > max {
            return Err(format!("more than the upload limit of {max} bytes"));
        }
    }
    Ok(out)
}
