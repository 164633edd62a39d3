//! The I/O steps of the BatchJob controller, and its wiring.
//!
//! [`reconcile_batchjob`] waits for the caches, then (a Slurm-backed BatchJob inside its
//! [`BATCHJOB_FINALIZER`]):
//!
//! 1. a finished job (Succeeded, Failed, Cancelled) is never run again: its claim is released,
//!    and a Job still running for it (a pod that could not pull its image) is deleted;
//! 2. `spec.cancel`: the Job is deleted (propagation `Background`: its pod goes too) or the Slurm
//!    job cancelled, status `Cancelled`;
//! 3. [`dereference`] (from the caches) → `validate_job` → a data source the job cannot mount →
//!    admission to the pool's caps (`admit_job`, in the usage index the Workspaces share; a job
//!    already handed to its system keeps its place). A refusal: status `Pending` (retried at
//!    once when its profile, a pool or its data sources change or a place frees under the cap
//!    that refused it, [`jobs_to_retry`]; else in [`REQUEUE_REFUSED`]) or `Failed` (the job as written can
//!    never run), `Admitted=False` with the rule as reason, a Warning Event, nothing created;
//! 4. Kubernetes: the catalogue ConfigMap (server-side apply, skipped when unchanged), then,
//!    before the Job is created, the owner's home claim when the PVC cache does not show it (a
//!    user who never started a workspace: [`build_home_claim`], server-side applied as the
//!    Workspace controller applies it, not owned by the job), then the Job, created once
//!    (POST; an existing Job is never written again: its spec is immutable but for `suspend`,
//!    which Kueue owns); the status from the Job and its pod. Slurm: submit
//!    once through the pool's [`BatchSystem`], then poll its status every [`REQUEUE_POLL`];
//! 5. the status is written (server-side apply of the status subresource) only when it
//!    changed, with an Event per new phase or reason.
//!
//! Deleting a BatchJob: its Job goes with it (owner reference, garbage collector); a Slurm job
//! is cancelled first (the finalizer's cleanup). An unchanged BatchJob reconciles with no API
//! request (a Slurm one: none to the API server, one status call to Slurm).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Event as KubeEvent;
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use super::build::{build_catalog_config_map, build_home_claim, build_job, unmountable_sources};
use super::status::{self, Placement};
use super::{
    BATCHJOB_FINALIZER, BATCHJOB_LABEL, Context, PhaseLabels, ResultLabels, SLURM_KEY_SELECTOR,
};
use crate::api::v1alpha1::{BatchJob, BatchJobPhase, BatchJobStatus};
use crate::batch::{BatchError, BatchSystem, JobState};
use crate::config::NamespaceMode;
use crate::operator::workspace::cache::{Cached, cached_cluster};
use crate::operator::workspace::reconcile::apply::{apply_object, create_once, with_applied_hash};
use crate::operator::workspace::reconcile::predicates::{mark_deleted, pod_trigger};
use crate::operator::workspace::reconcile::requeue_freed;
use crate::operator::workspace::reconcile::{EachWatchBacksOffAlone, MANAGED_BY_SELECTOR};
use crate::operator::workspace::{FIELD_MANAGER, Refusal};
use crate::operator::{Error, InputChange, Result, wait_for};
use crate::policy::batch::{
    self as rules, BatchTarget, ValidatedBatchJob, admit_job, job_key, observed_job_claim,
    validate_job,
};
use crate::policy::workspace::{
    Dereferenced, GROUPS_ANNOTATION, parse_groups, reason as ws_reason,
};

/// Requeue of a job on its way (queued, running: a safety net, the watches do the rest).
pub const REQUEUE_ACTIVE: Duration = Duration::from_secs(300);
/// Requeue of a refused job (caps or pools may have changed).
pub const REQUEUE_REFUSED: Duration = Duration::from_secs(120);
/// How often a Slurm job's status is polled.
pub const REQUEUE_POLL: Duration = Duration::from_secs(15);

