//! Tests of the builders: exact objects from the fixtures of `tests/fixtures/builders/`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::{Value, json};

use super::{
    DataChildren, build, build_user_namespace, build_with, csi_mode, csi_volume_attributes,
    csi_volume_handle, data_children, server_url, user_quota,
};
use crate::api::v1alpha1::{CsiMode, CsiSpec, DataSource, DataSourceSpec, DesiredState, Workspace};
use crate::config::OperatorConfig;
use crate::operator::workspace::ValidatedWorkspace;
use crate::policy::names;
use crate::policy::workspace::validate::test_support::{
    TOKEN, cfg, pools, validated, with_groups, workspace, yaml,
};
use crate::rbac::testing::assert_json_eq;

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

/// The cluster's CSIDrivers: csi-s3 and the iRODS driver as they install (Persistent only), or
/// both also offering Ephemeral.
fn drivers(ephemeral: bool) -> BTreeMap<String, Vec<String>> {
    let modes = if ephemeral {
        vec!["Persistent".to_owned(), "Ephemeral".to_owned()]
    } else {
        vec!["Persistent".to_owned()]
    };
    BTreeMap::from([
        ("ru.yandex.s3.csi".to_owned(), modes.clone()),
        ("irods.csi.cyverse.org".to_owned(), modes),
    ])
}

/// The workspace of `every_data_source_kind`: every fixture source but the refused ones.
fn every_kind() -> Workspace {
    ws(
        "d",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [team-shared, scratch, irods-csi, irods-archive, sentinel, era5, argo-floats]",
    )
}

