//! The JSON models of the REST API (JupyterHub's `user_model`, `server_model`, `token_model`,
//! `group_model`), filtered by the caller's scopes as JupyterHub filters them.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::ser::{Serialize, SerializeMap, Serializer};
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
    to_value(&ServerModel {
        hub,
        scopes: &caller.scopes,
        user,
        groups,
        server,
    })
}

/// A model serialized as it is written: `Value::Null` only if it cannot be (it always can).
fn to_value(model: &impl Serialize) -> Value {
    serde_json::to_value(model).unwrap_or(Value::Null)
}

/// The server model, serialized straight from the server's row (no JSON tree built).
pub struct ServerModel<'a> {
    hub: &'a Hub,
    /// The caller's scopes (`state` needs `admin:server_state`).
    scopes: &'a ScopeSet,
    user: &'a str,
    groups: &'a BTreeSet<String>,
    server: &'a Server,
}

impl Serialize for ServerModel<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (hub, user, server) = (self.hub, self.user, self.server);
        // On the user's origin with a user domain (JupyterHub: `user.server_url(name)`).
        let url = hub.config.server_url(user, &server.name);
        let progress = progress_url(user, &server.name);
        let public = hub.config.public_url.trim_end_matches('/');
        let active = server.state.is_active();
        let target = Target::Server {
            user,
            server: &server.name,
            groups: self.groups,
        };
        let state = self.scopes.allows("admin:server_state", target);
        let mut m = s.serialize_map(Some(13 + usize::from(state)))?;
        m.serialize_entry("name", &server.name)?;
        m.serialize_entry(
            "display_name",
            server.display_name.as_deref().unwrap_or(&server.name),
        )?;
        m.serialize_entry("full_name", &format_args!("{user}/{}", server.name))?;
        m.serialize_entry("last_activity", &Iso(server.last_activity))?;
        m.serialize_entry("started", &Iso(server.started.filter(|_| active)))?;
        m.serialize_entry("pending", &server.pending())?;
        m.serialize_entry("ready", &server.ready())?;
        m.serialize_entry("stopped", &server.stopped())?;
        m.serialize_entry("url", &url)?;
        m.serialize_entry("user_options", &server.user_options)?;
        m.serialize_entry("progress_url", &progress)?;
        // JupyterHub's `User.public_url`: absolute, or null without a public URL or user domain.
        let full_url = hub.config.public_url_of(&url);
        if full_url.is_empty() {
            m.serialize_entry("full_url", &())?;
        } else {
            m.serialize_entry("full_url", &full_url)?;
        }
        if public.is_empty() {
            m.serialize_entry("full_progress_url", &())?;
        } else {
            m.serialize_entry("full_progress_url", &format_args!("{public}{progress}"))?;
        }
        if state {
            m.serialize_entry("state", &server.spawner_state)?;
        }
        m.end()
    }
}

/// A timestamp as JupyterHub writes it (`2024-01-31T12:00:00.123456Z`), or null, serialized
/// without a `String` of its own.
struct Iso(Option<DateTime<Utc>>);

impl Serialize for Iso {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(t) => s.collect_str(&IsoDisplay(t)),
            None => s.serialize_none(),
        }
    }
}

/// `2024-01-31T12:00:00.123456Z`, written field by field (what `iso` writes, without its
/// `String`); years outside 0..=9999 as chrono writes them.
struct IsoDisplay(DateTime<Utc>);

impl fmt::Display for IsoDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        if !(0..=9999).contains(&t.year()) {
            return f.write_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true));
        }
        // A leap second is second 60 (chrono keeps it as a nanosecond count past 10^9).
        let (second, nanos) = match t.nanosecond() {
            n if n >= 1_000_000_000 => (60, n - 1_000_000_000),
            n => (t.second(), n),
        };
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            second,
            nanos / 1_000
        )
    }
}

/// The keys of the user model, in the order they are written: alphabetical, as JupyterHub's
/// model came out of a sorted set here before, then `servers` last.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UserKey {
    Admin,
    AuthState,
    Created,
    Groups,
    Kind,
    LastActivity,
    Name,
    Pending,
    Roles,
    Server,
    UserInfo,
    Servers,
}

impl UserKey {
    const ALL: [UserKey; 12] = [
        UserKey::Admin,
        UserKey::AuthState,
        UserKey::Created,
        UserKey::Groups,
        UserKey::Kind,
        UserKey::LastActivity,
        UserKey::Name,
        UserKey::Pending,
        UserKey::Roles,
        UserKey::Server,
        UserKey::UserInfo,
        UserKey::Servers,
    ];

    const fn bit(self) -> u16 {
        1 << self as u16
    }

    const fn mask(keys: &[UserKey]) -> u16 {
        let mut mask = 0;
        let mut i = 0;
        while i < keys.len() {
            mask |= keys[i].bit();
            i += 1;
        }
        mask
    }

