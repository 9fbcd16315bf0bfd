//! Group commit: one task owns every `flush` of the sled database.
//!
//! sled 0.34 deadlocks when many tasks call `flush_async` at once, and a flush per request
//! would cost one fsync per request anyway. Writers apply their changes, then ask the
//! committer for durability; the committer drains every waiter that is queued, performs a
//! single flush that covers all of them, and answers them together.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// Why a flush could not be confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// sled reported an I/O or corruption error while flushing.
    #[error("flushing the database failed: {0}")]
    Flush(Arc<sled::Error>),
    /// The committer task is gone (the process is shutting down).
    #[error("the commit task has stopped")]
    Stopped,
}

type Waiter = oneshot::Sender<Result<(), CommitError>>;

/// Handle to the group-commit task; cheap to clone and share between request handlers.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Committer {
    /// Starts the flusher task for `db`. Must be called inside a tokio runtime.
    pub fn spawn(db: sled::Db) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            let mut waiters: Vec<Waiter> = Vec::with_capacity(256);
            while let Some(first) = rx.recv().await {
                waiters.push(first);
                while let Ok(next) = rx.try_recv() {
                    waiters.push(next);
                }
                let db = db.clone();
                let result = match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(CommitError::Flush(Arc::new(e))),
                    Err(_) => Err(CommitError::Stopped),
                };
                for w in waiters.drain(..) {
                    let _ = w.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Resolves once everything written to the database before this call is on disk.
    pub async fn flush(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| CommitError::Stopped)?;
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
        let committer = Committer::spawn(db.clone());
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
