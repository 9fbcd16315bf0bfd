//! One batch of events as one transaction: idempotency keys settled against their table
//! (its unique key makes a key hold across replicas), the distinct-names limit checked
//! under a per-application lock, the raw events inserted in one statement, and every
//! rollup the batch touches added to with `INSERT ... ON CONFLICT DO UPDATE`, so replicas
//! committing at once each add their own share and no count is lost.
//!
//! Rollup rows are written in key order, in the same order of tables by every replica, so
//! two transactions wait for each other rather than deadlock; a deadlock or serialization
//! failure the server reports anyway is retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use jiff::Timestamp;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::{Db, db_id, micros};
use crate::core::storage::{EventWrite, IDEMPOTENCY_WINDOW, Outcome, StorageError, hour_of};

/// Attempts of a transaction the server aborted for a deadlock or a serialization failure.
const ATTEMPTS: usize = 3;

/// The advisory lock class under which a transaction that adds event names locks their
/// application, so two replicas cannot both take the last name under the limit.
const NAMES_LOCK: i32 = 0x4853_4e4d; // "HSNM"

type Key = (u64, [u8; 32]);

/// Writes `writes` in one transaction; what became of each, in order. `Err` means nothing
/// was committed, or that the commit's outcome is unknown (the connection broke during
/// it): either way no event of the batch may be acknowledged.
pub(super) async fn commit(
    db: &Db,
    writes: &[&EventWrite],
    now: Timestamp,
) -> Result<Vec<Outcome>, StorageError> {
    let mut attempt = 1;
    loop {
        let mut client = db.client().await?;
        match once(&mut client, writes, now).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => attempt += 1,
            Err(e) => return Err(db.fail(e)),
        }
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

async fn once(
    client: &mut deadpool_postgres::Client,
    writes: &[&EventWrite],
    now: Timestamp,
) -> Result<Vec<Outcome>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let keys = settle_keys(&tx, writes, now).await?;
    let outcomes = settle_names(&tx, writes, &keys).await?;
    let refused: Vec<Key> = writes
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Outcome::TooManyNames)
        .filter_map(|(w, _)| w.idempotency.map(|i| (w.app, i.key)))
        .filter(|k| keys.accepted.contains(k))
        .collect();
    if !refused.is_empty() {
        forget_keys(&tx, &refused).await?;
    }
    let stored: Vec<&EventWrite> = writes
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Outcome::Stored)
        .map(|(w, _)| *w)
        .collect();
    if !stored.is_empty() {
        write_events(&tx, &stored).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// What the idempotency table says about the batch's keys.
struct Keys {
    /// Keys this transaction recorded (new, or past the window): their first event is
    /// stored, later copies in the batch are answered from it.
    accepted: HashSet<Key>,
    /// Keys recorded within the window, with the fingerprint of the event they came with.
    live: HashMap<Key, [u8; 32]>,
    /// The fingerprint of each key's first event in the batch.
    first: HashMap<Key, [u8; 32]>,
}

/// Records the batch's keys that are new (or whose record is past the window) and reads
/// the others'. A key another replica is recording at the same moment makes this wait
/// for that transaction, then counts as recorded.
async fn settle_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[&EventWrite],
    now: Timestamp,
) -> Result<Keys, tokio_postgres::Error> {
    let mut first = HashMap::new();
    for w in writes {
        if let Some(i) = &w.idempotency {
            first.entry((w.app, i.key)).or_insert(i.fingerprint);
        }
    }
    let mut keys = Keys {
        accepted: HashSet::new(),
        live: HashMap::new(),
        first,
    };
    if keys.first.is_empty() {
        return Ok(keys);
    }
    let sorted: BTreeMap<&Key, &[u8; 32]> = keys.first.iter().collect();
    let apps: Vec<i64> = sorted.keys().map(|(a, _)| db_id(*a)).collect();
    let hashes: Vec<&[u8]> = sorted.keys().map(|(_, k)| &k[..]).collect();
    let prints: Vec<&[u8]> = sorted.values().map(|f| &f[..]).collect();
    let since = micros(
        now.checked_sub(IDEMPOTENCY_WINDOW)
            .unwrap_or(Timestamp::MIN),
    );
    let insert = tx
        .prepare_cached(
            "INSERT INTO hartslag_idempotency (app, key, at, fingerprint) \
             SELECT a, k, $3::bigint, f FROM unnest($1::bigint[], $2::bytea[], $4::bytea[]) AS t(a, k, f) \
             ON CONFLICT (app, key) DO UPDATE SET at = EXCLUDED.at, fingerprint = EXCLUDED.fingerprint \
             WHERE hartslag_idempotency.at < $5::bigint \
             RETURNING app, key",
        )
        .await?;
    let rows = tx
        .query(&insert, &[&apps, &hashes, &micros(now), &prints, &since])
        .await?;
    for row in rows {
        if let Some(k) = key_of(row.get(0), row.get(1)) {
            keys.accepted.insert(k);
        }
    }
    if keys.accepted.len() < keys.first.len() {
        let select = tx
            .prepare_cached(
                "SELECT app, key, fingerprint FROM hartslag_idempotency \
                 WHERE (app, key) IN (SELECT * FROM unnest($1::bigint[], $2::bytea[]))",
            )
            .await?;
        for row in tx.query(&select, &[&apps, &hashes]).await? {
            let Some(k) = key_of(row.get(0), row.get(1)) else {
                continue;
            };
            let print: &[u8] = row.get(2);
            if !keys.accepted.contains(&k)
                && let Ok(print) = <[u8; 32]>::try_from(print)
            {
                keys.live.insert(k, print);
            }
        }
    }
    Ok(keys)
}

