//! The Helm chart (`charts/atelier/`).
//!
//! Always: the chart's `crds/` are byte-identical to the generated top-level `crds/` (Helm installs
//! the chart's copy), and the chart's version files agree with `Cargo.toml`.
//!
//! Gated by `ATELIER_PEERS=1`: `charts/atelier/tests/check_chart.py` with the peers' venv
//! (helm-python-sdk, kubernetes-validate) lints and renders the chart with its defaults and each
//! example, validates every object against Kubernetes' schemas and the CRDs, and checks the
//! values schema refuses typos and wrong types; the Roles and ClusterRoles bound to the
//! operator's and the hub's ServiceAccounts grant exactly the API calls of `src/rbac.rs` (no call
//! missing, nothing more), in both namespace modes; and the operator builders' golden objects
//! (`tests/fixtures/builders/*.objects.json`: a data source's PersistentVolume, claim,
//! catalogue ConfigMap, pods with CSI volumes and the iRODS init container) are valid for the
//! same Kubernetes versions. Run alone:
//! `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test chart`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn chart_crds_are_identical_to_the_generated_crds() {
    let top = root().join("crds");
    let chart = root().join("charts/atelier/crds");
    let names = yaml_files(&top);
    assert!(!names.is_empty(), "no CRDs under crds/");
    assert_eq!(
        yaml_files(&chart),
        names,
        "charts/atelier/crds/ must hold the same files as crds/ (cp crds/*.yaml charts/atelier/crds/)"
    );
    for name in &names {
        let a = std::fs::read(top.join(name)).expect("read crds/");
        let b = std::fs::read(chart.join(name)).expect("read charts/atelier/crds/");
        assert!(
            a == b,
            "charts/atelier/crds/{name} differs from crds/{name} (cp crds/*.yaml charts/atelier/crds/)"
        );
    }
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart =
        std::fs::read_to_string(root().join("charts/atelier/Chart.yaml")).expect("Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|line| line.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"'))
        .expect("Chart.yaml has an appVersion");
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"));
    assert!(chart.lines().any(|l| l.trim() == "apiVersion: v2"));
}

/// The venv of the Python peers, or `None` (after saying so, past the capture) when off.
fn peers_venv(what: &str) -> Option<PathBuf> {
    if std::env::var("ATELIER_PEERS").ok().as_deref() != Some("1") {
        let _ = writeln!(std::io::stderr(), "SKIPPED: {what} (set ATELIER_PEERS=1)");
        return None;
    }
    let venv = std::env::var_os("ATELIER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".peers/venv"));
    assert!(
        venv.join("bin/python").is_file(),
        "ATELIER_PEERS=1 but {} has no bin/python (run .ci/test.sh to provision the peers)",
        venv.display()
    );
    Some(venv)
}

#[test]
fn chart_lints_renders_and_validates() {
    let Some(venv) = peers_venv("Helm chart render/lint") else {
        return;
    };
    // The API calls of src/rbac.rs: the rules bound to each ServiceAccount must be exactly these.
    let table = std::env::temp_dir().join(format!("atelier-rbac-{}.json", std::process::id()));
    std::fs::write(
        &table,
        serde_json::to_vec_pretty(&atelier::rbac::chart_expectations()).expect("json"),
    )
    .expect("write the RBAC table");
    let output = Command::new(venv.join("bin/python"))
        .arg(root().join("charts/atelier/tests/check_chart.py"))
        .arg("--rbac-table")
        .arg(&table)
        .current_dir(root())
        .output()
        .expect("run check_chart.py");
    let _ = std::fs::remove_file(&table);
    assert!(
        output.status.success(),
        "charts/atelier/tests/check_chart.py failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `e2e/run.sh` (the chart's real-cluster kit) at least parses.
#[test]
fn e2e_run_sh_parses() {
    let output = Command::new("bash")
        .arg("-n")
        .arg(root().join("e2e/run.sh"))
        .output()
        .expect("run bash -n");
    assert!(
        output.status.success(),
        "bash -n e2e/run.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `e2e/run.sh --dry-run` renders the chart with `e2e/values-e2e.yaml` and validates all it
/// would apply.
#[test]
fn e2e_run_sh_dry_run_validates_what_it_would_apply() {
    let Some(venv) = peers_venv("e2e/run.sh --dry-run (chart with e2e values)") else {
        return;
    };
    let output = Command::new("bash")
        .arg(root().join("e2e/run.sh"))
        .arg("--dry-run")
        .env("ATELIER_PEERS_VENV", &venv)
        .current_dir(root())
        .output()
        .expect("run e2e/run.sh --dry-run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("PASS  chart renders and validates"),
        "e2e/run.sh --dry-run failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
