//! Admission to a NodePool's caps, decided atomically against an in-memory usage index.
//!
//! A [`UsageIndex`] knows, per Workspace (`namespace/name`), the [`Claim`] it holds on a pool,
//! and keeps the sums per (pool, user) and per (pool, group), so that a cap check costs
//! O(groups) and never a walk over every Workspace. Two sources feed it:
//!
//! - [`UsageIndex::observe`]: what the Workspace informer shows (a Workspace running on
//!   `status.nodePool`, its usage estimated from its spec by [`observed_claim`]);
//! - [`UsageIndex::admit`]: checks the caps *and* reserves the claim in one step, so that two
//!   reconciliations running at once cannot both take the last place under a cap. A
//!   reservation wins over the observed estimate of the same Workspace until
//!   [`UsageIndex::release`] (stopped, refused, deleted).
//!
//! Pure: the operator holds the index behind a mutex and feeds it from its Workspace stream.
//! (linkerd policy-controller `k8s/index`: a pure in-memory index fed from watches, tested
//! without an API server.)

use std::collections::{BTreeSet, HashMap, HashSet};

use kube::ResourceExt;

use super::caps::{CapError, Usage, check_caps, fit_units, usage_of, workspace_usage};
use super::groups::{GROUPS_ANNOTATION, parse_groups};
use super::resources::effective_request;
use crate::api::v1alpha1::{DesiredState, NodePoolCaps, ResourceRequest, Workspace};

/// What one running Workspace holds on a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The NodePool.
    pub pool: String,
    /// The owner.
    pub user: String,
    /// The owner's groups.
    pub groups: BTreeSet<String>,
    /// What it uses.
    pub usage: Usage,
}

/// The `namespace/name` key of a Workspace in the index.
pub fn key_of(ws: &Workspace) -> String {
    format!("{}/{}", ws.namespace().unwrap_or_default(), ws.name_any())
}

/// What the informer says a Workspace holds: a Workspace that should run and whose status names
/// the pool it was placed on claims its usage there, estimated from its spec (see
/// [`workspace_usage`]: `profile_defaults` are its profile's `defaultResources`, `gpu_pool`
/// says whether that pool is a `gpu` pool). Anything else claims nothing.
pub fn observed_claim(
    ws: &Workspace,
    profile_defaults: Option<&ResourceRequest>,
    gpu_pool: impl FnOnce(&str) -> bool,
) -> Option<Claim> {
    if ws.spec.desired_state != DesiredState::Running {
        return None;
    }
    let pool = ws.status.as_ref()?.node_pool.clone()?;
    let usage = workspace_usage(
        ws.spec.resources.as_ref(),
        profile_defaults,
        gpu_pool(&pool),
    );
    Some(Claim {
        user: ws.spec.user.clone(),
        groups: parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str)),
        pool,
        usage,
    })
}

/// What the informer says a Workspace's Dask cluster holds (under
/// [`dask_key`](crate::policy::workspace::dask_key)): a Workspace that should run and whose
/// `status.dask` names the workers' pool claims `workersWanted` workers there, each estimated
/// from `spec.dask.workerResources` over `profile_defaults` (its profile's
/// `dask.defaults.workerResources`) over the built-in 1 CPU and 2Gi. Anything else claims
/// nothing.
pub fn observed_dask_claim(
    ws: &Workspace,
    profile_defaults: Option<&ResourceRequest>,
) -> Option<Claim> {
    if ws.spec.desired_state != DesiredState::Running {
        return None;
    }
    let status = ws.status.as_ref()?.dask.as_ref()?;
    let pool = status.node_pool.clone()?;
    let request = effective_request(
        ws.spec
            .dask
            .as_ref()
            .and_then(|d| d.worker_resources.as_ref()),
        profile_defaults,
    );
    let per_worker = Usage {
        workspaces: 0,
        ..usage_of(&request)
    };
    Some(Claim {
        user: ws.spec.user.clone(),
        groups: parse_groups(ws.annotations().get(GROUPS_ANNOTATION).map(String::as_str)),
        pool,
        usage: per_worker.times(i64::from(status.workers_wanted.max(0))),
    })
}

/// Claims per Workspace and their sums per (pool, user) and (pool, group).
#[derive(Debug, Default)]
pub struct UsageIndex {
    observed: HashMap<String, Claim>,
    reserved: HashMap<String, Claim>,
    per_user: HashMap<(String, String), Usage>,
    per_group: HashMap<(String, String), Usage>,
    /// Claims given back since the last [`UsageIndex::take_freed`]: the Workspaces a cap
    /// refused may fit now.
    freed: Vec<Claim>,
}

