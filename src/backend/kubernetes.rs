//! The `kubernetes` backend: one `Workspace` resource per server; `atelier operator` does the
//! rest (pod, service, home volume, token Secret, network policy).
//!
//! **Names.** User `u`'s default server is the Workspace `u`, a named server `s` is `u--s`, in
//! the shared namespace or in `<prefix><u>` (per-user mode); other characters are escaped so
//! that no two (user, server) pairs share a name, and names beyond 62 characters are shortened
//! and hashed (see [`workspace_name`]). A start reuses a Workspace that already
//! exists for the same (user, server) under another name (one an admin created with `kubectl
//! apply`), so restarting it through the hub keeps its home volume; it refuses a Workspace of that
//! name that belongs to someone else.
//!
//! **Start**, in this order (server-side apply, field manager [`FIELD_MANAGER`]):
//!
//! 1. `GET` the Workspace by name; if it is not there, `LIST` the user's Workspaces
//!    (`fieldSelector=spec.user=<u>`, the CRD's selectable field) for one of that server;
//! 2. per-user mode: apply the user's Namespace (so that the Workspace can be created in it);
//! 3. apply the Secret `ws-<ws>-token` holding the hub-issued `JUPYTERHUB_API_TOKEN` of the
//!    request under [`TOKEN_KEY`](crate::policy::workspace::TOKEN_KEY), labelled
//!    `atelier.dev/workspace=<ws>`: the operator's `dereference` lists the Workspace's Secrets by
//!    that label and *reuses* the token it finds instead of generating one, and the pod reads
//!    `JUPYTERHUB_API_TOKEN` from that Secret. So the single-user server presents the token the
//!    hub registered (with the `server` role, and as its OAuth client's secret);
//! 4. apply the Workspace: spec from the request ([`build_workspace`]), `desiredState: running`,
//!    the owner's groups as `atelier.dev/groups`;
//! 5. watch it (`watch_object`, a field selector on its name) and turn each status change into a
//!    progress event ([`observe`]) until `Running` with `status.url` →
//!    `Spawned { url: status.url, handle: {"namespace", "name"} }`. A refusal by a rule
//!    (`Ready=False` with a reason such as `NoEligiblePool`) or `Failed` ends the start at once
//!    with the operator's message; `start_timeout` ends it with `Timeout`. Statuses written for an
//!    older generation (the previous run's) are not believed.
//!
//! A start that fails after step 4 sets `desiredState: stopped` before returning; a start future
//! dropped after step 4 does the same from a spawned task (best effort), so no Workspace keeps
//! running that the hub does not know about.
//!
//! **Stop** merge-patches `desiredState: stopped` (the home volume stays) and waits, at most
//! `stop_timeout`, for the phase `Stopped` of the new generation; a missing Workspace is
//! stopped. Past `stop_timeout` the stop is still Ok: the desired state is recorded and the
//! operator finishes it. **Poll** reads the Workspace ([`status_of`]).
//!
//! **Admin-created Workspaces**: [`WorkspaceObserver`] reports the Workspaces, their statuses
//! and their Secrets' tokens; the hub's sync (`crate::hub::sync`) makes a running Workspace no
//! server row knows a server, and marks stopped the row of a Workspace stopped or deleted with
//! `kubectl`. This backend never writes the hub's store.
//!
//! The hub needs, in the workspaces' namespace(s): `workspaces` get/list/watch/patch, `secrets`
//! get/patch; in per-user mode also `namespaces` patch (server-side apply creates them).

mod jobs;
#[cfg(test)]
pub(crate) mod mock;
mod observer;
mod spec;
#[cfg(test)]
mod tests;

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, pin_mut};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use self::jobs::{
    BatchJobs, JobId, LOG_TAIL_LINES, SYSTEM as JOBS_SYSTEM, build_batch_job, state_of, tail_bytes,
};
pub use self::observer::{ObservedWorkspace, WorkspaceObserver};
pub use self::spec::{
    Observation, REFUSAL_REASONS, SpecError, build_token_secret, build_workspace, dashboard_target,
    groups_annotation, observe, status_of, workspace_name, workspace_namespace,
};
use super::{BackendError, BackendStatus, ProgressEvent, SpawnRequest, Spawned, WorkspaceBackend};
use crate::api::v1alpha1::Workspace;
use crate::config::NamespaceMode;
use crate::policy::names;
use crate::policy::workspace::USER_LABEL;

