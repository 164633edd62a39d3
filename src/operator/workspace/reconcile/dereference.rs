//! Reads everything `validate` needs from the informer caches ([`Caches`]), in a fixed order
//! and without a single API request:
//!
//! 1. the WorkspaceProfile (missing: `None`);
//! 2. the NodePools, sorted by name;
//! 3. each named DataSource, in the spec's order (missing ones are simply absent);
//! 4. the Workspace's token Secret, for the API token; when the cache shows none, the token
//!    remembered for this Workspace ([`Tokens`]: its Secret has not reached the cache yet);
//!    else, once per Workspace, GET the Secret from the API server (the hub applies it, with
//!    the token it registered, just before the Workspace: the Secret watch may lag behind the
//!    Workspace watch, and a fresh token would overwrite the hub's); else a fresh token. Either
//!    is remembered until the cache shows the Secret;
//! 5. the data sources' credentials Secrets that exist in the Workspace's namespace, among those
//!    its sources name (the metadata-only cache of the Secrets labelled
//!    `atelier.dev/credentials=true`), and the cluster's CSIDrivers with their
//!    `volumeLifecycleModes`: `validate` refuses a missing Secret or driver, or a mode the driver
//!    does not support.
//!
//! That GET is the only read left, made when a Workspace is created; a reconciliation of a
//! Workspace whose Secret is cached reads nothing from the API server. The groups come from
//! the [`GROUPS_ANNOTATION`]. What the other Workspaces use is not read here: the caps are
//! decided by admission against the usage index ([`crate::policy::admission`]).
//!
//! [`Caches`]: crate::operator::workspace::cache::Caches
//! [`Tokens`]: crate::operator::workspace::cache::Tokens

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use std::collections::{BTreeMap, BTreeSet};

use crate::api::v1alpha1::{DataSource, DataSourceSpec, DesiredState, NodePool, Workspace};
use crate::operator::workspace::cache::{Caches, cached_cluster};
use crate::operator::{Context, Error, Result};
use crate::policy::names;
pub use crate::policy::workspace::token_of;
use crate::policy::workspace::{Dereferenced, GROUPS_ANNOTATION, parse_groups};

/// What [`dereference`] read: the inputs of `validate`, and the token Secret it saw (so that
/// applying it needs no second read).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The inputs of `validate`.
    pub inputs: Dereferenced,
    /// The Workspace's token Secret, as cached.
    pub secret: Option<Secret>,
}

/// Reads the profile, pools, data sources and the token from the caches (the token Secret from
/// the API server once, when neither the cache nor the memory knows it).
pub async fn dereference(ws: &Workspace, ctx: &Context) -> Result<Observed> {
    let caches = &ctx.caches;
    let namespace = ws.namespace().ok_or(Error::InvalidObject("namespace"))?;

    let groups = parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str));
    let mut inputs = cached_inputs(
        caches,
        &namespace,
        &ws.spec.profile,
        &ws.spec.data_sources,
        groups,
    );
    // Endpoints are probed only before the pod is created: a running workspace is never
    // stopped because its endpoint stopped answering.
    let unreachable = match &ctx.probes {
        Some(probes)
            if ws.spec.desired_state == DesiredState::Running && caches.pods_of(ws).is_empty() =>
        {
            unreachable_endpoints(probes, &inputs.data_sources).await
        }
        _ => BTreeMap::new(),
    };

    let secret_name = names::secret_name(&ws.name_any());
    let mut secret: Option<Secret> = caches.secrets.get(&namespace, &secret_name);
    // The API server always sets a UID; the key stands in for objects built without one.
    let uid = ws
        .uid()
        .unwrap_or_else(|| format!("{namespace}/{}", ws.name_any()));
    let token = match secret.as_ref().and_then(token_of) {
        Some(token) => {
            ctx.tokens.forget(&uid);
            token
        }
        None => match ctx.tokens.remembered(&uid) {
            Some(token) => token,
            None => {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
                let live =
                    api.get_opt(&secret_name)
                        .await
                        .map_err(|source| Error::Dereference {
                            what: format!("Secret {secret_name}"),
                            source,
                        })?;
                let token = match live.as_ref().and_then(token_of) {
                    Some(token) => token,
                    None => fresh_token()?,
                };
                ctx.tokens.remember(&uid, &token);
                secret = secret.or(live);
                token
            }
        },
    };

    inputs.token = token;
    inputs.unreachable = unreachable;
    Ok(Observed { inputs, secret })
}

