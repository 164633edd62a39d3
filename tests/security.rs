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
        let (r, mut b) = web.dev_login("alice", wrong).await;
        assert_eq!(r.status, 403, "password {wrong:?}: {}", r.body);
        assert!(r.body.contains("Wrong admin password"), "{}", r.body);
        assert_eq!(
            b.get("/hub/admin").await.status,
            302,
            "no session for alice with password {wrong:?}"
        );
    }
    let (r, mut b) = web.dev_login("alice", ADMIN_PASSWORD).await;
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

    let (r, mut b) = web.dev_login("alice", ADMIN_PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(b.get("/hub/admin").await.status, 200);
}

// ---- same-origin pages: the fetch-metadata rule -----------------------------------------------

/// Headers of a request sent by a script of a page of the same origin (a user's server in path
/// mode): the victim's session cookie and `Sec-Fetch-Mode: <mode>`, as Chromium sends them.
fn script_headers<'a>(cookie: &'a str, mode: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("cookie", cookie),
        ("sec-fetch-mode", mode),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-dest", "empty"),
    ]
}

/// The attack of issue 9 in HTTP: a page of bob's server, opened by the admin, fetches
/// `/hub/home` with the admin's cookie to read its `_xsrf`, and sends
/// `PATCH /hub/api/users/bob {"admin": true}`. Neither step works: a script's read of a page is
/// served as if not logged in (to the login page, which a script does not get either), and a
/// cookie-authenticated API request without the token is 403. Bob stays a plain user.
#[tokio::test]
async fn a_script_with_the_admins_cookie_cannot_read_xsrf_nor_make_bob_admin() {
    let web = serve(|_| {}).await;
    web.logged_in("bob").await;
    let mut root = web.logged_in("root").await;
    let token = root.xsrf().await;
    let cookie = format!("atelier-session={}", root.cookie.clone().unwrap());

    for mode in ["cors", "no-cors", "same-origin"] {
        let home = web
            .request(
                "GET",
                "/hub/home",
                &script_headers(&cookie, mode),
                String::new(),
            )
            .await;
        assert_eq!(home.status, 302, "{mode} GET /hub/home: {}", home.body);
        assert!(home.location().starts_with("/hub/login"), "{mode}");
        assert!(!home.body.contains(&token), "{mode}: the token leaked");
        // fetch() follows the redirect, still as a script: no page, no session, no token.
        let login = web
            .request(
                "GET",
                home.location(),
                &script_headers(&cookie, mode),
                String::new(),
            )
            .await;
        assert_eq!(login.status, 403, "{mode} GET /hub/login: {}", login.body);
        assert!(
            !login.body.contains("name=\"_xsrf\""),
            "{mode}: {}",
            login.body
        );
        assert!(!login.sets_session(), "{mode}: the login page set a cookie");
        for page in ["/hub/token", "/hub/admin", "/hub/spawn/bob"] {
            let r = web
                .request("GET", page, &script_headers(&cookie, mode), String::new())
                .await;
            assert_eq!(r.status, 302, "{mode} GET {page}: {}", r.body);
            assert!(
                !r.body.contains(&token),
                "{mode} GET {page}: the token leaked"
            );
        }
        // The API: 403 for reads and writes alike.
        let r = web
            .request(
                "GET",
                "/hub/api/users/bob",
                &script_headers(&cookie, mode),
                String::new(),
            )
            .await;
        assert_eq!(r.status, 403, "{mode} GET /hub/api/users/bob: {}", r.body);
        assert!(r.message().contains("_xsrf"), "{}", r.body);
    }

    let mut patch = script_headers(&cookie, "cors");
    patch.push(("content-type", "application/json"));
    let r = web
        .request(
            "PATCH",
            "/hub/api/users/bob",
            &patch,
            json!({"admin": true}).to_string(),
        )
        .await;
    assert_eq!(r.status, 403, "PATCH without the token: {}", r.body);
    // Also a token that is not the session's.
    patch.push(("x-xsrftoken", "0123456789abcdef"));
    let r = web
        .request(
            "PATCH",
            "/hub/api/users/bob",
            &patch,
            json!({"admin": true}).to_string(),
        )
        .await;
    assert_eq!(r.status, 403, "PATCH with a wrong token: {}", r.body);
    assert!(
        !web.hub.store.get_user("bob").await.unwrap().admin,
        "bob became admin"
    );
}

