use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Data a workspace can reach: an S3 bucket, an iRODS collection, an NFS export or a PVC.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "atelier.dev",
    version = "v1alpha1",
    kind = "DataSource",
    shortname = "dsrc",
    category = "atelier",
    doc = "A data source mounted into, or injected as environment for, the workspaces of the groups allowed to use it.",
    printcolumn(name = "Mount", type_ = "string", json_path = ".spec.mountPath"),
    printcolumn(name = "Read Only", type_ = "boolean", json_path = ".spec.readOnly"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.s3), has(self.irods), has(self.nfs), has(self.pvc)].filter(x, x).size() == 1").message("exactly one of s3, irods, nfs or pvc must be set").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.csi) || has(self.s3) || has(self.irods)").message("csi applies only to s3 and irods sources").reason(Reason::FieldValueForbidden).field_path(".csi"))]
pub struct DataSourceSpec {
    /// Human-readable description shown on the spawn page.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 2048))]
    pub description: String,
    /// An S3 bucket (or a prefix of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// An iRODS collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irods: Option<IrodsSource>,
    /// An NFS export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NfsSource>,
    /// An existing PersistentVolumeClaim in the workspace's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// Where the data appears in the workspace.
    #[schemars(length(min = 2, max = 1024), pattern(r"^/([^/\x00]+/?)*$"))]
    #[x_kube(validation = Rule::new("!self.contains('/../') && !self.endsWith('/..')").message("mountPath may not contain '..'"))]
    pub mount_path: String,
    /// Mount read-only (the default).
    #[serde(default = "default_true")]
    pub read_only: bool,
    /// Groups whose members may use the source; empty means every user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        length(min = 1, max = 256),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._:=@+-]*$")
    ))]
    pub allowed_groups: Vec<String>,
    /// For s3 and irods: the CSI driver that mounts the source. Without it an s3 source is only
    /// injected as environment (fsspec/s3fs) and an irods source as iRODS client environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi: Option<CsiSpec>,
}

fn default_true() -> bool {
    true
}

/// A reference to a Secret in the workspace's namespace, with the keys to read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// An S3 bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// Endpoint URL, e.g. `https://s3.example.org`.
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/]+(/.*)?$"))]
    pub endpoint: String,
    /// Bucket name.
    #[schemars(length(min = 3, max = 63), pattern(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub prefix: String,
    /// Region (some S3 services need one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; anonymous access when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretRef>,
}

/// An iRODS collection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IrodsSource {
    /// iRODS server host.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// iRODS port.
    #[serde(default = "default_irods_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// iRODS zone.
    #[schemars(length(min = 1, max = 250))]
    pub zone: String,
    /// Collection path, e.g. `/tempZone/home/public/argo`.
    #[schemars(length(min = 1, max = 2048), pattern(r"^/([^/\x00]+/?)*$"))]
    pub path: String,
    /// Secret with keys `IRODS_USER_NAME` and `IRODS_PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretRef>,
}

fn default_irods_port() -> i32 {
    1247
}

/// An NFS export.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NfsSource {
    /// NFS server host name or address.
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// Exported path.
    #[schemars(length(min = 1, max = 2048), pattern(r"^/([^/\x00]+/?)*$"))]
    pub path: String,
}

/// An existing PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Claim name, in the workspace's namespace.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub claim_name: String,
}

/// A CSI ephemeral volume realising an s3 or irods source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsiSpec {
    /// CSI driver name, e.g. `ru.yandex.s3.csi` or `irods.csi.cyverse.org`.
    #[schemars(length(min = 1, max = 253))]
    pub driver: String,
    /// Driver-specific volume attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_attributes: BTreeMap<String, String>,
    /// Secret passed to the driver as `nodePublishSecretRef` (defaults to the source's credentials secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_publish_secret: Option<SecretRef>,
}
