//! Node-pool routing: which NodePool a workspace runs on.
//!
//! Rules, in order:
//!
//! 1. A workspace that names `nodePool` runs there or nowhere. The pool must exist
//!    ([`RoutingError::NotFound`]), be open to one of the user's groups, and fit the request
//!    ([`RoutingError::Forbidden`] otherwise): a workspace asking for GPUs needs a `gpu` pool
//!    offering the requested `gpuType` (when one is requested); a workspace asking for no GPU may
//!    run on an `interactive` or a `batch` pool, never on a `gpu` pool (GPU nodes are scarce and
//!    tainted; a CPU-only server there would hold a node without using it).
//! 2. A workspace asking for GPUs goes to the profile's default pool when that is an eligible
//!    `gpu` pool, else to the first eligible `gpu` pool in name order.
//! 3. A workspace asking for no GPU goes to the profile's default pool when that is eligible
//!    (`interactive` or `batch`, open to the user; a `gpu` default pool is skipped), else to the
//!    first eligible `interactive` pool in name order. A `batch` pool is used only when named by
//!    the workspace or by the profile.
//!
//! 4. Batch work ([`PoolRequest::batch`], Dask workers) asking for no GPU goes, when nothing is
//!    named, to the first eligible `batch` pool in name order instead of an `interactive` one.
//!
//! 5. A pool backed by Slurm (`spec.slurm`) takes BatchJobs only ([`PoolRequest::job`]):
//!    workspaces and Dask workers never go there, named or not.
//!
//! When nothing is eligible the error is [`RoutingError::NoEligiblePool`], whose message says why.

use std::collections::BTreeSet;

use kube::ResourceExt;
use thiserror::Error;

use super::groups::{allowed, format_groups};
use crate::api::v1alpha1::{NodePool, PoolPurpose};

/// What a workspace asks of its pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolRequest<'a> {
    /// `spec.nodePool` of the workspace.
    pub explicit: Option<&'a str>,
    /// `spec.defaultNodePool` of the profile.
    pub profile_default: Option<&'a str>,
    /// GPUs requested (after profile defaults).
    pub gpus: i32,
    /// GPU model requested (after profile defaults).
    pub gpu_type: Option<&'a str>,
    /// Batch work (Dask workers, BatchJobs): a CPU-only request goes to a `batch` pool when
    /// none is named, instead of an `interactive` one.
    pub batch: bool,
    /// A BatchJob: it may go to a pool backed by Slurm (`spec.slurm`), where nothing else runs.
    pub job: bool,
}

/// Why no pool was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RoutingError {
    /// The named pool does not exist.
    #[error("NodePool {pool} does not exist")]
    NotFound {
        /// The name the workspace gave.
        pool: String,
    },
    /// The named pool exists but the workspace may not run there.
    #[error("{message}")]
    Forbidden {
        /// Which rule excludes it.
        message: String,
    },
    /// No pool fits.
    #[error("{message}")]
    NoEligiblePool {
        /// Which rule excludes the pools.
        message: String,
    },
}

impl RoutingError {
    /// The condition reason: `NodePoolNotFound`, `NodePoolForbidden` or `NoEligiblePool`.
    pub fn reason(&self) -> &'static str {
        match self {
            RoutingError::NotFound { .. } => "NodePoolNotFound",
            RoutingError::Forbidden { .. } => "NodePoolForbidden",
            RoutingError::NoEligiblePool { .. } => "NoEligiblePool",
        }
    }
}

