//! The hub: JupyterHub-compatible REST API under `/hub/api`, the OAuth provider the single-user
//! servers log in with, and the web UI. All state lives in the [`Store`]; what is kept in memory
//! (progress of spawns this process drives, auth caches) can be lost without losing anything.

use std::sync::Arc;

use axum::Router;

use crate::backend::WorkspaceBackend;
use crate::store::Store;

pub mod api;
pub mod audit;
pub mod auth;
pub mod builtin;
pub mod catalog;
pub mod error;
pub mod jobs;
pub mod page;
pub mod serve;
pub mod spawner;
pub mod spawns;
pub mod sync;
pub mod views;

pub use error::{HubError, HubResult};

/// JupyterHub version the API speaks (sent as `X-JupyterHub-Version`; `jupyterhub-singleuser`
/// warns when the major versions differ).
pub const JUPYTERHUB_VERSION: &str = "6.1.1";

/// Name of the browser session cookie. Path=/ so that the proxy can check it on `/user/...`.
pub const SESSION_COOKIE: &str = "atelier-session";

/// A service (e.g. `jupyterhub-idle-culler`) with an API token and scopes.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    /// Service name.
    pub name: String,
    /// Its API token (from a file or the environment; never logged).
    pub token: String,
    /// Its scopes, in JupyterHub's vocabulary.
    pub scopes: Vec<String>,
    /// Where it serves HTTP, an `http://host:port` origin (JupyterHub's service `url`): the
    /// proxy routes `/services/<name>/` to it.
    pub url: Option<String>,
}

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The public URL of the site, e.g. `https://vre.example.org` or `http://127.0.0.1:8000`.
    pub public_url: String,
    /// The hub API as the single-user servers reach it, e.g. `http://127.0.0.1:8081/hub/api`.
    pub server_api_url: String,
    /// Set `Secure` on cookies (defaults to whether `public_url` is https).
    pub cookie_secure: bool,
    /// Whether the dev login (any name, with the one-time admin password for admins) is on.
    pub dev_login: bool,
    /// Users who are admins (created on first login or at start).
    pub admin_users: Vec<String>,
    /// Services and their tokens.
    pub services: Vec<ServiceConfig>,
    /// Seconds a spawn may take before it is failed.
    pub spawn_timeout_secs: u64,
    /// Seconds a browser session lives.
    pub session_ttl_secs: i64,
    /// SHA-256 (hex) of the one-time admin password the dev login asks of `admin_users`
    /// ([`auth::login::generate_admin_password`]); `None`: admins cannot use the dev login.
    pub admin_password_hash: Option<String>,
    /// The profiles, node pools and data sources users choose from (`--catalog`, or the
    /// cluster's); empty: one default profile and no check ([`catalog`]).
    pub catalog: catalog::SharedCatalog,
    /// The WorkspaceProfile of a start that names none, when the catalogue has it and the user
    /// may use it (else the first profile they may use).
    pub default_profile: String,
    /// Refuse OAuth authorization requests without a PKCE S256 challenge (JupyterHub accepts
    /// them, so the default does too; a challenge that is sent is always checked).
    pub oauth_require_pkce: bool,
    /// Single sign-on providers, discovered ([`auth::oidc::discover`]); their buttons are on the login
    /// page. Empty: no single sign-on.
    pub oidc_providers: Vec<Arc<auth::oidc::Provider>>,
    /// The built-in roles and those of `--roles` (JupyterHub's `load_roles`): the scopes of
    /// users, groups and services beyond `self` and admin.
    pub roles: crate::scopes::Roles,
    /// The Python of the single-user servers, when the hub knows it (`GET /info`).
    pub server_python: Option<api::hub::PythonInfo>,
    /// Which names a new server may take (API start and create, rename, spawn form):
    /// JupyterHub 6's rule by default, or any DNS label.
    pub server_name_rule: crate::policy::names::ServerNameRule,
    /// Per-user origins (`--user-domain`): each user's servers at `<label>.<domain>`
    /// ([`crate::config::user_domain`]); `None`: every server under the hub's own origin.
    pub user_domain: Option<crate::config::UserDomain>,
    /// Where the hub reads the Secrets of Slurm pools (`--secrets-dir`, by default
    /// `<data dir>/secrets`): a directory per Secret, a file per key, as a mounted Secret.
    pub secrets_dir: Option<std::path::PathBuf>,
    /// How often the hub asks the batch systems about unfinished jobs ([`jobs::watch`]).
    pub job_poll: std::time::Duration,
}

