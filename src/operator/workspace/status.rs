//! Pure: what the observed pod says about the workspace (phase, Ready condition, message).
//!
//! [`derive()`] turns the observed pod (or none), the desired state and the outcome of validation
//! into a [`WorkspaceStatus`]; [`transition`] says which Event a status change deserves. No
//! client, no clock: the caller passes `now`.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::Refusal;
use crate::api::v1alpha1::{DesiredState, WorkspacePhase, WorkspaceStatus};

pub use crate::api::v1alpha1::conditions::{READY, SCHEDULED};

/// Container waiting reasons that will not resolve on their own.
const FATAL_WAITING_REASONS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];
/// Restarts after which a container that keeps terminating counts as crash-looping.
const CRASH_RESTARTS: i32 = 3;

/// What [`derive()`] needs besides the previous status.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// `metadata.generation` of the Workspace.
    pub generation: Option<i64>,
    /// `spec.desiredState`.
    pub desired_state: DesiredState,
    /// Why the workspace may not run, when validation refused it.
    pub refusal: Option<&'a Refusal>,
    /// The API server refused a request about a child object (see [`Rejection`]).
    pub rejection: Option<&'a Rejection>,
    /// The NodePool the workspace was placed on.
    pub node_pool: Option<&'a str>,
    /// In-cluster URL of the server (`build::server_url`).
    pub url: Option<String>,
    /// The workspace's pod as observed (or as just created), if any.
    pub pod: Option<&'a Pod>,
    /// The pod is being replaced to apply a changed spec.
    pub replacing: bool,
    /// The data source whose volume is being replaced because its DataSource changed
    /// (`reconcile::apply::replace_changed_data_volumes`): no pod runs meanwhile.
    pub data_source_changed: Option<&'a str>,
}

/// Ready reason while a data source's volume is replaced to follow its changed DataSource.
pub const DATA_SOURCE_CHANGED: &str = "DataSourceChanged";

/// The API server refused a request of the reconciliation (a 4xx answer other than a conflict,
/// a timeout or throttling): the status says so with the server's reason and message.
///
/// `permanent` (phase `Failed`): the server found the object as built invalid (400 BadRequest,
/// 422 Invalid); the same Workspace, profile and operator settings will be refused again.
/// Otherwise (phase `Pending`): 403 Forbidden (RBAC, an admission plugin: a missing
/// PriorityClass, an exceeded ResourceQuota, Pod Security), 404 (a missing namespace) and the
/// like can be fixed by an administrator without touching the Workspace. Either way the
/// reconciliation fails and is retried with the per-Workspace exponential back-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Condition reason: the API server's `reason` (e.g. `Forbidden`, `Invalid`).
    pub reason: String,
    /// What was refused, then the API server's message.
    pub message: String,
    /// Whether the phase is `Failed` rather than `Pending`.
    pub permanent: bool,
}

impl Rejection {
    /// The rejection an API answer `status` to `what` (e.g. "creating Pod ws-alice") is, or `None`
    /// for success, server errors and transient client errors (408, 409, 429).
    pub fn from_api(what: &str, status: &kube::core::Status) -> Option<Rejection> {
        if !(400..500).contains(&status.code) || matches!(status.code, 408 | 409 | 429) {
            return None;
        }
        let reason = if is_condition_reason(&status.reason) {
            status.reason.clone()
        } else {
            match status.code {
                400 => "BadRequest",
                403 => "Forbidden",
                404 => "NotFound",
                422 => "Invalid",
                _ => "Refused",
            }
            .to_owned()
        };
        let detail = if status.message.is_empty() {
            format!("HTTP {}", status.code)
        } else {
            status.message.clone()
        };
        Some(Rejection {
            reason,
            message: format!("The Kubernetes API refused {what}: {detail}"),
            permanent: matches!(status.code, 400 | 422),
        })
    }
}

