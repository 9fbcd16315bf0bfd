//! Replicas that do not lead, on PostgreSQL: their pings go to the relay (answered once
//! committed, refused with a reason while the database is down), every replica hears of a
//! post at once, and the applications the leader defines authenticate on them.

use std::path::Path;
use std::time::Duration;

use hartslag::core::metrics::MetricRegistry;
use hartslag::core::monitor::engine::{DefRecord, MonitorDef, PingInput, PingKind, PingOutcome};
use hartslag::core::replica::PingError;
use hartslag::core::storage::{Fence, Storage, StorageError};
use hartslag::core::token::TokenHash;
use hartslag::core::{Services, ServicesConfig};

use crate::helpers::wait_for;

fn ping(body: &str) -> PingInput {
    PingInput {
        kind: PingKind::Success,
        exit_code: None,
        source: Some("10.0.0.7".into()),
        user_agent: Some("curl/8".into()),
        body: Some(body.into()),
        rid: Some("run-1".into()),
        stopped_alert: None,
    }
}

async fn storage(url: &str) -> Storage {
    hartslag::core::store_pg::open(&url.parse().unwrap(), &mut MetricRegistry::default())
        .await
        .unwrap()
}

/// The services over `dir` and the database at `url`, leading while `fence` says so.
async fn services(dir: &Path, url: &str, fence: Fence) -> Services {
    let config = ServicesConfig {
        data_dir: dir.to_path_buf(),
        cache_bytes: 8 << 20,
        ping_history: 10,
        outbox: Default::default(),
        limits: Default::default(),
        hold_deadlines: false,
        top_events: 10,
        database: Some(url.parse().unwrap()),
        installation: "standalone".into(),
        fence,
    };
    Services::open(&config, &mut MetricRegistry::default())
        .await
        .unwrap()
}

