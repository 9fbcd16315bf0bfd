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
//!   sends the recovery: at most one alert and one recovery per episode, and ticks are
//!   idempotent;
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

use super::jobs::{self, JobFailure, JobOutcome, JobSignal, Novelty, RecentPing, SeenJob};
use super::sparse::SparseList;
use crate::core::channel::MaintenanceWindow;
use crate::core::cron::Schedule;

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

    fn grace_or_zero(&self) -> SignedDuration {
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
    fn maintenance_until(&self, t: Timestamp) -> Option<Timestamp> {
        if self.maintenance.is_empty() {
            return None;
        }
        crate::core::alert::alerting::maintenance_until(self.maintenance, t)
    }

    /// Why a missed deadline is Down: with Jobs watched, no Job started in the window.
    fn miss_reason(&self) -> DownReason {
        if self.jobs.is_some() {
            DownReason::NotScheduled
        } else {
            DownReason::Missed
        }
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
    /// A Down alert was sent and its recovery has not been; survives pause and resume so an
    /// episode gets exactly one alert and one recovery.
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

/// When a run in progress times out.
fn run_deadline(timing: &Timing<'_>, s: &MonitorState) -> Option<Timestamp> {
    s.run_started_at.and_then(|r| timing.run_deadline(r))
}

/// Where a monitor stands at `now` judged only by its deadline, and since when; `None`
/// when nothing is due yet.
fn overdue(
    timing: &Timing<'_>,
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> Option<(State, Timestamp)> {
    let deadline = deadline?;
    match plus(deadline, timing.grace_or_zero()) {
        Some(down_at) if down_at <= now => Some((State::Down, down_at)),
        _ if deadline <= now => Some((State::Late, deadline)),
        _ => None,
    }
}

/// One step in progress: the state being built, the state it started from and the effects
/// that are not derived from the final state.
struct Step<'a, 't> {
    timing: &'a Timing<'t>,
    from: State,
    s: MonitorState,
    run_finished: Option<SignedDuration>,
}

impl Step<'_, '_> {
    /// Moves to `to`, which began at `at` (clamped so `since` never decreases).
    fn enter(&mut self, to: State, at: Timestamp) {
        if self.s.state != to {
            self.s.state = to;
            self.s.since = self.s.since.max(at);
        }
        if to != State::Down {
            self.s.down_reason = None;
        }
    }

    /// A failed run or a missed deadline at `at`: Down for `reason` once it is the
    /// `failureThreshold`-th in a row, unless already Down (the first reason of an episode
    /// stays). Below the threshold it is counted and absorbed: the monitor waits for its
    /// next deadline ([`Step::absorb`]). Returns whether it was absorbed.
    fn down(&mut self, reason: DownReason, at: Timestamp) -> bool {
        if self.s.state == State::Down {
            return false;
        }
        self.s.failures = self.s.failures.saturating_add(1);
        if self.s.failures >= self.timing.failure_threshold.max(1) {
            self.enter(State::Down, at);
            self.s.down_reason = Some(reason);
            return false;
        }
        self.absorb(&reason, at);
        true
    }

    /// A failure below the threshold. A missed deadline moves the deadline to the next
    /// one (the next interval or scheduled time after it); a failed or timed-out run
    /// counts as the run of its window, so the next deadline follows from `at` (else the
    /// same window would count again as missed). A run in progress ends.
    fn absorb(&mut self, reason: &DownReason, at: Timestamp) {
        let from = match reason {
            DownReason::Missed | DownReason::NotScheduled => self.s.deadline.unwrap_or(at),
            // A failure reported late never moves the deadline before the last success's.
            _ => self.s.last_ping_at.map_or(at, |p| p.max(at)),
        };
        // An interval monitor that never pinged has no rhythm to move on.
        if self.s.deadline.is_some() || self.timing.schedule.is_some() {
            self.s.deadline = self.timing.deadline_after(from).or(self.s.deadline);
        }
        self.s.run_started_at = None;
        // Paused only while resuming: the monitor is running again.
        if matches!(self.s.state, State::Started | State::Late | State::Paused) {
            let back = if self.s.last_ping_at.is_some() || self.timing.schedule.is_some() {
                State::Up
            } else {
                State::New
            };
            self.enter(back, at);
        }
    }

    /// Ends the run in progress, if any, at `at`.
    fn finish_run(&mut self, at: Timestamp) {
        if let Some(started) = self.s.run_started_at.take() {
            self.run_finished = Some(at.duration_since(started).max(SignedDuration::ZERO));
        }
    }

    /// Applies the time-driven transitions due by `now`, forwards only. Inside a
    /// maintenance window nothing is due: a deadline that falls in it is replaced by a
    /// fresh one after it.
    fn tick(&mut self, now: Timestamp) {
        if let Some(end) = self.timing.maintenance_until(now) {
            return self.maintain(end, now);
        }
        match self.s.state {
            State::New | State::Up | State::Late => self.judge_deadline(now),
            State::Started => {
                if let Some(at) = run_deadline(self.timing, &self.s).filter(|at| *at <= now) {
                    let reason = self.timeout_reason();
                    self.s.run_started_at = None;
                    // Absorbed below the threshold: the new deadline may be due already.
                    if self.down(reason, at) {
                        self.judge_deadline(now);
                    }
                }
            }
            State::Down | State::Paused => {}
        }
    }

    /// Late or Down by the deadline; each miss absorbed below the failure threshold moves
    /// the deadline on, so a tick long after several missed deadlines counts each.
    fn judge_deadline(&mut self, now: Timestamp) {
        for _ in 0..=self.timing.failure_threshold {
            match overdue(self.timing, self.s.deadline, now) {
                Some((State::Down, at)) => {
                    if !self.down(self.timing.miss_reason(), at) {
                        return;
                    }
                }
                Some((State::Late, at)) => {
                    if self.s.state != State::Late {
                        self.enter(State::Late, at);
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    /// Inside a maintenance window that ends at `end`: a monitor whose deadline falls
    /// before the end gets a fresh one after it (and is no longer Late), instead of
    /// alerting the moment the window closes.
    fn maintain(&mut self, end: Timestamp, now: Timestamp) {
        if !matches!(self.s.state, State::New | State::Up | State::Late) {
            return;
        }
        if self.s.deadline.is_some_and(|d| d < end) {
            self.s.deadline = self.timing.deadline_after(end).or(self.s.deadline);
            if self.s.state == State::Late {
                let back = if self.s.last_ping_at.is_some() {
                    State::Up
                } else {
                    State::New
                };
                self.enter(back, now);
            }
        }
    }

    /// A run timed out: a Job's when the run in progress is a remembered Job's.
    fn timeout_reason(&self) -> DownReason {
        self.s
            .run_started_at
            .and_then(|r| jobs::running_since(&self.s.jobs, r))
            .map_or(DownReason::RunTimeout, |j| DownReason::JobTooLong {
                job: j.name.clone(),
            })
    }

    fn success(&mut self, at: Timestamp, rid: Option<&str>) {
        self.s.pings = self.s.pings.saturating_add(1);
        if self.timing.jobs.is_some_and(|j| j.require_ping) {
            jobs::remember_ping(self.s.recent_pings.vec_mut(), at, rid);
        }
        self.succeed(at);
    }

    /// A success, from a ping or a Job: recorded always, applied unless paused.
    fn succeed(&mut self, at: Timestamp) {
        if self.record_success(at) {
            self.finish_run(at);
            self.enter(State::Up, at);
        }
    }

    /// Keeps the latest success and the deadline it sets; false while paused, where it
    /// is only remembered for the resume.
    fn record_success(&mut self, at: Timestamp) -> bool {
        let last = self.s.last_ping_at.map_or(at, |p| p.max(at));
        self.s.last_ping_at = Some(last);
        if self.s.state == State::Paused {
            self.s.pinged_while_paused = true;
            return false;
        }
        self.s.deadline = self.timing.deadline_after(last);
        self.s.failures = 0;
        true
    }

    fn start(&mut self, at: Timestamp) {
        self.s.pings = self.s.pings.saturating_add(1);
        self.begin_run(at);
    }

    fn begin_run(&mut self, at: Timestamp) {
        match self.s.state {
            State::Paused => {}
            // A start proves nothing: the episode stays Down (and "failing") until the run
            // succeeds, but the run is tracked so its end reports a duration.
            State::Down | State::Started => {
                self.s.run_started_at = Some(self.s.run_started_at.map_or(at, |r| r.max(at)));
            }
            State::New | State::Up | State::Late => {
                self.s.run_started_at = Some(at);
                self.enter(State::Started, at);
            }
        }
    }

    fn fail(&mut self, at: Timestamp, exit_code: Option<u8>) {
        self.s.pings = self.s.pings.saturating_add(1);
        self.finish_run(at);
        self.fail_with(at, DownReason::Failed { exit_code });
    }

    /// A failure: recorded always, Down unless paused (where no run is tracked to end).
    fn fail_with(&mut self, at: Timestamp, reason: DownReason) {
        self.s.last_fail_at = Some(self.s.last_fail_at.map_or(at, |f| f.max(at)));
        if self.s.state != State::Paused {
            self.down(reason, at);
        }
    }

    /// Evidence from a Job: its start is a start, its end a success or a failure. An end
    /// that belongs to an older run than the one in progress (Jobs that overlap) is
    /// recorded, and a failure still counts, but a success does not end the newer run.
    fn job(&mut self, job: &JobSignal) {
        let novelty = jobs::remember(self.s.jobs.vec_mut(), job);
        if novelty == Novelty::Stale {
            return;
        }
        self.s.pings = self.s.pings.saturating_add(1);
        if novelty == Novelty::New {
            self.begin_run(job.started_at);
        }
        let newer_run = self.s.run_started_at.is_some_and(|r| r > job.started_at);
        match job.outcome {
            JobOutcome::Running => {}
            JobOutcome::Failed {
                at,
                reason,
                exit_code,
            } => {
                let reason = DownReason::JobFailed {
                    job: job.name.clone(),
                    reason,
                    exit_code,
                };
                self.end_job_run(job, newer_run);
                self.fail_with(at, reason);
            }
            JobOutcome::Succeeded(at) => {
                let require_ping = self.timing.jobs.is_some_and(|j| j.require_ping);
                if require_ping && !job.pinged(&self.s.recent_pings) {
                    self.end_job_run(job, newer_run);
                    let reason = DownReason::CompletedWithoutPing {
                        job: job.name.clone(),
                    };
                    self.fail_with(at, reason);
                } else if newer_run {
                    self.run_finished = job.duration();
                    self.record_success(at);
                } else {
                    self.end_job_run(job, false);
                    self.succeed(at);
                }
            }
        }
    }

    /// Reports the Job's own duration and, unless a newer run is in progress, ends the run.
    fn end_job_run(&mut self, job: &JobSignal, newer_run: bool) {
        self.run_finished = job.duration();
        if !newer_run {
            self.s.run_started_at = None;
        }
    }

    fn pause(&mut self, at: Timestamp) {
        if self.s.state != State::Paused {
            self.enter(State::Paused, at);
            self.s.pinged_while_paused = false;
            self.s.run_started_at = None;
            self.s.deadline = None;
            // Counting starts again after the pause.
            self.s.failures = 0;
        }
    }

    fn resume(&mut self, at: Timestamp) {
        if self.s.state != State::Paused {
            return;
        }
        match self.s.last_ping_at.filter(|_| self.s.pinged_while_paused) {
            Some(last) => {
                self.s.deadline = self.timing.deadline_after(last);
                // Nothing could be late while paused: whatever it is now, it became so now.
                match overdue(self.timing, self.s.deadline, at) {
                    Some((State::Down, _)) => {
                        self.down(self.timing.miss_reason(), at);
                    }
                    Some((to, _)) => self.enter(to, at),
                    None => self.enter(State::Up, at),
                }
            }
            None => {
                self.s.deadline = self.timing.schedule.and_then(|s| s.next_after(at));
                self.enter(State::New, at);
            }
        }
        self.s.pinged_while_paused = false;
    }

    fn retime(&mut self, now: Timestamp) {
        if self.s.state == State::Paused {
            return;
        }
        self.s.deadline = self.retimed_deadline(now);
        match self.s.state {
            // Up and Late are judged afresh, so a longer interval can make Late Up again,
            // and a monitor that never pinged goes back to waiting.
            State::Up | State::Late => match overdue(self.timing, self.s.deadline, now) {
                Some((State::Down, at)) => {
                    self.down(self.timing.miss_reason(), at);
                }
                Some((to, at)) => self.enter(to, at),
                None if self.s.last_ping_at.is_some() && self.s.deadline.is_some() => {
                    self.enter(State::Up, now)
                }
                None => self.enter(State::New, now),
            },
            State::New | State::Started => self.tick(now),
            // Down ends only with a success ping.
            State::Down | State::Paused => {}
        }
    }

    /// The deadline after a change of timing. On a schedule: the current deadline while it
    /// is still a scheduled time (only grace or run limits changed), else the next
    /// scheduled time from now, since a new schedule is not applied to the past. On an
    /// interval: from the last ping, where the deadline came from one.
    fn retimed_deadline(&self, now: Timestamp) -> Option<Timestamp> {
        match self.timing.schedule {
            Some(s) => match self.s.deadline {
                Some(d) if s.is_occurrence(d) => Some(d),
                _ => s.next_after(now),
            },
            None if self.s.state == State::New => None,
            None => self
                .s
                .deadline
                .and(self.s.last_ping_at)
                .and_then(|p| self.timing.deadline_after(p)),
        }
    }

    /// Derives the notifications from the final state and assembles the effects.
    fn finish(mut self, signal_at: Timestamp) -> (MonitorState, Vec<Effect>) {
        let changed = self.s.state != self.from;
        let at = if changed {
            self.s.since
        } else {
            self.s.since.max(signal_at)
        };
        let mut effects = Vec::new();
        if changed {
            effects.push(Effect::Transition {
                from: self.from,
                to: self.s.state,
                at,
            });
        }
        if let Some(duration) = self.run_finished {
            effects.push(Effect::RunFinished { duration });
        }
        match self.s.state {
            State::Down if !self.s.incident_open => {
                self.s.incident_open = true;
                self.s.last_alert_at = Some(at);
                effects.push(Effect::Alert {
                    reason: self.s.down_reason.clone().unwrap_or(DownReason::Missed),
                    at,
                });
            }
            State::Up if self.s.incident_open => {
                self.s.incident_open = false;
                effects.push(Effect::Recovery { at });
            }
            _ => {}
        }
        (self.s, effects)
    }
}

/// One step: the new state and the effects the engine must carry out, in the order
/// transition, run finished, alert or recovery.
pub fn apply(
    timing: &Timing<'_>,
    state: &MonitorState,
    signal: &Signal,
) -> (MonitorState, Vec<Effect>) {
    let mut step = Step {
        timing,
        from: state.state,
        s: state.clone(),
        run_finished: None,
    };
    match signal {
        Signal::Success(at) | Signal::Fail(at, Some(0)) => step.success(*at, None),
        Signal::SuccessFor(at, rid) => step.success(*at, Some(rid)),
        Signal::Start(at) => step.start(*at),
        Signal::Fail(at, exit_code) => step.fail(*at, *exit_code),
        Signal::Job(job) => step.job(job),
        Signal::Pause(at) => step.pause(*at),
        Signal::Resume(at) => step.resume(*at),
        Signal::Tick(now) => step.tick(*now),
        Signal::Retimed(now) => step.retime(*now),
    }
    step.finish(signal.at())
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
mod tests {
    use super::*;
    use crate::core::cron::Dialect;
    use Signal::{Fail, Pause, Resume, Retimed, Start, Success, SuccessFor, Tick};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    /// Interval one hour, grace five minutes: Late at +3600, Down at +3900; a run may take
    /// 300 s.
    const HOUR: Timing = Timing::every(
        SignedDuration::from_secs(3600),
        SignedDuration::from_secs(300),
    );

    /// Interval one minute, no grace: Down at +60; a run may take 60 s.
    const MINUTE: Timing = Timing::every(SignedDuration::from_secs(60), SignedDuration::ZERO);

    /// Runs `signals` from a New monitor created at t(0): the final state, all effects, and
    /// the effects of the last signal alone.
    fn run(timing: &Timing, signals: &[Signal]) -> (MonitorState, Vec<Effect>, Vec<Effect>) {
        let mut s = MonitorState::new(t(0));
        let mut all = Vec::new();
        let mut last = Vec::new();
        for sig in signals {
            let (n, e) = apply(timing, &s, sig);
            s = n;
            all.extend(e.iter().cloned());
            last = e;
        }
        (s, all, last)
    }

    fn count(e: &[Effect], pred: fn(&Effect) -> bool) -> usize {
        e.iter().filter(|e| pred(e)).count()
    }

    fn is_alert(e: &Effect) -> bool {
        matches!(e, Effect::Alert { .. })
    }

    fn is_recovery(e: &Effect) -> bool {
        matches!(e, Effect::Recovery { .. })
    }

    fn tr(from: State, to: State, at: i64) -> Effect {
        Effect::Transition {
            from,
            to,
            at: t(at),
        }
    }

    fn alert(reason: DownReason, at: i64) -> Effect {
        Effect::Alert { reason, at: t(at) }
    }

    fn recovery(at: i64) -> Effect {
        Effect::Recovery { at: t(at) }
    }

    fn ran(s: i64) -> Effect {
        Effect::RunFinished { duration: secs(s) }
    }

    fn failed(code: Option<u8>) -> DownReason {
        DownReason::Failed { exit_code: code }
    }

    struct Case {
        name: &'static str,
        timing: Timing<'static>,
        signals: Vec<Signal>,
        state: State,
        /// Exactly the effects of the last signal.
        last: Vec<Effect>,
        /// Alerts and recoveries over the whole sequence.
        alerts: usize,
        recoveries: usize,
    }

    fn case(
        name: &'static str,
        timing: Timing<'static>,
        signals: Vec<Signal>,
        state: State,
        last: Vec<Effect>,
        (alerts, recoveries): (usize, usize),
    ) -> Case {
        Case {
            name,
            timing,
            signals,
            state,
            last,
            alerts,
            recoveries,
        }
    }

    #[test]
    fn transition_table() {
        use State::*;
        let cases = vec![
            // New
            case(
                "new ignores ticks",
                HOUR,
                vec![Tick(t(1_000_000))],
                New,
                vec![],
                (0, 0),
            ),
            case(
                "new to up on ping",
                HOUR,
                vec![Success(t(10))],
                Up,
                vec![tr(New, Up, 10)],
                (0, 0),
            ),
            // Up, Late, Down by time
            case(
                "up before deadline",
                HOUR,
                vec![Success(t(0)), Tick(t(3599))],
                Up,
                vec![],
                (0, 0),
            ),
            case(
                "up to late at deadline",
                HOUR,
                vec![Success(t(0)), Tick(t(3600))],
                Late,
                vec![tr(Up, Late, 3600)],
                (0, 0),
            ),
            case(
                "late within grace",
                HOUR,
                vec![Success(t(0)), Tick(t(3600)), Tick(t(3899))],
                Late,
                vec![],
                (0, 0),
            ),
            case(
                "late to down after grace alerts",
                HOUR,
                vec![Success(t(0)), Tick(t(3600)), Tick(t(3900))],
                Down,
                vec![tr(Late, Down, 3900), alert(DownReason::Missed, 3900)],
                (1, 0),
            ),
            case(
                "tick far after the deadline skips late, at the logical time",
                HOUR,
                vec![Success(t(0)), Tick(t(9000))],
                Down,
                vec![tr(Up, Down, 3900), alert(DownReason::Missed, 3900)],
                (1, 0),
            ),
            case(
                "grace zero: up to down at the deadline",
                MINUTE,
                vec![Success(t(0)), Tick(t(60))],
                Down,
                vec![tr(Up, Down, 60), alert(DownReason::Missed, 60)],
                (1, 0),
            ),
            case(
                "grace zero: up just before the deadline",
                MINUTE,
                vec![Success(t(0)), Tick(t(59))],
                Up,
                vec![],
                (0, 0),
            ),
            case(
                "the same tick twice alerts once",
                HOUR,
                vec![Success(t(0)), Tick(t(3900)), Tick(t(3900))],
                Down,
                vec![],
                (1, 0),
            ),
            case(
                "later ticks while down alert once",
                HOUR,
                vec![
                    Success(t(0)),
                    Tick(t(3900)),
                    Tick(t(50_000)),
                    Tick(t(900_000)),
                ],
                Down,
                vec![],
                (1, 0),
            ),
            case(
                "an older tick changes nothing",
                HOUR,
                vec![Success(t(0)), Tick(t(3700)), Tick(t(100))],
                Late,
                vec![],
                (0, 0),
            ),
            // Pings
            case(
                "down to up recovers once",
                HOUR,
                vec![Success(t(0)), Tick(t(3900)), Success(t(4000))],
                Up,
                vec![tr(Down, Up, 4000), recovery(4000)],
                (1, 1),
            ),
            case(
                "a second ping after recovery is silent",
                HOUR,
                vec![
                    Success(t(0)),
                    Tick(t(3900)),
                    Success(t(4000)),
                    Success(t(4001)),
                ],
                Up,
                vec![],
                (1, 1),
            ),
            case(
                "late to up only transitions",
                HOUR,
                vec![Success(t(0)), Tick(t(3700)), Success(t(3701))],
                Up,
                vec![tr(Late, Up, 3701)],
                (0, 0),
            ),
            case(
                "up to up is silent",
                HOUR,
                vec![Success(t(0)), Success(t(10))],
                Up,
                vec![],
                (0, 0),
            ),
            case(
                "a new episode alerts again",
                HOUR,
                vec![
                    Success(t(0)),
                    Tick(t(3900)),
                    Success(t(4000)),
                    Tick(t(7900)),
                ],
                Down,
                vec![tr(Up, Down, 7900), alert(DownReason::Missed, 7900)],
                (2, 1),
            ),
            // Failures and exit codes
            case(
                "fail from new alerts",
                HOUR,
                vec![Fail(t(5), Some(3))],
                Down,
                vec![tr(New, Down, 5), alert(failed(Some(3)), 5)],
                (1, 0),
            ),
            case(
                "fail from up alerts",
                HOUR,
                vec![Success(t(0)), Fail(t(5), None)],
                Down,
                vec![tr(Up, Down, 5), alert(failed(None), 5)],
                (1, 0),
            ),
            case(
                "fail from late alerts",
                HOUR,
                vec![Success(t(0)), Tick(t(3700)), Fail(t(3701), Some(1))],
                Down,
                vec![tr(Late, Down, 3701), alert(failed(Some(1)), 3701)],
                (1, 0),
            ),
            case(
                "fail while down after a miss does not alert again",
                HOUR,
                vec![Success(t(0)), Tick(t(3900)), Fail(t(4000), Some(2))],
                Down,
                vec![],
                (1, 0),
            ),
            case(
                "fail while failed does not alert again",
                HOUR,
                vec![Fail(t(5), Some(1)), Fail(t(6), Some(2)), Tick(t(99_999))],
                Down,
                vec![],
                (1, 0),
            ),
            case(
                "exit code 1 is a failure",
                HOUR,
                vec![Success(t(0)), Signal::from_exit_code(t(5), 1)],
                Down,
                vec![tr(Up, Down, 5), alert(failed(Some(1)), 5)],
                (1, 0),
            ),
            case(
                "exit code 255 is a failure",
                HOUR,
                vec![Success(t(0)), Signal::from_exit_code(t(5), 255)],
                Down,
                vec![tr(Up, Down, 5), alert(failed(Some(255)), 5)],
                (1, 0),
            ),
            case(
                "exit code 0 is a success",
                HOUR,
                vec![
                    Success(t(0)),
                    Tick(t(3700)),
                    Signal::from_exit_code(t(3701), 0),
                ],
                Up,
                vec![tr(Late, Up, 3701)],
                (0, 0),
            ),
            case(
                "a failure carrying exit code 0 is a success",
                HOUR,
                vec![Fail(t(3), Some(0))],
                Up,
                vec![tr(New, Up, 3)],
                (0, 0),
            ),
            case(
                "a ping after a failure recovers",
                HOUR,
                vec![Fail(t(5), Some(255)), Success(t(6))],
                Up,
                vec![tr(Down, Up, 6), recovery(6)],
                (1, 1),
            ),
            // Runs
            case(
                "start from up",
                HOUR,
                vec![Success(t(0)), Start(t(100))],
                Started,
                vec![tr(Up, Started, 100)],
                (0, 0),
            ),
            case(
                "start from late",
                HOUR,
                vec![Success(t(0)), Tick(t(3700)), Start(t(3710))],
                Started,
                vec![tr(Late, Started, 3710)],
                (0, 0),
            ),
            case(
                "a success ends the run with its duration",
                HOUR,
                vec![Success(t(0)), Start(t(100)), Success(t(160))],
                Up,
                vec![tr(Started, Up, 160), ran(60)],
                (0, 0),
            ),
            case(
                "a run may take the grace",
                HOUR,
                vec![Success(t(0)), Start(t(100)), Tick(t(399))],
                Started,
                vec![],
                (0, 0),
            ),
            case(
                "a run that takes longer than grace is down",
                HOUR,
                vec![Success(t(0)), Start(t(100)), Tick(t(400))],
                Down,
                vec![tr(Started, Down, 400), alert(DownReason::RunTimeout, 400)],
                (1, 0),
            ),
            case(
                "the regular deadline does not apply while started",
                HOUR,
                vec![Success(t(0)), Start(t(3500)), Tick(t(3799))],
                Started,
                vec![],
                (0, 0),
            ),
            case(
                "grace zero: a run may take the interval",
                MINUTE,
                vec![Success(t(0)), Start(t(10)), Tick(t(69))],
                Started,
                vec![],
                (0, 0),
            ),
            case(
                "grace zero: a run longer than the interval is down",
                MINUTE,
                vec![Success(t(0)), Start(t(10)), Tick(t(70))],
                Down,
                vec![tr(Started, Down, 70), alert(DownReason::RunTimeout, 70)],
                (1, 0),
            ),
            case(
                "start from new, then timeout",
                HOUR,
                vec![Start(t(1)), Tick(t(301))],
                Down,
                vec![tr(Started, Down, 301), alert(DownReason::RunTimeout, 301)],
                (1, 0),
            ),
            case(
                "a second start restarts the run",
                HOUR,
                vec![Success(t(0)), Start(t(100)), Start(t(300)), Tick(t(599))],
                Started,
                vec![],
                (0, 0),
            ),
            case(
                "a failure ends the run with its duration",
                HOUR,
                vec![Success(t(0)), Start(t(100)), Fail(t(130), Some(2))],
                Down,
                vec![tr(Started, Down, 130), ran(30), alert(failed(Some(2)), 130)],
                (1, 0),
            ),
            case(
                "start while down stays down",
                HOUR,
                vec![Fail(t(1), None), Start(t(2)), Tick(t(99_999))],
                Down,
                vec![],
                (1, 0),
            ),
            case(
                "start while down, then success recovers with the duration",
                HOUR,
                vec![Fail(t(1), None), Start(t(2)), Success(t(5))],
                Up,
                vec![tr(Down, Up, 5), ran(3), recovery(5)],
                (1, 1),
            ),
            // Pause and resume
            case(
                "pause from up",
                HOUR,
                vec![Success(t(0)), Pause(t(1))],
                Paused,
                vec![tr(Up, Paused, 1)],
                (0, 0),
            ),
            case(
                "paused ignores ticks",
                HOUR,
                vec![Success(t(0)), Pause(t(1)), Tick(t(99_999))],
                Paused,
                vec![],
                (0, 0),
            ),
            case(
                "paused late monitor never goes down",
                HOUR,
                vec![
                    Success(t(0)),
                    Tick(t(3700)),
                    Pause(t(3701)),
                    Tick(t(99_999)),
                ],
                Paused,
                vec![],
                (0, 0),
            ),
            case(
                "paused ignores failures and starts",
                HOUR,
                vec![
                    Pause(t(1)),
                    Fail(t(2), Some(1)),
                    Start(t(3)),
                    Tick(t(99_999)),
                ],
                Paused,
                vec![],
                (0, 0),
            ),
            case(
                "a ping while paused stays paused",
                HOUR,
                vec![Pause(t(1)), Success(t(2))],
                Paused,
                vec![],
                (0, 0),
            ),
            case(
                "pausing twice is a no-op",
                HOUR,
                vec![Pause(t(1)), Pause(t(2))],
                Paused,
                vec![],
                (0, 0),
            ),
            case(
                "resume when not paused is a no-op",
                HOUR,
                vec![Success(t(0)), Resume(t(5))],
                Up,
                vec![],
                (0, 0),
            ),
            case(
                "resume with no ping while paused is new",
                HOUR,
                vec![Success(t(0)), Pause(t(1)), Resume(t(50_000))],
                New,
                vec![tr(Paused, New, 50_000)],
                (0, 0),
            ),
            case(
                "resume after a recent paused ping is up",
                HOUR,
                vec![Pause(t(1)), Success(t(100)), Resume(t(200))],
                Up,
                vec![tr(Paused, Up, 200)],
                (0, 0),
            ),
            case(
                "resume after a paused ping past its deadline is late",
                HOUR,
                vec![Pause(t(1)), Success(t(100)), Resume(t(3750))],
                Late,
                vec![tr(Paused, Late, 3750)],
                (0, 0),
            ),
            case(
                "resume after an old paused ping is down and alerts",
                HOUR,
                vec![Pause(t(1)), Success(t(100)), Resume(t(100_000))],
                Down,
                vec![
                    tr(Paused, Down, 100_000),
                    alert(DownReason::Missed, 100_000),
                ],
                (1, 0),
            ),
            case(
                "resume into down with the incident open does not alert again",
                HOUR,
                vec![
                    Fail(t(1), None),
                    Pause(t(2)),
                    Success(t(3)),
                    Resume(t(100_000)),
                ],
                Down,
                vec![tr(Paused, Down, 100_000)],
                (1, 0),
            ),
            case(
                "an open incident survives pause and resume to new",
                HOUR,
                vec![Fail(t(1), None), Pause(t(2)), Resume(t(3))],
                New,
                vec![tr(Paused, New, 3)],
                (1, 0),
            ),
            case(
                "the ping after pause and resume sends the recovery",
                HOUR,
                vec![Fail(t(1), None), Pause(t(2)), Resume(t(3)), Success(t(4))],
                Up,
                vec![tr(New, Up, 4), recovery(4)],
                (1, 1),
            ),
            case(
                "resume to up with the incident open sends the recovery",
                HOUR,
                vec![Fail(t(1), None), Pause(t(2)), Success(t(3)), Resume(t(4))],
                Up,
                vec![tr(Paused, Up, 4), recovery(4)],
                (1, 1),
            ),
            case(
                "resume to late keeps the incident open until a ping",
                HOUR,
                vec![
                    Fail(t(1), None),
                    Pause(t(2)),
                    Success(t(3)),
                    Resume(t(3700)),
                    Success(t(3800)),
                ],
                Up,
                vec![tr(Late, Up, 3800), recovery(3800)],
                (1, 1),
            ),
            case(
                "resume to late then down does not alert again",
                HOUR,
                vec![
                    Fail(t(1), None),
                    Pause(t(2)),
                    Success(t(3)),
                    Resume(t(3700)),
                    Tick(t(3903)),
                ],
                Down,
                vec![tr(Late, Down, 3903)],
                (1, 0),
            ),
            case(
                "a fail from new after an incident-keeping resume does not alert again",
                HOUR,
                vec![
                    Fail(t(1), None),
                    Pause(t(2)),
                    Resume(t(3)),
                    Fail(t(4), Some(9)),
                ],
                Down,
                vec![tr(New, Down, 4)],
                (1, 0),
            ),
            case(
                "paused while started drops the run",
                HOUR,
                vec![
                    Success(t(0)),
                    Start(t(1)),
                    Pause(t(2)),
                    Success(t(3)),
                    Resume(t(4)),
                    Tick(t(400)),
                ],
                Up,
                vec![],
                (0, 0),
            ),
        ];
        for c in &cases {
            let (s, all, last) = run(&c.timing, &c.signals);
            assert_eq!(s.state, c.state, "{}: {all:?}", c.name);
            assert_eq!(last, c.last, "{}: effects of the last signal", c.name);
            assert_eq!(
                count(&all, is_alert),
                c.alerts,
                "{}: alerts {all:?}",
                c.name
            );
            assert_eq!(
                count(&all, is_recovery),
                c.recoveries,
                "{}: recoveries {all:?}",
                c.name
            );
            assert_eq!(
                s.down_reason.is_some(),
                s.state == State::Down,
                "{}",
                c.name
            );
        }
        assert!(cases.len() >= 55, "{}", cases.len());
    }

    #[test]
    fn deadlines_follow_the_latest_ping() {
        let (s, _, _) = run(&HOUR, &[Success(t(0))]);
        assert_eq!(s.deadline, Some(t(3600)));
        assert_eq!(s.next_expected_at(), Some(t(3600)));
        assert_eq!(s.since, t(0));
        let (s, _, _) = run(&HOUR, &[Success(t(0)), Success(t(1000))]);
        assert_eq!(s.deadline, Some(t(4600)));
        assert_eq!(s.since, t(0), "Up since the first ping");
        // A started run keeps the regular deadline for the API and for misses.
        let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(10))]);
        assert_eq!(s.next_expected_at(), Some(t(3600)));
        assert_eq!(s.run_started_at, Some(t(10)));
    }

    #[test]
    fn out_of_order_signals_never_move_time_backwards() {
        // An older ping is recorded but does not pull the deadline back.
        let (s, _, last) = run(&HOUR, &[Success(t(100)), Success(t(50))]);
        assert_eq!(s.last_ping_at, Some(t(100)));
        assert_eq!(s.deadline, Some(t(3700)));
        assert_eq!(last, vec![]);
        // An old ping delivered after the monitor went Down recovers it, but not in the past.
        let (s, _, last) = run(&HOUR, &[Success(t(0)), Tick(t(3900)), Success(t(3000))]);
        assert_eq!(s.state, State::Up);
        assert_eq!(s.since, t(3900));
        assert_eq!(last, vec![tr(State::Down, State::Up, 3900), recovery(3900)]);
        assert_eq!(s.deadline, Some(t(6600)));
        // A run never lasts a negative time; an older start does not restart the run.
        let (_, _, last) = run(&HOUR, &[Success(t(0)), Start(t(100)), Success(t(90))]);
        assert_eq!(last, vec![tr(State::Started, State::Up, 100), ran(0)]);
        let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(100)), Start(t(50))]);
        assert_eq!(s.run_started_at, Some(t(100)));
        // An older failure is recorded without moving last_fail_at back.
        let (s, _, _) = run(&HOUR, &[Fail(t(10), None), Fail(t(5), None)]);
        assert_eq!(s.last_fail_at, Some(t(10)));
        // Transitions from a stale signal are clamped to `since`.
        let (s, _, last) = run(&HOUR, &[Success(t(100)), Fail(t(50), Some(1))]);
        assert_eq!(s.since, t(100));
        assert_eq!(
            last,
            vec![tr(State::Up, State::Down, 100), alert(failed(Some(1)), 100)]
        );
    }

    #[test]
    fn wakeups_are_exactly_when_a_tick_changes_something() {
        let (s, _, _) = run(&HOUR, &[Success(t(0))]);
        assert_eq!(next_wakeup(&HOUR, &s), Some(t(3600)));
        let (s, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3600))]);
        assert_eq!(next_wakeup(&HOUR, &s), Some(t(3900)));
        let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(10))]);
        assert_eq!(next_wakeup(&HOUR, &s), Some(t(310)));
        let (s, _, _) = run(&MINUTE, &[Success(t(0)), Start(t(10))]);
        assert_eq!(next_wakeup(&MINUTE, &s), Some(t(70)));
        let (s, _, _) = run(&MINUTE, &[Success(t(0))]);
        assert_eq!(next_wakeup(&MINUTE, &s), Some(t(60)));
        for signals in [
            vec![],
            vec![Fail(t(1), None)],
            vec![Pause(t(1))],
            vec![Success(t(0)), Pause(t(1))],
            vec![Success(t(0)), Tick(t(3900))],
        ] {
            let (s, _, _) = run(&HOUR, &signals);
            assert_eq!(next_wakeup(&HOUR, &s), None, "{:?}", s.state);
        }
        let (s, _, _) = run(&HOUR, &[Success(t(0)), Pause(t(1)), Success(t(2))]);
        assert_eq!(s.next_expected_at(), None, "paused shows no deadline");
        assert_eq!(s.last_ping_at, Some(t(2)), "paused records pings");
        assert!(s.pinged_while_paused);
    }

    /// A small deterministic generator, so the invariants below see thousands of sequences
    /// without a dependency.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// A random Job signal: one of a few names, started a little before `at`, and
    /// running, succeeded or failed.
    fn random_job(rng: &mut Lcg, at: Timestamp) -> Signal {
        let n = rng.next(4);
        let started_at = at
            .checked_sub(secs(i64::try_from(rng.next(120)).unwrap()))
            .unwrap();
        let outcome = match rng.next(3) {
            0 => JobOutcome::Running,
            1 => JobOutcome::Succeeded(at),
            _ => JobOutcome::Failed {
                at,
                reason: JobFailure::BackoffLimitExceeded,
                exit_code: Some(3),
            },
        };
        Signal::Job(JobSignal {
            name: format!("job-{n}"),
            started_at,
            outcome,
            run_ids: vec![format!("job-{n}")],
        })
    }

    #[test]
    fn invariants_hold_for_random_sequences() {
        let minutely = Schedule::parse("* * * * *", None).unwrap();
        let five = Schedule::parse("*/5 * * * *", Some("Europe/Amsterdam")).unwrap();
        let jobs = Some(JobRules { require_ping: true });
        // A window every 20 minutes for 5 minutes, from t(0) on.
        let windows = [MaintenanceWindow {
            schedule: "*/20 * * * *".into(),
            duration: crate::core::duration::SpecDuration::from_secs(300),
            time_zone: None,
        }];
        let timings = [
            Timing {
                failure_threshold: 3,
                ..Timing::from_secs(60, 10)
            },
            Timing {
                failure_threshold: 2,
                jobs,
                ..Timing::from_secs(60, 10).with_schedule(Some(&minutely))
            },
            Timing {
                maintenance: &windows,
                ..Timing::from_secs(600, 60)
            },
            Timing {
                maintenance: &windows,
                failure_threshold: 2,
                ..Timing::from_secs(300, 30).with_schedule(Some(&five))
            },
            HOUR,
            MINUTE,
            Timing::from_secs(10, 5),
            Timing::from_secs(60, 10).with_schedule(Some(&minutely)),
            Timing {
                jobs,
                ..Timing::from_secs(300, 0).with_schedule(Some(&five))
            },
            Timing {
                jobs: Some(JobRules::default()),
                max_duration: Some(secs(30)),
                ..Timing::from_secs(60, 20).with_schedule(Some(&minutely))
            },
            Timing {
                jobs,
                ..Timing::from_secs(120, 30)
            },
        ];
        let mut rng = Lcg(42);
        for round in 0..4200 {
            let timing = timings[round % timings.len()];
            let mut s = MonitorState::created(&timing, t(0), false);
            let mut now = 0i64;
            let mut alerts = 0usize;
            let mut recoveries = 0usize;
            for _ in 0..40 {
                // Mostly forward in time, sometimes a stale timestamp.
                now += i64::try_from(rng.next(400)).unwrap();
                let at = t(now - i64::try_from(rng.next(4) * rng.next(30)).unwrap());
                let sig = match rng.next(11) {
                    0 => Success(at),
                    1 => Start(at),
                    2 => Fail(at, Some(u8::try_from(rng.next(256)).unwrap())),
                    3 => Fail(at, None),
                    4 => Pause(at),
                    5 => Resume(at),
                    6 => Retimed(at),
                    7 => SuccessFor(at, format!("job-{}", rng.next(4))),
                    8 => random_job(&mut rng, at),
                    _ => Tick(t(now)),
                };
                let before = s.clone();
                let (next, effects) = apply(&timing, &s, &sig);
                let ctx = format!("{sig:?} on {before:?} gave {effects:?}");
                // One transition at most, at the new `since`, which never decreases.
                let transitions: Vec<_> = effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::Transition { from, to, at } => Some((*from, *to, *at)),
                        _ => None,
                    })
                    .collect();
                assert!(next.since >= before.since, "{ctx}");
                match transitions.as_slice() {
                    [] => assert_eq!(next.state, before.state, "{ctx}"),
                    [(from, to, at)] => {
                        assert_eq!(
                            (*from, *to, *at),
                            (before.state, next.state, next.since),
                            "{ctx}"
                        );
                        assert_ne!(from, to, "{ctx}");
                    }
                    _ => panic!("several transitions: {ctx}"),
                }
                // Alerts only open an episode, recoveries only close one.
                let a = count(&effects, is_alert);
                let r = count(&effects, is_recovery);
                assert!(a + r <= 1, "{ctx}");
                if a == 1 {
                    assert!(
                        !before.incident_open && next.incident_open && next.state == State::Down,
                        "{ctx}"
                    );
                }
                if r == 1 {
                    assert!(
                        before.incident_open && !next.incident_open && next.state == State::Up,
                        "{ctx}"
                    );
                }
                alerts += a;
                recoveries += r;
                assert!(alerts == recoveries || alerts == recoveries + 1, "{ctx}");
                assert_eq!(next.incident_open, alerts > recoveries, "{ctx}");
                // Shape of the state.
                assert!(!(next.incident_open && next.state == State::Up), "{ctx}");
                assert_eq!(
                    next.down_reason.is_some(),
                    next.state == State::Down,
                    "{ctx}"
                );
                assert!(
                    next.run_started_at.is_none()
                        || matches!(next.state, State::Started | State::Down),
                    "{ctx}"
                );
                if next.state == State::Started {
                    assert!(next.run_started_at.is_some(), "{ctx}");
                }
                if next.state == State::Paused {
                    assert_eq!(next.deadline, None, "{ctx}");
                    assert_eq!(next.run_started_at, None, "{ctx}");
                }
                // Absorbed failures and maintenance move deadlines past the last ping's.
                let moved_on = timing.failure_threshold > 1 || !timing.maintenance.is_empty();
                match timing.schedule {
                    None => {
                        if next.state == State::New {
                            assert_eq!(next.deadline, None, "{ctx}");
                        }
                        if let (Some(d), Some(p)) = (next.deadline, next.last_ping_at) {
                            let from_ping = p.checked_add(timing.interval).unwrap();
                            if moved_on {
                                assert!(d >= from_ping, "{ctx}");
                            } else {
                                assert_eq!(d, from_ping, "{ctx}");
                            }
                        }
                    }
                    Some(schedule) => {
                        if next.state != State::Paused {
                            let d = next.deadline.expect(&ctx);
                            assert!(schedule.is_occurrence(d), "{ctx}");
                        }
                        if let (State::Up, Some(p)) = (next.state, next.last_ping_at) {
                            if moved_on {
                                assert!(next.deadline >= schedule.next_after(p), "{ctx}");
                            } else {
                                assert_eq!(next.deadline, schedule.next_after(p), "{ctx}");
                            }
                        }
                    }
                }
                // The same signal again: a Job is counted once.
                if matches!(sig, Signal::Job(_)) {
                    let (again, e) = apply(&timing, &next, &sig);
                    assert_eq!((&again, e.as_slice()), (&next, &[][..]), "{ctx}");
                }
                // Failures below the threshold are counted, never more than it.
                assert!(
                    next.failures <= timing.failure_threshold.max(1) || next.state == State::Down,
                    "{ctx}"
                );
                if next.failures > 0 && next.state != State::Down {
                    assert!(next.failures < timing.failure_threshold, "{ctx}");
                }
                // Inside a maintenance window a tick may move a deadline at any time (it
                // has no wakeup of its own), so the wakeup rules below are for the rest;
                // ticks stay idempotent.
                if !timing.maintenance.is_empty() {
                    let (once, _) = apply(&timing, &next, &Tick(t(now)));
                    let (twice, e) = apply(&timing, &once, &Tick(t(now)));
                    assert_eq!((&twice, e.as_slice()), (&once, &[][..]), "{ctx}");
                    s = next;
                    continue;
                }
                // Ticks: idempotent, and they change something exactly from next_wakeup on.
                let (again, e) = apply(&timing, &next, &Tick(next.since));
                if next_wakeup(&timing, &next).is_none_or(|w| w > next.since) {
                    assert_eq!((&again, e.as_slice()), (&next, &[][..]), "{ctx}");
                }
                if let Some(w) = next_wakeup(&timing, &next) {
                    let just_before = w.checked_sub(SignedDuration::from_nanos(1)).unwrap();
                    if just_before >= next.since {
                        let (same, e) = apply(&timing, &next, &Tick(just_before));
                        assert_eq!((&same, e.as_slice()), (&next, &[][..]), "{ctx}");
                    }
                    let (moved, e) = apply(&timing, &next, &Tick(w));
                    assert_ne!(
                        moved.state, next.state,
                        "wakeup at {w} changed nothing: {ctx}"
                    );
                    let (twice, e2) = apply(&timing, &moved, &Tick(w));
                    assert_eq!(
                        (&twice, e2.as_slice()),
                        (&moved, &[][..]),
                        "{ctx} then {e:?}"
                    );
                } else {
                    let (same, e) = apply(&timing, &next, &Tick(t(now + 10_000_000)));
                    assert_eq!(
                        (&same, e.as_slice()),
                        (&next, &[][..]),
                        "no wakeup yet a tick moved: {ctx}"
                    );
                }
                s = next;
            }
        }
    }

    #[test]
    fn consecutive_misses_count_whole_intervals_while_down() {
        let (down, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3900))]);
        for (now, want) in [
            (3900, 0),
            (7199, 0),
            (7200, 1),
            (10_799, 1),
            (10_800, 2),
            (3600 + 5 * 3600 + 1, 5),
        ] {
            assert_eq!(consecutive_misses(&HOUR, &down, t(now)), want, "at {now}");
        }
        let (up, _, _) = run(&HOUR, &[Success(t(0))]);
        assert_eq!(
            consecutive_misses(&HOUR, &up, t(100_000)),
            0,
            "only while Down"
        );
        let (late, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3700))]);
        assert_eq!(
            consecutive_misses(&HOUR, &late, t(100_000)),
            0,
            "only while Down"
        );
        let (paused, _, _) = run(&HOUR, &[Success(t(0)), Pause(t(1))]);
        assert_eq!(consecutive_misses(&HOUR, &paused, t(100_000)), 0);
        let (failed_new, _, _) = run(&HOUR, &[Fail(t(1), None)]);
        assert_eq!(
            consecutive_misses(&HOUR, &failed_new, t(100_000)),
            0,
            "no deadline"
        );
        // Down by failure before the deadline: 0 until whole intervals pass after it.
        let (failed, _, _) = run(&HOUR, &[Success(t(0)), Fail(t(10), Some(1))]);
        for (now, want) in [
            (-7200, 0),
            (0, 0),
            (100, 0),
            (3600, 0),
            (7199, 0),
            (7200, 1),
            (10_800, 2),
        ] {
            assert_eq!(
                consecutive_misses(&HOUR, &failed, t(now)),
                want,
                "failed, at {now}"
            );
        }
        // Run timeouts count from the regular deadline too.
        let (timed_out, _, _) = run(&HOUR, &[Success(t(0)), Start(t(10)), Tick(t(310))]);
        assert_eq!(consecutive_misses(&HOUR, &timed_out, t(3600 * 4)), 3);
        // Sub-second precision: interval 1.5 s, 3 s past the deadline is 2 misses.
        let fast = Timing::every(SignedDuration::from_millis(1500), SignedDuration::ZERO);
        let (s, _, _) = run(&fast, &[Success(t(0)), Tick(t(2))]);
        let deadline = s.deadline.unwrap();
        assert_eq!(
            consecutive_misses(&fast, &s, deadline.checked_add(secs(3)).unwrap()),
            2
        );
        // A nonsense interval never divides by zero.
        let zero = Timing::every(SignedDuration::ZERO, SignedDuration::ZERO);
        assert_eq!(consecutive_misses(&zero, &down, t(100_000)), 0);
    }

    #[test]
    fn retiming_recomputes_the_deadline_and_re_evaluates() {
        use State::*;
        let (late, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3700))]);
        assert_eq!(late.state, Late);
        // Longer interval: Late becomes Up now, the deadline moves.
        let longer = Timing::from_secs(7200, 300);
        let (s, e) = apply(&longer, &late, &Retimed(t(3701)));
        assert_eq!(
            (s.state, s.deadline, e),
            (Up, Some(t(7200)), vec![tr(Late, Up, 3701)])
        );
        // Longer grace only: stays Late.
        let (s, e) = apply(&Timing::from_secs(3600, 1000), &late, &Retimed(t(3701)));
        assert_eq!((s.state, e), (Late, vec![]));
        // Shorter interval: straight to Down at the logical time, with the alert.
        let shorter = Timing::from_secs(60, 0);
        let (s, e) = apply(&shorter, &late, &Retimed(t(3702)));
        assert_eq!(s.state, Down);
        assert_eq!(s.deadline, Some(t(60)));
        assert_eq!(
            e,
            vec![tr(Late, Down, 3600), alert(DownReason::Missed, 3600)],
            "since never decreases"
        );
        // Up to Late by a shorter interval.
        let (up, _, _) = run(&HOUR, &[Success(t(0))]);
        let (s, e) = apply(&Timing::from_secs(100, 1000), &up, &Retimed(t(500)));
        assert_eq!((s.state, e), (Late, vec![tr(Up, Late, 100)]));
        // Down stays Down (only a ping ends an episode), with the deadline recomputed.
        let (down, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3900))]);
        let (s, e) = apply(&Timing::from_secs(100_000, 0), &down, &Retimed(t(4000)));
        assert_eq!((s.state, s.deadline, e), (Down, Some(t(100_000)), vec![]));
        assert_eq!(
            consecutive_misses(&Timing::from_secs(100_000, 0), &s, t(4000)),
            0
        );
        // Started: a shorter grace can time the run out.
        let (started, _, _) = run(&HOUR, &[Success(t(0)), Start(t(100))]);
        let (s, e) = apply(&Timing::from_secs(3600, 50), &started, &Retimed(t(200)));
        assert_eq!(s.state, Down);
        assert_eq!(
            e,
            vec![tr(Started, Down, 150), alert(DownReason::RunTimeout, 150)]
        );
        // New and Paused have no deadline to move.
        let new = MonitorState::new(t(0));
        assert_eq!(
            apply(&shorter, &new, &Retimed(t(99_999))),
            (new.clone(), vec![])
        );
        let (paused, _, _) = run(&HOUR, &[Success(t(0)), Pause(t(1))]);
        assert_eq!(
            apply(&shorter, &paused, &Retimed(t(99_999))),
            (paused.clone(), vec![])
        );
        // Resuming uses the timing in force at resume time.
        let (paused_pinged, _, _) = run(&HOUR, &[Pause(t(1)), Success(t(2))]);
        let (s, _) = apply(&shorter, &paused_pinged, &Resume(t(100)));
        assert_eq!(s.state, Down);
    }

    #[test]
    fn an_episode_keeps_the_reason_it_went_down_for() {
        let (s, _, _) = run(
            &HOUR,
            &[Success(t(0)), Tick(t(3900)), Fail(t(4000), Some(2))],
        );
        assert_eq!(s.down_reason, Some(DownReason::Missed));
        assert_eq!(s.since, t(3900));
        assert_eq!(s.last_fail_at, Some(t(4000)));
        let (s, _, _) = run(&HOUR, &[Fail(t(1), Some(3)), Start(t(2)), Fail(t(3), None)]);
        assert_eq!(s.down_reason, Some(failed(Some(3))));
        let (s, _, _) = run(&HOUR, &[Fail(t(1), None), Pause(t(2)), Resume(t(3))]);
        assert_eq!(s.down_reason, None, "only Down has a reason");
        assert!(s.incident_open);
    }

    #[test]
    fn records_written_by_the_previous_state_machine_step_sanely() {
        // It kept the deadline while Paused: resuming to New must drop it.
        let paused = MonitorState {
            deadline: Some(t(3600)),
            last_ping_at: Some(t(0)),
            ..MonitorState::new_paused(t(10))
        };
        let (s, e) = apply(&HOUR, &paused, &Resume(t(20)));
        assert_eq!(
            (s.state, s.deadline, e),
            (State::New, None, vec![tr(State::Paused, State::New, 20)])
        );
        assert_eq!(next_wakeup(&HOUR, &s), None);
        // It could leave Up with an incident open: the next ping sends the recovery.
        let up = MonitorState {
            state: State::Up,
            deadline: Some(t(3600)),
            last_ping_at: Some(t(0)),
            incident_open: true,
            ..MonitorState::new(t(0))
        };
        let (s, e) = apply(&HOUR, &up, &Success(t(100)));
        assert_eq!(e, vec![recovery(100)]);
        assert!(!s.incident_open);
    }

    #[test]
    fn counts_pings_and_alert_times() {
        let (s, _, _) = run(
            &HOUR,
            &[
                Success(t(0)),
                Start(t(1)),
                Fail(t(2), Some(4)),
                Pause(t(3)),
                Success(t(4)),
                Tick(t(5)),
            ],
        );
        assert_eq!(
            s.pings, 4,
            "success, start, fail and the paused ping; not pause or tick"
        );
        assert_eq!(s.last_alert_at, Some(t(2)));
        assert!(s.incident_open);
    }

    #[test]
    fn tickstem_status_mapping() {
        assert_eq!(State::Paused.tickstem_status(), "paused");
        assert_eq!(State::Down.tickstem_status(), "failing");
        for s in [State::New, State::Up, State::Started, State::Late] {
            assert_eq!(s.tickstem_status(), "active");
        }
        for s in State::ALL {
            assert_eq!(s.to_string(), s.as_str());
        }
    }

    #[test]
    fn timing_validation() {
        assert_eq!(Timing::new(secs(60), secs(0)), Ok(MINUTE));
        assert_eq!(
            Timing::new(secs(0), secs(0)),
            Err(TimingError::NonPositiveInterval(secs(0)))
        );
        assert_eq!(
            Timing::new(secs(60), secs(-1)),
            Err(TimingError::NegativeGrace(secs(-1)))
        );
        assert_eq!(Timing::from_secs(3600, 300), HOUR);
        assert_eq!(Timing::from_secs(u64::MAX, 0).interval, secs(i64::MAX));
        assert_eq!(HOUR.run_allowance(), secs(300));
        assert_eq!(MINUTE.run_allowance(), secs(60));
        // A negative grace given as a literal is treated as zero, not as "Down before Late".
        let odd = Timing::every(secs(60), secs(-30));
        let (_, _, last) = run(&odd, &[Success(t(0)), Tick(t(59))]);
        assert_eq!(last, vec![]);
    }

    #[test]
    fn signal_helpers() {
        assert_eq!(Signal::from_exit_code(t(1), 0), Success(t(1)));
        assert_eq!(Signal::from_exit_code(t(1), 7), Fail(t(1), Some(7)));
        for sig in [
            Success(t(1)),
            Start(t(1)),
            Fail(t(1), None),
            Pause(t(1)),
            Resume(t(1)),
            Tick(t(1)),
            Retimed(t(1)),
        ] {
            assert_eq!(sig.at(), t(1));
        }
    }

    #[test]
    fn state_round_trips_through_json_in_a_stable_shape() {
        let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(1)), Fail(t(2), Some(4))]);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["state"], "Down");
        assert_eq!(json["down_reason"]["kind"], "failed");
        assert_eq!(json["down_reason"]["exit_code"], 4);
        assert_eq!(json["incident_open"], true);
        assert_eq!(serde_json::from_value::<MonitorState>(json).unwrap(), s);
        // Optional fields may be missing (older records).
        let minimal = serde_json::json!({"state": "New", "since": "2023-11-14T22:13:20Z"});
        assert_eq!(
            serde_json::from_value::<MonitorState>(minimal).unwrap(),
            MonitorState::new(t(0))
        );
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// Steps `signals` from `start`, returning the final state and every effect.
    fn steps(
        timing: &Timing<'_>,
        start: MonitorState,
        signals: &[Signal],
    ) -> (MonitorState, Vec<Effect>) {
        let mut s = start;
        let mut all = Vec::new();
        for sig in signals {
            let (n, e) = apply(timing, &s, sig);
            s = n;
            all.extend(e);
        }
        (s, all)
    }

    fn trans(from: State, to: State, when: &str) -> Effect {
        Effect::Transition {
            from,
            to,
            at: at(when),
        }
    }

    #[test]
    fn a_scheduled_monitor_expects_each_run_from_its_creation() {
        use State::*;
        let daily = Schedule::parse("0 2 * * *", None).unwrap();
        let timing = Timing::from_secs(86_400, 300).with_schedule(Some(&daily));
        let new = MonitorState::created(&timing, at("2026-01-05T01:00:00Z"), false);
        assert_eq!(
            (new.state, new.deadline),
            (New, Some(at("2026-01-05T02:00:00Z")))
        );
        assert_eq!(new.next_expected_at(), Some(at("2026-01-05T02:00:00Z")));
        assert_eq!(next_wakeup(&timing, &new), Some(at("2026-01-05T02:00:00Z")));
        // Due at the scheduled time, Down when grace has passed with no ping.
        let (late, e) = apply(&timing, &new, &Tick(at("2026-01-05T02:00:00Z")));
        assert_eq!(e, vec![trans(New, Late, "2026-01-05T02:00:00Z")]);
        let (down, e) = apply(&timing, &late, &Tick(at("2026-01-05T02:05:00Z")));
        assert_eq!(down.down_reason, Some(DownReason::Missed));
        assert_eq!(
            e,
            vec![
                trans(Late, Down, "2026-01-05T02:05:00Z"),
                Effect::Alert {
                    reason: DownReason::Missed,
                    at: at("2026-01-05T02:05:00Z")
                }
            ]
        );
        // Three more runs missed by the morning of the fourth day.
        assert_eq!(
            consecutive_misses(&timing, &down, at("2026-01-08T03:00:00Z")),
            3
        );
        // A ping in the window: Up, next due at tomorrow's run.
        let (up, _) = apply(&timing, &late, &Success(at("2026-01-05T02:03:00Z")));
        assert_eq!(
            (up.state, up.deadline),
            (Up, Some(at("2026-01-06T02:00:00Z")))
        );
        // A ping before the run (a manual run at 01:30) does not stand for the 02:00 run.
        let (early, _) = apply(&timing, &new, &Success(at("2026-01-05T01:30:00Z")));
        assert_eq!(
            (early.state, early.deadline),
            (Up, Some(at("2026-01-05T02:00:00Z")))
        );
        // A ping far after a missed run recovers, due at the next run after it.
        let (back, e) = apply(&timing, &down, &Success(at("2026-01-07T12:00:00Z")));
        assert_eq!(back.deadline, Some(at("2026-01-08T02:00:00Z")));
        assert!(e.contains(&Effect::Recovery {
            at: at("2026-01-07T12:00:00Z")
        }));
        // Created paused: nothing armed.
        let paused = MonitorState::created(&timing, at("2026-01-05T01:00:00Z"), true);
        assert_eq!((paused.state, paused.deadline), (Paused, None));
    }

    #[test]
    fn scheduled_runs_and_resumes() {
        use State::*;
        let hourly = Schedule::parse("@hourly", None).unwrap();
        let timing = Timing::from_secs(3600, 60).with_schedule(Some(&hourly));
        let start = MonitorState::created(&timing, at("2026-01-05T09:30:00Z"), false);
        // A run may last until the next scheduled run plus grace.
        let (started, _) = steps(&timing, start.clone(), &[Start(at("2026-01-05T10:00:10Z"))]);
        assert_eq!(
            next_wakeup(&timing, &started),
            Some(at("2026-01-05T11:01:00Z"))
        );
        let (s, _) = apply(&timing, &started, &Tick(at("2026-01-05T11:01:00Z")));
        assert_eq!(
            (s.state, s.down_reason),
            (Down, Some(DownReason::RunTimeout))
        );
        // maxDuration limits it instead.
        let capped = Timing {
            max_duration: Some(secs(600)),
            ..timing
        };
        assert_eq!(
            next_wakeup(&capped, &started),
            Some(at("2026-01-05T10:10:10Z"))
        );
        // Resumed without a ping while paused: New, armed for the next run after the resume.
        let (s, _) = steps(
            &timing,
            start,
            &[
                Pause(at("2026-01-05T09:40:00Z")),
                Resume(at("2026-01-05T13:20:00Z")),
            ],
        );
        assert_eq!(
            (s.state, s.deadline),
            (New, Some(at("2026-01-05T14:00:00Z")))
        );
    }

    #[test]
    fn a_new_schedule_is_not_applied_to_the_past() {
        use State::*;
        let two = Schedule::parse("0 2 * * *", None).unwrap();
        let three = Schedule::parse("0 3 * * *", None).unwrap();
        let at_two = Timing::from_secs(86_400, 300).with_schedule(Some(&two));
        let at_three = Timing::from_secs(86_400, 300).with_schedule(Some(&three));
        let (up, _) = steps(
            &at_two,
            MonitorState::created(&at_two, at("2026-01-04T00:00:00Z"), false),
            &[Success(at("2026-01-04T02:01:00Z"))],
        );
        // Moved to 03:00 at 02:30 the next day: due at today's 03:00, not yesterday's.
        let (s, e) = apply(&at_three, &up, &Retimed(at("2026-01-05T02:30:00Z")));
        assert_eq!(
            (s.state, s.deadline, e),
            (Up, Some(at("2026-01-05T03:00:00Z")), vec![])
        );
        // Only the grace changed: the deadline stays, and is judged with the new grace.
        let shorter = Timing {
            grace: secs(0),
            ..at_two
        };
        let (late, _) = apply(&at_two, &up, &Tick(at("2026-01-05T02:00:00Z")));
        let (s, _) = apply(&shorter, &late, &Retimed(at("2026-01-05T02:01:00Z")));
        assert_eq!(
            (s.state, s.deadline),
            (Down, Some(at("2026-01-05T02:00:00Z")))
        );
        // From an interval to a schedule while New: armed from now.
        let new = MonitorState::new(at("2026-01-01T00:00:00Z"));
        let (s, e) = apply(&at_two, &new, &Retimed(at("2026-01-05T12:00:00Z")));
        assert_eq!(
            (s.state, s.deadline, e),
            (New, Some(at("2026-01-06T02:00:00Z")), vec![])
        );
        // From a schedule to an interval before any ping: back to waiting for one.
        let (late_new, _) = apply(
            &at_two,
            &MonitorState::created(&at_two, at("2026-01-05T01:00:00Z"), false),
            &Tick(at("2026-01-05T02:01:00Z")),
        );
        assert_eq!(late_new.state, Late);
        let (s, e) = apply(&HOUR, &late_new, &Retimed(at("2026-01-05T02:02:00Z")));
        assert_eq!((s.state, s.deadline), (New, None));
        assert_eq!(e, vec![trans(Late, New, "2026-01-05T02:02:00Z")]);
    }

    #[test]
    fn daylight_saving_days_in_amsterdam() {
        // A cron user's 02:30 runs at 03:00 CEST on the spring-forward day...
        let cron = Schedule::parse("30 2 * * *", Some("Europe/Amsterdam")).unwrap();
        let timing = Timing::from_secs(86_400, 600).with_schedule(Some(&cron));
        let (s, _) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-03-28T00:00:00Z"), false),
            &[Success(at("2026-03-28T01:31:00Z"))],
        );
        assert_eq!(s.deadline, Some(at("2026-03-29T01:00:00Z")));
        // ...but the CronJob controller creates no Job that day: a CronJob's monitor
        // expects none, so no false "not scheduled".
        let k8s =
            Schedule::parse_as("30 2 * * *", Some("Europe/Amsterdam"), Dialect::CronJob).unwrap();
        let watched = Timing {
            jobs: Some(JobRules::default()),
            ..Timing::from_secs(86_400, 600).with_schedule(Some(&k8s))
        };
        let (s, _) = steps(
            &watched,
            MonitorState::created(&watched, at("2026-03-28T00:00:00Z"), false),
            &[
                Success(at("2026-03-28T01:31:00Z")),
                Tick(at("2026-03-29T12:00:00Z")),
            ],
        );
        assert_eq!(
            (s.state, s.deadline),
            (State::Up, Some(at("2026-03-30T00:30:00Z")))
        );
        // Fall back: one run expected, on the first pass; the next is the following day.
        let (s, _) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-10-24T12:00:00Z"), false),
            &[
                Success(at("2026-10-25T00:31:00Z")),
                Tick(at("2026-10-25T01:45:00Z")),
            ],
        );
        assert_eq!(
            (s.state, s.deadline),
            (State::Up, Some(at("2026-10-26T01:30:00Z")))
        );
    }

    /// `*/10 * * * *` with two minutes' grace, Jobs watched.
    fn watched<'a>(schedule: &'a Schedule, require_ping: bool) -> Timing<'a> {
        Timing {
            jobs: Some(JobRules { require_ping }),
            ..Timing::from_secs(600, 120).with_schedule(Some(schedule))
        }
    }

    fn job(name: &str, started: &str, outcome: JobOutcome) -> Signal {
        Signal::Job(JobSignal {
            name: name.into(),
            started_at: at(started),
            outcome,
            run_ids: vec![name.into()],
        })
    }

    fn job_failed(when: &str, reason: JobFailure, exit_code: Option<u8>) -> JobOutcome {
        JobOutcome::Failed {
            at: at(when),
            reason,
            exit_code,
        }
    }

    #[test]
    fn jobs_start_succeed_and_fail_like_pings() {
        use State::*;
        let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
        let timing = watched(&every10, false);
        let new = MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false);
        // Created at 10:00:07 for the 10:00 run, done a minute later.
        let (s, e) = steps(
            &timing,
            new.clone(),
            &[job(
                "nightly-1",
                "2026-01-05T10:00:07Z",
                JobOutcome::Running,
            )],
        );
        assert_eq!(
            (s.state, s.run_started_at),
            (Started, Some(at("2026-01-05T10:00:07Z")))
        );
        assert_eq!(e, vec![trans(New, Started, "2026-01-05T10:00:07Z")]);
        let done = job(
            "nightly-1",
            "2026-01-05T10:00:07Z",
            JobOutcome::Succeeded(at("2026-01-05T10:01:07Z")),
        );
        let (up, e) = apply(&timing, &s, &done);
        assert_eq!(
            (up.state, up.deadline),
            (Up, Some(at("2026-01-05T10:10:00Z")))
        );
        assert_eq!(e, vec![trans(Started, Up, "2026-01-05T10:01:07Z"), ran(60)]);
        assert_eq!(up.pings, 2);
        // The same evidence again (a re-list, a restart) changes nothing.
        assert_eq!(apply(&timing, &up, &done), (up.clone(), vec![]));
        let (again, e) = steps(
            &timing,
            up.clone(),
            &[job(
                "nightly-1",
                "2026-01-05T10:00:07Z",
                JobOutcome::Running,
            )],
        );
        assert_eq!((again, e), (up.clone(), vec![]));
        // A failed Job: Down with its reason and exit code.
        let failure = job_failed(
            "2026-01-05T10:10:40Z",
            JobFailure::BackoffLimitExceeded,
            Some(3),
        );
        let (down, e) = steps(
            &timing,
            up.clone(),
            &[job("nightly-2", "2026-01-05T10:10:05Z", failure)],
        );
        let reason = DownReason::JobFailed {
            job: "nightly-2".into(),
            reason: JobFailure::BackoffLimitExceeded,
            exit_code: Some(3),
        };
        assert_eq!(down.down_reason, Some(reason.clone()));
        assert_eq!(
            e,
            vec![
                trans(Up, Down, "2026-01-05T10:10:40Z"),
                ran(35),
                Effect::Alert {
                    reason,
                    at: at("2026-01-05T10:10:40Z")
                }
            ]
        );
        // The next Job succeeds: Up, one recovery.
        let (s, e) = steps(
            &timing,
            down,
            &[job(
                "nightly-3",
                "2026-01-05T10:20:04Z",
                JobOutcome::Succeeded(at("2026-01-05T10:20:30Z")),
            )],
        );
        assert_eq!(s.state, Up);
        assert_eq!(count(&e, is_recovery), 1);
    }

    #[test]
    fn no_job_in_the_window_is_not_scheduled() {
        use State::*;
        let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
        let timing = watched(&every10, false);
        let (s, e) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
            &[
                Tick(at("2026-01-05T10:00:00Z")),
                Tick(at("2026-01-05T10:02:00Z")),
            ],
        );
        assert_eq!(
            (s.state, s.down_reason.clone()),
            (Down, Some(DownReason::NotScheduled))
        );
        assert_eq!(count(&e, is_alert), 1);
        // A Job that starts late in the window (controller lag) is in time.
        let (s, _) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
            &[
                Tick(at("2026-01-05T10:00:00Z")),
                job("j", "2026-01-05T10:01:50Z", JobOutcome::Running),
                Tick(at("2026-01-05T10:02:00Z")),
            ],
        );
        assert_eq!(s.state, Started);
    }

    #[test]
    fn jobs_running_too_long_and_overlapping() {
        use State::*;
        let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
        let capped = Timing {
            max_duration: Some(secs(300)),
            ..watched(&every10, false)
        };
        let (s, e) = steps(
            &capped,
            MonitorState::created(&capped, at("2026-01-05T09:55:00Z"), false),
            &[
                job("a", "2026-01-05T10:00:05Z", JobOutcome::Running),
                Tick(at("2026-01-05T10:05:05Z")),
            ],
        );
        assert_eq!(
            s.down_reason,
            Some(DownReason::JobTooLong { job: "a".into() })
        );
        assert_eq!(
            e.last(),
            Some(&Effect::Alert {
                reason: DownReason::JobTooLong { job: "a".into() },
                at: at("2026-01-05T10:05:05Z")
            })
        );
        // Without maxDuration, a Job may run until the next run's window has passed.
        let timing = watched(&every10, false);
        let (s, _) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
            &[job("a", "2026-01-05T10:00:05Z", JobOutcome::Running)],
        );
        assert_eq!(next_wakeup(&timing, &s), Some(at("2026-01-05T10:12:00Z")));
        // Overlap: b starts while a runs; a's success is recorded, b's run goes on.
        let (s, e) = steps(
            &timing,
            s,
            &[
                job("b", "2026-01-05T10:10:05Z", JobOutcome::Running),
                job(
                    "a",
                    "2026-01-05T10:00:05Z",
                    JobOutcome::Succeeded(at("2026-01-05T10:11:05Z")),
                ),
            ],
        );
        assert_eq!(
            (s.state, s.run_started_at),
            (Started, Some(at("2026-01-05T10:10:05Z")))
        );
        assert_eq!(s.last_ping_at, Some(at("2026-01-05T10:11:05Z")));
        assert_eq!(e.last(), Some(&ran(660)));
        // A failure of the older Job still counts.
        let failure = job_failed("2026-01-05T10:11:05Z", JobFailure::DeadlineExceeded, None);
        let (s2, _) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
            &[
                job("a", "2026-01-05T10:00:05Z", JobOutcome::Running),
                job("b", "2026-01-05T10:10:05Z", JobOutcome::Running),
                job("a", "2026-01-05T10:00:05Z", failure),
            ],
        );
        assert_eq!(s2.state, Down);
        assert_eq!(
            s2.run_started_at,
            Some(at("2026-01-05T10:10:05Z")),
            "b is still tracked"
        );
        // A Job first seen finished (it ran while the operator was away) counts as a run.
        let (s3, e) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
            &[job(
                "c",
                "2026-01-05T10:00:05Z",
                JobOutcome::Succeeded(at("2026-01-05T10:00:35Z")),
            )],
        );
        assert_eq!(s3.state, Up);
        assert_eq!(e, vec![trans(New, Up, "2026-01-05T10:00:35Z"), ran(30)]);
    }

    #[test]
    fn require_ping_ties_pings_to_jobs() {
        use State::*;
        let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
        let timing = watched(&every10, true);
        let created = MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false);
        let run = |signals: &[Signal]| steps(&timing, created.clone(), signals).0;
        let start = job("a", "2026-01-05T10:00:05Z", JobOutcome::Running);
        let end = job(
            "a",
            "2026-01-05T10:00:05Z",
            JobOutcome::Succeeded(at("2026-01-05T10:01:00Z")),
        );
        // No ping: Down, "completed without a ping".
        let s = run(&[start.clone(), end.clone()]);
        assert_eq!(
            (s.state, s.down_reason),
            (
                Down,
                Some(DownReason::CompletedWithoutPing { job: "a".into() })
            )
        );
        assert_eq!(s.last_ping_at, None, "the run proved nothing");
        // An untagged ping during the run: Up.
        let s = run(&[
            start.clone(),
            Success(at("2026-01-05T10:00:58Z")),
            end.clone(),
        ]);
        assert_eq!(s.state, Up);
        // A ping tagged with this Job's pod: Up. Tagged with another Job's: not this one's.
        let s = run(&[
            start.clone(),
            SuccessFor(at("2026-01-05T10:00:58Z"), "a-x7k2p".into()),
            end.clone(),
        ]);
        assert_eq!(s.state, Up);
        let s = run(&[
            start.clone(),
            SuccessFor(at("2026-01-05T10:00:58Z"), "b-x7k2p".into()),
            end.clone(),
        ]);
        assert_eq!(s.state, Down);
        // A ping long before the run does not count.
        let s = run(&[Success(at("2026-01-05T09:56:00Z")), start, end]);
        assert_eq!(s.state, Down);
    }

    #[test]
    fn jobs_while_paused_are_recorded_and_judge_the_resume() {
        use State::*;
        let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
        let timing = watched(&every10, false);
        let (s, e) = steps(
            &timing,
            MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), true),
            &[
                job("a", "2026-01-05T10:00:05Z", JobOutcome::Running),
                job(
                    "a",
                    "2026-01-05T10:00:05Z",
                    job_failed(
                        "2026-01-05T10:00:15Z",
                        JobFailure::BackoffLimitExceeded,
                        Some(1),
                    ),
                ),
                job(
                    "b",
                    "2026-01-05T10:10:05Z",
                    JobOutcome::Succeeded(at("2026-01-05T10:10:15Z")),
                ),
            ],
        );
        assert_eq!((s.state, s.pings), (Paused, 3));
        assert_eq!(
            e,
            vec![ran(10), ran(10)],
            "durations are reported, nothing else"
        );
        let (s, _) = apply(&timing, &s, &Resume(at("2026-01-05T10:12:00Z")));
        assert_eq!(
            (s.state, s.deadline),
            (Up, Some(at("2026-01-05T10:20:00Z")))
        );
    }

    #[test]
    fn down_reasons_are_stored_in_a_stable_shape() {
        let reason = DownReason::JobFailed {
            job: "nightly-1".into(),
            reason: JobFailure::BackoffLimitExceeded,
            exit_code: Some(3),
        };
        let json = serde_json::to_value(&reason).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "job_failed", "job": "nightly-1", "reason": "BackoffLimitExceeded", "exit_code": 3})
        );
        assert_eq!(serde_json::from_value::<DownReason>(json).unwrap(), reason);
        for (r, kind) in [
            (DownReason::NotScheduled, "not_scheduled"),
            (DownReason::RunTimeout, "run_timeout"),
            (
                DownReason::CompletedWithoutPing { job: "j".into() },
                "completed_without_ping",
            ),
            (DownReason::JobTooLong { job: "j".into() }, "job_too_long"),
        ] {
            assert_eq!(serde_json::to_value(&r).unwrap()["kind"], kind);
        }
    }

    #[test]
    fn down_only_at_the_failure_threshold_and_a_success_resets_the_count() {
        let timing = Timing {
            failure_threshold: 2,
            ..HOUR
        };
        let (s, all, _) = run(&timing, &[Success(t(0)), Fail(t(10), Some(1))]);
        assert_eq!((s.state, s.failures), (State::Up, 1));
        assert_eq!(count(&all, is_alert), 0);
        // The failed run counts as its window's run: the next deadline follows from it.
        assert_eq!(s.deadline, Some(t(3610)));
        let (s, _, last) = run(
            &timing,
            &[Success(t(0)), Fail(t(10), Some(1)), Fail(t(20), Some(2))],
        );
        assert_eq!(s.state, State::Down);
        assert_eq!(
            last,
            vec![tr(State::Up, State::Down, 20), alert(failed(Some(2)), 20)]
        );
        let (s, _, _) = run(
            &timing,
            &[
                Success(t(0)),
                Fail(t(10), None),
                Success(t(15)),
                Fail(t(20), None),
            ],
        );
        assert_eq!((s.state, s.failures), (State::Up, 1));
    }

    #[test]
    fn missed_deadlines_count_one_window_each_even_in_one_late_tick() {
        let timing = Timing {
            failure_threshold: 2,
            ..HOUR
        };
        // Late at 3600; the first miss at 3900 is absorbed and moves the deadline on.
        let (s, _, last) = run(&timing, &[Success(t(0)), Tick(t(3600)), Tick(t(3900))]);
        assert_eq!(
            (s.state, s.failures, s.deadline),
            (State::Up, 1, Some(t(7200)))
        );
        assert_eq!(last, vec![tr(State::Late, State::Up, 3900)]);
        let (s, all, _) = run(&timing, &[Success(t(0)), Tick(t(3900)), Tick(t(7500))]);
        assert_eq!(s.state, State::Down);
        assert_eq!(count(&all, is_alert), 1);
        // One tick long after both misses: one transition, Down when the second was due.
        let (s, _, last) = run(&timing, &[Success(t(0)), Tick(t(8000))]);
        assert_eq!(s.state, State::Down);
        assert_eq!(
            last,
            vec![
                tr(State::Up, State::Down, 7500),
                alert(DownReason::Missed, 7500)
            ]
        );
    }

    #[test]
    fn a_deadline_inside_maintenance_gets_a_fresh_one_after_it() {
        // t(0) is 22:13:20 UTC; the window runs 23:00 to 00:00 (t(2800) to t(6400)).
        let windows = [MaintenanceWindow {
            schedule: "0 23 * * *".into(),
            duration: crate::core::duration::SpecDuration::from_secs(3600),
            time_zone: None,
        }];
        let timing = Timing {
            maintenance: &windows,
            ..HOUR
        };
        let (s, all, _) = run(&timing, &[Success(t(0)), Tick(t(3600)), Tick(t(3900))]);
        assert_eq!(s.state, State::Up);
        assert_eq!(s.deadline, Some(t(10_000)));
        assert_eq!(count(&all, is_alert), 0);
        // Its end finds nothing overdue; the fresh deadline counts as usual.
        let (s, _, _) = run(&timing, &[Success(t(0)), Tick(t(3600)), Tick(t(6400))]);
        assert_eq!(s.state, State::Up);
        let (s, all, _) = run(
            &timing,
            &[Success(t(0)), Tick(t(3600)), Tick(t(6400)), Tick(t(10_300))],
        );
        assert_eq!(s.state, State::Down);
        assert_eq!(count(&all, is_alert), 1);
        // Late when the window opens: back to Up with the fresh deadline.
        let (s, _, last) = run(&timing, &[Success(t(-1000)), Tick(t(2600)), Tick(t(2900))]);
        assert_eq!(s.state, State::Up);
        assert_eq!(last, vec![tr(State::Late, State::Up, 2900)]);
        // A run deadline inside the window is judged when it ends.
        let (s, _, _) = run(&timing, &[Success(t(0)), Start(t(2700))]);
        assert_eq!(next_wakeup(&timing, &s), Some(t(6400)));
        let (s, _, _) = run(&timing, &[Success(t(0)), Start(t(2700)), Tick(t(3100))]);
        assert_eq!(s.state, State::Started);
    }
}
