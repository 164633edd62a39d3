//! Mock API scenarios of the `kubernetes` backend ([`super::mock`]): each asserts every request
//! (method, path, query, body) in order, answers it, and fails on a missing or an extra request.
//! Watches are answered with a finite stream of events. The scenarios with the hub (adoption of
//! admin-created Workspaces, a start's token handed to the operator) are in `crate::hub::sync`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::mock::*;
use super::*;
use crate::api::v1alpha1::WorkspacePhase;
use crate::backend::{BackendError, BackendStatus, ProgressEvent, SpawnRequest, WorkspaceBackend};

fn mock_backend(config: KubernetesBackendConfig) -> (KubernetesBackend, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    (KubernetesBackend::new(client, config), verifier)
}

fn spawn_request(options: Value) -> SpawnRequest {
    SpawnRequest {
        user: "alice".into(),
        server: String::new(),
        groups: vec!["ocean".into(), "climate".into()],
        profile: Some("jupyter".into()),
        user_options: options,
        env: BTreeMap::from([
            ("JUPYTERHUB_API_TOKEN".to_owned(), TOKEN.to_owned()),
            ("JUPYTERHUB_USER".to_owned(), "alice".to_owned()),
        ]),
        files: BTreeMap::new(),
        dask: None,
        kind: Default::default(),
    }
}

fn events(mut rx: mpsc::Receiver<ProgressEvent>) -> Vec<(u8, String, bool)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((e.progress, e.message, e.failed));
    }
    out
}

/// GET alice (404), LIST alice's Workspaces (none), apply the Secret, apply the Workspace
/// (answered at `generation` without a status).
fn first_start_steps(spec: Value, generation: i64) -> Vec<Step> {
    vec![
        Step::get(ws_path("alice")).not_found(),
        Step::list(WORKSPACES, &[("fieldSelector", "spec.user=alice")], vec![]),
        Step::apply(
            "/api/v1/namespaces/atelier/secrets/ws-alice-token",
            expected_secret(),
        ),
        Step::apply(ws_path("alice"), expected_workspace(spec))
            .json(alice(generation, Value::Null)),
    ]
}

#[tokio::test]
async fn start_applies_the_token_secret_then_the_workspace_then_follows_it_to_running() {
    use WorkspacePhase::*;
    let (backend, verifier) = mock_backend(config());
    let options = json!({
        "resources": {"cpu": 2, "memory": "4Gi"},
        "nodePool": "interactive",
        "dataSources": ["era5"],
        "default_url": "/lab",
    });
    let mut spec = default_spec();
    spec["resources"] = json!({"cpu": "2", "memory": "4Gi"});
    spec["nodePool"] = json!("interactive");
    spec["dataSources"] = json!(["era5"]);
    let mut steps = first_start_steps(spec, 1);
    steps.extend([
        Step::watch_list(
            "alice",
            vec![alice(1, status(Pending, "Creating", "Creating the pod", 1))],
        ),
        Step::watch(
            "alice",
            vec![
                modified(alice(1, status(Pending, "Creating", "Creating the pod", 1))),
                modified(alice(
                    1,
                    status(
                        Starting,
                        "Starting",
                        "Starting the server (ContainerCreating)",
                        1,
                    ),
                )),
                modified(alice(
                    1,
                    status(Running, "Running", "The server is ready", 1),
                )),
            ],
        ),
    ]);
    let (tx, rx) = mpsc::channel(32);
    let (result, _) = scenario(verifier, steps, async move {
        let result = backend.start(spawn_request(options), tx).await;
        drop(backend);
        result
    })
    .await;
    let spawned = result.expect("started");
    assert_eq!(spawned.url, URL);
    assert_eq!(spawned.handle, json!({"namespace": NS, "name": "alice"}));
    assert_eq!(
        events(rx),
        vec![
            (
                10,
                "Workspace atelier/alice submitted, waiting for the operator".into(),
                false
            ),
            (20, "Waiting for a node: Creating the pod".into(), false),
            (
                50,
                "Pulling image / starting: Starting the server (ContainerCreating)".into(),
                false
            ),
            (90, "Workspace atelier/alice is running".into(), false),
        ]
    );
}

