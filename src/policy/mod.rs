//! Pure policy: groups, quantities, node-pool routing, caps and admission, name rules, and what a workspace
//! must satisfy to start ([`workspace`]). No I/O.

pub mod admission;
pub mod batch;
pub mod caps;
pub mod data;
pub mod desktop;
pub mod groups;
pub mod names;
pub mod quantity;
pub mod resources;
pub mod routing;
pub mod workspace;

pub use admission::{Claim, UsageIndex};
pub use caps::{CapError, Usage, check_caps, fit_units, usage_of, workspace_usage};
pub use groups::{allowed, format_groups};
pub use quantity::{
    QuantityError, format_bytes, format_cpu_cores, format_cpu_millis, parse_bytes, parse_cpu_millis,
};
pub use resources::{DEFAULT_CPU, DEFAULT_MEMORY, effective_request};
pub use routing::{PoolRequest, RoutingError, route};
