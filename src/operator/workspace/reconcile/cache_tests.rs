//! Mock API scenarios of the caches and of admission: what a reconciliation costs in requests
//! (create, unchanged, a changed pod, a status-only change), the token across the cache lag,
//! and two Workspaces of one user reconciled at once against a cap of one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{REQUEUE_TRANSITIONAL, reconcile_workspace};
use crate::api::v1alpha1::Workspace;
use crate::config::OperatorConfig;
use crate::operator::Context;
use crate::operator::workspace::fixtures::{
    Cluster, SCENARIO_TIMEOUT, Step, applied, assert_granted, catalog, desired, observed, pool,
    run_scenario, seeded_context, with_pod_status, workspace,
};
use crate::operator::workspace::status::{self, StatusInput};
use crate::operator::workspace::{TOKEN_KEY, WorkspaceResources, build};
use crate::policy::workspace::validate;

const TOKEN: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn t(s: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    serde_json::from_value(json!(s)).expect("a time")
}

/// The caches: the fixtures' inputs, `workspaces`, and `ws`'s token Secret, PVC, Service,
/// NetworkPolicy and catalogue ConfigMap as applied.
fn settled(ws: &Workspace, d: &WorkspaceResources, pods: Vec<Pod>) -> Cluster {
    Cluster {
        workspaces: vec![ws.clone()],
        secrets: vec![observed(&d.secret)],
        pvcs: vec![observed(&d.pvc)],
        services: vec![observed(&d.service)],
        network_policies: vec![observed(&d.network_policy)],
        config_maps: vec![observed(&catalog(ws))],
        pods,
        ..Cluster::inputs()
    }
}

fn write_log(seen: &[crate::operator::workspace::fixtures::Seen]) -> Vec<String> {
    seen.iter()
        .map(crate::operator::workspace::fixtures::Seen::line)
        .collect()
}

/// `ws` whose status says what the reconciler derives for `pod` (`replacing` or not).
fn with_status_for(
    mut ws: Workspace,
    cfg: &OperatorConfig,
    pod: Option<&Pod>,
    replacing: bool,
) -> Workspace {
    let v = validate::validate(
        &ws,
        &crate::operator::workspace::fixtures::inputs(&ws, TOKEN),
        cfg,
    )
    .expect("valid");
    let input = StatusInput {
        generation: ws.metadata.generation,
        desired_state: v.desired_state,
        refusal: None,
        rejection: None,
        node_pool: Some("interactive"),
        url: Some(build::server_url(&v, cfg)),
        pod,
        replacing,
        data_source_changed: None,
    };
    ws.status = Some(status::derive(&input, None, &t("2026-01-01T09:00:00Z")));
    ws
}

/// An unschedulable pod of `d`, the scheduler's `message` in its PodScheduled condition.
fn unschedulable(d: &WorkspaceResources, message: &str, at: &str) -> Pod {
    let mut pod = observed(d.pod.as_ref().expect("a pod"));
    pod.status = Some(
        serde_json::from_value(json!({
            "phase": "Pending",
            "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": at,
            }],
        }))
        .expect("a pod status"),
    );
    pod
}

