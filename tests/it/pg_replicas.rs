//! Several `hartslag standalone` processes on one PostgreSQL database, with real clients:
//! counts and weights stay exact when replicas ingest at once, an `Idempotency-Key` holds
//! across replicas, a replica killed with SIGKILL loses no acknowledged event, and a
//! database that stops answers 503 (never 201) until it is back, then ingest resumes
//! without a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ChildServer, app_manifest, read_token};
use crate::pg::PgServer;

/// A manifests directory with one UTC Application and two data directories (one per
/// replica), in a temporary directory.
fn layout(app: &str) -> (tempfile::TempDir, PathBuf, [PathBuf; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), app_manifest(app, "UTC")).unwrap();
    let data = [dir.path().join("a"), dir.path().join("b")];
    (dir, manifests, data)
}

/// Starts the first replica, then the second with the first one's Application token (as a
/// shared token file gives every replica the same one).
async fn two_replicas(
    manifests: &Path,
    data: &[PathBuf; 2],
    url: &str,
    app: &str,
) -> (ChildServer, ChildServer, String) {
    let a = ChildServer::start(manifests, &data[0], &["--database-url", url]).await;
    let token = read_token(&data[0], "application", app);
    let tokens = data[1].join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let file = format!("application-{app}.token");
    std::fs::copy(data[0].join("tokens").join(&file), tokens.join(&file)).unwrap();
    let b = ChildServer::start(manifests, &data[1], &["--database-url", url]).await;
    (a, b, token)
}

