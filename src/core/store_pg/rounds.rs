//! The monitor engine's rounds on PostgreSQL: one task takes them in the order they were
//! handed over and commits them, one transaction for every round that queued up while the
//! previous transaction committed (at most [`MAX_GROUP`]), so a herd of small rounds pays
//! for one commit, not one each.
//!
//! A transaction is fenced ([`super::leader::check`] first), then each round takes one
//! value of `hartslag_round` as the version of every row it writes and applies, in the
//! order the embedded backend does: removals, timeline trims and entries, pings (appended,
//! the history cut now and then), whole records, state-only records, deliveries (one
//! already queued is kept), and the relayed pings it applied are deleted. The transaction
//! ends with `NOTIFY hartslag_rounds, '<version>'` for the replicas that mirror the
//! monitors, and the rounds' callbacks are called after `COMMIT` returned. Once a
//! transaction fails, every round after it fails too until a restart (the port's rule:
//! they were built on what it would have stored).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::CommitMetrics;
use super::backend::{Backend, Ctx, TxError, encode, fenced};
use super::{db_id, micros};
use crate::core::alert::outbox::{delivery_key, is_repetition};
use crate::core::monitor::engine::Monitor;
use crate::core::storage::{MonitorRound, RoundDone, StorageError};

/// Most rounds in one transaction.
const MAX_GROUP: usize = 64;

/// Longest a transaction may take, connection included: past it its rounds fail (their
/// outcome unknown, so never reported stored) and so does every round after them.
const COMMIT_WITHIN: Duration = Duration::from_secs(20);

/// A monitor's ping history is cut when one of its pings' sequence numbers is a multiple
/// of this: a delete every ping would cost more than the few rows it saves.
const TRIM_PINGS_EVERY: u64 = 16;

/// Removal records are kept this long for the replicas that mirror the monitors; one that
/// fell further behind reloads them all.
const REMOVALS_KEPT: Duration = Duration::from_secs(300);

/// How often the leader prunes older removal records (inside a round's transaction).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A round on its way, with its place in the order of rounds handed over.
struct Job {
    seq: u64,
    round: MonitorRound,
    done: RoundDone,
}

/// The records of monitors deleted with their data retained (or whose retained record was
/// deleted: `None`) by rounds handed over and not committed yet, by key, with the round's
/// place: the engine's own reads see them before the database does.
#[derive(Default)]
pub(super) struct Overlay {
    retained: HashMap<String, (u64, Option<Monitor>)>,
}

impl Overlay {
    /// The retained record under `key` as the rounds in flight leave it, if one touches it.
    pub(super) fn retained(&self, key: &str) -> Option<Option<Monitor>> {
        self.retained.get(key).map(|(_, m)| m.clone())
    }

    fn record(&mut self, seq: u64, round: &MonitorRound) {
        for r in &round.remove {
            self.retained.insert(r.key.clone(), (seq, r.retain.clone()));
        }
    }

    /// Forgets what the rounds up to `seq` wrote: the database has it now.
    fn committed(&mut self, seq: u64) {
        self.retained.retain(|_, (s, _)| *s > seq);
    }
}

/// Time spent committing rounds, for the figures benchmarks print.
#[derive(Debug, Default)]
pub struct RoundStats {
    /// Transactions committed.
    pub transactions: std::sync::atomic::AtomicU64,
    /// Rounds committed.
    pub rounds: std::sync::atomic::AtomicU64,
    /// Microseconds spent in committed transactions, connection included.
    pub micros: std::sync::atomic::AtomicU64,
}

/// What the round writer counts: its own figures and the commit figures on `/metrics`.
struct Figures {
    stats: Arc<RoundStats>,
    commits: CommitMetrics,
}

/// Handle to the round writer.
pub(super) struct Rounds {
    queue: mpsc::UnboundedSender<Job>,
    next_seq: std::sync::atomic::AtomicU64,
    pub(super) overlay: Arc<Mutex<Overlay>>,
    pub(super) stats: Arc<RoundStats>,
}

