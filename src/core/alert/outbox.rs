//! The durable alert outbox: alerts are stored before anything is sent (by the monitor
//! engine, in the same commit-log record as the state change that raised them), delivered
//! by the [scheduler](super::scheduler), retried with exponential backoff while a target is
//! unreachable, and picked up again after a restart.
//!
//! Deliveries are stored behind the storage port ([`OutboxStore`]). Each finished delivery
//! is one atomic write: its `done` entry, the removal of the pending one and the target's
//! updated history, all or nothing. A delivery is finished
//! only after its target accepted it, so a crash between acceptance and that record repeats
//! the one delivery after restart; every other path delivers exactly once per incident and
//! target. When that record cannot be written (the disk failed), the scheduler remembers
//! the delivery as sent and never repeats it while the process runs, and [`Outbox::health`]
//! fails until a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::channels::ChannelBook;
use super::message::{Alert, AlertKind, Target};
use super::policy::PolicyConfig;
use super::{Deliver, OutboxStats};
use crate::core::storage::{OutboxStore, StorageError, StorageFuture};

/// Errors of the outbox's storage.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The store failed.
    #[error("outbox storage: {0}")]
    Storage(#[from] StorageError),
    /// The write could not be run.
    #[error("outbox write: {0}")]
    Task(String),
}

/// How alerts are delivered: retries, the notification rules, and how many at once.
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// First retry delay; doubles per attempt.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// After this long a delivery that keeps failing transiently is given up.
    pub give_up_after: Duration,
    /// Flapping and the per-target cap.
    pub policy: PolicyConfig,
    /// Most deliveries in flight at once (one per target at a time).
    pub concurrency: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
            policy: PolicyConfig::default(),
            concurrency: 16,
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
    /// `delivered`, `failed`, `skipped` or `superseded` (a newer notice about the same
    /// monitor went instead).
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
        Target::Channel { channel } => format!(
            "channel:{}",
            hex::encode(&Sha256::digest(channel.to_string().as_bytes())[..6])
        ),
    };
    format!("{}|{suffix}", alert.id).into_bytes()
}

/// Whether a monitor (`namespace/name`) is still in the state a notice of the kind reports
/// (Down with its incident open, or Late) and alerts a target: repetitions stop when not.
pub type IncidentCheck = Arc<dyn Fn(&str, &Target, AlertKind) -> bool + Send + Sync>;

/// Whether `key` (a [`delivery_key`]) is that of a repetition (`...:down-r3|...`).
pub fn is_repetition(key: &[u8]) -> bool {
    let id = key.split(|b| *b == b'|').next().unwrap_or(key);
    let kind = id.rsplit(|b| *b == b':').next().unwrap_or(id);
    kind.windows(2).any(|w| w == b"-r")
}

/// The deliveries of `alert` to each of `targets`, for a caller that queues them in its
/// own atomic write (the monitor engine stores them together with the state change).
pub fn deliveries(alert: &Alert, targets: &[Target], now: Timestamp) -> Vec<Delivery> {
    targets
        .iter()
        .map(|t| Delivery {
            alert: alert.clone(),
            target: t.clone(),
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            last_error: None,
        })
        .collect()
}

/// Handle to the outbox; clone freely.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<dyn OutboxStore>,
    notify: Arc<Notify>,
    pub(super) config: OutboxConfig,
    /// Counters.
    pub stats: Arc<OutboxStats>,
    /// Why the last write failed, until one succeeds.
    failure: Arc<Mutex<Option<String>>>,
    /// The alert channels front ends resolved, and their delivery status.
    pub(super) channels: ChannelBook,
    /// Whether a monitor's incident is still open for a target (set once the monitor
    /// engine runs): repetitions stop when it is not.
    incidents: Arc<std::sync::OnceLock<IncidentCheck>>,
    /// Tests make writes fail with this.
    #[cfg(test)]
    pub(crate) fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    /// The outbox over `store`.
    pub fn new(store: Arc<dyn OutboxStore>, config: OutboxConfig) -> Self {
        Self {
            store,
            notify: Arc::new(Notify::new()),
            config,
            stats: Arc::new(OutboxStats::default()),
            failure: Arc::default(),
            channels: ChannelBook::default(),
            incidents: Arc::default(),
            #[cfg(test)]
            fail_writes: Arc::default(),
        }
    }

    /// Where the deliveries are stored.
    pub fn store(&self) -> &Arc<dyn OutboxStore> {
        &self.store
    }

    /// The channel book deliveries through channels read (and record their status in).
    pub fn channels(&self) -> &ChannelBook {
        &self.channels
    }

    /// Tells the outbox how to learn whether a monitor (`namespace/name`) is still Down
    /// and still alerts a target; without it every incident counts as open.
    pub fn set_incident_check(&self, check: IncidentCheck) {
        let _ = self.incidents.set(check);
    }

    /// Whether the monitor `monitor` is still in the state a `kind` notice to `target`
    /// reported.
    pub(super) fn still_holds(&self, monitor: &str, target: &Target, kind: AlertKind) -> bool {
        self.incidents
            .get()
            .is_none_or(|check| check(monitor, target, kind))
    }

    /// The deliveries of `alert` to `targets`, each recipient once: an inline address or
    /// URL that one of the channels among `targets` also reaches is left to the channel
    /// ([`recipients::distinct`](super::recipients::distinct)), as the channels stand now.
    pub fn deliveries(&self, alert: &Alert, targets: &[Target], now: Timestamp) -> Vec<Delivery> {
        let targets = super::recipients::distinct(targets, |id| {
            self.channels.get(id).map(|c| c.destination.clone())
        });
        deliveries(alert, &targets, now)
    }

    /// Adds the outbox's families to `/metrics`.
    pub fn register_metrics(&self, registry: &mut crate::core::metrics::MetricRegistry) {
        self.stats.register(self.store.clone(), registry);
    }

    /// Wakes the scheduler after records were written by someone else.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Resolves at the next [`Outbox::wake`].
    pub(super) async fn woken(&self) {
        self.notify.notified().await;
    }

    /// `Err` with the reason while the outbox cannot record what it delivered.
    pub fn health(&self) -> Result<(), String> {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Starts the delivery scheduler; runs until the process ends.
    pub async fn run(self, courier: Arc<dyn Deliver>) {
        super::scheduler::run(self, courier).await;
    }

    /// Runs `write`, a write of the store, and keeps a failure for [`Outbox::health`]
    /// until a write succeeds.
    pub(crate) async fn record<T>(&self, write: StorageFuture<'_, T>) -> Result<T, OutboxError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            let e = OutboxError::Task("injected write failure".into());
            let why = format!("the alert outbox cannot record deliveries: {e}");
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            return Err(e);
        }
        let result = write.await.map_err(OutboxError::from);
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        *failure = result
            .as_ref()
            .err()
            .map(|e| format!("the alert outbox cannot record deliveries: {e}"));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitions_are_told_by_their_key() {
        assert!(is_repetition(
            b"ns/my-runner:1700000000000:down-r2|channel:abc"
        ));
        assert!(!is_repetition(
            b"ns/my-runner:1700000000000:down|channel:abc"
        ));
        assert!(!is_repetition(b"ns/a-r:1700000000000:recovery|email"));
    }

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
