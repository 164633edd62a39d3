//! The real-cluster kit (`e2e/`) checked offline: its manifests are admitted by the CRD schemas,
//! the operator's pure pipeline places and refuses its workspaces the way `e2e/operator.sh`
//! expects (object names included), and the script passes `bash -n` and its `--dry-run`; the
//! DataSource story of `e2e/run.sh` likewise (its DataSources and Workspaces admitted, and the
//! claim, volume, mount, environment and refusal the script checks on the cluster are what the
//! operator builds from them).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::collections::{BTreeMap, BTreeSet};

use atelier::api::v1alpha1::{
    self, DataSource, NodePool, Workspace, WorkspaceProfile, WorkspaceProfileSpec,
};
use atelier::config::OperatorConfig;
use atelier::operator::workspace::build::{build, build_with, data_children};
use atelier::policy::names;
use atelier::policy::workspace::{Dereferenced, parse_groups};
use atelier::policy::workspace::{reason, validate};
use kube::ResourceExt;
use serde_json::Value;
use support::schema::CrdValidator;

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e")
}

fn documents(file: &str) -> Vec<Value> {
    let path = e2e_dir().join("manifests").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn typed<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

#[test]
fn e2e_manifests_are_admitted_by_the_crds() {
    let validators: Vec<CrdValidator> = v1alpha1::crds().iter().map(CrdValidator::new).collect();
    let mut admitted = 0;
    for file in ["cluster.yaml", "workspaces.yaml"] {
        for mut doc in documents(file) {
            let kind = doc["kind"].as_str().expect("a kind").to_owned();
            let validator = validators
                .iter()
                .find(|v| v.kind() == kind)
                .unwrap_or_else(|| panic!("{file}: unknown kind {kind}"));
            if validator.namespaced() {
                doc["metadata"]["namespace"] = "atelier-e2e".into();
            }
            if let Err(refusal) = validator.create(&doc) {
                panic!("{file}: {kind} refused: {refusal:?}");
            }
            admitted += 1;
        }
    }
    assert_eq!(admitted, 6, "three cluster objects and three workspaces");
}

#[test]
fn the_operator_places_and_refuses_the_e2e_workspaces_as_the_script_expects() {
    let cluster = documents("cluster.yaml");
    let pools: Vec<NodePool> = typed(&cluster, "NodePool");
    let profiles: Vec<WorkspaceProfile> = typed(&cluster, "WorkspaceProfile");
    let mut workspaces: Vec<Workspace> = typed(&documents("workspaces.yaml"), "Workspace");
    for (i, ws) in workspaces.iter_mut().enumerate() {
        ws.metadata.namespace = Some("atelier-e2e".into());
        ws.metadata.uid = Some(format!("uid-{i}"));
    }
    let cfg = OperatorConfig::default();
    let deref = |ws: &Workspace| Dereferenced {
        profile: profiles
            .iter()
            .find(|p| p.name_any() == ws.spec.profile)
            .cloned(),
        pools: pools.clone(),
        data_sources: Vec::new(),
        groups: parse_groups(
            ws.annotations()
                .get(atelier::operator::workspace::GROUPS_ANNOTATION)
                .map(String::as_str),
        ),
        token: "0".repeat(64),
        credential_secrets: None,
        csi_drivers: None,
        unreachable: Default::default(),
    };

    let alice = workspaces.iter().find(|w| w.name_any() == "alice").unwrap();
    let validated = validate(alice, &deref(alice), &cfg).expect("alice is admitted");
    assert_eq!(
        validated.pool.as_ref().map(|p| p.name.as_str()),
        Some("e2e-interactive")
    );
    let built = build(&validated, &cfg);
    // The names e2e/operator.sh waits for.
    let pod = built.pod.expect("a running workspace has a pod");
    assert_eq!(pod.metadata.name.as_deref(), Some("ws-alice"));
    assert_eq!(
        pod.labels().get("atelier.dev/user").map(String::as_str),
        Some("alice")
    );
    assert_eq!(built.service.metadata.name.as_deref(), Some("ws-alice"));
    assert_eq!(built.pvc.metadata.name.as_deref(), Some("home-alice"));
    assert_eq!(
        built.secret.metadata.name.as_deref(),
        Some("ws-alice-token")
    );
    assert_eq!(
        built.network_policy.metadata.name.as_deref(),
        Some("ws-alice")
    );
    let owner = &built.service.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "Workspace");
    assert!(
        built.pvc.metadata.owner_references.is_none(),
        "home policy keep: the PVC outlives the Workspace"
    );

    let bob = workspaces
        .iter()
        .find(|w| w.name_any() == "bob-gpu")
        .unwrap();
    let refusal = validate(bob, &deref(bob), &cfg).expect_err("no pool offers GPUs");
    assert_eq!(refusal.reason, reason::NO_ELIGIBLE_POOL, "{refusal:?}");

    // The script expects a headless Service.
    let spec = built.service.spec.as_ref().expect("a spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));

    // carol passes validation: it is the API server, on the cluster, that refuses her pod for
    // its missing PriorityClass (and the script expects that refusal in her status).
    let carol = workspaces.iter().find(|w| w.name_any() == "carol").unwrap();
    let validated = validate(carol, &deref(carol), &cfg).expect("carol is admitted");
    let pod = build(&validated, &cfg).pod.expect("a pod");
    assert_eq!(
        pod.spec.and_then(|s| s.priority_class_name).as_deref(),
        Some("e2e-missing-priority")
    );
}

#[test]
fn the_script_parses_and_its_dry_run_passes() {
    let script = e2e_dir().join("operator.sh");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
    let dry = Command::new("bash")
        .arg(&script)
        .arg("--dry-run")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(out.contains("PASS  script syntax"), "{out}");
    assert!(out.contains("PASS  manifests present"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

/// The endpoint `e2e/run.sh` puts in place of the placeholder of `data-sources.yaml` (the S3
/// Service's ClusterIP there).
const STORY_ENDPOINT: &str = "http://10.96.0.42:8333";

/// `data-sources.yaml` as the script applies it: `sed` of the placeholder endpoint.
fn story_data_sources() -> Vec<Value> {
    let raw = documents("data-sources.yaml");
    let text = serde_json::to_string(&raw).unwrap();
    assert!(
        text.contains("http://e2e-s3.invalid:8333"),
        "the placeholder"
    );
    serde_json::from_str(&text.replace("http://e2e-s3.invalid:8333", STORY_ENDPOINT)).unwrap()
}

/// The chart's WorkspaceProfile `e2e-jupyter` and NodePool `e2e-interactive`: the chart renders
/// each `workspaceProfiles.<name>` / `nodePools.<name>` of `e2e/values-e2e.yaml` as the spec.
fn chart_profile_and_pool() -> (WorkspaceProfile, NodePool) {
    let path = e2e_dir().join("values-e2e.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let values: Value = serde_saphyr::from_str(&text).unwrap();
    let spec: WorkspaceProfileSpec =
        serde_json::from_value(values["workspaceProfiles"]["e2e-jupyter"].clone()).unwrap();
    let pool: NodePool = serde_json::from_value(serde_json::json!({
        "apiVersion": "atelier.dev/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": "e2e-interactive"},
        "spec": values["nodePools"]["e2e-interactive"],
    }))
    .unwrap();
    (WorkspaceProfile::new("e2e-jupyter", spec), pool)
}

#[test]
fn the_data_story_manifests_are_admitted_by_the_crds() {
    let validators: Vec<CrdValidator> = v1alpha1::crds().iter().map(CrdValidator::new).collect();
    let validator = |kind: &str| {
        validators
            .iter()
            .find(|v| v.kind() == kind)
            .unwrap_or_else(|| panic!("no CRD for {kind}"))
    };
    // As stored (placeholder endpoint) and as applied.
    for doc in documents("data-sources.yaml")
        .into_iter()
        .chain(story_data_sources())
    {
        assert!(!validator("DataSource").namespaced());
        if let Err(refusal) = validator("DataSource").create(&doc) {
            panic!(
                "DataSource {} refused: {refusal:?}",
                doc["metadata"]["name"]
            );
        }
    }
    let workspaces = documents("data-workspaces.yaml");
    assert_eq!(workspaces.len(), 2);
    for mut doc in workspaces {
        doc["metadata"]["namespace"] = "atelier-e2e".into();
        if let Err(refusal) = validator("Workspace").create(&doc) {
            panic!("Workspace {} refused: {refusal:?}", doc["metadata"]["name"]);
        }
    }
}

#[test]
fn the_operator_builds_what_the_data_story_checks_on_the_cluster() {
    let (profile, pool) = chart_profile_and_pool();
    let sources: Vec<DataSource> = typed(&story_data_sources(), "DataSource");
    assert_eq!(sources.len(), 2);
    let mut workspaces: Vec<Workspace> = typed(&documents("data-workspaces.yaml"), "Workspace");
    for (i, ws) in workspaces.iter_mut().enumerate() {
        ws.metadata.namespace = Some("atelier-e2e".into());
        ws.metadata.uid = Some(format!("uid-{i}"));
    }
    // The cluster as the script leaves it: the credentials Secret it creates (and not
    // e2e-s3-absent), the CSIDriver of csi-s3 (Persistent only, e2e/manifests/data-csidriver.yaml).
    let driver = documents("data-csidriver.yaml").remove(0);
    let modes: Vec<String> =
        serde_json::from_value(driver["spec"]["volumeLifecycleModes"].clone()).unwrap();
    let drivers = BTreeMap::from([(
        driver["metadata"]["name"].as_str().unwrap().to_owned(),
        modes,
    )]);
    let cfg = OperatorConfig::default();
    let deref = || Dereferenced {
        profile: Some(profile.clone()),
        pools: vec![pool.clone()],
        data_sources: sources.clone(),
        groups: BTreeSet::new(),
        token: "0".repeat(64),
        credential_secrets: Some(BTreeSet::from(["e2e-s3-credentials".to_owned()])),
        csi_drivers: Some(drivers.clone()),
        unreachable: Default::default(),
    };
    let named = |name: &str| workspaces.iter().find(|w| w.name_any() == name).unwrap();

    // e2e-bob: a pod with the bucket mounted read-only at /data/e2e from a claim of its own.
    let bob = named("e2e-bob");
    let validated = validate(bob, &deref(), &cfg).expect("e2e-bob is admitted");
    let pod = build_with(&validated, &cfg, Some(&drivers))
        .pod
        .expect("a pod");
    let spec = pod.spec.as_ref().unwrap();
    let mounts: Vec<_> = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.mount_path == "/data/e2e")
        .collect();
    assert_eq!(mounts.len(), 1, "one mount at /data/e2e");
    assert_eq!(mounts[0].read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mounts[0].name)
        .expect("the mounted volume");
    let claim_name = names::data_claim_name("e2e-bob", "e2e-s3");
    assert_eq!(
        volume
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some(claim_name.as_str())
    );
    // AWS_* of the source: the keys by secretKeyRef to the script's Secret, the endpoint plain.
    let env: Vec<_> = spec
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .collect();
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        let e = env
            .iter()
            .find(|e| e.name == var)
            .unwrap_or_else(|| panic!("{var}"));
        assert_eq!(e.value, None, "{var} never inline");
        let r = e
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .unwrap_or_else(|| panic!("{var} from a Secret"));
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("e2e-s3-credentials", var)
        );
    }
    let endpoint = env.iter().find(|e| e.name == "AWS_ENDPOINT_URL").unwrap();
    assert_eq!(endpoint.value.as_deref(), Some(STORY_ENDPOINT));

    // Its claim (owned by e2e-bob) and volume: csi-s3, handle = the bucket, the Secret, Retain.
    let children = data_children(&validated, Some(&drivers));
    assert_eq!(children.claims.len(), 1);
    assert_eq!(children.persistent_volumes.len(), 1);
    let claim = &children.claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some(claim_name.as_str()));
    let owner = &claim.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Workspace", "e2e-bob")
    );
    let pv = &children.persistent_volumes[0];
    assert_eq!(
        claim.spec.as_ref().unwrap().volume_name,
        pv.metadata.name.clone()
    );
    let pv_spec = pv.spec.as_ref().unwrap();
    let csi = pv_spec.csi.as_ref().unwrap();
    assert_eq!(
        (
            csi.driver.as_str(),
            csi.volume_handle.as_str(),
            csi.node_publish_secret_ref
                .as_ref()
                .and_then(|r| r.name.as_deref()),
            pv_spec.persistent_volume_reclaim_policy.as_deref(),
        ),
        (
            "ru.yandex.s3.csi",
            "e2e-data",
            Some("e2e-s3-credentials"),
            Some("Retain")
        ),
        "what e2e/run.sh reads with kubectl get pv -o jsonpath"
    );
    assert_eq!(
        csi.node_stage_secret_ref
            .as_ref()
            .and_then(|r| r.name.as_deref()),
        Some("e2e-s3-credentials")
    );

    // e2e-carol: the source names a Secret that is not there.
    let carol = named("e2e-carol");
    let refusal = validate(carol, &deref(), &cfg).expect_err("e2e-s3-absent is missing");
    assert_eq!(refusal.reason, "DataCredentialsNotFound", "{refusal:?}");
    assert_eq!(refusal.reason, reason::DATA_CREDENTIALS_NOT_FOUND);
    assert!(refusal.message.contains("e2e-s3-absent"), "{refusal:?}");
}

