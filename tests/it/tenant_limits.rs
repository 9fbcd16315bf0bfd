//! One tenant cannot grow without bound or crowd out the others: per-Application limits on
//! distinct event names, on the ingest rate of its token and on Heartbeats created through
//! the management API, against a real server process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{ChildServer, app_manifest, read_token};

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
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..30 {
        let (status, headers, body) = send(&server.base, &busy, "burst").await;
        match status {
            201 => accepted += 1,
            429 => refused = Some((headers, body)),
            other => panic!("unexpected status {other}"),
        }
    }
    // The burst, and at most what the rate refilled meanwhile.
    assert!((10..=14).contains(&accepted), "{accepted} accepted");
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
