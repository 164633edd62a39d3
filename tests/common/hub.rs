//! The in-process hub of the hub tests (`hub_api`, `hub_web`, `hub_catalog`, `security`): a
//! [`TestBackend`] that runs one tiny HTTP server per workspace, a hub over a store served with
//! `hub::router` on 127.0.0.1:0 ([`Served`], stopped when dropped), its responses ([`Resp`]), a
//! browser that keeps the session cookie and never follows redirects ([`Browser`], logged in
//! through the dev login by [`Served::logged_in`]), and the [`stories!`] of a file run on both
//! engines.
//!
//! A test file adds what only it needs with an `impl Served { … }` of its own.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier::backend::{
    BackendError, BackendStatus, ProgressEvent, SpawnRequest, Spawned, WorkspaceBackend,
};
use atelier::hub::auth::login::hash_admin_password;
use atelier::hub::{self, Hub, HubConfig, HubState};
use atelier::store::{AuditAction, AuditEvent, AuditQuery, Server, ServerState, Store};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::TestDb;

/// The one-time admin password of the hubs of [`dev_login_config`] (admin `root`).
pub const ADMIN_PASSWORD: &str = "0123456789abcdef0123456789abcdef";

// ---- a backend that runs real HTTP servers --------------------------------------------------

struct Running {
    port: u16,
    task: JoinHandle<()>,
}

/// Starts one tiny HTTP server per workspace on 127.0.0.1:0 and keeps the spawn requests (whose
/// environment holds each server's API token, the OAuth client secret). Starts and stops can be
/// held at a gate to observe pending states; `user_options.fail` makes a start fail with that
/// message.
pub struct TestBackend {
    servers: Mutex<HashMap<u64, Running>>,
    next: AtomicU64,
    start_gate: watch::Sender<bool>,
    stop_gate: watch::Sender<bool>,
    requests: Mutex<Vec<SpawnRequest>>,
}

impl TestBackend {
    pub fn new() -> Arc<TestBackend> {
        Arc::new(TestBackend {
            servers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            start_gate: watch::channel(true).0,
            stop_gate: watch::channel(true).0,
            requests: Mutex::new(Vec::new()),
        })
    }

    pub fn hold_starts(&self, hold: bool) {
        self.start_gate.send_replace(!hold);
    }

    pub fn hold_stops(&self, hold: bool) {
        self.stop_gate.send_replace(!hold);
    }

    /// Every spawn request so far, oldest first.
    pub fn requests(&self) -> Vec<SpawnRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The last spawn request for `user`/`server`.
    pub fn request(&self, user: &str, server: &str) -> SpawnRequest {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.user == user && r.server == server)
            .expect("a spawn request")
    }

    /// Kills the server listening at `url` as a crash would (the backend still has its handle).
    pub async fn crash(&self, url: &str) {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        let task = {
            let mut servers = self.servers.lock().unwrap();
            let running = servers
                .values_mut()
                .find(|r| r.port == port)
                .expect("server");
            std::mem::replace(&mut running.task, tokio::spawn(async {}))
        };
        task.abort();
        let _ = task.await;
    }

    /// Serves a tiny HTTP server and keeps it; its handle.
    async fn launch(&self) -> Value {
        let listener = bind().await;
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(|| async { "a workspace" });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).into_future().await;
        });
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.servers
            .lock()
            .unwrap()
            .insert(id, Running { port, task });
        json!({"id": id, "port": port})
    }

    /// A server started outside of any spawn (an interrupted spawn's process); its handle.
    pub async fn launch_orphan(&self) -> Value {
        self.launch().await
    }

    fn id_of(handle: &Value) -> Result<u64, BackendError> {
        handle
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| BackendError::BadHandle(handle.to_string()))
    }
}

fn event(progress: u8, message: &str) -> ProgressEvent {
    ProgressEvent {
        progress,
        message: message.to_owned(),
        ready: false,
        failed: false,
    }
}

