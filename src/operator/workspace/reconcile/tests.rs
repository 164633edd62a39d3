//! Mock API scenarios: one per reconcile branch. The informer caches hold the scenario's
//! cluster ([`Cluster`]); the mock API server asserts every request (method, path, query, body)
//! in order, answers it, and fails on a missing or an extra request. Every read comes from the
//! caches, so the requests are the writes only. Expected bodies come from the real `validate` +
//! `build` (plus the applied-hash annotation).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{REQUEUE_REFUSED, REQUEUE_STEADY, REQUEUE_TRANSITIONAL, error_policy, workspace_key};
use crate::api::v1alpha1::{
    DataSource, DesiredState, HomeReclaim, ResourceRequest, Workspace, WorkspacePhase,
};
use crate::config::{NamespaceMode, OperatorConfig};
use crate::operator::Error;
use crate::operator::metrics;
use crate::operator::workspace::build::DataChildren;
use crate::operator::workspace::fixtures::{
    ApiServerVerifier, Cluster, NS, Outcome, Seen, Step, applied, assert_json_eq,
    credentials_secret, csi_driver, desired, inputs, observed, pool, profile, run_scenario,
    s3_csi_data_source, seeded_context, seeded_probing_context, validated, with_pod_status,
    workspace, workspace_path,
};
use crate::operator::workspace::status::{self, StatusInput};
use crate::operator::workspace::{TOKEN_KEY, WorkspaceResources, build};
use crate::policy::workspace::validate;

const TOKEN: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
const PROFILE: &str = "/apis/atelier.dev/v1alpha1/workspaceprofiles/jupyter";

fn core_path(ns: &str, plural: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("/api/v1/namespaces/{ns}/{plural}/{name}"),
        None => format!("/api/v1/namespaces/{ns}/{plural}"),
    }
}

fn netpol_path(ns: &str, name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}")
}

fn ns_of(ws: &Workspace) -> String {
    ws.namespace().unwrap_or_default()
}

fn name<K: ResourceExt>(object: &K) -> String {
    object.name_any()
}

/// The children of `ws` with the fixed token.
fn children(ws: &Workspace, cfg: &OperatorConfig) -> WorkspaceResources {
    desired(ws, TOKEN, cfg)
}

fn the_pod(d: &WorkspaceResources) -> Pod {
    d.pod.clone().expect("a running workspace has a pod")
}

/// The caches of a scenario: the fixtures' inputs, `ws` and a stopped Workspace of bob, and the
/// `secrets` of `ws`.
fn cluster(ws: &Workspace, secrets: &[Secret]) -> Cluster {
    let mut other = ws.clone();
    other.metadata.uid = Some("someone-else".into());
    other.metadata.name = Some("bob".into());
    other.spec.user = "bob".into();
    other.spec.desired_state = DesiredState::Stopped;
    Cluster {
        workspaces: vec![ws.clone(), other],
        secrets: secrets.to_vec(),
        ..Cluster::inputs()
    }
}

/// The catalogue ConfigMap of `ws` (the fixtures' data source `era5`).
fn catalog_of(ws: &Workspace) -> k8s_openapi::api::core::v1::ConfigMap {
    crate::operator::workspace::fixtures::catalog(ws)
}

/// `cluster` where the PVC, Service, NetworkPolicy and the catalogue ConfigMap of its first
/// Workspace exist with their hashes.
fn with_children(mut cluster: Cluster, d: &WorkspaceResources) -> Cluster {
    cluster.pvcs.push(observed(&d.pvc));
    cluster.services.push(observed(&d.service));
    cluster.network_policies.push(observed(&d.network_policy));
    let catalog = catalog_of(&cluster.workspaces[0]);
    cluster.config_maps.push(observed(&catalog));
    cluster
}

/// `cluster` with `pods`.
fn with_pods(mut cluster: Cluster, pods: &[Pod]) -> Cluster {
    cluster.pods.extend_from_slice(pods);
    cluster
}

/// A context on the mocked API server whose caches hold `cluster`.
fn context(
    cfg: &OperatorConfig,
    cluster: Cluster,
) -> (std::sync::Arc<crate::operator::Context>, ApiServerVerifier) {
    let (ctx, verifier, _writers) = seeded_context(cfg.clone(), cluster);
    (ctx, verifier)
}

fn pod_path(ws: &Workspace, pod: &Pod) -> String {
    core_path(&ns_of(ws), "pods", Some(&name(pod)))
}

fn t0() -> Time {
    serde_json::from_value(json!("2026-01-01T09:00:00Z")).expect("a time")
}

/// The status input of `ws` running (or stopped) with `pod`.
fn input_for<'a>(
    ws: &Workspace,
    cfg: &OperatorConfig,
    pod: Option<&'a Pod>,
    replacing: bool,
) -> StatusInput<'a> {
    let v = validated(ws, TOKEN, cfg);
    StatusInput {
        generation: ws.metadata.generation,
        desired_state: v.desired_state,
        refusal: None,
        rejection: None,
        node_pool: Some("interactive"),
        url: Some(build::server_url(&v, cfg)),
        pod,
        replacing,
        data_source_changed: None,
    }
}

/// `ws` carrying the status the reconciler derives for `pod` (as if written at t0).
fn with_status(mut ws: Workspace, cfg: &OperatorConfig, pod: Option<&Pod>) -> Workspace {
    let status = status::derive(&input_for(&ws, cfg, pod, false), None, &t0());
    ws.status = Some(status);
    ws
}

/// The status without the clock: `lastTransitionTime`s are asserted present and removed.
fn without_times(body: &Value) -> Value {
    let mut status = body["status"].clone();
    if let Some(conditions) = status["conditions"].as_array_mut() {
        for c in conditions {
            assert!(c["lastTransitionTime"].is_string(), "{c}");
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
    }
    status
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation,
    })
}

/// The observed pod of `d`, scheduled on node-1 and ready.
fn running_pod(d: &WorkspaceResources) -> Pod {
    let mut pod = with_pod_status(observed(&the_pod(d)), "running");
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some("node-1".into());
    }
    pod
}

fn terminating(mut pod: Pod) -> Pod {
    pod.metadata.deletion_timestamp = Some(t0());
    pod
}

fn token_secret(d: &WorkspaceResources) -> Secret {
    observed(&d.secret)
}

fn assert_ok(outcome: &Outcome, expected: Action) {
    match &outcome.result {
        Ok(action) => assert_eq!(action, &expected),
        Err(error) => panic!("reconcile failed: {error}"),
    }
}

fn write_log(outcome: &Outcome) -> Vec<String> {
    outcome.writes().into_iter().map(Seen::line).collect()
}

#[tokio::test]
async fn create_adds_the_finalizer_then_applies_every_child_in_order_then_the_status() {
    let cfg = OperatorConfig::default();

    // Pass 1: a new Workspace only gets the finalizer.
    let mut fresh = workspace();
    fresh.metadata.finalizers = None;
    let (ctx, verifier) = context(&cfg, cluster(&fresh, &[]));
    let steps = vec![Step::add_finalizer(&fresh)];
    let outcome = run_scenario(ctx, verifier, fresh, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::await_change());
    assert_eq!(outcome.seen.len(), 1);

    // Pass 2: nothing exists yet. A fresh token is generated and every child is applied.
    let ws = workspace();
    let d = children(&ws, &cfg);
    let ns = ns_of(&ws);
    let pod = the_pod(&d);
    let (check_ws, check_cfg) = (ws.clone(), cfg.clone());
    let steps = vec![
        // The token Secret is neither cached nor remembered: read once (the hub may have
        // written it); there is none.
        Step::get(core_path(&ns, "secrets", Some(&name(&d.secret)))).not_found(),
        Step::apply_checked(
            core_path(&ns, "secrets", Some(&name(&d.secret))),
            move |body| {
                let secret: Secret = serde_json::from_value(body.clone()).expect("a Secret");
                let token = secret
                    .data
                    .as_ref()
                    .and_then(|data| data.get(TOKEN_KEY))
                    .map(|t| String::from_utf8(t.0.clone()).expect("utf-8"))
                    .expect("a token");
                assert_eq!(token.len(), 64, "32 random bytes, hex");
                assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
                assert_ne!(token, TOKEN);
                let expected = desired(&check_ws, &token, &check_cfg);
                assert_json_eq(body, &applied(&expected.secret));
            },
        ),
        Step::apply(
            core_path(&ns, "persistentvolumeclaims", Some(&name(&d.pvc))),
            applied(&d.pvc),
        ),
        Step::apply(
            core_path(&ns, "configmaps", Some("ws-alice-data")),
            applied(&catalog_of(&ws)),
        ),
        Step::apply(
            core_path(&ns, "services", Some(&name(&d.service))),
            applied(&d.service),
        ),
        Step::apply(
            netpol_path(&ns, &name(&d.network_policy)),
            applied(&d.network_policy),
        ),
        Step::apply(pod_path(&ws, &pod), applied(&pod)),
        Step::apply_status(&ws, |body| {
            assert_json_eq(
                &without_times(body),
                &json!({
                    "phase": "Pending",
                    "conditions": [
                        condition("Ready", "False", "Scheduling", "Waiting for the scheduler", 1),
                        condition("Scheduled", "False", "Scheduling", "Waiting for the scheduler", 1),
                    ],
                    "nodePool": "interactive",
                    "podName": "ws-alice",
                    "url": "http://ws-alice.team.svc:8888/user/alice/",
                    "message": "Waiting for the scheduler",
                    "observedGeneration": 1,
                }),
            );
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["reason"], "Scheduling");
            assert_eq!(body["note"], "Waiting for the scheduler");
        }),
    ];
    let (ctx, verifier) = context(&cfg, cluster(&ws, &[]));
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        outcome.seen.len(),
        9,
        "create: the token Secret's GET, then 8 writes (6 children, the status, its Event)"
    );
    assert_eq!(outcome.writes().len(), 8);
    assert_eq!(
        write_log(&outcome),
        [
            "PATCH /api/v1/namespaces/team/secrets/ws-alice-token",
            "PATCH /api/v1/namespaces/team/persistentvolumeclaims/home-alice",
            "PATCH /api/v1/namespaces/team/configmaps/ws-alice-data",
            "PATCH /api/v1/namespaces/team/services/ws-alice",
            "PATCH /apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice",
            "PATCH /api/v1/namespaces/team/pods/ws-alice",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );
}

