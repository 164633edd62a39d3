//! A server's local Dask cluster: `dask scheduler` and `dask worker` processes beside the
//! server, from the same Python environment, on 127.0.0.1, mutually authenticated with TLS.
//!
//! Each cluster gets its own certificate authority, made afresh at every start (rcgen, ring):
//! one certificate and key, signed by that CA, which the scheduler, the workers and the server's
//! kernels present (`--tls-ca-file/--tls-cert/--tls-key`, and distributed's
//! `distributed.comm.tls.*` configuration through `DASK_DISTRIBUTED__…` variables, which
//! `Security()` reads when `Client()` is given no argument: distributed's `client.py` falls back
//! to `dask.config.get("scheduler-address")` and `Security()`, `security.py` reads
//! `distributed.comm.tls.ca-file`, `…client.cert`, `…client.key` and
//! `distributed.comm.require-encryption`). Both sides require a certificate signed by the
//! cluster's CA (distributed's TLS contexts use `CERT_REQUIRED` and no host name check), so
//! another workspace's kernel, with its own CA, fails the handshake. The files live in the
//! server's private run directory (mode 0700, files 0600) and go with it.
//!
//! The processes join the server's process group: stopping the server, a failed or abandoned
//! start, and the stop of a leftover after a hub crash all take them with it.
//!
//! # Supervision
//!
//! Once the server is ready, [`supervise`] watches its cluster (every [`SUPERVISE_INTERVAL`])
//! for as long as the server runs, as a Deployment would on Kubernetes:
//! - a scheduler that ends otherwise than by its idle timeout (killed, crashed) is started
//!   again on the same address, with the same TLS files, and `min` fresh workers (the old ones
//!   leave by themselves once their scheduler is gone, and are stopped to be sure): a kernel's
//!   next `Client()` works as before. After [`MAX_RESTARTS`] restarts within
//!   [`RESTART_WINDOW`] the cluster is given up and marked stopped.
//! - a scheduler that ended by its idle timeout (`--idle-timeout`: it exits with status 0) is
//!   not started again, as the dask-kubernetes operator deletes an idle cluster: its workers are
//!   stopped and the cluster is marked stopped until the server restarts.
//! - a worker that exited while its scheduler runs is replaced, up to the current target.
//!
//! # Scaling between `min` and `max`
//!
//! As the dask-kubernetes operator's `DaskAutoscaler` does (`controller.py`,
//! `daskautoscaler_adapt`), every [`ADAPT_INTERVAL`] the supervisor asks the scheduler's HTTP
//! API for its adaptive target (`GET <dashboard>/api/v1/adaptive_target`, distributed's
//! `distributed/http/scheduler/api.py`, enabled on the scheduler by [`SCHEDULER_ROUTES`]),
//! bounds it by `min` and `max`, starts the missing workers, and retires the surplus
//! gracefully (`POST <dashboard>/api/v1/retire_workers` `{"n": k, "close_workers": true}`: the
//! scheduler moves their data elsewhere first, then closes them; the processes it names are
//! then stopped). A scale-down takes at most a quarter of the workers (at least one) at a time,
//! and [`ADAPT_COOLDOWN`] separates two changes. The API listens where the dashboard does: on
//! 127.0.0.1, and through the proxy for the server's owner only.
//!
//! Every such event is written into the server's log (`[atelier] …`, where a failed start's
//! message comes from) and the hub's log, and [`ClusterState`] tells `poll` what became of the
//! cluster.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::proc::{self, Leader};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::backend::{DASHBOARD_SEGMENT, LocalDask};

/// The CA certificate file in the server's run directory.
pub const CA_FILE: &str = "dask-ca.pem";
/// The cluster's certificate (scheduler, workers and clients).
pub const CERT_FILE: &str = "dask-tls.pem";
/// Its private key.
pub const KEY_FILE: &str = "dask-tls.key";

/// How long a worker waits for a vanished scheduler before it exits (`--death-timeout`).
const WORKER_DEATH_TIMEOUT_SECS: u32 = 60;