    fn name(self) -> &'static str {
        match self {
            UserKey::Admin => "admin",
            UserKey::AuthState => "auth_state",
            UserKey::Created => "created",
            UserKey::Groups => "groups",
            UserKey::Kind => "kind",
            UserKey::LastActivity => "last_activity",
            UserKey::Name => "name",
            UserKey::Pending => "pending",
            UserKey::Roles => "roles",
            UserKey::Server => "server",
            UserKey::UserInfo => "user_info",
            UserKey::Servers => "servers",
        }
    }
}

/// The keys of the user model each scope reveals (JupyterHub 6.1.1's access map,
/// `apihandlers/base.py` `user_model`).
const USER_ACCESS: &[(&str, u16)] = {
    use UserKey::*;
    &[
        (
            "read:users",
            UserKey::mask(&[
                Kind,
                Name,
                UserInfo,
                Admin,
                Roles,
                Groups,
                Server,
                Pending,
                Created,
                LastActivity,
            ]),
        ),
        (
            "read:users:name",
            UserKey::mask(&[Kind, Name, UserInfo, Admin]),
        ),
        ("read:users:groups", UserKey::mask(&[Kind, Name, Groups])),
        (
            "read:users:activity",
            UserKey::mask(&[Kind, Name, LastActivity]),
        ),
        ("read:servers", UserKey::mask(&[Kind, Name, Servers])),
        (
            "read:roles:users",
            UserKey::mask(&[Kind, Name, Roles, Admin]),
        ),
        ("admin:auth_state", UserKey::mask(&[Kind, Name, AuthState])),
    ]
};

/// The user model as the caller may see it; `None` when it may see nothing of the user.
/// `servers` holds the active servers, and the stopped ones too with `include_stopped`.
pub fn user_model(
    hub: &Hub,
    caller: &Caller,
    detail: &UserDetail,
    groups: &BTreeSet<String>,
    include_stopped: bool,
) -> Option<Value> {
    UserModel::new(hub, &caller.scopes, caller, detail, groups, include_stopped)
        .map(|m| to_value(&m))
}

/// The user model, serialized straight from the user's rows (no JSON tree built): the keys
/// the caller may see, decided once.
pub struct UserModel<'a> {
    hub: &'a Hub,
    /// The scopes that decide which keys and servers are shown.
    scopes: &'a ScopeSet,
    /// The caller's own scopes (a server's `state`).
    caller_scopes: &'a ScopeSet,
    detail: &'a UserDetail,
    groups: &'a BTreeSet<String>,
    include_stopped: bool,
    /// [`UserKey`] bits.
    keys: u16,
}

impl<'a> UserModel<'a> {
    /// The model; `None` when the caller may see nothing of the user.
    pub fn new(
        hub: &'a Hub,
        scopes: &'a ScopeSet,
        caller: &'a Caller,
        detail: &'a UserDetail,
        groups: &'a BTreeSet<String>,
        include_stopped: bool,
    ) -> Option<UserModel<'a>> {
        let target = Target::User {
            name: &detail.user.name,
            groups,
        };
        let mut keys = 0;
        for (scope, revealed) in USER_ACCESS {
            if scopes.allows(scope, target) {
                keys |= revealed;
            }
        }
        let mut model = UserModel {
            hub,
            scopes,
            caller_scopes: &caller.scopes,
            detail,
            groups,
            include_stopped,
            keys,
        };
        // A caller who may read some of the user's servers but nothing else of the user sees
        // the user's kind, name and those servers.
        if keys & UserKey::Servers.bit() == 0 && model.servers().next().is_some() {
            model.keys |= UserKey::mask(&[UserKey::Kind, UserKey::Name, UserKey::Servers]);
        }
        (model.keys != 0).then_some(model)
    }

    /// The servers shown: active ones (all with `include_stopped`) the scopes let one read.
    fn servers(&self) -> impl Iterator<Item = &'a Server> + '_ {
        let user = &self.detail.user.name;
        self.detail.servers.iter().filter(move |server| {
            (server.state.is_active() || self.include_stopped)
                && self.scopes.allows(
                    "read:servers",
                    Target::Server {
                        user,
                        server: &server.name,
                        groups: self.groups,
                    },
                )
        })
    }
}

impl Serialize for UserModel<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.keys.count_ones() as usize))?;
        self.write_entries(&mut m)?;
        m.end()
    }
}

