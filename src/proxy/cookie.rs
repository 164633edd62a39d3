//! The login cookie of a single-user server (`jupyterhub-user-…`), which the proxy reads to
//! authorize a request to that server.

/// The API token inside a single-user server's login cookie (`jupyterhub-user-<name>…`, set by
/// `HubOAuth.set_cookie` in `jupyterhub/services/auth.py` with tornado's `set_secure_cookie`,
/// whose version-2 value is `2|1:0|<len>:<timestamp>|<len>:<name>|<len>:<base64 value>|<sig>`).
/// The value is signed, not encrypted: the token is read without the server's secret, and the
/// proxy trusts it only as far as the hub's database does (an unknown or revoked token is no
/// credential). `None` for any other shape.
pub fn oauth_cookie_token(value: &str) -> Option<String> {
    let value = value.trim_matches('"');
    let mut rest = value.strip_prefix("2|")?;
    let mut fields = Vec::with_capacity(4);
    for _ in 0..4 {
        let (len, tail) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let field = tail.get(..len)?;
        rest = tail.get(len..)?.strip_prefix('|')?;
        fields.push(field);
    }
    let token = String::from_utf8(base64_decode(fields[3])?).ok()?;
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// Standard base64 with padding, as tornado writes the value.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
            3 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]),
            2 => out.push((n >> 16) as u8),
            _ => return None,
        }
    }
    Some(out)
}

/// Whether a cookie may be a single-user server's login cookie (`jupyterhub-user-…`, with
/// `__Host-` when the server uses that prefix). Its OAuth state cookies (`…-oauth-state[-…]`)
/// match too: their names cannot be told from the login cookie of a user whose name ends so,
/// and their values are no token, so they count as no credential.
pub fn is_oauth_cookie_name(name: &str) -> bool {
    let name = name.strip_prefix("__Host-").unwrap_or(name);
    name.starts_with("jupyterhub-user-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_of_a_tornado_signed_cookie() {
        // tornado.web.create_signed_value(b"secret", "jupyterhub-user-alice", "t0k3n") (v2).
        let v = "2|1:0|10:1733480000|21:jupyterhub-user-alice|8:dDBrM24=|0123abcd";
        assert_eq!(oauth_cookie_token(v).as_deref(), Some("t0k3n"));
        assert_eq!(
            oauth_cookie_token(&format!("\"{v}\"")).as_deref(),
            Some("t0k3n")
        );
        for bad in [
            "",
            "t0k3n",
            "1|1:0|10:1733480000|21:jupyterhub-user-alice|8:dDBrM24=|x",
            "2|1:0|10:1733480000|21:jupyterhub-user-alice|9:dDBrM24=|x",
            "2|1:0|10:1733480000|21:jupyterhub-user-alice|8:!!!!!!!!|x",
        ] {
            assert_eq!(oauth_cookie_token(bad), None, "{bad:?}");
        }
        assert!(is_oauth_cookie_name("jupyterhub-user-alice"));
        assert!(is_oauth_cookie_name("__Host-jupyterhub-user-alice-gpu"));
        assert!(is_oauth_cookie_name("jupyterhub-user-alice~gpu"));
        // The login cookie of user `x-oauth-state` (a state cookie's value is no token).
        assert!(is_oauth_cookie_name("jupyterhub-user-x-oauth-state"));
        assert!(!is_oauth_cookie_name("atelier-session"));
        assert!(!is_oauth_cookie_name("_xsrf"));
    }
}
