//! The OAuth 2 provider the single-user servers log their visitors in with, as JupyterHub's:
//!
//! 1. `GET /hub/api/oauth2/authorize?client_id&redirect_uri&response_type=code&state
//!    [&code_challenge&code_challenge_method=S256][&scope]`, in the visitor's browser. The
//!    client (one per server, `jupyterhub-user-<name>[-<server>]`, registered by the spawner)
//!    must exist and `redirect_uri` must be exactly the one it registered, or the answer is a
//!    400 page (never a redirect to a URI nobody registered). Without a logged-in session: to the
//!    login page and back. The user must hold `access:servers` on the server behind the client
//!    (its owner, or an admin), else a 403 page. The owner is not asked for consent (as in
//!    JupyterHub); anyone else confirms on a consent page, posted back here with its CSRF token.
//!    A single-use code, bound to the client, redirect URI, user, session, PKCE challenge and
//!    granted scopes, then goes back as `redirect_uri?code=…&state=…`.
//! 2. `POST /hub/api/oauth2/token` from the server (form: `grant_type=authorization_code`,
//!    `code`, `redirect_uri`, `code_verifier`, and the client's id and secret, the server's API
//!    token, in the form or with HTTP Basic). The code is consumed atomically (a replay gets
//!    `invalid_grant`), checked (client, redirect URI, PKCE S256, expiry), and exchanged for an
//!    access token of the user with the granted scopes, linked to the client (stopping the
//!    server revokes it) and to the login session (logging out revokes it).
//!
//! Errors of the token endpoint are RFC 6749 JSON: `{"error": "invalid_grant",
//! "error_description": "..."}`.

use std::collections::BTreeSet;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, OriginalUri, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::session::{Browser, CsrfForm, LoggedIn, MaybeBrowser, login_redirect_to};
use crate::hub::page::{Page, PageError, found, url_encode};
use crate::hub::{HubState, JUPYTERHUB_VERSION};
use crate::scopes::{Scope, ScopeSet};
use crate::store::{
    self, NewOAuthCode, NewToken, OAuthClient, PkceMethod, Server, StoreError, TokenOwner, User,
};

/// Seconds an authorization code lives (RFC 6749 recommends at most ten minutes; the server
/// exchanges it at once).
pub const CODE_TTL_SECS: i64 = 120;

/// The OAuth routes (state: the hub). Merged into [`crate::hub::router`]. Like every response under
/// `/hub/api`, theirs carry `X-JupyterHub-Version`.
pub fn router() -> Router<HubState> {
    Router::new()
        .route(
            "/hub/api/oauth2/authorize",
            get(authorize).post(authorize_confirmed),
        )
        .route("/hub/api/oauth2/token", axum::routing::post(token))
        .layer(map_response(version_header))
}

async fn version_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "x-jupyterhub-version",
        HeaderValue::from_static(JUPYTERHUB_VERSION),
    );
    response
}

// ---- authorize ------------------------------------------------------------------------------

/// The parameters of an authorization request (query of the GET, fields of the consent POST).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthorizeParams {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    response_type: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    code_challenge: Option<String>,
    #[serde(default)]
    code_challenge_method: Option<String>,
}

/// The client, if it exists and `redirect_uri` is exactly the one it registered: until this
/// holds, errors are pages (a 400), never redirects.
async fn check_client(hub: &HubState, params: &AuthorizeParams) -> Result<OAuthClient, PageError> {
    let client_id = params
        .client_id
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| PageError::bad_request("OAuth request without client_id."))?;
    let client = match hub.store.get_oauth_client(client_id).await {
        Ok(client) => client,
        Err(StoreError::NotFound) => {
            return Err(PageError::bad_request(format!(
                "Unknown OAuth client {client_id:?}: is the server still running?"
            )));
        }
        Err(e) => return Err(PageError::unexpected(e)),
    };
    match params.redirect_uri.as_deref() {
        Some(uri) if uri == client.redirect_uri => Ok(client),
        Some(uri) => Err(PageError::bad_request(format!(
            "redirect_uri {uri:?} is not the one registered for OAuth client {client_id:?}."
        ))),
        None => Err(PageError::bad_request(
            "OAuth request without redirect_uri.",
        )),
    }
}

