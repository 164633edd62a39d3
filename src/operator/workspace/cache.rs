//! The informer caches the Workspace controller reads instead of the API server.
//!
//! [`Caches`] holds a [`Store`] reader per watched kind; the controller owns the matching
//! [`CacheWriters`] and feeds them from its watch streams (kube's `reflector()`: the store is
//! written before any trigger filter sees an event, so the caches stay exact). A
//! [`ChildIndex`] finds a Workspace's pods and home volumes by their [`WORKSPACE_LABEL`]
//! without walking every cached object. [`Tokens`] bridges the cache lag of the token Secret.
//!
//! (kube-rs `examples/shared_stream_controllers.rs` and the `Controller::for_stream` docs:
//! `watcher() → reflect(writer) → touched_objects() → predicate_filter()`; client-go's
//! `Lister`s serve every read of a controller from its informers' indexers the same way.)

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Resource;
use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;

use super::WORKSPACE_LABEL;
use crate::api::v1alpha1::{DataSource, NodePool, Workspace, WorkspaceProfile};

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
    pub pods: Store<Pod>,
    /// Services of the operator.
    pub services: Store<Service>,
    /// Secrets of the operator (the API tokens).
    pub secrets: Store<Secret>,
    /// NetworkPolicies of the operator (per Workspace, and per user namespace).
    pub network_policies: Store<NetworkPolicy>,
    /// Home volumes (managed-by label).
    pub pvcs: Store<PersistentVolumeClaim>,
    /// Every WorkspaceProfile.
    pub profiles: Store<WorkspaceProfile>,
    /// Every NodePool.
    pub pools: Store<NodePool>,
    /// Every DataSource.
    pub data_sources: Store<DataSource>,
    /// Per-user mode: the users' namespaces (managed-by label).
    pub namespaces: Store<Namespace>,
    /// Per-user mode: the users' ResourceQuotas (managed-by label).
    pub resource_quotas: Store<ResourceQuota>,
    /// Per-user mode: the users' LimitRanges (managed-by label).
    pub limit_ranges: Store<LimitRange>,
    /// Pods by Workspace.
    pub pods_by_workspace: std::sync::Arc<ChildIndex>,
    /// Home volumes by Workspace.
    pub pvcs_by_workspace: std::sync::Arc<ChildIndex>,
}

/// The writers of [`Caches`]: whoever runs the watches feeds them (the controller, or a test).
pub struct CacheWriters {
    /// The Workspaces.
    pub workspaces: Writer<Workspace>,
    /// Pods.
    pub pods: Writer<Pod>,
    /// Services.
    pub services: Writer<Service>,
    /// Secrets.
    pub secrets: Writer<Secret>,
    /// NetworkPolicies.
    pub network_policies: Writer<NetworkPolicy>,
    /// Home volumes.
    pub pvcs: Writer<PersistentVolumeClaim>,
    /// WorkspaceProfiles.
    pub profiles: Writer<WorkspaceProfile>,
    /// NodePools.
    pub pools: Writer<NodePool>,
    /// DataSources.
    pub data_sources: Writer<DataSource>,
    /// Namespaces (per-user mode).
    pub namespaces: Writer<Namespace>,
    /// ResourceQuotas (per-user mode).
    pub resource_quotas: Writer<ResourceQuota>,
    /// LimitRanges (per-user mode).
    pub limit_ranges: Writer<LimitRange>,
}

impl Caches {
    /// Empty caches (not ready) and their writers.
    pub fn new() -> (Caches, CacheWriters) {
        let (workspaces, w_workspaces) = reflector::store();
        let (pods, w_pods) = reflector::store();
        let (services, w_services) = reflector::store();
        let (secrets, w_secrets) = reflector::store();
        let (network_policies, w_network_policies) = reflector::store();
        let (pvcs, w_pvcs) = reflector::store();
        let (profiles, w_profiles) = reflector::store();
        let (pools, w_pools) = reflector::store();
        let (data_sources, w_data_sources) = reflector::store();
        let (namespaces, w_namespaces) = reflector::store();
        let (resource_quotas, w_resource_quotas) = reflector::store();
        let (limit_ranges, w_limit_ranges) = reflector::store();
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
                namespaces,
                resource_quotas,
                limit_ranges,
                pods_by_workspace: Default::default(),
                pvcs_by_workspace: Default::default(),
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
                namespaces: w_namespaces,
                resource_quotas: w_resource_quotas,
                limit_ranges: w_limit_ranges,
            },
        )
    }

    /// Resolves once every store in use has been listed (`per_user`: the namespace objects
    /// too); returns `false` when a writer was dropped before (the controller is gone).
    pub async fn ready(&self, per_user: bool) -> bool {
        let shared = futures::try_join!(
            self.workspaces.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.services.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.network_policies.wait_until_ready(),
            self.pvcs.wait_until_ready(),
            self.profiles.wait_until_ready(),
            self.pools.wait_until_ready(),
            self.data_sources.wait_until_ready(),
        );
        if shared.is_err() {
            return false;
        }
        if !per_user {
            return true;
        }
        futures::try_join!(
            self.namespaces.wait_until_ready(),
            self.resource_quotas.wait_until_ready(),
            self.limit_ranges.wait_until_ready(),
        )
        .is_ok()
    }

    /// The pods labelled as `ws`'s, sorted by name.
    pub fn pods_of(&self, ws: &Workspace) -> Vec<Pod> {
        children(&self.pods, &self.pods_by_workspace, ws)
    }

    /// The home volumes labelled as `ws`'s, sorted by name.
    pub fn pvcs_of(&self, ws: &Workspace) -> Vec<PersistentVolumeClaim> {
        children(&self.pvcs, &self.pvcs_by_workspace, ws)
    }
}

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