/// `namespace/name`.
pub fn batchjob_key(job: &BatchJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// Refusals of a job that can never run as written: phase `Failed` rather than `Pending`.
const PERMANENT: [&str; 7] = [
    ws_reason::INVALID_NAME,
    ws_reason::WRONG_NAMESPACE,
    rules::reason::INVALID_COMMAND,
    rules::reason::INVALID_DEADLINE,
    rules::reason::DEADLINE_EXCEEDS_POOL,
    rules::reason::INVALID_SLURM_USER,
    status::DATA_SOURCE_NOT_MOUNTABLE,
];

/// Reconciles one BatchJob (the controller's reconciler).
#[instrument(skip_all, fields(batchjob = %batchjob_key(&job)))]
pub async fn reconcile_batchjob(job: Arc<BatchJob>, ctx: Arc<Context>) -> Result<Action> {
    let key = batchjob_key(&job);
    let result = reconcile_inner(job, &ctx).await;
    // A job that finished, was cancelled or refused gave its place back: the Workspaces and
    // the jobs waiting for one are reconciled now.
    requeue_freed(&ctx.shared);
    let label = result.as_ref().err().map_or("ok", Error::metric_label);
    ctx.metrics
        .reconciliations
        .get_or_create(&ResultLabels { result: label })
        .inc();
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result
}

/// Exponential back-off per BatchJob: 1 s doubling to 5 min, reset by a success.
pub fn error_policy(job: Arc<BatchJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = batchjob_key(&job);
    let delay = ctx.backoff.next_delay(&key);
    warn!(batchjob = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Whether `job` runs on a Slurm pool as the caches show it (its pool named, or recorded in its
/// status).
fn on_slurm(job: &BatchJob, ctx: &Context) -> bool {
    let pool = job
        .status
        .as_ref()
        .and_then(|s| s.node_pool.clone())
        .or_else(|| job.spec.node_pool.clone());
    let recorded = job.status.as_ref().and_then(|s| s.system.as_deref()) == Some("slurm");
    recorded
        || pool.is_some_and(|p| {
            cached_cluster(&ctx.shared.caches.pools, &p).is_some_and(|p| p.spec.slurm.is_some())
        })
}

async fn reconcile_inner(job: Arc<BatchJob>, ctx: &Context) -> Result<Action> {
    let namespace = job.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let per_user = matches!(
        ctx.shared.config.namespace_mode,
        NamespaceMode::PerUser { .. }
    );
    if !ctx.shared.caches.ready(per_user).await || !ctx.caches.ready().await {
        return Err(Error::CachesGone);
    }
    let slurm = on_slurm(&job, ctx) || job.finalizers().iter().any(|f| f == BATCHJOB_FINALIZER);
    if !slurm {
        if job.metadata.deletion_timestamp.is_some() {
            // The garbage collector removes its Job.
            free(ctx, &job_key(&namespace, &job.name_any()));
            return Ok(Action::await_change());
        }
        return apply_batchjob(&job, ctx).await;
    }
    let api: Api<BatchJob> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    finalizer::finalizer(&api, BATCHJOB_FINALIZER, job, |event| async {
        match event {
            FinalizerEvent::Apply(job) => apply_batchjob(&job, ctx).await,
            FinalizerEvent::Cleanup(job) => cleanup_slurm(&job, ctx).await,
        }
    })
    .await
    .map_err(|error| match error {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
            Error::Finalizer(e)
        }
        finalizer::Error::UnnamedObject => Error::InvalidObject("name"),
        finalizer::Error::InvalidFinalizer => Error::InvalidObject("valid finalizer path"),
    })
}

/// The inputs of `validate_job`, from the Workspace controller's caches.
pub fn dereference(job: &BatchJob, ctx: &Context) -> Dereferenced {
    crate::operator::workspace::reconcile::dereference::cached_inputs(
        &ctx.shared.caches,
        &job.namespace().unwrap_or_default(),
        &job.spec.profile,
        &job.spec.data_sources,
        parse_groups(job.annotations().get(GROUPS_ANNOTATION).map(String::as_str)),
    )
}

/// The status to start from: the one written last while the cache lags, else the cached one.
fn previous_status(job: &BatchJob, ctx: &Context) -> Option<BatchJobStatus> {
    ctx.caches
        .statuses
        .status_of(job)
        .or_else(|| job.status.clone())
}

async fn apply_batchjob(job: &BatchJob, ctx: &Context) -> Result<Action> {
    let namespace = job.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let key = job_key(&namespace, &job.name_any());
    let previous = previous_status(job, ctx);
    let phase = previous.as_ref().and_then(|s| s.phase);

    // 1. A finished job never runs again.
    if phase.is_some_and(BatchJobPhase::is_finished) {
        free(ctx, &key);
        if let Some(running) = ctx.caches.job_of(job).filter(|j| !job_finished(j)) {
            delete_job(ctx, &namespace, &running).await?;
        }
        return Ok(Action::await_change());
    }

    // 2. Cancelled.
    if job.spec.cancel {
        return cancel(job, previous.as_ref(), ctx).await;
    }

    // 3. Validation and admission.
    let deref = dereference(job, ctx);
    let submitted = ctx.caches.job_of(job).is_some()
        || previous
            .as_ref()
            .and_then(|s| s.system_id.as_ref())
            .is_some();
    let admitted = validate_job(job, &deref, &ctx.shared.config).and_then(|v| {
        if let BatchTarget::Kubernetes { .. } = v.target {
            let unmountable = unmountable_sources(&v, deref.csi_drivers.as_ref());
            if !unmountable.is_empty() {
                return Err(Refusal {
                    reason: status::DATA_SOURCE_NOT_MOUNTABLE,
                    message: format!(
                        "data sources {} are attached as PersistentVolumes (CSI, mode Persistent), \
                         which only workspaces mount; a batch job mounts nfs, pvc and ephemeral \
                         CSI sources",
                        unmountable.join(", ")
                    ),
                });
            }
        }
        if !submitted {
            // Checked and reserved under one lock, with the workspaces' claims.
            admit_job(&mut ctx.shared.usage(), &v, &deref.pools)?;
        }
        Ok(v)
    });
    let validated = match admitted {
        Ok(v) => v,
        Err(refusal) if submitted => {
            // Its inputs changed under it (a profile or pool deleted): what runs goes on, and
            // its status is left as it was until they are back.
            warn!(reason = refusal.reason, message = %refusal.message,
                "a submitted batch job no longer validates; its status is not updated");
            return Ok(Action::requeue(REQUEUE_REFUSED));
        }
        Err(refusal) => {
            ctx.shared.usage().release(&key);
            return refuse(job, previous.as_ref(), &refusal, ctx).await;
        }
    };

    // 4. Run it.
    let next = match &validated.target {
        BatchTarget::Kubernetes { local_queue } => {
            run_on_kubernetes(
                job,
                &validated,
                local_queue.as_deref(),
                &deref,
                previous.as_ref(),
                ctx,
            )
            .await?
        }
        BatchTarget::Slurm(_) => {
            match run_on_slurm(job, &validated, previous.as_ref(), ctx).await {
                Ok(next) => next,
                Err(refusal) => {
                    // Not submitted (a missing key, Slurm unreachable or refusing the
                    // credentials): said in the status, retried.
                    refuse(job, previous.as_ref(), &refusal, ctx).await?;
                    return Ok(Action::requeue(REQUEUE_POLL));
                }
            }
        }
    };
    let written = update_status(job, previous.as_ref(), next, ctx).await?;
    let finished = written.phase.is_some_and(BatchJobPhase::is_finished);
    if finished {
        free(ctx, &key);
        if let BatchTarget::Kubernetes { .. } = validated.target
            && let Some(running) = ctx.caches.job_of(job).filter(|j| !job_finished(j))
        {
            // A pod that cannot start (its image) would wait until the deadline: stop it.
            delete_job(ctx, &namespace, &running).await?;
        }
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(match validated.target {
        BatchTarget::Slurm(_) => REQUEUE_POLL,
        BatchTarget::Kubernetes { .. } => REQUEUE_ACTIVE,
    }))
}

/// Gives back what the job `key` holds on its pool: its reservation, and its claim as the cache
/// shows it (the status just written, finished or cancelled, holds nothing; the watch will say
/// the same).
fn free(ctx: &Context, key: &str) {
    let mut usage = ctx.shared.usage();
    usage.release(key);
    usage.observe(key, None);
}

/// Whether a Job reached `Complete` or `Failed`.
fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
        || job.metadata.deletion_timestamp.is_some()
}

/// Step 4 on Kubernetes: the catalogue, the Job (once), and what they say.
async fn run_on_kubernetes(
    job: &BatchJob,
    v: &ValidatedBatchJob,
    queue: Option<&str>,
    deref: &Dereferenced,
    previous: Option<&BatchJobStatus>,
    ctx: &Context,
) -> Result<BatchJobStatus> {
    let client = &ctx.shared.client;
    let ns = v.namespace.as_str();
    if let Some(catalog) = build_catalog_config_map(v) {
        let cached = ctx.shared.caches.config_maps.get(ns, &catalog.name_any());
        apply_object(client, ns, &catalog, cached, &ctx.shared.caches.expected).await?;
    }
    let desired = build_job(
        v,
        &ctx.shared.config,
        &ctx.settings,
        deref.csi_drivers.as_ref(),
    );
    let observed = match ctx.caches.job_of(job) {
        Some(observed) => Some(observed),
        None => {
            let had_id = previous.and_then(|s| s.system_id.as_ref()).is_some();
            let (applied, hash) = with_applied_hash(&desired)?;
            if ctx.expected.awaits::<Job>(ns, &v.name, &hash) {
                Some(applied)
            } else if had_id {
                // Handed to Kubernetes before, gone now (deleted by hand): never made again.
                None
            } else {
                // Its pod mounts the owner's home: made first when no workspace made it.
                let home = build_home_claim(v);
                let cached_home = ctx.shared.caches.pvcs.get(ns, &home.name_any());
                create_once(client, ns, &home, cached_home, &ctx.shared.caches.expected).await?;
                Some(create_job(ctx, ns, applied, &hash).await?)
            }
        }
    };
    let at = Placement {
        generation: job.metadata.generation,
        pool: &v.pool.name,
        system: v.target.system(),
        system_id: Some(&v.name),
    };
    let state = match &observed {
        Some(observed) => status::kubernetes_state(observed, &ctx.caches.pods_of(job), queue),
        None => {
            let mut gone = JobState::new(BatchJobPhase::Failed);
            gone.reason = Some(status::JOB_DELETED.to_owned());
            gone.message = Some(format!("Job {} was deleted before it finished", v.name));
            gone
        }
    };
    Ok(status::next_status(previous, &state, at, &now_seconds()))
}

/// Creates the Job (POST: an existing one is left as it is).
async fn create_job(ctx: &Context, ns: &str, job: Job, hash: &str) -> Result<Job> {
    let api: Api<Job> = Api::namespaced(ctx.shared.client.clone(), ns);
    let name = job.name_any();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let created = match api.create(&params, &job).await {
        Ok(created) => created,
        // Created by an earlier pass whose watch event has not arrived.
        Err(kube::Error::Api(status)) if status.code == 409 => job,
        Err(source) => {
            return Err(Error::Apply {
                kind: "Job".to_owned(),
                name,
                source,
            });
        }
    };
    info!(job = %name, "Job created");
    ctx.metrics.submitted.inc();
    ctx.expected.applied::<Job>(ns, &name, hash);
    Ok(created)
}

/// Deletes a Job and its pods (propagation `Background`).
async fn delete_job(ctx: &Context, ns: &str, job: &Job) -> Result<()> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let api: Api<Job> = Api::namespaced(ctx.shared.client.clone(), ns);
    let name = job.name_any();
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: "Job".to_owned(),
            name,
            source,
        }),
    }
}