/// The data sources' variables of a pod's server container.
fn data_env_of(pod: &Pod) -> BTreeMap<String, String> {
    env_of(pod)
        .into_iter()
        .filter(|(k, _)| {
            [
                "ATELIER_DATA_",
                "ATELIER_STAC_",
                "AWS_",
                "FSSPEC_",
                "IRODS_",
                "RCLONE_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .collect()
}

fn fixture_env(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).expect("an environment fixture")
}

#[test]
fn every_data_source_kind() {
    let w = every_kind();
    // The CSI sources are Persistent (the drivers are unknown here, and both offer only that):
    // claims of the statically provisioned volumes `data_children` builds.
    let pod = pod_of(&w);
    let spec = to_json(pod.spec.as_ref().unwrap());
    assert_eq!(
        spec["volumes"],
        json!([
            {"name": "home", "persistentVolumeClaim": {"claimName": "home-d"}},
            {"name": "data-era5", "persistentVolumeClaim": {
                "claimName": names::data_claim_name("d", "era5"),
                "readOnly": true,
            }},
            {"name": "data-irods-csi", "persistentVolumeClaim": {
                "claimName": names::data_claim_name("d", "irods-csi"),
                "readOnly": false,
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
            {"name": "atelier-data", "configMap": {"name": "ws-d-data"}},
            {"name": "atelier-irods", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        ])
    );
    let mounts = json!([
        {"name": "home", "mountPath": "/home/rstudio"},
        {"name": "data-era5", "mountPath": "/data/era5", "readOnly": true},
        {"name": "data-irods-csi", "mountPath": "/data/projects", "readOnly": false},
        {"name": "data-scratch", "mountPath": "/scratch", "readOnly": false},
        {"name": "data-team-shared", "mountPath": "/shared", "readOnly": true},
        {"name": "atelier-data", "mountPath": "/etc/atelier/data", "readOnly": true},
        {"name": "atelier-irods", "mountPath": "/etc/atelier/irods", "readOnly": true},
    ]);
    assert_eq!(spec["containers"][0]["volumeMounts"], mounts);

    // With drivers that offer Ephemeral, `Auto` mounts inline: the driver's defaults under the
    // admin's attributes, the Secret in the pod's namespace (irods-csi names its own).
    let v = validated(&w);
    let inline = build_with(&v, &cfg(), Some(&drivers(true))).pod.unwrap();
    let inline_spec = to_json(inline.spec.as_ref().unwrap());
    assert_eq!(
        inline_spec["volumes"][1],
        json!({"name": "data-era5", "csi": {
            "driver": "ru.yandex.s3.csi",
            "readOnly": true,
            "volumeAttributes": {"bucket": "era5", "mounter": "geesefs"},
            "nodePublishSecretRef": {"name": "era5-creds"},
        }})
    );
    assert_eq!(
        inline_spec["volumes"][2],
        json!({"name": "data-irods-csi", "csi": {
            "driver": "irods.csi.cyverse.org",
            "readOnly": false,
            "volumeAttributes": {
                "client": "irodsfuse",
                "host": "irods2.example.org",
                "port": "1248",
                "zone": "otherZone",
                "path": "/otherZone/projects",
            },
            "nodePublishSecretRef": {"name": "irods-csi-secret"},
        }})
    );
    assert_eq!(inline_spec["containers"][0]["volumeMounts"], mounts);
    assert_eq!(
        build_with(&v, &cfg(), Some(&drivers(false))),
        build(&v, &cfg()),
        "drivers offering only Persistent: as without drivers"
    );

    // The data sources' environment: what the builder has always set
    // (tests/fixtures/builders/data-source-env.json, which policy::data's test checks too),
    // and what GDAL, rclone, Intake and the iRODS client read besides
    // (data-source-env-clients.json). argo-floats, the first s3 source, also sets the standard
    // variables; era5 reaches another Secret through its own names only; sentinel is
    // anonymous; irods-archive, the first irods source, also sets the iRODS client's variables.
    let mut want = fixture_env(include_str!(
        "../../../tests/fixtures/builders/data-source-env.json"
    ));
    let clients = fixture_env(include_str!(
        "../../../tests/fixtures/builders/data-source-env-clients.json"
    ));
    assert!(clients.keys().all(|k| !want.contains_key(k)));
    want.extend(clients);
    assert_eq!(data_env_of(&pod), want);
    assert_eq!(data_env_of(&inline), want, "the mode changes no variable");
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
    assert_eq!(env["AWS_NO_SIGN_REQUEST"], "YES");
    assert!(!env.contains_key("AWS_ACCESS_KEY_ID"));
    assert!(!env.contains_key("AWS_DEFAULT_REGION"));
    assert!(!env.contains_key("IRODS_ENVIRONMENT_FILE"));
    assert_eq!(
        env["ATELIER_DATA_CATALOG"],
        "/etc/atelier/data/catalog.yaml"
    );
    // Env only: no volume besides home and the catalogue, no init container.
    let spec = pod.spec.unwrap();
    let volumes: Vec<&str> = spec
        .volumes
        .as_deref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["home", "atelier-data"]);
    assert_eq!(spec.init_containers, None);
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

// --- Data sources: CSI volumes, their PersistentVolumes and claims, the catalogue, iRODS ---

/// One DataSource spec from YAML lines.
fn source(name: &str, text: &str) -> (String, DataSourceSpec) {
    let text: String = text.lines().map(|l| format!("  {l}\n")).collect();
    let d: DataSource = yaml(&format!(
        "apiVersion: atelier.dev/v1alpha1\nkind: DataSource\nmetadata:\n  name: {name}\nspec:\n{text}"
    ));
    assert_eq!(crate::policy::data::spec_problem(&d.spec), None, "{name}");
    (name.to_owned(), d.spec)
}

/// A workspace (alice's defaults) with `sources` as its validated data sources.
fn with_sources(groups: &[&str], mut sources: Vec<(String, DataSourceSpec)>) -> ValidatedWorkspace {
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    let mut v = validated(&workspace("alice"));
    v.groups = set(groups);
    v.data_sources = sources;
    v
}

fn csi(text: &str) -> CsiSpec {
    serde_json::from_value(serde_json::to_value(yaml::<Value>(text)).unwrap()).expect("a CsiSpec")
}

/// The golden objects of a file under tests/fixtures/builders/ (a JSON array; check_chart.py
/// validates each against Kubernetes' schemas).
fn golden(text: &str) -> Vec<Value> {
    serde_json::from_str(text).expect("a JSON array of objects")
}

fn children_json(d: &DataChildren) -> Vec<Value> {
    let mut out: Vec<Value> = d.persistent_volumes.iter().map(to_json).collect();
    out.extend(d.claims.iter().map(to_json));
    out.extend(d.config_map.iter().map(to_json));
    out
}

#[test]
fn persistent_csi_sources_exactly() {
    // era5: csi-s3 with the source's credentials; irods-csi: the iRODS driver with its own
    // mount Secret. Then the catalogue's ConfigMap and the pod (init container included).
    let v = validated(&every_kind());
    let children = data_children(&v, None);
    let mut got = children_json(&children);
    got.push(to_json(&build(&v, &cfg()).pod.unwrap()));
    let want = golden(include_str!(
        "../../../tests/fixtures/builders/data-persistent.objects.json"
    ));
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_json_eq(got, want);
    }
    // Consistency: each claim names its volume and the volume's claimRef names the claim, the
    // pod's volumes name the claims.
    for (pv, pvc) in children.persistent_volumes.iter().zip(&children.claims) {
        let (pv, pvc) = (to_json(pv), to_json(pvc));
        assert_eq!(pvc["spec"]["volumeName"], pv["metadata"]["name"]);
        assert_eq!(pv["spec"]["claimRef"]["name"], pvc["metadata"]["name"]);
        assert_eq!(
            pv["spec"]["claimRef"]["namespace"],
            pvc["metadata"]["namespace"]
        );
        assert_eq!(pv["spec"]["accessModes"], pvc["spec"]["accessModes"]);
        assert_eq!(
            pv["spec"]["capacity"]["storage"],
            pvc["spec"]["resources"]["requests"]["storage"]
        );
        assert_eq!(pv["metadata"].get("ownerReferences"), None);
        assert_eq!(
            pvc["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "atelier.dev/v1alpha1",
                "kind": "Workspace",
                "name": "d",
                "uid": "uid-d",
                "controller": true,
                "blockOwnerDeletion": true,
            }])
        );
    }
}

#[test]
fn ephemeral_csi_sources_exactly() {
    // The same workspace where the drivers offer Ephemeral: inline volumes, no PersistentVolume
    // nor claim, the same ConfigMap.
    let v = validated(&every_kind());
    let children = data_children(&v, Some(&drivers(true)));
    assert!(children.persistent_volumes.is_empty() && children.claims.is_empty());
    assert_eq!(children.config_map, data_children(&v, None).config_map);
    let pod = build_with(&v, &cfg(), Some(&drivers(true))).pod.unwrap();
    let want = golden(include_str!(
        "../../../tests/fixtures/builders/data-ephemeral.objects.json"
    ));
    assert_eq!(want.len(), 1);
    assert_json_eq(&to_json(&pod), &want[0]);
}

#[test]
fn csi_mode_resolves_auto_from_the_drivers_volume_lifecycle_modes() {
    let modes = |m: &[&str]| -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([(
            "d.example.org".to_owned(),
            m.iter().map(|s| s.to_string()).collect(),
        )])
    };
    type Drivers = Option<BTreeMap<String, Vec<String>>>;
    let cases: &[(&str, Drivers, CsiMode)] = &[
        ("{driver: d.example.org}", None, CsiMode::Persistent),
        (
            "{driver: d.example.org}",
            Some(modes(&[])),
            CsiMode::Persistent,
        ),
        (
            "{driver: d.example.org}",
            Some(modes(&["Persistent"])),
            CsiMode::Persistent,
        ),
        (
            "{driver: d.example.org}",
            Some(modes(&["Ephemeral"])),
            CsiMode::Ephemeral,
        ),
        (
            "{driver: d.example.org}",
            Some(modes(&["Persistent", "Ephemeral"])),
            CsiMode::Ephemeral,
        ),
        // Another driver's modes do not count.
        (
            "{driver: other.example.org}",
            Some(modes(&["Ephemeral"])),
            CsiMode::Persistent,
        ),
        // An explicit mode is kept whatever the drivers say (validate refuses a misfit).
        (
            "{driver: d.example.org, mode: Persistent}",
            Some(modes(&["Ephemeral"])),
            CsiMode::Persistent,
        ),
        (
            "{driver: d.example.org, mode: Ephemeral}",
            None,
            CsiMode::Ephemeral,
        ),
        (
            "{driver: d.example.org, mode: Ephemeral}",
            Some(modes(&["Persistent"])),
            CsiMode::Ephemeral,
        ),
    ];
    for (text, drivers, want) in cases {
        assert_eq!(
            csi_mode(&csi(text), drivers.as_ref()),
            *want,
            "{text} {drivers:?}"
        );
    }
}

#[test]
fn csi_volume_attributes_per_driver() {
    let s3 = source(
        "s",
        "s3: {endpoint: 'https://s3.example.org', bucket: argo, prefix: floats/}\ncsi: {driver: x}\nmountPath: /data",
    );
    let irods = source(
        "i",
        "irods: {host: irods.example.org, zone: z, path: /z/home/public}\ncsi: {driver: x}\nmountPath: /data",
    );
    let attrs = |spec: &DataSourceSpec, text: &str| -> Value {
        to_json(&csi_volume_attributes(spec, &csi(text)))
    };
    let cases: &[(&DataSourceSpec, &str, Value)] = &[
        // csi-s3: the mounter; the admin's options and overrides on top.
        (
            &s3.1,
            "{driver: ru.yandex.s3.csi}",
            json!({"mounter": "geesefs"}),
        ),
        (
            &s3.1,
            "{driver: ru.yandex.s3.csi, volumeAttributes: {mounter: rclone, options: '--no-modtime'}}",
            json!({"mounter": "rclone", "options": "--no-modtime"}),
        ),
        // The iRODS driver: the connection, the port a string (default 1247).
        (
            &irods.1,
            "{driver: irods.csi.cyverse.org}",
            json!({"client": "irodsfuse", "host": "irods.example.org", "port": "1247", "zone": "z", "path": "/z/home/public"}),
        ),
        (
            &irods.1,
            "{driver: irods.csi.cyverse.org, volumeAttributes: {path: /z/home/public/argo, read_only: 'true'}}",
            json!({"client": "irodsfuse", "host": "irods.example.org", "port": "1247", "zone": "z", "path": "/z/home/public/argo", "read_only": "true"}),
        ),
        // Other drivers, or a driver's name on the other kind of source: the admin's only.
        (&s3.1, "{driver: ch.ctrox.csi.s3-driver}", json!({})),
        (
            &s3.1,
            "{driver: s3.csi.aws.com, volumeAttributes: {bucketName: argo}}",
            json!({"bucketName": "argo"}),
        ),
        (&s3.1, "{driver: irods.csi.cyverse.org}", json!({})),
        (&irods.1, "{driver: ru.yandex.s3.csi}", json!({})),
    ];
    for (spec, text, want) in cases {
        assert_eq!(&attrs(spec, text), want, "{text}");
    }
}

#[test]
fn csi_volume_handle_defaults() {
    let s3 = |prefix: &str| {
        source("s", &format!("s3: {{endpoint: 'https://s3.example.org', bucket: argo, prefix: '{prefix}'}}\ncsi: {{driver: ru.yandex.s3.csi}}\nmountPath: /data")).1
    };
    let plain = csi("{driver: ru.yandex.s3.csi}");
    for (prefix, want) in [
        ("", "argo"),
        ("/", "argo"),
        ("floats/", "argo/floats"),
        ("/floats", "argo/floats"),
        ("a/b/c/", "argo/a/b/c"),
        ("x.zarr", "argo/x.zarr"),
    ] {
        assert_eq!(
            csi_volume_handle(&s3(prefix), &plain, "pv"),
            want,
            "{prefix:?}"
        );
    }
    let explicit = csi("{driver: ru.yandex.s3.csi, volumeHandle: argo/other}");
    assert_eq!(
        csi_volume_handle(&s3("floats/"), &explicit, "pv"),
        "argo/other"
    );
    let irods = source("i", "irods: {host: h, zone: z, path: /z/p}\ncsi: {driver: irods.csi.cyverse.org}\nmountPath: /data").1;
    assert_eq!(
        csi_volume_handle(
            &irods,
            &csi("{driver: irods.csi.cyverse.org}"),
            "atelier-data-x"
        ),
        "atelier-data-x"
    );
}

/// The Secret a CSI mount hands its driver: `csi.nodePublishSecret`, else the user's
/// credentials by group, else none; the same on a PersistentVolume (both refs, with the
/// namespace) and inline (the publish ref, local).
#[test]
fn csi_secret_is_the_mount_secret_else_the_users_credentials() {
    let by_group = "irods:
  host: irods.example.org
  zone: z
  path: /z/home/public
  credentialsByGroup:
    - {group: vo-ocean, secret: {name: ocean-irods}}
    - {group: vo-atmos, secret: {name: atmos-irods}}
csi: {driver: irods.csi.cyverse.org}
mountPath: /data/irods";
    let with_mount_secret = format!("{by_group}\n").replace(
        "csi: {driver: irods.csi.cyverse.org}",
        "csi: {driver: irods.csi.cyverse.org, nodePublishSecret: {name: irods-mount}}",
    );
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        (by_group, &["vo-atmos"], Some("atmos-irods")),
        (by_group, &["vo-atmos", "vo-ocean"], Some("ocean-irods")),
        (by_group, &["other"], None),
        (&with_mount_secret, &["vo-ocean"], Some("irods-mount")),
        (&with_mount_secret, &[], Some("irods-mount")),
    ];
    for (text, groups, want) in cases {
        let v = with_sources(groups, vec![source("irods", text)]);
        let children = data_children(&v, None);
        let pv = to_json(&children.persistent_volumes[0]);
        let reference = want.map(|name| json!({"name": name, "namespace": "atelier"}));
        assert_eq!(
            pv["spec"]["csi"].get("nodeStageSecretRef"),
            reference.as_ref(),
            "{groups:?}"
        );
        assert_eq!(
            pv["spec"]["csi"].get("nodePublishSecretRef"),
            reference.as_ref(),
            "{groups:?}"
        );
        let pod = build_with(
            &v,
            &cfg(),
            Some(&BTreeMap::from([(
                "irods.csi.cyverse.org".to_owned(),
                vec!["Ephemeral".to_owned()],
            )])),
        )
        .pod
        .unwrap();
        let inline = to_json(&pod.spec.unwrap().volumes.unwrap()[1]);
        assert_eq!(
            inline["csi"].get("nodePublishSecretRef"),
            want.map(|name| json!({"name": name})).as_ref(),
            "{groups:?}"
        );
    }
}

