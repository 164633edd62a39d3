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
use crate::hub::{Hub, HubError, HubResult, HubState, ServiceConfig};
use crate::proxy::SERVICES_PREFIX;
use crate::scopes::{ScopeSet, Target, role_names};

/// The scopes that let a caller read (part of) a service's model.
const READ_SERVICE: &[&str] = &["read:services", "read:services:name", "read:roles:services"];

/// JupyterHub 6.1.1's service model (`apihandlers/base.py` `service_model`) of service `name`
/// as `scopes` may see it; `None` when they reveal nothing. Atelier runs no service itself, as
/// a JupyterHub service without `command`: `command` is empty, `pid` 0, `info` empty. A service
/// with a URL has it as `url` and `/services/<name>/` as `prefix` (where the proxy serves it);
/// without one both are empty. `display` is false: the hub's pages list no services.
pub fn service_model(hub: &Hub, scopes: &ScopeSet, name: &str) -> Option<Value> {
    let target = Target::Service(name);
    let url = hub
        .config
        .services
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.url.as_deref());
    let prefix = url.map_or(String::new(), |_| format!("{SERVICES_PREFIX}{name}/"));
    let full = json!({
        "kind": "service",
        "name": name,
        "admin": false,
        "roles": role_names(&hub.config.roles.of_service(name)),
        "url": url.unwrap_or(""),
        "prefix": prefix,
        "command": [],
        "pid": 0,
        "info": {},
        "display": false,
    });
    let access: &[(&str, &[&str])] = &[
        (
            "read:services",
            &[
                "kind", "name", "admin", "url", "prefix", "command", "pid", "info", "display",
            ],
        ),
        ("read:services:name", &["kind", "name", "admin"]),
        ("read:roles:services", &["kind", "name", "roles", "admin"]),
    ];
    let mut model = Map::new();
    for (scope, keys) in access {
        if scopes.allows(scope, target) {
            for key in *keys {
                model.insert((*key).to_owned(), full[*key].clone());
            }
        }
    }
    (!model.is_empty()).then_some(Value::Object(model))
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
        if let Some(model) = service_model(&hub, &caller.scopes, &service.name) {
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
    Ok(Json(
        service_model(&hub, &caller.scopes, &service.name).unwrap_or(json!({})),
    ))
}
