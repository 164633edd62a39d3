//! Compact caches of the operator's children: a record per object with only what a
//! reconciliation reads of it, instead of the whole typed object.
//!
//! kube's reflector [`Store`](kube::runtime::reflector::Store) keeps an `Arc<K>` per object
//! under an `ObjectRef` key: at 10,000 Workspaces and five child kinds that is 50,000 typed
//! objects whose inline size alone is 0.5 to 2 kB (a `Pod` is 2,176 bytes even with an empty
//! spec), each with two label and annotation maps (a B-tree node of 540 bytes each, whatever
//! the number of entries), and four strings in each key. heaptrack showed those, not the
//! fields, to be most of the operator's memory. A [`Compact`] store keeps, per object, its
//! name under its namespace, the Workspace it is labelled with, its applied hash, its deletion
//! timestamp and its kind's [`Detail`](Compactable::Detail) (a pod's node and status, a
//! Service's cluster IP, a Secret's token); readers get the typed object back, rebuilt with
//! exactly those fields ([`Compactable::restore`]).
//!
//! It is fed like a reflector store, with the same watch events and the same semantics
//! (kube-runtime `reflector/store.rs`, `Writer::apply_watcher_event`: a relist is buffered from
//! `Init` and replaces the store at `InitDone`, which also marks it ready), and it indexes the
//! objects by Workspace label where the reconciliation lists a Workspace's children (client-go's
//! `cache.Indexer` with an index function, `tools/cache/index.go`). Its readiness is a
//! `tokio::sync::watch` flag, which wakes every waiter.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ContainerStatus, LimitRange, Namespace, PersistentVolumeClaim, Pod, PodSpec, PodStatus,
    ResourceQuota, Secret, Service, ServiceSpec,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::runtime::watcher;
use tokio::sync::watch;

use super::super::build::{VOLUME_SOURCE_ANNOTATION, WORKSPACE_NAMESPACE_LABEL};
use super::super::{APPLIED_HASH_ANNOTATION, WORKSPACE_LABEL, applied_hash};
use crate::policy::workspace::TOKEN_KEY;

/// A child kind a [`Compact`] store can keep: what it keeps of an object beyond its identity,
/// and how the object is rebuilt from that.
pub trait Compactable: Resource<DynamicType = ()> + Clone {
    /// What is kept of the kind's own fields.
    type Detail: Clone + Send + Sync + 'static;

    /// The kind's fields of `self` that a reconciliation reads.
    fn detail(&self) -> Self::Detail;

    /// The object from its metadata (name, namespace, Workspace label, applied hash, deletion
    /// timestamp) and its kept `detail`.
    fn restore(metadata: ObjectMeta, detail: &Self::Detail) -> Self;
}

/// A pod's node and what `status::derive` reads of its status (phase, message, reason,
/// conditions, start time, each container's name, readiness, restarts, state and last state).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodDetail {
    node_name: Option<Box<str>>,
    status: Option<Box<PodStatus>>,
}

impl Compactable for Pod {
    type Detail = PodDetail;

    fn detail(&self) -> PodDetail {
        let node_name = self
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .map(Box::from);
        let status = self.status.as_ref().map(|status| {
            let containers = |statuses: &Option<Vec<ContainerStatus>>| {
                statuses.as_ref().map(|statuses| {
                    statuses
                        .iter()
                        .map(|cs| ContainerStatus {
                            name: cs.name.clone(),
                            ready: cs.ready,
                            restart_count: cs.restart_count,
                            started: cs.started,
                            state: cs.state.clone(),
                            last_state: cs.last_state.clone(),
                            ..ContainerStatus::default()
                        })
                        .collect()
                })
            };
            Box::new(PodStatus {
                phase: status.phase.clone(),
                message: status.message.clone(),
                reason: status.reason.clone(),
                conditions: status.conditions.clone(),
                start_time: status.start_time.clone(),
                init_container_statuses: containers(&status.init_container_statuses),
                container_statuses: containers(&status.container_statuses),
                ..PodStatus::default()
            })
        });
        PodDetail { node_name, status }
    }

    fn restore(metadata: ObjectMeta, detail: &PodDetail) -> Pod {
        Pod {
            metadata,
            spec: detail.node_name.as_ref().map(|node| PodSpec {
                node_name: Some(node.to_string()),
                ..PodSpec::default()
            }),
            status: detail.status.as_deref().cloned(),
        }
    }
}

