//! Pure: what the `kubernetes` backend writes and how it reads what the operator wrote. No client,
//! no clock.
//!
//! - [`workspace_name`] and [`workspace_namespace`]: where a user's server lives;
//! - [`build_workspace`]: a [`SpawnRequest`] → the Workspace the hub applies (its `user_options`
//!   checked field by field, errors naming the field);
//! - [`build_token_secret`]: the Secret carrying the hub-issued API token, labelled as the
//!   operator's `dereference` looks for it;
//! - [`observe`]: a Workspace seen during a start → progress, ready, or refused;
//! - [`status_of`]: a Workspace → [`BackendStatus`] (poll and the sync of admin-created ones).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use super::{KubernetesBackendConfig, WorkspaceHandle};
use crate::api::v1alpha1::conditions::READY;
use crate::api::v1alpha1::{
    DaskSpec, DesiredState, ResourceRequest, WorkerRange, Workspace, WorkspaceKind, WorkspacePhase,
    WorkspaceSpec,
};
use crate::backend::{BackendStatus, ProgressEvent, SpawnRequest};
use crate::config::NamespaceMode;
use crate::policy::workspace::reason;
use crate::policy::workspace::{
    GROUPS_ANNOTATION, SERVER_LABEL, TOKEN_KEY, USER_LABEL, WORKSPACE_LABEL,
};
use crate::policy::{names, parse_bytes, parse_cpu_millis};

/// The `Ready` condition reasons with which the operator refuses a Workspace (a rule, not a
/// wait): a start that sees one fails at once.
pub const REFUSAL_REASONS: &[&str] = &[
    reason::INVALID_NAME,
    reason::WRONG_NAMESPACE,
    reason::PROFILE_NOT_FOUND,
    reason::PROFILE_FORBIDDEN,
    reason::INVALID_PROFILE,
    reason::KIND_OVERRIDE_FORBIDDEN,
    reason::IMAGE_OVERRIDE_FORBIDDEN,
    reason::INVALID_RESOURCES,
    reason::RESOURCES_EXCEED_PROFILE,
    reason::DATA_SOURCE_NOT_FOUND,
    reason::DATA_SOURCE_FORBIDDEN,
    reason::DATA_SOURCE_CONFLICT,
    reason::NODE_POOL_NOT_FOUND,
    reason::NODE_POOL_FORBIDDEN,
    reason::NO_ELIGIBLE_POOL,
    reason::USER_CAP_EXCEEDED,
    reason::GROUP_CAP_EXCEEDED,
    reason::INVALID_NODE_POOL,
];

/// Longest `spec.image` the CRD accepts.
const MAX_IMAGE_LEN: usize = 512;
/// Most GPUs the CRD accepts.
const MAX_GPUS: i64 = 16;
/// Most data sources the CRD accepts.
const MAX_DATA_SOURCES: usize = 32;
/// Most Dask workers the CRD accepts.
const MAX_DASK_WORKERS: i64 = 1000;
/// Longest idle timeout the CRD accepts (a year).
const MAX_IDLE_TIMEOUT: i64 = 31_536_000;

/// A request the backend cannot turn into a Workspace; `field` names what is wrong
/// (`user_options.resources.gpus`, `user name`, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct SpecError {
    /// The offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// The Workspace name of `user`'s server `server`: [`names::server_label`], a DNS label that no
/// other (user, server) gets (the module documentation of [`names`] says why).
///
/// - the default server: `<user>`, e.g. `alice`;
/// - a named server: `<user>--<server>`, e.g. `alice--gpu` (`---` before a server name that
///   starts with a digit);
/// - a run of characters other than letters, digits and a single `-` escaped: `alice.smith` is
///   `alice--1-smith`;
/// - beyond 62 characters, truncated and hashed.
///
/// Workspaces made under earlier names (a user name with `.` or `_` was hashed,
/// `alice-smith-3f1c0a2b`) are still found: a start looks for the user's Workspace of that
/// server by `spec.user` and `spec.serverName` when none has the computed name.
pub fn workspace_name(user: &str, server: &str) -> String {
    names::server_label(user, server)
}

/// The namespace of `user`'s Workspaces: the shared one, or `<prefix><user>` (per-user mode,
/// as the operator requires).
pub fn workspace_namespace(config: &KubernetesBackendConfig, user: &str) -> String {
    match &config.namespace_mode {
        NamespaceMode::Shared => config.namespace.clone(),
        NamespaceMode::PerUser { prefix } => names::user_namespace(prefix, user),
    }
}

/// The [`GROUPS_ANNOTATION`] value: the groups sorted, deduplicated, comma-separated. A group
/// whose name holds a comma is left out (it would read as two groups, possibly granting one
/// the user is not in); so are empty names.
pub fn groups_annotation(groups: &[String]) -> String {
    let kept: BTreeSet<&str> = groups
        .iter()
        .map(|g| g.trim())
        .filter(|g| !g.is_empty() && !g.contains(','))
        .collect();
    kept.into_iter().collect::<Vec<_>>().join(",")
}

/// Groups [`groups_annotation`] leaves out.
pub fn dropped_groups(groups: &[String]) -> Vec<&str> {
    groups
        .iter()
        .map(String::as_str)
        .filter(|g| g.contains(','))
        .collect()
}

