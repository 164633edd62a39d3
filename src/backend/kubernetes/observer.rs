//! What the hub's Workspace sync sees of the cluster: the Workspaces this configuration
//! manages, one Workspace by handle, and the token in a Workspace's Secret. It reports and
//! never decides: the hub's sync (`crate::hub::sync`) decides what to store (adopt a running
//! Workspace no server row knows, mark stopped a server whose Workspace stopped or went away).
//!
//! Its requests, in the order the sync makes them: one `LIST` of the Workspaces (the shared
//! namespace, or every namespace in per-user mode, keeping those in their user's namespace);
//! the token Secret of a Workspace only when the hub is about to adopt it; a `GET` of a
//! Workspace only for a running server whose Workspace was not listed.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{KubernetesBackendConfig, WorkspaceHandle, spec, status_of};
use crate::api::v1alpha1::Workspace;
use crate::backend::{BackendError, BackendStatus};
use crate::config::NamespaceMode;
use crate::policy::names;
use crate::policy::workspace::token_of;

/// One Workspace as a pass sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedWorkspace {
    /// `spec.user`.
    pub user: String,
    /// `spec.serverName`.
    pub server: String,
    /// `spec.profile`.
    pub profile: String,
    /// Where it is.
    pub handle: WorkspaceHandle,
    /// Its status as the backend reports it ([`status_of`]); `Running` carries `status.url`.
    pub status: BackendStatus,
}

/// Reads Workspaces and their token Secrets for the hub's sync.
#[derive(Clone)]
pub struct WorkspaceObserver {
    client: Client,
    config: KubernetesBackendConfig,
}

impl WorkspaceObserver {
    pub fn new(client: Client, config: KubernetesBackendConfig) -> WorkspaceObserver {
        WorkspaceObserver { client, config }
    }

    /// The Workspaces this configuration manages, sorted by namespace and name.
    pub async fn list(&self) -> Result<Vec<ObservedWorkspace>, BackendError> {
        let config = &self.config;
        let api: Api<Workspace> = match &config.namespace_mode {
            NamespaceMode::Shared => Api::namespaced(self.client.clone(), &config.namespace),
            NamespaceMode::PerUser { .. } => Api::all(self.client.clone()),
        };
        let mut listed = api
            .list(&ListParams::default())
            .await
            .map_err(|e| anyhow::Error::new(e).context("listing Workspaces"))?
            .items;
        listed.retain(|ws| config.manages(&ws.namespace().unwrap_or_default(), &ws.spec.user));
        listed.sort_by_key(|ws| (ws.namespace(), ws.name_any()));
        Ok(listed
            .iter()
            .map(|ws| ObservedWorkspace {
                user: ws.spec.user.clone(),
                server: ws.spec.server_name.clone(),
                profile: ws.spec.profile.clone(),
                handle: spec::handle_of(ws),
                status: status_of(Some(ws)),
            })
            .collect())
    }

    /// The status of the Workspace at `handle` (`Stopped` when it is gone).
    pub async fn status(&self, handle: &WorkspaceHandle) -> Result<BackendStatus, kube::Error> {
        let api: Api<Workspace> = Api::namespaced(self.client.clone(), &handle.namespace);
        Ok(status_of(api.get_opt(&handle.name).await?.as_ref()))
    }

    /// The token of the Workspace's Secret `ws-<name>-token`, if it holds one.
    pub async fn token(&self, handle: &WorkspaceHandle) -> Result<Option<String>, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &handle.namespace);
        Ok(api
            .get_opt(&names::secret_name(&handle.name))
            .await?
            .as_ref()
            .and_then(token_of))
    }

    /// Whether `handle`'s namespace is one this configuration manages.
    pub fn in_scope(&self, handle: &WorkspaceHandle) -> bool {
        match &self.config.namespace_mode {
            NamespaceMode::Shared => handle.namespace == self.config.namespace,
            NamespaceMode::PerUser { prefix } => handle.namespace.starts_with(prefix.as_str()),
        }
    }
}
