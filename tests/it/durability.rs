//! Acknowledged means durable, and concurrency loses nothing: a child `hartslag` process is
//! killed with SIGKILL under load and its data directory reopened.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{ChildServer, InProcess, app_manifest, read_token};
use serde_json::{Value, json};

/// A temporary manifests directory holding one UTC Application `name`, and a data
/// directory next to it (not created yet).
fn one_application(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), app_manifest(name, "UTC")).unwrap();
    (dir, manifests, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_kill_9() {
    let (_dir, manifests, data) = one_application("durable");

    let server = ChildServer::start(&manifests, &data, &[]).await;
    let token = read_token(&data, "application", "durable");
    let acked = Arc::new(Mutex::new(HashSet::<i64>::new()));
    let mut clients = Vec::new();
    for c in 0..16i64 {
        let base = server.base.clone();
        let token = token.clone();
        let acked = acked.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for i in 0..100_000i64 {
                let id = c * 1_000_000 + i;
                let res = http
                    .post(format!("{base}/api/v1/heartbeat"))
                    .bearer_auth(&token)
                    .json(&json!({"event": "durable", "user_id": id}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 201 => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => return,
                }
            }
        }));
    }
    // Kill while requests are in flight, once a good number have been acknowledged.
    crate::helpers::wait_for("2000 acknowledged events", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 2000).then_some(()) }
    })
    .await;
    server.kill9();
    for c in clients {
        let _ = c.await;
    }
    let acked = acked.lock().unwrap().clone();

    let server = ChildServer::start(&manifests, &data, &[]).await;
    let text = reqwest::Client::new()
        .get(format!("{}/api/v1/export.csv", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let stored: HashSet<i64> = reader
        .records()
        .map(|r| r.unwrap()[3].parse().unwrap())
        .collect();
    let lost: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost after kill -9, e.g. {lost:?}",
        acked.len() - acked.intersection(&stored).count()
    );
    // Rollups agree with raw events after the crash (they are written in one transaction).
    let stats: Value =
        crate::helpers::get_json(&format!("{}/api/v1/stats", server.base), &token).await;
    assert_eq!(stats["total"]["count"].as_u64(), Some(stored.len() as u64));
    eprintln!(
        "acknowledged {}, stored {} after kill -9",
        acked.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_two_hundred_events_each() {
    let s = InProcess::start(&[("app.yaml", app_manifest("busy", "UTC"))]).await;
    let token = s.app_token("busy");
    let mut tasks = Vec::new();
    for c in 0..50i64 {
        let base = s.base.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..200i64 {
                let weight = c * 200 + i;
                let res = http
                    .post(format!("{base}/api/v1/heartbeat"))
                    .bearer_auth(&token)
                    .json(&json!({"event": format!("e{}", c % 5), "weight": weight, "user_id": c}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected_weight: i64 = (0..10_000i64).sum();
    let stats: Value = crate::helpers::get_json(&format!("{}/api/v1/stats", s.base), &token).await;
    assert_eq!(
        stats["total"],
        json!({"count": 10_000, "weight": expected_weight})
    );
    assert_eq!(
        stats["today"],
        json!({"count": 10_000, "weight": expected_weight})
    );
    let per_event: i64 = stats["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["total"]["count"].as_i64().unwrap())
        .sum();
    assert_eq!(per_event, 10_000);
    let user7: Value =
        crate::helpers::get_json(&format!("{}/api/v1/stats?user_id=7", s.base), &token).await;
    let w7: i64 = (1400..1600i64).sum();
    assert_eq!(user7["total"], json!({"count": 200, "weight": w7}));
    let text = reqwest::Client::new()
        .get(format!("{}/api/v1/export.csv", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: Vec<_> = csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rows.len(), 10_000);
    let sum: i64 = rows.iter().map(|r| r[2].parse::<i64>().unwrap()).sum();
    assert_eq!(sum, expected_weight);
    s.stop().await;
}

#[tokio::test]
async fn retention_deletes_raw_events_but_keeps_totals() {
    let manifest = "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: short\nspec:\n  retention: 1d\n";
    let s = InProcess::start(&[("app.yaml", manifest.to_string())]).await;
    let token = s.app_token("short");
    let http = reqwest::Client::new();
    for at in ["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z"] {
        let r = http
            .post(format!("{}/api/v1/heartbeat", s.base))
            .bearer_auth(&token)
            .json(&json!({"event": "old", "weight": 2, "created_at": at}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = http
        .post(format!("{}/api/v1/heartbeat", s.base))
        .bearer_auth(&token)
        .json(&json!({"event": "new"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    s.core.spawn_retention(Duration::from_secs(3600));
    let base = s.base.clone();
    let rows = crate::helpers::wait_for("retention pass", Duration::from_secs(10), || {
        let http = http.clone();
        let base = base.clone();
        let token = token.clone();
        async move {
            let text = http
                .get(format!("{base}/api/v1/export.csv"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let rows: Vec<_> = csv::Reader::from_reader(text.as_bytes())
                .records()
                .map(|r| r.unwrap())
                .collect();
            (rows.len() == 1).then_some(rows)
        }
    })
    .await;
    assert_eq!(&rows[0][1], "new");
    let stats: Value = crate::helpers::get_json(&format!("{}/api/v1/stats", s.base), &token).await;
    assert_eq!(
        stats["total"],
        json!({"count": 3, "weight": 5}),
        "totals stay exact after retention"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_still_answers_after_kill_9() {
    let (_dir, manifests, data) = one_application("retry");
    let send = |base: String, token: String| async move {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/heartbeat"))
            .bearer_auth(token)
            .header("Idempotency-Key", "nightly-2026-11-23")
            .json(&json!({"event": "backup", "weight": 7}))
            .send()
            .await
            .unwrap()
    };
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let token = read_token(&data, "application", "retry");
    let first = send(server.base.clone(), token.clone()).await;
    assert_eq!(first.status(), 201);
    server.kill9();
    // The client never saw the answer and retries against the restarted server.
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let retry = send(server.base.clone(), token.clone()).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let stats: Value =
        crate::helpers::get_json(&format!("{}/api/v1/stats", server.base), &token).await;
    assert_eq!(stats["total"]["count"], 1, "{stats}");
    assert_eq!(stats["total"]["weight"], 7, "{stats}");
}

/// Posts one event (optionally dated) and expects it acknowledged.
async fn post_event(base: &str, token: &str, event: &str, created_at: Option<&str>) {
    let mut body = json!({"event": event});
    if let Some(at) = created_at {
        body["created_at"] = json!(at);
    }
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/heartbeat"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_deleted_with_retain_gets_its_data_back_when_re_created() {
    let s = InProcess::start(&[("app.yaml", app_manifest("shop", "UTC"))]).await;
    let token = s.app_token("shop");
    for _ in 0..3 {
        post_event(&s.base, &token, "order", None).await;
    }
    let info = s.core.registry.application("default/shop").unwrap();
    s.core
        .registry
        .remove_application("default", "shop", false)
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/stats", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the deleted application's token is revoked"
    );

    let fresh =
        hartslag::core::token::Token::generate(hartslag::core::token::TokenKind::Application)
            .unwrap();
    let again = s
        .core
        .registry
        .upsert_application("default", "shop", info.spec.clone(), fresh.hash())
        .await
        .unwrap();
    assert_eq!(again.num, info.num, "the same name keeps its storage id");
    let stats: Value =
        crate::helpers::get_json(&format!("{}/api/v1/stats", s.base), fresh.expose()).await;
    assert_eq!(stats["total"]["count"], json!(3), "{stats}");
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/stats", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old token stays revoked");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_still_reaches_the_data_of_a_retained_application() {
    let manifest = "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: gone\nspec:\n  retention: 1d\n";
    let s = InProcess::start(&[("app.yaml", manifest.to_string())]).await;
    let token = s.app_token("gone");
    post_event(&s.base, &token, "old", Some("2020-01-01T00:00:00Z")).await;
    post_event(&s.base, &token, "new", None).await;
    let num = s.core.registry.application("default/gone").unwrap().num;
    let events = s.core.events.clone();
    assert_eq!(events.event_count(num).await.unwrap(), 2);
    s.core
        .registry
        .remove_application("default", "gone", false)
        .await
        .unwrap();
    assert_eq!(
        events.event_count(num).await.unwrap(),
        2,
        "Retain keeps the events"
    );
    s.core.spawn_retention(Duration::from_secs(3600));
    crate::helpers::wait_for("retention pass", Duration::from_secs(10), || {
        let events = events.clone();
        async move { (events.event_count(num).await.ok()? == 1).then_some(()) }
    })
    .await;
    s.stop().await;
}

/// A tmpfs of `mb` MiB mounted at `at` for the life of the value.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// `None` when not running as root (mounting needs it); panics when root cannot mount.
    fn mount(at: &std::path::Path, mb: u32) -> Option<Self> {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self { at: at.into() })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

/// Fills the file system under `dir` with one file until it is full; returns its path.
fn fill(dir: &std::path::Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // Byte by byte, up to the last free one.
    while f.write_all(&[0xa5]).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_events_with_503_and_loses_nothing_acknowledged() {
    if !crate::helpers::runs_on_sled(
        "a full disk under the sled directory; PostgreSQL's outage is pg_replicas'",
    ) {
        return;
    }
    let (dir, manifests, _) = one_application("full");
    let Some(_disk) = SmallDisk::mount(&dir.path().join("disk"), 48) else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let data = dir.path().join("disk").join("data");
    let mut server = ChildServer::start(&manifests, &data, &[]).await;
    let token = read_token(&data, "application", "full");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |id: i64| {
        http.post(format!("{}/api/v1/heartbeat", server.base))
            .bearer_auth(&token)
            .json(&json!({"event": format!("job-{}", id % 50), "user_id": id}))
            .send()
    };
    let mut acked = HashSet::new();
    for id in 0..200 {
        assert_eq!(post(id).await.unwrap().status(), 201);
        acked.insert(id);
    }
    let filler = fill(&dir.path().join("disk"));
    // Keep sending until the store refuses: each answer is 201 (durable) or 503, never a
    // dropped connection.
    let mut refused = None;
    for id in 200..200_000 {
        let r = post(id)
            .await
            .unwrap_or_else(|e| panic!("event {id}: no answer ({e})"));
        match r.status().as_u16() {
            201 => {
                acked.insert(id);
            }
            503 => {
                refused = Some(r.text().await.unwrap());
                break;
            }
            other => panic!("event {id}: {other} {}", r.text().await.unwrap()),
        }
    }
    let refused = refused.expect("the full disk never refused an event");
    assert!(refused.contains("could not be stored"), "{refused}");
    let health = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        503,
        "/healthz must fail on a full disk; log:\n{}",
        server.log_text()
    );
    // A later event is refused too, not acknowledged without being durable.
    assert_eq!(post(999_999).await.unwrap().status(), 503);
    assert!(server.terminate(Duration::from_secs(20)).is_some());
    std::fs::remove_file(filler).unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let text = http
        .get(format!("{}/api/v1/export.csv", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stored: HashSet<i64> = csv::Reader::from_reader(text.as_bytes())
        .records()
        .filter_map(|r| r.unwrap()[3].parse().ok())
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    let stats: Value =
        crate::helpers::get_json(&format!("{}/api/v1/stats", server.base), &token).await;
    assert!(stats["total"]["count"].as_u64().unwrap() >= acked.len() as u64);
}
