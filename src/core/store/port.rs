//! sled behind the storage port: [`EventStore`] and [`AppStore`] over the [`Store`] and its
//! ingest writer, and the monitor and outbox stores ([`super::monitors`],
//! [`super::outbox`]) over the same store. sled's reads block (and queries first wait for
//! the writer's apply), so each runs on tokio's blocking pool; writes resolve once the
//! commit log has them on disk.

use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;

use super::events::EventWriter;
use super::monitors::SledMonitors;
use super::outbox::SledOutbox;
use super::{Store, StoreError};
use crate::core::calendar::Periods;
use crate::core::storage::{
    AppRecord, AppStore, Bucket, EventStore, EventWrite, ExportBatches, ExportFilter,
    ExportedEvent, MonitorStorage, Outcome, StatsReport, Storage, StorageError, StorageFuture,
    Tally, TokenOwner,
};
use crate::core::token::TokenHash;

/// Rows per export batch: large enough that handing batches across threads costs little
/// per row, small enough that a slow client holds little in memory.
const EXPORT_BATCH: usize = 1024;

impl From<StoreError> for StorageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sled(e) => StorageError::Unavailable(e.to_string()),
            StoreError::Thread(e) => StorageError::Unavailable(e),
            e @ (StoreError::InUse(_) | StoreError::Locked(_)) => {
                StorageError::Unavailable(e.to_string())
            }
            StoreError::Commit(e) => StorageError::NotStored(e.to_string()),
            StoreError::Write(e) => StorageError::NotStored(e),
            StoreError::Corrupt { what, detail } => StorageError::Corrupt { what, detail },
            StoreError::Stopped => StorageError::Stopped,
            StoreError::States(e @ super::states::StatesError::Corrupt { .. }) => {
                StorageError::Corrupt {
                    what: "state file".into(),
                    detail: e.to_string(),
                }
            }
            StoreError::States(e) => StorageError::Unavailable(e.to_string()),
        }
    }
}

/// Opens the store in `dir` (replaying its commit log) with an ingest writer, as the port
/// alone: for tools and tests that need no monitor engine. The services open the store
/// themselves ([`crate::core::Services::open`]), as the engine and the outbox share it.
pub fn open(dir: &std::path::Path, opts: &super::StoreOptions) -> Result<Storage, StoreError> {
    let store = Store::open(dir, opts)?;
    let writer = EventWriter::spawn(store.clone())?;
    Ok(storage(&store, writer))
}

/// The port over `store`, with `writer` taking the ingest writes.
pub fn storage(store: &Store, writer: EventWriter) -> Storage {
    Storage {
        events: Arc::new(SledEvents {
            store: store.clone(),
            writer,
        }),
        apps: Arc::new(SledApps {
            store: store.clone(),
        }),
        relay: None,
        apps_changed: None,
    }
}

/// Opens the store in `dir` (replaying its commit log) with the monitor and outbox stores
/// alone: for tests of the engine's side of the port.
pub fn open_monitors(
    dir: &std::path::Path,
    opts: &super::StoreOptions,
) -> Result<MonitorStorage, StoreError> {
    monitor_storage(&Store::open(dir, opts)?)
}

/// The monitor and outbox stores over `store`.
pub fn monitor_storage(store: &Store) -> Result<MonitorStorage, StoreError> {
    Ok(MonitorStorage {
        monitors: Arc::new(SledMonitors::open(store)?),
        outbox: Arc::new(SledOutbox::open(store)?),
        feed: None,
    })
}

/// Runs a blocking read of `store` on the blocking pool.
pub(super) fn blocking<T: Send + 'static>(
    store: &Store,
    read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> StorageFuture<'static, T> {
    let store = store.clone();
    Box::pin(async move {
        match tokio::task::spawn_blocking(move || read(&store)).await {
            Ok(done) => done.map_err(StorageError::from),
            // The runtime is shutting down: the process is stopping, nothing failed.
            Err(e) if e.is_cancelled() => Err(StorageError::Stopped),
            Err(e) => Err(StorageError::Unavailable(format!(
                "a storage read failed: {e}"
            ))),
        }
    })
}

/// A blocking write of `store`, then a flush: resolves once the write is on disk.
fn durable<T: Send + 'static>(
    store: &Store,
    write: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> StorageFuture<'static, T> {
    let store = store.clone();
    Box::pin(async move {
        let done = blocking(&store, write).await?;
        store.flush().await?;
        Ok(done)
    })
}

/// Events in sled: the ingest writer for writes, the [`Store`] for everything else.
struct SledEvents {
    store: Store,
    writer: EventWriter,
}

