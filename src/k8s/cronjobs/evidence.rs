//! Jobs and Pods read as evidence for the core's state machine (pure): which Jobs belong to
//! a CronJob, where a Job stands, and the exit code of the container that failed it.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

use crate::core::monitor::jobs::{JobFailure, JobOutcome, JobSignal};

/// Annotation `kubectl create job --from=cronjob/...` puts on a Job started by hand.
pub const MANUAL_ANNOTATION: &str = "cronjob.kubernetes.io/instantiate";

/// Whether `job` was created from the CronJob with uid `cron_job_uid`: by its controller,
/// or by hand from it (`kubectl create job --from=cronjob/...`, which sets an owner
/// reference that is not the controller).
pub fn belongs_to(job: &Job, cron_job_uid: &str) -> bool {
    job.owner_references()
        .iter()
        .any(|o| o.kind == "CronJob" && o.uid == cron_job_uid)
}

/// Whether a person started the Job, rather than the CronJob's schedule.
pub fn started_by_hand(job: &Job) -> bool {
    job.annotations().get(MANUAL_ANNOTATION).map(String::as_str) == Some("manual")
}

/// The terminal condition of a Job (`Complete` or `Failed` with status `True`), if any;
/// other conditions (`Suspended`, `FailureTarget`, `SuccessCriteriaMet`, ...) are steps
/// on the way and say nothing final.
fn terminal(job: &Job) -> Option<(&str, Option<&str>, Option<Timestamp>)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .map(|c| {
            (
                c.type_.as_str(),
                c.reason.as_deref(),
                c.last_transition_time.as_ref().map(|t| t.0),
            )
        })
}

/// When the Job started: `status.startTime`, else its creation (a Job held suspended by a
/// queue was still created by the CronJob on time).
fn started_at(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// The Job as evidence: running, or finished with its outcome. `exit_code` is the failed
/// container's (from [`failed_exit_code`]), used only for a failed Job. `None` for a Job
/// that has not even a creation time (never the case for one read from the API server).
pub fn signal(job: &Job, exit_code: Option<u8>) -> Option<JobSignal> {
    let started_at = started_at(job)?;
    let outcome = match terminal(job) {
        None => JobOutcome::Running,
        Some(("Complete", _, changed)) => {
            let at = job
                .status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .map(|t| t.0)
                .or(changed)
                .unwrap_or(started_at);
            JobOutcome::Succeeded(at)
        }
        Some((_, reason, changed)) => JobOutcome::Failed {
            // A failed Job has no completionTime before Kubernetes 1.31; its condition's
            // transition time is when it failed.
            at: changed.unwrap_or(started_at),
            reason: JobFailure::from_reason(reason.unwrap_or_default()),
            exit_code,
        },
    };
    Some(JobSignal {
        name: job.name_any(),
        started_at,
        outcome,
        run_ids: vec![job.name_any()],
    })
}

/// Whether the Job has failed (so its Pods are worth reading for an exit code).
pub fn failed(job: &Job) -> bool {
    matches!(terminal(job), Some(("Failed", _, _)))
}

/// The exit code that failed the Job: among its Pods' containers (init containers too,
/// and the previous run of a container restarted in place), the non-zero code of the one
/// that terminated last. Codes outside 1..=255 (a negative code from a broken runtime)
/// are left out.
pub fn failed_exit_code(pods: &[Pod]) -> Option<u8> {
    pods.iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            let regular = s.container_statuses.iter().flatten();
            let init = s.init_container_statuses.iter().flatten();
            regular.chain(init)
        })
        .flat_map(terminations)
        .filter(|(code, _)| *code != 0)
        .max_by_key(|(_, finished)| *finished)
        .and_then(|(code, _)| u8::try_from(code).ok())
}