/// How often [`supervise`] looks at a cluster.
pub const SUPERVISE_INTERVAL: Duration = Duration::from_secs(1);
/// Most scheduler restarts within [`RESTART_WINDOW`] before the cluster is given up.
pub const MAX_RESTARTS: usize = 3;
/// The window of [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// How often [`supervise`] asks the scheduler for its adaptive target.
pub const ADAPT_INTERVAL: Duration = Duration::from_secs(2);
/// The least time between two scaling changes (the dask-kubernetes autoscaler's 15 s would
/// make a local cluster sluggish).
pub const ADAPT_COOLDOWN: Duration = Duration::from_secs(5);
/// distributed's default HTTP routes of a scheduler, plus its API (`adaptive_target`,
/// `retire_workers`), as `distributed.scheduler.http.routes` given through the environment.
pub const SCHEDULER_ROUTES: (&str, &str) = (
    "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES",
    "['distributed.http.scheduler.prometheus', 'distributed.http.scheduler.info', \
     'distributed.http.scheduler.json', 'distributed.http.health', 'distributed.http.proxy', \
     'distributed.http.statics', 'distributed.http.scheduler.api']",
);
/// How a scheduler that reached its idle timeout ends (distributed closes it cleanly).
const IDLE_EXIT: &str = "exited with status 0";

/// What the handle keeps of a running cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaskHandle {
    /// The scheduler process (in the server's process group).
    pub scheduler_pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`).
    pub scheduler_start_time: u64,
    /// `tls://127.0.0.1:<port>`.
    pub address: String,
    /// Where its dashboard listens, `http://127.0.0.1:<port>` (served under the server's prefix
    /// plus `dask/`).
    pub dashboard: String,
    /// The worker processes (their nannies).
    #[serde(default)]
    pub worker_pids: Vec<u32>,
}

