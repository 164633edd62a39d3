//! The I/O steps: dereference, admission, apply, status, finalizer; and the Controller wiring.
//!
//! [`reconcile_workspace`] waits until the informer caches are synced, then wraps the pipeline
//! in the [`WORKSPACE_FINALIZER`]:
//!
//! - *Apply*: [`dereference`] (from the caches) → `validate` → admission to the pool's caps
//!   (checked and reserved at once in the usage index, see [`crate::policy::admission`]) → on
//!   a refusal: release the reservation, remove the pod and the data sources' children, status
//!   `Pending` with `Ready=False`
//!   and the rule as reason, Warning Event, requeue in 5 min; otherwise `build` → [`apply`] in
//!   a fixed order (per-user namespace objects, Secret, PVC, the data sources' PersistentVolumes,
//!   claims and catalogue ConfigMap, Service, NetworkPolicy, Pod; then the data children of
//!   sources no longer named are deleted) with
//!   server-side apply, skipping every object whose cached copy already carries its
//!   [`APPLIED_HASH_ANNOTATION`] (a Service whose immutable cluster IP differs from the desired
//!   headless one is deleted and created again; a data source's volume whose DataSource
//!   changed in an immutable field is deleted with its claim and the pod, status
//!   `DataSourceChanged`, and made again once they are gone) → status (written only when it changed) and an
//!   Event per transition. A request the API server refuses (403, 422, an admission plugin)
//!   ends the pass with `Ready=False`, the server's reason and message, phase `Pending` or
//!   `Failed` and a Warning Event; the error then backs off exponentially ([`error_policy`]).
//! - *Cleanup*: delete the pod and the data sources' PersistentVolumes, delete the home volume
//!   only when the profile says `delete`, then
//!   the finalizer is removed (a refused deletion is reported in the status the same way, and
//!   the finalizer stays until it succeeds); the Workspace's reservation is released.
//!
//! Every read comes from the caches ([`crate::operator::workspace::cache`]): a reconciliation of
//! an unchanged Workspace makes no API request at all, and one that changes makes only its
//! writes (at most one per changed child, plus the status and its Event). The one exception: a
//! new Workspace whose token Secret is not cached yet GETs it once (see [`dereference`]). The
//! requests are deterministic: the same inputs make the same requests in the same order.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::status::{self, Rejection, Severity, StatusInput};
use super::{FIELD_MANAGER, Refusal, WORKSPACE_FINALIZER, WorkspaceResources, build};
use crate::api::v1alpha1::{HomeReclaim, Workspace, WorkspacePhase, WorkspaceStatus};
use crate::config::NamespaceMode;
use crate::operator::workspace::cache::cached_cluster;
use crate::operator::{Context, Error, Result};
pub use crate::policy::workspace::children_selector;
use crate::policy::workspace::validate;

pub mod apply;
mod controller;
pub mod dask;
pub mod dereference;
pub mod predicates;

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod dask_tests;
#[cfg(test)]
mod tests;

pub use apply::{APPLIED_HASH_ANNOTATION, with_applied_hash};
pub use controller::{
    EachWatchBacksOffAlone, MANAGED_BY_SELECTOR, SHUTDOWN_GRACE, cached_claim, child_triggers,
    observe_usage, refresh_usage, run_controller, workspaces_naming_data_source,
    workspaces_using_profile,
};

/// Requeue of a workspace that runs, is stopped or failed (a safety net; watches do the rest).
pub const REQUEUE_STEADY: Duration = Duration::from_secs(300);
/// Requeue of a workspace on its way somewhere (pending, starting, stopping, restarting).
pub const REQUEUE_TRANSITIONAL: Duration = Duration::from_secs(30);
/// Requeue of a refused workspace (caps or pools may have changed meanwhile).
pub const REQUEUE_REFUSED: Duration = Duration::from_secs(300);

/// `namespace/name`: the key of a Workspace in the back-off and metrics maps.
pub fn workspace_key(ws: &Workspace) -> String {
    format!("{}/{}", ws.namespace().unwrap_or_default(), ws.name_any())
}