#[test]
fn data_children_capacity_access_mode_and_labels() {
    let v = with_sources(
        &[],
        vec![source(
            "big-bucket",
            "s3: {endpoint: 'https://s3.example.org', bucket: big, credentialsSecret: {name: big-creds}}
csi: {driver: ru.yandex.s3.csi, mode: Persistent, capacity: 5Ti}
mountPath: /data/big
readOnly: false",
        )],
    );
    let d = data_children(&v, None);
    let pv = to_json(&d.persistent_volumes[0]);
    let pvc = to_json(&d.claims[0]);
    assert_eq!(pv["spec"]["capacity"], json!({"storage": "5Ti"}));
    assert_eq!(pv["spec"]["accessModes"], json!(["ReadWriteMany"]));
    assert_eq!(pv["spec"]["csi"]["readOnly"], false);
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], "big");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(pv["spec"]["storageClassName"], "");
    assert_eq!(
        pvc["spec"]["resources"],
        json!({"requests": {"storage": "5Ti"}})
    );
    assert_eq!(pvc["spec"]["storageClassName"], "");
    assert_eq!(
        pv["metadata"]["labels"],
        json!({
            "app.kubernetes.io/managed-by": "atelier-operator",
            "atelier.dev/workspace": "alice",
            "atelier.dev/workspace-namespace": "atelier",
            "atelier.dev/data-source": "big-bucket",
        })
    );
    assert_eq!(
        pvc["metadata"]["labels"]["atelier.dev/data-source"],
        "big-bucket"
    );
    assert_eq!(pvc["metadata"]["labels"]["atelier.dev/workspace"], "alice");
    let pod = build(&v, &cfg()).pod.unwrap();
    let spec = to_json(pod.spec.as_ref().unwrap());
    assert_eq!(
        spec["volumes"][1],
        json!({"name": "data-big-bucket", "persistentVolumeClaim": {
            "claimName": names::data_claim_name("alice", "big-bucket"),
            "readOnly": false,
        }})
    );
    assert_eq!(spec.get("initContainers"), None, "no irods source");
}