impl EventStore for SledEvents {
    fn write(&self, write: EventWrite) -> StorageFuture<'_, Outcome> {
        Box::pin(async move { Ok(self.writer.write(write).await?) })
    }

    fn stats(
        &self,
        app: u64,
        periods: Periods,
        event: Option<String>,
        user: Option<i64>,
    ) -> StorageFuture<'_, StatsReport> {
        blocking(&self.store, move |s| {
            s.stats(app, &periods, event.as_deref(), user)
        })
    }

    fn hourly(
        &self,
        app: u64,
        from_hour: i64,
        to_hour: i64,
        event: Option<String>,
    ) -> StorageFuture<'_, Vec<Bucket>> {
        blocking(&self.store, move |s| {
            s.hourly(app, from_hour, to_hour, event.as_deref())
        })
    }

    fn daily(
        &self,
        app: u64,
        from: u32,
        to: u32,
        event: Option<String>,
        user: Option<i64>,
    ) -> StorageFuture<'_, Vec<Bucket>> {
        blocking(&self.store, move |s| {
            s.daily(app, from, to, event.as_deref(), user)
        })
    }

    fn top_users(
        &self,
        app: u64,
        event: Option<String>,
        limit: usize,
    ) -> StorageFuture<'_, Vec<(i64, Tally)>> {
        blocking(&self.store, move |s| {
            s.top_users(app, event.as_deref(), limit)
        })
    }

    fn event_count(&self, app: u64) -> StorageFuture<'_, u64> {
        blocking(&self.store, move |s| Ok(s.event_count(app)? as u64))
    }

    fn last_event_at(&self, app: u64) -> StorageFuture<'_, Option<Timestamp>> {
        blocking(&self.store, move |s| s.last_event_at(app))
    }

    fn export(&self, app: u64, filter: ExportFilter) -> ExportBatches {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || export_rows(&store, app, filter, &tx));
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|batch| (batch, rx))
        })
        .boxed()
    }

    fn purge_before(&self, app: u64, cutoff: Timestamp) -> StorageFuture<'_, u64> {
        blocking(&self.store, move |s| {
            Ok(s.purge_events_before(app, cutoff)? as u64)
        })
    }

    fn purge_idempotency(&self, app: u64, now: Timestamp) -> StorageFuture<'_, u64> {
        blocking(&self.store, move |s| {
            Ok(s.purge_idempotency(app, now)? as u64)
        })
    }

    fn purge_application(&self, app: u64) -> StorageFuture<'_, ()> {
        durable(&self.store, move |s| s.purge_application_events(app))
    }

    fn health(&self) -> Result<(), StorageError> {
        Ok(self.store.committer().health().map_err(StoreError::from)?)
    }

    fn probe(&self) -> StorageFuture<'_, ()> {
        Box::pin(async move { Ok(self.writer.probe().await?) })
    }
}

/// Feeds export's rows to `tx` in batches until the last, the first error, or until the
/// receiver is gone (the client went away).
fn export_rows(
    store: &Store,
    app: u64,
    filter: ExportFilter,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<ExportedEvent>, StorageError>>,
) {
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    for row in store.export(app, filter) {
        match row {
            Ok(e) => batch.push(e),
            Err(e) => {
                let _ = tx.blocking_send(Err(e.into()));
                return;
            }
        }
        if batch.len() == EXPORT_BATCH
            && tx
                .blocking_send(Ok(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(EXPORT_BATCH),
                )))
                .is_err()
        {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
}

/// Applications and the token index in sled.
struct SledApps {
    store: Store,
}

impl AppStore for SledApps {
    fn load_apps(&self) -> StorageFuture<'_, Vec<AppRecord>> {
        blocking(&self.store, |s| s.load_apps())
    }

    fn get_app(&self, key: String) -> StorageFuture<'_, Option<AppRecord>> {
        blocking(&self.store, move |s| s.get_app(&key))
    }

    fn next_app_num(&self) -> StorageFuture<'_, u64> {
        durable(&self.store, |s| s.next_app_num())
    }

    fn put_app(
        &self,
        key: String,
        rec: AppRecord,
        old_token: Option<TokenHash>,
    ) -> StorageFuture<'_, ()> {
        durable(&self.store, move |s| s.put_app(&key, &rec, old_token))
    }

    fn retain_app(&self, key: String, now: Timestamp) -> StorageFuture<'_, Option<AppRecord>> {
        durable(&self.store, move |s| s.retain_app(&key, now))
    }

    fn delete_app(&self, key: String) -> StorageFuture<'_, Option<AppRecord>> {
        durable(&self.store, move |s| s.delete_app(&key))
    }

    fn put_token(
        &self,
        hash: TokenHash,
        owner: TokenOwner,
        old: Option<TokenHash>,
    ) -> StorageFuture<'_, ()> {
        durable(&self.store, move |s| s.put_token(hash, &owner, old))
    }

    fn remove_token(&self, hash: TokenHash) -> StorageFuture<'_, ()> {
        durable(&self.store, move |s| s.remove_token(hash))
    }

    fn load_tokens(&self) -> StorageFuture<'_, Vec<(TokenHash, TokenOwner)>> {
        blocking(&self.store, |s| s.load_tokens())
    }
}
