//! An in-memory Kubernetes API server, just enough for `atelier operator` (today's and the
//! informer-cache one): plain HTTP on 127.0.0.1, JSON objects kept by (group/version/resource,
//! namespace, name), one global resourceVersion counter.
//!
//! What it serves, as kube 5's client and watcher ask for it (kube-runtime `watcher.rs`:
//! `Config::default()` is `ListWatch` with `page_size: Some(500)` and bookmarks on, so no
//! streaming lists and no discovery):
//!
//! - LIST with `labelSelector` (equality, inequality and existence terms), `limit`/`continue`
//!   paging, the list's `resourceVersion` in its metadata;
//! - WATCH (`watch=true`) from a `resourceVersion`: newline-delimited `{"type","object"}` events
//!   from a change log (a `resourceVersion` older than the log answers an `ERROR` 410, as the
//!   API server's watch cache does), `BOOKMARK`s when `allowWatchBookmarks`, and the stream ends
//!   after `timeoutSeconds`;
//! - GET, POST, PUT, DELETE (finalizers: sets `deletionTimestamp`; none: removes it and answers
//!   a `Status`, as the API server does for an immediate deletion);
//! - PATCH: `application/apply-patch+yaml` (server-side apply, here a JSON merge of the applied
//!   object into the stored one, creating it when missing), `application/merge-patch+json`,
//!   `application/strategic-merge-patch+json` (as a merge), `application/json-patch+json`
//!   (`test`, `add`, `remove`, `replace`: what kube-runtime's finalizer helper sends);
//! - the `status` subresource: a write there changes only `status`; a write to the object
//!   itself never changes `status` (every kind here has the subresource, as Workspaces do);
//! - `uid`, `resourceVersion`, `generation` (bumped when anything outside `metadata` and
//!   `status` changes) and `creationTimestamp` are set by the server.
//!
//! Every request is counted by (verb, resource) with [`atelier::k8s::request_labels`], the
//! labelling of the operator's own request counter, so that the two can be compared. Events
//! (`events.k8s.io/v1`) are stored but kept out of the change log: nothing watches them.

#![allow(dead_code)] // the test uses a part of what the harness uses

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// How many changes the log keeps by default for watches that resume from an older
/// `resourceVersion` ([`Store::set_log_capacity`]).
pub const LOG_CAPACITY: usize = 100_000;
/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// A stored object: its JSON value and its serialization (made once per write, so a LIST of
/// thousands of objects costs a copy, not a serialization).
#[derive(Debug)]
pub struct Obj {
    /// The object.
    pub value: Value,
    /// `value` serialized.
    pub json: Bytes,
}

impl Obj {
    fn new(value: Value) -> Arc<Obj> {
        let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value serializes"));
        Arc::new(Obj { value, json })
    }

    fn labels(&self) -> Option<&Map<String, Value>> {
        self.value.pointer("/metadata/labels")?.as_object()
    }
}

/// One change, as a watch sends it.
#[derive(Debug)]
struct Change {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    obj: Arc<Obj>,
}

/// Requests by `(verb, resource)`.
pub type RequestCounts = BTreeMap<(String, String), u64>;

/// The objects, the change log and the request counters.
#[derive(Debug, Default)]
pub struct Store {
    rv: u64,
    uids: u64,
    /// resource key (`group/version/resource`, `v1/pods` for the core group) → (namespace, name)
    /// → object. Cluster-scoped objects have the namespace `""`.
    objects: HashMap<String, BTreeMap<(String, String), Arc<Obj>>>,
    log: VecDeque<Change>,
    /// Absolute position of `log[0]` (positions only grow).
    log_start: u64,
    /// The highest resourceVersion dropped from the log: a watch from an older one gets 410.
    trimmed_rv: u64,
    /// How many changes the log keeps (0: [`LOG_CAPACITY`]).
    log_capacity: usize,
    /// Requests received, by (verb, resource).
    pub requests: RequestCounts,
    /// Objects sent in LIST answers, by resource.
    pub listed: BTreeMap<String, u64>,
}

