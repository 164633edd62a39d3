//! The proxy: `GET /hub/api/proxy` (the routing table) and `POST /hub/api/proxy` (sync), scope
//! `proxy`.
//!
//! Atelier's proxies have no routing table of their own to push to or read from: they look each
//! request's server up in the database (`proxy::routes::StoreRoutes`). The table is therefore
//! built from the running servers in the store, in the shape JupyterHub returns
//! configurable-http-proxy's routes: `{routespec: {"routespec", "target", "data": {"user",
//! "server_name", "last_activity"}}}`, plus the hub's own route `/` (`data: {"hub": true}`).
//! `POST` (JupyterHub's "sync the proxy with the database") has nothing to do and answers 200.
//! `PATCH` (notify the hub of a new proxy) is not offered: there is no proxy API to point at.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::ListRequest;
use super::models::iso;
use crate::hub::auth::Caller;
use crate::hub::{HubResult, HubState};
use crate::policy::names::server_url;
use crate::scopes::Target;

/// The hub's own URL as the proxy forwards to it (the server API URL without `/hub/api`).
fn hub_target(server_api_url: &str) -> String {
    server_api_url
        .trim_end_matches('/')
        .trim_end_matches("/hub/api")
        .to_owned()
}

/// `GET /hub/api/proxy`: a page of routes, keyed by routespec (`/` first, then the servers by
/// owner and server name). Paginated as JupyterHub paginates it: a bare object without
/// `Accept: application/jupyterhub-pagination+json`, else `{"items": {...}, "_pagination"}`.
/// Two statements per page whatever the number of users.
pub async fn get_routes(
    State(hub): State<HubState>,
    caller: Caller,
    list: ListRequest,
) -> HubResult<Json<Value>> {
    caller.require("proxy", Target::Hub)?;
    let page = list.page()?;
    let mut routes = Map::new();
    let limit = u64::from(page.limit);
    // The hub's route is number 0; the servers follow.
    let mut want = limit;
    let server_offset = if page.offset == 0 {
        let target = hub_target(&hub.config.server_api_url);
        routes.insert(
            "/".into(),
            json!({"routespec": "/", "target": target, "data": {"hub": true}}),
        );
        want -= 1;
        0
    } else {
        page.offset - 1
    };
    let total;
    if want > 0 {
        let running = hub
            .store
            .running_servers_page(server_offset, want as u32)
            .await?;
        total = running.total + 1;
        for s in &running.items {
            let spec = server_url(&s.user_name, &s.server.name);
            routes.insert(
                spec.clone(),
                json!({
                    "routespec": spec,
                    "target": s.server.url,
                    "data": {
                        "user": s.user_name,
                        "server_name": s.server.name,
                        "last_activity": iso(s.server.last_activity),
                    },
                }),
            );
        }
    } else {
        total = hub.store.running_servers_page(0, 1).await?.total + 1;
    }
    let shown = routes.len() as u64;
    let next = (page.offset + shown < total).then_some(page.offset + shown);
    let items = Value::Object(routes);
    if !page.paginated {
        return Ok(Json(items));
    }
    let mut body = list.respond(&page, Vec::new(), total, next);
    body["items"] = items;
    Ok(Json(body))
}

/// `POST /hub/api/proxy`: JupyterHub pushes its routes to the proxy; Atelier's proxies read the
/// database on each request, so they are always in sync. 200, empty.
pub async fn sync(caller: Caller) -> HubResult<StatusCode> {
    caller.require("proxy", Target::Hub)?;
    Ok(StatusCode::OK)
}
