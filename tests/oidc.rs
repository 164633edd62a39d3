//! Single sign-on against a real OpenID provider: the npm `oidc-provider` (OpenID Certified)
//! started from `e2e/oidc/provider.mjs` on 127.0.0.1, with its development login form driven
//! over HTTP like a browser (a cookie jar, no redirect followed by itself). The hub is served on
//! 127.0.0.1:0 over a fresh SQLite store.
//!
//! Needs node: runs with `ATELIER_PEERS=1` (the provider is started by `tests/common/oidc.rs`,
//! which installs `e2e/oidc/node_modules` first when missing), otherwise says SKIPPED. The ID
//! token checks the provider cannot be made to fail (expiry, another issuer or audience, rotated
//! keys) are unit tests in `src/hub/auth/oidc/tests.rs` with tokens signed there.

mod common;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::PathBuf;

use atelier::hub;
use atelier::hub::serve::{HubArgs, build_hub};
use atelier::store::tokens::generate_token;
use atelier::store::{Store, StoreError};
use common::oidc::{CLIENT_ID, CLIENT_SECRET, OidcPeer, free_port, peers_enabled, start_provider};
use openidconnect::reqwest;
use openidconnect::url::Url;
use sqlx::Connection;
use tokio::net::TcpListener;

/// A browser: one cookie jar for every host (cookie names do not collide here), no redirects
/// followed by itself.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

struct Reply {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Reply {
        let cookie_header: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let request = if cookie_header.is_empty() {
            request
        } else {
            request.header("cookie", cookie_header.join("; "))
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if common::cookie_cleared(c) {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        let body = response.text().await.unwrap_or_default();
        Reply {
            status,
            location,
            set_cookies,
            body,
        }
    }

    async fn get(&mut self, url: &str) -> Reply {
        let request = self.http.get(url);
        self.send(request).await
    }

    async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Reply {
        let request = self.http.post(url).form(form);
        self.send(request).await
    }
}

fn absolute(base: &str, location: &str) -> String {
    Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

struct World {
    hub_url: String,
    peer: OidcPeer,
    store: Store,
    db_path: PathBuf,
    state_dir: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db_path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

async fn world() -> World {
    world_with(&[], false).await
}

/// Serves the provider's discovery document on 127.0.0.1 with `issuer` replaced by its own URL
/// (every endpoint and the JWKS still the provider's): a hub configured with this URL as the
/// issuer gets ID tokens of another issuer (the real provider's), signed by keys it trusts.
async fn mix_up_discovery(real_issuer: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (real, own) = (real_issuer.to_owned(), url.clone());
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let (real, own) = (real.clone(), own.clone());
            async move {
                let text = reqwest::get(format!("{real}/.well-known/openid-configuration"))
                    .await
                    .expect("the provider's discovery")
                    .text()
                    .await
                    .expect("discovery text");
                let mut doc: serde_json::Value =
                    serde_json::from_str(&text).expect("discovery JSON");
                doc["issuer"] = serde_json::Value::String(own);
                axum::Json(doc)
            }
        }),
    );
    tokio::spawn(axum::serve(listener, app).into_future());
    url
}

/// A hub with `admin_users`; with `mix_up`, configured with the issuer of
/// [`mix_up_discovery`] instead of the provider's.
async fn world_with(admin_users: &[&str], mix_up: bool) -> World {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_url = format!("http://{}", listener.local_addr().unwrap());
    let peer = start_provider(&hub_url, free_port()).await;
    let issuer = if mix_up {
        mix_up_discovery(&peer.issuer).await
    } else {
        peer.issuer.clone()
    };
    let db_path =
        std::env::temp_dir().join(format!("atelier-oidc-{}.sqlite", &generate_token()[..12]));
    let store = Store::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    // Through `atelier hub --oidc-config`: a YAML file naming a secret file.
    let secret_path =
        std::env::temp_dir().join(format!("atelier-oidc-{}.secret", &generate_token()[..12]));
    std::fs::write(&secret_path, format!("{CLIENT_SECRET}\n")).unwrap();
    let config_path =
        std::env::temp_dir().join(format!("atelier-oidc-{}.yaml", &generate_token()[..12]));
    std::fs::write(
        &config_path,
        format!(
            "providers:\n  - name: test\n    display_name: Test IdP\n    issuer: {}\n    \
             client_id: {CLIENT_ID}\n    client_secret_file: {}\n    \
             admin_groups: [ocean-physics]\n    allowed_groups: [ocean-physics, vo.example.org]\n",
            issuer,
            secret_path.display()
        ),
    )
    .unwrap();
    let state_dir = std::env::temp_dir().join(format!("atelier-oidc-{}", &generate_token()[..12]));
    let args = HubArgs {
        public_url: hub_url.clone(),
        state_dir: state_dir.clone(),
        oidc_config: Some(config_path.clone()),
        admin_users: admin_users.iter().map(|a| (*a).to_owned()).collect(),
        ..HubArgs::defaults()
    };
    let hub = build_hub(&args, store.clone(), None).await.unwrap();
    let _ = std::fs::remove_file(&config_path);
    let _ = std::fs::remove_file(&secret_path);
    assert!(!hub.config.dev_login, "no dev login without --dev-login");
    assert!(
        !format!("{:?}", hub.config).contains(CLIENT_SECRET),
        "the secret is never shown"
    );
    tokio::spawn(axum::serve(listener, hub::router(hub)).into_future());
    World {
        hub_url,
        peer,
        store,
        db_path,
        state_dir,
    }
}

impl World {
    /// Restarts the provider on its port (with a new signing key).
    async fn restart_provider(&mut self) {
        let _ = self.peer.child.kill().await;
        self.peer = start_provider(&self.hub_url, self.peer.port).await;
    }

