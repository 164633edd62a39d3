//! The Workspace Controller: the watches that feed the caches, and what triggers a
//! reconciliation.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota,
    Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::utils::Backoff;
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::apply::sweep_orphaned_data_volumes;
use super::dereference::credential_secret_names;
use super::predicates::{
    child_trigger, csi_driver_trigger, existence_trigger, input_trigger, mark_deleted, pod_trigger,
    service_trigger, workspace_trigger,
};
use super::{error_policy, reconcile_workspace};
use crate::api::v1alpha1::{DataSource, NodePool, PoolPurpose, Workspace, WorkspaceProfile};
use crate::config::NamespaceMode;
use crate::operator::workspace::WORKSPACE_LABEL;
use crate::operator::workspace::build::WORKSPACE_NAMESPACE_LABEL;
use crate::operator::workspace::cache::{
    CREDENTIALS_SELECTOR, Cached, CompactWriter, Compactable, Expectations, cached_cluster,
};
use crate::operator::workspace::dask::{DaskAutoscaler, DaskCluster};
use crate::operator::{Context, InputChange, wait_for};
use crate::policy::admission::{Claim, key_of, observed_claim, observed_dask_claim};
use crate::policy::workspace::validate::dask_key;

/// Label selector of every object the operator creates.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=atelier-operator";

