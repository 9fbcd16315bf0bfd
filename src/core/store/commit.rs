//! Pipelined group commit: writers hand their records to the committer and go on, and one
//! commit thread writes every queued record to the commit log, makes the group durable
//! with one `fdatasync` and reports it; then an apply thread applies the group to sled and
//! reports again, while the commit thread already writes and flushes the next group. While
//! the disk flushes one group, the writers validate, prepare and queue the next, and the
//! apply thread applies the one before: only the disk's own latency is serialised, not the
//! CPU work around it. At most one group is applied while one more is written and flushed
//! (the commit thread waits to hand over the next), so a slow sled slows the log too.
//!
//! A writer either submits a finished record with [`Committer::submit`], or keeps an
//! [`OpenBatch`] in the committer that the commit thread seals into one record when it
//! starts a group: whatever arrived while the disk flushed the previous group becomes one
//! record, however many times the writer added to it. Either way the writer learns what
//! became of its record through a [`Notify`] callback: [`Progress::Durable`] once the
//! record is on disk (answer the client now; run on the commit thread), then
//! [`Progress::Applied`] once sled has it (readers of sled see it now; run on the apply
//! thread), or [`Progress::Failed`]. A writer that prepares its next record from what it
//! wrote before reads through a [`PendingReader`], which sees records not applied yet.
//!
//! The invariants, each tested below:
//! 1. **Order.** Records are written, made durable, reported and applied in the order they
//!    were submitted, across all writers; each stage keeps the order across the two
//!    threads (a group is applied only after the group before it). Inside one large
//!    record, writes to different keys may be applied in any order ([`super::split`]),
//!    writes to one key in the record's.
//! 2. **No answer before the disk.** `Durable` is reported only after an `fdatasync` that
//!    began after the record was written; `Applied` only after `Durable`.
//! 3. **Durable before visible.** sled gets a record's writes only after it is durable:
//!    whatever sled holds, a replay of the log completes it.
//! 4. **One flush at a time.** Only the commit thread syncs the log or flushes sled
//!    (sled 0.34 also deadlocks when many tasks call `flush_async` at once), and a
//!    checkpoint first waits until the apply thread has applied every group handed to it:
//!    no apply runs during sled's flush, and the log is emptied only once sled has every
//!    record in it.
//! 5. **Stop on failure.** After a failed write, sync or apply, nothing is reported
//!    durable or applied again: the kernel may already have dropped the pages it could not
//!    write, so a later fsync that succeeds proves nothing. Every queued and later record
//!    fails with [`CommitError::Halted`], [`Committer::health`] says so (`/healthz` 503),
//!    and a restart replays the log. A group already reported durable when the apply of
//!    the group before it failed hears `Failed` after `Durable` (it is in the log, and a
//!    restart replays it); a failed write or sync is reported only after the apply
//!    thread has finished the group before it, so callbacks keep their order.
//! 6. **Writers read their own pending writes.** From submission until its apply, a
//!    record's puts and removes are seen by [`Committer::read`] and [`Committer::keys`];
//!    every other reader reads sled, which holds only durable data.
//!
//! A checkpoint (a sled flush, after which the log starts over) runs on the commit thread
//! between groups: when the log passes [`CHECKPOINT_BYTES`], after [`IDLE_CHECKPOINT`]
//! without commits, for [`Committer::flush`], and when the last handle is dropped.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::latency::LatencyRecord;
use super::split::Splitter;
use super::wal::{self, Log, Mutation, Op, WalError};
use crate::core::metrics::{Histogram, SYNC_BUCKETS};

/// Log size after which the committer checkpoints (bounds replay time after a crash).
const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// Most record bytes written with one `fdatasync`: a longer queue is committed in several
/// groups, with a checkpoint between them once the log passes [`CHECKPOINT_BYTES`], so the
/// log never holds much more than the sum of both (or one round larger than that).
const GROUP_BYTES: usize = 32 * 1024 * 1024;

/// A log with records in it is checkpointed after this long without commits.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(10);

/// Most records waiting for the commit thread; a writer that finds the queue full waits,
/// so a slow disk slows the writers instead of growing memory without bound.
const MAX_QUEUED: usize = 4096;

/// Why a write or flush could not be confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// sled reported an I/O or corruption error while flushing or applying.
    #[error("flushing the database failed: {0}")]
    Flush(Arc<sled::Error>),
    /// The commit log could not be written.
    #[error("{0}")]
    Log(Arc<WalError>),
    /// An earlier write to disk failed, so no later one can be trusted until a restart.
    #[error("writes are stopped until a restart, because an earlier write to disk failed: {0}")]
    Halted(Box<CommitError>),
    /// The committer is gone (the process is shutting down).
    #[error("the committer has stopped")]
    Stopped,
    /// sled failed while a record was prepared (a full disk, say).
    #[error("the database failed: {0}")]
    Database(Arc<sled::Error>),
}

/// What became of a submitted record, reported to its writer in this order: `Durable`
/// then `Applied`; or `Failed`, before `Durable` or (when sled refused the apply) after it.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The record is on disk: it survives a crash, so its callers may be answered.
    Durable,
    /// sled holds the record's writes: readers of sled see them.
    Applied,
    /// The record was not made durable, or not applied; nothing more follows.
    Failed(&'a CommitError),
}

