//! The browser's session as the pages see it: the `atelier-session` cookie resolved through the
//! store, the login redirect of pages that need a user, the session cookie itself, and
//! [`CsrfForm`], the form extractor that checks the session's CSRF token before anything else.

use axum::extract::{Form, FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::cookie;
use crate::hub::page::{PageError, found, url_encode};
use crate::hub::{HubState, SESSION_COOKIE};
use crate::store::tokens::constant_time_eq;
use crate::store::{self, Session, StoreError, User};

/// Minimum interval between two writes of a session's last activity.
const ACTIVITY_WRITE_INTERVAL_SECS: i64 = 60;

/// Name of the hidden form field carrying the CSRF token (JupyterHub's name).
pub const XSRF_FIELD: &str = "_xsrf";

/// Whether a cookie-authenticated request must prove with `_xsrf` that one of the hub's own
/// pages sent it: JupyterHub 4.1+'s fetch-metadata rule (`_needs_check_xsrf` in
/// `jupyterhub/_xsrf_utils.py`, applied to API GETs by `apihandlers/base.py`, whose
/// `_xsrf_safe_methods` leaves out GET). Exempt are read-only requests a browser marks as a
/// top-level navigation (`Sec-Fetch-Mode: navigate`) or does not mark at all (clients that are
/// not browsers, browsers older than fetch metadata); everything else, a script's `fetch`,
/// `XMLHttpRequest` or `EventSource` among them, needs the token, GETs included.
///
/// Two departures from JupyterHub, both stricter: the rule covers the hub's pages as well as
/// its API (a script on a user's server, same origin in path mode, must not read a page's
/// `_xsrf`), and a same-origin `no-cors` GET is not exempt (JupyterHub lets it through for
/// images, but a same-origin `no-cors` response is readable by the script that fetched it; the
/// hub's static files need no cookie anyway).
pub fn needs_xsrf(method: &Method, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    !matches!(
        headers.get("sec-fetch-mode").map(HeaderValue::as_bytes),
        None | Some(b"navigate")
    )
}

/// The `_xsrf` a request sends outside a form body: the `X-XSRFToken` or `X-CSRFToken` header,
/// or the `_xsrf` query parameter (JupyterHub's `check_xsrf_cookie` looks in the same places;
/// an `EventSource` cannot send headers, so the hub's progress script uses the query).
pub fn sent_xsrf(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get("x-xsrftoken")
        .or_else(|| headers.get("x-csrftoken"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            query?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == XSRF_FIELD && !v.is_empty())
                    .then(|| crate::proxy::paths::percent_decode(v).into_owned())
            })
        })
}

/// Whether a request authenticated by `session`'s cookie passes the fetch-metadata rule
/// ([`needs_xsrf`]): it needs no token, or it sends the session's (compared in constant time).
pub fn passes_fetch_metadata(
    session: &Session,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> bool {
    !needs_xsrf(method, headers)
        || sent_xsrf(headers, query)
            .is_some_and(|sent| constant_time_eq(sent.as_bytes(), session.csrf_token.as_bytes()))
}

/// A browser with a valid session, logged in or not.
#[derive(Clone, Debug)]
pub struct Browser {
    /// The cookie's value (the session's secret id).
    pub cookie: String,
    /// The session.
    pub session: Session,
    /// Its user, once logged in.
    pub user: Option<User>,
}

impl Browser {
    /// The browser behind the request's session cookie, if it has a valid session.
    pub async fn from_headers(
        hub: &HubState,
        headers: &HeaderMap,
    ) -> Result<Option<Browser>, PageError> {
        let Some(value) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let now = store::now();
        let identity = match hub.store.get_session(&value, now).await {
            Ok(identity) => identity,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(PageError::unexpected(e)),
        };
        let session = identity.session;
        let stale = session
            .last_activity
            .is_none_or(|at| now - at > Duration::seconds(ACTIVITY_WRITE_INTERVAL_SECS));
        if stale && identity.user.is_some() {
            hub.store
                .touch_session_activity(session.id, now)
                .await
                .map_err(PageError::unexpected)?;
        }
        Ok(Some(Browser {
            cookie: value,
            session,
            user: identity.user,
        }))
    }

    /// The browser behind the request's session cookie, if it has a valid session and the
    /// request passes the fetch-metadata rule ([`passes_fetch_metadata`]); a request that does
    /// not is served as if it had no session at all (not logged in, and no anonymous session's
    /// token either). Every extractor but [`CsrfForm`] (which checks the form's `_xsrf`) goes
    /// through here.
    pub async fn from_parts(hub: &HubState, parts: &Parts) -> Result<Option<Browser>, PageError> {
        let browser = Browser::from_headers(hub, &parts.headers).await?;
        Ok(browser.filter(|b| {
            let pass =
                passes_fetch_metadata(&b.session, &parts.method, &parts.headers, parts.uri.query());
            if !pass {
                tracing::info!(
                    path = parts.uri.path(),
                    mode = ?parts.headers.get("sec-fetch-mode"),
                    "cookie ignored: not a navigation and no valid '_xsrf'"
                );
            }
            pass
        }))
    }
}

/// The browser, if it has a session (pages open to everyone).
pub struct MaybeBrowser(pub Option<Browser>);

impl FromRequestParts<HubState> for MaybeBrowser {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, hub: &HubState) -> Result<Self, PageError> {
        Ok(MaybeBrowser(Browser::from_parts(hub, parts).await?))
    }
}

