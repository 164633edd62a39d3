//! Users' batch jobs, shared by the REST API (`/hub/api/users/{name}/jobs`) and the Jobs page.
//!
//! A submission is checked before anything is written: its body field by field (400 naming
//! the field), then as the BatchJob it makes, by the policy's `validate_job` with the catalogue
//! in place of the cluster ([`Catalog::job_dereferenced`]), and against the pools' caps with
//! every unfinished job of the store (`admit_job` over a `UsageIndex`). A refusal answers 400
//! (403 for a rule of access: a profile, pool or data source the user's groups may not use, a
//! cap) with `field "<field>": <Reason>: <message>`. Then the job's row is written (Pending),
//! the submit audited, and the job handed to its batch system: with the kubernetes backend, a
//! `BatchJob` resource for every pool (`backend::kubernetes::BatchJobs`: the operator runs it on
//! Kubernetes or Slurm); elsewhere the one chosen by [`batch_system`]: the local backend's
//! processes ([`LocalJobs`]) for Kubernetes targets, Slurm for a Slurm pool (its JWT key read
//! from `<secrets dir>/<secret>/<key>`).
//!
//! [`watch`] asks the systems about every unfinished job every `job_poll` and writes what
//! changed (a BatchJob's status is read from an informer cache: no request per job); it is also
//! what makes a restarted hub find its jobs again (a local process still running is re-adopted
//! by pid and start time, one that is gone is Failed with its reason).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::ObjectMeta;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::catalog::CredentialsFrom;
use super::{HubError, HubResult, HubState};
use crate::api::v1alpha1::{BatchJob, BatchJobPhase, BatchJobSpec, ResourceRequest};
use crate::backend::kubernetes::{BatchJobs, JOBS_SYSTEM as KUBE_SYSTEM};
use crate::batch::{BatchError, BatchSystem, JobState};
use crate::config::OperatorConfig;
use crate::policy::admission::UsageIndex;
use crate::policy::batch::{self as batch, BatchTarget, ValidatedBatchJob};
use crate::policy::names;
use crate::policy::workspace::{Refusal, reason as ws};
use crate::store::{self, AuditAction, Job, JobUpdate, NewAuditEvent, NewJob, StoreError, User};

/// How often [`watch`] asks the batch systems about unfinished jobs.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The most of a job's output `GET …/logs` returns (its end).
pub const MAX_LOG_BYTES: usize = 256 * 1024;

/// The fields of a submission.
pub const FIELDS: [&str; 8] = [
    "profile",
    "command",
    "resources",
    "node_pool",
    "data_sources",
    "env",
    "working_dir",
    "deadline_seconds",
];

/// The namespace of the BatchJobs the hub checks (the local backend's jobs live nowhere).
const CHECK_NAMESPACE: &str = "atelier";

/// Jobs read per statement by [`poll_once`].
const POLL_PAGE: u32 = 200;

/// A submission, read field by field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobRequest {
    pub profile: Option<String>,
    pub command: Vec<String>,
    pub resources: Option<ResourceRequest>,
    pub node_pool: Option<String>,
    pub data_sources: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub deadline_seconds: Option<i64>,
}

pub fn field_error(field: &str, message: impl std::fmt::Display) -> HubError {
    HubError::BadRequest(format!("field {field:?}: {message}"))
}

/// The submission field a refusal is about.
fn refusal_field(reason: &str) -> &'static str {
    match reason {
        batch::reason::INVALID_COMMAND => "command",
        batch::reason::INVALID_DEADLINE | batch::reason::DEADLINE_EXCEEDS_POOL => {
            "deadline_seconds"
        }
        ws::PROFILE_NOT_FOUND | ws::PROFILE_FORBIDDEN | ws::INVALID_PROFILE => "profile",
        ws::INVALID_RESOURCES | ws::RESOURCES_EXCEED_PROFILE => "resources",
        ws::DATA_SOURCE_NOT_FOUND
        | ws::DATA_SOURCE_FORBIDDEN
        | ws::DATA_SOURCE_CONFLICT
        | ws::DATA_SOURCE_INVALID
        | ws::DATA_CREDENTIALS_NOT_FOUND
        | ws::CSI_DRIVER_NOT_FOUND
        | ws::CSI_DRIVER_MODE_UNSUPPORTED
        | ws::DATA_ENDPOINT_UNREACHABLE => "data_sources",
        ws::INVALID_NAME | ws::WRONG_NAMESPACE => "name",
        _ => "node_pool",
    }
}

