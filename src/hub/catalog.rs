//! The hub's catalogue: the WorkspaceProfiles, NodePools and DataSources users may choose from,
//! and the check of a start against them.
//!
//! The catalogue comes from the manifests an admin `kubectl apply`s: `--catalog PATH` (a YAML
//! file or a directory of `*.yaml`/`*.yml` files, multi-document; [`Catalog::load`]), or, for the
//! kubernetes backend without `--catalog`, the cluster's own resources ([`spawn_refresh`], listed
//! every [`REFRESH_INTERVAL`]; the hub needs `list` on `workspaceprofiles`, `nodepools` and
//! `datasources` of `atelier.dev`, cluster-wide, as the chart's `<hub>-catalog` ClusterRole
//! grants).
//!
//! Policy is not written twice: [`Catalog::check`] builds the Workspace the kubernetes backend
//! would apply ([`build_workspace`]) and runs the operator's [`validate`] on it, with the
//! catalogue in place of what the operator's `dereference` reads, and no other workspace (caps
//! stay the operator's: they depend on what runs). The spawn form shows what
//! [`Catalog::choices_for`] returns: the profiles, pools and data sources the user's groups
//! allow, with their limits.
//!
//! An empty catalogue (the embedded `atelier up`) means one default profile and no check.
//!
//! # Secrets
//!
//! Beside the `atelier.dev` kinds, the catalogue holds `apiVersion: v1, kind: Secret` manifests
//! (values in `data`, base64, or `stringData`, text; `stringData` wins, as in Kubernetes): the
//! credentials the DataSources name (`credentialsSecret`, `credentialsByGroup`), which the
//! `local` backend has no cluster to read them from. Their values are [`SecretValue`]s, which
//! print as `***`; [`Catalog::names`] lists them as `Secret/<name>`, and no error or warning
//! ever shows a value. A DataSource naming a Secret the catalogue lacks is a warning at load
//! ([`Catalog::warnings`]) and a refusal (`DataCredentialsNotFound`) of a local start that
//! needs it ([`CredentialsFrom::Catalog`]). With the kubernetes backend the Secrets are the
//! cluster's, and the operator checks them.
//!
//! What a local workspace gets of its data sources (environment, Intake catalogue, iRODS files)
//! is [`Catalog::local_data`], from `policy::data` with the values read from these Secrets, and
//! for a QGIS desktop its seed (`policy::desktop`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::ResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::v1alpha1::{
    DataSource, DataSourceSpec, NodePool, PoolPurpose, ResourceRequest, WorkspaceKind,
    WorkspaceProfile,
};
use crate::backend::kubernetes::{SpecError, build_workspace, groups_annotation, workspace_name};
use crate::backend::{
    DATA_CATALOG_FILE, DATA_FILES, IRODS_AUTHENTICATION_FILE, IRODS_ENVIRONMENT_FILE, LocalDask,
    SpawnRequest,
};
use crate::config::OperatorConfig;
use crate::policy::data::{self as data, DataPaths, EnvValue};
use crate::policy::desktop;
use crate::policy::workspace::validate;
use crate::policy::workspace::{Dereferenced, Refusal, ValidatedWorkspace, parse_groups, reason};
use crate::policy::{self, allowed, names};

/// How often the kubernetes backend's hub lists the catalogue's resources again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The API group and version of the catalogue's kinds.
const API_VERSION: &str = "atelier.dev/v1alpha1";

/// The namespace of the Workspace a check builds (the hub's checks do not depend on it).
const CHECK_NAMESPACE: &str = "atelier";

/// Most GPUs a request may name (the CRD's bound).
const MAX_GPUS: i32 = 16;

/// Profiles, pools and data sources, in the order they were read, and the Secrets.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// WorkspaceProfiles.
    pub profiles: Vec<WorkspaceProfile>,
    /// NodePools.
    pub pools: Vec<NodePool>,
    /// DataSources.
    pub data_sources: Vec<DataSource>,
    /// Secrets (`v1` `Secret` manifests) by name: their keys and values (see the module
    /// documentation).
    pub secrets: BTreeMap<String, BTreeMap<String, SecretValue>>,
}

/// A value of a catalogue Secret. `Debug` and `Display` print `***`; only
/// [`expose`](Self::expose) gives the value, to the one place that hands it to a workspace.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where the Secrets of a start's data sources are, for [`Catalog::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsFrom {
    /// The catalogue (the `local` backend): a Secret it lacks refuses the start.
    Catalog,
    /// The cluster (the `kubernetes` backend): the operator checks them; the hub does not.
    Cluster,
}

/// An s3 endpoint a workspace's data source reads from (the hub checks it answers before a
/// local start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataEndpoint {
    /// The DataSource.
    pub source: String,
    /// Its `s3.endpoint` URL.
    pub url: String,
}

/// What a workspace of the `local` backend gets of its data sources ([`Catalog::local_data`]).
/// `Debug` names the variables and files, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LocalData {
    /// The environment of `policy::data::data_env`, values read from the Secrets, without the
    /// variables of the files ([`DATA_FILES`]: the backend points them at where it writes them).
    pub env: BTreeMap<String, String>,
    /// The files, by name ([`DATA_CATALOG_FILE`], [`IRODS_ENVIRONMENT_FILE`],
    /// [`IRODS_AUTHENTICATION_FILE`], and a QGIS desktop's `policy::desktop::SETTINGS_FILE`).
    pub files: BTreeMap<String, String>,
    /// The s3 endpoints, by source.
    pub endpoints: Vec<DataEndpoint>,
}

impl std::fmt::Debug for LocalData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalData")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// A catalogue file that cannot be read, naming the file, the document (1-based) and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", document.map(|d| format!(", document {d}")).unwrap_or_default())]
pub struct CatalogError {
    /// The file.
    pub file: PathBuf,
    /// The document in it, when the error is one document's.
    pub document: Option<usize>,
    /// What is wrong (a field path first when the error is a field's).
    pub message: String,
}

/// Why a start may not go ahead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The user options are malformed (400, naming the field).
    #[error("{0}")]
    Invalid(SpecError),
    /// A rule refuses it (403, naming the reason and the rule).
    #[error("{}: {}", .0.reason, .0.message)]
    Refused(Refusal),
}

/// Resources as the spawn form shows them (quantities canonical, e.g. `2`, `8Gi`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ResourceView {
    /// CPU cores.
    pub cpu: Option<String>,
    /// Memory.
    pub memory: Option<String>,
    /// GPUs.
    pub gpus: Option<i32>,
    /// GPU model.
    pub gpu_type: Option<String>,
}

/// A node pool a profile's workspace may be placed on by this user.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolChoice {
    /// NodePool name (the form's `nodePool` value).
    pub name: String,
    /// What the form shows.
    pub display_name: String,
    /// `interactive`, `gpu` or `batch`.
    pub purpose: &'static str,
    /// GPU models offered (GPU pools only; a profile's pinned `gpuType` narrows them).
    pub gpu_types: Vec<String>,
    /// Most GPUs one workspace may ask for there (GPU pools only): the profile's maximum,
    /// bounded by the pool's per-user cap.
    pub max_gpus: Option<i32>,
    /// Whether it is the profile's default pool.
    pub default: bool,
}

/// A data source this user may mount.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataSourceChoice {
    /// DataSource name (the form's value).
    pub name: String,
    /// Its description.
    pub description: String,
    /// `s3`, `irods`, `nfs`, `pvc`, `stac` (a STAC catalogue only) or `ogc` (OGC services
    /// only: connections of a QGIS desktop).
    pub kind: &'static str,
    /// Where it appears in the workspace.
    pub mount_path: String,
    /// Read-only.
    pub read_only: bool,
}

/// A profile the user may start, with what they may choose for it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileChoice {
    /// WorkspaceProfile name (the form's `profile` value; empty for the default profile of an
    /// empty catalogue).
    pub name: String,
    /// What the form shows.
    pub display_name: String,
    /// A line under it.
    pub description: String,
    /// `jupyter`, `rstudio` or `qgis`.
    pub kind: &'static str,
    /// What a workspace gets when it asks for nothing.
    pub default_resources: ResourceView,
    /// The most it may ask for (`None` fields: unbounded).
    pub max_resources: ResourceView,
    /// Pools the user may pick (GPU pools only when the profile allows GPUs).
    pub pools: Vec<PoolChoice>,
    /// Every GPU model of those pools (empty: no GPU choice).
    pub gpu_types: Vec<String>,
    /// Most GPUs over those pools (0: no GPU choice).
    pub max_gpus: i32,
    /// Data sources the user may mount.
    pub data_sources: Vec<DataSourceChoice>,
    /// The Dask cluster the profile offers (`None`: none).
    pub dask: Option<DaskChoice>,
}

/// The Dask cluster a profile offers, as the spawn form shows it: a checkbox (checked when the
/// profile's defaults enable a cluster) and a "workers: min–max" pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaskChoice {
    /// Whether a workspace gets a cluster when it asks for nothing.
    pub enabled: bool,
    /// Default workers kept when idle.
    pub min: i32,
    /// Default most workers.
    pub max: i32,
    /// The most workers the profile allows (the inputs' bound).
    pub max_workers: i32,
}

