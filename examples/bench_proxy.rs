//! Helpers of `bench/proxy/run.sh` (loopback only):
//!
//! * `proxy`: Atelier's proxy with N in-memory routes `/user/u<i>/` → one target, and the
//!   production authorization path (a token checked through the decision cache);
//! * `ws-echo`: a WebSocket echo server (the upstream of the idle-WebSocket test);
//! * `ws-hold`: opens N WebSockets through a proxy, exchanges one message on each, prints
//!   `ready N` and keeps them idle for a while;
//! * `chp-routes`: adds N routes to configurable-http-proxy through its REST API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atelier::proxy::{
    Authorizer, Credential, MemoryRoutes, Proxy, ProxyConfig, Route, Verdict, serve,
    shutdown_signal,
};
use clap::{Parser, Subcommand};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Atelier's proxy with in-memory routes.
    Proxy {
        #[arg(long)]
        bind: SocketAddr,
        /// Routes `/user/u0/` … `/user/u<N-1>/`.
        #[arg(long)]
        routes: usize,
        /// Where every route goes.
        #[arg(long)]
        target: String,
        /// The default target (the hub).
        #[arg(long)]
        hub: String,
        /// The token requests must carry (`Authorization: token <t>`).
        #[arg(long, default_value = "bench")]
        token: String,
        /// Route changes per second while serving (servers starting and stopping): each change
        /// adds a route `/user/churn<k>/` and removes the one added 100 changes earlier.
        #[arg(long, default_value_t = 0)]
        churn: u32,
    },
    /// The same churn on configurable-http-proxy, through its REST API, until killed.
    ChpChurn {
        /// Its API, e.g. `http://127.0.0.1:8001`.
        #[arg(long)]
        api: String,
        /// `CONFIGPROXY_AUTH_TOKEN`.
        #[arg(long)]
        auth: String,
        /// Route changes per second.
        #[arg(long)]
        churn: u32,
        /// Where the routes go.
        #[arg(long)]
        target: String,
    },
    /// A WebSocket echo server.
    WsEcho {
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Opens idle WebSockets through a proxy.
    WsHold {
        /// e.g. `ws://127.0.0.1:8000/user/u0/ws`.
        #[arg(long)]
        url: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "bench")]
        token: String,
        /// How long to keep them open after `ready`.
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
    },
    /// Adds routes `/user/u<i>` → target to configurable-http-proxy.
    ChpRoutes {
        /// Its API, e.g. `http://127.0.0.1:8001`.
        #[arg(long)]
        api: String,
        /// `CONFIGPROXY_AUTH_TOKEN`.
        #[arg(long)]
        auth: String,
        #[arg(long)]
        routes: usize,
        #[arg(long)]
        target: String,
    },
}

/// Lets in the one bench token, as a store-backed authorizer lets in a valid one.
struct BenchToken(String);

