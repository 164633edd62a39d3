//! Pure request helpers: parsing `/user/<name>/[<server>/]` paths, percent-encoding, browser
//! detection, credential extraction and the hop-by-hop header rules. No I/O.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};

/// The prefix of user servers' paths.
pub const USER_PREFIX: &str = "/user/";

/// The hub's browser session cookie (set by the hub with `Path=/`).
pub const SESSION_COOKIE: &str = "atelier-session";

/// A path under `/user/`: the owner and the first segment after the owner's name, the
/// candidate name of a named server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPath<'a> {
    /// The owner, percent-decoded.
    pub user: Cow<'a, str>,
    /// The segment after the owner, percent-decoded; `None` when the path ends at the owner
    /// (`/user/alice` or `/user/alice/`).
    pub segment: Option<Cow<'a, str>>,
}

/// Parses `/user/<name>[/<segment>[/...]]`. `None` for any other path, and for `/user/` without
/// a name (those go to the hub).
pub fn parse_user_path(path: &str) -> Option<UserPath<'_>> {
    let rest = path.strip_prefix(USER_PREFIX)?;
    let (user, rest) = match rest.split_once('/') {
        Some((user, rest)) => (user, rest),
        None => (rest, ""),
    };
    if user.is_empty() {
        return None;
    }
    let segment = rest.split('/').next().filter(|s| !s.is_empty());
    Some(UserPath {
        user: percent_decode(user),
        segment: segment.map(percent_decode),
    })
}

/// The server whose Dask dashboard a path under `/user/` names:
/// `/user/<name>/dask[/…]` is the default server's (`Some("")`), `/user/<name>/<server>/dask[/…]`
/// the named server's (`policy::names::DASHBOARD_SEGMENT`; no server is named `dask`). `None` for any
/// other path.
pub fn dashboard_server(path: &str) -> Option<Cow<'_, str>> {
    let rest = path.strip_prefix(USER_PREFIX)?;
    let mut segments = rest.split('/').skip(1);
    let first = segments.next().filter(|s| !s.is_empty())?;
    let dask = crate::policy::names::DASHBOARD_SEGMENT;
    if percent_decode(first) == dask {
        return Some(Cow::Borrowed(""));
    }
    match segments.next() {
        Some(second) if percent_decode(second) == dask => Some(percent_decode(first)),
        _ => None,
    }
}

/// Decodes `%XX` escapes; the input itself when it has none or when the result would not be
/// UTF-8 (then no name can match it anyway).
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(_) => Cow::Borrowed(s),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters: a query value (`next=`).
pub fn encode_component(s: &str) -> String {
    encode(s, |_| false)
}

/// Percent-encodes a path segment: unreserved characters and sub-delimiters stay, `/`, `?`,
/// `#`, `%` and the rest are escaped.
pub fn encode_segment(s: &str) -> String {
    encode(s, |b| b"!$&'()*+,;=:@".contains(&b))
}

fn encode(s: &str, also_safe: impl Fn(u8) -> bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || also_safe(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

/// The path and query of `uri` as the client sent them (`/` when it had none).
pub fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// The hub's spawn page for a server: `/hub/spawn/<user>[/<server>]?next=<original>`.
pub fn spawn_url(user: &str, server: &str, original: &str) -> String {
    let mut url = format!("/hub/spawn/{}", encode_segment(user));
    if !server.is_empty() {
        url.push('/');
        url.push_str(&encode_segment(server));
    }
    url.push_str("?next=");
    url.push_str(&encode_component(original));
    url
}

/// The hub's login page: `/hub/login?next=<original>`.
pub fn login_url(original: &str) -> String {
    format!("/hub/login?next={}", encode_component(original))
}

/// `user` or `user/server`, as messages name a server.
pub fn server_label(user: &str, server: &str) -> String {
    if server.is_empty() {
        user.to_owned()
    } else {
        format!("{user}/{server}")
    }
}

/// Whether the request is a browser's page load: a GET (or HEAD) accepting HTML. Those get
/// redirects; API clients get JSON errors.
pub fn is_browser_navigation(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")))
}

/// A credential presented with a request. Its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// An API token (`Authorization: token|Bearer <t>` or `?token=<t>`).
    Token(String),
    /// The value of the hub's session cookie.
    Session(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, value) = match self {
            Credential::Token(v) => ("Token", v),
            Credential::Session(v) => ("Session", v),
        };
        write!(f, "{kind}(<{} characters>)", value.len())
    }
}

