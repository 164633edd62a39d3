//! `atelier hub` and `atelier up`: building a hub from the command line and serving it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;

use super::audit::{AuditLog, SpoolOptions};
use super::builtin::{self, Installable};
use super::catalog::{self, Catalog, SharedCatalog};
use super::{Hub, HubConfig, HubState, ServiceConfig, router, spawner};
use crate::backend::WorkspaceBackend;
use crate::backend::local::{
    LocalBackend, LocalConfig, absolute, absolute_program, default_command,
};
use crate::proxy::{self, Proxy, ProxyConfig, ServiceRoute, StoreAuthorizer, StoreRoutes};
use crate::store::{self, NewToken, Store, StoreError, StoreOptions, TokenOwner};

/// The Python packages `atelier up` installs when no `jupyterhub-singleuser` is found: JupyterLab
/// and the Pangeo stack of the built-in `python` profile, and the proxies a QGIS desktop runs
/// behind (small; the desktop itself is Debian's, `up --install qgis`), the same pins as the test
/// peers (`.ci/peers-requirements.txt`; a test keeps them in step).
const SINGLEUSER_REQUIREMENTS: &str = "jupyterhub==6.1.1
jupyterlab==4.6.6
\
xarray==2026.9.0
dask[distributed,array]==2026.8.0
zarr==3.1.6
intake==2.0.9
\
jupyter-server-proxy==4.6.0
jupyter-remote-desktop-proxy==3.0.1
";

/// Which backend runs the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Local processes (`jupyterhub-singleuser` on 127.0.0.1).
    Local,
    /// `Workspace` resources reconciled by `atelier operator`.
    Kubernetes,
}