/// Field manager of everything the hub applies or patches.
pub const FIELD_MANAGER: &str = "atelier-hub";
/// The WorkspaceProfile of a start that names none.
pub const DEFAULT_PROFILE: &str = "default";
/// The request variable whose value becomes the Workspace's token.
pub const TOKEN_ENV: &str = "JUPYTERHUB_API_TOKEN";

/// Configuration of the `kubernetes` backend.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesBackendConfig {
    /// Shared namespace, or per-user namespaces `<prefix><user>` (as the operator's).
    pub namespace_mode: NamespaceMode,
    /// The namespace of every Workspace in shared mode.
    pub namespace: String,
    /// The WorkspaceProfile of a start that names none.
    pub default_profile: String,
    /// How long a start waits for `Running` before it fails with `Timeout`.
    pub start_timeout: Duration,
    /// How long a stop waits for `Stopped`.
    pub stop_timeout: Duration,
}

impl KubernetesBackendConfig {
    /// Shared mode in `namespace`, [`DEFAULT_PROFILE`], 300 s to start (image pulls and node
    /// scale-ups are slow), 60 s to stop.
    pub fn new(namespace: impl Into<String>) -> KubernetesBackendConfig {
        KubernetesBackendConfig {
            namespace_mode: NamespaceMode::Shared,
            namespace: namespace.into(),
            default_profile: DEFAULT_PROFILE.to_owned(),
            start_timeout: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(60),
        }
    }

    /// Whether a Workspace in `namespace` owned by `user` is one this backend manages.
    fn manages(&self, namespace: &str, user: &str) -> bool {
        match &self.namespace_mode {
            NamespaceMode::Shared => namespace == self.namespace,
            NamespaceMode::PerUser { prefix } => namespace == names::user_namespace(prefix, user),
        }
    }
}

/// The handle of a server: where its Workspace is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkspaceHandle {
    /// Namespace of the Workspace.
    pub namespace: String,
    /// Name of the Workspace.
    pub name: String,
}

impl WorkspaceHandle {
    /// Reads a stored handle: `{"namespace": <label>, "name": <subdomain>}`.
    pub fn from_value(value: &Value) -> Result<WorkspaceHandle, BackendError> {
        let handle: WorkspaceHandle = serde_json::from_value(value.clone())
            .map_err(|e| BackendError::BadHandle(format!("not a Workspace handle: {e}")))?;
        if !names::is_dns_label(&handle.namespace) || !names::is_dns_subdomain(&handle.name) {
            return Err(BackendError::BadHandle(format!(
                "{}/{} is not a Workspace's namespace and name",
                handle.namespace, handle.name
            )));
        }
        Ok(handle)
    }

    /// The handle as stored by the hub.
    pub fn to_value(&self) -> Value {
        json!({"namespace": self.namespace, "name": self.name})
    }
}

impl std::fmt::Display for WorkspaceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A client from the environment (in-cluster or kubeconfig) sending
/// `User-Agent: atelier-hub/<version>`.
pub async fn kube_client() -> anyhow::Result<Client> {
    crate::k8s::kube_client(concat!("atelier-hub/", env!("CARGO_PKG_VERSION"))).await
}

/// The `kubernetes` backend (see the module documentation).
#[derive(Clone)]
pub struct KubernetesBackend {
    client: Client,
    config: KubernetesBackendConfig,
    /// The informer cache of the BatchJobs, read by [`BatchJobs::status`].
    job_cache: Option<kube::runtime::reflector::Store<crate::api::v1alpha1::BatchJob>>,
}

/// Sets `desiredState: stopped` on a Workspace whose start was abandoned, when dropped armed.
struct StopGuard {
    api: Api<Workspace>,
    name: String,
    armed: bool,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(workspace = %self.name, "start abandoned without a runtime: the Workspace is left as it is");
            return;
        };
        let (api, name) = (self.api.clone(), std::mem::take(&mut self.name));
        tracing::info!(workspace = %name, "start abandoned, stopping the Workspace");
        runtime.spawn(async move {
            if let Err(e) = request_stop(&api, &name).await {
                tracing::warn!(workspace = %name, error = %e, "stopping an abandoned Workspace failed");
            }
        });
    }
}

