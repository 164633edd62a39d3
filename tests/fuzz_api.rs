//! Property-based fuzzing of the REST API: the hub's axum router driven in-process (no socket)
//! over a fresh SQLite file (and a fresh PostgreSQL database too when
//! `ATELIER_TEST_POSTGRES_URL` is set), on the instant backend and the `crds/examples` catalogue, with
//! arbitrary JSON and arbitrary bytes on every endpoint that takes a body, and arbitrary query
//! strings on the lists. Never a 5xx, never a panic, always a JSON error; a valid body still
//! works.
//!
//! The endpoints come from the routers' source (`src/hub/api/mod.rs`, `src/hub/auth/oauth.rs`):
//! [`every_body_route_is_fuzzed`] fails when a route that takes a body has no entry in
//! [`ENDPOINTS`].

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use atelier::backend::instant::InstantBackend;
use atelier::hub::catalog::{Catalog, SharedCatalog};
use atelier::hub::{self, Hub, HubConfig};
use atelier::store::{NewToken, Store, StoreError, TokenOwner};
use axum::body::Body;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use regex::Regex;
use serde_json::{Value, json};
use tower::Service;

mod common;

use common::TestDb;

/// `cases` cases, no failure files in the source tree, and the same cases at every run (CI must
/// not fail one run in a hundred): a fixed seed unless `PROPTEST_RNG_SEED` names another, which
/// is how to explore further (`PROPTEST_RNG_SEED=$RANDOM cargo test --test ...`).
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let rng_seed = match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => default.rng_seed,
        None => proptest::test_runner::RngSeed::Fixed(0x00a7_e11e_2026),
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..default
    }
}

/// An endpoint that takes a body: method, path (the route's, `{…}` filled in by [`fill`]).
struct Endpoint {
    method: &'static str,
    route: &'static str,
}

/// Every route of the REST API that takes a body, as the routers declare them.
const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        route: "/hub/api/shutdown",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/proxy",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}",
    },
    Endpoint {
        method: "PATCH",
        route: "/hub/api/users/{name}",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}/activity",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}/server",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}/servers/",
    },
    Endpoint {
        method: "PATCH",
        route: "/hub/api/users/{name}/servers/",
    },
    Endpoint {
        method: "PUT",
        route: "/hub/api/users/{name}/servers/{server}",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}/servers/{server}",
    },
    Endpoint {
        method: "PATCH",
        route: "/hub/api/users/{name}/servers/{server}",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}/jobs",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}/jobs/{job}/cancel",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/users/{name}/tokens",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/groups",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/groups/{name}",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/groups/{name}/users",
    },
    Endpoint {
        method: "PUT",
        route: "/hub/api/groups/{name}/properties",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/{*rest}",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/oauth2/authorize",
    },
    Endpoint {
        method: "POST",
        route: "/hub/api/oauth2/token",
    },
];

/// DELETE endpoints read a body too (`DELETE /users/{name}/servers/{server}` with `remove`,
/// `DELETE /groups/{name}/users`).
const DELETE_ENDPOINTS: &[&str] = &[
    "/hub/api/users/{name}/server",
    "/hub/api/users/{name}/servers/{server}",
    "/hub/api/groups/{name}/users",
];

/// What is read back after each fuzzed request.
const PROBES: &[&str] = &[
    "/hub/api/users?include_stopped_servers=1",
    "/hub/api/users/alice",
    "/hub/api/users/alice/tokens",
    "/hub/api/users/alice/jobs",
    "/hub/api/groups",
    "/hub/api/proxy",
    "/hub/api/user",
];

/// The field names the bodies use (so that generated objects reach past "unexpected field").
const BODY_KEYS: &[&str] = &[
    "usernames",
    "admin",
    "name",
    "groups",
    "users",
    "properties",
    "note",
    "expires_in",
    "scopes",
    "roles",
    "display_name",
    "user_options",
    "remove",
    "last_activity",
    "servers",
    "proxy",
    "profile",
    "command",
    "resources",
    "node_pool",
    "data_sources",
    "env",
    "cpu",
    "memory",
    "gpus",
    "kind",
    "image",
    "nodePool",
    "dataSources",
    "dask",
    "workers",
    "min",
    "max",
    "grant_type",
    "code",
    "client_id",
    "redirect_uri",
    "code_verifier",
    "state",
];