/// A Service's cluster IP (immutable: a wrong one is replaced).
impl Compactable for Service {
    type Detail = Option<Box<str>>;

    fn detail(&self) -> Option<Box<str>> {
        self.spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .map(Box::from)
    }

    fn restore(metadata: ObjectMeta, cluster_ip: &Option<Box<str>>) -> Service {
        Service {
            metadata,
            spec: cluster_ip.as_ref().map(|ip| ServiceSpec {
                cluster_ip: Some(ip.to_string()),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }
}

/// A token Secret's token (from `data`, or `stringData` as a test may give it).
impl Compactable for Secret {
    type Detail = Option<Box<[u8]>>;

    fn detail(&self) -> Option<Box<[u8]>> {
        let data = self.data.as_ref().and_then(|d| d.get(TOKEN_KEY));
        let string = || {
            self.string_data
                .as_ref()
                .and_then(|d| d.get(TOKEN_KEY))
                .map(|s| Box::from(s.as_bytes()))
        };
        data.map(|b| Box::from(b.0.as_slice())).or_else(string)
    }

    fn restore(metadata: ObjectMeta, token: &Option<Box<[u8]>>) -> Secret {
        Secret {
            metadata,
            data: token
                .as_ref()
                .map(|t| BTreeMap::from([(TOKEN_KEY.to_owned(), ByteString(t.to_vec()))])),
            ..Secret::default()
        }
    }
}

/// The other children are compared by their applied hash only (a home volume is never
/// updated): metadata alone.
macro_rules! metadata_only {
    ($($kind:ty),*) => {$(
        impl Compactable for $kind {
            type Detail = ();

            fn detail(&self) {}

            fn restore(metadata: ObjectMeta, (): &()) -> $kind {
                let mut object = <$kind>::default();
                *object.meta_mut() = metadata;
                object
            }
        }
    )*};
}
metadata_only!(
    PersistentVolumeClaim,
    NetworkPolicy,
    Namespace,
    ResourceQuota,
    LimitRange
);

use crate::operator::workspace::dask::{
    DaskAutoscaler, DaskCluster, DaskClusterSpec, DaskClusterStatus,
};

/// A DaskCluster's `status.phase`.
impl Compactable for DaskCluster {
    type Detail = Option<Box<str>>;

    fn detail(&self) -> Option<Box<str>> {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .map(Box::from)
    }

    fn restore(metadata: ObjectMeta, phase: &Option<Box<str>>) -> DaskCluster {
        DaskCluster {
            metadata,
            spec: DaskClusterSpec::default(),
            status: phase.as_ref().map(|p| DaskClusterStatus {
                phase: Some(p.to_string()),
            }),
        }
    }
}

/// An autoscaler: its applied hash only.
impl Compactable for DaskAutoscaler {
    type Detail = ();

    fn detail(&self) {}

    fn restore(metadata: ObjectMeta, (): &()) -> DaskAutoscaler {
        let mut object = DaskAutoscaler::new("", Default::default());
        *object.meta_mut() = metadata;
        object
    }
}

/// What is kept of one object.
#[derive(Clone, Debug)]
struct Record<D> {
    /// Its [`WORKSPACE_LABEL`].
    workspace: Option<Box<str>>,
    /// Its [`APPLIED_HASH_ANNOTATION`].
    hash: Option<Box<str>>,
    /// Set while it terminates.
    deletion: Option<Time>,
    /// Its trigger hash (see [`CompactWriter::apply`]).
    trigger: Option<u64>,
    detail: D,
}

impl<D> Record<D> {
    fn of<K: Compactable<Detail = D>>(
        object: &K,
        trigger: Option<u64>,
        label: &'static str,
    ) -> Record<D> {
        let meta = object.meta();
        Record {
            workspace: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(label))
                .map(|w| Box::from(w.as_str())),
            hash: applied_hash(object).map(Box::from),
            deletion: meta.deletion_timestamp.clone(),
            trigger,
            detail: object.detail(),
        }
    }

    fn restore<K: Compactable<Detail = D>>(
        &self,
        namespace: &str,
        name: &str,
        label: &'static str,
    ) -> K {
        let metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
            labels: self
                .workspace
                .as_ref()
                .map(|w| BTreeMap::from([(label.to_owned(), w.to_string())])),
            annotations: self
                .hash
                .as_ref()
                .map(|h| BTreeMap::from([(APPLIED_HASH_ANNOTATION.to_owned(), h.to_string())])),
            deletion_timestamp: self.deletion.clone(),
            ..ObjectMeta::default()
        };
        K::restore(metadata, &self.detail)
    }
}

/// Records by namespace (empty for cluster-scoped objects), then name.
type Objects<D> = HashMap<Box<str>, HashMap<Box<str>, Record<D>>>;
/// Names (sorted) by namespace, then Workspace label.
type Index = HashMap<Box<str>, HashMap<Box<str>, Vec<Box<str>>>>;

#[derive(Debug)]
struct State<D> {
    /// The label kept with each object and indexed: [`WORKSPACE_LABEL`], or the one given to
    /// [`compact_by`].
    label: &'static str,
    objects: Objects<D>,
    /// Only for the kinds listed by Workspace ([`Compact::of_workspace`]).
    by_workspace: Option<Index>,
    /// The objects of a relist, from its `Init` to its `InitDone`.
    relisted: Option<Objects<D>>,
}

fn index_insert(index: &mut Index, namespace: &str, label: &str, name: &str) {
    let names = index
        .entry(Box::from(namespace))
        .or_default()
        .entry(Box::from(label))
        .or_default();
    if let Err(at) = names.binary_search_by(|n| (**n).cmp(name)) {
        names.insert(at, Box::from(name));
    }
}

fn index_remove(index: &mut Index, namespace: &str, label: &str, name: &str) {
    let Some(labels) = index.get_mut(namespace) else {
        return;
    };
    if let Some(names) = labels.get_mut(label) {
        if let Ok(at) = names.binary_search_by(|n| (**n).cmp(name)) {
            names.remove(at);
        }
        if names.is_empty() {
            labels.remove(label);
        }
    }
    if labels.is_empty() {
        index.remove(namespace);
    }
}

impl<D> State<D> {
    /// Inserts `record`; returns the trigger hash of the object it replaces, if any.
    fn insert(&mut self, namespace: &str, name: &str, record: Record<D>) -> Option<Option<u64>> {
        let label = record.workspace.clone();
        let old = match self.objects.get_mut(namespace) {
            Some(names) => names.insert(Box::from(name), record),
            None => {
                self.objects.insert(
                    Box::from(namespace),
                    HashMap::from([(Box::from(name), record)]),
                );
                None
            }
        };
        let replaced = old.as_ref().map(|o| o.trigger);
        if let Some(index) = &mut self.by_workspace {
            let old = old.and_then(|o| o.workspace);
            if old != label {
                if let Some(old) = old {
                    index_remove(index, namespace, &old, name);
                }
                if let Some(label) = label {
                    index_insert(index, namespace, &label, name);
                }
            }
        }
        replaced
    }

