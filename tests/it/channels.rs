//! Alert channels end to end, through a real `hartslag standalone` process: a Heartbeat
//! naming channels (AlertChannel documents with `...File` secrets) alerts a real
//! Alertmanager (Debian's) and local receivers that validate each provider's documented
//! schema (PagerDuty Events v2, Slack Block Kit, Teams Adaptive Card 1.4); a channel that
//! never answers delays no other; notifyAfter, failureThreshold and maintenance windows;
//! the alerts of many monitors reach Alertmanager in one POST per re-send.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hartslag::notify::schema;
use serde_json::Value;

use crate::alerting::Alertmanager;
use crate::helpers::{
    ChildServer, heartbeat_manifest, metric, ping_url, wait_for, wait_outbox_empty,
};

/// What a receiver was sent: each body with its request headers.
pub(crate) type Received = Arc<Mutex<Vec<(Value, axum::http::HeaderMap)>>>;

/// A loopback receiver at `/hook` that checks each body with `check` (answering 400 with
/// the reason when it fails, as the provider would) and keeps what it accepted.
pub(crate) async fn receiver(
    check: fn(&Value) -> Result<(), schema::SchemaError>,
) -> (String, Received) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    receiver_on(l, check)
}

/// [`receiver`] on a listener the test bound.
pub(crate) fn receiver_on(
    l: tokio::net::TcpListener,
    check: fn(&Value) -> Result<(), schema::SchemaError>,
) -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(v): axum::Json<Value>| {
                let sink = sink.clone();
                async move {
                    if let Err(e) = check(&v) {
                        return (axum::http::StatusCode::BAD_REQUEST, e.to_string());
                    }
                    sink.lock().unwrap().push((v, headers));
                    (axum::http::StatusCode::ACCEPTED, "ok".to_string())
                }
            },
        ),
    );
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, received)
}

pub(crate) fn any_json(_: &Value) -> Result<(), schema::SchemaError> {
    Ok(())
}

/// A loopback listener that accepts every connection and never answers on any.
async fn black_hole() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/never-answers", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = l.accept().await {
            held.push(socket);
        }
    });
    url
}

pub(crate) fn channel(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: hartslag.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// A manifests directory with `docs` and secret `files`, and a data directory beside it.
pub(crate) fn setup(dir: &Path, docs: &[String], files: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).unwrap();
    for (name, text) in files {
        std::fs::write(manifests.join(name), text).unwrap();
    }
    (manifests, dir.join("data"))
}

pub(crate) async fn signal(data: &Path, name: &str, what: &str) {
    let url = ping_url(data, name).replace("/ping", &format!("/{what}"));
    let res = reqwest::Client::new().post(url).send().await.unwrap();
    assert!(res.status().is_success(), "{what}: {}", res.status());
}

/// Waits (up to `within`) until `r` has received exactly `n` requests.
async fn received(r: &Received, n: usize, what: &str, within: Duration) {
    wait_for(what, within, || async { (count(r) == n).then_some(()) }).await;
}

pub(crate) fn count(r: &Received) -> usize {
    r.lock().unwrap().len()
}

