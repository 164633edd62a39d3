//! Caps: what one user, and the members of one group, may use in a NodePool at once.
//!
//! The caller passes the [`Usage`] of the new workspace and what the other running workspaces
//! of the pool already use, aggregated per user and per group (the in-memory index of
//! [`crate::policy::admission`] keeps those sums; [`workspace_usage`] estimates one workspace);
//! [`check_caps`] adds the new workspace to them.
//!
//! A resource is checked only when the new workspace uses some of it: a CPU-only workspace is not
//! refused because the GPUs of its group are over a (since lowered) cap. The workspace count is
//! always checked.

use std::collections::BTreeSet;
use std::ops::{Add, AddAssign, Sub, SubAssign};

use thiserror::Error;

use super::quantity::{format_bytes, format_cpu_millis, parse_bytes, parse_cpu_millis};
use super::resources::effective_request;
use super::routing::plural;
use crate::api::v1alpha1::{Caps, NodePoolCaps, ResourceRequest};

/// What one or more workspaces use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Running workspaces.
    pub workspaces: i64,
    /// CPU in milli-CPUs.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// GPUs.
    pub gpus: i64,
}

impl Add for Usage {
    type Output = Usage;

    fn add(self, rhs: Usage) -> Usage {
        Usage {
            workspaces: self.workspaces.saturating_add(rhs.workspaces),
            cpu_millis: self.cpu_millis.saturating_add(rhs.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(rhs.memory_bytes),
            gpus: self.gpus.saturating_add(rhs.gpus),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

impl Sub for Usage {
    type Output = Usage;

    fn sub(self, rhs: Usage) -> Usage {
        Usage {
            workspaces: self.workspaces.saturating_sub(rhs.workspaces),
            cpu_millis: self.cpu_millis.saturating_sub(rhs.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(rhs.memory_bytes),
            gpus: self.gpus.saturating_sub(rhs.gpus),
        }
    }
}

impl SubAssign for Usage {
    fn sub_assign(&mut self, rhs: Usage) {
        *self = *self - rhs;
    }
}

impl Usage {
    /// Nothing at all.
    pub const ZERO: Usage = Usage {
        workspaces: 0,
        cpu_millis: 0,
        memory_bytes: 0,
        gpus: 0,
    };

    /// `n` times this usage (e.g. `n` Dask workers).
    pub fn times(self, n: i64) -> Usage {
        Usage {
            workspaces: self.workspaces.saturating_mul(n),
            cpu_millis: self.cpu_millis.saturating_mul(n),
            memory_bytes: self.memory_bytes.saturating_mul(n),
            gpus: self.gpus.saturating_mul(n),
        }
    }
}

/// The most units of `per_unit` (Dask workers: they hold CPU, memory and GPUs, and are not
/// workspaces) from 0 to `max` that fit `caps` given what the user and the groups already use
/// (see [`check_caps`]), with the error that stopped one more; `Err` only for an invalid cap.
#[allow(clippy::too_many_arguments)] // check_caps's arguments plus the unit count
pub fn fit_units(
    pool: &str,
    caps: Option<&NodePoolCaps>,
    user: &str,
    groups: &BTreeSet<String>,
    per_unit: Usage,
    max: i32,
    user_usage: Usage,
    group_usage: impl Fn(&str) -> Usage,
) -> Result<(i32, Option<CapError>), CapError> {
    // Units are not workspaces: the caps on running workspaces do not apply to them.
    let caps = caps.map(|c| {
        let strip = |cap: &Option<Caps>| {
            cap.clone().map(|cap| Caps {
                workspaces: None,
                ..cap
            })
        };
        NodePoolCaps {
            per_user: strip(&c.per_user),
            per_group: strip(&c.per_group),
        }
    });
    let check = |n: i32| {
        check_caps(
            pool,
            caps.as_ref(),
            user,
            groups,
            per_unit.times(i64::from(n)),
            user_usage,
            &group_usage,
        )
    };
    match check(max) {
        Ok(()) => return Ok((max, None)),
        Err(e @ CapError::Invalid(_)) => return Err(e),
        Err(_) => {}
    }
    // Fitting is monotone in n: the largest n that fits, by bisection (`lo` fits, `hi` not).
    let (mut lo, mut hi) = (0, max);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match check(mid) {
            Ok(()) => lo = mid,
            Err(e @ CapError::Invalid(_)) => return Err(e),
            Err(_) => hi = mid,
        }
    }
    let stopped = check(lo + 1).err();
    Ok((lo, stopped))
}

/// Why a workspace would exceed a cap.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CapError {
    /// A `caps.perUser` bound.
    #[error("{0}")]
    User(String),
    /// A `caps.perGroup` bound.
    #[error("{0}")]
    Group(String),
    /// A cap is not a valid quantity.
    #[error("{0}")]
    Invalid(String),
}

impl CapError {
    /// The condition reason: `UserCapExceeded`, `GroupCapExceeded` or `InvalidNodePool`.
    pub fn reason(&self) -> &'static str {
        match self {
            CapError::User(_) => "UserCapExceeded",
            CapError::Group(_) => "GroupCapExceeded",
            CapError::Invalid(_) => "InvalidNodePool",
        }
    }
}

/// The usage of one workspace with the given effective request (unparseable quantities count 0).
pub fn usage_of(request: &ResourceRequest) -> Usage {
    Usage {
        workspaces: 1,
        cpu_millis: request
            .cpu
            .as_deref()
            .and_then(|q| parse_cpu_millis(q).ok())
            .unwrap_or(0),
        memory_bytes: request
            .memory
            .as_deref()
            .and_then(|q| parse_bytes(q).ok())
            .unwrap_or(0),
        gpus: i64::from(request.gpu_count().max(0)),
    }
}

/// Estimates the usage of another workspace from its spec alone (its status does not record its
/// effective resources, and `validate` sees only its own profile):
///
/// - `spec.resources` fields win;
/// - missing fields come from `profile_defaults` when the other workspace uses the same profile as
///   the one being validated (pass that profile's `defaultResources`), else `None` is passed and
///   the built-in defaults apply (1 CPU, 2Gi, no GPU);
/// - on a `gpu` pool a workspace counts at least one GPU, since only workspaces asking for GPUs
///   are placed there.
pub fn workspace_usage(
    resources: Option<&ResourceRequest>,
    profile_defaults: Option<&ResourceRequest>,
    gpu_pool: bool,
) -> Usage {
    let mut usage = usage_of(&effective_request(resources, profile_defaults));
    if gpu_pool {
        usage.gpus = usage.gpus.max(1);
    }
    usage
}

/// Checks `caps` of pool `pool` for a new workspace of `user` (in `groups`) using `new`, given
/// what the other running workspaces of the pool use: `user_usage` of `user`'s, and
/// `group_usage(group)` of the members of `group`. Per-user caps first, then each group in name
/// order; within a scope: workspaces, CPU, memory, GPUs.
pub fn check_caps(
    pool: &str,
    caps: Option<&NodePoolCaps>,
    user: &str,
    groups: &BTreeSet<String>,
    new: Usage,
    user_usage: Usage,
    group_usage: impl Fn(&str) -> Usage,
) -> Result<(), CapError> {
    let Some(caps) = caps else {
        return Ok(());
    };
    if let Some(per_user) = &caps.per_user {
        let total = new + user_usage;
        check_scope(pool, &format!("user {user}"), per_user, new, total).map_err(|e| match e {
            ScopeError::Exceeded(m) => CapError::User(m),
            ScopeError::Invalid(m) => CapError::Invalid(m),
        })?;
    }
    if let Some(per_group) = &caps.per_group {
        for group in groups {
            let total = new + group_usage(group);
            check_scope(pool, &format!("group {group}"), per_group, new, total).map_err(
                |e| match e {
                    ScopeError::Exceeded(m) => CapError::Group(m),
                    ScopeError::Invalid(m) => CapError::Invalid(m),
                },
            )?;
        }
    }
    Ok(())
}

enum ScopeError {
    Exceeded(String),
    Invalid(String),
}

fn check_scope(
    pool: &str,
    who: &str,
    cap: &Caps,
    new: Usage,
    total: Usage,
) -> Result<(), ScopeError> {
    let exceeded = |what: String, cap: String| {
        ScopeError::Exceeded(format!(
            "{who} would use {what} in NodePool {pool} (cap {cap})"
        ))
    };
    if let Some(max) = cap.workspaces
        && total.workspaces > i64::from(max)
    {
        return Err(exceeded(
            plural(total.workspaces, "running workspace"),
            max.to_string(),
        ));
    }
    if let Some(max) = &cap.cpu
        && new.cpu_millis > 0
    {
        let max_millis = parse_cpu_millis(max).map_err(|e| {
            ScopeError::Invalid(format!("NodePool {pool} has an invalid cpu cap: {e}"))
        })?;
        if total.cpu_millis > max_millis {
            return Err(exceeded(
                format!("{} CPU", format_cpu_millis(total.cpu_millis)),
                max.clone(),
            ));
        }
    }
    if let Some(max) = &cap.memory
        && new.memory_bytes > 0
    {
        let max_bytes = parse_bytes(max).map_err(|e| {
            ScopeError::Invalid(format!("NodePool {pool} has an invalid memory cap: {e}"))
        })?;
        if total.memory_bytes > max_bytes {
            return Err(exceeded(
                format!("{} of memory", format_bytes(total.memory_bytes)),
                max.clone(),
            ));
        }
    }
    if let Some(max) = cap.gpus
        && new.gpus > 0
        && total.gpus > i64::from(max)
    {
        return Err(exceeded(plural(total.gpus, "GPU"), max.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(yaml: &str) -> NodePoolCaps {
        serde_saphyr::from_str(yaml).expect("caps")
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn usage(workspaces: i64, cpu_millis: i64, memory_bytes: i64, gpus: i64) -> Usage {
        Usage {
            workspaces,
            cpu_millis,
            memory_bytes,
            gpus,
        }
    }

    /// Another running workspace of the pool: its owner, groups and usage.
    struct Consumer {
        user: String,
        groups: BTreeSet<String>,
        usage: Usage,
    }

    fn consumer(user: &str, groups: &[&str], u: Usage) -> Consumer {
        Consumer {
            user: user.into(),
            groups: set(groups),
            usage: u,
        }
    }

    /// `check_caps` with the others' usage summed per user and per group.
    fn check(
        caps: Option<&NodePoolCaps>,
        groups: &BTreeSet<String>,
        new: Usage,
        others: &[Consumer],
    ) -> Result<(), CapError> {
        let user_usage = others
            .iter()
            .filter(|c| c.user == "alice")
            .fold(Usage::ZERO, |acc, c| acc + c.usage);
        let group_usage = |g: &str| {
            others
                .iter()
                .filter(|c| c.groups.contains(g))
                .fold(Usage::ZERO, |acc, c| acc + c.usage)
        };
        check_caps("p", caps, "alice", groups, new, user_usage, group_usage)
    }

    #[test]
    fn fit_units_finds_the_most_units_under_every_cap() {
        let gib = 1i64 << 30;
        let worker = usage(0, 2000, 4 * gib, 0);
        let fit = |yaml: &str, max: i32, mine: Usage, group: Usage| {
            let caps = caps(yaml);
            fit_units(
                "p",
                Some(&caps),
                "alice",
                &set(&["g"]),
                worker,
                max,
                mine,
                |_| group,
            )
            .map(|(n, e)| (n, e.map(|e| e.to_string())))
        };
        let z = Usage::ZERO;
        assert_eq!(fit("{}", 7, z, z), Ok((7, None)));
        assert_eq!(
            fit("perUser: {cpu: \"9\"}", 7, z, z),
            Ok((
                4,
                Some("user alice would use 10 CPU in NodePool p (cap 9)".into())
            ))
        );
        assert_eq!(
            fit("perUser: {memory: 8Gi}", 7, usage(1, 0, 4 * gib, 0), z),
            Ok((
                1,
                Some("user alice would use 12Gi of memory in NodePool p (cap 8Gi)".into())
            ))
        );
        assert_eq!(
            fit("perGroup: {cpu: \"4\"}", 3, z, usage(2, 4000, 0, 0)),
            Ok((
                0,
                Some("group g would use 6 CPU in NodePool p (cap 4)".into())
            ))
        );
        // A cap on workspaces, even one already exceeded, does not count units.
        assert_eq!(
            fit("perUser: {workspaces: 0}", 3, usage(2, 0, 0, 0), z),
            Ok((3, None))
        );
        assert_eq!(
            fit("perUser: {cpu: many}", 3, z, z).map_err(|e| e.reason()),
            Err("InvalidNodePool")
        );
        // Exactly at the cap fits.
        assert_eq!(fit("perUser: {cpu: \"6\"}", 3, z, z), Ok((3, None)));
    }

    #[test]
    fn cap_table() {
        let gib = 1i64 << 30;
        let cpu_only = usage(1, 1000, 2 * gib, 0);
        let one_gpu = usage(1, 1000, 2 * gib, 1);
        type Case<'a> = (&'a str, Usage, Vec<Consumer>, Result<(), CapError>);
        let cases: Vec<Case> = vec![
            ("{}", cpu_only, vec![], Ok(())),
            (
                "perUser: {workspaces: 0}",
                cpu_only,
                vec![],
                Err(CapError::User(
                    "user alice would use 1 running workspace in NodePool p (cap 0)".into(),
                )),
            ),
            (
                "perUser: {gpus: 1}",
                one_gpu,
                vec![consumer("alice", &[], usage(1, 0, 0, 1))],
                Err(CapError::User(
                    "user alice would use 2 GPUs in NodePool p (cap 1)".into(),
                )),
            ),
            // GPUs over the cap (after it was lowered) do not block a workspace without GPUs.
            (
                "perUser: {gpus: 1}",
                cpu_only,
                vec![consumer("alice", &[], usage(1, 0, 0, 3))],
                Ok(()),
            ),
            (
                "perGroup: {memory: 4Gi}",
                cpu_only,
                vec![consumer("bob", &["b"], usage(1, 0, 3 * gib, 0))],
                Err(CapError::Group(
                    "group b would use 5Gi of memory in NodePool p (cap 4Gi)".into(),
                )),
            ),
            // Groups the user is not in are not checked.
            (
                "perGroup: {workspaces: 1}",
                cpu_only,
                vec![consumer("carol", &["c"], usage(1, 0, 0, 0))],
                Ok(()),
            ),
            (
                "perUser: {cpu: lots}",
                cpu_only,
                vec![],
                Err(CapError::Invalid(
                    "NodePool p has an invalid cpu cap: \"lots\" is not a Kubernetes quantity"
                        .into(),
                )),
            ),
        ];
        for (yaml, new, others, want) in cases {
            let got = check(Some(&caps(yaml)), &set(&["a", "b"]), new, &others);
            assert_eq!(got, want, "{yaml}");
        }
        assert_eq!(check(None, &set(&[]), cpu_only, &[]), Ok(()));
        assert_eq!(usage(1, 2, 3, 4) - usage(1, 1, 1, 1), usage(0, 1, 2, 3));
        assert_eq!(usage(0, 0, 0, 0) - usage(1, 1, 1, 1), usage(-1, -1, -1, -1));
    }

    #[test]
    fn reasons() {
        assert_eq!(CapError::User(String::new()).reason(), "UserCapExceeded");
        assert_eq!(CapError::Group(String::new()).reason(), "GroupCapExceeded");
        assert_eq!(CapError::Invalid(String::new()).reason(), "InvalidNodePool");
    }

    #[test]
    fn usage_estimates() {
        let req = |yaml: &str| -> ResourceRequest { serde_saphyr::from_str(yaml).expect("req") };
        assert_eq!(
            workspace_usage(None, None, false),
            usage(1, 1000, 2 << 30, 0)
        );
        assert_eq!(
            workspace_usage(None, None, true),
            usage(1, 1000, 2 << 30, 1)
        );
        assert_eq!(
            workspace_usage(Some(&req("{cpu: 250m, gpus: 2}")), None, true),
            usage(1, 250, 2 << 30, 2)
        );
        assert_eq!(
            workspace_usage(None, Some(&req("{memory: 8Gi}")), false),
            usage(1, 1000, 8 << 30, 0)
        );
    }
}
