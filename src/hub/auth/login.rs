//! Login and logout.
//!
//! The dev login (`HubConfig::dev_login`) takes any valid user name; every admin account (the
//! users listed in `HubConfig::admin_users`, and any account made admin since) must also give the
//! one-time admin password, of which the hub holds only the SHA-256
//! (`HubConfig::admin_password_hash`, see [`generate_admin_password`]). A session opened without
//! it never carries admin rights, even if its account is made admin while it lasts.
//!
//! The login form is posted from an anonymous session (created by `GET /hub/login`), so it
//! carries a CSRF token like every form; a successful login creates a new session with a new id
//! (no session fixation) and ends the anonymous one. `next=` only ever leads to a path of this
//! site ([`safe_next`](super::session::safe_next)).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

use super::session::{
    Browser, CsrfForm, MaybeBrowser, clear_session_cookie, needs_xsrf, safe_next, session_cookie,
    with_cookie,
};
use super::users::{ensure_user, find_user};
use crate::hub::HubState;
use crate::hub::page::{Page, PageError, found, see_other};
use crate::policy::names::is_valid_user_name;
use crate::store::tokens::{constant_time_eq, generate_token, hash_token};
use crate::store::{
    self, AuditAction, NewAuditEvent, NewSession, SESSION_ADMIN_UNVERIFIED, Session, StoreError,
};

/// Seconds an anonymous (not yet logged-in) session lives: long enough to fill in the form.
const LOGIN_SESSION_TTL_SECS: i64 = 3600;

/// A new one-time admin password and the hash to put in `HubConfig::admin_password_hash`.
/// `atelier up` shows the password once and keeps only the hash.
pub fn generate_admin_password() -> (String, String) {
    let password = generate_token()[..32].to_owned();
    let hash = hash_admin_password(&password);
    (password, hash)
}

/// The hash the hub keeps of the admin password: SHA-256 in hex, like the store's tokens. Fit
/// for generated passwords (128 random bits), not for passwords people choose.
pub fn hash_admin_password(password: &str) -> String {
    hash_token(password)
}

/// The user name a login form gives, normalised as JupyterHub does (trimmed, lowercased), or
/// the message to show when it is not a valid Atelier user name.
pub fn normalize_username(raw: &str) -> Result<String, String> {
    let name = raw.trim().to_ascii_lowercase();
    if is_valid_user_name(&name) {
        Ok(name)
    } else {
        let shown: String = raw.chars().take(64).collect();
        Err(format!(
            "{shown:?} is not a valid user name: use 1 to 63 lowercase letters, digits, '-', '.' \
             or '_', starting and ending with a letter or digit."
        ))
    }
}

/// `?next=` of the login page.
#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

fn login_page(
    hub: &HubState,
    session: &Session,
    next: Option<&str>,
    username: &str,
    error: Option<&str>,
) -> Page {
    Page::new("login.html")
        .xsrf(session)
        .insert("dev_login", &hub.config.dev_login)
        .insert("next", next.unwrap_or(""))
        .insert("username", username)
        .insert("error", &error)
        .insert("oidc_providers", &super::oidc::login_buttons(hub, next))
}

/// `GET /hub/login[?next=]`: the form (a logged-in browser goes straight to `next`).
pub async fn page(
    State(hub): State<HubState>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    MaybeBrowser(browser): MaybeBrowser,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let next = query
        .ok()
        .and_then(|Query(q)| q.next)
        .and_then(|n| safe_next(&n));
    if let Some(Browser { user: Some(_), .. }) = &browser {
        return Ok(found(
            &hub.config.location(next.as_deref().unwrap_or("/hub/home")),
        ));
    }
    let (session, new_cookie) = match browser {
        Some(b) => (b.session, None),
        // A script's request (not a navigation) gets no session and no form token: it would
        // replace the browser's cookie, or hand a token to a page of a user's server (JupyterHub
        // sets its `_xsrf` cookie on navigations only, `get_xsrf_token` in `_xsrf_utils.py`).
        None if needs_xsrf(&method, &headers) => {
            return Err(PageError::forbidden(
                "The login page opens only as a page of its own (not from a script).",
            ));
        }
        None => {
            let (cookie, session) = hub
                .store
                .create_session(&NewSession {
                    user_id: None,
                    next: next.clone(),
                    data: json!({}),
                    expires_at: store::now() + Duration::seconds(LOGIN_SESSION_TTL_SECS),
                })
                .await
                .map_err(PageError::unexpected)?;
            (session, Some(cookie))
        }
    };
    let response = login_page(&hub, &session, next.as_deref(), "", None).into_response();
    Ok(match new_cookie {
        Some(cookie) => with_cookie(
            response,
            session_cookie(&cookie, LOGIN_SESSION_TTL_SECS, hub.config.cookie_secure),
        ),
        None => response,
    })
}