#[tokio::test]
async fn start_refused_by_the_operator_fails_at_once_and_stops_the_workspace() {
    use WorkspacePhase::*;
    let (backend, verifier) = mock_backend(config());
    let message = "no NodePool offers 4 GPUs of type a100 to groups climate, ocean";
    let mut spec = default_spec();
    spec["resources"] = json!({"gpus": 4, "gpuType": "a100"});
    // The Workspace exists (stopped at generation 3): no LIST, and its old status is not believed.
    let stopped = server_ws(
        "alice",
        "alice",
        3,
        "stopped",
        status(Stopped, "Stopped", "Stopped", 3),
    );
    let steps = vec![
        Step::get(ws_path("alice")).json(stopped),
        Step::apply(
            "/api/v1/namespaces/atelier/secrets/ws-alice-token",
            expected_secret(),
        ),
        Step::apply(ws_path("alice"), expected_workspace(spec))
            .json(alice(4, status(Stopped, "Stopped", "Stopped", 3))),
        Step::watch_list(
            "alice",
            vec![alice(4, status(Stopped, "Stopped", "Stopped", 3))],
        ),
        Step::watch(
            "alice",
            vec![modified(alice(
                4,
                status(Pending, "NoEligiblePool", message, 4),
            ))],
        ),
        Step::stop(ws_path("alice")).json(server_ws("alice", "alice", 5, "stopped", Value::Null)),
    ];
    let (tx, rx) = mpsc::channel(32);
    let options = json!({"resources": {"gpus": 4, "gpuType": "a100"}});
    let (result, _) = scenario(verifier, steps, async move {
        let result = backend.start(spawn_request(options), tx).await;
        drop(backend);
        result
    })
    .await;
    match result {
        Err(BackendError::SpawnFailed(m)) => assert_eq!(m, message),
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
    assert_eq!(
        events(rx),
        vec![
            (
                10,
                "Workspace atelier/alice submitted, waiting for the operator".into(),
                false
            ),
            (100, format!("Spawn failed: {message}"), true),
        ]
    );
}

#[tokio::test]
async fn start_of_a_failed_workspace_fails_with_the_operators_message() {
    use WorkspacePhase::*;
    let (backend, verifier) = mock_backend(config());
    let message = "Container notebook cannot start: image not found";
    let mut steps = first_start_steps(default_spec(), 1);
    steps.extend([
        Step::watch_list(
            "alice",
            vec![alice(1, status(Pending, "Creating", "Creating the pod", 1))],
        ),
        Step::watch(
            "alice",
            vec![modified(alice(
                1,
                status(Failed, "ErrImagePull", message, 1),
            ))],
        ),
        Step::stop(ws_path("alice")),
    ]);
    let (tx, rx) = mpsc::channel(32);
    let (result, _) = scenario(verifier, steps, async move {
        let result = backend.start(spawn_request(json!({})), tx).await;
        drop(backend);
        result
    })
    .await;
    assert!(
        matches!(&result, Err(BackendError::SpawnFailed(m)) if m == message),
        "{result:?}"
    );
    let events = events(rx);
    assert_eq!(
        events.last(),
        Some(&(100, format!("Spawn failed: {message}"), true))
    );
}

#[tokio::test]
async fn start_times_out_and_stops_the_workspace() {
    let mut config = config();
    config.start_timeout = Duration::from_millis(200);
    let (backend, verifier) = mock_backend(config);
    let (arrived, watching) = oneshot::channel();
    let mut steps = first_start_steps(default_spec(), 1);
    steps.extend([
        Step::watch_list("alice", vec![alice(1, Value::Null)]),
        Step::watch("alice", vec![]).hang(arrived),
        Step::stop(ws_path("alice")),
    ]);
    let (tx, _rx) = mpsc::channel(32);
    let (result, _) = scenario(verifier, steps, async move {
        let result = backend.start(spawn_request(json!({})), tx).await;
        drop(backend);
        result
    })
    .await;
    assert!(
        matches!(result, Err(BackendError::Timeout(1))),
        "{result:?}"
    );
    assert!(watching.await.is_ok());
}

#[tokio::test]
async fn a_dropped_start_stops_its_workspace() {
    let (backend, verifier) = mock_backend(config());
    let (arrived, watching) = oneshot::channel();
    let mut steps = first_start_steps(default_spec(), 1);
    steps.extend([
        Step::watch_list("alice", vec![alice(1, Value::Null)]),
        Step::watch("alice", vec![]).hang(arrived),
        Step::stop(ws_path("alice")),
    ]);
    let (tx, _rx) = mpsc::channel(32);
    let (_, seen) = scenario(verifier, steps, async move {
        {
            let start = backend.start(spawn_request(json!({})), tx);
            tokio::select! {
                result = start => panic!("the start ended: {result:?}"),
                _ = watching => {}
            }
            // The start future is dropped here, mid-watch.
        }
        drop(backend);
    })
    .await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("PATCH /apis/atelier.dev/v1alpha1/namespaces/atelier/workspaces/alice")
    );
}

