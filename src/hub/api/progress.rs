//! `GET /users/{name}/server/progress` and `/servers/{server}/progress`: the progress of a spawn
//! as server-sent events (`data: {json}\n\n`), in JupyterHub's event shape
//! `{"progress", "message", "ready", "failed", "url", "html_message"}`.
//!
//! When this process drives the spawn, the events so far are replayed and the next ones follow
//! live. Otherwise the server row decides: ready gives one ready event, failed one failed event
//! (its message from the audit log), starting is polled until it resolves.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use futures::channel::mpsc;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::servers::authorized_server;
use crate::backend::ProgressEvent;
use crate::hub::auth::Caller;
use crate::hub::{HubConfig, HubError, HubResult, HubState};
use crate::store::{AuditAction, AuditQuery, Server, ServerState};

/// Interval of the blank lines that keep proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(8);

/// Interval at which a spawn driven elsewhere is re-read.
const ROW_POLL: Duration = Duration::from_secs(1);

/// `GET /users/{name}/server/progress`.
pub async fn default_server(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
) -> HubResult<Response> {
    stream(hub, caller, name, String::new()).await
}

/// `GET /users/{name}/servers/{server}/progress`.
pub async fn named_server(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, server)): Path<(String, String)>,
) -> HubResult<Response> {
    stream(hub, caller, name, server).await
}

/// The final event of a spawn that succeeded.
fn ready_event(config: &HubConfig, user: &str, server: &str) -> Value {
    // On the user's origin with a user domain (JupyterHub: `user.server_url(name)`).
    let url = config.server_url(user, server);
    json!({
        "progress": 100,
        "ready": true,
        "failed": false,
        "message": format!("Server ready at {url}"),
        "html_message": format!("Server ready at <a href=\"{url}\">{url}</a>"),
        "url": url,
    })
}

fn failed_event(message: &str) -> Value {
    json!({"progress": 100, "ready": false, "failed": true, "message": message})
}

/// An event of the spawner as JSON (the ready event gains the server's URL).
fn event_json(config: &HubConfig, event: &ProgressEvent, user: &str, server: &str) -> Value {
    if event.ready {
        ready_event(config, user, server)
    } else if event.failed {
        failed_event(&event.message)
    } else {
        json!({"progress": event.progress, "message": event.message})
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The message of the server's last failed spawn, from the audit log.
async fn failure_message(hub: &HubState, user: &str, server: &str) -> String {
    let query = AuditQuery {
        action: Some(AuditAction::ServerStart),
        target_user: Some(user.to_owned()),
        limit: 20,
        ..AuditQuery::default()
    };
    let events = hub.store.list_audit(&query).await.unwrap_or_default();
    events
        .iter()
        .find(|e| e.target_server.as_deref() == Some(server))
        .filter(|e| e.detail.get("failed").and_then(Value::as_bool) == Some(true))
        .and_then(|e| e.detail.get("message").and_then(Value::as_str))
        .map_or_else(
            || "Spawn failed".to_owned(),
            |m| format!("Spawn failed: {m}"),
        )
}

/// The final event of a server whose spawn is over, or `None` while it is starting.
async fn final_event(hub: &HubState, user: &str, server: &Server) -> Option<Value> {
    match server.state {
        ServerState::Starting => None,
        ServerState::Running => Some(ready_event(&hub.config, user, &server.name)),
        ServerState::Failed => Some(failed_event(
            &failure_message(hub, user, &server.name).await,
        )),
        ServerState::Stopped | ServerState::Stopping => Some(failed_event("Spawn cancelled")),
    }
}

type Tx = mpsc::Sender<Result<Bytes, Infallible>>;

async fn stream(
    hub: HubState,
    caller: Caller,
    name: String,
    server: String,
) -> HubResult<Response> {
    let user = authorized_server(&hub, &caller, &name, &server, &["read:servers"]).await?;
    let row = user
        .server(&server)
        .cloned()
        .ok_or_else(|| HubError::NotFound(format!("{name} has no server named '{server}'")))?;
    let user_name = user.detail.user.name.clone();
    let live = hub.spawns.subscribe(row.id);
    if live.is_none() && matches!(row.state, ServerState::Stopped | ServerState::Stopping) {
        // JupyterHub 6.1.1 `SpawnProgressAPIHandler.get`: 404 for a server it holds no spawner
        // of (a stopped one, after a restart or never started).
        return Err(HubError::NotFound(format!(
            "{user_name}/{server} is not running or starting"
        )));
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let _ = match live {
            Some((history, receiver)) => follow(&hub, &user_name, row, history, receiver, tx).await,
            None => poll_row(&hub, &user_name, row, tx).await,
        };
    });
    let mut response = Body::from_stream(rx).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Replays `history`, then forwards live events until the spawn ends. An `Err` means the client
/// went away.
async fn follow(
    hub: &HubState,
    user: &str,
    row: Server,
    history: Vec<ProgressEvent>,
    mut receiver: tokio::sync::broadcast::Receiver<ProgressEvent>,
    mut tx: Tx,
) -> Result<(), mpsc::SendError> {
    for event in &history {
        tx.send(Ok(sse(&event_json(&hub.config, event, user, &row.name))))
            .await?;
        if event.ready || event.failed {
            return Ok(());
        }
    }
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Ok(event) => {
                    tx.send(Ok(sse(&event_json(&hub.config, &event, user, &row.name)))).await?;
                    if event.ready || event.failed {
                        return Ok(());
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                // The spawn ended and its channel went: the row has the outcome.
                Err(RecvError::Closed) => return poll_row(hub, user, row, tx).await,
            },
            _ = keepalive.tick() => tx.send(Ok(Bytes::from_static(b"\n\n"))).await?,
        }
    }
}

/// Reads the row until the spawn is over and sends its final event.
async fn poll_row(
    hub: &HubState,
    user: &str,
    mut row: Server,
    mut tx: Tx,
) -> Result<(), mpsc::SendError> {
    let limit = Duration::from_secs(hub.config.spawn_timeout_secs.saturating_mul(2) + 60);
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_keepalive = tokio::time::Instant::now();
    loop {
        if let Some(event) = final_event(hub, user, &row).await {
            return tx.send(Ok(sse(&event))).await;
        }
        if tokio::time::Instant::now() >= deadline {
            return tx
                .send(Ok(sse(&failed_event("Spawn did not finish in time"))))
                .await;
        }
        tokio::time::sleep(ROW_POLL).await;
        if last_keepalive.elapsed() >= KEEPALIVE {
            tx.send(Ok(Bytes::from_static(b"\n\n"))).await?;
            last_keepalive = tokio::time::Instant::now();
        }
        match hub.store.get_server_by_id(row.id).await {
            Ok(now) => row = now,
            Err(crate::store::StoreError::NotFound) => {
                return tx.send(Ok(sse(&failed_event("Spawn cancelled")))).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read a starting server"),
        }
    }
}
