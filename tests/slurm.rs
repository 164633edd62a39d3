//! Issue 13's HPC partition with a real Slurm: BatchJobs through `policy::batch::validate_job`
//! and `admit_job`, then `batch::slurm::Slurm` against slurmrestd (REST API v0.0.38) of a
//! one-node Slurm 22.05 cluster on loopback (`common::slurm`).
//!
//! - A job printing the host name and the sum of a NumPy array completes: Succeeded, exit 0,
//!   the node as placement, both lines in its logs (read from the output file Slurm wrote in the
//!   shared work directory). It runs as the pool's mapped user with the job's environment.
//! - A job that exits 3 is Failed with exit code 3 (and its stderr is in the logs).
//! - A `sleep 600` job runs, is submitted again without running twice (same id), is cancelled
//!   and shows Cancelled.
//! - Jobs over the pool's caps are refused by `validate_job` (a job no cap could admit) and by
//!   `admit_job` (the user's other job holds the rest), with the cap's reason; Slurm never sees
//!   them (`GET /slurm/v0.0.38/jobs`).
//! - A GPU job reaches slurmctld as `gres` and is refused by it, with Slurm's words.
//! - A client with the wrong JWT key gets Unauthorized (submit, status, cancel) and submits
//!   nothing; a job id is NotFound for another BatchJob than the one that submitted it.
//!
//! Gated by `ATELIER_PEERS=1` (a missing Slurm is then a failure); needs root (slurmd starts
//! jobs as their user): `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test
//! slurm -- --nocapture`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use atelier::api::v1alpha1::{BatchJob, BatchJobPhase, NodePool, WorkspaceProfile};
use atelier::batch::slurm::Slurm;
use atelier::batch::{BatchError, BatchSystem, JobState};
use atelier::config::OperatorConfig;
use atelier::policy::admission::UsageIndex;
use atelier::policy::batch::{BatchTarget, ValidatedBatchJob, admit_job, validate_job};
use atelier::policy::workspace::{Dereferenced, Refusal};
use common::say;
use common::slurm::{JOB_USER, PARTITION, SlurmKit, available};
use common::stack::Deadline;

/// What the story needs, or `None` (after saying SKIPPED) when peer tests are off.
fn peers() -> Option<PathBuf> {
    if std::env::var("ATELIER_PEERS").ok().as_deref() != Some("1") {
        say(
            "SKIPPED: the Slurm story (tests/slurm.rs) needs a real Slurm: set ATELIER_PEERS=1 \
             (.ci/test.sh installs slurmctld, slurmd, slurmrestd, munge and the JWT plugin)",
        );
        return None;
    }
    if let Err(e) = available() {
        panic!("ATELIER_PEERS=1 but Slurm cannot run here: {e}");
    }
    let venv = std::env::var_os("ATELIER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/venv"));
    assert!(
        venv.join("bin/python3").exists(),
        "ATELIER_PEERS=1 but {} has no python3 (run .ci/test.sh)",
        venv.display()
    );
    Some(venv)
}

/// How the job user runs the venv's Python with NumPy: its interpreter when that user may run
/// it, else the system's Python of the same version with the venv's site-packages on
/// `PYTHONPATH` (a venv made from an interpreter under /root, as here, is not runnable by others).
fn job_python(venv: &Path) -> (String, Option<String>) {
    let own = venv.join("bin/python3");
    let runs = std::process::Command::new("runuser")
        .args(["-u", JOB_USER, "--"])
        .arg(&own)
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        return (own.display().to_string(), None);
    }
    let lib = std::fs::read_dir(venv.join("lib"))
        .expect("the venv's lib")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("python3"))
        .expect("lib/python3.x in the venv");
    let system = format!("/usr/bin/{lib}");
    assert!(
        Path::new(&system).exists(),
        "{JOB_USER} cannot run {} and there is no {system}",
        own.display()
    );
    let site = venv.join("lib").join(&lib).join("site-packages");
    (system, Some(site.display().to_string()))
}

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The pool: the kit's partition as user [`JOB_USER`], working in the kit's work directory,
/// at most 2 CPUs per user and a 10-minute walltime.
fn pools(kit: &SlurmKit) -> Vec<NodePool> {
    yaml(&format!(
        r#"
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {{name: hpc}}
  spec:
    purpose: batch
    maxDeadlineSeconds: 600
    caps: {{perUser: {{cpu: "2"}}}}
    slurm:
      restUrl: "{url}"
      partition: {PARTITION}
      tokenSecret: {{name: slurm-jwt}}
      userMapping: {{fixed: {JOB_USER}}}
      workingDir: "{work}"
"#,
        url = kit.rest_url,
        work = kit.work_dir().display(),
    ))
}

