//! Users: `GET /user`, `GET/POST /users`, `GET/POST/PATCH/DELETE /users/{name}`.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::models::{UserModel, WhoamiModel, loaded_user_model, token_api_id};
use super::{
    Fields, JsonBody, ListRequest, authorized_user, check_name, check_new_user_name,
    include_stopped, json_response, query_param, reach,
};
use crate::hub::auth::{Caller, Credential, Principal};
use crate::hub::spawner::{self, StopOutcome};
use crate::hub::{HubError, HubResult, HubState};
use crate::scopes::{Filter, Scope, Target};
use crate::store::{
    AuditAction, NewAuditEvent, ServerState, StoreError, UserQuery, UserSort, UserStateFilter,
    UserSubset,
};

/// The scopes that let a caller read a user's model (any one of them).
const READ_USER: &[&str] = &[
    "read:users",
    "read:users:name",
    "read:servers",
    "read:users:groups",
    "read:users:activity",
    "read:roles:users",
];

/// Appends an administrator's action to the audit log.
pub async fn audit_admin(
    hub: &HubState,
    caller: &Caller,
    target_user: Option<&str>,
    detail: Value,
) {
    hub.audit
        .record(NewAuditEvent {
            action: AuditAction::Admin,
            actor: Some(caller.name().to_owned()),
            target_user: target_user.map(str::to_owned),
            target_server: None,
            detail,
        })
        .await;
}

/// `GET /hub/api/user`: the caller (user or service) with the scopes of its credential.
pub async fn whoami(State(hub): State<HubState>, caller: Caller) -> HubResult<Response> {
    let (token_id, session_id) = match &caller.credential {
        Credential::Token { id, session_id } => {
            (Some(token_api_id(*id)), session_id.map(|s| s.to_string()))
        }
        Credential::Session { .. } => (None, None),
    };
    let scopes = caller.scopes.expanded();
    match &caller.principal {
        Principal::User(user) => {
            // As read a moment ago, unless this hub wrote since (`store::recent`): this is what
            // jupyterhub-singleuser asks on the requests it serves.
            let detail = hub
                .store
                .get_recent_user_detail(&user.name)
                .await
                .map_err(|e| HubError::from_store(format!("user {}", user.name), e))?;
            let groups: BTreeSet<String> = detail.groups.iter().cloned().collect();
            // Any credential may identify its owner (JupyterHub's identify scopes): most hold
            // that already, and the caller's set is used as it is.
            let target = Target::User {
                name: &user.name,
                groups: &groups,
            };
            let identify;
            let shown = if caller.scopes.allows("read:users:name", target)
                && caller.scopes.allows("read:users:groups", target)
            {
                &caller.scopes
            } else {
                identify = caller.scopes.clone().with_identify(&user.name);
                &identify
            };
            let model = WhoamiModel {
                user: UserModel::new(&hub, shown, &caller, &detail, &groups, false),
                scopes,
                token_id,
                session_id,
            };
            json_response(&model, 1024)
        }
        Principal::Service(name) => {
            // Any credential may identify its owner (JupyterHub's identify scopes).
            let identify = caller.scopes.clone().with(Scope {
                name: "read:services:name".to_owned(),
                filter: Filter::Service(name.clone()),
            });
            let mut model =
                super::services::service_model(&hub, &identify, name).unwrap_or_else(|| json!({}));
            model["scopes"] = json!(scopes);
            model["token_id"] = json!(token_id);
            model["session_id"] = json!(session_id);
            json_response(&model, 512)
        }
    }
}

