//! Where requests go: route sources (in memory, the hub's store) and the proxy's cache of them.
//!
//! The cache holds the whole route table, replaced from [`RouteSource::snapshot`] every refresh
//! interval (about a second) by a background task. Requests read it without touching the
//! source. A route the table lacks (a server started since the last refresh) is looked up in the
//! source at once and kept in an overlay until the next refresh, so a fresh server is reachable
//! immediately.
//!
//! Longest prefix, as configurable-http-proxy routes JupyterHub's paths: `/user/<name>/<seg>/…`
//! goes to the named server `<seg>` when `(name, seg)` is a route, else to the default server
//! `(name, "")`. So that the default server's own paths (`/user/alice/lab`, `/user/alice/api/…`)
//! do not cost a lookup each, a `(name, seg)` that is not a route while the default server is
//! cached is remembered as such until the owner's routes change in a refresh (or 30 s pass).
//! Consequence: a named server started within a refresh interval after a request for its very
//! path was sent to the default server is reached after the next refresh, not at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

use super::Error;
use crate::store::{MAX_PAGE_LIMIT, ServerState, Store, StoreError};

/// Where one user's server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The owner.
    pub user: String,
    /// The server's name, `""` for the default server.
    pub server: String,
    /// The server's origin, `http://host:port`. Only the scheme and authority are used: the
    /// request's path is forwarded as the client sent it, since a single-user server serves
    /// under `/user/<name>/[<server>/]` itself.
    pub target: String,
}

impl Route {
    pub fn new(
        user: impl Into<String>,
        server: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Route {
            user: user.into(),
            server: server.into(),
            target: target.into(),
        }
    }
}

/// Where JupyterHub's services with a URL are served: `/services/<name>/…`.
pub const SERVICES_PREFIX: &str = "/services/";

/// A hub service with a URL (JupyterHub's `services: [{name, url}]`): requests for
/// `/services/<name>` and `/services/<name>/…` go to it, path and query unchanged, as
/// JupyterHub routes them through configurable-http-proxy (`Proxy.add_service`, route
/// `service.proxy_spec` = `/services/<name>/` to `service.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    /// The service's name: letters, digits, `-` and `_`.
    pub name: String,
    /// Its origin, `http://host:port`.
    pub target: String,
}

impl ServiceRoute {
    /// Parses `NAME@URL`, URL an `http://host:port` origin (a path of `/` at most: the request's
    /// path is forwarded unchanged).
    pub fn parse(spec: &str) -> Result<ServiceRoute, String> {
        let (name, url) = spec
            .split_once('@')
            .ok_or_else(|| format!("{spec:?}: expected NAME@URL"))?;
        ServiceRoute::new(name, url)
    }

    /// The route of service `name` at `url` (see [`ServiceRoute::parse`]).
    pub fn new(name: &str, url: &str) -> Result<ServiceRoute, String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "service {name:?}: the name must be letters, digits, '-' or '_'"
            ));
        }
        let upstream = Upstream::parse(url).map_err(|e| format!("service {name}: {e}"))?;
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("service {name}: {url:?} is not a URL"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!(
                "service {name}: {url:?} has a path or query; give its origin, http://host:port \
                 (the proxy forwards /services/{name}/… with its path unchanged)"
            ));
        }
        Ok(ServiceRoute {
            name: name.to_owned(),
            target: upstream.origin,
        })
    }

    /// Whether `path` is this service's: `/services/<name>` or under `/services/<name>/`.
    pub fn matches(&self, path: &str) -> bool {
        path.strip_prefix(SERVICES_PREFIX)
            .and_then(|rest| rest.strip_prefix(self.name.as_str()))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The prefix its cookies must stay under, `/services/<name>/`.
    pub fn prefix(&self) -> String {
        format!("{SERVICES_PREFIX}{}/", self.name)
    }
}

/// Where the proxy learns its routes.
pub trait RouteSource: Send + Sync + 'static {
    /// The route of the server `server` of `user`, if it runs.
    fn lookup<'a>(
        &'a self,
        user: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<Option<Route>, Error>>;

    /// Every route.
    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<Route>, Error>>;

    /// Whether `user` has a server named `server`, running or not: tells a stopped named server
    /// (`/user/alice/gpu/` redirects to the spawn page of `alice/gpu`) from a path of the default
    /// server. Asked only when no server of the path runs.
    fn server_exists<'a>(
        &'a self,
        user: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = (user, server);
        Box::pin(async { Ok(false) })
    }
}