/// Merge-patches `spec.desiredState: stopped`; returns the Workspace, `None` when it is gone.
async fn request_stop(api: &Api<Workspace>, name: &str) -> Result<Option<Workspace>, kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patch = json!({"spec": {"desiredState": "stopped"}});
    match api.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(ws) => Ok(Some(ws)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// An API error as the backend reports it: what the API server refuses as invalid is the
/// request's fault and shown; anything else is logged.
fn api_error(what: &str, error: kube::Error) -> BackendError {
    match error {
        kube::Error::Api(status) if matches!(status.code, 400 | 422) => BackendError::SpawnFailed(
            format!("the Kubernetes API refused {what}: {}", status.message),
        ),
        other => BackendError::Other(anyhow::Error::new(other).context(what.to_owned())),
    }
}

async fn send(progress: &mpsc::Sender<ProgressEvent>, event: ProgressEvent) {
    // A hub that stopped listening does not stop the spawn.
    let _ = progress.send(event).await;
}

impl KubernetesBackend {
    /// A backend creating Workspaces through `client`.
    pub fn new(client: Client, config: KubernetesBackendConfig) -> KubernetesBackend {
        KubernetesBackend {
            client,
            config,
            job_cache: None,
        }
    }

    /// Reads the BatchJobs' statuses from `cache` ([`BatchJobs::spawn_cache`]) rather than
    /// with a `GET` each.
    pub fn with_job_cache(
        mut self,
        cache: kube::runtime::reflector::Store<crate::api::v1alpha1::BatchJob>,
    ) -> KubernetesBackend {
        self.job_cache = Some(cache);
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &KubernetesBackendConfig {
        &self.config
    }

    /// The client in use.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn workspaces(&self, namespace: &str) -> Api<Workspace> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn start_workspace(
        &self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> Result<Spawned, BackendError> {
        let result = self.launch(&request, &progress).await;
        if let Err(err) = &result {
            let message = match err {
                BackendError::Other(_) => "Spawn failed: internal error".to_owned(),
                other => format!("Spawn failed: {other}"),
            };
            send(
                &progress,
                ProgressEvent {
                    progress: 100,
                    message,
                    ready: false,
                    failed: true,
                },
            )
            .await;
        }
        result
    }

    async fn launch(
        &self,
        request: &SpawnRequest,
        progress: &mpsc::Sender<ProgressEvent>,
    ) -> Result<Spawned, BackendError> {
        let (user, server) = (request.user.as_str(), request.server.as_str());
        let token = request
            .env
            .get(TOKEN_ENV)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the spawn request carries no {TOKEN_ENV}"))?;
        let namespace = workspace_namespace(&self.config, user);
        // Everything the request says is checked before the first API call.
        let computed = workspace_name(user, server);
        build_workspace(request, &computed, &namespace, &self.config.default_profile)
            .map_err(|e| BackendError::SpawnFailed(e.to_string()))?;
        if let dropped @ [_, ..] = spec::dropped_groups(&request.groups).as_slice() {
            tracing::warn!(%user, groups = ?dropped, "groups with a comma are not passed to the operator");
        }

        let api = self.workspaces(&namespace);
        let mut guard = StopGuard {
            api: api.clone(),
            name: String::new(),
            armed: false,
        };
        let timeout = self.config.start_timeout;
        let outcome = tokio::time::timeout(
            timeout,
            self.apply_and_follow(request, token, &namespace, &mut guard, progress),
        )
        .await
        .unwrap_or_else(|_| Err(BackendError::Timeout(timeout.as_secs_f64().ceil() as u64)));
        if outcome.is_err() && guard.armed {
            // Still armed meanwhile: dropped during this request, the guard sends it again.
            tracing::info!(workspace = %guard.name, "start failed, stopping the Workspace");
            if let Err(e) = request_stop(&api, &guard.name).await {
                tracing::warn!(workspace = %guard.name, error = %e, "stopping a failed Workspace");
            }
        }
        guard.armed = false;
        outcome
    }

    /// Steps 1 to 5 of a start (see the module documentation). Arms `guard` before the Workspace
    /// is applied.
    async fn apply_and_follow(
        &self,
        request: &SpawnRequest,
        token: &str,
        namespace: &str,
        guard: &mut StopGuard,
        progress: &mpsc::Sender<ProgressEvent>,
    ) -> Result<Spawned, BackendError> {
        let (user, server) = (request.user.as_str(), request.server.as_str());
        let api = guard.api.clone();
        let name = self.resolve_name(&api, namespace, user, server).await?;
        let desired = build_workspace(request, &name, namespace, &self.config.default_profile)
            .map_err(|e| BackendError::SpawnFailed(e.to_string()))?;
        let handle = WorkspaceHandle {
            namespace: namespace.to_owned(),
            name: name.clone(),
        };

        if let NamespaceMode::PerUser { .. } = self.config.namespace_mode {
            self.apply_namespace(namespace, user).await?;
        }
        let secret = build_token_secret(&name, namespace, user, server, token);
        let secret_name = secret.name_any();
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .patch(&secret_name, &apply_params(), &Patch::Apply(&secret))
            .await
            .map_err(|e| api_error(&format!("Secret {namespace}/{secret_name}"), e))?;

        guard.name = name.clone();
        guard.armed = true;
        let applied = api
            .patch(&name, &apply_params(), &Patch::Apply(&desired))
            .await
            .map_err(|e| api_error(&format!("Workspace {handle}"), e))?;
        let generation = applied.metadata.generation;
        tracing::info!(workspace = %handle, ?generation, profile = %desired.spec.profile, "Workspace applied");

        let mut last_message = None;
        if let Some(url) = self
            .consider(&applied, generation, &mut last_message, progress)
            .await?
        {
            return Ok(self.spawned(url, handle, progress).await);
        }
        let stream = watcher::watch_object(api.clone(), &name).default_backoff();
        pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Some(ws)) => {
                    let seen = self.consider(&ws, generation, &mut last_message, progress);
                    if let Some(url) = seen.await? {
                        return Ok(self.spawned(url, handle, progress).await);
                    }
                }
                Ok(None) => {
                    return Err(BackendError::SpawnFailed(format!(
                        "Workspace {handle} was deleted before it was ready"
                    )));
                }
                Err(e) => tracing::warn!(workspace = %handle, error = %e, "watching the Workspace"),
            }
        }
        Err(anyhow::anyhow!("the watch of Workspace {handle} ended").into())
    }

    /// Reports what `ws` says (once per distinct message): `Some((url, dashboard))` when it
    /// runs (with its Dask dashboard's target, [`dashboard_target`]), an error when it will not.
    async fn consider(
        &self,
        ws: &Workspace,
        generation: Option<i64>,
        last_message: &mut Option<String>,
        progress: &mpsc::Sender<ProgressEvent>,
    ) -> Result<Option<(String, Option<String>)>, BackendError> {
        match observe(ws, generation) {
            Observation::Ready { url } => Ok(Some((url, dashboard_target(ws)))),
            Observation::Refused(message) => Err(BackendError::SpawnFailed(message)),
            Observation::Waiting(event) => {
                if last_message.as_deref() != Some(event.message.as_str()) {
                    *last_message = Some(event.message.clone());
                    send(progress, event).await;
                }
                Ok(None)
            }
        }
    }

    async fn spawned(
        &self,
        (url, dashboard): (String, Option<String>),
        handle: WorkspaceHandle,
        progress: &mpsc::Sender<ProgressEvent>,
    ) -> Spawned {
        tracing::info!(workspace = %handle, %url, "Workspace running");
        send(
            progress,
            ProgressEvent {
                progress: 90,
                message: format!("Workspace {handle} is running"),
                ready: false,
                failed: false,
            },
        )
        .await;
        let mut handle = handle.to_value();
        if let Some(target) = dashboard {
            // The proxy routes `<prefix>dask/` there (`backend::DASHBOARD_KEY`).
            handle[super::DASHBOARD_KEY] = Value::String(target);
        }
        Spawned { url, handle }
    }

    /// The name of the Workspace of `user`'s `server`: [`workspace_name`], unless another
    /// Workspace of that (user, server) exists (an admin's, under a name of their choosing).
    async fn resolve_name(
        &self,
        api: &Api<Workspace>,
        namespace: &str,
        user: &str,
        server: &str,
    ) -> Result<String, BackendError> {
        let computed = workspace_name(user, server);
        let what = format!("Workspace {namespace}/{computed}");
        match api
            .get_opt(&computed)
            .await
            .map_err(|e| api_error(&what, e))?
        {
            Some(ws) if ws.spec.user == user && ws.spec.server_name == server => {
                return Ok(computed);
            }
            Some(ws) => {
                return Err(BackendError::SpawnFailed(format!(
                    "{what} exists for user {:?} server {:?}: cannot start {user}/{server} under \
                     that name (ask an administrator)",
                    ws.spec.user, ws.spec.server_name
                )));
            }
            None => {}
        }
        let by_user = ListParams::default().fields(&format!("spec.user={user}"));
        let listed = match api.list(&by_user).await {
            Ok(list) => list.items,
            // A cluster without selectable fields for custom resources: list them all.
            Err(kube::Error::Api(status)) if status.code == 400 => {
                api.list(&ListParams::default())
                    .await
                    .map_err(|e| api_error(&format!("Workspaces of {namespace}"), e))?
                    .items
            }
            Err(e) => return Err(api_error(&format!("Workspaces of {namespace}"), e)),
        };
        let mut existing: Vec<String> = listed
            .iter()
            .filter(|ws| ws.spec.user == user && ws.spec.server_name == server)
            .map(ResourceExt::name_any)
            .collect();
        existing.sort();
        Ok(existing.into_iter().next().unwrap_or(computed))
    }

    /// Per-user mode: creates (or keeps) the user's namespace, which the operator then equips.
    pub(crate) async fn apply_namespace(
        &self,
        namespace: &str,
        user: &str,
    ) -> Result<(), BackendError> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                labels: Some([(USER_LABEL.to_owned(), names::label_value(user))].into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: None,
        };
        Api::<Namespace>::all(self.client.clone())
            .patch(namespace, &apply_params(), &Patch::Apply(&ns))
            .await
            .map_err(|e| api_error(&format!("Namespace {namespace}"), e))?;
        Ok(())
    }

    async fn stop_workspace(&self, handle: &Value) -> Result<(), BackendError> {
        let handle = WorkspaceHandle::from_value(handle)?;
        let api = self.workspaces(&handle.namespace);
        let Some(patched) = request_stop(&api, &handle.name)
            .await
            .map_err(|e| api_error(&format!("Workspace {handle}"), e))?
        else {
            return Ok(());
        };
        let generation = patched.metadata.generation;
        if spec::is_stopped(&patched, generation) {
            return Ok(());
        }
        let wait = async {
            let stream = watcher::watch_object(api.clone(), &handle.name).default_backoff();
            pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(Some(ws)) if !spec::is_stopped(&ws, generation) => {}
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(workspace = %handle, error = %e, "watching the Workspace")
                    }
                }
            }
        };
        if tokio::time::timeout(self.config.stop_timeout, wait)
            .await
            .is_err()
        {
            tracing::warn!(
                workspace = %handle,
                "not Stopped within {:?}; the operator will finish the stop",
                self.config.stop_timeout
            );
        }
        Ok(())
    }

    async fn poll_workspace(&self, handle: &Value) -> Result<BackendStatus, BackendError> {
        let handle = WorkspaceHandle::from_value(handle)?;
        let ws = self
            .workspaces(&handle.namespace)
            .get_opt(&handle.name)
            .await
            .map_err(|e| {
                BackendError::Other(anyhow::Error::new(e).context(format!("Workspace {handle}")))
            })?;
        Ok(status_of(ws.as_ref()))
    }
}

impl WorkspaceBackend for KubernetesBackend {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>> {
        Box::pin(self.start_workspace(request, progress))
    }

    fn stop<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.stop_workspace(handle))
    }

    fn poll<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<BackendStatus, BackendError>> {
        Box::pin(self.poll_workspace(handle))
    }

    fn batch_jobs(&self) -> Option<BatchJobs> {
        Some(BatchJobs::new(self.clone(), self.job_cache.clone()))
    }
}
