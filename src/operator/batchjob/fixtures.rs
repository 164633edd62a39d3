//! Test fixtures of the BatchJob controller: the scenario's inputs (a profile, pools of every
//! kind, a data source), a [`Context`] on the mocked API server whose caches hold them, the
//! steps of the requests it makes, and a fake [`BatchSystem`] standing for Slurm.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::Method;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::reconcile::{observe_job_usage, reconcile_batchjob};
use super::{BatchMetrics, BatchSettings, Context, Systems};
use crate::api::v1alpha1::{BatchJob, DataSource, NodePool, WorkspaceProfile};
use crate::batch::{BatchError, BatchSystem, JobState};
use crate::config::OperatorConfig;
use crate::operator::Error;
use crate::operator::workspace::fixtures::{
    ApiServerVerifier, Cluster, SCENARIO_TIMEOUT, Seen, Step, assert_json_eq, list_into,
    seeded_context,
};
use crate::policy::batch::{SlurmTarget, ValidatedBatchJob};
use crate::policy::workspace::Dereferenced;
use crate::policy::workspace::validate::test_support::yaml;

/// Namespace of the scenarios.
pub const NS: &str = "team";

/// The scenarios' pools: `batch` (a per-user cap of 4 CPUs, a 1-day maximum deadline),
/// `queued` (Kueue LocalQueue `batch-queue`), `gpu` (A100s), `hpc` (Slurm).
pub const POOLS: &str = r#"
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: batch}
  spec:
    purpose: batch
    nodeSelector: {atelier.dev/pool: batch}
    tolerations: [{key: atelier.dev/batch, operator: Exists, effect: NoSchedule}]
    priorityClassName: atelier-batch
    maxDeadlineSeconds: 86400
    caps: {perUser: {cpu: "4"}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: queued}
  spec:
    purpose: batch
    nodeSelector: {atelier.dev/pool: queued}
    kueue: {localQueueName: batch-queue}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: gpu}
  spec:
    purpose: gpu
    nodeSelector: {atelier.dev/pool: gpu}
    gpu: {types: [a100]}
    caps: {perUser: {gpus: 2}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: hpc}
  spec:
    purpose: batch
    slurm:
      restUrl: "http://127.0.0.1:6820"
      partition: debug
      tokenSecret: {name: slurm-jwt}
      userMapping: {template: "{user}"}
"#;

/// The `pangeo` profile.
pub const PROFILE: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: pangeo}
spec:
  displayName: Pangeo
  image: pangeo/pangeo-notebook:2026.09.01
  defaultResources: {cpu: "2", memory: 4Gi}
  maxResources: {cpu: "8", memory: 32Gi, gpus: 1}
  env: {OMP_NUM_THREADS: "2"}
  home: {size: 10Gi}
"#;

/// The `era5` NFS data source (group `climate`).
pub const DATA_SOURCE: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: era5}
spec:
  nfs: {server: nfs.example.org, path: /export/era5}
  mountPath: /data/era5
  readOnly: true
  allowedGroups: [climate]
"#;

/// The scenario BatchJob `team/sum-1` of alice (group `climate`) with `extra` spec lines.
pub fn batch_job(extra: &str) -> BatchJob {
    yaml(&format!(
        r#"
apiVersion: atelier.dev/v1alpha1
kind: BatchJob
metadata:
  name: sum-1
  namespace: {NS}
  uid: u-sum-1
  generation: 1
  annotations: {{atelier.dev/groups: climate}}
spec:
  user: alice
  profile: pangeo
  command: [python, -c, "import numpy; print(numpy.arange(10).sum())"]
{extra}
"#
    ))
}

/// The inputs of the scenarios.
pub fn inputs() -> Cluster {
    Cluster {
        profiles: vec![yaml::<WorkspaceProfile>(PROFILE)],
        pools: yaml::<Vec<NodePool>>(POOLS),
        data_sources: vec![yaml::<DataSource>(DATA_SOURCE)],
        ..Cluster::default()
    }
}

/// What `validate_job` reads for the scenario jobs: [`inputs`] (plus `extra_sources`), alice's
/// group `climate`.
pub fn dereferenced(extra_sources: Vec<DataSource>) -> Dereferenced {
    let cluster = inputs();
    let mut data_sources = cluster.data_sources;
    data_sources.extend(extra_sources);
    Dereferenced {
        profile: cluster.profiles.first().cloned(),
        pools: cluster.pools,
        data_sources,
        groups: ["climate".to_owned()].into(),
        ..Dereferenced::default()
    }
}