/// Reconciles one Workspace (the controller's reconciler).
#[instrument(skip_all, fields(workspace = %workspace_key(&ws)))]
pub async fn reconcile_workspace(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let key = workspace_key(&ws);
    let result = reconcile_inner(ws, &ctx).await;
    ctx.metrics.reconciled(
        result.as_ref().err().map(Error::metric_label),
        started.elapsed(),
    );
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result
}

/// Exponential back-off per Workspace: 1 s doubling to 5 min, reset by a success.
/// (kube-rs/controller-rs `src/controller.rs` requeues every failure after a fixed 5 min; a
/// refusal reported in the status (`report_rejection`) is retried sooner at first, and a
/// Workspace that keeps failing costs the API server less.)
pub fn error_policy(ws: Arc<Workspace>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = workspace_key(&ws);
    let delay = ctx.backoff.next_delay(&key);
    warn!(workspace = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_inner(ws: Arc<Workspace>, ctx: &Context) -> Result<Action> {
    let namespace = ws.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let per_user = matches!(ctx.config.namespace_mode, NamespaceMode::PerUser { .. });
    if !ctx.caches.ready(per_user).await {
        // The controller is shutting down: its watches are gone.
        return Err(Error::CachesGone);
    }
    ctx.usage_estimated.call_once(|| refresh_usage(ctx));
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer::finalizer(&api, WORKSPACE_FINALIZER, ws, |event| async {
        match event {
            FinalizerEvent::Apply(ws) => apply_workspace(&ws, ctx).await,
            FinalizerEvent::Cleanup(ws) => match cleanup_workspace(&ws, ctx).await {
                Err(error) => report_rejection(&ws, error, ctx).await,
                ok => ok,
            },
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
    });
    requeue_freed(ctx);
    result
}

/// Reconciles again, now, the Workspaces a cap refused that a claim given back since the last
/// call may let in: those of the same user, or sharing one of its groups (the only caps a freed
/// place relaxes). Without this they would wait for [`REQUEUE_REFUSED`]; a start through the
/// hub fails at once on a refusal, but a Workspace an admin applied waits for its place, as a
/// Kubeflow notebook waits for its node. Costs O(cached Workspaces) per reconciliation that
/// freed something, and no API request.
pub fn requeue_freed(ctx: &Context) {
    let freed = ctx.usage().take_freed();
    if freed.is_empty() {
        return;
    }
    for workspace in waiting_for_a_place(&ctx.caches.workspaces.state(), &freed) {
        ctx.requeue(workspace);
    }
    // The BatchJobs waiting for a place too (`operator::batchjob`).
    ctx.announce(crate::operator::InputChange::Freed(freed));
}

/// The Workspaces refused by a cap (`Ready=False`, reason `UserCapExceeded` or
/// `GroupCapExceeded`) that still want to run, whose owner or groups match a `freed` claim.
pub fn waiting_for_a_place(
    workspaces: &[Arc<Workspace>],
    freed: &[crate::policy::Claim],
) -> Vec<kube::runtime::reflector::ObjectRef<Workspace>> {
    use crate::policy::workspace::{GROUPS_ANNOTATION, parse_groups, reason};
    workspaces
        .iter()
        .filter(|ws| ws.spec.desired_state == crate::api::v1alpha1::DesiredState::Running)
        .filter(|ws| {
            ws.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == status::READY
                        && (c.reason == reason::USER_CAP_EXCEEDED
                            || c.reason == reason::GROUP_CAP_EXCEEDED)
                })
            })
        })
        .filter(|ws| {
            let groups = parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str));
            freed
                .iter()
                .any(|c| c.user == ws.spec.user || !c.groups.is_disjoint(&groups))
        })
        .map(|ws| kube::runtime::reflector::ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// The Apply branch: dereference → validate → build → apply → status. A request the API server
/// refuses ends the pass with the refusal in the status ([`report_rejection`]).
async fn apply_workspace(ws: &Workspace, ctx: &Context) -> Result<Action> {
    match apply_steps(ws, ctx).await {
        Err(error) => report_rejection(ws, error, ctx).await,
        ok => ok,
    }
}

/// What the API server's refusal behind `error` means for the status, if it is one.
pub fn rejection_of(error: &Error) -> Option<Rejection> {
    let (what, source) = match error {
        Error::Dereference { what, source } => (format!("reading {what}"), source),
        Error::Apply { kind, name, source } => (format!("applying {kind} {name}"), source),
        Error::Delete { kind, name, source } => (format!("deleting {kind} {name}"), source),
        _ => return None,
    };
    match source {
        kube::Error::Api(status) => Rejection::from_api(&what, status),
        _ => None,
    }
}

/// When the API server refused a request (403, 422, an admission plugin's "no PriorityClass
/// with name ..."), says so in the status (`Ready=False` with the server's reason and message,
/// phase `Pending` or `Failed`, see [`Rejection`]) and in a Warning Event, then returns the
/// error: [`error_policy`] retries with the per-Workspace exponential back-off. Other errors
/// (the API server unreachable, 5xx, conflicts) leave the status alone.
async fn report_rejection(ws: &Workspace, error: Error, ctx: &Context) -> Result<Action> {
    if let Some(rejection) = rejection_of(&error) {
        warn!(reason = %rejection.reason, message = %rejection.message, "the API server refused a request");
        let input = StatusInput {
            generation: ws.metadata.generation,
            desired_state: ws.spec.desired_state,
            refusal: None,
            rejection: Some(&rejection),
            node_pool: None,
            url: None,
            pod: None,
            replacing: false,
            data_source_changed: None,
        };
        if let Err(status_error) = update_status(ws, &input, ctx).await {
            warn!(%status_error, "reporting the refusal in the status failed");
        }
    }
    Err(error)
}

async fn apply_steps(ws: &Workspace, ctx: &Context) -> Result<Action> {
    let namespace = ws.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let observed = dereference::dereference(ws, ctx).await?;
    let key = workspace_key(ws);
    let admitted = validate::validate(ws, &observed.inputs, &ctx.config).and_then(|validated| {
        // A cluster that stopped idle claims nothing and is not made again (from the caches).
        let idle = dask::idle_stop(ctx, ws, &validated);
        // Checked and reserved under one lock: two reconciliations at once cannot both take
        // the last place under a cap.
        let mut usage = ctx.usage();
        validate::admit(&mut usage, &key, &validated, &observed.inputs.pools)?;
        let mut validated = validated;
        if idle.is_some() {
            usage.release(&validate::dask_key(&key));
        } else {
            validate::admit_dask(&mut usage, &key, &mut validated, &observed.inputs.pools)?;
            if validated.dask.is_some() && ctx.caches.dask_crd.state() == dask::CrdState::Missing {
                return Err(dask::operator_missing());
            }
        }
        Ok((validated, idle))
    });
    let (validated, idle) = match admitted {
        Ok(v) => v,
        Err(refusal) => {
            ctx.usage().release(&key);
            ctx.usage().release(&validate::dask_key(&key));
            return refuse(ws, &namespace, &refusal, ctx).await;
        }
    };

    let caches = &ctx.caches;
    let client = &ctx.client;
    if let NamespaceMode::PerUser { .. } = ctx.config.namespace_mode {
        let ns = build::build_user_namespace(
            &validated.namespace,
            &validated.user,
            &validated.groups,
            &observed.inputs.pools,
            &ctx.config,
        );
        apply::apply_user_namespace(client, caches, &ns).await?;
    }

    let drivers = observed.inputs.csi_drivers.as_ref();
    let desired = build::build_with(&validated, &ctx.config, drivers);
    let data = build::data_children(&validated, drivers);
    let WorkspaceResources {
        secret,
        pvc,
        service,
        network_policy,
        pod,
    } = &desired;
    let ns = namespace.as_str();
    let expected = &caches.expected;
    apply::apply_object(client, ns, secret, observed.secret, expected).await?;
    let cached_pvc = caches.pvcs.get(ns, &pvc.name_any());
    apply::create_once(client, ns, pvc, cached_pvc, expected).await?;
    let replacement = apply::replace_changed_data_volumes(client, caches, ws, ns, &data).await?;
    ctx.metrics
        .replaced_data_volumes
        .inc_by(replacement.changed as u64);
    apply::apply_data_children(client, caches, ns, &replacement.pending(&data)).await?;
    let cached_service = caches.services.get(ns, &service.name_any());
    let service_ready = apply::apply_service(client, ns, service, cached_service, expected)
        .await?
        .is_some();
    let cached_policy = caches.network_policies.get(ns, &network_policy.name_any());
    apply::apply_object(client, ns, network_policy, cached_policy, expected).await?;
    let pods = caches.pods_of(ws);
    // While a data volume is replaced, its pod was deleted with it and none is made.
    let outcome = if replacement.is_replacing() {
        apply::PodOutcome {
            pod: replacement.pods.first().cloned(),
            replacing: true,
        }
    } else {
        apply::reconcile_pod(client, ns, pod.as_ref(), pods, expected).await?
    };
    apply::delete_stale_data_children(client, caches, ws, ns, Some(&data)).await?;
    let dask_outcome = dask::reconcile_dask(ctx, ws, &validated, drivers, idle).await?;

    let url = Some(build::server_url(&validated, &ctx.config));
    let pool = validated.pool.as_ref().map(|p| p.name.as_str());
    let input = StatusInput {
        generation: ws.metadata.generation,
        desired_state: validated.desired_state,
        refusal: None,
        rejection: None,
        node_pool: pool,
        url,
        pod: outcome.pod.as_ref(),
        replacing: outcome.replacing,
        data_source_changed: replacement.sources.first().map(String::as_str),
    };
    let with_dask = |next: &mut WorkspaceStatus, previous: Option<&WorkspaceStatus>, now: &Time| {
        dask::set_dask_status(next, &validated, dask_outcome.as_ref(), previous, now);
    };
    let next = update_status_with(ws, &input, ctx, with_dask).await?;
    let dask_steady = dask_outcome
        .as_ref()
        .is_none_or(dask::DaskOutcome::is_steady);
    Ok(match next.phase {
        Some(phase) if is_steady(phase) && !outcome.replacing && service_ready && dask_steady => {
            Action::requeue(REQUEUE_STEADY)
        }
        _ => Action::requeue(REQUEUE_TRANSITIONAL),
    })
}

fn is_steady(phase: WorkspacePhase) -> bool {
    matches!(
        phase,
        WorkspacePhase::Running | WorkspacePhase::Stopped | WorkspacePhase::Failed
    )
}

/// A refused workspace runs nothing and keeps nothing half-applied: delete its pods and its
/// data sources' claims, volumes and catalogue, say why (`Ready=False`, the rule as reason, the
/// message naming the source and what is wrong), retry later.
async fn refuse(
    ws: &Workspace,
    namespace: &str,
    refusal: &Refusal,
    ctx: &Context,
) -> Result<Action> {
    info!(reason = refusal.reason, message = %refusal.message, "workspace refused");
    apply::delete_live(&ctx.client, namespace, &ctx.caches.pods_of(ws)).await?;
    apply::delete_stale_data_children(&ctx.client, &ctx.caches, ws, namespace, None).await?;
    dask::delete_dask(ctx, ws, namespace).await?;
    let input = StatusInput {
        generation: ws.metadata.generation,
        desired_state: ws.spec.desired_state,
        refusal: Some(refusal),
        rejection: None,
        node_pool: None,
        url: None,
        pod: None,
        replacing: false,
        data_source_changed: None,
    };
    update_status(ws, &input, ctx).await?;
    Ok(Action::requeue(REQUEUE_REFUSED))
}

/// The Cleanup branch: delete the pod, the data sources' PersistentVolumes (cluster-scoped, they
/// have no namespaced owner to be collected with; their claims and the catalogue go with the
/// Workspace by their owner reference), and the home volume when the profile says `delete` (a
/// missing profile keeps it); the finalizer is removed afterwards.
async fn cleanup_workspace(ws: &Workspace, ctx: &Context) -> Result<Action> {
    let namespace = ws.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let caches = &ctx.caches;
    apply::delete_live(&ctx.client, &namespace, &caches.pods_of(ws)).await?;
    apply::delete_live_cluster(&ctx.client, &caches.data_volumes_of(ws)).await?;
    let reclaim = cached_cluster(&caches.profiles, &ws.spec.profile).map(|p| p.spec.home.on_delete);
    if reclaim == Some(HomeReclaim::Delete) {
        apply::delete_live(&ctx.client, &namespace, &caches.pvcs_of(ws)).await?;
    }
    info!(home = ?reclaim.unwrap_or_default(), "workspace cleaned up");
    let key = workspace_key(ws);
    ctx.usage().release(&key);
    ctx.usage().release(&validate::dask_key(&key));
    if let Some(uid) = ws.uid() {
        ctx.tokens.forget(&uid);
    }
    ctx.metrics.forget(&key);
    Ok(Action::await_change())
}

/// Derives the status, writes it with server-side apply when it changed, and publishes an
/// Event when the phase (or the Ready reason) changed, and one when the `Dask` condition's
/// reason did. Returns the new status.
async fn update_status(
    ws: &Workspace,
    input: &StatusInput<'_>,
    ctx: &Context,
) -> Result<WorkspaceStatus> {
    update_status_with(ws, input, ctx, |_, _, _| {}).await
}

/// [`update_status`] with `extra` completing the derived status (the Dask cluster's part, see
/// [`dask::set_dask_status`]) before it is compared and written.
async fn update_status_with(
    ws: &Workspace,
    input: &StatusInput<'_>,
    ctx: &Context,
    extra: impl FnOnce(&mut WorkspaceStatus, Option<&WorkspaceStatus>, &Time),
) -> Result<WorkspaceStatus> {
    // The status this operator wrote last, while the cache does not show it yet: the second
    // reconciliation a Workspace's own writes trigger starts from it, not from the stale one.
    let written_last = ctx.caches.expected.status_of(ws);
    let previous = written_last.as_ref().or(ws.status.as_ref());
    let now = now_seconds();
    let mut next = status::derive(input, previous, &now);
    extra(&mut next, previous, &now);
    if let Some(phase) = next.phase {
        ctx.metrics.set_phase(&workspace_key(ws), phase);
    }
    if !status::changed(previous, &next) {
        return Ok(next);
    }
    let namespace = ws.namespace().ok_or(Error::InvalidObject("namespace"))?;
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut written = next.clone();
    // lastActivity belongs to the hub: never claim it.
    written.last_activity = None;
    let patch = serde_json::json!({
        "apiVersion": Workspace::api_version(&()),
        "kind": Workspace::kind(&()),
        "status": written,
    });
    api.patch_status(
        &ws.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    ctx.caches
        .expected
        .wrote_status(&namespace, &ws.name_any(), &next);

    // The workspace's transition, then its Dask cluster's (the `Dask` condition's reason).
    let transitions = [
        status::transition(previous, &next),
        dask::dask_transition(previous, &next),
    ];
    for t in transitions.into_iter().flatten() {
        let event = KubeEvent {
            type_: match t.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: t.reason,
            note: Some(t.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        // An Event is a courtesy: failing to publish one does not fail the reconciliation.
        if let Err(error) = ctx.recorder().publish(&event, &ws.object_ref(&())).await {
            warn!(%error, "publishing an event failed");
        }
    }
    Ok(next)
}

/// The current time, truncated to seconds (what the API server stores).
fn now_seconds() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}
