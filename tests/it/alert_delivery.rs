//! Alert delivery against a real server process: a target that never answers delays no
//! one else's alerts, a flapping monitor sends one notice instead of each pair, and a
//! target gets at most its hourly cap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    ChildServer, SmtpSink, heartbeat_manifest, metric, ping_url, wait_for, wait_outbox_empty,
};

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

/// A webhook receiver that keeps every JSON body it is sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, received)
}

fn manifests(dir: &Path, heartbeats: &[String]) -> (PathBuf, PathBuf) {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("hb.yaml"), heartbeats.join("---\n")).unwrap();
    (manifests, dir.join("data"))
}

fn webhook(url: &str) -> String {
    format!("  alerts:\n    webhook: {url}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_webhook_does_not_delay_another_monitors_email() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let hole = black_hole().await;
    // Three monitors alert the black hole; their names sort before the email one's.
    let mut hbs: Vec<String> = (1..=3)
        .map(|i| heartbeat_manifest(&format!("a-hole-{i}"), "2s", "0s", &webhook(&hole)))
        .collect();
    hbs.push(heartbeat_manifest(
        "z-mail",
        "2s",
        "0s",
        "  alerts:\n    email: [\"ops@example.com\"]\n",
    ));
    let (manifests, data) = manifests(dir.path(), &hbs);
    let smtp = sink.url();
    let _server = ChildServer::start(
        &manifests,
        &data,
        &["--smtp-url", &smtp, "--min-interval", "1s"],
    )
    .await;
    let http = reqwest::Client::new();
    for name in ["a-hole-1", "a-hole-2", "a-hole-3", "z-mail"] {
        let res = http.post(ping_url(&data, name)).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    // z-mail is due two seconds after its ping (grace 0s).
    let due = Instant::now() + Duration::from_secs(2);
    let mails = sink
        .wait_for_mail("DOWN: z-mail", Duration::from_secs(30))
        .await;
    let late = Instant::now().saturating_duration_since(due);
    assert_eq!(mails.len(), 1);
    assert!(
        late < Duration::from_secs(15),
        "the email came {late:?} after its deadline, behind the black hole's timeouts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_monitor_sends_one_notice_not_each_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, received) = receiver().await;
    let (manifests, data) = manifests(
        dir.path(),
        &[heartbeat_manifest("flappy", "1h", "5m", &webhook(&hook))],
    );
    let server = ChildServer::start(
        &manifests,
        &data,
        &[
            "--alert-flapping-notices",
            "4",
            "--alert-flapping-window",
            "4s",
        ],
    )
    .await;
    let url = ping_url(&data, "flappy");
    let base = url.trim_end_matches("/ping");
    let http = reqwest::Client::new();
    // Six failures, each followed by a success: twelve state changes in a second or two.
    for _ in 0..6 {
        assert_eq!(
            http.post(format!("{base}/fail"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(http.post(&url).send().await.unwrap().status(), 200);
    }
    // The settling notice comes once the monitor has been quiet for the window.
    let r = received.clone();
    wait_for("the settling notice", Duration::from_secs(30), || {
        let done = r.lock().unwrap().iter().any(|v| {
            v["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("stable again")
        });
        async move { done.then_some(()) }
    })
    .await;
    wait_outbox_empty(&server.base).await;
    let events: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["event"].as_str().unwrap_or_default().to_string())
        .collect();
    // Notices go out one by one until the fifth is raised within the window (how many went
    // out before depends on how fast the receiver answered): at most four, alternating.
    let before = events
        .iter()
        .position(|e| e == "flapping")
        .expect("a flapping notice");
    let mut expected: Vec<&str> = ["down", "recovery"].repeat(3);
    expected.truncate(before);
    expected.extend(["flapping", "recovery"]);
    assert!(before <= 4, "{events:?}");
    assert_eq!(
        events, expected,
        "twelve changes: at most four notices, one flapping notice, then where it settled"
    );
    assert_eq!(
        metric(
            &server.base,
            "hartslag_alert_deliveries_total{outcome=\"superseded\"}"
        )
        .await,
        Some((11 - before) as f64),
        "every other notice superseded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_gets_at_most_its_hourly_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, received) = receiver().await;
    let hbs: Vec<String> = (1..=5)
        .map(|i| heartbeat_manifest(&format!("job-{i}"), "1h", "5m", &webhook(&hook)))
        .collect();
    let (manifests, data) = manifests(dir.path(), &hbs);
    let server = ChildServer::start(&manifests, &data, &["--alert-target-hourly-cap", "3"]).await;
    let http = reqwest::Client::new();
    for i in 1..=5 {
        let base = ping_url(&data, &format!("job-{i}"));
        let fail = format!("{}/fail", base.trim_end_matches("/ping"));
        assert_eq!(http.post(fail).send().await.unwrap().status(), 200);
    }
    let r = received.clone();
    wait_for("three notices", Duration::from_secs(15), || {
        let n = r.lock().unwrap().len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    // The other two wait for the hour, durably, and the server says why.
    wait_for("the cap in the log", Duration::from_secs(10), || {
        let found = server.log_text().contains("reached its hourly cap");
        async move { found.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.lock().unwrap().len(), 3);
    assert_eq!(
        metric(&server.base, "hartslag_alert_deliveries_pending").await,
        Some(2.0)
    );
}