/// What the BatchJob controller's caches hold.
#[derive(Clone, Debug, Default)]
pub struct Jobs {
    /// BatchJobs (they feed the usage index too).
    pub batchjobs: Vec<BatchJob>,
    /// Jobs.
    pub jobs: Vec<Job>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Slurm key Secrets.
    pub keys: Vec<Secret>,
    /// Home claims (the Workspace controller's PVC cache).
    pub homes: Vec<PersistentVolumeClaim>,
    /// Workspaces (the Workspace controller's cache; they feed the usage index too).
    pub workspaces: Vec<crate::api::v1alpha1::Workspace>,
}

impl Jobs {
    /// The caches holding `job` alone.
    pub fn of(job: &BatchJob) -> Jobs {
        Jobs {
            batchjobs: vec![job.clone()],
            ..Jobs::default()
        }
    }
}

/// A context on the mocked API server whose caches hold [`inputs`] and `jobs`; `systems` makes
/// the Slurm system.
pub fn context(jobs: Jobs, systems: Box<Systems>) -> Scenario {
    context_in(OperatorConfig::default(), jobs, systems)
}

/// [`context`] with no Slurm, whose caches hold `job` alone.
pub fn context_of(job: &BatchJob) -> Scenario {
    context(Jobs::of(job), Box::new(super::no_slurm))
}

/// [`context`] with the operator's settings `config`.
pub fn context_in(config: OperatorConfig, jobs: Jobs, systems: Box<Systems>) -> Scenario {
    let cluster = Cluster {
        pvcs: jobs.homes.clone(),
        workspaces: jobs.workspaces.clone(),
        ..inputs()
    };
    let (shared, verifier, _writers) = seeded_context(config, cluster);
    let reporter = Reporter {
        controller: "atelier.dev/batchjob-controller".into(),
        instance: None,
    };
    let settings = BatchSettings {
        ttl_seconds_after_finished: 3600,
        secrets_namespace: "atelier".into(),
    };
    let ctx = Context::new(
        shared,
        settings,
        reporter,
        Arc::new(BatchMetrics::default()),
        systems,
    );
    let mut w = ctx.take_cache_writers().expect("writers");
    list_into(&mut w.batchjobs, jobs.batchjobs.clone());
    list_into(&mut w.jobs, jobs.jobs);
    list_into(&mut w.pods, jobs.pods);
    list_into(&mut w.slurm_keys, jobs.keys);
    let mut relisted = None;
    for event in std::iter::once(watcher::Event::Init)
        .chain(jobs.batchjobs.into_iter().map(watcher::Event::InitApply))
        .chain(std::iter::once(watcher::Event::InitDone))
    {
        observe_job_usage(&ctx, &event, &mut relisted);
    }
    (Arc::new(ctx), verifier)
}

/// The path of the scenario BatchJob (`status`: its status subresource).
pub fn batchjob_path(job: &BatchJob, status: bool) -> String {
    format!(
        "/apis/atelier.dev/v1alpha1/namespaces/{}/batchjobs/{}{}",
        job.namespace().unwrap_or_default(),
        job.name_any(),
        if status { "/status" } else { "" }
    )
}

/// The Jobs of namespace `ns` (`name`: one of them).
pub fn jobs_path(ns: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}"),
        None => format!("/apis/batch/v1/namespaces/{ns}/jobs"),
    }
}

/// A server-side apply of `job`'s status, checked by `check` (apiVersion and kind asserted).
pub fn status_step(job: &BatchJob, check: impl FnOnce(&Value) + Send + 'static) -> Step {
    let reply = serde_json::to_value(job).expect("serializes");
    Step::apply_checked(batchjob_path(job, true), move |body| {
        assert_eq!(body["apiVersion"], "atelier.dev/v1alpha1");
        assert_eq!(body["kind"], "BatchJob");
        check(body)
    })
    .reply(reply)
}

/// An Event about `job` of `type_` and `reason`.
pub fn event_step(job: &BatchJob, type_: &'static str, reason: &'static str) -> Step {
    let name = job.name_any();
    Step::new(
        Method::POST,
        format!("/apis/events.k8s.io/v1/namespaces/{}/events", NS),
    )
    .check(move |body| {
        assert_eq!(body["regarding"]["kind"], "BatchJob");
        assert_eq!(body["regarding"]["name"], name.as_str());
        assert_eq!(
            body["reportingController"],
            "atelier.dev/batchjob-controller"
        );
        assert_eq!(
            (body["type"].as_str(), body["reason"].as_str()),
            (Some(type_), Some(reason)),
            "{body:#}"
        );
    })
    .echo()
}

