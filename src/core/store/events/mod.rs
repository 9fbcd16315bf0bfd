//! Raw events and their rollups: the ingest writer, stats queries, export and retention.
//!
//! Every event counts in five rollups (daily, per-user daily, total, per-user total,
//! hourly), merged per batch, and is stored raw in a block: one value holding a batch's
//! events of one application that lie within [`keys::BLOCK_SPAN_MICROS`] of each other, so
//! a batch costs a few sled inserts rather than one per event. A single writer thread owns
//! the rollup counters, so it can read-modify-write them without conflicts. Each batch of
//! events becomes one commit-log record (raw events and every rollup they touch, as absolute
//! values, [`batch`]), so the rollups always agree with the raw events, even after a crash.
//! The writer ([`writer`]) commits the record itself when no other commit is running
//! ([`super::commit`]), answers the batch as soon as it is on disk and then applies it;
//! queries ([`queries`], [`export`]) wait for that apply ([`Visibility`]). Meanwhile the
//! next batch gathers. [`retention`] deletes raw events past their application's window.
//!
//! [`keys::BLOCK_SPAN_MICROS`]: super::keys::BLOCK_SPAN_MICROS

pub mod batch;
pub mod bulk;
pub mod export;
pub mod queries;
pub mod retention;
pub mod visibility;
pub mod writer;

#[cfg(test)]
mod tests;

pub use batch::{EventWrite, IDEMPOTENCY_WINDOW, Idempotency, Outcome};
pub use export::{ExportFilter, ExportedEvent};
pub use queries::{Bucket, PeriodTallies, StatsReport};
pub use visibility::Visibility;
pub use writer::EventWriter;
