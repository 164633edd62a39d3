//! Settings shared by the hub, the kubernetes backend and the operator: where workspaces live
//! and how they reach the hub. Plain data, below every other layer but `api`.

use std::collections::BTreeMap;

pub mod user_domain;

pub use user_domain::{UserDomain, parse_user_domain};

/// How workspaces are spread over namespaces (command-line form of [`NamespaceMode`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceModeArg {
    /// Every workspace lives in the namespace of its Workspace.
    Shared,
    /// Each user has a namespace `<prefix><user>`.
    PerUser,
}

/// How workspaces are spread over namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceMode {
    /// Every workspace lives in the namespace its Workspace was created in (usually one shared
    /// namespace next to the hub).
    Shared,
    /// Each user has a namespace `<prefix><user>`; a Workspace must live in its user's namespace,
    /// which the operator equips with a ResourceQuota, a LimitRange and a NetworkPolicy.
    PerUser {
        /// Prefix of the per-user namespaces, e.g. `atelier-u-`.
        prefix: String,
    },
}

/// Settings the pure builders need; filled from `atelier operator`'s arguments (`crate::operator::OperatorArgs`).
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// Namespace model.
    pub namespace_mode: NamespaceMode,
    /// Namespace the hub and proxy run in (NetworkPolicies admit only them).
    pub hub_namespace: String,
    /// The hub's API as workspaces reach it, e.g. `http://atelier-hub.atelier.svc:8081/hub/api`.
    pub hub_api_url: String,
    /// Public base URL of the site, e.g. `https://vre.example.org` (for OAuth callbacks); empty
    /// means relative URLs (`/user/...`).
    pub public_url: String,
    /// Labels of the hub's pods.
    pub hub_pod_labels: BTreeMap<String, String>,
    /// Labels of the proxy's pods.
    pub proxy_pod_labels: BTreeMap<String, String>,
    /// Port the workspace server listens on.
    pub server_port: i32,
    /// UID the workspace runs as (non-root).
    pub run_as_user: i64,
    /// GID owning the home volume.
    pub fs_group: i64,
    /// `imagePullPolicy` of workspace containers.
    pub image_pull_policy: String,
    /// The hub's `--user-domain`: each user's servers are opened at `<label>.<domain>`, so their
    /// OAuth callback is there and they send browsers to the hub's own host to log in
    /// (`JUPYTERHUB_HOST`). `None`: everything on the site's public URL.
    pub user_domain: Option<UserDomain>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            namespace_mode: NamespaceMode::Shared,
            hub_namespace: "atelier".into(),
            hub_api_url: "http://atelier-hub.atelier.svc:8081/hub/api".into(),
            public_url: String::new(),
            hub_pod_labels: BTreeMap::from([
                ("app.kubernetes.io/name".into(), "atelier".into()),
                ("app.kubernetes.io/component".into(), "hub".into()),
            ]),
            proxy_pod_labels: BTreeMap::from([
                ("app.kubernetes.io/name".into(), "atelier".into()),
                ("app.kubernetes.io/component".into(), "proxy".into()),
            ]),
            server_port: 8888,
            run_as_user: 1000,
            fs_group: 100,
            image_pull_policy: "IfNotPresent".into(),
            user_domain: None,
        }
    }
}