impl WorkspaceBackend for TestBackend {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(request.clone());
            let _ = progress.send(event(10, "Allocating a workspace")).await;
            if let Some(message) = request.user_options.get("fail").and_then(Value::as_str) {
                return Err(BackendError::SpawnFailed(message.to_owned()));
            }
            let mut gate = self.start_gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            let _ = progress.send(event(50, "Workspace process started")).await;
            let handle = self.launch().await;
            Ok(Spawned {
                url: format!("http://127.0.0.1:{}", handle["port"]),
                handle,
            })
        })
    }

    fn stop<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut gate = self.stop_gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            let Ok(id) = TestBackend::id_of(handle) else {
                return Ok(());
            };
            let running = self.servers.lock().unwrap().remove(&id);
            if let Some(running) = running {
                running.task.abort();
                let _ = running.task.await;
            }
            Ok(())
        })
    }

    fn poll<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<BackendStatus, BackendError>> {
        Box::pin(async move {
            let id = TestBackend::id_of(handle)?;
            let port = self.servers.lock().unwrap().get(&id).map(|r| r.port);
            let Some(port) = port else {
                return Ok(BackendStatus::Stopped { reason: None });
            };
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => Ok(BackendStatus::Running {
                    url: format!("http://127.0.0.1:{port}"),
                }),
                Err(e) => Ok(BackendStatus::Stopped {
                    reason: Some(e.to_string()),
                }),
            }
        })
    }
}

// ---- the hub under test ---------------------------------------------------------------------

/// A listener on a free port of 127.0.0.1.
pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// A hub on the local backend over `store`, its state in `state` (and its Slurm keys in
/// `state/secrets`), with `catalog` and `default_profile`, polling batch jobs every 100 ms:
/// the served hub and its job watcher.
pub async fn serve_local_jobs(
    store: Store,
    state: &Path,
    catalog: atelier::hub::catalog::SharedCatalog,
    default_profile: &str,
) -> (Served, JoinHandle<()>) {
    let listener = bind().await;
    let base = format!("http://{}", listener.local_addr().unwrap());
    let backend = Arc::new(atelier::backend::local::LocalBackend::new(
        atelier::backend::local::LocalConfig::new(state),
    ));
    let mut config = HubConfig::new(&base, &format!("{base}/hub/api"));
    config.catalog = catalog;
    config.default_profile = default_profile.into();
    config.job_poll = Duration::from_millis(100);
    config.dev_login = true;
    config.secrets_dir = Some(state.join("secrets"));
    let hub: HubState = Hub::new(store, backend, config);
    let watcher = atelier::hub::jobs::watch(hub.clone());
    let app = hub::router(hub.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).into_future().await;
    });
    (Served::new(hub, TestBackend::new(), base, task), watcher)
}

/// The configuration of a hub at `base` that logs in through the dev login, with admin `root`
/// (password [`ADMIN_PASSWORD`]) and a 60 s spawn timeout, then `configure`d.
pub fn dev_login_config(base: &str, configure: impl FnOnce(&mut HubConfig)) -> HubConfig {
    let mut config = HubConfig::new(base, &format!("{base}/hub/api"));
    config.dev_login = true;
    config.admin_users = vec!["root".to_owned()];
    config.admin_password_hash = Some(hash_admin_password(ADMIN_PASSWORD));
    config.spawn_timeout_secs = 60;
    configure(&mut config);
    config
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location in {} {:?}", self.status, self.body))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `message` of a JupyterHub JSON error (empty when there is none).
    pub fn message(&self) -> String {
        self.json()["message"].as_str().unwrap_or("").to_owned()
    }

    /// The session cookie this response sets, with its attributes.
    pub fn session_cookie(&self) -> Option<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("atelier-session="))
    }

    /// Whether this response sets a (non-empty, not expiring) session cookie.
    pub fn sets_session(&self) -> bool {
        self.session_cookie()
            .is_some_and(|set| !session_value(set).is_empty() && !super::cookie_cleared(set))
    }

    /// The `_xsrf` value of the page's (first) form.
    pub fn xsrf(&self) -> String {
        let re = regex::Regex::new(r#"name="_xsrf" value="([^"]*)""#).unwrap();
        re.captures(&self.body)
            .unwrap_or_else(|| panic!("no _xsrf field in {:?}", self.body))[1]
            .to_owned()
    }
}

