//! Deadline scheduling for many monitors without polling them all.
//!
//! One ordered set keyed by (deadline, monitor) and one map from monitor to its armed
//! deadline: arming, re-arming and disarming are O(log n), and the driver sleeps exactly
//! until the earliest deadline. Time inside is tokio's clock (so tests run on a paused,
//! virtual clock); [`Clock`] maps it to wall time.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Wall time derived from tokio's monotonic clock and one anchor pair, so the engine and its
/// tests share one notion of "now" (virtual under `tokio::time::pause`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: Timestamp,
    mono: Instant,
}

impl Clock {
    /// Anchors at the current wall and tokio times.
    pub fn new() -> Self {
        Self {
            wall: Timestamp::now(),
            mono: Instant::now(),
        }
    }

    /// Anchors at a chosen wall time (tests).
    pub fn starting_at(wall: Timestamp) -> Self {
        Self {
            wall,
            mono: Instant::now(),
        }
    }

    /// The current wall time.
    pub fn now(&self) -> Timestamp {
        let elapsed = Instant::now().saturating_duration_since(self.mono);
        let d = SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::MAX);
        self.wall.checked_add(d).unwrap_or(Timestamp::MAX)
    }

    /// The tokio instant at which wall time `at` is reached (now, if it is past).
    pub fn instant_for(&self, at: Timestamp) -> Instant {
        let now = self.now();
        if at <= now {
            return Instant::now();
        }
        let ahead = at.duration_since(now);
        let ahead = std::time::Duration::try_from(ahead)
            .unwrap_or(std::time::Duration::from_secs(86_400 * 365));
        Instant::now() + ahead
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Deadlines by key; one per key, re-arming replaces.
#[derive(Debug)]
pub struct DeadlineQueue<K: Ord + Hash + Clone> {
    order: BTreeSet<(Timestamp, K)>,
    armed: HashMap<K, Timestamp>,
}

impl<K: Ord + Hash + Clone> Default for DeadlineQueue<K> {
    fn default() -> Self {
        Self {
            order: BTreeSet::new(),
            armed: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> DeadlineQueue<K> {
    /// Arms `key` at `at`, replacing an earlier arming.
    pub fn arm(&mut self, key: K, at: Timestamp) {
        if let Some(old) = self.armed.insert(key.clone(), at) {
            self.order.remove(&(old, key.clone()));
        }
        self.order.insert((at, key));
    }

    /// Removes `key`'s deadline.
    pub fn disarm(&mut self, key: &K) {
        if let Some(old) = self.armed.remove(key) {
            self.order.remove(&(old, key.clone()));
        }
    }

    /// The earliest deadline.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Removes and returns every key due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Timestamp) -> Vec<(K, Timestamp)> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.order.first() {
            if *at > now {
                break;
            }
            if let Some((at, key)) = self.order.pop_first() {
                self.armed.remove(&key);
                out.push((key, at));
            }
        }
        out
    }

    /// Armed keys.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    /// True when nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

enum Command<K> {
    Arm(K, Timestamp),
    Disarm(K),
}

/// Handle for arming and disarming; cheap to clone, usable from any thread.
#[derive(Debug)]
pub struct SchedulerHandle<K> {
    tx: mpsc::UnboundedSender<Command<K>>,
}

impl<K> Clone for SchedulerHandle<K> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<K: Send + 'static> SchedulerHandle<K> {
    /// Arms (or re-arms) `key` at wall time `at`.
    pub fn arm(&self, key: K, at: Timestamp) {
        let _ = self.tx.send(Command::Arm(key, at));
    }

    /// Disarms `key`.
    pub fn disarm(&self, key: K) {
        let _ = self.tx.send(Command::Disarm(key));
    }
}

/// Starts the scheduler task: due keys arrive on the returned channel, in deadline order,
/// once per arming, with the deadline they were armed for.
pub fn spawn<K>(clock: Clock) -> (SchedulerHandle<K>, mpsc::UnboundedReceiver<(K, Timestamp)>)
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
{
    let (tx, mut commands) = mpsc::unbounded_channel::<Command<K>>();
    let (due_tx, due_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut queue = DeadlineQueue::<K>::default();
        loop {
            for (key, at) in queue.pop_due(clock.now()) {
                if due_tx.send((key, at)).is_err() {
                    return;
                }
            }
            let sleep = async {
                match queue.next_due() {
                    Some(at) => tokio::time::sleep_until(clock.instant_for(at)).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Arm(k, at)) => queue.arm(k, at),
                    Some(Command::Disarm(k)) => queue.disarm(&k),
                    None => return,
                },
                _ = sleep => {}
            }
            // Take every queued command before firing, so a re-arm sent just before a
            // deadline wins over it.
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Arm(k, at) => queue.arm(k, at),
                    Command::Disarm(k) => queue.disarm(&k),
                }
            }
        }
    });
    (SchedulerHandle { tx }, due_rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn queue_orders_and_replaces() {
        let base = Timestamp::from_second(1_700_000_000).unwrap();
        let at = |s: i64| base.checked_add(SignedDuration::from_secs(s)).unwrap();
        let mut q = DeadlineQueue::default();
        q.arm("b", at(20));
        q.arm("a", at(10));
        q.arm("c", at(10));
        q.arm("b", at(5));
        q.disarm(&"c");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next_due(), Some(at(5)));
        assert_eq!(q.pop_due(at(10)), vec![("b", at(5)), ("a", at(10))]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_deadlines_fire_in_order_and_on_time() {
        let clock = Clock::starting_at(Timestamp::from_second(1_700_000_000).unwrap());
        let start = clock.now();
        let (handle, mut due) = spawn::<u32>(clock);
        // Staggered: key i due at start + (i * 7919 % 10000) ms, so arming order != due order.
        for i in 0..10_000u32 {
            let ms = i64::from(i * 7919 % 10_000) + 1;
            handle.arm(
                i,
                start.checked_add(SignedDuration::from_millis(ms)).unwrap(),
            );
        }
        let mut last = start;
        let mut worst = SignedDuration::ZERO;
        for _ in 0..10_000 {
            let (_, at) = due.recv().await.unwrap();
            let fired = clock.now();
            assert!(fired >= at, "fired before its deadline");
            assert!(at >= last, "out of order");
            worst = worst.max(fired.duration_since(at));
            last = at;
        }
        assert!(
            worst <= SignedDuration::from_millis(1),
            "lateness {worst:?}"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(60), due.recv())
                .await
                .is_err(),
            "fired twice"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rearming_moves_a_deadline_and_disarm_cancels() {
        let clock = Clock::starting_at(Timestamp::from_second(1_700_000_000).unwrap());
        let start = clock.now();
        let secs = |s: i64| start.checked_add(SignedDuration::from_secs(s)).unwrap();
        let (handle, mut due) = spawn::<&'static str>(clock);
        handle.arm("ping", secs(10));
        handle.arm("gone", secs(5));
        tokio::time::sleep(Duration::from_secs(3)).await;
        handle.arm("ping", secs(20)); // a ping arrived: the old deadline must not fire
        handle.disarm("gone");
        handle.arm("early", secs(4)); // earlier than anything armed: wakes the sleeper
        let (k, at) = due.recv().await.unwrap();
        assert_eq!((k, at), ("early", secs(4)));
        assert_eq!(clock.now(), secs(4));
        let (k, at) = due.recv().await.unwrap();
        assert_eq!((k, at), ("ping", secs(20)));
        assert_eq!(clock.now(), secs(20));
        assert!(
            tokio::time::timeout(Duration::from_secs(100), due.recv())
                .await
                .is_err()
        );
    }
}
