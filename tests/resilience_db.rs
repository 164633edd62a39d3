//! Issue 15, resilience: "PostgreSQL is stopped for 10 s while 50 clients call the API and 10
//! servers start. The API answers 503 with a JSON error: no 500, no panic, no hung request past
//! its timeout. It recovers by itself within 5 s of the database's return. Every write it
//! acknowledged is in the database afterwards."
//!
//! - A PostgreSQL of the story's own (`initdb` and `pg_ctl` in its directory, on a free port:
//!   never the shared one), `atelier hub` on it as a process (local backend,
//!   `--database-timeout=2`) and `atelier proxy` in front. The servers are
//!   `common::resilience::fake_singleuser` (busybox's httpd on the port the hub gives; the
//!   `slow-*` users' wait 4 s first, so that their starts are in flight when the database goes).
//! - 50 clients call the API in a loop (user list, a user, a new user, a new token, activity,
//!   group membership) with a 20 s timeout per request, and a browser with a session cookie asks
//!   for the home page; every answer is recorded.
//! - Ten starts (`slow-0`…`slow-9`) are asked for, then PostgreSQL is stopped (`pg_ctl stop -m
//!   fast`) for 10 s and started again.
//! - Asserted: every answer is a 2xx or the hub's 503 (`{"status": 503, "message": …}` with
//!   `Retry-After`): no 500, no other status, no request past its timeout, no connection error;
//!   503s were seen; a request succeeds within 5 s of the database's return (polled every
//!   100 ms); the home page is a redirect to the login page, or the error page with 503 (HTML,
//!   `Retry-After`), never a 500; every acknowledged write (a user, a token, an activity time, a membership) is in
//!   the database; each of the ten starts ends Running with one server process, or stopped or
//!   failed with none, one row each; the proxy keeps serving a server that ran before the
//!   outage with the authorization it had (its route table and its last verdict); every
//!   acknowledged token and user creation has its audit event in the log exactly once, those
//!   whose event met the outage too (the hub spools them, `hub::audit`), and the hub lost none.
//!
//! Gated by `ATELIER_PEERS=1` (PostgreSQL's server binaries and busybox are then required):
//! `ATELIER_PEERS=1 cargo test --test resilience_db -- --nocapture`. On failure every log is
//! printed and the directory kept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atelier::store::tokens::generate_token;
use chrono::{DateTime, SecondsFormat, Utc};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

mod common;

use atelier::hub::SESSION_COOKIE;
use common::oidc::peers_enabled;
use common::resilience::{
    Answer, Http, PrivatePg, call, call_with, fake_singleuser, is_database_503,
};
use common::say;
use common::stack::{Deadline, Proc, processes};
use common::story::{self, Api};

const CLIENTS: usize = 50;
const STARTS: usize = 10;
const OUTAGE: Duration = Duration::from_secs(10);
/// The hub's `--database-timeout`: how long a request waits for a connection.
const DATABASE_TIMEOUT_SECS: u64 = 2;
/// Each client request's bound.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The "within 5 s", plus the polling granularity.
const RECOVERY: Duration = Duration::from_millis(5_250);
const GROUPS: usize = 4;
/// The scopes of the story's second service (groups are not in `story::ADMIN_SCOPES`).
const LOAD_SCOPES: &str =
    "admin:users,admin:groups,admin:servers,tokens,users:activity,list:users,read:users";

/// What a 2xx acknowledged, to be found in the database afterwards.
#[derive(Debug, Clone)]
enum Write {
    User(String),
    Token { note: String },
    Activity { user: String, at: DateTime<Utc> },
    Member { user: String, group: String },
}

struct Record {
    answer: Answer,
    write: Option<Write>,
}

/// The story's directory, processes and PostgreSQL; stopped and removed (kept on failure) when
/// dropped.
struct World {
    dir: PathBuf,
    procs: BTreeMap<String, Proc>,
    pg: Option<PrivatePg>,
}

