//! `validate_job`: every rule in order, the targets (Kubernetes, Kueue, Slurm), and admission.

use std::collections::BTreeSet;

use super::*;
use crate::api::v1alpha1::{BatchJob, NodePool, WorkspaceProfile};
use crate::config::OperatorConfig;
use crate::policy::workspace::validate::test_support::yaml;

const POOLS: &str = r#"
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: interactive}
  spec: {purpose: interactive}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: batch}
  spec:
    purpose: batch
    nodeSelector: {atelier.dev/pool: batch}
    maxDeadlineSeconds: 86400
    kueue: {localQueueName: batch-queue}
    caps: {perUser: {cpu: "8"}, perGroup: {cpu: "12"}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: gpu}
  spec: {purpose: gpu, gpu: {types: [a100]}, caps: {perUser: {gpus: 2}}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: hpc}
  spec:
    purpose: batch
    allowedGroups: [hpc]
    slurm:
      restUrl: "http://127.0.0.1:6820"
      partition: debug
      account: ocean
      tokenSecret: {name: slurm-jwt}
      userMapping: {template: "hub-{user}"}
      workingDir: "/scratch/{user}"
"#;

const PROFILE: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: pangeo}
spec:
  displayName: Pangeo
  image: pangeo/pangeo-notebook:2026.09.01
  defaultResources: {cpu: "2", memory: 4Gi}
  maxResources: {cpu: "8", memory: 32Gi, gpus: 1}
  env: {OMP_NUM_THREADS: "2", JUPYTERHUB_API_URL: "http://nope"}
"#;

fn job(extra: &str) -> BatchJob {
    yaml(&format!(
        r#"
apiVersion: atelier.dev/v1alpha1
kind: BatchJob
metadata: {{name: sum-1, namespace: atelier, uid: u-1}}
spec:
  user: alice
  profile: pangeo
  command: [python, -c, "print(1)"]
{extra}
"#
    ))
}

fn deref(groups: &[&str]) -> Dereferenced {
    Dereferenced {
        profile: Some(yaml::<WorkspaceProfile>(PROFILE)),
        pools: yaml::<Vec<NodePool>>(POOLS),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Dereferenced::default()
    }
}

fn check(extra: &str, groups: &[&str]) -> Result<ValidatedBatchJob, Refusal> {
    validate_job(&job(extra), &deref(groups), &OperatorConfig::default())
}

fn refused(extra: &str, groups: &[&str]) -> (&'static str, String) {
    let e = check(extra, groups).expect_err("refused");
    (e.reason, e.message)
}

#[test]
fn a_cpu_job_goes_to_the_batch_pool_with_its_queue_and_deadline() {
    let v = check("", &[]).expect("valid");
    assert_eq!(v.pool.name, "batch");
    assert_eq!(
        v.target,
        BatchTarget::Kubernetes {
            local_queue: Some("batch-queue".into())
        }
    );
    assert_eq!(v.target.system(), "kubernetes");
    assert_eq!(v.deadline_seconds, Some(86400), "the pool's maximum");
    assert_eq!(v.image, "pangeo/pangeo-notebook:2026.09.01");
    assert_eq!(
        (v.resources.cpu.as_str(), v.resources.memory.as_str()),
        ("2", "4Gi")
    );
    assert_eq!(v.home.claim_name, "home-alice");
    assert_eq!(v.backoff_limit, 0);
    assert_eq!(
        v.env.keys().collect::<Vec<_>>(),
        ["OMP_NUM_THREADS"],
        "JUPYTERHUB_* stays out"
    );
    let v = check("  deadlineSeconds: 600\n  backoffLimit: 2\n", &[]).expect("valid");
    assert_eq!((v.deadline_seconds, v.backoff_limit), (Some(600), 2));
}

#[test]
fn gpu_jobs_go_to_the_gpu_pool() {
    let v = check("  resources: {gpus: 1}\n", &[]).expect("valid");
    assert_eq!(v.pool.name, "gpu");
    assert_eq!(v.pool.gpu_resource_name.as_deref(), Some("nvidia.com/gpu"));
    assert_eq!(v.target, BatchTarget::Kubernetes { local_queue: None });
    assert_eq!(v.deadline_seconds, None, "no pool maximum, none asked");
}

