//! Mock-API scenarios of the BatchJob controller, one per branch: the caches hold the scenario
//! (inputs, BatchJobs, Jobs, pods); the mocked API server asserts every request in order and
//! fails on a missing or an extra one. Expected Jobs come from the real `validate_job` +
//! `build_job`.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use kube::ResourceExt;

use super::build::{build_home_claim, build_job};
use super::fixtures::{
    Call, FakeSlurm, Jobs, Scenario, batch_job, batchjob_path, context, context_in, context_of,
    create_job_step, delete_job_step, dereferenced, event_step, job_pod, run, run_then,
    status_step, with_status,
};
use super::reconcile::{
    REQUEUE_ACTIVE, REQUEUE_POLL, REQUEUE_REFUSED, dereference, jobs_to_retry,
    retried_on_input_changes,
};
use super::status::{self, Placement};
use super::{BATCHJOB_FINALIZER, BatchSettings, KUEUE_QUEUE_LABEL, no_slurm};
use crate::api::v1alpha1::{BatchJob, BatchJobPhase, BatchJobStatus};
use crate::batch::JobState;
use crate::config::OperatorConfig;
use crate::operator::InputChange;
use crate::operator::workspace::Refusal;
use crate::operator::workspace::fixtures::{Step, applied as applied_json, observed};
use crate::policy::batch::{ValidatedBatchJob, validate_job};

fn t0() -> Time {
    serde_json::from_value(json!("2026-01-01T09:00:00Z")).expect("a time")
}

/// The validated `job` under `config`.
fn validated_in(config: &OperatorConfig, job: &BatchJob) -> ValidatedBatchJob {
    validate_job(job, &dereferenced(vec![]), config).expect("valid")
}

/// The Job the controller builds for `job`.
fn desired(job: &BatchJob) -> Job {
    let config = OperatorConfig::default();
    build_job(
        &validated_in(&config, job),
        &config,
        &BatchSettings::default(),
        Some(&Default::default()),
    )
}

/// The Job as applied (with its hash annotation), as JSON.
fn applied(job: &BatchJob) -> Value {
    applied_json(&desired(job))
}

/// `job` with a status (what an earlier pass wrote).
fn with_job_status(mut job: BatchJob, status: BatchJobStatus) -> BatchJob {
    job.status = Some(status);
    job
}

/// The status an admitted job in `state` on `pool` has.
fn admitted(state: &JobState, pool: &str, system: &str, id: &str) -> BatchJobStatus {
    status::next_status(
        None,
        state,
        Placement {
            generation: Some(1),
            pool,
            system,
            system_id: Some(id),
        },
        &t0(),
    )
}

fn queued_for_pod() -> JobState {
    let mut s = JobState::new(BatchJobPhase::Queued);
    s.reason = Some(status::WAITING_FOR_POD.to_owned());
    s.message = Some("waiting for its pod to start".to_owned());
    s
}

/// A context whose caches hold `job`, its Job `the_job` and that Job's `pods` (no Slurm).
fn observing(job: &BatchJob, the_job: Job, pods: Vec<Pod>) -> Scenario {
    context(
        Jobs {
            jobs: vec![the_job],
            pods,
            ..Jobs::of(job)
        },
        Box::new(no_slurm),
    )
}

/// `job` as an earlier pass left it: its Job `sum-1` created on `batch`, waiting for its pod.
fn queued_on_batch(job: BatchJob) -> BatchJob {
    with_job_status(
        job,
        admitted(&queued_for_pod(), "batch", "kubernetes", "sum-1"),
    )
}

/// The server-side apply of the owner's home claim (exactly the built one, with its hash).
fn home_step(config: &OperatorConfig, job: &BatchJob) -> Step {
    let claim = build_home_claim(&validated_in(config, job));
    Step::apply(
        format!(
            "/api/v1/namespaces/{}/persistentvolumeclaims/home-alice",
            job.namespace().unwrap_or_default()
        ),
        applied_json(&claim),
    )
}

/// The status write and the Event of a job just handed to Kubernetes (Queued on `pool`).
fn queued_steps(job: &BatchJob, pool: &'static str) -> [Step; 2] {
    [
        status_step(job, move |body| {
            let s = &body["status"];
            assert_eq!(s["phase"], "Queued");
            assert_eq!(s["nodePool"], pool);
            assert_eq!(s["system"], "kubernetes");
            assert_eq!(s["systemId"], "sum-1");
            assert_eq!(s["observedGeneration"], 1);
            assert_eq!(s["conditions"][0]["type"], "Admitted");
            assert_eq!(s["conditions"][0]["status"], "True");
        }),
        event_step(job, "Normal", "Queued"),
    ]
}

const BATCH: &str = "  nodePool: batch";

