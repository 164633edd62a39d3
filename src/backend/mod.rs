//! Workspace backends: where the hub's servers actually run.
//!
//! - `local`: one `jupyterhub-singleuser` (or configured command) process per server on a free
//!   127.0.0.1 port, like JupyterHub's LocalProcessSpawner (the embedded default and the tests);
//! - `kubernetes`: one `Workspace` resource per server; the operator does the rest;
//! - `instant`: servers ready at once with nothing behind them, for the benchmarks and the
//!   resilience tests (never offered by the `atelier` command).
//!
//! The hub owns the database; a backend only starts, stops and observes servers. Everything a
//! backend needs to find a server again after a hub restart is in the opaque `handle` it returns
//! (stored by the hub as the server's `spawner_state`).

pub mod instant;
pub mod kubernetes;
pub mod local;

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::v1alpha1::WorkspaceKind;

/// The files of a workspace's data sources the local backend writes (`SpawnRequest::files`),
/// each with the variable that points the clients at it: the Intake catalogue
/// (`policy::data::intake_catalog`), the iRODS client environment
/// (`policy::data::irods_environment`), its `.irodsA` password file
/// (`policy::data::irods_auth_file`), and a QGIS desktop's seed (`policy::desktop`), read by
/// QGIS from `QGIS_GLOBAL_SETTINGS_FILE`.
pub const DATA_FILES: [(&str, &str); 4] = [
    (DATA_CATALOG_FILE, crate::policy::data::CATALOG_ENV),
    (IRODS_ENVIRONMENT_FILE, "IRODS_ENVIRONMENT_FILE"),
    (IRODS_AUTHENTICATION_FILE, "IRODS_AUTHENTICATION_FILE"),
    (
        crate::policy::desktop::SETTINGS_FILE,
        crate::policy::desktop::SETTINGS_ENV,
    ),
];
/// The Intake catalogue of a workspace's data sources.
pub const DATA_CATALOG_FILE: &str = "catalog.yaml";
/// The iRODS client environment.
pub const IRODS_ENVIRONMENT_FILE: &str = "irods_environment.json";
/// The iRODS password file (obfuscated with the server process's uid).
pub const IRODS_AUTHENTICATION_FILE: &str = ".irodsA";

/// What the hub asks a backend to start. Its `Debug` shows the names of the environment's
/// variables and of the files, never their values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Owner.
    pub user: String,
    /// Server name ("" for the default server).
    pub server: String,
    /// The owner's groups (the kubernetes backend writes them as `atelier.dev/groups`).
    pub groups: Vec<String>,
    /// WorkspaceProfile name chosen on the spawn form, if any.
    pub profile: Option<String>,
    /// The user options of the spawn request (JupyterHub's `user_options`): resources, node
    /// pool, data sources, ...
    pub user_options: Value,
    /// The JupyterHub single-user environment computed by the hub (`JUPYTERHUB_API_TOKEN`,
    /// `JUPYTERHUB_API_URL`, `JUPYTERHUB_SERVICE_PREFIX`, `JUPYTERHUB_CLIENT_ID`, ...). The
    /// kubernetes backend hands only the token on (in the Secret the operator reads); the
    /// operator computes the rest of the pod's environment itself.
    pub env: BTreeMap<String, String>,
    /// Files the server gets, by name ([`DATA_FILES`]; they may hold credentials): the local
    /// backend writes them into a directory of the server's own (mode 0700, files 0600) and
    /// points their variables at them; the kubernetes backend ignores them (the operator builds
    /// a pod's files itself). Never serialized, stored or logged.
    #[serde(skip)]
    pub files: BTreeMap<String, String>,
    /// The Dask cluster the local backend starts beside the server (`None`: none), as the hub
    /// computed it from the catalogue (`Catalog::local_dask`). The kubernetes backend ignores it
    /// (the operator builds the cluster from `spec.dask`). No credentials: the backend makes
    /// the cluster's TLS material itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dask: Option<LocalDask>,
    /// What the server runs, as the hub resolved it from the profile (and the request's
    /// `kind` where the profile allows an override). The local backend starts the matching
    /// application (JupyterLab, the R kernel, RStudio, a QGIS desktop); the kubernetes backend
    /// leaves it to the operator, which reads the profile itself.
    #[serde(default)]
    pub kind: WorkspaceKind,
}

/// A program a backend lacks to run a kind of workspace ([`WorkspaceBackend::missing_programs`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingProgram {
    /// The program, as looked up on the `PATH` (e.g. `Xvnc`, `rserver`).
    pub program: String,
    /// What provides it, in words an admin can act on (e.g. `Debian package
    /// tigervnc-standalone-server`, `atelier up --install qgis`).
    pub provided_by: String,
}