/// `atelier hub`.
#[derive(Clone, Debug, clap::Args)]
pub struct HubArgs {
    /// Address the hub listens on.
    #[arg(long, env = "ATELIER_HUB_BIND", default_value = "127.0.0.1:8081")]
    pub bind: SocketAddr,
    /// The database: `sqlite://path` (created if missing) or `postgres://…`.
    #[arg(
        long,
        env = "ATELIER_DATABASE_URL",
        default_value = "sqlite://atelier.sqlite"
    )]
    pub database_url: String,
    /// Seconds a request waits for a database connection before it gets a 503 (README,
    /// "Resilience"): bounds how long requests hang while the database is away.
    #[arg(long, env = "ATELIER_DATABASE_TIMEOUT", default_value_t = 10)]
    pub database_timeout: u64,
    /// The site's public URL, as browsers reach the proxy.
    #[arg(
        long,
        env = "ATELIER_PUBLIC_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub public_url: String,
    /// The hub API as the servers reach it (default: `http://<bind>/hub/api`).
    #[arg(long, env = "ATELIER_SERVER_API_URL")]
    pub server_api_url: Option<String>,
    /// Where servers run.
    #[arg(long, value_enum, env = "ATELIER_BACKEND", default_value = "local")]
    pub backend: BackendKind,
    /// Local backend: directory of users' home directories and server logs.
    #[arg(long, env = "ATELIER_STATE_DIR", default_value = ".atelier")]
    pub state_dir: PathBuf,
    /// Local backend: the server command (default: `jupyterhub-singleuser` from the peers venv
    /// or PATH). Space-separated.
    #[arg(long, env = "ATELIER_SERVER_COMMAND", value_delimiter = ' ')]
    pub server_command: Vec<String>,
    /// Seconds a server has to become ready.
    #[arg(long, env = "ATELIER_SPAWN_TIMEOUT", default_value_t = 120)]
    pub spawn_timeout: u64,
    /// Kubernetes backend: namespace model, as the operator's (`shared` or `per-user`).
    #[arg(
        long,
        env = "ATELIER_NAMESPACE_MODE",
        value_enum,
        default_value = "shared"
    )]
    pub namespace_mode: crate::config::NamespaceModeArg,
    /// Kubernetes backend: prefix of the per-user namespaces, as the operator's.
    #[arg(
        long,
        env = "ATELIER_USER_NAMESPACE_PREFIX",
        default_value = "atelier-u-"
    )]
    pub user_namespace_prefix: String,
    /// Kubernetes backend: the namespace of the Workspaces in shared mode (default: the
    /// client's, i.e. the hub's own namespace in a cluster).
    #[arg(long, env = "ATELIER_WORKSPACE_NAMESPACE")]
    pub workspace_namespace: Option<String>,
    /// Kubernetes backend: the WorkspaceProfile of a start that names none.
    #[arg(long, env = "ATELIER_DEFAULT_PROFILE", default_value = "default")]
    pub default_profile: String,
    /// The profiles, node pools and data sources users choose from: a YAML file, or a directory
    /// of them, of WorkspaceProfile, NodePool and DataSource manifests (README, "Profiles, pools
    /// and data sources"). Without it the kubernetes backend reads the cluster's; the local
    /// backend offers one default profile.
    #[arg(long, env = "ATELIER_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Enable the dev login (any user name; admins need the admin password).
    #[arg(long, env = "ATELIER_DEV_LOGIN")]
    pub dev_login: bool,
    /// Admin users (comma-separated).
    #[arg(
        long = "admin-user",
        env = "ATELIER_ADMIN_USERS",
        value_delimiter = ','
    )]
    pub admin_users: Vec<String>,
    /// A service and its scopes, `NAME=SCOPE,SCOPE`, or with the URL it serves HTTP at,
    /// `NAME@URL=SCOPE,SCOPE` (JupyterHub's service `url`; URL an `http://host:port` origin; the
    /// proxy needs the same `--service NAME@URL` to route `/services/NAME/` to it); its token is
    /// read from the environment variable `ATELIER_SERVICE_<NAME>_TOKEN` (upper case, `-` as
    /// `_`). Repeatable.
    #[arg(long = "service", env = "ATELIER_SERVICES", value_delimiter = ';')]
    pub services: Vec<String>,
    /// Single sign-on: a JSON or YAML file listing OpenID Connect providers (README, "Single
    /// sign-on"). With providers, the dev login is off unless `--dev-login` is given.
    #[arg(long, env = "ATELIER_OIDC_CONFIG")]
    pub oidc_config: Option<PathBuf>,
    /// Roles, as JupyterHub's `load_roles`: a YAML or JSON list of `{name, description, scopes,
    /// users, groups, services}` (README, "Roles").
    #[arg(long, env = "ATELIER_ROLES")]
    pub roles: Option<PathBuf>,
    /// Which names a new named server may take: `jupyterhub` (JupyterHub 6's rule: 1 to 30
    /// characters of a-z, 0-9 and single '-', starting with a letter) or `dns-label` (1 to 63
    /// characters of a-z, 0-9 and '-'). Servers named before keep their names.
    #[arg(
        long,
        env = "ATELIER_SERVER_NAME_RULE",
        value_enum,
        default_value = "jupyterhub"
    )]
    pub server_name_rule: crate::policy::names::ServerNameRule,
    /// Serve each user's servers on a host of their own, `<user>.<domain>` (README, "Security
    /// model"); the proxy needs the same value. Needs a wildcard DNS record and a wildcard TLS
    /// certificate for `*.<domain>`.
    #[arg(long, env = "ATELIER_USER_DOMAIN", value_parser = crate::config::parse_user_domain)]
    pub user_domain: Option<crate::config::UserDomain>,
    /// Where the hub reads the Secrets of Slurm node pools (their JWT signing key), laid out as
    /// a mounted Secret: `<dir>/<secret name>/<key>` (default: `<state dir>/secrets`).
    #[arg(long, env = "ATELIER_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
}

impl HubArgs {
    /// The defaults, as if no flag was given.
    pub fn defaults() -> HubArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: HubArgs,
        }
        Wrapper::parse_from(["atelier"]).args
    }

    /// Makes every path the hub keeps or hands to a process absolute, once, against the working
    /// directory: the SQLite database file, the state directory (homes, logs), the server
    /// program when it is a path, the catalogue and the OIDC configuration. Servers run in their
    /// users' directories, where a relative path would name something else.
    pub fn resolve_paths(&mut self) {
        self.database_url = absolute_sqlite_url(&self.database_url);
        self.state_dir = absolute(&self.state_dir);
        absolute_program(&mut self.server_command);
        self.catalog = self.catalog.as_deref().map(absolute);
        self.oidc_config = self.oidc_config.as_deref().map(absolute);
        self.secrets_dir = self.secrets_dir.as_deref().map(absolute);
    }
}

