//! The catalogue `atelier up` starts with when given no `--catalog`: what a centre offers, in
//! three profiles. Each is offered only when this machine can run its kind (the spawn page
//! hides the others and /hub/admin says what they lack; `atelier up --install qgis,r` installs
//! it).
//!
//! - `python`, "Python (Pangeo)": JupyterLab with xarray, Dask (a local cluster of up to
//!   [`local_dask_bound`] workers), Zarr and intake in the server's venv. The default profile.
//! - `r`, "R": JupyterLab with the R kernel (IRkernel).
//! - `qgis`, "QGIS desktop": a Linux desktop in the browser with QGIS on it.
//!
//! Two node pools, both this machine: `this-machine` for the workspaces, `this-machine-batch`
//! for batch jobs (the Jobs page, and a notebook's submissions) and Dask workers.
//!
//! The images are those of `images/` (what the same profiles run on Kubernetes); the local
//! backend runs `jupyterhub-singleuser` from the venv whatever the image.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::catalog::{Catalog, local_dask_bound};

/// The profile a start that names none gets.
pub const DEFAULT_PROFILE: &str = "python";

/// The manifests of the built-in catalogue; `{max_workers}` is the local Dask bound.
const MANIFESTS: &str = "\
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: this-machine}
spec:
  purpose: interactive
  displayName: This machine
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: this-machine-batch}
spec:
  purpose: batch
  displayName: This machine (batch jobs)
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: python}
spec:
  displayName: Python (Pangeo)
  description: JupyterLab with xarray, Dask, Zarr and intake.
  kind: jupyter
  image: registry.example.org/atelier/jupyter-pangeo:2026.11
  dask: {maxWorkers: {max_workers}}
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: r}
spec:
  displayName: R
  description: JupyterLab with the R kernel (IRkernel).
  kind: r
  image: registry.example.org/atelier/rstudio:4.5
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: qgis}
spec:
  displayName: QGIS desktop
  description: A Linux desktop in the browser, with QGIS.
  kind: qgis
  image: registry.example.org/atelier/qgis:3.40
";

/// The built-in catalogue.
pub fn catalog() -> Catalog {
    let text = MANIFESTS.replace("{max_workers}", &local_dask_bound().max(1).to_string());
    let mut catalog = Catalog::default();
    catalog
        .add_yaml(Path::new("the built-in catalogue"), &text)
        .expect("the built-in catalogue is valid");
    catalog
}

/// What `atelier up --install` can install: each kind's Debian packages and the pip packages of
/// the server's venv.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Installable {
    /// The R kernel: R and IRkernel (Debian).
    R,
    /// The QGIS desktop: QGIS, TigerVNC, websockify and an Xfce session (Debian), and
    /// jupyter-remote-desktop-proxy with jupyter-server-proxy (pip).
    Qgis,
    /// The Pangeo stack of the Python profile (pip): xarray, Dask, Zarr, intake.
    Python,
}

impl Installable {
    /// The Debian packages (apt-get adds their dependencies).
    pub fn debian_packages(self) -> &'static [&'static str] {
        match self {
            Installable::R => &["r-base-core", "r-cran-irkernel"],
            Installable::Qgis => &[
                "qgis",
                "tigervnc-standalone-server",
                "websockify",
                "xfce4",
                "dbus-x11",
                "x11-utils",
            ],
            Installable::Python => &[],
        }
    }

    /// The pip requirements, pinned as `.ci/peers-requirements.txt` pins them.
    pub fn pip_packages(self) -> &'static [&'static str] {
        match self {
            Installable::R => &[],
            Installable::Qgis => &[
                "jupyter-server-proxy==4.6.0",
                "jupyter-remote-desktop-proxy==3.0.1",
            ],
            Installable::Python => PANGEO_REQUIREMENTS,
        }
    }
}

