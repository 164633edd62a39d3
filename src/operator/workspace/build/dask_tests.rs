//! Tests of the Dask builder: exact objects (golden `tests/fixtures/builders/dask.objects.json`)
//! and table tests of what varies.

use k8s_openapi::api::core::v1::Toleration;
use serde_json::{Value, json};

use super::*;
use crate::api::v1alpha1::PoolPurpose;
use crate::operator::workspace::build::build;
use crate::policy::workspace::validate::test_support::{cfg, validated, workspace};
use crate::policy::workspace::{EffectiveResources, PlacedPool, ValidatedDask};
use crate::rbac::testing::assert_json_eq;

fn to_json<T: serde::Serialize>(x: &T) -> Value {
    serde_json::to_value(x).expect("serializes")
}

fn batch_pool() -> PlacedPool {
    PlacedPool {
        name: "batch".into(),
        purpose: PoolPurpose::Batch,
        node_selector: BTreeMap::from([("atelier.dev/pool".into(), "batch".into())]),
        tolerations: vec![Toleration {
            key: Some("atelier.dev/batch".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }],
        affinity: None,
        gpu_resource_name: None,
        priority_class_name: Some("atelier-batch".into()),
    }
}

fn with_dask(name: &str, dask: ValidatedDask) -> ValidatedWorkspace {
    let mut v = validated(&workspace(name));
    v.dask = Some(dask);
    v
}

fn dask(min: i32, max: i32, workers: i32) -> ValidatedDask {
    ValidatedDask {
        min,
        max,
        workers,
        capped: None,
        resources: EffectiveResources {
            cpu: "2".into(),
            memory: "4Gi".into(),
            gpus: 0,
            gpu_type: None,
        },
        pool: batch_pool(),
        image: "quay.io/jupyter/pangeo:2026.11".into(),
        idle_timeout_seconds: Some(1800),
    }
}

#[test]
fn a_cluster_its_autoscaler_and_its_network_policy_are_built_exactly() {
    let v = with_dask("alice", dask(1, 8, 6));
    let r = build_dask(&v, &cfg(), None).expect("a cluster");
    let got = [
        to_json(&r.network_policy),
        to_json(&r.cluster),
        to_json(&r.autoscaler),
    ];
    let want: Vec<Value> = serde_json::from_str(include_str!(
        "../../../../tests/fixtures/builders/dask.objects.json"
    ))
    .expect("a JSON array");
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_json_eq(got, want);
    }
}

#[test]
fn no_cluster_without_dask_and_no_dask_variables_in_the_server() {
    let v = validated(&workspace("alice"));
    assert!(v.dask.is_none());
    assert_eq!(build_dask(&v, &cfg(), None), None);
    let env = build(&v, &cfg()).pod.unwrap().spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(env.iter().all(|e| !e.name.starts_with("DASK_")), "{env:?}");
}

#[test]
fn the_server_gets_the_scheduler_address_and_the_dashboard_link() {
    let v = with_dask("alice", dask(1, 4, 4));
    let env = build(&v, &cfg()).pod.unwrap().spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let get = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        get("DASK_SCHEDULER_ADDRESS").as_deref(),
        Some("tcp://ws-alice-dask-scheduler.atelier.svc.cluster.local:8786")
    );
    assert_eq!(
        get("DASK_DISTRIBUTED__DASHBOARD__LINK").as_deref(),
        Some("/user/alice/dask/status")
    );
    // Still sorted by name.
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(
        dashboard_target(&v),
        "http://ws-alice-dask-scheduler.atelier.svc.cluster.local:8787"
    );
}