impl Rounds {
    /// Starts the writer on the backend's runtime.
    pub(super) fn spawn(backend: &Backend, commits: CommitMetrics) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let overlay: Arc<Mutex<Overlay>> = Arc::default();
        let stats: Arc<RoundStats> = Arc::default();
        let figures = Figures {
            stats: stats.clone(),
            commits,
        };
        backend.spawn(run(backend.ctx.clone(), rx, overlay.clone(), figures));
        Self {
            queue,
            next_seq: Default::default(),
            overlay,
            stats,
        }
    }

    /// Hands `round` to the writer; `done` is called once it is committed or failed.
    pub(super) fn submit(&self, round: MonitorRound, done: RoundDone) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        if !round.remove.is_empty() {
            lock(&self.overlay).record(seq, &round);
        }
        if let Err(mpsc::error::SendError(job)) = self.queue.send(Job { seq, round, done }) {
            (job.done)(Err(StorageError::Stopped));
        }
    }
}

fn lock(overlay: &Mutex<Overlay>) -> std::sync::MutexGuard<'_, Overlay> {
    overlay.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer: takes every round queued behind the first (up to [`MAX_GROUP`]), commits
/// them as one transaction and answers each, in order.
async fn run(
    backend: Ctx,
    mut rx: mpsc::UnboundedReceiver<Job>,
    overlay: Arc<Mutex<Overlay>>,
    figures: Figures,
) {
    let Figures { stats, commits } = figures;
    let mut failed: Option<StorageError> = None;
    let mut pruned = Instant::now();
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Some(e) = &failed {
            let text = e.to_string();
            for job in jobs {
                (job.done)(Err(StorageError::NotStored(format!(
                    "an earlier round was not stored ({text}); nothing is stored until a restart"
                ))));
            }
            continue;
        }
        let prune = pruned.elapsed() >= PRUNE_EVERY;
        let started = Instant::now();
        let rounds: Vec<&MonitorRound> = jobs.iter().map(|j| &j.round).collect();
        let done = tokio::time::timeout(COMMIT_WITHIN, commit(&backend, &rounds, prune)).await;
        let done = done.unwrap_or_else(|_| {
            Err(StorageError::Unavailable(format!(
                "the database did not commit within {}s",
                COMMIT_WITHIN.as_secs()
            )))
        });
        let last = jobs.last().map_or(0, |j| j.seq);
        match done {
            Ok(()) => {
                if prune {
                    pruned = Instant::now();
                }
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                stats.rounds.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                let spent = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.micros.fetch_add(spent, Ordering::Relaxed);
                commits.committed(started, jobs.len());
                lock(&overlay).committed(last);
                for job in jobs {
                    (job.done)(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, rounds = jobs.len(), "monitor rounds were not stored; none will be until a restart, so this replica steps down");
                // The engine built on these rounds and can write nothing more: a leader
                // that kept its lock now would hold every deadline and relayed ping
                // hostage (the lock survives a database restart). Stepping down ends its
                // term; the process stops and a replica that can write takes over.
                backend.fence.depose();
                let text = e.to_string();
                for job in jobs {
                    let err = match &e {
                        StorageError::Fenced(_) => StorageError::Fenced(text.clone()),
                        StorageError::Unavailable(_) => StorageError::Unavailable(text.clone()),
                        StorageError::Incompatible(_) => StorageError::Incompatible(text.clone()),
                        _ => StorageError::NotStored(text.clone()),
                    };
                    (job.done)(Err(err));
                }
                failed = Some(e);
            }
        }
    }
}

/// Commits `rounds` as one fenced transaction.
async fn commit(backend: &Ctx, rounds: &[&MonitorRound], prune: bool) -> Result<(), StorageError> {
    let mut client = backend.db.client().await?;
    let written = async {
        let tx = fenced(&mut client, &backend.fence).await?;
        let mut version = 0;
        let mut outbox = false;
        for round in rounds {
            let row = tx
                .query_one("SELECT nextval('hartslag_round')", &[])
                .await?;
            version = row.get::<_, i64>(0);
            write_round(&tx, round, version).await?;
            outbox |= !round.deliveries.is_empty();
        }
        if prune {
            prune_removals(&tx).await?;
        }
        let notices = match outbox {
            true => Some(super::outbox::pending_notices(&*tx).await?),
            false => None,
        };
        tx.execute(
            "SELECT pg_notify('hartslag_rounds', $1)",
            &[&version.to_string()],
        )
        .await?;
        tx.commit().await?;
        Ok::<_, TxError>(notices)
    };
    match written.await {
        Ok(notices) => {
            if let Some(n) = notices {
                backend
                    .notices
                    .store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
            }
            Ok(())
        }
        Err(e) => Err(backend.fail(e)),
    }
}

