//! `/hub/admin`: users with their groups and servers, a page at a time; add and delete users,
//! grant and take back admin, stop servers (through `/hub/stop/...`). Admins only; every action
//! is audit-logged.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Page, PageError, hub_path, see_other, server_url, url_encode};
use crate::hub::HubState;
use crate::hub::auth::login::normalize_username;
use crate::hub::auth::session::safe_next;
use crate::hub::auth::session::{CsrfForm, LoggedIn};
use crate::hub::spawner;
use crate::scopes::{ScopeSet, Target};
use crate::store::{AuditAction, NewAuditEvent, StoreError, User, UserQuery, UserSort};

/// Users per page.
const PAGE_SIZE: u32 = 50;

fn require(user: &User, scope: &str) -> Result<(), PageError> {
    if ScopeSet::for_user(&user.name, user.admin).allows(scope, Target::Hub) {
        Ok(())
    } else {
        Err(PageError::forbidden(
            "Only administrators may use the admin page.",
        ))
    }
}

/// `?offset=` of the admin page.
#[derive(Deserialize)]
pub struct AdminQuery {
    #[serde(default)]
    offset: u64,
}

#[derive(Serialize)]
struct ServerRow {
    label: String,
    state: &'static str,
    active: bool,
    url: String,
    stop_url: String,
    profile: Option<String>,
}

#[derive(Serialize)]
struct UserRow {
    name: String,
    admin: bool,
    is_me: bool,
    groups: Vec<String>,
    servers: Vec<ServerRow>,
    created: String,
    last_activity: String,
    admin_url: String,
    delete_url: String,
}

/// `GET /hub/admin[?offset=]`.
pub async fn page(
    State(hub): State<HubState>,
    me: LoggedIn,
    query: Result<Query<AdminQuery>, QueryRejection>,
) -> Result<Page, PageError> {
    require(&me.user, "admin-ui")?;
    let offset = query.map(|Query(q)| q.offset).unwrap_or(0);
    let page = hub
        .store
        .list_users(&UserQuery {
            sort: UserSort::Name,
            offset,
            limit: PAGE_SIZE,
            include_stopped_servers: true,
            ..UserQuery::default()
        })
        .await
        .map_err(PageError::unexpected)?;
    let users: Vec<UserRow> = page
        .items
        .iter()
        .map(|detail| {
            let name = &detail.user.name;
            UserRow {
                name: name.clone(),
                admin: detail.user.admin,
                is_me: detail.user.id == me.user.id,
                groups: detail.groups.clone(),
                servers: detail
                    .servers
                    .iter()
                    .map(|s| ServerRow {
                        label: if s.name.is_empty() {
                            "default".to_owned()
                        } else {
                            s.name.clone()
                        },
                        state: s.state.as_str(),
                        active: s.state.is_active(),
                        url: server_url(name, &s.name),
                        stop_url: hub_path("/hub/stop", name, &s.name),
                        profile: s.profile.clone(),
                    })
                    .collect(),
                created: detail.user.created.format("%Y-%m-%d").to_string(),
                last_activity: detail
                    .user
                    .last_activity
                    .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_else(|| "never".to_owned()),
                admin_url: format!("/hub/admin/users/{}/admin", url_encode(name)),
                delete_url: format!("/hub/admin/users/{}/delete", url_encode(name)),
            }
        })
        .collect();
    let here = format!("/hub/admin?offset={offset}");
    let previous = (offset > 0).then(|| {
        format!(
            "/hub/admin?offset={}",
            offset.saturating_sub(u64::from(PAGE_SIZE))
        )
    });
    let next = page.next_offset.map(|n| format!("/hub/admin?offset={n}"));
    let last = (offset + page.items.len() as u64).min(page.total);
    Ok(Page::new("admin.html")
        .user(&me.user, &me.session)
        .insert("users", &users)
        .insert("total", &page.total)
        .insert(
            "first",
            &(if page.items.is_empty() { 0 } else { offset + 1 }),
        )
        .insert("last", &last)
        .insert("previous", &previous)
        .insert("next", &next)
        .insert("here", &here)
        .insert("hidden_profiles", &spawner::hidden_profiles(&hub)))
}

