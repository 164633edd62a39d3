//! Issue 14's kinds on the `local` backend, with the real peers: an `r` profile starts
//! JupyterLab with the R kernel (IRkernel), whose kernel evaluates `sum(1:10)` and reads a CSV
//! of a mounted data source (on the local backend: the directory at the source's `mountPath`
//! on this machine); kinds the machine cannot run are refused with a 400 naming the missing
//! program, and leave nothing behind; a mounted source whose path does not exist here is
//! refused too.
//!
//! `atelier hub` (with a catalogue) and `atelier proxy` run as processes, on SQLite and on
//! PostgreSQL (`ATELIER_TEST_POSTGRES_URL`). The hub runs with a `PATH` of its own (passed on
//! to the servers, `env_keep`): a directory holding `R` and the few tools R's start script
//! uses, and nothing of QGIS's (`Xvnc`, `websockify`, `qgis`) nor RStudio Server's (`rserver`),
//! so those kinds lack their programs whatever this machine has installed.
//!
//! Gated by `ATELIER_PEERS=1` (a missing peer is then a failure):
//! `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test kinds_local --
//! --nocapture`. Needs Debian's `r-base-core` and `r-cran-irkernel` (`.ci/test.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atelier::store::tokens::generate_token;
use serde_json::{Value, json};

mod common;

use atelier::backend::WorkspaceBackend;
use atelier::backend::local::{LocalBackend, LocalConfig};
use atelier::hub::catalog::{Catalog, SharedCatalog};
use atelier::store::Store;
use common::hub::{Served, TestBackend, bind, dev_login_config, peers_venv};
use common::kernel::Kernel;
use common::stack::Proc;
use common::story;
use common::{TestDb, say};

/// What R's start script (`/usr/bin/R`) runs, besides R itself.
const R_TOOLS: &[&str] = &[
    "R", "Rscript", "sh", "bash", "sed", "uname", "expr", "grep", "rm", "cat", "mkdir", "dirname",
    "basename", "tr", "ls", "readlink", "env", "which",
];

/// The mounted source's file.
const CSV: &str = "station,temperature\nbrest,11.5\nroscoff,12.25\nlorient,13\n";

struct World {
    dir: PathBuf,
    api: story::Api,
    procs: BTreeMap<String, Proc>,
}

impl Drop for World {
    fn drop(&mut self) {
        story::wind_up("kinds_local", &self.dir, &mut self.procs, Vec::new(), 80);
    }
}

impl std::ops::Deref for World {
    type Target = story::Api;

    fn deref(&self) -> &story::Api {
        &self.api
    }
}

/// A directory of symlinks to `tools` (found on this process's `PATH`): the servers' `PATH`.
fn tool_dir(dir: &Path, tools: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        let found = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} is not installed (r-base-core, .ci/test.sh)"));
        std::os::unix::fs::symlink(&found, bin.join(tool)).expect("symlink");
    }
    bin
}

fn catalog(shelf: &Path, gone: &Path) -> String {
    format!(
        "\
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {{name: interactive}}
spec: {{purpose: interactive}}
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {{name: r}}
spec: {{displayName: R, kind: r, image: r:1}}
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {{name: lab}}
spec: {{displayName: Lab, kind: jupyter, image: lab:1, allowKindOverride: true}}
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {{name: desktop}}
spec: {{displayName: QGIS, kind: qgis, image: qgis:1}}
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {{name: rstudio}}
spec: {{displayName: RStudio, kind: rstudio, image: rstudio:1}}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {{name: shelf}}
spec:
  description: Coastal stations
  pvc: {{claimName: shelf}}
  mountPath: {}
  readOnly: true
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {{name: gone}}
spec:
  nfs: {{server: nfs.example.org, path: /export/gone}}
  mountPath: {}
",
        shelf.display(),
        gone.display()
    )
}