#[test]
fn slurm_pools_map_the_user_and_the_working_directory() {
    let v = check("  nodePool: hpc\n", &["hpc"]).expect("valid");
    let BatchTarget::Slurm(t) = &v.target else {
        panic!("not slurm: {:?}", v.target)
    };
    assert_eq!(t.user, "hub-alice");
    assert_eq!(t.partition, "debug");
    assert_eq!(t.account.as_deref(), Some("ocean"));
    assert_eq!(t.working_dir.as_deref(), Some("/scratch/hub-alice"));
    assert_eq!(t.token_secret.key, "jwtKey");
    let v = check("  nodePool: hpc\n  workingDir: /data/run\n", &["hpc"]).expect("valid");
    let BatchTarget::Slurm(t) = &v.target else {
        panic!("not slurm")
    };
    assert_eq!(
        t.working_dir.as_deref(),
        Some("/data/run"),
        "the job's wins"
    );
    assert_eq!(
        refused("  nodePool: hpc\n", &[]).0,
        "NodePoolForbidden",
        "open to group hpc only"
    );
}

#[test]
fn slurm_user_mapping() {
    let m = |fixed: Option<&str>, template: Option<&str>| SlurmUserMapping {
        fixed: fixed.map(str::to_owned),
        template: template.map(str::to_owned),
    };
    assert_eq!(
        slurm_user(&m(None, None), "alice").as_deref(),
        Some("alice")
    );
    assert_eq!(
        slurm_user(&m(Some("svc"), None), "alice").as_deref(),
        Some("svc")
    );
    assert_eq!(
        slurm_user(&m(None, Some("u_{user}")), "bob").as_deref(),
        Some("u_bob")
    );
    assert_eq!(slurm_user(&m(None, None), "jean.dupont"), None, "a dot");
    assert_eq!(
        slurm_user(&m(None, None), "9lives"),
        None,
        "a leading digit"
    );
    assert_eq!(
        slurm_user(&m(None, None), &"a".repeat(33)),
        None,
        "too long"
    );
    let mut d = deref(&["hpc"]);
    let mut j = job("  nodePool: hpc\n");
    j.spec.user = "jean.dupont".into();
    let e = validate_job(&j, &d, &OperatorConfig::default()).expect_err("refused");
    assert_eq!(e.reason, reason::INVALID_SLURM_USER);
    d.groups = BTreeSet::from(["hpc".to_owned()]);
    j.spec.user = "jean".into();
    assert!(validate_job(&j, &d, &OperatorConfig::default()).is_ok());
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let cases: [(&str, &str, &str); 11] = [
        (
            "  deadlineSeconds: 0\n",
            reason::INVALID_DEADLINE,
            "deadlineSeconds 0",
        ),
        (
            "  deadlineSeconds: -5\n",
            reason::INVALID_DEADLINE,
            "deadlineSeconds -5",
        ),
        (
            "  deadlineSeconds: 86401\n",
            reason::DEADLINE_EXCEEDS_POOL,
            "deadlineSeconds 86401 exceeds the maximum 86400 of NodePool batch",
        ),
        (
            "  nodePool: nope\n",
            "NodePoolNotFound",
            "NodePool nope does not exist",
        ),
        (
            "  nodePool: gpu\n",
            "NodePoolForbidden",
            "NodePool gpu is a gpu NodePool",
        ),
        (
            "  resources: {gpus: 2}\n",
            "ResourcesExceedProfile",
            "gpus 2 exceeds the maximum 1",
        ),
        ("  resources: {cpu: lots}\n", "InvalidResources", "cpu"),
        (
            "  resources: {cpu: \"9\"}\n",
            "ResourcesExceedProfile",
            "cpu 9 exceeds",
        ),
        (
            "  dataSources: [argo]\n",
            "DataSourceNotFound",
            "DataSource argo",
        ),
        (
            "  resources: {gpus: 1, gpuType: h100}\n",
            "NoEligiblePool",
            "no gpu NodePool offers gpuType h100 (offered: [a100])",
        ),
        ("  nodePool: interactive\n", "", ""),
    ];
    for (extra, reason, message) in cases {
        match check(extra, &[]) {
            Ok(v) => assert!(reason.is_empty(), "{extra}: accepted on {}", v.pool.name),
            Err(e) => {
                assert_eq!(e.reason, reason, "{extra}: {}", e.message);
                assert!(e.message.contains(message), "{extra}: {}", e.message);
            }
        }
    }
}

