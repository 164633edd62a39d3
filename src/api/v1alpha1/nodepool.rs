use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of nodes for one purpose, like an HPC centre's partitions (interactive, GPU, batch).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "atelier.dev",
    version = "v1alpha1",
    kind = "NodePool",
    shortname = "np",
    category = "atelier",
    doc = "A node pool: where workspaces of a purpose run (node selector, tolerations), the GPUs it offers and its caps.",
    printcolumn(name = "Purpose", type_ = "string", json_path = ".spec.purpose"),
    printcolumn(name = "GPU", type_ = "string", json_path = ".spec.gpu.resourceName"),
    printcolumn(
        name = "Priority Class",
        type_ = "string",
        json_path = ".spec.priorityClassName",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.purpose != 'gpu' || has(self.gpu)").message("a gpu pool must describe its GPUs in spec.gpu").reason(Reason::FieldValueRequired).field_path(".gpu"))]
#[x_kube(validation = Rule::new("!has(self.slurm) || self.purpose != 'interactive'").message("only a batch or gpu pool may be backed by Slurm").reason(Reason::FieldValueForbidden).field_path(".slurm"))]
#[x_kube(validation = Rule::new("!has(self.slurm) || !has(self.slurm.userMapping) || !(has(self.slurm.userMapping.fixed) && has(self.slurm.userMapping.template))").message("slurm.userMapping takes fixed or template, not both").reason(Reason::FieldValueForbidden).field_path(".slurm"))]
#[x_kube(validation = Rule::new("!(has(self.slurm) && has(self.kueue))").message("a pool backed by Slurm has no Kueue queue").reason(Reason::FieldValueForbidden).field_path(".kueue"))]
pub struct NodePoolSpec {
    /// `interactive`, `gpu` or `batch`.
    pub purpose: PoolPurpose,
    /// Name shown on the spawn page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,
    /// Node labels a pod must match to run in this pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the pool's taints (e.g. `nvidia.com/gpu=present:NoSchedule`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra scheduling constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// The GPUs this pool offers; required for `purpose: gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuOffer>,
    /// Caps on what one user, and one group, may use in this pool at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<NodePoolCaps>,
    /// Groups whose members may use the pool; empty means every user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        length(min = 1, max = 256),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._:=@+-]*$")
    ))]
    pub allowed_groups: Vec<String>,
    /// PriorityClass of the pool's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Longest `deadlineSeconds` a BatchJob may ask for on this pool (and the deadline of one
    /// that asks for none); no bound when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub max_deadline_seconds: Option<i64>,
    /// The Kueue `LocalQueue` of the pool's BatchJobs: their Jobs are created suspended with the
    /// `kueue.x-k8s.io/queue-name` label, and Kueue admits them under its ClusterQueue's quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kueue: Option<KueueQueue>,
    /// A Slurm cluster backing the pool: its BatchJobs are submitted through slurmrestd instead
    /// of becoming Kubernetes Jobs. Workspaces and Dask workers never run on such a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmPool>,
}

/// A Kueue queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KueueQueue {
    /// The `LocalQueue`'s name, in the BatchJob's namespace.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub local_queue_name: String,
}

/// A Slurm partition reached through slurmrestd's REST API (JWT authentication).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlurmPool {
    /// slurmrestd's base URL, e.g. `https://slurm.example.org:6820`.
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://"))]
    pub rest_url: String,
    /// The Slurm partition jobs are submitted to.
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9_.-]+$"))]
    pub partition: String,
    /// The Slurm account jobs are charged to; the user's default account when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9_.-]+$"))]
    pub account: Option<String>,
    /// The Secret (in the operator's namespace) whose key `jwtKey` holds the cluster's JWT
    /// signing key (`AuthAltParameters=jwt_key=…`): Atelier signs a short-lived token for the
    /// mapped user of each request.
    pub token_secret: SlurmTokenSecret,
    /// How a hub user becomes a Slurm (Unix) user.
    #[serde(default)]
    pub user_mapping: SlurmUserMapping,
    /// Directory jobs run in when they name none (`{user}` is replaced by the Slurm user);
    /// the user's home directory on the cluster when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), pattern(r"^/"))]
    pub working_dir: Option<String>,
}

/// The Secret holding Slurm's JWT key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlurmTokenSecret {
    /// Secret name.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key of the signing key in the Secret.
    #[serde(default = "default_jwt_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_jwt_key() -> String {
    "jwtKey".into()
}

/// How hub users map to Slurm users.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlurmUserMapping {
    /// Every job runs as this one Slurm user (a service account); exclusive with `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), pattern(r"^[a-z_][a-z0-9_-]*$"))]
    pub fixed: Option<String>,
    /// The Slurm user made from the hub user's name: `{user}` is replaced (e.g. `{user}` or
    /// `hub-{user}`); the default is `{user}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub template: Option<String>,
}

/// What a pool is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolPurpose {
    /// Interactive workspaces without GPUs.
    Interactive,
    /// GPU nodes.
    Gpu,
    /// Batch work.
    Batch,
}

impl PoolPurpose {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolPurpose::Interactive => "interactive",
            PoolPurpose::Gpu => "gpu",
            PoolPurpose::Batch => "batch",
        }
    }
}

/// GPUs offered by a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuOffer {
    /// Extended resource name of the device plugin.
    #[serde(default = "default_gpu_resource")]
    #[schemars(length(min = 1, max = 253), pattern(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"))]
    pub resource_name: String,
    /// GPU models available (e.g. `a100`, `v100`); a workspace's `gpuType` must be one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        length(min = 1, max = 63),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ))]
    pub types: Vec<String>,
    /// Node label holding the GPU model, used to pin a requested `gpuType`
    /// (e.g. `nvidia.com/gpu.product` or `atelier.dev/gpu-type`).
    #[serde(default = "default_gpu_type_label")]
    pub type_label: String,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}

fn default_gpu_type_label() -> String {
    "atelier.dev/gpu-type".into()
}

/// Caps per user and per group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolCaps {
    /// What one user may use in the pool at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<Caps>,
    /// What the members of one group may use together in the pool at once (each of the user's groups is checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_group: Option<Caps>,
}

/// Upper bounds; an absent field is unlimited.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Caps {
    /// Running workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub workspaces: Option<i32>,
    /// Total CPU as a quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"))]
    pub cpu: Option<String>,
    /// Total memory as a quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"))]
    pub memory: Option<String>,
    /// Total GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub gpus: Option<i32>,
}
