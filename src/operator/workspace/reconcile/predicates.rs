//! Which watch events may change a Workspace's outcome: the trigger filters of the controller.
//!
//! Each predicate hashes exactly the fields the reconciliation reads from an object (for a pod:
//! what [`crate::operator::workspace::status::derive`] reads, plus the applied hash and the
//! deletion); `predicate_filter` (kube-runtime's `WatchStreamExt`, a rewrite of
//! controller-runtime's `predicate` package) drops an event whose hash did not change. So the
//! scheduler rewriting an unschedulable pod's condition timestamps, a `resourceVersion` bump or
//! a `managedFields` change never queues a reconciliation. The stores are written before the
//! filter, so the caches stay exact.
//!
//! A deleted object may look like its last version: [`mark_deleted`] marks the objects of
//! delete events (after the store saw them) so that their deletion always passes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::Resource;
use kube::runtime::watcher;

use super::APPLIED_HASH_ANNOTATION;
use crate::api::v1alpha1::Workspace;
use crate::operator::workspace::{GROUPS_ANNOTATION, WORKSPACE_LABEL};

/// Annotation [`mark_deleted`] puts on the object of a delete event (never stored, never sent).
pub const OBSERVED_DELETED: &str = "atelier.dev/observed-deleted";

/// Marks the object of a delete event with [`OBSERVED_DELETED`], so that the predicates see a
/// change even when the last version looked the same.
pub fn mark_deleted<K: Resource>(event: watcher::Event<K>) -> watcher::Event<K> {
    match event {
        watcher::Event::Delete(mut object) => {
            object
                .meta_mut()
                .annotations
                .get_or_insert_default()
                .insert(OBSERVED_DELETED.to_owned(), "true".to_owned());
            watcher::Event::Delete(object)
        }
        other => other,
    }
}

fn annotation<'a, K: Resource>(object: &'a K, key: &str) -> Option<&'a String> {
    object.meta().annotations.as_ref()?.get(key)
}

/// What every child's trigger hashes: the applied hash, the deletion (started or observed), the
/// Workspace it belongs to (label and owners).
fn hash_child<K: Resource>(object: &K, hasher: &mut DefaultHasher) {
    let meta = object.meta();
    annotation(object, APPLIED_HASH_ANNOTATION).hash(hasher);
    annotation(object, OBSERVED_DELETED).hash(hasher);
    meta.deletion_timestamp.as_ref().map(|t| t.0).hash(hasher);
    meta.labels
        .as_ref()
        .and_then(|l| l.get(WORKSPACE_LABEL))
        .hash(hasher);
    for owner in meta.owner_references.iter().flatten() {
        owner.uid.hash(hasher);
    }
}

/// The trigger hash of a Secret, NetworkPolicy, PVC or per-user namespace object.
pub fn child_trigger<K: Resource>(object: &K) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    hash_child(object, &mut hasher);
    Some(hasher.finish())
}

/// The trigger hash of a Service: a child's, plus its cluster IP (immutable; a wrong one is
/// replaced).
pub fn service_trigger(service: &Service) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    hash_child(service, &mut hasher);
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_ref())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The trigger hash of a pod: a child's, plus every field `status::derive` reads: the node, the
/// phase, message and reason; each condition's type, status, reason and message (and the
/// `Ready` condition's transition time once it is `True`: it is the start time); each (init)
/// container's name, readiness, restarts, waiting reason and message, and last termination.
/// Probe and transition times of the other conditions are left out.
pub fn pod_trigger(pod: &Pod) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    hash_child(pod, &mut hasher);
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .hash(&mut hasher);
    let Some(status) = pod.status.as_ref() else {
        return Some(hasher.finish());
    };
    (&status.phase, &status.message, &status.reason).hash(&mut hasher);
    for c in status.conditions.iter().flatten() {
        (&c.type_, &c.status, &c.reason, &c.message).hash(&mut hasher);
        if c.type_ == "Ready" && c.status == "True" {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .hash(&mut hasher);
        }
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in containers {
        (&cs.name, cs.ready, cs.restart_count).hash(&mut hasher);
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        waiting.map(|w| (&w.reason, &w.message)).hash(&mut hasher);
        let terminated = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        terminated
            .map(|t| (t.exit_code, &t.reason, &t.message))
            .hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// The trigger hash of an input (WorkspaceProfile, NodePool, DataSource): `validate` reads
/// their specs only, so their generation, and their deletion. A relist of unchanged pools then
/// requeues no Workspace.
pub fn input_trigger<K: Resource>(object: &K) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    object.meta().generation.hash(&mut hasher);
    annotation(object, OBSERVED_DELETED).hash(&mut hasher);
    Some(hasher.finish())
}

/// The trigger hash of a Workspace: what its reconciliation starts from besides its own status
/// (which only the operator and the hub's `lastActivity` write): the generation (spec), the
/// groups annotation, the finalizers and the deletion.
pub fn workspace_trigger(ws: &Workspace) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let meta = &ws.metadata;
    meta.generation.hash(&mut hasher);
    annotation(ws, GROUPS_ANNOTATION).hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .hash(&mut hasher);
    annotation(ws, OBSERVED_DELETED).hash(&mut hasher);
    Some(hasher.finish())
}

/// The trigger hash of a CSIDriver: its `volumeLifecycleModes` (what `validate` and
/// `build::csi_mode` read of it); a driver that appears or goes triggers too (the store passes on
/// a new object and every deletion).
pub fn csi_driver_trigger(driver: &CSIDriver) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    driver.spec.volume_lifecycle_modes.hash(&mut hasher);
    Some(hasher.finish())
}

