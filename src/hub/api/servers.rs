//! Servers: `GET/POST/DELETE /users/{name}/server` and `GET/PUT/POST/PATCH/DELETE
//! /users/{name}/servers/{server}`.
//!
//! Scopes as JupyterHub 6 asks for them: `read:servers` to read, `start:servers` to start, create
//! and modify (the spec names `servers` for `POST /users/{name}/server`; JupyterHub's handler, one
//! for both paths, asks `start:servers`, which `servers` implies), `delete:servers` to stop.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::models::server_model;
use super::{Fields, JsonBody, LoadedUser, check_name, load_user, require_any};
use crate::hub::auth::Caller;
use crate::hub::spawner::{self, StartOptions, StartOutcome, StopOutcome};
use crate::hub::{HubError, HubResult, HubState};
use crate::scopes::Target;
use crate::store::{AuditAction, NewAuditEvent, ServerChanges, ServerState, StoreError};

/// Loads user `name` and checks that the caller holds one of `scopes` on their server
/// `server`: 403 without the scope, 404 for an unknown user.
pub async fn authorized_server(
    hub: &HubState,
    caller: &Caller,
    name: &str,
    server: &str,
    scopes: &[&str],
) -> HubResult<LoadedUser> {
    check_name("server", server)?;
    let loaded = load_user(hub, name).await?;
    let none = BTreeSet::new();
    let target = match &loaded {
        Some(u) => u.server_target(server),
        None => Target::Server {
            user: name,
            server,
            groups: &none,
        },
    };
    require_any(caller, scopes, target)?;
    loaded.ok_or_else(|| HubError::NotFound(format!("No such user: {name}")))
}

fn no_server(user: &str, server: &str) -> HubError {
    HubError::NotFound(format!("{user} has no server named '{server}'"))
}

async fn get(
    hub: HubState,
    caller: Caller,
    name: String,
    server: String,
) -> HubResult<Json<Value>> {
    let user = authorized_server(&hub, &caller, &name, &server, &["read:servers"]).await?;
    let s = user
        .server(&server)
        .ok_or_else(|| no_server(&name, &server))?;
    Ok(Json(server_model(
        &hub,
        &caller,
        &user.detail.user.name,
        &user.groups,
        s,
    )))
}

/// `GET /users/{name}/server`.
pub async fn get_default(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
) -> HubResult<Json<Value>> {
    get(hub, caller, name, String::new()).await
}

/// `GET /users/{name}/servers/{server}`.
pub async fn get_named(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, server)): Path<(String, String)>,
) -> HubResult<Json<Value>> {
    get(hub, caller, name, server).await
}

/// A `ServerRequest` body: `{"display_name", "user_options"}`, or (before JupyterHub 6) the
/// user options themselves. `None` options reuse those of the previous start.
fn server_request(body: Option<Value>) -> HubResult<(Option<String>, Option<Value>)> {
    let Some(body) = body else {
        return Ok((None, None));
    };
    let fields = Fields::of("the server request", &body)?;
    if !fields.has("display_name") && !fields.has("user_options") {
        return Ok((None, Some(body)));
    }
    fields.only(&["display_name", "user_options"])?;
    let display_name = fields.opt_str("display_name")?.map(str::to_owned);
    let options = fields
        .opt_object("user_options")?
        .map(|m| Value::Object(m.clone()));
    Ok((display_name, options))
}

async fn start(
    hub: HubState,
    caller: Caller,
    name: String,
    server: String,
    body: Option<Value>,
) -> HubResult<StatusCode> {
    let user = authorized_server(&hub, &caller, &name, &server, &["start:servers"]).await?;
    let (display_name, user_options) = server_request(body)?;
    let outcome = spawner::start_server(
        &hub,
        &user.detail.user,
        &server,
        StartOptions {
            profile: None,
            user_options,
            display_name,
            actor: Some(caller.name().to_owned()),
        },
    )
    .await?;
    Ok(match outcome {
        StartOutcome::Ready => StatusCode::CREATED,
        StartOutcome::Pending => StatusCode::ACCEPTED,
    })
}

