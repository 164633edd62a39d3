//! Per-user origins (`--user-domain`): each user's servers are served at
//! `<label>.<user domain>`, with the path `/user/<name>/[<server>/]` kept, as JupyterHub does
//! with `JupyterHub.subdomain_host` (`jupyterhub/user.py`: `User.domain`, `User.host`,
//! `User.url`; `jupyterhub/app.py`: `subdomain_host`, `subdomain_hook`). A page of a user's
//! server is then another origin than the hub: the hub's cookies, which have no `Domain`
//! attribute (host-only), never reach it, and its scripts cannot read the hub's pages.
//!
//! Pure: parsing the domain, naming a user's host, and telling which host a request is for.
//! A setting of hub, proxy and operator alike (the operator's [`OperatorConfig`](super::OperatorConfig)
//! holds one), so it lives in `config`, below `policy`; `policy::names` re-exports the RFC 1123
//! label check defined here.
//!
//! # Labels
//!
//! A host label allows `[a-z0-9-]`; Atelier user names also allow `.` and `_`. The mapping is
//! injective (no two names share a host, which JupyterHub's `subdomain_hook_idna` only makes
//! likely: its fallback is a 7-hex-digit hash):
//!
//! * a name of letters, digits and single `-` is its own label (`alice`, `jean-luc`): the
//!   common case reads as JupyterHub's;
//! * any other name (with `.`, `_` or `--`) becomes `u--` and the name with `-` written `-d`,
//!   `.` written `-p` and `_` written `-u` (`alice.smith` → `u--alice-psmith`, `p--q` →
//!   `u--p-d-dq`). Every label of this kind contains `--` and no label of the first kind does,
//!   and the escape is decodable, so the two kinds cannot meet and neither maps two names to one
//!   label. `--` stays out of the 3rd and 4th characters (reserved for `xn--`, RFC 5891).
//!
//! Escaping can make a label longer than 63 characters; such a name has no host under the user
//! domain, and starting one of its servers is refused with a message saying so (a name of up to
//! 20 characters always fits).

use std::fmt;

/// Longest Kubernetes label (RFC 1123 label, label value).
pub const MAX_LABEL: usize = 63;

/// Whether `s` is an RFC 1123 label (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, 1 to 63 characters).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

use is_dns_label as is_label;

/// The prefix of escaped labels.
const ESCAPED: &str = "u--";

/// Why a user domain or a user's host is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(
        "--user-domain {0:?} is not a DNS name (labels of letters, digits and '-', separated by \
         dots, without scheme, port or path)"
    )]
    InvalidDomain(String),
    #[error(
        "user name {0:?} has no host label under the user domain: escaped it is longer than 63 \
         characters"
    )]
    NameTooLong(String),
}

/// The `--user-domain` of hub and proxy: the parent domain of the users' hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDomain {
    /// Lowercase, without a trailing dot.
    domain: String,
}

impl fmt::Display for UserDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)
    }
}

/// The host label of user `name` (module docs), or why it has none.
pub fn user_label(name: &str) -> Result<String, HostError> {
    if is_label(name) && !name.contains("--") {
        return Ok(name.to_owned());
    }
    let mut label = String::with_capacity(ESCAPED.len() + 2 * name.len());
    label.push_str(ESCAPED);
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' => label.push(c),
            '-' => label.push_str("-d"),
            '.' => label.push_str("-p"),
            '_' => label.push_str("-u"),
            // Not an Atelier user name: never given a host.
            _ => return Err(HostError::NameTooLong(name.to_owned())),
        }
    }
    if is_label(&label) {
        Ok(label)
    } else {
        Err(HostError::NameTooLong(name.to_owned()))
    }
}

/// What a request's `Host` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// Not under the user domain: the hub's host (or an address).
    Hub,
    /// `<label>.<user domain>`: a user's host.
    User(String),
    /// The user domain itself with more than one label before it, or an invalid label: no one's.
    Unknown,
}

