//! The events store end to end: batches as the writer commits them, read back through
//! export, counts and retention.

use jiff::Timestamp;

use super::*;
use crate::core::store::keys::{self, EventValue, Tally};
use crate::core::store::{Store, StoreOptions};

fn ev(name: &str, user: Option<i64>) -> EventValue {
    EventValue {
        event: name.into(),
        weight: 1,
        user_id: user,
    }
}

fn at(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap()
}

/// Writes one group commit's worth of events, as the ingest writer does.
fn batch(store: &Store, events: &[(u64, i64, &str)]) {
    let writes: Vec<EventWrite> = events
        .iter()
        .map(|(app, micros, name)| EventWrite {
            app: *app,
            at: at(*micros),
            date: 20240101,
            value: ev(name, None),
            idempotency: None,
            name_limit: u32::MAX,
        })
        .collect();
    let refs: Vec<&EventWrite> = writes.iter().collect();
    let (w, _) = store.event_writes(&refs, Timestamp::now()).unwrap();
    store.committer().log_blocking(w).unwrap();
}

fn names(store: &Store, app: u64, filter: ExportFilter) -> Vec<(i64, String)> {
    store
        .export(app, filter)
        .map(|r| {
            let e = r.unwrap();
            (e.at.as_microsecond(), e.value.event)
        })
        .collect()
}

const T: i64 = 1_700_000_000_000_000;

#[tokio::test]
async fn export_merges_overlapping_blocks_into_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    // Batch 1 spans 0.9 s; batch 2 lands inside it; app 2 must not leak into app 1.
    batch(
        &store,
        &[(1, T + 900_000, "c"), (1, T, "a"), (2, T + 1, "other")],
    );
    batch(&store, &[(1, T + 500_000, "b"), (1, T + 900_000, "c2")]);
    // A value written before blocks existed (one event per key) still reads.
    store
        .events
        .insert(
            keys::event_key(1, T + 700_000, u64::MAX),
            ev("old", Some(7)).encode(),
        )
        .unwrap();
    // Out of the span of the first block: starts a block of its own.
    batch(&store, &[(1, T + 3_000_000, "d"), (1, T - 5, "z")]);
    assert_eq!(
        names(&store, 1, ExportFilter::default()),
        vec![
            (T - 5, "z".to_string()),
            (T, "a".into()),
            (T + 500_000, "b".into()),
            (T + 700_000, "old".into()),
            (T + 900_000, "c".into()),
            (T + 900_000, "c2".into()),
            (T + 3_000_000, "d".into()),
        ]
    );
    assert_eq!(store.event_count(1).unwrap(), 7);
    assert_eq!(store.event_count(2).unwrap(), 1);
    // Bounds that cut through blocks.
    let f = ExportFilter {
        from: Some(at(T + 500_000)),
        to: Some(at(T + 900_000)),
        ..Default::default()
    };
    assert_eq!(
        names(&store, 1, f),
        vec![(T + 500_000, "b".into()), (T + 700_000, "old".into())]
    );
    let f = ExportFilter {
        user_id: Some(7),
        ..Default::default()
    };
    assert_eq!(names(&store, 1, f), vec![(T + 700_000, "old".into())]);
    assert_eq!(store.last_event_at(1).unwrap(), Some(at(T + 3_000_000)));
}

#[tokio::test]
async fn newest_event_may_sit_in_an_earlier_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    batch(&store, &[(1, T, "a"), (1, T + 800_000, "newest")]);
    batch(&store, &[(1, T + 100_000, "b")]);
    assert_eq!(store.last_event_at(1).unwrap(), Some(at(T + 800_000)));
    assert_eq!(store.last_event_at(3).unwrap(), None);
}

