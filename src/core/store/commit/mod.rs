//! Pipelined group commit: writers hand their records to the committer and go on, and one
//! commit thread writes every queued record to the commit log, makes the group durable
//! with one `fdatasync` and reports it; then an apply thread applies the group to sled and
//! reports again, while the commit thread already writes and flushes the next group. While
//! the disk flushes one group, the writers validate, prepare and queue the next, and the
//! apply thread applies the one before: only the disk's own latency is serialised, not the
//! CPU work around it. At most one group is applied while one more is written and flushed
//! (the commit thread waits to hand over the next), so a slow sled slows the log too.
//!
//! A small group (fewer than [`APPLY_HERE_BELOW`](thread::APPLY_HERE_BELOW) writes: a
//! flush of ingest or of pings) is applied by the commit thread itself when the apply
//! thread has nothing left: its apply takes tens of microseconds, less than the wake and
//! sleep of a second thread per flush cost, and on two cores it would compete with the
//! commit thread for a core anyway (measured in `docs/benchmarks.md`, "Thread switches
//! per flush"). Large groups (a herd's round of Downs) keep the pipeline.
//!
//! A writer either submits a finished record with [`Committer::submit`], or keeps an
//! [`OpenBatch`] in the committer that the commit thread seals into one record when it
//! starts a group: whatever arrived while the disk flushed the previous group becomes one
//! record, however many times the writer added to it. Either way the writer learns what
//! became of its record through a [`Notify`] callback: [`Progress::Durable`] once the
//! record is on disk (answer the client now; run on the commit thread), then
//! [`Progress::Applied`] once sled has it (readers of sled see it now; run on the apply
//! thread, or on the commit thread for a small group), or [`Progress::Failed`]. A writer that prepares its next record from what it
//! wrote before reads through a [`PendingReader`], which sees records not applied yet.
//!
//! The invariants, each tested below:
//! 1. **Order.** Records are written, made durable, reported and applied in the order they
//!    were submitted, across all writers; each stage keeps the order across the two
//!    threads (a group is applied only after the group before it: the commit thread
//!    applies one only when the apply thread has finished every group handed to it). Inside one large
//!    record, writes to different keys may be applied in any order ([`split`]),
//!    writes to one key in the record's.
//! 2. **No answer before the disk.** `Durable` is reported only after an `fdatasync` that
//!    began after the record was written; `Applied` only after `Durable`.
//! 3. **Durable before visible.** sled and the monitors' state file get a record's writes
//!    only after it is durable: whatever they hold, a replay of the log completes it.
//! 4. **One flush at a time.** Only the commit thread syncs the log or flushes sled (sled
//!    0.34 also deadlocks when many tasks call `flush_async` at once), and a checkpoint
//!    first waits until the apply thread has applied every group handed to it: no apply
//!    runs during sled's flush, and the log is emptied only once sled and the state file
//!    have every record in it. (The state file's own thread also syncs it every 100 ms,
//!    which only makes durable sooner what the checkpoint's sync would.)
//! 5. **Stop on failure.** After a failed write, sync or apply, nothing is reported
//!    durable or applied again: the kernel may already have dropped the pages it could not
//!    write, so a later fsync that succeeds proves nothing. Every queued and later record
//!    fails with [`CommitError::Halted`], [`Committer::health`] says so (`/healthz` 503),
//!    and a restart replays the log. A group already reported durable when the apply of
//!    the group before it failed hears `Failed` after `Durable` (it is in the log, and a
//!    restart replays it); a failed write or sync is reported only after the apply
//!    thread has finished the group before it, so callbacks keep their order.
//! 6. **Writers read their own pending writes.** From submission until its apply, a
//!    record's puts and removes are seen by [`PendingReader::read`] and
//!    [`PendingReader::keys`] (all but puts of keys their writer never reads back that
//!    way, [`Mutation::put_unread`](super::wal::Mutation::put_unread)); every other
//!    reader reads sled, which holds only durable data.
//!
//! A checkpoint (a sled flush and a sync of the monitors' state file, after which the log
//! starts over) runs on the commit thread
//! between groups: when the log passes [`CHECKPOINT_BYTES`](thread::CHECKPOINT_BYTES),
//! after [`IDLE_CHECKPOINT`](thread::IDLE_CHECKPOINT) without commits, for
//! [`Committer::flush`], and when the last handle is dropped.

mod apply;
mod pending;
mod split;
#[cfg(test)]
mod tests;
mod thread;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

use self::pending::Overlay;
pub use self::pending::PendingReader;
use self::thread::CommitThread;
use super::latency::LatencyRecord;
use super::states::{StateFile, StatesError};
use super::wal::{self, Log, Mutation, WalError};
use crate::core::metrics::{Histogram, SYNC_BUCKETS};

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
    /// The monitors' state file could not be opened or synced.
    #[error("the monitors' state file: {0}")]
    States(Arc<StatesError>),
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

/// A writer's callback for its record (keep it short, and never wait in it for the
/// committer): `Durable` runs on the commit thread, `Applied` on the apply thread or, for
/// a small group, the commit thread, `Failed` on either.
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
    /// The same, finely: the commit thread writes nothing meanwhile, so benchmarks print
    /// how long writers stood still for checkpoints.
    pub checkpoint_time: LatencyRecord,
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
            checkpoint_time: LatencyRecord::default(),
            groups: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

struct Inner {
    db: sled::Db,
    /// The monitors' state records, written and synced with sled ([`states`](super::states)).
    states: StateFile,
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
        let states = StateFile::open(dir).map_err(|e| CommitError::States(Arc::new(e)))?;
        let (log, replayed) =
            Log::open(dir, &db, &states).map_err(|e| CommitError::Log(Arc::new(e)))?;
        let inner = Arc::new(Inner {
            db,
            states,
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
            .spawn(move || apply::apply_groups(&thread, groups))
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

    /// The monitors' state file, whose writes go through this committer like sled's.
    pub fn states(&self) -> &StateFile {
        &self.inner.states
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

#[cfg(test)]
impl Committer {
    /// Holds the apply thread before its next group: tests of writers that race it.
    pub(crate) fn hold_apply(&self) {
        self.inner.apply_gate.close();
    }

    /// Lets the apply thread go on.
    pub(crate) fn release_apply(&self) {
        self.inner.apply_gate.open();
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
