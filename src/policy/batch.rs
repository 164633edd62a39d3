//! What a BatchJob must satisfy, shared by the hub (which checks a submission before it writes
//! anything and answers a 4xx naming the field) and the operator (which checks again at
//! reconcile): a [`BatchJob`] plus what `dereference` read → a [`ValidatedBatchJob`] or a
//! [`Refusal`]. Pure: no client, no clock.
//!
//! Rules, in order (the first one broken is the refusal):
//!
//! 1. names: the BatchJob's name is an RFC 1123 label (it names the Kubernetes Job, whose name
//!    becomes a pod label), the user name is valid ([`reason::INVALID_NAME`]);
//! 2. namespace: in per-user mode the BatchJob lives in its user's namespace;
//! 3. profile: exists and is open to the user's groups; the job runs the profile's image;
//! 4. command: 1 to [`MAX_ARGS`] arguments of at most [`MAX_ARG_LEN`] bytes, the program not
//!    empty, no NUL byte ([`reason::INVALID_COMMAND`]);
//! 5. resources: as a workspace's (`spec.resources` over the profile's defaults, within its
//!    `maxResources`);
//! 6. data sources: as a workspace's;
//! 7. node pool: routing with [`PoolRequest::batch`] and [`PoolRequest::job`] (a batch pool
//!    unless named, a gpu pool for GPUs, Slurm pools allowed);
//! 8. deadline: positive ([`reason::INVALID_DEADLINE`]) and within the pool's
//!    `maxDeadlineSeconds` ([`reason::DEADLINE_EXCEEDS_POOL`]), which is also the deadline of a
//!    job that names none;
//! 9. the batch system: Kubernetes (with the pool's Kueue `LocalQueue`, if any) or the pool's
//!    Slurm partition, with the Slurm user the pool's mapping makes of the hub user
//!    ([`reason::INVALID_SLURM_USER`] when that is not a valid Unix name);
//! 10. the pool's caps, for this job alone: a job no cap could ever admit is refused here;
//!     what the other workspaces and jobs use is admission's ([`admit_job`]).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::workspace::validate::{
    bounded_resources, check_namespace, data_sources, merged_env, open_profile, place, refuse,
    worker_usage,
};
use super::workspace::{
    Dereferenced, EffectiveResources, HomeVolume, PlacedPool, Refusal, reason as ws_reason,
};
use crate::api::v1alpha1::{
    BatchJob, BatchJobPhase, DataSourceSpec, NodePool, ResourceRequest, SlurmTokenSecret,
    SlurmUserMapping,
};
use crate::config::OperatorConfig;
use crate::policy::admission::{Claim, UsageIndex};
use crate::policy::{self, PoolRequest, Usage, check_caps, effective_request, names};

/// Most arguments of a command (the CRD's `maxItems`).
pub const MAX_ARGS: usize = 256;
/// Longest argument, in bytes (the CRD's `maxLength`).
pub const MAX_ARG_LEN: usize = 4096;

/// The condition reasons of a BatchJob's refusals (the workspace's, [`ws_reason`], apply too:
/// `ProfileNotFound`, `ResourcesExceedProfile`, `NoEligiblePool`, `UserCapExceeded`, …).
pub mod reason {
    /// The command is empty, too long, or has an empty program or a NUL byte.
    pub const INVALID_COMMAND: &str = "InvalidCommand";
    /// `deadlineSeconds` is not positive.
    pub const INVALID_DEADLINE: &str = "InvalidDeadline";
    /// `deadlineSeconds` exceeds the pool's `maxDeadlineSeconds`.
    pub const DEADLINE_EXCEEDS_POOL: &str = "DeadlineExceedsPool";
    /// The pool's Slurm user mapping makes no valid Unix user name of the hub user.
    pub const INVALID_SLURM_USER: &str = "InvalidSlurmUser";
}