    /// The trigger hash of the object `namespace/name`, if the store holds it.
    fn trigger_of(&self, namespace: &str, name: &str) -> Option<Option<u64>> {
        Some(self.objects.get(namespace)?.get(name)?.trigger)
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(names) = self.objects.get_mut(namespace) else {
            return;
        };
        let old = names.remove(name);
        if names.is_empty() {
            self.objects.remove(namespace);
        }
        if let (Some(index), Some(label)) = (&mut self.by_workspace, old.and_then(|o| o.workspace))
        {
            index_remove(index, namespace, &label, name);
        }
    }

    /// Replaces every object with a relist's, and the index with theirs.
    fn replace(&mut self, objects: Objects<D>) {
        self.objects = objects;
        if let Some(index) = &mut self.by_workspace {
            index.clear();
            for (namespace, names) in &self.objects {
                for (name, record) in names {
                    if let Some(label) = &record.workspace {
                        index_insert(index, namespace, label, name);
                    }
                }
            }
        }
    }
}

/// The reader of a compact store of `K` (cheap to clone; every clone reads the same store).
pub struct Compact<K: Compactable> {
    state: Arc<RwLock<State<K::Detail>>>,
    ready: watch::Receiver<bool>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Compactable> Clone for Compact<K> {
    fn clone(&self) -> Self {
        Compact {
            state: self.state.clone(),
            ready: self.ready.clone(),
            kind: PhantomData,
        }
    }
}

/// The writer of a [`Compact`] store: whoever runs the watch feeds it.
pub struct CompactWriter<K: Compactable> {
    state: Arc<RwLock<State<K::Detail>>>,
    ready: watch::Sender<bool>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An empty compact store of `K` (not ready) and its writer; `indexed`: listable by Workspace
/// ([`Compact::of_workspace`]).
pub fn compact<K: Compactable>(indexed: bool) -> (Compact<K>, CompactWriter<K>) {
    compact_by(WORKSPACE_LABEL, indexed)
}

/// [`compact`] keeping and indexing `label` instead of the Workspace label (the BatchJob
/// controller's Jobs and pods, by their BatchJob label): [`Compact::of_workspace`] then lists by
/// that label's value.
pub fn compact_by<K: Compactable>(
    label: &'static str,
    indexed: bool,
) -> (Compact<K>, CompactWriter<K>) {
    let state = Arc::new(RwLock::new(State {
        label,
        objects: HashMap::new(),
        by_workspace: indexed.then(HashMap::new),
        relisted: None,
    }));
    let (sender, receiver) = watch::channel(false);
    (
        Compact {
            state: state.clone(),
            ready: receiver,
            kind: PhantomData,
        },
        CompactWriter {
            state,
            ready: sender,
        },
    )
}

impl<K: Compactable> Compact<K> {
    /// The namespaced object `namespace/name`, as kept.
    pub fn get(&self, namespace: &str, name: &str) -> Option<K> {
        let state = read(&self.state);
        state
            .objects
            .get(namespace)?
            .get(name)
            .map(|record| record.restore(namespace, name, state.label))
    }

