//! The commit log's families on `/metrics`: the disk's flush latency bounds every durable
//! write, and records per group show how well group commit shares each flush.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::Committer;
use crate::core::metrics::{MetricRegistry, encode_counters};

/// Registers the commit log's families; counts are read from the committer at each scrape.
pub fn register(committer: &Committer, registry: &mut MetricRegistry) {
    let stats = committer.stats();
    registry.register_with_unit(
        "hartslag_commit_sync",
        "How long each group commit's append and fdatasync took: the disk's flush latency, which bounds durable writes",
        Unit::Seconds,
        stats.sync.clone(),
    );
    registry.register_with_unit(
        "hartslag_commit_checkpoint",
        "How long each checkpoint (database flush, then emptying the commit log) took",
        Unit::Seconds,
        stats.checkpoint.clone(),
    );
    registry.register_collector(Box::new(CommitCounts(committer.clone())));
}

/// Groups and records, kept as plain atomics by the committer.
#[derive(Debug)]
struct CommitCounts(Committer);

impl Collector for CommitCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        encode_counters(
            &mut encoder,
            &[
                (
                    "hartslag_commit_groups",
                    "Group commits (one fdatasync each).",
                    stats.groups.load(Relaxed),
                ),
                (
                    "hartslag_commit_records",
                    "Writer records committed; divided by the groups, how many writes one fdatasync served.",
                    stats.records.load(Relaxed),
                ),
            ],
        )
    }
}
