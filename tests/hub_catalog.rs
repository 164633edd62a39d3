//! The hub's catalogue (`--catalog`; `src/hub/catalog.rs`) in an in-process hub: the spawn
//! form offers only the profiles, pools, GPUs and data sources the user's groups allow (names
//! escaped), and a start from the form or the REST API that breaks a rule is refused (403
//! naming the rule, 400 naming a malformed field) before anything starts. An empty catalogue
//! is the old behaviour: one default profile, no check. On SQLite and PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier::backend::{
    BackendError, BackendStatus, ProgressEvent, SpawnRequest, Spawned, WorkspaceBackend,
};
use atelier::hub::catalog::{Catalog, SharedCatalog};
use atelier::hub::serve::{HubArgs, build_hub};
use atelier::hub::{self, Hub, HubConfig, HubState};
use atelier::store::{NewToken, ServerState, Store, StoreError, TokenOwner};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use common::TestDb;

fn sqlite_db() -> TestDb {
    TestDb::sqlite("atelier-hub-catalog")
}

async fn postgres_db() -> Option<TestDb> {
    TestDb::postgres("atelier_catalog", "PostgreSQL hub catalogue tests").await
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/examples")
}

/// crds/examples plus a profile whose names need escaping.
fn catalog() -> Catalog {
    let mut c = Catalog::load(&examples_dir()).expect("crds/examples load");
    c.add_yaml(
        Path::new("extra.yaml"),
        r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: tricky}
spec:
  displayName: "<b>Bold</b> & co"
  description: "<script>alert(1)</script>"
  image: lab:1
  allowedGroups: [ocean-physics]
"#,
    )
    .expect("extra profile");
    c
}

// ---- a backend that records what it is asked to start ----------------------------------------

#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<SpawnRequest>>,
}

impl Recorder {
    fn requests(&self) -> Vec<SpawnRequest> {
        self.requests.lock().unwrap().clone()
    }

    fn last(&self, user: &str, server: &str) -> SpawnRequest {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.user == user && r.server == server)
            .expect("a spawn request")
    }
}

impl WorkspaceBackend for Recorder {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        _progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>> {
        Box::pin(async move {
            let handle = json!({"user": request.user, "server": request.server});
            self.requests.lock().unwrap().push(request);
            Ok(Spawned {
                url: "http://127.0.0.1:9".into(),
                handle,
            })
        })
    }

    fn stop<'a>(&'a self, _handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn poll<'a>(
        &'a self,
        _handle: &'a Value,
    ) -> BoxFuture<'a, Result<BackendStatus, BackendError>> {
        Box::pin(async {
            Ok(BackendStatus::Running {
                url: "http://127.0.0.1:9".into(),
            })
        })
    }
}

// ---- the hub under test ---------------------------------------------------------------------

