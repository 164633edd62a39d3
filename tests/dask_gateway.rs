//! Issue 12's dask-gateway story with the real peers: a Pangeo hub's dask-gateway, trusting
//! Atelier's hub for identity, used from a real workspace with `Gateway()` and no arguments.
//!
//! - `dask-gateway-server` (PyPI, its local backend, `JupyterHubAuthenticator` with
//!   `jupyterhub_service_name = "dask-gateway"`; `common::gateway`) is registered with the hub
//!   as the service `dask-gateway` with its URL (`--service dask-gateway@URL=`), and the proxy
//!   routes `/services/dask-gateway/` to it (`--service dask-gateway@URL`), as JupyterHub adds
//!   a route for a service with a `url`.
//! - As daskhub configures JupyterHub 6: the role `dask-users`
//!   (`access:services!service=dask-gateway`) held by group `dask` (alice and bob); the
//!   `server` role redefined to carry that scope too, so that a server's own token (the
//!   kernel's `JUPYTERHUB_API_TOKEN`) has it when its owner holds it; and the workspaces'
//!   environment (the profile's `env`): `DASK_GATEWAY__ADDRESS` (the proxy's
//!   `/services/dask-gateway`), `DASK_GATEWAY__PROXY_ADDRESS` (the gateway's scheduler proxy),
//!   `DASK_GATEWAY__PUBLIC_ADDRESS` (`/services/dask-gateway/`), `DASK_GATEWAY__AUTH__TYPE`
//!   (`jupyterhub`).
//! - alice's kernel: `Gateway().new_cluster()`, scale to 2, `da.ones((4000, 4000),
//!   chunks=1000).sum()` = 16,000,000 on two workers, shut down, no Dask process left.
//! - bob's kernel (granted too) does not see alice's cluster and cannot connect to it; carol
//!   (not granted) is refused (401) by the gateway, from her kernel and with her server's token
//!   over HTTP, where alice's token gets 200.
//! - The workspaces stop through the hub, leaving no process; no token is in the hub's, the
//!   proxy's or the gateway's log. The gateway (its process group, then what is left of its
//!   clusters) is killed when the story ends.
//! - Without peers: the proxy's route for a service with a URL, against in-process upstreams.
//!
//! Gated by `ATELIER_PEERS=1` (a missing peer is then a failure; without it the test says
//! SKIPPED): `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test dask_gateway
//! -- --nocapture`. On failure every log is printed and the directory kept (`ATELIER_E2E_KEEP=1`
//! keeps it always).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use atelier::store::tokens::generate_token;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

mod common;

use common::gateway::{DaskGateway, PREFIX, SERVICE};
use common::hub::peers_venv;
use common::kernel::Kernel;
use common::launch;
use common::say;
use common::stack::{Deadline, Proc, free_port, singleusers};
use common::story;

/// The scopes of the story's own service: users, groups, their tokens and servers; services.
const ADMIN_SCOPES: &str = "admin:users,admin:groups,admin:servers,access:servers,tokens,\
                            list:users,read:users,read:services";
/// The group whose members may use dask-gateway.
const GROUP: &str = "dask";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const SPAWN_WAIT: Duration = Duration::from_secs(120);

/// The roles: daskhub's grant (README, "Roles"), and JupyterHub's `server` role with the
/// gateway's access scope added, so that a server's token carries it for granted users.
fn roles_yaml() -> String {
    format!(
        "- name: dask-users
  description: use dask-gateway
  scopes: ['access:services!service={SERVICE}']
  groups: [{GROUP}]
- name: server
  scopes: ['users:activity!user', 'access:servers!server', 'access:services!service={SERVICE}']
"
    )
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

async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    authorization: Option<String>,
    body: Option<Value>,
) -> Result<Resp, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
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
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer within {REQUEST_TIMEOUT:?}"))?
}

// ---- the story's world ----------------------------------------------------------------------