impl DaskChoice {
    /// What `profile` offers (`validate`'s defaults: 1-4 workers within `maxWorkers`).
    fn of(profile: &WorkspaceProfile) -> Option<DaskChoice> {
        let offer = profile.spec.dask.as_ref()?;
        let defaults = offer.defaults.as_ref();
        let (min, max) = defaults
            .and_then(|d| d.workers)
            .map_or(LOCAL_DEFAULT_WORKERS, |w| (w.min, w.max));
        Some(DaskChoice {
            enabled: defaults.and_then(|d| d.enabled).unwrap_or(false),
            min: min.min(offer.max_workers),
            max: max.min(offer.max_workers),
            max_workers: offer.max_workers,
        })
    }

    /// What a hub without a catalogue offers (the local backend's built-in cluster).
    fn built_in() -> DaskChoice {
        let (min, max) = LOCAL_DEFAULT_WORKERS;
        let bound = i32::try_from(local_dask_bound()).unwrap_or(i32::MAX);
        DaskChoice {
            enabled: false,
            min: min.min(bound),
            max,
            max_workers: max.max(bound),
        }
    }
}

/// The catalogue shared by the hub's handlers and its refresh task.
#[derive(Clone, Default)]
pub struct SharedCatalog(Arc<RwLock<Arc<Catalog>>>);

impl SharedCatalog {
    /// A shared catalogue holding `catalog`.
    pub fn new(catalog: Catalog) -> SharedCatalog {
        SharedCatalog(Arc::new(RwLock::new(Arc::new(catalog))))
    }

    /// The catalogue as it is now.
    pub fn get(&self) -> Arc<Catalog> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the catalogue.
    pub fn set(&self, catalog: Catalog) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
    }
}

impl std::fmt::Debug for SharedCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.get();
        f.debug_struct("SharedCatalog")
            .field("profiles", &c.profiles.len())
            .field("pools", &c.pools.len())
            .field("data_sources", &c.data_sources.len())
            .field("secrets", &c.secrets.len())
            .finish()
    }
}

fn cpu_view(q: &Option<String>) -> Option<String> {
    q.as_ref().map(|q| {
        policy::parse_cpu_millis(q)
            .map(policy::format_cpu_millis)
            .unwrap_or_else(|_| q.clone())
    })
}

fn memory_view(q: &Option<String>) -> Option<String> {
    q.as_ref().map(|q| {
        policy::parse_bytes(q)
            .map(policy::format_bytes)
            .unwrap_or_else(|_| q.clone())
    })
}

fn resource_view(r: Option<&ResourceRequest>) -> ResourceView {
    r.map(|r| ResourceView {
        cpu: cpu_view(&r.cpu),
        memory: memory_view(&r.memory),
        gpus: r.gpus,
        gpu_type: r.gpu_type.clone(),
    })
    .unwrap_or_default()
}

fn source_kind(d: &DataSource) -> &'static str {
    let s = &d.spec;
    if s.s3.is_some() {
        "s3"
    } else if s.irods.is_some() {
        "irods"
    } else if s.nfs.is_some() {
        "nfs"
    } else if s.pvc.is_some() {
        "pvc"
    } else if s.stac.is_some() {
        "stac"
    } else {
        "ogc"
    }
}

/// Deserializes one document, naming the field at fault.
fn parse_doc<T: DeserializeOwned>(doc: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("field {path}: {}", e.into_inner())
        }
    })
}

/// Reads a `v1` `Secret` manifest: its name and values (UTF-8 text: they become environment
/// variables and files). No error quotes a value: a malformed one is named by its key only.
fn parse_secret(doc: Value) -> Result<(String, BTreeMap<String, SecretValue>), String> {
    use k8s_openapi::api::core::v1::Secret;
    let secret: Secret = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let under = |field: &str| path == field || path.starts_with(&format!("{field}."));
        if under("data") {
            // The inner error may quote the value (or a byte of it).
            match path.strip_prefix("data.") {
                Some(key) => format!(
                    "field data.{key}: not base64 (data holds base64; stringData holds text)"
                ),
                None => "field data: not a map of keys to base64 values".to_owned(),
            }
        } else if under("stringData") {
            match path.strip_prefix("stringData.") {
                Some(key) => format!("field stringData.{key}: not a string"),
                None => "field stringData: not a map of keys to strings".to_owned(),
            }
        } else if path == "." {
            e.into_inner().to_string()
        } else {
            format!("field {path}: {}", e.into_inner())
        }
    })?;
    let name = secret.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("field metadata.name: missing (a Secret needs a name)".into());
    }
    if !names::is_dns_subdomain(&name) {
        return Err(format!(
            "field metadata.name: {name:?} is not a Kubernetes name"
        ));
    }
    // Kubernetes' rule for Secret keys (`IsConfigMapKey`): `[-._a-zA-Z0-9]+`.
    let check_key = |field: &str, key: &str| {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "field {field}: {key:?} is not a valid Secret key ([-._a-zA-Z0-9]+)"
            ))
        }
    };
    let mut values = BTreeMap::new();
    for (key, bytes) in secret.data.unwrap_or_default() {
        check_key("data", &key)?;
        let text = String::from_utf8(bytes.0).map_err(|_| {
            format!(
                "field data.{key}: not UTF-8 text once decoded (the values become environment \
                 variables)"
            )
        })?;
        values.insert(key, SecretValue(text));
    }
    for (key, text) in secret.string_data.unwrap_or_default() {
        check_key("stringData", &key)?;
        values.insert(key, SecretValue(text));
    }
    Ok((name, values))
}

