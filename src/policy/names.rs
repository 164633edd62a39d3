//! Name rules shared by the hub and the operator: which user and server names are valid, the
//! names derived from a user's server, and the names of the objects derived from a Workspace.
//!
//! # Names of a user's server
//!
//! A server is a pair (user, server name), the default server's name being empty. User names
//! are 1 to 63 characters of `[a-z0-9._-]` starting and ending with a letter or digit
//! ([`is_valid_user_name`]); server names are DNS labels ([`is_valid_server_name`], and by
//! default JupyterHub 6's stricter rule, [`ServerNameRule`]). Every name derived from a pair is
//! **injective by construction**: two different pairs never get the same name, and a hash is
//! only involved where a name has to be truncated to fit a length limit. JupyterHub joins with
//! `-` (`jupyterhub-user-p-q` is both user `p`'s server `q` and user `p-q`'s default server, so
//! one can block the other); Atelier does not.
//!
//! - Where the target alphabet has a character that is in no user or server name, it separates
//!   them: [`PAIR_SEPARATOR`] `~` (unreserved in URLs, a token character in cookie names, fine in
//!   file names). The OAuth client id ([`oauth_client_id`]) is `jupyterhub-user-<user>` for the
//!   default server, as JupyterHub's, and `jupyterhub-user-<user>~<server>` for a named one; the
//!   local backend's log file ([`server_file_stem`]) is `<user>.log` or `<user>~<server>.log`.
//!   Splitting at the only `~` gives the pair back.
//! - A DNS label (the Workspace name, [`server_label`]) has only `[a-z0-9-]`, so the pair is
//!   escaped. Each name is cut into runs of letters and digits and runs of the other characters
//!   (`-`, `.`, `_`); a single `-` stays as it is, any other run becomes `--` + one digit per
//!   character (`-` → `0`, `.` → `1`, `_` → `2`) + `-`. The server follows the user after `--`
//!   when it starts with a letter, after `---` when it starts with a digit. Reading from the
//!   left, after a run of letters and digits the next characters tell exactly one of: the end
//!   (the default server), `-` and a letter or digit (a `-` in the name), `--` and a digit (an
//!   escaped run), `--` and a letter, or `---` (the server starts). So the name decodes to its
//!   pair: distinct pairs, distinct names. The usual names do not change: `alice`, `alice--gpu`;
//!   `alice.smith` is `alice--1-smith`, user `a--b` is `a--00-b`.
//!
//! # Names of a Workspace's objects
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
//! | PVC (data)    | `data-<ws>-<ds>-<hash>` ([`data_claim_name`]) |
//! | PV (data, cluster-scoped) | `atelier-data-<ns>-<ws>-<ds>-<hash>` ([`data_pv_name`]) |
//!
//! and the volume of a DataSource `<ds>` is `data-<ds>`. The `ws-` prefix makes the Service name a
//! DNS-1035 label (it must start with a letter) even when the Workspace name starts with a digit.
//!
//! Every derived name is an RFC 1123 label of at most 63 characters ([`dns_label`]). The plain
//! name is kept when it is a label and cannot be mistaken for a hashed one. Otherwise (too long,
//! or the Workspace name, a DNS subdomain, contains dots) the base is lowercased, characters
//! outside `[a-z0-9-]` become `-`, it is truncated, and `-<hash>` is appended, `<hash>` being hex
//! digits of the SHA-256 of the plain name, at least 8 and as many as make the name exactly 63
//! characters. A hashed name is therefore 63 characters ending in `-`, 8 or more hex digits and
//! the suffix, and a plain name of that shape is hashed too: a plain name is never a hashed one,
//! so different Workspaces never share a child name (two hashed ones only through a collision of
//! 32 bits of SHA-256). Names that were plain before stay as they were, except 63-character ones
//! of that shape.
//!
//! The per-user namespace ([`user_namespace`]) keeps its hashed names as short as they come (the
//! operator checks a Workspace's namespace against it, so lengthening them would orphan every
//! per-user namespace of a user name with `.` or `_`), but a plain namespace of a hashed one's
//! shape is hashed too, so it is injective in the same way. Label values ([`label_value`]) keep
//! the earlier rule: they select, they do not isolate.

