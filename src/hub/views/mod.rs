//! The hub's web pages: login and logout, home (the user's servers), the spawn form and its
//! progress page, the jobs page (batch jobs: submit, list, logs, cancel), the token page and the
//! admin page, rendered server-side from tera templates
//! embedded in the binary (`templates/` next to `Cargo.toml`), with a static stylesheet and one
//! small script (the progress bar) served under `/hub/static/`.
//!
//! Every action works without JavaScript: forms POST to the hub and carry the session's CSRF
//! token in a hidden `_xsrf` field, which [`CsrfForm`](crate::hub::auth::session::CsrfForm) checks before anything else (a
//! POST without it is refused with 403). Templates are autoescaped, so user-controlled names are
//! never rendered as markup. Errors are pages rendered from `error.html`; paths under `/hub/api/`
//! keep the JSON errors of the REST API.

mod admin;
mod jobs;
mod servers;
mod tokens;

use axum::Router;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::auth::login;
pub use super::page::{Page, PageError, found, hub_path, see_other, server_url, url_encode};

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
        .route("/hub/jobs", get(jobs::page).post(jobs::submit))
        .route("/hub/jobs/{job}/cancel", post(jobs::cancel))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_told_apart() {
        assert!(is_api_path("/hub/api"));
        assert!(is_api_path("/hub/api/users"));
        assert!(!is_api_path("/hub/apiary"));
        assert!(!is_api_path("/hub/home"));
    }
}