/// `GET /hub/api/users`: a page of users, filtered to what the caller may list, to a `state`
/// and to names containing `name_filter` (ignoring case, as JupyterHub's `ILIKE '%…%'`).
///
/// A caller with `list:users` lists everyone; with `list:users!user=…` / `!group=…` only those
/// users. 403 without `list:users`.
pub async fn list(
    State(hub): State<HubState>,
    caller: Caller,
    list: ListRequest,
) -> HubResult<Response> {
    let page = list.page()?;
    let query = &list.query;
    let state = match query_param(query, "state") {
        Some(s) if !s.is_empty() => Some(
            UserStateFilter::parse(&s)
                .ok_or_else(|| HubError::BadRequest(format!("Unrecognized state filter: {s:?}")))?,
        ),
        _ => None,
    };
    let sort = query_param(query, "sort").unwrap_or_else(|| "id".into());
    let (sort, descending) = UserSort::parse(&sort).ok_or_else(|| {
        HubError::BadRequest(format!(
            "sort must be 'id', 'name', or 'last_activity', not '{sort}'"
        ))
    })?;
    // JupyterHub 6.1.1 `UserListAPIHandler.get` needs `list:users` (filtered or not): a user's
    // `self` holds only `read:users!user=me`, so a plain user token gets 403.
    let reach = reach(&caller, "list:users");
    if !reach.all && reach.users.is_empty() && reach.groups.is_empty() {
        return Err(HubError::Forbidden(
            "Action is not authorized with current scopes; requires any of [list:users]".into(),
        ));
    }
    let q = UserQuery {
        state,
        sort,
        descending,
        offset: page.offset,
        after: None,
        limit: page.limit,
        include_stopped_servers: include_stopped(query),
        only: (!reach.all).then(|| UserSubset {
            users: reach.users.into_iter().collect(),
            groups: reach.groups.into_iter().collect(),
        }),
        name_filter: query_param(query, "name_filter").filter(|f| !f.is_empty()),
    };
    let users = hub.store.list_users(&q).await?;
    let groups: Vec<BTreeSet<String>> = users
        .items
        .iter()
        .map(|detail| detail.groups.iter().cloned().collect())
        .collect();
    // Each model is written straight into the answer from the rows (no JSON tree per user).
    let items: Vec<UserModel<'_>> = users
        .items
        .iter()
        .zip(&groups)
        .filter_map(|(detail, groups)| {
            UserModel::new(
                &hub,
                &caller.scopes,
                &caller,
                detail,
                groups,
                q.include_stopped_servers,
            )
        })
        .collect();
    // About 700 bytes a user with one server.
    let size_hint = 512 + 1024 * items.len();
    let listing = list.listing(&page, items, users.total, users.next_offset);
    super::json_response(&listing, size_hint)
}

/// 403 unless the caller is an admin user (only admins make admins).
fn require_admin_user(caller: &Caller) -> HubResult<()> {
    if caller.user().is_some_and(|u| u.admin) {
        Ok(())
    } else {
        Err(HubError::Forbidden(
            "Only admins can grant admin permissions".into(),
        ))
    }
}

/// `POST /hub/api/users` (`admin:users`): creates the users named in `usernames`.
pub async fn create_many(
    State(hub): State<HubState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    caller.require("admin:users", Target::Hub)?;
    let body = body.unwrap_or(Value::Null);
    let fields = Fields::of("the request body", &body)?;
    fields.only(&["usernames", "admin"])?;
    let usernames = fields
        .opt_str_list("usernames")?
        .filter(|names| !names.is_empty())
        .ok_or_else(|| {
            HubError::BadRequest("Must specify at least one user to create in \"usernames\"".into())
        })?;
    let admin = fields.opt_bool("admin")?.unwrap_or(false);
    if admin {
        require_admin_user(&caller)?;
    }
    let invalid: Vec<&str> = usernames
        .iter()
        .filter(|n| check_new_user_name(n).is_err())
        .map(String::as_str)
        .collect();
    if !invalid.is_empty() {
        return Err(HubError::BadRequest(format!(
            "Invalid username{}: {}",
            if invalid.len() == 1 { "" } else { "s" },
            invalid.join(", ")
        )));
    }
    let mut created = Vec::new();
    for name in &usernames {
        match hub.store.create_user(name, admin).await {
            Ok(_) => created.push(name.clone()),
            Err(StoreError::Conflict(m)) => tracing::info!(user = %name, "not created: {m}"),
            Err(e) => return Err(e.into()),
        }
    }
    if created.is_empty() {
        return Err(HubError::Conflict(format!(
            "All {} users already exist",
            usernames.len()
        )));
    }
    audit_admin(
        &hub,
        &caller,
        None,
        json!({"action": "create_users", "users": created, "admin": admin}),
    )
    .await;
    let mut models = Vec::new();
    for name in &created {
        if let Some(user) = super::load_user(&hub, name).await? {
            models.push(loaded_user_model(&hub, &caller, &user, false).unwrap_or(json!({})));
        }
    }
    Ok((StatusCode::CREATED, Json(Value::Array(models))))
}

