//! The JupyterHub-compatible REST API, driven over HTTP like `jupyterhub-singleuser` and
//! `jupyterhub-idle-culler` drive it: the hub's router is served on 127.0.0.1:0 and called with
//! a plain hyper client. The backend starts real (tiny) HTTP servers.
//!
//! Each story runs on SQLite (a fresh temporary file) and on PostgreSQL (a fresh database) when
//! `ATELIER_TEST_POSTGRES_URL` is set, e.g.
//! `ATELIER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test --test hub_api`.
//!
//! One more test, gated by `ATELIER_PEERS=1`, runs the real peers from `$ATELIER_PEERS_VENV`
//! (default `.peers/venv`): `jupyterhub-singleuser` started through the API by the `local`
//! backend, and `jupyterhub-idle-culler` culling it:
//! `ATELIER_PEERS=1 cargo test --test hub_api real_peers`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use atelier::backend::WorkspaceBackend;
use atelier::hub::{self, Hub, HubConfig, JUPYTERHUB_VERSION, ServiceConfig, spawner};
use atelier::scopes::{Role, Roles};
use atelier::store::tokens::generate_token;
use atelier::store::{
    AuditAction, AuditQuery, NewToken, ServerState, StartRequest, Store, TokenOwner, User, now,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

mod common;

use common::TestDb;
use common::hub::{Resp, Served, TestBackend, audit_events, bind, peers_venv};

/// This file's databases: `atelier-hub-api-*.db` files and `atelier_hub_*` PostgreSQL databases.
fn sqlite_db() -> TestDb {
    TestDb::sqlite("atelier-hub-api")
}

async fn postgres_db() -> Option<TestDb> {
    TestDb::postgres("atelier_hub", "PostgreSQL hub API tests").await
}

// ---- the hub under test and a client --------------------------------------------------------

/// The configuration of the hubs under test: public URL `http://vre.test`, a 60 s spawn
/// timeout and the `culler` service.
fn api_config(base: &str) -> HubConfig {
    let mut config = HubConfig::new("http://vre.test", &format!("{base}/hub/api"));
    config.spawn_timeout_secs = 60;
    config.services = vec![ServiceConfig {
        name: "culler".into(),
        token: String::new(),
        scopes: vec!["list:users".into(), "delete:servers".into()],
        url: None,
    }];
    // As daskhub grants its users the dask-gateway service: user erin, and group ocean.
    config.roles = Roles::new(vec![Role {
        name: "dask-users".into(),
        description: Some("use dask-gateway".into()),
        scopes: vec!["access:services!service=dask-gateway".into()],
        users: vec!["erin".into()],
        groups: vec!["ocean".into()],
        services: vec!["culler".into()],
    }])
    .expect("roles");
    config
}

impl Served {
    /// Calls `path` (or an absolute URL) with an optional token and raw body; every `/hub/api`
    /// response must carry `X-JupyterHub-Version`.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let authorization = token.map(|token| format!("token {token}"));
        let mut all: Vec<(&str, &str)> = Vec::new();
        if let Some(authorization) = &authorization {
            all.push(("authorization", authorization));
        }
        all.extend_from_slice(headers);
        let resp = self
            .request(method, path, &all, body.unwrap_or_default())
            .await;
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        if url.contains("/hub/api") {
            assert_eq!(
                resp.header("x-jupyterhub-version"),
                Some(JUPYTERHUB_VERSION),
                "{method} {path}: X-JupyterHub-Version"
            );
        }
        resp
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.raw(
            method,
            path,
            Some(token),
            body.map(|b| b.to_string()),
            &[("content-type", "application/json")],
        )
        .await
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, token, None).await
    }

    /// Sends a GET and returns once the response head arrived, with the body still streaming.
    async fn open(&self, path: &str, token: &str) -> (u16, http::HeaderMap, Incoming) {
        let req = http::Request::builder()
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("token {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = self.client.request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        (parts.status.as_u16(), parts.headers, body)
    }
}

/// The whole of a streamed body.
async fn read_all(body: Incoming) -> String {
    let bytes = body.collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A test world: one database, one backend, one hub, and some callers.
struct World {
    db: TestDb,
    store: Store,
    backend: Arc<TestBackend>,
    api: Served,
    /// Admin `root`'s token.
    admin: String,
    /// The `culler` service's token (the idle culler's scopes).
    culler: String,
}

impl World {
    async fn new(db: TestDb) -> World {
        let store = Store::connect(db.url()).await.expect("connect");
        let backend = TestBackend::new();
        let api = Served::start(store.clone(), backend.clone(), api_config).await;
        let root = store.create_user("root", true).await.unwrap();
        let admin = token_for(
            &store,
            &root,
            &[
                "self",
                "admin:users",
                "admin:servers",
                "tokens",
                "admin:groups",
                "read:hub",
                "access:servers",
            ],
        )
        .await;
        let culler = generate_token();
        store
            .create_token_with_value(
                &culler,
                &NewToken::new(
                    TokenOwner::Service("culler".into()),
                    vec![
                        "list:users".into(),
                        "read:users:activity".into(),
                        "read:servers".into(),
                        "delete:servers".into(),
                        "admin:users".into(),
                    ],
                ),
            )
            .await
            .unwrap();
        World {
            db,
            store,
            backend,
            api,
            admin,
            culler,
        }
    }

    /// A user with a token holding `self`.
    async fn user(&self, name: &str) -> (User, String) {
        let user = self.store.create_user(name, false).await.unwrap();
        let token = token_for(&self.store, &user, &["self"]).await;
        (user, token)
    }

    /// The server row.
    async fn server(&self, user: &str, server: &str) -> atelier::store::Server {
        self.store.get_server_by_names(user, server).await.unwrap()
    }

    /// Waits until the server row satisfies `f` (bounded, not a timing assertion).
    async fn wait_server(
        &self,
        user: &str,
        server: &str,
        f: impl Fn(&atelier::store::Server) -> bool,
    ) {
        for _ in 0..300 {
            if let Ok(s) = self.store.get_server_by_names(user, server).await
                && f(&s)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server {user}/{server} did not reach the expected state");
    }

    async fn close(&self) {
        self.store.close().await;
    }
}

async fn token_for(store: &Store, user: &User, scopes: &[&str]) -> String {
    store
        .create_token(&NewToken::new(
            TokenOwner::User(user.id),
            scopes.iter().map(|s| (*s).to_owned()).collect(),
        ))
        .await
        .unwrap()
        .0
}

/// One test per engine for each story: `<story>::sqlite` and `<story>::postgres`.
macro_rules! stories {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let world = super::World::new(super::sqlite_db()).await;
                super::$story(&world).await;
                world.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::postgres_db().await else { return };
                let world = super::World::new(db).await;
                super::$story(&world).await;
                world.close().await;
            }
        }
    )*};
}

stories!(
    version_and_identity,
    bad_input_is_refused,
    users_paginate_and_filter_by_state,
    culler_stops_servers,
    tokens_are_scoped,
    group_scoped_tokens,
    progress_is_streamed,
    activity_moves_forward,
    recover_adopts_live_and_stops_dead,
    two_hubs_share_one_database,
    servers_are_patched,
    jupyterhub_6_scopes,
    services_proxy_and_health,
    shutdown_stops_the_hub,
    users_filter_by_name,
    jupyterhub_611_answers,
    roles_give_scopes,
    token_cache_follows_changes,
);

/// A token of service `name` (not in the hub's configuration) holding `scopes`.
async fn service_token(w: &World, name: &str, scopes: &[&str]) -> String {
    let token = generate_token();
    w.store
        .create_token_with_value(
            &token,
            &NewToken::new(
                TokenOwner::Service(name.into()),
                scopes.iter().map(|s| (*s).to_owned()).collect(),
            ),
        )
        .await
        .unwrap();
    token
}

/// The `Accept` value of clients that page.
const PAGINATION: &str = "application/jupyterhub-pagination+json";

/// Asserts a 4xx JupyterHub error whose message names `what`.
fn assert_error(resp: &Resp, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.json()["status"], status, "{resp:?}");
    assert!(
        resp.message().contains(what),
        "message should name {what:?}: {resp:?}"
    );
}

/// Starts `user`'s server `server` through the API and waits until it is ready.
async fn start_ready(w: &World, user: &str, server: &str, token: &str) {
    let path = if server.is_empty() {
        format!("/hub/api/users/{user}/server")
    } else {
        format!("/hub/api/users/{user}/servers/{server}")
    };
    let resp = w.api.call("POST", &path, token, None).await;
    assert!(
        resp.status == 201 || resp.status == 202,
        "start {user}/{server}: {resp:?}"
    );
    w.wait_server(user, server, |s| s.state == ServerState::Running)
        .await;
}

/// The `data:` events of a server-sent event stream.
fn sse_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect()
}

// ---- stories --------------------------------------------------------------------------------