/// A logged-in browser. Pages that need one send anonymous GETs to the login page (with
/// `next=` the page) and refuse other methods with 403.
#[derive(Clone, Debug)]
pub struct LoggedIn {
    /// The user.
    pub user: User,
    /// The session.
    pub session: Session,
    /// The cookie's value.
    pub cookie: String,
}

/// `/hub/login?next=<path and query of the request>`.
pub fn login_redirect(parts: &Parts) -> Response {
    let uri = parts
        .extensions
        .get::<OriginalUri>()
        .map(|o| &o.0)
        .unwrap_or(&parts.uri);
    login_redirect_to(uri)
}

/// `/hub/login?next=<path and query of uri>`.
pub fn login_redirect_to(uri: &Uri) -> Response {
    let next = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/hub/home");
    found(&format!("/hub/login?next={}", url_encode(next)))
}

impl FromRequestParts<HubState> for LoggedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, hub: &HubState) -> Result<Self, Response> {
        let browser = Browser::from_parts(hub, parts)
            .await
            .map_err(IntoResponse::into_response)?;
        match browser {
            Some(Browser {
                cookie,
                session,
                user: Some(user),
            }) => Ok(LoggedIn {
                user,
                session,
                cookie,
            }),
            _ if matches!(parts.method, Method::GET | Method::HEAD) => Err(login_redirect(parts)),
            _ => Err(PageError::forbidden("You are not logged in.").into_response()),
        }
    }
}

/// Checks a submitted CSRF token against the session's, in constant time.
pub fn check_csrf(session: &Session, sent: Option<&str>) -> Result<(), PageError> {
    match sent {
        Some(sent) if constant_time_eq(sent.as_bytes(), session.csrf_token.as_bytes()) => Ok(()),
        Some(_) => Err(PageError::forbidden(
            "The form's '_xsrf' token does not match your session. Reload the page and try again.",
        )),
        None => Err(PageError::forbidden(
            "'_xsrf' argument missing from POST. Reload the page and try again.",
        )),
    }
}

/// A form POSTed from one of the hub's pages: the request must carry a session cookie and the
/// form that session's CSRF token in `_xsrf` (else 403, before the form is even parsed); the
/// other fields are then deserialized into `T` (all values are strings, so use `String` and
/// `Option<String>` fields).
pub struct CsrfForm<T> {
    /// The browser (logged in or not: the login form is posted by anonymous sessions).
    pub browser: Browser,
    /// The fields but `_xsrf`.
    pub form: T,
}

impl<T> CsrfForm<T> {
    /// The logged-in user, or 403.
    pub fn logged_in(&self) -> Result<LoggedIn, PageError> {
        match &self.browser.user {
            Some(user) => Ok(LoggedIn {
                user: user.clone(),
                session: self.browser.session.clone(),
                cookie: self.browser.cookie.clone(),
            }),
            None => Err(PageError::forbidden("You are not logged in.")),
        }
    }
}

impl<T: DeserializeOwned> FromRequest<HubState> for CsrfForm<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, hub: &HubState) -> Result<Self, PageError> {
        let browser = Browser::from_headers(hub, req.headers())
            .await?
            .ok_or_else(|| {
                PageError::forbidden(
                    "Your session has expired or cookies are disabled. Reload the page and try again.",
                )
            })?;
        // A body that is not a form carries no `_xsrf` either: 403 like a form without it.
        let Form(pairs) = Form::<Vec<(String, String)>>::from_request(req, hub)
            .await
            .map_err(|e| {
                PageError::forbidden(format!("'_xsrf' argument missing from POST ({e})"))
            })?;
        let sent = pairs
            .iter()
            .find(|(k, _)| k == XSRF_FIELD)
            .map(|(_, v)| v.as_str());
        check_csrf(&browser.session, sent)?;
        let fields: Map<String, Value> = pairs
            .into_iter()
            .filter(|(k, _)| k != XSRF_FIELD)
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let form = serde_json::from_value(Value::Object(fields))
            .map_err(|e| PageError::bad_request(format!("Invalid form: {e}")))?;
        Ok(CsrfForm { browser, form })
    }
}

/// Longest `next=` accepted.
const MAX_NEXT_LEN: usize = 4096;

