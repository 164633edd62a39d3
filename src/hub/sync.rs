//! With the `kubernetes` backend, Workspaces the hub did not start (an admin's `kubectl apply`)
//! appear as their user's servers; Workspaces stopped or deleted behind the hub's back mark their
//! servers stopped. The backend reports what it observes ([`WorkspaceObserver`]); this module
//! decides what to store.
//!
//! One pass ([`sync_store`]):
//!
//! 1. read the hub's active servers (Starting, Running, Stopping) and their handles, *before*
//!    listing, so that a server the hub starts meanwhile is never mistaken for a deleted one;
//! 2. list the Workspaces ([`WorkspaceObserver::list`]: the shared namespace, or every namespace
//!    in per-user mode, keeping those in their user's namespace);
//! 3. a Workspace running at a URL that no active server has as its handle, and
//!    whose (user, server) is not active under another handle: **adopted**. The user is created
//!    if missing, the server row too; the row goes Starting (a conditional transition, so two
//!    hubs never both adopt it); the token of the Workspace's Secret is registered as the
//!    server's API token (JupyterHub's `server` role) and its OAuth client's secret, as a start
//!    by the hub would; the row goes Running at `status.url` with the handle. A Workspace whose
//!    Secret holds no token yet waits for a later pass;
//! 4. a Running server whose Workspace is listed as stopped, failed or refused, or is not listed
//!    and a `GET` confirms it gone or stopped: **stopped** (row Stopped, credentials revoked).
//!
//! Every step is conditional on the state it read, so a pass is idempotent and passes of several
//! hub processes do not fight.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::HubState;
use super::audit::AuditLog;
use super::spawner::{access_scopes, server_token_scopes};
use crate::backend::kubernetes::{ObservedWorkspace, WorkspaceHandle, WorkspaceObserver};
use crate::backend::{BackendError, BackendStatus};
use crate::config::UserDomain;
use crate::policy::names;
use crate::store::{
    self, AuditAction, NewAuditEvent, NewOAuthClient, NewToken, Server, ServerState,
    ServerWithOwner, StartRequest, Store, StoreError, TokenOwner, User, oauth_client_id,
};

/// How often [`spawn_sync`] runs a pass, as the hub calls it.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Servers read per statement.
const PAGE: u32 = 200;

/// The actor of the audit events of a sync.
const ACTOR: &str = "kubernetes";

/// What a pass did, as `user/server` names, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Admin-created Workspaces that became servers.
    pub adopted: Vec<String>,
    /// Servers marked stopped because their Workspace stopped, failed or went away.
    pub stopped: Vec<String>,
    /// Running Workspaces left for a later pass (no token yet, a conflict, an error).
    pub deferred: Vec<String>,
}

impl SyncReport {
    /// Whether the pass changed nothing and left nothing for later.
    pub fn is_empty(&self) -> bool {
        self.adopted.is_empty() && self.stopped.is_empty() && self.deferred.is_empty()
    }
}

fn log_name(user: &str, server: &str) -> String {
    format!("{user}/{server}")
}

/// One pass over the hub behind `hub` (see the module documentation).
pub async fn sync_workspaces(
    hub: &HubState,
    observer: &WorkspaceObserver,
) -> Result<SyncReport, BackendError> {
    let site = Site {
        public_url: hub.config.public_url.clone(),
        user_domain: hub.config.user_domain.clone(),
    };
    sync_store(&hub.store, &hub.audit, &site, observer).await
}

/// Where browsers reach the hub's servers: the site's public URL and, with `--user-domain`, the
/// users' own hosts (for the OAuth redirect URIs of adopted servers).
#[derive(Debug, Clone, Default)]
pub struct Site {
    pub public_url: String,
    pub user_domain: Option<UserDomain>,
}

/// Runs a pass every `interval` (the first at once) until the task is aborted.
pub fn spawn_sync(
    store: Store,
    audit: AuditLog,
    site: Site,
    observer: WorkspaceObserver,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sync_store(&store, &audit, &site, &observer).await {
                Ok(report) if !report.is_empty() => tracing::info!(?report, "Workspaces synced"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = ?e, "Workspace sync failed"),
            }
            tokio::time::sleep(interval).await;
        }
    })
}

