//! The pure parts of the Slurm adapter: the submit body from a validated job, the state table,
//! the JWT (against RFC 7515's HS256 vector), rounding, quoting, error mapping and log tails.

use super::*;
use crate::api::v1alpha1::{BatchJob, NodePool, WorkspaceProfile};
use crate::config::OperatorConfig;
use crate::policy::batch::validate_job;
use crate::policy::workspace::Dereferenced;
use crate::policy::workspace::validate::test_support::yaml;

const POOLS: &str = r#"
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: hpc}
  spec:
    purpose: batch
    maxDeadlineSeconds: 7200
    slurm:
      restUrl: "http://127.0.0.1:6820/"
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
  defaultResources: {cpu: "1500m", memory: "1000M"}
  maxResources: {cpu: "8", memory: 32Gi}
  env: {OMP_NUM_THREADS: "2"}
"#;

fn validated(extra: &str) -> ValidatedBatchJob {
    let job: BatchJob = yaml(&format!(
        r#"
apiVersion: atelier.dev/v1alpha1
kind: BatchJob
metadata: {{name: sum-1, namespace: atelier, uid: u-1}}
spec:
  user: alice
  profile: pangeo
  command: [python3, -c, "import numpy; print(numpy.arange(4).sum())"]
  env: {{GREETING: "it's me"}}
{extra}
"#
    ));
    let deref = Dereferenced {
        profile: Some(yaml::<WorkspaceProfile>(PROFILE)),
        pools: yaml::<Vec<NodePool>>(POOLS),
        ..Dereferenced::default()
    };
    validate_job(&job, &deref, &OperatorConfig::default()).expect("valid")
}

fn target(v: &ValidatedBatchJob) -> SlurmTarget {
    match &v.target {
        BatchTarget::Slurm(t) => t.clone(),
        other => panic!("not a Slurm target: {other:?}"),
    }
}

#[test]
fn the_submit_body_carries_the_command_resources_walltime_and_environment() {
    let v = validated("  deadlineSeconds: 61");
    let body = submit_request(&v, &target(&v)).expect("body");
    assert_eq!(
        body,
        json!({
            "script": "#!/bin/sh\nexec python3 -c 'import numpy; print(numpy.arange(4).sum())'\n",
            "job": {
                "name": "sum-1",
                "comment": "atelier:atelier/sum-1/u-1",
                "partition": "debug",
                "account": "ocean",
                "current_working_directory": "/scratch/hub-alice",
                "environment": {
                    "ATELIER_BATCHJOB": "atelier/sum-1",
                    "GREETING": "it's me",
                    "OMP_NUM_THREADS": "2",
                    "PATH": DEFAULT_PATH,
                },
                "cpus_per_task": 2,
                "memory_per_node": 954,
                "time_limit": 2,
                "standard_output": "/scratch/hub-alice/atelier-sum-1-%j.out",
            }
        })
    );
    assert!(body["job"].get("gres").is_none(), "no GPU, no gres");
}

#[test]
fn the_pool_maximum_is_the_walltime_of_a_job_without_deadline_and_paths_follow_the_working_dir() {
    let mut v = validated("  workingDir: /data/run/");
    v.env.insert("PATH".into(), "/opt/bin".into());
    let body = submit_request(&v, &target(&v)).expect("body");
    assert_eq!(body["job"]["time_limit"], 120, "7200 s, the pool's maximum");
    assert_eq!(body["job"]["current_working_directory"], "/data/run/");
    assert_eq!(
        body["job"]["standard_output"],
        "/data/run/atelier-sum-1-%j.out"
    );
    assert_eq!(
        body["job"]["environment"]["PATH"], "/opt/bin",
        "the job's own PATH"
    );

    let mut t = target(&v);
    t.working_dir = None;
    t.account = None;
    let body = submit_request(&v, &t).expect("body");
    assert_eq!(body["job"]["standard_output"], "atelier-sum-1-%j.out");
    assert!(body["job"].get("current_working_directory").is_none());
    assert!(body["job"].get("account").is_none());
}

#[test]
fn gpus_become_gres_with_their_type() {
    let mut v = validated("");
    v.resources.gpus = 2;
    let body = submit_request(&v, &target(&v)).expect("body");
    assert_eq!(body["job"]["gres"], "gpu:2");
    v.resources.gpu_type = Some("a100".into());
    let body = submit_request(&v, &target(&v)).expect("body");
    assert_eq!(body["job"]["gres"], "gpu:a100:2");
    assert_eq!(gres(0, Some("a100")), None);
}

