//! The real-cluster kit (`e2e/`) checked offline: its manifests are admitted by the CRD schemas,
//! the operator's pure pipeline places and refuses its workspaces the way `e2e/operator.sh`
//! expects (object names included), and the script passes `bash -n` and its `--dry-run`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use atelier::api::v1alpha1::{self, NodePool, Workspace, WorkspaceProfile};
use atelier::config::OperatorConfig;
use atelier::operator::workspace::build::build;
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