/// Alice never started a workspace: her home claim is made (before the Job, which mounts it).
#[tokio::test]
async fn a_new_job_creates_the_missing_home_then_its_job_once_and_says_queued() {
    let job = batch_job(BATCH);
    let [status, event] = queued_steps(&job, "batch");
    let outcome = run_then(
        context_of(&job),
        &job,
        vec![
            home_step(&OperatorConfig::default(), &job),
            create_job_step(applied(&job)),
            status,
            event,
        ],
        |ctx| {
            // The job holds its place under the caps (2 CPUs of alice's 4 on `batch`).
            assert_eq!(
                ctx.shared.usage().user_usage("batch", "alice").cpu_millis,
                2000
            );
            assert_eq!(ctx.metrics.submitted.get(), 1);
        },
    )
    .await;
    assert_eq!(outcome.result.expect("ok"), Action::requeue(REQUEUE_ACTIVE));
}

/// Her home exists (a workspace, or an earlier job, made it): never written, not even applied
/// again with the same content.
#[tokio::test]
async fn an_existing_home_is_left_untouched() {
    let job = batch_job(BATCH);
    let home = build_home_claim(&validated_in(&OperatorConfig::default(), &job));
    let [status, event] = queued_steps(&job, "batch");
    let outcome = run(
        context(
            Jobs {
                homes: vec![observed(&home)],
                ..Jobs::of(&job)
            },
            Box::new(no_slurm),
        ),
        &job,
        vec![create_job_step(applied(&job)), status, event],
    )
    .await;
    assert_eq!(
        outcome.lines(),
        [
            "POST /apis/batch/v1/namespaces/team/jobs",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/batchjobs/sum-1/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );
    outcome.result.expect("ok");
}

/// In per-user namespaces the home is made in the user's namespace, where her workspaces
/// would have it.
#[tokio::test]
async fn in_per_user_namespaces_the_home_is_made_in_the_users_namespace() {
    let config = OperatorConfig {
        namespace_mode: crate::config::NamespaceMode::PerUser {
            prefix: "atelier-u-".into(),
        },
        ..OperatorConfig::default()
    };
    let mut job = batch_job(BATCH);
    job.metadata.namespace = Some("atelier-u-alice".into());
    let v = validated_in(&config, &job);
    let expected = applied_json(&build_job(
        &v,
        &config,
        &BatchSettings::default(),
        Some(&Default::default()),
    ));
    let home = home_step(&config, &job);
    let outcome = run(
        context_in(config.clone(), Jobs::of(&job), Box::new(no_slurm)),
        &job,
        vec![
            home,
            create_job_step(expected),
            status_step(&job, |body| assert_eq!(body["status"]["phase"], "Queued")),
            Step::new(
                http::Method::POST,
                "/apis/events.k8s.io/v1/namespaces/atelier-u-alice/events",
            )
            .echo(),
        ],
    )
    .await;
    assert_eq!(
        outcome.lines()[0],
        "PATCH /api/v1/namespaces/atelier-u-alice/persistentvolumeclaims/home-alice"
    );
    outcome.result.expect("ok");
}

#[tokio::test]
async fn an_unchanged_job_makes_no_request() {
    let base = batch_job(BATCH);
    let job = queued_on_batch(base.clone());
    let outcome = run(
        observing(&job, observed(&desired(&base)), vec![]),
        &job,
        vec![],
    )
    .await;
    assert_eq!(outcome.lines(), Vec::<String>::new());
    assert_eq!(outcome.result.expect("ok"), Action::requeue(REQUEUE_ACTIVE));
}

/// A scenario where the Job of `sum-1` (on `batch`, status Queued) has `job_status` and
/// `pods`: the status write it makes is checked by `check`, with an Event `reason`.
async fn finishes(
    job_status: Value,
    pods: Vec<Pod>,
    event: (&'static str, &'static str),
    check: impl FnOnce(&Value) + Send + 'static,
) -> Vec<String> {
    let base = batch_job(BATCH);
    let job = queued_on_batch(base.clone());
    let the_job = with_status(observed(&desired(&base)), job_status);
    let scenario = observing(&job, the_job, pods);
    assert_eq!(
        scenario
            .0
            .shared
            .usage()
            .user_usage("batch", "alice")
            .cpu_millis,
        2000
    );
    let outcome = run_then(
        scenario,
        &job,
        vec![status_step(&job, check), event_step(&job, event.0, event.1)],
        |ctx| {
            // Finished: its place under the caps is free.
            assert_eq!(
                ctx.shared.usage().user_usage("batch", "alice").cpu_millis,
                0
            );
        },
    )
    .await;
    let lines = outcome.lines();
    assert_eq!(outcome.result.expect("ok"), Action::await_change());
    lines
}

fn terminated(exit: i32, reason: &str) -> Value {
    json!({"phase": if exit == 0 { "Succeeded" } else { "Failed" }, "containerStatuses": [{
        "name": "job", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit, "reason": reason,
            "startedAt": "2026-01-01T09:01:00Z", "finishedAt": "2026-01-01T09:05:00Z"}},
    }]})
}