const PROFILE: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: pangeo}
spec:
  displayName: Pangeo
  image: pangeo/pangeo-notebook:2026.09.01
  defaultResources: {cpu: "1", memory: 256Mi}
  maxResources: {cpu: "4", memory: 2Gi, gpus: 1}
"#;

fn batch_job(name: &str, command: &[&str], extra: &str) -> BatchJob {
    let command = serde_json::to_string(command).expect("json");
    yaml(&format!(
        r#"
apiVersion: atelier.dev/v1alpha1
kind: BatchJob
metadata: {{name: {name}, namespace: atelier, uid: uid-{name}}}
spec:
  user: alice
  profile: pangeo
  command: {command}
{extra}
"#
    ))
}

fn validate(kit: &SlurmKit, job: &BatchJob) -> Result<ValidatedBatchJob, Refusal> {
    let deref = Dereferenced {
        profile: Some(yaml::<WorkspaceProfile>(PROFILE)),
        pools: pools(kit),
        ..Dereferenced::default()
    };
    validate_job(job, &deref, &OperatorConfig::default())
}

fn slurm_of(v: &ValidatedBatchJob, key: &[u8]) -> Result<Slurm, BatchError> {
    match &v.target {
        BatchTarget::Slurm(target) => Slurm::new(target, key.to_vec()),
        other => panic!("not a Slurm target: {other:?}"),
    }
}