impl Drop for World {
    fn drop(&mut self) {
        let pg_log = self.pg.as_ref().map(PrivatePg::log).unwrap_or_default();
        // The hub first (it would log every failed reconnection), then the database.
        for proc in self.procs.values_mut() {
            proc.kill_group();
        }
        self.pg.take();
        story::wind_up(
            "resilience_db",
            &self.dir,
            &mut self.procs,
            vec![("postgres".to_owned(), pg_log)],
            60,
        );
    }
}

fn now_stamp() -> (String, DateTime<Utc>) {
    let at = Utc::now();
    (at.to_rfc3339_opts(SecondsFormat::Micros, true), at)
}

/// One client's loop until `stop`: reads and writes of its own user `u<i>`, each recorded.
async fn client(
    i: usize,
    hub: String,
    token: String,
    http: Http,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
) {
    let me = format!("u{i:02}");
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (method, path, body, write) = match (i + k) % 6 {
            0 => ("GET", "/hub/api/users?limit=20".to_owned(), None, None),
            1 => ("GET", format!("/hub/api/users/{me}"), None, None),
            2 => {
                let name = format!("c{i:02}-{k}");
                let path = format!("/hub/api/users/{name}");
                ("POST", path, None, Some(Write::User(name)))
            }
            3 => {
                let note = format!("load {i}-{k}");
                let body = json!({"note": note, "scopes": [format!("read:users!user={me}")]});
                let path = format!("/hub/api/users/{me}/tokens");
                ("POST", path, Some(body), Some(Write::Token { note }))
            }
            4 => {
                let (stamp, at) = now_stamp();
                let body = json!({"last_activity": stamp});
                let path = format!("/hub/api/users/{me}/activity");
                let write = Write::Activity {
                    user: me.clone(),
                    at,
                };
                ("POST", path, Some(body), Some(write))
            }
            _ => {
                let group = format!("g{}", k % GROUPS);
                let body = json!({"users": [me]});
                let path = format!("/hub/api/groups/{group}/users");
                let write = Write::Member {
                    user: me.clone(),
                    group,
                };
                ("POST", path, Some(body), Some(write))
            }
        };
        let url = format!("{hub}{path}");
        let answer = call(&http, method, &url, &token, body.as_ref(), CLIENT_TIMEOUT).await;
        let write = write.filter(|_| answer.is_success());
        records.lock().unwrap().push(Record { answer, write });
        k += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A browser with a session cookie the hub must look up, asking for the home page every 200 ms
/// until `stop`: a redirect to the login page while the database answers, the error page with
/// 503 while it does not.
async fn browser(hub: String, http: Http, stop: Arc<AtomicBool>, pages: Arc<Mutex<Vec<Answer>>>) {
    let cookie = format!("{SESSION_COOKIE}={}", generate_token());
    let url = format!("{hub}/hub/home");
    while !stop.load(Ordering::Relaxed) {
        let headers = [("cookie", cookie.as_str()), ("accept", "text/html")];
        let answer = call_with(&http, "GET", &url, &headers, None, CLIENT_TIMEOUT).await;
        pages.lock().unwrap().push(answer);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live server processes (process-group leaders: busybox's httpd forks a child per
/// connection) the hub started for `user` under `dir`.
fn server_processes(dir: &Path, user: &str) -> Vec<i32> {
    let dir = dir.to_string_lossy();
    processes()
        .into_iter()
        .filter(|p| {
            p.alive()
                && p.pid == p.pgid
                && p.belongs_to(&dir)
                && p.env("JUPYTERHUB_USER") == Some(user)
        })
        .map(|p| p.pid)
        .collect()
}

/// Whether an acknowledged write is in the database.
async fn is_stored(db: &sqlx::PgPool, write: &Write) -> bool {
    let count = |sql: &'static str, a: String, b: Option<String>| async move {
        let mut query = sqlx::query_scalar::<_, i64>(sql).bind(a);
        if let Some(b) = b {
            query = query.bind(b);
        }
        query.fetch_one(db).await.expect("count")
    };
    match write {
        Write::User(name) => {
            count(
                "SELECT count(*) FROM users WHERE name = $1",
                name.clone(),
                None,
            )
            .await
                == 1
        }
        Write::Token { note } => {
            count(
                "SELECT count(*) FROM api_tokens WHERE note = $1",
                note.clone(),
                None,
            )
            .await
                == 1
        }
        Write::Member { user, group } => {
            count(
                "SELECT count(*) FROM user_groups ug JOIN users u ON u.id = ug.user_id \
                 JOIN groups g ON g.id = ug.group_id WHERE u.name = $1 AND g.name = $2",
                user.clone(),
                Some(group.clone()),
            )
            .await
                == 1
        }
        Write::Activity { user, at } => {
            let stored: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT last_activity FROM users WHERE name = $1")
                    .bind(user)
                    .fetch_one(db)
                    .await
                    .expect("last_activity");
            // Activity only moves forward: a later report may have moved it further.
            stored.is_some_and(|s| s >= *at - chrono::Duration::microseconds(1))
        }
    }
}

/// The keys of the audit events the hub's log says it spooled (its text without colours).
fn spooled_keys(log: &str) -> Vec<String> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence: `ESC [ … m`.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|line| line.contains("audit event spooled"))
        .map(|line| {
            let at = line.find(" key=").expect("a spooled event's key") + 5;
            line[at..at + 32].to_owned()
        })
        .collect()
}

/// The token ids and user names whose creation a 2xx acknowledged.
struct Acknowledged {
    tokens: Vec<String>,
    users: Vec<String>,
}

impl Acknowledged {
    fn of(records: &[Record]) -> Acknowledged {
        let mut ack = Acknowledged {
            tokens: Vec::new(),
            users: Vec::new(),
        };
        for r in records {
            match &r.write {
                Some(Write::Token { note }) => {
                    let id = r.answer.json()["id"].as_str().map(str::to_owned);
                    ack.tokens
                        .push(id.unwrap_or_else(|| panic!("token {note}: no id")));
                }
                Some(Write::User(name)) => ack.users.push(name.clone()),
                _ => {}
            }
        }
        ack
    }

    /// What has no event in `audited`.
    fn missing_from(&self, audited: &Audited) -> Vec<String> {
        let tokens = self
            .tokens
            .iter()
            .filter(|id| !audited.tokens.contains_key(*id))
            .map(|id| format!("token_create {id}"));
        let users = self
            .users
            .iter()
            .filter(|name| !audited.users.contains_key(*name))
            .map(|name| format!("create_user {name}"));
        tokens.chain(users).collect()
    }
}

/// The load service's token_create events by token id and create_user events by user, counted.
struct Audited {
    tokens: BTreeMap<String, usize>,
    users: BTreeMap<String, usize>,
}

impl Audited {
    async fn read(db: &sqlx::PgPool) -> Audited {
        let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT action, target_user, detail FROM audit_events WHERE actor = 'load' \
             AND action IN ('token_create', 'admin')",
        )
        .fetch_all(db)
        .await
        .expect("read the audit log");
        let mut audited = Audited {
            tokens: BTreeMap::new(),
            users: BTreeMap::new(),
        };
        for (action, target, detail) in rows {
            let detail: Value = serde_json::from_str(&detail).expect("detail is JSON");
            if action == "token_create" {
                let id = detail["token_id"].as_str().expect("token_id").to_owned();
                *audited.tokens.entry(id).or_default() += 1;
            } else if detail["action"] == "create_user" {
                let user = target.expect("create_user names its user");
                *audited.users.entry(user).or_default() += 1;
            }
        }
        audited
    }

    fn duplicates(&self) -> Vec<String> {
        let tokens = self.tokens.iter().map(|(k, n)| (format!("token {k}"), *n));
        let users = self.users.iter().map(|(k, n)| (format!("user {k}"), *n));
        tokens
            .chain(users)
            .filter(|(_, n)| *n > 1)
            .map(|(k, n)| format!("{k}: {n}"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_and_recovers() {
    if !peers_enabled("the database outage story (a private PostgreSQL)") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("atelier-resdb-{}", &generate_token()[..12]));
    std::fs::create_dir_all(dir.join("state")).expect("the story's directory");
    let mut world = World {
        dir: dir.clone(),
        procs: BTreeMap::new(),
        pg: None,
    };
    let mut pg = PrivatePg::init(&dir.join("pg"));
    pg.start();
    let database_url = pg.url();
    world.pg = Some(pg);

    let api = Api::new();
    let load_token = generate_token();
    let server = fake_singleuser(&dir, 4);
    let mut hub = api.hub_command(&database_url, &dir.join("state"), &server);
    hub.env("ATELIER_SERVICE_LOAD_TOKEN", &load_token)
        .arg(format!("--service=load={LOAD_SCOPES}"))
        .arg(format!("--database-timeout={DATABASE_TIMEOUT_SECS}"));
    api.launch(&dir, hub, &database_url, &mut world.procs).await;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let hub_url = api.hub();
    let admin = |method: &'static str, path: String, body: Option<Value>| {
        let (http, url, token) = (http.clone(), format!("{hub_url}{path}"), load_token.clone());
        async move { call(&http, method, &url, &token, body.as_ref(), CLIENT_TIMEOUT).await }
    };

    // The world before the outage: users, groups, and one server that runs through it.
    let mut names: Vec<String> = (0..CLIENTS).map(|i| format!("u{i:02}")).collect();
    names.extend((0..STARTS).map(|i| format!("slow-{i}")));
    let created = admin(
        "POST",
        "/hub/api/users".into(),
        Some(json!({"usernames": names})),
    )
    .await;
    assert_eq!(created.status, Ok(201), "create users: {}", created.body);
    for g in 0..GROUPS {
        let made = admin("POST", format!("/hub/api/groups/g{g}"), None).await;
        assert_eq!(made.status, Ok(201), "create group g{g}: {}", made.body);
    }
    let p_token = api.user("p0").await;
    let started = admin("POST", "/hub/api/users/p0/server".into(), None).await;
    assert!(
        matches!(started.status, Ok(201 | 202)),
        "start p0: {started:?}"
    );
    let deadline = Deadline::new("p0's server to be ready", Duration::from_secs(60));
    loop {
        let v = api.model("p0").await;
        if v["servers"][""]["ready"] == true {
            break;
        }
        deadline.tick(v.to_string()).await;
    }
    let through_proxy = format!("{}/user/p0/api", api.public());
    let before = call(&http, "GET", &through_proxy, &p_token, None, CLIENT_TIMEOUT).await;
    let baseline = before.status.clone();
    assert!(
        matches!(baseline, Ok(s) if s < 500 && s != 401 && s != 403),
        "p0's server through the proxy before the outage: {before:?}"
    );

    // The load, the starts, the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                api.hub(),
                load_token.clone(),
                http.clone(),
                stop.clone(),
                records.clone(),
            ))
        })
        .collect();
    let pages = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let page_browser = tokio::spawn(browser(
        api.hub(),
        http.clone(),
        stop.clone(),
        pages.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let starts = futures::future::join_all(
        (0..STARTS).map(|i| admin("POST", format!("/hub/api/users/slow-{i}/server"), None)),
    )
    .await;
    for (i, answer) in starts.iter().enumerate() {
        assert_eq!(answer.status, Ok(202), "start slow-{i}: {answer:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down_at = Instant::now();
    world.pg.as_mut().expect("pg").stop();
    say(format!(
        "PostgreSQL stopped ({} ms for pg_ctl stop)",
        down_at.elapsed().as_millis()
    ));
    // The proxy near the outage's end, when its verdict for p0's token (10 s) has expired.
    let during = {
        let (http, url, token) = (http.clone(), through_proxy.clone(), p_token.clone());
        tokio::spawn(async move {
            tokio::time::sleep(OUTAGE.saturating_sub(Duration::from_millis(3000))).await;
            call(&http, "GET", &url, &token, None, CLIENT_TIMEOUT).await
        })
    };
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    let outage = down_at.elapsed();
    world.pg.as_mut().expect("pg").start();
    let up_at = Instant::now();
    say(format!(
        "PostgreSQL started again after {} ms down",
        outage.as_millis()
    ));

    // Recovery: the first success of a request that needs the database.
    let probe = format!("{}/hub/api/users/u00", api.hub());
    let recovered = loop {
        let answer = call(&http, "GET", &probe, &load_token, None, CLIENT_TIMEOUT).await;
        if answer.status == Ok(200) {
            break up_at.elapsed();
        }
        assert!(
            up_at.elapsed() < RECOVERY,
            "the hub did not recover within {RECOVERY:?} of the database's return; last: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say(format!(
        "recovered {} ms after the database's return",
        recovered.as_millis()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client panicked");
    }
    page_browser.await.expect("the browser panicked");

    // Every answer: a 2xx or the hub's 503, in time.
    let records = std::mem::take(&mut *records.lock().unwrap());
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut slowest_503 = Duration::ZERO;
    for r in &records {
        let a = &r.answer;
        let key = match &a.status {
            Ok(s) => s.to_string(),
            Err(e) => e.clone(),
        };
        *by_status.entry(key).or_default() += 1;
        if a.status == Ok(503) {
            slowest_503 = slowest_503.max(a.took);
        }
        if !(a.is_success() || is_database_503(a)) {
            wrong.push(format!(
                "{} {} -> {:?} after {} ms: {}",
                a.method,
                a.url,
                a.status,
                a.took.as_millis(),
                a.body
            ));
        }
    }
    let slowest = records
        .iter()
        .map(|r| r.answer.took)
        .max()
        .unwrap_or_default();
    say(format!(
        "{} answers: {by_status:?}; slowest {} ms, slowest 503 {} ms",
        records.len(),
        slowest.as_millis(),
        slowest_503.as_millis()
    ));
    assert!(
        wrong.is_empty(),
        "{} answers were neither a 2xx nor the database's 503:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let unavailable = by_status.get("503").copied().unwrap_or(0);
    assert!(
        unavailable > 0,
        "no 503 during a 10 s outage: {by_status:?}"
    );
    let after: usize = records
        .iter()
        .filter(|r| r.answer.sent > up_at + recovered && r.answer.is_success())
        .count();
    assert!(after > 0, "no success after the recovery");

    // The pages: a redirect to the login page, or the error page with 503 (HTML, Retry-After).
    let pages = std::mem::take(&mut *pages.lock().unwrap());
    let mut page_statuses: BTreeMap<String, usize> = BTreeMap::new();
    for a in &pages {
        let key = match &a.status {
            Ok(s) => s.to_string(),
            Err(e) => e.clone(),
        };
        *page_statuses.entry(key).or_default() += 1;
        let redirect = matches!(a.status, Ok(302 | 303 | 307));
        let error_page = a.status == Ok(503)
            && a.body.contains("<html")
            && a.body.contains("database is unavailable")
            && a.retry_after.is_some();
        assert!(
            redirect || error_page,
            "the home page answered {:?} after {} ms: {}",
            a.status,
            a.took.as_millis(),
            a.body
        );
    }
    say(format!("home page answers: {page_statuses:?}"));
    assert!(
        page_statuses.contains_key("503"),
        "the home page never answered 503 during the outage: {page_statuses:?}"
    );

    // The proxy served p0's server through the outage as before it.
    let during = during.await.expect("the proxy call");
    say(format!(
        "through the proxy during the outage: {:?} after {} ms",
        during.status,
        during.took.as_millis()
    ));
    assert_eq!(
        during.status, baseline,
        "p0's server through the proxy during the outage: {during:?}"
    );

    // Every acknowledged write is in the database.
    let db = sqlx::PgPool::connect(&database_url)
        .await
        .expect("connect to the private PostgreSQL");
    let writes: Vec<&Write> = records.iter().filter_map(|r| r.write.as_ref()).collect();
    let mut lost = Vec::new();
    for write in &writes {
        if !is_stored(&db, write).await {
            lost.push(format!("{write:?}"));
        }
    }
    say(format!("{} acknowledged writes checked", writes.len()));
    assert!(
        lost.is_empty(),
        "acknowledged writes missing from the database:\n{}",
        lost.join("\n")
    );

    // The audit log: every acknowledged token and user creation has its event, once, including
    // those whose event met the outage (spooled by the hub, written once the database is back).
    let acknowledged = Acknowledged::of(&records);
    let deadline = Deadline::new(
        "the audit events of the acknowledged actions",
        Duration::from_secs(60),
    );
    let audited = loop {
        let audited = Audited::read(&db).await;
        let missing = acknowledged.missing_from(&audited);
        if missing.is_empty() {
            break audited;
        }
        deadline.tick(&missing).await;
    };
    let twice = audited.duplicates();
    assert!(
        twice.is_empty(),
        "audit events written more than once: {twice:?}"
    );
    let hub_log = world.procs["hub"].log();
    let lost = hub_log.matches("AUDIT EVENT LOST").count();
    // Each event the hub spooled (its log names the key) is in the log, once.
    let spooled = spooled_keys(&hub_log);
    for key in &spooled {
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE event_key = $1")
                .bind(key)
                .fetch_one(&db)
                .await
                .expect("count a spooled event");
        assert_eq!(rows, 1, "the spooled audit event {key}");
    }
    let spooled = spooled.len();
    let during_outage = records
        .iter()
        .filter(|r| {
            let answered = r.answer.sent + r.answer.took;
            r.write.is_some() && answered >= down_at && answered <= up_at
        })
        .count();
    say(format!(
        "audit: {} token and {} user creations acknowledged ({during_outage} writes answered \
         during the outage), each in the log once; {spooled} events spooled by the hub, {lost} lost",
        acknowledged.tokens.len(),
        acknowledged.users.len()
    ));
    assert_eq!(lost, 0, "the hub lost audit events:\n{hub_log}");

    // Each start ended Running with its process, or stopped/failed with none; one row each.
    let deadline = Deadline::new("the ten starts to end", Duration::from_secs(90));
    let mut ends = BTreeMap::new();
    loop {
        let mut pending = BTreeSet::new();
        for i in 0..STARTS {
            let user = format!("slow-{i}");
            let v = api.model(&user).await;
            let server = &v["servers"][""];
            if server["ready"] == true {
                ends.insert(user, "running");
            } else if server.is_null() && v["pending"].is_null() {
                ends.insert(user, "stopped");
            } else {
                pending.insert(user);
            }
        }
        if pending.is_empty() {
            break;
        }
        deadline.tick(&pending).await;
    }
    say(format!("the starts ended: {ends:?}"));
    for (user, end) in &ends {
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM servers s JOIN users u ON u.id = s.user_id WHERE u.name = $1",
        )
        .bind(user)
        .fetch_one(&db)
        .await
        .expect("count rows");
        assert_eq!(rows, 1, "{user}: one server row");
        let procs = server_processes(&dir, user);
        let expected = usize::from(*end == "running");
        assert_eq!(
            procs.len(),
            expected,
            "{user} ended {end}: its server processes {procs:?}"
        );
    }
    db.close().await;
}
