//! `atelier hub` and `atelier proxy` as child processes, started the way the process stories
//! (`tests/e2e_stack.rs`, `tests/data_sources.rs`) run them: a clean environment (`PATH` and
//! `RUST_LOG` only), loopback ports, the log in the story's directory, and a wait until the
//! process answers (a panic with its log when it exits first).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::stack::{Deadline, Proc, http_status};

/// `atelier <subcommand>` with nothing of the test's environment but `PATH`, and `RUST_LOG`.
pub fn command(subcommand: &str, rust_log: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_atelier"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", rust_log)
        .arg(subcommand);
    command
}

/// Where a hub of a story listens and keeps its state.
pub struct HubArgs<'a> {
    pub port: u16,
    pub database_url: &'a str,
    pub public_url: &'a str,
    pub state_dir: &'a Path,
    /// `jupyterhub-singleuser` (of the peers venv).
    pub server_command: &'a Path,
}

/// `atelier hub` on `127.0.0.1:<port>` with its database, public URL, state directory and server
/// command; the caller adds its services, tokens and other flags.
pub fn hub_command(rust_log: &str, args: &HubArgs) -> Command {
    let mut command = command("hub", rust_log);
    command
        .arg(format!("--bind=127.0.0.1:{}", args.port))
        .arg(format!("--database-url={}", args.database_url))
        .arg(format!("--public-url={}", args.public_url))
        .arg(format!("--state-dir={}", args.state_dir.display()))
        .arg(format!(
            "--server-command={}",
            args.server_command.display()
        ));
    command
}

/// Spawns `command` as process `name` (log `<dir>/<name>.log`) and waits up to `within` until
/// `GET url` answers 200; panics with the log if the process exits first.
pub async fn spawn_answering(
    name: &str,
    command: Command,
    dir: &Path,
    url: &str,
    within: Duration,
) -> Proc {
    let mut proc = Proc::spawn(name, command, dir);
    let deadline = Deadline::new(format!("{name} to answer {url}"), within);
    loop {
        if let Some(status) = proc.exited() {
            panic!("{name} exited ({status}):\n{}", proc.log());
        }
        match http_status(url).await {
            Ok(200) => return proc,
            last => deadline.tick(last).await,
        }
    }
}

/// Spawns `command` as process `name` of a story (log `<dir>/<name>.log`) in a process group of
/// its own (`Command::process_group(0)`, so that [`Proc::kill_group`] stops its children with
/// it), waits up to a minute until `GET url` answers 200, and adds it to `procs`.
pub async fn start_group(
    procs: &mut BTreeMap<String, Proc>,
    dir: &Path,
    name: &str,
    mut command: Command,
    url: &str,
) {
    command.process_group(0);
    let proc = spawn_answering(name, command, dir, url, Duration::from_secs(60)).await;
    procs.insert(name.to_owned(), proc);
}

/// `atelier proxy` on `127.0.0.1:<port>` in front of the hub at `hub_url` (routes from
/// `database_url`, reloaded every 250 ms), once `/_atelier/proxy/health` answers.
pub async fn start_proxy(dir: &Path, port: u16, database_url: &str, hub_url: &str) -> Proc {
    let mut proxy = command("proxy", "info");
    proxy
        .arg(format!("--bind=127.0.0.1:{port}"))
        .arg(format!("--database-url={database_url}"))
        .arg(format!("--default-target={hub_url}"))
        .arg("--refresh-ms=250");
    let url = format!("http://127.0.0.1:{port}/_atelier/proxy/health");
    spawn_answering("proxy", proxy, dir, &url, Duration::from_secs(60)).await
}
