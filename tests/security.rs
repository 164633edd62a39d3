//! The security cases of the hub's login that do not need a real OpenID provider, one test
//! each: `next=` through the dev login, every form refusing a POST without its CSRF token (and
//! nothing changed), and ID tokens the real provider cannot be made to send (expired, for
//! another audience, of another issuer) through the whole callback, from a mock OpenID provider
//! served here that signs with a test-only key.
//!
//! The hub is served on 127.0.0.1:0 over a fresh SQLite file; a browser keeps its session
//! cookie and never follows redirects. The single sign-on cases with the real provider are in
//! `tests/oidc.rs`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier::backend::{
    BackendError, BackendStatus, ProgressEvent, SpawnRequest, Spawned, WorkspaceBackend,
};
use atelier::hub::views::hash_admin_password;
use atelier::hub::{self, Hub, HubConfig, HubState};
use atelier::store::{ServerState, Store, StoreError, TokenOwner};
use chrono::Utc;
use common::TestDb;
use futures::future::BoxFuture;
use openidconnect::core::{
    CoreGenderClaim, CoreIdToken, CoreIdTokenClaims, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::url::Url;
use openidconnect::{
    Audience, EmptyAdditionalClaims, EndUserUsername, IssuerUrl, JsonWebKeyId, JsonWebKeySet,
    Nonce, PrivateSigningKey, StandardClaims, SubjectIdentifier, reqwest,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const ADMIN_PASSWORD: &str = "0123456789abcdef0123456789abcdef";

// ---- a backend running tiny HTTP servers ----------------------------------------------------

#[derive(Default)]
struct TinyBackend {
    servers: Mutex<HashMap<u64, (u16, JoinHandle<()>)>>,
    next: AtomicU64,
}

fn handle_id(handle: &Value) -> Result<u64, BackendError> {
    handle
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| BackendError::BadHandle(handle.to_string()))
}

impl WorkspaceBackend for TinyBackend {
    fn kind(&self) -> &'static str {
        "tiny"
    }

    fn start<'a>(
        &'a self,
        _request: SpawnRequest,
        _progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>> {
        Box::pin(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().unwrap().port();
            let app = axum::Router::new().fallback(|| async { "a workspace" });
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).into_future().await;
            });
            let id = self.next.fetch_add(1, Ordering::SeqCst);
            self.servers.lock().unwrap().insert(id, (port, task));
            Ok(Spawned {
                url: format!("http://127.0.0.1:{port}"),
                handle: json!({"id": id}),
            })
        })
    }

    fn stop<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if let Ok(id) = handle_id(handle) {
                let running = self.servers.lock().unwrap().remove(&id);
                if let Some((_, task)) = running {
                    task.abort();
                }
            }
            Ok(())
        })
    }

    fn poll<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<BackendStatus, BackendError>> {
        Box::pin(async move {
            let id = handle_id(handle)?;
            match self.servers.lock().unwrap().get(&id) {
                Some((port, _)) => Ok(BackendStatus::Running {
                    url: format!("http://127.0.0.1:{port}"),
                }),
                None => Ok(BackendStatus::Stopped { reason: None }),
            }
        })
    }
}

// ---- the hub and a browser -------------------------------------------------------------------

struct Served {
    hub: HubState,
    base: String,
    _db: TestDb,
}

/// A hub with the dev login (admin `root` with [`ADMIN_PASSWORD`]) on a fresh SQLite file.
async fn serve(configure: impl FnOnce(&mut HubConfig)) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve_on(listener, configure).await
}

async fn serve_on(listener: TcpListener, configure: impl FnOnce(&mut HubConfig)) -> Served {
    let db = TestDb::sqlite("atelier-security");
    let store = Store::connect(db.url()).await.expect("connect");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = HubConfig::new(&base, &format!("{base}/hub/api"));
    config.dev_login = true;
    config.admin_users = vec!["root".to_owned()];
    config.admin_password_hash = Some(hash_admin_password(ADMIN_PASSWORD));
    config.spawn_timeout_secs = 60;
    configure(&mut config);
    let hub = Hub::new(store, Arc::new(TinyBackend::default()), config);
    tokio::spawn(axum::serve(listener, hub::router(hub.clone())).into_future());
    Served { hub, base, _db: db }
}