fn add_to(sums: &mut HashMap<(String, String), Usage>, key: (String, String), usage: Usage) {
    let sum = sums.entry(key).or_default();
    *sum += usage;
}

fn take_from(sums: &mut HashMap<(String, String), Usage>, key: (String, String), usage: Usage) {
    if let Some(sum) = sums.get_mut(&key) {
        *sum -= usage;
        if *sum == Usage::ZERO {
            sums.remove(&key);
        }
    }
}

impl UsageIndex {
    /// The claim that counts for `key`: its reservation, else what was observed.
    fn effective(&self, key: &str) -> Option<&Claim> {
        self.reserved.get(key).or_else(|| self.observed.get(key))
    }

    fn add(&mut self, claim: &Claim) {
        add_to(
            &mut self.per_user,
            (claim.pool.clone(), claim.user.clone()),
            claim.usage,
        );
        for group in &claim.groups {
            add_to(
                &mut self.per_group,
                (claim.pool.clone(), group.clone()),
                claim.usage,
            );
        }
    }

    fn take(&mut self, claim: &Claim) {
        take_from(
            &mut self.per_user,
            (claim.pool.clone(), claim.user.clone()),
            claim.usage,
        );
        for group in &claim.groups {
            take_from(
                &mut self.per_group,
                (claim.pool.clone(), group.clone()),
                claim.usage,
            );
        }
    }

    /// Records what the informer shows for `key` (`None`: it holds nothing, or is gone). A
    /// reservation of `key` still wins until it is released.
    pub fn observe(&mut self, key: &str, claim: Option<Claim>) {
        let reserved = self.reserved.contains_key(key);
        let old = match claim {
            Some(claim) => {
                if !reserved {
                    self.add(&claim);
                }
                self.observed.insert(key.to_owned(), claim)
            }
            None => self.observed.remove(key),
        };
        if let Some(old) = old
            && !reserved
        {
            self.take(&old);
            if !self.observed.contains_key(key) {
                self.freed.push(old);
            }
        }
    }

    /// Checks `claim` of `key` against `caps` (those of `claim.pool`) given everything else
    /// the pool holds, and reserves it when it fits; on a refusal nothing changes. `key`'s own
    /// earlier claim (observed or reserved) is replaced, never counted twice.
    pub fn admit(
        &mut self,
        key: &str,
        claim: Claim,
        caps: Option<&NodePoolCaps>,
    ) -> Result<(), CapError> {
        let own = self.effective(key).cloned();
        let own_in = |scope_pool: &str, member: bool| match &own {
            Some(own) if own.pool == scope_pool && member => own.usage,
            _ => Usage::ZERO,
        };
        let pool = claim.pool.as_str();
        let user_usage = self
            .per_user
            .get(&(claim.pool.clone(), claim.user.clone()))
            .copied()
            .unwrap_or_default()
            - own_in(pool, own.as_ref().is_some_and(|o| o.user == claim.user));
        let group_usage = |group: &str| {
            self.per_group
                .get(&(claim.pool.clone(), group.to_owned()))
                .copied()
                .unwrap_or_default()
                - own_in(pool, own.as_ref().is_some_and(|o| o.groups.contains(group)))
        };
        check_caps(
            pool,
            caps,
            &claim.user,
            &claim.groups,
            claim.usage,
            user_usage,
            group_usage,
        )?;
        if let Some(own) = &own {
            self.take(own);
        }
        self.add(&claim);
        self.reserved.insert(key.to_owned(), claim);
        Ok(())
    }