/// `spec.cancel`: the Job deleted, or the Slurm job cancelled; status `Cancelled`.
async fn cancel(
    job: &BatchJob,
    previous: Option<&BatchJobStatus>,
    ctx: &Context,
) -> Result<Action> {
    let namespace = job.namespace().ok_or(Error::InvalidObject("namespace"))?;
    free(ctx, &job_key(&namespace, &job.name_any()));
    if let Some(running) = ctx.caches.job_of(job) {
        delete_job(ctx, &namespace, &running).await?;
    }
    let slurm_id = previous
        .filter(|s| s.system.as_deref() == Some("slurm"))
        .and_then(|s| s.system_id.clone());
    if let Some(id) = slurm_id {
        cancel_slurm(job, &id, ctx).await?;
    }
    let next = status::cancelled_status(previous, job.metadata.generation, &now_seconds());
    update_status(job, previous, next, ctx).await?;
    Ok(Action::await_change())
}

/// The refusal in the status (and an Event), nothing created.
async fn refuse(
    job: &BatchJob,
    previous: Option<&BatchJobStatus>,
    refusal: &Refusal,
    ctx: &Context,
) -> Result<Action> {
    info!(reason = refusal.reason, message = %refusal.message, "batch job refused");
    let permanent = PERMANENT.contains(&refusal.reason);
    let next = status::refused_status(
        previous,
        refusal,
        permanent,
        job.metadata.generation,
        &now_seconds(),
    );
    update_status(job, previous, next, ctx).await?;
    Ok(if permanent {
        Action::await_change()
    } else {
        Action::requeue(REQUEUE_REFUSED)
    })
}

