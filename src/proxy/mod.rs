//! The HTTP and WebSocket reverse proxy in front of the hub and the users' servers.
//!
//! * `/user/<name>/` and `/user/<name>/<server>/` go to the user's server, chosen by longest
//!   prefix as configurable-http-proxy does ([`routes`]); the path and query are forwarded
//!   unchanged, `Host` as the client sent it, `X-Forwarded-For/-Proto/-Host` added, hop-by-hop
//!   headers dropped. Bodies stream both ways through a pooled HTTP/1 client with keep-alive.
//! * A WebSocket handshake is forwarded; on `101` both connections are spliced ([`splice`]).
//! * A stopped or unknown server: a browser's page load is redirected to
//!   `/hub/spawn/<name>[/<server>]?next=…`, anything else gets `503` JSON.
//! * `/services/<name>/…` goes to the hub service `<name>` when it has a URL
//!   ([`ProxyConfig::services`]), as JupyterHub routes its services; the service checks its
//!   callers itself (dask-gateway asks the hub who a token is), the hub's session cookie is not
//!   forwarded, and its cookies stay under its prefix.
//! * Everything else (`/hub/…`, `/`) goes to the default target, the hub, or to each of
//!   several hubs in turn, a request refused by one being retried on another ([`upstreams`]).
//! * Defence in depth ([`auth`]): a request for a user's server needs a credential (token in
//!   `Authorization` or `?token=`, or the hub's session cookie) holding `access:servers` on that
//!   server; none → login redirect or `401`, another user's → `403`, and the server sees nothing.
//!   The hub's session cookie is never forwarded to users' servers.
//!
//! * With a user domain (`--user-domain`, [`crate::config::user_domain`]), `/user/<name>/…` is served only on
//!   `<name's label>.<domain>` and everything else only on the other hosts; a request on the
//!   wrong host gets 404 (a browser's page load of a server on the hub's host is redirected to
//!   the server's host). On a user's host the credentials are a token or the single-user
//!   server's own login cookie (the hub's cookies never reach that host); a browser's page load
//!   without either goes to the server, which logs it in through the hub's OAuth.
//!
//! Routes come from a [`RouteSource`] (the hub's database in production), cached and refreshed
//! in the background, so several proxies can serve side by side from one database.
//! `GET /_atelier/proxy/health` answers `{"status": "ok", "routes": N}`.

mod auth;
mod body;
pub mod cookie;
mod forward;
pub mod paths;
mod routes;
mod splice;
mod upstreams;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use auth::{Authorizer, Credential, StoreAuthorizer, Verdict};
pub use body::ResponseBody;
pub use routes::{MemoryRoutes, Route, RouteSource, SERVICES_PREFIX, ServiceRoute, StoreRoutes};
pub use splice::splice;

use crate::config::{UserDomain, parse_user_domain};
use auth::AuthGate;
use body::RequestBody;
use routes::{RouteCache, Upstream};

/// The proxy's own health endpoint.
pub const HEALTH_PATH: &str = "/_atelier/proxy/health";

/// What a proxy fails with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        target: String,
        reason: &'static str,
    },
    /// A [`RouteSource`] or [`Authorizer`] of another kind failed.
    #[error("{0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Settings of a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where paths outside `/user/` go: the hub, `http://host:port`, or several hubs on one
    /// database, comma-separated (taken in turn, a request refused by one retried on another:
    /// [`upstreams`]).
    pub default_target: String,
    /// How often the route table is reloaded from the source.
    pub refresh_interval: Duration,
    /// How long an authorization decision is reused (the revocation delay).
    pub auth_cache_ttl: Duration,
    /// How long [`serve`] waits for requests in flight after shutdown before cutting them.
    pub shutdown_grace: Duration,
    /// Bytes read at once from an upstream connection (each read buffer is this big; hyper's
    /// adaptive default grows to ~400 KiB on large bodies and keeps it while the connection
    /// idles in the pool).
    pub upstream_read_buffer: usize,
    /// Most bytes buffered per client connection: the request head (so the largest header
    /// block accepted) and the response data queued for writing. At least 8 KiB.
    pub client_buffer: usize,
    /// Per-user origins (`--user-domain`, [`crate::config::user_domain`]): users' servers only on their own hosts,
    /// the hub only on the others. `None`: everything on every host (path mode).
    pub user_domain: Option<UserDomain>,
    /// The hub's public URL: redirects from a user's host to the hub (the spawn page) are
    /// absolute. Used only with `user_domain`.
    pub public_url: String,
    /// The hub's services with a URL, served at `/services/<name>/` (on the hub's host).
    pub services: Vec<ServiceRoute>,
}