#[test]
fn no_data_source_no_data_children() {
    let v = validated(&workspace("alice"));
    assert!(v.data_sources.is_empty());
    assert_eq!(data_children(&v, None), DataChildren::default());
    let pod = build(&v, &cfg()).pod.unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().init_containers, None);
    assert!(!env_of(&pod).contains_key("ATELIER_DATA_CATALOG"));
    // Env-only sources: the catalogue only.
    let v = with_sources(
        &[],
        vec![source("stac", "stac: https://stac.example.org/v1")],
    );
    let d = data_children(&v, None);
    assert!(d.persistent_volumes.is_empty() && d.claims.is_empty());
    let cm = to_json(d.config_map.as_ref().unwrap());
    assert_eq!(cm["metadata"]["name"], "ws-alice-data");
    let catalog: Value =
        serde_saphyr::from_str(cm["data"]["catalog.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(catalog["sources"]["stac"]["driver"], "stac_catalog");
    let env = env_of(&build(&v, &cfg()).pod.unwrap());
    assert_eq!(env["ATELIER_STAC_STAC"], "https://stac.example.org/v1");
    assert_eq!(
        env["ATELIER_DATA_CATALOG"],
        "/etc/atelier/data/catalog.yaml"
    );
}

#[test]
fn stopped_workspace_keeps_its_data_children() {
    let mut w = every_kind();
    let running = data_children(&validated(&w), None);
    w.spec.desired_state = DesiredState::Stopped;
    let v = validated(&w);
    assert_eq!(build(&v, &cfg()).pod, None);
    assert_eq!(data_children(&v, None), running);
    assert_eq!(running.persistent_volumes.len(), 2);
    // Deterministic, and independent of spec.dataSources' order.
    let w2 = ws(
        "d",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [argo-floats, era5, sentinel, irods-archive, irods-csi, scratch, team-shared]",
    );
    assert_eq!(data_children(&validated(&w2), None), running);
}

#[test]
fn long_names_give_valid_data_children() {
    let long_ws = format!("alice.{}.{}", "x".repeat(60), "y".repeat(60));
    let long_src = format!("src.{}", "z".repeat(200));
    let mut w = workspace("alice");
    w.metadata.name = Some(long_ws.clone());
    let mut v = validated(&w);
    v.data_sources = vec![source(
        &long_src,
        "irods: {host: h, zone: z, path: /z/p, credentialsSecret: {name: c}}\ncsi: {driver: irods.csi.cyverse.org}\nmountPath: /data",
    )];
    let d = data_children(&v, None);
    let pv = &d.persistent_volumes[0];
    let pvc = &d.claims[0];
    let cm = d.config_map.as_ref().unwrap();
    for name in [
        pv.metadata.name.as_ref().unwrap(),
        pvc.metadata.name.as_ref().unwrap(),
        cm.metadata.name.as_ref().unwrap(),
    ] {
        assert!(names::is_dns_label(name), "{name}");
    }
    for labels in [&pv.metadata.labels, &pvc.metadata.labels] {
        for value in labels.as_ref().unwrap().values() {
            assert!(names::is_valid_label_value(value), "{value}");
        }
    }
    // The iRODS handle is the volume's (unique) name; the pod names the claim.
    let pv_json = to_json(pv);
    assert_eq!(
        pv_json["spec"]["csi"]["volumeHandle"],
        pv_json["metadata"]["name"]
    );
    let pod = build(&v, &cfg()).pod.unwrap();
    let volumes = to_json(&pod.spec.unwrap().volumes);
    assert_eq!(
        volumes[1]["persistentVolumeClaim"]["claimName"],
        json!(pvc.metadata.name)
    );
    assert_eq!(volumes[2]["configMap"]["name"], json!(cm.metadata.name));
}

/// Every credential in every container is a `secretKeyRef`: no inline value of a variable
/// holding a key, a password or a token.
#[test]
fn credentials_are_never_inline() {
    let v = validated(&every_kind());
    for drivers in [None, Some(drivers(true))] {
        let pod = build_with(&v, &cfg(), drivers.as_ref()).pod.unwrap();
        let spec = pod.spec.unwrap();
        let containers: Vec<&Container> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .collect();
        assert_eq!(containers.len(), 2);
        let mut refs = 0;
        for c in containers {
            for var in c.env.as_deref().unwrap() {
                let secret = ["PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN", "USER_NAME"]
                    .iter()
                    .any(|k| var.name.contains(k));
                if secret {
                    refs += 1;
                    assert_eq!(var.value, None, "{}: {}", c.name, var.name);
                    assert!(
                        var.value_from
                            .as_ref()
                            .and_then(|f| f.secret_key_ref.as_ref())
                            .is_some(),
                        "{}: {}",
                        c.name,
                        var.name
                    );
                }
            }
        }
        assert!(refs > 10, "{refs}");
    }
}

/// The init container: the server's image and securityContext, the iRODS script, the same
/// iRODS variables as the server plus the collection, the emptyDir writable; no GPU.
#[test]
fn irods_init_container_exactly() {
    let mut v = validated(&workspace("alice-gpu"));
    v.data_sources = validated(&every_kind()).data_sources;
    let pod = build(&v, &cfg()).pod.unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().expect("an init container")[0];
    let main = &spec.containers[0];
    let secret = |key: &str| json!({"secretKeyRef": {"name": "irods-creds", "key": key}});
    assert_json_eq(
        &to_json(init),
        &json!({
            "name": "irods-env",
            "image": "ghcr.io/atelier/jupyter-pangeo:1.0",
            "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", crate::policy::data::IRODS_INIT_SCRIPT],
            "env": [
                {"name": "IRODS_AUTHENTICATION_FILE", "value": "/etc/atelier/irods/.irodsA"},
                {"name": "IRODS_CWD", "value": "/tempZone/home/public"},
                {"name": "IRODS_ENVIRONMENT_FILE", "value": "/etc/atelier/irods/irods_environment.json"},
                {"name": "IRODS_HOST", "value": "irods.example.org"},
                {"name": "IRODS_PASSWORD", "valueFrom": secret("IRODS_PASSWORD")},
                {"name": "IRODS_PORT", "value": "1247"},
                {"name": "IRODS_USER_NAME", "valueFrom": secret("IRODS_USER_NAME")},
                {"name": "IRODS_ZONE_NAME", "value": "tempZone"},
            ],
            "resources": {
                "limits": {"cpu": "4", "memory": "16Gi"},
                "requests": {"cpu": "4", "memory": "16Gi"},
            },
            "securityContext": to_json(main.security_context.as_ref().unwrap()),
            "volumeMounts": [{"name": "atelier-irods", "mountPath": "/etc/atelier/irods"}],
        }),
    );
    assert_eq!(init.image, main.image);
    assert!(
        to_json(&main.resources)["limits"]
            .get("nvidia.com/gpu")
            .is_some(),
        "the server has its GPU"
    );
    // The server's IRODS_* variables are the init container's (but the collection).
    let irods_vars = |c: &Container| -> Vec<EnvVar> {
        c.env
            .iter()
            .flatten()
            .filter(|e| e.name.starts_with("IRODS_") && e.name != "IRODS_CWD")
            .cloned()
            .collect()
    };
    assert_eq!(irods_vars(main), irods_vars(init));
    // Without credentials: the anonymous user, no password nor authentication file.
    let mut anonymous = v.clone();
    anonymous.data_sources = vec![source(
        "public",
        "irods: {host: irods.example.org, zone: tempZone, path: /tempZone/home/public}",
    )];
    let pod = build(&anonymous, &cfg()).pod.unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let names_of =
        |c: &Container| -> Vec<String> { c.env.iter().flatten().map(|e| e.name.clone()).collect() };
    assert_eq!(
        names_of(init),
        [
            "IRODS_CWD",
            "IRODS_ENVIRONMENT_FILE",
            "IRODS_HOST",
            "IRODS_PORT",
            "IRODS_ZONE_NAME"
        ]
    );
    assert_eq!(irods_vars(&spec.containers[0]), irods_vars(init));
}

