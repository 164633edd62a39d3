//! The BatchJob controller: dereference → validate → admit → build → apply → status, as the
//! Workspace controller ([`crate::operator::workspace`]) does, beside it in the same process and
//! under the same Lease.
//!
//! - `validate` is [`crate::policy::batch::validate_job`] (pure, shared with the hub); its
//!   inputs (profiles, pools, data sources) come from the Workspace controller's caches, and the
//!   caps from the same [`crate::policy::UsageIndex`] ([`crate::policy::batch::admit_job`]): a
//!   user's jobs and workspaces count together.
//! - On a Kubernetes pool, [`build::build_job`] (pure) makes a `batch/v1` Job whose pod is built
//!   like a workspace pod; it is created once (a Job's spec is immutable but for `suspend`,
//!   which Kueue owns on a pool with a `LocalQueue`) and owned by the BatchJob, so deleting the
//!   BatchJob lets the garbage collector remove it. Its status comes from the Job and its pod
//!   ([`status::kubernetes_state`]), read from compact caches ([`cache`]).
//! - On a Slurm pool, the job goes to a [`BatchSystem`] made by [`Context::systems`], with the
//!   pool's signing key read from the cache of labelled Secrets; the BatchJob carries
//!   [`BATCHJOB_FINALIZER`] so that deleting it cancels the Slurm job, and it is polled every
//!   [`reconcile::REQUEUE_POLL`].
//!
//! Every refusal is in the status (`Admitted=False`, the rule as reason) and in an Event.

use std::sync::{Arc, Mutex};

use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::batch::{BatchError, BatchSystem};
use crate::operator::RetryBackoff;
use crate::operator::workspace::cache::Expectations;
use crate::policy::batch::SlurmTarget;

pub mod build;
pub mod cache;
#[cfg(test)]
mod fixtures;
pub mod reconcile;
pub mod status;

#[cfg(test)]
mod build_tests;
#[cfg(test)]
mod tests;

/// Name of the BatchJob controller (metrics, the Events' reporting controller).
pub const BATCHJOB_CONTROLLER_NAME: &str = "batchjob-controller";
/// Finalizer of a Slurm-backed BatchJob: its Slurm job is cancelled before it goes.
pub const BATCHJOB_FINALIZER: &str = "atelier.dev/batchjob-cleanup";
/// Label of a BatchJob's Job and pods: the BatchJob's name (as a label value).
pub const BATCHJOB_LABEL: &str = "atelier.dev/batchjob";
/// Kueue's queue label (`kueue.x-k8s.io/queue-name`, as Kueue's jobframework reads it).
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// Label of the Secrets holding a Slurm cluster's JWT signing key, the only Secrets of the
/// operator's namespace it watches for Slurm pools (`slurm.tokenSecret`).
pub const SLURM_KEY_SELECTOR: &str = "atelier.dev/slurm-key=true";
/// Default `ttlSecondsAfterFinished` of the Jobs (`--batch-job-ttl-seconds`): a finished Job and
/// its pod stay an hour (logs), then go; the BatchJob keeps the status.
pub const DEFAULT_JOB_TTL_SECONDS: i32 = 3600;

/// Settings of the BatchJob controller's builders.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSettings {
    /// `ttlSecondsAfterFinished` of every Job.
    pub ttl_seconds_after_finished: i32,
    /// Namespace of the Slurm signing-key Secrets (the operator's own).
    pub secrets_namespace: String,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            ttl_seconds_after_finished: DEFAULT_JOB_TTL_SECONDS,
            secrets_namespace: "atelier".to_owned(),
        }
    }
}

/// Makes the [`BatchSystem`] of a Slurm target from its signing key.
pub type Systems =
    dyn Fn(&SlurmTarget, Vec<u8>) -> Result<Arc<dyn BatchSystem>, BatchError> + Send + Sync;

