//! Step 9 of `validate` (Dask) and the admission of a Dask cluster to its workers' pool.

use std::collections::BTreeSet;

use super::test_support::{TOKEN, yaml};
use super::{admit_dask, dask_key, reason, validate};
use crate::api::v1alpha1::{NodePool, Workspace, WorkspaceProfile};
use crate::config::OperatorConfig;
use crate::policy::admission::observed_dask_claim;
use crate::policy::workspace::{
    Dereferenced, GROUPS_ANNOTATION, Refusal, ValidatedDask, ValidatedWorkspace, parse_groups,
};
use crate::policy::{Usage, UsageIndex};
use kube::ResourceExt;

const POOLS: &str = r#"
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: interactive}
  spec: {purpose: interactive, nodeSelector: {atelier.dev/pool: interactive}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: batch}
  spec:
    purpose: batch
    nodeSelector: {atelier.dev/pool: batch}
    tolerations: [{key: atelier.dev/batch, operator: Exists, effect: NoSchedule}]
    priorityClassName: batch-low
    caps:
      perUser: {cpu: "8", memory: 64Gi, workspaces: 0}
      perGroup: {cpu: "12"}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: gpu}
  spec: {purpose: gpu, gpu: {types: [a100]}, caps: {perUser: {gpus: 2}}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: broken}
  spec: {purpose: batch, caps: {perUser: {cpu: "lots"}}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: ocean-only}
  spec: {purpose: batch, allowedGroups: [ocean]}
"#;

const PROFILE: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: pangeo}
spec:
  displayName: Pangeo
  image: pangeo/pangeo-notebook:2026.09.01
  dask:
    maxWorkers: 16
    maxWorkerResources: {cpu: "4", memory: 16Gi, gpus: 1}
    defaults:
      workers: {min: 2, max: 8}
      workerResources: {cpu: "1", memory: 4Gi}
      idleTimeoutSeconds: 1800
"#;

fn pools() -> Vec<NodePool> {
    yaml(POOLS)
}

fn profile(edit: impl FnOnce(&mut WorkspaceProfile)) -> WorkspaceProfile {
    let mut p: WorkspaceProfile = yaml(PROFILE);
    edit(&mut p);
    p
}

/// alice's Workspace on profile `pangeo` with `dask` (YAML flow, or empty for none).
fn ws(dask: &str) -> Workspace {
    let dask = if dask.is_empty() {
        String::new()
    } else {
        format!("  dask: {dask}\n")
    };
    yaml(&format!(
        "apiVersion: atelier.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: alice\n  namespace: atelier\n  uid: uid-alice\n  annotations:\n    {GROUPS_ANNOTATION}: \"ocean,physics\"\nspec:\n  user: alice\n  profile: pangeo\n{dask}"
    ))
}

fn deref(ws: &Workspace, profile: WorkspaceProfile, pools: Vec<NodePool>) -> Dereferenced {
    Dereferenced {
        profile: Some(profile),
        pools,
        data_sources: vec![],
        groups: parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str)),
        token: TOKEN.to_owned(),
        credential_secrets: None,
        csi_drivers: None,
        unreachable: Default::default(),
    }
}

fn check_with(
    ws: &Workspace,
    profile: WorkspaceProfile,
    pools: Vec<NodePool>,
) -> Result<ValidatedWorkspace, Refusal> {
    validate(ws, &deref(ws, profile, pools), &OperatorConfig::default())
}

fn dask_of(ws: &Workspace) -> Option<ValidatedDask> {
    check_with(ws, profile(|_| {}), pools())
        .unwrap_or_else(|r| panic!("refused: {}: {}", r.reason, r.message))
        .dask
}

fn refusal(ws: &Workspace, profile: WorkspaceProfile) -> (&'static str, String) {
    match check_with(ws, profile, pools()) {
        Ok(v) => panic!("accepted: {:?}", v.dask),
        Err(r) => (r.reason, r.message),
    }
}

