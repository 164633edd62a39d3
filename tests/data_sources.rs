//! Issue 11's story with the real peers: S3 data behind group credentials, read from a real
//! workspace with no credentials or endpoint in the user's code.
//!
//! - An S3 server (SeaweedFS, `common::s3`) with two identities: an admin, and a reader limited
//!   to bucket `argo` whose keys are those of the `ocean-s3` Secret manifest of
//!   `tests/fixtures/data/` (the files README.md's "Data in a workspace" shows).
//! - The admin writes `x.zarr` and `x.nc` into `argo` with xarray (the venv's Python).
//! - `atelier hub --catalog <dir>` (local backend, real `jupyterhub-singleuser`) and `atelier
//!   proxy` run as processes; the catalogue directory holds the fixtures (their endpoint set to
//!   the SeaweedFS port) and two broken sources: one naming an absent Secret, one on an endpoint
//!   nobody listens on.
//! - alice (group `vo-ocean`, given through the admin API) starts a workspace with the sources:
//!   in a kernel, reached through the proxy, `xr.open_zarr("s3://argo/x.zarr")` and the Intake
//!   catalogue of `$ATELIER_DATA_CATALOG` give the data; bob (no group) gets an access error.
//! - alice's workspace also gets an iRODS source of her group: python-irodsclient opens a
//!   session from the environment file and the obfuscated password file the hub wrote.
//! - The Secrets' values appear in no API answer, progress event, hub or proxy log, audit row or
//!   file the hub wrote; the broken sources fail the start with a message naming the source and
//!   the Secret or endpoint.
//!
//! Gated by `ATELIER_PEERS=1` (a missing peer is then a failure):
//! `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test data_sources --
//! --nocapture`. On failure every log is printed and the directory kept (`ATELIER_E2E_KEEP=1`
//! keeps it always).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier::hub::catalog::Catalog;
use atelier::policy::data::{credentials_for, open_line};
use atelier::store::tokens::generate_token;
use atelier::store::{AuditQuery, MAX_PAGE_LIMIT, Store};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

mod common;

use common::hub::peers_venv;
use common::kernel::{Kernel, KernelError};
use common::launch;
use common::s3::{S3Identity, SeaweedFs};
use common::say;
use common::stack::{Deadline, Proc, free_port, singleusers};
use common::story;

/// The catalogue of the story, as README.md shows it.
const FIXTURES: &str = "tests/fixtures/data";
/// The endpoint the fixtures name (SeaweedFS's default S3 port); the story puts its own port.
const FIXTURE_ENDPOINT: &str = "http://127.0.0.1:8333";
/// The profile, the sources and the Secret of the fixtures.
const PROFILE: &str = "pangeo";
const SECRET: &str = "ocean-s3";
const GROUP: &str = "vo-ocean";
/// The iRODS user of the `ocean-irods` Secret.
const IRODS_USER: &str = "alice-ocean";
/// The mean of the stored `temp` (`arange(24)`).
const MEAN: &str = "11.5";
/// The scopes of the story's own service: users, groups, their tokens and servers.
const ADMIN_SCOPES: &str =
    "admin:users,admin:groups,admin:servers,access:servers,tokens,list:users,read:users";
const SPAWN_WAIT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The `stringData` of the fixtures' Secret: (access key id, secret access key).
fn secret_keys() -> (String, String) {
    let doc: Value = serde_saphyr::from_str(&fixture("ocean-s3.yaml")).expect("ocean-s3.yaml");
    assert_eq!(doc["metadata"]["name"], SECRET);
    let key = |k: &str| {
        doc["stringData"][k]
            .as_str()
            .unwrap_or_else(|| panic!("ocean-s3.yaml: no stringData.{k}"))
            .to_owned()
    };
    (key("AWS_ACCESS_KEY_ID"), key("AWS_SECRET_ACCESS_KEY"))
}

// ---- without peers: the fixtures are README's, and what they mean --------------------------

