//! Pure: what a Job and its pod (or a batch system's answer) say of a BatchJob, and the status
//! that follows. No client, no clock: the caller passes `now`.
//!
//! [`kubernetes_state`] reads a Job as the Job controller and Kueue leave it: `suspend: true`
//! (not admitted by Kueue yet) is `Queued`; the `Complete` condition is `Succeeded`; the
//! `Failed` condition is `Failed` with its reason (`DeadlineExceeded`, `BackoffLimitExceeded`),
//! or `OOMKilled` when the container was killed for memory, and the container's exit code; a
//! container that cannot start (`ImagePullBackOff`, `ErrImagePull`, `InvalidImageName`,
//! `CreateContainerConfigError`) is `Failed` at once (the reconciliation then deletes the Job);
//! a running pod is `Running`; anything else (no pod yet, a pod waiting for a node) is `Queued`.
//! [`next_status`] turns that [`JobState`] into the BatchJob's status, [`transition`] says which
//! Event a change deserves.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;

use super::build::CONTAINER_NAME;
use crate::api::v1alpha1::{BatchJobPhase, BatchJobStatus};
use crate::batch::JobState;
use crate::operator::workspace::status::condition_after;
use crate::policy::workspace::Refusal;

/// Condition: the job passed validation and the caps (False: the refusal).
pub const ADMITTED: &str = "Admitted";
/// Condition: the job succeeded.
pub const COMPLETE: &str = "Complete";
/// Condition: the job failed.
pub const FAILED: &str = "Failed";

/// Reason of a job waiting for Kueue's admission.
pub const WAITING_FOR_ADMISSION: &str = "WaitingForAdmission";
/// Reason of a job whose pod is not running yet.
pub const WAITING_FOR_POD: &str = "WaitingForPod";
/// Reason of a cancelled job.
pub const CANCELLED: &str = "Cancelled";
/// Reason of a job whose Job was deleted (by hand) before it finished.
pub const JOB_DELETED: &str = "JobDeleted";
/// Reason of a job refused by its batch system (Slurm's words in the message).
pub const SYSTEM_REFUSED: &str = "SystemRefused";
/// Reason of a job whose batch system cannot be reached or refuses the credentials (retried).
pub const SYSTEM_UNAVAILABLE: &str = "SystemUnavailable";
/// Reason of a Slurm job whose pool's signing-key Secret is missing (retried).
pub const SLURM_KEY_MISSING: &str = "SlurmKeyMissing";
/// Reason of a job naming a data source it cannot mount (`build::unmountable_sources`).
pub const DATA_SOURCE_NOT_MOUNTABLE: &str = "DataSourceNotMountable";

/// Container waiting reasons that will not resolve on their own.
pub const FATAL_WAITING_REASONS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];

pub use crate::k8s::{chrono_time, kube_time};

fn true_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// The pod that speaks for the job: a running one, else a pending one, else the last one by
/// name (a retried Job has several).
fn current_pod(pods: &[Pod]) -> Option<&Pod> {
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let rank = |p: &Pod| match phase(p).as_str() {
        "Running" => 3,
        "Pending" => 2,
        _ => 1,
    };
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() || rank(p) == 1)
        .max_by(|a, b| {
            rank(a)
                .cmp(&rank(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
}

/// The job container's termination: its current state's, else its last state's.
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    let cs = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER_NAME)?;
    cs.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
}

/// A container (init or the job's) that cannot start: its waiting reason and the kubelet's
/// message.
fn cannot_start(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|cs| {
            let waiting = cs.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            FATAL_WAITING_REASONS.contains(&reason).then(|| {
                let kubelet = waiting
                    .message
                    .clone()
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| reason.to_owned());
                (
                    reason.to_owned(),
                    format!("Container {} cannot start: {kubelet}", cs.name),
                )
            })
        })
}

/// Why the pod waits, from its `PodScheduled=False` condition.
fn unscheduled(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone())
}

