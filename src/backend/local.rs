//! The `local` backend: one process per server on a free 127.0.0.1 port, like JupyterHub's
//! LocalProcessSpawner.
//!
//! Each server runs `jupyterhub-singleuser` (or the configured command) with the JupyterHub
//! environment of its spawn request, in its own process group, its HOME and working directory
//! `<state_dir>/users/<user>`, its output appended to `<state_dir>/logs/<user>[~<server>].log`.
//! Processes outlive the hub: the handle (`pid`, `pgid`, `port`, `url`, `start_time`, plus the
//! service prefix and boot id) lets a restarted hub re-adopt them through [`LocalBackend::poll`]
//! and stop them through [`LocalBackend::stop`]. The start time (and boot id) make sure a pid
//! reused by another process is never taken for the server, nor signalled.
//!
//! The handle of each server's latest process is also recorded under `<state_dir>/run/` as soon
//! as the process exists, before it is ready: a start interrupted by a hub crash (SIGKILL, power)
//! never returns its handle to the hub, and the next start of the same server stops that
//! leftover process first, so that a server never runs twice.
//!
//! # Data sources
//!
//! The hub gives a server its data sources as environment (`ATELIER_DATA_<NAME>_*`, `AWS_*`,
//! `IRODS_*`, ...; `policy::data::data_env`) and files (`SpawnRequest::files`: the Intake
//! catalogue, the iRODS environment and password file; [`DATA_FILES`]). [`LocalBackend`] writes
//! the files into the server's data directory, `<state_dir>/run/<user>/default.data/` or
//! `<state_dir>/run/<user>/server-<name>.data/` ([`LocalBackend::data_dir_path`]; mode 0700,
//! files 0600, created afresh before the process starts), and points their variables at them
//! (`ATELIER_DATA_CATALOG`, `IRODS_ENVIRONMENT_FILE`, `IRODS_AUTHENTICATION_FILE`). The
//! directory goes when the server stops, and when its start fails or is abandoned. Nothing is
//! mounted locally: a source the operator would mount (nfs, pvc) is the directory at its
//! `mountPath` on this machine, which the server's processes see as any local process does (the
//! hub refuses a start with such a source whose path is not a directory here), and the
//! catalogue lists it at that path (an s3 or irods source with `csi` is read over the network
//! instead). Neither the environment nor the files are ever logged.
//!
//! # Kinds
//!
//! Every server runs the same command; its kind ([`SpawnRequest::kind`]) decides where it
//! opens (`JUPYTERHUB_DEFAULT_URL`) and what must be installed beside it. [`kinds`] holds the
//! table of requirements per kind and their lookup, which [`LocalBackend::missing_programs`]
//! answers from (cached briefly) and each start repeats afresh, so that a program gone since the
//! hub's check fails the start at once, naming it.

mod dask;
mod desktop;
mod jobs;
pub mod kinds;
mod proc;

use std::collections::{BTreeMap, HashMap};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout};

pub use self::dask::{ClusterState, DaskHandle};
pub use self::jobs::{JobRecord, LocalJobs, SYSTEM as JOBS_SYSTEM, SharedLocalJobs};
use self::proc::Leader;
use super::{
    BackendError, BackendStatus, DATA_FILES, LocalDask, MissingProgram, ProgressEvent,
    SpawnRequest, Spawned, StartRecord, WorkspaceBackend,
};
use crate::api::v1alpha1::WorkspaceKind;
use crate::policy::names;

/// The single-user server JupyterHub runs by default.
pub const SINGLEUSER_COMMAND: &str = "jupyterhub-singleuser";

/// Variables of the hub's own environment passed on to servers (as JupyterHub's
/// `Spawner.env_keep`); nothing else of the hub's environment (database URL, secrets) leaks.
pub const DEFAULT_ENV_KEEP: &[&str] = &[
    "PATH",
    "PYTHONPATH",
    "CONDA_ROOT",
    "CONDA_DEFAULT_ENV",
    "VIRTUAL_ENV",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "JUPYTERHUB_SINGLEUSER_APP",
];

/// How often a starting server is asked whether it answers.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long one "do you answer?" request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a server has to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the group to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often `/proc` is looked at while waiting for a process group to exit.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long `poll` waits for an exited child of ours to be reaped, to tell its exit status.
const REAP_WAIT: Duration = Duration::from_secs(2);
/// How many lines of a failed server's log the user sees.
const LOG_TAIL_LINES: usize = 20;
/// How far back from the end of a log the tail is looked for.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Configuration of the `local` backend.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalConfig {
    /// The server command (program and leading arguments). Empty means [`default_command`].
    pub command: Vec<String>,
    /// More arguments, after `command` and before `--ip`, `--port` (and `--allow-root`).
    pub args: Vec<String>,
    /// Where per-user working directories (`users/<name>`, mode 0700; the server's HOME and
    /// notebook directory) and server logs (`logs/<user>[-<server>].log`) live.
    pub state_dir: PathBuf,
    /// How long a server has to answer before its start fails with `Timeout`.
    pub start_timeout: Duration,
    /// Extra environment for every server (the spawn request's environment wins).
    pub env: BTreeMap<String, String>,
    /// Variables of the hub's environment passed on ([`DEFAULT_ENV_KEEP`]).
    pub env_keep: Vec<String>,
}