/// A local Dask cluster: a scheduler and `workers` workers (see `backend::local`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDask {
    /// Workers started with the cluster and kept when it is idle (the validated `min`, at
    /// least 1).
    pub workers: u32,
    /// Most workers it scales to when the scheduler's adaptive target asks for more (the
    /// validated `max` after caps, at most this machine's CPUs, at least `workers`).
    pub max_workers: u32,
    /// Threads per worker (the worker's CPU, rounded up).
    pub threads: u32,
    /// Memory limit per worker in bytes (`None`: distributed's default).
    pub memory_limit: Option<u64>,
    /// The scheduler's `--idle-timeout` in seconds (`None`: none).
    pub idle_timeout_seconds: Option<u64>,
}

/// Where a server's Dask dashboard is, and how its handle says so (the proxy reads them too, so
/// they live in `policy::names`).
pub use crate::policy::names::{DASHBOARD_KEY, DASHBOARD_SEGMENT, dashboard_target};

impl std::fmt::Debug for SpawnRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnRequest")
            .field("user", &self.user)
            .field("server", &self.server)
            .field("groups", &self.groups)
            .field("profile", &self.profile)
            .field("user_options", &self.user_options)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("dask", &self.dask)
            .field("kind", &self.kind)
            .finish()
    }
}

/// A server the backend started (or found running).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spawned {
    /// Where the proxy reaches the server, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The backend's handle to find the server again (pid and port, Workspace name, ...).
    pub handle: Value,
}

/// A server's state as the backend observes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BackendStatus {
    /// Started and answering at `url`.
    Running {
        /// Where the server is reached.
        url: String,
    },
    /// Still starting.
    Starting,
    /// Not running (exited, never started, or removed).
    Stopped {
        /// Why, when known (exit status, ...).
        reason: Option<String>,
    },
    /// It cannot run.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// One step of a spawn, as JupyterHub's progress API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// 0 to 100.
    pub progress: u8,
    /// Human-readable message.
    pub message: String,
    /// Set on the last event when the server is ready.
    #[serde(default)]
    pub ready: bool,
    /// Set on the last event when the spawn failed.
    #[serde(default)]
    pub failed: bool,
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The server could not be started (bad command, image, refused by a rule, ...): the user
    /// sees the message.
    #[error("{0}")]
    SpawnFailed(String),
    /// The server did not become ready in time.
    #[error("the server did not start within {0} seconds")]
    Timeout(u64),
    /// The handle stored for the server is not one of this backend's.
    #[error("invalid backend handle: {0}")]
    BadHandle(String),
    /// Anything else (I/O, API errors): logged, not shown.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A place where workspaces run. Dyn-compatible: the hub holds an `Arc<dyn WorkspaceBackend>`.
pub trait WorkspaceBackend: Send + Sync + 'static {
    /// `local` or `kubernetes`.
    fn kind(&self) -> &'static str;

    /// Starts a server and resolves when it is ready (or has failed), sending progress events
    /// on the way. Dropping the future must not leave an orphan behind: a backend that cannot
    /// finish a start stops what it began.
    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>>;

    /// Stops the server behind `handle`; idempotent (stopping a stopped server is Ok).
    fn stop<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Observes the server behind `handle` (used to notice exits and to re-adopt servers after a
    /// hub restart).
    fn poll<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<BackendStatus, BackendError>>;

    /// Where this backend runs batch jobs as local processes (the `local` backend); `None`
    /// for a backend whose jobs run elsewhere (the kubernetes backend writes BatchJobs).
    fn local_jobs(&self) -> Option<std::sync::Arc<local::LocalJobs>> {
        None
    }

    /// Where this backend writes its batch jobs as BatchJob resources (the kubernetes backend);
    /// `None` for a backend that runs them itself ([`WorkspaceBackend::local_jobs`]).
    fn batch_jobs(&self) -> Option<kubernetes::BatchJobs> {
        None
    }

    /// The programs this backend lacks to run `kind` (empty: it can run it). The hub hides the
    /// profiles of such a kind from the spawn page (explaining why on /hub/admin) and refuses
    /// their starts with a 400 naming the missing programs, before anything runs. The
    /// kubernetes backend lacks nothing: the profile's image carries its programs.
    fn missing_programs(&self, kind: WorkspaceKind) -> Vec<MissingProgram> {
        let _ = kind;
        Vec::new()
    }
}
