//! Deadlines that came due and wait for the engine thread, most urgent first.
//!
//! A cron schedule shared by many monitors makes them all due at one instant: a third of
//! a million monitors on `* * * * *` with graces of 0 to 9 s fall due together at the
//! top of the minute, and the engine works through them in rounds for seconds. In the
//! order they fell due a monitor with no grace, whose Down is due now, waits
//! behind a hundred thousand that only turn Late and have seconds to go before Down; in
//! the order of when each one's Down is due, the Downs of every second are applied in
//! that second, and a Late that could not be applied before its Down was due is applied
//! as the Down it has become, in one write instead of two. How the herd shares the engine
//! thread with pings and other commands is the [`super::intake`]'s business.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;

use crate::core::monitor::state::{MonitorState, State, Timing, next_wakeup};

/// Due monitors by urgency, then by monitor number; each at most once.
///
/// Ties go by number: a herd is thousands of monitors with one urgency, and the store
/// keeps everything a step writes (state record, timeline entry) under the monitor's
/// number ([`crate::core::store::monitors::keys`]). Taken in number order, a herd's
/// writes walk sled's leaves in order, and each leaf is fetched once for all the monitors
/// it holds; in any other order (by key, as the scheduler fires a tie) nearly every write
/// fetched a leaf of its own. Numbers also compare cheaply: comparing keys on every move
/// in the heap took a fifth of the engine thread. Arrival breaks what is left of a tie
/// (keys of no known monitor, all number 0).
///
/// A monitor can leave out of turn ([`Herd::take`]): a command for it that came after its
/// deadline fired goes after that deadline, whatever the herd's order. Its place in the
/// heap is then stale and skipped when it comes up, so a take costs no search.
#[derive(Debug, Default)]
pub(super) struct Herd {
    heap: BinaryHeap<Reverse<(Place, u64, Arc<str>)>>,
    members: HashSet<Arc<str>>,
    /// Arrivals so far: the last tie-breaker.
    arrivals: u64,
}

/// Where a due monitor goes in the herd: when its Down is due (see [`urgency`]), then
/// its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Place {
    pub(super) urgency: Timestamp,
    pub(super) num: u64,
}

impl Herd {
    /// Queues `key` at `place`. A key already waiting keeps its place: one step at the
    /// time it is taken decides for both.
    pub(super) fn push(&mut self, key: &str, place: Place) {
        if self.members.contains(key) {
            return;
        }
        let key: Arc<str> = key.into();
        self.members.insert(key.clone());
        self.arrivals += 1;
        self.heap.push(Reverse((place, self.arrivals, key)));
    }

    /// The most urgent key, if it is due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Timestamp) -> Option<Arc<str>> {
        self.skip_stale();
        match self.heap.peek() {
            Some(Reverse((place, ..))) if place.urgency <= now => self.pop(),
            _ => None,
        }
    }

    /// The most urgent key.
    pub(super) fn pop(&mut self) -> Option<Arc<str>> {
        while let Some(Reverse((.., key))) = self.heap.pop() {
            if self.members.remove(&key) {
                return Some(key);
            }
        }
        None
    }

    /// Takes `key` out of turn; `true` if it was waiting.
    pub(super) fn take(&mut self, key: &str) -> bool {
        let taken = self.members.remove(key);
        if self.members.is_empty() {
            self.heap.clear();
        }
        taken
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((.., key))) = self.heap.peek() {
            if self.members.contains(key) {
                return;
            }
            self.heap.pop();
        }
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

    /// Due at second `s`, number 0: ties go by arrival.
    fn at_s(s: i64) -> Place {
        Place {
            urgency: at(s),
            num: 0,
        }
    }

    #[test]
    fn keys_leave_by_urgency_then_number_then_arrival() {
        let mut herd = Herd::default();
        let place = |s: i64, num: u64| Place {
            urgency: at(s),
            num,
        };
        for (key, p) in [
            ("c", place(5, 7)),
            ("a", place(9, 1)),
            ("b", place(5, 3)),
            ("d", place(0, 9)),
            ("c", place(1, 7)),
            ("x", place(5, 0)),
            ("y", place(5, 0)),
        ] {
            herd.push(key, p);
        }
        let order: Vec<String> = std::iter::from_fn(|| herd.pop().map(|k| k.to_string())).collect();
        assert_eq!(
            order,
            ["d", "x", "y", "b", "c", "a"],
            "ties leave by number (equal numbers in the order they came); a key queued twice keeps its place"
        );
        assert!(herd.is_empty());
    }

    #[test]
    fn only_keys_due_by_now_leave_on_time_and_a_key_taken_out_of_turn_leaves_once() {
        let mut herd = Herd::default();
        for (key, u) in [("a", 1), ("b", 2), ("c", 3), ("d", 9)] {
            herd.push(key, at_s(u));
        }
        assert!(herd.take("a"), "a was waiting");
        assert!(!herd.take("a"), "and left");
        assert!(!herd.take("z"));
        assert_eq!(
            herd.pop_due(at(2)).as_deref(),
            Some("b"),
            "a's place is skipped"
        );
        assert_eq!(herd.pop_due(at(2)), None, "c is not due at 2");
        assert!(herd.take("c"));
        assert_eq!(herd.pop_due(at(100)).as_deref(), Some("d"));
        assert_eq!(herd.pop(), None);
        assert!(herd.is_empty());
        herd.push("a", at_s(5));
        assert_eq!(herd.pop().as_deref(), Some("a"), "a key may come due again");
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