struct Resp {
    status: u16,
    location: Option<String>,
    cookie: Option<String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn xsrf(&self) -> String {
        let re = regex::Regex::new(r#"name="_xsrf" value="([^"]*)""#).unwrap();
        re.captures(&self.body).expect("an _xsrf field")[1].to_owned()
    }
}

struct Served {
    hub: HubState,
    backend: Arc<Recorder>,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Served {
    async fn start(db: &TestDb, catalog: Catalog) -> Served {
        let store = Store::connect(db.url()).await.expect("connect");
        let backend = Arc::new(Recorder::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = HubConfig::new(&base, &format!("{base}/hub/api"));
        config.dev_login = true;
        config.catalog = SharedCatalog::new(catalog);
        let hub = Hub::new(store, backend.clone(), config);
        let app = hub::router(hub.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Served {
            hub,
            backend,
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            task,
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: String) -> Resp {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let header = |name: &str| {
            parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        Resp {
            status: parts.status.as_u16(),
            location: header("location").into_iter().next(),
            cookie: header("set-cookie")
                .into_iter()
                .find(|c| c.starts_with("atelier-session="))
                .and_then(|c| c.split(';').next().map(str::to_owned)),
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A browser session logged in as `name` (dev login) in `groups`.
    async fn browser(&self, name: &str, groups: &[&str]) -> Browser<'_> {
        let mut b = Browser {
            hub: self,
            cookie: String::new(),
            xsrf: String::new(),
        };
        let page = b.get("/hub/login").await;
        let r = b
            .post("/hub/login", &[("_xsrf", &page.xsrf()), ("username", name)])
            .await;
        assert_eq!(r.status, 303, "login: {}", r.body);
        let user = self.hub.store.get_user(name).await.unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.hub
            .store
            .set_user_groups(user.id, &groups)
            .await
            .unwrap();
        b.xsrf = b.get("/hub/home").await.xsrf();
        b
    }

    /// An API token of `name` (scope `self`).
    async fn token(&self, name: &str) -> String {
        let user = self.hub.store.get_user(name).await.unwrap();
        self.hub
            .store
            .create_token(&NewToken::new(
                TokenOwner::User(user.id),
                vec!["self".into()],
            ))
            .await
            .unwrap()
            .0
    }

    /// `POST /hub/api/users/{user}/servers/{server}` with `body`.
    async fn api_start(&self, token: &str, user: &str, server: &str, body: Option<Value>) -> Resp {
        let path = if server.is_empty() {
            format!("/hub/api/users/{user}/server")
        } else {
            format!("/hub/api/users/{user}/servers/{server}")
        };
        let auth = format!("token {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.send(
            "POST",
            &path,
            &headers,
            body.map(|b| b.to_string()).unwrap_or_default(),
        )
        .await
    }

    async fn wait_for(&self, user: &str, server: &str, state: ServerState) {
        for _ in 0..1200 {
            match self.hub.store.get_server_by_names(user, server).await {
                Ok(s) if s.state == state => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("{user}/{server} never became {}", state.as_str());
    }

    /// Nothing was started for, and no row written for, `user`/`server`.
    async fn nothing_started(&self, user: &str, server: &str) {
        assert!(
            !self
                .backend
                .requests()
                .iter()
                .any(|r| r.user == user && r.server == server),
            "{user}/{server} was started"
        );
        assert!(
            matches!(
                self.hub.store.get_server_by_names(user, server).await,
                Err(StoreError::NotFound)
            ),
            "{user}/{server} has a row"
        );
    }
}

struct Browser<'a> {
    hub: &'a Served,
    cookie: String,
    xsrf: String,
}

impl Browser<'_> {
    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Resp {
        let mut headers = vec![("cookie", self.cookie.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        let r = self
            .hub
            .send(method, path, &headers, body.unwrap_or_default())
            .await;
        if let Some(c) = &r.cookie {
            self.cookie = c.clone();
        }
        r
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, None).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send("POST", path, Some(body)).await
    }

    /// Posts the spawn form of `server` with the CSRF token and `fields`.
    async fn spawn(&mut self, user: &str, server: &str, fields: &[(&str, &str)]) -> Resp {
        let xsrf = self.xsrf.clone();
        let mut all = vec![("_xsrf", xsrf.as_str())];
        all.extend_from_slice(fields);
        let path = if server.is_empty() {
            format!("/hub/spawn/{user}")
        } else {
            format!("/hub/spawn/{user}/{server}")
        };
        self.post(&path, &all).await
    }
}

macro_rules! stories {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$story(super::sqlite_db()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::postgres_db().await else { return };
                super::$story(db).await;
            }
        }
    )*};
}

stories!(
    the_form_offers_what_the_groups_allow,
    forbidden_starts_are_refused_from_the_form,
    forbidden_starts_are_refused_by_the_api,
    allowed_starts_carry_the_choices_to_the_backend,
    an_empty_catalogue_is_the_old_behaviour,
);

// ---- loading ----------------------------------------------------------------------------------

#[tokio::test]
async fn catalog_flag_loads_the_examples_and_names_a_bad_file() {
    let dir = std::env::temp_dir().join(format!(
        "atelier-catalog-{}",
        &atelier::store::tokens::generate_token()[..12]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = TestDb::sqlite_at(dir.join("hub.sqlite"));
    let args = |catalog: PathBuf| HubArgs {
        database_url: db.url().to_owned(),
        state_dir: dir.join("state"),
        catalog: Some(catalog),
        ..HubArgs::defaults()
    };

    // A directory of manifests (crds/examples: Workspaces and BatchJobs are skipped).
    let store = Store::connect(db.url()).await.unwrap();
    let hub = build_hub(&args(examples_dir()), store.clone(), None)
        .await
        .expect("crds/examples load");
    let c = hub.config.catalog.get();
    assert_eq!(
        (c.profiles.len(), c.pools.len(), c.data_sources.len()),
        (4, 3, 3)
    );

    // A multi-document file with a mistake: the error names the file, document and field.
    let bad = dir.join("catalog.yaml");
    std::fs::write(
        &bad,
        "apiVersion: atelier.dev/v1alpha1\nkind: NodePool\nmetadata: {name: cpu}\nspec: {purpose: interactive}\n---\n\
         apiVersion: atelier.dev/v1alpha1\nkind: WorkspaceProfile\nmetadata: {name: p}\nspec: {displayName: P, image: i, maxResources: {gpus: many}}\n",
    )
    .unwrap();
    let err = build_hub(&args(bad.clone()), store.clone(), None)
        .await
        .err()
        .expect("a bad catalogue is refused")
        .to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("document 2"), "{err}");
    assert!(err.contains("spec.maxResources.gpus"), "{err}");
    store.close().await;
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- stories ----------------------------------------------------------------------------------

async fn the_form_offers_what_the_groups_allow(db: TestDb) {
    let web = Served::start(&db, catalog()).await;
    let mut alice = web.browser("alice", &["ocean-physics"]).await;
    let mut bob = web.browser("bob", &["vo.example.org"]).await;

    let page = alice.get("/hub/spawn/alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let a = &page.body;
    for present in [
        r#"name="profile" value="pangeo""#,
        r#"name="profile" value="gpu-ml""#,
        r#"name="profile" value="tricky""#,
        r#"name="gpu-ml/nodePool""#,
        r#"<option value="gpu-trex">"#,
        r#"name="gpu-ml/gpus" type="number" min="0" max="2""#,
        r#"<option value="a100">a100</option>"#,
        r#"name="gpu-ml/dataSource/argo-floats""#,
        r#"name="pangeo/dataSource/sentinel-2-l2a""#,
        "GPU machine learning (PyTorch)",
        "64Gi",
    ] {
        assert!(a.contains(present), "alice's form lacks {present}");
    }
    // Names are escaped.
    assert!(a.contains("&lt;b&gt;Bold&lt;"), "display name not escaped");
    assert!(a.contains("&amp; co"));
    assert!(!a.contains("<script>alert(1)"), "description not escaped");
    // Not hers: the batch pool and the VO's scratch space.
    assert!(!a.contains(r#"<option value="batch">"#));
    assert!(!a.contains("vo-scratch"));

    let page = bob.get("/hub/spawn/bob").await;
    assert_eq!(page.status, 200);
    let b = &page.body;
    assert!(b.contains(r#"name="profile" value="pangeo""#));
    assert!(b.contains(r#"<option value="batch">"#));
    assert!(b.contains(r#"name="pangeo/dataSource/vo-scratch""#));
    for absent in ["gpu-ml", "tricky", "gpu-trex", "argo-floats", "/gpus\""] {
        assert!(!b.contains(absent), "bob's form shows {absent}");
    }
}

async fn forbidden_starts_are_refused_from_the_form(db: TestDb) {
    let web = Served::start(&db, catalog()).await;
    let mut bob = web.browser("bob", &["vo.example.org"]).await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("profile", "gpu-ml")], "ProfileForbidden"),
        (&[("profile", "nope")], "ProfileNotFound"),
        (
            &[("profile", "pangeo"), ("pangeo/nodePool", "gpu-trex")],
            "NodePoolForbidden",
        ),
        (
            &[("profile", "pangeo"), ("pangeo/gpus", "1")],
            "NoEligiblePool",
        ),
        (
            &[
                ("profile", "pangeo"),
                ("pangeo/dataSource/argo-floats", "on"),
            ],
            "DataSourceForbidden",
        ),
        (
            &[("profile", "pangeo"), ("pangeo/cpu", "64")],
            "ResourcesExceedProfile",
        ),
    ];
    for (fields, reason) in cases {
        let r = bob.spawn("bob", "lab", fields).await;
        assert_eq!(r.status, 403, "{fields:?}: {}", r.body);
        assert!(
            r.body.contains(reason),
            "{fields:?}: no {reason} in {}",
            r.body
        );
        // The form again, to choose otherwise.
        assert!(r.body.contains(r#"name="profile""#));
        web.nothing_started("bob", "lab").await;
    }
    let r = bob.spawn("bob", "", &[("profile", "gpu-ml")]).await;
    assert_eq!(r.status, 403);
    assert!(
        r.body
            .contains("WorkspaceProfile gpu-ml is open only to groups"),
        "{}",
        r.body
    );

    // Malformed values: 400 naming the field.
    for (fields, field) in [
        (
            &[("profile", "pangeo"), ("pangeo/gpus", "two")][..],
            "user_options.resources.gpus",
        ),
        (
            &[("profile", "pangeo"), ("pangeo/cpu", "lots")][..],
            "user_options.resources.cpu",
        ),
        (
            &[("profile", "pangeo"), ("pangeo/nodePool", "Not A Pool")][..],
            "user_options.nodePool",
        ),
    ] {
        let r = bob.spawn("bob", "lab", fields).await;
        assert_eq!(r.status, 400, "{fields:?}: {}", r.body);
        assert!(
            r.body.contains(field),
            "{fields:?}: no {field} in {}",
            r.body
        );
        web.nothing_started("bob", "lab").await;
    }
    assert!(web.backend.requests().is_empty());
}

async fn forbidden_starts_are_refused_by_the_api(db: TestDb) {
    let web = Served::start(&db, catalog()).await;
    let _bob = web.browser("bob", &["vo.example.org"]).await;
    let token = web.token("bob").await;
    let cases = [
        (json!({"profile": "gpu-ml"}), "ProfileForbidden"),
        (
            json!({"profile": "pangeo", "nodePool": "gpu-trex"}),
            "NodePoolForbidden",
        ),
        (
            json!({"profile": "pangeo", "resources": {"gpus": 1}}),
            "NoEligiblePool",
        ),
        (
            json!({"profile": "pangeo", "dataSources": ["argo-floats"]}),
            "DataSourceForbidden",
        ),
        (
            json!({"profile": "pangeo", "dataSources": ["nowhere"]}),
            "DataSourceNotFound",
        ),
        (
            json!({"profile": "pangeo", "kind": "rstudio"}),
            "KindOverrideForbidden",
        ),
    ];
    for (options, reason) in cases {
        let r = web
            .api_start(&token, "bob", "lab", Some(json!({"user_options": options})))
            .await;
        assert_eq!(r.status, 403, "{options}: {}", r.body);
        let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.starts_with(&format!("{reason}: ")),
            "{options}: {message}"
        );
        web.nothing_started("bob", "lab").await;
    }
    let r = web
        .api_start(
            &token,
            "bob",
            "",
            Some(json!({"user_options": {"profile": "gpu-ml"}})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        "ProfileForbidden: WorkspaceProfile gpu-ml is open only to groups \
         [ocean-physics, vo.example.org:role=member]; user bob is in [vo.example.org]"
    );

    // Malformed user_options: 400 naming the field.
    for (options, field) in [
        (
            json!({"resources": {"gpus": "two"}}),
            "user_options.resources.gpus",
        ),
        (
            json!({"resources": {"memory": "a lot"}}),
            "user_options.resources.memory",
        ),
        (
            json!({"dataSources": "argo-floats"}),
            "user_options.dataSources",
        ),
        (json!({"profile": 7}), "user_options.profile"),
    ] {
        let r = web
            .api_start(&token, "bob", "lab", Some(json!({"user_options": options})))
            .await;
        assert_eq!(r.status, 400, "{options}: {}", r.body);
        let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(field), "{options}: {message}");
        web.nothing_started("bob", "lab").await;
    }
    assert!(web.backend.requests().is_empty());
}

async fn allowed_starts_carry_the_choices_to_the_backend(db: TestDb) {
    let web = Served::start(&db, catalog()).await;
    let mut alice = web.browser("alice", &["ocean-physics"]).await;
    let mut bob = web.browser("bob", &["vo.example.org"]).await;

    // The form: alice's GPU choices.
    let r = alice
        .spawn(
            "alice",
            "",
            &[
                ("profile", "gpu-ml"),
                ("gpu-ml/nodePool", "gpu-trex"),
                ("gpu-ml/gpus", "2"),
                ("gpu-ml/gpuType", "a100"),
                ("gpu-ml/cpu", "16"),
                ("gpu-ml/memory", ""),
                ("gpu-ml/dataSource/argo-floats", "on"),
                // Another profile's fields are ignored.
                ("pangeo/cpu", "1000"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.location.as_deref().unwrap_or_default();
    assert!(
        to == "/hub/spawn-pending/alice" || to == "/user/alice/",
        "{to}"
    );
    web.wait_for("alice", "", ServerState::Running).await;
    let request = web.backend.last("alice", "");
    assert_eq!(request.profile.as_deref(), Some("gpu-ml"));
    assert_eq!(
        request.user_options,
        json!({"profile": "gpu-ml", "nodePool": "gpu-trex",
               "resources": {"cpu": "16", "gpus": 2, "gpuType": "a100"},
               "dataSources": ["argo-floats"]})
    );

    // The API: bob on the batch pool with the VO's scratch space.
    let token = web.token("bob").await;
    let options = json!({"profile": "rstudio-geospatial", "nodePool": "batch",
                         "dataSources": ["vo-scratch", "sentinel-2-l2a"]});
    let r = web
        .api_start(
            &token,
            "bob",
            "analysis",
            Some(json!({"user_options": options})),
        )
        .await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    web.wait_for("bob", "analysis", ServerState::Running).await;
    let request = web.backend.last("bob", "analysis");
    assert_eq!(request.profile.as_deref(), Some("rstudio-geospatial"));
    assert_eq!(request.user_options, options);

    // No profile named: the first one bob may use (the catalogue has no "default").
    let r = web.api_start(&token, "bob", "", None).await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    web.wait_for("bob", "", ServerState::Running).await;
    assert_eq!(
        web.backend.last("bob", "").profile.as_deref(),
        Some("pangeo")
    );
    // The same from the form without a choice.
    let r = bob.spawn("bob", "other", &[]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("bob", "other", ServerState::Running).await;
    assert_eq!(
        web.backend.last("bob", "other").profile.as_deref(),
        Some("pangeo")
    );

    // A restart reuses the last options, checked against the groups of now.
    let alice_token = web.token("alice").await;
    let stop = web
        .send(
            "DELETE",
            "/hub/api/users/alice/server",
            &[("authorization", &format!("token {alice_token}"))],
            String::new(),
        )
        .await;
    assert!(stop.status == 204 || stop.status == 202, "{}", stop.body);
    web.wait_for("alice", "", ServerState::Stopped).await;
    let user = web.hub.store.get_user("alice").await.unwrap();
    web.hub.store.set_user_groups(user.id, &[]).await.unwrap();
    let r = web.api_start(&alice_token, "alice", "", None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("ProfileForbidden: ")
    );
    web.hub
        .store
        .set_user_groups(user.id, &["ocean-physics".to_owned()])
        .await
        .unwrap();
    let r = web.api_start(&alice_token, "alice", "", None).await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    web.wait_for("alice", "", ServerState::Running).await;
    assert_eq!(
        web.backend.last("alice", "").user_options["resources"]["gpuType"],
        "a100"
    );
}

async fn an_empty_catalogue_is_the_old_behaviour(db: TestDb) {
    let web = Served::start(&db, Catalog::default()).await;
    let mut carol = web.browser("carol", &[]).await;
    let page = carol.get("/hub/spawn/carol").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Default environment"));
    assert!(!page.body.contains("nodePool"));
    let r = carol.spawn("carol", "", &[("profile", "")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("carol", "", ServerState::Running).await;
    let request = web.backend.last("carol", "");
    assert_eq!(request.profile, None);

    // The API checks nothing: the options reach the backend as given.
    let token = web.token("carol").await;
    let options = json!({"profile": "anything", "gpus": "many"});
    let r = web
        .api_start(&token, "carol", "x", Some(json!({"user_options": options})))
        .await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    web.wait_for("carol", "x", ServerState::Running).await;
    let request = web.backend.last("carol", "x");
    assert_eq!(request.profile.as_deref(), Some("anything"));
    assert_eq!(request.user_options, options);
}
