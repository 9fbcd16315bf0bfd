//! The monitor state machine: pure functions of timing, stored state and one signal.
//!
//! Every decision about a heartbeat monitor (is it Late, Down, does it alert, does it
//! recover) is made here without I/O or a clock of its own, so each rule can be tested with
//! explicit timestamps and the engine only has to persist the new state and carry out the
//! effects. The stored form ([`MonitorState`]) is plain serde data so it can live in sled as
//! JSON.
//!
//! Rules that hold after every [`apply`]:
//! - at most one [`Effect::Transition`] per step, from the old state straight to the new one
//!   (a tick long after the deadline goes Up → Down, never through a zero-length Late);
//! - `since` never decreases, whatever the order in which signals arrive;
//! - Down with no open incident opens one and alerts; Up with an open incident closes it and
//!   sends the recovery: at most one alert and one recovery per episode, and ticks are
//!   idempotent.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Where a monitor stands; the single value status pages, metrics and alerting key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Created, never pinged (or resumed with nothing heard while paused): never alerts on
    /// time, since there is no rhythm to miss yet.
    New,
    /// Pinged; the next ping is due at `deadline` (last ping plus interval).
    Up,
    /// A run signalled `/start` and has not finished; its own deadline replaces the regular
    /// one so long jobs are judged by their run time.
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

/// How long a monitor waits, passed to every step rather than stored, so a changed spec
/// takes effect on the next step without rewriting stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timing {
    /// Longest expected time between successful pings.
    pub interval: SignedDuration,
    /// Extra time after the deadline before Down; also the time a started run may take.
    pub grace: SignedDuration,
}

impl Timing {
    /// Checked constructor for timing that comes from users (the fields stay public for
    /// literals; out-of-range values there are clamped by the state machine, not trusted).
    pub fn new(interval: SignedDuration, grace: SignedDuration) -> Result<Self, TimingError> {
        if !interval.is_positive() {
            return Err(TimingError::NonPositiveInterval(interval));
        }
        if grace.is_negative() {
            return Err(TimingError::NegativeGrace(grace));
        }
        Ok(Self { interval, grace })
    }

    /// Monitor definitions store whole seconds; this saturates instead of failing.
    pub fn from_secs(interval: u64, grace: u64) -> Self {
        let s = |v: u64| SignedDuration::from_secs(i64::try_from(v).unwrap_or(i64::MAX));
        Self {
            interval: s(interval),
            grace: s(grace),
        }
    }

    /// How long a started run may take before it is Down: the grace, or the interval when
    /// grace is zero (a zero allowance would fail every run at once).
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
}

/// Why a monitor went Down, kept so alerts and status can say more than "down".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Everything the state machine remembers about one monitor; stored as JSON, so fields are
/// only ever added (with serde defaults), never renamed. Empty fields are left out of the
/// stored record: 100 000 monitors keep a smaller database and cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Current state.
    pub state: State,
    /// When the current state began: never decreases.
    pub since: Timestamp,
    /// Latest success ping heard (the maximum, even if pings arrive out of order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ping_at: Option<Timestamp>,
    /// Start of the run in progress: set while Started, or while Down after a `/start`, so
    /// the run's end can report its duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_started_at: Option<Timestamp>,
    /// Latest failure signal heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fail_at: Option<Timestamp>,
    /// Last ping plus interval, once pinged; `None` while New or Paused (the API's
    /// `next_expected_at`, and the base of `consecutive_misses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_alert_at: Option<Timestamp>,
    /// Signals received (success, start, fail, paused or not); numbers the ping history.
    #[serde(default)]
    pub pings: u64,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    /// A successful ping (`/ping`, or exit code 0).
    Success(Timestamp),
    /// A run began (`/start`).
    Start(Timestamp),
    /// The job failed (`/fail`, or exit code 1–255). `Some(0)` is treated as a success.
    Fail(Timestamp, Option<u8>),
    /// The monitor was paused.
    Pause(Timestamp),
    /// The monitor was resumed.
    Resume(Timestamp),
    /// Time passed; apply the deadlines due by then (never moves backwards).
    Tick(Timestamp),
    /// Interval or grace changed: recompute the deadline from the last ping and re-evaluate
    /// at this time (may also move Late back to Up).
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
        match *self {
            Signal::Success(at)
            | Signal::Start(at)
            | Signal::Fail(at, _)
            | Signal::Pause(at)
            | Signal::Resume(at)
            | Signal::Tick(at)
            | Signal::Retimed(at) => at,
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

    /// `next_expected_at` as the API shows it: none while New or Paused, where no ping is
    /// awaited.
    pub fn next_expected_at(&self) -> Option<Timestamp> {
        match self.state {
            State::New | State::Paused => None,
            State::Up | State::Started | State::Late | State::Down => self.deadline,
        }
    }
}