/// One pass over `store`, whose servers browsers reach at `site` (for the OAuth redirect URIs
/// of adopted servers), its audit events written through `audit`.
pub async fn sync_store(
    store: &Store,
    audit: &AuditLog,
    site: &Site,
    observer: &WorkspaceObserver,
) -> Result<SyncReport, BackendError> {
    let mut report = SyncReport::default();
    let (on_workspaces, busy) = active_servers(store).await?;
    let listed = observer.list().await?;

    let mut seen = BTreeSet::new();
    for ws in &listed {
        let handle = &ws.handle;
        seen.insert(handle.clone());
        let status = &ws.status;
        match on_workspaces.get(handle) {
            Some(row) => {
                if matches!(
                    status,
                    BackendStatus::Stopped { .. } | BackendStatus::Failed { .. }
                ) && stop_row(store, audit, row, handle, status).await
                {
                    report
                        .stopped
                        .push(log_name(&row.user_name, &row.server.name));
                }
            }
            None => {
                let BackendStatus::Running { url } = status else {
                    continue;
                };
                let key = (ws.user.clone(), ws.server.clone());
                if busy.contains(&key) {
                    continue;
                }
                let name = log_name(&key.0, &key.1);
                match adopt(store, audit, site, observer, ws, url).await {
                    Ok(true) => report.adopted.push(name),
                    Ok(false) => report.deferred.push(name),
                    Err(e) => {
                        tracing::warn!(server = %name, workspace = %handle, error = ?e, "cannot adopt a Workspace");
                        report.deferred.push(name);
                    }
                }
            }
        }
    }

    // Running servers whose Workspace was not listed: gone, or moved out of reach.
    for (handle, row) in &on_workspaces {
        if seen.contains(handle)
            || row.server.state != ServerState::Running
            || !observer.in_scope(handle)
        {
            continue;
        }
        let status = match observer.status(handle).await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(workspace = %handle, error = %e, "cannot read a Workspace");
                continue;
            }
        };
        if matches!(
            status,
            BackendStatus::Stopped { .. } | BackendStatus::Failed { .. }
        ) && stop_row(store, audit, row, handle, &status).await
        {
            report
                .stopped
                .push(log_name(&row.user_name, &row.server.name));
        }
    }
    report.adopted.sort();
    report.stopped.sort();
    report.deferred.sort();
    Ok(report)
}

type ActiveServers = (
    BTreeMap<WorkspaceHandle, ServerWithOwner>,
    BTreeSet<(String, String)>,
);

/// The active servers by Workspace handle, and the (user, server) names of every active server.
async fn active_servers(store: &Store) -> Result<ActiveServers, BackendError> {
    let mut by_handle = BTreeMap::new();
    let mut busy = BTreeSet::new();
    let mut after = None;
    loop {
        let page = store
            .list_servers_in_states(&ServerState::ACTIVE, after, PAGE)
            .await
            .map_err(|e| anyhow::Error::new(e).context("listing active servers"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.server.id);
        let full = page.len() == PAGE as usize;
        for row in page {
            busy.insert((row.user_name.clone(), row.server.name.clone()));
            if let Ok(handle) = WorkspaceHandle::from_value(&row.server.spawner_state) {
                by_handle.insert(handle, row);
            }
        }
        if !full {
            break;
        }
    }
    Ok((by_handle, busy))
}

fn event(action: AuditAction, user: &str, server: &str, detail: Value) -> NewAuditEvent {
    NewAuditEvent {
        action,
        actor: Some(ACTOR.to_owned()),
        target_user: Some(user.to_owned()),
        target_server: Some(server.to_owned()),
        detail,
    }
}

/// Deletes the server's OAuth clients (with their tokens, the server's API token among them),
/// as the hub's spawner does at stop.
async fn revoke_credentials(store: &Store, user: &str, server: &Server) -> Result<(), StoreError> {
    let revoked = store.delete_server_oauth_clients(server.id).await?;
    tracing::debug!(server = %log_name(user, &server.name), revoked, "OAuth clients revoked");
    Ok(())
}

/// Marks a server Stopped whose Workspace is not running, if it is still the Running server of
/// that run. Returns whether it did.
async fn stop_row(
    store: &Store,
    audit: &AuditLog,
    row: &ServerWithOwner,
    handle: &WorkspaceHandle,
    status: &BackendStatus,
) -> bool {
    let (user, server) = (&row.user_name, &row.server);
    let name = log_name(user, &server.name);
    // Only the run that was read: not one started (or stopped) meanwhile.
    match store.get_server_by_id(server.id).await {
        Ok(now)
            if now.state == ServerState::Running
                && now.started == server.started
                && now.spawner_state == server.spawner_state => {}
        _ => return false,
    }
    if store.begin_stop(server.id).await.is_err() {
        return false;
    }
    tracing::info!(server = %name, workspace = %handle, ?status, "Workspace not running: server stopped");
    if let Err(e) = store.mark_stopped(server.id).await {
        tracing::error!(server = %name, error = %e, "cannot mark server stopped");
        return false;
    }
    if let Err(e) = revoke_credentials(store, user, server).await {
        tracing::error!(server = %name, error = %e, "cannot revoke server credentials");
    }
    let reason = match status {
        BackendStatus::Stopped { reason } => reason.clone().unwrap_or_default(),
        BackendStatus::Failed { message } => message.clone(),
        _ => String::new(),
    };
    audit
        .record(event(
            AuditAction::ServerStop,
            user,
            &server.name,
            json!({"workspace": handle.to_string(), "reason": reason}),
        ))
        .await;
    true
}

async fn user_named(store: &Store, name: &str) -> Result<User, StoreError> {
    match store.get_user(name).await {
        Err(StoreError::NotFound) => match store.create_user(name, false).await {
            Err(StoreError::Conflict(_)) => store.get_user(name).await,
            other => other,
        },
        other => other,
    }
}

async fn server_named(store: &Store, user: &User, name: &str) -> Result<Server, StoreError> {
    match store.get_server(user.id, name).await {
        Err(StoreError::NotFound) => match store.create_server(user.id, name).await {
            Err(StoreError::Conflict(_)) => store.get_server(user.id, name).await,
            other => other,
        },
        other => other,
    }
}

/// Makes `ws`, running at `url`, its user's server. `Ok(false)`: left for a later pass.
async fn adopt(
    store: &Store,
    audit: &AuditLog,
    site: &Site,
    observer: &WorkspaceObserver,
    ws: &ObservedWorkspace,
    url: &str,
) -> Result<bool, BackendError> {
    let (user_name, server_name) = (ws.user.as_str(), ws.server.as_str());
    let handle = &ws.handle;
    let name = log_name(user_name, server_name);
    let store_error =
        |e: StoreError| BackendError::Other(anyhow::Error::new(e).context(name.clone()));
    let Some(token) = observer
        .token(handle)
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("token Secret of {handle}")))?
    else {
        tracing::info!(workspace = %handle, "running Workspace without a token yet: adopted later");
        return Ok(false);
    };
    let user = user_named(store, user_name).await.map_err(store_error)?;
    let server = server_named(store, &user, server_name)
        .await
        .map_err(store_error)?;
    let request = StartRequest {
        profile: Some(ws.profile.clone()),
        user_options: None,
        display_name: None,
    };
    let server = match store.begin_start(server.id, &request, store::now()).await {
        Ok(server) => server,
        // Active meanwhile (started by the hub, or adopted by another hub process).
        Err(StoreError::Conflict(_)) => return Ok(false),
        Err(e) => return Err(store_error(e)),
    };
    match register_credentials(store, site, &user, &server, &token).await {
        Ok(()) => {}
        Err(e) => {
            let _ = store.mark_stopped(server.id).await;
            let _ = revoke_credentials(store, user_name, &server).await;
            return Err(e);
        }
    }
    if let Err(e) = store
        .mark_running(server.id, url, &handle.to_value(), store::now())
        .await
    {
        let _ = revoke_credentials(store, user_name, &server).await;
        return match e {
            StoreError::Conflict(_) => Ok(false),
            e => Err(store_error(e)),
        };
    }
    tracing::info!(server = %name, workspace = %handle, %url, "adopted a Workspace the hub did not start");
    audit
        .record(event(
            AuditAction::ServerStart,
            user_name,
            server_name,
            json!({"adopted": handle.to_string(), "profile": ws.profile}),
        ))
        .await;
    Ok(true)
}

