use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{EnvMap, ResourceRequest, WorkspaceKind};
use super::dask::DaskProfile;

/// A kind of workspace users may start: image, resources and who may use it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "atelier.dev",
    version = "v1alpha1",
    kind = "WorkspaceProfile",
    shortname = "wsp",
    category = "atelier",
    doc = "A workspace profile: image, kind, default and maximum resources, and the groups that may use it.",
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName"
    ),
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        priority = 1
    ),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.defaultNodePool"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceProfileSpec {
    /// Name shown on the spawn page.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,
    /// Longer description shown on the spawn page.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 2048))]
    pub description: String,
    /// What the workspace runs.
    #[serde(default)]
    pub kind: WorkspaceKind,
    /// Container image; it must start `jupyterhub-singleuser`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Resources used when the workspace asks for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_resources: Option<ResourceRequest>,
    /// Upper bound on what a workspace may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_resources: Option<ResourceRequest>,
    /// Groups whose members may use the profile; empty means every user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        length(min = 1, max = 256),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._:=@+-]*$")
    ))]
    pub allowed_groups: Vec<String>,
    /// NodePool used when the workspace names none and asks for no GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub default_node_pool: Option<String>,
    /// Environment for every workspace of this profile.
    #[serde(default, skip_serializing_if = "EnvMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$') && !k.startsWith('JUPYTERHUB_'))").message("env names must be POSIX names and may not start with JUPYTERHUB_"))]
    pub env: EnvMap,
    /// Whether a workspace may set its own `image`.
    #[serde(default)]
    pub allow_image_override: bool,
    /// Whether a workspace may set its own `kind`.
    #[serde(default)]
    pub allow_kind_override: bool,
    /// The home volume.
    #[serde(default)]
    pub home: HomePolicy,
    /// The Dask clusters this profile's workspaces may have; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dask: Option<DaskProfile>,
    /// NodePool of the Dask workers when the workspace names none (else a `batch` pool the user may use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub dask_node_pool: Option<String>,
    /// What a desktop (`kind: qgis`) shows ready-made, so that nothing needs configuring by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<DesktopProfile>,
}

/// What a profile's QGIS desktop is seeded with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesktopProfile {
    /// DataSources shown in QGIS's browser panel (besides the workspace's own): their S3
    /// buckets, mounted paths and OGC services become connections. A name the user may not use,
    /// or that does not exist, is left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(inner(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    ))]
    pub data_sources: Vec<String>,
}

/// The home volume of each workspace of a profile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HomePolicy {
    /// Default size, overridable by the workspace's `homeSize`.
    #[serde(default = "default_home_size")]
    #[schemars(pattern(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"))]
    pub size: String,
    /// StorageClass of the claim; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the home volume when the Workspace is deleted.
    #[serde(default)]
    pub on_delete: HomeReclaim,
    /// Where the volume is mounted.
    #[serde(default = "default_home_mount")]
    #[schemars(pattern(r"^/([^/\x00]+/?)*$"))]
    pub mount_path: String,
}

fn default_home_size() -> String {
    "10Gi".into()
}

fn default_home_mount() -> String {
    "/home/jovyan".into()
}

impl Default for HomePolicy {
    fn default() -> Self {
        HomePolicy {
            size: default_home_size(),
            storage_class_name: None,
            on_delete: HomeReclaim::Keep,
            mount_path: default_home_mount(),
        }
    }
}

/// Keep or delete the home volume when its Workspace is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HomeReclaim {
    /// Keep the PersistentVolumeClaim (it is not owned by the Workspace).
    #[default]
    Keep,
    /// Delete the PersistentVolumeClaim with the Workspace.
    Delete,
}
