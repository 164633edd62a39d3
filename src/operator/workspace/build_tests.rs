//! Tests of the builders: exact objects from the fixtures of `tests/fixtures/builders/`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::{Value, json};

use super::{build, build_user_namespace, server_url, user_quota};
use crate::api::v1alpha1::{DesiredState, Workspace};
use crate::config::OperatorConfig;
use crate::policy::names;
use crate::policy::workspace::validate::test_support::{
    TOKEN, cfg, pools, validated, with_groups, workspace, yaml,
};

fn ws(name: &str, groups: &str, spec: &str) -> Workspace {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    yaml(&format!(
        "apiVersion: atelier.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\n  namespace: atelier\n  uid: uid-{name}\n  annotations:\n    atelier.dev/groups: \"{groups}\"\nspec:\n{spec}"
    ))
}

fn to_json<T: serde::Serialize>(x: &T) -> Value {
    serde_json::to_value(x).expect("serializes")
}

fn pod_of(ws: &Workspace) -> Pod {
    build(&validated(ws), &cfg())
        .pod
        .expect("a running workspace has a pod")
}

fn container(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

/// The env as name → `value` or `secret:<name>/<key>`.
fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    container(pod)
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(
            |EnvVar {
                 name,
                 value,
                 value_from,
             }| {
                let v = match (value, value_from.and_then(|f| f.secret_key_ref)) {
                    (Some(v), None) => v,
                    (None, Some(s)) => format!("secret:{}/{}", s.name, s.key),
                    other => panic!("{name}: unexpected {other:?}"),
                };
                (name, v)
            },
        )
        .collect()
}

fn alice_labels() -> Value {
    json!({
        "app.kubernetes.io/name": "atelier-workspace",
        "app.kubernetes.io/instance": "alice",
        "app.kubernetes.io/component": "workspace",
        "app.kubernetes.io/managed-by": "atelier-operator",
        "atelier.dev/user": "alice",
        "atelier.dev/server": "",
        "atelier.dev/workspace": "alice",
    })
}

