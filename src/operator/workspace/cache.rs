//! The informer caches the Workspace controller reads instead of the API server.
//!
//! [`Caches`] holds a reader per watched kind: kube's reflector [`Store`] for the Workspaces and
//! the inputs (profiles, pools, data sources), a [`Compact`] store for the children, which keeps
//! only what a reconciliation reads of each and finds a Workspace's pods and home volumes by
//! their Workspace label. The controller owns the matching [`CacheWriters`] and feeds them
//! from its watch streams (the store is written before any trigger filter sees an event, so the
//! caches stay exact). [`Tokens`] bridges the cache lag of the token Secret; [`Expectations`]
//! the lag of the operator's own writes.
//!
//! (kube-rs `examples/shared_stream_controllers.rs` and the `Controller::for_stream` docs:
//! `watcher() → reflect(writer) → touched_objects() → predicate_filter()`; client-go's
//! `Lister`s serve every read of a controller from its informers' indexers the same way.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota,
    Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::Resource;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;

use super::applied_hash;
use super::build::WORKSPACE_NAMESPACE_LABEL;
use crate::api::v1alpha1::{DataSource, NodePool, Workspace, WorkspaceProfile, WorkspaceStatus};
use crate::policy::names;

mod compact;
pub use compact::{
    Compact, CompactWriter, Compactable, PodDetail, VolumeDetail, compact, compact_by,
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The readers of every store the Workspace controller keeps.
#[derive(Clone)]
pub struct Caches {
    /// The Workspaces.
    pub workspaces: Store<Workspace>,
    /// Pods of the operator (managed-by label).
    pub pods: Compact<Pod>,
    /// Services of the operator.
    pub services: Compact<Service>,
    /// Secrets of the operator (the API tokens).
    pub secrets: Compact<Secret>,
    /// NetworkPolicies of the operator (per Workspace, and per user namespace).
    pub network_policies: Compact<NetworkPolicy>,
    /// Home volumes (managed-by label).
    pub pvcs: Compact<PersistentVolumeClaim>,
    /// Every WorkspaceProfile.
    pub profiles: Store<WorkspaceProfile>,
    /// Every NodePool.
    pub pools: Store<NodePool>,
    /// Every DataSource.
    pub data_sources: Store<DataSource>,
    /// The data sources' PersistentVolumes (cluster-scoped, managed-by label), listed by
    /// Workspace with [`Caches::data_volumes_of`].
    pub persistent_volumes: Compact<PersistentVolume>,
    /// The data sources' catalogue ConfigMaps (managed-by label).
    pub config_maps: Compact<ConfigMap>,
    /// Every CSIDriver of the cluster, with its `volumeLifecycleModes`.
    pub csi_drivers: Compact<CSIDriver>,
    /// The data sources' credentials Secrets ([`CREDENTIALS_SELECTOR`]), metadata only.
    pub credentials: Compact<PartialObjectMeta<Secret>>,
    /// Per-user mode: the users' namespaces (managed-by label).
    pub namespaces: Compact<Namespace>,
    /// Per-user mode: the users' ResourceQuotas (managed-by label).
    pub resource_quotas: Compact<ResourceQuota>,
    /// Per-user mode: the users' LimitRanges (managed-by label).
    pub limit_ranges: Compact<LimitRange>,
    /// The writes the caches do not show yet.
    pub expected: std::sync::Arc<Expectations>,
    /// The workspaces' DaskClusters (their `status.phase`); never awaited by [`Caches::ready`]:
    /// the CRD may be missing ([`Caches::dask_crd`]).
    pub dask_clusters: Compact<crate::operator::workspace::dask::DaskCluster>,
    /// Their DaskAutoscalers (applied hash only).
    pub dask_autoscalers: Compact<crate::operator::workspace::dask::DaskAutoscaler>,
    /// Whether the DaskCluster CRD is installed, as the DaskCluster watch found.
    pub dask_crd: std::sync::Arc<crate::operator::workspace::dask::DaskCrd>,
    /// Resolves once every store but the Workspaces' has been listed ([`Caches::ready`]).
    children_ready: Readiness,
    /// Resolves once the per-user stores have been listed.
    per_user_ready: Readiness,
    /// Set once the Workspaces' store has been listed ([`Caches::mark_workspaces_listed`]), read
    /// without waiting: kube's `Store::wait_until_ready` wakes one waiter only, and the
    /// Controller is that one.
    workspaces_listed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// One future per group of stores, polled by whoever awaits it first and shared by every
/// reconciliation (see [`Caches::ready`]).
type Readiness = futures::future::Shared<futures::future::BoxFuture<'static, bool>>;

/// The writers of [`Caches`]: whoever runs the watches feeds them (the controller, or a test).
pub struct CacheWriters {
    /// The Workspaces.
    pub workspaces: Writer<Workspace>,
    /// Pods.
    pub pods: CompactWriter<Pod>,
    /// Services.
    pub services: CompactWriter<Service>,
    /// Secrets.
    pub secrets: CompactWriter<Secret>,
    /// NetworkPolicies.
    pub network_policies: CompactWriter<NetworkPolicy>,
    /// Home volumes.
    pub pvcs: CompactWriter<PersistentVolumeClaim>,
    /// WorkspaceProfiles.
    pub profiles: Writer<WorkspaceProfile>,
    /// NodePools.
    pub pools: Writer<NodePool>,
    /// DataSources.
    pub data_sources: Writer<DataSource>,
    /// The data sources' PersistentVolumes.
    pub persistent_volumes: CompactWriter<PersistentVolume>,
    /// The catalogue ConfigMaps.
    pub config_maps: CompactWriter<ConfigMap>,
    /// CSIDrivers.
    pub csi_drivers: CompactWriter<CSIDriver>,
    /// The credentials Secrets' metadata.
    pub credentials: CompactWriter<PartialObjectMeta<Secret>>,
    /// Namespaces (per-user mode).
    pub namespaces: CompactWriter<Namespace>,
    /// ResourceQuotas (per-user mode).
    pub resource_quotas: CompactWriter<ResourceQuota>,
    /// LimitRanges (per-user mode).
    pub limit_ranges: CompactWriter<LimitRange>,
    /// Feeds [`Caches::dask_clusters`].
    pub dask_clusters: CompactWriter<crate::operator::workspace::dask::DaskCluster>,
    /// Feeds [`Caches::dask_autoscalers`].
    pub dask_autoscalers: CompactWriter<crate::operator::workspace::dask::DaskAutoscaler>,
}

impl Caches {
    /// Empty caches (not ready) and their writers.
    pub fn new() -> (Caches, CacheWriters) {
        let (workspaces, w_workspaces) = reflector::store();
        let (pods, w_pods) = compact(true);
        let (services, w_services) = compact(false);
        let (secrets, w_secrets) = compact(false);
        let (network_policies, w_network_policies) = compact(false);
        let (pvcs, w_pvcs) = compact(true);
        let (profiles, w_profiles) = reflector::store();
        let (pools, w_pools) = reflector::store();
        let (data_sources, w_data_sources) = reflector::store();
        let (persistent_volumes, w_persistent_volumes) = compact(true);
        let (config_maps, w_config_maps) = compact(false);
        let (csi_drivers, w_csi_drivers) = compact(false);
        let (credentials, w_credentials) = compact(false);
        let (namespaces, w_namespaces) = compact(false);
        let (resource_quotas, w_resource_quotas) = compact(false);
        let (limit_ranges, w_limit_ranges) = compact(false);
        let (dask_clusters, w_dask_clusters) = compact(false);
        let (dask_autoscalers, w_dask_autoscalers) = compact(false);
        let children_ready = {
            let stores = (
                pods.clone(),
                services.clone(),
                secrets.clone(),
                network_policies.clone(),
                pvcs.clone(),
                profiles.clone(),
                pools.clone(),
                data_sources.clone(),
            );
            let data = (
                persistent_volumes.clone(),
                config_maps.clone(),
                csi_drivers.clone(),
                credentials.clone(),
            );
            async move {
                let listed = futures::join!(
                    stores.0.wait_until_ready(),
                    stores.1.wait_until_ready(),
                    stores.2.wait_until_ready(),
                    stores.3.wait_until_ready(),
                    stores.4.wait_until_ready(),
                );
                let data = futures::join!(
                    data.0.wait_until_ready(),
                    data.1.wait_until_ready(),
                    data.2.wait_until_ready(),
                    data.3.wait_until_ready(),
                );
                let inputs = futures::try_join!(
                    stores.5.wait_until_ready(),
                    stores.6.wait_until_ready(),
                    stores.7.wait_until_ready(),
                );
                listed.0
                    && listed.1
                    && listed.2
                    && listed.3
                    && listed.4
                    && data.0
                    && data.1
                    && data.2
                    && data.3
                    && inputs.is_ok()
            }
            .boxed()
            .shared()
        };
        let per_user_ready = {
            let stores = (
                namespaces.clone(),
                resource_quotas.clone(),
                limit_ranges.clone(),
            );
            async move {
                let listed = futures::join!(
                    stores.0.wait_until_ready(),
                    stores.1.wait_until_ready(),
                    stores.2.wait_until_ready(),
                );
                listed.0 && listed.1 && listed.2
            }
            .boxed()
            .shared()
        };
        (
            Caches {
                workspaces,
                pods,
                services,
                secrets,
                network_policies,
                pvcs,
                profiles,
                pools,
                data_sources,
                persistent_volumes,
                config_maps,
                csi_drivers,
                credentials,
                namespaces,
                resource_quotas,
                limit_ranges,
                expected: Default::default(),
                dask_clusters,
                dask_autoscalers,
                dask_crd: Default::default(),
                children_ready,
                per_user_ready,
                workspaces_listed: Default::default(),
            },
            CacheWriters {
                workspaces: w_workspaces,
                pods: w_pods,
                services: w_services,
                secrets: w_secrets,
                network_policies: w_network_policies,
                pvcs: w_pvcs,
                profiles: w_profiles,
                pools: w_pools,
                data_sources: w_data_sources,
                persistent_volumes: w_persistent_volumes,
                config_maps: w_config_maps,
                csi_drivers: w_csi_drivers,
                credentials: w_credentials,
                namespaces: w_namespaces,
                resource_quotas: w_resource_quotas,
                limit_ranges: w_limit_ranges,
                dask_clusters: w_dask_clusters,
                dask_autoscalers: w_dask_autoscalers,
            },
        )
    }

    /// Resolves once every store in use has been listed (`per_user`: the namespace objects
    /// too); returns `false` when a writer was dropped before (the controller is gone).
    ///
    /// The Workspaces' store is not awaited here: the Controller runs no reconciliation before
    /// it is ready. Each other store is awaited by exactly one shared future, never by each
    /// reconciliation: kube-runtime 5's `Store::wait_until_ready` keeps one waker (a oneshot
    /// receiver behind a mutex, `utils/delayed_init.rs`), so of several tasks waiting at once
    /// only the last one to poll is woken, and the others would wait forever (seen in
    /// `tests/operator_bench.rs`: a few Workspaces of twenty never reconciled).
    pub async fn ready(&self, per_user: bool) -> bool {
        if !self.children_ready.clone().await {
            return false;
        }
        !per_user || self.per_user_ready.clone().await
    }

    /// The pods labelled as `ws`'s, sorted by name, but for those of its Dask cluster (which
    /// carry its labels too: [`Caches::dask_pods_of`]).
    pub fn pods_of(&self, ws: &Workspace) -> Vec<Pod> {
        let (namespace, label) = workspace_key(ws);
        let dask = crate::operator::workspace::dask::dask_pod_prefix(ws);
        let mut pods = self.pods.of_workspace(&namespace, &label);
        pods.retain(|p| {
            !p.metadata
                .name
                .as_deref()
                .unwrap_or_default()
                .starts_with(&dask)
        });
        pods
    }

    /// The home volumes labelled as `ws`'s, sorted by name (its data sources' claims too:
    /// [`Caches::data_claims_of`]).
    pub fn pvcs_of(&self, ws: &Workspace) -> Vec<PersistentVolumeClaim> {
        let (namespace, label) = workspace_key(ws);
        self.pvcs.of_workspace(&namespace, &label)
    }

    /// The claims of `ws`'s data sources, sorted by name: those of [`Caches::pvcs_of`] named as
    /// data claims are (`data-<ws>/<source>` hashed, [`names::data_claim_name`]), never the
    /// home volume.
    pub fn data_claims_of(&self, ws: &Workspace) -> Vec<PersistentVolumeClaim> {
        let home = names::home_claim_name(&ws.name_any());
        self.pvcs_of(ws)
            .into_iter()
            .filter(|pvc| {
                let name = pvc.name_any();
                name != home && name.starts_with(DATA_CLAIM_PREFIX)
            })
            .collect()
    }

    /// The data sources' PersistentVolumes of `ws`, sorted by name: labelled with its name and
    /// its namespace (a Workspace of the same name in another namespace has its own).
    pub fn data_volumes_of(&self, ws: &Workspace) -> Vec<PersistentVolume> {
        let (namespace, label) = workspace_key(ws);
        self.persistent_volumes
            .of_workspace("", &label)
            .into_iter()
            .filter(|pv| {
                pv.labels()
                    .get(WORKSPACE_NAMESPACE_LABEL)
                    .map(String::as_str)
                    == Some(namespace.as_str())
            })
            .collect()
    }

    /// Records that the Workspaces' store has been listed (the Workspace watch's `InitDone`,
    /// after the reflector applied it).
    pub fn mark_workspaces_listed(&self) {
        self.workspaces_listed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the stores the orphan sweep reads (the Workspaces, the data volumes and the
    /// claims) have all been listed: before that, a volume's Workspace or claim may be missing
    /// only because it is not listed yet. Never waits.
    pub fn ready_to_sweep(&self) -> bool {
        self.workspaces_listed
            .load(std::sync::atomic::Ordering::Acquire)
            && self.persistent_volumes.is_ready()
            && self.pvcs.is_ready()
    }

    /// The data sources' PersistentVolumes left behind by a Workspace that no longer exists
    /// (its finalizer was removed by hand, so its cleanup never ran), sorted by name: labelled
    /// with a Workspace (name and namespace) that the Workspaces' store does not hold, not
    /// terminating, and whose claim (`spec.claimRef`) the claims' store does not hold either
    /// (the claim goes with its Workspace by owner reference; until then the volume is kept).
    /// `scope`: the namespace the controller watches, if only one; a volume of a Workspace
    /// outside it is never an orphan here, since this operator does not see that Workspace.
    /// Empty until [`Caches::ready_to_sweep`].
    pub fn orphaned_data_volumes(&self, scope: Option<&str>) -> Vec<PersistentVolume> {
        if !self.ready_to_sweep() {
            return Vec::new();
        }
        let workspaces: std::collections::HashSet<(String, String)> = self
            .workspaces
            .state()
            .iter()
            .map(|ws| workspace_key(ws))
            .collect();
        let mut orphans: Vec<PersistentVolume> = self
            .persistent_volumes
            .all()
            .into_iter()
            .filter(|pv| pv.metadata.deletion_timestamp.is_none())
            .filter(|pv| {
                let labels = pv.labels();
                let (Some(name), Some(namespace)) = (
                    labels.get(super::WORKSPACE_LABEL),
                    labels.get(WORKSPACE_NAMESPACE_LABEL),
                ) else {
                    return false;
                };
                scope.is_none_or(|s| s == namespace)
                    && !workspaces.contains(&(namespace.clone(), name.clone()))
            })
            .filter(|pv| {
                let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                claim.is_none_or(|c| {
                    let namespace = c.namespace.as_deref().unwrap_or_default();
                    let name = c.name.as_deref().unwrap_or_default();
                    self.pvcs.get(namespace, name).is_none()
                })
            })
            .collect();
        orphans.sort_by_key(ResourceExt::name_any);
        orphans
    }

    /// The cluster's CSIDrivers by name, with their `volumeLifecycleModes` (empty when a
    /// driver lists none), as [`crate::policy::workspace::Dereferenced::csi_drivers`] wants them.
    pub fn csi_driver_modes(&self) -> BTreeMap<String, Vec<String>> {
        self.csi_drivers
            .all()
            .into_iter()
            .map(|d| {
                let modes = d.spec.volume_lifecycle_modes.unwrap_or_default();
                (d.metadata.name.unwrap_or_default(), modes)
            })
            .collect()
    }

    /// Whether the credentials Secret `namespace/name` exists ([`CREDENTIALS_SELECTOR`]).
    pub fn has_credentials(&self, namespace: &str, name: &str) -> bool {
        self.credentials.get(namespace, name).is_some()
    }
}

/// How every data claim's name starts ([`names::data_claim_name`]: `data-` and the hashed pair).
const DATA_CLAIM_PREFIX: &str = "data-";

/// Label selector of the data sources' credentials Secrets, the only Secrets besides the
/// operator's own that it watches (metadata only).
pub const CREDENTIALS_SELECTOR: &str = "atelier.dev/credentials=true";

/// `kubectl`'s last applied configuration, a copy of the object the operator never reads.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the kube reflector stores keep of a Workspace or an input (WorkspaceProfile, NodePool,
/// DataSource): everything a reconciliation reads, which is all of it but `managedFields` and
/// `kubectl`'s last applied configuration. (kube-rs documents `.modify()` before `.reflect()`
/// to bound a reflector's memory, `kube-runtime/src/utils/watch_ext.rs` `modify`; client-go's
/// informers take a `TransformFunc` for the same reason, `tools/cache/controller.go`.) The
/// children are kept far more compactly, see [`Compact`].
pub trait Cached: Resource {
    /// Drops `managedFields` and `kubectl`'s last applied configuration.
    fn keep(&mut self) {
        let meta = self.meta_mut();
        meta.managed_fields = None;
        meta.self_link = None;
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
        }
    }
}

/// The Workspace is read whole (spec, status, groups annotation).
impl Cached for Workspace {}
/// Profiles, pools and data sources are read whole by `validate`.
impl Cached for WorkspaceProfile {}
impl Cached for NodePool {}
impl Cached for DataSource {}

/// A cached namespaced object.
pub fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .map(|k| k.as_ref().clone())
}

/// A cached cluster-scoped object.
pub fn cached_cluster<K>(store: &Store<K>, name: &str) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name)).map(|k| k.as_ref().clone())
}

