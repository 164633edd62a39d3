//! The Workspace controller: dereference → validate → build → apply → status.
//!
//! `validate` ([`crate::policy::workspace::validate()`]) and `build` are pure (no client, not
//! async); the types of [`crate::policy::workspace`] are the contract between them and the I/O
//! steps in `reconcile`, which read the informer caches of [`cache`] and decide the caps with
//! the usage index of [`crate::policy::admission`].

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use crate::policy::workspace::{
    Dereferenced, EffectiveResources, GROUPS_ANNOTATION, HomeVolume, PlacedPool, Refusal,
    SERVER_LABEL, TOKEN_KEY, USER_LABEL, ValidatedWorkspace, WORKSPACE_LABEL, parse_groups,
};

pub mod build;
pub mod cache;
pub mod dask;
#[cfg(test)]
pub mod fixtures;
pub mod reconcile;
pub mod status;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "atelier-operator";

/// Annotation with the sha256 of the desired object the operator last applied
/// ([`reconcile::apply`] skips an object that carries the hash of the desired one). It lives
/// here, below both the applier and the caches that keep it.
pub const APPLIED_HASH_ANNOTATION: &str = "atelier.dev/applied-hash";

/// The hash an observed object was applied with, if any ([`APPLIED_HASH_ANNOTATION`]).
pub fn applied_hash<K: kube::Resource>(observed: &K) -> Option<&str> {
    observed
        .meta()
        .annotations
        .as_ref()?
        .get(APPLIED_HASH_ANNOTATION)
        .map(String::as_str)
}
/// Finalizer that stops the workspace and applies the home-volume policy before deletion.
pub const WORKSPACE_FINALIZER: &str = "atelier.dev/workspace-cleanup";
/// Name of the Workspace controller (metrics label, event reporter).
pub const WORKSPACE_CONTROLLER_NAME: &str = "workspace-controller";
/// Desired children of one Workspace, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkspaceResources {
    /// The Secret holding the server's API token.
    pub secret: Secret,
    /// The home volume claim.
    pub pvc: PersistentVolumeClaim,
    /// The Service in front of the server.
    pub service: Service,
    /// Admits only the proxy and the hub to the server.
    pub network_policy: NetworkPolicy,
    /// The server's pod; `None` when the workspace is stopped.
    pub pod: Option<Pod>,
}

/// Objects that equip a per-user namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct UserNamespaceResources {
    /// The namespace itself (labels).
    pub namespace: k8s_openapi::api::core::v1::Namespace,
    /// Quota derived from the user's caps.
    pub resource_quota: k8s_openapi::api::core::v1::ResourceQuota,
    /// Defaults and bounds for containers.
    pub limit_range: k8s_openapi::api::core::v1::LimitRange,
    /// Default-deny ingress except from the hub and proxy.
    pub network_policy: NetworkPolicy,
}
