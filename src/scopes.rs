//! JupyterHub's RBAC vocabulary: scopes, their implications, filters and roles.
//!
//! Pure: the hub, the proxy and the OAuth provider decide with these functions. A scope is a name
//! with an optional filter: `read:users`, `servers!user=alice`, `access:servers!server=alice/gpu`,
//! `read:users!group=ocean`. A held scope grants a needed one when its name implies the needed name
//! (`admin:users` ⊃ `users` ⊃ `read:users` ⊃ `read:users:name`) and its filter covers the target.

use std::collections::BTreeSet;
use std::fmt;

/// Every scope name Atelier understands, with the names it directly implies (JupyterHub 5/6).
const SCOPE_TREE: &[(&str, &[&str])] = &[
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
            "admin:servers",
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
    ("shares", &["read:shares"]),
    ("read:shares", &[]),
    ("users:shares", &["read:users:shares"]),
    ("read:users:shares", &[]),
    ("groups:shares", &["read:groups:shares"]),
    ("read:groups:shares", &[]),
    ("read:metrics", &[]),
    ("read:hub", &[]),
    ("proxy", &[]),
    ("shutdown", &[]),
];

/// Scopes of the `admin` role (JupyterHub's: every scope but the metascopes).
pub const ADMIN_ROLE: &[&str] = &[
    "admin-ui",
    "admin:users",
    "admin:servers",
    "tokens",
    "admin:groups",
    "admin:services",
    "read:hub",
    "proxy",
    "shutdown",
    "access:servers",
    "access:services",
    "read:roles",
    "read:metrics",
    "shares",
    "users:shares",
    "groups:shares",
];

/// What `self` expands to for a user (each filtered to `!user=<name>`).
const SELF_SCOPES: &[&str] = &[
    "read:users",
    "read:users:name",
    "read:users:groups",
    "users:activity",
    "read:users:activity",
    "servers",
    "start:servers",
    "delete:servers",
    "read:servers",
    "tokens",
    "read:tokens",
    "access:servers",
    "read:users:shares",
    "users:shares",
];

/// Whether `name` is a scope name Atelier knows.
pub fn is_known(name: &str) -> bool {
    SCOPE_TREE.iter().any(|(n, _)| *n == name)
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

/// Whether scope name `held` implies `needed` (reflexive, transitive).
pub fn implies(held: &str, needed: &str) -> bool {
    if held == needed {
        return true;
    }
    SCOPE_TREE
        .iter()
        .find(|(n, _)| *n == held)
        .is_some_and(|(_, subs)| subs.iter().any(|s| implies(s, needed)))
}

/// A set of scopes as held by a credential, with `self` already expanded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses a list of scope strings, expanding `self` for `owner` (a user's name; `None` for a
    /// service, for which `self` grants nothing). Unknown scopes are refused.
    pub fn parse<S: AsRef<str>>(scopes: &[S], owner: Option<&str>) -> Result<ScopeSet, ScopeError> {
        let mut set = BTreeSet::new();
        for s in scopes {
            let scope = Scope::parse(s.as_ref())?;
            if scope.name == "self" {
                if let Some(user) = owner {
                    set.extend(SELF_SCOPES.iter().map(|n| Scope::user(n, user)));
                }
            } else if scope.name != "inherit" {
                set.insert(scope);
            }
        }
        Ok(ScopeSet(set))
    }

    /// The scopes of a user from their roles: `self`, plus the admin role for admins.
    pub fn for_user(name: &str, admin: bool) -> ScopeSet {
        let mut set: BTreeSet<Scope> = SELF_SCOPES.iter().map(|n| Scope::user(n, name)).collect();
        if admin {
            set.extend(ADMIN_ROLE.iter().map(|n| Scope::all(n)));
        }
        ScopeSet(set)
    }

    /// Whether the set grants `needed` on `target`.
    pub fn allows(&self, needed: &str, target: Target<'_>) -> bool {
        self.0
            .iter()
            .any(|s| implies(&s.name, needed) && s.filter.covers(target))
    }

    /// Whether the set grants `needed` on at least some resource (used to decide between 403 and
    /// filtering a list).
    pub fn has_any(&self, needed: &str) -> bool {
        self.0.iter().any(|s| implies(&s.name, needed))
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
            .iter()
            .any(|h| implies(&h.name, &scope.name) && scope.filter.within(&h.filter))
    }

    /// The scopes of `self` that `owner` still holds.
    pub fn intersect(&self, owner: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.iter().filter(|s| owner.covers(s)).cloned().collect())
    }

    /// Every scope with the names it implies, as strings, sorted (what `GET /hub/api/user`
    /// reports, like JupyterHub's expanded scopes).
    pub fn expanded(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for s in &self.0 {
            for (name, _) in SCOPE_TREE {
                if implies(&s.name, name) {
                    out.insert(
                        Scope {
                            name: (*name).to_owned(),
                            filter: s.filter.clone(),
                        }
                        .to_string(),
                    );
                }
            }
        }
        out.into_iter().collect()
    }

    /// The scopes as strings, sorted.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Scope::to_string).collect()
    }

    /// Iterates over the scopes.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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

    #[test]
    fn implication_follows_the_tree() {
        assert!(implies("admin:users", "read:users:name"));
        assert!(implies("admin:users", "servers"));
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
}
