//! Names of users' servers through the hub (`src/policy/names.rs`).
//!
//! - No two (user, server) pairs share a derived name: user `p`'s server `q` and user `p-q`'s
//!   default server both start, with their own OAuth clients (JupyterHub's `-` gives both
//!   `jupyterhub-user-p-q`, and the second start answered 409). A client registered under that
//!   earlier naming goes with its server's stop.
//! - New server names follow the hub's rule at every door (API start and create, rename, the
//!   spawn page): JupyterHub 6's by default, any DNS label with `--server-name-rule dns-label`;
//!   a 400 names the field and the rule. Servers named before keep working.
//!
//! Each story runs on SQLite and, with `ATELIER_TEST_POSTGRES_URL`, on PostgreSQL.

mod common;

use atelier::hub::HubConfig;
use atelier::policy::names::ServerNameRule;
use atelier::store::{
    NewOAuthClient, NewToken, ServerState, Store, TokenOwner, User, oauth_client_id,
};
use serde_json::{Value, json};

use common::TestDb;
use common::hub::{Resp, Served, TestBackend, bind, dev_login_config, stories};

fn sqlite_db() -> TestDb {
    TestDb::sqlite("atelier-server-names")
}

async fn postgres_db() -> Option<TestDb> {
    TestDb::postgres("atelier_names", "PostgreSQL server name tests").await
}

/// A hub over `db` with the dev login and `rule`.
async fn serve(db: &TestDb, rule: ServerNameRule) -> Served {
    let store = Store::connect(db.url()).await.expect("connect");
    Served::start_on(bind().await, store, TestBackend::new(), None, |base| {
        dev_login_config(base, |c: &mut HubConfig| c.server_name_rule = rule)
    })
    .await
}

/// A user with a token holding `self`.
async fn user(web: &Served, name: &str) -> (User, String) {
    let store = &web.hub.store;
    let user = store.create_user(name, false).await.unwrap();
    let (token, _) = store
        .create_token(&NewToken::new(
            TokenOwner::User(user.id),
            vec!["self".to_owned()],
        ))
        .await
        .unwrap();
    (user, token)
}

async fn call(web: &Served, method: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
    let authorization = format!("token {token}");
    web.request(
        method,
        &format!("/hub/api{path}"),
        &[
            ("authorization", &authorization),
            ("content-type", "application/json"),
        ],
        body.map(|b| b.to_string()).unwrap_or_default(),
    )
    .await
}

/// Starts `user`'s server `server` through the API and waits until it runs.
async fn start(web: &Served, user: &str, server: &str, token: &str) {
    let path = if server.is_empty() {
        format!("/users/{user}/server")
    } else {
        format!("/users/{user}/servers/{server}")
    };
    let r = call(web, "POST", &path, token, None).await;
    assert!(
        r.status == 201 || r.status == 202,
        "start {user}/{server}: {} {}",
        r.status,
        r.body
    );
    web.wait_for(user, server, ServerState::Running).await;
}

/// A 400 whose message names `field` and `rule`.
fn assert_refused(r: &Resp, what: &str, field: &str, rule: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.body);
    let message = r.message();
    assert!(
        message.contains(field) && message.contains(rule),
        "{what}: the message names {field} and {rule}: {message}"
    );
}

