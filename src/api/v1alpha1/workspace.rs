use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{EnvMap, ResourceRequest, WorkspaceKind};
use super::dask::{DaskSpec, DaskStatus};

/// A user's workspace: a Jupyter, RStudio or QGIS server next to the data.
///
/// The hub writes one per server a user starts (and annotates it with the user's groups as
/// `atelier.dev/groups`); an admin may also `kubectl apply` one. The operator turns it into a
/// Pod, a Service, a home PersistentVolumeClaim, a Secret with the server's API token and a
/// NetworkPolicy, on a node pool the user's groups may use.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "atelier.dev",
    version = "v1alpha1",
    kind = "Workspace",
    namespaced,
    shortname = "ws",
    category = "atelier",
    status = "WorkspaceStatus",
    doc = "A user's workspace: a Jupyter, RStudio or QGIS server placed on a node pool next to the data.",
    printcolumn(
        name = "User",
        type_ = "string",
        json_path = ".spec.user",
        description = "Owner of the workspace"
    ),
    printcolumn(
        name = "Server",
        type_ = "string",
        json_path = ".spec.serverName",
        description = "Server name (empty: the default server)"
    ),
    printcolumn(
        name = "Profile",
        type_ = "string",
        json_path = ".spec.profile",
        description = "WorkspaceProfile used"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".status.nodePool",
        description = "NodePool the workspace was placed on"
    ),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.dask.workers",
        description = "Dask workers ready/wanted"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.user"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.user == oldSelf.user && self.serverName == oldSelf.serverName").message("user and serverName are immutable").reason(Reason::FieldValueForbidden))]
pub struct WorkspaceSpec {
    /// The Atelier user who owns this workspace (a hub username).
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
    )]
    pub user: String,
    /// The server's name; empty for the user's default server (JupyterHub named servers).
    #[serde(default)]
    #[schemars(length(max = 63), pattern(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"))]
    pub server_name: String,
    /// Name of the WorkspaceProfile to run (cluster-scoped).
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub profile: String,
    /// Overrides the profile's kind; only honoured when the profile sets `allowKindOverride`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<WorkspaceKind>,
    /// Overrides the profile's container image; only honoured when the profile sets `allowImageOverride`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU, memory and GPUs; missing values come from the profile's defaults and may not exceed its maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequest>,
    /// NodePool to run on. Default: a GPU pool when GPUs are requested, else the profile's default pool, else an interactive pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node_pool: Option<String>,
    /// Names of DataSources to mount or inject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 253),
            pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, x == y))").message("dataSources must not repeat a name"))]
    pub data_sources: Vec<String>,
    /// Extra environment variables for the server (after the profile's; the JUPYTERHUB_* ones cannot be overridden).
    #[serde(default, skip_serializing_if = "EnvMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$') && !k.startsWith('JUPYTERHUB_'))").message("env names must be POSIX names and may not start with JUPYTERHUB_"))]
    pub env: EnvMap,
    /// Size of the home volume (first creation only), default from the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"))]
    pub home_size: Option<String>,
    /// `running` or `stopped`. Stopping removes the pod and keeps the home volume.
    #[serde(default)]
    pub desired_state: DesiredState,
    /// Seconds without activity after which the hub's culler stops the workspace; 0 disables culling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub idle_timeout_seconds: Option<i64>,
    /// A Dask cluster next to the workspace; missing fields come from the profile's `dask.defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dask: Option<DaskSpec>,
}

/// Whether the workspace should be running.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Run the server.
    #[default]
    Running,
    /// No pod; the home volume stays.
    Stopped,
}

/// Lifecycle phase of a workspace, as in JupyterHub's spawner states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkspacePhase {
    /// Accepted; waiting to be scheduled or refused by a rule (see the Ready condition).
    Pending,
    /// The pod is scheduled and its containers are starting.
    Starting,
    /// The server is ready.
    Running,
    /// The pod is being removed.
    Stopping,
    /// No pod runs; the home volume is kept.
    Stopped,
    /// The workspace cannot run (image pull failure, crash loop, ...); see `message`.
    Failed,
}

impl WorkspacePhase {
    /// The phase's name as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspacePhase::Pending => "Pending",
            WorkspacePhase::Starting => "Starting",
            WorkspacePhase::Running => "Running",
            WorkspacePhase::Stopping => "Stopping",
            WorkspacePhase::Stopped => "Stopped",
            WorkspacePhase::Failed => "Failed",
        }
    }
}

/// What the operator observed; written only by the operator (status subresource).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkspacePhase>,
    /// Standard conditions: `Ready` (reason names the rule when the workspace is refused) and `Scheduled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The NodePool chosen for the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    /// Name of the workspace's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// In-cluster URL of the server, including its base path (what the proxy routes to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When the server became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Last activity reported by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<Time>,
    /// Human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The workspace's Dask cluster, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dask: Option<DaskStatus>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
