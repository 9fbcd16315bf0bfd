//! Deadline scheduling for many monitors without polling them all.
//!
//! [`DeadlineQueue`] keeps one deadline per key in an ordered set plus a map from key to its
//! armed deadline, so arming, re-arming and disarming are O(log n) and the earliest deadline
//! is always at hand. The driver started by [`spawn`] sleeps exactly until that earliest
//! deadline and is woken early by new commands. All of its time comes from tokio's clock,
//! mapped to wall time by [`Clock`], so the whole engine runs on a paused, virtual clock in
//! tests.

use std::collections::BTreeSet;
use std::hash::Hash;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How far ahead [`Clock::instant_for`] looks when a wall time has no tokio instant (beyond
/// what `Instant` can hold): the scheduler then wakes, sees nothing due and sleeps again.
const FAR_AHEAD: Duration = Duration::from_secs(86_400);

/// Most commands the driver takes, and most deadlines it fires, in one pass (see [`drive`]).
const PER_PASS: usize = 4096;

/// Wall time derived from tokio's monotonic clock and one anchor pair, so the engine and its
/// tests share a single notion of "now" (virtual under `tokio::time::pause`), and deadlines
/// in wall time convert to instants to sleep until, exactly and in both directions.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: Timestamp,
    mono: Instant,
}

impl Clock {
    /// Anchors at the current wall and tokio times (the production clock).
    pub fn new() -> Self {
        Self::starting_at(Timestamp::now())
    }

    /// Anchors a chosen wall time at the current tokio time, so tests get reproducible
    /// timestamps.
    pub fn starting_at(wall: Timestamp) -> Self {
        Self {
            wall,
            mono: Instant::now(),
        }
    }

    /// The current wall time: the anchor plus tokio time elapsed since it.
    pub fn now(&self) -> Timestamp {
        self.timestamp_at(Instant::now())
    }

    /// The wall time of a tokio instant, for reporting when something fired.
    pub fn timestamp_at(&self, instant: Instant) -> Timestamp {
        let (delta, ahead) = match instant.checked_duration_since(self.mono) {
            Some(d) => (d, true),
            None => (self.mono.duration_since(instant), false),
        };
        let delta = SignedDuration::try_from(delta).unwrap_or(SignedDuration::MAX);
        let at = if ahead {
            self.wall.checked_add(delta)
        } else {
            self.wall.checked_sub(delta)
        };
        at.unwrap_or(if ahead {
            Timestamp::MAX
        } else {
            Timestamp::MIN
        })
    }

