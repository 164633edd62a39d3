//! Single sign-on with OpenID Connect providers (a centre's Keycloak, EGI Check-in, …), several
//! at once.
//!
//! Each provider is discovered at start (`/.well-known/openid-configuration`, with retries). A
//! login is the authorization-code flow with PKCE S256: `GET /hub/oauth_login/<provider>?next=`
//! opens a pre-login session whose `data` holds the `state`, the `nonce` and the PKCE verifier
//! (server side, never in the browser) and redirects to the provider;
//! `GET /hub/oauth_callback/<provider>?code&state` checks `state` against that session (which it
//! then ends: a flow is single use), exchanges the code, validates the ID token with
//! `openidconnect` (signature from the provider's JWKS, fetched again once on a signature
//! failure so that a key rotation is picked up; issuer, audience, expiry, nonce), merges the
//! userinfo claims and maps them to a hub user ([`normalize_username`], [`groups_from_claims`]).
//!
//! A (provider, `sub`) pair is linked to its hub user at its first login (table
//! `oidc_identities`), so a user keeps their name when the claim changes and two subjects whose
//! claims normalise to the same name never share an account: the second one gets `<name>-2`.
//! An account created beforehand (by an admin, or listed in `admin_users`) that no identity
//! logs in to yet is claimed by the first login whose claim is that very name up to ASCII case
//! ([`MappedLogin::exact`]); a name the normalisation had to change (punctuation, anything not
//! ASCII: Cyrillic or fullwidth look-alikes, combining marks, invisible characters) never claims
//! an existing account nor an `admin_users` name, it gets a new account (`<name>` if free,
//! otherwise `<name>-2`, …). See [`claim_user_name`].
//!
//! Logout ends the hub session and, when the provider advertises an `end_session_endpoint`,
//! continues there with `id_token_hint` and `post_logout_redirect_uri` (`<public_url>/hub/login`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::Response;
use axum::routing::get;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AccessToken, AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, IdToken, IdTokenClaims, IdTokenVerifier, IssuerUrl, JsonWebKeySet,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadataWithLogout,
    RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::session::{MaybeBrowser, safe_next, session_cookie, with_cookie};
use super::users::find_or_create_oidc_user;
use crate::hub::HubState;
use crate::hub::page::{PageError, found, url_encode};
use crate::policy::names::is_valid_user_name;
use crate::store::tokens::constant_time_eq;
use crate::store::{self, AuditAction, NewAuditEvent, NewSession, Session, StoreError};

/// Seconds a login at the provider may take (the pre-login session's lifetime).
const LOGIN_FLOW_TTL_SECS: i64 = 600;

/// Discovery attempts at start (1, 2, 4, 8, 16 s apart).
const DISCOVERY_ATTEMPTS: u32 = 6;

/// The key of the login-flow state in a session's `data`.
const FLOW_KEY: &str = "oidc_flow";

/// The key, in a logged-in session's `data`, of the provider it logged in with.
const LOGIN_KEY: &str = "oidc_login";

// ---- configuration ------------------------------------------------------------------------

/// One provider's settings.
#[derive(Clone, PartialEq)]
pub struct OidcProvider {
    /// URL-safe id: `/hub/oauth_login/<name>`, `/hub/oauth_callback/<name>`.
    pub name: String,
    /// The login button's label.
    pub display_name: String,
    /// The issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The hub's client id at the provider.
    pub client_id: String,
    /// The hub's client secret (from a file or an environment variable; never logged).
    pub client_secret: String,
    /// Scopes asked for (default `openid profile email`).
    pub scopes: Vec<String>,
    /// The claim the user name comes from: `preferred_username` (default),
    /// `eduperson_principal_name`, `email` or `sub`.
    pub username_claim: String,
    /// Claims holding groups (default `groups` and `eduperson_entitlement`).
    pub group_claims: Vec<String>,
    /// Members of these groups are made admins.
    pub admin_groups: Vec<String>,
    /// Only members of these groups may log in; empty: everyone.
    pub allowed_groups: Vec<String>,
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("name", &self.name)
            .field("display_name", &self.display_name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("username_claim", &self.username_claim)
            .field("group_claims", &self.group_claims)
            .field("admin_groups", &self.admin_groups)
            .field("allowed_groups", &self.allowed_groups)
            .finish()
    }
}