    /// The cluster-scoped object `name`, as kept.
    pub fn get_cluster(&self, name: &str) -> Option<K> {
        self.get("", name)
    }

    /// The objects of `namespace` labelled with Workspace `label`, sorted by name (none when
    /// the store is not indexed).
    pub fn of_workspace(&self, namespace: &str, label: &str) -> Vec<K> {
        let state = read(&self.state);
        let (Some(index), Some(objects)) = (&state.by_workspace, state.objects.get(namespace))
        else {
            return Vec::new();
        };
        let Some(names) = index.get(namespace).and_then(|labels| labels.get(label)) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| Some(objects.get(name)?.restore(namespace, name, state.label)))
            .collect()
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        read(&self.state).objects.values().map(HashMap::len).sum()
    }

    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the store has been listed (at least once), without waiting.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the store has been listed; `false` when its writer was dropped before.
    pub async fn wait_until_ready(&self) -> bool {
        self.ready.clone().wait_for(|ready| *ready).await.is_ok()
    }
}

impl<K: Compactable> CompactWriter<K> {
    /// Applies one watch event, as kube's `Writer::apply_watcher_event` does.
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        self.apply(event, |_| None);
    }

    /// Applies one watch event, and tells whether its object may change the outcome of the
    /// Workspace it belongs to: a deletion always, an object the store did not hold, or one
    /// whose `trigger` hash differs from the one kept with it (`trigger` hashes exactly what a
    /// reconciliation reads of the kind, see `reconcile::predicates`).
    ///
    /// This is kube-runtime's `predicate_filter` (`utils/predicate.rs`, controller-runtime's
    /// `predicate` package) with its cache folded into the store: the filter would keep its own
    /// map of every object's name, namespace, UID and hash besides the store's, 10,000 entries
    /// per child kind. An object of a relist is compared with the store as it was before the
    /// relist, as the filter compares it with the last hash it saw.
    pub fn apply(&mut self, event: &watcher::Event<K>, trigger: fn(&K) -> Option<u64>) -> bool {
        let key = |object: &K| {
            let meta = object.meta();
            Some((
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone()?,
            ))
        };
        let mut state = write(&self.state);
        match event {
            watcher::Event::Apply(object) => {
                let Some((namespace, name)) = key(object) else {
                    return false;
                };
                let hash = trigger(object);
                let record = Record::of(object, hash, state.label);
                state.insert(&namespace, &name, record) != Some(hash)
            }
            watcher::Event::Delete(object) => {
                if let Some((namespace, name)) = key(object) {
                    state.remove(&namespace, &name);
                }
                true
            }
            watcher::Event::Init => {
                state.relisted = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                let Some((namespace, name)) = key(object) else {
                    return false;
                };
                let hash = trigger(object);
                let before = state.trigger_of(&namespace, &name);
                let record = Record::of(object, hash, state.label);
                state
                    .relisted
                    .get_or_insert_default()
                    .entry(Box::from(namespace.as_str()))
                    .or_default()
                    .insert(Box::from(name.as_str()), record);
                before != Some(hash)
            }
            watcher::Event::InitDone => {
                let objects = state.relisted.take().unwrap_or_default();
                state.replace(objects);
                drop(state);
                self.ready.send_replace(true);
                false
            }
        }
    }
}

// The data sources' kinds (issue 11).

/// What is kept of a data source's PersistentVolume ([`Compactable`] for `PersistentVolume`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeDetail {
    /// Its Workspace's namespace ([`WORKSPACE_NAMESPACE_LABEL`]).
    namespace: Option<Box<str>>,
    /// The claim it is bound to in advance (`spec.claimRef`): namespace and name. The orphan
    /// sweep deletes a volume only once that claim is gone.
    claim: Option<(Box<str>, Box<str>)>,
    /// Its [`VOLUME_SOURCE_ANNOTATION`]: the hash of the immutable fields it was built with.
    source: Option<Box<str>>,
}

