//! The state machine's tests, with explicit timestamps: the helpers here, and one file per
//! kind of test (every signal from every state, the written-down rules, random sequences
//! against the invariants, schedules, and Jobs).

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

fn is_closed(e: &Effect) -> bool {
    matches!(e, Effect::Closed { .. })
}

fn closed(at: i64) -> Effect {
    Effect::Closed { at: t(at) }
}

fn ran(s: i64) -> Effect {
    Effect::RunFinished { duration: secs(s) }
}

fn failed(code: Option<u8>) -> DownReason {
    DownReason::Failed { exit_code: code }
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

mod invariants;
mod jobs;
mod rules;
mod schedules;
mod table;
