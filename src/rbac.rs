//! The Kubernetes API calls each component makes: ONE table ([`CALLS`]) from which the chart's
//! RBAC rules are checked (`tests/chart.rs` renders the chart and compares every Role and
//! ClusterRole bound to a component's ServiceAccount with [`rules`]: each call granted, nothing
//! more).
//!
//! Keep this table next to the code: a new `Api` call in `src/operator/**`,
//! `src/backend/kubernetes*` or `src/hub/catalog.rs` needs its row here. The operator's mock-API
//! tests (`src/operator/workspace/fixtures.rs`) check every request they see with [`granted`],
//! so a missed call fails them.
//!
//! The verbs follow the Kubernetes RBAC documentation ("Referring to resources", "Request
//! verbs", kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb):
//!
//! - a server-side apply (PATCH, `application/apply-patch+yaml`) that may create the object needs
//!   `create` *and* `patch`;
//! - a status write is `patch` on `<resource>/status`;
//! - setting `blockOwnerDeletion` in a child's owner reference (kube's `controller_owner_ref`)
//!   needs `update` on `<owner resource>/finalizers` where the OwnerReferencesPermissionEnforcement
//!   admission plugin runs;
//! - a watch is `list` + `watch`; kube's Event recorder `create`s, then `patch`es a series.

#[cfg(test)]
pub mod testing;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Who makes the call (each has its own ServiceAccount in the chart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// `atelier operator`.
    Operator,
    /// `atelier hub` with `--backend kubernetes` (the backend and the catalogue).
    Hub,
}

/// Where the call reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A namespaced resource in a workspace namespace (the watched namespace in shared mode, the
    /// user's namespace in per-user mode).
    Namespaced,
    /// A namespaced resource across all namespaces (a cluster-wide list).
    AllNamespaces,
    /// A cluster-scoped resource.
    Cluster,
    /// A namespaced resource in the component's own namespace (the release namespace): the
    /// operator's leader-election Lease. The chart grants these calls in both namespace modes
    /// with a Role named `<component fullname>`[`OWN_ROLE_SUFFIX`] there, so the component
    /// needs no cluster-wide right on the kind.
    OwnNamespace,
}

/// Suffix of the name of the Role granting a component's [`Scope::OwnNamespace`] calls
/// (`atelier-operator-leader-election`).
pub const OWN_ROLE_SUFFIX: &str = "-leader-election";

/// In which namespace mode the call is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    /// Shared and per-user mode.
    Both,
    /// Per-user mode only.
    PerUser,
}

/// A namespace mode, as the chart's `namespaceMode` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `shared`.
    Shared,
    /// `per-user`.
    PerUser,
}

/// One row of [`CALLS`].
#[derive(Clone, Copy, Debug)]
pub struct ApiCall {
    /// The caller.
    pub component: Component,
    /// The RBAC verbs the calls need.
    pub verbs: &'static [&'static str],
    /// API group (`""`: core).
    pub group: &'static str,
    /// Resource (plural), or `resource/subresource`.
    pub resource: &'static str,
    /// Namespaced, across namespaces, or cluster-scoped.
    pub scope: Scope,
    /// Namespace modes in which the call is made.
    pub modes: Modes,
    /// Where in the code the calls are made.
    pub site: &'static str,
}

const fn call(
    component: Component,
    verbs: &'static [&'static str],
    group: &'static str,
    resource: &'static str,
    scope: Scope,
    modes: Modes,
    site: &'static str,
) -> ApiCall {
    ApiCall {
        component,
        verbs,
        group,
        resource,
        scope,
        modes,
        site,
    }
}

use Component::{Hub, Operator};
use Modes::{Both, PerUser};
use Scope::{AllNamespaces, Cluster, Namespaced, OwnNamespace};

