//! What the engine holds and hands out: monitor definitions and state, pings as received,
//! and state transitions as stored and as broadcast.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::PingKind;
pub use super::def::MonitorDef;
use crate::core::monitor::state::{MonitorState, State};

/// Where a monitor's definition comes from; decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A standalone manifest file (read-only through the API).
    Manifest,
    /// Created through the management API in standalone mode.
    Api,
    /// A Kubernetes custom resource.
    Kubernetes,
}

/// A monitor as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    /// Numeric id used in history keys.
    pub num: u64,
    /// What its front end defined.
    pub def: MonitorDef,
    /// Where the state machine has it now.
    pub state: MonitorState,
    /// How long its last run (from `/start` to its end) took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_ms: Option<u64>,
}

/// A ping as received by the HTTP layer (and as relayed between replicas, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingInput {
    /// Which route it came in on, or `Fail` for a non-zero exit code.
    pub kind: PingKind,
    /// A failure's exit code (1–255).
    pub exit_code: Option<u8>,
    /// Client address (first `X-Forwarded-For` entry when present).
    pub source: Option<String>,
    /// User agent, cut to 200 characters.
    pub user_agent: Option<String>,
    /// Request body, cut to 10 KiB: a job's last log lines.
    pub body: Option<String>,
    /// The run it belongs to (`?rid=`): a Job's or Pod's name, or any id the job chose.
    pub rid: Option<String>,
    /// A failure Alertmanager reported (`/alertmanager`): the always-firing alert
    /// (`Watchdog`) it sent as resolved. The monitor is Down for that reason, with no
    /// exit code, instead of as a job that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_alert: Option<String>,
}

impl PingInput {
    /// A bare success ping: no exit code, source, body or run id (what tests and
    /// benchmarks send).
    pub fn success() -> Self {
        Self {
            kind: PingKind::Success,
            exit_code: None,
            source: None,
            user_agent: None,
            body: None,
            rid: None,
            stopped_alert: None,
        }
    }
}

/// What a ping's sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// Recorded and applied.
    Ok,
    /// Recorded; the monitor is paused.
    Paused,
}

/// A state transition as kept in a monitor's timeline (newest first when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// When the monitor entered `to`.
    #[serde(serialize_with = "crate::core::rfc3339::serialize")]
    pub at: Timestamp,
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Why, in words (for Down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A state transition as broadcast to status writers, event recorders and live pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Monitor key.
    pub key: String,
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// When the new state began (may precede the deadline tick that noticed it).
    pub at: Timestamp,
    /// Why, in words (for Down).
    pub reason: Option<String>,
}

#[cfg(test)]
pub(crate) use samples::sample;

#[cfg(test)]
mod samples {
    use super::*;
    use crate::core::monitor::state::State;
    use crate::core::token::TokenHash;

    /// A monitor under `key` in `state`, for tests.
    pub(crate) fn sample(key: &str, state: State) -> Monitor {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let mut st = MonitorState::new(now);
        st.state = state;
        Monitor {
            num: 1,
            def: super::super::def::DefRecord {
                key: key.into(),
                id: key.into(),
                namespace: "ns".into(),
                name: key.into(),
                display_name: None,
                interval_secs: 60,
                grace_secs: 0,
                schedule: None,
                max_duration_secs: None,
                cron_job: None,
                require_ping: false,
                paused: false,
                targets: Vec::new(),
                alerting: Default::default(),
                application: None,
                token: TokenHash::of(key),
                ping_hint: String::new(),
                origin: Origin::Api,
                retain_on_delete: false,
                created_at: now,
                updated_at: now,
            }
            .into(),
            state: st,
            last_run_ms: None,
        }
    }
}