/// The answer to a refused job: 403 for a rule of access (the user's groups, a cap), 400 for
/// the rest; the message names the field, the rule and why.
pub fn refusal_error(refusal: &Refusal) -> HubError {
    let field = refusal_field(refusal.reason);
    let message = format!("field {field:?}: {}: {}", refusal.reason, refusal.message);
    match refusal.reason {
        ws::PROFILE_FORBIDDEN
        | ws::DATA_SOURCE_FORBIDDEN
        | ws::NODE_POOL_FORBIDDEN
        | ws::USER_CAP_EXCEEDED
        | ws::GROUP_CAP_EXCEEDED
        | ws::DATA_CREDENTIALS_NOT_FOUND => HubError::Forbidden(message),
        _ => HubError::BadRequest(message),
    }
}

/// Five random characters of `[a-z0-9]` (a job name's suffix).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The BatchJob a submission makes for `user`.
fn batch_job(name: &str, user: &str, profile: &str, spec: BatchJobSpec) -> BatchJob {
    let mut job = BatchJob::new(
        name,
        BatchJobSpec {
            user: user.to_owned(),
            profile: profile.to_owned(),
            ..spec
        },
    );
    job.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(CHECK_NAMESPACE.to_owned()),
        uid: Some(name.to_owned()),
        ..ObjectMeta::default()
    };
    job
}

/// The credentials the data sources of a job read: the catalogue's on the local backend.
fn credentials(hub: &HubState) -> CredentialsFrom {
    if hub.backend.kind() == "local" {
        CredentialsFrom::Catalog
    } else {
        CredentialsFrom::Cluster
    }
}

/// `validate_job` of the BatchJob `name` of `user` (in `groups`) with `spec`, against the
/// catalogue.
pub fn validate(
    hub: &HubState,
    name: &str,
    user: &str,
    groups: &BTreeSet<String>,
    spec: &BatchJobSpec,
) -> Result<ValidatedBatchJob, Refusal> {
    let catalog = hub.config.catalog.get();
    let deref = catalog.job_dereferenced(
        &spec.profile,
        &spec.data_sources,
        groups,
        &hub.config.default_profile,
        credentials(hub),
    );
    let job = batch_job(name, user, &spec.profile, spec.clone());
    batch::validate_job(&job, &deref, &OperatorConfig::default())
}

/// The stored spec of a job.
fn stored_spec(job: &Job) -> Option<BatchJobSpec> {
    serde_json::from_value(job.spec.clone()).ok()
}

/// Admits `v` to its pool's caps against the other unfinished jobs the store records on that
/// pool (each validated again: the catalogue may have changed; each owner's groups read once).
async fn admit(hub: &HubState, v: &ValidatedBatchJob) -> HubResult<()> {
    let catalog = hub.config.catalog.get();
    let pools = &catalog.pools;
    if pools.iter().all(|p| p.spec.caps.is_none()) {
        return Ok(());
    }
    let mut index = UsageIndex::default();
    let mut groups_of_user: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = hub
            .store
            .list_active_jobs_on_pool(&v.pool.name, after, POLL_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for job in &page {
            let Some(spec) = stored_spec(job) else {
                continue;
            };
            if let std::collections::btree_map::Entry::Vacant(e) = groups_of_user.entry(job.user_id)
            {
                e.insert(groups_of(hub, job).await?.into_iter().collect());
            }
            let groups = &groups_of_user[&job.user_id];
            if let Ok(other) = validate(hub, &job.name, &job.user_name, groups, &spec) {
                let key = batch::job_key(&other.namespace, &other.name);
                index.observe(&key, batch::job_claim(&other));
            }
        }
    }
    batch::admit_job(&mut index, v, pools).map_err(|r| refusal_error(&r))
}

