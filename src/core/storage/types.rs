//! The values that cross the storage port: what an event write carries and what became of
//! it, what queries answer, what export yields, and the application and token records.
//! They say nothing of how a backend lays them out; each backend encodes them its own way.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::core::spec::ApplicationSpec;
use crate::core::token::{TokenHash, TokenKind};

/// How long an `Idempotency-Key` keeps answering retries, in every backend.
pub const IDEMPOTENCY_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// An event ready to be written: validated, timestamped and dated in its app's zone.
#[derive(Debug, Clone)]
pub struct EventWrite {
    /// Numeric id of the application.
    pub app: u64,
    /// When it happened.
    pub at: Timestamp,
    /// Local date (`YYYYMMDD` key) in the application's time zone.
    pub date: u32,
    /// Name, weight and user.
    pub value: EventValue,
    /// The client's `Idempotency-Key`, when it sent one.
    pub idempotency: Option<Idempotency>,
    /// Most distinct event names the application may have: an event with a new name is
    /// refused once it has this many.
    pub name_limit: u32,
}

/// An `Idempotency-Key` and the request it came with, both hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    /// SHA-256 of the header value.
    pub key: [u8; 32],
    /// SHA-256 of what the event says (name, weight, user, given time), so a retry is told
    /// apart from a different event sent under the same key.
    pub fingerprint: [u8; 32],
}

/// What became of an event handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (and counted).
    Stored,
    /// A retry: its `Idempotency-Key` came with the same event within the window, which was
    /// stored then; nothing was counted again.
    Replayed,
    /// Its `Idempotency-Key` came with a different event within the window; nothing stored.
    KeyReused,
    /// Its name would be one more distinct name than the application may have; nothing
    /// stored.
    TooManyNames,
}

/// Filters for export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Inclusive lower bound.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound.
    pub to: Option<Timestamp>,
    /// Only this event name.
    pub event: Option<String>,
    /// Only this user.
    pub user_id: Option<i64>,
}

/// One exported row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEvent {
    /// When it happened.
    pub at: Timestamp,
    /// Name, weight and user.
    pub value: EventValue,
}

/// Counts and weight sums for the four periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PeriodTallies {
    /// The current local day.
    pub today: Tally,
    /// The current ISO week (Monday first).
    pub week: Tally,
    /// The current month.
    pub month: Tally,
    /// Everything ever stored, including events past retention.
    pub total: Tally,
}

/// Stats for an application: overall and per event name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsReport {
    /// Sum over all event names.
    pub overall: PeriodTallies,
    /// Per event name, sorted by name.
    pub events: BTreeMap<String, PeriodTallies>,
}

/// A tally in one time bucket for one event name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Hours since the epoch (hourly) or a `YYYYMMDD` date key (daily).
    pub at: i64,
    /// Event name.
    pub event: String,
    /// Count and weight sum.
    pub tally: Tally,
}

/// A stored event's payload (the time lives in the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventValue {
    /// Event name.
    pub event: String,
    /// What it adds to the weight sums (1 unless the client says otherwise).
    pub weight: i64,
    /// Optional user id.
    pub user_id: Option<i64>,
}

/// A count and a weight sum; the sum is 128-bit so no realistic volume overflows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Tally {
    /// Number of events.
    pub count: i64,
    /// Sum of their weights.
    pub weight: i128,
}

/// What the store remembers about an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Compact numeric id used in every event and rollup key.
    pub num: u64,
    /// Namespace (Kubernetes) or `default` (standalone).
    pub namespace: String,
    /// Resource name (`metadata.name`).
    pub name: String,
    /// The spec last applied.
    pub spec: ApplicationSpec,
    /// Hash of its API token.
    pub token: TokenHash,
    /// Set while the application is deleted with its data retained: its token is revoked,
    /// its data stays under its name for a re-created one, and retention still applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_since: Option<jiff::Timestamp>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenOwner {
    /// The kind of credential.
    pub kind: TokenKind,
    /// The owner's key, `namespace/name`.
    pub key: String,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, other: Tally) {
        self.count = self.count.saturating_add(other.count);
        self.weight = self.weight.saturating_add(other.weight);
    }
}

/// An instant stored as microseconds since the epoch, or `None` for a number no
/// [`Timestamp`] holds.
///
/// Not [`Timestamp::from_microsecond`]: its bound is [`Timestamp::MAX`]'s whole second, so
/// it refuses every microsecond of the last second a `Timestamp` holds (an event accepted
/// at `9999-12-30T22:00:00.5Z` could not be read back). Nanoseconds have no such gap.
pub fn timestamp_from_micros(micros: i64) -> Option<Timestamp> {
    Timestamp::from_nanosecond(i128::from(micros) * 1000).ok()
}

/// The hour an instant falls in, as hours since the epoch: the key of hourly buckets.
pub fn hour_of(ts: Timestamp) -> i64 {
    ts.as_second().div_euclid(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_microsecond_of_a_timestamp_reads_back() {
        let max_second = Timestamp::MAX.as_second();
        for ts in [
            Timestamp::MAX,
            Timestamp::new(max_second, 500_000_000).unwrap(),
            Timestamp::new(max_second, 1_000).unwrap(),
            Timestamp::new(max_second, 0).unwrap(),
            Timestamp::MIN,
            Timestamp::UNIX_EPOCH,
            "2024-01-17T10:30:00.123456Z".parse().unwrap(),
            "1960-01-17T10:30:00.123456Z".parse().unwrap(),
        ] {
            let micros = ts.as_microsecond();
            let back = timestamp_from_micros(micros).unwrap();
            assert_eq!(back.as_microsecond(), micros, "{ts}");
            assert!(
                back <= ts && ts.duration_since(back).as_micros() < 1,
                "{ts}"
            );
        }
        assert_eq!(timestamp_from_micros(i64::MAX), None);
        assert_eq!(timestamp_from_micros(i64::MIN), None);
    }
}
