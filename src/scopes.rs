//! JupyterHub's RBAC vocabulary: scopes, their implications, filters and roles.
//!
//! Pure: the hub, the proxy and the OAuth provider decide with these functions. A scope is a name
//! with an optional filter: `read:users`, `servers!user=alice`, `access:servers!server=alice/gpu`,
//! `read:users!group=ocean`. A held scope grants a needed one when its name implies the needed name
//! (`admin:users` ⊃ `users` ⊃ `read:users` ⊃ `read:users:name`) and its filter covers the target.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Every scope name Atelier understands, with the names it directly implies: exactly
/// JupyterHub 6.1.1's `scope_definitions` and their `subscopes` (`jupyterhub/scopes.py`; the
/// peer test `tests/jupyterhub_parity.rs` compares every expansion with the installed package).
const SCOPE_TREE: &[(&str, &[&str])] = &[
    // Identifies the owner only; grants nothing else.
    ("(no_scope)", &[]),
    ("self", &[]),
    ("inherit", &[]),
    ("admin-ui", &[]),
    (
        "admin:users",
        &[
            "admin:auth_state",
            "users",
            "read:roles:users",
            "delete:users",
        ],
    ),
    ("admin:auth_state", &[]),
    ("users", &["read:users", "list:users", "users:activity"]),
    ("delete:users", &[]),
    (
        "read:users",
        &[
            "read:users:name",
            "read:users:groups",
            "read:users:activity",
        ],
    ),
    ("list:users", &["read:users:name"]),
    ("read:users:name", &[]),
    ("read:users:groups", &[]),
    ("users:activity", &["read:users:activity"]),
    ("read:users:activity", &[]),
    ("admin:servers", &["admin:server_state", "servers"]),
    ("admin:server_state", &[]),
    (
        "servers",
        &["read:servers", "start:servers", "delete:servers"],
    ),
    ("read:servers", &["read:users:name"]),
    // JupyterHub 6: start, create and modify (PATCH) servers, without stopping them.
    ("start:servers", &[]),
    ("delete:servers", &[]),
    ("tokens", &["read:tokens"]),
    ("read:tokens", &[]),
    (
        "admin:groups",
        &["groups", "read:roles:groups", "delete:groups"],
    ),
    ("groups", &["read:groups", "list:groups"]),
    ("read:groups", &["read:groups:name"]),
    ("list:groups", &["read:groups:name"]),
    ("read:groups:name", &[]),
    ("delete:groups", &[]),
    (
        "read:roles",
        &[
            "read:roles:users",
            "read:roles:services",
            "read:roles:groups",
        ],
    ),
    ("read:roles:users", &[]),
    ("read:roles:services", &[]),
    ("read:roles:groups", &[]),
    (
        "admin:services",
        &["read:services", "list:services", "read:roles:services"],
    ),
    ("list:services", &["read:services:name"]),
    ("read:services", &["read:services:name"]),
    ("read:services:name", &[]),
    ("access:servers", &[]),
    ("access:services", &[]),
    // Sharing (JupyterHub 5): `shares!user=alice` manages who may use alice's servers;
    // `users:shares!user=bob` reads and revokes what is shared with bob.
    (
        "shares",
        &[
            "access:servers",
            "read:shares",
            "users:shares",
            "groups:shares",
        ],
    ),
    ("read:shares", &[]),
    ("users:shares", &["read:users:shares"]),
    ("read:users:shares", &[]),
    ("groups:shares", &["read:groups:shares"]),
    ("read:groups:shares", &[]),
    ("read:metrics", &[]),
    ("read:hub", &[]),
    ("proxy", &[]),
    ("shutdown", &[]),
    // Atelier's extension (not JupyterHub's): batch jobs, `/hub/api/users/{name}/jobs`.
    // `jobs` submits, reads and cancels; `read:jobs` reads (list, get, logs); `admin:jobs` is
    // `jobs` on every user, as `admin:servers` is for servers.
    ("admin:jobs", &["jobs"]),
    ("jobs", &["read:jobs"]),
    ("read:jobs", &[]),
];

/// The scope names of Atelier's extensions, which JupyterHub does not have (the parity test
/// leaves them out of its comparison).
pub const EXTENSION_SCOPES: &[&str] = &["admin:jobs", "jobs", "read:jobs"];

/// Whether `scope` (a name, or a name with a filter) is one of [`EXTENSION_SCOPES`].
pub fn is_extension(scope: &str) -> bool {
    let name = scope.split_once('!').map_or(scope, |(n, _)| n);
    EXTENSION_SCOPES.contains(&name)
}

/// Scopes of the built-in `admin` role (JupyterHub 6.1.1's `roles.get_default_roles()`).
pub const ADMIN_ROLE: &[&str] = &[
    "admin-ui",
    "admin:users",
    "admin:servers",
    "admin:services",
    "tokens",
    "admin:groups",
    "list:services",
    "read:services",
    "read:hub",
    "proxy",
    "shutdown",
    "access:services",
    "access:servers",
    "read:roles",
    "read:metrics",
    "shares",
    // Atelier's extension: every user's batch jobs.
    "admin:jobs",
];

/// What `self` stands for, each with its subscopes and filtered to `!user=<name>`
/// (JupyterHub 6.1.1's `scopes._expand_self_scope`).
const SELF_RAW: &[&str] = &[
    "read:users",
    "users:shares",
    "read:shares",
    "users:activity",
    "servers",
    "tokens",
    "access:servers",
    // Atelier's extension: the user's own batch jobs, where JupyterHub puts `servers`.
    "jobs",
];

/// The built-in roles, as JupyterHub 6.1.1's `roles.get_default_roles()`: name, description and
/// raw scopes. `!user` / `!server` / `!service` without a value name the role's holder.
pub const DEFAULT_ROLES: &[(&str, &str, &[&str])] = &[
    ("user", "Standard user privileges", &["self"]),
    ("admin", "Elevated privileges (can do anything)", ADMIN_ROLE),
    (
        "server",
        "Post activity only",
        // `jobs!user` is Atelier's extension: a notebook submits its owner's batch jobs with
        // its own `JUPYTERHUB_API_TOKEN`.
        &["users:activity!user", "access:servers!server", "jobs!user"],
    ),
    (
        "token",
        "Token with same permissions as its owner",
        &["inherit"],
    ),
];

