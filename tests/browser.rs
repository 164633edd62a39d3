//! The single sign-on story in a real browser: headless Debian Chromium (`/usr/bin/chromium`)
//! driven by npm `playwright-core` (`e2e/browser/browser.mjs`, pinned by its package-lock.json),
//! against real `atelier hub` and `atelier proxy` processes on free 127.0.0.1 ports, the npm
//! `oidc-provider` (`e2e/oidc/provider.mjs`) as the hub's only login, a catalogue of profiles
//! per group (`--catalog`), and the local backend running the real `jupyterhub-singleuser` from
//! `$ATELIER_PEERS_VENV`, on SQLite:
//!
//! - alice (group `ocean-physics`, an admin through `admin_groups`) logs in through the
//!   provider, sees exactly her profiles, starts `ocean-pangeo`, watches the progress bar, lands
//!   in JupyterLab and runs `print(6*7)`;
//! - bob (AARC entitlement of `vo.example.org`) does not see `ocean-pangeo`, gets 403 posting it
//!   through the REST API with a token he made on the tokens page, and cannot open `/user/alice/`;
//! - alice looks at the admin page, logs out (the provider's logout too), and `/hub/home` asks
//!   for a login again.
//!
//! The script prints one `ok <step>` line per step (shown here past the capture). Screenshots
//! (login, spawn, progress, lab, home, admin; `failed-<step>.png` of the failing page) land in
//! `<target>/test-output/browser/` (`$CARGO_TARGET_DIR` or `./target`), never committed.
//!
//! Gated by `ATELIER_PEERS=1` (a missing peer is then a failure): `ATELIER_PEERS=1
//! ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test browser -- --nocapture`. Every process
//! (provider, hub, proxy, servers, kernels, node, Chromium) is killed when the test ends, also on
//! panic; on panic every log is printed and the temporary directory kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use atelier::store::tokens::generate_token;

mod common;

use common::chromium::{self, Script, assert_passed, is_png, output_dir};
use common::hub::peers_venv;
use common::oidc::{CLIENT_ID, OidcPeer, start_provider};
use common::stack::{Deadline, Proc, free_port, singleusers};
use common::{launch, say, story};

const USER_A: &str = "alice";
const USER_B: &str = "bob";
/// alice's profile (group `ocean-physics`) and bob's (group `vo.example.org`).
const PROFILE_A: &str = "ocean-pangeo";
const PROFILE_B: &str = "egi-notebook";
/// Open to everyone: both forms list it.
const PROFILE_ALL: &str = "basic";

/// The hub's catalogue (`--catalog`): the `interactive` NodePool every profile runs on by
/// default, and WorkspaceProfiles as in `crds/examples/profiles.yaml`.
/// The local backend runs `jupyterhub-singleuser` whatever the profile's image.
const CATALOG: &str = "\
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata:
  name: interactive
spec:
  purpose: interactive
  displayName: Interactive (CPU)
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata:
  name: ocean-pangeo
spec:
  displayName: Ocean Pangeo
  description: xarray, dask and zarr for the ocean physics group.
  kind: jupyter
  image: registry.example.org/atelier/jupyter-pangeo:2025.06
  allowedGroups: [ocean-physics]
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata:
  name: egi-notebook
spec:
  displayName: EGI notebook
  description: The notebook of the vo.example.org virtual organisation.
  kind: jupyter
  image: registry.example.org/atelier/jupyter-egi:2025.06
  allowedGroups: [vo.example.org]
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata:
  name: basic
spec:
  displayName: Basic Python
  description: Open to everyone.
  kind: jupyter
  image: registry.example.org/atelier/jupyter-basic:2025.06
";

/// The hub's `--spawn-timeout`.
const SPAWN_TIMEOUT_SECS: u64 = 60;
/// The `ok <step>` lines of a full run of `browser.mjs`.
const STEPS: usize = 18;
/// The bound on the whole browser script.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(420);

/// What the story needs, or `None` (after saying SKIPPED) when peer tests are off. With
/// `ATELIER_PEERS=1` a missing peer is a failure.
fn peers() -> Option<(PathBuf, PathBuf)> {
    let venv = peers_venv(
        "the single sign-on story in headless Chromium",
        &["jupyterhub-singleuser"],
    )?;
    Some((venv, chromium::chromium()))
}