/// Every API call of the operator and of the hub's kubernetes backend.
#[rustfmt::skip]
pub const CALLS: &[ApiCall] = &[
    // --- the operator: src/operator/** ---
    call(Operator, &["list", "watch"], "atelier.dev", "workspaces", Namespaced, Both,
        "operator/workspace/reconcile/controller.rs: the Workspace watch (cache, usage index, triggers)"),
    call(Operator, &["patch"], "atelier.dev", "workspaces", Namespaced, Both,
        "operator/workspace/reconcile.rs: kube::runtime::finalizer adds/removes the finalizer (JSON patch)"),
    call(Operator, &["patch"], "atelier.dev", "workspaces/status", Namespaced, Both,
        "operator/workspace/reconcile.rs: update_status (server-side apply of the status)"),
    call(Operator, &["update"], "atelier.dev", "workspaces/finalizers", Namespaced, Both,
        "operator/workspace/build.rs: children's owner references set blockOwnerDeletion"),
    call(Operator, &["list", "watch"], "atelier.dev", "workspaceprofiles", Cluster, Both,
        "controller.rs: the profile watch (cache read by dereference.rs and cleanup_workspace)"),
    call(Operator, &["list", "watch"], "atelier.dev", "nodepools", Cluster, Both,
        "controller.rs: the pool watch (cache read by dereference.rs)"),
    call(Operator, &["list", "watch"], "atelier.dev", "datasources", Cluster, Both,
        "controller.rs: the data-source watch (cache read by dereference.rs)"),
    call(Operator, &["get", "list", "watch", "create", "patch"], "", "secrets", Namespaced, Both,
        "controller.rs: the Secret watch (the token, read by dereference.rs, which GETs a new \
         Workspace's Secret the hub wrote before it reached the cache); apply.rs: apply_object"),
    call(Operator, &["list", "watch", "create", "patch", "delete"], "", "persistentvolumeclaims", Namespaced, Both,
        "controller.rs: the PVC watch; apply.rs: create_once; cleanup_workspace: DELETE (onDelete: delete); \
         replace_changed_data_volumes: DELETE of a changed data source's claim; \
         operator/batchjob/reconcile.rs: the home claim of a job's owner (SSA, when the cache lacks it)"),
    call(Operator, &["list", "watch", "create", "patch", "delete"], "", "services", Namespaced, Both,
        "controller.rs: the Service watch; apply.rs: apply_service (DELETE + re-create of a ClusterIP Service)"),
    call(Operator, &["list", "watch", "create", "patch", "delete"], "networking.k8s.io", "networkpolicies", Namespaced, Both,
        "controller.rs: the NetworkPolicy watch; apply.rs: apply_object (and the per-user namespace's policy); \
         reconcile/dask.rs: delete_dask (the Dask cluster's policy when the workspace stops or drops Dask)"),
    // Dask (issue 12): the workspace's dask-kubernetes cluster, a child of the Workspace.
    call(Operator, &["list", "watch", "create", "patch", "delete"], "kubernetes.dask.org", "daskclusters", Namespaced, Both,
        "reconcile/dask.rs: watch_dask (cache, CRD presence), reconcile_dask (SSA), delete_dask"),
    call(Operator, &["list", "watch", "create", "patch", "delete"], "kubernetes.dask.org", "daskautoscalers", Namespaced, Both,
        "reconcile/dask.rs: watch_dask (cache), reconcile_dask (SSA), delete_dask"),
    call(Operator, &["list", "watch", "create", "patch", "delete"], "", "pods", Namespaced, Both,
        "controller.rs: the pod watch; apply.rs: reconcile_pod, delete_live, \
         replace_changed_data_volumes (the pod goes before a changed data source's claim)"),
    // The data sources (issue 11): build.rs builds these objects (`data_children`, the pod's
    // catalogue volume); the reconcile wiring makes the calls listed in each row's site.
    call(Operator, &["list", "watch"], "", "secrets", Namespaced, Both,
        "data sources: a metadata-only watch of the credentials Secrets labelled \
         atelier.dev/credentials=true (dereference: the user's Secret exists). RBAC cannot grant a \
         list or watch by label selector: this is every Secret of the namespace, as the token row \
         above already grants (no new right)"),
    call(Operator, &["list", "watch"], "storage.k8s.io", "csidrivers", Cluster, Both,
        "data sources: the CSIDriver watch (dereference: the driver is installed; its \
         volumeLifecycleModes decide build::csi_mode)"),
    call(Operator, &["list", "watch", "create", "patch", "delete"], "", "persistentvolumes", Cluster, Both,
        "data sources: the PersistentVolume watch (label managed-by); apply: SSA of \
         build::data_children's volumes; cleanup, replace_changed_data_volumes (a changed \
         DataSource) and the orphan sweep (controller.rs sweep_orphans_periodically, \
         apply.rs sweep_orphaned_data_volumes: list from the watch cache, DELETE): DELETE of a \
         workspace's labelled volumes (a cluster-scoped volume has no namespaced owner to be \
         collected with)"),
    call(Operator, &["list", "watch", "create", "patch", "delete"], "", "configmaps", Namespaced, Both,
        "data sources: the ConfigMap watch (label managed-by); apply: SSA of the catalogue \
         (build::build_catalog_config_map); DELETE when the workspace drops its last data source \
         (with the Workspace it goes by its owner reference)"),
    call(Operator, &["create"], "events.k8s.io", "events", Namespaced, Both,
        "reconcile.rs: kube::runtime::events::Recorder, a fresh one per Event (create; never a series patch)"),
    call(Operator, &["list", "watch", "create", "patch"], "", "namespaces", Cluster, PerUser,
        "controller.rs: the user namespace watch; apply.rs: apply_user_namespace"),
    call(Operator, &["list", "watch", "create", "patch"], "", "resourcequotas", Namespaced, PerUser,
        "controller.rs: the quota watch; apply.rs: apply_user_namespace"),
    call(Operator, &["list", "watch", "create", "patch"], "", "limitranges", Namespaced, PerUser,
        "controller.rs: the LimitRange watch; apply.rs: apply_user_namespace"),
    // BatchJobs (issue 13): src/operator/batchjob/reconcile.rs.
    call(Operator, &["list", "watch"], "atelier.dev", "batchjobs", Namespaced, Both,
        "operator/batchjob/reconcile.rs: run_controller, the BatchJob watch (cache, usage index, triggers)"),
    call(Operator, &["patch"], "atelier.dev", "batchjobs", Namespaced, Both,
        "operator/batchjob/reconcile.rs: kube::runtime::finalizer adds/removes the finalizer of a Slurm-backed BatchJob (JSON patch)"),
    call(Operator, &["patch"], "atelier.dev", "batchjobs/status", Namespaced, Both,
        "operator/batchjob/reconcile.rs: update_status (server-side apply of the status)"),
    call(Operator, &["update"], "atelier.dev", "batchjobs/finalizers", Namespaced, Both,
        "operator/batchjob/build.rs: the Job's and the catalogue's owner references set blockOwnerDeletion"),
    call(Operator, &["list", "watch", "create", "delete"], "batch", "jobs", Namespaced, Both,
        "operator/batchjob/reconcile.rs: the Job watch (label managed-by); create_job (POST, once: a Job's \
         spec is immutable); delete_job (cancel, a job that cannot start; propagation Background)"),
    call(Operator, &["list", "watch"], "", "secrets", OwnNamespace, Both,
        "operator/batchjob/reconcile.rs: the watch of the Slurm pools' signing-key Secrets \
         (labelled atelier.dev/slurm-key=true) in the operator's namespace"),
    call(Operator, &["get", "create", "update"], "coordination.k8s.io", "leases", OwnNamespace, Both,
        "operator/lease.rs: try_acquire_or_renew (GET, POST when absent, PUT to renew or take over), release (PUT)"),
    // --- the hub: src/backend/kubernetes.rs, src/backend/kubernetes/{observer,jobs}.rs, src/hub/catalog.rs ---
    call(Hub, &["get", "list", "watch", "create", "patch"], "atelier.dev", "workspaces", Namespaced, Both,
        "backend/kubernetes.rs: resolve_name (GET, LIST), the Workspace (SSA), request_stop (merge patch), \
         watch_object, poll_workspace; observer.rs: GET, LIST (shared mode)"),
    call(Hub, &["get", "list", "watch", "create", "patch"], "atelier.dev", "batchjobs", Namespaced, Both,
        "backend/kubernetes/jobs.rs: BatchJobs::submit and cancel (SSA), read (GET when the cache lacks it), \
         spawn_cache (list, watch: the shared namespace)"),
    call(Hub, &["list", "watch"], "atelier.dev", "batchjobs", AllNamespaces, PerUser,
        "backend/kubernetes/jobs.rs: spawn_cache watches every namespace's BatchJobs in per-user mode"),
    call(Hub, &["get"], "", "pods/log", Namespaced, Both,
        "backend/kubernetes/jobs.rs: BatchJobs::logs (the log of the job's pod)"),
    call(Hub, &["list"], "atelier.dev", "workspaces", AllNamespaces, PerUser,
        "backend/kubernetes/observer.rs: WorkspaceObserver::list lists every namespace's Workspaces"),
    call(Hub, &["get", "create", "patch"], "", "secrets", Namespaced, Both,
        "backend/kubernetes.rs: the token Secret (SSA); observer.rs: WorkspaceObserver::token (GET)"),
    call(Hub, &["create", "patch"], "", "namespaces", Cluster, PerUser,
        "backend/kubernetes.rs: apply_namespace (SSA)"),
    call(Hub, &["list"], "atelier.dev", "workspaceprofiles", Cluster, Both,
        "hub/catalog.rs: list_cluster"),
    call(Hub, &["list"], "atelier.dev", "nodepools", Cluster, Both,
        "hub/catalog.rs: list_cluster"),
    call(Hub, &["list"], "atelier.dev", "datasources", Cluster, Both,
        "hub/catalog.rs: list_cluster"),
];