use sha2::{Digest, Sha256};

use crate::config::user_domain::UserDomain;
pub use crate::config::user_domain::{MAX_LABEL, is_dns_label};

/// Hex digits of the hash appended to shortened names.
const HASH_LEN: usize = 8;

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

/// Whether `s` is a valid name for a new server under JupyterHub 6's rule
/// (`jupyterhub.slugs.is_valid_safe_slug`, applied by JupyterHub 6.1.1 to new named servers in
/// `handlers/base.py` and `user.py`): 1 to 30 characters of `[a-z0-9-]`, starting with a letter,
/// ending with a letter or digit, no `--`.
pub fn is_jupyterhub_server_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= JUPYTERHUB_SERVER_NAME_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

/// Longest server name of JupyterHub 6's rule (`jupyterhub.slugs._max_length`: two of them
/// joined with `--` fit a DNS label).
pub const JUPYTERHUB_SERVER_NAME_MAX: usize = 30;

/// Which names a new server may take (`atelier hub --server-name-rule`). Servers named before
/// keep their names either way, as JupyterHub 6 keeps servers named before its rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerNameRule {
    /// JupyterHub 6's: 1 to 30 characters of a-z, 0-9 and single '-', starting with a letter and
    /// ending with a letter or digit ([`is_jupyterhub_server_name`]).
    #[default]
    Jupyterhub,
    /// Any RFC 1123 label: 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a
    /// letter or digit ([`is_dns_label`]).
    DnsLabel,
}

/// Names no new server may take: `dask` is the path of the default server's Dask dashboard
/// (`/user/<name>/dask/`, [`DASHBOARD_SEGMENT`]).
pub const RESERVED_SERVER_NAMES: &[&str] = &[DASHBOARD_SEGMENT];

/// The key of a server's handle (its `spawner_state`) naming where its Dask dashboard is
/// reached (`http://host:port`), when it has one: the proxy routes the server's
/// [`DASHBOARD_SEGMENT`] path there. Both backends write it into their handles.
pub const DASHBOARD_KEY: &str = "dask_dashboard";

/// The path segment of a server's Dask dashboard, under the server's prefix:
/// `/user/<name>/[<server>/]dask/` (hence no server may be named `dask`).
pub const DASHBOARD_SEGMENT: &str = "dask";

/// Where the proxy reaches the Dask dashboard of the server behind `handle`, if it has one.
pub fn dashboard_target(handle: &serde_json::Value) -> Option<&str> {
    handle
        .get(DASHBOARD_KEY)
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty())
}

impl ServerNameRule {
    /// Whether `name` may name a new server under the rule (never the empty default server's
    /// name; [`RESERVED_SERVER_NAMES`] are refused apart, by name).
    pub fn allows(self, name: &str) -> bool {
        match self {
            ServerNameRule::Jupyterhub => is_jupyterhub_server_name(name),
            ServerNameRule::DnsLabel => is_dns_label(name),
        }
    }

    /// The rule as an HTML `pattern` (anchored by the browser) with the longest name, for the
    /// home page's "New named server" field: the browser refuses what the hub would.
    pub fn html_pattern(self) -> (&'static str, usize) {
        match self {
            ServerNameRule::Jupyterhub => ("[a-z](-?[a-z0-9])*", 30),
            ServerNameRule::DnsLabel => ("[a-z0-9]([a-z0-9\\-]*[a-z0-9])?", MAX_LABEL),
        }
    }

    /// The rule in words, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            ServerNameRule::Jupyterhub => {
                "JupyterHub's rule (--server-name-rule jupyterhub): 1 to 30 characters of a-z, \
                 0-9 and single '-', starting with a letter and ending with a letter or digit"
            }
            ServerNameRule::DnsLabel => {
                "a DNS label (--server-name-rule dns-label): 1 to 63 characters of a-z, 0-9 and \
                 '-', starting and ending with a letter or digit"
            }
        }
    }
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