fn alice_owner() -> Value {
    json!([{
        "apiVersion": "atelier.dev/v1alpha1",
        "kind": "Workspace",
        "name": "alice",
        "uid": "0b7c6a3e-1111-4d2f-9a55-000000000001",
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

#[test]
fn default_workspace_pod_exactly() {
    let pod = pod_of(&workspace("alice"));
    let scopes = r#"["access:servers!server=alice/","access:servers!user=alice"]"#;
    let token = json!({"secretKeyRef": {"name": "ws-alice-token", "key": "token"}});
    let want = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "ws-alice",
            "namespace": "atelier",
            "labels": alice_labels(),
            "ownerReferences": alice_owner(),
        },
        "spec": {
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "nodeSelector": {"atelier.dev/pool": "interactive"},
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 1000,
                "fsGroup": 100,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumes": [
                {"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}},
            ],
            "containers": [{
                "name": "notebook",
                "image": "quay.io/jupyter/scipy-notebook:2025-01-06",
                "imagePullPolicy": "IfNotPresent",
                "command": ["jupyterhub-singleuser"],
                "args": ["--ip=0.0.0.0", "--port=8888"],
                "ports": [{"name": "http", "containerPort": 8888, "protocol": "TCP"}],
                "env": [
                    {"name": "CPU_GUARANTEE", "value": "1.0"},
                    {"name": "CPU_LIMIT", "value": "1.0"},
                    {"name": "JPY_API_TOKEN", "valueFrom": token},
                    {"name": "JUPYTERHUB_ACTIVITY_URL", "value": "http://atelier-hub.atelier.svc:8081/hub/api/users/alice/activity"},
                    {"name": "JUPYTERHUB_API_TOKEN", "valueFrom": token},
                    {"name": "JUPYTERHUB_API_URL", "value": "http://atelier-hub.atelier.svc:8081/hub/api"},
                    {"name": "JUPYTERHUB_BASE_URL", "value": "/"},
                    {"name": "JUPYTERHUB_CLIENT_ID", "value": "jupyterhub-user-alice"},
                    {"name": "JUPYTERHUB_DEFAULT_URL", "value": "/lab"},
                    {"name": "JUPYTERHUB_OAUTH_ACCESS_SCOPES", "value": scopes},
                    {"name": "JUPYTERHUB_OAUTH_CALLBACK_URL", "value": "/user/alice/oauth_callback"},
                    {"name": "JUPYTERHUB_OAUTH_SCOPES", "value": scopes},
                    {"name": "JUPYTERHUB_SERVER_NAME", "value": ""},
                    {"name": "JUPYTERHUB_SERVICE_PREFIX", "value": "/user/alice/"},
                    {"name": "JUPYTERHUB_SERVICE_URL", "value": "http://0.0.0.0:8888/user/alice/"},
                    {"name": "JUPYTERHUB_USER", "value": "alice"},
                    {"name": "MEM_GUARANTEE", "value": "2147483648"},
                    {"name": "MEM_LIMIT", "value": "2147483648"},
                    {"name": "PIP_INDEX_URL", "value": "https://pypi.example.org/simple"},
                    {"name": "TZ", "value": "UTC"},
                ],
                "resources": {
                    "limits": {"cpu": "1", "memory": "2Gi"},
                    "requests": {"cpu": "1", "memory": "2Gi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": true,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "readinessProbe": {
                    "httpGet": {"path": "/user/alice/api", "port": "http"},
                    "periodSeconds": 5,
                },
                "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}],
            }],
        },
    });
    assert_eq!(to_json(&pod), want);
}

#[test]
fn default_workspace_other_children_exactly() {
    let r = build(&validated(&workspace("alice")), &cfg());
    assert_eq!(
        to_json(&r.secret),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "ws-alice-token",
                "namespace": "atelier",
                "labels": alice_labels(),
                "ownerReferences": alice_owner(),
            },
            "type": "Opaque",
            // base64 of the token
            "data": {"token": "czNjcjN0LXRva2Vu"},
        })
    );
    assert_eq!(r.secret.data.as_ref().unwrap()["token"].0, TOKEN.as_bytes());
    assert_eq!(
        to_json(&r.pvc),
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "home-alice",
                "namespace": "atelier",
                "labels": alice_labels(),
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}},
            },
        }),
        "home.onDelete keep: the claim is not owned by the Workspace"
    );
    assert_eq!(
        to_json(&r.service),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "ws-alice",
                "namespace": "atelier",
                "labels": alice_labels(),
                "ownerReferences": alice_owner(),
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": {
                    "app.kubernetes.io/instance": "alice",
                    "atelier.dev/workspace": "alice",
                },
                "ports": [{"name": "http", "port": 8888, "targetPort": "http", "protocol": "TCP"}],
            },
        })
    );
    let peer = |component: &str| {
        json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "atelier"}},
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "atelier",
                "app.kubernetes.io/component": component,
            }},
        })
    };
    assert_eq!(
        to_json(&r.network_policy),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "ws-alice",
                "namespace": "atelier",
                "labels": alice_labels(),
                "ownerReferences": alice_owner(),
            },
            "spec": {
                "podSelector": {"matchLabels": {
                    "app.kubernetes.io/instance": "alice",
                    "atelier.dev/workspace": "alice",
                }},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [peer("hub"), peer("proxy")],
                    "ports": [{"port": 8888, "protocol": "TCP"}],
                }],
            },
        })
    );
    assert_eq!(
        server_url(&validated(&workspace("alice")), &cfg()),
        "http://ws-alice.atelier.svc:8888/user/alice/"
    );
}