/// The credentials of a request, in the order JupyterHub tries them: the `Authorization`
/// header, the `token` query parameter, the session cookie.
pub fn credentials(uri: &Uri, headers: &HeaderMap) -> Vec<Credential> {
    let mut out = Vec::new();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(authorization_token)
    {
        out.push(Credential::Token(token.to_owned()));
    }
    if let Some(token) = uri.query().and_then(query_token) {
        out.push(Credential::Token(token));
    }
    if let Some(session) = session_cookie(headers) {
        out.push(Credential::Session(session.to_owned()));
    }
    out
}

/// The credentials of a request on a user's host (`--user-domain`): the tokens of
/// [`credentials`], then the tokens in the single-user server's login cookies
/// ([`super::cookie::oauth_cookie_token`]). Not the hub's session cookie: the hub never sets it
/// for that host, so one sent there was set by the user's server itself.
pub fn user_host_credentials(uri: &Uri, headers: &HeaderMap) -> Vec<Credential> {
    let mut out: Vec<Credential> = credentials(uri, headers)
        .into_iter()
        .filter(|c| matches!(c, Credential::Token(_)))
        .collect();
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'));
    for pair in cookies {
        if let Some((name, value)) = pair.trim().split_once('=')
            && super::cookie::is_oauth_cookie_name(name)
            && let Some(token) = super::cookie::oauth_cookie_token(value)
        {
            out.push(Credential::Token(token));
        }
    }
    out
}

/// The token of an `Authorization: token <t>` or `Bearer <t>` header.
fn authorization_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    ((scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
        && !token.is_empty())
    .then_some(token)
}

/// The `token` parameter of a query string, decoded (`+` is a space in a query).
fn query_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        (!value.is_empty()).then(|| percent_decode(&value.replace('+', " ")).into_owned())
    })
}

/// The value of the hub's session cookie, from any `Cookie` header.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value.trim_matches('"'))
        })
}

