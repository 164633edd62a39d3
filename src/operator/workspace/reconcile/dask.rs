//! A workspace's Dask cluster, reconciled by the Workspace controller (it owns the cluster):
//! the dask-kubernetes objects of [`build::dask`](crate::operator::workspace::build::dask)
//! applied with the applied-hash pattern, deleted when the workspace stops or drops Dask, and
//! what `status.dask` and the `Dask` condition say.
//!
//! **Whether the DaskCluster CRD is installed** ([`DaskCrd`]): the DaskCluster watch says so.
//! Its list answering 404 marks the CRD missing (the error goes no further: the watch retries
//! with its own back-off, at most every 30 s, kube's `default_backoff`, so the CRD is picked up
//! when it appears); a completed list marks it present and requeues the Workspaces refused with
//! [`DASK_OPERATOR_MISSING`]. A Workspace asking for Dask while the CRD is missing is refused
//! with that reason (`Ready=False`, an Event); the others are unaffected, and the caches'
//! readiness never waits for the Dask watches.
//!
//! **Workers ready**: the dask-kubernetes operator copies the DaskCluster's labels onto the
//! scheduler's and the workers' Deployments and pods (`controller.py`, `_get_labels`), so the
//! operator's existing pod watch (managed-by label) already holds them under the Workspace's
//! label: the cheapest correct signal, no further watch. The scheduler is up when its pod
//! (`<cluster>-scheduler-…`) is Ready (the DaskCluster's `status.phase` says `Running` as soon
//! as the scheduler's Service exists); workers ready are the Ready pods `<cluster>-default-worker-…`.
//!
//! **Idle clusters**: with `idleTimeoutSeconds`, the DaskCluster carries `spec.idleTimeout` and
//! the dask-kubernetes operator deletes it once its scheduler stayed idle that long
//! (`daskcluster_autoshutdown`). A cluster that is gone from the cache (or terminating) while
//! the workspace still wants it, whose scheduler the status last saw ready, and that this
//! operator did not just apply, stopped idle ([`idle_stop`]): the autoscaler and the policy go
//! too, the cluster's claim is released, and `status.dask.idleStopped` remembers the hash of the
//! `spec.dask` it ran under, with the `Dask` condition's reason [`DASK_IDLE`] (and its Event).
//! No cluster is made again while that hash matches: until the workspace restarts (a stop
//! clears `status.dask`) or its `spec.dask` changes.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::watcher;
use std::hash::{Hash, Hasher};

use sha2::{Digest, Sha256};

use super::apply;
use crate::api::v1alpha1::{DaskStatus, Workspace, WorkspaceStatus};
use crate::operator::workspace::build::dask as build_dask;
use crate::operator::workspace::cache::Caches;
pub use crate::operator::workspace::dask::{CrdState, DaskCrd, dask_pod_prefix};
use crate::operator::workspace::dask::{DaskAutoscaler, DaskCluster};
use crate::operator::workspace::{ValidatedWorkspace, status};
use crate::operator::{Context, Result};
use crate::policy::names;
use crate::policy::workspace::reason;

/// `Ready` reason of a Workspace asking for Dask while the DaskCluster CRD is not installed.
pub const DASK_OPERATOR_MISSING: &str = "DaskOperatorMissing";
/// Type of the condition about the workspace's Dask cluster.
pub const DASK_CONDITION: &str = "Dask";
/// Reason of the `Dask` condition once the scheduler is ready (and no cap lowered `max`).
pub const DASK_RUNNING: &str = "DaskRunning";
/// Reason of the `Dask` condition until the scheduler is ready.
pub const DASK_STARTING: &str = "DaskStarting";
/// Reason of the `Dask` condition once the cluster was deleted for idleness.
pub const DASK_IDLE: &str = "DaskIdle";

/// Trigger hash of a DaskCluster: a child's (applied hash, deletion) and its phase.
pub fn dask_cluster_trigger(cluster: &DaskCluster) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    super::predicates::child_trigger(cluster).hash(&mut hasher);
    cluster
        .status
        .as_ref()
        .and_then(|s| s.phase.as_ref())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Whether a watch error says the kind is not served (the CRD is not installed).