/// `base` with `pairs` appended to its query (pairs whose value is `None` are left out).
fn append_query(base: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (key, value) in pairs {
        if let Some(value) = value {
            out.push(sep);
            out.push_str(key);
            out.push('=');
            out.push_str(&url_encode(value));
            sep = '&';
        }
    }
    out
}

/// An error sent back to the client's registered redirect URI (RFC 6749 4.1.2.1).
fn error_redirect(
    client: &OAuthClient,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    found(&append_query(
        &client.redirect_uri,
        &[
            ("error", Some(error)),
            ("error_description", Some(description)),
            ("state", state),
        ],
    ))
}

/// Whether `challenge` is a PKCE code challenge (RFC 7636 4.2: 43 to 128 unreserved characters).
fn is_pkce_challenge(challenge: &str) -> bool {
    (43..=128).contains(&challenge.len())
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Checks `response_type` and PKCE: the S256 challenge to bind to the code, if any. Errors are
/// `(error, description)` for the client.
fn check_grant_request(
    hub: &HubState,
    params: &AuthorizeParams,
) -> Result<Option<String>, (&'static str, String)> {
    match params.response_type.as_deref() {
        Some("code") => {}
        Some(other) => {
            return Err((
                "unsupported_response_type",
                format!("response_type {other:?} is not supported: use code"),
            ));
        }
        None => return Err(("invalid_request", "response_type is missing".to_owned())),
    }
    match (
        params.code_challenge.as_deref(),
        params.code_challenge_method.as_deref(),
    ) {
        (Some(challenge), Some("S256")) if is_pkce_challenge(challenge) => {
            Ok(Some(challenge.to_owned()))
        }
        (Some(_), Some("S256")) => Err((
            "invalid_request",
            "code_challenge must be 43 to 128 characters of [A-Za-z0-9-._~]".to_owned(),
        )),
        (Some(_), _) => Err((
            "invalid_request",
            "only the S256 code_challenge_method is supported".to_owned(),
        )),
        (None, Some(_)) => Err((
            "invalid_request",
            "code_challenge_method without code_challenge".to_owned(),
        )),
        (None, None) if hub.config.oauth_require_pkce => Err((
            "invalid_request",
            "PKCE is required: send code_challenge with code_challenge_method=S256".to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

/// The server behind a client and its owner, if `me` may access it; else a 403 page.
async fn server_access(
    hub: &HubState,
    client: &OAuthClient,
    me: &User,
) -> Result<(User, Server), PageError> {
    let Some(server_id) = client.server_id else {
        return Err(PageError::forbidden(format!(
            "OAuth client {:?} does not belong to a server.",
            client.client_id
        )));
    };
    let server = hub
        .store
        .get_server_by_id(server_id)
        .await
        .map_err(|e| PageError::from_store("such server", e))?;
    let owner = hub
        .store
        .get_user_by_id(server.user_id)
        .await
        .map_err(|e| PageError::from_store("such user", e))?;
    let groups: BTreeSet<String> = hub
        .store
        .user_groups(owner.id)
        .await
        .map_err(PageError::unexpected)?
        .into_iter()
        .collect();
    if !ScopeSet::for_user(&me.name, me.admin).may_access_server(&owner.name, &server.name, &groups)
    {
        let which = if server.name.is_empty() {
            format!("the server of {}", owner.name)
        } else {
            format!("server {} of {}", server.name, owner.name)
        };
        return Err(PageError::forbidden(format!(
            "User {} is not allowed to access {which}.",
            me.name
        )));
    }
    Ok((owner, server))
}

/// The scopes the code grants: those requested (all the client's when none are) that the
/// client is allowed and the user holds. Requested scopes the client may not have are dropped
/// (RFC 6749 3.3 lets the server grant fewer); `Err` when some were requested and none is left.
fn grant_scopes(
    client: &OAuthClient,
    requested: Option<&str>,
    me: &User,
) -> Result<Vec<String>, String> {
    let allowed: Vec<Scope> = client
        .allowed_scopes
        .iter()
        .filter_map(|s| match Scope::parse(s) {
            Ok(scope) => Some(scope),
            Err(e) => {
                tracing::warn!(client = %client.client_id, error = %e, "ignoring a client scope");
                None
            }
        })
        .collect();
    let allowed_set = ScopeSet::parse(
        &allowed.iter().map(Scope::to_string).collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| e.to_string())?;
    let requested: Vec<&str> = requested
        .map(|r| r.split_ascii_whitespace().collect())
        .unwrap_or_default();
    let wanted: Vec<Scope> = if requested.is_empty() {
        allowed
    } else {
        let wanted: Vec<Scope> = requested
            .iter()
            .filter_map(|s| Scope::parse(s).ok())
            .filter(|s| allowed_set.covers(s))
            .collect();
        if wanted.is_empty() {
            return Err(format!(
                "none of the requested scopes [{}] is allowed for this client",
                requested.join(" ")
            ));
        }
        wanted
    };
    let held = ScopeSet::for_user(&me.name, me.admin);
    let granted: BTreeSet<String> = wanted
        .iter()
        .filter(|s| held.covers(s))
        .map(Scope::to_string)
        .collect();
    Ok(granted.into_iter().collect())
}

/// What an authorization request resolved to.
enum Decision {
    /// Issue the code now.
    Issue {
        challenge: Option<String>,
        scopes: Vec<String>,
    },
    /// Ask the user first.
    Consent {
        challenge: Option<String>,
        owner: String,
        server: String,
        scopes: Vec<String>,
    },
}

/// The checks common to the GET and the consent POST, once the client and user are known.
async fn decide(
    hub: &HubState,
    client: &OAuthClient,
    params: &AuthorizeParams,
    me: &User,
) -> Result<Result<Decision, Response>, PageError> {
    let state = params.state.as_deref();
    let challenge = match check_grant_request(hub, params) {
        Ok(challenge) => challenge,
        Err((error, description)) => {
            return Ok(Err(error_redirect(client, state, error, &description)));
        }
    };
    let (owner, server) = server_access(hub, client, me).await?;
    let scopes = match grant_scopes(client, params.scope.as_deref(), me) {
        Ok(scopes) => scopes,
        Err(description) => {
            return Ok(Err(error_redirect(
                client,
                state,
                "invalid_scope",
                &description,
            )));
        }
    };
    Ok(Ok(if owner.id == me.id {
        Decision::Issue { challenge, scopes }
    } else {
        Decision::Consent {
            challenge,
            owner: owner.name,
            server: server.name,
            scopes,
        }
    }))
}

/// Issues the code and sends the browser back to the client with it.
async fn issue_code(
    hub: &HubState,
    client: &OAuthClient,
    params: &AuthorizeParams,
    me: &LoggedIn,
    challenge: Option<String>,
    scopes: Vec<String>,
) -> Result<Response, PageError> {
    let method = challenge.as_ref().map(|_| PkceMethod::S256);
    let (code, _) = hub
        .store
        .create_oauth_code(&NewOAuthCode {
            client_id: client.client_id.clone(),
            user_id: me.user.id,
            session_id: Some(me.session.id),
            redirect_uri: client.redirect_uri.clone(),
            code_challenge: challenge,
            code_challenge_method: method,
            scopes,
            expires_at: store::now() + Duration::seconds(CODE_TTL_SECS),
        })
        .await
        .map_err(PageError::unexpected)?;
    tracing::info!(user = %me.user.name, client = %client.client_id, "OAuth code issued");
    Ok(found(&append_query(
        &client.redirect_uri,
        &[("code", Some(&code)), ("state", params.state.as_deref())],
    )))
}

/// `GET /hub/api/oauth2/authorize`.
async fn authorize(
    State(hub): State<HubState>,
    OriginalUri(uri): OriginalUri,
    MaybeBrowser(browser): MaybeBrowser,
    query: Result<Query<AuthorizeParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let Query(params) = query.map_err(|e| PageError::bad_request(e.body_text()))?;
    let client = check_client(&hub, &params).await?;
    let me = match browser {
        Some(Browser {
            cookie,
            session,
            user: Some(user),
        }) => LoggedIn {
            user,
            session,
            cookie,
        },
        _ => return Ok(login_redirect_to(&uri)),
    };
    match decide(&hub, &client, &params, &me.user).await? {
        Err(redirect) => Ok(redirect),
        Ok(Decision::Issue { challenge, scopes }) => {
            issue_code(&hub, &client, &params, &me, challenge, scopes).await
        }
        Ok(Decision::Consent {
            owner,
            server,
            scopes,
            ..
        }) => Ok(Page::new("consent.html")
            .user(&me.user, &me.session)
            .insert("client_id", &client.client_id)
            .insert("description", &client.description)
            .insert("owner", &owner)
            .insert("server", &server)
            .insert("scopes", &scopes)
            .insert("params", &params)
            .into_response()),
    }
}

/// `POST /hub/api/oauth2/authorize`: the consent form (CSRF-checked), for a user who is not the
/// server's owner.
async fn authorize_confirmed(
    State(hub): State<HubState>,
    form: CsrfForm<AuthorizeParams>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    let params = form.form;
    let client = check_client(&hub, &params).await?;
    match decide(&hub, &client, &params, &me.user).await? {
        Err(redirect) => Ok(redirect),
        // Confirmed (or the owner, who is never asked).
        Ok(Decision::Issue { challenge, scopes })
        | Ok(Decision::Consent {
            challenge, scopes, ..
        }) => issue_code(&hub, &client, &params, &me, challenge, scopes).await,
    }
}

// ---- token ----------------------------------------------------------------------------------

/// The token request's form.
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    grant_type: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    code_verifier: Option<String>,
}

/// An error of the token endpoint (RFC 6749 5.2).
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// The client tried HTTP Basic: answer with a `WWW-Authenticate` challenge.
    basic: bool,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status,
            error,
            description: description.into(),
            basic: false,
        }
    }

    fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client(basic: bool) -> OAuthError {
        OAuthError {
            basic,
            ..OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )
        }
    }

    fn invalid_grant(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn server_error(cause: impl std::fmt::Debug) -> OAuthError {
        tracing::error!(error = ?cause, "unexpected error in the OAuth token endpoint");
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "unexpected error in the hub",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.basic {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"atelier\""),
            );
        }
        response
    }
}