/// The story's processes under one temporary directory; dropping it kills them all (process
/// groups, then whatever else mentions the directory), prints every log when the test failed.
struct World {
    dir: PathBuf,
    procs: BTreeMap<String, Proc>,
    provider: Option<OidcPeer>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(provider) = &mut self.provider {
            let _ = provider.child.start_kill();
        }
        story::wind_up("browser", &self.dir, &mut self.procs, Vec::new(), 120);
    }
}

/// `atelier hub` on `127.0.0.1:<port>` (log `info`) with its database, public URL, state
/// directory and the venv's `jupyterhub-singleuser`.
fn hub_command(port: u16, db_url: &str, public: &str, state: &Path, venv: &Path) -> Command {
    let singleuser = venv.join("bin/jupyterhub-singleuser");
    launch::hub_command(
        "info",
        &launch::HubArgs {
            port,
            database_url: db_url,
            public_url: public,
            state_dir: state,
            server_command: &singleuser,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_story_in_chromium() {
    let Some((venv, chromium)) = peers() else {
        return;
    };
    let shots = output_dir("browser");
    let dir = std::env::temp_dir().join(format!("atelier-browser-{}", &generate_token()[..16]));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut world = World {
        dir: dir.clone(),
        procs: BTreeMap::new(),
        provider: None,
    };
    let (hub_port, proxy_port) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{proxy_port}");
    let hub_url = format!("http://127.0.0.1:{hub_port}");

    // The provider knows the hub by its public URL (redirect and post-logout URIs).
    let provider = start_provider(&public, free_port()).await;
    let issuer = provider.issuer.clone();
    world.provider = Some(provider);

    let secret = dir.join("oidc.secret");
    std::fs::write(&secret, format!("{}\n", common::oidc::CLIENT_SECRET)).unwrap();
    let oidc_config = dir.join("oidc.yaml");
    std::fs::write(
        &oidc_config,
        format!(
            "providers:\n  - name: test\n    display_name: Test IdP\n    issuer: {issuer}\n    \
             client_id: {CLIENT_ID}\n    client_secret_file: {}\n    \
             admin_groups: [ocean-physics]\n    allowed_groups: [ocean-physics, vo.example.org]\n",
            secret.display()
        ),
    )
    .unwrap();
    let catalog = dir.join("catalog.yaml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let db_url = format!("sqlite://{}", dir.join("atelier.sqlite").display());

    let mut hub = hub_command(hub_port, &db_url, &public, &dir.join("state"), &venv);
    hub.arg(format!("--spawn-timeout={SPAWN_TIMEOUT_SECS}"))
        .arg(format!("--oidc-config={}", oidc_config.display()))
        .arg(format!("--catalog={}", catalog.display()));
    let url = format!("{hub_url}/hub/api/");
    launch::start_group(&mut world.procs, &dir, "hub", hub, &url).await;

    let proxy = launch::start_proxy(&dir, proxy_port, &db_url, &hub_url).await;
    world.procs.insert("proxy".into(), proxy);

    // The script, its output shown line by line as it runs.
    let mut node = Command::new("node");
    node.arg("browser.mjs")
        .env("ATELIER_URL", &public)
        .env("HUB_URL", &hub_url)
        .env("OIDC_ISSUER", &issuer)
        .env("SCREENSHOT_DIR", &shots)
        .env("USER_A", USER_A)
        .env("USER_B", USER_B)
        .env("PROFILES_A", format!("{PROFILE_A},{PROFILE_ALL}"))
        .env("PROFILES_B", format!("{PROFILE_B},{PROFILE_ALL}"))
        .env("CHROMIUM", &chromium);
    let script = Script::spawn("browser", node, &dir, &mut world.procs);
    let deadline = Deadline::new("the browser script to finish", SCRIPT_TIMEOUT);
    let (status, lines) = script.finish(&mut world.procs, &deadline).await;
    assert_passed("the browser script", status, &lines);
    // Every step ran: none skipped (the catalogue gives alice and bob different profiles).
    let skipped: Vec<&String> = lines.iter().filter(|l| l.starts_with("skip ")).collect();
    assert!(skipped.is_empty(), "steps skipped: {skipped:?}");
    let oks = lines.iter().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(oks, STEPS, "steps passed: {lines:?}");

    for name in ["login.png", "spawn.png", "home.png", "admin.png", "lab.png"] {
        let path = shots.join(name);
        assert!(
            is_png(&path, 2_000),
            "{} is not a PNG screenshot",
            path.display()
        );
    }
    say(format!("browser: screenshots in {}", shots.display()));

    // What the browser did, as the processes show it: alice's one server runs (with her
    // profile's environment), bob's refused start left nothing.
    let dir_str = dir.to_string_lossy().into_owned();
    let alice = singleusers(&dir_str, USER_A);
    assert_eq!(alice.len(), 1, "alice's server processes: {alice:?}");
    assert!(singleusers(&dir_str, USER_B).is_empty());
}

// ---- the same-origin attack -------------------------------------------------------------------

/// Bob's page: its script fetches the hub's home page with the visitor's cookies, reads the
/// `_xsrf` of its forms and sends `PATCH /hub/api/users/bob {"admin": true}` with it (the hub's
/// origin in `?hub=`, empty for its own origin), then writes what it got into `#out`.
const ATTACK_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>bob's page</title></head>
<body><p>Nothing to see here.</p><pre id="out"></pre>
<script>
(async () => {
  const hub = new URLSearchParams(location.search).get('hub') || '';
  const out = { page: location.origin };
  try {
    const r = await fetch(hub + '/hub/home', { credentials: 'include' });
    const text = await r.text();
    out.home = { status: r.status, url: r.url };
    const m = text.match(/name="_xsrf" value="([^"]*)"/);
    out.xsrf = m ? m[1] : null;
  } catch (e) { out.homeError = String(e); }
  try {
    const headers = { 'Content-Type': 'application/json' };
    if (out.xsrf) headers['X-XSRFToken'] = out.xsrf;
    const p = await fetch(hub + '/hub/api/users/bob', {
      method: 'PATCH', credentials: 'include', headers, body: JSON.stringify({ admin: true }),
    });
    out.patch = { status: p.status };
  } catch (e) { out.patchError = String(e); }
  document.getElementById('out').textContent = JSON.stringify(out);
})();
</script></body></html>
"#;

/// What bob writes in his home before his server starts: JupyterLab serves `~/www` among its
/// static files, at `/user/bob/static/` (a static file has no sandbox CSP, unlike `/files/`).
fn plant_bobs_page(state: &Path) {
    let home = state.join("users").join(USER_B);
    std::fs::create_dir_all(home.join(".jupyter")).unwrap();
    std::fs::create_dir_all(home.join("www")).unwrap();
    std::fs::write(
        home.join(".jupyter/jupyter_server_config.py"),
        "import os\nc.ServerApp.extra_static_paths = [os.path.expanduser('~/www')]\n",
    )
    .unwrap();
    std::fs::write(home.join("www/attack.html"), ATTACK_PAGE).unwrap();
}

/// The attack of issue 9 in one mode: hub and proxy (dev login, admin `root`, the local backend
/// with the real `jupyterhub-singleuser`), `e2e/browser/attack.mjs` in Chromium, then the hub's
/// API says whether bob became an admin. Returns the page script's result.
async fn attack_story(venv: &Path, chromium: &Path, user_domain: bool) -> serde_json::Value {
    const DOMAIN: &str = "users.example.test";
    let mode = if user_domain { "user-domain" } else { "path" };
    // Its own directory: the story's, emptied, may be in use at the same time.
    let shots = output_dir(&format!("browser-attack-{mode}"));
    let dir = std::env::temp_dir().join(format!("atelier-attack-{}", &generate_token()[..16]));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut world = World {
        dir: dir.clone(),
        procs: BTreeMap::new(),
        provider: None,
    };
    let (hub_port, proxy_port) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{proxy_port}");
    let hub_url = format!("http://127.0.0.1:{hub_port}");
    let db_url = format!("sqlite://{}", dir.join("atelier.sqlite").display());
    let state = dir.join("state");
    plant_bobs_page(&state);

    let mut hub = hub_command(hub_port, &db_url, &public, &state, venv);
    hub.arg(format!("--spawn-timeout={SPAWN_TIMEOUT_SECS}"))
        .arg("--dev-login")
        .arg("--admin-user=root");
    let mut proxy = launch::command("proxy", "info");
    proxy
        .arg(format!("--bind=127.0.0.1:{proxy_port}"))
        .arg(format!("--database-url={db_url}"))
        .arg(format!("--default-target={hub_url}"))
        .arg("--refresh-ms=250");
    if user_domain {
        hub.arg(format!("--user-domain={DOMAIN}"));
        proxy
            .arg(format!("--user-domain={DOMAIN}"))
            .arg(format!("--public-url={public}"));
    }
    let url = format!("{hub_url}/hub/api/");
    launch::start_group(&mut world.procs, &dir, "hub", hub, &url).await;
    let url = format!("{public}/_atelier/proxy/health");
    launch::start_group(&mut world.procs, &dir, "proxy", proxy, &url).await;
    let hub_log = world.procs["hub"].log();
    let password = hub_log
        .lines()
        .find_map(|l| {
            l.split_once("(this start only): ")
                .map(|(_, p)| p.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no admin password in the hub's log:\n{hub_log}"));

    let attack_url = if user_domain {
        format!(
            "http://{USER_B}.{DOMAIN}:{proxy_port}/user/{USER_B}/static/attack.html?hub={public}"
        )
    } else {
        format!("{public}/user/{USER_B}/static/attack.html")
    };
    let mut node = Command::new("node");
    node.arg("attack.mjs")
        .env("ATELIER_URL", &public)
        .env("ATTACK_URL", &attack_url)
        .env("ADMIN_USER", "root")
        .env("ADMIN_PASSWORD", &password)
        .env("USER_B", USER_B)
        .env(
            "HOST_RULES",
            if user_domain {
                format!("MAP *.{DOMAIN} 127.0.0.1")
            } else {
                String::new()
            },
        )
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", chromium);
    let script = Script::spawn("attack", node, &dir, &mut world.procs);
    let deadline = Deadline::new("the attack script to finish", SCRIPT_TIMEOUT);
    let (status, lines) = script.finish(&mut world.procs, &deadline).await;
    assert_passed(&format!("{mode}: the attack script"), status, &lines);
    let result: serde_json::Value = lines
        .iter()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).expect("the RESULT line is JSON"))
        .expect("a RESULT line");

    // Through the API, with a token of the admin's: bob is not an admin.
    let store = atelier::store::Store::connect(&db_url).await.unwrap();
    let root = store.get_user("root").await.unwrap();
    let (token, _) = store
        .create_token(&atelier::store::NewToken::new(
            atelier::store::TokenOwner::User(root.id),
            vec!["read:users".to_owned()],
        ))
        .await
        .unwrap();
    store.close().await;
    let bob = http_json(&format!("{hub_url}/hub/api/users/{USER_B}"), &token).await;
    assert_eq!(
        bob["admin"],
        serde_json::Value::Bool(false),
        "{mode}: bob became an admin; the page's script got {result}"
    );
    say(format!("attack ({mode}): {result}"));
    result
}

/// GET `url` with `Authorization: token <token>`, as JSON.
async fn http_json(url: &str, token: &str) -> serde_json::Value {
    use http_body_util::{BodyExt as _, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<hyper::body::Bytes>>();
    let req = http::Request::get(url)
        .header("authorization", format!("token {token}"))
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.expect("the hub answers");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "GET {url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

/// Issue 9's same-origin attack fails in both modes: bob's page, opened by the admin, cannot read
/// the hub's `_xsrf` nor make bob an admin. In path mode the page shares the hub's origin and the
/// admin's cookie goes with its requests: the fetch-metadata rule refuses them (the home page is
/// served as to someone not logged in, the PATCH is 403). With `--user-domain` the page is on
/// bob's host: the browser sends the hub no cookie for it and lets the script read nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_page_cannot_make_him_admin_in_chromium() {
    let Some((venv, chromium)) = peers() else {
        return;
    };
    let path = attack_story(&venv, &chromium, false).await;
    assert_eq!(path["xsrf"], serde_json::Value::Null, "path mode: {path}");
    assert_eq!(path["patch"]["status"], 403, "path mode: {path}");
    assert!(
        path["home"]["url"]
            .as_str()
            .is_some_and(|u| u.contains("/hub/login")),
        "path mode: the hub's home was served to the script: {path}"
    );

    let domain = attack_story(&venv, &chromium, true).await;
    assert_eq!(
        domain["xsrf"],
        serde_json::Value::Null,
        "user-domain mode: {domain}"
    );
    assert!(
        domain["page"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("http://{USER_B}.users.example.test:"))),
        "user-domain mode: bob's page was not on his host: {domain}"
    );
    // Cross-origin without CORS: neither request gives the script anything.
    assert!(
        domain["homeError"].is_string(),
        "user-domain mode: {domain}"
    );
    assert!(
        domain["patchError"].is_string(),
        "user-domain mode: {domain}"
    );
}