#[tokio::test]
async fn start_refuses_a_workspace_name_of_another_user_before_writing_anything() {
    let (backend, verifier) = mock_backend(config());
    let steps = vec![Step::get(ws_path("alice")).json(server_ws(
        "alice",
        "alice-admin",
        1,
        "running",
        Value::Null,
    ))];
    let (tx, _rx) = mpsc::channel(32);
    let (result, _) = scenario(verifier, steps, async move {
        let result = backend.start(spawn_request(json!({})), tx).await;
        drop(backend);
        result
    })
    .await;
    assert!(
        matches!(&result, Err(BackendError::SpawnFailed(m)) if m.contains("alice-admin")),
        "{result:?}"
    );
}

#[tokio::test]
async fn start_reuses_an_admin_created_workspace_of_the_same_server() {
    use WorkspacePhase::*;
    let (backend, verifier) = mock_backend(config());
    let admin = server_ws(
        "alice-big",
        "alice",
        2,
        "stopped",
        status(Stopped, "Stopped", "Stopped", 2),
    );
    let mut secret = expected_secret();
    secret["metadata"]["name"] = json!("ws-alice-big-token");
    secret["metadata"]["labels"]["atelier.dev/workspace"] = json!("alice-big");
    let mut ws = expected_workspace(default_spec());
    ws["metadata"]["name"] = json!("alice-big");
    ws["metadata"]["labels"]["atelier.dev/workspace"] = json!("alice-big");
    let running = server_ws(
        "alice-big",
        "alice",
        3,
        "running",
        status(Running, "Running", "ready", 3),
    );
    let steps = vec![
        Step::get(ws_path("alice")).not_found(),
        Step::list(
            WORKSPACES,
            &[("fieldSelector", "spec.user=alice")],
            vec![admin],
        ),
        Step::apply(
            "/api/v1/namespaces/atelier/secrets/ws-alice-big-token",
            secret,
        ),
        // Already running at the new generation: no watch.
        Step::apply(ws_path("alice-big"), ws).json(running),
    ];
    let (tx, _rx) = mpsc::channel(32);
    let (result, _) = scenario(verifier, steps, async move {
        let result = backend.start(spawn_request(json!({})), tx).await;
        drop(backend);
        result
    })
    .await;
    let spawned = result.expect("started");
    assert_eq!(
        spawned.handle,
        json!({"namespace": NS, "name": "alice-big"})
    );
}