fn children<K>(store: &Store<K>, index: &ChildIndex, ws: &Workspace) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let namespace = ws.namespace().unwrap_or_default();
    let label = crate::policy::names::label_value(&ws.name_any());
    index
        .names(&namespace, &label)
        .iter()
        .filter_map(|name| cached(store, &namespace, name))
        // The index may know a child the store already dropped, or the other way round.
        .filter(|k| {
            k.meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(WORKSPACE_LABEL))
                == Some(&label)
        })
        .collect()
}

type ChildKey = (String, String);

#[derive(Debug, Default)]
struct ChildIndexState {
    /// (namespace, workspace label) → child names.
    by_workspace: HashMap<ChildKey, BTreeSet<String>>,
    /// (namespace, child name) → workspace label.
    by_child: HashMap<ChildKey, String>,
    /// The children seen since a relist began.
    relisted: Option<HashSet<ChildKey>>,
}

impl ChildIndexState {
    fn remove(&mut self, child: &ChildKey) {
        if let Some(label) = self.by_child.remove(child) {
            let owner = (child.0.clone(), label);
            if let Some(names) = self.by_workspace.get_mut(&owner) {
                names.remove(&child.1);
                if names.is_empty() {
                    self.by_workspace.remove(&owner);
                }
            }
        }
    }

    fn upsert<K: Resource>(&mut self, object: &K) -> Option<ChildKey> {
        let child = (
            object.meta().namespace.clone()?,
            object.meta().name.clone()?,
        );
        self.remove(&child);
        if let Some(label) = object
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(WORKSPACE_LABEL))
        {
            self.by_workspace
                .entry((child.0.clone(), label.clone()))
                .or_default()
                .insert(child.1.clone());
            self.by_child.insert(child.clone(), label.clone());
        }
        Some(child)
    }
}

/// The children of each Workspace by their [`WORKSPACE_LABEL`], fed with the same watch events
/// as their store (a relist drops the children that vanished meanwhile).
#[derive(Debug, Default)]
pub struct ChildIndex(Mutex<ChildIndexState>);

impl ChildIndex {
    /// Applies one watch event.
    pub fn apply<K: Resource>(&self, event: &watcher::Event<K>) {
        let mut state = lock(&self.0);
        match event {
            watcher::Event::Apply(object) => {
                state.upsert(object);
            }
            watcher::Event::Delete(object) => {
                if let (Some(ns), Some(name)) = (&object.meta().namespace, &object.meta().name) {
                    state.remove(&(ns.clone(), name.clone()));
                }
            }
            watcher::Event::Init => state.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                if let Some(child) = state.upsert(object) {
                    state.relisted.get_or_insert_default().insert(child);
                }
            }
            watcher::Event::InitDone => {
                let seen = state.relisted.take().unwrap_or_default();
                let gone: Vec<ChildKey> = state
                    .by_child
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for child in gone {
                    state.remove(&child);
                }
            }
        }
    }

    /// The names of the children labelled `label` in `namespace`, sorted.
    pub fn names(&self, namespace: &str, label: &str) -> Vec<String> {
        lock(&self.0)
            .by_workspace
            .get(&(namespace.to_owned(), label.to_owned()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
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
    fn the_child_index_follows_events_and_relists() {
        let index = ChildIndex::default();
        index.apply(&watcher::Event::Apply(pod("a", "p1", Some("alice"))));
        index.apply(&watcher::Event::Apply(pod("a", "p0", Some("alice"))));
        index.apply(&watcher::Event::Apply(pod("b", "p2", Some("alice"))));
        index.apply(&watcher::Event::Apply(pod("a", "x", None)));
        assert_eq!(index.names("a", "alice"), ["p0", "p1"]);
        assert_eq!(index.names("b", "alice"), ["p2"]);
        // Relabelled: moves to bob.
        index.apply(&watcher::Event::Apply(pod("a", "p1", Some("bob"))));
        assert_eq!(index.names("a", "alice"), ["p0"]);
        assert_eq!(index.names("a", "bob"), ["p1"]);
        index.apply(&watcher::Event::Delete(pod("a", "p0", Some("alice"))));
        assert!(index.names("a", "alice").is_empty());
        // A relist that no longer shows p2.
        index.apply(&watcher::Event::<Pod>::Init);
        index.apply(&watcher::Event::InitApply(pod("a", "p1", Some("bob"))));
        index.apply(&watcher::Event::<Pod>::InitDone);
        assert!(index.names("b", "alice").is_empty());
        assert_eq!(index.names("a", "bob"), ["p1"]);
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
}