/// A `sqlite:` URL with its file path made absolute against the working directory (`sqlite://`
/// followed by the absolute path, the query kept); other URLs, in-memory databases and absolute
/// paths unchanged.
pub fn absolute_sqlite_url(url: &str) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return url.to_owned();
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() || path.starts_with(':') || Path::new(path).is_absolute() {
        return url.to_owned();
    }
    let path = absolute(Path::new(path));
    match query {
        Some(query) => format!("sqlite://{}?{query}", path.display()),
        None => format!("sqlite://{}", path.display()),
    }
}

/// Parses `--service NAME[@URL]=SCOPE,SCOPE` with the token from the environment.
pub fn parse_service(
    spec: &str,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<ServiceConfig> {
    let (head, scopes) = spec
        .split_once('=')
        .with_context(|| format!("--service {spec:?}: expected NAME[@URL]=SCOPE,SCOPE"))?;
    let (name, url) = match head.split_once('@') {
        Some((name, url)) => {
            let route = ServiceRoute::new(name.trim(), url.trim())
                .map_err(|e| anyhow::anyhow!("--service {spec:?}: {e}"))?;
            (name, Some(route.target))
        }
        None => (head, None),
    };
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("--service {spec:?}: the name must be letters, digits, '-' or '_'");
    }
    let scopes: Vec<String> = scopes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    crate::scopes::ScopeSet::parse(&scopes, None).with_context(|| format!("--service {name}"))?;
    let var = format!(
        "ATELIER_SERVICE_{}_TOKEN",
        name.to_ascii_uppercase().replace('-', "_")
    );
    let token = env(&var).with_context(|| format!("--service {name}: set {var} to its token"))?;
    Ok(ServiceConfig {
        name: name.to_owned(),
        token,
        scopes,
        url,
    })
}