async fn version_and_identity(w: &World) {
    // The version, without credentials, on both spellings of the root.
    for path in ["/hub/api", "/hub/api/"] {
        let resp = w.api.raw("GET", path, None, None, &[]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["version"], JUPYTERHUB_VERSION);
    }
    // Errors are JupyterHub's JSON and carry the header too.
    let resp = w
        .api
        .raw("GET", "/hub/api/nothing-here", None, None, &[])
        .await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["status"], 404);
    assert_eq!(
        w.api
            .raw("GET", "/hub/api/user", None, None, &[])
            .await
            .status,
        403
    );
    // Bearer works like token.
    let resp = w
        .api
        .raw(
            "GET",
            "/hub/api/user",
            None,
            None,
            &[("authorization", &format!("Bearer {}", w.admin))],
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["name"], "root");

    let info = w.api.get("/hub/api/info", &w.admin).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["spawner"]["class"], "atelier.backend.test");

    let (_, alice) = w.user("alice").await;
    assert_eq!(w.api.get("/hub/api/info", &alice).await.status, 403);
    let me = w.api.get("/hub/api/user", &alice).await.json();
    assert_eq!(me["name"], "alice");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["admin"], false);
    let scopes: Vec<&str> = me["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(scopes.contains(&"access:servers!user=alice"), "{scopes:?}");
    assert!(me["token_id"].as_str().unwrap().starts_with('a'));

    let culler = w.api.get("/hub/api/user", &w.culler).await.json();
    assert_eq!(culler["kind"], "service");
    assert_eq!(culler["name"], "culler");

    // A server's own token: what jupyterhub-singleuser sees.
    start_ready(w, "alice", "", &alice).await;
    let request = w.backend.request("alice", "");
    let env = &request.env;
    assert_eq!(env["JUPYTERHUB_USER"], "alice");
    assert_eq!(env["JUPYTERHUB_SERVER_NAME"], "");
    assert_eq!(env["JUPYTERHUB_SERVICE_PREFIX"], "/user/alice/");
    assert_eq!(env["JUPYTERHUB_CLIENT_ID"], "jupyterhub-user-alice");
    assert_eq!(env["JUPYTERHUB_API_URL"], format!("{}/hub/api", w.api.base));
    assert_eq!(
        env["JUPYTERHUB_OAUTH_ACCESS_SCOPES"],
        r#"["access:servers!server=alice/","access:servers!user=alice"]"#
    );
    let server_token = env["JUPYTERHUB_API_TOKEN"].clone();
    assert_eq!(env["JPY_API_TOKEN"], server_token);
    let me = w.api.get("/hub/api/user", &server_token).await.json();
    assert_eq!(me["name"], "alice");
    assert_eq!(me["kind"], "user");
    assert!(
        me["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("access:servers!server=alice/")),
        "{me}"
    );
    let client = w
        .store
        .get_oauth_client("jupyterhub-user-alice")
        .await
        .unwrap();
    assert_eq!(
        client.redirect_uri,
        "http://vre.test/user/alice/oauth_callback"
    );
    assert_eq!(client.redirect_uri, env["JUPYTERHUB_OAUTH_CALLBACK_URL"]);
    w.store
        .verify_oauth_client("jupyterhub-user-alice", &server_token)
        .await
        .expect("the client secret is the server's token");
    // The server's token may post activity but not read other users.
    let (_, _bob) = w.user("bob").await;
    assert_eq!(
        w.api.get("/hub/api/users/bob", &server_token).await.status,
        404
    );
    // A second start of a running server is refused like JupyterHub does.
    let again = w
        .api
        .call("POST", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert_eq!(again.status, 400);
    assert!(again.message().contains("already running"), "{again:?}");

    // The user model.
    let model = w.api.get("/hub/api/users/alice", &alice).await.json();
    assert_eq!(model["kind"], "user");
    assert_eq!(model["server"], "/user/alice/");
    assert_eq!(model["pending"], Value::Null);
    let server = &model["servers"][""];
    assert_eq!(server["ready"], true);
    assert_eq!(server["stopped"], false);
    assert_eq!(server["url"], "/user/alice/");
    assert_eq!(
        server["progress_url"],
        "/hub/api/users/alice/server/progress"
    );
    assert!(
        server.get("state").is_none(),
        "state needs admin:server_state"
    );
    let admin_view = w.api.get("/hub/api/users/alice", &w.admin).await.json();
    assert!(admin_view["servers"][""]["state"]["port"].is_u64());
    let one = w
        .api
        .get("/hub/api/users/alice/server", &alice)
        .await
        .json();
    assert_eq!(one["name"], "");
    assert_eq!(one["ready"], true);

    // Stopping revokes the server's credentials.
    let stop = w
        .api
        .call("DELETE", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert!(stop.status == 204 || stop.status == 202, "{stop:?}");
    w.wait_server("alice", "", |s| s.state == ServerState::Stopped)
        .await;
    for _ in 0..100 {
        if w.api.get("/hub/api/user", &server_token).await.status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.api.get("/hub/api/user", &server_token).await.status, 403);
    assert!(
        w.store
            .get_oauth_client("jupyterhub-user-alice")
            .await
            .is_err()
    );
}

async fn bad_input_is_refused(w: &World) {
    let (alice_user, alice) = w.user("alice").await;
    let (_, bob) = w.user("bob").await;

    // Unknown user or server: 404.
    assert_eq!(
        w.api.get("/hub/api/users/nobody", &w.admin).await.status,
        404
    );
    assert_eq!(
        w.api
            .call("POST", "/hub/api/users/nobody/server", &w.admin, None)
            .await
            .status,
        404
    );
    assert_eq!(
        w.api
            .get("/hub/api/users/alice/servers/nope", &alice)
            .await
            .status,
        404
    );
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/users/alice/servers/nope", &alice, None)
            .await
            .status,
        404
    );
    assert_eq!(
        w.api
            .get("/hub/api/users/alice/servers/nope/progress", &alice)
            .await
            .status,
        404
    );
    assert_eq!(
        w.api
            .get("/hub/api/users/alice/tokens/a999999", &alice)
            .await
            .status,
        404
    );
    assert_eq!(
        w.api.get("/hub/api/groups/nogroup", &w.admin).await.status,
        404
    );

    // Malformed JSON and wrong types: 400 naming the field.
    let resp = w
        .api
        .raw(
            "POST",
            "/hub/api/users/alice/tokens",
            Some(&alice),
            Some("{not json".into()),
            &[],
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.message().contains("Malformed JSON"), "{resp:?}");
    for (body, field) in [
        (json!({"expires_in": "soon"}), "expires_in"),
        (json!({"scopes": "read:users"}), "scopes"),
        (json!({"note": 5}), "note"),
        (json!({"bogus": 1}), "bogus"),
    ] {
        let resp = w
            .api
            .call("POST", "/hub/api/users/alice/tokens", &alice, Some(body))
            .await;
        assert_eq!(resp.status, 400, "{resp:?}");
        assert!(resp.message().contains(field), "{field}: {resp:?}");
    }
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/server",
            &alice,
            Some(json!({"user_options": 5})),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.message().contains("user_options"), "{resp:?}");
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users",
            &w.admin,
            Some(json!({"usernames": [1]})),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.message().contains("usernames"), "{resp:?}");
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &alice,
            Some(json!({"last_activity": "yesterday"})),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.message().contains("last_activity"), "{resp:?}");

    // Missing scope: 403; a scope held on other users only: 404, also for a user that does not
    // exist (JupyterHub 6.1.1's `needs_scope`).
    for (method, path, status) in [
        ("GET", "/hub/api/users/bob", 404),
        ("POST", "/hub/api/users/bob/server", 404),
        ("DELETE", "/hub/api/users/bob/server", 404),
        ("GET", "/hub/api/users/bob/tokens", 404),
        ("POST", "/hub/api/users/bob/activity", 404),
        ("GET", "/hub/api/users/nobody", 404),
        ("POST", "/hub/api/users/carol", 403),
        ("DELETE", "/hub/api/users/bob", 403),
        ("POST", "/hub/api/groups/g", 403),
        ("GET", "/hub/api/info", 403),
    ] {
        let resp = w.api.call(method, path, &alice, Some(json!({}))).await;
        assert_eq!(resp.status, status, "{method} {path}: {resp:?}");
    }
    assert_eq!(
        w.api
            .raw(
                "GET",
                "/hub/api/users/alice",
                Some("not-a-token"),
                None,
                &[]
            )
            .await
            .status,
        403
    );

    // Names that are not names: 400.
    let long = "a".repeat(300);
    for name in ["..%2F", "a%2Fb", "a%01b", "a%0Ab", "..", long.as_str()] {
        let resp = w
            .api
            .call("POST", &format!("/hub/api/users/{name}"), &w.admin, None)
            .await;
        assert_eq!(resp.status, 400, "user {name}: {resp:?}");
        let resp = w
            .api
            .get(&format!("/hub/api/users/{name}/server"), &w.admin)
            .await;
        assert_eq!(resp.status, 400, "user {name}: {resp:?}");
        let resp = w
            .api
            .call(
                "POST",
                &format!("/hub/api/users/alice/servers/{name}"),
                &alice,
                None,
            )
            .await;
        assert_eq!(resp.status, 400, "server {name}: {resp:?}");
    }
    let resp = w
        .api
        .call("POST", "/hub/api/users/../server", &w.admin, None)
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    // Valid for the store but not for a new user or server.
    let resp = w
        .api
        .call("POST", "/hub/api/users/Carol", &w.admin, None)
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/servers/Gpu", &alice, None)
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");

    // Names colliding after normalisation are refused.
    let resp = w
        .api
        .call("POST", "/hub/api/users/carol", &w.admin, None)
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(
        w.api
            .call("POST", "/hub/api/users/carol", &w.admin, None)
            .await
            .status,
        409
    );
    let resp = w
        .api
        .call("POST", "/hub/api/users/Alice", &w.admin, None)
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    w.store.create_user("Dave", false).await.unwrap(); // a legacy name
    let resp = w
        .api
        .call("POST", "/hub/api/users/dave", &w.admin, None)
        .await;
    assert_eq!(resp.status, 409, "{resp:?}");
    w.store.create_server(alice_user.id, "GPU").await.unwrap(); // a legacy server
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/servers/gpu", &alice, None)
        .await;
    assert_eq!(resp.status, 409, "{resp:?}");
    let resp = w
        .api
        .call("PUT", "/hub/api/users/alice/servers/gpu", &alice, None)
        .await;
    assert_eq!(resp.status, 409, "{resp:?}");
    // `a-b`'s default server and `a`'s server `b` do not share an OAuth client id (as in
    // JupyterHub): both start (tests/server_names.rs).
    let (_, ab) = w.user("a-b").await;
    let (_, a) = w.user("a").await;
    start_ready(w, "a-b", "", &ab).await;
    start_ready(w, "a", "b", &a).await;

    // Another user's token on someone's server: 404 (bob holds the scopes on his own only).
    start_ready(w, "alice", "", &alice).await;
    for (method, path) in [
        ("GET", "/hub/api/users/alice/server"),
        ("POST", "/hub/api/users/alice/server"),
        ("DELETE", "/hub/api/users/alice/server"),
        ("GET", "/hub/api/users/alice/server/progress"),
    ] {
        let resp = w.api.call(method, path, &bob, None).await;
        assert_eq!(resp.status, 404, "{method} {path}: {resp:?}");
    }
    assert_eq!(w.server("alice", "").await.state, ServerState::Running);
    // Deleting yourself is refused; deleting a user stops their servers.
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/users/root", &w.admin, None)
            .await
            .status,
        400
    );
    // (400 while a server is still stopping: try again, as a client would.)
    let mut resp = w
        .api
        .call("DELETE", "/hub/api/users/alice", &w.admin, None)
        .await;
    for _ in 0..100 {
        if resp.status != 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        resp = w
            .api
            .call("DELETE", "/hub/api/users/alice", &w.admin, None)
            .await;
    }
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(
        w.api.get("/hub/api/users/alice", &w.admin).await.status,
        404
    );
    let admin_events = audit_events(&w.store, AuditAction::Admin).await;
    assert!(
        admin_events
            .iter()
            .any(|e| e.detail["action"] == "delete_user"
                && e.target_user.as_deref() == Some("alice")),
        "{admin_events:?}"
    );
}

