//! Rounds on their way to the store, and what readers see once one is written: round
//! numbers and the bound on commands in flight ([`Written`]), the round as handed over
//! ([`Published`]), and everyone it is published to ([`Readers`]), in the store's callback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::broadcast;

use super::herd::Tie;
use super::types::{Change, Monitor};
use super::worker::{Done, Snapshot};
use super::{EngineError, EngineStats};
use crate::core::alert::outbox::Outbox;
use crate::core::monitor::schedule::{Clock, SchedulerHandle};
use crate::core::monitor::state;
use crate::core::storage::StorageError;

/// A monitor as a round on its way to the store left it (`None`: removed), with the
/// round's number.
pub(super) type Inflight = (u64, Option<Arc<Monitor>>);

/// Round numbers: the last one handed to the store (engine thread), the last one applied
/// and the first one that failed (the store's callback).
#[derive(Debug)]
pub(super) struct Written {
    submitted: AtomicU64,
    applied: AtomicU64,
    failed_from: AtomicU64,
    in_flight: Mutex<InFlight>,
    /// Signalled whenever a round settles.
    room: Condvar,
}

/// Rounds handed over and not settled, and the commands they answer.
#[derive(Debug, Default)]
struct InFlight {
    /// See [`MAX_IN_FLIGHT`](super::worker::MAX_IN_FLIGHT).
    commands: usize,
    /// See [`ROUNDS_AHEAD`](super::worker::ROUNDS_AHEAD).
    rounds: usize,
}

impl Default for Written {
    fn default() -> Self {
        Self {
            submitted: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            failed_from: AtomicU64::new(u64::MAX),
            in_flight: Mutex::new(InFlight::default()),
            room: Condvar::new(),
        }
    }
}

