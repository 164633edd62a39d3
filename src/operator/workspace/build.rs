//! Pure builders: a [`ValidatedWorkspace`] in, Kubernetes objects out. Deterministic output.
//!
//! Every child carries the labels of [`labels`] and an owner reference to its Workspace
//! ([`owner_reference`]), except the home PVC when the profile keeps home volumes
//! (`home.onDelete: keep`): that claim must outlive the Workspace, and a data source's
//! PersistentVolume, which is cluster-scoped (see [`data_children`]). Names come from
//! [`crate::policy::names`].
//!
//! # The server's environment
//!
//! One list sorted by name. When names clash, the operator's own variables win over the data
//! sources', which win over the profile's and the workspace's `env`:
//!
//! - JupyterHub's single-user variables, as JupyterHub's `Spawner.get_env` sets them
//!   (`JUPYTERHUB_*`), with the API token as `JUPYTERHUB_API_TOKEN` and `JPY_API_TOKEN` read from
//!   the workspace's Secret (never inline); `MEM_LIMIT`, `MEM_GUARANTEE` (bytes), `CPU_LIMIT`,
//!   `CPU_GUARANTEE` (cores, `"2.0"`) as KubeSpawner sets them.
//! - Data sources: [`crate::policy::data::data_env`] (the rules both backends share, documented
//!   there), with the catalogue and the iRODS files at [`data_paths`]; a Secret's key becomes a
//!   `secretKeyRef`, never an inline value.
//!
//! # Volumes
//!
//! `home` (the home claim) first, then one volume `data-<name>` per mounted data source in name
//! order, then [`CATALOG_VOLUME`] and [`IRODS_VOLUME`]:
//! - nfs and pvc sources as such;
//! - s3 and irods sources with `csi`, as [`csi_mode`] resolves it: `Ephemeral`, an inline CSI
//!   volume; `Persistent`, the claim [`data_children`] builds (with its PersistentVolume);
//! - the Intake catalogue, the ConfigMap [`catalog_config_map_name`] mounted read-only at
//!   [`DATA_DIR`] (any data source);
//! - with an irods source, the in-memory emptyDir [`IRODS_VOLUME`] at [`IRODS_DIR`], which the init
//!   container [`IRODS_INIT_CONTAINER`] fills with the iRODS client's environment file and
//!   `.irodsA` ([`crate::policy::data::IRODS_INIT_SCRIPT`]).
//! - for a QGIS desktop (`kind: qgis`), [`DESKTOP_VOLUME`]: the seed key of the same ConfigMap
//!   (`crate::policy::desktop`) read-only at `policy::desktop::POD_DESKTOP_DIR`, with
//!   `QGIS_GLOBAL_SETTINGS_FILE` pointing at it ([`desktop_settings_path`]), whether or not the
//!   workspace has data sources.
//!
//! Mounts honour `readOnly`.
//!
//! # Data sources' other children ([`data_children`])
//!
//! Not part of [`WorkspaceResources`]: per `Persistent` CSI source a cluster-scoped
//! PersistentVolume (no owner: it is deleted by label, [`DATA_SOURCE_LABEL`] and
//! [`WORKSPACE_NAMESPACE_LABEL`]) and its claim (owned by the Workspace), and the catalogue's
//! ConfigMap (owned).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, CSIVolumeSource, Capabilities, ConfigMap, ConfigMapVolumeSource,
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    LimitRange, LimitRangeItem, LimitRangeSpec, LocalObjectReference, NFSVolumeSource, Namespace,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, Pod, PodSecurityContext, PodSpec,
    Probe, ResourceQuota, ResourceQuotaSpec, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretReference, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    PlacedPool, SERVER_LABEL, TOKEN_KEY, USER_LABEL, UserNamespaceResources, ValidatedWorkspace,
    WORKSPACE_LABEL, WorkspaceResources,
};
use crate::api::v1alpha1::{
    CsiMode, CsiSpec, DataSourceSpec, DesiredState, HomeReclaim, NodePool, PoolPurpose, SecretRef,
    WorkspaceKind,
};
use crate::config::OperatorConfig;
use crate::policy::data::{self, DataPaths, EnvValue};
use crate::policy::desktop;
use crate::policy::workspace::{EffectiveResources, HomeVolume};
use crate::policy::{
    DEFAULT_CPU, DEFAULT_MEMORY, allowed, format_bytes, format_cpu_cores, format_cpu_millis, names,
    parse_bytes, parse_cpu_millis,
};

/// `app.kubernetes.io/name` of every workspace child.
pub const APP_NAME: &str = "atelier-workspace";
/// `app.kubernetes.io/component` of every workspace child.
pub const COMPONENT: &str = "workspace";
/// `app.kubernetes.io/managed-by` of everything the operator creates.
pub const MANAGED_BY: &str = "atelier-operator";
/// Name of the server's container.
pub const CONTAINER_NAME: &str = "notebook";
/// Name of the server's port (container and Service).
pub const PORT_NAME: &str = "http";
/// Name of the home volume in the pod.
pub const HOME_VOLUME: &str = "home";
/// Seconds a stopping server gets before it is killed.
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// Name of the ResourceQuota of a per-user namespace.
pub const QUOTA_NAME: &str = "atelier-quota";
/// Name of the LimitRange of a per-user namespace.
pub const LIMIT_RANGE_NAME: &str = "atelier-limits";
/// Name of the default NetworkPolicy of a per-user namespace.
pub const USER_NETWORK_POLICY_NAME: &str = "atelier-default";

