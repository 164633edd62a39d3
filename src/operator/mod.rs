//! `atelier operator`: reconciles Workspaces into Pods, Services, PVCs, NetworkPolicies and
//! Secrets, and BatchJobs into Kubernetes Jobs (or Slurm jobs).
//!
//! [`run`] builds a [`Context`] (client, configuration, event recorder, metrics), runs the
//! Workspace controller ([`workspace::reconcile::run_controller`]) and beside it, on the same
//! caches of profiles, pools and data sources and the same usage index, the BatchJob controller
//! ([`batchjob::reconcile::run_controller`]), and serves `/metrics` and `/healthz` until SIGTERM
//! or ctrl-c.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use prometheus_client::registry::Registry;

pub mod batchjob;
pub mod lease;
pub mod metrics;
pub mod workspace;

use crate::api::v1alpha1::Workspace;
use crate::config::{NamespaceMode, NamespaceModeArg, OperatorConfig};
use crate::policy::{Claim, UsageIndex};
use lease::{LeaderElector, LeaseSettings};
use metrics::Metrics;
use workspace::WORKSPACE_CONTROLLER_NAME;
use workspace::cache::{CacheWriters, Caches, Tokens};

/// Command-line arguments of `atelier operator`. (Strings are `Box<str>` to keep the
/// subcommand enum of `main` small.)
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespace model: `shared` or `per-user`.
    #[arg(
        long,
        env = "ATELIER_NAMESPACE_MODE",
        value_enum,
        default_value = "shared"
    )]
    pub namespace_mode: NamespaceModeArg,
    /// Prefix of the per-user namespaces (per-user mode).
    #[arg(
        long,
        env = "ATELIER_USER_NAMESPACE_PREFIX",
        default_value = "atelier-u-"
    )]
    pub user_namespace_prefix: Box<str>,
    /// Namespace the hub and proxy run in.
    #[arg(long, env = "ATELIER_HUB_NAMESPACE", default_value = "atelier")]
    pub hub_namespace: Box<str>,
    /// The hub's API as workspaces reach it.
    #[arg(
        long,
        env = "ATELIER_HUB_API_URL",
        default_value = "http://atelier-hub.atelier.svc:8081/hub/api"
    )]
    pub hub_api_url: Box<str>,
    /// Public base URL of the site (empty: relative URLs).
    #[arg(long, env = "ATELIER_PUBLIC_URL", default_value = "")]
    pub public_url: Box<str>,
    /// The hub's `--user-domain` (README, "Security model"): the servers' OAuth callbacks on the
    /// users' hosts. Give the hub, the proxy and the operator the same value.
    #[arg(long, env = "ATELIER_USER_DOMAIN", value_parser = crate::config::parse_user_domain)]
    pub user_domain: Option<crate::config::UserDomain>,
    /// Labels of the hub's pods, `key=value,...`.
    #[arg(
        long,
        env = "ATELIER_HUB_POD_LABELS",
        default_value = "app.kubernetes.io/name=atelier,app.kubernetes.io/component=hub"
    )]
    pub hub_pod_labels: Box<str>,
    /// Labels of the proxy's pods, `key=value,...`.
    #[arg(
        long,
        env = "ATELIER_PROXY_POD_LABELS",
        default_value = "app.kubernetes.io/name=atelier,app.kubernetes.io/component=proxy"
    )]
    pub proxy_pod_labels: Box<str>,
    /// Port the workspace server listens on.
    #[arg(long, env = "ATELIER_SERVER_PORT", default_value_t = 8888)]
    pub server_port: i32,
    /// UID workspaces run as.
    #[arg(long, env = "ATELIER_RUN_AS_USER", default_value_t = 1000)]
    pub run_as_user: i64,
    /// GID owning the home volume.
    #[arg(long, env = "ATELIER_FS_GROUP", default_value_t = 100)]
    pub fs_group: i64,
    /// `imagePullPolicy` of workspace containers.
    #[arg(
        long,
        env = "ATELIER_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = PossibleValuesParser::new(["Always", "IfNotPresent", "Never"])
            .map(Box::<str>::from)
    )]
    pub image_pull_policy: Box<str>,
    /// Only watch Workspaces of this namespace (default: all namespaces).
    #[arg(long, env = "ATELIER_WATCH_NAMESPACE")]
    pub watch_namespace: Option<Box<str>>,
    /// Address of the `/metrics` and `/healthz` server.
    #[arg(long, env = "ATELIER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Reconciliations running at once (0: unbounded).
    #[arg(long, env = "ATELIER_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Leader election: only the holder of the Lease `--lease-name` reconciles, other replicas
    /// stand by (`--leader-election=false` for a single local run).
    #[arg(
        long,
        env = "ATELIER_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "ATELIER_LEASE_NAME", default_value = "atelier-operator")]
    pub lease_name: Box<str>,
    /// Namespace of the Lease (default: the pod's, env `POD_NAMESPACE`, else `--hub-namespace`).
    #[arg(long, env = "ATELIER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<Box<str>>,
    /// `ttlSecondsAfterFinished` of the BatchJobs' Kubernetes Jobs: how long a finished Job and
    /// its pod (its logs) stay; the BatchJob keeps its status.
    #[arg(
        long,
        env = "ATELIER_BATCH_JOB_TTL_SECONDS",
        default_value_t = batchjob::DEFAULT_JOB_TTL_SECONDS,
        value_parser = clap::value_parser!(i32).range(0..)
    )]
    pub batch_job_ttl_seconds: i32,
    /// Namespace of the Slurm pools' signing-key Secrets (labelled `atelier.dev/slurm-key=true`;
    /// default: the pod's, env `POD_NAMESPACE`, else `--hub-namespace`).
    #[arg(long, env = "ATELIER_SLURM_SECRETS_NAMESPACE")]
    pub slurm_secrets_namespace: Option<Box<str>>,
}

