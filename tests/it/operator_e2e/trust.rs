//! What a Heartbeat's monitor survives: an operator restart does not take CronJobs for
//! gone, and a lowered quota keeps the oldest Heartbeats monitored. What it does not: a
//! suspended monitor goes with its Heartbeat, even while no operator runs.

use std::time::Duration;

use super::cronjobs::{cron_job, event_notes};
use super::harness::{
    Operator, Scenario, apply, condition, events_with_reason, hb_status, kubectl,
};
use super::harness::{secret_value, status_where};
use crate::helpers::wait_for;
use hartslag::k8s::crd::Heartbeat;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

fn ready(status: &serde_json::Value) -> bool {
    condition(status, "Ready").is_some_and(|c| c["status"] == "True")
}

fn refused_for(status: &serde_json::Value, reason: &str) -> bool {
    condition(status, "Ready").is_some_and(|c| c["status"] == "False" && c["reason"] == reason)
}

/// The Heartbeat's ping URL, once its Secret holds one.
async fn ping_url(secrets: &Api<Secret>, hb: &str) -> String {
    let secret = format!("{hb}-heartbeat");
    wait_for("the ping URL", Duration::from_secs(30), || {
        secret_value(secrets, &secret, "ping-url")
    })
    .await
}

/// The status code a ping to the Heartbeat's ping URL gets.
async fn ping(secrets: &Api<Secret>, hb: &str) -> u16 {
    let url = ping_url(secrets, hb).await;
    reqwest::Client::new()
        .post(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_restart_keeps_the_heartbeats_of_cron_jobs_monitored() {
    let mut s = Scenario::start("e2e-trust-restart").await;
    let names = ["backup", "invoices", "reports"];
    for name in names {
        apply(
            &s.ns,
            &cron_job(name, "0 3 * * *", &[("hartslag.dev/monitor", "true")]),
        );
    }
    for name in names {
        status_where(&s.hbs, name, "Ready", Duration::from_secs(60), ready).await;
    }
    s.restart().await;
    s.op.wait_settled().await;
    for name in names {
        let st = hb_status(&s.hbs, name).await.unwrap();
        let log = s.op.log.display();
        assert_eq!(
            ping(&s.secrets, name).await,
            200,
            "{name} is not monitored: {st}; log: {log}"
        );
        assert!(ready(&st), "{name}: {st}");
    }
    // A refusal would have been published as a Warning Event by now, and its monitor
    // switched off: look once more after a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        events_with_reason(&s.client, &s.ns, "CronJobNotFound").await,
        0
    );
    for name in names {
        assert_eq!(ping(&s.secrets, name).await, 200, "{name} is not monitored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_lowered_quota_keeps_the_oldest_heartbeats_monitored() {
    let s = Scenario::start("e2e-trust-quota").await;
    apply(
        &s.ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: quota\nspec:\n  limits:\n    heartbeats: 5\n",
    );
    let names = ["hb-1", "hb-2", "hb-3", "hb-4"];
    // Created in this order, one after the other.
    for name in names {
        apply(
            &s.ns,
            &format!(
                "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: {name}\nspec:\n  interval: 1h\n  applicationRef:\n    name: quota\n"
            ),
        );
        status_where(&s.hbs, name, "Ready", Duration::from_secs(60), ready).await;
    }
    kubectl(&[
        "patch",
        "applications.hartslag.dev",
        "quota",
        "-n",
        &s.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"limits":{"heartbeats":2}}}"#,
    ]);
    for name in ["hb-3", "hb-4"] {
        status_where(
            &s.hbs,
            name,
            "QuotaExceeded",
            Duration::from_secs(60),
            |st| refused_for(st, "QuotaExceeded"),
        )
        .await;
    }
    for name in ["hb-1", "hb-2"] {
        let st = hb_status(&s.hbs, name).await.unwrap();
        assert!(ready(&st), "{name}: {st}");
        assert_eq!(ping(&s.secrets, name).await, 200, "{name} is not monitored");
    }
    let hbs: &Api<Heartbeat> = &s.hbs;
    assert_eq!(hbs.list(&Default::default()).await.unwrap().items.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_deleted_token_secret_is_issued_again_at_once() {
    let s = Scenario::start("e2e-trust-secret").await;
    apply(
        &s.ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: shop\nspec: {}\n---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: backup\nspec:\n  interval: 1h\n",
    );
    let app_token = wait_for("the Application's token", Duration::from_secs(30), || {
        secret_value(&s.secrets, "shop-hartslag-token", "token")
    })
    .await;
    let ping_url = ping_url(&s.secrets, "backup").await;
    for secret in ["shop-hartslag-token", "backup-heartbeat"] {
        kubectl(&["delete", "secret", secret, "-n", &s.ns]);
    }
    // No resync, no restart, no edit: the deletion alone brings new tokens.
    let new_app_token = wait_for(
        "a new Application token",
        Duration::from_secs(30),
        || async {
            secret_value(&s.secrets, "shop-hartslag-token", "token")
                .await
                .filter(|t| *t != app_token)
        },
    )
    .await;
    let new_ping_url = wait_for("a new ping URL", Duration::from_secs(30), || async {
        secret_value(&s.secrets, "backup-heartbeat", "ping-url")
            .await
            .filter(|u| *u != ping_url)
    })
    .await;
    let http = reqwest::Client::new();
    let status =
        |r: reqwest::Result<reqwest::Response>| r.map(|r| r.status().as_u16()).unwrap_or(0);
    assert_eq!(status(http.post(&new_ping_url).send().await), 200);
    assert_eq!(
        status(http.post(&ping_url).send().await),
        404,
        "the old ping URL still works"
    );
    let stats = format!("{}/api/v1/stats", s.op.base);
    assert_eq!(
        status(http.get(&stats).bearer_auth(&new_app_token).send().await),
        200
    );
    assert_eq!(
        status(http.get(&stats).bearer_auth(&app_token).send().await),
        401
    );
    wait_for("TokenReissued Events", Duration::from_secs(30), || async {
        (events_with_reason(&s.client, &s.ns, "TokenReissued").await >= 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn every_state_change_is_an_event_with_its_own_note() {
    let s = Scenario::start("e2e-trust-events").await;
    apply(
        &s.ns,
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: export\nspec:\n  interval: 1h\n",
    );
    let url = ping_url(&s.secrets, "export").await;
    let http = reqwest::Client::new();
    // Two failures of the same kind with a success between: two Down Events.
    for (code, state) in [(3, "Down"), (0, "Up"), (5, "Down")] {
        let sent = http.post(format!("{url}?exit_code={code}")).send().await;
        assert_eq!(sent.map(|r| r.status().as_u16()).unwrap_or(0), 200);
        status_where(&s.hbs, "export", state, Duration::from_secs(30), |st| {
            st["state"] == state
        })
        .await;
    }
    let notes = wait_for("two Down Events", Duration::from_secs(30), || async {
        let notes = event_notes(&s.client, &s.ns, "Heartbeat", "export", "Down").await;
        (notes.len() == 2).then_some(notes)
    })
    .await;
    assert!(
        notes.iter().any(|n| n.contains("exit code 3"))
            && notes.iter().any(|n| n.contains("exit code 5")),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_suspended_monitor_deleted_while_no_operator_runs_is_not_picked_up_later() {
    let mut s = Scenario::start("e2e-trust-suspended").await;
    let names = ["again", "later"];
    // Pinged, then refused (its Application is missing): suspended with its history.
    for name in names {
        apply(
            &s.ns,
            &format!(
                "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: {name}\nspec:\n  interval: 1h\n"
            ),
        );
        assert_eq!(ping(&s.secrets, name).await, 200);
        status_where(&s.hbs, name, "Up", Duration::from_secs(30), |st| {
            st["state"] == "Up"
        })
        .await;
        kubectl(&[
            "patch",
            "heartbeat",
            name,
            "-n",
            &s.ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"applicationRef":{"name":"nowhere"}}}"#,
        ]);
        status_where(
            &s.hbs,
            name,
            "ApplicationNotFound",
            Duration::from_secs(30),
            |st| refused_for(st, "ApplicationNotFound"),
        )
        .await;
    }
    // While no operator runs both are deleted, and `again` is created anew at once.
    s.op.kill();
    for name in names {
        kubectl(&["delete", "heartbeat", name, "-n", &s.ns]);
    }
    let fresh = "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: NAME\nspec:\n  interval: 1h\n";
    apply(&s.ns, &fresh.replace("NAME", "again"));
    s.op = Operator::start(&s.install, &s.data, &s.sink.url(), s.port).await;
    s.op.wait_settled().await;
    // `later` is created anew after the start.
    apply(&s.ns, &fresh.replace("NAME", "later"));
    for name in names {
        let st = status_where(&s.hbs, name, "Ready", Duration::from_secs(60), ready).await;
        assert!(
            st["state"] == "New" && st.get("lastPingAt").is_none() && st.get("pings").is_none(),
            "{name} picked up the deleted Heartbeat's monitor: {st}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_down_heartbeat_deleted_and_created_again_while_no_operator_runs_starts_afresh() {
    let mut s = Scenario::start("e2e-trust-recreated").await;
    let manifest = "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: nightly\nspec:\n  interval: 1h\n  alerts:\n    email: [ops@example.com]\n";
    apply(&s.ns, manifest);
    let old_url = ping_url(&s.secrets, "nightly").await;
    let http = reqwest::Client::new();
    let sent = http.post(format!("{old_url}?exit_code=3")).send().await;
    assert_eq!(sent.map(|r| r.status().as_u16()).unwrap_or(0), 200);
    status_where(&s.hbs, "nightly", "Down", Duration::from_secs(30), |st| {
        st["state"] == "Down"
    })
    .await;
    wait_for("the DOWN email", Duration::from_secs(30), || async {
        (!s.sink.with_subject("DOWN: nightly").is_empty()).then_some(())
    })
    .await;
    // While no operator runs, it is deleted and created again under its name (a new uid);
    // the old Secret goes with the old Heartbeat.
    s.op.kill();
    kubectl(&["delete", "heartbeat", "nightly", "-n", &s.ns]);
    apply(&s.ns, manifest);
    s.op = Operator::start(&s.install, &s.data, &s.sink.url(), s.port).await;
    s.op.wait_settled().await;
    let st = status_where(&s.hbs, "nightly", "Ready", Duration::from_secs(60), |st| {
        ready(st) && st["state"].is_string()
    })
    .await;
    assert!(
        st["state"] == "New" && st.get("lastPingAt").is_none() && st.get("pings").is_none(),
        "the new Heartbeat inherited the old one's monitor: {st}"
    );
    // The old incident is resolved, once; the new Heartbeat has nothing to alert about.
    wait_for(
        "the NO LONGER MONITORED email",
        Duration::from_secs(30),
        || async {
            (!s.sink
                .with_subject("NO LONGER MONITORED: nightly")
                .is_empty())
            .then_some(())
        },
    )
    .await;
    let new_url = wait_for("a new ping URL", Duration::from_secs(30), || async {
        secret_value(&s.secrets, "nightly-heartbeat", "ping-url")
            .await
            .filter(|u| *u != old_url)
    })
    .await;
    let status =
        |r: reqwest::Result<reqwest::Response>| r.map(|r| r.status().as_u16()).unwrap_or(0);
    assert_eq!(status(http.post(&old_url).send().await), 404);
    assert_eq!(status(http.post(&new_url).send().await), 200);
    status_where(&s.hbs, "nightly", "Up", Duration::from_secs(30), |st| {
        st["state"] == "Up" && st["pings"] == 1
    })
    .await;
    assert_eq!(s.sink.with_subject("NO LONGER MONITORED").len(), 1);
    assert_eq!(s.sink.with_subject("DOWN").len(), 1);
    assert!(s.sink.with_subject("RECOVERED").is_empty());
}