#[tokio::test]
async fn unchanged_workspace_makes_zero_writes() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let pod = running_pod(&d);
    let ws = with_status(ws, &cfg, Some(&pod));
    assert_eq!(
        ws.status.as_ref().and_then(|s| s.phase),
        Some(WorkspacePhase::Running)
    );

    let steps = vec![];
    let caches = with_pods(with_children(cluster(&ws, &[token_secret(&d)]), &d), &[pod]);
    let (ctx, verifier) = context(&cfg, caches);
    let key = workspace_key(&ws);
    // A failure before this success: the success resets the back-off.
    ctx.backoff.next_delay(&key);
    ctx.backoff.next_delay(&key);
    let outcome = run_scenario(ctx, verifier, ws, steps, move |ctx, _| {
        assert_eq!(
            ctx.backoff.next_delay(&key),
            Duration::from_secs(1),
            "reset"
        );
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("workspaces", "by phase", ctx.metrics.workspaces.clone());
        let text = metrics::encode(&registry).expect("encodes");
        assert!(text.contains("workspaces{phase=\"Running\"} 1"), "{text}");
    })
    .await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(
        outcome.seen.len(),
        0,
        "unchanged: no request at all, every read is cached: {:?}",
        outcome.seen
    );
}

#[tokio::test]
async fn spec_change_deletes_the_outdated_pod_then_recreates_it() {
    let cfg = OperatorConfig::default();
    let before = workspace();
    let old = children(&before, &cfg);
    let old_pod = running_pod(&old);

    let mut ws = with_status(before, &cfg, Some(&old_pod));
    ws.metadata.generation = Some(2);
    ws.spec.env = BTreeMap::from([("OMP_NUM_THREADS".to_owned(), "4".to_owned())]);
    let d = children(&ws, &cfg);
    assert_eq!(
        (&d.secret, &d.pvc, &d.service, &d.network_policy),
        (&old.secret, &old.pvc, &old.service, &old.network_policy),
        "an env change only changes the pod"
    );
    assert_ne!(d.pod, old.pod);

    // Pass 1: only the pod differs → it is deleted (pods are immutable).
    let caches = with_children(cluster(&ws, &[token_secret(&d)]), &d);
    let steps = vec![
        Step::delete(
            pod_path(&ws, &old_pod),
            Some(serde_json::to_value(terminating(old_pod.clone())).expect("json")),
        ),
        Step::apply_status(&ws, |body| {
            let status = without_times(body);
            assert_eq!(status["phase"], "Starting");
            assert_eq!(status["conditions"][0]["reason"], "Restarting");
            assert_eq!(status["conditions"][0]["observedGeneration"], 2);
            assert_eq!(status["observedGeneration"], 2);
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["reason"], "Restarting");
        }),
    ];
    let (ctx, verifier) = context(
        &cfg,
        with_pods(caches.clone(), std::slice::from_ref(&old_pod)),
    );
    let outcome = run_scenario(ctx, verifier, ws.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        write_log(&outcome),
        [
            "DELETE /api/v1/namespaces/team/pods/ws-alice",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );

    // Pass 2: the old pod is gone → the new one is applied.
    let terminating_pod = terminating(old_pod);
    let previous = status::derive(
        &input_for(&ws, &cfg, Some(&terminating_pod), true),
        ws.status.as_ref(),
        &t0(),
    );
    ws.status = Some(previous);
    let pod = the_pod(&d);
    let steps = vec![
        Step::apply(pod_path(&ws, &pod), applied(&pod)),
        Step::apply_status(&ws, |body| {
            assert_eq!(body["status"]["phase"], "Pending");
            assert_eq!(body["status"]["podName"], "ws-alice");
        }),
        Step::event(&ws, |body| assert_eq!(body["reason"], "Scheduling")),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
}

#[tokio::test]
async fn config_change_reapplies_the_changed_children_only() {
    let old_cfg = OperatorConfig::default();
    let cfg = OperatorConfig {
        server_port: 9000,
        ..OperatorConfig::default()
    };
    let before = workspace();
    let old = children(&before, &old_cfg);
    let old_pod = running_pod(&old);
    let ws = with_status(before, &old_cfg, Some(&old_pod));
    let d = children(&ws, &cfg);
    let ns = ns_of(&ws);

    let caches = with_children(cluster(&ws, &[token_secret(&old)]), &old);
    let steps = vec![
        Step::apply(
            core_path(&ns, "services", Some(&name(&d.service))),
            applied(&d.service),
        ),
        Step::apply(
            netpol_path(&ns, &name(&d.network_policy)),
            applied(&d.network_policy),
        ),
        // Gone at once (a Status answer): the pod is recreated next pass.
        Step::delete(pod_path(&ws, &old_pod), None),
        Step::apply_status(&ws, |body| {
            let status = without_times(body);
            assert_eq!(status["phase"], "Pending");
            assert_eq!(status["conditions"][0]["reason"], "Restarting");
            assert_eq!(status["url"], "http://ws-alice.team.svc:9000/user/alice/");
            assert_eq!(status.get("podName"), None);
        }),
        Step::event(&ws, |body| assert_eq!(body["reason"], "Restarting")),
    ];
    let (ctx, verifier) = context(&cfg, with_pods(caches, &[old_pod]));
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        write_log(&outcome),
        [
            "PATCH /api/v1/namespaces/team/services/ws-alice",
            "PATCH /apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice",
            "DELETE /api/v1/namespaces/team/pods/ws-alice",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );
}

#[tokio::test]
async fn stop_deletes_the_pod_keeps_the_home_volume_then_reports_stopped() {
    let cfg = OperatorConfig::default();
    let before = workspace();
    let running = children(&before, &cfg);
    let pod = running_pod(&running);
    let mut ws = with_status(before, &cfg, Some(&pod));
    ws.metadata.generation = Some(2);
    ws.spec.desired_state = DesiredState::Stopped;
    let d = children(&ws, &cfg);
    assert_eq!(d.pod, None);

    // Pass 1: the pod is deleted and still terminating → Stopping.
    let caches = with_children(cluster(&ws, &[token_secret(&d)]), &d);
    let steps = vec![
        Step::delete(
            pod_path(&ws, &pod),
            Some(serde_json::to_value(terminating(pod.clone())).expect("json")),
        ),
        Step::apply_status(&ws, |body| {
            assert_eq!(body["status"]["phase"], "Stopping");
            assert_eq!(body["status"]["podName"], "ws-alice");
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["reason"], "Stopping");
        }),
    ];
    let (ctx, verifier) = context(&cfg, with_pods(caches.clone(), std::slice::from_ref(&pod)));
    let outcome = run_scenario(ctx, verifier, ws.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));

    // Pass 2: the pod is gone → Stopped; the PVC was only read, never deleted.
    let terminating_pod = terminating(pod);
    let mut input = input_for(&ws, &cfg, Some(&terminating_pod), false);
    input.desired_state = DesiredState::Stopped;
    ws.status = Some(status::derive(&input, ws.status.as_ref(), &t0()));
    let steps = vec![
        Step::apply_status(&ws, |body| {
            let status = without_times(body);
            assert_json_eq(
                &status,
                &json!({
                    "phase": "Stopped",
                    "conditions": [
                        condition("Ready", "False", "Stopped", "Stopped; the home volume is kept", 2),
                        condition("Scheduled", "False", "Stopped", "The workspace is stopped", 2),
                    ],
                    "message": "Stopped; the home volume is kept",
                    "observedGeneration": 2,
                }),
            );
        }),
        Step::event(&ws, |body| assert_eq!(body["reason"], "Stopped")),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert!(
        outcome
            .writes()
            .iter()
            .all(|s| !s.uri.contains("persistentvolumeclaims")),
        "the home volume is kept"
    );
}

