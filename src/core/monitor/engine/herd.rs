//! Deadlines that came due and wait for the engine thread, most urgent first.
//!
//! A cron schedule shared by many monitors makes them all due at one instant: a third of
//! a million monitors on `* * * * *` with graces of 0 to 9 s fall due together at the
//! top of the minute, and the engine works through them in rounds for seconds. In the
//! order they fell due (ties by key) a monitor with no grace, whose Down is due now, waits
//! behind a hundred thousand that only turn Late and have seconds to go before Down; in
//! the order of when each one's Down is due, the Downs of every second are applied in
//! that second, and a Late that could not be applied before its Down was due is applied
//! as the Down it has become, in one write instead of two.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use jiff::Timestamp;

use crate::core::monitor::state::{MonitorState, State, Timing, next_wakeup};

/// Due monitors by urgency, then key.
#[derive(Debug, Default)]
pub(super) struct Herd {
    heap: BinaryHeap<Reverse<(Timestamp, String)>>,
}

impl Herd {
    /// Queues `key`, most urgent at `urgency` (see [`urgency`]).
    pub(super) fn push(&mut self, key: String, urgency: Timestamp) {
        self.heap.push(Reverse((urgency, key)));
    }

    /// The most urgent key.
    pub(super) fn pop(&mut self) -> Option<String> {
        self.heap.pop().map(|Reverse((_, key))| key)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// When a due monitor in `state` would be Down if nothing came first: the end of the
/// grace for a deadline that only makes it Late, its wakeup otherwise.
pub(super) fn urgency(timing: &Timing<'_>, state: &MonitorState) -> Timestamp {
    let Some(wakeup) = next_wakeup(timing, state) else {
        return Timestamp::MIN;
    };
    match state.state {
        State::New | State::Up => wakeup.checked_add(timing.grace).unwrap_or(wakeup),
        _ => wakeup,
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn keys_leave_by_urgency_then_key() {
        let mut herd = Herd::default();
        for (key, u) in [("c", 5), ("a", 9), ("b", 5), ("d", 0)] {
            herd.push(key.into(), at(u));
        }
        let order: Vec<String> = std::iter::from_fn(|| herd.pop()).collect();
        assert_eq!(order, ["d", "b", "c", "a"]);
        assert!(herd.is_empty());
    }

    #[test]
    fn a_deadline_that_only_makes_a_monitor_late_is_as_urgent_as_its_down() {
        let mut up = MonitorState::new(at(0));
        up.state = State::Up;
        up.deadline = Some(at(60));
        let grace =
            |g: i64| Timing::every(SignedDuration::from_secs(60), SignedDuration::from_secs(g));
        assert_eq!(urgency(&grace(0), &up), at(60));
        assert_eq!(urgency(&grace(7), &up), at(67));
        let mut late = up.clone();
        late.state = State::Late;
        assert_eq!(urgency(&grace(7), &late), at(67), "its wakeup is its Down");
        let mut down = up;
        down.state = State::Down;
        assert_eq!(
            urgency(&grace(7), &down),
            Timestamp::MIN,
            "nothing due: at once"
        );
    }
}