/// Strings that mean something to some field.
const PLAUSIBLE: &[&str] = &[
    "",
    "alice",
    "bob",
    "root",
    "gpu",
    "ocean",
    "pangeo",
    "gpu-ml",
    "interactive",
    "batch",
    "2",
    "500m",
    "4Gi",
    "-1",
    "170141183460469231731687303715884105727n",
    "jupyter",
    "qgis",
    "self",
    "read:users",
    "servers!user=alice",
    "admin",
    "user",
    "server",
    "token",
    "2026-01-02T03:04:05Z",
    "2026-01-02T03:04:05.999Z",
    "9999-99-99T99:99:99Z",
    "0",
    "authorization_code",
    "..",
    ".",
    "a/b",
    "Alice",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._~%/!=:@ -]{0,16}",
        1 => any::<String>(),
        // Control characters (NUL among them), which `any::<String>()` never draws.
        1 => "[\\x00-\\x1F\\x7Fa-z]{0,8}",
    ]
}

/// Any JSON value (depth 3) with object keys from [`BODY_KEYS`] or anything.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Integers of every magnitude (uniform ones are almost all huge).
        (0u32..63, any::<bool>()).prop_flat_map(|(bits, neg)| (0i64..=(1i64 << bits))
            .prop_map(move |n| Value::from(if neg { -n } else { n }))),
        (-3i64..5000).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        text().prop_map(Value::String),
        prop::sample::select(PLAUSIBLE).prop_map(|s| Value::String(s.to_owned())),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(BODY_KEYS).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed();
    leaf.prop_recursive(3, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body: JSON (mostly objects), or arbitrary bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::btree_map(
            prop::sample::select(BODY_KEYS).prop_map(str::to_owned),
            json_value(),
            0..4,
        )
        .prop_map(|m| serde_json::to_vec(&Value::Object(m.into_iter().collect())).unwrap()),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => text().prop_map(String::into_bytes),
    ]
}

/// A path argument: mostly existing names, sometimes anything (percent-encoded).
fn path_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["alice", "bob", "root", "ocean", "gpu", "1"])
            .prop_map(str::to_owned),
        1 => text().prop_map(|t| atelier::hub::page::url_encode(&t)),
        1 => prop::sample::select(vec!["%2e%2e", "..", "%2F", "%00", "A", "%ZZ", "%"])
            .prop_map(str::to_owned),
    ]
}

