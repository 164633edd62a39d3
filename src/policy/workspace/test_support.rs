//! Fixtures of the validate and build tests: the YAML resources of `tests/fixtures/builders/`,
//! compiled in, and helpers that feed them through the real `validate`.

use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::api::v1alpha1::{
    DataSource, DesiredState, NodePool, Workspace, WorkspaceProfile, WorkspaceStatus,
};
use crate::config::OperatorConfig;
use crate::policy::workspace::{
    Dereferenced, GROUPS_ANNOTATION, Refusal, ValidatedWorkspace, parse_groups,
};

const POOLS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/builders/pools.yaml"
));
const PROFILES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/builders/profiles.yaml"
));
const DATA_SOURCES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/builders/datasources.yaml"
));
const WORKSPACES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/builders/workspaces.yaml"
));

/// The API token every fixture workspace gets.
pub(crate) const TOKEN: &str = "s3cr3t-token";

/// Parses YAML with serde-saphyr, panicking with the error.
pub(crate) fn yaml<T: DeserializeOwned>(text: &str) -> T {
    match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => panic!("fixture does not parse: {e}\n{text}"),
    }
}

pub(crate) fn pools() -> Vec<NodePool> {
    yaml(POOLS)
}

pub(crate) fn profiles() -> Vec<WorkspaceProfile> {
    yaml(PROFILES)
}

pub(crate) fn data_sources() -> Vec<DataSource> {
    yaml(DATA_SOURCES)
}

fn named<T: ResourceExt>(all: Vec<T>, name: &str) -> T {
    all.into_iter()
        .find(|x| x.name_any() == name)
        .unwrap_or_else(|| panic!("no fixture named {name}"))
}

pub(crate) fn pool(name: &str) -> NodePool {
    named(pools(), name)
}

/// A workspace of `workspaces.yaml`.
pub(crate) fn workspace(name: &str) -> Workspace {
    named(yaml::<Vec<Workspace>>(WORKSPACES), name)
}

pub(crate) fn cfg() -> OperatorConfig {
    OperatorConfig::default()
}

/// What `dereference` would read for `ws` from the fixtures: its profile, every pool, the named
/// data sources that exist, the groups annotation, no other workspace.
pub(crate) fn deref(ws: &Workspace) -> Dereferenced {
    Dereferenced {
        profile: profiles()
            .into_iter()
            .find(|p| p.name_any() == ws.spec.profile),
        pools: pools(),
        data_sources: {
            let profile = profiles()
                .into_iter()
                .find(|p| p.name_any() == ws.spec.profile);
            let desktop: Vec<String> = profile
                .and_then(|p| p.spec.desktop)
                .map(|d| d.data_sources)
                .unwrap_or_default();
            data_sources()
                .into_iter()
                .filter(|d| {
                    ws.spec.data_sources.contains(&d.name_any()) || desktop.contains(&d.name_any())
                })
                .collect()
        },
        groups: parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str)),
        token: TOKEN.to_owned(),
        credential_secrets: None,
        csi_drivers: None,
        unreachable: Default::default(),
    }
}

/// `validate` with the fixtures and the default config.
pub(crate) fn try_validate(ws: &Workspace) -> Result<ValidatedWorkspace, Refusal> {
    super::validate(ws, &deref(ws), &cfg())
}

/// `validate` that must succeed.
pub(crate) fn validated(ws: &Workspace) -> ValidatedWorkspace {
    try_validate(ws).unwrap_or_else(|r| panic!("refused: {}: {}", r.reason, r.message))
}

/// A copy of `ws` named `name`, running in `pool` as its status says.
pub(crate) fn running_in(ws: &Workspace, name: &str, pool: &str) -> Workspace {
    let mut other = ws.clone();
    other.metadata.name = Some(name.to_owned());
    other.metadata.uid = Some(format!("uid-{name}"));
    other.spec.desired_state = DesiredState::Running;
    other.status = Some(WorkspaceStatus {
        node_pool: Some(pool.to_owned()),
        ..WorkspaceStatus::default()
    });
    other
}

/// Sets the groups annotation of `ws`.
pub(crate) fn with_groups(mut ws: Workspace, groups: &str) -> Workspace {
    ws.annotations_mut()
        .insert(GROUPS_ANNOTATION.to_owned(), groups.to_owned());
    ws
}