    /// Reserves for `key` the most units of `per_unit` (Dask workers), up to `max`, that fit
    /// `caps` (those of `pool`) given everything else the pool holds; `key`'s own earlier claim
    /// is replaced, never counted twice. Returns the units reserved and, when fewer than `max`,
    /// the cap that stopped one more; `Err` only for an invalid cap (nothing changes then).
    #[allow(clippy::too_many_arguments)]
    pub fn admit_up_to(
        &mut self,
        key: &str,
        pool: &str,
        user: &str,
        groups: &BTreeSet<String>,
        per_unit: Usage,
        max: i32,
        caps: Option<&NodePoolCaps>,
    ) -> Result<(i32, Option<CapError>), CapError> {
        let own = self.effective(key).cloned();
        let own_in = |member: bool| match &own {
            Some(own) if own.pool == pool && member => own.usage,
            _ => Usage::ZERO,
        };
        let user_usage = self
            .per_user
            .get(&(pool.to_owned(), user.to_owned()))
            .copied()
            .unwrap_or_default()
            - own_in(own.as_ref().is_some_and(|o| o.user == user));
        let group_usage = |group: &str| {
            self.per_group
                .get(&(pool.to_owned(), group.to_owned()))
                .copied()
                .unwrap_or_default()
                - own_in(own.as_ref().is_some_and(|o| o.groups.contains(group)))
        };
        let (fit, stopped) = fit_units(
            pool,
            caps,
            user,
            groups,
            per_unit,
            max,
            user_usage,
            group_usage,
        )?;
        if let Some(own) = &own {
            self.take(own);
        }
        let claim = Claim {
            pool: pool.to_owned(),
            user: user.to_owned(),
            groups: groups.clone(),
            usage: per_unit.times(i64::from(fit)),
        };
        self.add(&claim);
        self.reserved.insert(key.to_owned(), claim);
        Ok((fit, stopped))
    }

    /// Drops the reservation of `key` (stopped, refused): what the informer shows counts again.
    pub fn release(&mut self, key: &str) {
        if let Some(reservation) = self.reserved.remove(key) {
            self.take(&reservation);
            match self.observed.get(key).cloned() {
                Some(observed) => self.add(&observed),
                None => self.freed.push(reservation),
            }
        }
    }

    /// The claims given back (released, stopped, gone) since the last call: where a place may
    /// have opened under a cap.
    pub fn take_freed(&mut self) -> Vec<Claim> {
        std::mem::take(&mut self.freed)
    }

    /// Forgets `key` entirely (the Workspace is gone).
    pub fn remove(&mut self, key: &str) {
        self.release(key);
        self.observe(key, None);
    }

    /// Forgets every Workspace but those of `keep` (after a relist: the vanished ones).
    pub fn retain(&mut self, keep: &HashSet<String>) {
        self.retain_within(|_| true, keep);
    }

