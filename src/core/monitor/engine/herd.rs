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

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;

use super::types::Monitor;
use crate::core::monitor::state::{MonitorState, State, Timing, next_wakeup};

/// Due monitors, each at most once, in the order their Downs come due: those whose Down
/// is due by now leave first, and the rest (deadlines that only make a monitor Late yet)
/// leave in the same order when nothing else waits.
///
/// Among Downs due at one instant the monitor's number breaks the tie: the store keeps
/// what a step writes under that number (the state file's slots are in number order), so
/// a herd's writes go through the file in order. Arrival breaks what is left of a tie
/// (keys of no known monitor, all number 0).
///
/// The places are kept in a B-tree, not a binary heap: a herd falls due at a handful of
/// instants (one per grace on a shared schedule), so every Down leaves from the tree's
/// first leaf, already in the cache, where a heap of a third of a million places walked
/// from its root to a leaf for each one (and its second heap, for the Lates by number,
/// kept as many stale places again). Together they took a fifth of the engine thread in a
/// herd.
#[derive(Debug, Default)]
pub(super) struct Herd {
    order: BTreeMap<(Place, u64), Arc<str>>,
    /// Who waits, with their place and arrival: their entry in [`Self::order`].
    members: foldhash::HashMap<Arc<str>, (Place, u64)>,
    /// Arrivals so far: the last tie-breaker.
    arrivals: u64,
}

/// Where a due monitor goes in the herd: when its Down is due (see [`urgency`]), then
/// its number.
///
/// Kept small, since a herd holds a third of a million: whole microseconds, rounded up (a
/// Down leaves at most a microsecond after it is due). The scheduler keeps a smaller form
/// beside each armed deadline ([`Tie`]), and the place is rebuilt from it when it fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Place {
    /// Microseconds since the epoch.
    urgency: i64,
    num: u64,
}

impl Place {
    pub(super) fn new(urgency: Timestamp, num: u64) -> Self {
        let micros = urgency.as_microsecond();
        let rounded_down = Timestamp::from_microsecond(micros).is_ok_and(|t| t < urgency);
        Self {
            urgency: micros.saturating_add(i64::from(rounded_down)),
            num,
        }
    }

    /// `m`'s place, were its deadline to fire as it is now.
    #[cfg(test)]
    pub(super) fn of(m: &Monitor) -> Self {
        Self::new(urgency(&m.def.timing(), &m.state), m.num)
    }

    /// Whether its Down is due by `now`.
    pub(super) fn is_due(&self, now: Timestamp) -> bool {
        self.urgency <= now.as_microsecond()
    }

    /// How long after its Down was due `now` is (zero before).
    pub(super) fn late_at(&self, now: Timestamp) -> std::time::Duration {
        let late = now.as_microsecond().saturating_sub(self.urgency);
        std::time::Duration::from_micros(u64::try_from(late).unwrap_or(0))
    }

    /// Whether it is the place of no known monitor.
    pub(super) fn is_unknown(&self) -> bool {
        *self == Self::new(Timestamp::MIN, 0)
    }
}

impl Herd {
    /// Queues `key` at `place`. A key already waiting keeps its place: one step at the
    /// time it is taken decides for both.
    pub(super) fn push(&mut self, key: Arc<str>, place: Place) {
        if self.members.contains_key(&key) {
            return;
        }
        self.arrivals += 1;
        self.members.insert(key.clone(), (place, self.arrivals));
        self.order.insert((place, self.arrivals), key);
    }

    /// The most urgent key, if its Down is due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Timestamp) -> Option<Arc<str>> {
        let ((place, _), _) = self.order.first_key_value()?;
        if !place.is_due(now) {
            return None;
        }
        self.pop()
    }

    /// The most urgent key, due or not.
    pub(super) fn pop(&mut self) -> Option<Arc<str>> {
        let (_, key) = self.order.pop_first()?;
        self.members.remove(&key);
        Some(key)
    }

    /// Takes `key` out of turn; `true` if it was waiting.
    pub(super) fn take(&mut self, key: &str) -> bool {
        match self.members.remove(key) {
            Some(at) => {
                self.order.remove(&at);
                true
            }
            None => false,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }
}