#[tokio::test]
async fn a_changed_pod_hash_costs_exactly_its_delete_then_its_create() {
    let cfg = OperatorConfig::default();
    let before = workspace();
    let old = desired(&before, TOKEN, &cfg);
    let old_pod = with_pod_status(observed(old.pod.as_ref().expect("a pod")), "running");
    let mut ws = before;
    ws.metadata.generation = Some(2);
    ws.spec.env = BTreeMap::from([("TZ".to_owned(), "Europe/Paris".to_owned())]);
    let d = desired(&ws, TOKEN, &cfg);
    let mut terminating = old_pod.clone();
    terminating.metadata.deletion_timestamp = Some(t("2026-01-01T09:00:00Z"));
    // The status already says the pod is being replaced: only the pod changes.
    let ws = with_status_for(ws, &cfg, Some(&terminating), true);

    let pod_path = "/api/v1/namespaces/team/pods/ws-alice";
    let steps = vec![Step::delete(
        pod_path,
        Some(serde_json::to_value(&terminating).expect("json")),
    )];
    let (ctx, verifier, _w) = seeded_context(cfg.clone(), settled(&ws, &d, vec![old_pod]));
    let outcome = run_scenario(ctx, verifier, ws.clone(), steps, |_, _| {}).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(
        write_log(&outcome.seen),
        [format!("DELETE {pod_path}")],
        "exactly the delete"
    );

    // Next pass: the cache no longer shows the pod → exactly its create, then the status.
    let pod = d.pod.clone().expect("a pod");
    let steps = vec![
        Step::apply(pod_path, applied(&pod)),
        Step::apply_status(&ws, |body| assert_eq!(body["status"]["phase"], "Pending")),
        Step::event(&ws, |body| assert_eq!(body["reason"], "Scheduling")),
    ];
    let (ctx, verifier, _w) = seeded_context(cfg, settled(&ws, &d, vec![]));
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_eq!(
        outcome.result.ok(),
        Some(Action::requeue(REQUEUE_TRANSITIONAL))
    );
    assert_eq!(
        outcome
            .seen
            .iter()
            .filter(|s| s.uri.contains("/pods/"))
            .count(),
        1,
        "one write for the one changed child"
    );
}

#[tokio::test]
async fn a_status_only_change_costs_exactly_one_status_patch() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = desired(&ws, TOKEN, &cfg);
    let earlier = unschedulable(
        &d,
        "0/3 nodes are available: 3 Insufficient cpu.",
        "2026-01-01T09:00:00Z",
    );
    let ws = with_status_for(ws, &cfg, Some(&earlier), false);
    // The scheduler now says something else (still unschedulable: same phase, same reason).
    let now = unschedulable(
        &d,
        "0/4 nodes are available: 4 Insufficient cpu.",
        "2026-01-01T09:05:00Z",
    );
    let steps = vec![Step::apply_status(&ws, |body| {
        assert_eq!(body["status"]["phase"], "Pending");
        assert_eq!(
            body["status"]["message"],
            "0/4 nodes are available: 4 Insufficient cpu."
        );
    })];
    let (ctx, verifier, _w) = seeded_context(cfg, settled(&ws, &d, vec![now]));
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(
        write_log(&outcome.seen),
        ["PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status"],
        "one status patch; no Event (phase and reason unchanged)"
    );
}

fn token_in(body: &Value) -> String {
    let secret: Secret = serde_json::from_value(body.clone()).expect("a Secret");
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(TOKEN_KEY))
        .map(|t| String::from_utf8(t.0.clone()).expect("utf-8"))
        .expect("a token")
}

