//! The hub's catalogue (`--catalog`; `src/hub/catalog.rs`) in an in-process hub: the spawn
//! form offers only the profiles, pools, GPUs and data sources the user's groups allow (names
//! escaped), and a start from the form or the REST API that breaks a rule is refused (403
//! naming the rule, 400 naming a malformed field) before anything starts. An empty catalogue
//! is the old behaviour: one default profile, no check. On SQLite and PostgreSQL.
//!
//! With the `local` backend (real processes, a Python HTTP server standing in for the
//! single-user server) the catalogue's Secrets give a workspace its data sources: environment
//! with the keys of the user's group, the Intake catalogue and iRODS files in a directory of its
//! own, gone at stop; a Secret or key the catalogue lacks is a 403 before anything starts, an
//! unreachable endpoint a spawn failure; and no secret value ever shows in an answer, a
//! progress event, a log line or an audit row.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use atelier::backend::local::{LocalBackend, LocalConfig};
use atelier::backend::{
    BackendError, BackendStatus, ProgressEvent, SpawnRequest, Spawned, WorkspaceBackend,
};
use atelier::hub::HubConfig;
use atelier::hub::catalog::{Catalog, SharedCatalog};
use atelier::hub::serve::{HubArgs, build_hub};
use atelier::store::{AuditQuery, NewToken, ServerState, Store, StoreError, TokenOwner};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use common::TestDb;
use common::hub::{Browser, Resp, Served, TestBackend, stories};

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

// ---- the hub under test ---------------------------------------------------------------------

/// A hub over `db` with the dev login and `catalog`, whose servers run on a [`TestBackend`].
async fn serve(db: &TestDb, catalog: Catalog) -> Served {
    let store = Store::connect(db.url()).await.expect("connect");
    Served::start(store, TestBackend::new(), |base| {
        let mut config = HubConfig::new(base, &format!("{base}/hub/api"));
        config.dev_login = true;
        config.catalog = SharedCatalog::new(catalog);
        config
    })
    .await
}

impl Served {
    /// A browser session logged in as `name` (dev login) in `groups`, with its CSRF token.
    async fn member(&self, name: &str, groups: &[&str]) -> Member<'_> {
        let mut browser = self.logged_in(name).await;
        let user = self.hub.store.get_user(name).await.unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.hub
            .store
            .set_user_groups(user.id, &groups)
            .await
            .unwrap();
        let xsrf = browser.get("/hub/home").await.xsrf();
        Member { browser, xsrf }
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
        self.request(
            "POST",
            &path,
            &headers,
            body.map(|b| b.to_string()).unwrap_or_default(),
        )
        .await
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

/// A logged-in browser and its session's CSRF token.
struct Member<'a> {
    browser: Browser<'a>,
    xsrf: String,
}

impl Member<'_> {
    async fn get(&mut self, path: &str) -> Resp {
        self.browser.get(path).await
    }

    /// Posts the spawn form of `server` with the CSRF token and `fields`.
    async fn spawn(&mut self, user: &str, server: &str, fields: &[(&str, &str)]) -> Resp {
        let mut all = vec![("_xsrf", self.xsrf.as_str())];
        all.extend_from_slice(fields);
        let path = if server.is_empty() {
            format!("/hub/spawn/{user}")
        } else {
            format!("/hub/spawn/{user}/{server}")
        };
        self.browser.post(&path, &all).await
    }
}