/// Where a `next=` parameter may lead: an absolute path of this site. Returns the path to
/// redirect to (spaces and non-ASCII characters percent-encoded), or `None` to ignore it.
///
/// Refused: anything not starting with exactly one `/` (`https://evil.example`,
/// `//evil.example`, `evil.example`, ``), any backslash (browsers read `/\evil.example` as
/// `//evil.example`), and control characters (header splitting, and browsers drop tabs and
/// newlines so that `/\t/evil.example` would become `//evil.example`).
pub fn safe_next(next: &str) -> Option<String> {
    if next.len() > MAX_NEXT_LEN || !next.starts_with('/') || next.starts_with("//") {
        return None;
    }
    if next.chars().any(|c| c == '\\' || c.is_control()) {
        return None;
    }
    let mut out = String::with_capacity(next.len());
    for c in next.chars() {
        if c.is_ascii_graphic() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    Some(out)
}

/// The `Set-Cookie` value of a session cookie: HttpOnly, SameSite=Lax, Path=/ (the proxy checks
/// it on `/user/...`), Secure when `secure`.
pub fn session_cookie(value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let mut cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
        max_age_secs.max(0)
    );
    if secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).expect("session ids are hex")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_session_cookie(secure: bool) -> HeaderValue {
    session_cookie("", 0, secure)
}

/// Adds `Set-Cookie: cookie` to a response.
pub fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_site() {
        let table: &[(&str, Option<&str>)] = &[
            ("/hub/home", Some("/hub/home")),
            ("/user/alice/lab?x=1#y", Some("/user/alice/lab?x=1#y")),
            (
                "/hub/api/oauth2/authorize?client_id=a&redirect_uri=%2Fuser%2Fa%2F",
                Some("/hub/api/oauth2/authorize?client_id=a&redirect_uri=%2Fuser%2Fa%2F"),
            ),
            ("/", Some("/")),
            ("/a b", Some("/a%20b")),
            ("/café", Some("/caf%C3%A9")),
            ("https://evil.example", None),
            ("https://evil.example/hub/home", None),
            ("http:/evil.example", None),
            ("//evil.example", None),
            ("//evil.example/hub/home", None),
            ("///evil.example", None),
            ("/\\evil.example", None),
            ("\\/evil.example", None),
            ("/hub\\..\\x", None),
            ("evil.example", None),
            ("javascript:alert(1)", None),
            ("", None),
            (" /hub/home", None),
            ("/\t/evil.example", None),
            ("/\n/evil.example", None),
            ("/hub/home\r\nSet-Cookie: x=1", None),
            ("/\u{0}x", None),
            ("/\u{85}/evil.example", None),
        ];
        for (next, expected) in table {
            assert_eq!(safe_next(next).as_deref(), *expected, "next={next:?}");
        }
        assert_eq!(safe_next(&format!("/{}", "a".repeat(MAX_NEXT_LEN))), None);
    }

    fn with_mode(mode: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(mode) = mode {
            h.insert("sec-fetch-mode", HeaderValue::from_static(mode));
        }
        h
    }

    #[test]
    fn which_cookie_requests_need_xsrf() {
        // Read-only navigations and requests without fetch metadata: no.
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!needs_xsrf(&method, &with_mode(None)), "{method}");
            assert!(
                !needs_xsrf(&method, &with_mode(Some("navigate"))),
                "{method}"
            );
        }
        // A script's reads (fetch, XMLHttpRequest, EventSource), same-origin no-cors included.
        for mode in ["cors", "no-cors", "same-origin", "websocket"] {
            assert!(needs_xsrf(&Method::GET, &with_mode(Some(mode))), "{mode}");
        }
        // Every write, navigations (form posts) included.
        for mode in [None, Some("navigate"), Some("cors")] {
            assert!(needs_xsrf(&Method::POST, &with_mode(mode)), "{mode:?}");
            assert!(needs_xsrf(&Method::PATCH, &with_mode(mode)), "{mode:?}");
        }
    }

    #[test]
    fn xsrf_from_headers_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(
            sent_xsrf(&h, Some("a=1&_xsrf=t%2Bk")).as_deref(),
            Some("t+k")
        );
        assert_eq!(sent_xsrf(&h, Some("_xsrf=")), None);
        assert_eq!(sent_xsrf(&h, None), None);
        h.insert("x-csrftoken", HeaderValue::from_static("c"));
        assert_eq!(sent_xsrf(&h, Some("_xsrf=q")).as_deref(), Some("c"));
        h.insert("x-xsrftoken", HeaderValue::from_static("x"));
        assert_eq!(sent_xsrf(&h, Some("_xsrf=q")).as_deref(), Some("x"));
    }

    #[test]
    fn cookie_attributes() {
        let c = session_cookie("abc", 60, true);
        assert_eq!(
            c.to_str().unwrap(),
            "atelier-session=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        let c = session_cookie("abc", 60, false);
        assert!(!c.to_str().unwrap().contains("Secure"));
        assert!(
            clear_session_cookie(false)
                .to_str()
                .unwrap()
                .starts_with("atelier-session=; Path=/; Max-Age=0;")
        );
    }
}