/// `(group, resource)` → verbs.
pub type RuleSet = BTreeMap<(String, String), BTreeSet<String>>;

/// The rules a component needs in a namespace mode: `(Role, ClusterRole)`.
///
/// Shared mode: namespaced calls go to a Role in the workspace namespace; cluster-scoped and
/// cluster-wide calls to a ClusterRole. Per-user mode: workspace namespaces are made on the fly,
/// so everything is in the ClusterRole (the Role is empty). The calls in the component's own
/// namespace are apart: [`own_namespace_rules`].
pub fn rules(component: Component, mode: Mode) -> (RuleSet, RuleSet) {
    let mut role = RuleSet::new();
    let mut cluster = RuleSet::new();
    for c in CALLS.iter().filter(|c| c.component == component) {
        if c.modes == PerUser && mode != Mode::PerUser {
            continue;
        }
        let target = match (c.scope, mode) {
            (OwnNamespace, _) => continue,
            (Namespaced, Mode::Shared) => &mut role,
            _ => &mut cluster,
        };
        target
            .entry((c.group.to_owned(), c.resource.to_owned()))
            .or_default()
            .extend(c.verbs.iter().map(|v| (*v).to_owned()));
    }
    (role, cluster)
}

/// The rules of a component's [`Scope::OwnNamespace`] calls (the same in both namespace modes):
/// the Role `<fullname>`[`OWN_ROLE_SUFFIX`] in the release namespace.
pub fn own_namespace_rules(component: Component) -> RuleSet {
    let mut own = RuleSet::new();
    for c in CALLS
        .iter()
        .filter(|c| c.component == component && c.scope == OwnNamespace)
    {
        own.entry((c.group.to_owned(), c.resource.to_owned()))
            .or_default()
            .extend(c.verbs.iter().map(|v| (*v).to_owned()));
    }
    own
}

