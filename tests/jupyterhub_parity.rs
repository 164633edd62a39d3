//! Parity with JupyterHub 6.1.1, checked against the real thing from the peers venv
//! (`$ATELIER_PEERS_VENV`, gated by `ATELIER_PEERS=1`):
//!
//! - `scope_table_matches_jupyterhub`: every scope of `jupyterhub.scopes.scope_definitions`
//!   expands to the same names in `atelier::scopes` (none missing, none extra), `self` expands
//!   alike, and the built-in roles hold `jupyterhub.roles.get_default_roles()`'s scopes.
//! - `rest_answers_match_jupyterhub`: a JupyterHub 6.1.1 (SQLite in a temporary directory, the
//!   dummy authenticator, a spawner whose servers are up at once, no proxy) and Atelier's hub,
//!   configured alike (users, admin, group, services, roles), get the same scripted requests
//!   with tokens of each kind. Status codes and JSON shapes (keys and value types; and the
//!   values of the identity keys: kind, name, admin, roles, groups, users, scopes) must match,
//!   but for the differences of [`ALLOWED`], each with its reason. It prints the counts.
//!
//! `ATELIER_PEERS=1 ATELIER_PEERS_VENV=.peers/venv cargo test --test jupyterhub_parity`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use atelier::hub::api::hub::probe_python;
use atelier::hub::serve::register_services;
use atelier::hub::{HubConfig, ServiceConfig};
use atelier::scopes::{self, DEFAULT_ROLES, Role, Roles, ScopeSet};
use atelier::store::tokens::generate_token;
use atelier::store::{NewToken, Store, TokenOwner};
use serde_json::{Value, json};

mod common;

use common::hub::{Resp, Served, TestBackend, bind, peers_venv};
use common::{TestDb, say};

// ---- the scope table ------------------------------------------------------------------------

/// What the installed `jupyterhub` says of its scopes and default roles, as JSON.
const SCOPE_TABLE_PY: &str = r#"
import json
from jupyterhub.scopes import scope_definitions, _expand_scope, _expand_self_scope
from jupyterhub.roles import get_default_roles
print(json.dumps({
    "expansions": {name: sorted(_expand_scope(name)) for name in scope_definitions},
    "self": sorted(_expand_self_scope("someone")),
    "roles": {r["name"]: r["scopes"] for r in get_default_roles()},
}))
"#;

