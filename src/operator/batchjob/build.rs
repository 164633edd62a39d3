//! Pure builders: a [`ValidatedBatchJob`] on a Kubernetes pool in, a `batch/v1` Job (and the
//! catalogue ConfigMap of its data sources) out. Deterministic output.
//!
//! The pod is a workspace pod's ([`placed_pod_spec`]: no service-account token nor service
//! links, non-root with the operator's uid and fsGroup, RuntimeDefault seccomp, the pool's node
//! selector, tolerations, affinity and priority class) with `restartPolicy: Never` (the Job
//! retries by making a new pod, `backoffLimit` times); one container, [`CONTAINER_NAME`], runs
//! the job's command without a shell in the profile's image, with the profile's and the job's
//! environment and the data sources' (a Secret's key as a `secretKeyRef`, never inline), in
//! the job's working directory (else the home directory), its resources as requests and limits
//! (GPUs as the pool's GPU resource); it mounts the owner's home volume (the default server's
//! claim) and the data sources as a workspace does (`nfs`, `pvc`, ephemeral CSI volumes, the
//! Intake catalogue, the iRODS files made by the same init container).
//!
//! The Job: `backoffLimit`, `activeDeadlineSeconds` from `deadlineSeconds`,
//! `ttlSecondsAfterFinished` from the operator's settings, the controller owner reference to
//! the BatchJob, labels ([`job_labels`]). On a pool with a Kueue `LocalQueue` it is created with
//! `suspend: true` and the [`KUEUE_QUEUE_LABEL`]: Kueue admits it (unsuspends it) under its
//! ClusterQueue's quotas; the operator never touches `suspend` afterwards.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PersistentVolumeClaim, PodSpec, PodTemplateSpec,
    ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{BATCHJOB_LABEL, BatchSettings, KUEUE_QUEUE_LABEL};
use crate::api::v1alpha1::CsiMode;
use crate::config::OperatorConfig;
use crate::operator::workspace::USER_LABEL;
use crate::operator::workspace::build::{
    CATALOG_KEY, DataOwner, MANAGED_BY, TERMINATION_GRACE_PERIOD_SECONDS, container_resources,
    container_security_context, csi_mode, data_paths, data_volumes_for, env_var,
    home_and_data_volumes, home_claim, irods_init_container_for, placed_pod_spec, workspace_labels,
};
use crate::policy::batch::{BatchTarget, ValidatedBatchJob};
use crate::policy::{data, names};

/// `app.kubernetes.io/name` of a BatchJob's objects.
pub const APP_NAME: &str = "atelier-batchjob";
/// `app.kubernetes.io/component` of a BatchJob's objects.
pub const COMPONENT: &str = "batchjob";
/// The job's container.
pub const CONTAINER_NAME: &str = "job";
/// Variable naming the BatchJob in its container.
pub const JOB_NAME_ENV: &str = "ATELIER_BATCHJOB";

const API_VERSION: &str = "atelier.dev/v1alpha1";
const KIND: &str = "BatchJob";

/// Name of the ConfigMap holding a job's Intake catalogue: `bj-<job>-data`.
pub fn catalog_config_map_name(job: &str) -> String {
    names::dns_label("bj-", job, "-data")
}

/// The labels of the pods: user and BatchJob (the pod watch selects on [`BATCHJOB_LABEL`]),
/// the app's name and component. Not the operator's managed-by label: the Workspace
/// controller's pod cache holds only workspace pods.
pub fn pod_labels(v: &ValidatedBatchJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            names::label_value(&v.name),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            COMPONENT.to_owned(),
        ),
        (USER_LABEL.to_owned(), names::label_value(&v.user)),
        (BATCHJOB_LABEL.to_owned(), names::label_value(&v.name)),
    ])
}

/// The labels of the Job and the catalogue: the pods', the managed-by label, and on a Kueue
/// pool the [`KUEUE_QUEUE_LABEL`].
pub fn job_labels(v: &ValidatedBatchJob) -> BTreeMap<String, String> {
    let mut labels = pod_labels(v);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGED_BY.to_owned(),
    );
    if let Some(queue) = local_queue(v) {
        labels.insert(KUEUE_QUEUE_LABEL.to_owned(), queue.to_owned());
    }
    labels
}

fn local_queue(v: &ValidatedBatchJob) -> Option<&str> {
    match &v.target {
        BatchTarget::Kubernetes { local_queue } => local_queue.as_deref(),
        BatchTarget::Slurm(_) => None,
    }
}

/// The controller owner reference to the BatchJob.
pub fn owner_reference(v: &ValidatedBatchJob) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        name: v.name.clone(),
        uid: v.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(v: &ValidatedBatchJob, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(job_labels(v)),
        owner_references: Some(vec![owner_reference(v)]),
        ..ObjectMeta::default()
    }
}