impl OperatorArgs {
    /// The BatchJob controller's settings; `pod_namespace`: env `POD_NAMESPACE`.
    pub fn batch_settings(&self, pod_namespace: Option<&str>) -> batchjob::BatchSettings {
        let nonempty = |s: Option<&str>| {
            s.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        batchjob::BatchSettings {
            ttl_seconds_after_finished: self.batch_job_ttl_seconds,
            secrets_namespace: nonempty(self.slurm_secrets_namespace.as_deref())
                .or_else(|| nonempty(pod_namespace))
                .unwrap_or_else(|| self.hub_namespace.to_string()),
        }
    }
}

impl OperatorArgs {
    /// The configuration the pure builders need.
    pub fn operator_config(&self) -> anyhow::Result<OperatorConfig> {
        let namespace_mode = match self.namespace_mode {
            NamespaceModeArg::Shared => NamespaceMode::Shared,
            NamespaceModeArg::PerUser => {
                anyhow::ensure!(
                    !self.user_namespace_prefix.is_empty(),
                    "--user-namespace-prefix may not be empty in per-user mode"
                );
                NamespaceMode::PerUser {
                    prefix: self.user_namespace_prefix.to_string(),
                }
            }
        };
        anyhow::ensure!(
            (1..=65535).contains(&self.server_port),
            "--server-port must be a TCP port, got {}",
            self.server_port
        );
        Ok(OperatorConfig {
            namespace_mode,
            hub_namespace: self.hub_namespace.to_string(),
            hub_api_url: self.hub_api_url.to_string(),
            public_url: self.public_url.trim_end_matches('/').to_owned(),
            hub_pod_labels: parse_labels(&self.hub_pod_labels)?,
            proxy_pod_labels: parse_labels(&self.proxy_pod_labels)?,
            server_port: self.server_port,
            run_as_user: self.run_as_user,
            fs_group: self.fs_group,
            image_pull_policy: self.image_pull_policy.to_string(),
            user_domain: self.user_domain.clone(),
        })
    }
}

impl OperatorArgs {
    /// The Lease this replica runs for, or `None` without leader election. `pod_namespace` and
    /// `pod_name` are the pod's (env `POD_NAMESPACE`, `POD_NAME`, from the downward API; else
    /// `HOSTNAME`); the identity gets a random suffix (`lease::identity`).
    pub fn lease_settings(
        &self,
        pod_namespace: Option<&str>,
        pod_name: Option<&str>,
    ) -> anyhow::Result<Option<LeaseSettings>> {
        if !self.leader_election {
            return Ok(None);
        }
        anyhow::ensure!(!self.lease_name.is_empty(), "--lease-name may not be empty");
        let nonempty = |s: Option<&str>| {
            s.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let namespace = nonempty(self.lease_namespace.as_deref())
            .or_else(|| nonempty(pod_namespace))
            .unwrap_or_else(|| self.hub_namespace.to_string());
        let base = nonempty(pod_name).unwrap_or_else(|| "atelier-operator".to_owned());
        Ok(Some(LeaseSettings::new(
            self.lease_name.to_string(),
            namespace,
            lease::identity(&base)?,
        )))
    }
}

/// Parses `key=value,key=value` (entries trimmed, empty entries ignored).
fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => anyhow::bail!("label {entry:?} is not key=value"),
        })
        .collect()
}