#[tokio::test]
async fn a_succeeded_job_reports_its_exit_code_and_times_and_frees_its_place() {
    let lines = finishes(
        json!({
            "startTime": "2026-01-01T09:00:30Z", "completionTime": "2026-01-01T09:05:01Z",
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True",
                "lastTransitionTime": "2026-01-01T09:05:01Z"}],
        }),
        vec![job_pod("sum-1-abcde", terminated(0, "Completed"))],
        ("Normal", "Succeeded"),
        |body| {
            let s = &body["status"];
            assert_eq!(s["phase"], "Succeeded");
            assert_eq!(s["exitCode"], 0);
            assert_eq!(s["podName"], "sum-1-abcde");
            assert_eq!(s["startTime"], "2026-01-01T09:00:30Z");
            assert_eq!(s["completionTime"], "2026-01-01T09:05:01Z");
            assert_eq!(s["conditions"][1]["type"], "Complete");
        },
    )
    .await;
    assert_eq!(lines.len(), 2);
}

#[tokio::test]
async fn a_failed_job_reports_the_commands_exit_code() {
    finishes(
        json!({
            "startTime": "2026-01-01T09:00:30Z", "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
                "lastTransitionTime": "2026-01-01T09:02:00Z"}],
        }),
        vec![job_pod("sum-1-abcde", terminated(3, "Error"))],
        ("Warning", "BackoffLimitExceeded"),
        |body| {
            let s = &body["status"];
            assert_eq!(s["phase"], "Failed");
            assert_eq!(s["exitCode"], 3);
            assert_eq!(s["reason"], "BackoffLimitExceeded");
            assert_eq!(
                s["message"],
                "the command exited with code 3: Job has reached the specified backoff limit"
            );
            assert_eq!(s["completionTime"], "2026-01-01T09:02:00Z");
            assert_eq!(s["conditions"][1]["type"], "Failed");
        },
    )
    .await;
}

#[tokio::test]
async fn a_job_past_its_deadline_says_deadline_exceeded() {
    finishes(
        json!({
            "startTime": "2026-01-01T09:00:30Z", "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline",
                "lastTransitionTime": "2026-01-01T10:00:30Z"}],
        }),
        vec![],
        ("Warning", "DeadlineExceeded"),
        |body| {
            assert_eq!(body["status"]["phase"], "Failed");
            assert_eq!(body["status"]["reason"], "DeadlineExceeded");
            assert_eq!(body["status"].get("exitCode"), None);
        },
    )
    .await;
}

#[tokio::test]
async fn an_oom_killed_job_says_so() {
    finishes(
        json!({
            "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "lastTransitionTime": "2026-01-01T09:02:00Z"}],
        }),
        vec![job_pod("sum-1-abcde", terminated(137, "OOMKilled"))],
        ("Warning", "OOMKilled"),
        |body| {
            assert_eq!(body["status"]["reason"], "OOMKilled");
            assert_eq!(body["status"]["exitCode"], 137);
        },
    )
    .await;
}

#[tokio::test]
async fn a_job_whose_image_cannot_be_pulled_fails_and_its_job_is_deleted() {
    let base = batch_job(BATCH);
    let job = queued_on_batch(base.clone());
    let the_job = with_status(observed(&desired(&base)), json!({"active": 1}));
    let pod = job_pod(
        "sum-1-abcde",
        json!({"phase": "Pending", "containerStatuses": [{
            "name": "job", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
        }]}),
    );
    let outcome = run(
        observing(&job, the_job, vec![pod]),
        &job,
        vec![
            status_step(&job, |body| {
                assert_eq!(body["status"]["phase"], "Failed");
                assert_eq!(body["status"]["reason"], "ImagePullBackOff");
                assert_eq!(
                    body["status"]["message"],
                    "Container job cannot start: Back-off pulling image"
                );
            }),
            event_step(&job, "Warning", "ImagePullBackOff"),
            delete_job_step("sum-1"),
        ],
    )
    .await;
    outcome.result.expect("ok");
}

#[tokio::test]
async fn cancel_deletes_the_job_and_says_cancelled() {
    let base = batch_job(&format!("{BATCH}\n  cancel: true"));
    let mut running = JobState::new(BatchJobPhase::Running);
    running.placement = Some("sum-1-abcde".into());
    let job = with_job_status(
        base.clone(),
        admitted(&running, "batch", "kubernetes", "sum-1"),
    );
    let outcome = run_then(
        observing(&job, observed(&desired(&batch_job(BATCH))), vec![]),
        &job,
        vec![
            delete_job_step("sum-1"),
            status_step(&job, |body| {
                let s = &body["status"];
                assert_eq!(s["phase"], "Cancelled");
                assert_eq!(s["reason"], "Cancelled");
                assert_eq!(s["podName"], "sum-1-abcde");
                assert!(s["completionTime"].is_string());
            }),
            event_step(&job, "Normal", "Cancelled"),
        ],
        |ctx| {
            assert_eq!(
                ctx.shared.usage().user_usage("batch", "alice").cpu_millis,
                0
            )
        },
    )
    .await;
    outcome.result.expect("ok");
}