/// The owner's home claim (`v.home`: the default server's) as the Workspace controller makes it
/// for the user's default Workspace ([`crate::operator::workspace::build::build_pvc`]): the same
/// name, labels (those of Workspace `server_label(user, "")`, so that its watch and its cleanup
/// see it as that Workspace's), size and storage class from the profile, and no owner
/// reference: a home outlives the jobs that made it. The reconciliation applies it (with the
/// Workspace controller's field manager) before the Job, when the PVC cache does not show it; a
/// later Workspace finds it and leaves it as it is.
pub fn build_home_claim(v: &ValidatedBatchJob) -> PersistentVolumeClaim {
    let workspace = names::server_label(&v.user, "");
    home_claim(
        ObjectMeta {
            name: Some(v.home.claim_name.clone()),
            namespace: Some(v.namespace.clone()),
            labels: Some(workspace_labels(&workspace, &v.user, "")),
            ..ObjectMeta::default()
        },
        &v.home,
    )
}

/// The data sources of `v` that a job cannot mount: CSI sources attached as a PersistentVolume
/// (`Persistent`, or `Auto` without an Ephemeral-capable driver), whose volume and claim are a
/// workspace's children. The reconciliation refuses a job naming one.
pub fn unmountable_sources(
    v: &ValidatedBatchJob,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> Vec<String> {
    v.data_sources
        .iter()
        .filter(|(_, spec)| {
            spec.csi
                .as_ref()
                .is_some_and(|csi| csi_mode(csi, csi_drivers) == CsiMode::Persistent)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

fn data_owner(v: &ValidatedBatchJob) -> DataOwner<'_> {
    DataOwner {
        name: &v.name,
        catalog: catalog_config_map_name(&v.name),
        sources: &v.data_sources,
        groups: &v.groups,
    }
}

/// The Intake catalogue of the job's data sources (as a workspace's), owned by the BatchJob;
/// `None` without data sources.
pub fn build_catalog_config_map(v: &ValidatedBatchJob) -> Option<ConfigMap> {
    if v.data_sources.is_empty() {
        return None;
    }
    Some(ConfigMap {
        metadata: meta(v, catalog_config_map_name(&v.name)),
        data: Some(BTreeMap::from([(
            CATALOG_KEY.to_owned(),
            data::intake_catalog(&v.data_sources, &v.groups, true),
        )])),
        ..ConfigMap::default()
    })
}

/// The container's environment, sorted by name: the profile's and the job's, then the data
/// sources' (which win), then [`JOB_NAME_ENV`].
pub fn job_env(v: &ValidatedBatchJob) -> Vec<EnvVar> {
    let mut env: BTreeMap<String, EnvVar> = BTreeMap::new();
    for (name, value) in &v.env {
        env.insert(
            name.clone(),
            env_var(name.clone(), data::EnvValue::Plain(value.clone())),
        );
    }
    for (name, value) in data::data_env(&v.data_sources, &v.groups, &data_paths()) {
        env.insert(name.clone(), env_var(name, value));
    }
    env.insert(
        JOB_NAME_ENV.to_owned(),
        env_var(
            JOB_NAME_ENV.to_owned(),
            data::EnvValue::Plain(v.name.clone()),
        ),
    );
    env.into_values().collect()
}

/// The Job of a BatchJob on a Kubernetes pool (`csi_drivers`: the cluster's CSIDrivers and
/// their modes, as for a workspace's pod).
pub fn build_job(
    v: &ValidatedBatchJob,
    cfg: &OperatorConfig,
    settings: &BatchSettings,
    csi_drivers: Option<&BTreeMap<String, Vec<String>>>,
) -> Job {
    let mut resources = container_resources(&v.resources, &v.pool);
    let (volumes, mounts) =
        home_and_data_volumes(&v.home, data_volumes_for(&data_owner(v), csi_drivers));

    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(v.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        // The program and its arguments, run without a shell.
        command: Some(v.command.clone()),
        env: Some(job_env(v)),
        working_dir: Some(
            v.working_dir
                .clone()
                .unwrap_or_else(|| v.home.mount_path.clone()),
        ),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources.clone()),
            claims: None,
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    resources.retain(|k, _| k == "cpu" || k == "memory");
    let init_containers =
        irods_init_container_for(&v.image, &v.data_sources, &v.groups, cfg, resources)
            .map(|c| vec![c]);

    let queued = local_queue(v).is_some();
    Job {
        metadata: meta(v, v.name.clone()),
        spec: Some(JobSpec {
            // Created suspended on a Kueue pool: Kueue unsuspends it when it admits it.
            suspend: queued.then_some(true),
            backoff_limit: Some(v.backoff_limit),
            active_deadline_seconds: v.deadline_seconds,
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(v)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    init_containers,
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
                    ..placed_pod_spec(&v.pool, cfg)
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}
