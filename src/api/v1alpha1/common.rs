use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Extra environment variables: name → value. Names must be POSIX names.
pub type EnvMap = BTreeMap<String, String>;

/// What a workspace runs. Every workspace image starts `jupyterhub-singleuser`; the kind picks the
/// application it opens on (`/lab`, JupyterLab with the R kernel, RStudio through
/// jupyter-rsession-proxy, or a QGIS desktop through jupyter-remote-desktop-proxy).
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceKind {
    /// JupyterLab.
    #[default]
    Jupyter,
    /// RStudio Server.
    Rstudio,
    /// QGIS desktop over noVNC.
    Qgis,
    /// JupyterLab with the R kernel (IRkernel): R that runs wherever JupyterLab does.
    R,
}

impl WorkspaceKind {
    /// The URL path the single-user server opens on (`JUPYTERHUB_DEFAULT_URL`).
    pub fn default_url(self) -> &'static str {
        match self {
            WorkspaceKind::Jupyter => "/lab",
            WorkspaceKind::Rstudio => "/rstudio",
            WorkspaceKind::Qgis => "/desktop",
            WorkspaceKind::R => "/lab",
        }
    }

    /// The lowercase name used in labels and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceKind::Jupyter => "jupyter",
            WorkspaceKind::Rstudio => "rstudio",
            WorkspaceKind::Qgis => "qgis",
            WorkspaceKind::R => "r",
        }
    }

    /// Every kind, in the order the spawn page lists them.
    pub const ALL: [WorkspaceKind; 4] = [
        WorkspaceKind::Jupyter,
        WorkspaceKind::R,
        WorkspaceKind::Rstudio,
        WorkspaceKind::Qgis,
    ];
}

/// Compute resources: CPU and memory as Kubernetes quantities, and GPUs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.gpuType) || (has(self.gpus) && self.gpus > 0)").message("gpuType requires gpus > 0").reason(Reason::FieldValueInvalid).field_path(".gpuType"))]
pub struct ResourceRequest {
    /// CPU cores as a Kubernetes quantity, e.g. `2` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"))]
    pub cpu: Option<String>,
    /// Memory as a Kubernetes quantity, e.g. `8Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"))]
    pub memory: Option<String>,
    /// Number of GPUs (0 or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: Option<i32>,
    /// GPU model, one of the types a GPU node pool offers (e.g. `a100`, `v100`). Requires `gpus > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub gpu_type: Option<String>,
}

impl ResourceRequest {
    /// The GPU count, 0 when absent.
    pub fn gpu_count(&self) -> i32 {
        self.gpus.unwrap_or(0)
    }
}