/// `route` with each `{…}` replaced by the next of `args`.
fn fill(route: &str, args: &[String]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut rest = route;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        out.push_str(args.next().map_or("x", String::as_str));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

// ---- the hub ---------------------------------------------------------------------------------

/// A hub over a fresh database (removed when dropped), with admin `root`, users `alice` and
/// `bob`, and tokens.
struct World {
    app: axum::Router,
    store: Store,
    /// Admin `root`'s token (every scope an admin has).
    admin: String,
    /// `alice`'s token (`self`).
    alice: String,
    /// Which engine, for messages.
    engine: &'static str,
    _db: TestDb,
}

impl World {
    /// A world on a fresh SQLite file, and one on a fresh PostgreSQL database when
    /// `ATELIER_TEST_POSTGRES_URL` is set.
    async fn all() -> Vec<World> {
        let mut worlds = vec![World::new(TestDb::sqlite("atelier-fuzz-api"), "sqlite").await];
        if let Some(db) = TestDb::postgres("atelier_fuzz", "PostgreSQL fuzz of the API").await {
            worlds.push(World::new(db, "postgres").await);
        }
        worlds
    }

    async fn new(db: TestDb, engine: &'static str) -> World {
        let store = Store::connect(db.url()).await.expect("connect");
        let mut config = HubConfig::new("http://vre.test", "http://vre.test/hub/api");
        config.catalog = SharedCatalog::new(
            Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/examples"))
                .expect("crds/examples load"),
        );
        config.default_profile = "pangeo".into();
        let hub = Hub::new(store.clone(), Arc::new(InstantBackend::default()), config);
        let app = hub::router(hub);
        let root = store.create_user("root", true).await.unwrap();
        let admin = token(
            &store,
            root.id,
            &[
                "self",
                "admin:users",
                "admin:servers",
                "tokens",
                "admin:groups",
                "read:hub",
                "access:servers",
                "admin:jobs",
                "proxy",
                "shutdown",
            ],
        )
        .await;
        let alice = store.create_user("alice", false).await.unwrap();
        let alice = token(&store, alice.id, &["self"]).await;
        store.create_user("bob", false).await.unwrap();
        World {
            app,
            store,
            admin,
            alice,
            engine,
            _db: db,
        }
    }

    /// Sends a request with `token`; the status and the body.
    async fn send(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<u8>) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("token {token}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body)).expect("request");
        let resp = self.app.clone().call(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body.to_vec())
    }
}

async fn token(store: &Store, user: i64, scopes: &[&str]) -> String {
    store
        .create_token(&NewToken::new(
            TokenOwner::User(user),
            scopes.iter().map(|s| (*s).to_owned()).collect(),
        ))
        .await
        .unwrap()
        .0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What an error looks like.
#[derive(Clone, Copy, PartialEq)]
enum Errors {
    /// JupyterHub's `{"status": N, "message": "..."}`.
    Json,
    /// RFC 6749's `{"error": "...", "error_description": "..."}` (the OAuth token endpoint).
    OAuth,
    /// A page (the OAuth authorize form).
    Page,
}

/// No 5xx; an error in the shape `errors` says.
fn check_answer(what: &str, status: u16, body: &[u8], errors: Errors) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(body);
    prop_assert!(status < 500, "{what}: {status} {text}");
    if status < 400 || errors == Errors::Page {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("{what}: {status}, not JSON ({e}): {text}")))?;
    match errors {
        Errors::Json => {
            prop_assert_eq!(
                v["status"].as_u64(),
                Some(u64::from(status)),
                "{}: {}",
                what,
                text
            );
            prop_assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {text}"
            );
        }
        Errors::OAuth => {
            prop_assert!(
                v["error"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {text}"
            );
        }
        Errors::Page => {}
    }
    Ok(())
}

/// Runs `cases` cases of `strategy` through `test`, each on `rt`; panics with the minimal
/// failing input.
fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

// ---- the properties --------------------------------------------------------------------------

/// Every endpoint that takes a body, with arbitrary JSON or bytes, as an admin and as a user:
/// never a 5xx, errors in JSON.
#[test]
fn arbitrary_bodies_never_give_5xx() {
    let rt = runtime();
    for world in rt.block_on(World::all()) {
        fuzz_bodies(&rt, &world);
        rt.block_on(world.store.close());
    }
}

fn fuzz_bodies(rt: &tokio::runtime::Runtime, world: &World) {
    let endpoint = prop_oneof![
        4 => (0..ENDPOINTS.len()).prop_map(|i| (ENDPOINTS[i].method, ENDPOINTS[i].route)),
        1 => prop::sample::select(DELETE_ENDPOINTS).prop_map(|r| ("DELETE", r)),
    ];
    let strategy = (
        endpoint,
        prop::collection::vec(path_arg(), 3),
        body(),
        any::<bool>(),
        prop::sample::select(vec![
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
        ]),
    );
    run(
        256,
        strategy,
        |((method, route), args, body, as_admin, content_type)| {
            let uri = fill(route, &args);
            let token = if as_admin { &world.admin } else { &world.alice };
            rt.block_on(async {
                let (status, answer) = world
                    .send(
                        method,
                        &uri,
                        token,
                        body.clone(),
                        &[("content-type", content_type)],
                    )
                    .await;
                let what = format!(
                    "{}: {method} {uri} {:?}",
                    world.engine,
                    String::from_utf8_lossy(&body)
                );
                let errors = if route.contains("oauth2/authorize") {
                    Errors::Page
                } else if route.contains("oauth2/") {
                    Errors::OAuth
                } else {
                    Errors::Json
                };
                check_answer(&what, status, &answer, errors)?;
                // What was stored reads back: the lists and models show it without a 5xx.
                for probe in PROBES {
                    let (status, answer) =
                        world.send("GET", probe, &world.admin, vec![], &[]).await;
                    check_answer(
                        &format!("GET {probe} after {what}"),
                        status,
                        &answer,
                        Errors::Json,
                    )?;
                }
                // Keep the default server stopped, so that the next start is checked again.
                let (status, answer) = world
                    .send(
                        "DELETE",
                        "/hub/api/users/alice/server",
                        &world.admin,
                        vec![],
                        &[],
                    )
                    .await;
                check_answer("stop alice's server", status, &answer, Errors::Json)
            })
        },
    );
}