/// The key of a resource in the store: `group/version/resource` (`v1/pods` for the core group).
pub fn resource_key(group: &str, version: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("{version}/{resource}")
    } else {
        format!("{group}/{version}/{resource}")
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Keeps `changes` changes in the log for resuming watches (a real API server keeps what
    /// etcd has not compacted, 5 minutes by default): fewer make watches expire sooner.
    pub fn set_log_capacity(&mut self, changes: usize) {
        self.log_capacity = changes.max(10);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The object, if stored.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(resource)?
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|o| &o.value)
    }

    /// Every object of `resource`, in (namespace, name) order.
    pub fn all(&self, resource: &str) -> impl Iterator<Item = &Value> {
        self.objects
            .get(resource)
            .into_iter()
            .flat_map(|m| m.values().map(|o| &o.value))
    }

    /// The (namespace, name) of every object of `resource`.
    pub fn keys(&self, resource: &str) -> Vec<(String, String)> {
        self.objects
            .get(resource)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores `obj` (server fields set) and logs the change; returns the stored object.
    fn put(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
        mut obj: Value,
        kind: &'static str,
    ) -> Arc<Obj> {
        let rv = self.next_rv();
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let stored = Obj::new(obj);
        self.objects
            .entry(resource.to_owned())
            .or_default()
            .insert((namespace.to_owned(), name.to_owned()), stored.clone());
        self.log_change(rv, resource, namespace, kind, stored.clone());
        stored
    }

    fn log_change(
        &mut self,
        rv: u64,
        resource: &str,
        namespace: &str,
        kind: &'static str,
        obj: Arc<Obj>,
    ) {
        if resource.ends_with("/events") {
            return;
        }
        self.log.push_back(Change {
            rv,
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            kind,
            obj,
        });
        let capacity = if self.log_capacity == 0 {
            LOG_CAPACITY
        } else {
            self.log_capacity
        };
        if self.log.len() > capacity {
            let drop = capacity / 10;
            for change in self.log.drain(..drop) {
                self.trimmed_rv = change.rv;
            }
            self.log_start += drop as u64;
        }
    }

    /// Creates an object as a client's POST would (server fields set). `Err` if it exists.
    pub fn create(
        &mut self,
        resource: &str,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Arc<Obj>, ApiError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                let prefix = obj.pointer("/metadata/generateName")?.as_str()?;
                Some(format!("{prefix}{:x}", self.uids + 1))
            })
            .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name is required"))?;
        if self.get(resource, namespace, &name).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{resource} \"{name}\" already exists"),
            ));
        }
        self.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uids);
        let meta = obj
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "BadRequest", "the body is not an object"))?
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("name".into(), json!(name));
            if !namespace.is_empty() {
                meta.insert("namespace".into(), json!(namespace));
            }
            meta.insert("uid".into(), json!(uid));
            meta.insert("generation".into(), json!(1));
            meta.insert("creationTimestamp".into(), json!(now()));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
        }
        Ok(self.put(resource, namespace, &name, obj, "ADDED"))
    }

    /// Replaces the stored object with `next`, keeping what only the server (or the other
    /// endpoint, object or `status`) may change; bumps `generation` when anything outside
    /// `metadata` and `status` changed. Deletes the object when it is being deleted and
    /// `next` has no finalizer left.
    pub fn update(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
        next: Value,
        status_only: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        let current = self
            .get(resource, namespace, name)
            .cloned()
            .ok_or_else(|| not_found(resource, name))?;
        let mut merged = if status_only {
            let mut m = current.clone();
            match next.get("status") {
                Some(status) => m["status"] = status.clone(),
                None => {
                    if let Some(o) = m.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            m
        } else {
            let mut m = next;
            match current.get("status") {
                Some(status) => m["status"] = status.clone(),
                None => {
                    if let Some(o) = m.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            m
        };
        // Server-owned metadata.
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
        ] {
            let value = current.pointer(&format!("/metadata/{field}")).cloned();
            if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                match value {
                    Some(v) => meta.insert(field.into(), v),
                    None => meta.remove(field),
                };
            }
        }
        let spec_of = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                o.remove("status");
            }
            v
        };
        if spec_of(&current) != spec_of(&merged) {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            merged["metadata"]["generation"] = json!(generation + 1);
        }
        let terminating = merged.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left = merged
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if terminating && !finalizers_left {
            return Ok(self.remove(resource, namespace, name, merged));
        }
        Ok(self.put(resource, namespace, name, merged, "MODIFIED"))
    }

    fn remove(&mut self, resource: &str, namespace: &str, name: &str, last: Value) -> Arc<Obj> {
        if let Some(m) = self.objects.get_mut(resource) {
            m.remove(&(namespace.to_owned(), name.to_owned()));
        }
        let rv = self.next_rv();
        let mut last = last;
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Obj::new(last);
        self.log_change(rv, resource, namespace, "DELETED", obj.clone());
        obj
    }

    /// Deletes as the API server does: with finalizers, only marks it (returns the object);
    /// without, removes it (returns `None`).
    pub fn delete(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Obj>>, ApiError> {
        let current = self
            .get(resource, namespace, name)
            .cloned()
            .ok_or_else(|| not_found(resource, name))?;
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            self.remove(resource, namespace, name, current);
            return Ok(None);
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Some(
                self.objects[resource][&(namespace.to_owned(), name.to_owned())].clone(),
            ));
        }
        let mut next = current;
        next["metadata"]["deletionTimestamp"] = json!(now());
        next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        Ok(Some(self.put(resource, namespace, name, next, "MODIFIED")))
    }

    /// Changes a stored object in place, as another controller would (the harness: touching a
    /// Workspace, marking a pod Running). `change` edits the JSON; object and status alike.
    pub fn modify(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> bool {
        let Some(mut value) = self.get(resource, namespace, name).cloned() else {
            return false;
        };
        change(&mut value);
        self.put(resource, namespace, name, value, "MODIFIED");
        true
    }

    /// Total requests received.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// An error answered as a `Status`.
#[derive(Debug)]
pub struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(body)).into_response()
    }
}

