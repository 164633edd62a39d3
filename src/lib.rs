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

/// The allocator of every program built on this crate (the `atelier` command, the benchmarks'
/// binaries, the tests): mimalloc. With glibc's, the hub spent about a fifth of a culler's page
/// (`bench/hub`, 200 users) in malloc and free, a third of that merging freed chunks before each
/// answer's large buffer (`malloc_consolidate`). Built without transparent huge pages (Cargo.toml,
/// `no_thp`), which made the proxy's memory grow by 2 MiB at a time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