/// `POST /hub/login`: the dev login.
pub async fn submit(
    State(hub): State<HubState>,
    CsrfForm { browser, form }: CsrfForm<LoginForm>,
) -> Result<Response, PageError> {
    if !hub.config.dev_login {
        return Err(PageError::forbidden("This hub has no password-less login."));
    }
    let next = safe_next(&form.next);
    let name = match normalize_username(&form.username) {
        Ok(name) => name,
        Err(message) => {
            return Ok(
                login_page(&hub, &browser.session, next.as_deref(), "", Some(&message))
                    .status(StatusCode::BAD_REQUEST)
                    .into_response(),
            );
        }
    };
    let admin_name = hub
        .config
        .admin_users
        .iter()
        .any(|a| a.trim().eq_ignore_ascii_case(&name));
    // Every admin account asks for the admin password: the `--admin-user` names and any account
    // made admin since (admin page, REST API). Without it anyone could log in as an admin.
    let existing = find_user(&hub, &name).await?;
    let is_admin = admin_name || existing.as_ref().is_some_and(|user| user.admin);
    if is_admin {
        let given = hash_admin_password(&form.password);
        let ok = hub
            .config
            .admin_password_hash
            .as_deref()
            .is_some_and(|hash| {
                constant_time_eq(given.as_bytes(), hash.to_ascii_lowercase().as_bytes())
            });
        if !ok {
            return Ok(login_page(
                &hub,
                &browser.session,
                next.as_deref(),
                &name,
                Some("Wrong admin password."),
            )
            .status(StatusCode::FORBIDDEN)
            .into_response());
        }
    }
    let user = ensure_user(&hub, &name, existing, admin_name).await?;
    // A session opened without the admin password stays without admin rights, even if the
    // account is made admin while it lasts (see `Store::get_session`).
    let data = if is_admin {
        json!({})
    } else {
        json!({ SESSION_ADMIN_UNVERIFIED: true })
    };
    let (cookie, _) = hub
        .store
        .create_session(&NewSession {
            user_id: Some(user.id),
            next: None,
            data,
            expires_at: store::now() + Duration::seconds(hub.config.session_ttl_secs),
        })
        .await
        .map_err(PageError::unexpected)?;
    end_session(&hub, &browser.cookie).await?;
    let mut event = NewAuditEvent::new(AuditAction::Login);
    event.actor = Some(user.name.clone());
    event.target_user = Some(user.name.clone());
    event.detail = json!({"method": "dev", "admin": user.admin});
    hub.audit.record(event).await;
    tracing::info!(user = %user.name, admin = user.admin, "login");
    Ok(with_cookie(
        see_other(&hub.config.location(next.as_deref().unwrap_or("/hub/home"))),
        session_cookie(
            &cookie,
            hub.config.session_ttl_secs,
            hub.config.cookie_secure,
        ),
    ))
}

/// Deletes the session of `cookie` with the tokens issued in it; a session already gone is fine.
async fn end_session(hub: &HubState, cookie: &str) -> Result<(), PageError> {
    match hub.store.delete_session(cookie).await {
        Ok(()) | Err(StoreError::NotFound) => Ok(()),
        Err(e) => Err(PageError::unexpected(e)),
    }
}

/// Ends the session; returns where the logout continues (a single sign-on provider's logout),
/// if anywhere.
async fn log_out(hub: &HubState, browser: Option<Browser>) -> Result<Option<String>, PageError> {
    let Some(browser) = browser else {
        return Ok(None);
    };
    let provider_logout = super::oidc::logout_redirect(hub, &browser.session);
    end_session(hub, &browser.cookie).await?;
    if let Some(user) = browser.user {
        let mut event = NewAuditEvent::new(AuditAction::Logout);
        event.actor = Some(user.name.clone());
        event.target_user = Some(user.name.clone());
        hub.audit.record(event).await;
        tracing::info!(user = %user.name, "logout");
    }
    Ok(provider_logout)
}

/// `GET /hub/logout`: ends the session (and the tokens issued in it, such as the servers' OAuth
/// tokens of this login), clears the cookie, back to the login page.
pub async fn logout(
    State(hub): State<HubState>,
    MaybeBrowser(browser): MaybeBrowser,
) -> Result<Response, PageError> {
    let to = log_out(&hub, browser).await?;
    Ok(with_cookie(
        found(to.as_deref().unwrap_or("/hub/login")),
        clear_session_cookie(hub.config.cookie_secure),
    ))
}

/// `POST /hub/logout` (the logout button), CSRF-checked.
pub async fn logout_form(
    State(hub): State<HubState>,
    CsrfForm { browser, .. }: CsrfForm<IgnoredAny>,
) -> Result<Response, PageError> {
    let to = log_out(&hub, Some(browser)).await?;
    Ok(with_cookie(
        see_other(to.as_deref().unwrap_or("/hub/login")),
        clear_session_cookie(hub.config.cookie_secure),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised_or_refused() {
        assert_eq!(normalize_username(" Alice ").unwrap(), "alice");
        assert_eq!(normalize_username("bob.smith-2").unwrap(), "bob.smith-2");
        for bad in [
            "",
            "../etc",
            "..",
            "a/b",
            "<script>alert(1)</script>",
            "аlice",  // Cyrillic а
            "ａlice", // full-width a
            "alice\u{200b}",
            "al ice",
            "-alice",
            "alice_",
            &"a".repeat(64),
        ] {
            assert!(normalize_username(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn admin_password_hash_matches() {
        let (password, hash) = generate_admin_password();
        assert_eq!(password.len(), 32);
        assert_eq!(hash_admin_password(&password), hash);
        assert_ne!(hash_admin_password("other"), hash);
    }
}