fn deleting(mut ws: Workspace) -> Workspace {
    ws.metadata.deletion_timestamp = Some(t0());
    ws
}

#[tokio::test]
async fn delete_removes_the_pod_keeps_the_home_volume_and_the_finalizer_goes() {
    let cfg = OperatorConfig::default();
    let ws = deleting(workspace());
    let d = children(&ws, &cfg);
    let pod = running_pod(&d);
    let steps = vec![
        Step::delete(
            pod_path(&ws, &pod),
            Some(serde_json::to_value(terminating(pod.clone())).expect("json")),
        ),
        Step::remove_finalizer(&ws),
    ];
    let caches = with_pods(with_children(cluster(&ws, &[]), &d), &[pod]);
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::await_change());
    assert_eq!(
        write_log(&outcome),
        [
            "DELETE /api/v1/namespaces/team/pods/ws-alice".to_owned(),
            format!("PATCH {}", workspace_path(&ws)),
        ]
    );
}

#[tokio::test]
async fn delete_with_the_delete_policy_removes_the_home_volume() {
    let cfg = OperatorConfig::default();
    let ws = deleting(workspace());
    let mut deleting_profile = profile();
    deleting_profile.spec.home.on_delete = HomeReclaim::Delete;
    let d = children(&ws, &cfg);
    let claim = observed(&d.pvc);
    let steps = vec![
        Step::delete(
            core_path(&ns_of(&ws), "persistentvolumeclaims", Some(&name(&claim))),
            None,
        ),
        Step::remove_finalizer(&ws),
    ];
    let mut caches = with_children(cluster(&ws, &[]), &d);
    caches.profiles = vec![deleting_profile];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::await_change());
    assert_eq!(outcome.writes().len(), 2);
}

#[tokio::test]
async fn delete_without_the_profile_keeps_the_home_volume() {
    let cfg = OperatorConfig::default();
    let ws = deleting(workspace());
    let steps = vec![Step::remove_finalizer(&ws)];
    let mut caches = with_children(cluster(&ws, &[]), &children(&ws, &cfg));
    caches.profiles.clear();
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::await_change());
    assert_eq!(outcome.writes().len(), 1, "only the finalizer");
}

#[tokio::test]
async fn image_pull_failure_fails_the_workspace_with_the_kubelet_message_and_a_warning() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let created = observed(&the_pod(&d));
    // As after creation: a pod without status.
    let ws = with_status(ws, &cfg, Some(&created));
    assert_eq!(
        ws.status.as_ref().and_then(|s| s.phase),
        Some(WorkspacePhase::Pending)
    );
    let failing = with_pod_status(created, "image-pull-backoff");

    let caches = with_pods(
        with_children(cluster(&ws, &[token_secret(&d)]), &d),
        &[failing],
    );
    let steps = vec![
        Step::apply_status(&ws, |body| {
            let status = without_times(body);
            assert_eq!(status["phase"], "Failed");
            assert_eq!(status["conditions"][0]["type"], "Ready");
            assert_eq!(status["conditions"][0]["status"], "False");
            assert_eq!(status["conditions"][0]["reason"], "ImagePullBackOff");
            let message = status["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(
                    "Back-off pulling image \"quay.io/jupyter/base-notebook:python-3.12\": not found"
                ),
                "{message}"
            );
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["reason"], "ImagePullBackOff");
            assert!(
                body["note"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Back-off pulling image")
            );
        }),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.writes().len(), 2, "status and event only");
}

#[tokio::test]
async fn refusal_runs_no_pod_and_says_why() {
    let cfg = OperatorConfig::default();
    let before = workspace();
    let d = children(&before, &cfg);
    let pod = running_pod(&d);
    let mut ws = with_status(before, &cfg, Some(&pod));
    ws.metadata.generation = Some(2);
    ws.spec.resources = Some(ResourceRequest {
        gpus: Some(1),
        ..ResourceRequest::default()
    });
    let refusal = validate::validate(&ws, &inputs(&ws, TOKEN), &cfg)
        .expect_err("no pool of the fixtures offers GPUs");

    let caches = with_pods(
        cluster(&ws, &[token_secret(&d)]),
        std::slice::from_ref(&pod),
    );
    let (reason, message) = (refusal.reason, refusal.message.clone());
    let steps = vec![
        Step::delete(
            pod_path(&ws, &pod),
            Some(serde_json::to_value(terminating(pod.clone())).expect("json")),
        ),
        Step::apply_status(&ws, move |body| {
            let status = without_times(body);
            assert_json_eq(
                &status,
                &json!({
                    "phase": "Pending",
                    "conditions": [
                        condition("Ready", "False", reason, &message, 2),
                        condition("Scheduled", "False", reason, &message, 2),
                    ],
                    "message": message,
                    "observedGeneration": 2,
                }),
            );
        }),
        Step::event(&ws, move |body| {
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["reason"], reason);
        }),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_REFUSED));
    assert_eq!(
        write_log(&outcome),
        [
            "DELETE /api/v1/namespaces/team/pods/ws-alice",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );
}

#[tokio::test]
async fn api_error_mid_apply_fails_without_status_and_backs_off() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let ns = ns_of(&ws);
    let mut caches = cluster(&ws, &[token_secret(&d)]);
    caches.pvcs.push(observed(&d.pvc));
    caches.config_maps.push(observed(&catalog_of(&ws)));
    let steps = vec![
        Step::apply(
            core_path(&ns, "services", Some(&name(&d.service))),
            applied(&d.service),
        )
        .fail(500),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let key_ws = ws.clone();
    let outcome = run_scenario(ctx, verifier, ws, steps, move |ctx, result| {
        let error = result.as_ref().expect_err("the apply failed");
        assert!(
            matches!(error, Error::Apply { kind, name, .. } if kind == "Service" && name == "ws-alice"),
            "{error:?}"
        );
        assert_eq!(error.metric_label(), "apply");
        let delays: Vec<Action> = (0..4)
            .map(|_| error_policy(std::sync::Arc::new(key_ws.clone()), error, ctx.clone()))
            .collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8]
                .map(|s| Action::requeue(Duration::from_secs(s)))
                .to_vec(),
            "the requeue grows"
        );
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("errors", "by label", ctx.metrics.failures.clone());
        let text = metrics::encode(&registry).expect("encodes");
        assert!(text.contains("errors_total{error=\"apply\"} 1"), "{text}");
    })
    .await;
    assert!(outcome.result.is_err());
    assert!(
        outcome.seen.iter().all(|s| !s.uri.contains("/status")),
        "no status claiming anything"
    );
}

#[tokio::test]
async fn per_user_mode_equips_the_users_namespace_first() {
    let cfg = OperatorConfig {
        namespace_mode: NamespaceMode::PerUser {
            prefix: "atelier-u-".into(),
        },
        ..OperatorConfig::default()
    };
    let mut ws = workspace();
    ws.metadata.namespace = Some("atelier-u-alice".into());
    let d = children(&ws, &cfg);
    let pod = running_pod(&d);
    let ws = with_status(ws, &cfg, Some(&pod));
    let v = validated(&ws, TOKEN, &cfg);
    let user_ns =
        build::build_user_namespace("atelier-u-alice", "alice", &v.groups, &[pool()], &cfg);
    let ns = "atelier-u-alice";
    let existing: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("a namespace");

    let steps = vec![
        Step::apply(
            format!("/api/v1/namespaces/{ns}"),
            applied(&user_ns.namespace),
        ),
        Step::apply(
            core_path(ns, "resourcequotas", Some(&name(&user_ns.resource_quota))),
            applied(&user_ns.resource_quota),
        ),
        Step::apply(
            core_path(ns, "limitranges", Some(&name(&user_ns.limit_range))),
            applied(&user_ns.limit_range),
        ),
    ];
    let mut caches = with_pods(with_children(cluster(&ws, &[token_secret(&d)]), &d), &[pod]);
    caches.namespaces.push(existing);
    caches
        .network_policies
        .push(observed(&user_ns.network_policy));
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(
        write_log(&outcome),
        [
            "PATCH /api/v1/namespaces/atelier-u-alice",
            "PATCH /api/v1/namespaces/atelier-u-alice/resourcequotas/atelier-quota",
            "PATCH /api/v1/namespaces/atelier-u-alice/limitranges/atelier-limits",
        ]
    );
}

