//! Atelier's custom resources. Pure data: serde + schemars, no I/O.
//!
//! One module per API version; `v1alpha1` is served and stored.

pub mod v1alpha1;

/// The API group of every Atelier resource.
pub const GROUP: &str = "atelier.dev";

/// Regular expressions shared by the schemas (and by the hub, which must refuse the same names).
pub mod patterns {
    /// An RFC 1123 label: what Kubernetes accepts as a DNS-1123 name segment.
    pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
    /// An RFC 1123 label or the empty string (the default server of a user).
    pub const DNS_LABEL_OR_EMPTY: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$";
    /// An RFC 1123 subdomain (names of cluster-scoped resources, claims, secrets).
    pub const DNS_SUBDOMAIN: &str =
        r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
    /// A Kubernetes resource quantity (`500m`, `2`, `4Gi`, `1.5e3`).
    pub const QUANTITY: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";
    /// A POSIX environment variable name.
    pub const ENV_NAME: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
    /// An absolute path without `..` segments.
    pub const ABSOLUTE_PATH: &str = r"^/([^/\x00]+/?)*$";
    /// A group name as the hub derives it from OIDC claims (`vo.example.org:role=member`).
    pub const GROUP_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._:=@+-]*$";
}
