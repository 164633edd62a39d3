//! The hub itself: `GET /hub/api/` (the version, unauthenticated), `GET /hub/api/info`,
//! `POST /hub/api/shutdown` and `GET /hub/health`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Fields, JsonBody};
use crate::hub::auth::Caller;
use crate::hub::spawner::{self, StopOutcome};
use crate::hub::{HubResult, HubState, JUPYTERHUB_VERSION};
use crate::scopes::Target;
use crate::store::ServerState;

/// `GET /hub/api/`: `{"version": …}`, for clients to check the version before authenticating.
/// Like JupyterHub, without CORS headers: browsers on other origins may not read it.
pub async fn root() -> Json<Value> {
    Json(json!({"version": JUPYTERHUB_VERSION}))
}

/// `GET /hub/health` (JupyterHub's health check, no credentials): 200 with an empty body while
/// the process serves requests. The database is not consulted: a probe that failed with it
/// would restart every hub replica at once when the database blinks.
pub async fn health() -> StatusCode {
    StatusCode::OK
}

/// The Python of the single-user servers, as `GET /info` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonInfo {
    /// Its `sys.version`.
    pub version: String,
    /// Its `sys.executable`.
    pub executable: String,
}

/// Asks the interpreter that runs `command` (a local backend's `jupyterhub-singleuser`: the
/// interpreter of its `#!` line) for `sys.version` and `sys.executable`; `None` when there is
/// no such script or interpreter, or it does not answer within 10 s.
pub async fn probe_python(command: &[String]) -> Option<PythonInfo> {
    let program = command.first()?;
    let path = if program.contains('/') {
        std::path::PathBuf::from(program)
    } else {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())?
    };
    let head = tokio::fs::read(&path).await.ok()?;
    let first = head.split(|b| *b == b'\n').next()?;
    let shebang = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let mut words = shebang.split_whitespace();
    let mut interpreter = vec![words.next()?.to_owned()];
    interpreter.extend(words.map(str::to_owned));
    let mut cmd = tokio::process::Command::new(&interpreter[0]);
    cmd.args(&interpreter[1..])
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.version)",
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let (executable, version) = text.trim_end().split_once('\n')?;
    Some(PythonInfo {
        version: version.to_owned(),
        executable: executable.to_owned(),
    })
}

/// `GET /hub/api/info` (`read:hub`): version, backend and authenticator.
///
/// `python` and `sys_executable` are, in JupyterHub, those of the hub's own process. Atelier's
/// hub is not a Python process: they are those of the Python that runs the single-user servers
/// when the hub knows it (the local backend's `jupyterhub-singleuser`, asked once at start,
/// [`probe_python`]), and null when the servers' images decide (the kubernetes backend).
pub async fn info(State(hub): State<HubState>, caller: Caller) -> HubResult<Json<Value>> {
    caller.require("read:hub", Target::Hub)?;
    let atelier = env!("CARGO_PKG_VERSION");
    let python = hub.config.server_python.as_ref();
    Ok(Json(json!({
        "version": JUPYTERHUB_VERSION,
        "python": python.map(|p| p.version.clone()),
        "sys_executable": python.map(|p| p.executable.clone()),
        "atelier_version": atelier,
        "spawner": {
            "class": format!("atelier.backend.{}", hub.backend.kind()),
            "version": atelier,
        },
        "authenticator": {
            "class": if hub.config.dev_login { "atelier.auth.dev" } else { "atelier.auth.oidc" },
            "version": atelier,
        },
    })))
}

/// `POST /hub/api/shutdown` (`shutdown`): `{"proxy": bool, "servers": bool}`, both optional;
/// 400 for a value that is not a boolean. Answers 202 `{"message": "Shutting down Hub"}`, then,
/// with `servers: true`, stops every active server (waiting for slow stops, up to twice the
/// spawn timeout), and asks the process serving the hub to stop gracefully
/// ([`Hub::shutdown`](crate::hub::Hub::shutdown)).
///
/// `servers` defaults to false: servers outlive the hub (JupyterHub's `cleanup_servers`, which
/// zero-to-jupyterhub sets false too), and a restarted hub adopts them. `proxy` is accepted and
/// has no effect: Atelier's proxies read the database and are not the hub's to stop (`atelier up`
/// stops its in-process proxy with the hub either way).
pub async fn shutdown(
    State(hub): State<HubState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    caller.require("shutdown", Target::Hub)?;
    let (proxy, servers) = match &body {
        Some(body) => {
            let fields = Fields::of("the shutdown request", body)?;
            fields.only(&["proxy", "servers"])?;
            // JupyterHub refuses null too: present means true or false.
            for key in ["proxy", "servers"] {
                if fields.has(key) && fields.value(key).is_none() {
                    return Err(crate::hub::HubError::BadRequest(format!(
                        "field {key:?} of the shutdown request must be true or false, not null"
                    )));
                }
            }
            (fields.opt_bool("proxy")?, fields.opt_bool("servers")?)
        }
        None => (None, None),
    };
    let servers = servers.unwrap_or(false);
    tracing::warn!(
        by = caller.name(),
        servers,
        ?proxy,
        "shutdown requested through the API"
    );
    super::users::audit_admin(
        &hub,
        &caller,
        None,
        json!({"action": "shutdown", "servers": servers, "proxy": proxy}),
    )
    .await;
    let hub_for_task = hub.clone();
    let actor = caller.name().to_owned();
    tokio::spawn(async move {
        if servers {
            stop_all_servers(&hub_for_task, &actor).await;
        }
        hub_for_task.shutdown.send_replace(true);
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": "Shutting down Hub"})),
    ))
}

/// Stops every active server (a page of 200 at a time), then waits until none is stopping, up
/// to twice the spawn timeout (`POST /hub/api/shutdown` and `atelier up --stop-servers-on-exit`).
pub(crate) async fn stop_all_servers(hub: &HubState, actor: &str) {
    let mut pending = stop_active_servers(hub, actor).await;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(hub.config.spawn_timeout_secs.saturating_mul(2));
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for id in pending {
            if let Ok(s) = hub.store.get_server_by_id(id).await
                && s.state.is_active()
            {
                still.push(id);
            }
        }
        pending = still;
    }
    if !pending.is_empty() {
        tracing::warn!(
            servers = pending.len(),
            "servers still stopping at shutdown"
        );
    }
}

/// Stops every active server as `actor`, a page of 200 at a time (a failure is logged and the
/// rest still stopped); the ids of the servers still stopping.
async fn stop_active_servers(hub: &HubState, actor: &str) -> Vec<i64> {
    let mut after = None;
    let mut pending = Vec::new();
    loop {
        let page = match hub
            .store
            .list_servers_in_states(&ServerState::ACTIVE, after, 200)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "listing the servers to stop");
                break;
            }
        };
        let Some(last) = page.last() else { break };
        after = Some(last.server.id);
        for s in &page {
            match spawner::stop_server(hub, &s.user_name, &s.server, Some(actor)).await {
                Ok(StopOutcome::Stopped) => {}
                Ok(StopOutcome::Pending) => pending.push(s.server.id),
                Err(e) => {
                    tracing::warn!(user = %s.user_name, server = %s.server.name, error = %e, "stop failed");
                }
            }
        }
    }
    pending
}