/// The `--oidc-config` file (JSON or YAML): `{"providers": [ … ]}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfigFile {
    /// The providers, in the order of the login buttons.
    pub providers: Vec<OidcProviderEntry>,
}

/// One provider in the `--oidc-config` file; the secret is named, never written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderEntry {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (trailing whitespace is dropped).
    #[serde(default)]
    pub client_secret_file: Option<String>,
    /// An environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub username_claim: Option<String>,
    #[serde(default)]
    pub group_claims: Option<Vec<String>>,
    #[serde(default)]
    pub admin_groups: Vec<String>,
    #[serde(default)]
    pub allowed_groups: Vec<String>,
}

/// Whether `name` may name a provider: 1 to 63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_valid_provider_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

impl OidcProviderEntry {
    /// The provider's settings, its secret read with `read_file` / `env`.
    pub fn resolve(
        self,
        read_file: impl Fn(&str) -> std::io::Result<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<OidcProvider> {
        let name = self.name;
        if !is_valid_provider_name(&name) {
            bail!("OIDC provider {name:?}: the name must be 1 to 63 of a-z, 0-9 and '-'");
        }
        // Kept as written: the issuer must match the provider's exactly, trailing `/` included.
        if let Err(e) = IssuerUrl::new(self.issuer.clone()) {
            bail!("OIDC provider {name}: issuer {:?}: {e}", self.issuer);
        }
        let client_secret = match (&self.client_secret_file, &self.client_secret_env) {
            (Some(file), None) => read_file(file)
                .with_context(|| format!("OIDC provider {name}: reading client_secret_file"))?
                .trim_end()
                .to_owned(),
            (None, Some(var)) => env(var).with_context(|| {
                format!("OIDC provider {name}: set the environment variable {var}")
            })?,
            (None, None) => String::new(),
            (Some(_), Some(_)) => {
                bail!(
                    "OIDC provider {name}: give client_secret_file or client_secret_env, not both"
                )
            }
        };
        let username_claim = self
            .username_claim
            .unwrap_or_else(|| "preferred_username".to_owned());
        Ok(OidcProvider {
            display_name: self.display_name.unwrap_or_else(|| name.clone()),
            name,
            issuer: self.issuer,
            client_id: self.client_id,
            client_secret,
            scopes: self
                .scopes
                .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]),
            username_claim,
            group_claims: self
                .group_claims
                .unwrap_or_else(|| vec!["groups".into(), "eduperson_entitlement".into()]),
            admin_groups: self.admin_groups,
            allowed_groups: self.allowed_groups,
        })
    }
}

/// Reads the `--oidc-config` file (`.json`, otherwise YAML) and the secrets it names.
pub fn load_config(path: &Path) -> anyhow::Result<Vec<OidcProvider>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the OIDC config {}", path.display()))?;
    parse_config(
        &text,
        path.extension().is_some_and(|e| e == "json"),
        |f| std::fs::read_to_string(f),
        |v| std::env::var(v).ok(),
    )
    .with_context(|| format!("OIDC config {}", path.display()))
}

