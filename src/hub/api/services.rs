//! Services: `GET /hub/api/services` and `GET /hub/api/services/{name}`, from the hub's
//! configured services ([`HubConfig::services`](crate::hub::HubConfig::services)).
//!
//! As JupyterHub answers (its spec says a list; its handler, which clients follow, writes an
//! object keyed by service name). The list needs `list:services` or `read:services` (the spec's
//! name) on at least one service and shows the services they reach; one service needs
//! `read:services`, `read:services:name` or `read:roles:services` on it, and its model shows what
//! they reveal (JupyterHub's access map: names only with `read:services:name`).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Map, Value, json};

use super::require_any;
use crate::hub::auth::Caller;
use crate::hub::{HubError, HubResult, HubState, ServiceConfig};
use crate::scopes::Target;

/// The scopes that let a caller read (part of) a service's model.
const READ_SERVICE: &[&str] = &["read:services", "read:services:name", "read:roles:services"];

/// JupyterHub's service model as the caller may see it; `None` when it may see nothing.
/// Atelier's services are API-only: no URL, prefix, command or process.
fn service_model(caller: &Caller, service: &ServiceConfig) -> Option<Value> {
    let target = Target::Service(&service.name);
    let full = json!({
        "kind": "service",
        "name": service.name,
        "admin": false,
        "roles": [],
        "url": "",
        "prefix": "",
        "command": [],
        "pid": 0,
        "info": {},
        "display": false,
    });
    let keys: &[&str] = if caller.scopes.allows("read:services", target) {
        &[
            "kind", "name", "admin", "roles", "url", "prefix", "command", "pid", "info", "display",
        ]
    } else if caller.scopes.allows("read:roles:services", target) {
        &["kind", "name", "admin", "roles"]
    } else if caller.scopes.allows("read:services:name", target) {
        &["kind", "name"]
    } else {
        return None;
    };
    let mut model = Map::new();
    for key in keys {
        model.insert((*key).to_owned(), full[*key].clone());
    }
    Some(Value::Object(model))
}

/// `GET /hub/api/services` (`list:services` or `read:services`): `{name: model}` for the
/// services the caller reaches, by name; 403 if it reaches none by any such scope.
pub async fn list(State(hub): State<HubState>, caller: Caller) -> HubResult<Json<Value>> {
    if !caller.scopes.has_any("list:services") && !caller.scopes.has_any("read:services") {
        return Err(HubError::Forbidden(
            "Action is not authorized with current scopes; requires any of [list:services, \
             read:services]"
                .into(),
        ));
    }
    let mut services: Vec<&ServiceConfig> = hub.config.services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Map::new();
    for service in services {
        let target = Target::Service(&service.name);
        if !(caller.scopes.allows("list:services", target)
            || caller.scopes.allows("read:services", target))
        {
            continue;
        }
        if let Some(model) = service_model(&caller, service) {
            out.insert(service.name.clone(), model);
        }
    }
    Ok(Json(Value::Object(out)))
}

/// `GET /hub/api/services/{name}` (`read:services`): 403 without the scope on that service
/// (whether or not it exists), 404 for no such service.
pub async fn get_one(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
) -> HubResult<Json<Value>> {
    require_any(&caller, READ_SERVICE, Target::Service(&name))?;
    let service = hub
        .config
        .services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| HubError::NotFound(format!("No such service: {name}")))?;
    Ok(Json(service_model(&caller, service).unwrap_or(json!({}))))
}