/// A container's terminations: the current state and the one before a restart.
fn terminations(c: &ContainerStatus) -> impl Iterator<Item = (i32, Option<Timestamp>)> + '_ {
    let now = c.state.as_ref().and_then(|s| s.terminated.as_ref());
    let before = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    now.into_iter()
        .chain(before)
        .map(|t| (t.exit_code, t.finished_at.as_ref().map(|f| f.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: serde_json::Value) -> Job {
        serde_json::from_value(json).unwrap()
    }

    fn base(status: serde_json::Value) -> Job {
        job(serde_json::json!({
            "metadata": {
                "name": "nightly-1796420700",
                "creationTimestamp": "2026-12-04T21:45:07Z",
                "ownerReferences": [{"apiVersion": "batch/v1beta1", "kind": "CronJob", "name": "nightly", "uid": "cj-uid", "controller": true}]
            },
            "spec": {"template": {"spec": {"containers": []}}},
            "status": status
        }))
    }

    fn ts(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn a_job_reads_as_running_succeeded_or_failed() {
        let running = base(serde_json::json!({"startTime": "2026-12-04T21:45:08Z", "active": 1}));
        assert!(belongs_to(&running, "cj-uid"));
        assert!(!belongs_to(&running, "other"));
        assert!(!started_by_hand(&running));
        let s = signal(&running, None).unwrap();
        assert_eq!(
            (s.name.as_str(), s.started_at, s.outcome),
            (
                "nightly-1796420700",
                ts("2026-12-04T21:45:08Z"),
                JobOutcome::Running
            )
        );
        assert_eq!(s.run_ids, ["nightly-1796420700"]);
        let done = base(serde_json::json!({
            "startTime": "2026-12-04T21:45:08Z",
            "completionTime": "2026-12-04T21:46:10Z",
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": "2026-12-04T21:46:09Z"},
                {"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-04T21:46:10Z"}
            ]
        }));
        assert_eq!(
            signal(&done, None).unwrap().outcome,
            JobOutcome::Succeeded(ts("2026-12-04T21:46:10Z"))
        );
        let failed_job = base(serde_json::json!({
            "startTime": "2026-12-04T21:45:08Z",
            "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": "2026-12-04T21:45:30Z"}]
        }));
        assert!(failed(&failed_job));
        assert_eq!(
            signal(&failed_job, Some(3)).unwrap().outcome,
            JobOutcome::Failed {
                at: ts("2026-12-04T21:45:30Z"),
                reason: JobFailure::BackoffLimitExceeded,
                exit_code: Some(3)
            }
        );
        // Steps on the way are not the end; a condition that is not True neither.
        let target = base(serde_json::json!({
            "startTime": "2026-12-04T21:45:08Z",
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                {"type": "Failed", "status": "False"}
            ]
        }));
        assert_eq!(signal(&target, None).unwrap().outcome, JobOutcome::Running);
        assert!(!failed(&target));
        // Not started yet (held by a queue): dated by its creation.
        let queued = base(serde_json::json!({}));
        assert_eq!(
            signal(&queued, None).unwrap().started_at,
            ts("2026-12-04T21:45:07Z")
        );
    }

    #[test]
    fn a_job_started_by_hand_is_recognised() {
        let manual = job(serde_json::json!({
            "metadata": {
                "name": "manual-run",
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "cj-uid"}]
            },
            "spec": {"template": {"spec": {"containers": []}}}
        }));
        assert!(belongs_to(&manual, "cj-uid"));
        assert!(started_by_hand(&manual));
        assert!(signal(&manual, None).is_none(), "no time at all");
    }

    fn pod(statuses: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": statuses}))
            .unwrap()
    }

    fn terminated(code: i32, finished: &str) -> serde_json::Value {
        serde_json::json!({"terminated": {"exitCode": code, "finishedAt": finished}})
    }

    fn container(state: serde_json::Value, last: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0, "state": state, "lastState": last})
    }

    #[test]
    fn the_exit_code_is_the_last_failed_container_s() {
        assert_eq!(failed_exit_code(&[]), None);
        let ok = pod(
            serde_json::json!({"containerStatuses": [container(terminated(0, "2026-12-04T21:45:20Z"), serde_json::json!({}))]}),
        );
        assert_eq!(failed_exit_code(std::slice::from_ref(&ok)), None);
        let three = pod(
            serde_json::json!({"phase": "Failed", "containerStatuses": [container(terminated(3, "2026-12-04T21:45:20Z"), serde_json::json!({}))]}),
        );
        let later = pod(
            serde_json::json!({"phase": "Failed", "containerStatuses": [container(terminated(137, "2026-12-04T21:46:20Z"), serde_json::json!({}))]}),
        );
        assert_eq!(failed_exit_code(&[three.clone(), ok.clone()]), Some(3));
        assert_eq!(failed_exit_code(&[three.clone(), later]), Some(137));
        // Restarted in place: the previous run's code.
        let restarted = pod(
            serde_json::json!({"containerStatuses": [container(serde_json::json!({"running": {}}), terminated(2, "2026-12-04T21:47:00Z"))]}),
        );
        assert_eq!(failed_exit_code(&[three, restarted]), Some(2));
        // An init container.
        let init = pod(
            serde_json::json!({"initContainerStatuses": [container(terminated(7, "2026-12-04T21:45:00Z"), serde_json::json!({}))]}),
        );
        assert_eq!(failed_exit_code(&[init]), Some(7));
        let odd = pod(
            serde_json::json!({"containerStatuses": [container(terminated(-1, "2026-12-04T21:45:00Z"), serde_json::json!({}))]}),
        );
        assert_eq!(failed_exit_code(&[odd]), None);
    }
}