/// What the Job and its `pods` say (see the module documentation); `queue`: the pool's Kueue
/// `LocalQueue`, if any.
pub fn kubernetes_state(job: &Job, pods: &[Pod], queue: Option<&str>) -> JobState {
    let status = job.status.as_ref();
    let pod = current_pod(pods);
    let mut state = JobState::new(BatchJobPhase::Queued);
    state.placement = pod.and_then(|p| p.metadata.name.clone());
    state.start_time = status.and_then(|s| s.start_time.as_ref()).map(chrono_time);
    let exit = pod.and_then(terminated);
    state.exit_code = exit.map(|t| t.exit_code);

    if let Some(complete) = true_condition(job, "Complete") {
        state.phase = BatchJobPhase::Succeeded;
        state.exit_code = Some(state.exit_code.unwrap_or(0));
        state.completion_time = status
            .and_then(|s| s.completion_time.as_ref())
            .or(complete.last_transition_time.as_ref())
            .map(chrono_time);
        state.reason = Some("Completed".to_owned());
        state.message = Some("the command exited with code 0".to_owned());
        return state;
    }
    if let Some(failed) = true_condition(job, "Failed") {
        state.phase = BatchJobPhase::Failed;
        state.completion_time = failed.last_transition_time.as_ref().map(chrono_time);
        let condition_reason = failed.reason.clone().unwrap_or_else(|| "Failed".to_owned());
        let (reason, message) = if condition_reason == "DeadlineExceeded" {
            (
                condition_reason,
                "the job ran past its deadline (deadlineSeconds) and was stopped".to_owned(),
            )
        } else if exit.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
            (
                "OOMKilled".to_owned(),
                format!(
                    "the command was killed for using more than its memory limit (exit code {})",
                    exit.map_or(137, |t| t.exit_code)
                ),
            )
        } else {
            let exited = match exit {
                Some(t) => format!("the command exited with code {}", t.exit_code),
                None => "the job failed".to_owned(),
            };
            let detail = failed.message.clone().filter(|m| !m.is_empty());
            (
                condition_reason,
                match detail {
                    Some(detail) => format!("{exited}: {detail}"),
                    None => exited,
                },
            )
        };
        state.reason = Some(reason);
        state.message = Some(message);
        return state;
    }
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        state.reason = Some(WAITING_FOR_ADMISSION.to_owned());
        state.message = Some(match queue {
            Some(queue) => format!("waiting for Kueue to admit it from LocalQueue {queue}"),
            None => "the Job is suspended".to_owned(),
        });
        return state;
    }
    if let Some((reason, message)) = pod.and_then(cannot_start) {
        state.phase = BatchJobPhase::Failed;
        state.reason = Some(reason);
        state.message = Some(message);
        return state;
    }
    let running = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        == Some("Running");
    if running {
        state.phase = BatchJobPhase::Running;
        state.reason = Some("Running".to_owned());
        state.message = Some(format!(
            "running in pod {}",
            state.placement.clone().unwrap_or_default()
        ));
        return state;
    }
    state.reason = Some(WAITING_FOR_POD.to_owned());
    state.message = Some(match pod.and_then(unscheduled) {
        Some(why) => format!("waiting for a node: {why}"),
        None => "waiting for its pod to start".to_owned(),
    });
    state
}

/// Where the job was handed: its pool, system and id there.
#[derive(Clone, Copy, Debug)]
pub struct Placement<'a> {
    /// `metadata.generation` of the BatchJob.
    pub generation: Option<i64>,
    /// Its NodePool.
    pub pool: &'a str,
    /// `kubernetes` or `slurm`.
    pub system: &'a str,
    /// The Job's name, the Slurm job id; `None` until submitted.
    pub system_id: Option<&'a str>,
}

