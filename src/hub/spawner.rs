//! Start and stop orchestration of users' servers, shared by the REST API and the web UI.
//!
//! The server row in the store is the truth; every transition is one of the store's conditional
//! statements, so several hub processes on one database agree. A start:
//!
//! 1. checks the name, creates the server row if needed and moves it Stopped/Failed → Starting;
//! 2. issues the server's credentials: an API token with JupyterHub's `server` role
//!    (`users:activity!user=<u>`, `access:servers!server=<u>/<s>`) and the OAuth client
//!    `jupyterhub-user-<u>[-<s>]` whose secret is that token; the token is tied to the client, so
//!    deleting the client at stop revokes it with every OAuth token issued to the server;
//! 3. computes the environment JupyterHub's `Spawner.get_env` gives a single-user server;
//! 4. drives `backend.start` in a task of its own, bounded by `spawn_timeout_secs`, publishing
//!    progress to [`Spawns`](super::spawns::Spawns). The task also watches the row: when a stop
//!    moves it out of Starting (from this process or another), the start is dropped, which makes
//!    the backend clean up.
//!
//! Success marks the row Running with the backend's URL and handle; failure marks it Failed, and
//! records the message in the audit log (where the progress API of any hub process finds it).
//!
//! A restarted hub calls [`recover`] to re-adopt live servers and stop dead ones; [`watch`] keeps
//! noticing servers that exit on their own.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use kube::ResourceExt;

use super::catalog::{Catalog, CheckError, CredentialsFrom, DataEndpoint};
use super::{HubError, HubResult, HubState};
use crate::api::v1alpha1::WorkspaceKind;
use crate::backend::{
    BackendError, BackendStatus, MissingProgram, ProgressEvent, SpawnRequest, StartRecord,
};
use crate::policy::names::{
    self, ServerNameRule, escape_segment, server_url, site_oauth_callback_url,
};
use crate::store::{
    self, AuditAction, NewAuditEvent, NewOAuthClient, NewToken, Server, ServerState,
    ServerWithOwner, StartRequest, StoreError, TokenOwner, User, oauth_client_id,
};

/// How long a start or stop request waits for the outcome before answering "pending" (202).
pub const READY_WAIT: Duration = Duration::from_secs(1);

/// How often a spawn in progress checks that its row is still Starting.
const ROW_POLL: Duration = Duration::from_secs(1);

/// How often [`watch`] sweeps the running servers.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long the check of a data source's endpoint waits for a TCP connection.
pub const ENDPOINT_PROBE_TIMEOUT: Duration = crate::net::PROBE_TIMEOUT;

/// Servers read per statement by [`recover`] and [`sweep`].
const SWEEP_PAGE: u32 = 200;

/// Backend polls run at once by [`recover`] and [`sweep`].
const SWEEP_CONCURRENCY: usize = 16;

/// How long a spawn or stop keeps trying to record its end while the database is out of reach
/// (README, "Resilience"). Past it the row is left as it was and the sweep ([`watch`]) settles
/// it later.
const OUTAGE_RETRY: Duration = Duration::from_secs(120);

/// Runs the store write `write` again, backing off from 100 ms to 2 s, while it fails because the
/// database is out of reach ([`StoreError::Unavailable`], or a 503 `HubError`), for up to
/// [`OUTAGE_RETRY`]; any other outcome is returned as it is. Only for writes whose loss would
/// leave a row wrong (a spawn's or a stop's end): a request's own writes answer 503 instead.
async fn until_recorded<T, E, F, Fut>(what: &str, mut write: F) -> Result<T, E>
where
    E: Outage + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + OUTAGE_RETRY;
    let mut backoff = Duration::from_millis(100);
    loop {
        match write().await {
            Err(e) if e.is_outage() && tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, "{what}: the database is unavailable; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// An error that may say the database is out of reach (see [`until_recorded`]).
trait Outage {
    fn is_outage(&self) -> bool;
}

impl Outage for StoreError {
    fn is_outage(&self) -> bool {
        self.is_unavailable()
    }
}

impl Outage for HubError {
    fn is_outage(&self) -> bool {
        self.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE
    }
}

/// What a start request led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// The server is ready (JupyterHub's 201).
    Ready,
    /// The server is starting (JupyterHub's 202).
    Pending,
}

/// What a stop request led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The server is stopped (JupyterHub's 204).
    Stopped,
    /// The server is stopping (JupyterHub's 202).
    Pending,
}

/// What a start asks for.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The WorkspaceProfile; by default the `profile` of `user_options`, if a string.
    pub profile: Option<String>,
    /// JupyterHub's `user_options`; `None` reuses those of the previous start.
    pub user_options: Option<Value>,
    /// A display name for the server.
    pub display_name: Option<String>,
    /// Who asks (a user or service name), for the audit log; `None` for the hub itself.
    pub actor: Option<String>,
}

/// What [`recover`] or [`sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Servers found alive and kept (or marked Running).
    pub adopted: Vec<String>,
    /// Servers found dead (or interrupted) and marked stopped.
    pub stopped: Vec<String>,
    /// Servers left as they are (a spawn still young enough to be driven by another hub, or a
    /// backend that could not tell).
    pub left: Vec<String>,
}

/// `user/server`, as logs and audit events name a server.
fn log_name(user: &str, server: &str) -> String {
    format!("{user}/{server}")
}

/// The scopes of a server's own API token with JupyterHub's built-in `server` role (a hub
/// without `--roles`; a start uses the configured roles,
/// [`Roles::server_token_scopes`](crate::scopes::Roles::server_token_scopes)). Sorted.
pub fn server_token_scopes(user: &str, server: &str) -> Vec<String> {
    crate::scopes::Roles::default().server_token_scopes(user, false, &Default::default(), server)
}

/// The scopes a token needs to access the server (JupyterHub's `oauth_access_scopes`).
pub fn access_scopes(user: &str, server: &str) -> Vec<String> {
    vec![
        format!("access:servers!server={user}/{server}"),
        format!("access:servers!user={user}"),
    ]
}

/// The OAuth redirect URI of a server of this hub: [`names::oauth_callback_url`], on the user's origin
/// with a user domain (JupyterHub: `url_path_join(user.url, server, 'oauth_callback')`, where
/// `user.url` carries the user's host under `subdomain_host`).
pub fn server_oauth_callback_url(config: &super::HubConfig, user: &str, server: &str) -> String {
    site_oauth_callback_url(
        &config.public_url,
        config.user_domain.as_ref(),
        user,
        server,
    )
}

