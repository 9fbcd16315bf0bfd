//! Group commit: writer threads take turns leading the commit log, and every `flush` of
//! the sled database goes through the same turn.
//!
//! A writer ([`Committer::log_blocking`]) queues its writes and waits. Whoever finds no
//! commit running becomes the leader: it takes every queued write list, appends them all
//! to the commit log with one `fdatasync`, applies them to sled in queue order, and wakes
//! the writers it covered. Writes queued meanwhile go with the next leader. The writer
//! thread itself does the fsync when nobody else is committing, so a lone writer (the
//! ingest thread under load) pays no hand-off to another thread and back.
//!
//! A small background thread serves [`Committer::flush`] and checkpoints a log left idle:
//! a checkpoint is a sled flush, after which the log is emptied. It takes the same turn,
//! so only one thread ever flushes sled (sled 0.34 deadlocks when many tasks call
//! `flush_async` at once).
//!
//! After a failed `fdatasync` nothing more is accepted: the kernel may already have dropped
//! the pages it could not write, so a later fsync that succeeds proves nothing. Writers get
//! [`CommitError::Halted`], [`Committer::health`] reports it, and a restart replays the log.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::latency::LatencyRecord;
use super::wal::{self, Log, Mutation, WalError};
use crate::core::metrics::{Histogram, SYNC_BUCKETS};

/// Log size after which the committer checkpoints (bounds replay time after a crash).
const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// A log with records in it is checkpointed after this long without commits.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(10);

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
}

/// Called once a writer's record is on disk, before it is applied to sled.
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// Called once a writer's record is applied to sled, before any checkpoint the leader runs
/// next: readers waiting for the apply need not wait for a sled flush too.
pub type OnApplied = Box<dyn FnOnce() + Send>;

/// One writer's queued writes and where its leader puts the answer.
struct Entry {
    writes: Vec<Mutation>,
    on_durable: Option<OnDurable>,
    on_applied: Option<OnApplied>,
    done: Arc<OnceLock<Result<(), CommitError>>>,
}

struct State {
    /// Writes waiting for a leader.
    queue: Vec<Entry>,
    /// The commit log; `None` while a leader holds it.
    log: Option<Log>,
    /// Set after a failed write to disk: everything later is refused.
    halted: Option<CommitError>,
    /// When the last group was committed (the idle checkpoint waits for quiet).
    last_commit: Instant,
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
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            sync: Histogram::with_bounds(&SYNC_BUCKETS),
            flush: LatencyRecord::default(),
            checkpoint: Histogram::default(),
            groups: AtomicU64::new(0),
            records: AtomicU64::new(0),
        }
    }
}

struct Inner {
    db: sled::Db,
    stats: CommitStats,
    state: Mutex<State>,
    /// Signalled whenever a leader hands the log back.
    turn: Condvar,
}

/// Handle to the group committer; cheap to clone and share between writers.
#[derive(Clone)]
pub struct Committer {
    inner: Arc<Inner>,
    flushes: mpsc::Sender<oneshot::Sender<Result<(), CommitError>>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

/// What a leader does with the log in its turn.
enum Work {
    /// Commit these writers' lists (and checkpoint if the log has grown past its bound).
    Group(Vec<Entry>),
    /// Flush sled and empty the log.
    Checkpoint,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing is left half-done under this lock (a leader takes the log out first), so
        // a lock poisoned by a panic elsewhere is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&'a self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.turn.wait(state).unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses everything from now on and answers whoever is queued.
    fn halt(&self, state: &mut State, cause: CommitError) {
        let refusal = halted(&cause);
        for e in state.queue.drain(..) {
            let _ = e.done.set(Err(refusal.clone()));
        }
        state.halted = Some(cause);
        self.turn.notify_all();
    }