/// The default size of an upstream read and of a client connection's buffer: 256 KiB. A 1 MiB
/// body crosses the proxy in 4 reads and 4 writes instead of 16 of each at 64 KiB, with as many
/// fewer wake-ups of the proxy, the upstream and the client (cross-core wake-ups, on a proxy
/// node, are what a large body costs beyond the kernel's copies; bench/README.md, "Proxy").
/// The price is memory while bodies are in flight: at most this much per upstream connection
/// reading and per client connection writing.
pub const DEFAULT_BUFFER: usize = 256 * 1024;

impl ProxyConfig {
    /// Defaults: refresh every second, decisions kept 10 s, 10 s of grace at shutdown,
    /// [`DEFAULT_BUFFER`] buffers.
    pub fn new(default_target: impl Into<String>) -> Self {
        ProxyConfig {
            default_target: default_target.into(),
            refresh_interval: Duration::from_secs(1),
            auth_cache_ttl: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            upstream_read_buffer: DEFAULT_BUFFER,
            client_buffer: DEFAULT_BUFFER,
            user_domain: None,
            public_url: String::new(),
            services: Vec::new(),
        }
    }
}

/// A proxy: its routes, its authorization and its upstream client. Serve it with [`serve`].
pub struct Proxy {
    config: ProxyConfig,
    routes: RouteCache,
    auth: Option<AuthGate>,
    client: Client<HttpConnector, RequestBody>,
    /// The hubs (`default_target`, [`upstreams`]).
    hubs: upstreams::Hubs,
    /// The services with a URL and where they are.
    services: Vec<(ServiceRoute, Arc<Upstream>)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .field("routes", &self.routes.len())
            .field("auth", &self.auth.is_some())
            .finish()
    }
}

impl Proxy {
    /// Loads the routes once and starts refreshing them in the background (until the proxy is
    /// dropped). Without an `authorizer` every request for a user's server is let through (tests
    /// and benchmarks; production runs with [`StoreAuthorizer`]). Needs a Tokio runtime.
    pub async fn start(
        config: ProxyConfig,
        source: Arc<dyn RouteSource>,
        authorizer: Option<Arc<dyn Authorizer>>,
    ) -> Result<Arc<Proxy>, Error> {
        let hubs = upstreams::Hubs::parse(&config.default_target)?;
        let services = config
            .services
            .iter()
            .map(|s| Ok((s.clone(), Arc::new(Upstream::parse(&s.target)?))))
            .collect::<Result<_, Error>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .http1_read_buf_exact_size(config.upstream_read_buffer.max(8 * 1024))
            .build(connector);
        let proxy = Arc::new(Proxy {
            routes: RouteCache::new(source),
            auth: authorizer.map(|a| AuthGate::new(a, config.auth_cache_ttl)),
            client,
            hubs,
            services,
            config,
        });
        proxy.refresh().await?;
        spawn_refresher(Arc::downgrade(&proxy), proxy.config.refresh_interval);
        Ok(proxy)
    }

    /// Reloads the route table now. Returns the number of routes.
    pub async fn refresh(&self) -> Result<usize, Error> {
        self.routes.refresh().await
    }

    /// Routes in the table.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }
}

fn spawn_refresher(proxy: Weak<Proxy>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(proxy) = proxy.upgrade() else { return };
            if let Err(e) = proxy.refresh().await {
                tracing::warn!(error = %e, "route refresh failed; keeping the previous table");
            }
        }
    });
}

/// Where [`serve`] is in its life; connections and spliced WebSockets watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Finish the requests in flight, take no new ones; WebSockets close.
    Draining,
    /// Grace is over: cut everything.
    Stopped,
}

/// What a request knows of its connection.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    remote: SocketAddr,
    phase: watch::Receiver<Phase>,
}

/// Serves `proxy` on `listener` until `shutdown` completes; then stops accepting, closes
/// WebSockets, lets requests in flight finish for [`ProxyConfig::shutdown_grace`] and cuts the
/// rest. Returns when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ConnCtx {
            remote,
            phase: phase_rx.clone(),
        };
        tokio::spawn(serve_connection(stream, proxy.clone(), ctx));
    }
    drop(listener);
    drop(phase_rx);
    phase_tx.send_replace(Phase::Draining);
    if tokio::time::timeout(proxy.config.shutdown_grace, phase_tx.closed())
        .await
        .is_err()
    {
        phase_tx.send_replace(Phase::Stopped);
        phase_tx.closed().await;
    }
}

