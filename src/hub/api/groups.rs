//! Groups: `GET/POST /groups`, `GET/POST/DELETE /groups/{name}`,
//! `POST/DELETE /groups/{name}/users`, `PUT /groups/{name}/properties`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::models::group_model;
use super::users::audit_admin;
use super::{Fields, JsonBody, ListRequest, reach, require_any};
use crate::hub::auth::Caller;
use crate::hub::{HubError, HubResult, HubState};
use crate::scopes::Target;
use crate::store::{GroupDetail, StoreError};

fn check_group_name(name: &str) -> HubResult<()> {
    if name.is_empty() || name.len() > crate::store::MAX_NAME_LEN {
        return Err(HubError::BadRequest(format!(
            "group name must have 1 to {} characters",
            crate::store::MAX_NAME_LEN
        )));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(HubError::BadRequest(format!(
            "invalid group name {name:?}: no '/' or control characters"
        )));
    }
    Ok(())
}

async fn load_group(hub: &HubState, name: &str) -> HubResult<GroupDetail> {
    hub.store.get_group(name).await.map_err(|e| match e {
        StoreError::NotFound => HubError::NotFound(format!("No such group: {name}")),
        other => other.into(),
    })
}

/// 403 unless the caller holds one of `scopes` on group `name`; 400 for a name no group has.
fn authorize(caller: &Caller, name: &str, scopes: &[&str]) -> HubResult<()> {
    check_group_name(name)?;
    require_any(caller, scopes, Target::Group(name))
}

fn model(hub: &HubState, caller: &Caller, group: &GroupDetail) -> Value {
    group_model(hub, caller, group).unwrap_or_else(|| json!({}))
}