/// `user_options` of any shape in a start body: a valid request (201/202) or a 4xx whose message
/// names what is wrong; never a 5xx.
#[test]
fn arbitrary_user_options_start_or_name_the_field() {
    let rt = runtime();
    for world in rt.block_on(World::all()) {
        fuzz_user_options(&rt, &world);
        rt.block_on(world.store.close());
    }
}

fn fuzz_user_options(rt: &tokio::runtime::Runtime, world: &World) {
    let options = prop_oneof![
        3 => prop::collection::btree_map(
            prop::sample::select(vec![
                "profile", "kind", "image", "resources", "nodePool", "dataSources", "dask",
                "default_url",
            ]).prop_map(str::to_owned),
            json_value(),
            0..4,
        ).prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => json_value(),
    ];
    run(128, (options, any::<bool>()), |(options, wrapped)| {
        let body = if wrapped {
            json!({"user_options": options})
        } else {
            options.clone()
        };
        rt.block_on(async {
            let bytes = serde_json::to_vec(&body).unwrap();
            let (status, answer) = world
                .send(
                    "POST",
                    "/hub/api/users/alice/server",
                    &world.alice,
                    bytes,
                    &[],
                )
                .await;
            let what = format!("{}: start with {body}", world.engine);
            check_answer(&what, status, &answer, Errors::Json)?;
            prop_assert!(
                matches!(status, 201 | 202 | 400 | 403),
                "{what}: {status} {}",
                String::from_utf8_lossy(&answer)
            );
            let (status, answer) = world
                .send(
                    "DELETE",
                    "/hub/api/users/alice/server",
                    &world.admin,
                    vec![],
                    &[],
                )
                .await;
            check_answer("stop", status, &answer, Errors::Json)
        })
    });
}

/// Arbitrary query strings on the lists: never a 5xx; a page never holds more than the clamped
/// limit, and the paginated envelope says so.
#[test]
fn arbitrary_queries_never_give_5xx() {
    let rt = runtime();
    for world in rt.block_on(World::all()) {
        fuzz_queries(&rt, &world);
        rt.block_on(world.store.close());
    }
}

fn fuzz_queries(rt: &tokio::runtime::Runtime, world: &World) {
    rt.block_on(async {
        for i in 0..5 {
            world
                .store
                .create_user(&format!("u{i}"), false)
                .await
                .unwrap();
        }
    });
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-3i64..10).prop_map(|n| n.to_string()),
        text().prop_map(|t| atelier::hub::page::url_encode(&t)),
        Just("%".to_owned()),
        Just("%ZZ".to_owned()),
        Just("%FF".to_owned()),
        Just("1e3".to_owned()),
    ];
    let pair = (
        prop::sample::select(vec![
            "offset",
            "limit",
            "state",
            "name_filter",
            "include_stopped_servers",
            "x",
            "",
        ]),
        prop::option::of(value),
    );
    let strategy = (
        prop::sample::select(vec![
            "/hub/api/users",
            "/hub/api/groups",
            "/hub/api/proxy",
            "/hub/api/users/alice/jobs",
            "/hub/api/users/alice/tokens",
            "/hub/api/services",
        ]),
        prop::collection::vec(pair, 0..4),
        any::<bool>(),
    );
    run(256, strategy, |(path, pairs, paginated)| {
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => (*k).to_owned(),
            })
            .collect();
        let uri = format!("{path}?{}", query.join("&"));
        let accept = if paginated {
            "application/jupyterhub-pagination+json"
        } else {
            "application/json"
        };
        rt.block_on(async {
            let (status, answer) = world
                .send("GET", &uri, &world.admin, vec![], &[("accept", accept)])
                .await;
            check_answer(
                &format!("{}: GET {uri}", world.engine),
                status,
                &answer,
                Errors::Json,
            )?;
            let v: Value = serde_json::from_slice(&answer).unwrap_or_default();
            if status == 200 && paginated && v.get("_pagination").is_some() {
                let limit = v["_pagination"]["limit"].as_u64();
                prop_assert!(limit.is_some_and(|l| (1..=200).contains(&l)), "{uri}: {v}");
                let items = v["items"].as_array().map_or(0, Vec::len) as u64;
                prop_assert!(items <= limit.unwrap(), "{uri}: {v}");
            }
            Ok(())
        })
    });
}