/// The Slurm system of a pool: slurmrestd at `target.rest_url`, tokens signed with `jwt_key`.
pub fn slurm(target: &SlurmTarget, jwt_key: Vec<u8>) -> Result<Arc<dyn BatchSystem>, BatchError> {
    Ok(Arc::new(crate::batch::slurm::Slurm::new(target, jwt_key)?))
}

/// In tests that need no Slurm: every Slurm job is refused with this error, in its status.
#[cfg(test)]
pub fn no_slurm(_: &SlurmTarget, _: Vec<u8>) -> Result<Arc<dyn BatchSystem>, BatchError> {
    Err(BatchError::Other {
        system: "slurm",
        message: "this operator is built without the Slurm client".to_owned(),
    })
}

/// `result` label of the reconciliation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, or the error's metric label.
    pub result: &'static str,
}

/// `phase` label of the finished-jobs counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub phase: &'static str,
    /// `kubernetes` or `slurm`.
    pub system: &'static str,
}

/// The BatchJob controller's metrics.
#[derive(Debug, Default)]
pub struct BatchMetrics {
    /// Reconciliations by result (`ok` or the error's label).
    pub reconciliations: Family<ResultLabels, Counter>,
    /// Jobs seen finishing, by phase and system.
    pub finished: Family<PhaseLabels, Counter>,
    /// Jobs handed to a batch system (Jobs created, Slurm jobs submitted).
    pub submitted: Counter,
}

impl BatchMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = BatchMetrics::default();
        registry.register(
            "batchjob_reconciliations",
            "BatchJob reconciliations, by result",
            metrics.reconciliations.clone(),
        );
        registry.register(
            "batchjobs_finished",
            "BatchJobs seen finishing, by phase and batch system",
            metrics.finished.clone(),
        );
        registry.register(
            "batchjobs_submitted",
            "BatchJobs handed to a batch system",
            metrics.submitted.clone(),
        );
        metrics
    }
}

/// What the BatchJob controller's reconciliations share, beside the Workspace controller's
/// [`crate::operator::Context`] (client, settings, input caches, usage index).
pub struct Context {
    /// The Workspace controller's context: its client, settings, the inputs' caches and the
    /// usage index.
    pub shared: Arc<crate::operator::Context>,
    /// Builder settings.
    pub settings: BatchSettings,
    /// The controller's own caches.
    pub caches: cache::JobCaches,
    /// Who publishes the Events about BatchJobs.
    pub reporter: Reporter,
    /// Metrics.
    pub metrics: Arc<BatchMetrics>,
    /// Back-off of failing BatchJobs.
    pub backoff: RetryBackoff,
    /// Jobs created that the cache does not show yet.
    pub expected: Arc<Expectations>,
    /// Makes the Slurm system of a pool.
    pub systems: Box<Systems>,
    /// The writers of `caches`, until the controller (or a test) takes them.
    writers: Mutex<Option<cache::JobCacheWriters>>,
}

impl Context {
    /// A context with empty caches.
    pub fn new(
        shared: Arc<crate::operator::Context>,
        settings: BatchSettings,
        reporter: Reporter,
        metrics: Arc<BatchMetrics>,
        systems: Box<Systems>,
    ) -> Self {
        let (caches, writers) = cache::JobCaches::new();
        Context {
            shared,
            settings,
            caches,
            reporter,
            metrics,
            backoff: RetryBackoff::default(),
            expected: Arc::default(),
            systems,
            writers: Mutex::new(Some(writers)),
        }
    }

    /// The writers of [`Context::caches`]; `None` once taken.
    pub fn take_cache_writers(&self) -> Option<cache::JobCacheWriters> {
        match self.writers.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// A recorder for one Event (see [`crate::operator::Context::recorder`]).
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.shared.client.clone(), self.reporter.clone())
    }
}

/// The `reportingController` of the BatchJob Events.
pub fn reporter() -> Reporter {
    Reporter {
        controller: format!("atelier.dev/{BATCHJOB_CONTROLLER_NAME}"),
        instance: std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|s| !s.is_empty()),
    }
}
