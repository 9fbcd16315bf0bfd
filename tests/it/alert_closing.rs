//! A Heartbeat that stops being watched while it is Down (removed from the manifests, or
//! paused) closes its incident wherever it is open, through a real `hartslag standalone`
//! process: PagerDuty gets the `resolve` on the trigger's `dedup_key`, a real Alertmanager
//! ends `HeartbeatDown` at once (not four re-send intervals later), and chat channels are
//! told that nobody watches the monitor any more. The closing notice is stored with the
//! removal, so it is delivered after a crash too, although the monitor is gone.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use hartslag::notify::schema;
use serde_json::Value;

use crate::alerting::Alertmanager;
use crate::channels::{Received, bodies, channel, receiver, setup, signal};
use crate::helpers::{ChildServer, heartbeat_manifest, metric, wait_for, wait_outbox_empty};

/// PagerDuty events of `action` received, by `dedup_key`.
fn pagerduty(r: &Received, action: &str) -> Vec<String> {
    bodies(r)
        .iter()
        .filter(|e| e["event_action"] == action)
        .filter_map(|e| e["dedup_key"].as_str().map(str::to_string))
        .collect()
}

/// Waits until PagerDuty was sent a `resolve` for `key`.
async fn resolved(r: &Received, key: &str) {
    wait_for(
        &format!("PagerDuty resolve of {key}"),
        Duration::from_secs(20),
        || async {
            pagerduty(r, "resolve")
                .iter()
                .any(|k| k == key)
                .then_some(())
        },
    )
    .await;
}

/// The channel documents: PagerDuty at `pd`, Alertmanager at `am` (re-sent every minute,
/// so an alert nobody ends stays active four minutes) and Slack (its URL in `slack-url`).
fn channels(pd: &str, am: &str) -> Vec<String> {
    vec![
        channel(
            "ClusterAlertChannel",
            "pager",
            &format!("  pagerduty:\n    routingKeyFile: pd-key\n    url: {pd}\n"),
        ),
        channel(
            "ClusterAlertChannel",
            "am",
            &format!("  alertmanager:\n    url: {am}\n"),
        ),
        channel(
            "ClusterAlertChannel",
            "chat",
            "  slack:\n    webhookFile: slack-url\n",
        ),
    ]
}

fn heartbeat(name: &str, extra: &str) -> String {
    heartbeat_manifest(
        name,
        "1h",
        "5m",
        &format!("  alerts:\n    channels: [pager, am, chat]\n{extra}"),
    )
}

/// Rewrites the manifests with `docs`.
fn rewrite(manifests: &Path, docs: &[String]) {
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).unwrap();
}

/// Makes `names` Down and waits until PagerDuty and Alertmanager hold their alerts.
async fn fail(data: &Path, names: &[&str], pd: &Received, am: &Alertmanager) {
    for name in names {
        signal(data, name, "ping").await;
        signal(data, name, "fail?exit_code=7").await;
    }
    wait_for("the triggers", Duration::from_secs(20), || async {
        (pagerduty(pd, "trigger").len() == names.len()).then_some(())
    })
    .await;
    wait_for("HeartbeatDown active", Duration::from_secs(20), || async {
        (am.active("HeartbeatDown").await.len() == names.len()).then_some(())
    })
    .await;
}

