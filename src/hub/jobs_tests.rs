//! The hub's jobs on the kubernetes backend, on the mocked API server: a submission is checked,
//! then written as one BatchJob; its status comes back through the informer cache (the job poll
//! makes no request); a cancel applies `spec.cancel: true`; the logs are its pod's.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::backend::kubernetes::mock::{
    ApiServerVerifier, NS, Step, config, mock_client, scenario,
};
use crate::backend::kubernetes::{KubernetesBackend, KubernetesBackendConfig};
use crate::hub::HubConfig;
use crate::hub::catalog::{Catalog, SharedCatalog};
use crate::store::Store;

const CATALOG: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: pangeo}
spec:
  displayName: Pangeo
  image: registry.example.org/pangeo:2026.11
  maxResources: {cpu: "4", memory: 8Gi}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: batch}
spec:
  purpose: batch
  maxDeadlineSeconds: 3600
"#;

const BATCHJOBS: &str = "/apis/atelier.dev/v1alpha1/namespaces/atelier/batchjobs";

struct World {
    hub: HubState,
    store: Store,
    alice: User,
    writer: Writer<BatchJob>,
}

async fn world(config: KubernetesBackendConfig) -> (World, ApiServerVerifier) {
    let (store, alice) = crate::store::memory_with_member("alice", "ocean").await;
    let (client, verifier) = mock_client();
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let backend = KubernetesBackend::new(client, config).with_job_cache(reader);
    let mut hub_config = HubConfig::new("http://127.0.0.1:8000", "http://hub:8081/hub/api");
    let mut catalog = Catalog::default();
    catalog
        .add_yaml(Path::new("catalog.yaml"), CATALOG)
        .expect("catalogue");
    hub_config.catalog = SharedCatalog::new(catalog);
    let hub = crate::hub::Hub::new(store.clone(), Arc::new(backend), hub_config);
    (
        World {
            hub,
            store,
            alice,
            writer,
        },
        verifier,
    )
}

fn request() -> JobRequest {
    JobRequest {
        profile: Some("pangeo".into()),
        command: vec!["python".into(), "-c".into(), "print(6*7)".into()],
        deadline_seconds: Some(600),
        ..JobRequest::default()
    }
}

/// The operator's status on the BatchJob `applied` (as the cache would see it).
fn with_status(applied: &Value, status: Value) -> watcher::Event<BatchJob> {
    let mut job = applied.clone();
    job["metadata"]["uid"] = json!("uid-1");
    job["status"] = status;
    watcher::Event::Apply(serde_json::from_value(job).expect("a BatchJob"))
}