/// The server's credentials, as the hub's spawner issues them, with the Workspace's token.
async fn register_credentials(
    store: &Store,
    site: &Site,
    user: &User,
    server: &Server,
    token: &str,
) -> Result<(), BackendError> {
    let (u, s) = (user.name.as_str(), server.name.as_str());
    let client_id = oauth_client_id(u, s);
    let prefix = names::server_url(u, s);
    let fail = |what: &str, e: StoreError| {
        BackendError::Other(anyhow::Error::new(e).context(format!("{what} of {u}/{s}")))
    };
    // A clean slate: tokens of an earlier run go with the client.
    revoke_credentials(store, u, server)
        .await
        .map_err(|e| fail("revoking the credentials", e))?;
    match store.lookup_token(token, store::now()).await {
        Err(StoreError::NotFound) => {}
        Ok(_) => {
            return Err(anyhow::anyhow!(
                "the token of the Workspace of {u}/{s} is already another credential: not registered"
            )
            .into());
        }
        Err(e) => return Err(fail("looking up the token", e)),
    }
    store
        .upsert_oauth_client(&NewOAuthClient {
            client_id: client_id.clone(),
            description: format!("Server at {prefix}"),
            secret: token.to_owned(),
            redirect_uri: names::site_oauth_callback_url(
                &site.public_url,
                site.user_domain.as_ref(),
                u,
                s,
            ),
            server_id: Some(server.id),
            allowed_scopes: access_scopes(u, s),
        })
        .await
        .map_err(|e| fail("the OAuth client", e))?;
    store
        .create_token_with_value(
            token,
            &NewToken {
                owner: TokenOwner::User(user.id),
                scopes: server_token_scopes(u, s),
                note: Some(format!("Server at {prefix}")),
                expires_at: None,
                oauth_client_id: Some(client_id),
                session_id: None,
            },
        )
        .await
        .map_err(|e| fail("the API token", e))?;
    Ok(())
}

#[cfg(test)]
mod tests;
