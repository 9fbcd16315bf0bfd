//! The signal a ping makes, whether this replica took it or another one relayed it.
//!
//! A relayed ping is applied with the instant the replica took it, not the instant the
//! leader got to it, so the relay's delay moves no deadline. That instant is never later
//! than the leader's own clock, though: the ping was committed before the leader read it,
//! so a later instant can only be a replica's clock running ahead, and a deadline pushed
//! into the future by a skewed clock would hide a missed run.
//!
//! The state machine takes the rest: a relayed ping older than the monitor's newest state
//! (another ping applied meanwhile) counts, but never moves `since` or the deadline back
//! (the deadline follows the newest success); one taken before a deadline the leader has
//! already applied (Down) is a success now, as a late ping would be, and recovers the
//! monitor.

use jiff::Timestamp;

use super::{PingInput, PingKind};
use crate::core::monitor::state::Signal;

/// The signal of ping `input` taken at `at`.
pub(super) fn ping_signal(input: &PingInput, at: Timestamp) -> Signal {
    match (input.kind, input.rid.clone()) {
        (PingKind::Success, Some(rid)) => Signal::SuccessFor(at, rid),
        (PingKind::Success, None) => Signal::Success(at),
        (PingKind::Start, _) => Signal::Start(at),
        (PingKind::Fail, _) => match &input.stopped_alert {
            Some(alert) => Signal::PipelineStopped(at, alert.clone()),
            None => Signal::Fail(at, input.exit_code),
        },
    }
}

/// The instant a relayed ping taken at `at` (by another replica's clock) is applied
/// with, by a leader whose clock reads `now`.
pub(super) fn relayed_at(at: Timestamp, now: Timestamp) -> Timestamp {
    at.min(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::state::{self, Effect, MonitorState, State, Timing};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    /// A monitor on a 60 s interval with 10 s of grace, pinged at `t(0)`.
    fn pinged() -> (Timing<'static>, MonitorState) {
        let timing = Timing::from_secs(60, 10);
        let created = MonitorState::created(&timing, t(-100), false);
        let (st, _) = state::apply(&timing, &created, &Signal::Success(t(0)));
        (timing, st)
    }

    #[test]
    fn a_relayed_ping_keeps_the_instant_it_was_taken_unless_that_is_ahead_of_the_leader() {
        assert_eq!(relayed_at(t(5), t(7)), t(5));
        assert_eq!(relayed_at(t(9), t(7)), t(7), "a clock running ahead");
    }

    #[test]
    fn a_ping_older_than_the_newest_state_counts_but_moves_nothing_back() {
        let (timing, st) = pinged();
        let (late, _) = state::apply(&timing, &st, &Signal::Success(t(30)));
        // Relayed, taken at t(20): applied after the ping of t(30).
        let signal = ping_signal(&PingInput::success(), relayed_at(t(20), t(31)));
        let (next, effects) = state::apply(&timing, &late, &signal);
        assert_eq!(next.pings, late.pings + 1);
        assert_eq!(next.last_ping_at, Some(t(30)));
        assert_eq!(
            next.deadline,
            Some(t(90)),
            "the deadline follows the newest ping"
        );
        assert_eq!(next.since, late.since);
        assert!(effects.is_empty(), "{effects:?}");
    }

    #[test]
    fn a_ping_taken_before_a_deadline_the_leader_applied_recovers_the_monitor() {
        let (timing, st) = pinged();
        // Down at t(70); the relayed ping of t(65) reaches the leader at t(71).
        let (down, _) = state::apply(&timing, &st, &Signal::Tick(t(70)));
        assert_eq!(down.state, State::Down);
        let signal = ping_signal(&PingInput::success(), relayed_at(t(65), t(71)));
        let (next, effects) = state::apply(&timing, &down, &signal);
        assert_eq!(next.state, State::Up);
        assert_eq!(next.since, t(70), "since never goes back");
        assert_eq!(next.deadline, Some(t(125)));
        assert!(effects.iter().any(|e| matches!(e, Effect::Recovery { .. })));
    }

    #[test]
    fn a_ping_taken_before_a_deadline_not_applied_yet_keeps_the_monitor_up() {
        let (timing, st) = pinged();
        // Relayed ping of t(65), read at t(75): past deadline plus grace, no tick yet.
        let signal = ping_signal(&PingInput::success(), relayed_at(t(65), t(75)));
        let (next, effects) = state::apply(&timing, &st, &signal);
        assert_eq!(next.state, State::Up);
        assert_eq!(next.deadline, Some(t(125)));
        assert!(effects.is_empty(), "{effects:?}");
        // The deadline the tick then brings is judged from the relayed ping.
        let (ticked, _) = state::apply(&timing, &next, &Signal::Tick(t(76)));
        assert_eq!(ticked.state, State::Up);
    }

    #[test]
    fn the_kind_run_and_exit_code_make_the_signal() {
        let mut p = PingInput::success();
        p.rid = Some("job-1".into());
        assert_eq!(
            ping_signal(&p, t(1)),
            Signal::SuccessFor(t(1), "job-1".into())
        );
        p.kind = PingKind::Fail;
        p.exit_code = Some(3);
        assert_eq!(ping_signal(&p, t(1)), Signal::Fail(t(1), Some(3)));
        p.kind = PingKind::Start;
        assert_eq!(ping_signal(&p, t(1)), Signal::Start(t(1)));
    }
}