#[tokio::test]
async fn missing_request_fails_the_scenario_instead_of_hanging() {
    // The verifier expects one more request than the reconciler makes: the scenario panics
    // (bounded by the timeout) rather than hanging.
    let cfg = OperatorConfig::default();
    let mut fresh = workspace();
    fresh.metadata.finalizers = None;
    let steps = vec![Step::add_finalizer(&fresh), Step::get(PROFILE)];
    let (ctx, verifier) = context(&cfg, cluster(&fresh, &[]));
    let scenario = tokio::spawn(run_scenario(ctx, verifier, fresh, steps, |_, _| {}));
    let joined = scenario.await;
    let panic = joined.expect_err("the scenario fails");
    assert!(panic.is_panic());
}

#[tokio::test]
async fn unchanged_refusal_writes_nothing_and_publishes_no_new_event() {
    let cfg = OperatorConfig::default();
    let mut ws = workspace();
    ws.spec.resources = Some(ResourceRequest {
        gpus: Some(1),
        ..ResourceRequest::default()
    });
    let refusal =
        validate::validate(&ws, &inputs(&ws, TOKEN), &cfg).expect_err("no pool offers GPUs");
    let input = StatusInput {
        generation: ws.metadata.generation,
        desired_state: DesiredState::Running,
        refusal: Some(&refusal),
        rejection: None,
        node_pool: None,
        url: None,
        pod: None,
        replacing: false,
        data_source_changed: None,
    };
    ws.status = Some(status::derive(&input, None, &t0()));
    let d = children(&workspace(), &cfg);

    let caches = cluster(&ws, &[token_secret(&d)]);
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, vec![], |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_REFUSED));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
}

#[tokio::test]
async fn pod_under_another_name_is_deleted_and_the_desired_one_created() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let pod = the_pod(&d);
    let mut stray = running_pod(&d);
    stray.metadata.name = Some("ws-alice-old".into());
    let ws = with_status(ws, &cfg, Some(&observed(&pod)));

    let steps = vec![
        Step::delete(pod_path(&ws, &stray), None),
        Step::apply(pod_path(&ws, &pod), applied(&pod)),
    ];
    let caches = with_pods(
        with_children(cluster(&ws, &[token_secret(&d)]), &d),
        &[stray],
    );
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    // The created pod has no status yet, as before: the status is unchanged.
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        write_log(&outcome),
        [
            "DELETE /api/v1/namespaces/team/pods/ws-alice-old",
            "PATCH /api/v1/namespaces/team/pods/ws-alice",
        ]
    );
}

/// The API server's answer to a pod naming a PriorityClass nothing created (kube-apiserver's
/// Priority admission plugin), as seen on a real cluster.
fn no_priority_class() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "pods \"ws-alice\" is forbidden: no PriorityClass with name atelier-interactive was found",
        "reason": "Forbidden",
        "details": {"name": "ws-alice", "kind": "pods"},
        "code": 403,
    })
}

#[tokio::test]
async fn pod_refused_by_the_api_server_reaches_the_status_with_an_event_and_backs_off() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let pod = the_pod(&d);
    let message = "The Kubernetes API refused applying Pod ws-alice: pods \"ws-alice\" is \
                   forbidden: no PriorityClass with name atelier-interactive was found";

    let caches = with_children(cluster(&ws, &[token_secret(&d)]), &d);
    let steps = vec![
        Step::apply(pod_path(&ws, &pod), applied(&pod)).refuse(403, no_priority_class()),
        Step::apply_status(&ws, move |body| {
            assert_json_eq(
                &without_times(body),
                &json!({
                    "phase": "Pending",
                    "conditions": [
                        condition("Ready", "False", "Forbidden", message, 1),
                        condition("Scheduled", "False", "Forbidden", message, 1),
                    ],
                    "message": message,
                    "observedGeneration": 1,
                }),
            );
        }),
        Step::event(&ws, move |body| {
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["reason"], "Forbidden");
            assert_eq!(body["note"], message);
        }),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let key_ws = ws.clone();
    let outcome = run_scenario(ctx, verifier, ws, steps, move |ctx, result| {
        let error = result
            .as_ref()
            .expect_err("the refusal fails the reconciliation");
        assert!(
            matches!(error, Error::Apply { kind, name, .. } if kind == "Pod" && name == "ws-alice"),
            "{error:?}"
        );
        let delays: Vec<Action> = (0..5)
            .map(|_| error_policy(std::sync::Arc::new(key_ws.clone()), error, ctx.clone()))
            .collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16]
                .map(|s| Action::requeue(Duration::from_secs(s)))
                .to_vec(),
            "retries back off exponentially, per Workspace"
        );
    })
    .await;
    assert_eq!(
        write_log(&outcome),
        [
            "PATCH /api/v1/namespaces/team/pods/ws-alice",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );
}

#[tokio::test]
async fn the_same_refusal_again_writes_nothing_more() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let pod = the_pod(&d);
    let rejection = super::rejection_of(&Error::Apply {
        kind: "Pod".into(),
        name: "ws-alice".into(),
        source: kube::Error::Api(Box::new(
            serde_json::from_value(no_priority_class()).expect("a Status"),
        )),
    })
    .expect("a 403 is a rejection");
    let mut ws = ws;
    ws.status = Some(status::derive(
        &StatusInput {
            generation: ws.metadata.generation,
            desired_state: DesiredState::Running,
            refusal: None,
            rejection: Some(&rejection),
            node_pool: None,
            url: None,
            pod: None,
            replacing: false,
            data_source_changed: None,
        },
        None,
        &t0(),
    ));

    let caches = with_children(cluster(&ws, &[token_secret(&d)]), &d);
    let steps =
        vec![Step::apply(pod_path(&ws, &pod), applied(&pod)).refuse(403, no_priority_class())];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert!(
        outcome.result.is_err(),
        "still failing: the back-off goes on"
    );
    assert_eq!(
        write_log(&outcome),
        ["PATCH /api/v1/namespaces/team/pods/ws-alice"]
    );
}

#[tokio::test]
async fn an_invalid_child_fails_the_workspace() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let ns = ns_of(&ws);
    let invalid = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Secret \"ws-alice-token\" is invalid: metadata.labels: Invalid value: \"x\"",
        "reason": "Invalid", "code": 422,
    });
    let steps = vec![
        Step::get(core_path(&ns, "secrets", Some(&name(&d.secret)))).not_found(),
        Step::apply_checked(core_path(&ns, "secrets", Some(&name(&d.secret))), |_| {})
            .refuse(422, invalid),
        Step::apply_status(&ws, |body| {
            let status = without_times(body);
            assert_eq!(
                status["phase"], "Failed",
                "422: the object as built is invalid"
            );
            assert_eq!(status["conditions"][0]["reason"], "Invalid");
            assert_eq!(
                status["message"],
                "The Kubernetes API refused applying Secret ws-alice-token: Secret \
                 \"ws-alice-token\" is invalid: metadata.labels: Invalid value: \"x\""
            );
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["reason"], "Invalid");
        }),
    ];
    let (ctx, verifier) = context(&cfg, cluster(&ws, &[]));
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert!(outcome.result.is_err());
}

#[test]
fn only_refusals_are_rejections() {
    let status = |code: u16, reason: &str| -> kube::core::Status {
        serde_json::from_value(json!({"code": code, "reason": reason, "message": "m"}))
            .expect("a Status")
    };
    let apply = |code: u16, reason: &str| Error::Apply {
        kind: "Pod".into(),
        name: "p".into(),
        source: kube::Error::Api(Box::new(status(code, reason))),
    };
    let r = super::rejection_of(&apply(403, "Forbidden")).expect("403");
    assert_eq!((r.reason.as_str(), r.permanent), ("Forbidden", false));
    assert!(
        super::rejection_of(&apply(422, "Invalid"))
            .expect("422")
            .permanent
    );
    assert!(
        super::rejection_of(&apply(400, "BadRequest"))
            .expect("400")
            .permanent
    );
    assert_eq!(
        super::rejection_of(&apply(403, "not a reason!"))
            .expect("403")
            .reason,
        "Forbidden",
        "a reason that is no condition reason is replaced"
    );
    for transient in [409, 429, 408, 500, 503] {
        assert_eq!(
            super::rejection_of(&apply(transient, "X")),
            None,
            "{transient}"
        );
    }
    assert_eq!(
        super::rejection_of(&Error::Status(kube::Error::Api(Box::new(status(
            403,
            "Forbidden"
        ))))),
        None
    );
}

