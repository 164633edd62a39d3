//! Test fixtures of the Workspace controller: the YAML resources of
//! `tests/fixtures/reconcile/`, a [`Context`] on a mocked API server whose caches hold a
//! [`Cluster`], and an [`ApiServerVerifier`] that asserts every request of a scenario, in
//! order, and answers it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota,
    Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::cache::{CacheWriters, Cached, CompactWriter, Compactable};
use super::reconcile::{observe_usage, reconcile_workspace, with_applied_hash};
use super::{
    Dereferenced, FIELD_MANAGER, GROUPS_ANNOTATION, ValidatedWorkspace, WORKSPACE_FINALIZER,
    WorkspaceResources, build, parse_groups,
};
use crate::api::v1alpha1::{DataSource, NodePool, Workspace, WorkspaceProfile};
use crate::config::OperatorConfig;
use crate::operator::metrics::Metrics;
use crate::operator::{Context, Error};
use crate::policy::workspace::validate;

/// Bound of each scenario: a missing request fails the test instead of hanging it.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(10);

/// Namespace of the scenario Workspace.
pub const NS: &str = "team";

fn yaml<T: DeserializeOwned>(text: &str) -> T {
    let value: Value = serde_saphyr::from_str(text).expect("fixture is YAML");
    serde_json::from_value(value).expect("fixture has the right shape")
}

/// The scenario Workspace (`team/alice`, profile `jupyter`, data source `era5`), finalized.
pub fn workspace() -> Workspace {
    yaml(include_str!(
        "../../../tests/fixtures/reconcile/workspace.yaml"
    ))
}

/// The `jupyter` profile (home volumes kept).
pub fn profile() -> WorkspaceProfile {
    yaml(include_str!(
        "../../../tests/fixtures/reconcile/profile.yaml"
    ))
}

/// The `interactive` pool.
pub fn pool() -> NodePool {
    yaml(include_str!(
        "../../../tests/fixtures/reconcile/nodepool.yaml"
    ))
}

/// The `era5` data source.
pub fn data_source() -> DataSource {
    yaml(include_str!(
        "../../../tests/fixtures/reconcile/datasource.yaml"
    ))
}

/// The `argo` data source: S3 through csi-s3, group credentials `argo-climate` (group
/// `climate`), mount Secret `argo-mount`.
pub fn s3_csi_data_source() -> DataSource {
    yaml(include_str!(
        "../../../tests/fixtures/reconcile/datasource-s3-csi.yaml"
    ))
}

/// A pod status reported by the kubelet, from a fixture (`pod-*.yaml`), merged into `pod`.
pub fn with_pod_status(mut pod: Pod, fixture: &str) -> Pod {
    let text = match fixture {
        "image-pull-backoff" => {
            include_str!("../../../tests/fixtures/reconcile/pod-image-pull-backoff.yaml")
        }
        "running" => include_str!("../../../tests/fixtures/reconcile/pod-running.yaml"),
        other => panic!("no pod fixture {other}"),
    };
    let patch: Pod = yaml(text);
    pod.status = patch.status;
    pod
}

/// What `dereference` reads for `ws` from the fixtures.
pub fn inputs(ws: &Workspace, token: &str) -> Dereferenced {
    Dereferenced {
        profile: Some(profile()),
        pools: vec![pool()],
        data_sources: vec![data_source()],
        groups: parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str)),
        token: token.to_owned(),
        credential_secrets: None,
        csi_drivers: None,
        unreachable: Default::default(),
    }
}

/// A credentials Secret `namespace/name` as the metadata watch shows it.
pub fn credentials_secret(namespace: &str, name: &str) -> PartialObjectMeta<Secret> {
    let mut meta = PartialObjectMeta::<Secret>::default();
    meta.metadata.namespace = Some(namespace.to_owned());
    meta.metadata.name = Some(name.to_owned());
    meta.metadata.labels = Some(BTreeMap::from([(
        "atelier.dev/credentials".to_owned(),
        "true".to_owned(),
    )]));
    meta
}

/// A CSIDriver `name` listing `modes` (none: `volumeLifecycleModes` unset).
pub fn csi_driver(name: &str, modes: &[&str]) -> CSIDriver {
    let mut driver = CSIDriver::default();
    driver.metadata.name = Some(name.to_owned());
    driver.spec.volume_lifecycle_modes =
        (!modes.is_empty()).then(|| modes.iter().map(|m| (*m).to_owned()).collect());
    driver
}

/// What the real `validate` makes of `ws` with `token` (panics on a refusal).
pub fn validated(ws: &Workspace, token: &str, cfg: &OperatorConfig) -> ValidatedWorkspace {
    validate::validate(ws, &inputs(ws, token), cfg)
        .unwrap_or_else(|r| panic!("the fixture is valid, got {r:?}"))
}