fn monitor(name: &str, paused: bool) -> MonitorDef {
    let now = jiff::Timestamp::now();
    DefRecord {
        paused,
        ..DefRecord::sample(&format!("default/{name}"), 3600, now)
    }
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_pings_are_read_in_the_order_posted_and_every_replica_hears_of_them() {
    let url = crate::pg::shared().database("relay_order");
    let (poster, leader) = (storage(&url).await, storage(&url).await);
    let (poster, leader) = (poster.relay.unwrap(), leader.relay.unwrap());
    let heard = leader.signal();
    // The signal raised when its listening connection came up.
    tokio::time::timeout(Duration::from_secs(10), heard.notified())
        .await
        .expect("the listener never connected");

    // Kept to the microsecond.
    let before =
        jiff::Timestamp::from_microsecond(jiff::Timestamp::now().as_microsecond()).unwrap();
    let first = poster
        .post("default/a".into(), before, ping("one"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), heard.notified())
        .await
        .expect("the leader's replica did not hear of the post");
    let second = poster
        .post("default/b".into(), before, ping("two"))
        .await
        .unwrap();
    assert!(second > first);

    let taken = leader.take(0, 10).await.unwrap();
    let seen: Vec<_> = taken.iter().map(|p| (p.id, p.key.as_str())).collect();
    assert_eq!(seen, vec![(first, "default/a"), (second, "default/b")]);
    assert_eq!(taken[0].input, ping("one"));
    assert_eq!(taken[0].at, before);
    let after_first = leader.take(first, 10).await.unwrap();
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].id, second);
    assert_eq!(leader.take(0, 1).await.unwrap().len(), 1, "the limit");

    // Posted at once (one transaction or a few): each is answered with its own number.
    let posts = (0..50).map(|i| {
        let poster = poster.clone();
        async move {
            let key = format!("default/m{i}");
            (
                poster
                    .post(key.clone(), before, ping("burst"))
                    .await
                    .unwrap(),
                key,
            )
        }
    });
    let answered = futures::future::join_all(posts).await;
    let taken = leader.take(second, 100).await.unwrap();
    let mut stored: Vec<_> = taken.into_iter().map(|p| (p.id, p.key)).collect();
    let mut answered = answered;
    answered.sort();
    stored.sort();
    assert_eq!(answered, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_lead_answers_a_ping_once_it_is_in_the_relay() {
    let server = hartslag_pg_server();
    let url = server.database("relay_follower");
    let dir = tempfile::tempdir().unwrap();
    let fence = Fence::sole();
    let core = services(dir.path(), &url, fence.clone()).await;
    core.engine.upsert(monitor("a", false)).await.unwrap();
    core.engine.upsert(monitor("held", true)).await.unwrap();
    fence.depose();

    assert_eq!(
        core.ping("default/a", ping("x")).await.unwrap(),
        PingOutcome::Ok
    );
    let paused = core.ping("default/held", ping("y")).await.unwrap();
    assert_eq!(paused, PingOutcome::Paused);
    assert!(matches!(
        core.ping("default/none", ping("z")).await,
        Err(PingError::NotFound)
    ));
    // In the relay, committed; not applied here.
    let rows = server.psql(
        "relay_follower",
        "SELECT monitor || ' ' || (ping->>'body') FROM hartslag_ping_relay ORDER BY id",
    );
    assert_eq!(rows, "default/a x\ndefault/held y");
    assert_eq!(core.engine.get("default/a").unwrap().state.pings, 0);
    // A management change is refused on this replica.
    let refused = core.engine.upsert(monitor("b", false)).await.unwrap_err();
    assert_eq!(refused.to_string(), "this replica does not lead; retry");

    // The database stops: the ping is refused with a reason, within seconds.
    server.stop();
    let started = std::time::Instant::now();
    match core.ping("default/a", ping("lost")).await {
        Err(PingError::Storage(e @ StorageError::Unavailable(_))) => {
            assert!(e.to_string().contains("database"), "{e}")
        }
        other => panic!("a ping the database could not take was answered {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    server.resume();
    let again = wait_for(
        "the relay to take pings again",
        Duration::from_secs(30),
        || {
            let core = core.clone();
            async move { core.ping("default/a", ping("back")).await.ok() }
        },
    )
    .await;
    assert_eq!(again, PingOutcome::Ok);
}

/// A server of the test's own: the test stops it.
fn hartslag_pg_server() -> crate::pg::PgServer {
    crate::pg::PgServer::start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_the_leader_defines_authenticates_on_a_replica_that_does_not_lead() {
    let url = crate::pg::shared().database("relay_apps");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = services(a.path(), &url, Fence::sole()).await;
    let follower = services(b.path(), &url, Fence::follower()).await;
    assert!(
        follower
            .registry
            .application_for_token("shop-token")
            .is_none()
    );

    let spec = hartslag::core::spec::ApplicationSpec::default();
    let token = TokenHash::of("shop-token");
    leader
        .registry
        .upsert_application("default", "shop", spec, token)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let app = wait_for(
        "the follower to know the application",
        Duration::from_secs(5),
        || {
            let found = follower.registry.application_for_token("shop-token");
            async move { found }
        },
    )
    .await;
    assert_eq!(app.key, "default/shop");
    let took = started.elapsed();

    // Removed by the leader: its token stops working on the follower too.
    leader
        .registry
        .remove_application("default", "shop", false)
        .await
        .unwrap();
    wait_for(
        "the follower to forget the application",
        Duration::from_secs(5),
        || {
            let gone = follower
                .registry
                .application_for_token("shop-token")
                .is_none();
            async move { gone.then_some(()) }
        },
    )
    .await;
    eprintln!("the follower knew the application after {took:?}");
}

/// Waits until `check` holds, failing after `within`.
async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    wait_for(what, within, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
    started.elapsed()
}

fn relay_rows(server: &crate::pg::PgServer, db: &str) -> String {
    server.psql(db, "SELECT count(*) FROM hartslag_ping_relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_on_a_follower_reaches_the_leader_and_the_follower_shows_what_the_leader_made_of_it()
{
    let server = crate::pg::shared();
    let url = server.database("relay_round_trip");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = services(a.path(), &url, Fence::sole()).await;
    let follower = services(b.path(), &url, Fence::follower()).await;
    assert!(leader.leads() && !follower.leads());

    // Created on the leader: the follower shows it and its token opens it there.
    let mut def = monitor("job", false);
    def.interval_secs = 2;
    leader.engine.upsert(def).await.unwrap();
    let shown = until(
        "the follower to show the monitor",
        Duration::from_secs(5),
        || {
            follower.registry.authenticate("job").is_some()
                && follower.engine.get("default/job").is_some()
        },
    )
    .await;
    eprintln!("a monitor the leader created was shown by the follower after {shown:?}");

    // A ping on the follower: relayed, applied by the leader, shown by the follower.
    assert_eq!(
        follower.ping("default/job", ping("relayed")).await.unwrap(),
        PingOutcome::Ok
    );
    let applied = until(
        "the leader to apply the relayed ping",
        Duration::from_secs(5),
        || {
            leader
                .engine
                .get("default/job")
                .is_some_and(|m| m.state.pings == 1)
        },
    )
    .await;
    eprintln!("the leader applied the relayed ping after {applied:?}");
    let job = leader.engine.get("default/job").unwrap();
    assert_eq!(job.state.state, hartslag::core::monitor::state::State::Up);
    let history = leader.engine.pings(job.num, 10).await.unwrap();
    assert_eq!(history[0].body.as_deref(), Some("relayed"));
    assert_eq!(
        relay_rows(server, "relay_round_trip"),
        "0",
        "the round removed it"
    );

    // The leader's deadline makes it Late, then Down: the follower shows each within 2 s.
    let mut changes = follower.engine.subscribe();
    let down = hartslag::core::monitor::state::State::Down;
    until("the leader to see it Down", Duration::from_secs(15), || {
        leader
            .engine
            .get("default/job")
            .is_some_and(|m| m.state.state == down)
    })
    .await;
    let lag = until(
        "the follower to show it Down",
        Duration::from_secs(2),
        || {
            follower
                .engine
                .get("default/job")
                .is_some_and(|m| m.state.state == down)
        },
    )
    .await;
    eprintln!("the follower showed Down {lag:?} after the leader");
    let told = wait_for(
        "the follower to tell subscribers",
        Duration::from_secs(2),
        || {
            let next = changes.try_recv().ok().filter(|c| c.to == down);
            async move { next }
        },
    )
    .await;
    assert_eq!(told.key, "default/job");
    assert_eq!(
        follower.engine.get("default/job"),
        leader.engine.get("default/job")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_relayed_while_no_leader_applies_it_is_applied_once_by_the_next() {
    let server = crate::pg::shared();
    let url = server.database("relay_next_leader");
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let first_fence = Fence::sole();
    let first = services(a.path(), &url, first_fence.clone()).await;
    first.engine.upsert(monitor("job", false)).await.unwrap();
    let follower = services(b.path(), &url, Fence::follower()).await;
    until(
        "the follower to show the monitor",
        Duration::from_secs(5),
        || follower.engine.get("default/job").is_some(),
    )
    .await;
    // The leader dies before it applies the ping (its pump stops with its leadership).
    first_fence.depose();
    follower
        .ping("default/job", ping("in flight"))
        .await
        .unwrap();
    tokio::time::sleep(hartslag::core::replica::POLL * 2).await;
    assert_eq!(relay_rows(server, "relay_next_leader"), "1");
    assert_eq!(first.engine.get("default/job").unwrap().state.pings, 0);

    // The next leader takes over and applies it, once.
    let next = services(c.path(), &url, Fence::sole()).await;
    until(
        "the next leader to apply it",
        Duration::from_secs(5),
        || {
            next.engine
                .get("default/job")
                .is_some_and(|m| m.state.pings == 1)
        },
    )
    .await;
    assert_eq!(relay_rows(server, "relay_next_leader"), "0");
    tokio::time::sleep(hartslag::core::replica::POLL * 2).await;
    assert_eq!(next.engine.get("default/job").unwrap().state.pings, 1);
    let num = next.engine.get("default/job").unwrap().num;
    assert_eq!(next.engine.pings(num, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_follower_answers_pings_from_the_relay_and_refuses_changes_with_retry_after() {
    use crate::helpers::{InProcess, app_manifest, heartbeat_manifest, read_token};
    let server = crate::pg::shared();
    let url = server.database("relay_http");
    let files = vec![
        ("a.yaml", app_manifest("team", "UTC")),
        (
            "hb.yaml",
            heartbeat_manifest("nightly", "1h", "5m", "  applicationRef:\n    name: team\n"),
        ),
    ];
    let s = InProcess::start_with(&files, |c| c.database_url = Some(url.parse().unwrap())).await;
    // Declared while it led; from now on it does not.
    s.core.replica.fence().depose();
    let c = reqwest::Client::new();
    let token = read_token(&s.data, "heartbeat", "nightly");
    let pinged = c
        .post(format!("{}/v1/heartbeats/{token}/ping", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(pinged.status(), 200);
    assert_eq!(pinged.text().await.unwrap(), r#"{"status":"ok"}"#);
    assert_eq!(relay_rows(server, "relay_http"), "1");
    let unknown = c
        .get(format!("{}/v1/heartbeats/hsh_nope/ping", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let api = format!("{}/v1/heartbeats", s.base);
    let key = s.app_token("team");
    let listed = c.get(&api).bearer_auth(&key).send().await.unwrap();
    assert_eq!(listed.status(), 200, "reads are served by every replica");
    let created = c
        .post(&api)
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "new", "interval_secs": 3600}));
    // Every change is refused alike, in the API's usual error shape (one `error` field).
    let id = s.core.engine.get("default/nightly").unwrap().def.id;
    let one = format!("{api}/{id}");
    let changes = [
        created,
        c.patch(&one)
            .bearer_auth(&key)
            .json(&serde_json::json!({"grace_secs": 60})),
        c.post(format!("{one}/pause")).bearer_auth(&key),
        c.post(format!("{one}/resume")).bearer_auth(&key),
        c.delete(&one).bearer_auth(&key),
    ];
    for change in changes {
        let res = change.send().await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.headers()["content-type"], "application/json");
        let body: serde_json::Value = res.json().await.unwrap();
        let expected = serde_json::json!({"error": "this replica does not lead; retry"});
        assert_eq!(body, expected);
    }
    let read = c.get(&one).bearer_auth(&key).send().await.unwrap();
    assert_eq!(read.status(), 200, "reads are served by every replica");
    // Unauthenticated, it is told so first.
    let anonymous = c.post(&api).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_ping_the_leader_cannot_read_is_dropped_and_those_after_it_are_applied() {
    let server = crate::pg::shared();
    let url = server.database("relay_unreadable");
    let dir = tempfile::tempdir().unwrap();
    let leader = services(dir.path(), &url, Fence::sole()).await;
    leader.engine.upsert(monitor("job", false)).await.unwrap();
    let good = serde_json::to_string(&ping("after")).unwrap();
    server.psql(
        "relay_unreadable",
        &format!(
            "INSERT INTO hartslag_ping_relay (monitor, at, ping) VALUES \
             ('default/job', 0, '{{\"kind\": \"from-a-newer-release\"}}'), \
             ('default/job', 0, '{good}'); NOTIFY hartslag_relay"
        ),
    );
    until("the relay to be drained", Duration::from_secs(10), || {
        leader
            .engine
            .get("default/job")
            .is_some_and(|m| m.state.pings == 1)
    })
    .await;
    assert_eq!(relay_rows(server, "relay_unreadable"), "0");
    let num = leader.engine.get("default/job").unwrap().num;
    let history = leader.engine.pings(num, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].body.as_deref(), Some("after"));
}

/// Hands `round` to `store` and waits for what became of it.
async fn commit(
    store: &dyn hartslag::core::storage::MonitorStore,
    round: hartslag::core::storage::MonitorRound,
) -> Result<(), hartslag::core::storage::StorageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.commit_round(round, Box::new(move |r| drop(tx.send(r))));
    rx.await.expect("the round's callback was called")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_applying_a_relayed_ping_another_round_applied_is_refused() {
    use hartslag::core::storage::{MonitorRound, StorageError};
    let server = crate::pg::shared();
    let url = server.database("relay_twice");
    let relay = storage(&url).await.relay.expect("PostgreSQL relays pings");
    let fence = Fence::follower();
    let parsed = url.parse().unwrap();
    let stores = hartslag::core::store_pg::open_monitors(&parsed, fence.clone())
        .await
        .unwrap();
    hartslag::core::store_pg::lead_alone_at_start(&parsed, &fence)
        .await
        .unwrap();
    let monitors = stores.storage().monitors;
    let id = relay
        .post("default/job".into(), jiff::Timestamp::now(), ping("once"))
        .await
        .unwrap();
    let applying = || MonitorRound {
        relayed: vec![id],
        ..Default::default()
    };
    let first = commit(monitors.as_ref(), applying()).await;
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(relay_rows(server, "relay_twice"), "0");
    let again = commit(monitors.as_ref(), applying()).await;
    assert!(
        matches!(&again, Err(StorageError::NotStored(m)) if m.contains("applied by another round")),
        "{again:?}"
    );
}

/// What a client of the HTTP API is told when the database fails a replica: a follower's
/// ping during a database outage is refused naming the database as unreachable (its log
/// alone said so), and once a newer release migrated the schema, pings on a follower and
/// on the leader, and a monitor change on either, are refused naming the schema's version
/// and this binary's, not with "retry" (no retry helps until an operator acts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_refused_ping_or_change_names_what_failed_in_the_database() {
    use crate::helpers::{InProcess, app_manifest, heartbeat_manifest, read_token};
    let server = hartslag_pg_server();
    let url = server.database("relay_refusals");
    let files = vec![
        ("a.yaml", app_manifest("team", "UTC")),
        (
            "hb.yaml",
            heartbeat_manifest("nightly", "1h", "5m", "  applicationRef:\n    name: team\n"),
        ),
    ];
    let s = InProcess::start_with(&files, |c| c.database_url = Some(url.parse().unwrap())).await;
    let fence = s.core.replica.fence().clone();
    let generation = fence.generation().unwrap();
    fence.depose();
    let c = reqwest::Client::new();
    let token = read_token(&s.data, "heartbeat", "nightly");
    let ping_url = format!("{}/v1/heartbeats/{token}/ping", s.base);
    let ping = || async {
        let res = c.post(&ping_url).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    assert_eq!(ping().await.0, 200);

    server.stop();
    let (status, body) = ping().await;
    assert_eq!(status, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        error["error"],
        "the ping could not be recorded: the database is unreachable or failing; retry later"
    );
    server.resume();
    wait_for(
        "pings to be taken again",
        Duration::from_secs(30),
        || async { (ping().await.0 == 200).then_some(()) },
    )
    .await;

    server.psql(
        "relay_refusals",
        "INSERT INTO hartslag_schema_history (version, name, applied_on, checksum) \
         VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
    );
    let newer = "the database schema is at version 999, newer than this binary knows";
    let (status, body) = wait_for("pings to be refused", Duration::from_secs(20), || async {
        let (status, body) = ping().await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("the ping could not be recorded: {newer}")),
        "{body}"
    );
    let api = format!("{}/v1/heartbeats", s.base);
    let key = s.app_token("team");
    let create = || async {
        let res = c
            .post(&api)
            .bearer_auth(&key)
            .json(&serde_json::json!({"name": "new", "interval_secs": 3600}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    for role in ["a follower", "the leader"] {
        let (status, body) = create().await;
        assert_eq!(status, 503, "{role}: {body}");
        assert!(
            body.contains(&format!("the heartbeat cannot be changed: {newer}")),
            "{role}: {body}"
        );
        fence.lead(generation);
    }
    let (status, body) = ping().await;
    assert_eq!(status, 503, "the leader: {body}");
    assert!(
        body.contains(&format!("the ping could not be recorded: {newer}")),
        "the leader: {body}"
    );
    s.stop().await;
}
