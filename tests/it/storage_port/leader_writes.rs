//! What a backend shared by replicas adds to the monitor and outbox contract (PostgreSQL):
//! the leader's writes are fenced, so a deposed leader stores nothing, and a claim it left
//! behind holds the delivery until it runs out, then its successor claims it; a replica that mirrors the monitors reads what each
//! round wrote, in order; and a round deletes the relayed pings it applied.

use hartslag::core::storage::{Fence, MonitorRound, MonitorStore, OutboxStore, StorageError};
use hartslag::core::store_pg::{MonitorChange, PgMonitorStorage, open_monitors};

use super::engine::{
    commit, delivery, key_of, loaded, monitor, ping, pinged, queue, removal, state_only, whole,
};

/// The monitor and outbox stores on `url`, leading from now on (deposing whoever led).
async fn lead(url: &str) -> (PgMonitorStorage, Fence) {
    let url = url.parse().unwrap();
    let fence = Fence::follower();
    let stores = open_monitors(&url, fence.clone()).await.unwrap();
    hartslag::core::store_pg::lead_alone_at_start(&url, &fence)
        .await
        .unwrap();
    (stores, fence)
}

/// A database of the shared server's for this test, by name, and its URL.
fn database(name: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::pg::database_for(&dir.path().join(name));
    let db = url.rsplit('/').next().unwrap().to_string();
    (db, url)
}

