//! Credentials: API tokens, OAuth clients and authorization codes, browser sessions.
//!
//! Only SHA-256 hashes of token, code and session values are stored. A presented value is
//! checked with one statement: an indexed lookup of its hash, joined with the owning user.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::error::conflict_as;
use super::tokens::{
    MIN_TOKEN_LEN, constant_time_eq, generate_token, hash_token, pkce_s256_challenge, token_prefix,
};
use super::{Result, Store, StoreError, found, from_json, now, object_json, on_pool, to_json, ts};
use crate::store::models::{
    OAuthClient, OAuthCode, PkceMethod, Session, SessionIdentity, Token, TokenIdentity, TokenOwner,
    User,
};

/// Key of a session's `data` set to `true` when the dev login opened it without the admin
/// password: [`Store::get_session`] then reports its user as not an admin.
pub const SESSION_ADMIN_UNVERIFIED: &str = "admin_unverified";

pub use crate::policy::names::oauth_client_id;

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub owner: TokenOwner,
    pub scopes: Vec<String>,
    pub note: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Set for an access token issued to an OAuth client.
    pub oauth_client_id: Option<String>,
    /// Set for a token issued in a browser session: it is revoked with the session.
    pub session_id: Option<i64>,
}

impl NewToken {
    /// A token of `owner` with `scopes`, no expiry, no note.
    pub fn new(owner: TokenOwner, scopes: Vec<String>) -> NewToken {
        NewToken {
            owner,
            scopes,
            note: None,
            expires_at: None,
            oauth_client_id: None,
            session_id: None,
        }
    }
}

/// An OAuth client to create or update.
#[derive(Debug, Clone)]
pub struct NewOAuthClient {
    pub client_id: String,
    pub description: String,
    /// The client secret in clear (for a server, its API token); only its hash is stored.
    pub secret: String,
    pub redirect_uri: String,
    pub server_id: Option<i64>,
    pub allowed_scopes: Vec<String>,
}

/// An authorization code to issue.
#[derive(Debug, Clone)]
pub struct NewOAuthCode {
    pub client_id: String,
    pub user_id: i64,
    pub session_id: Option<i64>,
    pub redirect_uri: String,
    /// PKCE: both or neither.
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<PkceMethod>,
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

/// A browser session to create.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// `None` for a browser that has not logged in yet.
    pub user_id: Option<i64>,
    /// Where to go after login.
    pub next: Option<String>,
    /// A JSON object (login flow state).
    pub data: Value,
    pub expires_at: DateTime<Utc>,
}

/// What [`Store::purge_expired`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub tokens: u64,
    pub oauth_codes: u64,
    pub sessions: u64,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    prefix: String,
    user_id: Option<i64>,
    service: Option<String>,
    oauth_client_id: Option<String>,
    session_id: Option<i64>,
    scopes: String,
    note: Option<String>,
    created: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_activity: Option<DateTime<Utc>>,
}

impl TokenRow {
    fn into_model(self) -> Result<Token> {
        let owner = match (self.user_id, self.service) {
            (Some(id), None) => TokenOwner::User(id),
            (None, Some(name)) => TokenOwner::Service(name),
            _ => {
                return Err(super::error::corrupt(
                    "api_tokens.user_id",
                    "no single owner",
                ));
            }
        };
        Ok(Token {
            scopes: from_json("api_tokens.scopes", &self.scopes)?,
            id: self.id,
            prefix: self.prefix,
            owner,
            oauth_client_id: self.oauth_client_id,
            session_id: self.session_id,
            note: self.note,
            created: self.created,
            expires_at: self.expires_at,
            last_activity: self.last_activity,
        })
    }
}

/// The owning user's columns of a credential lookup (all `NULL` without one).
#[derive(sqlx::FromRow)]
struct OwnerColumns {
    owner_id: Option<i64>,
    owner_name: Option<String>,
    owner_admin: Option<bool>,
    owner_created: Option<DateTime<Utc>>,
    owner_last_activity: Option<DateTime<Utc>>,
}

impl OwnerColumns {
    fn into_user(self) -> Option<User> {
        Some(User {
            id: self.owner_id?,
            name: self.owner_name?,
            admin: self.owner_admin?,
            created: self.owner_created?,
            last_activity: self.owner_last_activity,
        })
    }
}

