//! Mock API scenarios of the `kubernetes` backend: each asserts every request (method, path,
//! query, body) in order, answers it, and fails on a missing or an extra request. Watches are
//! answered with a finite stream of events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tower_test::mock::{self, Handle};

use super::*;
use crate::api::v1alpha1::WorkspacePhase;
use crate::backend::{BackendError, BackendStatus, ProgressEvent, SpawnRequest, WorkspaceBackend};
use crate::hub::{Hub, HubConfig};
use crate::operator::workspace::fixtures::{assert_json_eq, parse_query};
use crate::store::{ServerState, Store, StoreError, TokenOwner};

/// Bound of each scenario: a missing request fails the test instead of hanging it.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(10);
const NS: &str = "atelier";
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const WORKSPACES: &str = "/apis/atelier.dev/v1alpha1/namespaces/atelier/workspaces";
const URL: &str = "http://ws-alice.atelier.svc:8888/user/alice/";

type Check = Box<dyn FnOnce(&Value) + Send>;

enum Reply {
    Json(StatusCode, Value),
    /// The request's body, echoed.
    Echo,
    /// A watch stream: one JSON event per line, then the end of the stream.
    Events(Vec<Value>),
    /// Never answered; the sender fires when the request arrives.
    Hang(oneshot::Sender<()>),
}

/// One expected request and its answer.
struct Step {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    check: Check,
    reply: Reply,
}

fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (scenario)"), "reason": reason, "code": code,
    })
}

fn list_of(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "100"}, "items": items})
}

impl Step {
    fn new(method: Method, path: impl Into<String>, query: BTreeMap<String, String>) -> Step {
        Step {
            method,
            path: path.into(),
            query,
            check: Box::new(|_| {}),
            reply: Reply::Json(StatusCode::OK, json!({})),
        }
    }

    fn get(path: impl Into<String>) -> Step {
        Step::new(Method::GET, path, BTreeMap::new())
    }

    fn list(path: impl Into<String>, pairs: &[(&str, &str)], items: Vec<Value>) -> Step {
        Step::new(Method::GET, path, query(pairs)).json(list_of(items))
    }

    /// A server-side apply by `atelier-hub` (forced) of exactly `expected`, echoed.
    fn apply(path: impl Into<String>, expected: Value) -> Step {
        let mut step = Step::new(
            Method::PATCH,
            path,
            query(&[("fieldManager", FIELD_MANAGER), ("force", "true")]),
        );
        step.check = Box::new(move |body| assert_json_eq(body, &expected));
        step.reply = Reply::Echo;
        step
    }

    /// A merge patch by `atelier-hub` setting `desiredState: stopped`.
    fn stop(path: impl Into<String>) -> Step {
        let mut step = Step::new(
            Method::PATCH,
            path,
            query(&[("fieldManager", FIELD_MANAGER)]),
        );
        step.check =
            Box::new(|body| assert_json_eq(body, &json!({"spec": {"desiredState": "stopped"}})));
        step
    }

    /// The initial LIST of `watch_object` on Workspace `name`.
    fn watch_list(name: &str, items: Vec<Value>) -> Step {
        let selector = format!("metadata.name={name}");
        Step::list(
            WORKSPACES,
            &[("fieldSelector", &selector), ("limit", "500")],
            items,
        )
    }

    /// The WATCH of `watch_object` on Workspace `name`, from the LIST's resource version.
    fn watch(name: &str, events: Vec<Value>) -> Step {
        let selector = format!("metadata.name={name}");
        let mut step = Step::new(
            Method::GET,
            WORKSPACES,
            query(&[
                ("watch", "true"),
                ("timeoutSeconds", "290"),
                ("fieldSelector", &selector),
                ("allowWatchBookmarks", "true"),
                ("resourceVersion", "100"),
            ]),
        );
        step.reply = Reply::Events(events);
        step
    }