/// The Workspaces whose `spec.profile` is `profile`.
pub fn workspaces_using_profile(
    workspaces: &[Arc<Workspace>],
    profile: &str,
) -> Vec<ObjectRef<Workspace>> {
    workspaces
        .iter()
        .filter(|ws| ws.spec.profile == profile)
        .map(|ws| ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// The Workspaces whose `spec.dataSources` names `source`.
pub fn workspaces_naming_data_source(
    workspaces: &[Arc<Workspace>],
    source: &str,
) -> Vec<ObjectRef<Workspace>> {
    workspaces
        .iter()
        .filter(|ws| ws.spec.data_sources.iter().any(|s| s == source))
        .map(|ws| ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// The Workspaces naming a DataSource mounted with CSI driver `driver` (a CSIDriver that
/// appears, goes or changes its modes). The sources are few; the Workspaces are scanned only
/// when some source uses the driver.
pub fn workspaces_using_csi_driver(
    workspaces: &[Arc<Workspace>],
    sources: &[Arc<DataSource>],
    driver: &str,
) -> Vec<ObjectRef<Workspace>> {
    let using: HashSet<String> = sources
        .iter()
        .filter(|s| s.spec.csi.as_ref().is_some_and(|c| c.driver == driver))
        .map(|s| s.name_any())
        .collect();
    naming_any(workspaces, None, &using)
}

/// The Workspaces of `namespace` naming a DataSource that hands out credentials Secret
/// `secret` (a labelled Secret that appears or goes). An unrelated Secret maps to nothing
/// without scanning the Workspaces.
pub fn workspaces_using_secret(
    workspaces: &[Arc<Workspace>],
    sources: &[Arc<DataSource>],
    namespace: &str,
    secret: &str,
) -> Vec<ObjectRef<Workspace>> {
    let using: HashSet<String> = sources
        .iter()
        .filter(|s| credential_secret_names(&s.spec).contains(&secret))
        .map(|s| s.name_any())
        .collect();
    naming_any(workspaces, Some(namespace), &using)
}

/// The Workspaces (of `namespace`, if given) naming one of `sources`.
fn naming_any(
    workspaces: &[Arc<Workspace>],
    namespace: Option<&str>,
    sources: &HashSet<String>,
) -> Vec<ObjectRef<Workspace>> {
    if sources.is_empty() {
        return Vec::new();
    }
    workspaces
        .iter()
        .filter(|ws| namespace.is_none_or(|ns| ws.metadata.namespace.as_deref() == Some(ns)))
        .filter(|ws| ws.spec.data_sources.iter().any(|s| sources.contains(s)))
        .map(|ws| ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// The Workspace of a data source's PersistentVolume (cluster-scoped): by its
/// [`WORKSPACE_LABEL`] and [`WORKSPACE_NAMESPACE_LABEL`].
fn volume_workspace(volume: &PersistentVolume) -> Option<ObjectRef<Workspace>> {
    let labels = volume.labels();
    let name = labels.get(WORKSPACE_LABEL)?;
    let namespace = labels.get(WORKSPACE_NAMESPACE_LABEL)?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The Workspace that owns a child (its controller owner reference of kind Workspace).
fn owning_workspace<K: ResourceExt>(child: &K) -> Option<ObjectRef<Workspace>> {
    let owner = child
        .owner_references()
        .iter()
        .find(|o| o.kind == "Workspace" && o.api_version.starts_with("atelier.dev/"))?;
    Some(ObjectRef::new(&owner.name).within(&child.namespace()?))
}

/// The Workspace a child belongs to, by its [`WORKSPACE_LABEL`] (children without an owner
/// reference, like a kept home volume, still trigger their Workspace).
fn labelled_workspace<K: ResourceExt>(child: &K) -> Option<ObjectRef<Workspace>> {
    let name = child.labels().get(WORKSPACE_LABEL)?;
    let namespace = child.namespace()?;
    Some(ObjectRef::new(name).within(&namespace))
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Controller's own backoff of its trigger streams: none. kube-runtime wraps all the trigger
/// streams of a Controller together in one `StreamBackoff` (`kube-runtime/src/controller/mod.rs`,
/// `Controller::run`: `StreamBackoff::new(self.trigger_selector, self.trigger_backoff)`), so the
/// error of one watch (a `410 Expired` that makes it list again) pauses every other watch for
/// the backoff. Those, not read meanwhile, fall behind the API server's watch window and expire
/// in turn, each error lengthening the shared pause: in `bench/operator` with a short watch
/// window, no watch listed again for minutes and no Workspace became Running. Each watch backs off
/// on its own instead (`default_backoff()` on every watcher below), as client-go's informers do.
#[derive(Clone, Copy, Debug, Default)]
pub struct EachWatchBacksOffAlone;

impl Iterator for EachWatchBacksOffAlone {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for EachWatchBacksOffAlone {
    fn reset(&mut self) {}
}

/// After a shutdown request, how long reconciliations may take to finish before the controller
/// is dropped (kube's graceful shutdown also waits forever for a store that never synced, e.g.
/// when the CRDs are missing).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// A watch of the operator's objects of `api` ([`MANAGED_BY_SELECTOR`]) feeding `writer`,
/// filtered by `predicate`: the trigger stream of a child kind (kube-rs
/// `Controller::owns_stream` docs: `watcher → reflect → touched_objects → predicate_filter`).
fn child_stream<K>(
    api: Api<K>,
    writer: CompactWriter<K>,
    expected: Arc<Expectations>,
    predicate: fn(&K) -> Option<u64>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Compactable + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    child_triggers(
        watcher(api, watcher::Config::default().labels(MANAGED_BY_SELECTOR)).default_backoff(),
        writer,
        expected,
        predicate,
    )
}

/// The pipeline of [`child_stream`] on any stream of watch events: each event is written to the
/// compact store (settling the [`Expectations`] it meets) first; its object passes on only when
/// `predicate` says it may change its Workspace's outcome ([`CompactWriter::apply`]: a new
/// trigger hash, or a deletion).
pub fn child_triggers<K, S>(
    events: S,
    mut writer: CompactWriter<K>,
    expected: Arc<Expectations>,
    predicate: fn(&K) -> Option<u64>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Compactable + std::fmt::Debug + Send + Sync + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    events
        .map_ok(move |event| {
            let triggers = writer.apply(&event, predicate);
            expected.observe(&event);
            let object = match event {
                watcher::Event::Apply(object)
                | watcher::Event::InitApply(object)
                | watcher::Event::Delete(object)
                    if triggers =>
                {
                    Some(Ok(object))
                }
                _ => None,
            };
            futures::stream::iter(object)
        })
        .try_flatten()
}

/// A watch of `api` feeding `writer`; a change of spec or a deletion triggers (the inputs:
/// profiles, pools, data sources).
fn input_stream<K>(
    api: Api<K>,
    writer: Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Cached<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(K::keep)
        .reflect(writer)
        .map_ok(mark_deleted)
        .touched_objects()
        .predicate_filter(input_trigger, PredicateConfig::default())
}

/// The mapper of a watch that only feeds a cache: no Workspace to reconcile.
fn feeds_the_cache_only<K>(_: K) -> std::iter::Empty<ObjectRef<Workspace>> {
    std::iter::empty()
}

/// What `ws` holds on its pool as the caches show it: its observed claim (see
/// [`observed_claim`]), estimated with its profile's defaults and its pool's purpose.
pub fn cached_claim(ctx: &Context, ws: &Workspace) -> Option<Claim> {
    let profile = cached_cluster(&ctx.caches.profiles, &ws.spec.profile);
    let defaults = profile
        .as_ref()
        .and_then(|p| p.spec.default_resources.as_ref());
    observed_claim(ws, defaults, |pool| {
        cached_cluster(&ctx.caches.pools, pool).is_some_and(|p| p.spec.purpose == PoolPurpose::Gpu)
    })
}

/// What `ws`'s Dask cluster holds on its workers' pool as the caches show it
/// ([`observed_dask_claim`], with its profile's `dask.defaults.workerResources`).
pub fn cached_dask_claim(ctx: &Context, ws: &Workspace) -> Option<Claim> {
    let profile = cached_cluster(&ctx.caches.profiles, &ws.spec.profile);
    let defaults = profile
        .as_ref()
        .and_then(|p| p.spec.dask.as_ref())
        .and_then(|d| d.defaults.as_ref())
        .and_then(|d| d.worker_resources.as_ref());
    observed_dask_claim(ws, defaults)
}

/// Feeds the usage index of `ctx` from a Workspace watch event: each Workspace's observed
/// claim ([`cached_claim`]), and after a relist (`Init` … `InitDone`, the keys gathered in
/// `relisted`) the vanished ones dropped.
pub fn observe_usage(
    ctx: &Context,
    event: &watcher::Event<Workspace>,
    relisted: &mut Option<HashSet<String>>,
) {
    match event {
        watcher::Event::Apply(ws) => {
            let claim = cached_claim(ctx, ws);
            ctx.usage().observe(&key_of(ws), claim);
            let dask = cached_dask_claim(ctx, ws);
            ctx.usage().observe(&dask_key(&key_of(ws)), dask);
        }
        watcher::Event::Delete(ws) => {
            ctx.usage().remove(&key_of(ws));
            ctx.usage().remove(&dask_key(&key_of(ws)));
        }
        watcher::Event::Init => *relisted = Some(HashSet::new()),
        watcher::Event::InitApply(ws) => {
            let key = key_of(ws);
            let claim = cached_claim(ctx, ws);
            ctx.usage().observe(&key, claim);
            let dask = cached_dask_claim(ctx, ws);
            ctx.usage().observe(&dask_key(&key), dask);
            relisted.get_or_insert_default().insert(dask_key(&key));
            relisted.get_or_insert_default().insert(key);
        }
        watcher::Event::InitDone => {
            let keep = relisted.take().unwrap_or_default();
            // The BatchJobs' claims are their own watch's (`operator::batchjob`).
            ctx.usage()
                .retain_within(|key| !crate::policy::batch::is_job_key(key), &keep);
        }
    }
    super::requeue_freed(ctx);
}

/// Estimates every cached Workspace's claim again. The Workspace watch may have been listed
/// before the profiles and pools were: once every cache is synced, the first reconciliation
/// calls this (O(Workspaces), once), so that admission never counts estimates made without the
/// profiles' defaults.
pub fn refresh_usage(ctx: &Context) {
    let claims: Vec<(String, Option<Claim>)> = ctx
        .caches
        .workspaces
        .state()
        .iter()
        .flat_map(|ws| {
            [
                (key_of(ws), cached_claim(ctx, ws)),
                (dask_key(&key_of(ws)), cached_dask_claim(ctx, ws)),
            ]
        })
        .collect();
    let mut usage = ctx.usage();
    for (key, claim) in claims {
        usage.observe(&key, claim);
    }
}

/// How often the orphan sweep looks for data volumes whose Workspace is gone
/// ([`sweep_orphans_periodically`]).
pub const ORPHAN_SWEEP_PERIOD: Duration = Duration::from_secs(300);
/// How often the orphan sweep checks whether the stores it reads are listed, until they are.
pub const ORPHAN_SWEEP_READY_POLL: Duration = Duration::from_secs(1);

/// Deletes, every [`ORPHAN_SWEEP_PERIOD`] until `shutdown`, the data sources' PersistentVolumes
/// whose Workspace is gone ([`sweep_orphaned_data_volumes`]; a Workspace whose finalizer was
/// removed by hand never had its cleanup), counting them in the metrics. It runs with the
/// controller, so only the Lease holder sweeps; the first pass waits until the Workspaces,
/// volumes and claims are listed ([`Caches::ready_to_sweep`](crate::operator::workspace::cache::Caches::ready_to_sweep)),
/// polling every [`ORPHAN_SWEEP_READY_POLL`] (never awaiting the Workspaces' store, whose
/// readiness wakes only one waiter: the Controller's). A failed pass is logged and tried
/// again at the next period. Costs O(volumes + Workspaces) in memory per pass and a DELETE
/// per orphan; nothing else. (Stackable's `ClusterResources::delete_orphaned_resources` and
/// kube-controller-manager's garbage collector delete what lost its owner the same way; a
/// cluster-scoped volume has no namespaced owner to be collected with.)
pub async fn sweep_orphans_periodically(
    ctx: Arc<Context>,
    scope: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = if ctx.caches.ready_to_sweep() {
            match sweep_orphaned_data_volumes(&ctx.client, &ctx.caches, scope.as_deref()).await {
                Ok(deleted) => ctx.metrics.orphaned_volumes_deleted(deleted.len()),
                Err(error) => warn!(%error, "the orphan sweep of data volumes failed"),
            }
            ORPHAN_SWEEP_PERIOD
        } else {
            ORPHAN_SWEEP_READY_POLL
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wait_for(shutdown.clone()) => return,
        }
    }
}

/// Adds the Dask watches to the Workspace controller: the DaskClusters (owned; their phase and
/// applied hash; the CRD's presence, see [`DaskCrd`]) and the DaskAutoscalers (owned; applied
/// hash), both limited to the operator's objects (managed-by label), in `namespace` or all.
fn watch_dask(
    controller: kube::runtime::Controller<Workspace>,
    ctx: &Arc<Context>,
    clusters: CompactWriter<DaskCluster>,
    autoscalers: CompactWriter<DaskAutoscaler>,
    namespace: Option<&str>,
) -> kube::runtime::Controller<Workspace> {
    use kube::runtime::WatchStreamExt;
    let config = || watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let (cluster_api, autoscaler_api) = match namespace {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let weak = Arc::downgrade(ctx);
    let cluster_events = super::dask::track_crd(
        watcher(cluster_api, config()).default_backoff(),
        ctx.caches.dask_crd.clone(),
        move |_| {
            // A flip either way changes the outcome of the Workspaces asking for Dask.
            if let Some(ctx) = weak.upgrade() {
                for workspace in
                    super::dask::workspaces_asking_for_dask(&ctx.caches.workspaces.state())
                {
                    ctx.requeue(workspace);
                }
            }
        },
    );
    let expected = ctx.caches.expected.clone();
    controller
        .owns_stream(child_triggers(
            cluster_events,
            clusters,
            expected.clone(),
            super::dask::dask_cluster_trigger,
        ))
        .owns_stream(child_triggers(
            super::dask::without_not_found(watcher(autoscaler_api, config()).default_backoff()),
            autoscalers,
            expected,
            super::predicates::child_trigger,
        ))
}

/// Runs the Workspace controller until `shutdown` turns `true`.
///
/// It feeds the caches of `ctx` ([`crate::operator::workspace::cache::Caches`]): the Workspaces (of `watch_namespace`, or all);
/// their Pods, Services, Secrets, NetworkPolicies, home and data volume claims and catalogue
/// ConfigMaps (limited to [`MANAGED_BY_SELECTOR`]); the data sources' PersistentVolumes
/// (cluster-wide, managed-by label); every WorkspaceProfile, NodePool, DataSource and
/// CSIDriver; the metadata of the credentials Secrets ([`CREDENTIALS_SELECTOR`]); in per-user
/// mode the users' Namespaces, ResourceQuotas and LimitRanges (managed-by label too).
///
/// Triggers: a Workspace whose spec, groups, finalizers or deletion changed; a child whose
/// [`predicates`](super::predicates) hash changed (owner references; a home volume by label, as
/// a kept volume has no owner; a data PersistentVolume by its Workspace and namespace labels);
/// a WorkspaceProfile → the Workspaces using it; any NodePool → every Workspace (pools are few
/// and rarely change); a DataSource → the Workspaces naming it; a CSIDriver that appears, goes
/// or changes its modes → the Workspaces naming a source mounted with it; a credentials Secret
/// that appears or goes → the Workspaces of its namespace naming a source that hands it out
/// (an unrelated Secret triggers nothing). The per-user namespace objects only feed their
/// caches. Nothing else fans out to every Workspace. Each profile, pool and data source change
/// is also announced ([`InputChange`]) to the BatchJob controller, which reads the same caches.
pub async fn run_controller(
    ctx: Arc<Context>,
    watch_namespace: Option<String>,
    concurrency: u16,
    shutdown: watch::Receiver<bool>,
) {
    let Some(writers) = ctx.take_cache_writers() else {
        warn!("the caches of this context are already fed by another controller");
        return;
    };
    let client = ctx.client.clone();
    let ns = watch_namespace.as_deref();
    let caches = ctx.caches.clone();

    let usage_ctx = ctx.clone();
    let mut relisted = None;
    let workspaces = watcher(
        scoped::<Workspace>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(Workspace::keep)
    .reflect(writers.workspaces)
    .inspect_ok(move |event| {
        if matches!(event, watcher::Event::InitDone) {
            usage_ctx.caches.mark_workspaces_listed();
        }
        usage_ctx.caches.expected.observe_workspace(event);
        observe_usage(&usage_ctx, event, &mut relisted);
    })
    .map_ok(mark_deleted)
    .applied_objects()
    .predicate_filter(workspace_trigger, PredicateConfig::default());

    let mut controller = Controller::for_stream(workspaces, caches.workspaces.clone())
        .with_config(controller::Config::default().concurrency(concurrency))
        .trigger_backoff(EachWatchBacksOffAlone)
        // By owner, else by label: the pods of a workspace's Dask cluster are owned by the
        // dask-kubernetes operator's ReplicaSets but carry the Workspace's label.
        .watches_stream(
            child_stream(
                scoped::<Pod>(&client, ns),
                writers.pods,
                caches.expected.clone(),
                pod_trigger,
            ),
            |pod| owning_workspace(&pod).or_else(|| labelled_workspace(&pod)),
        )
        .owns_stream(child_stream(
            scoped::<Service>(&client, ns),
            writers.services,
            caches.expected.clone(),
            service_trigger,
        ))
        .owns_stream(child_stream(
            scoped::<Secret>(&client, ns),
            writers.secrets,
            caches.expected.clone(),
            child_trigger,
        ))
        .owns_stream(child_stream(
            scoped::<NetworkPolicy>(&client, ns),
            writers.network_policies,
            caches.expected.clone(),
            child_trigger,
        ))
        .watches_stream(
            child_stream(
                scoped::<PersistentVolumeClaim>(&client, ns),
                writers.pvcs,
                caches.expected.clone(),
                child_trigger,
            ),
            |pvc| labelled_workspace(&pvc),
        );
    // The data sources (issue 11): the catalogue ConfigMaps (owned), their PersistentVolumes
    // (cluster-scoped: by labels), the CSIDrivers and the credentials Secrets' metadata (to the
    // Workspaces naming a source that uses them).
    let (by_driver, by_secret) = (
        (caches.workspaces.clone(), caches.data_sources.clone()),
        (caches.workspaces.clone(), caches.data_sources.clone()),
    );
    controller = controller
        .owns_stream(child_stream(
            scoped::<ConfigMap>(&client, ns),
            writers.config_maps,
            caches.expected.clone(),
            child_trigger,
        ))
        .watches_stream(
            child_stream(
                Api::<PersistentVolume>::all(client.clone()),
                writers.persistent_volumes,
                caches.expected.clone(),
                child_trigger,
            ),
            |volume| volume_workspace(&volume),
        )
        .watches_stream(
            child_triggers(
                watcher(
                    Api::<CSIDriver>::all(client.clone()),
                    watcher::Config::default(),
                )
                .default_backoff(),
                writers.csi_drivers,
                caches.expected.clone(),
                csi_driver_trigger,
            ),
            move |driver| {
                workspaces_using_csi_driver(
                    &by_driver.0.state(),
                    &by_driver.1.state(),
                    &driver.name_any(),
                )
            },
        )
        .watches_stream(
            child_triggers(
                // Metadata only (`Api<PartialObjectMeta<_>>` asks for PartialObjectMetadata):
                // the Secrets' data never reaches the operator.
                watcher(
                    scoped::<PartialObjectMeta<Secret>>(&client, ns),
                    watcher::Config::default().labels(CREDENTIALS_SELECTOR),
                )
                .default_backoff(),
                writers.credentials,
                caches.expected.clone(),
                existence_trigger::<PartialObjectMeta<Secret>>,
            ),
            move |secret| {
                workspaces_using_secret(
                    &by_secret.0.state(),
                    &by_secret.1.state(),
                    &secret.namespace().unwrap_or_default(),
                    &secret.name_any(),
                )
            },
        );
    controller = watch_dask(
        controller,
        &ctx,
        writers.dask_clusters,
        writers.dask_autoscalers,
        ns,
    );
    if let Some(requeued) = ctx.take_requeued() {
        controller = controller.reconcile_on(requeued);
    }
    let (by_profile, by_pool, by_source) = (
        caches.workspaces.clone(),
        caches.workspaces.clone(),
        caches.workspaces.clone(),
    );
    // Each input change is told to the BatchJob controller too (its refused jobs).
    let announce = |ctx: &Arc<Context>| {
        let weak = Arc::downgrade(ctx);
        move |change: InputChange| {
            if let Some(ctx) = weak.upgrade() {
                ctx.announce(change);
            }
        }
    };
    let (profile_changed, pool_changed, source_changed) =
        (announce(&ctx), announce(&ctx), announce(&ctx));
    controller = controller
        .watches_stream(
            input_stream(
                Api::<WorkspaceProfile>::all(client.clone()),
                writers.profiles,
            ),
            move |profile| {
                profile_changed(InputChange::Profile(profile.name_any()));
                workspaces_using_profile(&by_profile.state(), &profile.name_any())
            },
        )
        .watches_stream(
            input_stream(Api::<NodePool>::all(client.clone()), writers.pools),
            move |pool| {
                pool_changed(InputChange::Pool(pool.name_any()));
                by_pool
                    .state()
                    .iter()
                    .map(|ws| ObjectRef::from_obj(ws.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(
            input_stream(Api::<DataSource>::all(client.clone()), writers.data_sources),
            move |source| {
                source_changed(InputChange::DataSource(source.name_any()));
                workspaces_naming_data_source(&by_source.state(), &source.name_any())
            },
        );
    if let NamespaceMode::PerUser { .. } = ctx.config.namespace_mode {
        controller = controller
            .watches_stream(
                child_stream(
                    Api::<Namespace>::all(client.clone()),
                    writers.namespaces,
                    caches.expected.clone(),
                    child_trigger,
                ),
                feeds_the_cache_only,
            )
            .watches_stream(
                child_stream(
                    scoped::<ResourceQuota>(&client, ns),
                    writers.resource_quotas,
                    caches.expected.clone(),
                    child_trigger,
                ),
                feeds_the_cache_only,
            )
            .watches_stream(
                child_stream(
                    scoped::<LimitRange>(&client, ns),
                    writers.limit_ranges,
                    caches.expected.clone(),
                    child_trigger,
                ),
                feeds_the_cache_only,
            );
    }

    info!(
        namespace = ns.unwrap_or("<all>"),
        "starting the Workspace controller"
    );
    let sweep_ctx = ctx.clone();
    let running = controller
        .graceful_shutdown_on(wait_for(shutdown.clone()))
        .run(reconcile_workspace, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => debug!(%object, ?action, "reconciled"),
                Err(error) => warn!(%error, "reconciliation failed"),
            }
        });
    let sweeping = sweep_orphans_periodically(sweep_ctx, watch_namespace.clone(), shutdown.clone());
    let running = async move {
        tokio::pin!(running);
        tokio::select! {
            () = &mut running => {}
            () = sweeping => running.await,
        }
    };
    let forced = async {
        wait_for(shutdown).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = running => info!("the Workspace controller stopped"),
        () = forced => warn!(grace = ?SHUTDOWN_GRACE, "the Workspace controller did not stop in time; dropping it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1alpha1::WorkspaceSpec;
    use crate::config::OperatorConfig;
    use crate::operator::workspace::fixtures::{SCENARIO_TIMEOUT, test_context};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use std::collections::{BTreeMap, BTreeSet};

    fn ws(ns: &str, name: &str, profile: &str, sources: &[&str]) -> Arc<Workspace> {
        let mut w = Workspace::new(
            name,
            WorkspaceSpec {
                user: "alice".into(),
                server_name: String::new(),
                profile: profile.into(),
                kind: None,
                image: None,
                resources: None,
                node_pool: None,
                data_sources: sources.iter().map(|s| (*s).to_owned()).collect(),
                env: BTreeMap::new(),
                home_size: None,
                desired_state: Default::default(),
                idle_timeout_seconds: None,
                dask: None,
            },
        );
        w.metadata.namespace = Some(ns.into());
        Arc::new(w)
    }

    #[test]
    fn profile_and_data_source_changes_map_to_the_workspaces_using_them() {
        let all = vec![
            ws("a", "one", "jupyter", &["era5"]),
            ws("b", "two", "rstudio", &["era5", "sentinel"]),
            ws("b", "three", "jupyter", &[]),
        ];
        assert_eq!(
            workspaces_using_profile(&all, "jupyter"),
            vec![
                ObjectRef::new("one").within("a"),
                ObjectRef::new("three").within("b")
            ]
        );
        assert_eq!(workspaces_using_profile(&all, "qgis"), vec![]);
        assert_eq!(
            workspaces_naming_data_source(&all, "sentinel"),
            vec![ObjectRef::new("two").within("b")]
        );
        assert_eq!(workspaces_naming_data_source(&all, "era5").len(), 2);
    }

    /// Answers every LIST with the `items` of its path (none for the others) and holds every
    /// WATCH open; fires `shutdown` once each of `expected` (path, labelSelector) was listed and
    /// then watched (so every store is synced). Returns what was listed and what was watched.
    async fn serve_lists(
        handle: tower_test::mock::Handle<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >,
        expected: BTreeSet<(String, String)>,
        shutdown: watch::Sender<bool>,
        items: BTreeMap<&'static str, Vec<serde_json::Value>>,
    ) -> (BTreeSet<(String, String)>, BTreeSet<(String, String)>) {
        let mut handle = handle;
        let mut listed = BTreeSet::new();
        // `PartialObjectMetadataList` for a list, `PartialObjectMetadata` for a watch.
        let metadata_only = "application/json;as=PartialObjectMetadata";
        let mut watched = BTreeSet::new();
        let mut watches = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(request.method(), http::Method::GET, "{}", request.uri());
            crate::operator::workspace::fixtures::assert_granted(&request);
            let query: BTreeMap<String, String> = request
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace("%3D", "=")))
                .collect();
            let key = (
                request.uri().path().to_owned(),
                query.get("labelSelector").cloned().unwrap_or_default(),
            );
            // The credentials Secrets are read as metadata only: their data never reaches the
            // operator; every other kind whole.
            let accept = request
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .unwrap_or_default();
            assert_eq!(
                accept.contains(metadata_only),
                key.1 == CREDENTIALS_SELECTOR,
                "{key:?}: Accept {accept}"
            );
            if query.get("watch").map(String::as_str) == Some("true") {
                watched.insert(key);
                watches.push(send);
                if expected.is_subset(&watched) {
                    let _ = shutdown.send(true);
                }
                continue;
            }
            let listed_items = items.get(key.0.as_str()).cloned().unwrap_or_default();
            listed.insert(key);
            let body = serde_json::json!({
                "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
                "items": listed_items,
            });
            send.send_response(
                http::Response::builder()
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&body).expect("json"),
                    ))
                    .expect("a response"),
            );
        }
        (listed, watched)
    }

    /// Runs the controller of a context with `config` on namespace `team` until it listed and
    /// watched each of `expected` (path, labelSelector), then shuts it down; asserts it listed
    /// and watched exactly those.
    async fn lists_and_watches_exactly(config: OperatorConfig, expected: &[(&str, &str)]) {
        let (ctx, verifier) = test_context(config);
        let expected: BTreeSet<(String, String)> = expected
            .iter()
            .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
            .collect();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_lists(
            verifier.into_handle(),
            expected.clone(),
            tx,
            BTreeMap::new(),
        ));
        let controller = run_controller(ctx, Some("team".into()), 2, rx);
        tokio::time::timeout(SCENARIO_TIMEOUT, controller)
            .await
            .expect("the controller lists and watches every kind, then shuts down gracefully");
        // The controller dropped its client: the server sees the end of requests.
        let (listed, watched) = tokio::time::timeout(SCENARIO_TIMEOUT, server)
            .await
            .expect("the client is gone")
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        assert_eq!(listed, expected);
        assert_eq!(watched, expected);
    }

    const SHARED: [(&str, &str); 15] = [
        ("/apis/atelier.dev/v1alpha1/namespaces/team/workspaces", ""),
        ("/api/v1/namespaces/team/pods", MANAGED_BY_SELECTOR),
        ("/api/v1/namespaces/team/services", MANAGED_BY_SELECTOR),
        ("/api/v1/namespaces/team/secrets", MANAGED_BY_SELECTOR),
        (
            "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies",
            MANAGED_BY_SELECTOR,
        ),
        (
            "/api/v1/namespaces/team/persistentvolumeclaims",
            MANAGED_BY_SELECTOR,
        ),
        ("/apis/atelier.dev/v1alpha1/workspaceprofiles", ""),
        ("/apis/atelier.dev/v1alpha1/nodepools", ""),
        ("/apis/atelier.dev/v1alpha1/datasources", ""),
        ("/api/v1/namespaces/team/configmaps", MANAGED_BY_SELECTOR),
        ("/api/v1/persistentvolumes", MANAGED_BY_SELECTOR),
        ("/apis/storage.k8s.io/v1/csidrivers", ""),
        ("/api/v1/namespaces/team/secrets", CREDENTIALS_SELECTOR),
        (
            "/apis/kubernetes.dask.org/v1/namespaces/team/daskclusters",
            MANAGED_BY_SELECTOR,
        ),
        (
            "/apis/kubernetes.dask.org/v1/namespaces/team/daskautoscalers",
            MANAGED_BY_SELECTOR,
        ),
    ];

    /// The profiles, pools and data sources the controller lists are announced to the BatchJob
    /// controller (which reads the same caches but watches none of them).
    #[tokio::test]
    async fn the_inputs_it_watches_are_announced_as_input_changes() {
        use crate::operator::workspace::fixtures::{data_source, pool, profile};
        let (ctx, verifier) = test_context(OperatorConfig::default());
        let mut changes = ctx.input_changes();
        let items = BTreeMap::from([
            (
                "/apis/atelier.dev/v1alpha1/workspaceprofiles",
                vec![serde_json::to_value(profile()).expect("json")],
            ),
            (
                "/apis/atelier.dev/v1alpha1/nodepools",
                vec![serde_json::to_value(pool()).expect("json")],
            ),
            (
                "/apis/atelier.dev/v1alpha1/datasources",
                vec![serde_json::to_value(data_source()).expect("json")],
            ),
        ]);
        // Never complete: the test stops the controller itself.
        let never = BTreeSet::from([("/never".to_owned(), String::new())]);
        let (unused, _) = watch::channel(false);
        let server = tokio::spawn(serve_lists(verifier.into_handle(), never, unused, items));
        let (stop, stopped) = watch::channel(false);
        let controller = tokio::spawn(run_controller(ctx, Some("team".into()), 2, stopped));
        let mut announced = BTreeSet::new();
        while announced.len() < 3 {
            let change = tokio::time::timeout(SCENARIO_TIMEOUT, changes.recv())
                .await
                .expect("announced in time")
                .expect("the controller's context is alive");
            announced.insert(format!("{change:?}"));
        }
        assert_eq!(
            announced,
            BTreeSet::from([
                r#"DataSource("era5")"#.to_owned(),
                r#"Pool("interactive")"#.to_owned(),
                r#"Profile("jupyter")"#.to_owned(),
            ])
        );
        let _ = stop.send(true);
        tokio::time::timeout(SCENARIO_TIMEOUT, controller)
            .await
            .expect("the controller stops")
            .expect("no panic");
        tokio::time::timeout(SCENARIO_TIMEOUT, server)
            .await
            .expect("the client is gone")
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }

    #[tokio::test]
    async fn controller_watches_workspaces_children_and_inputs_then_shuts_down() {
        lists_and_watches_exactly(OperatorConfig::default(), &SHARED).await;
    }

    #[tokio::test]
    async fn in_per_user_mode_the_users_namespaces_quotas_and_limits_are_cached_too() {
        let config = OperatorConfig {
            namespace_mode: NamespaceMode::PerUser {
                prefix: "atelier-u-".into(),
            },
            ..OperatorConfig::default()
        };
        let mut expected = SHARED.to_vec();
        expected.extend([
            ("/api/v1/namespaces", MANAGED_BY_SELECTOR),
            (
                "/api/v1/namespaces/team/resourcequotas",
                MANAGED_BY_SELECTOR,
            ),
            ("/api/v1/namespaces/team/limitranges", MANAGED_BY_SELECTOR),
        ]);
        lists_and_watches_exactly(config, &expected).await;
    }

    #[tokio::test]
    async fn the_usage_index_follows_the_workspace_watch_with_cached_profile_defaults() {
        use crate::operator::workspace::fixtures::{Cluster, pool, profile, seed, workspace};
        let (ctx, _verifier) = test_context(OperatorConfig::default());
        let mut jupyter = profile();
        jupyter.spec.default_resources = Some(crate::api::v1alpha1::ResourceRequest {
            cpu: Some("3".into()),
            ..Default::default()
        });
        let _writers = seed(
            &ctx,
            Cluster {
                profiles: vec![jupyter],
                pools: vec![pool()],
                ..Cluster::default()
            },
        );
        let mut running = workspace();
        running.status = Some(crate::api::v1alpha1::WorkspaceStatus {
            node_pool: Some("interactive".into()),
            ..Default::default()
        });
        let mut relisted = None;
        observe_usage(&ctx, &watcher::Event::Apply(running.clone()), &mut relisted);
        let usage = ctx.usage().user_usage("interactive", "alice");
        assert_eq!(
            (usage.workspaces, usage.cpu_millis),
            (1, 3000),
            "the profile's default CPU"
        );
        // A relist without it: gone.
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            observe_usage(&ctx, &event, &mut relisted);
        }
        assert!(ctx.usage().is_empty());
        observe_usage(&ctx, &watcher::Event::Apply(running.clone()), &mut relisted);
        observe_usage(&ctx, &watcher::Event::Delete(running), &mut relisted);
        assert!(ctx.usage().is_empty());
    }

    #[tokio::test]
    async fn estimates_made_before_the_profiles_were_cached_are_made_again() {
        use crate::operator::workspace::fixtures::{list_into, pool, profile, workspace};
        let (ctx, _verifier) = test_context(OperatorConfig::default());
        let mut w = ctx.take_cache_writers().expect("writers");
        let mut running = workspace();
        running.status = Some(crate::api::v1alpha1::WorkspaceStatus {
            node_pool: Some("interactive".into()),
            ..Default::default()
        });
        // The Workspaces are listed first: no profile cached, the built-in 1 CPU.
        list_into(&mut w.workspaces, vec![running.clone()]);
        let mut relisted = None;
        observe_usage(&ctx, &watcher::Event::Apply(running), &mut relisted);
        assert_eq!(
            ctx.usage().user_usage("interactive", "alice").cpu_millis,
            1000
        );
        let mut jupyter = profile();
        jupyter.spec.default_resources = Some(crate::api::v1alpha1::ResourceRequest {
            cpu: Some("3".into()),
            ..Default::default()
        });
        list_into(&mut w.profiles, vec![jupyter]);
        list_into(&mut w.pools, vec![pool()]);
        refresh_usage(&ctx);
        assert_eq!(
            ctx.usage().user_usage("interactive", "alice").cpu_millis,
            3000
        );
        assert_eq!(ctx.usage().len(), 1);
    }

    #[tokio::test]
    async fn pod_churn_reaches_the_cache_but_triggers_only_what_changes_the_status() {
        use crate::operator::workspace::cache::compact;
        use k8s_openapi::api::core::v1::Pod;
        let pod = |rv: &str, at: &str, message: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "ws-alice", "namespace": "team", "resourceVersion": rv,
                    "labels": {WORKSPACE_LABEL: "alice"},
                    "managedFields": [{"manager": "kube-scheduler", "operation": "Update"}],
                },
                "status": {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastTransitionTime": at,
                }]},
            }))
            .expect("a pod")
        };
        let first = pod("1", "2026-01-01T09:00:00Z", "0/1 nodes: cpu");
        let churned = pod("2", "2026-01-01T09:01:00Z", "0/1 nodes: cpu");
        let moved = pod("3", "2026-01-01T09:02:00Z", "0/2 nodes: cpu");
        let events = futures::stream::iter([
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(first)),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(churned)),
            Ok(watcher::Event::Apply(moved.clone())),
            Ok(watcher::Event::Delete(moved)),
        ]);
        let (store, writer) = compact::<Pod>(true);
        let mut triggers = Box::pin(child_triggers(
            events,
            writer,
            Arc::default(),
            super::super::predicates::pod_trigger,
        ));
        let message = |pod: &Pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c[0].message.clone())
        };
        let mut seen = Vec::new();
        while let Some(pod) = triggers.next().await {
            let pod = pod.expect("no error");
            // The store saw every event up to this one, filtered or not.
            seen.push((
                pod.metadata.resource_version.clone().unwrap_or_default(),
                store.get("team", "ws-alice").and_then(|p| message(&p)),
                store.of_workspace("team", "alice").len(),
            ));
        }
        assert_eq!(
            seen,
            [
                // A listed object reaches the store with the end of the list (InitDone);
                // reconciliations wait for that (`Caches::ready`).
                ("1".to_owned(), None, 0),
                // "2" (timestamps only) triggers nothing, yet the store had it before "3".
                ("3".to_owned(), Some("0/2 nodes: cpu".to_owned()), 1),
                // The deletion of a pod that looked the same still triggers; the store forgot it.
                ("3".to_owned(), None, 0),
            ]
        );
    }

    #[test]
    fn cached_objects_lose_their_managed_fields_and_last_applied_copy() {
        let mut ws = crate::operator::workspace::fixtures::workspace();
        ws.metadata.annotations = Some(BTreeMap::from([
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{}".to_owned(),
            ),
            ("atelier.dev/groups".to_owned(), "ocean".to_owned()),
        ]));
        ws.metadata.managed_fields = Some(vec![Default::default()]);
        ws.keep();
        assert_eq!(ws.metadata.managed_fields, None);
        assert_eq!(
            ws.metadata.annotations,
            Some(BTreeMap::from([(
                "atelier.dev/groups".to_owned(),
                "ocean".to_owned()
            )]))
        );
    }

    #[test]
    fn csi_drivers_credentials_and_volumes_map_only_to_the_workspaces_using_them() {
        use crate::operator::workspace::fixtures::{data_source, s3_csi_data_source};
        let sources = vec![Arc::new(data_source()), Arc::new(s3_csi_data_source())];
        let all = vec![
            ws("team", "one", "jupyter", &["argo"]),
            ws("team", "two", "jupyter", &["era5"]),
            ws("other", "three", "jupyter", &["era5", "argo"]),
        ];
        assert_eq!(
            workspaces_using_csi_driver(&all, &sources, "ru.yandex.s3.csi"),
            vec![
                ObjectRef::new("one").within("team"),
                ObjectRef::new("three").within("other")
            ]
        );
        assert_eq!(
            workspaces_using_csi_driver(&all, &sources, "irods.csi.cyverse.org"),
            vec![]
        );
        // A group credential and the mount Secret, in the Secret's namespace only.
        for secret in ["argo-climate", "argo-mount"] {
            assert_eq!(
                workspaces_using_secret(&all, &sources, "team", secret),
                vec![ObjectRef::new("one").within("team")],
                "{secret}"
            );
        }
        assert_eq!(
            workspaces_using_secret(&all, &sources, "team", "unrelated"),
            vec![]
        );
        let mut volume = PersistentVolume::default();
        volume.metadata.labels = Some(BTreeMap::from([(WORKSPACE_LABEL.into(), "one".into())]));
        assert_eq!(volume_workspace(&volume), None, "no namespace label");
        volume
            .labels_mut()
            .insert(WORKSPACE_NAMESPACE_LABEL.into(), "team".into());
        assert_eq!(
            volume_workspace(&volume),
            Some(ObjectRef::new("one").within("team"))
        );
    }

    #[test]
    fn home_volumes_map_by_label() {
        let mut pvc = PersistentVolumeClaim::default();
        pvc.metadata.namespace = Some("ns".into());
        assert_eq!(labelled_workspace(&pvc), None);
        pvc.metadata.labels = Some(BTreeMap::from([(WORKSPACE_LABEL.into(), "alice".into())]));
        assert_eq!(
            labelled_workspace(&pvc),
            Some(ObjectRef::new("alice").within("ns"))
        );
    }
}
