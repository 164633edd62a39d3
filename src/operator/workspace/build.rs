//! Pure builders: a [`ValidatedWorkspace`] in, Kubernetes objects out. Deterministic output.

use std::collections::BTreeSet;

use super::{UserNamespaceResources, ValidatedWorkspace, WorkspaceResources};
use crate::api::v1alpha1::NodePool;
use crate::operator::config::OperatorConfig;

/// The children of one Workspace.
pub fn build(_v: &ValidatedWorkspace, _cfg: &OperatorConfig) -> WorkspaceResources {
    unimplemented!("being written")
}

/// The namespace, ResourceQuota, LimitRange and NetworkPolicy of a user's own namespace.
pub fn build_user_namespace(
    _namespace: &str,
    _user: &str,
    _groups: &BTreeSet<String>,
    _pools: &[NodePool],
    _cfg: &OperatorConfig,
) -> UserNamespaceResources {
    unimplemented!("being written")
}