pub fn is_not_found(error: &watcher::Error) -> bool {
    let api = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => return status.code == 404,
        _ => return false,
    };
    matches!(api, kube::Error::Api(s) if s.code == 404)
}

/// Follows a Dask watch's events into `crd`: a completed list marks the CRD present, a 404
/// marks it missing and is swallowed (the watch keeps retrying with its back-off); `on_change`
/// runs when the state flips.
pub fn track_crd<K, S>(
    events: S,
    crd: Arc<DaskCrd>,
    on_change: impl Fn(CrdState) + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    events.filter_map(move |item| {
        let flipped = match &item {
            Ok(watcher::Event::InitDone) => crd.set(CrdState::Present).then_some(CrdState::Present),
            Err(e) if is_not_found(e) => crd.set(CrdState::Missing).then_some(CrdState::Missing),
            _ => None,
        };
        if let Some(state) = flipped {
            if state == CrdState::Missing {
                tracing::warn!(
                    "the DaskCluster CRD is not installed: Workspaces asking for Dask are refused until it is"
                );
            } else {
                tracing::info!("the DaskCluster CRD is installed");
            }
            on_change(state);
        }
        let keep = !matches!(&item, Err(e) if is_not_found(e));
        futures::future::ready(keep.then_some(item))
    })
}