/// Makes the store hold exactly the configured services' tokens: each configured token exists
/// with its scopes, and older tokens of those services are revoked.
pub async fn register_services(store: &Store, services: &[ServiceConfig]) -> anyhow::Result<()> {
    for service in services {
        let mut attempt = 0;
        loop {
            match register_service(store, service).await {
                Ok(()) => break,
                // Another hub process on the same database registering it at the same moment
                // (both inserting the token, or deleting each other's): once more.
                Err(e)
                    if attempt < 3
                        && matches!(
                            e.downcast_ref::<StoreError>(),
                            Some(StoreError::Conflict(_) | StoreError::NotFound)
                        ) =>
                {
                    attempt += 1;
                    tracing::info!(service = %service.name, error = %e, "service registered concurrently: again");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Registers one service's token (see [`register_services`]).
async fn register_service(store: &Store, service: &ServiceConfig) -> anyhow::Result<()> {
    let owner = TokenOwner::Service(service.name.clone());
    let wanted = store::tokens::hash_token(&service.token);
    let current = match store.lookup_token(&service.token, store::now()).await {
        Ok(identity) => Some(identity.token),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let keep = current.as_ref().is_some_and(|t| {
        t.owner == owner && {
            let mut a = t.scopes.clone();
            let mut b = service.scopes.clone();
            a.sort();
            b.sort();
            a == b
        }
    });
    for token in store.list_tokens(&owner).await? {
        let same = current.as_ref().is_some_and(|c| c.id == token.id);
        if !(same && keep) {
            store.revoke_token(token.id).await?;
        }
    }
    if let Some(t) = &current
        && !keep
        && t.owner != owner
    {
        bail!(
            "service {}: its token is already another credential",
            service.name
        );
    }
    if !keep {
        let mut new = NewToken::new(owner, service.scopes.clone());
        new.note = Some(format!("service {}", service.name));
        store.create_token_with_value(&service.token, &new).await?;
    }
    tracing::info!(service = %service.name, token_hash_prefix = &wanted[..8], "service registered");
    Ok(())
}

/// Reads `--roles`: a YAML (or JSON) list of roles, checked as JupyterHub checks them.
pub fn load_roles(path: &Path) -> anyhow::Result<crate::scopes::Roles> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the roles {}", path.display()))?;
    let roles: Vec<crate::scopes::Role> = serde_saphyr::from_str(&text)
        .with_context(|| format!("{}: expected a list of roles", path.display()))?;
    crate::scopes::Roles::new(roles).with_context(|| format!("{}", path.display()))
}

fn local_backend(args: &HubArgs) -> LocalBackend {
    let mut config = LocalConfig::new(&args.state_dir);
    if !args.server_command.is_empty() {
        config.command = args.server_command.clone();
    }
    config.start_timeout = Duration::from_secs(args.spawn_timeout);
    LocalBackend::new(config)
}

/// Builds the hub described by `args` over an open store (services registered, servers
/// recovered), without serving it.
pub async fn build_hub(
    args: &HubArgs,
    store: Store,
    admin_password_hash: Option<String>,
) -> anyhow::Result<HubState> {
    build_hub_with(args, store, admin_password_hash, None).await
}

/// [`build_hub`], with `backend` in place of the one `args.backend` names when given (the
/// benchmarks' and tests' [`InstantBackend`](crate::backend::instant::InstantBackend)).
pub async fn build_hub_with(
    args: &HubArgs,
    store: Store,
    admin_password_hash: Option<String>,
    backend: Option<Arc<dyn WorkspaceBackend>>,
) -> anyhow::Result<HubState> {
    let catalog = match &args.catalog {
        Some(path) => {
            let catalog = Catalog::load(path)?;
            tracing::info!(
                path = %path.display(),
                profiles = catalog.profiles.len(),
                pools = catalog.pools.len(),
                data_sources = catalog.data_sources.len(),
                "catalogue loaded"
            );
            SharedCatalog::new(catalog)
        }
        None => SharedCatalog::default(),
    };
    let audit = open_audit_log(&store, &args.state_dir);
    // The Python of the single-user servers (`GET /info`): known with the local backend only.
    let mut server_python = None;
    let backend: Arc<dyn WorkspaceBackend> = match (backend, args.backend) {
        (Some(backend), _) => backend,
        (None, BackendKind::Local) => {
            let local = local_backend(args);
            server_python = super::api::hub::probe_python(&local.config().command).await;
            Arc::new(local)
        }
        (None, BackendKind::Kubernetes) => {
            use crate::backend::kubernetes::{self, KubernetesBackend, KubernetesBackendConfig};
            use crate::config::{NamespaceMode, NamespaceModeArg};
            let client = kubernetes::kube_client().await?;
            let namespace = args
                .workspace_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let mut config = KubernetesBackendConfig::new(namespace);
            config.namespace_mode = match args.namespace_mode {
                NamespaceModeArg::Shared => NamespaceMode::Shared,
                NamespaceModeArg::PerUser if args.user_namespace_prefix.is_empty() => {
                    bail!("--user-namespace-prefix may not be empty in per-user mode")
                }
                NamespaceModeArg::PerUser => NamespaceMode::PerUser {
                    prefix: args.user_namespace_prefix.clone(),
                },
            };
            config.default_profile = args.default_profile.clone();
            if args.catalog.is_none() {
                // The catalogue is the cluster's WorkspaceProfiles, NodePools and DataSources.
                match catalog::list_cluster(&client).await {
                    Ok(listed) => catalog.set(listed),
                    Err(e) => tracing::warn!(error = %e, "cannot list the catalogue yet"),
                }
                catalog::spawn_refresh(client.clone(), catalog.clone(), catalog::REFRESH_INTERVAL);
            }
            config.start_timeout = Duration::from_secs(args.spawn_timeout);
            // Admin-created Workspaces become servers; ones stopped with kubectl stop theirs.
            super::sync::spawn_sync(
                store.clone(),
                audit.clone(),
                super::sync::Site {
                    public_url: args.public_url.trim_end_matches('/').to_owned(),
                    user_domain: args.user_domain.clone(),
                },
                kubernetes::WorkspaceObserver::new(client.clone(), config.clone()),
                super::sync::SYNC_INTERVAL,
            );
            tracing::info!(?config, "kubernetes backend");
            // The statuses of the hub's BatchJobs, read by the job poll without a request each.
            let (job_cache, _) = kubernetes::BatchJobs::spawn_cache(client.clone(), &config);
            Arc::new(KubernetesBackend::new(client, config).with_job_cache(job_cache))
        }
    };
    let server_api_url = args
        .server_api_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/hub/api", args.bind));
    let mut config = HubConfig::new(&args.public_url, &server_api_url);
    if let Some(domain) = &args.user_domain
        && domain.covers_url(&args.public_url)
    {
        bail!(
            "--public-url {} is a host under --user-domain {domain}: the hub would share its \
             cookies with a user's pages; put the hub outside the user domain",
            args.public_url
        );
    }
    config.user_domain = args.user_domain.clone();
    config.secrets_dir = Some(
        args.secrets_dir
            .clone()
            .unwrap_or_else(|| args.state_dir.join("secrets")),
    );
    config.dev_login = args.dev_login;
    config.admin_users = args.admin_users.clone();
    config.admin_password_hash = admin_password_hash;
    config.spawn_timeout_secs = args.spawn_timeout;
    config.catalog = catalog;
    config.default_profile = args.default_profile.clone();
    config.server_name_rule = args.server_name_rule;
    config.services = args
        .services
        .iter()
        .map(|s| parse_service(s, |v| std::env::var(v).ok()))
        .collect::<anyhow::Result<_>>()?;
    register_services(&store, &config.services).await?;
    if let Some(path) = &args.roles {
        config.roles = load_roles(path)?;
    }
    config.server_python = server_python;
    if let Some(path) = &args.oidc_config {
        let providers = super::auth::oidc::load_config(path)?;
        config.oidc_providers = super::auth::oidc::discover(providers, &config.public_url).await?;
    }
    for admin in &config.admin_users {
        match store.get_user(admin).await {
            Ok(user) if !user.admin => {
                store.set_user_admin(admin, true).await?;
            }
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                store.create_user(admin, true).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let hub = Hub::with_audit(store, backend, config, audit);
    spawner::recover(&hub)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(hub)
}

/// The hub's audit log, its spool in `<state dir>/audit-spool-<n>.jsonl` (README,
/// "Resilience"): what previous processes left there is written first. A file that cannot be
/// opened leaves the spool in memory only, with an error: the hub still starts.
fn open_audit_log(store: &Store, state_dir: &Path) -> AuditLog {
    match AuditLog::open(store.clone(), state_dir, SpoolOptions::default()) {
        Ok(log) => log,
        Err(e) => {
            tracing::error!(
                dir = %state_dir.display(), error = %e,
                "cannot open the audit spool: audit events met by a database outage are kept \
                 in memory only"
            );
            AuditLog::new(store.clone())
        }
    }
}

/// Background upkeep: expired sessions, codes and tokens are purged every few minutes.
fn spawn_purger(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        loop {
            tick.tick().await;
            match store.purge_expired(store::now()).await {
                Ok(counts) => tracing::debug!(?counts, "purged expired credentials"),
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
        }
    })
}

/// Serves the hub on `listener` until `shutdown`, or until `POST /hub/api/shutdown` asks it to
/// stop ([`Hub::shutdown`](crate::hub::Hub::shutdown)); requests in flight are finished.
pub async fn serve_hub(
    listener: TcpListener,
    hub: HubState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let watcher = spawner::watch(hub.clone());
    let job_watcher = crate::hub::jobs::watch(hub.clone());
    let purger = spawn_purger(hub.store.clone());
    let requested = hub.shutdown();
    let result = axum::serve(listener, router(hub))
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                () = requested => tracing::info!("shutdown requested through the API"),
            }
        })
        .await;
    watcher.abort();
    job_watcher.abort();
    purger.abort();
    result.context("serving the hub")
}

/// `atelier hub`: the hub alone.
pub async fn run_hub(args: HubArgs) -> anyhow::Result<()> {
    run_hub_with(args, None).await
}

/// [`run_hub`] with `backend` in place of the one `args.backend` names when given (see
/// [`build_hub_with`]).
pub async fn run_hub_with(
    mut args: HubArgs,
    backend: Option<Arc<dyn WorkspaceBackend>>,
) -> anyhow::Result<()> {
    args.resolve_paths();
    let store = Store::connect_with(
        &args.database_url,
        &StoreOptions {
            acquire_timeout: Some(Duration::from_secs(args.database_timeout.max(1))),
            ..StoreOptions::default()
        },
    )
    .await
    .with_context(|| "opening the database")?;
    // With the dev login on, any account may be made admin later (admin page, REST API): each
    // admin then logs in with this password, so it exists whenever the dev login does.
    let admin_hash = if args.dev_login {
        let (password, hash) = super::auth::login::generate_admin_password();
        eprintln!("admin password for the dev login (this start only): {password}");
        Some(hash)
    } else {
        None
    };
    let hub = build_hub_with(&args, store.clone(), admin_hash, backend).await?;
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    tracing::info!(addr = %listener.local_addr()?, backend = hub.backend.kind(), "hub listening");
    serve_hub(listener, hub, proxy::shutdown_signal()).await?;
    store.close().await;
    Ok(())
}

/// `atelier up`.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// Address of the front door (the proxy): what you open in the browser.
    #[arg(long, env = "ATELIER_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
    /// Address of the hub behind the proxy (port 0: any free port).
    #[arg(long, env = "ATELIER_HUB_BIND", default_value = "127.0.0.1:0")]
    pub hub_bind: SocketAddr,
    /// Where the database, users' directories, logs and (if needed) the Python venv live.
    #[arg(long, env = "ATELIER_DATA_DIR", default_value = ".atelier")]
    pub data_dir: PathBuf,
    /// Stop every running server when Atelier exits (default: leave them; the next `up`
    /// re-adopts them).
    #[arg(long)]
    pub stop_servers_on_exit: bool,
    /// The profiles, node pools and data sources users choose from, as for `atelier hub`
    /// (default: the built-in catalogue: Python (Pangeo), R and the QGIS desktop, each offered
    /// when this machine can run it).
    #[arg(long, env = "ATELIER_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Install what these kinds need before starting (comma-separated: `r`, `qgis`,
    /// `python`): Debian packages with apt-get (as root) and pip packages into the servers'
    /// venv. Says what and how large first, and asks.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub install: Vec<Installable>,
    /// Do not ask before `--install` installs.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Roles, as for `atelier hub`.
    #[arg(long, env = "ATELIER_ROLES")]
    pub roles: Option<PathBuf>,
    /// Serve each user's servers on a host of their own, `<user>.<domain>`, as for `atelier
    /// hub` (`localhost` works in browsers without DNS: `alice.localhost` is the loopback).
    #[arg(long, env = "ATELIER_USER_DOMAIN", value_parser = crate::config::parse_user_domain)]
    pub user_domain: Option<crate::config::UserDomain>,
}

/// Finds `jupyterhub-singleuser`, or installs it into `<data_dir>/venv` (a Python venv with the
/// pinned jupyterhub and jupyterlab). Returns the command.
pub async fn ensure_singleuser(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let venv = data_dir.join("venv");
    let own = venv.join("bin").join("jupyterhub-singleuser");
    if own.is_file() {
        return Ok(vec![own.display().to_string()]);
    }
    let found = default_command();
    if let Some(program) = found.first()
        && (Path::new(program).is_file() || which(program).is_some())
    {
        return Ok(found);
    }
    eprintln!(
        "Installing JupyterLab and jupyterhub-singleuser into {} (once, about a minute)...",
        venv.display()
    );
    std::fs::create_dir_all(data_dir)?;
    let status = tokio::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .await
        .context("running python3 -m venv (is Python 3 installed?)")?;
    if !status.success() {
        bail!("python3 -m venv {} failed: {status}", venv.display());
    }
    let requirements = data_dir.join("requirements.txt");
    std::fs::write(&requirements, SINGLEUSER_REQUIREMENTS)?;
    let status = tokio::process::Command::new(venv.join("bin").join("pip"))
        .args(["install", "-q", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()
        .await
        .context("running pip")?;
    if !status.success() || !own.is_file() {
        bail!(
            "installing jupyterhub and jupyterlab into {} failed",
            venv.display()
        );
    }
    Ok(vec![own.display().to_string()])
}

/// Asks `question` on the terminal; true for `y` or `yes`.
fn ask(question: &str) -> bool {
    use std::io::Write as _;
    print!("{question}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Which profiles the spawn page offers, and what the hidden ones lack.
fn print_offer(hub: &HubState) {
    let catalog = hub.config.catalog.get();
    let hidden = spawner::hidden_profiles(hub);
    let offered: Vec<String> = catalog
        .profiles
        .iter()
        .filter(|p| {
            !hidden
                .iter()
                .any(|h| h.name == kube::ResourceExt::name_any(*p))
        })
        .map(|p| p.spec.display_name.clone())
        .collect();
    if !offered.is_empty() {
        println!("  Profiles: {}", offered.join(", "));
    }
    for h in hidden {
        let programs: Vec<&str> = h.missing.iter().map(|m| m.program.as_str()).collect();
        let hint = match h.kind {
            "qgis" | "r" => format!("; `atelier up --install {}` installs it", h.kind),
            _ => String::new(),
        };
        println!(
            "  Not offered: {} (this machine lacks {}{hint})",
            h.display_name,
            programs.join(", ")
        );
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// `atelier up`: hub, proxy and local backend on one machine, SQLite, dev login.
pub async fn run_up(mut args: UpArgs) -> anyhow::Result<()> {
    // Once, at start: everything below (database, homes, logs, the venv's program) derives
    // from these, and servers run in their users' directories.
    args.data_dir = absolute(&args.data_dir);
    args.catalog = args.catalog.as_deref().map(absolute);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let command = ensure_singleuser(&args.data_dir).await?;
    if !args.install.is_empty() {
        let venv = command.first().and_then(|p| builtin::venv_of(p));
        builtin::install(&args.install, venv.as_deref(), args.yes, ask).await?;
    }
    let database_url = format!(
        "sqlite://{}",
        args.data_dir.join("atelier.sqlite").display()
    );
    let store = Store::connect(&database_url)
        .await
        .context("opening the database")?;

    let hub_listener = TcpListener::bind(args.hub_bind)
        .await
        .with_context(|| format!("binding {}", args.hub_bind))?;
    let hub_addr = hub_listener.local_addr()?;
    let proxy_listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {} (is another `atelier up` running?)", args.bind))?;
    let proxy_addr = proxy_listener.local_addr()?;
    let public_url = format!("http://{proxy_addr}");

    let hub_args = HubArgs {
        bind: hub_addr,
        database_url: database_url.clone(),
        public_url: public_url.clone(),
        server_api_url: Some(format!("http://{hub_addr}/hub/api")),
        state_dir: args.data_dir.clone(),
        server_command: command,
        dev_login: true,
        admin_users: vec!["admin".into()],
        catalog: args.catalog.clone(),
        roles: args.roles.clone(),
        user_domain: args.user_domain.clone(),
        ..HubArgs::defaults()
    };
    let hub_args = HubArgs {
        default_profile: if args.catalog.is_none() {
            builtin::DEFAULT_PROFILE.to_owned()
        } else {
            HubArgs::defaults().default_profile
        },
        ..hub_args
    };
    let (password, hash) = super::auth::login::generate_admin_password();
    let hub = build_hub(&hub_args, store.clone(), Some(hash)).await?;
    if args.catalog.is_none() {
        hub.config.catalog.set(builtin::catalog());
    }

    let proxy = Proxy::start(
        ProxyConfig {
            user_domain: args.user_domain.clone(),
            public_url: public_url.clone(),
            ..ProxyConfig::new(format!("http://{hub_addr}"))
        },
        Arc::new(StoreRoutes::new(store.clone())),
        Some(Arc::new(StoreAuthorizer::new(store.clone()))),
    )
    .await?;

    println!();
    println!("  Atelier is running at {public_url}/");
    println!("  Log in with any user name, or as `admin` with the password: {password}");
    println!("  (the password is new at every start; stop with Ctrl-C)");
    print_offer(&hub);
    println!();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let hub_task = {
        let hub = hub.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            serve_hub(hub_listener, hub, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let proxy_task = {
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            proxy::serve(proxy_listener, proxy, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    // Ctrl-C, SIGTERM or `POST /hub/api/shutdown` (which has stopped the servers it was asked
    // to stop; the proxy of `up` lives in this process and stops with the hub).
    tokio::select! {
        () = proxy::shutdown_signal() => {}
        () = hub.shutdown() => {}
    }
    eprintln!("stopping...");
    if args.stop_servers_on_exit {
        // Waits for the stops to be recorded before the store closes.
        crate::hub::api::hub::stop_all_servers(&hub, "atelier up").await;
    }
    let _ = stop_tx.send(true);
    let _ = proxy_task.await;
    hub_task.await??;
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_installs_the_versions_the_tests_run_against() {
        let peers = include_str!("../../.ci/peers-requirements.txt");
        for pin in SINGLEUSER_REQUIREMENTS.lines() {
            assert!(
                peers.lines().any(|l| l.trim() == pin),
                "{pin} is not pinned in .ci/peers-requirements.txt"
            );
        }
    }

    #[test]
    fn services_take_their_token_from_the_environment() {
        let env = |var: &str| {
            (var == "ATELIER_SERVICE_IDLE_CULLER_TOKEN").then(|| "t0ken-value-123".to_owned())
        };
        let s = parse_service("idle-culler=list:users,read:servers", env).unwrap();
        assert_eq!(s.name, "idle-culler");
        assert_eq!(s.token, "t0ken-value-123");
        assert_eq!(s.scopes, vec!["list:users", "read:servers"]);
        let missing = parse_service("other=list:users", env)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("ATELIER_SERVICE_OTHER_TOKEN"), "{missing}");
        assert_eq!(s.url, None);
        let env = |var: &str| (var == "ATELIER_SERVICE_DASK_GATEWAY_TOKEN").then(|| "t".to_owned());
        let g = parse_service("dask-gateway@http://127.0.0.1:8001=", env).unwrap();
        assert_eq!(g.name, "dask-gateway");
        assert_eq!(g.url.as_deref(), Some("http://127.0.0.1:8001"));
        assert!(g.scopes.is_empty());
        for bad in [
            "dask-gateway@127.0.0.1:8001=",
            "dask-gateway@http://127.0.0.1:8001/gateway=",
            "dask gateway@http://127.0.0.1:8001=",
        ] {
            assert!(parse_service(bad, env).is_err(), "{bad}");
        }
        assert!(parse_service("bad name=list:users", env).is_err());
        assert!(parse_service("x=read:everything", env).is_err());
        assert!(parse_service("no-equals", env).is_err());
    }

    #[test]
    fn roles_load_from_the_readme_example_and_bad_ones_stop_the_hub() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("# daskhub's grant")
            .expect("the README's roles example");
        let example = &readme[start..start + readme[start..].find("```").unwrap()];
        let dir = std::env::temp_dir().join(format!(
            "atelier-roles-{}",
            &store::tokens::generate_token()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roles.yaml");
        std::fs::write(&path, example).unwrap();
        let roles = load_roles(&path).unwrap();
        let groups = ["ocean".to_owned()].into_iter().collect();
        let dask = crate::scopes::Target::Service("dask-gateway");
        assert!(
            roles
                .user_scopes("amy", false, &groups)
                .allows("access:services", dask)
        );
        assert!(
            roles
                .service_scopes("idle-culler")
                .allows("list:users", crate::scopes::Target::Hub)
        );
        for (text, names) in [
            (
                "- name: xyz\n  scopes: [read:everything]\n",
                "read:everything",
            ),
            ("- name: Bad\n", "invalid role name"),
            ("- name: ok-role\n  members: [a]\n", "members"),
            ("name: not-a-list\n", "list of roles"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", load_roles(&path).unwrap_err());
            assert!(err.contains(names), "{text:?}: {err}");
            assert!(err.contains("roles.yaml"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_paths_are_resolved_against_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute_sqlite_url("sqlite://atelier.sqlite"),
            format!("sqlite://{}", cwd.join("atelier.sqlite").display())
        );
        assert_eq!(
            absolute_sqlite_url("sqlite:data/a.db?mode=rwc"),
            format!("sqlite://{}?mode=rwc", cwd.join("data/a.db").display())
        );
        for kept in [
            "sqlite:///var/lib/atelier.sqlite",
            "sqlite::memory:",
            "sqlite://:memory:",
            "postgres://u@h/db",
        ] {
            assert_eq!(absolute_sqlite_url(kept), kept);
        }

        let mut args = HubArgs::defaults();
        args.server_command = vec!["bin/singleuser".into(), "--debug".into()];
        args.catalog = Some("catalog.yaml".into());
        args.oidc_config = Some("/etc/oidc.yaml".into());
        args.resolve_paths();
        assert_eq!(
            args.database_url,
            format!("sqlite://{}", cwd.join("atelier.sqlite").display())
        );
        assert_eq!(args.state_dir, cwd.join(".atelier"));
        assert_eq!(
            args.server_command,
            vec![
                cwd.join("bin/singleuser").display().to_string(),
                "--debug".into()
            ]
        );
        assert_eq!(args.catalog, Some(cwd.join("catalog.yaml")));
        assert_eq!(args.oidc_config, Some(PathBuf::from("/etc/oidc.yaml")));
        // A bare program name is looked up on PATH at spawn time, as before.
        let mut args = HubArgs::defaults();
        args.server_command = vec!["jupyterhub-singleuser".into()];
        args.resolve_paths();
        assert_eq!(args.server_command, vec!["jupyterhub-singleuser"]);
    }
}