    fn json(mut self, body: Value) -> Step {
        self.reply = Reply::Json(StatusCode::OK, body);
        self
    }

    fn not_found(mut self) -> Step {
        self.reply = Reply::Json(StatusCode::NOT_FOUND, status_body(404, "NotFound"));
        self
    }

    fn hang(mut self, arrived: oneshot::Sender<()>) -> Step {
        self.reply = Reply::Hang(arrived);
        self
    }
}

fn modified(object: Value) -> Value {
    json!({"type": "MODIFIED", "object": object})
}

/// Answers the mocked API server's requests, asserting each against the scenario.
struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Serves `steps` in order, then asserts that no request follows (every client must be
    /// dropped for this to finish). Returns the requests seen, as `METHOD path`.
    async fn run(self, steps: Vec<Step>) -> Vec<String> {
        let mut handle = self.0;
        let mut seen = Vec::new();
        let mut hung = Vec::new();
        let total = steps.len();
        for (i, step) in steps.into_iter().enumerate() {
            let Some((request, send)) = handle.next_request().await else {
                panic!(
                    "step {}/{total}: expected {} {} but nothing more was sent; seen: {seen:#?}",
                    i + 1,
                    step.method,
                    step.path
                );
            };
            crate::operator::workspace::fixtures::assert_granted_to(
                crate::rbac::Component::Hub,
                &request,
            );
            let uri = request.uri().clone();
            let method = request.method().clone();
            seen.push(format!("{method} {}", uri.path()));
            assert_eq!(
                (&method, uri.path()),
                (&step.method, step.path.as_str()),
                "step {}/{total}: method and path (query {:?})",
                i + 1,
                uri.query()
            );
            assert_eq!(
                parse_query(uri.query()),
                step.query,
                "step {}/{total}: query of {method} {uri}",
                i + 1
            );
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("request body is JSON")
            };
            (step.check)(&body);
            let (code, bytes) = match step.reply {
                Reply::Json(code, value) => (code, serde_json::to_vec(&value).expect("JSON")),
                Reply::Echo => (StatusCode::OK, serde_json::to_vec(&body).expect("JSON")),
                Reply::Events(events) => {
                    let mut bytes = Vec::new();
                    for event in events {
                        bytes.extend(serde_json::to_vec(&event).expect("JSON"));
                        bytes.push(b'\n');
                    }
                    (StatusCode::OK, bytes)
                }
                Reply::Hang(arrived) => {
                    let _ = arrived.send(());
                    hung.push(send);
                    continue;
                }
            };
            let response = Response::builder()
                .status(code)
                .body(Body::from(bytes))
                .expect("a response");
            send.send_response(response);
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!(
                "unexpected request after the scenario: {} {}; seen: {seen:#?}",
                request.method(),
                request.uri()
            );
        }
        drop(hung);
        seen
    }
}

fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, NS), ApiServerVerifier(handle))
}

fn mock_backend(config: KubernetesBackendConfig) -> (KubernetesBackend, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    (KubernetesBackend::new(client, config), verifier)
}

fn config() -> KubernetesBackendConfig {
    let mut config = KubernetesBackendConfig::new(NS);
    // Refusals must end a start at once: a test that waited for this would time out first.
    config.start_timeout = Duration::from_secs(3600);
    config.stop_timeout = Duration::from_secs(3600);
    config
}

/// Runs `steps` against the verifier while `run` uses the backend; `run` must drop every client
/// it holds (the backend) before returning, for the verifier to see the end.
async fn scenario<T, F>(verifier: ApiServerVerifier, steps: Vec<Step>, run: F) -> (T, Vec<String>)
where
    F: std::future::Future<Output = T>,
{
    let server = tokio::spawn(verifier.run(steps));
    let out = tokio::time::timeout(SCENARIO_TIMEOUT, run)
        .await
        .expect("the backend finished in time (a request may be missing)");
    let seen = match tokio::time::timeout(SCENARIO_TIMEOUT, server)
        .await
        .expect("the verifier finished in time (a client is still alive?)")
    {
        Ok(seen) => seen,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    (out, seen)
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
    }
}