/// The TLS files of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// PEM texts of a fresh CA and of a certificate it signed for `127.0.0.1`/`localhost`, usable
/// by servers and clients: `(ca, cert, key)`.
pub fn make_tls(common_name: &str) -> Result<(String, String, String), rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("Atelier Dask CA {common_name}"));
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(DnType::CommonName, format!("Atelier Dask {common_name}"));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Writes a fresh CA, certificate and key into `dir` (created with mode 0700 when missing;
/// files 0600, never overwritten: the directory is made afresh at each start).
pub fn write_tls(dir: &Path, common_name: &str) -> std::io::Result<TlsFiles> {
    let (ca, cert, key) = make_tls(common_name)
        .map_err(|e| std::io::Error::other(format!("making the cluster's certificates: {e}")))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let write = |name: &str, text: &str| -> std::io::Result<PathBuf> {
        let path = dir.join(name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        Ok(path)
    };
    Ok(TlsFiles {
        ca: write(CA_FILE, &ca)?,
        cert: write(CERT_FILE, &cert)?,
        key: write(KEY_FILE, &key)?,
    })
}

/// The `dask` program beside the server's (`jupyterhub-singleuser` given as a path: the same
/// Python environment), else `dask` on `PATH`.
pub fn dask_program(server_program: &str) -> String {
    let server = Path::new(server_program);
    if server_program.contains('/')
        && let Some(dir) = server.parent()
    {
        let dask = dir.join("dask");
        if dask.is_file() {
            return dask.to_string_lossy().into_owned();
        }
    }
    "dask".to_owned()
}

/// The dashboard's path prefix: the server's prefix plus [`DASHBOARD_SEGMENT`], without the
/// trailing `/` (`--dashboard-prefix`).
pub fn dashboard_prefix(server_prefix: &str) -> String {
    format!(
        "{}/{DASHBOARD_SEGMENT}",
        server_prefix.trim_end_matches('/')
    )
}

/// `dask scheduler` on `port` (TLS) with its dashboard on `dashboard_port` under `prefix`.
pub fn scheduler_argv(
    program: &str,
    port: u16,
    dashboard_port: u16,
    dashboard_prefix: &str,
    tls: &TlsFiles,
    spec: &LocalDask,
) -> Vec<String> {
    let mut argv = vec![
        program.to_owned(),
        "scheduler".to_owned(),
        "--protocol=tls".to_owned(),
        "--host=127.0.0.1".to_owned(),
        format!("--port={port}"),
        format!("--dashboard-address=127.0.0.1:{dashboard_port}"),
        format!("--dashboard-prefix={dashboard_prefix}"),
        "--no-jupyter".to_owned(),
    ];
    argv.extend(tls_args(tls));
    if let Some(secs) = spec.idle_timeout_seconds.filter(|s| *s > 0) {
        argv.push(format!("--idle-timeout={secs}s"));
    }
    argv
}

/// `dask worker` number `index` of the scheduler at `address`.
pub fn worker_argv(
    program: &str,
    address: &str,
    name: &str,
    tls: &TlsFiles,
    spec: &LocalDask,
) -> Vec<String> {
    let mut argv = vec![
        program.to_owned(),
        "worker".to_owned(),
        address.to_owned(),
        "--host=127.0.0.1".to_owned(),
        "--nworkers=1".to_owned(),
        format!("--nthreads={}", spec.threads.max(1)),
        format!("--name={name}"),
        "--no-dashboard".to_owned(),
        format!("--death-timeout={WORKER_DEATH_TIMEOUT_SECS}"),
    ];
    if let Some(bytes) = spec.memory_limit {
        argv.push(format!("--memory-limit={bytes}"));
    }
    argv.extend(tls_args(tls));
    argv
}

fn tls_args(tls: &TlsFiles) -> [String; 3] {
    [
        format!("--tls-ca-file={}", tls.ca.display()),
        format!("--tls-cert={}", tls.cert.display()),
        format!("--tls-key={}", tls.key.display()),
    ]
}

/// distributed's TLS configuration for every process of the cluster and for the server's
/// kernels (clients): the CA, the certificate as client, scheduler and worker certificate, and
/// encryption required.
pub fn tls_env(tls: &TlsFiles) -> Vec<(String, String)> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut env = vec![
        (
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION".to_owned(),
            "True".to_owned(),
        ),
        (
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE".to_owned(),
            path(&tls.ca),
        ),
    ];
    for role in ["CLIENT", "SCHEDULER", "WORKER"] {
        env.push((
            format!("DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"),
            path(&tls.cert),
        ));
        env.push((
            format!("DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"),
            path(&tls.key),
        ));
    }
    env
}

/// What the server gets: the scheduler's address (`Client()` with no argument connects to it),
/// the TLS configuration, and the dashboard's link (`dashboard_link` of the client and
/// dask-labextension), `<public server URL or prefix>dask/status`.
pub fn server_env(address: &str, tls: &TlsFiles, dashboard_link: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("DASK_SCHEDULER_ADDRESS".to_owned(), address.to_owned()),
        (
            "DASK_DISTRIBUTED__DASHBOARD__LINK".to_owned(),
            dashboard_link.to_owned(),
        ),
    ];
    env.extend(tls_env(tls));
    env
}

/// The dashboard's link for a server at `prefix`, on `public` (the server's public URL,
/// `JUPYTERHUB_PUBLIC_URL`) when known, else the path alone.
pub fn dashboard_link(public: Option<&str>, prefix: &str) -> String {
    let base = match public {
        Some(public) if !public.is_empty() => public,
        _ => prefix,
    };
    format!("{}/{DASHBOARD_SEGMENT}/status", base.trim_end_matches('/'))
}

/// Whether a variable of the server's environment is the server's alone: the hub's token and
/// the single-user server's settings stay out of the scheduler's and workers' environment.
pub fn server_only(var: &str) -> bool {
    var.starts_with("JUPYTERHUB_") || var.starts_with("JPY_")
}

/// One process of a cluster: its pid, start time and how it ended (once it did).
pub(super) struct Member {
    /// `--name` of a worker (empty for the scheduler).
    pub name: String,
    pub pid: u32,
    pub start_time: u64,
    pub exit: watch::Receiver<Option<String>>,
}

