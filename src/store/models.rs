//! The hub's records, as read from the store. Every model is `Serialize` so the hub can render it,
//! but none is the JupyterHub REST shape itself: the hub maps them (e.g. `Server::pending()` and
//! `Server::ready()` give JupyterHub's `pending` and `ready`, `spawner_state` is its `state`).
//!
//! Credentials (token, session and code values, client secrets) are never part of a model: the
//! store keeps only their SHA-256 hashes, and returns a new value once, when it creates it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// A hub user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub admin: bool,
    pub created: DateTime<Utc>,
    pub last_activity: Option<DateTime<Utc>>,
}

/// A user with the names of their groups and their servers, as listed by the users API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: User,
    /// Group names, sorted.
    pub groups: Vec<String>,
    /// Servers sorted by name (the default server, named `""`, first).
    pub servers: Vec<Server>,
}

/// A group of users with free-form properties.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub id: i64,
    pub name: String,
    /// A JSON object (JupyterHub's group `properties`).
    pub properties: Value,
    pub created: DateTime<Utc>,
}

/// A group with the names of its members.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupDetail {
    #[serde(flatten)]
    pub group: Group,
    /// Member names, sorted.
    pub users: Vec<String>,
}

/// Where a server is in its lifecycle.
///
/// ```text
/// Stopped/Failed --begin_start--> Starting --mark_running--> Running
/// Starting/Running --begin_stop--> Stopping --mark_stopped--> Stopped
/// Starting/Running/Stopping --mark_failed--> Failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl ServerState {
    pub const ALL: [ServerState; 5] = [
        ServerState::Stopped,
        ServerState::Starting,
        ServerState::Running,
        ServerState::Stopping,
        ServerState::Failed,
    ];

    /// JupyterHub's "active" states: ready or a transition pending.
    pub const ACTIVE: [ServerState; 3] = [
        ServerState::Starting,
        ServerState::Running,
        ServerState::Stopping,
    ];

    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Stopped => "stopped",
            ServerState::Starting => "starting",
            ServerState::Running => "running",
            ServerState::Stopping => "stopping",
            ServerState::Failed => "failed",
        }
    }

    /// Parses a stored `state` value.
    pub fn parse(s: &str) -> Option<ServerState> {
        ServerState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
    }

    /// JupyterHub's `pending`: `"spawn"` while starting, `"stop"` while stopping.
    pub fn pending(self) -> Option<&'static str> {
        match self {
            ServerState::Starting => Some("spawn"),
            ServerState::Stopping => Some("stop"),
            _ => None,
        }
    }

    /// JupyterHub's `ready`: running, with no transition pending.
    pub fn ready(self) -> bool {
        self == ServerState::Running
    }

    /// JupyterHub's "active": ready or a transition pending.
    pub fn is_active(self) -> bool {
        ServerState::ACTIVE.contains(&self)
    }
}

/// A user's server. The default server is named `""`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub display_name: Option<String>,
    /// The profile (image, resources) of the last start.
    pub profile: Option<String>,
    /// A JSON object: the user options of the last start.
    pub user_options: Value,
    pub state: ServerState,
    /// A JSON object: the backend's handle of the running server (a local pid and port, a
    /// Workspace name, ...). JupyterHub calls this the server's `state`.
    pub spawner_state: Value,
    /// Where the server is reached, while it runs.
    pub url: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub last_activity: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
}

impl Server {
    /// JupyterHub's `pending`.
    pub fn pending(&self) -> Option<&'static str> {
        self.state.pending()
    }

    /// JupyterHub's `ready`.
    pub fn ready(&self) -> bool {
        self.state.ready()
    }

    /// JupyterHub's `stopped`: neither ready nor pending (a failed server is stopped).
    pub fn stopped(&self) -> bool {
        !self.state.is_active()
    }
}

/// A server with the name of its owner, as listed across users.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerWithOwner {
    pub user_name: String,
    #[serde(flatten)]
    pub server: Server,
}

/// Who owns a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenOwner {
    User(i64),
    Service(String),
}

/// An API token (the value itself is never stored).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Token {
    pub id: i64,
    /// The first characters of the token, to tell tokens apart in listings.
    pub prefix: String,
    pub owner: TokenOwner,
    /// The OAuth client the token was issued to, for OAuth access tokens.
    pub oauth_client_id: Option<String>,
    /// The browser session the token was issued in; the token goes when the session does.
    pub session_id: Option<i64>,
    pub scopes: Vec<String>,
    pub note: Option<String>,
    pub created: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_activity: Option<DateTime<Utc>>,
}

impl Token {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A valid token with its owning user (`None` for a service's token).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenIdentity {
    pub token: Token,
    pub user: Option<User>,
}

/// An OAuth client: one per workspace server, `jupyterhub-user-<name>[-<server>]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OAuthClient {
    pub id: i64,
    pub client_id: String,
    pub description: String,
    pub redirect_uri: String,
    pub server_id: Option<i64>,
    pub allowed_scopes: Vec<String>,
    pub created: DateTime<Utc>,
}

/// PKCE code challenge methods (RFC 7636).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PkceMethod {
    S256,
    #[serde(rename = "plain")]
    Plain,
}

impl PkceMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PkceMethod::S256 => "S256",
            PkceMethod::Plain => "plain",
        }
    }

    pub fn parse(s: &str) -> Option<PkceMethod> {
        match s {
            "S256" => Some(PkceMethod::S256),
            "plain" => Some(PkceMethod::Plain),
            _ => None,
        }
    }
}

/// An OAuth authorization code (the code itself is never stored).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OAuthCode {
    pub id: i64,
    pub client_id: String,
    pub user_id: i64,
    pub session_id: Option<i64>,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<PkceMethod>,
    pub scopes: Vec<String>,
    pub created: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A browser session (the cookie value itself is never stored).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    pub id: i64,
    /// `None` until the browser logs in.
    pub user_id: Option<i64>,
    pub csrf_token: String,
    /// Where to go after login.
    pub next: Option<String>,
    /// A JSON object: login flow state and the like.
    pub data: Value,
    pub created: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_activity: Option<DateTime<Utc>>,
}

/// A valid session with its user, if logged in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionIdentity {
    pub session: Session,
    pub user: Option<User>,
}

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Login,
    Logout,
    ServerStart,
    ServerStop,
    TokenCreate,
    TokenRevoke,
    /// An administrator's action; `detail` says which.
    Admin,
    /// A batch job was submitted (`target_server` holds the job's name).
    JobSubmit,
    /// A batch job was cancelled (`target_server` holds the job's name).
    JobCancel,
}

impl AuditAction {
    pub const ALL: [AuditAction; 9] = [
        AuditAction::Login,
        AuditAction::Logout,
        AuditAction::ServerStart,
        AuditAction::ServerStop,
        AuditAction::TokenCreate,
        AuditAction::TokenRevoke,
        AuditAction::Admin,
        AuditAction::JobSubmit,
        AuditAction::JobCancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Login => "login",
            AuditAction::Logout => "logout",
            AuditAction::ServerStart => "server_start",
            AuditAction::ServerStop => "server_stop",
            AuditAction::TokenCreate => "token_create",
            AuditAction::TokenRevoke => "token_revoke",
            AuditAction::Admin => "admin",
            AuditAction::JobSubmit => "job_submit",
            AuditAction::JobCancel => "job_cancel",
        }
    }

    pub fn parse(s: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub action: AuditAction,
    /// Who acted: a user or service name; `None` for the hub itself.
    pub actor: Option<String>,
    pub target_user: Option<String>,
    pub target_server: Option<String>,
    /// A JSON object with the details.
    pub detail: Value,
}