fn heartbeats_in(alerts: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = alerts
        .iter()
        .filter_map(|a| a["labels"]["heartbeat"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_removed_or_paused_while_down_resolves_its_incident_everywhere() {
    let am = Alertmanager::start(None).await;
    let (pd, pd_got) = receiver(schema::pagerduty).await;
    let (slack, slack_got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let mut docs = channels(&pd, &am.base);
    docs.extend([
        heartbeat("doomed", ""),
        heartbeat("resting", ""),
        heartbeat("steady", ""),
    ]);
    let files = [
        ("pd-key", "0123456789abcdef0123456789abcdef"),
        ("slack-url", slack.as_str()),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &files);
    let mut server = ChildServer::start(&manifests, &data, &[]).await;
    fail(&data, &["doomed", "resting", "steady"], &pd_got, &am).await;
    wait_outbox_empty(&server.base).await;
    // "doomed" leaves the manifests, "resting" is paused; "steady" stays Down.
    let mut docs = channels(&pd, &am.base);
    docs.extend([
        heartbeat("resting", "  paused: true\n"),
        heartbeat("steady", ""),
    ]);
    rewrite(&manifests, &docs);
    assert!(server.terminate(Duration::from_secs(20)).is_some());
    let server = ChildServer::start(&manifests, &data, &[]).await;
    for name in ["doomed", "resting"] {
        resolved(&pd_got, &format!("hartslag/default/{name}")).await;
    }
    // Alertmanager ends both at once: their endsAt was four minutes ahead.
    let active = wait_for("HeartbeatDown ended", Duration::from_secs(20), || async {
        let active = am.active("HeartbeatDown").await;
        (active.len() == 1).then_some(active)
    })
    .await;
    assert_eq!(heartbeats_in(&active), ["steady"], "{active:?}");
    wait_outbox_empty(&server.base).await;
    // Both closings are counted among the alerts raised, under their own kind (this
    // process raised nothing else).
    assert_eq!(
        metric(&server.base, "hartslag_alerts_total{kind=\"stopped\"}").await,
        Some(2.0)
    );
    assert_eq!(
        metric(&server.base, "hartslag_alerts_total{kind=\"down\"}").await,
        Some(0.0)
    );
    // People are told why, once each; the Heartbeat that stays Down is not resolved.
    let told: Vec<String> = bodies(&slack_got)
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default().to_string())
        .filter(|t| t.contains("NO LONGER MONITORED"))
        .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    let slack_all = serde_json::to_string(&bodies(&slack_got)).unwrap();
    assert!(
        slack_all.contains("the Heartbeat was removed while it was Down"),
        "{slack_all}"
    );
    assert!(
        slack_all.contains("monitoring was paused while it was Down"),
        "{slack_all}"
    );
    let resolves = pagerduty(&pd_got, "resolve");
    assert!(
        !resolves.contains(&"hartslag/default/steady".to_string()),
        "{resolves:?}"
    );
    assert_eq!(
        resolves
            .iter()
            .filter(|k| *k == "hartslag/default/doomed")
            .count(),
        1,
        "{resolves:?}"
    );
    // No re-send brings the ended alerts back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(heartbeats_in(&am.active("HeartbeatDown").await), ["steady"]);
}

/// A PagerDuty receiver that answers 503 (unavailable) while `up` is false, and otherwise
/// checks each body against the schema and keeps it.
async fn switchable() -> (String, Received, Arc<AtomicBool>) {
    let received: Received = Arc::default();
    let up = Arc::new(AtomicBool::new(true));
    let (sink, open) = (received.clone(), up.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(v): axum::Json<Value>| {
                let (sink, open) = (sink.clone(), open.clone());
                async move {
                    if !open.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, "down".to_string());
                    }
                    if let Err(e) = schema::pagerduty(&v) {
                        return (StatusCode::BAD_REQUEST, e.to_string());
                    }
                    sink.lock().unwrap().push((v, headers));
                    (StatusCode::ACCEPTED, "ok".to_string())
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, received, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolve_of_a_removed_heartbeat_is_delivered_after_a_crash() {
    // PagerDuty is unavailable while the Heartbeat is removed: its resolve fails, is
    // retried, and survives kill -9 with the monitor already gone.
    let am = Alertmanager::start(None).await;
    let (pd, pd_got, pd_up) = switchable().await;
    let (slack, _slack_got) = receiver(schema::slack).await;
    let dir = tempfile::tempdir().unwrap();
    let mut docs = channels(&pd, &am.base);
    docs.extend([heartbeat("doomed", ""), heartbeat("steady", "")]);
    let files = [
        ("pd-key", "0123456789abcdef0123456789abcdef"),
        ("slack-url", slack.as_str()),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &files);
    let mut server = ChildServer::start(&manifests, &data, &[]).await;
    fail(&data, &["doomed"], &pd_got, &am).await;
    wait_outbox_empty(&server.base).await;
    assert!(server.terminate(Duration::from_secs(20)).is_some());
    pd_up.store(false, Ordering::SeqCst);
    let mut docs = channels(&pd, &am.base);
    docs.push(heartbeat("steady", ""));
    rewrite(&manifests, &docs);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    wait_for("a failed resolve", Duration::from_secs(20), || async {
        metric(
            &server.base,
            "hartslag_alert_deliveries_total{outcome=\"retried\"}",
        )
        .await
        .filter(|v| *v >= 1.0)
    })
    .await;
    server.kill9();
    pd_up.store(true, Ordering::SeqCst);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    resolved(&pd_got, "hartslag/default/doomed").await;
    wait_outbox_empty(&server.base).await;
    assert_eq!(
        pagerduty(&pd_got, "resolve"),
        ["hartslag/default/doomed", "hartslag/default/doomed/late"],
        "one resolve of the Down's key (and of its Late warning's)"
    );
}
