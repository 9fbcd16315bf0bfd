//! CronJobs watched end to end: the test control plane's CronJob and Job controllers run,
//! and the tests play the kubelet by patching Pods' status (phase, terminated container
//! and exit code), which the Job controller turns into Job conditions as on a real
//! cluster. CronJobs are served as `batch/v1beta1` on 1.20 and `batch/v1` on current
//! servers: the tests use whichever the server offers, as the operator does.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::harness::{
    Scenario, apply, condition, hb_status, kubectl, kubectl_try, secret_value, status_where,
};
use crate::helpers::{get_json, wait_for};
use hartslag::k8s::crd::Heartbeat;

/// The CronJob API version the server serves.
pub(super) fn batch_version() -> &'static str {
    let v1 = kubectl_try(&["get", "--raw", "/apis/batch/v1"]).unwrap_or_default();
    if v1.contains("\"cronjobs\"") {
        "batch/v1"
    } else {
        "batch/v1beta1"
    }
}

/// A CronJob whose Jobs fail at the first failed Pod.
pub(super) fn cron_job(name: &str, schedule: &str, annotations: &[(&str, &str)]) -> String {
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("\n    {k}: \"{v}\""))
        .collect();
    let annotations = if annotations.is_empty() {
        " {}".to_string()
    } else {
        annotations
    };
    format!(
        "apiVersion: {}\nkind: CronJob\nmetadata:\n  name: {name}\n  annotations:{annotations}\nspec:\n  schedule: \"{schedule}\"\n  jobTemplate:\n    spec:\n      backoffLimit: 0\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n            - name: main\n              image: busybox\n              command: [\"true\"]\n",
        batch_version()
    )
}

/// Waits until the Heartbeat's status shows `state`; returns it.
async fn in_state(hbs: &Api<Heartbeat>, name: &str, state: &str, within: Duration) -> Value {
    status_where(hbs, name, state, within, |s| s["state"] == state).await
}