/// A data source's PersistentVolume (cluster-scoped): its Workspace's namespace, from
/// [`WORKSPACE_NAMESPACE_LABEL`] (the Workspace label alone does not say whose it is), its
/// claim reference and its [`VOLUME_SOURCE_ANNOTATION`]. The store indexes it under the empty
/// namespace by Workspace label; `Caches::data_volumes_of` keeps those of the right namespace.
impl Compactable for k8s_openapi::api::core::v1::PersistentVolume {
    type Detail = VolumeDetail;

    fn detail(&self) -> VolumeDetail {
        let claim = self
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| {
                let namespace = r.namespace.as_deref().unwrap_or_default();
                Some((Box::from(namespace), Box::from(r.name.as_deref()?)))
            });
        VolumeDetail {
            namespace: self
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(WORKSPACE_NAMESPACE_LABEL))
                .map(|ns| Box::from(ns.as_str())),
            claim,
            source: self
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(VOLUME_SOURCE_ANNOTATION))
                .map(|h| Box::from(h.as_str())),
        }
    }

    fn restore(
        mut metadata: ObjectMeta,
        detail: &VolumeDetail,
    ) -> k8s_openapi::api::core::v1::PersistentVolume {
        if let Some(namespace) = &detail.namespace {
            metadata
                .labels
                .get_or_insert_default()
                .insert(WORKSPACE_NAMESPACE_LABEL.to_owned(), namespace.to_string());
        }
        if let Some(source) = &detail.source {
            metadata
                .annotations
                .get_or_insert_default()
                .insert(VOLUME_SOURCE_ANNOTATION.to_owned(), source.to_string());
        }
        k8s_openapi::api::core::v1::PersistentVolume {
            metadata,
            spec: detail.claim.as_ref().map(|(namespace, name)| {
                k8s_openapi::api::core::v1::PersistentVolumeSpec {
                    claim_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
                        name: Some(name.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }),
            status: None,
        }
    }
}

/// A CSIDriver's `volumeLifecycleModes` (`None` when it lists none: Persistent only), what
/// `validate` and `build::csi_mode` read of it.
impl Compactable for k8s_openapi::api::storage::v1::CSIDriver {
    type Detail = Option<Box<[Box<str>]>>;

    fn detail(&self) -> Option<Box<[Box<str>]>> {
        self.spec
            .volume_lifecycle_modes
            .as_ref()
            .map(|modes| modes.iter().map(|m| Box::from(m.as_str())).collect())
    }

    fn restore(
        metadata: ObjectMeta,
        modes: &Option<Box<[Box<str>]>>,
    ) -> k8s_openapi::api::storage::v1::CSIDriver {
        k8s_openapi::api::storage::v1::CSIDriver {
            metadata,
            spec: k8s_openapi::api::storage::v1::CSIDriverSpec {
                volume_lifecycle_modes: modes
                    .as_ref()
                    .map(|modes| modes.iter().map(|m| m.to_string()).collect()),
                ..Default::default()
            },
        }
    }
}

// The catalogue ConfigMap (compared by its applied hash), and the credentials Secrets of the
// data sources, watched as metadata only (`metadata_watcher`: their data never reaches the
// operator; only their existence is read).
metadata_only!(
    k8s_openapi::api::core::v1::ConfigMap,
    kube::core::PartialObjectMeta<Secret>
);

impl<K: Compactable> Compact<K> {
    /// Every object of the store, as kept (for the small kinds read whole: the CSIDrivers).
    pub fn all(&self) -> Vec<K> {
        let state = read(&self.state);
        let label = state.label;
        state
            .objects
            .iter()
            .flat_map(|(namespace, names)| {
                names
                    .iter()
                    .map(move |(name, record)| record.restore(namespace, name, label))
            })
            .collect()
    }
}