/// Which system runs `v`: the local backend's processes for a Kubernetes target on the local
/// backend, Slurm for a Slurm pool. A Slurm pool's JWT key is read from `<secrets
/// dir>/<secret>/<key>` first (a missing key is the error).
pub fn batch_system(
    hub: &HubState,
    v: &ValidatedBatchJob,
) -> Result<Arc<dyn BatchSystem>, BatchError> {
    match &v.target {
        BatchTarget::Slurm(target) => {
            let dir = hub
                .config
                .secrets_dir
                .clone()
                .ok_or_else(|| BatchError::Other {
                    system: "slurm",
                    message: "the hub has no --secrets-dir to read the Slurm key from".into(),
                })?;
            let path = dir
                .join(&target.token_secret.name)
                .join(&target.token_secret.key);
            let key = std::fs::read(&path).map_err(|e| BatchError::Unauthorized {
                system: "slurm",
                message: format!(
                    "cannot read the JWT key of Secret {} (key {}) at {}: {e}",
                    target.token_secret.name,
                    target.token_secret.key,
                    path.display()
                ),
            })?;
            slurm_system(target, key)
        }
        BatchTarget::Kubernetes { .. } => match hub.backend.local_jobs() {
            Some(jobs) => Ok(Arc::new(crate::backend::local::SharedLocalJobs(jobs))),
            None => Err(BatchError::Other {
                system: "kubernetes",
                message: "this backend runs no local jobs".into(),
            }),
        },
    }
}

/// The Slurm system of `target`, signing its tokens with `jwt_key`.
fn slurm_system(
    target: &batch::SlurmTarget,
    jwt_key: Vec<u8>,
) -> Result<Arc<dyn BatchSystem>, BatchError> {
    Ok(Arc::new(crate::batch::slurm::Slurm::new(target, jwt_key)?))
}

/// The system name a validated job's row records: `kubernetes` for every job of the
/// kubernetes backend (a BatchJob resource, which the operator runs on Kubernetes or Slurm).
fn system_name(hub: &HubState, v: &ValidatedBatchJob) -> &'static str {
    if hub.backend.batch_jobs().is_some() {
        return KUBE_SYSTEM;
    }
    match (&v.target, hub.backend.local_jobs().is_some()) {
        (BatchTarget::Slurm(_), _) => "slurm",
        (BatchTarget::Kubernetes { .. }, true) => crate::backend::local::JOBS_SYSTEM,
        (BatchTarget::Kubernetes { .. }, false) => KUBE_SYSTEM,
    }
}

/// The owner's groups, as the BatchJob's annotation lists them.
async fn groups_of(hub: &HubState, job: &Job) -> HubResult<Vec<String>> {
    Ok(hub.store.user_groups(job.user_id).await?)
}

async fn audit(hub: &HubState, action: AuditAction, actor: &str, job: &Job, detail: Value) {
    hub.audit
        .record(NewAuditEvent {
            action,
            actor: Some(actor.to_owned()),
            target_user: Some(job.user_name.clone()),
            target_server: Some(job.name.clone()),
            detail,
        })
        .await;
}

/// The update a system's state makes of a job's row.
fn update_of(job: &Job, state: &JobState) -> JobUpdate {
    let pid = state
        .placement
        .as_deref()
        .and_then(|p| p.strip_prefix("pid "))
        .and_then(|p| p.parse().ok())
        .or(job.pid);
    JobUpdate {
        phase: state.phase,
        system_id: job.system_id.clone().or_else(|| Some(job.name.clone())),
        exit_code: state.exit_code,
        reason: state.reason.clone(),
        message: state.message.clone(),
        pid,
        started: state.start_time.or(job.started),
        finished: state.completion_time,
    }
}

/// Writes `update` unless the row says the same already; a row finished meanwhile stays.
async fn record(hub: &HubState, job: &Job, update: JobUpdate) -> HubResult<Job> {
    let same = job.phase == update.phase
        && job.system_id == update.system_id
        && job.exit_code == update.exit_code
        && job.reason == update.reason
        && job.message == update.message
        && job.pid == update.pid
        && job.started == update.started.map(store::ts)
        && job.finished == update.finished.map(store::ts);
    if same {
        return Ok(job.clone());
    }
    match hub.store.update_job(job.id, &update).await {
        Ok(job) => Ok(job),
        Err(StoreError::Conflict(_)) => Ok(hub.store.get_job_by_id(job.id).await?),
        Err(e) => Err(e.into()),
    }
}

/// A job that could not be handed over: Failed, with the system's words.
fn failed_update(job: &Job, reason: &str, message: String) -> JobUpdate {
    JobUpdate {
        phase: BatchJobPhase::Failed,
        system_id: job.system_id.clone(),
        exit_code: None,
        reason: Some(reason.to_owned()),
        message: Some(message),
        pid: None,
        started: None,
        finished: Some(store::now()),
    }
}

