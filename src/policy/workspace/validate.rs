//! Pure validation: a Workspace plus what `dereference` read → a [`ValidatedWorkspace`] or a [`Refusal`].
//!
//! Rules are checked in this order, and the first one broken is the refusal:
//!
//! 1. names: Workspace name, user name, server name ([`reason::INVALID_NAME`]);
//! 2. namespace: in per-user mode the Workspace lives in its user's namespace
//!    ([`reason::WRONG_NAMESPACE`]);
//! 3. profile: exists and is open to the user's groups;
//! 4. kind and image overrides;
//! 5. resources: `spec.resources` over the profile's defaults over 1 CPU / 2Gi / no GPU, within
//!    the profile's `maxResources` (a `maxResources.gpuType` is the only type allowed, and the
//!    type of a GPU request that names none); quantities come out canonical (`0.5` → `500m`);
//!    the home size;
//! 6. data sources: exist, open to the user, well formed ([`reason::DATA_SOURCE_INVALID`]),
//!    the Secret of the user's credentials and the CSI driver's Secret exist (when the caller
//!    read the Secrets: [`Dereferenced::credential_secrets`]), the CSI driver is installed and
//!    supports the asked mode (when the caller read them: [`Dereferenced::csi_drivers`]), the
//!    s3 endpoint answers (when the caller probed it: [`Dereferenced::unreachable`]), no two
//!    mounted at the same path;
//! 7. node pool (see [`crate::policy::routing`]);
//! 8. the pool's caps, for this workspace alone (see [`crate::policy::caps`]): a request no
//!    cap could ever admit is refused here. What the *other* workspaces use is admission's:
//!    the caller passes [`claim`] to [`admit`], which checks and reserves it atomically against
//!    the [`UsageIndex`] (see [`crate::policy::admission`]).
//!
//! 9. Dask (`spec.dask` over the profile's `dask.defaults`): offered by the profile
//!    ([`reason::DASK_NOT_OFFERED`]), `workers` within `dask.maxWorkers`
//!    ([`reason::DASK_WORKERS_OUT_OF_RANGE`]), worker resources within
//!    `dask.maxWorkerResources` (the resource reasons, "Dask workers:" in the message), an image
//!    override only where the profile allows one, and the workers' pool (routing with
//!    [`PoolRequest::batch`]: `spec.dask.nodePool`, else the profile's `daskNodePool`, else a
//!    `batch` pool, else the workspace's own pool when its workers ask for no GPU). Caps never
//!    refuse a cluster: they lower its `workers` ([`admit_dask`]).
//!
//! A stopped workspace runs no pod: caps are skipped, and a failed pool routing is not a refusal
//! (its `pool` is then `None`). Every other rule still applies.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::{
    Dereferenced, EffectiveResources, HomeVolume, PlacedPool, Refusal, ValidatedDask,
    ValidatedWorkspace,
};
use crate::api::v1alpha1::ResourceRequest;
use crate::api::v1alpha1::{
    CsiMode, DataSourceSpec, DesiredState, NodePool, WorkerRange, Workspace, WorkspaceProfile,
};
use crate::config::{NamespaceMode, OperatorConfig};
use crate::policy::admission::{Claim, UsageIndex};
use crate::policy::{
    self, PoolRequest, RoutingError, Usage, allowed, check_caps, effective_request, format_bytes,
    format_cpu_millis, format_groups, names, parse_bytes, parse_cpu_millis, usage_of,
};