/// Removal records older than [`REMOVALS_KEPT`] go; the newest version among them is
/// remembered, so a mirror further behind knows to reload.
async fn prune_removals(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), TxError> {
    let before = micros(jiff::Timestamp::now())
        - i64::try_from(REMOVALS_KEPT.as_micros()).unwrap_or(i64::MAX);
    tx.execute(
        "WITH gone AS (DELETE FROM hartslag_monitor_removals WHERE at < $1 RETURNING version) \
         UPDATE hartslag_monitor_pruned SET version = GREATEST(version, \
         (SELECT coalesce(max(version), 0) FROM gone)) WHERE id = 1",
        &[&before],
    )
    .await?;
    Ok(())
}

/// Keeps the last of several entries with the same key (a statement may touch a row once).
fn last_by_key<T, K: Eq + std::hash::Hash>(items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<T> = items
        .into_iter()
        .rev()
        .filter(|i| seen.insert(key(i)))
        .collect();
    out.reverse();
    out
}

/// Writes one round's rows under `version`.
pub(super) async fn write_round(
    tx: &deadpool_postgres::Transaction<'_>,
    round: &MonitorRound,
    version: i64,
) -> Result<(), TxError> {
    if !round.remove.is_empty() {
        write_removals(tx, round, version).await?;
    }
    for &(num, keep) in &round.trims {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let st = tx
            .prepare_cached(
                "DELETE FROM hartslag_timeline WHERE num = $1 AND (at, pos) NOT IN \
                 (SELECT at, pos FROM hartslag_timeline WHERE num = $1 \
                  ORDER BY at DESC, pos DESC LIMIT $2)",
            )
            .await?;
        tx.execute(&st, &[&db_id(num), &keep]).await?;
    }
    if !round.transitions.is_empty() {
        write_transitions(tx, round).await?;
    }
    if !round.pings.is_empty() {
        write_pings(tx, round).await?;
    }
    if !round.put.is_empty() {
        write_whole(tx, round, version).await?;
    }
    if !round.put_state.is_empty() {
        write_states(tx, round, version).await?;
    }
    if !round.deliveries.is_empty() {
        write_deliveries(tx, round).await?;
    }
    if !round.relayed.is_empty() {
        let ids: Vec<i64> = round.relayed.iter().map(|&id| db_id(id)).collect();
        let st = tx
            .prepare_cached("DELETE FROM hartslag_ping_relay WHERE id = ANY($1)")
            .await?;
        // A ping another round already applied (and removed) would count twice: the
        // round is refused instead, and whoever leads next applies what is left.
        let removed = tx.execute(&st, &[&ids]).await?;
        if removed != ids.len() as u64 {
            return Err(TxError::Refused(StorageError::NotStored(format!(
                "{} of the round's {} relayed pings were applied by another round",
                ids.len() as u64 - removed.min(ids.len() as u64),
                ids.len()
            ))));
        }
    }
    Ok(())
}

