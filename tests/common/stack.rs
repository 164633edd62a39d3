//! The process harness of the end-to-end tests (`tests/e2e_stack.rs`, `tests/browser.rs`):
//! child processes with their output in log files, what `/proc` says of the processes a test
//! started (found by the test's temporary directory in their arguments, environment or working
//! directory), killing every leftover under that directory, free ports, and bounded waits.

use std::fmt::Debug;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `/proc` says of a process.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub pgid: i32,
    pub state: char,
    pub cmdline: String,
    pub environ: Vec<String>,
    pub cwd: Option<PathBuf>,
}

impl ProcInfo {
    pub fn read(pid: i32) -> Option<ProcInfo> {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let stat = std::fs::read_to_string(base.join("stat")).ok()?;
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')')? + 2..];
        let mut fields = after.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgid = fields.next()?.parse().ok()?;
        let nul_list = |name: &str| -> Vec<String> {
            std::fs::read(base.join(name))
                .map(|bytes| {
                    bytes
                        .split(|b| *b == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(ProcInfo {
            pid,
            pgid,
            state,
            cmdline: nul_list("cmdline").join(" "),
            environ: nul_list("environ"),
            cwd: std::fs::read_link(base.join("cwd")).ok(),
        })
    }

    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }

    /// Whether the process mentions `dir` in its arguments, environment or working directory.
    pub fn belongs_to(&self, dir: &str) -> bool {
        self.cmdline.contains(dir)
            || self.environ.iter().any(|e| e.contains(dir))
            || self
                .cwd
                .as_ref()
                .is_some_and(|c| c.to_string_lossy().contains(dir))
    }

    pub fn env(&self, key: &str) -> Option<&str> {
        self.environ
            .iter()
            .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Every process but this one.
pub fn processes() -> Vec<ProcInfo> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(ProcInfo::read)
        .collect()
}

/// The live `jupyterhub-singleuser` processes of `user` started under `dir`.
pub fn singleusers(dir: &str, user: &str) -> Vec<ProcInfo> {
    processes()
        .into_iter()
        .filter(|p| {
            p.alive()
                && p.belongs_to(dir)
                && p.cmdline.contains("jupyterhub-singleuser")
                && p.env("JUPYTERHUB_USER") == Some(user)
        })
        .collect()
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn gone(pid: i32) -> bool {
    ProcInfo::read(pid).is_none_or(|p| !p.alive())
}

/// Kills (SIGKILL) every process under `dir`, and the process groups they lead.
pub fn kill_leftovers(dir: &str) -> usize {
    // SAFETY: getpgrp(2) has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    let mut killed = 0;
    for _ in 0..5 {
        let left: Vec<ProcInfo> = processes()
            .into_iter()
            .filter(|p| p.alive() && p.belongs_to(dir))
            .collect();
        if left.is_empty() {
            break;
        }
        for p in &left {
            // SAFETY: kill(2) of processes (and groups they lead) that this test started.
            unsafe {
                if p.pgid == p.pid && p.pgid != own_group {
                    libc::kill(-p.pgid, libc::SIGKILL);
                }
                libc::kill(p.pid, libc::SIGKILL);
            }
            killed += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    killed
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child process of the test with its output in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open a log");
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL to the process group the process leads (started with
    /// `Command::process_group(0)`), then to the process, reaped.
    pub fn kill_group(&mut self) {
        // SAFETY: kill(2) of the group our own child leads.
        unsafe {
            libc::kill(-self.pid(), libc::SIGKILL);
        }
        self.kill();
    }

    /// SIGKILL, reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then up to `grace` to exit, then SIGKILL. Whether it exited on its own.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if self.exited().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        false
    }
}

/// A bound on a wait, failing with what was last seen.
pub struct Deadline {
    what: String,
    end: Instant,
}

impl Deadline {
    pub fn new(what: impl Into<String>, within: Duration) -> Deadline {
        Deadline {
            what: what.into(),
            end: Instant::now() + within,
        }
    }

    /// Sleeps a little, or panics when the time is up.
    pub async fn tick(&self, last: impl Debug) {
        assert!(
            Instant::now() < self.end,
            "timed out waiting for {}; last seen: {last:?}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status of `GET url` (plain HTTP/1.1 on 127.0.0.1, no redirect followed), or why there is
/// none; for readiness probes.
pub async fn http_status(url: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| e.to_string())?;
        // `HTTP/1.1 200`
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}
