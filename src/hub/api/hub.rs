//! `GET /hub/api/` (the version, unauthenticated) and `GET /hub/api/info`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::hub::auth::Caller;
use crate::hub::{HubResult, HubState, JUPYTERHUB_VERSION};
use crate::scopes::Target;

/// `GET /hub/api/`: `{"version": …}`, for clients to check the version before authenticating.
pub async fn root() -> Response {
    let mut response = Json(json!({"version": JUPYTERHUB_VERSION})).into_response();
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `GET /hub/api/info` (`read:hub`): version, backend and authenticator.
pub async fn info(State(hub): State<HubState>, caller: Caller) -> HubResult<Json<Value>> {
    caller.require("read:hub", Target::Hub)?;
    let atelier = env!("CARGO_PKG_VERSION");
    Ok(Json(json!({
        "version": JUPYTERHUB_VERSION,
        "python": Value::Null,
        "sys_executable": Value::Null,
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