/// What the rule lets through: top-level navigations (and clients that send no fetch
/// metadata) read the pages; scripts that send the session's token (the hub's own progress
/// script puts it in the query of its EventSource) use the API; tokens are not concerned.
#[tokio::test]
async fn navigations_and_requests_with_the_token_still_work() {
    let web = serve(|_| {}).await;
    web.logged_in("bob").await;
    let mut root = web.logged_in("root").await;
    let token = root.xsrf().await;
    let cookie = format!("atelier-session={}", root.cookie.clone().unwrap());

    let nav = [
        ("cookie", cookie.as_str()),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-dest", "document"),
    ];
    for page in ["/hub/home", "/hub/token", "/hub/admin"] {
        let r = web.request("GET", page, &nav, String::new()).await;
        assert_eq!(r.status, 200, "navigation to {page}: {}", r.body);
        assert_eq!(r.xsrf(), token, "{page}");
    }
    let r = web
        .request(
            "GET",
            "/hub/api/users/bob",
            &[("cookie", cookie.as_str())],
            String::new(),
        )
        .await;
    assert_eq!(r.status, 200, "no fetch metadata: {}", r.body);

    // A script that sends the token, in the header or the query.
    let mut with_header = script_headers(&cookie, "cors");
    with_header.push(("x-xsrftoken", &token));
    let r = web
        .request("GET", "/hub/api/users/bob", &with_header, String::new())
        .await;
    assert_eq!(r.status, 200, "cors GET with X-XSRFToken: {}", r.body);
    let r = web
        .request(
            "GET",
            &format!("/hub/api/users/bob?_xsrf={token}"),
            &script_headers(&cookie, "cors"),
            String::new(),
        )
        .await;
    assert_eq!(r.status, 200, "cors GET with ?_xsrf: {}", r.body);
    let r = web
        .request(
            "GET",
            &format!("/hub/home?_xsrf={token}"),
            &script_headers(&cookie, "cors"),
            String::new(),
        )
        .await;
    assert_eq!(r.status, 200, "a page with ?_xsrf: {}", r.body);
    let mut patch = with_header.clone();
    patch.push(("content-type", "application/json"));
    let r = web
        .request(
            "PATCH",
            "/hub/api/users/bob",
            &patch,
            json!({"admin": true}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "PATCH with the token: {}", r.body);
    assert!(web.hub.store.get_user("bob").await.unwrap().admin);

    // The progress script's stream URL carries the token: the hub's pages render it so.
    let home = web.request("GET", "/hub/home", &nav, String::new()).await;
    let home_tpl = include_str!("../templates/home.html");
    assert!(
        home_tpl.contains("data-progress-url=\"{{ s.progress_url }}?_xsrf={{ xsrf }}\""),
        "home.html's progress URL lost its _xsrf"
    );
    assert_eq!(home.status, 200);
    let progress = web
        .request(
            "GET",
            &format!("/hub/api/users/root/server/progress?_xsrf={token}"),
            &script_headers(&cookie, "cors"),
            String::new(),
        )
        .await;
    assert_ne!(
        progress.status, 403,
        "EventSource with ?_xsrf: {}",
        progress.body
    );

    // A token never needs _xsrf, whatever the fetch metadata says.
    let root_id = web.hub.store.get_user("root").await.unwrap().id;
    let (api_token, _) = web
        .hub
        .store
        .create_token(&atelier::store::NewToken::new(
            TokenOwner::User(root_id),
            vec!["admin:users".to_owned()],
        ))
        .await
        .unwrap();
    let auth = format!("token {api_token}");
    let r = web
        .request(
            "GET",
            "/hub/api/users/bob",
            &[
                ("authorization", auth.as_str()),
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-site", "cross-site"),
            ],
            String::new(),
        )
        .await;
    assert_eq!(r.status, 200, "token with fetch metadata: {}", r.body);
}

// ---- ID tokens through the callback, from a mock provider -------------------------------------

/// A 2048-bit RSA key made for these tests only (the one of `src/hub/auth/oidc/tests.rs`).
const TEST_RSA_KEY: &str = include_str!("../src/hub/auth/oidc/test_rsa_key.pem");

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
    let providers = atelier::hub::auth::oidc::parse_config(
        &config,
        true,
        |_| unreachable!(),
        |_| Some("mock-secret".to_owned()),
    )
    .unwrap();
    // The hub's listener first: the providers are discovered with its public URL.
    let listener = bind().await;
    let public = format!("http://{}", listener.local_addr().unwrap());
    let discovered = atelier::hub::auth::oidc::discover(providers, &public)
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