#[test]
fn what_varies_with_the_request() {
    struct Case {
        name: &'static str,
        dask: ValidatedDask,
        server: &'static str,
        // (replicas, minimum, maximum)
        counts: (i32, i32, i32),
        worker_limits: Value,
        worker_args: &'static [&'static str],
        idle_timeout: Value,
        prefix: &'static str,
    }
    let mut gpu = dask(0, 2, 2);
    gpu.resources = EffectiveResources {
        cpu: "500m".into(),
        memory: "1536Mi".into(),
        gpus: 1,
        gpu_type: None,
    };
    gpu.pool.gpu_resource_name = Some("nvidia.com/gpu".into());
    gpu.idle_timeout_seconds = Some(0);
    let mut capped = dask(3, 8, 2);
    capped.min = 2;
    capped.idle_timeout_seconds = None;
    let cases = [
        Case {
            name: "cpu workers, idle timeout",
            dask: dask(1, 8, 6),
            server: "",
            counts: (1, 1, 6),
            worker_limits: json!({"cpu": "2", "memory": "4Gi"}),
            worker_args: &["--nthreads=2", "--memory-limit=4294967296"],
            idle_timeout: json!(1800),
            prefix: "/user/alice/dask",
        },
        Case {
            name: "gpu workers on the pool's resource, no timeout at 0, a named server",
            dask: gpu,
            server: "big",
            counts: (0, 0, 2),
            worker_limits: json!({"cpu": "500m", "memory": "1536Mi", "nvidia.com/gpu": "1"}),
            worker_args: &["--nthreads=1", "--memory-limit=1610612736"],
            idle_timeout: Value::Null,
            prefix: "/user/alice/big/dask",
        },
        Case {
            name: "capped: the maximum is the capped count",
            dask: capped,
            server: "",
            counts: (2, 2, 2),
            worker_limits: json!({"cpu": "2", "memory": "4Gi"}),
            worker_args: &["--nthreads=2"],
            idle_timeout: Value::Null,
            prefix: "/user/alice/dask",
        },
    ];
    for case in cases {
        let mut v = with_dask("alice", case.dask);
        v.server_name = case.server.into();
        let r = build_dask(&v, &cfg(), None).expect("a cluster");
        let c = to_json(&r.cluster);
        let a = to_json(&r.autoscaler);
        let n = case.name;
        assert_eq!(
            (
                c["spec"]["worker"]["replicas"].clone(),
                a["spec"]["minimum"].clone(),
                a["spec"]["maximum"].clone()
            ),
            (
                json!(case.counts.0),
                json!(case.counts.1),
                json!(case.counts.2)
            ),
            "{n}"
        );
        let worker = &c["spec"]["worker"]["spec"]["containers"][0];
        assert_eq!(worker["resources"]["limits"], case.worker_limits, "{n}");
        assert_eq!(worker["resources"]["requests"], case.worker_limits, "{n}");
        let args: Vec<&str> = worker["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for want in case.worker_args {
            assert!(args.contains(want), "{n}: {args:?}");
        }
        // The operator deletes an idle cluster; the scheduler has no timeout of its own.
        assert_eq!(c["spec"]["idleTimeout"], case.idle_timeout, "{n}");
        let scheduler = &c["spec"]["scheduler"]["spec"]["containers"][0];
        assert_eq!(scheduler["env"], Value::Null, "{n}");
        assert!(
            scheduler["args"]
                .as_array()
                .unwrap()
                .contains(&json!(format!("--dashboard-prefix={}", case.prefix))),
            "{n}"
        );
        assert_eq!(
            scheduler["readinessProbe"]["httpGet"]["path"],
            json!(format!("{}/health", case.prefix)),
            "{n}"
        );
        // The scheduler never asks for GPUs.
        assert_eq!(
            scheduler["resources"]["limits"],
            json!({"cpu": case.worker_limits["cpu"], "memory": case.worker_limits["memory"]}),
            "{n}"
        );
    }
}

#[test]
fn the_cluster_is_labelled_so_that_the_servers_selectors_miss_its_pods() {
    let v = with_dask("alice", dask(1, 2, 2));
    let r = build_dask(&v, &cfg(), None).unwrap();
    let labels = r.cluster.metadata.labels.clone().unwrap();
    for (k, want) in super::super::selector_labels(&v) {
        assert!(
            labels.get(&k) != Some(&want) || k != "app.kubernetes.io/instance",
            "{k}"
        );
    }
    assert!(!labels.contains_key("app.kubernetes.io/instance"));
    assert_eq!(labels["atelier.dev/workspace"], "alice");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "atelier-operator");
    // Long workspace names: the cluster's name fits the CRD's 53 characters.
    let mut long = with_dask("alice", dask(1, 2, 2));
    long.name = "a".repeat(80);
    let r = build_dask(&long, &cfg(), None).unwrap();
    let name = r.cluster.metadata.name.clone().unwrap();
    assert!(name.len() <= 53, "{name}");
    assert_eq!(r.autoscaler.spec.cluster, name);
    assert_eq!(
        r.cluster.spec.scheduler.service.selector.clone().unwrap()["dask.org/cluster-name"],
        name
    );
}

#[test]
fn pod_specs_use_no_field_newer_than_kubernetes_1_21() {
    // The CRDs' pod schema is Kubernetes 1.21's: fields added later are refused or pruned.
    let newer = [
        "resizePolicy",
        "restartPolicy\":\"Always\",\"name", // container restartPolicy (sidecars, 1.28)
        "hostUsers",
        "schedulingGates",
        "resourceClaims",
        "os",
        "claims",
        "appArmorProfile",
        "hostnameOverride",
    ];
    let v = with_dask("alice", dask(1, 2, 2));
    let r = build_dask(&v, &cfg(), None).unwrap();
    for spec in [&r.cluster.spec.scheduler.spec, &r.cluster.spec.worker.spec] {
        let text = serde_json::to_string(spec).unwrap();
        for field in newer {
            assert!(!text.contains(&format!("\"{field}\"")), "{field} in {text}");
        }
    }
}