impl LocalConfig {
    /// The defaults: [`default_command`], no extra arguments or environment, a 60 s start
    /// timeout (JupyterHub's `Spawner.start_timeout`), state under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> LocalConfig {
        LocalConfig {
            command: default_command(),
            args: Vec::new(),
            state_dir: state_dir.into(),
            start_timeout: Duration::from_secs(60),
            env: BTreeMap::new(),
            env_keep: DEFAULT_ENV_KEEP.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// `jupyterhub-singleuser` from `$ATELIER_PEERS_VENV/bin`, else from `.peers/venv/bin` (under
/// the working directory), else whatever `PATH` finds at spawn time.
pub fn default_command() -> Vec<String> {
    let candidates = std::env::var_os("ATELIER_PEERS_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(".peers/venv")]);
    for venv in candidates {
        let path = venv.join("bin").join(SINGLEUSER_COMMAND);
        if path.is_file() {
            let path = std::path::absolute(&path).unwrap_or(path);
            return vec![path.to_string_lossy().into_owned()];
        }
    }
    vec![SINGLEUSER_COMMAND.to_owned()]
}

/// `path` made absolute against the working directory (lexically, as `std::path::absolute`:
/// symlinks are kept); unchanged when it already is, or when there is no working directory.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Makes a command's program absolute when it is given as a path (a bare name is looked up on
/// `PATH` at spawn time, as before).
pub fn absolute_program(command: &mut [String]) {
    if let Some(program) = command.first_mut()
        && program.contains('/')
    {
        *program = absolute(Path::new(program.as_str()))
            .to_string_lossy()
            .into_owned();
    }
}

/// What the backend stores for a server (serialized as the opaque handle).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalHandle {
    /// The server process.
    pub pid: u32,
    /// Its process group (the server leads it: equal to `pid`).
    pub pgid: u32,
    /// The 127.0.0.1 port it listens on.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Field 22 of `/proc/<pid>/stat` when it started (guards against pid reuse).
    pub start_time: u64,
    /// The server's URL prefix (`/user/<name>/[<server>/]`), to ask `<prefix>api` whether it
    /// answers; without it, poll only checks that the port accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The boot it was started in: after a reboot nothing of it can be alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The directory of its data-source files ([`LocalBackend::data_dir_path`]), removed when
    /// it stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The server's Dask cluster, when it has one (its processes are in the server's group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dask: Option<DaskHandle>,
    /// Where the proxy reaches the cluster's dashboard ([`super::DASHBOARD_KEY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dask_dashboard: Option<String>,
    /// When the process was started (Unix milliseconds): a record older than a row's start
    /// belongs to an earlier start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned_at_ms: Option<i64>,
    /// The hub process that started it (its pid and start time): while it runs, it drives the
    /// start; once it is gone, the start is orphaned ([`LocalBackend::start_record`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned_by: Option<(u32, u64)>,
}

impl LocalHandle {
    /// Reads a stored handle.
    pub fn from_value(value: &Value) -> Result<LocalHandle, BackendError> {
        let handle: LocalHandle = serde_json::from_value(value.clone())
            .map_err(|e| BackendError::BadHandle(format!("not a local handle: {e}")))?;
        if handle.pid <= 1 || handle.pgid != handle.pid {
            return Err(BackendError::BadHandle(format!(
                "pid {} / pgid {} is not a server process group",
                handle.pid, handle.pgid
            )));
        }
        if i32::try_from(handle.pgid).is_err() {
            return Err(BackendError::BadHandle(format!(
                "pgid {} out of range",
                handle.pgid
            )));
        }
        Ok(handle)
    }

    /// The handle as stored by the hub.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a LocalHandle always serializes")
    }

    fn pgid(&self) -> i32 {
        // Checked by `from_value` (and true of every handle `start` makes).
        self.pgid as i32
    }

    /// Whether the handle comes from an earlier boot of this machine.
    fn started_in_earlier_boot(&self) -> bool {
        matches!((&self.boot_id, proc::boot_id()), (Some(then), Some(now)) if *then != now)
    }
}

/// A server process this instance started, and how it ended once its reaper task knows.
struct OwnChild {
    start_time: u64,
    exit: watch::Receiver<Option<String>>,
}

/// The `local` backend (see the module documentation).
pub struct LocalBackend {
    config: LocalConfig,
    http: Client<HttpConnector, Empty<Bytes>>,
    /// The running servers this instance started, by pid, for `poll`'s `Stopped` reason (a
    /// re-adopted server's exit status is not knowable).
    children: Mutex<HashMap<u32, OwnChild>>,
    /// Batch jobs, as processes ([`LocalJobs`]).
    jobs: std::sync::Arc<LocalJobs>,
    /// The supervisors of their Dask clusters, by server pid.
    clusters: Mutex<HashMap<u32, Supervisor>>,
    /// What each kind of workspace lacks here, looked up briefly ([`kinds::KindsCache`]).
    kinds: kinds::KindsCache,
}

impl LocalBackend {
    /// A backend with `config`; an empty `config.command` means [`default_command`].
    ///
    /// The state directory, and the program when it is a relative path (it holds a `/`), are
    /// made absolute here, once, against the working directory: a server runs in its user's
    /// directory, where a relative path would name something else.
    pub fn new(mut config: LocalConfig) -> LocalBackend {
        if config.command.is_empty() {
            config.command = default_command();
        }
        config.state_dir = absolute(&config.state_dir);
        absolute_program(&mut config.command);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let jobs = std::sync::Arc::new(LocalJobs::new(
            config.state_dir.clone(),
            config.env_keep.clone(),
            config.env.clone(),
        ));
        LocalBackend {
            config,
            http,
            children: Mutex::default(),
            jobs,
            clusters: Mutex::default(),
            kinds: kinds::KindsCache::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The log file of `user`'s server `server`: `logs/<user>.log`, `logs/<user>~<server>.log`
    /// ([`names::server_file_stem`]: no two servers share one; with `-`, user `p`'s server `q`
    /// would have written into user `p-q`'s log, and read its tail).
    pub fn log_path(&self, user: &str, server: &str) -> PathBuf {
        let name = format!("{}.log", names::server_file_stem(user, server));
        self.config.state_dir.join("logs").join(name)
    }

    /// The working directory (HOME) of `user`'s servers.
    pub fn user_dir(&self, user: &str) -> PathBuf {
        self.config.state_dir.join("users").join(user)
    }

    /// Where the handle of `user`'s server `server`'s latest process is recorded (one directory
    /// per user: `default.json`, `server-<name>.json`; no two servers share a file).
    pub fn run_record_path(&self, user: &str, server: &str) -> PathBuf {
        let file = if server.is_empty() {
            "default.json".to_owned()
        } else {
            format!("server-{server}.json")
        };
        self.config.state_dir.join("run").join(user).join(file)
    }

    /// The directory of the data-source files of `user`'s server `server`, beside its record:
    /// `run/<user>/default.data`, `run/<user>/server-<name>.data` (records end in `.json`, so
    /// no name makes the two meet).
    pub fn data_dir_path(&self, user: &str, server: &str) -> PathBuf {
        self.run_record_path(user, server).with_extension("data")
    }

    /// Removes a data directory named by a handle, when it is one of this backend's (under
    /// `<state_dir>/run/`, named `*.data`): a handle read back from the database names nothing
    /// else.
    fn remove_data_dir(&self, dir: &Path) {
        let run = self.config.state_dir.join("run");
        let ours = dir.starts_with(&run)
            && dir.extension().is_some_and(|e| e == "data")
            && !dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if !ours {
            tracing::warn!(dir = %dir.display(), "not removing a data directory outside the run directory");
            return;
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "data directory removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a data directory")
            }
        }
    }

    /// The record of `user`'s server `server`'s latest process, if it parses.
    fn read_record(&self, user: &str, server: &str) -> Option<LocalHandle> {
        let text = std::fs::read_to_string(self.run_record_path(user, server)).ok()?;
        LocalHandle::from_value(&serde_json::from_str::<Value>(&text).ok()?).ok()
    }

