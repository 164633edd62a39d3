//! The proxy over real sockets on 127.0.0.1: axum upstreams (HTTP and WebSocket echo) behind
//! `atelier::proxy::serve`, routes from memory or from an SQLite store. Every server is stopped
//! at the end of its test (the proxy through its shutdown future, upstreams by dropping their
//! connections).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use atelier::proxy::{
    Authorizer, MemoryRoutes, Proxy, ProxyConfig, Route, RouteSource, StoreAuthorizer, StoreRoutes,
    serve,
};
use atelier::store::{NewSession, NewToken, Server, StartRequest, Store, TokenOwner, User, now};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const MIB: usize = 1024 * 1024;
/// What a gated stream sends before it waits for the other side.
const FIRST: usize = 64 * 1024;
/// Bound on anything a test waits for: a hang fails the test instead of blocking it.
const PATIENCE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress in {PATIENCE:?}"))
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---- upstreams ----------------------------------------------------------------------------

struct UpState {
    name: String,
    hits: AtomicUsize,
    /// A gated download waits for this after its first chunk.
    go_on: Notify,
    /// A gated upload signals this once its first chunk arrived.
    got_first: Notify,
}

/// A single-user server stand-in: echoes what it received as JSON, streams downloads, hashes
/// uploads, echoes WebSocket messages.
struct Upstream {
    addr: SocketAddr,
    state: Arc<UpState>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(name: &str) -> Upstream {
        let state = Arc::new(UpState {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            go_on: Notify::new(),
            got_first: Notify::new(),
        });
        let app = Router::new()
            .fallback(upstream_handler)
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Connections live in the task's JoinSet: stopping the task closes them all, as a
        // process that exits would.
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Upstream { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

async fn upstream_handler(
    State(state): State<Arc<UpState>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    req: Request,
) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if let Ok(ws) = ws {
        return ws
            .max_message_size(8 * MIB)
            .on_upgrade(echo_websocket)
            .into_response();
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    // `?set-cookie=<percent-encoded value>`, repeated: a server that sets cookies.
    let cookies: Vec<String> = query
        .split('&')
        .filter_map(|p| p.strip_prefix("set-cookie="))
        .map(percent_decode)
        .collect();
    if !cookies.is_empty() {
        let mut resp = axum::Json(json!({"name": state.name})).into_response();
        for c in cookies {
            resp.headers_mut()
                .append(header::SET_COOKIE, c.parse().unwrap());
        }
        return resp;
    }
    let gated = query_param(&query, "gate").is_some();
    if let Some(n) = query_param(&query, "download").and_then(|n| n.parse::<usize>().ok()) {
        let data = Bytes::from(pattern(n));
        let stream = async_stream(state.clone(), data, gated);
        return Response::new(Body::from_stream(stream));
    }
    if req.method() == http::Method::POST {
        let mut body = req.into_body();
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        let mut signalled = false;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            hasher.update(&data);
            len += data.len();
            if gated && !signalled && len >= FIRST {
                state.got_first.notify_one();
                signalled = true;
            }
        }
        return axum::Json(json!({
            "name": state.name,
            "len": len,
            "sha256": hex::encode(hasher.finalize()),
        }))
        .into_response();
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    axum::Json(json!({
        "name": state.name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|pq| pq.as_str()),
        "host": header("host"),
        "x-forwarded-for": header("x-forwarded-for"),
        "x-forwarded-proto": header("x-forwarded-proto"),
        "x-forwarded-host": header("x-forwarded-host"),
        "cookie": header("cookie"),
        "authorization": header("authorization"),
        "connection": header("connection"),
    }))
    .into_response()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// `data` in 16 KiB chunks; when gated, stops after the first [`FIRST`] bytes until told to go
/// on.
fn async_stream(
    state: Arc<UpState>,
    data: Bytes,
    gated: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::unfold((0usize, false), move |(offset, waited)| {
        let (state, data) = (state.clone(), data.clone());
        async move {
            if offset >= data.len() {
                return None;
            }
            let mut waited = waited;
            if gated && offset >= FIRST && !waited {
                state.go_on.notified().await;
                waited = true;
            }
            let end = (offset + 16 * 1024).min(data.len());
            Some((Ok(data.slice(offset..end)), (end, waited)))
        }
    })
}

async fn echo_websocket(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        // tungstenite answers pings and closes itself; the next read flushes the answer.
        if matches!(msg, AxMessage::Text(_) | AxMessage::Binary(_))
            && socket.send(msg).await.is_err()
        {
            return;
        }
    }
}

// ---- proxies ------------------------------------------------------------------------------

struct RunningProxy {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningProxy {
    async fn start(
        source: Arc<dyn RouteSource>,
        authorizer: Option<Arc<dyn Authorizer>>,
        hub: &str,
        refresh: Duration,
    ) -> RunningProxy {
        let config = ProxyConfig {
            refresh_interval: refresh,
            shutdown_grace: Duration::from_secs(2),
            ..ProxyConfig::new(hub)
        };
        RunningProxy::start_with(config, source, authorizer).await
    }

    async fn start_with(
        config: ProxyConfig,
        source: Arc<dyn RouteSource>,
        authorizer: Option<Arc<dyn Authorizer>>,
    ) -> RunningProxy {
        let proxy = Proxy::start(config, source, authorizer).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, proxy.clone(), async move {
            let _ = stopped.await;
        }));
        RunningProxy {
            addr,
            proxy,
            stop,
            task,
        }
    }

    /// Asks the proxy to stop and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(());
        within("proxy shutdown", self.task).await.unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

type TestBody = BoxBody<Bytes, std::io::Error>;

fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn empty() -> TestBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

async fn request(
    client: &Client<HttpConnector, TestBody>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Answer {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = within(url, client.request(req.body(body).unwrap()))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = within(url, body.collect()).await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(
    client: &Client<HttpConnector, TestBody>,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    request(client, "GET", url, headers, empty()).await
}

const BROWSER: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

fn memory(routes: &[(&str, &str, &str)]) -> Arc<MemoryRoutes> {
    Arc::new(MemoryRoutes::from_routes(
        routes.iter().map(|(u, s, t)| Route::new(*u, *s, *t)),
    ))
}

const NEVER: Duration = Duration::from_secs(3600);

// ---- routing ------------------------------------------------------------------------------

#[tokio::test]
async fn routes_by_longest_prefix_and_keeps_path_query_and_host() {
    let hub = Upstream::start("hub").await;
    let alice = Upstream::start("alice").await;
    let gpu = Upstream::start("alice/gpu").await;
    let bob = Upstream::start("bob").await;
    let routes = memory(&[
        ("alice", "", &alice.url()),
        ("alice", "gpu", &gpu.url()),
        ("bob", "", &bob.url()),
    ]);
    let proxy = RunningProxy::start(routes, None, &hub.url(), NEVER).await;
    let c = client();

    for (path, name) in [
        ("/user/alice/lab/tree/a%20b.ipynb?x=1&y=%2F&z", "alice"),
        ("/user/alice/", "alice"),
        ("/user/alice", "alice"),
        ("/user/alice/gpu", "alice/gpu"),
        ("/user/alice/gpu/", "alice/gpu"),
        ("/user/alice/gpu/api/kernels?token=abc", "alice/gpu"),
        ("/user/alice/gpux/", "alice"),
        ("/user/bob/gpu/lab", "bob"),
        ("/hub/home", "hub"),
        ("/hub/api/users?state=ready", "hub"),
        ("/", "hub"),
        ("/user/", "hub"),
        ("/favicon.ico", "hub"),
    ] {
        let a = get(&c, &proxy.url(path), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let seen = a.json();
        assert_eq!(seen["name"], name, "{path}");
        assert_eq!(seen["path"], path, "{path}: path and query unchanged");
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen["x-forwarded-proto"], "http");
        assert_eq!(seen["host"], proxy.addr.to_string());
    }

    // Host as the client sent it; hop-by-hop headers dropped; prior X-Forwarded-For extended.
    let seen = get(
        &c,
        &proxy.url("/user/bob/x"),
        &[
            ("host", "lab.example.org"),
            ("x-forwarded-for", "203.0.113.7"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
        ],
    )
    .await
    .json();
    assert_eq!(seen["name"], "bob");
    assert_eq!(seen["host"], "lab.example.org");
    assert_eq!(seen["x-forwarded-host"], "lab.example.org");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["connection"], Value::Null);

    let health = get(&c, &proxy.url("/_atelier/proxy/health"), &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok", "routes": 3}));

    proxy.stop().await;
    for u in [hub, alice, gpu, bob] {
        u.stop().await;
    }
}

/// Cookie tossing: a user's server cannot set a cookie the hub (or another server) would read.
/// Its `Set-Cookie` headers naming the hub's session cookie, with a `Path` outside its own
/// `/user/<name>/[<server>/]` prefix, or with a `Domain`, are dropped; its own cookies and the
/// hub's pass.
#[tokio::test]
async fn user_servers_cannot_set_cookies_beyond_their_prefix() {
    let hub = Upstream::start("hub").await;
    let bob = Upstream::start("bob").await;
    let gpu = Upstream::start("bob/gpu").await;
    let routes = memory(&[("bob", "", &bob.url()), ("bob", "gpu", &gpu.url())]);
    let proxy = RunningProxy::start(routes, None, &hub.url(), NEVER).await;
    let c = client();
    let set_cookies = |a: &Answer| -> Vec<String> {
        a.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let asking = |path: &str, cookies: &[&str]| {
        let query: Vec<String> = cookies
            .iter()
            .map(|c| format!("set-cookie={}", percent_encode(c)))
            .collect();
        proxy.url(&format!("{path}?{}", query.join("&")))
    };

    let tossed = [
        "atelier-session=attacker; Path=/hub/; HttpOnly",
        "atelier-session=attacker; Path=/user/bob/",
        "x=1; Path=/",
        "x=2; Path=/hub/",
        "x=3; Path=/user/alice/",
        "x=4; Domain=127.0.0.1; Path=/user/bob/",
    ];
    let own = [
        "jupyterhub-user-bob=t; Path=/user/bob/; HttpOnly",
        "_xsrf=x; Path=/user/bob/lab/",
        "plain=1",
    ];
    let all: Vec<&str> = tossed.iter().chain(own.iter()).copied().collect();
    let a = get(&c, &asking("/user/bob/tree", &all), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["name"], "bob");
    assert_eq!(set_cookies(&a), own, "only bob's own cookies pass");

    // A named server: its own prefix only, not the default server's.
    let a = get(
        &c,
        &asking(
            "/user/bob/gpu/lab",
            &["a=1; Path=/user/bob/gpu/", "b=2; Path=/user/bob/"],
        ),
        &[],
    )
    .await;
    assert_eq!(a.json()["name"], "bob/gpu");
    assert_eq!(set_cookies(&a), ["a=1; Path=/user/bob/gpu/"]);

    // The hub's own cookies are the hub's business.
    let a = get(&c, &asking("/hub/login", &[tossed[0], "x=1; Path=/"]), &[]).await;
    assert_eq!(a.json()["name"], "hub");
    assert_eq!(set_cookies(&a), [tossed[0], "x=1; Path=/"]);

    proxy.stop().await;
    for u in [hub, bob, gpu] {
        u.stop().await;
    }
}

#[tokio::test]
async fn stopped_and_unknown_servers_redirect_browsers_and_answer_503_to_apis() {
    let hub = Upstream::start("hub").await;
    let routes = memory(&[("alice", "gpu", "http://127.0.0.1:9")]);
    routes.remove("alice", "gpu"); // known, stopped
    let proxy = RunningProxy::start(routes, None, &hub.url(), NEVER).await;
    let c = client();

    let a = get(&c, &proxy.url("/user/alice/gpu/lab?x=1"), &[BROWSER]).await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert_eq!(
        a.location(),
        "/hub/spawn/alice/gpu?next=%2Fuser%2Falice%2Fgpu%2Flab%3Fx%3D1"
    );
    // Not a server of alice's: the default server is the one to start.
    let a = get(&c, &proxy.url("/user/alice/lab"), &[BROWSER]).await;
    assert_eq!(a.location(), "/hub/spawn/alice?next=%2Fuser%2Falice%2Flab");
    let a = get(&c, &proxy.url("/user/nobody/"), &[BROWSER]).await;
    assert_eq!(a.location(), "/hub/spawn/nobody?next=%2Fuser%2Fnobody%2F");

    let a = get(&c, &proxy.url("/user/alice/gpu/api/status"), &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.json(),
        json!({"status": 503, "message": "server alice/gpu is not running"})
    );
    assert_eq!(
        a.headers[header::CONTENT_TYPE],
        "application/json",
        "JSON error"
    );
    let a = request(
        &c,
        "POST",
        &proxy.url("/user/nobody/api"),
        &[BROWSER],
        empty(),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a POST is no page load"
    );
    assert_eq!(hub.hits(), 0);

    proxy.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_route_added_after_start_is_reachable_at_once() {
    let hub = Upstream::start("hub").await;
    let alice = Upstream::start("alice").await;
    let gpu = Upstream::start("alice/gpu").await;
    let routes = memory(&[]);
    // The table is loaded once at start and never again during the test.
    let proxy = RunningProxy::start(routes.clone(), None, &hub.url(), NEVER).await;
    let c = client();
    assert_eq!(
        get(&c, &proxy.url("/user/alice/"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    routes.insert("alice", "", &alice.url());
    let a = get(&c, &proxy.url("/user/alice/lab"), &[]).await;
    assert_eq!(a.json()["name"], "alice");
    routes.insert("alice", "gpu", &gpu.url());
    let a = get(&c, &proxy.url("/user/alice/gpu/lab"), &[]).await;
    assert_eq!(a.json()["name"], "alice/gpu");
    assert_eq!(proxy.proxy.route_count(), 0, "served without a refresh");

    proxy.stop().await;
    for u in [hub, alice, gpu] {
        u.stop().await;
    }
}

// ---- bodies -------------------------------------------------------------------------------

#[tokio::test]
async fn bodies_of_a_mebibyte_stream_both_ways() {
    let hub = Upstream::start("hub").await;
    let alice = Upstream::start("alice").await;
    let proxy = RunningProxy::start(
        memory(&[("alice", "", &alice.url())]),
        None,
        &hub.url(),
        NEVER,
    )
    .await;
    let c = client();

    // Whole bodies arrive intact.
    let a = get(
        &c,
        &proxy.url(&format!("/user/alice/f?download={MIB}")),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), MIB);
    assert!(a.body == pattern(MIB), "download bytes differ");
    let upload = pattern(MIB);
    let a = request(
        &c,
        "POST",
        &proxy.url("/user/alice/upload"),
        &[],
        Full::new(Bytes::from(upload.clone()))
            .map_err(|e| match e {})
            .boxed(),
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"name": "alice", "len": MIB, "sha256": sha256_hex(&upload)})
    );

    // Download: the upstream holds back the rest until the client has the first chunk, which
    // only a streaming proxy can deliver.
    let req = http::Request::get(proxy.url(&format!("/user/alice/f?download={MIB}&gate=1")))
        .body(empty())
        .unwrap();
    let resp = within("gated download", c.request(req)).await.unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut released = false;
    while let Some(frame) = within("gated download body", body.frame()).await {
        if let Ok(data) = frame.unwrap().into_data() {
            got.extend_from_slice(&data);
        }
        if !released && got.len() >= FIRST {
            alice.state.go_on.notify_one();
            released = true;
        }
    }
    assert!(got == pattern(MIB), "gated download bytes differ");

    // Upload: the client holds back the rest until the upstream has the first chunk.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(4);
    let body = BodyExt::boxed(StreamBody::new(
        rx.map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    ));
    let req = http::Request::post(proxy.url("/user/alice/upload?gate=1"))
        .body(body)
        .unwrap();
    let pending = tokio::spawn(c.request(req));
    let data = Bytes::from(pattern(MIB));
    tx.send(data.slice(..FIRST)).await.unwrap();
    within(
        "gated upload, first chunk",
        alice.state.got_first.notified(),
    )
    .await;
    for chunk in data.slice(FIRST..).chunks(100_000) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    drop(tx);
    let resp = within("gated upload", pending).await.unwrap().unwrap();
    let answer: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        answer,
        json!({"name": "alice", "len": MIB, "sha256": sha256_hex(&data)})
    );

    proxy.stop().await;
    hub.stop().await;
    alice.stop().await;
}

// ---- WebSockets ---------------------------------------------------------------------------

#[tokio::test]
async fn websockets_echo_text_binary_and_close_through_the_proxy() {
    let hub = Upstream::start("hub").await;
    let alice = Upstream::start("alice").await;
    let proxy = RunningProxy::start(
        memory(&[("alice", "", &alice.url())]),
        None,
        &hub.url(),
        NEVER,
    )
    .await;

    let url = format!(
        "ws://{}/user/alice/api/kernels/k1/channels?session_id=s",
        proxy.addr
    );
    let (mut ws, resp) = within("ws connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        within("text echo", ws.next()).await.unwrap().unwrap(),
        Message::text("hello")
    );
    let small = Bytes::from_static(&[0, 1, 2, 255, 254]);
    ws.send(Message::binary(small.clone())).await.unwrap();
    assert_eq!(
        within("binary echo", ws.next()).await.unwrap().unwrap(),
        Message::binary(small)
    );
    let big = Bytes::from(pattern(MIB));
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        within("large binary echo", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::binary(big)
    );
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    assert_eq!(
        within("pong", ws.next()).await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"p"))
    );

    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match within("close answer", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the close answer, got {other:?}"),
    }
    assert!(
        matches!(within("end", ws.next()).await, None | Some(Err(_))),
        "stream ends after the close handshake"
    );

    // A WebSocket still open when the proxy stops is closed by it.
    let url = format!("ws://{}/user/alice/ws2", proxy.addr);
    let (mut ws, _) = within("ws connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    proxy.stop().await;
    assert!(matches!(
        within("end at shutdown", ws.next()).await,
        None | Some(Err(_))
    ));
    hub.stop().await;
    alice.stop().await;
}

// ---- the store: routes and authorization ---------------------------------------------------

/// A fresh SQLite file, removed on drop.
struct Db {
    store: Store,
    path: PathBuf,
}

impl Db {
    async fn new() -> Db {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "atelier-proxy-test-{}-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            now().timestamp_micros()
        ));
        let store = Store::connect(&Db::url_of(&path)).await.unwrap();
        Db { store, path }
    }

    fn url_of(path: &std::path::Path) -> String {
        format!("sqlite://{}", path.display())
    }

    fn url(&self) -> String {
        Db::url_of(&self.path)
    }

    async fn user(&self, name: &str, admin: bool) -> User {
        self.store.create_user(name, admin).await.unwrap()
    }

    async fn running(&self, user: &User, name: &str, url: &str) -> Server {
        let server = self.store.create_server(user.id, name).await.unwrap();
        self.restart(&server, url).await
    }

    async fn restart(&self, server: &Server, url: &str) -> Server {
        let s = &self.store;
        if s.get_server_by_id(server.id).await.unwrap().state
            != atelier::store::ServerState::Stopped
        {
            s.mark_stopped(server.id).await.unwrap();
        }
        s.begin_start(server.id, &StartRequest::default(), now())
            .await
            .unwrap();
        s.mark_running(server.id, url, &json!({}), now())
            .await
            .unwrap()
    }

    async fn token(&self, owner: TokenOwner, scopes: &[&str]) -> String {
        let scopes = scopes.iter().map(|s| s.to_string()).collect();
        self.store
            .create_token(&NewToken::new(owner, scopes))
            .await
            .unwrap()
            .0
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn store_proxy(store: &Store, hub: &Upstream, refresh: Duration) -> RunningProxy {
    RunningProxy::start(
        Arc::new(StoreRoutes::new(store.clone())),
        Some(Arc::new(StoreAuthorizer::new(store.clone()))),
        &hub.url(),
        refresh,
    )
    .await
}

#[tokio::test]
async fn access_needs_a_credential_with_access_servers_for_that_server() {
    let db = Db::new().await;
    let hub = Upstream::start("hub").await;
    let a_up = Upstream::start("alice").await;
    let g_up = Upstream::start("alice/gpu").await;
    let c_up = Upstream::start("carol").await;
    let alice = db.user("alice", false).await;
    let bob = db.user("bob", false).await;
    let carol = db.user("carol", false).await;
    let root = db.user("root", true).await;
    db.store
        .set_user_groups(carol.id, &["ocean".to_owned()])
        .await
        .unwrap();
    // Alice's server URL as a backend may record it (with the path): only the origin counts.
    db.running(&alice, "", &format!("{}/user/alice/", a_up.url()))
        .await;
    db.running(&alice, "gpu", &g_up.url()).await;
    db.running(&carol, "", &c_up.url()).await;
    let proxy = store_proxy(&db.store, &hub, NEVER).await;
    assert_eq!(proxy.proxy.route_count(), 3);
    let c = client();

    let alice_token = db.token(TokenOwner::User(alice.id), &["self"]).await;
    let bob_token = db.token(TokenOwner::User(bob.id), &["self"]).await;
    let bob_wants_alice = db
        .token(TokenOwner::User(bob.id), &["access:servers!user=alice"])
        .await;
    let root_for_alice = db
        .token(TokenOwner::User(root.id), &["access:servers!user=alice"])
        .await;
    let service_for_alice = db
        .token(
            TokenOwner::Service("grader".into()),
            &["access:servers!user=alice"],
        )
        .await;
    let service_for_ocean = db
        .token(
            TokenOwner::Service("ocean-dash".into()),
            &["access:servers!group=ocean"],
        )
        .await;
    let gpu_only = db
        .token(
            TokenOwner::User(alice.id),
            &["access:servers!server=alice/gpu"],
        )
        .await;
    let (alice_session, _) = db
        .store
        .create_session(&NewSession {
            user_id: Some(alice.id),
            next: None,
            data: json!({}),
            expires_at: now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    let (anonymous_session, _) = db
        .store
        .create_session(&NewSession {
            user_id: None,
            next: None,
            data: json!({}),
            expires_at: now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();

    let auth = |t: &str| format!("token {t}");
    let bearer = |t: &str| format!("Bearer {t}");
    let cookie = |s: &str| format!("theme=dark; atelier-session={s}");
    let hits = || (a_up.hits(), g_up.hits(), c_up.hits());

    // Allowed: (path, header, value, upstream name)
    for (path, name, value, upstream) in [
        (
            "/user/alice/lab",
            "authorization",
            auth(&alice_token),
            "alice",
        ),
        (
            "/user/alice/gpu/",
            "authorization",
            bearer(&alice_token),
            "alice/gpu",
        ),
        ("/user/alice/", "cookie", cookie(&alice_session), "alice"),
        (
            "/user/alice/",
            "authorization",
            auth(&root_for_alice),
            "alice",
        ),
        (
            "/user/alice/gpu/x",
            "authorization",
            auth(&service_for_alice),
            "alice/gpu",
        ),
        (
            "/user/carol/",
            "authorization",
            auth(&service_for_ocean),
            "carol",
        ),
        (
            "/user/alice/gpu/",
            "authorization",
            auth(&gpu_only),
            "alice/gpu",
        ),
    ] {
        let a = get(&c, &proxy.url(path), &[(name, &value)]).await;
        assert_eq!(a.status, StatusCode::OK, "{path} with {value}");
        let seen = a.json();
        assert_eq!(seen["name"], upstream, "{path} with {value}");
        if name == "cookie" {
            assert_eq!(
                seen["cookie"], "theme=dark",
                "the hub session stays with the proxy"
            );
        } else {
            assert_eq!(seen[name], value, "the token is forwarded");
        }
    }
    // `?token=` as JupyterHub accepts it; the query is forwarded unchanged.
    let path = format!("/user/alice/api/contents?token={alice_token}&a=1");
    let a = get(&c, &proxy.url(&path), &[]).await;
    assert_eq!(a.json()["path"], path);

    // Refused, and the upstream never sees the request.
    let before = hits();
    for (path, value) in [
        ("/user/alice/", auth(&bob_token)),
        ("/user/alice/gpu/", auth(&bob_token)),
        // Bob holds no access to alice's servers: a token cannot exceed its owner.
        ("/user/alice/", auth(&bob_wants_alice)),
        ("/user/carol/", auth(&root_for_alice)),
        ("/user/carol/", auth(&service_for_alice)),
        ("/user/alice/", auth(&service_for_ocean)),
        ("/user/alice/", auth(&gpu_only)),
        ("/user/carol/", auth(&alice_token)),
    ] {
        // A page load gets a page naming the server; an API client JupyterHub's JSON error.
        let a = get(&c, &proxy.url(path), &[("authorization", &value), BROWSER]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path} with {value}");
        assert!(
            a.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = String::from_utf8_lossy(&a.body);
        assert!(page.contains("You may not use the server"), "{page}");
        let a = get(&c, &proxy.url(path), &[("authorization", &value)]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path} with {value}");
        assert_eq!(a.json()["status"], 403);
        assert!(
            a.json()["message"]
                .as_str()
                .unwrap()
                .contains("not allowed")
        );
    }
    let a = get(
        &c,
        &proxy.url("/user/alice/"),
        &[
            ("cookie", &format!("atelier-session={anonymous_session}")),
            ("authorization", &auth(&bob_token)),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // WebSocket handshakes are checked too.
    let mut req = format!("ws://{}/user/alice/ws", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", auth(&bob_token).parse().unwrap());
    match within("refused ws", tokio_tungstenite::connect_async(req)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert_eq!(hits(), before, "no refused request reached a server");

    // No valid credential: browsers go to the login page, APIs get 401.
    for headers in [
        vec![BROWSER],
        vec![BROWSER, ("authorization", "token not-a-token")],
        vec![BROWSER, ("cookie", "atelier-session=expired-or-forged")],
    ] {
        let a = get(&c, &proxy.url("/user/alice/lab?x=1"), &headers).await;
        assert_eq!(a.status, StatusCode::FOUND, "{headers:?}");
        assert_eq!(
            a.location(),
            "/hub/login?next=%2Fuser%2Falice%2Flab%3Fx%3D1"
        );
    }
    let a = get(&c, &proxy.url("/user/alice/api/status"), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["status"], 401);
    let a = get(
        &c,
        &proxy.url("/user/alice/api/status"),
        &[("cookie", &format!("atelier-session={anonymous_session}"))],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "a session not logged in"
    );
    assert_eq!(hits(), before);

    // The hub needs no credential from the proxy, and gets the cookie.
    let a = get(&c, &proxy.url("/hub/login"), &[("cookie", &cookie("s"))]).await;
    assert_eq!(a.json()["name"], "hub");
    assert_eq!(a.json()["cookie"], cookie("s"));

    // A stopped server: the owner is sent to the spawn page; bob still gets 403.
    let carol_server = db.store.get_server(carol.id, "").await.unwrap();
    db.store.mark_stopped(carol_server.id).await.unwrap();
    proxy.proxy.refresh().await.unwrap();
    let a = get(
        &c,
        &proxy.url("/user/carol/tree"),
        &[("authorization", &auth(&service_for_ocean)), BROWSER],
    )
    .await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert_eq!(a.location(), "/hub/spawn/carol?next=%2Fuser%2Fcarol%2Ftree");
    let a = get(
        &c,
        &proxy.url("/user/carol/tree"),
        &[("authorization", &auth(&bob_token))],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    proxy.stop().await;
    for u in [hub, a_up, g_up, c_up] {
        u.stop().await;
    }
}

#[tokio::test]
async fn a_stale_route_is_looked_up_again_when_its_upstream_refuses() {
    let db = Db::new().await;
    let hub = Upstream::start("hub").await;
    let first = Upstream::start("alice-1").await;
    let alice = db.user("alice", false).await;
    let server = db.running(&alice, "", &first.url()).await;
    let token = db.token(TokenOwner::User(alice.id), &["self"]).await;
    let authz = format!("token {token}");
    // Never refreshed: the table keeps the first address.
    let proxy = store_proxy(&db.store, &hub, NEVER).await;
    let c = client();
    let a = get(&c, &proxy.url("/user/alice/"), &[("authorization", &authz)]).await;
    assert_eq!(a.json()["name"], "alice-1");

    // The server moved: its old address refuses, the proxy asks again and follows, body and all.
    first.stop().await;
    let second = Upstream::start("alice-2").await;
    db.restart(&server, &second.url()).await;
    let upload = pattern(300_000);
    let a = request(
        &c,
        "POST",
        &proxy.url("/user/alice/upload"),
        &[("authorization", &authz)],
        Full::new(Bytes::from(upload.clone()))
            .map_err(|e| match e {})
            .boxed(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        json!({"name": "alice-2", "len": upload.len(), "sha256": sha256_hex(&upload)})
    );

    // The server stopped: the browser is sent to the spawn page.
    second.stop().await;
    db.store.mark_stopped(server.id).await.unwrap();
    let a = get(
        &c,
        &proxy.url("/user/alice/lab"),
        &[("authorization", &authz), BROWSER],
    )
    .await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert_eq!(a.location(), "/hub/spawn/alice?next=%2Fuser%2Falice%2Flab");
    let a = get(
        &c,
        &proxy.url("/user/alice/lab"),
        &[("authorization", &authz)],
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);

    proxy.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn two_proxies_serve_side_by_side_from_one_database() {
    let db = Db::new().await;
    let hub = Upstream::start("hub").await;
    let a_up = Upstream::start("alice").await;
    let b_up = Upstream::start("bob").await;
    let alice = db.user("alice", false).await;
    let bob = db.user("bob", false).await;
    db.running(&alice, "", &a_up.url()).await;
    let alice_token = format!(
        "token {}",
        db.token(TokenOwner::User(alice.id), &["self"]).await
    );
    let bob_token = format!(
        "token {}",
        db.token(TokenOwner::User(bob.id), &["self"]).await
    );

    // Each proxy with its own connection pool to the same file, as two processes would have;
    // refreshed often, as in production.
    let other = Store::connect(&db.url()).await.unwrap();
    let p1 = store_proxy(&db.store, &hub, Duration::from_millis(100)).await;
    let p2 = store_proxy(&other, &hub, Duration::from_millis(100)).await;
    let c = client();
    for p in [&p1, &p2] {
        let a = get(
            &c,
            &p.url("/user/alice/x"),
            &[("authorization", &alice_token)],
        )
        .await;
        assert_eq!(a.json()["name"], "alice");
        let a = get(&c, &p.url("/user/bob/x"), &[("authorization", &bob_token)]).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Bob's server starts: both proxies reach it at once.
    db.running(&bob, "", &b_up.url()).await;
    for p in [&p1, &p2] {
        let a = get(&c, &p.url("/user/bob/x"), &[("authorization", &bob_token)]).await;
        assert_eq!(a.json()["name"], "bob");
    }
    // And both learn it in their tables.
    within("refresh", async {
        while p1.proxy.route_count() != 2 || p2.proxy.route_count() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    p1.stop().await;
    p2.stop().await;
    other.close().await;
    for u in [hub, a_up, b_up] {
        u.stop().await;
    }
}

// ---- per-user origins (--user-domain) ------------------------------------------------------

/// tornado's `set_secure_cookie` value (version 2) of the single-user server's login cookie
/// holding `token` (the signature is not checked by the proxy: the token is, in the database).
fn oauth_cookie(name: &str, token: &str) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = token.as_bytes();
    let mut b64 = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    format!(
        "{name}=\"2|1:0|10:1733480000|{}:{name}|{}:{b64}|0123456789abcdef\"",
        name.len(),
        b64.len()
    )
}

/// With `--user-domain users.example.test`: a user's server is served on its own host only,
/// the hub on the other hosts only; on a user's host the hub's session cookie is no credential
/// (the hub never sets it there), the server's login cookie is, and a browser's page load
/// without a credential reaches the server (which logs it in through the hub's OAuth).
#[tokio::test]
async fn users_hosts_serve_only_their_users_servers() {
    let db = Db::new().await;
    let hub = Upstream::start("hub").await;
    let a_up = Upstream::start("alice").await;
    let d_up = Upstream::start("a.b").await;
    let alice = db.user("alice", false).await;
    let dotted = db.user("a.b", false).await;
    let bob = db.user("bob", false).await;
    db.running(&alice, "", &a_up.url()).await;
    db.running(&dotted, "", &d_up.url()).await;
    db.store.create_server(bob.id, "").await.unwrap();
    let config = ProxyConfig {
        refresh_interval: NEVER,
        shutdown_grace: Duration::from_secs(2),
        user_domain: Some(atelier::config::UserDomain::parse("users.example.test").unwrap()),
        public_url: "http://hub.example.test:8000".into(),
        ..ProxyConfig::new(hub.url())
    };
    let proxy = RunningProxy::start_with(
        config,
        Arc::new(StoreRoutes::new(db.store.clone())),
        Some(Arc::new(StoreAuthorizer::new(db.store.clone()))),
    )
    .await;
    let c = client();
    let alice_token = db.token(TokenOwner::User(alice.id), &["self"]).await;
    let dotted_token = db.token(TokenOwner::User(dotted.id), &["self"]).await;
    let bob_token = db.token(TokenOwner::User(bob.id), &["self"]).await;
    let (alice_session, _) = db
        .store
        .create_session(&NewSession {
            user_id: Some(alice.id),
            next: None,
            data: json!({}),
            expires_at: now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    let auth = format!("token {alice_token}");
    const ALICE: &str = "alice.users.example.test:8000";
    let hits = || (hub.hits(), a_up.hits(), d_up.hits());

    // Alice's server on alice's host, Host kept.
    let r = get(
        &c,
        &proxy.url("/user/alice/lab?x=1"),
        &[("host", ALICE), ("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let echo = r.json();
    assert_eq!(echo["name"], "alice");
    assert_eq!(echo["host"], ALICE);
    assert_eq!(echo["path"], "/user/alice/lab?x=1");
    // The dotted name on its escaped label.
    let r = get(
        &c,
        &proxy.url("/user/a.b/"),
        &[
            ("host", "u--a-pb.users.example.test"),
            ("authorization", &format!("token {dotted_token}")),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["name"], "a.b");

    // Refused, none of them reaching an upstream.
    let before = hits();
    for (host, path, why) in [
        (
            "bob.users.example.test",
            "/user/alice/lab",
            "another user's host",
        ),
        (
            "a.b.users.example.test",
            "/user/a.b/",
            "a host two labels deep",
        ),
        (
            "alice.users.example.test",
            "/user/a.b/",
            "a dotted name's server on alice's host",
        ),
        (ALICE, "/hub/home", "the hub on a user's host"),
        (ALICE, "/hub/api/users", "the hub's API on a user's host"),
        (ALICE, "/", "the site's root on a user's host"),
        (
            "hub.example.test:8000",
            "/user/alice/lab",
            "a server on the hub's host",
        ),
        ("127.0.0.1", "/user/alice/", "a server on an address"),
    ] {
        let r = get(
            &c,
            &proxy.url(path),
            &[("host", host), ("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{why}");
        assert!(r.json()["message"].is_string(), "{why}");
    }
    assert_eq!(hits(), before, "a refused request reached an upstream");
    // A page load of a server on the hub's host goes to the server's host.
    let r = get(
        &c,
        &proxy.url("/user/alice/lab?x=1"),
        &[("host", "hub.example.test:8000"), BROWSER],
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.location(),
        "http://alice.users.example.test:8000/user/alice/lab?x=1"
    );
    // The hub on its own host.
    let r = get(
        &c,
        &proxy.url("/hub/home"),
        &[("host", "hub.example.test:8000")],
    )
    .await;
    assert_eq!(r.json()["name"], "hub");
    assert_eq!(hits(), (before.0 + 1, before.1, before.2));

    // The hub's session cookie is no credential on a user's host, and is not passed on.
    let hub_cookie = format!("atelier-session={alice_session}");
    let r = get(
        &c,
        &proxy.url("/user/alice/api/contents"),
        &[("host", ALICE), ("cookie", &hub_cookie)],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A browser's page load without a credential reaches the server (its OAuth logs it in).
    let r = get(
        &c,
        &proxy.url("/user/alice/lab"),
        &[("host", ALICE), ("cookie", &hub_cookie), BROWSER],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["cookie"],
        Value::Null,
        "the hub's cookie was forwarded"
    );

    // The server's login cookie is a credential: alice's token in it opens alice's server,
    // bob's does not; an unknown one is no credential.
    let r = get(
        &c,
        &proxy.url("/user/alice/api/contents"),
        &[
            ("host", ALICE),
            (
                "cookie",
                &oauth_cookie("jupyterhub-user-alice", &alice_token),
            ),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.json()["cookie"]
            .as_str()
            .unwrap()
            .contains("jupyterhub-user-alice=")
    );
    let r = get(
        &c,
        &proxy.url("/user/alice/api/contents"),
        &[
            ("host", ALICE),
            ("cookie", &oauth_cookie("jupyterhub-user-alice", &bob_token)),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = get(
        &c,
        &proxy.url("/user/alice/api/contents"),
        &[
            ("host", ALICE),
            (
                "cookie",
                &oauth_cookie("jupyterhub-user-alice", "not-a-token"),
            ),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A stopped server: the spawn page is on the hub's host.
    let r = get(
        &c,
        &proxy.url("/user/bob/lab"),
        &[("host", "bob.users.example.test:8000"), BROWSER],
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.location(),
        "http://hub.example.test:8000/hub/spawn/bob?next=%2Fuser%2Fbob%2Flab"
    );
    proxy.stop().await;
}

/// A server's Dask dashboard (`/user/<name>/[<server>/]dask/…`, the target its handle names) is
/// routed by longest prefix and opened to whoever may use the server, and to no one else.
#[tokio::test]
async fn dask_dashboards_go_to_their_owners_only() {
    let db = Db::new().await;
    let hub = Upstream::start("hub").await;
    let a_up = Upstream::start("alice").await;
    let a_dash = Upstream::start("alice dashboard").await;
    let g_up = Upstream::start("alice/gpu").await;
    let g_dash = Upstream::start("alice/gpu dashboard").await;
    let alice = db.user("alice", false).await;
    let bob = db.user("bob", false).await;
    let root = db.user("root", true).await;
    for (name, up, dash) in [("", &a_up, &a_dash), ("gpu", &g_up, &g_dash)] {
        let server = db.store.create_server(alice.id, name).await.unwrap();
        db.store
            .begin_start(server.id, &StartRequest::default(), now())
            .await
            .unwrap();
        let handle = json!({"pid": 1, atelier::backend::DASHBOARD_KEY: dash.url()});
        db.store
            .mark_running(server.id, &up.url(), &handle, now())
            .await
            .unwrap();
    }
    let proxy = store_proxy(&db.store, &hub, NEVER).await;
    assert_eq!(proxy.proxy.route_count(), 4, "two servers, two dashboards");
    let c = client();
    let alice_token = db.token(TokenOwner::User(alice.id), &["self"]).await;
    let gpu_only = db
        .token(
            TokenOwner::User(alice.id),
            &["access:servers!server=alice/gpu"],
        )
        .await;
    let bob_token = db.token(TokenOwner::User(bob.id), &["self"]).await;
    let root_token = db
        .token(TokenOwner::User(root.id), &["access:servers!user=alice"])
        .await;
    let auth = |t: &str| format!("token {t}");

    for (path, token, upstream) in [
        ("/user/alice/dask/status", &alice_token, "alice dashboard"),
        ("/user/alice/dask/", &root_token, "alice dashboard"),
        (
            "/user/alice/gpu/dask/status",
            &alice_token,
            "alice/gpu dashboard",
        ),
        (
            "/user/alice/gpu/dask/status",
            &gpu_only,
            "alice/gpu dashboard",
        ),
        ("/user/alice/lab", &alice_token, "alice"),
        ("/user/alice/gpu/lab/dask", &alice_token, "alice/gpu"),
    ] {
        let a = get(&c, &proxy.url(path), &[("authorization", &auth(token))]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let seen = a.json();
        assert_eq!(seen["name"], upstream, "{path}");
        assert_eq!(seen["path"], path, "the path is forwarded as sent");
    }
    let before = (a_dash.hits(), g_dash.hits());
    for (path, token) in [
        ("/user/alice/dask/status", &bob_token),
        ("/user/alice/gpu/dask/status", &bob_token),
        // A token for alice's gpu server opens neither her default server nor its dashboard.
        ("/user/alice/dask/status", &gpu_only),
    ] {
        let a = get(&c, &proxy.url(path), &[("authorization", &auth(token))]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
    }
    let a = get(&c, &proxy.url("/user/alice/dask/status"), &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "no credential");
    assert_eq!(
        (a_dash.hits(), g_dash.hits()),
        before,
        "refusals reach no dashboard"
    );
    proxy.stop().await;
    for up in [hub, a_up, a_dash, g_up, g_dash] {
        up.stop().await;
    }
}
