//! Name rules shared by the hub and the operator: which user and server names are valid, and the
//! names of the objects derived from a Workspace.
//!
//! Child objects of a Workspace `<ws>` are named
//!
//! | object        | name          |
//! |---------------|---------------|
//! | Pod           | `ws-<ws>`     |
//! | Service       | `ws-<ws>`     |
//! | NetworkPolicy | `ws-<ws>`     |
//! | Secret        | `ws-<ws>-token` |
//! | PVC (home)    | `home-<ws>`   |
//!
//! and the volume of a DataSource `<ds>` is `data-<ds>`. The `ws-` prefix makes the Service name a
//! DNS-1035 label (it must start with a letter) even when the Workspace name starts with a digit.
//!
//! Every derived name is an RFC 1123 label of at most 63 characters. When the plain name is not
//! one (too long, or the Workspace name, a DNS subdomain, contains dots), the base is lowercased,
//! characters outside `[a-z0-9-]` become `-`, it is truncated, and `-<hash>` is appended, where
//! `<hash>` is the first 8 hex digits of the SHA-256 of the plain name. Two different long names
//! therefore never share a derived name (up to a 32-bit hash collision), and short valid names are
//! left as they are.

use sha2::{Digest, Sha256};

/// Longest Kubernetes label (RFC 1123 label, label value).
pub const MAX_LABEL: usize = 63;
/// Hex digits of the hash appended to shortened names.
const HASH_LEN: usize = 8;

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

/// Whether `s` is an RFC 1123 subdomain (dot-separated labels, at most 253 characters).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Whether `s` is a valid Atelier user name: 1 to 63 characters of `[a-z0-9._-]`, starting and
/// ending with a letter or digit (the Workspace schema's `spec.user` pattern).
pub fn is_valid_user_name(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-._".contains(c);
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter().all(inner)
        && edge(&b[0])
        && edge(&b[b.len() - 1])
}

/// Whether `s` is a valid server name: empty (the default server) or an RFC 1123 label.
pub fn is_valid_server_name(s: &str) -> bool {
    s.is_empty() || is_dns_label(s)
}

/// Whether `s` is a valid label value: at most 63 characters of `[A-Za-z0-9._-]`, empty or
/// starting and ending with a letter or digit.
pub fn is_valid_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= MAX_LABEL
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(c))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// Name of the workspace's Pod.
pub fn pod_name(workspace: &str) -> String {
    dns_label("ws-", workspace, "")
}

/// Name of the workspace's Service.
pub fn service_name(workspace: &str) -> String {
    dns_label("ws-", workspace, "")
}

/// Name of the workspace's NetworkPolicy.
pub fn network_policy_name(workspace: &str) -> String {
    dns_label("ws-", workspace, "")
}

/// Name of the Secret holding the workspace's API token.
pub fn secret_name(workspace: &str) -> String {
    dns_label("ws-", workspace, "-token")
}

/// Name of the workspace's home PersistentVolumeClaim.
pub fn home_claim_name(workspace: &str) -> String {
    dns_label("home-", workspace, "")
}

/// Name of the pod volume of a DataSource.
pub fn data_volume_name(data_source: &str) -> String {
    dns_label("data-", data_source, "")
}

/// The per-user namespace `<prefix><user>`, shortened and hashed like the child names when that
/// is not an RFC 1123 label (user names may contain `.` and `_`).
pub fn user_namespace(prefix: &str, user: &str) -> String {
    dns_label(prefix, user, "")
}

/// `s` as a label value: itself when valid, else sanitized, shortened and hashed.
pub fn label_value(s: &str) -> String {
    if is_valid_label_value(s) {
        return s.to_owned();
    }
    let sanitized: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let keep = MAX_LABEL - HASH_LEN - 1;
    let head: String = sanitized.chars().take(keep).collect();
    let head = head.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        short_hash(s)
    } else {
        format!("{head}-{}", short_hash(s))
    }
}

/// `ATELIER_DATA_<NAME>`: the prefix of a DataSource's own environment variables (the name
/// uppercased, every character other than a letter or digit replaced by `_`).
pub fn data_env_prefix(data_source: &str) -> String {
    let name: String = data_source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ATELIER_DATA_{name}")
}

/// `<prefix><base><suffix>` when that is an RFC 1123 label, else the shortened, hashed form
/// described in the module documentation. `prefix` and `suffix` must be label characters.
pub fn dns_label(prefix: &str, base: &str, suffix: &str) -> String {
    let plain = format!("{prefix}{base}{suffix}");
    if is_dns_label(&plain) {
        return plain;
    }
    let sanitized: String = base
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let budget = MAX_LABEL.saturating_sub(prefix.len() + suffix.len() + HASH_LEN + 1);
    let head: String = sanitized.chars().take(budget).collect();
    let head = head.trim_end_matches('-');
    let head = if prefix.is_empty() {
        head.trim_start_matches('-')
    } else {
        head
    };
    let mut name = format!("{prefix}{head}");
    if !name.is_empty() && !name.ends_with('-') {
        name.push('-');
    }
    name.push_str(&short_hash(&plain));
    name.push_str(suffix);
    name
}

