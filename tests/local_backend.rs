//! The `local` backend with real processes on 127.0.0.1: a tiny Python HTTP server stands in for
//! `jupyterhub-singleuser`, and one test (gated by `ATELIER_PEERS=1`) runs the real one from
//! `$ATELIER_PEERS_VENV` against a minimal hub stand-in. Every process group a test starts is
//! killed when the test ends, also on failure (`Sandbox`).
//!
//! `cargo test --test local_backend`; with the real server:
//! `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test local_backend`.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier::backend::local::{LocalBackend, LocalConfig};
use atelier::backend::{
    BackendError, BackendStatus, LocalDask, ProgressEvent, SpawnRequest, Spawned, WorkspaceBackend,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Bounds every wait, so that a broken backend fails the test instead of hanging it.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A stand-in single-user server: answers 200 on any path, `<prefix>api/env` with its
/// environment, arguments and working directory as JSON, and exits with status 7 after
/// answering `<prefix>api/exit`.
const FAKE_SERVER: &str = r#"
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

ip, port = "127.0.0.1", None
for arg in sys.argv[1:]:
    if arg.startswith("--port="):
        port = int(arg.split("=", 1)[1])
    elif arg.startswith("--ip="):
        ip = arg.split("=", 1)[1]
prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == prefix + "api/env":
            body = json.dumps({"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd()})
        else:
            body = json.dumps({"path": self.path})
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        if self.path == prefix + "api/exit":
            threading.Timer(0.1, lambda: os._exit(7)).start()

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-server: " + (fmt % args) + "\n")

print(f"fake-server listening on {ip}:{port}", flush=True)
HTTPServer((ip, port), Handler).serve_forever()
"#;

// ---- harness ------------------------------------------------------------------------------

/// A temporary directory plus every process group started in it; on drop (also on panic) the
/// groups get SIGKILL and the directory is removed.
struct Sandbox {
    dir: PathBuf,
    groups: Arc<Mutex<Vec<(i32, u64)>>>,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "atelier-local-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fake_server.py"), FAKE_SERVER).unwrap();
        Sandbox {
            dir,
            groups: Arc::default(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// A config running the fake server.
    fn config(&self) -> LocalConfig {
        let mut config = LocalConfig::new(self.state_dir());
        config.command = vec![
            "python3".into(),
            self.dir.join("fake_server.py").to_string_lossy().into(),
        ];
        config.start_timeout = Duration::from_secs(30);
        config
            .env
            .insert("ATELIER_TEST_EXTRA".into(), "from-config".into());
        config
    }

    /// A config running `sh -c script` (the backend's `--ip`/`--port` become `$0`, `$1`).
    fn shell_config(&self, script: &str) -> LocalConfig {
        let mut config = self.config();
        config.command = vec!["sh".into(), "-c".into(), script.into()];
        config
    }

    fn track(&self, pid: i32) {
        track(&self.groups, pid);
    }

    fn track_handle(&self, handle: &Value) {
        self.track(handle["pgid"].as_i64().unwrap() as i32);
    }
}

fn track(groups: &Mutex<Vec<(i32, u64)>>, pid: i32) {
    if let Some(start_time) = start_time(pid) {
        let mut groups = groups.lock().unwrap();
        if !groups.contains(&(pid, start_time)) {
            groups.push((pid, start_time));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for &(pgid, started) in groups.iter() {
            // Only when the pid is not another process's by now.
            if start_time(pgid).is_none_or(|t| t == started) && pgid > 1 {
                // SAFETY: killpg only sends a signal, to a group this test started (pgid > 1).
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fields 3 (state), 5 (pgrp) and 22 (start time) of `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, _, t)| t)
}

/// The live (non-zombie) processes of group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(stat(pid), Some((state, pgrp, _)) if pgrp == pgid && state != 'Z' && state != 'X'))
        .collect()
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn request(user: &str, server: &str) -> SpawnRequest {
    let prefix = if server.is_empty() {
        format!("/user/{user}/")
    } else {
        format!("/user/{user}/{server}/")
    };
    let env = BTreeMap::from([
        ("JUPYTERHUB_API_TOKEN".into(), "secret-token".into()),
        (
            "JUPYTERHUB_API_URL".into(),
            "http://127.0.0.1:1/hub/api".into(),
        ),
        (
            "JUPYTERHUB_CLIENT_ID".into(),
            format!("jupyterhub-user-{user}"),
        ),
        ("JUPYTERHUB_USER".into(), user.into()),
        ("JUPYTERHUB_SERVER_NAME".into(), server.into()),
        ("JUPYTERHUB_SERVICE_PREFIX".into(), prefix),
    ]);
    SpawnRequest {
        user: user.into(),
        server: server.into(),
        groups: vec!["researchers".into()],
        profile: None,
        user_options: json!({}),
        env,
        files: BTreeMap::new(),
        dask: None,
        kind: Default::default(),
    }
}

/// The pid of a "Server process started (pid N, port P)" event.
fn event_pid(event: &ProgressEvent) -> Option<i32> {
    let rest = event.message.split("(pid ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Starts a server; every process it reports is tracked by the sandbox as soon as reported.
async fn start(
    backend: &LocalBackend,
    sandbox: &Sandbox,
    request: SpawnRequest,
) -> (Result<Spawned, BackendError>, Vec<ProgressEvent>) {
    let (tx, mut rx) = mpsc::channel(16);
    let groups = sandbox.groups.clone();
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            if let Some(pid) = event_pid(&event) {
                track(&groups, pid);
            }
            events.push(event);
        }
        events
    });
    let result = bounded("start", backend.start(request, tx)).await;
    if let Ok(spawned) = &result {
        sandbox.track_handle(&spawned.handle);
    }
    let events = bounded("progress events", collector).await.unwrap();
    (result, events)
}

/// GET `url` (HTTP/1.0): status and body.
async fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    bounded(&format!("GET {url}"), async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

fn pgid_of(handle: &Value) -> i32 {
    handle["pgid"].as_i64().unwrap() as i32
}

async fn poll(backend: &LocalBackend, handle: &Value) -> BackendStatus {
    bounded("poll", backend.poll(handle)).await.unwrap()
}

async fn stop(backend: &LocalBackend, handle: &Value) {
    bounded("stop", backend.stop(handle)).await.unwrap();
}

// ---- tests --------------------------------------------------------------------------------

#[tokio::test]
async fn starts_with_the_environment_then_stops() {
    let sandbox = Sandbox::new("start");
    let backend = LocalBackend::new(sandbox.config());
    assert_eq!(backend.kind(), "local");

    let (result, events) = start(&backend, &sandbox, request("alice", "")).await;
    let spawned = result.unwrap();
    let progress: Vec<u8> = events.iter().map(|e| e.progress).collect();
    assert_eq!(progress, [10, 40, 100], "{events:?}");
    assert_eq!(events[0].message, "Starting server process");
    assert!(
        events[1]
            .message
            .starts_with("Server process started (pid "),
        "{events:?}"
    );
    assert!(events[2].ready && !events.iter().any(|e| e.failed));

    // The handle.
    let handle = &spawned.handle;
    let port = handle["port"].as_u64().unwrap();
    assert_eq!(spawned.url, format!("http://127.0.0.1:{port}"));
    assert_eq!(handle["url"], spawned.url);
    assert_eq!(handle["pid"], handle["pgid"]);
    let pgid = pgid_of(handle);
    assert_eq!(
        handle["start_time"].as_u64(),
        start_time(pgid),
        "start_time is field 22 of /proc/<pid>/stat"
    );
    assert_eq!(
        stat(pgid).unwrap().1,
        pgid,
        "the server leads its own group"
    );
    assert_ne!(
        stat(pgid).unwrap().1,
        stat(std::process::id() as i32).unwrap().1,
        "not in the hub's process group"
    );

    // What the server got.
    let (status, body) = http_get(&format!("{}/user/alice/api/env", spawned.url)).await;
    assert_eq!(status, 200);
    let seen: Value = serde_json::from_str(&body).unwrap();
    let env = &seen["env"];
    let user_dir = sandbox.state_dir().join("users/alice");
    assert_eq!(env["JUPYTERHUB_API_TOKEN"], "secret-token");
    assert_eq!(env["JUPYTERHUB_USER"], "alice");
    assert_eq!(env["JUPYTERHUB_CLIENT_ID"], "jupyterhub-user-alice");
    assert_eq!(env["JUPYTERHUB_SERVICE_PREFIX"], "/user/alice/");
    assert_eq!(
        env["JUPYTERHUB_SERVICE_URL"],
        format!("http://127.0.0.1:{port}/user/alice/")
    );
    assert_eq!(env["ATELIER_TEST_EXTRA"], "from-config");
    assert_eq!(env["HOME"], user_dir.to_str().unwrap());
    assert_eq!(seen["cwd"], user_dir.to_str().unwrap());
    assert!(env.get("PATH").is_some(), "PATH is kept");
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        assert!(
            env.get("CARGO_MANIFEST_DIR").is_none(),
            "the hub's environment does not leak: {env}"
        );
    }
    let argv: Vec<&str> = seen["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.contains(&"--ip=127.0.0.1"), "{argv:?}");
    assert!(
        argv.contains(&format!("--port={port}").as_str()),
        "{argv:?}"
    );
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert_eq!(argv.contains(&"--allow-root"), root, "{argv:?}");

    // Its directory and log.
    let mode = std::fs::metadata(&user_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let log = std::fs::read_to_string(sandbox.state_dir().join("logs/alice.log")).unwrap();
    assert!(log.contains("fake-server listening"), "{log}");
    assert!(
        log.contains("/user/alice/api/env"),
        "stderr is logged too: {log}"
    );

    assert_eq!(
        poll(&backend, handle).await,
        BackendStatus::Running {
            url: spawned.url.clone()
        }
    );

    stop(&backend, handle).await;
    assert_eq!(group_members(pgid), Vec::<i32>::new(), "group gone");
    assert!(matches!(
        poll(&backend, handle).await,
        BackendStatus::Stopped { .. }
    ));
    // Idempotent.
    stop(&backend, handle).await;
}

#[tokio::test]
async fn a_command_that_exits_at_once_fails_with_its_log() {
    let sandbox = Sandbox::new("exit");
    let backend = LocalBackend::new(
        sandbox.shell_config("echo 'boom: no notebook here' >&2; echo second line; exit 3"),
    );
    let (result, events) = start(&backend, &sandbox, request("bob", "")).await;
    let message = match result {
        Err(BackendError::SpawnFailed(message)) => message,
        other => panic!("expected SpawnFailed, got {other:?}"),
    };
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("boom: no notebook here"), "{message}");
    assert!(message.contains("second line"), "{message}");
    let last = events.last().unwrap();
    assert!(last.failed && !last.ready, "{events:?}");

    // A command that cannot run at all.
    let mut config = sandbox.config();
    config.command = vec![sandbox.dir.join("no-such-command").to_string_lossy().into()];
    let backend = LocalBackend::new(config);
    let (result, _) = start(&backend, &sandbox, request("bob", "")).await;
    match result {
        Err(BackendError::SpawnFailed(message)) => {
            assert!(message.contains("no-such-command"), "{message}")
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
}

/// A request carrying the data sources' files and a credential in its environment.
fn data_request(user: &str, server: &str) -> SpawnRequest {
    let mut r = request(user, server);
    r.env
        .insert("AWS_SECRET_ACCESS_KEY".into(), "data-secret-value".into());
    // What the hub would never send, but the backend overrides: the files' variables.
    r.env.insert(
        "ATELIER_DATA_CATALOG".into(),
        "/elsewhere/catalog.yaml".into(),
    );
    r.files = BTreeMap::from([
        (
            "catalog.yaml".into(),
            "metadata: {version: 1}\nsources: {}\n".into(),
        ),
        (
            "irods_environment.json".into(),
            "{\"irods_host\": \"h\"}\n".into(),
        ),
        (".irodsA".into(), ".obfuscated\0".into()),
    ]);
    r
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn data_files_are_written_private_and_removed_at_stop() {
    let sandbox = Sandbox::new("data");
    let backend = LocalBackend::new(sandbox.config());
    let dir = sandbox.state_dir().join("run/alice/server-lab.data");
    assert_eq!(backend.data_dir_path("alice", "lab"), dir);
    // A leftover of an earlier run is replaced.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stale"), "old").unwrap();

    let (result, events) = start(&backend, &sandbox, data_request("alice", "lab")).await;
    let spawned = result.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message
                == "Data sources: .irodsA, catalog.yaml, irods_environment.json written"),
        "{events:?}"
    );
    for event in &events {
        assert!(!event.message.contains("data-secret-value"), "{event:?}");
    }
    assert_eq!(spawned.handle["data_dir"], dir.display().to_string());
    assert_eq!(mode(&dir), 0o700);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".irodsA", "catalog.yaml", "irods_environment.json"]);
    for name in &names {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join(".irodsA")).unwrap(),
        ".obfuscated\0"
    );
    let (status, body) = http_get(&format!("{}/user/alice/lab/api/env", spawned.url)).await;
    assert_eq!(status, 200);
    let env = &serde_json::from_str::<Value>(&body).unwrap()["env"];
    let path = |name: &str| dir.join(name).display().to_string();
    assert_eq!(env["ATELIER_DATA_CATALOG"], path("catalog.yaml"));
    assert_eq!(
        env["IRODS_ENVIRONMENT_FILE"],
        path("irods_environment.json")
    );
    assert_eq!(env["IRODS_AUTHENTICATION_FILE"], path(".irodsA"));
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "data-secret-value");

    stop(&backend, &spawned.handle).await;
    assert!(!dir.exists(), "the data directory outlived the server");
    // A second stop is fine.
    stop(&backend, &spawned.handle).await;

    // Without files: no directory, no variables.
    let (result, _) = start(&backend, &sandbox, request("alice", "lab")).await;
    let spawned = result.unwrap();
    assert!(!dir.exists());
    assert!(spawned.handle.get("data_dir").is_none());
    let (_, body) = http_get(&format!("{}/user/alice/lab/api/env", spawned.url)).await;
    let env = &serde_json::from_str::<Value>(&body).unwrap()["env"];
    assert!(env.get("IRODS_ENVIRONMENT_FILE").is_none(), "{env}");
    stop(&backend, &spawned.handle).await;

    // A handle naming a directory outside the run directory never has it removed.
    let outside = sandbox.dir.join("precious.data");
    std::fs::create_dir_all(&outside).unwrap();
    let (result, _) = start(&backend, &sandbox, request("carol", "")).await;
    let mut handle = result.unwrap().handle;
    handle["data_dir"] = json!(outside.display().to_string());
    stop(&backend, &handle).await;
    assert!(outside.exists());
}

#[tokio::test]
async fn a_failed_start_leaves_no_data_files() {
    let sandbox = Sandbox::new("data-fail");
    let backend = LocalBackend::new(sandbox.shell_config("echo no server here >&2; exit 3"));
    let dir = backend.data_dir_path("bob", "");
    let (result, _) = start(&backend, &sandbox, data_request("bob", "")).await;
    assert!(
        matches!(result, Err(BackendError::SpawnFailed(_))),
        "{result:?}"
    );
    assert!(!dir.exists(), "a failed start left {}", dir.display());

    // A start dropped midway (a cancelled spawn) takes its files with it.
    let backend = LocalBackend::new(sandbox.shell_config("sleep 30"));
    let (tx, _rx) = mpsc::channel(16);
    let starting = backend.start(data_request("bob", ""), tx);
    let _ = tokio::time::timeout(Duration::from_millis(700), starting).await;
    assert!(!dir.exists(), "an abandoned start left {}", dir.display());

    // A file that is not a data file is refused (it could name a path).
    let mut request = data_request("bob", "");
    request.files.insert("../../escape".into(), "x".into());
    let (result, _) = start(&backend, &sandbox, request).await;
    assert!(matches!(result, Err(BackendError::Other(_))), "{result:?}");
    assert!(!dir.exists());
    assert!(!sandbox.state_dir().join("escape").exists());
}

#[tokio::test]
async fn a_command_that_never_listens_times_out_and_is_killed() {
    let sandbox = Sandbox::new("timeout");
    // Ignores SIGTERM, with children in its group: stop has to escalate to SIGKILL.
    let mut config = sandbox.shell_config("trap '' TERM; sleep 600 & sleep 600 & wait");
    config.start_timeout = Duration::from_secs(2);
    let backend = LocalBackend::new(config);
    let (result, events) = start(&backend, &sandbox, request("carol", "")).await;
    assert!(
        matches!(result, Err(BackendError::Timeout(2))),
        "{result:?}"
    );
    let pgid = events.iter().find_map(event_pid).expect("a started event");
    assert_eq!(group_members(pgid), Vec::<i32>::new(), "nothing left");
    assert!(events.last().unwrap().failed);
}

#[tokio::test]
async fn a_server_that_dies_is_polled_as_stopped() {
    let sandbox = Sandbox::new("dies");
    let backend = LocalBackend::new(sandbox.config());
    let (result, _) = start(&backend, &sandbox, request("dave", "")).await;
    let spawned = result.unwrap();
    let (status, _) = http_get(&format!("{}/user/dave/api/exit", spawned.url)).await;
    assert_eq!(status, 200);
    let mut last = None;
    eventually("poll says Stopped", async || {
        let status = poll(&backend, &spawned.handle).await;
        let done = matches!(status, BackendStatus::Stopped { .. });
        last = Some(status);
        done
    })
    .await;
    match last {
        Some(BackendStatus::Stopped {
            reason: Some(reason),
        }) => assert!(reason.contains("exited with status 7"), "{reason}"),
        other => panic!("{other:?}"),
    }
    stop(&backend, &spawned.handle).await;
}

#[tokio::test]
async fn a_new_backend_re_adopts_and_stops_a_running_server() {
    let sandbox = Sandbox::new("adopt");
    let first = LocalBackend::new(sandbox.config());
    let (result, _) = start(&first, &sandbox, request("erin", "gpu")).await;
    let spawned = result.unwrap();
    assert!(
        sandbox.state_dir().join("logs/erin~gpu.log").is_file(),
        "a named server logs to <user>~<server>.log"
    );
    let (status, _) = http_get(&format!("{}/user/erin/gpu/api", spawned.url)).await;
    assert_eq!(status, 200);

    // The hub restarts: a new backend knows only the stored handle.
    let stored: Value = serde_json::from_str(&spawned.handle.to_string()).unwrap();
    let second = LocalBackend::new(sandbox.config());
    assert_eq!(
        poll(&second, &stored).await,
        BackendStatus::Running {
            url: spawned.url.clone()
        }
    );
    stop(&second, &stored).await;
    assert_eq!(group_members(pgid_of(&stored)), Vec::<i32>::new());
    assert!(matches!(
        poll(&second, &stored).await,
        BackendStatus::Stopped { .. }
    ));
    assert!(matches!(
        poll(&first, &stored).await,
        BackendStatus::Stopped { .. }
    ));
}

#[tokio::test]
async fn handles_of_reused_pids_or_earlier_boots_are_stopped_and_never_signalled() {
    let sandbox = Sandbox::new("reuse");
    let backend = LocalBackend::new(sandbox.config());
    let (result, _) = start(&backend, &sandbox, request("frank", "")).await;
    let spawned = result.unwrap();
    let pgid = pgid_of(&spawned.handle);

    let mut reused = spawned.handle.clone();
    reused["start_time"] = json!(spawned.handle["start_time"].as_u64().unwrap() + 1);
    match poll(&backend, &reused).await {
        BackendStatus::Stopped {
            reason: Some(reason),
        } => assert!(reason.contains("another process"), "{reason}"),
        other => panic!("{other:?}"),
    }
    stop(&backend, &reused).await;
    assert!(
        !group_members(pgid).is_empty(),
        "a pid that is not the server's is left alone"
    );

    let mut rebooted = spawned.handle.clone();
    rebooted["boot_id"] = json!("00000000-0000-0000-0000-000000000000");
    assert!(matches!(
        poll(&backend, &rebooted).await,
        BackendStatus::Stopped { .. }
    ));
    stop(&backend, &rebooted).await;
    assert!(!group_members(pgid).is_empty());

    // Not a local handle at all.
    for bad in [
        json!({"workspace": "ws-frank"}),
        json!({"pid": 1, "pgid": 1, "port": 1, "url": "x", "start_time": 0}),
    ] {
        assert!(matches!(
            backend.poll(&bad).await,
            Err(BackendError::BadHandle(_))
        ));
        assert!(matches!(
            backend.stop(&bad).await,
            Err(BackendError::BadHandle(_))
        ));
    }

    assert!(matches!(
        poll(&backend, &spawned.handle).await,
        BackendStatus::Running { .. }
    ));
    stop(&backend, &spawned.handle).await;
    assert_eq!(group_members(pgid), Vec::<i32>::new());
}

#[tokio::test]
async fn dropping_the_start_midway_leaves_no_process() {
    let sandbox = Sandbox::new("drop");
    let backend = LocalBackend::new(sandbox.shell_config("sleep 600 & sleep 600 & wait"));
    let (tx, mut rx) = mpsc::channel(16);
    let mut start = backend.start(request("grace", ""), tx);
    let pgid = bounded("the started event", async {
        loop {
            tokio::select! {
                result = &mut start => panic!("start ended: {result:?}"),
                Some(event) = rx.recv() => if let Some(pid) = event_pid(&event) {
                    sandbox.track(pid);
                    break pid;
                },
            }
        }
    })
    .await;
    eventually("the whole group is up", async || {
        group_members(pgid).len() >= 3
    })
    .await;
    drop(start);
    eventually("the group is gone", async || group_members(pgid).is_empty()).await;
}

// ---- the real jupyterhub-singleuser -------------------------------------------------------

/// The venv of the Python peers, or why the peer test does not run.
fn peers_venv() -> Option<PathBuf> {
    if std::env::var("ATELIER_PEERS").ok().as_deref() != Some("1") {
        eprintln!("SKIPPED: real jupyterhub-singleuser test (set ATELIER_PEERS=1)");
        return None;
    }
    let venv = std::env::var_os("ATELIER_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/venv"));
    let bin = venv.join("bin/jupyterhub-singleuser");
    assert!(
        bin.is_file(),
        "ATELIER_PEERS=1 but {} is missing (run .ci/test.sh to provision the peers)",
        bin.display()
    );
    Some(venv)
}

/// A hub stand-in with what `jupyterhub-singleuser` calls at startup and for activity.
async fn hub_stand_in() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use axum::Router;
    use axum::routing::{get, post};

    let activity = Arc::new(AtomicUsize::new(0));
    let version = || async {
        (
            [("X-JupyterHub-Version", "5.3.0")],
            axum::Json(json!({"version": "5.3.0"})),
        )
    };
    let counter = activity.clone();
    let app = Router::new()
        .route("/hub/api", get(version))
        .route("/hub/api/", get(version))
        .route(
            "/hub/api/users/{name}/activity",
            post(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                async { axum::Json(json!({})) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, activity, server)
}

#[tokio::test]
async fn real_jupyterhub_singleuser_starts_and_stops() {
    let Some(venv) = peers_venv() else {
        return;
    };
    let sandbox = Sandbox::new("peer");
    let (hub_port, _activity, hub) = hub_stand_in().await;
    let hub_api = format!("http://127.0.0.1:{hub_port}/hub/api");

    let mut config = LocalConfig::new(sandbox.state_dir());
    config.command = vec![
        venv.join("bin/jupyterhub-singleuser")
            .to_string_lossy()
            .into(),
    ];
    config.start_timeout = Duration::from_secs(50);
    let backend = LocalBackend::new(config);

    let mut request = request("alice", "");
    let scopes = json!(["access:servers!server=alice/"]).to_string();
    request.env.extend([
        ("JUPYTERHUB_API_URL".to_owned(), hub_api.clone()),
        (
            "JUPYTERHUB_ACTIVITY_URL".to_owned(),
            format!("{hub_api}/users/alice/activity"),
        ),
        ("JUPYTERHUB_BASE_URL".to_owned(), "/".to_owned()),
        ("JUPYTERHUB_HOST".to_owned(), String::new()),
        (
            "JUPYTERHUB_OAUTH_CALLBACK_URL".to_owned(),
            "/user/alice/oauth_callback".to_owned(),
        ),
        ("JUPYTERHUB_OAUTH_SCOPES".to_owned(), scopes.clone()),
        ("JUPYTERHUB_OAUTH_ACCESS_SCOPES".to_owned(), scopes),
        (
            "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES".to_owned(),
            "[]".to_owned(),
        ),
    ]);

    let (result, events) = start(&backend, &sandbox, request).await;
    let log_path = sandbox.state_dir().join("logs/alice.log");
    let spawned = result.unwrap_or_else(|e| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("start failed: {e}\n--- log ---\n{log}")
    });
    assert!(events.last().unwrap().ready, "{events:?}");

    let (status, body) = http_get(&format!("{}/user/alice/api", spawned.url)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("version"), "{body}");
    assert!(matches!(
        poll(&backend, &spawned.handle).await,
        BackendStatus::Running { .. }
    ));

    let pgid = pgid_of(&spawned.handle);
    stop(&backend, &spawned.handle).await;
    assert_eq!(group_members(pgid), Vec::<i32>::new());
    assert!(matches!(
        poll(&backend, &spawned.handle).await,
        BackendStatus::Stopped { .. }
    ));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("received signal 15, stopping"),
        "stopped by SIGTERM, not SIGKILL:\n{log}"
    );
    hub.abort();
}

/// A start with a Dask cluster dropped midway takes the scheduler and the workers (in the
/// server's process group) and the cluster's TLS files with it. Needs the peers venv's `dask`.
#[tokio::test]
async fn dropping_a_start_with_dask_leaves_no_process() {
    let Some(venv) = peers_venv() else {
        return;
    };
    let sandbox = Sandbox::new("dask-drop");
    // `dask` beside the server's program, as in a venv; the server never answers.
    let bin = sandbox.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(venv.join("bin/dask"), bin.join("dask")).unwrap();
    let server = bin.join("never-ready");
    std::fs::write(&server, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = sandbox.config();
    config.command = vec![server.to_string_lossy().into_owned()];
    let backend = LocalBackend::new(config);
    let mut req = request("dora", "");
    req.dask = Some(LocalDask {
        workers: 1,
        max_workers: 1,
        threads: 1,
        memory_limit: None,
        idle_timeout_seconds: None,
    });
    let data_dir = backend.data_dir_path("dora", "");
    let (tx, mut rx) = mpsc::channel(16);
    let mut start = backend.start(req, tx);
    let (pgid, mut cluster_started) = (None::<i32>, false);
    let mut pgid = pgid;
    bounded("the cluster's started event", async {
        while !cluster_started {
            tokio::select! {
                result = &mut start => panic!("start ended: {result:?}"),
                Some(event) = rx.recv() => {
                    if let Some(pid) = event_pid(&event) {
                        sandbox.track(pid);
                        pgid = Some(pid);
                    }
                    cluster_started |= event.message.starts_with("Dask scheduler and 1 worker");
                },
            }
        }
    })
    .await;
    let pgid = pgid.expect("the server's pid");
    assert!(data_dir.join("dask-tls.key").is_file(), "the cluster's key");
    // The server, the scheduler and the worker's nanny (and its worker process).
    eventually("the cluster is up", async || group_members(pgid).len() >= 3).await;
    drop(start);
    eventually("the group is gone", async || group_members(pgid).is_empty()).await;
    assert!(
        !data_dir.exists(),
        "an abandoned start left {}",
        data_dir.display()
    );
}
