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
use crate::scopes::{Holder, Scope, ScopeSet, resolve_bare};
use crate::store::{self, AuditAction, NewAuditEvent, NewToken, Token, TokenOwner};

/// The scopes the user's roles and their groups' roles give them.
fn owner_scopes(hub: &HubState, user: &LoadedUser) -> ScopeSet {
    let u = &user.detail.user;
    hub.config.roles.user_scopes(&u.name, u.admin, &user.groups)
}

/// The raw scopes of the user's roles (a token's `inherit`; `self` stays `self`).
fn owner_raw_scopes(hub: &HubState, user: &LoadedUser) -> Vec<String> {
    let u = &user.detail.user;
    hub.config
        .roles
        .user_raw_scopes(&u.name, u.admin, &user.groups)
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
    let owner = owner_scopes(&hub, &user);
    let models: Vec<Value> = tokens
        .iter()
        .map(|t| token_model(t, &user.detail.user.name, Some(&owner)))
        .collect();
    Ok(Json(json!({"api_tokens": models})))
}

/// The scopes of a deprecated `roles` request (JupyterHub's `APIToken.new`: each role's raw
/// scopes, `token`'s `inherit` being everything the owner holds). 400 for no such role.
fn role_scopes(hub: &HubState, user: &LoadedUser, roles: &[String]) -> HubResult<Vec<String>> {
    let mut raw = Vec::new();
    for name in roles {
        let role = hub
            .config
            .roles
            .get(name)
            .ok_or_else(|| HubError::BadRequest(format!("No such role: {name}")))?;
        raw.extend(role.scopes.iter().cloned());
    }
    if raw.iter().any(|s| s == "inherit") {
        return Ok(owner_raw_scopes(hub, user));
    }
    Ok(resolve_bare(&raw, Holder::User(&user.detail.user.name)))
}

/// `POST /hub/api/users/{name}/tokens` (`tokens`): creates a token. Body (all optional):
/// `note`, `expires_in` (seconds; 0 or null: never), `scopes` (default: everything the owner
/// holds), deprecated `roles` (not both: 400). 400 names an unknown scope or role and a scope
/// beyond the owner's (JupyterHub's `_check_token_scopes` ValueError); 403 a scope beyond the
/// caller's (JupyterHub does not check the requester's scopes: Atelier does, so that a token
/// with `tokens!user=alice` cannot mint alice a token wider than itself).
pub async fn create(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    // JupyterHub 6.1.1 `UserTokenListAPIHandler.post`: one 403 for no such user and for no
    // `tokens` on them.
    let user = super::load_user(&hub, &name)
        .await?
        .filter(|u| caller.scopes.allows("tokens", u.target()))
        .ok_or_else(|| {
            HubError::Forbidden(format!(
                "User {name} not found or no permissions to generate tokens"
            ))
        })?;
    let body = body.unwrap_or_else(|| json!({}));
    let fields = Fields::of("the token request", &body)?;
    fields.only(&["note", "expires_in", "scopes", "roles"])?;
    let owner_name = user.detail.user.name.clone();
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
        // JupyterHub 6.1.1 `orm.APIToken.new`: "Can only assign one of scopes or roles".
        (Some(_), Some(_)) => {
            return Err(HubError::BadRequest(
                "Can only assign one of scopes or roles when creating tokens.".into(),
            ));
        }
        (Some(scopes), None) => Some(scopes),
        (None, Some(roles)) => Some(role_scopes(&hub, &user, &roles)?),
        (None, None) => None,
    };
    let owner = owner_scopes(&hub, &user);
    let scopes = match requested {
        Some(scopes) if scopes.iter().any(|s| s == "inherit") => {
            inherited(&caller, owner_raw_scopes(&hub, &user), &owner_name)?
        }
        Some(scopes) => {
            for s in &scopes {
                Scope::parse(s).map_err(|e| HubError::BadRequest(e.to_string()))?;
            }
            let set = ScopeSet::parse(&scopes, Some(&owner_name))
                .map_err(|e| HubError::BadRequest(e.to_string()))?;
            let beyond = |held: &ScopeSet| -> Vec<String> {
                set.iter()
                    .filter(|s| !held.covers(s))
                    .map(Scope::to_string)
                    .collect()
            };
            let not_owners = beyond(&owner);
            if !not_owners.is_empty() {
                return Err(HubError::BadRequest(format!(
                    "Not assigning requested scopes {} not held by User {owner_name}",
                    not_owners.join(","),
                )));
            }
            let not_callers = beyond(&caller.scopes);
            if !not_callers.is_empty() {
                return Err(HubError::Forbidden(format!(
                    "Not assigning requested scopes {} not held by the requester {} {}",
                    not_callers.join(","),
                    caller.kind(),
                    caller.name()
                )));
            }
            scopes
        }
        None => inherited(&caller, owner_raw_scopes(&hub, &user), &owner_name)?,
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
    hub.audit.record(event).await;
    let mut model = token_model(&token, &owner_name, Some(&owner));
    model["token"] = Value::String(value);
    Ok((StatusCode::CREATED, Json(model)))
}

/// JupyterHub's `inherit`: everything the owner holds, within the requester's reach.
fn inherited(caller: &Caller, inherit: Vec<String>, owner_name: &str) -> HubResult<Vec<String>> {
    let set = ScopeSet::parse(&inherit, Some(owner_name))
        .map_err(|e| HubError::Unexpected(anyhow::anyhow!("inherit scopes: {e}")))?;
    if set.iter().all(|s| caller.scopes.covers(s)) {
        return Ok(inherit);
    }
    let within = set.intersect(&caller.scopes);
    if within.is_empty() {
        return Err(HubError::Forbidden(format!(
            "the requester holds none of the scopes of {owner_name} to give a token"
        )));
    }
    Ok(within.to_strings())
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
        Some(&owner_scopes(&hub, &user)),
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
    hub.audit.record(event).await;
    Ok(StatusCode::NO_CONTENT)
}