stories!(
    the_form_offers_what_the_groups_allow,
    forbidden_starts_are_refused_from_the_form,
    forbidden_starts_are_refused_by_the_api,
    allowed_starts_carry_the_choices_to_the_backend,
    an_empty_catalogue_is_the_old_behaviour,
    local_starts_get_their_data_sources_and_no_secret_shows,
    missing_secrets_and_keys_refuse_local_starts,
    an_unreachable_endpoint_fails_the_spawn,
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
        (4, 3, 6)
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
    let web = serve(&db, catalog()).await;
    let mut alice = web.member("alice", &["ocean-physics"]).await;
    let mut bob = web.member("bob", &["vo.example.org"]).await;

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
    let web = serve(&db, catalog()).await;
    let mut bob = web.member("bob", &["vo.example.org"]).await;
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
    let web = serve(&db, catalog()).await;
    let _bob = web.member("bob", &["vo.example.org"]).await;
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
    let web = serve(&db, catalog()).await;
    let mut alice = web.member("alice", &["ocean-physics"]).await;
    let mut bob = web.member("bob", &["vo.example.org"]).await;

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
    let to = r.header("location").unwrap_or_default();
    assert!(
        to == "/hub/spawn-pending/alice" || to == "/user/alice/",
        "{to}"
    );
    web.wait_for("alice", "", ServerState::Running).await;
    let request = web.backend.request("alice", "");
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
    let request = web.backend.request("bob", "analysis");
    assert_eq!(request.profile.as_deref(), Some("rstudio-geospatial"));
    assert_eq!(request.user_options, options);

    // No profile named: the first one bob may use (the catalogue has no "default").
    let r = web.api_start(&token, "bob", "", None).await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    web.wait_for("bob", "", ServerState::Running).await;
    assert_eq!(
        web.backend.request("bob", "").profile.as_deref(),
        Some("pangeo")
    );
    // The same from the form without a choice.
    let r = bob.spawn("bob", "other", &[]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("bob", "other", ServerState::Running).await;
    assert_eq!(
        web.backend.request("bob", "other").profile.as_deref(),
        Some("pangeo")
    );

    // A restart reuses the last options, checked against the groups of now.
    let alice_token = web.token("alice").await;
    let stop = web
        .request(
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
        web.backend.request("alice", "").user_options["resources"]["gpuType"],
        "a100"
    );
}

async fn an_empty_catalogue_is_the_old_behaviour(db: TestDb) {
    let web = serve(&db, Catalog::default()).await;
    let mut carol = web.member("carol", &[]).await;
    let page = carol.get("/hub/spawn/carol").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Default environment"));
    assert!(!page.body.contains("nodePool"));
    let r = carol.spawn("carol", "", &[("profile", "")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    web.wait_for("carol", "", ServerState::Running).await;
    let request = web.backend.request("carol", "");
    assert_eq!(request.profile, None);

    // The API checks nothing: the options reach the backend as given.
    let token = web.token("carol").await;
    let options = json!({"profile": "anything", "gpus": "many"});
    let r = web
        .api_start(&token, "carol", "x", Some(json!({"user_options": options})))
        .await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    web.wait_for("carol", "x", ServerState::Running).await;
    let request = web.backend.request("carol", "x");
    assert_eq!(request.profile.as_deref(), Some("anything"));
    assert_eq!(request.user_options, options);
}

// ---- data sources on the local backend --------------------------------------------------------

/// The secret values of [`data_catalog`]: none may show anywhere but in the workspace.
const ACCESS_KEY: &str = "AKIAALICEOCEAN01";
const SECRET_KEY: &str = "ocean-Secret-9f2c1e77";
const IRODS_PASSWORD: &str = "irods-Pa55-7d1a3b";

/// What no answer, event, log line or audit row may contain: the values, and the base64 of
/// the one given as `data`.
const LEAKS: [&str; 4] = [
    ACCESS_KEY,
    SECRET_KEY,
    IRODS_PASSWORD,
    "QUtJQUFMSUNFT0NFQU4wMQ==",
];

/// A profile `lab`; DataSource `argo` (s3 at `endpoint`, the keys of Secret `ocean-s3` for
/// group `vo-ocean`) and `shelf` (irods, Secret `irods-reader` for everyone); the Secrets,
/// `ocean-s3` only `with_ocean`, its secret key only `with_key`.
fn data_catalog(endpoint: &str, with_ocean: bool, with_key: bool) -> Catalog {
    let mut text = format!(
        r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {{name: lab}}
spec: {{displayName: Lab, image: "lab:1"}}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {{name: cpu}}
spec: {{purpose: interactive}}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {{name: argo}}
spec:
  description: Argo floats
  s3:
    endpoint: {endpoint}
    bucket: argo
    prefix: x.zarr
    credentialsByGroup:
      - group: vo-ocean
        secret: {{name: ocean-s3}}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {{name: shelf}}
spec:
  irods:
    host: irods.example.org
    zone: tempZone
    path: /tempZone/home/shared
    credentialsSecret: {{name: irods-reader}}
---
apiVersion: v1
kind: Secret
metadata: {{name: irods-reader}}
stringData:
  IRODS_USER_NAME: reader
  IRODS_PASSWORD: {IRODS_PASSWORD}
"#
    );
    if with_ocean {
        text.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: ocean-s3}\n");
        text.push_str("data:\n  AWS_ACCESS_KEY_ID: QUtJQUFMSUNFT0NFQU4wMQ==\n");
        if with_key {
            text.push_str(&format!(
                "stringData:\n  AWS_SECRET_ACCESS_KEY: {SECRET_KEY}\n"
            ));
        }
    }
    let mut c = Catalog::default();
    c.add_yaml(Path::new("data.yaml"), &text)
        .expect("the data catalogue");
    c
}

/// Every log line of this test binary (the hub's, at debug level), for the leak checks.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        logs
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The real `local` backend (its kind is `local`, so the hub gives it the data sources), with
/// what the test watches: starts held at a gate, the requests' users and the progress events
/// it sent. Its servers' process groups are killed when the test ends, also on failure.
struct LocalRecorder {
    inner: LocalBackend,
    gate: watch::Sender<bool>,
    starts: Mutex<Vec<(String, String)>>,
    events: Mutex<Vec<ProgressEvent>>,
    groups: Mutex<Vec<i32>>,
}

impl LocalRecorder {
    fn new(state_dir: &Path) -> Arc<LocalRecorder> {
        let mut config = LocalConfig::new(state_dir);
        // `--ip=…` and `--port=N` become $0 and $1.
        config.command = vec![
            "sh".into(),
            "-c".into(),
            r#"exec python3 -m http.server --bind 127.0.0.1 "${1#--port=}""#.into(),
        ];
        config.start_timeout = Duration::from_secs(30);
        Arc::new(LocalRecorder {
            inner: LocalBackend::new(config),
            gate: watch::channel(true).0,
            starts: Mutex::default(),
            events: Mutex::default(),
            groups: Mutex::default(),
        })
    }

    fn hold(&self, hold: bool) {
        self.gate.send_replace(!hold);
    }

    fn started(&self, user: &str) -> bool {
        self.starts.lock().unwrap().iter().any(|(u, _)| u == user)
    }
}

impl Drop for LocalRecorder {
    fn drop(&mut self) {
        for &pgid in self.groups.lock().unwrap().iter() {
            if pgid > 1 {
                // SAFETY: only a signal, to a group this backend started for the test.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
        }
    }
}

impl WorkspaceBackend for LocalRecorder {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>> {
        Box::pin(async move {
            self.starts
                .lock()
                .unwrap()
                .push((request.user.clone(), request.server.clone()));
            let _ = self.gate.subscribe().wait_for(|open| *open).await;
            let (tx, mut rx) = mpsc::channel::<ProgressEvent>(32);
            let forward = async {
                while let Some(event) = rx.recv().await {
                    self.events.lock().unwrap().push(event.clone());
                    let _ = progress.send(event).await;
                }
            };
            let (spawned, ()) = tokio::join!(self.inner.start(request, tx), forward);
            if let Ok(spawned) = &spawned {
                let pgid = spawned.handle["pgid"].as_i64().unwrap_or(0) as i32;
                self.groups.lock().unwrap().push(pgid);
            }
            spawned
        })
    }

    fn stop<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>> {
        self.inner.stop(handle)
    }

    fn poll<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<BackendStatus, BackendError>> {
        self.inner.poll(handle)
    }
}

/// A hub over `db` with `catalog` whose servers run on a [`LocalRecorder`] under `state_dir`.
async fn serve_local(
    db: &TestDb,
    catalog: Catalog,
    state_dir: &Path,
) -> (Served, Arc<LocalRecorder>) {
    logs();
    let store = Store::connect(db.url()).await.expect("connect");
    let local = LocalRecorder::new(state_dir);
    let web = Served::start_on(
        common::hub::bind().await,
        store,
        TestBackend::new(),
        Some(local.clone()),
        |base| {
            let mut config = HubConfig::new(base, &format!("{base}/hub/api"));
            config.dev_login = true;
            config.catalog = SharedCatalog::new(catalog);
            config
        },
    )
    .await;
    (web, local)
}

/// A fresh state directory, removed when dropped.
struct StateDir(PathBuf);

impl StateDir {
    fn new(name: &str) -> StateDir {
        let dir = std::env::temp_dir().join(format!(
            "atelier-{name}-{}",
            &atelier::store::tokens::generate_token()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        StateDir(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP endpoint that accepts connections (and closes them), as an S3 server's port would.
async fn listening_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = common::hub::bind().await;
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    (url, task)
}

/// The environment of a running process.
fn environ(pid: i64) -> BTreeMap<String, String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    bytes
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

impl Served {
    /// Starts `user`'s default server through the API with `options` while the backend holds
    /// it, and reads its whole progress stream (every event, from "Server requested" to the
    /// end): the start's answer and the stream's body.
    async fn start_watched(
        &self,
        local: &LocalRecorder,
        token: &str,
        user: &str,
        options: Value,
    ) -> (Resp, String) {
        local.hold(true);
        let r = self
            .api_start(token, user, "", Some(json!({"user_options": options})))
            .await;
        let req = http::Request::get(format!(
            "{}/hub/api/users/{user}/server/progress",
            self.base
        ))
        .header("authorization", format!("token {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
        // The handler subscribes before it answers: the head means every event will come.
        let resp = self.client.request(req).await.expect("progress");
        assert_eq!(resp.status(), 200);
        local.hold(false);
        let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
            .await
            .expect("the progress stream ends")
            .expect("progress body")
            .to_bytes();
        (r, String::from_utf8_lossy(&body).into_owned())
    }
}

async fn local_starts_get_their_data_sources_and_no_secret_shows(db: TestDb) {
    let state = StateDir::new("data-local");
    let (endpoint, _s3) = listening_endpoint().await;
    let (web, local) = serve_local(&db, data_catalog(&endpoint, true, true), &state.0).await;
    let _alice = web.member("alice", &["vo-ocean"]).await;
    let _bob = web.member("bob", &[]).await;
    let (alice_token, bob_token) = (web.token("alice").await, web.token("bob").await);
    let mut answers: Vec<String> = Vec::new();

    // alice, in vo-ocean: her group's keys, the catalogue and the iRODS files.
    let (r, progress) = web
        .start_watched(
            &local,
            &alice_token,
            "alice",
            json!({"profile": "lab", "dataSources": ["argo", "shelf"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    answers.extend([r.body, progress.clone()]);
    assert!(
        progress.contains("Checking the data sources' endpoints"),
        "{progress}"
    );
    assert!(
        progress.contains("Data sources: .irodsA, catalog.yaml, irods_environment.json written"),
        "{progress}"
    );
    assert!(progress.contains("\"ready\":true"), "{progress}");
    web.wait_for("alice", "", ServerState::Running).await;
    let handle = web.server("alice", "").await.spawner_state;
    let env = environ(handle["pid"].as_i64().unwrap());
    let dir = state.0.join("run/alice/default.data");
    let file = |name: &str| dir.join(name).display().to_string();
    assert_eq!(handle["data_dir"], dir.display().to_string());
    assert_eq!(env["AWS_ACCESS_KEY_ID"], ACCESS_KEY);
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], SECRET_KEY);
    assert_eq!(env["ATELIER_DATA_ARGO_AWS_ACCESS_KEY_ID"], ACCESS_KEY);
    assert_eq!(env["ATELIER_DATA_ARGO_AWS_SECRET_ACCESS_KEY"], SECRET_KEY);
    assert_eq!(env["AWS_ENDPOINT_URL"], endpoint);
    assert_eq!(env["FSSPEC_S3_ENDPOINT_URL"], endpoint);
    assert_eq!(env["ATELIER_DATA_ARGO_URL"], "s3://argo/x.zarr");
    assert_eq!(env["IRODS_USER_NAME"], "reader");
    assert_eq!(env["IRODS_PASSWORD"], IRODS_PASSWORD);
    assert_eq!(env["IRODS_HOST"], "irods.example.org");
    assert!(!env.contains_key("FSSPEC_S3_ANON"));
    assert_eq!(env["ATELIER_DATA_CATALOG"], file("catalog.yaml"));
    assert_eq!(
        env["IRODS_ENVIRONMENT_FILE"],
        file("irods_environment.json")
    );
    assert_eq!(env["IRODS_AUTHENTICATION_FILE"], file(".irodsA"));
    // The JupyterHub environment is still there.
    assert_eq!(env["JUPYTERHUB_USER"], "alice");
    assert_eq!(mode(&dir.display().to_string()), 0o700);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".irodsA", "catalog.yaml", "irods_environment.json"]);
    for name in &names {
        assert_eq!(mode(&file(name)), 0o600, "{name}");
    }
    let catalog = std::fs::read_to_string(file("catalog.yaml")).unwrap();
    assert!(
        catalog.contains("argo:") && catalog.contains("shelf:"),
        "{catalog}"
    );
    assert!(catalog.contains("urlpath: s3://argo/x.zarr"), "{catalog}");
    assert!(
        catalog.contains("{{env(ATELIER_DATA_ARGO_AWS_SECRET_ACCESS_KEY)}}"),
        "{catalog}"
    );
    let irods: Value =
        serde_json::from_str(&std::fs::read_to_string(file("irods_environment.json")).unwrap())
            .unwrap();
    assert_eq!(
        irods,
        json!({"irods_host": "irods.example.org", "irods_port": 1247,
               "irods_zone_name": "tempZone", "irods_user_name": "reader",
               "irods_home": "/tempZone/home/reader", "irods_cwd": "/tempZone/home/shared"})
    );
    // python-irodsclient's obfuscation for this uid; only the timestamp characters (1 to 5)
    // depend on when it was written.
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let auth = std::fs::read_to_string(file(".irodsA")).unwrap();
    let expected = atelier::policy::data::irods_auth_file(IRODS_PASSWORD, uid, 0);
    assert_eq!(auth.chars().count(), expected.chars().count());
    assert_eq!(
        auth.chars().skip(6).collect::<String>(),
        expected.chars().skip(6).collect::<String>()
    );
    assert!(auth.starts_with('.'));

    // bob, in no group: anonymous s3, no key, only the catalogue.
    let (r, progress) = web
        .start_watched(
            &local,
            &bob_token,
            "bob",
            json!({"profile": "lab", "dataSources": ["argo"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    answers.extend([r.body, progress]);
    web.wait_for("bob", "", ServerState::Running).await;
    let bob_handle = web.server("bob", "").await.spawner_state;
    let env = environ(bob_handle["pid"].as_i64().unwrap());
    assert_eq!(env["FSSPEC_S3_ANON"], "true");
    assert_eq!(env["AWS_NO_SIGN_REQUEST"], "YES");
    assert_eq!(env["ATELIER_DATA_ARGO_ANONYMOUS"], "true");
    for (k, v) in &env {
        assert!(
            !k.contains("ACCESS_KEY") && !k.starts_with("IRODS_"),
            "bob has {k}"
        );
        for leak in LEAKS {
            assert!(!v.contains(leak), "bob's {k} holds a secret");
        }
    }
    let bob_dir = state.0.join("run/bob/default.data");
    assert_eq!(
        env["ATELIER_DATA_CATALOG"],
        bob_dir.join("catalog.yaml").display().to_string()
    );
    let bob_catalog = std::fs::read_to_string(bob_dir.join("catalog.yaml")).unwrap();
    assert!(bob_catalog.contains("anon: true"), "{bob_catalog}");
    assert_eq!(std::fs::read_dir(&bob_dir).unwrap().count(), 1);

    // What the API shows of them.
    for (user, token) in [("alice", &alice_token), ("bob", &bob_token)] {
        let r = web
            .request(
                "GET",
                &format!("/hub/api/users/{user}"),
                &[("authorization", &format!("token {token}"))],
                String::new(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        answers.push(r.body);
    }

    // A stop removes the data directory.
    for (user, token, dir) in [("alice", &alice_token, &dir), ("bob", &bob_token, &bob_dir)] {
        let r = web
            .request(
                "DELETE",
                &format!("/hub/api/users/{user}/server"),
                &[("authorization", &format!("token {token}"))],
                String::new(),
            )
            .await;
        assert!(r.status == 204 || r.status == 202, "{}", r.body);
        answers.push(r.body);
        web.wait_for(user, "", ServerState::Stopped).await;
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    // No secret in any answer, progress event, audit row or log line.
    let events = format!("{:?}", local.events.lock().unwrap());
    let audit = web
        .hub
        .store
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    assert!(!audit.is_empty());
    let audit = serde_json::to_string(&audit).unwrap();
    let rows = format!(
        "{:?} {:?}",
        web.server("alice", "").await,
        web.server("bob", "").await
    );
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        logs.contains("started server process"),
        "the logs were captured"
    );
    for leak in LEAKS {
        for (what, text) in [
            ("an API answer", answers.join("\n")),
            ("a progress event", events.clone()),
            ("an audit row", audit.clone()),
            ("a server row", rows.clone()),
            ("the logs", logs.clone()),
        ] {
            let line = text.lines().find(|l| l.contains(leak));
            assert!(line.is_none(), "a secret in {what}: {line:?}");
        }
    }
}

async fn missing_secrets_and_keys_refuse_local_starts(db: TestDb) {
    let state = StateDir::new("data-missing");
    let (endpoint, _s3) = listening_endpoint().await;
    let options = json!({"user_options": {"profile": "lab", "dataSources": ["argo"]}});

    // The Secret is not in the catalogue: 403 naming the source and the Secret.
    let (web, local) = serve_local(&db, data_catalog(&endpoint, false, false), &state.0).await;
    let mut alice = web.member("alice", &["vo-ocean"]).await;
    let token = web.token("alice").await;
    let r = web
        .api_start(&token, "alice", "", Some(options.clone()))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"status": 403, "message": "DataCredentialsNotFound: DataSource argo: Secret \
               ocean-s3 (credentials of group vo-ocean) does not exist in the hub's catalogue"})
    );
    // The form says the same.
    let page = alice
        .spawn(
            "alice",
            "",
            &[("profile", "lab"), ("lab/dataSource/argo", "on")],
        )
        .await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains("DataCredentialsNotFound"),
        "{}",
        page.body
    );
    web.nothing_started("alice", "").await;
    assert!(!local.started("alice"));
    // Not in the group, no credentials: no Secret needed.
    let _bob = web.member("bob", &[]).await;
    let bob_token = web.token("bob").await;
    let r = web
        .api_start(&bob_token, "bob", "", Some(options.clone()))
        .await;
    assert!(r.status == 201 || r.status == 202, "{}", r.body);
    web.wait_for("bob", "", ServerState::Running).await;
    let r = web
        .request(
            "DELETE",
            "/hub/api/users/bob/server",
            &[("authorization", &format!("token {bob_token}"))],
            String::new(),
        )
        .await;
    assert!(r.status == 204 || r.status == 202, "{}", r.body);
    web.wait_for("bob", "", ServerState::Stopped).await;
    drop(web);

    // The Secret lacks a key: 403 naming the Secret and the key.
    let (web, local) = serve_local(&db, data_catalog(&endpoint, true, false), &state.0).await;
    let _alice = web.member("alice", &["vo-ocean"]).await;
    let r = web.api_start(&token, "alice", "", Some(options)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.message(),
        "DataCredentialsNotFound: DataSource argo: Secret ocean-s3 has no key \
         AWS_SECRET_ACCESS_KEY"
    );
    web.nothing_started("alice", "").await;
    assert!(!local.started("alice"));
    assert!(!state.0.join("run/alice").exists());
}

async fn an_unreachable_endpoint_fails_the_spawn(db: TestDb) {
    let state = StateDir::new("data-unreachable");
    // A port nothing listens on any more.
    let closed = {
        let listener = common::hub::bind().await;
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (web, local) = serve_local(&db, data_catalog(&closed, true, true), &state.0).await;
    let _alice = web.member("alice", &["vo-ocean"]).await;
    let token = web.token("alice").await;
    let (r, progress) = web
        .start_watched(
            &local,
            &token,
            "alice",
            json!({"profile": "lab", "dataSources": ["argo"]}),
        )
        .await;
    assert!(r.status == 500 || r.status == 202, "{}", r.body);
    let message = format!("DataSource argo: endpoint {closed} unreachable: connection refused");
    assert!(
        progress.contains(&format!("Spawn failed: {message}")),
        "{progress}"
    );
    web.wait_for("alice", "", ServerState::Failed).await;
    // Nothing was started, nothing is left.
    assert!(!local.started("alice"));
    assert!(!state.0.join("run/alice/default.data").exists());
    let audit = web
        .hub
        .store
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.detail["message"] == message.as_str()),
        "{audit:?}"
    );
    let progress = web
        .request(
            "GET",
            "/hub/api/users/alice/server/progress",
            &[("authorization", &format!("token {token}"))],
            String::new(),
        )
        .await;
    assert!(progress.body.contains(&message), "{}", progress.body);
}