fn base64(s: &str) -> Value {
    serde_json::to_value(ByteString(s.as_bytes().to_vec())).expect("serializes")
}

/// The token Secret the hub applies for alice's default server.
fn expected_secret() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "ws-alice-token",
            "namespace": NS,
            "labels": {
                "atelier.dev/user": "alice",
                "atelier.dev/server": "",
                "atelier.dev/workspace": "alice",
            },
        },
        "type": "Opaque",
        "data": {"token": base64(TOKEN)},
    })
}

/// The Workspace the hub applies for alice's default server with `spec`.
fn expected_workspace(spec: Value) -> Value {
    json!({
        "apiVersion": "atelier.dev/v1alpha1",
        "kind": "Workspace",
        "metadata": {
            "name": "alice",
            "namespace": NS,
            "labels": {
                "atelier.dev/user": "alice",
                "atelier.dev/server": "",
                "atelier.dev/workspace": "alice",
            },
            "annotations": {"atelier.dev/groups": "climate,ocean"},
        },
        "spec": spec,
    })
}

fn default_spec() -> Value {
    json!({
        "user": "alice",
        "serverName": "",
        "profile": "jupyter",
        "desiredState": "running",
    })
}

/// The Workspace `name` of `user` as the API server returns it: at `generation`, with
/// `status` (null: none yet).
fn server_ws(name: &str, user: &str, generation: i64, desired: &str, status: Value) -> Value {
    let mut ws = json!({
        "apiVersion": "atelier.dev/v1alpha1",
        "kind": "Workspace",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("uid-{name}"),
            "resourceVersion": format!("{generation}0"),
            "generation": generation,
        },
        "spec": {"user": user, "serverName": "", "profile": "jupyter", "desiredState": desired},
    });
    if !status.is_null() {
        ws["status"] = status;
    }
    ws
}

/// A status: `phase`, Ready (`True` when running) with `reason` and `message`.
fn status(phase: WorkspacePhase, reason: &str, message: &str, observed: i64) -> Value {
    let running = phase == WorkspacePhase::Running;
    let mut status = json!({
        "phase": phase.as_str(),
        "conditions": [{
            "type": "Ready",
            "status": if running { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "lastTransitionTime": "2026-01-01T09:00:00Z",
            "observedGeneration": observed,
        }],
        "message": message,
        "observedGeneration": observed,
    });
    if running {
        status["url"] = json!(URL);
        status["nodePool"] = json!("interactive");
    }
    status
}

fn alice(generation: i64, status: Value) -> Value {
    server_ws("alice", "alice", generation, "running", status)
}

fn events(mut rx: mpsc::Receiver<ProgressEvent>) -> Vec<(u8, String, bool)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((e.progress, e.message, e.failed));
    }
    out
}

fn ws_path(name: &str) -> String {
    format!("{WORKSPACES}/{name}")
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

/// `bob-big`, created by an admin for bob's default server.
fn admin_ws(desired: &str, status: Value) -> Value {
    let mut ws = server_ws("bob-big", "bob", 1, desired, status);
    if let Some(url) = ws["status"].get_mut("url") {
        *url = json!("http://ws-bob-big.atelier.svc:8888/user/bob/");
    }
    ws
}

fn bob_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ws-bob-big-token", "namespace": NS, "labels": {"atelier.dev/workspace": "bob-big"}},
        "data": {"token": base64(TOKEN)},
    })
}

