//! The JSON models of the REST API (JupyterHub's `user_model`, `server_model`, `token_model`,
//! `group_model`), filtered by the caller's scopes as JupyterHub filters them.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::LoadedUser;
use crate::hub::Hub;
use crate::hub::auth::Caller;
use crate::policy::names::escape_segment;
use crate::scopes::{ScopeSet, Target, role_names};
use crate::store::{GroupDetail, Server, Token, TokenOwner, UserDetail};

/// A timestamp as JupyterHub writes it (`2024-01-31T12:00:00.123456Z`), or null.
pub fn iso(t: Option<DateTime<Utc>>) -> Value {
    match t {
        Some(t) => Value::String(t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        None => Value::Null,
    }
}

/// The progress event-stream of a server.
pub fn progress_url(user: &str, server: &str) -> String {
    if server.is_empty() {
        format!("/hub/api/users/{}/server/progress", escape_segment(user))
    } else {
        format!(
            "/hub/api/users/{}/servers/{}/progress",
            escape_segment(user),
            escape_segment(server)
        )
    }
}

/// The server model. `state` (the backend's handle) only with `admin:server_state`.
pub fn server_model(
    hub: &Hub,
    caller: &Caller,
    user: &str,
    groups: &BTreeSet<String>,
    server: &Server,
) -> Value {
    // On the user's origin with a user domain (JupyterHub: `user.server_url(name)`).
    let url = hub.config.server_url(user, &server.name);
    let full_url = hub.config.server_public_url(user, &server.name);
    let progress = progress_url(user, &server.name);
    let public = hub.config.public_url.trim_end_matches('/');
    let active = server.state.is_active();
    let mut model = json!({
        "name": server.name,
        "display_name": server.display_name.clone().unwrap_or_else(|| server.name.clone()),
        "full_name": format!("{user}/{}", server.name),
        "last_activity": iso(server.last_activity),
        "started": iso(if active { server.started } else { None }),
        "pending": server.pending(),
        "ready": server.ready(),
        "stopped": server.stopped(),
        "url": url,
        "user_options": server.user_options,
        "progress_url": progress,
        "full_url": if full_url.is_empty() { Value::Null } else { Value::String(full_url) },
        "full_progress_url": if public.is_empty() { Value::Null } else { Value::String(format!("{public}{progress}")) },
    });
    let target = Target::Server {
        user,
        server: &server.name,
        groups,
    };
    if caller.scopes.allows("admin:server_state", target) {
        model["state"] = server.spawner_state.clone();
    }
    model
}

/// The keys of the user model each scope reveals (JupyterHub 6.1.1's access map,
/// `apihandlers/base.py` `user_model`).
const USER_ACCESS: &[(&str, &[&str])] = &[
    (
        "read:users",
        &[
            "kind",
            "name",
            "user_info",
            "admin",
            "roles",
            "groups",
            "server",
            "pending",
            "created",
            "last_activity",
        ],
    ),
    ("read:users:name", &["kind", "name", "user_info", "admin"]),
    ("read:users:groups", &["kind", "name", "groups"]),
    ("read:users:activity", &["kind", "name", "last_activity"]),
    ("read:servers", &["kind", "name", "servers"]),
    ("read:roles:users", &["kind", "name", "roles", "admin"]),
    ("admin:auth_state", &["kind", "name", "auth_state"]),
];

/// The user model as the caller may see it; `None` when it may see nothing of the user.
/// `servers` holds the active servers, and the stopped ones too with `include_stopped`.
pub fn user_model(
    hub: &Hub,
    caller: &Caller,
    detail: &UserDetail,
    groups: &BTreeSet<String>,
    include_stopped: bool,
) -> Option<Value> {
    user_model_with(hub, &caller.scopes, caller, detail, groups, include_stopped)
}

/// [`user_model`] with the scopes that decide which keys are shown (`GET /user` adds the
/// scopes that identify the caller).
pub fn user_model_with(
    hub: &Hub,
    scopes: &ScopeSet,
    caller: &Caller,
    detail: &UserDetail,
    groups: &BTreeSet<String>,
    include_stopped: bool,
) -> Option<Value> {
    let user = &detail.user;
    let target = Target::User {
        name: &user.name,
        groups,
    };
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for (scope, revealed) in USER_ACCESS {
        if scopes.allows(scope, target) {
            keys.extend(revealed.iter());
        }
    }
    let default = detail.servers.iter().find(|s| s.name.is_empty());
    // Only the keys the caller may see are built (no full model cloned from).
    let mut model = Map::new();
    for key in &keys {
        let value = match *key {
            "kind" => Value::from("user"),
            "name" => Value::String(user.name.clone()),
            "admin" => Value::Bool(user.admin),
            "roles" => json!(role_names(
                &hub.config.roles.of_user(&user.name, user.admin)
            )),
            "groups" => json!(detail.groups),
            "server" => json!(
                default
                    .filter(|s| s.ready())
                    .map(|_| hub.config.server_url(&user.name, ""))
            ),
            "pending" => json!(default.and_then(|s| s.pending())),
            "created" => iso(Some(user.created)),
            "last_activity" => iso(user.last_activity),
            // What an authenticator tells of the user (JupyterHub 6's `user_info`): Atelier's dev
            // login and single sign-on keep nothing beyond the name, as JupyterHub's own
            // authenticators, which leave it null.
            "user_info" => Value::Null,
            // Atelier keeps no authentication state (no refresh tokens of the provider).
            "auth_state" => Value::Null,
            _ => continue,
        };
        model.insert((*key).to_owned(), value);
    }
    let mut servers = Map::new();
    for server in &detail.servers {
        if !(server.state.is_active() || include_stopped) {
            continue;
        }
        let target = Target::Server {
            user: &user.name,
            server: &server.name,
            groups,
        };
        if scopes.allows("read:servers", target) {
            servers.insert(
                server.name.clone(),
                server_model(hub, caller, &user.name, groups, server),
            );
        }
    }
    if keys.contains("servers") || !servers.is_empty() {
        model.insert("kind".into(), json!("user"));
        model.insert("name".into(), json!(user.name));
        model.insert("servers".into(), Value::Object(servers));
    }
    (!model.is_empty()).then_some(Value::Object(model))
}

/// [`user_model`] of a loaded user.
pub fn loaded_user_model(
    hub: &Hub,
    caller: &Caller,
    user: &LoadedUser,
    include_stopped: bool,
) -> Option<Value> {
    user_model(hub, caller, &user.detail, &user.groups, include_stopped)
}

/// The API id of a token (JupyterHub's `a<id>`).
pub fn token_api_id(id: i64) -> String {
    format!("a{id}")
}

/// Parses a token's API id; `None` when it is not one.
pub fn parse_token_api_id(s: &str) -> Option<i64> {
    s.strip_prefix('a')?.parse().ok()
}

/// The token model. `owner_name` is the user's name for a user's token.
pub fn token_model(token: &Token, owner_name: &str, owner_scopes: Option<&ScopeSet>) -> Value {
    let owner_key = match token.owner {
        TokenOwner::User(_) => "user",
        TokenOwner::Service(_) => "service",
    };
    let owner = match &token.owner {
        TokenOwner::User(_) => owner_name.to_owned(),
        TokenOwner::Service(s) => s.clone(),
    };
    let user = match token.owner {
        TokenOwner::User(_) => Some(owner_name),
        TokenOwner::Service(_) => None,
    };
    let scopes = match ScopeSet::parse(&token.scopes, user) {
        Ok(set) => match owner_scopes {
            // Every token identifies its owner (JupyterHub's `get_scopes_for(token)`).
            Some(owner) if user.is_some() => {
                set.with_identify(owner_name).intersect(owner).expanded()
            }
            Some(owner) => set.intersect(owner).expanded(),
            None => set.expanded(),
        },
        Err(_) => token.scopes.clone(),
    };
    let mut model = json!({
        "id": token_api_id(token.id),
        "kind": "api_token",
        "roles": [],
        "scopes": scopes,
        "created": iso(Some(token.created)),
        "last_activity": iso(token.last_activity),
        "expires_at": iso(token.expires_at),
        "note": token.note,
        "session_id": token.session_id.map(|id| id.to_string()),
        "oauth_client": token.oauth_client_id.clone().unwrap_or_else(|| "JupyterHub".to_owned()),
    });
    model[owner_key] = Value::String(owner);
    model
}

/// The group model as the caller may see it (JupyterHub 6.1.1's access map: `roles` only with
/// `read:roles:groups`); `None` when it may see nothing of the group.
pub fn group_model(hub: &Hub, caller: &Caller, group: &GroupDetail) -> Option<Value> {
    let name = &group.group.name;
    let target = Target::Group(name);
    let full = json!({
        "kind": "group",
        "name": name,
        "roles": role_names(&hub.config.roles.of_group(name)),
        "users": group.users,
        "properties": group.group.properties,
    });
    let access: &[(&str, &[&str])] = &[
        ("read:groups", &["kind", "name", "properties", "users"]),
        ("read:groups:name", &["kind", "name"]),
        ("read:roles:groups", &["kind", "name", "roles"]),
    ];
    let mut model = Map::new();
    for (scope, keys) in access {
        if caller.scopes.allows(scope, target) {
            for key in *keys {
                model.insert((*key).to_owned(), full[*key].clone());
            }
        }
    }
    (!model.is_empty()).then_some(Value::Object(model))
}