#[tokio::test]
async fn bad_requests_fail_before_any_request() {
    let (backend, verifier) = mock_backend(config());
    let (tx, _rx) = mpsc::channel(32);
    let (results, _) = scenario(verifier, vec![], async move {
        let bad_options = backend
            .start(
                spawn_request(json!({"resources": {"gpus": "two"}})),
                tx.clone(),
            )
            .await;
        let mut no_token = spawn_request(json!({}));
        no_token.env.clear();
        let no_token = backend.start(no_token, tx.clone()).await;
        let mut bad_user = spawn_request(json!({}));
        bad_user.user = "Alice@example.org".into();
        let bad_user = backend.start(bad_user, tx).await;
        drop(backend);
        (bad_options, no_token, bad_user)
    })
    .await;
    match results.0 {
        Err(BackendError::SpawnFailed(m)) => assert_eq!(
            m,
            "invalid user_options.resources.gpus: expected an integer from 0 to 16, got \"two\""
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(results.1, Err(BackendError::Other(_))),
        "{:?}",
        results.1
    );
    assert!(
        matches!(&results.2, Err(BackendError::SpawnFailed(m)) if m.starts_with("invalid user name")),
        "{:?}",
        results.2
    );
}

#[tokio::test]
async fn per_user_mode_applies_the_namespace_first() {
    let mut config = config();
    config.namespace_mode = NamespaceMode::PerUser {
        prefix: "atelier-u-".into(),
    };
    let (backend, verifier) = mock_backend(config);
    let ns = "atelier-u-alice";
    let workspaces = format!("/apis/atelier.dev/v1alpha1/namespaces/{ns}/workspaces");
    let mut secret = expected_secret();
    secret["metadata"]["namespace"] = json!(ns);
    let mut ws = expected_workspace(default_spec());
    ws["metadata"]["namespace"] = json!(ns);
    let mut running = alice(1, status(WorkspacePhase::Running, "Running", "ready", 1));
    running["metadata"]["namespace"] = json!(ns);
    let steps = vec![
        Step::get(format!("{workspaces}/alice")).not_found(),
        Step::list(&workspaces, &[("fieldSelector", "spec.user=alice")], vec![]),
        Step::apply(
            format!("/api/v1/namespaces/{ns}"),
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"atelier.dev/user": "alice"}},
            }),
        ),
        Step::apply(
            format!("/api/v1/namespaces/{ns}/secrets/ws-alice-token"),
            secret,
        ),
        Step::apply(format!("{workspaces}/alice"), ws).json(running),
    ];
    let (tx, _rx) = mpsc::channel(32);
    let (result, _) = scenario(verifier, steps, async move {
        let result = backend.start(spawn_request(json!({})), tx).await;
        drop(backend);
        result
    })
    .await;
    let spawned = result.expect("started");
    assert_eq!(spawned.handle, json!({"namespace": ns, "name": "alice"}));
}

#[tokio::test]
async fn stop_sets_desired_state_stopped_and_waits_for_stopped() {
    use WorkspacePhase::*;
    let (backend, verifier) = mock_backend(config());
    let stopping = server_ws(
        "alice",
        "alice",
        5,
        "stopped",
        status(Running, "Running", "ready", 4),
    );
    let steps = vec![
        Step::stop(ws_path("alice")).json(stopping.clone()),
        Step::watch_list(
            "alice",
            vec![server_ws(
                "alice",
                "alice",
                5,
                "stopped",
                status(
                    Stopping,
                    "Stopping",
                    "Stopping: pod ws-alice is being removed",
                    5,
                ),
            )],
        ),
        Step::watch(
            "alice",
            vec![modified(server_ws(
                "alice",
                "alice",
                5,
                "stopped",
                status(Stopped, "Stopped", "Stopped; the home volume is kept", 5),
            ))],
        ),
        // Stopping again: already stopped at this generation, no watch.
        Step::stop(ws_path("alice")).json(server_ws(
            "alice",
            "alice",
            5,
            "stopped",
            status(Stopped, "Stopped", "Stopped", 5),
        )),
        // Stopping a deleted Workspace.
        Step::stop(ws_path("alice")).not_found(),
    ];
    let handle = json!({"namespace": NS, "name": "alice"});
    let (results, _) = scenario(verifier, steps, async move {
        let first = backend.stop(&handle).await;
        let again = backend.stop(&handle).await;
        let gone = backend.stop(&handle).await;
        drop(backend);
        (first, again, gone)
    })
    .await;
    assert!(results.0.is_ok(), "{:?}", results.0);
    assert!(results.1.is_ok(), "{:?}", results.1);
    assert!(results.2.is_ok(), "{:?}", results.2);
}