struct Reply {
    status: u16,
    location: String,
    body: String,
    sets_session: bool,
}

impl Reply {
    /// The `_xsrf` value of the page's first form.
    fn xsrf(&self) -> String {
        self.body
            .split("name=\"_xsrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no _xsrf field in {}", self.body))
            .to_owned()
    }
}

struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl Browser {
    fn new(served: &Served) -> Browser {
        Browser {
            base: served.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Reply {
        let request = match &self.cookie {
            Some(c) => request.header("cookie", format!("atelier-session={c}")),
            None => request,
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let mut sets_session = false;
        for set in response.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            if let Some(rest) = set.strip_prefix("atelier-session=") {
                let value = rest.split(';').next().unwrap_or("");
                if value.is_empty() || set.contains("Max-Age=0") {
                    self.cookie = None;
                } else {
                    sets_session = true;
                    self.cookie = Some(value.to_owned());
                }
            }
        }
        let body = response.text().await.unwrap_or_default();
        Reply {
            status,
            location,
            body,
            sets_session,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let request = self.http.get(self.url(path));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let request = self.http.post(self.url(path)).form(form);
        self.send(request).await
    }

    /// Logs in with the dev login (root with the admin password).
    async fn log_in(&mut self, name: &str) -> &mut Browser {
        let page = self.get("/hub/login").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let password = if name == "root" { ADMIN_PASSWORD } else { "" };
        let r = self
            .post(
                "/hub/login",
                &[
                    ("_xsrf", &page.xsrf()),
                    ("username", name),
                    ("password", password),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "login as {name}: {}", r.body);
        self
    }

    /// The session's CSRF token (from the home page).
    async fn xsrf(&mut self) -> String {
        let home = self.get("/hub/home").await;
        assert_eq!(home.status, 200, "{}", home.body);
        home.xsrf()
    }
}

fn enc(s: &str) -> String {
    atelier::hub::views::url_encode(s)
}

// ---- next= through the dev login ------------------------------------------------------------

/// `next=<evil>` on the login page and in the posted form: the login lands on `/hub/home`.
async fn dev_login_next_stays_on_site(evil: &str) {
    let web = serve(|_| {}).await;
    let mut b = Browser::new(&web);
    let page = b.get(&format!("/hub/login?next={}", enc(evil))).await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("evil.example"),
        "next={evil} echoed on the login page"
    );
    let r = b
        .post(
            "/hub/login",
            &[
                ("_xsrf", &page.xsrf()),
                ("username", "alice"),
                ("next", evil),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "next={evil}: {}", r.body);
    assert_eq!(r.location, "/hub/home", "next={evil} after the dev login");
    let again = b.get(&format!("/hub/login?next={}", enc(evil))).await;
    assert_eq!(again.status, 302);
    assert_eq!(again.location, "/hub/home", "next={evil} when logged in");
}

#[tokio::test]
async fn dev_login_next_absolute_url_stays_on_site() {
    dev_login_next_stays_on_site("https://evil.example").await;
}

#[tokio::test]
async fn dev_login_next_scheme_relative_url_stays_on_site() {
    dev_login_next_stays_on_site("//evil.example").await;
}

#[tokio::test]
async fn dev_login_next_backslash_url_stays_on_site() {
    dev_login_next_stays_on_site("/\\evil.example").await;
}

// ---- CSRF-less POSTs ------------------------------------------------------------------------

/// POSTs `fields` to `path` without a `_xsrf` and with a wrong one: 403 both times.
async fn refused_without_csrf(b: &mut Browser, path: &str, fields: &[(&str, &str)]) {
    let r = b.post(path, fields).await;
    assert_eq!(r.status, 403, "POST {path} without _xsrf: {}", r.body);
    assert!(r.body.contains("_xsrf"), "POST {path}: {}", r.body);
    assert!(!r.sets_session, "POST {path} without _xsrf: no new session");
    let mut wrong = fields.to_vec();
    wrong.push(("_xsrf", "not-the-token"));
    let r = b.post(path, &wrong).await;
    assert_eq!(r.status, 403, "POST {path} with a wrong _xsrf: {}", r.body);
}

#[tokio::test]
async fn csrf_less_login_is_refused() {
    let web = serve(|_| {}).await;
    let mut b = Browser::new(&web);
    // Without any session, then with the login page's session but no token.
    let r = b.post("/hub/login", &[("username", "mallory")]).await;
    assert_eq!(r.status, 403, "login without a session");
    b.get("/hub/login").await;
    refused_without_csrf(&mut b, "/hub/login", &[("username", "mallory")]).await;
    assert!(
        matches!(
            web.hub.store.get_user("mallory").await,
            Err(StoreError::NotFound)
        ),
        "no user was created"
    );
    assert_eq!(b.get("/hub/home").await.status, 302, "not logged in");
}

async fn wait_for(web: &Served, user: &str, state: ServerState) {
    for _ in 0..1200 {
        match web.hub.store.get_server_by_names(user, "").await {
            Ok(s) if s.state == state => return,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("{user}'s server never became {}", state.as_str());
}

#[tokio::test]
async fn csrf_less_spawn_is_refused() {
    let web = serve(|_| {}).await;
    let mut alice = Browser::new(&web);
    alice.log_in("alice").await;
    refused_without_csrf(&mut alice, "/hub/spawn/alice", &[]).await;
    assert!(
        matches!(
            web.hub.store.get_server_by_names("alice", "").await,
            Err(StoreError::NotFound)
        ),
        "no server was started"
    );
}

#[tokio::test]
async fn csrf_less_stop_is_refused() {
    let web = serve(|_| {}).await;
    let mut alice = Browser::new(&web);
    alice.log_in("alice").await;
    let xsrf = alice.xsrf().await;
    let r = alice.post("/hub/spawn/alice", &[("_xsrf", &xsrf)]).await;
    assert!(r.status == 302 || r.status == 303, "spawn: {}", r.body);
    wait_for(&web, "alice", ServerState::Running).await;
    refused_without_csrf(&mut alice, "/hub/stop/alice", &[("next", "/hub/home")]).await;
    let server = web
        .hub
        .store
        .get_server_by_names("alice", "")
        .await
        .unwrap();
    assert_eq!(server.state, ServerState::Running, "the server still runs");
}

#[tokio::test]
async fn csrf_less_token_create_is_refused() {
    let web = serve(|_| {}).await;
    let mut alice = Browser::new(&web);
    alice.log_in("alice").await;
    refused_without_csrf(&mut alice, "/hub/token", &[("note", "stolen")]).await;
    let me = web.hub.store.get_user("alice").await.unwrap();
    assert!(
        web.hub
            .store
            .list_tokens(&TokenOwner::User(me.id))
            .await
            .unwrap()
            .is_empty(),
        "no token was created"
    );
}

#[tokio::test]
async fn csrf_less_token_revoke_is_refused() {
    let web = serve(|_| {}).await;
    let mut alice = Browser::new(&web);
    alice.log_in("alice").await;
    let xsrf = alice.xsrf().await;
    let r = alice
        .post("/hub/token", &[("_xsrf", &xsrf), ("note", "mine")])
        .await;
    assert_eq!(r.status, 200, "token with the CSRF token: {}", r.body);
    let me = web.hub.store.get_user("alice").await.unwrap();
    let tokens = web
        .hub
        .store
        .list_tokens(&TokenOwner::User(me.id))
        .await
        .unwrap();
    assert_eq!(tokens.len(), 1);
    let path = format!("/hub/token/{}/revoke", tokens[0].id);
    refused_without_csrf(&mut alice, &path, &[]).await;
    assert_eq!(
        web.hub
            .store
            .list_tokens(&TokenOwner::User(me.id))
            .await
            .unwrap()
            .len(),
        1,
        "the token was not revoked"
    );
}

#[tokio::test]
async fn csrf_less_admin_actions_are_refused() {
    let web = serve(|_| {}).await;
    Browser::new(&web).log_in("alice").await;
    let mut root = Browser::new(&web);
    root.log_in("root").await;
    assert_eq!(root.get("/hub/admin").await.status, 200, "root is an admin");
    refused_without_csrf(&mut root, "/hub/admin/users", &[("name", "eve")]).await;
    assert!(
        matches!(
            web.hub.store.get_user("eve").await,
            Err(StoreError::NotFound)
        ),
        "add user: eve was not created"
    );
    refused_without_csrf(
        &mut root,
        "/hub/admin/users/alice/admin",
        &[("admin", "true")],
    )
    .await;
    assert!(
        !web.hub.store.get_user("alice").await.unwrap().admin,
        "set admin: alice is not an admin"
    );
    refused_without_csrf(&mut root, "/hub/admin/users/alice/delete", &[]).await;
    assert!(
        web.hub.store.get_user("alice").await.is_ok(),
        "delete user: alice still exists"
    );
}

#[tokio::test]
async fn csrf_less_logout_is_refused() {
    let web = serve(|_| {}).await;
    let mut alice = Browser::new(&web);
    alice.log_in("alice").await;
    refused_without_csrf(&mut alice, "/hub/logout", &[]).await;
    assert_eq!(alice.get("/hub/home").await.status, 200, "still logged in");
}

// ---- ID tokens through the callback, from a mock provider -------------------------------------

/// A 2048-bit RSA key made for these tests only (the one of `src/hub/oidc/tests.rs`).
const TEST_RSA_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEA5XPk03HbOBLu2uQMRycQIK1kD8TYKzTZdKNPkwNcy/xCWuXN
NAVBtWkMfLkIz94YiZLMmLeT7b1AayL5N26c06Y3zQIvGTAwxJ+HTwzFbC7AhQ4T
3Y/gXmNPBV0fbB71ETf3xABgbIloKOw5VbZ3xhYAYdOU2t/IWPHq9MineUKP2dh7
s5Iu7kW5w1ccAM/plZiAAOT4dT5LWo96OfB2g+ft2PAaSsdUIA2SW7/rQLvdyY0c
Ksg9RjZ8xrH7nZdMuAmiaNDYUoXYIQFhw+AA52B8JFGc2dPdaRjW+PFS+v7SIT40
xwIYMaUND6CUMeiEPHYEbnx9gEzXfzzSjNJimQIDAQABAoIBAC+v3PRW+uUWBj9G
2whkpXTtJFkko3qjUrhrgou+zKf2ZwIGNZYkq4nc6cP4Hs04zue0s0HgEWX9Caja
jWoIWp6gMoOwewJkohYTQ6dZs6QuuUNN8DIBh3OGdzNZrcCmVG9+Lse0/lVAX331
zlqygAUSqISsWQj+LmDR8m9qTmgkWPedrXMmxMGnTtOmTJCjfXDkNB70FbJVBxEI
df4fy3wzsmsj09j9MgO4U50JN/ESkn/enHQMeBORBk2ZkuYja6NariFgm3RZxzKx
BPj97tdg4kgZ/qh83WYmw+Qw5vtgsnut6tVcceDWuWx0LvvXdWIIjaydLsbOLm0q
qgFEc2MCgYEA/EeG38HIVedNaRDGN2cMSVea14DSjXPtFjULIo0jfxv+bnZdqD0n
ZBBh/Xq3t44xJiGRXnph9De304sdeLkTeCrePgd9wN8Is9whv2qLQft8XTI9/gQ0
LiP1UmNbD2W3BVe+PH/+ijG9LBA+9unBbuRZVEz0MwlWJ2POPnlpb6sCgYEA6NYv
fqCPmAG3K+NPGKodbYtZY0/slv8y07rai9IYJSmyUnB8OtYcwa+GwWhN4rQVMvaS
yrrcTE65t9DCim9W9gBxoUtZONUKewwKzbzJoHoNwjXbOHd80lnbfAiIawdrm3+/
2FbQvywEJFZh3CHsoEdIO4qNoXowEx+EqNiGgssCgYBpzh3U7lL1JEMlE3Hufnt6
rxEz3MVxqfL/Y1O+M+91OeplraLuEmfY4b4XL0ap5yrZ0S5Er5Mxd8TTJf9ASG7P
8TqwTTgCkgf2VxaYTzkEfVLVS2MQi/bOeypCWYUxWfl+diRE/3FjyCSMvGuL5tHH
jmGgp32rgfjuID+5l/YObQKBgGAH5vLdGhxhqMCrMfZEQ3ro3Gc/kZ79hmMZUAYX
EupQ9kFWL4a8xIOF95hRgr4b9Bpe5FBFHZNDbQnJSlN6dG1l5XfW8eekxnvVjacp
VCeh74bIW7BAZ/UCJqpTgqBSISmzWNbLh7ExYEv0bMw0GbpJbBtSm/Obx7Q7baWO
GHxdAoGBAO4RAWhSaJLDHhqjw5jdTM/P2y1iovh433RM5Zir8psB/JrQZKVyFP+0
G5IeN87f8/jb6iQBJm6yUvgE2jI2Ixsd+rpE5pyxLGSh75BC2gE9YdPG4kvvJvqy
SuQQ9qwxIscncGoKVoZKvzq0bKULeL5nOVG0TZ0oVJJ88+knIXNe
-----END RSA PRIVATE KEY-----
";

const MOCK_CLIENT_ID: &str = "atelier";

fn mock_key() -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(TEST_RSA_KEY, Some(JsonWebKeyId::new("k1".into())))
        .expect("the test key")
}

/// What the mock's token endpoint puts in the next ID token.
#[derive(Clone, Default)]
struct TokenSpec {
    /// `None`: the mock's own issuer.
    issuer: Option<String>,
    /// `None`: the hub's client id.
    audience: Option<String>,
    /// Seconds from now (negative: expired).
    expires_in: i64,
    /// Empty: the nonce of the hub's authorization request.
    nonce: String,
}

/// A minimal OpenID provider: discovery, JWKS and a token endpoint issuing the ID token of its
/// [`TokenSpec`], signed by the test key (the hub's authorization request is never visited: the
/// test calls the callback itself, with the request's `state`).
async fn mock_provider(spec: Arc<Mutex<TokenSpec>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let jwks =
        serde_json::to_value(JsonWebKeySet::new(vec![mock_key().as_verification_key()])).unwrap();
    let discovery = json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "jwks_uri": format!("{url}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let own = url.clone();
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || async move { axum::Json(jwks) }),
        )
        .route(
            "/token",
            axum::routing::post(move || async move {
                let spec = spec.lock().unwrap().clone();
                let now = Utc::now();
                let claims = CoreIdTokenClaims::new(
                    IssuerUrl::new(spec.issuer.unwrap_or(own)).unwrap(),
                    vec![Audience::new(
                        spec.audience.unwrap_or_else(|| MOCK_CLIENT_ID.to_owned()),
                    )],
                    now + chrono::Duration::seconds(spec.expires_in),
                    now - chrono::Duration::seconds(600),
                    StandardClaims::<CoreGenderClaim>::new(SubjectIdentifier::new(
                        "alice-sub".into(),
                    ))
                    .set_preferred_username(Some(EndUserUsername::new("alice".into()))),
                    EmptyAdditionalClaims {},
                )
                .set_nonce(Some(Nonce::new(spec.nonce)));
                let token = CoreIdToken::new(
                    claims,
                    &mock_key(),
                    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                    None,
                    None,
                )
                .unwrap();
                axum::Json(json!({
                    "access_token": "mock-access-token",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": token.to_string(),
                }))
            }),
        );
    tokio::spawn(axum::serve(listener, app).into_future());
    url
}

/// Logs in through the mock provider whose next ID token follows `spec` (the nonce filled in
/// from the hub's authorization request): the callback's reply and the hub.
async fn login_with_mock(spec: TokenSpec) -> (Reply, Served) {
    let shared = Arc::new(Mutex::new(spec));
    let issuer = mock_provider(shared.clone()).await;
    let config = format!(
        r#"{{"providers": [{{"name": "mock", "issuer": "{issuer}", "client_id": "{MOCK_CLIENT_ID}",
            "client_secret_env": "UNUSED"}}]}}"#
    );
    let providers = atelier::hub::oidc::parse_config(
        &config,
        true,
        |_| unreachable!(),
        |_| Some("mock-secret".to_owned()),
    )
    .unwrap();
    // The hub's listener first: the providers are discovered with its public URL.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let discovered = atelier::hub::oidc::discover(providers, &public)
        .await
        .unwrap();
    let web = serve_on(listener, |c| {
        c.dev_login = false;
        c.oidc_providers = discovered;
    })
    .await;

    let mut b = Browser::new(&web);
    let r = b.get("/hub/oauth_login/mock?next=/hub/home").await;
    assert_eq!(r.status, 302, "oauth_login: {}", r.body);
    let params: BTreeMap<String, String> = Url::parse(&r.location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    {
        let mut spec = shared.lock().unwrap();
        if spec.nonce.is_empty() {
            spec.nonce = params["nonce"].clone();
        }
    }
    let r = b
        .get(&format!(
            "/hub/oauth_callback/mock?code=mock-code&state={}",
            enc(&params["state"])
        ))
        .await;
    (r, web)
}