/// `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, at most 1024 characters (metav1.Condition's reason).
fn is_condition_reason(s: &str) -> bool {
    let bytes = s.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b':');
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            s.len() <= 1024
                && first.is_ascii_alphabetic()
                && (last.is_ascii_alphanumeric() || *last == b'_')
                && bytes.iter().all(inner_ok)
        }
        _ => false,
    }
}

/// How an Event about a status change is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Progress.
    Normal,
    /// The workspace cannot run as asked.
    Warning,
}

/// An Event worth publishing because the status changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Normal or Warning.
    pub severity: Severity,
    /// The Ready condition's reason (CamelCase).
    pub reason: String,
    /// The status message.
    pub note: String,
}

/// The phase and Ready condition derived from the observed world.
struct Assessment {
    phase: WorkspacePhase,
    ready_reason: String,
    message: String,
    scheduled: (bool, String, String),
}

/// The status of a workspace: phase, `Ready` and `Scheduled` conditions (keeping the previous
/// `lastTransitionTime` of a condition whose status did not change), message, pod, pool, URL and
/// start time. `lastActivity` is the hub's and is carried over from `previous`.
pub fn derive(
    input: &StatusInput<'_>,
    previous: Option<&WorkspaceStatus>,
    now: &Time,
) -> WorkspaceStatus {
    let assessment = assess(input);
    let running = assessment.phase == WorkspacePhase::Running;
    let conditions = vec![
        condition(
            previous,
            READY,
            running,
            &assessment.ready_reason,
            &assessment.message,
            input.generation,
            now,
        ),
        condition(
            previous,
            SCHEDULED,
            assessment.scheduled.0,
            &assessment.scheduled.1,
            &assessment.scheduled.2,
            input.generation,
            now,
        ),
    ];
    let started_at = if running {
        input
            .pod
            .and_then(|pod| pod_condition(pod, "Ready"))
            .and_then(|c| c.last_transition_time.clone())
            .or_else(|| {
                previous
                    .filter(|p| p.phase == Some(WorkspacePhase::Running))
                    .and_then(|p| p.started_at.clone())
            })
            .or_else(|| Some(now.clone()))
    } else {
        None
    };
    let placed = input.refusal.is_none()
        && input.rejection.is_none()
        && input.desired_state == DesiredState::Running;
    WorkspaceStatus {
        phase: Some(assessment.phase),
        conditions,
        node_pool: input.node_pool.filter(|_| placed).map(str::to_owned),
        pod_name: input
            .pod
            .filter(|_| input.refusal.is_none() && input.rejection.is_none())
            .and_then(|pod| pod.metadata.name.clone()),
        url: input.url.clone().filter(|_| placed),
        started_at,
        last_activity: previous.and_then(|p| p.last_activity.clone()),
        message: Some(assessment.message),
        dask: None,
        observed_generation: input.generation,
    }
}

/// The Event a status change deserves: one per change of phase or of the Ready reason; Warning
/// for failures, refusals and unschedulable pods.
pub fn transition(
    previous: Option<&WorkspaceStatus>,
    next: &WorkspaceStatus,
) -> Option<Transition> {
    let ready_reason = |s: &WorkspaceStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| c.reason.clone())
    };
    let reason = ready_reason(next)?;
    let unchanged = previous
        .is_some_and(|p| p.phase == next.phase && ready_reason(p).as_ref() == Some(&reason));
    if unchanged {
        return None;
    }
    let warning = match next.phase {
        Some(WorkspacePhase::Failed) => true,
        Some(WorkspacePhase::Pending) => !matches!(
            reason.as_str(),
            "Creating" | "Scheduling" | "Restarting" | DATA_SOURCE_CHANGED
        ),
        _ => false,
    };
    Some(Transition {
        severity: if warning {
            Severity::Warning
        } else {
            Severity::Normal
        },
        reason,
        note: next.message.clone().unwrap_or_default(),
    })
}