#[test]
fn rounding_goes_up() {
    assert_eq!(cpus(1), 1);
    assert_eq!(cpus(0), 1, "at least one CPU");
    assert_eq!(cpus(1000), 1);
    assert_eq!(cpus(1001), 2);
    assert_eq!(mebibytes(1 << 20), 1);
    assert_eq!(mebibytes((1 << 20) + 1), 2);
    assert_eq!(mebibytes(1_000_000_000), 954);
    assert_eq!(mebibytes(4 << 30), 4096);
    assert_eq!(minutes(1), 1);
    assert_eq!(minutes(60), 1);
    assert_eq!(minutes(61), 2);
    assert_eq!(minutes(86_400), 1440);
}

#[test]
fn shell_quoting_keeps_every_argument_one_word() {
    assert_eq!(shell_quote("python3"), "python3");
    assert_eq!(shell_quote("/a/b.py"), "/a/b.py");
    assert_eq!(shell_quote("--n=3"), "--n=3");
    assert_eq!(shell_quote(""), "''");
    assert_eq!(shell_quote("a b"), "'a b'");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
    assert_eq!(shell_quote("$HOME;rm -rf /"), "'$HOME;rm -rf /'");
    assert_eq!(shell_quote("`x`\n"), "'`x`\n'");
    assert_eq!(
        script(&["sh".into(), "-c".into(), "exit 3".into()]),
        "#!/bin/sh\nexec sh -c 'exit 3'\n"
    );
}

/// Decodes base64url (test only: the RFC's key is given in it).
fn unbase64url(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn hs256_matches_rfc_7515_appendix_a1() {
    let key = unbase64url(
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
    );
    let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    assert_eq!(
        hs256(&key, input),
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    );
}

#[test]
fn the_token_has_scontrols_header_and_claims() {
    let token = sign_token(b"0123456789abcdef", "hub-alice", 1_800_000_000, 300);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
    let claims: Value = serde_json::from_slice(&unbase64url(parts[1])).expect("claims");
    assert_eq!(
        claims,
        json!({"exp": 1_800_000_300i64, "iat": 1_800_000_000i64, "sun": "hub-alice"})
    );
    assert_eq!(
        parts[2],
        hs256(b"0123456789abcdef", &format!("{}.{}", parts[0], parts[1]))
    );
    assert_ne!(
        parts[2],
        hs256(b"another key", &format!("{}.{}", parts[0], parts[1]))
    );
    // Every length of tail, against the decoder.
    for n in 0..10 {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 250) as u8).collect();
        assert_eq!(unbase64url(&base64url(&bytes)), bytes);
        assert!(!base64url(&bytes).contains('='));
    }
}

#[test]
fn slurm_debug_leaves_the_key_out() {
    let v = validated("");
    let slurm = Slurm::new(&target(&v), b"very-secret-key".to_vec()).expect("client");
    let shown = format!("{slurm:?}");
    assert!(
        shown.contains("debug") && shown.contains("hub-alice"),
        "{shown}"
    );
    assert!(!shown.contains("very-secret"), "{shown}");
}

#[test]
fn new_refuses_bad_urls_and_empty_keys() {
    let v = validated("");
    let mut t = target(&v);
    assert!(Slurm::new(&t, Vec::new()).is_err(), "empty key");
    for url in ["ftp://host", "not a url", "/relative", "http://h:1/x?q=1"] {
        t.rest_url = url.into();
        let e = Slurm::new(&t, b"k".to_vec()).expect_err(url);
        assert!(e.to_string().contains("restUrl"), "{url}: {e}");
    }
    t.rest_url = "https://slurm.example.org:6820/api/".into();
    let s = Slurm::new(&t, b"k".to_vec()).expect("https");
    assert_eq!(s.base, "https://slurm.example.org:6820/api");
}

fn info(state: &str, exit: i64) -> JobInfo {
    JobInfo {
        job_id: 42,
        job_state: state.into(),
        exit_code: Some(exit),
        start_time: 1_800_000_000,
        end_time: 1_800_000_060,
        nodes: "node7".into(),
        state_reason: "None".into(),
        ..JobInfo::default()
    }
}