/// `a + d`, or `None` past the end of time (a deadline that never comes).
fn plus(a: Timestamp, d: SignedDuration) -> Option<Timestamp> {
    a.checked_add(d).ok()
}

/// The deadline a ping at `ping` sets.
fn deadline_after(timing: &Timing, ping: Option<Timestamp>) -> Option<Timestamp> {
    ping.and_then(|p| plus(p, timing.interval))
}

/// When a run in progress times out.
fn run_deadline(timing: &Timing, s: &MonitorState) -> Option<Timestamp> {
    s.run_started_at
        .and_then(|r| plus(r, timing.run_allowance()))
}

/// Where a pinged monitor stands at `now` judged only by its deadline, and since when.
fn by_deadline(timing: &Timing, deadline: Option<Timestamp>, now: Timestamp) -> (State, Timestamp) {
    let Some(deadline) = deadline else {
        return (State::Up, now);
    };
    match plus(deadline, timing.grace_or_zero()) {
        Some(down_at) if down_at <= now => (State::Down, down_at),
        _ if deadline <= now => (State::Late, deadline),
        _ => (State::Up, now),
    }
}

/// One step in progress: the state being built, the state it started from and the effects
/// that are not derived from the final state.
struct Step<'a> {
    timing: &'a Timing,
    from: State,
    s: MonitorState,
    run_finished: Option<SignedDuration>,
}

