//! Resilience of the hub process (issue 15), with `atelier hub` and `atelier proxy` as child
//! processes on loopback ports and a stand-in single-user server (a Python script) on the local
//! backend:
//!
//! * `kill_9_during_starts`: the hub gets SIGKILL while 20 servers run and 20 more are starting
//!   (their processes exist, they answer only later; some will exit instead). After a restart
//!   each of the 40 has one row and at most one process: the running ones are re-adopted, the
//!   starting ones end Running (re-adopted once they answer) or Failed (with a message naming
//!   the interrupted start, no process left), the proxy routes to exactly the running ones, and
//!   the audit log has each start once. On PostgreSQL (a fresh database) and SQLite.
//! * `two_hubs_one_killed`: two hubs on one PostgreSQL database behind one proxy
//!   (`--default-target=<hub1>,<hub2>`), 16 clients looping on API calls (a token) and pages (a
//!   session cookie from a login through the proxy) spread over both; one hub gets SIGKILL
//!   mid-run. The only failed requests are those that were in flight at the kill.
//!
//! Peer-gated (`ATELIER_PEERS=1`; PostgreSQL from `ATELIER_TEST_POSTGRES_URL`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use atelier::store::{AuditAction, AuditQuery, Store};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use common::stack::{Deadline, Proc, processes};
use common::story::{Api, wind_up};
use common::{TestDb, say};

/// The stand-in server: sleeps the seconds in `<dir>/delay` (0 when missing), then exits 3 if
/// its user is listed in `<dir>/fail`, else answers 200 on every path at `--port`.
const FAKE_SERVER: &str = r#"
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

here = os.path.dirname(os.path.abspath(__file__))
def read(name, default):
    try:
        with open(os.path.join(here, name)) as f:
            return f.read()
    except OSError:
        return default

port = next(int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--port="))
user = os.environ.get("JUPYTERHUB_USER", "")
time.sleep(float(read("delay", "0") or 0))
if user in read("fail", "").split():
    print(f"resilience-fake: {user} fails on purpose", flush=True)
    sys.exit(3)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({"path": self.path, "user": user}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass

print(f"resilience-fake: {user} on {port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

const RUNNING: usize = 20;
const STARTING: usize = 20;
/// Of the starting ones, those whose process exits instead of answering.
const FAILING: usize = 5;

fn python() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("python3"))
                .find(|p| p.is_file())
        })
        .expect("python3 on PATH")
}

/// A story's directory, its fake server and its processes; wound up when dropped.
struct World {
    story: &'static str,
    dir: PathBuf,
    procs: BTreeMap<String, Proc>,
}

impl World {
    fn new(story: &'static str) -> World {
        let dir = std::env::temp_dir().join(format!(
            "atelier-{story}-{}",
            &atelier::store::tokens::generate_token()[..12]
        ));
        std::fs::create_dir_all(dir.join("state")).expect("story dir");
        std::fs::write(dir.join("fake_server.py"), FAKE_SERVER).expect("fake server");
        World {
            story,
            dir,
            procs: BTreeMap::new(),
        }
    }

    /// The server command: python3 and the script (the hub splits it on spaces).
    fn server_command(&self) -> PathBuf {
        PathBuf::from(format!(
            "{} {}",
            python().display(),
            self.dir.join("fake_server.py").display()
        ))
    }

    fn set(&self, file: &str, text: &str) {
        std::fs::write(self.dir.join(file), text).expect("write a fake server's setting");
    }

    /// The live fake-server processes of `user`.
    fn processes_of(&self, user: &str) -> usize {
        let script = self.dir.join("fake_server.py");
        let script = script.to_string_lossy();
        processes()
            .into_iter()
            .filter(|p| {
                p.alive() && p.cmdline.contains(&*script) && p.env("JUPYTERHUB_USER") == Some(user)
            })
            .count()
    }

    /// A hub of this story on `port` with the story's admin service.
    fn hub(&self, api: &Api, port: u16, database_url: &str) -> std::process::Command {
        let public = api.public();
        let command_path = self.server_command();
        let mut command = common::launch::hub_command(
            "info,atelier=debug",
            &common::launch::HubArgs {
                port,
                database_url,
                public_url: &public,
                state_dir: &self.dir.join("state"),
                server_command: &command_path,
            },
        );
        command
            .env("ATELIER_SERVICE_STORY_TOKEN", &api.admin_token)
            .arg("--spawn-timeout=40")
            .arg("--dev-login")
            .arg(format!("--service=story={}", common::story::ADMIN_SCOPES));
        command
    }