async fn audit(hub: &HubState, me: &User, target: &str, detail: serde_json::Value) {
    let mut event = NewAuditEvent::new(AuditAction::Admin);
    event.actor = Some(me.name.clone());
    event.target_user = Some(target.to_owned());
    event.detail = detail;
    hub.audit.record(event).await;
}

fn back(next: &str) -> Response {
    see_other(safe_next(next).as_deref().unwrap_or("/hub/admin"))
}

/// The add-user form.
#[derive(Deserialize)]
pub struct AddUserForm {
    #[serde(default)]
    name: String,
    /// A checkbox: present ("on") when checked.
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    next: String,
}

/// `POST /hub/admin/users`: adds a user.
pub async fn add_user(
    State(hub): State<HubState>,
    form: CsrfForm<AddUserForm>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    require(&me.user, "admin:users")?;
    let name = normalize_username(&form.form.name).map_err(PageError::bad_request)?;
    let admin = form.form.admin.is_some();
    let user = hub
        .store
        .create_user(&name, admin)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => PageError::conflict(format!("User {name} already exists.")),
            e => PageError::from_store(format_args!("user {name}"), e),
        })?;
    audit(
        &hub,
        &me.user,
        &user.name,
        json!({"action": "create_user", "admin": admin}),
    )
    .await;
    Ok(back(&form.form.next))
}

/// The admin-flag form.
#[derive(Deserialize)]
pub struct SetAdminForm {
    /// `true` or `false`.
    #[serde(default)]
    admin: String,
    #[serde(default)]
    next: String,
}

/// `POST /hub/admin/users/{name}/admin`: grants or takes back admin.
pub async fn set_admin(
    State(hub): State<HubState>,
    Path(name): Path<String>,
    form: CsrfForm<SetAdminForm>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    require(&me.user, "admin:users")?;
    let admin = match form.form.admin.as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(PageError::bad_request("admin must be true or false.")),
    };
    if name == me.user.name && !admin {
        return Err(PageError::conflict(
            "You cannot take back your own admin rights; ask another administrator.",
        ));
    }
    hub.store
        .set_user_admin(&name, admin)
        .await
        .map_err(|e| PageError::from_store(format_args!("user {name}"), e))?;
    audit(
        &hub,
        &me.user,
        &name,
        json!({"action": "set_admin", "admin": admin}),
    )
    .await;
    Ok(back(&form.form.next))
}

/// The delete form.
#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    next: String,
}

/// `POST /hub/admin/users/{name}/delete`: deletes a user with no active server.
pub async fn delete_user(
    State(hub): State<HubState>,
    Path(name): Path<String>,
    form: CsrfForm<DeleteForm>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    require(&me.user, "admin:users")?;
    if name == me.user.name {
        return Err(PageError::conflict("You cannot delete yourself."));
    }
    let user = hub
        .store
        .get_user(&name)
        .await
        .map_err(|e| PageError::from_store(format_args!("user {name}"), e))?;
    let servers = hub
        .store
        .list_user_servers(user.id)
        .await
        .map_err(PageError::unexpected)?;
    if servers.iter().any(|s| s.state.is_active()) {
        return Err(PageError::conflict(format!(
            "User {name} has a server that is not stopped: stop it first."
        )));
    }
    hub.store
        .delete_user(&name)
        .await
        .map_err(|e| PageError::from_store(format_args!("user {name}"), e))?;
    audit(
        &hub,
        &me.user,
        &name,
        json!({
            "action": "delete_user",
            "servers": servers.len(),
        }),
    )
    .await;
    Ok(back(&form.form.next))
}