/// `POST /users/{name}/server`: starts the default server (201 ready, 202 pending).
pub async fn start_default(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<StatusCode> {
    start(hub, caller, name, String::new(), body).await
}

/// `POST /users/{name}/servers/{server}`: starts (and creates) a named server.
pub async fn start_named(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, server)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> HubResult<StatusCode> {
    start(hub, caller, name, server, body).await
}

/// `PUT /users/{name}/servers/{server}`: creates a named server without starting it (409 if
/// it exists).
pub async fn create_named(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, server)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    let user = authorized_server(&hub, &caller, &name, &server, &["start:servers"]).await?;
    spawner::check_new_server_name(hub.config.server_name_rule, &server)?;
    if user.server(&server).is_some() {
        return Err(HubError::Conflict(format!(
            "User {name} already has server {server}"
        )));
    }
    let (display_name, user_options) = server_request(body)?;
    let created = hub
        .store
        .create_server(user.detail.user.id, &server)
        .await
        .map_err(|e| HubError::from_store(format!("server {name}/{server}"), e))?;
    let created = if display_name.is_some() || user_options.is_some() {
        hub.store
            .set_server_options(created.id, display_name.as_deref(), user_options.as_ref())
            .await?
    } else {
        created
    };
    Ok((
        StatusCode::CREATED,
        Json(server_model(&hub, &caller, &name, &user.groups, &created)),
    ))
}

/// Python's truth of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

async fn stop(
    hub: HubState,
    caller: Caller,
    name: String,
    server: String,
    body: Option<Value>,
) -> HubResult<StatusCode> {
    let user = authorized_server(&hub, &caller, &name, &server, &["delete:servers"]).await?;
    let remove = match &body {
        Some(body) => {
            let fields = Fields::of("the request body", body)?;
            fields.only(&["remove"])?;
            // JupyterHub 6.1.1 reads `options.get('remove', False)` as Python truth: `{}`, `[]`,
            // `""`, `0` and null keep the server, anything else removes it.
            fields.value("remove").is_some_and(truthy)
        }
        None => false,
    };
    if server.is_empty() && remove {
        return Err(HubError::BadRequest(
            "Cannot delete the default server".into(),
        ));
    }
    let Some(row) = user.server(&server) else {
        if server.is_empty() {
            // A default server never started: nothing to stop.
            return Ok(StatusCode::NO_CONTENT);
        }
        return Err(no_server(&name, &server));
    };
    let outcome = spawner::stop_server(&hub, &name, row, Some(caller.name())).await?;
    if remove {
        match outcome {
            StopOutcome::Stopped => match hub.store.delete_server(row.id).await {
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            },
            StopOutcome::Pending => {
                tokio::spawn(remove_when_stopped(hub.clone(), row.id));
            }
        }
    }
    Ok(match outcome {
        StopOutcome::Stopped => StatusCode::NO_CONTENT,
        StopOutcome::Pending => StatusCode::ACCEPTED,
    })
}

/// Deletes a server once it has stopped (`DELETE … {"remove": true}` on a slow stop).
async fn remove_when_stopped(hub: HubState, id: i64) {
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(hub.config.spawn_timeout_secs.saturating_mul(2) + 60);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match hub.store.get_server_by_id(id).await {
            Ok(s) if matches!(s.state, ServerState::Stopped | ServerState::Failed) => {
                if let Err(e) = hub.store.delete_server(id).await {
                    tracing::warn!(error = %e, "cannot remove a stopped server");
                }
                return;
            }
            Ok(_) => {}
            Err(StoreError::NotFound) => return,
            Err(e) => tracing::warn!(error = %e, "cannot read a stopping server"),
        }
    }
    tracing::warn!(server_id = id, "server did not stop: not removed");
}

