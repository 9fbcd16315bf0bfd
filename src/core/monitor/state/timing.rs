//! How long a monitor waits: the interval or schedule, grace, run timeout, failure
//! threshold and maintenance windows every step is judged by.

use jiff::{SignedDuration, Timestamp};

use super::{DownReason, plus};
use crate::core::channel::MaintenanceWindow;
use crate::core::cron::Schedule;

/// Why a [`Timing`] was refused: such values would make a monitor late forever or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// A zero or negative interval would put every deadline at or before its ping.
    #[error("interval must be positive, got {0}")]
    NonPositiveInterval(SignedDuration),
    /// A negative grace would put Down before Late.
    #[error("grace must not be negative, got {0}")]
    NegativeGrace(SignedDuration),
}

/// What the Jobs of a watched CronJob are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct JobRules {
    /// A Job that completes without a ping from its code is Down.
    pub require_ping: bool,
}

/// How long a monitor waits, passed to every step rather than stored, so a changed spec
/// takes effect on the next step without rewriting stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing<'a> {
    /// Longest expected time between successful pings; for a scheduled monitor, the
    /// schedule's typical gap (only used where a single period must be shown).
    pub interval: SignedDuration,
    /// Extra time after the deadline before Down; also the time a started run may take
    /// when nothing else limits it.
    pub grace: SignedDuration,
    /// The cron schedule, when the monitor is scheduled rather than on an interval.
    pub schedule: Option<&'a Schedule>,
    /// The longest a run may take (`maxDuration`).
    pub max_duration: Option<SignedDuration>,
    /// Set when the monitor watches a CronJob's Jobs.
    pub jobs: Option<JobRules>,
    /// Down only after this many consecutive failed runs or missed deadlines (`0` reads
    /// as 1).
    pub failure_threshold: u32,
    /// Windows in which no deadline makes the monitor Late or Down; a deadline that falls
    /// in one is replaced by a fresh one after it.
    pub maintenance: &'a [MaintenanceWindow],
}

impl Timing<'static> {
    /// Interval timing with nothing else set.
    pub const fn every(interval: SignedDuration, grace: SignedDuration) -> Self {
        Self {
            interval,
            grace,
            schedule: None,
            max_duration: None,
            jobs: None,
            failure_threshold: 1,
            maintenance: &[],
        }
    }

    /// Checked constructor for timing that comes from users (the fields stay public for
    /// literals; out-of-range values there are clamped by the state machine, not trusted).
    pub fn new(interval: SignedDuration, grace: SignedDuration) -> Result<Self, TimingError> {
        if !interval.is_positive() {
            return Err(TimingError::NonPositiveInterval(interval));
        }
        if grace.is_negative() {
            return Err(TimingError::NegativeGrace(grace));
        }
        Ok(Self::every(interval, grace))
    }

    /// Monitor definitions store whole seconds; this saturates instead of failing.
    pub fn from_secs(interval: u64, grace: u64) -> Self {
        Self::every(secs_saturating(interval), secs_saturating(grace))
    }
}

/// `v` seconds, saturating at the largest duration.
pub fn secs_saturating(v: u64) -> SignedDuration {
    SignedDuration::from_secs(i64::try_from(v).unwrap_or(i64::MAX))
}

impl<'a> Timing<'a> {
    /// The same timing on a cron schedule.
    pub fn with_schedule<'b>(self, schedule: Option<&'b Schedule>) -> Timing<'b>
    where
        'a: 'b,
    {
        Timing { schedule, ..self }
    }

    /// How long a started run may take before it is Down when neither `maxDuration` nor a
    /// schedule limits it: the grace, or the interval when grace is zero (a zero allowance
    /// would fail every run at once).
    pub fn run_allowance(&self) -> SignedDuration {
        if self.grace.is_positive() {
            self.grace
        } else {
            self.interval
        }
    }

    pub(super) fn grace_or_zero(&self) -> SignedDuration {
        self.grace.max(SignedDuration::ZERO)
    }

    /// The deadline a success ping at `ping` sets: the next scheduled time after it, or
    /// the ping plus the interval.
    pub fn deadline_after(&self, ping: Timestamp) -> Option<Timestamp> {
        match self.schedule {
            Some(s) => s.next_after(ping),
            None => plus(ping, self.interval),
        }
    }

    /// When a run that started at `started` times out: after `maxDuration`; without one,
    /// on a schedule, once the next scheduled run is due and its grace has passed (a run
    /// still going then is stuck or blocking the next); otherwise after
    /// [`Timing::run_allowance`].
    pub fn run_deadline(&self, started: Timestamp) -> Option<Timestamp> {
        match (self.max_duration, self.schedule) {
            (Some(max), _) => plus(started, max.max(SignedDuration::from_secs(1))),
            (None, Some(s)) => s
                .next_after(started)
                .and_then(|n| plus(n, self.grace_or_zero())),
            (None, None) => plus(started, self.run_allowance()),
        }
    }

    /// When the maintenance window `t` lies in ends, if it lies in one.
    pub(super) fn maintenance_until(&self, t: Timestamp) -> Option<Timestamp> {
        if self.maintenance.is_empty() {
            return None;
        }
        crate::core::alert::alerting::maintenance_until(self.maintenance, t)
    }

    /// Why a missed deadline is Down: with Jobs watched, no Job started in the window.
    pub(super) fn miss_reason(&self) -> DownReason {
        if self.jobs.is_some() {
            DownReason::NotScheduled
        } else {
            DownReason::Missed
        }
    }
}