    /// See [`WorkspaceBackend::start_record`]: the run record of the server's latest process,
    /// when that process was started at or after `since` (a second earlier allowed: the row's
    /// time may be rounded); `Driven` while the hub process that started it (this one included)
    /// still runs.
    pub fn start_record(
        &self,
        user: &str,
        server: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StartRecord {
        let Some(handle) = self.read_record(user, server) else {
            return StartRecord::Unknown;
        };
        let Some(spawned_at) = handle.spawned_at_ms else {
            return StartRecord::Unknown;
        };
        if spawned_at < since.timestamp_millis() - 1000 {
            return StartRecord::Unknown;
        }
        if handle.started_in_earlier_boot() {
            return StartRecord::Orphaned(handle.to_value());
        }
        match handle.spawned_by {
            Some((pid, start_time)) if proc::leader(pid, start_time) == Leader::Alive => {
                StartRecord::Driven
            }
            _ => StartRecord::Orphaned(handle.to_value()),
        }
    }

    /// Stops the process recorded for `user`'s server `server`, if it still runs: a start
    /// interrupted by a hub crash leaves one the hub does not know of.
    async fn stop_leftover(&self, user: &str, server: &str) -> Result<(), BackendError> {
        let Some(handle) = self.read_record(user, server) else {
            return Ok(());
        };
        if !handle.started_in_earlier_boot()
            && proc::leader(handle.pid, handle.start_time) == Leader::Alive
        {
            tracing::warn!(
                user,
                server,
                pid = handle.pid,
                "stopping a leftover process of this server (a start interrupted by a hub crash)"
            );
        }
        terminate_group(&handle, STOP_GRACE).await.map_err(|e| {
            BackendError::SpawnFailed(format!(
                "a leftover process of this server (pid {}) cannot be stopped: {e}",
                handle.pid
            ))
        })?;
        if let Some(dir) = &handle.data_dir {
            self.remove_data_dir(dir);
        }
        Ok(())
    }

    async fn start_server(
        &self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> Result<Spawned, BackendError> {
        let result = self.launch(&request, &progress).await;
        if let Err(err) = &result {
            let message = match err {
                BackendError::Other(_) => "Spawn failed: internal error".to_owned(),
                other => format!("Spawn failed: {other}"),
            };
            send(&progress, 100, message, false, true).await;
        }
        result
    }

    async fn launch(
        &self,
        request: &SpawnRequest,
        progress: &mpsc::Sender<ProgressEvent>,
    ) -> Result<Spawned, BackendError> {
        check_path_name("user name", &request.user, false)?;
        check_path_name("server name", &request.server, true)?;
        let prefix = service_prefix(request);
        send(progress, 10, "Starting server process".into(), false, false).await;

        let user_dir = self.user_dir(&request.user);
        let log_path = self.log_path(&request.user, &request.server);
        prepare_dirs(&user_dir, log_path.parent().expect("logs dir"))
            .map_err(|e| anyhow::anyhow!("preparing the directories of the server: {e}"))?;

        self.stop_leftover(&request.user, &request.server).await?;
        let record_path = self.run_record_path(&request.user, &request.server);
        prepare_dirs(
            record_path.parent().expect("run dir"),
            &self.config.state_dir.join("run"),
        )
        .map_err(|e| anyhow::anyhow!("preparing the run directory: {e}"))?;

        // The data sources' files, before the process exists; gone again unless it starts.
        let data_dir = self.data_dir_path(&request.user, &request.server);
        let mut data_guard = DataDirGuard {
            dir: data_dir.clone(),
            armed: true,
        };
        let data_env = write_data_files(&data_dir, &request.files).map_err(|e| {
            anyhow::anyhow!("writing the data files into {}: {e}", data_dir.display())
        })?;
        let file_names: Vec<&str> = request.files.keys().map(String::as_str).collect();
        let desktop_env = desktop::prepare(request.kind, &file_names, &data_dir)
            .map_err(|e| anyhow::anyhow!("writing the desktop's session script: {e}"))?;
        if !request.files.is_empty() {
            send(
                progress,
                20,
                format!(
                    "Data sources: {} written",
                    request.files.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                false,
                false,
            )
            .await;
        }

        let ports = free_ports(if request.dask.is_some() { 3 } else { 1 })
            .map_err(|e| anyhow::anyhow!("finding a free port: {e}"))?;
        let port = ports[0];
        let url = format!("http://127.0.0.1:{port}");
        // The Dask cluster's ports and TLS material, before the server: its environment names
        // them. The files are in the data directory, so they go with it.
        let cluster = match &request.dask {
            Some(spec) => {
                let tls = dask::write_tls(
                    &data_dir,
                    &names::server_file_stem(&request.user, &request.server),
                )
                .map_err(|e| anyhow::anyhow!("writing the Dask cluster's TLS files: {e}"))?;
                Some(ClusterPlan {
                    spec: spec.clone(),
                    address: format!("tls://127.0.0.1:{}", ports[1]),
                    port: ports[1],
                    dashboard_port: ports[2],
                    tls,
                })
            }
            None => None,
        };
        let dask_env = cluster.as_ref().map(|c| {
            let public = request.env.get("JUPYTERHUB_PUBLIC_URL").map(String::as_str);
            dask::server_env(&c.address, &c.tls, &dask::dashboard_link(public, &prefix))
        });
        let argv = self.argv(port);
        let (log, log_offset) = open_log(&log_path, &argv, port)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", log_path.display()))?;

        // The environment the server and its Dask processes share.
        let mut base_env: Vec<(String, String)> = self
            .config
            .env_keep
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect();
        base_env.extend(self.config.env.clone());
        base_env.extend(request.env.clone());
        base_env.extend(data_env);
        base_env.extend(desktop_env);
        let kind_env = self.prepare_kind(request, &argv[0], &base_env)?;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(base_env.iter().cloned())
            .envs(dask_env.into_iter().flatten())
            .envs(kind_env)
            .envs(server_env(request, &prefix, port, &user_dir))
            .current_dir(&user_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone()
                    .map_err(|e| anyhow::anyhow!("log file: {e}"))?,
            ))
            .stderr(Stdio::from(log))
            // Its own process group: a hub killed with -9 (or a Ctrl-C on the hub's terminal)
            // leaves it running, and stop signals it with everything it started.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|e| {
            BackendError::SpawnFailed(format!("cannot run `{}`: {e}", argv.join(" ")))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the server process vanished at once"))?;
        // An unreaped child always has a /proc entry (at worst a zombie).
        let start_time = proc::read_stat(pid).map(|s| s.start_time);
        let (exit_tx, mut exit_rx) = watch::channel(None::<String>);
        tokio::spawn(async move {
            // Reaps the child so that no zombie remains, and tells how it ended.
            let description = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("could not be waited for ({e})"),
            };
            exit_tx.send_replace(Some(description));
        });
        let Some(start_time) = start_time else {
            return Err(anyhow::anyhow!("no /proc entry for server process {pid}").into());
        };
        let mut guard = KillGuard {
            pgid: pid as i32,
            start_time,
            armed: true,
        };
        tracing::info!(
            user = %request.user, server = %request.server, pid, port,
            "started server process"
        );
        send(
            progress,
            40,
            format!("Server process started (pid {pid}, port {port})"),
            false,
            false,
        )
        .await;

        let mut started = None;
        if let Some(plan) = &cluster {
            let cluster_env: Vec<(String, String)> = base_env
                .iter()
                .filter(|(k, _)| !dask::server_only(k))
                .cloned()
                .chain(dask::tls_env(&plan.tls))
                .chain([
                    ("HOME".to_owned(), user_dir.to_string_lossy().into_owned()),
                    (
                        dask::SCHEDULER_ROUTES.0.to_owned(),
                        dask::SCHEDULER_ROUTES.1.to_owned(),
                    ),
                ])
                .collect();
            let program = dask::dask_program(&argv[0]);
            let dashboard_prefix = dask::dashboard_prefix(&prefix);
            let scheduler_argv = dask::scheduler_argv(
                &program,
                plan.port,
                plan.dashboard_port,
                &dashboard_prefix,
                &plan.tls,
                &plan.spec,
            );
            let (scheduler_pid, scheduler_exit) =
                spawn_member(&scheduler_argv, &cluster_env, &user_dir, &log_path, pid)?;
            let scheduler_start_time = proc::read_stat(scheduler_pid)
                .map(|s| s.start_time)
                .ok_or_else(|| anyhow::anyhow!("no /proc entry for the Dask scheduler"))?;
            let mut members = dask::Cluster {
                program,
                scheduler_argv,
                address: plan.address.clone(),
                tls: plan.tls.clone(),
                spec: plan.spec.clone(),
                stem: names::server_file_stem(&request.user, &request.server),
                env: cluster_env,
                dir: user_dir.clone(),
                log_path: log_path.clone(),
                server_pid: pid,
                server_start_time: start_time,
                scheduler: dask::Member {
                    name: String::new(),
                    pid: scheduler_pid,
                    start_time: scheduler_start_time,
                    exit: scheduler_exit,
                },
                workers: Vec::new(),
                next_worker: 0,
                api: format!(
                    "http://127.0.0.1:{}{dashboard_prefix}/api/v1",
                    plan.dashboard_port
                ),
                target: plan.spec.workers,
            };
            for _ in 0..plan.spec.workers {
                members.start_worker().map_err(BackendError::SpawnFailed)?;
            }
            tracing::info!(
                user = %request.user, server = %request.server, scheduler_pid,
                port = plan.port, workers = plan.spec.workers,
                "started the Dask scheduler and workers"
            );
            send(
                progress,
                50,
                format!("Dask scheduler and {} worker(s) started", plan.spec.workers),
                false,
                false,
            )
            .await;
            let dashboard = format!("http://127.0.0.1:{}", plan.dashboard_port);
            started = Some(StartedCluster {
                handle: DaskHandle {
                    scheduler_pid,
                    scheduler_start_time,
                    address: plan.address.clone(),
                    dashboard: dashboard.clone(),
                    worker_pids: members.workers.iter().map(|w| w.pid).collect(),
                },
                counts_url: format!("{dashboard}{dashboard_prefix}/json/counts.json"),
                workers: plan.spec.workers,
                members,
                ready: false,
            });
        }

        let handle = LocalHandle {
            pid,
            pgid: pid,
            port,
            url: url.clone(),
            start_time,
            prefix: Some(prefix.clone()),
            boot_id: proc::boot_id(),
            data_dir: (!request.files.is_empty() || request.dask.is_some())
                .then(|| data_dir.clone()),
            dask: started.as_ref().map(|c| c.handle.clone()),
            dask_dashboard: started.as_ref().map(|c| c.handle.dashboard.clone()),
            spawned_at_ms: Some(chrono::Utc::now().timestamp_millis()),
            spawned_by: own_process(),
        };
        // Before waiting: a hub killed meanwhile leaves this record as the only trace.
        write_record(&record_path, &handle)
            .map_err(|e| anyhow::anyhow!("recording {}: {e}", record_path.display()))?;
        let api_url = format!("{url}{prefix}api");
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            let exited = exit_rx.borrow_and_update().clone();
            if let Some(description) = exited {
                // Leftovers of its group (if any) go with it.
                let _ = terminate_group(&handle, Duration::ZERO).await;
                guard.armed = false;
                let tail = log_tail(&log_path, log_offset, LOG_TAIL_LINES);
                return Err(BackendError::SpawnFailed(format!(
                    "the server process {description} before it was ready.\n\
                     Last lines of its log:\n{tail}"
                )));
            }
            if let Some(cluster) = &mut started
                && let Some(what) = cluster.exited()
            {
                let _ = terminate_group(&handle, Duration::ZERO).await;
                guard.armed = false;
                let tail = log_tail(&log_path, log_offset, LOG_TAIL_LINES);
                return Err(BackendError::SpawnFailed(format!(
                    "{what} before the Dask cluster was ready.\n\
                     Last lines of the server's log:\n{tail}"
                )));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                tracing::warn!(pid, port, "server did not answer in time, stopping it");
                terminate_group(&handle, STOP_GRACE).await?;
                guard.armed = false;
                let secs = self.config.start_timeout.as_secs_f64().ceil() as u64;
                return Err(BackendError::Timeout(secs));
            }
            let cluster_ready = match &mut started {
                Some(cluster) => {
                    if !cluster.ready {
                        cluster.ready = self
                            .workers_connected(&cluster.counts_url, remaining.min(PROBE_TIMEOUT))
                            .await
                            .is_some_and(|n| n >= u64::from(cluster.workers));
                        if cluster.ready {
                            send(
                                progress,
                                70,
                                format!("Dask cluster ready ({} workers)", cluster.workers),
                                false,
                                false,
                            )
                            .await;
                        }
                    }
                    cluster.ready
                }
                None => true,
            };
            if cluster_ready && self.answers(&api_url, remaining.min(PROBE_TIMEOUT)).await {
                break;
            }
            tokio::select! {
                _ = exit_rx.changed() => {}
                _ = sleep(READY_POLL_INTERVAL.min(remaining)) => {}
            }
        }
        guard.armed = false;
        data_guard.armed = false;
        self.lock_children().insert(
            pid,
            OwnChild {
                start_time,
                exit: exit_rx,
            },
        );
        if let Some(cluster) = started {
            // Watched while the server runs: restarted when it dies, stopped when idle.
            let (state_tx, state) = watch::channel(dask::ClusterState::Running { restarts: 0 });
            let task = tokio::spawn(dask::supervise(cluster.members, state_tx));
            self.lock_clusters().insert(
                pid,
                Supervisor {
                    start_time,
                    state,
                    task,
                },
            );
        }
        tracing::info!(user = %request.user, server = %request.server, pid, port, "server ready");
        send(
            progress,
            100,
            // The path only: the address behind the proxy is not the user's business.
            format!("Server ready at {prefix}"),
            true,
            false,
        )
        .await;
        Ok(Spawned {
            url,
            handle: handle.to_value(),
        })
    }

