//! What a provider payload is built from: one notice about one monitor, with the facts every
//! kind of channel shows (state, since, last ping, exit code, links).
//!
//! The provider payloads ([`super::alertmanager`], [`super::pagerduty`], [`super::slack`],
//! [`super::teams`], [`super::template`]) are pure functions of these facts and the time,
//! so each provider's schema is tested without a socket.

use jiff::Timestamp;
use serde::Serialize;

pub use crate::core::channel::Severity;

/// What a notice says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// Down: the incident is open (sent again while it lasts, for Alertmanager).
    Down,
    /// Late, before Down: a warning, sent only to channels with `notifyLate`.
    Late,
    /// Up again: the incident is closed.
    Recovery,
    /// Flipping between Down and up; notices are held until it settles.
    Flapping,
    /// Monitoring stopped while it was Down (paused, removed, suspended): the incident is
    /// closed, as by a recovery, though the monitor did not recover.
    Stopped,
}

impl NoticeKind {
    /// Every kind, for tests and checks that cover them all.
    pub const ALL: [NoticeKind; 5] = [
        NoticeKind::Down,
        NoticeKind::Late,
        NoticeKind::Recovery,
        NoticeKind::Flapping,
        NoticeKind::Stopped,
    ];

    /// Whether the notice opens (or keeps open) an alert, rather than closing it.
    pub fn is_firing(self) -> bool {
        !matches!(self, NoticeKind::Recovery | NoticeKind::Stopped)
    }

    /// The word people see in titles.
    pub fn word(self) -> &'static str {
        match self {
            NoticeKind::Down => "DOWN",
            NoticeKind::Late => "LATE",
            NoticeKind::Recovery => "RECOVERED",
            NoticeKind::Flapping => "FLAPPING",
            NoticeKind::Stopped => "NO LONGER MONITORED",
        }
    }

    /// The monitor state the notice reports, as status and metrics spell it;
    /// `Unmonitored` for a stopped notice (paused or removed: nobody watches it).
    pub fn state(self) -> &'static str {
        match self {
            NoticeKind::Down | NoticeKind::Flapping => "Down",
            NoticeKind::Late => "Late",
            NoticeKind::Recovery => "Up",
            NoticeKind::Stopped => "Unmonitored",
        }
    }
}

/// One notice about one monitor, as every provider payload reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// What happened.
    pub kind: NoticeKind,
    /// Namespace (`default` in standalone mode).
    pub namespace: String,
    /// The Heartbeat's resource name.
    pub name: String,
    /// Its human name, when the spec has one.
    pub display_name: Option<String>,
    /// The Application it belongs to, if any (its name, without the namespace).
    pub application: Option<String>,
    /// What happened, in words.
    pub reason: String,
    /// When the monitor entered the state reported (Down since, or recovered at).
    pub since: Timestamp,
    /// When the incident opened (its Down); equal to `since` on a Down notice.
    pub opened_at: Timestamp,
    /// The last successful ping.
    pub last_ping_at: Option<Timestamp>,
    /// The last failure, when it came after the last success (with `exit_code`, when
    /// the notice knows it).
    pub last_failure_at: Option<Timestamp>,
    /// When a ping was expected.
    pub expected_at: Option<Timestamp>,
    /// The failing run's exit code, when it reported one.
    pub exit_code: Option<u8>,
    /// The incident this notice belongs to: its Down and its recovery share it, the next
    /// Down gets a new one (PagerDuty's `dedup_key`, Alertmanager's `incident` label).
    pub incident: String,
    /// The monitor's dashboard page, absolute.
    pub dashboard_url: String,
    /// The Heartbeat's `runbookURL`.
    pub runbook_url: Option<String>,
    /// The channel's severity.
    pub severity: Severity,
}

impl Facts {
    /// The name people know the monitor by.
    pub fn title(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.name)
    }

    /// One line for notifications and fallbacks: "DOWN: Nightly backup (team-a/nightly)".
    pub fn headline(&self) -> String {
        format!(
            "{}: {} ({}/{})",
            self.kind.word(),
            self.title(),
            self.namespace,
            self.name
        )
    }

    /// The whole notice as one sentence or two, for descriptions and summaries.
    pub fn description(&self) -> String {
        let mut text = format!("{} {}.", self.headline(), self.reason);
        text.push_str(&format!(" {}.", self.last_heard()));
        if let Some(code) = self.exit_code {
            text.push_str(&format!(" Exit code: {code}."));
        }
        text
    }

    /// "Last success: never; last failure: 2026-12-05T03:04:00Z": what the monitor last
    /// heard, whichever kind of signal it was.
    pub fn last_heard(&self) -> String {
        let mut text = format!("Last success: {}", stamp(self.last_ping_at));
        if let Some(at) = self.last_failure_at {
            text.push_str(&format!("; last failure: {}", stamp(Some(at))));
        }
        text
    }
}

/// An instant as RFC 3339 in UTC, whole seconds, or `never`.
pub fn stamp(at: Option<Timestamp>) -> String {
    match at {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => "never".into(),
    }
}

/// A sample notice for tests and for checking templates when they are defined.
pub fn sample(kind: NoticeKind) -> Facts {
    let at = |s: &str| s.parse::<Timestamp>().unwrap_or(Timestamp::UNIX_EPOCH);
    Facts {
        kind,
        namespace: "team-a".into(),
        name: "nightly-backup".into(),
        display_name: Some("Nightly backup".into()),
        application: Some("billing".into()),
        reason: "no ping for 1h 5m (expected every 1h, grace 5m)".into(),
        since: at("2026-12-05T03:05:00Z"),
        opened_at: at("2026-12-05T03:05:00Z"),
        last_ping_at: Some(at("2026-12-05T02:00:00Z")),
        last_failure_at: Some(at("2026-12-05T03:05:00Z")),
        expected_at: Some(at("2026-12-05T03:00:00Z")),
        exit_code: Some(2),
        incident: "1764903900000".into(),
        dashboard_url: "https://hartslag.example.com/ui/monitors/team-a/nightly-backup".into(),
        runbook_url: Some("https://runbooks.example.com/nightly-backup".into()),
        severity: Severity::Critical,
    }
}