#[test]
fn the_run_script_applies_the_data_manifests_and_checks_the_reason() {
    let script = std::fs::read_to_string(e2e_dir().join("run.sh")).unwrap();
    for needle in [
        "manifests/data-s3.yaml",
        "manifests/data-csidriver.yaml",
        "manifests/data-sources.yaml",
        "manifests/data-workspaces.yaml",
        "http://e2e-s3.invalid:8333",
        "DataCredentialsNotFound",
        "secretKeyRef",
        "cat /data/e2e/hello.txt",
    ] {
        assert!(script.contains(needle), "e2e/run.sh uses {needle}");
    }
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(e2e_dir().join("run.sh"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
}

/// The image `e2e/run.sh` puts in place of the placeholder of `dask-workspace.yaml` by default.
const STORY_DASK_IMAGE: &str = "ghcr.io/dask/dask:2025.5.0-py3.11";

#[test]
fn the_dask_story_workspace_gets_the_cluster_the_script_checks() {
    let script = std::fs::read_to_string(e2e_dir().join("run.sh")).unwrap();
    assert!(
        script.contains(&format!("E2E_DASK_IMAGE:-{STORY_DASK_IMAGE}}}")),
        "the script's default Dask image"
    );
    assert!(script.contains("dask_placeholder=e2e-dask.invalid/dask:placeholder"));
    let raw = documents("dask-workspace.yaml");
    let text = serde_json::to_string(&raw).unwrap();
    assert!(
        text.contains("e2e-dask.invalid/dask:placeholder"),
        "the placeholder"
    );
    let mut docs: Vec<Value> =
        serde_json::from_str(&text.replace("e2e-dask.invalid/dask:placeholder", STORY_DASK_IMAGE))
            .unwrap();
    let validators: Vec<CrdValidator> = v1alpha1::crds().iter().map(CrdValidator::new).collect();
    let workspaces = validators.iter().find(|v| v.kind() == "Workspace").unwrap();
    docs[0]["metadata"]["namespace"] = "atelier-e2e".into();
    docs[0]["metadata"]["uid"] = "uid-dora".into();
    if let Err(refusal) = workspaces.create(&docs[0]) {
        panic!("Workspace e2e-dora refused: {refusal:?}");
    }
    let ws: Workspace = serde_json::from_value(docs[0].clone()).unwrap();
    let (profile, pool) = chart_profile_and_pool();
    let observed = Dereferenced {
        profile: Some(profile),
        pools: vec![pool],
        data_sources: Vec::new(),
        groups: Default::default(),
        token: "0".repeat(64),
        credential_secrets: None,
        csi_drivers: None,
        unreachable: Default::default(),
    };
    let cfg = OperatorConfig::default();
    let v = validate(&ws, &observed, &cfg).expect("e2e-dora is admitted");
    let dask = v.dask.as_ref().expect("e2e-dora gets a cluster");
    assert_eq!((dask.min, dask.max, dask.workers), (1, 2, 2));
    assert_eq!(dask.image, STORY_DASK_IMAGE);
    assert_eq!(dask.pool.name, "e2e-interactive");
    let built = atelier::operator::workspace::build::build_dask(&v, &cfg, None).expect("objects");
    // The names and bound run.sh checks on the cluster.
    assert_eq!(built.cluster.name_any(), "ws-e2e-dora-dask");
    assert_eq!(built.autoscaler.name_any(), "ws-e2e-dora-dask");
    assert_eq!(built.network_policy.name_any(), "ws-e2e-dora-dask");
    assert_eq!(built.autoscaler.spec.maximum, 2);
    // The workspaces of the other stories ask for no cluster from the same profile.
    for file in ["workspaces.yaml", "data-workspaces.yaml"] {
        for doc in documents(file) {
            assert!(doc["spec"].get("dask").is_none(), "{file}");
        }
    }
    let mut plain = ws.clone();
    plain.spec.dask = None;
    assert!(
        validate(&plain, &observed, &cfg).unwrap().dask.is_none(),
        "the profile has no defaults: no cluster unless asked"
    );
}

/// The chart's NodePool `name` (`nodePools.<name>` of `e2e/values-e2e.yaml`, rendered as the
/// spec).
fn chart_pool(name: &str) -> NodePool {
    let text = std::fs::read_to_string(e2e_dir().join("values-e2e.yaml")).unwrap();
    let values: Value = serde_saphyr::from_str(&text).unwrap();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "atelier.dev/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": values["nodePools"][name],
    }))
    .unwrap()
}