    /// Program and arguments of a server listening on `port`.
    fn argv(&self, port: u16) -> Vec<String> {
        let mut argv: Vec<String> = self
            .config
            .command
            .iter()
            .chain(&self.config.args)
            .cloned()
            .collect();
        argv.push("--ip=127.0.0.1".to_owned());
        argv.push(format!("--port={port}"));
        if proc::is_root() && !argv.iter().any(|a| a == "--allow-root") {
            argv.push("--allow-root".to_owned());
        }
        argv
    }

    /// The `workers` count of the Dask dashboard's `json/counts.json` at `url`, if it answers.
    async fn workers_connected(&self, url: &str, within: Duration) -> Option<u64> {
        use http_body_util::BodyExt;
        let request = http::Request::get(url).body(Empty::new()).ok()?;
        let fetch = async {
            let response = self.http.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = response.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<Value>(&body).ok()?["workers"].as_u64()
        };
        timeout(within, fetch).await.ok().flatten()
    }

    /// Whether an HTTP GET of `url` gets an answer below 500 within `within`.
    async fn answers(&self, url: &str, within: Duration) -> bool {
        let Ok(request) = http::Request::get(url).body(Empty::new()) else {
            return false;
        };
        matches!(
            timeout(within, self.http.request(request)).await,
            Ok(Ok(response)) if response.status().as_u16() < 500
        )
    }