/// Parses an OIDC config (JSON or YAML text).
pub fn parse_config(
    text: &str,
    json: bool,
    read_file: impl Fn(&str) -> std::io::Result<String>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<OidcProvider>> {
    let file: OidcConfigFile = if json {
        serde_json::from_str(text)?
    } else {
        serde_saphyr::from_str(text)?
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in file.providers {
        let provider = entry.resolve(&read_file, &env)?;
        if !seen.insert(provider.name.clone()) {
            bail!("OIDC provider {}: the name is used twice", provider.name);
        }
        out.push(provider);
    }
    Ok(out)
}

// ---- claims → user ------------------------------------------------------------------------

/// A hub user name from a claim value: lowercase ASCII letters and digits are kept, every run
/// of other characters becomes one `-`, leading and trailing `-` are dropped and the result is
/// cut at 63 characters. `None` when nothing is left.
///
/// | claim value              | user name               |
/// |--------------------------|-------------------------|
/// | `alice`                  | `alice`                 |
/// | `Alice.Smith`            | `alice-smith`           |
/// | `alice@uni.example.org`  | `alice-uni-example-org` |
/// | `12345@egi.eu`           | `12345-egi-eu`          |
/// | `José`                   | `jos`                   |
/// | `@@@`                    | refused                 |
///
/// Different values can give the same name (`alice.smith`, `alice_smith`, `alice\u{200d}`); the
/// identity table keeps them apart ([`crate::store::Store::link_oidc_identity`]) and only an
/// [`is_exact_username`] claim may take over an existing account.
pub fn normalize_username(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(63);
    let name = out.trim_end_matches('-').to_owned();
    is_valid_user_name(&name).then_some(name)
}

/// Whether the claim value `raw` is the user name `name` itself up to ASCII case and
/// surrounding ASCII whitespace: then the normalisation lost nothing (`Alice` → `alice`). Not
/// when it dropped or replaced a character: `alice.`, `../alice`, `alice@x`, `аlice` (Cyrillic
/// `а`), `ａlice` (fullwidth), `alice\u{301}` (a combining mark), `alice\u{200d}` (a zero-width
/// joiner). Only an exact claim may claim an existing account or an `admin_users` name.
pub fn is_exact_username(raw: &str, name: &str) -> bool {
    let trimmed = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    trimmed.is_ascii() && trimmed.eq_ignore_ascii_case(name)
}

/// The groups of an `eduperson_entitlement` value in the AARC-G002 form
/// `<namespace>:group:<group>[:<subgroup>…][:role=<role>]#<authority>`: the group path joined
/// with `:`, and with the role, the path plus `:role=<role>`. Values of other forms give no
/// group (they are not group memberships).
///
/// | entitlement | groups |
/// |---|---|
/// | `urn:mace:egi.eu:group:vo.example.org:role=member#aai.egi.eu` | `vo.example.org`, `vo.example.org:role=member` |
/// | `urn:mace:egi.eu:group:vo.example.org:sub:role=member#aai.egi.eu` | `vo.example.org:sub`, `vo.example.org:sub:role=member` |
/// | `urn:mace:egi.eu:group:vo.example.org#aai.egi.eu` | `vo.example.org` |
/// | `urn:geant:example.org:group:climate:role=manager#example.org` | `climate`, `climate:role=manager` |
/// | `urn:mace:example.org:entitlement:library` | (none) |
pub fn entitlement_groups(value: &str) -> Vec<String> {
    let without_authority = value.split('#').next().unwrap_or("");
    let Some((_, rest)) = without_authority.split_once(":group:") else {
        return Vec::new();
    };
    let (path, role) = match rest.rsplit_once(":role=") {
        Some((path, role)) => (path, Some(role)),
        None => (rest, None),
    };
    if path.is_empty() || path.split(':').any(str::is_empty) {
        return Vec::new();
    }
    let mut groups = vec![path.to_owned()];
    if let Some(role) = role.filter(|r| !r.is_empty()) {
        groups.push(format!("{path}:role={role}"));
    }
    groups
}

/// The groups the claims give: each claim of `group_claims` may be a string or a list of
/// strings; `eduperson_entitlement` values are mapped with [`entitlement_groups`], other claims'
/// values are group names as they are. Sorted, without duplicates.
pub fn groups_from_claims(claims: &Map<String, Value>, group_claims: &[String]) -> Vec<String> {
    let mut groups = BTreeSet::new();
    for claim in group_claims {
        let values: Vec<&str> = match claims.get(claim) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for value in values {
            if claim == "eduperson_entitlement" {
                groups.extend(entitlement_groups(value));
            } else if !value.is_empty() && value.len() <= 255 {
                groups.insert(value.trim_start_matches('/').to_owned());
            }
        }
    }
    groups.retain(|g| !g.is_empty() && g.len() <= 255);
    groups.into_iter().collect()
}

// ---- discovered providers -----------------------------------------------------------------

/// The claims of an ID token beyond the standard ones (groups, entitlements, …).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub claims: Map<String, Value>,
}

impl AdditionalClaims for ExtraClaims {}

/// An ID token with all its claims.
pub type HubIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Validated ID token claims.
pub type HubIdTokenClaims = IdTokenClaims<ExtraClaims, CoreGenderClaim>;

/// A provider with its discovered metadata: what [`crate::hub::HubConfig::oidc_providers`] holds.
pub struct Provider {
    /// Its settings.
    pub settings: OidcProvider,
    /// `<public_url>/hub/oauth_callback/<name>`.
    pub redirect_uri: String,
    /// `<public_url>/hub/login`, where the provider's logout returns.
    pub post_logout_redirect_uri: String,
    metadata: RwLock<ProviderMetadataWithLogout>,
    http: openidconnect::reqwest::Client,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("settings", &self.settings)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// The HTTP client for the providers: no redirects (as `openidconnect` asks), bounded time.
fn http_client() -> anyhow::Result<openidconnect::reqwest::Client> {
    openidconnect::reqwest::Client::builder()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("atelier-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the OIDC HTTP client")
}

/// Discovers each provider (retrying for about half a minute): the hub's providers.
pub async fn discover(
    providers: Vec<OidcProvider>,
    public_url: &str,
) -> anyhow::Result<Vec<Arc<Provider>>> {
    let http = http_client()?;
    let public_url = public_url.trim_end_matches('/');
    let mut out = Vec::new();
    for settings in providers {
        let issuer = IssuerUrl::new(settings.issuer.clone())
            .with_context(|| format!("OIDC provider {}: issuer", settings.name))?;
        let mut attempt = 0;
        let metadata = loop {
            attempt += 1;
            match ProviderMetadataWithLogout::discover_async(issuer.clone(), &http).await {
                Ok(metadata) => break metadata,
                Err(e) if attempt < DISCOVERY_ATTEMPTS => {
                    tracing::warn!(provider = %settings.name, attempt, error = %e, "OIDC discovery failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("OIDC provider {}: discovery", settings.name)));
                }
            }
        };
        tracing::info!(provider = %settings.name, issuer = %settings.issuer, "OIDC provider discovered");
        out.push(Arc::new(Provider {
            redirect_uri: format!("{public_url}/hub/oauth_callback/{}", settings.name),
            post_logout_redirect_uri: format!("{public_url}/hub/login"),
            settings,
            metadata: RwLock::new(metadata),
            http: http.clone(),
        }));
    }
    Ok(out)
}

/// Why a login failed, as shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The ID token is not valid (signature, issuer, audience, expiry or nonce).
    #[error("the identity provider's ID token is not valid: {0}")]
    InvalidIdToken(String),
    /// The provider refused the code or could not be reached.
    #[error("the identity provider did not complete the login: {0}")]
    Provider(String),
}

impl Provider {
    fn metadata(&self) -> ProviderMetadataWithLogout {
        self.metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The provider's `end_session_endpoint`, if it advertises one.
    pub fn end_session_endpoint(&self) -> Option<String> {
        self.metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().to_string())
    }

    fn client(
        &self,
    ) -> Result<
        openidconnect::core::CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        LoginError,
    > {
        let secret = (!self.settings.client_secret.is_empty())
            .then(|| ClientSecret::new(self.settings.client_secret.clone()));
        let redirect = RedirectUrl::new(self.redirect_uri.clone())
            .map_err(|e| LoginError::Provider(format!("redirect URI: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            self.metadata(),
            ClientId::new(self.settings.client_id.clone()),
            secret,
        )
        .set_redirect_uri(redirect))
    }

    /// The authorization URL of a new login, with the state, nonce and PKCE verifier to keep.
    pub fn start(&self) -> Result<(String, FlowState), LoginError> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client()?;
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.settings.scopes {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok((
            url.to_string(),
            FlowState {
                provider: self.settings.name.clone(),
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
            },
        ))
    }

    fn verifier(&self, jwks: JsonWebKeySet<CoreJsonWebKey>) -> IdTokenVerifier<'_, CoreJsonWebKey> {
        id_token_verifier(&self.settings, jwks)
    }

    /// Exchanges `code`, validates the ID token against `flow` and merges the userinfo claims:
    /// all the claims, with the raw ID token (for the logout's `id_token_hint`).
    pub async fn finish(
        &self,
        code: &str,
        flow: &FlowState,
    ) -> Result<(Map<String, Value>, String), LoginError> {
        let client = self.client()?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| LoginError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::Provider(token_error_message(&e)))?;
        let raw_id_token = response
            .id_token()
            .ok_or_else(|| LoginError::Provider("no ID token in the token response".into()))?
            .to_string();
        let id_token: HubIdToken = raw_id_token
            .parse()
            .map_err(|e: serde_json::Error| LoginError::InvalidIdToken(e.to_string()))?;
        let nonce = Nonce::new(flow.nonce.clone());
        let jwks = self.metadata().jwks().clone();
        let claims = match id_token.claims(&self.verifier(jwks), &nonce) {
            Ok(claims) => claims.clone(),
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                // Perhaps the keys rotated: fetch the JWKS again, once.
                let jwks_uri = self.metadata().jwks_uri().clone();
                let jwks = JsonWebKeySet::fetch_async(&jwks_uri, &self.http)
                    .await
                    .map_err(|e| LoginError::Provider(format!("fetching the JWKS: {e}")))?;
                {
                    let mut metadata = self.metadata.write().unwrap_or_else(|e| e.into_inner());
                    let updated = metadata.clone().set_jwks(jwks.clone());
                    *metadata = updated;
                }
                id_token
                    .claims(&self.verifier(jwks), &nonce)
                    .map_err(|e| LoginError::InvalidIdToken(e.to_string()))?
                    .clone()
            }
            Err(e) => return Err(LoginError::InvalidIdToken(e.to_string())),
        };
        let mut all = claims_map(&claims)?;
        if let Some(endpoint) = self.metadata().userinfo_endpoint() {
            let info = self
                .userinfo(endpoint.url().as_str(), response.access_token())
                .await?;
            if info.get("sub") != all.get("sub") {
                return Err(LoginError::Provider(
                    "the userinfo subject differs from the ID token's".into(),
                ));
            }
            for (k, v) in info {
                if !matches!(k.as_str(), "sub" | "iss" | "aud") {
                    all.insert(k, v);
                }
            }
        }
        Ok((all, raw_id_token))
    }

    async fn userinfo(
        &self,
        url: &str,
        token: &AccessToken,
    ) -> Result<Map<String, Value>, LoginError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(token.secret())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| LoginError::Provider(format!("userinfo: {e}")))?;
        if !response.status().is_success() {
            return Err(LoginError::Provider(format!(
                "userinfo: HTTP {}",
                response.status()
            )));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| LoginError::Provider(format!("userinfo: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|_| {
            LoginError::Provider(
                "userinfo: not a JSON object (signed userinfo is not supported)".into(),
            )
        })
    }
}