/// Name of the PersistentVolumeClaim of DataSource `data_source` for Workspace `workspace`
/// (a CSI source mounted through a statically provisioned volume). The pair is joined with `/`,
/// which is in neither name, so the name is always the hashed form of `data-<ws>/<ds>`
/// (`data-<ws>-<ds>-<hash>`, 63 characters): two pairs never share it, even where `-` joins
/// would (`a-b` + `c`, `a` + `b-c`).
pub fn data_claim_name(workspace: &str, data_source: &str) -> String {
    dns_label("data-", &format!("{workspace}/{data_source}"), "")
}

/// Name of the PersistentVolume behind [`data_claim_name`]: PersistentVolumes are
/// cluster-scoped, so the Workspace's namespace is part of it (`atelier-data-<ns>-<ws>-<ds>-<hash>`,
/// hashed from `<ns>/<ws>/<ds>` as above).
pub fn data_pv_name(namespace: &str, workspace: &str, data_source: &str) -> String {
    dns_label(
        "atelier-data-",
        &format!("{namespace}/{workspace}/{data_source}"),
        "",
    )
}

/// Most characters of a DaskCluster's name: the dask-kubernetes operator names its children
/// after it (`<name>-scheduler`, `<name>-default`, `<name>-default-worker-<10 hex>`), and
/// Atelier's peers table records that it refuses longer names.
pub const DASK_CLUSTER_NAME_MAX: usize = 53;

/// Name of a workspace's `DaskCluster`: `ws-<workspace>-dask` when that is an RFC 1123 label of
/// at most [`DASK_CLUSTER_NAME_MAX`] characters (and cannot be mistaken for a hashed name),
/// else `ws-<head>-<hash>-dask` of exactly that length, as the other children's hashed names.
pub fn dask_cluster_name(workspace: &str) -> String {
    const PREFIX: &str = "ws-";
    const SUFFIX: &str = "-dask";
    let plain = format!("{PREFIX}{workspace}{SUFFIX}");
    if is_dns_label(&plain)
        && plain.len() <= DASK_CLUSTER_NAME_MAX
        && !(plain.len() == DASK_CLUSTER_NAME_MAX && looks_hashed(&plain, SUFFIX))
    {
        return plain;
    }
    let sanitized: String = workspace
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let budget = DASK_CLUSTER_NAME_MAX - PREFIX.len() - SUFFIX.len() - HASH_LEN - 1;
    let head: String = sanitized.chars().take(budget).collect();
    let mut name = format!("{PREFIX}{}", head.trim_end_matches('-'));
    if !name.ends_with('-') {
        name.push('-');
    }
    let digits = DASK_CLUSTER_NAME_MAX - name.len() - SUFFIX.len();
    let mut hash = hex::encode(Sha256::digest(plain.as_bytes()));
    hash.truncate(digits);
    name.push_str(&hash);
    name.push_str(SUFFIX);
    name
}