#[test]
fn gpu_named_server_pod() {
    let v = validated(&workspace("alice-gpu"));
    let r = build(&v, &cfg());
    let pod = r.pod.expect("pod");
    let spec = to_json(pod.spec.as_ref().unwrap());
    assert_eq!(
        spec["containers"][0]["resources"],
        json!({
            "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
        })
    );
    assert_eq!(
        spec["nodeSelector"],
        json!({"atelier.dev/pool": "gpu-a100", "nvidia.com/gpu.product": "a100"})
    );
    assert_eq!(
        spec["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "topology.kubernetes.io/zone"
    );
    assert_eq!(spec["priorityClassName"], "atelier-gpu");
    assert_eq!(
        spec["containers"][0]["image"],
        "ghcr.io/atelier/jupyter-pangeo:1.0"
    );
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/user/alice/gpu/api"
    );
    assert_eq!(pod.metadata.name.as_deref(), Some("ws-alice-gpu"));
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["atelier.dev/server"],
        "gpu"
    );

    let env = env_of(&pod);
    let expect: &[(&str, &str)] = &[
        ("JUPYTERHUB_SERVER_NAME", "gpu"),
        ("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/gpu/"),
        (
            "JUPYTERHUB_SERVICE_URL",
            "http://0.0.0.0:8888/user/alice/gpu/",
        ),
        ("JUPYTERHUB_CLIENT_ID", "jupyterhub-user-alice~gpu"),
        (
            "JUPYTERHUB_OAUTH_CALLBACK_URL",
            "/user/alice/gpu/oauth_callback",
        ),
        (
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
            r#"["access:servers!server=alice/gpu","access:servers!user=alice"]"#,
        ),
        (
            "JUPYTERHUB_ACTIVITY_URL",
            "http://atelier-hub.atelier.svc:8081/hub/api/users/alice/activity",
        ),
        ("JUPYTERHUB_API_TOKEN", "secret:ws-alice-gpu-token/token"),
        ("JPY_API_TOKEN", "secret:ws-alice-gpu-token/token"),
        ("MEM_LIMIT", "17179869184"),
        ("CPU_LIMIT", "4.0"),
        ("DASK_DISTRIBUTED__WORKERS", "4"),
    ];
    for (name, value) in expect {
        assert_eq!(env.get(*name).map(String::as_str), Some(*value), "{name}");
    }

    // home.onDelete delete: the claim is owned and goes with the Workspace.
    let pvc = to_json(&r.pvc);
    assert_eq!(pvc["metadata"]["ownerReferences"][0]["name"], "alice-gpu");
    assert_eq!(pvc["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        pvc["spec"],
        json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "50Gi"}},
            "storageClassName": "fast-ssd",
        })
    );
}

#[test]
fn cpu_only_workspace_never_carries_gpu_placement() {
    // The qgis profile's default pool is a gpu pool; a CPU-only workspace of it runs on an
    // interactive pool with no GPU limit, no GPU toleration and no GPU node selector.
    let pod = pod_of(&ws("q", "physics, ml", "user: alice\nprofile: qgis"));
    let spec = to_json(pod.spec.as_ref().unwrap());
    assert_eq!(
        spec["containers"][0]["resources"]["limits"],
        json!({"cpu": "1", "memory": "2Gi"})
    );
    assert_eq!(
        spec["nodeSelector"],
        json!({"atelier.dev/pool": "interactive"})
    );
    assert_eq!(spec.get("tolerations"), None);
    assert_eq!(spec.get("priorityClassName"), None);
    assert_eq!(env_of(&pod)["JUPYTERHUB_DEFAULT_URL"], "/desktop");

    // gpus: 0 explicitly on a profile whose defaults ask for one GPU: no GPU either.
    let pod = pod_of(&ws(
        "p",
        "physics",
        "user: alice\nprofile: pangeo-gpu\nresources: {gpus: 0}",
    ));
    let spec = to_json(pod.spec.as_ref().unwrap());
    assert_eq!(
        spec["containers"][0]["resources"]["limits"],
        json!({"cpu": "4", "memory": "16Gi"})
    );
    assert_eq!(
        spec["nodeSelector"],
        json!({"atelier.dev/pool": "interactive"})
    );
    assert_eq!(spec.get("tolerations"), None);
}