/// Errors of a reconciliation; each variant is a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an input (profile, pools, data sources, workspaces, secrets, observed children).
    #[error("reading {what} failed: {source}")]
    Dereference {
        /// What was read.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A server-side apply was refused.
    #[error("applying {kind} {name} failed: {source}")]
    Apply {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A deletion was refused.
    #[error("deleting {kind} {name} failed: {source}")]
    Delete {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the Workspace status failed.
    #[error("writing the status failed: {0}")]
    Status(#[source] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("updating the finalizer failed: {0}")]
    Finalizer(#[source] kube::Error),
    /// A desired object could not be serialized.
    #[error("serializing a {kind} failed: {source}")]
    Serialize {
        /// Kind of the object.
        kind: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The system's random source failed.
    #[error("generating a token failed: {0}")]
    Token(#[source] getrandom::Error),
    /// The object lacks something the API server always sets.
    #[error("the object has no {0}")]
    InvalidObject(&'static str),
    /// The informer caches stopped before they were synced (the controller is shutting down).
    #[error("the informer caches are gone")]
    CachesGone,
    /// A batch system (Slurm) failed a call the reconciliation cannot do without (a cancel).
    #[error("the batch system failed: {0}")]
    Batch(#[source] crate::batch::BatchError),
}

impl Error {
    /// The variant as a Prometheus label value.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Dereference { .. } => "dereference",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Status(_) => "status",
            Error::Finalizer(_) => "finalizer",
            Error::Serialize { .. } => "serialize",
            Error::Token(_) => "token",
            Error::InvalidObject(_) => "invalid_object",
            Error::CachesGone => "caches_gone",
            Error::Batch(_) => "batch_system",
        }
    }
}

/// Result of the operator's fallible steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Per-object exponential back-off of failed reconciliations: `base`, doubling up to `max`,
/// reset by a successful reconciliation.
#[derive(Debug)]
pub struct RetryBackoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl RetryBackoff {
    /// Back-off from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        RetryBackoff {
            base,
            max,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counts a failure of `key` and returns how long to wait before the next attempt.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self.failures();
        let n = failures.entry(key.to_owned()).or_insert(0);
        let exponent = *n;
        *n = n.saturating_add(1);
        let factor = 2u32.checked_pow(exponent.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Forgets the failures of `key`.
    pub fn reset(&self, key: &str) {
        self.failures().remove(key);
    }
}

/// What the Workspace controller's watches saw that may let in a BatchJob that was refused
/// ([`Context::announce`]): the BatchJob controller, beside it, reads the same caches but not
/// these watches.
#[derive(Clone, Debug, PartialEq)]
pub enum InputChange {
    /// A WorkspaceProfile (by name) changed, appeared or went.
    Profile(String),
    /// A NodePool (by name) changed, appeared or went.
    Pool(String),
    /// A DataSource (by name) changed, appeared or went.
    DataSource(String),
    /// Claims given back under the caps (a workspace stopped, a job finished).
    Freed(Vec<Claim>),
}

/// How many [`InputChange`]s wait for a slow listener before the oldest are dropped (it is told
/// how many it missed).
pub const INPUT_CHANGES_BUFFER: usize = 1024;

/// What every reconciliation shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings of the builders.
    pub config: OperatorConfig,
    /// Who publishes the Events about Workspaces ([`Context::recorder`]).
    pub reporter: Reporter,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Back-off of failing Workspaces.
    pub backoff: RetryBackoff,
    /// The informer caches every read comes from.
    pub caches: Caches,
    /// What each Workspace holds on its pool, for the caps (see [`Context::usage`]).
    usage: Mutex<UsageIndex>,
    /// Whether the usage estimates were made again once every cache was synced.
    pub usage_estimated: std::sync::Once,
    /// Tokens generated for Workspaces whose Secret is not cached yet.
    pub tokens: Tokens,
    /// The answers of the data sources' endpoints, probed before a pod is created; `None`: not
    /// probed (the mock-API scenarios, whose data sources name hosts that do not exist).
    pub probes: Option<crate::net::Probes>,
    /// The writers of `caches`, until the controller (or a test) takes them.
    writers: Mutex<Option<CacheWriters>>,
    /// Workspaces to reconcile now because a place may have opened under the cap that refused
    /// them ([`workspace::reconcile::requeue_freed`]).
    requeue: futures::channel::mpsc::UnboundedSender<ObjectRef<Workspace>>,
    /// The receiving end of `requeue`, until the controller takes it.
    requeued: Mutex<Option<futures::channel::mpsc::UnboundedReceiver<ObjectRef<Workspace>>>>,
    /// The [`InputChange`]s, to whoever subscribed (nothing is kept without a subscriber).
    changes: tokio::sync::broadcast::Sender<InputChange>,
}

impl Context {
    /// A context reporting Events as `reporter`, with empty caches.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        reporter: Reporter,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (caches, writers) = Caches::new();
        let (requeue, requeued) = futures::channel::mpsc::unbounded();
        Context {
            reporter,
            client,
            config,
            metrics,
            backoff: RetryBackoff::default(),
            caches,
            usage: Mutex::default(),
            usage_estimated: std::sync::Once::new(),
            tokens: Tokens::default(),
            probes: Some(crate::net::Probes::default()),
            writers: Mutex::new(Some(writers)),
            requeue,
            requeued: Mutex::new(Some(requeued)),
            changes: tokio::sync::broadcast::Sender::new(INPUT_CHANGES_BUFFER),
        }
    }

    /// Tells the subscribers ([`Context::input_changes`]) of `change`.
    pub fn announce(&self, change: InputChange) {
        // An error only says that nobody listens.
        let _ = self.changes.send(change);
    }

    /// The [`InputChange`]s announced from now on.
    pub fn input_changes(&self) -> tokio::sync::broadcast::Receiver<InputChange> {
        self.changes.subscribe()
    }

    /// Asks the controller to reconcile `workspace` soon (dropped when no controller runs).
    pub fn requeue(&self, workspace: ObjectRef<Workspace>) {
        let _ = self.requeue.unbounded_send(workspace);
    }

    /// The stream of [`Context::requeue`]d Workspaces; `None` once taken.
    pub fn take_requeued(
        &self,
    ) -> Option<futures::channel::mpsc::UnboundedReceiver<ObjectRef<Workspace>>> {
        match self.requeued.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// The writers of [`Context::caches`]; `None` once taken.
    pub fn take_cache_writers(&self) -> Option<CacheWriters> {
        match self.writers.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// A recorder for one Event. kube-runtime's `Recorder` keeps every Event it published for 6
    /// minutes, to patch a repeat into a series, and sweeps that whole cache on each publish
    /// (`kube-runtime/src/events.rs`, `publish`): shared by the controller, that is 10,000 full
    /// Events and an O(N) sweep per Event behind one lock when 10,000 Workspaces start. The
    /// operator publishes an Event only when a Workspace's phase or Ready reason changes, so a
    /// repeat is rare: each Event gets a fresh recorder (its documented use: one per
    /// reconciliation), and a repeat is a new Event rather than a series.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    /// The usage index, locked (never hold it across an `.await`).
    pub fn usage(&self) -> std::sync::MutexGuard<'_, UsageIndex> {
        match self.usage.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The `reportingController` of the operator's Events.
pub fn reporter() -> Reporter {
    Reporter {
        controller: format!("atelier.dev/{WORKSPACE_CONTROLLER_NAME}"),
        instance: std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|s| !s.is_empty()),
    }
}

pub use crate::k8s::kube_client;

/// The operator's `User-Agent`.
pub const OPERATOR_USER_AGENT: &str = concat!("atelier-operator/", env!("CARGO_PKG_VERSION"));

/// The `/metrics` and `/healthz` routes.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(registry)
}

async fn metrics_handler(State(registry): State<Arc<Registry>>) -> Response {
    match metrics::encode(&registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Resolves once `rx` saw `true` (or its sender is gone).
pub(crate) async fn wait_for(mut rx: tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone: shut down as well.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs the operator until SIGTERM.
///
/// With leader election (the default) the Workspace controller runs only while this replica
/// holds the Lease ([`lease::run_as_leader`]); a standby serves `/healthz` and `/metrics` and
/// waits. SIGTERM: the controller stops (running reconciliations finish), the Lease is
/// released, and this returns `Ok` (exit 0). A lost Lease (not renewed within the renew
/// deadline, or taken over) drops the controller at once and returns an error, so the process
/// exits non-zero and the kubelet restarts the container as a fresh standby: as
/// kube-controller-manager and kube-scheduler do (their `OnStoppedLeading` exits), because a
/// restart leaves no state behind (watch caches, back-off, the metrics' phase map) that a new
/// leader's view might contradict, and the other replica leads meanwhile.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let config = args.operator_config()?;
    let lease = args.lease_settings(
        std::env::var("POD_NAMESPACE").ok().as_deref(),
        std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .as_deref(),
    )?;
    let mut registry = Registry::with_prefix("atelier");
    let metrics = Arc::new(Metrics::register(&mut registry));
    let batch_metrics = Arc::new(batchjob::BatchMetrics::register(&mut registry));
    let batch_settings = args.batch_settings(std::env::var("POD_NAMESPACE").ok().as_deref());
    let counter = metrics.clone();
    let client = crate::k8s::counting_kube_client(OPERATOR_USER_AGENT, move |verb, resource| {
        counter.api_request(verb, resource);
    })
    .await?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        reporter(),
        metrics.clone(),
    ));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tracing::info!(addr = %args.metrics_addr, "serving /metrics and /healthz");
    let server = axum::serve(listener, router(Arc::new(registry)))
        .with_graceful_shutdown(wait_for(stop_rx.clone()));

    let batch_ctx = Arc::new(batchjob::Context::new(
        ctx.clone(),
        batch_settings,
        batchjob::reporter(),
        batch_metrics,
        Box::new(batchjob::slurm),
    ));
    let workspaces = workspace::reconcile::run_controller(
        ctx,
        args.watch_namespace.as_deref().map(str::to_owned),
        args.concurrency,
        stop_rx.clone(),
    );
    let batchjobs = batchjob::reconcile::run_controller(
        batch_ctx,
        args.watch_namespace.as_deref().map(str::to_owned),
        args.concurrency,
        stop_rx.clone(),
    );
    // Both controllers, under the one Lease.
    let controller = async {
        futures::join!(workspaces, batchjobs);
    };
    let Some(settings) = lease else {
        tracing::info!("leader election off: reconciling");
        metrics.leader.set(1);
        let (served, ()) = tokio::join!(async { server.await }, controller);
        served?;
        return Ok(());
    };
    tracing::info!(
        lease = %format!("{}/{}", settings.namespace, settings.name),
        identity = %settings.identity,
        "leader election on"
    );
    let elector = LeaderElector::new(client, settings);
    let leading = lease::run_as_leader(
        elector,
        stop_rx,
        |leading| {
            metrics.leader.set(i64::from(leading));
        },
        controller,
    );
    let leading = async {
        leading
            .await
            .context("stopped leading; exiting so that the pod restarts as a standby")
    };
    let server = async { server.await.context("the /metrics server failed") };
    tokio::pin!(leading, server);
    // A lost Lease ends the process at once, without waiting for the server (it stops on
    // SIGTERM only).
    tokio::select! {
        led = &mut leading => {
            led?;
            server.await
        }
        served = &mut server => {
            served?;
            leading.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use http_body_util::BodyExt;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    #[test]
    fn arguments_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_give_the_default_config_in_shared_mode() {
        let cli = Cli::try_parse_from(["operator"]).expect("parses");
        assert_eq!(cli.args.watch_namespace, None);
        assert_eq!(cli.args.metrics_addr, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(
            cli.args.operator_config().expect("valid"),
            OperatorConfig::default()
        );
    }

    #[test]
    fn per_user_mode_and_overrides() {
        let cli = Cli::try_parse_from([
            "operator",
            "--namespace-mode",
            "per-user",
            "--user-namespace-prefix",
            "vre-",
            "--hub-namespace",
            "hub",
            "--public-url",
            "https://vre.example.org/",
            "--server-port",
            "9000",
            "--watch-namespace",
            "team",
            "--hub-pod-labels",
            "app=hub",
        ])
        .expect("parses");
        let cfg = cli.args.operator_config().expect("valid");
        assert_eq!(
            cfg.namespace_mode,
            NamespaceMode::PerUser {
                prefix: "vre-".into()
            }
        );
        assert_eq!(cfg.hub_namespace, "hub");
        assert_eq!(cfg.public_url, "https://vre.example.org");
        assert_eq!(cfg.server_port, 9000);
        assert_eq!(
            cfg.hub_pod_labels,
            BTreeMap::from([("app".to_owned(), "hub".to_owned())])
        );
        assert_eq!(cli.args.watch_namespace.as_deref(), Some("team"));
        assert!(Cli::try_parse_from(["operator", "--image-pull-policy", "Sometimes"]).is_err());
        let cli =
            Cli::try_parse_from(["operator", "--image-pull-policy", "Always"]).expect("parses");
        assert_eq!(
            cli.args.operator_config().expect("valid").image_pull_policy,
            "Always"
        );
    }

    #[test]
    fn bad_labels_and_ports_are_rejected() {
        let cli =
            Cli::try_parse_from(["operator", "--proxy-pod-labels", "novalue"]).expect("parses");
        assert!(cli.args.operator_config().is_err());
        let cli = Cli::try_parse_from(["operator", "--server-port", "0"]).expect("parses");
        assert!(cli.args.operator_config().is_err());
        assert!(Cli::try_parse_from(["operator", "--namespace-mode", "cluster"]).is_err());
    }

    #[test]
    fn leader_election_is_on_by_default_and_finds_its_lease() {
        let cli = Cli::try_parse_from(["operator", "--hub-namespace", "hub"]).expect("parses");
        assert!(cli.args.leader_election);
        // In a pod: the pod's namespace and name.
        let lease = cli
            .args
            .lease_settings(Some("atelier"), Some("atelier-operator-7d9f-x2"))
            .expect("valid")
            .expect("on");
        assert_eq!(
            (lease.name.as_str(), lease.namespace.as_str()),
            ("atelier-operator", "atelier")
        );
        assert_eq!(
            (
                lease.lease_duration,
                lease.renew_deadline,
                lease.retry_period
            ),
            (
                lease::LEASE_DURATION,
                lease::RENEW_DEADLINE,
                lease::RETRY_PERIOD
            )
        );
        let (base, suffix) = lease.identity.rsplit_once('_').expect("a suffix");
        assert_eq!(base, "atelier-operator-7d9f-x2");
        assert!(suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()));
        let again = cli
            .args
            .lease_settings(Some("atelier"), Some("atelier-operator-7d9f-x2"))
            .expect("valid")
            .expect("on");
        assert_ne!(again.identity, lease.identity, "unique per process");
        // Outside a pod: the hub's namespace and a generic name.
        let local = cli
            .args
            .lease_settings(None, Some(""))
            .expect("valid")
            .expect("on");
        assert_eq!(local.namespace, "hub");
        assert!(local.identity.starts_with("atelier-operator_"));
        // The flags win.
        let cli = Cli::try_parse_from([
            "operator",
            "--lease-name",
            "ops",
            "--lease-namespace",
            "control",
        ])
        .expect("parses");
        let lease = cli
            .args
            .lease_settings(Some("atelier"), None)
            .expect("valid")
            .expect("on");
        assert_eq!(
            (lease.name.as_str(), lease.namespace.as_str()),
            ("ops", "control")
        );
    }

    #[test]
    fn leader_election_can_be_switched_off_for_a_single_local_run() {
        for (argv, on) in [
            (vec!["operator", "--leader-election=false"], false),
            (vec!["operator", "--leader-election=true"], true),
            (vec!["operator", "--leader-election"], true),
        ] {
            let cli = Cli::try_parse_from(&argv).expect("parses");
            assert_eq!(cli.args.leader_election, on, "{argv:?}");
            assert_eq!(
                cli.args
                    .lease_settings(None, None)
                    .expect("valid")
                    .is_some(),
                on
            );
        }
        assert!(Cli::try_parse_from(["operator", "--leader-election=maybe"]).is_err());
        let cli = Cli::try_parse_from(["operator", "--lease-name", ""]).expect("parses");
        assert!(cli.args.lease_settings(None, None).is_err());
    }

    #[test]
    fn backoff_doubles_per_object_up_to_the_cap_and_resets() {
        let backoff = RetryBackoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay("ns/a")).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 5, 5].map(Duration::from_secs).to_vec(),
            "1s doubling, capped"
        );
        assert_eq!(
            backoff.next_delay("ns/b"),
            Duration::from_secs(1),
            "per object"
        );
        backoff.reset("ns/a");
        assert_eq!(backoff.next_delay("ns/a"), Duration::from_secs(1), "reset");
    }

    #[test]
    fn error_labels_are_distinct() {
        let labels = [
            Error::Status(kube::Error::LinesCodecMaxLineLengthExceeded).metric_label(),
            Error::Finalizer(kube::Error::LinesCodecMaxLineLengthExceeded).metric_label(),
            Error::InvalidObject("name").metric_label(),
        ];
        assert_eq!(labels, ["status", "finalizer", "invalid_object"]);
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz() {
        let mut registry = Registry::with_prefix("atelier");
        let metrics = Metrics::register(&mut registry);
        metrics.reconciled(None, Duration::from_millis(5));
        let app = router(Arc::new(registry));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        for (path, expected) in [
            ("/healthz", "ok"),
            (
                "/metrics",
                "atelier_workspace_reconciliations_total{result=\"ok\"} 1",
            ),
        ] {
            let response = tokio::time::timeout(Duration::from_secs(10), http_get(addr, path))
                .await
                .expect("answers in time");
            assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
            assert!(response.contains(expected), "{path}: {response}");
        }
        server.abort();

        // The handler on its own, without a socket.
        let mut registry = Registry::default();
        Metrics::register(&mut registry);
        let response = metrics_handler(State(Arc::new(registry))).await;
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).ends_with("# EOF\n"));
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }
}
