//! Which precision this node embeds with: the index's, decided once when the index was created
//! and never mixed. Standalone, the index's own record decides; in a cluster, the cluster's
//! (a Redis key the first node sets), so a node that joins on a CPU without bf16 instructions
//! still embeds in bf16 (emulated) when the cluster's index is bf16.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use crate::cluster::{self, Redis};
use crate::config::Config;
use crate::embed::{Kernel, Precision};
use crate::store::Store;

/// How long a node with no index of its own waits for Redis to learn the cluster's precision.
const WAIT_FOR_REDIS: Duration = Duration::from_secs(60);

fn parse(s: &str, whose: &str) -> anyhow::Result<Precision> {
    Precision::parse(s).ok_or_else(|| anyhow!("{whose} records an unknown precision {s:?}"))
}

pub fn resolve(config: &Config, store: &Store, redis: Option<&Redis>) -> anyhow::Result<Precision> {
    let choice = config.embedding.precision;
    let local = crate::index::stored_precision(store)?
        .map(|s| parse(&s, "the index"))
        .transpose()?;
    let Some(redis) = redis else {
        return choice.resolve(local);
    };
    let deadline = Instant::now() + WAIT_FOR_REDIS;
    let shared = loop {
        match cluster::index_precision(redis) {
            Ok(v) => break v.map(|s| parse(&s, "the cluster")).transpose()?,
            // A node restarting while Redis is away keeps serving its own index.
            Err(e) if local.is_some() => {
                tracing::warn!(error = %e, "Redis unreachable: using the precision of this node's index");
                return choice.resolve(local);
            }
            Err(e) if Instant::now() >= deadline => {
                bail!("cannot learn the cluster's index precision from Redis: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    };
    if let (Some(l), Some(s)) = (local, shared) {
        if l != s {
            bail!(
                "this node's index holds {} vectors but the cluster's index is {}: start it from an empty data directory (it then follows the cluster) or restore a snapshot of this cluster",
                l.as_str(),
                s.as_str()
            );
        }
    }
    let wanted = choice.resolve(shared.or(local))?;
    // The first node sets it; a node that lost the race takes the winner's, or is refused.
    let agreed = parse(
        &cluster::claim_index_precision(redis, wanted.as_str())?,
        "the cluster",
    )?;
    choice.resolve(Some(agreed))
}

/// The kernel that runs `precision` here: the fastest this CPU has, unless
/// `RAGNODE_EMBEDDING_KERNEL` forces another of the same precision (tests run the fallbacks
/// this way, comparisons too).
pub fn kernel(precision: Precision) -> anyhow::Result<Kernel> {
    let forced = std::env::var("RAGNODE_EMBEDDING_KERNEL").unwrap_or_default();
    if forced.is_empty() {
        return Ok(Kernel::best(precision));
    }
    let k = Kernel::parse(&forced).ok_or_else(|| {
        anyhow!("RAGNODE_EMBEDDING_KERNEL: unknown kernel {forced:?} (amx, avx512_bf16, emulated, avx512, portable)")
    })?;
    if k.precision() != precision {
        bail!(
            "RAGNODE_EMBEDDING_KERNEL: {forced} computes {} and the index is {}",
            k.precision().as_str(),
            precision.as_str()
        );
    }
    if !Kernel::available(precision).contains(&k) {
        bail!("RAGNODE_EMBEDDING_KERNEL: this CPU cannot run the {forced} kernel");
    }
    Ok(k)
}
