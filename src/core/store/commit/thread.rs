//! The commit thread: turns of the queue, sealing open batches, writing and syncing each
//! group, applying a small one itself or handing it to the apply thread, and checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::split::Splitter;
use super::{
    CommitError, Entry, Inner, PendingReader, Progress, StopOnUnwind, apply, fail_all,
    finished_group, halted,
};
#[cfg(test)]
use crate::core::store::wal::WalError;
use crate::core::store::wal::{self, Log};

/// Log size after which the committer checkpoints (bounds replay time after a crash).
pub(super) const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// Most record bytes written with one `fdatasync`: a longer queue is committed in several
/// groups, with a checkpoint between them once the log passes [`CHECKPOINT_BYTES`], so the
/// log never holds much more than the sum of both (or one round larger than that).
pub(super) const GROUP_BYTES: usize = 32 * 1024 * 1024;

/// A log with records in it is checkpointed after this long without commits.
pub(super) const IDLE_CHECKPOINT: Duration = Duration::from_secs(10);

/// Groups of fewer writes are applied on the commit thread when the apply thread has
/// nothing left to do. A flush of ingest (one record of a few rollups and an event block)
/// or of pings (a round or two: state records and ping blocks) has well under this; a
/// herd's round of Downs, thousands. The bound keeps what the next `fdatasync` waits for
/// small: a few dozen cached inserts, tens of microseconds.
pub(super) const APPLY_HERE_BELOW: usize = 32;

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
/// applies each small durable group itself when the apply thread is idle, and hands the
/// others to the apply thread.
pub(super) struct CommitThread<'a> {
    inner: &'a Inner,
    log: Log,
    buf: Vec<u8>,
    last_commit: Instant,
    to_apply: SyncSender<Vec<Entry>>,
    /// Applies small groups on this thread, without a helper.
    alone: Splitter,
}

impl<'a> CommitThread<'a> {
    pub(super) fn new(inner: &'a Inner, log: Log, to_apply: SyncSender<Vec<Entry>>) -> Self {
        Self {
            inner,
            log,
            buf: Vec::new(),
            last_commit: Instant::now(),
            to_apply,
            alone: Splitter::alone(),
        }
    }

    pub(super) fn run(mut self) {
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

    /// Writes, syncs and reports one group, and applies it or hands it to the apply
    /// thread; on failure stops everything and returns `false`.
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
        if self.apply_here(&group) {
            apply::apply_group(self.inner, group, &mut self.alone);
            return self.refusal().is_none();
        }
        self.inner.pipeline().outstanding += 1;
        if let Err(std::sync::mpsc::SendError(group)) = self.to_apply.send(group) {
            // The apply thread is gone (it stopped the committer as it went).
            self.finished_group();
            fail_all(group, &self.refusal().unwrap_or(CommitError::Stopped));
            return false;
        }
        true
    }

    /// Whether to apply `group` on this thread: a small group with nothing before it left
    /// to apply (so the order of applies holds). Handing it to the apply thread would cost
    /// that thread a wake and a sleep per flush, and the apply would compete for a core
    /// with this thread's next write anyway; a large one keeps the pipeline, where its
    /// apply overlaps the next group's `fdatasync`.
    fn apply_here(&self, group: &[Entry]) -> bool {
        // Tests that hold the apply thread mean every group to wait there.
        #[cfg(test)]
        if self.inner.apply_gate.is_closed() {
            return false;
        }
        let writes: usize = group.iter().map(|e| e.writes.len()).sum();
        writes < APPLY_HERE_BELOW && self.inner.pipeline().outstanding == 0
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
        // sled's flush and the state file's sync write different files: side by side, the
        // log waits for the longer of the two instead of both.
        // Without a thread to be had (a pids limit), one after the other.
        let states = &self.inner.states;
        let (flushed, synced) = std::thread::scope(|s| {
            let syncing = std::thread::Builder::new()
                .name("hartslag-ckpt".into())
                .spawn_scoped(s, || states.sync());
            let flushed = self.inner.db.flush();
            let synced = match syncing {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(states.failed_sync("the thread syncing it panicked".into()))
                }),
                Err(_) => states.sync(),
            };
            (flushed, synced)
        });
        flushed.map_err(|e| CommitError::Flush(Arc::new(e)))?;
        synced.map_err(|e| CommitError::States(Arc::new(e)))?;
        if !self.log.is_empty() {
            self.log
                .reset()
                .map_err(|e| CommitError::Log(Arc::new(e)))?;
        }
        self.inner.stats.checkpoint.observe(started.elapsed());
        self.inner.stats.checkpoint_time.observe(started.elapsed());
        self.last_commit = Instant::now();
        Ok(())
    }
}
