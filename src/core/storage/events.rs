//! The events side of the port: the ingest write, the queries over rollups and raw events,
//! export and retention.

use futures::stream::BoxStream;
use jiff::Timestamp;

use super::types::{Bucket, EventWrite, ExportFilter, ExportedEvent, Outcome, StatsReport, Tally};
use super::{StorageError, StorageFuture};
use crate::core::calendar::Periods;

/// Export's rows, oldest first, in batches: one item per batch keeps the per-row cost of
/// crossing from the backend's reader to the response low. The stream ends after the last
/// row or after the first error. Dropping it stops the backend's reader.
pub type ExportBatches = BoxStream<'static, Result<Vec<ExportedEvent>, StorageError>>;

/// Where events are stored and counted.
///
/// Every event counts in its application's rollups (per local date, per hour, in total,
/// and each also per user) by count and weight sum; the rollups always agree with the raw
/// events stored, also after a crash. Queries see every write that resolved before they
/// started.
pub trait EventStore: Send + Sync + 'static {
    /// Stores one event and its rollups; resolves once they are durable. Concurrent
    /// writes may share one commit (the backend's group commit). A write with an
    /// `Idempotency-Key` seen within [`super::IDEMPOTENCY_WINDOW`] is not counted again:
    /// [`Outcome::Replayed`] for the same event, [`Outcome::KeyReused`] for another one.
    /// An event whose name would pass the write's `name_limit` is refused
    /// ([`Outcome::TooManyNames`]). `Err` means nothing was stored.
    fn write(&self, write: EventWrite) -> StorageFuture<'_, Outcome>;

    /// Counts and weight sums of an application for the periods' day, week and month and
    /// in total, overall and per event name; optionally of one event name or one user.
    fn stats(
        &self,
        app: u64,
        periods: Periods,
        event: Option<String>,
        user: Option<i64>,
    ) -> StorageFuture<'_, StatsReport>;

    /// Buckets per UTC hour and event name for hours in `[from_hour, to_hour)` (hours
    /// since the epoch, [`super::hour_of`]), oldest first, then by name.
    fn hourly(
        &self,
        app: u64,
        from_hour: i64,
        to_hour: i64,
        event: Option<String>,
    ) -> StorageFuture<'_, Vec<Bucket>>;

    /// Buckets per local date and event name for dates in `[from, to]` (keys of
    /// [`crate::core::calendar::date_key`]), oldest first, then by name; optionally of one
    /// user.
    fn daily(
        &self,
        app: u64,
        from: u32,
        to: u32,
        event: Option<String>,
        user: Option<i64>,
    ) -> StorageFuture<'_, Vec<Bucket>>;

    /// The `limit` users with the most events in total (ties by user id), most first.
    fn top_users(
        &self,
        app: u64,
        event: Option<String>,
        limit: usize,
    ) -> StorageFuture<'_, Vec<(i64, Tally)>>;

    /// How many raw events an application holds now (retention lowers it; rollups keep
    /// counting).
    fn event_count(&self, app: u64) -> StorageFuture<'_, u64>;

    /// The time of the newest event an application stored, even if retention deleted it.
    fn last_event_at(&self, app: u64) -> StorageFuture<'_, Option<Timestamp>>;

    /// An application's raw events in time order (events at the same instant in the
    /// order they were stored), filtered.
    fn export(&self, app: u64, filter: ExportFilter) -> ExportBatches;

    /// Deletes an application's raw events (and hourly buckets) before `cutoff`; daily
    /// rollups and totals keep counting them, so every period stays exact. Returns how
    /// many events went. Need not be durable when it resolves: a crash may bring back
    /// some of what it deleted, which the next pass deletes again.
    fn purge_before(&self, app: u64, cutoff: Timestamp) -> StorageFuture<'_, u64>;

    /// Forgets idempotency keys of an application that are past the window at `now`;
    /// keys within it keep answering.
    fn purge_idempotency(&self, app: u64, now: Timestamp) -> StorageFuture<'_, u64>;

    /// Deletes everything stored for an application: raw events, rollups, keys.
    fn purge_application(&self, app: u64) -> StorageFuture<'_, ()>;

    /// Whether the backend can write now, without waiting: `Err` names why not.
    fn health(&self) -> Result<(), StorageError>;

    /// Resolves once the write path has taken and answered a probe: it is alive and
    /// keeping up.
    fn probe(&self) -> StorageFuture<'_, ()>;
}

impl std::fmt::Debug for dyn EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStore")
    }
}
