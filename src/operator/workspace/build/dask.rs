//! A workspace's Dask cluster on Kubernetes: a dask-kubernetes `DaskCluster`, its
//! `DaskAutoscaler` and a NetworkPolicy admitting the workspace to it. Pure, like the rest of
//! [`super`].
//!
//! Following dask-kubernetes 2026.3.0 (`dask_kubernetes/operator/kubecluster/kubecluster.py`,
//! `make_scheduler_spec` and `make_worker_spec`; `operator/controller/controller.py`):
//! - the scheduler runs `dask scheduler` with ports `tcp-comm` (8786) and `http-dashboard`
//!   (8787), ready when `<dashboard prefix>/health` answers; its Service selects
//!   `dask.org/cluster-name: <name>`, `dask.org/component: scheduler` and names its ports as
//!   the operator looks them up (`get_scheduler_address(..., port_name="http-dashboard")`);
//! - the dashboard is served under the workspace's URL prefix (`--dashboard-prefix
//!   <prefix>dask`), so that the hub's proxy forwards `/user/<u>/[<s>/]dask/...` unchanged to
//!   `status.dask.dashboardTarget`;
//! - each worker runs `dask worker --name $(DASK_WORKER_NAME)` (the operator sets
//!   `DASK_WORKER_NAME` and `DASK_SCHEDULER_ADDRESS` in every worker container,
//!   `build_worker_deployment_spec`) with `--nthreads` and `--memory-limit` from its resources;
//! - the operator copies the DaskCluster's labels onto the Deployments and pods it makes
//!   (`_get_labels`): the cluster carries [`dask_labels`], the workspace's labels without
//!   `app.kubernetes.io/instance`, so that the workspace's Service and NetworkPolicy, which
//!   select on it, never select a Dask pod, while the Workspace label indexes them in the
//!   operator's pod cache.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec, Probe, ResourceRequirements,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    container_security_context, data_env, data_volumes, hub_and_proxy_peers, irods_init_container,
    labels, owner_reference, placed_pod_spec, plain, selector_labels, service_prefix,
};
use crate::config::OperatorConfig;
use crate::operator::workspace::dask::{
    DaskAutoscaler, DaskAutoscalerSpec, DaskCluster, DaskClusterSpec, DaskScheduler, DaskWorker,
};
use crate::policy::workspace::{ValidatedDask, ValidatedWorkspace};
use crate::policy::{names, parse_bytes, parse_cpu_millis};

/// The scheduler's port for clients and workers (dask-kubernetes' name `tcp-comm`).
pub const SCHEDULER_PORT: i32 = 8786;
/// The scheduler's dashboard port (dask-kubernetes' name `http-dashboard`).
pub const DASHBOARD_PORT: i32 = 8787;
/// A worker's own dashboard port (dask-kubernetes `make_worker_spec`).
pub const WORKER_DASHBOARD_PORT: i32 = 8788;
/// Name of the scheduler's comm port (container and Service).
pub const COMM_PORT_NAME: &str = "tcp-comm";
/// Name of the dashboard port (container and Service).
pub const DASHBOARD_PORT_NAME: &str = "http-dashboard";
/// `app.kubernetes.io/component` of a workspace's Dask objects.
pub const DASK_COMPONENT: &str = "dask";
/// Label the dask-kubernetes operator puts on every object of a cluster.
pub const CLUSTER_NAME_LABEL: &str = "dask.org/cluster-name";
/// Label of a cluster's scheduler and workers: `scheduler` or `worker`.
pub const COMPONENT_LABEL: &str = "dask.org/component";
/// Name of the scheduler's and of a worker's container.
pub const SCHEDULER_CONTAINER: &str = "scheduler";
/// Name of a worker's container.
pub const WORKER_CONTAINER: &str = "worker";

/// A workspace's Dask objects, applied in this order.
#[derive(Clone, Debug, PartialEq)]
pub struct DaskResources {
    /// Admits the cluster's own pods, the workspace's pod and the hub's proxy (dashboard).
    pub network_policy: NetworkPolicy,
    /// The cluster.
    pub cluster: DaskCluster,
    /// Its autoscaler.
    pub autoscaler: DaskAutoscaler,
}

/// The labels of a workspace's Dask objects: [`labels`] without `app.kubernetes.io/instance`
/// (see the module documentation), component [`DASK_COMPONENT`].
pub fn dask_labels(v: &ValidatedWorkspace) -> BTreeMap<String, String> {
    let mut l = labels(v);
    l.remove("app.kubernetes.io/instance");
    l.insert(
        "app.kubernetes.io/component".to_owned(),
        DASK_COMPONENT.to_owned(),
    );
    l
}

/// `tcp://<cluster>-scheduler.<ns>.svc.cluster.local:8786`, the address dask-kubernetes gives
/// its own workers (`build_worker_deployment_spec`).
pub fn scheduler_address(v: &ValidatedWorkspace) -> String {
    format!("tcp://{}:{SCHEDULER_PORT}", scheduler_host(v))
}

