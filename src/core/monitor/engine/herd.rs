//! Deadlines that came due and wait for the engine thread: Downs most urgent first.
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
use std::collections::BinaryHeap;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;

use super::snapshot::Monitors;
use crate::core::monitor::state::{MonitorState, State, Timing, next_wakeup};

/// Due monitors, each at most once: those whose Down is due by now most urgent first,
/// the rest (deadlines that only make a monitor Late yet) by monitor number.
///
/// The store keeps everything a step writes (state record, timeline entry) under the
/// monitor's number ([`crate::core::store::monitors::keys`]), and a sled leaf holds a
/// dozen or so of them. A herd taken in number order walks sled's leaves in order and
/// fetches each once for all the herd's monitors it holds; in any other order (by
/// urgency, or by key as the scheduler fires a tie) nearly every write fetched a leaf of
/// its own. That is why the Lates go by number alone: at the top of the minute they are
/// the whole herd, every monitor on the schedule, while the Downs due in any one second
/// are only those of one grace. Which Late is written first matters little, since each
/// turns Down when its own Down comes due, wherever it waits. Among Downs due at one
/// instant, number order is the tie-breaker for the same reason. Numbers also compare
/// cheaply: comparing keys on every move in a heap took a fifth of the engine thread.
/// Arrival breaks what is left of a tie (keys of no known monitor, all number 0).
///
/// A monitor can leave out of turn ([`Herd::take`]), and every monitor sits in both
/// orders: a place whose monitor has left, or left and come back, is stale and skipped
/// when it comes up (members are kept with their arrival), so leaving costs no search.
#[derive(Debug, Default)]
pub(super) struct Herd {
    by_urgency: BinaryHeap<Reverse<(Place, u64, Arc<str>)>>,
    by_number: BinaryHeap<Reverse<(u64, u64, Arc<str>)>>,
    /// Who waits, with their arrival.
    members: foldhash::HashMap<Arc<str>, u64>,
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
    pub(super) fn push(&mut self, key: Arc<str>, place: Place) {
        if self.members.contains_key(&key) {
            return;
        }
        self.compact();
        self.arrivals += 1;
        self.members.insert(key.clone(), self.arrivals);
        self.by_number
            .push(Reverse((place.num, self.arrivals, key.clone())));
        self.by_urgency.push(Reverse((place, self.arrivals, key)));
    }

    /// The most urgent key, if its Down is due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Timestamp) -> Option<Arc<str>> {
        while let Some(Reverse((place, arrival, key))) = self.by_urgency.peek() {
            if !self.waits(key, *arrival) {
                self.by_urgency.pop();
                continue;
            }
            if place.urgency > now {
                return None;
            }
            let key = key.clone();
            self.by_urgency.pop();
            return self.leave(key);
        }
        None
    }

    /// The waiting key of the lowest number.
    pub(super) fn pop(&mut self) -> Option<Arc<str>> {
        while let Some(Reverse((_, arrival, key))) = self.by_number.pop() {
            if self.waits(&key, arrival) {
                return self.leave(key);
            }
        }
        None
    }

    /// Takes `key` out of turn; `true` if it was waiting.
    pub(super) fn take(&mut self, key: &str) -> bool {
        let taken = self.members.remove(key).is_some();
        if self.members.is_empty() {
            self.by_urgency.clear();
            self.by_number.clear();
        }
        taken
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Drops stale places once they could make up half of either heap. A key that left
    /// through one order leaves its place in the other behind, and while pings keep the
    /// queue busy the Lates' order is never walked, so its stale places would pile up
    /// with every deadline (a million a minute at a million monitors on one schedule).
    fn compact(&mut self) {
        let live = self.members.len();
        let members = &self.members;
        let waits = |key: &Arc<str>, arrival: &u64| members.get(key) == Some(arrival);
        if self.by_number.len() > 2 * live + 1024 {
            self.by_number.retain(|Reverse((_, a, k))| waits(k, a));
        }
        if self.by_urgency.len() > 2 * live + 1024 {
            self.by_urgency.retain(|Reverse((_, a, k))| waits(k, a));
        }
    }

    /// Whether the place of `key` that came at `arrival` is live.
    fn waits(&self, key: &str, arrival: u64) -> bool {
        self.members.get(key) == Some(&arrival)
    }

    fn leave(&mut self, key: Arc<str>) -> Option<Arc<str>> {
        self.take(&key);
        Some(key)
    }
}

