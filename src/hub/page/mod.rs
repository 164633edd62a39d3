//! What every page shares, below the pages (`views`) and the login, OAuth and OIDC flows
//! (`auth`) alike: rendering ([`Page`]), the pages' errors ([`PageError`]), redirects and the
//! encoding of paths.

mod error;
mod render;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use error::PageError;
pub use render::Page;

/// A 302 to `location` (which must be a valid header value: callers pass on-site paths built
/// from encoded parts, or a registered redirect URI).
pub fn found(location: &str) -> Response {
    redirect(StatusCode::FOUND, location)
}

/// A 303 to `location`: the answer to a form POST.
pub fn see_other(location: &str) -> Response {
    redirect(StatusCode::SEE_OTHER, location)
}

fn redirect(status: StatusCode, location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (status, [(header::LOCATION, value)]).into_response(),
        Err(_) => PageError::bad_request("The redirect target is not a valid URL.").into_response(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters: for query values and path
/// segments.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/user/<user>/` or `/user/<user>/<server>/`: where the proxy serves a server.
pub fn server_url(user: &str, server: &str) -> String {
    if server.is_empty() {
        format!("/user/{}/", url_encode(user))
    } else {
        format!("/user/{}/{}/", url_encode(user), url_encode(server))
    }
}

/// `<prefix>/<user>` or `<prefix>/<user>/<server>` with encoded segments (hub page paths).
pub fn hub_path(prefix: &str, user: &str, server: &str) -> String {
    if server.is_empty() {
        format!("{prefix}/{}", url_encode(user))
    } else {
        format!("{prefix}/{}/{}", url_encode(user), url_encode(server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encode_keeps_only_unreserved() {
        assert_eq!(url_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(url_encode("/x?y=1&z"), "%2Fx%3Fy%3D1%26z");
        assert_eq!(url_encode("é"), "%C3%A9");
        assert_eq!(url_encode("a b"), "a%20b");
    }

    #[test]
    fn paths_encode_their_segments() {
        assert_eq!(server_url("alice", ""), "/user/alice/");
        assert_eq!(server_url("alice", "gpu"), "/user/alice/gpu/");
        assert_eq!(hub_path("/hub/spawn", "a/b", ""), "/hub/spawn/a%2Fb");
        assert_eq!(
            hub_path("/hub/stop", "alice", "x y"),
            "/hub/stop/alice/x%20y"
        );
    }
}