/// 400 when the hub has a user domain and `user` has no host under it.
pub fn check_user_host(config: &super::HubConfig, user: &str) -> HubResult<()> {
    match &config.user_domain {
        Some(domain) => domain
            .host(user)
            .map(drop)
            .map_err(|e| HubError::BadRequest(e.to_string())),
        None => Ok(()),
    }
}

/// The `JUPYTERHUB_*` environment of a single-user server, as JupyterHub's `Spawner.get_env`
/// computes it. `JUPYTERHUB_SERVICE_URL` (where the server binds) is left to the backend.
pub fn server_env(
    config: &super::HubConfig,
    user: &str,
    server: &str,
    api_token: &str,
    user_options: &Value,
) -> BTreeMap<String, String> {
    let prefix = server_url(user, server);
    let public = config.public_url.trim_end_matches('/');
    let api_url = config.server_api_url.trim_end_matches('/');
    let json_list = |v: Vec<String>| serde_json::to_string(&v).unwrap_or_else(|_| "[]".into());
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("JUPYTERHUB_API_TOKEN", api_token.to_owned());
    set("JPY_API_TOKEN", api_token.to_owned());
    set("JUPYTERHUB_CLIENT_ID", oauth_client_id(user, server));
    set("JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED", "0".into());
    // With a user domain the server is on another host than the hub: it sends browsers to the
    // hub's own host to log in (JupyterHub's `Spawner.get_env`: `JUPYTERHUB_HOST` is the hub's
    // `public_host`), and its callback is on the user's host.
    let hub_host = match &config.user_domain {
        Some(_) => public.to_owned(),
        None => String::new(),
    };
    set("JUPYTERHUB_HOST", hub_host);
    set(
        "JUPYTERHUB_OAUTH_CALLBACK_URL",
        server_oauth_callback_url(config, user, server),
    );
    set(
        "JUPYTERHUB_OAUTH_SCOPES",
        json_list(access_scopes(user, server)),
    );
    set(
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
        json_list(access_scopes(user, server)),
    );
    set("JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES", "[]".into());
    set("JUPYTERHUB_USER", user.to_owned());
    set("JUPYTERHUB_SERVER_NAME", server.to_owned());
    set("JUPYTERHUB_API_URL", api_url.to_owned());
    set(
        "JUPYTERHUB_ACTIVITY_URL",
        format!("{api_url}/users/{}/activity", escape_segment(user)),
    );
    set("JUPYTERHUB_BASE_URL", "/".into());
    set("JUPYTERHUB_SERVICE_PREFIX", prefix.clone());
    let public_server = config.server_public_url(user, server);
    if !public_server.is_empty() {
        set("JUPYTERHUB_PUBLIC_URL", public_server);
    }
    if !public.is_empty() {
        set("JUPYTERHUB_PUBLIC_HUB_URL", format!("{public}/hub/"));
    }
    if let Some(url) = user_options.get("default_url").and_then(Value::as_str) {
        set("JUPYTERHUB_DEFAULT_URL", url.to_owned());
    }
    env
}

/// The message a failed backend call shows the user (internal errors are only logged).
fn failure_message(err: &BackendError) -> String {
    match err {
        BackendError::SpawnFailed(m) => m.clone(),
        BackendError::Timeout(_) => err.to_string(),
        BackendError::BadHandle(_) | BackendError::Other(_) => {
            "the backend could not start the server (see the hub's log)".to_owned()
        }
    }
}

async fn audit(
    hub: &HubState,
    action: AuditAction,
    actor: Option<&str>,
    user: &str,
    server: &str,
    detail: Value,
) {
    hub.audit
        .record(NewAuditEvent {
            action,
            actor: actor.map(str::to_owned),
            target_user: Some(user.to_owned()),
            target_server: Some(server.to_owned()),
            detail,
        })
        .await;
}

/// Deletes the server's OAuth clients (those registered for this server row, whatever their
/// ids: one made under an earlier naming too), which revokes the server's API token and every
/// OAuth token issued to it.
pub async fn revoke_credentials(hub: &HubState, user: &str, server: &Server) -> HubResult<()> {
    let revoked = hub.store.delete_server_oauth_clients(server.id).await?;
    tracing::debug!(server = %log_name(user, &server.name), revoked, "OAuth clients revoked");
    Ok(())
}

/// The server row as it is now.
async fn reload(hub: &HubState, id: i64) -> HubResult<Server> {
    hub.store
        .get_server_by_id(id)
        .await
        .map_err(|e| HubError::from_store("server", e))
}