/// Every scope name `name` stands for: itself and its subscopes, recursively (JupyterHub's
/// `scopes._expand_scope` of an unfiltered scope). Empty for an unknown name.
pub fn expansion(name: &str) -> BTreeSet<&'static str> {
    SCOPE_TREE
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| is_known(name) && implies(name, n))
        .collect()
}

/// Every scope name of the tree.
pub fn names() -> impl Iterator<Item = &'static str> {
    SCOPE_TREE.iter().map(|(n, _)| *n)
}

/// `self` for user `name`: [`SELF_RAW`] expanded, each filtered to the user.
fn self_scopes(name: &str) -> impl Iterator<Item = Scope> + '_ {
    SELF_RAW
        .iter()
        .flat_map(|raw| expansion(raw))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(move |n| Scope::user(n, name))
}

/// Whether `name` is a scope name Atelier knows.
pub fn is_known(name: &str) -> bool {
    tree().index.contains_key(name)
}

/// The filter part of a scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filter {
    /// No filter: every resource.
    All,
    /// `!user=<name>`: the user and their servers.
    User(String),
    /// `!server=<user>/<server>`: one server.
    Server(String, String),
    /// `!group=<name>`: the group and its members (and their servers).
    Group(String),
    /// `!service=<name>`: one service.
    Service(String),
}

/// One scope: a name and a filter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// The scope name, e.g. `read:users`.
    pub name: String,
    /// Its filter.
    pub filter: Filter,
}

/// Why a scope string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {scope:?}: {reason}")]
pub struct ScopeError {
    /// The scope as given.
    pub scope: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Scope {
    /// Parses `name` or `name!kind=value`. Unknown names and malformed filters are refused.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let err = |reason| ScopeError {
            scope: s.to_owned(),
            reason,
        };
        let (name, filter) = match s.split_once('!') {
            None => (s, Filter::All),
            Some((name, f)) => {
                let (kind, value) = f.split_once('=').ok_or_else(|| err("filter lacks '='"))?;
                if value.is_empty() {
                    return Err(err("empty filter value"));
                }
                let filter = match kind {
                    "user" => Filter::User(value.to_owned()),
                    "group" => Filter::Group(value.to_owned()),
                    "service" => Filter::Service(value.to_owned()),
                    "server" => {
                        let (u, srv) = value
                            .split_once('/')
                            .ok_or_else(|| err("server filter must be user/server"))?;
                        if u.is_empty() {
                            return Err(err("server filter lacks a user"));
                        }
                        Filter::Server(u.to_owned(), srv.to_owned())
                    }
                    _ => return Err(err("filter must be user, server, group or service")),
                };
                (name, filter)
            }
        };
        if !is_known(name) {
            return Err(err("unknown scope"));
        }
        Ok(Scope {
            name: name.to_owned(),
            filter,
        })
    }

    /// A scope without filter.
    pub fn all(name: &str) -> Scope {
        Scope {
            name: name.to_owned(),
            filter: Filter::All,
        }
    }

    /// A scope filtered to one user.
    pub fn user(name: &str, user: &str) -> Scope {
        Scope {
            name: name.to_owned(),
            filter: Filter::User(user.to_owned()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.filter {
            Filter::All => write!(f, "{}", self.name),
            Filter::User(u) => write!(f, "{}!user={u}", self.name),
            Filter::Server(u, s) => write!(f, "{}!server={u}/{s}", self.name),
            Filter::Group(g) => write!(f, "{}!group={g}", self.name),
            Filter::Service(s) => write!(f, "{}!service={s}", self.name),
        }
    }
}

/// The resource a request acts on.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A hub-wide resource (list of users, the hub itself): only unfiltered scopes grant it.
    Hub,
    /// A user, with the groups the user belongs to.
    User {
        /// User name.
        name: &'a str,
        /// The user's groups.
        groups: &'a BTreeSet<String>,
    },
    /// A user's server.
    Server {
        /// Owner.
        user: &'a str,
        /// Server name ("" for the default server).
        server: &'a str,
        /// The owner's groups.
        groups: &'a BTreeSet<String>,
    },
    /// A group.
    Group(&'a str),
    /// A service.
    Service(&'a str),
}

impl Filter {
    fn covers(&self, target: Target<'_>) -> bool {
        match (self, target) {
            (Filter::All, _) => true,
            (_, Target::Hub) => false,
            (Filter::User(u), Target::User { name, .. }) => u == name,
            (Filter::User(u), Target::Server { user, .. }) => u == user,
            (Filter::User(_), Target::Group(_) | Target::Service(_)) => false,
            (Filter::Server(u, s), Target::Server { user, server, .. }) => u == user && s == server,
            (Filter::Server(..), _) => false,
            (Filter::Group(g), Target::User { groups, .. })
            | (Filter::Group(g), Target::Server { groups, .. }) => groups.contains(g),
            (Filter::Group(g), Target::Group(name)) => g == name,
            (Filter::Group(_), Target::Service(_)) => false,
            (Filter::Service(s), Target::Service(name)) => s == name,
            (Filter::Service(_), _) => false,
        }
    }

    /// Whether every resource this filter covers is covered by `other` too.
    fn within(&self, other: &Filter) -> bool {
        match (self, other) {
            (_, Filter::All) => true,
            (Filter::All, _) => false,
            (a, b) if a == b => true,
            (Filter::Server(u, _), Filter::User(v)) => u == v,
            _ => false,
        }
    }
}

/// A set of scope names of [`SCOPE_TREE`], one bit per name (its index in the tree).
type Mask = u128;
const _: () = assert!(SCOPE_TREE.len() <= Mask::BITS as usize);

/// The tree resolved once: each name's index and the names it implies, as masks.
struct Tree {
    index: HashMap<&'static str, usize>,
    /// `implied[i]`: every name the i-th name implies, itself included (reflexive, transitive).
    implied: Vec<Mask>,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let index: HashMap<&'static str, usize> = SCOPE_TREE
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (*n, i))
            .collect();
        fn walk(name: &str, index: &HashMap<&'static str, usize>, mask: &mut Mask) {
            let Some(&i) = index.get(name) else { return };
            if *mask & (1 << i) != 0 {
                return;
            }
            *mask |= 1 << i;
            for sub in SCOPE_TREE[i].1 {
                walk(sub, index, mask);
            }
        }
        let implied = SCOPE_TREE
            .iter()
            .map(|(n, _)| {
                let mut mask = 0;
                walk(n, &index, &mut mask);
                mask
            })
            .collect();
        Tree { index, implied }
    })
}