/// The Pangeo packages of the `python` profile (the same pins as the test peers).
pub const PANGEO_REQUIREMENTS: &[&str] = &[
    "xarray==2026.9.0",
    "dask[distributed,array]==2026.8.0",
    "zarr==3.1.6",
    "intake==2.0.9",
];

/// What apt would install, with its sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AptPlan {
    /// The packages not installed yet, dependencies included, in apt's order.
    pub packages: Vec<String>,
    /// What they weigh to download, in bytes (`Size`).
    pub download_bytes: u64,
    /// What they take on disk, in bytes (`Installed-Size`, in KiB in the archive).
    pub installed_bytes: u64,
}

/// The packages an `apt-get install --simulate` would install (its `Inst <name> ...` lines).
pub fn parse_simulation(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The sum of `Size` (bytes) and `Installed-Size` (KiB) of `apt-cache show --no-all-versions`.
pub fn parse_sizes(output: &str) -> (u64, u64) {
    let mut download = 0u64;
    let mut installed = 0u64;
    for line in output.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            download += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Installed-Size:") {
            installed += v.trim().parse::<u64>().unwrap_or(0) * 1024;
        }
    }
    (download, installed)
}

/// `12.3 MB`.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// Asks apt what installing `packages` means here (no root needed).
pub async fn apt_plan(packages: &[&str]) -> anyhow::Result<AptPlan> {
    if packages.is_empty() {
        return Ok(AptPlan::default());
    }
    let out = tokio::process::Command::new("apt-get")
        .args([
            "install",
            "--simulate",
            "-q",
            "-y",
            "--no-install-recommends",
        ])
        .args(packages)
        .env("LC_ALL", "C")
        .output()
        .await
        .context("running apt-get (is this a Debian or Ubuntu machine?)")?;
    if !out.status.success() {
        bail!(
            "apt-get install --simulate {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let names = parse_simulation(&String::from_utf8_lossy(&out.stdout));
    if names.is_empty() {
        return Ok(AptPlan::default());
    }
    let show = tokio::process::Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(&names)
        .env("LC_ALL", "C")
        .output()
        .await
        .context("running apt-cache show")?;
    let (download_bytes, installed_bytes) = parse_sizes(&String::from_utf8_lossy(&show.stdout));
    Ok(AptPlan {
        packages: names,
        download_bytes,
        installed_bytes,
    })
}

/// What pip would install into a venv: each distribution and the URL of its file, from
/// `pip install --dry-run --report` (JSON, format version 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipPlan {
    /// `name==version` of each distribution not installed yet, dependencies included.
    pub packages: Vec<String>,
    /// The files pip would download.
    pub urls: Vec<String>,
    /// What they weigh, in bytes, when their sizes are known (`None`: unknown).
    pub download_bytes: Option<u64>,
}

/// The distributions and file URLs of a pip installation report.
pub fn parse_pip_report(report: &str) -> anyhow::Result<PipPlan> {
    let report: serde_json::Value =
        serde_json::from_str(report).context("pip's report is not JSON")?;
    let items = report["install"]
        .as_array()
        .context("pip's report has no install list")?;
    let mut plan = PipPlan::default();
    for item in items {
        let meta = &item["metadata"];
        let (Some(name), Some(version)) = (meta["name"].as_str(), meta["version"].as_str()) else {
            bail!("pip's report names a distribution without a name or version");
        };
        plan.packages.push(format!("{name}=={version}"));
        if let Some(url) = item["download_info"]["url"].as_str()
            && url.starts_with("https://")
        {
            plan.urls.push(url.to_owned());
        }
    }
    Ok(plan)
}

/// The size of the file at each `url` (`Content-Length` of a `HEAD`), summed; `None` when one
/// does not answer with a size.
async fn download_size(urls: &[String]) -> Option<u64> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    http.enforce_http(false);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .unwrap_or_else(|_| hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots());
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .build(tls.https_only().enable_http1().wrap_connector(http));
    let sizes = futures::future::join_all(urls.iter().map(|url| {
        let client = client.clone();
        async move {
            let request = hyper::Request::head(url.as_str()).body(Empty::new()).ok()?;
            let response =
                tokio::time::timeout(std::time::Duration::from_secs(20), client.request(request))
                    .await
                    .ok()?
                    .ok()?;
            if !response.status().is_success() {
                return None;
            }
            response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)?
                .to_str()
                .ok()?
                .parse::<u64>()
                .ok()
        }
    }))
    .await;
    sizes.into_iter().sum()
}