impl UserModel<'_> {
    /// Writes the model's keys into `m`.
    fn write_entries<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        let (hub, user) = (self.hub, &self.detail.user);
        let default = self.detail.servers.iter().find(|s| s.name.is_empty());
        for key in UserKey::ALL {
            if self.keys & key.bit() == 0 {
                continue;
            }
            let name = key.name();
            match key {
                UserKey::Kind => m.serialize_entry(name, "user")?,
                UserKey::Name => m.serialize_entry(name, &user.name)?,
                UserKey::Admin => m.serialize_entry(name, &user.admin)?,
                UserKey::Roles => m.serialize_entry(
                    name,
                    &role_names(&hub.config.roles.of_user(&user.name, user.admin)),
                )?,
                UserKey::Groups => m.serialize_entry(name, &self.detail.groups)?,
                UserKey::Server => m.serialize_entry(
                    name,
                    &default
                        .filter(|s| s.ready())
                        .map(|_| hub.config.server_url(&user.name, "")),
                )?,
                UserKey::Pending => m.serialize_entry(name, &default.and_then(|s| s.pending()))?,
                UserKey::Created => m.serialize_entry(name, &Iso(Some(user.created)))?,
                UserKey::LastActivity => m.serialize_entry(name, &Iso(user.last_activity))?,
                // What an authenticator tells of the user (JupyterHub 6's `user_info`):
                // Atelier's dev login and single sign-on keep nothing beyond the name, as
                // JupyterHub's own authenticators, which leave it null.
                UserKey::UserInfo => m.serialize_entry(name, &())?,
                // Atelier keeps no authentication state (no refresh tokens of the provider).
                UserKey::AuthState => m.serialize_entry(name, &())?,
                UserKey::Servers => m.serialize_entry(name, &ServersModel(self))?,
            }
        }
        Ok(())
    }
}

/// `GET /hub/api/user` of a user: the user model the credential may see of its owner, and what
/// the credential holds (JupyterHub 6.1.1's `SelfAPIHandler`: `scopes`, expanded and reduced;
/// `token_id`; `session_id`).
pub struct WhoamiModel<'a> {
    pub user: Option<UserModel<'a>>,
    pub scopes: &'a [String],
    pub token_id: Option<String>,
    pub session_id: Option<String>,
}

impl Serialize for WhoamiModel<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let keys = self
            .user
            .as_ref()
            .map_or(0, |u| u.keys.count_ones() as usize);
        let mut m = s.serialize_map(Some(keys + 3))?;
        if let Some(user) = &self.user {
            user.write_entries(&mut m)?;
        }
        m.serialize_entry("scopes", self.scopes)?;
        m.serialize_entry("token_id", &self.token_id)?;
        m.serialize_entry("session_id", &self.session_id)?;
        m.end()
    }
}

/// The `servers` of a [`UserModel`]: an object keyed by server name.
struct ServersModel<'m, 'a>(&'m UserModel<'a>);

impl Serialize for ServersModel<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let model = self.0;
        let mut m = s.serialize_map(None)?;
        for server in model.servers() {
            m.serialize_entry(
                &server.name,
                &ServerModel {
                    hub: model.hub,
                    scopes: model.caller_scopes,
                    user: &model.detail.user.name,
                    groups: model.groups,
                    server,
                },
            )?;
        }
        m.end()
    }
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
            Some(owner) if user.is_some() => set
                .with_identify(owner_name)
                .intersect(owner)
                .expanded()
                .to_vec(),
            Some(owner) => set.intersect(owner).expanded().to_vec(),
            None => set.expanded().to_vec(),
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

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};

    use super::*;

    fn written(t: DateTime<Utc>) -> String {
        IsoDisplay(t).to_string()
    }

    #[test]
    fn timestamps_are_written_as_iso_writes_them() {
        let mut cases = vec![
            Utc.with_ymd_and_hms(2024, 1, 31, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(0, 2, 29, 1, 2, 3).unwrap(),
        ];
        // A leap second, and sub-microsecond digits (cut, not rounded).
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_999_999_999)
            .unwrap()
            .and_utc();
        cases.push(leap);
        cases.push(cases[0] + chrono::Duration::nanoseconds(123_456_789));
        // A spread of instants over the years a hub sees, to the nanosecond.
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = x.rem_euclid(253_402_300_799); // 0001-01-01 .. 9999-12-31 from 1970
            let nanos = (x >> 3).rem_euclid(1_000_000_000) as u32;
            cases.push(Utc.timestamp_opt(secs - 62_135_596_800 / 2, nanos).unwrap());
        }
        for t in cases {
            let expected = iso(Some(t));
            assert_eq!(Value::String(written(t)), expected, "{t:?}");
        }
        assert_eq!(written(leap), "2016-12-31T23:59:60.999999Z");
    }

    #[test]
    fn user_keys_are_written_in_their_order() {
        let names: Vec<&str> = UserKey::ALL.iter().map(|k| k.name()).collect();
        let (servers, rest) = names.split_last().unwrap();
        assert_eq!(*servers, "servers");
        let mut sorted = rest.to_vec();
        sorted.sort_unstable();
        assert_eq!(rest, sorted.as_slice());
        // Each key has its own bit.
        let all = UserKey::mask(&UserKey::ALL);
        assert_eq!(all.count_ones() as usize, UserKey::ALL.len());
    }
}