/// The condition reasons of [`Refusal`]s.
pub mod reason {
    /// The Workspace, user or server name breaks the name rules.
    pub const INVALID_NAME: &str = "InvalidName";
    /// Per-user mode: the Workspace is not in its user's namespace.
    pub const WRONG_NAMESPACE: &str = "WrongNamespace";
    /// The WorkspaceProfile does not exist.
    pub const PROFILE_NOT_FOUND: &str = "ProfileNotFound";
    /// The user's groups may not use the profile.
    pub const PROFILE_FORBIDDEN: &str = "ProfileForbidden";
    /// The profile has an invalid quantity.
    pub const INVALID_PROFILE: &str = "InvalidProfile";
    /// `spec.kind` differs from the profile's and overrides are not allowed.
    pub const KIND_OVERRIDE_FORBIDDEN: &str = "KindOverrideForbidden";
    /// `spec.image` differs from the profile's and overrides are not allowed.
    pub const IMAGE_OVERRIDE_FORBIDDEN: &str = "ImageOverrideForbidden";
    /// A resource quantity is invalid or zero.
    pub const INVALID_RESOURCES: &str = "InvalidResources";
    /// A resource exceeds the profile's `maxResources`.
    pub const RESOURCES_EXCEED_PROFILE: &str = "ResourcesExceedProfile";
    /// A named DataSource does not exist.
    pub const DATA_SOURCE_NOT_FOUND: &str = "DataSourceNotFound";
    /// The user's groups may not use a DataSource.
    pub const DATA_SOURCE_FORBIDDEN: &str = "DataSourceForbidden";
    /// Two DataSources (or one and the home volume) share a mount path or environment names.
    pub const DATA_SOURCE_CONFLICT: &str = "DataSourceConflict";
    /// A DataSource breaks a rule of its CRD (a catalogue the API server did not check), or
    /// cannot work as written (group credentials on a CSI mount without a mount Secret).
    pub const DATA_SOURCE_INVALID: &str = "DataSourceInvalid";
    /// A Secret a DataSource gives the user (or its CSI driver) does not exist.
    pub const DATA_CREDENTIALS_NOT_FOUND: &str = "DataCredentialsNotFound";
    /// The CSI driver a DataSource names is not installed in the cluster.
    pub const CSI_DRIVER_NOT_FOUND: &str = "CSIDriverNotFound";
    /// The CSI driver does not support the volume mode the DataSource asks for.
    pub const CSI_DRIVER_MODE_UNSUPPORTED: &str = "CSIDriverModeUnsupported";
    /// The endpoint of a DataSource did not answer when the workspace was about to start.
    pub const DATA_ENDPOINT_UNREACHABLE: &str = "DataEndpointUnreachable";
    /// The named NodePool does not exist.
    pub const NODE_POOL_NOT_FOUND: &str = "NodePoolNotFound";
    /// The named NodePool is not open to the user or does not fit the request.
    pub const NODE_POOL_FORBIDDEN: &str = "NodePoolForbidden";
    /// No NodePool fits.
    pub const NO_ELIGIBLE_POOL: &str = "NoEligiblePool";
    /// A `caps.perUser` bound would be exceeded.
    pub const USER_CAP_EXCEEDED: &str = "UserCapExceeded";
    /// A `caps.perGroup` bound would be exceeded.
    pub const GROUP_CAP_EXCEEDED: &str = "GroupCapExceeded";
    /// A NodePool has an invalid cap.
    pub const INVALID_NODE_POOL: &str = "InvalidNodePool";
    /// The workspace asks for a Dask cluster and its profile offers none (`spec.dask`).
    pub const DASK_NOT_OFFERED: &str = "DaskNotOffered";
    /// `spec.dask.workers` is out of the profile's bounds (`dask.maxWorkers`).
    pub const DASK_WORKERS_OUT_OF_RANGE: &str = "DaskWorkersOutOfRange";
    /// Not a refusal: the worker pool's caps lowered the cluster's `workers.max`.
    pub const DASK_WORKERS_CAPPED: &str = "DaskWorkersCapped";
}

pub(crate) fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

