//! The thread that hands the engine's rounds to the store.
//!
//! [`MonitorStore::commit_round`] prepares a round on its caller's thread: it encodes the
//! state records and timeline entries, builds ping blocks and journal pages, and reads
//! what earlier rounds left pending. In a herd that was more than a quarter of the engine
//! thread, which sets the pace there while the machine's other core has room. So the
//! engine thread stages a round and goes on with the next, and this thread prepares and
//! submits rounds one after another, in the order they were staged: the store still sees
//! every round after the ones before it, as its port requires.
//!
//! A small round goes to the store from the engine thread itself when this thread has
//! nothing queued and few commands wait for the engine: handing it over would cost a wake
//! and a switch of threads per round, more than preparing it takes (a few dozen pings),
//! and the engine thread has the time. Behind a herd it has not: there every round is
//! handed over, so the engine steps the next Downs meanwhile. Order is kept either way,
//! since the engine thread is the only one that stages rounds and goes direct only while
//! none is queued here.
//!
//! What the engine asks of the store directly ([`MonitorStore::find_retained`]) must see
//! every round staged before it: the engine first waits until this thread has handed
//! them all over ([`Handover::settle`]). Dropping the handover waits for the rounds
//! still queued, so a stopping engine leaves none behind.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::core::storage::{MonitorRound, MonitorStore, RoundDone, StorageError};

/// Rounds staged by the engine thread and handed over here.
#[derive(Debug, Default)]
struct Counts {
    staged: u64,
    handed: u64,
    /// The thread ended: nothing queued will be handed over.
    gone: bool,
    /// The store panicked while taking a round: it is never called again.
    broken: bool,
}

/// The most a round ([`MonitorRound::len`]) and the commands waiting behind it may come to
/// for the engine thread to hand the round to the store itself. Pings between two flushes
/// make rounds of a few dozen with little behind them; a herd of deadlines, a restart's
/// definitions or a burst make rounds of hundreds, or leave thousands waiting, and then
/// the round goes to this thread so the engine goes on with the next.
pub(super) const DIRECT_AT_MOST: usize = 64;

/// What a round queued after the store panicked is answered with.
const BROKEN: &str =
    "the store failed while taking an earlier round; a restart replays what is on disk";

