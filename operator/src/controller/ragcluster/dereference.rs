//! Dereference: what a RagCluster's objects depend on that lives on the server, read once per
//! reconcile — its objects as they are now (to apply only what changed), the managed Redis
//! Service's address, and the Redis URL and password the operator connects with.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DynamicObject};
use kube::ResourceExt;

use crate::context::{Context, Error};
use crate::crd::RagCluster;
use crate::resources::{self as res, Names};

/// The cluster's objects as the API server has them now, by name.
#[derive(Default)]
pub struct Live {
    /// Generated Secrets that exist (never rewritten, so only their presence matters).
    pub secrets: BTreeSet<String>,
    pub services: BTreeMap<String, Service>,
    pub statefulsets: BTreeMap<String, StatefulSet>,
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub pdb: Option<DynamicObject>,
}

/// Everything `build` needs from the server, resolved.
pub struct Dereferenced {
    pub live: Live,
    /// The Redis URL without credentials as the nodes use it; `None` while the managed Redis
    /// Service has no address yet (only when Services are addressed by ClusterIP).
    pub redis_base: Option<String>,
    /// The Redis URL with its password, as the operator connects to it, or why it is not known.
    pub redis_url: Result<String, String>,
    /// Credentials for the generated Secrets that do not exist yet (unused otherwise).
    pub fresh: Credentials,
}

pub struct Credentials {
    pub api_key: String,
    pub admin_token: String,
    pub redis_password: String,
}

impl Credentials {
    pub fn generate() -> Credentials {
        Credentials {
            api_key: token(),
            admin_token: token(),
            redis_password: token(),
        }
    }
}

fn token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..40)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub async fn dereference(rc: &RagCluster, ctx: &Context) -> Result<Dereferenced, Error> {
    let ns = rc.namespace().unwrap_or_default();
    let names = Names::of(rc);
    let client = ctx.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<DynamicObject> =
        Api::namespaced_with(client, &ns, &res::pdb_api_resource(ctx.pdb_api));

    // Every read at once: one round trip's latency, not nine.
    let (auth_name, redis_name) = (names.auth_secret(), names.redis());
    let (headless_name, nodes_name, config_name) =
        (names.headless(), names.nodes(), names.config());
    let (auth, redis_secret, redis_svc, headless, client_svc, redis_sts, node_sts, cm, pdb) = tokio::try_join!(
        secrets.get_opt(&auth_name),
        secrets.get_opt(&redis_name),
        services.get_opt(&redis_name),
        services.get_opt(&headless_name),
        services.get_opt(&nodes_name),
        statefulsets.get_opt(&redis_name),
        statefulsets.get_opt(&nodes_name),
        config_maps.get_opt(&config_name),
        pdbs.get_opt(&nodes_name),
    )?;

    let mut live = Live {
        pdb,
        ..Live::default()
    };
    for secret in [&auth, &redis_secret].into_iter().flatten() {
        live.secrets.insert(secret.name_any());
    }
    for svc in [redis_svc, headless, client_svc].into_iter().flatten() {
        live.services.insert(svc.name_any(), svc);
    }
    for sts in [redis_sts, node_sts].into_iter().flatten() {
        live.statefulsets.insert(sts.name_any(), sts);
    }
    if let Some(cm) = cm {
        live.config_maps.insert(cm.name_any(), cm);
    }

    let redis_base = if res::is_managed(rc) {
        let ip = live
            .services
            .get(&names.redis())
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.cluster_ip.clone());
        let known = !ctx.defaults.address_by_cluster_ip || ip.is_some();
        known.then(|| {
            let host = res::service_host(&ctx.defaults, &names.redis(), &ns, ip.as_deref());
            res::redis_base_url(rc, &host)
        })
    } else {
        Some(res::redis_base_url(rc, ""))
    };

    let redis_url = match (&redis_base, res::redis_password_ref(rc)) {
        (None, _) => Err("the managed Redis Service has no address yet".to_owned()),
        (Some(base), None) => Ok(base.clone()),
        (Some(_), Some(r)) if res::is_managed(rc) && redis_secret.is_none() => Err(format!(
            "the Redis password Secret {} is created in this reconcile",
            r.name
        )),
        (Some(base), Some(r)) => match &redis_secret {
            // The managed password was read above; an external one is the user's Secret.
            Some(s) if res::is_managed(rc) => res::secret_key(s, &r.key)
                .map(|p| res::url_with_password(base, &p))
                .ok_or_else(|| format!("Secret {} has no key {:?}", r.name, r.key)),
            _ => ctx
                .secret_value(&ns, &r)
                .await
                .map(|p| res::url_with_password(base, &p))
                .map_err(|e| e.to_string()),
        },
    };

    Ok(Dereferenced {
        live,
        redis_base,
        redis_url,
        fresh: Credentials::generate(),
    })
}
