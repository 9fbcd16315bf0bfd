//! Alert channels on the test control plane: an `AlertChannel`'s Secret is read through the
//! operator's cache (only once it is labelled for channels), a missing one is a clear
//! condition and an Event, a Heartbeat naming an unknown channel is `ChannelNotFound` until
//! the channel appears, a `ClusterAlertChannel` serves Heartbeats in every watched
//! namespace (named by a Heartbeat or as its Application's default), a Down Heartbeat's
//! alert reaches a Slack receiver (and a refusing target's error shows on its channel),
//! and a restart with nothing changed writes no channel status.

use std::time::Duration;

use super::harness::{
    Install, Operator, SERIAL, Scenario, events_with_reason, hb_status, prepare, requests,
    secret_value, status_writes, teardown,
};
use crate::helpers::{SmtpSink, free_port, wait_for, webhook_sink};
use hartslag::k8s::crd::{AlertChannel, Application, ClusterAlertChannel, Heartbeat};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

/// `(status, reason, message)` of a `Ready` condition in a status.
fn ready(status: &Value) -> Option<(String, String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

async fn channel_status(api: &Api<AlertChannel>, name: &str) -> Option<Value> {
    serde_json::to_value(api.get_opt(name).await.ok()??.status?).ok()
}

async fn cluster_channel_status(api: &Api<ClusterAlertChannel>, name: &str) -> Option<Value> {
    serde_json::to_value(api.get_opt(name).await.ok()??.status?).ok()
}

/// Waits until `read` shows `Ready` with `reason`; its message.
async fn wait_ready<F, Fut>(what: &str, reason: &str, read: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    wait_for(
        &format!("{what}: Ready with reason {reason}"),
        Duration::from_secs(60),
        || async {
            ready(&read().await?)
                .filter(|(_, r, _)| r == reason)
                .map(|(_, _, m)| m)
        },
    )
    .await
}

async fn heartbeat(hbs: &Api<Heartbeat>, name: &str, channels: &[&str]) {
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": name},
        "spec": {"interval": "1h", "alerts": {"channels": channels}}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
}

fn slack_spec(secret: &str) -> Value {
    json!({"slack": {"webhookSecretRef": {"name": secret, "key": "url"}}})
}

/// A Secret channels may read: labelled `hartslag.dev/channel-secret`.
fn channel_secret(name: &str, url: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"hartslag.dev/channel-secret": "slack"}},
        "stringData": {"url": url}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_slack_channel_reads_its_labelled_secret_and_unknown_names_are_channel_not_found() {
    let mut s = Scenario::start("e2e-chan").await;
    let (client, ns) = (s.client.clone(), s.ns.clone());
    let channels: Api<AlertChannel> = Api::namespaced(client.clone(), &ns);
    let (hook, received) = webhook_sink("/services/T000/B000/e2e").await;

    // A channel whose Secret does not exist yet: not Ready, saying which Secret, and an Event.
    let ch: AlertChannel = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "team-slack"}, "spec": slack_spec("slack-hook")
    }))
    .unwrap();
    channels.create(&PostParams::default(), &ch).await.unwrap();
    let message = wait_ready("team-slack", "SecretNotFound", || {
        channel_status(&channels, "team-slack")
    })
    .await;
    assert!(
        message.contains("slack-hook") && message.contains("hartslag.dev/channel-secret"),
        "{message}"
    );
    wait_for(
        "a SecretNotFound Event",
        Duration::from_secs(30),
        || async { (events_with_reason(&client, &ns, "SecretNotFound").await > 0).then_some(()) },
    )
    .await;

    // A Heartbeat naming it is Ready: the channel exists (its deliveries wait for the Secret).
    heartbeat(&s.hbs, "job", &["team-slack"]).await;
    let hbs = s.hbs.clone();
    wait_ready("job", "Armed", || hb_status(&hbs, "job")).await;

    // An unlabelled Secret is not read: still SecretNotFound.
    let unlabelled: Secret = serde_json::from_value(json!({
        "metadata": {"name": "slack-hook"}, "stringData": {"url": hook}
    }))
    .unwrap();
    s.secrets
        .create(&PostParams::default(), &unlabelled)
        .await
        .unwrap();
    // Every channel is looked at again on any channel event: once a channel created after
    // the unlabelled Secret is settled, team-slack was too, and still lacks its Secret.
    let probe: AlertChannel = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "probe"}, "spec": {"email": {"to": ["probe@example.com"]}}
    }))
    .unwrap();
    channels
        .create(&PostParams::default(), &probe)
        .await
        .unwrap();
    wait_ready("probe", "Resolved", || channel_status(&channels, "probe")).await;
    let st = channel_status(&channels, "team-slack").await.unwrap();
    assert_eq!(
        ready(&st).map(|r| r.1).as_deref(),
        Some("SecretNotFound"),
        "an unlabelled Secret was read: {st}"
    );

    // The labelled Secret without the key: the key is named.
    let secrets = s.secrets.clone();
    secrets
        .delete("slack-hook", &DeleteParams::default())
        .await
        .unwrap();
    let mut wrong_key = channel_secret("slack-hook", &hook);
    wrong_key.string_data = Some([("other".to_string(), hook.clone())].into());
    secrets
        .create(&PostParams::default(), &wrong_key)
        .await
        .unwrap();
    let message = wait_ready("team-slack", "SecretKeyNotFound", || {
        channel_status(&channels, "team-slack")
    })
    .await;
    assert!(message.contains("no key url"), "{message}");
    assert!(!message.contains(&hook), "the URL leaked: {message}");

    // The right key: Ready.
    secrets
        .delete("slack-hook", &DeleteParams::default())
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &channel_secret("slack-hook", &hook))
        .await
        .unwrap();
    wait_ready("team-slack", "Resolved", || {
        channel_status(&channels, "team-slack")
    })
    .await;
    let st = channel_status(&channels, "team-slack").await.unwrap();
    assert_eq!(st["observedGeneration"], 1, "{st}");
    assert!(!st.to_string().contains(&hook), "the URL leaked: {st}");

    // A Heartbeat through the channel goes Down: Slack's receiver gets a Block Kit message
    // that meets Slack's documented schema, and the channel shows its last delivery.
    let fast: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": "nightly"},
        "spec": {"interval": "2s", "grace": "1s", "alerts": {"channels": ["team-slack"]}}
    }))
    .unwrap();
    s.hbs.create(&PostParams::default(), &fast).await.unwrap();
    let ping = wait_for("nightly's ping URL", Duration::from_secs(30), || {
        secret_value(&secrets, "nightly-heartbeat", "ping-url")
    })
    .await;
    assert_eq!(reqwest::get(&ping).await.unwrap().status(), 200);
    let body = wait_for("a Slack message", Duration::from_secs(30), || async {
        received.lock().unwrap().first().cloned()
    })
    .await;
    hartslag::notify::schema::slack(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(body.to_string().contains("nightly"), "{body}");
    wait_for(
        "the channel's lastDeliveryAt",
        Duration::from_secs(30),
        || async {
            channel_status(&channels, "team-slack")
                .await
                .filter(|st| st["lastDeliveryAt"].is_string())
        },
    )
    .await;

    // An unknown name: ChannelNotFound naming it, an Event, and Ready once it exists.
    heartbeat(&s.hbs, "orphan", &["team-slack", "nowhere"]).await;
    let message = wait_ready("orphan", "ChannelNotFound", || hb_status(&hbs, "orphan")).await;
    assert!(message.contains("\"nowhere\""), "{message}");
    wait_for(
        "a ChannelNotFound Event",
        Duration::from_secs(30),
        || async { (events_with_reason(&client, &ns, "ChannelNotFound").await > 0).then_some(()) },
    )
    .await;
    let email: AlertChannel = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "nowhere"}, "spec": {"email": {"to": ["oncall@example.com"]}}
    }))
    .unwrap();
    channels
        .create(&PostParams::default(), &email)
        .await
        .unwrap();
    wait_ready("orphan", "Armed", || hb_status(&hbs, "orphan")).await;
    wait_ready("nowhere", "Resolved", || {
        channel_status(&channels, "nowhere")
    })
    .await;

    // Deleting a channel a Heartbeat names makes it ChannelNotFound again.
    channels
        .delete("nowhere", &DeleteParams::default())
        .await
        .unwrap();
    wait_ready("orphan", "ChannelNotFound", || hb_status(&hbs, "orphan")).await;

    // A restart with nothing changed writes no channel status. nightly goes first, so no
    // delivery can change the channel's status meanwhile: deleted while Down, it tells the
    // channel once that it is no longer monitored, and that delivery must be in the status
    // before the restart. The status shows whole seconds, so the notice may leave it as it
    // was: it is read until it holds a delivery from the deletion's second on and stays
    // the same across a status period (1 s).
    let deleted = jiff::Timestamp::now().as_second();
    s.hbs
        .delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("nightly to be gone", Duration::from_secs(30), || async {
        hbs.get_opt("nightly").await.ok()?.is_none().then_some(())
    })
    .await;
    wait_for(
        "the Slack notice that nightly is no longer monitored",
        Duration::from_secs(30),
        || async {
            let got = received.lock().unwrap().clone();
            got.iter()
                .any(|b| b.to_string().contains("NO LONGER MONITORED"))
                .then_some(())
        },
    )
    .await;
    let before = wait_for(
        "the channel's status to show that delivery and settle",
        Duration::from_secs(30),
        || async {
            let first = channel_status(&channels, "team-slack").await?;
            let since = first["lastDeliveryAt"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let second = channel_status(&channels, "team-slack").await?;
            (since.as_second() >= deleted && first == second).then_some(second)
        },
    )
    .await;
    let restarted = jiff::Timestamp::now();
    s.restart().await;
    // Give the channel watch and a few status sweeps (--status-period 1s) time to write.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent = requests(&s.install.user, restarted);
    let writes: Vec<_> = status_writes(&sent)
        .into_iter()
        .filter(|r| r.resource.contains("alertchannels"))
        .collect();
    assert!(
        writes.is_empty(),
        "a restart wrote channel status: {writes:#?}"
    );
    assert_eq!(
        channel_status(&channels, "team-slack").await.unwrap(),
        before
    );
}