/// The Slurm system of `v`'s pool, from its signing key in the cache.
fn slurm_system(
    v: &ValidatedBatchJob,
    ctx: &Context,
) -> std::result::Result<Arc<dyn BatchSystem>, Refusal> {
    let BatchTarget::Slurm(target) = &v.target else {
        return Err(Refusal {
            reason: status::SYSTEM_REFUSED,
            message: "not a Slurm job".to_owned(),
        });
    };
    let secret = &target.token_secret;
    let ns = &ctx.settings.secrets_namespace;
    let key = ctx
        .caches
        .slurm_key(ns, &secret.name, &secret.key)
        .ok_or_else(|| Refusal {
            reason: status::SLURM_KEY_MISSING,
            message: format!(
                "Secret {ns}/{} (labelled {SLURM_KEY_SELECTOR}) has no key {}: the signing key of \
                 NodePool {}'s Slurm cluster",
                secret.name, secret.key, v.pool.name
            ),
        })?;
    (ctx.systems)(target, key).map_err(|e| system_refusal(&e))
}

fn system_refusal(error: &BatchError) -> Refusal {
    let reason = match error {
        BatchError::Refused { .. } | BatchError::Other { .. } => status::SYSTEM_REFUSED,
        BatchError::Unreachable { .. }
        | BatchError::Unauthorized { .. }
        | BatchError::NotFound { .. } => status::SYSTEM_UNAVAILABLE,
    };
    Refusal {
        reason,
        message: error.to_string(),
    }
}