/// The parts of a request path (k8s.io/apiserver `pkg/endpoints/request/requestinfo.go`).
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// API group (`""` for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace, when the path names one.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource (`status`).
    pub subresource: Option<String>,
}

impl Target {
    /// The store key of the resource.
    pub fn key(&self) -> String {
        resource_key(&self.group, &self.version, &self.resource)
    }

    /// Parses `/api/v1/...` and `/apis/<group>/<version>/...`.
    pub fn parse(path: &str) -> Option<Target> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        // `namespaces/<ns>/<resource>...` unless it is the Namespace itself (or its status).
        let (namespace, rest) = match rest {
            ["namespaces", ns, resource, tail @ ..]
                if !(tail.is_empty() && matches!(*resource, "status" | "finalize")) =>
            {
                (Some((*ns).to_owned()), {
                    let mut v = vec![*resource];
                    v.extend_from_slice(tail);
                    v
                })
            }
            other => (None, other.to_vec()),
        };
        let mut it = rest.into_iter();
        let resource = it.next().filter(|r| !r.is_empty())?.to_owned();
        let name = it.next().map(str::to_owned);
        let subresource = it.next().map(str::to_owned);
        if it.next().is_some() {
            return None;
        }
        Some(Target {
            group: group.to_owned(),
            version: version.to_owned(),
            namespace,
            resource,
            name,
            subresource,
        })
    }
}

