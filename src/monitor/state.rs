//! The monitor state machine: pure functions of timing, stored state, a signal and `now`.
//!
//! Every decision about a Heartbeat (is it Late, Down, does it alert, does it recover) is
//! made here, without I/O, so it can be tested exhaustively with explicit clocks; the
//! engine persists the result and carries out the effects.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Where a monitor stands (spec section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// No ping yet: never alerts.
    New,
    /// Pinged; the deadline is the last ping plus the interval.
    Up,
    /// A run signalled `/start` and has not finished yet.
    Started,
    /// Past the deadline, within grace.
    Late,
    /// Past deadline plus grace, or a failure was signalled.
    Down,
    /// Never alerts; pings are recorded.
    Paused,
}

impl State {
    /// Every state, for gauges and filters.
    pub const ALL: [State; 6] = [
        State::New,
        State::Up,
        State::Started,
        State::Late,
        State::Down,
        State::Paused,
    ];

    /// The name used in status, metrics and the API.
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

    /// Tickstem's `status`: Paused → paused, Down → failing, everything else → active.
    pub fn tickstem_status(self) -> &'static str {
        match self {
            State::Paused => "paused",
            State::Down => "failing",
            _ => "active",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a monitor waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Longest expected time between successful pings.
    pub interval: SignedDuration,
    /// Extra time after the deadline before Down.
    pub grace: SignedDuration,
}

impl Timing {
    /// Timing from whole seconds.
    pub fn from_secs(interval: u64, grace: u64) -> Self {
        let s = |v: u64| SignedDuration::from_secs(i64::try_from(v).unwrap_or(i64::MAX));
        Self {
            interval: s(interval),
            grace: s(grace),
        }
    }

    /// How long a started run may take: the grace, or the interval when grace is zero.
    pub fn run_allowance(&self) -> SignedDuration {
        if self.grace.is_zero() {
            self.interval
        } else {
            self.grace
        }
    }
}

/// Why a monitor went Down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownReason {
    /// No ping before deadline plus grace.
    Missed,
    /// The job reported failure (`/fail`, or a non-zero exit code).
    Failed {
        /// The exit code, when one was given.
        exit_code: Option<u8>,
    },
    /// A run that sent `/start` did not finish in time.
    RunTimeout,
}

/// Persisted state of one monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Current state.
    pub state: State,
    /// When the current state began.
    pub since: Timestamp,
    /// Last successful ping.
    pub last_ping_at: Option<Timestamp>,
    /// Start of the run in progress (Started).
    pub run_started_at: Option<Timestamp>,
    /// Last failure signal.
    pub last_fail_at: Option<Timestamp>,
    /// Next expected ping: last ping plus interval (`next_expected_at`).
    pub deadline: Option<Timestamp>,
    /// Why it is Down.
    pub down_reason: Option<DownReason>,
    /// A Down alert was sent and its recovery notice has not been: stays open through pauses.
    pub incident_open: bool,
    /// A success ping arrived while paused (resume goes to Up instead of New).
    pub pinged_while_paused: bool,
    /// Time of the last Down alert.
    pub last_alert_at: Option<Timestamp>,
    /// Signals received (pings, starts, failures), also numbering the ping history.
    pub pings: u64,
}

/// Something the engine must do because of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The state changed (at the time it logically did, which may precede `now`).
    Transition {
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// When.
        at: Timestamp,
    },
    /// Send a Down alert (once per incident).
    Alert {
        /// Why.
        reason: DownReason,
        /// When it went Down.
        at: Timestamp,
    },
    /// Send a recovery notice (once per incident).
    Recovery {
        /// When it recovered.
        at: Timestamp,
    },
    /// A started run finished successfully after this long.
    RunFinished {
        /// Its duration.
        duration: SignedDuration,
    },
}

/// An input to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A successful ping (`/ping`, or exit code 0).
    Success(Timestamp),
    /// A run began (`/start`).
    Start(Timestamp),
    /// The job failed (`/fail`, or exit code 1–255).
    Fail(Timestamp, Option<u8>),
    /// The monitor was paused.
    Pause(Timestamp),
    /// The monitor was resumed.
    Resume(Timestamp),
    /// Time passed; re-evaluate deadlines.
    Tick(Timestamp),
    /// Interval or grace changed; recompute the deadline and re-evaluate.
    Retimed(Timestamp),
}

