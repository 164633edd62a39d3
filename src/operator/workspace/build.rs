//! Pure builders: a [`ValidatedWorkspace`] in, Kubernetes objects out. Deterministic output.
//!
//! Every child carries the labels of [`labels`] and an owner reference to its Workspace
//! ([`owner_reference`]), except the home PVC when the profile keeps home volumes
//! (`home.onDelete: keep`): that claim must outlive the Workspace. Names come from
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
//! - Data sources, in name order. Each source `<name>` gets its own `ATELIER_DATA_<NAME>_*`
//!   variables (`<NAME>`: the name uppercased, other characters `_`):
//!   - s3: `_ENDPOINT_URL`, `_BUCKET`, `_PREFIX`, `_URL` (`s3://bucket/prefix`), `_REGION` (when
//!     set); with a credentials Secret `_AWS_ACCESS_KEY_ID` and `_AWS_SECRET_ACCESS_KEY`
//!     (secretKeyRef, keys `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), without one
//!     `_ANONYMOUS=true`.
//!   - irods: `_HOST`, `_PORT`, `_ZONE`, `_PATH`; with a credentials Secret `_IRODS_USER_NAME`
//!     and `_IRODS_PASSWORD` (keys `IRODS_USER_NAME`/`IRODS_PASSWORD`).
//!
//!   The first s3 source (in name order) also sets the variables boto3, s3fs and fsspec read by
//!   themselves: `AWS_ENDPOINT_URL`, `FSSPEC_S3_ENDPOINT_URL`, `AWS_DEFAULT_REGION` (when set),
//!   and `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from its Secret, or `FSSPEC_S3_ANON=true`
//!   when it is anonymous. Likewise the first irods source sets the iRODS client's
//!   `IRODS_HOST`, `IRODS_PORT`, `IRODS_ZONE_NAME`, `IRODS_USER_NAME`, `IRODS_PASSWORD`. Later
//!   sources of the same kind, which may use other endpoints and Secrets, are reached through
//!   their own `ATELIER_DATA_<NAME>_*` variables only.
//!
//! # Volumes
//!
//! `home` (the home claim) first, then one volume `data-<name>` per mounted data source in name
//! order: nfs and pvc sources always, s3 and irods sources when they name a CSI driver (an
//! ephemeral CSI volume whose `nodePublishSecretRef` is `csi.nodePublishSecret`, else the
//! source's credentials Secret). Mounts honour `readOnly`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    LimitRange, LimitRangeItem, LimitRangeSpec, LocalObjectReference, NFSVolumeSource, Namespace,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, Probe, ResourceQuota, ResourceQuotaSpec, ResourceRequirements,
    SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
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
use crate::api::v1alpha1::{DataSourceSpec, DesiredState, HomeReclaim, NodePool, PoolPurpose};
use crate::config::OperatorConfig;
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

