//! The hub's catalogue (`--catalog`; `src/hub/catalog.rs`) in an in-process hub: the spawn
//! form offers only the profiles, pools, GPUs and data sources the user's groups allow (names
//! escaped), and a start from the form or the REST API that breaks a rule is refused (403
//! naming the rule, 400 naming a malformed field) before anything starts. An empty catalogue
//! is the old behaviour: one default profile, no check. On SQLite and PostgreSQL.

mod common;

use std::path::{Path, PathBuf};

use atelier::hub::HubConfig;
use atelier::hub::catalog::{Catalog, SharedCatalog};
use atelier::hub::serve::{HubArgs, build_hub};
use atelier::store::{NewToken, ServerState, Store, StoreError, TokenOwner};
use serde_json::{Value, json};

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
        (4, 3, 5)
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