/// Starts server `server_name` of `user` (creating a named server's row on first start).
///
/// 400 for an invalid name or a server already running or stopping, 409 when the name collides
/// with another server's (ignoring case, or through an OAuth client id registered under the
/// earlier naming, `policy::names::oauth_client_id`). Waits up to
/// [`READY_WAIT`] for the server to be ready; a spawn that fails within that time is an error.
pub async fn start_server(
    hub: &HubState,
    user: &User,
    server_name: &str,
    options: StartOptions,
) -> HubResult<StartOutcome> {
    let name = log_name(&user.name, server_name);
    names::check_name("server", server_name).map_err(HubError::BadRequest)?;
    check_user_host(&hub.config, &user.name)?;
    let existing = match hub.store.get_server(user.id, server_name).await {
        Ok(server) => Some(server),
        Err(StoreError::NotFound) => {
            check_new_server_name(hub.config.server_name_rule, server_name)?;
            None
        }
        Err(e) => return Err(e.into()),
    };
    // The catalogue's rules, before anything is written.
    let groups = hub.store.user_groups(user.id).await?;
    let options = check_start(
        hub,
        &user.name,
        server_name,
        &groups,
        existing.as_ref(),
        options,
    )?;
    let mut server = match existing {
        Some(server) => server,
        None => hub
            .store
            .create_server(user.id, server_name)
            .await
            .map_err(|e| HubError::from_store(format!("server {name}"), e))?,
    };
    let client_id = oauth_client_id(&user.name, server_name);
    match hub.store.get_oauth_client(&client_id).await {
        Ok(client) if client.server_id != Some(server.id) => {
            return Err(HubError::Conflict(format!(
                "server {name} cannot start: its OAuth client id {client_id:?} belongs to another \
                 server (registered under the earlier naming of client ids; it goes when that \
                 server stops)"
            )));
        }
        Ok(_) | Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    match server.state {
        ServerState::Starting => return Ok(StartOutcome::Pending),
        ServerState::Stopping => {
            return Err(HubError::BadRequest(format!("{name} is pending stop")));
        }
        ServerState::Running => match hub.backend.poll(&server.spawner_state).await {
            Ok(BackendStatus::Running { .. } | BackendStatus::Starting) | Err(_) => {
                return Err(HubError::BadRequest(format!("{name} is already running")));
            }
            Ok(BackendStatus::Stopped { .. } | BackendStatus::Failed { .. }) => {
                tracing::info!(server = %name, "server found dead at start: marking it stopped");
                if hub.store.begin_stop(server.id).await.is_ok() {
                    server = hub.store.mark_stopped(server.id).await?;
                    revoke_credentials(hub, &user.name, &server).await?;
                }
            }
        },
        ServerState::Stopped | ServerState::Failed => {}
    }

    let profile = options.profile.clone().or_else(|| {
        options
            .user_options
            .as_ref()
            .and_then(|o| o.get("profile"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let request = StartRequest {
        profile,
        user_options: options.user_options.clone(),
        display_name: options.display_name.clone(),
    };
    let server = match hub
        .store
        .begin_start(server.id, &request, store::now())
        .await
    {
        Ok(server) => server,
        Err(StoreError::Conflict(_)) => {
            return match reload(hub, server.id).await?.state {
                ServerState::Starting => Ok(StartOutcome::Pending),
                ServerState::Stopping => {
                    Err(HubError::BadRequest(format!("{name} is pending stop")))
                }
                _ => Err(HubError::BadRequest(format!("{name} is already running"))),
            };
        }
        Err(e) => return Err(HubError::from_store(format!("server {name}"), e)),
    };

    let (spawn, endpoints) = match prepare_spawn(hub, user, &server).await {
        Ok(spawn) => spawn,
        Err(e) => {
            // In the background when the database is away (the request gets its 503 now): the
            // row must not stay Starting with no spawn behind it.
            let (hub, user, server) = (hub.clone(), user.name.clone(), server.clone());
            let undo = async move {
                let _ = until_recorded("recording a failed spawn", || {
                    hub.store.mark_failed(server.id)
                })
                .await;
                let _ = until_recorded("revoking a failed server's credentials", || {
                    revoke_credentials(&hub, &user, &server)
                })
                .await;
            };
            if e.is_outage() {
                tokio::spawn(undo);
            } else {
                undo.await;
            }
            return Err(e);
        }
    };
    audit(
        hub,
        AuditAction::ServerStart,
        options.actor.as_deref(),
        &user.name,
        server_name,
        json!({"profile": server.profile, "user_options": server.user_options}),
    )
    .await;

    hub.spawns.begin(server.id);
    hub.spawns.publish(
        server.id,
        ProgressEvent {
            progress: 0,
            message: "Server requested".into(),
            ready: false,
            failed: false,
        },
    );
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(drive_start(
        hub.clone(),
        server,
        user.name.clone(),
        spawn,
        endpoints,
        done_tx,
    ));
    match tokio::time::timeout(READY_WAIT, done_rx).await {
        Ok(Ok(Ok(()))) => Ok(StartOutcome::Ready),
        Ok(Ok(Err(message))) => Err(HubError::Status(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("Spawn failed: {message}"),
        )),
        Ok(Err(_)) | Err(_) => Ok(StartOutcome::Pending),
    }
}

/// Checks a start against the hub's catalogue (see [`super::catalog`]), as the operator will:
/// 403 naming the rule (`ProfileForbidden: ...`) when a rule refuses it, 400 naming the field
/// when the user options are malformed. The user options are the request's, else the
/// previous start's (`previous`). Returns the options with the profile the start uses made
/// explicit (the request's, else the default one the user may use). An empty catalogue checks
/// nothing.
///
/// On the `local` backend the data sources' Secrets are the catalogue's
/// ([`CredentialsFrom::Catalog`]): a Secret it lacks, or one without a key a source needs, is a
/// 403 `DataCredentialsNotFound` naming the source, the Secret (and the key), before anything is
/// written.
pub fn check_start(
    hub: &HubState,
    user: &str,
    server: &str,
    groups: &[String],
    previous: Option<&Server>,
    mut options: StartOptions,
) -> HubResult<StartOptions> {
    let catalog = hub.config.catalog.get();
    if catalog.is_empty() {
        return Ok(options);
    }
    let user_options = options
        .user_options
        .clone()
        .or_else(|| previous.map(|s| s.user_options.clone()))
        .unwrap_or(Value::Null);
    let non_empty = |p: &str| !p.is_empty();
    let profile = options
        .profile
        .clone()
        .filter(|p| non_empty(p))
        .or_else(|| {
            options
                .user_options
                .is_none()
                .then(|| previous.and_then(|s| s.profile.clone()))
                .flatten()
                .filter(|p| non_empty(p))
        });
    let request = SpawnRequest {
        user: user.to_owned(),
        server: server.to_owned(),
        groups: groups.to_vec(),
        profile,
        user_options,
        env: BTreeMap::new(),
        files: BTreeMap::new(),
        dask: None,
        kind: Default::default(),
    };
    let local = hub.backend.kind() == "local";
    let credentials = if local {
        CredentialsFrom::Catalog
    } else {
        CredentialsFrom::Cluster
    };
    let checked = catalog
        .check(&request, &hub.config.default_profile, credentials)
        .and_then(|profile| {
            if local {
                // The keys of the Secrets (the values are read again at spawn).
                catalog.local_data(&request, &hub.config.default_profile, 0, 0)?;
                catalog.local_dask(&request, &hub.config.default_profile)?;
            }
            Ok(profile)
        });
    let profile = checked.map_err(|e| refusal_error(e, user, server))?;
    if let Some(name) = &profile {
        let kind = workspace_kind(&catalog, Some(name), &request.user_options);
        check_kind_runs(hub, name, kind)?;
        if local {
            check_local_mounts(&catalog, &request.user_options)?;
        }
    }
    if profile.is_some() {
        options.profile = profile;
    }
    Ok(options)
}

/// The kind a server of `profile` runs (see [`SpawnRequest::kind`]): the profile's, or
/// `user_options.kind` when the profile allows an override (`allowKindOverride`; the catalogue's
/// check refuses a different kind otherwise). Without a catalogue (or a profile it has):
/// JupyterLab.
pub fn workspace_kind(
    catalog: &Catalog,
    profile: Option<&str>,
    user_options: &Value,
) -> WorkspaceKind {
    let Some(spec) = profile.and_then(|p| catalog.profile(p)).map(|p| &p.spec) else {
        return WorkspaceKind::default();
    };
    let asked = user_options
        .get("kind")
        .and_then(|k| serde_json::from_value::<WorkspaceKind>(k.clone()).ok());
    match asked {
        Some(kind) if spec.allow_kind_override => kind,
        _ => spec.kind,
    }
}

/// 400 naming the missing programs (and what provides them) when the backend cannot run
/// `kind`, before anything is written ([`WorkspaceBackend::missing_programs`]).
///
/// [`WorkspaceBackend::missing_programs`]: crate::backend::WorkspaceBackend::missing_programs
pub fn check_kind_runs(hub: &HubState, profile: &str, kind: WorkspaceKind) -> HubResult<()> {
    let missing = hub.backend.missing_programs(kind);
    if missing.is_empty() {
        return Ok(());
    }
    Err(HubError::BadRequest(format!(
        "profile {profile} runs {}, which this hub's {} backend cannot run: missing {}",
        kind.as_str(),
        hub.backend.kind(),
        describe_missing(&missing)
    )))
}

/// A catalogue profile the spawn page hides because the backend cannot run its kind (what
/// /hub/admin shows admins).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HiddenProfile {
    /// The WorkspaceProfile.
    pub name: String,
    /// Its display name.
    pub display_name: String,
    /// Its kind.
    pub kind: &'static str,
    /// What the backend lacks to run it.
    pub missing: Vec<MissingProgram>,
}

/// The catalogue's profiles whose kind the backend cannot run, in catalogue order.
pub fn hidden_profiles(hub: &HubState) -> Vec<HiddenProfile> {
    let catalog = hub.config.catalog.get();
    catalog
        .profiles
        .iter()
        .filter_map(|p| {
            let missing = hub.backend.missing_programs(p.spec.kind);
            (!missing.is_empty()).then(|| HiddenProfile {
                name: p.name_any(),
                display_name: p.spec.display_name.clone(),
                kind: p.spec.kind.as_str(),
                missing,
            })
        })
        .collect()
}

/// Whether the backend can run the profile named `profile` (its kind lacks nothing; a name
/// the catalogue lacks is a JupyterLab, the empty catalogue's default).
pub fn profile_runs(hub: &HubState, catalog: &Catalog, profile: &str) -> bool {
    let kind = catalog
        .profile(profile)
        .map_or(WorkspaceKind::default(), |p| p.spec.kind);
    hub.backend.missing_programs(kind).is_empty()
}

/// `rserver (RStudio Server ...), Xvnc (Debian package ...)`.
pub fn describe_missing(missing: &[MissingProgram]) -> String {
    missing
        .iter()
        .map(|m| format!("{} (provided by {})", m.program, m.provided_by))
        .collect::<Vec<_>>()
        .join(", ")
}

/// On the local backend a mounted data source (nfs, pvc) is the directory at its `mountPath`
/// on this machine: the server's processes see the machine's file system, and nothing is
/// mounted for them. A source whose `mountPath` does not exist here is a 400 naming it, so that
/// a workspace never starts with data it cannot see.
fn check_local_mounts(catalog: &Catalog, user_options: &Value) -> HubResult<()> {
    let names = user_options
        .get("dataSources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for name in names {
        let Some(source) = catalog.data_sources.iter().find(|d| d.name_any() == name) else {
            continue;
        };
        let spec = &source.spec;
        if spec.nfs.is_none() && spec.pvc.is_none() {
            continue;
        }
        if let Some(path) = spec.mount_path.as_deref()
            && !std::path::Path::new(path).is_dir()
        {
            return Err(HubError::BadRequest(format!(
                "dataSources: DataSource {name} is mounted at {path}, which is not a directory on \
                 this machine (the local backend mounts nothing: a mounted source is the \
                 directory at its mountPath)"
            )));
        }
    }
    Ok(())
}

/// The answer to a start the catalogue refuses: 400 naming a malformed field, 403 naming the
/// rule (`<Reason>: <message>`).
fn refusal_error(e: CheckError, user: &str, server: &str) -> HubError {
    match e {
        CheckError::Invalid(e) => HubError::BadRequest(e.to_string()),
        e @ CheckError::Refused(_) => {
            tracing::info!(user, server, refusal = %e, "start refused by the catalogue");
            HubError::Forbidden(e.to_string())
        }
    }
}

/// Checks that every s3 endpoint of the data sources accepts a TCP connection within
/// [`ENDPOINT_PROBE_TIMEOUT`]; else the spawn fails with
/// `DataSource <name>: endpoint <url> unreachable: <why>`.
async fn probe_endpoints(endpoints: &[DataEndpoint]) -> Result<(), BackendError> {
    for endpoint in endpoints {
        if let Err(why) = crate::net::probe(&endpoint.url, ENDPOINT_PROBE_TIMEOUT).await {
            return Err(BackendError::SpawnFailed(format!(
                "DataSource {}: endpoint {} unreachable: {why}",
                endpoint.source, endpoint.url
            )));
        }
    }
    Ok(())
}

/// 400 unless `name` is a valid name for a new server: empty (the default server) or allowed by
/// `rule` (`--server-name-rule`); the message names the field (`server_name`) and the rule.
pub fn check_new_server_name(rule: ServerNameRule, name: &str) -> HubResult<()> {
    names::check_name("server", name).map_err(HubError::BadRequest)?;
    if names::RESERVED_SERVER_NAMES.contains(&name) {
        return Err(HubError::BadRequest(format!(
            "Invalid server_name {name:?}: the name {name:?} is reserved (/user/<name>/{name}/ is \
             the default server's Dask dashboard)"
        )));
    }
    if !name.is_empty() && !rule.allows(name) {
        return Err(HubError::BadRequest(format!(
            "Invalid server_name {name:?}: a new server's name must follow {}",
            rule.describe()
        )));
    }
    Ok(())
}

/// Issues the server's credentials and builds the backend's request; on the `local` backend
/// also the data sources' environment and files (`Catalog::local_data`), and the endpoints to
/// check before the start.
async fn prepare_spawn(
    hub: &HubState,
    user: &User,
    server: &Server,
) -> HubResult<(SpawnRequest, Vec<DataEndpoint>)> {
    let client_id = oauth_client_id(&user.name, &server.name);
    // A clean slate: tokens of an earlier run that was not stopped cleanly go with the client.
    revoke_credentials(hub, &user.name, server).await?;
    let prefix = server_url(&user.name, &server.name);
    let token = store::tokens::generate_token();
    hub.store
        .upsert_oauth_client(&NewOAuthClient {
            client_id: client_id.clone(),
            description: format!("Server at {prefix}"),
            secret: token.clone(),
            redirect_uri: server_oauth_callback_url(&hub.config, &user.name, &server.name),
            server_id: Some(server.id),
            allowed_scopes: access_scopes(&user.name, &server.name),
        })
        .await
        .map_err(|e| HubError::from_store(format!("OAuth client {client_id}"), e))?;
    let groups = hub.store.user_groups(user.id).await?;
    // The `server` role as configured (`--roles`), within what the user holds.
    let token_scopes = hub.config.roles.server_token_scopes(
        &user.name,
        user.admin,
        &groups.iter().cloned().collect(),
        &server.name,
    );
    hub.store
        .create_token_with_value(
            &token,
            &NewToken {
                owner: TokenOwner::User(user.id),
                scopes: token_scopes,
                note: Some(format!("Server at {prefix}")),
                expires_at: None,
                oauth_client_id: Some(client_id),
                session_id: None,
            },
        )
        .await?;
    let mut env = server_env(
        &hub.config,
        &user.name,
        &server.name,
        &token,
        &server.user_options,
    );
    // The operator gives a pod its profile's environment; local processes get it here.
    if hub.backend.kind() == "local"
        && let Some(profile) = server
            .profile
            .as_deref()
            .and_then(|p| hub.config.catalog.get().profile(p).cloned())
    {
        for (k, v) in &profile.spec.env {
            if !k.starts_with("JUPYTERHUB_") {
                env.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    let kind = workspace_kind(
        &hub.config.catalog.get(),
        server.profile.as_deref(),
        &server.user_options,
    );
    let mut request = SpawnRequest {
        user: user.name.clone(),
        server: server.name.clone(),
        groups,
        profile: server.profile.clone(),
        user_options: server.user_options.clone(),
        env,
        files: BTreeMap::new(),
        dask: None,
        kind,
    };
    let mut endpoints = Vec::new();
    if hub.backend.kind() == "local" {
        // The operator gives a pod its data sources; local processes get them here, with the
        // values of the catalogue's Secrets. The password file is obfuscated for the uid the
        // servers run under: the hub's own.
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let mtime = u32::try_from(store::now().timestamp()).unwrap_or(0);
        let catalog = hub.config.catalog.get();
        let data = catalog
            .local_data(&request, &hub.config.default_profile, uid, mtime)
            .map_err(|e| refusal_error(e, &user.name, &server.name))?;
        // The Dask cluster beside the server (the operator's DaskCluster's local stand-in).
        request.dask = catalog
            .local_dask(&request, &hub.config.default_profile)
            .map_err(|e| refusal_error(e, &user.name, &server.name))?;
        request.env.extend(data.env);
        request.files = data.files;
        endpoints = data.endpoints;
    }
    Ok((request, endpoints))
}

/// Resolves when the server's row is no longer Starting, with its state.
async fn left_starting(hub: &HubState, id: i64) -> ServerState {
    loop {
        tokio::time::sleep(ROW_POLL).await;
        match hub.store.get_server_by_id(id).await {
            Ok(s) if s.state == ServerState::Starting => {}
            Ok(s) => return s.state,
            // Deleted (with its user): nothing to start for.
            Err(StoreError::NotFound) => return ServerState::Stopped,
            Err(e) => tracing::warn!(error = %e, "cannot read a starting server's row"),
        }
    }
}

enum StartEnd {
    Started(crate::backend::Spawned),
    Failed(BackendError),
    Cancelled(ServerState),
}

/// Drives one start to its end; sends the outcome (`Err(message)` on failure) on `done`.
async fn drive_start(
    hub: HubState,
    server: Server,
    user: String,
    request: SpawnRequest,
    endpoints: Vec<DataEndpoint>,
    done: oneshot::Sender<Result<(), String>>,
) {
    let id = server.id;
    let name = log_name(&user, &server.name);
    let (tx, mut rx) = mpsc::channel::<ProgressEvent>(32);
    let forward = {
        let hub = hub.clone();
        tokio::spawn(async move {
            while let Some(mut event) = rx.recv().await {
                // Only the hub says when a spawn is over (JupyterHub drops a backend's `ready`).
                event.ready = false;
                event.failed = false;
                event.progress = event.progress.min(99);
                hub.spawns.publish(id, event);
            }
        })
    };
    let timeout = Duration::from_secs(hub.config.spawn_timeout_secs);
    let end = {
        let backend = hub.backend.clone();
        let start = async move {
            if !endpoints.is_empty() {
                let _ = tx
                    .send(ProgressEvent {
                        progress: 5,
                        message: "Checking the data sources' endpoints".into(),
                        ready: false,
                        failed: false,
                    })
                    .await;
                probe_endpoints(&endpoints).await?;
            }
            backend.start(request, tx).await
        };
        tokio::select! {
            r = start => match r {
                Ok(spawned) => StartEnd::Started(spawned),
                Err(e) => StartEnd::Failed(e),
            },
            () = tokio::time::sleep(timeout) => {
                StartEnd::Failed(BackendError::Timeout(hub.config.spawn_timeout_secs))
            }
            state = left_starting(&hub, id) => StartEnd::Cancelled(state),
        }
    };
    // The start future is gone with its sender: every event it sent is published before the end.
    let _ = forward.await;
    let outcome = match end {
        StartEnd::Started(spawned) => {
            let running = until_recorded("recording a server ready", || {
                hub.store
                    .mark_running(id, &spawned.url, &spawned.handle, store::now())
            })
            .await;
            match running {
                Ok(_) => {
                    tracing::info!(server = %name, url = %spawned.url, "server ready");
                    let url = hub.config.server_url(&user, &server.name);
                    hub.spawns.publish(
                        id,
                        ProgressEvent {
                            progress: 100,
                            message: format!("Server ready at {url}"),
                            ready: true,
                            failed: false,
                        },
                    );
                    Ok(())
                }
                Err(e) => {
                    // Stopped (or failed) while starting: undo the start.
                    tracing::info!(server = %name, error = %e, "server started after its spawn ended: stopping it");
                    if let Err(e) = hub.backend.stop(&spawned.handle).await {
                        tracing::error!(server = %name, error = %e, "cannot stop a cancelled server");
                    }
                    finish_cancelled(&hub, &server, &user).await;
                    Err("Spawn cancelled".to_owned())
                }
            }
        }
        StartEnd::Failed(err) => {
            tracing::warn!(server = %name, error = ?err, "spawn failed");
            let message = failure_message(&err);
            match until_recorded("recording a failed spawn", || hub.store.mark_failed(id)).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => tracing::error!(server = %name, error = %e, "cannot mark server failed"),
            }
            let revoked = until_recorded("revoking a failed server's credentials", || {
                revoke_credentials(&hub, &user, &server)
            });
            if let Err(e) = revoked.await {
                tracing::error!(server = %name, error = %e, "cannot revoke server credentials");
            }
            audit(
                &hub,
                AuditAction::ServerStart,
                None,
                &user,
                &server.name,
                json!({"failed": true, "message": message}),
            )
            .await;
            hub.spawns.publish(
                id,
                ProgressEvent {
                    progress: 100,
                    message: format!("Spawn failed: {message}"),
                    ready: false,
                    failed: true,
                },
            );
            Err(message)
        }
        StartEnd::Cancelled(state) => {
            tracing::info!(server = %name, state = state.as_str(), "spawn cancelled");
            if state == ServerState::Stopping {
                finish_cancelled(&hub, &server, &user).await;
            }
            hub.spawns.publish(
                id,
                ProgressEvent {
                    progress: 100,
                    message: "Spawn cancelled".into(),
                    ready: false,
                    failed: true,
                },
            );
            Err("Spawn cancelled".to_owned())
        }
    };
    hub.spawns.end(id);
    let _ = done.send(outcome);
}

/// A start interrupted by a stop: the row goes Stopped and the credentials go.
async fn finish_cancelled(hub: &HubState, server: &Server, user: &str) {
    let stopped = until_recorded("recording a cancelled spawn", || {
        hub.store.mark_stopped(server.id)
    });
    if let Err(e) = stopped.await {
        tracing::error!(error = %e, "cannot mark a cancelled server stopped");
    }
    let revoked = until_recorded("revoking a cancelled server's credentials", || {
        revoke_credentials(hub, user, server)
    });
    if let Err(e) = revoked.await {
        tracing::error!(error = %e, "cannot revoke a cancelled server's credentials");
    }
}

/// Stops a server. Stopped and failed servers are left as they are; a starting server's spawn is
/// cancelled (by whichever hub process drives it); a running server is stopped by a task of its
/// own, waited for up to [`READY_WAIT`].
pub async fn stop_server(
    hub: &HubState,
    user: &str,
    server: &Server,
    actor: Option<&str>,
) -> HubResult<StopOutcome> {
    let name = log_name(user, &server.name);
    match server.state {
        ServerState::Stopped | ServerState::Failed => return Ok(StopOutcome::Stopped),
        ServerState::Stopping => return Ok(StopOutcome::Pending),
        ServerState::Starting | ServerState::Running => {}
    }
    let stopping = match hub.store.begin_stop(server.id).await {
        Ok(s) => s,
        Err(StoreError::Conflict(_)) => {
            // It moved meanwhile: answer for its state now.
            let now = reload(hub, server.id).await?;
            return match now.state {
                ServerState::Stopped | ServerState::Failed => Ok(StopOutcome::Stopped),
                ServerState::Stopping | ServerState::Starting | ServerState::Running => {
                    Ok(StopOutcome::Pending)
                }
            };
        }
        Err(e) => return Err(HubError::from_store(format!("server {name}"), e)),
    };
    audit(
        hub,
        AuditAction::ServerStop,
        actor,
        user,
        &server.name,
        json!({"from": server.state.as_str()}),
    )
    .await;
    if server.state == ServerState::Starting {
        let driven_here = hub.spawns.subscribe(server.id).is_some();
        if driven_here || !is_stale_start(hub, server.started) {
            // The spawn's driver sees the row leave Starting and cancels the start.
            return Ok(StopOutcome::Pending);
        }
        tracing::warn!(server = %name, "stopping a spawn whose driver is gone");
    }
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(drive_stop(hub.clone(), stopping, user.to_owned(), done_tx));
    match tokio::time::timeout(READY_WAIT, done_rx).await {
        Ok(Ok(())) => Ok(StopOutcome::Stopped),
        _ => Ok(StopOutcome::Pending),
    }
}

/// Whether a spawn that began at `started` has outlived the spawn timeout (its driver, in any
/// hub process, would have ended it).
fn is_stale_start(hub: &HubState, started: Option<DateTime<Utc>>) -> bool {
    let limit = chrono::Duration::seconds(hub.config.spawn_timeout_secs as i64 + 30);
    started.is_none_or(|at| store::now() - at > limit)
}

/// Stops a Stopping server in the backend and marks it stopped (failed when the backend cannot
/// stop it).
async fn drive_stop(hub: HubState, server: Server, user: String, done: oneshot::Sender<()>) {
    let name = log_name(&user, &server.name);
    let timeout = Duration::from_secs(hub.config.spawn_timeout_secs);
    let stopped = tokio::time::timeout(timeout, hub.backend.stop(&server.spawner_state)).await;
    let stopped_cleanly = match stopped {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(server = %name, error = ?e, "backend cannot stop the server");
            false
        }
        Err(_) => {
            tracing::error!(server = %name, "the backend did not stop the server in time");
            false
        }
    };
    let result = until_recorded("recording a stop", || async {
        if stopped_cleanly {
            hub.store.mark_stopped(server.id).await.map(|_| ())
        } else {
            hub.store.mark_failed(server.id).await.map(|_| ())
        }
    })
    .await;
    if let Err(e) = result {
        tracing::error!(server = %name, error = %e, "cannot record the stop of a server");
    }
    let revoked = until_recorded("revoking a stopped server's credentials", || {
        revoke_credentials(&hub, &user, &server)
    });
    if let Err(e) = revoked.await {
        tracing::error!(server = %name, error = %e, "cannot revoke server credentials");
    }
    let _ = done.send(());
}

/// At hub start: every server the store believes Starting, Running or Stopping is checked with
/// the backend. Live servers are kept (a spawn interrupted by a crash whose server answers is
/// adopted), dead ones are marked stopped, Stopping ones are stopped. Spawns younger than the
/// spawn timeout are left to the hub process that may still drive them ([`watch`] picks them up
/// if none does).
pub async fn recover(hub: &HubState) -> HubResult<SweepReport> {
    let report = sweep_states(hub, &ServerState::ACTIVE, true).await?;
    tracing::info!(
        adopted = report.adopted.len(),
        stopped = report.stopped.len(),
        left = report.left.len(),
        "recovered servers"
    );
    Ok(report)
}

/// One pass of [`watch`]: running servers that exited are marked stopped, stale spawns are
/// adopted or stopped, and so are cancelled spawns whose driver is gone (a stop asked for after
/// the hub that drove the start crashed).
pub async fn sweep(hub: &HubState) -> HubResult<SweepReport> {
    let states = [
        ServerState::Starting,
        ServerState::Running,
        ServerState::Stopping,
    ];
    sweep_states(hub, &states, false).await
}

/// Polls the running servers every [`WATCH_INTERVAL`], a page at a time, and marks the ones that
/// exited stopped.
pub fn watch(hub: HubState) -> JoinHandle<()> {
    watch_every(hub, WATCH_INTERVAL)
}

/// [`watch`] with another interval.
pub fn watch_every(hub: HubState, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match sweep(&hub).await {
                Ok(report) if !report.stopped.is_empty() => {
                    tracing::info!(stopped = ?report.stopped, "servers exited");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "server sweep failed"),
            }
        }
    })
}

enum Verdict {
    Adopted,
    Stopped,
    Left,
}

/// `at_start`: the hub is starting ([`recover`]), every stop in progress is taken over.
async fn sweep_states(
    hub: &HubState,
    states: &[ServerState],
    at_start: bool,
) -> HubResult<SweepReport> {
    let mut report = SweepReport::default();
    let mut after = None;
    loop {
        let page = hub
            .store
            .list_servers_in_states(states, after, SWEEP_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.server.id);
        let full = page.len() == SWEEP_PAGE as usize;
        let verdicts: Vec<(String, Verdict)> = futures::stream::iter(page)
            .map(|row| async move {
                let name = log_name(&row.user_name, &row.server.name);
                (name, check_one(hub, row, at_start).await)
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        for (name, verdict) in verdicts {
            match verdict {
                Verdict::Adopted => report.adopted.push(name),
                Verdict::Stopped => report.stopped.push(name),
                Verdict::Left => report.left.push(name),
            }
        }
        if !full {
            break;
        }
    }
    report.adopted.sort();
    report.stopped.sort();
    report.left.sort();
    Ok(report)
}

/// Checks one server with the backend and records what it found.
async fn check_one(hub: &HubState, row: ServerWithOwner, at_start: bool) -> Verdict {
    let ServerWithOwner {
        user_name: user,
        server,
    } = row;
    let name = log_name(&user, &server.name);
    match server.state {
        ServerState::Running => match hub.backend.poll(&server.spawner_state).await {
            Ok(BackendStatus::Running { .. } | BackendStatus::Starting) => Verdict::Adopted,
            Ok(status) => {
                tracing::info!(server = %name, ?status, "server is gone");
                // Conditional: a server stopped (and maybe restarted) meanwhile is not touched.
                if hub.store.begin_stop(server.id).await.is_err() {
                    return Verdict::Left;
                }
                let _ = hub.backend.stop(&server.spawner_state).await;
                record_stopped(hub, &user, &server, json!({"reason": "exited"})).await
            }
            Err(e) => {
                tracing::warn!(server = %name, error = %e, "cannot poll server");
                Verdict::Left
            }
        },
        ServerState::Starting => {
            if hub.spawns.subscribe(server.id).is_some() {
                return Verdict::Left;
            }
            if let Some(started) = server.started {
                match hub.backend.start_record(&user, &server.name, started) {
                    // Another hub process drives it.
                    StartRecord::Driven => return Verdict::Left,
                    StartRecord::Orphaned(handle) => {
                        return check_orphan(hub, &user, &server, handle).await;
                    }
                    StartRecord::Unknown => {}
                }
            }
            if !is_stale_start(hub, server.started) {
                return Verdict::Left;
            }
            match hub.backend.poll(&server.spawner_state).await {
                Ok(BackendStatus::Running { url }) => {
                    match hub
                        .store
                        .mark_running(server.id, &url, &server.spawner_state, store::now())
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(server = %name, %url, "adopted an interrupted spawn");
                            Verdict::Adopted
                        }
                        Err(_) => Verdict::Left,
                    }
                }
                Ok(_) | Err(BackendError::BadHandle(_)) => {
                    tracing::info!(server = %name, "stopping an interrupted spawn");
                    if hub.store.begin_stop(server.id).await.is_err() {
                        return Verdict::Left;
                    }
                    let _ = hub.backend.stop(&server.spawner_state).await;
                    record_stopped(hub, &user, &server, json!({"reason": "interrupted spawn"}))
                        .await
                }
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "cannot poll server");
                    Verdict::Left
                }
            }
        }
        ServerState::Stopping => {
            // Later than at start, only a cancelled spawn (it never ran) whose drivers are gone:
            // any spawn driver has timed out by now, and none runs here.
            let abandoned = server.url.is_none()
                && is_stale_start(hub, server.started)
                && hub.spawns.subscribe(server.id).is_none();
            if !at_start && !abandoned {
                return Verdict::Left;
            }
            match hub.backend.stop(&server.spawner_state).await {
                // No handle of the backend's (a spawn interrupted before it had one): nothing
                // the backend can find to stop.
                Ok(()) | Err(BackendError::BadHandle(_)) => {}
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "cannot stop server");
                    return Verdict::Left;
                }
            }
            record_stopped(hub, &user, &server, json!({"reason": "interrupted stop"})).await
        }
        ServerState::Stopped | ServerState::Failed => Verdict::Left,
    }
}