/// Every fixture file is in README.md verbatim (the README shows what the story runs).
#[test]
fn readme_shows_the_fixtures() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    for name in ["datasources.yaml", "ocean-s3.yaml"] {
        let text = fixture(name);
        assert!(
            readme.contains(&format!("```yaml\n{text}```")),
            "README.md must show {FIXTURES}/{name} as a yaml block, verbatim:\n{text}"
        );
    }
}

/// The fixtures load as a catalogue (profile, sources and Secret), alice's group gets the
/// Secret, bob none, and the home page's lines are the ones the story runs.
#[test]
fn fixtures_are_a_catalogue() {
    let catalog = Catalog::load(&fixtures()).unwrap_or_else(|e| panic!("{FIXTURES}: {e:?}"));
    let mut names = catalog.names();
    names.sort();
    assert_eq!(
        names,
        [
            "DataSource/argo",
            "DataSource/argo-nc",
            "DataSource/argo-stac",
            "NodePool/cpu",
            "Secret/ocean-s3",
            "WorkspaceProfile/pangeo",
        ]
    );
    let argo = &catalog
        .data_sources
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("argo"))
        .expect("argo")
        .spec;
    let alice: BTreeSet<String> = [GROUP.to_owned()].into();
    let (group, secret) = credentials_for(argo, &alice).expect("alice's credentials");
    assert_eq!((group, secret.name.as_str()), (Some(GROUP), SECRET));
    assert_eq!(credentials_for(argo, &BTreeSet::new()), None);
    assert_eq!(
        open_line("argo", argo),
        r#"intake.open_catalog(os.environ["ATELIER_DATA_CATALOG"]).argo.to_dask()"#
    );
}

// ---- HTTP -----------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }
}