/// The value of a `Set-Cookie: atelier-session=…` header.
fn session_value(set: &str) -> &str {
    set.trim_start_matches("atelier-session=")
        .split(';')
        .next()
        .unwrap_or("")
}

/// Percent-encodes a form or query value (everything but RFC 3986's unreserved characters).
pub fn enc(s: &str) -> String {
    atelier::hub::page::url_encode(s)
}

/// An `application/x-www-form-urlencoded` body.
pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A hub served on 127.0.0.1:0 (stopped when dropped), and a plain HTTP client.
pub struct Served {
    pub hub: HubState,
    /// The backend the test inspects (the hub's own unless started with other `servers`).
    pub backend: Arc<TestBackend>,
    pub base: String,
    pub client: Client<HttpConnector, Full<Bytes>>,
    task: JoinHandle<()>,
    db: Option<TestDb>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    /// A hub over `store` whose servers run on `backend`, with the configuration `config` makes
    /// for its base URL, served on 127.0.0.1:0.
    pub async fn start(
        store: Store,
        backend: Arc<TestBackend>,
        config: impl FnOnce(&str) -> HubConfig,
    ) -> Served {
        Served::start_on(bind().await, store, backend, None, config).await
    }

    /// The same on `listener`, the servers on `servers` when given (else on `backend`).
    pub async fn start_on(
        listener: TcpListener,
        store: Store,
        backend: Arc<TestBackend>,
        servers: Option<Arc<dyn WorkspaceBackend>>,
        config: impl FnOnce(&str) -> HubConfig,
    ) -> Served {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let servers = servers.unwrap_or_else(|| backend.clone());
        let hub = Hub::new(store, servers, config(&base));
        let app = hub::router(hub.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).into_future().await;
        });
        Served::new(hub, backend, base, task)
    }

    /// A hub at `base` that `task` serves.
    pub fn new(
        hub: HubState,
        backend: Arc<TestBackend>,
        base: String,
        task: JoinHandle<()>,
    ) -> Served {
        Served {
            hub,
            backend,
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            task,
            db: None,
        }
    }

    /// Keeps `db` (its files or database) for as long as the hub lives.
    pub fn keeping(mut self, db: TestDb) -> Served {
        self.db = Some(db);
        self
    }

    /// Sends a request to `path` (or an absolute URL) and reads the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Resp {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = self.client.request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A browser without a session.
    pub fn browser(&self) -> Browser<'_> {
        Browser {
            hub: self,
            cookie: None,
        }
    }

    /// A browser logged in as `name` through the dev login (with [`ADMIN_PASSWORD`] for `root`).
    pub async fn logged_in(&self, name: &str) -> Browser<'_> {
        let password = if name == "root" { ADMIN_PASSWORD } else { "" };
        let (r, b) = self.dev_login(name, password).await;
        assert_eq!(r.status, 303, "login as {name}: {}", r.body);
        b
    }

    /// A fresh browser posting the dev login form for `name` with `password`: the answer, and
    /// the browser (logged in or not).
    pub async fn dev_login(&self, name: &str, password: &str) -> (Resp, Browser<'_>) {
        let mut b = self.browser();
        let page = b.get("/hub/login").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let r = b
            .post(
                "/hub/login",
                &[
                    ("_xsrf", &page.xsrf()),
                    ("username", name),
                    ("password", password),
                ],
            )
            .await;
        (r, b)
    }

    /// The row of `user`'s server `server`.
    pub async fn server(&self, user: &str, server: &str) -> Server {
        self.hub
            .store
            .get_server_by_names(user, server)
            .await
            .unwrap()
    }

    /// Waits (bounded: two minutes) until the server's row is in `state`.
    pub async fn wait_for(&self, user: &str, server: &str, state: ServerState) {
        for _ in 0..2400 {
            match self.hub.store.get_server_by_names(user, server).await {
                Ok(s) if s.state == state => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("{user}/{server} never became {}", state.as_str());
    }
}

/// A browser: keeps the `atelier-session` cookie, never follows redirects.
pub struct Browser<'a> {
    pub hub: &'a Served,
    pub cookie: Option<String>,
}