/// Polls until the job is in a phase `done` accepts.
async fn wait_for(
    slurm: &Slurm,
    v: &ValidatedBatchJob,
    id: &str,
    what: &str,
    done: impl Fn(&JobState) -> bool,
) -> JobState {
    let wait = Deadline::new(
        format!("job {} ({id}) {what}", v.name),
        Duration::from_secs(90),
    );
    loop {
        let state = slurm.status(v, id).await;
        if let Ok(s) = &state
            && done(s)
        {
            return s.clone();
        }
        wait.tick(&state).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurm_runs_fails_cancels_and_refuses_jobs() {
    let Some(venv) = peers() else { return };
    let kit = SlurmKit::start().await;
    let (python, pythonpath) = job_python(&venv);
    let mut index = UsageIndex::default();
    let pool_list = pools(&kit);

    // 1. Host name and the sum of a NumPy array, through the profile's resources and the job's
    // environment.
    let env = pythonpath
        .map(|p| format!("  env: {{PYTHONPATH: \"{p}\", GREETING: \"it's me\"}}"))
        .unwrap_or_else(|| "  env: {GREETING: \"it's me\"}".to_owned());
    let script = format!(
        "hostname; echo \"user $(id -un) greeting $GREETING\"; {python} -c 'import numpy; print(\"sum\", numpy.arange(1, 101).sum())'"
    );
    let sum = validate(&kit, &batch_job("numpy-sum", &["sh", "-c", &script], &env))
        .expect("the NumPy job is valid");
    admit_job(&mut index, &sum, &pool_list).expect("the NumPy job fits the caps");
    let slurm = slurm_of(&sum, &kit.jwt_key).expect("client");
    assert_eq!(slurm.system(), "slurm");
    let submitted = std::time::Instant::now();
    let id = slurm.submit(&sum).await.expect("submitted");
    let done = wait_for(&slurm, &sum, &id, "to finish", |s| s.phase.is_finished()).await;
    say(format!(
        "NumPy job: Slurm job {id}, submitted to seen finished in {:.1} s",
        submitted.elapsed().as_secs_f64()
    ));
    let logs = slurm.logs(&sum, &id, 64 * 1024).await.expect("logs");
    assert_eq!(done.phase, BatchJobPhase::Succeeded, "{done:?}\n{logs}");
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.placement.as_deref(), Some(kit.node.as_str()));
    let (start, end) = (
        done.start_time.expect("start"),
        done.completion_time.expect("end"),
    );
    assert!(start <= end, "{done:?}");
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(
        lines,
        [
            kit.node.as_str(),
            &format!("user {JOB_USER} greeting it's me"),
            "sum 5050"
        ],
        "the job's output: {logs:?}"
    );
    assert_eq!(
        slurm.logs(&sum, &id, 9).await.expect("tail"),
        "sum 5050\n",
        "the last 9 bytes"
    );
    admit_job(
        &mut index,
        &ValidatedBatchJob {
            cancel: true,
            ..sum.clone()
        },
        &pool_list,
    )
    .expect("a finished job releases its claim");

    // Another BatchJob cannot reach this job through its id.
    let stranger = validate(&kit, &batch_job("stranger", &["true"], "")).expect("valid");
    let e = slurm.status(&stranger, &id).await.expect_err("not its job");
    assert!(matches!(e, BatchError::NotFound { .. }), "{e}");
    let e = slurm
        .logs(&stranger, &id, 100)
        .await
        .expect_err("not its job");
    assert!(matches!(e, BatchError::NotFound { .. }), "{e}");
    let e = slurm.status(&sum, "999999").await.expect_err("no such job");
    assert!(matches!(e, BatchError::NotFound { .. }), "{e}");

    // 2. Exit 3.
    let three = validate(
        &kit,
        &batch_job("exit-three", &["sh", "-c", "echo failing >&2; exit 3"], ""),
    )
    .expect("valid");
    let id3 = slurm.submit(&three).await.expect("submitted");
    let failed = wait_for(&slurm, &three, &id3, "to finish", |s| s.phase.is_finished()).await;
    assert_eq!(failed.phase, BatchJobPhase::Failed, "{failed:?}");
    assert_eq!(failed.exit_code, Some(3), "{failed:?}");
    assert_eq!(failed.reason.as_deref(), Some("Failed"));
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit code 3")),
        "{failed:?}"
    );
    let logs = slurm.logs(&three, &id3, 1000).await.expect("logs");
    assert_eq!(logs, "failing\n", "stderr goes to the output file");

    // 3. A long job, cancelled; a second submit finds it instead of running it twice.
    let long = validate(
        &kit,
        &batch_job("long-sleep", &["sleep", "600"], "  deadlineSeconds: 300"),
    )
    .expect("valid");
    admit_job(&mut index, &long, &pool_list).expect("1 CPU of 2");
    let idl = slurm.submit(&long).await.expect("submitted");
    let running = wait_for(&slurm, &long, &idl, "to run", |s| {
        s.phase == BatchJobPhase::Running
    })
    .await;
    assert_eq!(running.exit_code, None);
    assert_eq!(running.completion_time, None);
    assert_eq!(
        slurm.submit(&long).await.expect("submitted again"),
        idl,
        "the same BatchJob is not run twice"
    );

    // 4. Over the caps: refused before Slurm sees anything.
    let big = validate(
        &kit,
        &batch_job("too-big", &["true"], "  resources: {cpu: \"3\"}"),
    )
    .expect_err("3 CPUs, over the per-user cap of 2");
    assert_eq!(big.reason, "UserCapExceeded", "{big:?}");
    assert!(big.message.contains("hpc"), "{big:?}");
    let second = validate(
        &kit,
        &batch_job("second-two", &["true"], "  resources: {cpu: \"2\"}"),
    )
    .expect("2 CPUs fit the cap alone");
    let refusal = admit_job(&mut index, &second, &pool_list)
        .expect_err("long-sleep holds 1 of alice's 2 CPUs");
    assert_eq!(refusal.reason, "UserCapExceeded", "{refusal:?}");
    say(format!(
        "refused before submission: {} / {}",
        big.message, refusal.message
    ));

    slurm.cancel(&long, &idl).await.expect("cancelled");
    let cancelled = wait_for(&slurm, &long, &idl, "to be cancelled", |s| {
        s.phase.is_finished()
    })
    .await;
    assert_eq!(cancelled.phase, BatchJobPhase::Cancelled, "{cancelled:?}");
    assert_eq!(cancelled.reason.as_deref(), Some("Cancelled"));
    slurm
        .cancel(&long, &idl)
        .await
        .expect("cancelling a finished job does nothing");

    // 5. A GPU job reaches slurmctld, which has no GPU to give.
    let mut gpu = validate(&kit, &batch_job("wants-gpu", &["nvidia-smi"], "")).expect("valid");
    gpu.resources.gpus = 1;
    let e = slurm.submit(&gpu).await.expect_err("no GPU on the node");
    assert!(
        matches!(&e, BatchError::Refused { message, .. } if message.contains("Requested node configuration is not available")),
        "{e}"
    );

    // 6. The wrong key: Unauthorized everywhere, nothing submitted.
    let forged = slurm_of(&sum, b"not the cluster's key").expect("client");
    let bad = validate(&kit, &batch_job("bad-token", &["true"], "")).expect("valid");
    for (what, result) in [
        ("submit", forged.submit(&bad).await.map(|_| ())),
        ("status", forged.status(&sum, &id).await.map(|_| ())),
        ("cancel", forged.cancel(&long, &idl).await),
    ] {
        let e = result.expect_err(what);
        assert!(matches!(e, BatchError::Unauthorized { .. }), "{what}: {e}");
    }

    let seen = kit.jobs().await;
    let names: Vec<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
    say(format!("Slurm's jobs: {seen:?}"));
    for name in ["numpy-sum", "exit-three", "long-sleep"] {
        assert_eq!(
            names.iter().filter(|n| **n == name).count(),
            1,
            "{name} once: {seen:?}"
        );
    }
    for name in ["too-big", "second-two", "bad-token"] {
        assert!(!names.contains(&name), "Slurm saw {name}: {seen:?}");
    }
    // slurmctld keeps a record of the GPU job it refused; it never ran.
    assert!(
        seen.iter()
            .filter(|(n, _, _)| n == "wants-gpu")
            .all(|(_, _, state)| state != "RUNNING" && state != "COMPLETED"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|(n, c, state)| n == "numpy-sum"
            && c == "atelier:atelier/numpy-sum/uid-numpy-sum"
            && state == "COMPLETED"),
        "{seen:?}"
    );
}

