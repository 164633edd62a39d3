//! End to end with the real peers: the `atelier hub` and `atelier proxy` binaries run as separate
//! processes on free 127.0.0.1 ports, the local backend starts the real `jupyterhub-singleuser`
//! (JupyterLab) and the real `jupyterhub-idle-culler` culls, all from `$ATELIER_PEERS_VENV`.
//!
//! One story per engine (`stack::sqlite`, and `stack::postgres` on a fresh database when
//! `ATELIER_TEST_POSTGRES_URL` is set), each scenario timed on stderr:
//!
//! 1. dev login over HTTP through the proxy's public URL;
//! 2. alice's server started through the API with a token made from her session, followed on the
//!    progress event stream until ready;
//! 3. JupyterLab's API through the proxy with her token, a kernel, and `1+1` executed over the
//!    kernel's WebSocket;
//! 4. bob (token, browser session) refused her server by the proxy and her model by the API;
//! 5. the idle culler culls carol's idle server while alice, busy, keeps hers;
//! 6. the hub killed with SIGKILL and restarted on the same database and port: alice's server,
//!    route, tokens and session survive, nothing duplicated, no orphan process;
//! 7. (PostgreSQL) a second hub on the same database sees and acts on the first one's state.
//!
//! And one more story per engine (`interrupted_spawn::*`, a spawn timeout of 15 s): the hub
//! killed during a spawn and restarted; the user's stop is carried out once the old spawn is
//! over, and the next start leaves exactly one server.
//!
//! And `up::embedded_default`: the README's first command, `atelier up` in a fresh working
//! directory with no flag but the port (the default, relative data directory), with the printed
//! admin password (a wrong one refused), a dev-login user's JupyterLab from the spawn form and
//! `1+1` in a kernel through its proxy; restarted in the same directory, a new password, the same
//! sessions, the server re-adopted, and `--stop-servers-on-exit` recording the stop before it
//! exits on SIGTERM.
//!
//! Gated by `ATELIER_PEERS=1` (a missing peer is then a failure):
//! `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv
//! ATELIER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test --test e2e_stack
//! -- --nocapture`.
//!
//! Every process of a story (hub, proxy, culler, servers, kernels) runs under the story's
//! temporary directory (working directory, `HOME` or arguments) and is killed when the story ends,
//! also on panic; on panic every log is printed and the directory kept (`ATELIER_E2E_KEEP=1`
//! keeps it always).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use atelier::store::Store;
use atelier::store::tokens::generate_token;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

mod common;

use common::launch;
use common::stack::{Deadline, Proc, free_port, gone, kill_leftovers, singleusers};
use common::{TestDb, say};

/// How long a server has to start (the hub's `--spawn-timeout`), and the test's bound on it.
const SPAWN_TIMEOUT_SECS: u64 = 60;
/// The spawn timeout of the interrupted-spawn story: the hub takes over a spawn whose driver is
/// gone once it is this plus 30 s old.
const SHORT_SPAWN_TIMEOUT_SECS: u64 = 15;
const SPAWN_WAIT: Duration = Duration::from_secs(90);
/// Bound of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Scopes of the idle culler's service (jupyterhub-idle-culler 2.0's README; `admin:users` only
/// with `--cull-users`).
const CULLER_SCOPES: &str = "list:users,read:users:activity,read:servers,delete:servers";
/// The test's own inspecting service: creates users, reads servers' spawner state.
const INSPECTOR_SCOPES: &str = "admin:users,admin:servers,list:users,read:users";

/// One story at a time: each runs several JupyterLab servers on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- gates ----------------------------------------------------------------------------------

/// The venv of the Python peers, or `None` (after saying so) when peer tests are off.
fn peers_venv(what: &str) -> Option<PathBuf> {
    if std::env::var("ATELIER_PEERS").ok().as_deref() != Some("1") {
        say(format!("SKIPPED: {what} (set ATELIER_PEERS=1)"));
        return None;
    }
    let venv = std::env::var_os("ATELIER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/venv"));
    for bin in ["jupyterhub-singleuser", "jupyterhub-idle-culler"] {
        assert!(
            venv.join("bin").join(bin).is_file(),
            "ATELIER_PEERS=1 but {bin} is missing from {} (run .ci/test.sh to provision the peers)",
            venv.display()
        );
    }
    Some(venv)
}

// ---- databases ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

// ---- HTTP -----------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }

    /// The `_xsrf` value of the page's (first) form.
    fn xsrf(&self) -> String {
        let re = regex::Regex::new(r#"name="_xsrf" value="([^"]*)""#).unwrap();
        re.captures(&self.body)
            .unwrap_or_else(|| panic!("no _xsrf field in {:?}", self.body))[1]
            .to_owned()
    }
}