impl UserDomain {
    /// Parses `--user-domain`: a DNS name (`users.example.org`, or `localhost` for a trial on
    /// one machine: browsers resolve `*.localhost` to the loopback), case folded, a trailing dot
    /// dropped.
    pub fn parse(s: &str) -> Result<UserDomain, HostError> {
        let domain = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        if !labels.iter().all(|l| is_label(l)) || domain.len() > 253 {
            return Err(HostError::InvalidDomain(s.to_owned()));
        }
        Ok(UserDomain { domain })
    }

    /// `<label>.<domain>`: the host of `user`'s servers.
    pub fn host(&self, user: &str) -> Result<String, HostError> {
        Ok(format!("{}.{}", user_label(user)?, self.domain))
    }

    /// The origin of `user`'s servers: the scheme and port of the site's `public_url` with the
    /// user's host (`http://127.0.0.1:8000` → `http://alice.users.example.org:8000`), as
    /// JupyterHub's `User.host` takes them from `subdomain_host`.
    pub fn origin(&self, public_url: &str, user: &str) -> Result<String, HostError> {
        let (scheme, rest) = public_url.split_once("://").unwrap_or(("http", public_url));
        let authority = rest.split('/').next().unwrap_or("");
        let port = authority
            .rsplit_once(':')
            .filter(|(host, port)| {
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!host.starts_with('[') || host.ends_with(']'))
            })
            .map(|(_, port)| port);
        let host = self.host(user)?;
        Ok(match port {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        })
    }

    /// Which host a `Host` header value (with or without port) names.
    pub fn classify(&self, host: &str) -> HostKind {
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        if name == self.domain {
            return HostKind::Hub;
        }
        let Some(label) = name
            .strip_suffix(&self.domain)
            .and_then(|rest| rest.strip_suffix('.'))
        else {
            return HostKind::Hub;
        };
        if is_label(label) {
            HostKind::User(label.to_owned())
        } else {
            HostKind::Unknown
        }
    }

    /// Whether the hub at `public_url` would sit on a user's host (a host under the user
    /// domain), which would hand the hub's cookies to that user's pages: refused at start.
    pub fn covers_url(&self, public_url: &str) -> bool {
        let rest = public_url
            .split_once("://")
            .map_or(public_url, |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or("");
        !matches!(self.classify(authority), HostKind::Hub)
    }
}

/// Parses `--user-domain` (clap's value parser).
pub fn parse_user_domain(s: &str) -> Result<UserDomain, String> {
    UserDomain::parse(s).map_err(|e| e.to_string())
}

