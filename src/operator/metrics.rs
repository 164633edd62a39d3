//! Prometheus metrics of the operator, served as text on `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::v1alpha1::WorkspacePhase;

/// Every phase, in the order the `atelier_workspaces` gauge lists them.
const PHASES: [WorkspacePhase; 6] = [
    WorkspacePhase::Pending,
    WorkspacePhase::Starting,
    WorkspacePhase::Running,
    WorkspacePhase::Stopping,
    WorkspacePhase::Stopped,
    WorkspacePhase::Failed,
];

/// `result` label of the reconciliation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// `error` label of the failure counter: an [`super::Error::metric_label`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's metric label.
    pub error: &'static str,
}

/// `phase` label of the workspaces gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// A [`WorkspacePhase`] name.
    pub phase: &'static str,
}

/// Labels of the API request counter: the API server's verb and resource
/// ([`crate::k8s::request_labels`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: &'static str,
    /// The resource, with its subresource (`workspaces/status`).
    pub resource: String,
}

/// The operator's metrics. Cloning a metric shares it, so the registry and this struct see the
/// same values.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciliations by result.
    pub reconciliations: Family<ResultLabels, Counter>,
    /// Failed reconciliations by error label.
    pub failures: Family<ErrorLabels, Counter>,
    /// Duration of each reconciliation.
    pub reconcile_duration: Histogram,
    /// Workspaces by phase, as this operator last saw them.
    pub workspaces: Family<PhaseLabels, Gauge>,
    /// 1 while this replica holds the leader-election Lease (`operator::lease`), else 0.
    pub leader: Gauge,
    /// Requests sent to the API server, by verb and resource (counted on the client).
    pub api_requests: Family<ApiRequestLabels, Counter>,
    /// Data sources' PersistentVolumes the orphan sweep deleted (their Workspace was gone).
    pub orphaned_data_volumes: Counter,
    /// Data sources' PersistentVolumes deleted to follow a changed DataSource.
    pub replaced_data_volumes: Counter,
    /// Last phase of each Workspace (`namespace/name`), the source of the gauge.
    phases: Mutex<HashMap<String, WorkspacePhase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciliations: Family::default(),
            failures: Family::default(),
            // 10 ms .. ~41 s
            reconcile_duration: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            workspaces: Family::default(),
            leader: Gauge::default(),
            api_requests: Family::default(),
            orphaned_data_volumes: Counter::default(),
            replaced_data_volumes: Counter::default(),
            phases: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them (names get the registry's prefix, if any).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
        registry.register(
            "workspace_reconciliations",
            "Workspace reconciliations, by result",
            metrics.reconciliations.clone(),
        );
        registry.register(
            "workspace_reconcile_errors",
            "Failed Workspace reconciliations, by error",
            metrics.failures.clone(),
        );
        registry.register(
            "workspace_reconcile_duration_seconds",
            "Duration of Workspace reconciliations",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "workspaces",
            "Workspaces by phase, as last reconciled",
            metrics.workspaces.clone(),
        );
        registry.register(
            "operator_leader",
            "1 while this replica holds the leader-election Lease and reconciles, else 0",
            metrics.leader.clone(),
        );
        registry.register(
            "operator_api_requests",
            "Requests the operator sent to the API server, by verb and resource",
            metrics.api_requests.clone(),
        );
        registry.register(
            "orphaned_data_volumes_deleted",
            "Data sources' PersistentVolumes deleted because their Workspace was gone",
            metrics.orphaned_data_volumes.clone(),
        );
        registry.register(
            "data_volumes_replaced",
            "Data sources' PersistentVolumes deleted to follow a changed DataSource",
            metrics.replaced_data_volumes.clone(),
        );
        metrics
    }

    /// Counts `n` data volumes the orphan sweep deleted.
    pub fn orphaned_volumes_deleted(&self, n: usize) {
        self.orphaned_data_volumes
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts one request to the API server (the callback of
    /// [`crate::k8s::counting_kube_client`]).
    pub fn api_request(&self, verb: &'static str, resource: String) {
        self.api_requests
            .get_or_create(&ApiRequestLabels { verb, resource })
            .inc();
    }

    /// Counts one reconciliation and observes its duration.
    pub fn reconciled(&self, error: Option<&'static str>, duration: Duration) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciliations
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(error) = error {
            self.failures.get_or_create(&ErrorLabels { error }).inc();
        }
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// Records the phase of a Workspace (`key` = `namespace/name`) and refreshes the gauge.
    pub fn set_phase(&self, key: &str, phase: WorkspacePhase) {
        let mut phases = self.lock_phases();
        if phases.get(key) == Some(&phase) {
            return;
        }
        let before = phases.insert(key.to_owned(), phase);
        self.moved(before, Some(phase));
    }

    /// Forgets a deleted Workspace.
    pub fn forget(&self, key: &str) {
        let mut phases = self.lock_phases();
        let before = phases.remove(key);
        self.moved(before, None);
    }

    fn lock_phases(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkspacePhase>> {
        match self.phases.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// One Workspace left phase `from` for `to` (O(1), under the phases' lock: at 10,000
    /// Workspaces, counting them all again on each reconciliation was 60,000 comparisons).
    /// Every phase's gauge exists (at 0) from the first Workspace on.
    fn moved(&self, from: Option<WorkspacePhase>, to: Option<WorkspacePhase>) {
        if from == to {
            return;
        }
        let gauge = |phase: WorkspacePhase| {
            self.workspaces.get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            })
        };
        for phase in PHASES {
            drop(gauge(phase));
        }
        if let Some(from) = from {
            gauge(from).dec();
        }
        if let Some(to) = to {
            gauge(to).inc();
        }
    }
}

/// Encodes a registry in the Prometheus/OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliations_errors_and_phases_are_encoded() {
        let mut registry = Registry::with_prefix("atelier");
        let metrics = Metrics::register(&mut registry);
        metrics.reconciled(None, Duration::from_millis(20));
        metrics.reconciled(Some("apply"), Duration::from_millis(40));
        metrics.set_phase("ns/a", WorkspacePhase::Running);
        metrics.set_phase("ns/b", WorkspacePhase::Running);
        metrics.set_phase("ns/c", WorkspacePhase::Pending);
        metrics.set_phase("ns/c", WorkspacePhase::Starting);
        metrics.forget("ns/b");
        metrics.forget("ns/unknown");
        metrics.set_phase("ns/a", WorkspacePhase::Running);
        metrics.leader.set(1);
        metrics.api_request("list", "pods".into());
        metrics.api_request("list", "pods".into());
        metrics.api_request("patch", "workspaces/status".into());
        metrics.orphaned_volumes_deleted(2);
        metrics.orphaned_volumes_deleted(0);
        metrics.replaced_data_volumes.inc();

        let text = encode(&registry).expect("encodes");
        for line in [
            "atelier_workspace_reconciliations_total{result=\"ok\"} 1",
            "atelier_workspace_reconciliations_total{result=\"error\"} 1",
            "atelier_workspace_reconcile_errors_total{error=\"apply\"} 1",
            "atelier_workspace_reconcile_duration_seconds_count 2",
            "atelier_workspaces{phase=\"Running\"} 1",
            "atelier_workspaces{phase=\"Starting\"} 1",
            "atelier_workspaces{phase=\"Pending\"} 0",
            "atelier_operator_leader 1",
            "atelier_operator_api_requests_total{verb=\"list\",resource=\"pods\"} 2",
            "atelier_operator_api_requests_total{verb=\"patch\",resource=\"workspaces/status\"} 1",
            "atelier_orphaned_data_volumes_deleted_total 2",
            "atelier_data_volumes_replaced_total 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
