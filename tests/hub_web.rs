//! The hub's web pages and its OAuth provider, driven over HTTP like a browser and like
//! `jupyterhub-singleuser`: the hub's router is served on 127.0.0.1:0 and called with a plain
//! hyper client that keeps the session cookie and never follows redirects. The backend starts
//! real (tiny) HTTP servers.
//!
//! Each story runs on SQLite (a fresh temporary file) and on PostgreSQL (a fresh database) when
//! `ATELIER_TEST_POSTGRES_URL` is set, e.g.
//! `ATELIER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test --test hub_web`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atelier::backend::WorkspaceBackend;
use atelier::hub::catalog::{Catalog, SharedCatalog};
use atelier::hub::{self, HubConfig};
use atelier::store::tokens::{generate_token, pkce_s256_challenge};
use atelier::store::{AuditAction, ServerState, Store, StoreError, oauth_client_id};
use serde_json::{Value, json};

mod common;

use common::TestDb;
use common::hub::{
    Browser, Resp, Served, TestBackend, assert_login_next, audit_events, bind, dev_login_config,
    enc, form, peers_venv, stories,
};

// ---- databases ------------------------------------------------------------------------------

/// This file's databases: `atelier-hub-web-*.db` files and `atelier_web_*` PostgreSQL databases.
fn sqlite_db() -> TestDb {
    TestDb::sqlite("atelier-hub-web")
}

async fn postgres_db() -> Option<TestDb> {
    TestDb::postgres("atelier_web", "PostgreSQL hub web tests").await
}

// ---- the hub under test, a browser and a server's HTTP client -------------------------------

/// A hub over `db` with the dev login (`common::hub::dev_login_config`), then `configure`d.
async fn serve(db: &TestDb, configure: impl FnOnce(&mut HubConfig)) -> Served {
    serve_on(db, None, configure).await
}

/// The same with its servers on `servers` (by default the [`TestBackend`]).
async fn serve_on(
    db: &TestDb,
    servers: Option<Arc<dyn WorkspaceBackend>>,
    configure: impl FnOnce(&mut HubConfig),
) -> Served {
    let store = Store::connect(db.url()).await.expect("connect");
    Served::start_on(bind().await, store, TestBackend::new(), servers, |base| {
        dev_login_config(base, configure)
    })
    .await
}

/// The query parameters of a URL, decoded.
fn query_params(url: &str) -> BTreeMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (dec(k), dec(v))
        })
        .collect()
}

fn dec(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

impl Served {
    /// `GET /hub/api/user` with a token.
    async fn whoami(&self, token: &str) -> Resp {
        self.request(
            "GET",
            "/hub/api/user",
            &[("authorization", &format!("token {token}"))],
            String::new(),
        )
        .await
    }

    /// The token endpoint, as `jupyterhub-singleuser` calls it.
    async fn exchange(&self, fields: &[(&str, &str)], basic: Option<(&str, &str)>) -> Resp {
        let mut headers = vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        )];
        if let Some((id, secret)) = basic {
            headers.push((
                "authorization",
                format!("Basic {}", base64(&format!("{id}:{secret}"))),
            ));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.request("POST", "/hub/api/oauth2/token", &headers, form(fields))
            .await
    }
}

fn base64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

stories!(
    dev_login_sets_a_safe_cookie,
    next_stays_on_site,
    posts_without_csrf_are_refused,
    bad_user_names_are_refused_and_escaped,
    oauth_dance_as_jupyterhub_singleuser,
    oauth_refusals,
    logout_ends_the_session,
    spawn_profiles_home_and_stop,
    data_sources_on_the_pages,
    dask_on_the_spawn_form,
    tokens_page,
    admin_page,
    error_pages,
);

// ---- stories --------------------------------------------------------------------------------

async fn dev_login_sets_a_safe_cookie(db: TestDb) {
    {
        let web = serve(&db, |_| {}).await;
        let mut b = web.browser();

        // Anonymous: the login page gives a session (for its CSRF token) and no user.
        let page = b.get("/hub/login").await;
        assert_eq!(page.status, 200);
        let anonymous = page.session_cookie().expect("anonymous session").to_owned();
        for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
            assert!(anonymous.contains(attr), "{anonymous}");
        }
        assert!(!anonymous.contains("Secure"), "plain http: {anonymous}");
        let anonymous_value = b.cookie.clone().unwrap();
        assert_eq!(b.get("/hub/home").await.status, 302, "not logged in yet");

        let r = b
            .post(
                "/hub/login",
                &[("_xsrf", &page.xsrf()), ("username", "Alice"), ("next", "")],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(r.location(), "/hub/home");
        let set = r.session_cookie().expect("session cookie").to_owned();
        for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age="] {
            assert!(set.contains(attr), "{set}");
        }
        // A fresh session id at login (no fixation); the anonymous one is gone.
        assert_ne!(b.cookie.as_deref(), Some(anonymous_value.as_str()));
        let home = b.get("/hub/home").await;
        assert_eq!(home.status, 200);
        assert!(home.body.contains("alice"), "the name is normalised");
        // The "New named server" field asks the browser for JupyterHub's server name rule.
        assert!(
            home.body
                .contains(r#"maxlength="30" pattern="[a-z](-?[a-z0-9])*""#),
            "{}",
            home.body
        );
        let mut stale = web.browser();
        stale.cookie = Some(anonymous_value);
        assert_eq!(stale.get("/hub/home").await.status, 302);
        let logins = audit_events(&web.hub.store, AuditAction::Login).await;
        assert_eq!(logins[0].actor.as_deref(), Some("alice"));

        // Admins need the one-time password.
        let mut root = web.browser();
        let page = root.get("/hub/login").await;
        let r = root
            .post(
                "/hub/login",
                &[
                    ("_xsrf", &page.xsrf()),
                    ("username", "root"),
                    ("password", "guess"),
                ],
            )
            .await;
        assert_eq!(r.status, 403);
        assert!(matches!(
            web.hub.store.get_user("root").await,
            Err(StoreError::NotFound)
        ));
        let root = web.logged_in("root").await;
        assert!(web.hub.store.get_user("root").await.unwrap().admin);
        drop(root);

        // With `cookie_secure`, every session cookie is Secure.
        let secure = serve(&db, |c| c.cookie_secure = true).await;
        let mut b = secure.browser();
        let page = b.get("/hub/login").await;
        assert!(page.session_cookie().unwrap().contains("; Secure"));
        let r = b
            .post(
                "/hub/login",
                &[("_xsrf", &page.xsrf()), ("username", "bob")],
            )
            .await;
        assert_eq!(r.status, 303);
        let set = r.session_cookie().unwrap();
        assert!(
            set.contains("; Secure") && set.contains("HttpOnly"),
            "{set}"
        );
    }
}

async fn next_stays_on_site(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    let table: &[(&str, &str)] = &[
        ("/hub/token", "/hub/token"),
        ("/user/alice/lab?a=1", "/user/alice/lab?a=1"),
        ("https://evil.example", "/hub/home"),
        ("https://evil.example/hub/home", "/hub/home"),
        ("//evil.example", "/hub/home"),
        ("//evil.example/%2F..", "/hub/home"),
        ("/\\evil.example", "/hub/home"),
        ("\\\\evil.example", "/hub/home"),
        ("evil.example", "/hub/home"),
        ("javascript:alert(1)", "/hub/home"),
        ("/\t/evil.example", "/hub/home"),
        ("/hub/home\r\nSet-Cookie: a=b", "/hub/home"),
    ];
    // The form's next (and so a forged one posted directly); logged in already, the login
    // page goes straight to a safe next.
    for (next, expected) in table {
        assert_login_next(&web, next, expected).await;
    }
}

