//! Retention: raw events and hourly rollups past an application's window are deleted;
//! daily rollups and totals stay, so every period and the total stay exact.

use std::time::Instant;

use jiff::Timestamp;

use crate::core::store::keys::{self, EventValue, Family};
use crate::core::store::{Store, StoreError};

/// Keys deleted per sled batch. A sled batch holds the tree's write lock while it applies,
/// so the apply thread's next apply (and, a group later, the answers behind it) waits for
/// at most one batch this size.
const PURGE_BATCH: usize = 512;

/// How long a purge waits for the answered ingest batches to reach sled.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Store {
    /// Purges write to sled directly, not through the commit log, while ingest batches are
    /// answered once durable and reach sled a moment later (on the apply thread): a purge
    /// that ran before them would miss events it should delete, or delete keys a batch
    /// then writes back. So each purge first waits until every answered batch is in sled.
    fn settle_before_purge(&self) -> Result<(), StoreError> {
        if self.visible.wait_within(PURGE_WAIT) {
            Ok(())
        } else {
            Err(StoreError::Write(format!(
                "the answered ingest batches did not reach the database within {} s; the purge waits for the next pass",
                PURGE_WAIT.as_secs()
            )))
        }
    }
}

impl Store {
    /// Deletes an application's raw events and hourly rollups older than `cutoff`; daily
    /// rollups and totals stay, so every period and `total` stay exact. Blocks that end
    /// before `cutoff` go whole; a block that straddles it keeps its later events. These
    /// writes bypass the commit log: after a crash, a replay may bring back a few events
    /// that were past retention already, and the next pass deletes them again. Returns the
    /// number of events deleted.
    pub fn purge_events_before(&self, app: u64, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.settle_before_purge()?;
        let cut = keys::micros(cutoff);
        let whole = cut.saturating_sub(keys::BLOCK_SPAN_MICROS);
        let lo = keys::event_bound(app, i64::MIN).to_vec();
        let hi = keys::event_bound(app, whole).to_vec();
        let mut removed = self.purge_range(lo, hi.clone(), keys::event_count_of)?;
        // Blocks that straddle the cutoff are rewritten a few hundred at a time, so a span
        // holding millions of events (a backfill of one instant) never sits in one batch.
        let mut batch = sled::Batch::default();
        let mut staged = 0;
        for item in self.events.range(hi..keys::event_bound(app, cut).to_vec()) {
            if staged == 256 {
                self.events.apply_batch(std::mem::take(&mut batch))?;
                staged = 0;
            }
            let (k, v) = item?;
            let Some((first, _)) = keys::parse_block_key(&k) else {
                continue;
            };
            let Some(events) = keys::decode_events(first, &v) else {
                continue;
            };
            let keep: Vec<(i64, &EventValue)> = events
                .iter()
                .filter(|(at, _)| *at >= cut)
                .map(|(at, e)| (*at, e))
                .collect();
            removed += events.len() - keep.len();
            staged += 1;
            if keep.is_empty() {
                batch.remove(k);
            } else if keep.len() < events.len() {
                batch.insert(k, keys::encode_block(first, keep));
            }
        }
        self.events.apply_batch(batch)?;
        let hour_lo = keys::hour_key(app, i64::MIN, "");
        let hour_hi = keys::hour_key(app, keys::hour_of(cutoff), "");
        self.purge_range(hour_lo, hour_hi, |_| 1)?;
        Ok(removed)
    }

    /// Deletes every key in `lo..hi`, in batches; returns the sum of `weigh` over the
    /// deleted values (records, or events for raw-event blocks). Retention is background
    /// work: after each batch it rests as long as the batch took, so a purge of millions of
    /// events takes at most half a core and half of sled's write lock from ingest.
    fn purge_range(
        &self,
        lo: Vec<u8>,
        hi: Vec<u8>,
        weigh: impl Fn(&[u8]) -> usize,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let started = Instant::now();
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in self.events.range(lo.clone()..hi.clone()).take(PURGE_BATCH) {
                let (k, v) = item?;
                removed += weigh(&v);
                batch.remove(k);
                n += 1;
            }
            if n == 0 {
                return Ok(removed);
            }
            self.events.apply_batch(batch)?;
            std::thread::sleep(started.elapsed());
        }
    }

    /// Deletes an application's idempotency records of days before yesterday (UTC): they
    /// are past the window, which lookups check by time as well.
    pub fn purge_idempotency(&self, app: u64, now: Timestamp) -> Result<usize, StoreError> {
        self.settle_before_purge()?;
        let lo = keys::idempotency_bound(app, i64::from(i32::MIN)).to_vec();
        let hi = keys::idempotency_bound(app, keys::day_of(now) - 1).to_vec();
        self.purge_range(lo, hi, |_| 1)
    }

    /// Removes every event and rollup of an application (its deletion with data purge).
    pub fn purge_application_events(&self, app: u64) -> Result<(), StoreError> {
        self.settle_before_purge()?;
        let mut batch = sled::Batch::default();
        for family in [
            Family::Event,
            Family::Rollup,
            Family::UserRollup,
            Family::Total,
            Family::UserTotal,
            Family::HourRollup,
            Family::Idempotency,
            Family::Latest,
        ] {
            for k in self
                .events
                .scan_prefix(keys::scope_prefix(family, app, None))
                .keys()
            {
                batch.remove(k?);
            }
        }
        self.events.apply_batch(batch)?;
        self.names.forget(Some(app));
        Ok(())
    }
}