#[tokio::test]
async fn a_cluster_ip_service_of_an_older_operator_is_recreated_headless() {
    let cfg = OperatorConfig::default();
    let ws = workspace();
    let d = children(&ws, &cfg);
    let pod = running_pod(&d);
    let ws = with_status(ws, &cfg, Some(&pod));
    let ns = ns_of(&ws);
    // As an older operator left it: a cluster IP, and the hash of that older desired Service.
    let mut old = observed(&d.service);
    if let Some(spec) = old.spec.as_mut() {
        spec.cluster_ip = Some("10.96.41.7".into());
        spec.cluster_ips = Some(vec!["10.96.41.7".into()]);
        spec.publish_not_ready_addresses = None;
    }
    old.annotations_mut()
        .insert(super::APPLIED_HASH_ANNOTATION.into(), "0ld".into());
    let service = core_path(&ns, "services", Some(&name(&d.service)));

    let mut caches = with_pods(with_children(cluster(&ws, &[token_secret(&d)]), &d), &[pod]);
    caches.services = vec![old.clone()];
    let steps = vec![
        // clusterIP is immutable: an apply would be refused; delete, then create.
        Step::delete(service.clone(), None),
        Step::apply(service.clone(), applied(&d.service)).check(|body| {
            assert_eq!(body["spec"]["clusterIP"], "None");
        }),
    ];
    let (ctx, verifier) = context(&cfg, caches.clone());
    let outcome = run_scenario(ctx, verifier, ws.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(
        write_log(&outcome),
        [
            "DELETE /api/v1/namespaces/team/services/ws-alice",
            "PATCH /api/v1/namespaces/team/services/ws-alice",
        ]
    );

    // The old Service still terminating: no apply this pass, and a transitional requeue.
    let mut terminating_old = old.clone();
    terminating_old.metadata.deletion_timestamp = Some(t0());
    let steps = vec![Step::delete(
        service,
        Some(serde_json::to_value(&terminating_old).expect("json")),
    )];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        write_log(&outcome),
        ["DELETE /api/v1/namespaces/team/services/ws-alice"]
    );
}

#[tokio::test]
async fn a_refused_deletion_keeps_the_finalizer_and_says_why() {
    let cfg = OperatorConfig::default();
    let ws = deleting(workspace());
    let d = children(&ws, &cfg);
    let pod = running_pod(&d);
    let forbidden = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "pods \"ws-alice\" is forbidden: User \"system:serviceaccount:atelier:atelier-operator\" cannot delete resource \"pods\" in API group \"\" in the namespace \"team\"",
        "reason": "Forbidden", "code": 403,
    });
    let caches = with_pods(cluster(&ws, &[]), std::slice::from_ref(&pod));
    let steps = vec![
        Step::delete(pod_path(&ws, &pod), None).refuse(403, forbidden),
        Step::apply_status(&ws, |body| {
            let status = without_times(body);
            assert_eq!(status["phase"], "Pending");
            assert_eq!(status["conditions"][0]["reason"], "Forbidden");
            let message = status["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("The Kubernetes API refused deleting Pod ws-alice: ")
                    && message.contains("cannot delete resource \"pods\""),
                "{message}"
            );
        }),
        Step::event(&ws, |body| assert_eq!(body["type"], "Warning")),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert!(
        matches!(&outcome.result, Err(Error::Delete { kind, .. }) if kind == "Pod"),
        "{:?}",
        outcome.result
    );
    assert!(
        !write_log(&outcome).iter().any(|w| w
            .starts_with("PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice")
            && !w.ends_with("/status")),
        "the finalizer stays: {:?}",
        write_log(&outcome)
    );
}

// The data sources' children (issue 11): `argo` is S3 through csi-s3, mounted from a static
// PersistentVolume and claim; `era5` (NFS) is mounted inline.

const CSI_S3: &str = "ru.yandex.s3.csi";

/// A Workspace of alice (groups climate, staff) naming era5 and argo, and what it needs.
struct Argo {
    /// The Workspace, with the status its running pod gives it.
    ws: Workspace,
    /// Its children.
    d: WorkspaceResources,
    /// Its data sources' children: argo's volume and claim, the catalogue.
    data: DataChildren,
    /// Its pod, running.
    pod: Pod,
}

fn argo_inputs(
    ws: &Workspace,
    source: DataSource,
    secrets: &[&str],
    driver: bool,
) -> crate::policy::workspace::Dereferenced {
    let mut d = inputs(ws, TOKEN);
    d.data_sources.push(source);
    d.credential_secrets = Some(secrets.iter().map(|s| (*s).to_owned()).collect());
    d.csi_drivers = Some(if driver {
        BTreeMap::from([(CSI_S3.to_owned(), vec!["Persistent".to_owned()])])
    } else {
        BTreeMap::new()
    });
    d
}

fn argo(cfg: &OperatorConfig) -> Argo {
    argo_from(cfg, s3_csi_data_source())
}

/// [`argo`] with the DataSource argo as `source`.
fn argo_from(cfg: &OperatorConfig, source: DataSource) -> Argo {
    let mut ws = workspace();
    ws.spec.data_sources.push("argo".into());
    let inputs = argo_inputs(&ws, source, &["argo-climate", "argo-mount"], true);
    let v =
        validate::validate(&ws, &inputs, cfg).expect("argo is valid with its Secrets and driver");
    let drivers = inputs.csi_drivers.clone();
    let d = build::build_with(&v, cfg, drivers.as_ref());
    let data = build::data_children(&v, drivers.as_ref());
    assert_eq!(
        (data.persistent_volumes.len(), data.claims.len()),
        (1, 1),
        "csi-s3 lists Persistent only: a static volume and its claim"
    );
    let pod = running_pod(&d);
    let input = StatusInput {
        generation: ws.metadata.generation,
        desired_state: v.desired_state,
        refusal: None,
        rejection: None,
        node_pool: Some("interactive"),
        url: Some(build::server_url(&v, cfg)),
        pod: Some(&pod),
        replacing: false,
        data_source_changed: None,
    };
    ws.status = Some(status::derive(&input, None, &t0()));
    Argo { ws, d, data, pod }
}

/// The caches of an argo scenario: the fixtures' inputs and argo, the credentials Secrets
/// `secrets`, the csi-s3 CSIDriver when `driver`, and `ws`'s token Secret.
fn argo_cluster(ws: &Workspace, d: &WorkspaceResources, secrets: &[&str], driver: bool) -> Cluster {
    let mut c = cluster(ws, &[token_secret(d)]);
    c.data_sources.push(s3_csi_data_source());
    c.credentials = secrets.iter().map(|s| credentials_secret(NS, s)).collect();
    if driver {
        c.csi_drivers = vec![csi_driver(CSI_S3, &["Persistent"])];
    }
    c
}

/// `c` with the home volume, Service, NetworkPolicy and pod of `a`.
fn with_argo_children(mut c: Cluster, a: &Argo) -> Cluster {
    c.pvcs.push(observed(&a.d.pvc));
    c.services.push(observed(&a.d.service));
    c.network_policies.push(observed(&a.d.network_policy));
    c.pods.push(a.pod.clone());
    c
}

/// `c` with `a`'s data children as the API server has them.
fn with_data(mut c: Cluster, data: &DataChildren) -> Cluster {
    c.persistent_volumes
        .extend(data.persistent_volumes.iter().map(observed));
    c.pvcs.extend(data.claims.iter().map(observed));
    c.config_maps.extend(data.config_map.iter().map(observed));
    c
}

fn pv_path(name: &str) -> String {
    format!("/api/v1/persistentvolumes/{name}")
}

/// The same volume of a Workspace alice in another namespace.
fn alice_elsewhere(data: &DataChildren) -> k8s_openapi::api::core::v1::PersistentVolume {
    let mut other = observed(&data.persistent_volumes[0]);
    other.metadata.name = Some("atelier-data-elsewhere".into());
    other
        .labels_mut()
        .insert(build::WORKSPACE_NAMESPACE_LABEL.into(), "elsewhere".into());
    other
}

