//! Mock API scenarios of a workspace's Dask cluster (the pattern of `tests.rs`: the caches hold
//! the scenario's cluster, the mock API server asserts every request in order).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::dask::{CrdState, DaskObserved, DaskOutcome, dask_spec_hash, set_dask_status};
use super::{REQUEUE_REFUSED, REQUEUE_STEADY, REQUEUE_TRANSITIONAL};
use crate::api::v1alpha1::{
    DaskProfile, DaskSpec, DesiredState, WorkerRange, Workspace, WorkspaceProfile,
};
use crate::config::OperatorConfig;
use crate::operator::Context;
use crate::operator::workspace::build::{self, DaskResources};
use crate::operator::workspace::cache::CacheWriters;
use crate::operator::workspace::fixtures::{
    ApiServerVerifier, Cluster, Outcome, Seen, Step, applied, assert_json_eq, inputs, list_into,
    observed, pool, profile, run_scenario, seeded_context, with_pod_status, workspace,
};
use crate::operator::workspace::status::{self, StatusInput};
use crate::operator::workspace::{ValidatedWorkspace, WorkspaceResources};
use crate::policy::admission::UsageIndex;
use crate::policy::workspace::validate;

const TOKEN: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
const DASK_API: &str = "/apis/kubernetes.dask.org/v1/namespaces/team";

/// The `jupyter` profile offering Dask: 1 to `max` workers by default, at most 4.
fn dask_profile(max: i32) -> WorkspaceProfile {
    let mut p = profile();
    p.spec.dask = Some(DaskProfile {
        defaults: Some(DaskSpec {
            enabled: Some(true),
            workers: Some(WorkerRange { min: 1, max }),
            ..DaskSpec::default()
        }),
        max_workers: 4,
        max_worker_resources: None,
    });
    p
}

/// What `validate` + `admit_dask` make of `ws` (no other usage on the pool), as the
/// reconciliation sees it.
fn validated(
    ws: &Workspace,
    profile: &WorkspaceProfile,
    pools: &[crate::api::v1alpha1::NodePool],
) -> ValidatedWorkspace {
    let mut observed = inputs(ws, TOKEN);
    observed.profile = Some(profile.clone());
    observed.pools = pools.to_vec();
    let mut v = validate::validate(ws, &observed, &OperatorConfig::default())
        .unwrap_or_else(|r| panic!("valid: {r:?}"));
    let mut index = UsageIndex::default();
    validate::admit(&mut index, "team/alice", &v, pools).expect("admitted");
    validate::admit_dask(&mut index, "team/alice", &mut v, pools).expect("admitted");
    v
}

fn t0() -> Time {
    serde_json::from_value(json!("2026-01-01T09:00:00Z")).expect("a time")
}

fn running(d: &WorkspaceResources) -> Pod {
    let mut pod = with_pod_status(observed(d.pod.as_ref().expect("a pod")), "running");
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some("node-1".into());
    }
    pod
}

/// A ready pod of the Dask cluster (as the dask-kubernetes operator's Deployments make them).
fn dask_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "team", "labels": {"atelier.dev/workspace": "alice"}},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("a pod")
}

/// `ws` with the status the reconciler derives (server `pod`, the cluster as `dask`).
fn with_status(
    mut ws: Workspace,
    v: &ValidatedWorkspace,
    pod: &Pod,
    dask: Option<&DaskObserved>,
) -> Workspace {
    let cfg = OperatorConfig::default();
    let input = StatusInput {
        generation: ws.metadata.generation,
        desired_state: v.desired_state,
        refusal: None,
        rejection: None,
        node_pool: Some("interactive"),
        url: Some(build::server_url(v, &cfg)),
        pod: Some(pod),
        replacing: false,
        data_source_changed: None,
    };
    let mut s = status::derive(&input, None, &t0());
    let dask = dask.cloned().map(DaskOutcome::Running);
    set_dask_status(&mut s, v, dask.as_ref(), None, &t0());
    ws.status = Some(s);
    ws
}