#[test]
fn scope_table_matches_jupyterhub() {
    let Some(venv) = peers_venv("JupyterHub's scope table", &["python"]) else {
        return;
    };
    let out = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", SCOPE_TABLE_PY])
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let theirs: BTreeMap<String, BTreeSet<String>> =
        serde_json::from_value(table["expansions"].clone()).unwrap();
    // Atelier's extension scopes (batch jobs) are left out: JupyterHub has none of them.
    let ours: BTreeMap<String, BTreeSet<String>> = scopes::names()
        .filter(|n| !scopes::is_extension(n))
        .map(|n| {
            let expansion = scopes::expansion(n)
                .into_iter()
                .map(str::to_owned)
                .collect();
            (n.to_owned(), expansion)
        })
        .collect();
    let missing: Vec<&String> = theirs.keys().filter(|n| !ours.contains_key(*n)).collect();
    let extra: Vec<&String> = ours.keys().filter(|n| !theirs.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "scopes missing from Atelier: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "scopes JupyterHub does not know: {extra:?}"
    );
    let mut differ = Vec::new();
    for (name, expansion) in &theirs {
        if &ours[name] != expansion {
            differ.push(format!(
                "{name}: JupyterHub {expansion:?}, Atelier {:?}",
                ours[name]
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "expansions differ:\n{}",
        differ.join("\n")
    );

    let theirs_self: BTreeSet<String> = serde_json::from_value(table["self"].clone()).unwrap();
    let ours_self: BTreeSet<String> = ScopeSet::for_user("someone", false)
        .expanded()
        .iter()
        .filter(|s| !scopes::is_extension(s))
        .cloned()
        .collect();
    assert_eq!(ours_self, theirs_self, "self");

    let theirs_roles: BTreeMap<String, BTreeSet<String>> =
        serde_json::from_value(table["roles"].clone()).unwrap();
    let ours_roles: BTreeMap<String, BTreeSet<String>> = DEFAULT_ROLES
        .iter()
        .map(|(name, _, scopes)| {
            let scopes = scopes
                .iter()
                .filter(|s| !scopes::is_extension(s))
                .map(|s| (*s).to_owned())
                .collect();
            ((*name).to_owned(), scopes)
        })
        .collect();
    assert_eq!(ours_roles, theirs_roles, "default roles");
    say(format!(
        "scope table: {} scopes and {} default roles as JupyterHub 6.1.1's",
        theirs.len(),
        theirs_roles.len()
    ));
}

// ---- the REST API ---------------------------------------------------------------------------

/// Intended differences: (step name prefix or `*` for every step, a fragment of the difference
/// (its JSON path, or `status`), reason).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "GET /info as root",
        ".atelier_version: extra here",
        "Atelier adds its own version to /info",
    ),
    (
        "GET /users/bob/shared as bob",
        "status: JupyterHub 200",
        "sharing (JupyterHub 5's /shares and /users/{name}/shared) is not offered: 404",
    ),
    (
        "*",
        ".state.",
        "a server's `state` is its spawner's own (JupyterHub's Spawner.get_state(), Atelier's \
         backend handle): its keys are the backend's",
    ),
];

/// The reason a difference of `step` is allowed, if it is.
fn allowed(step: &str, diff: &str) -> Option<&'static str> {
    ALLOWED
        .iter()
        .find(|(name, fragment, _)| {
            (*name == "*" || step.starts_with(name)) && diff.contains(fragment)
        })
        .map(|(_, _, reason)| *reason)
}

/// The hub's configuration, the same on both sides.
const USERS: &[&str] = &["root", "bob", "erin"];

/// JupyterHub's configuration: the dummy authenticator, a spawner whose servers are up at once
/// (a tiny HTTP server in the hub's process answers for all of them), a proxy that is not
/// started and ignores routes, SQLite in the working directory.
fn jupyterhub_config(hub_port: u16, proxy_port: u16, tokens: &BTreeMap<&str, String>) -> String {
    let user_tokens: Vec<String> = USERS
        .iter()
        .map(|u| format!("{:?}: {:?}", tokens[u], u))
        .collect();
    format!(
        r#"
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from jupyterhub.spawner import Spawner
from jupyterhub.proxy import Proxy


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


_server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
threading.Thread(target=_server.serve_forever, daemon=True).start()
_URL = "http://127.0.0.1:%d" % _server.server_address[1]


class InstantSpawner(Spawner):
    _running = False

    async def start(self):
        self._running = True
        # The server's own token, for `server_tokens_match_jupyterhub`.
        with open(f"server-token-{{self.user.name}}-{{self.name}}", "w") as f:
            f.write(self.api_token)
        return _URL

    async def poll(self):
        return None if self._running else 0

    async def stop(self):
        self._running = False

    def get_state(self):
        return {{"running": self._running}}

    def load_state(self, state):
        super().load_state(state)
        self._running = state.get("running", False)


class NoProxy(Proxy):
    should_start = False

    async def add_route(self, routespec, target, data):
        pass

    async def delete_route(self, routespec):
        pass

    async def get_all_routes(self):
        return {{}}


c.JupyterHub.spawner_class = InstantSpawner
c.JupyterHub.proxy_class = NoProxy
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"root"}}
c.Authenticator.allowed_users = {{"bob", "erin"}}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "cookie_secret"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.api_tokens = {{{user_tokens}}}
c.JupyterHub.services = [
    {{"name": "culler", "api_token": {culler:?}}},
    {{"name": "dask-gateway", "api_token": {dask:?}}},
]
c.JupyterHub.load_groups = {{"ocean": {{"users": ["erin"], "properties": {{}}}}}}
c.JupyterHub.load_roles = {roles}
"#,
        user_tokens = user_tokens.join(", "),
        culler = tokens["culler"],
        dask = tokens["dask-gateway"],
        roles = serde_json::to_string(&roles_json()).unwrap(),
    )
}