/// Label of a data source's PersistentVolume and claim: the DataSource (a label value).
pub const DATA_SOURCE_LABEL: &str = "atelier.dev/data-source";
/// Label of a data source's PersistentVolume: its Workspace's namespace (PersistentVolumes are
/// cluster-scoped, so `atelier.dev/workspace` alone does not say whose it is).
pub const WORKSPACE_NAMESPACE_LABEL: &str = "atelier.dev/workspace-namespace";
/// Annotation of a data source's PersistentVolume: the sha256 of the fields the API server
/// never lets change, of the volume or of its claim ([`volume_source_hash`]). The operator
/// compares it with the desired volume's to follow a changed DataSource: the volume, its claim
/// and the pod mounting it are deleted and made again
/// (`reconcile::apply::replace_changed_data_volumes`).
pub const VOLUME_SOURCE_ANNOTATION: &str = "atelier.dev/volume-source-hash";
/// Directory of the Intake catalogue in the pod (the ConfigMap [`catalog_config_map_name`]).
pub const DATA_DIR: &str = crate::policy::data::POD_CATALOG_DIR;
/// Key of the catalogue in its ConfigMap, and its file name under [`DATA_DIR`].
pub const CATALOG_KEY: &str = "catalog.yaml";
/// Name of the catalogue's volume in the pod.
pub const CATALOG_VOLUME: &str = "atelier-data";
/// Name of a QGIS desktop's seed volume in the pod.
pub const DESKTOP_VOLUME: &str = "atelier-desktop";
/// Directory of the iRODS client's files in the pod (an emptyDir).
pub const IRODS_DIR: &str = crate::policy::data::POD_IRODS_DIR;
/// Name of the emptyDir holding the iRODS client's files.
pub const IRODS_VOLUME: &str = "atelier-irods";
/// `sizeLimit` of [`IRODS_VOLUME`] (two small files, in memory).
pub const IRODS_VOLUME_SIZE: &str = "1Mi";
/// Name of the init container that writes the iRODS client's files.
pub const IRODS_INIT_CONTAINER: &str = "irods-env";
/// `storage` of a data source's PersistentVolume and claim when `csi.capacity` is not set
/// (both drivers ignore it; the API requires one).
pub const DEFAULT_DATA_CAPACITY: &str = "1Gi";

pub mod dask;
pub use dask::{DaskResources, build_dask};

/// Where a Kubernetes workspace finds its data files: the catalogue under [`DATA_DIR`], the
/// iRODS client's `irods_environment.json` and `.irodsA` under [`IRODS_DIR`].
pub fn data_paths() -> DataPaths {
    DataPaths {
        catalog: format!("{DATA_DIR}/{CATALOG_KEY}"),
        irods_environment: format!("{IRODS_DIR}/irods_environment.json"),
        irods_authentication: format!("{IRODS_DIR}/.irodsA"),
    }
}

/// Name of the ConfigMap holding a workspace's Intake catalogue: `ws-<workspace>-data` (hashed
/// when too long, as the other children's names).
pub fn catalog_config_map_name(workspace: &str) -> String {
    names::dns_label("ws-", workspace, "-data")
}

const API_VERSION: &str = "atelier.dev/v1alpha1";
const KIND: &str = "Workspace";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The labels of every child of the workspace.
pub fn labels(v: &ValidatedWorkspace) -> BTreeMap<String, String> {
    workspace_labels(&v.name, &v.user, &v.server_name)
}

/// The labels of Workspace `name`'s children, of `user`'s server `server` (see [`labels`]).
pub fn workspace_labels(name: &str, user: &str, server: &str) -> BTreeMap<String, String> {
    let instance = names::label_value(name);
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), instance.clone()),
        (
            "app.kubernetes.io/component".to_owned(),
            COMPONENT.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (USER_LABEL.to_owned(), names::label_value(user)),
        (SERVER_LABEL.to_owned(), names::label_value(server)),
        (WORKSPACE_LABEL.to_owned(), instance),
    ])
}

/// The labels that select the workspace's pod (Service selector, NetworkPolicy pod selector).
pub fn selector_labels(v: &ValidatedWorkspace) -> BTreeMap<String, String> {
    let instance = names::label_value(&v.name);
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), instance.clone()),
        (WORKSPACE_LABEL.to_owned(), instance),
    ])
}

/// The controller owner reference to the Workspace.
pub fn owner_reference(v: &ValidatedWorkspace) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        name: v.name.clone(),
        uid: v.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub use crate::policy::names::service_prefix;

/// The OAuth callback of a server: `<public_url>/user/<user>/[<server>/]oauth_callback`
/// (relative when `public_url` is empty), on the user's own host with a user domain
/// (`https://alice.users.example.org/user/alice/oauth_callback`), as the hub registers it.
pub fn oauth_callback_url(cfg: &OperatorConfig, user: &str, server_name: &str) -> String {
    crate::policy::names::site_oauth_callback_url(
        &cfg.public_url,
        cfg.user_domain.as_ref(),
        user,
        server_name,
    )
}

/// The in-cluster URL of the server including its prefix (what the proxy routes to, and the
/// Workspace's `status.url`): `http://ws-<name>.<namespace>.svc:<port>/user/<user>/[<server>/]`.
pub fn server_url(v: &ValidatedWorkspace, cfg: &OperatorConfig) -> String {
    format!(
        "http://{}.{}.svc:{}{}",
        names::service_name(&v.name),
        v.namespace,
        cfg.server_port,
        service_prefix(&v.user, &v.server_name)
    )
}

/// The children of one Workspace, with CSI sources in `Auto` mode attached as [`csi_mode`]
/// decides without knowing the cluster's drivers (see [`build_with`]).
pub fn build(v: &ValidatedWorkspace, cfg: &OperatorConfig) -> WorkspaceResources {
    build_with(v, cfg, None)
}

