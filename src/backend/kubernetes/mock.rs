//! A mocked API server for the `kubernetes` backend's tests and the hub's tests that use it:
//! each scenario asserts every request (method, path, query, body) in order, answers it, and
//! fails on a missing or an extra request. Watches are answered with a finite stream of events.
//! As controller-rs's `ApiServerVerifier` (`src/fixtures.rs`), on `tower_test::mock::pair`.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tower_test::mock::{self, Handle};

use super::{FIELD_MANAGER, KubernetesBackendConfig};
use crate::api::v1alpha1::WorkspacePhase;
use crate::rbac::testing::{assert_json_eq, json_body, parse_query};

/// Bound of each scenario: a missing request fails the test instead of hanging it.
pub(crate) const SCENARIO_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const NS: &str = "atelier";
pub(crate) const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub(crate) const WORKSPACES: &str = "/apis/atelier.dev/v1alpha1/namespaces/atelier/workspaces";
pub(crate) const URL: &str = "http://ws-alice.atelier.svc:8888/user/alice/";

pub(crate) type Check = Box<dyn FnOnce(&Value) + Send>;

pub(crate) enum Reply {
    Json(StatusCode, Value),
    /// The request's body, echoed.
    Echo,
    /// A plain-text body (a pod's log).
    Text(String),
    /// A watch stream: one JSON event per line, then the end of the stream.
    Events(Vec<Value>),
    /// Never answered; the sender fires when the request arrives.
    Hang(oneshot::Sender<()>),
}

/// One expected request and its answer.
pub(crate) struct Step {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: BTreeMap<String, String>,
    pub(crate) check: Check,
    pub(crate) reply: Reply,
}

pub(crate) fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(crate) fn status_body(code: u16, reason: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (scenario)"), "reason": reason, "code": code,
    })
}

pub(crate) fn list_of(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "100"}, "items": items})
}

impl Step {
    pub(crate) fn new(
        method: Method,
        path: impl Into<String>,
        query: BTreeMap<String, String>,
    ) -> Step {
        Step {
            method,
            path: path.into(),
            query,
            check: Box::new(|_| {}),
            reply: Reply::Json(StatusCode::OK, json!({})),
        }
    }

    pub(crate) fn get(path: impl Into<String>) -> Step {
        Step::new(Method::GET, path, BTreeMap::new())
    }

    pub(crate) fn list(path: impl Into<String>, pairs: &[(&str, &str)], items: Vec<Value>) -> Step {
        Step::new(Method::GET, path, query(pairs)).json(list_of(items))
    }

    /// A server-side apply by `atelier-hub` (forced) of exactly `expected`, echoed.
    pub(crate) fn apply(path: impl Into<String>, expected: Value) -> Step {
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
    pub(crate) fn stop(path: impl Into<String>) -> Step {
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
    pub(crate) fn watch_list(name: &str, items: Vec<Value>) -> Step {
        let selector = format!("metadata.name={name}");
        Step::list(
            WORKSPACES,
            &[("fieldSelector", &selector), ("limit", "500")],
            items,
        )
    }

    /// The WATCH of `watch_object` on Workspace `name`, from the LIST's resource version.
    pub(crate) fn watch(name: &str, events: Vec<Value>) -> Step {
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

    pub(crate) fn json(mut self, body: Value) -> Step {
        self.reply = Reply::Json(StatusCode::OK, body);
        self
    }

    pub(crate) fn text(mut self, body: &str) -> Step {
        self.reply = Reply::Text(body.to_owned());
        self
    }

    pub(crate) fn refused(mut self, code: u16, message: &str) -> Step {
        let mut body = status_body(code, "Invalid");
        body["message"] = json!(message);
        let code = StatusCode::from_u16(code).expect("a status code");
        self.reply = Reply::Json(code, body);
        self
    }

    pub(crate) fn not_found(mut self) -> Step {
        self.reply = Reply::Json(StatusCode::NOT_FOUND, status_body(404, "NotFound"));
        self
    }

    pub(crate) fn hang(mut self, arrived: oneshot::Sender<()>) -> Step {
        self.reply = Reply::Hang(arrived);
        self
    }
}

pub(crate) fn modified(object: Value) -> Value {
    json!({"type": "MODIFIED", "object": object})
}

/// Answers the mocked API server's requests, asserting each against the scenario.
pub(crate) struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Serves `steps` in order, then asserts that no request follows (every client must be
    /// dropped for this to finish). Returns the requests seen, as `METHOD path`.
    pub(crate) async fn run(self, steps: Vec<Step>) -> Vec<String> {
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
            crate::rbac::testing::assert_granted_to(crate::rbac::Component::Hub, &request);
            let uri = request.uri().clone();
            let method = request.method().clone();
            seen.push(format!("{method} {}", uri.path()));
            // A path ending in `*` matches any path it prefixes (a generated name).
            let path = match step.path.strip_suffix('*') {
                Some(prefix) if uri.path().starts_with(prefix) => uri.path(),
                _ => step.path.as_str(),
            };
            assert_eq!(
                (&method, uri.path()),
                (&step.method, path),
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
            let body: Value = json_body(request).await;
            (step.check)(&body);
            let (code, bytes) = match step.reply {
                Reply::Json(code, value) => (code, serde_json::to_vec(&value).expect("JSON")),
                Reply::Echo => (StatusCode::OK, serde_json::to_vec(&body).expect("JSON")),
                Reply::Text(text) => (StatusCode::OK, text.into_bytes()),
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

pub(crate) fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, NS), ApiServerVerifier(handle))
}

pub(crate) fn config() -> KubernetesBackendConfig {
    let mut config = KubernetesBackendConfig::new(NS);
    // Refusals must end a start at once: a test that waited for this would time out first.
    config.start_timeout = Duration::from_secs(3600);
    config.stop_timeout = Duration::from_secs(3600);
    config
}

/// Runs `steps` against the verifier while `run` uses the backend; `run` must drop every client
/// it holds (the backend) before returning, for the verifier to see the end.
pub(crate) async fn scenario<T, F>(
    verifier: ApiServerVerifier,
    steps: Vec<Step>,
    run: F,
) -> (T, Vec<String>)
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

pub(crate) fn base64(s: &str) -> Value {
    serde_json::to_value(ByteString(s.as_bytes().to_vec())).expect("serializes")
}

/// The token Secret the hub applies for alice's default server.
pub(crate) fn expected_secret() -> Value {
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
pub(crate) fn expected_workspace(spec: Value) -> Value {
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

pub(crate) fn default_spec() -> Value {
    json!({
        "user": "alice",
        "serverName": "",
        "profile": "jupyter",
        "desiredState": "running",
    })
}

/// The Workspace `name` of `user` as the API server returns it: at `generation`, with
/// `status` (null: none yet).
pub(crate) fn server_ws(
    name: &str,
    user: &str,
    generation: i64,
    desired: &str,
    status: Value,
) -> Value {
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
pub(crate) fn status(phase: WorkspacePhase, reason: &str, message: &str, observed: i64) -> Value {
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

pub(crate) fn alice(generation: i64, status: Value) -> Value {
    server_ws("alice", "alice", generation, "running", status)
}

pub(crate) fn ws_path(name: &str) -> String {
    format!("{WORKSPACES}/{name}")
}