    /// The tokio instant at which wall time `at` is reached, to sleep until. Exact where
    /// `Instant` can represent it; otherwise the anchor for past times (already due) or a day
    /// from now for absurdly distant ones (the caller re-checks after waking).
    pub fn instant_for(&self, at: Timestamp) -> Instant {
        let delta = at.duration_since(self.wall);
        let magnitude = delta.unsigned_abs();
        let exact = if delta.is_negative() {
            self.mono.checked_sub(magnitude)
        } else {
            self.mono.checked_add(magnitude)
        };
        exact.unwrap_or_else(|| {
            if delta.is_negative() {
                self.mono
            } else {
                let now = Instant::now();
                now.checked_add(FAR_AHEAD).unwrap_or(now)
            }
        })
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Deadlines by key, one per key, ordered by (deadline, key): the pure core of the
/// scheduler, separate so its ordering rules are testable without a runtime.
#[derive(Debug, Clone)]
pub struct DeadlineQueue<K, T = Timestamp> {
    order: BTreeSet<(T, K)>,
    armed: foldhash::HashMap<K, T>,
}

impl<K, T> Default for DeadlineQueue<K, T> {
    fn default() -> Self {
        Self {
            order: BTreeSet::new(),
            armed: foldhash::HashMap::default(),
        }
    }
}

impl<K: Ord + Hash + Clone, T: Ord + Copy> DeadlineQueue<K, T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `key` at `at`, replacing its previous deadline: a ping moves a monitor's deadline
    /// rather than adding a second one.
    /// A key already armed keeps the copy the queue holds, so a key that shares its
    /// contents when cloned (`Arc<str>`) is held once for both of the queue's maps.
    pub fn arm(&mut self, key: K, at: T) {
        let key = match self.armed.remove_entry(&key) {
            Some((held, old)) => {
                self.order.remove(&(old, held.clone()));
                held
            }
            None => key,
        };
        self.armed.insert(key.clone(), at);
        self.order.insert((at, key));
    }

    /// Removes `key`'s deadline, if any (paused or deleted monitors).
    pub fn disarm(&mut self, key: &K) {
        if let Some(old) = self.armed.remove(key) {
            self.order.remove(&(old, key.clone()));
        }
    }

    /// `key`'s armed deadline, to tell whether re-arming would change anything.
    pub fn deadline(&self, key: &K) -> Option<T> {
        self.armed.get(key).copied()
    }

    /// The earliest deadline: how long the driver may sleep.
    pub fn next_due(&self) -> Option<T> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Removes and returns every key due at or before `now` with its deadline, earliest
    /// first and ties by key, so firing order is deterministic.
    pub fn pop_due(&mut self, now: T) -> Vec<(K, T)> {
        std::iter::from_fn(|| self.pop_first_if(|at| *at <= now)).collect()
    }

    /// Removes and returns the earliest key with its deadline, if `due` says it is due.
    pub fn pop_first_if(&mut self, due: impl Fn(&T) -> bool) -> Option<(K, T)> {
        if !self.order.first().is_some_and(|(at, _)| due(at)) {
            return None;
        }
        let (at, key) = self.order.pop_first()?;
        self.armed.remove(&key);
        Some((key, at))
    }

    /// Number of armed keys, for metrics.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    /// Nothing armed: the driver can sleep until a command arrives.
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

/// What a [`SchedulerHandle`] asks of the driver task.
#[derive(Debug)]
enum Command<K, P> {
    Arm(K, Timestamp, P),
    Disarm(K),
}

/// The only way to reach the driver task: cheap to clone and usable from any thread, so the
/// engine can arm deadlines where it changes state.
///
/// `P` orders keys due at the same instant (lower first, then by key) and comes back with
/// each key when it fires: the engine arms each monitor with its place in a herd, so a
/// third of a million monitors due at one instant fire the most urgent first, each with
/// its place, and no one has to look a million monitors up again to place them.
#[derive(Debug)]
pub struct SchedulerHandle<K, P = ()> {
    tx: mpsc::UnboundedSender<Command<K, P>>,
}

impl<K, P> Clone for SchedulerHandle<K, P> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<K, P: Default> SchedulerHandle<K, P> {
    /// Arms (or re-arms) `key` at wall time `at`; a time already past fires at once. Sending
    /// only fails once the driver stopped because nobody receives due keys any more, when
    /// there is nothing left to schedule for, so that is ignored.
    pub fn arm(&self, key: K, at: Timestamp) {
        self.arm_with(key, at, P::default());
    }
}

impl<K, P> SchedulerHandle<K, P> {
    /// [`Self::arm`] with `tie`, the key's order among those due at the same instant.
    pub fn arm_with(&self, key: K, at: Timestamp, tie: P) {
        let _ = self.tx.send(Command::Arm(key, at, tie));
    }

    /// Disarms `key`; nothing fires for it until it is armed again.
    pub fn disarm(&self, key: K) {
        let _ = self.tx.send(Command::Disarm(key));
    }
}

/// A handle whose commands nobody drives, and what it was asked, in order (`arm:key`,
/// `disarm:key`): tests of who arms what.
#[cfg(test)]
pub(crate) fn recording<K: std::fmt::Display, P>()
-> (SchedulerHandle<K, P>, impl FnMut() -> Vec<String>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let drain = move || {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| match c {
                Command::Arm(key, ..) => format!("arm:{key}"),
                Command::Disarm(key) => format!("disarm:{key}"),
            })
            .collect()
    };
    (SchedulerHandle { tx }, drain)
}

/// What fires: a key, the wall time it was armed for (rounded up to the microsecond) and
/// its tie.
pub type Fired<K, P> = (K, Timestamp, P);

/// Starts the driver task on the current tokio runtime. Due keys arrive on the returned
/// channel in deadline order (ties by `P`, then key), once per arming.
/// The task ends when the receiver is dropped, or when every handle is dropped and nothing
/// armed is left to fire.
pub fn spawn<K, P>(clock: Clock) -> (SchedulerHandle<K, P>, mpsc::UnboundedReceiver<Fired<K, P>>)
where
    K: Ord + Hash + Clone + Send + 'static,
    P: Ord + Copy + Send + 'static,
{
    let (tx, commands) = mpsc::unbounded_channel();
    let (due_tx, due_rx) = mpsc::unbounded_channel();
    tokio::spawn(drive(clock, commands, due_tx));
    (SchedulerHandle { tx }, due_rx)
}

/// A deadline as the driver keeps it: whole microseconds, rounded up so nothing fires
/// before its time. Half the size of a [`Timestamp`], in both of the queue's maps: with a
/// million monitors armed, about 25 MB less.
fn micros_up(at: Timestamp) -> i64 {
    let m = at.as_microsecond();
    match Timestamp::from_microsecond(m) {
        Ok(floor) if floor < at => m.saturating_add(1),
        _ => m,
    }
}

fn from_micros(m: i64) -> Timestamp {
    Timestamp::from_microsecond(m).unwrap_or(if m < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

async fn drive<K, P>(
    clock: Clock,
    mut commands: mpsc::UnboundedReceiver<Command<K, P>>,
    due: mpsc::UnboundedSender<Fired<K, P>>,
) where
    K: Ord + Hash + Clone,
    P: Ord + Copy,
{
    let mut queue = DeadlineQueue::<K, (i64, P)>::new();
    let mut handles_alive = true;
    // One timer, reset only when the earliest deadline changes.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut sleeping_until: Option<i64> = None;
    loop {
        // A pass's worth, then the other tasks have their turn: a third of a million
        // deadlines due at one instant took the driver's thread for 0.3 s, and the task
        // that forwards them to the engine (on that thread) waited for the last before
        // it sent the first, the most urgent.
        let now = clock.now().as_microsecond();
        let mut fired = 0;
        while fired < PER_PASS
            && let Some((key, (at, tie))) = queue.pop_first_if(|(at, _)| *at <= now)
        {
            if due.send((key, from_micros(at), tie)).is_err() {
                return;
            }
            fired += 1;
        }
        if fired == PER_PASS {
            tokio::task::yield_now().await;
            continue;
        }
        let next = queue.next_due().map(|(at, _)| at);
        match next {
            None if !handles_alive => return,
            Some(at) if sleeping_until != Some(at) => {
                sleep.as_mut().reset(clock.instant_for(from_micros(at)));
                sleeping_until = Some(at);
            }
            _ => {}
        }
        tokio::select! {
            biased;
            () = due.closed() => return,
            command = commands.recv(), if handles_alive => match command {
                Some(first) => {
                    // Take what is queued before firing, so a re-arm or disarm sent just
                    // before a deadline wins over it, and a burst costs one pass. But no
                    // more than a pass's worth: a herd's Lates are armed again for their
                    // Downs as fast as the engine steps them, hundreds of thousands, and
                    // taking commands while more keep coming held back every deadline
                    // that came due meanwhile (for 0.4 s at a million monitors). A re-arm
                    // left for the next pass can lose to its old deadline; that deadline's
                    // step finds the monitor not due and does nothing.
                    let mut command = Some(first);
                    let mut taken = 0;
                    while let Some(c) = command {
                        match c {
                            Command::Arm(key, at, tie) => queue.arm(key, (micros_up(at), tie)),
                            Command::Disarm(key) => queue.disarm(&key),
                        }
                        taken += 1;
                        command = if taken < PER_PASS {
                            commands.try_recv().ok()
                        } else {
                            None
                        };
                    }
                }
                None => handles_alive = false,
            },
            () = &mut sleep, if next.is_some() => sleeping_until = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Timestamp {
        Timestamp::from_second(1_700_000_000).unwrap()
    }

    fn plus(at: Timestamp, d: SignedDuration) -> Timestamp {
        at.checked_add(d).unwrap()
    }

    #[test]
    fn a_rearmed_key_is_held_once_for_both_maps() {
        let mut q = DeadlineQueue::<std::sync::Arc<str>, i64>::new();
        let first: std::sync::Arc<str> = "ns/a".into();
        q.arm(first.clone(), 10);
        // Re-armed with a copy of its own, as the engine arms: the queue keeps the first.
        q.arm("ns/a".into(), 20);
        assert_eq!(
            std::sync::Arc::strong_count(&first),
            3,
            "ours, and one per map"
        );
        assert_eq!(q.deadline(&first), Some(20));
        assert_eq!(q.pop_due(20), vec![(first.clone(), 20)]);
        assert_eq!(std::sync::Arc::strong_count(&first), 1);
    }

    #[test]
    fn queue_orders_by_deadline_then_key_and_replaces() {
        let at = |s: i64| plus(base(), SignedDuration::from_secs(s));
        let mut q = DeadlineQueue::new();
        assert!(q.is_empty());
        q.arm("b", at(20));
        q.arm("c", at(10));
        q.arm("a", at(10));
        q.arm("d", at(30));
        q.arm("b", at(5)); // re-arming replaces
        q.disarm(&"d");
        q.disarm(&"never armed");
        assert_eq!(q.len(), 3);
        assert_eq!(q.deadline(&"b"), Some(at(5)));
        assert_eq!(q.deadline(&"d"), None);
        assert_eq!(q.next_due(), Some(at(5)));
        assert_eq!(q.pop_due(at(4)), vec![]);
        assert_eq!(
            q.pop_due(at(10)),
            vec![("b", at(5)), ("a", at(10)), ("c", at(10))],
            "inclusive, in deadline order, ties by key"
        );
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
        assert_eq!(q.pop_due(at(1000)), vec![]);
        // A key that fired can be armed again.
        q.arm("a", at(50));
        q.arm("a", at(60));
        assert_eq!(q.pop_due(at(100)), vec![("a", at(60))]);
    }

    #[test]
    fn queue_works_with_any_ordered_time() {
        let mut q: DeadlineQueue<u32, u64> = DeadlineQueue::new();
        for k in 0..1000u32 {
            q.arm(k, u64::from((k * 7919) % 1000));
        }
        for k in 0..1000u32 {
            q.arm(k, u64::from((k * 7919) % 1000) + 5); // every key moved once
        }
        assert_eq!(q.len(), 1000);
        let fired = q.pop_due(u64::MAX);
        assert_eq!(fired.len(), 1000);
        assert!(
            fired
                .windows(2)
                .all(|w| (w[0].1, w[0].0) < (w[1].1, w[1].0))
        );
        assert!(q.is_empty());
    }

    #[test]
    fn deadlines_are_kept_in_whole_microseconds_rounded_up() {
        let t = base();
        assert_eq!(micros_up(t), t.as_microsecond());
        for at in [
            plus(t, SignedDuration::from_nanos(1)),
            plus(t, SignedDuration::from_nanos(999)),
            plus(t, SignedDuration::from_nanos(-1)),
            plus(
                Timestamp::from_second(-1).unwrap(),
                SignedDuration::from_nanos(-1),
            ),
        ] {
            let kept = from_micros(micros_up(at));
            assert!(kept >= at, "{kept} before {at}");
            assert!(kept.duration_since(at) < SignedDuration::from_micros(1));
        }
        assert_eq!(from_micros(i64::MAX), Timestamp::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn clock_maps_wall_time_and_tokio_time_both_ways() {
        let clock = Clock::starting_at(base());
        let anchor = Instant::now();
        assert_eq!(clock.now(), base());
        tokio::time::advance(Duration::from_millis(10_500)).await;
        assert_eq!(
            clock.now(),
            plus(base(), SignedDuration::from_millis(10_500))
        );
        let later = plus(base(), SignedDuration::from_nanos(3_600_000_000_123));
        let instant = clock.instant_for(later);
        assert_eq!(instant, anchor + Duration::from_nanos(3_600_000_000_123));
        assert_eq!(clock.timestamp_at(instant), later);
        let earlier = plus(base(), SignedDuration::from_secs(-5));
        assert_eq!(clock.timestamp_at(clock.instant_for(earlier)), earlier);
        assert!(clock.instant_for(earlier) <= Instant::now());
        assert!(clock.instant_for(Timestamp::MIN) <= Instant::now());
        assert!(clock.instant_for(Timestamp::MAX) > Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_deadlines_fire_in_order_and_on_time() {
        let clock = Clock::starting_at(base());
        let start = clock.now();
        let (handle, mut due) = spawn::<u32, ()>(clock);
        // Key i is due at a sub-millisecond offset in a scrambled order (arming order is not
        // firing order), with some ties (distinct keys, same deadline).
        let offset =
            |i: u32| SignedDuration::from_micros(i64::from((i * 7919) % 5_000) * 1_997 + 1);
        for i in 0..10_000u32 {
            handle.arm(i, plus(start, offset(i)));
        }
        let mut previous: Option<(Timestamp, u32)> = None;
        let mut worst = SignedDuration::ZERO;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let (key, at, ()) = due.recv().await.unwrap();
            let fired = clock.now();
            assert_eq!(at, plus(start, offset(key)), "reports the armed deadline");
            assert!(
                fired >= at,
                "key {key} fired {} early",
                at.duration_since(fired)
            );
            assert!(
                previous < Some((at, key)),
                "out of order: {previous:?} then {key}"
            );
            assert!(seen.insert(key), "key {key} fired twice");
            worst = worst.max(fired.duration_since(at));
            previous = Some((at, key));
        }
        assert!(worst <= SignedDuration::from_millis(1), "lateness {worst}");
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), due.recv())
                .await
                .is_err(),
            "something fired twice"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rearming_moves_a_deadline_disarm_cancels_and_earlier_arms_wake_the_task() {
        let clock = Clock::starting_at(base());
        let start = clock.now();
        let secs = |s: i64| plus(start, SignedDuration::from_secs(s));
        let (handle, mut due) = spawn::<&'static str, ()>(clock);
        handle.arm("ping", secs(10));
        handle.arm("gone", secs(5));
        handle.arm("late", secs(100));
        tokio::time::sleep(Duration::from_secs(3)).await; // the task now sleeps until +5 s
        handle.arm("ping", secs(20)); // a ping arrived: the old deadline must not fire
        handle.disarm("gone");
        handle.arm("early", secs(4)); // earlier than anything armed: wakes the sleeper
        assert_eq!(due.recv().await, Some(("early", secs(4), ())));
        assert_eq!(clock.now(), secs(4));
        assert_eq!(due.recv().await, Some(("ping", secs(20), ())));
        assert_eq!(clock.now(), secs(20));
        // While sleeping until +100 s, an arm at +30 s wakes the task early.
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle.arm("sooner", secs(30));
        assert_eq!(due.recv().await, Some(("sooner", secs(30), ())));
        assert_eq!(clock.now(), secs(30));
        assert_eq!(due.recv().await, Some(("late", secs(100), ())));
        assert_eq!(clock.now(), secs(100));
        assert!(
            tokio::time::timeout(Duration::from_secs(1000), due.recv())
                .await
                .is_err(),
            "moved or disarmed deadlines fired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keys_due_at_one_instant_fire_by_their_tie_then_key_each_with_its_tie() {
        let clock = Clock::starting_at(base());
        let at = plus(clock.now(), SignedDuration::from_secs(1));
        let (handle, mut due) = spawn::<&'static str, (u8, u8)>(clock);
        handle.arm_with("a", at, (9, 0));
        handle.arm_with("b", at, (1, 5));
        handle.arm_with("c", at, (1, 2));
        handle.arm_with("d", at, (9, 0));
        // Re-arming replaces the tie too.
        handle.arm_with("a", at, (0, 0));
        let mut fired = Vec::new();
        for _ in 0..4 {
            fired.push(due.recv().await.unwrap());
        }
        assert_eq!(
            fired,
            [
                ("a", at, (0, 0)),
                ("c", at, (1, 2)),
                ("b", at, (1, 5)),
                ("d", at, (9, 0))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_arms_does_not_hold_back_what_came_due() {
        let clock = Clock::starting_at(base());
        let past = plus(clock.now(), SignedDuration::from_secs(-1));
        let (handle, mut due) = spawn::<u32, ()>(clock);
        // All queued before the driver runs, each already due, the last armed first.
        let n = 3 * PER_PASS as u32;
        for key in (0..n).rev() {
            handle.arm(key, past);
        }
        let mut fired = Vec::new();
        for _ in 0..n {
            fired.push(due.recv().await.unwrap().0);
        }
        // Taken all before firing, they would fire 0, 1, 2, …: a pass's worth fires first.
        let first_pass: Vec<u32> = (n - PER_PASS as u32..n).collect();
        assert_eq!(fired[..PER_PASS], first_pass);
        fired.sort_unstable();
        assert_eq!(fired, (0..n).collect::<Vec<_>>(), "each fired once");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_due_at_one_instant_fire_a_pass_at_a_time() {
        let clock = Clock::starting_at(base());
        let at = plus(clock.now(), SignedDuration::from_secs(1));
        let (handle, mut due) = spawn::<u32, ()>(clock);
        let n = 3 * PER_PASS as u32;
        for key in 0..n {
            handle.arm(key, at);
        }
        // On this one thread, whoever receives runs only once the driver lets go.
        assert_eq!(due.recv().await.map(|(key, ..)| key), Some(0));
        assert_eq!(
            due.len(),
            PER_PASS - 1,
            "one pass fired, then the driver yielded"
        );
        for key in 1..n {
            assert_eq!(due.recv().await.map(|(key, ..)| key), Some(key));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_deadlines_fire_at_once_and_each_arming_fires_once() {
        let clock = Clock::starting_at(base());
        let start = clock.now();
        let (handle, mut due) = spawn::<u8, ()>(clock);
        let long_ago = plus(start, SignedDuration::from_secs(-86_400 * 365));
        handle.arm(1, long_ago);
        assert_eq!(due.recv().await, Some((1, long_ago, ())));
        assert_eq!(clock.now(), start, "no waiting for a past deadline");
        // Armed again after firing: fires again, once.
        let soon = plus(start, SignedDuration::from_millis(5));
        handle.arm(1, soon);
        assert_eq!(due.recv().await, Some((1, soon, ())));
        assert!(
            tokio::time::timeout(Duration::from_secs(60), due.recv())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_every_handle_still_fires_what_is_armed_then_closes() {
        let clock = Clock::starting_at(base());
        let start = clock.now();
        let (handle, mut due) = spawn::<u8, ()>(clock);
        let at = plus(start, SignedDuration::from_secs(60));
        handle.arm(7, at);
        let clone = handle.clone();
        drop(handle);
        clone.disarm(8);
        drop(clone);
        assert_eq!(due.recv().await, Some((7, at, ())));
        assert_eq!(clock.now(), at);
        let end = tokio::time::timeout(Duration::from_secs(3600), due.recv()).await;
        assert_eq!(end, Ok(None), "the task ended");
    }
}