/// What the chart test compares with: component → mode → `{"Role"|"ClusterRole"|"OwnRole":
/// {"group|resource": [verbs]}, "OwnRoleSuffix": OWN_ROLE_SUFFIX}` (`OwnRole`: the Role in the
/// release namespace, [`own_namespace_rules`]).
pub fn chart_expectations() -> serde_json::Value {
    let flatten = |set: RuleSet| -> BTreeMap<String, Vec<String>> {
        set.into_iter()
            .map(|((g, r), verbs)| (format!("{g}|{r}"), verbs.into_iter().collect()))
            .collect()
    };
    let mut out = serde_json::Map::new();
    for component in [Operator, Hub] {
        let mut modes = serde_json::Map::new();
        for mode in [Mode::Shared, Mode::PerUser] {
            let (role, cluster) = rules(component, mode);
            modes.insert(
                serde_json::to_value(mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                serde_json::json!({
                    "Role": flatten(role),
                    "ClusterRole": flatten(cluster),
                    "OwnRole": flatten(own_namespace_rules(component)),
                    "OwnRoleSuffix": OWN_ROLE_SUFFIX,
                }),
            );
        }
        let name = match component {
            Operator => "operator",
            Hub => "hub",
        };
        out.insert(name.to_owned(), serde_json::Value::Object(modes));
    }
    serde_json::Value::Object(out)
}

/// What one HTTP request to the API server needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    /// Verbs (all of them are needed).
    pub verbs: Vec<&'static str>,
    /// API group.
    pub group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    /// The path names a namespace (`/namespaces/<ns>/<resource>`).
    pub namespaced: bool,
}