    async fn stop_server(&self, handle: &Value) -> Result<(), BackendError> {
        let handle = LocalHandle::from_value(handle)?;
        // Its cluster's supervisor first: nothing is started again on the way out.
        if let Some(supervisor) = self.lock_clusters().remove(&handle.pid) {
            supervisor.task.abort();
        }
        let result = terminate_group(&handle, STOP_GRACE).await;
        if result.is_ok() {
            self.lock_children().remove(&handle.pid);
            if let Some(dir) = &handle.data_dir {
                self.remove_data_dir(dir);
            }
        }
        result
    }

    async fn poll_server(&self, handle: &Value) -> Result<BackendStatus, BackendError> {
        let handle = LocalHandle::from_value(handle)?;
        if handle.started_in_earlier_boot() {
            return Ok(stopped("the machine restarted since the server started"));
        }
        match proc::leader(handle.pid, handle.start_time) {
            Leader::Alive => {}
            Leader::Reused => {
                return Ok(stopped(&format!(
                    "the server process {} is gone (its pid now belongs to another process)",
                    handle.pid
                )));
            }
            Leader::Exited => {
                let reason = match self.exit_of(handle.pid, handle.start_time).await {
                    Some(description) => {
                        format!("the server process {} {description}", handle.pid)
                    }
                    None => format!("the server process {} is not running", handle.pid),
                };
                return Ok(stopped(&reason));
            }
        }
        let answers = match &handle.prefix {
            Some(prefix) => {
                self.answers(&format!("{}{prefix}api", handle.url), PROBE_TIMEOUT)
                    .await
            }
            None => matches!(
                timeout(
                    PROBE_TIMEOUT,
                    tokio::net::TcpStream::connect(("127.0.0.1", handle.port))
                )
                .await,
                Ok(Ok(_))
            ),
        };
        if answers && let Some(cluster) = &handle.dask {
            match self.cluster_state(&handle) {
                // Its supervisor restarts it or said why it stopped (the server's log, the
                // hub's): the server still serves either way.
                Some(_) => {}
                // A server this hub did not start (adopted after a restart): nobody watches its
                // cluster, its kernels' `Client()` fails until the next start.
                None if proc::leader(cluster.scheduler_pid, cluster.scheduler_start_time)
                    != Leader::Alive =>
                {
                    tracing::warn!(
                        pid = handle.pid,
                        scheduler_pid = cluster.scheduler_pid,
                        "the server's Dask scheduler is no longer running (idle timeout or crash)"
                    );
                }
                None => {}
            }
        }
        Ok(if answers {
            BackendStatus::Running { url: handle.url }
        } else {
            BackendStatus::Starting
        })
    }

    /// How our child `pid` ended, once reaped (it may still be a zombie a moment).
    async fn exit_of(&self, pid: u32, start_time: u64) -> Option<String> {
        let mut exit = {
            let children = self.lock_children();
            let child = children.get(&pid).filter(|c| c.start_time == start_time)?;
            child.exit.clone()
        };
        match timeout(REAP_WAIT, exit.wait_for(Option::is_some)).await {
            Ok(Ok(description)) => (*description).clone(),
            _ => None,
        }
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, HashMap<u32, OwnChild>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_clusters(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Supervisor>> {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the supervisor of `handle`'s cluster saw of it, when this instance started it.
    pub fn cluster_state(&self, handle: &LocalHandle) -> Option<dask::ClusterState> {
        let clusters = self.lock_clusters();
        let supervisor = clusters
            .get(&handle.pid)
            .filter(|s| s.start_time == handle.start_time)?;
        Some(supervisor.state.borrow().clone())
    }
}

/// Kinds of workspace ([`kinds`]): what each lacks here, and what a server of each gets.
impl LocalBackend {
    /// The environment a server would look its programs up in: the hub's variables the
    /// backend passes on (`env_keep`), overridden by the backend's own `env`.
    fn kinds_environment(&self) -> kinds::Environment {
        let var = |k: &str| {
            self.config.env.get(k).cloned().or_else(|| {
                self.config
                    .env_keep
                    .iter()
                    .any(|kept| kept == k)
                    .then(|| std::env::var(k).ok())
                    .flatten()
            })
        };
        kinds::Environment::of(self.program(), var)
    }

    /// The server program (the first word of the command).
    fn program(&self) -> &str {
        self.config
            .command
            .first()
            .map_or(SINGLEUSER_COMMAND, String::as_str)
    }

    /// Checks, afresh, that `request`'s kind can run with the server's environment `env` (the
    /// hub checked with a cached answer; a program removed since then fails the start here,
    /// at once, naming it), writes what the kind needs under the state directory, and returns
    /// the kind's environment (`JUPYTERHUB_DEFAULT_URL` unless the request sets one; for `r`
    /// the `ir` kernel's `JUPYTER_PATH` and `JUPYTER_CONFIG_PATH`).
    fn prepare_kind(
        &self,
        request: &SpawnRequest,
        program: &str,
        env: &[(String, String)],
    ) -> Result<Vec<(String, String)>, BackendError> {
        let var = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let environment = kinds::Environment::of(program, var);
        let missing = environment.missing(request.kind);
        if !missing.is_empty() {
            return Err(BackendError::SpawnFailed(kinds::describe_missing(
                request.kind,
                &missing,
            )));
        }
        let vars = kinds::prepare(&self.config.state_dir, request.kind, &environment, var)
            .map_err(|e| anyhow::anyhow!("preparing a {} workspace: {e}", request.kind.as_str()))?;
        Ok(vars
            .into_iter()
            .filter(|(k, _)| {
                k != "JUPYTERHUB_DEFAULT_URL" || !request.env.contains_key("JUPYTERHUB_DEFAULT_URL")
            })
            .collect())
    }
}

impl WorkspaceBackend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn missing_programs(&self, kind: WorkspaceKind) -> Vec<MissingProgram> {
        self.kinds.missing(kind, || self.kinds_environment())
    }

    fn start_record(
        &self,
        user: &str,
        server: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StartRecord {
        LocalBackend::start_record(self, user, server, since)
    }

    fn local_jobs(&self) -> Option<std::sync::Arc<LocalJobs>> {
        Some(self.jobs.clone())
    }

    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>> {
        Box::pin(self.start_server(request, progress))
    }

    fn stop<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.stop_server(handle))
    }

    fn poll<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<BackendStatus, BackendError>> {
        Box::pin(self.poll_server(handle))
    }
}

/// The Dask cluster a start is about to run.
struct ClusterPlan {
    spec: LocalDask,
    address: String,
    port: u16,
    dashboard_port: u16,
    tls: dask::TlsFiles,
}

/// A starting server's Dask cluster.
struct StartedCluster {
    handle: DaskHandle,
    /// The dashboard's `json/counts.json`.
    counts_url: String,
    workers: u32,
    /// Its processes, handed to [`dask::supervise`] once the server is ready.
    members: dask::Cluster,
    /// Every worker connected.
    ready: bool,
}

impl StartedCluster {
    /// Which of its processes exited, and how, if one did.
    fn exited(&mut self) -> Option<String> {
        if let Some(how) = self.members.scheduler.exit.borrow_and_update().clone() {
            return Some(format!("the Dask scheduler {how}"));
        }
        self.members
            .workers
            .iter_mut()
            .enumerate()
            .find_map(|(i, worker)| {
                worker
                    .exit
                    .borrow_and_update()
                    .clone()
                    .map(|how| format!("Dask worker {i} {how}"))
            })
    }
}

/// The supervisor of a running server's cluster ([`dask::supervise`]).
struct Supervisor {
    /// The server's start time (its pid may be reused).
    start_time: u64,
    state: watch::Receiver<dask::ClusterState>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts one process of a server's Dask cluster in the server's process group `pgid`, its
/// output appended to the server's log; returns its pid and how it ends (a task reaps it).
fn spawn_member(
    argv: &[String],
    env: &[(String, String)],
    dir: &Path,
    log_path: &Path,
    pgid: u32,
) -> Result<(u32, watch::Receiver<Option<String>>), BackendError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", log_path.display()))?;
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().cloned())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            log.try_clone()
                .map_err(|e| anyhow::anyhow!("log file: {e}"))?,
        ))
        .stderr(Stdio::from(log))
        .process_group(pgid as i32)
        .kill_on_drop(false);
    let mut child = command
        .spawn()
        .map_err(|e| BackendError::SpawnFailed(format!("cannot run `{}`: {e}", argv.join(" "))))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("a Dask process vanished at once"))?;
    let (tx, rx) = watch::channel(None::<String>);
    tokio::spawn(async move {
        let description = match child.wait().await {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not be waited for ({e})"),
        };
        tx.send_replace(Some(description));
    });
    Ok((pid, rx))
}