/// A writer's callback for its record (keep it short): `Durable` runs on the commit
/// thread, `Applied` on the apply thread, `Failed` on either.
pub type Notify = Box<dyn FnMut(Progress<'_>) + Send>;

/// One submitted record.
struct Entry {
    seq: u64,
    writes: Vec<Mutation>,
    notify: Notify,
}

struct State {
    /// Records waiting for the commit thread, in submission order.
    queue: Vec<Entry>,
    /// An open batch got something since the commit thread last sealed them.
    sealable: bool,
    /// The commit thread is waiting for work (so adding to a batch must wake it).
    waiting: bool,
    /// Set after a failed write to disk: everything later is refused.
    halted: Option<CommitError>,
    /// `flush` calls waiting for the next checkpoint.
    flushes: Vec<oneshot::Sender<Result<(), CommitError>>>,
    /// Every handle is gone: checkpoint once more and stop.
    closing: bool,
}

/// What the commit log has done since start, for `/metrics`. The disk's flush latency is
/// what bounds durable writes, and records per group show how well group commit shares it.
#[derive(Debug)]
pub struct CommitStats {
    /// How long each group's append and `fdatasync` took.
    pub sync: Histogram,
    /// How long each group's `fdatasync` alone took, finely: the disk's flush latency.
    pub flush: LatencyRecord,
    /// How long each checkpoint (sled flush, then emptying the log) took.
    pub checkpoint: Histogram,
    /// Groups committed: one `fdatasync` each.
    pub groups: AtomicU64,
    /// Writers' records in those groups.
    pub records: AtomicU64,
    /// Bytes those records took in the log: what a writer's record costs the disk.
    pub bytes: AtomicU64,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            sync: Histogram::with_bounds(&SYNC_BUCKETS),
            flush: LatencyRecord::default(),
            checkpoint: Histogram::default(),
            groups: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

/// The writes of records submitted and not applied yet, by tree and key: the latest one of
/// each key, with the sequence number of its record. `None` is a pending remove.
#[derive(Default)]
struct Overlay {
    trees: HashMap<sled::IVec, PendingKeys>,
}

/// One tree's pending writes: key → (record, value or `None` for a remove).
type PendingKeys = BTreeMap<Vec<u8>, (u64, Option<sled::IVec>)>;

impl Overlay {
    fn add(&mut self, seq: u64, writes: &[Mutation]) {
        for w in writes.iter().filter(|w| w.read_back) {
            let value = match &w.op {
                Op::Put(v) => Some(sled::IVec::from(v.as_slice())),
                Op::Remove => None,
                // Its writer never reads it back (queued alerts); sled decides on apply.
                Op::PutIfAbsent(_) => continue,
            };
            self.trees
                .entry(w.tree.name())
                .or_default()
                .insert(w.key.clone(), (seq, value));
        }
    }

    /// Forgets the writes of record `seq`, now in sled, unless a later record rewrote them.
    fn applied(&mut self, seq: u64, writes: &[Mutation]) {
        for w in writes.iter().filter(|w| w.read_back) {
            if let Some(keys) = self.trees.get_mut(&w.tree.name())
                && keys.get(&w.key).is_some_and(|(s, _)| *s == seq)
            {
                keys.remove(&w.key);
            }
        }
    }
}

struct Inner {
    db: sled::Db,
    stats: CommitStats,
    state: Mutex<State>,
    /// The commit thread waits here for records, flushes or the end.
    work: Condvar,
    /// Writers wait here for room in the queue; blocking writers for their record.
    room: Condvar,
    overlay: Mutex<Overlay>,
    /// Sequence number of the next record.
    next_seq: AtomicU64,
    /// Writers' open batches, sealed by the commit thread at the start of each group.
    batches: Mutex<Vec<Box<dyn Sealable>>>,
    /// Groups handed to the apply thread and not finished yet.
    pipeline: Mutex<Pipeline>,
    /// Signalled whenever the apply thread finishes a group (or stops).
    drained: Condvar,
    /// Held while a group's `Durable` is reported and while a failed apply stops the
    /// committer: a group is either reported durable before the committer stopped, or
    /// refused.
    report: Mutex<()>,
    /// Tests hold the commit thread here, before each group's write and sync.
    #[cfg(test)]
    gate: tests::Gate,
    /// Tests hold the apply thread here, before each group's apply.
    #[cfg(test)]
    apply_gate: tests::Gate,
}

/// How far the apply thread is behind the commit thread.
#[derive(Default)]
struct Pipeline {
    /// Groups handed over and not applied (or failed) yet.
    outstanding: usize,
    /// The apply thread has gone: nothing handed over will be finished.
    stopped: bool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing is left half-done under this lock, so a lock poisoned by a panic
        // elsewhere is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses everything from now on; returns the records that were waiting, to fail.
    fn halt(&self, cause: CommitError) -> Vec<Entry> {
        let mut state = self.lock();
        if state.halted.is_none() {
            state.halted = Some(cause);
        }
        let waiting = std::mem::take(&mut state.queue);
        let refusal = halted(state.halted.as_ref().unwrap_or(&CommitError::Stopped));
        for f in state.flushes.drain(..) {
            let _ = f.send(Err(refusal.clone()));
        }
        drop(state);
        self.overlay().trees.clear();
        self.room.notify_all();
        for batch in self.batches().iter_mut() {
            batch.close(&refusal);
        }
        waiting
    }

    fn batches(&self) -> MutexGuard<'_, Vec<Box<dyn Sealable>>> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pipeline(&self) -> MutexGuard<'_, Pipeline> {
        self.pipeline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self) -> MutexGuard<'_, ()> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The refusal every record gets once the committer has stopped; `None` while it runs.
    fn refusal(&self) -> Option<CommitError> {
        self.lock().halted.as_ref().map(halted)
    }

    /// Waits until the apply thread has finished every group handed to it.
    fn drain(&self) {
        let mut p = self.pipeline();
        while p.outstanding > 0 && !p.stopped {
            p = self.drained.wait(p).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Tells the commit thread an open batch has something to seal.
    fn wake_for_batch(&self) {
        let mut state = self.lock();
        state.sealable = true;
        if state.waiting {
            self.work.notify_one();
        }
    }
}

/// What sealing a batch gives: its record and callback, nothing, or a database failure.
pub type Sealed = Result<Option<(Vec<Mutation>, Notify)>, SealFailure>;

/// A database failure while a batch was sealed, with the callback that tells the batch's
/// writers: the commit thread stops every write first and then calls it with
/// [`Progress::Failed`], so a writer answered "not stored" finds the committer's health
/// failing already (a client that reads `/healthz` after a 503 never sees it pass).
pub struct SealFailure {
    /// What failed: the committer stops with it.
    pub cause: CommitError,
    /// Called once with [`Progress::Failed`] after the committer has stopped.
    pub notify: Notify,
}

/// How the commit thread turns a writer's open batch into a record.
pub trait Sealer<T>: Send + 'static {
    /// The batch's writes and the callback that hears what became of them; `None` when it
    /// writes nothing (having answered its callers itself). Runs on the commit thread at
    /// the start of a group, so it should be quick; `reader` sees records not applied yet.
    /// `Err` (its callers answered) when the database failed while preparing the record:
    /// then the committer stops, as after a failed write.
    fn seal(&mut self, batch: T, reader: &PendingReader<'_>) -> Sealed;

    /// Answers everything in the batch with `error`: the committer has stopped.
    fn fail(&mut self, batch: T, error: &CommitError);
}

/// A writer's batch kept open in the committer; see [`Committer::open_batch`].
pub struct OpenBatch<T> {
    slot: Arc<Mutex<Slot<T>>>,
    inner: Arc<Inner>,
}

impl<T> Clone for OpenBatch<T> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for OpenBatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBatch").finish_non_exhaustive()
    }
}

struct Slot<T> {
    batch: T,
    /// Nothing in the batch since it was last sealed.
    empty: bool,
    /// Set once the committer has stopped: the batch takes nothing more.
    closed: Option<CommitError>,
}

impl<T> OpenBatch<T> {
    /// Adds to the batch with `add` and makes sure the commit thread seals it soon. `Err`
    /// (and `add` not run) once the committer has stopped.
    pub fn add<R>(&self, add: impl FnOnce(&mut T) -> R) -> Result<R, CommitError> {
        let r = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = &slot.closed {
                return Err(e.clone());
            }
            slot.empty = false;
            add(&mut slot.batch)
        };
        self.inner.wake_for_batch();
        Ok(r)
    }
}

/// An open batch with its sealer, as the commit thread holds it.
trait Sealable: Send {
    fn seal(&mut self, reader: &PendingReader<'_>) -> Sealed;
    fn close(&mut self, error: &CommitError);
}

struct Registered<T, S> {
    slot: Arc<Mutex<Slot<T>>>,
    sealer: S,
}

impl<T: Default + Send, S: Sealer<T>> Registered<T, S> {
    fn take(&self) -> Option<T> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.empty {
            return None;
        }
        slot.empty = true;
        Some(std::mem::take(&mut slot.batch))
    }
}

impl<T: Default + Send, S: Sealer<T>> Sealable for Registered<T, S> {
    fn seal(&mut self, reader: &PendingReader<'_>) -> Sealed {
        match self.take() {
            Some(batch) => self.sealer.seal(batch, reader),
            None => Ok(None),
        }
    }

    fn close(&mut self, error: &CommitError) {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
            .get_or_insert_with(|| error.clone());
        if let Some(batch) = self.take() {
            self.sealer.fail(batch, error);
        }
    }
}

/// Reads as the records submitted so far leave the database, applied or not: for the
/// single writer of the keys read, preparing its next record. Every write stays in the
/// committer's overlay from submission until sled has it, and reads look there first.
pub struct PendingReader<'a> {
    inner: &'a Inner,
}