/// The bit of scope name `name`; 0 for a name outside the tree.
fn bit(name: &str) -> Mask {
    tree().index.get(name).map_or(0, |&i| 1 << i)
}

/// Every name `name` implies, itself included; 0 for a name outside the tree.
fn implied_mask(name: &str) -> Mask {
    let t = tree();
    t.index.get(name).map_or(0, |&i| t.implied[i])
}

/// Whether scope name `held` implies `needed` (reflexive, transitive).
pub fn implies(held: &str, needed: &str) -> bool {
    held == needed || implied_mask(held) & bit(needed) != 0
}

/// A set of scopes as held by a credential, with `self` already expanded.
///
/// Resolved once when built: the names the unfiltered scopes imply, as one mask, and each
/// filtered scope's implied names, so that [`ScopeSet::allows`] walks no tree and compares no
/// scope names (the culler's page asks it about ten times per user).
/// Shared: a clone (each request's caller is one, from the token cache) copies a pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(Arc<Resolved>);

#[derive(Debug, Default)]
struct Resolved {
    set: BTreeSet<Scope>,
    /// Every name an unfiltered scope of the set implies.
    unfiltered: Mask,
    /// The filtered scopes, each with the names it implies.
    filtered: Vec<(Mask, Filter)>,
    /// [`ScopeSet::expanded`], made the first time it is asked for (`GET /hub/api/user` lists
    /// it on every call, with the caller's set from the token cache).
    expanded: OnceLock<Vec<String>>,
}

/// Two sets are equal when they hold the same scopes (the rest is derived from them).
impl PartialEq for Resolved {
    fn eq(&self, other: &Resolved) -> bool {
        self.set == other.set
    }
}

impl Eq for Resolved {}

impl ScopeSet {
    /// The scopes, to change (a copy unless this is the only handle).
    fn into_set(self) -> BTreeSet<Scope> {
        Arc::try_unwrap(self.0).map_or_else(|shared| shared.set.clone(), |own| own.set)
    }

    fn from_set(set: BTreeSet<Scope>) -> ScopeSet {
        let mut unfiltered = 0;
        let mut filtered = Vec::new();
        for s in &set {
            let mask = implied_mask(&s.name);
            if s.filter == Filter::All {
                unfiltered |= mask;
            } else {
                filtered.push((mask, s.filter.clone()));
            }
        }
        ScopeSet(Arc::new(Resolved {
            set,
            unfiltered,
            filtered,
            expanded: OnceLock::new(),
        }))
    }

    /// Parses a list of scope strings, expanding `self` for `owner` (a user's name; `None` for a
    /// service, for which `self` grants nothing). Unknown scopes are refused.
    pub fn parse<S: AsRef<str>>(scopes: &[S], owner: Option<&str>) -> Result<ScopeSet, ScopeError> {
        let mut set = BTreeSet::new();
        for s in scopes {
            let scope = Scope::parse(s.as_ref())?;
            if scope.name == "self" {
                if let Some(user) = owner {
                    set.extend(self_scopes(user));
                }
            } else if scope.name != "inherit" {
                set.insert(scope);
            }
        }
        Ok(ScopeSet::from_set(set))
    }

    /// The scopes of a user from their roles: `self`, plus the admin role for admins.
    pub fn for_user(name: &str, admin: bool) -> ScopeSet {
        let mut set: BTreeSet<Scope> = self_scopes(name).collect();
        if admin {
            set.extend(ADMIN_ROLE.iter().map(|n| Scope::all(n)));
        }
        ScopeSet::from_set(set)
    }

    /// Whether the set grants `needed` on `target`.
    pub fn allows(&self, needed: &str, target: Target<'_>) -> bool {
        let b = bit(needed);
        if b == 0 {
            // Outside the tree: only the very name grants it.
            return self
                .0
                .set
                .iter()
                .any(|s| s.name == needed && s.filter.covers(target));
        }
        self.0.unfiltered & b != 0
            || self
                .0
                .filtered
                .iter()
                .any(|(mask, filter)| mask & b != 0 && filter.covers(target))
    }

    /// Whether the set grants `needed` on at least some resource (used to decide between 403 and
    /// filtering a list).
    pub fn has_any(&self, needed: &str) -> bool {
        let b = bit(needed);
        if b == 0 {
            return self.0.set.iter().any(|s| s.name == needed);
        }
        self.0.unfiltered & b != 0 || self.0.filtered.iter().any(|(mask, _)| mask & b != 0)
    }

    /// Whether one of the scopes grants access to the server `user`/`server`.
    pub fn may_access_server(&self, user: &str, server: &str, groups: &BTreeSet<String>) -> bool {
        self.allows(
            "access:servers",
            Target::Server {
                user,
                server,
                groups,
            },
        )
    }

    /// Whether `scope` is within what this set holds (used to refuse a token that asks for more
    /// than its owner has, and to intersect a token's scopes with its owner's current ones).
    pub fn covers(&self, scope: &Scope) -> bool {
        self.0
            .set
            .iter()
            .any(|h| implies(&h.name, &scope.name) && scope.filter.within(&h.filter))
    }

