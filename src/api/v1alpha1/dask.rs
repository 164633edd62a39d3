//! A workspace's Dask cluster: what a Workspace asks for (`spec.dask`), what its profile offers
//! (`spec.dask` of a WorkspaceProfile) and what the operator observed (`status.dask`).
//!
//! On Kubernetes the cluster is a dask-kubernetes `DaskCluster` with a `DaskAutoscaler`
//! between `workers.min` and `workers.max`; on the local backend, `dask scheduler` and
//! `dask worker` processes. Either way the workspace's kernels reach it with `Client()`.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::ResourceRequest;

/// How many workers a cluster may have: the autoscaler keeps it between `min` and `max`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.min <= self.max").message("workers.min must not exceed workers.max").reason(Reason::FieldValueInvalid).field_path(".min"))]
pub struct WorkerRange {
    /// Workers started with the cluster and kept when it is idle.
    #[schemars(range(min = 0, max = 1000))]
    pub min: i32,
    /// Most workers the cluster scales to.
    #[schemars(range(min = 1, max = 1000))]
    pub max: i32,
}

/// A workspace's Dask cluster. Every field is optional: what is missing comes from the
/// profile's `dask.defaults`, then from the built-in defaults (1 to 4 workers, within the
/// profile's `maxWorkers`, of 1 CPU and 2Gi each, the workspace's image, no idle timeout).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaskSpec {
    /// Whether the workspace gets a cluster; default: the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The number of workers, between `min` and `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerRange>,
    /// CPU, memory and GPUs of each worker; may not exceed the profile's `dask.maxWorkerResources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_resources: Option<ResourceRequest>,
    /// NodePool of the workers. Default: the profile's `daskNodePool`, else a `batch` pool
    /// (a `gpu` pool for GPU workers) the user may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node_pool: Option<String>,
    /// Image of the scheduler and the workers. Default: the workspace's own, so that the
    /// versions of dask and distributed match. Only honoured when the profile sets
    /// `allowImageOverride`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Seconds without a client or a task after which the scheduler shuts the cluster down
    /// (Dask's `idle-timeout`); 0 disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub idle_timeout_seconds: Option<i64>,
}

/// What a profile offers of Dask. A profile without it offers none.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.defaults) || !has(self.defaults.workers) || self.defaults.workers.max <= self.maxWorkers").message("defaults.workers.max must not exceed maxWorkers").reason(Reason::FieldValueInvalid).field_path(".maxWorkers"))]
pub struct DaskProfile {
    /// What a workspace of this profile gets when its `spec.dask` says nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<DaskSpec>,
    /// Most workers one workspace's cluster may have.
    #[schemars(range(min = 1, max = 1000))]
    pub max_workers: i32,
    /// Upper bound on each worker's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_worker_resources: Option<ResourceRequest>,
}

/// The cluster the operator (or the local backend) runs for a workspace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaskStatus {
    /// `tcp://…:8786` (or `tls://`), what `Client()` connects to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_address: Option<String>,
    /// The dashboard, through the hub's proxy (`/user/<name>/<server>/dask/status`), open to
    /// the workspace's owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// Where the hub's proxy reaches the dashboard (the scheduler's in-cluster address, e.g.
    /// `http://ws-alice-dask-scheduler.atelier.svc.cluster.local:8787`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_target: Option<String>,
    /// Most workers the cluster may scale to, after the pool's caps.
    #[serde(default)]
    pub workers_wanted: i32,
    /// Workers running and ready.
    #[serde(default)]
    pub workers_ready: i32,
    /// `ready/wanted`, for `kubectl get` (e.g. `4/8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,
    /// The NodePool the workers run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    /// Set when a cap of the worker pool lowered `workers.max`: the number it was lowered to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capped_to: Option<i32>,
    /// Set when the cluster was deleted after `idleTimeoutSeconds` without work (condition
    /// `Dask`, reason `DaskIdle`): a hash of the `spec.dask` it ran under. No cluster is made
    /// again until the workspace restarts (stopping clears `status.dask`) or `spec.dask`
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stopped: Option<String>,
}