/// A valid body on each endpoint still works (the fuzzing above did not only see errors).
#[test]
fn valid_bodies_still_work() {
    let rt = runtime();
    rt.block_on(async {
        for w in World::all().await {
            let admin = w.admin.clone();
            let none = Value::Null;
            let cases: &[(&str, &str, Value, &[u16])] = &[
                (
                    "POST",
                    "/hub/api/users",
                    json!({"usernames": ["carol", "dave"]}),
                    &[201],
                ),
                (
                    "POST",
                    "/hub/api/users/erin",
                    json!({"admin": false}),
                    &[201],
                ),
                (
                    "PATCH",
                    "/hub/api/users/erin",
                    json!({"admin": true}),
                    &[200],
                ),
                (
                    "POST",
                    "/hub/api/users/alice/activity",
                    json!({"last_activity": "2026-01-02T03:04:05Z"}),
                    &[200],
                ),
                (
                    "POST",
                    "/hub/api/users/alice/server",
                    json!({"profile": "pangeo"}),
                    &[201, 202],
                ),
                (
                    "POST",
                    "/hub/api/users/alice/servers/gpu",
                    json!({"user_options": {}}),
                    &[201, 202],
                ),
                (
                    "DELETE",
                    "/hub/api/users/alice/servers/gpu",
                    none.clone(),
                    &[202, 204],
                ),
                (
                    "PATCH",
                    "/hub/api/users/alice/servers/gpu",
                    json!({"display_name": "GPU"}),
                    &[200],
                ),
                (
                    "PUT",
                    "/hub/api/users/bob/servers/spare",
                    json!({}),
                    &[200, 201],
                ),
                (
                    "POST",
                    "/hub/api/users/bob/servers/",
                    json!({"user_options": {}}),
                    &[201, 202],
                ),
                (
                    "DELETE",
                    "/hub/api/users/bob/server",
                    none.clone(),
                    &[202, 204],
                ),
                (
                    "PATCH",
                    "/hub/api/users/bob/servers/",
                    json!({"display_name": "Main"}),
                    &[200],
                ),
                (
                    "POST",
                    "/hub/api/users/alice/tokens",
                    json!({"note": "fuzz", "expires_in": 60}),
                    &[201],
                ),
                (
                    "POST",
                    "/hub/api/groups",
                    json!({"groups": ["g1", "g2"]}),
                    &[201],
                ),
                (
                    "POST",
                    "/hub/api/groups/ocean",
                    json!({"users": ["alice"]}),
                    &[201],
                ),
                (
                    "POST",
                    "/hub/api/groups/ocean/users",
                    json!({"users": ["bob"]}),
                    &[200],
                ),
                (
                    "PUT",
                    "/hub/api/groups/ocean/properties",
                    json!({"colour": "blue"}),
                    &[200],
                ),
                (
                    "DELETE",
                    "/hub/api/groups/ocean/users",
                    json!({"users": ["bob"]}),
                    &[200, 204],
                ),
                ("POST", "/hub/api/proxy", none.clone(), &[200]),
                (
                    "DELETE",
                    "/hub/api/users/alice/servers/gpu",
                    json!({"remove": true}),
                    &[202, 204],
                ),
                (
                    "POST",
                    "/hub/api/shutdown",
                    json!({"servers": false}),
                    &[202],
                ),
            ];
            for (method, uri, body, want) in cases {
                let bytes = match body {
                    Value::Null => Vec::new(),
                    body => serde_json::to_vec(body).unwrap(),
                };
                let (status, answer) = w.send(method, uri, &admin, bytes, &[]).await;
                assert!(
                    want.contains(&status),
                    "{}: {method} {uri} {body}: {status} {}",
                    w.engine,
                    String::from_utf8_lossy(&answer)
                );
            }
            w.store.close().await;
        }
    });
}

