//! The batch systems a BatchJob runs on, behind one trait: [`BatchSystem`] (submit, status,
//! cancel, logs). Its implementations: Kubernetes Jobs (with Kueue when the pool names a
//! `LocalQueue`), Slurm through slurmrestd (`slurm`), and the local backend's processes; PBS Pro
//! is a planned fourth (README, "Batch jobs").
//!
//! Every implementation takes a [`ValidatedBatchJob`] (`policy::batch`): the rules, routing and
//! caps are decided once, before any system sees the job.

pub mod slurm;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use thiserror::Error;

use crate::api::v1alpha1::BatchJobPhase;
use crate::policy::batch::ValidatedBatchJob;

/// What a batch system says of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobState {
    /// Its phase, in Atelier's words.
    pub phase: BatchJobPhase,
    /// The command's exit code, once finished.
    pub exit_code: Option<i32>,
    /// When it started running.
    pub start_time: Option<DateTime<Utc>>,
    /// When it finished.
    pub completion_time: Option<DateTime<Utc>>,
    /// Why it is in its phase, as a CamelCase reason (`OOMKilled`, `DeadlineExceeded`,
    /// `Cancelled`, `NodeFail`, `ImagePullBackOff`…).
    pub reason: Option<String>,
    /// Human-readable explanation.
    pub message: Option<String>,
    /// Where it runs: the pod (Kubernetes), the node (Slurm), the process (local).
    pub placement: Option<String>,
}

impl JobState {
    /// A job in `phase` with nothing else known.
    pub fn new(phase: BatchJobPhase) -> Self {
        JobState {
            phase,
            exit_code: None,
            start_time: None,
            completion_time: None,
            reason: None,
            message: None,
            placement: None,
        }
    }
}

/// Why a batch system call failed.
#[derive(Debug, Error)]
pub enum BatchError {
    /// The system did not answer (connection refused, timeout): retry later.
    #[error("{system} unreachable: {message}")]
    Unreachable {
        /// `kubernetes`, `slurm`, `local`.
        system: &'static str,
        /// What failed.
        message: String,
    },
    /// The system refused the job (bad partition, account, QOS, resources…): a final answer.
    #[error("{system} refused the job: {message}")]
    Refused {
        /// `kubernetes`, `slurm`, `local`.
        system: &'static str,
        /// The system's own words.
        message: String,
    },
    /// Authentication or authorisation failed (a bad key or token).
    #[error("{system} refused the credentials: {message}")]
    Unauthorized {
        /// `kubernetes`, `slurm`, `local`.
        system: &'static str,
        /// The system's own words (never the credentials).
        message: String,
    },
    /// The system does not know the job (it was purged, or never submitted).
    #[error("{system} does not know job {id}")]
    NotFound {
        /// `kubernetes`, `slurm`, `local`.
        system: &'static str,
        /// The system's id of the job.
        id: String,
    },
    /// Anything else (an answer that does not parse…).
    #[error("{system}: {message}")]
    Other {
        /// `kubernetes`, `slurm`, `local`.
        system: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A batch system. `id` is the system's id of a job, as [`BatchSystem::submit`] returned it
/// (a Job's name, a Slurm job id, a local job's key).
pub trait BatchSystem: Send + Sync {
    /// `kubernetes`, `slurm` or `local` (the BatchJob status's `system`).
    fn system(&self) -> &'static str;

    /// Hands the job to the system; returns its id there. Submitting the same validated job
    /// twice must not run it twice where the system allows that to be avoided (a Job's name).
    fn submit<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
    ) -> BoxFuture<'a, Result<String, BatchError>>;

    /// What the system says of the job now.
    fn status<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>>;

    /// Stops the job (queued or running); a finished job stays as it is.
    fn cancel<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), BatchError>>;

    /// The job's output (stdout and stderr), its last `limit` bytes at most.
    fn logs<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
        id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<String, BatchError>>;
}