/// The RBAC verbs, group and resource a request needs (Kubernetes' request-verb rules), or
/// `None` for a path that is not a resource request (discovery, `/version`).
///
/// `query` is the decoded query string; `content_type` the request's `Content-Type`.
pub fn needed(
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    content_type: Option<&str>,
) -> Option<Needed> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    // `namespaces/<ns>/<resource>...` is namespaced; `namespaces[/<name>]` is the Namespace kind.
    let (namespaced, rest) = match rest {
        ["namespaces", _ns, resource, tail @ ..] => (true, (*resource, tail)),
        [resource, tail @ ..] => (false, (*resource, tail)),
        [] => return None,
    };
    let (resource, tail) = rest;
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, sub] => (Some(*name), Some(*sub)),
        _ => return None,
    };
    let collection = name.is_none();
    let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    let verbs: Vec<&'static str> = match method {
        "GET" | "HEAD" if watch => vec!["watch"],
        "GET" | "HEAD" if collection => vec!["list"],
        "GET" | "HEAD" => vec!["get"],
        "POST" => vec!["create"],
        "PUT" => vec!["update"],
        // A server-side apply creates the object when it does not exist; a status apply cannot.
        "PATCH"
            if subresource.is_none()
                && content_type.is_some_and(|t| t.starts_with("application/apply-patch")) =>
        {
            vec!["create", "patch"]
        }
        "PATCH" => vec!["patch"],
        "DELETE" if collection => vec!["deletecollection"],
        "DELETE" => vec!["delete"],
        _ => return None,
    };
    Some(Needed {
        verbs,
        group,
        resource: match subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        },
        namespaced,
    })
}