/// A plain HTTP/1 client without connection reuse (the hub is killed and restarted).
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    fn request(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> http::Request<Full<Bytes>> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(Bytes::from(body))).expect("request")
    }

    async fn try_send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<Resp, String> {
        let req = Http::request(method, url, headers, body);
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    async fn send(&self, method: &str, url: &str, headers: &[(&str, &str)], body: String) -> Resp {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// A request with `Authorization: token …` and an optional JSON body.
    async fn api(&self, method: &str, url: &str, token: &str, body: Option<Value>) -> Resp {
        let auth = format!("token {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(method, url, &headers, body).await
    }
}

/// Percent-encodes a form value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A browser on the site (the proxy's public URL): one cookie jar for the hub and the servers,
/// redirects followed by hand and only on the site.
struct Browser {
    http: Http,
    base: String,
    user: String,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    /// Logs in with the dev login form at `base` (the proxy's public URL), as a browser does:
    /// the form's `_xsrf` and the anonymous session cookie, then the post, then `/hub/home`.
    async fn login(http: &Http, base: &str, user: &str) -> Browser {
        let (mut browser, anonymous, posted) = Browser::post_login(http, base, user, "").await;
        assert_eq!(posted.status, 303, "POST /hub/login: {}", posted.body);
        let location = posted.header("location").expect("a Location").to_owned();
        assert_eq!(location, "/hub/home");
        let session = browser.session().expect("a session after the login");
        assert_ne!(session, anonymous, "a login starts a new session");
        let home = browser.get(&location, "text/html").await;
        assert_eq!(home.status, 200, "GET {location}: {}", home.body);
        assert!(home.body.contains(user), "home names {user}: {}", home.body);
        browser
    }

    /// Logs in with a user name and password through the dev login form; the browser, logged
    /// in or not (see [`Browser::session_user`]).
    async fn login_with(http: &Http, base: &str, user: &str, password: &str) -> Browser {
        Browser::post_login(http, base, user, password).await.0
    }

    /// The login form's page, then its post: the browser, its anonymous session, the answer.
    async fn post_login(
        http: &Http,
        base: &str,
        user: &str,
        password: &str,
    ) -> (Browser, String, Resp) {
        let mut browser = Browser {
            http: http.clone(),
            base: base.to_owned(),
            user: user.to_owned(),
            cookies: BTreeMap::new(),
        };
        let page = browser.get("/hub/login", "text/html").await;
        assert_eq!(page.status, 200, "GET /hub/login: {}", page.body);
        let anonymous = browser
            .session()
            .expect("the login page sets a session cookie")
            .to_owned();
        let xsrf = page.xsrf();
        let posted = browser
            .post_form(
                "/hub/login",
                &[("_xsrf", &xsrf), ("username", user), ("password", password)],
            )
            .await;
        (browser, anonymous, posted)
    }

    /// Who `/hub/home` says is logged in: `Some(user)` when the page answers 200 and names the
    /// browser's user, `None` when it sends to the login page.
    async fn session_user(&mut self) -> Option<String> {
        let home = self.get("/hub/home", "text/html").await;
        (home.status == 200 && home.body.contains(&self.user)).then(|| self.user.clone())
    }

    /// The hub's session cookie.
    fn session(&self) -> Option<&str> {
        self.cookies.get("atelier-session").map(String::as_str)
    }

    /// `path` on the site; `None` for a URL of another origin.
    fn on_site<'a>(&self, url: &'a str) -> Option<&'a str> {
        if url.starts_with('/') {
            Some(url)
        } else {
            url.strip_prefix(self.base.as_str())
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Resp {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut all = headers.to_vec();
        if !cookie.is_empty() {
            all.push(("cookie", &cookie));
        }
        let resp = self
            .http
            .send(method, &format!("{}{path}", self.base), &all, body)
            .await;
        for set in resp.headers.get_all("set-cookie") {
            let Ok(set) = set.to_str() else { continue };
            let pair = set.split(';').next().unwrap_or("");
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if common::cookie_cleared(set) {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.to_owned());
            }
        }
        resp
    }

    async fn get(&mut self, path: &str, accept: &str) -> Resp {
        self.send("GET", path, &[("accept", accept)], String::new())
            .await
    }

    async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        self.send(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            form(fields),
        )
        .await
    }

    /// Opens `path` as a page and follows redirects on the site; the last response, the path it
    /// came from, and every path visited.
    async fn follow(&mut self, path: &str) -> (Resp, String, Vec<String>) {
        let mut path = path.to_owned();
        let mut visited = Vec::new();
        for _ in 0..12 {
            visited.push(path.clone());
            let resp = self.get(&path, "text/html").await;
            if !(300..400).contains(&resp.status) {
                return (resp, path, visited);
            }
            let location = resp.header("location").expect("a Location").to_owned();
            path = self
                .on_site(&location)
                .unwrap_or_else(|| panic!("redirected off the site to {location}: {visited:?}"))
                .to_owned();
        }
        panic!("too many redirects: {visited:?}");
    }

    /// A new API token of the user, asked for with the session and its CSRF token as
    /// JupyterHub's pages do (`X-XSRFToken`).
    async fn create_token(&mut self) -> String {
        let home = self.get("/hub/home", "text/html").await;
        assert_eq!(home.status, 200, "{}", home.body);
        let xsrf = home.xsrf();
        let path = format!("/hub/api/users/{}/tokens", self.user);
        let resp = self
            .send(
                "POST",
                &path,
                &[("x-xsrftoken", &xsrf), ("content-type", "application/json")],
                json!({"note": "e2e"}).to_string(),
            )
            .await;
        assert_eq!(resp.status, 201, "create a token: {}", resp.body);
        resp.json()["token"]
            .as_str()
            .expect("the new token")
            .to_owned()
    }

    /// Starts the user's default server with the spawn form (`/hub/spawn/<user>`, no
    /// profiles), as the home page's button does; the path the form's answer leads to.
    async fn spawn_form(&mut self) -> String {
        let path = format!("/hub/spawn/{}", self.user);
        let page = self.get(&path, "text/html").await;
        assert_eq!(page.status, 200, "GET {path}: {}", page.body);
        let resp = self.post_form(&path, &[("_xsrf", &page.xsrf())]).await;
        assert_eq!(resp.status, 303, "POST {path}: {}", resp.body);
        resp.header("location").expect("a Location").to_owned()
    }
}

// ---- waiting --------------------------------------------------------------------------------

/// Reads a server-sent event stream until an event with `ready` or `failed`; all events.
async fn progress_events(http: &Http, url: &str, token: &str) -> Vec<Value> {
    let auth = format!("token {token}");
    let req = Http::request(
        "GET",
        url,
        &[("authorization", &auth), ("accept", "text/event-stream")],
        String::new(),
    );
    let deadline = tokio::time::Instant::now() + SPAWN_WAIT;
    let resp = tokio::time::timeout_at(deadline, http.client.request(req))
        .await
        .expect("progress: no answer")
        .expect("progress request");
    assert_eq!(resp.status(), 200, "GET {url}");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    common::story::progress_events(resp.into_body(), deadline, |_| {}).await
}

// ---- the stack ------------------------------------------------------------------------------