impl Browser<'_> {
    pub async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Resp {
        let cookie = self.cookie.as_ref().map(|c| format!("atelier-session={c}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(c) = &cookie {
            headers.push(("cookie", c));
        }
        if body.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        let resp = self
            .hub
            .request(method, path, &headers, body.unwrap_or_default())
            .await;
        if let Some(set) = resp.session_cookie() {
            self.cookie = resp.sets_session().then(|| session_value(set).to_owned());
        }
        resp
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        self.send("POST", path, Some(form(fields))).await
    }

    /// The CSRF token of the logged-in session (from the home page).
    pub async fn xsrf(&mut self) -> String {
        let home = self.get("/hub/home").await;
        assert_eq!(home.status, 200, "{}", home.body);
        home.xsrf()
    }
}

/// The audit events of `action`, as `Store::list_audit` lists them.
pub async fn audit_events(store: &Store, action: AuditAction) -> Vec<AuditEvent> {
    store
        .list_audit(&AuditQuery {
            action: Some(action),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// Logs in as `alice` through the dev login with `next` on the login page and in its form:
/// `next` naming evil.example is never echoed, the login lands on `expected`, and the login
/// page, logged in, goes straight to `expected`.
pub async fn assert_login_next(web: &Served, next: &str, expected: &str) {
    let mut b = web.browser();
    let page = b.get(&format!("/hub/login?next={}", enc(next))).await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("evil.example"),
        "next={next:?} echoed on the login page"
    );
    let r = b
        .post(
            "/hub/login",
            &[
                ("_xsrf", &page.xsrf()),
                ("username", "alice"),
                ("next", next),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "next={next:?}: {}", r.body);
    assert_eq!(r.location(), expected, "next={next:?} after the dev login");
    let again = b.get(&format!("/hub/login?next={}", enc(next))).await;
    assert_eq!(again.status, 302);
    assert_eq!(again.location(), expected, "next={next:?} when logged in");
}

/// One test per engine for each story `async fn <story>(db: TestDb)` of the calling file:
/// `<story>::sqlite` (the file's `sqlite_db()`) and `<story>::postgres` (its `postgres_db()`).
#[allow(unused_macros)]
macro_rules! stories {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$story(super::sqlite_db()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::postgres_db().await else { return };
                super::$story(db).await;
            }
        }
    )*};
}

#[allow(unused_imports)]
pub(crate) use stories;

// ---- the real peers -------------------------------------------------------------------------

/// The venv of the Python peers (`$ATELIER_PEERS_VENV`, by default `.peers/venv`) holding
/// `bins`, or `None` (after saying `SKIPPED: <what> …`) when the peer tests do not run.
pub fn peers_venv(what: &str, bins: &[&str]) -> Option<PathBuf> {
    if !super::oidc::peers_enabled(what) {
        return None;
    }
    let venv = std::env::var_os("ATELIER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/venv"));
    for bin in bins {
        assert!(
            venv.join("bin").join(bin).is_file(),
            "ATELIER_PEERS=1 but {bin} is missing from {} (run .ci/test.sh to provision the peers)",
            venv.display()
        );
    }
    Some(venv)
}