#[test]
fn every_data_source_kind() {
    let w = ws(
        "d",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [team-shared, scratch, irods-csi, irods-archive, sentinel, era5, argo-floats]",
    );
    let pod = pod_of(&w);
    let spec = to_json(pod.spec.as_ref().unwrap());
    assert_eq!(
        spec["volumes"],
        json!([
            {"name": "home", "persistentVolumeClaim": {"claimName": "home-d"}},
            {"name": "data-era5", "csi": {
                "driver": "ru.yandex.s3.csi",
                "readOnly": true,
                "volumeAttributes": {"bucket": "era5", "mounter": "geesefs"},
                "nodePublishSecretRef": {"name": "era5-creds"},
            }},
            {"name": "data-irods-csi", "csi": {
                "driver": "irods.csi.cyverse.org",
                "readOnly": false,
                "volumeAttributes": {"client": "irodsfuse", "path": "/otherZone/projects"},
                "nodePublishSecretRef": {"name": "irods-csi-secret"},
            }},
            {"name": "data-scratch", "nfs": {
                "server": "nfs.example.org",
                "path": "/export/scratch",
                "readOnly": false,
            }},
            {"name": "data-team-shared", "persistentVolumeClaim": {
                "claimName": "team-shared",
                "readOnly": true,
            }},
        ])
    );
    assert_eq!(
        spec["containers"][0]["volumeMounts"],
        json!([
            {"name": "home", "mountPath": "/home/rstudio"},
            {"name": "data-era5", "mountPath": "/data/era5", "readOnly": true},
            {"name": "data-irods-csi", "mountPath": "/data/projects", "readOnly": false},
            {"name": "data-scratch", "mountPath": "/scratch", "readOnly": false},
            {"name": "data-team-shared", "mountPath": "/shared", "readOnly": true},
        ])
    );

    let env = env_of(&pod);
    let data_env: BTreeMap<&str, &str> = env
        .iter()
        .filter(|(k, _)| {
            k.starts_with("ATELIER_DATA_")
                || k.starts_with("AWS_")
                || k.starts_with("FSSPEC_")
                || k.starts_with("IRODS_")
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // The data sources' environment (tests/fixtures/builders/data-source-env.json, which
    // policy::data's test checks too): argo-floats, the first s3 source, also sets the standard
    // variables; era5 reaches another Secret through its own names only; sentinel is
    // anonymous; irods-archive, the first irods source, also sets the iRODS client's variables.
    let want: BTreeMap<String, String> = serde_json::from_str(include_str!(
        "../../../tests/fixtures/builders/data-source-env.json"
    ))
    .expect("the expected environment");
    let want: BTreeMap<&str, &str> = want.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(data_env, want);
}

#[test]
fn single_anonymous_s3_source() {
    let pod = pod_of(&ws(
        "s",
        "chemistry",
        "user: bob\nprofile: rstudio\ndataSources: [sentinel]",
    ));
    let env = env_of(&pod);
    assert_eq!(env["AWS_ENDPOINT_URL"], "https://sentinel.example.org");
    assert_eq!(
        env["FSSPEC_S3_ENDPOINT_URL"],
        "https://sentinel.example.org"
    );
    assert_eq!(env["FSSPEC_S3_ANON"], "true");
    assert!(!env.contains_key("AWS_ACCESS_KEY_ID"));
    assert!(!env.contains_key("AWS_DEFAULT_REGION"));
    // Env only: no volume besides home.
    let volumes = pod.spec.unwrap().volumes.unwrap();
    assert_eq!(volumes.len(), 1);
}

#[test]
fn csi_publish_secret_defaults_to_the_credentials_secret() {
    let w = ws(
        "c",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [irods-csi]",
    );
    let mut v = validated(&w);
    v.data_sources[0]
        .1
        .csi
        .as_mut()
        .unwrap()
        .node_publish_secret = None;
    let pod = build(&v, &cfg()).pod.unwrap();
    let spec = to_json(pod.spec.as_ref().unwrap());
    assert_eq!(
        spec["volumes"][1]["csi"]["nodePublishSecretRef"],
        json!({"name": "irods2-creds"})
    );
}

#[test]
fn env_precedence_and_order() {
    let w = ws(
        "e",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [argo-floats]",
    );
    let mut v = validated(&w);
    // `validate` already drops JUPYTERHUB_* from user env; the builder holds even if it did not.
    v.env.insert("JUPYTERHUB_USER".into(), "mallory".into());
    v.env.insert("JPY_API_TOKEN".into(), "inline".into());
    v.env.insert("MEM_LIMIT".into(), "1".into());
    v.env
        .insert("AWS_ENDPOINT_URL".into(), "https://mine.example.org".into());
    v.env.insert("MY_VAR".into(), "kept".into());
    let pod = build(&v, &cfg()).pod.unwrap();
    let env = env_of(&pod);
    assert_eq!(env["JUPYTERHUB_USER"], "alice");
    assert_eq!(env["JPY_API_TOKEN"], "secret:ws-e-token/token");
    assert_eq!(env["MEM_LIMIT"], "2147483648");
    assert_eq!(env["AWS_ENDPOINT_URL"], "https://s3.example.org");
    assert_eq!(env["MY_VAR"], "kept");
    // Sorted, unique, and the token never inline.
    let vars = container(&pod).env.clone().unwrap();
    let names: Vec<&str> = vars.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted);
    assert!(vars.iter().all(|e| e.value.as_deref() != Some(TOKEN)));
}

#[test]
fn stopped_workspace_has_no_pod_and_keeps_its_home() {
    let running = build(&validated(&workspace("alice")), &cfg());
    let mut w = workspace("alice");
    w.spec.desired_state = DesiredState::Stopped;
    let stopped = build(&validated(&w), &cfg());
    assert_eq!(stopped.pod, None);
    assert_eq!(stopped.pvc, running.pvc);
    assert_eq!(stopped.secret, running.secret);
    assert_eq!(stopped.service, running.service);
    assert_eq!(stopped.network_policy, running.network_policy);
}

#[test]
fn building_is_deterministic() {
    for name in ["alice", "alice-gpu", "bob"] {
        let w = workspace(name);
        let a = build(&validated(&w), &cfg());
        let b = build(&validated(&w), &cfg());
        assert_eq!(a, b, "{name}");
        assert_eq!(to_json(&a.pod), to_json(&b.pod), "{name}");
    }
    let w = ws(
        "d",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [team-shared, scratch, era5, argo-floats]",
    );
    let w2 = ws(
        "d",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [argo-floats, era5, scratch, team-shared]",
    );
    assert_eq!(
        build(&validated(&w), &cfg()),
        build(&validated(&w2), &cfg()),
        "the order of spec.dataSources does not matter"
    );
}

#[test]
fn public_url_makes_the_oauth_callback_absolute() {
    let cfg = OperatorConfig {
        public_url: "https://vre.example.org/".into(),
        server_port: 9999,
        image_pull_policy: "Always".into(),
        ..cfg()
    };
    let v = validated(&workspace("alice"));
    let pod = build(&v, &cfg).pod.unwrap();
    let env = env_of(&pod);
    assert_eq!(
        env["JUPYTERHUB_OAUTH_CALLBACK_URL"],
        "https://vre.example.org/user/alice/oauth_callback"
    );
    assert_eq!(
        env["JUPYTERHUB_SERVICE_URL"],
        "http://0.0.0.0:9999/user/alice/"
    );
    let c = container(&pod);
    assert_eq!(c.args.as_deref().unwrap()[1], "--port=9999");
    assert_eq!(c.ports.as_deref().unwrap()[0].container_port, 9999);
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
}

/// With the hub's `--user-domain` the server's OAuth callback is on the user's own host (what
/// the hub registers for it) and it logs browsers in on the hub's host (`JUPYTERHUB_HOST`).
#[test]
fn a_user_domain_puts_the_callback_on_the_users_host() {
    let cfg = OperatorConfig {
        public_url: "https://vre.example.org".into(),
        user_domain: Some(crate::config::UserDomain::parse("users.example.org").unwrap()),
        ..cfg()
    };
    let v = validated(&workspace("alice"));
    let pod = build(&v, &cfg).pod.unwrap();
    let env = env_of(&pod);
    assert_eq!(
        env["JUPYTERHUB_OAUTH_CALLBACK_URL"],
        "https://alice.users.example.org/user/alice/oauth_callback"
    );
    assert_eq!(env["JUPYTERHUB_HOST"], "https://vre.example.org");
    assert_eq!(
        crate::policy::names::site_oauth_callback_url(
            &cfg.public_url,
            cfg.user_domain.as_ref(),
            "alice",
            ""
        ),
        env["JUPYTERHUB_OAUTH_CALLBACK_URL"],
        "the operator and the hub agree"
    );
    let names: Vec<String> = container(&pod)
        .env
        .as_deref()
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .filter(|n| n.starts_with("JUPYTERHUB_"))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        names[..names.len() - 1],
        sorted[..sorted.len() - 1],
        "{names:?}"
    );
    // Without one: no JUPYTERHUB_HOST, the callback on the site.
    let env = env_of(
        &build(
            &v,
            &OperatorConfig {
                user_domain: None,
                ..cfg
            },
        )
        .pod
        .unwrap(),
    );
    assert!(!env.contains_key("JUPYTERHUB_HOST"));
    assert_eq!(
        env["JUPYTERHUB_OAUTH_CALLBACK_URL"],
        "https://vre.example.org/user/alice/oauth_callback"
    );
}

