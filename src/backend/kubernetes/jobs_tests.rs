//! The hub's BatchJobs on the mocked API server ([`super::super::mock`]): each scenario asserts
//! every request (method, path, query, body) in order and fails on a missing or an extra one.

use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::api::v1alpha1::ResourceRequest;
use crate::backend::kubernetes::mock::*;

const BATCHJOBS: &str = "/apis/atelier.dev/v1alpha1/namespaces/atelier/batchjobs";

fn spec() -> BatchJobSpec {
    BatchJobSpec {
        user: "alice".into(),
        command: vec!["python".into(), "-c".into(), "print(6*7)".into()],
        profile: "pangeo".into(),
        resources: Some(ResourceRequest {
            cpu: Some("2".into()),
            memory: Some("4Gi".into()),
            ..ResourceRequest::default()
        }),
        node_pool: Some("batch".into()),
        data_sources: vec!["era5".into()],
        env: [("SEED".to_owned(), "1".to_owned())].into(),
        working_dir: None,
        deadline_seconds: Some(600),
        backoff_limit: None,
        cancel: false,
    }
}

/// The BatchJob the hub applies for alice's job `name` in `namespace` (`cancel` as asked).
fn expected(namespace: &str, name: &str, cancel: bool) -> Value {
    let mut spec = json!({
        "user": "alice",
        "command": ["python", "-c", "print(6*7)"],
        "profile": "pangeo",
        "resources": {"cpu": "2", "memory": "4Gi"},
        "nodePool": "batch",
        "dataSources": ["era5"],
        "env": {"SEED": "1"},
        "deadlineSeconds": 600,
    });
    if cancel {
        spec["cancel"] = json!(true);
    }
    json!({
        "apiVersion": "atelier.dev/v1alpha1",
        "kind": "BatchJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"atelier.dev/user": "alice"},
            "annotations": {"atelier.dev/groups": "climate,ocean"},
        },
        "spec": spec,
    })
}

fn groups() -> Vec<String> {
    vec!["ocean".into(), "climate".into(), "a,b".into()]
}

/// The BatchJob as the cache holds it, with `status`.
fn cached_job(name: &str, status: Value) -> BatchJob {
    let mut job = expected(NS, name, false);
    job["metadata"]["uid"] = json!(format!("uid-{name}"));
    job["status"] = status;
    serde_json::from_value(job).expect("a BatchJob")
}

fn cache_of(jobs: Vec<BatchJob>) -> Store<BatchJob> {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for job in jobs {
        writer.apply_watcher_event(&watcher::Event::InitApply(job));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

fn jobs_with(
    config: KubernetesBackendConfig,
    cache: Option<Store<BatchJob>>,
) -> (BatchJobs, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    (
        BatchJobs::new(KubernetesBackend::new(client, config), cache),
        verifier,
    )
}

fn job_path(name: &str) -> String {
    format!("{BATCHJOBS}/{name}")
}

#[tokio::test]
async fn submit_applies_one_batchjob_with_the_owners_groups_and_returns_its_place() {
    let (jobs, verifier) = jobs_with(config(), None);
    let steps = vec![Step::apply(
        job_path("alice-job-x1y2z"),
        expected(NS, "alice-job-x1y2z", false),
    )];
    let (id, seen) = scenario(verifier, steps, async move {
        jobs.submit("alice-job-x1y2z", &groups(), &spec()).await
    })
    .await;
    let id = id.expect("applied");
    assert_eq!(id.to_string(), "atelier/alice-job-x1y2z");
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn per_user_mode_applies_the_users_namespace_first() {
    let mut config = config();
    config.namespace_mode = NamespaceMode::PerUser {
        prefix: "u-".into(),
    };
    let (jobs, verifier) = jobs_with(config, None);
    let steps = vec![
        Step::apply(
            "/api/v1/namespaces/u-alice",
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "u-alice", "labels": {"atelier.dev/user": "alice"}},
            }),
        ),
        Step::apply(
            "/apis/atelier.dev/v1alpha1/namespaces/u-alice/batchjobs/alice-job-x1y2z",
            expected("u-alice", "alice-job-x1y2z", false),
        ),
    ];
    let (id, _) = scenario(verifier, steps, async move {
        jobs.submit("alice-job-x1y2z", &groups(), &spec()).await
    })
    .await;
    assert_eq!(id.expect("applied").to_string(), "u-alice/alice-job-x1y2z");
}

