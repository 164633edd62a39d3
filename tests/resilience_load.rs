//! Issue 15, resilience: "1,000 concurrent API clients and 100 concurrent starts: no error, no
//! deadlock, memory bounded", on PostgreSQL (the shared test server, a database of the story's
//! own) and then on SQLite, one after the other.
//!
//! - `atelier hub` as a process (local backend; the servers are
//!   `common::resilience::fake_singleuser`, busybox's httpd, so that a hundred of them are
//!   cheap) and `atelier proxy`; 1,000 users.
//! - At once: 1,000 clients, each reading its user, reporting activity and reading a page of
//!   users (3,000 requests, one connection per request in flight), and 100 starts.
//! - The hub runs with `--database-timeout=30`: the burst queues for the pool's connections.
//! - Asserted: every answer is a 2xx and comes within its 60 s bound (no deadlock); the 100
//!   servers are all ready, then all stop (100 stops at once) with no process left; the hub's
//!   resident memory peak (`VmHWM`) stays under 512 MiB. The figures (RSS before and after,
//!   peak, the slowest answer) are printed.
//!
//! Gated by `ATELIER_PEERS=1` and `ATELIER_TEST_POSTGRES_URL` (a PostgreSQL that does not answer
//! is then a failure, not a skip): `ATELIER_PEERS=1
//! ATELIER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test --test
//! resilience_load -- --nocapture`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atelier::store::tokens::generate_token;
use chrono::{SecondsFormat, Utc};
use futures::StreamExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

mod common;

use common::oidc::peers_enabled;
use common::resilience::{Answer, Http, call, fake_singleuser, memory_kib, raise_open_files};
use common::stack::{Deadline, Proc, processes};
use common::story::{self, Api};
use common::{TestDb, say};

const CLIENTS: usize = 1_000;
const STARTS: usize = 100;
/// Each request's bound: an answer later than this is a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound on the hub's resident memory peak.
const MEMORY_BOUND_KIB: u64 = 512 * 1024;
const LOAD_SCOPES: &str =
    "admin:users,admin:servers,servers,tokens,users:activity,list:users,read:users";

struct World {
    dir: PathBuf,
    procs: BTreeMap<String, Proc>,
}

impl Drop for World {
    fn drop(&mut self) {
        story::wind_up(
            "resilience_load",
            &self.dir,
            &mut self.procs,
            Vec::new(),
            60,
        );
    }
}

fn user(i: usize) -> String {
    format!("l{i:04}")
}

/// The live server processes (process-group leaders) the hub started under `dir`.
fn server_processes(dir: &Path) -> usize {
    let dir = dir.to_string_lossy();
    processes()
        .into_iter()
        .filter(|p| {
            p.alive() && p.pid == p.pgid && p.belongs_to(&dir) && p.env("JUPYTERHUB_USER").is_some()
        })
        .count()
}