/// Checks every rule (profile access, overrides, resources within the profile's maximum, pool
/// routing, data-source access, caps) and resolves defaults.
pub fn validate(
    ws: &Workspace,
    deref: &Dereferenced,
    cfg: &OperatorConfig,
) -> Result<ValidatedWorkspace, Refusal> {
    let spec = &ws.spec;
    let user = spec.user.as_str();
    let groups = &deref.groups;

    // 1. Names.
    let name = ws.metadata.name.clone().unwrap_or_default();
    if !names::is_dns_subdomain(&name) {
        return Err(refuse(
            reason::INVALID_NAME,
            format!("Workspace name {name:?} is not a DNS subdomain"),
        ));
    }
    if !names::is_valid_user_name(user) {
        return Err(refuse(
            reason::INVALID_NAME,
            format!(
                "user name {user:?} is not valid (1 to 63 of a-z, 0-9, '.', '_', '-', starting and ending with a letter or digit)"
            ),
        ));
    }
    if !names::is_valid_server_name(&spec.server_name) {
        return Err(refuse(
            reason::INVALID_NAME,
            format!(
                "server name {:?} is not valid (empty, or an RFC 1123 label of at most 63 characters)",
                spec.server_name
            ),
        ));
    }

    // 2. Namespace.
    let namespace = ws.metadata.namespace.clone().unwrap_or_default();
    check_namespace("Workspace", &namespace, user, cfg)?;

    // 3. Profile.
    let profile = open_profile(deref, &spec.profile, user)?;
    let pspec = &profile.spec;

    // 4. Overrides.
    let kind = match spec.kind {
        Some(k) if k != pspec.kind && !pspec.allow_kind_override => {
            return Err(refuse(
                reason::KIND_OVERRIDE_FORBIDDEN,
                format!(
                    "WorkspaceProfile {} runs {} and does not allow another kind (asked for {})",
                    spec.profile,
                    pspec.kind.as_str(),
                    k.as_str()
                ),
            ));
        }
        Some(k) => k,
        None => pspec.kind,
    };
    let image = match &spec.image {
        Some(i) if *i != pspec.image && !pspec.allow_image_override => {
            return Err(refuse(
                reason::IMAGE_OVERRIDE_FORBIDDEN,
                format!(
                    "WorkspaceProfile {} runs image {} and does not allow another image (asked for {i})",
                    spec.profile, pspec.image
                ),
            ));
        }
        Some(i) => i.clone(),
        None => pspec.image.clone(),
    };

    // 5. Resources.
    let request = effective_request(spec.resources.as_ref(), pspec.default_resources.as_ref());
    let resources = effective_resources(&request, profile)?;
    let home_size = spec.home_size.as_deref().unwrap_or(&pspec.home.size);
    match parse_bytes(home_size) {
        Ok(b) if b > 0 => {}
        Ok(_) => {
            return Err(refuse(
                reason::INVALID_RESOURCES,
                format!("home size {home_size} must be more than 0"),
            ));
        }
        Err(e) => {
            return Err(refuse(reason::INVALID_RESOURCES, format!("home size: {e}")));
        }
    }
    let home = HomeVolume {
        claim_name: names::home_claim_name(&name),
        size: home_size.to_owned(),
        storage_class_name: pspec.home.storage_class_name.clone(),
        mount_path: pspec.home.mount_path.clone(),
        reclaim: pspec.home.on_delete,
    };

    // 6. Data sources.
    let data_sources = data_sources(
        &spec.data_sources,
        user,
        &namespace,
        deref,
        &home.mount_path,
    )?;

    // 6b. What a desktop shows besides them (left out, never refused).
    let desktop_sources =
        policy::desktop::desktop_sources(kind, pspec, &deref.data_sources, groups, &data_sources);

    // 7. Pool.
    let pool_request = PoolRequest {
        explicit: spec.node_pool.as_deref(),
        profile_default: pspec.default_node_pool.as_deref(),
        gpus: resources.gpus,
        gpu_type: resources.gpu_type.as_deref(),
        batch: false,
        job: false,
    };
    let routed = policy::route(&pool_request, &deref.pools, groups);
    let pool: Option<&NodePool> = match (spec.desired_state, routed) {
        (_, Ok(pool)) => Some(pool),
        (DesiredState::Stopped, Err(_)) => None,
        (DesiredState::Running, Err(e)) => return Err(refuse(e.reason(), e.to_string())),
    };

    // 8. Caps, for this workspace alone (only a running workspace uses anything).
    if let (DesiredState::Running, Some(pool)) = (spec.desired_state, pool) {
        check_caps(
            &pool.name_any(),
            pool.spec.caps.as_ref(),
            user,
            groups,
            usage_of(&request),
            Usage::ZERO,
            |_| Usage::ZERO,
        )
        .map_err(|e| refuse(e.reason(), e.to_string()))?;
    }

    // 9. Dask.
    let dask = dask(ws, profile, &image, groups, &deref.pools, pool)?;

    let env = merged_env(&pspec.env, &spec.env);

    Ok(ValidatedWorkspace {
        name,
        namespace,
        uid: ws.metadata.uid.clone().unwrap_or_default(),
        user: user.to_owned(),
        server_name: spec.server_name.clone(),
        groups: groups.clone(),
        profile: spec.profile.clone(),
        kind,
        image,
        pool: pool.map(|p| place(p, &resources)),
        resources,
        data_sources,
        desktop_sources,
        env,
        home,
        desired_state: spec.desired_state,
        token: deref.token.clone(),
        dask,
    })
}

/// Step 2: the namespace of a `kind` (`Workspace`, `BatchJob`) of `user`: set, and in per-user
/// mode the user's own.
pub(crate) fn check_namespace(
    kind: &str,
    namespace: &str,
    user: &str,
    cfg: &OperatorConfig,
) -> Result<(), Refusal> {
    if namespace.is_empty() {
        return Err(refuse(
            reason::WRONG_NAMESPACE,
            format!("the {kind} has no namespace"),
        ));
    }
    if let NamespaceMode::PerUser { prefix } = &cfg.namespace_mode {
        let expected = names::user_namespace(prefix, user);
        if namespace != expected {
            return Err(refuse(
                reason::WRONG_NAMESPACE,
                format!(
                    "a {kind} of user {user} must live in namespace {expected}, not {namespace}"
                ),
            ));
        }
    }
    Ok(())
}