/// Where a validated job runs.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchTarget {
    /// A `batch/v1` Job in the BatchJob's namespace.
    Kubernetes {
        /// The pool's Kueue `LocalQueue`: the Job is created suspended with the queue label.
        local_queue: Option<String>,
    },
    /// A Slurm partition, through slurmrestd.
    Slurm(SlurmTarget),
}

impl BatchTarget {
    /// `kubernetes` or `slurm` (the status's `system`).
    pub fn system(&self) -> &'static str {
        match self {
            BatchTarget::Kubernetes { .. } => "kubernetes",
            BatchTarget::Slurm(_) => "slurm",
        }
    }
}

/// A Slurm partition and the user a job runs as there.
#[derive(Clone, Debug, PartialEq)]
pub struct SlurmTarget {
    /// slurmrestd's base URL.
    pub rest_url: String,
    /// Partition.
    pub partition: String,
    /// Account, when the pool names one.
    pub account: Option<String>,
    /// The Secret holding the JWT signing key.
    pub token_secret: SlurmTokenSecret,
    /// The Slurm (Unix) user the job runs as.
    pub user: String,
    /// The working directory: the job's, else the pool's (with `{user}` replaced), else none
    /// (Slurm's default, the user's home directory).
    pub working_dir: Option<String>,
}

/// A BatchJob that passed every rule: the only input of the batch systems.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedBatchJob {
    /// BatchJob name.
    pub name: String,
    /// BatchJob namespace.
    pub namespace: String,
    /// BatchJob UID (owner references).
    pub uid: String,
    /// Owner.
    pub user: String,
    /// Owner's groups.
    pub groups: BTreeSet<String>,
    /// Profile name.
    pub profile: String,
    /// The profile's image.
    pub image: String,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Effective resources.
    pub resources: EffectiveResources,
    /// The pool it runs on.
    pub pool: PlacedPool,
    /// The batch system.
    pub target: BatchTarget,
    /// The data sources, sorted by name.
    pub data_sources: Vec<(String, DataSourceSpec)>,
    /// Profile env overlaid by the job's (no `JUPYTERHUB_*`).
    pub env: BTreeMap<String, String>,
    /// The owner's home volume (the default server's), mounted as in the workspace.
    pub home: HomeVolume,
    /// Working directory, when the job names one.
    pub working_dir: Option<String>,
    /// Wall-clock limit: the job's, else the pool's maximum, else none.
    pub deadline_seconds: Option<i64>,
    /// Retries (Kubernetes Jobs only).
    pub backoff_limit: i32,
    /// The job is to be cancelled.
    pub cancel: bool,
}