impl Written {
    pub(super) fn next(&self) -> u64 {
        self.submitted.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a round of `commands` handed to the store.
    pub(super) fn hand_over(&self, commands: usize) {
        let mut n = self.in_flight();
        n.commands += commands;
        n.rounds += 1;
    }

    /// A round of `commands` settled (written or failed): room for more.
    pub(super) fn settled(&self, commands: usize) {
        let mut n = self.in_flight();
        n.commands = n.commands.saturating_sub(commands);
        n.rounds = n.rounds.saturating_sub(1);
        self.room.notify_all();
    }

    /// Waits until fewer than `max` commands are on their way to the store. A failed
    /// round settles too, so a store that stopped never holds the worker here.
    pub(super) fn wait_for_room(&self, max: usize) {
        let mut n = self.in_flight();
        while n.commands >= max {
            n = self.room.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until fewer than `max` rounds are on their way to the store, or `patience`
    /// has passed: a slow disk delays the next round by that much at most, and never
    /// stops the engine thread from answering its probe. Calls `waiting` first if it waits.
    pub(super) fn wait_for_rounds(
        &self,
        max: usize,
        patience: std::time::Duration,
        waiting: impl FnOnce(),
    ) {
        let n = self.in_flight();
        if n.rounds < max {
            return;
        }
        waiting();
        let _n = self
            .room
            .wait_timeout_while(n, patience, |n| n.rounds >= max)
            .unwrap_or_else(|p| p.into_inner());
    }

    /// Whether round `seq`'s staged state is what the next rounds build on: handed over,
    /// not applied yet (then readers have it) and not failed (then the disk does not).
    pub(super) fn pending(&self, seq: u64) -> bool {
        seq > self.applied() && seq < self.failed_from.load(Ordering::Acquire)
    }
}

/// A round handed to the store, for readers once it is applied.
pub(super) struct Published {
    pub(super) seq: u64,
    /// Commands the round answers (see [`MAX_IN_FLIGHT`](super::worker::MAX_IN_FLIGHT)).
    pub(super) commands: usize,
    pub(super) monitors: Vec<Arc<Monitor>>,
    /// Removed and not defined again in the round.
    pub(super) removed: Vec<String>,
    pub(super) changes: Vec<Change>,
    pub(super) alerts: bool,
    /// When each Down a deadline caused in the round was due (deadline plus grace).
    pub(super) timed_downs: Vec<jiff::Timestamp>,
    /// Monitors (by number) whose last step in the round was driven by their deadline and
    /// left them with none: the scheduler let go of that deadline when it fired, so
    /// disarming them would cost a message and a search among every armed key for
    /// nothing (a herd's Downs, a million at a time). Should one have been armed again
    /// meanwhile, by a round written before this one, that deadline was past (or this
    /// round's step would not have been driven to its end), so it fires at once and its
    /// step, finding nothing to do, disarms it.
    pub(super) unarmed: foldhash::HashSet<u64>,
    pub(super) done: Vec<Done>,
}

/// Everyone who sees a round once it is written: the snapshot, the deadline scheduler,
/// subscribers to state transitions and the outbox; run by the store's callback, in order.
pub(super) struct Readers {
    pub(super) snapshot: Snapshot,
    pub(super) scheduler: SchedulerHandle<Arc<str>, Tie>,
    pub(super) changes: broadcast::Sender<Change>,
    pub(super) outbox: Outbox,
    pub(super) failure: Arc<std::sync::Mutex<Option<String>>>,
    pub(super) written: Arc<Written>,
    pub(super) stats: Arc<EngineStats>,
    pub(super) clock: Clock,
}

impl Readers {
    /// Publishes round `p` if it was written (`Ok`), then answers its callers.
    pub(super) fn settle(&self, mut p: Published, result: Result<(), StorageError>) {
        match &result {
            Ok(()) => {
                self.publish(&mut p);
                self.stats
                    .observe_down_lateness(&p.timed_downs, self.clock.now());
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.written.applied.store(p.seq, Ordering::Release);
                if p.alerts {
                    self.outbox.wake();
                }
            }
            Err(e) => {
                let failure = EngineError::Write(e.clone()).to_string();
                tracing::error!(error = %failure, "a round of monitor changes was not written");
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
                self.written.failed_from.fetch_min(p.seq, Ordering::Release);
            }
        }
        self.written.settled(p.commands);
        for d in p.done {
            d(result.clone().map_err(EngineError::Write));
        }
    }

    /// The snapshot, the deadlines and the transitions, in the order they happened.
    pub(super) fn publish(&self, p: &mut Published) {
        // Pointers swapped under the lock, the monitors they replace freed after it: the
        // engine thread reads this lock for every monitor it steps.
        let mut replaced = Vec::with_capacity(p.removed.len() + p.monitors.len());
        {
            let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            for key in &p.removed {
                replaced.extend(snapshot.remove(key));
            }
            for m in &p.monitors {
                replaced.extend(snapshot.put(m.clone()));
            }
        }
        drop(replaced);
        for key in &p.removed {
            self.scheduler.disarm(key.as_str().into());
        }
        for m in p.monitors.iter().filter(|m| !p.unarmed.contains(&m.num)) {
            arm(&self.scheduler, m);
        }
        // Moved, not copied: a herd's round holds thousands.
        for change in std::mem::take(&mut p.changes) {
            let _ = self.changes.send(change);
        }
    }
}

/// Arms `m`'s next deadline (or none), with its place should it come due with others.
pub(super) fn arm(scheduler: &SchedulerHandle<Arc<str>, Tie>, m: &Monitor) {
    match state::next_wakeup(&m.def.timing(), &m.state) {
        Some(at) => scheduler.arm_with(m.def.key.as_str().into(), at, Tie::of(m, at)),
        None => scheduler.disarm(m.def.key.as_str().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::types::sample;
    use crate::core::monitor::schedule::recording;
    use crate::core::monitor::state::State;
    use crate::core::services::open_monitor_storage;

    /// Publishes monitors `a` (Down, no deadline left) and `b` (Up, due again), with the
    /// monitors numbered in `unarmed`; what the scheduler was asked.
    fn published(unarmed: &[u64]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_monitor_storage(dir.path());
        let (scheduler, mut asked) = recording();
        let readers = Readers {
            snapshot: Snapshot::default(),
            scheduler,
            changes: broadcast::channel(16).0,
            outbox: Outbox::new(storage.outbox, Default::default()),
            failure: Default::default(),
            written: Default::default(),
            stats: Default::default(),
            clock: Clock::new(),
        };
        let down = sample("a", State::Down);
        let mut up = sample("b", State::Up);
        up.num = 2;
        up.state.deadline = Some(up.state.since);
        readers.publish(&mut Published {
            seq: 1,
            commands: 2,
            monitors: vec![Arc::new(down), Arc::new(up)],
            removed: Vec::new(),
            changes: Vec::new(),
            alerts: false,
            timed_downs: Vec::new(),
            unarmed: unarmed.iter().copied().collect(),
            done: Vec::new(),
        });
        assert_eq!(readers.snapshot.read().unwrap().len(), 2, "both are shown");
        asked()
    }

    #[test]
    fn a_monitor_its_deadline_left_with_none_is_not_disarmed_again() {
        assert_eq!(published(&[]), ["disarm:a", "arm:b"]);
        assert_eq!(published(&[1]), ["arm:b"]);
    }
}
