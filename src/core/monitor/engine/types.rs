//! What the engine holds and hands out: monitor definitions and state, pings as received,
//! and state transitions as stored and as broadcast.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::PingKind;
use crate::core::alert::alerting::AlertingBox;
use crate::core::alert::message::Target;
use crate::core::cron::Schedule;
use crate::core::monitor::state::{JobRules, MonitorState, State, Timing, secs_saturating};
use crate::core::token::TokenHash;

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

/// Everything the engine needs to know about a monitor, resolved by a front end
/// ([`crate::core::monitor::define`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorDef {
    /// `namespace/name`: the engine's key.
    pub key: String,
    /// Stable id for the management API.
    pub id: String,
    /// Namespace (`default` in standalone mode).
    pub namespace: String,
    /// Resource name.
    pub name: String,
    /// Human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Expected interval, seconds; for a scheduled monitor, the schedule's typical gap.
    pub interval_secs: u64,
    /// The cron schedule of a scheduled monitor. A stored schedule that no longer parses
    /// (a parser upgrade that drops some syntax) is read as none, so the monitor falls back
    /// to `interval_secs` instead of stopping the engine from starting.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_schedule"
    )]
    pub schedule: Option<Schedule>,
    /// Grace, seconds.
    pub grace_secs: u64,
    /// Longest a run may take, seconds (`maxDuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// The watched CronJob, whose Jobs are evidence for this monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job: Option<String>,
    /// A Job that completes without a ping from its code is Down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_ping: bool,
    /// Paused by spec.
    pub paused: bool,
    /// Resolved alert targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// When to notify: threshold, maintenance windows, the Heartbeat's own policy.
    #[serde(default, skip_serializing_if = "AlertingBox::is_default")]
    pub alerting: AlertingBox,
    /// Owning application key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Hash of the ping token.
    pub token: TokenHash,
    /// How to ping it, for alert text (no token).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ping_hint: String,
    /// Who defines it.
    pub origin: Origin,
    /// Keep state and history after deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
    /// When the monitor was first defined.
    pub created_at: Timestamp,
    /// When the definition last changed.
    pub updated_at: Timestamp,
}

impl MonitorDef {
    /// The timing the state machine works with.
    pub fn timing(&self) -> Timing<'_> {
        Timing {
            schedule: self.schedule.as_ref(),
            max_duration: self.max_duration_secs.map(secs_saturating),
            jobs: self.cron_job.as_ref().map(|_| JobRules {
                require_ping: self.require_ping,
            }),
            failure_threshold: self.alerting.failure_threshold,
            maintenance: &self.alerting.maintenance,
            ..Timing::from_secs(self.interval_secs, self.grace_secs)
        }
    }
}

fn lenient_schedule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Schedule>, D::Error> {
    let raw = Option::<serde_json::Value>::deserialize(d)?;
    Ok(raw.and_then(|v| match serde_json::from_value::<Schedule>(v.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(schedule = %v, error = %e, "a stored schedule no longer parses; the monitor keeps its interval");
            None
        }
    }))
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

    /// A monitor under `key` in `state`, for tests.
    pub(crate) fn sample(key: &str, state: State) -> Monitor {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let mut st = MonitorState::new(now);
        st.state = state;
        Monitor {
            num: 1,
            def: MonitorDef {
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
            },
            state: st,
            last_run_ms: None,
        }
    }
}