/// The trigger hash of a credentials Secret's metadata: constant, since only its existence is
/// read (a Secret that appears triggers, as does its deletion; an edit of its keys does not
/// change what the operator builds: the pod reads them by `secretKeyRef`).
pub fn existence_trigger<K>(_: &K) -> Option<u64> {
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn unschedulable() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "ws-alice", "namespace": "team", "resourceVersion": "1",
                "labels": {WORKSPACE_LABEL: "alice"},
                "annotations": {APPLIED_HASH_ANNOTATION: "h1"},
                "managedFields": [{"manager": "kube-scheduler", "operation": "Update"}],
            },
            "spec": {"containers": [{"name": "notebook"}]},
            "status": {
                "phase": "Pending",
                "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu.",
                    "lastProbeTime": null, "lastTransitionTime": "2026-01-01T09:00:00Z",
                }],
            },
        }))
        .expect("a pod")
    }

    fn time(s: &str) -> Time {
        serde_json::from_value(json!(s)).expect("a time")
    }

    #[test]
    fn the_scheduler_rewriting_an_unschedulable_pod_does_not_trigger() {
        let pod = unschedulable();
        let before = pod_trigger(&pod);
        let mut churned = pod.clone();
        churned.metadata.resource_version = Some("2".into());
        churned.metadata.managed_fields = None;
        let conditions = churned
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .expect("conditions");
        conditions[0].last_transition_time = Some(time("2026-01-01T09:05:00Z"));
        conditions[0].last_probe_time = Some(time("2026-01-01T09:05:00Z"));
        assert_eq!(
            pod_trigger(&churned),
            before,
            "timestamps and versions only"
        );

        // A new message (other nodes, other reasons) is what the status shows: it triggers.
        let mut moved = churned.clone();
        moved
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .expect("conditions")[0]
            .message = Some("0/2 nodes are available: 2 Insufficient cpu.".into());
        assert_ne!(pod_trigger(&moved), before);
    }

    #[test]
    fn what_the_status_derives_from_triggers() {
        let pod = unschedulable();
        let before = pod_trigger(&pod);
        type Change = Box<dyn Fn(&mut Pod)>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "phase",
                Box::new(|p| p.status.as_mut().unwrap().phase = Some("Running".into())),
            ),
            (
                "node",
                Box::new(|p| p.spec.as_mut().unwrap().node_name = Some("node-1".into())),
            ),
            (
                "deletion",
                Box::new(|p| p.metadata.deletion_timestamp = Some(time("2026-01-01T10:00:00Z"))),
            ),
            (
                "applied hash",
                Box::new(|p| {
                    p.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .insert(APPLIED_HASH_ANNOTATION.into(), "h2".into());
                }),
            ),
            (
                "container state",
                Box::new(|p| {
                    p.status.as_mut().unwrap().container_statuses = Some(vec![
                        serde_json::from_value(json!({
                            "name": "notebook", "ready": false, "restartCount": 0, "image": "i",
                            "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff"}},
                        }))
                        .expect("a container status"),
                    ]);
                }),
            ),
        ];
        for (what, change) in changes {
            let mut changed = pod.clone();
            change(&mut changed);
            assert_ne!(pod_trigger(&changed), before, "{what}");
        }
        // The deletion of a pod that looked the same.
        let watcher::Event::Delete(deleted) = mark_deleted(watcher::Event::Delete(pod.clone()))
        else {
            panic!("still a delete");
        };
        assert_ne!(pod_trigger(&deleted), before, "observed deletion");
        let watcher::Event::Apply(applied) = mark_deleted(watcher::Event::Apply(pod.clone()))
        else {
            panic!("still an apply");
        };
        assert_eq!(pod_trigger(&applied), before, "only deletes are marked");
    }

    #[test]
    fn services_trigger_on_their_cluster_ip_and_workspaces_not_on_their_status() {
        let mut service: Service = serde_json::from_value(json!({
            "metadata": {"name": "ws-alice", "annotations": {APPLIED_HASH_ANNOTATION: "h"}},
            "spec": {"clusterIP": "None"},
        }))
        .expect("a service");
        let before = service_trigger(&service);
        service.metadata.resource_version = Some("7".into());
        assert_eq!(service_trigger(&service), before);
        service.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.7".into());
        assert_ne!(service_trigger(&service), before);

        let mut ws = crate::operator::workspace::fixtures::workspace();
        let before = workspace_trigger(&ws);
        ws.status = Some(Default::default());
        ws.metadata.resource_version = Some("99".into());
        assert_eq!(workspace_trigger(&ws), before, "status and versions only");
        ws.metadata.generation = Some(2);
        assert_ne!(workspace_trigger(&ws), before, "the spec changed");
        let gen2 = workspace_trigger(&ws);
        kube::ResourceExt::annotations_mut(&mut ws).insert(GROUPS_ANNOTATION.into(), "ml".into());
        assert_ne!(workspace_trigger(&ws), gen2, "the groups changed");

        let mut pool = crate::operator::workspace::fixtures::pool();
        pool.metadata.generation = Some(1);
        let before = input_trigger(&pool);
        pool.metadata.resource_version = Some("5".into());
        assert_eq!(input_trigger(&pool), before, "a relist of the same pool");
        pool.metadata.generation = Some(2);
        assert_ne!(input_trigger(&pool), before, "a spec change");
        let gen2 = input_trigger(&pool);
        let watcher::Event::Delete(gone) = mark_deleted(watcher::Event::Delete(pool)) else {
            panic!("still a delete");
        };
        assert_ne!(input_trigger(&gone), gen2, "a deletion");
    }
}