    /// Takes the log (the caller saw it there), runs `work` outside the lock and hands the
    /// log back. Returns the state lock, taken again, and the outcome.
    fn lead<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        work: Work,
    ) -> (MutexGuard<'a, State>, Result<(), CommitError>) {
        let Some(mut log) = state.log.take() else {
            return (state, Err(CommitError::Stopped));
        };
        drop(state);
        let mut turn = Turn {
            inner: self,
            log: Some(&mut log),
        };
        let result = match work {
            Work::Group(mut group) => {
                let result = turn.commit(&mut group);
                for e in group {
                    let _ = e.done.set(result.clone());
                }
                result
            }
            Work::Checkpoint => turn.checkpoint(),
        };
        turn.log = None;
        drop(turn);
        let mut state = self.lock();
        state.log = Some(log);
        state.last_commit = Instant::now();
        if let Err(e) = &result
            && e.is_disk_failure()
        {
            tracing::error!(error = %e, "a write to disk failed; refusing every write until a restart");
            self.halt(&mut state, e.clone());
        }
        self.turn.notify_all();
        (state, result)
    }

    /// Waits for the log, then checkpoints (used by flushes and the idle checkpoint).
    fn checkpoint_when_free(&self, only_if_idle: bool) -> Result<(), CommitError> {
        let mut state = self.lock();
        loop {
            if let Some(h) = &state.halted {
                return Err(halted(h));
            }
            if let Some(log) = &state.log {
                if only_if_idle && (log.is_empty() || state.last_commit.elapsed() < IDLE_CHECKPOINT)
                {
                    return Ok(());
                }
                return self.lead(state, Work::Checkpoint).1;
            }
            state = self.wait(state);
        }
    }
}

/// The refusal given after `cause` stopped the committer.
fn halted(cause: &CommitError) -> CommitError {
    match cause {
        CommitError::Stopped => CommitError::Stopped,
        other => CommitError::Halted(Box::new(other.clone())),
    }
}

impl CommitError {
    /// Whether this leaves the disk in a state later writes cannot be trusted on.
    fn is_disk_failure(&self) -> bool {
        matches!(self, CommitError::Log(_) | CommitError::Flush(_))
    }
}

/// A leader's turn with the log. If the leader unwinds mid-turn, the log is gone: every
/// writer is told the committer stopped instead of waiting forever.
struct Turn<'a> {
    inner: &'a Inner,
    log: Option<&'a mut Log>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.log.is_some() {
            let mut state = self.inner.lock();
            self.inner.halt(&mut state, CommitError::Stopped);
        }
    }
}

