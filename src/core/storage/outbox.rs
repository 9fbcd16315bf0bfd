//! The alert outbox's side of the port: pending deliveries, finished ones, and what each
//! target was sent lately. Deliveries are queued by the monitor engine inside its rounds
//! ([`super::MonitorRound::deliveries`]), so an alert is stored with the state change that
//! raised it; the delivery scheduler claims, finishes and retries them here.

use std::time::Duration;

use super::{StorageError, StorageFuture};
use crate::core::alert::outbox::Delivery;
use crate::core::alert::policy::TargetHistory;

/// How long a claim holds a delivery, by the store's clock, on a store replicas share:
/// no other attempt (a new leader's, after a failover) claims the delivery before then,
/// unless the claim ended with a finish or retry.
pub const CLAIM_FOR: Duration = Duration::from_secs(45);

/// How long one delivery attempt may take, by its process's monotonic clock from just
/// before it asked for its claim: shorter than [`CLAIM_FOR`] by a margin for the two
/// clocks' drift, so an attempt is over (sent, or given up unsent) before anyone else may
/// claim the delivery. An attempt whose process stalled past it after the claim sends
/// nothing; the delivery is retried (by its successor, if it was deposed meanwhile).
pub const ATTEMPT_WITHIN: Duration = Duration::from_secs(30);

/// A delivery that is over, as its finish records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its [`crate::core::alert::outbox::delivery_key`].
    pub key: Vec<u8>,
    /// `delivered`, `failed`, `skipped` or `superseded`.
    pub outcome: String,
    /// Why it failed or was skipped.
    pub detail: Option<String>,
    /// Attempts made.
    pub attempts: u32,
}

/// Where alert deliveries wait until their target accepted them (or they are given up).
///
/// "Exactly once per incident and target" rests on two promises: [`Self::finish`] removes
/// a delivery from the pending ones and records it done (with the target's history, and
/// the next repetition when there is one) as one atomic step, so after any crash a
/// delivery is either pending or finished, never both or neither; and [`Self::claim`]
/// hands a delivery to one attempt at a time (a SQL backend claims with
/// `FOR UPDATE SKIP LOCKED`), while a claim its process never ended (killed mid-attempt)
/// ends with that process, so the delivery is pending again after a restart. Every write
/// resolves once durable.
pub trait OutboxStore: Send + Sync + 'static {
    /// Every pending delivery with its key, claimed ones included (their claimant knows
    /// them), in no particular order. Unreadable records are dropped with a log line.
    fn pending(&self) -> StorageFuture<'_, Vec<(Vec<u8>, Delivery)>>;

    /// How many pending deliveries are notices, not scheduled repetitions, for the gauge
    /// at each scrape: answered from what the backend has at hand, without waiting.
    fn pending_notices(&self) -> Result<u64, StorageError>;

    /// What each target was sent lately, by target identity: loaded once, at start, by
    /// the scheduler that writes them from then on.
    fn target_histories(&self) -> StorageFuture<'_, Vec<(String, TargetHistory)>>;

    /// Claims pending delivery `key` for one attempt: `false` when it is not pending (it
    /// was finished) or another attempt holds it. The claim ends with [`Self::finish`] or
    /// [`Self::retry`], or with the process that holds it; on a store replicas share, a
    /// claim whose holder is gone holds the delivery until [`CLAIM_FOR`] after it was
    /// made (its holder may only have stalled, and may still send within that time).
    fn claim(&self, key: Vec<u8>) -> StorageFuture<'_, bool>;

    /// Finishes `done` as one atomic step: each leaves the pending deliveries and is
    /// recorded done, `target`'s history (identity, history) is stored, and `next` (the
    /// repetition that follows a Down notice) is queued.
    fn finish(
        &self,
        done: Vec<Finished>,
        target: (String, TargetHistory),
        next: Option<Delivery>,
    ) -> StorageFuture<'_, ()>;

    /// Stores pending delivery `key` again as `delivery` (its attempts, next attempt time
    /// after the backoff, last error) and ends its claim.
    fn retry(&self, key: Vec<u8>, delivery: Delivery) -> StorageFuture<'_, ()>;

    /// Queues `delivery` (one pending under its key is kept as it is), with its target's
    /// history when that changes with it, in one step.
    fn queue(
        &self,
        delivery: Delivery,
        target: Option<(String, TargetHistory)>,
    ) -> StorageFuture<'_, ()>;
}

impl std::fmt::Debug for dyn OutboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboxStore")
    }
}