#[test]
fn the_state_table() {
    use BatchJobPhase::*;
    // Slurm's state and wait status → phase, exit code, reason.
    type Row = (
        &'static str,
        i64,
        BatchJobPhase,
        Option<i32>,
        Option<&'static str>,
    );
    let table: &[Row] = &[
        ("PENDING", 0, Queued, None, None),
        ("REQUEUED", 0, Queued, None, None),
        ("CONFIGURING", 0, Running, None, None),
        ("RUNNING", 0, Running, None, None),
        ("COMPLETING", 0, Running, None, None),
        ("SUSPENDED", 0, Running, None, Some("Suspended")),
        ("COMPLETED", 0, Succeeded, Some(0), None),
        ("FAILED", 3 << 8, Failed, Some(3), Some("Failed")),
        ("OUT_OF_MEMORY", 9, Failed, Some(137), Some("OOMKilled")),
        ("NODE_FAIL", 0, Failed, Some(0), Some("NodeFail")),
        ("TIMEOUT", 15, Failed, Some(143), Some("DeadlineExceeded")),
        ("DEADLINE", 0, Failed, Some(0), Some("DeadlineExceeded")),
        ("BOOT_FAIL", 0, Failed, Some(0), Some("BootFail")),
        ("PREEMPTED", 9, Failed, Some(137), Some("Preempted")),
        ("CANCELLED", 15, Cancelled, Some(143), Some("Cancelled")),
    ];
    for (state, exit, phase, code, reason) in table {
        let s = job_state(&info(state, *exit)).expect(state);
        assert_eq!(s.phase, *phase, "{state}");
        assert_eq!(s.exit_code, *code, "{state}");
        assert_eq!(s.reason.as_deref(), *reason, "{state}");
        assert_eq!(s.placement.as_deref(), Some("node7"), "{state}");
        assert!(
            s.message.as_deref().unwrap().contains(state),
            "{state}: {:?}",
            s.message
        );
        let finished = phase.is_finished();
        assert_eq!(s.completion_time.is_some(), finished, "{state}");
        assert_eq!(s.start_time.is_some(), *phase != Queued, "{state}");
    }
    assert!(job_state(&info("WEIRD", 0)).is_err(), "an unknown state");
}

#[test]
fn a_pending_job_says_why_and_has_no_forecast_start() {
    let mut i = info("PENDING", 0);
    i.state_reason = "Resources".into();
    i.nodes = String::new();
    let s = job_state(&i).expect("state");
    assert_eq!(s.reason.as_deref(), Some("Resources"));
    assert_eq!(
        s.start_time, None,
        "a pending job's start_time is a forecast"
    );
    assert_eq!(s.placement, None);
    assert_eq!(
        s.message.as_deref(),
        Some("Slurm job 42 is PENDING (Resources)")
    );
}

#[test]
fn a_failure_message_names_the_exit_or_signal() {
    let mut i = info("FAILED", 3 << 8);
    i.state_reason = "NonZeroExitCode".into();
    let s = job_state(&i).unwrap();
    assert_eq!(
        s.message.as_deref(),
        Some("Slurm job 42 is FAILED (NonZeroExitCode), exit code 3")
    );
    assert_eq!(
        s.start_time,
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0)
    );
    let s = job_state(&info("CANCELLED", 9)).unwrap();
    assert!(s.message.unwrap().ends_with("killed by signal 9"), "signal");
    assert_eq!(wait_status(0), (0, None));
    assert_eq!(wait_status(1 << 8), (1, None));
    assert_eq!(wait_status(255 << 8), (255, None));
    assert_eq!(wait_status(15), (143, Some(15)));
}

fn errors(list: &[(i64, &str)]) -> Vec<SlurmError> {
    list.iter()
        .map(|(n, e)| SlurmError {
            error: (*e).into(),
            error_number: *n,
            description: String::new(),
        })
        .collect()
}

#[test]
fn errors_map_to_batch_errors() {
    let e500 = StatusCode::INTERNAL_SERVER_ERROR;
    let e = classify(
        e500,
        &errors(&[(2017, "Invalid job id specified")]),
        Op::Job("7"),
    );
    assert!(matches!(e, BatchError::NotFound { id, .. } if id == "7"));
    let e = classify(
        e500,
        &errors(&[(2000, "Invalid partition name specified")]),
        Op::Submit,
    );
    assert!(
        matches!(&e, BatchError::Refused { message, .. } if message.contains("Invalid partition name specified")),
        "{e}"
    );
    let e = classify(
        e500,
        &errors(&[(5005, "Zero Bytes were transmitted or received")]),
        Op::Submit,
    );
    assert!(matches!(e, BatchError::Unauthorized { .. }), "{e}");
    let e = classify(
        e500,
        &errors(&[(1800, "Unable to contact slurm controller (connect failure)")]),
        Op::Submit,
    );
    assert!(matches!(e, BatchError::Unreachable { .. }), "{e}");
    let e = classify(e500, &errors(&[(-1, "Unspecified error")]), Op::Job("7"));
    assert!(
        matches!(e, BatchError::Unreachable { .. }),
        "an undecided -1 is retried: {e}"
    );
    assert!(ambiguous(&errors(&[(-1, "Unspecified error")])));
    assert!(!ambiguous(&errors(&[(-1, "x"), (2017, "y")])));
    let e = classify_text(
        StatusCode::UNAUTHORIZED,
        b"Authentication failure",
        Op::List,
    );
    assert!(
        matches!(&e, BatchError::Unauthorized { message, .. } if message.contains("Authentication failure")),
        "{e}"
    );
    let e = classify_text(StatusCode::BAD_GATEWAY, b"<html>", Op::List);
    assert!(matches!(e, BatchError::Unreachable { .. }), "{e}");
    let e = classify_text(
        StatusCode::BAD_REQUEST,
        b"Unable to parse query.",
        Op::Submit,
    );
    assert!(matches!(e, BatchError::Refused { .. }), "{e}");
}

