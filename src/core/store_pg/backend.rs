//! What the monitor and outbox stores on PostgreSQL share: a runtime of their own, the
//! pool on it, the fence their writes carry, and the pending-notices count.
//!
//! The monitor engine's thread calls the store synchronously (loading, monitor numbers,
//! retained records) and is no async worker; the services open the engine from an async
//! task. A runtime owned by the store serves both: a synchronous call hands its work to
//! that runtime and waits on a channel, which blocks no executor it depends on (a caller
//! on another runtime's worker, at start, blocks only that worker), and the async reads
//! the APIs make run there too, so every connection of the pool lives on one runtime and
//! ends with it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::{Db, leader};
use crate::core::storage::{Fence, StorageError, StorageFuture};

/// Worker threads of the stores' runtime: the round writer and the reads share them;
/// encoding and decoding JSON is most of their work, the waiting is on the database.
const WORKERS: usize = 2;

/// How long the runtime is kept once the stores are gone, for the work they started (a
/// round or an alert's finish on its way to the database) to end.
const FINISH_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The runtime. When the last store lets go of it (which may happen inside another
/// runtime, where waiting is not allowed), a thread of its own waits for the work in
/// flight to end (every task, the pool's connections last) and shuts it down: a write
/// handed over is never cut off halfway by the stores being dropped.
pub(super) struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            let stop = move || {
                let deadline = std::time::Instant::now() + FINISH_WITHIN;
                while rt.metrics().num_alive_tasks() > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                rt.shutdown_background();
            };
            let _ = std::thread::Builder::new()
                .name("hartslag-pg-stop".into())
                .spawn(stop);
        }
    }
}

/// Why a transaction did not commit.
pub(super) enum TxError {
    /// The database failed the statement.
    Db(tokio_postgres::Error),
    /// Refused before anything was written (fenced, or an encoding failed).
    Refused(StorageError),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Db(e)
    }
}

impl From<StorageError> for TxError {
    fn from(e: StorageError) -> Self {
        TxError::Refused(e)
    }
}

/// What the stores' tasks work with; cheap to clone. Tasks never hold the runtime they
/// run on, so it ends once the stores are gone.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) db: Db,
    pub(super) fence: Fence,
    /// Pending deliveries that are notices, as last counted (after every write that
    /// changes the outbox, and every full read of it).
    pub(super) notices: Arc<AtomicU64>,
}

impl Ctx {
    /// A failed transaction as the port's error.
    pub(super) fn fail(&self, e: TxError) -> StorageError {
        match e {
            TxError::Db(e) => self.db.fail(e),
            TxError::Refused(e) => e,
        }
    }
}

/// The shared parts, as the stores hold them; cheap to clone.
#[derive(Clone)]
pub(super) struct Backend {
    pub(super) ctx: Ctx,
    handle: tokio::runtime::Handle,
    _rt: Arc<OwnRuntime>,
}

impl Backend {
    /// Starts the runtime and builds the pool on it.
    pub(super) fn start(url: &super::DatabaseUrl, fence: Fence) -> Result<Self, super::PgError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("hartslag-pg-monitors")
            .enable_all()
            .build()
            .map_err(|e| super::PgError::Connect {
                url: url.to_string(),
                detail: format!("cannot start the database runtime: {e}"),
            })?;
        let handle = rt.handle().clone();
        let db = {
            let _entered = handle.enter();
            Db::watched(super::connect::pool(url, super::connect::tls(url)?)?, url)
        };
        Ok(Self {
            ctx: Ctx {
                db,
                fence,
                notices: Arc::default(),
            },
            handle,
            _rt: Arc::new(OwnRuntime(Some(rt))),
        })
    }

    /// Runs `work` on the stores' runtime, for a caller on any runtime.
    pub(super) fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StorageError>> + Send + 'static,
    ) -> StorageFuture<'static, T> {
        let task = self.handle.spawn(work);
        Box::pin(async move {
            match task.await {
                Ok(done) => done,
                Err(e) if e.is_cancelled() => Err(StorageError::Stopped),
                Err(e) => Err(StorageError::Unavailable(format!(
                    "a storage task failed: {e}"
                ))),
            }
        })
    }

    /// Runs `work` on the stores' runtime and waits for it, for a synchronous caller.
    pub(super) fn block<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StorageError>> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().unwrap_or(Err(StorageError::Stopped))
    }

    /// Spawns `work` on the stores' runtime.
    pub(super) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(work);
    }
}

/// Begins a transaction only the leader may commit: refused (and nothing written) unless
/// `fence` leads under the current generation, which holds until it ends.
pub(super) async fn fenced<'a>(
    client: &'a mut deadpool_postgres::Client,
    fence: &Fence,
) -> Result<deadpool_postgres::Transaction<'a>, TxError> {
    let tx = client.transaction().await?;
    leader::check(&*tx, fence)
        .await?
        .map_err(TxError::Refused)?;
    Ok(tx)
}

/// A record as its JSON value, as the embedded backend stores it.
pub(super) fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value)
        .map_err(|e| StorageError::NotStored(format!("encoding a record: {e}")))
}

/// A stored JSON record, `what` naming it when it is corrupt.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    v: &[u8],
) -> Result<T, StorageError> {
    serde_json::from_slice(v).map_err(|e| StorageError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    })
}