/// First [`HASH_LEN`] hex digits of the SHA-256 of `s`.
fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut h = hex::encode(digest);
    h.truncate(HASH_LEN);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::patterns;
    use regex::Regex;

    const SAMPLES: &[&str] = &[
        "",
        "a",
        "alice",
        "alice-1",
        "alice.smith",
        "alice_smith",
        "-alice",
        "alice-",
        ".alice",
        "alice.",
        "Alice",
        "a--b",
        "1abc",
        "a b",
        "ünïcode",
        "x123456789012345678901234567890123456789012345678901234567890123",
        "x12345678901234567890123456789012345678901234567890123456789012",
    ];

    #[test]
    fn validators_agree_with_the_schema_patterns() {
        let label = Regex::new(patterns::DNS_LABEL).unwrap();
        let server = Regex::new(patterns::DNS_LABEL_OR_EMPTY).unwrap();
        let subdomain = Regex::new(patterns::DNS_SUBDOMAIN).unwrap();
        let user = Regex::new(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$").unwrap();
        for s in SAMPLES {
            let short = s.len() <= 63;
            assert_eq!(is_dns_label(s), label.is_match(s) && short, "label {s:?}");
            assert_eq!(
                is_valid_server_name(s),
                server.is_match(s) && short,
                "server {s:?}"
            );
            assert_eq!(
                is_dns_subdomain(s),
                subdomain.is_match(s) && short,
                "subdomain {s:?}"
            );
            assert_eq!(
                is_valid_user_name(s),
                user.is_match(s) && short,
                "user {s:?}"
            );
        }
    }

    #[test]
    fn user_and_server_names() {
        let users: &[(&str, bool)] = &[
            ("alice", true),
            ("alice.smith", true),
            ("alice_smith", true),
            ("a", true),
            ("", false),
            ("Alice", false),
            ("alice-", false),
            ("_alice", false),
            ("alice@example.org", false),
        ];
        for (u, want) in users {
            assert_eq!(is_valid_user_name(u), *want, "{u:?}");
        }
        let servers: &[(&str, bool)] = &[
            ("", true),
            ("gpu", true),
            ("my-server-2", true),
            ("My", false),
            ("a.b", false),
            ("a_b", false),
            ("-a", false),
        ];
        for (s, want) in servers {
            assert_eq!(is_valid_server_name(s), *want, "{s:?}");
        }
    }

    #[test]
    fn child_names_of_short_workspaces() {
        assert_eq!(pod_name("alice"), "ws-alice");
        assert_eq!(service_name("alice-gpu"), "ws-alice-gpu");
        assert_eq!(network_policy_name("alice"), "ws-alice");
        assert_eq!(secret_name("alice"), "ws-alice-token");
        assert_eq!(home_claim_name("alice"), "home-alice");
        assert_eq!(data_volume_name("argo-floats"), "data-argo-floats");
        assert_eq!(user_namespace("atelier-u-", "alice"), "atelier-u-alice");
        assert_eq!(pod_name("1abc"), "ws-1abc");
    }

    #[test]
    fn long_names_are_truncated_with_a_hash() {
        let a = format!("{}-a", "x".repeat(70));
        let b = format!("{}-b", "x".repeat(70));
        for f in [
            pod_name,
            secret_name,
            home_claim_name,
            data_volume_name,
            service_name,
        ] {
            let (na, nb) = (f(&a), f(&b));
            assert!(is_dns_label(&na), "{na}");
            assert!(is_dns_label(&nb), "{nb}");
            assert_eq!(na.len(), 63, "{na}");
            assert_ne!(na, nb);
        }
        let name = secret_name(&a);
        assert!(name.starts_with("ws-xxxx"), "{name}");
        assert!(name.ends_with("-token"), "{name}");
        // Exactly the longest name that fits is kept verbatim.
        let fits = "y".repeat(60);
        assert_eq!(pod_name(&fits), format!("ws-{fits}"));
        let hashed = pod_name(&format!("{fits}y"));
        assert_eq!(hashed.len(), 63);
        assert_ne!(hashed, format!("ws-{fits}y"));
    }

    #[test]
    fn dotted_names_are_sanitized_and_do_not_collide() {
        let dotted = pod_name("alice.smith");
        let dashed = pod_name("alice-smith");
        assert_eq!(dashed, "ws-alice-smith");
        assert!(dotted.starts_with("ws-alice-smith-"), "{dotted}");
        assert_eq!(dotted.len(), "ws-alice-smith-".len() + 8);
        assert!(is_dns_label(&dotted));
        assert_ne!(dotted, dashed);
        let ns = user_namespace("atelier-u-", "alice_smith");
        assert!(ns.starts_with("atelier-u-alice-smith-"), "{ns}");
        assert!(is_dns_label(&ns));
        // Deterministic.
        assert_eq!(pod_name("alice.smith"), dotted);
        // A prefix-less name never starts with '-'.
        let bare = dns_label("", "_x", "");
        assert!(is_dns_label(&bare), "{bare}");
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value("alice"), "alice");
        assert_eq!(label_value(""), "");
        assert_eq!(label_value("alice.smith_x"), "alice.smith_x");
        let long = "w".repeat(100);
        let v = label_value(&long);
        assert_eq!(v.len(), 63);
        assert!(is_valid_label_value(&v));
        assert_ne!(v, label_value(&format!("{long}x")));
        assert!(is_valid_label_value(&label_value("a/b")));
        assert!(is_valid_label_value(&label_value("///")));
    }

    #[test]
    fn env_prefixes() {
        assert_eq!(data_env_prefix("argo-floats"), "ATELIER_DATA_ARGO_FLOATS");
        assert_eq!(data_env_prefix("era5.v2"), "ATELIER_DATA_ERA5_V2");
    }
}