#[tokio::test]
async fn a_job_is_one_batchjob_whose_status_cancel_and_logs_go_through_the_cluster() {
    let (mut w, verifier) = world(config()).await;
    let applied = Arc::new(Mutex::new(Value::Null));
    let mut apply = Step::apply(format!("{BATCHJOBS}/alice-*"), Value::Null);
    apply.check = {
        let applied = applied.clone();
        Box::new(move |body| *applied.lock().expect("lock") = body.clone())
    };
    let mut cancel_step = Step::apply(format!("{BATCHJOBS}/alice-*"), Value::Null);
    cancel_step.check = {
        let applied = applied.clone();
        Box::new(move |body| {
            let mut expected = applied.lock().expect("lock").clone();
            expected["spec"]["cancel"] = json!(true);
            crate::rbac::testing::assert_json_eq(body, &expected);
        })
    };
    let log_step = Step::new(
        http::Method::GET,
        "/api/v1/namespaces/atelier/pods/alice-job-pod01/log",
        crate::backend::kubernetes::mock::query(&[("tailLines", "10000")]),
    )
    .text("42\n");
    let steps = vec![
        apply,
        // Not in the cache yet: read once after the apply.
        Step::get(format!("{BATCHJOBS}/alice-*")).json(json!({
            "apiVersion": "atelier.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "alice-aaaaa", "namespace": NS},
            "spec": {"user": "alice", "profile": "pangeo", "command": ["python"]},
        })),
        cancel_step,
        log_step,
    ];
    let store = w.store.clone();
    let seen_applied = applied.clone();
    let (rows, seen) = scenario(verifier, steps, async move {
        let job = submit(&w.hub, &w.alice, "alice", request())
            .await
            .expect("submitted");
        let pending = job.clone();
        // The operator starts it: the cache sees the pod; the poll makes no request.
        let body = seen_applied.lock().expect("lock").clone();
        w.writer.apply_watcher_event(&with_status(
            &body,
            json!({"phase": "Running", "podName": "alice-job-pod01", "nodePool": "batch",
                   "system": "kubernetes", "startTime": "2026-12-07T02:00:00Z"}),
        ));
        poll_once(&w.hub).await.expect("poll");
        let running = store.get_job_by_id(job.id).await.expect("row");
        cancel(&w.hub, &running, "alice").await.expect("cancel");
        w.writer.apply_watcher_event(&with_status(
            &body,
            json!({"phase": "Cancelled", "podName": "alice-job-pod01", "reason": "Cancelled",
                   "startTime": "2026-12-07T02:00:00Z",
                   "completionTime": "2026-12-07T02:00:09Z"}),
        ));
        poll_once(&w.hub).await.expect("poll");
        let cancelled = store.get_job_by_id(job.id).await.expect("row");
        let logs = logs(&w.hub, &cancelled, 1024).await.expect("logs");
        drop(w);
        (pending, running, cancelled, logs)
    })
    .await;
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let body = applied.lock().expect("lock").clone();
    let (pending, running, cancelled, logs) = rows;
    assert_eq!(body["metadata"]["name"], json!(pending.name));
    assert_eq!(
        body["metadata"]["annotations"],
        json!({"atelier.dev/groups": "ocean"})
    );
    assert_eq!(
        body["spec"],
        json!({"user": "alice", "profile": "pangeo",
               "command": ["python", "-c", "print(6*7)"], "deadlineSeconds": 600})
    );
    assert_eq!(pending.system, "kubernetes");
    assert_eq!(
        pending.system_id.as_deref(),
        Some(format!("atelier/{}", pending.name).as_str())
    );
    assert_eq!(pending.phase, BatchJobPhase::Pending);
    assert_eq!(running.phase, BatchJobPhase::Running);
    assert_eq!(cancelled.phase, BatchJobPhase::Cancelled);
    assert!(cancelled.finished.is_some());
    assert_eq!(logs, "42\n");
}

#[tokio::test]
async fn a_refused_submission_writes_nothing_to_the_cluster_nor_the_store() {
    let (w, verifier) = world(config()).await;
    let store = w.store.clone();
    let (results, seen) = scenario(verifier, vec![], async move {
        let unknown = JobRequest {
            profile: Some("nope".into()),
            ..request()
        };
        let too_long = JobRequest {
            deadline_seconds: Some(7200),
            ..request()
        };
        let a = submit(&w.hub, &w.alice, "alice", unknown).await;
        let b = submit(&w.hub, &w.alice, "alice", too_long).await;
        drop(w);
        (a, b)
    })
    .await;
    assert!(seen.is_empty(), "{seen:?}");
    match results.0 {
        Err(HubError::BadRequest(m)) => assert!(m.starts_with("field \"profile\""), "{m}"),
        other => panic!("{other:?}"),
    }
    match results.1 {
        Err(HubError::BadRequest(m)) => {
            assert!(m.starts_with("field \"deadline_seconds\""), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        store
            .list_active_jobs(None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_batchjob_deleted_behind_the_hubs_back_fails_its_row() {
    let (w, verifier) = world(config()).await;
    let applied = Arc::new(Mutex::new(Value::Null));
    let mut apply = Step::apply(format!("{BATCHJOBS}/alice-*"), Value::Null);
    apply.check = {
        let applied = applied.clone();
        Box::new(move |body| *applied.lock().expect("lock") = body.clone())
    };
    let steps = vec![apply, Step::get(format!("{BATCHJOBS}/alice-*")).not_found()];
    let (job, _) = scenario(verifier, steps, async move {
        let job = submit(&w.hub, &w.alice, "alice", request()).await;
        drop(w);
        job
    })
    .await;
    let job = job.expect("a row");
    assert_eq!(job.phase, BatchJobPhase::Failed);
    assert_eq!(job.reason.as_deref(), Some("JobLost"));
}
