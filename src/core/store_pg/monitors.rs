//! Monitors, ping history, timelines and retained records on PostgreSQL (migration 3),
//! behind [`MonitorStore`]; rounds are written by [`super::rounds`].
//!
//! Replicas that do not lead mirror the monitors: [`PgMonitors::changes_since`] answers
//! what the rounds after a version wrote (monitors as they are now, and the removals
//! recorded), in version order. Removal records are pruned after a few minutes; a mirror
//! further behind gets every monitor instead ([`MonitorChanges::full`]) and replaces what
//! it holds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};

use super::backend::{Backend, Ctx, decode};
use super::rounds::{RoundStats, Rounds};
use super::{db_id, from_db_id};
use crate::core::monitor::engine::{Monitor, TransitionRecord};
use crate::core::monitor::history::PingRecord;
use crate::core::storage::{MonitorRound, MonitorStore, RoundDone, StorageError, StorageFuture};

/// Monitors decoded and handed to the engine as one batch at start.
const LOAD_BATCH: usize = 2048;

/// Monitor numbers taken from the sequence at once: a new monitor costs the engine's
/// thread no round trip most of the time (numbers not given out before a restart are
/// skipped, never reused).
const NUMS_AT_ONCE: i64 = 64;

/// Monitors and their history in PostgreSQL.
pub struct PgMonitors {
    backend: Backend,
    rounds: Rounds,
    nums: Mutex<VecDeque<u64>>,
}

/// What changed after a version, for a replica that mirrors the monitors.
#[derive(Debug, Clone, Default)]
pub struct MonitorChanges {
    /// The changes, in version order (a removal before a monitor written in the same
    /// round): apply them in order.
    pub changes: Vec<MonitorChange>,
    /// The newest version the answer covers: ask for the changes after it next time.
    pub version: u64,
    /// The version asked about was older than the removals still recorded: `changes`
    /// holds every stored monitor (and no removals), and the mirror drops any monitor it
    /// holds that is not among them.
    pub full: bool,
}

/// One change to the monitors.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorChange {
    /// The monitor as it is stored now (written by the round `version`, whole or its
    /// state alone).
    Put {
        /// The round that wrote it last.
        version: u64,
        /// The monitor.
        monitor: Box<Monitor>,
    },
    /// The monitor under `key` with number `num` was removed by the round `version`.
    Removed {
        /// The round that removed it.
        version: u64,
        /// Its key.
        key: String,
        /// Its number.
        num: u64,
    },
}

impl MonitorChange {
    /// The round the change is from.
    pub fn version(&self) -> u64 {
        match self {
            MonitorChange::Put { version, .. } | MonitorChange::Removed { version, .. } => *version,
        }
    }
}

/// A monitor from its stored row: the whole record, with the state record over it.
fn monitor_of(record: &[u8], state: Option<&[u8]>) -> Result<Monitor, StorageError> {
    let mut m: Monitor = decode("monitor record", record)?;
    if let Some(state) = state {
        crate::core::storage::state_record::apply(&mut m, state)?;
    }
    Ok(m)
}

impl PgMonitors {
    pub(super) fn new(backend: Backend, commits: super::CommitMetrics) -> Self {
        Self {
            rounds: Rounds::spawn(&backend, commits),
            backend,
            nums: Mutex::default(),
        }
    }

    /// Time spent committing rounds since start.
    pub fn round_stats(&self) -> Arc<RoundStats> {
        self.rounds.stats.clone()
    }

    /// The version of the newest round that wrote or removed a monitor: a mirror that
    /// loads the monitors after asking misses nothing by asking for the changes since.
    pub async fn newest_version(&self) -> Result<u64, StorageError> {
        let backend = self.backend.ctx.clone();
        self.backend
            .run(async move {
                let client = backend.db.client().await?;
                let row = client
                    .query_one(
                        "SELECT greatest( \
                           (SELECT coalesce(max(version), 0) FROM hartslag_monitors), \
                           (SELECT coalesce(max(version), 0) FROM hartslag_monitor_removals))",
                        &[],
                    )
                    .await
                    .map_err(|e| backend.db.fail(e))?;
                Ok(from_db_id(row.get(0)))
            })
            .await
    }

