//! `atelier.dev/v1alpha1`.

// Each `printcolumn(.., type_ = "string", ..)` of `#[kube(..)]` repeats `type_`, which clippy
// mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod batchjob;
mod common;
mod dask;
mod datasource;
mod nodepool;
mod profile;
mod workspace;

/// Condition types of the Workspace status.
pub mod conditions {
    /// Type of the condition that is `True` when the server is ready.
    pub const READY: &str = "Ready";
    /// Type of the condition that is `True` when the pod is bound to a node.
    pub const SCHEDULED: &str = "Scheduled";
}

pub use batchjob::{BatchJob, BatchJobPhase, BatchJobSpec, BatchJobStatus};
pub use common::{EnvMap, ResourceRequest, WorkspaceKind};
pub use dask::{DaskProfile, DaskSpec, DaskStatus, WorkerRange};
pub use datasource::{
    CsiMode, CsiSpec, DataSource, DataSourceSpec, GroupCredentials, IrodsSource, NfsSource,
    OgcServices, PvcSource, S3Source, SecretRef,
};
pub use nodepool::{
    Caps, GpuOffer, KueueQueue, NodePool, NodePoolCaps, NodePoolSpec, PoolPurpose, SlurmPool,
    SlurmTokenSecret, SlurmUserMapping,
};
pub use profile::{
    DesktopProfile, HomePolicy, HomeReclaim, WorkspaceProfile, WorkspaceProfileSpec,
};
pub use workspace::{DesiredState, Workspace, WorkspacePhase, WorkspaceSpec, WorkspaceStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD of this version, in the order `atelier crdgen` writes them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Workspace::crd(),
        WorkspaceProfile::crd(),
        NodePool::crd(),
        DataSource::crd(),
        BatchJob::crd(),
    ]
}
