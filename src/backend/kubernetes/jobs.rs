//! The hub's batch jobs on the `kubernetes` backend: one `BatchJob` resource per job, which the
//! operator runs (a Kubernetes Job, queued by Kueue where the pool names a LocalQueue, or a
//! Slurm job on a Slurm pool). The hub checks a submission against the catalogue and the caps
//! first (`hub::jobs`); this module only writes and reads the resources.
//!
//! **Submit**: in per-user mode the user's Namespace is applied first (as for a Workspace);
//! then the BatchJob is server-side applied (field manager [`super::FIELD_MANAGER`], forced) with the
//! submission's spec, the owner's groups as `atelier.dev/groups` (the operator checks access
//! with them) and the label `atelier.dev/user`. Its id is `<namespace>/<name>`.
//!
//! **Status** comes from an informer cache of the BatchJobs ([`BatchJobs::spawn_cache`]; the
//! shared namespace, or every namespace in per-user mode): a poll of the hub's unfinished jobs
//! makes no API request. Only a job the cache does not hold (just applied, or deleted with
//! `kubectl`) is read with one `GET`; a job that is gone is `NotFound`.
//!
//! **Cancel** applies the same BatchJob again with `spec.cancel: true` (the same manager owns
//! every field it applied, so nothing else changes); the operator deletes its Job or cancels
//! the Slurm job, and the status says `Cancelled`.
//!
//! **Logs** are the end of the log of the job's pod (`status.podName`, `pods/log` with
//! `tailLines`), cut to the last `limit` bytes at a character boundary. A job with no pod yet
//! (queued, or on a Slurm pool) has none to show.
//!
//! The hub needs, in the workspaces' namespace(s): `batchjobs` get/list/watch/create/patch and
//! `pods/log` get (rows in `crate::rbac`).

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, LogParams, Patch};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;

use super::{KubernetesBackend, KubernetesBackendConfig, apply_params};
use crate::api::v1alpha1::{BatchJob, BatchJobPhase, BatchJobSpec};
use crate::batch::{BatchError, JobState};
use crate::config::NamespaceMode;
use crate::k8s::chrono_time;
use crate::policy::names;
use crate::policy::workspace::{GROUPS_ANNOTATION, USER_LABEL};

/// The system a hub's row records for a job written as a BatchJob resource.
pub const SYSTEM: &str = "kubernetes";

/// How many lines of a pod's log are asked for before the cut to `limit` bytes.
pub const LOG_TAIL_LINES: i64 = 10_000;

/// Where a BatchJob is: `<namespace>/<name>`, the id a hub's row keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobId {
    /// Namespace of the BatchJob.
    pub namespace: String,
    /// Name of the BatchJob.
    pub name: String,
}

