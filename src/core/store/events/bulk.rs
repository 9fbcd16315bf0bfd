//! Loading events in bulk: the records the ingest writer would commit for the same
//! batches, written straight into sled without the commit log, then flushed once. For
//! filling a store fast (the growth benchmark) and for imports; only while nothing else
//! writes events to the store, since it reads and rewrites the rollups as their single
//! writer.

use jiff::Timestamp;

use super::batch::{EventWrite, Prepare};
use crate::core::store::wal::Mutation;
use crate::core::store::{Store, StoreError};

impl Store {
    /// Writes each of `batches` as the ingest writer writes one group's record (the same
    /// raw-event blocks, rollups, idempotency records and keys, from the same code), but
    /// without a commit-log record and its `fdatasync`: durable only once this returns,
    /// after one sled flush. Returns the number of events stored.
    pub async fn load_events(
        &self,
        batches: impl IntoIterator<Item = Vec<EventWrite>>,
    ) -> Result<u64, StoreError> {
        let reader = self.committer().reader();
        let prepare = Prepare {
            events: &self.events,
            db: &self.db,
            reader: &reader,
            names: &self.names,
        };
        let mut stored = 0;
        for batch in batches {
            let refs: Vec<&EventWrite> = batch.iter().collect();
            let (writes, outcomes) = prepare.event_writes(&refs, Timestamp::now())?;
            writes.iter().try_for_each(Mutation::apply)?;
            stored += outcomes
                .iter()
                .filter(|o| **o == super::Outcome::Stored)
                .count() as u64;
        }
        self.flush().await?;
        Ok(stored)
    }
}
