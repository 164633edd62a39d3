//! API tokens: `GET/POST /users/{name}/tokens`, `GET/DELETE /users/{name}/tokens/{token_id}`.
//!
//! A token's value is returned once, in the creation response; the store keeps only its hash. A
//! token never holds more than its owner (and than the credential that asked for it).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::TimeDelta;
use serde_json::{Value, json};

use super::models::{parse_token_api_id, token_api_id, token_model};
use super::{Fields, JsonBody, LoadedUser, authorized_user};
use crate::hub::auth::Caller;
use crate::hub::{HubError, HubResult, HubState};
use crate::scopes::{ADMIN_ROLE, Scope, ScopeSet};
use crate::store::{self, AuditAction, NewAuditEvent, NewToken, Token, TokenOwner};

fn owner_scopes(user: &LoadedUser) -> ScopeSet {
    ScopeSet::for_user(&user.detail.user.name, user.detail.user.admin)
}

/// `GET /hub/api/users/{name}/tokens` (`read:tokens`): `{"api_tokens": [...]}`, unexpired ones.
pub async fn list(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
) -> HubResult<Json<Value>> {
    let user = authorized_user(&hub, &caller, &name, &["read:tokens"]).await?;
    let now = store::now();
    let mut tokens: Vec<Token> = hub
        .store
        .list_tokens(&TokenOwner::User(user.detail.user.id))
        .await?
        .into_iter()
        .filter(|t| !t.is_expired(now))
        .collect();
    tokens.sort_by_key(|t| (t.last_activity.unwrap_or(t.created), t.id));
    let owner = owner_scopes(&user);
    let models: Vec<Value> = tokens
        .iter()
        .map(|t| token_model(t, &user.detail.user.name, Some(&owner)))
        .collect();
    Ok(Json(json!({"api_tokens": models})))
}

/// The scopes of a deprecated `roles` request.
fn role_scopes(role: &str, user: &str, admin: bool) -> HubResult<Vec<String>> {
    match role {
        "token" | "user" => {
            let mut scopes = vec!["self".to_owned()];
            if admin {
                scopes.extend(ADMIN_ROLE.iter().map(|s| (*s).to_owned()));
            }
            Ok(scopes)
        }
        "server" => Ok(vec![
            format!("users:activity!user={user}"),
            format!("access:servers!user={user}"),
        ]),
        "admin" => Ok(ADMIN_ROLE.iter().map(|s| (*s).to_owned()).collect()),
        other => Err(HubError::BadRequest(format!(
            "role {other:?} does not exist (roles: token, user, server, admin)"
        ))),
    }
}