#[tokio::test]
async fn a_persistent_csi_source_gets_its_volume_claim_and_catalogue_then_nothing_more() {
    let cfg = OperatorConfig::default();
    let a = argo(&cfg);
    let ns = ns_of(&a.ws);
    let (volume, claim) = (&a.data.persistent_volumes[0], &a.data.claims[0]);
    let catalog = a.data.config_map.clone().expect("a catalogue");
    assert_eq!(
        volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.name.clone()),
        Some(name(claim))
    );
    let steps = vec![
        Step::apply(pv_path(&name(volume)), applied(volume)),
        Step::apply(
            core_path(&ns, "persistentvolumeclaims", Some(&name(claim))),
            applied(claim),
        ),
        Step::apply(
            core_path(&ns, "configmaps", Some(&name(&catalog))),
            applied(&catalog),
        ),
    ];
    let caches = with_argo_children(
        argo_cluster(&a.ws, &a.d, &["argo-climate", "argo-mount"], true),
        &a,
    );
    let (ctx, verifier) = context(&cfg, caches.clone());
    let outcome = run_scenario(ctx, verifier, a.ws.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(
        write_log(&outcome),
        [
            format!("PATCH /api/v1/persistentvolumes/{}", name(volume)),
            format!(
                "PATCH /api/v1/namespaces/team/persistentvolumeclaims/{}",
                name(claim)
            ),
            "PATCH /api/v1/namespaces/team/configmaps/ws-alice-data".to_owned(),
        ],
        "exactly the volume, its claim and the catalogue; the pod mounts the claim"
    );
    let mounted = a
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    assert!(
        mounted.iter().any(|v| v
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == name(claim))),
        "{mounted:?}"
    );

    // Unchanged: every object cached with its hash, no request at all.
    let (ctx, verifier) = context(&cfg, with_data(caches, &a.data));
    let outcome = run_scenario(ctx, verifier, a.ws, vec![], |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
}

/// The status of a refusal: `Pending`, `Ready=False` and `Scheduled=False` with `reason` and
/// `message`.
fn assert_refused(body: &Value, reason: &str, message: &str) {
    assert_json_eq(
        &without_times(body),
        &json!({
            "phase": "Pending",
            "conditions": [
                condition("Ready", "False", reason, message, 1),
                condition("Scheduled", "False", reason, message, 1),
            ],
            "message": message,
            "observedGeneration": 1,
        }),
    );
}

#[tokio::test]
async fn missing_credentials_refuse_the_workspace_in_its_status_and_apply_no_volume() {
    let cfg = OperatorConfig::default();
    let mut a = argo(&cfg);
    a.ws.status = None;
    let message = "DataSource argo: Secret argo-climate (credentials of group climate) does not \
                   exist in namespace team";
    let refused = |ws: &Workspace| {
        vec![
            Step::apply_status(ws, move |body| {
                assert_refused(body, "DataCredentialsNotFound", message)
            }),
            Step::event(ws, move |body| {
                assert_eq!(body["type"], "Warning");
                assert_eq!(body["reason"], "DataCredentialsNotFound");
                assert_eq!(body["note"], message);
            }),
        ]
    };
    // A new Workspace: the status and its Event, no volume, claim, ConfigMap or pod.
    let caches = argo_cluster(&a.ws, &a.d, &["argo-mount"], true);
    let (ctx, verifier) = context(&cfg, caches.clone());
    let outcome = run_scenario(ctx, verifier, a.ws.clone(), refused(&a.ws), |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_REFUSED));
    assert_eq!(
        write_log(&outcome),
        [
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );

    // It ran before the Secret went: nothing is left half-applied (pod, claim, volume,
    // catalogue), and alice's volume in another namespace stays.
    let mut caches = with_data(with_argo_children(caches, &a), &a.data);
    caches.persistent_volumes.push(alice_elsewhere(&a.data));
    let (volume, claim) = (name(&a.data.persistent_volumes[0]), name(&a.data.claims[0]));
    let ns = ns_of(&a.ws);
    let mut steps = vec![
        Step::delete(pod_path(&a.ws, &a.pod), None),
        Step::delete(core_path(&ns, "persistentvolumeclaims", Some(&claim)), None),
        Step::delete(pv_path(&volume), None),
        Step::delete(core_path(&ns, "configmaps", Some("ws-alice-data")), None),
    ];
    steps.extend(refused(&a.ws));
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, a.ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_REFUSED));
    assert!(
        write_log(&outcome).iter().all(|w| !w.contains("elsewhere")),
        "{:?}",
        write_log(&outcome)
    );
}

#[tokio::test]
async fn a_missing_csi_driver_refuses_the_workspace() {
    let cfg = OperatorConfig::default();
    let mut a = argo(&cfg);
    a.ws.status = None;
    let message = "DataSource argo: CSI driver ru.yandex.s3.csi is not installed in the cluster \
                   (no CSIDriver ru.yandex.s3.csi)";
    let steps = vec![
        Step::apply_status(&a.ws, move |body| {
            assert_refused(body, "CSIDriverNotFound", message)
        }),
        Step::event(&a.ws, |body| {
            assert_eq!(body["reason"], "CSIDriverNotFound")
        }),
    ];
    let caches = argo_cluster(&a.ws, &a.d, &["argo-climate", "argo-mount"], false);
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, a.ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_REFUSED));
    assert_eq!(outcome.writes().len(), 2);
}

/// argo with its s3 endpoint at `endpoint`.
fn argo_at(endpoint: &str) -> DataSource {
    let mut source = s3_csi_data_source();
    if let Some(s3) = source.spec.s3.as_mut() {
        s3.endpoint = endpoint.to_owned();
    }
    source
}

#[tokio::test]
async fn an_unreachable_endpoint_refuses_a_start_but_never_stops_a_running_workspace() {
    let cfg = OperatorConfig::default();
    let mut a = argo(&cfg);
    a.ws.status = None;
    // A loopback port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let message = format!("DataSource argo: endpoint {closed} unreachable: connection refused");
    let with_endpoint = |mut c: Cluster| {
        c.data_sources.retain(|s| s.name_any() != "argo");
        c.data_sources.push(argo_at(&closed));
        c
    };
    let expected = message.clone();
    let steps = vec![
        Step::apply_status(&a.ws, move |body| {
            assert_refused(body, "DataEndpointUnreachable", &expected)
        }),
        Step::event(&a.ws, |body| {
            assert_eq!(body["reason"], "DataEndpointUnreachable")
        }),
    ];
    let caches = with_endpoint(argo_cluster(
        &a.ws,
        &a.d,
        &["argo-climate", "argo-mount"],
        true,
    ));
    let (ctx, verifier, _w) = seeded_probing_context(cfg.clone(), caches.clone());
    let outcome = run_scenario(ctx, verifier, a.ws.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_REFUSED));
    assert_eq!(
        write_log(&outcome),
        [
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ],
        "no volume, claim, catalogue or pod: {message}"
    );

    // Once its pod exists, the endpoint is not probed again: a running workspace with every
    // child in place makes no request, whatever the endpoint does (the fixture's,
    // s3.example.org, answers nothing here; a probe would refuse the Workspace and delete its
    // pod).
    let running = argo(&cfg);
    let caches = with_data(
        with_argo_children(
            argo_cluster(
                &running.ws,
                &running.d,
                &["argo-climate", "argo-mount"],
                true,
            ),
            &running,
        ),
        &running.data,
    );
    let (ctx, verifier, _w) = seeded_probing_context(cfg, caches);
    let outcome = run_scenario(ctx, verifier, running.ws, vec![], |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
}

#[tokio::test]
async fn a_source_no_longer_named_loses_its_claim_and_volume() {
    let cfg = OperatorConfig::default();
    let a = argo(&cfg);
    // Now era5 only, running with its pod and catalogue; argo's claim and volume remain.
    let ws = workspace();
    let d = children(&ws, &cfg);
    let pod = running_pod(&d);
    let ws = with_status(ws, &cfg, Some(&pod));
    let mut caches = with_pods(with_children(cluster(&ws, &[token_secret(&d)]), &d), &[pod]);
    caches
        .persistent_volumes
        .extend(a.data.persistent_volumes.iter().map(observed));
    caches.persistent_volumes.push(alice_elsewhere(&a.data));
    caches.pvcs.extend(a.data.claims.iter().map(observed));
    let (volume, claim) = (name(&a.data.persistent_volumes[0]), name(&a.data.claims[0]));
    let steps = vec![
        Step::delete(core_path(NS, "persistentvolumeclaims", Some(&claim)), None),
        Step::delete(pv_path(&volume), None),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(
        write_log(&outcome),
        [
            format!("DELETE /api/v1/namespaces/team/persistentvolumeclaims/{claim}"),
            format!("DELETE /api/v1/persistentvolumes/{volume}"),
        ],
        "the home volume stays"
    );
}

#[tokio::test]
async fn a_deleted_workspace_deletes_its_volumes_in_the_cleanup() {
    let cfg = OperatorConfig::default();
    let a = argo(&cfg);
    let ws = deleting(a.ws.clone());
    let mut caches = with_data(
        with_argo_children(
            argo_cluster(&ws, &a.d, &["argo-climate", "argo-mount"], true),
            &a,
        ),
        &a.data,
    );
    caches.persistent_volumes.push(alice_elsewhere(&a.data));
    let volume = name(&a.data.persistent_volumes[0]);
    let steps = vec![
        Step::delete(pod_path(&ws, &a.pod), None),
        Step::delete(pv_path(&volume), None),
        Step::remove_finalizer(&ws),
    ];
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, ws.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::await_change());
    assert_eq!(
        write_log(&outcome),
        [
            "DELETE /api/v1/namespaces/team/pods/ws-alice".to_owned(),
            format!("DELETE /api/v1/persistentvolumes/{volume}"),
            format!("PATCH {}", workspace_path(&ws)),
        ],
        "the claim and the catalogue go with the Workspace (owner reference); the other \
         namespace's alice keeps hers"
    );
}