impl PendingReader<'_> {
    /// The value of `key` in `tree`.
    pub fn read(&self, tree: &sled::Tree, key: &[u8]) -> Result<Option<sled::IVec>, sled::Error> {
        // The overlay first: a write leaves it only after sled has it.
        if let Some(keys) = self.inner.overlay().trees.get(&tree.name())
            && let Some((_, value)) = keys.get(key)
        {
            return Ok(value.clone());
        }
        tree.get(key)
    }

    /// The keys of `tree` from `lo` up to `hi` (excluded; `None`: to the end) as the
    /// records submitted so far leave them, in order: like [`PendingReader::read`], for the
    /// single writer of those keys.
    pub fn keys(
        &self,
        tree: &sled::Tree,
        lo: &[u8],
        hi: Option<&[u8]>,
    ) -> Result<Vec<Vec<u8>>, sled::Error> {
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        // The overlay first, then sled: a write applied in between is in both.
        let pending: Vec<(Vec<u8>, bool)> = match self.inner.overlay().trees.get(&tree.name()) {
            Some(keys) => keys
                .range::<[u8], _>((Bound::Included(lo), upper))
                .map(|(k, (_, v))| (k.clone(), v.is_some()))
                .collect(),
            None => Vec::new(),
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut pending = pending.into_iter().peekable();
        let stored = match hi {
            Some(hi) => tree.range(lo..hi),
            None => tree.range(lo..),
        };
        for k in stored.keys() {
            let k = k?;
            while let Some((p, present)) = pending.next_if(|(p, _)| p.as_slice() < &k[..]) {
                if present {
                    out.push(p);
                }
            }
            match pending.next_if(|(p, _)| p.as_slice() == &k[..]) {
                Some((_, false)) => {}
                _ => out.push(k.to_vec()),
            }
        }
        out.extend(pending.filter(|(_, present)| *present).map(|(p, _)| p));
        Ok(out)
    }

    /// The keys of `tree` starting with `prefix`, as [`PendingReader::keys`] sees them.
    pub fn keys_with_prefix(
        &self,
        tree: &sled::Tree,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, sled::Error> {
        // The first key after every key with this prefix: the prefix without its trailing
        // 0xff bytes, last byte plus one. Every key after a prefix of only 0xff bytes
        // starts with it.
        let mut end = prefix.to_vec();
        while end.last() == Some(&0xff) {
            end.pop();
        }
        match end.last_mut() {
            Some(last) => {
                *last += 1;
                self.keys(tree, prefix, Some(&end))
            }
            None => self.keys(tree, prefix, None),
        }
    }
}

/// Handle to the group committer; cheap to clone and share between writers. When the last
/// one is dropped the commit thread checkpoints once more, so the next start replays
/// nothing.
#[derive(Clone)]
pub struct Committer {
    inner: Arc<Inner>,
    _alive: Arc<Alive>,
}

/// Tells the commit thread, when dropped with the last handle, to finish.
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.lock().closing = true;
        self.0.work.notify_all();
    }
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

/// The refusal given after `cause` stopped the committer.
fn halted(cause: &CommitError) -> CommitError {
    match cause {
        CommitError::Stopped => CommitError::Stopped,
        CommitError::Halted(inner) => CommitError::Halted(inner.clone()),
        other => CommitError::Halted(Box::new(other.clone())),
    }
}

fn fail_all(entries: Vec<Entry>, error: &CommitError) {
    for mut e in entries {
        (e.notify)(Progress::Failed(error));
    }
}

impl Committer {
    /// Replays the commit log in `dir` into `db` (writes acknowledged before a crash that
    /// sled had not flushed), then starts the commit thread. Returns the handle and how
    /// many records were replayed.
    pub fn spawn(db: sled::Db, dir: &Path) -> Result<(Self, usize), CommitError> {
        let (log, replayed) = Log::open(dir, &db).map_err(|e| CommitError::Log(Arc::new(e)))?;
        let inner = Arc::new(Inner {
            db,
            stats: CommitStats::default(),
            state: Mutex::new(State {
                queue: Vec::new(),
                sealable: false,
                waiting: false,
                halted: None,
                flushes: Vec::new(),
                closing: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            overlay: Mutex::new(Overlay::default()),
            next_seq: AtomicU64::new(1),
            batches: Mutex::new(Vec::new()),
            pipeline: Mutex::new(Pipeline::default()),
            drained: Condvar::new(),
            report: Mutex::new(()),
            #[cfg(test)]
            gate: Default::default(),
            #[cfg(test)]
            apply_gate: Default::default(),
        });
        let spawn_error = |e| {
            CommitError::Log(Arc::new(WalError::Io {
                path: dir.join(wal::FILE_NAME),
                source: e,
            }))
        };
        // A rendezvous: the commit thread hands a group over only when the apply thread
        // takes it, so one group is applied while at most one more is written.
        let (to_apply, groups) = std::sync::mpsc::sync_channel(0);
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("hartslag-apply".into())
            .spawn(move || apply_groups(&thread, groups))
            .map_err(spawn_error)?;
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("hartslag-commit".into())
            .spawn(move || CommitThread::new(&thread, log, to_apply).run())
            .map_err(spawn_error)?;
        let alive = Arc::new(Alive(inner.clone()));
        Ok((
            Self {
                inner,
                _alive: alive,
            },
            replayed,
        ))
    }

    /// Queues `writes` as one record (replayed as a whole) and returns at once, unless the
    /// queue is full; `notify` hears what became of it (see [`Progress`]). After a failure
    /// has stopped the committer, `notify` hears `Failed` before this returns.
    pub fn submit(&self, writes: Vec<Mutation>, mut notify: Notify) {
        let mut state = self.inner.lock();
        loop {
            if let Some(h) = &state.halted {
                let refusal = halted(h);
                drop(state);
                notify(Progress::Failed(&refusal));
                return;
            }
            if state.queue.len() < MAX_QUEUED {
                break;
            }
            state = self
                .inner
                .room
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        // Into the overlay before the commit thread can see the record, so the overlay
        // never misses a write that sled does not have yet.
        self.inner.overlay().add(seq, &writes);
        state.queue.push(Entry {
            seq,
            writes,
            notify,
        });
        drop(state);
        self.inner.work.notify_one();
    }

    /// Makes `writes` durable (one record, replayed as a whole) and applies them to sled,
    /// blocking the calling thread until both are done. For writer threads and start-up,
    /// never for async tasks.
    pub fn log_blocking(&self, writes: Vec<Mutation>) -> Result<(), CommitError> {
        let done = Arc::new((Mutex::new(None), Condvar::new()));
        let signal = done.clone();
        self.submit(
            writes,
            Box::new(move |p| {
                let result = match p {
                    Progress::Durable => return,
                    Progress::Applied => Ok(()),
                    Progress::Failed(e) => Err(e.clone()),
                };
                *signal.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                signal.1.notify_all();
            }),
        );
        let mut result = done.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = result.take() {
                return r;
            }
            result = done.1.wait(result).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A reader that sees the records submitted so far, applied or not.
    pub fn reader(&self) -> PendingReader<'_> {
        PendingReader { inner: &self.inner }
    }

    /// Opens a batch that writers add to at any time and the commit thread seals, with
    /// `sealer`, into one record at the start of each group: the cheapest way for a busy
    /// writer to put everything that arrived during one flush into the next one.
    pub fn open_batch<T: Default + Send + 'static>(&self, sealer: impl Sealer<T>) -> OpenBatch<T> {
        let slot = Arc::new(Mutex::new(Slot {
            batch: T::default(),
            empty: true,
            closed: self.inner.lock().halted.as_ref().map(halted),
        }));
        self.inner.batches().push(Box::new(Registered {
            slot: slot.clone(),
            sealer,
        }));
        OpenBatch {
            slot,
            inner: self.inner.clone(),
        }
    }

    /// Resolves once everything written to the database before this call is on disk.
    pub async fn flush(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.inner.lock();
            if let Some(h) = &state.halted {
                return Err(halted(h));
            }
            state.flushes.push(tx);
        }
        self.inner.work.notify_one();
        rx.await.map_err(|_| CommitError::Stopped)?
    }

    /// Counts and latencies of the commit log since start.
    pub fn stats(&self) -> &CommitStats {
        &self.inner.stats
    }

    /// `Err` once a failed write to disk has stopped all writing (until a restart).
    pub fn health(&self) -> Result<(), CommitError> {
        match &self.inner.lock().halted {
            Some(h) => Err(halted(h)),
            None => Ok(()),
        }
    }
}

/// What the commit thread takes from the queue in one turn.
struct Turn {
    group: Vec<Entry>,
    /// Open batches got something: seal them into records after `group`.
    seal: bool,
    flushes: Vec<oneshot::Sender<Result<(), CommitError>>>,
    closing: bool,
    idle: bool,
}

/// The commit thread: the only one that writes and syncs the log and checkpoints; it
/// hands each durable group to the apply thread.
struct CommitThread<'a> {
    inner: &'a Inner,
    log: Log,
    buf: Vec<u8>,
    last_commit: Instant,
    to_apply: SyncSender<Vec<Entry>>,
}