#[tokio::test]
async fn a_batchjob_the_api_server_refuses_is_refused_in_its_words() {
    let (jobs, verifier) = jobs_with(config(), None);
    let steps = vec![
        Step::apply(
            job_path("alice-job-x1y2z"),
            expected(NS, "alice-job-x1y2z", false),
        )
        .refused(
            422,
            "BatchJob.atelier.dev \"alice-job-x1y2z\" is invalid: spec.command: Invalid value",
        ),
    ];
    let (result, _) = scenario(verifier, steps, async move {
        jobs.submit("alice-job-x1y2z", &groups(), &spec()).await
    })
    .await;
    match result {
        Err(BatchError::Refused { system, message }) => {
            assert_eq!(system, "kubernetes");
            assert!(message.contains("spec.command: Invalid value"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn statuses_come_from_the_cache_without_a_request() {
    let done = cached_job(
        "alice-job-done1",
        json!({"phase": "Succeeded", "exitCode": 0, "podName": "alice-job-done1-abcde",
               "startTime": "2026-12-07T01:00:00Z", "completionTime": "2026-12-07T01:00:07Z",
               "nodePool": "batch", "system": "kubernetes"}),
    );
    let queued = cached_job(
        "alice-job-queu1",
        json!({"phase": "Queued", "reason": "Suspended", "message": "waiting for Kueue to admit it"}),
    );
    let (jobs, verifier) = jobs_with(config(), Some(cache_of(vec![done, queued])));
    let (states, seen) = scenario(verifier, vec![], async move {
        let done = jobs.status("atelier/alice-job-done1").await;
        let queued = jobs.status("atelier/alice-job-queu1").await;
        drop(jobs);
        (done, queued)
    })
    .await;
    assert!(seen.is_empty(), "no request: {seen:?}");
    let done = states.0.expect("a state");
    assert_eq!(done.phase, BatchJobPhase::Succeeded);
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.placement.as_deref(), Some("alice-job-done1-abcde"));
    assert_eq!(
        done.completion_time.map(|t| t.to_rfc3339()),
        Some("2026-12-07T01:00:07+00:00".into())
    );
    let queued = states.1.expect("a state");
    assert_eq!(queued.phase, BatchJobPhase::Queued);
    assert_eq!(queued.reason.as_deref(), Some("Suspended"));
}

#[tokio::test]
async fn a_job_the_cache_lacks_is_read_once_and_not_found_when_gone() {
    let (jobs, verifier) = jobs_with(config(), Some(cache_of(vec![])));
    let fresh = cached_job("alice-job-new01", Value::Null);
    let steps = vec![
        Step::get(job_path("alice-job-new01")).json(serde_json::to_value(&fresh).expect("JSON")),
        Step::get(job_path("alice-job-gone1")).not_found(),
    ];
    let (states, _) = scenario(verifier, steps, async move {
        let fresh = jobs.status("atelier/alice-job-new01").await;
        let gone = jobs.status("atelier/alice-job-gone1").await;
        drop(jobs);
        (fresh, gone)
    })
    .await;
    let fresh = states.0.expect("a state");
    assert_eq!(fresh.phase, BatchJobPhase::Pending);
    assert_eq!(fresh.message.as_deref(), Some("waiting for the operator"));
    assert!(matches!(states.1, Err(BatchError::NotFound { .. })));
}

#[tokio::test]
async fn cancel_applies_the_same_batchjob_with_cancel_true_and_nothing_for_a_gone_one() {
    let running = cached_job(
        "alice-job-run01",
        json!({"phase": "Running", "podName": "alice-job-run01-abcde"}),
    );
    let (jobs, verifier) = jobs_with(config(), Some(cache_of(vec![running])));
    let steps = vec![
        Step::apply(
            job_path("alice-job-run01"),
            expected(NS, "alice-job-run01", true),
        ),
        // Not in the cache: read once; gone, so nothing to write.
        Step::get(job_path("alice-job-gone1")).not_found(),
    ];
    let (results, seen) = scenario(verifier, steps, async move {
        let running = jobs
            .cancel("atelier/alice-job-run01", &groups(), &spec())
            .await;
        let gone = jobs
            .cancel("atelier/alice-job-gone1", &groups(), &spec())
            .await;
        drop(jobs);
        (running, gone)
    })
    .await;
    results.0.expect("cancel applied");
    results.1.expect("a gone job is cancelled already");
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn logs_are_the_end_of_the_pods_log_and_nothing_without_a_pod() {
    let running = cached_job(
        "alice-job-run01",
        json!({"phase": "Running", "podName": "alice-job-run01-abcde"}),
    );
    let queued = cached_job("alice-job-queu1", json!({"phase": "Queued"}));
    let (jobs, verifier) = jobs_with(config(), Some(cache_of(vec![running, queued])));
    let steps = vec![
        Step::new(
            http::Method::GET,
            "/api/v1/namespaces/atelier/pods/alice-job-run01-abcde/log",
            query(&[("tailLines", "10000")]),
        )
        .text("step 1\nstep 2\nanswer: 42\n"),
    ];
    let (logs, seen) = scenario(verifier, steps, async move {
        let running = jobs.logs("atelier/alice-job-run01", 11).await;
        let queued = jobs.logs("atelier/alice-job-queu1", 1024).await;
        drop(jobs);
        (running, queued)
    })
    .await;
    assert_eq!(logs.0.expect("logs"), "answer: 42\n");
    assert_eq!(logs.1.expect("no pod, no log"), "");
    assert_eq!(seen.len(), 1, "a queued job's logs make no request");
}

#[test]
fn ids_are_a_namespace_and_a_name() {
    let id = JobId::parse("atelier/alice-job-x1y2z").expect("an id");
    assert_eq!(
        (id.namespace.as_str(), id.name.as_str()),
        ("atelier", "alice-job-x1y2z")
    );
    for bad in [
        "",
        "alice-job",
        "/alice",
        "atelier/",
        "a/b/c",
        "Atelier/x",
        "atelier/../x",
    ] {
        assert!(
            matches!(JobId::parse(bad), Err(BatchError::NotFound { .. })),
            "{bad:?} is no BatchJob's place"
        );
    }
}

#[test]
fn a_batchjob_without_a_status_is_pending_and_a_slurm_one_is_placed_by_its_id() {
    let mut job = cached_job("alice-job-x1y2z", Value::Null);
    let state = state_of(&job);
    assert_eq!(state.phase, BatchJobPhase::Pending);
    assert_eq!(state.exit_code, None);
    job.status = serde_json::from_value(json!({
        "phase": "Failed", "exitCode": 3, "system": "slurm", "systemId": "117",
        "reason": "NonZeroExitCode", "message": "the command exited with 3",
    }))
    .expect("a status");
    let state = state_of(&job);
    assert_eq!(state.phase, BatchJobPhase::Failed);
    assert_eq!(state.exit_code, Some(3));
    assert_eq!(state.placement.as_deref(), Some("117"));
    assert_eq!(state.reason.as_deref(), Some("NonZeroExitCode"));
}

#[test]
fn the_tail_of_a_log_starts_at_a_character_boundary() {
    assert_eq!(tail_bytes("abc", 10), "abc");
    assert_eq!(tail_bytes("abcdef", 3), "def");
    // "é" is two bytes: a cut inside it moves past it.
    assert_eq!(tail_bytes("café!", 2), "!");
    assert_eq!(tail_bytes("café!", 3), "é!");
    assert_eq!(tail_bytes("", 0), "");
}