/// The children the real `validate` + `build` make of `ws` with `token` (panics on a refusal).
pub fn desired(ws: &Workspace, token: &str, cfg: &OperatorConfig) -> WorkspaceResources {
    build::build(&validated(ws, token, cfg), cfg)
}

/// The catalogue ConfigMap the real `validate` + `build` make of `ws` (the fixtures' data
/// source `era5`; panics on a refusal or without a data source).
pub fn catalog(ws: &Workspace) -> ConfigMap {
    let v = validated(ws, "unused", &OperatorConfig::default());
    build::build_catalog_config_map(&v).expect("the Workspace names a data source")
}

/// An object as applied: with its hash annotation, as JSON.
pub fn applied<K>(object: &K) -> Value
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let (applied, _) = with_applied_hash(object).expect("serializes");
    serde_json::to_value(applied).expect("serializes")
}

/// An object as the API server returns it after an apply: hashed, with a UID.
pub fn observed<K>(object: &K) -> K
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let (mut applied, _) = with_applied_hash(object).expect("serializes");
    applied.meta_mut().uid = Some(format!("uid-{}", object.name_any()));
    applied
}

/// A test context on a mocked API server, with a deterministic Event reporter and empty caches
/// that are not synced (the controller test feeds them).
pub fn test_context(config: OperatorConfig) -> (Arc<Context>, ApiServerVerifier) {
    probing_context(config, false)
}

/// [`test_context`] that probes the data sources' endpoints (`probing`) as the operator does.
pub fn probing_context(config: OperatorConfig, probing: bool) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let reporter = Reporter {
        controller: "atelier.dev/workspace-controller".into(),
        instance: None,
    };
    let mut ctx = Context::new(client, config, reporter, Arc::new(Metrics::default()));
    // The fixtures' data sources name endpoints that do not exist: only a scenario that sets
    // its own probes them.
    if !probing {
        ctx.probes = None;
    }
    (Arc::new(ctx), ApiServerVerifier(handle))
}

/// What the informer caches of a scenario hold (each list as the API server would list it).
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Workspaces.
    pub workspaces: Vec<Workspace>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Services.
    pub services: Vec<Service>,
    /// Secrets.
    pub secrets: Vec<Secret>,
    /// NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
    /// PersistentVolumeClaims.
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// WorkspaceProfiles.
    pub profiles: Vec<WorkspaceProfile>,
    /// NodePools.
    pub pools: Vec<NodePool>,
    /// DataSources.
    pub data_sources: Vec<DataSource>,
    /// The data sources' PersistentVolumes.
    pub persistent_volumes: Vec<PersistentVolume>,
    /// The catalogue ConfigMaps.
    pub config_maps: Vec<ConfigMap>,
    /// CSIDrivers.
    pub csi_drivers: Vec<CSIDriver>,
    /// The credentials Secrets (as the metadata watch shows them).
    pub credentials: Vec<PartialObjectMeta<Secret>>,
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// ResourceQuotas.
    pub resource_quotas: Vec<ResourceQuota>,
    /// LimitRanges.
    pub limit_ranges: Vec<LimitRange>,
}

impl Cluster {
    /// The inputs of the fixtures: the `jupyter` profile, the `interactive` pool, `era5`.
    pub fn inputs() -> Cluster {
        Cluster {
            profiles: vec![profile()],
            pools: vec![pool()],
            data_sources: vec![data_source()],
            ..Cluster::default()
        }
    }
}

/// A store's writer, of kube's reflector or [`Compact`](super::cache::Compact).
pub trait Feed<K> {
    /// Applies one watch event.
    fn feed(&mut self, event: &watcher::Event<K>);
}

impl<K: Cached<DynamicType = ()> + Clone> Feed<K> for Writer<K> {
    fn feed(&mut self, event: &watcher::Event<K>) {
        self.apply_watcher_event(&event.clone().modify(K::keep));
    }
}

impl<K: Compactable> Feed<K> for CompactWriter<K> {
    fn feed(&mut self, event: &watcher::Event<K>) {
        self.apply_watcher_event(event);
    }
}

/// Feeds `objects` to a store as one complete list (`Init`, `InitApply`s, `InitDone`), kept as
/// the controller keeps them.
pub fn list_into<K>(writer: &mut impl Feed<K>, objects: Vec<K>) {
    let events = std::iter::once(watcher::Event::Init)
        .chain(objects.into_iter().map(watcher::Event::InitApply))
        .chain(std::iter::once(watcher::Event::InitDone));
    for event in events {
        writer.feed(&event);
    }
}