/// Deadlines that fired, each with its place in the herd as the readers' view has its
/// monitor (one of no known monitor goes first, and its step finds nothing to do).
///
/// Placed where the deadlines are forwarded to the engine thread, not on it: looking a
/// monitor up among a million misses the cache several times, and the engine thread,
/// which sets the pace in a herd, looks each one up again when it steps it. The place only
/// orders the herd; the step decides from the monitor as it is then. The read lock is
/// taken per [`PLACED_PER_LOCK`] keys, so a herd of a hundred thousand does not keep a
/// round from being published for as long as placing them all takes.
pub(super) fn placed(monitors: &RwLock<Monitors>, keys: Vec<Arc<str>>) -> Vec<(Arc<str>, Place)> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(PLACED_PER_LOCK) {
        let monitors = monitors.read().unwrap_or_else(|p| p.into_inner());
        out.extend(chunk.iter().map(|key| {
            let place = match monitors.get(key) {
                Some(m) => Place {
                    urgency: urgency(&m.def.timing(), &m.state),
                    num: m.num,
                },
                None => Place {
                    urgency: Timestamp::MIN,
                    num: 0,
                },
            };
            (key.clone(), place)
        }));
    }
    out
}

/// Keys placed under one hold of the readers' lock (see [`placed`]).
const PLACED_PER_LOCK: usize = 1024;

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

    /// A herd of `(key, due second, number)`, pushed in that order.
    fn herd_of(members: &[(&str, i64, u64)]) -> Herd {
        let mut herd = Herd::default();
        for &(key, s, num) in members {
            herd.push(
                key.into(),
                Place {
                    urgency: at(s),
                    num,
                },
            );
        }
        herd
    }

    const MEMBERS: [(&str, i64, u64); 7] = [
        ("c", 5, 7),
        ("a", 9, 1),
        ("b", 5, 3),
        ("d", 0, 9),
        ("c", 1, 7),
        ("x", 5, 0),
        ("y", 5, 0),
    ];

    #[test]
    fn downs_due_leave_by_urgency_then_number_then_arrival() {
        let mut herd = herd_of(&MEMBERS);
        let due: Vec<String> =
            std::iter::from_fn(|| herd.pop_due(at(5)).map(|k| k.to_string())).collect();
        assert_eq!(
            due,
            ["d", "x", "y", "b", "c"],
            "a key queued twice keeps its first place; equal numbers leave in the order they came"
        );
        assert_eq!(herd.pop().as_deref(), Some("a"), "not due by 5");
        assert!(herd.is_empty());
    }

    #[test]
    fn lates_leave_by_number_whatever_their_urgency() {
        let mut herd = herd_of(&MEMBERS);
        let order: Vec<String> = std::iter::from_fn(|| herd.pop().map(|k| k.to_string())).collect();
        assert_eq!(order, ["x", "y", "a", "b", "c", "d"]);
        assert!(herd.is_empty());
    }

    #[test]
    fn stale_places_do_not_pile_up_while_only_due_downs_leave() {
        let mut herd = Herd::default();
        for i in 0..100_000u64 {
            let key = format!("m{i}");
            herd.push(
                key.as_str().into(),
                Place {
                    urgency: at(0),
                    num: i,
                },
            );
            assert!(herd.pop_due(at(0)).is_some());
        }
        assert!(herd.is_empty());
        herd.push(
            "last".into(),
            Place {
                urgency: at(0),
                num: 0,
            },
        );
        assert!(
            herd.by_number.len() <= 2 * 1024 + 2,
            "{} places kept for one member",
            herd.by_number.len()
        );
    }

    #[test]
    fn a_key_that_left_and_came_back_has_only_its_new_place() {
        let mut herd = herd_of(&[("a", 1, 1), ("b", 2, 2)]);
        assert!(herd.take("a"));
        herd.push(
            "a".into(),
            Place {
                urgency: at(3),
                num: 3,
            },
        );
        assert_eq!(
            herd.pop_due(at(2)).as_deref(),
            Some("b"),
            "a's old place is stale"
        );
        assert_eq!(herd.pop_due(at(2)), None);
        assert_eq!(herd.pop().as_deref(), Some("a"));
        assert_eq!(herd.pop(), None, "and left once");
        assert!(herd.is_empty());
    }

    #[test]
    fn only_keys_due_by_now_leave_on_time_and_a_key_taken_out_of_turn_leaves_once() {
        let mut herd = Herd::default();
        for (key, u) in [("a", 1), ("b", 2), ("c", 3), ("d", 9)] {
            herd.push(key.into(), at_s(u));
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
        herd.push("a".into(), at_s(5));
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