/// `DELETE /users/{name}/server`: stops the default server (204 stopped, 202 stopping).
pub async fn stop_default(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<StatusCode> {
    stop(hub, caller, name, String::new(), body).await
}

/// `DELETE /users/{name}/servers/{server}`: stops a named server; `{"remove": true}` deletes it
/// once stopped.
pub async fn stop_named(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, server)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> HubResult<StatusCode> {
    stop(hub, caller, name, server, body).await
}

/// `PATCH /users/{name}/servers/{server}` (`start:servers`, JupyterHub 6): renames a stopped
/// server (`name`) and sets its `display_name` and `user_options`; at least one of them. 404 for
/// no such server, 400 while it is active or for an invalid name, 409 when the user has a server
/// of the new name (compared ignoring case). A rename also needs `start:servers` on the new name
/// (a token limited to `!server=alice/a` cannot move the server out of its reach). Audited;
/// returns the server model.
pub async fn modify(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, server)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> HubResult<Json<Value>> {
    modify_server(hub, caller, name, server, body).await
}

/// `PATCH /users/{name}/servers/` (the default server: display name and options only).
pub async fn modify_default(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<Json<Value>> {
    modify_server(hub, caller, name, String::new(), body).await
}

async fn modify_server(
    hub: HubState,
    caller: Caller,
    name: String,
    server: String,
    body: Option<Value>,
) -> HubResult<Json<Value>> {
    let user = authorized_server(&hub, &caller, &name, &server, &["start:servers"]).await?;
    const ALLOWED: [&str; 3] = ["name", "display_name", "user_options"];
    let body = body.ok_or_else(|| {
        HubError::BadRequest(format!(
            "the server modification needs at least one of {}",
            ALLOWED.join(", ")
        ))
    })?;
    let fields = Fields::of("the server modification", &body)?;
    fields.only(&ALLOWED)?;
    let changes = ServerChanges {
        name: fields.opt_str("name")?.map(str::to_owned),
        display_name: fields.opt_str("display_name")?.map(str::to_owned),
        user_options: fields
            .opt_object("user_options")?
            .map(|m| Value::Object(m.clone())),
    };
    if changes.name.is_none() && changes.display_name.is_none() && changes.user_options.is_none() {
        return Err(HubError::BadRequest(format!(
            "the server modification needs at least one of {}",
            ALLOWED.join(", ")
        )));
    }
    let row = user
        .server(&server)
        .ok_or_else(|| no_server(&name, &server))?;
    let renamed = changes.name.as_deref().filter(|n| *n != server);
    if let Some(new) = renamed {
        if server.is_empty() {
            return Err(HubError::BadRequest(
                "field \"name\": the default server cannot be renamed".into(),
            ));
        }
        spawner::check_new_server_name(hub.config.server_name_rule, new)
            .map_err(|e| HubError::BadRequest(format!("field \"name\": {e}")))?;
        require_any(&caller, &["start:servers"], user.server_target(new))?;
        if user
            .detail
            .servers
            .iter()
            .any(|s| s.id != row.id && s.name.eq_ignore_ascii_case(new))
        {
            return Err(HubError::Conflict(format!(
                "User {name} already has server {new}"
            )));
        }
    }
    if row.state.is_active() {
        return Err(HubError::BadRequest(format!(
            "{name}/{server} is {}: stop it before modifying it",
            row.state.as_str()
        )));
    }
    let changed = hub
        .store
        .modify_server(row.id, &changes)
        .await
        .map_err(|e| HubError::from_store(format!("server {name}/{server}"), e))?;
    let mut detail = serde_json::Map::new();
    detail.insert("action".into(), Value::from("modify_server"));
    if let Some(new) = renamed {
        detail.insert("renamed_from".into(), Value::from(server.as_str()));
        detail.insert("renamed_to".into(), Value::from(new));
    }
    if let Some(d) = &changes.display_name {
        detail.insert("display_name".into(), Value::from(d.as_str()));
    }
    if changes.user_options.is_some() {
        detail.insert("user_options".into(), Value::Bool(true));
    }
    let event = NewAuditEvent {
        action: AuditAction::Admin,
        actor: Some(caller.name().to_owned()),
        target_user: Some(user.detail.user.name.clone()),
        target_server: Some(changed.name.clone()),
        detail: Value::Object(detail),
    };
    hub.audit.record(event).await;
    Ok(Json(server_model(
        &hub,
        &caller,
        &user.detail.user.name,
        &user.groups,
        &changed,
    )))
}