/// The labels the hub puts on what it applies for a Workspace (the operator selects the
/// Workspace's Secrets by [`WORKSPACE_LABEL`]).
pub fn hub_labels(name: &str, user: &str, server: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (USER_LABEL.to_owned(), names::label_value(user)),
        (SERVER_LABEL.to_owned(), names::label_value(server)),
        (WORKSPACE_LABEL.to_owned(), names::label_value(name)),
    ])
}

/// The Workspace the hub applies for `request`, named `name` in `namespace`: `spec.user`,
/// `spec.serverName`, `spec.profile` (the request's, else `user_options.profile`, else the
/// default), `kind`, `image`, `resources`, `nodePool` and `dataSources` from `user_options`
/// (the CRD's field names; other keys are ignored), `desiredState: running`, and the groups as
/// [`GROUPS_ANNOTATION`].
pub fn build_workspace(
    request: &SpawnRequest,
    name: &str,
    namespace: &str,
    default_profile: &str,
) -> Result<Workspace, SpecError> {
    check_names(&request.user, &request.server)?;
    let options = match &request.user_options {
        Value::Null => Map::new(),
        Value::Object(map) => map.clone(),
        other => {
            return Err(bad(
                "user_options",
                format!("expected a JSON object, got {}", json_type(other)),
            ));
        }
    };
    let profile = profile_of(request.profile.as_deref(), &options, default_profile)?;
    let spec = WorkspaceSpec {
        user: request.user.clone(),
        server_name: request.server.clone(),
        profile,
        kind: kind_of(&options)?,
        image: image_of(&options)?,
        resources: resources_of(&options)?,
        node_pool: subdomain_of(&options, "nodePool")?,
        data_sources: data_sources_of(&options)?,
        env: BTreeMap::new(),
        home_size: None,
        desired_state: DesiredState::Running,
        idle_timeout_seconds: None,
        dask: dask_of(&options)?,
    };
    let mut ws = Workspace::new(name, spec);
    ws.metadata.namespace = Some(namespace.to_owned());
    ws.metadata.labels = Some(hub_labels(name, &request.user, &request.server));
    ws.metadata.annotations = Some(BTreeMap::from([(
        GROUPS_ANNOTATION.to_owned(),
        groups_annotation(&request.groups),
    )]));
    Ok(ws)
}

/// The user and server names a Workspace accepts (the CRD's patterns).
pub fn check_names(user: &str, server: &str) -> Result<(), SpecError> {
    if !names::is_valid_user_name(user) {
        return Err(bad(
            "user name",
            format!(
                "{user:?} cannot own a Workspace (1 to 63 of a-z, 0-9, '.', '_', '-', starting \
                 and ending with a letter or digit)"
            ),
        ));
    }
    if !names::is_valid_server_name(server) {
        return Err(bad(
            "server name",
            format!("{server:?} is not an RFC 1123 label of at most 63 characters"),
        ));
    }
    Ok(())
}