fn key_of(app: i64, key: &[u8]) -> Option<Key> {
    Some((super::from_db_id(app), key.try_into().ok()?))
}

/// Drops the records of keys whose event was refused after all (too many names).
async fn forget_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: &[Key],
) -> Result<(), tokio_postgres::Error> {
    let apps: Vec<i64> = keys.iter().map(|(a, _)| db_id(*a)).collect();
    let hashes: Vec<&[u8]> = keys.iter().map(|(_, k)| &k[..]).collect();
    let delete = tx
        .prepare_cached(
            "DELETE FROM hartslag_idempotency \
             WHERE (app, key) IN (SELECT * FROM unnest($1::bigint[], $2::bytea[]))",
        )
        .await?;
    tx.execute(&delete, &[&apps, &hashes]).await?;
    Ok(())
}

/// What became of each event: its key's answer, then the names limit. Names the batch
/// would add are checked under a lock on their application, so the count read is the
/// one every replica adds to.
async fn settle_names(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[&EventWrite],
    keys: &Keys,
) -> Result<Vec<Outcome>, tokio_postgres::Error> {
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut firsts_seen: HashSet<Key> = HashSet::new();
    for w in writes {
        let outcome = match &w.idempotency {
            None => Outcome::Stored,
            Some(i) => {
                let k = (w.app, i.key);
                let reference = match keys.live.get(&k) {
                    Some(print) => Some(*print),
                    None if firsts_seen.contains(&k) => keys.first.get(&k).copied(),
                    None => None,
                };
                firsts_seen.insert(k);
                match reference {
                    None => Outcome::Stored,
                    Some(print) if print == i.fingerprint => Outcome::Replayed,
                    Some(_) => Outcome::KeyReused,
                }
            }
        };
        outcomes.push(outcome);
    }
    let wanted: BTreeSet<(u64, &str)> = writes
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Outcome::Stored)
        .map(|(w, _)| (w.app, w.value.event.as_str()))
        .collect();
    let mut known = known_names(tx, &wanted).await?;
    let new_apps: BTreeSet<u64> = wanted
        .iter()
        .filter(|n| !known.contains(*n))
        .map(|(a, _)| *a)
        .collect();
    let mut counts: HashMap<u64, i64> = HashMap::new();
    for app in new_apps {
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1, $2)")
            .await?;
        // Wraps for numbers past i32: two applications sharing a lock only wait longer.
        tx.execute(&lock, &[&NAMES_LOCK, &(app as i32)]).await?;
        let count = tx
            .prepare_cached("SELECT count(*) FROM hartslag_totals WHERE app = $1")
            .await?;
        let n: i64 = tx.query_one(&count, &[&db_id(app)]).await?.get(0);
        counts.insert(app, n);
    }
    // Another replica may have added some of the names while this one waited for the lock.
    if !counts.is_empty() {
        known = known_names(tx, &wanted).await?;
    }
    let mut added: HashSet<(u64, &str)> = HashSet::new();
    for (w, outcome) in writes.iter().zip(outcomes.iter_mut()) {
        if *outcome != Outcome::Stored {
            continue;
        }
        let name = (w.app, w.value.event.as_str());
        if known.contains(&name) || added.contains(&name) {
            continue;
        }
        let count = counts.entry(w.app).or_default();
        if *count >= i64::from(w.name_limit) {
            *outcome = Outcome::TooManyNames;
        } else {
            *count += 1;
            added.insert(name);
        }
    }
    // A copy of an event refused for its name was not stored either: no replay.
    let mut refused: HashSet<Key> = HashSet::new();
    for (w, outcome) in writes.iter().zip(outcomes.iter_mut()) {
        let Some(k) = w.idempotency.map(|i| (w.app, i.key)) else {
            continue;
        };
        match *outcome {
            Outcome::TooManyNames => {
                refused.insert(k);
            }
            Outcome::Replayed if refused.contains(&k) => *outcome = Outcome::TooManyNames,
            _ => {}
        }
    }
    Ok(outcomes)
}