async fn users_paginate_and_filter_by_state(w: &World) {
    for i in 0..250 {
        w.store
            .create_user(&format!("user{i:03}"), false)
            .await
            .unwrap();
    }
    let pagination = [("accept", "application/jupyterhub-pagination+json")];
    // Follow `_pagination.next.url` as the idle culler does.
    let mut url = "/hub/api/users?limit=100".to_owned();
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let resp = w
            .api
            .raw("GET", &url, Some(&w.culler), None, &pagination)
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let page = resp.json();
        assert_eq!(page["_pagination"]["total"], 251);
        assert_eq!(page["_pagination"]["limit"], 100);
        for item in page["items"].as_array().unwrap() {
            names.push(item["name"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match &page["_pagination"]["next"] {
            Value::Null => break,
            next => {
                let next_url = next["url"].as_str().unwrap();
                assert!(next_url.starts_with(&w.api.base), "absolute: {next_url}");
                assert!(next_url.contains("limit=100"), "{next_url}");
                url = next_url.to_owned();
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 251);
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 251);
    // The default page size with the pagination header, the largest page (200, JupyterHub's
    // `api_page_max_limit`) without it or when asked for more.
    let resp = w
        .api
        .raw("GET", "/hub/api/users", Some(&w.admin), None, &pagination)
        .await;
    assert_eq!(resp.json()["items"].as_array().unwrap().len(), 50);
    let all = w.api.get("/hub/api/users", &w.admin).await.json();
    assert_eq!(all.as_array().unwrap().len(), 200);
    let all = w
        .api
        .get("/hub/api/users?limit=1000", &w.admin)
        .await
        .json();
    assert_eq!(all.as_array().unwrap().len(), 200);
    let sorted = w
        .api
        .get("/hub/api/users?sort=-name&limit=1", &w.admin)
        .await
        .json();
    assert_eq!(sorted[0]["name"], "user249");
    for bad in ["limit=abc", "offset=x", "state=sleeping", "sort=age"] {
        let resp = w.api.get(&format!("/hub/api/users?{bad}"), &w.admin).await;
        assert_eq!(resp.status, 400, "{bad}: {resp:?}");
    }

    // state=ready: only users with a ready server.
    let user = w.store.get_user("user007").await.unwrap();
    let token = token_for(&w.store, &user, &["self"]).await;
    start_ready(w, "user007", "", &token).await;
    let user = w.store.get_user("user123").await.unwrap();
    let token = token_for(&w.store, &user, &["self"]).await;
    start_ready(w, "user123", "lab", &token).await;
    let resp = w
        .api
        .raw(
            "GET",
            "/hub/api/users?state=ready",
            Some(&w.culler),
            None,
            &pagination,
        )
        .await;
    let page = resp.json();
    let ready: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(ready, ["user007", "user123"]);
    assert_eq!(page["_pagination"]["total"], 2);
    let user123 = &page["items"][1];
    assert_eq!(user123["servers"]["lab"]["ready"], true);
    assert_eq!(user123["servers"]["lab"]["url"], "/user/user123/lab/");
    assert!(user123["servers"]["lab"]["started"].is_string());
    assert!(user123["servers"]["lab"]["last_activity"].is_string());
    assert_eq!(user123["servers"]["lab"]["pending"], Value::Null);
    let inactive = w
        .api
        .raw(
            "GET",
            "/hub/api/users?state=inactive&limit=1000",
            Some(&w.admin),
            None,
            &pagination,
        )
        .await
        .json();
    assert_eq!(inactive["_pagination"]["total"], 249);
    assert_eq!(inactive["items"].as_array().unwrap().len(), 200);

    // A user without list:users gets 403 (JupyterHub 6.1.1: `self` holds no list:users), as
    // does a server's token.
    assert_eq!(w.api.get("/hub/api/users", &token).await.status, 403);
    let env = w.backend.request("user123", "lab").env;
    assert_eq!(
        w.api
            .get("/hub/api/users", &env["JUPYTERHUB_API_TOKEN"])
            .await
            .status,
        403
    );
}

async fn culler_stops_servers(w: &World) {
    let (_, alice) = w.user("alice").await;
    start_ready(w, "alice", "", &alice).await;
    start_ready(w, "alice", "gpu", &alice).await;
    let url = w.server("alice", "").await.url.unwrap();

    // A slow stop: 202 while stopping, then 204.
    w.backend.hold_stops(true);
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/server", &w.culler, None)
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(w.server("alice", "").await.state, ServerState::Stopping);
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/server", &w.culler, None)
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let model = w.api.get("/hub/api/users/alice", &w.admin).await.json();
    assert_eq!(model["servers"][""]["pending"], "stop");
    assert_eq!(model["servers"][""]["ready"], false);
    assert_eq!(model["pending"], "stop");
    // A server stopping is refused a start.
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    w.backend.hold_stops(false);
    w.wait_server("alice", "", |s| s.state == ServerState::Stopped)
        .await;
    assert!(
        tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .is_err(),
        "the server process is gone"
    );
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/server", &w.culler, None)
        .await;
    assert_eq!(resp.status, 204, "{resp:?}");

    // A named server, removed once stopped.
    w.backend.hold_stops(true);
    let resp = w
        .api
        .raw(
            "DELETE",
            "/hub/api/users/alice/servers/gpu",
            Some(&w.culler),
            Some(r#"{"remove": true}"#.into()),
            &[],
        )
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    w.backend.hold_stops(false);
    for _ in 0..300 {
        if w.store.get_server_by_names("alice", "gpu").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        w.api
            .get("/hub/api/users/alice/servers/gpu", &alice)
            .await
            .status,
        404
    );
    // The default server cannot be removed; stopping a stopped one is 204.
    let resp = w
        .api
        .call(
            "DELETE",
            "/hub/api/users/alice/server",
            &w.culler,
            Some(json!({"remove": true})),
        )
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    let stops = audit_events(&w.store, AuditAction::ServerStop).await;
    assert!(stops.iter().any(|e| e.actor.as_deref() == Some("culler")));
}

async fn tokens_are_scoped(w: &World) {
    let (alice_user, alice) = w.user("alice").await;
    let (_, bob) = w.user("bob").await;
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/tokens",
            &alice,
            Some(json!({"note": "for a script", "expires_in": 3600, "scopes": ["read:users!user=alice"]})),
        )
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let created = resp.json();
    let value = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["user"], "alice");
    assert_eq!(created["note"], "for a script");
    assert!(created["expires_at"].is_string());
    assert!(
        created["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("read:users!user=alice"))
    );
    // Only hashes are stored; the listing never shows a value.
    let listed = w
        .api
        .get("/hub/api/users/alice/tokens", &alice)
        .await
        .json();
    let tokens = listed["api_tokens"].as_array().unwrap();
    assert!(tokens.iter().any(|t| t["id"] == json!(id)));
    assert!(tokens.iter().all(|t| t.get("token").is_none()));
    assert!(!listed.to_string().contains(&value));
    let one = w
        .api
        .get(&format!("/hub/api/users/alice/tokens/{id}"), &alice)
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["note"], "for a script");

    // The new token does what its scopes say and nothing more.
    assert_eq!(w.api.get("/hub/api/users/alice", &value).await.status, 200);
    assert_eq!(
        w.api
            .get("/hub/api/users/alice/tokens", &value)
            .await
            .status,
        403
    );
    assert_eq!(
        w.api
            .call("POST", "/hub/api/users/alice/server", &value, None)
            .await
            .status,
        403
    );
    // It cannot mint a broader token either.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/tokens",
            &value,
            Some(json!({"scopes": ["servers!user=alice"]})),
        )
        .await;
    assert_eq!(resp.status, 403, "{resp:?}");

    // Escalation is refused; unknown scopes are named.
    for scopes in [
        json!(["admin:users"]),
        json!(["read:users"]),
        json!(["access:servers!user=bob"]),
        json!(["servers!group=ocean"]),
    ] {
        let resp = w
            .api
            .call(
                "POST",
                "/hub/api/users/alice/tokens",
                &alice,
                Some(json!({"scopes": scopes})),
            )
            .await;
        // Beyond the owner's scopes: 400, as JupyterHub's `_check_token_scopes`.
        assert_eq!(resp.status, 400, "{scopes}: {resp:?}");
    }
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/tokens",
            &alice,
            Some(json!({"scopes": ["read:everything"]})),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.message().contains("read:everything"), "{resp:?}");
    // Another user cannot make or read alice's tokens.
    assert_eq!(
        w.api
            .call("POST", "/hub/api/users/alice/tokens", &bob, None)
            .await
            .status,
        403
    );
    assert_eq!(
        w.api
            .get(&format!("/hub/api/users/bob/tokens/{id}"), &bob)
            .await
            .status,
        404
    );
    // An admin can make one for alice, within what alice holds.
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/tokens", &w.admin, None)
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    assert!(resp.json()["note"].as_str().unwrap().contains("root"));
    let inherited = resp.json()["token"].as_str().unwrap().to_owned();
    let me = w.api.get("/hub/api/user", &inherited).await.json();
    assert_eq!(me["name"], "alice");
    assert!(
        !me["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("admin:users"))
    );

    // Revocation.
    let resp = w
        .api
        .call(
            "DELETE",
            &format!("/hub/api/users/alice/tokens/{id}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(resp.status, 204);
    assert_eq!(w.api.get("/hub/api/users/alice", &value).await.status, 403);
    assert_eq!(
        w.api
            .get(&format!("/hub/api/users/alice/tokens/{id}"), &alice)
            .await
            .status,
        404
    );
    let audit = w
        .store
        .list_audit(&AuditQuery {
            target_user: Some("alice".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(audit.iter().any(|e| e.action == AuditAction::TokenCreate));
    assert!(audit.iter().any(|e| e.action == AuditAction::TokenRevoke));
    // Expired tokens are not listed.
    let (_, expired) = w
        .store
        .create_token(&NewToken {
            expires_at: Some(now() - chrono::Duration::seconds(5)),
            ..NewToken::new(TokenOwner::User(alice_user.id), vec!["self".into()])
        })
        .await
        .unwrap();
    let listed = w
        .api
        .get("/hub/api/users/alice/tokens", &alice)
        .await
        .json();
    assert!(
        listed["api_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["id"] != json!(format!("a{}", expired.id)))
    );
}

async fn group_scoped_tokens(w: &World) {
    let (_, alice) = w.user("alice").await;
    w.user("bob").await;
    // Group management.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/groups/ocean",
            &w.admin,
            Some(json!({"users": ["alice"]})),
        )
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(resp.json()["users"], json!(["alice"]));
    assert_eq!(
        w.api
            .call("POST", "/hub/api/groups/ocean", &w.admin, None)
            .await
            .status,
        409
    );
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/groups/ocean/users",
            &w.admin,
            Some(json!({"users": ["nobody"]})),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.message().contains("nobody"));
    let resp = w
        .api
        .call(
            "PUT",
            "/hub/api/groups/ocean/properties",
            &w.admin,
            Some(json!({"quota": 3})),
        )
        .await;
    assert_eq!(resp.json()["properties"], json!({"quota": 3}));
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/groups",
            &w.admin,
            Some(json!({"groups": ["land", "air"]})),
        )
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/groups/land/users",
            &w.admin,
            Some(json!({"users": ["bob", "alice"]})),
        )
        .await;
    assert_eq!(resp.json()["users"], json!(["alice", "bob"]));
    let resp = w
        .api
        .call(
            "DELETE",
            "/hub/api/groups/land/users",
            &w.admin,
            Some(json!({"users": ["alice"]})),
        )
        .await;
    assert_eq!(resp.json()["users"], json!(["bob"]));
    let groups = w.api.get("/hub/api/groups", &w.admin).await.json();
    let names: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["air", "land", "ocean"]);
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/groups/air", &w.admin, None)
            .await
            .status,
        204
    );
    assert_eq!(w.api.get("/hub/api/groups", &alice).await.status, 403);
    let model = w.api.get("/hub/api/users/alice", &alice).await.json();
    assert_eq!(model["groups"], json!(["ocean"]));

    // A token filtered to the group `ocean`.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/root/tokens",
            &w.admin,
            Some(json!({"scopes": ["servers!group=ocean", "read:users!group=ocean", "list:users!group=ocean", "read:groups!group=ocean"]})),
        )
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let ocean = resp.json()["token"].as_str().unwrap().to_owned();
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/server", &ocean, None)
        .await;
    assert!(resp.status == 201 || resp.status == 202, "{resp:?}");
    w.wait_server("alice", "", |s| s.state == ServerState::Running)
        .await;
    assert_eq!(
        w.api
            .call("POST", "/hub/api/users/bob/server", &ocean, None)
            .await
            .status,
        404
    );
    assert_eq!(w.api.get("/hub/api/users/bob", &ocean).await.status, 404);
    assert_eq!(w.api.get("/hub/api/users/alice", &ocean).await.status, 200);
    let listed = w.api.get("/hub/api/users", &ocean).await.json();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["alice"]);
    assert_eq!(w.api.get("/hub/api/groups/ocean", &ocean).await.status, 200);
    assert_eq!(w.api.get("/hub/api/groups/land", &ocean).await.status, 404);
    // Leaving the group takes the access away.
    w.api
        .call(
            "DELETE",
            "/hub/api/groups/ocean/users",
            &w.admin,
            Some(json!({"users": ["alice"]})),
        )
        .await;
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/users/alice/server", &ocean, None)
            .await
            .status,
        404
    );
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert!(resp.status == 204 || resp.status == 202, "{resp:?}");
}

