//! The monitor state machine: pure functions of timing, stored state and one signal.
//!
//! Every decision about a heartbeat monitor (is it Late, Down, does it alert, does it
//! recover) is made here without I/O or a clock of its own, so each rule can be tested with
//! explicit timestamps and the engine only has to persist the new state and carry out the
//! effects. The stored form ([`MonitorState`]) is plain serde data so it can live in sled as
//! JSON.
//!
//! A monitor is timed by an interval (the deadline is the last ping plus the interval) or
//! by a cron schedule (the deadline is the first scheduled time after the last ping, and a
//! scheduled monitor is armed from the moment it is created or resumed, since its rhythm
//! does not depend on a first ping). Either way it is Late from the deadline and Down from
//! the deadline plus grace. Monitors of a watched CronJob also take [`Signal::Job`]
//! evidence (see [`super::jobs`]): a Job's start, success or failure, and a window with no
//! Job at all is Down as "not scheduled".
//!
//! Rules that hold after every [`apply`]:
//! - at most one [`Effect::Transition`] per step, from the old state straight to the new one
//!   (a tick long after the deadline goes Up → Down, never through a zero-length Late);
//! - `since` never decreases, whatever the order in which signals arrive;
//! - Down with no open incident opens one and alerts; Up with an open incident closes it and
//!   sends the recovery; Paused with an open incident closes it with [`Effect::Closed`]
//!   (nobody watches it while paused, so no recovery would come; resuming starts a new
//!   episode): at most one alert and one closing (recovery or `Closed`) per episode, and
//!   ticks are idempotent; [`stop`] (a monitor removed or suspended) closes an open
//!   incident the same way;
//! - the deadline of an interval monitor is its last ping plus the interval, and it has none
//!   while New; a scheduled monitor's deadline is always a scheduled time, and it has one
//!   in every state but Paused (while the schedule fires at all);
//! - the same Job reported twice changes nothing the second time;
//! - Down only on the `failureThreshold`-th consecutive failed run or missed deadline
//!   (`failures` counts them and a success resets it); below it each failure moves the
//!   deadline on, so one window never counts twice;
//! - a tick inside a maintenance window changes no state but Late (back to Up or New): a
//!   deadline falling in the window is replaced by a fresh one after it, so the window's
//!   end never finds the monitor overdue.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::jobs::{JobFailure, JobSignal, RecentPing, SeenJob};
use super::sparse::SparseList;

mod step;
mod timing;

use step::run_deadline;
pub use step::{apply, stop};
pub use timing::{JobRules, Timing, TimingError, secs_saturating};

/// Where a monitor stands; the single value status pages, metrics and alerting key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Created, never pinged (or resumed with nothing heard while paused). An interval
    /// monitor never alerts on time while New, since there is no rhythm to miss yet; a
    /// scheduled one awaits its first scheduled time.
    New,
    /// Pinged; the next ping is due at `deadline` (last ping plus interval, or the next
    /// scheduled time).
    Up,
    /// A run signalled `/start` (or a Job started) and has not finished; its own deadline
    /// replaces the regular one so long jobs are judged by their run time.
    Started,
    /// Past the deadline but within grace: worth showing, not yet worth waking someone.
    Late,
    /// Past deadline plus grace, a run timed out, or the job reported failure.
    Down,
    /// Switched off by its owner: records pings, never alerts.
    Paused,
}

impl State {
    /// Every state, so gauges and filters can list zero counts too.
    pub const ALL: [State; 6] = [
        State::New,
        State::Up,
        State::Started,
        State::Late,
        State::Down,
        State::Paused,
    ];