/// Deadlines placed as the readers' view has their monitors (one of no known monitor goes
/// first, and its step finds nothing to do): what the scheduler fires them with, for tests
/// that hand the worker its deadlines themselves.
#[cfg(test)]
pub(super) fn placed(
    monitors: &std::sync::RwLock<super::snapshot::Monitors>,
    keys: Vec<Arc<str>>,
) -> Vec<(Arc<str>, Place)> {
    let monitors = monitors.read().unwrap_or_else(|p| p.into_inner());
    keys.into_iter()
        .map(|key| {
            let place = monitors
                .get(&key)
                .map_or(Place::new(Timestamp::MIN, 0), Place::of);
            (key, place)
        })
        .collect()
}

/// A monitor's [`Place`] as the scheduler keeps it beside its armed deadline (its tie
/// among deadlines of one instant): how long after the deadline its Down is due, in
/// milliseconds rounded up (up to 49 days), then its number's low 32 bits, in one word.
/// A full place there took 16 bytes more per armed monitor in each of the scheduler's
/// two maps, about 45 MB at a million monitors; for deadlines of one instant this orders
/// them as their places do (numbers past 2³² only break ties differently).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tie(u64);

impl Tie {
    /// `m`'s tie for its deadline `at`.
    pub(super) fn of(m: &Monitor, at: Timestamp) -> Self {
        let urgency = urgency(&m.def.timing(), &m.state);
        let after = u128::try_from(urgency.duration_since(at).as_micros()).unwrap_or(0);
        let ms = u64::try_from(after.div_ceil(1000)).unwrap_or(u64::MAX);
        Self((ms.min(u64::from(u32::MAX)) << 32) | (m.num & u64::from(u32::MAX)))
    }

    /// The place of a monitor whose deadline `at` fired with this tie.
    pub(super) fn place(self, at: Timestamp) -> Place {
        let after = jiff::SignedDuration::from_millis((self.0 >> 32) as i64);
        Place::new(
            at.saturating_add(after).unwrap_or(at),
            self.0 & u64::from(u32::MAX),
        )
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
        Place::new(at(s), 0)
    }

    /// A herd of `(key, due second, number)`, pushed in that order.
    fn herd_of(members: &[(&str, i64, u64)]) -> Herd {
        let mut herd = Herd::default();
        for &(key, s, num) in members {
            herd.push(key.into(), Place::new(at(s), num));
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
    fn lates_leave_in_the_order_their_downs_come_due() {
        let mut herd = herd_of(&MEMBERS);
        let order: Vec<String> = std::iter::from_fn(|| herd.pop().map(|k| k.to_string())).collect();
        assert_eq!(order, ["d", "x", "y", "b", "c", "a"]);
        assert!(herd.is_empty());
    }

    #[test]
    fn a_key_taken_out_of_turn_leaves_no_place_behind() {
        let mut herd = Herd::default();
        for i in 0..10_000u64 {
            let key = format!("m{i}");
            herd.push(key.as_str().into(), Place::new(at(0), i));
            assert!(herd.take(&key));
        }
        assert!(herd.is_empty());
        assert!(herd.order.is_empty(), "{} places kept", herd.order.len());
    }

    #[test]
    fn a_key_that_left_and_came_back_has_only_its_new_place() {
        let mut herd = herd_of(&[("a", 1, 1), ("b", 2, 2)]);
        assert!(herd.take("a"));
        herd.push("a".into(), Place::new(at(3), 3));
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
    fn a_tie_gives_back_the_place_to_the_millisecond_and_orders_as_places_do() {
        use crate::core::monitor::engine::types::sample;
        let at0 = at(60);
        let mut places = Vec::new();
        for (grace, num) in [(7, 3), (0, 9), (7, 1), (2, 5)] {
            let mut m = sample("m", State::Up);
            m.num = num;
            m.def.grace_secs = grace;
            m.state.deadline = Some(at0);
            let tie = Tie::of(&m, at0);
            assert_eq!(tie.place(at0), Place::of(&m), "grace {grace}, number {num}");
            places.push((tie, Place::of(&m)));
        }
        let mut by_tie = places.clone();
        by_tie.sort_by_key(|(tie, _)| *tie);
        places.sort_by_key(|(_, place)| *place);
        assert_eq!(by_tie, places);
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