/// Fails with the answers that are not a 2xx; returns the slowest.
fn all_succeeded(what: &str, answers: &[Answer]) -> Duration {
    let wrong: Vec<String> = answers
        .iter()
        .filter(|a| !a.is_success())
        .map(|a| {
            format!(
                "{} {} -> {:?} after {} ms: {}",
                a.method,
                a.url,
                a.status,
                a.took.as_millis(),
                a.body
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} answers failed:\n{}",
        wrong.len(),
        answers.len(),
        wrong.join("\n")
    );
    answers.iter().map(|a| a.took).max().unwrap_or_default()
}

/// The servers of the first `STARTS` users, until each is `ready` (or, `ready` false, gone).
async fn wait_servers(api: &Api, http: &Http, token: &str, ready: bool) {
    let what = if ready { "ready" } else { "stopped" };
    let deadline = Deadline::new(
        format!("{STARTS} servers to be {what}"),
        Duration::from_secs(180),
    );
    loop {
        let mut left = Vec::new();
        for i in 0..STARTS {
            let url = format!("{}/hub/api/users/{}", api.hub(), user(i));
            let a = call(http, "GET", &url, token, None, CLIENT_TIMEOUT).await;
            assert_eq!(a.status, Ok(200), "{a:?}");
            let v = a.json();
            let server = &v["servers"][""];
            let done = if ready {
                assert!(
                    !server.is_null() || v["pending"].is_string(),
                    "{}'s start failed: {v}",
                    user(i)
                );
                server["ready"] == true
            } else {
                server.is_null() && v["pending"].is_null()
            };
            if !done {
                left.push(user(i));
            }
        }
        if left.is_empty() {
            return;
        }
        deadline.tick(left.len()).await;
    }
}

async fn story(engine: &str, database_url: &str, dir: &Path) {
    let mut world = World {
        dir: dir.to_owned(),
        procs: BTreeMap::new(),
    };
    let api = Api::new();
    let token = generate_token();
    let server = fake_singleuser(dir, 0);
    let mut hub = api.hub_command(database_url, &dir.join("state"), &server);
    // The burst queues for the pool's connections: on a debug build on two shared cores its
    // last requests waited about 10 s, the default bound (README, "Resilience"); this story is
    // about errors, deadlocks and memory, so it gives the queue room.
    hub.env("ATELIER_SERVICE_LOAD_TOKEN", &token)
        .arg(format!("--service=load={LOAD_SCOPES}"))
        .arg("--database-timeout=30");
    api.launch(dir, hub, database_url, &mut world.procs).await;
    let hub_pid = world.procs["hub"].pid();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let hub_url = api.hub();

    let names: Vec<String> = (0..CLIENTS).map(user).collect();
    for chunk in names.chunks(250) {
        let url = format!("{hub_url}/hub/api/users");
        let body = json!({ "usernames": chunk });
        let a = call(&http, "POST", &url, &token, Some(&body), CLIENT_TIMEOUT).await;
        assert_eq!(a.status, Ok(201), "create users: {a:?}");
    }
    let (rss_before, _) = memory_kib(hub_pid);

    // 1,000 clients and 100 starts, all at once.
    let began = Instant::now();
    let clients = futures::future::join_all((0..CLIENTS).map(|i| {
        let (http, hub_url, token) = (http.clone(), hub_url.clone(), token.clone());
        async move {
            let me = user(i);
            let mut answers = Vec::with_capacity(3);
            let url = format!("{hub_url}/hub/api/users/{me}");
            answers.push(call(&http, "GET", &url, &token, None, CLIENT_TIMEOUT).await);
            let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
            let body = json!({ "last_activity": stamp });
            let url = format!("{hub_url}/hub/api/users/{me}/activity");
            answers.push(call(&http, "POST", &url, &token, Some(&body), CLIENT_TIMEOUT).await);
            let url = format!("{hub_url}/hub/api/users?offset={}&limit=50", i % 900);
            answers.push(call(&http, "GET", &url, &token, None, CLIENT_TIMEOUT).await);
            answers
        }
    }));
    let starts = futures::future::join_all((0..STARTS).map(|i| {
        let (http, hub_url, token) = (http.clone(), hub_url.clone(), token.clone());
        async move {
            let url = format!("{hub_url}/hub/api/users/{}/server", user(i));
            call(&http, "POST", &url, &token, None, CLIENT_TIMEOUT).await
        }
    }));
    let (clients, starts) = tokio::join!(clients, starts);
    let burst = began.elapsed();
    let answers: Vec<Answer> = clients.into_iter().flatten().collect();
    let slowest = all_succeeded("the clients", &answers);
    let slowest_start = all_succeeded("the starts", &starts);
    let (rss_burst, _) = memory_kib(hub_pid);
    wait_servers(&api, &http, &token, true).await;
    let running = server_processes(dir);
    assert_eq!(running, STARTS, "one process per running server");
    let ready_after = began.elapsed();

    // 100 stops at once.
    let stops: Vec<Answer> = futures::stream::iter(0..STARTS)
        .map(|i| {
            let (http, hub_url, token) = (http.clone(), hub_url.clone(), token.clone());
            async move {
                let url = format!("{hub_url}/hub/api/users/{}/server", user(i));
                call(&http, "DELETE", &url, &token, None, CLIENT_TIMEOUT).await
            }
        })
        .buffer_unordered(STARTS)
        .collect()
        .await;
    all_succeeded("the stops", &stops);
    wait_servers(&api, &http, &token, false).await;
    let deadline = Deadline::new("the server processes to exit", Duration::from_secs(30));
    loop {
        let left = server_processes(dir);
        if left == 0 {
            break;
        }
        deadline.tick(left).await;
    }
    let (rss_after, peak) = memory_kib(hub_pid);
    say(format!(
        "{engine}: {} client answers and {STARTS} starts in {} ms (slowest answer {} ms, slowest \
         start answer {} ms), {STARTS} servers ready after {} ms; hub RSS {} MiB before, {} MiB \
         after the burst, {} MiB at the end, peak (VmHWM) {} MiB",
        answers.len(),
        burst.as_millis(),
        slowest.as_millis(),
        slowest_start.as_millis(),
        ready_after.as_millis(),
        rss_before / 1024,
        rss_burst / 1024,
        rss_after / 1024,
        peak / 1024
    ));
    assert!(
        peak > 0 && peak < MEMORY_BOUND_KIB,
        "{engine}: the hub's memory peak {peak} KiB is past {MEMORY_BOUND_KIB} KiB"
    );
    // The hub still answers after it all.
    let a = call(
        &http,
        "GET",
        &format!("{hub_url}/hub/api/users/{}", user(0)),
        &token,
        None,
        CLIENT_TIMEOUT,
    )
    .await;
    assert_eq!(a.status, Ok(200), "{a:?}");
    let _: Value = a.json();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_and_hundred_starts_on_both_engines() {
    if !peers_enabled("1,000 clients and 100 starts against a hub process") {
        return;
    }
    let Some(pg) = TestDb::postgres("resload", "1,000 clients and 100 starts on PostgreSQL").await
    else {
        return;
    };
    raise_open_files();
    let base = std::env::temp_dir().join(format!("atelier-resload-{}", &generate_token()[..12]));
    for (engine, url) in [
        ("postgres", pg.url().to_owned()),
        (
            "sqlite",
            format!("sqlite://{}", base.join("sqlite/atelier.sqlite").display()),
        ),
    ] {
        let dir = base.join(engine);
        std::fs::create_dir_all(dir.join("state")).expect("the story's directory");
        story(engine, &url, &dir).await;
    }
    let _ = std::fs::remove_dir_all(&base);
}