    /// One spelling shared by status, metrics, the API and stored JSON, so they never drift.
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "New",
            State::Up => "Up",
            State::Started => "Started",
            State::Late => "Late",
            State::Down => "Down",
            State::Paused => "Paused",
        }
    }

    /// Tickstem's API only knows three statuses; this is the one lossy mapping to them.
    pub fn tickstem_status(self) -> &'static str {
        match self {
            State::Paused => "paused",
            State::Down => "failing",
            State::New | State::Up | State::Started | State::Late => "active",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a monitor went Down, kept so alerts and status can say more than "down".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownReason {
    /// No success ping before deadline plus grace.
    Missed,
    /// The job reported failure (`/fail`, or an exit code from 1 to 255).
    Failed {
        /// The exit code, when one was given.
        exit_code: Option<u8>,
    },
    /// A run that sent `/start` did not finish within its allowance.
    RunTimeout,
    /// A watched CronJob created no Job in the window after a scheduled time.
    NotScheduled,
    /// A Job of the watched CronJob failed.
    JobFailed {
        /// The Job's name.
        job: String,
        /// Its condition's reason.
        reason: JobFailure,
        /// The failed container's exit code, when a Pod still showed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<u8>,
    },
    /// A Job ran past its allowance (`maxDuration`, or the next run's window).
    JobTooLong {
        /// The Job's name.
        job: String,
    },
    /// A Job completed, but its code sent no ping during its run (`requirePing`).
    CompletedWithoutPing {
        /// The Job's name.
        job: String,
    },
    /// Alertmanager reported its always-firing alert resolved: the alerting pipeline
    /// stopped firing it (`/alertmanager`, the Watchdog as a Heartbeat).
    PipelineStopped {
        /// The alert's name (`Watchdog`).
        alert: String,
    },
}

/// Everything the state machine remembers about one monitor; stored as JSON, so fields are
/// only ever added (with serde defaults), never renamed. Empty fields are left out of the
/// stored record: 100 000 monitors keep a smaller database and cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Current state.
    pub state: State,
    /// When the current state began: never decreases.
    #[serde(serialize_with = "crate::core::rfc3339::serialize")]
    pub since: Timestamp,
    /// Latest success ping heard (the maximum, even if pings arrive out of order).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::core::rfc3339::option"
    )]
    pub last_ping_at: Option<Timestamp>,
    /// Start of the run in progress: set while Started, or while Down after a `/start`, so
    /// the run's end can report its duration.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::core::rfc3339::option"
    )]
    pub run_started_at: Option<Timestamp>,
    /// Latest failure signal heard.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::core::rfc3339::option"
    )]
    pub last_fail_at: Option<Timestamp>,
    /// When the next ping is due: last ping plus interval, or the next scheduled time;
    /// `None` while Paused, and while an interval monitor is New (the API's
    /// `next_expected_at`, and the base of `consecutive_misses`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::core::rfc3339::option"
    )]
    pub deadline: Option<Timestamp>,
    /// Why it is Down; `None` in every other state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<DownReason>,
    /// A Down alert was sent and neither its recovery nor its closing (paused, removed) has
    /// been: an episode gets exactly one alert and one of those.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incident_open: bool,
    /// A success ping arrived while paused: resume goes to Up (judged by that ping) instead
    /// of New.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinged_while_paused: bool,
    /// When the last Down alert was sent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::core::rfc3339::option"
    )]
    pub last_alert_at: Option<Timestamp>,
    /// Signals received (success, start, fail, Job evidence, paused or not); numbers the
    /// ping history.
    #[serde(default)]
    pub pings: u64,
    /// The newest Jobs of a watched CronJob, so replayed evidence counts once.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub jobs: SparseList<SeenJob>,
    /// The newest successful pings of a `requirePing` monitor, to tie to Jobs.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub recent_pings: SparseList<RecentPing>,
    /// Consecutive failed runs and missed deadlines since the last success (counted toward
    /// `failureThreshold`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Something the engine must do or record because of a step; returned rather than done so
/// the state machine stays pure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// The state changed, at the time it logically did (which may precede the tick that
    /// noticed it, never the previous `since`).
    Transition {
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// When the new state began.
        at: Timestamp,
    },
    /// Send a Down alert: once per episode.
    Alert {
        /// Why it went Down.
        reason: DownReason,
        /// When it went Down.
        at: Timestamp,
    },
    /// Send a recovery notice: once per episode, when it is Up again.
    Recovery {
        /// When it recovered.
        at: Timestamp,
    },
    /// Close the open incident without a recovery: the monitor is no longer watched
    /// (paused, removed or suspended while Down), so wherever the incident is open
    /// (PagerDuty, Alertmanager) it is resolved, and people are told monitoring stopped.
    Closed {
        /// When monitoring stopped.
        at: Timestamp,
    },
    /// A started run ended (success or failure) after this long; for the ping history.
    RunFinished {
        /// Its duration, never negative.
        duration: SignedDuration,
    },
}

/// An input to the state machine; each carries the time it happened, since the state
/// machine has no clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A successful ping (`/ping`, or exit code 0).
    Success(Timestamp),
    /// A successful ping that named the run it belongs to (`?rid=`: a Job's or Pod's name).
    SuccessFor(Timestamp, String),
    /// A run began (`/start`).
    Start(Timestamp),
    /// The job failed (`/fail`, or exit code 1–255). `Some(0)` is treated as a success.
    Fail(Timestamp, Option<u8>),
    /// Alertmanager reported the always-firing alert of this name resolved: the alerting
    /// pipeline stopped firing it. A failure, with that reason and no exit code.
    PipelineStopped(Timestamp, String),
    /// A Job of the watched CronJob, as its front end sees it now.
    Job(JobSignal),
    /// The monitor was paused.
    Pause(Timestamp),
    /// The monitor was resumed.
    Resume(Timestamp),
    /// Time passed; apply the deadlines due by then (never moves backwards).
    Tick(Timestamp),
    /// Timing changed (interval, schedule, grace, run limits): recompute the deadline and
    /// re-evaluate at this time (may also move Late back to Up).
    Retimed(Timestamp),
}

