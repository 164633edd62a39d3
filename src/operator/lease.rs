//! Leader election on a `coordination.k8s.io/v1` Lease: with two operator replicas, only the
//! holder of the Lease runs the Workspace controller; the other serves `/healthz` and `/metrics`
//! and waits ([`run_as_leader`]).
//!
//! kube-runtime 5 has no leader election, and the crates that do did not fit: kube-leader-election
//! 0.44 depends on kube 4, and kube-lease-manager 0.13 judges expiry by comparing the holder's
//! `renewTime` with the local wall clock (and reads the system clock, so its timing cannot run on
//! tokio's paused clock in tests). This module follows client-go's
//! `staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go` (`tryAcquireOrRenew`,
//! `renew`, `release`) and `resourcelock/leaselock.go` (Get, Create, Update of the Lease):
//!
//! - the record's timestamps are informational: expiry is judged by the *local* monotonic time
//!   since this replica last saw the Lease's spec change (client-go's `observedTime`), so clock
//!   skew between nodes does not matter (`doc.go`: "tolerant to arbitrary clock skew");
//! - every write is a PUT carrying the `resourceVersion` last read (optimistic concurrency): of
//!   two replicas racing for an expired Lease, the API server accepts one and answers the other
//!   409 Conflict, which is "not leader this round";
//! - an absent Lease is created (POST); a takeover adds one to `leaseTransitions`;
//! - the leader renews every [`RETRY_PERIOD`], first optimistically with the Lease it holds
//!   (client-go's "fast path"), falling back to a GET; a leader that has not renewed within
//!   [`RENEW_DEADLINE`] stops leading, before a standby can take over ([`LEASE_DURATION`] after
//!   it last saw the record change);
//! - on shutdown the leader releases the Lease: `holderIdentity` cleared, `leaseDurationSeconds`
//!   1, so the standby takes over at its next try instead of waiting out the lease.
//!
//! One deliberate difference: a leader that finds another holder in a fresh record (someone
//! took the Lease over) stops at once instead of retrying until its renew deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::wait_for;

/// How long a Lease holds without a change before another replica may take it (client-go's
/// `LeaseDuration`, kube-controller-manager's default).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader keeps retrying a failed renewal before it stops leading (`RenewDeadline`).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews and a standby tries to acquire (`RetryPeriod`).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's `JitterFactor`: a standby waits `RETRY_PERIOD * (1 + JITTER * rand)` between tries.
pub const JITTER: f64 = 1.2;

/// The wall clock that stamps `acquireTime` and `renewTime` (informational only; a test sets a
/// fixed one).
pub type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Which Lease, who this replica is, and the timings.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseSettings {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's `holderIdentity` (unique per process).
    pub identity: String,
    /// [`LEASE_DURATION`] by default.
    pub lease_duration: Duration,
    /// [`RENEW_DEADLINE`] by default.
    pub renew_deadline: Duration,
    /// [`RETRY_PERIOD`] by default.
    pub retry_period: Duration,
    /// [`JITTER`] by default (0: a standby retries exactly every retry period).
    pub jitter: f64,
}

impl LeaseSettings {
    /// The Lease `namespace/name` held as `identity`, with client-go's default timings.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: String) -> Self {
        LeaseSettings {
            name: name.into(),
            namespace: namespace.into(),
            identity,
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
            jitter: JITTER,
        }
    }
}

/// `<base>_<8 hex digits>`: the pod's name (or host name) made unique per process, as client-go
/// users write `hostname + "_" + uuid`, so a restarted container never mistakes its
/// predecessor's record for its own.
pub fn identity(base: &str) -> anyhow::Result<String> {
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix)
        .map_err(|e| anyhow::anyhow!("no random source for the lease identity: {e}"))?;
    Ok(format!("{base}_{}", hex::encode(suffix)))
}

/// What one try to acquire or renew found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// This replica holds the Lease (created, renewed or taken over).
    Leading,
    /// `holder` holds the Lease and its record changed less than the lease duration ago.
    HeldBy(String),
    /// The API call failed (a 409 Conflict included): not leader this round.
    Failed,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    /// No renewal succeeded within the renew deadline.
    #[error("the Lease was not renewed within {0:?}")]
    NotRenewed(Duration),
    /// Another replica holds the Lease.
    #[error("the Lease is now held by {0}")]
    TakenBy(String),
}

/// The Lease as this replica last read or wrote it, and when its spec last changed (local time).
#[derive(Clone, Debug)]
struct Observed {
    lease: Lease,
    at: Instant,
}