impl Member {
    fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Asks it to stop (SIGTERM), unless it is gone or its pid was reused.
    fn terminate(&self) {
        if proc::leader(self.pid, self.start_time) == Leader::Alive
            && let Ok(pid) = i32::try_from(self.pid)
        {
            // SAFETY: kill(2) with a pid checked against its start time a moment ago.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

/// What became of a server's cluster, as its supervisor saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Running; `restarts` times started again after its scheduler ended.
    Running {
        /// Scheduler restarts so far.
        restarts: u32,
    },
    /// Not running any more, and not started again until the server restarts.
    Stopped {
        /// Why (idle timeout, or too many restarts).
        reason: String,
    },
}

/// A running cluster and what its supervisor needs to start its processes again.
pub(super) struct Cluster {
    /// The `dask` program.
    pub program: String,
    /// The scheduler's command line (the same port every time).
    pub scheduler_argv: Vec<String>,
    /// `tls://127.0.0.1:<port>`.
    pub address: String,
    /// Its TLS files.
    pub tls: TlsFiles,
    /// Workers wanted, threads, memory, idle timeout.
    pub spec: LocalDask,
    /// Worker names are `<stem>-<n>`.
    pub stem: String,
    /// The processes' environment.
    pub env: Vec<(String, String)>,
    /// Their working directory.
    pub dir: PathBuf,
    /// The server's log, which they write to.
    pub log_path: PathBuf,
    /// The server: its pid (the process group) and start time.
    pub server_pid: u32,
    pub server_start_time: u64,
    /// The scheduler.
    pub scheduler: Member,
    /// The workers, oldest first.
    pub workers: Vec<Member>,
    /// The number of the next worker.
    pub next_worker: u32,
    /// `http://127.0.0.1:<port><dashboard prefix>/api/v1`, the scheduler's HTTP API.
    pub api: String,
    /// The workers wanted now, between `spec.workers` and `spec.max_workers`.
    pub target: u32,
}

impl Cluster {
    fn spawn(&self, argv: &[String]) -> Result<Member, String> {
        let (pid, exit) =
            super::spawn_member(argv, &self.env, &self.dir, &self.log_path, self.server_pid)
                .map_err(|e| e.to_string())?;
        let start_time = proc::read_stat(pid)
            .map(|s| s.start_time)
            .ok_or_else(|| format!("no /proc entry for Dask process {pid}"))?;
        Ok(Member {
            name: String::new(),
            pid,
            start_time,
            exit,
        })
    }

    /// Starts the scheduler (again).
    pub fn start_scheduler(&mut self) -> Result<(), String> {
        self.scheduler = self.spawn(&self.scheduler_argv.clone())?;
        Ok(())
    }

    /// Starts one more worker.
    pub fn start_worker(&mut self) -> Result<(), String> {
        let name = format!("{}-{}", self.stem, self.next_worker);
        let argv = worker_argv(&self.program, &self.address, &name, &self.tls, &self.spec);
        let mut worker = self.spawn(&argv)?;
        worker.name = name;
        self.next_worker += 1;
        self.workers.push(worker);
        Ok(())
    }

    /// Stops every worker.
    fn stop_workers(&mut self) {
        for worker in self.workers.drain(..) {
            worker.terminate();
        }
    }

    /// Writes `line` into the server's log and the hub's.
    fn note(&self, line: &str) {
        tracing::warn!(server_pid = self.server_pid, "{line}");
        let written = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .and_then(|mut log| writeln!(log, "[atelier] {line}"));
        if let Err(e) = written {
            tracing::warn!(log = %self.log_path.display(), "cannot write to the server's log: {e}");
        }
    }
}

/// The next target of a cluster of `current` workers whose scheduler wants `wanted`, within
/// `min..=max`: up at once, down by at most a quarter (at least one) at a time, as the
/// dask-kubernetes autoscaler scales.
pub fn next_target(current: u32, wanted: u32, min: u32, max: u32) -> u32 {
    let bounded = wanted.clamp(min, max.max(min));
    if bounded >= current {
        return bounded;
    }
    let step = (current / 4).max(1);
    bounded.max(current - step)
}

/// The scheduler's adaptive target in the answer of `GET /api/v1/adaptive_target`
/// (`desired_workers`; `workers` in older releases).
pub fn parse_adaptive_target(body: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let n = v
        .get("desired_workers")
        .or_else(|| v.get("workers"))?
        .as_u64()?;
    u32::try_from(n).ok()
}

/// The names of the workers in the answer of `POST /api/v1/retire_workers` (worker address →
/// its info, `name` among it).
pub fn parse_retired(body: &[u8]) -> Vec<String> {
    let Ok(serde_json::Value::Object(retired)) = serde_json::from_slice(body) else {
        return Vec::new();
    };
    retired
        .values()
        .filter_map(|info| match info.get("name")? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
        .collect()
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<hyper::body::Bytes>,
>;

/// `method` `url` with a JSON `body`: the answer's body when it is a success, within 30 s.
async fn call(http: &Http, method: &str, url: &str, body: Option<String>) -> Option<Vec<u8>> {
    use http_body_util::BodyExt;
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            body.unwrap_or_default(),
        )))
        .ok()?;
    let exchange = async {
        let response = http.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        Some(
            response
                .into_body()
                .collect()
                .await
                .ok()?
                .to_bytes()
                .to_vec(),
        )
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .ok()
        .flatten()
}

impl Cluster {
    /// Asks the scheduler for its adaptive target and moves the workers towards it (see the
    /// module documentation). Returns whether anything changed.
    async fn adapt(&mut self, http: &Http) -> bool {
        let Some(body) = call(http, "GET", &format!("{}/adaptive_target", self.api), None).await
        else {
            return false;
        };
        let Some(wanted) = parse_adaptive_target(&body) else {
            return false;
        };
        let current = u32::try_from(self.workers.len()).unwrap_or(u32::MAX);
        let target = next_target(current, wanted, self.spec.workers, self.spec.max_workers);
        if target > current {
            tracing::info!(
                server_pid = self.server_pid,
                wanted,
                target,
                "Dask: scaling up"
            );
            self.target = target;
            return true;
        }
        if target == current {
            return false;
        }
        let n = current - target;
        let request = serde_json::json!({"n": n, "close_workers": true}).to_string();
        let url = format!("{}/retire_workers", self.api);
        let Some(body) = call(http, "POST", &url, Some(request)).await else {
            return false;
        };
        let retired = parse_retired(&body);
        // Their data moved elsewhere: their processes go (the scheduler closed them already).
        let (gone, kept): (Vec<Member>, Vec<Member>) = self
            .workers
            .drain(..)
            .partition(|w| retired.contains(&w.name));
        for worker in &gone {
            worker.terminate();
        }
        self.workers = kept;
        self.target = u32::try_from(self.workers.len())
            .unwrap_or(u32::MAX)
            .max(self.spec.workers);
        tracing::info!(
            server_pid = self.server_pid, wanted, retired = ?retired,
            "Dask: scaled down"
        );
        !gone.is_empty()
    }
}

/// What [`supervise`] does about a scheduler that ended `how`, given the restarts within
/// [`RESTART_WINDOW`] so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again.
    Restart,
    /// Its idle timeout ended it: leave it stopped.
    Idle,
    /// Too many restarts: give up.
    GiveUp,
}

/// The rule of [`supervise`] for a scheduler that ended `how`.
pub fn verdict(how: &str, spec: &LocalDask, recent_restarts: usize) -> Verdict {
    if how == IDLE_EXIT && spec.idle_timeout_seconds.is_some_and(|s| s > 0) {
        Verdict::Idle
    } else if recent_restarts >= MAX_RESTARTS {
        Verdict::GiveUp
    } else {
        Verdict::Restart
    }
}

/// Watches `cluster` while its server runs (see the module documentation), publishing what
/// became of it in `state`.
pub(super) async fn supervise(mut cluster: Cluster, state: watch::Sender<ClusterState>) {
    let mut restarts: Vec<Instant> = Vec::new();
    let mut total = 0u32;
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
    let mut next_adapt = Instant::now() + ADAPT_INTERVAL;
    loop {
        tokio::time::sleep(SUPERVISE_INTERVAL).await;
        if proc::leader(cluster.server_pid, cluster.server_start_time) != Leader::Alive {
            return;
        }
        if let Some(how) = cluster.scheduler.exited() {
            restarts.retain(|at| at.elapsed() < RESTART_WINDOW);
            let stop = |cluster: &mut Cluster, reason: String| {
                cluster.stop_workers();
                cluster.note(&reason);
                state.send_replace(ClusterState::Stopped { reason });
            };
            match verdict(&how, &cluster.spec, restarts.len()) {
                Verdict::Idle => {
                    let secs = cluster.spec.idle_timeout_seconds.unwrap_or_default();
                    let reason = format!(
                        "the Dask cluster stopped after {secs} s without work \
                         (idleTimeoutSeconds); restart the server for a new one"
                    );
                    return stop(&mut cluster, reason);
                }
                Verdict::GiveUp => {
                    let reason = format!(
                        "the Dask scheduler {how}, the {}th time within {} min: the cluster is \
                         given up until the server restarts",
                        MAX_RESTARTS + 1,
                        RESTART_WINDOW.as_secs() / 60
                    );
                    return stop(&mut cluster, reason);
                }
                Verdict::Restart => {
                    restarts.push(Instant::now());
                    total += 1;
                    cluster.stop_workers();
                    cluster.target = cluster.spec.workers;
                    if let Err(e) = cluster.start_scheduler() {
                        let reason =
                            format!("the Dask scheduler {how}, and starting it again failed: {e}");
                        return stop(&mut cluster, reason);
                    }
                    cluster.note(&format!(
                        "the Dask scheduler {how}; started it again on {} with {} worker(s) \
                         (restart {total})",
                        cluster.address, cluster.spec.workers
                    ));
                    state.send_replace(ClusterState::Running { restarts: total });
                }
            }
        }
        cluster.workers.retain(|w| w.exited().is_none());
        if Instant::now() >= next_adapt {
            let changed = cluster.adapt(&http).await;
            next_adapt = Instant::now()
                + if changed {
                    ADAPT_COOLDOWN
                } else {
                    ADAPT_INTERVAL
                };
        }
        // Up to the target: new workers, and those that left while their scheduler runs.
        while cluster.workers.len() < cluster.target as usize {
            if let Err(e) = cluster.start_worker() {
                cluster.note(&format!("starting a Dask worker failed: {e}"));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            ca: "/r/ca.pem".into(),
            cert: "/r/c.pem".into(),
            key: "/r/k.key".into(),
        }
    }

    fn spec() -> LocalDask {
        LocalDask {
            workers: 2,
            max_workers: 4,
            threads: 2,
            memory_limit: Some(2 << 30),
            idle_timeout_seconds: Some(600),
        }
    }

    #[test]
    fn argv_of_scheduler_and_worker() {
        assert_eq!(
            scheduler_argv("/v/bin/dask", 1, 2, "/user/alice/dask", &tls(), &spec()),
            [
                "/v/bin/dask",
                "scheduler",
                "--protocol=tls",
                "--host=127.0.0.1",
                "--port=1",
                "--dashboard-address=127.0.0.1:2",
                "--dashboard-prefix=/user/alice/dask",
                "--no-jupyter",
                "--tls-ca-file=/r/ca.pem",
                "--tls-cert=/r/c.pem",
                "--tls-key=/r/k.key",
                "--idle-timeout=600s",
            ]
        );
        let mut no_idle = spec();
        no_idle.idle_timeout_seconds = Some(0);
        assert!(
            !scheduler_argv("dask", 1, 2, "/p", &tls(), &no_idle)
                .iter()
                .any(|a| a.starts_with("--idle-timeout"))
        );
        assert_eq!(
            worker_argv("dask", "tls://127.0.0.1:1", "alice-0", &tls(), &spec()),
            [
                "dask",
                "worker",
                "tls://127.0.0.1:1",
                "--host=127.0.0.1",
                "--nworkers=1",
                "--nthreads=2",
                "--name=alice-0",
                "--no-dashboard",
                "--death-timeout=60",
                "--memory-limit=2147483648",
                "--tls-ca-file=/r/ca.pem",
                "--tls-cert=/r/c.pem",
                "--tls-key=/r/k.key",
            ]
        );
    }

    #[test]
    fn a_scheduler_is_restarted_unless_idle_or_too_often() {
        let idle = spec();
        assert_eq!(verdict("exited with status 0", &idle, 0), Verdict::Idle);
        assert_eq!(
            verdict("was killed by signal 9", &idle, 0),
            Verdict::Restart
        );
        assert_eq!(verdict("exited with status 1", &idle, 2), Verdict::Restart);
        assert_eq!(
            verdict("exited with status 1", &idle, MAX_RESTARTS),
            Verdict::GiveUp
        );
        let mut no_timeout = spec();
        no_timeout.idle_timeout_seconds = None;
        assert_eq!(
            verdict("exited with status 0", &no_timeout, 0),
            Verdict::Restart,
            "without an idle timeout a clean exit is no idle stop"
        );
    }

    #[test]
    fn targets_within_min_and_max_down_by_a_quarter_at_most() {
        assert_eq!(next_target(1, 0, 1, 4), 1, "never below min");
        assert_eq!(next_target(1, 9, 1, 4), 4, "up at once, never above max");
        assert_eq!(next_target(2, 3, 1, 4), 3);
        assert_eq!(next_target(4, 1, 1, 4), 3, "down by one of four");
        assert_eq!(next_target(8, 0, 2, 8), 6, "down by a quarter");
        assert_eq!(
            next_target(3, 3, 1, 2),
            2,
            "a lowered max lowers the target"
        );
        assert_eq!(next_target(2, 5, 2, 1), 2, "max below min: min");
        assert_eq!(parse_adaptive_target(br#"{"desired_workers": 3}"#), Some(3));
        assert_eq!(parse_adaptive_target(br#"{"workers": 2}"#), Some(2));
        assert_eq!(parse_adaptive_target(b"API V1"), None);
        assert_eq!(
            parse_retired(br#"{"tls://127.0.0.1:1": {"name": "alice-3", "id": "x"}}"#),
            ["alice-3"]
        );
        assert!(parse_retired(br#"{"Error": "Bad request"}"#).is_empty());
    }

    #[test]
    fn server_environment() {
        let env: std::collections::BTreeMap<_, _> = server_env(
            "tls://127.0.0.1:9",
            &tls(),
            &dashboard_link(None, "/user/alice/gpu/"),
        )
        .into_iter()
        .collect();
        assert_eq!(env["DASK_SCHEDULER_ADDRESS"], "tls://127.0.0.1:9");
        assert_eq!(
            env["DASK_DISTRIBUTED__DASHBOARD__LINK"],
            "/user/alice/gpu/dask/status"
        );
        assert_eq!(env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"], "True");
        assert_eq!(env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"], "/r/ca.pem");
        assert_eq!(env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"], "/r/c.pem");
        assert_eq!(env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"], "/r/k.key");
        assert_eq!(
            dashboard_link(Some("https://hub.example/user/alice/"), "/user/alice/"),
            "https://hub.example/user/alice/dask/status"
        );
        assert_eq!(dashboard_prefix("/user/alice/"), "/user/alice/dask");
        assert!(server_only("JUPYTERHUB_API_TOKEN") && server_only("JPY_API_TOKEN"));
        assert!(!server_only("AWS_SECRET_ACCESS_KEY") && !server_only("PATH"));
    }

    #[test]
    fn tls_files_are_private_and_fresh_per_cluster() {
        let dir = std::env::temp_dir().join(format!("atelier-dask-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write_tls(&dir, "alice").unwrap();
        for path in [&files.ca, &files.cert, &files.key] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let ca = std::fs::read_to_string(&files.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        assert!(
            std::fs::read_to_string(&files.key)
                .unwrap()
                .contains("PRIVATE KEY-----")
        );
        // Never overwritten in place.
        assert!(write_tls(&dir, "alice").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        // Another cluster, another CA.
        assert_ne!(make_tls("a").unwrap().0, make_tls("a").unwrap().0);
    }

    #[test]
    fn dask_beside_the_server() {
        let dir = std::env::temp_dir().join(format!("atelier-dask-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dask"), "").unwrap();
        let server = dir.join("jupyterhub-singleuser").display().to_string();
        assert_eq!(
            dask_program(&server),
            dir.join("dask").display().to_string()
        );
        assert_eq!(dask_program("jupyterhub-singleuser"), "dask");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(dask_program(&server), "dask");
    }
}