#[test]
fn long_names_stay_valid_and_consistent() {
    let long = format!("alice.{}.{}", "x".repeat(60), "y".repeat(60));
    let mut w = workspace("alice");
    w.metadata.name = Some(long.clone());
    let v = validated(&w);
    let r = build(&v, &cfg());
    let pod = r.pod.clone().unwrap();
    let child_names = [
        pod.metadata.name.clone().unwrap(),
        r.service.metadata.name.clone().unwrap(),
        r.secret.metadata.name.clone().unwrap(),
        r.pvc.metadata.name.clone().unwrap(),
        r.network_policy.metadata.name.clone().unwrap(),
    ];
    for n in &child_names {
        assert!(names::is_dns_label(n), "{n}");
    }
    assert_eq!(child_names[1], names::service_name(&long));
    // Every label value is valid, and the selectors select the pod.
    let labels = pod.metadata.labels.clone().unwrap();
    for value in labels.values() {
        assert!(names::is_valid_label_value(value), "{value}");
    }
    let selector = r.service.spec.as_ref().unwrap().selector.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    // The owner reference keeps the full name.
    assert_eq!(
        pod.metadata.owner_references.as_ref().unwrap()[0].name,
        long
    );
    // The token env points at the (shortened) Secret.
    assert_eq!(
        env_of(&pod)["JUPYTERHUB_API_TOKEN"],
        format!("secret:{}/token", child_names[2])
    );
    // Two long names differing only at the end do not collide.
    let mut w2 = w.clone();
    w2.metadata.name = Some(format!("{long}y"));
    let r2 = build(&validated(&w2), &cfg());
    assert_ne!(r2.pod.unwrap().metadata.name, pod.metadata.name);
    assert_ne!(r2.pvc.metadata.name, r.pvc.metadata.name);
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn user_namespace_exactly() {
    let without_batch: Vec<_> = pools()
        .into_iter()
        .filter(|p| p.metadata.name.as_deref() != Some("batch"))
        .collect();
    let r = build_user_namespace(
        "atelier-u-bob",
        "bob",
        &set(&["chemistry"]),
        &without_batch,
        &cfg(),
    );
    let labels = json!({
        "app.kubernetes.io/managed-by": "atelier-operator",
        "atelier.dev/user": "bob",
    });
    let child =
        |name: &str| json!({"name": name, "namespace": "atelier-u-bob", "labels": labels.clone()});
    assert_eq!(
        to_json(&r.namespace),
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "atelier-u-bob", "labels": labels.clone()},
        })
    );
    // bob may use interactive (2 workspaces, 4 CPU, 16Gi) and gpu-v100 (2, 8, 32Gi, 1 GPU).
    assert_eq!(
        to_json(&r.resource_quota),
        json!({
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": child("atelier-quota"),
            "spec": {"hard": {
                "pods": "4",
                "requests.cpu": "12",
                "limits.cpu": "12",
                "requests.memory": "48Gi",
                "limits.memory": "48Gi",
                "requests.nvidia.com/gpu": "1",
            }},
        })
    );
    assert_eq!(
        to_json(&r.limit_range),
        json!({
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": child("atelier-limits"),
            "spec": {"limits": [{
                "type": "Container",
                "default": {"cpu": "1", "memory": "2Gi"},
                "defaultRequest": {"cpu": "1", "memory": "2Gi"},
            }]},
        })
    );
    let peer = |component: &str| {
        json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "atelier"}},
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "atelier",
                "app.kubernetes.io/component": component,
            }},
        })
    };
    assert_eq!(
        to_json(&r.network_policy),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": child("atelier-default"),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [peer("hub"), peer("proxy")]}],
            },
        })
    );
    // Deterministic.
    assert_eq!(
        r,
        build_user_namespace(
            "atelier-u-bob",
            "bob",
            &set(&["chemistry"]),
            &without_batch,
            &cfg()
        )
    );
}

