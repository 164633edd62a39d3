//! The Job builder: table tests over the pools and the job's fields, and the golden objects of
//! `tests/fixtures/builders/batchjob.objects.json` (which check_chart.py validates against
//! Kubernetes' schemas).

use serde_json::{Value, json};

use super::build::{
    build_catalog_config_map, build_home_claim, build_job, job_env, unmountable_sources,
};
use super::fixtures::{batch_job, dereferenced};
use super::{BatchSettings, KUEUE_QUEUE_LABEL};
use crate::api::v1alpha1::DataSource;
use crate::config::OperatorConfig;
use crate::operator::workspace::fixtures::assert_json_eq;
use crate::policy::batch::{ValidatedBatchJob, validate_job};
use crate::policy::workspace::validate::test_support::yaml;

fn validated(extra: &str) -> ValidatedBatchJob {
    validate_job(
        &batch_job(extra),
        &dereferenced(vec![]),
        &OperatorConfig::default(),
    )
    .unwrap_or_else(|r| panic!("{extra}: refused: {r:?}"))
}

fn job_json(v: &ValidatedBatchJob) -> Value {
    serde_json::to_value(build_job(
        v,
        &OperatorConfig::default(),
        &BatchSettings::default(),
        None,
    ))
    .expect("serializes")
}

#[test]
fn the_job_follows_the_pool_the_resources_and_the_spec() {
    // (spec lines, pool, suspend, queue label, resources (requests = limits), deadline, backoff)
    let cases: &[(&str, &str, Value, Value, Value, Value, i64)] = &[
        (
            "  nodePool: batch",
            "batch",
            Value::Null,
            Value::Null,
            json!({"cpu": "2", "memory": "4Gi"}),
            // The pool's maximum is the deadline of a job naming none.
            json!(86400),
            0,
        ),
        (
            "  nodePool: batch\n  deadlineSeconds: 600\n  backoffLimit: 2\n  resources: {cpu: \"3\", memory: 8Gi}",
            "batch",
            Value::Null,
            Value::Null,
            json!({"cpu": "3", "memory": "8Gi"}),
            json!(600),
            2,
        ),
        (
            // Kueue: created suspended, with the queue's label.
            "  nodePool: queued",
            "queued",
            json!(true),
            json!("batch-queue"),
            json!({"cpu": "2", "memory": "4Gi"}),
            Value::Null,
            0,
        ),
        (
            // GPUs: routed to the GPU pool, the GPU as a limit and a request.
            "  resources: {gpus: 1}",
            "gpu",
            Value::Null,
            Value::Null,
            json!({"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}),
            Value::Null,
            0,
        ),
    ];
    for (extra, pool, suspend, queue, resources, deadline, backoff) in cases {
        let v = validated(extra);
        assert_eq!(v.pool.name, *pool, "{extra}");
        let job = job_json(&v);
        let spec = &job["spec"];
        assert_eq!(spec["suspend"], *suspend, "{extra}");
        assert_eq!(
            job["metadata"]["labels"][KUEUE_QUEUE_LABEL], *queue,
            "{extra}"
        );
        let container = &spec["template"]["spec"]["containers"][0];
        assert_eq!(container["resources"]["requests"], *resources, "{extra}");
        assert_eq!(container["resources"]["limits"], *resources, "{extra}");
        assert_eq!(spec["activeDeadlineSeconds"], *deadline, "{extra}");
        assert_eq!(spec["backoffLimit"], *backoff, "{extra}");
        assert_eq!(spec["ttlSecondsAfterFinished"], 3600, "{extra}");
        assert_eq!(
            spec["template"]["spec"]["nodeSelector"]["atelier.dev/pool"], *pool,
            "{extra}"
        );
        // Never a shell: the command as given.
        assert_eq!(
            container["command"],
            json!([
                "python",
                "-c",
                "import numpy; print(numpy.arange(10).sum())"
            ]),
            "{extra}"
        );
        assert_eq!(container.get("args"), None);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(
            job["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "atelier.dev/v1alpha1", "kind": "BatchJob", "name": "sum-1",
                "uid": "u-sum-1", "controller": true, "blockOwnerDeletion": true,
            }])
        );
    }
}

#[test]
fn working_directory_environment_and_home() {
    let v = validated(
        "  nodePool: batch\n  workingDir: /home/jovyan/run\n  env: {OMP_NUM_THREADS: \"8\", SEED: \"1\"}\n  dataSources: [era5]",
    );
    let job = job_json(&v);
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["workingDir"], "/home/jovyan/run");
    let env: Vec<(String, Value)> = job_env(&v)
        .into_iter()
        .map(|e| (e.name, serde_json::to_value(e.value).expect("json")))
        .collect();
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    // The job's env over the profile's.
    assert!(env.contains(&("OMP_NUM_THREADS".to_owned(), json!("8"))));
    assert!(env.contains(&("SEED".to_owned(), json!("1"))));
    assert!(env.contains(&("ATELIER_BATCHJOB".to_owned(), json!("sum-1"))));
    // The home volume (the default server's claim) and the NFS source, read-only.
    let mounts = &container["volumeMounts"];
    assert_eq!(mounts[0]["name"], "home");
    assert!(
        mounts
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["mountPath"] == "/data/era5" && m["readOnly"] == true),
        "{mounts:#}"
    );
    let volumes = &job["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[0]["persistentVolumeClaim"]["claimName"],
        "home-alice"
    );
    // Without a working directory: the home directory.
    let v = validated("  nodePool: batch");
    assert_eq!(
        job_json(&v)["spec"]["template"]["spec"]["containers"][0]["workingDir"],
        "/home/jovyan"
    );
    assert_eq!(
        build_catalog_config_map(&v),
        None,
        "no data source, no catalogue"
    );
}