#[tokio::test]
async fn a_second_pass_before_the_secret_reaches_the_cache_keeps_the_token() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = desired(&ws, TOKEN, &cfg);
    let secret_path = "/api/v1/namespaces/team/secrets/ws-alice-token";
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let written: Arc<Mutex<Option<Value>>> = Arc::default();
    let applies = |first: Arc<Mutex<Option<String>>>| {
        vec![
            Step::apply_checked(secret_path, move |body| {
                let token = token_in(body);
                let mut first = first.lock().expect("lock");
                match first.as_ref() {
                    None => *first = Some(token),
                    Some(earlier) => assert_eq!(&token, earlier, "the same token again"),
                }
            }),
            Step::apply(
                "/api/v1/namespaces/team/persistentvolumeclaims/home-alice",
                applied(&d.pvc),
            ),
            Step::apply(
                "/api/v1/namespaces/team/configmaps/ws-alice-data",
                applied(&catalog(&ws)),
            ),
            Step::apply(
                "/api/v1/namespaces/team/services/ws-alice",
                applied(&d.service),
            ),
            Step::apply(
                "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice",
                applied(&d.network_policy),
            ),
            Step::apply_checked("/api/v1/namespaces/team/pods/ws-alice", |_| {}),
        ]
    };
    // Neither the cache nor the memory knows a token: the Secret is read once (the hub may
    // have written it); there is none, so a fresh token is generated and remembered.
    let mut steps = vec![Step::get(secret_path).not_found()];
    steps.extend(applies(first.clone()));
    let keep = written.clone();
    steps.extend([
        Step::apply_status(&ws, move |body| {
            *keep.lock().expect("lock") = Some(body["status"].clone());
        }),
        Step::event(&ws, |_| {}),
    ]);
    // The caches still show none of it (this pass is what the pod's creation triggers, before
    // the other watches caught up): the operator awaits its own writes, so nothing is applied
    // again, and the status it wrote (the Workspace's cached one is still empty) is not written
    // again either, nor its Event.
    let cluster = Cluster {
        workspaces: vec![ws.clone()],
        ..Cluster::inputs()
    };
    let (ctx, verifier, _w) = seeded_context(cfg, cluster);
    let server = tokio::spawn(verifier.run(steps));
    let mut pass = ws.clone();
    for _ in 0..2 {
        let result = tokio::time::timeout(
            SCENARIO_TIMEOUT,
            reconcile_workspace(Arc::new(pass.clone()), ctx.clone()),
        )
        .await
        .expect("in time");
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(
        ctx.caches.expected.pending(),
        7,
        "6 children (with the catalogue) and the status await the caches"
    );
    let status = written.lock().expect("lock").clone().expect("a status");
    pass.status = Some(serde_json::from_value(status).expect("a status"));
    assert_eq!(
        ctx.caches.expected.status_of(&pass),
        None,
        "settled once the Workspace shows it"
    );
    assert_eq!(
        ctx.tokens.pending(),
        1,
        "remembered until the cache shows it"
    );
    let token = first.lock().expect("lock").clone().expect("a token");
    assert_eq!(
        ctx.tokens
            .remembered(ws.uid().as_deref().unwrap_or_default()),
        Some(token)
    );
    drop(ctx);
    let seen = tokio::time::timeout(SCENARIO_TIMEOUT, server)
        .await
        .expect("the verifier finished")
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert_eq!(
        seen.len(),
        9,
        "1 read and 8 writes, then nothing (no second read, no write again)"
    );
}

