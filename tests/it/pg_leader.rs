//! The leader row fences leader-only writes: a take-over makes every later check by the
//! deposed leader fail (and tells its fence), and waits for the deposed leader's
//! transaction in flight instead of overtaking it.

use std::time::Duration;

use hartslag::core::storage::{Fence, StorageError};
use hartslag::core::store_pg::leader;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_fences_the_deposed_leader_and_waits_for_its_transaction() {
    let server = crate::pg::shared();
    let url = server.database("leader_fence");
    // The schema, migrations included.
    let url_parsed = url.parse().unwrap();
    drop(
        hartslag::core::store_pg::open(
            &url_parsed,
            &mut hartslag::core::metrics::MetricRegistry::default(),
        )
        .await
        .unwrap(),
    );
    let mut first = connect(&url).await;
    let second = connect(&url).await;

    let old = Fence::follower();
    let refused = leader::check(&first, &old).await.unwrap();
    assert!(
        matches!(refused, Err(StorageError::Fenced(_))),
        "{refused:?}"
    );
    old.lead(leader::take_over(&first, "replica-a").await.unwrap());

    // The old leader is inside a leader-only transaction when the new one takes over.
    let tx = first.transaction().await.unwrap();
    leader::check(&tx, &old).await.unwrap().unwrap();
    let take = tokio::spawn(async move { leader::take_over(&second, "replica-b").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !take.is_finished(),
        "the take-over overtook a transaction in flight"
    );
    tx.commit().await.unwrap();
    let new_generation = tokio::time::timeout(Duration::from_secs(10), take)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(Some(new_generation), old.generation().map(|g| g + 1));

    // Every check the deposed leader makes from now on is refused, and names who leads.
    let refused = leader::check(&first, &old).await.unwrap();
    match refused {
        Err(StorageError::Fenced(why)) => assert!(why.contains("replica-b"), "{why}"),
        other => panic!("the deposed leader passed the check: {other:?}"),
    }
    assert_eq!(old.generation(), None, "the fence was not told");
}

/// An elector on `url` with quick retries.
fn elector(url: &str, who: &str) -> Box<hartslag::core::store_pg::elector::AdvisoryLock> {
    use hartslag::core::store_pg::elector::{AdvisoryLock, Timing};
    let timing = Timing {
        retry_every: Duration::from_millis(200),
        ..Timing::default()
    };
    Box::new(AdvisoryLock::new(url.parse().unwrap(), who.into(), timing))
}

async fn migrated(name: &str) -> String {
    let url = crate::pg::shared().database(name);
    drop(
        hartslag::core::store_pg::open(
            &url.parse().unwrap(),
            &mut hartslag::core::metrics::MetricRegistry::default(),
        )
        .await
        .unwrap(),
    );
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_elector_leads_at_a_time_and_the_next_leads_under_a_larger_generation() {
    use hartslag::core::leadership::Elector;
    let url = migrated("leader_elect").await;
    let first = elector(&url, "replica-a").campaign().await.unwrap();
    let second = tokio::spawn(elector(&url, "replica-b").campaign());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.is_finished(), "two electors lead at once");
    let g = first.generation();
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the lock was not passed on")
        .unwrap()
        .unwrap();
    assert_eq!(second.generation(), g + 1);
    let client = connect(&url).await;
    let holder: String = client
        .query_one("SELECT holder FROM hartslag_leader", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(holder, "replica-b");
}

/// The advisory locks held in the current database.
const LOCKS: &str = "FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lock_session_ends_takes_it_back_unless_another_took_over() {
    use hartslag::core::leadership::Role;
    let url = migrated("leader_regain").await;
    let admin = connect(&url).await;
    // Ends the session holding the lock, as a database restart or a network cut would.
    let end_holder = || async {
        admin
            .execute(&format!("SELECT pg_terminate_backend(pid) {LOCKS}"), &[])
            .await
            .unwrap()
    };
    let role = Role::new(
        Fence::follower(),
        &mut hartslag::core::metrics::MetricRegistry::default(),
    );
    let mut term = role.campaign(elector(&url, "replica-a")).await.unwrap();
    role.lead(&term);
    // Nobody else wants the lock: it takes it back and leads on.
    assert_eq!(end_holder().await, 1);
    let lost = tokio::time::timeout(Duration::from_secs(6), role.until_lost(&mut term)).await;
    assert!(lost.is_err(), "gave up a lock nobody else took: {lost:?}");
    let held: i64 = admin
        .query_one(&format!("SELECT count(*) {LOCKS}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1, "the lock was not taken back");
    assert!(role.leads());

    // This time another replica takes the lock and the leader row first: the leader
    // learns it lost instead of leading on. The holder tries to take its lock back at
    // once, on a new connection; one already open and trying without a pause gets there
    // first.
    let other = connect(&url).await;
    let key = hartslag::core::store_pg::elector::LOCK_KEY;
    end_holder().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let row = other
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .unwrap();
        if row.get::<_, bool>(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never free"
        );
    }
    let successor = leader::take_over(&other, "replica-b").await.unwrap();
    assert_eq!(successor, term.generation() + 1);
    let reason = tokio::time::timeout(Duration::from_secs(15), role.until_lost(&mut term))
        .await
        .expect("the deposed leader never learned it lost");
    assert!(reason.contains("another replica"), "{reason}");
    assert!(!role.leads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_busy_taking_office_past_the_idle_limit_keeps_its_lock() {
    use hartslag::core::leadership::Elector;
    use hartslag::core::store_pg::elector::{AdvisoryLock, Timing};
    let url = migrated("leader_busy").await;
    let timing = Timing {
        retry_every: Duration::from_millis(200),
        check_every: Duration::from_millis(500),
        check_within: Duration::from_secs(3),
        idle_limit: Duration::from_secs(2),
        ..Timing::default()
    };
    let elector = AdvisoryLock::new(url.parse().unwrap(), "replica-a".into(), timing);
    let term = Box::new(elector).campaign().await.unwrap();
    // A new leader catches up and declares its manifests before it watches its term;
    // that may take longer than the server leaves an idle session alone.
    tokio::time::sleep(timing.idle_limit * 2).await;
    let admin = connect(&url).await;
    let held = || async {
        let row = admin
            .query_one(&format!("SELECT count(*) {LOCKS}"), &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert_eq!(
        held().await,
        1,
        "the lock's session ended while its holder was busy"
    );
    // The lock goes with the term.
    drop(term);
    crate::helpers::wait_for("the lock to be freed", Duration::from_secs(10), || async {
        (held().await == 0).then_some(())
    })
    .await;
}