#[test]
fn user_quota_sums() {
    let all = pools();
    let without_batch: Vec<_> = all
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some("batch"))
        .cloned()
        .collect();
    let quota =
        |groups: &[&str], pools: &[crate::api::v1alpha1::NodePool]| -> BTreeMap<String, String> {
            user_quota(&set(groups), pools)
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        };
    let m = |items: &[(&str, &str)]| -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // physics: interactive + interactive-large + gpu-a100 + gpu-v100.
    assert_eq!(
        quota(&["physics"], &without_batch),
        m(&[
            ("pods", "6"),
            ("requests.cpu", "36"),
            ("limits.cpu", "36"),
            ("requests.memory", "176Gi"),
            ("limits.memory", "176Gi"),
            ("requests.nvidia.com/gpu", "3"),
        ])
    );
    // The batch pool is open to everyone and uncapped: only GPUs stay bounded.
    assert_eq!(
        quota(&["physics"], &all),
        m(&[("requests.nvidia.com/gpu", "3")])
    );
    // No open gpu pool: no GPU key at all.
    let cpu_only: Vec<_> = all
        .iter()
        .filter(|p| p.metadata.name.as_deref() == Some("interactive"))
        .cloned()
        .collect();
    assert_eq!(
        quota(&[], &cpu_only),
        m(&[
            ("pods", "2"),
            ("requests.cpu", "4"),
            ("limits.cpu", "4"),
            ("requests.memory", "16Gi"),
            ("limits.memory", "16Gi"),
        ])
    );
    // A user whose groups open no pool may run nothing.
    let large_only: Vec<_> = all
        .iter()
        .filter(|p| p.metadata.name.as_deref() == Some("interactive-large"))
        .cloned()
        .collect();
    assert_eq!(
        quota(&["chemistry"], &large_only),
        m(&[
            ("pods", "0"),
            ("requests.cpu", "0"),
            ("limits.cpu", "0"),
            ("requests.memory", "0"),
            ("limits.memory", "0"),
        ])
    );
}

#[test]
fn user_label_of_a_groupless_workspace() {
    let w = with_groups(workspace("bob"), "");
    let r = build(&validated(&w), &cfg());
    assert_eq!(
        r.service.metadata.labels.unwrap()["atelier.dev/user"],
        "bob"
    );
}