/// Posts an event with a user id; the status, or 0 when no answer came.
async fn post(http: &reqwest::Client, base: &str, token: &str, body: &Value) -> u16 {
    match http
        .post(format!("{base}/api/v1/heartbeat"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The user ids of every exported event.
async fn exported_users(base: &str, token: &str) -> HashSet<i64> {
    let text = reqwest::Client::new()
        .get(format!("{base}/api/v1/export.csv"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.unwrap()[3].parse().unwrap())
        .collect()
}

async fn total(base: &str, token: &str) -> (u64, u64) {
    let stats = crate::helpers::get_json(&format!("{base}/api/v1/stats"), token).await;
    (
        stats["total"]["count"].as_u64().unwrap(),
        stats["total"]["weight"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_ingesting_at_once_count_every_event_once() {
    let (dir, manifests, data) = layout("shared");
    let url = crate::pg::database_for(dir.path());
    let (a, b, token) = two_replicas(&manifests, &data, &url, "shared").await;
    let bases = [a.base.clone(), b.base.clone()];
    let (clients, each) = (16i64, 150i64);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (base, token) = (bases[(c % 2) as usize].clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..each {
                // A few names, weights 1..=5: every rollup row is written by both replicas.
                let body = json!({"event": format!("e{}", i % 3), "weight": 1 + i % 5});
                assert_eq!(post(&http, &base, &token, &body).await, 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let weight: i64 = (0..each).map(|i| 1 + i % 5).sum::<i64>() * clients;
    let want = ((clients * each) as u64, weight as u64);
    assert_eq!(total(&a.base, &token).await, want, "through the first");
    assert_eq!(total(&b.base, &token).await, want, "through the second");

    // One key across replicas: the retry through the other one is a replay, not a second
    // event; another event under the same key is refused.
    let http = reqwest::Client::new();
    let send = |base: &str, weight: i64| {
        http.post(format!("{base}/api/v1/heartbeat"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "order-17")
            .json(&json!({"event": "order", "weight": weight}))
            .send()
    };
    let first = send(&a.base, 3).await.unwrap();
    assert_eq!(first.status(), 201);
    let retry = send(&b.base, 3).await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(send(&b.base, 4).await.unwrap().status(), 422);
    let (count, _) = total(&b.base, &token).await;
    assert_eq!(count, want.0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_event() {
    let (dir, manifests, data) = layout("kill");
    let url = crate::pg::database_for(dir.path());
    let (a, b, token) = two_replicas(&manifests, &data, &url, "kill").await;
    let acked = Arc::new(Mutex::new(HashSet::<i64>::new()));
    let mut tasks = Vec::new();
    for c in 0..8i64 {
        let base = if c % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (token, acked) = (token.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            for i in 0..400i64 {
                let id = c * 1_000_000 + i;
                let body = json!({"event": "tick", "user_id": id});
                match post(&http, &base, &token, &body).await {
                    201 => {
                        acked.lock().unwrap().insert(id);
                    }
                    // The killed replica's clients stop at the first failure.
                    _ => return,
                }
            }
        }));
    }
    crate::helpers::wait_for("500 acknowledged events", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 500).then_some(()) }
    })
    .await;
    a.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let stored = exported_users(&b.base, &token).await;
    let lost: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    // Rollups agree with the raw events: each transaction wrote both or neither.
    assert_eq!(total(&b.base, &token).await.0, stored.len() as u64);
    eprintln!("acknowledged {}, stored {}", acked.len(), stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_database_gets_503_never_201_and_ingest_resumes_by_itself() {
    // A server of its own: stopping the shared one would fail other tests.
    let server = PgServer::start();
    let (dir, manifests, data) = layout("outage");
    let _ = dir;
    let url = server.database("outage");
    let a = ChildServer::start(&manifests, &data[0], &["--database-url", &url]).await;
    let token = read_token(&data[0], "application", "outage");
    let acked = Arc::new(Mutex::new(HashSet::<i64>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..4i64 {
        let (base, token) = (a.base.clone(), token.clone());
        let (acked, refused, stop) = (acked.clone(), refused.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 100_000 {
                let id = c * 1_000_000 + i;
                i += 1;
                match post(
                    &http,
                    &base,
                    &token,
                    &json!({"event": "tick", "user_id": id}),
                )
                .await
                {
                    201 => {
                        acked.lock().unwrap().insert(id);
                    }
                    503 => {
                        *refused.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("answered {other} while the database was away"),
                }
            }
        }));
    }
    let count = |n: usize| {
        let acked = acked.clone();
        move || {
            let got = acked.lock().unwrap().len();
            async move { (got >= n).then_some(()) }
        }
    };
    crate::helpers::wait_for(
        "200 acknowledged events",
        Duration::from_secs(60),
        count(200),
    )
    .await;
    server.stop();
    let refusals = || {
        let refused = refused.clone();
        move || {
            let n = *refused.lock().unwrap();
            async move { (n >= 20).then_some(()) }
        }
    };
    crate::helpers::wait_for(
        "503s while the database is down",
        Duration::from_secs(30),
        refusals(),
    )
    .await;
    let before = acked.lock().unwrap().len();
    server.resume();
    crate::helpers::wait_for(
        "ingest to resume after the database is back",
        Duration::from_secs(30),
        count(before + 200),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let stored = exported_users(&a.base, &token).await;
    let lost: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    eprintln!(
        "acknowledged {}, stored {}, refused {}",
        acked.len(),
        stored.len(),
        refused.lock().unwrap()
    );
}

/// Two openings of the port on one database, as two replicas hold them.
async fn two_writers(database: &str) -> [hartslag::core::storage::Storage; 2] {
    let url: hartslag::core::store_pg::DatabaseUrl =
        crate::pg::shared().database(database).parse().unwrap();
    let open = || {
        let url = url.clone();
        async move {
            let metrics = &mut hartslag::core::metrics::MetricRegistry::default();
            hartslag::core::store_pg::open(&url, metrics).await.unwrap()
        }
    };
    [open().await, open().await]
}

fn write(name: &str, limit: u32, key: Option<&str>) -> hartslag::core::storage::EventWrite {
    use hartslag::core::token::TokenHash;
    let at = jiff::Timestamp::now();
    hartslag::core::storage::EventWrite {
        app: 1,
        at,
        date: hartslag::core::calendar::date_key(at.to_zoned(jiff::tz::TimeZone::UTC).date()),
        value: hartslag::core::storage::EventValue {
            event: name.into(),
            weight: 1,
            user_id: None,
        },
        idempotency: key.map(|k| hartslag::core::storage::Idempotency {
            key: TokenHash::of(k).0,
            fingerprint: TokenHash::of(name).0,
        }),
        name_limit: limit,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_at_once_never_pass_the_names_limit_or_store_a_key_twice() {
    use hartslag::core::storage::Outcome;
    let writers = two_writers("two_writers").await;
    // Forty new names at once through both, ten allowed: without the per-application lock
    // each writer would count the names before the other's commit and take ten.
    let writes = (0..40).map(|i| {
        writers[i % 2]
            .events
            .write(write(&format!("n{i}"), 10, None))
    });
    let outcomes: Vec<Outcome> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let stored = outcomes.iter().filter(|o| **o == Outcome::Stored).count();
    assert_eq!(stored, 10, "{outcomes:?}");
    assert_eq!(outcomes.len() - stored, 30);
    let periods =
        hartslag::core::calendar::Periods::at(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC);
    let report = writers[1]
        .events
        .stats(1, periods, None, None)
        .await
        .unwrap();
    assert_eq!(report.events.len(), 10);

    // One key sent through both at once: stored once, the other copy is its replay. (With
    // a name the application has: which ten names were taken depends on who came first.)
    let kept = report.events.keys().next().unwrap().clone();
    let copies = writers
        .iter()
        .map(|w| w.events.write(write(&kept, 10, Some("retry-me"))));
    let mut outcomes: Vec<Outcome> = futures::future::join_all(copies)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [Outcome::Replayed, Outcome::Stored]);
    assert_eq!(writers[0].events.event_count(1).await.unwrap(), 11);
}

/// What one installation keeps in the database and another would remove: Applications
/// (their records), token hashes, monitors (their definitions) and the API monitors' ping
/// tokens, one line each.
fn installation_rows(server: &PgServer, database: &str) -> Vec<String> {
    [
        "SELECT string_agg(key || ' ' || md5(record), ',' ORDER BY key) FROM hartslag_apps",
        "SELECT string_agg(encode(hash, 'hex') || ' ' || owner, ',' ORDER BY hash) FROM hartslag_tokens",
        "SELECT string_agg(key || ' ' || md5(record), ',' ORDER BY key) FROM hartslag_monitors",
        "SELECT string_agg(key || ' ' || md5(token), ',' ORDER BY key) FROM hartslag_ping_tokens",
    ]
    .iter()
    .map(|sql| server.psql(database, sql))
    .collect()
}

/// Runs `hartslag standalone` on `manifests` and `data` with `args` until it exits; its
/// exit code and output. Panics if it is still running after 30 s (it started: a replica
/// that should have refused the database serves on it).
async fn run_until_exit(manifests: &Path, data: &Path, args: &[&str]) -> (Option<i32>, String) {
    let log = data.with_extension("refused.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(crate::helpers::binary())
        .args(["standalone", "--manifests"])
        .arg(manifests)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--allow-private-webhooks"])
        .args(args)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the replica of the other installation did not refuse the database:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (
        status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// Two installations pointed at one database (each with its own manifests, tokens and
/// installation name): the first claims the database, and a replica of the second refuses
/// to start, exit code 1 and both names in its message, whether the first runs or not
/// (when it does not, the second would lead and apply its own manifests, removing the
/// first's Heartbeat and replacing its Application's token). Nothing of the first's is
/// removed, and it starts again on its database as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_installation_refuses_the_database_and_removes_nothing() {
    use crate::helpers::heartbeat_manifest;
    use crate::pg_failover::Layout;
    let server = crate::pg::shared();
    let first = Layout::new(1, &[heartbeat_manifest("nightly", "1h", "5m", "")]);
    let database = first.database().to_string();
    let mut a = first.start(0, &["--installation", "team-a"]).await;
    let claimed = "SELECT name FROM hartslag_installation";
    assert_eq!(server.psql(&database, claimed), "team-a");
    let key = std::fs::read_to_string(first.token_file(0, "application-shop.token")).unwrap();
    let created = reqwest::Client::new()
        .post(format!("{}/v1/heartbeats", a.base))
        .bearer_auth(key.trim())
        .json(&json!({"name": "From the API", "interval_secs": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let second = Layout::on(1, &[], Some(first.url().to_string()));
    let refuse = |why: &'static str| {
        let (manifests, data) = (second.manifests(), second.data(0));
        let args = ["--database-url", first.url(), "--installation", "team-b"];
        async move {
            let (code, log) = run_until_exit(manifests, data, &args).await;
            assert_eq!(code, Some(1), "{why}:\n{log}");
            for said in [
                "belongs to the installation \"team-a\"",
                "installation is \"team-b\"",
                "--installation \"team-a\"",
                "a database of its own",
            ] {
                assert!(log.contains(said), "{why}: {said:?} missing:\n{log}");
            }
        }
    };
    refuse("while the first installation runs").await;
    assert!(a.terminate(Duration::from_secs(30)).is_some());
    let before = installation_rows(server, &database);
    assert!(before[2].contains("nightly"), "{before:?}");
    refuse("while no replica of the first installation runs").await;
    assert_eq!(installation_rows(server, &database), before);
    assert_eq!(server.psql(&database, claimed), "team-a");

    // The first installation's replicas go on as before.
    let a = first.start(0, &["--installation", "team-a"]).await;
    let ping = crate::pg_failover::ping(&a.base, &first.heartbeat_token("nightly")).await;
    assert_eq!(ping, 200);
    assert_eq!(installation_rows(server, &database)[..2], before[..2]);
}

/// What a standalone replica under the default installation name says when the
/// database's Applications are not what its manifests declare.
const SHARED_WARNING: &str = "keeps the default installation name \"standalone\"";

/// Two standalone installations that both keep the default name `standalone` on one
/// database are one installation to the database, so the second is not refused. Its
/// replica says at start, before it writes anything, what it would change (the
/// Application it declares that the database lacks, the one both declare with another
/// token) and what that means if the database is another installation's. Replicas of the
/// first, which share its manifests and tokens, are not warned; nor is a replica that
/// names its installation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_standalone_installation_under_the_default_name_is_warned_and_replicas_are_not() {
    use crate::pg_failover::Layout;
    let first = Layout::new(2, &[]);
    let a = first.start(0, &[]).await;
    let b = first.start(1, &[]).await;
    let server = crate::pg::shared();
    let database = first.database().to_string();
    assert_eq!(
        server.psql(&database, "SELECT name FROM hartslag_installation"),
        "standalone"
    );
    for replica in [&a, &b] {
        let log = replica.log_text();
        assert!(!log.contains(SHARED_WARNING), "{log}");
    }

    // Another installation: its own manifests (`shop` too, and `blog`) and tokens.
    let second = Layout::on(1, &[], Some(first.url().to_string()));
    std::fs::write(
        second.manifests().join("blog.yaml"),
        crate::helpers::app_manifest("blog", "UTC"),
    )
    .unwrap();
    let before = installation_rows(server, &database);
    let mut c = second.start(0, &[]).await;
    let log = c.log_text();
    for said in [
        SHARED_WARNING,
        "these manifests declare and the database does not hold: default/blog",
        "with another token than this replica's, which the leader would replace: default/shop",
        "give each installation a database of its own and its own --installation",
    ] {
        assert!(log.contains(said), "{said:?} missing:\n{log}");
    }
    assert!(
        !log.contains("the leader would revoke the tokens of"),
        "{log}"
    );
    assert!(c.terminate(Duration::from_secs(30)).is_some());
    // It followed (the first installation leads) and changed nothing.
    assert_eq!(installation_rows(server, &database)[..2], before[..2]);

    // Without `shop` in its manifests, it says the leader would revoke `shop`'s tokens.
    std::fs::remove_file(second.manifests().join("app.yaml")).unwrap();
    let mut c = second.start(0, &[]).await;
    let log = c.log_text();
    for said in [
        SHARED_WARNING,
        "these manifests do not declare, and the leader would revoke the tokens of: default/shop",
        "these manifests declare and the database does not hold: default/blog",
    ] {
        assert!(log.contains(said), "{said:?} missing:\n{log}");
    }
    assert!(c.terminate(Duration::from_secs(30)).is_some());
    assert_eq!(installation_rows(server, &database)[..2], before[..2]);

    // Named on purpose: not warned.
    let mut named = second.start(0, &["--installation", "standalone"]).await;
    let log = named.log_text();
    assert!(!log.contains(SHARED_WARNING), "{log}");
    assert!(named.terminate(Duration::from_secs(30)).is_some());
}