#[tokio::test]
async fn retention_cuts_through_a_block_and_keeps_its_later_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    batch(&store, &[(1, T - 10_000_000, "old")]);
    batch(
        &store,
        &[(1, T - 300_000, "before"), (1, T + 200_000, "after")],
    );
    batch(&store, &[(1, T - 100, "just-before")]);
    assert_eq!(store.purge_events_before(1, at(T)).unwrap(), 3);
    assert_eq!(
        names(&store, 1, ExportFilter::default()),
        vec![(T + 200_000, "after".to_string())]
    );
    assert_eq!(store.purge_events_before(1, at(T)).unwrap(), 0);
    // Totals are kept when raw events go.
    let total = store
        .events
        .get(keys::total_key(1, None, "before"))
        .unwrap()
        .map(|v| Tally::decode(&v));
    assert_eq!(total.map(|t| t.count), Some(1));
}

#[tokio::test]
async fn an_idempotency_key_answers_for_24_hours_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let idem = |fp: u8| Idempotency {
        key: [7; 32],
        fingerprint: [fp; 32],
    };
    let write = |fp: u8| EventWrite {
        app: 1,
        at: at(T),
        date: 20231114,
        value: ev("e", None),
        idempotency: Some(idem(fp)),
        name_limit: u32::MAX,
    };
    let run = |now: Timestamp, ws: &[EventWrite]| {
        let refs: Vec<&EventWrite> = ws.iter().collect();
        let (w, outcomes) = store.event_writes(&refs, now).unwrap();
        store.committer().log_blocking(w).unwrap();
        outcomes
    };
    // Late in a UTC day, so the retry lands on the next day's bucket.
    let t0 = Timestamp::from_second(1_700_000_000 - 1_700_000_000 % 86_400 + 86_000).unwrap();
    // Two copies in one batch count once.
    assert_eq!(
        run(t0, &[write(1), write(1), write(2)]),
        vec![Outcome::Stored, Outcome::Replayed, Outcome::KeyReused]
    );
    let hours = |h: i64| t0.checked_add(jiff::SignedDuration::from_hours(h)).unwrap();
    assert_eq!(run(hours(23), &[write(1)]), vec![Outcome::Replayed]);
    assert_eq!(run(hours(23), &[write(3)]), vec![Outcome::KeyReused]);
    assert_eq!(store.event_count(1).unwrap(), 1);
    // Past the window the key is new again.
    assert_eq!(run(hours(25), &[write(3)]), vec![Outcome::Stored]);
    assert_eq!(store.event_count(1).unwrap(), 2);
    // Expiry drops whole days before yesterday: the first record goes, the new stays.
    assert_eq!(store.purge_idempotency(1, hours(50)).unwrap(), 1);
    assert_eq!(run(hours(26), &[write(3)]), vec![Outcome::Replayed]);
    assert_eq!(store.purge_idempotency(1, hours(80)).unwrap(), 1);
    assert_eq!(run(hours(26), &[write(3)]), vec![Outcome::Stored]);
}

#[tokio::test]
async fn newest_event_time_is_read_without_decoding_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    for _ in 0..5 {
        batch(&store, &[(1, T, "same"), (1, T, "instant")]);
    }
    batch(&store, &[(1, T + 5, "newest"), (1, T - 5, "older")]);
    // Damage every block: the newest time must not need them.
    let prefix = keys::scope_prefix(keys::Family::Event, 1, None);
    for k in store.events.scan_prefix(&prefix).keys() {
        store
            .events
            .insert(k.unwrap(), &b"\x02damaged"[..])
            .unwrap();
    }
    assert_eq!(store.last_event_at(1).unwrap(), Some(at(T + 5)));
}

