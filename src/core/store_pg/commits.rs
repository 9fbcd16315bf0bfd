//! How long commits take on PostgreSQL, on `/metrics` under the embedded backend's names
//! (`hartslag_commit_sync_seconds`, `hartslag_commit_groups_total`,
//! `hartslag_commit_records_total`), so one dashboard serves both backends: a group is one
//! transaction of the ingest writer (a batch of events) or of the round writer (monitor
//! rounds), and its time runs from the writer taking the batch to `COMMIT` returning,
//! connection included. Acknowledged events and pings wait that long, as they wait for
//! the commit log's flush on the embedded backend.

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Unit;

use crate::core::metrics::{Histogram, MetricRegistry, SYNC_BUCKETS};

/// The commit figures the ingest and round writers of one process share; clones share
/// their counts.
#[derive(Debug, Clone)]
pub struct CommitMetrics {
    sync: Histogram,
    groups: Counter,
    records: Counter,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        Self {
            sync: Histogram::with_bounds(&SYNC_BUCKETS),
            groups: Counter::default(),
            records: Counter::default(),
        }
    }
}

impl CommitMetrics {
    /// Adds the families to `/metrics`; once per process.
    pub fn register(&self, registry: &mut MetricRegistry) {
        registry.register_with_unit(
            "hartslag_commit_sync",
            "How long each transaction of the ingest or round writer took, from taking its batch to COMMIT returning: durable ingest and pings wait this long",
            Unit::Seconds,
            self.sync.clone(),
        );
        registry.register(
            "hartslag_commit_groups",
            "Transactions committed by the ingest and round writers",
            self.groups.clone(),
        );
        registry.register(
            "hartslag_commit_records",
            "Events and monitor rounds committed; divided by the groups, how many writes one transaction served",
            self.records.clone(),
        );
    }

    /// Records one committed transaction that began at `started` and held `records` writes.
    pub(super) fn committed(&self, started: Instant, records: usize) {
        self.sync.observe(started.elapsed());
        self.groups.inc();
        self.records
            .inc_by(u64::try_from(records).unwrap_or(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_counts_one_group_its_records_and_its_time() {
        let commits = CommitMetrics::default();
        let mut registry = MetricRegistry::default();
        commits.register(&mut registry);
        commits.clone().committed(Instant::now(), 3);
        let text = crate::core::metrics::encode(&registry);
        for line in [
            "hartslag_commit_sync_seconds_count 1\n",
            "hartslag_commit_groups_total 1\n",
            "hartslag_commit_records_total 3\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
    }
}
