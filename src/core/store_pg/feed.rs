//! The leader's rounds for replicas that mirror them, on PostgreSQL: what
//! [`PgMonitors::changes_since`] reads, and the notification (channel `hartslag_rounds`)
//! every round's transaction sends, heard on a connection of its own.

use std::sync::Arc;

use super::monitors::{MonitorChange, PgMonitors};
use crate::core::storage::{FeedChanges, MonitorFeed, Signal, StorageFuture};

/// The channel a round notifies.
pub(super) const CHANNEL: &str = "hartslag_rounds";

/// The rounds as a [`MonitorFeed`].
pub struct PgFeed {
    pub(super) monitors: Arc<PgMonitors>,
    pub(super) signal: Signal,
}

impl MonitorFeed for PgFeed {
    fn version(&self) -> StorageFuture<'_, u64> {
        Box::pin(self.monitors.newest_version())
    }

    fn changes_since(&self, version: u64) -> StorageFuture<'_, FeedChanges> {
        Box::pin(async move {
            let read = self.monitors.changes_since(version).await?;
            let mut changes = FeedChanges {
                version: read.version,
                everything: read.full,
                ..Default::default()
            };
            for change in read.changes {
                match change {
                    MonitorChange::Put { monitor, .. } => changes.monitors.push(*monitor),
                    MonitorChange::Removed { key, num, .. } => changes.removed.push((key, num)),
                }
            }
            Ok(changes)
        })
    }

    fn signal(&self) -> Signal {
        self.signal.clone()
    }
}