impl JobId {
    /// Reads `<namespace>/<name>`; anything else is `NotFound` (no such job here).
    pub fn parse(id: &str) -> Result<JobId, BatchError> {
        let not_found = || BatchError::NotFound {
            system: SYSTEM,
            id: id.to_owned(),
        };
        let (namespace, name) = id.split_once('/').ok_or_else(not_found)?;
        if !names::is_dns_label(namespace) || !names::is_dns_label(name) {
            return Err(not_found());
        }
        Ok(JobId {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The BatchJob the hub applies for a submission: `spec` as submitted (its `user` the owner),
/// the owner's groups as [`GROUPS_ANNOTATION`], the owner as [`USER_LABEL`].
pub fn build_batch_job(id: &JobId, groups: &[String], spec: &BatchJobSpec) -> BatchJob {
    let mut job = BatchJob::new(&id.name, spec.clone());
    job.metadata = ObjectMeta {
        name: Some(id.name.clone()),
        namespace: Some(id.namespace.clone()),
        labels: Some(BTreeMap::from([(
            USER_LABEL.to_owned(),
            names::label_value(&spec.user),
        )])),
        annotations: Some(BTreeMap::from([(
            GROUPS_ANNOTATION.to_owned(),
            super::groups_annotation(groups),
        )])),
        ..ObjectMeta::default()
    };
    job
}

/// What a BatchJob's status says, as a batch system's state: `Pending` until the operator
/// writes one.
pub fn state_of(job: &BatchJob) -> JobState {
    let Some(status) = &job.status else {
        let mut state = JobState::new(BatchJobPhase::Pending);
        state.message = Some("waiting for the operator".into());
        return state;
    };
    JobState {
        phase: status.phase.unwrap_or(BatchJobPhase::Pending),
        exit_code: status.exit_code,
        start_time: status.start_time.as_ref().map(chrono_time),
        completion_time: status.completion_time.as_ref().map(chrono_time),
        reason: status.reason.clone(),
        message: status.message.clone(),
        placement: status.pod_name.clone().or_else(|| status.system_id.clone()),
    }
}

/// The last `limit` bytes of `text`, starting at a character boundary.
pub fn tail_bytes(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn api_error(what: &str, error: kube::Error) -> BatchError {
    match error {
        kube::Error::Api(status) if matches!(status.code, 400 | 409 | 422) => BatchError::Refused {
            system: SYSTEM,
            message: format!("the Kubernetes API refused {what}: {}", status.message),
        },
        kube::Error::Api(status) if matches!(status.code, 401 | 403) => BatchError::Unauthorized {
            system: SYSTEM,
            message: format!("{what}: {}", status.message),
        },
        kube::Error::Api(status) => BatchError::Other {
            system: SYSTEM,
            message: format!("{what}: {}", status.message),
        },
        other => BatchError::Unreachable {
            system: SYSTEM,
            message: format!("{what}: {other}"),
        },
    }
}

/// Writes and reads the hub's BatchJobs (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct BatchJobs {
    backend: KubernetesBackend,
    cache: Option<Store<BatchJob>>,
}

impl BatchJobs {
    /// The BatchJobs of `backend`, read through `cache` when there is one.
    pub fn new(backend: KubernetesBackend, cache: Option<Store<BatchJob>>) -> BatchJobs {
        BatchJobs { backend, cache }
    }

    /// Starts the informer cache of the BatchJobs `config` manages (the shared namespace, or
    /// every namespace in per-user mode): the store and the task that fills it.
    pub fn spawn_cache(
        client: Client,
        config: &KubernetesBackendConfig,
    ) -> (Store<BatchJob>, JoinHandle<()>) {
        let api: Api<BatchJob> = match &config.namespace_mode {
            NamespaceMode::Shared => Api::namespaced(client, &config.namespace),
            NamespaceMode::PerUser { .. } => Api::all(client),
        };
        let (reader, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    tracing::warn!(error = %e, "watching BatchJobs");
                }
            }
        });
        (reader, task)
    }

    fn api(&self, namespace: &str) -> Api<BatchJob> {
        Api::namespaced(self.backend.client().clone(), namespace)
    }

    /// Where the BatchJob `name` of `user` goes.
    pub fn id_for(&self, user: &str, name: &str) -> JobId {
        JobId {
            namespace: super::workspace_namespace(self.backend.config(), user),
            name: name.to_owned(),
        }
    }

    /// Applies the BatchJob `name` for `spec.user` in `groups`; returns its id.
    pub async fn submit(
        &self,
        name: &str,
        groups: &[String],
        spec: &BatchJobSpec,
    ) -> Result<JobId, BatchError> {
        let id = self.id_for(&spec.user, name);
        if let NamespaceMode::PerUser { .. } = self.backend.config().namespace_mode {
            self.backend
                .apply_namespace(&id.namespace, &spec.user)
                .await
                .map_err(|e| BatchError::Other {
                    system: SYSTEM,
                    message: e.to_string(),
                })?;
        }
        self.apply(&id, groups, spec).await?;
        tracing::info!(batchjob = %id, "BatchJob applied");
        Ok(id)
    }

    async fn apply(
        &self,
        id: &JobId,
        groups: &[String],
        spec: &BatchJobSpec,
    ) -> Result<BatchJob, BatchError> {
        let job = build_batch_job(id, groups, spec);
        self.api(&id.namespace)
            .patch(&id.name, &apply_params(), &Patch::Apply(&job))
            .await
            .map_err(|e| api_error(&format!("BatchJob {id}"), e))
    }

    /// The BatchJob `id`: from the cache, else one `GET`; `None` when it is gone.
    async fn read(&self, id: &JobId) -> Result<Option<BatchJob>, BatchError> {
        if let Some(cache) = &self.cache {
            let key = ObjectRef::new(&id.name).within(&id.namespace);
            if let Some(job) = cache.get(&key) {
                return Ok(Some((*job).clone()));
            }
        }
        self.api(&id.namespace)
            .get_opt(&id.name)
            .await
            .map_err(|e| api_error(&format!("BatchJob {id}"), e))
    }

    /// What the BatchJob `id`'s status says.
    pub async fn status(&self, id: &str) -> Result<JobState, BatchError> {
        let parsed = JobId::parse(id)?;
        match self.read(&parsed).await? {
            Some(job) => Ok(state_of(&job)),
            None => Err(BatchError::NotFound {
                system: SYSTEM,
                id: id.to_owned(),
            }),
        }
    }

    /// Asks the operator to stop the job: the BatchJob applied again with `spec.cancel: true`.
    /// A BatchJob that is gone is not an error (nothing runs).
    pub async fn cancel(
        &self,
        id: &str,
        groups: &[String],
        spec: &BatchJobSpec,
    ) -> Result<(), BatchError> {
        let parsed = JobId::parse(id)?;
        if self.read(&parsed).await?.is_none() {
            return Ok(());
        }
        let spec = BatchJobSpec {
            cancel: true,
            ..spec.clone()
        };
        self.apply(&parsed, groups, &spec).await?;
        tracing::info!(batchjob = %parsed, "BatchJob cancel applied");
        Ok(())
    }

    /// The last `limit` bytes of the log of the job's pod (empty while it has none).
    pub async fn logs(&self, id: &str, limit: usize) -> Result<String, BatchError> {
        let parsed = JobId::parse(id)?;
        let Some(job) = self.read(&parsed).await? else {
            return Err(BatchError::NotFound {
                system: SYSTEM,
                id: id.to_owned(),
            });
        };
        let Some(pod) = job.status.as_ref().and_then(|s| s.pod_name.clone()) else {
            return Ok(String::new());
        };
        let params = LogParams {
            tail_lines: Some(LOG_TAIL_LINES),
            ..LogParams::default()
        };
        let pods: Api<Pod> = Api::namespaced(self.backend.client().clone(), &parsed.namespace);
        match pods.logs(&pod, &params).await {
            Ok(text) => Ok(tail_bytes(&text, limit).to_owned()),
            // The pod went (its Job's TTL ran out): no log left to show.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(String::new()),
            Err(e) => Err(api_error(
                &format!("the log of pod {}/{pod}", parsed.namespace),
                e,
            )),
        }
    }
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
mod tests;