async fn progress_is_streamed(w: &World) {
    let (_, alice) = w.user("alice").await;
    // A spawn held by the backend is pending (202); its progress is streamed live.
    w.backend.hold_starts(true);
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let again = w
        .api
        .call("POST", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert_eq!(again.status, 202, "a second start while pending: {again:?}");
    let model = w.api.get("/hub/api/users/alice", &alice).await.json();
    assert_eq!(model["pending"], "spawn");
    assert_eq!(model["servers"][""]["pending"], "spawn");
    assert_eq!(model["server"], Value::Null);
    // The handler subscribes before it answers: release the spawn once the head is in.
    let (status, headers, body) = w
        .api
        .open("/hub/api/users/alice/server/progress", &alice)
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-jupyterhub-version"], JUPYTERHUB_VERSION);
    w.backend.hold_starts(false);
    let resp = Resp {
        status,
        headers,
        body: read_all(body).await,
    };
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    let events = sse_events(&resp.body);
    let messages: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "Server requested",
            "Allocating a workspace",
            "Workspace process started",
            "Server ready at /user/alice/"
        ]
    );
    let last = events.last().unwrap();
    assert_eq!(last["ready"], true);
    assert_eq!(last["progress"], 100);
    assert_eq!(last["url"], "/user/alice/");
    assert!(last["html_message"].as_str().unwrap().contains("<a href"));
    assert_eq!(events[1]["progress"], 10);

    // A ready server: one ready event.
    let resp = w
        .api
        .get("/hub/api/users/alice/server/progress", &alice)
        .await;
    let events = sse_events(&resp.body);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["ready"], true);

    // A failed spawn: the failure and its message, live or from the audit log.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/servers/gpu",
            &alice,
            Some(json!({"fail": "no GPU left"})),
        )
        .await;
    assert!(resp.status == 500 || resp.status == 202, "{resp:?}");
    w.wait_server("alice", "gpu", |s| s.state == ServerState::Failed)
        .await;
    let resp = w
        .api
        .get("/hub/api/users/alice/servers/gpu/progress", &alice)
        .await;
    let events = sse_events(&resp.body);
    let last = events.last().unwrap();
    assert_eq!(last["failed"], true);
    assert!(
        last["message"].as_str().unwrap().contains("no GPU left"),
        "{events:?}"
    );
    let model = w
        .api
        .get("/hub/api/users/alice?include_stopped_servers", &alice)
        .await
        .json();
    assert_eq!(model["servers"]["gpu"]["stopped"], true);
    assert_eq!(
        model["servers"]["gpu"]["user_options"],
        json!({"fail": "no GPU left"})
    );
    let model = w.api.get("/hub/api/users/alice", &alice).await.json();
    assert!(
        model["servers"].get("gpu").is_none(),
        "stopped servers are hidden by default"
    );
    // A failed server starts again (with new options).
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/servers/gpu",
            &alice,
            Some(json!({"user_options": {}})),
        )
        .await;
    assert!(resp.status == 201 || resp.status == 202, "{resp:?}");
    w.wait_server("alice", "gpu", |s| s.state == ServerState::Running)
        .await;

    // A stopped server has no progress (404, as JupyterHub 6.1.1).
    w.api
        .call("DELETE", "/hub/api/users/alice/server", &alice, None)
        .await;
    w.wait_server("alice", "", |s| s.state == ServerState::Stopped)
        .await;
    let resp = w
        .api
        .get("/hub/api/users/alice/server/progress", &alice)
        .await;
    assert_eq!(resp.status, 404, "{resp:?}");

    // A stop during a spawn cancels it.
    w.backend.hold_starts(true);
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert_eq!(resp.status, 202);
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    w.wait_server("alice", "", |s| s.state == ServerState::Stopped)
        .await;
    w.backend.hold_starts(false);
}

async fn activity_moves_forward(w: &World) {
    let (_, alice) = w.user("alice").await;
    start_ready(w, "alice", "", &alice).await;
    let server_token = w.backend.request("alice", "").env["JUPYTERHUB_API_TOKEN"].clone();
    let t2 = now() - chrono::Duration::minutes(1);
    let t1 = t2 - chrono::Duration::hours(1);
    let ts =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // What jupyterhub-singleuser posts, with its own token.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &server_token,
            Some(json!({"servers": {"": {"last_activity": ts(t2)}}, "last_activity": ts(t2)})),
        )
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // Starting set the server's activity to now: moving it back does nothing.
    let server = w.server("alice", "").await;
    assert!(server.last_activity.unwrap() > t2);
    let user = w.store.get_user("alice").await.unwrap();
    assert_eq!(user.last_activity, Some(t2));
    // Older activity is ignored, newer moves it.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &alice,
            Some(json!({"last_activity": ts(t1)})),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        w.store.get_user("alice").await.unwrap().last_activity,
        Some(t2)
    );
    let t3 = now();
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &alice,
            Some(json!({"servers": {"": {"last_activity": ts(t3)}}})),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(w.server("alice", "").await.last_activity, Some(t3));
    let model = w.api.get("/hub/api/users/alice", &alice).await.json();
    assert_eq!(model["servers"][""]["last_activity"], ts(t3));
    // Naive timestamps are UTC.
    let naive = (t3 + chrono::Duration::seconds(1))
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &alice,
            Some(json!({"last_activity": naive})),
        )
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // Refused: unknown server, the far future, nothing at all, another user's.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &alice,
            Some(json!({"servers": {"nope": {"last_activity": ts(t3)}}})),
        )
        .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    let future = now() + chrono::Duration::hours(2);
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &alice,
            Some(json!({"last_activity": ts(future)})),
        )
        .await;
    assert_eq!(resp.status, 400);
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/alice/activity",
            &alice,
            Some(json!({})),
        )
        .await;
    assert_eq!(resp.status, 400);
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/nobody/activity",
            &w.admin,
            Some(json!({"last_activity": ts(t3)})),
        )
        .await;
    assert_eq!(resp.status, 404);
}