    /// What the rounds after `version` wrote, read in one snapshot; see
    /// [`MonitorChanges`]. Version 0 asks for everything.
    pub async fn changes_since(&self, version: u64) -> Result<MonitorChanges, StorageError> {
        let backend = self.backend.ctx.clone();
        self.backend
            .run(async move {
                let mut client = backend.db.client().await?;
                let fail = |e| backend.db.fail(e);
                let tx = snapshot(&mut client).await.map_err(fail)?;
                let pruned: i64 = tx
                    .query_one("SELECT version FROM hartslag_monitor_pruned", &[])
                    .await
                    .map_err(fail)?
                    .get(0);
                let full = db_id(version) < pruned;
                let after = if full { 0 } else { db_id(version) };
                let rows = tx
                    .query(
                        "SELECT record, state, version FROM hartslag_monitors \
                         WHERE version > $1 ORDER BY version",
                        &[&after],
                    )
                    .await
                    .map_err(fail)?;
                let mut puts = Vec::with_capacity(rows.len());
                for r in &rows {
                    let monitor = Box::new(monitor_of(r.get(0), r.get(1))?);
                    let version = from_db_id(r.get(2));
                    puts.push(MonitorChange::Put { version, monitor });
                }
                let mut newest = if full { from_db_id(pruned) } else { version };
                let mut changes = Vec::new();
                if !full {
                    let rows = tx
                        .query(
                            "SELECT key, num, version FROM hartslag_monitor_removals \
                             WHERE version > $1 ORDER BY version",
                            &[&after],
                        )
                        .await
                        .map_err(fail)?;
                    changes = rows
                        .iter()
                        .map(|r| MonitorChange::Removed {
                            key: r.get(0),
                            num: from_db_id(r.get(1)),
                            version: from_db_id(r.get(2)),
                        })
                        .collect();
                } else {
                    // Versions of removals still recorded count as seen.
                    let row = tx
                        .query_one(
                            "SELECT coalesce(max(version), 0) FROM hartslag_monitor_removals",
                            &[],
                        )
                        .await
                        .map_err(fail)?;
                    newest = newest.max(from_db_id(row.get(0)));
                }
                tx.commit().await.map_err(fail)?;
                // Both lists are in version order: merge, removals first within a round.
                changes.extend(puts);
                changes.sort_by_key(|c| (c.version(), matches!(c, MonitorChange::Put { .. })));
                if let Some(last) = changes.last() {
                    newest = newest.max(last.version());
                }
                Ok(MonitorChanges {
                    changes,
                    version: newest,
                    full,
                })
            })
            .await
    }
}