#[tokio::test]
async fn a_finished_job_is_never_run_again() {
    let mut done = JobState::new(BatchJobPhase::Succeeded);
    done.exit_code = Some(0);
    // Its Job is gone (ttlSecondsAfterFinished): nothing is made again.
    let job = with_job_status(
        batch_job(BATCH),
        admitted(&done, "batch", "kubernetes", "sum-1"),
    );
    let outcome = run(context_of(&job), &job, vec![]).await;
    assert!(outcome.seen.is_empty());
    assert_eq!(outcome.result.expect("ok"), Action::await_change());
}

#[tokio::test]
async fn a_job_over_the_users_cap_is_refused_and_nothing_is_created() {
    // Another job of alice runs on `batch` with 3 CPUs; this one asks for 2 (cap: 4).
    let mut other = batch_job("  nodePool: batch\n  resources: {cpu: \"3\"}");
    other.metadata.name = Some("other".into());
    other.metadata.uid = Some("u-other".into());
    let other = with_job_status(
        other,
        admitted(&queued_for_pod(), "batch", "kubernetes", "other"),
    );
    let job = batch_job(BATCH);
    let outcome = run_then(
        context(
            Jobs {
                batchjobs: vec![job.clone(), other],
                ..Jobs::default()
            },
            Box::new(no_slurm),
        ),
        &job,
        vec![
            status_step(&job, |body| {
                let s = &body["status"];
                assert_eq!(s["phase"], "Pending");
                assert_eq!(s["reason"], "UserCapExceeded");
                assert_eq!(s["conditions"][0]["type"], "Admitted");
                assert_eq!(s["conditions"][0]["status"], "False");
                assert_eq!(s["conditions"][0]["reason"], "UserCapExceeded");
                assert_eq!(s.get("system"), None);
            }),
            event_step(&job, "Warning", "UserCapExceeded"),
        ],
        // Only the other job's 3 CPUs: nothing reserved for this one.
        |ctx| {
            assert_eq!(
                ctx.shared.usage().user_usage("batch", "alice").cpu_millis,
                3000
            )
        },
    )
    .await;
    assert_eq!(
        outcome.result.expect("ok"),
        Action::requeue(REQUEUE_REFUSED)
    );
}

#[tokio::test]
async fn a_job_with_an_invalid_deadline_fails_for_good() {
    let job = batch_job("  nodePool: batch\n  deadlineSeconds: 100000");
    let outcome = run(
        context_of(&job),
        &job,
        vec![
            status_step(&job, |body| {
                assert_eq!(body["status"]["phase"], "Failed");
                assert_eq!(body["status"]["reason"], "DeadlineExceedsPool");
            }),
            event_step(&job, "Warning", "DeadlineExceedsPool"),
        ],
    )
    .await;
    assert_eq!(outcome.result.expect("ok"), Action::await_change());
}