#[test]
fn no_dask_unless_asked_or_the_profile_enables_it() {
    assert_eq!(dask_of(&ws("")), None);
    assert_eq!(dask_of(&ws("{enabled: false}")), None);
    let on = profile(|p| {
        let d = p.spec.dask.as_mut().unwrap();
        d.defaults.as_mut().unwrap().enabled = Some(true);
    });
    let v = check_with(&ws(""), on.clone(), pools()).unwrap();
    assert_eq!(v.dask.map(|d| (d.min, d.max)), Some((2, 8)));
    // The workspace's `enabled: false` wins over the profile's default.
    let v = check_with(&ws("{enabled: false}"), on, pools()).unwrap();
    assert_eq!(v.dask, None);
}

#[test]
fn the_profile_defaults_fill_what_the_workspace_leaves_out() {
    let d = dask_of(&ws("{}")).expect("a cluster");
    assert_eq!(
        (d.min, d.max, d.workers, d.capped.as_deref()),
        (2, 8, 8, None)
    );
    assert_eq!(
        (d.resources.cpu.as_str(), d.resources.memory.as_str()),
        ("1", "4Gi")
    );
    assert_eq!(
        d.image, "pangeo/pangeo-notebook:2026.09.01",
        "the workspace's own"
    );
    assert_eq!(d.idle_timeout_seconds, Some(1800));
    // No name given: the batch pool, with its selector, tolerations and priority.
    assert_eq!(d.pool.name, "batch");
    assert_eq!(
        d.pool
            .node_selector
            .get("atelier.dev/pool")
            .map(String::as_str),
        Some("batch")
    );
    assert_eq!(d.pool.tolerations.len(), 1);
    assert_eq!(d.pool.priority_class_name.as_deref(), Some("batch-low"));
    assert_eq!(d.pool.gpu_resource_name, None);

    let d = dask_of(&ws(
        "{workers: {min: 0, max: 3}, workerResources: {cpu: 500m, memory: 1Gi}, idleTimeoutSeconds: 0}",
    ))
    .unwrap();
    assert_eq!((d.min, d.max, d.workers), (0, 3, 3));
    assert_eq!(
        (d.resources.cpu.as_str(), d.resources.memory.as_str()),
        ("500m", "1Gi")
    );
    assert_eq!(d.idle_timeout_seconds, Some(0));
}

#[test]
fn built_in_defaults_stay_within_max_workers() {
    let bare = profile(|p| {
        p.spec.dask = Some(yaml("maxWorkers: 2"));
    });
    let d = check_with(&ws("{}"), bare, pools()).unwrap().dask.unwrap();
    assert_eq!((d.min, d.max), (1, 2));
    assert_eq!(
        (d.resources.cpu.as_str(), d.resources.memory.as_str()),
        ("1", "2Gi")
    );
}

#[test]
fn refusals_name_the_rule() {
    let none = profile(|p| p.spec.dask = None);
    let (r, m) = refusal(&ws("{}"), none);
    assert_eq!(r, reason::DASK_NOT_OFFERED);
    assert!(
        m.contains("WorkspaceProfile pangeo offers no Dask cluster"),
        "{m}"
    );

    let (r, m) = refusal(&ws("{workers: {min: 1, max: 17}}"), profile(|_| {}));
    assert_eq!(r, reason::DASK_WORKERS_OUT_OF_RANGE);
    assert_eq!(
        m,
        "Dask workers 1-17: WorkspaceProfile pangeo allows at most 16 workers"
    );

    // The CRD refuses min > max; a catalogue the API server never saw is refused here.
    let (r, _) = refusal(&ws("{workers: {min: 5, max: 4}}"), profile(|_| {}));
    assert_eq!(r, reason::DASK_WORKERS_OUT_OF_RANGE);

    let (r, m) = refusal(&ws("{workerResources: {cpu: \"8\"}}"), profile(|_| {}));
    assert_eq!(r, reason::RESOURCES_EXCEED_PROFILE);
    assert_eq!(
        m,
        "Dask workers' cpu 8 exceeds the maximum 4 of WorkspaceProfile pangeo"
    );

    let (r, m) = refusal(&ws("{workerResources: {memory: lots}}"), profile(|_| {}));
    assert_eq!(r, reason::INVALID_RESOURCES);
    assert!(m.starts_with("Dask workers' memory:"), "{m}");

    let (r, m) = refusal(&ws("{image: evil/miner:1}"), profile(|_| {}));
    assert_eq!(r, reason::IMAGE_OVERRIDE_FORBIDDEN);
    assert!(m.contains("asked for evil/miner:1"), "{m}");
    let open = profile(|p| p.spec.allow_image_override = true);
    let v = check_with(&ws("{image: pangeo/base:1}"), open, pools()).unwrap();
    assert_eq!(v.dask.unwrap().image, "pangeo/base:1");

    let (r, m) = refusal(&ws("{nodePool: nowhere}"), profile(|_| {}));
    assert_eq!(r, reason::NODE_POOL_NOT_FOUND);
    assert_eq!(m, "Dask workers: NodePool nowhere does not exist");

    let mut not_ocean = ws("{nodePool: ocean-only}");
    not_ocean
        .annotations_mut()
        .insert(GROUPS_ANNOTATION.into(), "physics".into());
    let (r, _) = refusal(&not_ocean, profile(|_| {}));
    assert_eq!(r, reason::NODE_POOL_FORBIDDEN);
    // …and open to ocean.
    assert_eq!(
        dask_of(&ws("{nodePool: ocean-only}")).unwrap().pool.name,
        "ocean-only"
    );

    let (r, m) = refusal(&ws("{nodePool: broken}"), profile(|_| {}));
    assert_eq!(r, reason::INVALID_NODE_POOL);
    assert!(m.contains("invalid cpu cap"), "{m}");
}