impl MonitorStore for PgMonitors {
    fn load_monitors(&self, batch: &mut dyn FnMut(Vec<Monitor>)) -> Result<(), StorageError> {
        // Rows come over a channel in raw chunks; this thread decodes them as they come.
        type Raw = Vec<(Vec<u8>, Option<Vec<u8>>)>;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Raw, StorageError>>(4);
        let backend = self.backend.ctx.clone();
        self.backend.spawn(async move {
            let read = async {
                let mut client = backend.db.client().await?;
                let fail = |e| backend.db.fail(e);
                let db = snapshot(&mut client).await.map_err(fail)?;
                let no_params = std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>();
                let rows = db
                    .query_raw("SELECT record, state FROM hartslag_monitors", no_params)
                    .await
                    .map_err(fail)?;
                let rows = rows.map_ok(|r: tokio_postgres::Row| -> (Vec<u8>, Option<Vec<u8>>) {
                    (r.get(0), r.get(1))
                });
                let mut chunks = Box::pin(rows.chunks(LOAD_BATCH));
                while let Some(chunk) = chunks.next().await {
                    let chunk: Result<Raw, _> = chunk.into_iter().collect();
                    // The caller decodes as fast as it can; a full channel holds the rows.
                    let sent = tokio::task::block_in_place(|| tx.send(chunk.map_err(fail)));
                    if sent.is_err() {
                        return Ok(());
                    }
                }
                Ok::<_, StorageError>(())
            };
            if let Err(e) = read.await {
                let _ = tx.send(Err(e));
            }
        });
        for chunk in rx {
            let monitors = chunk?
                .iter()
                .map(|(record, state)| monitor_of(record, state.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            batch(monitors);
        }
        Ok(())
    }

    fn next_monitor_num(&self) -> Result<u64, StorageError> {
        let mut nums = self.nums.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = nums.pop_front() {
            return Ok(n);
        }
        let backend = self.backend.ctx.clone();
        let taken = self.backend.block(async move {
            let client = backend.db.client().await?;
            let rows = client
                .query(
                    "SELECT nextval('hartslag_monitor_num') FROM generate_series(1, $1::bigint)",
                    &[&NUMS_AT_ONCE],
                )
                .await
                .map_err(|e| backend.db.fail(e))?;
            Ok(rows
                .iter()
                .map(|r| from_db_id(r.get(0)))
                .collect::<Vec<u64>>())
        })?;
        nums.extend(taken.into_iter().filter(|&n| n != 0));
        nums.pop_front()
            .ok_or_else(|| StorageError::Unavailable("no monitor number was given".into()))
    }

    fn find_retained(&self, key: &str) -> Result<Option<Monitor>, StorageError> {
        if let Some(m) = self
            .rounds
            .overlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retained(key)
        {
            return Ok(m);
        }
        let backend = self.backend.ctx.clone();
        let key = key.to_string();
        self.backend.block(retained(backend, key))
    }

    fn commit_round(&self, round: MonitorRound, done: RoundDone) {
        self.rounds.submit(round, done);
    }

    fn pings(&self, num: u64, limit: usize, keep: u64) -> StorageFuture<'_, Vec<PingRecord>> {
        let backend = self.backend.ctx.clone();
        self.backend.run(async move {
            let client = backend.db.client().await?;
            // Large enough for any history, small enough that `max - keep` never overflows.
            let keep = i64::try_from(keep).unwrap_or(i64::MAX).min(1 << 53);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let st = client
                .prepare_cached(
                    "SELECT record FROM hartslag_pings WHERE num = $1 AND seq > \
                     (SELECT coalesce(max(seq), 0) FROM hartslag_pings WHERE num = $1) - $2 \
                     ORDER BY seq DESC LIMIT $3",
                )
                .await
                .map_err(|e| backend.db.fail(e))?;
            let rows = client
                .query(&st, &[&db_id(num), &keep, &limit])
                .await
                .map_err(|e| backend.db.fail(e))?;
            rows.iter()
                .map(|r| decode("ping record", r.get(0)))
                .collect()
        })
    }

    fn transitions(&self, num: u64, limit: usize) -> StorageFuture<'_, Vec<TransitionRecord>> {
        let backend = self.backend.ctx.clone();
        self.backend.run(async move {
            let client = backend.db.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client
                .query(
                    "SELECT record FROM hartslag_timeline WHERE num = $1 \
                     ORDER BY at DESC, pos DESC LIMIT $2",
                    &[&db_id(num), &limit],
                )
                .await
                .map_err(|e| backend.db.fail(e))?;
            rows.iter()
                .map(|r| decode("timeline entry", r.get(0)))
                .collect()
        })
    }

    fn retained(&self, key: String) -> StorageFuture<'_, Option<Monitor>> {
        self.backend.run(retained(self.backend.ctx.clone(), key))
    }

    fn retained_all(&self) -> StorageFuture<'_, Vec<Monitor>> {
        self.backend.run(retained_all(self.backend.ctx.clone()))
    }
}

/// The retained record under `key`, as committed.
async fn retained(backend: Ctx, key: String) -> Result<Option<Monitor>, StorageError> {
    let client = backend.db.client().await?;
    let row = client
        .query_opt(
            "SELECT record FROM hartslag_monitor_retained WHERE key = $1",
            &[&key],
        )
        .await
        .map_err(|e| backend.db.fail(e))?;
    row.map(|r| decode(&format!("retained monitor {key}"), r.get(0)))
        .transpose()
}

/// Every retained record, as committed.
async fn retained_all(backend: Ctx) -> Result<Vec<Monitor>, StorageError> {
    let client = backend.db.client().await?;
    let rows = client
        .query("SELECT record FROM hartslag_monitor_retained", &[])
        .await
        .map_err(|e| backend.db.fail(e))?;
    rows.iter()
        .map(|r| decode("retained monitor", r.get(0)))
        .collect()
}

/// A read-only transaction that sees one snapshot throughout, for reads whose parts must
/// agree with each other (the monitors and the version they are at).
async fn snapshot(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}