fn scheduler_host(v: &ValidatedWorkspace) -> String {
    format!(
        "{}-scheduler.{}.svc.cluster.local",
        names::dask_cluster_name(&v.name),
        v.namespace
    )
}

/// Where the hub's proxy reaches the dashboard: `http://<cluster>-scheduler.<ns>.svc.cluster.local:8787`.
pub fn dashboard_target(v: &ValidatedWorkspace) -> String {
    format!("http://{}:{DASHBOARD_PORT}", scheduler_host(v))
}

/// The dashboard's path prefix: the workspace's URL prefix and `dask` (`/user/alice/dask`).
pub fn dashboard_prefix(v: &ValidatedWorkspace) -> String {
    format!("{}dask", service_prefix(&v.user, &v.server_name))
}

/// The dashboard through the hub's proxy: `<prefix>dask/status`.
pub fn dashboard_url(v: &ValidatedWorkspace) -> String {
    format!("{}/status", dashboard_prefix(v))
}

/// The workspace pod's variables for its cluster (none without one): `DASK_SCHEDULER_ADDRESS`
/// (what `distributed.Client()` connects to without an argument) and
/// `DASK_DISTRIBUTED__DASHBOARD__LINK` (Dask's `distributed.dashboard.link`: the link a
/// `Client` shows, and what dask-labextension's search button reads from a kernel's client to
/// point the lab's Dask tab at the dashboard).
pub fn workspace_dask_env(v: &ValidatedWorkspace) -> Vec<EnvVar> {
    if v.dask.is_none() {
        return Vec::new();
    }
    vec![
        plain("DASK_DISTRIBUTED__DASHBOARD__LINK", dashboard_url(v)),
        plain("DASK_SCHEDULER_ADDRESS", scheduler_address(v)),
    ]
}

/// The Dask objects of `v`, `None` when it has no cluster (`csi_drivers`: as for
/// [`super::build_with`], so that the workers mount the data sources as the server does).
pub fn build_dask(
    v: &ValidatedWorkspace,
    cfg: &OperatorConfig,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> Option<DaskResources> {
    let dask = v.dask.as_ref()?;
    let name = names::dask_cluster_name(&v.name);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(v.namespace.clone()),
        labels: Some(dask_labels(v)),
        owner_references: Some(vec![owner_reference(v)]),
        ..ObjectMeta::default()
    };
    let cluster = DaskCluster {
        metadata: meta.clone(),
        spec: DaskClusterSpec {
            idle_timeout: idle_timeout(dask),
            scheduler: DaskScheduler {
                spec: scheduler_pod(v, dask, cfg),
                service: scheduler_service(&name),
            },
            worker: DaskWorker {
                replicas: dask.min,
                spec: worker_pod(v, dask, cfg, csi_drivers),
            },
        },
        status: None,
    };
    let autoscaler = DaskAutoscaler {
        metadata: meta.clone(),
        spec: DaskAutoscalerSpec {
            cluster: name.clone(),
            minimum: dask.min,
            maximum: dask.workers,
        },
    };
    Some(DaskResources {
        network_policy: network_policy(v, cfg, meta, &name),
        cluster,
        autoscaler,
    })
}

/// The DaskCluster's `spec.idleTimeout`: the workspace's `idleTimeoutSeconds` when positive.
/// The dask-kubernetes operator deletes a cluster whose scheduler stayed idle that long
/// (`daskcluster_autoshutdown`); the Workspace controller then records the stop instead of
/// making the cluster again (`reconcile::dask`, reason `DaskIdle`).
pub fn idle_timeout(dask: &ValidatedDask) -> Option<i64> {
    dask.idle_timeout_seconds.filter(|s| *s > 0)
}

fn resources(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ])
}

/// The pod fields both the scheduler and the workers have: the workers' pool (node selector,
/// tolerations, affinity, priority class) and the server's non-root security context.
fn pod_base(dask: &ValidatedDask, cfg: &OperatorConfig) -> PodSpec {
    placed_pod_spec(&dask.pool, cfg)
}