/// The host of a `Host` value without its port (`[::1]:80` → `[::1]`).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!name.starts_with('[') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn plain_names_are_their_own_label() {
        for name in ["alice", "jean-luc", "a", "42", "x-1-y"] {
            assert_eq!(user_label(name).unwrap(), name);
        }
    }

    #[test]
    fn other_names_are_escaped() {
        assert_eq!(user_label("alice.smith").unwrap(), "u--alice-psmith");
        assert_eq!(user_label("alice_smith").unwrap(), "u--alice-usmith");
        assert_eq!(user_label("p--q").unwrap(), "u--p-d-dq");
        assert_eq!(user_label("a.b-c_d").unwrap(), "u--a-pb-dc-ud");
        // An escaped label is a valid label, `--` never in 3rd and 4th place.
        for name in ["a.b", "x_y", "u--v", "u.p", "a--b.c"] {
            let label = user_label(name).unwrap();
            assert!(is_label(&label), "{label}");
            assert_ne!(&label[2..4], "--", "{label}");
        }
    }

    #[test]
    fn a_name_that_looks_escaped_is_escaped_again() {
        // `u--alice-psmith` itself is a valid user name; it must not take alice.smith's host.
        assert_eq!(
            user_label("u--alice-psmith").unwrap(),
            "u--u-d-dalice-dpsmith"
        );
        assert_ne!(
            user_label("u--alice-psmith").unwrap(),
            user_label("alice.smith").unwrap()
        );
    }

    #[test]
    fn too_long_escaped_names_have_no_host() {
        let long = format!("{}.x", "a".repeat(58));
        assert!(matches!(user_label(&long), Err(HostError::NameTooLong(_))));
        // Up to 20 characters always fit: 3 + 2 * 20 = 43.
        let worst = "._".repeat(10);
        assert!(user_label(&format!("a{}", &worst[1..19])).is_ok());
        assert!(user_label(&"a".repeat(63)).is_ok());
    }

    /// Every user name of up to 4 characters over an alphabet with each kind of character:
    /// no two share a label, and every label is valid.
    #[test]
    fn labels_are_injective_over_all_short_names() {
        let alphabet = ['a', 'd', 'p', 'u', '0', '-', '.', '_'];
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut names = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for n in &names {
                for c in alphabet {
                    next.push(format!("{n}{c}"));
                }
            }
            for name in &next {
                if !crate::policy::names::is_valid_user_name(name) {
                    continue;
                }
                let label = user_label(name).unwrap();
                assert!(is_label(&label), "{name} -> {label}");
                if let Some(other) = seen.insert(label.clone(), name.clone()) {
                    panic!("{name} and {other} share the label {label}");
                }
            }
            names = next;
        }
        assert!(seen.len() > 1000, "{}", seen.len());
    }

    #[test]
    fn domains() {
        let d = UserDomain::parse("Users.Example.org.").unwrap();
        assert_eq!(d.to_string(), "users.example.org");
        assert_eq!(
            UserDomain::parse("localhost").unwrap().to_string(),
            "localhost"
        );
        for bad in [
            "",
            "https://users.example.org",
            "users.example.org:8000",
            "users..org",
            "-x.org",
            "*.users.example.org",
            "users.example.org/x",
        ] {
            assert!(UserDomain::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_and_origins() {
        let d = UserDomain::parse("users.example.org").unwrap();
        assert_eq!(d.host("alice").unwrap(), "alice.users.example.org");
        assert_eq!(
            d.origin("https://vre.example.org", "alice").unwrap(),
            "https://alice.users.example.org"
        );
        assert_eq!(
            d.origin("http://127.0.0.1:8000/", "a.b").unwrap(),
            "http://u--a-pb.users.example.org:8000"
        );
        assert_eq!(
            d.origin("http://[::1]:8000", "bob").unwrap(),
            "http://bob.users.example.org:8000"
        );
        assert_eq!(
            d.origin("http://[::1]", "bob").unwrap(),
            "http://bob.users.example.org"
        );
    }

    #[test]
    fn requests_are_told_apart_by_host() {
        let d = UserDomain::parse("users.example.org").unwrap();
        assert_eq!(
            d.classify("alice.users.example.org:8000"),
            HostKind::User("alice".into())
        );
        assert_eq!(
            d.classify("ALICE.Users.Example.Org."),
            HostKind::User("alice".into())
        );
        assert_eq!(d.classify("users.example.org"), HostKind::Hub);
        assert_eq!(d.classify("vre.example.org"), HostKind::Hub);
        assert_eq!(d.classify("127.0.0.1:8000"), HostKind::Hub);
        assert_eq!(d.classify("[::1]:8000"), HostKind::Hub);
        assert_eq!(d.classify("evilusers.example.org"), HostKind::Hub);
        assert_eq!(d.classify("a.b.users.example.org"), HostKind::Unknown);
        assert_eq!(d.classify("-x.users.example.org"), HostKind::Unknown);
        assert!(d.covers_url("https://hub.users.example.org/"));
        assert!(!d.covers_url("https://users.example.org/"));
        assert!(!d.covers_url("http://127.0.0.1:8000"));
    }
}