    /// [`UsageIndex::retain`] among the keys `within` says a watch covers: the relist of the
    /// Workspaces forgets no BatchJob's claim (`job:` keys, `policy::batch::job_key`), and the
    /// relist of the BatchJobs no Workspace's.
    pub fn retain_within(&mut self, within: impl Fn(&str) -> bool, keep: &HashSet<String>) {
        let gone: Vec<String> = self
            .observed
            .keys()
            .chain(self.reserved.keys())
            .filter(|k| within(k) && !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// What the Workspaces of `user` hold on `pool`.
    pub fn user_usage(&self, pool: &str, user: &str) -> Usage {
        self.per_user
            .get(&(pool.to_owned(), user.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// What the Workspaces of the members of `group` hold on `pool`.
    pub fn group_usage(&self, pool: &str, group: &str) -> Usage {
        self.per_group
            .get(&(pool.to_owned(), group.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// How many Workspaces the index knows (observed or reserved).
    pub fn len(&self) -> usize {
        self.observed
            .keys()
            .chain(
                self.reserved
                    .keys()
                    .filter(|k| !self.observed.contains_key(*k)),
            )
            .count()
    }

    /// Whether the index knows no Workspace.
    pub fn is_empty(&self) -> bool {
        self.observed.is_empty() && self.reserved.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(yaml: &str) -> NodePoolCaps {
        serde_saphyr::from_str(yaml).expect("caps")
    }

    fn usage(workspaces: i64, cpu_millis: i64, memory_bytes: i64, gpus: i64) -> Usage {
        Usage {
            workspaces,
            cpu_millis,
            memory_bytes,
            gpus,
        }
    }

    fn claim(pool: &str, user: &str, groups: &[&str], u: Usage) -> Claim {
        Claim {
            pool: pool.into(),
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            usage: u,
        }
    }

    const GIB: i64 = 1 << 30;

    fn one() -> Usage {
        usage(1, 1000, 2 * GIB, 0)
    }

    #[test]
    fn a_claim_given_back_is_reported_once_as_freed() {
        let cap = caps("perUser: {workspaces: 1}");
        let mut index = UsageIndex::default();
        let a = claim("p", "alice", &["physics"], one());
        index.admit("ns/a", a.clone(), Some(&cap)).expect("fits");
        assert!(index.take_freed().is_empty(), "admitting frees nothing");
        // A reservation the informer also shows: released, the observed claim still counts.
        index.observe("ns/a", Some(a.clone()));
        index.release("ns/a");
        assert!(index.take_freed().is_empty());
        assert_eq!(index.user_usage("p", "alice"), one());
        // The informer shows it stopped: given back.
        index.observe("ns/a", None);
        assert_eq!(index.take_freed(), vec![a.clone()]);
        assert!(index.take_freed().is_empty(), "reported once");
        // A reservation released with nothing observed (stopped before its status was written).
        index.admit("ns/b", a.clone(), Some(&cap)).expect("fits");
        index.release("ns/b");
        assert_eq!(index.take_freed(), vec![a.clone()]);
        // A refusal and a release of what holds nothing free nothing.
        index.admit("ns/c", a.clone(), Some(&cap)).expect("fits");
        assert!(index.admit("ns/d", a.clone(), Some(&cap)).is_err());
        index.release("ns/d");
        assert!(index.take_freed().is_empty());
        // Gone in a relist.
        index.retain(&HashSet::new());
        assert_eq!(index.take_freed(), vec![a]);
        assert!(index.is_empty());
    }

    #[test]
    fn admit_reserves_and_a_second_workspace_over_the_user_cap_is_refused() {
        let cap = caps("perUser: {workspaces: 1}");
        let mut index = UsageIndex::default();
        assert_eq!(
            index.admit("ns/a", claim("p", "alice", &[], one()), Some(&cap)),
            Ok(())
        );
        assert_eq!(index.user_usage("p", "alice"), one());
        assert_eq!(
            index.admit("ns/b", claim("p", "alice", &[], one()), Some(&cap)),
            Err(CapError::User(
                "user alice would use 2 running workspaces in NodePool p (cap 1)".into()
            ))
        );
        assert_eq!(
            index.user_usage("p", "alice"),
            one(),
            "a refusal reserves nothing"
        );
        // Admitting the same workspace again replaces its reservation, never counts it twice.
        assert_eq!(
            index.admit("ns/a", claim("p", "alice", &[], one()), Some(&cap)),
            Ok(())
        );
        assert_eq!(index.user_usage("p", "alice"), one());
        // Another user, another pool: not affected.
        assert_eq!(
            index.admit("ns/c", claim("p", "bob", &[], one()), Some(&cap)),
            Ok(())
        );
        assert_eq!(
            index.admit("ns/b", claim("q", "alice", &[], one()), Some(&cap)),
            Ok(())
        );
        // a stops: b fits in p.
        index.release("ns/a");
        assert_eq!(index.user_usage("p", "alice"), Usage::ZERO);
        assert_eq!(
            index.admit("ns/b", claim("p", "alice", &[], one()), Some(&cap)),
            Ok(()),
            "b moves from q to p"
        );
        assert_eq!(index.user_usage("q", "alice"), Usage::ZERO);
        assert_eq!(index.user_usage("p", "alice"), one());
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn observed_claims_count_and_a_reservation_wins_over_the_estimate() {
        let cap = caps("perUser: {cpu: \"4\"}");
        let mut index = UsageIndex::default();
        index.observe("ns/a", Some(claim("p", "alice", &[], usage(1, 3000, 0, 0))));
        assert_eq!(
            index.admit(
                "ns/b",
                claim("p", "alice", &[], usage(1, 1500, 0, 0)),
                Some(&cap)
            ),
            Err(CapError::User(
                "user alice would use 4500m CPU in NodePool p (cap 4)".into()
            ))
        );
        // a's reconcile finds it really uses 2 CPU: the reservation replaces the estimate.
        assert_eq!(
            index.admit(
                "ns/a",
                claim("p", "alice", &[], usage(1, 2000, 0, 0)),
                Some(&cap)
            ),
            Ok(())
        );
        assert_eq!(index.user_usage("p", "alice"), usage(1, 2000, 0, 0));
        // A later observation of a does not change the sums while the reservation holds.
        index.observe("ns/a", Some(claim("p", "alice", &[], usage(1, 3000, 0, 0))));
        assert_eq!(index.user_usage("p", "alice"), usage(1, 2000, 0, 0));
        assert_eq!(
            index.admit(
                "ns/b",
                claim("p", "alice", &[], usage(1, 1500, 0, 0)),
                Some(&cap)
            ),
            Ok(())
        );
        assert_eq!(index.user_usage("p", "alice"), usage(2, 3500, 0, 0));
        // Released: the observation counts again.
        index.release("ns/a");
        assert_eq!(index.user_usage("p", "alice"), usage(2, 4500, 0, 0));
        // Observed stopped (no claim), then gone.
        index.observe("ns/a", None);
        assert_eq!(index.user_usage("p", "alice"), usage(1, 1500, 0, 0));
        index.remove("ns/b");
        assert_eq!(index.user_usage("p", "alice"), Usage::ZERO);
        assert!(index.is_empty());
    }

    #[test]
    fn group_sums_follow_each_member_and_caps_are_checked_per_group() {
        let cap = caps("perGroup: {workspaces: 2}");
        let mut index = UsageIndex::default();
        index.observe("ns/c", Some(claim("p", "carol", &["ml", "physics"], one())));
        index.observe("ns/d", Some(claim("p", "dave", &["physics"], one())));
        assert_eq!(
            index.group_usage("p", "physics"),
            usage(2, 2000, 4 * GIB, 0)
        );
        assert_eq!(index.group_usage("p", "ml"), one());
        // alice is in ml and physics: physics is full.
        assert_eq!(
            index.admit(
                "ns/a",
                claim("p", "alice", &["ml", "physics"], one()),
                Some(&cap)
            ),
            Err(CapError::Group(
                "group physics would use 3 running workspaces in NodePool p (cap 2)".into()
            ))
        );
        // In ml only, alice fits.
        assert_eq!(
            index.admit("ns/a", claim("p", "alice", &["ml"], one()), Some(&cap)),
            Ok(())
        );
        assert_eq!(index.group_usage("p", "ml"), usage(2, 2000, 4 * GIB, 0));
        // dave leaves physics (his Workspace's annotation changes): the sums move.
        index.observe("ns/d", Some(claim("p", "dave", &["chemistry"], one())));
        assert_eq!(index.group_usage("p", "physics"), one());
        assert_eq!(index.group_usage("p", "chemistry"), one());
        // A relist that no longer shows c: it is forgotten.
        index.retain(&HashSet::from(["ns/a".to_owned(), "ns/d".to_owned()]));
        assert_eq!(index.group_usage("p", "physics"), Usage::ZERO);
        assert_eq!(index.group_usage("p", "ml"), one(), "a's reservation stays");
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn gpu_caps_count_gpus_and_spare_cpu_only_workspaces() {
        let cap = caps("perUser: {gpus: 1}");
        let mut index = UsageIndex::default();
        index.observe("ns/g", Some(claim("gpu", "bob", &[], usage(1, 1000, 0, 1))));
        assert_eq!(
            index.admit(
                "ns/h",
                claim("gpu", "bob", &[], usage(1, 1000, 0, 1)),
                Some(&cap)
            ),
            Err(CapError::User(
                "user bob would use 2 GPUs in NodePool gpu (cap 1)".into()
            ))
        );
        assert_eq!(
            index.admit(
                "ns/h",
                claim("gpu", "bob", &[], usage(1, 1000, 0, 0)),
                Some(&cap)
            ),
            Ok(()),
            "no GPU asked: the GPU cap is not checked"
        );
        // No caps at all: everything fits, and is still counted.
        assert_eq!(
            index.admit("ns/i", claim("gpu", "bob", &[], usage(1, 0, 0, 4)), None),
            Ok(())
        );
        assert_eq!(index.user_usage("gpu", "bob"), usage(3, 2000, 0, 5));
    }

    #[test]
    fn observed_claims_are_estimated_from_the_spec_of_a_running_placed_workspace() {
        let mut ws: Workspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "atelier.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "a", "namespace": "ns",
                         "annotations": {GROUPS_ANNOTATION: "ml, physics"}},
            "spec": {"user": "alice", "profile": "jupyter", "resources": {"cpu": "250m"}},
        }))
        .expect("a workspace");
        assert_eq!(key_of(&ws), "ns/a");
        assert_eq!(observed_claim(&ws, None, |_| false), None, "no status yet");
        ws.status = Some(crate::api::v1alpha1::WorkspaceStatus {
            node_pool: Some("gpu".into()),
            ..Default::default()
        });
        let defaults = ResourceRequest {
            memory: Some("8Gi".into()),
            ..ResourceRequest::default()
        };
        assert_eq!(
            observed_claim(&ws, Some(&defaults), |pool| pool == "gpu"),
            Some(claim(
                "gpu",
                "alice",
                &["ml", "physics"],
                usage(1, 250, 8 * GIB, 1)
            ))
        );
        ws.spec.desired_state = DesiredState::Stopped;
        assert_eq!(observed_claim(&ws, None, |_| true), None, "stopped");
    }
}