/// Fills the caches of `ctx` with `cluster` (every store synced) and the usage index with its
/// Workspaces, as the controller's watches would; returns the writers for later events.
pub fn seed(ctx: &Context, cluster: Cluster) -> CacheWriters {
    let mut w = ctx
        .take_cache_writers()
        .expect("the caches are not fed yet");
    let mut relisted = None;
    list_into(&mut w.workspaces, cluster.workspaces.clone());
    list_into(&mut w.pods, cluster.pods);
    list_into(&mut w.services, cluster.services);
    list_into(&mut w.secrets, cluster.secrets);
    list_into(&mut w.network_policies, cluster.network_policies);
    list_into(&mut w.pvcs, cluster.pvcs);
    list_into(&mut w.profiles, cluster.profiles);
    list_into(&mut w.pools, cluster.pools);
    list_into(&mut w.data_sources, cluster.data_sources);
    list_into(&mut w.persistent_volumes, cluster.persistent_volumes);
    list_into(&mut w.config_maps, cluster.config_maps);
    list_into(&mut w.csi_drivers, cluster.csi_drivers);
    list_into(&mut w.credentials, cluster.credentials);
    list_into(&mut w.namespaces, cluster.namespaces);
    list_into(&mut w.resource_quotas, cluster.resource_quotas);
    list_into(&mut w.limit_ranges, cluster.limit_ranges);
    ctx.caches.mark_workspaces_listed();
    // The usage estimates read the cached profiles and pools: the Workspaces come last.
    for event in std::iter::once(watcher::Event::Init)
        .chain(
            cluster
                .workspaces
                .into_iter()
                .map(watcher::Event::InitApply),
        )
        .chain(std::iter::once(watcher::Event::InitDone))
    {
        observe_usage(ctx, &event, &mut relisted);
    }
    w
}

/// [`test_context`] whose caches hold `cluster`.
pub fn seeded_context(
    config: OperatorConfig,
    cluster: Cluster,
) -> (Arc<Context>, ApiServerVerifier, CacheWriters) {
    let (ctx, verifier) = test_context(config);
    let writers = seed(&ctx, cluster);
    (ctx, verifier, writers)
}

/// [`seeded_context`] that probes the data sources' endpoints.
pub fn seeded_probing_context(
    config: OperatorConfig,
    cluster: Cluster,
) -> (Arc<Context>, ApiServerVerifier, CacheWriters) {
    let (ctx, verifier) = probing_context(config, true);
    let writers = seed(&ctx, cluster);
    (ctx, verifier, writers)
}

type Check = Box<dyn FnOnce(&Value) + Send>;
type Reply = Box<dyn FnOnce(&Value) -> (StatusCode, Value) + Send>;

/// One expected request and its answer.
pub struct Step {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    check: Check,
    reply: Reply,
}

/// A request the verifier saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
}

impl Seen {
    /// Whether the request changes anything.
    pub fn is_write(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD)
    }

    /// `METHOD /path`, without the query: how the scenarios' request logs read.
    pub fn line(&self) -> String {
        format!(
            "{} {}",
            self.method,
            self.uri.split('?').next().unwrap_or_default()
        )
    }
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": format!("{reason} (scenario)"),
        "reason": reason,
        "code": code,
    })
}

fn apply_query() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("fieldManager".to_owned(), FIELD_MANAGER.to_owned()),
        ("force".to_owned(), "true".to_owned()),
    ])
}