/// Kills a starting server's process group when the start does not finish (error, or the
/// start future dropped by a hub shutting down or a cancelled spawn).
struct KillGuard {
    pgid: i32,
    start_time: u64,
    armed: bool,
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!(pgid = self.pgid, "start abandoned, killing the server");
            if let Err(e) = proc::signal_group(self.pgid, self.start_time, libc::SIGKILL) {
                tracing::warn!(pgid = self.pgid, "killing an abandoned server: {e}");
            }
        }
    }
}

/// Removes a starting server's data directory when the start does not finish (error, or the
/// start future dropped).
struct DataDirGuard {
    dir: PathBuf,
    armed: bool,
}

impl Drop for DataDirGuard {
    fn drop(&mut self) {
        if self.armed {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    dir = %self.dir.display(), error = %e,
                    "cannot remove the data directory of an abandoned start"
                ),
            }
        }
    }
}

/// Writes `files` into `dir`, made afresh (mode 0700, each file 0600), and returns the
/// variables pointing at them ([`DATA_FILES`]). With no files, only removes what an earlier
/// run left. A file name that is not one of [`DATA_FILES`] is refused (it names no variable,
/// and could name a path).
fn write_data_files(
    dir: &Path,
    files: &BTreeMap<String, String>,
) -> std::io::Result<Vec<(String, String)>> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if files.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(name) = files
        .keys()
        .find(|name| !DATA_FILES.iter().any(|(file, _)| file == name))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a data file of a workspace"),
        ));
    }
    DirBuilder::new().mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let mut env = Vec::new();
    for (file, var) in DATA_FILES {
        let Some(content) = files.get(file) else {
            continue;
        };
        let path = dir.join(file);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        out.write_all(content.as_bytes())?;
        out.sync_all()?;
        env.push((var.to_owned(), path.to_string_lossy().into_owned()));
    }
    Ok(env)
}

/// Stops the server's process group: SIGTERM, up to `grace` to exit, then SIGKILL. Ok when
/// nothing of it is (or was) left.
async fn terminate_group(handle: &LocalHandle, grace: Duration) -> Result<(), BackendError> {
    if handle.started_in_earlier_boot() {
        return Ok(());
    }
    let pgid = handle.pgid();
    if proc::leader(handle.pid, handle.start_time) == Leader::Reused {
        // Its pid (hence its group number) belongs to another process: nothing of ours is left.
        return Ok(());
    }
    if proc::group_members(pgid).is_empty() {
        return Ok(());
    }
    let signal = |sig| {
        proc::signal_group(pgid, handle.start_time, sig)
            .map_err(|e| anyhow::anyhow!("signalling process group {pgid}: {e}"))
    };
    if !grace.is_zero() {
        signal(libc::SIGTERM)?;
        if wait_group_gone(pgid, grace).await {
            tracing::info!(pgid, "server stopped");
            return Ok(());
        }
        tracing::warn!(pgid, "server ignored SIGTERM, sending SIGKILL");
    }
    signal(libc::SIGKILL)?;
    if wait_group_gone(pgid, KILL_WAIT).await {
        Ok(())
    } else {
        Err(anyhow::anyhow!("process group {pgid} still alive after SIGKILL").into())
    }
}

/// Waits up to `within` for process group `pgid` to have no live member.
async fn wait_group_gone(pgid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if proc::group_members(pgid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(EXIT_POLL_INTERVAL).await;
    }
}

fn stopped(reason: &str) -> BackendStatus {
    BackendStatus::Stopped {
        reason: Some(reason.to_owned()),
    }
}

async fn send(
    progress: &mpsc::Sender<ProgressEvent>,
    percent: u8,
    message: String,
    ready: bool,
    failed: bool,
) {
    // A hub that stopped listening does not stop the spawn.
    let _ = progress
        .send(ProgressEvent {
            progress: percent,
            message,
            ready,
            failed,
        })
        .await;
}

/// Names become path components: no separators, no `.`/`..`, no NUL.
fn check_path_name(what: &str, name: &str, may_be_empty: bool) -> Result<(), BackendError> {
    let bad = (name.is_empty() && !may_be_empty)
        || name == "."
        || name == ".."
        || name.contains(['/', '\0']);
    if bad {
        Err(BackendError::SpawnFailed(format!(
            "invalid {what} for a local server: {name:?}"
        )))
    } else {
        Ok(())
    }
}