impl Signal {
    /// Maps a job's exit code to its signal, so "0 is success" lives in one place.
    pub fn from_exit_code(at: Timestamp, exit_code: u8) -> Self {
        if exit_code == 0 {
            Signal::Success(at)
        } else {
            Signal::Fail(at, Some(exit_code))
        }
    }

    /// When it happened, for records that do not care which signal it was.
    pub fn at(&self) -> Timestamp {
        match self {
            Signal::Job(job) => job.at(),
            Signal::Success(at)
            | Signal::SuccessFor(at, _)
            | Signal::Start(at)
            | Signal::Fail(at, _)
            | Signal::PipelineStopped(at, _)
            | Signal::Pause(at)
            | Signal::Resume(at)
            | Signal::Tick(at)
            | Signal::Retimed(at) => *at,
        }
    }
}

impl MonitorState {
    /// A monitor created at `at`: New, nothing heard, nothing armed.
    pub fn new(at: Timestamp) -> Self {
        Self {
            state: State::New,
            since: at,
            last_ping_at: None,
            run_started_at: None,
            last_fail_at: None,
            deadline: None,
            down_reason: None,
            incident_open: false,
            pinged_while_paused: false,
            last_alert_at: None,
            pings: 0,
            jobs: SparseList::new(),
            recent_pings: SparseList::new(),
            failures: 0,
        }
    }

    /// A monitor whose spec creates it paused: it must not pass through New, which would
    /// emit a transition nobody asked for.
    pub fn new_paused(at: Timestamp) -> Self {
        Self {
            state: State::Paused,
            ..Self::new(at)
        }
    }

    /// A monitor defined at `at` with `timing`: paused, or New and, on a schedule, armed
    /// for the first scheduled time after `at`.
    pub fn created(timing: &Timing<'_>, at: Timestamp, paused: bool) -> Self {
        if paused {
            return Self::new_paused(at);
        }
        Self {
            deadline: timing.schedule.and_then(|s| s.next_after(at)),
            ..Self::new(at)
        }
    }

    /// The last signal of any kind (a success, a start still running, a failure): what
    /// `hartslag_heartbeat_last_ping_timestamp_seconds` and `last_signal_at` tell.
    pub fn last_signal_at(&self) -> Option<Timestamp> {
        [self.last_ping_at, self.last_fail_at, self.run_started_at]
            .into_iter()
            .flatten()
            .max()
    }

    /// `next_expected_at` as the API shows it: none while Paused, or while an interval
    /// monitor is New, where no ping is awaited.
    pub fn next_expected_at(&self) -> Option<Timestamp> {
        match self.state {
            State::Paused => None,
            State::New | State::Up | State::Started | State::Late | State::Down => self.deadline,
        }
    }
}

/// `a + d`, or `None` past the end of time (a deadline that never comes).
fn plus(a: Timestamp, d: SignedDuration) -> Option<Timestamp> {
    a.checked_add(d).ok()
}

/// When a tick could next change this monitor, so the scheduler arms exactly one deadline
/// per monitor instead of polling; `None` means only a signal can change it.
pub fn next_wakeup(timing: &Timing<'_>, s: &MonitorState) -> Option<Timestamp> {
    match s.state {
        State::New | State::Up => s.deadline,
        State::Late => s.deadline.and_then(|d| plus(d, timing.grace_or_zero())),
        // A run deadline inside a maintenance window is judged when the window ends.
        State::Started => run_deadline(timing, s).map(|w| timing.maintenance_until(w).unwrap_or(w)),
        State::Down | State::Paused => None,
    }
}

/// Most scheduled times [`consecutive_misses`] counts one by one before it estimates the
/// rest from the typical gap: a monitor Down for a year on `* * * * *` must not cost a
/// walk over half a million minutes on every status read.
const MISSES_WALKED: u64 = 1000;

/// Whole intervals (or scheduled times) elapsed since the deadline while Down (0 in any
/// other state, before the deadline, or with no deadline), for status pages and
/// Tickstem's `consecutive_misses`.
pub fn consecutive_misses(timing: &Timing<'_>, s: &MonitorState, now: Timestamp) -> u64 {
    let (State::Down, Some(deadline)) = (s.state, s.deadline) else {
        return 0;
    };
    if now <= deadline {
        return 0;
    }
    if let Some(schedule) = timing.schedule {
        let walked = schedule.count_between(deadline, now, MISSES_WALKED);
        if walked < MISSES_WALKED {
            return walked;
        }
    }
    let interval = timing.interval.as_nanos();
    if interval <= 0 {
        return 0;
    }
    let whole = now
        .duration_since(deadline)
        .as_nanos()
        .checked_div(interval)
        .unwrap_or(0);
    u64::try_from(whole).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