/// Answers every request of the reconcilers, in whatever order they come: GETs find nothing,
/// applies and Events are echoed, deletions succeed, a status apply returns the Workspace with that status.
/// Returns every request (method, path, body).
async fn serve_any(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    workspaces: Vec<Workspace>,
) -> Vec<(Method, String, Value)> {
    let mut seen = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        assert_granted(&request);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON")
        };
        let (code, reply) = if let Some(rest) = path.strip_suffix("/status") {
            let name = rest.rsplit('/').next().unwrap_or_default();
            let ws = workspaces
                .iter()
                .find(|w| w.name_any() == name)
                .expect("a known Workspace");
            let mut ws = serde_json::to_value(ws).expect("json");
            ws["status"] = body["status"].clone();
            (StatusCode::OK, ws)
        } else if method == Method::GET {
            // A new Workspace's token Secret: not written by the hub here.
            (
                StatusCode::NOT_FOUND,
                json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
                       "status": "Failure", "reason": "NotFound", "code": 404}),
            )
        } else if method == Method::DELETE {
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success"}),
            )
        } else if method == Method::POST {
            (StatusCode::CREATED, body.clone())
        } else {
            (StatusCode::OK, body.clone())
        };
        seen.push((method, path, body));
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("a response"),
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workspaces_of_one_user_reconciled_at_once_get_one_place_under_a_cap_of_one() {
    let cfg = OperatorConfig::default();
    let first = workspace();
    let mut second = workspace();
    second.metadata.name = Some("alice-two".into());
    second.metadata.uid = Some("0b6f5a3e-7c1d-4e2a-9f00-0000000a11c2".into());
    second.spec.server_name = "two".into();
    let mut capped = pool();
    capped
        .spec
        .caps
        .as_mut()
        .and_then(|c| c.per_user.as_mut())
        .expect("per-user caps")
        .workspaces = Some(1);
    let cluster = Cluster {
        workspaces: vec![first.clone(), second.clone()],
        pools: vec![capped],
        ..Cluster::inputs()
    };
    let (ctx, verifier, _w) = seeded_context(cfg, cluster);
    let server = tokio::spawn(serve_any(
        verifier.into_handle(),
        vec![first.clone(), second.clone()],
    ));
    let reconcile = |ws: &Workspace, ctx: &Arc<Context>| {
        tokio::spawn(reconcile_workspace(Arc::new(ws.clone()), ctx.clone()))
    };
    let (a, b) = (reconcile(&first, &ctx), reconcile(&second, &ctx));
    let (a, b) = tokio::time::timeout(SCENARIO_TIMEOUT, async { tokio::join!(a, b) })
        .await
        .expect("both finish in time");
    let actions = [a.expect("no panic"), b.expect("no panic")];
    assert!(actions.iter().all(Result::is_ok), "{actions:?}");
    assert_eq!(
        ctx.usage().user_usage("interactive", "alice").workspaces,
        1,
        "one reservation"
    );
    drop(ctx);
    let seen = tokio::time::timeout(SCENARIO_TIMEOUT, server)
        .await
        .expect("the server finished")
        .expect("no panic");

    let pods: Vec<&String> = seen
        .iter()
        .filter(|(m, p, _)| m == Method::PATCH && p.contains("/pods/"))
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(pods.len(), 1, "exactly one pod: {pods:?}");
    let statuses: Vec<(String, Value)> = seen
        .iter()
        .filter(|(_, p, _)| p.ends_with("/status"))
        .map(|(_, p, body)| (p.clone(), body["status"].clone()))
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    let refused: Vec<&(String, Value)> = statuses
        .iter()
        .filter(|(_, s)| s["conditions"][0]["reason"] == "UserCapExceeded")
        .collect();
    assert_eq!(refused.len(), 1, "exactly one refused: {statuses:?}");
    let (refused_path, refused_status) = refused[0];
    assert_eq!(
        refused_status["message"],
        "user alice would use 2 running workspaces in NodePool interactive (cap 1)"
    );
    // The refused one is not the one that got the pod.
    let refused_name = refused_path
        .trim_end_matches("/status")
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let pod_of_refused = format!("ws-{refused_name}");
    assert!(
        !pods[0].ends_with(&pod_of_refused),
        "{pods:?} vs {refused_name}"
    );
    // It made no write for its children (no Secret, volume, catalogue, Service, policy, pod).
    let own = [
        format!("ws-{refused_name}"),
        format!("ws-{refused_name}-token"),
        format!("home-{refused_name}"),
        format!("ws-{refused_name}-data"),
    ];
    let child_writes: Vec<&String> = seen
        .iter()
        .filter(|(m, p, _)| m == Method::PATCH && !p.ends_with("/status"))
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(
        child_writes.len(),
        6,
        "the admitted one's children: {child_writes:?}"
    );
    assert!(
        child_writes
            .iter()
            .all(|p| !own.iter().any(|o| p.rsplit('/').next() == Some(o.as_str()))),
        "{child_writes:?}"
    );
}