/// Checks every rule (see the module documentation) and resolves defaults. `deref.token` is not
/// used (a job gets no server token).
pub fn validate_job(
    job: &BatchJob,
    deref: &Dereferenced,
    cfg: &OperatorConfig,
) -> Result<ValidatedBatchJob, Refusal> {
    let spec = &job.spec;
    let user = spec.user.as_str();
    let groups = &deref.groups;

    // 1. Names.
    let name = job.metadata.name.clone().unwrap_or_default();
    if !names::is_dns_label(&name) {
        return Err(refuse(
            ws_reason::INVALID_NAME,
            format!("BatchJob name {name:?} is not an RFC 1123 label (at most 63 characters)"),
        ));
    }
    if !names::is_valid_user_name(user) {
        return Err(refuse(
            ws_reason::INVALID_NAME,
            format!("user name {user:?} is not valid"),
        ));
    }

    // 2. Namespace.
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    check_namespace("BatchJob", &namespace, user, cfg)?;

    // 3. Profile.
    let pspec = &open_profile(deref, &spec.profile, user)?.spec;

    // 4. Command.
    check_command(&spec.command)?;

    // 5. Resources.
    let request = effective_request(spec.resources.as_ref(), pspec.default_resources.as_ref());
    let resources = bounded_resources(
        &request,
        pspec.max_resources.as_ref(),
        &spec.profile,
        "",
        "maxResources",
    )?;
    let home = HomeVolume {
        claim_name: names::home_claim_name(&names::server_label(user, "")),
        size: pspec.home.size.clone(),
        storage_class_name: pspec.home.storage_class_name.clone(),
        mount_path: pspec.home.mount_path.clone(),
        reclaim: pspec.home.on_delete,
    };

    // 6. Data sources.
    let data_sources = data_sources(
        &spec.data_sources,
        user,
        &namespace,
        deref,
        &home.mount_path,
    )?;

    // 7. Pool.
    let pool_request = PoolRequest {
        explicit: spec.node_pool.as_deref(),
        profile_default: None,
        gpus: resources.gpus,
        gpu_type: resources.gpu_type.as_deref(),
        batch: true,
        job: true,
    };
    let pool: &NodePool = policy::route(&pool_request, &deref.pools, groups)
        .map_err(|e| refuse(e.reason(), e.to_string()))?;
    let pool_name = pool.name_any();

    // 8. Deadline.
    let max_deadline = pool.spec.max_deadline_seconds;
    let deadline_seconds = match (spec.deadline_seconds, max_deadline) {
        (Some(d), _) if d <= 0 => {
            return Err(refuse(
                reason::INVALID_DEADLINE,
                format!("deadlineSeconds {d} must be more than 0"),
            ));
        }
        (Some(d), Some(max)) if d > max => {
            return Err(refuse(
                reason::DEADLINE_EXCEEDS_POOL,
                format!(
                    "deadlineSeconds {d} exceeds the maximum {max} of NodePool {pool_name} (maxDeadlineSeconds)"
                ),
            ));
        }
        (Some(d), _) => Some(d),
        (None, max) => max,
    };

    // 9. The batch system.
    let target = match &pool.spec.slurm {
        Some(slurm) => {
            let slurm_user = slurm_user(&slurm.user_mapping, user).ok_or_else(|| {
                refuse(
                    reason::INVALID_SLURM_USER,
                    format!(
                        "NodePool {pool_name}'s slurm.userMapping makes no valid Unix user name of user {user}"
                    ),
                )
            })?;
            let working_dir = spec.working_dir.clone().or_else(|| {
                slurm
                    .working_dir
                    .as_ref()
                    .map(|d| d.replace("{user}", &slurm_user))
            });
            BatchTarget::Slurm(SlurmTarget {
                rest_url: slurm.rest_url.clone(),
                partition: slurm.partition.clone(),
                account: slurm.account.clone(),
                token_secret: slurm.token_secret.clone(),
                user: slurm_user,
                working_dir,
            })
        }
        None => BatchTarget::Kubernetes {
            local_queue: pool.spec.kueue.as_ref().map(|q| q.local_queue_name.clone()),
        },
    };

    // 10. Caps, for this job alone.
    check_caps(
        &pool_name,
        pool.spec.caps.as_ref(),
        user,
        groups,
        worker_usage(&resources),
        Usage::ZERO,
        |_| Usage::ZERO,
    )
    .map_err(|e| refuse(e.reason(), e.to_string()))?;

    let env = merged_env(&pspec.env, &spec.env);

    Ok(ValidatedBatchJob {
        name,
        namespace,
        uid: job.metadata.uid.clone().unwrap_or_default(),
        user: user.to_owned(),
        groups: groups.clone(),
        profile: spec.profile.clone(),
        image: pspec.image.clone(),
        command: spec.command.clone(),
        pool: place(pool, &resources),
        resources,
        target,
        data_sources,
        env,
        home,
        working_dir: spec.working_dir.clone(),
        deadline_seconds,
        backoff_limit: spec.backoff_limit.unwrap_or(0),
        cancel: spec.cancel,
    })
}