/// Step 3: the profile `name`, which must exist and be open to the user's groups.
pub(crate) fn open_profile<'d>(
    deref: &'d Dereferenced,
    name: &str,
    user: &str,
) -> Result<&'d WorkspaceProfile, Refusal> {
    let profile = deref
        .profile
        .as_ref()
        .filter(|p| p.name_any() == name)
        .ok_or_else(|| {
            refuse(
                reason::PROFILE_NOT_FOUND,
                format!("WorkspaceProfile {name} does not exist"),
            )
        })?;
    let allowed_groups = &profile.spec.allowed_groups;
    if !allowed(allowed_groups, &deref.groups) {
        return Err(refuse(
            reason::PROFILE_FORBIDDEN,
            format!(
                "WorkspaceProfile {name} is open only to groups {}; user {user} is in {}",
                format_groups(allowed_groups),
                format_groups(&deref.groups)
            ),
        ));
    }
    Ok(profile)
}

/// The profile's environment overlaid by the resource's own; `JUPYTERHUB_*` stay the
/// operator's.
pub(crate) fn merged_env(
    profile: &BTreeMap<String, String>,
    own: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    profile
        .iter()
        .chain(own)
        .filter(|(k, _)| !k.starts_with("JUPYTERHUB_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Built-in worker range when neither the workspace nor the profile gives one: 1 to 4 (within
/// the profile's `maxWorkers`).
const DEFAULT_WORKERS: WorkerRange = WorkerRange { min: 1, max: 4 };

/// Step 9: the workspace's Dask cluster, `None` when it has none or is not to run.
fn dask(
    ws: &Workspace,
    profile: &WorkspaceProfile,
    workspace_image: &str,
    groups: &BTreeSet<String>,
    pools: &[NodePool],
    workspace_pool: Option<&NodePool>,
) -> Result<Option<ValidatedDask>, Refusal> {
    let pspec = &profile.spec;
    let pname = profile.name_any();
    let asked = ws.spec.dask.as_ref();
    let defaults = pspec.dask.as_ref().and_then(|d| d.defaults.as_ref());
    // A `spec.dask` without `enabled` asks for a cluster; without `spec.dask`, the profile's.
    let enabled = match asked {
        Some(d) => d.enabled.unwrap_or(true),
        None => defaults.and_then(|d| d.enabled).unwrap_or(false),
    };
    if !enabled {
        return Ok(None);
    }
    let Some(offer) = &pspec.dask else {
        return Err(refuse(
            reason::DASK_NOT_OFFERED,
            format!("WorkspaceProfile {pname} offers no Dask cluster (it has no spec.dask)"),
        ));
    };
    let workers = asked
        .and_then(|d| d.workers)
        .or_else(|| defaults.and_then(|d| d.workers))
        .unwrap_or(WorkerRange {
            min: DEFAULT_WORKERS.min.min(offer.max_workers),
            max: DEFAULT_WORKERS.max.min(offer.max_workers),
        });
    if workers.min < 0 || workers.max < 1 || workers.min > workers.max {
        return Err(refuse(
            reason::DASK_WORKERS_OUT_OF_RANGE,
            format!(
                "Dask workers {}-{}: min must be at least 0, max at least 1, and min at most max",
                workers.min, workers.max
            ),
        ));
    }
    if workers.max > offer.max_workers {
        return Err(refuse(
            reason::DASK_WORKERS_OUT_OF_RANGE,
            format!(
                "Dask workers {}-{}: WorkspaceProfile {pname} allows at most {} workers",
                workers.min, workers.max, offer.max_workers
            ),
        ));
    }
    let request = effective_request(
        asked.and_then(|d| d.worker_resources.as_ref()),
        defaults.and_then(|d| d.worker_resources.as_ref()),
    );
    let resources = bounded_resources(
        &request,
        offer.max_worker_resources.as_ref(),
        &pname,
        "Dask workers' ",
        "dask.maxWorkerResources",
    )?;
    let image = match asked.and_then(|d| d.image.as_ref()) {
        Some(i) if i != workspace_image && !pspec.allow_image_override => {
            return Err(refuse(
                reason::IMAGE_OVERRIDE_FORBIDDEN,
                format!(
                    "WorkspaceProfile {pname} does not allow another image for the Dask workers \
                     (asked for {i}; they run the workspace's, {workspace_image})"
                ),
            ));
        }
        Some(i) => i.clone(),
        None => defaults
            .and_then(|d| d.image.clone())
            .unwrap_or_else(|| workspace_image.to_owned()),
    };
    let idle_timeout_seconds = asked
        .and_then(|d| d.idle_timeout_seconds)
        .or_else(|| defaults.and_then(|d| d.idle_timeout_seconds));
    // Nothing runs for a stopped workspace: no pool to find.
    if ws.spec.desired_state == DesiredState::Stopped {
        return Ok(None);
    }
    let explicit = asked.and_then(|d| d.node_pool.as_deref());
    let pool_request = PoolRequest {
        explicit,
        profile_default: pspec.dask_node_pool.as_deref(),
        gpus: resources.gpus,
        gpu_type: resources.gpu_type.as_deref(),
        batch: true,
        job: false,
    };
    let routed = match policy::route(&pool_request, pools, groups) {
        Ok(pool) => pool,
        // No batch pool: CPU-only workers share the workspace's pool, as daskhub's do.
        Err(RoutingError::NoEligiblePool { .. })
            if explicit.is_none() && resources.gpus == 0 && workspace_pool.is_some() =>
        {
            workspace_pool.expect("checked")
        }
        Err(e) => {
            return Err(refuse(e.reason(), format!("Dask workers: {e}")));
        }
    };
    // Caps for this cluster alone (what the others use is admission's, `admit_dask`).
    let per_worker = worker_usage(&resources);
    let (fit, stopped) = policy::fit_units(
        &routed.name_any(),
        routed.spec.caps.as_ref(),
        &ws.spec.user,
        groups,
        per_worker,
        workers.max,
        Usage::ZERO,
        |_| Usage::ZERO,
    )
    .map_err(|e| refuse(e.reason(), e.to_string()))?;
    Ok(Some(ValidatedDask {
        min: workers.min.min(fit),
        max: workers.max,
        workers: fit,
        capped: stopped.map(|e| capped_message(fit, workers.max, &e)),
        pool: place(routed, &resources),
        resources,
        image,
        idle_timeout_seconds,
    }))
}

/// What one worker holds on its pool: CPU, memory and GPUs; a worker is not a workspace.
pub(crate) fn worker_usage(resources: &EffectiveResources) -> Usage {
    let request = ResourceRequest {
        cpu: Some(resources.cpu.clone()),
        memory: Some(resources.memory.clone()),
        gpus: Some(resources.gpus),
        gpu_type: None,
    };
    Usage {
        workspaces: 0,
        ..usage_of(&request)
    }
}

/// The `DaskWorkersCapped` message: "2 of 8 Dask workers: user alice would use …".
fn capped_message(fit: i32, max: i32, cap: &policy::CapError) -> String {
    format!("{fit} of {max} Dask workers: {cap}")
}

/// The [`UsageIndex`] key of a Workspace's Dask cluster (`key` is the Workspace's).
pub fn dask_key(key: &str) -> String {
    format!("{key}#dask")
}

/// What the Dask cluster of `v` claims on its workers' pool: `workers` × one worker.
pub fn dask_claim(v: &ValidatedWorkspace) -> Option<Claim> {
    let dask = v.dask.as_ref()?;
    Some(Claim {
        pool: dask.pool.name.clone(),
        user: v.user.clone(),
        groups: v.groups.clone(),
        usage: worker_usage(&dask.resources).times(i64::from(dask.workers)),
    })
}

/// Admission of the Dask cluster of `v` (Workspace `key`): its `workers` lowered to what the
/// worker pool's caps allow given everything else `index` holds there (the reason in
/// `capped`), then reserved under [`dask_key`]. A workspace without a cluster releases what its
/// cluster held. Refused only for an invalid cap (`InvalidNodePool`).
pub fn admit_dask(
    index: &mut UsageIndex,
    key: &str,
    v: &mut ValidatedWorkspace,
    pools: &[NodePool],
) -> Result<(), Refusal> {
    let key = dask_key(key);
    let Some(dask) = v.dask.as_mut() else {
        index.release(&key);
        return Ok(());
    };
    let caps = pools
        .iter()
        .find(|p| p.name_any() == dask.pool.name)
        .and_then(|p| p.spec.caps.as_ref());
    let per_worker = worker_usage(&dask.resources);
    let fitted = index
        .admit_up_to(
            &key,
            &dask.pool.name,
            &v.user,
            &v.groups,
            per_worker,
            dask.workers,
            caps,
        )
        .map_err(|e| {
            index.release(&key);
            refuse(e.reason(), e.to_string())
        })?;
    if let (fit, Some(stopped)) = fitted {
        dask.capped = Some(capped_message(fit, dask.max, &stopped));
        dask.workers = fit;
        dask.min = dask.min.min(fit);
    }
    Ok(())
}

/// Parses and bounds the merged request.
fn effective_resources(
    request: &crate::api::v1alpha1::ResourceRequest,
    profile: &WorkspaceProfile,
) -> Result<EffectiveResources, Refusal> {
    bounded_resources(
        request,
        profile.spec.max_resources.as_ref(),
        &profile.name_any(),
        "",
        "maxResources",
    )
}

/// Parses `request` and bounds it by `max` (the profile `pname`'s field `max_field`); messages
/// start with `what` (empty for the workspace, "Dask workers' " for its workers).
pub(crate) fn bounded_resources(
    request: &crate::api::v1alpha1::ResourceRequest,
    max: Option<&ResourceRequest>,
    pname: &str,
    what: &str,
    max_field: &str,
) -> Result<EffectiveResources, Refusal> {
    let cpu_q = request.cpu.as_deref().unwrap_or(policy::DEFAULT_CPU);
    let memory_q = request.memory.as_deref().unwrap_or(policy::DEFAULT_MEMORY);
    let invalid = |field: &str, e: policy::QuantityError| {
        refuse(reason::INVALID_RESOURCES, format!("{what}{field}: {e}"))
    };
    let cpu = parse_cpu_millis(cpu_q).map_err(|e| invalid("cpu", e))?;
    let memory = parse_bytes(memory_q).map_err(|e| invalid("memory", e))?;
    let gpus = request.gpu_count();
    if cpu == 0 || memory == 0 || gpus < 0 {
        return Err(refuse(
            reason::INVALID_RESOURCES,
            format!(
                "{what}cpu ({cpu_q}) and memory ({memory_q}) must be more than 0 and gpus ({gpus}) at least 0"
            ),
        ));
    }
    if let Some(max) = max {
        let exceeds = |field: &str, value: String, max: &str| {
            refuse(
                reason::RESOURCES_EXCEED_PROFILE,
                format!(
                    "{what}{field} {value} exceeds the maximum {max} of WorkspaceProfile {pname}"
                ),
            )
        };
        let invalid_max = |field: &str, e: policy::QuantityError| {
            refuse(
                reason::INVALID_PROFILE,
                format!("WorkspaceProfile {pname} has an invalid {max_field}.{field}: {e}"),
            )
        };
        if let Some(max_cpu) = &max.cpu
            && cpu > parse_cpu_millis(max_cpu).map_err(|e| invalid_max("cpu", e))?
        {
            return Err(exceeds("cpu", format_cpu_millis(cpu), max_cpu));
        }
        if let Some(max_memory) = &max.memory
            && memory > parse_bytes(max_memory).map_err(|e| invalid_max("memory", e))?
        {
            return Err(exceeds("memory", format_bytes(memory), max_memory));
        }
        if let Some(max_gpus) = max.gpus
            && gpus > max_gpus
        {
            return Err(exceeds("gpus", gpus.to_string(), &max_gpus.to_string()));
        }
        // A maximum `gpuType` pins the model the profile may use (and is the type of a request
        // that names none; see below).
        if let (Some(max_type), Some(t)) = (&max.gpu_type, &request.gpu_type)
            && max_type != t
        {
            return Err(refuse(
                reason::RESOURCES_EXCEED_PROFILE,
                format!(
                    "{what}gpuType {t} is not allowed by WorkspaceProfile {pname} (only {max_type})"
                ),
            ));
        }
    }
    let pinned_type = max.and_then(|m| m.gpu_type.clone()).filter(|_| gpus > 0);
    Ok(EffectiveResources {
        cpu: format_cpu_millis(cpu),
        memory: format_bytes(memory),
        gpus,
        gpu_type: request.gpu_type.clone().or(pinned_type),
    })
}

/// The data sources `wanted` by `user` (running in `namespace`), sorted by name, after
/// existence, access and conflict checks.
pub(crate) fn data_sources(
    wanted: &[String],
    user: &str,
    namespace: &str,
    deref: &Dereferenced,
    home_mount: &str,
) -> Result<Vec<(String, DataSourceSpec)>, Refusal> {
    let wanted: BTreeSet<&String> = wanted.iter().collect();
    let mut out = Vec::with_capacity(wanted.len());
    // The paths of the pod's own volumes (the operator's: its catalogue and iRODS files).
    let mut mounts: BTreeMap<String, String> = BTreeMap::from([
        (
            policy::data::POD_CATALOG_DIR.to_owned(),
            "the data catalogue".to_owned(),
        ),
        (
            policy::data::POD_IRODS_DIR.to_owned(),
            "the iRODS client's files".to_owned(),
        ),
        (
            policy::desktop::POD_DESKTOP_DIR.to_owned(),
            "the QGIS desktop's settings".to_owned(),
        ),
    ]);
    mounts.insert(normalize_path(home_mount), "the home volume".to_owned());
    let mut env_prefixes: BTreeMap<String, String> = BTreeMap::new();
    for name in wanted {
        let source = deref
            .data_sources
            .iter()
            .find(|d| d.name_any() == *name)
            .ok_or_else(|| {
                refuse(
                    reason::DATA_SOURCE_NOT_FOUND,
                    format!("DataSource {name} does not exist"),
                )
            })?;
        let spec = &source.spec;
        if !allowed(&spec.allowed_groups, &deref.groups) {
            return Err(refuse(
                reason::DATA_SOURCE_FORBIDDEN,
                format!(
                    "DataSource {name} is open only to groups {}; user {} is in {}",
                    format_groups(&spec.allowed_groups),
                    user,
                    format_groups(&deref.groups)
                ),
            ));
        }
        well_formed(name, spec)?;
        credentials_exist(name, spec, deref, namespace)?;
        csi_driver_fits(name, spec, deref)?;
        endpoint_answers(name, spec, deref)?;
        let mounted = spec.nfs.is_some() || spec.pvc.is_some() || spec.csi.is_some();
        if mounted {
            let mount_path = spec.mount_path.as_deref().unwrap_or_default();
            let path = normalize_path(mount_path);
            if let Some(other) = mounts.insert(path, format!("DataSource {name}")) {
                return Err(refuse(
                    reason::DATA_SOURCE_CONFLICT,
                    format!(
                        "DataSource {name} would be mounted at {mount_path}, where {other} is mounted"
                    ),
                ));
            }
        }
        if let Some(other) = env_prefixes.insert(names::data_env_prefix(name), name.clone()) {
            return Err(refuse(
                reason::DATA_SOURCE_CONFLICT,
                format!(
                    "DataSources {other} and {name} would share the environment prefix {}",
                    names::data_env_prefix(name)
                ),
            ));
        }
        out.push((name.clone(), spec.clone()));
    }
    Ok(out)
}

/// The rules of the DataSource CRD that a catalogue read without the API server may break
/// ([`policy::data::spec_problem`]).
fn well_formed(name: &str, spec: &DataSourceSpec) -> Result<(), Refusal> {
    match policy::data::spec_problem(spec) {
        Some(problem) => Err(refuse(
            reason::DATA_SOURCE_INVALID,
            format!("DataSource {name}: {problem}"),
        )),
        None => Ok(()),
    }
}

/// The Secrets the user's credentials and the CSI driver need exist (when the caller read them).
fn credentials_exist(
    name: &str,
    spec: &DataSourceSpec,
    deref: &Dereferenced,
    namespace: &str,
) -> Result<(), Refusal> {
    let Some(secrets) = &deref.credential_secrets else {
        return Ok(());
    };
    let missing = |secret: &str, why: String| {
        Err(refuse(
            reason::DATA_CREDENTIALS_NOT_FOUND,
            format!(
                "DataSource {name}: Secret {secret} ({why}) does not exist in namespace {namespace}"
            ),
        ))
    };
    if let Some((group, secret)) = policy::data::credentials_for(spec, &deref.groups)
        && !secrets.contains(&secret.name)
    {
        let why = match group {
            Some(group) => format!("credentials of group {group}"),
            None => "credentials".to_owned(),
        };
        return missing(&secret.name, why);
    }
    if let Some(secret) = spec
        .csi
        .as_ref()
        .and_then(|c| c.node_publish_secret.as_ref())
        && !secrets.contains(&secret.name)
    {
        return missing(&secret.name, "csi.nodePublishSecret".to_owned());
    }
    Ok(())
}

/// The s3 endpoint answered, when the caller probed it ([`Dereferenced::unreachable`]).
fn endpoint_answers(
    name: &str,
    spec: &DataSourceSpec,
    deref: &Dereferenced,
) -> Result<(), Refusal> {
    let Some(endpoint) = spec.s3.as_ref().map(|s3| &s3.endpoint) else {
        return Ok(());
    };
    match deref.unreachable.get(endpoint) {
        Some(why) => Err(refuse(
            reason::DATA_ENDPOINT_UNREACHABLE,
            format!("DataSource {name}: endpoint {endpoint} unreachable: {why}"),
        )),
        None => Ok(()),
    }
}

/// The CSI driver is installed and supports the asked mode (when the caller read the drivers).
fn csi_driver_fits(name: &str, spec: &DataSourceSpec, deref: &Dereferenced) -> Result<(), Refusal> {
    let (Some(csi), Some(drivers)) = (&spec.csi, &deref.csi_drivers) else {
        return Ok(());
    };
    let Some(modes) = drivers.get(&csi.driver) else {
        return Err(refuse(
            reason::CSI_DRIVER_NOT_FOUND,
            format!(
                "DataSource {name}: CSI driver {} is not installed in the cluster (no CSIDriver {})",
                csi.driver, csi.driver
            ),
        ));
    };
    // A CSIDriver without volumeLifecycleModes supports Persistent only (storage.k8s.io/v1).
    let supports = |mode: &str| {
        if modes.is_empty() {
            mode == "Persistent"
        } else {
            modes.iter().any(|m| m == mode)
        }
    };
    let wanted = match csi.mode {
        CsiMode::Auto => None,
        CsiMode::Ephemeral => Some("Ephemeral"),
        CsiMode::Persistent => Some("Persistent"),
    };
    let fits = match wanted {
        Some(mode) => supports(mode),
        None => supports("Ephemeral") || supports("Persistent"),
    };
    if !fits {
        let asked = wanted.unwrap_or("Ephemeral or Persistent");
        let offered = if modes.is_empty() {
            "Persistent".to_owned()
        } else {
            modes.join(", ")
        };
        return Err(refuse(
            reason::CSI_DRIVER_MODE_UNSUPPORTED,
            format!(
                "DataSource {name}: CSI driver {} supports {offered} volumes, not {asked}",
                csi.driver
            ),
        ));
    }
    Ok(())
}

fn normalize_path(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The pool reduced to what the pod needs. GPU settings only when the workspace uses GPUs.
pub fn place(pool: &NodePool, resources: &EffectiveResources) -> PlacedPool {
    let spec = &pool.spec;
    let mut node_selector = spec.node_selector.clone();
    let gpu = spec.gpu.as_ref().filter(|_| resources.gpus > 0);
    if let (Some(gpu), Some(t)) = (gpu, &resources.gpu_type) {
        node_selector.insert(gpu.type_label.clone(), t.clone());
    }
    PlacedPool {
        name: pool.name_any(),
        purpose: spec.purpose,
        node_selector,
        tolerations: spec.tolerations.clone(),
        affinity: spec.affinity.clone(),
        gpu_resource_name: gpu.map(|g| g.resource_name.clone()),
        priority_class_name: spec.priority_class_name.clone(),
    }
}

/// What a validated workspace claims on its pool: its effective resources there, when it is to
/// run (a stopped workspace claims nothing).
pub fn claim(v: &ValidatedWorkspace) -> Option<Claim> {
    let pool = v
        .pool
        .as_ref()
        .filter(|_| v.desired_state == DesiredState::Running)?;
    let request = ResourceRequest {
        cpu: Some(v.resources.cpu.clone()),
        memory: Some(v.resources.memory.clone()),
        gpus: Some(v.resources.gpus),
        gpu_type: None,
    };
    Some(Claim {
        pool: pool.name.clone(),
        user: v.user.clone(),
        groups: v.groups.clone(),
        usage: usage_of(&request),
    })
}

/// Admission of `v` (Workspace `key`) to its pool's caps, given everything else `index` holds
/// there: reserves its [`claim`] when it fits (the refusal names the cap otherwise, as
/// `UserCapExceeded`, `GroupCapExceeded` or `InvalidNodePool`); a workspace that claims nothing
/// releases whatever it held. `pools` are those `validate` saw.
pub fn admit(
    index: &mut UsageIndex,
    key: &str,
    v: &ValidatedWorkspace,
    pools: &[NodePool],
) -> Result<(), Refusal> {
    let Some(claim) = claim(v) else {
        index.release(key);
        return Ok(());
    };
    let caps = pools
        .iter()
        .find(|p| p.name_any() == claim.pool)
        .and_then(|p| p.spec.caps.as_ref());
    index.admit(key, claim, caps).map_err(|e| {
        index.release(key);
        refuse(e.reason(), e.to_string())
    })
}

#[cfg(test)]
#[path = "test_support.rs"]
pub(crate) mod test_support;

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "dask_tests.rs"]
mod dask_tests;
