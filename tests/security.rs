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

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

use atelier::hub::HubConfig;
use atelier::store::{ServerState, Store, StoreError, TokenOwner};
use chrono::Utc;
use common::TestDb;
use common::hub::{
    ADMIN_PASSWORD, Browser, Resp, Served, TestBackend, assert_login_next, bind, dev_login_config,
    enc,
};
use openidconnect::core::{
    CoreGenderClaim, CoreIdToken, CoreIdTokenClaims, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::url::Url;
use openidconnect::{
    Audience, EmptyAdditionalClaims, EndUserUsername, IssuerUrl, JsonWebKeyId, JsonWebKeySet,
    Nonce, PrivateSigningKey, StandardClaims, SubjectIdentifier,
};
use serde_json::json;
use tokio::net::TcpListener;

// ---- the hub ---------------------------------------------------------------------------------

/// A hub with the dev login (admin `root` with `ADMIN_PASSWORD`) on a fresh SQLite file.
async fn serve(configure: impl FnOnce(&mut HubConfig)) -> Served {
    serve_on(bind().await, configure).await
}

async fn serve_on(listener: TcpListener, configure: impl FnOnce(&mut HubConfig)) -> Served {
    let db = TestDb::sqlite("atelier-security");
    let store = Store::connect(db.url()).await.expect("connect");
    Served::start_on(listener, store, TestBackend::new(), None, |base| {
        dev_login_config(base, configure)
    })
    .await
    .keeping(db)
}

// ---- next= through the dev login ------------------------------------------------------------

/// `next=<evil>` on the login page and in the posted form: the login lands on `/hub/home`.
async fn dev_login_next_stays_on_site(evil: &str) {
    let web = serve(|_| {}).await;
    assert_login_next(&web, evil, "/hub/home").await;
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
async fn refused_without_csrf(b: &mut Browser<'_>, path: &str, fields: &[(&str, &str)]) {
    let r = b.post(path, fields).await;
    assert_eq!(r.status, 403, "POST {path} without _xsrf: {}", r.body);
    assert!(r.body.contains("_xsrf"), "POST {path}: {}", r.body);
    assert!(
        !r.sets_session(),
        "POST {path} without _xsrf: no new session"
    );
    let mut wrong = fields.to_vec();
    wrong.push(("_xsrf", "not-the-token"));
    let r = b.post(path, &wrong).await;
    assert_eq!(r.status, 403, "POST {path} with a wrong _xsrf: {}", r.body);
}

#[tokio::test]
async fn csrf_less_login_is_refused() {
    let web = serve(|_| {}).await;
    let mut b = web.browser();
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

#[tokio::test]
async fn csrf_less_spawn_is_refused() {
    let web = serve(|_| {}).await;
    let mut alice = web.logged_in("alice").await;
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
    let mut alice = web.logged_in("alice").await;
    let xsrf = alice.xsrf().await;
    let r = alice.post("/hub/spawn/alice", &[("_xsrf", &xsrf)]).await;
    assert!(r.status == 302 || r.status == 303, "spawn: {}", r.body);
    web.wait_for("alice", "", ServerState::Running).await;
    refused_without_csrf(&mut alice, "/hub/stop/alice", &[("next", "/hub/home")]).await;
    let server = web.server("alice", "").await;
    assert_eq!(server.state, ServerState::Running, "the server still runs");
}

#[tokio::test]
async fn csrf_less_token_create_is_refused() {
    let web = serve(|_| {}).await;
    let mut alice = web.logged_in("alice").await;
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
    let mut alice = web.logged_in("alice").await;
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
    web.logged_in("alice").await;
    let mut root = web.logged_in("root").await;
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
    let mut alice = web.logged_in("alice").await;
    refused_without_csrf(&mut alice, "/hub/logout", &[]).await;
    assert_eq!(alice.get("/hub/home").await.status, 200, "still logged in");
}

// ---- the dev login and admin accounts ---------------------------------------------------------

/// Posts the dev login form for `name` with `password` from a fresh browser.
async fn dev_login<'a>(web: &'a Served, name: &str, password: &str) -> (Resp, Browser<'a>) {
    let mut b = web.browser();
    let page = b.get("/hub/login").await;
    let r = b
        .post(
            "/hub/login",
            &[
                ("_xsrf", &page.xsrf()),
                ("username", name),
                ("password", password),
            ],
        )
        .await;
    (r, b)
}

/// root makes alice an admin on the admin page.
async fn root_makes_admin(web: &Served, name: &str) {
    let mut root = web.logged_in("root").await;
    let xsrf = root.xsrf().await;
    let r = root
        .post(
            &format!("/hub/admin/users/{name}/admin"),
            &[("_xsrf", &xsrf), ("admin", "true")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(web.hub.store.get_user(name).await.unwrap().admin);
}

/// An account made admin after its creation (not an `--admin-user` name) asks for the admin
/// password in the dev login: none, or a wrong one, is refused with nothing logged in.
#[tokio::test]
async fn an_account_made_admin_needs_the_admin_password() {
    let web = serve(|_| {}).await;
    web.logged_in("alice").await;
    root_makes_admin(&web, "alice").await;

    for wrong in ["", "not-the-password"] {
        let (r, mut b) = dev_login(&web, "alice", wrong).await;
        assert_eq!(r.status, 403, "password {wrong:?}: {}", r.body);
        assert!(r.body.contains("Wrong admin password"), "{}", r.body);
        assert_eq!(
            b.get("/hub/admin").await.status,
            302,
            "no session for alice with password {wrong:?}"
        );
    }
    let (r, mut b) = dev_login(&web, "alice", ADMIN_PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(b.get("/hub/admin").await.status, 200, "alice is an admin");
}

/// A session the dev login opened without the admin password does not gain admin rights when
/// its account is made admin while it lasts: not on the pages, the API or through the proxy's
/// scopes; a new login with the password does.
#[tokio::test]
async fn a_passwordless_session_stays_without_admin_rights() {
    let web = serve(|_| {}).await;
    let mut alice = web.logged_in("alice").await;
    root_makes_admin(&web, "alice").await;

    assert_eq!(alice.get("/hub/home").await.status, 200, "still logged in");
    assert_eq!(alice.get("/hub/admin").await.status, 403, "admin page");
    let xsrf = alice.xsrf().await;
    let cookie = format!("atelier-session={}", alice.cookie.as_deref().unwrap());
    let headers = [("cookie", cookie.as_str()), ("x-xsrftoken", xsrf.as_str())];
    let root = web
        .request("GET", "/hub/api/users/root", &headers, String::new())
        .await;
    // JupyterHub 6.1.1's answers: 404 for a user out of reach, 403 without list:users.
    assert_eq!(root.status, 404, "read another user: {}", root.body);
    let users = web
        .request("GET", "/hub/api/users", &headers, String::new())
        .await;
    assert_eq!(users.status, 403, "list users: {}", users.body);
    let me = web
        .request("GET", "/hub/api/user", &headers, String::new())
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    let scopes = me.json()["scopes"].clone();
    assert!(
        !scopes
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "admin:users"),
        "the session holds no admin scope: {scopes}"
    );
    let promote = web
        .request(
            "PATCH",
            "/hub/api/users/root",
            &[
                ("cookie", cookie.as_str()),
                ("x-xsrftoken", xsrf.as_str()),
                ("content-type", "application/json"),
            ],
            json!({"admin": false}).to_string(),
        )
        .await;
    assert_eq!(promote.status, 403, "{}", promote.body);
    assert!(web.hub.store.get_user("root").await.unwrap().admin);

    let (r, mut b) = dev_login(&web, "alice", ADMIN_PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(b.get("/hub/admin").await.status, 200);
}

// ---- ID tokens through the callback, from a mock provider -------------------------------------

/// A 2048-bit RSA key made for these tests only (the one of `src/hub/oidc/tests.rs`).
const TEST_RSA_KEY: &str = include_str!("../src/hub/oidc/test_rsa_key.pem");

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
    let listener = bind().await;
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
async fn login_with_mock(spec: TokenSpec) -> (Resp, Served) {
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
    let listener = bind().await;
    let public = format!("http://{}", listener.local_addr().unwrap());
    let discovered = atelier::hub::oidc::discover(providers, &public)
        .await
        .unwrap();
    let web = serve_on(listener, |c| {
        c.dev_login = false;
        c.oidc_providers = discovered;
    })
    .await;

    let mut b = web.browser();
    let r = b.get("/hub/oauth_login/mock?next=/hub/home").await;
    assert_eq!(r.status, 302, "oauth_login: {}", r.body);
    let params: BTreeMap<String, String> = Url::parse(r.location())
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
    assert!(!r.sets_session(), "{what}: no session");
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
    assert_eq!(r.location(), "/hub/home");
    assert!(r.sets_session());
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