/// Submits a job for `user` (checked first: see the module documentation). Returns the row,
/// Running (or Failed when the system refused it) once handed over.
pub async fn submit(
    hub: &HubState,
    user: &User,
    actor: &str,
    request: JobRequest,
) -> HubResult<Job> {
    let groups: BTreeSet<String> = hub.store.user_groups(user.id).await?.into_iter().collect();
    let catalog = hub.config.catalog.get();
    let profile = match request.profile.clone().filter(|p| !p.is_empty()) {
        Some(p) => p,
        None => {
            if catalog.is_empty() {
                hub.config.default_profile.clone()
            } else {
                catalog.default_profile_for(&groups, &hub.config.default_profile)
            }
        }
    };
    let spec = BatchJobSpec {
        user: user.name.clone(),
        command: request.command.clone(),
        profile: profile.clone(),
        resources: request.resources.clone(),
        node_pool: request.node_pool.clone(),
        data_sources: request.data_sources.clone(),
        env: request.env.clone().into_iter().collect(),
        working_dir: request.working_dir.clone(),
        deadline_seconds: request.deadline_seconds,
        backoff_limit: None,
        cancel: false,
    };
    // The command's shape first: the field most often wrong, named before any other rule.
    batch::check_command(&spec.command).map_err(|r| refusal_error(&r))?;
    let name = names::job_name(&user.name, &random_suffix());
    let v = validate(hub, &name, &user.name, &groups, &spec).map_err(|r| refusal_error(&r))?;
    // The data sources' environment and files, as a local server gets them.
    let local = hub.backend.local_jobs();
    let (data_env, files) = match (&local, v.data_sources.is_empty()) {
        (Some(_), false) => local_data(hub, user, &groups, &spec)?,
        _ => (BTreeMap::new(), BTreeMap::new()),
    };
    if let (Some(jobs), BatchTarget::Kubernetes { .. }) = (&local, &v.target)
        && v.working_dir.is_some()
    {
        jobs.working_dir(&user.name, v.working_dir.as_deref())
            .map_err(|m| field_error("working_dir", m))?;
    }
    admit(hub, &v).await?;
    let spec_json = serde_json::to_value(&spec)
        .map_err(|e| HubError::Unexpected(anyhow::anyhow!("job spec: {e}")))?;
    let job = hub
        .store
        .create_job(&NewJob {
            name: name.clone(),
            user_id: user.id,
            profile,
            command: spec.command.clone(),
            spec: spec_json,
            node_pool: Some(v.pool.name.clone()),
            system: system_name(hub, &v).to_owned(),
        })
        .await
        .map_err(|e| HubError::from_store(format!("job {name}"), e))?;
    audit(
        hub,
        AuditAction::JobSubmit,
        actor,
        &job,
        json!({"command": spec.command, "node_pool": v.pool.name, "system": job.system}),
    )
    .await;
    let kube = hub.backend.batch_jobs();
    let handed = match (&v.target, &local, &kube) {
        (_, _, Some(kube)) => {
            let groups: Vec<String> = groups.iter().cloned().collect();
            kube.submit(&name, &groups, &spec)
                .await
                .map(|id| id.to_string())
        }
        (BatchTarget::Kubernetes { .. }, Some(jobs), None) => {
            jobs.submit_with(&v, &data_env, &files).await
        }
        _ => match batch_system(hub, &v) {
            Ok(system) => system.submit(&v).await,
            Err(e) => Err(e),
        },
    };
    let job = match handed {
        Ok(id) => {
            let update = JobUpdate {
                system_id: Some(id),
                ..update_of(&job, &JobState::new(BatchJobPhase::Pending))
            };
            let job = record(hub, &job, update).await?;
            refresh(hub, &job).await?
        }
        Err(e) => {
            tracing::warn!(job = %job.name, error = %e, "job not handed over");
            let reason = match e {
                BatchError::Refused { .. } => "SubmitRefused",
                BatchError::Unauthorized { .. } => "Unauthorized",
                _ => "SubmitFailed",
            };
            record(hub, &job, failed_update(&job, reason, e.to_string())).await?
        }
    };
    Ok(job)
}

