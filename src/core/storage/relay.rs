//! Pings taken by replicas that do not lead, on their way to the one that does, and the
//! leader's rounds on their way to the replicas that mirror them.
//!
//! Several replicas share one database and every one of them takes pings, but only the
//! leader's engine applies them (it alone writes rounds). A replica that does not lead
//! posts each ping to the [`PingRelay`] and answers its client once the post is durable;
//! the leader takes relayed pings in the order they were posted, applies each with the
//! instant it was taken, and the backend removes them in the transaction of the round
//! that applied them ([`super::MonitorRound::relayed`]): a ping acknowledged by any
//! replica is applied exactly once, whichever process dies when.
//!
//! The other way round, a replica that does not lead keeps its in-memory monitors up to
//! date from the [`MonitorFeed`]: what the leader's rounds wrote since a version.
//!
//! Both have a change [`Signal`], raised when the backend hears of a change (a
//! notification); it may be missed (a connection that was down), so readers also poll.

use std::sync::Arc;

use jiff::Timestamp;

use super::StorageFuture;
use crate::core::monitor::engine::{Monitor, PingInput};

/// Raised when the backend hears that something changed; readers wait on it beside a
/// short poll, since a backend may miss a change (a notification sent while its
/// listening connection was down).
pub type Signal = Arc<tokio::sync::Notify>;

/// A ping a replica that does not lead took and posted for the leader.
#[derive(Debug, Clone)]
pub struct RelayedPing {
    /// Its number in the relay: numbers grow in the order pings were posted.
    pub id: u64,
    /// The monitor's key, `namespace/name`; empty for a stored ping the backend could
    /// not read, which the leader drops (and removes) like one for a monitor that is gone.
    pub key: String,
    /// When the replica took it.
    pub at: Timestamp,
    /// What it said.
    pub input: PingInput,
}

/// Where replicas that do not lead post pings for the leader.
pub trait PingRelay: Send + Sync + 'static {
    /// Posts a ping to monitor `key` taken at `at`; resolves once it is durable, with its
    /// number.
    fn post(&self, key: String, at: Timestamp, input: PingInput) -> StorageFuture<'_, u64>;

    /// The relayed pings numbered above `after`, in number order, at most `limit`.
    fn take(&self, after: u64, limit: usize) -> StorageFuture<'_, Vec<RelayedPing>>;

    /// Raised when a ping may have been posted.
    fn signal(&self) -> Signal;
}

impl std::fmt::Debug for dyn PingRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PingRelay")
    }
}

/// What the leader's rounds changed after a version.
#[derive(Debug, Clone, Default)]
pub struct FeedChanges {
    /// Monitors written (whole or by state) after the version, as they are now.
    pub monitors: Vec<Monitor>,
    /// Monitors removed after the version: key and number (a monitor defined again under
    /// the same key has another number, and is among [`Self::monitors`] if it is newer).
    pub removed: Vec<(String, u64)>,
    /// The version these changes bring a reader to.
    pub version: u64,
    /// The reader fell so far behind that the removals it missed are gone:
    /// [`Self::monitors`] holds every monitor, and any monitor not in it is gone.
    pub everything: bool,
}

/// The leader's rounds, for replicas that mirror them.
pub trait MonitorFeed: Send + Sync + 'static {
    /// The version of the newest round written: a reader that loads the monitors after
    /// asking for it misses nothing by asking for the changes since.
    fn version(&self) -> StorageFuture<'_, u64>;

    /// What rounds written after `version` changed.
    fn changes_since(&self, version: u64) -> StorageFuture<'_, FeedChanges>;

    /// Raised when a round may have been written.
    fn signal(&self) -> Signal;
}

impl std::fmt::Debug for dyn MonitorFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MonitorFeed")
    }
}