/// `JUPYTERHUB_SERVICE_PREFIX` of the request (made to end with `/`), else
/// `/user/<user>/[<server>/]`.
fn service_prefix(request: &SpawnRequest) -> String {
    match request.env.get("JUPYTERHUB_SERVICE_PREFIX") {
        Some(prefix) if !prefix.is_empty() => {
            let mut prefix = prefix.clone();
            if !prefix.starts_with('/') {
                prefix.insert(0, '/');
            }
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            prefix
        }
        _ => crate::policy::names::service_prefix(&request.user, &request.server),
    }
}

/// What the backend adds to (or fills in) the request's environment.
fn server_env(
    request: &SpawnRequest,
    prefix: &str,
    port: u16,
    user_dir: &Path,
) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "JUPYTERHUB_SERVICE_URL".to_owned(),
            format!("http://127.0.0.1:{port}{prefix}"),
        ),
        ("HOME".to_owned(), user_dir.to_string_lossy().into_owned()),
    ];
    let defaults = [
        ("JUPYTERHUB_SERVICE_PREFIX", prefix),
        ("JUPYTERHUB_USER", request.user.as_str()),
        ("JUPYTERHUB_SERVER_NAME", request.server.as_str()),
    ];
    for (key, value) in defaults {
        if !request.env.contains_key(key) {
            env.push((key.to_owned(), value.to_owned()));
        }
    }
    env
}

/// This hub process: its pid and start time ([`LocalHandle::spawned_by`]).
fn own_process() -> Option<(u32, u64)> {
    let pid = std::process::id();
    proc::read_stat(pid).map(|stat| (pid, stat.start_time))
}

/// Writes `handle` to `path` (mode 0600) atomically.
fn write_record(path: &Path, handle: &LocalHandle) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(handle.to_value().to_string().as_bytes())?;
    }
    std::fs::rename(&tmp, path)
}

/// Creates the user's directory and the logs directory (mode 0700).
fn prepare_dirs(user_dir: &Path, logs_dir: &Path) -> std::io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(user_dir)?;
    builder.create(logs_dir)?;
    // Existing directories keep their mode with `create`: make sure of it.
    std::fs::set_permissions(user_dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(logs_dir, std::fs::Permissions::from_mode(0o700))
}

/// Opens the log for appending, marks the start of a run in it and returns where this run's
/// output begins.
fn open_log(path: &Path, argv: &[String], port: u16) -> std::io::Result<(File, u64)> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    writeln!(log, "[atelier] starting on port {port}: {}", argv.join(" "))?;
    let offset = log.metadata()?.len();
    Ok((log, offset))
}

/// The last `lines` lines written to `path` after `offset`.
fn log_tail(path: &Path, offset: u64, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let from = offset.max(len.saturating_sub(LOG_TAIL_BYTES));
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            if tail.trim().is_empty() {
                "(nothing)".to_owned()
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("exited ({status})"),
    }
}

/// `n` distinct ports that were free on 127.0.0.1 a moment ago, all held at once while they are
/// chosen, so no two are the same, and none handed out by this process in the last
/// [`PORT_HOLD`] (see [`HANDED_OUT`]).
///
/// Taken below the kernel's range of ephemeral ports (`ip_local_port_range`) when it leaves room
/// there: a port of that range (JupyterHub's `random_port`, a bind to port 0) can be taken,
/// between the check and the server's own bind, by any connection the machine opens meanwhile,
/// and under a thousand clients one was (`httpd: bind: Address already in use`, a start failed).
/// Below it, only a program binding that very port collides. Bound to port 0 otherwise.
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let below = ports_below_ephemeral();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    handed_out.retain(|_, at| at.elapsed() < PORT_HOLD);
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let mut chosen = None;
        if let Some((low, span)) = below {
            for _ in 0..64 {
                // Without the system's random numbers, the kernel's choice (port 0) below.
                let Ok(random) = getrandom::u64() else { break };
                let port = low + (random % u64::from(span)) as u16;
                if handed_out.contains_key(&port) {
                    continue;
                }
                if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                    chosen = Some(listener);
                    break;
                }
            }
        }
        let listener = match chosen {
            Some(listener) => listener,
            None => std::net::TcpListener::bind(("127.0.0.1", 0))?,
        };
        listeners.push(listener);
    }
    let ports = listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<Vec<u16>>>()?;
    let now = std::time::Instant::now();
    for port in &ports {
        handed_out.insert(*port, now);
    }
    Ok(ports)
}

/// The ports [`free_ports`] handed out lately, with when. A port is free when chosen but only
/// bound later, by the server once it runs: two starts at once (two hubs of one process, as in
/// the tests, or one hub's concurrent starts) could otherwise both be given it, and the second
/// server would fail to bind (`tests/resilience_load.rs`, 200 starts at once: it happened).
static HANDED_OUT: Mutex<BTreeMap<u16, std::time::Instant>> = Mutex::new(BTreeMap::new());

/// How long a handed-out port is not handed out again: past any server's start.
const PORT_HOLD: Duration = Duration::from_secs(600);

/// The lowest port [`free_ports`] takes.
const LOWEST_SERVER_PORT: u16 = 10_000;