impl HubConfig {
    /// Settings for a hub reached at `public_url` whose servers call `server_api_url`.
    pub fn new(public_url: &str, server_api_url: &str) -> HubConfig {
        HubConfig {
            public_url: public_url.trim_end_matches('/').to_owned(),
            server_api_url: server_api_url.trim_end_matches('/').to_owned(),
            cookie_secure: public_url.starts_with("https://"),
            dev_login: false,
            admin_users: Vec::new(),
            services: Vec::new(),
            spawn_timeout_secs: 120,
            session_ttl_secs: 14 * 24 * 3600,
            admin_password_hash: None,
            catalog: catalog::SharedCatalog::default(),
            default_profile: crate::backend::kubernetes::DEFAULT_PROFILE.to_owned(),
            oauth_require_pkce: false,
            oidc_providers: Vec::new(),
            roles: crate::scopes::Roles::default(),
            server_python: None,
            server_name_rule: crate::policy::names::ServerNameRule::default(),
            user_domain: None,
            secrets_dir: None,
            job_poll: jobs::POLL_INTERVAL,
        }
    }

    /// The origin of `user`'s servers with a user domain (`https://<label>.<domain>`), `None`
    /// without one (or for a name without a host label, whose servers do not start).
    pub fn user_origin(&self, user: &str) -> Option<String> {
        let domain = self.user_domain.as_ref()?;
        domain.origin(&self.public_url, user).ok()
    }

    /// Where a server is opened, as JupyterHub's `User.server_url`: `/user/<u>/[<s>/]`, on the
    /// user's origin with a user domain (`https://alice.users.example.org/user/alice/`).
    pub fn server_url(&self, user: &str, server: &str) -> String {
        let path = crate::policy::names::server_url(user, server);
        match self.user_origin(user) {
            Some(origin) => format!("{origin}{path}"),
            None => path,
        }
    }

    /// The server's absolute URL, as JupyterHub's `User.public_url`: empty when the hub has no
    /// public URL and no user domain.
    pub fn server_public_url(&self, user: &str, server: &str) -> String {
        let url = self.server_url(user, server);
        self.public_url_of(&url).into_owned()
    }

    /// [`Self::server_public_url`] of a server URL already made by [`Self::server_url`]: the URL
    /// itself when absolute or without a public URL, else prefixed with the public URL.
    pub fn public_url_of<'a>(&self, url: &'a str) -> std::borrow::Cow<'a, str> {
        if url.contains("://") || self.public_url.is_empty() {
            url.into()
        } else {
            format!("{}{url}", self.public_url).into()
        }
    }

    /// Where a redirect to an on-site path (`next=`) leads: a path under `/user/<name>/` goes to
    /// that user's origin with a user domain (the proxy serves it nowhere else); any other path,
    /// and every path without a user domain, stays as it is.
    pub fn location(&self, path: &str) -> String {
        if self.user_domain.is_some()
            && let Some(p) = crate::proxy::paths::parse_user_path(path)
            && let Some(origin) = self.user_origin(&p.user)
        {
            return format!("{origin}{path}");
        }
        path.to_owned()
    }
}

/// The hub's shared state.
pub struct Hub {
    /// The database.
    pub store: Store,
    /// Where servers run.
    pub backend: Arc<dyn WorkspaceBackend>,
    /// Settings.
    pub config: HubConfig,
    /// Spawns and stops driven by this process, with their progress.
    pub spawns: spawns::Spawns,
    /// Set by `POST /hub/api/shutdown`: the process serving this hub stops ([`Hub::shutdown`]).
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Recently resolved API tokens ([`auth::cache`]).
    pub token_cache: auth::cache::TokenCache,
    /// Where every audit event is written ([`audit::AuditLog::record`]), spooled through
    /// database outages.
    pub audit: audit::AuditLog,
}

/// Handlers' state.
pub type HubState = Arc<Hub>;

impl Hub {
    /// A hub over `store` and `backend`, its audit spool in memory only.
    pub fn new(store: Store, backend: Arc<dyn WorkspaceBackend>, config: HubConfig) -> HubState {
        let audit = audit::AuditLog::new(store.clone());
        Hub::with_audit(store, backend, config, audit)
    }

    /// [`Hub::new`] writing its audit events through `audit` (a spool kept in a file).
    pub fn with_audit(
        store: Store,
        backend: Arc<dyn WorkspaceBackend>,
        config: HubConfig,
        audit: audit::AuditLog,
    ) -> HubState {
        Arc::new(Hub {
            store,
            backend,
            config,
            spawns: spawns::Spawns::default(),
            shutdown: tokio::sync::watch::channel(false).0,
            token_cache: Default::default(),
            audit,
        })
    }

    /// Resolves once a shutdown was requested through the API (never otherwise).
    pub fn shutdown(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Every route of the hub.
pub fn router(hub: HubState) -> Router {
    Router::new()
        .merge(api::router())
        .merge(auth::oauth::router())
        .merge(auth::oidc::router())
        .merge(views::router())
        .with_state(hub)
}