async fn recover_adopts_live_and_stops_dead(w: &World) {
    let mut tokens = HashMap::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        tokens.insert(name, w.user(name).await.1);
    }
    start_ready(w, "alice", "", &tokens["alice"]).await;
    start_ready(w, "bob", "", &tokens["bob"]).await;
    start_ready(w, "erin", "", &tokens["erin"]).await;
    // bob's server crashes while the hub is down.
    let bob_url = w.server("bob", "").await.url.unwrap();
    w.backend.crash(&bob_url).await;
    // carol's spawn was interrupted by the crash, but her server came up and answers.
    let long_ago = now() - chrono::Duration::hours(1);
    let carol = w.store.get_user("carol").await.unwrap();
    let row = w.store.create_server(carol.id, "").await.unwrap();
    w.store
        .begin_start(row.id, &StartRequest::default(), long_ago)
        .await
        .unwrap();
    let handle = w.backend.launch_orphan().await;
    w.store.set_spawner_state(row.id, &handle).await.unwrap();
    // dave's spawn was interrupted before anything ran.
    let dave = w.store.get_user("dave").await.unwrap();
    let row = w.store.create_server(dave.id, "").await.unwrap();
    w.store
        .begin_start(row.id, &StartRequest::default(), long_ago)
        .await
        .unwrap();
    // erin's server was stopping.
    let erin = w.server("erin", "").await;
    w.store.begin_stop(erin.id).await.unwrap();

    // A restarted hub: same database and backend, nothing in memory.
    let restarted = Hub::new(w.store.clone(), w.backend.clone(), w.api.hub.config.clone());
    let report = spawner::recover(&restarted).await.unwrap();
    assert_eq!(report.adopted, ["alice/", "carol/"]);
    assert_eq!(report.stopped, ["bob/", "dave/", "erin/"]);
    assert!(report.left.is_empty());
    assert_eq!(w.server("alice", "").await.state, ServerState::Running);
    let carol = w.server("carol", "").await;
    assert_eq!(carol.state, ServerState::Running);
    assert!(carol.url.is_some());
    for name in ["bob", "dave", "erin"] {
        assert_eq!(
            w.server(name, "").await.state,
            ServerState::Stopped,
            "{name}"
        );
    }
    // The culler's view agrees.
    let ready = w
        .api
        .get("/hub/api/users?state=ready", &w.culler)
        .await
        .json();
    let ready: Vec<&str> = ready
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(ready, ["alice", "carol"]);

    // The watcher notices a server that exits on its own.
    let alice_url = w.server("alice", "").await.url.unwrap();
    w.backend.crash(&alice_url).await;
    let report = spawner::sweep(&restarted).await.unwrap();
    assert_eq!(report.stopped, ["alice/"]);
    assert_eq!(report.adopted, ["carol/"]);
    assert_eq!(w.server("alice", "").await.state, ServerState::Stopped);
    let watcher = spawner::watch_every(restarted.clone(), Duration::from_millis(50));
    let carol_url = w.server("carol", "").await.url.unwrap();
    w.backend.crash(&carol_url).await;
    w.wait_server("carol", "", |s| s.state == ServerState::Stopped)
        .await;
    watcher.abort();
}

async fn two_hubs_share_one_database(w: &World) {
    let (_, alice) = w.user("alice").await;
    // A second hub process on the same database (and the same cluster).
    let store_b = Store::connect(w.db.url()).await.unwrap();
    let b = Served::start(store_b.clone(), w.backend.clone(), api_config).await;
    // Started through A, seen ready through B.
    start_ready(w, "alice", "", &alice).await;
    let model = b.get("/hub/api/users/alice", &alice).await.json();
    assert_eq!(model["servers"][""]["ready"], true);
    assert_eq!(model["server"], "/user/alice/");
    // A second start through B is refused as through A.
    assert_eq!(
        b.call("POST", "/hub/api/users/alice/server", &alice, None)
            .await
            .status,
        400
    );
    // Progress through B (which did not drive the spawn) derives from the row.
    let events = sse_events(
        &b.get("/hub/api/users/alice/server/progress", &alice)
            .await
            .body,
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["ready"], true);
    // A token made through B works through A.
    let resp = b
        .call(
            "POST",
            "/hub/api/users/alice/tokens",
            &alice,
            Some(json!({"scopes": ["read:users!user=alice"]})),
        )
        .await;
    let token = resp.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(w.api.get("/hub/api/users/alice", &token).await.status, 200);
    // A spawn driven by A, watched through B until ready.
    w.backend.hold_starts(true);
    let resp = w
        .api
        .call("POST", "/hub/api/users/alice/servers/lab", &alice, None)
        .await;
    assert_eq!(resp.status, 202);
    let (status, _, body) = b
        .open("/hub/api/users/alice/servers/lab/progress", &alice)
        .await;
    assert_eq!(status, 200);
    w.backend.hold_starts(false);
    let events = sse_events(&read_all(body).await);
    assert_eq!(events.last().unwrap()["ready"], true, "{events:?}");
    assert_eq!(events.last().unwrap()["url"], "/user/alice/lab/");
    // Stopped through B, seen stopped through A.
    let resp = b
        .call("DELETE", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert!(resp.status == 204 || resp.status == 202, "{resp:?}");
    w.wait_server("alice", "", |s| s.state == ServerState::Stopped)
        .await;
    let model = w.api.get("/hub/api/users/alice", &alice).await.json();
    assert!(model["servers"].get("").is_none());
    assert_eq!(model["server"], Value::Null);
    // A user made through A exists for B.
    assert_eq!(
        w.api
            .call("POST", "/hub/api/users/zoe", &w.admin, None)
            .await
            .status,
        201
    );
    assert_eq!(b.get("/hub/api/users/zoe", &w.admin).await.status, 200);
    assert_eq!(
        b.call("POST", "/hub/api/users/zoe", &w.admin, None)
            .await
            .status,
        409
    );
    store_b.close().await;
}

// ---- the real peers -------------------------------------------------------------------------

/// `jupyterhub-singleuser` started through the API (the `local` backend) identifies users with
/// `GET /hub/api/user` and posts activity; `jupyterhub-idle-culler` pages through
/// `/users?state=ready` and culls the servers (removing the named one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_peers() {
    use atelier::backend::local::{LocalBackend, LocalConfig};

    let Some(venv) = peers_venv(
        "real jupyterhub-singleuser and jupyterhub-idle-culler",
        &["jupyterhub-singleuser", "jupyterhub-idle-culler"],
    ) else {
        return;
    };
    let db = sqlite_db();
    let store = Store::connect(db.url()).await.expect("connect");
    let state_dir =
        std::env::temp_dir().join(format!("atelier-hub-peers-{}", &generate_token()[..12]));
    let mut config = LocalConfig::new(&state_dir);
    config.command = vec![
        venv.join("bin/jupyterhub-singleuser")
            .to_string_lossy()
            .into(),
    ];
    config.start_timeout = Duration::from_secs(55);
    let servers: Arc<dyn WorkspaceBackend> = Arc::new(LocalBackend::new(config));
    let api = Served::start_on(
        bind().await,
        store.clone(),
        TestBackend::new(),
        Some(servers),
        api_config,
    )
    .await;
    let logs =
        |name: &str| std::fs::read_to_string(state_dir.join("logs").join(name)).unwrap_or_default();

    let alice_user = store.create_user("alice", false).await.unwrap();
    let alice = token_for(&store, &alice_user, &["self"]).await;
    let bob_user = store.create_user("bob", false).await.unwrap();
    let bob = token_for(&store, &bob_user, &["self"]).await;
    for (user, path, token) in [
        ("alice", "/hub/api/users/alice/server", &alice),
        ("bob", "/hub/api/users/bob/servers/lab", &bob),
    ] {
        let resp = api.call("POST", path, token, None).await;
        assert!(resp.status == 201 || resp.status == 202, "{resp:?}");
        let server = if user == "bob" { "lab" } else { "" };
        let mut state = ServerState::Starting;
        for _ in 0..700 {
            state = store.get_server_by_names(user, server).await.unwrap().state;
            if state != ServerState::Starting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = if server.is_empty() {
            format!("{user}.log")
        } else {
            format!("{user}~{server}.log")
        };
        assert_eq!(state, ServerState::Running, "--- log ---\n{}", logs(&log));
    }

    // The server checks credentials with GET /hub/api/user and the access scopes.
    let url = store
        .get_server_by_names("alice", "")
        .await
        .unwrap()
        .url
        .unwrap();
    let status = |token: String| {
        let api = &api;
        let url = url.clone();
        async move {
            api.raw(
                "GET",
                &format!("{url}/user/alice/api/status"),
                Some(&token),
                None,
                &[],
            )
            .await
            .status
        }
    };
    assert_eq!(
        status(alice.clone()).await,
        200,
        "--- log ---\n{}",
        logs("alice.log")
    );
    assert_eq!(status(bob.clone()).await, 403);
    // Its own activity reports reach the hub.
    let mut active = None;
    for _ in 0..300 {
        active = store.get_user("alice").await.unwrap().last_activity;
        if active.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        active.is_some(),
        "no activity posted\n--- log ---\n{}",
        logs("alice.log")
    );

    // The idle culler, one user per page.
    let culler = generate_token();
    store
        .create_token_with_value(
            &culler,
            &NewToken::new(
                TokenOwner::Service("idle-culler".into()),
                vec![
                    "list:users".into(),
                    "read:users:activity".into(),
                    "read:servers".into(),
                    "delete:servers".into(),
                ],
            ),
        )
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(venv.join("bin/jupyterhub-idle-culler"))
        .arg(format!("--url={}/hub/api", api.base))
        .args([
            "--timeout=1",
            "--cull-every=2",
            "--api-page-size=1",
            "--remove-named-servers=true",
        ])
        .env("JUPYTERHUB_API_TOKEN", &culler)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start jupyterhub-idle-culler");
    let mut culled = false;
    for _ in 0..900 {
        let alice_stopped =
            store.get_server_by_names("alice", "").await.unwrap().state == ServerState::Stopped;
        let bob_removed = store.get_server_by_names("bob", "lab").await.is_err();
        if alice_stopped && bob_removed {
            culled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.start_kill().expect("stop the culler");
    let output = child.wait_with_output().await.expect("culler output");
    let culler_log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(culled, "--- culler ---\n{culler_log}");
    assert!(culler_log.contains("Culling server alice"), "{culler_log}");
    assert!(
        culler_log.contains("Culling server bob/lab"),
        "{culler_log}"
    );
    assert!(
        tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .is_err(),
        "alice's server process is gone"
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&state_dir);
}

// ---- JupyterHub 6 ---------------------------------------------------------------------------

/// `PATCH /users/{name}/servers/{server}`: rename, display name and options of a stopped server.
async fn servers_are_patched(w: &World) {
    let (alice_user, alice) = w.user("alice").await;
    let (_, bob) = w.user("bob").await;
    let resp = w
        .api
        .call(
            "PUT",
            "/hub/api/users/alice/servers/lab",
            &alice,
            Some(json!({"display_name": "Lab"})),
        )
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");

    let resp = w
        .api
        .call(
            "PATCH",
            "/hub/api/users/alice/servers/lab",
            &alice,
            Some(json!({
                "name": "notebook",
                "display_name": "My notebook",
                "user_options": {"image": "pangeo"},
            })),
        )
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let model = resp.json();
    assert_eq!(model["name"], "notebook");
    assert_eq!(model["full_name"], "alice/notebook");
    assert_eq!(model["display_name"], "My notebook");
    assert_eq!(model["user_options"], json!({"image": "pangeo"}));
    assert_eq!(model["url"], "/user/alice/notebook/");
    assert_eq!(model["stopped"], true);
    assert_eq!(
        w.api
            .get("/hub/api/users/alice/servers/lab", &alice)
            .await
            .status,
        404
    );
    let got = w
        .api
        .get("/hub/api/users/alice/servers/notebook", &alice)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["display_name"], "My notebook");
    let events = w
        .store
        .list_audit(&AuditQuery {
            action: Some(AuditAction::Admin),
            target_user: Some("alice".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.detail["action"] == "modify_server"
            && e.detail["renamed_from"] == "lab"
            && e.detail["renamed_to"] == "notebook"
            && e.actor.as_deref() == Some("alice")
            && e.target_server.as_deref() == Some("notebook")),
        "{events:?}"
    );

    // 404s, 403s.
    let patch = |path: &'static str, token: String, body: Option<Value>| async move {
        w.api.call("PATCH", path, &token, body).await
    };
    let display = Some(json!({"display_name": "x"}));
    assert_eq!(
        patch(
            "/hub/api/users/alice/servers/nothing",
            alice.clone(),
            display.clone()
        )
        .await
        .status,
        404
    );
    assert_eq!(
        patch(
            "/hub/api/users/nobody/servers/x",
            w.admin.clone(),
            display.clone()
        )
        .await
        .status,
        404
    );
    assert_error(
        &patch(
            "/hub/api/users/alice/servers/notebook",
            bob.clone(),
            display.clone(),
        )
        .await,
        404,
        "No access",
    );
    let reader = token_for(&w.store, &alice_user, &["read:servers!user=alice"]).await;
    assert_error(
        &patch(
            "/hub/api/users/alice/servers/notebook",
            reader,
            display.clone(),
        )
        .await,
        403,
        "start:servers",
    );

    // Bad bodies: 400 naming the field.
    let nb = "/hub/api/users/alice/servers/notebook";
    for (body, field) in [
        (None, "display_name"),
        (Some(json!({})), "user_options"),
        (Some(json!([1])), "JSON object"),
        (Some(json!({"name": 5})), "\"name\""),
        (Some(json!({"display_name": []})), "\"display_name\""),
        (Some(json!({"user_options": "big"})), "\"user_options\""),
        (Some(json!({"colour": "red"})), "\"colour\""),
        (Some(json!({"name": "Not Valid!"})), "name"),
        (Some(json!({"name": "a/b"})), "name"),
    ] {
        assert_error(&patch(nb, alice.clone(), body).await, 400, field);
    }
    // A name taken (ignoring case) is a conflict; its own name is not.
    let resp = w
        .api
        .call("PUT", "/hub/api/users/alice/servers/other", &alice, None)
        .await;
    assert_eq!(resp.status, 201);
    assert_error(
        &patch(nb, alice.clone(), Some(json!({"name": "other"}))).await,
        409,
        "other",
    );
    let resp = patch(
        nb,
        alice.clone(),
        Some(json!({"name": "notebook", "display_name": "Same"})),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["display_name"], "Same");

    // Only a stopped server is modified.
    start_ready(w, "alice", "notebook", &alice).await;
    assert_error(
        &patch(nb, alice.clone(), display.clone()).await,
        400,
        "running",
    );
    let resp = w.api.call("DELETE", nb, &alice, None).await;
    assert!(resp.status == 204 || resp.status == 202, "{resp:?}");
    w.wait_server("alice", "notebook", |s| s.state == ServerState::Stopped)
        .await;
    assert_eq!(patch(nb, alice.clone(), display.clone()).await.status, 200);

    // `start:servers` alone starts but does not stop; a server-filtered token cannot rename
    // the server out of its reach.
    let starter = token_for(&w.store, &alice_user, &["start:servers!user=alice"]).await;
    start_ready(w, "alice", "quick", &starter).await;
    assert_error(
        &w.api
            .call(
                "DELETE",
                "/hub/api/users/alice/servers/quick",
                &starter,
                None,
            )
            .await,
        403,
        "delete:servers",
    );
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/servers/quick", &alice, None)
        .await;
    assert!(resp.status == 204 || resp.status == 202, "{resp:?}");
    let one = token_for(
        &w.store,
        &alice_user,
        &["start:servers!server=alice/notebook"],
    )
    .await;
    assert_eq!(
        patch(nb, one.clone(), Some(json!({"display_name": "Mine"})))
            .await
            .status,
        200
    );
    assert_error(
        &patch(nb, one, Some(json!({"name": "elsewhere"}))).await,
        404,
        "No access",
    );

    // The default server: display name and options, never a rename.
    start_ready(w, "alice", "", &alice).await;
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/server", &alice, None)
        .await;
    assert!(resp.status == 204 || resp.status == 202, "{resp:?}");
    w.wait_server("alice", "", |s| s.state == ServerState::Stopped)
        .await;
    assert_error(
        &patch(
            "/hub/api/users/alice/servers/",
            alice.clone(),
            Some(json!({"name": "x"})),
        )
        .await,
        400,
        "default server",
    );
    let resp = patch(
        "/hub/api/users/alice/servers/",
        alice.clone(),
        Some(json!({"display_name": "Main"})),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["name"], "");
    assert_eq!(resp.json()["display_name"], "Main");
}

/// The scopes JupyterHub 6's operations name: `delete:users`, `delete:groups` and
/// `start:servers` work alone, and the broader scopes still imply them.
async fn jupyterhub_6_scopes(w: &World) {
    let deleter = service_token(w, "janitor", &["delete:users", "delete:groups"]).await;
    w.store.create_user("gone", false).await.unwrap();
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/users/gone", &deleter, None)
            .await
            .status,
        204
    );
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/users/gone", &deleter, None)
            .await
            .status,
        404
    );
    assert_error(
        &w.api
            .call("POST", "/hub/api/users/new", &deleter, None)
            .await,
        403,
        "admin:users",
    );
    // admin:users implies delete:users.
    w.store.create_user("gone2", false).await.unwrap();
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/users/gone2", &w.admin, None)
            .await
            .status,
        204
    );
    // `users` does not delete users (JupyterHub 6 split `delete:users` off).
    w.store.create_user("carol", false).await.unwrap();
    let users_only = service_token(w, "editor", &["users"]).await;
    assert_error(
        &w.api
            .call("DELETE", "/hub/api/users/carol", &users_only, None)
            .await,
        403,
        "delete:users",
    );

    // Groups.
    for g in ["g1", "g2"] {
        assert_eq!(
            w.api
                .call("POST", &format!("/hub/api/groups/{g}"), &w.admin, None)
                .await
                .status,
            201
        );
    }
    let grouper = service_token(w, "grouper", &["groups"]).await;
    assert_error(
        &w.api
            .call("DELETE", "/hub/api/groups/g1", &grouper, None)
            .await,
        403,
        "delete:groups",
    );
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/groups/g1", &deleter, None)
            .await
            .status,
        204
    );
    assert_eq!(
        w.api
            .call("DELETE", "/hub/api/groups/g2", &w.admin, None)
            .await
            .status,
        204
    );

    // A user's own scopes name start:servers; unknown filter kinds are refused.
    let (_, dave) = w.user("dave").await;
    let me = w.api.get("/hub/api/user", &dave).await.json();
    let scopes = me["scopes"].as_array().unwrap();
    assert!(scopes.contains(&json!("start:servers!user=dave")), "{me}");
    assert!(scopes.contains(&json!("delete:servers!user=dave")), "{me}");
    assert!(!scopes.iter().any(|s| s == "shutdown"), "{me}");
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/dave/tokens",
            &dave,
            Some(json!({"scopes": ["read:users!host=x"]})),
        )
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    // A service's token may carry `!service=` filters.
    let svc = service_token(w, "reader", &["read:services!service=culler"]).await;
    let me = w.api.get("/hub/api/user", &svc).await.json();
    assert!(
        me["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("read:services:name!service=culler")),
        "{me}"
    );
}