/// `GET /hub/api/users/{name}`.
pub async fn get_one(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> HubResult<Json<Value>> {
    let user = authorized_user(&hub, &caller, &name, READ_USER).await?;
    Ok(Json(
        loaded_user_model(&hub, &caller, &user, include_stopped(&query)).unwrap_or(json!({})),
    ))
}

/// `POST /hub/api/users/{name}` (`admin:users`): creates one user. 409 if a user of that name,
/// ignoring case, exists.
pub async fn create_one(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    check_name("user", &name)?;
    let none = BTreeSet::new();
    caller.require(
        "admin:users",
        Target::User {
            name: &name,
            groups: &none,
        },
    )?;
    check_new_user_name(&name)?;
    let mut admin = false;
    if let Some(body) = &body {
        let fields = Fields::of("the user model", body)?;
        fields.only(&["admin", "name"])?;
        if let Some(n) = fields.opt_str("name")?
            && n != name
        {
            return Err(HubError::BadRequest(format!(
                "field \"name\" of the user model is {n:?}, not the name in the URL"
            )));
        }
        admin = fields.opt_bool("admin")?.unwrap_or(false);
        if admin {
            require_admin_user(&caller)?;
        }
    }
    match hub.store.create_user(&name, admin).await {
        Ok(_) => {}
        Err(StoreError::Conflict(m)) => {
            return Err(HubError::Conflict(format!(
                "User {name} already exists: {m}"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    audit_admin(
        &hub,
        &caller,
        Some(&name),
        json!({"action": "create_user", "admin": admin}),
    )
    .await;
    let user = authorized_user(&hub, &caller, &name, &["admin:users"]).await?;
    Ok((
        StatusCode::CREATED,
        Json(loaded_user_model(&hub, &caller, &user, false).unwrap_or(json!({}))),
    ))
}

/// `PATCH /hub/api/users/{name}` (`admin:users`): renames a user or changes `admin`.
pub async fn modify(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<Json<Value>> {
    let user = authorized_user(&hub, &caller, &name, &["admin:users"]).await?;
    let body = body.unwrap_or(Value::Null);
    let fields = Fields::of("the user model", &body)?;
    fields.only(&["name", "admin"])?;
    let new_name = fields.opt_str("name")?.filter(|n| *n != name);
    let admin = fields.opt_bool("admin")?;
    if new_name.is_none() && admin.is_none() {
        return Err(HubError::BadRequest(
            "Must specify \"name\" or \"admin\" to modify".into(),
        ));
    }
    if !caller.user().is_some_and(|u| u.admin) {
        if user.detail.user.admin {
            return Err(HubError::Forbidden(
                "Only admins can modify other admins".into(),
            ));
        }
        if admin == Some(true) {
            return Err(HubError::Forbidden(
                "Only admins can grant admin permissions".into(),
            ));
        }
    }
    let mut current = name.clone();
    if let Some(new_name) = new_name {
        check_new_user_name(new_name)?;
        match hub.store.rename_user(&name, new_name).await {
            Ok(_) => current = new_name.to_owned(),
            Err(StoreError::Conflict(_)) => {
                return Err(HubError::BadRequest(format!(
                    "User {new_name} already exists, username must be unique"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(admin) = admin {
        hub.store.set_user_admin(&current, admin).await?;
    }
    audit_admin(
        &hub,
        &caller,
        Some(&name),
        json!({"action": "modify_user", "name": current, "admin": admin}),
    )
    .await;
    let user = super::load_user(&hub, &current)
        .await?
        .ok_or_else(|| HubError::NotFound(format!("No such user: {current}")))?;
    Ok(Json(
        loaded_user_model(&hub, &caller, &user, false).unwrap_or(json!({})),
    ))
}

/// `DELETE /hub/api/users/{name}` (`delete:users`, which `admin:users` implies): stops the user's servers, then deletes the
/// user with everything they own. 400 while a server is still stopping.
pub async fn remove(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
) -> HubResult<StatusCode> {
    let user = authorized_user(&hub, &caller, &name, &["delete:users"]).await?;
    if caller.user().is_some_and(|u| u.name == name) {
        return Err(HubError::BadRequest("Cannot delete yourself!".into()));
    }
    let mut pending = false;
    for server in &user.detail.servers {
        if server.state == ServerState::Stopping {
            pending = true;
        } else if server.state.is_active() {
            let outcome = spawner::stop_server(&hub, &name, server, Some(caller.name())).await?;
            pending |= outcome == StopOutcome::Pending;
        }
    }
    if pending {
        return Err(HubError::BadRequest(format!(
            "{name}'s server is in the process of stopping, please wait."
        )));
    }
    match hub.store.delete_user(&name).await {
        Ok(()) | Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    audit_admin(&hub, &caller, Some(&name), json!({"action": "delete_user"})).await;
    Ok(StatusCode::NO_CONTENT)
}
