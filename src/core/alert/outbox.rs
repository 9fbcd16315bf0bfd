//! The durable alert outbox: alerts are stored in sled before anything is sent, delivered
//! by one worker, retried with exponential backoff while a server is unreachable, and
//! picked up again after a restart.
//!
//! A delivery is removed only after its target accepted it. If the process dies between a
//! successful send and that removal (a window of one flush) the delivery is repeated once
//! after restart; every other path delivers exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::message::{Alert, Target};
use super::{Deliver, DeliveryError, OutboxStats};
use crate::core::store::Committer;

/// Errors of the outbox's storage.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// sled failed.
    #[error("outbox storage: {0}")]
    Sled(#[from] sled::Error),
    /// A flush failed.
    #[error(transparent)]
    Commit(#[from] crate::core::store::CommitError),
    /// A record could not be encoded.
    #[error("outbox record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// First retry delay; doubles per attempt.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// After this long a delivery that keeps failing transiently is given up.
    pub give_up_after: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// Delay before attempt `attempt + 1`: exponential, capped, with up to 20 % jitter derived
/// from the delivery key so retries of many alerts spread out yet tests stay repeatable.
pub fn backoff(config: &OutboxConfig, attempt: u32, key: &[u8]) -> Duration {
    let exp = config.base_delay.saturating_mul(1u32 << attempt.min(20));
    let capped = exp.min(config.max_delay);
    let h = Sha256::digest(key);
    let jitter_pct = u64::from(h[0]) % 21;
    capped + capped.mul_f64(jitter_pct as f64 / 100.0)
}

/// One pending delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// What to say.
    pub alert: Alert,
    /// Where.
    pub target: Target,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before.
    pub next_attempt_at: Timestamp,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// The last failure, for status and logs.
    pub last_error: Option<String>,
}

/// A finished delivery, kept (bounded) for inspection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneRecord {
    /// Delivery key.
    pub key: String,
    /// `delivered`, `failed` or `skipped`.
    pub outcome: String,
    /// Why it failed or was skipped.
    pub detail: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When it finished.
    pub at: Timestamp,
}

/// The key of one (alert, target) delivery.
pub fn delivery_key(alert: &Alert, target: &Target) -> Vec<u8> {
    let suffix = match target {
        Target::Email { .. } => "email".to_string(),
        Target::Webhook { url } => format!(
            "webhook:{}",
            hex::encode(&Sha256::digest(url.as_bytes())[..6])
        ),
    };
    format!("{}|{suffix}", alert.id).into_bytes()
}

/// A key and value ready for a sled batch.
pub type Record = (Vec<u8>, Vec<u8>);

/// Encoded records for `alert` to each of `targets`, for a caller that writes them in its
/// own atomic batch (the monitor engine stores them together with the state change).
pub fn records(
    alert: &Alert,
    targets: &[Target],
    now: Timestamp,
) -> Result<Vec<Record>, OutboxError> {
    targets
        .iter()
        .map(|t| {
            let d = Delivery {
                alert: alert.clone(),
                target: t.clone(),
                attempts: 0,
                next_attempt_at: now,
                created_at: now,
                last_error: None,
            };
            Ok((delivery_key(alert, t), serde_json::to_vec(&d)?))
        })
        .collect()
}

/// Handle to the outbox; clone freely.
#[derive(Clone)]
pub struct Outbox {
    pending: sled::Tree,
    done: sled::Tree,
    committer: Committer,
    notify: Arc<Notify>,
    config: OutboxConfig,
    /// Counters.
    pub stats: Arc<OutboxStats>,
    done_seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

/// Finished deliveries kept for inspection.
const DONE_KEEP: u64 = 10_000;

impl Outbox {
    /// Opens the outbox trees.
    pub fn open(
        db: &sled::Db,
        committer: Committer,
        config: OutboxConfig,
    ) -> Result<Self, OutboxError> {
        let done = db.open_tree("outbox_done")?;
        let last = done
            .last()?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(Self {
            pending: db.open_tree("outbox")?,
            done,
            committer,
            notify: Arc::new(Notify::new()),
            config,
            stats: Arc::new(OutboxStats::default()),
            done_seq: Arc::new(AtomicU64::new(last)),
        })
    }

    /// Adds the outbox's families to `/metrics`.
    pub fn register_metrics(&self, registry: &mut crate::core::metrics::MetricRegistry) {
        self.stats.register(self.pending.clone(), registry);
    }

    /// The tree pending deliveries live in (for callers that write records atomically).
    pub fn pending_tree(&self) -> &sled::Tree {
        &self.pending
    }