/// The `kind` of a resource's objects (for lists and bookmarks).
fn kind_of(resource: &str) -> String {
    let known = [
        ("pods", "Pod"),
        ("services", "Service"),
        ("secrets", "Secret"),
        ("configmaps", "ConfigMap"),
        ("persistentvolumeclaims", "PersistentVolumeClaim"),
        ("persistentvolumes", "PersistentVolume"),
        ("csidrivers", "CSIDriver"),
        ("networkpolicies", "NetworkPolicy"),
        ("namespaces", "Namespace"),
        ("resourcequotas", "ResourceQuota"),
        ("limitranges", "LimitRange"),
        ("events", "Event"),
        ("leases", "Lease"),
        ("workspaces", "Workspace"),
        ("workspaceprofiles", "WorkspaceProfile"),
        ("nodepools", "NodePool"),
        ("datasources", "DataSource"),
        ("batchjobs", "BatchJob"),
    ];
    known
        .iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, k)| (*k).to_owned())
        .unwrap_or_else(|| resource.trim_end_matches('s').to_owned())
}

/// A label selector's terms: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
pub fn selector_matches(selector: &str, labels: Option<&Map<String, Value>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                get(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k.trim()) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(term).is_some()
            }
        })
}

/// RFC 7386 JSON merge patch (server-side apply is approximated by it, too).
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// RFC 6902 `test`, `add`, `remove`, `replace` (a missing path tests equal to `null`, as the
/// API server's evanphx/json-patch does).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let invalid = |m: String| ApiError::new(422, "Invalid", m);
    for op in ops.as_array().ok_or_else(|| invalid("not a list".into()))? {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = op["path"].as_str().unwrap_or_default();
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match kind {
            "test" => {
                let have = target.pointer(path).cloned().unwrap_or(Value::Null);
                if have != value {
                    return Err(invalid(format!("test failed at {path}")));
                }
            }
            "add" | "replace" | "remove" => {
                let parts = pointer_parts(path);
                let (last, parents) = parts
                    .split_last()
                    .ok_or_else(|| invalid("empty path".into()))?;
                let mut parent = &mut *target;
                for p in parents {
                    parent = match parent {
                        Value::Object(m) => m.get_mut(p),
                        Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                        _ => None,
                    }
                    .ok_or_else(|| invalid(format!("no {path}")))?;
                }
                match (parent, kind) {
                    (Value::Object(m), "remove") => {
                        m.remove(last)
                            .ok_or_else(|| invalid(format!("no {path}")))?;
                    }
                    (Value::Object(m), _) => {
                        m.insert(last.clone(), value);
                    }
                    (Value::Array(a), "add") if last == "-" => a.push(value),
                    (Value::Array(a), kind) => {
                        let i: usize = last.parse().map_err(|_| invalid(format!("bad {path}")))?;
                        match kind {
                            "add" if i <= a.len() => a.insert(i, value),
                            "replace" if i < a.len() => a[i] = value,
                            "remove" if i < a.len() => {
                                a.remove(i);
                            }
                            _ => return Err(invalid(format!("no {path}"))),
                        }
                    }
                    _ => return Err(invalid(format!("no {path}"))),
                }
            }
            other => return Err(invalid(format!("unsupported op {other}"))),
        }
    }
    Ok(())
}

/// The fake API server: its address, its store, and its task (aborted on drop).
pub struct FakeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
    log_requests: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    /// Serves on 127.0.0.1 (a free port). `log_requests` prints each request to stderr.
    pub async fn start(log_requests: bool) -> std::io::Result<FakeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            changed: watch::channel(0).0,
            log_requests,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApi { addr, shared, task })
    }

    /// A kubeconfig pointing at this server (no authentication).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            self.addr
        )
    }

    /// Runs `f` on the store; wakes the watches afterwards (`f` may have changed objects).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv) = {
            let mut store = self.shared.lock();
            let out = f(&mut store);
            (out, store.rv)
        };
        self.shared.changed.send_replace(rv);
        out
    }
}

