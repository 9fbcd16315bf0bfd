//! Alerts: what they say, the durable outbox that makes sure each one arrives, the
//! scheduler and rules that decide when each target gets what (a queue per target,
//! flapping, an hourly cap), and the port through which deliveries go to a channel (email,
//! webhooks, ...), whose implementations live outside the core (`crate::notify`).

pub mod alerting;
pub mod channels;
pub mod message;
mod metrics;
pub mod outbox;
pub mod policy;
pub mod recipients;
mod scheduler;

pub use metrics::OutboxStats;

use futures::future::BoxFuture;

use message::{Alert, Target};

/// Why one delivery attempt failed; the outbox retries, gives up or skips accordingly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: the server was unreachable, timed out or asked to retry.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// Worth retrying, not before `after`: the target said when (`Retry-After` on a 429 or
    /// a 503), and providers throttle integrations that retry sooner.
    #[error("temporary failure: {reason}; the target asked to wait {}s", after.as_secs())]
    Throttled {
        /// What the target answered.
        reason: String,
        /// How long it asked to wait (at most [`MAX_RETRY_AFTER`]).
        after: std::time::Duration,
    },
    /// Retrying will not help: rejected address, 4xx from a webhook.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// The target's channel is not configured on this server (email without an SMTP
    /// server): the delivery is skipped, not failed.
    #[error("channel not configured: {0}")]
    Unconfigured(String),
}

/// The longest wait a target's `Retry-After` is taken at: a target asking for more is
/// tried again after this all the same, so one answer cannot hold a notice for a day.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Carries alerts to a target: the port the outbox delivers through.
pub trait Deliver: Send + Sync {
    /// One attempt; `Ok` only once the target has accepted the alert.
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// One attempt to carry every one of `alerts` to `target` in one request, for targets
    /// whose API takes a list (Alertmanager): `Ok` only once the target accepted them all;
    /// on an error none counts as delivered and each is retried. The scheduler hands over
    /// several only for such targets; this default, for a courier that cannot send lists,
    /// delivers them one after another and stops at the first failure.
    fn deliver_batch<'a>(
        &'a self,
        alerts: &'a [Alert],
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            for alert in alerts {
                self.deliver(alert, target).await?;
            }
            Ok(())
        })
    }
}