/// The namespace of `ws` and the value of its children's [`super::WORKSPACE_LABEL`].
fn workspace_key(ws: &Workspace) -> (String, String) {
    (
        ws.namespace().unwrap_or_default(),
        crate::policy::names::label_value(&ws.name_any()),
    )
}

/// API tokens of Workspaces (by UID) whose Secret the cache does not show yet: generated by the
/// operator, or read once from the API server (the hub writes the Secret just before the
/// Workspace, and the Secret watch may lag behind the Workspace watch). A second reconciliation
/// before the Secret reaches the cache reuses the token instead of applying a new one.
#[derive(Debug, Default)]
pub struct Tokens(Mutex<HashMap<String, String>>);

impl Tokens {
    /// The token remembered for Workspace `uid`.
    pub fn remembered(&self, uid: &str) -> Option<String> {
        lock(&self.0).get(uid).cloned()
    }

    /// Remembers `token` for Workspace `uid` until [`Tokens::forget`].
    pub fn remember(&self, uid: &str, token: &str) {
        lock(&self.0).insert(uid.to_owned(), token.to_owned());
    }

    /// Forgets the token of Workspace `uid` (the cache shows its Secret, or it is deleted).
    pub fn forget(&self, uid: &str) {
        lock(&self.0).remove(uid);
    }