    /// Starts a login at the hub and goes through the provider (its login form when it asks
    /// for one) up to the redirect back to the hub: the callback URL, not yet visited.
    async fn to_callback(&self, browser: &mut Browser, user: &str, next: &str) -> String {
        let start = format!(
            "{}/hub/oauth_login/test?next={}",
            self.hub_url,
            atelier::hub::page::url_encode(next)
        );
        let r = browser.get(&start).await;
        assert_eq!(r.status, 302, "oauth_login: {}", r.body);
        let mut url = r.location.unwrap();
        assert!(url.starts_with(&self.peer.issuer), "{url}");
        let params: BTreeMap<String, String> = Url::parse(&url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(params["code_challenge_method"], "S256");
        assert!(params.contains_key("nonce") && params.contains_key("state"));
        for _ in 0..10 {
            if url.starts_with(&format!("{}/hub/oauth_callback/", self.hub_url)) {
                return url;
            }
            let r = browser.get(&url).await;
            if r.status == 200 && r.body.contains("name=\"login\"") {
                let action = r
                    .body
                    .split("action=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .expect("the login form's action");
                let action = absolute(&url, action);
                let r = browser
                    .post_form(
                        &action,
                        &[("prompt", "login"), ("login", user), ("password", "x")],
                    )
                    .await;
                assert!(
                    r.status == 302 || r.status == 303,
                    "login form: {}",
                    r.status
                );
                url = absolute(&action, &r.location.unwrap());
            } else {
                assert!(
                    r.status == 302 || r.status == 303,
                    "provider at {url}: {} {}",
                    r.status,
                    r.body
                );
                url = absolute(&url, &r.location.unwrap());
            }
        }
        panic!("no redirect back to the hub");
    }

    async fn login(&self, browser: &mut Browser, user: &str, next: &str) -> Reply {
        let callback = self.to_callback(browser, user, next).await;
        browser.get(&callback).await
    }

    async fn groups(&self, user: &str) -> Vec<String> {
        self.store.get_user_detail(user, true).await.unwrap().groups
    }
}

fn has_session_cookie(r: &Reply) -> bool {
    r.set_cookies
        .iter()
        .any(|c| c.starts_with("atelier-session=") && !c.starts_with("atelier-session=;"))
}

fn with_param(url: &str, key: &str, value: &str) -> String {
    let mut parsed = Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == key {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

fn param(url: &str, key: &str) -> String {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_with_oidc_provider() {
    if !peers() {
        return;
    }
    let mut w = world().await;

    // The login page offers the provider; the dev login is off.
    let mut anon = Browser::new();
    let page = anon
        .get(&format!("{}/hub/login?next=/hub/token", w.hub_url))
        .await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("/hub/oauth_login/test?next=%2Fhub%2Ftoken"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Log in with Test IdP"));
    assert!(!page.body.contains("name=\"username\""));

    // alice: logged in, back at next=, group ocean-physics (an admin group).
    let mut alice = Browser::new();
    let callback = w.to_callback(&mut alice, "alice", "/hub/token").await;
    let r = alice.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some("/hub/token"));
    assert!(has_session_cookie(&r));
    assert_eq!(w.groups("alice").await, ["ocean-physics"]);
    assert!(w.store.get_user("alice").await.unwrap().admin);
    let home = alice.get(&format!("{}/hub/home", w.hub_url)).await;
    assert_eq!(home.status, 200, "logged in");

    // bob: AARC-G002 entitlement → the VO and its role.
    let mut bob = Browser::new();
    let r = w.login(&mut bob, "bob", "/hub/home").await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(has_session_cookie(&r));
    assert_eq!(
        w.groups("bob").await,
        ["vo.example.org", "vo.example.org:role=member"]
    );
    assert!(!w.store.get_user("bob").await.unwrap().admin);

    // Another subject whose claim also normalises to "alice": a user of its own.
    let mut other = Browser::new();
    let r = w.login(&mut other, "alice-other", "/hub/home").await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(w.groups("alice-2").await, ["ocean-physics"]);
    let mut again = Browser::new();
    let r = w.login(&mut again, "alice", "/hub/home").await;
    assert_eq!(r.status, 302);
    let who = again.get(&format!("{}/hub/home", w.hub_url)).await;
    assert!(
        who.body.contains("alice") && !who.body.contains("alice-2"),
        "alice stays alice"
    );

    // carol is in none of the allowed groups: a 403 page, no user, no session.
    let mut carol = Browser::new();
    let r = w.login(&mut carol, "carol", "/hub/home").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("not authorised"), "{}", r.body);
    assert!(!has_session_cookie(&r));
    assert!(matches!(
        w.store.get_user("carol").await,
        Err(StoreError::NotFound)
    ));

    // Logout ends the session and continues at the provider's end_session_endpoint.
    let r = alice.get(&format!("{}/hub/logout", w.hub_url)).await;
    assert_eq!(r.status, 302);
    let to = r.location.unwrap();
    assert!(
        to.starts_with(&format!("{}/session/end?", w.peer.issuer)),
        "{to}"
    );
    assert_eq!(
        param(&to, "post_logout_redirect_uri"),
        format!("{}/hub/login", w.hub_url)
    );
    assert_eq!(param(&to, "client_id"), CLIENT_ID);
    assert_eq!(param(&to, "id_token_hint").split('.').count(), 3);
    let home = alice.get(&format!("{}/hub/home", w.hub_url)).await;
    assert_eq!(home.status, 302, "logged out at the hub");
    // The provider accepts the logout request (its confirmation page).
    let r = alice.get(&to).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The provider restarts with a new signing key (a key rotation): the hub fetches the JWKS
    // again on the unknown key and the login succeeds.
    w.restart_provider().await;
    let mut rotated = Browser::new();
    let r = w.login(&mut rotated, "bob", "/hub/home").await;
    assert_eq!(r.status, 302, "after the key rotation: {}", r.body);
    assert!(has_session_cookie(&r));
}

/// Whether the peer-gated tests run (says SKIPPED when not).
fn peers() -> bool {
    peers_enabled("OIDC tests with oidc-provider")
}

fn refused(r: &Reply) -> bool {
    (r.status == 400 || r.status == 403) && !has_session_cookie(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_code_is_refused() {
    if !peers() {
        return;
    }
    let w = world().await;
    let mut alice = Browser::new();
    let callback = w.to_callback(&mut alice, "alice", "/hub/home").await;
    let r = alice.get(&callback).await;
    assert_eq!(r.status, 302, "the first use of the code: {}", r.body);
    // The same code again, with a fresh flow (so that the state matches): refused by the
    // provider, which also revokes what the code gave.
    let mut replay = Browser::new();
    let fresh = w.to_callback(&mut replay, "alice", "/hub/home").await;
    let replayed = with_param(&fresh, "code", &param(&callback, "code"));
    let r = replay.get(&replayed).await;
    assert!(refused(&r), "replayed code: {} {}", r.status, r.body);
    // And the used callback again, in the browser that completed it: its flow is over.
    let r = alice.get(&callback).await;
    assert!(refused(&r), "used callback again: {}", r.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_state_is_refused() {
    if !peers() {
        return;
    }
    let w = world().await;
    let mut eve = Browser::new();
    let callback = w.to_callback(&mut eve, "alice", "/hub/home").await;
    let r = eve
        .get(&with_param(&callback, "state", "forged-state"))
        .await;
    assert_eq!(r.status, 403, "tampered state: {}", r.body);
    assert!(r.body.contains("state mismatch"), "{}", r.body);
    assert!(!has_session_cookie(&r), "tampered state: no session");
    // Without the pre-login session's cookie at all (a login started elsewhere): refused too.
    let mut stranger = Browser::new();
    let r = stranger.get(&callback).await;
    assert!(
        refused(&r),
        "callback without the flow's cookie: {}",
        r.status
    );
    assert!(
        matches!(w.store.get_user("alice").await, Err(StoreError::NotFound)),
        "nobody logged in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_nonce_is_refused() {
    if !peers() {
        return;
    }
    let w = world().await;
    // The flow's nonce changed in the stored pre-login session: the provider's ID token (which
    // carries the nonce the hub sent) no longer matches it.
    let mut mallory = Browser::new();
    let callback = w.to_callback(&mut mallory, "alice", "/hub/home").await;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", w.db_path.display()))
        .await
        .unwrap();
    let changed = sqlx::query(
        "UPDATE sessions SET data = json_set(data, '$.oidc_flow.nonce', 'tampered-nonce') \
         WHERE user_id IS NULL AND json_extract(data, '$.oidc_flow.state') = $1",
    )
    .bind(param(&callback, "state"))
    .execute(&mut db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    let r = mallory.get(&callback).await;
    assert_eq!(r.status, 403, "wrong nonce: {}", r.body);
    assert!(r.body.contains("nonce"), "{}", r.body);
    assert!(!has_session_cookie(&r), "wrong nonce: no session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_of_another_issuer_is_refused() {
    if !peers() {
        return;
    }
    // The hub trusts the issuer of a discovery document that names the real provider's
    // endpoints and keys: the real provider's ID tokens (iss = the provider) are validly signed
    // but from another issuer.
    let w = world_with(&[], true).await;
    let r = w.login(&mut Browser::new(), "alice", "/hub/home").await;
    assert_eq!(r.status, 403, "another issuer: {}", r.body);
    assert!(r.body.to_lowercase().contains("issuer"), "{}", r.body);
    assert!(!has_session_cookie(&r), "another issuer: no session");
    assert!(matches!(
        w.store.get_user("alice").await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_stays_on_site_after_single_sign_on() {
    if !peers() {
        return;
    }
    let w = world().await;
    for evil in [
        "https://evil.example/x",
        "//evil.example/x",
        "/\\evil.example",
    ] {
        // From the login page's button (next= dropped there) and from a forged login URL.
        let mut page = Browser::new();
        let login = page
            .get(&format!(
                "{}/hub/login?next={}",
                w.hub_url,
                atelier::hub::page::url_encode(evil)
            ))
            .await;
        assert_eq!(login.status, 200);
        assert!(
            !login.body.contains("evil.example"),
            "next={evil} echoed on the login page"
        );
        let mut b = Browser::new();
        let r = w.login(&mut b, "alice", evil).await;
        assert_eq!(r.status, 302, "next={evil}: {}", r.body);
        assert_eq!(r.location.as_deref(), Some("/hub/home"), "next={evil}");
        // Logged in: the login route goes straight to a safe next too.
        let again = b
            .get(&format!(
                "{}/hub/oauth_login/test?next={}",
                w.hub_url,
                atelier::hub::page::url_encode(evil)
            ))
            .await;
        assert_eq!(again.status, 302);
        assert_eq!(
            again.location.as_deref(),
            Some("/hub/home"),
            "next={evil} when logged in"
        );
    }
}

/// The characters of the provider's hostile names that must never reach a page raw.
const RAW_NAMES: &[&str] = &[
    "<script>alert(1)</script>",
    "../evil",
    "\u{430}dmin",
    "admin\u{301}",
    "admin\u{200d}",
    "root\u{200d}",
    "\u{ff41}\u{ff44}\u{ff4d}\u{ff49}\u{ff4e}",
];

/// A page's text without its markup (for failure messages).
fn page_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn assert_no_raw_names(page: &str, what: &str) {
    for raw in RAW_NAMES {
        assert!(!page.contains(raw), "{what} renders {raw:?} raw");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_from_the_provider_are_normalised_or_refused() {
    if !peers() {
        return;
    }
    let w = world_with(&["root"], false).await;
    // An account an admin created beforehand, an admin: what a look-alike would like to be.
    let pre = w.store.create_user("admin", true).await.unwrap();

    // (provider account, its preferred_username, the hub user it becomes)
    for (login, raw, expected) in [
        ("dotdot", "../evil", "evil"),
        (
            "script",
            "<script>alert(1)</script>",
            "script-alert-1-script",
        ),
        ("cyrillic-admin", "\u{430}dmin (Cyrillic а)", "dmin"),
        (
            "combining-admin",
            "admin + U+0301 (combining acute)",
            "admin-2",
        ),
        ("zwj-admin", "admin + U+200D (zero-width joiner)", "admin-3"),
        ("zwj-root", "root + U+200D, root in admin_users", "root-2"),
    ] {
        let mut b = Browser::new();
        let r = w.login(&mut b, login, "/hub/home").await;
        assert_eq!(r.status, 302, "{raw}: {}", page_text(&r.body));
        assert!(has_session_cookie(&r), "{raw}: logged in");
        let user = w.store.get_user(expected).await.unwrap_or_else(|e| {
            panic!("{raw}: no user {expected}: {e}");
        });
        assert!(!user.admin, "{raw} → {expected} is not an admin");
        let home = b.get(&format!("{}/hub/home", w.hub_url)).await;
        assert_eq!(home.status, 200, "{raw}: home");
        assert!(home.body.contains(expected), "{raw}: home names {expected}");
        assert_no_raw_names(&home.body, &format!("{raw}'s home page"));
    }
    // The look-alikes claimed neither the pre-created admin account nor root's name.
    assert!(
        !w.store.user_has_oidc_identity(pre.id).await.unwrap(),
        "a look-alike of admin claimed the account admin"
    );
    // root: an admin_users account the hub created at its start, no identity yet.
    let root = w.store.get_user("root").await.unwrap();
    assert!(
        !w.store.user_has_oidc_identity(root.id).await.unwrap(),
        "a look-alike of root claimed the admin_users account root"
    );

    // Fullwidth letters only: nothing usable; a clear 403 page, no user, no session.
    let mut b = Browser::new();
    let r = w.login(&mut b, "fullwidth-admin", "/hub/home").await;
    assert_eq!(r.status, 403, "fullwidth: {}", r.body);
    assert!(r.body.contains("no usable user name"), "{}", r.body);
    assert!(!has_session_cookie(&r), "fullwidth: no session");
    assert_no_raw_names(&r.body, "the refusal page");
    // admin, root and the six above.
    assert_eq!(
        w.store.list_users(&Default::default()).await.unwrap().total,
        8,
        "the fullwidth name created no user"
    );

    // The exact name claims the pre-created account (keeping its admin flag).
    let mut admin = Browser::new();
    let r = w.login(&mut admin, "admin", "/hub/home").await;
    assert_eq!(r.status, 302, "admin: {}", r.body);
    assert_eq!(
        w.store.oidc_identity_user("test", "admin").await.unwrap(),
        Some(w.store.get_user("admin").await.unwrap()),
        "the exact name claims the pre-created account"
    );
    assert_eq!(w.store.get_user("admin").await.unwrap().id, pre.id);
    assert!(w.store.get_user("admin").await.unwrap().admin);

    // The admin page lists them all, escaped.
    let page = admin.get(&format!("{}/hub/admin", w.hub_url)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for name in [
        "evil",
        "script-alert-1-script",
        "dmin",
        "admin-2",
        "admin-3",
        "root-2",
    ] {
        assert!(page.body.contains(name), "the admin page lists {name}");
    }
    assert_no_raw_names(&page.body, "the admin page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_created_account_is_claimed_once() {
    if !peers() {
        return;
    }
    let w = world().await;
    // An admin created dana beforehand (an admin, in a group of the admin's).
    let pre = w.store.create_user("dana", true).await.unwrap();
    w.store
        .set_user_groups(pre.id, &["given-by-admin".to_owned()])
        .await
        .unwrap();

    // The first single sign-on login with the name (the claim "Dana") claims it: same account,
    // admin flag kept, groups replaced by the provider's.
    let mut dana = Browser::new();
    let r = w.login(&mut dana, "dana", "/hub/home").await;
    assert_eq!(r.status, 302, "{}", r.body);
    let user = w.store.get_user("dana").await.unwrap();
    assert_eq!(user.id, pre.id, "the pre-created account is claimed");
    assert!(user.admin, "the admin flag survives the claim");
    assert_eq!(
        w.groups("dana").await,
        ["vo.example.org"],
        "the groups become the provider's"
    );
    let home = dana.get(&format!("{}/hub/home", w.hub_url)).await;
    assert!(home.body.contains("dana") && !home.body.contains("dana-2"));

    // Another subject with the same name: never merged, an account of its own.
    let mut other = Browser::new();
    let r = w.login(&mut other, "dana-other", "/hub/home").await;
    assert_eq!(r.status, 302, "{}", r.body);
    let second = w.store.get_user("dana-2").await.unwrap();
    assert!(!second.admin, "dana-2 is not dana");
    assert_eq!(
        w.store
            .oidc_identity_user("test", "dana-other")
            .await
            .unwrap(),
        Some(second)
    );
    let home = other.get(&format!("{}/hub/home", w.hub_url)).await;
    assert!(home.body.contains("dana-2"), "the other subject is dana-2");

    // dana again: still the claimed account.
    let r = w.login(&mut Browser::new(), "dana", "/hub/home").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        w.store
            .oidc_identity_user("test", "dana")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(pre.id)
    );
}

/// The cookie jars of these tests (and hub_web's, e2e_stack's) read a deletion from the
/// attributes only: a session token containing `1970` once made this file's logins flaky.
#[test]
fn cookie_cleared_reads_attributes_not_values() {
    assert!(common::cookie_cleared("a=; Path=/"));
    assert!(common::cookie_cleared("a=x; Max-Age=0"));
    assert!(common::cookie_cleared(
        "a=x; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT"
    ));
    assert!(!common::cookie_cleared(
        "atelier-session=0a1970ff; Path=/; Max-Age=600; HttpOnly"
    ));
    assert!(!common::cookie_cleared("a=x; Max-Age=0600"));
}