/// Chooses the pool of a workspace (see the module documentation for the rules).
pub fn route<'p>(
    request: &PoolRequest<'_>,
    pools: &'p [NodePool],
    groups: &BTreeSet<String>,
) -> Result<&'p NodePool, RoutingError> {
    let mut sorted: Vec<&NodePool> = pools.iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    let find = |name: &str| sorted.iter().copied().find(|p| p.name_any() == name);

    if let Some(name) = request.explicit {
        let pool = find(name).ok_or_else(|| RoutingError::NotFound {
            pool: name.to_owned(),
        })?;
        return match unfit(pool, request, groups, true) {
            None => Ok(pool),
            Some(message) => Err(RoutingError::Forbidden { message }),
        };
    }

    let wants_gpu = request.gpus > 0;
    if let Some(pool) = request.profile_default.and_then(find)
        && unfit(pool, request, groups, true).is_none()
        && (wants_gpu || pool.spec.purpose != PoolPurpose::Gpu)
    {
        return Ok(pool);
    }
    let purpose = if wants_gpu {
        PoolPurpose::Gpu
    } else if request.batch {
        PoolPurpose::Batch
    } else {
        PoolPurpose::Interactive
    };
    if let Some(pool) = sorted
        .iter()
        .copied()
        .find(|p| p.spec.purpose == purpose && unfit(p, request, groups, request.batch).is_none())
    {
        return Ok(pool);
    }

    // Nothing fits: say why.
    let of_purpose: Vec<&NodePool> = sorted
        .iter()
        .copied()
        .filter(|p| p.spec.purpose == purpose)
        .collect();
    let what = match (wants_gpu, request.gpu_type) {
        (true, Some(t)) => format!("gpu NodePool offering gpuType {t}"),
        (true, None) => "gpu NodePool".to_owned(),
        (false, _) => format!("{} NodePool", purpose.as_str()),
    };
    let fitting = of_purpose
        .iter()
        .filter(|p| offers(p, request.gpu_type))
        .count();
    let message = if fitting == 0 {
        match (wants_gpu, request.gpu_type) {
            (true, Some(t)) => {
                let offered: BTreeSet<&String> = of_purpose
                    .iter()
                    .filter_map(|p| p.spec.gpu.as_ref())
                    .flat_map(|g| g.types.iter())
                    .collect();
                format!(
                    "no gpu NodePool offers gpuType {t} (offered: {})",
                    format_groups(offered)
                )
            }
            _ => format!("no {what} exists"),
        }
    } else {
        format!("no {what} is open to groups {}", format_groups(groups))
    };
    Err(RoutingError::NoEligiblePool { message })
}

/// Whether a pool offers the GPU type (any type when none is requested).
fn offers(pool: &NodePool, gpu_type: Option<&str>) -> bool {
    match (&pool.spec.gpu, gpu_type) {
        (Some(gpu), Some(t)) => gpu.types.iter().any(|offered| offered == t),
        (Some(_), None) => true,
        (None, _) => pool.spec.purpose != PoolPurpose::Gpu,
    }
}

/// Why `pool` cannot take the request, or `None` when it can. `named`: the pool was named by the
/// workspace or the profile (so a `batch` pool is acceptable for a CPU-only workspace).
fn unfit(
    pool: &NodePool,
    request: &PoolRequest<'_>,
    groups: &BTreeSet<String>,
    named: bool,
) -> Option<String> {
    let name = pool.name_any();
    if !allowed(&pool.spec.allowed_groups, groups) {
        return Some(format!(
            "NodePool {name} is open only to groups {}; the user's groups are {}",
            format_groups(&pool.spec.allowed_groups),
            format_groups(groups)
        ));
    }
    if pool.spec.slurm.is_some() && !request.job {
        return Some(format!(
            "NodePool {name} is backed by Slurm; only batch jobs run there"
        ));
    }
    let purpose = pool.spec.purpose;
    if request.gpus > 0 {
        if purpose != PoolPurpose::Gpu {
            return Some(format!(
                "NodePool {name} has purpose {}; a workspace asking for {} needs a gpu NodePool",
                purpose.as_str(),
                plural(i64::from(request.gpus), "GPU")
            ));
        }
        let Some(gpu) = &pool.spec.gpu else {
            return Some(format!("gpu NodePool {name} describes no GPUs (spec.gpu)"));
        };
        if let Some(t) = request.gpu_type
            && !gpu.types.iter().any(|offered| offered == t)
        {
            return Some(format!(
                "NodePool {name} does not offer gpuType {t} (it offers {})",
                format_groups(&gpu.types)
            ));
        }
        return None;
    }
    match purpose {
        PoolPurpose::Gpu => Some(format!(
            "NodePool {name} is a gpu NodePool; a workspace asking for no GPU may not run there"
        )),
        PoolPurpose::Batch if !named => Some(format!(
            "NodePool {name} is a batch NodePool; it is used only when named"
        )),
        PoolPurpose::Interactive | PoolPurpose::Batch => None,
    }
}

/// `1 GPU`, `2 GPUs`.
pub(crate) fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("{n} {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Vec<NodePool> {
        serde_saphyr::from_str(
            r#"
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: zeta}
  spec: {purpose: interactive}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: alpha}
  spec: {purpose: interactive, allowedGroups: [staff]}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: gpu-b}
  spec: {purpose: gpu, gpu: {types: [a100]}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: gpu-a}
  spec: {purpose: gpu, gpu: {types: [a100, h100]}, allowedGroups: [staff]}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: batch}
  spec: {purpose: batch}