/// A start whose hub process died (kill -9) after the backend started its process: the process
/// is re-adopted once it answers, given until the spawn timeout while it does not, and the row
/// fails (stopping what is left of it) when it exits or runs out of time. Each start thus ends
/// with one row and at most one process, and never runs twice.
async fn check_orphan(hub: &HubState, user: &str, server: &Server, handle: Value) -> Verdict {
    let name = log_name(user, &server.name);
    let message = match hub.backend.poll(&handle).await {
        Ok(BackendStatus::Running { url }) => {
            return match hub
                .store
                .mark_running(server.id, &url, &handle, store::now())
                .await
            {
                Ok(_) => {
                    tracing::info!(server = %name, %url, "adopted a start whose hub was gone");
                    Verdict::Adopted
                }
                Err(_) => Verdict::Left,
            };
        }
        Ok(BackendStatus::Starting) => {
            if !is_stale_start(hub, server.started) {
                return Verdict::Left;
            }
            format!(
                "the server did not become ready within {} s (its start was interrupted by a hub \
                 restart)",
                hub.config.spawn_timeout_secs
            )
        }
        Ok(BackendStatus::Stopped { reason }) => format!(
            "the server exited before it was ready (its start was interrupted by a hub \
             restart): {}",
            reason.as_deref().unwrap_or("no reason known")
        ),
        Ok(BackendStatus::Failed { message }) => format!(
            "the server failed before it was ready (its start was interrupted by a hub \
             restart): {message}"
        ),
        Err(e) => {
            tracing::warn!(server = %name, error = %e, "cannot poll an interrupted start");
            return Verdict::Left;
        }
    };
    tracing::warn!(server = %name, %message, "failing an interrupted start");
    // Conditional: a start that moved meanwhile (stopped by a user) is not touched.
    if hub.store.mark_failed(server.id).await.is_err() {
        return Verdict::Left;
    }
    if let Err(e) = hub.backend.stop(&handle).await {
        tracing::error!(server = %name, error = %e, "cannot stop an interrupted start");
    }
    if let Err(e) = revoke_credentials(hub, user, server).await {
        tracing::error!(server = %name, error = %e, "cannot revoke server credentials");
    }
    audit(
        hub,
        AuditAction::ServerStart,
        None,
        user,
        &server.name,
        json!({"failed": true, "message": message}),
    )
    .await;
    Verdict::Stopped
}

