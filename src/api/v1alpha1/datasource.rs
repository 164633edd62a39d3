use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Data a workspace can reach: an S3 bucket, an iRODS collection, an NFS export or a PVC, and/or
/// a STAC catalogue.
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
#[x_kube(validation = Rule::new("[has(self.s3), has(self.irods), has(self.nfs), has(self.pvc)].filter(x, x).size() <= 1").message("at most one of s3, irods, nfs or pvc may be set").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("has(self.s3) || has(self.irods) || has(self.nfs) || has(self.pvc) || has(self.stac) || has(self.ogc)").message("one of s3, irods, nfs, pvc, stac or ogc must be set").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.csi) || has(self.s3) || has(self.irods)").message("csi applies only to s3 and irods sources").reason(Reason::FieldValueForbidden).field_path(".csi"))]
#[x_kube(validation = Rule::new("has(self.mountPath) || !(has(self.nfs) || has(self.pvc) || has(self.csi))").message("mountPath is required with nfs, pvc or csi").reason(Reason::FieldValueRequired).field_path(".mountPath"))]
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
    /// A STAC API or static STAC catalogue (`https://...`), passed to the workspace as
    /// `ATELIER_STAC_<NAME>` and listed in its Intake catalogue. May stand alone (a STAC-only
    /// source) or describe the data of the backend above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/]+(/.*)?$"))]
    pub stac: Option<String>,
    /// The centre's OGC web services for this data (e.g. a THREDDS server's WMS and WCS
    /// endpoints): a QGIS desktop gets them as ready-made connections in its browser panel. May
    /// stand alone (an OGC-only source) or describe the data of the backend above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ogc: Option<OgcServices>,
    /// Where the data appears in the workspace. Required when the source is mounted (nfs, pvc,
    /// or a csi driver); an s3 or irods source without csi is only injected as environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), pattern(r"^/([^/\x00]+/?)*$"))]
    #[x_kube(validation = Rule::new("!self.contains('/../') && !self.endsWith('/..')").message("mountPath may not contain '..'"))]
    pub mount_path: Option<String>,
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

/// OGC web service endpoints (`http(s)://` URLs of the services' roots, without a `REQUEST=`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.wms) || has(self.wmts) || has(self.wcs)").message("ogc needs at least one of wms, wmts or wcs").reason(Reason::FieldValueRequired))]
pub struct OgcServices {
    /// A Web Map Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/]+(/\S*)?$"))]
    pub wms: Option<String>,
    /// A Web Map Tile Service (its capabilities document's URL or root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/]+(/\S*)?$"))]
    pub wmts: Option<String>,
    /// A Web Coverage Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s/]+(/\S*)?$"))]
    pub wcs: Option<String>,
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

/// A credentials Secret for the members of one group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupCredentials {
    /// The group (as in `allowedGroups`), e.g. a virtual organisation.
    #[schemars(
        length(min = 1, max = 256),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._:=@+-]*$")
    )]
    pub group: String,
    /// The Secret its members get (same keys as `credentialsSecret`).
    pub secret: SecretRef,
}

/// An S3 bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.credentialsSecret) || !has(self.credentialsByGroup)").message("credentialsSecret and credentialsByGroup are mutually exclusive").reason(Reason::FieldValueForbidden).field_path(".credentialsByGroup"))]
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
    /// Secret with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; anonymous access when
    /// absent (and no `credentialsByGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretRef>,
    /// Credentials by group, in order: a user gets the Secret of the first group they belong
    /// to, and anonymous access when in none. Not together with `credentialsSecret`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y.group == x.group))").message("credentialsByGroup must not repeat a group"))]
    pub credentials_by_group: Vec<GroupCredentials>,
    /// Virtual-hosted-style requests (`bucket.host`); path-style (`host/bucket`, what most
    /// on-premises servers need) when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub virtual_hosting: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// An iRODS collection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.credentialsSecret) || !has(self.credentialsByGroup)").message("credentialsSecret and credentialsByGroup are mutually exclusive").reason(Reason::FieldValueForbidden).field_path(".credentialsByGroup"))]
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
    /// Credentials by group, in order: a user gets the Secret of the first group they belong
    /// to, and none when in none. Not together with `credentialsSecret`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y.group == x.group))").message("credentialsByGroup must not repeat a group"))]
    pub credentials_by_group: Vec<GroupCredentials>,
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

/// How a CSI driver's volume is attached to the workspace.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CsiMode {
    /// Ephemeral when the cluster's CSIDriver lists `Ephemeral` in its
    /// `volumeLifecycleModes`, else Persistent.
    #[default]
    Auto,
    /// An inline ephemeral CSI volume in the pod.
    Ephemeral,
    /// A statically provisioned PersistentVolume and its claim, per workspace.
    Persistent,
}

/// A CSI volume realising an s3 or irods source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsiSpec {
    /// CSI driver name, e.g. `ru.yandex.s3.csi` or `irods.csi.cyverse.org`.
    #[schemars(length(min = 1, max = 253))]
    pub driver: String,
    /// Driver-specific volume attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_attributes: BTreeMap<String, String>,
    /// Secret passed to the driver as `nodePublishSecretRef` (and `nodeStageSecretRef` on a
    /// PersistentVolume); defaults to the source's credentials secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_publish_secret: Option<SecretRef>,
    /// `Auto` (the default), `Ephemeral` or `Persistent`.
    #[serde(default)]
    pub mode: CsiMode,
    /// The PersistentVolume's `volumeHandle` (Persistent mode); default: `bucket/prefix` for
    /// s3, the PersistentVolume's name for irods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub volume_handle: Option<String>,
    /// The PersistentVolume's and claim's `storage` (Persistent mode; the drivers ignore it),
    /// default `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"))]
    pub capacity: Option<String>,
}