async fn serve_connection(stream: TcpStream, proxy: Arc<Proxy>, ctx: ConnCtx) {
    let _ = stream.set_nodelay(true);
    let mut phase = ctx.phase.clone();
    let client_buffer = proxy.config.client_buffer.max(8 * 1024);
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, ctx).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .max_buf_size(client_buffer)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let draining = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
            false
        }
        _ = phase.wait_for(|p| *p != Phase::Running) => true,
    };
    if draining {
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = phase.wait_for(|p| *p == Phase::Stopped) => {}
        }
    }
}

/// `atelier proxy`: the proxy alone, routes and authorization from the hub's database.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, env = "ATELIER_PROXY_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
    /// The hub's database (`sqlite://…` or `postgres://…`).
    #[arg(
        long,
        env = "ATELIER_DATABASE_URL",
        default_value = "sqlite://atelier.sqlite"
    )]
    pub database_url: String,
    /// Where paths outside `/user/` go: the hub, or several hubs on one database,
    /// comma-separated (taken in turn; a request a hub refuses is sent to another).
    #[arg(
        long,
        env = "ATELIER_PROXY_DEFAULT_TARGET",
        default_value = "http://127.0.0.1:8081"
    )]
    pub default_target: String,
    /// Milliseconds between reloads of the route table.
    #[arg(long, env = "ATELIER_PROXY_REFRESH_MS", default_value_t = 1000)]
    pub refresh_ms: u64,
    /// Seconds an authorization decision is reused: how long a revoked credential still works.
    #[arg(long, env = "ATELIER_PROXY_AUTH_CACHE_SECS", default_value_t = 10)]
    pub auth_cache_secs: u64,
    /// Serve each user's servers on a host of their own, `<user>.<domain>` (as the hub's
    /// `--user-domain`; needs a wildcard DNS record and a wildcard TLS certificate).
    #[arg(long, env = "ATELIER_USER_DOMAIN", value_parser = parse_user_domain)]
    pub user_domain: Option<UserDomain>,
    /// The site's public URL (the hub's host), for redirects from users' hosts to the hub.
    #[arg(
        long,
        env = "ATELIER_PUBLIC_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub public_url: String,
    /// A hub service with a URL, `NAME@URL` (as the hub's `--service NAME@URL=SCOPES`):
    /// `/services/NAME/…` is forwarded to URL, an `http://host:port` origin. Repeatable.
    #[arg(
        long = "service",
        env = "ATELIER_PROXY_SERVICES",
        value_delimiter = ';',
        value_parser = ServiceRoute::parse
    )]
    pub services: Vec<ServiceRoute>,
    /// KiB read at once from a server's connection (and the most a client connection buffers):
    /// larger moves large bodies with fewer system calls and wake-ups, for more memory while
    /// they are in flight.
    #[arg(long, env = "ATELIER_PROXY_BUFFER_KIB", default_value_t = (DEFAULT_BUFFER / 1024) as u32,
          value_parser = clap::value_parser!(u32).range(8..=4096))]
    pub buffer_kib: u32,
}

impl ProxyArgs {
    pub fn proxy_config(&self) -> ProxyConfig {
        let buffer = self.buffer_kib as usize * 1024;
        ProxyConfig {
            upstream_read_buffer: buffer,
            client_buffer: buffer,
            refresh_interval: Duration::from_millis(self.refresh_ms.max(50)),
            auth_cache_ttl: Duration::from_secs(self.auth_cache_secs),
            user_domain: self.user_domain.clone(),
            public_url: self.public_url.trim_end_matches('/').to_owned(),
            services: self.services.clone(),
            ..ProxyConfig::new(self.default_target.clone())
        }
    }
}

/// Runs `atelier proxy` until SIGINT or SIGTERM.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let store = crate::store::Store::connect(&args.database_url).await?;
    let proxy = Proxy::start(
        args.proxy_config(),
        Arc::new(StoreRoutes::new(store.clone())),
        Some(Arc::new(StoreAuthorizer::new(store.clone()))),
    )
    .await?;
    let listener = TcpListener::bind(args.bind).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        routes = proxy.route_count(),
        services = ?args.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
        default_target = %args.default_target,
        "proxy listening"
    );
    serve(listener, proxy, shutdown_signal()).await;
    store.close().await;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