/// The successful token response (RFC 6749 5.1).
#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
}

/// The client's id and secret, from HTTP Basic (RFC 6749 2.3.1: form-encoded, then base64) or
/// from the form, and whether Basic was used. One method only.
fn client_credentials(
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<(String, String, bool), OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let v = v.trim();
            (v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ")).then(|| v[6..].trim())
        });
    if let Some(encoded) = basic {
        let decoded = base64_decode(encoded)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| OAuthError::invalid_client(true))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| OAuthError::invalid_client(true))?;
        let (id, secret) = match (form_decode(id), form_decode(secret)) {
            (Some(id), Some(secret)) => (id, secret),
            _ => return Err(OAuthError::invalid_client(true)),
        };
        if form.client_secret.is_some() {
            return Err(OAuthError::invalid_request(
                "the client authenticated with both HTTP Basic and client_secret",
            ));
        }
        if form.client_id.as_deref().is_some_and(|c| c != id) {
            return Err(OAuthError::invalid_client(true));
        }
        return Ok((id, secret, true));
    }
    match (&form.client_id, &form.client_secret) {
        (Some(id), Some(secret)) if !id.is_empty() => Ok((id.clone(), secret.clone(), false)),
        _ => Err(OAuthError::invalid_client(false)),
    }
}

/// `POST /hub/api/oauth2/token`: exchanges an authorization code for an access token.
async fn token(
    State(hub): State<HubState>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(form) = form.map_err(|e| OAuthError::invalid_request(e.body_text()))?;
    let (client_id, secret, basic) = client_credentials(&headers, &form)?;
    let client = match hub.store.verify_oauth_client(&client_id, &secret).await {
        Ok(client) => client,
        Err(StoreError::NotFound | StoreError::Invalid(_)) => {
            return Err(OAuthError::invalid_client(basic));
        }
        Err(e) => return Err(OAuthError::server_error(e)),
    };
    match form.grant_type.as_deref() {
        Some("authorization_code") => {}
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported: use authorization_code"),
            ));
        }
        None => return Err(OAuthError::invalid_request("grant_type is missing")),
    }
    let code = form
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| OAuthError::invalid_request("code is missing"))?;
    let redirect_uri = form
        .redirect_uri
        .as_deref()
        .ok_or_else(|| OAuthError::invalid_request("redirect_uri is missing"))?;
    let now = store::now();
    let grant = match hub
        .store
        .exchange_oauth_code(
            code,
            &client.client_id,
            redirect_uri,
            form.code_verifier.as_deref(),
            now,
        )
        .await
    {
        Ok(grant) => grant,
        Err(StoreError::NotFound) => {
            return Err(OAuthError::invalid_grant(
                "the authorization code is invalid or was already used",
            ));
        }
        Err(StoreError::Invalid(message)) => return Err(OAuthError::invalid_grant(message)),
        Err(e) => return Err(OAuthError::server_error(e)),
    };
    let expires_in = hub.config.session_ttl_secs;
    let mut new = NewToken::new(TokenOwner::User(grant.user_id), grant.scopes.clone());
    new.note = Some(format!("OAuth access token for {}", client.client_id));
    new.expires_at = Some(now + Duration::seconds(expires_in));
    new.oauth_client_id = Some(client.client_id.clone());
    new.session_id = grant.session_id;
    let (access_token, _) = hub
        .store
        .create_token(&new)
        .await
        .map_err(OAuthError::server_error)?;
    let mut response = Json(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        scope: grant.scopes.join(" "),
    })
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