    async fn start_hub(&mut self, name: &str, api: &Api, port: u16, database_url: &str) {
        let command = self.hub(api, port, database_url);
        let url = format!("http://127.0.0.1:{port}/hub/api/");
        let proc = common::launch::spawn_answering(
            name,
            command,
            &self.dir,
            &url,
            Duration::from_secs(60),
        )
        .await;
        self.procs.insert(name.to_owned(), proc);
    }

    /// SIGKILL to process `name`, reaped.
    fn kill(&mut self, name: &str) {
        self.procs
            .get_mut(name)
            .expect("a process of the story")
            .kill();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        wind_up(self.story, &self.dir, &mut self.procs, Vec::new(), 80);
    }
}

fn user(i: usize) -> String {
    format!("r{i:02}")
}

/// The state of `user`'s default server in the database, and how many server rows it has.
async fn rows(store: &Store, user: &str) -> (usize, Option<String>) {
    let owner = store.get_user(user).await.expect("user");
    let servers = store.list_user_servers(owner.id).await.expect("servers");
    let state = servers
        .iter()
        .find(|s| s.name.is_empty())
        .map(|s| s.state.as_str().to_owned());
    (servers.len(), state)
}

async fn kill_9_during_starts(db: &TestDb, story: &'static str) {
    let mut world = World::new(story);
    let api = Api::new();
    let url = db.url().to_owned();
    world.start_hub("hub", &api, api.hub_port, &url).await;
    let proxy = common::launch::start_proxy(&world.dir, api.proxy_port, &url, &api.hub()).await;
    world.procs.insert("proxy".into(), proxy);
    let total = RUNNING + STARTING;
    for i in 0..total {
        let (status, body) = api
            .admin("POST", &format!("/hub/api/users/{}", user(i)), None)
            .await;
        assert_eq!(status, 201, "create {}: {body}", user(i));
    }

    // 20 servers running.
    world.set("delay", "0");
    for i in 0..RUNNING {
        let path = format!("/hub/api/users/{}/server", user(i));
        let (status, body) = api.admin("POST", &path, None).await;
        assert!(
            status == 201 || status == 202,
            "start {}: {status} {body}",
            user(i)
        );
    }
    for i in 0..RUNNING {
        api.wait_ready(&user(i), &api.admin_token).await;
    }

    // 20 more starting: their processes sleep before they listen; the last ones will fail.
    world.set("delay", "12");
    let failing: Vec<String> = (total - FAILING..total).map(user).collect();
    world.set("fail", &failing.join(" "));
    let api = Arc::new(api);
    let mut posts = Vec::new();
    for i in RUNNING..total {
        let api = api.clone();
        posts.push(tokio::spawn(async move {
            // Cut by the kill, or answered 202 (pending) before it: either is fine.
            let path = format!("/hub/api/users/{}/server", user(i));
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                api.call(
                    "POST",
                    &format!("{}{path}", api.hub()),
                    &api.admin_token,
                    None,
                ),
            )
            .await;
        }));
    }
    let deadline = Deadline::new("20 starting processes", Duration::from_secs(60));
    loop {
        let started = (RUNNING..total)
            .filter(|i| world.processes_of(&user(*i)) == 1)
            .count();
        if started == STARTING {
            break;
        }
        deadline.tick(started).await;
    }
    // Their records are written right after the process exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.kill("hub");
    say(format!(
        "{story}: hub killed with 20 servers running and 20 starting"
    ));
    for post in posts {
        post.abort();
    }

    // The restart.
    world.procs.remove("hub");
    world
        .start_hub("hub-restarted", &api, api.hub_port, &url)
        .await;
    let store = Store::connect(&url).await.expect("the story's database");
    let deadline = Deadline::new("every start to end", Duration::from_secs(150));
    loop {
        let mut starting = Vec::new();
        for i in 0..total {
            if rows(&store, &user(i)).await.1.as_deref() == Some("starting") {
                starting.push(user(i));
            }
        }
        if starting.is_empty() {
            break;
        }
        deadline.tick(starting).await;
    }

    // One row and one process each (none for a failed start); the proxy routes the running.
    let mut running = 0;
    for i in 0..total {
        let name = user(i);
        let (count, state) = rows(&store, &name).await;
        assert_eq!(count, 1, "{name}: one server row");
        let expected = if failing.contains(&name) {
            "failed"
        } else {
            "running"
        };
        assert_eq!(state.as_deref(), Some(expected), "{name}'s server");
        let live = world.processes_of(&name);
        if expected == "running" {
            running += 1;
            assert_eq!(live, 1, "{name}: one process");
            let url = format!("{}/user/{name}/api/status", api.public());
            let deadline =
                Deadline::new(format!("{url} through the proxy"), Duration::from_secs(30));
            loop {
                let (status, body) = api.call("GET", &url, &api.admin_token, None).await;
                if status == 200 {
                    let v: Value = serde_json::from_str(&body).expect("fake server JSON");
                    assert_eq!(
                        v["user"],
                        name.as_str(),
                        "the proxy routes {name} to its own"
                    );
                    break;
                }
                deadline.tick((status, body)).await;
            }
        } else {
            assert_eq!(live, 0, "{name}: no process left of a failed start");
        }
    }
    let health = format!("{}/_atelier/proxy/health", api.public());
    let deadline = Deadline::new("the proxy's route count", Duration::from_secs(30));
    loop {
        let (status, body) = api.call("GET", &health, "", None).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && v["routes"] == running {
            break;
        }
        deadline.tick(body).await;
    }

    // The audit log: each start once, the failures once with their reason.
    let events = store
        .list_audit(&AuditQuery {
            action: Some(AuditAction::ServerStart),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    for i in 0..total {
        let name = user(i);
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e.target_user.as_deref() == Some(name.as_str()))
            .map(|e| &e.detail)
            .collect();
        assert!(
            mine.iter().all(|d| d.is_object()),
            "{name}: torn audit {mine:?}"
        );
        let starts = mine.iter().filter(|d| d.get("failed").is_none()).count();
        let failures: Vec<&&Value> = mine.iter().filter(|d| d["failed"] == true).collect();
        assert_eq!(starts, 1, "{name}: one start event: {mine:?}");
        if failing.contains(&name) {
            assert_eq!(failures.len(), 1, "{name}: one failure event: {mine:?}");
            let message = failures[0]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("interrupted by a hub restart") && message.contains("exit"),
                "{name}: {message}"
            );
        } else {
            assert!(failures.is_empty(), "{name}: no failure: {mine:?}");
        }
    }
    store.close().await;
    say(format!(
        "{story}: after the restart {running} running (20 re-adopted, {} adopted once ready), \
         {FAILING} failed, one row each, no stray process",
        STARTING - FAILING
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_starts_postgres() {
    if !common::oidc::peers_enabled("resilience_hubs::kill_9_during_starts_postgres") {
        return;
    }
    let Some(db) = TestDb::postgres("reshubs", "resilience_hubs on PostgreSQL").await else {
        return;
    };
    kill_9_during_starts(&db, "reshubs-pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_starts_sqlite() {
    if !common::oidc::peers_enabled("resilience_hubs::kill_9_during_starts_sqlite") {
        return;
    }
    let db = TestDb::sqlite("reshubs");
    kill_9_during_starts(&db, "reshubs-sqlite").await;
}

// ---- two hubs -----------------------------------------------------------------------------

/// One request of a client: when it began and ended, and whether it got what it asked.
struct Outcome {
    begin: Instant,
    end: Instant,
    ok: bool,
    what: String,
}

/// A client without connection reuse towards the proxy, so that each request is independent.
type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn get(http: &Http, url: &str, header: (&str, &str)) -> Result<(u16, String), String> {
    let req = http::Request::get(url)
        .header(header.0, header.1)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let exchange = async {
        let resp = http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer in 30 s".to_owned())?
}

/// Logs `user` in with the dev login form through the proxy at `base`: the session cookie.
async fn login(http: &Http, base: &str, user: &str) -> String {
    let resp = http
        .request(
            http::Request::get(format!("{base}/hub/login"))
                .header("accept", "text/html")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .expect("login page");
    let anonymous = session_cookie(resp.headers()).expect("an anonymous session");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    let xsrf = regex::Regex::new(r#"name="_xsrf" value="([^"]*)""#)
        .unwrap()
        .captures(&body)
        .unwrap_or_else(|| panic!("an _xsrf field in {body}"))[1]
        .to_owned();
    let form = format!("_xsrf={xsrf}&username={user}&password=");
    let resp = http
        .request(
            http::Request::post(format!("{base}/hub/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header(
                    "cookie",
                    format!("{}={anonymous}", atelier::hub::SESSION_COOKIE),
                )
                .body(Full::new(Bytes::from(form)))
                .unwrap(),
        )
        .await
        .expect("login post");
    assert_eq!(resp.status(), 303, "the dev login");
    session_cookie(resp.headers()).expect("a session cookie")
}

fn session_cookie(headers: &http::HeaderMap) -> Option<String> {
    let prefix = format!("{}=", atelier::hub::SESSION_COOKIE);
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| Some(v.strip_prefix(&prefix)?.split(';').next()?.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_one_killed() {
    if !common::oidc::peers_enabled("resilience_hubs::two_hubs_one_killed") {
        return;
    }
    let Some(db) = TestDb::postgres("reshubs2", "two hubs on PostgreSQL").await else {
        return;
    };
    let url = db.url().to_owned();
    let mut world = World::new("reshubs-two");
    let api = Api::new();
    let second_port = common::stack::free_port();
    let second = format!("http://127.0.0.1:{second_port}");
    // Both at once: two fresh hubs migrate and register their services side by side.
    let (one, two) = (
        world.hub(&api, api.hub_port, &url),
        world.hub(&api, second_port, &url),
    );
    let (one_url, two_url) = (
        format!("{}/hub/api/", api.hub()),
        format!("{second}/hub/api/"),
    );
    let wait = Duration::from_secs(60);
    let (one, two) = tokio::join!(
        common::launch::spawn_answering("hub1", one, &world.dir, &one_url, wait),
        common::launch::spawn_answering("hub2", two, &world.dir, &two_url, wait),
    );
    world.procs.insert("hub1".into(), one);
    world.procs.insert("hub2".into(), two);
    let targets = format!("{},{second}", api.hub());
    let proxy = common::launch::start_proxy(&world.dir, api.proxy_port, &url, &targets).await;
    world.procs.insert("proxy".into(), proxy);

    let base = api.public();
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
    let token = api.user("alice").await;
    let cookie = login(&http, &base, "alice").await;
    // Each hub takes the other's token and session (one database, no key of its own).
    for hub in [api.hub(), second.clone()] {
        let (status, body) = get(
            &http,
            &format!("{hub}/hub/api/user"),
            ("authorization", &format!("token {token}")),
        )
        .await
        .expect("the API");
        assert_eq!(status, 200, "{hub}: {body}");
        let cookie = format!("{}={cookie}", atelier::hub::SESSION_COOKIE);
        let (status, body) = get(&http, &format!("{hub}/hub/home"), ("cookie", &cookie))
            .await
            .expect("a page");
        assert_eq!(status, 200, "{hub}: /hub/home with the session");
        assert!(body.contains("alice"), "{hub}: /hub/home names alice");
    }

    // 16 clients for about 8 s; hub1 gets SIGKILL after about 3 s.
    let origin = Instant::now();
    let stop_at = origin + Duration::from_secs(8);
    let mut clients = Vec::new();
    for c in 0..16 {
        let (http, base, token, cookie) =
            (http.clone(), base.clone(), token.clone(), cookie.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < stop_at {
                let begin = Instant::now();
                let (what, result) = if c % 2 == 0 {
                    let auth = format!("token {token}");
                    let r = get(
                        &http,
                        &format!("{base}/hub/api/user"),
                        ("authorization", &auth),
                    )
                    .await;
                    (
                        "GET /hub/api/user",
                        r.map(|(s, b)| s == 200 && b.contains("alice")),
                    )
                } else {
                    let cookie = format!("{}={cookie}", atelier::hub::SESSION_COOKIE);
                    let r = get(&http, &format!("{base}/hub/home"), ("cookie", &cookie)).await;
                    (
                        "GET /hub/home",
                        r.map(|(s, b)| s == 200 && b.contains("alice")),
                    )
                };
                let ok = matches!(result, Ok(true));
                outcomes.push(Outcome {
                    begin,
                    end: Instant::now(),
                    ok,
                    what: format!("{what}: {result:?}"),
                });
            }
            outcomes
        }));
    }
    tokio::time::sleep_until(origin + Duration::from_secs(3)).await;
    let kill_begin = Instant::now();
    world.kill("hub1");
    let kill_end = Instant::now();
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.expect("a client"));
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    let after = outcomes.iter().filter(|o| o.begin > kill_end).count();
    say(format!(
        "two_hubs_one_killed: {} requests, {} failed, {after} begun after the kill",
        outcomes.len(),
        failed.len()
    ));
    assert!(after > 0, "requests after the kill");
    for o in &failed {
        assert!(
            o.begin <= kill_end && o.end >= kill_begin,
            "a request failed that was not in flight at the kill (begun {:?} after the start, \
             the kill at {:?}): {}",
            o.begin - origin,
            kill_begin - origin,
            o.what
        );
    }
    // The survivor alone: everything answers.
    for _ in 0..10 {
        let (status, _) = get(
            &http,
            &format!("{base}/hub/api/user"),
            ("authorization", &format!("token {token}")),
        )
        .await
        .expect("the API after the kill");
        assert_eq!(status, 200);
    }
    drop(world);
    drop(db);
}