impl Authorizer for BenchToken {
    fn authorize<'a>(
        &'a self,
        credential: &'a Credential,
        _owner: &'a str,
        _server: &'a str,
    ) -> BoxFuture<'a, Result<Verdict, atelier::proxy::Error>> {
        let verdict = match credential {
            Credential::Token(t) if *t == self.0 => Verdict::Allow,
            _ => Verdict::Unknown,
        };
        Box::pin(async move { Ok(verdict) })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // BENCH_RUNTIME=current: a current-thread runtime instead of the multi-thread one (with one
    // worker per CPU the process may use: one when pinned), to compare.
    let mut runtime = match std::env::var("BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Proxy {
            bind,
            routes,
            target,
            hub,
            token,
            churn,
        } => {
            let source = Arc::new(MemoryRoutes::from_routes(
                (0..routes).map(|i| Route::new(format!("u{i}"), "", target.clone())),
            ));
            if churn > 0 {
                let (source, target) = (source.clone(), target.clone());
                tokio::spawn(async move {
                    let mut tick = churn_ticker(churn);
                    for k in 0u64.. {
                        tick.tick().await;
                        source.insert(&format!("churn{k}"), "", &target);
                        if let Some(old) = k.checked_sub(CHURN_WINDOW) {
                            source.forget(&format!("churn{old}"), "");
                        }
                    }
                });
            }
            let mut config = ProxyConfig::new(hub);
            // Buffer sizes to compare (bytes), e.g. BENCH_UPSTREAM_READ_BUFFER=262144.
            let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
            if let Some(n) = env("BENCH_UPSTREAM_READ_BUFFER") {
                config.upstream_read_buffer = n;
            }
            if let Some(n) = env("BENCH_CLIENT_BUFFER") {
                config.client_buffer = n;
            }
            let proxy = Proxy::start(config, source, Some(Arc::new(BenchToken(token)))).await?;
            let listener = TcpListener::bind(bind).await?;
            println!("listening {} routes {}", listener.local_addr()?, routes);
            serve(listener, proxy, shutdown_signal()).await;
        }
        Command::WsEcho { bind } => {
            let listener = TcpListener::bind(bind).await?;
            println!("listening {}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        Command::WsHold {
            url,
            count,
            token,
            hold_secs,
        } => {
            let open = |_| {
                let (url, token) = (url.clone(), token.clone());
                async move {
                    let mut req = url.into_client_request()?;
                    req.headers_mut()
                        .insert("authorization", format!("token {token}").parse()?);
                    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
                    ws.send(Message::text("hello")).await?;
                    match ws.next().await {
                        Some(Ok(m)) if m.is_text() => Ok(ws),
                        other => anyhow::bail!("no echo: {other:?}"),
                    }
                }
            };
            let sockets: Vec<_> = futures::stream::iter(0..count)
                .map(open)
                .buffer_unordered(32)
                .collect::<Vec<anyhow::Result<_>>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
            println!("ready {}", sockets.len());
            tokio::time::sleep(Duration::from_secs(hold_secs)).await;
            drop(sockets);
        }
        Command::ChpRoutes {
            api,
            auth,
            routes,
            target,
        } => {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let body = Bytes::from(serde_json::json!({ "target": target }).to_string());
            let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..routes)
                .map(|i| chp_route(&client, &api, &auth, "POST", format!("u{i}"), body.clone()))
                .buffer_unordered(16)
                .collect()
                .await;
            results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
            println!("added {routes} routes");
        }
        Command::ChpChurn {
            api,
            auth,
            churn,
            target,
        } => {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let body = Bytes::from(serde_json::json!({ "target": target }).to_string());
            let mut tick = churn_ticker(churn);
            for k in 0u64.. {
                tick.tick().await;
                chp_route(
                    &client,
                    &api,
                    &auth,
                    "POST",
                    format!("churn{k}"),
                    body.clone(),
                )
                .await?;
                if let Some(old) = k.checked_sub(CHURN_WINDOW) {
                    let user = format!("churn{old}");
                    chp_route(&client, &api, &auth, "DELETE", user, Bytes::new()).await?;
                }
            }
        }
    }
    Ok(())
}

/// Adds (`POST`, `body` naming the target) or removes (`DELETE`) configurable-http-proxy's route
/// `/user/<user>` through its REST API.
async fn chp_route(
    client: &Client<HttpConnector, Full<Bytes>>,
    api: &str,
    auth: &str,
    method: &str,
    user: String,
    body: Bytes,
) -> anyhow::Result<()> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{api}/api/routes/user/{user}"))
        .header("authorization", format!("token {auth}"))
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    anyhow::ensure!(status.is_success(), "{method} route {user}: {status}");
    Ok(())
}

/// How many churned routes exist at once.
const CHURN_WINDOW: u64 = 100;

/// Ticks `per_sec` times a second, without bursts after a late tick.
fn churn_ticker(per_sec: u32) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