/// One story's world: a temporary directory, a database, the hub(s), the proxy, and whatever
/// else it started. Dropping it kills everything under the directory (and prints every log when
/// the story failed).
struct Stack {
    engine: Engine,
    dir: PathBuf,
    dir_str: String,
    venv: PathBuf,
    db_url: String,
    hub_port: u16,
    proxy_port: u16,
    culler_token: String,
    inspector_token: String,
    procs: BTreeMap<String, Proc>,
    http: Http,
    spawn_timeout: u64,
    /// Dropped after the processes are killed.
    _db: TestDb,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for proc in self.procs.values_mut() {
            proc.kill();
        }
        let leftovers = kill_leftovers(&self.dir_str);
        if failed {
            say(format!(
                "==== e2e_stack[{}] failed: logs under {} ====",
                self.engine.name(),
                self.dir.display()
            ));
            let mut logs: Vec<PathBuf> = self.procs.values().map(|p| p.log.clone()).collect();
            if let Ok(entries) = std::fs::read_dir(self.dir.join("state/logs")) {
                logs.extend(entries.filter_map(|e| Some(e.ok()?.path())));
            }
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(150).collect();
                say(format!("---- {} (last 150 lines) ----", log.display()));
                for line in tail.iter().rev() {
                    say(line);
                }
            }
        }
        if leftovers > 0 {
            say(format!(
                "e2e_stack[{}]: killed {leftovers} leftover process(es)",
                self.engine.name()
            ));
        }
        if failed || std::env::var_os("ATELIER_E2E_KEEP").is_some() {
            say(format!("e2e_stack: kept {}", self.dir.display()));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Stack {
    async fn new(engine: Engine, venv: PathBuf, spawn_timeout: u64) -> Option<Stack> {
        // Fixed length: no story's directory is a prefix of another's.
        let dir = std::env::temp_dir().join(format!("atelier-e2e-{}", &generate_token()[..16]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = match engine {
            Engine::Sqlite => TestDb::sqlite_at(dir.join("atelier.sqlite")),
            Engine::Postgres => {
                match TestDb::postgres("atelier_e2e", "end-to-end stack on PostgreSQL").await {
                    Some(db) => db,
                    None => {
                        let _ = std::fs::remove_dir_all(&dir);
                        return None;
                    }
                }
            }
        };
        let mut stack = Stack {
            engine,
            dir_str: dir.to_string_lossy().into_owned(),
            dir,
            venv,
            db_url: db.url().to_owned(),
            hub_port: free_port(),
            proxy_port: free_port(),
            culler_token: generate_token(),
            inspector_token: generate_token(),
            procs: BTreeMap::new(),
            http: Http::new(),
            spawn_timeout,
            _db: db,
        };
        stack.start_hub("hub", stack.hub_port).await;
        stack.start_proxy().await;
        Some(stack)
    }

    fn public(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    fn hub_url(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// Starts `atelier hub` (process `name`) on `port` and waits until its API answers.
    async fn start_hub(&mut self, name: &str, port: u16) {
        let singleuser = self.venv.join("bin/jupyterhub-singleuser");
        let public = self.public();
        let state = self.dir.join("state");
        let mut command = launch::hub_command(
            "info",
            &launch::HubArgs {
                port,
                database_url: &self.db_url,
                public_url: &public,
                state_dir: &state,
                server_command: &singleuser,
            },
        );
        command
            .env("ATELIER_SERVICE_IDLE_CULLER_TOKEN", &self.culler_token)
            .env("ATELIER_SERVICE_E2E_INSPECTOR_TOKEN", &self.inspector_token)
            // Activity reports every 2 s (JupyterHub's default is 5 min): the culler's timeout
            // is 10 s.
            .arg("--server-command=--JupyterHubSingleUser.hub_activity_interval=2")
            .arg(format!("--spawn-timeout={}", self.spawn_timeout))
            .arg("--dev-login")
            .arg(format!("--service=idle-culler={CULLER_SCOPES}"))
            .arg(format!("--service=e2e-inspector={INSPECTOR_SCOPES}"));
        let url = format!("{}/hub/api/", self.hub_url(port));
        let proc =
            launch::spawn_answering(name, command, &self.dir, &url, Duration::from_secs(60)).await;
        let resp = self
            .http
            .try_send("GET", &url, &[], String::new())
            .await
            .unwrap_or_else(|e| panic!("{name}: GET {url}: {e:?}"));
        assert!(resp.header("x-jupyterhub-version").is_some(), "{url}");
        self.procs.insert(name.to_owned(), proc);
    }

    /// Starts `atelier proxy` in front of the hub and waits until it answers.
    async fn start_proxy(&mut self) {
        let hub = self.hub_url(self.hub_port);
        let proc = launch::start_proxy(&self.dir, self.proxy_port, &self.db_url, &hub).await;
        self.procs.insert("proxy".to_owned(), proc);
    }

    fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs
            .get_mut(name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    fn server_log(&self, user: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("state/logs/{user}.log"))).unwrap_or_default()
    }

    /// The user model as the inspector service sees it, from the hub at `base`.
    async fn user_model(&self, base: &str, user: &str) -> Value {
        let resp = self
            .http
            .api(
                "GET",
                &format!("{base}/hub/api/users/{user}"),
                &self.inspector_token,
                None,
            )
            .await;
        assert_eq!(resp.status, 200, "GET /hub/api/users/{user}: {}", resp.body);
        resp.json()
    }

    /// Starts `user`'s default server through `base` and follows its progress until ready.
    async fn start_server(&self, base: &str, user: &str, token: &str) -> Vec<Value> {
        let resp = self
            .http
            .api(
                "POST",
                &format!("{base}/hub/api/users/{user}/server"),
                token,
                None,
            )
            .await;
        assert!(
            resp.status == 201 || resp.status == 202,
            "start {user}: {} {}",
            resp.status,
            resp.body
        );
        self.wait_ready(base, user, token).await
    }

    /// Follows the progress of `user`'s default server at `base` until ready; the events.
    async fn wait_ready(&self, base: &str, user: &str, token: &str) -> Vec<Value> {
        let events = progress_events(
            &self.http,
            &format!("{base}/hub/api/users/{user}/server/progress"),
            token,
        )
        .await;
        let last = events.last().expect("a final event");
        assert_eq!(
            last["ready"],
            true,
            "{user}'s spawn failed: {events:?}\n--- server log ---\n{}",
            self.server_log(user)
        );
        assert_eq!(last["url"], format!("/user/{user}/"));
        events
    }

    /// `GET <public>/user/<user>/api/status` with `token`, until the proxy routes it (its table
    /// refreshes every 250 ms) and the server answers 200.
    async fn wait_status_200(&self, user: &str, token: &str) -> Resp {
        let url = format!("{}/user/{user}/api/status", self.public());
        let deadline = Deadline::new(format!("{url} to answer 200"), Duration::from_secs(30));
        loop {
            let resp = self.http.api("GET", &url, token, None).await;
            if resp.status == 200 {
                return resp;
            }
            deadline.tick((resp.status, resp.body)).await;
        }
    }

    /// Stops `user`'s server through the API and waits until it is stopped and `pid` is gone.
    async fn stop_server(&self, base: &str, user: &str, token: &str, pid: i32) {
        let resp = self
            .http
            .api(
                "DELETE",
                &format!("{base}/hub/api/users/{user}/server"),
                token,
                None,
            )
            .await;
        assert!(
            resp.status == 202 || resp.status == 204,
            "stop {user}: {} {}",
            resp.status,
            resp.body
        );
        let deadline = Deadline::new(format!("{user}'s server to stop"), Duration::from_secs(60));
        loop {
            let model = self.user_model(base, user).await;
            if model["servers"].get("").is_none() && gone(pid) {
                return;
            }
            deadline.tick(&model).await;
        }
    }
}

/// The spawner state (`pid`, `url`, ...) of a user's default server in a user model.
fn server_state(model: &Value) -> Value {
    model["servers"][""]["state"].clone()
}

fn state_pid(model: &Value) -> i32 {
    server_state(model)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {model}")) as i32
}

/// Times the scenarios of a story and reports each on stderr.
struct Timer {
    engine: Engine,
    at: Instant,
    story: Instant,
    lines: Vec<String>,
}

impl Timer {
    fn new(engine: Engine) -> Timer {
        Timer {
            engine,
            at: Instant::now(),
            story: Instant::now(),
            lines: Vec::new(),
        }
    }

    fn done(&mut self, scenario: &str) {
        let line = format!(
            "e2e_stack[{}] {scenario}: {:.1} s",
            self.engine.name(),
            self.at.elapsed().as_secs_f64()
        );
        say(&line);
        self.lines.push(line);
        self.at = Instant::now();
    }

    fn summary(&self) {
        say(format!(
            "e2e_stack[{}] all scenarios passed in {:.1} s:\n  {}",
            self.engine.name(),
            self.story.elapsed().as_secs_f64(),
            self.lines.join("\n  ")
        ));
    }
}

// ---- the kernel ------------------------------------------------------------------------------

/// Executes `1+1` on kernel `kernel` over its WebSocket through the proxy
/// (`common::kernel::execute`); the `text/plain` of the result.
async fn execute_one_plus_one(proxy_port: u16, user: &str, token: &str, kernel: &str) -> String {
    common::kernel::execute(proxy_port, user, token, kernel, "1+1")
        .await
        .unwrap_or_else(|e| panic!("the kernel failed: {e}"))
}

// ---- the story ------------------------------------------------------------------------------

async fn story(engine: Engine) {
    let what = format!(
        "end-to-end stack on {} (hub, proxy, jupyterhub-singleuser, jupyterhub-idle-culler)",
        engine.name()
    );
    let Some(venv) = peers_venv(&what) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut timer = Timer::new(engine);
    let Some(mut stack) = Stack::new(engine, venv, SPAWN_TIMEOUT_SECS).await else {
        return;
    };
    timer.done("0. hub and proxy processes up");
    let public = stack.public();
    let hub = stack.hub_url(stack.hub_port);
    let dir = stack.dir_str.clone();
    let http = stack.http.clone();

    // 1. Log in through the proxy's public URL.
    let mut alice = Browser::login(&http, &public, "alice").await;
    timer.done("1. dev login through the proxy");

    // 2. alice's real jupyterhub-singleuser, started through the API with a token.
    let alice_token = alice.create_token().await;
    let me = http
        .api("GET", &format!("{public}/hub/api/user"), &alice_token, None)
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["name"], "alice");
    let events = stack.start_server(&public, "alice", &alice_token).await;
    assert!(events.len() >= 2, "progress before ready: {events:?}");
    let model = stack.user_model(&hub, "alice").await;
    assert_eq!(model["servers"][""]["ready"], true, "{model}");
    assert_eq!(model["server"], "/user/alice/", "{model}");
    let alice_pid = state_pid(&model);
    let alice_state = server_state(&model);
    let procs = singleusers(&dir, "alice");
    assert_eq!(
        procs.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![alice_pid],
        "one jupyterhub-singleuser for alice, the one the hub knows"
    );
    assert!(
        stack
            .server_log("alice")
            .contains("Updating Hub with activity every 2 seconds"),
        "--- alice's server log ---\n{}",
        stack.server_log("alice")
    );
    timer.done("2. alice's jupyterhub-singleuser started via the API, progress SSE to ready");

    // 3. JupyterLab's API and a kernel through the proxy.
    let status = stack.wait_status_200("alice", &alice_token).await;
    assert!(status.json().get("started").is_some(), "{}", status.body);
    let kernel = http
        .api(
            "POST",
            &format!("{public}/user/alice/api/kernels"),
            &alice_token,
            Some(json!({"name": "python3"})),
        )
        .await;
    assert_eq!(
        kernel.status, 201,
        "POST /user/alice/api/kernels: {}",
        kernel.body
    );
    let kernel_id = kernel.json()["id"].as_str().expect("kernel id").to_owned();
    let result = execute_one_plus_one(stack.proxy_port, "alice", &alice_token, &kernel_id).await;
    assert_eq!(result, "2");
    // Her browser opens JupyterLab: the server sends it through the hub's OAuth and back, all on
    // the public URL; then the server's own cookie authenticates her API calls.
    let (lab, at, visited) = alice.follow("/user/alice/lab").await;
    assert_eq!(lab.status, 200, "{at} after {visited:?}: {}", lab.body);
    assert!(at.starts_with("/user/alice/lab"), "{at}");
    assert!(
        visited
            .iter()
            .any(|p| p.starts_with("/hub/api/oauth2/authorize"))
            && visited
                .iter()
                .any(|p| p.starts_with("/user/alice/oauth_callback")),
        "the OAuth dance: {visited:?}"
    );
    assert!(
        alice.cookies.contains_key("jupyterhub-user-alice"),
        "{:?}",
        alice.cookies.keys()
    );
    let contents = alice
        .get("/user/alice/api/contents", "application/json")
        .await;
    assert_eq!(contents.status, 200, "{}", contents.body);
    timer.done(
        "3. /api/status 200, kernel created, 1+1 = 2 over the kernel WebSocket, lab opened \
         through the hub's OAuth",
    );

    // 4. bob is refused alice's server and her model.
    let mut bob = Browser::login(&http, &public, "bob").await;
    let bob_token = bob.create_token().await;
    let status_url = format!("{public}/user/alice/api/status");
    let refused = http.api("GET", &status_url, &bob_token, None).await;
    assert_eq!(refused.status, 403, "bob's token: {}", refused.body);
    assert!(
        refused.body.contains("not allowed"),
        "refused by the proxy, not by the server: {}",
        refused.body
    );
    let refused = bob.get("/user/alice/api/status", "application/json").await;
    assert_eq!(refused.status, 403, "bob's session: {}", refused.body);
    let (page, at, visited) = bob.follow("/user/alice/lab").await;
    assert_eq!(
        page.status, 403,
        "bob's browser on alice's lab, at {at}: {}",
        page.body
    );
    assert!(
        !visited.iter().any(|p| p.contains("oauth_callback"))
            && !bob.cookies.contains_key("jupyterhub-user-alice"),
        "bob never reaches alice's server: {visited:?} {:?}",
        bob.cookies.keys()
    );
    let refused = http
        .api(
            "GET",
            &format!("{public}/hub/api/users/alice"),
            &bob_token,
            None,
        )
        .await;
    // 404: bob holds `read:users` on himself only (JupyterHub 6.1.1's answer).
    assert_eq!(refused.status, 404, "bob reads alice: {}", refused.body);
    let own = http
        .api(
            "GET",
            &format!("{public}/hub/api/users/bob"),
            &bob_token,
            None,
        )
        .await;
    assert_eq!(own.status, 200, "bob reads himself: {}", own.body);
    timer.done("4. bob refused alice's server (token 403, session 403) and her model (404)");

    // 5. The idle culler culls carol's idle server; alice, busy, keeps hers.
    // carol starts hers with the spawn form, then leaves it alone.
    let mut carol = Browser::login(&http, &public, "carol").await;
    let carol_token = carol.create_token().await;
    let pending = carol.spawn_form().await;
    assert!(
        pending == "/hub/spawn-pending/carol" || pending == "/user/carol/",
        "{pending}"
    );
    stack.wait_ready(&public, "carol", &carol_token).await;
    let ready = carol.get("/hub/spawn-pending/carol", "text/html").await;
    assert_eq!(
        (ready.status, ready.header("location")),
        (302, Some("/user/carol/")),
        "{}",
        ready.body
    );
    let carol_pid = state_pid(&stack.user_model(&hub, "carol").await);
    assert_eq!(singleusers(&dir, "carol").len(), 1);
    // alice works: her server sees API requests (which count as activity) and reports them.
    let busy_since = chrono::Utc::now();
    let pinger = {
        let http = http.clone();
        let url = format!("{public}/user/alice/api/contents");
        let token = alice_token.clone();
        tokio::spawn(async move {
            loop {
                let _ = http
                    .try_send(
                        "GET",
                        &url,
                        &[("authorization", &format!("token {token}"))],
                        String::new(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let deadline = Deadline::new("alice's activity to reach the hub", Duration::from_secs(30));
    loop {
        let model = stack.user_model(&hub, "alice").await;
        let at = model["servers"][""]["last_activity"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        if at.is_some_and(|at| at > busy_since) {
            break;
        }
        deadline.tick(&model["servers"][""]).await;
    }
    let mut culler_cmd = Command::new(stack.venv.join("bin/jupyterhub-idle-culler"));
    culler_cmd
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("JUPYTERHUB_API_TOKEN", &stack.culler_token)
        .arg(format!("--url={hub}/hub/api"))
        .args([
            "--timeout=10",
            "--cull-every=5",
            "--IdleCuller.log_level=DEBUG",
        ]);
    let culler = Proc::spawn("idle-culler", culler_cmd, &stack.dir);
    stack.procs.insert("idle-culler".to_owned(), culler);
    let deadline = Deadline::new("the culler to stop carol's server", Duration::from_secs(90));
    loop {
        let model = stack.user_model(&hub, "carol").await;
        if model["servers"].get("").is_none() && gone(carol_pid) {
            break;
        }
        if let Some(status) = stack.proc("idle-culler").exited() {
            panic!("the culler exited ({status})");
        }
        deadline.tick(&model).await;
    }
    assert!(singleusers(&dir, "carol").is_empty());
    // Two more passes of the culler with alice still busy: she keeps her server.
    let passes = |log: &str| log.matches("users with ready servers").count();
    let seen = passes(&stack.proc("idle-culler").log());
    let deadline = Deadline::new("two more culler passes", Duration::from_secs(60));
    loop {
        let log = stack.proc("idle-culler").log();
        if passes(&log) >= seen + 2 {
            break;
        }
        deadline.tick(passes(&log)).await;
    }
    let culler_log = stack.proc("idle-culler").log();
    assert!(culler_log.contains("Culling server carol"), "{culler_log}");
    assert!(!culler_log.contains("Culling server alice"), "{culler_log}");
    let model = stack.user_model(&hub, "alice").await;
    assert_eq!(model["servers"][""]["ready"], true, "{model}");
    assert_eq!(state_pid(&model), alice_pid);
    pinger.abort();
    stack
        .proc("idle-culler")
        .terminate(Duration::from_secs(5))
        .await;
    timer.done(
        "5. carol's server (spawn form) culled idle by jupyterhub-idle-culler, process gone; busy \
         alice kept hers",
    );

    // 6. kill -9 the hub while alice's server runs; restart it on the same database and port.
    let old_hub_pid = stack.proc("hub").pid();
    stack.proc("hub").kill();
    assert!(gone(old_hub_pid));
    let after_kill = singleusers(&dir, "alice");
    assert_eq!(
        after_kill.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![alice_pid],
        "alice's server outlives the hub"
    );
    // The proxy keeps serving it meanwhile (routes and credentials come from the database).
    let during = http.api("GET", &status_url, &alice_token, None).await;
    assert_eq!(during.status, 200, "with the hub down: {}", during.body);
    stack.procs.remove("hub");
    stack.start_hub("hub", stack.hub_port).await;
    let model = stack.user_model(&hub, "alice").await;
    assert_eq!(model["servers"][""]["ready"], true, "{model}");
    assert_eq!(server_state(&model), alice_state, "same pid, port, URL");
    stack.wait_status_200("alice", &alice_token).await;
    let store = Store::connect(&stack.db_url)
        .await
        .expect("open the database");
    let alice_row = store.get_user("alice").await.expect("alice");
    let rows = store
        .list_user_servers(alice_row.id)
        .await
        .expect("servers");
    assert_eq!(rows.len(), 1, "exactly one server row for alice: {rows:?}");
    store.close().await;
    for (token, name) in [(&alice_token, "alice"), (&bob_token, "bob")] {
        let me = http
            .api("GET", &format!("{public}/hub/api/user"), token, None)
            .await;
        assert_eq!(
            me.status, 200,
            "{name}'s token after the restart: {}",
            me.body
        );
        assert_eq!(me.json()["name"], name);
    }
    let home = alice.get("/hub/home", "text/html").await;
    assert_eq!(home.status, 200, "alice's session after the restart");
    // Her browser's cookie on the server, a token made after the restart (the server asks the
    // new hub process about it), and the server's own token (its activity reports) still work.
    let contents = alice
        .get("/user/alice/api/contents", "application/json")
        .await;
    assert_eq!(contents.status, 200, "{}", contents.body);
    let restarted_at = chrono::Utc::now();
    let new_token = alice.create_token().await;
    let status = http.api("GET", &status_url, &new_token, None).await;
    assert_eq!(
        status.status, 200,
        "a token made after the restart: {}",
        status.body
    );
    let contents_url = format!("{public}/user/alice/api/contents");
    let deadline = Deadline::new(
        "alice's server to report activity to the restarted hub",
        Duration::from_secs(30),
    );
    loop {
        let _ = http.api("GET", &contents_url, &new_token, None).await;
        let model = stack.user_model(&hub, "alice").await;
        let at = model["servers"][""]["last_activity"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        if at.is_some_and(|at| at > restarted_at) {
            break;
        }
        deadline.tick(&model["servers"][""]).await;
    }
    assert_eq!(
        singleusers(&dir, "alice")
            .iter()
            .map(|p| p.pid)
            .collect::<Vec<_>>(),
        vec![alice_pid],
        "no orphan or duplicate server for alice"
    );
    // The kernel survived too.
    let result = execute_one_plus_one(stack.proxy_port, "alice", &alice_token, &kernel_id).await;
    assert_eq!(result, "2");
    timer.done("6. hub SIGKILLed and restarted: server, route, tokens, session kept, no duplicate");

    // 7. PostgreSQL: a second hub on the same database.
    if engine == Engine::Postgres {
        let port_b = free_port();
        stack.start_hub("hub-b", port_b).await;
        let hub_b = stack.hub_url(port_b);
        // A user created through hub A is listed by hub B.
        let created = http
            .api(
                "POST",
                &format!("{hub}/hub/api/users/erin"),
                &stack.inspector_token,
                None,
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let listed = http
            .api(
                "GET",
                &format!("{hub_b}/hub/api/users"),
                &stack.inspector_token,
                None,
            )
            .await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        let names: Vec<String> = listed
            .json()
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|u| u["name"].as_str().map(str::to_owned))
            .collect();
        assert!(names.contains(&"erin".to_owned()), "{names:?}");
        // A token created in A works against B; a server started through A is ready in B.
        let mut dave = Browser::login(&http, &public, "dave").await;
        let dave_token = dave.create_token().await;
        let me = http
            .api("GET", &format!("{hub_b}/hub/api/user"), &dave_token, None)
            .await;
        assert_eq!(me.status, 200, "{}", me.body);
        assert_eq!(me.json()["name"], "dave");
        stack.start_server(&hub, "dave", &dave_token).await;
        let seen_by_b = http
            .api(
                "GET",
                &format!("{hub_b}/hub/api/users/dave"),
                &dave_token,
                None,
            )
            .await;
        assert_eq!(seen_by_b.status, 200, "{}", seen_by_b.body);
        assert_eq!(
            seen_by_b.json()["servers"][""]["ready"],
            true,
            "{}",
            seen_by_b.body
        );
        let dave_model = stack.user_model(&hub, "dave").await;
        let dave_pid = state_pid(&dave_model);
        assert_eq!(
            server_state(&stack.user_model(&hub_b, "dave").await),
            server_state(&dave_model)
        );
        stack.wait_status_200("dave", &dave_token).await;
        // Stopped through B, stopped for A.
        stack
            .stop_server(&hub_b, "dave", &dave_token, dave_pid)
            .await;
        let model = stack.user_model(&hub, "dave").await;
        assert!(model["servers"].get("").is_none(), "{model}");
        assert!(singleusers(&dir, "dave").is_empty());
        stack.proc("hub-b").terminate(Duration::from_secs(15)).await;
        timer.done("7. two hubs on one PostgreSQL database share users, servers and tokens");
    }

    // The end: alice's server stops through the API, hub and proxy stop on SIGTERM.
    stack
        .stop_server(&public, "alice", &alice_token, alice_pid)
        .await;
    assert!(singleusers(&dir, "alice").is_empty());
    for name in ["proxy", "hub"] {
        let stopped = stack.proc(name).terminate(Duration::from_secs(15)).await;
        assert!(stopped, "{name} did not exit on SIGTERM");
    }
    timer.done("8. alice's server stopped via the API, hub and proxy stopped");
    timer.summary();
}

/// The hub killed with SIGKILL while erin's server is starting (its process exists, its handle
/// is not stored yet), then restarted: erin's stop is not stuck, her next start leaves exactly
/// one server (the interrupted start's process is stopped), reachable through the proxy.
async fn interrupted_spawn_story(engine: Engine) {
    let what = format!(
        "end-to-end hub crash during a spawn on {} (hub, proxy, jupyterhub-singleuser)",
        engine.name()
    );
    let Some(venv) = peers_venv(&what) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut timer = Timer::new(engine);
    let Some(mut stack) = Stack::new(engine, venv, SHORT_SPAWN_TIMEOUT_SECS).await else {
        return;
    };
    let public = stack.public();
    let hub = stack.hub_url(stack.hub_port);
    let dir = stack.dir_str.clone();
    let http = stack.http.clone();
    let mut erin = Browser::login(&http, &public, "erin").await;
    let token = erin.create_token().await;
    let server_url = format!("{public}/hub/api/users/erin/server");
    let start = {
        let (http, url, token) = (http.clone(), server_url.clone(), token.clone());
        tokio::spawn(async move { http.api("POST", &url, &token, None).await })
    };
    // Frozen as soon as it exists, it cannot become ready before the hub dies.
    let deadline = Deadline::new("erin's server process", Duration::from_secs(30));
    let leftover = loop {
        if let [p] = singleusers(&dir, "erin").as_slice() {
            break p.pid;
        }
        deadline.tick(singleusers(&dir, "erin")).await;
    };
    // SAFETY: kill(2) of a process this test started (through the hub).
    unsafe {
        libc::kill(leftover, libc::SIGSTOP);
    }
    let resp = start.await.expect("the start request");
    assert_eq!(resp.status, 202, "a start still pending: {}", resp.body);
    // Thawed just before the hub dies (a stopped process whose group is orphaned would get a
    // SIGHUP): it goes on starting, unknown to any hub.
    // SAFETY: as above.
    unsafe {
        libc::kill(leftover, libc::SIGCONT);
    }
    stack.proc("hub").kill();
    stack.procs.remove("hub");
    stack.start_hub("hub", stack.hub_port).await;
    assert!(
        !gone(leftover),
        "the interrupted start's process outlives the hub"
    );
    let model = stack.user_model(&hub, "erin").await;
    assert_eq!(model["servers"][""]["pending"], "spawn", "{model}");
    timer.done("9a. hub SIGKILLed during erin's spawn and restarted");

    // Her stop is accepted, then carried out by the new hub once the old spawn is over.
    let resp = http.api("DELETE", &server_url, &token, None).await;
    assert_eq!(resp.status, 202, "{}", resp.body);
    let limit = Duration::from_secs(SHORT_SPAWN_TIMEOUT_SECS + 30 + 60);
    let deadline = Deadline::new("erin's interrupted spawn to be stopped", limit);
    loop {
        let model = stack.user_model(&hub, "erin").await;
        if model["servers"].get("").is_none() {
            break;
        }
        deadline.tick(&model["servers"][""]["pending"]).await;
    }
    assert!(
        !gone(leftover),
        "nothing knows the interrupted start's process yet"
    );
    timer.done("9b. the stop of the interrupted spawn is not stuck");

    // A new start: one server, the leftover process stopped first.
    stack.start_server(&public, "erin", &token).await;
    let model = stack.user_model(&hub, "erin").await;
    let pid = state_pid(&model);
    assert_ne!(pid, leftover);
    assert!(gone(leftover), "the interrupted start's process is stopped");
    assert_eq!(
        singleusers(&dir, "erin")
            .iter()
            .map(|p| p.pid)
            .collect::<Vec<_>>(),
        vec![pid],
        "exactly one server for erin"
    );
    stack.wait_status_200("erin", &token).await;
    stack.stop_server(&public, "erin", &token, pid).await;
    assert!(singleusers(&dir, "erin").is_empty());
    timer.done("9c. the next start leaves exactly one server (the leftover stopped)");
    timer.summary();
}

// ---- `atelier up`: the README's first command -------------------------------------------------

/// `atelier up` and the processes it started, killed (with everything under `dir`) when dropped.
struct Up {
    dir: PathBuf,
    dir_str: String,
    procs: Vec<Proc>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for proc in &mut self.procs {
            if failed {
                say(format!("---- {} ----\n{}", proc.log.display(), proc.log()));
            }
            proc.kill();
        }
        kill_leftovers(&self.dir_str);
        if failed {
            say(format!("e2e_stack[up]: kept {}", self.dir.display()));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Up {
    /// Starts the README's first command, `atelier up`, in `self.dir` as its working directory
    /// (so with the default data directory `.atelier` there), its only flags `--bind` with
    /// `port` and `flags`; the admin password it printed.
    async fn start(&mut self, port: u16, flags: &[&str]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
        cmd.arg("up")
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .args(flags)
            .env("HOME", &self.dir)
            // Nothing points it at a venv, a catalogue or a data directory but its own default.
            .env_remove("ATELIER_PEERS_VENV")
            .env_remove("ATELIER_DATA_DIR")
            .env_remove("ATELIER_CATALOG")
            .env("RUST_LOG", "info");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let name = format!("up-{}", self.procs.len());
        // `Proc::spawn` runs it in `self.dir`.
        self.procs.push(Proc::spawn(&name, cmd, &self.dir));
        let up = self.procs.last_mut().expect("just pushed");
        let deadline = Deadline::new("atelier up to print its URL", Duration::from_secs(60));
        let banner = format!("Atelier is running at http://127.0.0.1:{port}/");
        loop {
            let log = up.log();
            if log.contains(&banner)
                && let Some(line) = log.lines().find(|l| l.contains("with the password: "))
            {
                let password = line.rsplit("with the password: ").next().unwrap().trim();
                assert!(password.len() >= 16, "a strong one-time password: {line}");
                return password.to_owned();
            }
            assert!(up.exited().is_none(), "atelier up exited: {log}");
            deadline
                .tick(log.lines().last().unwrap_or("").to_owned())
                .await;
        }
    }
}

/// Waits until `GET <public>/user/<user>/api/status` answers 200 through up's proxy.
async fn wait_status(http: &Http, public: &str, user: &str, token: &str) {
    let status_url = format!("{public}/user/{user}/api/status");
    let deadline = Deadline::new(format!("{status_url} to answer 200"), SPAWN_WAIT);
    loop {
        let resp = http.api("GET", &status_url, token, None).await;
        if resp.status == 200 {
            return;
        }
        deadline.tick((resp.status, resp.body)).await;
    }
}

/// The README's first command, `cargo run --release -- up`, as a new user runs it: the
/// `atelier` binary in a fresh working directory, no `--data-dir` (the default `.atelier`, a
/// relative path), `--bind` the only flag. It serves the login page at its URL, lets the admin in
/// with the printed one-time password (and nobody with a wrong one), starts a real JupyterLab for
/// a dev-login user from the spawn form, and runs `1+1` in a kernel through its proxy. Stopped,
/// it leaves the server running (the default); a second `up` in the same directory prints a new
/// password, keeps the sessions, re-adopts the server, and with `--stop-servers-on-exit` stops it
/// on SIGTERM, recorded in the database before it exits.
///
/// JupyterLab: `up` uses `.atelier/venv` when it holds `jupyterhub-singleuser`, else one found
/// on `PATH` or in a peers venv, else installs the pinned versions there from PyPI (what a fresh
/// machine does). The test puts the peers venv at `.atelier/venv` (a symlink; the same pins,
/// `up_installs_the_versions_the_tests_run_against` checks), as the first run leaves it, instead
/// of downloading: `up` then takes the same path as every run after the first on a fresh
/// machine, the relative `.atelier/venv/bin/jupyterhub-singleuser` included.
async fn up_story() {
    let Some(venv) = peers_venv("atelier up with a real jupyterhub-singleuser") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let dir = std::env::temp_dir().join(format!("atelier-e2e-{}", &generate_token()[..16]));
    std::fs::create_dir_all(dir.join(".atelier")).expect("temp dir");
    std::os::unix::fs::symlink(&venv, dir.join(".atelier/venv")).expect("link the venv");
    let mut up = Up {
        dir_str: dir.to_string_lossy().into_owned(),
        dir,
        procs: Vec::new(),
    };
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let http = Http::new();
    let password = up.start(port, &[]).await;

    // The admin, with the printed password; a wrong one is refused.
    let mut admin = Browser::login_with(&http, &public, "admin", "not-the-password").await;
    assert!(
        admin.session_user().await.is_none(),
        "a wrong admin password logs nobody in"
    );
    admin = Browser::login_with(&http, &public, "admin", &password).await;
    assert_eq!(admin.session_user().await.as_deref(), Some("admin"));
    let page = admin.get("/hub/admin", "text/html").await;
    assert_eq!(page.status, 200, "the admin page: {}", page.body);

    // A dev-login user starts JupyterLab through the spawn form and reaches it through the proxy.
    let mut alice = Browser::login(&http, &public, "alice").await;
    let token = alice.create_token().await;
    let next = alice.spawn_form().await;
    assert!(
        next.contains("/user/alice/") || next.contains("/hub/spawn-pending/alice"),
        "{next}"
    );
    wait_status(&http, &public, "alice", &token).await;
    let servers = singleusers(&up.dir_str, "alice");
    assert_eq!(servers.len(), 1, "one server process for alice");
    let pid = servers[0].pid;
    // It runs in her home under the working directory's `.atelier`, from the venv there.
    let home = up.dir.join(".atelier/users/alice");
    assert_eq!(servers[0].cwd.as_deref(), Some(home.as_path()));
    assert_eq!(servers[0].env("HOME"), Some(home.to_str().unwrap()));
    assert!(
        servers[0].cmdline.contains(&format!(
            "{}/.atelier/venv/bin/jupyterhub-singleuser",
            up.dir_str
        )),
        "{}",
        servers[0].cmdline
    );

    // A kernel, and `1+1` on it, through up's proxy.
    let kernel = http
        .api(
            "POST",
            &format!("{public}/user/alice/api/kernels"),
            &token,
            Some(json!({"name": "python3"})),
        )
        .await;
    assert_eq!(
        kernel.status, 201,
        "POST /user/alice/api/kernels: {}",
        kernel.body
    );
    let kernel_id = kernel.json()["id"].as_str().expect("kernel id").to_owned();
    assert_eq!(
        execute_one_plus_one(port, "alice", &token, &kernel_id).await,
        "2"
    );

    // A batch job on up's built-in catalogue (its batch pool), as the README's notebook lines
    // submit one: it runs, exits 0 and its output is kept.
    let job = http
        .api(
            "POST",
            &format!("{public}/hub/api/users/alice/jobs"),
            &token,
            Some(json!({"command": ["python3", "-c", "print(6 * 7)"]})),
        )
        .await;
    assert_eq!(
        job.status, 201,
        "POST /hub/api/users/alice/jobs: {}",
        job.body
    );
    let name = job.json()["name"].as_str().expect("a job name").to_owned();
    assert_eq!(job.json()["node_pool"], "this-machine-batch");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let finished = loop {
        let got = http
            .api(
                "GET",
                &format!("{public}/hub/api/users/alice/jobs/{name}"),
                &token,
                None,
            )
            .await;
        let phase = got.json()["phase"].as_str().unwrap_or_default().to_owned();
        if ["Succeeded", "Failed", "Cancelled"].contains(&phase.as_str()) {
            break got.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {name} still {phase}: {}",
            got.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(finished["phase"], "Succeeded", "{finished}");
    assert_eq!(finished["exit_code"], 0, "{finished}");

    // SIGTERM: `up` exits 0 and leaves her server running (the next `up` re-adopts it).
    let exited = up.procs[0].terminate(Duration::from_secs(60)).await;
    assert!(exited, "atelier up exits on SIGTERM: {}", up.procs[0].log());
    let status = up.procs[0].exited().expect("exited");
    assert!(
        status.success(),
        "exit status {status}: {}",
        up.procs[0].log()
    );
    assert!(!gone(pid), "alice's server outlives up by default");
    assert!(
        up.dir.join(".atelier/atelier.sqlite").is_file(),
        "the database is in the working directory's .atelier"
    );

    // Again in the same directory: a new password, the same session, her server re-adopted.
    let second = up.start(port, &["--stop-servers-on-exit"]).await;
    assert_ne!(second, password, "the admin password is new at every start");
    let home = alice.get("/hub/home", "text/html").await;
    assert_eq!(
        home.status, 200,
        "alice's session survives a restart: {}",
        home.body
    );
    assert!(home.body.contains("alice"), "{}", home.body);
    wait_status(&http, &public, "alice", &token).await;
    assert_eq!(
        singleusers(&up.dir_str, "alice")
            .iter()
            .map(|p| p.pid)
            .collect::<Vec<_>>(),
        vec![pid],
        "the same server, re-adopted"
    );

    // SIGTERM with --stop-servers-on-exit: the server is stopped and recorded before up exits.
    let exited = up.procs[1].terminate(Duration::from_secs(60)).await;
    assert!(exited, "atelier up exits on SIGTERM: {}", up.procs[1].log());
    let status = up.procs[1].exited().expect("exited");
    assert!(
        status.success(),
        "exit status {status}: {}",
        up.procs[1].log()
    );
    assert!(gone(pid), "alice's server (pid {pid}) is stopped with up");
    let db = up.dir.join(".atelier/atelier.sqlite");
    let store = Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("up's database");
    let user = store.get_user("alice").await.expect("alice is stored");
    let server = store.get_server(user.id, "").await.expect("her server row");
    assert_eq!(
        server.state,
        atelier::store::ServerState::Stopped,
        "the stop is recorded before up exits"
    );
    store.close().await;
}

mod up {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_default() {
        super::up_story().await;
    }
}

mod interrupted_spawn {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::interrupted_spawn_story(super::Engine::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::interrupted_spawn_story(super::Engine::Postgres).await;
    }
}

mod stack {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::story(super::Engine::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::story(super::Engine::Postgres).await;
    }
}