/// Step 4 on Slurm: submit once, then what Slurm says.
async fn run_on_slurm(
    job: &BatchJob,
    v: &ValidatedBatchJob,
    previous: Option<&BatchJobStatus>,
    ctx: &Context,
) -> std::result::Result<BatchJobStatus, Refusal> {
    let system = slurm_system(v, ctx)?;
    let known = previous
        .filter(|s| s.system.as_deref() == Some("slurm"))
        .and_then(|s| s.system_id.clone());
    let (id, state) = match known {
        Some(id) => match system.status(v, &id).await {
            Ok(state) => (id, state),
            Err(BatchError::NotFound { .. }) => {
                let mut gone = JobState::new(BatchJobPhase::Failed);
                gone.reason = Some(status::JOB_DELETED.to_owned());
                gone.message = Some(format!("Slurm no longer knows job {id}"));
                (id, gone)
            }
            Err(e) => return Err(system_refusal(&e)),
        },
        None => match system.submit(v).await {
            Ok(id) => {
                info!(slurm_job = %id, "submitted to Slurm");
                ctx.metrics.submitted.inc();
                let mut queued = JobState::new(BatchJobPhase::Queued);
                queued.reason = Some("Submitted".to_owned());
                queued.message = Some(format!("submitted to Slurm as job {id}"));
                (id, queued)
            }
            Err(e @ BatchError::Refused { .. }) => {
                // Slurm's final answer: the job fails with its words.
                let mut refused = JobState::new(BatchJobPhase::Failed);
                refused.reason = Some(status::SYSTEM_REFUSED.to_owned());
                refused.message = Some(e.to_string());
                let at = Placement {
                    generation: job.metadata.generation,
                    pool: &v.pool.name,
                    system: "slurm",
                    system_id: None,
                };
                return Ok(status::next_status(previous, &refused, at, &now_seconds()));
            }
            Err(e) => return Err(system_refusal(&e)),
        },
    };
    let at = Placement {
        generation: job.metadata.generation,
        pool: &v.pool.name,
        system: "slurm",
        system_id: Some(&id),
    };
    Ok(status::next_status(previous, &state, at, &now_seconds()))
}