/// argo with one more CSI volume attribute (geesefs options): an immutable field of its volume.
fn argo_with_options() -> DataSource {
    let mut source = s3_csi_data_source();
    if let Some(csi) = source.spec.csi.as_mut() {
        csi.volume_attributes
            .insert("options".into(), "--memory-limit 1000".into());
    }
    source
}

/// `c` with the DataSource argo replaced by `source`.
fn with_source(mut c: Cluster, source: DataSource) -> Cluster {
    c.data_sources.retain(|s| s.name_any() != "argo");
    c.data_sources.push(source);
    c
}

#[tokio::test]
async fn a_changed_data_source_replaces_the_pod_claim_and_volume_then_makes_them_again() {
    let cfg = OperatorConfig::default();
    // Running with the volume built from the old argo; argo has since changed.
    let old = argo(&cfg);
    let new = argo_from(&cfg, argo_with_options());
    let (old_volume, new_volume) = (
        &old.data.persistent_volumes[0],
        &new.data.persistent_volumes[0],
    );
    assert_eq!(name(old_volume), name(new_volume), "the same volume name");
    assert_ne!(
        old_volume
            .annotations()
            .get(build::VOLUME_SOURCE_ANNOTATION),
        new_volume
            .annotations()
            .get(build::VOLUME_SOURCE_ANNOTATION),
    );
    let (volume, claim) = (name(new_volume), name(&new.data.claims[0]));
    let ns = ns_of(&old.ws);
    let secrets = ["argo-climate", "argo-mount"];
    let base = |a: &Argo| {
        with_source(
            argo_cluster(&a.ws, &a.d, &secrets, true),
            argo_with_options(),
        )
    };
    let ws = old.ws.clone();
    let message = "DataSource argo changed: its volume is being replaced; the server restarts \
                   once the new one is in place";
    let pod_gone = terminating(old.pod.clone());

    // Pass 1: the pod, the claim, the volume are deleted, in that order; no pod is made; the
    // status says why, with a (Normal) Event.
    let caches = with_data(with_argo_children(base(&old), &old), &old.data);
    let steps = vec![
        Step::delete(
            pod_path(&ws, &old.pod),
            Some(serde_json::to_value(&pod_gone).expect("json")),
        ),
        Step::delete(core_path(&ns, "persistentvolumeclaims", Some(&claim)), None),
        Step::delete(pv_path(&volume), None),
        Step::apply_status(&ws, move |body| {
            let status = without_times(body);
            assert_eq!(status["phase"], "Pending");
            assert_eq!(
                status["conditions"][0],
                condition("Ready", "False", "DataSourceChanged", message, 1)
            );
            assert_eq!(status["message"], message);
        }),
        Step::event(&ws, move |body| {
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["reason"], "DataSourceChanged");
            assert_eq!(body["note"], message);
        }),
    ];
    let (ctx, verifier) = context(&cfg, caches.clone());
    let outcome = run_scenario(ctx, verifier, ws.clone(), steps, |ctx, _| {
        assert_eq!(ctx.metrics.replaced_data_volumes.get(), 1);
    })
    .await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        write_log(&outcome),
        [
            "DELETE /api/v1/namespaces/team/pods/ws-alice".to_owned(),
            format!("DELETE /api/v1/namespaces/team/persistentvolumeclaims/{claim}"),
            format!("DELETE /api/v1/persistentvolumes/{volume}"),
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status".to_owned(),
            "POST /apis/events.k8s.io/v1/namespaces/team/events".to_owned(),
        ]
    );

    // Pass 2: the three still terminate (the caches show them so): nothing is written, no pod
    // is made, no volume or claim applied.
    let replacing = {
        let input = StatusInput {
            generation: ws.metadata.generation,
            desired_state: DesiredState::Running,
            refusal: None,
            rejection: None,
            node_pool: Some("interactive"),
            url: ws.status.as_ref().and_then(|s| s.url.clone()),
            pod: Some(&pod_gone),
            replacing: true,
            data_source_changed: Some("argo"),
        };
        let mut ws = ws.clone();
        ws.status = Some(status::derive(&input, None, &t0()));
        ws
    };
    let mut caches = base(&old);
    caches.pvcs.push(observed(&old.d.pvc));
    caches.services.push(observed(&old.d.service));
    caches
        .network_policies
        .push(observed(&old.d.network_policy));
    caches.pods.push(pod_gone.clone());
    let mut old_claim = observed(&old.data.claims[0]);
    old_claim.metadata.deletion_timestamp = Some(t0());
    let mut old_pv = observed(old_volume);
    old_pv.metadata.deletion_timestamp = Some(t0());
    caches.pvcs.push(old_claim);
    caches.persistent_volumes.push(old_pv.clone());
    caches
        .config_maps
        .extend(new.data.config_map.iter().map(observed));
    let (ctx, verifier) = context(&cfg, caches.clone());
    let outcome = run_scenario(ctx, verifier, replacing.clone(), vec![], |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
    // The pod and the claim gone, the volume still terminating: no volume, claim or pod yet (a
    // claim made now would bind to the old volume); the status only loses the pod.
    let mut volume_only = caches.clone();
    volume_only
        .pvcs
        .retain(|c| c.metadata.deletion_timestamp.is_none());
    volume_only.pods.clear();
    let steps = vec![Step::apply_status(&ws, move |body| {
        let status = without_times(body);
        assert_eq!(
            status["conditions"],
            json!([
                condition("Ready", "False", "DataSourceChanged", message, 1),
                condition(
                    "Scheduled",
                    "False",
                    "NoPod",
                    "The pod does not exist yet",
                    1
                ),
            ])
        );
        assert_eq!(status.get("podName"), None);
    })];
    let (ctx, verifier) = context(&cfg, volume_only);
    let outcome = run_scenario(ctx, verifier, replacing.clone(), steps, |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(outcome.seen.len(), 1, "no Event: the same reason");

    // Pass 3: all three gone from the caches: the new volume, its claim and the pod are made.
    let mut gone = caches;
    gone.pods.clear();
    gone.pvcs
        .retain(|c| c.metadata.deletion_timestamp.is_none());
    gone.persistent_volumes.clear();
    let new_pod = the_pod(&new.d);
    let steps = vec![
        Step::apply(pv_path(&volume), applied(new_volume)),
        Step::apply(
            core_path(&ns, "persistentvolumeclaims", Some(&claim)),
            applied(&new.data.claims[0]),
        ),
        Step::apply(pod_path(&ws, &new_pod), applied(&new_pod)),
        Step::apply_status(&ws, |body| {
            let status = without_times(body);
            assert_eq!(status["phase"], "Pending");
            assert_eq!(status["conditions"][0]["reason"], "Scheduling");
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["reason"], "Scheduling");
        }),
    ];
    let (ctx, verifier) = context(&cfg, gone.clone());
    let outcome = run_scenario(ctx, verifier, replacing, steps, |ctx, _| {
        assert_eq!(ctx.metrics.replaced_data_volumes.get(), 0);
    })
    .await;
    assert_ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        write_log(&outcome),
        [
            format!("PATCH /api/v1/persistentvolumes/{volume}"),
            format!("PATCH /api/v1/namespaces/team/persistentvolumeclaims/{claim}"),
            "PATCH /api/v1/namespaces/team/pods/ws-alice".to_owned(),
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status".to_owned(),
            "POST /apis/events.k8s.io/v1/namespaces/team/events".to_owned(),
        ]
    );

    // Pass 4: every new object cached, the pod running: no request at all.
    let mut settled = with_data(gone, &new.data);
    settled.pods.push(new.pod.clone());
    let (ctx, verifier) = context(&cfg, settled);
    let outcome = run_scenario(ctx, verifier, new.ws, vec![], |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
}

#[tokio::test]
async fn a_volume_of_an_older_operator_without_its_source_hash_is_kept() {
    let cfg = OperatorConfig::default();
    let old = argo(&cfg);
    let mut caches = with_source(
        with_data(
            with_argo_children(
                argo_cluster(&old.ws, &old.d, &["argo-climate", "argo-mount"], true),
                &old,
            ),
            &old.data,
        ),
        argo_with_options(),
    );
    // Made before VOLUME_SOURCE_ANNOTATION: not compared (kept, with a warning), as before.
    for pv in &mut caches.persistent_volumes {
        pv.annotations_mut().remove(build::VOLUME_SOURCE_ANNOTATION);
    }
    let (ctx, verifier) = context(&cfg, caches);
    let outcome = run_scenario(ctx, verifier, old.ws, vec![], |_, _| {}).await;
    assert_ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
}