pub(crate) fn bodies(r: &Received) -> Vec<Value> {
    r.lock().unwrap().iter().map(|(v, _)| v.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_heartbeat_fires_in_a_real_alertmanager_stays_active_and_resolves() {
    let am = Alertmanager::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "ClusterAlertChannel",
            "alertmanager",
            &format!(
                "  alertmanager:\n    url: {}\n    resendInterval: 2s\n  severity: warning\n",
                am.base
            ),
        ),
        heartbeat_manifest(
            "nightly",
            "1h",
            "5m",
            "  alerts:\n    channels: [alertmanager]\n  runbookURL: https://runbooks.example.com/nightly\n",
        ),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let server = ChildServer::start(&manifests, &data, &["--min-interval", "1s"]).await;
    signal(&data, "nightly", "ping").await;
    let failed = Instant::now();
    signal(&data, "nightly", "fail").await;
    let alerts = wait_for(
        "HeartbeatDown in Alertmanager",
        Duration::from_secs(15),
        || async {
            let a = am.active("HeartbeatDown").await;
            (!a.is_empty()).then_some(a)
        },
    )
    .await;
    println!(
        "HeartbeatDown active in Alertmanager {:?} after the failure",
        failed.elapsed()
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let labels = &alerts[0]["labels"];
    for (k, v) in [
        ("alertname", "HeartbeatDown"),
        ("namespace", "default"),
        ("heartbeat", "nightly"),
        ("severity", "warning"),
    ] {
        assert_eq!(labels[k], v, "{labels}");
    }
    assert_eq!(
        alerts[0]["annotations"]["runbook_url"],
        "https://runbooks.example.com/nightly"
    );
    assert!(
        alerts[0]["generatorURL"]
            .as_str()
            .unwrap()
            .ends_with("/ui/monitors/default/nightly"),
        "{}",
        alerts[0]["generatorURL"]
    );
    // endsAt lies four re-sends (8 s) ahead: only re-sends keep the alert active for 12 s,
    // and each pushes its end on.
    let first_end: jiff::Timestamp = alerts[0]["endsAt"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let alerts = am.active("HeartbeatDown").await;
    assert_eq!(alerts.len(), 1, "re-sends keep it active: {alerts:?}");
    let end: jiff::Timestamp = alerts[0]["endsAt"].as_str().unwrap().parse().unwrap();
    assert!(end > first_end, "{end} after {first_end}");
    // Recovery resolves it.
    signal(&data, "nightly", "ping").await;
    wait_for(
        "HeartbeatDown resolved",
        Duration::from_secs(15),
        || async { am.active("HeartbeatDown").await.is_empty().then_some(()) },
    )
    .await;
    // No re-send after the recovery brings it back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(am.active("HeartbeatDown").await.is_empty());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_slack_teams_and_a_templated_webhook_get_valid_notices() {
    let (pd, pd_got) = receiver(schema::pagerduty).await;
    let (slack, slack_got) = receiver(schema::slack).await;
    let (teams, teams_got) = receiver(schema::teams).await;
    let (hook, hook_got) = receiver(any_json).await;
    let dir = tempfile::tempdir().unwrap();
    let key = "0123456789abcdef0123456789abcdef";
    let docs = [
        channel(
            "AlertChannel",
            "pager",
            &format!("  pagerduty:\n    routingKeyFile: secrets/pd\n    url: {pd}\n"),
        ),
        channel(
            "AlertChannel",
            "chat",
            "  slack:\n    webhookFile: secrets/slack\n",
        ),
        channel(
            "ClusterAlertChannel",
            "teams",
            "  teams:\n    webhookFile: secrets/teams\n",
        ),
        channel(
            "AlertChannel",
            "hook",
            "  webhook:\n    urlFile: secrets/hook\n    headersFile: secrets/headers\n    template: '{\"monitor\": {{ name }}, \"state\": {{ state }}, \"incident\": {{ incident }}, \"exit\": {{ exit_code }}}'\n",
        ),
        heartbeat_manifest(
            "backup",
            "1h",
            "5m",
            "  alerts:\n    channels: [pager, chat, teams, hook]\n",
        ),
    ];
    let files = [
        ("secrets/pd", format!("{key}\n")),
        ("secrets/slack", format!("{slack}\n")),
        ("secrets/teams", teams.clone()),
        ("secrets/hook", hook.clone()),
        (
            "secrets/headers",
            "Authorization: Bearer t0ken\nX-Team: platform\n".to_string(),
        ),
    ];
    std::fs::create_dir_all(dir.path().join("manifests/secrets")).unwrap();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let (manifests, data) = setup(dir.path(), &docs, &files);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    signal(&data, "backup", "ping").await;
    signal(&data, "backup", "fail?exit_code=3").await;
    for (what, got) in [
        ("PagerDuty", &pd_got),
        ("Slack", &slack_got),
        ("Teams", &teams_got),
        ("webhook", &hook_got),
    ] {
        wait_for(what, Duration::from_secs(15), || async {
            (count(got) >= 1).then_some(())
        })
        .await;
    }
    signal(&data, "backup", "ping").await;
    wait_for("PagerDuty resolve", Duration::from_secs(15), || async {
        bodies(&pd_got)
            .iter()
            .any(|e| e["event_action"] == "resolve")
            .then_some(())
    })
    .await;
    wait_outbox_empty(&server.base).await;
    let pd = bodies(&pd_got);
    let trigger = pd.iter().find(|e| e["event_action"] == "trigger").unwrap();
    assert_eq!(trigger["routing_key"], key);
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["custom_details"]["exit_code"], 3);
    let resolve = pd
        .iter()
        .find(|e| e["event_action"] == "resolve" && e["dedup_key"] == trigger["dedup_key"]);
    assert!(
        resolve.is_some(),
        "the recovery resolves the trigger's dedup_key: {pd:?}"
    );
    assert_eq!(
        count(&slack_got),
        2,
        "Down and recovery: {:?}",
        bodies(&slack_got)
    );
    assert_eq!(count(&teams_got), 2, "{:?}", bodies(&teams_got));
    let card = &bodies(&teams_got)[0]["attachments"][0]["content"];
    assert_eq!(card["version"], "1.4");
    let hooks = hook_got.lock().unwrap().clone();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0].0["monitor"], "backup");
    assert_eq!(hooks[0].0["state"], "Down");
    assert_eq!(hooks[1].0["state"], "Up");
    assert_eq!(hooks[0].0["incident"], hooks[1].0["incident"]);
    assert_eq!(hooks[0].0["exit"], 3, "the failing run's exit code");
    assert_eq!(hooks[1].0["exit"], Value::Null);
    let slack_text = bodies(&slack_got)[0].to_string();
    assert!(slack_text.contains("Exit code"), "{slack_text}");
    assert_eq!(hooks[0].1["authorization"], "Bearer t0ken");
    assert_eq!(hooks[0].1["x-team"], "platform");
    // No secret reaches the log.
    let log = server.log_text();
    for secret in [key, "t0ken", slack.as_str()] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_never_answers_delays_no_other_channel() {
    let hole = black_hole().await;
    let (slack, slack_got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "a-hole",
            &format!("  webhook:\n    url: {hole}\n"),
        ),
        channel(
            "AlertChannel",
            "z-chat",
            "  slack:\n    webhookFile: slack-url\n",
        ),
        heartbeat_manifest(
            "job",
            "1h",
            "5m",
            "  alerts:\n    channels: [a-hole, z-chat]\n",
        ),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[("slack-url", &slack)]);
    let _server = ChildServer::start(&manifests, &data, &[]).await;
    signal(&data, "job", "ping").await;
    let failed = Instant::now();
    signal(&data, "job", "fail").await;
    received(&slack_got, 1, "the Slack notice", Duration::from_secs(5)).await;
    let took = failed.elapsed();
    println!("Slack notice {took:?} after the failure, beside a channel that never answers");
    // The black hole's attempt times out only after 10 s.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_after_holds_a_down_and_drops_it_when_it_recovers_first() {
    let (slack, got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "chat",
            "  slack:\n    webhookFile: slack-url\n  notifyAfter: 4s\n",
        ),
        heartbeat_manifest("quick", "1h", "5m", "  alerts:\n    channels: [chat]\n"),
        heartbeat_manifest("slow", "1h", "5m", "  alerts:\n    channels: [chat]\n"),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[("slack-url", &slack)]);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    for hb in ["quick", "slow"] {
        signal(&data, hb, "ping").await;
    }
    let failed = Instant::now();
    signal(&data, "quick", "fail").await;
    signal(&data, "slow", "fail").await;
    // "quick" recovers within its notifyAfter: neither its Down nor its recovery is sent.
    signal(&data, "quick", "ping").await;
    received(&got, 1, "the held Down", Duration::from_secs(15)).await;
    assert!(
        failed.elapsed() >= Duration::from_secs(4),
        "{:?}",
        failed.elapsed()
    );
    let sent = bodies(&got);
    assert!(sent[0].to_string().contains("slow"), "{sent:?}");
    wait_outbox_empty(&server.base).await;
    assert_eq!(count(&got), 1, "{:?}", bodies(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_threshold_and_maintenance_decide_what_is_notified() {
    let (slack, got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "chat",
            "  slack:\n    webhookFile: slack-url\n",
        ),
        heartbeat_manifest(
            "flaky",
            "1h",
            "5m",
            "  failureThreshold: 2\n  alerts:\n    channels: [chat]\n",
        ),
        // A window that is always open: every minute, for an hour.
        heartbeat_manifest(
            "maintained",
            "1h",
            "5m",
            "  maintenance:\n  - schedule: '* * * * *'\n    duration: 1h\n  alerts:\n    channels: [chat]\n",
        ),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[("slack-url", &slack)]);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    for hb in ["flaky", "maintained"] {
        signal(&data, hb, "ping").await;
    }
    // One failure is below the threshold, and a Down inside maintenance is held.
    signal(&data, "flaky", "fail").await;
    signal(&data, "maintained", "fail").await;
    wait_for("the held Down", Duration::from_secs(10), || async {
        metric(&server.base, "hartslag_alert_deliveries_pending")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(count(&got), 0, "{:?}", bodies(&got));
    // It recovers inside the window: nobody is told of either.
    signal(&data, "maintained", "ping").await;
    wait_outbox_empty(&server.base).await;
    assert_eq!(count(&got), 0, "{:?}", bodies(&got));
    // The second failure in a row is Down, and notified.
    signal(&data, "flaky", "fail").await;
    received(&got, 1, "the Down notice", Duration::from_secs(15)).await;
    assert!(bodies(&got)[0].to_string().contains("flaky"));
    wait_outbox_empty(&server.base).await;
    assert_eq!(count(&got), 1, "{:?}", bodies(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_late_warns_where_asked_and_says_when_it_is_over() {
    let (warned, warned_got) = receiver(schema::slack).await;
    let (quiet, quiet_got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "warned",
            "  slack:\n    webhookFile: warned-url\n  notifyLate: true\n",
        ),
        channel(
            "AlertChannel",
            "quiet",
            "  slack:\n    webhookFile: quiet-url\n",
        ),
        heartbeat_manifest(
            "tight",
            "2s",
            "1m",
            "  alerts:\n    channels: [warned, quiet]\n",
        ),
    ];
    let files = [
        ("warned-url", warned.as_str()),
        ("quiet-url", quiet.as_str()),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &files);
    let server = ChildServer::start(&manifests, &data, &["--min-interval", "1s"]).await;
    signal(&data, "tight", "ping").await;
    received(&warned_got, 1, "the Late warning", Duration::from_secs(15)).await;
    assert!(
        bodies(&warned_got)[0].to_string().contains("LATE"),
        "{:?}",
        bodies(&warned_got)
    );
    signal(&data, "tight", "ping").await;
    received(
        &warned_got,
        2,
        "the end of the warning",
        Duration::from_secs(15),
    )
    .await;
    assert!(bodies(&warned_got)[1].to_string().contains("RECOVERED"));
    wait_outbox_empty(&server.base).await;
    assert_eq!(count(&quiet_got), 0, "{:?}", bodies(&quiet_got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_every_notifies_again_while_down_and_stops_at_recovery() {
    let (slack, got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "chat",
            "  slack:\n    webhookFile: slack-url\n  repeatEvery: 2s\n",
        ),
        heartbeat_manifest("stuck", "1h", "5m", "  alerts:\n    channels: [chat]\n"),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[("slack-url", &slack)]);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    signal(&data, "stuck", "ping").await;
    signal(&data, "stuck", "fail").await;
    wait_for("two repetitions", Duration::from_secs(20), || async {
        (count(&got) >= 3).then_some(())
    })
    .await;
    signal(&data, "stuck", "ping").await;
    wait_for("the recovery", Duration::from_secs(15), || async {
        bodies(&got)
            .last()
            .is_some_and(|b| b.to_string().contains("RECOVERED"))
            .then_some(())
    })
    .await;
    wait_outbox_empty(&server.base).await;
    let sent = bodies(&got);
    let downs = sent
        .iter()
        .filter(|b| b.to_string().contains("DOWN"))
        .count();
    assert_eq!(downs + 1, sent.len(), "Downs, then one recovery: {sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_channel_sends_through_the_configured_smtp_server() {
    let dir = tempfile::tempdir().unwrap();
    let sink = crate::helpers::SmtpSink::start(dir.path()).await;
    let docs = [
        channel(
            "ClusterAlertChannel",
            "ops-mail",
            "  email:\n    to: [\"ops@example.com\"]\n",
        ),
        heartbeat_manifest(
            "mailer",
            "1h",
            "5m",
            "  alerts:\n    channels: [ops-mail]\n",
        ),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let smtp = sink.url();
    let _server = ChildServer::start(&manifests, &data, &["--smtp-url", &smtp]).await;
    signal(&data, "mailer", "ping").await;
    signal(&data, "mailer", "fail").await;
    let mail = sink
        .wait_for_mail("[Hartslag] DOWN: mailer", Duration::from_secs(15))
        .await;
    assert!(mail[0].contains("ops@example.com"), "{}", mail[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_waiting_for_its_channel_is_delivered_once_after_kill_9() {
    // The Slack receiver is not listening yet: deliveries fail and are retried.
    let port = crate::helpers::free_port();
    let slack = format!("http://127.0.0.1:{port}/hook");
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "chat",
            "  slack:\n    webhookFile: slack-url\n",
        ),
        heartbeat_manifest("durable", "1h", "5m", "  alerts:\n    channels: [chat]\n"),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[("slack-url", &slack)]);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    signal(&data, "durable", "ping").await;
    signal(&data, "durable", "fail").await;
    wait_for("a failed attempt", Duration::from_secs(15), || async {
        crate::helpers::metric(
            &server.base,
            "hartslag_alert_deliveries_total{outcome=\"retried\"}",
        )
        .await
        .filter(|v| *v >= 1.0)
    })
    .await;
    server.kill9();
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (_, got) = receiver_on(l, schema::slack);
    // After the restart the channel is read from the manifests again and the notice goes.
    let server = ChildServer::start(&manifests, &data, &[]).await;
    received(&got, 1, "the Down notice", Duration::from_secs(30)).await;
    wait_outbox_empty(&server.base).await;
    assert_eq!(count(&got), 1, "{:?}", bodies(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_maintenance_window_holds_its_notices_only() {
    let (resting, resting_got) = receiver(schema::slack).await;
    let (awake, awake_got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        // A window that is always open: every minute, for an hour.
        channel(
            "AlertChannel",
            "resting",
            "  slack:\n    webhookFile: resting-url\n  maintenance:\n  - schedule: '* * * * *'\n    duration: 1h\n",
        ),
        channel(
            "AlertChannel",
            "awake",
            "  slack:\n    webhookFile: awake-url\n",
        ),
        heartbeat_manifest(
            "job",
            "1h",
            "5m",
            "  alerts:\n    channels: [resting, awake]\n",
        ),
    ];
    let files = [
        ("resting-url", resting.as_str()),
        ("awake-url", awake.as_str()),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &files);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    signal(&data, "job", "ping").await;
    signal(&data, "job", "fail").await;
    received(
        &awake_got,
        1,
        "the Down through the other channel",
        Duration::from_secs(15),
    )
    .await;
    signal(&data, "job", "ping").await;
    received(
        &awake_got,
        2,
        "the recovery through the other channel",
        Duration::from_secs(15),
    )
    .await;
    // Inside its window the resting channel's Down and recovery are dropped as a pair.
    wait_outbox_empty(&server.base).await;
    assert_eq!(count(&resting_got), 0, "{:?}", bodies(&resting_got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_asks_to_wait_is_not_tried_again_sooner() {
    // The first request gets 429 with `Retry-After: 3`, later ones 200: the retry comes
    // no sooner than three seconds after the refusal.
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = attempts.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(Instant::now());
                if seen.len() == 1 {
                    (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "3")],
                        "slow down",
                    )
                } else {
                    (axum::http::StatusCode::OK, [("retry-after", "0")], "ok")
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slack = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "chat",
            "  slack:\n    webhookFile: slack-url\n",
        ),
        heartbeat_manifest("throttled", "1h", "5m", "  alerts:\n    channels: [chat]\n"),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[("slack-url", &slack)]);
    // The first retry's backoff is about two seconds (`--alert-retry-base`, 2s).
    let server = ChildServer::start(&manifests, &data, &[]).await;
    signal(&data, "throttled", "ping").await;
    signal(&data, "throttled", "fail").await;
    let seen = attempts.clone();
    wait_for("the retried notice", Duration::from_secs(20), || {
        let n = seen.lock().unwrap().len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    wait_outbox_empty(&server.base).await;
    let at = attempts.lock().unwrap().clone();
    assert_eq!(at.len(), 2, "refused once, delivered once");
    let waited = at[1].duration_since(at[0]);
    assert!(
        waited >= Duration::from_millis(2900),
        "retried after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_hears_a_late_warning_again_while_it_lasts_so_it_does_not_expire() {
    // Alertmanager resolves an alert that is not sent again before its endsAt: a Late
    // warning sent once showed resolved after four re-send intervals though the monitor
    // was still Late.
    let posts: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = posts.clone();
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                if let Err(e) = schema::alertmanager(&v) {
                    return (axum::http::StatusCode::BAD_REQUEST, e.to_string());
                }
                sink.lock().unwrap().push(v);
                (axum::http::StatusCode::OK, String::new())
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let am = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "am",
            &format!(
                "  alertmanager:\n    url: {am}\n    resendInterval: 1s\n  notifyLate: true\n"
            ),
        ),
        heartbeat_manifest("slowpoke", "2s", "1h", "  alerts:\n    channels: [am]\n"),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let server = ChildServer::start(&manifests, &data, &["--min-interval", "1s"]).await;
    signal(&data, "slowpoke", "ping").await;
    let late_posts = |posts: &Arc<Mutex<Vec<Value>>>| {
        posts
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b[0]["labels"]["alertname"] == "HeartbeatLate")
            .cloned()
            .collect::<Vec<Value>>()
    };
    let seen = posts.clone();
    wait_for(
        "HeartbeatLate sent three times",
        Duration::from_secs(20),
        || {
            let n = late_posts(&seen).len();
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    let late = late_posts(&posts);
    for b in &late {
        let ends: jiff::Timestamp = b[0]["endsAt"].as_str().unwrap().parse().unwrap();
        assert!(
            ends > jiff::Timestamp::now(),
            "each re-send keeps it active: {b}"
        );
    }
    // The ping ends the Late spell: the warning resolves.
    signal(&data, "slowpoke", "ping").await;
    let seen = posts.clone();
    let resolved = wait_for("HeartbeatLate resolved", Duration::from_secs(20), || {
        let bodies = seen.lock().unwrap().clone();
        async move {
            bodies.into_iter().find(|b| {
                b.as_array().unwrap().iter().any(|a| {
                    a["labels"]["alertname"] == "HeartbeatLate"
                        && a["endsAt"]
                            .as_str()
                            .unwrap()
                            .parse::<jiff::Timestamp>()
                            .unwrap()
                            <= jiff::Timestamp::now()
                })
            })
        }
    })
    .await;
    assert!(resolved.is_array());
    drop(server);
}

/// What a stand-in Alertmanager was posted: each request's alerts, and whether it was
/// accepted.
type Posts = Arc<Mutex<Vec<(Vec<Value>, bool)>>>;

/// A stand-in Alertmanager at its base URL that keeps each `POST /api/v2/alerts` as the
/// list of alerts it carried. It holds the first request until `release` is set (at most
/// 20 s) and refuses it and the second with 503, as an Alertmanager that is down; it
/// accepts every later one.
async fn counting_alertmanager(release: Arc<std::sync::atomic::AtomicBool>) -> (String, Posts) {
    let posts: Posts = Arc::default();
    let sink = posts.clone();
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let (sink, release) = (sink.clone(), release.clone());
            async move {
                let alerts = v.as_array().cloned().unwrap_or_default();
                let n = sink.lock().unwrap().len();
                if n == 0 {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !release.load(std::sync::atomic::Ordering::SeqCst)
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let accept = n >= 2;
                sink.lock().unwrap().push((alerts, accept));
                match accept {
                    true => axum::http::StatusCode::OK,
                    false => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (base, posts)
}

/// The Heartbeats a list of alerts is about, sorted.
fn heartbeats_of(alerts: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = alerts
        .iter()
        .filter_map(|a| a["labels"]["heartbeat"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_gets_the_alerts_of_many_monitors_in_one_post_per_re_send() {
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (base, posts) = counting_alertmanager(release.clone()).await;
    let names: Vec<String> = (0..20).map(|i| format!("job-{i:02}")).collect();
    let mut docs = vec![channel(
        "ClusterAlertChannel",
        "am",
        &format!("  alertmanager:\n    url: {base}\n    resendInterval: 2s\n"),
    )];
    docs.extend(
        names
            .iter()
            .map(|n| heartbeat_manifest(n, "1h", "5m", "  alerts:\n    channels: [am]\n")),
    );
    let dir = tempfile::tempdir().unwrap();
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let server = ChildServer::start(&manifests, &data, &["--alert-retry-base", "1s"]).await;
    // The first Down goes (alone, or nearly) and is held; the others are raised meanwhile.
    for name in &names {
        signal(&data, name, "ping").await;
        signal(&data, name, "fail").await;
    }
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    let lists = || posts.lock().unwrap().clone();
    wait_for(
        "the two refused requests",
        Duration::from_secs(20),
        || async { (lists().len() >= 2).then_some(()) },
    )
    .await;
    let refused = lists();
    // The Downs that waited for the first request went in one POST, refused as a whole;
    // each of them is retried, at one time: again in one POST, accepted.
    let first = heartbeats_of(&refused[0].0);
    let waited = heartbeats_of(&refused[1].0);
    let mut both = [first.clone(), waited.clone()].concat();
    both.sort();
    assert_eq!(
        both, names,
        "the first request, then one for the others: {refused:?}"
    );
    assert!(!waited.is_empty(), "{refused:?}");
    wait_for(
        "the retried 19 in one POST",
        Duration::from_secs(20),
        || async {
            lists()
                .iter()
                .skip(2)
                .any(|(alerts, ok)| {
                    let got = heartbeats_of(alerts);
                    *ok && waited.iter().all(|n| got.contains(n))
                })
                .then_some(())
        },
    )
    .await;
    // The re-sends share one time: a POST with every monitor's alert, and so each
    // re-send interval from then on.
    let full = wait_for("a POST with all 20", Duration::from_secs(20), || async {
        lists()
            .iter()
            .position(|(alerts, ok)| *ok && heartbeats_of(alerts) == names)
    })
    .await;
    wait_for("two more re-sends", Duration::from_secs(15), || async {
        (lists().len() >= full + 3).then_some(())
    })
    .await;
    for (alerts, ok) in &lists()[full..full + 3] {
        assert!(ok);
        assert_eq!(
            heartbeats_of(alerts),
            names,
            "one POST per re-send interval"
        );
        assert!(
            alerts
                .iter()
                .all(|a| a["labels"]["alertname"] == "HeartbeatDown"),
            "{alerts:?}"
        );
    }
    // Each notice is still a delivery of its own: 20 retried once, none failed, none left.
    wait_outbox_empty(&server.base).await;
    let outcome = |o: &str| format!("hartslag_alert_deliveries_total{{outcome=\"{o}\"}}");
    assert_eq!(metric(&server.base, &outcome("retried")).await, Some(20.0));
    assert_eq!(metric(&server.base, &outcome("failed")).await, Some(0.0));
    // 20 notices and at least the two re-sends of all 20 after the first full POST.
    wait_for(
        "the deliveries recorded",
        Duration::from_secs(10),
        || async {
            metric(&server.base, &outcome("delivered"))
                .await
                .filter(|n| *n >= 60.0)
        },
    )
    .await;
}
