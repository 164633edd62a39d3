//! The informer caches of the BatchJob controller: the BatchJobs (kube's reflector store, read
//! whole), their Jobs and pods ([`Compact`] stores indexed by [`BATCHJOB_LABEL`], keeping only
//! what the status reads), and the Slurm signing-key Secrets of the operator's namespace
//! (labelled [`super::SLURM_KEY_SELECTOR`]). The inputs (profiles, pools, data sources, CSI
//! drivers) are the Workspace controller's caches, shared through its context.
//!
//! [`StatusExpectations`] bridges the lag of the controller's own status writes, as the
//! Workspace controller's `Expectations` do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use tokio::time::Instant;

use super::BATCHJOB_LABEL;
use crate::api::v1alpha1::{BatchJob, BatchJobStatus};
use crate::operator::workspace::cache::{Cached, Compact, CompactWriter, Compactable, compact_by};
use crate::policy::names;

/// The BatchJob is read whole (spec, status, groups annotation, finalizers).
impl Cached for BatchJob {}
/// A Slurm key Secret is read whole (its key), once per reconciliation of a Slurm job.
impl Cached for Secret {}

/// What is kept of a Job: `spec.suspend` and what [`super::status::kubernetes_state`] reads of
/// its status (conditions, start and completion times, pod counts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobDetail {
    suspend: Option<bool>,
    status: Option<Box<JobStatus>>,
}

impl Compactable for Job {
    type Detail = JobDetail;

    fn detail(&self) -> JobDetail {
        JobDetail {
            suspend: self.spec.as_ref().and_then(|s| s.suspend),
            status: self.status.as_ref().map(|s| {
                Box::new(JobStatus {
                    conditions: s.conditions.as_ref().map(|conditions| {
                        conditions
                            .iter()
                            .map(|c| JobCondition {
                                type_: c.type_.clone(),
                                status: c.status.clone(),
                                reason: c.reason.clone(),
                                message: c.message.clone(),
                                last_transition_time: c.last_transition_time.clone(),
                                last_probe_time: None,
                            })
                            .collect()
                    }),
                    start_time: s.start_time.clone(),
                    completion_time: s.completion_time.clone(),
                    active: s.active,
                    succeeded: s.succeeded,
                    failed: s.failed,
                    ..JobStatus::default()
                })
            }),
        }
    }

    fn restore(metadata: ObjectMeta, detail: &JobDetail) -> Job {
        Job {
            metadata,
            spec: Some(JobSpec {
                suspend: detail.suspend,
                ..JobSpec::default()
            }),
            status: detail.status.as_deref().cloned(),
        }
    }
}

/// The readers of the BatchJob controller's stores.
#[derive(Clone)]
pub struct JobCaches {
    /// The BatchJobs.
    pub batchjobs: Store<BatchJob>,
    /// The Jobs of the operator (managed-by label), by BatchJob label.
    pub jobs: Compact<Job>,
    /// The Jobs' pods (BatchJob label), by BatchJob label.
    pub pods: Compact<Pod>,
    /// The Slurm signing-key Secrets.
    pub slurm_keys: Store<Secret>,
    /// The statuses written that the BatchJob cache does not show yet.
    pub statuses: std::sync::Arc<StatusExpectations>,
    ready: Shared<BoxFuture<'static, bool>>,
}

/// The writers of [`JobCaches`] (the controller's watches feed them).
pub struct JobCacheWriters {
    /// BatchJobs.
    pub batchjobs: Writer<BatchJob>,
    /// Jobs.
    pub jobs: CompactWriter<Job>,
    /// Pods.
    pub pods: CompactWriter<Pod>,
    /// Slurm key Secrets.
    pub slurm_keys: Writer<Secret>,
}

impl JobCaches {
    /// Empty caches (not ready) and their writers.
    pub fn new() -> (JobCaches, JobCacheWriters) {
        let (batchjobs, w_batchjobs) = reflector::store();
        let (jobs, w_jobs) = compact_by(BATCHJOB_LABEL, true);
        let (pods, w_pods) = compact_by(BATCHJOB_LABEL, true);
        let (slurm_keys, w_slurm_keys) = reflector::store();
        let ready = {
            let (jobs, pods, keys): (Compact<Job>, Compact<Pod>, Store<Secret>) =
                (jobs.clone(), pods.clone(), slurm_keys.clone());
            async move {
                let (jobs, pods, keys) = futures::join!(
                    jobs.wait_until_ready(),
                    pods.wait_until_ready(),
                    keys.wait_until_ready()
                );
                jobs && pods && keys.is_ok()
            }
            .boxed()
            .shared()
        };
        (
            JobCaches {
                batchjobs,
                jobs,
                pods,
                slurm_keys,
                statuses: Default::default(),
                ready,
            },
            JobCacheWriters {
                batchjobs: w_batchjobs,
                jobs: w_jobs,
                pods: w_pods,
                slurm_keys: w_slurm_keys,
            },
        )
    }

    /// Resolves once the Jobs, pods and keys are listed; `false` when a writer was dropped
    /// before. (One shared future: kube's `Store::wait_until_ready` wakes one waiter only.)
    pub async fn ready(&self) -> bool {
        self.ready.clone().await
    }

    /// The Job of `job` (same name, same namespace), as kept.
    pub fn job_of(&self, job: &BatchJob) -> Option<Job> {
        self.jobs
            .get(&job.namespace().unwrap_or_default(), &job.name_any())
    }

    /// The pods of `job`'s Job, sorted by name.
    pub fn pods_of(&self, job: &BatchJob) -> Vec<Pod> {
        self.pods.of_workspace(
            &job.namespace().unwrap_or_default(),
            &names::label_value(&job.name_any()),
        )
    }

    /// The value of key `key` of Secret `name` of `namespace`, if cached.
    pub fn slurm_key(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        let secret = self
            .slurm_keys
            .get(&ObjectRef::new(name).within(namespace))?;
        if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Some(value.0.clone());
        }
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
    }
}

/// How long a written status is preferred to the cached one.
pub const STATUS_EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// The statuses the controller wrote that the BatchJob watch has not shown yet: the next
/// reconciliation starts from them (else a reconciliation triggered by the Job's creation would
/// write the same status, and its Event, again).
#[derive(Debug, Default)]
pub struct StatusExpectations(Mutex<HashMap<(String, String), (BatchJobStatus, Instant)>>);

impl StatusExpectations {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), (BatchJobStatus, Instant)>> {
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records the status written to `job`.
    pub fn wrote(&self, job: &BatchJob, status: &BatchJobStatus) {
        self.lock().insert(
            (job.namespace().unwrap_or_default(), job.name_any()),
            (status.clone(), Instant::now()),
        );
    }

    /// The status last written to `job` while the cache shows another one (less than
    /// [`STATUS_EXPECTATION_TTL`] ago).
    pub fn status_of(&self, job: &BatchJob) -> Option<BatchJobStatus> {
        let key = (job.namespace().unwrap_or_default(), job.name_any());
        let mut statuses = self.lock();
        match statuses.get(&key) {
            Some((status, at))
                if at.elapsed() < STATUS_EXPECTATION_TTL && job.status.as_ref() != Some(status) =>
            {
                Some(status.clone())
            }
            Some(_) => {
                statuses.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Forgets `job` (deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_owned(), name.to_owned()));
    }
}