fn fenced<T: std::fmt::Debug>(r: Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::Fenced(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_stores_no_round_and_claims_nothing() {
    let (_, url) = database("deposed");
    let (old, old_fence) = lead(&url).await;
    let d = delivery("a", 1);
    queue(&old.storage(), vec![d.clone()]).await;
    let m = monitor(old.monitors.as_ref(), "nightly");

    let (new, _) = lead(&url).await;
    let round = MonitorRound {
        put: vec![m.clone().into()],
        pings: vec![(m.num, ping(1))],
        keep_pings: 10,
        deliveries: vec![delivery("b", 2)],
        ..Default::default()
    };
    assert!(fenced(commit(old.monitors.as_ref(), round).await));
    assert_eq!(
        old_fence.generation(),
        None,
        "the old leader knows it was deposed"
    );
    assert!(fenced(old.outbox.claim(key_of(&d)).await));
    // A later round of the deposed leader fails too, whatever it holds.
    assert!(commit(old.monitors.as_ref(), whole(&m)).await.is_err());

    // Nothing of them is stored: no monitor, no ping, no delivery, no claim.
    let store = new.monitors.as_ref();
    assert!(loaded(store).await.is_empty());
    assert!(store.pings(m.num, 10, 10).await.unwrap().is_empty());
    assert_eq!(
        new.outbox.pending().await.unwrap(),
        vec![(key_of(&d), d.clone())]
    );
    assert!(new.outbox.claim(key_of(&d)).await.unwrap());
}

/// Seconds from the database's clock to delivery `key`'s claim running out.
fn claim_left(db: &str, key: &[u8]) -> f64 {
    let sql = format!(
        "SELECT (claim_expires - (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) \
         / 1e6 FROM hartslag_outbox WHERE key = '\\x{}'",
        hex::encode(key)
    );
    crate::pg::shared().psql(db, &sql).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_its_delivery_until_it_runs_out_even_for_a_new_leader() {
    let (db, url) = database("claims");
    let (old, _) = lead(&url).await;
    let d = delivery("a", 1);
    let key = key_of(&d);
    queue(&old.storage(), vec![d.clone()]).await;
    assert!(old.outbox.claim(key.clone()).await.unwrap());
    assert!(
        !old.outbox.claim(key.clone()).await.unwrap(),
        "claimed twice"
    );
    // By the database's clock, for longer than an attempt may take.
    let left = claim_left(&db, &key);
    let claim_for = hartslag::core::storage::CLAIM_FOR.as_secs_f64();
    assert!(left > claim_for - 5.0 && left <= claim_for, "{left} s left");
    assert!(hartslag::core::storage::ATTEMPT_WITHIN.as_secs_f64() < claim_for - 10.0);

    // The leader stalls mid-attempt and is deposed: its claim still holds, since it may
    // yet send within it, so its successor does not claim the delivery yet.
    let (new, _) = lead(&url).await;
    assert!(
        !new.outbox.claim(key.clone()).await.unwrap(),
        "claimed while held"
    );
    // Once the claim ran out (the stalled attempt gave up unsent by then), it claims
    // the delivery, once.
    crate::pg::shared().psql(
        &db,
        "UPDATE hartslag_outbox SET claim_expires = claim_expires - 60000000",
    );
    assert!(new.outbox.claim(key.clone()).await.unwrap());
    assert!(
        !new.outbox.claim(key.clone()).await.unwrap(),
        "claimed twice"
    );
    // The old attempt cannot finish it.
    let done = hartslag::core::storage::Finished {
        key: key.clone(),
        outcome: "delivered".into(),
        detail: None,
        attempts: 1,
    };
    let history = (d.target.identity(), Default::default());
    let finished = old.outbox.finish(vec![done], history, None).await;
    assert!(fenced(finished));
    assert_eq!(new.outbox.pending().await.unwrap().len(), 1);
    // A retry ends the claim: the next attempt claims at once.
    new.outbox.retry(key.clone(), d.clone()).await.unwrap();
    assert!(new.outbox.claim(key).await.unwrap());
}

/// Records the alerts it was asked to deliver.
#[derive(Default)]
struct Courier(std::sync::Mutex<Vec<String>>);

impl hartslag::core::alert::Deliver for Courier {
    fn deliver<'a>(
        &'a self,
        alert: &'a hartslag::core::alert::message::Alert,
        _target: &'a hartslag::core::alert::message::Target,
    ) -> futures::future::BoxFuture<'a, Result<(), hartslag::core::alert::DeliveryError>> {
        self.0.lock().unwrap().push(alert.id.clone());
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_sends_what_a_stalled_leader_claimed_once_its_claim_ran_out() {
    use hartslag::core::alert::outbox::{Outbox, OutboxConfig};
    let (db, url) = database("claim_takeover");
    let (old, _) = lead(&url).await;
    let d = delivery("a", 1);
    queue(&old.storage(), vec![d.clone()]).await;
    // Claimed just before the leader stalled; its successor's scheduler runs.
    assert!(old.outbox.claim(key_of(&d)).await.unwrap());
    let (new, _) = lead(&url).await;
    let outbox = Outbox::new(new.storage().outbox, OutboxConfig::default());
    let courier = std::sync::Arc::new(Courier::default());
    tokio::spawn(outbox.clone().run(courier.clone()));
    // While the claim holds, the successor tries (every two seconds) and sends nothing.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(courier.0.lock().unwrap().is_empty(), "sent while claimed");
    assert_eq!(new.outbox.pending().await.unwrap().len(), 1, "not lost");

    crate::pg::shared().psql(
        &db,
        "UPDATE hartslag_outbox SET claim_expires = claim_expires - 60000000",
    );
    let within = std::time::Duration::from_secs(10);
    crate::helpers::wait_for("the successor to send it", within, || async {
        (!courier.0.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    crate::helpers::wait_for("its finish", within, || async {
        new.outbox.pending().await.unwrap().is_empty().then_some(())
    })
    .await;
    assert_eq!(*courier.0.lock().unwrap(), vec![d.alert.id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_since_a_version_are_the_rounds_after_it_in_order() {
    let (db, url) = database("changes");
    let (s, _) = lead(&url).await;
    let store = s.monitors.as_ref();
    let (a, b, c) = (
        monitor(store, "a"),
        monitor(store, "b"),
        monitor(store, "c"),
    );
    commit(
        store,
        MonitorRound {
            put: vec![b.clone().into(), c.clone().into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let start = s.monitors.changes_since(0).await.unwrap();
    assert!(!start.full);
    assert_eq!(start.changes.len(), 2);

    commit(store, whole(&a)).await.unwrap();
    commit(store, state_only(&pinged(&b, 3))).await.unwrap();
    commit(store, removal(&c, None)).await.unwrap();
    let after = s.monitors.changes_since(start.version).await.unwrap();
    let versions: Vec<u64> = after.changes.iter().map(MonitorChange::version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(versions[0] > start.version);
    assert_eq!(after.version, versions[2]);
    assert!(!after.full);
    match &after.changes[..] {
        [
            MonitorChange::Put { monitor: put, .. },
            MonitorChange::Put { monitor: state, .. },
            MonitorChange::Removed { key, num, .. },
        ] => {
            assert_eq!(**put, a);
            assert_eq!(**state, pinged(&b, 3));
            assert_eq!((key, *num), (&c.def.key, c.num));
        }
        other => panic!("{other:?}"),
    }
    let none = s.monitors.changes_since(after.version).await.unwrap();
    assert!(none.changes.is_empty());
    assert_eq!(none.version, after.version);

    // Removals pruned past a version: a mirror that old reloads everything.
    crate::pg::shared().psql(
        &db,
        &format!(
            "UPDATE hartslag_monitor_pruned SET version = {}",
            after.version
        ),
    );
    let reload = s.monitors.changes_since(start.version).await.unwrap();
    assert!(reload.full);
    let mut keys: Vec<String> = reload
        .changes
        .iter()
        .map(|c| match c {
            MonitorChange::Put { monitor, .. } => monitor.def.key.clone(),
            MonitorChange::Removed { key, .. } => panic!("a removal in a reload: {key}"),
        })
        .collect();
    keys.sort();
    assert_eq!(keys, [a.def.key.clone(), b.def.key.clone()]);
    assert_eq!(reload.version, after.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_deletes_the_relayed_pings_it_applied() {
    let (db, url) = database("relayed");
    let (s, _) = lead(&url).await;
    let server = crate::pg::shared();
    let ids: Vec<u64> = server
        .psql(
            &db,
            "INSERT INTO hartslag_ping_relay (monitor, at, ping) \
             SELECT 'default/m' || i, i, '{}' FROM generate_series(1, 3) AS i RETURNING id",
        )
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    let m = monitor(s.monitors.as_ref(), "m1");
    let round = MonitorRound {
        put: vec![m.into()],
        relayed: ids[..2].to_vec(),
        ..Default::default()
    };
    commit(s.monitors.as_ref(), round).await.unwrap();
    let left = server.psql(&db, "SELECT id FROM hartslag_ping_relay");
    assert_eq!(left, ids[2].to_string());
}