/// A plain HTTP/1 client that keeps every answer it got (for the secrets' grep).
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Http {
    fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            seen: Arc::default(),
        }
    }

    fn request(
        method: &str,
        url: &str,
        token: &str,
        body: Option<&Value>,
    ) -> http::Request<Full<Bytes>> {
        let mut req = http::Request::builder().method(method).uri(url);
        if !token.is_empty() {
            req = req.header("authorization", format!("token {token}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map(Value::to_string).unwrap_or_default();
        req.body(Full::new(Bytes::from(body))).expect("request")
    }

    async fn try_api(
        &self,
        method: &str,
        url: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<Resp, String> {
        let req = Http::request(method, url, token, body.as_ref());
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Resp {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
        self.seen
            .lock()
            .unwrap()
            .push(format!("{method} {url}: {} {}", resp.status, resp.body));
        Ok(resp)
    }

    async fn api(&self, method: &str, url: &str, token: &str, body: Option<Value>) -> Resp {
        self.try_api(method, url, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// The events of a progress stream, until one with `ready` or `failed`.
    async fn progress(&self, url: &str, token: &str) -> Vec<Value> {
        let mut req = Http::request("GET", url, token, None);
        req.headers_mut()
            .insert("accept", "text/event-stream".parse().unwrap());
        let deadline = tokio::time::Instant::now() + SPAWN_WAIT;
        let resp = tokio::time::timeout_at(deadline, self.client.request(req))
            .await
            .expect("progress: no answer")
            .expect("progress request");
        assert_eq!(resp.status(), 200, "GET {url}");
        story::progress_events(resp.into_body(), deadline, |data| {
            self.seen
                .lock()
                .unwrap()
                .push(format!("progress {url}: {data}"));
        })
        .await
    }
}

// ---- the story's world ----------------------------------------------------------------------

/// The directory, SeaweedFS, the hub and the proxy; dropping it stops them all (and prints
/// every log when the story failed).
struct World {
    dir: PathBuf,
    dir_str: String,
    venv: PathBuf,
    s3: Option<SeaweedFs>,
    hub_port: u16,
    proxy_port: u16,
    admin_token: String,
    /// The password of the `ocean-irods` Secret (the story's own catalogue file).
    irods_password: String,
    procs: BTreeMap<String, Proc>,
    http: Http,
}

impl Drop for World {
    fn drop(&mut self) {
        let s3_log = self.s3.as_ref().map(SeaweedFs::log).unwrap_or_default();
        drop(self.s3.take());
        let extra = vec![("seaweedfs".to_owned(), s3_log)];
        story::wind_up("data_sources", &self.dir, &mut self.procs, extra, 120);
    }
}

/// Writes `x.zarr` and `x.nc` (the same `temp`, `arange(24)` on 4 times × 6 depths) into
/// bucket `argo` with the admin's keys, from the environment; prints what the bucket holds.
const WRITE_ARGO: &str = r#"
import os
import numpy as np
import s3fs
import xarray as xr

opts = dict(key=os.environ["ADMIN_KEY"], secret=os.environ["ADMIN_SECRET"],
            endpoint_url=os.environ["ENDPOINT"])
fs = s3fs.S3FileSystem(**opts)
fs.mkdir("argo")
ds = xr.Dataset(
    {"temp": (("time", "depth"), np.arange(24, dtype="f8").reshape(4, 6))},
    coords={"time": np.arange(4), "depth": np.arange(6) * 10.0},
)
ds.to_zarr("s3://argo/x.zarr", storage_options=opts, mode="w")
local = os.path.join(os.environ["WORK"], "x.nc")
ds.to_netcdf(local, engine="h5netcdf")
fs.put(local, "argo/x.nc")
print(sorted(fs.ls("argo")))
"#;

impl World {
    async fn new(venv: PathBuf) -> World {
        // Fixed length: no story's directory is a prefix of another's.
        let dir = std::env::temp_dir().join(format!("atelier-data-{}", &generate_token()[..16]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (reader_key, reader_secret) = secret_keys();
        let (admin_key, admin_secret) = (generate_token()[..20].to_owned(), generate_token());
        let identities = [
            S3Identity::new(
                "admin",
                &admin_key,
                &admin_secret,
                &["Admin", "Read", "Write", "List", "Tagging"],
            ),
            S3Identity::new(
                "ocean",
                &reader_key,
                &reader_secret,
                &["Read:argo", "List:argo"],
            ),
        ];
        let mut world = World {
            dir_str: dir.to_string_lossy().into_owned(),
            s3: None,
            hub_port: free_port(),
            proxy_port: free_port(),
            admin_token: generate_token(),
            irods_password: generate_token()[..24].to_owned(),
            procs: BTreeMap::new(),
            http: Http::new(),
            venv,
            dir,
        };
        world.s3 = Some(SeaweedFs::start(&world.venv, &world.dir.join("s3"), &identities).await);
        let endpoint = world.endpoint();

        // The admin writes the data.
        let out = Command::new(world.venv.join("bin/python"))
            .arg("-c")
            .arg(WRITE_ARGO)
            .env_clear()
            .env("HOME", &world.dir)
            .env("ADMIN_KEY", &admin_key)
            .env("ADMIN_SECRET", &admin_secret)
            .env("ENDPOINT", &endpoint)
            .env("WORK", &world.dir)
            .output()
            .expect("run the venv's python");
        assert!(
            out.status.success(),
            "writing the data failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "['argo/x.nc', 'argo/x.zarr']"
        );

        // The catalogue: the fixtures on this endpoint, and two broken sources.
        let catalog = world.dir.join("catalog");
        std::fs::create_dir_all(&catalog).expect("catalogue dir");
        for name in ["profile.yaml", "datasources.yaml", "ocean-s3.yaml"] {
            std::fs::write(
                catalog.join(name),
                fixture(name).replace(FIXTURE_ENDPOINT, &endpoint),
            )
            .expect("write the catalogue");
        }
        let story = format!(
            "apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {{name: no-secret}}
spec:
  description: Names a Secret the catalogue does not hold
  s3:
    endpoint: {endpoint}
    bucket: argo
    prefix: x.zarr
    credentialsByGroup:
      - {{group: {GROUP}, secret: {{name: absent-s3}}}}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {{name: offline}}
spec:
  description: An endpoint nobody listens on
  s3: {{endpoint: 'http://127.0.0.1:1', bucket: argo, prefix: x.zarr}}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {{name: ocean-irods}}
spec:
  description: The ocean VO's iRODS collection
  irods:
    host: irods.example.org
    zone: ocean
    path: /ocean/argo
    credentialsByGroup:
      - {{group: {GROUP}, secret: {{name: ocean-irods}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ocean-irods}}
stringData: {{IRODS_USER_NAME: {IRODS_USER}, IRODS_PASSWORD: '{irods_password}'}}
",
            irods_password = world.irods_password,
        );
        std::fs::write(catalog.join("zz-story.yaml"), story).expect("write zz-story.yaml");

        world.start_hub().await;
        world.start_proxy().await;
        world
    }

    fn endpoint(&self) -> String {
        self.s3.as_ref().expect("SeaweedFS").endpoint()
    }

    fn hub(&self) -> String {
        format!("http://127.0.0.1:{}", self.hub_port)
    }

    fn public(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    fn db_url(&self) -> String {
        format!("sqlite://{}", self.dir.join("atelier.sqlite").display())
    }

    async fn start_hub(&mut self) {
        let singleuser = self.venv.join("bin/jupyterhub-singleuser");
        let (db_url, public, state) = (self.db_url(), self.public(), self.dir.join("state"));
        let mut command = launch::hub_command(
            // Debug for atelier itself: more lines that could leak a secret.
            "info,atelier=debug",
            &launch::HubArgs {
                port: self.hub_port,
                database_url: &db_url,
                public_url: &public,
                state_dir: &state,
                server_command: &singleuser,
            },
        );
        command
            .env("ATELIER_SERVICE_STORY_TOKEN", &self.admin_token)
            .arg("--spawn-timeout=90")
            .arg(format!("--catalog={}", self.dir.join("catalog").display()))
            .arg(format!("--service=story={ADMIN_SCOPES}"));
        let url = format!("{}/hub/api/", self.hub());
        let proc =
            launch::spawn_answering("hub", command, &self.dir, &url, Duration::from_secs(60)).await;
        self.procs.insert("hub".into(), proc);
    }

    async fn start_proxy(&mut self) {
        let proc =
            launch::start_proxy(&self.dir, self.proxy_port, &self.db_url(), &self.hub()).await;
        self.procs.insert("proxy".into(), proc);
    }

    /// A call to the hub's API as the story's service.
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let url = format!("{}{path}", self.hub());
        self.http.api(method, &url, &self.admin_token, body).await
    }

    /// Creates `user` (in `groups`) and a token for it that may start, follow and use its
    /// servers.
    async fn user(&self, user: &str, groups: &[&str]) -> String {
        let r = self
            .admin("POST", &format!("/hub/api/users/{user}"), None)
            .await;
        assert_eq!(r.status, 201, "create {user}: {}", r.body);
        for group in groups {
            let r = self
                .admin("POST", &format!("/hub/api/groups/{group}"), None)
                .await;
            assert!(
                r.status == 201 || r.status == 409,
                "create {group}: {}",
                r.body
            );
            let r = self
                .admin(
                    "POST",
                    &format!("/hub/api/groups/{group}/users"),
                    Some(json!({"users": [user]})),
                )
                .await;
            assert_eq!(r.status, 200, "add {user} to {group}: {}", r.body);
        }
        let model = self
            .admin("GET", &format!("/hub/api/users/{user}"), None)
            .await;
        let mut listed: Vec<&str> = groups.to_vec();
        listed.sort_unstable();
        assert_eq!(model.json()["groups"], json!(listed), "{}", model.body);
        let r = self
            .admin(
                "POST",
                &format!("/hub/api/users/{user}/tokens"),
                Some(json!({
                    "note": "data story",
                    "scopes": [
                        format!("servers!user={user}"),
                        format!("read:servers!user={user}"),
                        format!("access:servers!user={user}"),
                    ],
                })),
            )
            .await;
        assert_eq!(r.status, 201, "a token for {user}: {}", r.body);
        r.json()["token"].as_str().expect("token").to_owned()
    }

    fn server_path(user: &str, server: &str) -> String {
        if server.is_empty() {
            format!("/hub/api/users/{user}/server")
        } else {
            format!("/hub/api/users/{user}/servers/{server}")
        }
    }

    /// Asks for `user`'s `server` with `sources`: the immediate answer (a refusal), or the
    /// progress events of an accepted start.
    async fn start(
        &self,
        user: &str,
        token: &str,
        server: &str,
        sources: &[&str],
    ) -> Result<Vec<Value>, Resp> {
        let path = World::server_path(user, server);
        let body = json!({"user_options": {"profile": PROFILE, "dataSources": sources}});
        let r = self
            .http
            .api("POST", &format!("{}{path}", self.hub()), token, Some(body))
            .await;
        if r.status != 201 && r.status != 202 {
            return Err(r);
        }
        Ok(self
            .http
            .progress(&format!("{}{path}/progress", self.hub()), token)
            .await)
    }

    /// Starts `user`'s default server with `sources` until ready, and waits until the proxy
    /// routes to it.
    async fn start_ready(&self, user: &str, token: &str, sources: &[&str]) -> Vec<Value> {
        let events = match self.start(user, token, "", sources).await {
            Ok(events) => events,
            Err(r) => panic!("start {user}: {} {}", r.status, r.body),
        };
        let last = events.last().expect("a final event");
        assert_eq!(last["ready"], true, "{user}'s spawn failed: {events:?}");
        let url = format!("{}/user/{user}/api/status", self.public());
        let deadline = Deadline::new(format!("{url} to answer 200"), Duration::from_secs(30));
        loop {
            let r = self.http.api("GET", &url, token, None).await;
            if r.status == 200 {
                return events;
            }
            deadline.tick((r.status, r.body)).await;
        }
    }

    /// A start of `user`'s `server` with `sources` that must fail, refused at once or failed
    /// in its progress; the message, which must name every one of `names`. Nothing runs after.
    async fn start_fails(
        &self,
        user: &str,
        token: &str,
        server: &str,
        sources: &[&str],
        names: &[&str],
    ) -> String {
        let before = singleusers(&self.dir_str, user).len();
        let message = match self.start(user, token, server, sources).await {
            // Refused before anything runs (4xx), or failed at once (JupyterHub's 500 "Spawn
            // failed: ..." when the spawn fails before the API answers).
            Err(r) => {
                let message = r.json()["message"].as_str().unwrap_or(&r.body).to_owned();
                assert!(
                    (400..500).contains(&r.status)
                        || (r.status == 500 && message.starts_with("Spawn failed: ")),
                    "{user}/{server}: a refusal is a 4xx, a failure a 500 Spawn failed, not {} {}",
                    r.status,
                    r.body
                );
                message
            }
            Ok(events) => {
                let last = events.last().expect("a final event");
                assert_eq!(
                    last["failed"], true,
                    "{user}/{server} must fail: {events:?}"
                );
                last["message"].as_str().unwrap_or_default().to_owned()
            }
        };
        for name in names {
            assert!(
                message.contains(name),
                "the failure must name {name:?}: {message}"
            );
        }
        let model = self
            .admin("GET", &format!("/hub/api/users/{user}"), None)
            .await
            .json();
        let state = &model["servers"][server];
        assert!(
            state.is_null() || state["ready"] != true,
            "{user}/{server} must not run: {model}"
        );
        assert_eq!(
            singleusers(&self.dir_str, user).len(),
            before,
            "no new jupyterhub-singleuser for {user}/{server}"
        );
        message
    }

    /// Every audit row, as JSON.
    async fn audit_rows(&self) -> Vec<String> {
        let store = Store::connect(&self.db_url())
            .await
            .expect("the hub's database");
        let rows = store
            .list_audit(&AuditQuery {
                limit: MAX_PAGE_LIMIT,
                ..AuditQuery::default()
            })
            .await
            .expect("audit rows");
        store.close().await;
        rows.iter()
            .map(|r| serde_json::to_string(r).expect("JSON"))
            .collect()
    }

    /// Every file under `dir` (recursively), with its text (lossy).
    fn files(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(World::files(&path));
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        out
    }
}

/// The environment of `user`'s (single) `jupyterhub-singleuser`.
fn server_env(world: &World, user: &str) -> BTreeMap<String, String> {
    let procs = singleusers(&world.dir_str, user);
    assert_eq!(procs.len(), 1, "one jupyterhub-singleuser for {user}");
    procs[0]
        .environ
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn must_raise(result: Result<String, KernelError>, what: &str) -> KernelError {
    match result {
        Ok(out) => panic!("{what} must fail, printed {out:?}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_data_with_group_credentials_in_a_real_workspace() {
    let Some(venv) = peers_venv(
        "data sources story (SeaweedFS, hub, proxy, jupyterhub-singleuser, xarray, intake)",
        &["jupyterhub-singleuser", "weed", "python"],
    ) else {
        return;
    };
    let world = World::new(venv).await;
    let (key_id, secret_key) = secret_keys();
    let sources = ["argo", "argo-nc", "argo-stac"];
    let alice_sources = ["argo", "argo-nc", "argo-stac", "ocean-irods"];
    say("data_sources: SeaweedFS, data, hub and proxy up");

    let alice = world.user("alice", &[GROUP]).await;
    let bob = world.user("bob", &[]).await;

    // alice's workspace: her group's Secret, from the catalogue, in her server's environment.
    let events = world.start_ready("alice", &alice, &alice_sources).await;
    assert!(events.len() >= 2, "progress before ready: {events:?}");
    let env = server_env(&world, "alice");
    assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some(&key_id), "{env:?}");
    assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), Some(&secret_key));
    assert_eq!(env.get("AWS_ENDPOINT_URL"), Some(&world.endpoint()));
    assert_eq!(env.get("FSSPEC_S3_ANON"), None);
    assert_eq!(
        env.get("IRODS_USER_NAME").map(String::as_str),
        Some(IRODS_USER)
    );
    assert_eq!(env.get("IRODS_PASSWORD"), Some(&world.irods_password));
    let catalog_path = env
        .get("ATELIER_DATA_CATALOG")
        .unwrap_or_else(|| panic!("no ATELIER_DATA_CATALOG in {env:?}"))
        .clone();
    say("data_sources: alice's workspace ready");

    // Her code names neither keys nor endpoint.
    let kernel = Kernel::start(world.proxy_port, "alice", &alice).await;
    let zarr = "import xarray as xr\nprint(float(xr.open_zarr(\"s3://argo/x.zarr\").temp.mean()))";
    assert_eq!(
        kernel.run(zarr).await.map_err(|e| e.to_string()),
        Ok(format!("{MEAN}\n"))
    );
    let listed = kernel
        .run("import intake, os\ncat = intake.open_catalog(os.environ[\"ATELIER_DATA_CATALOG\"])\nprint(sorted(cat))")
        .await;
    assert_eq!(
        listed.map_err(|e| e.to_string()),
        Ok("['argo', 'argo_nc', 'argo_stac', 'ocean_irods']\n".to_owned())
    );
    // python-irodsclient reads the environment file and the obfuscated password file the hub
    // wrote (no connection at construction; the password is compared in the kernel, never
    // printed).
    let irods = kernel
        .run(
            "import os\nfrom irods.session import iRODSSession\n\
             s = iRODSSession(irods_env_file=os.environ[\"IRODS_ENVIRONMENT_FILE\"])\n\
             a = s.pool.account\n\
             print(s.host, s.port, s.zone, s.username, a.home, a.cwd, \
             a.password == os.environ[\"IRODS_PASSWORD\"])",
        )
        .await;
    assert_eq!(
        irods.map_err(|e| e.to_string()),
        Ok(format!(
            "irods.example.org 1247 ocean {IRODS_USER} /ocean/home/{IRODS_USER} /ocean/argo True\n"
        ))
    );
    // The home page's lines, as they are.
    let catalog = Catalog::load(&world.dir.join("catalog")).expect("the story's catalogue");
    for name in ["argo", "argo-nc"] {
        let spec = &catalog
            .data_sources
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .expect("in the catalogue")
            .spec;
        let line = open_line(name, spec);
        let cell = format!("import intake, os\nprint(float({line}.temp.mean()))");
        assert_eq!(
            kernel.run(&cell).await.map_err(|e| e.to_string()),
            Ok(format!("{MEAN}\n")),
            "{cell}"
        );
    }
    let stac = kernel
        .run("import os\nprint(os.environ[\"ATELIER_STAC_ARGO_STAC\"])")
        .await;
    assert_eq!(
        stac.map_err(|e| e.to_string()),
        Ok("https://stac.example.org/collections/argo\n".to_owned())
    );
    // The catalogue the workspace reads holds references to the keys, not the keys.
    let text = kernel
        .run("import os\nprint(open(os.environ[\"ATELIER_DATA_CATALOG\"]).read())")
        .await
        .expect("read the catalogue");
    assert!(
        text.contains("{{env(ATELIER_DATA_ARGO_AWS_SECRET_ACCESS_KEY)}}"),
        "{text}"
    );
    assert!(
        !text.contains(&secret_key) && !text.contains(&key_id),
        "{text}"
    );
    let mode = std::fs::metadata(&catalog_path).map(|m| {
        use std::os::unix::fs::PermissionsExt as _;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o600), "{catalog_path}");
    say("data_sources: alice reads argo with xarray and Intake");

    // bob, in no group: the same sources, anonymous, refused by the server.
    world.start_ready("bob", &bob, &sources).await;
    let env = server_env(&world, "bob");
    assert_eq!(env.get("AWS_ACCESS_KEY_ID"), None, "{env:?}");
    assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), None);
    assert_eq!(env.get("FSSPEC_S3_ANON").map(String::as_str), Some("true"));
    let kernel = Kernel::start(world.proxy_port, "bob", &bob).await;
    let refused = must_raise(kernel.run(zarr).await, "bob's open_zarr");
    assert_eq!(refused.ename, "PermissionError", "{refused}");
    let argo = catalog
        .data_sources
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("argo"))
        .expect("argo");
    let line = open_line("argo", &argo.spec);
    let refused = must_raise(
        kernel.run(&format!("import intake, os\n{line}")).await,
        "bob's Intake entry",
    );
    assert_eq!(refused.ename, "PermissionError", "{refused}");
    say("data_sources: bob is refused");

    // Bad input: a source whose Secret is absent, a source nobody serves.
    let no_secret = world
        .start_fails(
            "alice",
            &alice,
            "nosecret",
            &["no-secret"],
            &["no-secret", "absent-s3"],
        )
        .await;
    assert!(!no_secret.contains(&secret_key));
    world
        .start_fails(
            "alice",
            &alice,
            "offline",
            &["offline"],
            &["offline", "127.0.0.1:1"],
        )
        .await;
    say("data_sources: an absent Secret and an unreachable endpoint fail the start");

    // The Secret's values: in no answer, event, log, audit row or file of the hub.
    let mut places: Vec<(String, String)> = world
        .http
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| ("HTTP".to_owned(), s.clone()))
        .collect();
    for user in ["alice", "bob"] {
        let model = world
            .admin("GET", &format!("/hub/api/users/{user}"), None)
            .await;
        places.push((format!("GET /hub/api/users/{user}"), model.body));
    }
    for (name, proc) in &world.procs {
        places.push((format!("{name} log"), proc.log()));
    }
    for row in world.audit_rows().await {
        places.push(("audit row".into(), row));
    }
    for (path, text) in World::files(&world.dir.join("state")) {
        places.push((path.display().to_string(), text));
    }
    let audited = places.iter().filter(|(w, _)| w == "audit row").count();
    assert!(audited >= 4, "the starts are audited: {places:?}");
    for (place, text) in &places {
        for value in [&key_id, &secret_key, &world.irods_password] {
            assert!(
                !text.contains(value.as_str()),
                "{place} holds a credential:\n{text}"
            );
        }
    }
    say(format!(
        "data_sources: no credential in {} answers, events, logs, audit rows and files",
        places.len()
    ));
}