fn token_error_message<E: std::error::Error>(e: &E) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The verifier of a provider's ID tokens: its issuer, the hub's client id as audience, a
/// signature by one of `jwks` (RS*/ES*/PS*/EdDSA; HS* with the client secret), not expired.
pub fn id_token_verifier(
    settings: &OidcProvider,
    jwks: JsonWebKeySet<CoreJsonWebKey>,
) -> IdTokenVerifier<'static, CoreJsonWebKey> {
    use CoreJwsSigningAlgorithm as A;
    let issuer = IssuerUrl::new(settings.issuer.clone())
        .unwrap_or_else(|_| IssuerUrl::new("invalid:".into()).expect("a URL"));
    let client_id = ClientId::new(settings.client_id.clone());
    let verifier = if settings.client_secret.is_empty() {
        IdTokenVerifier::new_public_client(client_id, issuer, jwks)
    } else {
        IdTokenVerifier::new_confidential_client(
            client_id,
            ClientSecret::new(settings.client_secret.clone()),
            issuer,
            jwks,
        )
    };
    verifier.set_allowed_algs([
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EdDsa,
    ])
}

/// The claims of a validated ID token as a JSON object.
fn claims_map(claims: &HubIdTokenClaims) -> Result<Map<String, Value>, LoginError> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(LoginError::InvalidIdToken(
            "claims are not an object".into(),
        )),
    }
}