type Params = Query<HashMap<String, String>>;

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (verb, resource) = atelier::k8s::request_labels(&method, &uri);
    if shared.log_requests {
        eprintln!("fake-api: {verb} {resource} {method} {uri}");
    }
    shared
        .lock()
        .requests
        .entry((verb.to_owned(), resource))
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let Some(target) = Target::parse(uri.path()) else {
        return ApiError::new(404, "NotFound", format!("no route {}", uri.path())).into_response();
    };
    let result = match (&method, target.name.as_deref()) {
        (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            return watch_response(shared, &target, &query);
        }
        (&Method::GET, None) => list(&shared, &target, &query),
        (&Method::GET, Some(name)) => {
            let store = shared.lock();
            let ns = target.namespace.clone().unwrap_or_default();
            match store
                .objects
                .get(&target.key())
                .and_then(|m| m.get(&(ns, name.to_owned())))
            {
                Some(obj) => Ok(json_response(StatusCode::OK, obj.json.clone())),
                None => Err(not_found(&target.resource, name)),
            }
        }
        (&Method::POST, None) => parse_body(&body).and_then(|obj| {
            let ns = target.namespace.clone().unwrap_or_default();
            let created = shared.lock().create(&target.key(), &ns, obj)?;
            Ok(json_response(StatusCode::CREATED, created.json.clone()))
        }),
        (&Method::PUT, Some(name)) => parse_body(&body).and_then(|obj| {
            let ns = target.namespace.clone().unwrap_or_default();
            let mut store = shared.lock();
            let current_rv = store
                .get(&target.key(), &ns, name)
                .and_then(|o| o.pointer("/metadata/resourceVersion").cloned());
            let sent_rv = obj.pointer("/metadata/resourceVersion").cloned();
            if sent_rv.is_some() && current_rv.is_some() && sent_rv != current_rv {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    "the object has been modified",
                ));
            }
            let status_only = target.subresource.as_deref() == Some("status");
            let updated = store.update(&target.key(), &ns, name, obj, status_only)?;
            Ok(json_response(StatusCode::OK, updated.json.clone()))
        }),
        (&Method::PATCH, Some(name)) => patch(&shared, &target, name, &headers, &query, &body),
        (&Method::DELETE, Some(name)) => {
            let ns = target.namespace.clone().unwrap_or_default();
            match shared.lock().delete(&target.key(), &ns, name) {
                Ok(Some(obj)) => Ok(json_response(StatusCode::OK, obj.json.clone())),
                Ok(None) => Ok((
                    StatusCode::OK,
                    axum::Json(json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "kind": target.resource},
                    })),
                )
                    .into_response()),
                Err(e) => Err(e),
            }
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} {}", uri.path()),
        )),
    };
    let rv = shared.lock().rv;
    shared.changed.send_replace(rv);
    result.unwrap_or_else(IntoResponse::into_response)
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")))
}

fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // kube sends an apply patch as JSON (YAML's superset), so one parser serves all four.
    let patch = parse_body(body)?;
    let ns = target.namespace.clone().unwrap_or_default();
    let key = target.key();
    let status_only = target.subresource.as_deref() == Some("status");
    let mut store = shared.lock();
    let Some(current) = store.get(&key, &ns, name).cloned() else {
        if content_type.starts_with("application/apply-patch") && !status_only {
            let mut obj = patch;
            obj["metadata"]["name"] = json!(name);
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
            let _ = query.get("force");
            let created = store.create(&key, &ns, obj)?;
            return Ok(json_response(StatusCode::CREATED, created.json.clone()));
        }
        return Err(not_found(&target.resource, name));
    };
    let mut next = current;
    if content_type.starts_with("application/json-patch") {
        json_patch(&mut next, &patch)?;
    } else if content_type.starts_with("application/apply-patch")
        || content_type.starts_with("application/merge-patch")
        || content_type.starts_with("application/strategic-merge-patch")
    {
        let mut patch = patch;
        if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        merge(&mut next, &patch);
    } else {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("content type {content_type:?}"),
        ));
    }
    let updated = store.update(&key, &ns, name, next, status_only)?;
    Ok(json_response(StatusCode::OK, updated.json.clone()))
}

