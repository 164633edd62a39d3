use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{EnvMap, ResourceRequest};

/// A non-interactive job: a command run with a profile's image, home and data sources on a batch
/// (or GPU) node pool. On a pool backed by Kubernetes it becomes a `batch/v1` Job (suspended and
/// queued by Kueue when the pool names a `LocalQueue`); on a pool backed by Slurm it is submitted
/// through slurmrestd.
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
    printcolumn(name = "Pool", type_ = "string", json_path = ".status.nodePool"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Exit", type_ = "integer", json_path = ".status.exitCode"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.command) == 0 || size(self.command[0]) > 0").message("the command's program must not be empty").reason(Reason::FieldValueInvalid).field_path(".command"))]
#[x_kube(validation = Rule::new("self.user == oldSelf.user && self.profile == oldSelf.profile && self.command == oldSelf.command").message("user, profile and command are immutable").reason(Reason::FieldValueForbidden))]
pub struct BatchJobSpec {
    /// Owner (hub username).
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
    )]
    pub user: String,
    /// Command and arguments (the program first); run without a shell.
    #[schemars(length(min = 1, max = 256), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// WorkspaceProfile providing the image, the home volume, the environment and the limits.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub profile: String,
    /// CPU, memory and GPUs (the profile's defaults, within its `maxResources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequest>,
    /// NodePool to run on; by default a batch pool open to the user, or a GPU pool when GPUs are
    /// asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node_pool: Option<String>,
    /// DataSources to mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, x == y))").message("dataSources must not repeat a name"))]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 253),
            pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    pub data_sources: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "EnvMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))").message("env names must be POSIX names"))]
    pub env: EnvMap,
    /// Working directory (absolute); by default the home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), pattern(r"^/"))]
    pub working_dir: Option<String>,
    /// Wall-clock limit in seconds: the Job's `activeDeadlineSeconds`, Slurm's time limit.
    /// Within the pool's `batch.maxDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub deadline_seconds: Option<i64>,
    /// Retries before the job is marked failed (the Job's `backoffLimit`; Slurm jobs are not
    /// retried). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: Option<i32>,
    /// Set to `true` to cancel the job (as deleting it does, but its status stays).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// Lifecycle phase of a batch job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BatchJobPhase {
    /// Accepted, not yet handed to the batch system (or refused: see the conditions).
    Pending,
    /// Waiting in the batch system's queue (Kueue not yet admitted, Slurm `PENDING`).
    Queued,
    /// Running.
    Running,
    /// Finished with exit code 0.
    Succeeded,
    /// Finished with a non-zero exit code, killed, timed out or refused.
    Failed,
    /// Cancelled by its owner or an admin.
    Cancelled,
}

impl BatchJobPhase {
    /// The phase's name as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchJobPhase::Pending => "Pending",
            BatchJobPhase::Queued => "Queued",
            BatchJobPhase::Running => "Running",
            BatchJobPhase::Succeeded => "Succeeded",
            BatchJobPhase::Failed => "Failed",
            BatchJobPhase::Cancelled => "Cancelled",
        }
    }

    /// Succeeded, Failed or Cancelled: nothing runs and nothing will.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            BatchJobPhase::Succeeded | BatchJobPhase::Failed | BatchJobPhase::Cancelled
        )
    }
}

/// Observed state of a batch job; written only by the operator (status subresource).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BatchJobPhase>,
    /// The NodePool it was placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    /// The batch system running it: `kubernetes` or `slurm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Its id there: the Job's name, or the Slurm job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    /// The pod running it (Kubernetes), or the node (Slurm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When it started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The command's exit code, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it is in its phase: the termination reason (`OOMKilled`, `DeadlineExceeded`,
    /// `ImagePullBackOff`, …) or the refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions (`Admitted`, `Complete`, `Failed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