#[tokio::test]
async fn poll_reads_each_phase() {
    use WorkspacePhase::*;
    let (backend, verifier) = mock_backend(config());
    let cases: Vec<(Value, BackendStatus)> = vec![
        (
            alice(1, status(Running, "Running", "ready", 1)),
            BackendStatus::Running { url: URL.into() },
        ),
        (
            alice(
                1,
                status(Pending, "Scheduling", "Waiting for the scheduler", 1),
            ),
            BackendStatus::Starting,
        ),
        (
            alice(1, status(Starting, "Starting", "Starting the server", 1)),
            BackendStatus::Starting,
        ),
        (alice(1, Value::Null), BackendStatus::Starting),
        (
            alice(1, status(Failed, "CrashLoopBackOff", "keeps crashing", 1)),
            BackendStatus::Failed {
                message: "keeps crashing".into(),
            },
        ),
        (
            alice(
                1,
                status(Pending, "UserCapExceeded", "at most 2 workspaces", 1),
            ),
            BackendStatus::Failed {
                message: "at most 2 workspaces".into(),
            },
        ),
        (
            server_ws(
                "alice",
                "alice",
                2,
                "stopped",
                status(Stopped, "Stopped", "Stopped; the home volume is kept", 2),
            ),
            BackendStatus::Stopped {
                reason: Some("Stopped; the home volume is kept".into()),
            },
        ),
    ];
    let mut steps: Vec<Step> = cases
        .iter()
        .map(|(ws, _)| Step::get(ws_path("alice")).json(ws.clone()))
        .collect();
    steps.push(Step::get(ws_path("alice")).not_found());
    let handle = json!({"namespace": NS, "name": "alice"});
    let n = cases.len();
    let (results, _) = scenario(verifier, steps, async move {
        let mut results = Vec::new();
        for _ in 0..=n {
            results.push(backend.poll(&handle).await.expect("polled"));
        }
        let bad = backend.poll(&json!({"pid": 12})).await;
        drop(backend);
        (results, bad)
    })
    .await;
    let (results, bad) = results;
    for (i, (_, expected)) in cases.iter().enumerate() {
        assert_eq!(&results[i], expected, "case {i}");
    }
    assert_eq!(
        results[n],
        BackendStatus::Stopped {
            reason: Some("the Workspace no longer exists".into())
        }
    );
    assert!(matches!(bad, Err(BackendError::BadHandle(_))), "{bad:?}");
}

#[tokio::test]
async fn the_observer_reports_the_workspaces_of_their_users_namespaces_and_reads_tokens() {
    use WorkspacePhase::*;
    let mut config = config();
    config.namespace_mode = NamespaceMode::PerUser {
        prefix: "atelier-u-".into(),
    };
    let (client, verifier) = mock_client();
    let observer = WorkspaceObserver::new(client, config);
    let mut mine = alice(1, status(Running, "Running", "ready", 1));
    mine["metadata"]["namespace"] = json!("atelier-u-alice");
    // Alice's Workspace in bob's namespace is not one this hub manages.
    let mut elsewhere = server_ws("alice-2", "alice", 1, "running", Value::Null);
    elsewhere["metadata"]["namespace"] = json!("atelier-u-bob");
    let mut secret = expected_secret();
    secret["metadata"]["namespace"] = json!("atelier-u-alice");
    let handle = WorkspaceHandle {
        namespace: "atelier-u-alice".into(),
        name: "alice".into(),
    };
    let steps = vec![
        Step::list(
            "/apis/atelier.dev/v1alpha1/workspaces",
            &[],
            vec![elsewhere, mine],
        ),
        Step::get("/api/v1/namespaces/atelier-u-alice/secrets/ws-alice-token").json(secret),
        Step::get("/apis/atelier.dev/v1alpha1/namespaces/atelier-u-alice/workspaces/alice")
            .not_found(),
    ];
    let ((listed, token, gone, scopes), _) = scenario(verifier, steps, async move {
        let listed = observer.list().await.expect("listed");
        let token = observer.token(&handle).await.expect("read");
        let gone = observer.status(&handle).await.expect("read");
        let scopes = (
            observer.in_scope(&handle),
            observer.in_scope(&WorkspaceHandle {
                namespace: "atelier".into(),
                name: "alice".into(),
            }),
        );
        (listed, token, gone, scopes)
    })
    .await;
    assert_eq!(
        listed,
        vec![ObservedWorkspace {
            user: "alice".into(),
            server: String::new(),
            profile: "jupyter".into(),
            handle: WorkspaceHandle {
                namespace: "atelier-u-alice".into(),
                name: "alice".into(),
            },
            status: BackendStatus::Running { url: URL.into() },
        }]
    );
    assert_eq!(token.as_deref(), Some(TOKEN));
    assert!(matches!(gone, BackendStatus::Stopped { .. }), "{gone:?}");
    assert_eq!(scopes, (true, false));
}
