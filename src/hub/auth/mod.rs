//! Who is calling: an API token (`Authorization: token …` / `Bearer …`, or `?token=`) or the
//! browser session cookie, resolved to a user or a service with its effective scopes.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use chrono::Duration;

pub mod cache;
pub mod login;
pub mod oauth;
pub mod oidc;
pub mod session;
mod users;

use self::session::passes_fetch_metadata;
use super::{HubError, HubResult, HubState, SESSION_COOKIE};
use crate::scopes::{ScopeSet, Target};
use crate::store::{self, StoreError, TokenOwner, User};

/// Minimum interval between two writes of a credential's last use.
const ACTIVITY_WRITE_INTERVAL_SECS: i64 = 60;

/// Whether a credential last used at `last` should have its use written again at `now`.
fn activity_stale(
    last: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    last.is_none_or(|at| now - at > Duration::seconds(ACTIVITY_WRITE_INTERVAL_SECS))
}

/// The authenticated principal.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A user.
    User(User),
    /// A service such as the idle culler.
    Service(String),
}

/// How the caller authenticated.
#[derive(Clone, Debug)]
pub enum Credential {
    /// An API token (by id).
    Token {
        /// The token's id.
        id: i64,
        /// The browser session the token was issued in (OAuth tokens), if any.
        session_id: Option<i64>,
    },
    /// A browser session.
    Session {
        /// The session's id.
        id: i64,
        /// Its CSRF token, for forms and cookie-authenticated API writes.
        csrf: String,
    },
}

/// An authenticated caller and what it may do.
#[derive(Clone, Debug)]
pub struct Caller {
    /// User or service.
    pub principal: Principal,
    /// Effective scopes (a token's scopes intersected with its owner's current ones).
    pub scopes: ScopeSet,
    /// Token or session.
    pub credential: Credential,
}

impl Caller {
    /// The user, when the caller is one.
    pub fn user(&self) -> Option<&User> {
        match &self.principal {
            Principal::User(u) => Some(u),
            Principal::Service(_) => None,
        }
    }

    /// The user's or service's name.
    pub fn name(&self) -> &str {
        match &self.principal {
            Principal::User(u) => &u.name,
            Principal::Service(s) => s,
        }
    }

    /// `user` or `service`, as JupyterHub's `kind`.
    pub fn kind(&self) -> &'static str {
        match self.principal {
            Principal::User(_) => "user",
            Principal::Service(_) => "service",
        }
    }

    /// Ok when the caller holds `scope` on `target`; else 404 or 403 as [`require_any`].
    pub fn require(&self, scope: &str, target: Target<'_>) -> Result<(), HubError> {
        require_any(self, &[scope], target)
    }
}

/// Whether the caller holds any of `scopes` on `target`.
pub fn allows_any(caller: &Caller, scopes: &[&str], target: Target<'_>) -> bool {
    scopes.iter().any(|s| caller.scopes.allows(s, target))
}

/// Ok when the caller holds one of `scopes` on `target`. Else, as JupyterHub 6.1.1's
/// `needs_scope`: 404 when the target is a named resource and the caller holds one of the
/// scopes on other resources only (a filtered scope: "no access" and "no such resource" look
/// alike), 403 when it holds none of them.
pub fn require_any(caller: &Caller, scopes: &[&str], target: Target<'_>) -> HubResult<()> {
    if allows_any(caller, scopes, target) {
        Ok(())
    } else {
        Err(refusal(caller, scopes, target))
    }
}

/// The refusal of [`require_any`].
pub fn refusal(caller: &Caller, scopes: &[&str], target: Target<'_>) -> HubError {
    let named = !matches!(target, Target::Hub);
    if named && scopes.iter().any(|s| caller.scopes.has_any(s)) {
        HubError::NotFound("No access to resources or resources not found".into())
    } else {
        HubError::Forbidden(format!(
            "Action is not authorized with current scopes; requires any of [{}]",
            scopes.join(", ")
        ))
    }
}

/// The token a request carries in `Authorization` (`token X` or `Bearer X`) or in `?token=`.
pub fn request_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        for scheme in ["token ", "bearer "] {
            if value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme) {
                let t = value[scheme.len()..].trim();
                if !t.is_empty() {
                    return Some(t.to_owned());
                }
            }
        }
    }
    query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token" && !v.is_empty()).then(|| v.to_owned())
        })
    })
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_owned())
        })
}

/// The scopes of `user`'s roles and of their groups' roles (JupyterHub's `get_scopes_for`);
/// the groups are read only when some role is held through a group.
pub async fn user_scopes(hub: &HubState, user: &User) -> Result<ScopeSet, HubError> {
    let groups = if hub.config.roles.by_group() {
        hub.store.user_groups(user.id).await?.into_iter().collect()
    } else {
        Default::default()
    };
    Ok(hub
        .config
        .roles
        .user_scopes(&user.name, user.admin, &groups))
}