/// Cancels Slurm job `id` of `job` (validated again for its target; a job that no longer
/// validates was refused before submission or keeps its last target in the status).
async fn cancel_slurm(job: &BatchJob, id: &str, ctx: &Context) -> Result<()> {
    let deref = dereference(job, ctx);
    let mut for_cancel = job.clone();
    for_cancel.spec.cancel = false;
    let Ok(v) = validate_job(&for_cancel, &deref, &ctx.shared.config) else {
        warn!(slurm_job = %id, "cannot cancel: the job's pool no longer validates");
        return Ok(());
    };
    let system = match slurm_system(&v, ctx) {
        Ok(system) => system,
        Err(refusal) => {
            warn!(slurm_job = %id, reason = refusal.reason, message = %refusal.message, "cannot cancel");
            return Ok(());
        }
    };
    match system.cancel(&v, id).await {
        Ok(()) | Err(BatchError::NotFound { .. }) => Ok(()),
        Err(e) => {
            warn!(slurm_job = %id, error = %e, "cancelling the Slurm job failed");
            Err(Error::Batch(e))
        }
    }
}

/// The finalizer's cleanup of a Slurm-backed BatchJob: cancel its unfinished job.
async fn cleanup_slurm(job: &BatchJob, ctx: &Context) -> Result<Action> {
    let namespace = job.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let status = job.status.as_ref();
    let unfinished = status
        .and_then(|s| s.phase)
        .is_some_and(|p| !p.is_finished());
    if unfinished && let Some(id) = status.and_then(|s| s.system_id.clone()) {
        cancel_slurm(job, &id, ctx).await?;
    }
    free(ctx, &job_key(&namespace, &job.name_any()));
    ctx.caches.statuses.forget(&namespace, &job.name_any());
    Ok(Action::await_change())
}

/// Writes `next` when it differs from `previous` (server-side apply of the status), with an
/// Event when the phase or reason changed. Returns `next`.
async fn update_status(
    job: &BatchJob,
    previous: Option<&BatchJobStatus>,
    next: BatchJobStatus,
    ctx: &Context,
) -> Result<BatchJobStatus> {
    if !status::changed(previous, &next) {
        return Ok(next);
    }
    let namespace = job.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let api: Api<BatchJob> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": BatchJob::api_version(&()),
        "kind": BatchJob::kind(&()),
        "status": next,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    ctx.caches.statuses.wrote(job, &next);
    if let Some(phase) = next.phase.filter(|p| p.is_finished())
        && previous.and_then(|p| p.phase) != Some(phase)
    {
        let system = match next.system.as_deref() {
            Some("slurm") => "slurm",
            _ => "kubernetes",
        };
        ctx.metrics
            .finished
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
                system,
            })
            .inc();
    }
    if let Some((type_, reason, note)) = status::transition(previous, &next) {
        let event = KubeEvent {
            type_,
            reason,
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder().publish(&event, &job.object_ref(&())).await {
            warn!(%error, "publishing an event failed");
        }
    }
    Ok(next)
}

/// The current time, truncated to seconds.
fn now_seconds() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// What a BatchJob holds on its pool as the caches show it ([`observed_job_claim`], with its
/// profile's defaults).
pub fn cached_job_claim(ctx: &Context, job: &BatchJob) -> Option<crate::policy::Claim> {
    let profile = cached_cluster(&ctx.shared.caches.profiles, &job.spec.profile);
    let defaults = profile
        .as_ref()
        .and_then(|p| p.spec.default_resources.as_ref());
    let groups = parse_groups(job.annotations().get(GROUPS_ANNOTATION).map(String::as_str));
    observed_job_claim(job, groups, defaults)
}

/// Feeds the shared usage index from a BatchJob watch event: each job's observed claim under
/// its [`job_key`], and after a relist the vanished jobs dropped (the Workspaces' keys left
/// alone).
pub fn observe_job_usage(
    ctx: &Context,
    event: &watcher::Event<BatchJob>,
    relisted: &mut Option<HashSet<String>>,
) {
    let key = |job: &BatchJob| job_key(&job.namespace().unwrap_or_default(), &job.name_any());
    match event {
        watcher::Event::Apply(job) => {
            let claim = cached_job_claim(ctx, job);
            ctx.shared.usage().observe(&key(job), claim);
        }
        watcher::Event::Delete(job) => {
            ctx.shared.usage().remove(&key(job));
            ctx.caches
                .statuses
                .forget(&job.namespace().unwrap_or_default(), &job.name_any());
        }
        watcher::Event::Init => *relisted = Some(HashSet::new()),
        watcher::Event::InitApply(job) => {
            let claim = cached_job_claim(ctx, job);
            ctx.shared.usage().observe(&key(job), claim);
            relisted.get_or_insert_default().insert(key(job));
        }
        watcher::Event::InitDone => {
            let keep = relisted.take().unwrap_or_default();
            ctx.shared.usage().retain_within(rules::is_job_key, &keep);
        }
    }
    requeue_freed(&ctx.shared);
}

