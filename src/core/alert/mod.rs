//! Alert delivery: what alerts say, how they travel (email, webhook) and the durable
//! outbox that makes sure each one arrives.

pub mod message;
pub mod outbox;

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: the server was unreachable, timed out or asked to retry.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// Retrying will not help: rejected address, 4xx from a webhook.
    #[error("permanent failure: {0}")]
    Permanent(String),
}
