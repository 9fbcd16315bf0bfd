//! Alert webhooks cannot be turned against the server's own network: internal addresses
//! are refused (as written in the URL or as a name resolves), redirects are not followed,
//! and a refused delivery fails for good instead of being retried forever.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{ChildServer, heartbeat_manifest, metric, ping_url, wait_outbox_empty};

/// A receiver on every local address: `/hook` counts what it gets, `/redirect` sends the
/// client on to `/hook`.
async fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let hits: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = hits.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |body: String| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(body);
                    "ok"
                }
            }),
        )
        .route(
            "/redirect",
            axum::routing::post(|| async { axum::response::Redirect::temporary("/hook") }),
        );
    let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    (port, hits)
}

fn hook(url: &str) -> String {
    format!("  alerts:\n    webhook: {url}\n")
}

/// Starts a server on `monitors` (name, webhook URL) with `args`, fails every monitor, and
/// waits until the outbox has finished with every delivery.
async fn fail_all(monitors: &[(&str, String)], args: &[&str]) -> (tempfile::TempDir, ChildServer) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    let text: Vec<String> = monitors
        .iter()
        .map(|(name, url)| heartbeat_manifest(name, "1h", "5m", &hook(url)))
        .collect();
    std::fs::write(manifests.join("hb.yaml"), text.join("---\n")).unwrap();
    let server = ChildServer::start_exactly(&manifests, &data, args).await;
    let http = reqwest::Client::new();
    for (name, _) in monitors {
        let fail = ping_url(&data, name).replace("/ping", "/fail");
        assert_eq!(http.post(fail).send().await.unwrap().status(), 200);
    }
    tokio::time::timeout(Duration::from_secs(30), wait_outbox_empty(&server.base))
        .await
        .expect("refused deliveries were still being retried");
    (dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_internal_addresses_and_redirects_fail_for_good() {
    // Names are checked where they resolve, and other spellings of an address are read
    // the way the client connects: localhost and 2130706433 are loopback too.
    let (port, hits) = receiver().await;
    let monitors = [
        ("named", format!("http://localhost:{port}/hook")),
        ("decimal", format!("http://2130706433:{port}/hook")),
    ];
    let (_dir, server) = fail_all(&monitors, &[]).await;
    assert!(hits.lock().unwrap().is_empty());
    let outcome = |o: &str| format!("hartslag_alert_deliveries_total{{outcome=\"{o}\"}}");
    assert_eq!(metric(&server.base, &outcome("failed")).await, Some(2.0));
    assert!(
        server.log_text().contains("is loopback"),
        "{}",
        server.log_text()
    );

    let (port, hits) = receiver().await;
    let allowed = format!("http://127.0.0.1:{port}/hook");
    let monitors = [
        ("allowed", allowed.clone()),
        ("redirected", format!("http://127.0.0.1:{port}/redirect")),
        ("other-loopback", format!("http://127.0.0.2:{port}/hook")),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
        (
            "mapped-loopback",
            format!("http://[::ffff:127.0.0.2]:{port}/hook"),
        ),
    ];
    // Only the one allowed range is reachable, and it only by its own URL.
    let (_dir, server) = fail_all(&monitors, &["--webhook-allowed-cidrs", "127.0.0.1/32"]).await;
    let got = hits.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("\"name\":\"allowed\""), "{}", got[0]);
    assert_eq!(metric(&server.base, &outcome("delivered")).await, Some(1.0));
    assert_eq!(metric(&server.base, &outcome("failed")).await, Some(4.0));
    let log = server.log_text();
    assert!(log.contains("redirects are not followed"), "{log}");
    assert!(log.contains("169.254.169.254 is link-local"), "{log}");
    assert!(log.contains("127.0.0.2 is loopback"), "{log}");
}