/// The select list of [`OwnerColumns`] for a join with `users u`.
macro_rules! owner_columns {
    () => {
        "u.id AS owner_id, u.name AS owner_name, u.admin AS owner_admin, \
         u.created AS owner_created, u.last_activity AS owner_last_activity"
    };
}

#[derive(sqlx::FromRow)]
struct TokenIdentityRow {
    #[sqlx(flatten)]
    token: TokenRow,
    #[sqlx(flatten)]
    owner: OwnerColumns,
}

#[derive(sqlx::FromRow)]
struct OAuthClientRow {
    id: i64,
    client_id: String,
    description: String,
    redirect_uri: String,
    server_id: Option<i64>,
    allowed_scopes: String,
    created: DateTime<Utc>,
}

impl OAuthClientRow {
    fn into_model(self) -> Result<OAuthClient> {
        Ok(OAuthClient {
            allowed_scopes: from_json("oauth_clients.allowed_scopes", &self.allowed_scopes)?,
            id: self.id,
            client_id: self.client_id,
            description: self.description,
            redirect_uri: self.redirect_uri,
            server_id: self.server_id,
            created: self.created,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OAuthClientSecretRow {
    #[sqlx(flatten)]
    client: OAuthClientRow,
    secret_hash: String,
}

#[derive(sqlx::FromRow)]
struct OAuthCodeRow {
    id: i64,
    client_id: String,
    user_id: i64,
    session_id: Option<i64>,
    redirect_uri: String,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scopes: String,
    created: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl OAuthCodeRow {
    fn into_model(self) -> Result<OAuthCode> {
        let code_challenge_method = match &self.code_challenge_method {
            Some(m) => Some(
                PkceMethod::parse(m)
                    .ok_or_else(|| super::error::corrupt("oauth_codes.code_challenge_method", m))?,
            ),
            None => None,
        };
        Ok(OAuthCode {
            scopes: from_json("oauth_codes.scopes", &self.scopes)?,
            code_challenge_method,
            id: self.id,
            client_id: self.client_id,
            user_id: self.user_id,
            session_id: self.session_id,
            redirect_uri: self.redirect_uri,
            code_challenge: self.code_challenge,
            created: self.created,
            expires_at: self.expires_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: i64,
    user_id: Option<i64>,
    csrf_token: String,
    next_url: Option<String>,
    data: String,
    created: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_activity: Option<DateTime<Utc>>,
}

impl SessionRow {
    fn into_model(self) -> Result<Session> {
        Ok(Session {
            data: from_json("sessions.data", &self.data)?,
            id: self.id,
            user_id: self.user_id,
            csrf_token: self.csrf_token,
            next: self.next_url,
            created: self.created,
            expires_at: self.expires_at,
            last_activity: self.last_activity,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SessionIdentityRow {
    #[sqlx(flatten)]
    session: SessionRow,
    #[sqlx(flatten)]
    owner: OwnerColumns,
}

impl Store {
    // ---- API tokens -----------------------------------------------------------------------

    /// Creates a token with a new random value. Returns the value (shown once, never stored)
    /// and the token.
    pub async fn create_token(&self, new: &NewToken) -> Result<(String, Token)> {
        let value = generate_token();
        let token = self.insert_token(&value, new).await?;
        Ok((value, token))
    }

    /// Creates a token with a given value (e.g. a service's token from the configuration), of
    /// at least [`MIN_TOKEN_LEN`] characters. Such a value must be as random as a generated one:
    /// it is hashed with plain SHA-256. `Conflict` if the value is already a token.
    pub async fn create_token_with_value(&self, value: &str, new: &NewToken) -> Result<Token> {
        if value.len() < MIN_TOKEN_LEN {
            return Err(StoreError::Invalid(format!(
                "a token needs at least {MIN_TOKEN_LEN} characters"
            )));
        }
        self.insert_token(value, new).await
    }

    async fn insert_token(&self, value: &str, new: &NewToken) -> Result<Token> {
        let (user_id, service) = match &new.owner {
            TokenOwner::User(id) => (Some(*id), None),
            TokenOwner::Service(name) if !name.is_empty() => (None, Some(name.as_str())),
            TokenOwner::Service(_) => {
                return Err(StoreError::Invalid("service name is empty".to_owned()));
            }
        };
        let scopes = to_json(&new.scopes)?;
        on_pool!(self, p => sqlx::query_as::<_, TokenRow>(
            "INSERT INTO api_tokens (hash, prefix, user_id, service, oauth_client_id, \
             session_id, scopes, note, created, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *",
        )
        .bind(hash_token(value))
        .bind(token_prefix(value))
        .bind(user_id)
        .bind(service)
        .bind(&new.oauth_client_id)
        .bind(new.session_id)
        .bind(&scopes)
        .bind(&new.note)
        .bind(now())
        .bind(new.expires_at.map(ts))
        .fetch_one(p)
        .await
        .map_err(|e| conflict_as(e, || "this token already exists".to_owned()))?)
        .into_model()
    }

    /// The token whose value is `token` with its owning user, if it exists and has not expired
    /// at `now`: one indexed lookup of the value's hash. The hub then records the use with
    /// [`Store::touch_token_activity`] when the last one is old enough to matter.
    pub async fn lookup_token(&self, token: &str, now: DateTime<Utc>) -> Result<TokenIdentity> {
        let row = on_pool!(self, p => sqlx::query_as::<_, TokenIdentityRow>(concat!(
            "SELECT t.*, ",
            owner_columns!(),
            " FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id \
             WHERE t.hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)",
        ))
        .bind(hash_token(token))
        .bind(ts(now))
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?;
        Ok(TokenIdentity {
            token: row.token.into_model()?,
            user: row.owner.into_user(),
        })
    }

    pub async fn get_token(&self, id: i64) -> Result<Token> {
        on_pool!(self, p => sqlx::query_as::<_, TokenRow>("SELECT * FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(p)
            .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// The tokens of a user or service, oldest first (expired ones too, until purged).
    pub async fn list_tokens(&self, owner: &TokenOwner) -> Result<Vec<Token>> {
        let rows = on_pool!(self, p => match owner {
            TokenOwner::User(id) => sqlx::query_as::<_, TokenRow>(
                "SELECT * FROM api_tokens WHERE user_id = $1 ORDER BY id",
            )
            .bind(*id)
            .fetch_all(p)
            .await?,
            TokenOwner::Service(name) => sqlx::query_as::<_, TokenRow>(
                "SELECT * FROM api_tokens WHERE service = $1 ORDER BY id",
            )
            .bind(name)
            .fetch_all(p)
            .await?,
        });
        rows.into_iter().map(TokenRow::into_model).collect()
    }

    /// Deletes a token.
    pub async fn revoke_token(&self, id: i64) -> Result<()> {
        let result = (async {
            found(
                on_pool!(self, p => sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(id)
            .execute(p)
            .await?
            .rows_affected()),
            )
        })
        .await;
        self.auth_changed();
        result
    }

    /// Moves the token's last use forward to `at`; an older `at` changes nothing.
    pub async fn touch_token_activity(&self, id: i64, at: DateTime<Utc>) -> Result<bool> {
        self.touch_last_activity("api_tokens", id, at).await
    }

    // ---- OAuth clients --------------------------------------------------------------------

    /// Creates the client, or updates its description, secret, redirect URI and scopes when it
    /// exists for the same server (as at each start of a server). `Conflict` when the client
    /// id belongs to another server: a server never takes over another's client (ids are
    /// injective, [`oauth_client_id`], but a client registered under an earlier naming may hold
    /// one).
    pub async fn upsert_oauth_client(&self, new: &NewOAuthClient) -> Result<OAuthClient> {
        if new.client_id.is_empty() || new.redirect_uri.is_empty() {
            return Err(StoreError::Invalid(
                "an OAuth client needs an id and a redirect URI".to_owned(),
            ));
        }
        let scopes = to_json(&new.allowed_scopes)?;
        on_pool!(self, p => sqlx::query_as::<_, OAuthClientRow>(
            "INSERT INTO oauth_clients (client_id, description, secret_hash, redirect_uri, \
             server_id, allowed_scopes, created) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (client_id) DO UPDATE SET description = excluded.description, \
             secret_hash = excluded.secret_hash, redirect_uri = excluded.redirect_uri, \
             allowed_scopes = excluded.allowed_scopes \
             WHERE oauth_clients.server_id IS NOT DISTINCT FROM excluded.server_id \
             RETURNING *",
        )
        .bind(&new.client_id)
        .bind(&new.description)
        .bind(hash_token(&new.secret))
        .bind(&new.redirect_uri)
        .bind(new.server_id)
        .bind(&scopes)
        .bind(now())
        .fetch_optional(p)
        .await?)
        .ok_or_else(|| {
            StoreError::Conflict(format!(
                "OAuth client {:?} belongs to another server",
                new.client_id
            ))
        })?
        .into_model()
    }

    pub async fn get_oauth_client(&self, client_id: &str) -> Result<OAuthClient> {
        on_pool!(self, p => sqlx::query_as::<_, OAuthClientRow>(
            "SELECT * FROM oauth_clients WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// The client, if `secret` is its secret (the token endpoint's client authentication).
    /// `NotFound` for an unknown client, `Invalid` for a wrong secret.
    pub async fn verify_oauth_client(&self, client_id: &str, secret: &str) -> Result<OAuthClient> {
        let row = on_pool!(self, p => sqlx::query_as::<_, OAuthClientSecretRow>(
            "SELECT * FROM oauth_clients WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?;
        if !constant_time_eq(hash_token(secret).as_bytes(), row.secret_hash.as_bytes()) {
            return Err(StoreError::Invalid("wrong client secret".to_owned()));
        }
        row.client.into_model()
    }

    /// Deletes the client with its codes and the access tokens issued to it.
    pub async fn delete_oauth_client(&self, client_id: &str) -> Result<()> {
        let result = (async {
            found(on_pool!(self, p => sqlx::query(
            "DELETE FROM oauth_clients WHERE client_id = $1",
        )
        .bind(client_id)
        .execute(p)
        .await?
        .rows_affected()))
        })
        .await;
        self.auth_changed();
        result
    }

    /// Deletes every OAuth client of server `server_id` (with their tokens and codes, by
    /// cascade), whatever their ids: also one registered under an earlier naming of client
    /// ids. Returns how many.
    pub async fn delete_server_oauth_clients(&self, server_id: i64) -> Result<u64> {
        let result = (async {
            Ok(on_pool!(self, p => sqlx::query(
            "DELETE FROM oauth_clients WHERE server_id = $1",
        )
        .bind(server_id)
        .execute(p)
        .await?
        .rows_affected()))
        })
        .await;
        self.auth_changed();
        result
    }

    // ---- OAuth authorization codes --------------------------------------------------------

    /// Issues an authorization code. Returns the code (given once to the browser, never
    /// stored) and its record. `NotFound` if the client, user or session does not exist.
    pub async fn create_oauth_code(&self, new: &NewOAuthCode) -> Result<(String, OAuthCode)> {
        if new.code_challenge.is_some() != new.code_challenge_method.is_some() {
            return Err(StoreError::Invalid(
                "a PKCE code challenge needs its method, and the method a challenge".to_owned(),
            ));
        }
        let code = generate_token();
        let scopes = to_json(&new.scopes)?;
        let row = on_pool!(self, p => sqlx::query_as::<_, OAuthCodeRow>(
            "INSERT INTO oauth_codes (code_hash, client_id, user_id, session_id, redirect_uri, \
             code_challenge, code_challenge_method, scopes, created, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *",
        )
        .bind(hash_token(&code))
        .bind(&new.client_id)
        .bind(new.user_id)
        .bind(new.session_id)
        .bind(&new.redirect_uri)
        .bind(&new.code_challenge)
        .bind(new.code_challenge_method.map(PkceMethod::as_str))
        .bind(&scopes)
        .bind(now())
        .bind(ts(new.expires_at))
        .fetch_one(p)
        .await?);
        Ok((code, row.into_model()?))
    }

    /// Exchanges an authorization code: consumes it atomically (a `DELETE … RETURNING`, so of
    /// two exchanges of one code, on one hub or two, exactly one gets it) and then checks it.
    /// `NotFound` if the code does not exist or was already used; `Invalid` (the code is used
    /// up all the same) if it expired at `now`, or the client, redirect URI or PKCE verifier do
    /// not match. The hub then issues the access token with [`Store::create_token`].
    pub async fn exchange_oauth_code(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<OAuthCode> {
        let row = on_pool!(self, p => sqlx::query_as::<_, OAuthCodeRow>(
            "DELETE FROM oauth_codes WHERE code_hash = $1 RETURNING *",
        )
        .bind(hash_token(code))
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?;
        let code = row.into_model()?;
        if code.expires_at <= now {
            return Err(StoreError::Invalid("authorization code expired".to_owned()));
        }
        if code.client_id != client_id {
            return Err(StoreError::Invalid(
                "authorization code was issued to another client".to_owned(),
            ));
        }
        if code.redirect_uri != redirect_uri {
            return Err(StoreError::Invalid(
                "redirect_uri does not match".to_owned(),
            ));
        }
        if let (Some(challenge), Some(method)) = (&code.code_challenge, code.code_challenge_method)
        {
            let verifier = code_verifier
                .ok_or_else(|| StoreError::Invalid("code_verifier is missing".to_owned()))?;
            let computed = match method {
                PkceMethod::S256 => pkce_s256_challenge(verifier),
                PkceMethod::Plain => verifier.to_owned(),
            };
            if !constant_time_eq(computed.as_bytes(), challenge.as_bytes()) {
                return Err(StoreError::Invalid(
                    "code_verifier does not match".to_owned(),
                ));
            }
        }
        Ok(code)
    }

    // ---- browser sessions -----------------------------------------------------------------

    /// Creates a session with a new random id and CSRF token. Returns the id (the cookie's
    /// value, never stored) and the session.
    pub async fn create_session(&self, new: &NewSession) -> Result<(String, Session)> {
        let cookie = generate_token();
        let data = object_json("session data", &new.data)?;
        let row = on_pool!(self, p => sqlx::query_as::<_, SessionRow>(
            "INSERT INTO sessions (id_hash, user_id, csrf_token, next_url, data, created, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
        )
        .bind(hash_token(&cookie))
        .bind(new.user_id)
        .bind(generate_token())
        .bind(&new.next)
        .bind(&data)
        .bind(now())
        .bind(ts(new.expires_at))
        .fetch_one(p)
        .await?);
        Ok((cookie, row.into_model()?))
    }

    /// The session whose cookie value is `cookie` with its user, if it has not expired at
    /// `now`: one indexed lookup.
    pub async fn get_session(&self, cookie: &str, now: DateTime<Utc>) -> Result<SessionIdentity> {
        let row = on_pool!(self, p => sqlx::query_as::<_, SessionIdentityRow>(concat!(
            "SELECT s.*, ",
            owner_columns!(),
            " FROM sessions s LEFT JOIN users u ON u.id = s.user_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        ))
        .bind(hash_token(cookie))
        .bind(ts(now))
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?;
        let session = row.session.into_model()?;
        let mut user = row.owner.into_user();
        // A session the dev login opened without the admin password never carries admin rights,
        // even when its account is made admin later (the hub, the pages and the proxy all read
        // the user from here).
        if let Some(user) = user.as_mut()
            && session.data.get(SESSION_ADMIN_UNVERIFIED) == Some(&serde_json::Value::Bool(true))
        {
            user.admin = false;
        }
        Ok(SessionIdentity { session, user })
    }

    /// Moves the session's last activity forward to `at`.
    pub async fn touch_session_activity(&self, id: i64, at: DateTime<Utc>) -> Result<bool> {
        self.touch_last_activity("sessions", id, at).await
    }

    /// Ends the session whose cookie value is `cookie` (logout), with the tokens issued in it.
    pub async fn delete_session(&self, cookie: &str) -> Result<()> {
        let result = (async {
            found(
                on_pool!(self, p => sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(hash_token(cookie))
            .execute(p)
            .await?
            .rows_affected()),
            )
        })
        .await;
        self.auth_changed();
        result
    }

    /// Ends all the user's sessions (logout everywhere), with the tokens issued in them.
    /// Returns how many there were.
    pub async fn delete_user_sessions(&self, user_id: i64) -> Result<u64> {
        let result = (async {
            Ok(
                on_pool!(self, p => sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(p)
            .await?
            .rows_affected()),
            )
        })
        .await;
        self.auth_changed();
        result
    }

    /// Deletes the tokens, codes and sessions expired at `now` (tokens issued in a purged
    /// session go with it and are counted with the sessions). Each is an indexed range delete
    /// on `expires_at`.
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<PurgeCounts> {
        let result = (async {
            let now = ts(now);
            Ok(on_pool!(self, p => {
                let tokens = sqlx::query("DELETE FROM api_tokens WHERE expires_at <= $1")
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected();
                let oauth_codes = sqlx::query("DELETE FROM oauth_codes WHERE expires_at <= $1")
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected();
                let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected();
                PurgeCounts {
                    tokens,
                    oauth_codes,
                    sessions,
                }
            }))
        })
        .await;
        self.auth_changed();
        result
    }
}