    /// The scopes of `self` that `owner` still holds.
    pub fn intersect(&self, owner: &ScopeSet) -> ScopeSet {
        ScopeSet::from_set(
            self.0
                .set
                .iter()
                .filter(|s| owner.covers(s))
                .cloned()
                .collect(),
        )
    }

    /// Every scope with the names it implies, reduced, as strings, sorted (what
    /// `GET /hub/api/user` reports, like JupyterHub's expanded and reduced scopes). Worked out
    /// once per set.
    pub fn expanded(&self) -> &[String] {
        self.0.expanded.get_or_init(|| self.expand())
    }

    fn expand(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for s in &self.0.set {
            for (name, _) in SCOPE_TREE {
                // JupyterHub's `_expand_scope`: a `!server=` filter drops the cross-resource
                // `read:users…` subscopes (`read:servers` → `read:users:name`).
                let cross = matches!(s.filter, Filter::Server(..)) && name.starts_with("read:user");
                if implies(&s.name, name) && !cross {
                    out.insert(Scope {
                        name: (*name).to_owned(),
                        filter: s.filter.clone(),
                    });
                }
            }
        }
        // JupyterHub's `reduce_scopes`: a filtered scope whose name is also held unfiltered
        // is dropped.
        let unfiltered: BTreeSet<String> = out
            .iter()
            .filter(|s| s.filter == Filter::All)
            .map(|s| s.name.clone())
            .collect();
        out.into_iter()
            .filter(|s| s.filter == Filter::All || !unfiltered.contains(&s.name))
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect()
    }

    /// The scopes as strings, sorted.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.set.iter().map(Scope::to_string).collect()
    }

    /// Iterates over the scopes.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.set.iter()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.set.is_empty()
    }

    /// With the scopes that let any token of user `name` identify its owner (JupyterHub's
    /// `identify_scopes`: `read:users:name` and `read:users:groups` on the user).
    pub fn with_identify(self, name: &str) -> ScopeSet {
        let mut set = self.into_set();
        set.insert(Scope::user("read:users:name", name));
        set.insert(Scope::user("read:users:groups", name));
        ScopeSet::from_set(set)
    }

    /// With `scope` added.
    pub fn with(self, scope: Scope) -> ScopeSet {
        let mut set = self.into_set();
        set.insert(scope);
        ScopeSet::from_set(set)
    }

    /// The scopes of both sets.
    pub fn union(self, other: &ScopeSet) -> ScopeSet {
        let mut set = self.into_set();
        set.extend(other.0.set.iter().cloned());
        ScopeSet::from_set(set)
    }
}

// ---- roles ----------------------------------------------------------------------------------

/// A role (JupyterHub's `load_roles` entry): a name, raw scopes, and the users, groups and
/// services that hold it. A user in one of its groups holds it too.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// 3-255 characters: lowercase ASCII letters, digits and `-._~`, starting with a letter and
    /// ending with a letter or digit (JupyterHub's `_role_name_pattern`).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Raw scopes: `self`, `inherit`, bare `!user` / `!service` / `!server` filters allowed.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// User names.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Service names.
    #[serde(default)]
    pub services: Vec<String>,
}

/// Why a role definition was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The name does not match JupyterHub's pattern.
    #[error(
        "invalid role name {0:?}: 3-255 characters of a-z, 0-9, '-', '.', '~', '_', starting \
         with a letter and ending with a letter or digit"
    )]
    Name(String),
    /// A scope is not known.
    #[error("role {role}: {error}")]
    Scope {
        /// The role.
        role: String,
        /// The scope's error.
        error: ScopeError,
    },
    /// The `admin` role's scopes cannot be changed (JupyterHub's `RoleValueError`).
    #[error("role admin: its scopes cannot be changed")]
    Admin,
    /// Two definitions of one role.
    #[error("role {0} is defined twice")]
    Duplicate(String),
}

/// Who holds a set of raw scopes: bare `!user` / `!service` filters and `self` resolve to it.
#[derive(Clone, Copy, Debug)]
pub enum Holder<'a> {
    /// A user.
    User(&'a str),
    /// A service.
    Service(&'a str),
}

fn role_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=255).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_~.".contains(c))
}

/// Raw scopes with their bare filters resolved for `holder` (JupyterHub's `expand_scopes`
/// filter replacement): `!user` becomes `!user=<name>` for a user, `!service`
/// `!service=<name>` for a service; a bare filter that does not fit the holder, and `!server`
/// (which names the server of an OAuth client), are dropped, as JupyterHub drops them with a
/// warning. `self` and `inherit` stay as they are.
pub fn resolve_bare<S: AsRef<str>>(raw: &[S], holder: Holder<'_>) -> Vec<String> {
    let mut resolved = Vec::new();
    for s in raw {
        let s = s.as_ref();
        match s.split_once('!') {
            Some((name, "user")) => {
                if let Holder::User(u) = holder {
                    resolved.push(format!("{name}!user={u}"));
                }
            }
            Some((name, "service")) => {
                if let Holder::Service(n) = holder {
                    resolved.push(format!("{name}!service={n}"));
                }
            }
            Some((_, "server")) => {}
            _ => resolved.push(s.to_owned()),
        }
    }
    resolved
}

/// Raw scopes as `holder` holds them: [`resolve_bare`], then parsed with `self` expanded for a
/// user. `inherit` is left to the caller.
pub fn resolve_raw<S: AsRef<str>>(raw: &[S], holder: Holder<'_>) -> Result<ScopeSet, ScopeError> {
    let owner = match holder {
        Holder::User(u) => Some(u),
        Holder::Service(_) => None,
    };
    ScopeSet::parse(&resolve_bare(raw, holder), owner)
}

/// The built-in roles and those of the configuration, and who holds which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