// --- The init script, run -------------------------------------------------------------------

/// A fresh directory under the system's temporary directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("atelier-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `python` in `PATH`, or `None` after a loud SKIPPED line.
fn system_python(what: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("python3"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {what} (no python3 in PATH)");
    }
    found
}

/// Runs the pod's init container's command with `python`, its environment resolved from
/// `secrets` (`name/key` → value) and the files' paths moved under `dir`.
fn run_init(
    pod: &Pod,
    python: &std::path::Path,
    python_path: Option<&std::path::Path>,
    secrets: &BTreeMap<&str, &str>,
    dir: &std::path::Path,
) -> std::process::Output {
    let init = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    let command = init.command.as_deref().unwrap();
    assert_eq!(&command[..2], ["python3", "-c"]);
    let mut run = std::process::Command::new(python);
    run.arg("-c").arg(&command[2]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IRODS_") || name == "PYTHONPATH" {
            run.env_remove(name);
        }
    }
    if let Some(p) = python_path {
        run.env("PYTHONPATH", p);
    }
    for var in init.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), None) => v.replace("/etc/atelier/irods", &dir.to_string_lossy()),
            (None, Some(from)) => {
                let r = from.secret_key_ref.as_ref().unwrap();
                secrets[format!("{}/{}", r.name, r.key).as_str()].to_owned()
            }
            other => panic!("{}: {other:?}", var.name),
        };
        run.env(&var.name, value);
    }
    run.output().expect("run the init script")
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