/// What the Workspace and BatchJob controllers read from the caches before `validate`: the
/// profile, every pool (by name), the named data sources that exist, the credentials Secrets
/// of those sources that exist in `namespace`, and the CSI drivers; with `groups`, no token
/// and nothing probed.
pub(crate) fn cached_inputs(
    caches: &Caches,
    namespace: &str,
    profile: &str,
    data_sources: &[String],
    groups: BTreeSet<String>,
) -> Dereferenced {
    let profile = cached_cluster(&caches.profiles, profile);
    let mut pools: Vec<NodePool> = caches
        .pools
        .state()
        .iter()
        .map(|p| p.as_ref().clone())
        .collect();
    pools.sort_by_key(ResourceExt::name_any);
    // The spec's sources, then the profile's desktop ones (a desktop shows their OGC services).
    let desktop = profile
        .as_ref()
        .and_then(|p| p.spec.desktop.as_ref())
        .map(|d| d.data_sources.as_slice())
        .unwrap_or_default();
    let data_sources: Vec<DataSource> = data_sources
        .iter()
        .chain(desktop.iter().filter(|n| !data_sources.contains(n)))
        .filter_map(|name| cached_cluster(&caches.data_sources, name))
        .collect();
    let credential_secrets: BTreeSet<String> = data_sources
        .iter()
        .flat_map(|source| credential_secret_names(&source.spec))
        .filter(|name| caches.has_credentials(namespace, name))
        .map(str::to_owned)
        .collect();
    Dereferenced {
        profile,
        pools,
        data_sources,
        groups,
        token: String::new(),
        credential_secrets: Some(credential_secrets),
        csi_drivers: Some(caches.csi_driver_modes()),
        unreachable: BTreeMap::new(),
    }
}

/// The s3 endpoints of `sources` that do not answer ([`crate::net::Probes`]: each endpoint at
/// most once a minute, whatever the number of Workspaces naming it), with why.
async fn unreachable_endpoints(
    probes: &crate::net::Probes,
    sources: &[DataSource],
) -> BTreeMap<String, String> {
    let endpoints: BTreeSet<&str> = sources
        .iter()
        .filter_map(|s| s.spec.s3.as_ref().map(|s3| s3.endpoint.as_str()))
        .collect();
    let mut unreachable = BTreeMap::new();
    for endpoint in endpoints {
        if let Err(why) = probes.check(endpoint).await {
            unreachable.insert(endpoint.to_owned(), why);
        }
    }
    unreachable
}

/// Every Secret a data source may hand out (`policy::data::named_secrets`), by name.
pub fn credential_secret_names(spec: &DataSourceSpec) -> Vec<&str> {
    crate::policy::data::named_secrets(spec)
        .into_iter()
        .map(|(secret, _)| secret.name.as_str())
        .collect()
}

/// 32 random bytes, hex-encoded.
pub fn fresh_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(Error::Token)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::workspace::TOKEN_KEY;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    #[test]
    fn tokens_are_64_hex_chars_and_differ() {
        let a = fresh_token().expect("random");
        let b = fresh_token().expect("random");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn token_is_read_from_data_or_string_data() {
        let mut secret = Secret::default();
        assert_eq!(token_of(&secret), None);
        secret.string_data = Some(BTreeMap::from([(TOKEN_KEY.into(), "s".into())]));
        assert_eq!(token_of(&secret).as_deref(), Some("s"));
        secret.data = Some(BTreeMap::from([(
            TOKEN_KEY.into(),
            ByteString(b"d".to_vec()),
        )]));
        assert_eq!(token_of(&secret).as_deref(), Some("d"));
        secret.data = Some(BTreeMap::from([(TOKEN_KEY.into(), ByteString(Vec::new()))]));
        secret.string_data = None;
        assert_eq!(token_of(&secret), None, "an empty token is no token");
    }
}