impl Catalog {
    /// Whether it holds nothing (then there is one default profile and no check).
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty() && self.pools.is_empty() && self.data_sources.is_empty()
    }

    /// Reads a YAML file, or every `*.yaml`/`*.yml` file of a directory (in name order).
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let io_error = |file: &Path, e: std::io::Error| CatalogError {
            file: file.to_owned(),
            document: None,
            message: e.to_string(),
        };
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| io_error(path, e))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_owned()]
        };
        let mut catalog = Catalog::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| io_error(&file, e))?;
            catalog.add_yaml(&file, &text)?;
        }
        for warning in catalog.warnings() {
            tracing::warn!(path = %path.display(), "{warning}");
        }
        Ok(catalog)
    }

    /// What is amiss without being an error: each DataSource's Secret (`credentialsSecret`,
    /// every `credentialsByGroup` entry, `csi.nodePublishSecret`) the catalogue does not hold,
    /// naming the source and the Secret. A local start that needs one is refused.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.data_sources {
            for (secret, why) in crate::policy::data::named_secrets(&d.spec) {
                if !self.secrets.contains_key(&secret.name) {
                    out.push(format!(
                        "DataSource {}: Secret {} ({why}) is not in the catalogue; a start on \
                         the local backend that needs it is refused",
                        d.name_any(),
                        secret.name
                    ));
                }
            }
        }
        out
    }

    /// Adds the WorkspaceProfiles, NodePools, DataSources and (`v1`) Secrets of a
    /// multi-document YAML text read from `file`; other atelier kinds (Workspace, BatchJob) are
    /// skipped, anything else is an error, as is a name given twice.
    pub fn add_yaml(&mut self, file: &Path, text: &str) -> Result<(), CatalogError> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| CatalogError {
            file: file.to_owned(),
            document: None,
            // The first line says where; the next ones quote the text, which may be a Secret's.
            message: format!(
                "not YAML: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        })?;
        for (i, doc) in docs.into_iter().enumerate() {
            let error = |message: String| CatalogError {
                file: file.to_owned(),
                document: Some(i + 1),
                message,
            };
            if doc.is_null() {
                continue;
            }
            let field = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_owned);
            let api_version = field("apiVersion")
                .ok_or_else(|| error("field apiVersion: missing or not a string".into()))?;
            let kind =
                field("kind").ok_or_else(|| error("field kind: missing or not a string".into()))?;
            if api_version == "v1" && kind == "Secret" {
                let (name, values) =
                    parse_secret(doc).map_err(|m| error(format!("Secret: {m}")))?;
                if self.secrets.contains_key(&name) {
                    return Err(error(format!("Secret {name} is defined twice")));
                }
                self.secrets.insert(name, values);
                continue;
            }
            if !api_version.starts_with("atelier.dev/") {
                return Err(error(format!(
                    "field apiVersion: {api_version:?} is not an atelier.dev resource (nor a v1 \
                     Secret)"
                )));
            }
            let name = doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let known = matches!(
                kind.as_str(),
                "WorkspaceProfile" | "NodePool" | "DataSource"
            );
            if known && api_version != API_VERSION {
                return Err(error(format!(
                    "field apiVersion: {api_version:?} (expected {API_VERSION})"
                )));
            }
            if known && !names::is_dns_subdomain(&name) {
                return Err(error(format!(
                    "field metadata.name: {name:?} is not a Kubernetes name"
                )));
            }
            let duplicate = |what: &str| error(format!("{what} {name} is defined twice"));
            match kind.as_str() {
                "WorkspaceProfile" => {
                    let p: WorkspaceProfile = parse_doc(doc).map_err(error)?;
                    check_profile(&p).map_err(error)?;
                    if self.profiles.iter().any(|o| o.name_any() == name) {
                        return Err(duplicate("WorkspaceProfile"));
                    }
                    self.profiles.push(p);
                }
                "NodePool" => {
                    let p: NodePool = parse_doc(doc).map_err(error)?;
                    if p.spec.purpose == PoolPurpose::Gpu && p.spec.gpu.is_none() {
                        return Err(error(
                            "field spec.gpu: a gpu pool must describe its GPUs in spec.gpu".into(),
                        ));
                    }
                    if self.pools.iter().any(|o| o.name_any() == name) {
                        return Err(duplicate("NodePool"));
                    }
                    self.pools.push(p);
                }
                "DataSource" => {
                    let d: DataSource = parse_doc(doc).map_err(error)?;
                    if let Some(problem) = crate::policy::data::spec_problem(&d.spec) {
                        return Err(error(format!("field spec: {problem}")));
                    }
                    if self.data_sources.iter().any(|o| o.name_any() == name) {
                        return Err(duplicate("DataSource"));
                    }
                    self.data_sources.push(d);
                }
                "Workspace" | "BatchJob" => {}
                other => {
                    return Err(error(format!(
                        "field kind: {other:?} is not WorkspaceProfile, NodePool or DataSource"
                    )));
                }
            }
        }
        Ok(())
    }

    /// `Kind/name` of everything in it, in order (what logs show); Secrets by name only.
    pub fn names(&self) -> Vec<String> {
        let profiles = self
            .profiles
            .iter()
            .map(|p| format!("WorkspaceProfile/{}", p.name_any()));
        let pools = self
            .pools
            .iter()
            .map(|p| format!("NodePool/{}", p.name_any()));
        let sources = self
            .data_sources
            .iter()
            .map(|d| format!("DataSource/{}", d.name_any()));
        let secrets = self.secrets.keys().map(|s| format!("Secret/{s}"));
        profiles
            .chain(pools)
            .chain(sources)
            .chain(secrets)
            .collect()
    }

    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&WorkspaceProfile> {
        self.profiles.iter().find(|p| p.name_any() == name)
    }

    /// What the spawn form offers a member of `groups`: the profiles they may use, in catalogue
    /// order, each with its limits, the pools they may pick and the data sources they may
    /// mount. An empty catalogue offers one default profile.
    pub fn choices_for(&self, groups: &BTreeSet<String>) -> Vec<ProfileChoice> {
        if self.is_empty() {
            return vec![ProfileChoice {
                name: String::new(),
                display_name: "Default environment".into(),
                description: "The hub's standard environment.".into(),
                kind: "jupyter",
                default_resources: ResourceView::default(),
                max_resources: ResourceView::default(),
                pools: Vec::new(),
                gpu_types: Vec::new(),
                max_gpus: 0,
                data_sources: Vec::new(),
                dask: Some(DaskChoice::built_in()),
            }];
        }
        let groups = operator_groups(groups);
        let data_sources: Vec<DataSourceChoice> = self
            .data_sources
            .iter()
            .filter(|d| allowed(&d.spec.allowed_groups, &groups))
            .map(|d| DataSourceChoice {
                name: d.name_any(),
                description: d.spec.description.clone(),
                kind: source_kind(d),
                mount_path: d.spec.mount_path.clone().unwrap_or_default(),
                read_only: d.spec.read_only,
            })
            .collect();
        self.profiles
            .iter()
            .filter(|p| allowed(&p.spec.allowed_groups, &groups))
            .map(|p| {
                let pools = self.pools_for(p, &groups);
                let gpu_types: BTreeSet<String> =
                    pools.iter().flat_map(|p| p.gpu_types.clone()).collect();
                let max_gpus = pools.iter().filter_map(|p| p.max_gpus).max().unwrap_or(0);
                ProfileChoice {
                    name: p.name_any(),
                    display_name: p.spec.display_name.clone(),
                    description: p.spec.description.clone(),
                    kind: p.spec.kind.as_str(),
                    default_resources: resource_view(p.spec.default_resources.as_ref()),
                    max_resources: resource_view(p.spec.max_resources.as_ref()),
                    pools,
                    gpu_types: gpu_types.into_iter().collect(),
                    max_gpus,
                    data_sources: data_sources.clone(),
                    dask: DaskChoice::of(p),
                }
            })
            .collect()
    }

    /// The pools a member of `groups` may pick for a workspace of `profile`, in name order:
    /// interactive and batch pools open to them, and GPU pools when the profile allows GPUs.
    fn pools_for(&self, profile: &WorkspaceProfile, groups: &BTreeSet<String>) -> Vec<PoolChoice> {
        let max = profile.spec.max_resources.as_ref();
        let profile_gpus = max.and_then(|m| m.gpus).unwrap_or(MAX_GPUS);
        let pinned = max.and_then(|m| m.gpu_type.as_deref());
        let default_pool = profile.spec.default_node_pool.as_deref();
        let mut pools: Vec<&NodePool> = self
            .pools
            .iter()
            .filter(|p| allowed(&p.spec.allowed_groups, groups))
            .collect();
        pools.sort_by_key(|p| p.name_any());
        pools
            .into_iter()
            .filter_map(|pool| {
                let name = pool.name_any();
                let (gpu_types, max_gpus) = if pool.spec.purpose == PoolPurpose::Gpu {
                    let offered = pool
                        .spec
                        .gpu
                        .as_ref()
                        .map(|g| g.types.clone())
                        .unwrap_or_default();
                    let types: Vec<String> = match pinned {
                        Some(t) if offered.is_empty() || offered.iter().any(|o| o == t) => {
                            vec![t.to_owned()]
                        }
                        Some(_) => return None,
                        None => offered,
                    };
                    let cap = pool
                        .spec
                        .caps
                        .as_ref()
                        .and_then(|c| c.per_user.as_ref())
                        .and_then(|c| c.gpus)
                        .unwrap_or(MAX_GPUS);
                    let most = profile_gpus.min(cap).min(MAX_GPUS);
                    if most <= 0 {
                        return None;
                    }
                    (types, Some(most))
                } else {
                    (Vec::new(), None)
                };
                Some(PoolChoice {
                    display_name: pool
                        .spec
                        .display_name
                        .clone()
                        .unwrap_or_else(|| name.clone()),
                    purpose: pool.spec.purpose.as_str(),
                    default: default_pool == Some(name.as_str()),
                    name,
                    gpu_types,
                    max_gpus,
                })
            })
            .collect()
    }

    /// The profile a start that names none gets: `default_profile` when it is in the catalogue
    /// and open to `groups`, else the first profile open to them, else `default_profile` (which
    /// the check then refuses).
    pub fn default_profile_for(&self, groups: &BTreeSet<String>, default_profile: &str) -> String {
        let groups = operator_groups(groups);
        let open = |p: &&WorkspaceProfile| allowed(&p.spec.allowed_groups, &groups);
        self.profile(default_profile)
            .filter(open)
            .or_else(|| self.profiles.iter().find(open))
            .map_or_else(|| default_profile.to_owned(), |p| p.name_any())
    }

    /// Checks a start as the operator will: `Ok(None)` for an empty catalogue (no check), else
    /// `Ok(Some(profile))`, the profile the start uses (the request's, else
    /// [`default_profile_for`](Self::default_profile_for)). Caps are left to the operator; the
    /// data sources' Secrets are checked with [`CredentialsFrom::Catalog`] only.
    pub fn check(
        &self,
        request: &SpawnRequest,
        default_profile: &str,
        credentials: CredentialsFrom,
    ) -> Result<Option<String>, CheckError> {
        Ok(self
            .validated(request, default_profile, credentials)?
            .map(|ws| ws.profile))
    }

    /// The operator's `validate` of the Workspace the request makes, with the catalogue in
    /// place of the cluster (`None` for an empty catalogue). With [`CredentialsFrom::Catalog`]
    /// a data source's Secret the catalogue lacks is refused (`DataCredentialsNotFound`).
    fn validated(
        &self,
        request: &SpawnRequest,
        default_profile: &str,
        credentials: CredentialsFrom,
    ) -> Result<Option<ValidatedWorkspace>, CheckError> {
        if self.is_empty() {
            return Ok(None);
        }
        let groups = operator_groups(&request.groups.iter().cloned().collect());
        let fallback = self.default_profile_for(&groups, default_profile);
        // The check is about the catalogue's rules: a user name the cluster could not hold is the
        // backend's concern, so such a name is checked under its Kubernetes-safe form.
        let mut request = request.clone();
        if !names::is_valid_user_name(&request.user) {
            request.user = names::dns_label("", &request.user, "");
        }
        let name = workspace_name(&request.user, &request.server);
        let ws = build_workspace(&request, &name, CHECK_NAMESPACE, &fallback)
            .map_err(CheckError::Invalid)?;
        let deref = Dereferenced {
            profile: self.profile(&ws.spec.profile).cloned(),
            pools: self.pools.clone(),
            data_sources: {
                // The spec's sources, and the profile's desktop ones (`policy::desktop`).
                let desktop = self
                    .profile(&ws.spec.profile)
                    .and_then(|p| p.spec.desktop.as_ref())
                    .map(|d| d.data_sources.as_slice())
                    .unwrap_or_default();
                self.data_sources
                    .iter()
                    .filter(|d| {
                        let name = d.name_any();
                        ws.spec.data_sources.contains(&name) || desktop.contains(&name)
                    })
                    .cloned()
                    .collect()
            },
            groups,
            token: String::new(),
            credential_secrets: match credentials {
                CredentialsFrom::Catalog => Some(self.secrets.keys().cloned().collect()),
                CredentialsFrom::Cluster => None,
            },
            csi_drivers: None,
            unreachable: Default::default(),
        };
        validate(&ws, &deref, &OperatorConfig::default())
            .map(Some)
            .map_err(|mut refusal| {
                // validate names the namespace the Workspace would be in; here the Secrets are
                // the catalogue's.
                if refusal.reason == reason::DATA_CREDENTIALS_NOT_FOUND
                    && let Some(head) = refusal
                        .message
                        .strip_suffix(&format!(" in namespace {CHECK_NAMESPACE}"))
                {
                    refusal.message = format!("{head} in the hub's catalogue");
                }
                CheckError::Refused(refusal)
            })
    }

    /// What a workspace of the `local` backend gets of its data sources, for a start that
    /// passes [`check`](Self::check) with [`CredentialsFrom::Catalog`] (the same refusals
    /// otherwise): `policy::data`'s environment with the values of the catalogue's Secrets (a
    /// Secret without a key the source needs is refused, `DataCredentialsNotFound` naming the
    /// Secret and the key), the Intake catalogue ([`DATA_CATALOG_FILE`]; nothing is mounted
    /// locally, so csi, nfs and pvc sources are listed at the path they would have), for the
    /// first irods source the iRODS environment ([`IRODS_ENVIRONMENT_FILE`], the Secret's
    /// user, else `anonymous`) and, with credentials, its password file
    /// ([`IRODS_AUTHENTICATION_FILE`], obfuscated for `uid`, the uid the server runs under,
    /// with modification time `mtime`), the s3 endpoints, and for a `qgis` workspace the QGIS
    /// desktop's seed (`policy::desktop::SETTINGS_FILE`: its mounted sources as favourites,
    /// its own and the profile's `desktop.dataSources`' OGC services as connections; no
    /// credentials). The user's groups are the request's, as the operator reads them (see
    /// [`check`](Self::check)).
    pub fn local_data(
        &self,
        request: &SpawnRequest,
        default_profile: &str,
        uid: u32,
        mtime: u32,
    ) -> Result<LocalData, CheckError> {
        let Some(ws) = self.validated(request, default_profile, CredentialsFrom::Catalog)? else {
            return Ok(desktop_seed(request.kind, &[], &[]));
        };
        let sources = &ws.data_sources;
        if sources.is_empty() {
            return Ok(desktop_seed(ws.kind, &[], &ws.desktop_sources));
        }
        let groups = &ws.groups;
        let refused = |message: String| {
            CheckError::Refused(Refusal {
                reason: reason::DATA_CREDENTIALS_NOT_FOUND,
                message,
            })
        };
        let value = |source: &str, secret: &str, key: &str| -> Result<&str, CheckError> {
            let values = self.secrets.get(secret).ok_or_else(|| {
                refused(format!(
                    "DataSource {source}: Secret {secret} does not exist in the hub's catalogue"
                ))
            })?;
            values.get(key).map(SecretValue::expose).ok_or_else(|| {
                refused(format!(
                    "DataSource {source}: Secret {secret} has no key {key}"
                ))
            })
        };
        // Every key each source's credentials need, named with the source.
        let mut credentials: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, spec) in sources {
            let Some((_, secret)) = data::credentials_for(spec, groups) else {
                continue;
            };
            let keys = if spec.s3.is_some() {
                [data::AWS_ACCESS_KEY_ID, data::AWS_SECRET_ACCESS_KEY]
            } else {
                [data::IRODS_USER_NAME, data::IRODS_PASSWORD]
            };
            for key in keys {
                value(name, &secret.name, key)?;
            }
            credentials.entry(secret.name.as_str()).or_insert(name);
        }
        let paths = DataPaths {
            catalog: DATA_CATALOG_FILE.to_owned(),
            irods_environment: IRODS_ENVIRONMENT_FILE.to_owned(),
            irods_authentication: IRODS_AUTHENTICATION_FILE.to_owned(),
        };
        let file_vars: BTreeSet<&str> = DATA_FILES.iter().map(|(_, var)| *var).collect();
        let mut out = LocalData::default();
        for (var, v) in data::data_env(sources, groups, &paths) {
            if file_vars.contains(var.as_str()) {
                continue;
            }
            let v = match v {
                EnvValue::Plain(v) => v,
                EnvValue::Secret { name, key } => {
                    let source = credentials.get(name.as_str()).copied().unwrap_or("?");
                    value(source, &name, &key)?.to_owned()
                }
            };
            out.env.insert(var, v);
        }
        out.files.insert(
            DATA_CATALOG_FILE.to_owned(),
            data::intake_catalog(sources, groups, false),
        );
        out.files
            .extend(desktop_seed(ws.kind, sources, &ws.desktop_sources).files);
        if let Some((name, spec, irods)) = sources
            .iter()
            .find_map(|(n, s)| s.irods.as_ref().map(|i| (n, s, i)))
        {
            let secret = data::credentials_for(spec, groups).map(|(_, s)| &s.name);
            let user = match secret {
                Some(secret) => value(name, secret, data::IRODS_USER_NAME)?,
                None => data::IRODS_ANONYMOUS_USER,
            };
            let environment = data::irods_environment(irods, user);
            let mut text =
                serde_json::to_string_pretty(&environment).expect("a JSON value serializes");
            text.push('\n');
            out.files.insert(IRODS_ENVIRONMENT_FILE.to_owned(), text);
            if let Some(secret) = secret {
                let password = value(name, secret, data::IRODS_PASSWORD)?;
                out.files.insert(
                    IRODS_AUTHENTICATION_FILE.to_owned(),
                    data::irods_auth_file(password, uid, mtime),
                );
            }
        }
        out.endpoints = sources
            .iter()
            .filter_map(|(name, spec)| {
                spec.s3.as_ref().map(|s3| DataEndpoint {
                    source: name.clone(),
                    url: s3.endpoint.clone(),
                })
            })
            .collect();
        Ok(out)
    }
}