/// The data sources' environment and files of a local job, as `Catalog::local_data` makes
/// them for a local server (the Secrets' values read from the catalogue).
fn local_data(
    hub: &HubState,
    user: &User,
    groups: &BTreeSet<String>,
    spec: &BatchJobSpec,
) -> HubResult<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let request = crate::backend::SpawnRequest {
        user: user.name.clone(),
        server: String::new(),
        groups: groups.iter().cloned().collect(),
        profile: Some(spec.profile.clone()),
        user_options: json!({"profile": spec.profile, "data_sources": spec.data_sources}),
        env: BTreeMap::new(),
        files: BTreeMap::new(),
        dask: None,
        kind: Default::default(),
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let mtime = u32::try_from(store::now().timestamp()).unwrap_or(0);
    let data = hub
        .config
        .catalog
        .get()
        .local_data(&request, &hub.config.default_profile, uid, mtime)
        .map_err(|e| match e {
            super::catalog::CheckError::Refused(r) => refusal_error(&r),
            super::catalog::CheckError::Invalid(e) => field_error("data_sources", e),
        })?;
    Ok((data.env, data.files))
}

/// The system a row's job is on, resolved once for [`refresh`], [`cancel`] and [`logs`].
enum RowSystem {
    /// The local backend's processes.
    Local(Arc<crate::backend::local::LocalJobs>),
    /// A BatchJob resource of the kubernetes backend, with the spec it was applied with.
    Kube(Box<(BatchJobs, BatchJobSpec)>),
    /// A batch system the hub calls itself (Slurm), with the job validated again against the
    /// catalogue as it is now.
    Remote(Box<ValidatedBatchJob>, Arc<dyn BatchSystem>),
    /// None on this hub (a system its backend does not run, a spec that no longer parses or
    /// validates): no status to read, nothing to stop, no output to show.
    Absent(&'static str, &'static str),
}

impl RowSystem {
    async fn status(&self, id: &str) -> Result<JobState, BatchError> {
        match self {
            RowSystem::Local(jobs) => jobs.status(id).await,
            RowSystem::Kube(kube) => kube.0.status(id).await,
            RowSystem::Remote(v, system) => system.status(v, id).await,
            RowSystem::Absent(system, why) => Err(BatchError::Other {
                system,
                message: (*why).to_owned(),
            }),
        }
    }

    async fn cancel(&self, hub: &HubState, job: &Job, id: &str) -> Result<(), BatchError> {
        match self {
            RowSystem::Local(jobs) => jobs.cancel(id).await,
            RowSystem::Kube(kube) => match groups_of(hub, job).await {
                Ok(groups) => kube.0.cancel(id, &groups, &kube.1).await,
                Err(e) => Err(BatchError::Other {
                    system: KUBE_SYSTEM,
                    message: format!("the owner's groups: {e}"),
                }),
            },
            RowSystem::Remote(v, system) => system.cancel(v, id).await,
            RowSystem::Absent(..) => Ok(()),
        }
    }

    async fn logs(&self, id: &str, limit: usize) -> Result<String, BatchError> {
        match self {
            RowSystem::Local(jobs) => jobs.tail(id, limit),
            RowSystem::Kube(kube) => kube.0.logs(id, limit).await,
            RowSystem::Remote(v, system) => system.logs(v, id, limit).await,
            RowSystem::Absent(..) => Ok(String::new()),
        }
    }
}

/// The system of a row's job ([`RowSystem::Absent`] when it has none on this hub), or the
/// error of a system the hub cannot call (a Slurm key it cannot read).
async fn system_of(hub: &HubState, job: &Job) -> HubResult<Result<RowSystem, BatchError>> {
    if job.system == crate::backend::local::JOBS_SYSTEM {
        return Ok(Ok(hub.backend.local_jobs().map_or(
            RowSystem::Absent("local", "this hub's backend runs no local jobs"),
            RowSystem::Local,
        )));
    }
    let Some(spec) = stored_spec(job) else {
        return Ok(Ok(RowSystem::Absent(
            "hub",
            "the job's stored spec does not parse",
        )));
    };
    if job.system == KUBE_SYSTEM {
        return Ok(Ok(match hub.backend.batch_jobs() {
            Some(kube) => RowSystem::Kube(Box::new((kube, spec))),
            None => RowSystem::Absent(KUBE_SYSTEM, "this hub's backend writes no BatchJobs"),
        }));
    }
    let groups: BTreeSet<String> = groups_of(hub, job).await?.into_iter().collect();
    let Ok(v) = validate(hub, &job.name, &job.user_name, &groups, &spec) else {
        return Ok(Ok(RowSystem::Absent(
            "hub",
            "the job's spec no longer validates against the catalogue",
        )));
    };
    Ok(batch_system(hub, &v).map(|system| RowSystem::Remote(Box::new(v), system)))
}