async fn posts_without_csrf_are_refused(db: TestDb) {
    let web = serve(&db, |_| {}).await;

    // The login form itself: no cookie, no token, a wrong token.
    let mut anon = web.browser();
    let r = anon.post("/hub/login", &[("username", "mallory")]).await;
    assert_eq!(r.status, 403, "no session");
    let page = anon.get("/hub/login").await;
    let r = anon.post("/hub/login", &[("username", "mallory")]).await;
    assert_eq!(r.status, 403, "no _xsrf");
    let r = anon
        .post(
            "/hub/login",
            &[("_xsrf", &generate_token()), ("username", "mallory")],
        )
        .await;
    assert_eq!(r.status, 403, "wrong _xsrf");
    drop(page);
    assert!(web.hub.store.get_user("mallory").await.is_err());

    let mut alice = web.logged_in("alice").await;
    let xsrf = alice.xsrf().await;
    for (path, fields) in [
        ("/hub/token", vec![("note", "stolen")]),
        ("/hub/spawn/alice", vec![]),
        ("/hub/stop/alice", vec![("next", "/hub/home")]),
        ("/hub/logout", vec![]),
        ("/hub/admin/users", vec![("name", "eve")]),
    ] {
        let r = alice.post(path, &fields).await;
        assert_eq!(r.status, 403, "{path} without _xsrf: {}", r.body);
        assert!(r.body.contains("_xsrf"), "{path}: {}", r.body);
        let mut with_wrong = fields.clone();
        with_wrong.push(("_xsrf", "nope"));
        assert_eq!(alice.post(path, &with_wrong).await.status, 403, "{path}");
        // A body that is not a form carries no token either.
        let r = web
            .request(
                "POST",
                path,
                &[
                    (
                        "cookie",
                        &format!("atelier-session={}", alice.cookie.clone().unwrap()),
                    ),
                    ("content-type", "application/json"),
                ],
                json!({"_xsrf": xsrf}).to_string(),
            )
            .await;
        assert_eq!(r.status, 403, "{path} with JSON");
    }
    // Nothing happened: no token, no server, still logged in.
    let me = web.hub.store.get_user("alice").await.unwrap();
    assert!(
        web.hub
            .store
            .list_tokens(&atelier::store::TokenOwner::User(me.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        web.hub.store.get_server_by_names("alice", "").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(alice.get("/hub/home").await.status, 200);
    // With the token, the same form works.
    let r = alice
        .post("/hub/token", &[("_xsrf", &xsrf), ("note", "mine")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn bad_user_names_are_refused_and_escaped(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    for name in [
        "../etc/passwd",
        "alice/../root",
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "аlice",  // Cyrillic а
        "ａlice", // full-width a
        "alice\u{200b}",
        "al ice",
        "",
        "..",
    ] {
        let mut b = web.browser();
        let page = b.get("/hub/login").await;
        let r = b
            .post("/hub/login", &[("_xsrf", &page.xsrf()), ("username", name)])
            .await;
        assert_eq!(r.status, 400, "{name:?}: {}", r.body);
        assert!(r.session_cookie().is_none(), "{name:?}: no login");
        assert!(r.body.contains("not a valid user name"), "{}", r.body);
        assert!(!r.body.contains("<script>"), "{name:?} echoed raw");
        assert!(!r.body.contains("<img"), "{name:?} echoed raw");
        if name.contains("<script>") {
            assert!(r.body.contains("&lt;script&gt;"), "{}", r.body);
        }
        assert_eq!(b.get("/hub/home").await.status, 302, "{name:?}");
    }
    let page = web.hub.store.list_users(&Default::default()).await.unwrap();
    assert_eq!(page.total, 0, "no user was created");

    // Names in paths are escaped on error pages too.
    let mut alice = web.logged_in("alice").await;
    let r = alice.get("/hub/spawn/alice/%3Cscript%3Ex").await;
    assert_eq!(r.status, 400);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(!r.body.contains("<script>x"), "{}", r.body);
    assert!(r.body.contains("&lt;script&gt;x"), "{}", r.body);
}

/// Starts alice's default server through the spawn form and waits until it runs.
async fn start_via_ui(web: &Served, b: &mut Browser<'_>, user: &str) {
    let page = b.get(&format!("/hub/spawn/{user}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let r = b
        .post(&format!("/hub/spawn/{user}"), &[("_xsrf", &page.xsrf())])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for(user, "", ServerState::Running).await;
}

async fn oauth_dance_as_jupyterhub_singleuser(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    let mut alice = web.logged_in("alice").await;
    start_via_ui(&web, &mut alice, "alice").await;

    // What the spawner gave the server.
    let env = web.backend.request("alice", "").env;
    let client_id = env["JUPYTERHUB_CLIENT_ID"].clone();
    assert_eq!(client_id, oauth_client_id("alice", ""));
    let secret = env["JUPYTERHUB_API_TOKEN"].clone();
    let redirect_uri = env["JUPYTERHUB_OAUTH_CALLBACK_URL"].clone();

    // The server sends the browser to authorize, with PKCE and state.
    let verifier = generate_token();
    let state = "eyJzdGF0ZV9pZCI6ICJhYmMifQ==";
    let authorize = format!(
        "/hub/api/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&state={}\
         &code_challenge={}&code_challenge_method=S256",
        enc(&client_id),
        enc(&redirect_uri),
        enc(state),
        pkce_s256_challenge(&verifier)
    );

    // Not logged in: to the login page and back.
    let mut fresh = web.browser();
    let r = fresh.get(&authorize).await;
    assert_eq!(r.status, 302);
    let login = r.location().to_owned();
    assert!(login.starts_with("/hub/login?next="), "{login}");
    assert_eq!(query_params(&login)["next"], authorize);
    let page = fresh.get(&login).await;
    let r = fresh
        .post(
            "/hub/login",
            &[
                ("_xsrf", &page.xsrf()),
                ("username", "alice"),
                ("next", &query_params(&login)["next"]),
            ],
        )
        .await;
    assert_eq!(r.location(), authorize, "back to authorize after login");

    // The owner is not asked for consent: straight back to the server with a code.
    let r = fresh.get(&authorize).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(
        r.header("x-jupyterhub-version"),
        Some(hub::JUPYTERHUB_VERSION)
    );
    let callback = r.location().to_owned();
    assert!(
        callback.starts_with(&format!("{redirect_uri}?")),
        "{callback}"
    );
    let params = query_params(&callback);
    assert_eq!(params["state"], state);
    let code = params["code"].clone();

    // The callback: the token request of jupyterhub-singleuser.
    let r = web
        .exchange(
            &[
                ("client_id", &client_id),
                ("client_secret", &secret),
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let reply = r.json();
    assert_eq!(reply["token_type"], "Bearer");
    assert!(reply["expires_in"].as_i64().unwrap() > 0);
    assert!(
        reply["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "access:servers!server=alice/"),
        "{reply}"
    );
    let access = reply["access_token"].as_str().unwrap().to_owned();

    // The server identifies the visitor with the token.
    let me = web.whoami(&access).await;
    assert_eq!(me.status, 200, "{}", me.body);
    let me = me.json();
    assert_eq!(me["name"], "alice");
    assert_eq!(me["kind"], "user");
    let scopes: Vec<&str> = me["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        scopes.contains(&"access:servers!server=alice/"),
        "{scopes:?}"
    );

    // The code was single-use.
    let replay = web
        .exchange(
            &[
                ("client_id", &client_id),
                ("client_secret", &secret),
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(replay.status, 400);
    assert_eq!(replay.json()["error"], "invalid_grant");

    // HTTP Basic client authentication works too.
    let r = fresh.get(&authorize).await;
    let code2 = query_params(r.location())["code"].clone();
    let r = web
        .exchange(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code2),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &verifier),
            ],
            Some((&client_id, &secret)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let access2 = r.json()["access_token"].as_str().unwrap().to_owned();

    // Logging out of the hub revokes the tokens issued in that session.
    assert_eq!(fresh.get("/hub/logout").await.status, 302);
    assert_eq!(web.whoami(&access).await.status, 403);
    assert_eq!(web.whoami(&access2).await.status, 403);

    // Stopping the server revokes the tokens issued to its client.
    let r = alice.get(&authorize).await;
    let code3 = query_params(r.location())["code"].clone();
    let r = web
        .exchange(
            &[
                ("client_id", &client_id),
                ("client_secret", &secret),
                ("grant_type", "authorization_code"),
                ("code", &code3),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    let access3 = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(web.whoami(&access3).await.status, 200);
    let xsrf = alice.xsrf().await;
    let r = alice
        .post(
            "/hub/stop/alice",
            &[("_xsrf", &xsrf), ("next", "/hub/home")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("alice", "", ServerState::Stopped).await;
    assert_eq!(web.whoami(&access3).await.status, 403);
}

async fn oauth_refusals(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    let mut alice = web.logged_in("alice").await;
    start_via_ui(&web, &mut alice, "alice").await;
    let env = web.backend.request("alice", "").env;
    let client_id = env["JUPYTERHUB_CLIENT_ID"].clone();
    let secret = env["JUPYTERHUB_API_TOKEN"].clone();
    let redirect_uri = env["JUPYTERHUB_OAUTH_CALLBACK_URL"].clone();
    let verifier = generate_token();
    let url = |client: &str, redirect: &str| {
        format!(
            "/hub/api/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&state=s1\
             &code_challenge={}&code_challenge_method=S256",
            enc(client),
            enc(redirect),
            pkce_s256_challenge(&verifier)
        )
    };
    let code_for = |r: &Resp| query_params(r.location())["code"].clone();
    let exchange = |code: String, verifier: String, redirect: String| {
        let web = &web;
        let (client_id, secret) = (client_id.clone(), secret.clone());
        async move {
            web.exchange(
                &[
                    ("client_id", &client_id),
                    ("client_secret", &secret),
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &redirect),
                    ("code_verifier", &verifier),
                ],
                None,
            )
            .await
        }
    };

    // A wrong redirect URI or an unknown client: a 400 page, never a redirect.
    for (client, redirect) in [
        (client_id.as_str(), "https://evil.example/cb"),
        (client_id.as_str(), &format!("{redirect_uri}/x")),
        ("jupyterhub-user-nobody", redirect_uri.as_str()),
        ("", redirect_uri.as_str()),
    ] {
        let r = alice.get(&url(client, redirect)).await;
        assert_eq!(r.status, 400, "{client} {redirect}: {}", r.body);
        assert!(r.header("location").is_none());
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(!r.body.contains("<script"), "escaped");
    }

    // Wrong code_verifier: invalid_grant, and the code is used up.
    let code = code_for(&alice.get(&url(&client_id, &redirect_uri)).await);
    let r = exchange(code.clone(), generate_token(), redirect_uri.clone()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("code_verifier")
    );
    let r = exchange(code, verifier.clone(), redirect_uri.clone()).await;
    assert_eq!(r.json()["error"], "invalid_grant");

    // No verifier for a PKCE code.
    let code = code_for(&alice.get(&url(&client_id, &redirect_uri)).await);
    let r = web
        .exchange(
            &[
                ("client_id", &client_id),
                ("client_secret", &secret),
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
            ],
            None,
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");

    // Another redirect URI at the token endpoint than at authorize.
    let code = code_for(&alice.get(&url(&client_id, &redirect_uri)).await);
    let r = exchange(code, verifier.clone(), format!("{redirect_uri}x")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");

    // A wrong client secret, an unknown client, or none: invalid_client.
    let code = code_for(&alice.get(&url(&client_id, &redirect_uri)).await);
    for (id, secret) in [
        (client_id.as_str(), "wrong-secret"),
        ("jupyterhub-user-nobody", secret.as_str()),
    ] {
        let r = web
            .exchange(
                &[
                    ("client_id", id),
                    ("client_secret", secret),
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &redirect_uri),
                    ("code_verifier", &verifier),
                ],
                None,
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"], "invalid_client");
    }
    let r = web
        .exchange(
            &[("grant_type", "authorization_code"), ("code", &code)],
            Some((&client_id, "wrong-secret")),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    // The code survived the failed client authentications.
    let r = exchange(code, verifier.clone(), redirect_uri.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = web
        .exchange(
            &[
                ("client_id", &client_id),
                ("client_secret", &secret),
                ("grant_type", "password"),
            ],
            None,
        )
        .await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");

    // Errors after the client is known go back to it, with the state.
    let r = alice
        .get(&url(&client_id, &redirect_uri).replace("response_type=code", "response_type=token"))
        .await;
    assert_eq!(r.status, 302);
    let p = query_params(r.location());
    assert_eq!(p["error"], "unsupported_response_type");
    assert_eq!(p["state"], "s1");
    let r = alice
        .get(&url(&client_id, &redirect_uri).replace("S256", "plain"))
        .await;
    assert_eq!(query_params(r.location())["error"], "invalid_request");

    // Another user authorizing for alice's server: 403.
    let mut bob = web.logged_in("bob").await;
    let r = bob.get(&url(&client_id, &redirect_uri)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("location").is_none());
    assert!(r.body.contains("not allowed"), "{}", r.body);

    // An admin is asked to confirm, then gets a code.
    let mut root = web.logged_in("root").await;
    let r = root.get(&url(&client_id, &redirect_uri)).await;
    assert_eq!(r.status, 200, "consent page: {}", r.body);
    assert!(r.body.contains("Authorize access"));
    let r = root
        .post(
            "/hub/api/oauth2/authorize",
            &[
                ("client_id", &client_id),
                ("redirect_uri", &redirect_uri),
                ("response_type", "code"),
                ("state", "s2"),
                ("code_challenge", &pkce_s256_challenge(&verifier)),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "consent without _xsrf");
    let consent = root.get(&url(&client_id, &redirect_uri)).await;
    let r = root
        .post(
            "/hub/api/oauth2/authorize",
            &[
                ("_xsrf", &consent.xsrf()),
                ("client_id", &client_id),
                ("redirect_uri", &redirect_uri),
                ("response_type", "code"),
                ("state", "s2"),
                ("code_challenge", &pkce_s256_challenge(&verifier)),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(query_params(r.location())["state"], "s2");
    let r = exchange(code_for(&r), verifier.clone(), redirect_uri.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(web.whoami(&token).await.json()["name"], "root");
}

async fn logout_ends_the_session(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    let mut alice = web.logged_in("alice").await;
    let cookie = alice.cookie.clone().unwrap();
    assert_eq!(alice.get("/hub/home").await.status, 200);

    let xsrf = alice.xsrf().await;
    let r = alice.post("/hub/logout", &[("_xsrf", &xsrf)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/hub/login");
    assert!(r.session_cookie().unwrap().contains("Max-Age=0"));
    let r = alice.get("/hub/home").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/hub/login?next=%2Fhub%2Fhome");

    // The old cookie is worth nothing now.
    let mut replay = web.browser();
    replay.cookie = Some(cookie);
    assert_eq!(replay.get("/hub/home").await.status, 302);
    let logouts = audit_events(&web.hub.store, AuditAction::Logout).await;
    assert_eq!(logouts.len(), 1);

    // GET /hub/logout too; `/` and `/hub/` lead home.
    let mut bob = web.logged_in("bob").await;
    let r = bob.get("/hub/logout").await;
    assert_eq!(r.status, 302);
    assert_eq!(bob.get("/hub/home").await.status, 302);
    for path in ["/", "/hub/"] {
        let r = bob.get(path).await;
        assert_eq!(r.status, 302);
        assert_eq!(r.location(), "/hub/home");
    }
}

async fn spawn_profiles_home_and_stop(db: TestDb) {
    let web = serve(&db, |c| {
        let mut catalog = Catalog::default();
        catalog
            .add_yaml(
                Path::new("profiles.yaml"),
                r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: small}
spec: {displayName: "Small <b>CPU</b>", description: 2 CPUs, image: lab:1}
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: gpu}
spec:
  displayName: GPU
  image: lab:1
  allowedGroups: [gpu-users]
  maxResources: {gpus: 2}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: cpu}
spec: {purpose: interactive}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: gpus}
spec: {purpose: gpu, gpu: {types: [a100]}, allowedGroups: [gpu-users]}
"#,
            )
            .unwrap();
        c.catalog = SharedCatalog::new(catalog);
    })
    .await;
    let mut alice = web.logged_in("alice").await;

    // The home page lists the default server, stopped.
    let home = alice.get("/hub/home").await;
    assert!(home.body.contains("Default server"));
    assert!(home.body.contains("stopped"));
    assert!(home.body.contains(r#"href="/hub/spawn/alice""#));

    // Only the profiles alice's groups allow, escaped.
    let page = alice.get("/hub/spawn/alice").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"value="small""#));
    assert!(
        page.body.contains("Small &lt;b&gt;CPU&lt;&#x2F;b&gt;")
            || page.body.contains("Small &lt;b&gt;CPU&lt;/b&gt;")
    );
    assert!(!page.body.contains(r#"value="gpu""#));
    let xsrf = page.xsrf();
    let r = alice
        .post("/hub/spawn/alice", &[("_xsrf", &xsrf), ("profile", "gpu")])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("ProfileForbidden"), "{}", r.body);
    let r = alice
        .post("/hub/spawn/alice", &[("_xsrf", &xsrf), ("profile", "huge")])
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("ProfileNotFound"), "{}", r.body);
    assert!(matches!(
        web.hub.store.get_server_by_names("alice", "").await,
        Err(StoreError::NotFound)
    ));

    // In the group, the GPU profile is open, and its options reach the backend.
    let me = web.hub.store.get_user("alice").await.unwrap();
    web.hub
        .store
        .set_user_groups(me.id, &["gpu-users".to_owned()])
        .await
        .unwrap();
    let page = alice.get("/hub/spawn/alice").await;
    assert!(page.body.contains(r#"value="gpu""#));
    let r = alice
        .post(
            "/hub/spawn/alice",
            &[("_xsrf", &xsrf), ("profile", "gpu"), ("gpu/gpus", "1")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.location();
    assert!(
        to == "/hub/spawn-pending/alice" || to == "/user/alice/",
        "{to}"
    );
    web.wait_for("alice", "", ServerState::Running).await;
    let request = web.backend.request("alice", "");
    assert_eq!(request.profile.as_deref(), Some("gpu"));
    assert_eq!(request.user_options["resources"]["gpus"], 1);

    // Running: the pages lead to the server.
    let r = alice.get("/hub/spawn-pending/alice").await;
    assert_eq!(r.location(), "/user/alice/");
    let r = alice.get("/hub/spawn/alice").await;
    assert_eq!(r.location(), "/user/alice/");
    let r = alice.get("/hub/user/alice/lab/tree?x=1").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/user/alice/lab/tree?x=1");
    let home = alice.get("/hub/home").await;
    assert!(home.body.contains("running"));
    assert!(home.body.contains(r#"action="/hub/stop/alice""#));

    // Bob may not look at alice's server.
    let mut bob = web.logged_in("bob").await;
    assert_eq!(bob.get("/hub/user/alice/lab").await.status, 403);
    assert_eq!(bob.get("/hub/spawn/alice").await.status, 403);
    let bob_xsrf = bob.xsrf().await;
    let r = bob.post("/hub/stop/alice", &[("_xsrf", &bob_xsrf)]).await;
    assert_eq!(r.status, 403);

    // Stop from the home page.
    let r = alice
        .post(
            "/hub/stop/alice",
            &[("_xsrf", &xsrf), ("next", "//evil.example")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/hub/home");
    web.wait_for("alice", "", ServerState::Stopped).await;
    let r = alice.get("/hub/spawn-pending/alice").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("not running"));

    // Back to the page asked for, through the spawn form, as the proxy sends visitors.
    let r = alice.get("/hub/user/alice/lab?x=1").await;
    assert_eq!(
        r.location(),
        "/hub/spawn/alice?next=%2Fuser%2Falice%2Flab%3Fx%3D1"
    );
    let page = alice.get(r.location()).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains(r#"name="next" value="/user/alice/lab?x=1""#)
    );
    let r = alice
        .post(
            "/hub/spawn/alice",
            &[
                ("_xsrf", &xsrf),
                ("profile", "small"),
                ("next", "/user/alice/lab?x=1"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.location().to_owned();
    assert!(
        to == "/hub/spawn-pending/alice?next=%2Fuser%2Falice%2Flab%3Fx%3D1"
            || to == "/user/alice/lab?x=1",
        "{to}"
    );
    web.wait_for("alice", "", ServerState::Running).await;
    let r = alice
        .get("/hub/spawn-pending/alice?next=%2Fuser%2Falice%2Flab%3Fx%3D1")
        .await;
    assert_eq!(r.location(), "/user/alice/lab?x=1");
    let r = alice
        .get("/hub/spawn/alice?next=https%3A%2F%2Fevil.example")
        .await;
    assert_eq!(r.location(), "/user/alice/", "an off-site next is dropped");

    // A named server from the home page's form.
    let r = alice.get("/hub/spawn/alice?server_name=analysis").await;
    assert_eq!(r.location(), "/hub/spawn/alice/analysis");
    let r = alice.get("/hub/spawn/alice?server_name=Bad%20Name").await;
    assert_eq!(r.status, 400);
    let page = alice.get("/hub/spawn/alice/analysis").await;
    assert_eq!(page.status, 200);
    let r = alice
        .post(
            "/hub/spawn/alice/analysis",
            &[("_xsrf", &xsrf), ("profile", "small")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("alice", "analysis", ServerState::Running)
        .await;
    let r = alice.get("/hub/user/alice/analysis/lab").await;
    assert_eq!(r.location(), "/user/alice/analysis/lab");
}

/// What the pages say of data sources: on the spawn form, each source's description (escaped),
/// the credentials the user's groups get (`policy::data::credentials_for`) and its STAC link
/// (http(s) only); on the home page, each running server's sources with the line of Python
/// that opens them (`policy::data::open_line`).
async fn data_sources_on_the_pages(db: TestDb) {
    let web = serve(&db, |c| {
        let mut catalog = Catalog::default();
        catalog
            .add_yaml(
                Path::new("data.yaml"),
                r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: pangeo}
spec: {displayName: Pangeo, image: lab:1}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: cpu}
spec: {purpose: interactive}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: argo}
spec:
  description: Argo floats
  s3:
    endpoint: http://127.0.0.1:1
    bucket: argo
    prefix: x.zarr
    credentialsByGroup:
      - {group: vo-atmos, secret: {name: atmos-s3}}
      - {group: vo-ocean, secret: {name: ocean-s3}}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: era5}
spec:
  description: ERA5 reanalysis
  s3: {endpoint: http://127.0.0.1:1, bucket: era5, credentialsSecret: {name: era5-s3}}
  stac: https://stac.example.org/era5?a=1&b=2
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: notes}
spec:
  description: "Team notes <script>alert('x')</script>"
  nfs: {server: nfs.example.org, path: /export/notes}
  mountPath: /data/notes
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: sentinel}
spec:
  description: Sentinel-2 items
  stac: "javascript:alert(1)"
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: landsat}
spec:
  description: Landsat items
  stac: https://stac.example.org/landsat
"#,
            )
            .unwrap();
        c.catalog = SharedCatalog::new(catalog);
    })
    .await;
    let mut alice = web.logged_in("alice").await;

    // The block of one source on the form (`/` as it is: some Tera versions escape it as
    // `&#x2F;`, both are the same HTML).
    let block = |page: &str, source: &str| -> String {
        let page = page.replace("&#x2F;", "/");
        let start = page
            .find(&format!(r#"id="data-pangeo-{source}""#))
            .unwrap_or_else(|| panic!("no block for {source}: {page}"));
        let end = page[start..].find("</div>").expect("the block's end");
        page[start..start + end].to_owned()
    };

    // In no group: the group sources give her nothing, the shared Secret is everybody's.
    let page = alice.get("/hub/spawn/alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let argo = block(&page.body, "argo");
    assert!(argo.contains("Argo floats"), "{argo}");
    assert!(argo.contains("credentials: none"), "{argo}");
    assert!(!argo.contains("via group"), "{argo}");
    assert!(!argo.contains("STAC"), "{argo}");
    let era5 = block(&page.body, "era5");
    assert!(era5.contains("credentials: shared"), "{era5}");
    assert!(
        era5.contains(r#"href="https://stac.example.org/era5?a=1&amp;b=2""#),
        "{era5}"
    );
    // No credentials to speak of for a mount or a catalogue.
    let notes = block(&page.body, "notes");
    assert!(!notes.contains("credentials:"), "{notes}");
    assert!(notes.contains("<code>/data/notes</code>"), "{notes}");
    assert!(
        notes.contains("Team notes &lt;script&gt;alert(") && notes.contains(")&lt;/script&gt;"),
        "{notes}"
    );
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    let landsat = block(&page.body, "landsat");
    assert!(!landsat.contains("credentials:"), "{landsat}");
    assert!(
        landsat.contains(r#"<a class="stac" href="https://stac.example.org/landsat""#),
        "{landsat}"
    );
    // A STAC "URL" that is not http(s) is no link.
    let sentinel = block(&page.body, "sentinel");
    assert!(!sentinel.contains("href"), "{sentinel}");
    assert!(!page.body.contains("javascript:"), "{}", page.body);

    // In both groups: the first listed group's Secret.
    let me = web.hub.store.get_user("alice").await.unwrap();
    web.hub
        .store
        .set_user_groups(me.id, &["vo-ocean".to_owned(), "vo-atmos".to_owned()])
        .await
        .unwrap();
    let page = alice.get("/hub/spawn/alice").await;
    let argo = block(&page.body, "argo");
    assert!(argo.contains("credentials: via group vo-atmos"), "{argo}");
    web.hub
        .store
        .set_user_groups(me.id, &["vo-ocean".to_owned()])
        .await
        .unwrap();
    let page = alice.get("/hub/spawn/alice").await;
    let argo = block(&page.body, "argo");
    assert!(argo.contains("credentials: via group vo-ocean"), "{argo}");

    // Stopped servers show no data; a running one shows its sources and how to open them.
    let home = alice.get("/hub/home").await;
    assert!(!home.body.contains("server-data"), "{}", home.body);
    let xsrf = page.xsrf();
    let r = alice
        .post(
            "/hub/spawn/alice",
            &[
                ("_xsrf", &xsrf),
                ("profile", "pangeo"),
                ("pangeo/dataSource/notes", "on"),
                ("pangeo/dataSource/landsat", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("alice", "", ServerState::Running).await;
    assert_eq!(
        web.backend.request("alice", "").user_options["dataSources"],
        json!(["landsat", "notes"])
    );
    let home = alice.get("/hub/home").await;
    let data = {
        let body = home.body.replace("&#x2F;", "/");
        let start = body.find(r#"class="server-data""#).expect("the data row");
        let end = body[start..].find("</tr>").expect("its end");
        body[start..start + end].to_owned()
    };
    assert!(
        data.contains(
            "intake.open_catalog(os.environ[&quot;ATELIER_DATA_CATALOG&quot;]).notes.to_dask()"
        ),
        "{data}"
    );
    assert!(
        data.contains("pystac_client.Client.open(os.environ[&quot;ATELIER_STAC_LANDSAT&quot;])"),
        "{data}"
    );
    assert!(data.contains("Team notes &lt;script&gt;"), "{data}");
    assert!(!home.body.contains("<script>alert"), "{}", home.body);
    assert!(!data.contains("argo") && !data.contains("era5"), "{data}");

    // A source the catalogue lost since the start is named, with no line.
    web.hub.config.catalog.set(Catalog::default());
    let home = alice.get("/hub/home").await;
    assert!(
        home.body.contains("No longer in the catalogue."),
        "{}",
        home.body
    );
    assert!(!home.body.contains("to_dask()"), "{}", home.body);
}

/// A profile offering Dask gets a checkbox and a "Dask workers: min–max" pair on the spawn
/// form (defaults from the profile, bounded by its maxWorkers); they become `user_options.dask`.
async fn dask_on_the_spawn_form(db: TestDb) {
    let web = serve(&db, |c| {
        let mut catalog = Catalog::default();
        catalog
            .add_yaml(
                Path::new("dask.yaml"),
                r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: pangeo}
spec:
  displayName: Pangeo
  image: lab:1
  dask:
    defaults: {enabled: true, workers: {min: 1, max: 3}}
    maxWorkers: 6
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: plain}
spec: {displayName: Plain, image: lab:1}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: cpu}
spec: {purpose: interactive}
"#,
            )
            .unwrap();
        c.catalog = SharedCatalog::new(catalog);
    })
    .await;
    let mut alice = web.logged_in("alice").await;
    let page = alice.get("/hub/spawn/alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let body = page.body.replace("&#x2F;", "/");
    let block = {
        let start = body
            .find(r#"id="dask-pangeo""#)
            .expect("pangeo's Dask block");
        let end = body[start..].find("</fieldset>").expect("its end");
        body[start..start + end].to_owned()
    };
    assert!(
        block.contains(r#"<input type="checkbox" name="pangeo/dask" value="on" checked>"#),
        "{block}"
    );
    assert!(block.contains("Dask workers: min"), "{block}");
    assert!(
        block.contains(r#"name="pangeo/dask_min" type="number" min="0" max="6" value="1""#),
        "{block}"
    );
    assert!(
        block.contains(r#"name="pangeo/dask_max" type="number" min="1" max="6" value="3""#),
        "{block}"
    );
    assert!(!body.contains(r#"id="dask-plain""#), "plain offers no Dask");

    let xsrf = page.xsrf();
    // Not whole numbers: 400 naming the field, nothing starts.
    let r = alice
        .post(
            "/hub/spawn/alice",
            &[
                ("_xsrf", &xsrf),
                ("profile", "pangeo"),
                ("pangeo/dask", "on"),
                ("pangeo/dask_min", "two"),
                ("pangeo/dask_max", "5"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("user_options.dask.workers.min"),
        "{}",
        r.body
    );
    // More than maxWorkers: the catalogue refuses, naming the rule.
    let r = alice
        .post(
            "/hub/spawn/alice",
            &[
                ("_xsrf", &xsrf),
                ("profile", "pangeo"),
                ("pangeo/dask", "on"),
                ("pangeo/dask_min", "1"),
                ("pangeo/dask_max", "7"),
            ],
        )
        .await;
    assert!(
        r.body.contains("DaskWorkersOutOfRange"),
        "{} {}",
        r.status,
        r.body
    );

    let r = alice
        .post(
            "/hub/spawn/alice",
            &[
                ("_xsrf", &xsrf),
                ("profile", "pangeo"),
                ("pangeo/dask", "on"),
                ("pangeo/dask_min", "2"),
                ("pangeo/dask_max", "5"),
                // Another profile's fields are not this start's.
                ("plain/dask_min", "9"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("alice", "", ServerState::Running).await;
    assert_eq!(
        web.backend.request("alice", "").user_options["dask"],
        json!({"enabled": true, "workers": {"min": 2, "max": 5}})
    );

    // Unchecked: no cluster, whatever the profile's default.
    let r = alice
        .post(
            "/hub/spawn/alice/second",
            &[
                ("_xsrf", &xsrf),
                ("profile", "pangeo"),
                ("pangeo/dask_min", "1"),
                ("pangeo/dask_max", "3"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("alice", "second", ServerState::Running).await;
    assert_eq!(
        web.backend.request("alice", "second").user_options["dask"],
        json!({"enabled": false})
    );
    // The plain profile's form has no Dask fields: no `dask` option at all.
    let r = alice
        .post(
            "/hub/spawn/alice/third",
            &[("_xsrf", &xsrf), ("profile", "plain")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("alice", "third", ServerState::Running).await;
    assert_eq!(
        web.backend
            .request("alice", "third")
            .user_options
            .get("dask"),
        None
    );
    // No server may be named `dask` (the default server's dashboard is there).
    let r = alice.get("/hub/spawn/alice?server_name=dask").await;
    assert_eq!(r.location(), "/hub/spawn/alice/dask");
    let r = alice.get("/hub/spawn/alice/dask").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("reserved"), "{}", r.body);
    assert!(r.body.contains("dask"), "{}", r.body);
}

async fn tokens_page(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    let mut alice = web.logged_in("alice").await;
    let page = alice.get("/hub/token").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("You have no tokens"));
    let xsrf = page.xsrf();

    let r = alice
        .post(
            "/hub/token",
            &[
                ("_xsrf", &xsrf),
                ("note", "<b>ci</b>"),
                ("expires_in", "86400"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let re = regex::Regex::new(r#"<pre class="token"><code>([0-9a-f]{64})</code></pre>"#).unwrap();
    let value = re.captures(&r.body).expect("the new token is shown")[1].to_owned();
    assert!(r.body.contains("&lt;b&gt;ci&lt;"), "the note is escaped");
    let me = web.whoami(&value).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["name"], "alice");

    // Shown once only.
    let page = alice.get("/hub/token").await;
    assert!(!page.body.contains(&value));
    let bad = alice
        .post("/hub/token", &[("_xsrf", &xsrf), ("expires_in", "12")])
        .await;
    assert_eq!(bad.status, 400);

    // Revoke it; another user cannot revoke it.
    let user = web.hub.store.get_user("alice").await.unwrap();
    let tokens = web
        .hub
        .store
        .list_tokens(&atelier::store::TokenOwner::User(user.id))
        .await
        .unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].expires_at.is_some());
    let id = tokens[0].id;
    let mut bob = web.logged_in("bob").await;
    let bob_xsrf = bob.xsrf().await;
    let r = bob
        .post(&format!("/hub/token/{id}/revoke"), &[("_xsrf", &bob_xsrf)])
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(web.whoami(&value).await.status, 200);
    let r = alice
        .post(&format!("/hub/token/{id}/revoke"), &[("_xsrf", &xsrf)])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(web.whoami(&value).await.status, 403);
}

async fn admin_page(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    let mut alice = web.logged_in("alice").await;
    start_via_ui(&web, &mut alice, "alice").await;
    assert_eq!(alice.get("/hub/admin").await.status, 403);
    let alice_xsrf = alice.xsrf().await;
    let r = alice
        .post(
            "/hub/admin/users",
            &[("_xsrf", &alice_xsrf), ("name", "eve")],
        )
        .await;
    assert_eq!(r.status, 403);

    let mut root = web.logged_in("root").await;
    let page = root.get("/hub/admin").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("alice"));
    assert!(page.body.contains("running"));
    let xsrf = page.xsrf();

    // Add users (a page holds 50).
    for i in 0..55 {
        let r = root
            .post(
                "/hub/admin/users",
                &[
                    ("_xsrf", &xsrf),
                    ("name", &format!("user{i:02}")),
                    ("next", "/hub/admin"),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
    }
    let r = root
        .post("/hub/admin/users", &[("_xsrf", &xsrf), ("name", "user00")])
        .await;
    assert_eq!(r.status, 409);
    let r = root
        .post("/hub/admin/users", &[("_xsrf", &xsrf), ("name", "<x>")])
        .await;
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<x>"));
    let first = root.get("/hub/admin").await;
    assert!(
        first.body.contains(r#"href="/hub/admin?offset=50""#),
        "a next page"
    );
    let second = root.get("/hub/admin?offset=50").await;
    assert!(second.body.contains("user54"));
    assert!(!second.body.contains("user00"));

    // Toggle admin, stop alice's server, delete a user.
    let r = root
        .post(
            "/hub/admin/users/user01/admin",
            &[("_xsrf", &xsrf), ("admin", "true")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(web.hub.store.get_user("user01").await.unwrap().admin);
    let r = root
        .post(
            "/hub/admin/users/root/admin",
            &[("_xsrf", &xsrf), ("admin", "false")],
        )
        .await;
    assert_eq!(r.status, 409, "no self-demotion");
    let r = root
        .post("/hub/admin/users/alice/delete", &[("_xsrf", &xsrf)])
        .await;
    assert_eq!(r.status, 409, "alice's server runs");
    let r = root
        .post(
            "/hub/stop/alice",
            &[("_xsrf", &xsrf), ("next", "/hub/admin?offset=0")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/hub/admin?offset=0");
    web.wait_for("alice", "", ServerState::Stopped).await;
    let r = root
        .post("/hub/admin/users/user02/delete", &[("_xsrf", &xsrf)])
        .await;
    assert_eq!(r.status, 303);
    assert!(matches!(
        web.hub.store.get_user("user02").await,
        Err(StoreError::NotFound)
    ));

    let events = audit_events(&web.hub.store, AuditAction::Admin).await;
    let actions: Vec<&str> = events
        .iter()
        .filter_map(|e| e.detail["action"].as_str())
        .collect();
    assert!(actions.contains(&"create_user"));
    assert!(actions.contains(&"set_admin"));
    assert!(actions.contains(&"delete_user"));
    assert!(events.iter().all(|e| e.actor.as_deref() == Some("root")));
    let stops = audit_events(&web.hub.store, AuditAction::ServerStop).await;
    assert_eq!(stops[0].actor.as_deref(), Some("root"));
}

async fn error_pages(db: TestDb) {
    let web = serve(&db, |_| {}).await;
    let mut b = web.browser();
    let r = b.get("/hub/no-such-page").await;
    assert_eq!(r.status, 404);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("404"));
    let r = b.get("/hub/api/no-such-endpoint").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["status"], 404);
    let r = b.get("/hub/static/style.css").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/css"));
    assert_eq!(b.get("/hub/static/nope.css").await.status, 404);

    // Pages that need a user send anonymous visitors to the login page.
    for path in ["/hub/home", "/hub/token", "/hub/admin", "/hub/spawn/alice"] {
        let r = b.get(path).await;
        assert_eq!(r.status, 302, "{path}");
        assert_eq!(r.location(), format!("/hub/login?next={}", enc(path)));
    }
    let mut alice = web.logged_in("alice").await;
    let r = alice.get("/hub/spawn/nobody").await;
    assert_eq!(r.status, 403, "another user's, existing or not");
    let mut root = web.logged_in("root").await;
    let r = root.get("/hub/spawn/nobody").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("No user nobody"));
    let page = root.get("/hub/home").await;
    for header in ["content-security-policy", "x-content-type-options"] {
        assert!(page.header(header).is_some(), "{header}");
    }
}

// ---- the real jupyterhub-singleuser ---------------------------------------------------------

/// Kills a server's process group when dropped (also when the test fails), and removes the
/// backend's state directory.
struct PeerCleanup {
    pgid: Option<i32>,
    dir: PathBuf,
}

impl Drop for PeerCleanup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) on a process group this test started.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The site as a browser sees it behind the proxy: `/user/...` goes to the server, the rest to
/// the hub; one cookie jar for both; redirects followed by hand.
struct Site<'a> {
    web: &'a Served,
    server: String,
    cookies: BTreeMap<String, String>,
}

impl Site<'_> {
    async fn get(&mut self, url: &str) -> Resp {
        let path = match url.find("://") {
            Some(i) => &url[i + 3 + url[i + 3..].find('/').unwrap_or(url.len() - i - 3)..],
            None => url,
        };
        let target = if path.starts_with("/user/") {
            format!("{}{path}", self.server)
        } else {
            format!("{}{path}", self.web.base)
        };
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let resp = self
            .web
            .request(
                "GET",
                &target,
                &[("cookie", &cookie), ("accept", "text/html")],
                String::new(),
            )
            .await;
        for set in resp.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if common::cookie_cleared(set) {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        resp
    }

    /// Follows redirects from `url`; the last response and the path it came from.
    async fn follow(&mut self, url: &str) -> (Resp, String) {
        let mut url = url.to_owned();
        for _ in 0..12 {
            let resp = self.get(&url).await;
            if !(300..400).contains(&resp.status) {
                return (resp, url);
            }
            url = resp.location().to_owned();
        }
        panic!("too many redirects, last {url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_jupyterhub_singleuser_logs_in_through_the_hub() {
    use atelier::backend::local::{LocalBackend, LocalConfig};

    let Some(venv) = peers_venv(
        "OAuth login through the real jupyterhub-singleuser",
        &["jupyterhub-singleuser"],
    ) else {
        return;
    };
    let state_dir =
        std::env::temp_dir().join(format!("atelier-hub-web-peer-{}", &generate_token()[..12]));
    let mut cleanup = PeerCleanup {
        pgid: None,
        dir: state_dir.clone(),
    };
    let mut config = LocalConfig::new(&state_dir);
    config.command = vec![
        venv.join("bin/jupyterhub-singleuser")
            .to_string_lossy()
            .into_owned(),
    ];
    config.start_timeout = Duration::from_secs(90);
    let db = sqlite_db();
    let web = serve_on(&db, Some(Arc::new(LocalBackend::new(config))), |c| {
        c.spawn_timeout_secs = 100;
    })
    .await;

    let mut alice = web.logged_in("alice").await;
    start_via_ui(&web, &mut alice, "alice").await;
    let server = web.server("alice", "").await;
    cleanup.pgid = server.spawner_state["pgid"].as_i64().map(|p| p as i32);
    let log = || std::fs::read_to_string(state_dir.join("logs/alice.log")).unwrap_or_default();

    // The browser opens JupyterLab: the server sends it through the hub's OAuth and back.
    let mut site = Site {
        web: &web,
        server: server.url.clone().expect("a running server has a URL"),
        cookies: BTreeMap::from([("atelier-session".to_owned(), alice.cookie.clone().unwrap())]),
    };
    let (lab, at) = site.follow("/user/alice/lab").await;
    assert_eq!(
        lab.status,
        200,
        "{at}: {}\n--- server log ---\n{}",
        lab.body,
        log()
    );
    assert!(at.starts_with("/user/alice/lab"), "{at}");
    assert!(
        site.cookies.contains_key("jupyterhub-user-alice"),
        "{:?}",
        site.cookies.keys()
    );
    let status = site.get("/user/alice/api/status").await;
    assert_eq!(
        status.status,
        200,
        "{}\n--- server log ---\n{}",
        status.body,
        log()
    );
    assert!(status.json().get("started").is_some(), "{}", status.body);

    // Bob is turned away by the hub, not by the server.
    let bob = web.logged_in("bob").await;
    let mut bob_site = Site {
        web: &web,
        server: site.server.clone(),
        cookies: BTreeMap::from([("atelier-session".to_owned(), bob.cookie.clone().unwrap())]),
    };
    let (denied, at) = bob_site.follow("/user/alice/lab").await;
    assert_eq!(denied.status, 403, "{at}: {}", denied.body);
    assert!(at.starts_with("/hub/api/oauth2/authorize"), "{at}");

    // Stopping the server ends it and its credentials.
    let xsrf = alice.xsrf().await;
    let r = alice.post("/hub/stop/alice", &[("_xsrf", &xsrf)]).await;
    assert_eq!(r.status, 303);
    web.wait_for("alice", "", ServerState::Stopped).await;
    cleanup.pgid = None;

    // A named server: its OAuth client (and cookie) is `jupyterhub-user-alice~gpu`, which the
    // real server accepts as a cookie name.
    let page = alice.get("/hub/spawn/alice/gpu").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let r = alice
        .post("/hub/spawn/alice/gpu", &[("_xsrf", &page.xsrf())])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("alice", "gpu", ServerState::Running).await;
    let server = web.server("alice", "gpu").await;
    cleanup.pgid = server.spawner_state["pgid"].as_i64().map(|p| p as i32);
    let log = || std::fs::read_to_string(state_dir.join("logs/alice~gpu.log")).unwrap_or_default();
    let mut site = Site {
        web: &web,
        server: server.url.clone().expect("a running server has a URL"),
        cookies: BTreeMap::from([("atelier-session".to_owned(), alice.cookie.clone().unwrap())]),
    };
    let (lab, at) = site.follow("/user/alice/gpu/lab").await;
    assert_eq!(
        lab.status,
        200,
        "{at}: {}\n--- log ---\n{}",
        lab.body,
        log()
    );
    assert!(
        site.cookies.contains_key("jupyterhub-user-alice~gpu"),
        "{:?}",
        site.cookies.keys()
    );
    let status = site.get("/user/alice/gpu/api/status").await;
    assert_eq!(
        status.status,
        200,
        "{}\n--- log ---\n{}",
        status.body,
        log()
    );
    let xsrf = alice.xsrf().await;
    let r = alice.post("/hub/stop/alice/gpu", &[("_xsrf", &xsrf)]).await;
    assert_eq!(r.status, 303);
    web.wait_for("alice", "gpu", ServerState::Stopped).await;
    cleanup.pgid = None;
}

/// A browser's cookie jar with host-only cookies (what the hub sets: no `Domain`), and every
/// request sent to the proxy on 127.0.0.1 with the URL's host in `Host`, as a resolver that
/// maps `*.users.example.test` to the loopback would.
struct Hosts<'a> {
    web: &'a Served,
    /// `127.0.0.1:<port>` of the proxy.
    proxy: String,
    /// host → name → value.
    jars: BTreeMap<String, BTreeMap<String, String>>,
    /// Every `Cookie` header sent to a user's host.
    sent_to_users: Vec<String>,
}

impl Hosts<'_> {
    async fn send(&mut self, url: &str, accept: &str) -> Resp {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let jar = self.jars.entry(host.to_owned()).or_default();
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        if host.contains(".users.example.test") {
            self.sent_to_users.push(cookie.clone());
        }
        let target = format!("http://{}{path}", self.proxy);
        let resp = self
            .web
            .request(
                "GET",
                &target,
                &[("host", host), ("cookie", &cookie), ("accept", accept)],
                String::new(),
            )
            .await;
        for set in resp.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            assert!(
                !set.to_ascii_lowercase().contains("domain="),
                "{host} set a cookie for other hosts: {set}"
            );
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let jar = self.jars.entry(host.to_owned()).or_default();
            if value.is_empty() || value == "\"\"" || set.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
        resp
    }

    /// Follows redirects (relative ones on the same host) from `url`.
    async fn follow(&mut self, url: &str) -> (Resp, String) {
        let mut url = url.to_owned();
        for _ in 0..12 {
            let resp = self.send(&url, "text/html").await;
            if !(300..400).contains(&resp.status) {
                return (resp, url);
            }
            let location = resp.location();
            url = if location.starts_with('/') {
                let rest = url.strip_prefix("http://").unwrap();
                format!(
                    "http://{}{location}",
                    &rest[..rest.find('/').unwrap_or(rest.len())]
                )
            } else {
                location.to_owned()
            };
        }
        panic!("too many redirects, last {url}");
    }
}

/// `--user-domain` end to end: the real `jupyterhub-singleuser` started by the local backend is
/// reached on `alice.users.example.test` (through the real proxy, by `Host`), logs the browser
/// in there through the hub's OAuth on the hub's host, and the hub's cookie never goes to the
/// user's host; the server is not served on the hub's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_singleuser_on_its_own_host_with_a_user_domain() {
    use atelier::backend::local::{LocalBackend, LocalConfig};
    use atelier::config::UserDomain;
    use atelier::proxy::{Proxy, ProxyConfig, StoreAuthorizer, StoreRoutes};

    let Some(venv) = peers_venv(
        "a server on its own host (--user-domain)",
        &["jupyterhub-singleuser"],
    ) else {
        return;
    };
    let state_dir =
        std::env::temp_dir().join(format!("atelier-hub-web-host-{}", &generate_token()[..12]));
    let mut cleanup = PeerCleanup {
        pgid: None,
        dir: state_dir.clone(),
    };
    let mut config = LocalConfig::new(&state_dir);
    config.command = vec![
        venv.join("bin/jupyterhub-singleuser")
            .to_string_lossy()
            .into_owned(),
    ];
    config.start_timeout = Duration::from_secs(90);
    let domain = UserDomain::parse("users.example.test").unwrap();
    let proxy_listener = bind().await;
    let proxy_addr = proxy_listener.local_addr().unwrap();
    let public = format!("http://{proxy_addr}");
    let db = sqlite_db();
    let web = serve_on(&db, Some(Arc::new(LocalBackend::new(config))), |c| {
        c.spawn_timeout_secs = 100;
        c.public_url = public.clone();
        c.user_domain = Some(domain.clone());
    })
    .await;
    let proxy = Proxy::start(
        ProxyConfig {
            user_domain: Some(domain.clone()),
            public_url: public.clone(),
            ..ProxyConfig::new(web.base.clone())
        },
        Arc::new(StoreRoutes::new(web.hub.store.clone())),
        Some(Arc::new(StoreAuthorizer::new(web.hub.store.clone()))),
    )
    .await
    .unwrap();
    let (stop_proxy, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = tokio::spawn(atelier::proxy::serve(proxy_listener, proxy, async move {
        let _ = stopped.await;
    }));

    let mut alice = web.logged_in("alice").await;
    start_via_ui(&web, &mut alice, "alice").await;
    let server = web.server("alice", "").await;
    cleanup.pgid = server.spawner_state["pgid"].as_i64().map(|p| p as i32);
    let log = || std::fs::read_to_string(state_dir.join("logs/alice.log")).unwrap_or_default();

    // The hub's links name the server's host.
    let home = alice.get("/hub/home").await;
    let user_host = format!("alice.users.example.test:{}", proxy_addr.port());
    let lab_url = format!("http://{user_host}/user/alice/lab");
    assert!(
        home.body
            .contains(&format!("http://{user_host}/user/alice/")),
        "{}",
        home.body
    );
    let client = web
        .hub
        .store
        .get_oauth_client(&oauth_client_id("alice", ""))
        .await
        .unwrap();
    assert_eq!(
        client.redirect_uri,
        format!("http://{user_host}/user/alice/oauth_callback"),
        "the server's callback is on its host"
    );

    let mut site = Hosts {
        web: &web,
        proxy: proxy_addr.to_string(),
        jars: BTreeMap::from([(
            proxy_addr.to_string(),
            BTreeMap::from([("atelier-session".to_owned(), alice.cookie.clone().unwrap())]),
        )]),
        sent_to_users: Vec::new(),
    };
    // The browser opens JupyterLab on alice's host: the server sends it to the hub's host to
    // authorize, and back to its own host's callback.
    let (lab, at) = site.follow(&lab_url).await;
    assert_eq!(
        lab.status,
        200,
        "{at}: {}\n--- server log ---\n{}",
        lab.body,
        log()
    );
    assert!(at.starts_with(&lab_url), "{at}");
    let user_jar = &site.jars[&user_host];
    assert!(
        user_jar.contains_key("jupyterhub-user-alice"),
        "{user_jar:?}"
    );
    assert!(!user_jar.contains_key("atelier-session"), "{user_jar:?}");
    assert!(
        site.sent_to_users
            .iter()
            .all(|c| !c.contains("atelier-session")),
        "the hub's cookie went to the user's host: {:?}",
        site.sent_to_users
    );
    // The API with the server's own cookie (a credential for the proxy there).
    let status = site
        .send(
            &format!("http://{user_host}/user/alice/api/status"),
            "application/json",
        )
        .await;
    assert_eq!(status.status, 200, "{}\n{}", status.body, log());
    assert!(status.json().get("started").is_some(), "{}", status.body);

    // Not on the hub's host, not on bob's.
    let alice_id = web.hub.store.get_user("alice").await.unwrap().id;
    let new_token = atelier::store::NewToken::new(
        atelier::store::TokenOwner::User(alice_id),
        vec!["self".to_owned()],
    );
    let (token, _) = web.hub.store.create_token(&new_token).await.unwrap();
    let auth = format!("token {token}");
    for host in [
        proxy_addr.to_string(),
        format!("bob.users.example.test:{}", proxy_addr.port()),
    ] {
        let r = web
            .request(
                "GET",
                &format!("{public}/user/alice/api/status"),
                &[("host", host.as_str()), ("authorization", auth.as_str())],
                String::new(),
            )
            .await;
        assert_eq!(r.status, 404, "{host}: {}", r.body);
    }

    let xsrf = alice.xsrf().await;
    let r = alice.post("/hub/stop/alice", &[("_xsrf", &xsrf)]).await;
    assert_eq!(r.status, 303);
    web.wait_for("alice", "", ServerState::Stopped).await;
    cleanup.pgid = None;
    let _ = stop_proxy.send(());
    let _ = proxy_task.await;
}
