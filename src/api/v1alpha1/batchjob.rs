use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{EnvMap, ResourceRequest};

/// A non-interactive job run with a profile's image on a (batch) node pool. Its controller comes
/// in a later release; the type is served so that centres can start writing them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "atelier.dev",
    version = "v1alpha1",
    kind = "BatchJob",
    namespaced,
    shortname = "bj",
    category = "atelier",
    status = "BatchJobStatus",
    doc = "A batch job: a command run with a profile's image and data sources on a node pool.",
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Profile", type_ = "string", json_path = ".spec.profile"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobSpec {
    /// Owner (hub username).
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
    )]
    pub user: String,
    /// Command and arguments.
    #[schemars(length(min = 1, max = 256))]
    pub command: Vec<String>,
    /// WorkspaceProfile providing the image and limits.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub profile: String,
    /// CPU, memory and GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequest>,
    /// NodePool to run on (a batch pool by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node_pool: Option<String>,
    /// DataSources to mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    ))]
    pub data_sources: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "EnvMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))").message("env names must be POSIX names"))]
    pub env: EnvMap,
    /// Wall-clock limit in seconds (the Job's `activeDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub deadline_seconds: Option<i64>,
}

/// Observed state of a batch job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