impl<'a> CommitThread<'a> {
    fn new(inner: &'a Inner, log: Log, to_apply: SyncSender<Vec<Entry>>) -> Self {
        Self {
            inner,
            log,
            buf: Vec::new(),
            last_commit: Instant::now(),
            to_apply,
        }
    }

    fn run(mut self) {
        // If this thread unwinds, no writer may wait forever.
        let guard = StopOnUnwind(self.inner);
        loop {
            let mut turn = self.next_turn();
            if turn.seal {
                self.seal_batches(&mut turn.group);
            }
            if !turn.group.is_empty() {
                self.commit(turn.group);
            }
            let checkpoint = !turn.flushes.is_empty()
                || turn.closing
                || (turn.idle && !self.log.is_empty())
                || self.log.len() >= CHECKPOINT_BYTES;
            if checkpoint {
                let refusal = self.refusal();
                let result = match refusal {
                    Some(r) => Err(r),
                    None => self.checkpoint(),
                };
                if let Err(e) = &result
                    && self.refusal().is_none()
                {
                    tracing::error!(error = %e, "checkpointing the commit log failed; refusing every write until a restart");
                    fail_all(self.inner.halt(e.clone()), &halted(e));
                }
                for f in turn.flushes {
                    let _ = f.send(result.clone());
                }
            }
            if turn.closing {
                std::mem::forget(guard);
                return;
            }
        }
    }

    fn refusal(&self) -> Option<CommitError> {
        self.inner.refusal()
    }

    /// Waits for records, flushes, the end, or an idle log to checkpoint.
    fn next_turn(&mut self) -> Turn {
        let mut state = self.inner.lock();
        loop {
            let idle = !self.log.is_empty() && self.last_commit.elapsed() >= IDLE_CHECKPOINT;
            if !state.queue.is_empty()
                || state.sealable
                || !state.flushes.is_empty()
                || state.closing
                || idle
            {
                state.waiting = false;
                let turn = Turn {
                    seal: std::mem::take(&mut state.sealable),
                    group: std::mem::take(&mut state.queue),
                    flushes: std::mem::take(&mut state.flushes),
                    closing: state.closing,
                    idle,
                };
                drop(state);
                self.inner.room.notify_all();
                return turn;
            }
            state.waiting = true;
            state = if self.log.is_empty() {
                self.inner
                    .work
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner())
            } else {
                let left = IDLE_CHECKPOINT.saturating_sub(self.last_commit.elapsed());
                self.inner
                    .work
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            };
        }
    }

    /// Seals every open batch that got something into a record at the end of `group`.
    /// A database failure while sealing stops the committer: `group` is then refused.
    fn seal_batches(&mut self, group: &mut Vec<Entry>) {
        let reader = PendingReader { inner: self.inner };
        let mut failure = None;
        let mut refused = Vec::new();
        for batch in self.inner.batches().iter_mut() {
            match batch.seal(&reader) {
                Ok(Some((writes, notify))) => {
                    let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
                    self.inner.overlay().add(seq, &writes);
                    group.push(Entry {
                        seq,
                        writes,
                        notify,
                    });
                }
                Ok(None) => {}
                Err(f) => {
                    failure.get_or_insert(f.cause);
                    refused.push(f.notify);
                }
            }
        }
        let Some(e) = failure else {
            return;
        };
        if self.refusal().is_none() {
            tracing::error!(error = %e, "the database failed while a record was prepared; refusing every write until a restart");
            fail_all(self.inner.halt(e.clone()), &halted(&e));
        }
        for mut notify in refused {
            notify(Progress::Failed(&e));
        }
    }

    /// Commits the queued records in groups of at most [`GROUP_BYTES`], checkpointing
    /// between them when the log has grown past [`CHECKPOINT_BYTES`].
    fn commit(&mut self, mut queued: Vec<Entry>) {
        while !queued.is_empty() {
            let mut bytes = 0;
            let n = queued
                .iter()
                .take_while(|e| {
                    bytes += wal::round_len(&e.writes);
                    bytes <= GROUP_BYTES
                })
                .count()
                .max(1);
            let rest = queued.split_off(n);
            let group = std::mem::replace(&mut queued, rest);
            if !self.commit_group(group) {
                let refusal = self.refusal().unwrap_or(CommitError::Stopped);
                fail_all(queued, &refusal);
                return;
            }
            if !queued.is_empty()
                && self.log.len() >= CHECKPOINT_BYTES
                && let Err(e) = self.checkpoint()
            {
                tracing::error!(error = %e, "checkpointing the commit log failed; refusing every write until a restart");
                let waiting = self.inner.halt(e.clone());
                fail_all(queued, &e);
                fail_all(waiting, &halted(&e));
                return;
            }
        }
    }

    /// Writes, syncs and reports one group and hands it to the apply thread; on failure
    /// stops everything and returns `false`.
    fn commit_group(&mut self, mut group: Vec<Entry>) -> bool {
        if let Some(refusal) = self.refusal() {
            fail_all(group, &refusal);
            return false;
        }
        self.last_commit = Instant::now();
        if let Err(e) = self.make_durable(&group) {
            tracing::error!(error = %e, "a write to disk failed; refusing every write until a restart");
            // The group before this one is durable: its writers hear how its apply went
            // before anything later hears of this failure.
            self.inner.drain();
            let waiting = self.inner.halt(e.clone());
            fail_all(group, &e);
            fail_all(waiting, &halted(&e));
            return false;
        }
        {
            let _report = self.inner.report();
            if let Some(refusal) = self.refusal() {
                drop(_report);
                fail_all(group, &refusal);
                return false;
            }
            for e in &mut group {
                (e.notify)(Progress::Durable);
            }
        }
        // Durable first, then visible: sled never holds a write whose record could still
        // be lost, so a replay can always complete what sled kept.
        self.inner.pipeline().outstanding += 1;
        if let Err(std::sync::mpsc::SendError(group)) = self.to_apply.send(group) {
            // The apply thread is gone (it stopped the committer as it went).
            self.finished_group();
            fail_all(group, &self.refusal().unwrap_or(CommitError::Stopped));
            return false;
        }
        true
    }

    fn finished_group(&self) {
        finished_group(self.inner);
    }

    /// Appends the group's records to the log and waits for the disk.
    fn make_durable(&mut self, group: &[Entry]) -> Result<(), CommitError> {
        let stats = &self.inner.stats;
        self.buf.clear();
        let log_error = |e| CommitError::Log(Arc::new(e));
        for e in group {
            // A write too large for any record fails the group before anything of it is
            // written; the records behind it may build on it, so the committer stops.
            wal::encode_record(&e.writes, self.log.generation(), &mut self.buf)
                .map_err(log_error)?;
        }
        let started = Instant::now();
        #[cfg(test)]
        if self.inner.gate.pass() {
            return Err(log_error(WalError::Io {
                path: wal::FILE_NAME.into(),
                source: std::io::Error::other("injected fsync failure"),
            }));
        }
        self.log.write(&self.buf).map_err(log_error)?;
        let synced = Instant::now();
        self.log.sync().map_err(log_error)?;
        stats.flush.observe(synced.elapsed());
        stats.sync.observe(started.elapsed());
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sled durable up to now, then empties the log it no longer needs. Every group
    /// handed to the apply thread is applied first: no apply runs during the flush, and
    /// the log is emptied only of records sled has.
    fn checkpoint(&mut self) -> Result<(), CommitError> {
        let started = Instant::now();
        self.inner.drain();
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        self.inner
            .db
            .flush()
            .map_err(|e| CommitError::Flush(Arc::new(e)))?;
        if !self.log.is_empty() {
            self.log
                .reset()
                .map_err(|e| CommitError::Log(Arc::new(e)))?;
        }
        self.inner.stats.checkpoint.observe(started.elapsed());
        self.last_commit = Instant::now();
        Ok(())
    }
}