/// The Workspaces that ask for Dask (a flip of the CRD's state may change their outcome).
pub fn workspaces_asking_for_dask(
    workspaces: &[Arc<Workspace>],
) -> Vec<kube::runtime::reflector::ObjectRef<Workspace>> {
    workspaces
        .iter()
        .filter(|ws| {
            ws.spec
                .dask
                .as_ref()
                .is_some_and(|d| d.enabled != Some(false))
                || ws.status.as_ref().is_some_and(|s| {
                    s.dask.is_some()
                        || s.conditions
                            .iter()
                            .any(|c| c.reason == DASK_OPERATOR_MISSING)
                })
        })
        .map(|ws| kube::runtime::reflector::ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// The refusal of a Workspace asking for Dask while the CRD is missing.
pub fn operator_missing() -> crate::policy::workspace::Refusal {
    crate::policy::workspace::Refusal {
        reason: DASK_OPERATOR_MISSING,
        message: "The workspace asks for a Dask cluster, but the dask-kubernetes operator (its \
                  DaskCluster CRD, kubernetes.dask.org/v1) is not installed in the cluster"
            .to_owned(),
    }
}

/// What became of a workspace's cluster in this reconciliation, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaskOutcome {
    /// Applied (or unchanged): what its pods show.
    Running(DaskObserved),
    /// Deleted for idleness and not made again: the [`dask_spec_hash`] it ran under.
    Idle(String),
}

impl DaskOutcome {
    /// Whether nothing is on its way: the scheduler is ready, or the cluster stopped idle.
    pub fn is_steady(&self) -> bool {
        match self {
            DaskOutcome::Running(observed) => observed.scheduler_ready,
            DaskOutcome::Idle(_) => true,
        }
    }
}

/// What the reconciliation observed of a workspace's cluster, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaskObserved {
    /// The scheduler's pod is Ready.
    pub scheduler_ready: bool,
    /// Ready worker pods.
    pub workers_ready: i32,
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The scheduler's readiness and the ready workers among `pods` (the Workspace's pods as the
/// cache shows them) for cluster `cluster`.
pub fn observe_pods(cluster: &str, pods: &[Pod]) -> DaskObserved {
    let scheduler = format!("{cluster}-scheduler-");
    let worker = format!("{cluster}-default-worker-");
    DaskObserved {
        scheduler_ready: pods
            .iter()
            .any(|p| p.name_any().starts_with(&scheduler) && ready(p)),
        workers_ready: pods
            .iter()
            .filter(|p| p.name_any().starts_with(&worker) && ready(p))
            .count()
            .try_into()
            .unwrap_or(i32::MAX),
    }
}

/// A short hash of `ws`'s `spec.dask` (absent included): what `status.dask.idleStopped`
/// remembers, so that a changed `spec.dask` asks for a cluster again.
pub fn dask_spec_hash(ws: &Workspace) -> String {
    let json = serde_json::to_vec(&ws.spec.dask).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

/// Whether `ws`'s cluster stopped idle, as far as the caches and its last status tell (no
/// request): the [`dask_spec_hash`] to remember, or `None` when a cluster must run.
///
/// It stopped idle when the last status remembers it under the current hash; or when `v` has
/// a cluster with an idle timeout, the last status saw its scheduler ready (condition `Dask`
/// True: the cluster was there), and the DaskCluster is now gone from the cache or terminating
/// while this operator has no apply of it in flight. Our own deletions never meet these: they
/// happen only when the workspace stops, drops Dask or is refused.
pub fn idle_stop(ctx: &Context, ws: &Workspace, v: &ValidatedWorkspace) -> Option<String> {
    let dask = v.dask.as_ref()?;
    let written = ctx.caches.expected.status_of(ws);
    let previous = written.as_ref().or(ws.status.as_ref())?;
    let seen = previous.dask.as_ref()?;
    let hash = dask_spec_hash(ws);
    if seen.idle_stopped.as_deref() == Some(hash.as_str()) {
        return Some(hash);
    }
    if build_dask::idle_timeout(dask).is_none() || ctx.caches.dask_crd.state() != CrdState::Present
    {
        return None;
    }
    let was_ready = previous
        .conditions
        .iter()
        .any(|c| c.type_ == DASK_CONDITION && c.status == "True");
    let name = names::dask_cluster_name(&v.name);
    let gone = ctx
        .caches
        .dask_clusters
        .get(&v.namespace, &name)
        .is_none_or(|c| c.metadata.deletion_timestamp.is_some());
    let in_flight = ctx
        .caches
        .expected
        .awaits_any::<DaskCluster>(&v.namespace, &name);
    (was_ready && gone && !in_flight).then_some(hash)
}

/// Applies the Dask objects of `v` (NetworkPolicy, DaskCluster, DaskAutoscaler; each skipped
/// when its cached copy carries the desired hash), or deletes those the cache holds when `v`
/// has no cluster or it stopped idle (`idle`, from [`idle_stop`]). Returns what the status needs.
pub async fn reconcile_dask(
    ctx: &Context,
    ws: &Workspace,
    v: &ValidatedWorkspace,
    csi_drivers: Option<&std::collections::BTreeMap<String, Vec<String>>>,
    idle: Option<String>,
) -> Result<Option<DaskOutcome>> {
    let namespace = v.namespace.as_str();
    let Some(desired) = build_dask::build_dask(v, &ctx.config, csi_drivers) else {
        delete_dask(ctx, ws, namespace).await?;
        return Ok(None);
    };
    if let Some(hash) = idle {
        delete_dask(ctx, ws, namespace).await?;
        return Ok(Some(DaskOutcome::Idle(hash)));
    }
    let caches = &ctx.caches;
    let (client, expected) = (&ctx.client, &caches.expected);
    let name = desired.cluster.name_any();
    let cached_policy = caches.network_policies.get(namespace, &name);
    apply::apply_object(
        client,
        namespace,
        &desired.network_policy,
        cached_policy,
        expected,
    )
    .await?;
    let cached_cluster = caches.dask_clusters.get(namespace, &name);
    apply::apply_object(
        client,
        namespace,
        &desired.cluster,
        cached_cluster,
        expected,
    )
    .await?;
    let cached_autoscaler = caches.dask_autoscalers.get(namespace, &name);
    apply::apply_object(
        client,
        namespace,
        &desired.autoscaler,
        cached_autoscaler,
        expected,
    )
    .await?;
    Ok(Some(DaskOutcome::Running(observe_pods(
        &name,
        &caches.dask_pods_of(ws),
    ))))
}

/// Deletes the Dask objects of `ws` the caches hold (the autoscaler first, so that it does not
/// scale a cluster on its way out). No request when there are none.
pub async fn delete_dask(ctx: &Context, ws: &Workspace, namespace: &str) -> Result<()> {
    let caches = &ctx.caches;
    let name = names::dask_cluster_name(&ws.name_any());
    if caches.dask_crd.state() == CrdState::Present {
        let autoscalers: Vec<DaskAutoscaler> = caches
            .dask_autoscalers
            .get(namespace, &name)
            .into_iter()
            .collect();
        apply::delete_live(&ctx.client, namespace, &autoscalers).await?;
        let clusters: Vec<DaskCluster> = caches
            .dask_clusters
            .get(namespace, &name)
            .into_iter()
            .collect();
        apply::delete_live(&ctx.client, namespace, &clusters).await?;
    }
    let policies: Vec<NetworkPolicy> = caches
        .network_policies
        .get(namespace, &name)
        .into_iter()
        .collect();
    apply::delete_live(&ctx.client, namespace, &policies).await?;
    Ok(())
}

/// `status.dask` and the `Dask` condition of a workspace with a cluster (`outcome`), set on
/// `next`; without a cluster both are left out. The condition: `DaskWorkersCapped` (message:
/// the cap) when a cap lowered `max`, else `DaskRunning` once the scheduler is ready, else
/// `DaskStarting`; its status is the scheduler's readiness. A cluster that stopped idle:
/// `DaskIdle` (False), no address, no workers, `idleStopped` set.
pub fn set_dask_status(
    next: &mut WorkspaceStatus,
    v: &ValidatedWorkspace,
    outcome: Option<&DaskOutcome>,
    previous: Option<&WorkspaceStatus>,
    now: &Time,
) {
    let (Some(dask), Some(outcome)) = (v.dask.as_ref(), outcome) else {
        next.dask = None;
        return;
    };
    next.conditions.retain(|c| c.type_ != DASK_CONDITION);
    let observed = match outcome {
        DaskOutcome::Running(observed) => observed,
        DaskOutcome::Idle(hash) => {
            next.dask = Some(DaskStatus {
                workers_wanted: 0,
                workers_ready: 0,
                workers: Some("0/0".to_owned()),
                node_pool: Some(dask.pool.name.clone()),
                idle_stopped: Some(hash.clone()),
                ..DaskStatus::default()
            });
            let seconds = dask.idle_timeout_seconds.unwrap_or_default();
            next.conditions.push(status::condition(
                previous,
                DASK_CONDITION,
                false,
                DASK_IDLE,
                &format!(
                    "The Dask cluster was deleted after {seconds} s without work \
                     (idleTimeoutSeconds); restart the workspace or change spec.dask for a new one"
                ),
                next.observed_generation,
                now,
            ));
            return;
        }
    };
    let workers_ready = observed.workers_ready.min(dask.workers);
    next.dask = Some(DaskStatus {
        scheduler_address: Some(build_dask::scheduler_address(v)),
        dashboard_url: Some(build_dask::dashboard_url(v)),
        dashboard_target: Some(build_dask::dashboard_target(v)),
        workers_wanted: dask.workers,
        workers_ready,
        workers: Some(format!("{workers_ready}/{}", dask.workers)),
        node_pool: Some(dask.pool.name.clone()),
        capped_to: dask.capped.as_ref().map(|_| dask.workers),
        idle_stopped: None,
    });
    let (reason, message) = match (&dask.capped, observed.scheduler_ready) {
        (Some(capped), _) => (reason::DASK_WORKERS_CAPPED, capped.clone()),
        (None, true) => (
            DASK_RUNNING,
            format!(
                "Dask scheduler ready, {workers_ready} of up to {} workers on pool {}",
                dask.workers, dask.pool.name
            ),
        ),
        (None, false) => (DASK_STARTING, "Starting the Dask scheduler".to_owned()),
    };
    next.conditions.push(status::condition(
        previous,
        DASK_CONDITION,
        observed.scheduler_ready,
        reason,
        &message,
        next.observed_generation,
        now,
    ));
}

/// The Event worth publishing when the `Dask` condition's reason changed (appeared or became
/// another): Warning for `DaskWorkersCapped`, Normal otherwise. Its disappearance (the
/// workspace stopped or dropped Dask) has the workspace's own Event.
pub fn dask_transition(
    previous: Option<&WorkspaceStatus>,
    next: &WorkspaceStatus,
) -> Option<status::Transition> {
    let find = |s: &WorkspaceStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DASK_CONDITION)
            .cloned()
    };
    let now = find(next)?;
    let before = previous.and_then(find);
    if before.is_some_and(|b| b.reason == now.reason) {
        return None;
    }
    Some(status::Transition {
        severity: if now.reason == reason::DASK_WORKERS_CAPPED {
            status::Severity::Warning
        } else {
            status::Severity::Normal
        },
        reason: now.reason,
        note: now.message,
    })
}