/// The QGIS desktop's seed ([`desktop::SETTINGS_FILE`], `policy::desktop`) of a workspace of
/// `kind` with its `own` data sources and the profile's `desktop` ones: the file alone for a
/// `qgis` workspace (even without data: QGIS then starts from its own defaults), nothing for
/// another kind.
fn desktop_seed(
    kind: WorkspaceKind,
    own: &[(String, DataSourceSpec)],
    extra: &[(String, DataSourceSpec)],
) -> LocalData {
    let mut out = LocalData::default();
    if kind == WorkspaceKind::Qgis {
        out.files.insert(
            desktop::SETTINGS_FILE.to_owned(),
            desktop::global_settings(own, extra),
        );
    }
    out
}

impl Catalog {
    /// What the policy's `validate_job` reads for a BatchJob of `profile` with `data_sources`
    /// by a user of `groups` (the hub's groups, read as the operator reads them): the
    /// catalogue in place of the cluster, as [`check`](Self::check) does for a workspace. The
    /// data sources' Secrets are the catalogue's with [`CredentialsFrom::Catalog`].
    ///
    /// An empty catalogue (plain `atelier up`) offers one profile, `default_profile`, open to
    /// everyone, and one batch pool, `local`, without caps or deadline.
    pub fn job_dereferenced(
        &self,
        profile: &str,
        data_sources: &[String],
        groups: &BTreeSet<String>,
        default_profile: &str,
        credentials: CredentialsFrom,
    ) -> Dereferenced {
        let (profiles, pools) = if self.is_empty() {
            let profile: WorkspaceProfile = serde_json::from_value(serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "WorkspaceProfile",
                "metadata": {"name": default_profile},
                "spec": {"displayName": default_profile, "image": "local"},
            }))
            .expect("the built-in profile parses");
            let pool: NodePool = serde_json::from_value(serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "NodePool",
                "metadata": {"name": "local"},
                "spec": {"purpose": "batch"},
            }))
            .expect("the built-in pool parses");
            (vec![profile], vec![pool])
        } else {
            (self.profiles.clone(), self.pools.clone())
        };
        Dereferenced {
            profile: profiles.into_iter().find(|p| p.name_any() == profile),
            pools,
            data_sources: self
                .data_sources
                .iter()
                .filter(|d| data_sources.contains(&d.name_any()))
                .cloned()
                .collect(),
            groups: operator_groups(groups),
            token: String::new(),
            credential_secrets: match credentials {
                CredentialsFrom::Catalog => Some(self.secrets.keys().cloned().collect()),
                CredentialsFrom::Cluster => None,
            },
            csi_drivers: None,
            unreachable: Default::default(),
        }
    }
}