#[test]
fn worker_pool_routing() {
    // The profile's daskNodePool wins over the batch pool.
    let named = profile(|p| p.spec.dask_node_pool = Some("interactive".into()));
    let v = check_with(&ws("{}"), named, pools()).unwrap();
    assert_eq!(v.dask.unwrap().pool.name, "interactive");
    // GPU workers go to a gpu pool, with the resource name.
    let d = dask_of(&ws(
        "{workers: {min: 1, max: 2}, workerResources: {gpus: 1}}",
    ))
    .unwrap();
    assert_eq!(d.pool.name, "gpu");
    assert_eq!(d.pool.gpu_resource_name.as_deref(), Some("nvidia.com/gpu"));
    // No batch pool: CPU workers share the workspace's pool.
    let no_batch: Vec<NodePool> = pools()
        .into_iter()
        .filter(|p| p.spec.purpose != crate::api::v1alpha1::PoolPurpose::Batch)
        .collect();
    let v = check_with(&ws("{}"), profile(|_| {}), no_batch.clone()).unwrap();
    assert_eq!(
        v.pool.as_ref().map(|p| p.name.as_str()),
        Some("interactive")
    );
    assert_eq!(v.dask.unwrap().pool.name, "interactive");
    // … but GPU workers without a gpu pool are refused.
    let no_gpu: Vec<NodePool> = no_batch
        .into_iter()
        .filter(|p| p.name_any() != "gpu")
        .collect();
    let w = ws("{workerResources: {gpus: 1}}");
    let r = check_with(&w, profile(|_| {}), no_gpu).unwrap_err();
    assert_eq!(r.reason, reason::NO_ELIGIBLE_POOL);
    assert!(
        r.message.starts_with("Dask workers: no gpu NodePool"),
        "{}",
        r.message
    );
}

#[test]
fn a_stopped_workspace_has_no_cluster_but_its_rules_still_hold() {
    let mut w = ws("{}");
    w.spec.desired_state = crate::api::v1alpha1::DesiredState::Stopped;
    assert_eq!(dask_of(&w), None);
    let mut bad = ws("{workers: {min: 1, max: 99}}");
    bad.spec.desired_state = crate::api::v1alpha1::DesiredState::Stopped;
    assert_eq!(
        refusal(&bad, profile(|_| {})).0,
        reason::DASK_WORKERS_OUT_OF_RANGE
    );
}

#[test]
fn caps_lower_the_workers_and_never_refuse() {
    // 8 workers of 2 CPU on batch (user cap 8 CPU): 4, and the message names the cap.
    let d = dask_of(&ws(
        "{workers: {min: 6, max: 8}, workerResources: {cpu: \"2\"}}",
    ))
    .unwrap();
    assert_eq!((d.min, d.max, d.workers), (4, 8, 4));
    assert_eq!(
        d.capped.as_deref(),
        Some("4 of 8 Dask workers: user alice would use 10 CPU in NodePool batch (cap 8)")
    );
    // The pool's `workspaces: 0` cap does not count workers.
    assert_eq!(dask_of(&ws("{}")).unwrap().workers, 8);
}