#[tokio::test]
async fn the_hubs_token_secret_not_cached_yet_is_read_once_and_its_token_kept() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let secret_path = "/api/v1/namespaces/team/secrets/ws-alice-token";
    // As the hub applies it just before the Workspace: its labels, the token it registered.
    let hubs: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ws-alice-token", "namespace": "team",
                     "labels": {"atelier.dev/workspace": "alice"}},
        "type": "Opaque",
        "data": {"token": "aHViLWlzc3VlZA=="},
    }))
    .expect("a Secret");
    let d = desired(&ws, "hub-issued", &cfg);
    let steps = vec![
        Step::get(secret_path).object(&hubs),
        Step::apply(secret_path, applied(&d.secret)).check(|body| {
            assert_eq!(
                token_in(body),
                "hub-issued",
                "the hub's token, not a fresh one"
            );
        }),
    ];
    let mut cluster = settled(&ws, &d, vec![]);
    cluster.secrets.clear();
    cluster.pods.clear();
    let (ctx, verifier, _w) = seeded_context(cfg, cluster);
    let pod = d.pod.clone().expect("a pod");
    let mut steps = steps;
    steps.extend([
        Step::apply("/api/v1/namespaces/team/pods/ws-alice", applied(&pod)),
        Step::apply_status(&ws, |_| {}),
        Step::event(&ws, |_| {}),
    ]);
    let outcome = run_scenario(ctx, verifier, ws, steps, |ctx, _| {
        assert_eq!(
            ctx.tokens
                .remembered("0b6f5a3e-7c1d-4e2a-9f00-00000000a11c")
                .as_deref(),
            Some("hub-issued")
        );
    })
    .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
}

/// `ws` renamed, owned by `user` in `groups`, refused with `reason` (or stopped).
fn refused_as(name: &str, user: &str, groups: &str, reason: &str, running: bool) -> Workspace {
    let mut ws = workspace();
    ws.metadata.name = Some(name.into());
    ws.metadata.uid = Some(format!("uid-{name}"));
    ws.spec.user = user.into();
    ws.annotations_mut()
        .insert("atelier.dev/groups".into(), groups.into());
    if !running {
        ws.spec.desired_state = crate::api::v1alpha1::DesiredState::Stopped;
    }
    ws.status = Some(
        serde_json::from_value(json!({
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False", "reason": reason,
                            "message": "refused", "lastTransitionTime": "2026-12-06T10:00:00Z"}],
        }))
        .expect("a status"),
    );
    ws
}

#[tokio::test]
async fn a_place_given_back_reconciles_at_once_the_workspaces_a_cap_refused() {
    use crate::policy::{Claim, Usage};
    let cluster = Cluster {
        workspaces: vec![
            workspace(),
            refused_as("alice-two", "alice", "staff", "UserCapExceeded", true),
            refused_as("dan", "dan", "climate", "GroupCapExceeded", true),
            refused_as("bob", "bob", "biology", "UserCapExceeded", true),
            refused_as("erin", "erin", "climate", "ProfileForbidden", true),
            refused_as("alice-stopped", "alice", "staff", "UserCapExceeded", false),
        ],
        ..Cluster::inputs()
    };
    let (ctx, _verifier, _writers) = seeded_context(OperatorConfig::default(), cluster);
    let mut requeued = ctx.take_requeued().expect("the requeue stream");
    assert!(ctx.take_requeued().is_none(), "taken once");

    // Nothing given back: nothing requeued.
    super::requeue_freed(&ctx);
    assert!(requeued.try_recv().is_err(), "no message yet");

    // alice's running Workspace stops: its place under the caps is given back.
    let claim = Claim {
        pool: "interactive".into(),
        user: "alice".into(),
        groups: ["climate".to_owned(), "staff".to_owned()].into(),
        usage: Usage {
            workspaces: 1,
            cpu_millis: 1000,
            memory_bytes: 2 << 30,
            gpus: 0,
        },
    };
    ctx.usage()
        .admit("team/alice", claim, None)
        .expect("no caps");
    ctx.usage().release("team/alice");
    super::requeue_freed(&ctx);
    let mut names = Vec::new();
    while let Ok(r) = requeued.try_recv() {
        names.push(r.name);
    }
    names.sort();
    // alice's other Workspace (her cap), dan (a group of alice's, its cap); not bob (another
    // user, no shared group), erin (refused by another rule), nor a stopped one.
    assert_eq!(names, ["alice-two", "dan"]);
    super::requeue_freed(&ctx);
    assert!(requeued.try_recv().is_err(), "a claim is given back once");
}