const API_VERSION: &str = "atelier.dev/v1alpha1";
const KIND: &str = "Workspace";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The labels of every child of the workspace.
pub fn labels(v: &ValidatedWorkspace) -> BTreeMap<String, String> {
    let instance = names::label_value(&v.name);
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
        (USER_LABEL.to_owned(), names::label_value(&v.user)),
        (SERVER_LABEL.to_owned(), names::label_value(&v.server_name)),
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

/// The children of one Workspace.
pub fn build(v: &ValidatedWorkspace, cfg: &OperatorConfig) -> WorkspaceResources {
    let pod = match (v.desired_state, &v.pool) {
        (DesiredState::Running, Some(pool)) => Some(build_pod(v, pool, cfg)),
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
    PersistentVolumeClaim {
        metadata: meta(v, v.home.claim_name.clone(), owned),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(v.home.size.clone()),
                )])),
                limits: None,
            }),
            storage_class_name: v.home.storage_class_name.clone(),
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

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// The server's pod on `pool`.
pub fn build_pod(v: &ValidatedWorkspace, pool: &PlacedPool, cfg: &OperatorConfig) -> Pod {
    let prefix = service_prefix(&v.user, &v.server_name);
    let mut resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(v.resources.cpu.clone())),
        ("memory".to_owned(), Quantity(v.resources.memory.clone())),
    ]);
    if v.resources.gpus > 0
        && let Some(gpu) = &pool.gpu_resource_name
    {
        resources.insert(gpu.clone(), Quantity(v.resources.gpus.to_string()));
    }
    let (data_volumes, data_mounts) = data_volumes(&v.data_sources);
    let mut volumes = vec![Volume {
        name: HOME_VOLUME.to_owned(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: v.home.claim_name.clone(),
            read_only: None,
        }),
        ..Volume::default()
    }];
    volumes.extend(data_volumes);
    let mut mounts = vec![VolumeMount {
        name: HOME_VOLUME.to_owned(),
        mount_path: v.home.mount_path.clone(),
        ..VolumeMount::default()
    }];
    mounts.extend(data_mounts);

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
            limits: Some(resources),
            claims: None,
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_owned()]),
            }),
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
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

    Pod {
        metadata: meta(v, names::pod_name(&v.name), true),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            // Crashes restart in place; the status step reports CrashLoopBackOff as Failed.
            restart_policy: Some("Always".to_owned()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
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
    for var in data_source_env(&v.data_sources) {
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

/// The data sources' variables (see the module documentation).
fn data_source_env(sources: &[(String, DataSourceSpec)]) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    let (mut first_s3, mut first_irods) = (true, true);
    for (name, spec) in sources {
        let p = names::data_env_prefix(name);
        if let Some(s3) = &spec.s3 {
            let prefix = s3.prefix.trim_start_matches('/');
            vars.push(plain(format!("{p}_ENDPOINT_URL"), s3.endpoint.clone()));
            vars.push(plain(format!("{p}_BUCKET"), s3.bucket.clone()));
            vars.push(plain(format!("{p}_PREFIX"), s3.prefix.clone()));
            vars.push(plain(
                format!("{p}_URL"),
                format!("s3://{}/{prefix}", s3.bucket),
            ));
            if let Some(region) = &s3.region {
                vars.push(plain(format!("{p}_REGION"), region.clone()));
            }
            match &s3.credentials_secret {
                Some(secret) => {
                    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                        vars.push(from_secret(format!("{p}_{key}"), &secret.name, key));
                    }
                }
                None => vars.push(plain(format!("{p}_ANONYMOUS"), "true")),
            }
            if std::mem::take(&mut first_s3) {
                vars.push(plain("AWS_ENDPOINT_URL", s3.endpoint.clone()));
                vars.push(plain("FSSPEC_S3_ENDPOINT_URL", s3.endpoint.clone()));
                if let Some(region) = &s3.region {
                    vars.push(plain("AWS_DEFAULT_REGION", region.clone()));
                }
                match &s3.credentials_secret {
                    Some(secret) => {
                        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                            vars.push(from_secret(key, &secret.name, key));
                        }
                    }
                    None => vars.push(plain("FSSPEC_S3_ANON", "true")),
                }
            }
        }
        if let Some(irods) = &spec.irods {
            vars.push(plain(format!("{p}_HOST"), irods.host.clone()));
            vars.push(plain(format!("{p}_PORT"), irods.port.to_string()));
            vars.push(plain(format!("{p}_ZONE"), irods.zone.clone()));
            vars.push(plain(format!("{p}_PATH"), irods.path.clone()));
            if let Some(secret) = &irods.credentials_secret {
                for key in ["IRODS_USER_NAME", "IRODS_PASSWORD"] {
                    vars.push(from_secret(format!("{p}_{key}"), &secret.name, key));
                }
            }
            if std::mem::take(&mut first_irods) {
                vars.push(plain("IRODS_HOST", irods.host.clone()));
                vars.push(plain("IRODS_PORT", irods.port.to_string()));
                vars.push(plain("IRODS_ZONE_NAME", irods.zone.clone()));
                if let Some(secret) = &irods.credentials_secret {
                    for key in ["IRODS_USER_NAME", "IRODS_PASSWORD"] {
                        vars.push(from_secret(key, &secret.name, key));
                    }
                }
            }
        }
    }
    vars
}

/// Volumes and mounts of the mounted data sources, in name order.
fn data_volumes(sources: &[(String, DataSourceSpec)]) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (name, spec) in sources {
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
            let credentials = spec
                .s3
                .as_ref()
                .and_then(|s| s.credentials_secret.as_ref())
                .or_else(|| {
                    spec.irods
                        .as_ref()
                        .and_then(|i| i.credentials_secret.as_ref())
                });
            volume.csi = Some(CSIVolumeSource {
                driver: csi.driver.clone(),
                volume_attributes: (!csi.volume_attributes.is_empty())
                    .then(|| csi.volume_attributes.clone()),
                read_only,
                node_publish_secret_ref: csi.node_publish_secret.as_ref().or(credentials).map(
                    |s| LocalObjectReference {
                        name: s.name.clone(),
                    },
                ),
                fs_type: None,
            });
        } else {
            // s3 or irods without CSI: environment only.
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
    (volumes, mounts)
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