"#,
        )
        .expect("pools")
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn name_order_and_preferences() {
        let pools = pools();
        let staff = set(&["staff"]);
        let nobody = set(&[]);
        let r = |req: PoolRequest, groups: &BTreeSet<String>| {
            route(&req, &pools, groups).map(|p| p.name_any())
        };
        let cpu = PoolRequest::default();
        let gpu = PoolRequest {
            gpus: 1,
            ..PoolRequest::default()
        };
        assert_eq!(r(cpu, &staff), Ok("alpha".into()), "first by name");
        assert_eq!(r(cpu, &nobody), Ok("zeta".into()), "first open by name");
        assert_eq!(r(gpu, &staff), Ok("gpu-a".into()));
        assert_eq!(r(gpu, &nobody), Ok("gpu-b".into()));
        let gpu_default = PoolRequest {
            profile_default: Some("gpu-b"),
            ..gpu
        };
        assert_eq!(
            r(gpu_default, &staff),
            Ok("gpu-b".into()),
            "profile default wins"
        );
        let h100 = PoolRequest {
            gpu_type: Some("h100"),
            profile_default: Some("gpu-b"),
            ..gpu
        };
        assert_eq!(
            r(h100, &staff),
            Ok("gpu-a".into()),
            "default skipped: no h100"
        );
        let batch_default = PoolRequest {
            profile_default: Some("batch"),
            ..cpu
        };
        assert_eq!(r(batch_default, &nobody), Ok("batch".into()));
        let missing_default = PoolRequest {
            profile_default: Some("gone"),
            ..cpu
        };
        assert_eq!(r(missing_default, &nobody), Ok("zeta".into()));
        assert_eq!(
            r(
                PoolRequest {
                    gpu_type: Some("h100"),
                    ..gpu
                },
                &nobody
            ),
            Err(RoutingError::NoEligiblePool {
                message: "no gpu NodePool offering gpuType h100 is open to groups []".into()
            })
        );
        assert_eq!(
            r(
                PoolRequest {
                    explicit: Some("batch"),
                    ..gpu
                },
                &nobody
            )
            .map_err(|e| e.reason()),
            Err("NodePoolForbidden")
        );
        assert_eq!(
            r(
                PoolRequest {
                    explicit: Some("nope"),
                    ..cpu
                },
                &nobody
            ),
            Err(RoutingError::NotFound {
                pool: "nope".into()
            })
        );
        // Batch work: the batch pool unnamed; GPU batch work still goes to a gpu pool.
        let batch = PoolRequest { batch: true, ..cpu };
        assert_eq!(r(batch, &nobody), Ok("batch".into()));
        assert_eq!(
            r(PoolRequest { batch: true, ..gpu }, &nobody),
            Ok("gpu-b".into())
        );
        assert_eq!(
            r(
                PoolRequest {
                    profile_default: Some("zeta"),
                    ..batch
                },
                &nobody
            ),
            Ok("zeta".into()),
            "a named interactive pool takes batch work"
        );
        let no_batch: Vec<NodePool> = pools
            .iter()
            .filter(|p| p.spec.purpose != PoolPurpose::Batch)
            .cloned()
            .collect();
        assert_eq!(
            route(&batch, &no_batch, &nobody).map(|p| p.name_any()),
            Err(RoutingError::NoEligiblePool {
                message: "no batch NodePool exists".into()
            })
        );
    }

    #[test]
    fn slurm_pools_take_batch_jobs_only() {
        let pools: Vec<NodePool> = serde_saphyr::from_str(
            r#"
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: a-hpc}
  spec:
    purpose: batch
    slurm: {restUrl: "http://127.0.0.1:6820", partition: debug, tokenSecret: {name: slurm-jwt}}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: b-batch}
  spec: {purpose: batch}
- apiVersion: atelier.dev/v1alpha1
  kind: NodePool
  metadata: {name: zeta}
  spec: {purpose: interactive}
"#,
        )
        .expect("pools");
        let nobody = BTreeSet::new();
        let r = |req: PoolRequest| route(&req, &pools, &nobody).map(|p| p.name_any());
        let job = PoolRequest {
            batch: true,
            job: true,
            ..PoolRequest::default()
        };
        let dask = PoolRequest {
            batch: true,
            ..PoolRequest::default()
        };
        assert_eq!(
            r(job),
            Ok("a-hpc".into()),
            "a job: first batch pool by name"
        );
        assert_eq!(r(dask), Ok("b-batch".into()), "Dask workers skip Slurm");
        let named = PoolRequest {
            explicit: Some("a-hpc"),
            ..PoolRequest::default()
        };
        assert_eq!(
            r(named),
            Err(RoutingError::Forbidden {
                message: "NodePool a-hpc is backed by Slurm; only batch jobs run there".into()
            }),
            "a workspace naming it is refused"
        );
        assert_eq!(
            r(PoolRequest {
                profile_default: Some("a-hpc"),
                ..PoolRequest::default()
            }),
            Ok("zeta".into()),
            "a profile default on Slurm is skipped for a workspace"
        );
    }
}
