//! Replicas on one PostgreSQL database answer alike whichever one a client reaches: a
//! monitor created through the leader shows its ping token on every replica (and after a
//! failover), and replicas given different admin tokens accept each one as long as a
//! running replica holds it.

use std::time::{Duration, Instant};

use hartslag::core::token::{Token, TokenKind};
use serde_json::{Value, json};

use crate::helpers::{ChildServer, heartbeat_manifest, wait_for};
use crate::pg_failover::{Layout, leads, ping, the_leader};

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// The Heartbeat object with management id `id` through the replica at `base`, once it
/// is there (a follower shows the leader's rounds within a second or so).
async fn shown(base: &str, key: &str, id: &str) -> Value {
    let url = format!("{base}/v1/heartbeats/{id}");
    wait_for(
        &format!("{url} to answer 200"),
        Duration::from_secs(10),
        || {
            let url = url.clone();
            async move {
                let res = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .ok()?;
                if res.status() != 200 {
                    return None;
                }
                res.json::<Value>().await.ok()
            }
        },
    )
    .await
}

/// The Heartbeat object with id `id` in the list the replica at `base` answers.
async fn listed(base: &str, key: &str, id: &str) -> Value {
    let list: Value = reqwest::Client::new()
        .get(format!("{base}/v1/heartbeats"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all = list["heartbeats"].as_array().unwrap();
    all.iter().find(|h| h["id"] == id).unwrap().clone()
}

/// Through the Tickstem Python SDK on the replica at `base`: monitor `id`'s token from a
/// get and from a list, then what a create answers; one line each.
async fn sdk_on(base: &str, key: &str, id: &str) -> String {
    const SCRIPT: &str = r#"
import sys
from tickstem.heartbeat import CreateParams, HeartbeatClient
from tickstem._base import APIError
base, key, id = sys.argv[1:4]
c = HeartbeatClient(key, base_url=base + "/v1")
print(c.get(id).token)
print([h.token for h in c.list() if h.id == id][0])
try:
    c.create(CreateParams(name="another", interval_secs=3600))
    print("created")
except APIError as e:
    print(e.status, e.message)
"#;
    let args = [base.to_string(), key.to_string(), id.to_string()];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", SCRIPT])
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'tickstem'"),
        "the Tickstem SDK is missing: pip install tickstem (tests/run-all.sh installs it)"
    );
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_created_through_the_leader_shows_its_token_on_every_replica_and_after_a_failover()
 {
    let layout = Layout::new(2, &[]);
    let mut replicas = vec![layout.start(0, &[]).await, layout.start(1, &[]).await];
    let leader = the_leader(
        &replicas.iter().collect::<Vec<_>>(),
        Duration::from_secs(15),
    )
    .await;
    let follower = 1 - leader;
    let key = read(layout.token_file(0, "application-shop.token"));
    let created = reqwest::Client::new()
        .post(format!("{}/v1/heartbeats", replicas[leader].base))
        .bearer_auth(&key)
        .json(&json!({"name": "Nightly backup", "interval_secs": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();

    for r in &replicas {
        let one = shown(&r.base, &key, &id).await;
        assert_eq!(one["token"], token.as_str(), "GET through {}", r.base);
        let many = listed(&r.base, &key, &id).await;
        assert_eq!(many["token"], token.as_str(), "the list through {}", r.base);
    }
    assert_eq!(ping(&replicas[follower].base, &token).await, 200);
    // The Tickstem SDK through the follower reads the token from a get and a list, and
    // a change raises its APIError with the 503 and the reason (it does not retry).
    let said = sdk_on(&replicas[follower].base, &key, &id).await;
    let expected = format!("{token}\n{token}\n503 this replica does not lead; retry\n");
    assert_eq!(said, expected);

    replicas.remove(leader).kill9();
    let base = replicas[0].base.clone();
    wait_for("the follower to lead", Duration::from_secs(30), || {
        let base = base.clone();
        async move { leads(&base).await.filter(|l| *l) }
    })
    .await;
    assert_eq!(shown(&base, &key, &id).await["token"], token.as_str());
    assert_eq!(listed(&base, &key, &id).await["token"], token.as_str());
    assert_eq!(ping(&base, &token).await, 200);

    // Deleted through the new leader: gone, its token with it.
    let c = reqwest::Client::new();
    let one = format!("{base}/v1/heartbeats/{id}");
    let deleted = c.delete(&one).bearer_auth(&key).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = c.get(&one).bearer_auth(&key).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(ping(&base, &token).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_only_the_leaders_data_directory_has_is_shown_everywhere_once_it_leads() {
    let layout = Layout::new(2, &[]);
    let key = read(layout.token_file(0, "application-shop.token"));
    let first = layout.start(0, &[]).await;
    the_leader(&[&first], Duration::from_secs(15)).await;
    let created: Value = reqwest::Client::new()
        .post(format!("{}/v1/heartbeats", first.base))
        .bearer_auth(&key)
        .json(&json!({"name": "Ledger", "interval_secs": 3600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();
    // As an earlier release (or `hartslag migrate`) left it: in the creating replica's
    // data directory alone.
    crate::pg::shared().psql(layout.database(), "DELETE FROM hartslag_ping_tokens");
    first.kill9();

    let first = layout.start(0, &[]).await;
    the_leader(&[&first], Duration::from_secs(15)).await;
    let second = layout.start(1, &[]).await;
    // Stored by the leader once it took office (it may lead a moment before).
    let (base, key, id, token) = (&second.base, &key, &id, &token);
    wait_for(
        "the token on the other replica",
        Duration::from_secs(10),
        || async move { (shown(base, key, id).await["token"] == token.as_str()).then_some(()) },
    )
    .await;
    assert_eq!(listed(base, key, id).await["token"], token.as_str());
}

/// Each stored monitor's key, the round that wrote it last and its definition's digest.
fn stored_monitors(database: &str) -> String {
    crate::pg::shared().psql(
        database,
        "SELECT key || ' ' || version || ' ' || md5(record) FROM hartslag_monitors ORDER BY key",
    )
}

/// Waits until `replica` leads and has declared the manifests.
async fn declared(replica: &ChildServer) {
    the_leader(&[replica], Duration::from_secs(15)).await;
    wait_for(
        "the manifests to be applied",
        Duration::from_secs(30),
        || async {
            replica
                .log_text()
                .contains("manifests applied")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_another_data_path_leaves_the_definitions_as_they_are() {
    let hbs = ["nightly", "weekly"].map(|n| heartbeat_manifest(n, "1h", "5m", ""));
    let layout = Layout::new(2, &hbs);
    let first = layout.start(0, &[]).await;
    declared(&first).await;
    let before = stored_monitors(layout.database());
    assert_eq!(before.lines().count(), 2, "{before}");
    first.kill9();

    // Replica 1's data directory is another path (`r1` beside `r0`).
    let second = layout.start(1, &[]).await;
    declared(&second).await;
    assert_eq!(
        stored_monitors(layout.database()),
        before,
        "the new leader wrote the definitions again"
    );
}

/// The status `/v1/status` answers `token` through the replica at `base`.
async fn status_with(base: &str, token: &str) -> u16 {
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/status"))
        .bearer_auth(token)
        .send()
        .await;
    res.map_or(0, |r| r.status().as_u16())
}

/// Waits until the replica at `base` answers `token` with `status`.
async fn answers(base: &str, token: &str, status: u16, within: Duration) {
    let what = format!("{base} to answer {status} to an admin token");
    wait_for(&what, within, || async move {
        (status_with(base, token).await == status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_different_admin_tokens_accept_both_until_no_replica_holds_one() {
    let layout = Layout::new(2, &[]);
    let old = read(layout.token_file(0, "admin.token"));
    let new = Token::generate(TokenKind::Admin).unwrap();
    let new = new.expose().to_string();
    std::fs::write(layout.token_file(1, "admin.token"), &new).unwrap();
    let mut replicas = vec![layout.start(0, &[]).await, layout.start(1, &[]).await];
    // Each holds its own and accepts the other's: a client of either is served by both.
    for r in &replicas {
        for t in [&old, &new] {
            answers(&r.base, t, 200, Duration::from_secs(10)).await;
        }
    }
    let stranger = Token::generate(TokenKind::Admin).unwrap();
    assert_eq!(status_with(&replicas[0].base, stranger.expose()).await, 401);

    // The rolling restart onto the new token: replica 0 goes and comes back with it.
    replicas.remove(0).kill9();
    std::fs::write(layout.token_file(0, "admin.token"), &new).unwrap();
    replicas.insert(0, layout.start(0, &[]).await);
    let restarted = Instant::now();
    // The new token works throughout; the old one stops once no replica holds it (the
    // killed replica's hold runs out).
    let within = hartslag::core::replica::ADMIN_HOLD + Duration::from_secs(15);
    for r in &replicas {
        assert_eq!(status_with(&r.base, &new).await, 200);
        answers(&r.base, &old, 401, within).await;
    }
    eprintln!(
        "the old admin token stopped {:?} after the restart",
        restarted.elapsed()
    );
    for r in &replicas {
        assert_eq!(status_with(&r.base, &new).await, 200);
    }
}