async fn write_removals(
    tx: &deadpool_postgres::Transaction<'_>,
    round: &MonitorRound,
    version: i64,
) -> Result<(), TxError> {
    let keys: Vec<&str> = round.remove.iter().map(|r| r.key.as_str()).collect();
    let nums: Vec<i64> = round.remove.iter().map(|r| db_id(r.num)).collect();
    let now = micros(jiff::Timestamp::now());
    let st = tx
        .prepare_cached("DELETE FROM hartslag_monitors WHERE key = ANY($1)")
        .await?;
    tx.execute(&st, &[&keys]).await?;
    let st = tx
        .prepare_cached(
            "INSERT INTO hartslag_monitor_removals (key, num, version, at) \
             SELECT k, n, $3, $4 FROM unnest($1::text[], $2::bigint[]) AS u(k, n)",
        )
        .await?;
    tx.execute(&st, &[&keys, &nums, &version, &now]).await?;
    let removals = last_by_key(round.remove.iter().collect(), |r| r.key.as_str());
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    for r in removals {
        match &r.retain {
            Some(m) => kept.push((r.key.as_str(), db_id(r.num), encode(m)?)),
            None => dropped.push((r.key.as_str(), db_id(r.num))),
        }
    }
    if !kept.is_empty() {
        let keys: Vec<&str> = kept.iter().map(|k| k.0).collect();
        let nums: Vec<i64> = kept.iter().map(|k| k.1).collect();
        let records: Vec<&[u8]> = kept.iter().map(|k| k.2.as_slice()).collect();
        let st = tx
            .prepare_cached(
                "INSERT INTO hartslag_monitor_retained (key, num, record) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET num = excluded.num, record = excluded.record",
            )
            .await?;
        tx.execute(&st, &[&keys, &nums, &records]).await?;
    }
    if !dropped.is_empty() {
        let keys: Vec<&str> = dropped.iter().map(|k| k.0).collect();
        let nums: Vec<i64> = dropped.iter().map(|k| k.1).collect();
        for sql in [
            "DELETE FROM hartslag_pings WHERE num = ANY($1)",
            "DELETE FROM hartslag_timeline WHERE num = ANY($1)",
        ] {
            let st = tx.prepare_cached(sql).await?;
            tx.execute(&st, &[&nums]).await?;
        }
        let st = tx
            .prepare_cached("DELETE FROM hartslag_monitor_retained WHERE key = ANY($1)")
            .await?;
        tx.execute(&st, &[&keys]).await?;
    }
    Ok(())
}

async fn write_transitions(
    tx: &deadpool_postgres::Transaction<'_>,
    round: &MonitorRound,
) -> Result<(), TxError> {
    let entries = last_by_key(round.transitions.iter().collect(), |(num, pos, t)| {
        (*num, t.at, *pos)
    });
    let mut nums = Vec::with_capacity(entries.len());
    let mut ats = Vec::with_capacity(entries.len());
    let mut positions = Vec::with_capacity(entries.len());
    let mut records = Vec::with_capacity(entries.len());
    for (num, pos, t) in entries {
        nums.push(db_id(*num));
        ats.push(micros(t.at));
        positions.push(i16::from(*pos));
        records.push(encode(t)?);
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO hartslag_timeline (num, at, pos, record) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::bytea[]) \
             ON CONFLICT (num, at, pos) DO UPDATE SET record = excluded.record",
        )
        .await?;
    tx.execute(&st, &[&nums, &ats, &positions, &records])
        .await?;
    Ok(())
}

async fn write_pings(
    tx: &deadpool_postgres::Transaction<'_>,
    round: &MonitorRound,
) -> Result<(), TxError> {
    let pings = last_by_key(round.pings.iter().collect(), |(num, p)| (*num, p.seq));
    let mut nums = Vec::with_capacity(pings.len());
    let mut seqs = Vec::with_capacity(pings.len());
    let mut records = Vec::with_capacity(pings.len());
    // Per monitor: its newest ping, and whether the round crossed a trim point.
    let mut newest: HashMap<u64, (u64, bool)> = HashMap::new();
    for (num, p) in pings {
        nums.push(db_id(*num));
        seqs.push(db_id(p.seq));
        records.push(encode(p)?);
        let e = newest.entry(*num).or_insert((0, false));
        e.0 = e.0.max(p.seq);
        e.1 |= p.seq.is_multiple_of(TRIM_PINGS_EVERY);
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO hartslag_pings (num, seq, record) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) \
             ON CONFLICT (num, seq) DO UPDATE SET record = excluded.record",
        )
        .await?;
    tx.execute(&st, &[&nums, &seqs, &records]).await?;
    let (trim_nums, floors): (Vec<i64>, Vec<i64>) = newest
        .into_iter()
        .filter(|(_, (_, crossed))| *crossed)
        .map(|(num, (seq, _))| (db_id(num), db_id(seq.saturating_sub(round.keep_pings))))
        .filter(|(_, floor)| *floor > 0)
        .unzip();
    if !trim_nums.is_empty() {
        let st = tx
            .prepare_cached(
                "DELETE FROM hartslag_pings p USING unnest($1::bigint[], $2::bigint[]) \
                 AS u(num, floor) WHERE p.num = u.num AND p.seq <= u.floor",
            )
            .await?;
        tx.execute(&st, &[&trim_nums, &floors]).await?;
    }
    Ok(())
}