impl Default for Roles {
    fn default() -> Roles {
        Roles(
            DEFAULT_ROLES
                .iter()
                .map(|(name, description, scopes)| Role {
                    name: (*name).to_owned(),
                    description: Some((*description).to_owned()),
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                    ..Role::default()
                })
                .collect(),
        )
    }
}

impl Roles {
    /// The built-in roles with `configured` added. A configured role of a built-in name adds
    /// holders to it and, except for `admin`, may replace its description and scopes (as
    /// JupyterHub's `create_role` updates an existing role).
    pub fn new(configured: Vec<Role>) -> Result<Roles, RoleError> {
        let mut roles = Roles::default();
        let mut seen = BTreeSet::new();
        for role in configured {
            if !role_name_ok(&role.name) {
                return Err(RoleError::Name(role.name));
            }
            if !seen.insert(role.name.clone()) {
                return Err(RoleError::Duplicate(role.name));
            }
            resolve_raw(&role.scopes, Holder::User("x")).map_err(|error| RoleError::Scope {
                role: role.name.clone(),
                error,
            })?;
            match roles.0.iter_mut().find(|r| r.name == role.name) {
                Some(existing) => {
                    if existing.name == "admin"
                        && !role.scopes.is_empty()
                        && role.scopes != existing.scopes
                    {
                        return Err(RoleError::Admin);
                    }
                    if role.description.is_some() && existing.name != "admin" {
                        existing.description = role.description;
                    }
                    if !role.scopes.is_empty() {
                        existing.scopes = role.scopes;
                    }
                    existing.users.extend(role.users);
                    existing.groups.extend(role.groups);
                    existing.services.extend(role.services);
                }
                None => roles.0.push(role),
            }
        }
        Ok(roles)
    }

    /// Every role.
    pub fn all(&self) -> &[Role] {
        &self.0
    }

    /// The role named `name`.
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.0.iter().find(|r| r.name == name)
    }

    /// Whether some role is held through a group (the caller then needs the user's groups).
    pub fn by_group(&self) -> bool {
        self.0.iter().any(|r| !r.groups.is_empty())
    }

    /// The roles user `name` holds directly (JupyterHub's `user.roles`): `user`, `admin` for an
    /// admin, and those naming the user.
    pub fn of_user(&self, name: &str, admin: bool) -> Vec<&Role> {
        self.0
            .iter()
            .filter(|r| {
                r.name == "user"
                    || (admin && r.name == "admin")
                    || r.users.iter().any(|u| u == name)
            })
            .collect()
    }

    /// The roles of group `name`.
    pub fn of_group(&self, name: &str) -> Vec<&Role> {
        self.0
            .iter()
            .filter(|r| r.groups.iter().any(|g| g == name))
            .collect()
    }

    /// The roles of service `name`.
    pub fn of_service(&self, name: &str) -> Vec<&Role> {
        self.0
            .iter()
            .filter(|r| r.services.iter().any(|s| s == name))
            .collect()
    }

    /// The raw scopes of user `name`'s roles and of their groups' roles, bare filters resolved
    /// ([`resolve_bare`]), without `inherit`, sorted: `self` stays `self`, so that a token given
    /// them follows a rename of its owner.
    pub fn user_raw_scopes(
        &self,
        name: &str,
        admin: bool,
        groups: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut raw: Vec<&str> = Vec::new();
        for role in self.of_user(name, admin) {
            raw.extend(role.scopes.iter().map(String::as_str));
        }
        for group in groups {
            for role in self.of_group(group) {
                raw.extend(role.scopes.iter().map(String::as_str));
            }
        }
        let set: BTreeSet<String> = resolve_bare(&raw, Holder::User(name))
            .into_iter()
            .filter(|s| s != "inherit")
            .collect();
        set.into_iter().collect()
    }

    /// The scopes of user `name` (JupyterHub's `get_scopes_for(user)`): those of their roles and
    /// of their groups' roles.
    pub fn user_scopes(&self, name: &str, admin: bool, groups: &BTreeSet<String>) -> ScopeSet {
        let raw = self.user_raw_scopes(name, admin, groups);
        // Checked by `Roles::new`; a scope that fails here grants nothing.
        ScopeSet::parse(&raw, Some(name)).unwrap_or_default()
    }

    /// The scopes of the API token of server `user/server` (its `$JUPYTERHUB_API_TOKEN`, which
    /// its kernels inherit), as JupyterHub 6.1.1's `User.spawn` gives them when
    /// `Spawner.server_token_scopes` is not set: the `server` role's raw scopes (a configured
    /// role named `server` replaces them, as `load_roles` does), `!server` resolved to this
    /// server and `!user` to its owner, `users:activity!user` added when missing, `inherit`
    /// standing for everything the owner holds; then only what the owner holds is kept
    /// (`scopes._resolve_requested_scopes`: the rest is excluded). Sorted.
    ///
    /// So a hub whose `server` role adds `access:services!service=dask-gateway` gives the
    /// servers of the users granted that scope a token dask-gateway accepts, and the others'
    /// servers a token without it.
    pub fn server_token_scopes(
        &self,
        user: &str,
        admin: bool,
        groups: &BTreeSet<String>,
        server: &str,
    ) -> Vec<String> {
        let role: &[String] = self.get("server").map_or(&[], |r| r.scopes.as_slice());
        let mut raw: Vec<String> = role
            .iter()
            .map(|s| match s.strip_suffix("!server") {
                Some(name) => format!("{name}!server={user}/{server}"),
                None => s.clone(),
            })
            .collect();
        if !raw.iter().any(|s| {
            matches!(
                s.as_str(),
                "users:activity!user" | "users:activity" | "inherit"
            )
        }) {
            raw.push("users:activity!user".to_owned());
        }
        let inherit = raw.iter().any(|s| s == "inherit");
        let mut requested = resolve_bare(&raw, Holder::User(user));
        if inherit {
            requested.extend(self.user_raw_scopes(user, admin, groups));
        }
        let owner = self.user_scopes(user, admin, groups);
        // Checked by `Roles::new`; a scope that fails here grants nothing.
        ScopeSet::parse(&requested, Some(user))
            .map(|set| set.intersect(&owner).to_strings())
            .unwrap_or_default()
    }

    /// The scopes service `name`'s roles give it.
    pub fn service_scopes(&self, name: &str) -> ScopeSet {
        let raw: Vec<&str> = self
            .of_service(name)
            .into_iter()
            .flat_map(|r| r.scopes.iter().map(String::as_str))
            .collect();
        resolve_raw(&raw, Holder::Service(name)).unwrap_or_default()
    }
}

