//! The operator benchmark works (not timed): the fake API server of bench/operator and the real
//! `atelier operator` binary, 20 Workspaces through the three phases.

#[path = "../bench/operator/fake.rs"]
mod fake;
#[path = "../bench/operator/harness.rs"]
mod harness;

use std::time::Duration;

fn options(per_user: bool) -> harness::Options {
    harness::Options {
        workspaces: 20,
        users: 5,
        per_user,
        operator: env!("CARGO_BIN_EXE_atelier").into(),
        phase_timeout: Duration::from_secs(60),
        quiet: Duration::from_secs(1),
        watch_log: fake::LOG_CAPACITY,
        cpus: None,
        log_requests: false,
        rust_log: "warn".into(),
        work_dir: std::env::temp_dir().join(format!(
            "atelier-operator-bench-test-{}-{per_user}",
            std::process::id()
        )),
    }
}

fn check(report: &harness::Report) {
    let names: Vec<&str> = report.phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["cold", "unchanged", "status change"],
        "a phase did not complete: {:#?}",
        report.phases
    );
    let [cold, unchanged, status] = [&report.phases[0], &report.phases[1], &report.phases[2]];

    assert!(cold.completed, "every Workspace got a status: {cold:?}");
    assert_eq!(cold.done, 20);
    // Per Workspace at least: the finalizer, the Secret, the PVC, the Service, the
    // NetworkPolicy, the pod, the status.
    assert!(cold.writes() >= 7 * 20, "cold writes: {cold:?}");
    assert!(cold.reconciles >= 20, "cold reconciles: {cold:?}");
    assert!(
        unchanged.completed && unchanged.writes() == 0 && unchanged.reconciles >= 20,
        "a no-op change writes nothing: {unchanged:?}"
    );
    assert!(status.completed, "every Workspace Running: {status:?}");
    assert_eq!(status.done, 20);
    assert!(
        status
            .requests
            .get(&("patch".into(), "workspaces/status".into()))
            >= Some(&20),
        "every status written: {status:?}"
    );

    // The requests add up: the phases cover the run, and the operator's own counter agrees
    // with what the fake received, phase by phase.
    let phases: u64 = report
        .phases
        .iter()
        .map(harness::Phase::total_requests)
        .sum();
    assert_eq!(phases, report.total_requests);
    assert_eq!(report.operator_total_requests, Some(report.total_requests));
    for phase in &report.phases {
        assert_eq!(
            phase.operator_requests,
            Some(phase.total_requests()),
            "{}",
            phase.name
        );
    }
    assert!(report.peak_rss_kib > 0 && report.cpu_seconds > 0.0);
}

/// Removes the run's work directory (its kubeconfig and the operator's log) once its checks have
/// passed; a failed run keeps it, for the log.
fn passed(opts: &harness::Options) {
    let _ = std::fs::remove_dir_all(&opts.work_dir);
}

#[tokio::test]
async fn twenty_workspaces_in_one_namespace() {
    let opts = options(false);
    let report = harness::run(&opts).await.expect("the bench runs");
    check(&report);
    passed(&opts);
}

#[tokio::test]
async fn twenty_workspaces_in_per_user_namespaces() {
    let opts = options(true);
    let report = harness::run(&opts).await.expect("the bench runs");
    check(&report);
    // Each of the 5 users' namespaces was applied.
    let cold = &report.phases[0];
    assert!(
        cold.requests.get(&("patch".into(), "namespaces".into())) >= Some(&5),
        "{cold:?}"
    );
    passed(&opts);
}

/// The API server's watch window is short (here 10 changes; etcd compacts every 5 minutes):
/// a watch that falls behind gets `410 Expired` and must list again, while the others go on.
/// kube-runtime's Controller backs off all its watches together on one watch's error; with
/// that shared backoff, the watches expired one after the other and none listed again, so no
/// Workspace ever became Running here.
#[tokio::test]
async fn twenty_workspaces_through_expired_watches() {
    let mut opts = options(false);
    opts.watch_log = 10;
    opts.work_dir.set_extension("expired");
    let report = harness::run(&opts).await.expect("the bench runs");
    check(&report);
    let relisted: u64 = report.phases[1..]
        .iter()
        .map(|p| p.listed.values().sum::<u64>())
        .sum();
    assert!(
        relisted > 0,
        "the expired watches listed again: {report:#?}"
    );
    passed(&opts);
}

#[test]
fn the_e2e_scale_mode_plans_without_a_cluster() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/operator.sh");
    let dry = std::process::Command::new("bash")
        .arg(&script)
        .args(["--dry-run", "--scale", "7"])
        .output()
        .expect("bash runs");
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(out.contains("PASS  7 Workspaces generated"), "{out}");
    assert!(out.contains("plan (scale 7):"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    let bad = std::process::Command::new("bash")
        .arg(&script)
        .args(["--dry-run", "--scale", "many"])
        .output()
        .expect("bash runs");
    assert!(!bad.status.success(), "a non-number is refused");
}