    /// How many tokens wait for their Secret to reach the cache.
    pub fn pending(&self) -> usize {
        lock(&self.0).len()
    }
}

/// How long a write the caches have not shown yet stands in for the cached object
/// ([`Expectations`]).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// What the operator wrote and its caches do not show yet: the applied hash of each child it
/// applied, and the status it wrote of each Workspace, until the watch brings them back (or
/// [`EXPECTATION_TTL`] passed, or the object was deleted).
///
/// A Workspace's own writes trigger it again (its pod's creation, its status) before the watches
/// of its other children have caught up; without this, that second reconciliation would find
/// the Secret, Service or home volume it just applied missing from the cache and apply it again,
/// and derive its status from the stale cached one, writing it (and its Event) twice. This is
/// client-go's `ControllerExpectations` (kubernetes `pkg/controller/controller_utils.go`: the
/// ReplicaSet controller records the pods it created and creates none again until its informer
/// has seen them or 5 minutes passed), keyed by object and applied hash.
#[derive(Debug, Default)]
pub struct Expectations {
    /// (kind, namespace, name) → (applied hash, when).
    applied: Mutex<HashMap<ObjectKey, (String, Instant)>>,
    /// (namespace, Workspace name) → (status written, when).
    statuses: Mutex<HashMap<(String, String), (WorkspaceStatus, Instant)>>,
}