/// The children of one Workspace; `csi_drivers` are the cluster's CSIDrivers with their
/// `volumeLifecycleModes` ([`crate::policy::workspace::Dereferenced::csi_drivers`]), `None`
/// when not read. The data sources' other children: [`data_children`], with the same drivers.
pub fn build_with(
    v: &ValidatedWorkspace,
    cfg: &OperatorConfig,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> WorkspaceResources {
    let pod = match (v.desired_state, &v.pool) {
        (DesiredState::Running, Some(pool)) => Some(build_pod(v, pool, cfg, csi_drivers)),
        // Stopped; or (never produced by `validate`) running without a pool: nothing to run.
        _ => None,
    };
    WorkspaceResources {
        secret: build_secret(v),
        pvc: build_pvc(v),
        service: build_service(v, cfg),
        network_policy: build_network_policy(v, cfg),
        pod,
    }
}

fn meta(v: &ValidatedWorkspace, name: String, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels(v)),
        owner_references: owned.then(|| vec![owner_reference(v)]),
        ..ObjectMeta::default()
    }
}

/// The Secret holding the server's API token under [`TOKEN_KEY`].
pub fn build_secret(v: &ValidatedWorkspace) -> Secret {
    Secret {
        metadata: meta(v, names::secret_name(&v.name), true),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(v.token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The home PersistentVolumeClaim; owned by the Workspace only when it is deleted with it.
pub fn build_pvc(v: &ValidatedWorkspace) -> PersistentVolumeClaim {
    let owned = v.home.reclaim == HomeReclaim::Delete;
    home_claim(meta(v, v.home.claim_name.clone(), owned), &v.home)
}

/// The claim of `home` (ReadWriteOnce, its size and class) with `metadata`: a Workspace's
/// ([`build_pvc`]), or the one a BatchJob makes for a user who never started a workspace
/// (`operator::batchjob::build::build_home_claim`).
pub(crate) fn home_claim(metadata: ObjectMeta, home: &HomeVolume) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(home.size.clone()),
                )])),
                limits: None,
            }),
            storage_class_name: home.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// `spec.clusterIP` of a headless Service.
pub const HEADLESS: &str = "None";

/// The headless Service in front of the server (see [`HEADLESS`]).
pub fn build_service(v: &ValidatedWorkspace, cfg: &OperatorConfig) -> Service {
    Service {
        metadata: meta(v, names::service_name(&v.name), true),
        spec: Some(ServiceSpec {
            // Headless: no cluster IP and no kube-proxy rules per workspace (a cluster's service
            // range would run out at a few hundred workspaces). The name `<service>.<ns>.svc`
            // resolves to the pod's IP, so the URL's port is the container's port; published
            // before the pod is ready so that the name resolves as soon as the pod has an IP
            // (the hub and the proxy route to it only once the status says Running).
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(HEADLESS.to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(v)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: cfg.server_port,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The hub's and the proxy's pods, in the hub's namespace.
fn hub_and_proxy_peers(cfg: &OperatorConfig) -> Vec<NetworkPolicyPeer> {
    let namespace_selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            cfg.hub_namespace.clone(),
        )])),
        match_expressions: None,
    };
    [&cfg.hub_pod_labels, &cfg.proxy_pod_labels]
        .into_iter()
        .map(|pod_labels| NetworkPolicyPeer {
            namespace_selector: Some(namespace_selector.clone()),
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_labels.clone()),
                match_expressions: None,
            }),
            ip_block: None,
        })
        .collect()
}

/// Admits only the hub and the proxy, on the server port.
pub fn build_network_policy(v: &ValidatedWorkspace, cfg: &OperatorConfig) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(v, names::network_policy_name(&v.name), true),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(v)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(hub_and_proxy_peers(cfg)),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(cfg.server_port)),
                    protocol: Some("TCP".to_owned()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

/// The securityContext of the server's container and of the init container (and of a batch
/// job's container, `operator::batchjob::build`).
pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: None,
            drop: Some(vec!["ALL".to_owned()]),
        }),
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// What every pod the operator builds shares, placed on `pool`: restarts in place (crashes are
/// reported by the status step), no service-account token nor service links, non-root with the
/// configured uid and fsGroup and the RuntimeDefault seccomp profile, and the pool's node
/// selector, tolerations, affinity and priority class. The workspace's pod and the Dask
/// cluster's scheduler and workers add their containers and volumes.
pub(crate) fn placed_pod_spec(pool: &PlacedPool, cfg: &OperatorConfig) -> PodSpec {
    PodSpec {
        restart_policy: Some("Always".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(cfg.run_as_user),
            fs_group: Some(cfg.fs_group),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        node_selector: (!pool.node_selector.is_empty()).then(|| pool.node_selector.clone()),
        tolerations: (!pool.tolerations.is_empty()).then(|| pool.tolerations.clone()),
        affinity: pool.affinity.clone(),
        priority_class_name: pool.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// A container's requests (and limits, the same): CPU, memory and, on a pool with GPUs, the GPUs.
pub(crate) fn container_resources(
    resources: &EffectiveResources,
    pool: &PlacedPool,
) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::from([
        ("cpu".to_owned(), Quantity(resources.cpu.clone())),
        ("memory".to_owned(), Quantity(resources.memory.clone())),
    ]);
    if resources.gpus > 0
        && let Some(gpu) = &pool.gpu_resource_name
    {
        out.insert(gpu.clone(), Quantity(resources.gpus.to_string()));
    }
    out
}

/// The home volume then the data volumes, and their mounts (home first).
pub(crate) fn home_and_data_volumes(
    home: &HomeVolume,
    (data_volumes, data_mounts): (Vec<Volume>, Vec<VolumeMount>),
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: HOME_VOLUME.to_owned(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: home.claim_name.clone(),
            read_only: None,
        }),
        ..Volume::default()
    }];
    volumes.extend(data_volumes);
    let mut mounts = vec![VolumeMount {
        name: HOME_VOLUME.to_owned(),
        mount_path: home.mount_path.clone(),
        ..VolumeMount::default()
    }];
    mounts.extend(data_mounts);
    (volumes, mounts)
}