// ---- encodings ------------------------------------------------------------------------------

/// Standard base64 (RFC 4648 section 4), padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
            assert_eq!(
                base64_decode(encoded.trim_end_matches('=')).unwrap(),
                plain.as_bytes()
            );
        }
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Z"), None);
    }

    #[test]
    fn form_values_decode() {
        assert_eq!(form_decode("a+b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(
            form_decode("jupyterhub-user-alice").as_deref(),
            Some("jupyterhub-user-alice")
        );
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%4"), None);
    }

    #[test]
    fn queries_append() {
        assert_eq!(
            append_query(
                "/user/a/oauth_callback",
                &[("code", Some("c1")), ("state", Some("s t"))]
            ),
            "/user/a/oauth_callback?code=c1&state=s%20t"
        );
        assert_eq!(
            append_query("https://x/cb?a=1", &[("code", Some("c")), ("state", None)]),
            "https://x/cb?a=1&code=c"
        );
    }

    #[test]
    fn pkce_challenges_are_checked() {
        assert!(is_pkce_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!is_pkce_challenge("short"));
        assert!(!is_pkce_challenge(&"a".repeat(129)));
        assert!(!is_pkce_challenge(&format!("{}+", "a".repeat(43))));
    }

    fn client(scopes: &[&str]) -> OAuthClient {
        OAuthClient {
            id: 1,
            client_id: "jupyterhub-user-alice".into(),
            description: String::new(),
            redirect_uri: "/user/alice/oauth_callback".into(),
            server_id: Some(1),
            allowed_scopes: scopes.iter().map(|s| s.to_string()).collect(),
            created: store::now(),
        }
    }

    fn user(name: &str, admin: bool) -> User {
        User {
            id: 1,
            name: name.into(),
            admin,
            created: store::now(),
            last_activity: None,
        }
    }

    #[test]
    fn scopes_are_requested_within_the_client_and_the_user() {
        let c = client(&["access:servers!server=alice/", "read:users:name!user=alice"]);
        let alice = user("alice", false);
        assert_eq!(
            grant_scopes(&c, None, &alice).unwrap(),
            vec!["access:servers!server=alice/", "read:users:name!user=alice"]
        );
        assert_eq!(
            grant_scopes(&c, Some("access:servers!server=alice/ admin:users"), &alice).unwrap(),
            vec!["access:servers!server=alice/"]
        );
        assert!(grant_scopes(&c, Some("admin:users nonsense"), &alice).is_err());
        // An admin holds both through the admin role.
        let root = user("root", true);
        assert_eq!(
            grant_scopes(&c, None, &root).unwrap(),
            vec!["access:servers!server=alice/", "read:users:name!user=alice"]
        );
        let bob = user("bob", false);
        assert!(grant_scopes(&c, None, &bob).unwrap().is_empty());
    }
}