const PASSWORD: &str = "s3cret-Pw!\"'#";

/// The script's own logic with a stand-in `irods.password_obfuscation` (system python3, no
/// peer): the environment file is `policy::data::irods_environment` exactly, `.irodsA` holds
/// `encode(password)` and only with credentials, both 0600, nothing printed holds the password,
/// an empty password fails naming the key.
#[test]
fn irods_init_script_writes_the_environment_and_auth_files() {
    let Some(python) = system_python("the iRODS init script with a stand-in encode") else {
        return;
    };
    let scratch = Scratch::new("irods-init");
    let stub = scratch.0.join("stub/irods");
    std::fs::create_dir_all(&stub).unwrap();
    std::fs::write(stub.join("__init__.py"), "").unwrap();
    std::fs::write(
        stub.join("password_obfuscation.py"),
        "import os\ndef encode(s, uid=None, mtime=None):\n    return 'stub:%d:%s' % (os.getuid(), s[::-1])\n",
    )
    .unwrap();
    let stub_path = scratch.0.join("stub");

    let v = validated(&every_kind());
    let pod = build(&v, &cfg()).pod.unwrap();
    let archive = v
        .data_sources
        .iter()
        .find(|(n, _)| n == "irods-archive")
        .and_then(|(_, s)| s.irods.clone())
        .unwrap();
    let files = scratch.0.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let secrets = BTreeMap::from([
        ("irods-creds/IRODS_USER_NAME", "alice"),
        ("irods-creds/IRODS_PASSWORD", PASSWORD),
    ]);
    let out = run_init(&pod, &python, Some(&stub_path), &secrets, &files);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    let env_file = files.join("irods_environment.json");
    let auth_file = files.join(".irodsA");
    let written: Value = serde_json::from_slice(&std::fs::read(&env_file).unwrap()).expect("JSON");
    assert_eq!(
        written,
        crate::policy::data::irods_environment(&archive, "alice")
    );
    let uid = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&env_file).unwrap().uid()
    };
    let reversed: String = PASSWORD.chars().rev().collect();
    assert_eq!(
        std::fs::read_to_string(&auth_file).unwrap(),
        format!("stub:{uid}:{reversed}")
    );
    assert_eq!((mode_of(&env_file), mode_of(&auth_file)), (0o600, 0o600));
    assert!(
        printed.contains(&env_file.to_string_lossy().to_string()),
        "{printed}"
    );
    assert!(
        !printed.contains(PASSWORD) && !printed.contains(&reversed),
        "{printed}"
    );

    // Without credentials: the anonymous user, no .irodsA (and no encode needed).
    let anonymous = with_sources(
        &[],
        vec![source(
            "public",
            "irods: {host: irods.example.org, port: 1248, zone: tempZone, path: /tempZone/home/public}",
        )],
    );
    let files = scratch.0.join("anonymous");
    std::fs::create_dir_all(&files).unwrap();
    let pod = build(&anonymous, &cfg()).pod.unwrap();
    let out = run_init(&pod, &python, None, &BTreeMap::new(), &files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Value =
        serde_json::from_slice(&std::fs::read(files.join("irods_environment.json")).unwrap())
            .unwrap();
    let public = anonymous.data_sources[0].1.irods.clone().unwrap();
    assert_eq!(
        written,
        crate::policy::data::irods_environment(&public, crate::policy::data::IRODS_ANONYMOUS_USER)
    );
    assert!(!files.join(".irodsA").exists());

    // An empty password: a failure naming the key, no .irodsA.
    let files = scratch.0.join("empty");
    std::fs::create_dir_all(&files).unwrap();
    let pod = build(&v, &cfg()).pod.unwrap();
    let secrets = BTreeMap::from([
        ("irods-creds/IRODS_USER_NAME", "alice"),
        ("irods-creds/IRODS_PASSWORD", ""),
    ]);
    let out = run_init(&pod, &python, Some(&stub_path), &secrets, &files);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("IRODS_PASSWORD"));
    assert!(!files.join(".irodsA").exists());
}

