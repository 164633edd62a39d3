//! Atelier: a Kubernetes control plane for Virtual Research Environments.

pub mod api;
pub mod crdgen;
pub mod operator;
pub mod policy;
pub mod scopes;
pub mod store;