#[test]
fn admission_counts_what_the_others_use_and_replaces_its_own_claim() {
    let pools = pools();
    let mut index = UsageIndex::default();
    let key = "atelier/alice";
    let mut v = check_with(
        &ws("{workerResources: {cpu: \"2\"}}"),
        profile(|_| {}),
        pools.clone(),
    )
    .unwrap();
    assert_eq!(v.dask.as_ref().unwrap().workers, 4, "8 CPU / 2");
    admit_dask(&mut index, key, &mut v, &pools).unwrap();
    assert_eq!(v.dask.as_ref().unwrap().workers, 4);
    assert_eq!(index.user_usage("batch", "alice").cpu_millis, 8000);
    // Admitted again (the next reconcile): its own claim is not counted twice.
    let mut again = v.clone();
    admit_dask(&mut index, key, &mut again, &pools).unwrap();
    assert_eq!(again.dask.as_ref().unwrap().workers, 4);
    assert_eq!(index.user_usage("batch", "alice").cpu_millis, 8000);

    // Bob, in group ocean with alice (group cap 12 CPU), gets what is left: 4 CPU, 2 workers.
    let mut bob_ws = ws("{workerResources: {cpu: \"2\"}}");
    bob_ws.metadata.name = Some("bob".into());
    bob_ws.spec.user = "bob".into();
    bob_ws
        .annotations_mut()
        .insert(GROUPS_ANNOTATION.into(), "ocean".into());
    let mut bob = check_with(&bob_ws, profile(|_| {}), pools.clone()).unwrap();
    admit_dask(&mut index, "atelier/bob", &mut bob, &pools).unwrap();
    let d = bob.dask.as_ref().unwrap();
    assert_eq!((d.workers, d.min), (2, 2));
    assert_eq!(
        d.capped.as_deref(),
        Some("2 of 8 Dask workers: group ocean would use 14 CPU in NodePool batch (cap 12)")
    );
    // Alice stops: her cluster's claim is released, and bob's next admission gets 4 (his own
    // per-user cap).
    let mut stopped = v.clone();
    stopped.dask = None;
    admit_dask(&mut index, key, &mut stopped, &pools).unwrap();
    assert_eq!(index.user_usage("batch", "alice"), Usage::ZERO);
    let mut bob = check_with(&bob_ws, profile(|_| {}), pools.clone()).unwrap();
    admit_dask(&mut index, "atelier/bob", &mut bob, &pools).unwrap();
    assert_eq!(bob.dask.as_ref().unwrap().workers, 4);
    assert_eq!(
        bob.dask.as_ref().unwrap().capped.as_deref(),
        Some("4 of 8 Dask workers: user bob would use 10 CPU in NodePool batch (cap 8)"),
        "only his own cap now"
    );
    assert_eq!(dask_key(key), "atelier/alice#dask");
}

#[test]
fn the_informer_s_view_of_a_cluster() {
    let mut w = ws("{workerResources: {cpu: \"2\", memory: 1Gi}}");
    assert_eq!(observed_dask_claim(&w, None), None, "no status yet");
    w.status = Some(yaml(
        "{nodePool: interactive, dask: {nodePool: batch, workersWanted: 3, workersReady: 1}}",
    ));
    let claim = observed_dask_claim(&w, None).expect("a claim");
    assert_eq!(claim.pool, "batch");
    assert_eq!(
        claim.groups,
        BTreeSet::from(["ocean".to_owned(), "physics".to_owned()])
    );
    assert_eq!(
        claim.usage,
        Usage {
            workspaces: 0,
            cpu_millis: 6000,
            memory_bytes: 3 << 30,
            gpus: 0
        }
    );
    // The profile's default worker resources fill what the spec leaves out.
    let mut w2 = ws("{}");
    w2.status = w.status.clone();
    let defaults = yaml("{cpu: 500m}");
    assert_eq!(
        observed_dask_claim(&w2, Some(&defaults))
            .unwrap()
            .usage
            .cpu_millis,
        1500
    );
    w.spec.desired_state = crate::api::v1alpha1::DesiredState::Stopped;
    assert_eq!(observed_dask_claim(&w, None), None);
}
