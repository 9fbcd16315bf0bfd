//! Group commit: one thread owns the commit log and every `flush` of the sled database.
//!
//! Writers hand the committer either a list of writes ([`Committer::log`]) or a request
//! for a full flush ([`Committer::flush`]). The committer drains every request that is
//! queued, appends all the write lists to the commit log with one `fdatasync`, applies them
//! to sled in arrival order, and answers them together. A flush request (and a commit log
//! grown past its bound, or one left idle) becomes a checkpoint: a sled flush, after which
//! the log is emptied. sled 0.34 also deadlocks when many tasks call `flush_async` at once,
//! which is one more reason a single thread owns it.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::wal::{self, Log, WalError, Write};

/// Log size after which the committer checkpoints (bounds replay time after a crash).
const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// A log with records in it is checkpointed after this long without requests.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(10);

/// Most requests answered in one group.
const MAX_GROUP: usize = 4096;

/// Why a write or flush could not be confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// sled reported an I/O or corruption error while flushing or applying.
    #[error("flushing the database failed: {0}")]
    Flush(Arc<sled::Error>),
    /// The commit log could not be written.
    #[error("{0}")]
    Log(Arc<WalError>),
    /// The committer thread is gone (the process is shutting down).
    #[error("the commit thread has stopped")]
    Stopped,
}

/// Called once the group covering a request is durable (or failed).
pub type Callback = Box<dyn FnOnce(Result<(), CommitError>) + Send>;

enum Request {
    Log(Vec<Write>, Callback),
    Flush(Callback),
}

/// Handle to the group-commit thread; cheap to clone and share between writers.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Log(w, _) => write!(f, "Log({} writes)", w.len()),
            Request::Flush(_) => f.write_str("Flush"),
        }
    }
}

struct Thread {
    db: sled::Db,
    log: Log,
}

impl Thread {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut group: Vec<Request> = Vec::with_capacity(256);
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            let first = match rx.recv_timeout(IDLE_CHECKPOINT) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !self.log.is_empty()
                        && let Err(e) = self.checkpoint()
                    {
                        tracing::error!(error = %e, "checkpointing the commit log failed");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.commit(&mut group, &mut buf);
        }
        // Every handle is gone: leave an empty log behind, so the next start replays nothing.
        if !self.log.is_empty()
            && let Err(e) = self.checkpoint()
        {
            tracing::error!(error = %e, "the final checkpoint failed; the next start replays the commit log");
        }
    }

    fn commit(&mut self, group: &mut Vec<Request>, buf: &mut Vec<u8>) {
        buf.clear();
        let mut wants_flush = false;
        for r in group.iter() {
            match r {
                Request::Log(writes, _) => wal::encode_record(writes, self.log.generation(), buf),
                Request::Flush(_) => wants_flush = true,
            }
        }
        let mut result = Ok(());
        if !buf.is_empty() {
            result = self
                .log
                .append(buf)
                .map_err(|e| CommitError::Log(Arc::new(e)));
            if result.is_ok() {
                // Durable first, then visible: sled never holds a write whose record could
                // still be lost, so a replay can always complete what sled kept.
                result = group
                    .iter()
                    .filter_map(|r| match r {
                        Request::Log(writes, _) => Some(writes),
                        Request::Flush(_) => None,
                    })
                    .flatten()
                    .try_for_each(Write::apply)
                    .map_err(|e| CommitError::Flush(Arc::new(e)));
            }
        }
        if result.is_ok() && (wants_flush || self.log.len() >= CHECKPOINT_BYTES) {
            result = self.checkpoint();
        }
        for r in group.drain(..) {
            match r {
                Request::Log(_, done) | Request::Flush(done) => done(result.clone()),
            }
        }
    }

    /// Makes sled durable up to now, then empties the log it no longer needs.
    fn checkpoint(&mut self) -> Result<(), CommitError> {
        self.db
            .flush()
            .map_err(|e| CommitError::Flush(Arc::new(e)))?;
        if self.log.is_empty() {
            return Ok(());
        }
        self.log.reset().map_err(|e| CommitError::Log(Arc::new(e)))
    }
}

impl Committer {
    /// Replays the commit log in `dir` into `db` (writes acknowledged before a crash that
    /// sled had not flushed), then starts the committer thread. It is a plain OS thread
    /// rather than a blocking task, so a group costs no hand-off to tokio's blocking pool;
    /// it ends, with a final checkpoint, when every handle is dropped.
    pub fn spawn(db: sled::Db, dir: &Path) -> Result<(Self, usize), CommitError> {
        let (log, replayed) = Log::open(dir, &db).map_err(|e| CommitError::Log(Arc::new(e)))?;
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = Thread { db, log };
        std::thread::Builder::new()
            .name("hartslag-commit".into())
            .spawn(move || thread.run(rx))
            .map_err(|e| {
                CommitError::Log(Arc::new(WalError::Io {
                    path: dir.join(wal::FILE_NAME),
                    source: e,
                }))
            })?;
        Ok((Self { tx }, replayed))
    }

    fn send(&self, r: Request) {
        if let Err(mpsc::SendError(r)) = self.tx.send(r) {
            match r {
                Request::Log(_, done) | Request::Flush(done) => done(Err(CommitError::Stopped)),
            }
        }
    }

    /// Makes `writes` durable (one record, replayed as a whole), applies them to sled, then
    /// calls `done`. Writes of one caller are applied in the order they were handed over.
    pub fn log_then(&self, writes: Vec<Write>, done: Callback) {
        self.send(Request::Log(writes, done));
    }

    /// [`Committer::log_then`] for writer threads: blocks until the writes are applied.
    pub fn log_blocking(&self, writes: Vec<Write>) -> Result<(), CommitError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.log_then(
            writes,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| CommitError::Stopped)?
    }

    /// Calls `done` once everything written to sled before this call is on disk.
    pub fn flush_then(&self, done: Callback) {
        self.send(Request::Flush(done));
    }

    /// Resolves once everything written to the database before this call is on disk.
    pub async fn flush(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.flush_then(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await.map_err(|_| CommitError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_waiters_all_get_answered() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (committer, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
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
                    let (tx, rx) = oneshot::channel();
                    c.log_then(
                        vec![Write::put(&tree, i.to_be_bytes().to_vec(), b"y".to_vec())],
                        Box::new(move |r| {
                            let _ = tx.send(r);
                        }),
                    );
                    rx.await.unwrap()
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
                .log_blocking(vec![Write::put(&tree, b"k".to_vec(), b"v".to_vec())])
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
