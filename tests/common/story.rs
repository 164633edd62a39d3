//! What the real-peer stories (`data_sources`, `dask_gateway`, `dask_local`, `kinds_local`,
//! `browser`, `desktop_qgis`) share: what their world does when dropped (stop its processes and
//! any leftover, print every log when the story failed, and keep its directory then, or with
//! `ATELIER_E2E_KEEP`, remove it otherwise), and [`Api`], the REST side of a story's hub and
//! proxy processes as the story's admin service and its users call them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use atelier::store::tokens::generate_token;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::stack::{Deadline, Proc, free_port, kill_leftovers};
use super::{launch, say};

/// Winds up story `story` of directory `dir`: kills `procs` (and the process groups of those
/// started with `Command::process_group(0)`), then every leftover process of `dir`; when the
/// thread panics, prints the last `tail` lines of each process's log, of `extra` (logs of peers
/// the caller already stopped, or [`logs_in`] a directory of its own, by name) and of each server
/// log under `dir/state/logs`.
pub fn wind_up(
    story: &str,
    dir: &Path,
    procs: &mut BTreeMap<String, Proc>,
    extra: Vec<(String, String)>,
    tail: usize,
) {
    let failed = std::thread::panicking();
    for proc in procs.values_mut() {
        proc.kill_group();
    }
    let leftovers = kill_leftovers(&dir.to_string_lossy());
    if failed {
        say(format!(
            "==== {story} failed: logs under {} ====",
            dir.display()
        ));
        let mut logs: Vec<(String, String)> = procs
            .iter()
            .map(|(name, p)| (name.clone(), p.log()))
            .collect();
        logs.extend(extra);
        logs.extend(logs_in(&dir.join("state/logs")));
        for (name, text) in logs {
            let last: Vec<&str> = text.lines().rev().take(tail).collect();
            say(format!("---- {name} (last {tail} lines) ----"));
            for line in last.iter().rev() {
                say(line);
            }
        }
    }
    if leftovers > 0 {
        say(format!("{story}: killed {leftovers} leftover process(es)"));
    }
    if failed || std::env::var_os("ATELIER_E2E_KEEP").is_some() {
        say(format!("{story}: kept {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The files of directory `dir` (none when it does not exist), each by its path, with its text.
pub fn logs_in(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.path().display().to_string(), text)
        })
        .collect()
}

/// The scopes of a story's admin service (`--service=story=<scopes>`).
pub const ADMIN_SCOPES: &str =
    "admin:users,admin:servers,access:servers,tokens,list:users,read:users";
/// How long a server may take to be ready.
pub const SPAWN_WAIT: Duration = Duration::from_secs(150);
/// The bound on each call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The REST side of a story's `atelier hub` and `atelier proxy` processes on loopback ports:
/// calls (each bounded by [`REQUEST_TIMEOUT`]) as the story's admin service or with a user's
/// token, users with their tokens, and waits for a server to be ready or stopped.
pub struct Api {
    pub hub_port: u16,
    pub proxy_port: u16,
    /// The token of the admin service `story` ([`Api::hub_command`]).
    pub admin_token: String,
    pub http: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    /// Free ports for the hub and the proxy, and a fresh admin token.
    pub fn new() -> Api {
        Api {
            hub_port: free_port(),
            proxy_port: free_port(),
            admin_token: generate_token(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `atelier hub` on the hub's port (log `info,atelier=debug`), the proxy's URL its public
    /// one, with the admin service `story` and `--spawn-timeout=120`; the caller adds the rest.
    pub fn hub_command(&self, database_url: &str, state_dir: &Path, singleuser: &Path) -> Command {
        let public = self.public();
        let mut command = launch::hub_command(
            "info,atelier=debug",
            &launch::HubArgs {
                port: self.hub_port,
                database_url,
                public_url: &public,
                state_dir,
                server_command: singleuser,
            },
        );
        command
            .env("ATELIER_SERVICE_STORY_TOKEN", &self.admin_token)
            .arg("--spawn-timeout=120")
            .arg(format!("--service=story={ADMIN_SCOPES}"));
        command
    }

    /// Starts `hub` (from [`Api::hub_command`]) and then the proxy in `dir`, each once it
    /// answers, into `procs` as `hub` and `proxy`.
    pub async fn launch(
        &self,
        dir: &Path,
        hub: Command,
        database_url: &str,
        procs: &mut BTreeMap<String, Proc>,
    ) {
        let url = format!("{}/hub/api/", self.hub());
        let hub = launch::spawn_answering("hub", hub, dir, &url, Duration::from_secs(60)).await;
        procs.insert("hub".into(), hub);
        let proxy = launch::start_proxy(dir, self.proxy_port, database_url, &self.hub()).await;
        procs.insert("proxy".into(), proxy);
    }

    pub fn hub(&self) -> String {
        format!("http://127.0.0.1:{}", self.hub_port)
    }

    pub fn public(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// `method url` with `token` (none when empty) and a JSON `body`: the status and the body.
    pub async fn call(
        &self,
        method: &str,
        url: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = http::Request::builder().method(method).uri(url);
        if !token.is_empty() {
            req = req.header("authorization", format!("token {token}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let exchange = async {
            let resp = self.http.request(req).await.expect("request sent");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {url}: no answer"))
    }

    /// `method <hub><path>` as the admin service.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let url = format!("{}{path}", self.hub());
        self.call(method, &url, &self.admin_token, body).await
    }

    /// Creates `user` and a token that may start and use its servers.
    pub async fn user(&self, user: &str) -> String {
        let (status, body) = self
            .admin("POST", &format!("/hub/api/users/{user}"), None)
            .await;
        assert_eq!(status, 201, "create {user}: {body}");
        let scopes = json!({"note": "story", "scopes": [
            format!("servers!user={user}"),
            format!("read:servers!user={user}"),
            format!("access:servers!user={user}"),
        ]});
        let (status, body) = self
            .admin(
                "POST",
                &format!("/hub/api/users/{user}/tokens"),
                Some(scopes),
            )
            .await;
        assert_eq!(status, 201, "a token for {user}: {body}");
        let token: Value = serde_json::from_str(&body).expect("token JSON");
        token["token"].as_str().expect("token").to_owned()
    }

    /// The user's model.
    pub async fn model(&self, user: &str) -> Value {
        let (status, body) = self
            .admin("GET", &format!("/hub/api/users/{user}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("user model")
    }

    /// Waits until `user`'s default server is ready (a failed start fails) and the proxy routes
    /// to it (`/user/<user>/api/status` answers 200 to `token`).
    pub async fn wait_ready(&self, user: &str, token: &str) {
        let deadline = Deadline::new(format!("{user}'s server to be ready"), SPAWN_WAIT);
        loop {
            let v = self.model(user).await;
            let server = &v["servers"][""];
            if server["ready"] == true {
                break;
            }
            assert!(
                !server.is_null() || v["pending"].is_string(),
                "{user}'s start failed: {v}"
            );
            deadline.tick(v.to_string()).await;
        }
        let status_url = format!("{}/user/{user}/api/status", self.public());
        let deadline = Deadline::new(
            format!("{status_url} to answer 200"),
            Duration::from_secs(30),
        );
        loop {
            let (status, body) = self.call("GET", &status_url, token, None).await;
            if status == 200 {
                return;
            }
            deadline.tick((status, body)).await;
        }
    }

    /// Stops `user`'s default server with `token` and waits until it is gone.
    pub async fn stop(&self, user: &str, token: &str) {
        let url = format!("{}/hub/api/users/{user}/server", self.hub());
        let (status, body) = self.call("DELETE", &url, token, None).await;
        assert!(
            status == 202 || status == 204,
            "stop {user}: {status} {body}"
        );
        let deadline = Deadline::new(format!("{user}'s server to stop"), Duration::from_secs(60));
        loop {
            let v = self.model(user).await;
            if v["servers"].get("").is_none() && v["pending"].is_null() {
                return;
            }
            deadline.tick(v.to_string()).await;
        }
    }
}

/// The events of a JupyterHub progress stream (server-sent events, `data: {...}`) read from
/// `body` until one with `ready` or `failed` (returned with the others), each event's raw data
/// handed to `seen` first. Panics, naming the events so far, when the stream breaks, ends early
/// or has no final event by `deadline`.
pub async fn progress_events<B>(
    mut body: B,
    deadline: tokio::time::Instant,
    mut seen: impl FnMut(&str),
) -> Vec<serde_json::Value>
where
    B: hyper::body::Body<Data = hyper::body::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    let (mut buffer, mut events) = (String::new(), Vec::new());
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => panic!("progress stream broke: {e}; events: {events:?}"),
            Ok(None) => panic!("progress stream ended before ready/failed: {events:?}"),
            Err(_) => panic!("progress: no final event by the deadline: {events:?}"),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buffer.find("\n\n") {
            let chunk: String = buffer.drain(..end + 2).collect();
            for line in chunk.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                seen(data);
                let event: serde_json::Value =
                    serde_json::from_str(data.trim()).expect("event JSON");
                let over = event["ready"] == true || event["failed"] == true;
                events.push(event);
                if over {
                    return events;
                }
            }
        }
    }
}
