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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::ResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::v1alpha1::{DataSource, NodePool, PoolPurpose, ResourceRequest, WorkspaceProfile};
use crate::backend::SpawnRequest;
use crate::backend::kubernetes::{SpecError, build_workspace, groups_annotation, workspace_name};
use crate::config::OperatorConfig;
use crate::policy::workspace::validate;
use crate::policy::workspace::{Dereferenced, Refusal, parse_groups};
use crate::policy::{self, allowed, names};

/// How often the kubernetes backend's hub lists the catalogue's resources again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The API group and version of the catalogue's kinds.
const API_VERSION: &str = "atelier.dev/v1alpha1";

/// Most GPUs a request may name (the CRD's bound).
const MAX_GPUS: i32 = 16;

/// Profiles, pools and data sources, in the order they were read.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// WorkspaceProfiles.
    pub profiles: Vec<WorkspaceProfile>,
    /// NodePools.
    pub pools: Vec<NodePool>,
    /// DataSources.
    pub data_sources: Vec<DataSource>,
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
    /// `s3`, `irods`, `nfs`, `pvc`, or `stac` (a STAC catalogue only).
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
    } else {
        "stac"
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
        Ok(catalog)
    }

    /// Adds the WorkspaceProfiles, NodePools and DataSources of a multi-document YAML text read
    /// from `file`; other atelier kinds (Workspace, BatchJob) are skipped, anything else is an
    /// error, as is a name given twice.
    pub fn add_yaml(&mut self, file: &Path, text: &str) -> Result<(), CatalogError> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| CatalogError {
            file: file.to_owned(),
            document: None,
            message: format!("not YAML: {e}"),
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
            if !api_version.starts_with("atelier.dev/") {
                return Err(error(format!(
                    "field apiVersion: {api_version:?} is not an atelier.dev resource"
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

    /// `Kind/name` of everything in it, in order (what logs show).
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
        profiles.chain(pools).chain(sources).collect()
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
    /// [`default_profile_for`](Self::default_profile_for)). Caps are left to the operator.
    pub fn check(
        &self,
        request: &SpawnRequest,
        default_profile: &str,
    ) -> Result<Option<String>, CheckError> {
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
        let ws =
            build_workspace(&request, &name, "atelier", &fallback).map_err(CheckError::Invalid)?;
        let deref = Dereferenced {
            profile: self.profile(&ws.spec.profile).cloned(),
            pools: self.pools.clone(),
            data_sources: self
                .data_sources
                .iter()
                .filter(|d| ws.spec.data_sources.contains(&d.name_any()))
                .cloned()
                .collect(),
            groups,
            token: String::new(),
            credential_secrets: None,
            csi_drivers: None,
        };
        validate(&ws, &deref, &OperatorConfig::default()).map_err(CheckError::Refused)?;
        Ok(Some(ws.spec.profile))
    }
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
    Ok(Catalog {
        profiles,
        pools,
        data_sources,
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
        }
    }

    fn refusal(catalog: &Catalog, user_groups: &[&str], options: Value) -> Refusal {
        match catalog.check(&request(user_groups, options), "default") {
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
        assert_eq!(sources, ["sentinel-2-l2a", "earth-search"]);

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
        assert_eq!(sources, ["sentinel-2-l2a", "argo-floats", "earth-search"]);

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
            c.check(&request(&[], json!({"profile": "pangeo"})), "default"),
            Ok(Some("pangeo".into()))
        );
        let ok = json!({"profile": "gpu-ml", "nodePool": "gpu-trex",
            "resources": {"gpus": 2, "gpuType": "a100"}, "dataSources": ["argo-floats"]});
        assert_eq!(
            c.check(&request(&ocean, ok), "default"),
            Ok(Some("gpu-ml".into()))
        );
        // No profile named: the first one open (no "default" profile in the examples).
        assert_eq!(
            c.check(&request(&[], Value::Null), "default"),
            Ok(Some("pangeo".into()))
        );
        assert_eq!(
            c.check(&request(&[], Value::Null), "qgis-desktop"),
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
        ) {
            Err(CheckError::Invalid(e)) => assert_eq!(e.field, "user_options.resources.gpus"),
            other => panic!("{other:?}"),
        }
        match c.check(&request(&[], json!({"dataSources": "argo"})), "default") {
            Err(CheckError::Invalid(e)) => assert_eq!(e.field, "user_options.dataSources"),
            other => panic!("{other:?}"),
        }
        // An empty catalogue checks nothing.
        assert_eq!(
            Catalog::default().check(&request(&[], json!({"profile": "x"})), "default"),
            Ok(None)
        );
    }

    #[test]
    fn user_names_the_cluster_cannot_hold_are_still_checked() {
        let c = examples();
        let mut r = request(&[], json!({"profile": "gpu-ml"}));
        r.user = "Alice@Example".into();
        assert!(matches!(
            c.check(&r, "default"),
            Err(CheckError::Refused(Refusal {
                reason: reason::PROFILE_FORBIDDEN,
                ..
            }))
        ));
        r.user_options = json!({"profile": "pangeo"});
        assert_eq!(c.check(&r, "default"), Ok(Some("pangeo".into())));
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
}
