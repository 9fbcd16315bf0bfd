//! Group commit: one task owns every `flush` of the sled database.
//!
//! sled 0.34 deadlocks when many tasks call `flush_async` at once, and a flush per request
//! would cost one fsync per request anyway. Writers apply their changes, then ask the
//! committer for durability; the committer drains every waiter that is queued, performs a
//! single flush that covers all of them, and answers them together.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// Why a flush could not be confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// sled reported an I/O or corruption error while flushing.
    #[error("flushing the database failed: {0}")]
    Flush(Arc<sled::Error>),
    /// The committer thread is gone (the process is shutting down).
    #[error("the commit thread has stopped")]
    Stopped,
}

/// Called once the flush covering a write has finished (or failed).
pub type Callback = Box<dyn FnOnce(Result<(), CommitError>) + Send>;

/// Handle to the group-commit thread; cheap to clone and share between request handlers.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Callback>,
}

impl Committer {
    /// Starts the flusher thread for `db`. It is a plain OS thread rather than a blocking
    /// task, so a flush costs no hand-off to tokio's blocking pool; it ends when every
    /// handle is dropped.
    pub fn spawn(db: sled::Db) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Callback>();
        std::thread::Builder::new()
            .name("hartslag-commit".into())
            .spawn(move || {
                let mut waiting: Vec<Callback> = Vec::with_capacity(256);
                while let Ok(first) = rx.recv() {
                    waiting.push(first);
                    while let Ok(next) = rx.try_recv() {
                        waiting.push(next);
                    }
                    let result = db
                        .flush()
                        .map(|_| ())
                        .map_err(|e| CommitError::Flush(Arc::new(e)));
                    for done in waiting.drain(..) {
                        done(result.clone());
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Calls `done` once everything written before this call is on disk.
    pub fn flush_then(&self, done: Callback) {
        if let Err(mpsc::SendError(done)) = self.tx.send(done) {
            done(Err(CommitError::Stopped));
        }
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
        let committer = Committer::spawn(db.clone()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..256u32 {
            let db = db.clone();
            let c = committer.clone();
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &b"x"[..]).unwrap();
                c.flush().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(db.len(), 256);
    }
}