impl MonitorState {
    /// A monitor created at `at`: New, no deadline.
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

    /// A paused monitor created at `at`.
    pub fn new_paused(at: Timestamp) -> Self {
        Self {
            state: State::Paused,
            ..Self::new(at)
        }
    }

    /// `next_expected_at` as the API shows it: none while New or Paused.
    pub fn next_expected_at(&self) -> Option<Timestamp> {
        match self.state {
            State::New | State::Paused => None,
            _ => self.deadline,
        }
    }
}

struct Step {
    s: MonitorState,
    effects: Vec<Effect>,
}

impl Step {
    fn go(&mut self, to: State, at: Timestamp) {
        if self.s.state != to {
            self.effects.push(Effect::Transition {
                from: self.s.state,
                to,
                at,
            });
            self.s.state = to;
            self.s.since = at;
        }
    }

    fn down(&mut self, reason: DownReason, at: Timestamp) {
        self.go(State::Down, at);
        self.s.down_reason = Some(reason);
        self.s.run_started_at = None;
        if !self.s.incident_open {
            self.s.incident_open = true;
            self.s.last_alert_at = Some(at);
            self.effects.push(Effect::Alert { reason, at });
        }
    }

    fn up(&mut self, at: Timestamp, timing: &Timing) {
        self.go(State::Up, at);
        self.s.down_reason = None;
        self.s.deadline = at.checked_add(timing.interval).ok();
        if self.s.incident_open {
            self.s.incident_open = false;
            self.effects.push(Effect::Recovery { at });
        }
    }

    /// Applies every time-driven transition due at or before `now`.
    fn evaluate(&mut self, timing: &Timing, now: Timestamp) {
        loop {
            match (self.s.state, due(timing, &self.s)) {
                (State::Up, Some(at)) if at <= now => self.go(State::Late, at),
                (State::Late, Some(at)) if at <= now => self.down(DownReason::Missed, at),
                (State::Started, Some(at)) if at <= now => self.down(DownReason::RunTimeout, at),
                _ => return,
            }
        }
    }
}

/// When the next time-driven transition falls due, if any.
fn due(timing: &Timing, s: &MonitorState) -> Option<Timestamp> {
    match s.state {
        State::Up => s.deadline,
        State::Late => s.deadline.and_then(|d| d.checked_add(timing.grace).ok()),
        State::Started => s
            .run_started_at
            .and_then(|r| r.checked_add(timing.run_allowance()).ok()),
        State::New | State::Down | State::Paused => None,
    }
}

/// When the engine must tick this monitor next (`None`: only a signal can change it).
pub fn next_wakeup(timing: &Timing, s: &MonitorState) -> Option<Timestamp> {
    due(timing, s)
}

/// Whole intervals elapsed since the deadline while Down; 0 otherwise.
pub fn consecutive_misses(timing: &Timing, s: &MonitorState, now: Timestamp) -> u64 {
    let (State::Down, Some(deadline)) = (s.state, s.deadline) else {
        return 0;
    };
    if now <= deadline || timing.interval.is_zero() || timing.interval.is_negative() {
        return 0;
    }
    let elapsed = now.duration_since(deadline).as_secs();
    u64::try_from(elapsed / timing.interval.as_secs().max(1)).unwrap_or(0)
}