/// Role names, sorted.
pub fn role_names(roles: &[&Role]) -> Vec<String> {
    let names: BTreeSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    names.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(gs: &[&str]) -> BTreeSet<String> {
        gs.iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn parses_names_and_filters() {
        assert_eq!(
            Scope::parse("read:users").unwrap(),
            Scope::all("read:users")
        );
        assert_eq!(
            Scope::parse("access:servers!server=alice/").unwrap().filter,
            Filter::Server("alice".into(), "".into())
        );
        assert_eq!(
            Scope::parse("servers!group=ocean").unwrap().filter,
            Filter::Group("ocean".into())
        );
        assert_eq!(
            Scope::parse("access:servers!server=alice/gpu")
                .unwrap()
                .to_string(),
            "access:servers!server=alice/gpu"
        );
        for bad in [
            "read:everything",
            "servers!user",
            "servers!user=",
            "servers!host=x",
            "access:servers!server=nouser",
            "access:servers!server=/x",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    /// The masks resolved once agree with a walk of the tree, for every pair of names.
    #[test]
    fn implication_masks_match_the_tree() {
        fn walk(held: &str, needed: &str) -> bool {
            held == needed
                || SCOPE_TREE
                    .iter()
                    .find(|(n, _)| *n == held)
                    .is_some_and(|(_, subs)| subs.iter().any(|s| walk(s, needed)))
        }
        for (held, _) in SCOPE_TREE {
            for (needed, _) in SCOPE_TREE {
                assert_eq!(
                    implies(held, needed),
                    walk(held, needed),
                    "{held} -> {needed}"
                );
            }
            assert!(!implies(held, "no-such-scope"));
        }
        assert!(implies("no-such-scope", "no-such-scope"));
        // A set answers as its scopes one by one.
        let set = ScopeSet::parse(
            &["admin:users", "servers!user=alice", "read:groups!group=g"],
            None,
        )
        .unwrap();
        let groups: BTreeSet<String> = ["g".to_owned()].into();
        let none = BTreeSet::new();
        let alice = Target::User {
            name: "alice",
            groups: &none,
        };
        let bob = Target::User {
            name: "bob",
            groups: &groups,
        };
        for (needed, _) in SCOPE_TREE {
            for target in [alice, bob, Target::Hub, Target::Group("g")] {
                let one_by_one = set
                    .iter()
                    .any(|s| walk(&s.name, needed) && s.filter.covers(target));
                assert_eq!(
                    set.allows(needed, target),
                    one_by_one,
                    "{needed} on {target:?}"
                );
            }
        }
    }

    #[test]
    fn implication_follows_the_tree() {
        assert!(implies("admin:users", "read:users:name"));
        assert!(implies("admin:servers", "servers"));
        assert!(implies("users", "read:users:activity"));
        assert!(implies("servers", "delete:servers"));
        assert!(!implies("read:users", "users"));
        assert!(!implies("servers", "access:servers"));
        assert!(!implies("read:servers", "servers"));
    }

    #[test]
    fn jupyterhub_6_scopes_follow_jupyterhubs_tree() {
        // Every scope the REST API's operations name is known.
        for name in [
            "start:servers",
            "delete:servers",
            "delete:users",
            "delete:groups",
            "shutdown",
            "proxy",
            "read:services",
            "list:services",
            "read:services:name",
            "admin:services",
            "access:services",
            "shares",
            "read:shares",
            "users:shares",
            "read:users:shares",
            "groups:shares",
            "read:groups:shares",
            "read:roles:services",
        ] {
            assert!(is_known(name), "{name}");
        }
        assert!(implies("servers", "start:servers"));
        assert!(implies("admin:servers", "start:servers"));
        assert!(!implies("start:servers", "delete:servers"));
        assert!(!implies("start:servers", "servers"));
        assert!(!implies("delete:servers", "start:servers"));
        assert!(implies("admin:users", "delete:users"));
        assert!(!implies("users", "delete:users"));
        assert!(implies("admin:groups", "delete:groups"));
        assert!(implies("admin:groups", "read:roles:groups"));
        assert!(!implies("groups", "delete:groups"));
        assert!(implies("read:roles", "read:roles:services"));
        assert!(implies("admin:services", "read:services:name"));
        assert!(implies("list:services", "read:services:name"));
        assert!(!implies("read:services", "list:services"));
        assert!(implies("shares", "read:shares"));
        assert!(implies("users:shares", "read:users:shares"));
        assert!(implies("groups:shares", "read:groups:shares"));
        assert!(!implies("read:shares", "shares"));

        // The admin role holds them all; a user's `self` starts and stops their own servers
        // but neither shuts the hub down nor deletes users.
        let admin = ScopeSet::for_user("root", true);
        for name in [
            "shutdown",
            "proxy",
            "delete:users",
            "delete:groups",
            "start:servers",
            "read:services",
            "list:services",
            "access:services",
            "shares",
            "users:shares",
            "groups:shares",
        ] {
            assert!(admin.allows(name, Target::Hub), "admin lacks {name}");
        }
        let none = groups(&[]);
        let alice = ScopeSet::for_user("alice", false);
        let own = Target::Server {
            user: "alice",
            server: "",
            groups: &none,
        };
        assert!(alice.allows("start:servers", own));
        assert!(alice.allows("delete:servers", own));
        for name in ["shutdown", "proxy", "read:services", "delete:users"] {
            assert!(!alice.allows(name, Target::Hub), "user holds {name}");
        }
    }

    #[test]
    fn service_filters_cover_only_that_service() {
        let s = ScopeSet::parse(&["read:services!service=culler"], None).unwrap();
        assert_eq!(s.to_strings(), vec!["read:services!service=culler"]);
        assert!(s.allows("read:services", Target::Service("culler")));
        assert!(s.allows("read:services:name", Target::Service("culler")));
        assert!(!s.allows("read:services", Target::Service("other")));
        assert!(!s.allows("read:services", Target::Hub));
        let none = groups(&[]);
        assert!(!s.allows(
            "read:services",
            Target::User {
                name: "culler",
                groups: &none
            }
        ));
        let user = ScopeSet::parse(&["read:users!user=culler"], None).unwrap();
        assert!(!user.allows("read:users", Target::Service("culler")));
    }

    #[test]
    fn self_grants_only_own_resources() {
        let alice = ScopeSet::parse(&["self"], Some("alice")).unwrap();
        let none = groups(&[]);
        assert!(alice.may_access_server("alice", "", &none));
        assert!(alice.may_access_server("alice", "gpu", &none));
        assert!(!alice.may_access_server("bob", "", &none));
        assert!(alice.allows(
            "servers",
            Target::Server {
                user: "alice",
                server: "x",
                groups: &none
            }
        ));
        assert!(!alice.allows("list:users", Target::Hub));
        assert!(!alice.allows(
            "admin:users",
            Target::User {
                name: "alice",
                groups: &none
            }
        ));
    }

    #[test]
    fn server_and_group_filters() {
        let token = ScopeSet::parse(&["access:servers!server=alice/"], None).unwrap();
        let g = groups(&["ocean"]);
        assert!(token.may_access_server("alice", "", &g));
        assert!(!token.may_access_server("alice", "gpu", &g));
        assert!(!token.may_access_server("bob", "", &g));

        let group = ScopeSet::parse(&["access:servers!group=ocean"], None).unwrap();
        assert!(group.may_access_server("carol", "", &g));
        assert!(!group.may_access_server("carol", "", &groups(&["land"])));
        assert!(group.allows("access:servers", Target::Group("ocean")));
        assert!(!group.allows("access:servers", Target::Group("land")));
    }

    #[test]
    fn admin_has_everything_users_do_not() {
        let admin = ScopeSet::for_user("root", true);
        let none = groups(&[]);
        assert!(admin.allows("admin:users", Target::Hub));
        assert!(admin.may_access_server("bob", "", &none));
        let user = ScopeSet::for_user("bob", false);
        assert!(!user.allows("admin:users", Target::Hub));
        assert!(user.may_access_server("bob", "", &none));
    }

    #[test]
    fn tokens_cannot_exceed_their_owner() {
        let owner = ScopeSet::for_user("alice", false);
        assert!(owner.covers(&Scope::parse("access:servers!server=alice/x").unwrap()));
        assert!(owner.covers(&Scope::parse("read:users!user=alice").unwrap()));
        assert!(!owner.covers(&Scope::parse("read:users").unwrap()));
        assert!(!owner.covers(&Scope::parse("access:servers!user=bob").unwrap()));
        let wanted = ScopeSet::parse(&["read:users", "servers!user=alice"], None).unwrap();
        assert_eq!(
            wanted.intersect(&owner).to_strings(),
            vec!["servers!user=alice".to_string()]
        );
    }

    #[test]
    fn expansion_lists_implied_scopes() {
        let s = ScopeSet::parse(&["servers!user=alice"], None).unwrap();
        assert_eq!(
            s.expanded(),
            vec![
                "delete:servers!user=alice",
                "read:servers!user=alice",
                "read:users:name!user=alice",
                "servers!user=alice",
                "start:servers!user=alice",
            ]
        );
    }

    #[test]
    fn admin_users_does_not_reach_servers() {
        // JupyterHub 6.1.1: admin:users -> admin:auth_state, users, read:roles:users,
        // delete:users; servers are admin:servers' alone.
        for name in [
            "admin:servers",
            "servers",
            "start:servers",
            "delete:servers",
            "read:servers",
            "admin:server_state",
            "access:servers",
            "tokens",
        ] {
            assert!(!implies("admin:users", name), "admin:users implies {name}");
        }
        let token = ScopeSet::parse(&["admin:users"], None).unwrap();
        let none = groups(&[]);
        let bobs = Target::Server {
            user: "bob",
            server: "",
            groups: &none,
        };
        assert!(!token.allows("start:servers", bobs));
        assert!(!token.allows("delete:servers", bobs));
        assert!(token.allows(
            "delete:users",
            Target::User {
                name: "bob",
                groups: &none
            }
        ));
    }

    #[test]
    fn self_and_shares_follow_jupyterhub() {
        let alice = ScopeSet::for_user("alice", false).expanded().to_vec();
        assert!(alice.contains(&"read:shares!user=alice".to_string()));
        assert!(alice.contains(&"read:users:shares!user=alice".to_string()));
        assert!(
            !alice
                .iter()
                .any(|s| s.starts_with("read:users!") && !s.ends_with("alice"))
        );
        assert_eq!(
            expansion("shares"),
            BTreeSet::from([
                "access:servers",
                "groups:shares",
                "read:groups:shares",
                "read:shares",
                "read:users:shares",
                "shares",
                "users:shares",
            ])
        );
        // A `!server=` filter drops the `read:users…` subscopes, as JupyterHub's `_expand_scope`.
        let s = ScopeSet::parse(&["read:servers!server=alice/x"], None).unwrap();
        assert_eq!(s.expanded(), vec!["read:servers!server=alice/x"]);
    }

    #[test]
    fn jobs_scopes_are_filtered_as_servers() {
        assert!(implies("admin:jobs", "jobs"));
        assert!(implies("jobs", "read:jobs"));
        assert!(!implies("read:jobs", "jobs"));
        assert!(!implies("admin:servers", "jobs"));
        let none = BTreeSet::new();
        let alice = Target::User {
            name: "alice",
            groups: &none,
        };
        let bob = Target::User {
            name: "bob",
            groups: &none,
        };
        // A user's own jobs through `self`; nobody else's.
        let own = ScopeSet::for_user("alice", false);
        assert!(own.allows("jobs", alice) && own.allows("read:jobs", alice));
        assert!(!own.allows("read:jobs", bob));
        // Admins reach everyone's.
        assert!(ScopeSet::for_user("root", true).allows("jobs", bob));
        let ocean: BTreeSet<String> = ["ocean".to_owned()].into();
        let group = ScopeSet::parse(&["read:jobs!group=ocean"], None).unwrap();
        let erin = Target::User {
            name: "erin",
            groups: &ocean,
        };
        assert!(group.allows("read:jobs", erin) && !group.allows("jobs", erin));
        assert!(!group.allows("read:jobs", bob));
        assert!(is_extension("jobs!user=alice") && !is_extension("servers"));
    }

    #[test]
    fn server_tokens_follow_the_server_role() {
        let none = groups(&[]);
        let ocean = groups(&["ocean"]);
        // The built-in `server` role: activity and access to this server only, and (Atelier's
        // extension) the owner's batch jobs.
        let stock = Roles::default();
        assert_eq!(
            stock.server_token_scopes("alice", false, &none, "gpu"),
            [
                "access:servers!server=alice/gpu",
                "jobs!user=alice",
                "users:activity!user=alice"
            ]
        );
        // A hub that gives the servers dask-gateway's access scope, as JupyterHub 6 does with
        // `load_roles` redefining `server`: only the users who hold it get it.
        let roles = Roles::new(vec![
            Role {
                name: "server".into(),
                scopes: vec![
                    "access:servers!server".into(),
                    "access:services!service=dask-gateway".into(),
                ],
                ..Role::default()
            },
            Role {
                name: "dask-users".into(),
                scopes: vec!["access:services!service=dask-gateway".into()],
                groups: vec!["ocean".into()],
                users: vec!["erin".into()],
                ..Role::default()
            },
        ])
        .unwrap();
        let granted = [
            "access:servers!server=alice/",
            "access:services!service=dask-gateway",
            "users:activity!user=alice",
        ];
        assert_eq!(
            roles.server_token_scopes("alice", false, &ocean, ""),
            granted
        );
        assert_eq!(
            roles.server_token_scopes("erin", false, &none, ""),
            granted.map(|s| s.replace("alice", "erin"))
        );
        // users:activity was missing from the role: added, as JupyterHub adds it.
        assert_eq!(
            roles.server_token_scopes("bob", false, &none, ""),
            ["access:servers!server=bob/", "users:activity!user=bob"]
        );
        // `inherit`: everything the owner holds.
        let inherit = Roles::new(vec![Role {
            name: "server".into(),
            scopes: vec!["inherit".into()],
            ..Role::default()
        }])
        .unwrap();
        let all = inherit.server_token_scopes("bob", false, &none, "");
        assert_eq!(
            ScopeSet::parse(&all, Some("bob")).unwrap(),
            ScopeSet::for_user("bob", false)
        );
    }

    #[test]
    fn roles_give_their_holders_scopes() {
        let roles = Roles::new(vec![
            Role {
                name: "dask-users".into(),
                scopes: vec!["access:services!service=dask-gateway".into()],
                groups: vec!["ocean".into()],
                ..Role::default()
            },
            Role {
                name: "culler".into(),
                scopes: vec!["list:users".into(), "read:services!service".into()],
                services: vec!["idle".into()],
                users: vec!["carol".into()],
                ..Role::default()
            },
        ])
        .unwrap();
        let dask = Target::Service("dask-gateway");
        let ocean = groups(&["ocean"]);
        assert!(
            roles
                .user_scopes("alice", false, &ocean)
                .allows("access:services", dask)
        );
        assert!(
            !roles
                .user_scopes("alice", false, &groups(&[]))
                .allows("access:services", dask)
        );
        let idle = roles.service_scopes("idle");
        assert!(idle.allows("list:users", Target::Hub));
        assert!(idle.allows("read:services", Target::Service("idle")));
        assert!(!idle.allows("read:services", Target::Service("other")));
        // A bare `!service` means nothing for a user.
        let carol = roles.user_scopes("carol", false, &groups(&[]));
        assert!(carol.allows("list:users", Target::Hub));
        assert!(!carol.has_any("read:services"));
        assert_eq!(
            role_names(&roles.of_user("carol", false)),
            ["culler", "user"]
        );
        assert_eq!(role_names(&roles.of_user("root", true)), ["admin", "user"]);
        assert_eq!(role_names(&roles.of_group("ocean")), ["dask-users"]);
        // The built-in roles' scopes (JupyterHub's `get_default_roles()`).
        assert_eq!(
            Roles::default().user_scopes("root", true, &groups(&[])),
            ScopeSet::for_user("root", true)
        );
        for bad in ["Admin", "ab", "9lives", "dask-", "a b c"] {
            let role = Role {
                name: bad.into(),
                ..Role::default()
            };
            assert!(
                matches!(Roles::new(vec![role]), Err(RoleError::Name(_))),
                "{bad}"
            );
        }
        let unknown = Role {
            name: "bad".into(),
            scopes: vec!["read:everything".into()],
            ..Role::default()
        };
        assert!(matches!(
            Roles::new(vec![unknown]),
            Err(RoleError::Scope { .. })
        ));
        let admin = Role {
            name: "admin".into(),
            scopes: vec!["shutdown".into()],
            ..Role::default()
        };
        assert_eq!(Roles::new(vec![admin]), Err(RoleError::Admin));
        let admins = Role {
            name: "admin".into(),
            users: vec!["dora".into()],
            ..Role::default()
        };
        let roles = Roles::new(vec![admins]).unwrap();
        assert!(
            roles
                .user_scopes("dora", false, &groups(&[]))
                .allows("shutdown", Target::Hub)
        );
    }
}