fn valid() -> TokenSpec {
    TokenSpec {
        expires_in: 300,
        ..TokenSpec::default()
    }
}

async fn assert_id_token_refused(spec: TokenSpec, what: &str, says: &str) {
    let (r, web) = login_with_mock(spec).await;
    assert_eq!(r.status, 403, "{what}: {}", r.body);
    assert!(
        r.body.contains(says),
        "{what}: the page says {says:?}: {}",
        r.body
    );
    assert!(!r.sets_session, "{what}: no session");
    assert!(
        matches!(
            web.hub.store.get_user("alice").await,
            Err(StoreError::NotFound)
        ),
        "{what}: no user"
    );
}

#[tokio::test]
async fn a_valid_id_token_of_the_mock_provider_logs_in() {
    // The control of the refusals below: the same flow with a valid token succeeds.
    let (r, web) = login_with_mock(valid()).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location, "/hub/home");
    assert!(r.sets_session);
    assert!(web.hub.store.get_user("alice").await.is_ok());
}

#[tokio::test]
async fn an_expired_id_token_is_refused_at_the_callback() {
    let spec = TokenSpec {
        expires_in: -120,
        ..valid()
    };
    assert_id_token_refused(spec, "expired ID token", "expired").await;
}

#[tokio::test]
async fn an_id_token_for_another_audience_is_refused_at_the_callback() {
    let spec = TokenSpec {
        audience: Some("another-client".into()),
        ..valid()
    };
    assert_id_token_refused(spec, "ID token for another audience", "audience").await;
}

#[tokio::test]
async fn an_id_token_of_another_issuer_is_refused_at_the_callback() {
    let spec = TokenSpec {
        issuer: Some("https://evil.example".into()),
        ..valid()
    };
    assert_id_token_refused(spec, "ID token of another issuer", "issuer").await;
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_refused_at_the_callback() {
    let spec = TokenSpec {
        nonce: "not-the-request-nonce".into(),
        ..valid()
    };
    assert_id_token_refused(spec, "ID token with another nonce", "nonce").await;
}