fn condition(
    previous: Option<&BatchJobStatus>,
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

/// The status of an admitted job in `state`.
pub fn next_status(
    previous: Option<&BatchJobStatus>,
    state: &JobState,
    at: Placement<'_>,
    now: &Time,
) -> BatchJobStatus {
    let mut conditions = vec![condition(
        previous,
        ADMITTED,
        true,
        "Admitted",
        &format!("placed on NodePool {}", at.pool),
        at.generation,
        now,
    )];
    let reason = state.reason.clone().unwrap_or_default();
    let message = state.message.clone().unwrap_or_default();
    match state.phase {
        BatchJobPhase::Succeeded => conditions.push(condition(
            previous,
            COMPLETE,
            true,
            &reason,
            &message,
            at.generation,
            now,
        )),
        BatchJobPhase::Failed => conditions.push(condition(
            previous,
            FAILED,
            true,
            &reason,
            &message,
            at.generation,
            now,
        )),
        _ => {}
    }
    let previous_start = previous.and_then(|p| p.start_time.clone());
    BatchJobStatus {
        phase: Some(state.phase),
        node_pool: Some(at.pool.to_owned()),
        system: Some(at.system.to_owned()),
        system_id: at.system_id.map(str::to_owned),
        pod_name: state
            .placement
            .clone()
            .or_else(|| previous.and_then(|p| p.pod_name.clone())),
        start_time: state.start_time.as_ref().map(kube_time).or(previous_start),
        completion_time: state.completion_time.as_ref().map(kube_time).or_else(|| {
            state
                .phase
                .is_finished()
                .then(|| previous.and_then(|p| p.completion_time.clone()))
                .flatten()
                .or_else(|| state.phase.is_finished().then(|| now.clone()))
        }),
        exit_code: state.exit_code,
        reason: state.reason.clone(),
        message: state.message.clone(),
        observed_generation: at.generation,
        conditions,
    }
}

/// The status of a refused job: `Admitted=False` with the rule as reason, phase `Failed` when
/// the job as written can never run (`permanent`), else `Pending` (a cap, a missing profile or
/// pool: retried). Nothing was submitted: no pool, system nor id.
pub fn refused_status(
    previous: Option<&BatchJobStatus>,
    refusal: &Refusal,
    permanent: bool,
    generation: Option<i64>,
    now: &Time,
) -> BatchJobStatus {
    let phase = if permanent {
        BatchJobPhase::Failed
    } else {
        BatchJobPhase::Pending
    };
    let mut conditions = vec![condition(
        previous,
        ADMITTED,
        false,
        refusal.reason,
        &refusal.message,
        generation,
        now,
    )];
    if permanent {
        conditions.push(condition(
            previous,
            FAILED,
            true,
            refusal.reason,
            &refusal.message,
            generation,
            now,
        ));
    }
    BatchJobStatus {
        phase: Some(phase),
        reason: Some(refusal.reason.to_owned()),
        message: Some(refusal.message.clone()),
        observed_generation: generation,
        completion_time: permanent.then(|| now.clone()),
        conditions,
        ..BatchJobStatus::default()
    }
}

/// The status of a job cancelled by `spec.cancel`: what was known, phase `Cancelled`, finished
/// now.
pub fn cancelled_status(
    previous: Option<&BatchJobStatus>,
    generation: Option<i64>,
    now: &Time,
) -> BatchJobStatus {
    let mut next = previous.cloned().unwrap_or_default();
    next.phase = Some(BatchJobPhase::Cancelled);
    next.reason = Some(CANCELLED.to_owned());
    next.message = Some("cancelled (spec.cancel)".to_owned());
    next.completion_time = next.completion_time.or_else(|| Some(now.clone()));
    next.observed_generation = generation;
    // Neither complete nor failed: the phase says it.
    next.conditions.retain(|c| c.type_ == ADMITTED);
    next
}

/// Whether `next` differs from `previous` (what a status write would change).
pub fn changed(previous: Option<&BatchJobStatus>, next: &BatchJobStatus) -> bool {
    previous != Some(next)
}

/// The Event a change from `previous` to `next` deserves: a new phase or a new reason (a
/// refusal that changed). `(type, reason, note)`.
pub fn transition(
    previous: Option<&BatchJobStatus>,
    next: &BatchJobStatus,
) -> Option<(EventType, String, String)> {
    let phase = next.phase?;
    let same = previous.is_some_and(|p| p.phase == next.phase && p.reason == next.reason);
    if same {
        return None;
    }
    let warning = matches!(phase, BatchJobPhase::Failed)
        || (phase == BatchJobPhase::Pending && next.reason.is_some());
    let reason = match phase {
        BatchJobPhase::Pending | BatchJobPhase::Failed => next
            .reason
            .clone()
            .unwrap_or_else(|| phase.as_str().to_owned()),
        _ => phase.as_str().to_owned(),
    };
    let note = format!(
        "{}{}",
        phase.as_str(),
        next.message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    );
    Some((
        if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason,
        note,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn job(spec: Value, status: Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": spec, "status": status}))
            .expect("a Job")
    }

    fn pod(name: &str, status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status}))
            .expect("a pod")
    }

    #[test]
    fn what_a_job_and_its_pods_say() {
        let unschedulable = pod(
            "j-a",
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
        );
        let running = pod("j-b", json!({"phase": "Running"}));
        let failed_earlier = pod(
            "j-0",
            json!({"phase": "Failed", "containerStatuses": [{"name": "job", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1}}}]}),
        );
        // (job spec, job status, pods, queue) → (phase, reason, message, placement)
        type Case<'a> = (
            Value,
            Value,
            Vec<Pod>,
            Option<&'a str>,
            BatchJobPhase,
            &'a str,
            &'a str,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                json!({"suspend": true}),
                json!({}),
                vec![],
                None,
                BatchJobPhase::Queued,
                WAITING_FOR_ADMISSION,
                "the Job is suspended",
                None,
            ),
            (
                json!({}),
                json!({"active": 1}),
                vec![unschedulable.clone()],
                None,
                BatchJobPhase::Queued,
                WAITING_FOR_POD,
                "waiting for a node: 0/3 nodes are available: 3 Insufficient cpu.",
                Some("j-a"),
            ),
            (
                // A retry runs after a failed pod: the running one speaks.
                json!({}),
                json!({"active": 1, "failed": 1}),
                vec![failed_earlier.clone(), running.clone()],
                None,
                BatchJobPhase::Running,
                "Running",
                "running in pod j-b",
                Some("j-b"),
            ),
            (
                json!({}),
                json!({}),
                vec![],
                None,
                BatchJobPhase::Queued,
                WAITING_FOR_POD,
                "waiting for its pod to start",
                None,
            ),
        ];
        for (spec, status, pods, queue, phase, reason, message, placement) in cases {
            let state = kubernetes_state(&job(spec.clone(), status), &pods, queue);
            assert_eq!(state.phase, phase, "{spec}");
            assert_eq!(state.reason.as_deref(), Some(reason), "{spec}");
            assert_eq!(state.message.as_deref(), Some(message), "{spec}");
            assert_eq!(state.placement.as_deref(), placement, "{spec}");
        }
    }

    #[test]
    fn conditions_keep_their_transition_time_and_events_follow_phase_and_reason() {
        let t = |s: &str| -> Time { serde_json::from_value(json!(s)).expect("a time") };
        let at = Placement {
            generation: Some(2),
            pool: "batch",
            system: "kubernetes",
            system_id: Some("j"),
        };
        let queued = next_status(
            None,
            &JobState::new(BatchJobPhase::Queued),
            at,
            &t("2026-01-01T00:00:00Z"),
        );
        let mut running = JobState::new(BatchJobPhase::Running);
        running.reason = Some("Running".into());
        let next = next_status(Some(&queued), &running, at, &t("2026-01-01T01:00:00Z"));
        assert_eq!(
            next.conditions[0].last_transition_time,
            t("2026-01-01T00:00:00Z")
        );
        let (kind, reason, _) = transition(Some(&queued), &next).expect("an event");
        assert_eq!((kind, reason.as_str()), (EventType::Normal, "Running"));
        assert_eq!(transition(Some(&next), &next), None);
        let cancelled = cancelled_status(Some(&next), Some(3), &t("2026-01-01T02:00:00Z"));
        assert_eq!(cancelled.phase, Some(BatchJobPhase::Cancelled));
        assert_eq!(cancelled.completion_time, Some(t("2026-01-01T02:00:00Z")));
        assert_eq!(cancelled.conditions.len(), 1);
        let refusal = Refusal {
            reason: "UserCapExceeded",
            message: "over".into(),
        };
        let refused = refused_status(None, &refusal, false, Some(1), &t("2026-01-01T00:00:00Z"));
        assert_eq!(refused.phase, Some(BatchJobPhase::Pending));
        let (kind, reason, _) = transition(None, &refused).expect("an event");
        assert_eq!(
            (kind, reason.as_str()),
            (EventType::Warning, "UserCapExceeded")
        );
    }
}