/// Removes the hub's session cookie from the `Cookie` headers, so that a user's server never
/// sees the hub credential of whoever visits it (the hub sets it with `Path=/`).
pub fn strip_session_cookie(headers: &mut HeaderMap) {
    let has_session = headers.get_all(header::COOKIE).iter().any(|v| {
        v.as_bytes()
            .windows(SESSION_COOKIE.len())
            .any(|w| w == SESSION_COOKIE.as_bytes())
    });
    if !has_session {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty() && pair.split_once('=').map_or(*pair, |(n, _)| n) != SESSION_COOKIE
        })
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Whether the request asks for a protocol upgrade (a WebSocket handshake): an `Upgrade`
/// header and `upgrade` among the `Connection` options.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case(option))
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded as they are.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers and those the `Connection` header names. With `upgrade`, the
/// `Upgrade` header stays and `Connection: upgrade` is set again: the handshake of a WebSocket.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|o| HeaderName::from_bytes(o.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(user: &str, segment: Option<&str>) -> Option<UserPath<'static>> {
        Some(UserPath {
            user: Cow::Owned(user.to_owned()),
            segment: segment.map(|s| Cow::Owned(s.to_owned())),
        })
    }

    #[test]
    fn dashboard_paths() {
        let d = |p| dashboard_server(p).map(Cow::into_owned);
        assert_eq!(d("/user/alice/dask/status"), Some(String::new()));
        assert_eq!(d("/user/alice/dask"), Some(String::new()));
        assert_eq!(d("/user/alice/gpu/dask/status"), Some("gpu".into()));
        assert_eq!(d("/user/alice/gpu/dask"), Some("gpu".into()));
        assert_eq!(d("/user/alice/g%70u/d%61sk/"), Some("gpu".into()));
        assert_eq!(d("/user/alice/gpu/lab/dask"), None);
        assert_eq!(d("/user/alice/lab"), None);
        assert_eq!(d("/user/alice/"), None);
        assert_eq!(d("/user/alice"), None);
        assert_eq!(d("/hub/user/alice/dask"), None);
    }

    #[test]
    fn user_paths() {
        assert_eq!(parse_user_path("/user/alice"), path("alice", None));
        assert_eq!(parse_user_path("/user/alice/"), path("alice", None));
        assert_eq!(
            parse_user_path("/user/alice/gpu"),
            path("alice", Some("gpu"))
        );
        assert_eq!(
            parse_user_path("/user/alice/gpu/lab/tree"),
            path("alice", Some("gpu"))
        );
        assert_eq!(
            parse_user_path("/user/al%40ice/x%2Dy/"),
            path("al@ice", Some("x-y"))
        );
        assert_eq!(parse_user_path("/user/"), None);
        assert_eq!(parse_user_path("/user"), None);
        assert_eq!(parse_user_path("/user//x"), None);
        assert_eq!(parse_user_path("/hub/user/alice"), None);
        assert_eq!(parse_user_path("/users/alice"), None);
    }

    #[test]
    fn decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz"), "a%zz");
        assert_eq!(percent_decode("%ff"), "%ff");
        assert_eq!(percent_decode("%41%42"), "AB");
    }

    #[test]
    fn spawn_and_login_urls() {
        assert_eq!(
            spawn_url("alice", "gpu", "/user/alice/gpu/lab?x=1&y=a b"),
            "/hub/spawn/alice/gpu?next=%2Fuser%2Falice%2Fgpu%2Flab%3Fx%3D1%26y%3Da%20b"
        );
        assert_eq!(
            spawn_url("al/ice", "", "/user/x/"),
            "/hub/spawn/al%2Fice?next=%2Fuser%2Fx%2F"
        );
        assert_eq!(login_url("/user/a/"), "/hub/login?next=%2Fuser%2Fa%2F");
        assert_eq!(server_label("alice", ""), "alice");
        assert_eq!(server_label("alice", "gpu"), "alice/gpu");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn browser_navigation_needs_get_and_html() {
        let html = headers(&[("accept", "text/html,application/xhtml+xml")]);
        assert!(is_browser_navigation(&Method::GET, &html));
        assert!(!is_browser_navigation(&Method::POST, &html));
        assert!(!is_browser_navigation(
            &Method::GET,
            &headers(&[("accept", "application/json")])
        ));
        assert!(!is_browser_navigation(&Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn credentials_in_jupyterhub_order() {
        let uri: Uri = "/user/a/?x=1&token=q%2Bt".parse().unwrap();
        let h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "other=1; atelier-session=sess; x=y"),
        ]);
        assert_eq!(
            credentials(&uri, &h),
            vec![
                Credential::Token("abc".into()),
                Credential::Token("q+t".into()),
                Credential::Session("sess".into()),
            ]
        );
        let h = headers(&[("authorization", "token  xyz ")]);
        assert_eq!(
            credentials(&"/".parse().unwrap(), &h),
            vec![Credential::Token("xyz".into())]
        );
        for bad in ["Basic abc", "token", "token ", "Bearer"] {
            let h = headers(&[("authorization", bad)]);
            assert!(
                credentials(&"/?token=".parse().unwrap(), &h).is_empty(),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_on_a_users_host() {
        let uri: Uri = "/user/a/?token=q".parse().unwrap();
        let h = headers(&[
            ("authorization", "token abc"),
            (
                "cookie",
                "atelier-session=sess; jupyterhub-user-a=\"2|1:0|10:1733480000|17:jupyterhub-user-a|8:dDBrM24=|ab\"; \
                 jupyterhub-user-a-oauth-state=2|1:0|10:1733480000|29:jupyterhub-user-a-oauth-state|4:eHl6|cd",
            ),
        ]);
        assert_eq!(
            user_host_credentials(&uri, &h),
            vec![
                Credential::Token("abc".into()),
                Credential::Token("q".into()),
                Credential::Token("t0k3n".into()),
                Credential::Token("xyz".into()),
            ]
        );
        let h = headers(&[("cookie", "atelier-session=sess")]);
        assert!(user_host_credentials(&"/".parse().unwrap(), &h).is_empty());
        // (The state cookie's value above, `xyz`, is no token: the database knows no such one.)
    }

    #[test]
    fn credentials_never_print_their_value() {
        let shown = format!("{:?}", Credential::Token("s3cr3t".into()));
        assert_eq!(shown, "Token(<6 characters>)");
    }

    #[test]
    fn session_cookie_is_stripped_and_others_kept() {
        let mut h = headers(&[
            ("cookie", "a=1; atelier-session=s"),
            ("cookie", "atelier-session-x=2"),
        ]);
        strip_session_cookie(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; atelier-session-x=2");
        let mut h = headers(&[("cookie", "atelier-session=s")]);
        strip_session_cookie(&mut h);
        assert!(!h.contains_key(header::COOKIE));
        let mut h = headers(&[("cookie", "a=1")]);
        strip_session_cookie(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
    }

    #[test]
    fn hop_by_hop_headers_go_except_for_upgrades() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        assert!(!is_upgrade(&h));
        remove_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);

        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }
}