/// The state of a login in progress, kept in the pre-login session's `data`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct FlowState {
    pub provider: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

// ---- routes -------------------------------------------------------------------------------

/// The single sign-on routes (state: the hub). Merged into [`crate::hub::router`].
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/hub/oauth_login/{provider}", get(login))
        .route("/hub/oauth_callback/{provider}", get(callback))
}

fn find_provider(hub: &HubState, name: &str) -> Result<Arc<Provider>, PageError> {
    hub.config
        .oidc_providers
        .iter()
        .find(|p| p.settings.name == name)
        .cloned()
        .ok_or_else(|| PageError::not_found("There is no such login provider."))
}

/// A provider's login button on the login page.
#[derive(Clone, Debug, Serialize)]
pub struct LoginButton {
    pub name: String,
    pub display_name: String,
    pub url: String,
}

/// The login page's buttons, each keeping `next`.
pub fn login_buttons(hub: &HubState, next: Option<&str>) -> Vec<LoginButton> {
    hub.config
        .oidc_providers
        .iter()
        .map(|p| LoginButton {
            name: p.settings.name.clone(),
            display_name: p.settings.display_name.clone(),
            url: match next {
                Some(next) => format!(
                    "/hub/oauth_login/{}?next={}",
                    p.settings.name,
                    url_encode(next)
                ),
                None => format!("/hub/oauth_login/{}", p.settings.name),
            },
        })
        .collect()
}