/// The reason of `job`'s refusal while it waits to be admitted (phase `Pending`,
/// `Admitted=False`, not cancelled nor deleted); `None` for any other job.
pub fn waiting_refusal(job: &BatchJob) -> Option<&str> {
    if job.spec.cancel || job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = job.status.as_ref()?;
    if status.phase != Some(BatchJobPhase::Pending) {
        return None;
    }
    status
        .conditions
        .iter()
        .find(|c| c.type_ == status::ADMITTED && c.status == "False")
        .map(|c| c.reason.as_str())
}

/// The refused BatchJobs ([`waiting_refusal`]) that `change` may let in, to reconcile now
/// rather than in [`REQUEUE_REFUSED`] (as the Workspace controller maps the same changes to
/// its Workspaces): a profile → the jobs using it; a pool → every refused job (pools are few
/// and rarely change; a job names one or is routed to one); a data source → the jobs naming
/// it; claims given back → the jobs a user or group cap refused whose owner or groups match
/// one (the only caps a freed place relaxes). `None` (changes were missed): every refused job.
/// Costs O(cached BatchJobs) per change and no API request.
pub fn jobs_to_retry(
    jobs: &[Arc<BatchJob>],
    change: Option<&InputChange>,
) -> Vec<ObjectRef<BatchJob>> {
    let cap = [ws_reason::USER_CAP_EXCEEDED, ws_reason::GROUP_CAP_EXCEEDED];
    jobs.iter()
        .filter(|job| {
            let Some(reason) = waiting_refusal(job) else {
                return false;
            };
            match change {
                None | Some(InputChange::Pool(_)) => true,
                Some(InputChange::Profile(profile)) => &job.spec.profile == profile,
                Some(InputChange::DataSource(source)) => job.spec.data_sources.contains(source),
                Some(InputChange::Freed(claims)) => {
                    cap.contains(&reason) && {
                        let groups = parse_groups(
                            job.annotations().get(GROUPS_ANNOTATION).map(String::as_str),
                        );
                        claims
                            .iter()
                            .any(|c| c.user == job.spec.user || !c.groups.is_disjoint(&groups))
                    }
                }
            }
        })
        .map(|job| ObjectRef::from_obj(job.as_ref()))
        .collect()
}

/// The BatchJobs to reconcile at each [`InputChange`] the Workspace controller announces
/// ([`jobs_to_retry`] over the cached BatchJobs); after missed changes (a slow reader), every
/// refused job.
pub fn retried_on_input_changes(
    changes: tokio::sync::broadcast::Receiver<InputChange>,
    jobs: kube::runtime::reflector::Store<BatchJob>,
) -> impl futures::Stream<Item = ObjectRef<BatchJob>> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(changes, |mut changes| async move {
        match changes.recv().await {
            Ok(change) => Some((Some(change), changes)),
            Err(RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "input changes were missed: every refused BatchJob is retried"
                );
                Some((None, changes))
            }
            Err(RecvError::Closed) => None,
        }
    })
    .flat_map(move |change| futures::stream::iter(jobs_to_retry(&jobs.state(), change.as_ref())))
}