/// Every route with POST, PUT or PATCH (or `any`) in the routers' source has its entry in
/// [`ENDPOINTS`]: a new endpoint fails here until it is fuzzed.
#[test]
fn every_body_route_is_fuzzed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut declared = BTreeSet::new();
    let method = Regex::new(r"\b(post|put|patch|any)\(").unwrap();
    for file in ["src/hub/api/mod.rs", "src/hub/auth/oauth.rs"] {
        let src = std::fs::read_to_string(root.join(file)).unwrap();
        for chunk in src.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).unwrap().to_owned();
            let chunk = chunk.split(".layer(").next().unwrap();
            for m in method.captures_iter(chunk) {
                let m = match &m[1] {
                    "any" => "POST".to_owned(),
                    other => other.to_ascii_uppercase(),
                };
                declared.insert((m, path.clone()));
            }
        }
    }
    assert!(
        declared.len() >= 20,
        "the routes were not found: {declared:?}"
    );
    let fuzzed: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|e| (e.method.to_owned(), e.route.to_owned()))
        .collect();
    let missing: Vec<_> = declared.difference(&fuzzed).collect();
    assert!(
        missing.is_empty(),
        "routes without a fuzz entry in ENDPOINTS: {missing:?}"
    );
    let stale: Vec<_> = fuzzed.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "ENDPOINTS entries the routers no longer have: {stale:?}"
    );
}

/// NUL characters (which PostgreSQL's text and jsonb refuse) in every kind of stored string:
/// refused with a 400 or stored, never a 500.
#[test]
fn nul_characters_are_refused_or_stored() {
    let rt = runtime();
    rt.block_on(async {
        for w in World::all().await {
            let nul = "a\u{0}b";
            let cases: Vec<(&str, String, Value)> = vec![
                (
                    "POST",
                    "/hub/api/users/alice/tokens".into(),
                    json!({"note": nul}),
                ),
                (
                    "POST",
                    "/hub/api/users/alice/tokens".into(),
                    json!({"scopes": [nul]}),
                ),
                ("POST", "/hub/api/users".into(), json!({"usernames": [nul]})),
                ("POST", "/hub/api/groups".into(), json!({"groups": [nul]})),
                (
                    "POST",
                    "/hub/api/groups/ocean".into(),
                    json!({"properties": {nul: nul}}),
                ),
                (
                    "PUT",
                    "/hub/api/groups/ocean/properties".into(),
                    json!({"k": nul}),
                ),
                (
                    "POST",
                    "/hub/api/users/alice/servers/gpu".into(),
                    json!({"user_options": {"x": nul}, "display_name": nul}),
                ),
                (
                    "DELETE",
                    "/hub/api/users/alice/servers/gpu".into(),
                    Value::Null,
                ),
                (
                    "PATCH",
                    "/hub/api/users/alice/servers/gpu".into(),
                    json!({"display_name": nul, "user_options": {nul: 1}}),
                ),
                (
                    "POST",
                    "/hub/api/users/alice/jobs".into(),
                    json!({"command": ["echo", nul], "env": {"A": nul}}),
                ),
                (
                    "POST",
                    "/hub/api/users/alice/activity".into(),
                    json!({"last_activity": "2026-01-02T03:04:05Z", "servers": {nul: {}}}),
                ),
            ];
            for (method, uri, body) in cases {
                let bytes = match &body {
                    Value::Null => Vec::new(),
                    body => serde_json::to_vec(body).unwrap(),
                };
                let (status, answer) = w.send(method, &uri, &w.admin, bytes, &[]).await;
                let what = format!("{}: {method} {uri} {body}", w.engine);
                check_answer(&what, status, &answer, Errors::Json).unwrap();
                for probe in PROBES {
                    let (status, answer) = w.send("GET", probe, &w.admin, vec![], &[]).await;
                    check_answer(
                        &format!("GET {probe} after {what}"),
                        status,
                        &answer,
                        Errors::Json,
                    )
                    .unwrap();
                }
            }
            // Below the API, the store refuses what PostgreSQL cannot store as invalid input
            // (a 400 wherever it comes from), not as a failure.
            let alice = w.store.get_user("alice").await.unwrap();
            let mut token = NewToken::new(TokenOwner::User(alice.id), vec!["self".into()]);
            token.note = Some(nul.into());
            match (w.engine, w.store.create_token(&token).await) {
                ("postgres", Err(StoreError::Invalid(_))) | ("sqlite", Ok(_)) => {}
                (engine, other) => panic!("{engine}: a note with a NUL: {other:?}"),
            }
            w.store.close().await;
        }
    });
}