#[test]
fn the_batch_story_jobs_are_admitted_and_built_as_the_script_checks() {
    use atelier::api::v1alpha1::BatchJob;
    use atelier::operator::batchjob::build::{build_home_claim, build_job};
    use atelier::operator::batchjob::{BatchSettings, KUEUE_QUEUE_LABEL};
    use atelier::policy::batch::{BatchTarget, validate_job};

    let validators: Vec<CrdValidator> = v1alpha1::crds().iter().map(CrdValidator::new).collect();
    let validator = |kind: &str| validators.iter().find(|v| v.kind() == kind).unwrap();
    let kueue = documents("batch-kueue.yaml");
    let mut jobs = documents("batch-jobs.yaml");
    jobs.extend(kueue.iter().filter(|d| d["kind"] == "BatchJob").cloned());
    assert_eq!(jobs.len(), 4);
    for (i, doc) in jobs.iter_mut().enumerate() {
        doc["metadata"]["namespace"] = "atelier-e2e".into();
        doc["metadata"]["uid"] = format!("uid-{i}").into();
        if let Err(refusal) = validator("BatchJob").create(doc) {
            panic!("BatchJob {} refused: {refusal:?}", doc["metadata"]["name"]);
        }
    }
    let queued_pools: Vec<NodePool> = typed(&kueue, "NodePool");
    for pool in &kueue {
        if pool["kind"] == "NodePool" {
            validator("NodePool")
                .create(pool)
                .expect("NodePool e2e-queued");
        }
    }
    let (profile, interactive) = chart_profile_and_pool();
    let mut pools = vec![interactive, chart_pool("e2e-batch")];
    pools.extend(queued_pools);
    let observed = Dereferenced {
        profile: Some(profile),
        pools,
        data_sources: Vec::new(),
        groups: Default::default(),
        token: String::new(),
        credential_secrets: None,
        csi_drivers: None,
        unreachable: Default::default(),
    };
    let cfg = OperatorConfig::default();
    let settings = BatchSettings::default();
    let mut homes = BTreeSet::new();
    for doc in &jobs {
        let job: BatchJob = serde_json::from_value(doc.clone()).unwrap();
        let name = job.name_any();
        let v = validate_job(&job, &observed, &cfg)
            .unwrap_or_else(|r| panic!("{name} is admitted: {r:?}"));
        let built = serde_json::to_value(build_job(&v, &cfg, &settings, None)).unwrap();
        // What run.sh selects and reads on the cluster.
        assert_eq!(built["metadata"]["name"], name.as_str());
        assert_eq!(
            built["spec"]["template"]["metadata"]["labels"]["atelier.dev/batchjob"],
            name.as_str()
        );
        assert_eq!(
            built["spec"]["template"]["spec"]["containers"][0]["command"],
            doc["spec"]["command"]
        );
        let queue = &built["metadata"]["labels"][KUEUE_QUEUE_LABEL];
        if name == "e2e-queued-sum" {
            assert_eq!(v.pool.name, "e2e-queued");
            assert_eq!(
                v.target,
                BatchTarget::Kubernetes {
                    local_queue: Some("atelier-e2e-queue".into())
                }
            );
            assert_eq!(built["spec"]["suspend"], true, "held for Kueue");
            assert_eq!(queue, "atelier-e2e-queue");
        } else {
            assert_eq!(v.pool.name, "e2e-batch", "{name}");
            assert_eq!(built["spec"].get("suspend"), None, "{name}");
            assert!(queue.is_null(), "{name}");
        }
        let home = serde_json::to_value(build_home_claim(&v)).unwrap();
        assert_eq!(
            home["metadata"]["labels"]["atelier.dev/workspace"],
            "e2e-erin"
        );
        assert!(home["metadata"].get("ownerReferences").is_none());
        homes.insert(home["metadata"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        homes,
        BTreeSet::from(["home-e2e-erin".to_owned()]),
        "one home, the one the script checks"
    );
    let script = std::fs::read_to_string(e2e_dir().join("run.sh")).unwrap();
    for needle in [
        "manifests/batch-jobs.yaml",
        "manifests/batch-kueue.yaml",
        "batch_user=e2e-erin",
        "e2e batch sum 45",
        "e2e queued sum 45",
        "WaitingForAdmission",
        "kueue_version=\"${E2E_KUEUE_VERSION:-v0.15.3}\"",
        "releases/download/$kueue_version/manifests.yaml",
        "stopPolicy\":\"None",
        "{\"spec\":{\"cancel\":true}}",
    ] {
        assert!(script.contains(needle), "e2e/run.sh uses {needle}");
    }
}