/// Routes held in memory: tests, benchmarks, static setups.
#[derive(Debug, Default)]
pub struct MemoryRoutes {
    inner: RwLock<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// `(user, server) -> target` of the running servers.
    routes: HashMap<(String, String), String>,
    /// Servers known to exist, running or not.
    known: std::collections::HashSet<(String, String)>,
}

impl MemoryRoutes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes from a list.
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Self {
        let this = Self::new();
        for r in routes {
            this.insert(&r.user, &r.server, &r.target);
        }
        this
    }

    /// Adds or replaces the route of a running server.
    pub fn insert(&self, user: &str, server: &str, target: &str) {
        let mut inner = self.inner.write().expect("route lock poisoned");
        let key = (user.to_owned(), server.to_owned());
        inner.known.insert(key.clone());
        inner.routes.insert(key, target.to_owned());
    }

    /// Removes a server's route; the server stays known, as a stopped server.
    pub fn remove(&self, user: &str, server: &str) {
        let mut inner = self.inner.write().expect("route lock poisoned");
        inner.routes.remove(&(user.to_owned(), server.to_owned()));
    }

    /// Forgets a server altogether (deleted).
    pub fn forget(&self, user: &str, server: &str) {
        let mut inner = self.inner.write().expect("route lock poisoned");
        let key = (user.to_owned(), server.to_owned());
        inner.routes.remove(&key);
        inner.known.remove(&key);
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.inner.read().expect("route lock poisoned").routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RouteSource for MemoryRoutes {
    fn lookup<'a>(
        &'a self,
        user: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<Option<Route>, Error>> {
        let inner = self.inner.read().expect("route lock poisoned");
        let route = inner
            .routes
            .get(&(user.to_owned(), server.to_owned()))
            .map(|target| Route::new(user, server, target.clone()));
        Box::pin(async move { Ok(route) })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<Route>, Error>> {
        let inner = self.inner.read().expect("route lock poisoned");
        let routes = inner
            .routes
            .iter()
            .map(|((u, s), t)| Route::new(u.clone(), s.clone(), t.clone()))
            .collect();
        Box::pin(async move { Ok(routes) })
    }

    fn server_exists<'a>(
        &'a self,
        user: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let known = self
            .inner
            .read()
            .expect("route lock poisoned")
            .known
            .contains(&(user.to_owned(), server.to_owned()));
        Box::pin(async move { Ok(known) })
    }
}

/// Routes from the hub's database: the running servers that have a URL.
#[derive(Debug, Clone)]
pub struct StoreRoutes {
    store: Store,
}

impl StoreRoutes {
    pub fn new(store: Store) -> Self {
        StoreRoutes { store }
    }
}

/// The route key of server `server`'s Dask dashboard: `dask` for the default server (no server
/// is named so), `<server>/dask` for a named one (no server name holds a `/`).
pub fn dashboard_key(server: &str) -> String {
    let dask = crate::policy::names::DASHBOARD_SEGMENT;
    if server.is_empty() {
        dask.to_owned()
    } else {
        format!("{server}/{dask}")
    }
}

/// The server whose Dask dashboard the route key `key` is ([`dashboard_key`]), if it is one.
pub fn dashboard_owner(key: &str) -> Option<&str> {
    let dask = crate::policy::names::DASHBOARD_SEGMENT;
    if key == dask {
        return Some("");
    }
    key.strip_suffix(dask)?.strip_suffix('/')
}

/// The route of a stored server's Dask dashboard, if the server runs and its handle names one
/// (`policy::names::DASHBOARD_KEY`).
fn stored_dashboard_route(user: &str, server: &crate::store::Server) -> Option<Route> {
    if server.state != ServerState::Running {
        return None;
    }
    let target = crate::policy::names::dashboard_target(&server.spawner_state)?;
    match Upstream::parse(target) {
        Ok(upstream) => Some(Route::new(
            user,
            dashboard_key(&server.name),
            upstream.origin,
        )),
        Err(e) => {
            tracing::warn!(user, server = %server.name, error = %e, "unusable Dask dashboard target");
            None
        }
    }
}

/// The route of a stored server, if it runs at a usable URL.
fn stored_route(user: &str, server: &crate::store::Server) -> Option<Route> {
    if server.state != ServerState::Running {
        return None;
    }
    let url = server.url.as_deref()?;
    match Upstream::parse(url) {
        Ok(upstream) => Some(Route::new(user, server.name.clone(), upstream.origin)),
        Err(e) => {
            tracing::warn!(user, server = %server.name, error = %e, "server has no usable URL");
            None
        }
    }
}

impl RouteSource for StoreRoutes {
    fn lookup<'a>(
        &'a self,
        user: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<Option<Route>, Error>> {
        Box::pin(async move {
            if let Some(owner) = dashboard_owner(server) {
                return match self.store.get_server_by_names(user, owner).await {
                    Ok(s) => Ok(stored_dashboard_route(user, &s)),
                    Err(StoreError::NotFound) => Ok(None),
                    Err(e) => Err(e.into()),
                };
            }
            match self.store.get_server_by_names(user, server).await {
                Ok(s) => Ok(stored_route(user, &s)),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Vec<Route>, Error>> {
        Box::pin(async move {
            let mut routes = Vec::new();
            let mut after = None;
            loop {
                let page = self
                    .store
                    .list_servers_in_states(&[ServerState::Running], after, MAX_PAGE_LIMIT)
                    .await?;
                let full = page.len() == MAX_PAGE_LIMIT as usize;
                after = page.last().map(|s| s.server.id);
                routes.extend(page.iter().flat_map(|s| {
                    stored_route(&s.user_name, &s.server)
                        .into_iter()
                        .chain(stored_dashboard_route(&s.user_name, &s.server))
                }));
                if !full {
                    return Ok(routes);
                }
            }
        })
    }

    fn server_exists<'a>(
        &'a self,
        user: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            match self.store.get_server_by_names(user, server).await {
                Ok(_) => Ok(true),
                Err(StoreError::NotFound) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// A parsed target: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority`.
    pub(crate) origin: String,
}

impl Upstream {
    /// Parses an `http://host[:port][/path]` URL; the path is ignored (see [`Route::target`]).
    pub(crate) fn parse(target: &str) -> Result<Upstream, Error> {
        let invalid = |reason| Error::InvalidTarget {
            target: target.to_owned(),
            reason,
        };
        let uri: Uri = target.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| invalid("no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(invalid("only http:// targets are supported"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in a target are not supported"));
        }
        Ok(Upstream {
            origin: format!("{scheme}://{authority}"),
            scheme,
            authority,
        })
    }

    /// The upstream URI of a request with this path and query.
    pub(crate) fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("scheme, authority and path make a URI")
    }
}

/// Values by user, then by server; a user has few servers, so they are a list.
#[derive(Debug)]
struct ByUser<V> {
    users: HashMap<Box<str>, Vec<(Box<str>, V)>>,
    len: usize,
}

impl<V> Default for ByUser<V> {
    fn default() -> Self {
        ByUser {
            users: HashMap::new(),
            len: 0,
        }
    }
}

impl<V> ByUser<V> {
    fn get(&self, user: &str, server: &str) -> Option<&V> {
        self.users
            .get(user)?
            .iter()
            .find(|(s, _)| &**s == server)
            .map(|(_, v)| v)
    }

    fn insert(&mut self, user: &str, server: &str, value: V) {
        let servers = self.users.entry(user.into()).or_default();
        match servers.iter_mut().find(|(s, _)| &**s == server) {
            Some((_, v)) => *v = value,
            None => {
                servers.push((server.into(), value));
                self.len += 1;
            }
        }
    }

    fn retain_users(&mut self, mut keep: impl FnMut(&str, &mut Vec<(Box<str>, V)>) -> bool) {
        self.users.retain(|u, servers| keep(u, servers));
        self.len = self.users.values().map(Vec::len).sum();
    }
}

/// Most entries the overlay and the remembered non-routes each hold; past it they stop
/// growing until the next refresh (lookups then go to the source).
const MAX_SIDE_ENTRIES: usize = 100_000;

/// How long a remembered non-route lasts at most.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// What a request's path resolves to.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// A running server.
    Up {
        server: String,
        upstream: Arc<Upstream>,
        /// From the cache (which may be stale), not just looked up.
        cached: bool,
    },
    /// No server of the path runs; `server` is the one to start.
    Down { server: String },
}

impl Resolved {
    pub(crate) fn server(&self) -> &str {
        match self {
            Resolved::Up { server, .. } | Resolved::Down { server } => server,
        }
    }
}

/// The proxy's cache of a [`RouteSource`].
pub(crate) struct RouteCache {
    source: Arc<dyn RouteSource>,
    table: RwLock<Arc<ByUser<Arc<Upstream>>>>,
    /// Routes looked up since the last refresh.
    overlay: RwLock<ByUser<Arc<Upstream>>>,
    /// `(user, segment)` pairs that are not routes, with when that was learnt.
    negative: RwLock<ByUser<Instant>>,
    /// One refresh at a time, so an older snapshot never replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
}

impl RouteCache {
    pub(crate) fn new(source: Arc<dyn RouteSource>) -> Self {
        RouteCache {
            source,
            table: RwLock::new(Arc::new(ByUser::default())),
            overlay: RwLock::new(ByUser::default()),
            negative: RwLock::new(ByUser::default()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Routes in the table.
    pub(crate) fn len(&self) -> usize {
        self.table.read().expect("route lock poisoned").len
    }

    /// Replaces the table with a new snapshot of the source. Returns the number of routes.
    pub(crate) async fn refresh(&self) -> Result<usize, Error> {
        let _one = self.refreshing.lock().await;
        let routes = self.source.snapshot().await?;
        let mut table = ByUser::default();
        for route in routes {
            match Upstream::parse(&route.target) {
                Ok(upstream) => table.insert(&route.user, &route.server, Arc::new(upstream)),
                Err(e) => tracing::warn!(
                    user = %route.user, server = %route.server, error = %e, "route skipped"
                ),
            }
        }
        let len = table.len;
        let table = Arc::new(table);
        let old = std::mem::replace(
            &mut *self.table.write().expect("route lock poisoned"),
            table.clone(),
        );
        self.overlay
            .write()
            .expect("route lock poisoned")
            .retain_users(|_, _| false);
        let now = Instant::now();
        self.negative
            .write()
            .expect("route lock poisoned")
            .retain_users(|user, entries| {
                entries.retain(|(_, at)| now.duration_since(*at) < NEGATIVE_TTL);
                !entries.is_empty() && same_routes(old.users.get(user), table.users.get(user))
            });
        Ok(len)
    }

    fn cached(&self, user: &str, server: &str) -> Option<Arc<Upstream>> {
        if let Some(up) = self
            .table
            .read()
            .expect("route lock poisoned")
            .get(user, server)
        {
            return Some(up.clone());
        }
        self.overlay
            .read()
            .expect("route lock poisoned")
            .get(user, server)
            .cloned()
    }

    fn is_negative(&self, user: &str, server: &str) -> bool {
        self.negative
            .read()
            .expect("route lock poisoned")
            .get(user, server)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    /// Asks the source; remembers the answer until the next refresh.
    pub(crate) async fn lookup(
        &self,
        user: &str,
        server: &str,
    ) -> Result<Option<Arc<Upstream>>, Error> {
        let upstream = match self.source.lookup(user, server).await? {
            Some(route) => Some(Arc::new(Upstream::parse(&route.target)?)),
            None => None,
        };
        match &upstream {
            Some(up) => {
                let mut overlay = self.overlay.write().expect("route lock poisoned");
                if overlay.len < MAX_SIDE_ENTRIES {
                    overlay.insert(user, server, up.clone());
                }
            }
            None => {
                let mut negative = self.negative.write().expect("route lock poisoned");
                if negative.len < MAX_SIDE_ENTRIES {
                    negative.insert(user, server, Instant::now());
                }
            }
        }
        Ok(upstream)
    }

    /// The route of `user`'s server `server`'s Dask dashboard (`/user/<user>/[<server>/]dask/…`),
    /// the longest prefix: `None` when it has none, and the path is the server's own.
    pub(crate) async fn resolve_dashboard(
        &self,
        user: &str,
        server: &str,
    ) -> Result<Option<Resolved>, Error> {
        let key = dashboard_key(server);
        let up = |upstream, cached| {
            Some(Resolved::Up {
                server: key.clone(),
                upstream,
                cached,
            })
        };
        if let Some(upstream) = self.cached(user, &key) {
            return Ok(up(upstream, true));
        }
        if self.is_negative(user, &key) {
            return Ok(None);
        }
        Ok(match self.lookup(user, &key).await? {
            Some(upstream) => up(upstream, false),
            None => None,
        })
    }

    /// Resolves `/user/<user>/<segment>/…` by longest prefix.
    pub(crate) async fn resolve(
        &self,
        user: &str,
        segment: Option<&str>,
    ) -> Result<Resolved, Error> {
        let up = |server: &str, upstream, cached| Resolved::Up {
            server: server.to_owned(),
            upstream,
            cached,
        };
        if let Some(seg) = segment
            && let Some(upstream) = self.cached(user, seg)
        {
            return Ok(up(seg, upstream, true));
        }
        let default = self.cached(user, "");
        if let Some(seg) = segment
            && !(default.is_some() && self.is_negative(user, seg))
        {
            match self.lookup(user, seg).await {
                Ok(Some(upstream)) => return Ok(up(seg, upstream, false)),
                Ok(None) => {}
                // The database is out of reach: the path goes to the default server, whose
                // route the table has (README, "Resilience").
                Err(Error::Store(e)) if e.is_unavailable() && default.is_some() => {
                    tracing::warn!(user, segment = seg, error = %e,
                        "database unavailable: routing to the default server");
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(upstream) = default {
            return Ok(up("", upstream, true));
        }
        if let Some(upstream) = self.lookup(user, "").await? {
            return Ok(up("", upstream, false));
        }
        let server = match segment {
            Some(seg) if self.source.server_exists(user, seg).await? => seg,
            _ => "",
        };
        Ok(Resolved::Down {
            server: server.to_owned(),
        })
    }
}

/// Whether a user's routes are the same in two tables (in any order).
fn same_routes(
    a: Option<&Vec<(Box<str>, Arc<Upstream>)>>,
    b: Option<&Vec<(Box<str>, Arc<Upstream>)>>,
) -> bool {
    let (a, b) = (
        a.map_or(&[][..], Vec::as_slice),
        b.map_or(&[][..], Vec::as_slice),
    );
    a.len() == b.len()
        && a.iter().all(|(s, up)| {
            b.iter()
                .any(|(t, other)| s == t && up.origin == other.origin)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_routes_parse_and_match_their_prefix() {
        let r = ServiceRoute::parse("dask-gateway@http://127.0.0.1:8001").unwrap();
        assert_eq!(r.name, "dask-gateway");
        assert_eq!(r.target, "http://127.0.0.1:8001");
        assert_eq!(r.prefix(), "/services/dask-gateway/");
        assert_eq!(
            ServiceRoute::parse("g@http://127.0.0.1:8001/")
                .unwrap()
                .target,
            "http://127.0.0.1:8001"
        );
        for path in [
            "/services/dask-gateway",
            "/services/dask-gateway/",
            "/services/dask-gateway/api/v1/clusters/",
        ] {
            assert!(r.matches(path), "{path}");
        }
        for path in [
            "/services/dask-gatewayx/api",
            "/services/",
            "/services/other/",
            "/hub/services/dask-gateway/",
            "/user/dask-gateway/",
        ] {
            assert!(!r.matches(path), "{path}");
        }
        for bad in [
            "dask-gateway",
            "@http://127.0.0.1:1",
            "a b@http://127.0.0.1:1",
            "g@https://127.0.0.1:1",
            "g@127.0.0.1:1",
            "g@http://127.0.0.1:1/prefix",
            "g@http://127.0.0.1:1/?q=1",
            "g@http://u:p@127.0.0.1:1",
        ] {
            assert!(ServiceRoute::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_parse_to_origins() {
        let up = Upstream::parse("http://127.0.0.1:41234/user/alice/").unwrap();
        assert_eq!(up.origin, "http://127.0.0.1:41234");
        let pq = PathAndQuery::from_static("/user/alice/lab?x=1");
        assert_eq!(
            up.uri(Some(&pq)).to_string(),
            "http://127.0.0.1:41234/user/alice/lab?x=1"
        );
        assert_eq!(up.uri(None).to_string(), "http://127.0.0.1:41234/");
        for bad in [
            "127.0.0.1:80",
            "https://h",
            "/x",
            "http://u:p@h/",
            "ftp://h",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }

    fn cache(routes: &[(&str, &str, &str)]) -> (Arc<MemoryRoutes>, RouteCache) {
        let source = Arc::new(MemoryRoutes::from_routes(
            routes.iter().map(|(u, s, t)| Route::new(*u, *s, *t)),
        ));
        (source.clone(), RouteCache::new(source))
    }

    fn target(r: &Resolved) -> (&str, Option<&str>) {
        match r {
            Resolved::Up {
                server, upstream, ..
            } => (server, Some(&upstream.origin)),
            Resolved::Down { server } => (server, None),
        }
    }

    #[tokio::test]
    async fn longest_prefix_and_fresh_routes() {
        let (source, cache) = cache(&[
            ("alice", "", "http://127.0.0.1:1"),
            ("alice", "gpu", "http://127.0.0.1:2"),
        ]);
        assert_eq!(cache.refresh().await.unwrap(), 2);
        let r = cache.resolve("alice", Some("gpu")).await.unwrap();
        assert_eq!(target(&r), ("gpu", Some("http://127.0.0.1:2")));
        let r = cache.resolve("alice", Some("lab")).await.unwrap();
        assert_eq!(target(&r), ("", Some("http://127.0.0.1:1")));
        let r = cache.resolve("alice", None).await.unwrap();
        assert_eq!(target(&r), ("", Some("http://127.0.0.1:1")));

        // Started after the refresh: reachable at once.
        source.insert("bob", "", "http://127.0.0.1:3");
        let r = cache.resolve("bob", Some("lab")).await.unwrap();
        assert_eq!(target(&r), ("", Some("http://127.0.0.1:3")));
        source.insert("alice", "big", "http://127.0.0.1:4");
        let r = cache.resolve("alice", Some("big")).await.unwrap();
        assert_eq!(target(&r), ("big", Some("http://127.0.0.1:4")));

        // `lab` is remembered as no server of alice's until her routes change.
        source.insert("alice", "lab", "http://127.0.0.1:5");
        let r = cache.resolve("alice", Some("lab")).await.unwrap();
        assert_eq!(target(&r), ("", Some("http://127.0.0.1:1")));
        cache.refresh().await.unwrap();
        let r = cache.resolve("alice", Some("lab")).await.unwrap();
        assert_eq!(target(&r), ("lab", Some("http://127.0.0.1:5")));

        // Stopped: a known named server is the one to start; unknown, the default one.
        source.remove("alice", "gpu");
        source.remove("alice", "");
        source.remove("alice", "big");
        source.remove("alice", "lab");
        cache.refresh().await.unwrap();
        let r = cache.resolve("alice", Some("gpu")).await.unwrap();
        assert_eq!(target(&r), ("gpu", None));
        let r = cache.resolve("alice", Some("tree")).await.unwrap();
        assert_eq!(target(&r), ("", None));
        let r = cache.resolve("nobody", None).await.unwrap();
        assert_eq!(target(&r), ("", None));
    }

    #[test]
    fn dashboard_keys_name_their_server() {
        assert_eq!(dashboard_key(""), "dask");
        assert_eq!(dashboard_key("gpu"), "gpu/dask");
        assert_eq!(dashboard_owner("dask"), Some(""));
        assert_eq!(dashboard_owner("gpu/dask"), Some("gpu"));
        for not_one in ["", "gpu", "gpudask", "dask/gpu", "/das"] {
            assert_eq!(dashboard_owner(not_one), None, "{not_one:?}");
        }
    }

    #[tokio::test]
    async fn dashboards_by_longest_prefix() {
        let (source, cache) = cache(&[
            ("alice", "", "http://127.0.0.1:1"),
            ("alice", "dask", "http://127.0.0.1:11"),
            ("alice", "gpu", "http://127.0.0.1:2"),
        ]);
        assert_eq!(cache.refresh().await.unwrap(), 3);
        // The default server's dashboard, then the paths of the server itself.
        let r = cache.resolve_dashboard("alice", "").await.unwrap().unwrap();
        assert_eq!(target(&r), ("dask", Some("http://127.0.0.1:11")));
        let r = cache.resolve("alice", Some("lab")).await.unwrap();
        assert_eq!(target(&r), ("", Some("http://127.0.0.1:1")));
        // gpu has no dashboard: its `dask/` path is its own.
        assert!(
            cache
                .resolve_dashboard("alice", "gpu")
                .await
                .unwrap()
                .is_none()
        );
        // Started after the refresh: reachable at once.
        source.insert("alice", "gpu/dask", "http://127.0.0.1:12");
        cache.refresh().await.unwrap();
        let r = cache
            .resolve_dashboard("alice", "gpu")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(target(&r), ("gpu/dask", Some("http://127.0.0.1:12")));
        source.insert("bob", "dask", "http://127.0.0.1:13");
        let r = cache.resolve_dashboard("bob", "").await.unwrap().unwrap();
        assert_eq!(target(&r), ("dask", Some("http://127.0.0.1:13")));
        // Gone with its server.
        source.remove("alice", "dask");
        cache.refresh().await.unwrap();
        assert!(
            cache
                .resolve_dashboard("alice", "")
                .await
                .unwrap()
                .is_none()
        );
    }
}