impl Caches {
    /// The pods of `ws`'s Dask cluster (scheduler and workers), which carry its labels.
    pub fn dask_pods_of(&self, ws: &Workspace) -> Vec<Pod> {
        let prefix = dask_pod_prefix(ws);
        let namespace = ws.namespace().unwrap_or_default();
        self.pods
            .of_workspace(&namespace, &names::label_value(&ws.name_any()))
            .into_iter()
            .filter(|p| p.name_any().starts_with(&prefix))
            .collect()
    }
}

/// Drops a watch's 404s (the CRD is not installed; the watch retries with its back-off).
pub fn without_not_found<K, S>(
    events: S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    events.filter(|item| futures::future::ready(!matches!(item, Err(e) if is_not_found(e))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn not_found() -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            kube::core::Status::failure(
                "the server could not find the requested resource",
                "NotFound",
            )
            .with_code(404),
        )))
    }

    #[tokio::test]
    async fn a_404_marks_the_crd_missing_unseen_and_a_list_marks_it_present() {
        let crd = Arc::new(DaskCrd::default());
        assert_eq!(crd.state(), CrdState::Unknown);
        let flips = Arc::new(Mutex::new(Vec::new()));
        let seen = flips.clone();
        let events = futures::stream::iter(vec![
            Err(not_found()),
            Err(not_found()),
            Ok(watcher::Event::<DaskCluster>::Init),
            Ok(watcher::Event::InitDone),
        ]);
        let out: Vec<_> = track_crd(events, crd.clone(), move |s| seen.lock().unwrap().push(s))
            .collect()
            .await;
        assert_eq!(out.len(), 2, "the 404s go no further");
        assert!(out.iter().all(Result::is_ok));
        assert_eq!(
            *flips.lock().unwrap(),
            [CrdState::Missing, CrdState::Present],
            "one call per flip"
        );
        assert_eq!(crd.state(), CrdState::Present);
        // Other errors pass on untouched.
        let other = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            kube::core::Status::failure("boom", "InternalError").with_code(500),
        )));
        assert!(!is_not_found(&other));
    }

    #[test]
    fn workers_ready_count_ready_worker_pods_of_the_cluster_only() {
        let pod = |name: &str, ready: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready}]},
            }))
            .unwrap()
        };
        let pods = [
            pod("ws-alice-dask-scheduler-5d9c7-abcde", "False"),
            pod("ws-alice-dask-default-worker-01234-6f8b9-aaaaa", "True"),
            pod("ws-alice-dask-default-worker-56789-6f8b9-bbbbb", "False"),
            pod("ws-alice-dask-default-worker-abcde-6f8b9-ccccc", "True"),
            pod("ws-alice", "True"),
        ];
        assert_eq!(
            observe_pods("ws-alice-dask", &pods),
            DaskObserved {
                scheduler_ready: false,
                workers_ready: 2
            }
        );
        let mut up = pods.to_vec();
        up[0] = pod("ws-alice-dask-scheduler-5d9c7-abcde", "True");
        assert!(observe_pods("ws-alice-dask", &up).scheduler_ready);
    }
}