impl Turn<'_> {
    fn log(&mut self) -> Result<&mut Log, CommitError> {
        self.log.as_deref_mut().ok_or(CommitError::Stopped)
    }

    fn commit(&mut self, group: &mut [Entry]) -> Result<(), CommitError> {
        let mut buf = Vec::with_capacity(group.iter().map(|e| e.writes.len() * 64).sum());
        let stats = &self.inner.stats;
        let log = self.log()?;
        for e in group.iter() {
            wal::encode_record(&e.writes, log.generation(), &mut buf);
        }
        let started = Instant::now();
        log.write(&buf).map_err(|e| CommitError::Log(Arc::new(e)))?;
        let synced = Instant::now();
        log.sync().map_err(|e| CommitError::Log(Arc::new(e)))?;
        stats.flush.observe(synced.elapsed());
        stats.sync.observe(started.elapsed());
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        for e in group.iter_mut() {
            if let Some(f) = e.on_durable.take() {
                f();
            }
        }
        // Durable first, then visible: sled never holds a write whose record could still be
        // lost, so a replay can always complete what sled kept.
        group
            .iter()
            .flat_map(|e| &e.writes)
            .try_for_each(Mutation::apply)
            .map_err(|e| CommitError::Flush(Arc::new(e)))?;
        for e in group.iter_mut() {
            if let Some(f) = e.on_applied.take() {
                f();
            }
        }
        if log.len() >= CHECKPOINT_BYTES {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes sled durable up to now, then empties the log it no longer needs.
    fn checkpoint(&mut self) -> Result<(), CommitError> {
        let started = Instant::now();
        self.inner
            .db
            .flush()
            .map_err(|e| CommitError::Flush(Arc::new(e)))?;
        let log = self.log()?;
        if !log.is_empty() {
            log.reset().map_err(|e| CommitError::Log(Arc::new(e)))?;
        }
        self.inner.stats.checkpoint.observe(started.elapsed());
        Ok(())
    }
}

impl Committer {
    /// Replays the commit log in `dir` into `db` (writes acknowledged before a crash that
    /// sled had not flushed), then starts the thread that serves flushes and idle
    /// checkpoints. When every handle is dropped that thread checkpoints once more, so the
    /// next start replays nothing.
    pub fn spawn(db: sled::Db, dir: &Path) -> Result<(Self, usize), CommitError> {
        let (log, replayed) = Log::open(dir, &db).map_err(|e| CommitError::Log(Arc::new(e)))?;
        let inner = Arc::new(Inner {
            db,
            stats: CommitStats::default(),
            state: Mutex::new(State {
                queue: Vec::new(),
                log: Some(log),
                halted: None,
                last_commit: Instant::now(),
            }),
            turn: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let background = inner.clone();
        std::thread::Builder::new()
            .name("hartslag-checkpoint".into())
            .spawn(move || checkpointer(&background, &rx))
            .map_err(|e| {
                CommitError::Log(Arc::new(WalError::Io {
                    path: dir.join(wal::FILE_NAME),
                    source: e,
                }))
            })?;
        Ok((Self { inner, flushes: tx }, replayed))
    }

    /// Makes `writes` durable (one record, replayed as a whole) and applies them to sled,
    /// blocking the calling thread until both are done. For writer threads, never for
    /// async tasks: the caller may be the one that runs the fsync.
    pub fn log_blocking(&self, writes: Vec<Mutation>) -> Result<(), CommitError> {
        self.log_blocking_then(writes, None, None)
    }

    /// [`Committer::log_blocking`], calling `on_durable` as soon as the record is on disk
    /// and before it is applied: a writer can answer its callers while sled catches up, as
    /// long as its readers wait for the apply (see `store::events::Visibility`). Not
    /// called if the record could not be written. `on_applied` runs right after the apply
    /// (not if it failed), before a checkpoint the leader may run in the same turn.
    pub fn log_blocking_then(
        &self,
        writes: Vec<Mutation>,
        on_durable: Option<OnDurable>,
        on_applied: Option<OnApplied>,
    ) -> Result<(), CommitError> {
        let done = Arc::new(OnceLock::new());
        let mut state = self.inner.lock();
        if let Some(h) = &state.halted {
            return Err(halted(h));
        }
        state.queue.push(Entry {
            writes,
            on_durable,
            on_applied,
            done: done.clone(),
        });
        loop {
            if let Some(result) = done.get() {
                return result.clone();
            }
            if let Some(h) = &state.halted {
                // A leader that took these writes unwound before answering.
                return Err(halted(h));
            }
            if state.log.is_some() {
                let group = std::mem::take(&mut state.queue);
                state = self.inner.lead(state, Work::Group(group)).0;
                continue;
            }
            state = self.inner.wait(state);
        }
    }

    /// Resolves once everything written to the database before this call is on disk.
    pub async fn flush(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.flushes.send(tx).map_err(|_| CommitError::Stopped)?;
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

/// Serves flush requests (all those queued share one checkpoint) and checkpoints a log
/// that has been idle for [`IDLE_CHECKPOINT`].
fn checkpointer(inner: &Inner, rx: &mpsc::Receiver<oneshot::Sender<Result<(), CommitError>>>) {
    loop {
        match rx.recv_timeout(IDLE_CHECKPOINT) {
            Ok(first) => {
                let mut waiters = vec![first];
                waiters.extend(rx.try_iter());
                let result = inner.checkpoint_when_free(false);
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = inner.checkpoint_when_free(true) {
                    tracing::error!(error = %e, "checkpointing the commit log failed");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = inner.checkpoint_when_free(false) {
                    tracing::error!(error = %e, "the final checkpoint failed; the next start replays the commit log");
                }
                return;
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

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
        let copy = tempfile::tempdir().unwrap();
        for entry in walk(dir.path()) {
            let rel = entry.strip_prefix(dir.path()).unwrap();
            let to = copy.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &to).unwrap();
        }
        let db = sled::Config::new().path(copy.path()).open().unwrap();
        let (_committer, replayed) = Committer::spawn(db.clone(), copy.path()).unwrap();
        assert_eq!(replayed, 1);
        let tree = db.open_tree("t").unwrap();
        assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_failed_write_to_disk_stops_every_later_write() {
        let (_dir, _db, committer, tree) = open();
        let put = |k: &[u8]| vec![Mutation::put(&tree, k.to_vec(), b"v".to_vec())];
        committer.log_blocking(put(b"before")).unwrap();
        assert!(committer.health().is_ok());

        fail_next_append(&committer);
        let first = committer.log_blocking(put(b"failed")).unwrap_err();
        assert!(matches!(first, CommitError::Log(_)), "{first:?}");
        // The disk worked again, yet nothing more is accepted: the lost pages may be gone.
        let later = committer.log_blocking(put(b"later")).unwrap_err();
        assert!(matches!(later, CommitError::Halted(_)), "{later:?}");
        assert!(
            later.to_string().contains("injected fsync failure"),
            "{later}"
        );
        assert!(committer.health().is_err());
        assert!(tree.get(b"failed").unwrap().is_none());
        assert!(tree.get(b"later").unwrap().is_none());
        assert_eq!(tree.get(b"before").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn on_durable_runs_before_the_apply_on_applied_after_it_and_neither_after_a_failure() {
        use std::sync::atomic::{AtomicU8, Ordering};
        let (_dir, _db, committer, tree) = open();
        // 1: called before the apply; 2: called after it.
        let durable = Arc::new(AtomicU8::new(0));
        let applied = Arc::new(AtomicU8::new(0));
        let seen = |flag: &Arc<AtomicU8>| -> OnDurable {
            let (flag, t) = (flag.clone(), tree.clone());
            Box::new(move || {
                let there = t.get(b"k").unwrap().is_some();
                flag.store(if there { 2 } else { 1 }, Ordering::SeqCst);
            })
        };
        committer
            .log_blocking_then(
                vec![Mutation::put(&tree, b"k".to_vec(), b"v".to_vec())],
                Some(seen(&durable)),
                Some(seen(&applied)),
            )
            .unwrap();
        assert_eq!(durable.load(Ordering::SeqCst), 1);
        assert_eq!(applied.load(Ordering::SeqCst), 2);
        assert!(tree.get(b"k").unwrap().is_some());

        fail_next_append(&committer);
        let called = Arc::new(AtomicU8::new(0));
        let (c, c2) = (called.clone(), called.clone());
        let r = committer.log_blocking_then(
            vec![Mutation::put(&tree, b"x".to_vec(), b"v".to_vec())],
            Some(Box::new(move || c.store(1, Ordering::SeqCst))),
            Some(Box::new(move || c2.store(2, Ordering::SeqCst))),
        );
        assert!(r.is_err());
        assert_eq!(
            called.load(Ordering::SeqCst),
            0,
            "answered or published a write that is not on disk"
        );
    }

    #[test]
    fn writers_on_many_threads_share_turns_and_all_land() {
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
        let mut text = String::new();
        stats.sync.render("sync", "", &mut text);
        assert!(text.contains(&format!("sync_count {groups}\n")), "{text}");
        assert!(text.contains("sync_bucket{le=\"0.0001\"}"), "{text}");
        committer.flush().await.unwrap();
        let mut text = String::new();
        stats.checkpoint.render("checkpoint", "", &mut text);
        assert!(!text.contains("checkpoint_count 0\n"), "{text}");
    }

    /// A committer on a fresh database, with tree `t` to write to.
    fn open() -> (tempfile::TempDir, sled::Db, Committer, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (committer, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        (dir, db, committer, tree)
    }

    /// Makes the next append fail the way a failed `fdatasync` does.
    fn fail_next_append(committer: &Committer) {
        committer
            .inner
            .lock()
            .log
            .as_mut()
            .unwrap()
            .fail_next_append = true;
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