async fn record_stopped(hub: &HubState, user: &str, server: &Server, detail: Value) -> Verdict {
    if let Err(e) = hub.store.mark_stopped(server.id).await {
        tracing::error!(error = %e, "cannot mark server stopped");
        return Verdict::Left;
    }
    if let Err(e) = revoke_credentials(hub, user, server).await {
        tracing::error!(error = %e, "cannot revoke server credentials");
    }
    audit(
        hub,
        AuditAction::ServerStop,
        None,
        user,
        &server.name,
        detail,
    )
    .await;
    Verdict::Stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_jupyterhubs() {
        let config =
            super::super::HubConfig::new("http://127.0.0.1:8000/", "http://127.0.0.1:8081/hub/api");
        let env = server_env(
            &config,
            "alice",
            "gpu",
            "tok",
            &json!({"default_url": "/lab"}),
        );
        assert_eq!(env["JUPYTERHUB_API_TOKEN"], "tok");
        assert_eq!(env["JPY_API_TOKEN"], "tok");
        assert_eq!(env["JUPYTERHUB_CLIENT_ID"], "jupyterhub-user-alice~gpu");
        assert_eq!(env["JUPYTERHUB_SERVICE_PREFIX"], "/user/alice/gpu/");
        assert_eq!(
            env["JUPYTERHUB_OAUTH_CALLBACK_URL"],
            "http://127.0.0.1:8000/user/alice/gpu/oauth_callback"
        );
        assert_eq!(
            env["JUPYTERHUB_OAUTH_ACCESS_SCOPES"],
            r#"["access:servers!server=alice/gpu","access:servers!user=alice"]"#
        );
        assert_eq!(env["JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES"], "[]");
        assert_eq!(
            env["JUPYTERHUB_ACTIVITY_URL"],
            "http://127.0.0.1:8081/hub/api/users/alice/activity"
        );
        assert_eq!(env["JUPYTERHUB_BASE_URL"], "/");
        assert_eq!(env["JUPYTERHUB_HOST"], "");
        assert_eq!(env["JUPYTERHUB_DEFAULT_URL"], "/lab");
        assert_eq!(
            env["JUPYTERHUB_PUBLIC_URL"],
            "http://127.0.0.1:8000/user/alice/gpu/"
        );
        assert!(!env.contains_key("JUPYTERHUB_SERVICE_URL"));
    }

    /// With a user domain the server's URLs are on the user's host, the hub's on the hub's
    /// (JupyterHub under `subdomain_host`: `JUPYTERHUB_HOST` is the hub's public host, the
    /// callback `user.url` + server + `oauth_callback`).
    #[test]
    fn environment_with_a_user_domain() {
        let mut config =
            super::super::HubConfig::new("https://vre.example.org/", "http://hub:8081/hub/api");
        config.user_domain = Some(crate::config::UserDomain::parse("users.example.org").unwrap());
        let env = server_env(&config, "alice.smith", "gpu", "tok", &json!({}));
        assert_eq!(env["JUPYTERHUB_HOST"], "https://vre.example.org");
        assert_eq!(
            env["JUPYTERHUB_OAUTH_CALLBACK_URL"],
            "https://u--alice-psmith.users.example.org/user/alice.smith/gpu/oauth_callback"
        );
        assert_eq!(
            env["JUPYTERHUB_PUBLIC_URL"],
            "https://u--alice-psmith.users.example.org/user/alice.smith/gpu/"
        );
        assert_eq!(
            env["JUPYTERHUB_PUBLIC_HUB_URL"],
            "https://vre.example.org/hub/"
        );
        assert_eq!(env["JUPYTERHUB_SERVICE_PREFIX"], "/user/alice.smith/gpu/");
        assert_eq!(env["JUPYTERHUB_BASE_URL"], "/");
        assert_eq!(
            server_oauth_callback_url(&config, "bob", ""),
            "https://bob.users.example.org/user/bob/oauth_callback"
        );
        // Links and redirects: servers on their hosts, the hub's pages on the hub's.
        assert_eq!(
            config.server_url("bob", ""),
            "https://bob.users.example.org/user/bob/"
        );
        assert_eq!(
            config.location("/user/bob/lab?x=1"),
            "https://bob.users.example.org/user/bob/lab?x=1"
        );
        assert_eq!(config.location("/hub/home"), "/hub/home");
        // A name without a host label cannot start.
        let long = format!("{}.x", "a".repeat(58));
        assert!(matches!(
            check_user_host(&config, &long),
            Err(HubError::BadRequest(m)) if m.contains("no host label")
        ));
        assert!(check_user_host(&config, "bob").is_ok());
        // Without a user domain nothing changes.
        config.user_domain = None;
        assert_eq!(config.server_url("bob", ""), "/user/bob/");
        assert_eq!(config.location("/user/bob/lab"), "/user/bob/lab");
        assert!(check_user_host(&config, &long).is_ok());
    }

    #[tokio::test]
    async fn endpoints_are_probed_and_failures_name_the_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = format!("http://{}/", listener.local_addr().unwrap());
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let endpoint = |source: &str, url: &str| DataEndpoint {
            source: source.into(),
            url: url.into(),
        };
        assert!(probe_endpoints(&[endpoint("argo", &open)]).await.is_ok());
        match probe_endpoints(&[endpoint("argo", &open), endpoint("shelf", &closed)]).await {
            Err(BackendError::SpawnFailed(m)) => assert_eq!(
                m,
                format!("DataSource shelf: endpoint {closed} unreachable: connection refused")
            ),
            other => panic!("{other:?}"),
        }
        match probe_endpoints(&[endpoint("argo", "no host here")]).await {
            Err(BackendError::SpawnFailed(m)) => assert!(
                m.starts_with("DataSource argo: endpoint no host here unreachable: "),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_tokens_have_the_server_role() {
        assert_eq!(
            server_token_scopes("alice", ""),
            vec![
                "access:servers!server=alice/",
                "jobs!user=alice",
                "users:activity!user=alice"
            ]
        );
    }
}
