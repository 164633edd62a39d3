//! The OpenID provider of the single sign-on tests: the npm `oidc-provider` 9.13.3 (OpenID
//! Certified) started from `e2e/oidc/provider.mjs` on 127.0.0.1 with its development login form
//! (any login name; the accounts with claims are listed in `provider.mjs`: `alice` in group
//! `ocean-physics`, `bob` with an AARC entitlement of `vo.example.org`, `carol`, …).
//!
//! It needs node and `e2e/oidc/node_modules` (`cd e2e/oidc && npm ci`): [`start_provider`]
//! installs them with `npm ci` when missing and panics when node or npm is missing. Callers
//! run it only under `ATELIER_PEERS=1` (see [`peers_enabled`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The hub's client id at the provider.
pub const CLIENT_ID: &str = "atelier";
/// The hub's client secret at the provider.
pub const CLIENT_SECRET: &str = "atelier-test-secret";

/// Whether the peer-gated tests run (`ATELIER_PEERS=1`); says `SKIPPED: <what> (set
/// ATELIER_PEERS=1)` past the capture when not.
pub fn peers_enabled(what: &str) -> bool {
    if std::env::var("ATELIER_PEERS").is_ok_and(|v| v == "1") {
        return true;
    }
    super::say(format!("SKIPPED: {what} (set ATELIER_PEERS=1)"));
    false
}

/// `e2e/oidc`, where `provider.mjs` and its `node_modules` are.
pub fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/oidc")
}

/// Installs `e2e/oidc/node_modules` (`npm ci`, from the lock file) when missing; panics when
/// npm is missing or the install fails.
pub fn ensure_node_modules() {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = peer_dir();
    if dir.join("node_modules/oidc-provider").is_dir() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm (ATELIER_PEERS=1 needs node and npm for e2e/oidc)");
    assert!(status.success(), "npm ci in e2e/oidc failed");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "npm ci in e2e/oidc did not install oidc-provider"
    );
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// The running provider, killed when dropped.
pub struct OidcPeer {
    pub child: Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
}

/// Starts the provider on `port` for a hub at `hub_url`: client [`CLIENT_ID`] /
/// [`CLIENT_SECRET`], redirect URI `<hub_url>/hub/oauth_callback/test` (the hub's provider is
/// named `test`), post-logout redirect URI `<hub_url>/hub/login`. Returns once it listens
/// (at most 30 s); panics when node or `node_modules` is missing and cannot be installed.
pub async fn start_provider(hub_url: &str, port: u16) -> OidcPeer {
    ensure_node_modules();
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .arg(port.to_string())
        .current_dir(peer_dir())
        .env(
            "OIDC_REDIRECT_URIS",
            format!("{hub_url}/hub/oauth_callback/test"),
        )
        .env("OIDC_POST_LOGOUT_URIS", format!("{hub_url}/hub/login"))
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node (ATELIER_PEERS=1 needs node for e2e/oidc)");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("provider stdout") {
            if line.trim() == "ready" {
                return;
            }
        }
        panic!("oidc-provider exited before it was ready");
    })
    .await
    .expect("oidc-provider ready within 30 s");
    // Keep reading: the provider logs to stdout and dies of EPIPE if nobody does.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    OidcPeer {
        child,
        port,
        issuer: format!("http://127.0.0.1:{port}"),
    }
}
