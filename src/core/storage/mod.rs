//! The storage port: what the core, the HTTP adapters and the front ends need from a
//! database, as traits the core owns. A backend implements them; nothing outside the
//! backend names its types, so a second backend is added by implementing these traits and
//! choosing it where the services are opened ([`crate::core::services`]).
//!
//! The shape follows what any durable backend can promise, an embedded one or a database
//! server: a write resolves only once it is durable (a later crash keeps it), queries see
//! every write that resolved before them, reads and writes are `async` (a backend may block
//! a thread or wait on a socket, never the caller's executor), results are owned values
//! and batches of values rather than cursors into the backend, and every failure is one
//! [`StorageError`]. The contract every backend keeps is written down as tests in
//! `tests/it/storage_port.rs`, which run against each backend.
//!
//! The embedded backend is sled ([`crate::core::store`]).

mod apps;
mod events;
mod fence;
mod types;

mod monitors;
mod outbox;
mod relay;
pub mod state_record;

use std::sync::Arc;

pub use apps::AppStore;
pub use events::{EventStore, ExportBatches};
pub use fence::Fence;
pub use types::{
    AppRecord, Bucket, EventValue, EventWrite, ExportFilter, ExportedEvent, IDEMPOTENCY_WINDOW,
    Idempotency, Outcome, PeriodTallies, StatsReport, Tally, TokenOwner, hour_of,
    timestamp_from_micros,
};

pub use monitors::{MonitorRound, MonitorStore, Removal, RoundDone};
pub use outbox::{ATTEMPT_WITHIN, CLAIM_FOR, Finished, OutboxStore};
pub use relay::{FeedChanges, MonitorFeed, PingRelay, RelayedPing, Signal};

/// A future a port method returns: boxed so the traits stay object safe, `Send` so it may
/// be awaited on any worker.
pub type StorageFuture<'a, T> = futures::future::BoxFuture<'a, Result<T, StorageError>>;

/// Why a storage operation failed. Callers tell the client to retry later (a write that
/// failed was not acknowledged, so nothing acknowledged is lost); they do not branch on
/// the backend's reasons.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend cannot be reached or failed (I/O, a lost connection, a held lock).
    #[error("the database failed: {0}")]
    Unavailable(String),
    /// A write was not made durable; the reason as the backend reported it.
    #[error("the write was not stored: {0}")]
    NotStored(String),
    /// A stored record could not be decoded.
    #[error("stored record {what} is corrupt: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The backend's writer has stopped; nothing more can be written in this process.
    #[error("the storage writer has stopped")]
    Stopped,
    /// A write only the leader may make was refused: this process does not lead, or
    /// another replica has taken over since it did (see [`Fence`]).
    #[error("refused: {0}")]
    Fenced(String),
    /// The backend's data is in a form this binary does not know (a newer release
    /// migrated the database while it ran): nothing more is read or written until a
    /// restart, which refuses to start on it.
    #[error("{0}")]
    Incompatible(String),
}

/// One backend's implementations of the port, as the services hold them. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    /// Events: ingest, rollups, stats, export, retention and idempotency keys.
    pub events: Arc<dyn EventStore>,
    /// Application records and the token index.
    pub apps: Arc<dyn AppStore>,
    /// Where replicas that do not lead post their pings; `None` where one process serves
    /// the store (it always leads).
    pub relay: Option<Arc<dyn PingRelay>>,
    /// Raised when another replica may have changed an application; `None` where one
    /// process serves the store.
    pub apps_changed: Option<Signal>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

/// One backend's monitor and outbox stores, as the monitor engine and the alert outbox
/// hold them. Cheap to clone.
#[derive(Clone)]
pub struct MonitorStorage {
    /// Monitors, ping history, timelines and the engine's rounds.
    pub monitors: Arc<dyn MonitorStore>,
    /// Pending and finished alert deliveries and the targets' histories.
    pub outbox: Arc<dyn OutboxStore>,
    /// What the leader's rounds changed, for replicas that do not lead; `None` where one
    /// process serves the store.
    pub feed: Option<Arc<dyn MonitorFeed>>,
}

impl std::fmt::Debug for MonitorStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorStorage").finish_non_exhaustive()
    }
}