/// `?next=` of the login route.
#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /hub/oauth_login/<provider>?next=`: a new pre-login session holding the flow's state,
/// then to the provider.
pub async fn login(
    State(hub): State<HubState>,
    UrlPath(name): UrlPath<String>,
    MaybeBrowser(browser): MaybeBrowser,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let provider = find_provider(&hub, &name)?;
    let next = query
        .ok()
        .and_then(|Query(q)| q.next)
        .and_then(|n| safe_next(&n));
    if let Some(b) = &browser
        && b.user.is_some()
    {
        return Ok(found(
            &hub.config.location(next.as_deref().unwrap_or("/hub/home")),
        ));
    }
    let (url, flow) = provider.start().map_err(PageError::unexpected)?;
    let (cookie, _) = hub
        .store
        .create_session(&NewSession {
            user_id: None,
            next,
            data: json!({ FLOW_KEY: flow }),
            expires_at: store::now() + chrono::Duration::seconds(LOGIN_FLOW_TTL_SECS),
        })
        .await
        .map_err(PageError::unexpected)?;
    if let Some(b) = browser {
        end_session(&hub, &b.cookie).await?;
    }
    Ok(with_cookie(
        found(&url),
        session_cookie(&cookie, LOGIN_FLOW_TTL_SECS, hub.config.cookie_secure),
    ))
}

/// `?code&state` (or `?error`) of the callback.
#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn end_session(hub: &HubState, cookie: &str) -> Result<(), PageError> {
    match hub.store.delete_session(cookie).await {
        Ok(()) | Err(StoreError::NotFound) => Ok(()),
        Err(e) => Err(PageError::unexpected(e)),
    }
}

/// `GET /hub/oauth_callback/<provider>?code&state`: checks `state` against the pre-login session
/// (then ended), exchanges the code, validates the ID token and logs the user in.
pub async fn callback(
    State(hub): State<HubState>,
    UrlPath(name): UrlPath<String>,
    MaybeBrowser(browser): MaybeBrowser,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let provider = find_provider(&hub, &name)?;
    let Ok(Query(query)) = query else {
        return Err(PageError::bad_request("The login response is malformed."));
    };
    let restart = "Your login has expired or was started elsewhere: please log in again.";
    let Some(browser) = browser else {
        return Err(PageError::bad_request(restart));
    };
    let flow: Option<FlowState> = browser
        .session
        .data
        .get(FLOW_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let Some(flow) = flow.filter(|f| f.provider == name) else {
        return Err(PageError::bad_request(restart));
    };
    let state_ok = query
        .state
        .as_deref()
        .is_some_and(|s| constant_time_eq(s.as_bytes(), flow.state.as_bytes()));
    if !state_ok {
        tracing::warn!(provider = %name, "OIDC callback with a wrong state");
        return Err(PageError::forbidden(
            "The login response does not belong to this login (state mismatch): please log in again.",
        ));
    }
    // One callback per flow, whatever its outcome.
    end_session(&hub, &browser.cookie).await?;
    if let Some(error) = &query.error {
        let detail = query.error_description.as_deref().unwrap_or("");
        let shown: String = format!("{error} {detail}").chars().take(200).collect();
        return Err(PageError::forbidden(format!(
            "The identity provider refused the login: {}",
            shown.trim()
        )));
    }
    let Some(code) = query.code.as_deref() else {
        return Err(PageError::bad_request("The login response has no code."));
    };
    let (claims, raw_id_token) = match provider.finish(code, &flow).await {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(provider = %name, error = %e, "OIDC login refused");
            return Err(PageError::forbidden(format!("Login failed: {e}.")));
        }
    };
    complete_login(
        &hub,
        &provider,
        &claims,
        &raw_id_token,
        browser.session.next.as_deref(),
    )
    .await
}