impl Step<'_> {
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

    /// Goes Down for `reason` unless already Down (the first reason of an episode stays).
    fn down(&mut self, reason: DownReason, at: Timestamp) {
        if self.s.state != State::Down {
            self.enter(State::Down, at);
            self.s.down_reason = Some(reason);
        }
    }

    /// Ends the run in progress, if any, at `at`.
    fn finish_run(&mut self, at: Timestamp) {
        if let Some(started) = self.s.run_started_at.take() {
            self.run_finished = Some(at.duration_since(started).max(SignedDuration::ZERO));
        }
    }

    /// Applies the time-driven transitions due by `now`, forwards only.
    fn tick(&mut self, now: Timestamp) {
        match self.s.state {
            State::Up | State::Late => {
                let (to, at) = by_deadline(self.timing, self.s.deadline, now);
                match (self.s.state, to) {
                    (_, State::Down) => self.down(DownReason::Missed, at),
                    (State::Up, State::Late) => self.enter(State::Late, at),
                    _ => {}
                }
            }
            State::Started => {
                if let Some(at) = run_deadline(self.timing, &self.s).filter(|at| *at <= now) {
                    self.s.run_started_at = None;
                    self.down(DownReason::RunTimeout, at);
                }
            }
            State::New | State::Down | State::Paused => {}
        }
    }

    fn success(&mut self, at: Timestamp) {
        self.s.pings = self.s.pings.saturating_add(1);
        let last = self.s.last_ping_at.map_or(at, |p| p.max(at));
        self.s.last_ping_at = Some(last);
        if self.s.state == State::Paused {
            self.s.pinged_while_paused = true;
            return;
        }
        self.finish_run(at);
        self.s.deadline = deadline_after(self.timing, Some(last));
        self.enter(State::Up, at);
    }

    fn start(&mut self, at: Timestamp) {
        self.s.pings = self.s.pings.saturating_add(1);
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
        self.s.last_fail_at = Some(self.s.last_fail_at.map_or(at, |f| f.max(at)));
        if self.s.state == State::Paused {
            return;
        }
        self.finish_run(at);
        self.down(DownReason::Failed { exit_code }, at);
    }

    fn pause(&mut self, at: Timestamp) {
        if self.s.state != State::Paused {
            self.enter(State::Paused, at);
            self.s.pinged_while_paused = false;
            self.s.run_started_at = None;
            self.s.deadline = None;
        }
    }

    fn resume(&mut self, at: Timestamp) {
        if self.s.state != State::Paused {
            return;
        }
        if self.s.pinged_while_paused && self.s.last_ping_at.is_some() {
            self.s.deadline = deadline_after(self.timing, self.s.last_ping_at);
            // Nothing could be late while paused: whatever it is now, it became so now.
            let (to, _) = by_deadline(self.timing, self.s.deadline, at);
            if to == State::Down {
                self.down(DownReason::Missed, at);
            } else {
                self.enter(to, at);
            }
        } else {
            self.s.deadline = None;
            self.enter(State::New, at);
        }
        self.s.pinged_while_paused = false;
    }

    fn retime(&mut self, now: Timestamp) {
        if self.s.deadline.is_some() {
            self.s.deadline = deadline_after(self.timing, self.s.last_ping_at);
        }
        match self.s.state {
            // Up and Late are judged afresh, so a longer interval can make Late Up again.
            State::Up | State::Late => {
                let (to, at) = by_deadline(self.timing, self.s.deadline, now);
                match to {
                    State::Down => self.down(DownReason::Missed, at),
                    _ => self.enter(to, at),
                }
            }
            State::Started => self.tick(now),
            // Down ends only with a success ping; New and Paused have no deadline.
            State::New | State::Down | State::Paused => {}
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
                    reason: self.s.down_reason.unwrap_or(DownReason::Missed),
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
pub fn apply(timing: &Timing, state: &MonitorState, signal: Signal) -> (MonitorState, Vec<Effect>) {
    let mut step = Step {
        timing,
        from: state.state,
        s: state.clone(),
        run_finished: None,
    };
    match signal {
        Signal::Success(at) | Signal::Fail(at, Some(0)) => step.success(at),
        Signal::Start(at) => step.start(at),
        Signal::Fail(at, exit_code) => step.fail(at, exit_code),
        Signal::Pause(at) => step.pause(at),
        Signal::Resume(at) => step.resume(at),
        Signal::Tick(now) => step.tick(now),
        Signal::Retimed(now) => step.retime(now),
    }
    step.finish(signal.at())
}

/// When a tick could next change this monitor, so the scheduler arms exactly one deadline
/// per monitor instead of polling; `None` means only a signal can change it.
pub fn next_wakeup(timing: &Timing, s: &MonitorState) -> Option<Timestamp> {
    match s.state {
        State::Up => s.deadline,
        State::Late => s.deadline.and_then(|d| plus(d, timing.grace_or_zero())),
        State::Started => run_deadline(timing, s),
        State::New | State::Down | State::Paused => None,
    }
}

/// Whole intervals elapsed since the deadline while Down (0 in any other state, before the
/// deadline, or with no deadline), for status pages and Tickstem's `consecutive_misses`.
pub fn consecutive_misses(timing: &Timing, s: &MonitorState, now: Timestamp) -> u64 {
    let (State::Down, Some(deadline)) = (s.state, s.deadline) else {
        return 0;
    };
    let interval = timing.interval.as_nanos();
    if now <= deadline || interval <= 0 {
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
    use Signal::{Fail, Pause, Resume, Retimed, Start, Success, Tick};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    /// Interval one hour, grace five minutes: Late at +3600, Down at +3900; a run may take
    /// 300 s.
    const HOUR: Timing = Timing {
        interval: SignedDuration::from_secs(3600),
        grace: SignedDuration::from_secs(300),
    };

    /// Interval one minute, no grace: Down at +60; a run may take 60 s.
    const MINUTE: Timing = Timing {
        interval: SignedDuration::from_secs(60),
        grace: SignedDuration::ZERO,
    };

    /// Runs `signals` from a New monitor created at t(0): the final state, all effects, and
    /// the effects of the last signal alone.
    fn run(timing: &Timing, signals: &[Signal]) -> (MonitorState, Vec<Effect>, Vec<Effect>) {
        let mut s = MonitorState::new(t(0));
        let mut all = Vec::new();
        let mut last = Vec::new();
        for sig in signals {
            let (n, e) = apply(timing, &s, *sig);
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
        timing: Timing,
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
        timing: Timing,
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

    #[test]
    fn invariants_hold_for_random_sequences() {
        let timings = [HOUR, MINUTE, Timing::from_secs(10, 5)];
        let mut rng = Lcg(42);
        for round in 0..3000 {
            let timing = timings[round % timings.len()];
            let mut s = MonitorState::new(t(0));
            let mut now = 0i64;
            let mut alerts = 0usize;
            let mut recoveries = 0usize;
            for _ in 0..40 {
                // Mostly forward in time, sometimes a stale timestamp.
                now += i64::try_from(rng.next(400)).unwrap();
                let at = t(now - i64::try_from(rng.next(4) * rng.next(30)).unwrap());
                let sig = match rng.next(9) {
                    0 => Success(at),
                    1 => Start(at),
                    2 => Fail(at, Some(u8::try_from(rng.next(256)).unwrap())),
                    3 => Fail(at, None),
                    4 => Pause(at),
                    5 => Resume(at),
                    6 => Retimed(at),
                    _ => Tick(t(now)),
                };
                let before = s.clone();
                let (next, effects) = apply(&timing, &s, sig);
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
                if next.state == State::New {
                    assert_eq!(next.deadline, None, "{ctx}");
                }
                if let (Some(d), Some(p)) = (next.deadline, next.last_ping_at) {
                    assert_eq!(d, p.checked_add(timing.interval).unwrap(), "{ctx}");
                }
                // Ticks: idempotent, and they change something exactly from next_wakeup on.
                let (again, e) = apply(&timing, &next, Tick(next.since));
                if next_wakeup(&timing, &next).is_none_or(|w| w > next.since) {
                    assert_eq!((&again, e.as_slice()), (&next, &[][..]), "{ctx}");
                }
                if let Some(w) = next_wakeup(&timing, &next) {
                    let just_before = w.checked_sub(SignedDuration::from_nanos(1)).unwrap();
                    if just_before >= next.since {
                        let (same, e) = apply(&timing, &next, Tick(just_before));
                        assert_eq!((&same, e.as_slice()), (&next, &[][..]), "{ctx}");
                    }
                    let (moved, e) = apply(&timing, &next, Tick(w));
                    assert_ne!(
                        moved.state, next.state,
                        "wakeup at {w} changed nothing: {ctx}"
                    );
                    let (twice, e2) = apply(&timing, &moved, Tick(w));
                    assert_eq!(
                        (&twice, e2.as_slice()),
                        (&moved, &[][..]),
                        "{ctx} then {e:?}"
                    );
                } else {
                    let (same, e) = apply(&timing, &next, Tick(t(now + 10_000_000)));
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
        let fast = Timing {
            interval: SignedDuration::from_millis(1500),
            grace: SignedDuration::ZERO,
        };
        let (s, _, _) = run(&fast, &[Success(t(0)), Tick(t(2))]);
        let deadline = s.deadline.unwrap();
        assert_eq!(
            consecutive_misses(&fast, &s, deadline.checked_add(secs(3)).unwrap()),
            2
        );
        // A nonsense interval never divides by zero.
        let zero = Timing {
            interval: SignedDuration::ZERO,
            grace: SignedDuration::ZERO,
        };
        assert_eq!(consecutive_misses(&zero, &down, t(100_000)), 0);
    }

    #[test]
    fn retiming_recomputes_the_deadline_and_re_evaluates() {
        use State::*;
        let (late, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3700))]);
        assert_eq!(late.state, Late);
        // Longer interval: Late becomes Up now, the deadline moves.
        let longer = Timing::from_secs(7200, 300);
        let (s, e) = apply(&longer, &late, Retimed(t(3701)));
        assert_eq!(
            (s.state, s.deadline, e),
            (Up, Some(t(7200)), vec![tr(Late, Up, 3701)])
        );
        // Longer grace only: stays Late.
        let (s, e) = apply(&Timing::from_secs(3600, 1000), &late, Retimed(t(3701)));
        assert_eq!((s.state, e), (Late, vec![]));
        // Shorter interval: straight to Down at the logical time, with the alert.
        let shorter = Timing::from_secs(60, 0);
        let (s, e) = apply(&shorter, &late, Retimed(t(3702)));
        assert_eq!(s.state, Down);
        assert_eq!(s.deadline, Some(t(60)));
        assert_eq!(
            e,
            vec![tr(Late, Down, 3600), alert(DownReason::Missed, 3600)],
            "since never decreases"
        );
        // Up to Late by a shorter interval.
        let (up, _, _) = run(&HOUR, &[Success(t(0))]);
        let (s, e) = apply(&Timing::from_secs(100, 1000), &up, Retimed(t(500)));
        assert_eq!((s.state, e), (Late, vec![tr(Up, Late, 100)]));
        // Down stays Down (only a ping ends an episode), with the deadline recomputed.
        let (down, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3900))]);
        let (s, e) = apply(&Timing::from_secs(100_000, 0), &down, Retimed(t(4000)));
        assert_eq!((s.state, s.deadline, e), (Down, Some(t(100_000)), vec![]));
        assert_eq!(
            consecutive_misses(&Timing::from_secs(100_000, 0), &s, t(4000)),
            0
        );
        // Started: a shorter grace can time the run out.
        let (started, _, _) = run(&HOUR, &[Success(t(0)), Start(t(100))]);
        let (s, e) = apply(&Timing::from_secs(3600, 50), &started, Retimed(t(200)));
        assert_eq!(s.state, Down);
        assert_eq!(
            e,
            vec![tr(Started, Down, 150), alert(DownReason::RunTimeout, 150)]
        );
        // New and Paused have no deadline to move.
        let new = MonitorState::new(t(0));
        assert_eq!(
            apply(&shorter, &new, Retimed(t(99_999))),
            (new.clone(), vec![])
        );
        let (paused, _, _) = run(&HOUR, &[Success(t(0)), Pause(t(1))]);
        assert_eq!(
            apply(&shorter, &paused, Retimed(t(99_999))),
            (paused.clone(), vec![])
        );
        // Resuming uses the timing in force at resume time.
        let (paused_pinged, _, _) = run(&HOUR, &[Pause(t(1)), Success(t(2))]);
        let (s, _) = apply(&shorter, &paused_pinged, Resume(t(100)));
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
        let (s, e) = apply(&HOUR, &paused, Resume(t(20)));
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
        let (s, e) = apply(&HOUR, &up, Success(t(100)));
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
        let odd = Timing {
            interval: secs(60),
            grace: secs(-30),
        };
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
}