#[tokio::test]
async fn data_stored_before_the_newest_event_record_gets_one_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        batch(&store, &[(1, T + 7, "newest"), (2, T, "other")]);
        batch(&store, &[(1, T, "a")]);
        for app in [1, 2] {
            store.events.remove(keys::latest_key(app)).unwrap();
        }
        store.flush().await.unwrap();
    }
    // sled's lock goes once the committer's thread has let go of the database.
    let store = loop {
        match Store::open(dir.path(), &StoreOptions::default()) {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let record = |app| store.events.get(keys::latest_key(app)).unwrap();
    assert_eq!(record(1).as_deref(), Some(&(T + 7).to_le_bytes()[..]));
    assert_eq!(record(2).as_deref(), Some(&T.to_le_bytes()[..]));
    assert_eq!(store.last_event_at(1).unwrap(), Some(at(T + 7)));
}

#[tokio::test]
async fn a_new_name_past_the_limit_is_refused_and_known_names_still_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let write = |app: u64, name: &str| EventWrite {
        app,
        at: at(T),
        date: 20231114,
        value: ev(name, None),
        idempotency: None,
        name_limit: 3,
    };
    let run = |ws: &[EventWrite]| {
        let refs: Vec<&EventWrite> = ws.iter().collect();
        let (w, outcomes) = store.event_writes(&refs, Timestamp::now()).unwrap();
        store.committer().log_blocking(w).unwrap();
        outcomes
    };
    use Outcome::{Stored, TooManyNames};
    // Two names in one batch, the third and fourth racing in the next: one wins.
    assert_eq!(
        run(&[write(1, "a"), write(1, "b"), write(1, "a")]),
        vec![Stored; 3]
    );
    assert_eq!(
        run(&[write(1, "c"), write(1, "d"), write(1, "c"), write(2, "d")]),
        vec![Stored, TooManyNames, Stored, Stored]
    );
    // Known names keep counting; the limit is per application.
    assert_eq!(
        run(&[write(1, "a"), write(1, "e")]),
        vec![Stored, TooManyNames]
    );
    assert_eq!(store.event_count(1).unwrap(), 6);
    // After a restart the count is read back from the totals.
    store.names.forget(None);
    assert_eq!(
        run(&[write(1, "f"), write(1, "b")]),
        vec![TooManyNames, Stored]
    );
}

/// Every key and value of a store's events tree.
fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .events
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[tokio::test]
async fn a_bulk_load_stores_what_committed_batches_store() {
    // Batches of varied sizes, two applications, users or none, out-of-order times,
    // and spans that cut blocks by time and by count.
    let batches: Vec<Vec<EventWrite>> = (0..40u32)
        .map(|b| {
            (0..(b * 37 % 300 + 1))
                .map(|i| {
                    let n = i64::from(b * 1000 + i);
                    EventWrite {
                        app: 1 + u64::from(i % 3 == 0),
                        at: at(T + n * 7_919 % 5_000_000 - i64::from(b) * 86_400_000_000),
                        date: 20240101 + b % 3,
                        value: ev(
                            ["login", "buy", "x"][(i % 3) as usize],
                            (i % 4 != 0).then_some(n % 5),
                        ),
                        idempotency: None,
                        name_limit: u32::MAX,
                    }
                })
                .collect()
        })
        .collect();
    let committed_dir = tempfile::tempdir().unwrap();
    let committed = Store::open(committed_dir.path(), &StoreOptions::default()).unwrap();
    for b in &batches {
        let refs: Vec<&EventWrite> = b.iter().collect();
        let (w, _) = committed.event_writes(&refs, Timestamp::now()).unwrap();
        committed.committer().log_blocking(w).unwrap();
    }
    let bulk_dir = tempfile::tempdir().unwrap();
    let bulk = Store::open(bulk_dir.path(), &StoreOptions::default()).unwrap();
    let n = bulk.load_events(batches.clone()).await.unwrap();
    assert_eq!(n, batches.iter().map(Vec::len).sum::<usize>() as u64);
    let (a, b) = (dump(&committed), dump(&bulk));
    assert!(a.len() > 100, "{} keys", a.len());
    assert!(a == b, "the bulk load stored other keys or values");
    assert_eq!(
        bulk.event_count(1).unwrap() + bulk.event_count(2).unwrap(),
        n as usize
    );
}