fn list(
    shared: &Shared,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let selector = query.get("labelSelector").map(String::as_str).unwrap_or("");
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // continue = "<list rv>/<namespace>/<name>" of the last object sent.
    let cont = query.get("continue").filter(|c| !c.is_empty());
    let (list_rv, after) = match cont {
        Some(c) => {
            let mut parts = c.splitn(3, '/');
            let rv: u64 = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
            let ns = parts.next().unwrap_or_default().to_owned();
            let name = parts.next().unwrap_or_default().to_owned();
            (Some(rv), Some((ns, name)))
        }
        None => (None, None),
    };
    let mut store = shared.lock();
    let list_rv = list_rv.unwrap_or(store.rv);
    let mut body = Vec::with_capacity(4096);
    let mut sent = 0usize;
    let mut last = None;
    let mut more = false;
    body.extend_from_slice(b"{\"items\":[");
    if let Some(objects) = store.objects.get(&target.key()) {
        let range = match &after {
            Some(k) => objects.range::<(String, String), _>((
                std::ops::Bound::Excluded(k.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => objects.range::<(String, String), _>(..),
        };
        for ((ns, name), obj) in range {
            if target.namespace.as_ref().is_some_and(|want| want != ns) {
                continue;
            }
            if !selector_matches(selector, obj.labels()) {
                continue;
            }
            if sent == limit {
                more = true;
                break;
            }
            if sent > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&obj.json);
            sent += 1;
            last = Some((ns.clone(), name.clone()));
        }
    }
    let api_version = if target.group.is_empty() {
        target.version.clone()
    } else {
        format!("{}/{}", target.group, target.version)
    };
    let continue_token = match (more, last) {
        (true, Some((ns, name))) => format!("{list_rv}/{ns}/{name}"),
        _ => String::new(),
    };
    let tail = json!({
        "apiVersion": api_version,
        "kind": format!("{}List", kind_of(&target.resource)),
        "metadata": {"resourceVersion": list_rv.to_string(), "continue": continue_token},
    });
    let tail = serde_json::to_string(&tail).expect("serializes");
    body.extend_from_slice(b"],");
    body.extend_from_slice(&tail.as_bytes()[1..]);
    *store.listed.entry(target.resource.clone()).or_insert(0) += sent as u64;
    Ok(json_response(StatusCode::OK, Bytes::from(body)))
}

struct WatchState {
    shared: Arc<Shared>,
    rx: watch::Receiver<u64>,
    key: String,
    target: Target,
    selector: String,
    /// Absolute log position of the next change to look at.
    pos: u64,
    /// Send changes after this resourceVersion only.
    since: u64,
    /// The watch started from a resourceVersion the log no longer holds: it answers 410.
    expired: bool,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    next_bookmark: tokio::time::Instant,
    done: bool,
}

fn watch_response(
    shared: Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let (pos, since, expired) = {
        let store = shared.lock();
        // "0" or none: from now (no initial events: this fake never serves streaming lists).
        let since = if since == 0 { store.rv } else { since };
        let offset = store.log.partition_point(|c| c.rv <= since);
        (
            store.log_start + offset as u64,
            since,
            since < store.trimmed_rv,
        )
    };
    let now = tokio::time::Instant::now();
    let state = WatchState {
        rx: shared.changed.subscribe(),
        shared,
        key: target.key(),
        target: target.clone(),
        selector: query.get("labelSelector").cloned().unwrap_or_default(),
        pos,
        since,
        expired,
        deadline: now + Duration::from_secs(timeout),
        bookmarks,
        next_bookmark: now + BOOKMARK_EVERY,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let (chunk, rv) = next_changes(&mut st);
            if let Some(chunk) = chunk {
                return Some((Ok::<_, Infallible>(Bytes::from(chunk)), st));
            }
            let now = tokio::time::Instant::now();
            if now >= st.deadline {
                return None;
            }
            if st.bookmarks && now >= st.next_bookmark {
                st.next_bookmark = now + BOOKMARK_EVERY;
                let api_version = if st.target.group.is_empty() {
                    st.target.version.clone()
                } else {
                    format!("{}/{}", st.target.group, st.target.version)
                };
                let line = json!({"type": "BOOKMARK", "object": {
                    "apiVersion": api_version, "kind": kind_of(&st.target.resource),
                    "metadata": {"resourceVersion": rv.to_string()},
                }});
                let mut bytes = serde_json::to_vec(&line).expect("serializes");
                bytes.push(b'\n');
                return Some((Ok(Bytes::from(bytes)), st));
            }
            let wake = if st.bookmarks {
                st.deadline.min(st.next_bookmark)
            } else {
                st.deadline
            };
            tokio::select! {
                changed = st.rx.changed() => if changed.is_err() { return None; },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a response")
}

/// The watch's next lines (if any) and the store's resourceVersion. Like the API server's watch
/// cache, a watch that keeps up is never expired: only one that started from a resourceVersion
/// the log had dropped, or fell so far behind that the log dropped its next change, gets 410.
fn next_changes(st: &mut WatchState) -> (Option<Vec<u8>>, u64) {
    let store = st.shared.lock();
    if st.expired || st.pos < store.log_start {
        st.done = true;
        let line = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410,
        }});
        let mut bytes = serde_json::to_vec(&line).expect("serializes");
        bytes.push(b'\n');
        return (Some(bytes), store.rv);
    }
    let start = usize::try_from(st.pos - store.log_start).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for change in store.log.iter().skip(start) {
        st.pos += 1;
        if change.rv <= st.since
            || change.resource != st.key
            || st
                .target
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != change.namespace)
            || !selector_matches(&st.selector, change.obj.labels())
        {
            continue;
        }
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(change.kind.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(&change.obj.json);
        out.extend_from_slice(b"}\n");
        if out.len() > 1 << 20 {
            break;
        }
    }
    ((!out.is_empty()).then_some(out), store.rv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_the_api_server() {
        let t = Target::parse("/api/v1/namespaces/ns/pods/p").expect("parses");
        assert_eq!(
            (
                t.namespace.as_deref(),
                t.resource.as_str(),
                t.name.as_deref()
            ),
            (Some("ns"), "pods", Some("p"))
        );
        let t = Target::parse("/api/v1/namespaces/ns").expect("parses");
        assert_eq!(
            (t.resource.as_str(), t.name.as_deref()),
            ("namespaces", Some("ns"))
        );
        let t = Target::parse("/apis/atelier.dev/v1alpha1/namespaces/a/workspaces/w/status")
            .expect("parses");
        assert_eq!(t.key(), "atelier.dev/v1alpha1/workspaces");
        assert_eq!(t.subresource.as_deref(), Some("status"));
    }

    #[test]
    fn json_patch_tests_adds_and_removes_finalizers() {
        let mut v = json!({"metadata": {"name": "a"}});
        let add = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]},
        ]);
        json_patch(&mut v, &add).expect("applies");
        assert_eq!(v["metadata"]["finalizers"], json!(["f"]));
        assert!(json_patch(&mut v, &add).is_err(), "the test op fails now");
        let remove = json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "f"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ]);
        json_patch(&mut v, &remove).expect("applies");
        assert_eq!(v["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn selectors() {
        let labels = json!({"a": "1", "b": "2"});
        let l = labels.as_object();
        assert!(selector_matches("a=1,b==2", l));
        assert!(selector_matches("a!=2,b", l));
        assert!(!selector_matches("c", l));
        assert!(selector_matches("!c", l));
        assert!(!selector_matches("a=2", l));
    }
}
