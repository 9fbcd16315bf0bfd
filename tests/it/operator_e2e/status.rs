//! Status tells the truth: what stopped being true disappears, refusals say why (with an
//! Event), `kubectl wait --for=condition=Ready` works, and the schema's defaults fill the
//! printer columns.

use std::time::Duration;

use super::harness::{
    Scenario, apply, condition, events_with_reason, kubectl, secret_value, status_where,
};
use crate::helpers::wait_for;
use hartslag::k8s::crd::Heartbeat;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

async fn patch_spec(hbs: &Api<Heartbeat>, name: &str, spec: Value) {
    hbs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "spec": spec })),
    )
    .await
    .unwrap();
}

/// Waits (up to 30 s) until the Heartbeat's status satisfies `check`; returns it.
async fn status_within(
    hbs: &Api<Heartbeat>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    status_where(hbs, name, what, Duration::from_secs(30), check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn status_clears_what_is_no_longer_true_and_explains_refusals() {
    let s = Scenario::start("e2e-status").await;
    let (client, ns, hbs, secrets, _op) = (&s.client, &s.ns, &s.hbs, &s.secrets, &s.op);

    // Schema defaults fill grace and deletionPolicy (interval has none: it excludes a
    // schedule), and `kubectl wait` works on the Ready condition.
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: job\nspec: {}\n",
    );
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "heartbeat/job",
        "--timeout=60s",
    ]);
    let spec = kubectl(&[
        "get",
        "heartbeat",
        "job",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.grace} {.spec.deletionPolicy}",
    ]);
    // No default interval in the schema (it excludes `schedule`): the core applies 1h.
    assert_eq!(spec, "5m Delete");
    let table = kubectl(&["get", "heartbeats", "-n", ns]);
    let row = table.lines().find(|l| l.starts_with("job ")).unwrap();
    assert!(row.contains("New") && row.contains("True"), "{table}");
    let explained = kubectl(&["explain", "heartbeat.spec.deletionPolicy"]);
    assert!(explained.contains("Default: Delete"), "{explained}");

    // Up, with a deadline.
    let url = wait_for("the ping URL", Duration::from_secs(30), || {
        secret_value(secrets, "job-heartbeat", "ping-url")
    })
    .await;
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    let up = status_within(hbs, "job", "Up", |s| s["state"] == "Up").await;
    assert!(up["nextDueAt"].is_string() && up["lastPingAt"].is_string());

    // An invalid edit: refused, and the last valid spec stays in effect, its state shown.
    patch_spec(hbs, "job", json!({"interval": "400d"})).await;
    let invalid = status_within(hbs, "job", "Ready=False InvalidSpec", |s| {
        condition(s, "Ready").is_some_and(|c| c["reason"] == "InvalidSpec")
    })
    .await;
    let ready = condition(&invalid, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("400d"), "{ready}");
    assert!(
        message.ends_with("the last valid spec stays in effect"),
        "{ready}"
    );
    assert_eq!(invalid["state"], "Up", "{invalid}");
    assert!(invalid["lastPingAt"].is_string() && invalid["nextDueAt"].is_string());
    assert_eq!(invalid["observedGeneration"], 2);
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        200,
        "a typo stopped the token"
    );
    wait_for("an InvalidSpec Event", Duration::from_secs(20), || async {
        (events_with_reason(client, ns, "InvalidSpec").await >= 1).then_some(())
    })
    .await;

    // A refusal from elsewhere (its Application is missing): not monitored, so no state,
    // deadline or counters next to the reason, and the token stops working.
    patch_spec(
        hbs,
        "job",
        json!({"interval": "1h", "applicationRef": {"name": "nowhere"}}),
    )
    .await;
    let orphan = status_within(hbs, "job", "Ready=False ApplicationNotFound", |s| {
        condition(s, "Ready").is_some_and(|c| c["reason"] == "ApplicationNotFound")
    })
    .await;
    for gone in ["state", "lastPingAt", "nextDueAt", "tokenSecretName"] {
        assert!(
            orphan.get(gone).is_none(),
            "{gone} outlived the monitor: {orphan}"
        );
    }
    assert!(condition(&orphan, "Up").is_none(), "{orphan}");
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        404,
        "the token stops working"
    );

    // Fixed: Ready again, where it was (its pings kept); a ping brings back the deadline.
    kubectl(&[
        "patch",
        "heartbeat",
        "job",
        "-n",
        ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/applicationRef"}]"#,
    ]);
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "heartbeat/job",
        "--timeout=60s",
    ]);
    let back = status_within(hbs, "job", "Up", |s| s["state"] == "Up").await;
    // Two pings before: the first, and the one that found the token working.
    assert_eq!(back["pings"], 2, "its pings were lost: {back}");
    assert_eq!(back["state"], "Up", "{back}");
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    status_within(hbs, "job", "Up again", |s| {
        s["state"] == "Up" && s["nextDueAt"].is_string()
    })
    .await;

    // Paused: no deadline.
    patch_spec(hbs, "job", json!({"paused": true})).await;
    let paused = status_within(hbs, "job", "Paused", |s| s["state"] == "Paused").await;
    assert!(paused.get("nextDueAt").is_none(), "{paused}");

    // A missing Application: refused with a reason and an Event; it appears, and the
    // Heartbeat is Ready without being touched.
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: waits\nspec:\n  applicationRef:\n    name: later\n",
    );
    let waiting = status_within(hbs, "waits", "ApplicationNotFound", |s| {
        condition(s, "Ready").is_some_and(|c| c["reason"] == "ApplicationNotFound")
    })
    .await;
    assert!(waiting.get("state").is_none());
    wait_for(
        "an ApplicationNotFound Event",
        Duration::from_secs(20),
        || async {
            (events_with_reason(client, ns, "ApplicationNotFound").await >= 1).then_some(())
        },
    )
    .await;
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: later\nspec: {}\n",
    );
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "heartbeat/waits",
        "application/later",
        "--timeout=60s",
    ]);
    let described = kubectl(&["describe", "heartbeat", "waits", "-n", ns]);
    assert!(described.contains("ApplicationNotFound"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_heartbeat_held_in_its_deletion_says_it_is_no_longer_ready() {
    let s = Scenario::start("e2e-status-deleting").await;
    let (ns, hbs, secrets) = (&s.ns, &s.hbs, &s.secrets);
    // Someone else's finalizer holds its deletion.
    apply(
        ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\nspec:\n  interval: 1h\n",
    );
    let url = wait_for("the ping URL", Duration::from_secs(30), || {
        secret_value(secrets, "held-heartbeat", "ping-url")
    })
    .await;
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    status_within(hbs, "held", "Up", |s| s["state"] == "Up").await;

    kubectl(&["delete", "heartbeat", "held", "-n", ns, "--wait=false"]);
    let deleting = status_within(hbs, "held", "Ready=False Deleting", |s| {
        condition(s, "Ready").is_some_and(|c| c["status"] == "False" && c["reason"] == "Deleting")
    })
    .await;
    for gone in ["state", "lastPingAt", "nextDueAt", "tokenSecretName"] {
        assert!(
            deleting.get(gone).is_none(),
            "{gone} outlived the monitor: {deleting}"
        );
    }
    assert!(condition(&deleting, "Up").is_none(), "{deleting}");
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);
    let table = kubectl(&["get", "heartbeats", "-n", ns]);
    let row = table.lines().find(|l| l.starts_with("held ")).unwrap();
    assert!(row.contains("False") && !row.contains("Up"), "{table}");

    // Let go: it goes.
    kubectl(&[
        "patch",
        "heartbeat",
        "held",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    wait_for("held gone", Duration::from_secs(30), || async {
        hbs.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await;
}