#[test]
fn persistent_csi_sources_cannot_be_mounted_by_a_job() {
    let csi: DataSource = yaml(
        r#"
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: argo}
spec:
  s3: {endpoint: "https://s3.example.org", bucket: argo}
  csi: {driver: ru.yandex.s3.csi}
  mountPath: /data/argo
"#,
    );
    let v = validate_job(
        &batch_job("  nodePool: batch\n  dataSources: [argo, era5]"),
        &dereferenced(vec![csi]),
        &OperatorConfig::default(),
    )
    .expect("valid");
    assert_eq!(unmountable_sources(&v, None), ["argo"]);
    let ephemeral = std::collections::BTreeMap::from([(
        "ru.yandex.s3.csi".to_owned(),
        vec!["Ephemeral".to_owned()],
    )]);
    assert!(unmountable_sources(&v, Some(&ephemeral)).is_empty());
}

/// The home claim a job makes is the one the Workspace controller makes for the user's default
/// Workspace with the same profile (name, labels, size, class), without an owner: with
/// `home.onDelete: keep` the very same object, so a later Workspace finds it as it would have
/// made it; with `delete` the Workspace's would also be owned by it.
#[test]
fn the_home_claim_is_the_default_workspaces_without_an_owner() {
    use crate::api::v1alpha1::{HomeReclaim, Workspace, WorkspaceProfile};
    use crate::operator::workspace::build::build_pvc;
    use crate::policy::workspace::validate::validate;
    for (storage_class, on_delete) in [
        (None, HomeReclaim::Keep),
        (Some("fast-ssd"), HomeReclaim::Keep),
        (Some("fast-ssd"), HomeReclaim::Delete),
    ] {
        let mut d = dereferenced(vec![]);
        let mut profile: WorkspaceProfile = d.profile.clone().expect("a profile");
        profile.spec.home.storage_class_name = storage_class.map(str::to_owned);
        profile.spec.home.on_delete = on_delete;
        profile.spec.home.size = "25Gi".into();
        d.profile = Some(profile);
        d.pools.push(crate::operator::workspace::fixtures::pool());
        let job = validate_job(&batch_job(""), &d, &OperatorConfig::default()).expect("valid");
        let ws: Workspace = yaml(
            r#"
apiVersion: atelier.dev/v1alpha1
kind: Workspace
metadata: {name: alice, namespace: team, uid: u-alice, generation: 1}
spec: {user: alice, profile: pangeo}
"#,
        );
        let ws = validate(&ws, &d, &OperatorConfig::default()).expect("valid");
        let claim = serde_json::to_value(build_home_claim(&job)).expect("json");
        let mut workspace_claim = serde_json::to_value(build_pvc(&ws)).expect("json");
        let case = format!("{storage_class:?} {on_delete:?}");
        assert_eq!(claim["metadata"]["name"], "home-alice", "{case}");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "25Gi");
        assert_eq!(
            claim["spec"]["storageClassName"],
            storage_class.map_or(Value::Null, |c| json!(c)),
            "{case}"
        );
        assert_eq!(claim["metadata"].get("ownerReferences"), None, "{case}");
        if on_delete == HomeReclaim::Delete {
            let owners = workspace_claim["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("ownerReferences")
                .expect("owned by its Workspace");
            assert_eq!(owners[0]["kind"], "Workspace");
        }
        assert_json_eq(&claim, &workspace_claim);
    }
}

#[test]
fn golden_objects() {
    let v = validated(
        "  nodePool: batch\n  deadlineSeconds: 3600\n  dataSources: [era5]\n  workingDir: /home/jovyan/run",
    );
    let mut got = vec![
        serde_json::to_value(build_catalog_config_map(&v).expect("a catalogue")).expect("json"),
    ];
    got.push(job_json(&v));
    let q = validated("  nodePool: queued");
    got.push(job_json(&q));
    got.push(serde_json::to_value(build_home_claim(&v)).expect("json"));
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/builders/batchjob.objects.json"
    );
    if std::env::var_os("ATELIER_WRITE_GOLDENS").is_some() {
        let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
        std::fs::write(path, text).expect("write the golden file");
    }
    let want: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the golden file"))
            .expect("a JSON array");
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_json_eq(got, want);
    }
}