/// What the claims make of a login: the subject, the name to use at the first login, the groups
/// and whether the user is an admin; or the page refusing it.
#[derive(Debug, PartialEq)]
pub struct MappedLogin {
    pub subject: String,
    pub username: String,
    /// Whether the claim is `username` itself up to ASCII case ([`is_exact_username`]): only
    /// then may the login claim an existing account or an `admin_users` name.
    pub exact: bool,
    pub groups: Vec<String>,
    /// Whether the groups make the user an admin (`admin_groups`).
    pub admin: bool,
}

/// Maps the claims of a login with `settings` (pure). Errors are the messages to show.
pub fn map_claims(
    settings: &OidcProvider,
    claims: &Map<String, Value>,
) -> Result<MappedLogin, PageError> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| PageError::forbidden("The identity provider sent no subject."))?;
    let raw = claims
        .get(&settings.username_claim)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            PageError::forbidden(format!(
                "The identity provider did not send the claim {:?} that names users here.",
                settings.username_claim
            ))
        })?;
    let username = normalize_username(raw).ok_or_else(|| {
        PageError::forbidden(format!(
            "The claim {:?} gives no usable user name: a user name here needs ASCII letters or \
             digits. Ask an administrator.",
            settings.username_claim
        ))
    })?;
    let exact = is_exact_username(raw, &username);
    let groups = groups_from_claims(claims, &settings.group_claims);
    let in_any = |wanted: &[String]| wanted.iter().any(|g| groups.contains(g));
    if !settings.allowed_groups.is_empty() && !in_any(&settings.allowed_groups) {
        return Err(PageError::forbidden(format!(
            "You are not authorised to use this hub: your account at {} is in none of the \
             groups it admits.",
            settings.display_name
        )));
    }
    Ok(MappedLogin {
        subject: subject.to_owned(),
        admin: in_any(&settings.admin_groups),
        username,
        exact,
        groups,
    })
}

async fn complete_login(
    hub: &HubState,
    provider: &Provider,
    claims: &Map<String, Value>,
    raw_id_token: &str,
    next: Option<&str>,
) -> Result<Response, PageError> {
    let settings = &provider.settings;
    let mapped = map_claims(settings, claims)?;
    let user = match hub
        .store
        .oidc_identity_user(&settings.name, &mapped.subject)
        .await
        .map_err(PageError::unexpected)?
    {
        Some(user) => user,
        None => {
            let user = claim_user_name(hub, &mapped).await?;
            match hub
                .store
                .link_oidc_identity(&settings.name, &mapped.subject, user.id)
                .await
            {
                Ok(()) => user,
                // Linked at the same moment by another login of the same subject.
                Err(StoreError::Conflict(_)) => hub
                    .store
                    .oidc_identity_user(&settings.name, &mapped.subject)
                    .await
                    .map_err(PageError::unexpected)?
                    .ok_or_else(|| PageError::conflict("Please log in again."))?,
                Err(e) => return Err(PageError::unexpected(e)),
            }
        }
    };
    // admin_users by the account's name: a look-alike never got such a name (claim_user_name).
    let admin = mapped.admin || is_admin_user(hub, &user.name);
    let user = if admin && !user.admin {
        hub.store
            .set_user_admin(&user.name, true)
            .await
            .map_err(PageError::unexpected)?
    } else {
        user
    };
    hub.store
        .set_user_groups(user.id, &mapped.groups)
        .await
        .map_err(PageError::unexpected)?;
    let (cookie, _) = hub
        .store
        .create_session(&NewSession {
            user_id: Some(user.id),
            next: None,
            data: json!({ LOGIN_KEY: { "provider": settings.name, "id_token": raw_id_token } }),
            expires_at: store::now() + chrono::Duration::seconds(hub.config.session_ttl_secs),
        })
        .await
        .map_err(PageError::unexpected)?;
    let mut event = NewAuditEvent::new(AuditAction::Login);
    event.actor = Some(user.name.clone());
    event.target_user = Some(user.name.clone());
    event.detail = json!({"method": "oidc", "provider": settings.name, "admin": user.admin});
    hub.audit.record(event).await;
    tracing::info!(user = %user.name, provider = %settings.name, admin = user.admin, groups = mapped.groups.len(), "login");
    Ok(with_cookie(
        found(&hub.config.location(next.unwrap_or("/hub/home"))),
        session_cookie(
            &cookie,
            hub.config.session_ttl_secs,
            hub.config.cookie_secure,
        ),
    ))
}