#[test]
fn slurm_errors_parse_under_their_three_names() {
    let a: Answer = serde_json::from_str(
        r#"{"errors":[{"error_code":9001,"error":"Failure during parsing"},
            {"errno":-1,"error":"Unspecified error"},
            {"error_number":2017,"error":"Invalid job id specified","description":"Unable to find JobId=9"}]}"#,
    )
    .expect("errors");
    let numbers: Vec<i64> = a.errors.iter().map(|e| e.error_number).collect();
    assert_eq!(numbers, [9001, -1, 2017]);
    assert_eq!(
        a.errors[2].to_string(),
        "Unable to find JobId=9 (Invalid job id specified, error 2017)"
    );
}

#[test]
fn the_output_path_is_slurms_with_the_id() {
    let mut i = info("RUNNING", 0);
    i.standard_output = "/scratch/u/atelier-x-%j.out".into();
    assert_eq!(
        output_path(&i),
        Some(PathBuf::from("/scratch/u/atelier-x-42.out"))
    );
    i.standard_output = "atelier-x-%j.out".into();
    i.current_working_directory = "/home/u".into();
    assert_eq!(
        output_path(&i),
        Some(PathBuf::from("/home/u/atelier-x-42.out"))
    );
    i.current_working_directory = String::new();
    assert_eq!(output_path(&i), None);
}

#[test]
fn tail_reads_the_end_from_a_character_boundary() {
    let dir = std::env::temp_dir().join(format!("atelier-slurm-tail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out");
    // SAFETY: geteuid(2) has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(tail(&file, 10, None).unwrap(), "", "not written yet");
    std::fs::write(&file, "first line\nsecond é line\n").unwrap();
    assert_eq!(
        tail(&file, 1000, None).unwrap(),
        "first line\nsecond é line\n"
    );
    // 7 bytes from the end start inside `é` (2 bytes): its tail byte is skipped.
    assert_eq!(tail(&file, 7, None).unwrap(), " line\n");
    assert_eq!(tail(&file, 8, Some(me)).unwrap(), "é line\n");
    // Not another user's file, nor a link to one.
    let e = tail(&file, 8, Some(me + 1)).expect_err("another owner");
    assert!(
        e.to_string()
            .contains("not a regular file of the job's user"),
        "{e}"
    );
    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    assert!(
        tail(&link, 8, Some(me)).is_err(),
        "a symbolic link is not followed"
    );
    assert!(
        tail(&dir, 8, None).is_err(),
        "a directory is not an output file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let e = tail(Path::new("/nonexistent-cluster/scratch/out"), 10, None).expect_err("elsewhere");
    assert!(
        e.to_string().contains("/nonexistent-cluster/scratch/out"),
        "{e}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let v = validated("");
    let mut t = target(&v);
    t.rest_url = format!("http://127.0.0.1:{port}");
    let mut v = v;
    v.target = BatchTarget::Slurm(t.clone());
    let slurm = Slurm::new(&t, b"k".to_vec()).expect("client");
    let e = slurm.status(&v, "7").await.expect_err("nobody listens");
    assert!(matches!(e, BatchError::Unreachable { .. }), "{e}");
    let e = slurm.submit(&v).await.expect_err("nobody listens");
    assert!(matches!(e, BatchError::Unreachable { .. }), "{e}");
    let e = slurm.status(&v, "../jobs").await.expect_err("not an id");
    assert!(matches!(e, BatchError::NotFound { .. }), "{e}");
    let mut elsewhere = v.clone();
    elsewhere.target = BatchTarget::Kubernetes { local_queue: None };
    let e = slurm.submit(&elsewhere).await.expect_err("not a Slurm job");
    assert!(
        e.to_string()
            .contains("does not run on this Slurm partition"),
        "{e}"
    );
}
