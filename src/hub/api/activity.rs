//! `POST /users/{name}/activity`: what `jupyterhub-singleuser` reports,
//! `{"servers": {"<server>": {"last_activity": ts}}, "last_activity": ts}`. Activity only moves
//! forward: an older timestamp changes nothing.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use serde_json::Value;

use super::{Fields, JsonBody, authorized_user};
use crate::hub::auth::Caller;
use crate::hub::{HubError, HubResult, HubState};
use crate::store;

/// Parses a timestamp (RFC 3339, or without offset meaning UTC, as JupyterHub accepts); 400 when
/// it is not one or is more than an hour ahead.
pub fn parse_timestamp(field: &str, s: &str) -> HubResult<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .map_err(|_| {
            HubError::BadRequest(format!("field {field:?}: not a valid timestamp: {s:?}"))
        })?;
    if parsed - store::now() > TimeDelta::minutes(59) {
        return Err(HubError::BadRequest(format!(
            "field {field:?}: rejecting activity from more than an hour in the future: {s}"
        )));
    }
    Ok(parsed)
}

/// `POST /hub/api/users/{name}/activity` (`users:activity`).
pub async fn post(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<StatusCode> {
    let user = authorized_user(&hub, &caller, &name, &["users:activity"]).await?;
    let body = body.unwrap_or(Value::Null);
    let fields = Fields::of("the activity body", &body)?;
    let last_activity = fields
        .opt_str("last_activity")?
        .map(|s| parse_timestamp("last_activity", s))
        .transpose()?;
    let mut servers = Vec::new();
    if let Some(map) = fields.opt_object("servers")? {
        for (server, info) in map {
            let field = format!("servers.{server}");
            let Some(row) = user.server(server) else {
                return Err(HubError::NotFound(format!(
                    "No such server '{server}' for user {name}"
                )));
            };
            let at = info
                .as_object()
                .and_then(|o| o.get("last_activity"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    HubError::BadRequest(format!(
                        "field {field:?} must be {{\"last_activity\": timestamp}}"
                    ))
                })?;
            servers.push((
                row.id,
                parse_timestamp(&format!("{field}.last_activity"), at)?,
            ));
        }
    }
    if last_activity.is_none() && servers.is_empty() {
        return Err(HubError::BadRequest(
            "body must contain at least one of `last_activity` or `servers`".into(),
        ));
    }
    if let Some(at) = last_activity {
        hub.store
            .touch_user_activity(user.detail.user.id, at)
            .await?;
    }
    for (id, at) in servers {
        hub.store.touch_server_activity(id, at).await?;
    }
    Ok(StatusCode::OK)
}