/// With python-irodsclient (the peers' venv, `ATELIER_PEERS=1`): the script's `.irodsA` is
/// `policy::data::irods_auth_file` of the password for the process's uid at the time it ran
/// (python-irodsclient's `encode` salts with `os.getuid()` and the current time), decodes back
/// to the password, and `iRODSSession(irods_env_file=...)` reads both files.
#[test]
fn irods_init_script_with_python_irodsclient() {
    use std::io::Write as _;
    if std::env::var("ATELIER_PEERS").ok().as_deref() != Some("1") {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the iRODS init script with python-irodsclient (set ATELIER_PEERS=1)"
        );
        return;
    }
    let venv = std::env::var_os("ATELIER_PEERS_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/venv"));
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "ATELIER_PEERS=1 but {} is missing",
        python.display()
    );
    let has_irods = std::process::Command::new(&python)
        .args(["-c", "import irods.password_obfuscation, irods.session"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_irods {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the iRODS init script with python-irodsclient ({} has no python-irodsclient; \
             it is not pinned in .ci/peers-requirements.txt yet)",
            venv.display()
        );
        return;
    }
    let scratch = Scratch::new("irods-prc");
    let v = validated(&every_kind());
    let pod = build(&v, &cfg()).pod.unwrap();
    let secrets = BTreeMap::from([
        ("irods-creds/IRODS_USER_NAME", "alice"),
        ("irods-creds/IRODS_PASSWORD", PASSWORD),
    ]);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = now();
    let out = run_init(&pod, &python, None, &secrets, &scratch.0);
    let after = now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let auth_file = scratch.0.join(".irodsA");
    let env_file = scratch.0.join("irods_environment.json");
    let written = std::fs::read_to_string(&auth_file).unwrap();
    let uid = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&auth_file).unwrap().uid()
    };
    assert!(
        (before..=after)
            .any(|t| { crate::policy::data::irods_auth_file(PASSWORD, uid, t as u32) == written }),
        "the .irodsA is not irods_auth_file(password, {uid}, t) for t in {before}..={after}"
    );
    assert_eq!(mode_of(&auth_file), 0o600);
    let check = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys\nfrom irods.password_obfuscation import decode\nfrom irods.session import iRODSSession\n\
             ok = decode(open(sys.argv[1]).read()) == sys.argv[3]\n\
             s = iRODSSession(irods_env_file=sys.argv[2])\n\
             print(ok, s.host, s.port, s.zone, s.username, s.pool.account.home, s.pool.account.cwd)",
        ])
        .arg(&auth_file)
        .arg(&env_file)
        .arg(PASSWORD)
        .env("IRODS_AUTHENTICATION_FILE", &auth_file)
        .output()
        .expect("run python-irodsclient");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "True irods.example.org 1247 tempZone alice /tempZone/home/alice /tempZone/home/public"
    );
}