/// Whether [`CALLS`] grants `component` what `needed` asks: a namespaced request needs a
/// [`Scope::Namespaced`] or [`Scope::OwnNamespace`] row, any other a [`Scope::Cluster`] or
/// [`Scope::AllNamespaces`] row.
/// `Err` names what is missing.
pub fn granted(component: Component, needed: &Needed) -> Result<(), String> {
    let verbs: BTreeSet<&str> = CALLS
        .iter()
        .filter(|c| {
            c.component == component
                && c.group == needed.group
                && c.resource == needed.resource
                && matches!(c.scope, Namespaced | OwnNamespace) == needed.namespaced
        })
        .flat_map(|c| c.verbs.iter().copied())
        .collect();
    let missing: Vec<&str> = needed
        .verbs
        .iter()
        .copied()
        .filter(|v| !verbs.contains(v))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "src/rbac.rs CALLS does not grant {component:?} {missing:?} on {}{}{} ({})",
            needed.group,
            if needed.group.is_empty() { "" } else { "/" },
            needed.resource,
            if needed.namespaced {
                "namespaced"
            } else {
                "cluster-wide"
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RBAC_VERBS: [&str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_table_uses_only_rbac_verbs_and_lowercase_plurals() {
        for c in CALLS {
            assert!(!c.verbs.is_empty(), "{c:?}");
            assert!(c.verbs.iter().all(|v| RBAC_VERBS.contains(v)), "{c:?}");
            assert!(
                c.resource
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '/'),
                "{c:?}"
            );
        }
    }

    #[test]
    fn request_verbs_follow_kubernetes_rules() {
        let apply = Some("application/apply-patch+yaml");
        let json = Some("application/json-patch+json");
        let n = |m, p, query: &[(&str, &str)], ct| needed(m, p, &q(query), ct).expect("a resource");
        let pod = n("PATCH", "/api/v1/namespaces/team/pods/ws-alice", &[], apply);
        assert_eq!(pod.verbs, ["create", "patch"], "an apply may create");
        assert_eq!(
            (pod.group.as_str(), pod.resource.as_str(), pod.namespaced),
            ("", "pods", true)
        );
        let status = n(
            "PATCH",
            "/apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            &[],
            apply,
        );
        assert_eq!(status.verbs, ["patch"]);
        assert_eq!(status.resource, "workspaces/status");
        let fin = n(
            "PATCH",
            "/apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice",
            &[],
            json,
        );
        assert_eq!(fin.verbs, ["patch"]);
        let ns = n("PATCH", "/api/v1/namespaces/atelier-u-alice", &[], apply);
        assert_eq!((ns.resource.as_str(), ns.namespaced), ("namespaces", false));
        assert_eq!(
            n("GET", "/apis/atelier.dev/v1alpha1/workspaces", &[], None).verbs,
            ["list"]
        );
        assert_eq!(
            n(
                "GET",
                "/api/v1/namespaces/team/pods",
                &[("watch", "true")],
                None
            )
            .verbs,
            ["watch"]
        );
        assert_eq!(
            n("GET", "/api/v1/namespaces/team/pods/x", &[], None).verbs,
            ["get"]
        );
        assert_eq!(
            n("DELETE", "/api/v1/namespaces/team/pods/x", &[], None).verbs,
            ["delete"]
        );
        assert_eq!(
            n(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/team/events",
                &[],
                None
            )
            .verbs,
            ["create"]
        );
        assert_eq!(needed("GET", "/version", &q(&[]), None), None);
    }

    #[test]
    fn an_apply_needs_create_the_old_chart_gap() {
        let secret = needed(
            "PATCH",
            "/api/v1/namespaces/team/secrets/ws-alice-token",
            &q(&[("fieldManager", "atelier-operator")]),
            Some("application/apply-patch+yaml"),
        )
        .expect("a resource");
        assert_eq!(granted(Operator, &secret), Ok(()));
        assert_eq!(granted(Hub, &secret), Ok(()));
        // The catalogue only lists: the hub may not GET a pool.
        let pool = needed(
            "GET",
            "/apis/atelier.dev/v1alpha1/nodepools/x",
            &q(&[]),
            None,
        )
        .expect("a resource");
        assert!(granted(Hub, &pool).is_err());
        // A namespaced row does not grant a cluster-wide list, and vice versa.
        let all_pods = needed("GET", "/api/v1/pods", &q(&[]), None).expect("a resource");
        assert!(granted(Operator, &all_pods).is_err());
    }

    #[test]
    fn shared_mode_splits_role_and_cluster_role_per_user_mode_uses_the_cluster_role() {
        let (role, cluster) = rules(Operator, Mode::Shared);
        let key = |g: &str, r: &str| (g.to_owned(), r.to_owned());
        assert!(role.contains_key(&key("", "pods")));
        assert!(!cluster.contains_key(&key("", "pods")));
        assert!(
            !role.contains_key(&key("", "namespaces"))
                && !cluster.contains_key(&key("", "namespaces"))
        );
        assert_eq!(
            cluster.get(&key("atelier.dev", "workspaces")),
            None,
            "no cluster-wide Workspace list: the caps come from the usage index"
        );
        let (role, cluster) = rules(Operator, Mode::PerUser);
        assert!(role.is_empty());
        assert!(
            cluster.contains_key(&key("", "namespaces")) && cluster.contains_key(&key("", "pods"))
        );
        let expectations = chart_expectations();
        assert_eq!(
            expectations["hub"]["shared"]["Role"]["|secrets"],
            serde_json::json!(["create", "get", "patch"])
        );
    }

    /// The data sources' calls (issue 11): PersistentVolumes and CSIDrivers are cluster-scoped
    /// in both modes, ConfigMaps and Secrets follow the workspace namespace.
    #[test]
    fn the_data_sources_calls_are_granted() {
        let apply = Some("application/apply-patch+yaml");
        let n = |m, p, query: &[(&str, &str)], ct| needed(m, p, &q(query), ct).expect("a resource");
        for request in [
            n(
                "PATCH",
                "/api/v1/persistentvolumes/atelier-data-x",
                &[("fieldManager", "atelier-operator")],
                apply,
            ),
            n(
                "DELETE",
                "/api/v1/persistentvolumes/atelier-data-x",
                &[],
                None,
            ),
            n(
                "GET",
                "/api/v1/persistentvolumes",
                &[(
                    "labelSelector",
                    "app.kubernetes.io/managed-by=atelier-operator",
                )],
                None,
            ),
            n(
                "GET",
                "/api/v1/persistentvolumes",
                &[("watch", "true")],
                None,
            ),
            n("GET", "/apis/storage.k8s.io/v1/csidrivers", &[], None),
            n(
                "GET",
                "/apis/storage.k8s.io/v1/csidrivers",
                &[("watch", "1")],
                None,
            ),
            n(
                "PATCH",
                "/api/v1/namespaces/team/configmaps/ws-alice-data",
                &[],
                apply,
            ),
            n(
                "DELETE",
                "/api/v1/namespaces/team/configmaps/ws-alice-data",
                &[],
                None,
            ),
            n(
                "GET",
                "/api/v1/namespaces/team/configmaps",
                &[("watch", "true")],
                None,
            ),
            n(
                "GET",
                "/api/v1/namespaces/team/secrets",
                &[("labelSelector", "atelier.dev/credentials=true")],
                None,
            ),
            n(
                "PATCH",
                "/api/v1/namespaces/team/persistentvolumeclaims/data-alice-x",
                &[],
                apply,
            ),
            n(
                "DELETE",
                "/api/v1/namespaces/team/persistentvolumeclaims/data-alice-x",
                &[],
                None,
            ),
        ] {
            assert_eq!(granted(Operator, &request), Ok(()), "{request:?}");
        }
        // Exactly those verbs: no get of a volume, nothing on storage classes, no CSIDriver write.
        for request in [
            n("GET", "/api/v1/persistentvolumes/x", &[], None),
            n("GET", "/apis/storage.k8s.io/v1/storageclasses", &[], None),
            n("PATCH", "/apis/storage.k8s.io/v1/csidrivers/x", &[], apply),
            n("GET", "/api/v1/configmaps", &[], None),
        ] {
            assert!(granted(Operator, &request).is_err(), "{request:?}");
        }
        // The hub makes none of them.
        assert!(
            granted(
                Hub,
                &n("GET", "/apis/storage.k8s.io/v1/csidrivers", &[], None)
            )
            .is_err()
        );
        let key = |g: &str, r: &str| (g.to_owned(), r.to_owned());
        let verbs = |set: &RuleSet, g: &str, r: &str| -> Vec<String> {
            set.get(&key(g, r))
                .map(|v| v.iter().cloned().collect())
                .unwrap_or_default()
        };
        for mode in [Mode::Shared, Mode::PerUser] {
            let (role, cluster) = rules(Operator, mode);
            assert_eq!(
                verbs(&cluster, "", "persistentvolumes"),
                ["create", "delete", "list", "patch", "watch"],
                "{mode:?}"
            );
            assert_eq!(
                verbs(&cluster, "storage.k8s.io", "csidrivers"),
                ["list", "watch"],
                "{mode:?}"
            );
            let namespaced = if mode == Mode::Shared {
                &role
            } else {
                &cluster
            };
            assert_eq!(
                verbs(namespaced, "", "configmaps"),
                ["create", "delete", "list", "patch", "watch"],
                "{mode:?}"
            );
        }
        let (role, _) = rules(Operator, Mode::Shared);
        assert_eq!(
            verbs(&role, "", "secrets"),
            ["create", "get", "list", "patch", "watch"],
            "the credentials watch adds no verb to the token's"
        );
    }

    #[test]
    fn the_lease_is_granted_by_a_role_in_the_own_namespace_in_both_modes() {
        let key = ("coordination.k8s.io".to_owned(), "leases".to_owned());
        for mode in [Mode::Shared, Mode::PerUser] {
            let (role, cluster) = rules(Operator, mode);
            assert!(
                !role.contains_key(&key) && !cluster.contains_key(&key),
                "{mode:?}: no right on Leases outside the own namespace"
            );
        }
        assert_eq!(
            own_namespace_rules(Operator)
                .get(&key)
                .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["create", "get", "update"])
        );
        assert!(own_namespace_rules(Hub).is_empty());
        let put = needed(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/atelier/leases/atelier-operator",
            &q(&[]),
            Some("application/json"),
        )
        .expect("a resource");
        assert_eq!(granted(Operator, &put), Ok(()));
        assert!(granted(Hub, &put).is_err());
        let expectations = chart_expectations();
        assert_eq!(
            expectations["operator"]["per-user"]["OwnRole"]["coordination.k8s.io|leases"],
            serde_json::json!(["create", "get", "update"])
        );
        assert_eq!(
            expectations["operator"]["shared"]["OwnRoleSuffix"],
            "-leader-election"
        );
    }
}
