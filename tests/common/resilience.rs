//! What the resilience stories (`tests/resilience_db.rs`, `tests/resilience_load.rs`) share: a
//! private PostgreSQL they may stop and start (never the shared one), a stand-in for
//! `jupyterhub-singleuser` light enough to run a hundred of, an HTTP client that records every
//! answer within a per-request timeout, and the memory figures of a process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

use super::say;
use super::stack::free_port;

/// The client of the stories: plain HTTP/1.1, a connection per request in flight.
pub type Http = Client<HttpConnector, Full<Bytes>>;

/// A program on `PATH` (or, for PostgreSQL's server programs, in Debian's
/// `/usr/lib/postgresql/<version>/bin`, the newest first), or a loud failure naming what
/// provides it.
pub fn program(name: &str, provides: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&paths).collect();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    debian.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    dirs.extend(debian);
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("ATELIER_PEERS=1 but `{name}` is not on PATH ({provides})"))
}

/// A PostgreSQL server of the story's own in `dir` (initdb, then `pg_ctl` as user `postgres`
/// when the test runs as root), on a free loopback port, trust authentication. Stopped
/// (immediately) when dropped.
pub struct PrivatePg {
    dir: PathBuf,
    pub port: u16,
    running: bool,
}

/// `program args…` as user `postgres` when this process is root (PostgreSQL refuses to run as
/// root), as this user otherwise.
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    /// A new cluster in `dir` (created, and given to user `postgres` when run as root).
    pub fn init(dir: &Path) -> PrivatePg {
        let initdb = program("initdb", "PostgreSQL's server binaries");
        std::fs::create_dir_all(dir).expect("the PostgreSQL directory");
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(dir);
            run(chown, "chown the PostgreSQL directory");
        }
        let mut command = as_postgres(&initdb);
        command.arg("-D").arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(command, "initdb");
        PrivatePg {
            dir: dir.to_owned(),
            port: free_port(),
            running: false,
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self) -> Command {
        let mut command = as_postgres(&program("pg_ctl", "PostgreSQL's server binaries"));
        command.arg("-D").arg(self.dir.join("data"));
        command
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        let mut command = self.pg_ctl();
        command
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c fsync=off -c max_connections=300",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "-t", "60", "start"]);
        run(command, "pg_ctl start");
        self.running = true;
    }

    /// Stops the server (`-m fast`: the sessions are told and closed) and waits until it is down.
    pub fn stop(&mut self) {
        let mut command = self.pg_ctl();
        command.args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(command, "pg_ctl stop");
        self.running = false;
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if self.running {
            let mut command = self.pg_ctl();
            command.args(["-m", "immediate", "-w", "stop"]);
            let _ = command.output();
        }
    }
}

/// Writes `dir/fake-singleuser`: what the local backend runs in place of
/// `jupyterhub-singleuser`. It takes the `--port=N` it is given and serves HTTP there with
/// busybox's httpd (about a megabyte of memory), so that the backend's readiness check (any
/// answer below 500 at `<prefix>api`) passes. A user whose name starts with `slow-` waits
/// `slow_secs` first, so that a start is still in flight a while.
pub fn fake_singleuser(dir: &Path, slow_secs: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let busybox = program("busybox", "apt-get install busybox");
    let script = format!(
        "#!/bin/sh\n\
         # A stand-in for jupyterhub-singleuser (tests/common/resilience.rs).\n\
         port=\n\
         for a in \"$@\"; do case \"$a\" in --port=*) port=\"${{a#--port=}}\";; esac; done\n\
         case \"$JUPYTERHUB_USER\" in slow-*) {busybox} sleep {slow_secs};; esac\n\
         exec {busybox} httpd -f -p \"127.0.0.1:$port\" -h \"$HOME\"\n",
        busybox = busybox.display()
    );
    let path = dir.join("fake-singleuser");
    std::fs::write(&path, script).expect("write the fake server");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("make the fake server executable");
    path
}

/// One answer, or why there is none.
#[derive(Debug, Clone)]
pub struct Answer {
    pub method: String,
    pub url: String,
    /// The status, or `Err("timed out")`, or the client's error.
    pub status: Result<u16, String>,
    pub body: String,
    pub retry_after: Option<String>,
    /// When the request was sent, and how long the answer took.
    pub sent: Instant,
    pub took: Duration,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        matches!(self.status, Ok(s) if (200..300).contains(&s))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `method url` with `token` and a JSON `body`, bounded by `timeout`.
pub async fn call(
    http: &Http,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Answer {
    let authorization = format!("token {token}");
    let headers = [("authorization", authorization.as_str())];
    call_with(http, method, url, &headers, body, timeout).await
}

/// `method url` with `headers` and a JSON `body`, bounded by `timeout`.
pub async fn call_with(
    http: &Http,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    timeout: Duration,
) -> Answer {
    let sent = Instant::now();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(Value::to_string).unwrap_or_default(),
        )))
        .expect("request");
    let exchange = async {
        let response = http.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok::<_, String>((
            status,
            String::from_utf8_lossy(&body).into_owned(),
            retry_after,
        ))
    };
    let (status, body, retry_after) = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, body, retry_after))) => (Ok(status), body, retry_after),
        Ok(Err(e)) => (Err(e), String::new(), None),
        Err(_) => (Err("timed out".to_owned()), String::new(), None),
    };
    Answer {
        method: method.to_owned(),
        url: url.to_owned(),
        status,
        body,
        retry_after,
        sent,
        took: sent.elapsed(),
    }
}

/// Whether `answer` is the hub's 503 while its database is away: JupyterHub's JSON error shape
/// `{"status": 503, "message": "…"}` and a `Retry-After`.
pub fn is_database_503(answer: &Answer) -> bool {
    let v = answer.json();
    answer.status == Ok(503)
        && v["status"] == 503
        && v["message"].as_str().is_some_and(|m| !m.is_empty())
        && answer.retry_after.is_some()
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
pub fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises this process's soft limit of open files to its hard limit (its children inherit it);
/// returns the new soft limit.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit(2) with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    say(format!("open files limit: {}", limit.rlim_cur));
    limit.rlim_cur
}