impl Step {
    /// `method path`, answered 200 with `{}` (see [`Step::reply`], [`Step::echo`]).
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Step {
            method,
            path: path.into(),
            query: BTreeMap::new(),
            check: Box::new(|_| {}),
            reply: Box::new(|_| (StatusCode::OK, json!({}))),
        }
    }

    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Self {
        Step::new(Method::GET, path)
    }

    /// `GET path` of a collection, with an optional label selector.
    pub fn list(path: impl Into<String>, selector: Option<&str>) -> Self {
        let mut step = Step::new(Method::GET, path);
        if let Some(selector) = selector {
            step.query
                .insert("labelSelector".to_owned(), selector.to_owned());
        }
        step.reply(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}))
    }

    /// A server-side apply of exactly `expected` (fieldManager and force asserted), answered
    /// with the body.
    pub fn apply(path: impl Into<String>, expected: Value) -> Self {
        Step::apply_checked(path, move |body| assert_json_eq(body, &expected))
    }

    /// A server-side apply (fieldManager and force asserted) whose body `check` asserts,
    /// answered with the body.
    pub fn apply_checked(
        path: impl Into<String>,
        check: impl FnOnce(&Value) + Send + 'static,
    ) -> Self {
        let mut step = Step::new(Method::PATCH, path);
        step.query = apply_query();
        step.check = Box::new(check);
        step.reply = Box::new(|body| (StatusCode::OK, body.clone()));
        step
    }

    /// A server-side apply of the status subresource, checked by `check`, answered with `ws`
    /// carrying the new status.
    pub fn apply_status(ws: &Workspace, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        let path = format!(
            "/apis/atelier.dev/v1alpha1/namespaces/{}/workspaces/{}/status",
            ws.namespace().unwrap_or_default(),
            ws.name_any()
        );
        let mut step = Step::new(Method::PATCH, path);
        step.query = apply_query();
        step.check = Box::new(move |body| {
            assert_eq!(body["apiVersion"], "atelier.dev/v1alpha1");
            assert_eq!(body["kind"], "Workspace");
            check(body)
        });
        let ws = serde_json::to_value(ws).expect("serializes");
        step.reply = Box::new(move |body| {
            let mut ws = ws;
            ws["status"] = body["status"].clone();
            (StatusCode::OK, ws)
        });
        step
    }

    /// `DELETE path`, answered with `object` (still terminating) or a Success status (gone).
    pub fn delete(path: impl Into<String>, terminating: Option<Value>) -> Self {
        Step::new(Method::DELETE, path).reply(terminating.unwrap_or_else(
            || json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success"}),
        ))
    }

    /// The JSON patch of `kube::runtime::finalizer` adding the finalizer to a Workspace without
    /// finalizers, answered with `ws` finalized.
    pub fn add_finalizer(ws: &Workspace) -> Self {
        let mut step = Step::new(Method::PATCH, workspace_path(ws));
        step.check = Box::new(|body| {
            assert_json_eq(
                body,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [WORKSPACE_FINALIZER]},
                ]),
            )
        });
        let mut finalized = ws.clone();
        finalized.finalizers_mut().push(WORKSPACE_FINALIZER.into());
        step.reply(serde_json::to_value(finalized).expect("serializes"))
    }

    /// The JSON patch of `kube::runtime::finalizer` removing the (first) finalizer.
    pub fn remove_finalizer(ws: &Workspace) -> Self {
        let mut step = Step::new(Method::PATCH, workspace_path(ws));
        step.check = Box::new(|body| {
            assert_json_eq(
                body,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers/0", "value": WORKSPACE_FINALIZER},
                    {"op": "remove", "path": "/metadata/finalizers/0"},
                ]),
            )
        });
        let mut done = ws.clone();
        done.metadata.finalizers = None;
        step.reply(serde_json::to_value(done).expect("serializes"))
    }

    /// An Event about `ws` (events.k8s.io/v1), checked by `check`, echoed back.
    pub fn event(ws: &Workspace, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        let path = format!(
            "/apis/events.k8s.io/v1/namespaces/{}/events",
            ws.namespace().unwrap_or_default()
        );
        let name = ws.name_any();
        let mut step = Step::new(Method::POST, path);
        step.check = Box::new(move |body| {
            assert_eq!(body["regarding"]["kind"], "Workspace");
            assert_eq!(body["regarding"]["name"], name.as_str());
            assert_eq!(
                body["reportingController"],
                "atelier.dev/workspace-controller"
            );
            check(body)
        });
        step.reply = Box::new(|body| (StatusCode::CREATED, body.clone()));
        step
    }

    /// Expects `key=value` in the query.
    pub fn with_query(mut self, key: &str, value: &str) -> Self {
        self.query.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Answers 201 with the request's body (a creation).
    pub fn echo(mut self) -> Self {
        self.reply = Box::new(|body| (StatusCode::CREATED, body.clone()));
        self
    }

    /// Answers with `body` (200).
    pub fn reply(mut self, body: Value) -> Self {
        self.reply = Box::new(move |_| (StatusCode::OK, body));
        self
    }

    /// Answers with a list of `items`.
    pub fn items<T: Serialize>(self, items: &[T]) -> Self {
        let items: Vec<Value> = items
            .iter()
            .map(|i| serde_json::to_value(i).expect("serializes"))
            .collect();
        self.reply(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}))
    }

    /// Answers with `object` (200).
    pub fn object<T: Serialize>(self, object: &T) -> Self {
        self.reply(serde_json::to_value(object).expect("serializes"))
    }

    /// Answers 404 NotFound.
    pub fn not_found(mut self) -> Self {
        self.reply = Box::new(|_| (StatusCode::NOT_FOUND, status_body(404, "NotFound")));
        self
    }

    /// Answers with an error status `code`.
    pub fn fail(mut self, code: u16) -> Self {
        self.reply = Box::new(move |_| {
            (
                StatusCode::from_u16(code).expect("a status code"),
                status_body(code, "InternalError"),
            )
        });
        self
    }

    /// Answers `code` with `status`, a `Status` object as the API server sends it.
    pub fn refuse(mut self, code: u16, status: Value) -> Self {
        self.reply =
            Box::new(move |_| (StatusCode::from_u16(code).expect("a status code"), status));
        self
    }

    /// Adds a check of the request body.
    pub fn check(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        let first = self.check;
        self.check = Box::new(move |body| {
            first(body);
            check(body)
        });
        self
    }
}