/// The object of a watch event, and whether it was deleted (`None` for the markers of a list).
fn object_of<K>(event: &watcher::Event<K>) -> Option<(&K, bool)> {
    match event {
        watcher::Event::Apply(object) | watcher::Event::InitApply(object) => Some((object, false)),
        watcher::Event::Delete(object) => Some((object, true)),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// (kind, namespace, name) of an object.
type ObjectKey = (String, String, String);

fn object_key<K: Resource<DynamicType = ()>>(
    namespace: &str,
    name: &str,
) -> (String, String, String) {
    (
        K::kind(&()).into_owned(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

impl Expectations {
    /// Records that `K` `namespace/name` was applied with `hash`.
    pub fn applied<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str, hash: &str) {
        lock(&self.applied).insert(
            object_key::<K>(namespace, name),
            (hash.to_owned(), Instant::now()),
        );
    }

    /// Whether `K` `namespace/name` was applied with `hash` less than [`EXPECTATION_TTL`] ago and
    /// the cache has not shown it since.
    pub fn awaits<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
        hash: &str,
    ) -> bool {
        let mut applied = lock(&self.applied);
        let key = object_key::<K>(namespace, name);
        match applied.get(&key) {
            Some((h, at)) if at.elapsed() < EXPECTATION_TTL => h == hash,
            Some(_) => {
                applied.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Whether `K` `namespace/name` was applied (with any hash) less than [`EXPECTATION_TTL`]
    /// ago and the cache has not shown it since.
    pub fn awaits_any<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> bool {
        lock(&self.applied)
            .get(&object_key::<K>(namespace, name))
            .is_some_and(|(_, at)| at.elapsed() < EXPECTATION_TTL)
    }

    /// Settles the expectations a watch event of a child meets: the object shown with the
    /// expected hash, or deleted.
    pub fn observe<K: Resource<DynamicType = ()>>(&self, event: &watcher::Event<K>) {
        let Some((object, deleted)) = object_of(event) else {
            return;
        };
        let mut applied = lock(&self.applied);
        if applied.is_empty() {
            return;
        }
        let meta = object.meta();
        let key = object_key::<K>(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        let met = applied
            .get(&key)
            .is_some_and(|(hash, _)| deleted || applied_hash(object) == Some(hash.as_str()));
        if met {
            applied.remove(&key);
        }
    }

    /// Records the status written to Workspace `namespace/name`.
    pub fn wrote_status(&self, namespace: &str, name: &str, status: &WorkspaceStatus) {
        lock(&self.statuses).insert(
            (namespace.to_owned(), name.to_owned()),
            (status.clone(), Instant::now()),
        );
    }

    /// The status last written to `ws` when the cache does not show it yet (less than
    /// [`EXPECTATION_TTL`] ago): the status to start from instead of the cached one.
    pub fn status_of(&self, ws: &Workspace) -> Option<WorkspaceStatus> {
        let key = (ws.namespace().unwrap_or_default(), ws.name_any());
        let mut statuses = lock(&self.statuses);
        match statuses.get(&key) {
            Some((status, at)) if at.elapsed() < EXPECTATION_TTL => {
                if crate::operator::workspace::status::changed(ws.status.as_ref(), status) {
                    Some(status.clone())
                } else {
                    statuses.remove(&key);
                    None
                }
            }
            Some(_) => {
                statuses.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Settles the status expectation a Workspace watch event meets: its status shown, or the
    /// Workspace deleted.
    pub fn observe_workspace(&self, event: &watcher::Event<Workspace>) {
        let Some((ws, deleted)) = object_of(event) else {
            return;
        };
        let mut statuses = lock(&self.statuses);
        if statuses.is_empty() {
            return;
        }
        let key = (ws.namespace().unwrap_or_default(), ws.name_any());
        let met = statuses.get(&key).is_some_and(|(status, _)| {
            deleted || !crate::operator::workspace::status::changed(ws.status.as_ref(), status)
        });
        if met {
            statuses.remove(&key);
        }
    }

    /// How many writes the caches have not shown yet.
    pub fn pending(&self) -> usize {
        lock(&self.applied).len() + lock(&self.statuses).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::workspace::{APPLIED_HASH_ANNOTATION, WORKSPACE_LABEL};
    use crate::policy::workspace::TOKEN_KEY;
    use std::collections::BTreeMap;

    fn pod(ns: &str, name: &str, ws: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.labels =
            ws.map(|w| BTreeMap::from([(WORKSPACE_LABEL.to_owned(), w.to_owned())]));
        p
    }

    #[test]
    fn a_compact_store_follows_events_and_relists_and_lists_by_workspace() {
        let (store, mut writer) = compact::<Pod>(true);
        writer.apply_watcher_event(&watcher::Event::Apply(pod("a", "p1", Some("alice"))));
        writer.apply_watcher_event(&watcher::Event::Apply(pod("a", "p0", Some("alice"))));
        writer.apply_watcher_event(&watcher::Event::Apply(pod("b", "p2", Some("alice"))));
        writer.apply_watcher_event(&watcher::Event::Apply(pod("a", "x", None)));
        let names =
            |pods: Vec<Pod>| -> Vec<String> { pods.into_iter().map(|p| p.name_any()).collect() };
        assert_eq!(names(store.of_workspace("a", "alice")), ["p0", "p1"]);
        assert_eq!(names(store.of_workspace("b", "alice")), ["p2"]);
        assert_eq!(store.len(), 4);
        assert_eq!(
            store.get("a", "x").map(|p| p.metadata.namespace),
            Some(Some("a".to_owned()))
        );
        // Relabelled: moves to bob.
        writer.apply_watcher_event(&watcher::Event::Apply(pod("a", "p1", Some("bob"))));
        assert_eq!(names(store.of_workspace("a", "alice")), ["p0"]);
        assert_eq!(names(store.of_workspace("a", "bob")), ["p1"]);
        writer.apply_watcher_event(&watcher::Event::Delete(pod("a", "p0", Some("alice"))));
        assert!(store.of_workspace("a", "alice").is_empty());
        assert_eq!(store.get("a", "p0"), None);
        // A relist that no longer shows p2: the store and its index keep the old objects until
        // the relist ends.
        writer.apply_watcher_event(&watcher::Event::<Pod>::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(pod("a", "p1", Some("bob"))));
        assert_eq!(names(store.of_workspace("b", "alice")), ["p2"]);
        writer.apply_watcher_event(&watcher::Event::<Pod>::InitDone);
        assert!(store.of_workspace("b", "alice").is_empty());
        assert_eq!(names(store.of_workspace("a", "bob")), ["p1"]);
        assert_eq!(store.len(), 1);
        // Not indexed: nothing listed by Workspace, everything found by name.
        let (plain, mut writer) = compact::<Pod>(false);
        writer.apply_watcher_event(&watcher::Event::Apply(pod("a", "p1", Some("bob"))));
        assert!(plain.of_workspace("a", "bob").is_empty());
        assert!(plain.get("a", "p1").is_some());
        // Cluster-scoped objects.
        let (namespaces, mut writer) = compact::<Namespace>(false);
        let mut ns = Namespace::default();
        ns.metadata.name = Some("atelier-alice".into());
        writer.apply_watcher_event(&watcher::Event::Apply(ns));
        assert_eq!(
            namespaces
                .get_cluster("atelier-alice")
                .map(|n| n.name_any()),
            Some("atelier-alice".to_owned())
        );
    }

    #[test]
    fn a_compact_store_passes_on_only_what_changed_its_trigger_hash() {
        // The trigger hash of these pods: their applied hash.
        fn trigger(pod: &Pod) -> Option<u64> {
            crate::operator::workspace::applied_hash(pod).map(|h| h.len() as u64)
        }
        let with_hash = |name: &str, hash: &str| {
            let mut p = pod("a", name, Some("alice"));
            p.metadata.annotations = Some(BTreeMap::from([(
                APPLIED_HASH_ANNOTATION.to_owned(),
                hash.to_owned(),
            )]));
            p
        };
        let (store, mut writer) = compact::<Pod>(true);
        let mut apply = |event| writer.apply(&event, trigger);
        apply(watcher::Event::Init);
        assert!(
            apply(watcher::Event::InitApply(with_hash("p1", "h1"))),
            "new"
        );
        apply(watcher::Event::InitDone);
        assert!(
            !apply(watcher::Event::Apply(with_hash("p1", "h2"))),
            "same hash"
        );
        assert!(
            apply(watcher::Event::Apply(with_hash("p1", "h22"))),
            "changed"
        );
        assert!(apply(watcher::Event::Apply(with_hash("p2", "h1"))), "new");
        // A relist compares with the store as it was before the relist.
        apply(watcher::Event::Init);
        assert!(!apply(watcher::Event::InitApply(with_hash("p1", "h33"))));
        assert!(apply(watcher::Event::InitApply(with_hash("p2", "h11"))));
        apply(watcher::Event::InitDone);
        assert!(
            apply(watcher::Event::Delete(with_hash("p2", "h11"))),
            "deleted"
        );
        assert_eq!(store.len(), 1);
        let p1 = store.get("a", "p1").expect("p1");
        assert_eq!(crate::operator::workspace::applied_hash(&p1), Some("h33"));
    }

    /// `full` as a compact store keeps and restores it.
    fn compacted<K: Compactable + std::fmt::Debug>(full: &K) -> K {
        let (store, mut writer) = compact::<K>(false);
        writer.apply_watcher_event(&watcher::Event::Apply(full.clone()));
        let meta = full.meta();
        store
            .get(
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            )
            .expect("kept")
    }

    /// A pod as a kubelet reports it: a full spec (containers, env, volumes), `status`.
    fn full_pod(status: serde_json::Value, node: Option<&str>, deleting: bool) -> Pod {
        let env: Vec<_> = (0..30)
            .map(|i| serde_json::json!({"name": format!("VAR_{i}"), "value": "x".repeat(40)}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "ws-alice", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                "labels": {WORKSPACE_LABEL: "alice", "app.kubernetes.io/managed-by": "atelier"},
                "annotations": {
                    APPLIED_HASH_ANNOTATION: "h1",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "cni.projectcalico.org/podIP": "10.1.2.3/32",
                },
                "ownerReferences": [{"apiVersion": "atelier.dev/v1alpha1", "kind": "Workspace",
                                     "name": "alice", "uid": "w-1", "controller": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "deletionTimestamp": deleting.then_some("2026-01-01T00:00:09Z"),
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "notebook", "image": "quay.io/jupyter/scipy-notebook",
                                "env": env, "args": ["--ip=0.0.0.0", "--port=8888"],
                                "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}]}],
                "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}}],
                "tolerations": [{"key": "atelier.dev/pool", "value": "interactive"}],
            },
            "status": status,
        }))
        .expect("a pod")
    }

    /// Pods in each state `status::derive` tells apart.
    fn pods_in_every_state() -> Vec<Pod> {
        use serde_json::json;
        let running = json!({
            "phase": "Running", "startTime": "2026-01-01T00:00:00Z",
            "podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}], "hostIP": "192.168.0.4",
            "qosClass": "Burstable",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"},
            ],
            "containerStatuses": [{"name": "notebook", "ready": true, "restartCount": 0,
                "image": "quay.io/jupyter/scipy-notebook", "imageID": "sha256:abc",
                "containerID": "containerd://abc", "started": true,
                "state": {"running": {"startedAt": "2026-01-01T00:00:04Z"}}}],
        });
        let unschedulable = json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu.",
                "lastProbeTime": null, "lastTransitionTime": "2026-01-01T00:00:01Z"}],
        });
        let crashing = json!({
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [{"name": "notebook", "ready": false, "restartCount": 4,
                "image": "i", "imageID": "", "started": false,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "ModuleNotFoundError", "startedAt": "2026-01-01T00:00:02Z",
                    "finishedAt": "2026-01-01T00:00:03Z"}}}],
        });
        let pulling = json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": [{"name": "home", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}],
        });
        let failed = json!({"phase": "Failed", "reason": "Evicted",
                            "message": "The node was low on resource: memory."});
        vec![
            full_pod(running.clone(), Some("node-1"), false),
            full_pod(running, Some("node-1"), true),
            full_pod(unschedulable, None, false),
            full_pod(crashing, Some("node-2"), false),
            full_pod(pulling, Some("node-2"), false),
            full_pod(failed, Some("node-3"), false),
            full_pod(serde_json::Value::Null, None, false),
        ]
    }

    #[test]
    fn a_cached_pod_keeps_exactly_what_its_status_and_trigger_are_derived_from() {
        use crate::api::v1alpha1::DesiredState;
        use crate::operator::workspace::status::{StatusInput, derive};
        let now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
            serde_json::from_value(serde_json::json!("2026-01-02T00:00:00Z")).expect("a time");
        for full in pods_in_every_state() {
            let kept = compacted(&full);
            let input = |pod| StatusInput {
                generation: Some(2),
                desired_state: DesiredState::Running,
                refusal: None,
                rejection: None,
                node_pool: Some("interactive"),
                url: None,
                pod: Some(pod),
                replacing: false,
                data_source_changed: None,
            };
            assert_eq!(
                derive(&input(&kept), None, &now),
                derive(&input(&full), None, &now),
                "the status of {:?}",
                full.status
            );
            assert_eq!(kept.metadata.name, full.metadata.name);
            assert_eq!(kept.metadata.namespace, full.metadata.namespace);
            assert_eq!(
                kept.metadata.labels,
                Some(BTreeMap::from([(
                    WORKSPACE_LABEL.to_owned(),
                    "alice".to_owned()
                )]))
            );
            assert_eq!(
                kept.spec.as_ref().and_then(|s| s.node_name.clone()),
                full.spec.as_ref().and_then(|s| s.node_name.clone())
            );
            assert_eq!(
                kept.metadata.deletion_timestamp,
                full.metadata.deletion_timestamp
            );
            assert_eq!(
                crate::operator::workspace::reconcile::apply::applied_hash(&kept),
                Some("h1")
            );
            assert_eq!(kept.metadata.managed_fields, None);
            let size = |p: &Pod| serde_json::to_vec(p).expect("serializes").len();
            assert!(
                size(&kept) * 3 < size(&full),
                "kept {} of {} bytes",
                size(&kept),
                size(&full)
            );
        }
    }

    #[test]
    fn other_cached_children_keep_their_hash_token_and_cluster_ip() {
        use crate::operator::workspace::reconcile::apply::{applied_hash, cluster_ip_changes};
        use crate::policy::workspace::token_of;
        use serde_json::json;
        let meta = json!({
            "name": "ws-alice", "namespace": "ns",
            "labels": {WORKSPACE_LABEL: "alice"},
            "annotations": {APPLIED_HASH_ANNOTATION: "h2", "note": "x"},
            "ownerReferences": [{"apiVersion": "atelier.dev/v1alpha1", "kind": "Workspace",
                                 "name": "alice", "uid": "w-1"}],
        });
        let service: Service = serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 8888}], "selector": {"a": "b"}},
        }))
        .expect("a service");
        let kept = compacted(&service);
        assert_eq!(applied_hash(&kept), Some("h2"));
        let mut headless = service.clone();
        headless.spec.as_mut().expect("spec").cluster_ip = Some("None".into());
        assert!(cluster_ip_changes(&kept, &headless));
        assert!(!cluster_ip_changes(&kept, &service));
        assert_eq!(kept.spec.as_ref().and_then(|s| s.ports.as_ref()), None);

        let secret: Secret = serde_json::from_value(json!({
            "metadata": meta,
            "data": {TOKEN_KEY: "dG9rZW4=", "other": "eA=="},
        }))
        .expect("a secret");
        let kept = compacted(&secret);
        assert_eq!(token_of(&kept).as_deref(), Some("token"));
        assert_eq!(kept.data.as_ref().map(|d| d.len()), Some(1));

        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
            "status": {"phase": "Bound"},
        }))
        .expect("a pvc");
        let kept = compacted(&pvc);
        assert_eq!(applied_hash(&kept), Some("h2"));
        assert!(kept.spec.is_none() && kept.status.is_none());
        assert_eq!(kept.metadata.labels, pvc.metadata.labels);

        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .expect("a policy");
        let kept = compacted(&policy);
        assert!(kept.spec.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_awaited_until_the_cache_shows_it_is_deleted_or_too_old() {
        let expected = Expectations::default();
        let mut pod = pod("ns", "ws-alice", Some("alice"));
        expected.applied::<Pod>("ns", "ws-alice", "h1");
        assert!(expected.awaits::<Pod>("ns", "ws-alice", "h1"));
        assert!(
            !expected.awaits::<Pod>("ns", "ws-alice", "h2"),
            "another hash"
        );
        assert!(!expected.awaits::<Pod>("other", "ws-alice", "h1"));
        assert!(
            !expected.awaits::<Service>("ns", "ws-alice", "h1"),
            "another kind"
        );
        // An event of the object before the write (an older hash) settles nothing.
        pod.metadata.annotations = Some(BTreeMap::from([(
            APPLIED_HASH_ANNOTATION.to_owned(),
            "h0".to_owned(),
        )]));
        expected.observe(&watcher::Event::Apply(pod.clone()));
        assert!(expected.awaits::<Pod>("ns", "ws-alice", "h1"));
        // The cache shows the write: settled.
        pod.metadata.annotations = Some(BTreeMap::from([(
            APPLIED_HASH_ANNOTATION.to_owned(),
            "h1".to_owned(),
        )]));
        expected.observe(&watcher::Event::InitApply(pod.clone()));
        assert!(!expected.awaits::<Pod>("ns", "ws-alice", "h1"));
        assert_eq!(expected.pending(), 0);
        // Deleted before the cache showed it: settled, so it is applied again.
        expected.applied::<Pod>("ns", "ws-alice", "h2");
        expected.observe(&watcher::Event::Delete(pod.clone()));
        assert!(!expected.awaits::<Pod>("ns", "ws-alice", "h2"));
        // Never shown: awaited for EXPECTATION_TTL only.
        expected.applied::<Pod>("ns", "ws-alice", "h3");
        tokio::time::advance(EXPECTATION_TTL - Duration::from_secs(1)).await;
        assert!(expected.awaits::<Pod>("ns", "ws-alice", "h3"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!expected.awaits::<Pod>("ns", "ws-alice", "h3"));
        assert_eq!(expected.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_written_status_stands_in_for_the_cached_one_until_shown() {
        use crate::api::v1alpha1::WorkspacePhase;
        let expected = Expectations::default();
        let mut ws = crate::operator::workspace::fixtures::workspace();
        ws.status = None;
        let (ns, name) = (ws.namespace().expect("a namespace"), ws.name_any());
        let written = WorkspaceStatus {
            phase: Some(WorkspacePhase::Pending),
            message: Some("Waiting for the scheduler".into()),
            ..WorkspaceStatus::default()
        };
        assert_eq!(expected.status_of(&ws), None);
        expected.wrote_status(&ns, &name, &written);
        assert_eq!(expected.status_of(&ws).as_ref(), Some(&written));
        // A Workspace event still without it settles nothing; one showing it (whatever the
        // hub's lastActivity) does.
        expected.observe_workspace(&watcher::Event::Apply(ws.clone()));
        assert_eq!(expected.status_of(&ws).as_ref(), Some(&written));
        let mut shown = ws.clone();
        shown.status = Some(WorkspaceStatus {
            last_activity: Some(
                serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).expect("a time"),
            ),
            ..written.clone()
        });
        expected.observe_workspace(&watcher::Event::Apply(shown.clone()));
        assert_eq!(expected.pending(), 0);
        assert_eq!(expected.status_of(&ws), None);
        // Not shown within EXPECTATION_TTL: the cached status is trusted again.
        expected.wrote_status(&ns, &name, &written);
        tokio::time::advance(EXPECTATION_TTL + Duration::from_secs(1)).await;
        assert_eq!(expected.status_of(&ws), None);
        // Deleted: dropped.
        expected.wrote_status(&ns, &name, &written);
        expected.observe_workspace(&watcher::Event::Delete(ws));
        assert_eq!(expected.pending(), 0);
    }

    #[tokio::test]
    async fn the_data_sources_caches_keep_whose_volumes_the_driver_modes_and_secret_names() {
        use crate::operator::workspace::fixtures::{
            Cluster, credentials_secret, csi_driver, seeded_context, workspace,
        };
        use k8s_openapi::api::core::v1::PersistentVolume;
        let volume = |name: &str, namespace: &str| {
            let mut pv = PersistentVolume::default();
            pv.metadata.name = Some(name.into());
            pv.metadata.labels = Some(BTreeMap::from([
                (WORKSPACE_LABEL.to_owned(), "alice".to_owned()),
                (WORKSPACE_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "atelier-operator".to_owned(),
                ),
            ]));
            pv.metadata.annotations = Some(BTreeMap::from([
                (
                    crate::operator::workspace::build::VOLUME_SOURCE_ANNOTATION.to_owned(),
                    format!("source-of-{name}"),
                ),
                (
                    crate::operator::workspace::APPLIED_HASH_ANNOTATION.to_owned(),
                    "h".to_owned(),
                ),
                ("note".to_owned(), "not kept".to_owned()),
            ]));
            pv.spec = Some(k8s_openapi::api::core::v1::PersistentVolumeSpec {
                claim_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    namespace: Some(namespace.to_owned()),
                    name: Some(format!("claim-of-{name}")),
                    uid: Some("not kept".to_owned()),
                    ..Default::default()
                }),
                storage_class_name: Some(String::new()),
                ..Default::default()
            });
            pv
        };
        let (ctx, _verifier, _w) = seeded_context(
            crate::config::OperatorConfig::default(),
            Cluster {
                persistent_volumes: vec![volume("pv-b", "team"), volume("pv-a", "elsewhere")],
                csi_drivers: vec![
                    csi_driver("ru.yandex.s3.csi", &["Persistent"]),
                    csi_driver("irods.csi.cyverse.org", &[]),
                    csi_driver("inline.example.org", &["Ephemeral", "Persistent"]),
                ],
                credentials: vec![credentials_secret("team", "argo-climate")],
                ..Cluster::default()
            },
        );
        let caches = &ctx.caches;
        let ws = workspace();
        let mine: Vec<String> = caches
            .data_volumes_of(&ws)
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        assert_eq!(mine, ["pv-b"], "alice of team, not alice of elsewhere");
        // What the orphan sweep and the replacement of a changed source read: the claim it is
        // bound to, and the hash of its immutable fields; nothing else of its spec.
        let kept = &caches.data_volumes_of(&ws)[0];
        assert_eq!(
            kept.annotations(),
            &BTreeMap::from([
                (
                    crate::operator::workspace::APPLIED_HASH_ANNOTATION.to_owned(),
                    "h".to_owned()
                ),
                (
                    crate::operator::workspace::build::VOLUME_SOURCE_ANNOTATION.to_owned(),
                    "source-of-pv-b".to_owned()
                ),
            ])
        );
        assert_eq!(
            serde_json::to_value(&kept.spec).expect("json"),
            serde_json::json!({"claimRef": {"namespace": "team", "name": "claim-of-pv-b"}})
        );
        assert_eq!(
            caches.data_volumes_of(&ws)[0]
                .labels()
                .get(WORKSPACE_NAMESPACE_LABEL)
                .map(String::as_str),
            Some("team")
        );
        assert_eq!(
            caches.csi_driver_modes(),
            BTreeMap::from([
                (
                    "inline.example.org".to_owned(),
                    vec!["Ephemeral".to_owned(), "Persistent".to_owned()]
                ),
                ("irods.csi.cyverse.org".to_owned(), vec![]),
                ("ru.yandex.s3.csi".to_owned(), vec!["Persistent".to_owned()]),
            ])
        );
        assert!(caches.has_credentials("team", "argo-climate"));
        assert!(!caches.has_credentials("elsewhere", "argo-climate"));
        assert!(!caches.has_credentials("team", "argo-mount"));
    }

    #[test]
    fn a_token_is_remembered_per_workspace_until_forgotten() {
        let tokens = Tokens::default();
        assert_eq!(tokens.remembered("uid-1"), None);
        tokens.remember("uid-1", "t1");
        tokens.remember("uid-2", "t2");
        assert_eq!(tokens.remembered("uid-1").as_deref(), Some("t1"));
        assert_eq!(tokens.pending(), 2);
        tokens.forget("uid-1");
        assert_eq!(tokens.remembered("uid-1"), None);
        assert_eq!(tokens.remembered("uid-2").as_deref(), Some("t2"));
        assert_eq!(tokens.pending(), 1);
    }

    /// Lists every store: the `Init` and `InitDone` of an empty relist.
    fn list_all(w: &mut CacheWriters) {
        macro_rules! listed {
            ($($store:ident),*) => {$(
                w.$store.apply_watcher_event(&watcher::Event::Init);
                w.$store.apply_watcher_event(&watcher::Event::InitDone);
            )*};
        }
        listed!(
            workspaces,
            pods,
            services,
            secrets,
            network_policies,
            pvcs,
            profiles,
            pools,
            data_sources,
            namespaces,
            resource_quotas,
            limit_ranges,
            persistent_volumes,
            config_maps,
            csi_drivers,
            credentials
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reconciliation_waiting_for_the_caches_wakes_when_they_are_listed() {
        let (caches, mut writers) = Caches::new();
        let waiting: Vec<_> = (0..16)
            .map(|i| {
                let caches = caches.clone();
                tokio::spawn(async move { caches.ready(i % 2 == 0).await })
            })
            .collect();
        // Let every task poll (and park) before the stores are listed.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        list_all(&mut writers);
        for task in waiting {
            let ready =
                tokio::time::timeout(crate::operator::workspace::fixtures::SCENARIO_TIMEOUT, task)
                    .await
                    .expect("every waiting reconciliation is woken")
                    .expect("the task ends");
            assert!(ready);
        }
        // Once listed, a late caller returns at once; a dropped writer means "gone".
        assert!(caches.ready(true).await);
        let (gone, writers) = Caches::new();
        drop(writers);
        assert!(!gone.ready(false).await);
    }
}
