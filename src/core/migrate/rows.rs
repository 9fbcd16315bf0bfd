//! What a migration carries from one backend to the other: the parts it copies, each in
//! one transaction, and their rows as the port's values (never a backend's bytes), so
//! the reading backend decodes with its own code and the writing one encodes with its own.

use jiff::Timestamp;

use crate::core::alert::outbox::{Delivery, DoneRecord};
use crate::core::alert::policy::TargetHistory;
use crate::core::monitor::engine::{Monitor, TransitionRecord};
use crate::core::monitor::history::PingRecord;
use crate::core::storage::{AppRecord, EventValue, Tally, TokenOwner};
use crate::core::token::TokenHash;

/// A part of the data, copied in one transaction and recorded as done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Application records (retained ones included) and the token index.
    Applications,
    /// Raw events, in the order they were stored.
    Events,
    /// Daily, per-user daily, hourly and all-time rollups and the newest event times, as
    /// stored: raw events past retention are gone, their rollups are not.
    Rollups,
    /// `Idempotency-Key` records still within their window.
    Idempotency,
    /// Monitor records (definition and newest state) and the records of monitors deleted
    /// with their data retained.
    Monitors,
    /// Ping history.
    Pings,
    /// Timelines.
    Timelines,
    /// The alert outbox: pending and finished deliveries, targets' histories.
    Outbox,
}

impl Part {
    /// Every part, in the order they are copied.
    pub const ALL: [Part; 8] = [
        Part::Applications,
        Part::Events,
        Part::Rollups,
        Part::Idempotency,
        Part::Monitors,
        Part::Pings,
        Part::Timelines,
        Part::Outbox,
    ];

    /// Its name, as the marker table and the report say it.
    pub fn name(self) -> &'static str {
        match self {
            Part::Applications => "applications",
            Part::Events => "events",
            Part::Rollups => "rollups",
            Part::Idempotency => "idempotency",
            Part::Monitors => "monitors",
            Part::Pings => "pings",
            Part::Timelines => "timelines",
            Part::Outbox => "outbox",
        }
    }
}

/// One stored record of a part.
#[derive(Debug, Clone)]
pub enum Row {
    /// An application record under its key (`namespace/name`).
    App {
        /// Its key.
        key: String,
        /// The record (boxed: it is ten times the size of the other rows).
        record: Box<AppRecord>,
    },
    /// A token hash and its owner.
    Token(TokenHash, TokenOwner),
    /// A raw event of application `app`.
    Event {
        /// The application's number.
        app: u64,
        /// When it happened.
        at: Timestamp,
        /// Name, weight and user.
        value: EventValue,
    },
    /// Count and weight per local date and event name, per user where `user` is set.
    Daily {
        /// The application's number.
        app: u64,
        /// The user, for the per-user rollup.
        user: Option<i64>,
        /// The local date, `YYYYMMDD`.
        day: u32,
        /// The event name.
        event: String,
        /// Count and weight sum.
        tally: Tally,
    },
    /// All-time count and weight per event name, per user where `user` is set.
    Total {
        /// The application's number.
        app: u64,
        /// The user, for the per-user totals.
        user: Option<i64>,
        /// The event name.
        event: String,
        /// Count and weight sum.
        tally: Tally,
    },
    /// Count and weight per UTC hour and event name.
    Hourly {
        /// The application's number.
        app: u64,
        /// Hours since the epoch.
        hour: i64,
        /// The event name.
        event: String,
        /// Count and weight sum.
        tally: Tally,
    },
    /// The time of an application's newest event (kept after retention deleted it).
    Latest {
        /// The application's number.
        app: u64,
        /// Microseconds since the epoch.
        at: i64,
    },
    /// An `Idempotency-Key` (hashed) seen with an accepted event.
    Idempotency {
        /// The application's number.
        app: u64,
        /// SHA-256 of the key.
        key: [u8; 32],
        /// When its event was accepted, microseconds since the epoch.
        at: i64,
        /// SHA-256 of what the event said.
        fingerprint: [u8; 32],
    },
    /// A monitor: its definition and its newest state.
    Monitor(Box<Monitor>),
    /// The last record of a monitor deleted with its data retained (under its key).
    Retained(Box<Monitor>),
    /// A ping of monitor number `.0`.
    Ping(u64, Box<PingRecord>),
    /// A timeline entry of monitor number `.0`, at position `.1` among the entries of its
    /// instant.
    Transition(u64, u8, Box<TransitionRecord>),
    /// A delivery waiting for its target.
    Pending(Box<Delivery>),
    /// A finished delivery.
    Done(Box<DoneRecord>),
    /// What a target (by identity) was sent lately.
    Target(String, Box<TargetHistory>),
}