/// One step: the new state and the effects to carry out.
pub fn apply(timing: &Timing, state: &MonitorState, signal: Signal) -> (MonitorState, Vec<Effect>) {
    let mut st = Step {
        s: state.clone(),
        effects: Vec::new(),
    };
    match signal {
        Signal::Tick(now) => st.evaluate(timing, now),
        Signal::Success(at) => {
            st.s.pings += 1;
            st.s.last_ping_at = Some(at.max(st.s.last_ping_at.unwrap_or(at)));
            if st.s.state == State::Paused {
                st.s.pinged_while_paused = true;
            } else {
                if st.s.state == State::Started
                    && let Some(started) = st.s.run_started_at.take()
                {
                    st.effects.push(Effect::RunFinished {
                        duration: at.duration_since(started),
                    });
                }
                st.up(at, timing);
            }
        }
        Signal::Start(at) => {
            st.s.pings += 1;
            if st.s.state != State::Paused {
                st.s.run_started_at = Some(at);
                st.go(State::Started, at);
            }
        }
        Signal::Fail(at, exit_code) => {
            st.s.pings += 1;
            st.s.last_fail_at = Some(at);
            if st.s.state != State::Paused {
                st.down(DownReason::Failed { exit_code }, at);
            }
        }
        Signal::Pause(at) => {
            if st.s.state != State::Paused {
                st.s.pinged_while_paused = false;
                st.s.run_started_at = None;
                st.go(State::Paused, at);
            }
        }
        Signal::Resume(at) => {
            if st.s.state == State::Paused {
                match (st.s.pinged_while_paused, st.s.last_ping_at) {
                    (true, Some(last)) => {
                        st.go(State::Up, at);
                        st.s.down_reason = None;
                        st.s.deadline = last.checked_add(timing.interval).ok();
                        st.evaluate(timing, at);
                    }
                    _ => {
                        st.go(State::New, at);
                        st.s.deadline = None;
                    }
                }
                st.s.pinged_while_paused = false;
            }
        }
        Signal::Retimed(now) => {
            if matches!(st.s.state, State::Up | State::Late | State::Down) {
                st.s.deadline =
                    st.s.last_ping_at
                        .and_then(|p| p.checked_add(timing.interval).ok());
            }
            if st.s.state == State::Late && due(timing, &st.s).is_some_and(|d| d > now) {
                // The new timing gives more room: back to Up if the deadline moved past now.
                if st.s.deadline.is_some_and(|d| d > now) {
                    st.go(State::Up, now);
                }
            }
            st.evaluate(timing, now);
        }
    }
    (st.s, st.effects)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    const HOUR: Timing = Timing {
        interval: SignedDuration::from_secs(3600),
        grace: SignedDuration::from_secs(300),
    };

    fn run(timing: &Timing, signals: &[Signal]) -> (MonitorState, Vec<Effect>) {
        let mut s = MonitorState::new(t(0));
        let mut all = Vec::new();
        for sig in signals {
            let (n, e) = apply(timing, &s, *sig);
            s = n;
            all.extend(e);
        }
        (s, all)
    }

    fn alerts(e: &[Effect]) -> usize {
        e.iter()
            .filter(|e| matches!(e, Effect::Alert { .. }))
            .count()
    }

    fn recoveries(e: &[Effect]) -> usize {
        e.iter()
            .filter(|e| matches!(e, Effect::Recovery { .. }))
            .count()
    }

    use Signal::*;

    #[test]
    fn transition_table() {
        // (name, signals, final state, alerts, recoveries)
        let cases: Vec<(&str, Vec<Signal>, State, usize, usize)> = vec![
            (
                "new stays new on ticks",
                vec![Tick(t(100_000))],
                State::New,
                0,
                0,
            ),
            ("new to up on ping", vec![Success(t(10))], State::Up, 0, 0),
            (
                "up before deadline",
                vec![Success(t(0)), Tick(t(3599))],
                State::Up,
                0,
                0,
            ),
            (
                "up to late at deadline",
                vec![Success(t(0)), Tick(t(3600))],
                State::Late,
                0,
                0,
            ),
            (
                "late within grace",
                vec![Success(t(0)), Tick(t(3600)), Tick(t(3899))],
                State::Late,
                0,
                0,
            ),
            (
                "late to down after grace",
                vec![Success(t(0)), Tick(t(3600)), Tick(t(3900))],
                State::Down,
                1,
                0,
            ),
            (
                "up straight to down on a late tick",
                vec![Success(t(0)), Tick(t(9000))],
                State::Down,
                1,
                0,
            ),
            (
                "down alerts once over many ticks",
                vec![Success(t(0)), Tick(t(3900)), Tick(t(3900)), Tick(t(99_999))],
                State::Down,
                1,
                0,
            ),
            (
                "down to up recovers once",
                vec![
                    Success(t(0)),
                    Tick(t(3900)),
                    Success(t(4000)),
                    Success(t(4001)),
                ],
                State::Up,
                1,
                1,
            ),
            (
                "late to up is silent",
                vec![Success(t(0)), Tick(t(3700)), Success(t(3701))],
                State::Up,
                0,
                0,
            ),
            (
                "fail from new",
                vec![Fail(t(5), Some(3))],
                State::Down,
                1,
                0,
            ),
            (
                "fail from up",
                vec![Success(t(0)), Fail(t(5), None)],
                State::Down,
                1,
                0,
            ),
            (
                "fail from late",
                vec![Success(t(0)), Tick(t(3700)), Fail(t(3701), Some(1))],
                State::Down,
                1,
                0,
            ),
            (
                "fail while down does not realert",
                vec![Fail(t(5), Some(1)), Fail(t(6), Some(2)), Tick(t(99_999))],
                State::Down,
                1,
                0,
            ),
            (
                "fail then ping recovers",
                vec![Fail(t(5), Some(255)), Success(t(6))],
                State::Up,
                1,
                1,
            ),
            (
                "start from up",
                vec![Success(t(0)), Start(t(100))],
                State::Started,
                0,
                0,
            ),
            (
                "start then success",
                vec![Success(t(0)), Start(t(100)), Success(t(160))],
                State::Up,
                0,
                0,
            ),
            (
                "run timeout",
                vec![Success(t(0)), Start(t(100)), Tick(t(400))],
                State::Down,
                1,
                0,
            ),
            (
                "run within grace",
                vec![Success(t(0)), Start(t(100)), Tick(t(399))],
                State::Started,
                0,
                0,
            ),
            (
                "start from new then timeout",
                vec![Start(t(1)), Tick(t(301))],
                State::Down,
                1,
                0,
            ),
            (
                "start while down, finish recovers",
                vec![Fail(t(1), None), Start(t(2)), Success(t(3))],
                State::Up,
                1,
                1,
            ),
            (
                "start while down, timeout does not realert",
                vec![Fail(t(1), None), Start(t(2)), Tick(t(9999))],
                State::Down,
                1,
                0,
            ),
            (
                "paused ignores ticks",
                vec![Success(t(0)), Pause(t(1)), Tick(t(99_999))],
                State::Paused,
                0,
                0,
            ),
            (
                "paused ignores failures",
                vec![Pause(t(1)), Fail(t(2), Some(1)), Start(t(3))],
                State::Paused,
                0,
                0,
            ),
            (
                "ping while paused stays paused",
                vec![Pause(t(1)), Success(t(2))],
                State::Paused,
                0,
                0,
            ),
            (
                "resume without ping is new",
                vec![Success(t(0)), Pause(t(1)), Resume(t(50_000))],
                State::New,
                0,
                0,
            ),
            (
                "resume after paused ping is up",
                vec![Pause(t(1)), Success(t(100)), Resume(t(200))],
                State::Up,
                0,
                0,
            ),
            (
                "resume after an old paused ping goes down",
                vec![Pause(t(1)), Success(t(100)), Resume(t(100_000))],
                State::Down,
                1,
                0,
            ),
            (
                "incident stays open through pause",
                vec![Fail(t(1), None), Pause(t(2)), Resume(t(3)), Success(t(4))],
                State::Up,
                1,
                1,
            ),
            (
                "resume into down with incident open does not realert",
                vec![
                    Fail(t(1), None),
                    Pause(t(2)),
                    Success(t(3)),
                    Resume(t(100_000)),
                ],
                State::Down,
                1,
                0,
            ),
        ];
        for (name, signals, want, want_alerts, want_recoveries) in cases {
            let (s, e) = run(&HOUR, &signals);
            assert_eq!(s.state, want, "{name}: {e:?}");
            assert_eq!(alerts(&e), want_alerts, "{name}: alerts {e:?}");
            assert_eq!(recoveries(&e), want_recoveries, "{name}: recoveries {e:?}");
        }
    }

    #[test]
    fn grace_zero_skips_late() {
        let timing = Timing::from_secs(60, 0);
        let (s, e) = run(&timing, &[Success(t(0)), Tick(t(60))]);
        assert_eq!(s.state, State::Down);
        assert_eq!(alerts(&e), 1);
        // With grace 0 a run may take one interval.
        let (s, _) = run(&timing, &[Success(t(0)), Start(t(10)), Tick(t(69))]);
        assert_eq!(s.state, State::Started);
        let (s, _) = run(&timing, &[Success(t(0)), Start(t(10)), Tick(t(70))]);
        assert_eq!(s.state, State::Down);
    }

    #[test]
    fn transitions_carry_their_logical_times() {
        let (s, e) = run(&HOUR, &[Success(t(0)), Tick(t(10_000))]);
        assert_eq!(
            e,
            vec![
                Effect::Transition {
                    from: State::New,
                    to: State::Up,
                    at: t(0)
                },
                Effect::Transition {
                    from: State::Up,
                    to: State::Late,
                    at: t(3600)
                },
                Effect::Transition {
                    from: State::Late,
                    to: State::Down,
                    at: t(3900)
                },
                Effect::Alert {
                    reason: DownReason::Missed,
                    at: t(3900)
                },
            ]
        );
        assert_eq!(s.since, t(3900));
        assert_eq!(s.last_alert_at, Some(t(3900)));
        assert_eq!(s.down_reason, Some(DownReason::Missed));
    }

    #[test]
    fn run_duration_is_reported() {
        let (_, e) = run(&HOUR, &[Success(t(0)), Start(t(100)), Success(t(142))]);
        assert!(
            e.contains(&Effect::RunFinished {
                duration: SignedDuration::from_secs(42)
            }),
            "{e:?}"
        );
    }

    #[test]
    fn deadlines_and_wakeups() {
        let (s, _) = run(&HOUR, &[Success(t(0))]);
        assert_eq!(s.next_expected_at(), Some(t(3600)));
        assert_eq!(next_wakeup(&HOUR, &s), Some(t(3600)));
        let (s, _) = run(&HOUR, &[Success(t(0)), Tick(t(3600))]);
        assert_eq!(next_wakeup(&HOUR, &s), Some(t(3900)));
        let (s, _) = run(&HOUR, &[Success(t(0)), Start(t(10))]);
        assert_eq!(next_wakeup(&HOUR, &s), Some(t(310)));
        for signals in [vec![], vec![Fail(t(1), None)], vec![Pause(t(1))]] {
            let (s, _) = run(&HOUR, &signals);
            assert_eq!(next_wakeup(&HOUR, &s), None, "{:?}", s.state);
        }
        let (s, _) = run(&HOUR, &[Pause(t(1))]);
        assert_eq!(s.next_expected_at(), None);
    }

    #[test]
    fn consecutive_misses_count_whole_intervals_while_down() {
        let (s, _) = run(&HOUR, &[Success(t(0)), Tick(t(3900))]);
        assert_eq!(consecutive_misses(&HOUR, &s, t(3900)), 0);
        assert_eq!(consecutive_misses(&HOUR, &s, t(7199)), 0);
        assert_eq!(consecutive_misses(&HOUR, &s, t(7200)), 1);
        assert_eq!(consecutive_misses(&HOUR, &s, t(3600 + 5 * 3600 + 1)), 5);
        let (up, _) = run(&HOUR, &[Success(t(0))]);
        assert_eq!(
            consecutive_misses(&HOUR, &up, t(100_000)),
            0,
            "only while Down"
        );
        let (failed, _) = run(&HOUR, &[Fail(t(1), None)]);
        assert_eq!(
            consecutive_misses(&HOUR, &failed, t(100_000)),
            0,
            "no deadline without a ping"
        );
    }

    #[test]
    fn retiming_moves_the_deadline() {
        let (s, _) = run(&HOUR, &[Success(t(0)), Tick(t(3700))]);
        assert_eq!(s.state, State::Late);
        let longer = Timing::from_secs(7200, 300);
        let (s2, e) = apply(&longer, &s, Retimed(t(3701)));
        assert_eq!(s2.state, State::Up, "{e:?}");
        assert_eq!(s2.deadline, Some(t(7200)));
        let shorter = Timing::from_secs(60, 0);
        let (s3, e) = apply(&shorter, &s2, Retimed(t(3702)));
        assert_eq!(s3.state, State::Down);
        assert_eq!(alerts(&e), 1);
    }

    #[test]
    fn tickstem_status_mapping() {
        assert_eq!(State::Paused.tickstem_status(), "paused");
        assert_eq!(State::Down.tickstem_status(), "failing");
        for s in [State::New, State::Up, State::Started, State::Late] {
            assert_eq!(s.tickstem_status(), "active");
        }
    }

    #[test]
    fn ping_counts_and_state_round_trip_through_json() {
        let (s, _) = run(&HOUR, &[Success(t(0)), Start(t(1)), Fail(t(2), Some(4))]);
        assert_eq!(s.pings, 3);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MonitorState>(&json).unwrap(), s);
    }
}