/// Which of `names` (application, event name) the application has already.
async fn known_names<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    names: &BTreeSet<(u64, &'a str)>,
) -> Result<HashSet<(u64, &'a str)>, tokio_postgres::Error> {
    if names.is_empty() {
        return Ok(HashSet::new());
    }
    let apps: Vec<i64> = names.iter().map(|(a, _)| db_id(*a)).collect();
    let events: Vec<&str> = names.iter().map(|(_, e)| *e).collect();
    let select = tx
        .prepare_cached(
            "SELECT app, event FROM hartslag_totals \
             WHERE (app, event) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
        )
        .await?;
    let found: HashSet<(u64, String)> = tx
        .query(&select, &[&apps, &events])
        .await?
        .into_iter()
        .map(|r| (super::from_db_id(r.get(0)), r.get(1)))
        .collect();
    Ok(names
        .iter()
        .filter(|(a, e)| found.contains(&(*a, (*e).to_string())))
        .copied()
        .collect())
}

/// A rollup's key columns and what the batch adds to it.
type Deltas<K> = BTreeMap<K, (i64, i128)>;

fn add<K: Ord>(map: &mut Deltas<K>, key: K, weight: i64) {
    let t = map.entry(key).or_default();
    t.0 += 1;
    t.1 += i128::from(weight);
}

/// The raw events, every rollup they touch and each application's newest event time.
async fn write_events(
    tx: &deadpool_postgres::Transaction<'_>,
    stored: &[&EventWrite],
) -> Result<(), tokio_postgres::Error> {
    let mut daily: Deltas<(i64, i32, &str)> = BTreeMap::new();
    let mut user_daily: Deltas<(i64, i64, i32, &str)> = BTreeMap::new();
    let mut totals: Deltas<(i64, &str)> = BTreeMap::new();
    let mut user_totals: Deltas<(i64, i64, &str)> = BTreeMap::new();
    let mut hourly: Deltas<(i64, i64, &str)> = BTreeMap::new();
    let mut latest: BTreeMap<i64, i64> = BTreeMap::new();
    for w in stored {
        let (app, name, weight) = (db_id(w.app), w.value.event.as_str(), w.value.weight);
        // YYYYMMDD keys fit an integer until the year 214748.
        let day = i32::try_from(w.date).unwrap_or(i32::MAX);
        add(&mut daily, (app, day, name), weight);
        add(&mut totals, (app, name), weight);
        add(&mut hourly, (app, hour_of(w.at), name), weight);
        if let Some(user) = w.value.user_id {
            add(&mut user_daily, (app, user, day, name), weight);
            add(&mut user_totals, (app, user, name), weight);
        }
        let at = latest.entry(app).or_insert(i64::MIN);
        *at = (*at).max(micros(w.at));
    }
    let (daily, user_daily) = (columns3(&daily), columns4(&user_daily));
    let (totals, user_totals) = (columns2(&totals), columns_keyed(&user_totals));
    let hourly = columns_keyed(&hourly);
    let latest_apps: Vec<i64> = latest.keys().copied().collect();
    let latest_ats: Vec<i64> = latest.values().copied().collect();
    let tally = "count = r.count + EXCLUDED.count, weight = r.weight + EXCLUDED.weight";
    let statements = [
        (
            format!(
                "INSERT INTO hartslag_daily AS r (app, day, event, count, weight) \
                 SELECT a, d, e, c, w::numeric FROM unnest($1::bigint[], $5::int[], $2::text[], $3::bigint[], $4::text[]) AS t(a, d, e, c, w) \
                 ON CONFLICT (app, day, event) DO UPDATE SET {tally}"
            ),
            daily.params(&[&daily.days]),
        ),
        (
            format!(
                "INSERT INTO hartslag_user_daily AS r (app, user_id, day, event, count, weight) \
                 SELECT a, u, d, e, c, w::numeric FROM unnest($1::bigint[], $5::bigint[], $6::int[], $2::text[], $3::bigint[], $4::text[]) AS t(a, u, d, e, c, w) \
                 ON CONFLICT (app, user_id, day, event) DO UPDATE SET {tally}"
            ),
            user_daily.params(&[&user_daily.extra, &user_daily.days]),
        ),
        (
            format!(
                "INSERT INTO hartslag_totals AS r (app, event, count, weight) \
                 SELECT a, e, c, w::numeric FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS t(a, e, c, w) \
                 ON CONFLICT (app, event) DO UPDATE SET {tally}"
            ),
            totals.params(&[]),
        ),
        (
            format!(
                "INSERT INTO hartslag_user_totals AS r (app, user_id, event, count, weight) \
                 SELECT a, u, e, c, w::numeric FROM unnest($1::bigint[], $5::bigint[], $2::text[], $3::bigint[], $4::text[]) AS t(a, u, e, c, w) \
                 ON CONFLICT (app, user_id, event) DO UPDATE SET {tally}"
            ),
            user_totals.params(&[&user_totals.extra]),
        ),
        (
            format!(
                "INSERT INTO hartslag_hourly AS r (app, hour, event, count, weight) \
                 SELECT a, h, e, c, w::numeric FROM unnest($1::bigint[], $5::bigint[], $2::text[], $3::bigint[], $4::text[]) AS t(a, h, e, c, w) \
                 ON CONFLICT (app, hour, event) DO UPDATE SET {tally}"
            ),
            hourly.params(&[&hourly.extra]),
        ),
        (
            "INSERT INTO hartslag_latest AS r (app, at) SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
             ON CONFLICT (app) DO UPDATE SET at = GREATEST(r.at, EXCLUDED.at)"
                .to_string(),
            vec![&latest_apps as &(dyn ToSql + Sync), &latest_ats],
        ),
    ];
    // Sent together: tokio-postgres pipelines them on the one connection, and once their
    // statements are prepared the server runs them in this order, in every replica.
    let rollups = statements
        .iter()
        .filter(|(_, params)| !params.is_empty())
        .map(|(sql, params)| run(tx, sql, params));
    let (inserted, added) = futures::future::join(
        insert_events(tx, stored),
        futures::future::try_join_all(rollups),
    )
    .await;
    inserted?;
    added?;
    Ok(())
}