/// Stops the committer if the commit or the apply thread unwinds, so no writer waits
/// forever (nor a checkpoint for the apply thread).
struct StopOnUnwind<'a>(&'a Inner);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        fail_all(self.0.halt(CommitError::Stopped), &CommitError::Stopped);
        self.0.pipeline().stopped = true;
        self.0.drained.notify_all();
    }
}

/// A group handed to the apply thread is finished (applied or failed).
fn finished_group(inner: &Inner) {
    let mut p = inner.pipeline();
    p.outstanding = p.outstanding.saturating_sub(1);
    inner.drained.notify_all();
}

/// The apply thread: applies each durable group to sled, in the order the commit thread
/// hands them over, and reports `Applied`; ends when the commit thread does.
fn apply_groups(inner: &Inner, groups: Receiver<Vec<Entry>>) {
    let guard = StopOnUnwind(inner);
    let mut splitter = Splitter::start();
    for group in groups {
        apply_group(inner, group, &mut splitter);
        finished_group(inner);
    }
    std::mem::forget(guard);
}

/// Applies one durable group record by record; on failure stops everything.
fn apply_group(inner: &Inner, group: Vec<Entry>, splitter: &mut Splitter) {
    #[cfg(test)]
    let injected = inner.apply_gate.pass();
    if let Some(refusal) = inner.refusal() {
        // Durable, so a restart replays it; but nothing is applied after a failure.
        fail_all(group, &refusal);
        return;
    }
    let mut group = group.into_iter();
    while let Some(mut e) = group.next() {
        #[cfg(not(test))]
        let applied = splitter.apply(&mut e.writes);
        #[cfg(test)]
        let applied = match injected {
            true => Err(sled::Error::Io(std::io::Error::other(
                "injected apply failure",
            ))),
            false => splitter.apply(&mut e.writes),
        };
        if let Err(err) = applied {
            let err = CommitError::Flush(Arc::new(err));
            tracing::error!(error = %err, "applying a commit to the database failed; refusing every write until a restart");
            let waiting = {
                let _report = inner.report();
                inner.halt(err.clone())
            };
            (e.notify)(Progress::Failed(&err));
            fail_all(group.collect(), &err);
            fail_all(waiting, &halted(&err));
            return;
        }
        inner.overlay().applied(e.seq, &e.writes);
        (e.notify)(Progress::Applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds the commit thread before a group's write and sync, and injects failures.
    #[derive(Default)]
    pub(super) struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct GateState {
        /// `None`: open; `Some(n)`: closed, `n` more groups may pass.
        permits: Option<u32>,
        /// Groups that have reached the gate.
        arrivals: u32,
        fail_next: bool,
    }

    impl Gate {
        fn lock(&self) -> MutexGuard<'_, GateState> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Run by the commit thread: waits while the gate is closed; `true` means fail this
        /// group's write as a failed `fdatasync` would.
        pub(super) fn pass(&self) -> bool {
            let mut s = self.lock();
            s.arrivals += 1;
            self.changed.notify_all();
            while s.permits == Some(0) {
                s = self.changed.wait(s).unwrap();
            }
            if let Some(n) = &mut s.permits {
                *n -= 1;
            }
            std::mem::take(&mut s.fail_next)
        }

        fn close(&self) {
            self.lock().permits = Some(0);
        }

        /// Lets one more group through a closed gate (failing it if `fail`).
        fn allow_one(&self, fail: bool) {
            let mut s = self.lock();
            if let Some(n) = &mut s.permits {
                *n += 1;
            }
            s.fail_next = fail;
            self.changed.notify_all();
        }

        fn open(&self) {
            self.lock().permits = None;
            self.changed.notify_all();
        }

        /// Waits until `n` groups in all have reached the gate.
        fn wait_for_arrivals(&self, n: u32) {
            let mut s = self.lock();
            while s.arrivals < n {
                s = self.changed.wait(s).unwrap();
            }
        }
    }

    /// What a record's callback heard, in order, across all records of a test.
    type Heard = Arc<Mutex<Vec<(u32, &'static str)>>>;

    fn listen(heard: &Heard, id: u32) -> Notify {
        let heard = heard.clone();
        Box::new(move |p| {
            let what = match p {
                Progress::Durable => "durable",
                Progress::Applied => "applied",
                Progress::Failed(CommitError::Halted(_)) => "halted",
                Progress::Failed(_) => "failed",
            };
            heard.lock().unwrap().push((id, what));
        })
    }

    fn put(tree: &sled::Tree, k: &[u8], v: &[u8]) -> Vec<Mutation> {
        vec![Mutation::put(tree, k.to_vec(), v.to_vec())]
    }

    /// Waits (with a deadline) until `heard` holds `n` notifications. The deadline is
    /// generous: a queue of 96 MiB took close to 10 s on a loaded two-core machine.
    fn wait_for(heard: &Heard, n: usize) -> Vec<(u32, &'static str)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let h = heard.lock().unwrap().clone();
            if h.len() >= n {
                return h;
            }
            assert!(Instant::now() < deadline, "only heard {h:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn records_are_reported_and_applied_in_submission_order() {
        let (_dir, _db, c, tree) = open();
        let heard = Heard::default();
        for i in 0..2000u32 {
            c.submit(put(&tree, b"k", &i.to_be_bytes()), listen(&heard, i));
        }
        let h = wait_for(&heard, 4000);
        for stage in ["durable", "applied"] {
            let ids: Vec<u32> = h
                .iter()
                .filter(|(_, s)| *s == stage)
                .map(|(i, _)| *i)
                .collect();
            assert_eq!(ids, (0..2000).collect::<Vec<_>>(), "{stage} out of order");
        }
        for i in 0..2000u32 {
            let d = h.iter().position(|e| *e == (i, "durable")).unwrap();
            let a = h.iter().position(|e| *e == (i, "applied")).unwrap();
            assert!(d < a, "record {i} applied before it was durable");
        }
        // Applied in order: the last value wins.
        assert_eq!(
            tree.get(b"k").unwrap().unwrap().as_ref(),
            1999u32.to_be_bytes()
        );
        assert!(
            c.stats().groups.load(Ordering::Relaxed) < 2000,
            "no group held two records"
        );
    }

    #[test]
    fn nothing_is_reported_or_applied_before_its_own_fsync() {
        let (_dir, _db, c, tree) = open();
        let heard = Heard::default();
        c.inner.gate.close();
        c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
        c.inner.gate.wait_for_arrivals(1);
        // Queued while the first group waits for the disk: the writer was not held up.
        c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
        c.submit(put(&tree, b"c", b"3"), listen(&heard, 3));
        std::thread::sleep(Duration::from_millis(20));
        assert!(heard.lock().unwrap().is_empty());
        assert!(
            tree.get(b"a").unwrap().is_none(),
            "sled got a record before its fsync"
        );
        // The writer reads its own pending writes meanwhile.
        assert_eq!(
            c.reader().read(&tree, b"b").unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(
            c.reader().keys_with_prefix(&tree, b"").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        // The first fsync covers the first record only; the other two wait for the next.
        c.inner.gate.allow_one(false);
        let h = wait_for(&heard, 2);
        assert_eq!(h, vec![(1, "durable"), (1, "applied")]);
        c.inner.gate.wait_for_arrivals(2);
        assert!(tree.get(b"b").unwrap().is_none());
        assert_eq!(c.stats().groups.load(Ordering::Relaxed), 1);
        c.inner.gate.open();
        let h = wait_for(&heard, 6);
        assert_eq!(
            &h[2..],
            &[
                (2, "durable"),
                (3, "durable"),
                (2, "applied"),
                (3, "applied")
            ]
        );
        assert_eq!(c.stats().groups.load(Ordering::Relaxed), 2);
        assert_eq!(tree.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn a_failure_mid_pipeline_fails_its_group_and_everything_behind_it() {
        let (_dir, _db, c, tree) = open();
        c.log_blocking(put(&tree, b"before", b"v")).unwrap();
        let heard = Heard::default();
        c.inner.gate.close();
        c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
        c.inner.gate.wait_for_arrivals(2);
        c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
        c.submit(
            vec![Mutation::remove(&tree, b"before".to_vec())],
            listen(&heard, 3),
        );
        c.inner.gate.allow_one(true);
        let h = wait_for(&heard, 3);
        assert_eq!(h, vec![(1, "failed"), (2, "halted"), (3, "halted")]);
        // The disk works again, yet nothing more is accepted: the lost pages may be gone.
        c.submit(put(&tree, b"later", b"v"), listen(&heard, 4));
        assert_eq!(heard.lock().unwrap().last(), Some(&(4, "halted")));
        let later = c.log_blocking(put(&tree, b"later", b"v")).unwrap_err();
        assert!(
            later.to_string().contains("injected fsync failure"),
            "{later}"
        );
        assert!(c.health().is_err());
        for k in [&b"a"[..], b"b", b"later"] {
            assert!(tree.get(k).unwrap().is_none());
            assert!(
                c.reader().read(&tree, k).unwrap().is_none(),
                "a failed write still reads"
            );
        }
        assert_eq!(tree.get(b"before").unwrap().as_deref(), Some(&b"v"[..]));
        let flush = tokio::runtime::Runtime::new().unwrap().block_on(c.flush());
        assert!(matches!(flush, Err(CommitError::Halted(_))), "{flush:?}");
    }

    #[test]
    fn a_group_is_made_durable_while_the_one_before_it_is_applied() {
        let (_dir, _db, c, tree) = open();
        let heard = Heard::default();
        c.inner.apply_gate.close();
        c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
        c.inner.apply_gate.wait_for_arrivals(1);
        // Group 1 is durable and held before its apply; group 2 is written and flushed
        // meanwhile, and reported durable, in order.
        c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
        let h = wait_for(&heard, 2);
        assert_eq!(h, vec![(1, "durable"), (2, "durable")]);
        assert_eq!(c.stats().groups.load(Ordering::Relaxed), 2);
        // Neither is visible in sled yet; their writer reads both.
        assert!(tree.get(b"a").unwrap().is_none());
        assert!(tree.get(b"b").unwrap().is_none());
        assert_eq!(
            c.reader().read(&tree, b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            c.reader().keys_with_prefix(&tree, b"").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        c.inner.apply_gate.open();
        let h = wait_for(&heard, 4);
        assert_eq!(&h[2..], &[(1, "applied"), (2, "applied")]);
        assert_eq!(tree.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
        assert!(c.inner.overlay().trees.values().all(BTreeMap::is_empty));
    }

    #[test]
    fn a_write_nobody_reads_back_stays_out_of_the_pending_view_and_still_lands() {
        let (_dir, _db, c, tree) = open();
        let heard = Heard::default();
        c.inner.apply_gate.close();
        let writes = vec![
            Mutation::put(&tree, b"read".to_vec(), b"1".to_vec()),
            Mutation::put_unread(&tree, b"unread".to_vec(), b"2".to_vec()),
        ];
        c.submit(writes, listen(&heard, 1));
        c.inner.apply_gate.wait_for_arrivals(1);
        let pending: Vec<Vec<u8>> = c
            .inner
            .overlay()
            .trees
            .values()
            .flat_map(|k| k.keys().cloned())
            .collect();
        assert_eq!(pending, vec![b"read".to_vec()]);
        assert_eq!(c.reader().read(&tree, b"unread").unwrap(), None);
        c.inner.apply_gate.open();
        wait_for(&heard, 2);
        assert_eq!(tree.get(b"unread").unwrap().as_deref(), Some(&b"2"[..]));
        assert!(c.inner.overlay().trees.values().all(BTreeMap::is_empty));
    }

    #[test]
    fn a_checkpoint_waits_for_the_group_being_applied_and_a_crash_meanwhile_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        let (c, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        let heard = Heard::default();
        c.inner.apply_gate.close();
        c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
        c.inner.apply_gate.wait_for_arrivals(1);
        wait_for(&heard, 1);
        let flushed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flusher = {
            let (c, flushed) = (c.clone(), flushed.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(c.flush()).unwrap();
                flushed.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !flushed.load(Ordering::SeqCst),
            "the checkpoint ran while a durable group waited for its apply"
        );
        // Killed now, the log still holds the durable record sled does not have.
        let copy = crash_copy(dir.path());
        c.inner.apply_gate.open();
        flusher.join().unwrap();
        assert_eq!(wait_for(&heard, 2)[1], (1, "applied"));
        assert_eq!(tree.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        let db = sled::Config::new().path(copy.path()).open().unwrap();
        let (_c, replayed) = Committer::spawn(db.clone(), copy.path()).unwrap();
        assert_eq!(replayed, 1);
        let tree = db.open_tree("t").unwrap();
        assert_eq!(tree.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_failed_apply_stops_everything_and_nothing_is_applied_after_it() {
        let (_dir, _db, c, tree) = open();
        c.log_blocking(put(&tree, b"before", b"v")).unwrap();
        let heard = Heard::default();
        c.inner.apply_gate.close();
        c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
        c.inner.apply_gate.wait_for_arrivals(2);
        // Group 2 is made durable while group 1 waits for its apply; record 3 queues
        // behind it.
        c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
        assert_eq!(wait_for(&heard, 2), vec![(1, "durable"), (2, "durable")]);
        c.submit(
            vec![Mutation::remove(&tree, b"before".to_vec())],
            listen(&heard, 3),
        );
        c.inner.apply_gate.allow_one(true);
        wait_for(&heard, 4);
        c.inner.apply_gate.open();
        let h = wait_for(&heard, 5);
        assert_eq!(
            &h[2..],
            &[(1, "failed"), (3, "halted"), (2, "halted")],
            "the durable group behind the failed apply is refused, not applied"
        );
        for k in [&b"a"[..], b"b"] {
            assert!(tree.get(k).unwrap().is_none());
            assert!(c.reader().read(&tree, k).unwrap().is_none());
        }
        assert_eq!(tree.get(b"before").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(c.health().is_err());
        c.submit(put(&tree, b"later", b"v"), listen(&heard, 4));
        assert_eq!(heard.lock().unwrap().last(), Some(&(4, "halted")));
        let flush = tokio::runtime::Runtime::new().unwrap().block_on(c.flush());
        assert!(matches!(flush, Err(CommitError::Halted(_))), "{flush:?}");
    }

    #[test]
    fn pending_removes_and_puts_merge_with_stored_keys() {
        let (_dir, _db, c, tree) = open();
        for k in [&b"p1"[..], b"p3", b"p5", b"q"] {
            c.log_blocking(put(&tree, k, b"s")).unwrap();
        }
        c.inner.gate.close();
        c.submit(put(&tree, b"p0", b"n"), Box::new(|_| {}));
        c.inner.gate.wait_for_arrivals(5);
        c.submit(
            vec![
                Mutation::remove(&tree, b"p3".to_vec()),
                Mutation::put(&tree, b"p4".to_vec(), b"n".to_vec()),
            ],
            Box::new(|_| {}),
        );
        c.submit(
            vec![
                Mutation::put(&tree, b"p3".to_vec(), b"again".to_vec()),
                Mutation::remove(&tree, b"p5".to_vec()),
            ],
            Box::new(|_| {}),
        );
        let keys = c.reader().keys_with_prefix(&tree, b"p").unwrap();
        assert_eq!(keys, [&b"p0"[..], b"p1", b"p3", b"p4"].map(<[u8]>::to_vec));
        assert_eq!(
            c.reader().keys(&tree, b"p2", Some(b"p4")).unwrap(),
            vec![b"p3".to_vec()]
        );
        assert_eq!(
            c.reader().read(&tree, b"p3").unwrap().as_deref(),
            Some(&b"again"[..])
        );
        assert_eq!(c.reader().read(&tree, b"p5").unwrap(), None);
        assert_eq!(tree.get(b"p5").unwrap().as_deref(), Some(&b"s"[..]));
        c.inner.gate.open();
        c.log_blocking(Vec::new()).unwrap();
        let stored: Vec<Vec<u8>> = tree
            .scan_prefix(b"p")
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect();
        assert_eq!(stored, keys);
        assert!(c.inner.overlay().trees.values().all(BTreeMap::is_empty));
    }

    /// Seals a batch of numbers into one record putting each under its own key, and
    /// tells what it sealed and failed.
    struct Numbers {
        tree: sled::Tree,
        sealed: Arc<Mutex<Vec<Vec<u32>>>>,
        failed: Arc<Mutex<Vec<u32>>>,
        heard: Heard,
    }

    impl Sealer<Vec<u32>> for Numbers {
        fn seal(&mut self, batch: Vec<u32>, reader: &PendingReader<'_>) -> Sealed {
            // The previous record's writes are seen whether applied yet or not.
            let last = reader.read(&self.tree, b"last").unwrap();
            assert_eq!(
                last.map(|v| u32::from_be_bytes(v.as_ref().try_into().unwrap())),
                self.sealed
                    .lock()
                    .unwrap()
                    .last()
                    .and_then(|b| b.last().copied())
            );
            let mut writes: Vec<Mutation> = batch
                .iter()
                .map(|n| Mutation::put(&self.tree, n.to_be_bytes().to_vec(), b"n".to_vec()))
                .collect();
            writes.push(Mutation::put(
                &self.tree,
                b"last".to_vec(),
                batch[batch.len() - 1].to_be_bytes().to_vec(),
            ));
            let id = self.sealed.lock().unwrap().len() as u32;
            self.sealed.lock().unwrap().push(batch);
            Ok(Some((writes, listen(&self.heard, id))))
        }

        fn fail(&mut self, batch: Vec<u32>, _: &CommitError) {
            self.failed.lock().unwrap().extend(batch);
        }
    }

    #[test]
    fn an_open_batch_becomes_one_record_per_group() {
        let (_dir, _db, c, tree) = open();
        let heard = Heard::default();
        let sealed = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let batch = c.open_batch(Numbers {
            tree: tree.clone(),
            sealed: sealed.clone(),
            failed: failed.clone(),
            heard: heard.clone(),
        });
        c.inner.gate.close();
        c.submit(put(&tree, b"x", b"1"), listen(&heard, 100));
        c.inner.gate.wait_for_arrivals(1);
        // Added while the disk holds the first group: all of it goes into the next one.
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let batch = batch.clone();
                s.spawn(move || {
                    for i in 0..250 {
                        batch.add(|b| b.push(t * 1000 + i)).unwrap();
                    }
                });
            }
        });
        c.inner.gate.allow_one(false);
        c.inner.gate.wait_for_arrivals(2);
        assert_eq!(sealed.lock().unwrap().len(), 1);
        assert_eq!(sealed.lock().unwrap()[0].len(), 1000);
        batch.add(|b| b.push(5000)).unwrap();
        c.inner.gate.open();
        wait_for(&heard, 6);
        assert_eq!(tree.len(), 1001 + 2);
        assert_eq!(sealed.lock().unwrap().len(), 2);
        assert_eq!(c.stats().records.load(Ordering::Relaxed), 3);

        // A failure closes the batch: what waits in it fails, later adds are refused.
        c.inner.gate.close();
        batch.add(|b| b.push(6000)).unwrap();
        c.inner.gate.wait_for_arrivals(4);
        batch.add(|b| b.push(6001)).unwrap();
        c.inner.gate.allow_one(true);
        let h = wait_for(&heard, 7);
        assert_eq!(h.last(), Some(&(2, "failed")));
        let deadline = Instant::now() + Duration::from_secs(10);
        while failed.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*failed.lock().unwrap(), vec![6001]);
        assert!(matches!(
            batch.add(|b| b.push(7000)),
            Err(CommitError::Halted(_))
        ));
        assert!(tree.get(6000u32.to_be_bytes()).unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_waiters_all_get_answered() {
        let (_dir, db, committer, tree) = open();
        let mut tasks = Vec::new();
        for i in 0..256u32 {
            let db = db.clone();
            let tree = tree.clone();
            let c = committer.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    db.insert(i.to_be_bytes(), &b"x"[..]).unwrap();
                    c.flush().await
                } else {
                    let w = vec![Mutation::put(
                        &tree,
                        i.to_be_bytes().to_vec(),
                        b"y".to_vec(),
                    )];
                    tokio::task::spawn_blocking(move || c.log_blocking(w))
                        .await
                        .unwrap()
                }
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(db.len(), 128);
        assert_eq!(tree.len(), 128);
    }

    #[test]
    fn logged_writes_survive_a_restart_that_sled_never_flushed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(None)
                .open()
                .unwrap();
            let (committer, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
            let tree = db.open_tree("t").unwrap();
            committer
                .log_blocking(vec![Mutation::put(&tree, b"k".to_vec(), b"v".to_vec())])
                .unwrap();
            assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
            // Simulate a crash: keep the log, throw away what sled holds in memory.
            std::mem::forget(committer);
            std::mem::forget(tree);
            std::mem::forget(db);
        }
        // sled's lock is held by the forgotten handle, so reopen a copy of the directory.
        let copy = crash_copy(dir.path());
        let db = sled::Config::new().path(copy.path()).open().unwrap();
        let (_committer, replayed) = Committer::spawn(db.clone(), copy.path()).unwrap();
        assert_eq!(replayed, 1);
        let tree = db.open_tree("t").unwrap();
        assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn writers_on_many_threads_all_land() {
        let (_dir, _db, committer, tree) = open();
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let (committer, tree) = (committer.clone(), tree.clone());
                s.spawn(move || {
                    for i in 0..50u32 {
                        let k = [t.to_be_bytes(), i.to_be_bytes()].concat();
                        committer
                            .log_blocking(vec![Mutation::put(&tree, k.clone(), k)])
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(tree.len(), 400);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_count_groups_records_syncs_and_checkpoints() {
        let (_dir, _db, committer, tree) = open();
        let writers: Vec<_> = (0..16u32)
            .map(|t| {
                let (committer, tree) = (committer.clone(), tree.clone());
                std::thread::spawn(move || {
                    for i in 0..20u32 {
                        let k = [t.to_be_bytes(), i.to_be_bytes()].concat();
                        committer
                            .log_blocking(vec![Mutation::put(&tree, k.clone(), k)])
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let stats = committer.stats();
        let groups = stats.groups.load(Ordering::Relaxed);
        assert_eq!(stats.records.load(Ordering::Relaxed), 320);
        assert!((1..=320).contains(&groups), "{groups} groups");
        assert_eq!(stats.flush.snapshot().count(), groups);
        let mut text = String::new();
        stats.sync.render("sync", "", &mut text);
        assert!(text.contains(&format!("sync_count {groups}\n")), "{text}");
        assert!(text.contains("sync_bucket{le=\"0.0001\"}"), "{text}");
        committer.flush().await.unwrap();
        let mut text = String::new();
        stats.checkpoint.render("checkpoint", "", &mut text);
        assert!(!text.contains("checkpoint_count 0\n"), "{text}");
    }

    #[test]
    fn a_long_queue_is_committed_in_bounded_groups_and_the_log_stays_bounded() {
        let (dir, _db, c, tree) = open();
        let heard = Heard::default();
        c.inner.gate.close();
        c.submit(put(&tree, b"first", b"1"), listen(&heard, 0));
        c.inner.gate.wait_for_arrivals(1);
        // 96 MiB queue up behind the first group, three times what one group may hold.
        let value = vec![7u8; 2 * 1024 * 1024];
        for i in 1..=48u32 {
            c.submit(put(&tree, &i.to_be_bytes(), &value), listen(&heard, i));
        }
        c.inner.gate.open();
        wait_for(&heard, 2 * 49);
        let groups = c.stats().groups.load(Ordering::Relaxed);
        assert!(groups >= 4, "{groups} groups");
        let size = std::fs::metadata(dir.path().join(wal::FILE_NAME))
            .unwrap()
            .len();
        let bound = CHECKPOINT_BYTES + GROUP_BYTES as u64 + 4 * 1024 * 1024;
        assert!(size <= bound, "the log file grew to {size} bytes");
        assert_eq!(tree.len(), 49);
    }

    /// Fails every batch as a database that cannot be read would, and notes whether the
    /// committer's health had already failed when its writers were told.
    struct Broken {
        committer: Arc<Mutex<Option<Committer>>>,
        healthy_when_told: Arc<Mutex<Vec<bool>>>,
    }

    impl Sealer<Vec<u32>> for Broken {
        fn seal(&mut self, _: Vec<u32>, _: &PendingReader<'_>) -> Sealed {
            let (committer, told) = (self.committer.clone(), self.healthy_when_told.clone());
            Err(SealFailure {
                cause: CommitError::Stopped,
                notify: Box::new(move |progress| {
                    assert!(matches!(progress, Progress::Failed(_)));
                    let c = committer.lock().unwrap();
                    let healthy = c.as_ref().map(|c| c.health().is_ok());
                    told.lock().unwrap().push(healthy.unwrap_or(true));
                }),
            })
        }

        fn fail(&mut self, _: Vec<u32>, _: &CommitError) {}
    }

    #[test]
    fn writers_of_a_batch_that_could_not_be_sealed_hear_of_it_after_the_committer_stopped() {
        let (_dir, _db, c, _tree) = open();
        let committer = Arc::new(Mutex::new(Some(c.clone())));
        let told = Arc::new(Mutex::new(Vec::new()));
        let batch = c.open_batch(Broken {
            committer: committer.clone(),
            healthy_when_told: told.clone(),
        });
        batch.add(|b| b.push(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while told.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the batch was never refused");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*told.lock().unwrap(), [false]);
        assert!(c.health().is_err());
        committer.lock().unwrap().take();
    }

    /// A committer on a fresh database, with tree `t` to write to.
    fn open() -> (tempfile::TempDir, sled::Db, Committer, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (committer, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        (dir, db, committer, tree)
    }

    /// A copy of the files in `dir` as they are now, as a process killed now leaves them.
    fn crash_copy(dir: &Path) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        for entry in walk(dir) {
            let rel = entry.strip_prefix(dir).unwrap();
            let to = copy.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &to).unwrap();
        }
        copy
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