/// `GET /hub/api/groups` (`list:groups`): a page of groups, sorted by name.
pub async fn list(
    State(hub): State<HubState>,
    caller: Caller,
    list: ListRequest,
) -> HubResult<Json<Value>> {
    let page = list.page()?;
    let reach = reach(&caller, "list:groups");
    let (items, total, next) = if reach.all {
        let groups = hub.store.list_groups(page.offset, page.limit).await?;
        let items = groups
            .items
            .iter()
            .filter_map(|g| group_model(&hub, &caller, g))
            .collect();
        (items, groups.total, groups.next_offset)
    } else if !reach.groups.is_empty() {
        // `list:groups!group=…`: the named groups (as many statements as the scope names).
        let mut found = Vec::new();
        for name in &reach.groups {
            match hub.store.get_group(name).await {
                Ok(g) => found.push(g),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let total = found.len() as u64;
        let start = usize::try_from(page.offset).unwrap_or(usize::MAX);
        let items: Vec<Value> = found
            .iter()
            .skip(start)
            .take(page.limit as usize)
            .filter_map(|g| group_model(&hub, &caller, g))
            .collect();
        let end = page.offset + page.limit as u64;
        (items, total, (end < total).then_some(end))
    } else {
        return Err(HubError::Forbidden(
            "Action is not authorized with current scopes; requires any of [list:groups]".into(),
        ));
    };
    Ok(Json(list.respond(&page, items, total, next)))
}

/// The `users` of a group request: every name must be a user (400 naming the first that is
/// not).
async fn existing_users(hub: &HubState, names: &[String]) -> HubResult<()> {
    for name in names {
        match hub.store.get_user(name).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                return Err(HubError::BadRequest(format!("No such user: {name}")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates group `name` with `users` (which must exist) and `properties`.
async fn create(
    hub: &HubState,
    name: &str,
    users: &[String],
    properties: &Value,
) -> HubResult<GroupDetail> {
    check_group_name(name)?;
    existing_users(hub, users).await?;
    match hub.store.create_group(name, properties).await {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(HubError::Conflict(format!("Group {name} already exists")));
        }
        Err(e) => return Err(e.into()),
    }
    if !users.is_empty()
        && let Err(e) = hub.store.add_group_members(name, users).await
    {
        // A user went away meanwhile: no half-made group.
        let _ = hub.store.delete_group(name).await;
        return Err(match e {
            StoreError::NotFound => HubError::BadRequest("No such user in \"users\"".into()),
            other => other.into(),
        });
    }
    load_group(hub, name).await
}

/// `POST /hub/api/groups` (`admin:groups`): `{"groups": [...], "users": [...]}` creates groups.
pub async fn create_many(
    State(hub): State<HubState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    caller.require("admin:groups", Target::Hub)?;
    let body = body.unwrap_or(Value::Null);
    let fields = Fields::of("the request body", &body)?;
    fields.only(&["groups", "users"])?;
    let names = fields
        .opt_str_list("groups")?
        .filter(|g| !g.is_empty())
        .ok_or_else(|| {
            HubError::BadRequest("Must specify at least one group to create in \"groups\"".into())
        })?;
    let users = fields.opt_str_list("users")?.unwrap_or_default();
    for name in &names {
        check_group_name(name)?;
    }
    let mut created = Vec::new();
    for name in &names {
        created.push(create(&hub, name, &users, &json!({})).await?);
    }
    audit_admin(
        &hub,
        &caller,
        None,
        json!({"action": "create_groups", "groups": names, "users": users}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(Value::Array(
            created.iter().map(|g| model(&hub, &caller, g)).collect(),
        )),
    ))
}

/// `GET /hub/api/groups/{name}` (`read:groups` or `read:groups:name`).
pub async fn get_one(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
) -> HubResult<Json<Value>> {
    authorize(&caller, &name, &["read:groups", "read:groups:name"])?;
    let group = load_group(&hub, &name).await?;
    Ok(Json(model(&hub, &caller, &group)))
}

/// `POST /hub/api/groups/{name}` (`admin:groups`): creates a group, with `users` and
/// `properties` from the optional body. 409 if it exists.
pub async fn create_one(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    authorize(&caller, &name, &["admin:groups"])?;
    let body = body.unwrap_or_else(|| json!({}));
    let fields = Fields::of("the group model", &body)?;
    fields.only(&["users", "properties", "name"])?;
    let users = fields.opt_str_list("users")?.unwrap_or_default();
    let properties = fields
        .opt_object("properties")?
        .map(|m| Value::Object(m.clone()))
        .unwrap_or_else(|| json!({}));
    let group = create(&hub, &name, &users, &properties).await?;
    audit_admin(
        &hub,
        &caller,
        None,
        json!({"action": "create_group", "group": name, "users": users}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(model(&hub, &caller, &group))))
}

/// `DELETE /hub/api/groups/{name}` (`delete:groups`, which `admin:groups` implies).
pub async fn remove(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
) -> HubResult<StatusCode> {
    authorize(&caller, &name, &["delete:groups"])?;
    hub.store.delete_group(&name).await.map_err(|e| match e {
        StoreError::NotFound => HubError::NotFound(format!("No such group: {name}")),
        other => other.into(),
    })?;
    audit_admin(
        &hub,
        &caller,
        None,
        json!({"action": "delete_group", "group": name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The `users` list of a membership request.
fn users_of(body: Option<Value>, verb: &str) -> HubResult<Vec<String>> {
    let body = body.unwrap_or(Value::Null);
    let fields = Fields::of("the request body", &body)?;
    fields.only(&["users"])?;
    fields
        .opt_str_list("users")?
        .ok_or_else(|| HubError::BadRequest(format!("Must specify \"users\" to {verb}")))
}

/// Audits the change `action` of group `name`'s members (`users`); the group's model now.
async fn members_changed(
    hub: &HubState,
    caller: &Caller,
    action: &str,
    name: &str,
    users: &[String],
) -> HubResult<Json<Value>> {
    audit_admin(
        hub,
        caller,
        None,
        json!({"action": action, "group": name, "users": users}),
    )
    .await;
    Ok(Json(model(hub, caller, &load_group(hub, name).await?)))
}

/// `POST /hub/api/groups/{name}/users` (`groups`): adds members.
pub async fn add_users(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<Json<Value>> {
    authorize(&caller, &name, &["groups"])?;
    load_group(&hub, &name).await?;
    let users = users_of(body, "add")?;
    existing_users(&hub, &users).await?;
    hub.store
        .add_group_members(&name, &users)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => HubError::BadRequest("No such user in \"users\"".into()),
            other => other.into(),
        })?;
    members_changed(&hub, &caller, "add_group_members", &name, &users).await
}

/// `DELETE /hub/api/groups/{name}/users` (`groups`): removes members.
pub async fn remove_users(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<Json<Value>> {
    authorize(&caller, &name, &["groups"])?;
    let group = load_group(&hub, &name).await?;
    let users = users_of(body, "delete")?;
    let strangers: Vec<String> = users
        .iter()
        .filter(|u| !group.users.contains(u))
        .cloned()
        .collect();
    existing_users(&hub, &strangers).await?;
    hub.store.remove_group_members(&name, &users).await?;
    members_changed(&hub, &caller, "remove_group_members", &name, &users).await
}

/// `PUT /hub/api/groups/{name}/properties` (`groups`): replaces the properties (a JSON object).
pub async fn set_properties(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<Json<Value>> {
    authorize(&caller, &name, &["groups"])?;
    let properties = match body {
        Some(v @ Value::Object(_)) => v,
        _ => {
            return Err(HubError::BadRequest(
                "Must specify properties as a JSON object".into(),
            ));
        }
    };
    hub.store
        .set_group_properties(&name, &properties)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => HubError::NotFound(format!("No such group: {name}")),
            other => other.into(),
        })?;
    audit_admin(
        &hub,
        &caller,
        None,
        json!({"action": "set_group_properties", "group": name}),
    )
    .await;
    Ok(Json(model(&hub, &caller, &load_group(&hub, &name).await?)))
}