/// One statement of the batch's writes.
async fn run(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, params).await
}

/// The columns of a rollup statement: application, name, count and weight sum (as text),
/// and the key columns between (date, user, hour).
#[derive(Default)]
struct Columns<'a> {
    apps: Vec<i64>,
    names: Vec<&'a str>,
    counts: Vec<i64>,
    weights: Vec<String>,
    days: Vec<i32>,
    /// Users (per-user rollups) or hours (hourly rollups).
    extra: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, app: i64, name: &'a str, tally: (i64, i128)) {
        self.apps.push(app);
        self.names.push(name);
        self.counts.push(tally.0);
        self.weights.push(tally.1.to_string());
    }

    /// The statement's parameters: application, name, count, weight, then the key
    /// columns in between (`$5` on). Empty when there is no row to write.
    fn params<'s>(&'s self, keys: &[&'s (dyn ToSql + Sync)]) -> Vec<&'s (dyn ToSql + Sync)> {
        if self.apps.is_empty() {
            return Vec::new();
        }
        let mut p: Vec<&(dyn ToSql + Sync)> =
            vec![&self.apps, &self.names, &self.counts, &self.weights];
        p.extend_from_slice(keys);
        p
    }
}

fn columns2<'a>(d: &Deltas<(i64, &'a str)>) -> Columns<'a> {
    let mut c = Columns::default();
    for ((app, name), t) in d {
        c.push(*app, name, *t);
    }
    c
}

fn columns3<'a>(d: &Deltas<(i64, i32, &'a str)>) -> Columns<'a> {
    let mut c = Columns::default();
    for ((app, day, name), t) in d {
        c.push(*app, name, *t);
        c.days.push(*day);
    }
    c
}

fn columns4<'a>(d: &Deltas<(i64, i64, i32, &'a str)>) -> Columns<'a> {
    let mut c = Columns::default();
    for ((app, user, day, name), t) in d {
        c.push(*app, name, *t);
        c.days.push(*day);
        c.extra.push(*user);
    }
    c
}

/// Rollups keyed by application, a number (user or hour) and name.
fn columns_keyed<'a>(d: &Deltas<(i64, i64, &'a str)>) -> Columns<'a> {
    let mut c = Columns::default();
    for ((app, key, name), t) in d {
        c.push(*app, name, *t);
        c.extra.push(*key);
    }
    c
}

/// The raw events, in one statement, in batch order (so events of one instant keep the
/// order they were stored in).
async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    stored: &[&EventWrite],
) -> Result<(), tokio_postgres::Error> {
    let apps: Vec<i64> = stored.iter().map(|w| db_id(w.app)).collect();
    let ats: Vec<i64> = stored.iter().map(|w| micros(w.at)).collect();
    let names: Vec<&str> = stored.iter().map(|w| w.value.event.as_str()).collect();
    let weights: Vec<i64> = stored.iter().map(|w| w.value.weight).collect();
    let users: Vec<Option<i64>> = stored.iter().map(|w| w.value.user_id).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO hartslag_events (app, at, event, weight, user_id) \
             SELECT a, at, e, w, u FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[]) \
             WITH ORDINALITY AS t(a, at, e, w, u, n) ORDER BY n",
        )
        .await?;
    tx.execute(&statement, &[&apps, &ats, &names, &weights, &users])
        .await?;
    Ok(())
}