/// The scheduler: `dask scheduler` on the workers' image and pool, with a worker's CPU and
/// memory (no GPU), the dashboard under [`dashboard_prefix`]. No idle timeout of its own: the
/// scheduler would exit and its Deployment start it again; the cluster's `idleTimeout` has the
/// dask-kubernetes operator delete the whole cluster instead ([`idle_timeout`]).
fn scheduler_pod(v: &ValidatedWorkspace, dask: &ValidatedDask, cfg: &OperatorConfig) -> PodSpec {
    let prefix = dashboard_prefix(v);
    let limits = resources(&dask.resources.cpu, &dask.resources.memory);
    let health = |initial: i32, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(format!("{prefix}/health")),
            port: IntOrString::String(DASHBOARD_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let container = Container {
        name: SCHEDULER_CONTAINER.to_owned(),
        image: Some(dask.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(vec![
            "dask".to_owned(),
            "scheduler".to_owned(),
            "--host=0.0.0.0".to_owned(),
            format!("--port={SCHEDULER_PORT}"),
            format!("--dashboard-address=:{DASHBOARD_PORT}"),
            format!("--dashboard-prefix={prefix}"),
        ]),
        ports: Some(vec![
            port(COMM_PORT_NAME, SCHEDULER_PORT),
            port(DASHBOARD_PORT_NAME, DASHBOARD_PORT),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        readiness_probe: Some(health(0, 2)),
        liveness_probe: Some(health(15, 20)),
        ..Container::default()
    };
    PodSpec {
        containers: vec![container],
        ..pod_base(dask, cfg)
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// The scheduler's Service: ClusterIP, the named ports, the operator's selector.
fn scheduler_service(cluster: &str) -> ServiceSpec {
    let service_port = |name: &str, number: i32| ServicePort {
        name: Some(name.to_owned()),
        port: number,
        // A name: the API server refuses the operator's Service with a digit string.
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    ServiceSpec {
        type_: Some("ClusterIP".to_owned()),
        selector: Some(BTreeMap::from([
            (CLUSTER_NAME_LABEL.to_owned(), cluster.to_owned()),
            (COMPONENT_LABEL.to_owned(), "scheduler".to_owned()),
        ])),
        ports: Some(vec![
            service_port(COMM_PORT_NAME, SCHEDULER_PORT),
            service_port(DASHBOARD_PORT_NAME, DASHBOARD_PORT),
        ]),
        ..ServiceSpec::default()
    }
}

/// A worker: `dask worker` with the worker's resources (requests = limits, GPUs as the pool's
/// `gpu_resource_name`), the data sources' variables and volumes as the server has them (and
/// the iRODS init container with an irods source), no home volume (ReadWriteOnce).
fn worker_pod(
    v: &ValidatedWorkspace,
    dask: &ValidatedDask,
    cfg: &OperatorConfig,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> PodSpec {
    let r = &dask.resources;
    let mut limits = resources(&r.cpu, &r.memory);
    let init_resources = limits.clone();
    if r.gpus > 0
        && let Some(gpu) = &dask.pool.gpu_resource_name
    {
        limits.insert(gpu.clone(), Quantity(r.gpus.to_string()));
    }
    let threads = parse_cpu_millis(&r.cpu).map_or(1, |m| (m / 1000).max(1));
    let mut args = vec![
        "dask".to_owned(),
        "worker".to_owned(),
        "--name=$(DASK_WORKER_NAME)".to_owned(),
        format!("--nthreads={threads}"),
        format!("--dashboard-address=:{WORKER_DASHBOARD_PORT}"),
    ];
    if let Ok(bytes) = parse_bytes(&r.memory) {
        args.push(format!("--memory-limit={bytes}"));
    }
    let (volumes, mounts) = data_volumes(v, csi_drivers);
    let env = data_env(v);
    let container = Container {
        name: WORKER_CONTAINER.to_owned(),
        image: Some(dask.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![port(DASHBOARD_PORT_NAME, WORKER_DASHBOARD_PORT)]),
        resources: Some(ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };
    let mut init = irods_init_container(v, cfg, init_resources);
    if let Some(init) = init.as_mut() {
        init.image = Some(dask.image.clone());
    }
    PodSpec {
        init_containers: init.map(|c| vec![c]),
        containers: vec![container],
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..pod_base(dask, cfg)
    }
}

/// Ingress to the cluster's pods (`dask.org/cluster-name`): from each other (scheduler and
/// workers talk both ways, on ports that change), from the workspace's pod to the scheduler's
/// two ports, and from the hub and the proxy to the dashboard. Needed where a default-deny
/// policy holds (the per-user namespaces' `atelier-default`).
fn network_policy(
    v: &ValidatedWorkspace,
    cfg: &OperatorConfig,
    meta: ObjectMeta,
    cluster: &str,
) -> NetworkPolicy {
    let selects = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    };
    let cluster_pods = selects(BTreeMap::from([(
        CLUSTER_NAME_LABEL.to_owned(),
        cluster.to_owned(),
    )]));
    let tcp = |number: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".to_owned()),
        end_port: None,
    };
    NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(cluster_pods.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(cluster_pods),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(selects(selector_labels(v))),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp(SCHEDULER_PORT), tcp(DASHBOARD_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(hub_and_proxy_peers(cfg)),
                    ports: Some(vec![tcp(DASHBOARD_PORT)]),
                },
            ]),
            egress: None,
        }),
    }
}

#[cfg(test)]
#[path = "dask_tests.rs"]
mod tests;