/// `(first port, how many)` below the kernel's ephemeral ports, from `LOWEST_SERVER_PORT`; `None`
/// when fewer than 1,000 ports are there or the range cannot be read.
fn ports_below_ephemeral() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let first: u16 = range.split_whitespace().next()?.parse().ok()?;
    let span = first.checked_sub(LOWEST_SERVER_PORT)?;
    (span >= 1_000).then_some((LOWEST_SERVER_PORT, span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_ones() {
        let ports = free_ports(3).unwrap();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        if let Some((low, span)) = ports_below_ephemeral() {
            for port in &ports {
                assert!(
                    (low..low + span).contains(port),
                    "{port} not in {low}+{span}"
                );
            }
        }
        // Each is free: a server can bind it.
        for port in ports {
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }

    #[test]
    fn a_port_is_not_handed_out_twice_while_its_server_starts() {
        // 2,000 ports one at a time, none bound meanwhile (as servers still starting): chosen
        // at random among the ~22,000 below the ephemeral range, some would repeat.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let port = free_ports(1).unwrap()[0];
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    fn request(user: &str, server: &str) -> SpawnRequest {
        SpawnRequest {
            user: user.into(),
            server: server.into(),
            groups: vec![],
            profile: None,
            user_options: json!({}),
            env: BTreeMap::new(),
            files: BTreeMap::new(),
            dask: None,
            kind: Default::default(),
        }
    }

    #[test]
    fn prefix_defaults_and_normalization() {
        assert_eq!(service_prefix(&request("alice", "")), "/user/alice/");
        assert_eq!(service_prefix(&request("alice", "gpu")), "/user/alice/gpu/");
        let mut r = request("alice", "");
        r.env
            .insert("JUPYTERHUB_SERVICE_PREFIX".into(), "hub/user/alice".into());
        assert_eq!(service_prefix(&r), "/hub/user/alice/");
    }

    #[test]
    fn paths_are_absolute_and_per_server() {
        let cwd = std::env::current_dir().unwrap();
        let mut config = LocalConfig::new(".atelier");
        config.command = vec![
            ".atelier/venv/bin/jupyterhub-singleuser".into(),
            "-v".into(),
        ];
        let backend = LocalBackend::new(config);
        let state = cwd.join(".atelier");
        assert_eq!(backend.config().state_dir, state);
        assert_eq!(
            backend.config().command,
            vec![
                state
                    .join("venv/bin/jupyterhub-singleuser")
                    .display()
                    .to_string(),
                "-v".into()
            ]
        );
        assert_eq!(backend.user_dir("alice"), state.join("users/alice"));
        // User p's server q and user p-q's default server do not share a log.
        assert_eq!(backend.log_path("p-q", ""), state.join("logs/p-q.log"));
        assert_eq!(backend.log_path("p", "q"), state.join("logs/p~q.log"));
        // A program looked up on PATH stays a name.
        let mut config = LocalConfig::new("/srv/atelier");
        config.command = vec![SINGLEUSER_COMMAND.into()];
        assert_eq!(
            LocalBackend::new(config).config().command,
            vec![SINGLEUSER_COMMAND]
        );
    }

    #[test]
    fn names_must_be_path_components() {
        assert!(check_path_name("user name", "alice@example.org", false).is_ok());
        assert!(check_path_name("server name", "", true).is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_path_name("user name", bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_start_record_names_its_hub_process() {
        let dir = std::env::temp_dir().join(format!(
            "atelier-start-record-{}",
            crate::store::tokens::generate_token()
        ));
        let backend = LocalBackend::new(LocalConfig::new(&dir));
        let path = backend.run_record_path("ada", "");
        prepare_dirs(path.parent().unwrap(), &dir.join("run")).unwrap();
        let since = chrono::Utc::now();
        assert_eq!(backend.start_record("ada", "", since), StartRecord::Unknown);
        let me = own_process().expect("this process's stat");
        let mut handle = LocalHandle {
            pid: 4242,
            pgid: 4242,
            port: 1,
            url: "http://127.0.0.1:1".into(),
            start_time: 1,
            prefix: None,
            boot_id: None,
            data_dir: None,
            dask: None,
            dask_dashboard: None,
            spawned_at_ms: Some(since.timestamp_millis()),
            spawned_by: Some(me),
        };
        write_record(&path, &handle).unwrap();
        // Its hub process (this one) runs: it drives the start.
        assert_eq!(backend.start_record("ada", "", since), StartRecord::Driven);
        // Its hub process is gone (same pid, another start time): orphaned, with its handle.
        handle.spawned_by = Some((me.0, me.1 + 1));
        write_record(&path, &handle).unwrap();
        assert_eq!(
            backend.start_record("ada", "", since),
            StartRecord::Orphaned(handle.to_value())
        );
        // A record of an earlier start is not this start's.
        let later = since + chrono::Duration::seconds(5);
        assert_eq!(backend.start_record("ada", "", later), StartRecord::Unknown);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn handle_round_trip_and_validation() {
        let handle = LocalHandle {
            pid: 1234,
            pgid: 1234,
            port: 5678,
            url: "http://127.0.0.1:5678".into(),
            start_time: 99,
            prefix: None,
            boot_id: None,
            data_dir: None,
            dask: None,
            dask_dashboard: None,
            spawned_at_ms: None,
            spawned_by: None,
        };
        let value = handle.to_value();
        assert_eq!(
            value,
            json!({"pid": 1234, "pgid": 1234, "port": 5678,
                   "url": "http://127.0.0.1:5678", "start_time": 99})
        );
        assert_eq!(LocalHandle::from_value(&value).unwrap(), handle);
        for bad in [
            json!({"name": "ws-alice"}),
            json!({"pid": 1234, "pgid": 1, "port": 1, "url": "", "start_time": 0}),
            json!({"pid": 1, "pgid": 1, "port": 1, "url": "", "start_time": 0}),
            json!({"pid": 0, "pgid": 0, "port": 1, "url": "", "start_time": 0}),
        ] {
            assert!(matches!(
                LocalHandle::from_value(&bad),
                Err(BackendError::BadHandle(_))
            ));
        }
    }

    /// The kind's default URL unless the request has one (`user_options.default_url`); a kind
    /// that cannot run here is refused before anything is written for it.
    #[test]
    fn a_kind_sets_the_default_url_unless_the_request_does() {
        let dir = std::env::temp_dir().join(format!("atelier-local-kind-{}", std::process::id()));
        let backend = LocalBackend::new(LocalConfig::new(&dir));
        let env = vec![("PATH".to_owned(), "/nonexistent".to_owned())];
        let mut r = request("ada", "");
        assert_eq!(
            backend
                .prepare_kind(&r, "/x/bin/jupyterhub-singleuser", &env)
                .unwrap(),
            vec![("JUPYTERHUB_DEFAULT_URL".to_owned(), "/lab".to_owned())]
        );
        r.env
            .insert("JUPYTERHUB_DEFAULT_URL".into(), "/tree".into());
        assert!(
            backend
                .prepare_kind(&r, "/x/bin/jupyterhub-singleuser", &env)
                .unwrap()
                .is_empty()
        );
        r.kind = WorkspaceKind::R;
        match backend.prepare_kind(&r, "/x/bin/jupyterhub-singleuser", &env) {
            Err(BackendError::SpawnFailed(m)) => {
                assert!(
                    m.contains("missing R (provided by Debian package r-base-core"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.join("kinds").exists());
    }

    #[test]
    fn env_fills_in_without_overriding() {
        let mut r = request("alice", "");
        r.env.insert("JUPYTERHUB_USER".into(), "alice".into());
        let env: BTreeMap<_, _> = server_env(&r, "/user/alice/", 4321, Path::new("/s/users/alice"))
            .into_iter()
            .collect();
        assert_eq!(
            env["JUPYTERHUB_SERVICE_URL"],
            "http://127.0.0.1:4321/user/alice/"
        );
        assert_eq!(env["HOME"], "/s/users/alice");
        assert_eq!(env["JUPYTERHUB_SERVICE_PREFIX"], "/user/alice/");
        assert_eq!(env["JUPYTERHUB_SERVER_NAME"], "");
        assert!(!env.contains_key("JUPYTERHUB_USER"));
    }

    #[test]
    fn log_tail_reads_only_this_run() {
        let dir = std::env::temp_dir().join(format!("atelier-local-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        std::fs::write(&path, "old run\n").unwrap();
        let (mut log, offset) = open_log(&path, &["cmd".into()], 1).unwrap();
        for i in 0..30 {
            writeln!(log, "line {i}").unwrap();
        }
        let tail = log_tail(&path, offset, 20);
        assert!(tail.starts_with("line 10\n"), "{tail}");
        assert!(tail.ends_with("line 29"), "{tail}");
        let (_, offset) = open_log(&path, &["cmd".into()], 1).unwrap();
        assert_eq!(log_tail(&path, offset, 20), "(nothing)");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