/// The directory, the gateway, the hub and the proxy; dropping it stops them all (and prints
/// every log when the story failed).
struct World {
    dir: PathBuf,
    dir_str: String,
    hub_port: u16,
    proxy_port: u16,
    admin_token: String,
    gateway_token: String,
    gateway: Option<DaskGateway>,
    procs: BTreeMap<String, Proc>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for World {
    fn drop(&mut self) {
        let gateway_log = self
            .gateway
            .as_ref()
            .map(|g| g.proc.log())
            .unwrap_or_default();
        drop(self.gateway.take());
        let extra = vec![("dask-gateway".to_owned(), gateway_log)];
        story::wind_up("dask_gateway", &self.dir, &mut self.procs, extra, 80);
    }
}

impl World {
    async fn new(venv: PathBuf) -> World {
        // Fixed length: no story's directory is a prefix of another's.
        let dir = std::env::temp_dir().join(format!("atelier-dgw-{}", &generate_token()[..16]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut world = World {
            dir_str: dir.to_string_lossy().into_owned(),
            hub_port: free_port(),
            proxy_port: free_port(),
            admin_token: generate_token(),
            gateway_token: generate_token(),
            gateway: None,
            procs: BTreeMap::new(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            dir,
        };
        let hub_api = format!("{}/hub/api", world.hub());
        let gateway = DaskGateway::start(
            &venv,
            &world.dir.join("gateway"),
            &hub_api,
            &world.gateway_token,
        )
        .await;

        // The profile gives the workspaces daskhub's environment.
        let catalog = world.dir.join("catalog");
        std::fs::create_dir_all(&catalog).expect("catalogue dir");
        let profile = format!(
            "apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata:
  name: pangeo
spec:
  displayName: Pangeo
  description: xarray, Zarr, Dask Gateway
  image: registry.example.org/atelier/jupyter-pangeo:2025.06
  env:
    DASK_GATEWAY__ADDRESS: '{public}{PREFIX}'
    DASK_GATEWAY__PROXY_ADDRESS: '{proxy_address}'
    DASK_GATEWAY__PUBLIC_ADDRESS: '{PREFIX}/'
    DASK_GATEWAY__AUTH__TYPE: jupyterhub
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata:
  name: cpu
spec:
  purpose: interactive
",
            public = world.public(),
            proxy_address = gateway.proxy_address(),
        );
        std::fs::write(catalog.join("profile.yaml"), profile).expect("write the profile");
        std::fs::write(world.dir.join("roles.yaml"), roles_yaml()).expect("write the roles");
        let service_url = gateway.service_url();
        world.gateway = Some(gateway);
        world.start_hub(&venv, &service_url).await;
        world.start_proxy(&service_url).await;
        world
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

    fn gateway(&self) -> &DaskGateway {
        self.gateway.as_ref().expect("the gateway")
    }

    async fn start_hub(&mut self, venv: &std::path::Path, service_url: &str) {
        let db = self.db_url();
        let public = self.public();
        let state = self.dir.join("state");
        let server_command = venv.join("bin/jupyterhub-singleuser");
        // Debug for atelier itself: more lines that could leak a token.
        let mut command = launch::hub_command(
            "info,atelier=debug",
            &launch::HubArgs {
                port: self.hub_port,
                database_url: &db,
                public_url: &public,
                state_dir: &state,
                server_command: &server_command,
            },
        );
        command
            .env("ATELIER_SERVICE_STORY_TOKEN", &self.admin_token)
            .env("ATELIER_SERVICE_DASK_GATEWAY_TOKEN", &self.gateway_token)
            .arg("--spawn-timeout=90")
            .arg(format!("--catalog={}", self.dir.join("catalog").display()))
            .arg(format!("--roles={}", self.dir.join("roles.yaml").display()))
            .arg(format!("--service=story={ADMIN_SCOPES}"))
            .arg(format!("--service={SERVICE}@{service_url}="));
        let url = format!("{}/hub/api/", self.hub());
        let proc =
            launch::spawn_answering("hub", command, &self.dir, &url, Duration::from_secs(60)).await;
        self.procs.insert("hub".into(), proc);
    }

    /// `atelier proxy`, routing `/services/dask-gateway/` to the gateway as well.
    async fn start_proxy(&mut self, service_url: &str) {
        let mut command = launch::command("proxy", "info");
        command
            .arg(format!("--bind=127.0.0.1:{}", self.proxy_port))
            .arg(format!("--database-url={}", self.db_url()))
            .arg(format!("--default-target={}", self.hub()))
            .arg("--refresh-ms=250")
            .arg(format!("--service={SERVICE}@{service_url}"));
        let url = format!("{}/_atelier/proxy/health", self.public());
        let proc =
            launch::spawn_answering("proxy", command, &self.dir, &url, Duration::from_secs(60))
                .await;
        self.procs.insert("proxy".into(), proc);
    }

    /// A call to `url` with `token` (`Authorization: token …`).
    async fn api(&self, method: &str, url: &str, token: &str, body: Option<Value>) -> Resp {
        request(
            &self.client,
            method,
            url,
            Some(format!("token {token}")),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// A call to the hub's API as the story's service.
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let url = format!("{}{path}", self.hub());
        self.api(method, &url, &self.admin_token, body).await
    }

    /// Creates `user` (in `groups`) and a token for it that may start and use its server.
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
        let r = self
            .admin(
                "POST",
                &format!("/hub/api/users/{user}/tokens"),
                Some(json!({
                    "note": "dask-gateway story",
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

    /// Starts `user`'s default server with the profile, waits until the proxy routes to it.
    async fn start_ready(&self, user: &str, token: &str) {
        let url = format!("{}/hub/api/users/{user}/server", self.hub());
        let body = json!({"user_options": {"profile": "pangeo"}});
        let r = self.api("POST", &url, token, Some(body)).await;
        assert!(
            r.status == 201 || r.status == 202,
            "start {user}: {} {}",
            r.status,
            r.body
        );
        let status = format!("{}/user/{user}/api/status", self.public());
        let deadline = Deadline::new(format!("{user}'s server to answer"), SPAWN_WAIT);
        loop {
            let r = self.api("GET", &status, token, None).await;
            if r.status == 200 {
                return;
            }
            deadline.tick((r.status, r.body)).await;
        }
    }

    /// The environment of `user`'s (single) `jupyterhub-singleuser`.
    fn server_env(&self, user: &str) -> BTreeMap<String, String> {
        let procs = singleusers(&self.dir_str, user);
        assert_eq!(procs.len(), 1, "one jupyterhub-singleuser for {user}");
        procs[0]
            .environ
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// `GET /services/dask-gateway/api/v1/clusters/` through the proxy, as the dask-gateway
    /// client sends it (`Authorization: jupyterhub <token>`).
    async fn list_clusters(&self, token: &str) -> Resp {
        let url = format!("{}{PREFIX}/api/v1/clusters/", self.public());
        request(
            &self.client,
            "GET",
            &url,
            Some(format!("jupyterhub {token}")),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }
}

// ---- without peers: the proxy's service route -------------------------------------------------

/// An upstream that answers every request with what it received (path, query, the headers that
/// matter here) and tries to set cookies inside and outside the service's prefix.
async fn echo_upstream(name: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    let app =
        axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| async move {
            let header = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let body = json!({
                "upstream": name,
                "uri": uri.to_string(),
                "authorization": header("authorization"),
                "cookie": header("cookie"),
            });
            (
                axum::response::AppendHeaders([
                    ("set-cookie", "inside=1; Path=/services/dask-gateway/"),
                    ("set-cookie", "hubs=1; Path=/hub/"),
                ]),
                body.to_string(),
            )
                .into_response()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

/// `/services/dask-gateway/…` goes to the service's URL with its path, query and
/// `Authorization: jupyterhub …` unchanged (the gateway checks the caller itself), the hub's
/// session cookie withheld and a cookie outside its prefix dropped; other paths, and other
/// names under `/services/`, go to the hub; a service that does not answer is a 502 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_routes_a_service_with_a_url() {
    use atelier::proxy::{MemoryRoutes, Proxy, ProxyConfig, ServiceRoute, serve};
    let (hub, hub_task) = echo_upstream("hub").await;
    let (gateway, gateway_task) = echo_upstream("gateway").await;
    let config = ProxyConfig {
        services: vec![ServiceRoute::new(SERVICE, &gateway).unwrap()],
        ..ProxyConfig::new(hub.clone())
    };
    let proxy = Proxy::start(config, std::sync::Arc::new(MemoryRoutes::new()), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, proxy, async move {
        let _ = stopped.await;
    }));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str| {
        let req = http::Request::builder()
            .uri(format!("{base}{path}"))
            .header("authorization", "jupyterhub t0ken")
            .header("cookie", "atelier-session=s3cret; other=kept")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let cookies: Vec<String> = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (status, body, cookies)
        }
    };
    for path in [
        "/services/dask-gateway",
        "/services/dask-gateway/api/v1/clusters/?status=running",
    ] {
        let (status, body, cookies) = get(path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["upstream"], "gateway", "{path}: {body}");
        assert_eq!(body["uri"], path, "{path}: the path is forwarded unchanged");
        assert_eq!(body["authorization"], "jupyterhub t0ken");
        assert_eq!(
            body["cookie"], "other=kept",
            "the hub's session is withheld"
        );
        assert_eq!(
            cookies,
            ["inside=1; Path=/services/dask-gateway/"],
            "a cookie outside the service's prefix is dropped"
        );
    }
    for path in [
        "/services/dask-gatewayx/api",
        "/services/other/",
        "/hub/api/",
    ] {
        let (status, body, _) = get(path).await;
        assert_eq!((status, &body["upstream"]), (200, &json!("hub")), "{path}");
    }
    gateway_task.abort();
    let _ = gateway_task.await;
    let (status, body, _) = get("/services/dask-gateway/api/health").await;
    assert_eq!(status, 502);
    assert_eq!(
        body["message"], "service dask-gateway did not answer",
        "{body}"
    );
    let _ = stop.send(());
    let _ = served.await;
    hub_task.abort();
}

// ---- with the peers: the story --------------------------------------------------------------

/// alice's cell: daskhub's `Gateway()` with no argument, a cluster of two workers, a sum.
const ALICE_COMPUTES: &str = r#"
from dask_gateway import Gateway
import dask.array as da
gateway = Gateway()
cluster = gateway.new_cluster()
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=120)
total = int(da.ones((4000, 4000), chunks=1000).sum().compute())
print(cluster.name, total, len(client.scheduler_info()["workers"]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dask_gateway_trusts_the_hub_from_a_real_workspace() {
    let Some(venv) = peers_venv(
        "dask-gateway story (dask-gateway-server, hub, proxy, jupyterhub-singleuser, dask)",
        &[
            "jupyterhub-singleuser",
            "dask-gateway-server",
            "dask",
            "python",
        ],
    ) else {
        return;
    };
    let world = World::new(venv).await;
    say("dask_gateway: gateway, hub and proxy up");

    // The hub knows the service and where it is, as JupyterHub's service model shows it.
    let model = world
        .admin("GET", &format!("/hub/api/services/{SERVICE}"), None)
        .await;
    assert_eq!(model.status, 200, "{}", model.body);
    let model = model.json();
    assert_eq!(model["url"], world.gateway().service_url(), "{model}");
    assert_eq!(model["prefix"], format!("{PREFIX}/"), "{model}");
    // The proxy routes the service's prefix to it, with no credential check of its own.
    let health = format!("{}{PREFIX}/api/health", world.public());
    let r = request(&world.client, "GET", &health, None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{health}: {}", r.body);
    let alice = world.user("alice", &[GROUP]).await;
    let bob = world.user("bob", &[GROUP]).await;
    let carol = world.user("carol", &[]).await;

    world.start_ready("alice", &alice).await;
    let env = world.server_env("alice");
    let public = world.public();
    for (key, value) in [
        ("DASK_GATEWAY__ADDRESS", format!("{public}{PREFIX}")),
        (
            "DASK_GATEWAY__PROXY_ADDRESS",
            world.gateway().proxy_address(),
        ),
        ("DASK_GATEWAY__PUBLIC_ADDRESS", format!("{PREFIX}/")),
        ("DASK_GATEWAY__AUTH__TYPE", "jupyterhub".to_owned()),
    ] {
        assert_eq!(env.get(key), Some(&value), "{key} in {env:?}");
    }
    let alice_server_token = env["JUPYTERHUB_API_TOKEN"].clone();
    // The server's token: the `server` role as configured, within what alice holds.
    let me = world
        .api(
            "GET",
            &format!("{}/hub/api/user", world.hub()),
            &alice_server_token,
            None,
        )
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    let scopes = me.json()["scopes"].clone();
    assert!(
        scopes
            .as_array()
            .unwrap()
            .contains(&json!(format!("access:services!service={SERVICE}"))),
        "{scopes}"
    );
    say("dask_gateway: alice's workspace ready, with daskhub's environment");

    // alice computes on a cluster of two workers, through the gateway.
    let kernel = Kernel::start(world.proxy_port, "alice", &alice).await;
    let out = kernel
        .run(ALICE_COMPUTES)
        .await
        .unwrap_or_else(|e| panic!("alice's cell failed: {e}"));
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{out}");
    let cluster = fields[0].to_owned();
    assert_eq!(fields[1..], ["16000000", "2"], "{out}");
    let procs: Vec<String> = world
        .gateway()
        .cluster_processes()
        .into_iter()
        .map(|p| p.cmdline)
        .collect();
    let count = |what: &str| procs.iter().filter(|c| c.contains(what)).count();
    assert_eq!(
        (count("dask scheduler"), count("dask worker")),
        (1, 2),
        "a scheduler and two workers in the gateway's clusters directory: {procs:?}"
    );
    say(format!(
        "dask_gateway: alice's cluster {cluster} summed 16,000,000 on 2 workers"
    ));

    // Over HTTP through the proxy: alice's server token lists her cluster.
    let listed = world.list_clusters(&alice_server_token).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(listed.json().get(&cluster).is_some(), "{}", listed.body);

    // bob, granted too, does not see it and cannot connect to it.
    world.start_ready("bob", &bob).await;
    let bob_server_token = world.server_env("bob")["JUPYTERHUB_API_TOKEN"].clone();
    let listed = world.list_clusters(&bob_server_token).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json(), json!({}), "bob lists no cluster");
    let bob_kernel = Kernel::start(world.proxy_port, "bob", &bob).await;
    let out = bob_kernel
        .run(&format!(
            "from dask_gateway import Gateway\ng = Gateway()\n\
             print([c.name for c in g.list_clusters()])\n\
             try:\n    g.connect({cluster:?})\n    print('connected')\n\
             except Exception as e:\n    print(type(e).__name__, getattr(e, 'status', None))"
        ))
        .await
        .unwrap_or_else(|e| panic!("bob's cell failed: {e}"));
    // The gateway's answer for another user's cluster: 403 (`get_cluster`, "lacks
    // permissions"), raised by the client as aiohttp's ClientResponseError.
    assert_eq!(
        out, "[]\nClientResponseError 403\n",
        "bob must neither see nor reach {cluster}"
    );
    let url = format!("{}{PREFIX}/api/v1/clusters/{cluster}", world.public());
    let r = request(
        &world.client,
        "GET",
        &url,
        Some(format!("jupyterhub {bob_server_token}")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "bob's GET {url}: {}", r.body);
    say("dask_gateway: bob neither lists nor connects to alice's cluster");

    // carol, not granted: refused by the gateway, from her kernel and over HTTP.
    world.start_ready("carol", &carol).await;
    let carol_server_token = world.server_env("carol")["JUPYTERHUB_API_TOKEN"].clone();
    let me = world
        .api(
            "GET",
            &format!("{}/hub/api/user", world.hub()),
            &carol_server_token,
            None,
        )
        .await;
    assert!(
        !me.body.contains("access:services"),
        "carol's server token: {}",
        me.body
    );
    let refused = world.list_clusters(&carol_server_token).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let carol_kernel = Kernel::start(world.proxy_port, "carol", &carol).await;
    let out = carol_kernel
        .run(
            "from dask_gateway import Gateway\ntry:\n    Gateway().list_clusters()\n    \
             print('listed')\nexcept Exception as e:\n    print(type(e).__name__, \
             getattr(e, 'status', None))",
        )
        .await
        .unwrap_or_else(|e| panic!("carol's cell failed: {e}"));
    assert_eq!(out, "ClientResponseError 401\n");
    // No credential at all, and a token the hub does not know: refused too.
    let url = format!("{}{PREFIX}/api/v1/clusters/", world.public());
    let anonymous = request(&world.client, "GET", &url, None, None)
        .await
        .unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    // A token the hub does not know: the hub answers 403 to `GET /hub/api/user`, as JupyterHub
    // 6 does (tests/jupyterhub_parity.rs), which dask-gateway turns into a 500 of its own.
    let unknown = world.list_clusters(&generate_token()).await;
    assert_eq!(
        (unknown.status, unknown.json()["error"].as_str()),
        (
            500,
            Some("Permission failure verifying user's JupyterHub API token")
        ),
        "{}",
        unknown.body
    );
    say("dask_gateway: carol (not granted) is refused with 401");

    // alice shuts her cluster down: nothing of it is left.
    let out = kernel
        .run("cluster.shutdown()\nprint([c.name for c in gateway.list_clusters()])")
        .await
        .unwrap_or_else(|e| panic!("alice's shutdown failed: {e}"));
    assert_eq!(out, "[]\n");
    let deadline = Deadline::new("the cluster's processes to exit", Duration::from_secs(60));
    loop {
        let left = world.gateway().cluster_processes();
        if left.is_empty() {
            break;
        }
        deadline
            .tick(left.iter().map(|p| p.cmdline.clone()).collect::<Vec<_>>())
            .await;
    }
    say("dask_gateway: alice's cluster shut down, no Dask process left");

    // The workspaces stop through the hub; no jupyterhub-singleuser is left.
    for user in ["alice", "bob", "carol"] {
        let r = world
            .admin("DELETE", &format!("/hub/api/users/{user}/server"), None)
            .await;
        assert!(
            r.status == 202 || r.status == 204,
            "stop {user}: {}",
            r.body
        );
    }
    let deadline = Deadline::new("the workspaces to stop", Duration::from_secs(60));
    loop {
        let left: Vec<i32> = ["alice", "bob", "carol"]
            .iter()
            .flat_map(|u| singleusers(&world.dir_str, u))
            .map(|p| p.pid)
            .collect();
        if left.is_empty() {
            break;
        }
        deadline.tick(left).await;
    }

    // No token in any log.
    let logs = [
        ("hub", world.procs["hub"].log()),
        ("proxy", world.procs["proxy"].log()),
        ("dask-gateway", world.gateway().proc.log()),
    ];
    assert!(
        logs[0].1.contains("service registered"),
        "the hub logged: {}",
        logs[0].1
    );
    for (name, log) in &logs {
        for token in [
            &world.admin_token,
            &world.gateway_token,
            &alice,
            &bob,
            &carol,
            &alice_server_token,
            &bob_server_token,
            &carol_server_token,
        ] {
            assert!(
                !log.contains(token.as_str()),
                "the {name} log holds a token"
            );
        }
    }
    say("dask_gateway: no token in the hub's, proxy's or gateway's log");
}