#[tokio::test]
async fn a_gpu_job_runs_on_the_gpu_pool_with_its_gpu_limit() {
    let job = batch_job("  resources: {gpus: 1}");
    let expected = applied(&job);
    let limits = &expected["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["nvidia.com/gpu"], "1");
    assert_eq!(
        expected["spec"]["template"]["spec"]["nodeSelector"]["atelier.dev/pool"],
        "gpu"
    );
    let outcome = run_then(
        context_of(&job),
        &job,
        vec![
            home_step(&OperatorConfig::default(), &job),
            create_job_step(expected),
            status_step(&job, |body| assert_eq!(body["status"]["nodePool"], "gpu")),
            event_step(&job, "Normal", "Queued"),
        ],
        |ctx| assert_eq!(ctx.shared.usage().user_usage("gpu", "alice").gpus, 1),
    )
    .await;
    outcome.result.expect("ok");
}

#[tokio::test]
async fn on_a_kueue_pool_the_job_is_created_suspended_and_stays_queued_until_admitted() {
    let base = batch_job("  nodePool: queued");
    // 1. Created suspended, with the queue label.
    let expected = applied(&base);
    assert_eq!(expected["spec"]["suspend"], true);
    assert_eq!(
        expected["metadata"]["labels"][KUEUE_QUEUE_LABEL],
        "batch-queue"
    );
    let outcome = run(
        context_of(&base),
        &base,
        vec![
            // Made now: the pod Kueue lets in mounts it.
            home_step(&OperatorConfig::default(), &base),
            create_job_step(expected),
            status_step(&base, |body| {
                assert_eq!(body["status"]["phase"], "Queued");
                assert_eq!(body["status"]["reason"], "WaitingForAdmission");
                assert_eq!(
                    body["status"]["message"],
                    "waiting for Kueue to admit it from LocalQueue batch-queue"
                );
            }),
            event_step(&base, "Normal", "Queued"),
        ],
    )
    .await;
    outcome.result.expect("ok");

    // 2. Still suspended: nothing to write.
    let mut waiting = JobState::new(BatchJobPhase::Queued);
    waiting.reason = Some(status::WAITING_FOR_ADMISSION.into());
    waiting.message = Some("waiting for Kueue to admit it from LocalQueue batch-queue".into());
    let job = with_job_status(
        base.clone(),
        admitted(&waiting, "queued", "kubernetes", "sum-1"),
    );
    let suspended = observed(&desired(&base));
    assert!(
        run(observing(&job, suspended.clone(), vec![]), &job, vec![])
            .await
            .seen
            .is_empty()
    );

    // 3. Kueue admitted it (suspend: false) and its pod runs: Running, the Job never written.
    let mut admitted_job = suspended;
    admitted_job.spec.as_mut().expect("spec").suspend = Some(false);
    let admitted_job = with_status(
        admitted_job,
        json!({"startTime": "2026-01-01T09:10:00Z", "active": 1}),
    );
    let pod = job_pod("sum-1-xyz", json!({"phase": "Running"}));
    let outcome = run(
        observing(&job, admitted_job, vec![pod]),
        &job,
        vec![
            status_step(&job, |body| {
                assert_eq!(body["status"]["phase"], "Running");
                assert_eq!(body["status"]["podName"], "sum-1-xyz");
                assert_eq!(body["status"]["startTime"], "2026-01-01T09:10:00Z");
            }),
            event_step(&job, "Normal", "Running"),
        ],
    )
    .await;
    outcome.result.expect("ok");
}

/// `sum-1` renamed `name`, with `extra` spec lines, refused for `reason` (`permanent`: Failed).
fn refused_as(name: &str, extra: &str, reason: &'static str, permanent: bool) -> BatchJob {
    let mut job = batch_job(extra);
    job.metadata.name = Some(name.into());
    let refusal = Refusal {
        reason,
        message: format!("refused: {reason}"),
    };
    with_job_status(
        job,
        status::refused_status(None, &refusal, permanent, Some(1), &t0()),
    )
}

fn names_of(refs: Vec<kube::runtime::reflector::ObjectRef<BatchJob>>) -> Vec<String> {
    refs.into_iter().map(|r| r.name).collect()
}

fn claim_of(user: &str, groups: &[&str]) -> crate::policy::Claim {
    crate::policy::Claim {
        pool: "batch".into(),
        user: user.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        usage: crate::policy::Usage::ZERO,
    }
}

#[test]
fn input_changes_and_freed_places_retry_only_the_refused_jobs_they_may_let_in() {
    let mut rstudio = refused_as("rstudio", "", "ProfileNotFound", false);
    rstudio.spec.profile = "rstudio".into();
    let mut bob = refused_as("bob", BATCH, "UserCapExceeded", false);
    bob.spec.user = "bob".into();
    bob.metadata.annotations = None;
    let mut cancelled = refused_as("cancelled", BATCH, "UserCapExceeded", false);
    cancelled.spec.cancel = true;
    let mut running = queued_on_batch(batch_job(BATCH));
    running.metadata.name = Some("running".into());
    let all: Vec<Arc<BatchJob>> = [
        refused_as("no-profile", "", "ProfileNotFound", false),
        rstudio,
        refused_as("no-pool", "  dataSources: [era5]", "NoEligiblePool", false),
        refused_as("capped", BATCH, "UserCapExceeded", false),
        bob,
        // Never retried: failed for good, cancelled, admitted.
        refused_as("too-long", BATCH, "DeadlineExceedsPool", true),
        cancelled,
        running,
    ]
    .into_iter()
    .map(Arc::new)
    .collect();
    let retried = |change: Option<InputChange>| names_of(jobs_to_retry(&all, change.as_ref()));
    let every_refused = ["no-profile", "rstudio", "no-pool", "capped", "bob"];
    assert_eq!(
        retried(Some(InputChange::Pool("batch".into()))),
        every_refused
    );
    assert_eq!(retried(None), every_refused, "changes were missed");
    assert_eq!(
        retried(Some(InputChange::Profile("rstudio".into()))),
        ["rstudio"]
    );
    assert_eq!(
        retried(Some(InputChange::Profile("pangeo".into()))),
        ["no-profile", "no-pool", "capped", "bob"]
    );
    assert_eq!(
        retried(Some(InputChange::DataSource("era5".into()))),
        ["no-pool"]
    );
    assert_eq!(
        retried(Some(InputChange::DataSource("argo".into()))),
        Vec::<String>::new()
    );
    // A place freed: only the jobs a cap refused, of the same user or sharing a group.
    assert_eq!(
        retried(Some(InputChange::Freed(vec![claim_of("alice", &[])]))),
        ["capped"]
    );
    assert_eq!(
        retried(Some(InputChange::Freed(vec![claim_of(
            "carol",
            &["climate"]
        )]))),
        ["capped"]
    );
    assert_eq!(
        retried(Some(InputChange::Freed(vec![claim_of("bob", &[])]))),
        ["bob"]
    );
    assert_eq!(
        retried(Some(InputChange::Freed(vec![claim_of(
            "carol",
            &["ocean"]
        )]))),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn announced_changes_reconcile_the_refused_jobs_and_a_missed_change_all_of_them() {
    let capped = refused_as("capped", BATCH, "UserCapExceeded", false);
    let no_pool = refused_as("no-pool", "  dataSources: [era5]", "NoEligiblePool", false);
    let (ctx, _verifier) = context(
        Jobs {
            batchjobs: vec![capped, no_pool],
            ..Jobs::default()
        },
        Box::new(no_slurm),
    );
    let store = ctx.caches.batchjobs.clone();
    let mut retried = Box::pin(retried_on_input_changes(
        ctx.shared.input_changes(),
        store.clone(),
    ));
    // A source no job names, then one a job names.
    ctx.shared.announce(InputChange::DataSource("argo".into()));
    ctx.shared.announce(InputChange::DataSource("era5".into()));
    let next = tokio::time::timeout(
        crate::operator::workspace::fixtures::SCENARIO_TIMEOUT,
        futures::StreamExt::next(&mut retried),
    )
    .await
    .expect("a reconciliation");
    assert_eq!(next.map(|r| r.name), Some("no-pool".to_owned()));

    // A reader that fell behind (a buffer of 1, 3 changes): every refused job.
    let (tx, rx) = tokio::sync::broadcast::channel(1);
    let mut retried = Box::pin(retried_on_input_changes(rx, store));
    for source in ["a", "b", "c"] {
        tx.send(InputChange::DataSource(source.into()))
            .expect("a reader");
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let next = tokio::time::timeout(
            crate::operator::workspace::fixtures::SCENARIO_TIMEOUT,
            futures::StreamExt::next(&mut retried),
        )
        .await
        .expect("a reconciliation");
        seen.extend(next.map(|r| r.name));
    }
    seen.sort();
    assert_eq!(seen, ["capped", "no-pool"]);
}

/// Both ways through the one usage index: the place a finished job gives back reconciles now
/// the Workspace and the job of alice that her cap refused.
#[tokio::test]
async fn a_finished_job_lets_in_the_workspace_and_the_job_waiting_for_its_place() {
    let base = batch_job(BATCH);
    let job = queued_on_batch(base.clone());
    let waiting_job = refused_as("sum-2", BATCH, "UserCapExceeded", false);
    let waiting_workspace: crate::api::v1alpha1::Workspace =
        crate::policy::workspace::validate::test_support::yaml(
            r#"
apiVersion: atelier.dev/v1alpha1
kind: Workspace
metadata: {name: alice, namespace: team, uid: u-alice, generation: 1}
spec: {user: alice, profile: pangeo}
status:
  conditions:
  - {type: Ready, status: "False", reason: UserCapExceeded, message: over the cap,
     lastTransitionTime: "2026-01-01T09:00:00Z"}
"#,
        );
    let done = with_status(
        observed(&desired(&base)),
        json!({"succeeded": 1, "completionTime": "2026-01-01T09:05:01Z",
            "conditions": [{"type": "Complete", "status": "True",
                "lastTransitionTime": "2026-01-01T09:05:01Z"}]}),
    );
    let scenario = context(
        Jobs {
            batchjobs: vec![job.clone(), waiting_job],
            jobs: vec![done],
            workspaces: vec![waiting_workspace],
            ..Jobs::default()
        },
        Box::new(no_slurm),
    );
    let mut changes = scenario.0.shared.input_changes();
    let mut requeued = scenario
        .0
        .shared
        .take_requeued()
        .expect("the Workspace requeue stream");
    let outcome = run_then(
        scenario,
        &job,
        vec![
            status_step(&job, |body| {
                assert_eq!(body["status"]["phase"], "Succeeded")
            }),
            event_step(&job, "Normal", "Succeeded"),
        ],
        move |ctx| {
            let change = changes.try_recv().expect("the freed place is announced");
            let InputChange::Freed(claims) = &change else {
                panic!("{change:?}");
            };
            assert_eq!(
                claims
                    .iter()
                    .map(|c| (c.pool.as_str(), c.user.as_str(), c.usage.cpu_millis))
                    .collect::<Vec<_>>(),
                [("batch", "alice", 2000)]
            );
            assert_eq!(
                names_of(jobs_to_retry(&ctx.caches.batchjobs.state(), Some(&change))),
                ["sum-2"]
            );
            assert_eq!(
                requeued.try_recv().ok().map(|r| r.name),
                Some("alice".to_owned()),
                "the Workspace waiting for a place"
            );
            assert!(changes.try_recv().is_err(), "announced once");
        },
    )
    .await;
    outcome.result.expect("ok");
}

fn slurm_key() -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(json!({
        "metadata": {"name": "slurm-jwt", "namespace": "atelier",
            "labels": {"atelier.dev/slurm-key": "true"}},
        "data": {"jwtKey": "c2VjcmV0LWtleQ=="},
    }))
    .expect("a Secret")
}

/// A context whose caches hold `job` and the `hpc` pool's key, Slurm being `fake`.
fn on_slurm(
    job: &BatchJob,
    fake: &Arc<FakeSlurm>,
) -> (
    Arc<super::Context>,
    crate::operator::workspace::fixtures::ApiServerVerifier,
) {
    context(
        Jobs {
            keys: vec![slurm_key()],
            ..Jobs::of(job)
        },
        fake.systems(),
    )
}

#[tokio::test]
async fn a_slurm_job_is_finalized_submitted_polled_and_cancelled_on_deletion() {
    let fake = FakeSlurm::new({
        let mut s = JobState::new(BatchJobPhase::Succeeded);
        s.exit_code = Some(0);
        s.placement = Some("node-1".into());
        s
    });
    let base = batch_job("  nodePool: hpc");

    // 1. The finalizer first.
    let mut finalized = base.clone();
    finalized.metadata.finalizers = Some(vec![BATCHJOB_FINALIZER.into()]);
    let outcome = run(
        on_slurm(&base, &fake),
        &base,
        vec![
            Step::new(http::Method::PATCH, batchjob_path(&base, false))
                .check(|body| {
                    assert_eq!(
                        body,
                        &json!([
                            {"op": "test", "path": "/metadata/finalizers", "value": null},
                            {"op": "add", "path": "/metadata/finalizers", "value": [BATCHJOB_FINALIZER]},
                        ])
                    )
                })
                .object(&finalized),
        ],
    )
    .await;
    outcome.result.expect("ok");
    assert!(
        fake.calls().is_empty(),
        "nothing submitted before the finalizer"
    );

    // 2. Submitted once: Queued with Slurm's id.
    let outcome = run(
        on_slurm(&finalized, &fake),
        &finalized,
        vec![
            status_step(&finalized, |body| {
                let s = &body["status"];
                assert_eq!(s["phase"], "Queued");
                assert_eq!(s["system"], "slurm");
                assert_eq!(s["systemId"], "4242");
                assert_eq!(s["nodePool"], "hpc");
            }),
            event_step(&finalized, "Normal", "Queued"),
        ],
    )
    .await;
    assert_eq!(outcome.result.expect("ok"), Action::requeue(REQUEUE_POLL));
    assert_eq!(
        fake.calls(),
        [Call::Submit(
            "alice".into(),
            "debug".into(),
            finalized.spec.command.clone()
        )]
    );
    assert_eq!(*fake.key.lock().expect("lock"), b"secret-key");

    // 3. Polled: Slurm says it succeeded.
    let mut submitted = JobState::new(BatchJobPhase::Queued);
    submitted.reason = Some("Submitted".into());
    submitted.message = Some("submitted to Slurm as job 4242".into());
    let queued = with_job_status(
        finalized.clone(),
        admitted(&submitted, "hpc", "slurm", "4242"),
    );
    let outcome = run(
        on_slurm(&queued, &fake),
        &queued,
        vec![
            status_step(&queued, |body| {
                assert_eq!(body["status"]["phase"], "Succeeded");
                assert_eq!(body["status"]["exitCode"], 0);
                assert_eq!(body["status"]["podName"], "node-1");
            }),
            event_step(&queued, "Normal", "Succeeded"),
        ],
    )
    .await;
    outcome.result.expect("ok");
    assert_eq!(fake.calls().last(), Some(&Call::Status("4242".into())));

    // 4. Deleted while queued: cancelled in Slurm, then the finalizer goes.
    let mut deleting = queued.clone();
    deleting.metadata.deletion_timestamp = Some(t0());
    let mut gone = deleting.clone();
    gone.metadata.finalizers = None;
    let outcome = run(
        on_slurm(&deleting, &fake),
        &deleting,
        vec![
            Step::new(http::Method::PATCH, batchjob_path(&deleting, false))
                .check(|body| {
                    assert_eq!(
                        body,
                        &json!([
                            {"op": "test", "path": "/metadata/finalizers/0", "value": BATCHJOB_FINALIZER},
                            {"op": "remove", "path": "/metadata/finalizers/0"},
                        ])
                    )
                })
                .object(&gone),
        ],
    )
    .await;
    outcome.result.expect("ok");
    assert_eq!(fake.calls().last(), Some(&Call::Cancel("4242".into())));
}

#[tokio::test]
async fn a_slurm_job_without_its_key_waits_with_the_reason() {
    let fake = FakeSlurm::new(JobState::new(BatchJobPhase::Running));
    let mut job = batch_job("  nodePool: hpc");
    job.metadata.finalizers = Some(vec![BATCHJOB_FINALIZER.into()]);
    let outcome = run(
        context(Jobs::of(&job), fake.systems()),
        &job,
        vec![
            status_step(&job, |body| {
                assert_eq!(body["status"]["phase"], "Pending");
                assert_eq!(body["status"]["reason"], "SlurmKeyMissing");
            }),
            event_step(&job, "Warning", "SlurmKeyMissing"),
        ],
    )
    .await;
    assert_eq!(outcome.result.expect("ok"), Action::requeue(REQUEUE_POLL));
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn dereference_reads_the_caches() {
    let job = batch_job("  nodePool: batch\n  dataSources: [era5]");
    let (ctx, _verifier) = context(Jobs::default(), Box::new(no_slurm));
    let d = dereference(&job, &ctx);
    assert_eq!(
        d.profile.map(|p| p.metadata.name),
        Some(Some("pangeo".into()))
    );
    assert_eq!(d.pools.len(), 4);
    assert_eq!(d.data_sources.len(), 1);
    assert_eq!(d.groups, ["climate".to_owned()].into());
}

/// The controller lists and watches exactly its kinds (BatchJobs, their Jobs and pods, the
/// Slurm key Secrets of the operator's namespace), each request granted by the RBAC table, then
/// shuts down.
#[tokio::test]
async fn the_controller_watches_batchjobs_jobs_pods_and_slurm_keys_then_shuts_down() {
    use std::collections::{BTreeMap, BTreeSet};
    let (fed, verifier) = context(Jobs::default(), Box::new(no_slurm));
    // A fresh context: the fixture fed the caches, the controller feeds its own.
    let ctx = Arc::new(super::Context::new(
        fed.shared.clone(),
        fed.settings.clone(),
        fed.reporter.clone(),
        fed.metrics.clone(),
        Box::new(no_slurm),
    ));
    drop(fed);
    let expected: BTreeSet<(String, String)> = [
        ("/apis/atelier.dev/v1alpha1/namespaces/team/batchjobs", ""),
        (
            "/apis/batch/v1/namespaces/team/jobs",
            "app.kubernetes.io/managed-by=atelier-operator",
        ),
        ("/api/v1/namespaces/team/pods", "atelier.dev/batchjob"),
        (
            "/api/v1/namespaces/atelier/secrets",
            "atelier.dev/slurm-key=true",
        ),
    ]
    .iter()
    .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
    .collect();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let want = expected.clone();
    let server = tokio::spawn(async move {
        let mut handle = verifier.into_handle();
        let (mut listed, mut watched) = (BTreeSet::new(), BTreeSet::new());
        let mut watches = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(request.method(), http::Method::GET, "{}", request.uri());
            crate::operator::workspace::fixtures::assert_granted(&request);
            let query: BTreeMap<String, String> =
                crate::operator::workspace::fixtures::parse_query(request.uri().query());
            let key = (
                request.uri().path().to_owned(),
                query.get("labelSelector").cloned().unwrap_or_default(),
            );
            if query.get("watch").map(String::as_str) == Some("true") {
                watched.insert(key);
                watches.push(send);
                if want.is_subset(&watched) {
                    let _ = tx.send(true);
                }
                continue;
            }
            listed.insert(key);
            let body = json!({
                "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": [],
            });
            send.send_response(
                http::Response::builder()
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&body).expect("json"),
                    ))
                    .expect("a response"),
            );
        }
        (listed, watched)
    });
    let controller = super::reconcile::run_controller(ctx, Some(NS_TEAM.into()), 2, rx);
    tokio::time::timeout(
        crate::operator::workspace::fixtures::SCENARIO_TIMEOUT,
        controller,
    )
    .await
    .expect("the controller lists and watches every kind, then shuts down");
    let (listed, watched) = tokio::time::timeout(
        crate::operator::workspace::fixtures::SCENARIO_TIMEOUT,
        server,
    )
    .await
    .expect("the client is gone")
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert_eq!(listed, expected);
    assert_eq!(watched, expected);
}

const NS_TEAM: &str = "team";