/// `POST /hub/api/users/{name}/tokens` (`tokens`): creates a token. Body (all optional):
/// `note`, `expires_in` (seconds; 0 or null: never), `scopes` (default: everything the owner
/// holds), deprecated `roles`. 400 names an unknown scope, 403 a scope beyond the owner's or the
/// caller's.
pub async fn create(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    let user = authorized_user(&hub, &caller, &name, &["tokens"]).await?;
    let body = body.unwrap_or_else(|| json!({}));
    let fields = Fields::of("the token request", &body)?;
    fields.only(&["note", "expires_in", "scopes", "roles"])?;
    let owner_name = user.detail.user.name.clone();
    let admin = user.detail.user.admin;
    let note = fields
        .opt_str("note")?
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if caller.name() == owner_name && caller.user().is_some() {
                "Requested via api".to_owned()
            } else {
                format!("Requested via api by {} {}", caller.kind(), caller.name())
            }
        });
    let expires_in = fields.opt_i64("expires_in")?;
    if expires_in.is_some_and(|s| s < 0) {
        return Err(HubError::BadRequest(
            "field \"expires_in\" must be a number of seconds, not negative".into(),
        ));
    }
    let expires_at = expires_in
        .filter(|s| *s > 0)
        .map(|s| {
            TimeDelta::try_seconds(s)
                .and_then(|d| store::now().checked_add_signed(d))
                .ok_or_else(|| HubError::BadRequest("field \"expires_in\" is too large".into()))
        })
        .transpose()?;
    let requested: Option<Vec<String>> = match (
        fields.opt_str_list("scopes")?,
        fields.opt_str_list("roles")?,
    ) {
        (Some(scopes), _) => Some(scopes),
        (None, Some(roles)) if !roles.is_empty() => {
            let mut scopes = Vec::new();
            for role in &roles {
                scopes.extend(role_scopes(role, &owner_name, admin)?);
            }
            Some(scopes)
        }
        _ => None,
    };
    let owner = owner_scopes(&user);
    let scopes = match requested {
        Some(scopes) => {
            for s in &scopes {
                Scope::parse(s).map_err(|e| HubError::BadRequest(e.to_string()))?;
            }
            let set = ScopeSet::parse(&scopes, Some(&owner_name))
                .map_err(|e| HubError::BadRequest(e.to_string()))?;
            let beyond: Vec<String> = set
                .iter()
                .filter(|s| !owner.covers(s) || !caller.scopes.covers(s))
                .map(Scope::to_string)
                .collect();
            if !beyond.is_empty() {
                return Err(HubError::Forbidden(format!(
                    "Not assigning requested scopes {} not held by {} {} (or by the requester)",
                    beyond.join(", "),
                    "user",
                    owner_name
                )));
            }
            scopes
        }
        None => {
            // JupyterHub's `inherit`: everything the owner holds, within the requester's reach.
            let inherit = role_scopes("token", &owner_name, admin)?;
            let set = ScopeSet::parse(&inherit, Some(&owner_name))
                .map_err(|e| HubError::Unexpected(anyhow::anyhow!("inherit scopes: {e}")))?;
            if set.iter().all(|s| caller.scopes.covers(s)) {
                inherit
            } else {
                let within = set.intersect(&caller.scopes);
                if within.is_empty() {
                    return Err(HubError::Forbidden(format!(
                        "the requester holds none of the scopes of {owner_name} to give a token"
                    )));
                }
                within.to_strings()
            }
        }
    };
    let (value, token) = hub
        .store
        .create_token(&NewToken {
            owner: TokenOwner::User(user.detail.user.id),
            scopes: scopes.clone(),
            note: Some(note),
            expires_at,
            oauth_client_id: None,
            session_id: None,
        })
        .await?;
    let event = NewAuditEvent {
        action: AuditAction::TokenCreate,
        actor: Some(caller.name().to_owned()),
        target_user: Some(owner_name.clone()),
        target_server: None,
        detail: json!({"token_id": token_api_id(token.id), "scopes": scopes}),
    };
    if let Err(e) = hub.store.append_audit(&event).await {
        tracing::error!(error = %e, "cannot write audit event");
    }
    let mut model = token_model(&token, &owner_name, Some(&owner));
    model["token"] = Value::String(value);
    Ok((StatusCode::CREATED, Json(model)))
}

/// The user's token `token_id` (`a<id>`); 404 for any other.
async fn find_token(hub: &HubState, user: &LoadedUser, token_id: &str) -> HubResult<Token> {
    let not_found = || {
        HubError::NotFound(format!(
            "No such token {token_id} for user {}",
            user.detail.user.name
        ))
    };
    let id = parse_token_api_id(token_id).ok_or_else(not_found)?;
    match hub.store.get_token(id).await {
        Ok(t) if t.owner == TokenOwner::User(user.detail.user.id) => Ok(t),
        Ok(_) | Err(store::StoreError::NotFound) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /hub/api/users/{name}/tokens/{token_id}` (`read:tokens`).
pub async fn get_one(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, token_id)): Path<(String, String)>,
) -> HubResult<Json<Value>> {
    let user = authorized_user(&hub, &caller, &name, &["read:tokens"]).await?;
    let token = find_token(&hub, &user, &token_id).await?;
    Ok(Json(token_model(
        &token,
        &user.detail.user.name,
        Some(&owner_scopes(&user)),
    )))
}

/// `DELETE /hub/api/users/{name}/tokens/{token_id}` (`tokens`): revokes a token (204).
pub async fn revoke(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, token_id)): Path<(String, String)>,
) -> HubResult<StatusCode> {
    let user = authorized_user(&hub, &caller, &name, &["tokens"]).await?;
    let token = find_token(&hub, &user, &token_id).await?;
    match hub.store.revoke_token(token.id).await {
        Ok(()) | Err(store::StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let event = NewAuditEvent {
        action: AuditAction::TokenRevoke,
        actor: Some(caller.name().to_owned()),
        target_user: Some(user.detail.user.name.clone()),
        target_server: None,
        detail: json!({"token_id": token_id}),
    };
    if let Err(e) = hub.store.append_audit(&event).await {
        tracing::error!(error = %e, "cannot write audit event");
    }
    Ok(StatusCode::NO_CONTENT)
}