/// The server's pod on `pool` (`csi_drivers`: see [`build_with`]).
pub fn build_pod(
    v: &ValidatedWorkspace,
    pool: &PlacedPool,
    cfg: &OperatorConfig,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> Pod {
    let prefix = service_prefix(&v.user, &v.server_name);
    let mut resources = container_resources(&v.resources, pool);
    let (volumes, mounts) = home_and_data_volumes(&v.home, data_volumes(v, csi_drivers));

    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(v.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(vec!["jupyterhub-singleuser".to_owned()]),
        args: Some(vec![
            "--ip=0.0.0.0".to_owned(),
            format!("--port={}", cfg.server_port),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: cfg.server_port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(server_env(v, cfg)),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources.clone()),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(format!("{prefix}api")),
                port: IntOrString::String(PORT_NAME.to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    // The init container asks for the server's CPU and memory (never more than the pod's
    // effective request, the larger of the two), not its GPUs.
    resources.retain(|k, _| k == "cpu" || k == "memory");
    let init_containers = irods_init_container(v, cfg, resources).map(|c| vec![c]);

    Pod {
        metadata: meta(v, names::pod_name(&v.name), true),
        spec: Some(PodSpec {
            init_containers,
            containers: vec![container],
            volumes: Some(volumes),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
            ..placed_pod_spec(pool, cfg)
        }),
        status: None,
    }
}

fn plain(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn from_secret(name: impl Into<String>, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The server's environment, sorted by name (see the module documentation for precedence).
pub fn server_env(v: &ValidatedWorkspace, cfg: &OperatorConfig) -> Vec<EnvVar> {
    let mut env: BTreeMap<String, EnvVar> = BTreeMap::new();
    let mut put = |var: EnvVar| {
        env.insert(var.name.clone(), var);
    };
    for (name, value) in &v.env {
        put(plain(name, value));
    }
    for var in data_env(v) {
        put(var);
    }
    for var in dask::workspace_dask_env(v) {
        put(var);
    }
    for var in hub_env(v, cfg) {
        put(var);
    }
    env.into_values().collect()
}

/// The variables JupyterHub's spawner sets, and KubeSpawner's resource variables.
fn hub_env(v: &ValidatedWorkspace, cfg: &OperatorConfig) -> Vec<EnvVar> {
    let (user, server) = (v.user.as_str(), v.server_name.as_str());
    let prefix = service_prefix(user, server);
    let scopes = serde_json::to_string(&[
        format!("access:servers!server={user}/{server}"),
        format!("access:servers!user={user}"),
    ])
    .unwrap_or_default();
    let secret = names::secret_name(&v.name);
    let mut vars = vec![
        plain("JUPYTERHUB_API_URL", cfg.hub_api_url.clone()),
        plain(
            "JUPYTERHUB_ACTIVITY_URL",
            format!(
                "{}/users/{user}/activity",
                cfg.hub_api_url.trim_end_matches('/')
            ),
        ),
        plain("JUPYTERHUB_BASE_URL", "/"),
        plain("JUPYTERHUB_CLIENT_ID", names::oauth_client_id(user, server)),
        plain("JUPYTERHUB_DEFAULT_URL", v.kind.default_url()),
        plain(
            "JUPYTERHUB_OAUTH_CALLBACK_URL",
            oauth_callback_url(cfg, user, server),
        ),
        plain("JUPYTERHUB_OAUTH_ACCESS_SCOPES", scopes.clone()),
        plain("JUPYTERHUB_OAUTH_SCOPES", scopes),
        plain("JUPYTERHUB_SERVER_NAME", server),
        plain("JUPYTERHUB_SERVICE_PREFIX", prefix.clone()),
        plain(
            "JUPYTERHUB_SERVICE_URL",
            format!("http://0.0.0.0:{}{prefix}", cfg.server_port),
        ),
        plain("JUPYTERHUB_USER", user),
        from_secret("JUPYTERHUB_API_TOKEN", &secret, TOKEN_KEY),
        from_secret("JPY_API_TOKEN", &secret, TOKEN_KEY),
    ];
    if cfg.user_domain.is_some() {
        // The server is on the user's host: it sends browsers to the hub's own host to log in
        // (JupyterHub's `Spawner.get_env` under `subdomain_host`; the hub's spawner does the same).
        let at = vars
            .iter()
            .position(|v| v.name.as_str() > "JUPYTERHUB_HOST")
            .unwrap_or(vars.len());
        vars.insert(
            at,
            plain("JUPYTERHUB_HOST", cfg.public_url.trim_end_matches('/')),
        );
    }
    if let Ok(bytes) = parse_bytes(&v.resources.memory) {
        vars.push(plain("MEM_LIMIT", bytes.to_string()));
        vars.push(plain("MEM_GUARANTEE", bytes.to_string()));
    }
    if let Ok(millis) = parse_cpu_millis(&v.resources.cpu) {
        vars.push(plain("CPU_LIMIT", format_cpu_cores(millis)));
        vars.push(plain("CPU_GUARANTEE", format_cpu_cores(millis)));
    }
    vars
}

/// An environment entry of [`crate::policy::data`] as a container's variable: a Secret's key
/// as a `secretKeyRef`, never inline.
pub(crate) fn env_var(name: String, value: EnvValue) -> EnvVar {
    match value {
        EnvValue::Plain(value) => plain(name, value),
        EnvValue::Secret { name: secret, key } => from_secret(name, &secret, &key),
    }
}

/// The data sources' variables ([`data::data_env`] for the owner's groups, files at
/// [`data_paths`]).
fn data_env(v: &ValidatedWorkspace) -> Vec<EnvVar> {
    let mut vars: Vec<EnvVar> = data::data_env(&v.data_sources, &v.groups, &data_paths())
        .into_iter()
        .map(|(name, value)| env_var(name, value))
        .collect();
    if v.kind == WorkspaceKind::Qgis {
        vars.push(plain(desktop::SETTINGS_ENV, desktop_settings_path()));
    }
    vars
}

/// How a CSI source is attached: `Ephemeral` or `Persistent` (never `Auto`). `Auto` is
/// `Ephemeral` when the driver's CSIDriver lists `Ephemeral` in its `volumeLifecycleModes`,
/// else `Persistent`: the mode of a CSIDriver without `volumeLifecycleModes` (storage.k8s.io/v1),
/// and the only one of both drivers studied, csi-s3 (yandex-cloud/k8s-csi-s3
/// `deploy/helm/csi-s3/templates/driver.yaml`: `volumeLifecycleModes: [Persistent]`) and the
/// iRODS driver (cyverse/irods-csi-driver `helm/templates/csidriver.yaml`: none). Without the
/// drivers (`None`), `Auto` is `Persistent` for the same reason.
pub fn csi_mode(csi: &CsiSpec, csi_drivers: Option<&BTreeMap<String, Vec<String>>>) -> CsiMode {
    match csi.mode {
        CsiMode::Ephemeral => CsiMode::Ephemeral,
        CsiMode::Persistent => CsiMode::Persistent,
        CsiMode::Auto => {
            let ephemeral = csi_drivers
                .and_then(|d| d.get(&csi.driver))
                .is_some_and(|modes| modes.iter().any(|m| m == "Ephemeral"));
            if ephemeral {
                CsiMode::Ephemeral
            } else {
                CsiMode::Persistent
            }
        }
    }
}

/// csi-s3's driver name (yandex-cloud/k8s-csi-s3 `deploy/helm/csi-s3/templates/driver.yaml`).
pub const CSI_S3_DRIVER: &str = "ru.yandex.s3.csi";
/// The iRODS CSI driver's name (cyverse/irods-csi-driver `helm/templates/csidriver.yaml`).
pub const IRODS_CSI_DRIVER: &str = "irods.csi.cyverse.org";

/// The `volumeAttributes` of a CSI source: the defaults of a known driver, overridden key by key
/// by the admin's `csi.volumeAttributes`; for any other driver the admin's only.
///
/// - csi-s3 ([`CSI_S3_DRIVER`]): `mounter: geesefs` (yandex-cloud/k8s-csi-s3
///   `pkg/mounter/mounter.go`: `TypeKey = "mounter"`, geesefs also its fallback); the bucket
///   and prefix come from the `volumeHandle` (`pkg/driver/nodeserver.go`,
///   `volumeIDToBucketPrefix`), `options` (mount options, `OptionsKey`) and `capacity`
///   (`getMeta`) only from the admin. Not for other s3 drivers: ctrox/csi-s3's mounters are
///   s3fs, goofys, s3backer and rclone (`pkg/mounter/`), no geesefs.
/// - iRODS ([`IRODS_CSI_DRIVER`]): `client: irodsfuse` (cyverse/irods-csi-driver
///   `pkg/client/common/common.go`, `GetClientType`), `host`, `port` (a string, parsed with
///   `strconv.Atoi`), `zone`, `path` (absolute: the collection mounted at the mount's root)
///   (`pkg/client/irods/connection_info.go`, `getConnectionInfoFromMap`).
pub fn csi_volume_attributes(spec: &DataSourceSpec, csi: &CsiSpec) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    match (csi.driver.as_str(), &spec.s3, &spec.irods) {
        (CSI_S3_DRIVER, Some(_), _) => {
            attributes.insert("mounter".to_owned(), "geesefs".to_owned());
        }
        (IRODS_CSI_DRIVER, _, Some(irods)) => {
            attributes.insert("client".to_owned(), "irodsfuse".to_owned());
            attributes.insert("host".to_owned(), irods.host.clone());
            attributes.insert("port".to_owned(), irods.port.to_string());
            attributes.insert("zone".to_owned(), irods.zone.clone());
            attributes.insert("path".to_owned(), irods.path.clone());
        }
        _ => {}
    }
    attributes.extend(
        csi.volume_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    attributes
}

/// The `volumeHandle` of a source's PersistentVolume `pv`: `csi.volumeHandle`, else for s3
/// `<bucket>/<prefix>` without the prefix's outer slashes (just `<bucket>` without one): the
/// handle csi-s3 splits at the first `/` into bucket and prefix (yandex-cloud/k8s-csi-s3
/// `pkg/driver/nodeserver.go`, `volumeIDToBucketPrefix`); else `pv` (the iRODS driver takes any
/// unique id: cyverse/irods-csi-driver `docs/irodsfs_static_volume_provisioning.md`).
pub fn csi_volume_handle(spec: &DataSourceSpec, csi: &CsiSpec, pv: &str) -> String {
    if let Some(handle) = &csi.volume_handle {
        return handle.clone();
    }
    match &spec.s3 {
        Some(s3) => {
            let prefix = s3.prefix.trim_matches('/');
            if prefix.is_empty() {
                s3.bucket.clone()
            } else {
                format!("{}/{prefix}", s3.bucket)
            }
        }
        None => pv.to_owned(),
    }
}

/// The Secret a CSI mount of a source hands its driver: `csi.nodePublishSecret`, else the
/// user's credentials ([`data::credentials_for`]), else none.
fn csi_secret<'a>(
    spec: &'a DataSourceSpec,
    csi: &'a CsiSpec,
    groups: &BTreeSet<String>,
) -> Option<&'a SecretRef> {
    csi.node_publish_secret
        .as_ref()
        .or_else(|| data::credentials_for(spec, groups).map(|(_, secret)| secret))
}

/// The access mode of a source's PersistentVolume and claim.
fn data_access_mode(spec: &DataSourceSpec) -> &'static str {
    if spec.read_only {
        "ReadOnlyMany"
    } else {
        "ReadWriteMany"
    }
}

/// Volumes and mounts of the data sources, in name order, then the catalogue and the iRODS
/// files, then a QGIS desktop's seed (see the module documentation).
fn data_volumes(
    v: &ValidatedWorkspace,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let (mut volumes, mut mounts) = data_volumes_for(
        &DataOwner {
            name: &v.name,
            catalog: catalog_config_map_name(&v.name),
            sources: &v.data_sources,
            groups: &v.groups,
        },
        csi_drivers,
    );
    if v.kind == WorkspaceKind::Qgis {
        volumes.push(Volume {
            name: DESKTOP_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: catalog_config_map_name(&v.name),
                items: Some(vec![KeyToPath {
                    key: desktop::SETTINGS_FILE.to_owned(),
                    path: desktop::SETTINGS_FILE.to_owned(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: DESKTOP_VOLUME.to_owned(),
            mount_path: desktop::POD_DESKTOP_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// Where a QGIS desktop's pod reads its seed ([`desktop::SETTINGS_ENV`]).
pub fn desktop_settings_path() -> String {
    format!("{}/{}", desktop::POD_DESKTOP_DIR, desktop::SETTINGS_FILE)
}

/// Who mounts the data sources: a Workspace, or a BatchJob (`operator::batchjob::build`).
pub(crate) struct DataOwner<'a> {
    /// Its name (a `Persistent` CSI source's claim is named after it).
    pub name: &'a str,
    /// The name of its catalogue ConfigMap.
    pub catalog: String,
    /// Its data sources, sorted by name.
    pub sources: &'a [(String, DataSourceSpec)],
    /// Its owner's groups (the credentials they get).
    pub groups: &'a BTreeSet<String>,
}

/// [`data_volumes`] of any owner.
pub(crate) fn data_volumes_for(
    v: &DataOwner<'_>,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (name, spec) in v.sources {
        let volume_name = names::data_volume_name(name);
        let read_only = Some(spec.read_only);
        let mut volume = Volume {
            name: volume_name.clone(),
            ..Volume::default()
        };
        if let Some(nfs) = &spec.nfs {
            volume.nfs = Some(NFSVolumeSource {
                server: nfs.server.clone(),
                path: nfs.path.clone(),
                read_only,
            });
        } else if let Some(pvc) = &spec.pvc {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only,
            });
        } else if let Some(csi) = &spec.csi {
            match csi_mode(csi, csi_drivers) {
                CsiMode::Ephemeral => {
                    let attributes = csi_volume_attributes(spec, csi);
                    volume.csi = Some(CSIVolumeSource {
                        driver: csi.driver.clone(),
                        volume_attributes: (!attributes.is_empty()).then_some(attributes),
                        read_only,
                        // In the pod's namespace (a LocalObjectReference).
                        node_publish_secret_ref: csi_secret(spec, csi, v.groups).map(|s| {
                            LocalObjectReference {
                                name: s.name.clone(),
                            }
                        }),
                        fs_type: None,
                    });
                }
                _ => {
                    volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                        claim_name: names::data_claim_name(v.name, name),
                        read_only,
                    });
                }
            }
        } else {
            // s3 or irods without CSI, or STAC: environment only.
            continue;
        }
        volumes.push(volume);
        mounts.push(VolumeMount {
            name: volume_name,
            // The CRD requires a mountPath on every mounted source.
            mount_path: spec.mount_path.clone().unwrap_or_default(),
            read_only,
            ..VolumeMount::default()
        });
    }
    if !v.sources.is_empty() {
        volumes.push(Volume {
            name: CATALOG_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: v.catalog.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: CATALOG_VOLUME.to_owned(),
            mount_path: DATA_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if v.sources.iter().any(|(_, s)| s.irods.is_some()) {
        // In memory (tmpfs): the obfuscated password never reaches the node's disk.
        volumes.push(Volume {
            name: IRODS_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: Some(Quantity(IRODS_VOLUME_SIZE.to_owned())),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: IRODS_VOLUME.to_owned(),
            mount_path: IRODS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// The init container writing the iRODS client's files (with an irods source): the workspace's
/// image, the server's securityContext (so the uid that salts `.irodsA` is the server's),
/// `python3 -c` [`data::IRODS_INIT_SCRIPT`] with [`data::irods_init_env`] (the credentials as
/// `secretKeyRef`), the emptyDir [`IRODS_VOLUME`] writable.
fn irods_init_container(
    v: &ValidatedWorkspace,
    cfg: &OperatorConfig,
    resources: BTreeMap<String, Quantity>,
) -> Option<Container> {
    irods_init_container_for(&v.image, &v.data_sources, &v.groups, cfg, resources)
}

/// [`irods_init_container`] of any owner running `image`.
pub(crate) fn irods_init_container_for(
    image: &str,
    sources: &[(String, DataSourceSpec)],
    groups: &BTreeSet<String>,
    cfg: &OperatorConfig,
    resources: BTreeMap<String, Quantity>,
) -> Option<Container> {
    let env = data::irods_init_env(sources, groups, &data_paths())?;
    Some(Container {
        name: IRODS_INIT_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(vec![
            "python3".to_owned(),
            "-c".to_owned(),
            data::IRODS_INIT_SCRIPT.to_owned(),
        ]),
        env: Some(
            env.into_iter()
                .map(|(name, value)| env_var(name, value))
                .collect(),
        ),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: IRODS_VOLUME.to_owned(),
            mount_path: IRODS_DIR.to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    })
}

/// The data sources' children besides the pod ([`data_children`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataChildren {
    /// One PersistentVolume per `Persistent` CSI source, in source name order
    /// ([`build_data_volume`]).
    pub persistent_volumes: Vec<PersistentVolume>,
    /// Their claims, in the same order ([`build_data_claim`]).
    pub claims: Vec<PersistentVolumeClaim>,
    /// The Intake catalogue, when the workspace has a data source
    /// ([`build_catalog_config_map`]).
    pub config_map: Option<ConfigMap>,
}

/// The data sources' children besides the pod, whatever the desired state (as the home claim,
/// they outlive a stop); `csi_drivers` as for [`build_with`], so that the pod and these agree
/// on each source's [`csi_mode`].
pub fn data_children(
    v: &ValidatedWorkspace,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> DataChildren {
    let mut out = DataChildren {
        config_map: build_catalog_config_map(v),
        ..DataChildren::default()
    };
    for (name, spec) in &v.data_sources {
        let Some(csi) = &spec.csi else { continue };
        if csi_mode(csi, csi_drivers) != CsiMode::Persistent {
            continue;
        }
        out.persistent_volumes
            .push(build_data_volume(v, name, spec, csi));
        out.claims.push(build_data_claim(v, name, spec, csi));
    }
    out
}

/// The `storage` of a source's PersistentVolume and claim.
fn data_capacity(csi: &CsiSpec) -> BTreeMap<String, Quantity> {
    let storage = csi.capacity.as_deref().unwrap_or(DEFAULT_DATA_CAPACITY);
    BTreeMap::from([("storage".to_owned(), Quantity(storage.to_owned()))])
}

/// The statically provisioned PersistentVolume of source `name` for the workspace: named
/// [`names::data_pv_name`], labelled (managed-by, [`WORKSPACE_LABEL`],
/// [`WORKSPACE_NAMESPACE_LABEL`], [`DATA_SOURCE_LABEL`]) and without owner (a cluster-scoped
/// object cannot be owned by a namespaced one); bound in advance to its claim (`claimRef`),
/// `storageClassName: ""` (no provisioner), reclaim `Retain` (csi-s3's DeleteVolume deletes the
/// bucket's prefix: yandex-cloud/k8s-csi-s3 `pkg/driver/controllerserver.go`). The driver's
/// Secret ([`csi_secret`]) goes as both `nodeStageSecretRef` and `nodePublishSecretRef`: csi-s3
/// reads it in NodeStageVolume and NodePublishVolume (`pkg/driver/nodeserver.go`,
/// `req.GetSecrets()`; example `deploy/kubernetes/examples/pvc-manual.yaml`), the iRODS driver
/// mounts in NodeStageVolume (cyverse/irods-csi-driver `pkg/driver/node.go`;
/// `docs/irodsfs_static_volume_provisioning.md` sets `nodeStageSecretRef`).
pub fn build_data_volume(
    v: &ValidatedWorkspace,
    name: &str,
    spec: &DataSourceSpec,
    csi: &CsiSpec,
) -> PersistentVolume {
    let pv_name = names::data_pv_name(&v.namespace, &v.name, name);
    let secret = csi_secret(spec, csi, &v.groups).map(|s| SecretReference {
        name: Some(s.name.clone()),
        namespace: Some(v.namespace.clone()),
    });
    let attributes = csi_volume_attributes(spec, csi);
    let mut volume = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    MANAGED_BY.to_owned(),
                ),
                (WORKSPACE_LABEL.to_owned(), names::label_value(&v.name)),
                (WORKSPACE_NAMESPACE_LABEL.to_owned(), v.namespace.clone()),
                (DATA_SOURCE_LABEL.to_owned(), names::label_value(name)),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(data_capacity(csi)),
            access_modes: Some(vec![data_access_mode(spec).to_owned()]),
            persistent_volume_reclaim_policy: Some("Retain".to_owned()),
            storage_class_name: Some(String::new()),
            claim_ref: Some(ObjectReference {
                namespace: Some(v.namespace.clone()),
                name: Some(names::data_claim_name(&v.name, name)),
                ..ObjectReference::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: csi.driver.clone(),
                volume_handle: csi_volume_handle(spec, csi, &pv_name),
                read_only: Some(spec.read_only),
                volume_attributes: (!attributes.is_empty()).then_some(attributes),
                node_stage_secret_ref: secret.clone(),
                node_publish_secret_ref: secret,
                ..CSIPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    };
    let source = volume_source_hash(&volume);
    volume.metadata.annotations = Some(BTreeMap::from([(
        VOLUME_SOURCE_ANNOTATION.to_owned(),
        source,
    )]));
    volume
}

/// The [`VOLUME_SOURCE_ANNOTATION`] of a data source's PersistentVolume: the sha256 (hex) of the
/// JSON of its `spec.csi` (immutable once created: the API server's `ValidatePersistentVolumeUpdate`
/// refuses a change of the volume source), `spec.capacity` and `spec.accessModes` (the claim's
/// requests and access modes are the same, and a claim's spec is immutable but for an
/// expansion that a volume without a StorageClass never gets). Everything else the builder
/// puts in the volume follows from its name (labels, claim reference) or is fixed.
///
/// Each field is serialized from its typed value (struct fields in their declared order, maps
/// sorted), never through a `serde_json::Value`, whose key order depends on whether some
/// dependency turns on serde_json's `preserve_order`: a hash that moved with the build would
/// replace every data volume.
pub fn volume_source_hash(volume: &PersistentVolume) -> String {
    use sha2::{Digest, Sha256};
    let spec = volume.spec.as_ref();
    let mut hasher = Sha256::new();
    for part in [
        serde_json::to_vec(&spec.and_then(|s| s.csi.as_ref())),
        serde_json::to_vec(&spec.and_then(|s| s.capacity.as_ref())),
        serde_json::to_vec(&spec.and_then(|s| s.access_modes.as_ref())),
    ] {
        // These types always serialize; an error would hash as an empty field.
        hasher.update(part.unwrap_or_default());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// The claim of source `name`'s PersistentVolume ([`build_data_volume`]): named
/// [`names::data_claim_name`], owned by the Workspace, the workspace's labels and
/// [`DATA_SOURCE_LABEL`], bound to the volume by name with the same access mode and storage.
pub fn build_data_claim(
    v: &ValidatedWorkspace,
    name: &str,
    spec: &DataSourceSpec,
    csi: &CsiSpec,
) -> PersistentVolumeClaim {
    let mut metadata = meta(v, names::data_claim_name(&v.name, name), true);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(DATA_SOURCE_LABEL.to_owned(), names::label_value(name));
    }
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![data_access_mode(spec).to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(data_capacity(csi)),
                limits: None,
            }),
            storage_class_name: Some(String::new()),
            volume_name: Some(names::data_pv_name(&v.namespace, &v.name, name)),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// The ConfigMap [`catalog_config_map_name`] holding the workspace's Intake catalogue under
/// [`CATALOG_KEY`] ([`data::intake_catalog`] for the owner's groups, mounted sources read from
/// their mount paths) and, for a QGIS desktop, its seed under [`desktop::SETTINGS_FILE`]
/// ([`desktop::global_settings`]), owned by the Workspace; `None` when it would hold nothing.
pub fn build_catalog_config_map(v: &ValidatedWorkspace) -> Option<ConfigMap> {
    let mut data = BTreeMap::new();
    if !v.data_sources.is_empty() {
        data.insert(
            CATALOG_KEY.to_owned(),
            data::intake_catalog(&v.data_sources, &v.groups, true),
        );
    }
    if v.kind == WorkspaceKind::Qgis {
        data.insert(
            desktop::SETTINGS_FILE.to_owned(),
            desktop::global_settings(&v.data_sources, &v.desktop_sources),
        );
    }
    if data.is_empty() {
        return None;
    }
    Some(ConfigMap {
        metadata: meta(v, catalog_config_map_name(&v.name), true),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The namespace, ResourceQuota, LimitRange and NetworkPolicy of a user's own namespace.
///
/// The quota is the sum of `caps.perUser` over the pools open to the user's `groups`: `pods`
/// (workspaces), `requests.cpu`/`limits.cpu`, `requests.memory`/`limits.memory`, and
/// `requests.<gpu resource>` over the gpu pools offering that resource. A resource that some
/// of those pools leave uncapped is left out of the quota (unbounded).
pub fn build_user_namespace(
    namespace: &str,
    user: &str,
    groups: &BTreeSet<String>,
    pools: &[NodePool],
    cfg: &OperatorConfig,
) -> UserNamespaceResources {
    let ns_labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (USER_LABEL.to_owned(), names::label_value(user)),
    ]);
    let child_meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(ns_labels.clone()),
        ..ObjectMeta::default()
    };
    let defaults = BTreeMap::from([
        ("cpu".to_owned(), Quantity(DEFAULT_CPU.to_owned())),
        ("memory".to_owned(), Quantity(DEFAULT_MEMORY.to_owned())),
    ]);
    UserNamespaceResources {
        namespace: Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                labels: Some(ns_labels.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: None,
        },
        resource_quota: ResourceQuota {
            metadata: child_meta(QUOTA_NAME),
            spec: Some(ResourceQuotaSpec {
                hard: Some(user_quota(groups, pools)),
                scope_selector: None,
                scopes: None,
            }),
            status: None,
        },
        limit_range: LimitRange {
            metadata: child_meta(LIMIT_RANGE_NAME),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".to_owned(),
                    default: Some(defaults.clone()),
                    default_request: Some(defaults),
                    ..LimitRangeItem::default()
                }],
            }),
        },
        network_policy: NetworkPolicy {
            metadata: child_meta(USER_NETWORK_POLICY_NAME),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(hub_and_proxy_peers(cfg)),
                    ports: None,
                }]),
                egress: None,
            }),
        },
    }
}

/// Sums of optional caps: `None` once any term is missing (uncapped).
fn sum_caps(terms: impl IntoIterator<Item = Option<i64>>) -> Option<i64> {
    terms
        .into_iter()
        .try_fold(0i64, |acc, t| t.map(|t| acc.saturating_add(t)))
}

/// The `hard` map of the per-user quota (see [`build_user_namespace`]).
pub fn user_quota(groups: &BTreeSet<String>, pools: &[NodePool]) -> BTreeMap<String, Quantity> {
    let mut open: Vec<&NodePool> = pools
        .iter()
        .filter(|p| allowed(&p.spec.allowed_groups, groups))
        .collect();
    open.sort_by_key(|p| p.name_any());
    let per_user = |p: &NodePool| p.spec.caps.as_ref().and_then(|c| c.per_user.clone());

    let mut hard = BTreeMap::new();
    if let Some(pods) = sum_caps(
        open.iter()
            .map(|p| per_user(p).and_then(|c| c.workspaces).map(i64::from)),
    ) {
        hard.insert("pods".to_owned(), Quantity(pods.to_string()));
    }
    let cpu = sum_caps(open.iter().map(|p| {
        per_user(p)
            .and_then(|c| c.cpu)
            .and_then(|q| parse_cpu_millis(&q).ok())
    }));
    if let Some(cpu) = cpu {
        for key in ["requests.cpu", "limits.cpu"] {
            hard.insert(key.to_owned(), Quantity(format_cpu_millis(cpu)));
        }
    }
    let memory = sum_caps(open.iter().map(|p| {
        per_user(p)
            .and_then(|c| c.memory)
            .and_then(|q| parse_bytes(&q).ok())
    }));
    if let Some(memory) = memory {
        for key in ["requests.memory", "limits.memory"] {
            hard.insert(key.to_owned(), Quantity(format_bytes(memory)));
        }
    }
    let mut gpu_pools: BTreeMap<&str, Vec<&NodePool>> = BTreeMap::new();
    for pool in &open {
        if pool.spec.purpose == PoolPurpose::Gpu
            && let Some(gpu) = &pool.spec.gpu
        {
            gpu_pools
                .entry(gpu.resource_name.as_str())
                .or_default()
                .push(pool);
        }
    }
    for (resource, pools) in gpu_pools {
        if let Some(gpus) = sum_caps(
            pools
                .iter()
                .map(|p| per_user(p).and_then(|c| c.gpus).map(i64::from)),
        ) {
            hard.insert(format!("requests.{resource}"), Quantity(gpus.to_string()));
        }
    }
    hard
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
