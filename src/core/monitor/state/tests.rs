//! The state machine's rules, one test per rule or case, with explicit timestamps.

use super::*;
use crate::core::channel::MaintenanceWindow;
use crate::core::cron::Dialect;
use crate::core::cron::Schedule;
use crate::core::monitor::jobs::JobOutcome;
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
                next.run_started_at.is_none() || matches!(next.state, State::Started | State::Down),
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
    let k8s = Schedule::parse_as("30 2 * * *", Some("Europe/Amsterdam"), Dialect::CronJob).unwrap();
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