// The orphan sweep of the data sources' PersistentVolumes.

/// A copy of `volume` (as applied) for Workspace `workspace` of `namespace`, named `name`, bound
/// in advance to claim `claim` of `namespace`.
fn volume_of(
    volume: &k8s_openapi::api::core::v1::PersistentVolume,
    name: &str,
    namespace: &str,
    workspace: &str,
    claim: &str,
) -> k8s_openapi::api::core::v1::PersistentVolume {
    let mut pv = observed(volume);
    pv.metadata.name = Some(name.into());
    pv.labels_mut().insert(
        crate::operator::workspace::WORKSPACE_LABEL.into(),
        workspace.into(),
    );
    pv.labels_mut()
        .insert(build::WORKSPACE_NAMESPACE_LABEL.into(), namespace.into());
    if let Some(reference) = pv.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
        reference.namespace = Some(namespace.into());
        reference.name = Some(claim.into());
    }
    pv
}

/// The caches of the sweep scenarios: alice's Workspace was deleted with its finalizer removed
/// by hand (its claim went with it, by owner reference; its volume stayed); bob's is stopped.
/// Besides alice's volume: alice of `elsewhere`'s (gone too), bob's (kept with his stopped
/// Workspace), carol's (gone, but her claim is still there), dave's (gone, already terminating),
/// and one without the Workspace-namespace label.
fn orphans_cluster(a: &Argo) -> Cluster {
    let mut c = cluster(&a.ws, &[]);
    c.workspaces.retain(|w| w.name_any() == "bob");
    let volume = &a.data.persistent_volumes[0];
    let mut carols_claim = observed(&a.data.claims[0]);
    carols_claim.metadata.name = Some("data-carol-argo".into());
    let mut daves = volume_of(volume, "atelier-data-dave", NS, "dave", "data-dave-argo");
    daves.metadata.deletion_timestamp = Some(t0());
    let mut unlabelled = volume_of(volume, "atelier-data-nobody", NS, "nobody", "data-nobody");
    unlabelled
        .labels_mut()
        .remove(build::WORKSPACE_NAMESPACE_LABEL);
    c.persistent_volumes = vec![
        observed(volume),
        alice_elsewhere(&a.data),
        volume_of(volume, "atelier-data-bob", NS, "bob", "data-bob-argo"),
        volume_of(volume, "atelier-data-carol", NS, "carol", "data-carol-argo"),
        daves,
        unlabelled,
    ];
    c.pvcs = vec![carols_claim];
    c
}

/// Runs one orphan sweep of `ctx` (scope `scope`) against `steps`; returns the names of the
/// volumes it deleted and every request.
async fn run_sweep(
    ctx: std::sync::Arc<crate::operator::Context>,
    verifier: ApiServerVerifier,
    scope: Option<&str>,
    steps: Vec<Step>,
) -> (Vec<String>, Vec<Seen>) {
    let server = tokio::spawn(verifier.run(steps));
    let swept = tokio::time::timeout(
        crate::operator::workspace::fixtures::SCENARIO_TIMEOUT,
        super::apply::sweep_orphaned_data_volumes(&ctx.client, &ctx.caches, scope),
    )
    .await
    .expect("the sweep finished in time")
    .expect("the sweep succeeds");
    drop(ctx);
    let seen = match server.await {
        Ok(seen) => seen,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    (swept.iter().map(name).collect(), seen)
}

#[tokio::test]
async fn the_sweep_deletes_exactly_the_volumes_whose_workspace_and_claim_are_gone() {
    let cfg = OperatorConfig::default();
    let a = argo(&cfg);
    let alices = name(&a.data.persistent_volumes[0]);
    let caches = orphans_cluster(&a);

    // Every namespace watched: alice's two volumes, by name.
    let (ctx, verifier) = context(&cfg, caches.clone());
    let steps = vec![
        Step::delete(pv_path("atelier-data-elsewhere"), None),
        Step::delete(pv_path(&alices), None),
    ];
    let (deleted, seen) = run_sweep(ctx, verifier, None, steps).await;
    assert_eq!(
        deleted,
        ["atelier-data-elsewhere".to_owned(), alices.clone()]
    );
    assert_eq!(
        seen.iter().map(Seen::line).collect::<Vec<_>>(),
        [
            "DELETE /api/v1/persistentvolumes/atelier-data-elsewhere".to_owned(),
            format!("DELETE /api/v1/persistentvolumes/{alices}"),
        ],
        "not bob's (his Workspace is stopped), carol's (her claim is there), dave's \
         (terminating) nor the unlabelled one"
    );

    // Watching team only: alice of elsewhere is not this operator's to judge.
    let (ctx, verifier) = context(&cfg, caches.clone());
    let steps = vec![Step::delete(pv_path(&alices), None)];
    let (deleted, _) = run_sweep(ctx, verifier, Some(NS), steps).await;
    assert_eq!(deleted, vec![alices.clone()]);

    // alice's Workspace back in the cache: her volume stays, whatever its claim.
    let mut with_alice = caches;
    with_alice.workspaces.push(a.ws.clone());
    let (ctx, verifier) = context(&cfg, with_alice);
    let (deleted, seen) = run_sweep(ctx, verifier, Some(NS), vec![]).await;
    assert!(deleted.is_empty() && seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn the_sweep_deletes_nothing_before_the_workspaces_volumes_and_claims_are_listed() {
    use crate::operator::workspace::fixtures::{list_into, test_context};
    let cfg = OperatorConfig::default();
    let a = argo(&cfg);
    let caches = orphans_cluster(&a);
    let (ctx, _verifier) = test_context(cfg.clone());
    let mut w = ctx.take_cache_writers().expect("writers");
    list_into(&mut w.persistent_volumes, caches.persistent_volumes.clone());
    list_into(&mut w.pvcs, caches.pvcs.clone());
    // The Workspaces are not listed yet: every volume looks orphaned, none is. (Nothing answers
    // the mocked API here: a request would hang the sweep past the timeout.)
    assert!(ctx.caches.orphaned_data_volumes(None).is_empty());
    let swept = tokio::time::timeout(
        Duration::from_secs(2),
        super::apply::sweep_orphaned_data_volumes(&ctx.client, &ctx.caches, None),
    )
    .await
    .expect("no request")
    .expect("no error");
    assert!(swept.is_empty());
    // Listed (as the Workspace watch's InitDone marks it): now they are.
    list_into(&mut w.workspaces, caches.workspaces.clone());
    ctx.caches.mark_workspaces_listed();
    assert_eq!(ctx.caches.orphaned_data_volumes(None).len(), 2);

    // The claims not listed: nothing either.
    let (ctx, _verifier) = test_context(cfg);
    let mut w = ctx.take_cache_writers().expect("writers");
    list_into(&mut w.persistent_volumes, caches.persistent_volumes);
    list_into(&mut w.workspaces, caches.workspaces);
    ctx.caches.mark_workspaces_listed();
    assert!(ctx.caches.orphaned_data_volumes(None).is_empty());
}

#[tokio::test]
async fn the_periodic_sweep_waits_until_listed_then_deletes_and_counts_each_orphan() {
    use crate::operator::workspace::fixtures::{SCENARIO_TIMEOUT, list_into, test_context};
    let cfg = OperatorConfig::default();
    let a = argo(&cfg);
    let alices = name(&a.data.persistent_volumes[0]);
    let caches = orphans_cluster(&a);
    let (ctx, verifier) = test_context(cfg);
    let mut w = ctx.take_cache_writers().expect("writers");
    list_into(&mut w.persistent_volumes, caches.persistent_volumes);
    list_into(&mut w.pvcs, caches.pvcs);
    let server = tokio::spawn(verifier.run(vec![Step::delete(pv_path(&alices), None)]));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sweeping = tokio::spawn(super::controller::sweep_orphans_periodically(
        ctx.clone(),
        Some(NS.to_owned()),
        stopped,
    ));
    // Not listed: no request (a DELETE would be answered and counted).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ctx.metrics.orphaned_data_volumes.get(), 0);
    list_into(&mut w.workspaces, caches.workspaces);
    ctx.caches.mark_workspaces_listed();
    tokio::time::timeout(SCENARIO_TIMEOUT, async {
        while ctx.metrics.orphaned_data_volumes.get() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("swept within the readiness poll");
    // The next pass is a period away: shutdown ends the loop now.
    stop.send(true).expect("the sweep listens");
    tokio::time::timeout(SCENARIO_TIMEOUT, sweeping)
        .await
        .expect("the sweep stops on shutdown")
        .expect("no panic");
    assert_eq!(ctx.metrics.orphaned_data_volumes.get(), 1);
    drop(ctx);
    let seen = server.await.expect("the verifier ends");
    assert_eq!(seen.len(), 1);
}