    /// Wakes the worker after records were written by someone else.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    async fn finish(
        &self,
        key: &[u8],
        d: &Delivery,
        outcome: &str,
        detail: Option<String>,
    ) -> Result<(), OutboxError> {
        let seq = self.done_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = DoneRecord {
            key: String::from_utf8_lossy(key).into_owned(),
            outcome: outcome.into(),
            detail,
            attempts: d.attempts,
            at: Timestamp::now(),
        };
        let mut batch = sled::Batch::default();
        batch.insert(&seq.to_be_bytes(), serde_json::to_vec(&rec)?);
        if seq > DONE_KEEP {
            batch.remove(&(seq - DONE_KEEP).to_be_bytes());
        }
        self.done.apply_batch(batch)?;
        self.pending.remove(key)?;
        self.committer.flush().await?;
        Ok(())
    }

    async fn attempt(
        &self,
        courier: &dyn Deliver,
        key: &[u8],
        mut d: Delivery,
    ) -> Result<(), OutboxError> {
        d.attempts += 1;
        let result = courier.deliver(&d.alert, &d.target).await;
        match result {
            Ok(()) => {
                tracing::info!(alert = %d.alert.id, attempts = d.attempts, "alert delivered");
                self.stats.delivered.inc();
                self.finish(key, &d, "delivered", None).await
            }
            Err(DeliveryError::Unconfigured(msg)) => {
                tracing::warn!(alert = %d.alert.id, reason = %msg, "alert not sent: its channel is not configured");
                self.stats.skipped.inc();
                self.finish(key, &d, "skipped", Some(msg)).await
            }
            Err(DeliveryError::Permanent(msg)) => {
                tracing::warn!(alert = %d.alert.id, error = %msg, "alert delivery failed permanently");
                self.stats.failed.inc();
                self.finish(key, &d, "failed", Some(msg)).await
            }
            Err(DeliveryError::Transient(msg)) => {
                let age = Timestamp::now().duration_since(d.created_at);
                if age
                    > SignedDuration::try_from(self.config.give_up_after)
                        .unwrap_or(SignedDuration::MAX)
                {
                    tracing::warn!(alert = %d.alert.id, error = %msg, attempts = d.attempts, "alert delivery given up");
                    self.stats.failed.inc();
                    return self
                        .finish(key, &d, "failed", Some(format!("gave up: {msg}")))
                        .await;
                }
                let delay = backoff(&self.config, d.attempts - 1, key);
                tracing::info!(alert = %d.alert.id, error = %msg, attempts = d.attempts, retry_in_ms = delay.as_millis() as u64, "alert delivery will be retried");
                self.stats.retried.inc();
                d.next_attempt_at = Timestamp::now()
                    .checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
                    .unwrap_or(Timestamp::MAX);
                d.last_error = Some(msg);
                self.pending.insert(key, serde_json::to_vec(&d)?)?;
                self.committer.flush().await?;
                Ok(())
            }
        }
    }

    /// The delivery worker; runs until the process ends.
    pub async fn run(self, courier: std::sync::Arc<dyn Deliver>) {
        loop {
            let now = Timestamp::now();
            let mut next: Option<Timestamp> = None;
            let due: Vec<(Vec<u8>, Delivery)> = self
                .pending
                .iter()
                .filter_map(|item| item.ok())
                .filter_map(|(k, v)| match serde_json::from_slice::<Delivery>(&v) {
                    Ok(d) => Some((k.to_vec(), d)),
                    Err(e) => {
                        tracing::error!(error = %e, "dropping an unreadable outbox record");
                        let _ = self.pending.remove(&k);
                        None
                    }
                })
                .filter(|(_, d)| {
                    if d.next_attempt_at <= now {
                        true
                    } else {
                        next = Some(next.map_or(d.next_attempt_at, |n| n.min(d.next_attempt_at)));
                        false
                    }
                })
                .collect();
            if !due.is_empty() {
                for (key, d) in due {
                    if let Err(e) = self.attempt(courier.as_ref(), &key, d).await {
                        tracing::error!(error = %e, "outbox storage error");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // Rescan: attempts rescheduled records, and new ones may have arrived.
                continue;
            }
            let wait = next
                .map(|n| Timestamp::now().duration_until(n))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(Duration::from_secs(30))
                .min(Duration::from_secs(30));
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_deterministically() {
        let c = OutboxConfig::default();
        let d0 = backoff(&c, 0, b"k");
        let d1 = backoff(&c, 1, b"k");
        assert!(d0 >= Duration::from_secs(2) && d0 <= Duration::from_millis(2400));
        assert!(d1 >= Duration::from_secs(4) && d1 <= Duration::from_millis(4800));
        assert_eq!(backoff(&c, 3, b"k"), backoff(&c, 3, b"k"));
        assert!(backoff(&c, 30, b"k") <= Duration::from_secs(720));
    }
}