impl Catalog {
    /// The Dask cluster a start of the `local` backend runs beside its server, if any: with a
    /// catalogue, the `ValidatedDask` of the operator's `validate` (same refusals as
    /// [`check`](Self::check)); with an empty one (plain `atelier up`), `user_options.dask`
    /// read field by field as for a Workspace, with the built-in defaults of `validate` (1-4
    /// workers of 1 CPU / 2Gi). A local cluster starts `min` workers (at least one), at most
    /// this machine's CPU count of them ([`local_dask_bound`]), else `DaskWorkersOutOfRange`;
    /// it scales up to `max` (after caps), bounded by the same count.
    pub fn local_dask(
        &self,
        request: &SpawnRequest,
        default_profile: &str,
    ) -> Result<Option<LocalDask>, CheckError> {
        let (min, max, cpu, memory, idle) = if self.is_empty() {
            let mut request = request.clone();
            if !names::is_valid_user_name(&request.user) {
                request.user = names::dns_label("", &request.user, "");
            }
            let name = workspace_name(&request.user, &request.server);
            let ws = build_workspace(&request, &name, CHECK_NAMESPACE, default_profile)
                .map_err(CheckError::Invalid)?;
            let Some(asked) = ws.spec.dask else {
                return Ok(None);
            };
            if !asked.enabled.unwrap_or(true) {
                return Ok(None);
            }
            let (min, max) = asked
                .workers
                .map_or(LOCAL_DEFAULT_WORKERS, |w| (w.min, w.max));
            if min < 0 || max < 1 || min > max {
                return Err(dask_out_of_range(format!(
                    "Dask workers {min}-{max}: min must be at least 0, max at least 1, and min \
                     at most max"
                )));
            }
            let resources = asked.worker_resources.unwrap_or_default();
            (
                min,
                max,
                resources
                    .cpu
                    .unwrap_or_else(|| LOCAL_DEFAULT_WORKER_CPU.to_owned()),
                resources
                    .memory
                    .unwrap_or_else(|| LOCAL_DEFAULT_WORKER_MEMORY.to_owned()),
                asked.idle_timeout_seconds,
            )
        } else {
            let Some(ws) = self.validated(request, default_profile, CredentialsFrom::Catalog)?
            else {
                return Ok(None);
            };
            let Some(d) = ws.dask else {
                return Ok(None);
            };
            (
                d.min,
                d.workers,
                d.resources.cpu,
                d.resources.memory,
                d.idle_timeout_seconds,
            )
        };
        let workers = u32::try_from(min.max(1)).unwrap_or(1);
        let bound = local_dask_bound();
        if workers > bound {
            return Err(dask_out_of_range(format!(
                "Dask workers: the local backend runs at most {bound} (this machine's CPUs), \
                 asked for {workers}"
            )));
        }
        let invalid = |field: &str, e: String| {
            CheckError::Refused(Refusal {
                reason: reason::INVALID_RESOURCES,
                message: format!("Dask workers' {field}: {e}"),
            })
        };
        let millis = policy::parse_cpu_millis(&cpu).map_err(|e| invalid("cpu", e.to_string()))?;
        let bytes = policy::parse_bytes(&memory).map_err(|e| invalid("memory", e.to_string()))?;
        Ok(Some(LocalDask {
            workers,
            max_workers: u32::try_from(max).unwrap_or(0).min(bound).max(workers),
            threads: u32::try_from((millis + 999) / 1000).unwrap_or(1).max(1),
            memory_limit: u64::try_from(bytes).ok().filter(|b| *b > 0),
            idle_timeout_seconds: idle.and_then(|s| u64::try_from(s).ok()).filter(|s| *s > 0),
        }))
    }
}

/// Most workers a local Dask cluster runs: the machine's CPU count.
pub fn local_dask_bound() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// `validate`'s built-in worker range, for a start without a catalogue.
const LOCAL_DEFAULT_WORKERS: (i32, i32) = (1, 4);
/// `validate`'s built-in worker CPU.
const LOCAL_DEFAULT_WORKER_CPU: &str = "1";
/// `validate`'s built-in worker memory.
const LOCAL_DEFAULT_WORKER_MEMORY: &str = "2Gi";

fn dask_out_of_range(message: String) -> CheckError {
    CheckError::Refused(Refusal {
        reason: reason::DASK_WORKERS_OUT_OF_RANGE,
        message,
    })
}

/// The groups as the operator reads them back from the Workspace's annotation (names holding a
/// comma are dropped there, so they grant nothing here either).
fn operator_groups(groups: &BTreeSet<String>) -> BTreeSet<String> {
    let list: Vec<String> = groups.iter().cloned().collect();
    parse_groups(Some(&groups_annotation(&list)))
}

/// The profile's quantities parse (the operator would refuse every start with
/// `InvalidProfile`/`InvalidResources` otherwise).
fn check_profile(p: &WorkspaceProfile) -> Result<(), String> {
    let check = |field: &str, r: Option<&ResourceRequest>| -> Result<(), String> {
        let Some(r) = r else { return Ok(()) };
        if let Some(cpu) = &r.cpu {
            policy::parse_cpu_millis(cpu).map_err(|e| format!("field spec.{field}.cpu: {e}"))?;
        }
        if let Some(memory) = &r.memory {
            policy::parse_bytes(memory).map_err(|e| format!("field spec.{field}.memory: {e}"))?;
        }
        Ok(())
    };
    check("defaultResources", p.spec.default_resources.as_ref())?;
    check("maxResources", p.spec.max_resources.as_ref())
}

/// Lists the catalogue's resources from the API server.
pub async fn list_cluster(client: &kube::Client) -> Result<Catalog, kube::Error> {
    use kube::api::{Api, ListParams};
    let lp = ListParams::default();
    let mut profiles = Api::<WorkspaceProfile>::all(client.clone())
        .list(&lp)
        .await?
        .items;
    let mut pools = Api::<NodePool>::all(client.clone()).list(&lp).await?.items;
    let mut data_sources = Api::<DataSource>::all(client.clone())
        .list(&lp)
        .await?
        .items;
    profiles.sort_by_key(|p| p.name_any());
    pools.sort_by_key(|p| p.name_any());
    data_sources.sort_by_key(|d| d.name_any());
    // The Secrets stay in the cluster: the operator checks them.
    Ok(Catalog {
        profiles,
        pools,
        data_sources,
        secrets: BTreeMap::new(),
    })
}