/// The creation (POST) of exactly `expected` (fieldManager asserted).
pub fn create_job_step(expected: Value) -> Step {
    let ns = expected["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Step::new(Method::POST, jobs_path(&ns, None))
        .with_query("fieldManager", crate::operator::workspace::FIELD_MANAGER)
        .check(move |body| assert_json_eq(body, &expected))
        .echo()
}

/// The deletion of Job `name` with propagation `Background`.
pub fn delete_job_step(name: &str) -> Step {
    Step::delete(jobs_path(NS, Some(name)), None).check(|body| {
        assert_eq!(body["propagationPolicy"], "Background", "{body:#}");
    })
}

/// What a scenario produced.
#[derive(Debug)]
pub struct Outcome {
    /// The reconciler's answer.
    pub result: Result<Action, Error>,
    /// Every request, in order.
    pub seen: Vec<Seen>,
}

impl Outcome {
    /// `METHOD /path` of every request.
    pub fn lines(&self) -> Vec<String> {
        self.seen.iter().map(Seen::line).collect()
    }
}

/// A context and the mocked API server behind it ([`context`]).
pub type Scenario = (Arc<Context>, ApiServerVerifier);

/// Reconciles `job` once in `scenario` against `steps`, then asserts that nothing else was
/// sent.
pub async fn run(scenario: Scenario, job: &BatchJob, steps: Vec<Step>) -> Outcome {
    run_then(scenario, job, steps, |_| {}).await
}

/// [`run`], with `after` looking at the context once the reconciler returned (before it is
/// dropped: the verifier's end is the client's).
pub async fn run_then(
    (ctx, verifier): Scenario,
    job: &BatchJob,
    steps: Vec<Step>,
    after: impl FnOnce(&Context),
) -> Outcome {
    let server = tokio::spawn(verifier.run(steps));
    let result = tokio::time::timeout(
        SCENARIO_TIMEOUT,
        reconcile_batchjob(Arc::new(job.clone()), ctx.clone()),
    )
    .await
    .expect("the reconciler finished in time (a request may be missing)");
    after(&ctx);
    drop(ctx);
    let seen = match tokio::time::timeout(SCENARIO_TIMEOUT, server)
        .await
        .expect("the verifier finished in time")
    {
        Ok(seen) => seen,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    Outcome { result, seen }
}

/// A call the fake batch system received.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// `submit` of a job (its Slurm user, partition and command).
    Submit(String, String, Vec<String>),
    /// `status` of an id.
    Status(String),
    /// `cancel` of an id.
    Cancel(String),
}

/// A fake Slurm: records its calls, submits as id `4242`, answers `status` with `state`.
pub struct FakeSlurm {
    /// The calls, in order.
    pub calls: Mutex<Vec<Call>>,
    /// What `status` answers.
    pub state: Mutex<JobState>,
    /// The key it was made with.
    pub key: Mutex<Vec<u8>>,
}

impl FakeSlurm {
    /// A fake whose jobs are in `state`.
    pub fn new(state: JobState) -> Arc<FakeSlurm> {
        Arc::new(FakeSlurm {
            calls: Mutex::default(),
            state: Mutex::new(state),
            key: Mutex::default(),
        })
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    /// A [`Systems`] handing out this fake (and recording its key).
    pub fn systems(self: &Arc<Self>) -> Box<Systems> {
        let fake = self.clone();
        Box::new(move |_: &SlurmTarget, key: Vec<u8>| {
            *fake.key.lock().expect("lock") = key;
            Ok(fake.clone() as Arc<dyn BatchSystem>)
        })
    }
}

impl BatchSystem for FakeSlurm {
    fn system(&self) -> &'static str {
        "slurm"
    }

    fn submit<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async move {
            let crate::policy::batch::BatchTarget::Slurm(target) = &job.target else {
                panic!("a Slurm job");
            };
            self.calls.lock().expect("lock").push(Call::Submit(
                target.user.clone(),
                target.partition.clone(),
                job.command.clone(),
            ));
            Ok("4242".to_owned())
        })
    }

    fn status<'a>(
        &'a self,
        _job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(Call::Status(id.to_owned()));
            Ok(self.state.lock().expect("lock").clone())
        })
    }

    fn cancel<'a>(
        &'a self,
        _job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(Call::Cancel(id.to_owned()));
            Ok(())
        })
    }

    fn logs<'a>(
        &'a self,
        _job: &'a ValidatedBatchJob,
        _id: &'a str,
        _limit: usize,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async { Ok(String::new()) })
    }
}

/// A Job's status JSON merged into `job` (as the Job controller writes it).
pub fn with_status(mut job: Job, status: Value) -> Job {
    let mut value = serde_json::to_value(&job).expect("serializes");
    value["status"] = status;
    job = serde_json::from_value(value).expect("a Job");
    job
}

/// A pod of Job `sum-1` named `name` with `status` (JSON).
pub fn job_pod(name: &str, status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": NS,
            "labels": {super::BATCHJOB_LABEL: "sum-1", "batch.kubernetes.io/job-name": "sum-1"},
        },
        "status": status,
    }))
    .expect("a pod")
}
