//! The dask-kubernetes operator's kinds, as far as Atelier writes and reads them.
//!
//! `kubernetes.dask.org/v1` `DaskCluster` and `DaskAutoscaler` (dask/dask-kubernetes
//! `dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml`
//! and `daskautoscaler.yaml`, 2026.3.0): only the fields Atelier sets, and of the status only
//! `phase`. `spec.idleTimeout` is the operator's own idle shutdown: it deletes the DaskCluster
//! (the Workspace controller then records the stop, see `reconcile::dask`). Their CRDs belong to the dask-kubernetes operator's chart: `crdgen` never emits
//! them (they live here, not in `crate::api`). The pod specs inside are built with Kubernetes
//! 1.21's fields only, the schema of those CRDs.

use k8s_openapi::api::core::v1::{PodSpec, ServiceSpec};
use std::sync::atomic::{AtomicU8, Ordering};

use kube::{CustomResource, ResourceExt};

use crate::api::v1alpha1::Workspace;
use crate::policy::names;
use serde::{Deserialize, Serialize};

/// `spec` of a `DaskCluster`: the scheduler's pod and Service, and the default worker group's
/// pod template and replica count (required by the CRD: `scheduler.spec.containers`,
/// `scheduler.service`, `worker.spec.containers`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubernetes.dask.org",
    version = "v1",
    kind = "DaskCluster",
    plural = "daskclusters",
    namespaced,
    status = "DaskClusterStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct DaskClusterSpec {
    /// Seconds the scheduler may stay idle (no task, no client) before the dask-kubernetes
    /// operator deletes the whole cluster (`daskcluster_autoshutdown`, every 5 s, asking the
    /// scheduler's `check_idle`); absent or 0: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<i64>,
    /// The scheduler's pod and Service.
    pub scheduler: DaskScheduler,
    /// The default worker group.
    pub worker: DaskWorker,
}

/// `spec.scheduler` of a `DaskCluster`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DaskScheduler {
    /// The scheduler's pod spec (the operator runs it as a one-replica Deployment).
    pub spec: PodSpec,
    /// The scheduler's Service, copied verbatim by the operator; it looks its ports up by the
    /// names `tcp-comm` and `http-dashboard`.
    pub service: ServiceSpec,
}

/// `spec.worker` of a `DaskCluster`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DaskWorker {
    /// Workers of the default group (the autoscaler moves it between its bounds).
    pub replicas: i32,
    /// Each worker's pod spec (one Deployment per worker).
    pub spec: PodSpec,
}

/// `status` of a `DaskCluster`: the operator's `phase` (`Created`, `Pending`, `Running`; it
/// says `Running` as soon as the scheduler's Service exists, so readiness is judged by the
/// scheduler's pod instead).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DaskClusterStatus {
    /// The operator's phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// `spec` of a `DaskAutoscaler`: keeps the cluster's default worker group between `minimum`
/// and `maximum`, asking the scheduler for its adaptive target (dask-kubernetes
/// `operator/controller/controller.py`, `daskautoscaler_adapt`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubernetes.dask.org",
    version = "v1",
    kind = "DaskAutoscaler",
    plural = "daskautoscalers",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct DaskAutoscalerSpec {
    /// The DaskCluster's name.
    pub cluster: String,
    /// Fewest workers.
    pub minimum: i32,
    /// Most workers.
    pub maximum: i32,
}

/// What the operator knows of the DaskCluster CRD.
#[derive(Debug, Default)]
pub struct DaskCrd(AtomicU8);

/// The states of [`DaskCrd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdState {
    /// Not listed yet.
    Unknown,
    /// The list answered 404.
    Missing,
    /// Listed.
    Present,
}

impl DaskCrd {
    /// The current state.
    pub fn state(&self) -> CrdState {
        match self.0.load(Ordering::Acquire) {
            1 => CrdState::Missing,
            2 => CrdState::Present,
            _ => CrdState::Unknown,
        }
    }

    /// Records `state`; returns whether it changed.
    pub fn set(&self, state: CrdState) -> bool {
        let v = match state {
            CrdState::Unknown => 0,
            CrdState::Missing => 1,
            CrdState::Present => 2,
        };
        self.0.swap(v, Ordering::AcqRel) != v
    }
}

/// Name prefix of the pods of `ws`'s Dask cluster.
pub fn dask_pod_prefix(ws: &Workspace) -> String {
    format!("{}-", names::dask_cluster_name(&ws.name_any()))
}