impl World {
    async fn new(venv: &Path, db: &TestDb) -> World {
        let dir = std::env::temp_dir().join(format!("atelier-kinds-{}", &generate_token()[..16]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut world = World {
            dir,
            api: story::Api::new(),
            procs: BTreeMap::new(),
        };
        let shelf = world.dir.join("shelf");
        std::fs::create_dir_all(&shelf).expect("shelf");
        std::fs::write(shelf.join("stations.csv"), CSV).expect("csv");
        let catalog_path = world.dir.join("catalog.yaml");
        std::fs::write(&catalog_path, catalog(&shelf, &world.dir.join("gone"))).expect("catalog");
        let bin = tool_dir(&world.dir, R_TOOLS);
        let singleuser = venv.join("bin/jupyterhub-singleuser");
        let mut command = world.hub_command(db.url(), &world.dir.join("state"), &singleuser);
        command
            // The servers' PATH (the hub passes its own on): R, and no QGIS nor RStudio.
            .env("PATH", &bin)
            .arg(format!("--catalog={}", catalog_path.display()));
        world
            .api
            .launch(&world.dir, command, db.url(), &mut world.procs)
            .await;
        world
    }

    /// `POST /hub/api/users/<user>/server` with `user_options`.
    async fn start(&self, user: &str, token: &str, options: Value) -> (u16, String) {
        let url = format!("{}/hub/api/users/{user}/server", self.hub());
        self.call("POST", &url, token, Some(json!({"user_options": options})))
            .await
    }

    /// Asserts that a refused start left nothing: no server, nothing pending, no process.
    async fn assert_nothing_started(&self, user: &str) {
        let v = self.model(user).await;
        let server = &v["servers"][""];
        assert!(
            server.is_null() || (server["ready"] == false && server["pending"].is_null()),
            "{v}"
        );
        assert!(v["pending"].is_null(), "{v}");
        let logs = self.dir.join("state/logs");
        assert!(
            !logs.join(format!("{user}.log")).exists(),
            "a refused start ran a process"
        );
    }

    /// Starts a kernel named `name` on `user`'s default server (through the proxy).
    async fn kernel(&self, user: &str, token: &str, name: &str) -> Kernel {
        let url = format!("{}/user/{user}/api/kernels", self.public());
        let (status, body) = self
            .call("POST", &url, token, Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201, "POST {url}: {body}");
        let model: Value = serde_json::from_str(&body).expect("kernel model");
        assert_eq!(model["name"], name, "{model}");
        Kernel {
            proxy_port: self.proxy_port,
            user: user.to_owned(),
            token: token.to_owned(),
            id: model["id"].as_str().expect("kernel id").to_owned(),
        }
    }
}

async fn story(what: &str, db: TestDb) {
    let Some(venv) = peers_venv(what, &["jupyterhub-singleuser"]) else {
        return;
    };
    let world = World::new(&venv, &db).await;
    let ada = world.user("ada").await;

    // Kinds this machine (this PATH) cannot run: 400 naming what is missing, nothing started.
    let (status, body) = world
        .start("ada", &ada, json!({"profile": "desktop"}))
        .await;
    assert_eq!(status, 400, "{body}");
    for program in ["Xvnc", "websockify", "qgis", "tigervnc-standalone-server"] {
        assert!(body.contains(program), "{program} not named: {body}");
    }
    world.assert_nothing_started("ada").await;
    let (status, body) = world
        .start("ada", &ada, json!({"profile": "rstudio"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("rserver") && body.contains("RStudio Server"),
        "{body}"
    );
    world.assert_nothing_started("ada").await;
    // The same through a profile that lets the kind be chosen.
    let (status, body) = world
        .start("ada", &ada, json!({"profile": "lab", "kind": "rstudio"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("rserver"), "{body}");
    // A mounted source whose mountPath is not on this machine.
    let (status, body) = world
        .start(
            "ada",
            &ada,
            json!({"profile": "r", "dataSources": ["gone"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("dataSources") && body.contains("gone"),
        "{body}"
    );
    world.assert_nothing_started("ada").await;
    say("kinds_local: qgis and rstudio refused, naming what is missing");

    // R, for real: the ir kernel, and the mounted source's CSV at its mountPath.
    let (status, body) = world
        .start(
            "ada",
            &ada,
            json!({"profile": "r", "dataSources": ["shelf"]}),
        )
        .await;
    assert!(status == 201 || status == 202, "start r: {status} {body}");
    world.wait_ready("ada", &ada).await;
    let specs_url = format!("{}/user/ada/api/kernelspecs", world.public());
    let (status, body) = world.call("GET", &specs_url, &ada, None).await;
    assert_eq!(status, 200, "{body}");
    let specs: Value = serde_json::from_str(&body).expect("kernelspecs");
    assert_eq!(specs["default"], "ir", "{specs}");
    assert_eq!(
        specs["kernelspecs"]["ir"]["spec"]["language"], "R",
        "{specs}"
    );
    let kernel = world.kernel("ada", &ada, "ir").await;
    // IRkernel shows a value as display_data: print it on stdout, which the helper reads.
    let sum = kernel.run("cat(sum(1:10))").await.expect("sum(1:10)");
    assert_eq!(sum.trim(), "55");
    let csv = world.dir.join("shelf/stations.csv");
    let code = format!(
        "d <- read.csv(\"{}\")\ncat(nrow(d), sum(d$temperature), sep = \" \")",
        csv.display()
    );
    let read = kernel.run(&code).await.expect("read.csv");
    assert_eq!(read.trim(), "3 36.75");
    // The workspace's Intake catalogue lists the source at the same path.
    let catalog = kernel
        .run("cat(readLines(Sys.getenv(\"ATELIER_DATA_CATALOG\")), sep = \"\\n\")")
        .await
        .expect("the catalogue");
    assert!(
        catalog.contains(&world.dir.join("shelf").display().to_string()),
        "{catalog}"
    );
    say("kinds_local: the ir kernel said 55 and read the mounted CSV");
    world.stop("ada", &ada).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_and_kinds_that_cannot_run_on_sqlite() {
    let db = TestDb::sqlite("kinds_local");
    story(
        "kinds story on SQLite (hub, proxy, jupyterhub-singleuser, R)",
        db,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_and_kinds_that_cannot_run_on_postgres() {
    let what = "kinds story on PostgreSQL (hub, proxy, jupyterhub-singleuser, R)";
    let Some(db) = TestDb::postgres("kinds_local", what).await else {
        return;
    };
    story(what, db).await;
}

/// The pages, with no peer: a local backend whose servers' `PATH` is an empty directory (no R,
/// no QGIS, no RStudio Server) hides those profiles from the spawn page, shows admins why on
/// /hub/admin, and refuses a start from the form with a 400 naming what is missing, leaving no
/// server row.
async fn pages_story(db: TestDb) {
    let dir = std::env::temp_dir().join(format!("atelier-kinds-pages-{}", &generate_token()[..12]));
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut config = LocalConfig::new(dir.join("state"));
    config.command = vec!["/nonexistent/venv/bin/jupyterhub-singleuser".into()];
    config
        .env
        .insert("PATH".into(), empty.to_string_lossy().into_owned());
    let backend = LocalBackend::new(config);
    assert!(
        backend
            .missing_programs(atelier::api::v1alpha1::WorkspaceKind::Jupyter)
            .is_empty()
    );
    let mut catalog = Catalog::default();
    catalog
        .add_yaml(
            Path::new("catalog.yaml"),
            &self::catalog(&dir.join("shelf"), &dir.join("gone")),
        )
        .unwrap();
    let store = Store::connect(db.url()).await.expect("connect");
    let servers: Arc<dyn WorkspaceBackend> = Arc::new(backend);
    let web = Served::start_on(
        bind().await,
        store,
        TestBackend::new(),
        Some(servers),
        |base| dev_login_config(base, |c| c.catalog = SharedCatalog::new(catalog)),
    )
    .await
    .keeping(db);

    let mut ada = web.logged_in("ada").await;
    let page = ada.get("/hub/spawn/ada").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"id="profile-lab""#), "{}", page.body);
    for hidden in ["r", "desktop", "rstudio"] {
        assert!(
            !page.body.contains(&format!(r#"id="profile-{hidden}""#)),
            "{hidden} offered: {}",
            page.body
        );
    }
    // The admin page says what is hidden and why; a user's page does not exist.
    let mut root = web.logged_in("root").await;
    let admin = root.get("/hub/admin").await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    let body = admin.body.replace("&#x2F;", "/");
    for (profile, programs) in [
        // (IRkernel itself is looked for in R's libraries, which do not depend on the PATH.)
        ("r", &["<code>R</code>", "r-base-core"][..]),
        (
            "desktop",
            &["Xvnc", "websockify", "qgis", "tigervnc-standalone-server"][..],
        ),
        ("rstudio", &["rserver", "RStudio Server"][..]),
    ] {
        let start = body
            .find(&format!(r#"id="hidden-{profile}""#))
            .unwrap_or_else(|| panic!("{profile} not listed as hidden: {body}"));
        let row = &body[start..start + body[start..].find("</tr>").unwrap()];
        for program in programs {
            assert!(
                row.contains(program),
                "{profile}: {program} not named: {row}"
            );
        }
    }
    assert!(!body.contains(r#"id="hidden-lab""#), "{body}");
    let own = ada.get("/hub/admin").await;
    assert_eq!(own.status, 403);

    // A start of a hidden profile from the form: 400 naming the programs, no server row.
    let xsrf = page.xsrf();
    let r = ada
        .post(
            "/hub/spawn/ada",
            &[("_xsrf", &xsrf), ("profile", "desktop")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("Xvnc") && r.body.contains("tigervnc-standalone-server"),
        "{}",
        r.body
    );
    assert!(
        web.hub.store.get_server_by_names("ada", "").await.is_err(),
        "a refused start left a server row"
    );
    drop(web);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_kinds_on_the_pages_on_sqlite() {
    pages_story(TestDb::sqlite("kinds_pages")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_kinds_on_the_pages_on_postgres() {
    let Some(db) = TestDb::postgres("kinds_pages", "kinds pages on PostgreSQL").await else {
        return;
    };
    pages_story(db).await;
}

/// The race: the hub's (cached) check saw `rserver`, then it went. The start fails at once,
/// naming it, with no server process started, and says so in its progress.
#[tokio::test]
async fn a_program_removed_after_the_check_fails_the_start_at_once() {
    use atelier::api::v1alpha1::WorkspaceKind;
    use atelier::backend::{BackendError, SpawnRequest};
    use std::os::unix::fs::PermissionsExt as _;

    let dir = std::env::temp_dir().join(format!("atelier-kinds-race-{}", &generate_token()[..12]));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let venv = dir.join("venv");
    std::fs::create_dir_all(venv.join("lib/python3.11/site-packages/jupyter_rsession_proxy"))
        .unwrap();
    let rserver = bin.join("rserver");
    std::fs::write(&rserver, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&rserver, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = LocalConfig::new(dir.join("state"));
    // The venv's server program: never run, the start fails before.
    config.command = vec![venv.join("bin/jupyterhub-singleuser").display().to_string()];
    config
        .env
        .insert("PATH".into(), bin.to_string_lossy().into_owned());
    let backend = LocalBackend::new(config);
    assert_eq!(backend.missing_programs(WorkspaceKind::Rstudio), Vec::new());

    std::fs::remove_file(&rserver).unwrap();
    // The hub's view is the cached one...
    assert_eq!(backend.missing_programs(WorkspaceKind::Rstudio), Vec::new());
    // ...the start looks again.
    let request = SpawnRequest {
        user: "ada".into(),
        server: String::new(),
        groups: Vec::new(),
        profile: Some("rstudio".into()),
        user_options: Value::Null,
        env: BTreeMap::new(),
        files: BTreeMap::new(),
        dask: None,
        kind: WorkspaceKind::Rstudio,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let result = backend.start(request, tx).await;
    match result {
        Err(BackendError::SpawnFailed(message)) => {
            assert!(
                message.contains("rstudio")
                    && message.contains("rserver (provided by RStudio Server"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut last = None;
    while let Some(event) = rx.recv().await {
        last = Some(event);
    }
    let last = last.expect("progress");
    assert!(last.failed && last.message.contains("rserver"), "{last:?}");
    // No process ran: nothing recorded under run/.
    assert!(!dir.join("state/run/ada/default.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