/// Keeps `shared` in step with the cluster: lists the catalogue now and every `interval`
/// (a failed list keeps the previous catalogue and is logged).
pub fn spawn_refresh(
    client: kube::Client,
    shared: SharedCatalog,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Vec<String>> = None;
        loop {
            tick.tick().await;
            match list_cluster(&client).await {
                Ok(catalog) => {
                    let names = catalog.names();
                    if last.as_ref() != Some(&names) {
                        tracing::info!(resources = ?names, "catalogue read from the cluster");
                        last = Some(names);
                    }
                    shared.set(catalog);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the catalogue (kept the last one)")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::workspace::reason;

    fn examples() -> Catalog {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/examples");
        Catalog::load(&dir).expect("crds/examples load")
    }

    fn groups(gs: &[&str]) -> BTreeSet<String> {
        gs.iter().map(|g| g.to_string()).collect()
    }

    fn request(user_groups: &[&str], options: Value) -> SpawnRequest {
        SpawnRequest {
            user: "alice".into(),
            server: String::new(),
            groups: user_groups.iter().map(|g| g.to_string()).collect(),
            profile: None,
            user_options: options,
            env: Default::default(),
            files: Default::default(),
            dask: None,
            kind: Default::default(),
        }
    }

    fn refusal(catalog: &Catalog, user_groups: &[&str], options: Value) -> Refusal {
        match catalog.check(
            &request(user_groups, options),
            "default",
            CredentialsFrom::Cluster,
        ) {
            Err(CheckError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_examples_load_and_other_kinds_are_skipped() {
        let c = examples();
        let names: Vec<String> = c.names();
        assert_eq!(
            names,
            [
                "WorkspaceProfile/pangeo",
                "WorkspaceProfile/rstudio-geospatial",
                "WorkspaceProfile/qgis-desktop",
                "WorkspaceProfile/gpu-ml",
                "NodePool/interactive",
                "NodePool/gpu-trex",
                "NodePool/batch",
                "DataSource/sentinel-2-l2a",
                "DataSource/argo-floats",
                "DataSource/vo-scratch",
                "DataSource/argo-s3",
                "DataSource/earth-search",
                "DataSource/thredds-ocean",
            ]
        );
        // The same file alone (a single multi-document file).
        let one = Catalog::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/examples/profiles.yaml"),
        )
        .unwrap();
        assert_eq!(one.profiles.len(), 4);
        assert!(one.pools.is_empty());
    }

    #[test]
    fn errors_name_the_file_document_and_field() {
        let bad = |text: &str| {
            let mut c = Catalog::default();
            c.add_yaml(Path::new("site/catalog.yaml"), text)
                .unwrap_err()
                .to_string()
        };
        let head = "apiVersion: atelier.dev/v1alpha1\nkind: NodePool\nmetadata: {name: cpu}\nspec: {purpose: interactive}\n---\n";
        let e = bad(&format!(
            "{head}apiVersion: atelier.dev/v1alpha1\nkind: WorkspaceProfile\nmetadata: {{name: p}}\nspec:\n  displayName: P\n  image: i\n  defaultResources: {{cpu: 2}}\n"
        ));
        assert!(e.starts_with("site/catalog.yaml, document 2: "), "{e}");
        assert!(e.contains("spec.defaultResources.cpu"), "{e}");
        let e = bad(&format!(
            "{head}apiVersion: atelier.dev/v1alpha1\nkind: NodePool\nmetadata: {{name: g}}\nspec: {{purpose: gpu}}\n"
        ));
        assert!(e.contains("document 2") && e.contains("spec.gpu"), "{e}");
        let e = bad("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
        assert!(e.contains("document 1") && e.contains("apiVersion"), "{e}");
        let e = bad("apiVersion: atelier.dev/v1alpha1\nkind: Gadget\nmetadata: {name: x}\n");
        assert!(e.contains("field kind"), "{e}");
        let e = bad(
            "apiVersion: atelier.dev/v1alpha1\nkind: NodePool\nmetadata: {name: Bad_Name}\nspec: {purpose: batch}\n",
        );
        assert!(e.contains("metadata.name"), "{e}");
        let e = bad(&format!("{head}{head}"));
        assert!(e.contains("NodePool cpu is defined twice"), "{e}");
        let e = bad(
            "apiVersion: atelier.dev/v1alpha1\nkind: WorkspaceProfile\nmetadata: {name: p}\nspec: {displayName: P, image: i, maxResources: {memory: lots}}\n",
        );
        assert!(e.contains("spec.maxResources.memory"), "{e}");
        let e = bad(
            "apiVersion: atelier.dev/v1alpha1\nkind: DataSource\nmetadata: {name: d}\nspec: {mountPath: /d, nfs: {server: s, path: /p}, pvc: {claimName: c}}\n",
        );
        assert!(e.contains("at most one of s3"), "{e}");
        let e = bad("a: [unclosed\n");
        assert!(e.starts_with("site/catalog.yaml: not YAML"), "{e}");
        // A missing file names itself.
        let e = Catalog::load(Path::new("/nonexistent/catalog.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/catalog.yaml: "), "{e}");
    }

    #[test]
    fn choices_follow_the_groups() {
        let c = examples();
        let none = c.choices_for(&groups(&[]));
        let names: Vec<&str> = none.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pangeo", "rstudio-geospatial", "qgis-desktop"]);
        let pangeo = &none[0];
        assert_eq!(pangeo.kind, "jupyter");
        assert_eq!(pangeo.default_resources.cpu.as_deref(), Some("2"));
        assert_eq!(pangeo.max_resources.memory.as_deref(), Some("64Gi"));
        let pools: Vec<&str> = pangeo.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            pools,
            ["interactive"],
            "no gpu or batch pool without the groups"
        );
        assert!(pangeo.pools[0].default);
        assert_eq!(pangeo.max_gpus, 0);
        let sources: Vec<&str> = pangeo
            .data_sources
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(sources, ["sentinel-2-l2a", "earth-search", "thredds-ocean"]);

        let ocean = c.choices_for(&groups(&["ocean-physics"]));
        let gpu = ocean.iter().find(|p| p.name == "gpu-ml").expect("gpu-ml");
        let trex = gpu
            .pools
            .iter()
            .find(|p| p.name == "gpu-trex")
            .expect("gpu-trex");
        assert_eq!(trex.gpu_types, ["a100", "v100"]);
        assert_eq!(trex.max_gpus, Some(2));
        assert_eq!(gpu.max_gpus, 2);
        assert_eq!(gpu.gpu_types, ["a100", "v100"]);
        let sources: Vec<&str> = gpu.data_sources.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            sources,
            [
                "sentinel-2-l2a",
                "argo-floats",
                "earth-search",
                "thredds-ocean"
            ]
        );

        let vo = c.choices_for(&groups(&["vo.example.org"]));
        assert!(!vo.iter().any(|p| p.name == "gpu-ml"));
        assert!(vo[0].pools.iter().any(|p| p.name == "batch"));
        assert!(vo[0].data_sources.iter().any(|d| d.name == "vo-scratch"));

        // An empty catalogue: one default profile.
        let default = Catalog::default().choices_for(&groups(&[]));
        assert_eq!(default.len(), 1);
        assert_eq!(default[0].name, "");
    }

    #[test]
    fn checks_are_the_operators() {
        let c = examples();
        let ocean = ["ocean-physics"];
        // Allowed: defaults, a pool, a GPU type, a data source.
        assert_eq!(
            c.check(
                &request(&[], json!({"profile": "pangeo"})),
                "default",
                CredentialsFrom::Cluster
            ),
            Ok(Some("pangeo".into()))
        );
        let ok = json!({"profile": "gpu-ml", "nodePool": "gpu-trex",
            "resources": {"gpus": 2, "gpuType": "a100"}, "dataSources": ["argo-floats"]});
        assert_eq!(
            c.check(&request(&ocean, ok), "default", CredentialsFrom::Cluster),
            Ok(Some("gpu-ml".into()))
        );
        // No profile named: the first one open (no "default" profile in the examples).
        assert_eq!(
            c.check(
                &request(&[], Value::Null),
                "default",
                CredentialsFrom::Cluster
            ),
            Ok(Some("pangeo".into()))
        );
        assert_eq!(
            c.check(
                &request(&[], Value::Null),
                "qgis-desktop",
                CredentialsFrom::Cluster
            ),
            Ok(Some("qgis-desktop".into()))
        );

        let r = refusal(&c, &[], json!({"profile": "gpu-ml"}));
        assert_eq!(r.reason, reason::PROFILE_FORBIDDEN);
        assert!(
            r.message.contains("gpu-ml") && r.message.contains("ocean-physics"),
            "{}",
            r.message
        );
        let r = refusal(&c, &[], json!({"profile": "nope"}));
        assert_eq!(r.reason, reason::PROFILE_NOT_FOUND);
        let r = refusal(
            &c,
            &[],
            json!({"profile": "pangeo", "nodePool": "gpu-trex"}),
        );
        assert_eq!(r.reason, reason::NODE_POOL_FORBIDDEN);
        let r = refusal(
            &c,
            &[],
            json!({"profile": "pangeo", "resources": {"gpus": 1}}),
        );
        assert_eq!(r.reason, reason::NO_ELIGIBLE_POOL);
        let r = refusal(
            &c,
            &ocean,
            json!({"profile": "gpu-ml", "resources": {"gpus": 3}}),
        );
        assert_eq!(r.reason, reason::RESOURCES_EXCEED_PROFILE);
        let r = refusal(
            &c,
            &ocean,
            json!({"profile": "gpu-ml", "resources": {"gpus": 1, "gpuType": "h100"}}),
        );
        assert_eq!(r.reason, reason::NO_ELIGIBLE_POOL);
        let r = refusal(
            &c,
            &[],
            json!({"profile": "pangeo", "resources": {"cpu": "17"}}),
        );
        assert_eq!(r.reason, reason::RESOURCES_EXCEED_PROFILE);
        let r = refusal(
            &c,
            &[],
            json!({"profile": "pangeo", "dataSources": ["argo-floats"]}),
        );
        assert_eq!(r.reason, reason::DATA_SOURCE_FORBIDDEN);
        let r = refusal(
            &c,
            &[],
            json!({"profile": "pangeo", "dataSources": ["nope"]}),
        );
        assert_eq!(r.reason, reason::DATA_SOURCE_NOT_FOUND);
        let r = refusal(&c, &[], json!({"profile": "pangeo", "image": "other:1"}));
        assert_eq!(r.reason, reason::IMAGE_OVERRIDE_FORBIDDEN);
        // A group whose name holds a comma grants nothing (the operator drops it too).
        let r = refusal(&c, &["ocean-physics,x"], json!({"profile": "gpu-ml"}));
        assert_eq!(r.reason, reason::PROFILE_FORBIDDEN);

        // Malformed options name the field.
        match c.check(
            &request(&[], json!({"resources": {"gpus": "two"}})),
            "default",
            CredentialsFrom::Cluster,
        ) {
            Err(CheckError::Invalid(e)) => assert_eq!(e.field, "user_options.resources.gpus"),
            other => panic!("{other:?}"),
        }
        match c.check(
            &request(&[], json!({"dataSources": "argo"})),
            "default",
            CredentialsFrom::Cluster,
        ) {
            Err(CheckError::Invalid(e)) => assert_eq!(e.field, "user_options.dataSources"),
            other => panic!("{other:?}"),
        }
        // An empty catalogue checks nothing.
        assert_eq!(
            Catalog::default().check(
                &request(&[], json!({"profile": "x"})),
                "default",
                CredentialsFrom::Cluster
            ),
            Ok(None)
        );
    }

    #[test]
    fn user_names_the_cluster_cannot_hold_are_still_checked() {
        let c = examples();
        let mut r = request(&[], json!({"profile": "gpu-ml"}));
        r.user = "Alice@Example".into();
        assert!(matches!(
            c.check(&r, "default", CredentialsFrom::Cluster),
            Err(CheckError::Refused(Refusal {
                reason: reason::PROFILE_FORBIDDEN,
                ..
            }))
        ));
        r.user_options = json!({"profile": "pangeo"});
        assert_eq!(
            c.check(&r, "default", CredentialsFrom::Cluster),
            Ok(Some("pangeo".into()))
        );
    }

    /// A profile, an s3 source with group credentials, an irods source with one Secret, and
    /// their Secrets (`data` and `stringData`).
    const DATA: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: lab}
spec: {displayName: Lab, image: "lab:1"}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: cpu}
spec: {purpose: interactive}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: argo}
spec:
  description: Argo floats
  s3:
    endpoint: http://127.0.0.1:8333
    bucket: argo
    prefix: x.zarr
    credentialsByGroup:
      - group: vo-ocean
        secret: {name: ocean-s3}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: shelf}
spec:
  irods:
    host: irods.example.org
    port: 1247
    zone: tempZone
    path: /tempZone/home/shared
    credentialsSecret: {name: irods-reader}
---
apiVersion: v1
kind: Secret
metadata: {name: ocean-s3, namespace: atelier}
type: Opaque
data:
  AWS_ACCESS_KEY_ID: QUtJQU9DRUFO
stringData:
  AWS_SECRET_ACCESS_KEY: ocean-secret-value
---
apiVersion: v1
kind: Secret
metadata: {name: irods-reader}
stringData:
  IRODS_USER_NAME: reader
  IRODS_PASSWORD: s3cret
"#;

    fn data_catalog() -> Catalog {
        let mut c = Catalog::default();
        c.add_yaml(Path::new("data.yaml"), DATA)
            .expect("DATA loads");
        c
    }

    /// [`DATA`] plus a QGIS profile showing two more sources, one of them for vo-ocean only.
    fn desktop_catalog() -> Catalog {
        let mut c = data_catalog();
        c.add_yaml(
            Path::new("desktop.yaml"),
            r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: desk}
spec:
  displayName: Desk
  image: "qgis:1"
  kind: qgis
  desktop: {dataSources: [thredds, ocean-maps, nowhere]}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: thredds}
spec: {ogc: {wms: "https://thredds.example.org/wms", wcs: "https://thredds.example.org/wcs"}}
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: ocean-maps}
spec:
  ogc: {wmts: "https://maps.example.org/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"}
  allowedGroups: [vo-ocean]
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata: {name: scratch}
spec: {nfs: {server: nfs.example.org, path: /x}, mountPath: /scratch}
"#,
        )
        .expect("the desktop catalogue loads");
        c
    }

    #[test]
    fn a_desktop_gets_its_seed_and_other_kinds_none() {
        let c = desktop_catalog();
        let seed = |groups: &[&str], options: Value| -> Option<String> {
            c.local_data(&request(groups, options), "lab", 1000, 0)
                .expect("local data")
                .files
                .get(desktop::SETTINGS_FILE)
                .cloned()
        };
        // Without data sources of its own: the profile's it may use, OGC services only.
        let alone = seed(&[], json!({"profile": "desk"})).expect("a seed");
        assert_eq!(
            alone,
            desktop::global_settings(
                &[],
                &[(
                    "thredds".into(),
                    c.data_sources
                        .iter()
                        .find(|d| d.name_any() == "thredds")
                        .unwrap()
                        .spec
                        .clone()
                )]
            )
        );
        assert!(alone.contains("connections-wms\\thredds\\url="), "{alone}");
        assert!(
            !alone.contains("ocean-maps"),
            "forbidden: left out\n{alone}"
        );
        // A member of vo-ocean with an s3 source and an nfs one: the favourite, both desktop
        // sources, and none of the s3 Secret's values or names.
        let options = json!({"profile": "desk", "dataSources": ["argo", "scratch"]});
        let full = c
            .local_data(&request(&["vo-ocean"], options), "lab", 1000, 0)
            .expect("local data");
        let text = &full.files[desktop::SETTINGS_FILE];
        assert!(text.contains("ocean-maps%20%28WMTS%29"), "{text}");
        assert!(text.contains("favourites=\"/scratch|||scratch\""), "{text}");
        for secret in ["AKIAOCEAN", "ocean-secret-value", "ocean-s3"] {
            assert!(!text.contains(secret), "{secret} in\n{text}");
        }
        // The credentials are still the environment's.
        assert_eq!(full.env["AWS_SECRET_ACCESS_KEY"], "ocean-secret-value");
        assert!(full.files.contains_key(DATA_CATALOG_FILE));
        // Another kind: no seed, with or without data.
        assert_eq!(seed(&[], json!({"profile": "lab"})), None);
        assert_eq!(
            seed(
                &["vo-ocean"],
                json!({"profile": "lab", "dataSources": ["argo"]})
            ),
            None
        );
        // Without a catalogue, the request's kind decides.
        let mut r = request(&[], json!({}));
        r.kind = WorkspaceKind::Qgis;
        let files = Catalog::default()
            .local_data(&r, "lab", 1000, 0)
            .unwrap()
            .files;
        assert_eq!(files.keys().collect::<Vec<_>>(), [desktop::SETTINGS_FILE]);
        r.kind = WorkspaceKind::Jupyter;
        assert!(
            Catalog::default()
                .local_data(&r, "lab", 1000, 0)
                .unwrap()
                .files
                .is_empty()
        );
    }

    #[test]
    fn secrets_load_from_data_and_string_data_and_never_print() {
        let c = data_catalog();
        assert_eq!(
            c.secrets["ocean-s3"]["AWS_ACCESS_KEY_ID"].expose(),
            "AKIAOCEAN",
            "data is base64"
        );
        assert_eq!(
            c.secrets["ocean-s3"]["AWS_SECRET_ACCESS_KEY"].expose(),
            "ocean-secret-value"
        );
        assert_eq!(
            c.secrets["irods-reader"]["IRODS_PASSWORD"].expose(),
            "s3cret"
        );
        assert_eq!(
            c.names(),
            [
                "WorkspaceProfile/lab",
                "NodePool/cpu",
                "DataSource/argo",
                "DataSource/shelf",
                "Secret/irods-reader",
                "Secret/ocean-s3",
            ]
        );
        let debug = format!("{c:?} {:?}", SharedCatalog::new(c.clone()));
        for value in ["AKIAOCEAN", "ocean-secret-value", "s3cret", "QUtJQU9DRUFO"] {
            assert!(!debug.contains(value), "{value} in {debug}");
        }
        assert!(debug.contains("\"AWS_SECRET_ACCESS_KEY\": ***"), "{debug}");
        let v = &c.secrets["irods-reader"]["IRODS_PASSWORD"];
        assert_eq!(
            (format!("{v}"), format!("{v:?}")),
            ("***".into(), "***".into())
        );
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        // stringData wins over data, as in Kubernetes.
        let mut c = Catalog::default();
        c.add_yaml(
            Path::new("s.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {K: YQ==}\nstringData: {K: b}\n",
        )
        .unwrap();
        assert_eq!(c.secrets["s"]["K"].expose(), "b");
        // Secrets alone check nothing.
        assert!(c.is_empty());
    }

    #[test]
    fn bad_secrets_are_refused_naming_the_field_and_no_value() {
        let bad = |text: &str| {
            let mut c = Catalog::default();
            c.add_yaml(Path::new("site/secrets.yaml"), text)
                .unwrap_err()
                .to_string()
        };
        let e = bad(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {KEY: 'not*base64!zz'}\n",
        );
        assert_eq!(
            e,
            "site/secrets.yaml, document 1: Secret: field data.KEY: not base64 (data holds \
             base64; stringData holds text)"
        );
        let e = bad("apiVersion: v1\nkind: Secret\nmetadata: {namespace: x}\nstringData: {K: v}\n");
        assert!(e.contains("field metadata.name: missing"), "{e}");
        let e = bad("apiVersion: v1\nkind: Secret\nstringData: {K: v}\n");
        assert!(e.contains("field metadata.name: missing"), "{e}");
        let e = bad("apiVersion: v1\nkind: Secret\nmetadata: {name: Bad_Name}\n");
        assert!(e.contains("metadata.name") && e.contains("Bad_Name"), "{e}");
        let e =
            bad("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {K: [hunter2]}\n");
        assert_eq!(
            e,
            "site/secrets.yaml, document 1: Secret: field stringData.K: not a string"
        );
        let e = bad("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: hunter2\n");
        assert!(e.contains("field data: not a map"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // Not UTF-8 once decoded (0xff 0xfe).
        let e = bad("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {K: //4=}\n");
        assert!(e.contains("field data.K: not UTF-8"), "{e}");
        let e = bad("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {'a/b': v}\n");
        assert!(e.contains("not a valid Secret key"), "{e}");
        let twice = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {K: v}\n---\n";
        let e = bad(&format!("{twice}{twice}"));
        assert!(e.contains("document 2: Secret s is defined twice"), "{e}");
        // Broken YAML: the error says where, not what.
        let e = bad("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {K: hunter2\n");
        assert!(e.starts_with("site/secrets.yaml: not YAML"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // Other v1 kinds are still refused.
        let e = bad("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
        assert!(e.contains("field apiVersion"), "{e}");
    }

    #[test]
    fn a_missing_secret_is_a_warning_then_a_refusal() {
        let mut c = Catalog::default();
        let text = DATA.split("---\napiVersion: v1").next().unwrap();
        c.add_yaml(Path::new("data.yaml"), text).unwrap();
        assert_eq!(
            c.warnings(),
            [
                "DataSource argo: Secret ocean-s3 (credentials of group vo-ocean) is not in the \
                 catalogue; a start on the local backend that needs it is refused",
                "DataSource shelf: Secret irods-reader (credentials) is not in the catalogue; a \
                 start on the local backend that needs it is refused",
            ]
        );
        let argo = json!({"profile": "lab", "dataSources": ["argo"]});
        let r = match c.check(
            &request(&["vo-ocean"], argo.clone()),
            "lab",
            CredentialsFrom::Catalog,
        ) {
            Err(CheckError::Refused(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.reason, reason::DATA_CREDENTIALS_NOT_FOUND);
        assert_eq!(
            r.message,
            "DataSource argo: Secret ocean-s3 (credentials of group vo-ocean) does not exist in \
             the hub's catalogue"
        );
        // Not in the group: no credentials, nothing missing.
        assert_eq!(
            c.check(&request(&[], argo.clone()), "lab", CredentialsFrom::Catalog),
            Ok(Some("lab".into()))
        );
        // The cluster's Secrets are the operator's to check.
        assert_eq!(
            c.check(
                &request(&["vo-ocean"], argo),
                "lab",
                CredentialsFrom::Cluster
            ),
            Ok(Some("lab".into()))
        );
        assert!(matches!(
            c.local_data(
                &request(&[], json!({"profile": "lab", "dataSources": ["shelf"]})),
                "lab",
                1000,
                0
            ),
            Err(CheckError::Refused(Refusal {
                reason: reason::DATA_CREDENTIALS_NOT_FOUND,
                ..
            }))
        ));
    }

    #[test]
    fn local_data_resolves_the_users_secrets() {
        let c = data_catalog();
        let both = json!({"profile": "lab", "dataSources": ["argo", "shelf"]});
        let alice = c
            .local_data(&request(&["vo-ocean"], both.clone()), "lab", 1000, 0)
            .unwrap();
        let env = &alice.env;
        assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKIAOCEAN");
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "ocean-secret-value");
        assert_eq!(
            env["ATELIER_DATA_ARGO_AWS_SECRET_ACCESS_KEY"],
            "ocean-secret-value"
        );
        assert_eq!(env["RCLONE_CONFIG_ARGO_ACCESS_KEY_ID"], "AKIAOCEAN");
        assert_eq!(env["AWS_ENDPOINT_URL"], "http://127.0.0.1:8333");
        assert_eq!(env["IRODS_USER_NAME"], "reader");
        assert_eq!(env["IRODS_PASSWORD"], "s3cret");
        assert!(!env.contains_key("FSSPEC_S3_ANON"));
        // The file variables are the backend's to set.
        for (_, var) in DATA_FILES {
            assert!(!env.contains_key(var), "{var}");
        }
        // The environment is policy::data's, every Secret reference resolved.
        let groups = groups(&["vo-ocean"]);
        let sources: Vec<(String, crate::api::v1alpha1::DataSourceSpec)> = c
            .data_sources
            .iter()
            .map(|d| (d.name_any(), d.spec.clone()))
            .collect();
        let paths = DataPaths {
            catalog: "c".into(),
            irods_environment: "e".into(),
            irods_authentication: "a".into(),
        };
        let expected: Vec<String> = data::data_env(&sources, &groups, &paths)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !DATA_FILES.iter().any(|(_, v)| v == k))
            .collect();
        assert_eq!(env.keys().cloned().collect::<Vec<_>>(), expected);

        assert_eq!(
            alice.files.keys().collect::<Vec<_>>(),
            [".irodsA", "catalog.yaml", "irods_environment.json"]
        );
        assert_eq!(
            alice.files["catalog.yaml"],
            data::intake_catalog(&sources, &groups, false)
        );
        let irods: Value = serde_json::from_str(&alice.files["irods_environment.json"]).unwrap();
        assert_eq!(irods["irods_user_name"], "reader");
        assert_eq!(irods["irods_host"], "irods.example.org");
        assert_eq!(irods["irods_port"], 1247);
        assert_eq!(irods["irods_home"], "/tempZone/home/reader");
        // python-irodsclient's encode("s3cret", uid=1000, mtime=0) (docs/plans/issue-11-data.md).
        assert_eq!(alice.files[".irodsA"], ".jisuee#Mw(x+\0");
        assert_eq!(
            alice.endpoints,
            [DataEndpoint {
                source: "argo".into(),
                url: "http://127.0.0.1:8333".into()
            }]
        );
        let debug = format!("{alice:?}");
        assert!(
            !debug.contains("ocean-secret-value") && !debug.contains("s3cret"),
            "{debug}"
        );

        // bob is not in vo-ocean: anonymous s3, no key.
        let bob = c
            .local_data(
                &request(&[], json!({"profile": "lab", "dataSources": ["argo"]})),
                "lab",
                1000,
                0,
            )
            .unwrap();
        assert_eq!(bob.env["FSSPEC_S3_ANON"], "true");
        assert_eq!(bob.env["ATELIER_DATA_ARGO_ANONYMOUS"], "true");
        assert!(
            bob.env
                .keys()
                .all(|k| !k.contains("ACCESS_KEY") && !k.contains("SECRET")),
            "{:?}",
            bob.env.keys()
        );
        assert_eq!(bob.files.keys().collect::<Vec<_>>(), ["catalog.yaml"]);
        assert!(bob.files["catalog.yaml"].contains("anon: true"));

        // No data source: nothing.
        let none = c
            .local_data(&request(&[], json!({"profile": "lab"})), "lab", 1000, 0)
            .unwrap();
        assert_eq!(none, LocalData::default());
        // A Secret without a key a source needs: refused, naming the Secret and the key.
        let mut c = data_catalog();
        c.secrets
            .get_mut("ocean-s3")
            .unwrap()
            .remove("AWS_SECRET_ACCESS_KEY");
        match c.local_data(&request(&["vo-ocean"], both), "lab", 1000, 0) {
            Err(CheckError::Refused(r)) => {
                assert_eq!(r.reason, reason::DATA_CREDENTIALS_NOT_FOUND);
                assert_eq!(
                    r.message,
                    "DataSource argo: Secret ocean-s3 has no key AWS_SECRET_ACCESS_KEY"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_shared_catalogue_is_replaced_whole() {
        let shared = SharedCatalog::default();
        assert!(shared.get().is_empty());
        let before = shared.get();
        shared.set(examples());
        assert_eq!(shared.get().profiles.len(), 4);
        assert!(before.is_empty(), "readers keep the catalogue they took");
    }

    const DASK_CATALOG: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: lab}
spec:
  displayName: Lab
  image: lab:1
  dask:
    defaults:
      enabled: true
      workers: {min: 1, max: 3}
      workerResources: {cpu: 1500m, memory: 3Gi}
      idleTimeoutSeconds: 900
    maxWorkers: 64
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: plain}
spec: {displayName: Plain, image: lab:1}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: cpu}
spec: {purpose: interactive}
"#;

    #[test]
    fn local_dask_from_the_catalogue() {
        let mut c = Catalog::default();
        c.add_yaml(Path::new("dask.yaml"), DASK_CATALOG).unwrap();
        let dask = |options: Value| c.local_dask(&request(&[], options), "lab");
        // The profile's defaults: min workers, each with its CPU rounded up as threads.
        assert_eq!(
            dask(json!({"profile": "lab"})).unwrap(),
            Some(LocalDask {
                workers: 1,
                max_workers: 3.min(local_dask_bound()),
                threads: 2,
                memory_limit: Some(3 << 30),
                idle_timeout_seconds: Some(900),
            })
        );
        assert_eq!(
            dask(json!({"profile": "lab", "dask": {"enabled": false}})).unwrap(),
            None
        );
        assert_eq!(dask(json!({"profile": "plain"})).unwrap(), None);
        // The operator's refusals.
        match dask(json!({"profile": "plain", "dask": {}})) {
            Err(CheckError::Refused(r)) => assert_eq!(r.reason, reason::DASK_NOT_OFFERED),
            other => panic!("{other:?}"),
        }
        match dask(json!({"profile": "lab", "dask": {"workers": {"min": 1, "max": 65}}})) {
            Err(CheckError::Refused(r)) => {
                assert_eq!(r.reason, reason::DASK_WORKERS_OUT_OF_RANGE)
            }
            other => panic!("{other:?}"),
        }
        // The local bound: no more workers than CPUs.
        let over = local_dask_bound() + 1;
        match dask(json!({"profile": "lab", "dask": {"workers": {"min": over, "max": over}}})) {
            Err(CheckError::Refused(r)) => {
                assert_eq!(r.reason, reason::DASK_WORKERS_OUT_OF_RANGE);
                assert!(r.message.contains("this machine's CPUs"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        // No idle timeout when 0.
        let zero = dask(json!({"profile": "lab", "dask": {"idleTimeoutSeconds": 0}})).unwrap();
        assert_eq!(zero.unwrap().idle_timeout_seconds, None);
    }

    #[test]
    fn local_dask_without_a_catalogue() {
        let c = Catalog::default();
        let dask = |options: Value| c.local_dask(&request(&[], options), "default");
        assert_eq!(
            dask(json!({})).unwrap(),
            None,
            "nothing asked, nothing started"
        );
        assert_eq!(
            dask(json!({"dask": {}})).unwrap(),
            Some(LocalDask {
                workers: 1,
                max_workers: 4.min(local_dask_bound()),
                threads: 1,
                memory_limit: Some(2 << 30),
                idle_timeout_seconds: None,
            })
        );
        let one =
            dask(json!({"dask": {"workers": {"min": 1, "max": 8}, "idleTimeoutSeconds": 60}}))
                .unwrap()
                .unwrap();
        assert_eq!((one.workers, one.idle_timeout_seconds), (1, Some(60)));
        assert_eq!(dask(json!({"dask": {"enabled": false}})).unwrap(), None);
        match dask(json!({"dask": {"workers": {"min": 3, "max": 2}}})) {
            Err(CheckError::Invalid(e)) => assert_eq!(e.field, "user_options.dask.workers.min"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            dask(json!({"dask": {"workers": 2}})),
            Err(CheckError::Invalid(_))
        ));
        // The form's choice: the built-in range, bounded by the machine.
        let choice = c.choices_for(&groups(&[]))[0].dask.clone().unwrap();
        assert!(!choice.enabled);
        assert_eq!((choice.min, choice.max), (1, 4));
        assert!(choice.max_workers >= 4);
    }

    #[test]
    fn dask_choices_of_profiles() {
        let mut c = Catalog::default();
        c.add_yaml(Path::new("dask.yaml"), DASK_CATALOG).unwrap();
        let choices = c.choices_for(&groups(&[]));
        let of = |name: &str| {
            choices
                .iter()
                .find(|p| p.name == name)
                .unwrap()
                .dask
                .clone()
        };
        assert_eq!(
            of("lab"),
            Some(DaskChoice {
                enabled: true,
                min: 1,
                max: 3,
                max_workers: 64
            })
        );
        assert_eq!(of("plain"), None);
    }
}