#[test]
fn commands() {
    let ok = |c: &[&str]| check_command(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(ok(&["hostname"]).is_ok());
    assert!(ok(&["echo", ""]).is_ok(), "an empty argument is fine");
    for (bad, why) in [
        (vec![], "must not be empty"),
        (vec!["  "], "command[0], the program"),
        (vec!["a\0b"], "NUL"),
    ] {
        let e = ok(&bad).expect_err("refused");
        assert_eq!(e.reason, reason::INVALID_COMMAND);
        assert!(e.message.contains(why), "{}", e.message);
    }
    let long = "x".repeat(MAX_ARG_LEN + 1);
    assert!(
        ok(&["echo", &long])
            .unwrap_err()
            .message
            .contains("command[1] is 4097 bytes")
    );
    let many = vec!["x"; MAX_ARGS + 1];
    assert!(ok(&many).unwrap_err().message.contains("257 arguments"));
    assert!(check("", &[]).is_ok(), "the fixture job itself is valid");
}

#[test]
fn names_profile_and_namespace() {
    let mut j = job("");
    j.metadata.name = Some("x".repeat(64));
    let e = validate_job(&j, &deref(&[]), &OperatorConfig::default()).unwrap_err();
    assert_eq!(e.reason, "InvalidName");
    let mut j = job("");
    j.spec.profile = "other".into();
    let e = validate_job(&j, &deref(&[]), &OperatorConfig::default()).unwrap_err();
    assert_eq!(e.reason, "ProfileNotFound");
    let per_user = OperatorConfig {
        namespace_mode: crate::config::NamespaceMode::PerUser {
            prefix: "atelier-".into(),
        },
        ..OperatorConfig::default()
    };
    let e = validate_job(&job(""), &deref(&[]), &per_user).unwrap_err();
    assert_eq!(e.reason, "WrongNamespace");
    assert!(e.message.contains("atelier-alice"), "{}", e.message);
}

#[test]
fn caps_count_jobs_with_everything_else_on_the_pool() {
    let pools: Vec<NodePool> = yaml(POOLS);
    // One job alone over the per-user cap (8 CPUs) is refused by validate.
    let mut d = deref(&[]);
    d.profile.as_mut().unwrap().spec.max_resources = None;
    let e = validate_job(
        &job("  resources: {cpu: \"9\"}\n"),
        &d,
        &OperatorConfig::default(),
    )
    .unwrap_err();
    assert_eq!(e.reason, "UserCapExceeded", "{}", e.message);
    // Three jobs of 3 CPUs: the third does not fit under 8.
    let mut index = UsageIndex::default();
    for (i, fits) in [(1, true), (2, true), (3, false)] {
        let mut j = job("  resources: {cpu: \"3\"}\n");
        j.metadata.name = Some(format!("j{i}"));
        let v = validate_job(&j, &d, &OperatorConfig::default()).expect("valid");
        let r = admit_job(&mut index, &v, &pools);
        assert_eq!(r.is_ok(), fits, "job {i}: {r:?}");
        if let Err(e) = r {
            assert_eq!(e.reason, "UserCapExceeded");
        }
    }
    assert_eq!(index.user_usage("batch", "alice").cpu_millis, 6000);
    assert_eq!(
        index.user_usage("batch", "alice").workspaces,
        0,
        "a job is no workspace"
    );
    // Cancelling the first frees its place.
    let mut j = job("  resources: {cpu: \"3\"}\n  cancel: true\n");
    j.metadata.name = Some("j1".into());
    let v = validate_job(&j, &d, &OperatorConfig::default()).expect("valid");
    admit_job(&mut index, &v, &pools).expect("releases");
    assert_eq!(index.user_usage("batch", "alice").cpu_millis, 3000);
}

#[test]
fn observed_claims() {
    let mut j = job("  resources: {cpu: \"3\"}\n");
    assert_eq!(
        observed_job_claim(&j, BTreeSet::new(), None),
        None,
        "no status yet"
    );
    j.status = Some(crate::api::v1alpha1::BatchJobStatus {
        phase: Some(BatchJobPhase::Running),
        node_pool: Some("batch".into()),
        ..Default::default()
    });
    let c = observed_job_claim(&j, BTreeSet::new(), None).expect("claims");
    assert_eq!(
        (c.pool.as_str(), c.usage.cpu_millis, c.usage.workspaces),
        ("batch", 3000, 0)
    );
    for phase in [
        BatchJobPhase::Succeeded,
        BatchJobPhase::Failed,
        BatchJobPhase::Cancelled,
    ] {
        j.status.as_mut().unwrap().phase = Some(phase);
        assert_eq!(
            observed_job_claim(&j, BTreeSet::new(), None),
            None,
            "{phase:?}"
        );
    }
    j.status.as_mut().unwrap().phase = Some(BatchJobPhase::Queued);
    j.spec.cancel = true;
    assert_eq!(
        observed_job_claim(&j, BTreeSet::new(), None),
        None,
        "cancelled"
    );
    assert_eq!(job_key("ns", "a"), "job:ns/a");
}