/// The hub's catalogue: the profile and the Slurm pool of [`pools`].
fn hub_catalog(kit: &SlurmKit) -> atelier::hub::catalog::SharedCatalog {
    let pool = serde_json::to_value(&pools(kit)[0]).expect("json");
    let text = format!(
        "{PROFILE}\n---\n{}",
        serde_json::to_string(&pool).expect("json")
    );
    let mut catalog = atelier::hub::catalog::Catalog::default();
    catalog
        .add_yaml(Path::new("catalog.yaml"), &text)
        .expect("catalog");
    atelier::hub::catalog::SharedCatalog::new(catalog)
}

/// The same partition through the hub (local backend): REST submit → `validate_job` with the
/// catalogue's Slurm pool → `Slurm` signing with the key the hub reads from its secrets
/// directory → the job's row follows Slurm to Succeeded with its logs; a long job is cancelled
/// through REST and shows Cancelled, in the hub and in Slurm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_to_the_hub_runs_on_slurm() {
    use atelier::store::{NewToken, Store, TokenOwner};
    use serde_json::{Value, json};

    let Some(_venv) = peers() else { return };
    let kit = SlurmKit::start().await;
    let db = common::TestDb::sqlite("slurm-hub");
    let state = kit.work_dir().join("hub-state");
    let secret = state.join("secrets/slurm-jwt");
    std::fs::create_dir_all(&secret).expect("secrets dir");
    std::fs::write(secret.join("jwtKey"), &kit.jwt_key).expect("key");
    let store = Store::connect(db.url()).await.expect("store");
    let alice = store.create_user("alice", false).await.expect("alice");
    let (token, _) = store
        .create_token(&NewToken::new(
            TokenOwner::User(alice.id),
            vec!["self".into()],
        ))
        .await
        .expect("token");
    let (web, watcher) =
        common::hub::serve_local_jobs(store.clone(), &state, hub_catalog(&kit), "pangeo").await;
    let auth = format!("token {token}");
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let (web, auth) = (&web, auth.clone());
        async move {
            web.request(
                method,
                &path,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.map(|b| b.to_string()).unwrap_or_default(),
            )
            .await
        }
    };
    let until = |name: String, what: &'static str, done: fn(&str) -> bool| {
        let call = &call;
        async move {
            let wait = Deadline::new(format!("hub job {name} {what}"), Duration::from_secs(90));
            loop {
                let r = call("GET", format!("/hub/api/users/alice/jobs/{name}"), None).await;
                assert_eq!(r.status, 200, "{}", r.body);
                let job = r.json();
                if done(job["phase"].as_str().unwrap_or_default()) {
                    return job;
                }
                wait.tick(&job).await;
            }
        }
    };

    let r = call(
        "POST",
        "/hub/api/users/alice/jobs".into(),
        Some(json!({"command": ["sh", "-c", "hostname; echo \"sum $((40 + 2))\""]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json();
    let name = job["name"].as_str().expect("name").to_owned();
    assert_eq!(job["node_pool"], "hpc", "{job}");
    assert_eq!(job["system"], "slurm", "{job}");
    let done = until(name.clone(), "to finish", |p| {
        ["Succeeded", "Failed", "Cancelled"].contains(&p)
    })
    .await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert!(
        kit.jobs().await.iter().any(|(n, _, _)| *n == name),
        "Slurm knows job {name}"
    );
    let logs = call(
        "GET",
        format!("/hub/api/users/alice/jobs/{name}/logs"),
        None,
    )
    .await;
    assert_eq!(logs.status, 200, "{}", logs.body);
    assert_eq!(
        logs.body,
        format!("{}\nsum 42\n", kit.node),
        "the job's output"
    );

    // A long job, cancelled through the hub.
    let r = call(
        "POST",
        "/hub/api/users/alice/jobs".into(),
        Some(json!({"command": ["sleep", "600"], "deadline_seconds": 300})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let long = r.json()["name"].as_str().expect("name").to_owned();
    until(long.clone(), "to run", |p| p == "Running").await;
    let r = call(
        "POST",
        format!("/hub/api/users/alice/jobs/{long}/cancel"),
        None,
    )
    .await;
    assert!(r.status < 300, "cancel: {} {}", r.status, r.body);
    let cancelled = until(long.clone(), "to be cancelled", |p| {
        ["Succeeded", "Failed", "Cancelled"].contains(&p)
    })
    .await;
    assert_eq!(cancelled["phase"], "Cancelled", "{cancelled}");
    let slurm_state = kit
        .jobs()
        .await
        .into_iter()
        .find(|(n, _, _)| *n == long)
        .map(|(_, _, s)| s);
    assert_eq!(slurm_state.as_deref(), Some("CANCELLED"), "in Slurm too");

    watcher.abort();
    store.close().await;
}