struct Scenario {
    ws: Workspace,
    cluster: Cluster,
    dask: Vec<DaskResources>,
    crd: CrdState,
    /// The DaskClusters of `dask` are not in the cache (the dask operator deleted them).
    cluster_gone: bool,
}

/// The caches: every workspace child of `v` applied, the server running, the Dask objects
/// `dask` (with their hashes), the CRD's state.
fn scenario(
    ws: Workspace,
    profile: WorkspaceProfile,
    pools: Vec<crate::api::v1alpha1::NodePool>,
    v: &ValidatedWorkspace,
    extra_pods: &[Pod],
) -> (Cluster, WorkspaceResources) {
    let cfg = OperatorConfig::default();
    let d = build::build(v, &cfg);
    let mut cluster = Cluster {
        workspaces: vec![ws.clone()],
        secrets: vec![observed(&d.secret)],
        pvcs: vec![observed(&d.pvc)],
        services: vec![observed(&d.service)],
        network_policies: vec![observed(&d.network_policy)],
        config_maps: vec![observed(
            &build::build_catalog_config_map(v).expect("a catalogue"),
        )],
        pods: vec![running(&d)],
        ..Cluster::inputs()
    };
    cluster.profiles = vec![profile];
    cluster.pools = pools;
    cluster.pods.extend_from_slice(extra_pods);
    (cluster, d)
}

fn context(s: Scenario) -> (std::sync::Arc<Context>, ApiServerVerifier, Workspace) {
    let mut cluster = s.cluster;
    for r in &s.dask {
        cluster.network_policies.push(observed(&r.network_policy));
    }
    let (ctx, verifier, mut writers): (_, _, CacheWriters) =
        seeded_context(OperatorConfig::default(), cluster);
    let clusters = if s.cluster_gone { &[][..] } else { &s.dask[..] };
    list_into(
        &mut writers.dask_clusters,
        clusters.iter().map(|r| observed(&r.cluster)).collect(),
    );
    list_into(
        &mut writers.dask_autoscalers,
        s.dask.iter().map(|r| observed(&r.autoscaler)).collect(),
    );
    ctx.caches.dask_crd.set(s.crd);
    // The writers must outlive the scenario (a dropped writer ends the caches).
    std::mem::forget(writers);
    (ctx, verifier, s.ws)
}

fn ok(outcome: &Outcome, expected: Action) {
    match &outcome.result {
        Ok(action) => assert_eq!(action, &expected),
        Err(error) => panic!("reconcile failed: {error}"),
    }
}

fn log(outcome: &Outcome) -> Vec<String> {
    outcome.writes().into_iter().map(Seen::line).collect()
}

fn dask_status(body: &Value) -> (Value, Value) {
    let condition = body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Dask")
        .cloned()
        .map(|mut c| {
            c.as_object_mut().map(|o| o.remove("lastTransitionTime"));
            c
        })
        .unwrap_or(Value::Null);
    (body["status"]["dask"].clone(), condition)
}

