//! Slow, idle and half-open clients against a real server process: they are closed after
//! the configured timeouts, never hold the server's connections for good, and the cap on
//! open connections keeps file descriptors for everyone else.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ChildServer, app_manifest, metrics_text, raise_open_files, read_token};

fn one_application() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), app_manifest("shop", "UTC")).unwrap();
    (dir, manifests, data)
}

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Waits until the server closes `stream` (EOF or reset), returning what it sent first.
async fn closed_by_server(mut stream: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_sent_headers_are_closed_and_others_still_get_served() {
    let want = 2000usize;
    let soft = raise_open_files(want as u64 + 1024);
    let n = want.min(usize::try_from(soft).unwrap_or(want).saturating_sub(512));
    assert!(n >= 500, "open-files limit {soft} is too low for this test");
    let (_dir, manifests, data) = one_application();
    let server = ChildServer::start(&manifests, &data, &["--http-header-timeout", "2s"]).await;
    let token = read_token_of(&data);
    let addr = addr(&server.base);

    let started = Instant::now();
    let mut waiting = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthoriz")
            .await
            .unwrap();
        waiting.push(tokio::spawn(closed_by_server(s)));
    }
    // While they hang, the server keeps answering everyone else.
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/heartbeat", server.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"event": "still-served"}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let deadline = Duration::from_secs(20);
    for w in waiting {
        let left = deadline.saturating_sub(started.elapsed());
        let sent = tokio::time::timeout(left, w)
            .await
            .expect("a half-sent request header was still open 20 s later")
            .unwrap();
        assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    }
    let text = metrics_text(&server.base).await;
    assert!(
        metric(&text, "hartslag_http_header_timeouts_total") >= n as f64,
        "{text}"
    );
}

fn read_token_of(data: &std::path::Path) -> String {
    read_token(data, "application", "shop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_and_slow_bodies_are_closed() {
    let (_dir, manifests, data) = one_application();
    let server = ChildServer::start(
        &manifests,
        &data,
        &["--http-header-timeout", "2s", "--http-body-timeout", "2s"],
    )
    .await;
    let token = read_token_of(&data);
    let addr = addr(&server.base);

    // A finished request, then silence: the connection is closed after the timeout.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let sent = tokio::time::timeout(Duration::from_secs(10), closed_by_server(s))
        .await
        .expect("an idle keep-alive connection was still open 10 s later");
    assert!(String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // A body that stops halfway gets 408 with the documented JSON body.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ev"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(10), closed_by_server(s))
        .await
        .expect("a request whose body stopped halfway was still open 10 s later");
    let text = String::from_utf8_lossy(&sent);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains(r#"{"error":"the request body did not arrive within 2s"}"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_clients_wait_and_the_server_says_so() {
    let (_dir, manifests, data) = one_application();
    let server = ChildServer::start(
        &manifests,
        &data,
        &[
            "--http-header-timeout",
            "3s",
            "--http-max-connections",
            "20",
        ],
    )
    .await;
    let addr = addr(&server.base);
    // Twenty clients that connect and say nothing fill the cap.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let res = reqwest::Client::new()
        .get(format!("{}/healthz", server.base))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("a client waiting at the cap was never served");
    assert_eq!(res.status(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "answered after {waited:?}, while every allowed connection was taken"
    );
    drop(idle);
    let text = metrics_text(&server.base).await;
    assert!(
        metric(&text, "hartslag_http_connection_cap_reached_total") >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "hartslag_http_connections_max"),
        20.0,
        "{text}"
    );
    assert!(
        server.log_text().contains("HTTP connection cap reached"),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_live_streams_and_the_process_promptly() {
    let (_dir, manifests, data) = one_application();
    let mut server = ChildServer::start(&manifests, &data, &[]).await;
    let token = read_token_of(&data);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/ui/login", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=%2Fui"))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut live = http
        .get(format!("{}/ui/live", server.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let took = tokio::task::spawn_blocking(move || {
        let took = server.terminate(Duration::from_secs(10));
        (took, server)
    })
    .await
    .unwrap();
    let (took, server) = took;
    let took = took.unwrap_or_else(|| {
        panic!(
            "still running 10 s after SIGTERM with a live stream open:\n{}",
            server.log_text()
        )
    });
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The stream ended rather than being left hanging.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = live.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the live stream did not end");
}

/// The first bytes the server answers on `stream`, waiting at most `within`.
async fn first_answer(stream: &mut TcpStream, within: Duration) -> String {
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_over_the_limit_gets_413_at_once_not_a_408_later() {
    let (_dir, manifests, data) = one_application();
    std::fs::write(
        manifests.join("hb.yaml"),
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: job\nspec:\n  interval: 1h\n",
    )
    .unwrap();
    // A body timeout far past the deadline below: only an answer before reading does.
    let server = ChildServer::start(&manifests, &data, &["--http-body-timeout", "120s"]).await;
    let token = read_token_of(&data);
    let ping = std::fs::read_to_string(data.join("tokens/heartbeat-job.url")).unwrap();
    let ping_path = ping.trim().trim_start_matches(&server.base).to_string();
    let addr = addr(&server.base);
    let cases = [
        (
            format!(
                "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            ),
            "65536",
        ),
        (
            format!("POST {ping_path} HTTP/1.1\r\nHost: x\r\n"),
            "16777216",
        ),
    ];
    for (head, limit) in cases {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let request = format!("{head}Content-Length: 99999999999\r\n\r\n{{}}");
        s.write_all(request.as_bytes()).await.unwrap();
        let text = first_answer(&mut s, Duration::from_secs(20)).await;
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(
            text.contains(&format!("the limit of {limit} bytes")),
            "{text}"
        );
    }
}
