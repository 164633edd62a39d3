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