#[tokio::test]
async fn a_workspace_asking_for_dask_gets_its_cluster_autoscaler_and_policy() {
    let ws = workspace();
    let (p, pools) = (dask_profile(2), vec![pool()]);
    let v = validated(&ws, &p, &pools);
    let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
    let (cluster, d) = scenario(ws.clone(), p, pools, &v, &[]);
    // The server runs with the Dask variables already (its pod is the desired one).
    let pod = running(&d);
    let ws = with_status(ws, &v, &pod, None);
    let steps = vec![
        Step::apply(
            "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
            applied(&r.network_policy),
        ),
        Step::apply(
            format!("{DASK_API}/daskclusters/ws-alice-dask"),
            applied(&r.cluster),
        ),
        Step::apply(
            format!("{DASK_API}/daskautoscalers/ws-alice-dask"),
            applied(&r.autoscaler),
        ),
        Step::apply_status(&ws, |body| {
            let (dask, condition) = dask_status(body);
            assert_json_eq(
                &dask,
                &json!({
                    "schedulerAddress": "tcp://ws-alice-dask-scheduler.team.svc.cluster.local:8786",
                    "dashboardUrl": "/user/alice/dask/status",
                    "dashboardTarget": "http://ws-alice-dask-scheduler.team.svc.cluster.local:8787",
                    "workersWanted": 2, "workersReady": 0, "workers": "0/2",
                    "nodePool": "interactive",
                }),
            );
            assert_json_eq(
                &condition,
                &json!({"type": "Dask", "status": "False", "reason": "DaskStarting",
                        "message": "Starting the Dask scheduler", "observedGeneration": 1}),
            );
        }),
        // The Dask condition appeared: its own Event.
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["reason"], "DaskStarting");
            assert_eq!(body["note"], "Starting the Dask scheduler");
        }),
    ];
    let (ctx, verifier, ws) = context(Scenario {
        ws,
        cluster,
        dask: vec![],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        log(&outcome),
        [
            "PATCH /apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
            "PATCH /apis/kubernetes.dask.org/v1/namespaces/team/daskclusters/ws-alice-dask",
            "PATCH /apis/kubernetes.dask.org/v1/namespaces/team/daskautoscalers/ws-alice-dask",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );
}

#[tokio::test]
async fn an_unchanged_cluster_makes_zero_requests_and_its_pods_are_not_the_servers() {
    let ws = workspace();
    let (p, pools) = (dask_profile(2), vec![pool()]);
    let v = validated(&ws, &p, &pools);
    let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
    let dask_pods = [
        dask_pod("ws-alice-dask-scheduler-5d9c7-abcde"),
        dask_pod("ws-alice-dask-default-worker-0123456789-6f8b9-xyz12"),
    ];
    let (cluster, d) = scenario(ws.clone(), p, pools, &v, &dask_pods);
    let pod = running(&d);
    let seen = DaskObserved {
        scheduler_ready: true,
        workers_ready: 1,
    };
    let ws = with_status(ws, &v, &pod, Some(&seen));
    let dask = ws
        .status
        .as_ref()
        .and_then(|s| s.dask.clone())
        .expect("dask status");
    assert_eq!(dask.workers.as_deref(), Some("1/2"));
    let (ctx, verifier, ws) = context(Scenario {
        ws,
        cluster,
        dask: vec![r],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, ws, vec![], |ctx, _| {
        // The usage index holds the cluster's claim under its own key.
        let usage = ctx.usage().user_usage("interactive", "alice");
        assert_eq!(usage.workspaces, 1);
    })
    .await;
    ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
}

#[tokio::test]
async fn more_workers_reapply_the_autoscaler_only() {
    let ws = workspace();
    let pools = vec![pool()];
    let before = validated(&ws, &dask_profile(2), &pools);
    let r = build::build_dask(&before, &OperatorConfig::default(), None).expect("dask");
    let mut scaled = ws.clone();
    scaled.spec.dask = Some(DaskSpec {
        workers: Some(WorkerRange { min: 1, max: 3 }),
        ..DaskSpec::default()
    });
    let p = dask_profile(2);
    let after = validated(&scaled, &p, &pools);
    let want = build::build_dask(&after, &OperatorConfig::default(), None).expect("dask");
    assert_eq!(
        want.cluster, r.cluster,
        "replicas = min: the cluster is unchanged"
    );
    let (cluster, d) = scenario(scaled.clone(), p, pools, &after, &[]);
    let pod = running(&d);
    let seen = DaskObserved {
        scheduler_ready: true,
        workers_ready: 1,
    };
    let ws = with_status(scaled, &before, &pod, Some(&seen));
    let steps = vec![
        Step::apply(
            format!("{DASK_API}/daskautoscalers/ws-alice-dask"),
            applied(&want.autoscaler),
        )
        .check(|body| assert_eq!(body["spec"]["maximum"], 3)),
        Step::apply_status(&ws, |body| {
            let (dask, _) = dask_status(body);
            assert_eq!(dask["workersWanted"], 3);
            assert_eq!(dask["workers"], "0/3", "no worker pod in the cache");
        }),
        // No scheduler pod in the cache either: Running → Starting, an Event.
        Step::event(&ws, |body| assert_eq!(body["reason"], "DaskStarting")),
    ];
    let (ctx, verifier, ws) = context(Scenario {
        ws,
        cluster,
        dask: vec![r],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(
        log(&outcome),
        [
            "PATCH /apis/kubernetes.dask.org/v1/namespaces/team/daskautoscalers/ws-alice-dask",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ]
    );
}

#[tokio::test]
async fn a_cap_lowers_the_maximum_and_the_status_says_so() {
    let ws = workspace();
    let mut capped_pool = pool();
    if let Some(caps) = capped_pool.spec.caps.as_mut()
        && let Some(per_user) = caps.per_user.as_mut()
    {
        // The server takes 1 CPU of it: 2 workers of 1 CPU fit, not 4.
        per_user.cpu = Some("3".into());
    }
    let pools = vec![capped_pool];
    let p = dask_profile(4);
    let v = validated(&ws, &p, &pools);
    let dask = v.dask.as_ref().expect("dask");
    assert_eq!((dask.max, dask.workers), (4, 2));
    let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
    assert_eq!(r.autoscaler.spec.maximum, 2);
    let (cluster, d) = scenario(ws.clone(), p, pools, &v, &[]);
    let pod = running(&d);
    let ws = with_status(ws, &v, &pod, None);
    let message = dask.capped.clone().expect("a cap message");
    assert!(message.starts_with("2 of 4 Dask workers: "), "{message}");
    let note = message.clone();
    let steps = vec![
        Step::apply(
            "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
            applied(&r.network_policy),
        ),
        Step::apply(
            format!("{DASK_API}/daskclusters/ws-alice-dask"),
            applied(&r.cluster),
        ),
        Step::apply(
            format!("{DASK_API}/daskautoscalers/ws-alice-dask"),
            applied(&r.autoscaler),
        ),
        Step::apply_status(&ws, move |body| {
            let (dask, condition) = dask_status(body);
            assert_eq!(dask["cappedTo"], 2);
            assert_eq!(dask["workersWanted"], 2);
            assert_eq!(condition["reason"], "DaskWorkersCapped");
            assert_eq!(condition["message"], json!(message));
        }),
        Step::event(&ws, move |body| {
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["reason"], "DaskWorkersCapped");
            assert_eq!(body["note"], json!(note));
        }),
    ];
    let (ctx, verifier, ws) = context(Scenario {
        ws,
        cluster,
        dask: vec![],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(outcome.writes().len(), 5);
}

#[tokio::test]
async fn stopping_deletes_the_autoscaler_the_cluster_and_the_policy() {
    let ws = workspace();
    let pools = vec![pool()];
    let p = dask_profile(2);
    let v = validated(&ws, &p, &pools);
    let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
    let (mut cluster, _) = scenario(ws.clone(), p, pools, &v, &[]);
    cluster.pods.clear();
    let mut stopped = ws.clone();
    stopped.spec.desired_state = DesiredState::Stopped;
    cluster.workspaces = vec![stopped.clone()];
    let steps = vec![
        Step::delete(format!("{DASK_API}/daskautoscalers/ws-alice-dask"), None),
        Step::delete(format!("{DASK_API}/daskclusters/ws-alice-dask"), None),
        Step::delete(
            "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
            None,
        ),
        Step::apply_status(&stopped, |body| {
            assert_eq!(body["status"]["phase"], "Stopped");
            assert_eq!(dask_status(body), (Value::Null, Value::Null));
        }),
        Step::event(&stopped, |_| {}),
    ];
    let (ctx, verifier, ws) = context(Scenario {
        ws: stopped,
        cluster,
        dask: vec![r],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, ws, steps, |ctx, _| {
        assert!(ctx.usage().user_usage("interactive", "alice").cpu_millis == 0);
    })
    .await;
    ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(
        log(&outcome)[..3],
        [
            "DELETE /apis/kubernetes.dask.org/v1/namespaces/team/daskautoscalers/ws-alice-dask",
            "DELETE /apis/kubernetes.dask.org/v1/namespaces/team/daskclusters/ws-alice-dask",
            "DELETE /apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
        ]
    );
}

#[tokio::test]
async fn a_deleted_workspace_releases_its_clusters_claim_and_leaves_the_cluster_to_the_gc() {
    let mut ws = workspace();
    ws.metadata.deletion_timestamp = Some(t0());
    let pools = vec![pool()];
    let p = dask_profile(2);
    let v = validated(&ws, &p, &pools);
    let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
    let (mut cluster, _) = scenario(ws.clone(), p, pools, &v, &[]);
    cluster.pods.clear();
    let steps = vec![Step::remove_finalizer(&ws)];
    let (ctx, verifier, ws) = context(Scenario {
        ws,
        cluster,
        dask: vec![r],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    ctx.usage()
        .observe(&validate::dask_key("team/alice"), validate::dask_claim(&v));
    let outcome = run_scenario(ctx, verifier, ws, steps, |ctx, _| {
        let usage = ctx.usage().user_usage("interactive", "alice");
        assert_eq!(
            (usage.workspaces, usage.cpu_millis),
            (0, 0),
            "both claims released"
        );
    })
    .await;
    ok(&outcome, Action::await_change());
    assert_eq!(
        outcome.writes().len(),
        1,
        "the owner reference deletes the cluster"
    );
}

#[tokio::test]
async fn without_the_dask_operator_a_workspace_asking_for_dask_is_refused_and_others_run() {
    let ws = workspace();
    let pools = vec![pool()];
    let p = dask_profile(2);
    let v = validated(&ws, &p, &pools);
    let (cluster, d) = scenario(ws.clone(), p.clone(), pools.clone(), &v, &[]);
    let pod = running(&d);
    let ws = with_status(ws, &v, &pod, None);
    let steps = vec![
        // A refused workspace runs nothing and keeps nothing half-applied (`refuse`).
        Step::delete("/api/v1/namespaces/team/pods/ws-alice", None),
        Step::delete("/api/v1/namespaces/team/configmaps/ws-alice-data", None),
        Step::apply_status(&ws, |body| {
            let ready = body["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .unwrap();
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "DaskOperatorMissing");
            assert!(
                ready["message"]
                    .as_str()
                    .unwrap()
                    .contains("dask-kubernetes operator")
            );
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Warning");
            assert_eq!(body["reason"], "DaskOperatorMissing");
        }),
    ];
    let (ctx, verifier, ws) = context(Scenario {
        ws,
        cluster,
        dask: vec![],
        crd: CrdState::Missing,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
    ok(&outcome, Action::requeue(REQUEUE_REFUSED));

    // The same workspace without Dask runs untouched.
    let mut plain = workspace();
    plain.spec.dask = Some(DaskSpec {
        enabled: Some(false),
        ..DaskSpec::default()
    });
    let v = validated(&plain, &p, &pools);
    assert!(v.dask.is_none());
    let (cluster, d) = scenario(plain.clone(), p, pools, &v, &[]);
    let plain = with_status(plain, &v, &running(&d), None);
    let (ctx, verifier, ws) = context(Scenario {
        ws: plain,
        cluster,
        dask: vec![],
        crd: CrdState::Missing,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, ws, vec![], |_, _| {}).await;
    ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);
}

/// `ws` asking for a cluster that the dask-kubernetes operator deletes after 600 s idle.
fn idle_workspace() -> Workspace {
    let mut ws = workspace();
    ws.spec.dask = Some(DaskSpec {
        idle_timeout_seconds: Some(600),
        ..DaskSpec::default()
    });
    ws
}

#[tokio::test]
async fn a_cluster_the_dask_operator_deleted_for_idleness_is_recorded_and_not_made_again() {
    let ws = idle_workspace();
    let (p, pools) = (dask_profile(2), vec![pool()]);
    let v = validated(&ws, &p, &pools);
    let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
    assert_eq!(r.cluster.spec.idle_timeout, Some(600));
    // The status saw the scheduler ready; the cluster, its scheduler and workers are gone.
    let (cluster, d) = scenario(ws.clone(), p, pools.clone(), &v, &[]);
    let seen = DaskObserved {
        scheduler_ready: true,
        workers_ready: 2,
    };
    let ws = with_status(ws, &v, &running(&d), Some(&seen));
    let hash = dask_spec_hash(&ws);
    let want_hash = hash.clone();
    let steps = vec![
        Step::delete(format!("{DASK_API}/daskautoscalers/ws-alice-dask"), None),
        Step::delete(
            "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
            None,
        ),
        Step::apply_status(&ws, move |body| {
            assert_eq!(body["status"]["phase"], "Running", "the server runs on");
            let (dask, condition) = dask_status(body);
            assert_json_eq(
                &dask,
                &json!({"workersWanted": 0, "workersReady": 0, "workers": "0/0",
                        "nodePool": "interactive", "idleStopped": want_hash}),
            );
            assert_json_eq(
                &condition,
                &json!({"type": "Dask", "status": "False", "reason": "DaskIdle",
                        "message": "The Dask cluster was deleted after 600 s without work \
                                    (idleTimeoutSeconds); restart the workspace or change \
                                    spec.dask for a new one",
                        "observedGeneration": 1}),
            );
        }),
        Step::event(&ws, |body| {
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["reason"], "DaskIdle");
        }),
    ];
    let (ctx, verifier, ws) = context(Scenario {
        ws,
        cluster,
        dask: vec![r],
        crd: CrdState::Present,
        cluster_gone: true,
    });
    let mut server_only = UsageIndex::default();
    validate::admit(&mut server_only, "team/alice", &v, &pools).expect("admitted");
    let outcome = run_scenario(ctx, verifier, ws, steps, move |ctx, _| {
        assert_eq!(
            ctx.usage().user_usage("interactive", "alice"),
            server_only.user_usage("interactive", "alice"),
            "the idle cluster's workers claim nothing"
        );
    })
    .await;
    ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(
        log(&outcome),
        [
            "DELETE /apis/kubernetes.dask.org/v1/namespaces/team/daskautoscalers/ws-alice-dask",
            "DELETE /apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
            "PATCH /apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status",
            "POST /apis/events.k8s.io/v1/namespaces/team/events",
        ],
        "no DaskCluster made again"
    );
}

/// `ws` with the status of a cluster stopped idle under its current `spec.dask`.
fn stopped_idle(ws: Workspace, v: &ValidatedWorkspace, pod: &Pod) -> Workspace {
    let mut ws = with_status(ws, v, pod, None);
    let hash = dask_spec_hash(&ws);
    if let Some(s) = ws.status.as_mut() {
        set_dask_status(s, v, Some(&DaskOutcome::Idle(hash)), None, &t0());
    }
    ws
}

#[tokio::test]
async fn an_idle_stop_stays_until_spec_dask_changes_then_a_new_cluster_is_made() {
    let ws = idle_workspace();
    let (p, pools) = (dask_profile(2), vec![pool()]);
    let v = validated(&ws, &p, &pools);
    let (cluster, d) = scenario(ws.clone(), p.clone(), pools.clone(), &v, &[]);
    let idle = stopped_idle(ws.clone(), &v, &running(&d));
    // Remembered: no request at all, steady.
    let (ctx, verifier, remembered) = context(Scenario {
        ws: idle.clone(),
        cluster,
        dask: vec![],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, remembered, vec![], |_, _| {}).await;
    ok(&outcome, Action::requeue(REQUEUE_STEADY));
    assert_eq!(outcome.seen.len(), 0, "{:?}", outcome.seen);

    // The user asks again (another range): a new cluster, the memory cleared.
    let mut asked = idle;
    asked.spec.dask = Some(DaskSpec {
        workers: Some(WorkerRange { min: 1, max: 2 }),
        idle_timeout_seconds: Some(600),
        ..DaskSpec::default()
    });
    assert_ne!(dask_spec_hash(&asked), dask_spec_hash(&ws));
    let v = validated(&asked, &p, &pools);
    let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
    let (mut cluster, _) = scenario(asked.clone(), p, pools, &v, &[]);
    cluster.workspaces = vec![asked.clone()];
    let steps = vec![
        Step::apply(
            "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/ws-alice-dask",
            applied(&r.network_policy),
        ),
        Step::apply(
            format!("{DASK_API}/daskclusters/ws-alice-dask"),
            applied(&r.cluster),
        ),
        Step::apply(
            format!("{DASK_API}/daskautoscalers/ws-alice-dask"),
            applied(&r.autoscaler),
        ),
        Step::apply_status(&asked, |body| {
            let (dask, condition) = dask_status(body);
            assert_eq!(dask.get("idleStopped"), None, "{dask}");
            assert_eq!(dask["workers"], "0/2");
            assert_eq!(condition["reason"], "DaskStarting");
        }),
        Step::event(&asked, |body| assert_eq!(body["reason"], "DaskStarting")),
    ];
    let (ctx, verifier, asked) = context(Scenario {
        ws: asked,
        cluster,
        dask: vec![],
        crd: CrdState::Present,
        cluster_gone: false,
    });
    let outcome = run_scenario(ctx, verifier, asked, steps, |_, _| {}).await;
    ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
    assert_eq!(outcome.writes().len(), 5);
}

#[tokio::test]
async fn a_vanished_cluster_without_an_idle_timeout_or_never_ready_is_made_again() {
    for (timeout, scheduler_ready) in [(None, true), (Some(600), false)] {
        let mut ws = workspace();
        ws.spec.dask = Some(DaskSpec {
            idle_timeout_seconds: timeout,
            ..DaskSpec::default()
        });
        let (p, pools) = (dask_profile(2), vec![pool()]);
        let v = validated(&ws, &p, &pools);
        let r = build::build_dask(&v, &OperatorConfig::default(), None).expect("dask");
        let (cluster, d) = scenario(ws.clone(), p, pools, &v, &[]);
        let seen = DaskObserved {
            scheduler_ready,
            workers_ready: 0,
        };
        let ws = with_status(ws, &v, &running(&d), Some(&seen));
        let mut steps = vec![Step::apply(
            format!("{DASK_API}/daskclusters/ws-alice-dask"),
            applied(&r.cluster),
        )];
        if scheduler_ready {
            steps.push(Step::apply_status(&ws, |body| {
                assert_eq!(dask_status(body).1["reason"], "DaskStarting");
            }));
            steps.push(Step::event(&ws, |body| {
                assert_eq!(body["reason"], "DaskStarting")
            }));
        }
        let (ctx, verifier, ws) = context(Scenario {
            ws,
            cluster,
            dask: vec![r],
            crd: CrdState::Present,
            cluster_gone: true,
        });
        let outcome = run_scenario(ctx, verifier, ws, steps, |_, _| {}).await;
        ok(&outcome, Action::requeue(REQUEUE_TRANSITIONAL));
        assert_eq!(
            log(&outcome)[0],
            "PATCH /apis/kubernetes.dask.org/v1/namespaces/team/daskclusters/ws-alice-dask",
            "{timeout:?} {scheduler_ready}"
        );
    }
}