/// The Secret `ws-<name>-token` holding `token` under [`TOKEN_KEY`], with the labels the
/// operator lists the Workspace's Secrets by. The operator then reuses this token instead of
/// generating one.
pub fn build_token_secret(
    name: &str,
    namespace: &str,
    user: &str,
    server: &str,
    token: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(names::secret_name(name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(hub_labels(name, user, server)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The handle of a Workspace object (the hub stores it as the server's `spawner_state`).
pub fn handle_of(ws: &Workspace) -> WorkspaceHandle {
    WorkspaceHandle {
        namespace: ws.metadata.namespace.clone().unwrap_or_default(),
        name: ws.metadata.name.clone().unwrap_or_default(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A present, non-null option.
fn option<'a>(options: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    options.get(key).filter(|v| !v.is_null())
}

fn string_of<'a>(field: &str, v: &'a Value) -> Result<&'a str, SpecError> {
    v.as_str()
        .ok_or_else(|| bad(field, format!("expected a string, got {}", json_type(v))))
}

fn subdomain(field: &str, v: &Value) -> Result<String, SpecError> {
    let s = string_of(field, v)?;
    if !names::is_dns_subdomain(s) {
        return Err(bad(
            field,
            format!("{s:?} is not a Kubernetes name (lowercase RFC 1123 subdomain)"),
        ));
    }
    Ok(s.to_owned())
}

fn profile_of(
    requested: Option<&str>,
    options: &Map<String, Value>,
    default_profile: &str,
) -> Result<String, SpecError> {
    if let Some(p) = requested.filter(|p| !p.is_empty()) {
        return subdomain("profile", &Value::String(p.to_owned()));
    }
    match option(options, "profile") {
        Some(Value::String(p)) if p.is_empty() => {}
        Some(v) => return subdomain("user_options.profile", v),
        None => {}
    }
    subdomain(
        "default profile",
        &Value::String(default_profile.to_owned()),
    )
}

fn kind_of(options: &Map<String, Value>) -> Result<Option<WorkspaceKind>, SpecError> {
    let Some(v) = option(options, "kind") else {
        return Ok(None);
    };
    let field = "user_options.kind";
    let s = string_of(field, v)?;
    serde_json::from_value(Value::String(s.to_owned()))
        .map(Some)
        .map_err(|_| bad(field, format!("{s:?} is not one of jupyter, rstudio, qgis")))
}

fn image_of(options: &Map<String, Value>) -> Result<Option<String>, SpecError> {
    let Some(v) = option(options, "image") else {
        return Ok(None);
    };
    image_at("user_options.image", v).map(Some)
}

fn image_at(field: &str, v: &Value) -> Result<String, SpecError> {
    let s = string_of(field, v)?;
    if s.is_empty() || s.len() > MAX_IMAGE_LEN || s.chars().any(char::is_whitespace) {
        return Err(bad(
            field,
            format!("{s:?} is not an image reference (1 to {MAX_IMAGE_LEN} characters, no spaces)"),
        ));
    }
    Ok(s.to_owned())
}

fn subdomain_of(options: &Map<String, Value>, key: &str) -> Result<Option<String>, SpecError> {
    option(options, key)
        .map(|v| subdomain(&format!("user_options.{key}"), v))
        .transpose()
}

fn data_sources_of(options: &Map<String, Value>) -> Result<Vec<String>, SpecError> {
    let Some(v) = option(options, "dataSources") else {
        return Ok(Vec::new());
    };
    let field = "user_options.dataSources";
    let items = v.as_array().ok_or_else(|| {
        bad(
            field,
            format!("expected an array of names, got {}", json_type(v)),
        )
    })?;
    if items.len() > MAX_DATA_SOURCES {
        return Err(bad(
            field,
            format!(
                "at most {MAX_DATA_SOURCES} data sources, got {}",
                items.len()
            ),
        ));
    }
    let mut names = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = subdomain(&format!("{field}[{i}]"), item)?;
        if names.contains(&name) {
            return Err(bad(
                format!("{field}[{i}]"),
                format!("{name:?} is repeated"),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

fn resources_of(options: &Map<String, Value>) -> Result<Option<ResourceRequest>, SpecError> {
    option(options, "resources")
        .map(|v| resources_at("user_options.resources", v))
        .transpose()
}

/// `user_options.dask`: the CRD's `spec.dask`, field by field (unknown keys are refused, so a
/// misspelt `worker` does not silently give the defaults).
fn dask_of(options: &Map<String, Value>) -> Result<Option<DaskSpec>, SpecError> {
    let Some(v) = option(options, "dask") else {
        return Ok(None);
    };
    let field = "user_options.dask";
    let map = v
        .as_object()
        .ok_or_else(|| bad(field, format!("expected an object, got {}", json_type(v))))?;
    let mut dask = DaskSpec::default();
    for (key, value) in map {
        let field = format!("{field}.{key}");
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "enabled" => {
                dask.enabled = Some(value.as_bool().ok_or_else(|| {
                    bad(
                        &field,
                        format!("expected a boolean, got {}", json_type(value)),
                    )
                })?);
            }
            "workers" => dask.workers = Some(workers_at(&field, value)?),
            "workerResources" => dask.worker_resources = Some(resources_at(&field, value)?),
            "nodePool" => dask.node_pool = Some(subdomain(&field, value)?),
            "image" => dask.image = Some(image_at(&field, value)?),
            "idleTimeoutSeconds" => {
                let n = value
                    .as_i64()
                    .filter(|n| (0..=MAX_IDLE_TIMEOUT).contains(n))
                    .ok_or_else(|| {
                        bad(
                            &field,
                            format!("expected seconds from 0 to {MAX_IDLE_TIMEOUT}, got {value}"),
                        )
                    })?;
                dask.idle_timeout_seconds = Some(n);
            }
            _ => {
                return Err(bad(
                    &field,
                    "unknown field (expected enabled, workers, workerResources, nodePool, image \
                     or idleTimeoutSeconds)",
                ));
            }
        }
    }
    Ok(Some(dask))
}

/// `{min, max}` workers, `0 <= min <= max`, `1 <= max <= MAX_DASK_WORKERS` (the CRD's bounds).
fn workers_at(field: &str, v: &Value) -> Result<WorkerRange, SpecError> {
    let map = v.as_object().ok_or_else(|| {
        bad(
            field,
            format!("expected an object {{min, max}}, got {}", json_type(v)),
        )
    })?;
    let count = |key: &str, low: i64| -> Result<i32, SpecError> {
        let field = format!("{field}.{key}");
        let value = map
            .get(key)
            .filter(|v| !v.is_null())
            .ok_or_else(|| bad(&field, "required"))?;
        value
            .as_i64()
            .filter(|n| (low..=MAX_DASK_WORKERS).contains(n))
            .map(|n| n as i32)
            .ok_or_else(|| {
                bad(
                    &field,
                    format!("expected an integer from {low} to {MAX_DASK_WORKERS}, got {value}"),
                )
            })
    };
    if let Some(key) = map.keys().find(|k| !matches!(k.as_str(), "min" | "max")) {
        return Err(bad(
            format!("{field}.{key}"),
            "unknown field (expected min and max)",
        ));
    }
    let range = WorkerRange {
        min: count("min", 0)?,
        max: count("max", 1)?,
    };
    if range.min > range.max {
        return Err(bad(
            format!("{field}.min"),
            format!("{} is more than max ({})", range.min, range.max),
        ));
    }
    Ok(range)
}

fn resources_at(field: &str, v: &Value) -> Result<ResourceRequest, SpecError> {
    let map = v
        .as_object()
        .ok_or_else(|| bad(field, format!("expected an object, got {}", json_type(v))))?;
    let mut resources = ResourceRequest::default();
    for (key, value) in map {
        let field = format!("{field}.{key}");
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "cpu" => {
                let q = quantity(&field, value)?;
                parse_cpu_millis(&q).map_err(|e| bad(&field, e.to_string()))?;
                resources.cpu = Some(q);
            }
            "memory" => {
                let q = quantity(&field, value)?;
                parse_bytes(&q).map_err(|e| bad(&field, e.to_string()))?;
                resources.memory = Some(q);
            }
            "gpus" => {
                let n = value
                    .as_i64()
                    .filter(|n| (0..=MAX_GPUS).contains(n))
                    .ok_or_else(|| {
                        bad(
                            &field,
                            format!("expected an integer from 0 to {MAX_GPUS}, got {value}"),
                        )
                    })?;
                resources.gpus = Some(n as i32);
            }
            "gpuType" => {
                let s = string_of(&field, value)?;
                let ok = names::is_dns_subdomain(s) && s.len() <= names::MAX_LABEL;
                if !ok {
                    return Err(bad(
                        &field,
                        format!("{s:?} is not a GPU type (like a100: a-z, 0-9, '-', '.')"),
                    ));
                }
                resources.gpu_type = Some(s.to_owned());
            }
            _ => {
                return Err(bad(
                    &field,
                    "unknown resource (expected cpu, memory, gpus or gpuType)",
                ));
            }
        }
    }
    if resources.gpu_type.is_some() && resources.gpu_count() <= 0 {
        return Err(bad(format!("{field}.gpuType"), "a GPU type needs gpus > 0"));
    }
    Ok(resources)
}

/// A quantity given as a string (`"500m"`, `"4Gi"`) or a plain number (`2`, `0.5`).
fn quantity(field: &str, v: &Value) -> Result<String, SpecError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(bad(
            field,
            format!(
                "expected a quantity (a string like \"2\" or \"4Gi\", or a number), got {}",
                json_type(other)
            ),
        )),
    }
}

/// What a start makes of the Workspace as last seen.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// Not there yet: say so.
    Waiting(ProgressEvent),
    /// Running at `url`.
    Ready {
        /// `status.url`.
        url: String,
    },
    /// It will not run as asked (refused by a rule, failed, or stopped meanwhile).
    Refused(String),
}

fn waiting(progress: u8, message: String) -> Observation {
    Observation::Waiting(ProgressEvent {
        progress,
        message,
        ready: false,
        failed: false,
    })
}

/// The `Ready` condition's reason when it is `False`.
fn not_ready_reason(ws: &Workspace) -> Option<&str> {
    ws.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY && c.status == "False")
        .map(|c| c.reason.as_str())
}

/// Whether the operator refuses the Workspace by a rule (Ready=False with a refusal reason).
pub fn is_refused(ws: &Workspace) -> bool {
    not_ready_reason(ws).is_some_and(|r| REFUSAL_REASONS.contains(&r))
}

/// Whether the status describes the spec at `generation` or later (`None`: unknown, trusted).
fn is_current(ws: &Workspace, generation: Option<i64>) -> bool {
    let observed = ws.status.as_ref().and_then(|s| s.observed_generation);
    match (observed, generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        (None, Some(_)) => false,
        (_, None) => true,
    }
}

fn status_message(ws: &Workspace) -> Option<&str> {
    ws.status
        .as_ref()
        .and_then(|s| s.message.as_deref())
        .filter(|m| !m.is_empty())
}

fn with_detail(label: &str, ws: &Workspace) -> String {
    match status_message(ws) {
        Some(m) => format!("{label}: {m}"),
        None => label.to_owned(),
    }
}

/// What a start makes of `ws`, seen after applying it at `generation`. A status written for an
/// older generation (the previous run's `Failed` or `Stopped`) is not believed.
///
/// | seen                                     | outcome                                   |
/// |------------------------------------------|-------------------------------------------|
/// | `desiredState: stopped` (changed meanwhile) | refused                                |
/// | no status, or one of an older generation | 10 "Waiting for the operator"             |
/// | `Pending`, Ready=False with a rule's reason | refused with the operator's message    |
/// | `Pending`                                | 20 "Waiting for a node: <message>"         |
/// | `Starting`                               | 50 "Pulling image / starting: <message>"   |
/// | `Running` with `status.url`              | ready                                      |
/// | `Running` without a URL                  | 80 "Server running, waiting for its URL"   |
/// | `Failed`                                 | refused with the operator's message        |
/// | `Stopping`, `Stopped`                    | 10 "Waiting for the previous server to stop" |
pub fn observe(ws: &Workspace, generation: Option<i64>) -> Observation {
    let name = format!(
        "{}/{}",
        ws.metadata.namespace.as_deref().unwrap_or_default(),
        ws.metadata.name.as_deref().unwrap_or_default()
    );
    if ws.spec.desired_state == DesiredState::Stopped {
        return Observation::Refused(format!(
            "Workspace {name} was set to desiredState: stopped before it was ready"
        ));
    }
    let phase = ws.status.as_ref().and_then(|s| s.phase);
    if phase.is_none() || !is_current(ws, generation) {
        return waiting(
            10,
            format!("Workspace {name} submitted, waiting for the operator"),
        );
    }
    match phase {
        Some(WorkspacePhase::Pending) if is_refused(ws) => Observation::Refused(
            status_message(ws)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("refused: {}", not_ready_reason(ws).unwrap_or("?"))),
        ),
        Some(WorkspacePhase::Pending) => waiting(20, with_detail("Waiting for a node", ws)),
        Some(WorkspacePhase::Starting) => waiting(50, with_detail("Pulling image / starting", ws)),
        Some(WorkspacePhase::Running) => match ws.status.as_ref().and_then(|s| s.url.clone()) {
            Some(url) if !url.is_empty() => Observation::Ready { url },
            _ => waiting(80, "Server running, waiting for its URL".to_owned()),
        },
        Some(WorkspacePhase::Failed) => Observation::Refused(
            status_message(ws)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("Workspace {name} failed")),
        ),
        Some(WorkspacePhase::Stopping | WorkspacePhase::Stopped) | None => waiting(
            10,
            with_detail("Waiting for the previous server to stop", ws),
        ),
    }
}

/// Whether no pod of `ws` runs as of `generation` (a stop waits for this): `Stopped`, or
/// refused by a rule (the operator removes a refused Workspace's pod; a stopped Workspace whose
/// profile was deleted stays refused).
pub fn is_stopped(ws: &Workspace, generation: Option<i64>) -> bool {
    let phase = ws.status.as_ref().and_then(|s| s.phase);
    let stopped = phase == Some(WorkspacePhase::Stopped)
        || (phase == Some(WorkspacePhase::Pending) && is_refused(ws));
    stopped && is_current(ws, generation)
}

/// Where the hub's proxy reaches `ws`'s Dask dashboard: `status.dask.dashboardTarget`, written
/// by the operator (an `http://host:port` origin), if set and not empty.
pub fn dashboard_target(ws: &Workspace) -> Option<String> {
    ws.status
        .as_ref()?
        .dask
        .as_ref()?
        .dashboard_target
        .clone()
        .filter(|t| !t.is_empty())
}

/// The server's state as `ws` tells it (`None`: the Workspace does not exist).
///
/// - missing, or `desiredState: stopped` → `Stopped`;
/// - `Running` with a URL → `Running` (even while a changed spec is being rolled out);
/// - `Failed`, or refused by a rule → `Failed` with the operator's message (when the status is
///   current);
/// - anything else (pending, starting, a status not yet updated) → `Starting`.
pub fn status_of(ws: Option<&Workspace>) -> BackendStatus {
    let Some(ws) = ws else {
        return BackendStatus::Stopped {
            reason: Some("the Workspace no longer exists".to_owned()),
        };
    };
    if ws.spec.desired_state == DesiredState::Stopped {
        return BackendStatus::Stopped {
            reason: Some(
                status_message(ws)
                    .unwrap_or("the Workspace is set to desiredState: stopped")
                    .to_owned(),
            ),
        };
    }
    let status = ws.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let current = is_current(ws, ws.metadata.generation);
    match phase {
        Some(WorkspacePhase::Running) => match status.and_then(|s| s.url.clone()) {
            Some(url) if !url.is_empty() => BackendStatus::Running { url },
            _ => BackendStatus::Starting,
        },
        Some(WorkspacePhase::Failed) if current => BackendStatus::Failed {
            message: status_message(ws)
                .unwrap_or("the Workspace failed")
                .to_owned(),
        },
        Some(WorkspacePhase::Pending) if current && is_refused(ws) => BackendStatus::Failed {
            message: status_message(ws)
                .unwrap_or("the Workspace is refused")
                .to_owned(),
        },
        _ => BackendStatus::Starting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(user: &str, server: &str, options: Value) -> SpawnRequest {
        SpawnRequest {
            user: user.into(),
            server: server.into(),
            groups: vec!["ocean".into(), "climate".into(), "ocean".into()],
            profile: None,
            user_options: options,
            env: BTreeMap::new(),
            files: BTreeMap::new(),
            dask: None,
            kind: Default::default(),
        }
    }

    fn build(options: Value) -> Result<Workspace, SpecError> {
        build_workspace(
            &request("alice", "", options),
            "alice",
            "atelier",
            "default",
        )
    }

    fn error_field(options: Value) -> String {
        match build(options.clone()) {
            Err(e) => {
                assert!(
                    e.to_string().starts_with(&format!("invalid {}: ", e.field)),
                    "{e}"
                );
                e.field
            }
            Ok(ws) => panic!("{options} was accepted: {:?}", ws.spec),
        }
    }

    #[test]
    fn names_of_default_and_named_servers() {
        assert_eq!(workspace_name("alice", ""), "alice");
        assert_eq!(workspace_name("alice", "gpu"), "alice--gpu");
        assert_eq!(workspace_name("alice", "my-gpu-2"), "alice--my-gpu-2");
        assert_eq!(workspace_name("1abc", ""), "1abc");
    }

    #[test]
    fn names_that_are_not_labels_are_escaped_and_never_collide() {
        assert_eq!(workspace_name("alice.smith", ""), "alice--1-smith");
        assert_eq!(workspace_name("alice_smith", ""), "alice--2-smith");
        assert_eq!(workspace_name("alice-smith", ""), "alice-smith");
        // A user name with `--` would be ambiguous verbatim: escaped.
        assert_eq!(workspace_name("a--b", ""), "a--00-b");
        assert_ne!(workspace_name("a--b", ""), workspace_name("a", "b"));
        assert_ne!(workspace_name("a--b", "c"), workspace_name("a", "b--c"));
        assert_eq!(workspace_name("a", "b--c"), "a--b--00-c");
        assert_eq!(workspace_name("a", "2x"), "a---2x");
        // Too long: truncated and hashed, still distinct and a label.
        let user = "u".repeat(40);
        let (x, y) = (
            workspace_name(&user, &"x".repeat(30)),
            workspace_name(&user, &"y".repeat(30)),
        );
        assert!(
            names::is_dns_label(&x) && names::is_dns_label(&y),
            "{x} {y}"
        );
        assert_eq!(x.len(), 63);
        assert_ne!(x, y);
        // The default server and a named one never share a name.
        assert_ne!(workspace_name(&user, ""), workspace_name(&user, "s"));
        // Child names derived by the operator stay labels.
        assert!(names::is_dns_label(&names::secret_name(&x)));
    }

    #[test]
    fn namespaces_shared_or_per_user() {
        let mut cfg = KubernetesBackendConfig::new("atelier");
        assert_eq!(workspace_namespace(&cfg, "alice"), "atelier");
        cfg.namespace_mode = NamespaceMode::PerUser {
            prefix: "atelier-u-".into(),
        };
        assert_eq!(workspace_namespace(&cfg, "alice"), "atelier-u-alice");
        assert!(workspace_namespace(&cfg, "alice.smith").starts_with("atelier-u-alice-smith-"));
    }

    #[test]
    fn user_options_become_the_spec_with_the_crds_field_names() {
        let ws = build_workspace(
            &request(
                "alice",
                "gpu",
                json!({
                    "profile": "pangeo",
                    "kind": "rstudio",
                    "image": "ghcr.io/org/img:1.0",
                    "resources": {"cpu": 2, "memory": "8Gi", "gpus": 1, "gpuType": "a100"},
                    "nodePool": "gpu-a100",
                    "dataSources": ["era5", "argo-floats"],
                    "dask": {
                        "workers": {"min": 2, "max": 16},
                        "workerResources": {"cpu": "500m", "memory": 4096},
                        "nodePool": "batch",
                        "idleTimeoutSeconds": 600,
                    },
                    "default_url": "/lab",
                    "somethingElse": {"ignored": true},
                }),
            ),
            "alice--gpu",
            "atelier",
            "default",
        )
        .expect("valid options");
        assert_eq!(
            serde_json::to_value(&ws).expect("serializes"),
            json!({
                "apiVersion": "atelier.dev/v1alpha1",
                "kind": "Workspace",
                "metadata": {
                    "name": "alice--gpu",
                    "namespace": "atelier",
                    "labels": {
                        "atelier.dev/user": "alice",
                        "atelier.dev/server": "gpu",
                        "atelier.dev/workspace": "alice--gpu",
                    },
                    "annotations": {"atelier.dev/groups": "climate,ocean"},
                },
                "spec": {
                    "user": "alice",
                    "serverName": "gpu",
                    "profile": "pangeo",
                    "kind": "rstudio",
                    "image": "ghcr.io/org/img:1.0",
                    "resources": {"cpu": "2", "memory": "8Gi", "gpus": 1, "gpuType": "a100"},
                    "nodePool": "gpu-a100",
                    "dataSources": ["era5", "argo-floats"],
                    "desiredState": "running",
                    "dask": {
                        "workers": {"min": 2, "max": 16},
                        "workerResources": {"cpu": "500m", "memory": "4096"},
                        "nodePool": "batch",
                        "idleTimeoutSeconds": 600,
                    },
                },
            })
        );
    }

    #[test]
    fn profile_precedence_request_then_options_then_default() {
        let mut r = request("alice", "", json!({"profile": "from-options"}));
        let profile = |r: &SpawnRequest| {
            build_workspace(r, "alice", "ns", "default")
                .expect("valid")
                .spec
                .profile
        };
        assert_eq!(profile(&r), "from-options");
        r.profile = Some("from-request".into());
        assert_eq!(profile(&r), "from-request");
        r.profile = Some(String::new());
        r.user_options = json!({});
        assert_eq!(profile(&r), "default");
        r.user_options = Value::Null;
        assert_eq!(profile(&r), "default");
        let spec = build(json!({})).expect("valid").spec;
        assert_eq!(spec.resources, None);
        assert_eq!(spec.kind, None);
        assert!(spec.data_sources.is_empty());
        assert_eq!(spec.desired_state, DesiredState::Running);
    }

    #[test]
    fn bad_user_options_name_the_field() {
        let cases = [
            (json!([1]), "user_options"),
            (json!({"profile": 3}), "user_options.profile"),
            (json!({"profile": "Big Profile"}), "user_options.profile"),
            (json!({"kind": "vscode"}), "user_options.kind"),
            (json!({"image": ""}), "user_options.image"),
            (json!({"image": "a b"}), "user_options.image"),
            (json!({"resources": "big"}), "user_options.resources"),
            (
                json!({"resources": {"cpu": "lots"}}),
                "user_options.resources.cpu",
            ),
            (
                json!({"resources": {"cpu": true}}),
                "user_options.resources.cpu",
            ),
            (
                json!({"resources": {"memory": "-1Gi"}}),
                "user_options.resources.memory",
            ),
            (
                json!({"resources": {"gpus": "two"}}),
                "user_options.resources.gpus",
            ),
            (
                json!({"resources": {"gpus": 17}}),
                "user_options.resources.gpus",
            ),
            (
                json!({"resources": {"gpus": 1.5}}),
                "user_options.resources.gpus",
            ),
            (
                json!({"resources": {"gpuType": "A100", "gpus": 1}}),
                "user_options.resources.gpuType",
            ),
            (
                json!({"resources": {"gpuType": "a100"}}),
                "user_options.resources.gpuType",
            ),
            (
                json!({"resources": {"gpu": 1}}),
                "user_options.resources.gpu",
            ),
            (json!({"nodePool": "GPU pool"}), "user_options.nodePool"),
            (json!({"dataSources": "era5"}), "user_options.dataSources"),
            (
                json!({"dataSources": ["era5", 4]}),
                "user_options.dataSources[1]",
            ),
            (
                json!({"dataSources": ["era5", "era5"]}),
                "user_options.dataSources[1]",
            ),
            (json!({"dask": true}), "user_options.dask"),
            (
                json!({"dask": {"enabled": "yes"}}),
                "user_options.dask.enabled",
            ),
            (json!({"dask": {"worker": 2}}), "user_options.dask.worker"),
            (json!({"dask": {"workers": 4}}), "user_options.dask.workers"),
            (
                json!({"dask": {"workers": {"max": 4}}}),
                "user_options.dask.workers.min",
            ),
            (
                json!({"dask": {"workers": {"min": 5, "max": 4}}}),
                "user_options.dask.workers.min",
            ),
            (
                json!({"dask": {"workers": {"min": 0, "max": 0}}}),
                "user_options.dask.workers.max",
            ),
            (
                json!({"dask": {"workers": {"min": -1, "max": 2}}}),
                "user_options.dask.workers.min",
            ),
            (
                json!({"dask": {"workers": {"min": 1, "max": 1001}}}),
                "user_options.dask.workers.max",
            ),
            (
                json!({"dask": {"workers": {"min": 1, "max": 2, "step": 1}}}),
                "user_options.dask.workers.step",
            ),
            (
                json!({"dask": {"workerResources": {"cpu": "lots"}}}),
                "user_options.dask.workerResources.cpu",
            ),
            (
                json!({"dask": {"workerResources": {"gpuType": "a100"}}}),
                "user_options.dask.workerResources.gpuType",
            ),
            (
                json!({"dask": {"nodePool": "Batch"}}),
                "user_options.dask.nodePool",
            ),
            (json!({"dask": {"image": "a b"}}), "user_options.dask.image"),
            (
                json!({"dask": {"idleTimeoutSeconds": -1}}),
                "user_options.dask.idleTimeoutSeconds",
            ),
        ];
        for (options, field) in cases {
            assert_eq!(error_field(options.clone()), field, "{options}");
        }
        let e = build(json!({"resources": {"gpus": "two"}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid user_options.resources.gpus: expected an integer from 0 to 16, got \"two\""
        );
        // Nulls are absent values.
        let spec = build(json!({"kind": null, "resources": {"cpu": null}}))
            .expect("valid")
            .spec;
        assert_eq!(spec.kind, None);
        assert_eq!(spec.resources, Some(ResourceRequest::default()));
    }

    #[test]
    fn bad_names_are_refused_before_any_request() {
        let e = build_workspace(&request("Alice", "", json!({})), "x", "ns", "d").unwrap_err();
        assert_eq!(e.field, "user name");
        let e =
            build_workspace(&request("alice", "My_Server", json!({})), "x", "ns", "d").unwrap_err();
        assert_eq!(e.field, "server name");
        let e =
            build_workspace(&request("alice", "", json!({})), "x", "ns", "Not Valid").unwrap_err();
        assert_eq!(e.field, "default profile");
    }

    #[test]
    fn groups_are_sorted_and_commas_cannot_smuggle_a_group() {
        let groups = vec![
            "ocean".to_owned(),
            "a,admins".to_owned(),
            "climate".to_owned(),
            " ".to_owned(),
        ];
        assert_eq!(groups_annotation(&groups), "climate,ocean");
        assert_eq!(dropped_groups(&groups), vec!["a,admins"]);
        assert_eq!(groups_annotation(&[]), "");
    }

    #[test]
    fn token_secret_is_what_the_operator_looks_for() {
        let secret = build_token_secret("alice", "atelier", "alice", "", "tok-123456789");
        assert_eq!(
            serde_json::to_value(&secret).expect("serializes"),
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "ws-alice-token",
                    "namespace": "atelier",
                    "labels": {
                        "atelier.dev/user": "alice",
                        "atelier.dev/server": "",
                        "atelier.dev/workspace": "alice",
                    },
                },
                "type": "Opaque",
                "data": {"token": "dG9rLTEyMzQ1Njc4OQ=="},
            })
        );
        let ws = Workspace::new("alice", build(json!({})).expect("valid").spec);
        assert_eq!(
            crate::policy::workspace::children_selector(&ws),
            "atelier.dev/workspace=alice"
        );
        assert_eq!(
            crate::policy::workspace::token_of(&secret).as_deref(),
            Some("tok-123456789")
        );
    }
    /// `alice` at generation 2 with a status of `phase` (Ready=False `reason`, `message`)
    /// observed at `observed`.
    fn seen(phase: WorkspacePhase, reason: &str, message: &str, observed: i64) -> Workspace {
        let mut ws = build(json!({})).expect("valid");
        ws.metadata.generation = Some(2);
        ws.status = Some(
            serde_json::from_value(json!({
                "phase": phase.as_str(),
                "conditions": [{
                    "type": "Ready",
                    "status": if phase == WorkspacePhase::Running { "True" } else { "False" },
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": "2026-01-01T09:00:00Z",
                }],
                "message": message,
                "url": if phase == WorkspacePhase::Running {
                    json!("http://ws-alice.atelier.svc:8888/user/alice/")
                } else {
                    Value::Null
                },
                "observedGeneration": observed,
            }))
            .expect("a status"),
        );
        ws
    }

    fn progress_of(o: Observation) -> (u8, String) {
        match o {
            Observation::Waiting(e) => (e.progress, e.message),
            other => panic!("not waiting: {other:?}"),
        }
    }

    #[test]
    fn observations_of_a_start() {
        use WorkspacePhase::*;
        let mut fresh = build(json!({})).expect("valid");
        fresh.metadata.generation = Some(2);
        assert_eq!(
            progress_of(observe(&fresh, Some(2))),
            (
                10,
                "Workspace atelier/alice submitted, waiting for the operator".into()
            )
        );
        // The previous run's Failed (generation 1) is not believed.
        let stale = seen(Failed, "CrashLoopBackOff", "keeps crashing", 1);
        assert_eq!(progress_of(observe(&stale, Some(2))).0, 10);
        assert_eq!(
            progress_of(observe(
                &seen(Pending, "Creating", "Creating the pod", 2),
                Some(2)
            )),
            (20, "Waiting for a node: Creating the pod".into())
        );
        assert_eq!(
            progress_of(observe(
                &seen(Pending, "Unschedulable", "0/3 nodes", 2),
                Some(2)
            ))
            .0,
            20,
            "unschedulable may resolve (autoscaler): not a refusal"
        );
        assert_eq!(
            progress_of(observe(
                &seen(
                    Starting,
                    "Starting",
                    "Starting the server (ContainerCreating)",
                    2
                ),
                Some(2)
            )),
            (
                50,
                "Pulling image / starting: Starting the server (ContainerCreating)".into()
            )
        );
        assert_eq!(
            observe(&seen(Running, "Running", "The server is ready", 2), Some(2)),
            Observation::Ready {
                url: "http://ws-alice.atelier.svc:8888/user/alice/".into()
            }
        );
        assert_eq!(
            observe(
                &seen(Pending, "NoEligiblePool", "no pool fits 4 GPUs", 2),
                Some(2)
            ),
            Observation::Refused("no pool fits 4 GPUs".into())
        );
        assert_eq!(
            observe(
                &seen(
                    Failed,
                    "ErrImagePull",
                    "Container notebook cannot start: not found",
                    3
                ),
                Some(2)
            ),
            Observation::Refused("Container notebook cannot start: not found".into())
        );
        let mut stopped = seen(Running, "Running", "ready", 2);
        stopped.spec.desired_state = DesiredState::Stopped;
        assert!(matches!(
            observe(&stopped, Some(2)),
            Observation::Refused(_)
        ));
        // Unknown generation: the status is believed.
        assert!(matches!(observe(&stale, None), Observation::Refused(_)));
    }

    #[test]
    fn dashboard_target_from_the_status() {
        let mut ws = seen(WorkspacePhase::Running, "Running", "ready", 2);
        assert_eq!(dashboard_target(&ws), None);
        let status = ws.status.as_mut().unwrap();
        status.dask = Some(crate::api::v1alpha1::DaskStatus {
            dashboard_target: Some(String::new()),
            ..Default::default()
        });
        assert_eq!(dashboard_target(&ws), None, "empty is unset");
        ws.status
            .as_mut()
            .unwrap()
            .dask
            .as_mut()
            .unwrap()
            .dashboard_target = Some("http://ws-alice-dask-scheduler.atelier.svc:8787".into());
        assert_eq!(
            dashboard_target(&ws).as_deref(),
            Some("http://ws-alice-dask-scheduler.atelier.svc:8787")
        );
        assert_eq!(build(json!({})).expect("valid").status, None);
    }

    #[test]
    fn status_of_each_phase() {
        use WorkspacePhase::*;
        assert!(matches!(status_of(None), BackendStatus::Stopped { .. }));
        assert_eq!(
            status_of(Some(&seen(Running, "Running", "ready", 2))),
            BackendStatus::Running {
                url: "http://ws-alice.atelier.svc:8888/user/alice/".into()
            }
        );
        assert_eq!(
            status_of(Some(&seen(Pending, "Scheduling", "waiting", 2))),
            BackendStatus::Starting
        );
        assert_eq!(
            status_of(Some(&seen(Starting, "Starting", "pulling", 2))),
            BackendStatus::Starting
        );
        assert_eq!(
            status_of(Some(&seen(Failed, "CrashLoopBackOff", "keeps crashing", 2))),
            BackendStatus::Failed {
                message: "keeps crashing".into()
            }
        );
        assert_eq!(
            status_of(Some(&seen(Failed, "CrashLoopBackOff", "keeps crashing", 1))),
            BackendStatus::Starting,
            "a Failed status of an older generation is stale"
        );
        assert_eq!(
            status_of(Some(&seen(
                Pending,
                "UserCapExceeded",
                "cap of 2 reached",
                2
            ))),
            BackendStatus::Failed {
                message: "cap of 2 reached".into()
            }
        );
        let mut stopped = seen(Stopped, "Stopped", "Stopped; the home volume is kept", 3);
        stopped.spec.desired_state = DesiredState::Stopped;
        assert_eq!(
            status_of(Some(&stopped)),
            BackendStatus::Stopped {
                reason: Some("Stopped; the home volume is kept".into())
            }
        );
        assert!(is_stopped(&stopped, Some(3)));
        assert!(!is_stopped(&stopped, Some(4)));
        let mut refused = seen(Pending, "ProfileNotFound", "no profile jupyter", 3);
        refused.spec.desired_state = DesiredState::Stopped;
        assert!(
            is_stopped(&refused, Some(3)),
            "a refused Workspace runs no pod"
        );
        assert!(!is_stopped(
            &seen(Stopping, "Stopping", "removing", 3),
            Some(3)
        ));
    }
}