fn is_admin_user(hub: &HubState, name: &str) -> bool {
    hub.config
        .admin_users
        .iter()
        .any(|a| a.trim().eq_ignore_ascii_case(name))
}

/// The user a new identity (`mapped`) logs in as.
///
/// - An exact claim ([`MappedLogin::exact`]) takes the account `name` when it is free (created)
///   or when it exists with no identity linked yet: an account an admin created beforehand, by
///   the API or the admin page, is claimed by the first single sign-on login with its name
///   (it keeps its admin flag; its groups become the provider's at every login).
/// - A name the normalisation changed takes `name` only when no account has it and it is not
///   in `admin_users`: a look-alike never claims an account nor admin rights.
/// - Otherwise, and for an account already linked to another identity (never merged), a new
///   account `name-2`, `name-3`, … (never an existing one).
async fn claim_user_name(hub: &HubState, mapped: &MappedLogin) -> Result<store::User, PageError> {
    let name = mapped.username.as_str();
    for n in 1..=100u32 {
        let candidate = if n == 1 {
            name.to_owned()
        } else {
            let suffix = format!("-{n}");
            let mut base = name.to_owned();
            base.truncate(63 - suffix.len());
            format!("{}{suffix}", base.trim_end_matches(['-', '.', '_']))
        };
        if n == 1 && mapped.exact {
            let user = find_or_create_oidc_user(hub, &candidate, mapped.admin).await?;
            if !hub
                .store
                .user_has_oidc_identity(user.id)
                .await
                .map_err(PageError::unexpected)?
            {
                return Ok(user);
            }
            continue;
        }
        if is_admin_user(hub, &candidate) {
            continue;
        }
        match hub.store.create_user(&candidate, mapped.admin).await {
            Ok(user) => return Ok(user),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(PageError::from_store(format_args!("user {candidate}"), e)),
        }
    }
    Err(PageError::conflict(
        "No free user name is left for this account: ask an administrator.",
    ))
}

/// Where a logout of `session` continues: the provider's `end_session_endpoint` with
/// `id_token_hint`, `client_id` and `post_logout_redirect_uri`, when the session logged in with
/// a provider that advertises one.
pub fn logout_redirect(hub: &HubState, session: &Session) -> Option<String> {
    let login = session.data.get(LOGIN_KEY)?;
    let name = login.get("provider")?.as_str()?;
    let provider = hub
        .config
        .oidc_providers
        .iter()
        .find(|p| p.settings.name == name)?;
    let endpoint = provider.end_session_endpoint()?;
    let mut url = openidconnect::url::Url::parse(&endpoint).ok()?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(id_token) = login.get("id_token").and_then(Value::as_str) {
            query.append_pair("id_token_hint", id_token);
        }
        query.append_pair("client_id", &provider.settings.client_id);
        query.append_pair(
            "post_logout_redirect_uri",
            &provider.post_logout_redirect_uri,
        );
    }
    Some(url.to_string())
}

#[cfg(test)]
mod tests;