/// Step 4: the command's shape (the CRD checks it too; a hub on the local backend has no API
/// server to do so).
pub fn check_command(command: &[String]) -> Result<(), Refusal> {
    let invalid = |message: String| Err(refuse(reason::INVALID_COMMAND, message));
    match command.first() {
        None => return invalid("command must not be empty".to_owned()),
        Some(program) if program.trim().is_empty() => {
            return invalid("command[0], the program, must not be empty".to_owned());
        }
        Some(_) => {}
    }
    if command.len() > MAX_ARGS {
        return invalid(format!(
            "command has {} arguments; at most {MAX_ARGS} are allowed",
            command.len()
        ));
    }
    for (i, arg) in command.iter().enumerate() {
        if arg.len() > MAX_ARG_LEN {
            return invalid(format!(
                "command[{i}] is {} bytes long; at most {MAX_ARG_LEN} are allowed",
                arg.len()
            ));
        }
        if arg.contains('\0') {
            return invalid(format!("command[{i}] contains a NUL byte"));
        }
    }
    Ok(())
}

/// The Slurm user of hub user `user` under `mapping`: the fixed user, else the template (default
/// `{user}`) with `{user}` replaced; `None` when that is not a valid Unix user name
/// (`[a-z_][a-z0-9_-]*`, at most 32 characters: hub names may hold `.`, which Slurm accepts
/// but many sites' account tools do not).
pub fn slurm_user(mapping: &SlurmUserMapping, user: &str) -> Option<String> {
    let name = match (&mapping.fixed, &mapping.template) {
        (Some(fixed), _) => fixed.clone(),
        (None, Some(template)) => template.replace("{user}", user),
        (None, None) => user.to_owned(),
    };
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    (first_ok && rest_ok && name.len() <= 32).then_some(name)
}

/// The [`UsageIndex`] key of a BatchJob: `job:<namespace>/<name>` (a Workspace's is
/// `<namespace>/<name>`; the prefix keeps a job and a workspace of the same name apart).
pub fn job_key(namespace: &str, name: &str) -> String {
    format!("job:{namespace}/{name}")
}

/// Whether a [`UsageIndex`] key is a BatchJob's ([`job_key`]).
pub fn is_job_key(key: &str) -> bool {
    key.starts_with("job:")
}

/// What a validated job claims on its pool while it may run: its resources, and no workspace.
/// A cancelled job claims nothing.
pub fn job_claim(v: &ValidatedBatchJob) -> Option<Claim> {
    if v.cancel {
        return None;
    }
    Some(Claim {
        pool: v.pool.name.clone(),
        user: v.user.clone(),
        groups: v.groups.clone(),
        usage: worker_usage(&v.resources),
    })
}

/// What the informer says a BatchJob holds: an unfinished, uncancelled job whose status names its
/// pool claims its resources there, estimated from its spec over `profile_defaults` (its
/// profile's `defaultResources`). Anything else claims nothing.
pub fn observed_job_claim(
    job: &BatchJob,
    groups: BTreeSet<String>,
    profile_defaults: Option<&ResourceRequest>,
) -> Option<Claim> {
    let status = job.status.as_ref()?;
    if job.spec.cancel || status.phase.is_some_and(BatchJobPhase::is_finished) {
        return None;
    }
    let pool = status.node_pool.clone()?;
    let request = effective_request(job.spec.resources.as_ref(), profile_defaults);
    Some(Claim {
        pool,
        user: job.spec.user.clone(),
        groups,
        usage: Usage {
            workspaces: 0,
            ..policy::usage_of(&request)
        },
    })
}

/// Admission of `v` to its pool's caps given everything else `index` holds there (workspaces,
/// Dask clusters and jobs alike): reserves its [`job_claim`] under [`job_key`] when it fits, the
/// refusal naming the cap otherwise. A job that claims nothing releases what it held.
pub fn admit_job(
    index: &mut UsageIndex,
    v: &ValidatedBatchJob,
    pools: &[NodePool],
) -> Result<(), Refusal> {
    let key = job_key(&v.namespace, &v.name);
    let Some(claim) = job_claim(v) else {
        index.release(&key);
        return Ok(());
    };
    let caps = pools
        .iter()
        .find(|p| p.name_any() == claim.pool)
        .and_then(|p| p.spec.caps.as_ref());
    index.admit(&key, claim, caps).map_err(|e| {
        index.release(&key);
        refuse(e.reason(), e.to_string())
    })
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