/// Whether the status must be written: anything but `lastActivity` (the hub's) differs.
pub fn changed(previous: Option<&WorkspaceStatus>, next: &WorkspaceStatus) -> bool {
    match previous {
        None => true,
        Some(previous) => {
            let mut previous = previous.clone();
            previous.last_activity = next.last_activity.clone();
            &previous != next
        }
    }
}

fn assess(input: &StatusInput<'_>) -> Assessment {
    if let Some(rejection) = input.rejection {
        return Assessment {
            phase: if rejection.permanent {
                WorkspacePhase::Failed
            } else {
                WorkspacePhase::Pending
            },
            ready_reason: rejection.reason.clone(),
            message: rejection.message.clone(),
            scheduled: (false, rejection.reason.clone(), rejection.message.clone()),
        };
    }
    if let Some(refusal) = input.refusal {
        return Assessment {
            phase: WorkspacePhase::Pending,
            ready_reason: refusal.reason.to_owned(),
            message: refusal.message.clone(),
            scheduled: (false, refusal.reason.to_owned(), refusal.message.clone()),
        };
    }
    let pod_name = input
        .pod
        .and_then(|p| p.metadata.name.clone())
        .unwrap_or_default();
    if input.desired_state == DesiredState::Stopped {
        return match input.pod {
            Some(_) => Assessment {
                phase: WorkspacePhase::Stopping,
                ready_reason: "Stopping".into(),
                message: format!("Stopping: pod {pod_name} is being removed"),
                scheduled: (false, "Stopping".into(), "The workspace is stopping".into()),
            },
            None => Assessment {
                phase: WorkspacePhase::Stopped,
                ready_reason: "Stopped".into(),
                message: "Stopped; the home volume is kept".into(),
                scheduled: (false, "Stopped".into(), "The workspace is stopped".into()),
            },
        };
    }
    if let Some(source) = input.data_source_changed {
        let message = format!(
            "DataSource {source} changed: its volume is being replaced; the server restarts \
             once the new one is in place"
        );
        return Assessment {
            phase: WorkspacePhase::Pending,
            ready_reason: DATA_SOURCE_CHANGED.into(),
            message,
            scheduled: match input.pod {
                Some(pod) => scheduled_condition(pod, input.node_pool),
                None => (false, "NoPod".into(), "The pod does not exist yet".into()),
            },
        };
    }
    let Some(pod) = input.pod else {
        let (reason, message) = if input.replacing {
            ("Restarting", "Restarting to apply a change")
        } else {
            ("Creating", "Creating the pod")
        };
        return Assessment {
            phase: WorkspacePhase::Pending,
            ready_reason: reason.into(),
            message: message.into(),
            scheduled: (false, "NoPod".into(), "The pod does not exist yet".into()),
        };
    };
    let scheduled = scheduled_condition(pod, input.node_pool);
    if input.replacing || pod.metadata.deletion_timestamp.is_some() {
        return Assessment {
            phase: WorkspacePhase::Starting,
            ready_reason: "Restarting".into(),
            message: format!("Restarting: pod {pod_name} is being replaced"),
            scheduled,
        };
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Failed") => {
            let message = status
                .and_then(|s| s.message.clone().or_else(|| s.reason.clone()))
                .unwrap_or_else(|| "the pod failed".into());
            return Assessment {
                phase: WorkspacePhase::Failed,
                ready_reason: "PodFailed".into(),
                message: format!("Pod {pod_name} failed: {message}"),
                scheduled,
            };
        }
        Some("Succeeded") => {
            return Assessment {
                phase: WorkspacePhase::Failed,
                ready_reason: "ServerExited".into(),
                message: format!("The server in pod {pod_name} exited"),
                scheduled,
            };
        }
        _ => {}
    }
    if let Some((reason, message)) = container_failure(pod) {
        return Assessment {
            phase: WorkspacePhase::Failed,
            ready_reason: reason,
            message,
            scheduled,
        };
    }
    if pod_condition(pod, "Ready").is_some_and(|c| c.status == "True") {
        return Assessment {
            phase: WorkspacePhase::Running,
            ready_reason: "Running".into(),
            message: "The server is ready".into(),
            scheduled,
        };
    }
    if let Some(c) = pod_condition(pod, "PodScheduled").filter(|c| c.status == "False") {
        let unschedulable = c.reason.as_deref() == Some("Unschedulable");
        let message = c
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "Waiting for the scheduler".into());
        return Assessment {
            phase: WorkspacePhase::Pending,
            ready_reason: if unschedulable {
                "Unschedulable".into()
            } else {
                "Scheduling".into()
            },
            message,
            scheduled,
        };
    }
    if scheduled.0 {
        let waiting = all_container_statuses(pod)
            .filter_map(|cs| {
                let w = cs.state.as_ref()?.waiting.as_ref()?;
                Some(w.reason.clone().unwrap_or_default())
            })
            .find(|r| !r.is_empty());
        let message = match waiting {
            Some(reason) => format!("Starting the server ({reason})"),
            None => "Starting the server".into(),
        };
        return Assessment {
            phase: WorkspacePhase::Starting,
            ready_reason: "Starting".into(),
            message,
            scheduled,
        };
    }
    Assessment {
        phase: WorkspacePhase::Pending,
        ready_reason: "Scheduling".into(),
        message: "Waiting for the scheduler".into(),
        scheduled,
    }
}

