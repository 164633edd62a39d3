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

use futures::FutureExt;
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
    /// Resolves once every store but the Workspaces' has been listed ([`Caches::ready`]).
    children_ready: Readiness,
    /// Resolves once the per-user stores have been listed.
    per_user_ready: Readiness,
}

/// One future per group of stores, polled by whoever awaits it first and shared by every
/// reconciliation (see [`Caches::ready`]).
type Readiness = futures::future::Shared<futures::future::BoxFuture<'static, bool>>;

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
            async move {
                futures::try_join!(
                    stores.0.wait_until_ready(),
                    stores.1.wait_until_ready(),
                    stores.2.wait_until_ready(),
                    stores.3.wait_until_ready(),
                    stores.4.wait_until_ready(),
                    stores.5.wait_until_ready(),
                    stores.6.wait_until_ready(),
                    stores.7.wait_until_ready(),
                )
                .is_ok()
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
                futures::try_join!(
                    stores.0.wait_until_ready(),
                    stores.1.wait_until_ready(),
                    stores.2.wait_until_ready(),
                )
                .is_ok()
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
                namespaces,
                resource_quotas,
                limit_ranges,
                pods_by_workspace: Default::default(),
                pvcs_by_workspace: Default::default(),
                children_ready,
                per_user_ready,
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
            limit_ranges
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