async fn write_whole(
    tx: &deadpool_postgres::Transaction<'_>,
    round: &MonitorRound,
    version: i64,
) -> Result<(), TxError> {
    let monitors = last_by_key(round.put.iter().collect(), |m| m.def.key.as_str());
    let mut keys = Vec::with_capacity(monitors.len());
    let mut nums = Vec::with_capacity(monitors.len());
    let mut records = Vec::with_capacity(monitors.len());
    for m in monitors {
        keys.push(m.def.key.as_str());
        nums.push(db_id(m.num));
        records.push(encode(m.as_ref())?);
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO hartslag_monitors (key, num, record, state, version) \
             SELECT k, n, r, NULL, $4 FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u(k, n, r) \
             ON CONFLICT (key) DO UPDATE SET num = excluded.num, record = excluded.record, \
             state = NULL, version = excluded.version",
        )
        .await?;
    tx.execute(&st, &[&keys, &nums, &records, &version]).await?;
    Ok(())
}

async fn write_states(
    tx: &deadpool_postgres::Transaction<'_>,
    round: &MonitorRound,
    version: i64,
) -> Result<(), TxError> {
    let monitors = last_by_key(round.put_state.iter().collect(), |m| m.def.key.as_str());
    let mut keys = Vec::with_capacity(monitors.len());
    let mut states = Vec::with_capacity(monitors.len());
    for m in monitors {
        keys.push(m.def.key.as_str());
        states.push(crate::core::storage::state_record::encode(m)?);
    }
    let st = tx
        .prepare_cached(
            "UPDATE hartslag_monitors m SET state = u.s, version = $3 \
             FROM unnest($1::text[], $2::bytea[]) AS u(k, s) WHERE m.key = u.k",
        )
        .await?;
    tx.execute(&st, &[&keys, &states, &version]).await?;
    Ok(())
}

async fn write_deliveries(
    tx: &deadpool_postgres::Transaction<'_>,
    round: &MonitorRound,
) -> Result<(), TxError> {
    let mut keys = Vec::with_capacity(round.deliveries.len());
    let mut records = Vec::with_capacity(round.deliveries.len());
    let mut notices = Vec::with_capacity(round.deliveries.len());
    for d in &round.deliveries {
        let key = delivery_key(&d.alert, &d.target);
        notices.push(!is_repetition(&key));
        keys.push(key);
        records.push(encode(d)?);
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO hartslag_outbox (key, delivery, notice) \
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::boolean[]) \
             ON CONFLICT (key) DO NOTHING",
        )
        .await?;
    tx.execute(&st, &[&keys, &records, &notices]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::sample;
    use crate::core::monitor::state::State;
    use crate::core::storage::Removal;

    #[test]
    fn a_statement_gets_the_last_entry_of_each_key_in_order() {
        let items = vec![("a", 1), ("b", 2), ("a", 3), ("c", 4)];
        assert_eq!(
            last_by_key(items, |i| i.0),
            vec![("b", 2), ("a", 3), ("c", 4)]
        );
    }

    #[test]
    fn the_overlay_holds_retained_records_until_their_round_is_committed() {
        let m = sample("ns/kept", State::Up);
        let removal = |retain: Option<Monitor>| MonitorRound {
            remove: vec![Removal {
                key: m.def.key.clone(),
                num: m.num,
                retain,
            }],
            ..Default::default()
        };
        let mut overlay = Overlay::default();
        assert_eq!(overlay.retained("ns/kept"), None);
        overlay.record(1, &removal(Some(m.clone())));
        assert_eq!(overlay.retained("ns/kept"), Some(Some(m.clone())));
        // Deleted for good by a later round: the overlay says there is none.
        overlay.record(2, &removal(None));
        overlay.committed(1);
        assert_eq!(overlay.retained("ns/kept"), Some(None));
        overlay.committed(2);
        assert_eq!(overlay.retained("ns/kept"), None);
    }
}