/// A QGIS desktop: `every_kind`'s sources (validated), its profile's kind turned to qgis, and a
/// desktop source with OGC services.
fn desktop_workspace() -> ValidatedWorkspace {
    let mut v = validated(&every_kind());
    v.kind = crate::api::v1alpha1::WorkspaceKind::Qgis;
    v.desktop_sources = vec![source(
        "thredds",
        "ogc:\n  wms: https://thredds.example.org/thredds/wms/sst.nc\n  wcs: https://thredds.example.org/thredds/wcs/sst.nc",
    )];
    v
}

#[test]
fn a_desktop_gets_its_seed_from_the_catalogue_config_map_exactly() {
    // The ConfigMap holds the catalogue and the seed; the pod mounts the seed alone, read-only,
    // and QGIS_GLOBAL_SETTINGS_FILE points at it.
    let v = desktop_workspace();
    let children = data_children(&v, None);
    let mut got = vec![to_json(children.config_map.as_ref().expect("a ConfigMap"))];
    got.push(to_json(&build(&v, &cfg()).pod.unwrap()));
    let want = golden(include_str!(
        "../../../tests/fixtures/builders/desktop.objects.json"
    ));
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_json_eq(got, want);
    }
    let seed = &children.config_map.unwrap().data.unwrap()[crate::policy::desktop::SETTINGS_FILE];
    assert_eq!(
        *seed,
        crate::policy::desktop::global_settings(&v.data_sources, &v.desktop_sources)
    );
    // The seed holds no credentials: only the Secrets' names are in the workspace, never here.
    for secret in [
        "era5-creds",
        "argo-creds",
        "irods-creds",
        "irods2-creds",
        "AWS_",
    ] {
        assert!(!seed.contains(secret), "{secret} in\n{seed}");
    }
    assert!(seed.contains("thredds"), "{seed}");
}

#[test]
fn a_desktop_without_data_still_gets_its_seed_and_other_kinds_none() {
    let mut v = with_sources(&["physics"], vec![]);
    v.kind = crate::api::v1alpha1::WorkspaceKind::Qgis;
    let cm = build_catalog_config_map_of(&v).expect("a desktop's ConfigMap");
    let keys: Vec<&String> = cm.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["qgis_global_settings.ini"]);
    let pod = build(&v, &cfg()).pod.unwrap();
    assert_eq!(
        env_of(&pod)["QGIS_GLOBAL_SETTINGS_FILE"],
        "/etc/atelier/desktop/qgis_global_settings.ini"
    );
    let spec = pod.spec.as_ref().unwrap();
    let volumes: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["home", "atelier-desktop"]);
    let mount = container(&pod)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "atelier-desktop")
        .expect("the seed's mount")
        .clone();
    assert_eq!(mount.mount_path, "/etc/atelier/desktop");
    assert_eq!(mount.read_only, Some(true));
    for kind in [
        crate::api::v1alpha1::WorkspaceKind::Jupyter,
        crate::api::v1alpha1::WorkspaceKind::R,
        crate::api::v1alpha1::WorkspaceKind::Rstudio,
    ] {
        v.kind = kind;
        // Even with desktop sources (validate leaves them empty for other kinds anyway).
        v.desktop_sources = desktop_workspace().desktop_sources;
        assert_eq!(build_catalog_config_map_of(&v), None, "{kind:?}");
        let pod = build(&v, &cfg()).pod.unwrap();
        assert!(!env_of(&pod).contains_key("QGIS_GLOBAL_SETTINGS_FILE"));
        let volumes = pod.spec.unwrap().volumes.unwrap();
        assert!(volumes.iter().all(|v| v.name != "atelier-desktop"));
    }
}

fn build_catalog_config_map_of(
    v: &ValidatedWorkspace,
) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
    super::build_catalog_config_map(v)
}
