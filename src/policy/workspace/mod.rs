//! What a workspace start must satisfy, shared by the hub (which checks a start before it writes
//! anything) and the operator (which checks again at every reconcile): the validated workspace,
//! refusals, profile, pool and data-source eligibility, and the labels that tie a Workspace's
//! children to it. Pure: no client, no clock.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Affinity, Secret, Toleration};

use crate::api::v1alpha1::{
    DataSource, DataSourceSpec, DesiredState, HomeReclaim, NodePool, PoolPurpose, Workspace,
    WorkspaceKind, WorkspaceProfile,
};

pub mod validate;

pub use validate::{admit, admit_dask, claim, dask_claim, dask_key, reason, validate};

pub use super::groups::{GROUPS_ANNOTATION, parse_groups};
/// Label with the owner's name on every child object.
pub const USER_LABEL: &str = "atelier.dev/user";
/// Label with the server name on every child object.
pub const SERVER_LABEL: &str = "atelier.dev/server";
/// Label with the Workspace name on every child object.
pub const WORKSPACE_LABEL: &str = "atelier.dev/workspace";
/// Key of the API token in the per-workspace Secret.
pub const TOKEN_KEY: &str = "token";

/// Everything `validate` needs, read from the API server by `dereference`.
#[derive(Clone, Debug, Default)]
pub struct Dereferenced {
    /// The profile named by the spec, if it exists.
    pub profile: Option<WorkspaceProfile>,
    /// Every NodePool.
    pub pools: Vec<NodePool>,
    /// Every DataSource named by the spec that exists (missing ones are refused by `validate`),
    /// and those of the profile's `desktop.dataSources` that exist (missing or forbidden ones
    /// are left out of the desktop, not refused).
    pub data_sources: Vec<DataSource>,
    /// The owner's groups, parsed from [`GROUPS_ANNOTATION`].
    pub groups: BTreeSet<String>,
    /// The server's API token: read from the existing Secret, or freshly generated when there is none.
    pub token: String,
    /// The credentials Secrets that exist where the workspace runs (by name); `None`: not
    /// checked (a caller that cannot see them), so a missing Secret is not refused.
    pub credential_secrets: Option<BTreeSet<String>>,
    /// The cluster's CSI drivers, by name, with their `volumeLifecycleModes` (`Persistent`,
    /// `Ephemeral`); `None`: not checked.
    pub csi_drivers: Option<BTreeMap<String, Vec<String>>>,
    /// The data sources' s3 endpoints that did not answer a probe, with why (`net::probe`);
    /// empty when every probed endpoint answered, or none was probed (the operator probes only
    /// before it creates a pod: a running workspace is never stopped for it).
    pub unreachable: BTreeMap<String, String>,
}

/// Why a workspace may not run. `reason` is a CamelCase condition reason naming the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Condition reason, e.g. `ProfileForbidden`, `NoEligiblePool`, `UserCapExceeded`.
    pub reason: &'static str,
    /// Human-readable message naming the rule, the limit and the value.
    pub message: String,
}

/// The pool a workspace was placed on, reduced to what the pod needs.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedPool {
    /// NodePool name.
    pub name: String,
    /// Its purpose.
    pub purpose: PoolPurpose,
    /// Node selector, plus the GPU-type label when a type was requested.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, in the pool's order.
    pub tolerations: Vec<Toleration>,
    /// Affinity.
    pub affinity: Option<Affinity>,
    /// GPU resource name when the workspace uses GPUs from this pool.
    pub gpu_resource_name: Option<String>,
    /// PriorityClass of the pool.
    pub priority_class_name: Option<String>,
}

/// CPU, memory and GPUs after profile defaults and maxima were applied, as quantities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveResources {
    /// CPU quantity (request = limit).
    pub cpu: String,
    /// Memory quantity (request = limit).
    pub memory: String,
    /// GPUs (0: none; then no GPU limit at all).
    pub gpus: i32,
    /// GPU type requested, if any.
    pub gpu_type: Option<String>,
}

/// The home volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeVolume {
    /// PersistentVolumeClaim name.
    pub claim_name: String,
    /// Requested size.
    pub size: String,
    /// StorageClass, when the profile names one.
    pub storage_class_name: Option<String>,
    /// Mount path.
    pub mount_path: String,
    /// What happens on deletion of the Workspace.
    pub reclaim: HomeReclaim,
}

/// A Workspace that passed every rule: the only input of `build`.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedWorkspace {
    /// Workspace name.
    pub name: String,
    /// Workspace namespace (children live here).
    pub namespace: String,
    /// Workspace UID (owner references).
    pub uid: String,
    /// Owner.
    pub user: String,
    /// Server name ("" for the default server).
    pub server_name: String,
    /// Owner's groups.
    pub groups: BTreeSet<String>,
    /// Profile name.
    pub profile: String,
    /// Effective kind.
    pub kind: WorkspaceKind,
    /// Effective image.
    pub image: String,
    /// Effective resources.
    pub resources: EffectiveResources,
    /// Chosen pool. Always `Some` when `desired_state` is `Running` (a running workspace without
    /// an eligible pool is refused); for a stopped workspace it is the pool it would run on, or
    /// `None` when no pool is eligible right now (nothing runs, so that is not a refusal).
    pub pool: Option<PlacedPool>,
    /// The data sources, sorted by name.
    pub data_sources: Vec<(String, DataSourceSpec)>,
    /// What a QGIS desktop shows besides them (`kind: qgis` only): the profile's
    /// `desktop.dataSources` that exist and admit the owner, sorted by name, without the
    /// workspace's own (`policy::desktop::desktop_sources`; their OGC services only).
    pub desktop_sources: Vec<(String, DataSourceSpec)>,
    /// Profile env overlaid by workspace env.
    pub env: BTreeMap<String, String>,
    /// The home volume.
    pub home: HomeVolume,
    /// Running or stopped.
    pub desired_state: DesiredState,
    /// The server's API token.
    pub token: String,
    /// The Dask cluster, when the workspace has one and is to run.
    pub dask: Option<ValidatedDask>,
}

/// A workspace's Dask cluster after the profile's defaults and maxima, routing and caps.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedDask {
    /// Workers kept when idle (at most `workers`).
    pub min: i32,
    /// Most workers asked for (`spec.dask.workers.max`, else the profile's default).
    pub max: i32,
    /// Most workers the cluster may scale to: `max`, lowered by the worker pool's caps
    /// ([`admit_dask`]).
    pub workers: i32,
    /// Why `workers` is below `max`: the cap that stopped one more worker.
    pub capped: Option<String>,
    /// Each worker's resources.
    pub resources: EffectiveResources,
    /// The workers' pool.
    pub pool: PlacedPool,
    /// Image of the scheduler and the workers.
    pub image: String,
    /// The scheduler's idle timeout in seconds (`None` or 0: none).
    pub idle_timeout_seconds: Option<i64>,
}

/// The label selector of a Workspace's children.
pub fn children_selector(ws: &Workspace) -> String {
    use kube::ResourceExt;
    format!(
        "{WORKSPACE_LABEL}={}",
        crate::policy::names::label_value(&ws.name_any())
    )
}

/// The API token a Secret holds under [`TOKEN_KEY`], if any.
pub fn token_of(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(TOKEN_KEY))
                .cloned()
        })
        .filter(|t| !t.is_empty())
}