fn scheduled_condition(pod: &Pod, pool: Option<&str>) -> (bool, String, String) {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    match pod_condition(pod, "PodScheduled") {
        Some(c) if c.status == "True" => (true, "Scheduled".into(), placed_message(node, pool)),
        Some(c) => (
            false,
            c.reason.clone().unwrap_or_else(|| "Scheduling".into()),
            c.message
                .clone()
                .unwrap_or_else(|| "Waiting for the scheduler".into()),
        ),
        None if node.is_some() => (true, "Scheduled".into(), placed_message(node, pool)),
        None => (
            false,
            "Scheduling".into(),
            "Waiting for the scheduler".into(),
        ),
    }
}

fn placed_message(node: Option<String>, pool: Option<&str>) -> String {
    match (node, pool) {
        (Some(node), Some(pool)) => format!("Placed on node {node} of pool {pool}"),
        (Some(node), None) => format!("Placed on node {node}"),
        (None, Some(pool)) => format!("Placed in pool {pool}"),
        (None, None) => "Placed".into(),
    }
}

fn pod_condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn all_container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .chain(
            status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten(),
        )
}

/// A container that cannot start (image, configuration) or keeps crashing.
fn container_failure(pod: &Pod) -> Option<(String, String)> {
    for cs in all_container_statuses(pod) {
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        let waiting_reason = waiting
            .and_then(|w| w.reason.as_deref())
            .unwrap_or_default();
        if FATAL_WAITING_REASONS.contains(&waiting_reason) {
            let kubelet = waiting
                .and_then(|w| w.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| waiting_reason.to_owned());
            return Some((
                waiting_reason.to_owned(),
                format!("Container {} cannot start: {kubelet}", cs.name),
            ));
        }
        let terminated = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let looping = waiting_reason == "CrashLoopBackOff"
            || (!cs.ready && cs.restart_count >= CRASH_RESTARTS && terminated.is_some());
        if looping {
            let last = match terminated {
                Some(t) => {
                    let why = t
                        .message
                        .clone()
                        .or_else(|| t.reason.clone())
                        .unwrap_or_default();
                    format!(
                        "; last exit code {}{}",
                        t.exit_code,
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        }
                    )
                }
                None => String::new(),
            };
            return Some((
                "CrashLoopBackOff".into(),
                format!(
                    "Container {} keeps crashing ({} restarts){last}",
                    cs.name, cs.restart_count
                ),
            ));
        }
    }
    None
}

