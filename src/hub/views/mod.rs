//! The hub's web pages: login and logout, home (the user's servers), the spawn form and its
//! progress page, the token page and the admin page, rendered server-side from tera templates
//! embedded in the binary (`templates/` next to `Cargo.toml`), with a static stylesheet and one
//! small script (the progress bar) served under `/hub/static/`.
//!
//! Every action works without JavaScript: forms POST to the hub and carry the session's CSRF
//! token in a hidden `_xsrf` field, which [`session::CsrfForm`] checks before anything else (a
//! POST without it is refused with 403). Templates are autoescaped, so user-controlled names are
//! never rendered as markup. Errors are pages rendered from `error.html`; paths under `/hub/api/`
//! keep the JSON errors of the REST API.

mod admin;
mod error;
pub mod login;
mod render;
mod servers;
pub mod session;
mod tokens;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::PageError;
pub use login::{generate_admin_password, hash_admin_password, safe_next};
pub use render::Page;

use super::{HubError, HubState};

/// The pages' routes (state: the hub). Merged into [`super::router`].
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/", get(to_home))
        .route("/hub", get(to_home))
        .route("/hub/", get(to_home))
        .route("/hub/login", get(login::page).post(login::submit))
        .route("/hub/logout", get(login::logout).post(login::logout_form))
        .route("/hub/home", get(servers::home))
        .route("/hub/spawn", get(servers::spawn_own))
        .route(
            "/hub/spawn/{user}",
            get(servers::spawn_page_default).post(servers::spawn_default),
        )
        .route(
            "/hub/spawn/{user}/{server}",
            get(servers::spawn_page_named).post(servers::spawn_named),
        )
        .route("/hub/spawn-pending/{user}", get(servers::pending_default))
        .route(
            "/hub/spawn-pending/{user}/{server}",
            get(servers::pending_named),
        )
        .route("/hub/stop/{user}", post(servers::stop_default))
        .route("/hub/stop/{user}/{server}", post(servers::stop_named))
        .route("/hub/user/{user}", get(servers::user_root))
        .route("/hub/user/{user}/", get(servers::user_root))
        .route("/hub/user/{user}/{*rest}", get(servers::user_path))
        .route("/hub/token", get(tokens::page).post(tokens::create))
        .route("/hub/token/{id}/revoke", post(tokens::revoke))
        .route("/hub/admin", get(admin::page))
        .route("/hub/admin/users", post(admin::add_user))
        .route("/hub/admin/users/{name}/admin", post(admin::set_admin))
        .route("/hub/admin/users/{name}/delete", post(admin::delete_user))
        .route("/hub/static/{file}", get(static_file))
        .fallback(not_found)
}

async fn to_home() -> Response {
    found("/hub/home")
}

/// 404: a page, or the REST API's JSON error under `/hub/api/`.
async fn not_found(uri: Uri) -> Response {
    if is_api_path(uri.path()) {
        HubError::NotFound("Not Found".to_owned()).into_response()
    } else {
        PageError::not_found("There is no page at this address.").into_response()
    }
}

/// Whether `path` belongs to the REST API (JSON errors) rather than to the pages.
pub fn is_api_path(path: &str) -> bool {
    path == "/hub/api" || path.starts_with("/hub/api/")
}

/// The embedded static files: name, content type, content.
const STATIC_FILES: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../templates/static/style.css"),
    ),
    (
        "progress.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../templates/static/progress.js"),
    ),
];

async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match STATIC_FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            *body,
        )
            .into_response(),
        None => PageError::not_found("No such file.").into_response(),
    }
}

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

    #[test]
    fn api_paths_are_told_apart() {
        assert!(is_api_path("/hub/api"));
        assert!(is_api_path("/hub/api/users"));
        assert!(!is_api_path("/hub/apiary"));
        assert!(!is_api_path("/hub/home"));
    }
}