#[tokio::test]
async fn sync_adopts_an_admin_created_workspace_and_stops_it_when_kubectl_does() {
    use WorkspacePhase::*;
    let store = Store::connect("sqlite::memory:").await.expect("store");
    let (client, verifier) = mock_client();
    let backend = KubernetesBackend::new(client.clone(), config());
    let hub = Hub::new(
        store.clone(),
        Arc::new(backend),
        HubConfig::new("http://127.0.0.1:8000/", "http://hub:8081/hub/api"),
    );
    let running = admin_ws("running", status(Running, "Running", "ready", 1));
    let carol_pending = server_ws(
        "carol",
        "carol",
        1,
        "running",
        status(Pending, "Scheduling", "waiting", 1),
    );
    let stopped = admin_ws(
        "stopped",
        status(Stopped, "Stopped", "Stopped; the home volume is kept", 1),
    );
    let secret_path = "/api/v1/namespaces/atelier/secrets/ws-bob-big-token";
    let steps = vec![
        // Pass 1: adopted (carol's is not running: left alone).
        Step::list(
            WORKSPACES,
            &[],
            vec![running.clone(), carol_pending.clone()],
        ),
        Step::get(secret_path).json(bob_secret()),
        // Pass 2: known, nothing to do.
        Step::list(WORKSPACES, &[], vec![running.clone(), carol_pending]),
        // Pass 3: stopped with kubectl.
        Step::list(WORKSPACES, &[], vec![stopped]),
        // Pass 4: running again: adopted again.
        Step::list(WORKSPACES, &[], vec![running]),
        Step::get(secret_path).json(bob_secret()),
        // Pass 5: deleted with kubectl: not listed, confirmed gone.
        Step::list(WORKSPACES, &[], vec![]),
        Step::get(ws_path("bob-big")).not_found(),
    ];
    let cfg = config();
    let ((reports, checks), _) = scenario(verifier, steps, async move {
        let mut reports = Vec::new();
        let mut checks = Vec::new();
        for _ in 0..5 {
            reports.push(
                sync_workspaces(&hub, client.clone(), &cfg)
                    .await
                    .expect("synced"),
            );
            let server = store.get_server_by_names("bob", "").await.ok();
            let token = store.lookup_token(TOKEN, crate::store::now()).await;
            let oauth = store
                .verify_oauth_client("jupyterhub-user-bob", TOKEN)
                .await;
            checks.push((server, token, oauth.map(|c| c.redirect_uri)));
        }
        drop(client);
        drop(hub);
        (reports, checks)
    })
    .await;
    let bob = || vec!["bob/".to_owned()];
    assert_eq!(reports[0].adopted, bob());
    assert!(reports[1].is_empty(), "{:?}", reports[1]);
    assert_eq!(reports[2].stopped, bob());
    assert_eq!(reports[3].adopted, bob());
    assert_eq!(reports[4].stopped, bob());

    let (server, token, oauth) = &checks[0];
    assert_eq!(
        oauth.as_deref().ok(),
        Some("http://127.0.0.1:8000/user/bob/oauth_callback"),
        "the OAuth client's secret is the token"
    );
    let server = server.as_ref().expect("bob's server row");
    assert_eq!(server.state, ServerState::Running);
    assert_eq!(
        server.url.as_deref(),
        Some("http://ws-bob-big.atelier.svc:8888/user/bob/")
    );
    assert_eq!(
        server.spawner_state,
        json!({"namespace": NS, "name": "bob-big"})
    );
    assert_eq!(server.profile.as_deref(), Some("jupyter"));
    let identity = token
        .as_ref()
        .expect("the Workspace's token is the server's API token");
    let user = identity.user.as_ref().expect("a user's token");
    assert_eq!(user.name, "bob");
    assert_eq!(identity.token.owner, TokenOwner::User(user.id));
    assert_eq!(
        identity.token.scopes,
        crate::hub::spawner::server_token_scopes("bob", "")
    );
    assert_eq!(
        identity.token.oauth_client_id.as_deref(),
        Some("jupyterhub-user-bob")
    );

    let (server, token, oauth) = &checks[2];
    assert_eq!(server.as_ref().map(|s| s.state), Some(ServerState::Stopped));
    assert!(
        matches!(token, Err(StoreError::NotFound)),
        "revoked: {token:?}"
    );
    assert!(matches!(oauth, Err(StoreError::NotFound)), "{oauth:?}");
    assert_eq!(
        checks[3].0.as_ref().map(|s| s.state),
        Some(ServerState::Running)
    );
    assert!(checks[3].1.is_ok());
    assert_eq!(
        checks[4].0.as_ref().map(|s| s.state),
        Some(ServerState::Stopped)
    );
    assert!(matches!(checks[4].1, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn a_hub_start_hands_its_server_token_to_the_operator_through_the_secret() {
    use WorkspacePhase::*;
    let store = Store::connect("sqlite::memory:").await.expect("store");
    let alice_user = store.create_user("alice", false).await.expect("user");
    store
        .create_group("ocean", &json!({}))
        .await
        .expect("group");
    store
        .add_group_members("ocean", &["alice".to_owned()])
        .await
        .expect("member");
    let (client, verifier) = mock_client();
    let hub = Hub::new(
        store.clone(),
        Arc::new(KubernetesBackend::new(client, config())),
        HubConfig::new("http://127.0.0.1:8000", "http://hub:8081/hub/api"),
    );
    let captured = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut secret_step = Step::apply(
        "/api/v1/namespaces/atelier/secrets/ws-alice-token",
        json!(null),
    );
    secret_step.check = {
        let captured = captured.clone();
        Box::new(move |body| {
            let mut without_data = body.clone();
            let data = without_data
                .as_object_mut()
                .and_then(|o| o.remove("data"))
                .expect("the Secret has data");
            let mut expected = expected_secret();
            expected.as_object_mut().map(|o| o.remove("data"));
            assert_json_eq(&without_data, &expected);
            let token: ByteString =
                serde_json::from_value(data["token"].clone()).expect("base64 token");
            *captured.lock().expect("lock") = Some(String::from_utf8(token.0).expect("utf-8"));
        })
    };
    let mut ws = expected_workspace(default_spec());
    ws["metadata"]["annotations"]["atelier.dev/groups"] = json!("ocean");
    let steps = vec![
        Step::get(ws_path("alice")).not_found(),
        Step::list(WORKSPACES, &[("fieldSelector", "spec.user=alice")], vec![]),
        secret_step,
        // The operator was quick: running at once, no watch needed.
        Step::apply(ws_path("alice"), ws).json(alice(1, status(Running, "Running", "ready", 1))),
    ];
    let options = crate::hub::spawner::StartOptions {
        profile: Some("jupyter".into()),
        ..Default::default()
    };
    let check_store = store.clone();
    let (server, _) = scenario(verifier, steps, async move {
        crate::hub::spawner::start_server(&hub, &alice_user, "", options)
            .await
            .expect("start accepted");
        let server = loop {
            let server = check_store
                .get_server_by_names("alice", "")
                .await
                .expect("row");
            if server.state == ServerState::Running {
                break server;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        drop(hub);
        server
    })
    .await;
    assert_eq!(server.url.as_deref(), Some(URL));
    assert_eq!(
        server.spawner_state,
        json!({"namespace": NS, "name": "alice"})
    );
    let token = captured
        .lock()
        .expect("lock")
        .clone()
        .expect("a token in the Secret");
    let identity = store
        .lookup_token(&token, crate::store::now())
        .await
        .expect("the Secret's token is the one the hub registered");
    assert_eq!(identity.user.map(|u| u.name).as_deref(), Some("alice"));
    assert_eq!(
        identity.token.scopes,
        crate::hub::spawner::server_token_scopes("alice", "")
    );
    assert!(
        store
            .verify_oauth_client("jupyterhub-user-alice", &token)
            .await
            .is_ok(),
        "and the secret of the server's OAuth client"
    );
}