/// Resolves a request's credentials. `Ok(None)`: no credential at all.
pub async fn authenticate(
    hub: &HubState,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Caller>, HubError> {
    let now = store::now();
    if let Some(token) = request_token(headers, query) {
        let hash = store::tokens::hash_token(&token);
        // Taken before the database read: a revocation committed after it voids what is read.
        let epoch = hub.store.auth_epoch();
        if let Some(hit) = hub.token_cache.get(&hash, epoch, now) {
            if activity_stale(hit.last_activity, now) {
                if let Credential::Token { id, .. } = hit.caller.credential {
                    hub.store.touch_token_activity(id, now).await?;
                }
                hub.token_cache.note_activity(&hash, now);
            }
            return Ok(Some(hit.caller));
        }
        let read_at = std::time::Instant::now();
        let identity = match hub.store.lookup_token(&token, now).await {
            Ok(identity) => identity,
            Err(StoreError::NotFound) => {
                return Err(HubError::Forbidden("Missing or invalid credentials".into()));
            }
            Err(e) => return Err(e.into()),
        };
        let t = identity.token;
        let mut last_activity = t.last_activity;
        if activity_stale(last_activity, now) {
            hub.store.touch_token_activity(t.id, now).await?;
            last_activity = Some(now);
        }
        let (principal, scopes) = match (t.owner, identity.user) {
            (TokenOwner::User(_), Some(user)) => {
                let owner = user_scopes(hub, &user).await?;
                let scopes = ScopeSet::parse(&t.scopes, Some(&user.name))
                    .map_err(|e| HubError::Unexpected(anyhow::anyhow!("stored token scope: {e}")))?
                    .with_identify(&user.name)
                    .intersect(&owner);
                (Principal::User(user), scopes)
            }
            (TokenOwner::Service(name), _) => {
                let scopes = ScopeSet::parse(&t.scopes, None)
                    .map_err(|e| HubError::Unexpected(anyhow::anyhow!("stored token scope: {e}")))?
                    .union(&hub.config.roles.service_scopes(&name));
                (Principal::Service(name), scopes)
            }
            (TokenOwner::User(_), None) => {
                return Err(HubError::Forbidden("Missing or invalid credentials".into()));
            }
        };
        let caller = Caller {
            principal,
            scopes,
            credential: Credential::Token {
                id: t.id,
                session_id: t.session_id,
            },
        };
        hub.token_cache.put(
            &hash,
            cache::Hit {
                caller: caller.clone(),
                expires_at: t.expires_at,
                last_activity,
            },
            epoch,
            read_at,
        );
        return Ok(Some(caller));
    }
    if let Some(value) = cookie(headers, SESSION_COOKIE) {
        let identity = match hub.store.get_session(&value, now).await {
            Ok(identity) => identity,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(user) = identity.user else {
            return Ok(None);
        };
        let session = identity.session;
        // Cookie-authenticated writes, and reads that are not top-level navigations, must prove
        // they come from our pages: JupyterHub 4.1+'s rule (session::needs_xsrf).
        if !passes_fetch_metadata(&session, method, headers, query) {
            return Err(HubError::Forbidden(format!(
                "'_xsrf' argument missing from {method} or invalid: cookie-authenticated API \
                 requests that are not navigations need the X-XSRFToken header"
            )));
        }
        if activity_stale(session.last_activity, now) {
            hub.store.touch_session_activity(session.id, now).await?;
        }
        let scopes = user_scopes(hub, &user).await?;
        return Ok(Some(Caller {
            principal: Principal::User(user),
            scopes,
            credential: Credential::Session {
                id: session.id,
                csrf: session.csrf_token,
            },
        }));
    }
    Ok(None)
}

impl FromRequestParts<HubState> for Caller {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, hub: &HubState) -> Result<Caller, HubError> {
        authenticate(hub, &parts.method, &parts.headers, parts.uri.query())
            .await?
            .ok_or_else(|| HubError::Forbidden("Missing or invalid credentials".into()))
    }
}

/// A caller that may be anonymous (pages that show a login link, `GET /hub/api`).
pub struct MaybeCaller(pub Option<Caller>);

impl FromRequestParts<HubState> for MaybeCaller {
    type Rejection = HubError;

    async fn from_request_parts(
        parts: &mut Parts,
        hub: &HubState,
    ) -> Result<MaybeCaller, HubError> {
        Ok(MaybeCaller(
            authenticate(hub, &parts.method, &parts.headers, parts.uri.query()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_in_header_and_query() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "token abc".parse().unwrap());
        assert_eq!(request_token(&h, None).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(request_token(&h, None).as_deref(), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic Zm9v".parse().unwrap());
        assert_eq!(request_token(&h, None), None);
        assert_eq!(
            request_token(&HeaderMap::new(), Some("a=1&token=q1")).as_deref(),
            Some("q1")
        );
        assert_eq!(request_token(&HeaderMap::new(), Some("token=")), None);
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; atelier-session=s3cr3t; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("s3cr3t"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