/// Asks pip what installing `packages` into `venv` means (a dry run: nothing installed), and
/// the package index how large its files are.
pub async fn pip_plan(venv: &Path, packages: &[&str]) -> anyhow::Result<PipPlan> {
    let report =
        std::env::temp_dir().join(format!("atelier-pip-report-{}.json", std::process::id()));
    let out = tokio::process::Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--dry-run",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
        ])
        .arg(&report)
        .args(packages)
        .output()
        .await
        .context("running pip install --dry-run")?;
    let text = std::fs::read_to_string(&report);
    let _ = std::fs::remove_file(&report);
    if !out.status.success() {
        bail!(
            "pip install --dry-run {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut plan = parse_pip_report(&text.context("reading pip's report")?)?;
    plan.download_bytes = download_size(&plan.urls).await;
    Ok(plan)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The venv of the server program `program` (`<venv>/bin/<program>`, with a `pyvenv.cfg`).
pub fn venv_of(program: &str) -> Option<PathBuf> {
    let venv = Path::new(program).parent()?.parent()?;
    venv.join("pyvenv.cfg").is_file().then(|| venv.to_owned())
}

/// `atelier up --install`: says what will be installed and how large it is, asks (unless
/// `yes`), then installs the Debian packages (apt-get, as root) and the pip packages into
/// `venv` (the server's).
pub async fn install(
    what: &[Installable],
    venv: Option<&Path>,
    yes: bool,
    mut confirm: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let debian: Vec<&str> = what
        .iter()
        .flat_map(|w| w.debian_packages())
        .copied()
        .collect();
    let pip: Vec<&str> = what
        .iter()
        .flat_map(|w| w.pip_packages())
        .copied()
        .collect();
    let plan = apt_plan(&debian).await?;
    println!();
    if plan.packages.is_empty() {
        if !debian.is_empty() {
            println!(
                "  Debian packages: already installed ({}).",
                debian.join(", ")
            );
        }
    } else {
        println!(
            "  Debian packages to install: {} ({} to download, {} on disk):",
            plan.packages.len(),
            megabytes(plan.download_bytes),
            megabytes(plan.installed_bytes)
        );
        println!("    {}", plan.packages.join(" "));
    }
    let venv = match (pip.is_empty(), venv) {
        (true, _) => None,
        (false, Some(v)) => Some(v),
        (false, None) => bail!(
            "--install needs the server's Python venv for {}: the server program is not in \
             a venv (let `atelier up` make its own: remove --server-command)",
            pip.join(", ")
        ),
    };
    if let Some(venv) = venv {
        match pip_plan(venv, &pip).await {
            Ok(plan) if plan.packages.is_empty() => {
                println!("  Python packages: already installed ({}).", pip.join(", "));
            }
            Ok(plan) => println!(
                "  Python packages to install into {}: {} ({} to download):\n    {}",
                venv.display(),
                plan.packages.len(),
                plan.download_bytes
                    .map_or_else(|| "size unknown".to_owned(), megabytes),
                plan.packages.join(" ")
            ),
            Err(e) => println!(
                "  Python packages into {} (their sizes are unknown: {e}): {}",
                venv.display(),
                pip.join(" ")
            ),
        }
    }
    if plan.packages.is_empty() && venv.is_none() {
        println!("  Nothing to install.");
        return Ok(());
    }
    if !plan.packages.is_empty() && !is_root() {
        bail!(
            "installing Debian packages needs root: run `sudo apt-get install \
             --no-install-recommends {}` (then `atelier up` again), or run `atelier up \
             --install ...` as root",
            debian.join(" ")
        );
    }
    if !yes && !confirm("  Install? [y/N] ") {
        bail!("nothing installed (answer y, or pass --yes)");
    }
    if !plan.packages.is_empty() {
        let status = tokio::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&debian)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .await
            .context("running apt-get install")?;
        if !status.success() {
            bail!("apt-get install {} failed: {status}", debian.join(" "));
        }
    }
    if let Some(venv) = venv {
        let status = tokio::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(&pip)
            .status()
            .await
            .context("running pip")?;
        if !status.success() {
            bail!(
                "pip install {} into {} failed: {status}",
                pip.join(" "),
                venv.display()
            );
        }
    }
    println!("  Installed.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1alpha1::WorkspaceKind;

    #[test]
    fn a_pip_report_names_each_distribution_and_its_file() {
        // The shape of `pip install --dry-run --report` (pip 23+, report version 1), cut down.
        let report = r#"{
          "version": "1", "pip_version": "25.1",
          "install": [
            {"download_info": {"url": "https://files.pythonhosted.org/packages/ab/cd/jupyter_server_proxy-4.6.0-py3-none-any.whl",
                               "archive_info": {"hashes": {"sha256": "00"}}},
             "is_direct": false, "requested": true,
             "metadata": {"name": "jupyter-server-proxy", "version": "4.6.0"}},
            {"download_info": {"url": "https://files.pythonhosted.org/packages/ef/01/simpervisor-1.0.0-py3-none-any.whl"},
             "requested": false,
             "metadata": {"name": "simpervisor", "version": "1.0.0"}},
            {"download_info": {"url": "file:///wheels/local-0.1-py3-none-any.whl"},
             "metadata": {"name": "local", "version": "0.1"}}
          ],
          "environment": {}
        }"#;
        let plan = parse_pip_report(report).expect("a plan");
        assert_eq!(
            plan.packages,
            [
                "jupyter-server-proxy==4.6.0",
                "simpervisor==1.0.0",
                "local==0.1"
            ]
        );
        // Only files the index serves are weighed (a local wheel costs no download).
        assert_eq!(plan.urls.len(), 2);
        assert!(plan.urls[1].ends_with("simpervisor-1.0.0-py3-none-any.whl"));
        assert_eq!(plan.download_bytes, None);
        // Nothing to install: an empty plan.
        let none = parse_pip_report(r#"{"version": "1", "install": []}"#).expect("a plan");
        assert!(none.packages.is_empty() && none.urls.is_empty());
        // Not a report.
        assert!(parse_pip_report("pip: error").is_err());
        assert!(parse_pip_report(r#"{"version": "1"}"#).is_err());
        assert!(
            parse_pip_report(r#"{"install": [{"metadata": {"name": "x"}}]}"#).is_err(),
            "a distribution without a version"
        );
    }

    #[test]
    fn offers_python_r_and_qgis_with_python_the_default() {
        let catalog = catalog();
        assert!(catalog.warnings().is_empty(), "{:?}", catalog.warnings());
        let kinds: Vec<(String, WorkspaceKind)> = catalog
            .profiles
            .iter()
            .map(|p| (kube::ResourceExt::name_any(p), p.spec.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("python".to_owned(), WorkspaceKind::Jupyter),
                ("r".to_owned(), WorkspaceKind::R),
                ("qgis".to_owned(), WorkspaceKind::Qgis),
            ]
        );
        let everyone = Default::default();
        assert_eq!(
            catalog.default_profile_for(&everyone, DEFAULT_PROFILE),
            "python"
        );
        let choices = catalog.choices_for(&everyone);
        assert_eq!(choices.len(), 3);
        assert!(choices[0].dask.is_some());
        // Starts pass the operator's rules: the default one, each profile, a Dask cluster.
        let request = |options: serde_json::Value| crate::backend::SpawnRequest {
            user: "ada".into(),
            server: String::new(),
            groups: Vec::new(),
            profile: None,
            user_options: options,
            env: Default::default(),
            files: Default::default(),
            dask: None,
            kind: Default::default(),
        };
        let check = |options| {
            catalog.check(
                &request(options),
                DEFAULT_PROFILE,
                super::super::catalog::CredentialsFrom::Catalog,
            )
        };
        assert_eq!(
            check(serde_json::Value::Null).unwrap().as_deref(),
            Some("python")
        );
        for profile in ["python", "r", "qgis"] {
            let options = serde_json::json!({"profile": profile});
            assert_eq!(check(options).unwrap().as_deref(), Some(profile));
        }
        // A batch job of each profile has a pool: this machine's batch pool.
        for profile in ["python", "r", "qgis"] {
            let job = crate::api::v1alpha1::BatchJob::new(
                "ada-a1b2c",
                crate::api::v1alpha1::BatchJobSpec {
                    user: "ada".into(),
                    command: vec!["python3".into(), "-c".into(), "print(6*7)".into()],
                    profile: profile.into(),
                    resources: None,
                    node_pool: None,
                    data_sources: Vec::new(),
                    env: Default::default(),
                    working_dir: None,
                    deadline_seconds: None,
                    backoff_limit: None,
                    cancel: false,
                },
            );
            let mut job = job;
            job.metadata.namespace = Some("atelier".into());
            let deref = catalog.job_dereferenced(
                profile,
                &[],
                &everyone,
                DEFAULT_PROFILE,
                super::super::catalog::CredentialsFrom::Catalog,
            );
            let v = crate::policy::batch::validate_job(
                &job,
                &deref,
                &crate::config::OperatorConfig::default(),
            )
            .unwrap_or_else(|r| panic!("a {profile} job: {r:?}"));
            assert_eq!(v.pool.name, "this-machine-batch");
        }
        let dask =
            serde_json::json!({"profile": "python", "dask": {"workers": {"min": 1, "max": 2}}});
        assert!(
            catalog
                .local_dask(&request(dask), DEFAULT_PROFILE)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn apt_answers_are_read() {
        let simulated = "NOTE: This is only a simulation!\n\
Inst libfoo1 (1.2-3 Debian:12/stable [amd64])\n\
Inst r-cran-irkernel (1.3.2-1 Debian:12/stable [all])\n\
Conf libfoo1 (1.2-3 Debian:12/stable [amd64])\n";
        assert_eq!(
            parse_simulation(simulated),
            vec!["libfoo1", "r-cran-irkernel"]
        );
        let show = "Package: libfoo1\nInstalled-Size: 100\nSize: 2000\n\n\
Package: r-cran-irkernel\nInstalled-Size: 250\nSize: 50000\n";
        assert_eq!(parse_sizes(show), (52_000, 350 * 1024));
        assert_eq!(megabytes(12_345_678), "12.3 MB");
    }

    #[test]
    fn the_pins_are_the_peers() {
        let peers = include_str!("../../.ci/peers-requirements.txt");
        for what in [Installable::R, Installable::Qgis, Installable::Python] {
            for pin in what.pip_packages() {
                assert!(
                    peers.lines().any(|l| l.trim() == *pin),
                    "{pin} is not pinned in .ci/peers-requirements.txt"
                );
            }
        }
    }

    #[tokio::test]
    async fn nothing_to_install_asks_nothing() {
        // Already installed here, or no apt at all: either way nothing is asked.
        let asked = std::cell::Cell::new(false);
        let result = install(&[Installable::Python], None, false, |_| {
            asked.set(true);
            true
        })
        .await;
        assert!(result.unwrap_err().to_string().contains("venv"));
        assert!(!asked.get());
    }
}
