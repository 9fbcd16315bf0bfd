//! One tenant cannot grow without bound or crowd out the others: per-Application limits on
//! distinct event names, on the ingest rate of its token, on Heartbeats created through
//! the management API and on stats and export reads running at once, against a real
//! server process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    ChildServer, app_manifest, fill_events, fill_events_of, metric, read_token, start_after_fill,
    wait_for,
};

/// A manifests directory with a limited Application `busy` (its `spec.limits` as given)
/// and an unlimited neighbour `calm`, and a data directory beside it.
fn two_tenants(limits: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    let busy = format!("{}  limits:\n{limits}", app_manifest("busy", "UTC"));
    std::fs::write(manifests.join("busy.yaml"), busy).unwrap();
    std::fs::write(manifests.join("calm.yaml"), app_manifest("calm", "UTC")).unwrap();
    (dir, manifests, data)
}

async fn send(base: &str, token: &str, event: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/heartbeat"))
        .bearer_auth(token)
        .json(&json!({ "event": event }))
        .send()
        .await
        .unwrap();
    let (status, headers) = (res.status().as_u16(), res.headers().clone());
    (status, headers, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_event_name_past_the_limit_gets_422_and_known_names_still_count() {
    let (_dir, manifests, data) = two_tenants("    eventNames: 5\n");
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let (busy, calm) = (
        read_token(&data, "application", "busy"),
        read_token(&data, "application", "calm"),
    );
    for i in 0..5 {
        assert_eq!(send(&server.base, &busy, &format!("name-{i}")).await.0, 201);
    }
    let (status, _, body) = send(&server.base, &busy, "name-5").await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({
            "message": "The event field has too many distinct values.",
            "errors": {"event": ["The event field has too many distinct values."]}
        })
    );
    assert_eq!(send(&server.base, &busy, "name-3").await.0, 201);
    // The neighbour is not limited by it.
    for i in 0..8 {
        assert_eq!(send(&server.base, &calm, &format!("name-{i}")).await.0, 201);
    }
    let stats = crate::helpers::get_json(&format!("{}/api/v1/stats", server.base), &busy).await;
    assert_eq!(stats["total"]["count"], 6);
    assert_eq!(stats["events"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_ingest_rate_gets_429_with_retry_after_and_its_neighbour_does_not() {
    let (_dir, manifests, data) = two_tenants("    ingestRate: 2\n    ingestBurst: 10\n");
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let (busy, calm) = (
        read_token(&data, "application", "busy"),
        read_token(&data, "application", "calm"),
    );
    let mut accepted = 0u32;
    let mut refused = None;
    // Until the bucket runs dry; on a loaded machine each durable request takes longer, and
    // the rate refills more meanwhile, so the count is checked against the time it took.
    let started = std::time::Instant::now();
    for _ in 0..500 {
        let (status, headers, body) = send(&server.base, &busy, "burst").await;
        match status {
            201 => accepted += 1,
            429 => {
                refused = Some((headers, body));
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // The burst, and at most what the rate (2/s) refilled meanwhile.
    let refill = 2.0 * started.elapsed().as_secs_f64();
    assert!(
        accepted >= 10 && f64::from(accepted) <= 10.0 + refill + 1.0,
        "{accepted} accepted with {refill:.1} refilled"
    );
    let (headers, body) = refused.expect("no request was refused");
    assert_eq!(body, json!({"error": "Too Many Attempts."}));
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry), "Retry-After {retry}");
    assert_eq!(headers["x-ratelimit-limit"], "2");
    // The neighbour sends as much as it likes meanwhile.
    for _ in 0..30 {
        assert_eq!(send(&server.base, &calm, "steady").await.0, 201);
    }
    // After the wait the busy one is served again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(send(&server.base, &busy, "later").await.0, 201);
    let stats = crate::helpers::get_json(&format!("{}/api/v1/stats", server.base), &busy).await;
    assert_eq!(stats["total"]["count"], accepted + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_caps_heartbeats_even_without_spec_limits() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), app_manifest("open", "UTC")).unwrap();
    let server = ChildServer::start(&manifests, &data, &["--max-heartbeats", "3"]).await;
    let token = read_token(&data, "application", "open");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let res = http
            .post(format!("{}/v1/heartbeats", server.base))
            .bearer_auth(&token)
            .json(&json!({"name": format!("job {i}")}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        if status == 402 {
            assert_eq!(body, json!({"error": "heartbeat quota reached"}));
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        vec![201, 201, 201, 402, 402],
        "{:?}",
        started.elapsed()
    );
}

/// Events of `busy` behind the export tests: about 23 MB of CSV, far more than a stalled
/// connection's socket buffers and the export's own queue hold, so an export whose client
/// stops reading cannot finish.
const EXPORT_ROWS: u64 = 100_000;

/// Two tenants as [`two_tenants`], `busy` holding [`EXPORT_ROWS`] events of a 200-character
/// name, served by a server started with `extra`.
async fn busy_with_events(limits: &str, extra: &[&str]) -> (tempfile::TempDir, ChildServer) {
    let (dir, manifests, data) = two_tenants(limits);
    let name = "long-event-name-".repeat(13);
    let now = jiff::Timestamp::now();
    fill_events(&manifests, &data, "busy", EXPORT_ROWS, &name[..200], now);
    let server = start_after_fill(&manifests, &data, extra).await;
    (dir, server)
}

/// A GET of `path` whose client reads the answer's head and then stops reading, with a
/// 4 KiB receive buffer: a large answer stalls in the server. Returns the connection (the
/// client is gone once it is dropped) and the head.
async fn stalled_get(base: &str, path: &str, token: &str) -> (TcpStream, String) {
    let addr = base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let head = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                return String::from_utf8_lossy(&got[..end]).into_owned();
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the head: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no answer head within 30 s");
    (stream, head)
}

/// Status, `Retry-After` and body of a GET with `token`.
async fn get(url: &str, token: &str) -> (u16, Option<String>, String) {
    answer(reqwest::Client::new().get(url).bearer_auth(token)).await
}

/// Status, `Retry-After` and body of the answer to `req`.
async fn answer(req: reqwest::RequestBuilder) -> (u16, Option<String>, String) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_an_applications_concurrent_reads_get_429_and_its_neighbour_is_served() {
    let (dir, server) = busy_with_events("    concurrentReads: 2\n", &[]).await;
    let data = dir.path().join("data");
    let (busy, calm) = (
        read_token(&data, "application", "busy"),
        read_token(&data, "application", "calm"),
    );
    let base = &server.base;
    let (stats, export) = (
        format!("{base}/api/v1/stats"),
        format!("{base}/api/v1/export.csv"),
    );
    // Two exports whose clients stopped reading hold both of busy's reads.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (stream, head) = stalled_get(base, "/api/v1/export.csv", &busy).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stalled.push(stream);
    }
    // A third read is refused at once, saying which limit and when to come back.
    for url in [&stats, &export] {
        let (status, retry, body) = get(url, &busy).await;
        assert_eq!(
            (status, retry.as_deref()),
            (429, Some("1")),
            "{url}: {body}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("limits.concurrentReads") && message.contains("2 at a time"),
            "{message}"
        );
    }
    // Many more at once are all refused, and cost the neighbour nothing: its events are
    // stored and read back meanwhile.
    let hammer: Vec<_> = (0..8)
        .map(|_| {
            let (url, token) = (stats.clone(), busy.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..10 {
                    statuses.push(get(&url, &token).await.0);
                }
                statuses
            })
        })
        .collect();
    for _ in 0..20 {
        assert_eq!(send(base, &calm, "steady").await.0, 201);
    }
    for handle in hammer {
        assert!(handle.await.unwrap().iter().all(|s| *s == 429));
    }
    let calm_stats = crate::helpers::get_json(&stats, &calm).await;
    assert_eq!(calm_stats["total"]["count"], 20);
    let (status, _, csv) = get(&export, &calm).await;
    assert_eq!((status, csv.lines().count()), (200, 21));
    // Each refusal is counted under the limit that made it; the server's made none.
    let text = crate::helpers::metrics_text(base).await;
    let refused = |limit: &str| {
        let series = format!("hartslag_http_heavy_reads_refused_total{{limit=\"{limit}\"}}");
        crate::helpers::metric_value(&text, &series)
    };
    assert!(refused("application").is_some_and(|n| n >= 82.0), "{text}");
    assert_eq!(refused("server"), Some(0.0), "{text}");
    // A client that goes away gives its read back.
    drop(stalled.pop());
    wait_for(
        "busy's stats answered again",
        Duration::from_secs(30),
        || async { (get(&stats, &busy).await.0 == 200).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_client_stops_reading_ends_after_the_write_timeout_and_frees_its_read() {
    let extra = ["--http-write-timeout", "2s"];
    let (dir, server) = busy_with_events("    concurrentReads: 1\n", &extra).await;
    let busy = read_token(&dir.path().join("data"), "application", "busy");
    let stats = format!("{}/api/v1/stats", server.base);
    let (mut stream, head) = stalled_get(&server.base, "/api/v1/export.csv", &busy).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // While it is stalled it is busy's one read.
    assert_eq!(get(&stats, &busy).await.0, 429);
    // Two seconds without progress end it: the read is free again, the connection closed.
    wait_for(
        "the stalled export's read given back",
        Duration::from_secs(30),
        || async { (get(&stats, &busy).await.0 == 200).then_some(()) },
    )
    .await;
    let timeouts = metric(&server.base, "hartslag_http_write_timeouts_total").await;
    assert!(timeouts.is_some_and(|n| n >= 1.0), "{timeouts:?}");
    // What the kernel had buffered arrives, then the end: the export was cut off (a
    // complete chunked body ends with an empty chunk).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    assert!(!rest.ends_with(b"\r\n0\r\n\r\n"), "the export finished");
    assert!(
        (rest.len() as u64) < EXPORT_ROWS * 200,
        "{} bytes",
        rest.len()
    );
}

/// A manifests directory with the Applications `apps` (name, `spec.limits` lines, empty for
/// none) and a data directory beside it.
fn tenants(apps: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    for (name, limits) in apps {
        let mut manifest = app_manifest(name, "UTC");
        if !limits.is_empty() {
            manifest.push_str(&format!("  limits:\n{limits}"));
        }
        std::fs::write(manifests.join(format!("{name}.yaml")), manifest).unwrap();
    }
    (dir, manifests, data)
}

/// Logs in to the dashboard with `token`; returns the session cookie (`name=value`).
async fn login(base: &str, token: &str) -> String {
    let body = format!("token={token}&next=%2Fui");
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303, "login");
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// Status, `Retry-After` and body of a dashboard page read with the session `cookie`.
async fn page(base: &str, path: &str, cookie: &str) -> (u16, Option<String>, String) {
    answer(
        reqwest::Client::new()
            .get(format!("{base}{path}"))
            .header("cookie", cookie),
    )
    .await
}

/// What a dashboard list page shows in place of the stats it did not read.
const NOT_READ: &str = "Not read now: too many stats are being read at once.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_stats_charts_and_top_users_are_reads_under_the_applications_limit() {
    let (dir, server) = busy_with_events("    concurrentReads: 2\n", &[]).await;
    let data = dir.path().join("data");
    let base = &server.base;
    let (busy, calm) = (
        read_token(&data, "application", "busy"),
        read_token(&data, "application", "calm"),
    );
    let admin = std::fs::read_to_string(data.join("tokens/admin.token")).unwrap();
    let (busy_ui, admin_ui) = (login(base, &busy).await, login(base, admin.trim()).await);
    assert_eq!(send(base, &calm, "steady").await.0, 201);
    let page_of = |app: &str| format!("/ui/applications/default/{app}");
    // Busy's page, with and without filters (stats, hourly and daily charts, top users),
    // while nothing else runs.
    let filtered = format!("{}?event=x&user_id=7", page_of("busy"));
    for path in [page_of("busy"), filtered.clone()] {
        let (status, _, body) = page(base, &path, &busy_ui).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Two exports whose clients stopped reading hold both of busy's reads.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (stream, head) = stalled_get(base, "/api/v1/export.csv", &busy).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stalled.push(stream);
    }
    // Its page reads nothing more, for its own session or the admin's: 429 naming the
    // limit, with Retry-After; and so for the dashboard's download.
    let download = format!("{}/export.csv", page_of("busy"));
    for (path, cookie) in [
        (page_of("busy"), &busy_ui),
        (filtered, &busy_ui),
        (page_of("busy"), &admin_ui),
        (download, &admin_ui),
    ] {
        let (status, retry, body) = page(base, &path, cookie).await;
        assert_eq!(
            (status, retry.as_deref()),
            (429, Some("1")),
            "{path}: {body}"
        );
        assert!(body.contains("limits.concurrentReads"), "{path}: {body}");
    }
    // The lists still answer, with busy's stats left out and said so, and calm's read.
    for path in ["/ui", "/ui/applications"] {
        let (status, _, body) = page(base, path, &admin_ui).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body.matches(NOT_READ).count(), 1, "{path}: {body}");
    }
    let (status, _, body) = page(base, &page_of("calm"), &admin_ui).await;
    assert_eq!(status, 200, "{body}");
    // A client that goes away gives its read back, and the page is served again.
    drop(stalled.pop());
    wait_for(
        "busy's page served again",
        Duration::from_secs(30),
        || async { (page(base, &page_of("busy"), &busy_ui).await.0 == 200).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_the_servers_total_get_503_on_every_application_and_ingest_goes_on() {
    // Three large Applications within their own limit (2 each, the default) hold the
    // server's four reads; four small ones read and send beside them.
    let bigs = ["big-0", "big-1", "big-2"];
    let smalls = ["small-0", "small-1", "small-2", "small-3"];
    let apps: Vec<(&str, &str)> = bigs.iter().chain(&smalls).map(|a| (*a, "")).collect();
    let (dir, manifests, data) = tenants(&apps);
    let name = "long-event-name-".repeat(13);
    let now = jiff::Timestamp::now();
    fill_events_of(&manifests, &data, &bigs, EXPORT_ROWS, &name[..200], now);
    let server = start_after_fill(&manifests, &data, &["--max-concurrent-reads-total", "4"]).await;
    let base = &server.base;
    let token = |app: &str| read_token(&data, "application", app);
    assert_eq!(
        metric(base, "hartslag_http_heavy_reads_max").await,
        Some(4.0)
    );
    // big-0 runs both of its own reads, big-1 and big-2 one each: four in all.
    let mut stalled = Vec::new();
    for big in ["big-0", "big-0", "big-1", "big-2"] {
        let (stream, head) = stalled_get(base, "/api/v1/export.csv", &token(big)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{big}: {head}");
        stalled.push(stream);
    }
    assert_eq!(metric(base, "hartslag_http_heavy_reads").await, Some(4.0));
    // Any other Application's read is refused with 503, naming the server-wide limit; so
    // is one of big-1, which has room under its own limit. big-0 is past its own: 429.
    let server_wide = |status: u16, retry: Option<&str>, body: &str| {
        assert_eq!((status, retry), (503, Some("1")), "{body}");
        let body: Value = serde_json::from_str(body).unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("--max-concurrent-reads-total")
                && message.contains("4 at a time")
                && message.contains("all Applications together"),
            "{message}"
        );
    };
    let mut refused = 0.0;
    for app in smalls.iter().chain(&["big-1"]) {
        for path in ["/api/v1/stats", "/api/v1/export.csv"] {
            let (status, retry, body) = get(&format!("{base}{path}"), &token(app)).await;
            server_wide(status, retry.as_deref(), &body);
            refused += 1.0;
        }
    }
    let (status, _, body) = get(&format!("{base}/api/v1/stats"), &token("big-0")).await;
    assert_eq!(status, 429, "{body}");
    // The dashboard's reads are refused alike: a page is 503, a list leaves them out.
    let small_ui = login(base, &token("small-0")).await;
    let (status, retry, body) = page(base, "/ui/applications/default/small-0", &small_ui).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert!(body.contains("--max-concurrent-reads-total"), "{body}");
    let (status, _, body) = page(base, "/ui", &small_ui).await;
    assert!(status == 200 && body.contains(NOT_READ), "{status}: {body}");
    refused += 2.0;
    // Ingest is not a heavy read: every Application's events are stored meanwhile.
    for app in smalls.iter().chain(&bigs) {
        for _ in 0..5 {
            assert_eq!(send(base, &token(app), "steady").await.0, 201, "{app}");
        }
    }
    let text = crate::helpers::metrics_text(base).await;
    let series = "hartslag_http_heavy_reads_refused_total{limit=\"server\"}";
    assert_eq!(crate::helpers::metric_value(&text, series), Some(refused));
    // One read ending lets the next one in.
    drop(stalled.pop());
    let stats = format!("{base}/api/v1/stats");
    let counted = wait_for("small-0's stats answered", Duration::from_secs(30), || {
        let (url, token) = (stats.clone(), token("small-0"));
        async move {
            let res = reqwest::Client::new()
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            (res.status() == 200).then_some(())?;
            res.json::<Value>().await.ok()
        }
    })
    .await;
    assert_eq!(counted["total"]["count"], 5);
    drop(dir);
}