pub(crate) fn condition(
    previous: Option<&WorkspaceStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let previous = previous.map_or(&[][..], |p| p.conditions.as_slice());
    condition_after(previous, type_, status, reason, message, generation, now)
}

/// The condition `type_`, keeping its `lastTransitionTime` from `previous` (a status's
/// conditions) while its status stays the same, else `now`.
pub(crate) fn condition_after(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn time(s: &str) -> Time {
        serde_json::from_value(json!(s)).expect("a time")
    }

    fn now() -> Time {
        time("2026-01-02T03:04:05Z")
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "ws-alice", "namespace": "ns"},
            "spec": {"containers": [{"name": "notebook"}]},
            "status": status,
        }))
        .expect("a pod")
    }

    fn scheduled_pod(extra: serde_json::Value) -> Pod {
        let mut status = json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
        });
        if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        let mut p = pod(status);
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = Some("node-1".into());
        }
        p
    }

    fn running(pod: Option<&Pod>) -> StatusInput<'_> {
        StatusInput {
            generation: Some(3),
            desired_state: DesiredState::Running,
            refusal: None,
            rejection: None,
            node_pool: Some("interactive"),
            url: Some("http://ws-alice.ns.svc:8888/user/alice/".into()),
            pod,
            replacing: false,
            data_source_changed: None,
        }
    }

    fn cond<'a>(s: &'a WorkspaceStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn ready_pod_is_running_with_url_pool_and_start_time() {
        let p = scheduled_pod(json!({
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ],
        }));
        let s = derive(&running(Some(&p)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Running));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "Running");
        assert_eq!(cond(&s, READY).observed_generation, Some(3));
        assert_eq!(cond(&s, SCHEDULED).status, "True");
        assert_eq!(
            cond(&s, SCHEDULED).message,
            "Placed on node node-1 of pool interactive"
        );
        assert_eq!(s.pod_name.as_deref(), Some("ws-alice"));
        assert_eq!(s.node_pool.as_deref(), Some("interactive"));
        assert_eq!(
            s.url.as_deref(),
            Some("http://ws-alice.ns.svc:8888/user/alice/")
        );
        assert_eq!(s.started_at, Some(time("2026-01-01T00:00:00Z")));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn a_data_volume_being_replaced_holds_a_running_workspace_pending_but_not_a_stopped_one() {
        let p = scheduled_pod(json!({
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ],
        }));
        let message = "DataSource argo changed: its volume is being replaced; the server \
                       restarts once the new one is in place";
        for pod in [Some(&p), None] {
            let input = StatusInput {
                data_source_changed: Some("argo"),
                ..running(pod)
            };
            let s = derive(&input, None, &now());
            assert_eq!(s.phase, Some(WorkspacePhase::Pending), "{pod:?}");
            assert_eq!(cond(&s, READY).status, "False");
            assert_eq!(cond(&s, READY).reason, DATA_SOURCE_CHANGED);
            assert_eq!(cond(&s, READY).message, message);
            assert_eq!(s.message.as_deref(), Some(message));
            assert_eq!(s.started_at, None);
            assert_eq!(
                cond(&s, SCHEDULED).status,
                if pod.is_some() { "True" } else { "False" }
            );
            let t = transition(None, &s).expect("an event");
            assert_eq!(
                (t.severity, t.reason.as_str()),
                (Severity::Normal, DATA_SOURCE_CHANGED)
            );
        }
        // Stopped: no pod to hold; the volume is replaced all the same, the status says Stopped.
        let stopped = StatusInput {
            desired_state: DesiredState::Stopped,
            data_source_changed: Some("argo"),
            ..running(None)
        };
        let s = derive(&stopped, None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Stopped));
        // A refusal wins: the refused workspace keeps no data children to replace.
        let refusal = Refusal {
            reason: "DataSourceForbidden",
            message: "no".into(),
        };
        let refused = StatusInput {
            refusal: Some(&refusal),
            data_source_changed: Some("argo"),
            ..running(None)
        };
        assert_eq!(
            cond(&derive(&refused, None, &now()), READY).reason,
            "DataSourceForbidden"
        );
    }

    #[test]
    fn image_pull_errors_fail_with_the_kubelet_message() {
        for reason in FATAL_WAITING_REASONS {
            let p = scheduled_pod(json!({"containerStatuses": [{
                "name": "notebook", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": "Back-off pulling image \"nope:1\""}},
            }]}));
            let s = derive(&running(Some(&p)), None, &now());
            assert_eq!(s.phase, Some(WorkspacePhase::Failed), "{reason}");
            assert_eq!(cond(&s, READY).reason, reason);
            assert_eq!(cond(&s, READY).status, "False");
            let message = s.message.clone().unwrap_or_default();
            assert!(
                message.contains("Back-off pulling image \"nope:1\""),
                "{message}"
            );
            assert!(message.contains("notebook"), "{message}");
        }
    }

    #[test]
    fn init_container_failures_count_too() {
        let p = scheduled_pod(json!({"initContainerStatuses": [{
            "name": "fetch", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}},
        }]}));
        let s = derive(&running(Some(&p)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Failed));
        assert!(s.message.unwrap_or_default().contains("pull access denied"));
    }

    #[test]
    fn crash_loops_fail() {
        let back_off = scheduled_pod(json!({"containerStatuses": [{
            "name": "notebook", "image": "x", "imageID": "", "ready": false, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        }]}));
        let s = derive(&running(Some(&back_off)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Failed));
        assert_eq!(cond(&s, READY).reason, "CrashLoopBackOff");

        let restarted = scheduled_pod(json!({"containerStatuses": [{
            "name": "notebook", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
        }]}));
        let s = derive(&running(Some(&restarted)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Failed));
        let message = s.message.unwrap_or_default();
        assert!(
            message.contains("3 restarts") && message.contains("137: OOMKilled"),
            "{message}"
        );

        let two = scheduled_pod(json!({"containerStatuses": [{
            "name": "notebook", "image": "x", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 1}},
        }]}));
        let s = derive(&running(Some(&two)), None, &now());
        assert_eq!(
            s.phase,
            Some(WorkspacePhase::Starting),
            "two restarts are tolerated"
        );
    }

    #[test]
    fn unschedulable_is_pending_with_the_scheduler_message() {
        let p = pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }]}));
        let s = derive(&running(Some(&p)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Pending));
        assert_eq!(cond(&s, READY).reason, "Unschedulable");
        assert_eq!(cond(&s, SCHEDULED).status, "False");
        assert_eq!(cond(&s, SCHEDULED).reason, "Unschedulable");
        assert_eq!(
            s.message.as_deref(),
            Some("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
        );
        let t = transition(None, &s).expect("an event");
        assert_eq!(t.severity, Severity::Warning);
    }

    #[test]
    fn failed_pod_phase_fails() {
        let p = pod(
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
        );
        let s = derive(&running(Some(&p)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Failed));
        assert_eq!(cond(&s, READY).reason, "PodFailed");
        assert!(s.message.unwrap_or_default().contains("low on resource"));
    }

    #[test]
    fn new_unscheduled_pod_is_pending_then_starting_once_scheduled() {
        let fresh = pod(json!({"phase": "Pending"}));
        let s = derive(&running(Some(&fresh)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Pending));
        assert_eq!(cond(&s, READY).reason, "Scheduling");
        assert_eq!(
            transition(None, &s).map(|t| t.severity),
            Some(Severity::Normal)
        );

        let creating = scheduled_pod(json!({"containerStatuses": [{
            "name": "notebook", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}},
        }]}));
        let s = derive(&running(Some(&creating)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Starting));
        assert_eq!(
            s.message.as_deref(),
            Some("Starting the server (ContainerCreating)")
        );
        assert_eq!(cond(&s, SCHEDULED).status, "True");
    }

    #[test]
    fn no_pod_yet_is_pending() {
        let s = derive(&running(None), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Pending));
        assert_eq!(cond(&s, READY).reason, "Creating");
        assert_eq!(s.pod_name, None);
    }

    #[test]
    fn replaced_or_terminating_pod_is_starting() {
        let p = scheduled_pod(json!({}));
        let mut input = running(Some(&p));
        input.replacing = true;
        let s = derive(&input, None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Starting));
        assert_eq!(cond(&s, READY).reason, "Restarting");

        let mut terminating = scheduled_pod(json!({}));
        terminating.metadata.deletion_timestamp = Some(now());
        let s = derive(&running(Some(&terminating)), None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Starting));
    }

    #[test]
    fn stopping_then_stopped() {
        let p = scheduled_pod(json!({}));
        let mut input = running(Some(&p));
        input.desired_state = DesiredState::Stopped;
        let s = derive(&input, None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Stopping));
        assert_eq!(s.pod_name.as_deref(), Some("ws-alice"));
        assert_eq!(s.url, None);

        input.pod = None;
        let s = derive(&input, None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Stopped));
        assert_eq!(cond(&s, READY).reason, "Stopped");
        assert_eq!(s.pod_name, None);
        assert_eq!(s.node_pool, None);
        assert_eq!(s.started_at, None);
    }

    #[test]
    fn refusal_is_pending_with_the_rule_as_reason() {
        let refusal = Refusal {
            reason: "NoEligiblePool",
            message: "no gpu pool offers 1 GPU to groups [e2e]".into(),
        };
        let mut input = running(None);
        input.refusal = Some(&refusal);
        let s = derive(&input, None, &now());
        assert_eq!(s.phase, Some(WorkspacePhase::Pending));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "NoEligiblePool");
        assert_eq!(cond(&s, READY).message, refusal.message);
        assert_eq!(s.message.as_deref(), Some(refusal.message.as_str()));
        assert_eq!((s.url.clone(), s.node_pool.clone()), (None, None));
        let t = transition(None, &s).expect("an event");
        assert_eq!(t.severity, Severity::Warning);
        assert_eq!(t.reason, "NoEligiblePool");
        assert_eq!(transition(Some(&s), &s), None, "same refusal: no new event");
    }

    #[test]
    fn transition_times_survive_unchanged_condition_status() {
        let fresh = pod(json!({"phase": "Pending"}));
        let earlier = derive(&running(Some(&fresh)), None, &time("2026-01-01T00:00:00Z"));
        let creating = scheduled_pod(json!({}));
        let later = derive(&running(Some(&creating)), Some(&earlier), &now());
        // Ready stays False (Pending → Starting): its time is kept. Scheduled flips to True.
        assert_eq!(
            cond(&later, READY).last_transition_time,
            time("2026-01-01T00:00:00Z")
        );
        assert_eq!(cond(&later, SCHEDULED).last_transition_time, now());
        assert!(changed(Some(&earlier), &later));
        let t = transition(Some(&earlier), &later).expect("phase changed");
        assert_eq!(
            (t.severity, t.reason.as_str()),
            (Severity::Normal, "Starting")
        );
    }

    #[test]
    fn same_observation_is_unchanged_and_last_activity_is_the_hubs() {
        let p = scheduled_pod(json!({}));
        let first = derive(&running(Some(&p)), None, &time("2026-01-01T00:00:00Z"));
        let mut with_activity = first.clone();
        with_activity.last_activity = Some(now());
        let again = derive(&running(Some(&p)), Some(&with_activity), &now());
        assert_eq!(again.last_activity, Some(now()), "carried over");
        assert!(!changed(Some(&with_activity), &again));
        assert!(
            !changed(Some(&first), &again),
            "lastActivity alone is not a change"
        );
        assert!(changed(None, &again));
        assert_eq!(transition(Some(&first), &again), None);
    }
}