/// The engine thread's end of the handover thread.
pub(super) struct Handover {
    tx: Option<mpsc::Sender<(MonitorRound, RoundDone)>>,
    counts: Arc<(Mutex<Counts>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// For the rounds the engine thread hands over itself.
    store: Arc<dyn MonitorStore>,
    runtime: tokio::runtime::Handle,
}

/// Marks the thread gone when it ends, however it ends, so no one waits for it.
struct Leaving(Arc<(Mutex<Counts>, Condvar)>);

impl Drop for Leaving {
    fn drop(&mut self) {
        let (counts, changed) = &*self.0;
        counts.lock().unwrap_or_else(|p| p.into_inner()).gone = true;
        changed.notify_all();
    }
}

impl Handover {
    /// Starts the thread, which hands rounds to `store` inside `runtime` (a backend may
    /// spawn its writes there).
    pub(super) fn spawn(
        store: Arc<dyn MonitorStore>,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(MonitorRound, RoundDone)>();
        let counts: Arc<(Mutex<Counts>, Condvar)> = Arc::default();
        let leaving = Leaving(counts.clone());
        let (direct_store, direct_runtime) = (store.clone(), runtime.clone());
        let thread = std::thread::Builder::new()
            .name("hartslag-rounds".into())
            .spawn(move || {
                let _guard = runtime.enter();
                let leaving = leaving;
                for (round, done) in rx {
                    let (counts, changed) = &*leaving.0;
                    let broken = counts.lock().unwrap_or_else(|p| p.into_inner()).broken;
                    let broke = hand(store.as_ref(), broken, round, done);
                    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                    counts.handed += 1;
                    counts.broken |= broke;
                    drop(counts);
                    changed.notify_all();
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            counts,
            thread: Some(thread),
            store: direct_store,
            runtime: direct_runtime,
        })
    }

    /// Queues `round` for the store, or, when it is small, few commands are `waiting` for
    /// the engine and nothing is queued here, hands it to the store on this thread (then
    /// it returns `true`); `done` hears what became of it, as from
    /// [`MonitorStore::commit_round`].
    pub(super) fn commit_round(
        &self,
        round: MonitorRound,
        waiting: usize,
        done: RoundDone,
    ) -> bool {
        if round.len().saturating_add(waiting) <= DIRECT_AT_MOST && self.tx.is_some() {
            let idle = {
                let counts = self.lock();
                (counts.handed == counts.staged && !counts.gone).then_some(counts.broken)
            };
            if let Some(broken) = idle {
                let _entered = self.runtime.enter();
                let broke = hand(self.store.as_ref(), broken, round, done);
                self.lock().broken |= broke;
                return true;
            }
        }
        let refused = match &self.tx {
            Some(tx) => {
                self.lock().staged += 1;
                let refused = tx.send((round, done)).err();
                refused.map(|mpsc::SendError((_, done))| {
                    self.lock().staged -= 1;
                    done
                })
            }
            None => Some(done),
        };
        if let Some(done) = refused {
            done(Err(StorageError::NotStored(
                "the thread that hands rounds to the store has stopped".into(),
            )));
        }
        false
    }

    /// Waits until every round queued so far is in the store's hands (or the thread is
    /// gone, when the store's own answer for them is failure anyway).
    pub(super) fn settle(&self) {
        let (_, changed) = &*self.counts;
        let mut counts = self.lock();
        while counts.handed < counts.staged && !counts.gone {
            counts = changed.wait(counts).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands `round` to `store`, or, once the store is `broken`, answers it with the failure.
/// After a panic the store is never called again and every later round is answered with
/// the failure, so its commands settle and the engine is never left waiting for room (the
/// panicking round's own answer is lost with the store's state). Returns whether the store
/// panicked now.
fn hand(store: &dyn MonitorStore, broken: bool, round: MonitorRound, done: RoundDone) -> bool {
    if broken {
        done(Err(StorageError::NotStored(BROKEN.into())));
        return false;
    }
    let call = AssertUnwindSafe(|| store.commit_round(round, done));
    std::panic::catch_unwind(call).is_err()
}

impl Drop for Handover {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;
    use crate::core::monitor::engine::{Monitor, PingRecord, TransitionRecord};
    use crate::core::storage::StorageFuture;

    /// Records the rounds it is handed (each named by its `keep_pings`), taking `delay`
    /// over each, and panics on the one named `panic_on`.
    struct Recording {
        rounds: Mutex<Vec<u64>>,
        /// Whether each round was taken on the handover thread.
        on_thread: Mutex<Vec<bool>>,
        delay: Duration,
        panic_on: Option<u64>,
    }

    impl Recording {
        fn new(delay: Duration, panic_on: Option<u64>) -> Arc<Self> {
            Arc::new(Self {
                rounds: Mutex::default(),
                on_thread: Mutex::default(),
                delay,
                panic_on,
            })
        }

        fn rounds(&self) -> Vec<u64> {
            self.rounds.lock().unwrap().clone()
        }
    }

    /// A small round named `name`.
    fn round(name: u64) -> MonitorRound {
        MonitorRound {
            keep_pings: name,
            ..Default::default()
        }
    }

    /// A round too large to go to the store from the engine thread.
    fn large(name: u64) -> MonitorRound {
        MonitorRound {
            relayed: vec![0; DIRECT_AT_MOST + 1],
            ..round(name)
        }
    }

    impl MonitorStore for Recording {
        fn load_monitors(&self, _: &mut dyn FnMut(Vec<Monitor>)) -> Result<(), StorageError> {
            Ok(())
        }

        fn next_monitor_num(&self) -> Result<u64, StorageError> {
            Ok(1)
        }

        fn find_retained(&self, _: &str) -> Result<Option<Monitor>, StorageError> {
            Ok(None)
        }

        fn commit_round(&self, round: MonitorRound, done: RoundDone) {
            std::thread::sleep(self.delay);
            assert_ne!(Some(round.keep_pings), self.panic_on, "the store failed");
            self.rounds.lock().unwrap().push(round.keep_pings);
            let here = std::thread::current().name() == Some("hartslag-rounds");
            self.on_thread.lock().unwrap().push(here);
            done(Ok(()));
        }

        fn pings(&self, _: u64, _: usize, _: u64) -> StorageFuture<'_, Vec<PingRecord>> {
            async { Ok(Vec::new()) }.boxed()
        }

        fn transitions(&self, _: u64, _: usize) -> StorageFuture<'_, Vec<TransitionRecord>> {
            async { Ok(Vec::new()) }.boxed()
        }

        fn retained(&self, _: String) -> StorageFuture<'_, Option<Monitor>> {
            async { Ok(None) }.boxed()
        }

        fn retained_all(&self) -> StorageFuture<'_, Vec<Monitor>> {
            async { Ok(Vec::new()) }.boxed()
        }
    }