/// Asks the job's system about an unfinished job and writes what changed.
pub async fn refresh(hub: &HubState, job: &Job) -> HubResult<Job> {
    if job.phase.is_finished() {
        return Ok(job.clone());
    }
    let Some(id) = job.system_id.clone() else {
        // Written, never handed over (the hub stopped in between).
        if store::now() - job.created > chrono::Duration::seconds(60) {
            let update = failed_update(
                job,
                "NotSubmitted",
                "the hub stopped before the job was handed to its batch system".into(),
            );
            return record(hub, job, update).await;
        }
        return Ok(job.clone());
    };
    let state = match system_of(hub, job).await? {
        Ok(system) => system.status(&id).await,
        Err(e) => Err(e),
    };
    match state {
        Ok(state) => record(hub, job, update_of(job, &state)).await,
        Err(BatchError::NotFound { .. }) => {
            let update = failed_update(
                job,
                "JobLost",
                format!("the {} system does not know job {id}", job.system),
            );
            record(hub, job, update).await
        }
        Err(e) => {
            tracing::warn!(job = %job.name, error = %e, "cannot read a job's status");
            Ok(job.clone())
        }
    }
}

/// Cancels an unfinished job (a finished one is left as it is: 409). Audited.
pub async fn cancel(hub: &HubState, job: &Job, actor: &str) -> HubResult<Job> {
    if job.phase.is_finished() {
        return Err(HubError::Conflict(format!(
            "job {} is {}: it cannot be cancelled",
            job.name,
            job.phase.as_str()
        )));
    }
    let job = hub
        .store
        .request_job_cancel(job.id)
        .await
        .map_err(|e| HubError::from_store(format!("job {}", job.name), e))?;
    if let Some(id) = job.system_id.clone() {
        let result = match system_of(hub, &job).await? {
            Ok(system) => system.cancel(hub, &job, &id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(job = %job.name, error = %e, "cancel not delivered");
            return Err(HubError::Unexpected(anyhow::anyhow!(
                "cancelling {}: {e}",
                job.name
            )));
        }
    }
    audit(
        hub,
        AuditAction::JobCancel,
        actor,
        &job,
        json!({"phase": job.phase.as_str()}),
    )
    .await;
    let refreshed = refresh(hub, &job).await?;
    if refreshed.phase.is_finished() || job.system_id.is_some() {
        return Ok(refreshed);
    }
    // Never handed over: nothing runs, the job is cancelled here.
    let update = JobUpdate {
        phase: BatchJobPhase::Cancelled,
        reason: Some("Cancelled".into()),
        message: Some("cancelled before it was handed to its batch system".into()),
        finished: Some(store::now()),
        ..update_of(&job, &JobState::new(BatchJobPhase::Cancelled))
    };
    record(hub, &job, update).await
}

/// The last `limit` bytes of a job's output.
pub async fn logs(hub: &HubState, job: &Job, limit: usize) -> HubResult<String> {
    let Some(id) = job.system_id.clone() else {
        return Ok(String::new());
    };
    let result = match system_of(hub, job).await? {
        Ok(system) => system.logs(&id, limit).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(text) => Ok(text),
        Err(BatchError::NotFound { .. }) => Ok(String::new()),
        Err(e) => Err(HubError::Unexpected(anyhow::anyhow!(
            "logs of {}: {e}",
            job.name
        ))),
    }
}

/// Refreshes every unfinished job once. Returns how many were asked about.
pub async fn poll_once(hub: &HubState) -> HubResult<usize> {
    let mut after = None;
    let mut n = 0;
    loop {
        let page = hub.store.list_active_jobs(after, POLL_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for job in &page {
            n += 1;
            if let Err(e) = refresh(hub, job).await {
                tracing::warn!(job = %job.name, error = %e, "cannot refresh a job");
            }
        }
    }
    Ok(n)
}

/// Polls the unfinished jobs every `hub.config.job_poll` (the first time at once: a restarted
/// hub finds its jobs again).
pub fn watch(hub: HubState) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = poll_once(&hub).await {
                tracing::warn!(error = %e, "job poll failed");
            }
            tokio::time::sleep(hub.config.job_poll).await;
        }
    })
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
mod tests;
