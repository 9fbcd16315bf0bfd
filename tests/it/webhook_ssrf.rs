//! Alert webhooks cannot be turned against the server's own network: internal addresses
//! are refused (as written in the URL when the manifests load, as a name resolves at each
//! delivery), redirects are not followed, and a refused delivery fails for good instead of
//! being retried forever.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{
    ChildServer, heartbeat_manifest, metric, ping_url, start_fails, wait_outbox_empty,
};

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

/// A host name other than `localhost` that resolves to loopback addresses only (the
/// machine's own name, on most systems): refused at delivery, where names are checked.
fn loopback_name() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || name == "localhost" || name.ends_with(".localhost") {
        return None;
    }
    let addrs: Vec<std::net::SocketAddr> = (name.as_str(), 0).to_socket_addrs().ok()?.collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())).then_some(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_internal_addresses_are_refused_when_loaded_and_names_when_delivered() {
    // An address written in the URL (in any spelling the client reads: 2130706433 and
    // ::ffff:127.0.0.2 are loopback) or `localhost` cannot change: the manifests are
    // refused at start, naming the file, the object and the flags.
    for url in [
        "http://localhost:8080/hook",
        "http://2130706433:8080/hook",
        "http://[::ffff:127.0.0.2]:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let text = heartbeat_manifest("job", "1h", "5m", &hook(url));
        std::fs::write(manifests.join("hb.yaml"), text).unwrap();
        let out = start_fails(&manifests, &dir.path().join("data"), &[]).await;
        let file = manifests.join("hb.yaml").display().to_string();
        for needed in [
            file.as_str(),
            "Heartbeat job: spec.alerts.webhook: host",
            "--webhook-allowed-cidrs",
            "--allow-private-webhooks",
        ] {
            assert!(out.contains(needed), "{url}: {needed:?} not in\n{out}");
        }
        assert!(
            out.contains("is loopback") || out.contains("is link-local"),
            "{url}: {out}"
        );
    }

    // A name is checked where it resolves, at each delivery, and fails for good there.
    let outcome = |o: &str| format!("hartslag_alert_deliveries_total{{outcome=\"{o}\"}}");
    match loopback_name() {
        Some(name) => {
            let (port, hits) = receiver().await;
            let monitors = [("named", format!("http://{name}:{port}/hook"))];
            let (_dir, server) = fail_all(&monitors, &[]).await;
            assert!(hits.lock().unwrap().is_empty());
            assert_eq!(metric(&server.base, &outcome("failed")).await, Some(1.0));
            let log = server.log_text();
            assert!(log.contains("is loopback"), "{log}");
        }
        None => eprintln!(
            "skipped the check at delivery: this machine has no host name that resolves to loopback only"
        ),
    }

    let (port, hits) = receiver().await;
    let allowed = format!("http://127.0.0.1:{port}/hook");
    let monitors = [
        ("allowed", allowed.clone()),
        ("redirected", format!("http://127.0.0.1:{port}/redirect")),
    ];
    // The one allowed range is reachable, and only by its own URL: no redirect is followed.
    let (_dir, server) = fail_all(&monitors, &["--webhook-allowed-cidrs", "127.0.0.1/32"]).await;
    let got = hits.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("\"name\":\"allowed\""), "{}", got[0]);
    assert_eq!(metric(&server.base, &outcome("delivered")).await, Some(1.0));
    assert_eq!(metric(&server.base, &outcome("failed")).await, Some(1.0));
    let log = server.log_text();
    assert!(log.contains("redirects are not followed"), "{log}");
    // Outside the allowed range, even loopback written as such is refused at load.
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let other = heartbeat_manifest(
        "other",
        "1h",
        "5m",
        &hook(&format!("http://127.0.0.2:{port}/hook")),
    );
    std::fs::write(manifests.join("hb.yaml"), other).unwrap();
    let args = ["--webhook-allowed-cidrs", "127.0.0.1/32"];
    let out = start_fails(&manifests, &dir.path().join("data"), &args).await;
    assert!(out.contains("host 127.0.0.2 is loopback"), "{out}");
}
