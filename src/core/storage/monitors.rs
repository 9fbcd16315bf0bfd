//! The monitors side of the port: monitor records, ping history, timelines, the records
//! of monitors deleted with their data retained, and the rounds of the monitor engine that
//! change them.
//!
//! The engine writes nothing key by key: each round of its commands (pings, deadlines,
//! edits) becomes one [`MonitorRound`] (monitors to put whole or by their state alone and
//! to remove, pings to append, transitions, timelines to trim, deliveries to queue),
//! written as one durable unit with [`MonitorStore::commit_round`]. sled encodes it as one
//! commit-log record, shared with whatever else commits in the same group; a SQL backend
//! writes it as one transaction.

use std::sync::Arc;

use super::{StorageError, StorageFuture};
use crate::core::alert::outbox::Delivery;
use crate::core::monitor::engine::{Monitor, TransitionRecord};
use crate::core::monitor::history::PingRecord;

/// What became of a round: called once, `Ok` only once the round is durable and every
/// read of the store sees it, `Err` when nothing of it was stored.
pub type RoundDone = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// One round of the monitor engine: everything it changed, to be stored all or nothing.
#[derive(Debug, Default)]
pub struct MonitorRound {
    /// Monitors removed in the round, in order. They are applied before [`Self::put`],
    /// so a monitor removed and defined again in one round is stored.
    pub remove: Vec<Removal>,
    /// Monitors whose definition changed in the round (defined, redefined, paused or
    /// resumed), stored whole: definition and state, each once, as the round left it;
    /// shared with the engine, which publishes them once the round is durable.
    pub put: Vec<Arc<Monitor>>,
    /// Monitors whose state alone changed in the round (pings, deadlines, Job evidence):
    /// their definition is the one stored, so a backend may write the state alone
    /// ([`Monitor::state`] and [`Monitor::last_run_ms`]). A monitor is in at most one of
    /// [`Self::put`] and `put_state`; one whose definition also changed in the round is in
    /// `put`. A ping changes a few dozen bytes of a record of a kilobyte or more (targets,
    /// token hash, alerting settings), and a herd of deadlines changes nothing else either.
    pub put_state: Vec<Arc<Monitor>>,
    /// Pings to append to their monitor's history (by monitor number), in the order they
    /// came; a monitor keeps its newest [`Self::keep_pings`].
    pub pings: Vec<(u64, PingRecord)>,
    /// Pings kept per monitor: older ones may be dropped as new ones are appended.
    pub keep_pings: u64,
    /// Timeline entries: monitor number, position among the effects of one step (two
    /// transitions can share an instant), and the entry.
    pub transitions: Vec<(u64, u8, TransitionRecord)>,
    /// Timelines to cut to their newest `keep` entries stored before this round's.
    pub trims: Vec<(u64, usize)>,
    /// Alert deliveries the round's transitions raised; one already queued under the same
    /// [`crate::core::alert::outbox::delivery_key`] is kept as it is.
    pub deliveries: Vec<Delivery>,
    /// Pings other replicas took and relayed through the database, applied in this round
    /// (their entries in the relay, by number): a backend shared by replicas removes them
    /// in the round's own transaction, so a relayed ping is applied exactly once whatever
    /// crashes when. The embedded backend serves one process and relays nothing.
    pub relayed: Vec<u64>,
}

impl MonitorRound {
    /// How many things the round writes, all kinds together: a measure of the work of
    /// preparing it.
    pub fn len(&self) -> usize {
        self.remove.len()
            + self.put.len()
            + self.put_state.len()
            + self.pings.len()
            + self.transitions.len()
            + self.trims.len()
            + self.deliveries.len()
            + self.relayed.len()
    }

    /// Whether the round changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.put.is_empty()
            && self.put_state.is_empty()
            && self.pings.is_empty()
            && self.transitions.is_empty()
            && self.trims.is_empty()
            && self.deliveries.is_empty()
            && self.relayed.is_empty()
    }
}

/// A monitor removed in a round.
#[derive(Debug, Clone)]
pub struct Removal {
    /// Its key, `namespace/name`.
    pub key: String,
    /// Its number, under which its ping history and timeline are stored.
    pub num: u64,
    /// Deleted with its data retained: this last record is kept under its key (see
    /// [`MonitorStore::retained`]) with its history, for a monitor defined again under the
    /// same key. `None`: the history, the timeline and any retained record go too.
    pub retain: Option<Monitor>,
}

/// Where monitors, their ping history and timeline, and the monitor engine's rounds live.
///
/// The methods the engine's thread calls ([`Self::load_monitors`],
/// [`Self::next_monitor_num`], [`Self::find_retained`], [`Self::commit_round`]) are
/// synchronous, on purpose: that thread serialises every change to every monitor and
/// steps through the rounds one after the other; an `async` signature would buy it nothing
/// and cost a boxed future per round. `commit_round` does not wait for the disk: it hands
/// the round over and reports through its callback, so the engine prepares the next round
/// while this one is made durable (the group commit of the embedded backend depends on
/// it). A backend that talks to a server blocks on its own runtime handle there (the
/// engine's thread is no async worker), or queues the round to a task of its own. The
/// reads the APIs make are `async`, like the rest of the port.
///
/// Rounds are stored in the order they are handed over, and the engine's synchronous
/// calls (and a round's own preparation) see every round handed over before them, durable
/// yet or not: the engine builds each round on the ones before. So once one round fails,
/// every round handed over after it fails too, until a restart: they were built on what
/// it would have stored (the embedded backend's commit log stops at its first failed
/// write anyway, since a disk that failed a write proves nothing by succeeding later).
pub trait MonitorStore: Send + Sync + 'static {
    /// Every stored monitor, in batches handed to `batch` as they are decoded (a million
    /// monitors are never held twice). Called once, at start.
    fn load_monitors(&self, batch: &mut dyn FnMut(Vec<Monitor>)) -> Result<(), StorageError>;

    /// A monitor number no monitor has had; never 0.
    fn next_monitor_num(&self) -> Result<u64, StorageError>;

    /// The retained record under `key`, for the engine's thread: sees rounds handed over
    /// and not durable yet.
    fn find_retained(&self, key: &str) -> Result<Option<Monitor>, StorageError>;

    /// Stores `round` all or nothing, after every round handed over before it; `done`
    /// is called once with what became of it (`Ok` once durable and visible to reads).
    /// Returns at once: the round is prepared on the caller's thread, written elsewhere.
    fn commit_round(&self, round: MonitorRound, done: RoundDone);

    /// The newest pings of monitor `num`, newest first: at most `limit`, and none older
    /// than its newest `keep`.
    fn pings(&self, num: u64, limit: usize, keep: u64) -> StorageFuture<'_, Vec<PingRecord>>;

    /// The newest timeline entries of monitor `num`, newest first (entries of one instant
    /// in reverse order of their position).
    fn transitions(&self, num: u64, limit: usize) -> StorageFuture<'_, Vec<TransitionRecord>>;

    /// The last record of the monitor deleted with its data retained under `key`.
    fn retained(&self, key: String) -> StorageFuture<'_, Option<Monitor>>;

    /// Every retained record (see [`Removal::retain`]), in no particular order: a front
    /// end finds those whose resource is gone.
    fn retained_all(&self) -> StorageFuture<'_, Vec<Monitor>>;

    /// Adds the backend's own families to `/metrics` (none unless it has some).
    fn register_metrics(&self, _registry: &mut crate::core::metrics::MetricRegistry) {}
}

impl std::fmt::Debug for dyn MonitorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MonitorStore")
    }
}
