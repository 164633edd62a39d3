//! Reads everything `validate` needs, in a fixed order:
//!
//! 1. GET the WorkspaceProfile (missing: `None`);
//! 2. LIST the NodePools;
//! 3. GET each named DataSource, in the spec's order (missing ones are simply absent);
//! 4. LIST every Workspace (all namespaces) for the caps, without this one;
//! 5. LIST the Workspace's Secrets (label `atelier.dev/workspace=<name>`) for the API token, or
//!    generate a fresh one when none holds a token.
//!
//! The groups come from the [`GROUPS_ANNOTATION`]; no request.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::children_selector;
use crate::api::v1alpha1::{DataSource, NodePool, Workspace, WorkspaceProfile};
use crate::operator::{Context, Error, Result};
pub use crate::policy::workspace::token_of;
use crate::policy::workspace::{Dereferenced, GROUPS_ANNOTATION, parse_groups};

/// What [`dereference`] read: the inputs of `validate`, and the Secrets it saw (so that applying
/// the token Secret needs no second read).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The inputs of `validate`.
    pub inputs: Dereferenced,
    /// The Workspace's Secrets, sorted by name.
    pub secrets: Vec<Secret>,
}

fn read_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Dereference { what, source }
}

/// Reads the profile, pools, data sources, other workspaces and the token.
pub async fn dereference(ws: &Workspace, ctx: &Context) -> Result<Observed> {
    let client = &ctx.client;
    let namespace = ws.namespace().ok_or(Error::InvalidObject("namespace"))?;

    let profiles: Api<WorkspaceProfile> = Api::all(client.clone());
    let profile = profiles
        .get_opt(&ws.spec.profile)
        .await
        .map_err(read_error(format!("WorkspaceProfile {}", ws.spec.profile)))?;

    let pools: Api<NodePool> = Api::all(client.clone());
    let mut pools = pools
        .list(&ListParams::default())
        .await
        .map_err(read_error("NodePool list"))?
        .items;
    pools.sort_by_key(ResourceExt::name_any);

    let sources: Api<DataSource> = Api::all(client.clone());
    let mut data_sources = Vec::new();
    for name in &ws.spec.data_sources {
        if let Some(source) = sources
            .get_opt(name)
            .await
            .map_err(read_error(format!("DataSource {name}")))?
        {
            data_sources.push(source);
        }
    }

    let workspaces: Api<Workspace> = Api::all(client.clone());
    let mut other_workspaces: Vec<Workspace> = workspaces
        .list(&ListParams::default())
        .await
        .map_err(read_error("Workspace list"))?
        .items
        .into_iter()
        .filter(|other| !same_object(other, ws))
        .collect();
    other_workspaces.sort_by_key(|w| (w.namespace(), w.name_any()));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let selector = children_selector(ws);
    let mut secrets = secrets
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(read_error(format!("Secret list ({selector})")))?
        .items;
    secrets.sort_by_key(ResourceExt::name_any);
    let token = match secrets.iter().find_map(token_of) {
        Some(token) => token,
        None => fresh_token()?,
    };

    let groups = parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str));
    Ok(Observed {
        inputs: Dereferenced {
            profile,
            pools,
            data_sources,
            groups,
            other_workspaces,
            token,
        },
        secrets,
    })
}

/// Same Workspace: same UID, or same namespace and name when UIDs are missing.
fn same_object(a: &Workspace, b: &Workspace) -> bool {
    match (a.meta().uid.as_deref(), b.meta().uid.as_deref()) {
        (Some(x), Some(y)) => x == y,
        _ => a.namespace() == b.namespace() && a.name_any() == b.name_any(),
    }
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