    fn start(store: &Arc<Recording>) -> Handover {
        Handover::spawn(store.clone(), tokio::runtime::Handle::current()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_reach_the_store_in_order_and_settle_waits_for_them() {
        let store = Recording::new(Duration::from_millis(20), None);
        let handover = start(&store);
        let answered = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5 {
            let answered = answered.clone();
            handover.commit_round(
                large(i),
                0,
                Box::new(move |r| answered.lock().unwrap().push((i, r.is_ok()))),
            );
        }
        assert!(store.rounds().len() < 5, "commit_round returned at once");
        handover.settle();
        assert_eq!(
            store.rounds(),
            vec![0, 1, 2, 3, 4],
            "all handed over, in order"
        );
        assert_eq!(
            *answered.lock().unwrap(),
            (0..5).map(|i| (i, true)).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_handover_waits_for_the_rounds_still_queued() {
        let store = Recording::new(Duration::from_millis(20), None);
        let handover = start(&store);
        for i in 0..3 {
            handover.commit_round(large(i), 0, Box::new(|_| {}));
        }
        drop(handover);
        assert_eq!(store.rounds(), vec![0, 1, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_store_panics_later_rounds_are_answered_with_the_failure() {
        // On the handover thread and on the engine's, and one after the other.
        type Make = fn(u64) -> MonitorRound;
        let (small, large): (Make, Make) = (round, large);
        for (first, then) in [
            (large, large),
            (small, small),
            (large, small),
            (small, large),
        ] {
            let store = Recording::new(Duration::ZERO, Some(1));
            let handover = start(&store);
            handover.commit_round(first(0), 0, Box::new(|_| {}));
            handover.commit_round(first(1), 0, Box::new(|_| {}));
            let (tx, rx) = std::sync::mpsc::channel();
            handover.commit_round(then(2), 0, Box::new(move |r| tx.send(r).unwrap()));
            let answer = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(
                matches!(answer, Err(StorageError::NotStored(ref e)) if e == BROKEN),
                "{answer:?}"
            );
            handover.settle();
            assert_eq!(store.rounds(), vec![0], "the store was not called again");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_round_goes_to_the_store_from_the_engine_thread_only_while_little_waits() {
        let store = Recording::new(Duration::from_millis(20), None);
        let handover = start(&store);
        assert!(handover.commit_round(round(0), 0, Box::new(|_| {})));
        assert_eq!(
            store.rounds(),
            vec![0],
            "taken before commit_round returned"
        );
        assert!(!handover.commit_round(large(1), 0, Box::new(|_| {})));
        // The large round is still being taken: this one must queue behind it.
        assert!(!handover.commit_round(round(2), 0, Box::new(|_| {})));
        handover.settle();
        // Small, but a herd waits behind it: the engine thread goes on with that.
        assert!(!handover.commit_round(round(3), DIRECT_AT_MOST + 1, Box::new(|_| {})));
        handover.settle();
        assert!(handover.commit_round(round(4), 0, Box::new(|_| {})));
        assert_eq!(store.rounds(), vec![0, 1, 2, 3, 4], "in the order staged");
        assert_eq!(
            *store.on_thread.lock().unwrap(),
            vec![false, true, true, true, false]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_queued_once_the_thread_is_gone_is_refused() {
        let store = Recording::new(Duration::ZERO, None);
        let mut handover = start(&store);
        // The thread ends as it does when the engine stops: its queue closed.
        drop(handover.tx.take());
        if let Some(thread) = handover.thread.take() {
            thread.join().unwrap();
        }
        handover.settle();
        let (tx, rx) = std::sync::mpsc::channel();
        handover.commit_round(round(0), 0, Box::new(move |r| tx.send(r).unwrap()));
        let answer = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(answer, Err(StorageError::NotStored(ref e)) if e.contains("has stopped")),
            "{answer:?}"
        );
        assert!(store.rounds().is_empty());
    }
}