async fn colliding_pairs_both_start(db: TestDb) {
    let web = serve(&db, ServerNameRule::Jupyterhub).await;
    let store = &web.hub.store;
    let (_, p) = user(&web, "p").await;
    let (_, pq) = user(&web, "p-q").await;

    // p's server q, then p-q's default server: both start (no 409), each with its own client.
    start(&web, "p", "q", &p).await;
    start(&web, "p-q", "", &pq).await;
    let (p_q, pq_default) = (web.server("p", "q").await, web.server("p-q", "").await);
    let ids = [oauth_client_id("p", "q"), oauth_client_id("p-q", "")];
    assert_ne!(ids[0], ids[1]);
    for (id, server) in ids.iter().zip([&p_q, &pq_default]) {
        let client = store.get_oauth_client(id).await.expect("its client");
        assert_eq!(client.server_id, Some(server.id), "{id}");
    }
    let env = |u: &str, s: &str| web.backend.request(u, s).env["JUPYTERHUB_CLIENT_ID"].clone();
    assert_eq!(env("p", "q"), ids[0]);
    assert_eq!(env("p-q", ""), ids[1]);

    // Stopping one leaves the other's client alone.
    let r = call(&web, "DELETE", "/users/p/servers/q", &p, None).await;
    assert!(
        r.status == 204 || r.status == 202,
        "{} {}",
        r.status,
        r.body
    );
    web.wait_for("p", "q", ServerState::Stopped).await;
    assert!(store.get_oauth_client(&ids[0]).await.is_err());
    assert_eq!(
        store.get_oauth_client(&ids[1]).await.unwrap().server_id,
        Some(pq_default.id)
    );
    let r = call(&web, "DELETE", "/users/p-q/server", &pq, None).await;
    assert!(
        r.status == 204 || r.status == 202,
        "{} {}",
        r.status,
        r.body
    );
    web.wait_for("p-q", "", ServerState::Stopped).await;

    // A hub upgraded while p's server q ran still holds its client under JupyterHub's naming,
    // `jupyterhub-user-p-q`: p-q waits for that server to stop (409, not a takeover), and its
    // stop removes that client with the current one.
    start(&web, "p", "q", &p).await;
    let current = store.get_oauth_client(&ids[0]).await.unwrap();
    store
        .upsert_oauth_client(&NewOAuthClient {
            client_id: "jupyterhub-user-p-q".into(),
            description: current.description.clone(),
            secret: "an-earlier-secret-of-32-characters".into(),
            redirect_uri: current.redirect_uri.clone(),
            server_id: Some(p_q.id),
            allowed_scopes: current.allowed_scopes.clone(),
        })
        .await
        .unwrap();
    let r = call(&web, "POST", "/users/p-q/server", &pq, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = call(&web, "DELETE", "/users/p/servers/q", &p, None).await;
    assert!(
        r.status == 204 || r.status == 202,
        "{} {}",
        r.status,
        r.body
    );
    web.wait_for("p", "q", ServerState::Stopped).await;
    assert!(store.get_oauth_client("jupyterhub-user-p-q").await.is_err());
    start(&web, "p-q", "", &pq).await;
    assert_eq!(
        store
            .get_oauth_client("jupyterhub-user-p-q")
            .await
            .unwrap()
            .server_id,
        Some(pq_default.id)
    );
}

async fn jupyterhub_rule_by_default(db: TestDb) {
    let web = serve(&db, ServerNameRule::Jupyterhub).await;
    let (alice, token) = user(&web, "alice").await;
    let rule = "--server-name-rule jupyterhub";
    let too_long = "x".repeat(31);
    // API start and create: the name is the URL's `server_name`.
    for bad in ["2gpu", "a--b", too_long.as_str()] {
        let r = call(
            &web,
            "POST",
            &format!("/users/alice/servers/{bad}"),
            &token,
            None,
        )
        .await;
        assert_refused(&r, &format!("start {bad}"), "server_name", rule);
        let r = call(
            &web,
            "PUT",
            &format!("/users/alice/servers/{bad}"),
            &token,
            None,
        )
        .await;
        assert_refused(&r, &format!("create {bad}"), "server_name", rule);
    }
    let fits = "x".repeat(30);
    start(&web, "alice", &fits, &token).await;
    start(&web, "alice", "my-gpu-2", &token).await;

    // Rename: the field is `name`.
    let r = call(&web, "PUT", "/users/alice/servers/lab", &token, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = call(
        &web,
        "PATCH",
        "/users/alice/servers/lab",
        &token,
        Some(json!({"name": "9lab"})),
    )
    .await;
    assert_refused(&r, "rename to 9lab", "field \"name\"", rule);
    let r = call(
        &web,
        "PATCH",
        "/users/alice/servers/lab",
        &token,
        Some(json!({"name": "lab-two"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The spawn page of a new server.
    let mut browser = web.logged_in("alice").await;
    let page = browser.get("/hub/spawn/alice/2gpu").await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(
        page.body.contains("server_name") && page.body.contains(rule),
        "{}",
        page.body
    );
    let page = browser.get("/hub/spawn/alice/gpu").await;
    assert_eq!(page.status, 200, "{}", page.body);

    // A server named before the rule (a DNS label) keeps working, as in JupyterHub 6.
    web.hub.store.create_server(alice.id, "2old").await.unwrap();
    start(&web, "alice", "2old", &token).await;
    let page = browser.get("/hub/spawn/alice/2old").await;
    assert_eq!(page.status, 302, "{}", page.body);
}

async fn dns_label_rule(db: TestDb) {
    let web = serve(&db, ServerNameRule::DnsLabel).await;
    let (_, token) = user(&web, "alice").await;
    for good in ["2gpu", "a--b", &"x".repeat(63)] {
        start(&web, "alice", good, &token).await;
    }
    let r = call(
        &web,
        "POST",
        &format!("/users/alice/servers/{}", "x".repeat(64)),
        &token,
        None,
    )
    .await;
    assert_refused(
        &r,
        "64 characters",
        "server_name",
        "--server-name-rule dns-label",
    );
    let mut browser = web.logged_in("alice").await;
    let page = browser.get("/hub/spawn/alice/b--c").await;
    assert_eq!(page.status, 200, "{}", page.body);
}

stories!(
    colliding_pairs_both_start,
    jupyterhub_rule_by_default,
    dns_label_rule
);