/// The URL prefix of a server: `/user/<user>/` or `/user/<user>/<server>/`
/// (`JUPYTERHUB_SERVICE_PREFIX`, the path the proxy routes to it).
pub fn service_prefix(user: &str, server_name: &str) -> String {
    if server_name.is_empty() {
        format!("/user/{user}/")
    } else {
        format!("/user/{user}/{server_name}/")
    }
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded (a path segment).
pub fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL path of a server: `/user/<user>/` or `/user/<user>/<server>/`, each name a
/// percent-encoded path segment ([`escape_segment`]).
pub fn server_url(user: &str, server: &str) -> String {
    service_prefix(&escape_segment(user), &escape_segment(server))
}

/// The OAuth redirect URI registered for a server, also given to it as
/// `JUPYTERHUB_OAUTH_CALLBACK_URL` (the single-user server sends it verbatim, and it must match):
/// `<public_url>/user/<u>/[<s>/]oauth_callback`, as the operator computes it.
pub fn oauth_callback_url(public_url: &str, user: &str, server: &str) -> String {
    format!(
        "{}{}oauth_callback",
        public_url.trim_end_matches('/'),
        server_url(user, server)
    )
}

/// [`oauth_callback_url`] from the site's public URL and user domain alone (the hub, its
/// adoption of admin-made Workspaces, the operator): on the user's origin when there is a user
/// domain and the user has a host under it.
pub fn site_oauth_callback_url(
    public_url: &str,
    user_domain: Option<&UserDomain>,
    user: &str,
    server: &str,
) -> String {
    match user_domain.and_then(|d| d.origin(public_url, user).ok()) {
        Some(origin) => oauth_callback_url(&origin, user, server),
        None => oauth_callback_url(public_url, user, server),
    }
}

/// Longest user, server or group name the store keeps.
pub const MAX_NAME_LEN: usize = 255;

/// `name` as the store keeps it (ASCII lowercase), or why it is refused: longer than
/// [`MAX_NAME_LEN`], or with a character outside ASCII, a control character, whitespace or `/`.
///
/// The hub's rules for new names ([`is_valid_user_name`], [`ServerNameRule`]) are stricter;
/// these are the ones every write obeys, so that no two names can ever map to the same
/// Kubernetes object name through case folding (the class of KubeSpawner's CVE-2020-15110).
pub fn normalize_name(what: &str, name: &str) -> Result<String, String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || c.is_ascii_whitespace() || *c == '/')
    {
        return Err(format!(
            "{what} name {name:?} contains {c:?}: only ASCII without spaces or '/' is allowed"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Whether `name` can name an existing user or server (`what`), or the message saying why not:
/// what the store accepts ([`normalize_name`]), not empty for a user, and not `.`, `..` or a
/// name with `\` (path segments). Names of new users and servers must also pass the stricter
/// rules above.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if what == "user" && name.is_empty() {
        return Err("user name is empty".into());
    }
    if name == "." || name == ".." || name.contains('\\') {
        return Err(format!(
            "invalid {what} name {name:?}: path segments are not names"
        ));
    }
    normalize_name(what, name)
        .map(drop)
        .map_err(|m| format!("invalid {m}"))
}

/// The per-user namespace `<prefix><user>`, shortened and hashed (`-` and 8 hex digits) when that
/// is not an RFC 1123 label (user names may contain `.` and `_`), or when it already ends in `-`
/// and 8 or more hex digits: otherwise user `alice-smith-<hash>` could pick the name that
/// `alice.smith`'s hashed namespace has (the hash is no secret) and share her namespace. So a
/// plain namespace never has the shape of a hashed one, and two users share one only through a
/// 32-bit collision of SHA-256. Hashed namespaces are as they were before that rule; only user
/// names ending in `-` and 8 or more hex digits moved.
pub fn user_namespace(prefix: &str, user: &str) -> String {
    let plain = format!("{prefix}{user}");
    if is_dns_label(&plain) && !looks_hashed(&plain, "") {
        return plain;
    }
    hashed_label(prefix, user, "", &plain, false)
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

/// `<prefix><base><suffix>` when that is an RFC 1123 label that cannot be mistaken for a hashed
/// name, else the hashed form described in the module documentation (exactly 63 characters).
/// `prefix` and `suffix` must be label characters.
pub fn dns_label(prefix: &str, base: &str, suffix: &str) -> String {
    let plain = format!("{prefix}{base}{suffix}");
    if is_dns_label(&plain) && !(plain.len() == MAX_LABEL && looks_hashed(&plain, suffix)) {
        return plain;
    }
    hashed_label(prefix, base, suffix, &plain, true)
}

/// The name of a user's batch job (the BatchJob's, hence the Kubernetes Job's): `<user>-<suffix>`
/// as an RFC 1123 label ([`dns_label`]: a user name that is not a label, or too long, is
/// sanitized and hashed). `suffix` is a few random label characters (lowercase letters and
/// digits) the caller draws.
pub fn job_name(user: &str, suffix: &str) -> String {
    dns_label("", user, &format!("-{suffix}"))
}

/// Whether `name` has the shape of a hashed name: `-`, at least [`HASH_LEN`] hex digits, then
/// `suffix`, at its end.
fn looks_hashed(name: &str, suffix: &str) -> bool {
    let Some(rest) = name.strip_suffix(suffix) else {
        return false;
    };
    let hex = rest
        .bytes()
        .rev()
        .take_while(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        .count();
    hex >= HASH_LEN && rest[..rest.len() - hex].ends_with('-')
}

/// `<prefix><head>-<hash><suffix>`: `head` the sanitized, truncated `base`, `hash` the first hex
/// digits of the SHA-256 of `plain`: [`HASH_LEN`] of them, or (`fill`) as many as make the name
/// 63 characters long.
fn hashed_label(prefix: &str, base: &str, suffix: &str, plain: &str, fill: bool) -> String {
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
    if name.is_empty() && fill {
        // A hashed name starts with a letter and has its `-` before the hash.
        name.push('h');
    }
    if !name.is_empty() && !name.ends_with('-') {
        name.push('-');
    }
    let digits = if fill {
        MAX_LABEL.saturating_sub(name.len() + suffix.len())
    } else {
        HASH_LEN
    };
    let mut hash = hex::encode(Sha256::digest(plain.as_bytes()));
    hash.truncate(digits.max(HASH_LEN));
    name.push_str(&hash);
    name.push_str(suffix);
    name
}

// ---- names of a user's server ------------------------------------------------------------------

/// Separates the user from the server where the alphabet allows it: in no user or server name.
pub const PAIR_SEPARATOR: char = '~';

/// The OAuth client id of `user`'s server `server`: `jupyterhub-user-<user>` for the default
/// server (JupyterHub's), `jupyterhub-user-<user>~<server>` for a named one (module
/// documentation). Also the cookie name of the server's OAuth session (jupyterhub-singleuser
/// names its cookie after `JUPYTERHUB_CLIENT_ID`).
pub fn oauth_client_id(user: &str, server: &str) -> String {
    format!("jupyterhub-user-{}", server_file_stem(user, server))
}

/// `<user>` for the default server, `<user>~<server>` for a named one: injective, for names in
/// an alphabet with `~` (the local backend's log file `<stem>.log`).
pub fn server_file_stem(user: &str, server: &str) -> String {
    if server.is_empty() {
        user.to_owned()
    } else {
        format!("{user}{PAIR_SEPARATOR}{server}")
    }
}

/// The DNS label of `user`'s server `server` (the Workspace name): the escaped pair described in
/// the module documentation, through [`dns_label`] (plain up to 62 characters, hashed beyond).
pub fn server_label(user: &str, server: &str) -> String {
    let mut plain = escape_label_part(user);
    if !server.is_empty() {
        let leading_digit = server.as_bytes()[0].is_ascii_digit();
        plain.push_str(if leading_digit { "---" } else { "--" });
        plain.push_str(&escape_label_part(server));
    }
    dns_label("", &plain, "")
}

/// A user or server name in `[a-z0-9-]`: letters and digits as they are, a single `-` as it is,
/// any other run of other characters as `--` + one digit per character (`-` 0, `.` 1, `_` 2,
/// anything else 3) + `-`.
fn escape_label_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        match run.as_str() {
            "" => {}
            "-" => out.push('-'),
            _ => {
                out.push_str("--");
                out.extend(run.chars().map(|c| match c {
                    '-' => '0',
                    '.' => '1',
                    '_' => '2',
                    _ => '3',
                }));
                out.push('-');
            }
        }
        run.clear();
    };
    for c in name.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            flush(&mut run, &mut out);
            out.push(c);
        } else {
            run.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
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
    #[test]
    fn dask_cluster_names_fit_53_characters_and_hash_when_long() {
        assert_eq!(dask_cluster_name("alice"), "ws-alice-dask");
        let long = "a".repeat(60);
        let hashed = dask_cluster_name(&long);
        assert_eq!(hashed.len(), DASK_CLUSTER_NAME_MAX, "{hashed}");
        assert!(is_dns_label(&hashed) && hashed.starts_with("ws-aaa") && hashed.ends_with("-dask"));
        assert_ne!(hashed, dask_cluster_name(&"a".repeat(61)));
        // A name that fits exactly stays plain; one with odd characters is hashed.
        let fits = "x".repeat(DASK_CLUSTER_NAME_MAX - 8);
        assert_eq!(dask_cluster_name(&fits), format!("ws-{fits}-dask"));
        let odd = dask_cluster_name("Alice.Smith");
        assert!(
            is_dns_label(&odd) && odd.len() == DASK_CLUSTER_NAME_MAX,
            "{odd}"
        );
        assert!(odd.starts_with("ws-alice-smith-"), "{odd}");
        // A plain name of the hashed shape is hashed too: no two workspaces share a name.
        let shaped = &hashed[3..hashed.len() - 5];
        assert_ne!(dask_cluster_name(shaped), hashed);
        assert_eq!(dask_cluster_name(shaped).len(), DASK_CLUSTER_NAME_MAX);
    }

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
    fn data_claim_and_volume_names_tell_every_triple_apart() {
        let claim = data_claim_name("alice", "argo-floats");
        assert!(claim.starts_with("data-alice-argo-floats-"), "{claim}");
        let pv = data_pv_name("atelier", "alice", "argo-floats");
        assert!(
            pv.starts_with("atelier-data-atelier-alice-argo-floats-"),
            "{pv}"
        );
        assert_eq!(
            data_claim_name("alice", "argo-floats"),
            claim,
            "deterministic"
        );
        let long = "x".repeat(253);
        let claims = [
            claim.clone(),
            data_claim_name("a-b", "c"),
            data_claim_name("a", "b-c"),
            data_claim_name("a.b", "c"),
            data_claim_name("a", "b.c"),
            data_claim_name(&long, "c"),
            data_claim_name(&long, "d"),
        ];
        let pvs = [
            pv.clone(),
            data_pv_name("atelier-u-alice", "alice", "argo-floats"),
            data_pv_name("a-b", "c", "d"),
            data_pv_name("a", "b-c", "d"),
            data_pv_name("a", "b", "c.d"),
            data_pv_name("a", "b.c", "d"),
            data_pv_name("atelier", &long, "d"),
        ];
        for names in [&claims[..], &pvs[..]] {
            let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
            assert_eq!(distinct.len(), names.len(), "{names:?}");
            for n in names {
                assert!(is_dns_label(n), "{n}");
                assert_eq!(n.len(), 63, "{n}");
            }
        }
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
        // Hashed names fill the 63 characters with hash digits: no plain name is one.
        assert_eq!(dotted.len(), 63);
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

    #[test]
    fn plain_names_shaped_like_hashed_ones_are_hashed() {
        // A Workspace named like the hashed child name of another cannot take that name.
        let long = format!("{}.x", "a".repeat(70));
        let hashed = pod_name(&long);
        assert_eq!(hashed.len(), 63);
        assert!(looks_hashed(&hashed, ""), "{hashed}");
        let mimic = hashed.strip_prefix("ws-").unwrap();
        assert_ne!(pod_name(mimic), hashed);
        assert!(is_dns_label(&pod_name(mimic)));
        // Same for a suffixed name.
        let secret = secret_name(&long);
        let mimic = secret
            .strip_prefix("ws-")
            .and_then(|s| s.strip_suffix("-token"))
            .unwrap();
        assert_ne!(secret_name(mimic), secret);
        // 63 plain characters that do not end in `-<hex>` stay plain.
        let plain = format!("ws-{}", "g".repeat(60));
        assert_eq!(pod_name(&"g".repeat(60)), plain);
        // Per-user namespaces keep the earlier hashed names...
        let ns = user_namespace("atelier-u-", "alice.smith");
        assert_eq!(ns.len(), "atelier-u-alice-smith-".len() + 8, "{ns}");
        // ... and a user named after one does not get it.
        let mimic = ns.strip_prefix("atelier-u-").unwrap();
        assert!(is_valid_user_name(mimic), "{mimic}");
        let theirs = user_namespace("atelier-u-", mimic);
        assert_ne!(theirs, ns);
        assert!(is_dns_label(&theirs), "{theirs}");
        assert_eq!(user_namespace("atelier-u-", "bob-12"), "atelier-u-bob-12");
        assert_eq!(
            user_namespace("atelier-u-", "team-cafe"),
            "atelier-u-team-cafe"
        );
    }

    #[test]
    fn server_name_rules() {
        let cases: &[(&str, bool, bool)] = &[
            // (name, JupyterHub's rule, DNS label)
            ("gpu", true, true),
            ("my-server-2", true, true),
            ("a", true, true),
            ("2gpu", false, true),
            ("a--b", false, true),
            ("gpu-", false, false),
            ("-gpu", false, false),
            ("Gpu", false, false),
            ("a.b", false, false),
            ("a_b", false, false),
            (&"x".repeat(30), true, true),
            (&"x".repeat(31), false, true),
            (&"x".repeat(63), false, true),
            (&"x".repeat(64), false, false),
        ];
        for (name, jupyterhub, dns) in cases {
            assert_eq!(
                ServerNameRule::Jupyterhub.allows(name),
                *jupyterhub,
                "{name:?}"
            );
            assert_eq!(ServerNameRule::DnsLabel.allows(name), *dns, "{name:?}");
        }
        assert!(!ServerNameRule::Jupyterhub.allows(""));
        // The home page's HTML pattern (the browser anchors it) agrees with each rule, on the
        // table and on every name of 1 to 4 characters of a, 1 and '-'.
        let every = all_names(b"a1-", 4, |_| true);
        for rule in [ServerNameRule::Jupyterhub, ServerNameRule::DnsLabel] {
            let (pattern, max) = rule.html_pattern();
            let html = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
            let names = cases
                .iter()
                .map(|c| c.0)
                .chain(every.iter().map(String::as_str));
            for name in names {
                let browser = html.is_match(name) && name.len() <= max;
                assert_eq!(browser, rule.allows(name), "{rule:?} {name:?}");
            }
        }
    }

    /// Every string of `alphabet` of 1 to `max` characters that `valid` accepts.
    fn all_names(alphabet: &[u8], max: usize, valid: fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut layer = vec![String::new()];
        for _ in 0..max {
            layer = layer
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{}", *c as char)))
                .collect();
            out.extend(layer.iter().filter(|n| valid(n)).cloned());
        }
        out
    }

    /// Every name derived from a (user, server) pair, by family.
    #[allow(clippy::type_complexity)]
    const FAMILIES: &[(&str, fn(&str, &str) -> String)] = &[
        ("OAuth client id", oauth_client_id),
        ("local log file", server_file_stem),
        ("Workspace", server_label),
        ("Pod, Service, NetworkPolicy", |u, s| {
            pod_name(&server_label(u, s))
        }),
        ("Secret", |u, s| secret_name(&server_label(u, s))),
        ("home PVC", |u, s| home_claim_name(&server_label(u, s))),
    ];

    /// Checks that no two of `pairs` share a name of any family, and that Kubernetes names
    /// are labels.
    fn assert_injective(pairs: &[(String, String)]) {
        for (family, derive) in FAMILIES {
            let mut seen: std::collections::HashMap<String, &(String, String)> =
                std::collections::HashMap::with_capacity(pairs.len());
            for pair in pairs {
                let name = derive(&pair.0, &pair.1);
                if !matches!(*family, "OAuth client id" | "local log file") {
                    assert!(is_dns_label(&name), "{family} {name:?} of {pair:?}");
                }
                if let Some(other) = seen.insert(name.clone(), pair) {
                    assert_eq!(
                        other, pair,
                        "{family}: {other:?} and {pair:?} are both {name:?}"
                    );
                }
            }
        }
    }

    /// A small deterministic generator (xorshift64*), so that a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }

        /// A valid name of 1 to 63 characters of `alphabet`.
        fn name(&mut self, alphabet: &[u8], valid: fn(&str) -> bool) -> String {
            let len = 1 + self.below(MAX_LABEL);
            loop {
                let name: String = (0..len)
                    .map(|_| alphabet[self.below(alphabet.len())] as char)
                    .collect();
                if valid(&name) {
                    return name;
                }
            }
        }
    }

    #[test]
    fn names_of_distinct_servers_never_collide_exhaustively() {
        // Every user name of up to 5 characters of `a0-._` (626) with every server name of up
        // to 5 characters of `a0-` and the default server (163): 102,038 pairs.
        let users = all_names(b"a0-._", 5, is_valid_user_name);
        let mut servers = all_names(b"a0-", 5, is_dns_label);
        servers.push(String::new());
        assert_eq!((users.len(), servers.len()), (626, 163));
        let pairs: Vec<(String, String)> = users
            .iter()
            .flat_map(|u| servers.iter().map(move |s| (u.clone(), s.clone())))
            .collect();
        assert_injective(&pairs);
    }

    #[test]
    fn names_of_distinct_servers_never_collide_when_long() {
        // Random pairs up to the longest names, many of them truncated and hashed, with
        // look-alikes: a second user whose name is the first pair's Workspace name, and pairs
        // that differ in one character.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut pairs = Vec::new();
        for _ in 0..4000 {
            let user = rng.name(b"ab09-._", is_valid_user_name);
            let server = match rng.below(3) {
                0 => String::new(),
                _ => rng.name(b"ab09-", is_dns_label),
            };
            let ws = server_label(&user, &server);
            if server.len() > 1 {
                let mut twin = server.clone();
                twin.replace_range(1..2, if &server[1..2] == "a" { "b" } else { "a" });
                if is_dns_label(&twin) {
                    pairs.push((user.clone(), twin));
                }
            }
            // Someone named like this pair's Workspace (a hashed one too) gets another name.
            if is_valid_user_name(&ws) && (ws.as_str(), server.as_str()) != (user.as_str(), "") {
                assert_ne!(server_label(&ws, ""), ws, "{user:?} {server:?}");
                pairs.push((ws, String::new()));
            }
            pairs.push((user, server));
        }
        pairs.sort();
        pairs.dedup();
        assert!(
            pairs
                .iter()
                .filter(|(u, s)| server_label(u, s).len() == 63)
                .count()
                > 1000,
            "many hashed names"
        );
        assert_injective(&pairs);
    }

    #[test]
    fn server_labels_decode_to_their_pair() {
        let cases: &[(&str, &str, &str)] = &[
            ("alice", "", "alice"),
            ("alice", "gpu", "alice--gpu"),
            ("p-q", "", "p-q"),
            ("p", "q", "p--q"),
            ("alice.smith", "", "alice--1-smith"),
            ("alice_smith", "x", "alice--2-smith--x"),
            ("a--b", "", "a--00-b"),
            ("a._-b", "", "a--120-b"),
            ("a", "b--c", "a--b--00-c"),
            ("a", "2x", "a---2x"),
        ];
        for (user, server, want) in cases {
            assert_eq!(server_label(user, server), *want, "{user:?} {server:?}");
        }
        assert_eq!(oauth_client_id("p", "q"), "jupyterhub-user-p~q");
        assert_eq!(oauth_client_id("p-q", ""), "jupyterhub-user-p-q");
        assert_eq!(server_file_stem("p", "q"), "p~q");
    }

    #[test]
    fn server_urls_escape_their_segments_and_callbacks_follow_the_user_domain() {
        assert_eq!(escape_segment("a b/c~d"), "a%20b%2Fc~d");
        assert_eq!(server_url("alice", ""), "/user/alice/");
        assert_eq!(server_url("alice", "x y"), "/user/alice/x%20y/");
        assert_eq!(
            oauth_callback_url("https://vre.example.org/", "alice", "gpu"),
            "https://vre.example.org/user/alice/gpu/oauth_callback"
        );
        assert_eq!(
            oauth_callback_url("", "alice", ""),
            "/user/alice/oauth_callback"
        );
        let domain = UserDomain::parse("users.example.org").expect("a domain");
        assert_eq!(
            site_oauth_callback_url("https://vre.example.org:8443", Some(&domain), "alice", ""),
            "https://alice.users.example.org:8443/user/alice/oauth_callback"
        );
        // A name with no host under the domain keeps the site's origin.
        let long = "a.".repeat(40) + "b";
        assert_eq!(
            site_oauth_callback_url("https://vre.example.org", Some(&domain), &long, ""),
            oauth_callback_url("https://vre.example.org", &long, "")
        );
    }

    #[test]
    fn names_of_existing_users_and_servers_are_checked_as_the_store_keeps_them() {
        assert_eq!(normalize_name("user", "Alice").as_deref(), Ok("alice"));
        assert!(check_name("server", "").is_ok());
        assert_eq!(check_name("user", ""), Err("user name is empty".to_owned()));
        for bad in [".", "..", "a\\b"] {
            let e = check_name("server", bad).expect_err(bad);
            assert!(e.contains("path segments are not names"), "{e}");
        }
        for bad in ["a/b", "a b", "ålice", &"a".repeat(MAX_NAME_LEN + 1)] {
            let e = check_name("user", bad).expect_err(bad);
            assert!(e.starts_with("invalid user name"), "{e}");
        }
    }
}