/// `GET /hub/health`, `GET /services[/{name}]`, `GET/POST /proxy`; no CORS on the API root.
async fn services_proxy_and_health(w: &World) {
    let resp = w.api.raw("GET", "/hub/health", None, None, &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "");
    let resp = w
        .api
        .raw(
            "GET",
            "/hub/api/",
            None,
            None,
            &[("origin", "http://elsewhere.test")],
        )
        .await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.headers.get("access-control-allow-origin").is_none(),
        "{resp:?}"
    );

    let root = w.store.get_user("root").await.unwrap();
    let ops = token_for(&w.store, &root, &["read:services", "proxy"]).await;
    let (_, alice) = w.user("alice").await;
    let (_, bob) = w.user("bob").await;

    // Services: JupyterHub's object keyed by name.
    let resp = w.api.get("/hub/api/services", &ops).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let services = resp.json();
    assert_eq!(
        services.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["culler"]
    );
    let culler = &services["culler"];
    assert_eq!(culler["kind"], "service");
    assert_eq!(culler["name"], "culler");
    assert_eq!(culler["admin"], false);
    assert_eq!(culler["url"], "");
    assert_eq!(culler["command"], json!([]));
    let one = w.api.get("/hub/api/services/culler", &ops).await;
    assert_eq!(one.status, 200);
    assert_eq!(&one.json(), culler);
    assert_eq!(w.api.get("/hub/api/services/nope", &ops).await.status, 404);
    assert_error(
        &w.api.get("/hub/api/services", &alice).await,
        403,
        "read:services",
    );
    assert_error(
        &w.api.get("/hub/api/services/culler", &alice).await,
        403,
        "read:services",
    );
    // Filtered: names only, one service, or none.
    let names_only = service_token(w, "n", &["read:services:name!service=culler"]).await;
    assert_eq!(
        w.api
            .get("/hub/api/services/culler", &names_only)
            .await
            .json(),
        json!({"kind": "service", "name": "culler", "admin": false})
    );
    assert_eq!(
        w.api.get("/hub/api/services", &names_only).await.status,
        403
    );
    let other = service_token(w, "o", &["list:services!service=other"]).await;
    assert_eq!(
        w.api.get("/hub/api/services", &other).await.json(),
        json!({})
    );
    assert_eq!(
        w.api.get("/hub/api/services/culler", &other).await.status,
        404
    );
    let lister = service_token(w, "l", &["list:services"]).await;
    assert_eq!(
        w.api.get("/hub/api/services", &lister).await.json(),
        json!({"culler": {"kind": "service", "name": "culler", "admin": false}})
    );

    // The routing table: the hub's route and the running servers.
    start_ready(w, "alice", "", &alice).await;
    start_ready(w, "alice", "lab", &alice).await;
    start_ready(w, "bob", "", &bob).await;
    w.store
        .create_server(w.store.get_user("bob").await.unwrap().id, "idle")
        .await
        .unwrap();
    let resp = w.api.get("/hub/api/proxy", &ops).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let routes = resp.json();
    assert_eq!(
        routes.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["/", "/user/alice/", "/user/alice/lab/", "/user/bob/"]
    );
    assert_eq!(
        routes["/"],
        json!({"routespec": "/", "target": w.api.base, "data": {"hub": true}})
    );
    let lab = &routes["/user/alice/lab/"];
    assert_eq!(lab["routespec"], "/user/alice/lab/");
    assert_eq!(
        lab["target"].as_str(),
        w.server("alice", "lab").await.url.as_deref()
    );
    assert_eq!(lab["data"]["user"], "alice");
    assert_eq!(lab["data"]["server_name"], "lab");
    assert!(lab["data"].get("last_activity").is_some(), "{lab}");
    // Paginated as JupyterHub paginates it.
    let accept = [("accept", PAGINATION)];
    let resp = w
        .api
        .raw("GET", "/hub/api/proxy?limit=2", Some(&ops), None, &accept)
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let page = resp.json();
    assert_eq!(
        page["items"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["/", "/user/alice/"]
    );
    assert_eq!(page["_pagination"]["total"], 4);
    assert_eq!(page["_pagination"]["next"]["offset"], 2);
    let next = page["_pagination"]["next"]["url"].as_str().unwrap();
    let page = w
        .api
        .raw("GET", next, Some(&ops), None, &accept)
        .await
        .json();
    assert_eq!(
        page["items"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["/user/alice/lab/", "/user/bob/"]
    );
    assert_eq!(page["_pagination"]["next"], Value::Null);
    let last = w
        .api
        .get("/hub/api/proxy?offset=3&limit=1", &ops)
        .await
        .json();
    assert_eq!(
        last.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["/user/bob/"]
    );
    assert_eq!(
        w.api.get("/hub/api/proxy?limit=many", &ops).await.status,
        400
    );
    assert_error(&w.api.get("/hub/api/proxy", &alice).await, 403, "proxy");
    assert_error(
        &w.api.call("POST", "/hub/api/proxy", &alice, None).await,
        403,
        "proxy",
    );
    assert_eq!(
        w.api
            .call("POST", "/hub/api/proxy", &ops, None)
            .await
            .status,
        200
    );
    // A stopped server leaves the table.
    let resp = w
        .api
        .call("DELETE", "/hub/api/users/alice/servers/lab", &alice, None)
        .await;
    assert!(resp.status == 204 || resp.status == 202, "{resp:?}");
    w.wait_server("alice", "lab", |s| s.state == ServerState::Stopped)
        .await;
    let routes = w.api.get("/hub/api/proxy", &ops).await.json();
    assert!(routes.get("/user/alice/lab/").is_none(), "{routes}");
}

/// A second hub on the world's database, served as `atelier hub` serves it, with the task that
/// serves it.
async fn serve_second_hub(w: &World) -> (Served, JoinHandle<anyhow::Result<()>>) {
    let listener = bind().await;
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = HubConfig::new("http://vre.test", &format!("{base}/hub/api"));
    config.spawn_timeout_secs = 60;
    let hub = Hub::new(w.store.clone(), w.backend.clone(), config);
    let serving = tokio::spawn(hub::serve::serve_hub(
        listener,
        hub.clone(),
        std::future::pending(),
    ));
    let served = Served::new(hub, w.backend.clone(), base, tokio::spawn(async {}));
    (served, serving)
}

/// `POST /shutdown`: 403 without `shutdown`, 400 for non-boolean values; 202, then the hub stops
/// (the running servers first with `servers: true`).
async fn shutdown_stops_the_hub(w: &World) {
    let root = w.store.get_user("root").await.unwrap();
    let shutter = token_for(&w.store, &root, &["shutdown"]).await;
    let (_, alice) = w.user("alice").await;
    let (_, bob) = w.user("bob").await;
    start_ready(w, "alice", "", &alice).await;

    let (second, serving) = serve_second_hub(w).await;
    assert_error(
        &second.call("POST", "/hub/api/shutdown", &alice, None).await,
        403,
        "shutdown",
    );
    for (body, field) in [
        (json!({"servers": "yes"}), "\"servers\""),
        (json!({"proxy": null}), "\"proxy\""),
        (json!({"proxy": 1}), "\"proxy\""),
        (json!({"everything": true}), "\"everything\""),
        (json!([true]), "JSON object"),
    ] {
        assert_error(
            &second
                .call("POST", "/hub/api/shutdown", &shutter, Some(body))
                .await,
            400,
            field,
        );
    }
    let resp = second
        .call(
            "POST",
            "/hub/api/shutdown",
            &shutter,
            Some(json!({"servers": true, "proxy": false})),
        )
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(resp.json()["message"], "Shutting down Hub");
    // The hub stops by itself (graceful: serve_hub returns), its servers stopped first.
    serving.await.expect("join").expect("serve_hub");
    assert_eq!(w.server("alice", "").await.state, ServerState::Stopped);
    let addr = second.base.trim_start_matches("http://").to_owned();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    let events = audit_events(&w.store, AuditAction::Admin).await;
    assert!(
        events
            .iter()
            .any(|e| e.detail["action"] == "shutdown" && e.detail["servers"] == true),
        "{events:?}"
    );

    // Without a body the servers outlive the hub.
    start_ready(w, "bob", "", &bob).await;
    let (third, serving) = serve_second_hub(w).await;
    let resp = third
        .raw("POST", "/hub/api/shutdown", Some(&shutter), None, &[])
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    serving.await.expect("join").expect("serve_hub");
    assert_eq!(w.server("bob", "").await.state, ServerState::Running);
    // The world's own hub still serves.
    assert_eq!(w.api.get("/hub/api/user", &bob).await.status, 200);
}

/// `GET /users?name_filter=`: JupyterHub's case-insensitive substring match, with the state
/// filter, pagination and the caller's reach.
async fn users_filter_by_name(w: &World) {
    for name in ["alice", "alfred", "bob", "malory"] {
        w.store.create_user(name, false).await.unwrap();
    }
    let names = |v: &Value| -> Vec<String> {
        let items = v.get("items").unwrap_or(v);
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let resp = w.api.get("/hub/api/users?name_filter=AL", &w.admin).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(names(&resp.json()), ["alice", "alfred", "malory"]);
    assert_eq!(
        names(
            &w.api
                .get("/hub/api/users?name_filter=", &w.admin)
                .await
                .json()
        )
        .len(),
        5
    );
    assert!(
        names(
            &w.api
                .get("/hub/api/users?name_filter=%25", &w.admin)
                .await
                .json()
        )
        .is_empty()
    );
    // Paginated: the next URL keeps the filter.
    let accept = [("accept", PAGINATION)];
    let page = w
        .api
        .raw(
            "GET",
            "/hub/api/users?name_filter=al&limit=2",
            Some(&w.admin),
            None,
            &accept,
        )
        .await
        .json();
    assert_eq!(names(&page), ["alice", "alfred"]);
    assert_eq!(page["_pagination"]["total"], 3);
    let next = page["_pagination"]["next"]["url"].as_str().unwrap();
    assert!(next.contains("name_filter=al"), "{next}");
    let page = w
        .api
        .raw("GET", next, Some(&w.admin), None, &accept)
        .await
        .json();
    assert_eq!(names(&page), ["malory"]);
    // With the state filter.
    start_ready(w, "alfred", "", &w.admin).await;
    assert_eq!(
        names(
            &w.api
                .get("/hub/api/users?state=ready&name_filter=AL", &w.admin)
                .await
                .json()
        ),
        ["alfred"]
    );
    // Within the caller's reach: `list:users!user=carol` lists only carol; a user's own token
    // holds no `list:users` (403, as JupyterHub).
    let (_, carol) = w.user("carol").await;
    assert_eq!(
        w.api
            .get("/hub/api/users?name_filter=al", &carol)
            .await
            .status,
        403
    );
    let lister = service_token(w, "lister", &["list:users!user=carol"]).await;
    assert!(
        names(
            &w.api
                .get("/hub/api/users?name_filter=al", &lister)
                .await
                .json()
        )
        .is_empty()
    );
    assert_eq!(
        names(
            &w.api
                .get("/hub/api/users?name_filter=AR", &lister)
                .await
                .json()
        ),
        ["carol"]
    );
}

/// Where JupyterHub 6.1.1 answered otherwise (issue 9, section 3), each as JupyterHub answers.
async fn jupyterhub_611_answers(w: &World) {
    // `admin:users` alone reaches no server: JupyterHub answers 403 to start and stop.
    let (_, bob) = w.user("bob").await;
    start_ready(w, "bob", "", &bob).await;
    let users_admin = service_token(w, "useradmin", &["admin:users"]).await;
    for (method, path) in [
        ("POST", "/hub/api/users/bob/servers/x"),
        ("DELETE", "/hub/api/users/bob/server"),
        ("DELETE", "/hub/api/users/bob/servers/"),
        ("POST", "/hub/api/users/bob/server"),
    ] {
        let resp = w.api.call(method, path, &users_admin, None).await;
        assert_eq!(resp.status, 403, "{method} {path}: {resp:?}");
    }
    assert_eq!(w.server("bob", "").await.state, ServerState::Running);
    // It still manages the user.
    assert_eq!(
        w.api.get("/hub/api/users/bob", &users_admin).await.status,
        200
    );

    // Tokens: `roles` and `scopes` together, or a scope the owner lacks, are 400.
    let both = w
        .api
        .call(
            "POST",
            "/hub/api/users/bob/tokens",
            &bob,
            Some(json!({"roles": ["user"], "scopes": ["read:users!user=bob"]})),
        )
        .await;
    assert_error(&both, 400, "one of scopes or roles");
    for (token, scope) in [(&bob, "admin:users"), (&w.admin, "read:users")] {
        let resp = w
            .api
            .call(
                "POST",
                "/hub/api/users/bob/tokens",
                token,
                Some(json!({"scopes": [scope]})),
            )
            .await;
        assert_error(&resp, 400, "not held by User bob");
    }
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/bob/tokens",
            &bob,
            Some(json!({"roles": ["admin"]})),
        )
        .await;
    assert_error(&resp, 400, "not held by User bob");
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/bob/tokens",
            &bob,
            Some(json!({"roles": ["no-such-role"]})),
        )
        .await;
    assert_error(&resp, 400, "No such role");

    // `{"remove": {}}` is false in Python: the server stops and stays (204).
    start_ready(w, "bob", "gpu", &bob).await;
    let resp = w
        .api
        .call(
            "DELETE",
            "/hub/api/users/bob/servers/gpu",
            &bob,
            Some(json!({"remove": {}})),
        )
        .await;
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(w.server("bob", "gpu").await.state, ServerState::Stopped);
    // The progress of a stopped server: 404.
    let resp = w
        .api
        .get("/hub/api/users/bob/servers/gpu/progress", &bob)
        .await;
    assert_eq!(resp.status, 404, "{resp:?}");

    // Pages hold at most 200 users; a user's own token does not list users.
    let resp = w
        .api
        .raw(
            "GET",
            "/hub/api/users?limit=1000",
            Some(&w.admin),
            None,
            &[("accept", PAGINATION)],
        )
        .await;
    assert_eq!(resp.json()["_pagination"]["limit"], 200, "{resp:?}");
    let resp = w.api.get("/hub/api/users", &bob).await;
    assert_error(&resp, 403, "list:users");

    // `GET /user` carries `user_info`; a service sees JupyterHub's service model.
    let me = w.api.get("/hub/api/user", &bob).await.json();
    assert_eq!(me["user_info"], Value::Null, "{me}");
    assert!(me.as_object().unwrap().contains_key("user_info"), "{me}");
    let reader = service_token(w, "reader", &["read:services!service=reader"]).await;
    let me = w.api.get("/hub/api/user", &reader).await.json();
    for key in [
        "kind",
        "name",
        "admin",
        "url",
        "prefix",
        "command",
        "pid",
        "info",
        "display",
        "scopes",
        "token_id",
        "session_id",
    ] {
        assert!(me.get(key).is_some(), "{key} missing: {me}");
    }
    assert_eq!(me["kind"], "service");
    assert!(
        me.get("roles").is_none(),
        "roles need read:roles:services: {me}"
    );

    // `/info`: no Python known for the test backend's servers.
    let info = w.api.get("/hub/api/info", &w.admin).await.json();
    assert_eq!(info["python"], Value::Null, "{info}");
}