/// The trigger hash of a BatchJob: its generation, groups, finalizers and deletion (not its
/// status, which this controller writes).
pub fn batchjob_trigger(job: &BatchJob) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    let meta = &job.metadata;
    meta.generation.hash(&mut hasher);
    job.annotations().get(GROUPS_ANNOTATION).hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The trigger hash of a Job: what the status reads of it (suspension, conditions, times,
/// counts) and its deletion.
pub fn job_trigger(job: &Job) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    job.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    job.spec.as_ref().and_then(|s| s.suspend).hash(&mut hasher);
    if let Some(status) = &job.status {
        for c in status.conditions.iter().flatten() {
            (&c.type_, &c.status, &c.reason, &c.message).hash(&mut hasher);
        }
        status
            .start_time
            .as_ref()
            .map(|t| t.0.as_second())
            .hash(&mut hasher);
        status
            .completion_time
            .as_ref()
            .map(|t| t.0.as_second())
            .hash(&mut hasher);
        (status.active, status.succeeded, status.failed).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// The BatchJob a Job or pod belongs to: by its [`BATCHJOB_LABEL`] (the Job's name is the
/// BatchJob's).
fn labelled_batchjob<K: ResourceExt>(object: &K) -> Option<ObjectRef<BatchJob>> {
    let name = object.labels().get(BATCHJOB_LABEL)?;
    Some(ObjectRef::new(name).within(&object.namespace()?))
}

/// Runs the BatchJob controller until `shutdown` turns `true`.
///
/// Watches: the BatchJobs (of `watch_namespace`, or all; feeding the usage index), the Jobs of
/// the operator (managed-by label), their pods (the [`BATCHJOB_LABEL`] selector) and the Slurm
/// key Secrets of the operator's namespace ([`SLURM_KEY_SELECTOR`], feeding the cache only).
/// Triggers: a BatchJob whose spec, groups, finalizers or deletion changed; a Job or pod whose
/// status-relevant fields changed; a refused job that an input change or a freed place may let
/// in ([`jobs_to_retry`]: profiles, pools and data sources are the Workspace controller's
/// caches and watches, which announce their changes; [`REQUEUE_REFUSED`] stays the safety
/// net).
pub async fn run_controller(
    ctx: Arc<Context>,
    watch_namespace: Option<String>,
    concurrency: u16,
    shutdown: watch::Receiver<bool>,
) {
    let Some(writers) = ctx.take_cache_writers() else {
        warn!("the BatchJob caches are already fed by another controller");
        return;
    };
    let client = ctx.shared.client.clone();
    let scoped = |_: ()| -> (Api<BatchJob>, Api<Job>, Api<Pod>) {
        match watch_namespace.as_deref() {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        }
    };
    let (batchjob_api, job_api, pod_api) = scoped(());
    let usage_ctx = ctx.clone();
    let mut relisted = None;
    let batchjobs = watcher(batchjob_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(BatchJob::keep)
        .reflect(writers.batchjobs)
        .inspect_ok(move |event| observe_job_usage(&usage_ctx, event, &mut relisted))
        .map_ok(mark_deleted)
        .applied_objects()
        .predicate_filter(batchjob_trigger, PredicateConfig::default());

    let expected = ctx.expected.clone();
    let jobs = crate::operator::workspace::reconcile::child_triggers(
        watcher(
            job_api,
            watcher::Config::default().labels(MANAGED_BY_SELECTOR),
        )
        .default_backoff(),
        writers.jobs,
        expected.clone(),
        job_trigger,
    );
    let pods = crate::operator::workspace::reconcile::child_triggers(
        watcher(pod_api, watcher::Config::default().labels(BATCHJOB_LABEL)).default_backoff(),
        writers.pods,
        expected,
        pod_trigger,
    );
    let keys_api: Api<Secret> = Api::namespaced(client.clone(), &ctx.settings.secrets_namespace);
    let keys = watcher(
        keys_api,
        watcher::Config::default().labels(SLURM_KEY_SELECTOR),
    )
    .default_backoff()
    .reflect(writers.slurm_keys)
    .applied_objects()
    .filter_map(|_: Result<Secret, watcher::Error>| async {
        None::<Result<Secret, watcher::Error>>
    });

    let retried =
        retried_on_input_changes(ctx.shared.input_changes(), ctx.caches.batchjobs.clone());
    let controller = Controller::for_stream(batchjobs, ctx.caches.batchjobs.clone())
        .with_config(controller::Config::default().concurrency(concurrency))
        .trigger_backoff(EachWatchBacksOffAlone)
        .watches_stream(jobs, |job| labelled_batchjob(&job))
        .watches_stream(pods, |pod| labelled_batchjob(&pod))
        .watches_stream(keys, |_: Secret| None::<ObjectRef<BatchJob>>)
        .reconcile_on(retried)
        .graceful_shutdown_on(wait_for(shutdown.clone()))
        .run(reconcile_batchjob, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "a BatchJob reconciliation failed");
            }
        });
    let grace = async {
        wait_for(shutdown).await;
        tokio::time::sleep(crate::operator::workspace::reconcile::SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = controller => {},
        () = grace => warn!("the BatchJob controller did not stop in time; dropping it"),
    }
}