/// The Up condition's message.
fn up_message(status: &Value) -> String {
    condition(status, "Up")
        .and_then(|c| c["message"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Jobs of CronJob `cron_job` (by owner), oldest first.
async fn jobs_of(jobs: &Api<Job>, cron_job: &str) -> Vec<Job> {
    let mut list: Vec<Job> = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.owner_references().iter().any(|o| o.name == cron_job))
        .collect();
    list.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
    list
}

/// Waits for the `n`th Job of `cron_job` (1-based); returns its name.
async fn nth_job(jobs: &Api<Job>, cron_job: &str, n: usize, within: Duration) -> String {
    wait_for(
        &format!("Job {n} of CronJob {cron_job}"),
        within,
        || async {
            jobs_of(jobs, cron_job)
                .await
                .get(n - 1)
                .map(|j| j.name_any())
        },
    )
    .await
}

/// The Pod the Job controller made for `job`.
async fn pod_of(pods: &Api<Pod>, job: &str) -> String {
    wait_for(
        &format!("the Pod of Job {job}"),
        Duration::from_secs(30),
        || async {
            pods.list(&ListParams::default().labels(&format!("job-name={job}")))
                .await
                .ok()?
                .items
                .first()
                .map(|p| p.name_any())
        },
    )
    .await
}

/// Plays the kubelet: the Pod's container ends with `exit_code`.
async fn finish_pod(pods: &Api<Pod>, pod: &str, exit_code: i32) {
    let now = jiff::Timestamp::now().to_string();
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    let status = json!({"status": {
        "phase": phase,
        "startTime": now,
        "containerStatuses": [{
            "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {
                "exitCode": exit_code,
                "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": now, "finishedAt": now,
            }},
        }],
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Creates a Job as the CronJob controller does (owned by the CronJob, as its controller).
async fn start_job(client: &Client, ns: &str, cron_job: &str, job: &str) {
    let uid = kubectl(&[
        "get",
        "cronjob",
        cron_job,
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let body: Job = serde_json::from_value(json!({
        "metadata": {
            "name": job,
            "ownerReferences": [{"apiVersion": batch_version(), "kind": "CronJob", "name": cron_job, "uid": uid, "controller": true}],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}},
        },
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &body).await.unwrap();
}

/// Notes of the Events about `kind/name` with `reason`.
pub(super) async fn event_notes(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().is_some_and(|r| {
                            r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                        })
                })
                .filter_map(|e| e.note)
                .collect()
        })
        .unwrap_or_default()
}

/// The monitor's ping history through the management API.
async fn pings(base: &str, key: &str, name: &str) -> Vec<Value> {
    let Some(hb) = listed(base, key, name).await else {
        return Vec::new();
    };
    let id = hb["id"].as_str().unwrap_or_default();
    let v = get_json(&format!("{base}/v1/heartbeats/{id}/pings"), key).await;
    v["pings"].as_array().cloned().unwrap_or_default()
}

/// Heartbeat `name` as the management API lists it.
async fn listed(base: &str, key: &str, name: &str) -> Option<Value> {
    let list = get_json(&format!("{base}/v1/heartbeats"), key).await;
    list["heartbeats"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn one_annotation_monitors_a_cron_job_through_its_jobs() {
    let s = Scenario::start("e2e-cronjob").await;
    let (client, ns, hbs, secrets, op, sink) =
        (&s.client, &s.ns, &s.hbs, &s.secrets, &s.op, &s.sink);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: shop\nspec: {}\n",
    );

    // The annotation makes a Heartbeat of the CronJob's name, owned by it, on its schedule.
    apply(
        ns,
        &cron_job(
            "nightly",
            "* * * * *",
            &[
                ("hartslag.dev/monitor", "true"),
                ("hartslag.dev/grace", "45s"),
                ("hartslag.dev/application", "shop"),
                ("hartslag.dev/alerts-email", "ops@example.com"),
            ],
        ),
    );
    let hb = wait_for(
        "the Heartbeat made from the annotation",
        Duration::from_secs(30),
        || async { hbs.get_opt("nightly").await.ok().flatten() },
    )
    .await;
    assert_eq!(hb.spec.spec.cron_job_ref.as_ref().unwrap().name, "nightly");
    assert_eq!(hb.spec.spec.grace.unwrap().to_string(), "45s");
    let owner = &hb.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    let ready = status_where(hbs, "nightly", "Ready", Duration::from_secs(30), |s| {
        condition(s, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    let due: jiff::Timestamp = ready["nextDueAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(due.as_second() % 60, 0, "due at a whole minute: {ready}");
    let key = wait_for("the Application key", Duration::from_secs(30), || {
        secret_value(secrets, "shop-hartslag-token", "token")
    })
    .await;
    let listed = listed(&op.base, &key, "nightly").await.unwrap();
    assert_eq!(listed["schedule"], "* * * * *", "{listed}");

    // The CronJob controller starts a Job: Started. Its Pod fails with exit code 3: Down,
    // with the reason and exit code in status, an Event, the ping history and one email.
    let first = nth_job(&jobs, "nightly", 1, Duration::from_secs(90)).await;
    in_state(hbs, "nightly", "Started", Duration::from_secs(30)).await;
    let pod = pod_of(&pods, &first).await;
    finish_pod(&pods, &pod, 3).await;
    let down = in_state(hbs, "nightly", "Down", Duration::from_secs(30)).await;
    let message = up_message(&down);
    assert!(
        message.contains(&format!("Job {first} failed: BackoffLimitExceeded"))
            && message.contains("exit code 3"),
        "{down}"
    );
    let notes = wait_for("a Down Event", Duration::from_secs(20), || async {
        let n = event_notes(client, ns, "Heartbeat", "nightly", "Down").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(notes[0].contains("exit code 3"), "{notes:?}");
    let mail = sink.wait_for_mail("DOWN", Duration::from_secs(30)).await;
    assert!(
        mail[0].contains("BackoffLimitExceeded") && mail[0].contains("exit code 3"),
        "{}",
        mail[0]
    );
    let history = pings(&op.base, &key, "nightly").await;
    let failure = &history[0];
    assert_eq!(
        (
            &failure["kind"],
            &failure["exit_code"],
            &failure["reason"],
            &failure["job"]
        ),
        (
            &json!("fail"),
            &json!(3),
            &json!("BackoffLimitExceeded"),
            &json!(first)
        ),
        "{history:?}"
    );

    // The next run succeeds: Up, one recovery email, the run's duration in the history.
    let second = nth_job(&jobs, "nightly", 2, Duration::from_secs(90)).await;
    let pod = pod_of(&pods, &second).await;
    finish_pod(&pods, &pod, 0).await;
    in_state(hbs, "nightly", "Up", Duration::from_secs(30)).await;
    sink.wait_for_mail("RECOVERED", Duration::from_secs(30))
        .await;
    let history = pings(&op.base, &key, "nightly").await;
    assert!(
        history[0]["kind"] == "success"
            && history[0]["job"] == second.as_str()
            && history[0]["duration_ms"].is_number(),
        "{history:?}"
    );
    assert_eq!(sink.with_subject("DOWN").len(), 1);
    assert_eq!(sink.with_subject("RECOVERED").len(), 1);

    // Editing an annotation updates the Heartbeat; suspending the CronJob pauses it.
    kubectl(&[
        "annotate",
        "cronjob",
        "nightly",
        "-n",
        ns,
        "--overwrite",
        "hartslag.dev/grace=2m",
    ]);
    wait_for("grace 2m", Duration::from_secs(30), || async {
        hbs.get_opt("nightly")
            .await
            .ok()
            .flatten()
            .filter(|h| h.spec.spec.grace.is_some_and(|g| g.to_string() == "2m"))
    })
    .await;
    kubectl(&[
        "patch",
        "cronjob",
        "nightly",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    in_state(hbs, "nightly", "Paused", Duration::from_secs(30)).await;

    // A Heartbeat made by hand is never taken over: an Event on the CronJob says why.
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: report\nspec:\n  interval: 1h\n",
    );
    wait_for(
        "the hand-made Heartbeat in the cache",
        Duration::from_secs(30),
        || async { hb_status(hbs, "report").await },
    )
    .await;
    apply(
        ns,
        &cron_job("report", "0 0 1 1 *", &[("hartslag.dev/monitor", "true")]),
    );
    let notes = wait_for(
        "a HeartbeatExists Event",
        Duration::from_secs(30),
        || async {
            let n = event_notes(client, ns, "CronJob", "report", "HeartbeatExists").await;
            (!n.is_empty()).then_some(n)
        },
    )
    .await;
    assert!(
        notes[0].contains("not made from this CronJob's annotations"),
        "{notes:?}"
    );
    let report = hbs.get("report").await.unwrap();
    assert!(
        report.spec.spec.cron_job_ref.is_none() && report.owner_references().is_empty(),
        "the hand-made Heartbeat was changed: {:?}",
        report.spec.spec
    );

    // Removing the annotation deletes the Heartbeat; so does deleting the CronJob.
    kubectl(&[
        "annotate",
        "cronjob",
        "nightly",
        "-n",
        ns,
        "hartslag.dev/monitor-",
    ]);
    wait_for("the Heartbeat to go", Duration::from_secs(30), || async {
        hbs.get_opt("nightly")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    apply(
        ns,
        &cron_job("weekly", "0 0 * * 0", &[("hartslag.dev/monitor", "true")]),
    );
    wait_for("the weekly Heartbeat", Duration::from_secs(30), || async {
        hbs.get_opt("weekly").await.ok().flatten()
    })
    .await;
    kubectl(&["delete", "cronjob", "weekly", "-n", ns]);
    wait_for(
        "the weekly Heartbeat to go with its CronJob",
        Duration::from_secs(60),
        || async {
            hbs.get_opt("weekly")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn jobs_not_scheduled_running_too_long_or_without_a_ping_are_down() {
    let s = Scenario::start("e2e-cronjob-rules").await;
    let (client, ns, hbs, secrets) = (&s.client, &s.ns, &s.hbs, &s.secrets);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // CronJobs due once a year: every Job in this test is started by the test.
    apply(ns, &cron_job("batch", "0 0 1 1 *", &[]));
    apply(ns, &cron_job("idle", "0 0 1 1 *", &[]));
    // "missing" expects a run every minute, which its CronJob never starts.
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: missing\nspec:\n  cronJobRef: {name: idle}\n  schedule: '* * * * *'\n  grace: 5s\n---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: slow\nspec:\n  cronJobRef: {name: batch}\n  maxDuration: 5s\n---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: strict\nspec:\n  cronJobRef: {name: batch}\n  requirePing: true\n",
    );
    for name in ["missing", "slow", "strict"] {
        status_where(hbs, name, "Ready", Duration::from_secs(30), |s| {
            condition(s, "Ready").is_some_and(|c| c["status"] == "True")
        })
        .await;
    }
    // A Heartbeat naming a CronJob that does not exist says so.
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: orphan\nspec:\n  cronJobRef: {name: nope}\n",
    );
    let orphan = status_where(
        hbs,
        "orphan",
        "CronJobNotFound",
        Duration::from_secs(30),
        |s| condition(s, "Ready").is_some_and(|c| c["reason"] == "CronJobNotFound"),
    )
    .await;
    assert!(up_message(&orphan).is_empty(), "not monitored: {orphan}");

    // A Job runs past maxDuration: Down, "running too long".
    start_job(client, ns, "batch", "batch-1").await;
    for name in ["slow", "strict"] {
        in_state(hbs, name, "Started", Duration::from_secs(30)).await;
    }
    let slow = in_state(hbs, "slow", "Down", Duration::from_secs(30)).await;
    assert!(
        up_message(&slow).contains("running too long: Job batch-1"),
        "{slow}"
    );

    // It completes with no ping from its code: the requirePing monitor is Down.
    let pod = pod_of(&pods, "batch-1").await;
    finish_pod(&pods, &pod, 0).await;
    let strict = in_state(hbs, "strict", "Down", Duration::from_secs(30)).await;
    assert!(
        up_message(&strict).contains("completed without a ping: Job batch-1"),
        "{strict}"
    );

    // The next Job's code pings with its Pod's name as the run id: Up.
    let url = wait_for("the ping URL", Duration::from_secs(30), || {
        secret_value(secrets, "strict-heartbeat", "ping-url")
    })
    .await;
    start_job(client, ns, "batch", "batch-2").await;
    let pod = pod_of(&pods, "batch-2").await;
    let r = reqwest::get(format!("{url}?rid={pod}")).await.unwrap();
    assert_eq!(r.status(), 200);
    finish_pod(&pods, &pod, 0).await;
    in_state(hbs, "strict", "Up", Duration::from_secs(30)).await;

    // No Job at all for the minute "missing" expects: Down, "not scheduled".
    let missing = in_state(hbs, "missing", "Down", Duration::from_secs(80)).await;
    assert!(
        up_message(&missing).contains("not scheduled: CronJob idle started no Job"),
        "{missing}"
    );
}