/// One replica's view of the election (client-go's `LeaderElector`).
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    wall_clock: WallClock,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// An elector for `settings`, stamping records with the system clock.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        LeaderElector::with_wall_clock(client, settings, Arc::new(Timestamp::now))
    }

    /// An elector stamping records with `wall_clock`.
    pub fn with_wall_clock(client: Client, settings: LeaseSettings, wall_clock: WallClock) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            wall_clock,
            observed: None,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn observed_spec(&self) -> Option<&LeaseSpec> {
        self.observed.as_ref().and_then(|o| o.lease.spec.as_ref())
    }

    /// The holder of the Lease as last observed (`None`: nobody, or not read yet).
    pub fn holder(&self) -> Option<&str> {
        self.observed_spec()
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty())
    }

    /// Whether the last observed record names this replica as the holder.
    pub fn is_leader(&self) -> bool {
        self.holder() == Some(self.settings.identity.as_str())
    }

    /// Whether the observed record changed less than the lease duration ago.
    fn lease_valid(&self, now: Instant) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|o| o.at + self.settings.lease_duration > now)
    }

    /// Keeps `lease` as read: the clock restarts only when its spec differs from the last one
    /// seen (client-go compares the raw records).
    fn observe_read(&mut self, lease: Lease, now: Instant) {
        let at = match &self.observed {
            Some(o) if o.lease.spec == lease.spec => o.at,
            _ => now,
        };
        self.observed = Some(Observed { lease, at });
    }

    /// Keeps `lease` as this replica wrote it (a fresh record).
    fn observe_written(&mut self, lease: Lease, now: Instant) {
        self.observed = Some(Observed { lease, at: now });
    }

    /// The record this replica writes when it acquires or renews at `now`.
    fn record(&self, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(seconds(self.settings.lease_duration)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }
    }

    /// The Lease as last read or written.
    fn observed_lease(&self) -> Option<Lease> {
        self.observed.as_ref().map(|o| o.lease.clone())
    }

    /// PUTs `lease` with `spec`, guarded by the `resourceVersion` it carries.
    async fn put(&mut self, mut lease: Lease, spec: LeaseSpec) -> kube::Result<()> {
        lease.spec = Some(spec);
        let written = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        self.observe_written(written, Instant::now());
        Ok(())
    }

    /// One try to acquire or renew the Lease (client-go's `tryAcquireOrRenew`).
    pub async fn try_acquire_or_renew(&mut self) -> Round {
        let wall = (self.wall_clock)();
        let mut record = self.record(wall);

        // 1. The leader renews optimistically with the Lease it last wrote.
        if let Some(held) = self.observed_lease()
            && self.is_leader()
            && self.lease_valid(Instant::now())
        {
            let old = held.spec.clone().unwrap_or_default();
            record.acquire_time = old.acquire_time;
            record.lease_transitions = old.lease_transitions;
            match self.put(held, record.clone()).await {
                Ok(()) => return Round::Leading,
                Err(error) => debug!(%error, "optimistic renewal failed; reading the Lease"),
            }
        }

        // 2. Read the Lease, or create it.
        let current = match self.api.get_opt(&self.settings.name).await {
            Ok(current) => current,
            Err(error) => {
                warn!(%error, lease = %self.describe(), "cannot read the Lease");
                return Round::Failed;
            }
        };
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(record),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe_written(created, Instant::now());
                    Round::Leading
                }
                Err(error) => {
                    self.log_write_error(&error, "cannot create the Lease");
                    Round::Failed
                }
            };
        };

        // 3. Someone else holds it and their record changed recently: stand by.
        self.observe_read(current.clone(), Instant::now());
        if let Some(holder) = self.holder().map(str::to_owned)
            && !self.is_leader()
            && self.lease_valid(Instant::now())
        {
            return Round::HeldBy(holder);
        }

        // 4. Renew (slow path) or take over: one more transition when the holder changes.
        let old = current.spec.clone().unwrap_or_default();
        if self.is_leader() {
            record.acquire_time = old.acquire_time;
            record.lease_transitions = old.lease_transitions;
        } else {
            record.lease_transitions = Some(old.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        match self.put(current, record).await {
            Ok(()) => Round::Leading,
            Err(error) => {
                self.log_write_error(&error, "cannot write the Lease");
                Round::Failed
            }
        }
    }

    /// Tries every retry period (jittered) until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        info!(lease = %self.describe(), identity = %self.settings.identity, "waiting for the Lease");
        let mut reported: Option<String> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Round::Leading => {
                    info!(lease = %self.describe(), "acquired the Lease: leading");
                    return;
                }
                Round::HeldBy(holder) if reported.as_ref() != Some(&holder) => {
                    info!(lease = %self.describe(), %holder, "standing by");
                    reported = Some(holder);
                }
                Round::HeldBy(_) | Round::Failed => {}
            }
            sleep(jittered(self.settings.retry_period, self.settings.jitter)).await;
        }
    }

    /// Renews every retry period while this replica leads; returns when it no longer does.
    pub async fn hold(&mut self) -> LeaseLost {
        loop {
            sleep(self.settings.retry_period).await;
            if let Err(lost) = self.renew_within_deadline().await {
                warn!(lease = %self.describe(), %lost, "lost the Lease");
                return lost;
            }
        }
    }

    /// Retries a renewal every retry period until one succeeds or the renew deadline passes
    /// (client-go's `renew`: `PollImmediateUntil` under a `RenewDeadline` timeout).
    async fn renew_within_deadline(&mut self) -> Result<(), LeaseLost> {
        let deadline = Instant::now() + self.settings.renew_deadline;
        let lost = LeaseLost::NotRenewed(self.settings.renew_deadline);
        loop {
            match timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Round::Leading) => return Ok(()),
                Ok(Round::HeldBy(holder)) => return Err(LeaseLost::TakenBy(holder)),
                Ok(Round::Failed) => {}
                Err(_elapsed) => return Err(lost),
            }
            let next = Instant::now() + self.settings.retry_period;
            if next >= deadline {
                return Err(lost);
            }
            sleep_until(next).await;
        }
    }

    /// Gives the Lease up if this replica holds it (client-go's `release`): the holder cleared,
    /// a one-second duration, the transitions kept. Returns whether the Lease is free of us.
    pub async fn release(&mut self) -> bool {
        let Some(held) = self.observed_lease().filter(|_| self.is_leader()) else {
            return true;
        };
        let wall = (self.wall_clock)();
        let spec = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: held.spec.as_ref().and_then(|s| s.lease_transitions),
            ..LeaseSpec::default()
        };
        match timeout(self.settings.renew_deadline, self.put(held, spec)).await {
            Ok(Ok(())) => {
                info!(lease = %self.describe(), "released the Lease");
                true
            }
            Ok(Err(error)) => {
                warn!(%error, lease = %self.describe(), "cannot release the Lease");
                false
            }
            Err(_elapsed) => {
                warn!(lease = %self.describe(), "releasing the Lease timed out");
                false
            }
        }
    }

    /// A 409 (another replica wrote first) is the normal outcome of a race; anything else
    /// (403 from missing RBAC, 5xx) is worth a warning.
    fn log_write_error(&self, error: &kube::Error, what: &str) {
        match error {
            kube::Error::Api(status) if status.code == 409 => {
                debug!(%error, lease = %self.describe(), "{what}: another replica wrote first");
            }
            _ => warn!(%error, lease = %self.describe(), "{what}"),
        }
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// `period * (1 + factor * r)`, `r` uniform in [0, 1) (client-go's `wait.Jitter`).
fn jittered(period: Duration, factor: f64) -> Duration {
    if factor <= 0.0 {
        return period;
    }
    let mut bytes = [0u8; 4];
    let r = match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    };
    period.mul_f64(1.0 + factor * r)
}

/// Runs `work` only while this replica leads.
///
/// Standby: tries to acquire the Lease until it does, or until `stop` (then returns `Ok`
/// without having run `work`). Leading: polls `work` and renews the Lease side by side. When
/// `work` ends (it watches `stop` itself: the controller's graceful shutdown), the Lease is
/// released and this returns `Ok`. When the Lease is lost, `work` is dropped at once (in-flight
/// reconciliations are cancelled at their next await) and this returns the [`LeaseLost`]: the
/// caller exits non-zero. `leading` is told of each change (the leader gauge).
pub async fn run_as_leader<W>(
    mut elector: LeaderElector,
    stop: watch::Receiver<bool>,
    leading: impl Fn(bool),
    work: W,
) -> Result<(), LeaseLost>
where
    W: Future<Output = ()>,
{
    leading(false);
    tokio::select! {
        () = elector.acquire() => {}
        () = wait_for(stop) => {
            info!("stopping while standing by");
            return Ok(());
        }
    }
    leading(true);
    let work = std::pin::pin!(work);
    tokio::select! {
        () = work => {}
        lost = elector.hold() => {
            leading(false);
            return Err(lost);
        }
    }
    elector.release().await;
    leading(false);
    Ok(())
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
