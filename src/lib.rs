//! Atelier: a Kubernetes control plane for Virtual Research Environments.

pub mod api;
pub mod backend;
pub mod batch;
pub mod config;
pub mod crdgen;
pub mod hub;
pub mod k8s;
pub mod net;
pub mod operator;
pub mod policy;
pub mod proxy;
pub mod rbac;
pub mod scopes;
pub mod store;