/// A configured role gives its users, the members of its groups and its services its scopes.
async fn roles_give_scopes(w: &World) {
    let dask = "access:services!service=dask-gateway";
    let (erin, _) = w.user("erin").await;
    let (fay, _) = w.user("fay").await;
    let (gus, _) = w.user("gus").await;
    let scopes = |me: &Value| -> Vec<String> {
        me["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    // Tokens that ask for the role's scope keep it only while their owner holds it.
    let erin = token_for(&w.store, &erin, &["self", dask]).await;
    let fay = token_for(&w.store, &fay, &["self", dask]).await;
    let gus = token_for(&w.store, &gus, &["self", dask]).await;
    let me = w.api.get("/hub/api/user", &erin).await.json();
    assert!(scopes(&me).contains(&dask.to_owned()), "{me}");
    assert_eq!(me["roles"], json!(["dask-users", "user"]), "{me}");
    let me = w.api.get("/hub/api/user", &fay).await.json();
    assert!(!scopes(&me).contains(&dask.to_owned()), "{me}");
    // fay joins group ocean: she holds the role's scopes through it.
    let resp = w
        .api
        .call("POST", "/hub/api/groups/ocean", &w.admin, None)
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/groups/ocean/users",
            &w.admin,
            Some(json!({"users": ["fay"]})),
        )
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let me = w.api.get("/hub/api/user", &fay).await.json();
    assert!(scopes(&me).contains(&dask.to_owned()), "{me}");
    assert_eq!(me["roles"], json!(["user"]), "direct roles only: {me}");
    let me = w.api.get("/hub/api/user", &gus).await.json();
    assert!(!scopes(&me).contains(&dask.to_owned()), "{me}");
    // The group model names its roles to who may read them (`admin:groups` implies
    // `read:roles:groups`; `read:groups` does not).
    let group = w.api.get("/hub/api/groups/ocean", &w.admin).await.json();
    assert_eq!(group["roles"], json!(["dask-users"]), "{group}");
    let group_reader = service_token(w, "group-reader", &["read:groups"]).await;
    let group = w
        .api
        .get("/hub/api/groups/ocean", &group_reader)
        .await
        .json();
    assert!(group.get("roles").is_none(), "{group}");
    let roles_reader = service_token(w, "roles-reader", &["read:roles", "read:groups"]).await;
    let group = w
        .api
        .get("/hub/api/groups/ocean", &roles_reader)
        .await
        .json();
    assert_eq!(group["roles"], json!(["dask-users"]), "{group}");
    let user = w.api.get("/hub/api/users/erin", &roles_reader).await.json();
    assert_eq!(user["roles"], json!(["dask-users", "user"]), "{user}");
    // The culler service holds the role too.
    let me = w.api.get("/hub/api/user", &w.culler).await.json();
    assert!(scopes(&me).contains(&dask.to_owned()), "{me}");
    // A token asked with the role's name holds its scopes.
    let resp = w
        .api
        .call(
            "POST",
            "/hub/api/users/erin/tokens",
            &erin,
            Some(json!({"roles": ["dask-users"]})),
        )
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let token = resp.json()["token"].as_str().unwrap().to_owned();
    let me = w.api.get("/hub/api/user", &token).await.json();
    let held = scopes(&me);
    assert!(held.contains(&dask.to_owned()), "{me}");
    assert!(!held.iter().any(|s| s.starts_with("servers")), "{me}");

    // A token that inherits its owner's scopes keeps `self` as `self`: it follows a rename.
    let resp = w
        .api
        .call("POST", "/hub/api/users/erin/tokens", &erin, Some(json!({})))
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let inherit = resp.json()["token"].as_str().unwrap().to_owned();
    let resp = w
        .api
        .call(
            "PATCH",
            "/hub/api/users/erin",
            &w.admin,
            Some(json!({"name": "erin-two"})),
        )
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let me = w.api.get("/hub/api/user", &inherit).await.json();
    assert_eq!(me["name"], "erin-two", "{me}");
    assert!(
        scopes(&me).contains(&"servers!user=erin-two".to_owned()),
        "{me}"
    );
}

/// The hub keeps resolved tokens for a moment (`hub::auth::cache`): a change made through this
/// hub applies to the very next request (a revoked token, a user made or unmade admin, a group
/// joined or left that carries a role), and one made through another hub on the same database
/// within the cache's lifetime (a bounded wait here, not a timing assertion).
async fn token_cache_follows_changes(w: &World) {
    let (_, cara) = w.user("cara").await;
    let me = w.api.get("/hub/api/user", &cara).await;
    assert_eq!(me.status, 200, "{me:?}");
    let token_id = me.json()["token_id"].as_str().unwrap().to_owned();
    // Used twice: the second answer comes from the cache.
    assert_eq!(w.api.get("/hub/api/user", &cara).await.status, 200);

    // Made admin: the same token lists users at once (its `self` is intersected with what its
    // owner holds now); unmade: refused at once.
    let (_, wide) = {
        let user = w.store.get_user("cara").await.unwrap();
        let scopes = ["self", "list:users", "access:services!service=dask-gateway"];
        let token = token_for(&w.store, &user, &scopes).await;
        (user, token)
    };
    assert_eq!(w.api.get("/hub/api/users", &wide).await.status, 403);
    let patch = |admin: bool| {
        w.api.call(
            "PATCH",
            "/hub/api/users/cara",
            &w.admin,
            Some(json!({ "admin": admin })),
        )
    };
    assert_eq!(patch(true).await.status, 200);
    assert_eq!(w.api.get("/hub/api/users", &wide).await.status, 200);
    assert_eq!(patch(false).await.status, 200);
    assert_eq!(w.api.get("/hub/api/users", &wide).await.status, 403);

    // A role held through group `ocean` (api_config's `dask-users`) comes and goes with the
    // membership: the token asks for its scope, and holds it while its owner does.
    let dask = "access:services!service=dask-gateway";
    let scopes = |resp: Resp| -> Vec<String> {
        serde_json::from_value(resp.json()["scopes"].clone()).unwrap()
    };
    assert!(!scopes(w.api.get("/hub/api/user", &wide).await).contains(&dask.to_owned()));
    let created = w
        .api
        .call("POST", "/hub/api/groups/ocean", &w.admin, None)
        .await;
    assert!(
        created.status == 201 || created.status == 409,
        "{created:?}"
    );
    let members = Some(json!({ "users": ["cara"] }));
    let add = w
        .api
        .call(
            "POST",
            "/hub/api/groups/ocean/users",
            &w.admin,
            members.clone(),
        )
        .await;
    assert_eq!(add.status, 200, "{add:?}");
    assert!(scopes(w.api.get("/hub/api/user", &wide).await).contains(&dask.to_owned()));
    let remove = w
        .api
        .call("DELETE", "/hub/api/groups/ocean/users", &w.admin, members)
        .await;
    assert_eq!(remove.status, 200, "{remove:?}");
    assert!(!scopes(w.api.get("/hub/api/user", &wide).await).contains(&dask.to_owned()));

    // Revoked through this hub: refused by the next request.
    let resp = w
        .api
        .call(
            "DELETE",
            &format!("/hub/api/users/cara/tokens/{token_id}"),
            &w.admin,
            None,
        )
        .await;
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(w.api.get("/hub/api/user", &cara).await.status, 403);

    // Revoked through another hub on the same database: refused here within the cache's
    // lifetime (2 s), and for good after.
    let store_b = Store::connect(w.db.url()).await.unwrap();
    let b = Served::start(store_b.clone(), w.backend.clone(), api_config).await;
    let (_, dora) = w.user("dora").await;
    let id = w.api.get("/hub/api/user", &dora).await.json()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(w.api.get("/hub/api/user", &dora).await.status, 200);
    let resp = b
        .call(
            "DELETE",
            &format!("/hub/api/users/dora/tokens/{id}"),
            &w.admin,
            None,
        )
        .await;
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(b.get("/hub/api/user", &dora).await.status, 403);
    let mut refused = false;
    for _ in 0..100 {
        if w.api.get("/hub/api/user", &dora).await.status == 403 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a token revoked on another hub still works here after 10 s"
    );
    for _ in 0..3 {
        assert_eq!(w.api.get("/hub/api/user", &dora).await.status, 403);
    }
    store_b.close().await;
}