/// The configured roles, as JupyterHub's `load_roles` (JSON is Python here).
fn roles_json() -> Value {
    json!([
        {
            "name": "culler-role",
            "description": "the idle culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["culler"],
        },
        {
            "name": "dask-users",
            "description": "use dask-gateway",
            "scopes": ["access:services!service=dask-gateway"],
            "groups": ["ocean"],
        },
        // As a hub running dask-gateway gives the servers' tokens its access scope.
        {
            "name": "server",
            "scopes": [
                "users:activity!user",
                "access:servers!server",
                "access:services!service=dask-gateway",
            ],
        },
    ])
}

/// A JupyterHub process and its directory, both gone when dropped.
struct JupyterHub {
    child: tokio::process::Child,
    dir: PathBuf,
    base: String,
}

impl Drop for JupyterHub {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port of 127.0.0.1 (bound, then released for JupyterHub to bind).
async fn free_port() -> u16 {
    bind().await.local_addr().unwrap().port()
}

async fn start_jupyterhub(venv: &Path, tokens: &BTreeMap<&str, String>) -> JupyterHub {
    let dir = std::env::temp_dir().join(format!("atelier-jh-parity-{}", &generate_token()[..12]));
    std::fs::create_dir_all(&dir).unwrap();
    let hub_port = free_port().await;
    let proxy_port = free_port().await;
    std::fs::write(
        dir.join("jupyterhub_config.py"),
        jupyterhub_config(hub_port, proxy_port, tokens),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("jupyterhub.log")).unwrap();
    let child = tokio::process::Command::new(venv.join("bin/jupyterhub"))
        .args(["-f", "jupyterhub_config.py"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start jupyterhub");
    JupyterHub {
        child,
        dir,
        base: format!("http://127.0.0.1:{hub_port}"),
    }
}

/// Waits (bounded) until JupyterHub answers `GET /hub/api/`.
async fn wait_up(jh: &mut JupyterHub, client: &Served) {
    for _ in 0..600 {
        if let Some(status) = jh.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(jh.dir.join("jupyterhub.log")).unwrap_or_default();
            panic!("jupyterhub exited ({status}):\n{log}");
        }
        let url = format!("{}/hub/api/", jh.base);
        let req = http::Request::builder()
            .uri(&url)
            .body(http_body_util::Full::new(hyper::body::Bytes::new()))
            .unwrap();
        if let Ok(resp) = client.client.request(req).await
            && resp.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(jh.dir.join("jupyterhub.log")).unwrap_or_default();
    panic!("jupyterhub did not answer within a minute:\n{log}");
}

/// Atelier's hub, configured as [`jupyterhub_config`]: users, admin, group, services, roles,
/// and the users' tokens (which inherit their owner's scopes, as JupyterHub's `api_tokens`).
async fn start_atelier(venv: &Path, tokens: &BTreeMap<&str, String>, db: &TestDb) -> Served {
    let store = Store::connect(db.url()).await.expect("connect");
    let services: Vec<ServiceConfig> = ["culler", "dask-gateway"]
        .iter()
        .map(|name| ServiceConfig {
            name: (*name).to_owned(),
            token: tokens[name].clone(),
            scopes: Vec::new(),
            url: None,
        })
        .collect();
    register_services(&store, &services).await.unwrap();
    let roles: Vec<Role> = serde_json::from_value(roles_json()).unwrap();
    let roles = Roles::new(roles).unwrap();
    store.create_group("ocean", &json!({})).await.unwrap();
    for name in USERS {
        let user = store.create_user(name, *name == "root").await.unwrap();
        if *name == "erin" {
            store
                .add_group_members("ocean", &["erin".to_owned()])
                .await
                .unwrap();
        }
        let groups: BTreeSet<String> = store
            .user_groups(user.id)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let inherit = roles.user_raw_scopes(name, user.admin, &groups);
        store
            .create_token_with_value(
                &tokens[name],
                &NewToken::new(TokenOwner::User(user.id), inherit),
            )
            .await
            .unwrap();
    }
    let python =
        probe_python(&[venv.join("bin/jupyterhub-singleuser").display().to_string()]).await;
    assert!(python.is_some(), "the venv's python answers");
    Served::start(store, TestBackend::new(), move |base| {
        let mut config = HubConfig::new(base, &format!("{base}/hub/api"));
        config.admin_users = vec!["root".into()];
        config.services = services;
        config.roles = roles;
        config.server_python = python;
        config
    })
    .await
}

/// One scripted request: a name, method, path under `/hub/api`, who calls (a key of the
/// tokens, or "" for nobody), a body, and the key to save the `token` of the answer under.
struct Step {
    name: String,
    method: &'static str,
    path: String,
    who: &'static str,
    body: Option<String>,
    accept: Option<&'static str>,
    save: Option<&'static str>,
    /// Only the status is compared (an event stream, or a list whose entries differ by design).
    status_only: bool,
}

fn step(method: &'static str, path: &str, who: &'static str) -> Step {
    Step {
        name: format!(
            "{method} {path} as {}",
            if who.is_empty() { "nobody" } else { who }
        ),
        method,
        path: path.to_owned(),
        who,
        body: None,
        accept: None,
        save: None,
        status_only: false,
    }
}

impl Step {
    fn body(mut self, body: Value) -> Step {
        self.name = format!("{} {body}", self.name);
        self.body = Some(body.to_string());
        self
    }

    fn raw_body(mut self, body: &str) -> Step {
        self.name = format!("{} {body}", self.name);
        self.body = Some(body.to_owned());
        self
    }

    fn paginated(mut self) -> Step {
        self.name = format!("{} (paginated)", self.name);
        self.accept = Some("application/jupyterhub-pagination+json");
        self
    }

    fn save(mut self, key: &'static str) -> Step {
        self.save = Some(key);
        self
    }

    fn status_only(mut self) -> Step {
        self.status_only = true;
        self
    }
}

/// The requests both hubs get, in order.
fn script() -> Vec<Step> {
    let mut s = vec![
        step("GET", "/", ""),
        step("GET", "/info", "root"),
        step("GET", "/info", "bob"),
        step("GET", "/info", ""),
        step("GET", "/info", "bogus"),
    ];
    for who in ["root", "bob", "erin", "culler", "dask-gateway"] {
        s.push(step("GET", "/user", who));
    }
    s.extend([
        step("GET", "/user", ""),
        // What dask-gateway's JupyterHubAuthenticator sends for a token the hub does not know.
        step("GET", "/user", "bogus"),
        step("GET", "/users", "root"),
        step("GET", "/users", "root").paginated(),
        step("GET", "/users?limit=1000&offset=1&sort=name", "root").paginated(),
        step("GET", "/users?limit=x", "root"),
        step("GET", "/users", "bob"),
        step("GET", "/users", "culler"),
        step("GET", "/users", "dask-gateway"),
        step("GET", "/users/bob", "root"),
        step("GET", "/users/bob", "bob"),
        step("GET", "/users/bob", "erin"),
        step("GET", "/users/bob", "culler"),
        step("GET", "/users/erin", "root"),
        step("GET", "/users/nobody", "root"),
        step("GET", "/users/nobody", "bob"),
        step("POST", "/users/newbie", "root"),
        step("POST", "/users/newbie", "root"),
        step("POST", "/users/other", "bob"),
        step("POST", "/users", "root").body(json!({"usernames": ["n1", "n2"]})),
        step("POST", "/users", "root").body(json!({})),
        step("PATCH", "/users/newbie", "root").body(json!({"admin": false})),
        step("PATCH", "/users/newbie", "bob").body(json!({"admin": true})),
        step("DELETE", "/users/n2", "root"),
        step("DELETE", "/users/n2", "root"),
        step("DELETE", "/users/n1", "culler"),
        // Groups.
        step("GET", "/groups", "root"),
        step("GET", "/groups", "bob"),
        step("GET", "/groups/ocean", "root"),
        step("GET", "/groups/ocean", "bob"),
        step("GET", "/groups/nope", "root"),
        step("POST", "/groups/sky", "root"),
        step("POST", "/groups/sky", "root"),
        step("POST", "/groups/sky/users", "root").body(json!({"users": ["bob"]})),
        step("GET", "/users/bob", "root"),
        step("DELETE", "/groups/sky/users", "root").body(json!({"users": ["bob"]})),
        step("PUT", "/groups/sky/properties", "root").body(json!({"k": "v"})),
        step("DELETE", "/groups/sky", "root"),
        step("DELETE", "/groups/sky", "root"),
        // Services.
        step("GET", "/services", "root"),
        step("GET", "/services/culler", "root"),
        step("GET", "/services/nope", "root"),
        step("GET", "/services", "bob"),
        step("GET", "/services/culler", "culler"),
        // Servers.
        step("POST", "/users/bob/server", "bob"),
        step("GET", "/users/bob", "bob"),
        step("GET", "/users?state=active", "root"),
        step("GET", "/users?state=sleepy", "root"),
        step("POST", "/users/bob/server", "bob"),
        step("POST", "/users/bob/servers/lab", "bob"),
        step("POST", "/users/bob/servers/lab", "bob"),
        step("GET", "/users/bob?include_stopped_servers=1", "culler"),
        step("GET", "/users/bob/servers/lab/progress", "bob").status_only(),
        step("POST", "/users/erin/server", "bob"),
        step("DELETE", "/users/bob/servers/lab", "bob").body(json!({"remove": {}})),
        step("GET", "/users/bob/servers/lab/progress", "bob"),
        step("GET", "/users/bob?include_stopped_servers=1", "bob"),
        step("DELETE", "/users/bob/servers/nope", "bob"),
        // JupyterHub 6's PATCH of a stopped server.
        step("PATCH", "/users/bob/servers/lab", "bob").body(json!({"display_name": "Lab"})),
        step("PATCH", "/users/bob/servers/lab", "erin").body(json!({"display_name": "Lab"})),
        step("PATCH", "/users/bob/servers/nope", "bob").body(json!({"display_name": "x"})),
        step("DELETE", "/users/bob/server", "bob").body(json!({"remove": true})),
        // A token holding only admin:users reaches no server.
        step("POST", "/users/root/tokens", "root")
            .body(json!({"scopes": ["admin:users"]}))
            .save("useradmin"),
        step("POST", "/users/erin/server", "useradmin"),
        step("DELETE", "/users/bob/server", "useradmin"),
        step("GET", "/users/bob", "useradmin"),
        step("DELETE", "/users/bob/server", "root"),
        // Tokens.
        step("GET", "/users/bob/tokens", "bob"),
        step("POST", "/users/bob/tokens", "bob")
            .body(json!({"note": "mine"}))
            .save("bobs"),
        step("GET", "/user", "bobs"),
        step("GET", "/users/bob/tokens/{bobs}", "bob"),
        step("GET", "/users/bob/tokens/{bobs}", "erin"),
        step("DELETE", "/users/bob/tokens/{bobs}", "bob"),
        step("GET", "/user", "bobs"),
        step("GET", "/users/bob/tokens/{bobs}", "bob"),
        step("DELETE", "/users/bob/tokens/{bobs}", "bob"),
        step("POST", "/users/bob/tokens", "bob")
            .body(json!({"roles": ["user"], "scopes": ["read:users!user=bob"]})),
        step("POST", "/users/bob/tokens", "bob").body(json!({"scopes": ["admin:users"]})),
        step("POST", "/users/bob/tokens", "bob").body(json!({"scopes": ["nonsense"]})),
        step("POST", "/users/bob/tokens", "bob").body(json!({"roles": ["nope"]})),
        step("POST", "/users/bob/tokens", "bob").raw_body("{not json"),
        step("POST", "/users/bob/tokens", "bob").body(json!({"roles": ["user"]})),
        step("POST", "/users/bob/tokens", "root")
            .body(json!({"scopes": ["read:users!user=bob"], "expires_in": 3600}))
            .save("restricted"),
        step("GET", "/user", "restricted"),
        step("GET", "/users/bob", "restricted"),
        step("GET", "/users/erin", "restricted"),
        step("GET", "/users/bob/tokens", "restricted"),
        step("POST", "/users/bob/server", "restricted"),
        step("GET", "/users/bob/tokens/a999999", "bob"),
        step("POST", "/users/erin/tokens", "bob"),
        step("GET", "/users/erin/tokens", "root"),
        // Roles: erin holds dask-users through group ocean.
        step("POST", "/users/erin/tokens", "erin")
            .body(json!({"scopes": ["access:services!service=dask-gateway"]}))
            .save("erin-dask"),
        step("GET", "/user", "erin-dask"),
        step("POST", "/users/bob/tokens", "bob")
            .body(json!({"scopes": ["access:services!service=dask-gateway"]})),
        // Activity.
        step("POST", "/users/bob/activity", "bob")
            .body(json!({"last_activity": "2026-01-01T00:00:00Z", "servers": {}})),
        step("POST", "/users/bob/activity", "bob").body(json!({"last_activity": "yesterday"})),
        step("POST", "/users/erin/activity", "bob")
            .body(json!({"last_activity": "2026-01-01T00:00:00Z"})),
        // The proxy's routes: none in JupyterHub (its proxy is not started), the database's
        // here.
        step("GET", "/proxy", "root").status_only(),
        step("POST", "/proxy", "root").status_only(),
        // Sharing (JupyterHub 5's `/shares`) is not offered.
        step("GET", "/users/bob/shared", "bob"),
        step("GET", "/proxy", "bob"),
        // Unknown paths and methods.
        step("GET", "/nothing", "root"),
        step("POST", "/shutdown", "bob"),
    ]);
    s
}

/// A JSON value's type, for shape comparison.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Keys whose values are compared, not only their types (as sets for lists). `python` and
/// `sys_executable` of `/info`: both hubs report the venv's Python here (JupyterHub its own
/// process's, Atelier its servers').
const VALUE_KEYS: &[&str] = &[
    "kind",
    "name",
    "admin",
    "roles",
    "groups",
    "users",
    "scopes",
    "python",
    "sys_executable",
];

/// The differences between JupyterHub's value `theirs` and Atelier's `ours` at `path`.
fn compare(path: &str, theirs: &Value, ours: &Value, out: &mut Vec<String>) {
    let key = path.rsplit('.').next().unwrap_or("");
    if VALUE_KEYS.contains(&key) {
        let set = |v: &Value| -> Value {
            match v {
                Value::Array(items) => {
                    // Atelier's extension scopes (batch jobs) are not JupyterHub's.
                    let mut items: Vec<String> = items
                        .iter()
                        .filter(|i| {
                            !(key == "scopes" && i.as_str().is_some_and(scopes::is_extension))
                        })
                        .map(Value::to_string)
                        .collect();
                    items.sort();
                    json!(items)
                }
                other => other.clone(),
            }
        };
        if set(theirs) != set(ours) {
            out.push(format!("{path}: JupyterHub {theirs}, Atelier {ours}"));
        }
        return;
    }
    match (theirs, ours) {
        // A nullable field may be null on one side (a timestamp not yet set, a URL without a
        // public URL): its type is compared where both have a value.
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => compare(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: missing here ({})", kind(v))),
                }
            }
            for (k, w) in b {
                if !a.contains_key(k) {
                    out.push(format!("{path}.{k}: extra here ({})", kind(w)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.is_empty() != b.is_empty() {
                out.push(format!("{path}: {} items there, {} here", a.len(), b.len()));
            } else if let (Some(x), Some(y)) = (a.first(), b.first()) {
                compare(&format!("{path}[0]"), x, y, out);
            }
        }
        (a, b) if kind(a) != kind(b) => {
            out.push(format!("{path}: {} there, {} here", kind(a), kind(b)));
        }
        _ => {}
    }
}

/// The body as JSON: `None` for an empty body, a string for one that is not JSON.
fn body_json(resp: &Resp) -> Option<Value> {
    if resp.body.trim().is_empty() {
        return None;
    }
    Some(serde_json::from_str(&resp.body).unwrap_or_else(|_| Value::String(resp.body.clone())))
}

async fn send(client: &Served, base: &str, step: &Step, tokens: &BTreeMap<String, String>) -> Resp {
    let mut headers: Vec<(&str, String)> = vec![("content-type", "application/json".into())];
    if step.who == "bogus" {
        headers.push(("authorization", "token not-a-token".into()));
    } else if !step.who.is_empty() {
        let token = tokens
            .get(step.who)
            .unwrap_or_else(|| panic!("{}: no token {}", step.name, step.who));
        headers.push(("authorization", format!("token {token}")));
    }
    if let Some(accept) = step.accept {
        headers.push(("accept", accept.into()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // `{key}` in a path: the id of the token saved under `key` (the hubs number tokens alike
    // only by chance).
    let mut path = step.path.clone();
    for (key, value) in tokens {
        if let Some(id) = key.strip_suffix(".id") {
            path = path.replace(&format!("{{{id}}}"), value);
        }
    }
    let url = format!("{base}/hub/api{path}");
    let method = step.method;
    if step.status_only && method == "GET" && step.path.ends_with("/progress") {
        // An event stream of a running server: its head, then the first event.
        return send_stream(client, &url, &headers).await;
    }
    client
        .request(
            method,
            &url,
            &headers,
            step.body.clone().unwrap_or_default(),
        )
        .await
}

/// A GET whose answer may be an endless event stream: the status and headers only.
async fn send_stream(client: &Served, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = http::Request::builder().uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
        .unwrap();
    let resp = client.client.request(req).await.expect("response");
    Resp {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_match_jupyterhub() {
    let Some(venv) = peers_venv(
        "JupyterHub 6.1.1 parity",
        &["jupyterhub", "jupyterhub-singleuser", "python"],
    ) else {
        return;
    };
    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
    for key in ["root", "bob", "erin", "culler", "dask-gateway"] {
        tokens.insert(key, generate_token());
    }
    let db = TestDb::sqlite("atelier-jh-parity");
    let atelier = start_atelier(&venv, &tokens, &db).await;
    let mut jh = start_jupyterhub(&venv, &tokens).await;
    wait_up(&mut jh, &atelier).await;

    let start: BTreeMap<String, String> = tokens
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let (mut theirs_tokens, mut ours_tokens) = (start.clone(), start);
    let (mut compared, mut equal, mut allowed_steps) = (0, 0, 0);
    let mut unexpected = Vec::new();
    for step in script() {
        let theirs = send(&atelier, &jh.base, &step, &theirs_tokens).await;
        let ours = send(&atelier, &atelier.base, &step, &ours_tokens).await;
        if let Some(key) = step.save {
            // A token the answer does not hold is a difference (the status's); later steps use
            // a token that authenticates nobody.
            for (resp, saved) in [(&theirs, &mut theirs_tokens), (&ours, &mut ours_tokens)] {
                let model = serde_json::from_str::<Value>(&resp.body).unwrap_or_default();
                let field = |name: &str, missing: &str| {
                    model[name]
                        .as_str()
                        .map_or_else(|| missing.to_owned(), str::to_owned)
                };
                saved.insert(key.to_owned(), field("token", "no-token-was-created"));
                saved.insert(format!("{key}.id"), field("id", "a0"));
            }
        }
        compared += 1;
        let mut diffs = Vec::new();
        if theirs.status != ours.status {
            diffs.push(format!(
                "status: JupyterHub {} {:?}, Atelier {} {:?}",
                theirs.status, theirs.body, ours.status, ours.body
            ));
        } else if !step.status_only {
            match (body_json(&theirs), body_json(&ours)) {
                (None, None) => {}
                (Some(a), Some(b)) => compare("", &a, &b, &mut diffs),
                (a, b) => diffs.push(format!("body: JupyterHub {a:?}, Atelier {b:?}")),
            }
        }
        let unexplained: Vec<&String> = diffs
            .iter()
            .filter(|d| allowed(&step.name, d).is_none())
            .collect();
        if diffs.is_empty() {
            equal += 1;
        } else if unexplained.is_empty() {
            allowed_steps += 1;
        }
        unexpected.extend(unexplained.iter().map(|d| format!("{}: {d}", step.name)));
    }
    say(format!(
        "JupyterHub 6.1.1 parity: {compared} requests compared, {equal} equal, {allowed_steps} \
         with allowed differences only, {} unexpected",
        unexpected.len()
    ));
    assert!(
        unexpected.is_empty(),
        "answers differ from JupyterHub 6.1.1's:\n{}",
        unexpected.join("\n")
    );
    assert_eq!(compared, equal + allowed_steps);
}

/// The API token a server gets (`$JUPYTERHUB_API_TOKEN`, its kernels' token): with the `server`
/// role redefined to carry `access:services!service=dask-gateway`, erin (group ocean, holding
/// `dask-users`) gets it and bob does not; `GET /hub/api/user` with each shows the same scopes
/// on both hubs (what dask-gateway's `JupyterHubAuthenticator` checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tokens_match_jupyterhub() {
    let Some(venv) = peers_venv(
        "JupyterHub 6.1.1 parity (server tokens)",
        &["jupyterhub", "jupyterhub-singleuser", "python"],
    ) else {
        return;
    };
    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
    for key in ["root", "bob", "erin", "culler", "dask-gateway"] {
        tokens.insert(key, generate_token());
    }
    let db = TestDb::sqlite("atelier-jh-parity-server");
    let atelier = start_atelier(&venv, &tokens, &db).await;
    let mut jh = start_jupyterhub(&venv, &tokens).await;
    wait_up(&mut jh, &atelier).await;
    let root = [("authorization", format!("token {}", tokens["root"]))];
    let root: Vec<(&str, &str)> = root.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let scopes_of = |resp: &Resp| -> Vec<String> {
        assert_eq!(resp.status, 200, "{}", resp.body);
        let model: Value = serde_json::from_str(&resp.body).unwrap();
        let mut scopes: Vec<String> = serde_json::from_value(model["scopes"].clone()).unwrap();
        scopes.retain(|s| !scopes::is_extension(s));
        scopes.sort();
        scopes
    };
    for user in ["erin", "bob"] {
        let mut answers = Vec::new();
        for base in [&jh.base, &atelier.base] {
            let url = format!("{base}/hub/api/users/{user}/server");
            let r = atelier.request("POST", &url, &root, String::new()).await;
            assert!(r.status == 201 || r.status == 202, "{base}: {}", r.body);
        }
        // JupyterHub's token, as its spawner was given it; Atelier's, from the spawn request.
        let path = jh.dir.join(format!("server-token-{user}-"));
        let mut theirs = String::new();
        for _ in 0..100 {
            if let Ok(token) = std::fs::read_to_string(&path) {
                theirs = token;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !theirs.is_empty(),
            "JupyterHub started no server for {user}"
        );
        atelier
            .wait_for(user, "", atelier::store::ServerState::Running)
            .await;
        let ours = atelier.backend.request(user, "").env["JUPYTERHUB_API_TOKEN"].clone();
        for (base, token) in [(&jh.base, &theirs), (&atelier.base, &ours)] {
            let header = [("authorization", format!("token {token}"))];
            let header: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let url = format!("{base}/hub/api/user");
            answers.push(scopes_of(
                &atelier.request("GET", &url, &header, String::new()).await,
            ));
        }
        assert_eq!(
            answers[0], answers[1],
            "{user}'s server token: JupyterHub's scopes, then Atelier's"
        );
        let dask = "access:services!service=dask-gateway".to_owned();
        assert_eq!(
            answers[1].contains(&dask),
            user == "erin",
            "{user}: {:?}",
            answers[1]
        );
    }
    say("JupyterHub 6.1.1 parity: server tokens carry the same scopes");
}