/// `/apis/atelier.dev/v1alpha1/namespaces/<ns>/workspaces/<name>`.
pub fn workspace_path(ws: &Workspace) -> String {
    format!(
        "/apis/atelier.dev/v1alpha1/namespaces/{}/workspaces/{}",
        ws.namespace().unwrap_or_default(),
        ws.name_any()
    )
}

pub use crate::rbac::testing::{assert_granted_to, assert_json_eq, json_body, parse_query};

/// Asserts that the chart's RBAC, as [`crate::rbac::CALLS`] describes it, lets the operator
/// make `request` (a new call without its row in the table fails every scenario making it).
pub fn assert_granted(request: &Request<Body>) {
    assert_granted_to(crate::rbac::Component::Operator, request)
}

/// Answers the mocked API server's requests, asserting each against the scenario.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// The raw mock handle, for tests that answer requests themselves.
    pub fn into_handle(self) -> Handle<Request<Body>, Response<Body>> {
        self.0
    }

    /// Serves `steps` in order, then asserts that no request follows (the client must be
    /// dropped for this to finish). Returns every request seen.
    pub async fn run(self, steps: Vec<Step>) -> Vec<Seen> {
        let mut handle = self.0;
        let mut seen = Vec::new();
        let total = steps.len();
        for (i, step) in steps.into_iter().enumerate() {
            let Some((request, send)) = handle.next_request().await else {
                panic!(
                    "step {}/{total}: expected {} {} but the reconciler sent nothing more; seen: {seen:#?}",
                    i + 1,
                    step.method,
                    step.path
                );
            };
            let uri = request.uri().clone();
            let method = request.method().clone();
            assert_granted(&request);
            seen.push(Seen {
                method: method.clone(),
                uri: uri.to_string(),
            });
            assert_eq!(
                (&method, uri.path()),
                (&step.method, step.path.as_str()),
                "step {}/{total}: method and path",
                i + 1
            );
            assert_eq!(
                parse_query(uri.query()),
                step.query,
                "step {}/{total}: query of {method} {uri}",
                i + 1
            );
            let body: Value = json_body(request).await;
            (step.check)(&body);
            let (code, reply) = (step.reply)(&body);
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).expect("serializes")))
                .expect("a response");
            send.send_response(response);
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!(
                "unexpected request after the scenario: {} {}; seen: {seen:#?}",
                request.method(),
                request.uri()
            );
        }
        seen
    }
}

/// What a scenario produced.
#[derive(Debug)]
pub struct Outcome {
    /// What the reconciler returned.
    pub result: Result<Action, Error>,
    /// Every request, in order.
    pub seen: Vec<Seen>,
}

impl Outcome {
    /// The writes among the requests.
    pub fn writes(&self) -> Vec<&Seen> {
        self.seen.iter().filter(|s| s.is_write()).collect()
    }
}

/// Reconciles `ws` once against `steps`, bounded by [`SCENARIO_TIMEOUT`]. `after` runs with the
/// context once the reconciler returned (e.g. to call `error_policy`); then the context is
/// dropped and the verifier asserts that nothing else was sent.
pub async fn run_scenario(
    ctx: Arc<Context>,
    verifier: ApiServerVerifier,
    ws: Workspace,
    steps: Vec<Step>,
    after: impl FnOnce(&Arc<Context>, &Result<Action, Error>),
) -> Outcome {
    let server = tokio::spawn(verifier.run(steps));
    let result = tokio::time::timeout(
        SCENARIO_TIMEOUT,
        reconcile_workspace(Arc::new(ws), ctx.clone()),
    )
    .await
    .expect("the reconciler finished in time (a request may be missing)");
    after(&ctx, &result);
    drop(ctx);
    let seen = match tokio::time::timeout(SCENARIO_TIMEOUT, server)
        .await
        .expect("the verifier finished in time")
    {
        Ok(seen) => seen,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    Outcome { result, seen }
}