/// A loopback receiver that answers every POST with 500; its URL.
async fn refusing_receiver() -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no") }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_cluster_channel_serves_heartbeats_in_two_namespaces_and_errors_show_on_the_channel() {
    let _serial = SERIAL.lock().await;
    let (client, home) = prepare("e2e-cch").await;
    let (_, other) = prepare("e2e-cch2").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&home, &[&home, &other]);
    let op = Operator::start(&install, &dir.path().join("data"), &sink.url(), free_port()).await;
    let (hook, _received) = webhook_sink("/services/T000/B000/cluster").await;
    let cluster: Api<ClusterAlertChannel> = Api::all(client.clone());
    let name = format!("platform-{home}");

    // Its Secret lives in the operator's namespace.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &home);
    secrets
        .create(
            &PostParams::default(),
            &channel_secret("platform-slack", &hook),
        )
        .await
        .unwrap();
    let ch: ClusterAlertChannel = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "ClusterAlertChannel",
        "metadata": {"name": name}, "spec": slack_spec("platform-slack")
    }))
    .unwrap();
    cluster.create(&PostParams::default(), &ch).await.unwrap();
    wait_ready(&name, "Resolved", || {
        cluster_channel_status(&cluster, &name)
    })
    .await;

    let home_hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &home);
    let other_hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &other);
    heartbeat(&home_hbs, "a", &[&name]).await;
    heartbeat(&other_hbs, "b", &[&name]).await;
    // An Application's channels are the defaults of its Heartbeats.
    let apps: Api<Application> = Api::namespaced(client.clone(), &other);
    let app: Application = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "team"}, "spec": {"alerts": {"channels": [name]}}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let inherits: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": "c"},
        "spec": {"interval": "1h", "applicationRef": {"name": "team"}}
    }))
    .unwrap();
    other_hbs
        .create(&PostParams::default(), &inherits)
        .await
        .unwrap();
    wait_ready("a", "Armed", || hb_status(&home_hbs, "a")).await;
    wait_ready("b", "Armed", || hb_status(&other_hbs, "b")).await;
    wait_ready("c", "Armed", || hb_status(&other_hbs, "c")).await;

    // A channel whose target refuses shows the last error, and when it happened.
    let refusing = refusing_receiver().await;
    let broken: AlertChannel = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "AlertChannel",
        "metadata": {"name": "broken"}, "spec": {"webhook": {"url": refusing}}
    }))
    .unwrap();
    let others: Api<AlertChannel> = Api::namespaced(client.clone(), &other);
    others
        .create(&PostParams::default(), &broken)
        .await
        .unwrap();
    let failing: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": "d"},
        "spec": {"interval": "2s", "grace": "1s", "alerts": {"channels": ["broken"]}}
    }))
    .unwrap();
    other_hbs
        .create(&PostParams::default(), &failing)
        .await
        .unwrap();
    let other_secrets: Api<Secret> = Api::namespaced(client.clone(), &other);
    let ping = wait_for("d's ping URL", Duration::from_secs(30), || {
        secret_value(&other_secrets, "d-heartbeat", "ping-url")
    })
    .await;
    assert_eq!(reqwest::get(&ping).await.unwrap().status(), 200);
    let st = wait_for("broken's lastError", Duration::from_secs(30), || async {
        channel_status(&others, "broken")
            .await
            .filter(|st| st["lastError"].is_string() && st["lastErrorAt"].is_string())
    })
    .await;
    assert!(st["lastDeliveryAt"].is_null(), "nothing was accepted: {st}");
    assert_eq!(ready(&st).map(|r| r.1).as_deref(), Some("Resolved"), "{st}");

    // Gone: both Heartbeats say so.
    cluster
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_ready("a", "ChannelNotFound", || hb_status(&home_hbs, "a")).await;
    wait_ready("b", "ChannelNotFound", || hb_status(&other_hbs, "b")).await;
    let message = wait_ready("c", "ChannelNotFound", || hb_status(&other_hbs, "c")).await;
    assert!(message.contains(&name), "{message}");
    drop(op);
    teardown(&home);
    teardown(&other);
}
