//! The monitor engine: owns every monitor's state, applies signals and deadlines through
//! the pure state machine, persists the result and hands alerts to the outbox.
//!
//! One engine thread ([`worker`]) serialises all changes, so a monitor is never updated
//! twice at once. A round of commands (pings, deadlines, edits) is one durable write
//! through the storage port ([`MonitorStore::commit_round`]): state changes, ping history,
//! timeline entries and the alerts they queue are durable together, so a crash can never
//! lose an alert or send one twice. Readers use an in-memory snapshot through the
//! [`Engine`] handle; history is read from the store.

mod counts;
mod def;
mod handover;
mod herd;
mod intake;
mod metrics;
mod mirror;
mod publish;
mod relayed;
mod series;
mod snapshot;
mod staging;
mod types;
mod wording;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use super::history::{PingKind, PingRecord};
pub use def::{DefRecord, resource_uid, same_resource};
use handover::Handover;
use herd::Tie;
pub use metrics::EngineStats;
pub use mirror::TokenChanges;
pub use series::MonitorSeries;
pub use snapshot::Monitors;
#[cfg(test)]
pub(crate) use types::sample;
pub use types::{Change, Monitor, MonitorDef, Origin, PingInput, PingOutcome, TransitionRecord};
pub use wording::describe_down;

use super::jobs::JobSignal;
use super::schedule::{self, Clock};
use super::state::{self, State};
use crate::core::alert::outbox::Outbox;
use crate::core::metrics::MetricRegistry;
use crate::core::storage::{FeedChanges, Fence, MonitorStore, RelayedPing, StorageError};
use worker::{Command, Quiet, Snapshot, Worker};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No monitor under that key.
    #[error("heartbeat not found")]
    NotFound,
    /// The store failed.
    #[error("monitor storage: {0}")]
    Storage(#[from] StorageError),
    /// The engine thread is gone.
    #[error("the monitor engine has stopped")]
    Stopped,
    /// Writing a round of changes failed; why, as the store said (an answer can name
    /// what failed: the database unreachable, its schema newer than this binary).
    #[error("writing monitor state failed: {0}")]
    Write(StorageError),
    /// The engine thread could not be started.
    #[error("cannot start the monitor engine thread: {0}")]
    Thread(String),
    /// This replica does not lead, so it changes no monitor; the leader does.
    #[error("this replica does not lead; retry")]
    NotLeader,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Pings kept per monitor.
    pub ping_history: u64,
    /// Hold deadlines until [`Engine::release_deadlines`]: a front end whose definitions
    /// may be out of date at start (the operator, whose resources may have been deleted
    /// while it was down) first removes what is gone, so a vanished monitor never alerts.
    pub hold_deadlines: bool,
    /// The longest a small round waits for the rounds ahead of it to reach the disk (see
    /// [`worker::ROUNDS_AHEAD`]).
    pub gather: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ping_history: 1000,
            hold_deadlines: false,
            gather: worker::GATHER,
        }
    }
}

/// Most deadlines forwarded to the worker in one command (see [`Engine::start`]).
const DUE_PER_COMMAND: usize = 4096;

/// Handle to the engine; clone freely.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    release: Arc<watch::Sender<bool>>,
    snapshot: Snapshot,
    store: Arc<dyn MonitorStore>,
    ping_history: u64,
    changes: broadcast::Sender<Change>,
    /// Counters.
    pub stats: Arc<EngineStats>,
    series: Arc<MonitorSeries>,
    clock: Clock,
    /// Why the worker's last round could not be written, until one is.
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// Tests make the worker's writes fail with this.
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
    /// The worker's limits on repeated warnings, for tests to read.
    #[cfg(test)]
    quiet: Arc<Quiet>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads every stored monitor, arms its deadline and starts the engine thread. Monitors
    /// that fell due while the process was down are evaluated at once (and alert once).
    pub fn start(
        store: Arc<dyn MonitorStore>,
        outbox: Outbox,
        config: EngineConfig,
        clock: Clock,
    ) -> Result<Self, EngineError> {
        Self::start_as(store, outbox, config, clock, Fence::sole())
    }

    /// [`Engine::start`] for a process that leads while `fence` says so. While it does
    /// not, the engine writes nothing: every change is refused with
    /// [`EngineError::NotLeader`], and it shows the leader's changes
    /// ([`Engine::mirror`]); hold its deadlines ([`EngineConfig::hold_deadlines`]) until
    /// it leads.
    pub fn start_as(
        store: Arc<dyn MonitorStore>,
        outbox: Outbox,
        config: EngineConfig,
        clock: Clock,
        fence: Fence,
    ) -> Result<Self, EngineError> {
        let started = std::time::Instant::now();
        let mut monitors = Monitors::default();
        store.load_monitors(&mut |batch| batch.into_iter().for_each(|m| monitors.insert(m)))?;
        let snapshot: Snapshot = Arc::new(RwLock::new(monitors));
        let loaded = started.elapsed();
        let (scheduler, mut due) = schedule::spawn::<Arc<str>, Tie>(clock);
        for m in snapshot.read().unwrap_or_else(|p| p.into_inner()).values() {
            if let Some(at) = state::next_wakeup(&m.def.timing(), &m.state) {
                scheduler.arm_with(m.def.key.as_str().into(), at, Tie::of(m, at));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let forward = tx.clone();
        let (release, mut released) = watch::channel(!config.hold_deadlines);
        tokio::spawn(async move {
            // Deadlines that come due while held wait in the scheduler's queue.
            if released.wait_for(|r| *r).await.is_err() {
                return;
            }
            // The scheduler fires deadlines of one instant by their place, so a herd's
            // Downs come first. They go in commands of a few thousand, which the worker
            // takes one between any two steps: it steps the first Downs while the rest of
            // a third of a million arrive, instead of placing them all first.
            while let Some((key, at, tie)) = due.recv().await {
                let mut keys = vec![(key, tie.place(at))];
                while keys.len() < DUE_PER_COMMAND
                    && let Ok((key, at, tie)) = due.try_recv()
                {
                    keys.push((key, tie.place(at)));
                }
                if forward.send(Command::Due(keys)).is_err() {
                    return;
                }
            }
        });
        let (changes, _) = broadcast::channel(4096);
        let stats = Arc::new(EngineStats::default());
        let failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        #[cfg(test)]
        let fail_writes: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let quiet: Arc<Quiet> = Arc::default();
        let worker = Worker {
            failure: failure.clone(),
            #[cfg(test)]
            fail_writes: fail_writes.clone(),
            transitions_since_trim: Default::default(),
            inflight: Default::default(),
            written: Default::default(),
            quiet: quiet.clone(),
            handover: Handover::spawn(store.clone(), tokio::runtime::Handle::current())
                .map_err(|e| EngineError::Thread(e.to_string()))?,
            store: store.clone(),
            outbox,
            scheduler,
            snapshot: snapshot.clone(),
            changes: changes.clone(),
            stats: stats.clone(),
            config,
            clock,
            fence,
        };
        spawn_worker(worker, rx)?;
        tracing::info!(
            monitors = snapshot.read().unwrap_or_else(|p| p.into_inner()).len(),
            load_ms = loaded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "loaded the monitors and armed their deadlines"
        );
        let series = Arc::new(MonitorSeries::new(snapshot.clone()));
        Ok(Self {
            tx,
            release: Arc::new(release),
            snapshot,
            store,
            ping_history: config.ping_history,
            changes,
            stats,
            series,
            clock,
            failure,
            #[cfg(test)]
            fail_writes,
            #[cfg(test)]
            quiet,
        })
    }

    /// `Err` with the reason while the engine cannot write monitor state.
    pub fn health(&self) -> Result<(), String> {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Resolves once the engine thread has taken a command sent now: it is alive and not
    /// stuck. `Err` if it is gone.
    pub async fn probe(&self) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Probe(tx))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Tests: makes the worker's writes fail (`true`) or work again.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, fail: bool) {
        self.fail_writes
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tests: holds the engine thread for `d`, as a stuck disk would. The answer comes
    /// once the thread is held: a probe sent after it is not answered until the stall ends.
    #[cfg(test)]
    pub(crate) fn stall(&self, d: std::time::Duration) -> oneshot::Receiver<()> {
        let (started, held) = oneshot::channel();
        let _ = self.tx.send(Command::Stall(d, started));
        held
    }

    /// Lets held deadlines through (see [`EngineConfig::hold_deadlines`]); those that came
    /// due meanwhile are evaluated at once.
    pub fn release_deadlines(&self) {
        self.release.send_replace(true);
    }

    /// The per-monitor families for `/metrics` (written beside the registry's, see
    /// [`MonitorSeries`]).
    pub fn series(&self) -> &MonitorSeries {
        &self.series
    }

    /// Adds the engine's families to `/metrics`.
    pub fn register_metrics(&self, registry: &mut MetricRegistry) {
        self.stats.register(self.snapshot.clone(), registry);
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Command,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Creates or updates a monitor durably; spec changes re-arm its deadline at once.
    pub async fn upsert(&self, def: MonitorDef) -> Result<Monitor, EngineError> {
        self.call(|tx| Command::Upsert(Box::new(def), tx)).await
    }

    /// Removes a monitor (its history too, unless it is retained); without a monitor
    /// under `key`, what a [`Self::suspend`] kept of it.
    pub async fn remove(&self, key: &str) -> Result<(), EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::Remove(key, None, tx)).await
    }

    /// [`Self::remove`] for the resource with uid `uid` only: a monitor (or what a
    /// suspension kept) recorded for another resource of that name, created since, stays.
    /// Decided on the engine's thread, so a definition that overtakes the caller is never
    /// removed by it.
    pub async fn remove_of(&self, key: &str, uid: &str) -> Result<(), EngineError> {
        let (key, uid) = (key.to_string(), uid.to_string());
        self.call(|tx| Command::Remove(key, Some(uid), tx)).await
    }

    /// Stops monitoring `key` while keeping its state and history, whatever its deletion
    /// policy: an [`Self::upsert`] of the key later picks them up again, as after a
    /// deletion with `Retain`; a [`Self::remove`] without a monitor under the key drops
    /// them.
    pub async fn suspend(&self, key: &str) -> Result<(), EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::Suspend(key, tx)).await
    }

    /// Drops the record and history a [`Self::suspend`] kept under `key` (not one its
    /// `Retain` policy keeps), and nothing else: a monitor defined under the key meanwhile
    /// stays as it is. For a suspended monitor whose resource is gone.
    pub async fn forget_suspended(&self, key: &str) -> Result<(), EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::Forget(key, None, tx)).await
    }

    /// [`Self::forget_suspended`] for the resource with uid `uid` only: a record kept for
    /// another resource of that name stays.
    pub async fn forget_suspended_of(&self, key: &str, uid: &str) -> Result<(), EngineError> {
        let (key, uid) = (key.to_string(), uid.to_string());
        self.call(|tx| Command::Forget(key, Some(uid), tx)).await
    }

    /// Applies a ping durably and tells whether the monitor is paused.
    pub async fn ping(&self, key: &str, input: PingInput) -> Result<PingOutcome, EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::Ping(key, input, tx)).await
    }

    /// Applies pings other replicas relayed, each with the instant it was taken (never
    /// later than now), in one round that also removes them from the relay; pings of
    /// monitors that no longer exist are dropped (and removed). Resolves once durable.
    pub async fn apply_relayed(&self, pings: Vec<RelayedPing>) -> Result<(), EngineError> {
        self.call(|tx| Command::Relayed(pings, tx)).await
    }

    /// Shows the leader's `changes` (on a replica that does not lead; one that leads
    /// ignores them): readers, subscribers and the deadline scheduler see them. Returns
    /// the ping tokens that changed, for the registry.
    pub async fn mirror(&self, changes: FeedChanges) -> Result<TokenChanges, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Mirror(Box::new(changes), tx))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Applies evidence from a Job of the monitor's watched CronJob durably. Reporting a
    /// Job again changes nothing, so a front end may report every Job it sees on each
    /// (re)list.
    pub async fn job(&self, key: &str, job: JobSignal) -> Result<(), EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::Job(key, job, tx)).await
    }

    /// Pauses or resumes a monitor.
    pub async fn set_paused(&self, key: &str, paused: bool) -> Result<Monitor, EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::SetPaused(key, paused, tx)).await
    }

    /// One monitor.
    pub fn get(&self, key: &str) -> Option<Monitor> {
        read_monitor(&self.snapshot, key)
    }

    /// A reader of the monitors that does not keep the engine running: for parts the engine
    /// itself holds (the outbox), where holding the engine would keep its thread and store
    /// alive after everything else let go.
    /// The reader answers `test` of monitor `key` (false when there is none) without
    /// copying it.
    pub fn reader(
        &self,
    ) -> impl Fn(&str, &dyn Fn(&Monitor) -> bool) -> bool + Send + Sync + 'static {
        let snapshot = self.snapshot.clone();
        move |key, test| {
            snapshot
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .is_some_and(test)
        }
    }

    /// Every monitor, sorted by key.
    pub fn list(&self) -> Vec<Monitor> {
        let mut v: Vec<Monitor> = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.def.key.cmp(&b.def.key));
        v
    }

    /// Runs `f` over the snapshot under its read lock, so readers can filter and count a
    /// large set without cloning every monitor; keep `f` short (the engine waits for it).
    pub fn view<R>(&self, f: impl FnOnce(&Monitors) -> R) -> R {
        f(&self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// How many monitors belong to application `app`, not counting `except`.
    pub fn count_for_application(&self, app: &str, except: Option<&str>) -> usize {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|m| m.def.application() == Some(app) && Some(m.def.key.as_str()) != except)
            .count()
    }

    /// How many monitors belong to application `app` and satisfy `counted`.
    pub fn count_for_application_where(
        &self,
        app: &str,
        counted: impl Fn(&Monitor) -> bool,
    ) -> usize {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|m| m.def.application() == Some(app) && counted(m))
            .count()
    }

    /// Monitors per state, for gauges (kept as monitors change: no walk over them all).
    pub fn counts(&self) -> HashMap<State, usize> {
        let all = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        State::ALL.iter().map(|s| (*s, all.count(*s))).collect()
    }

    /// The newest pings of a monitor, newest first.
    pub async fn pings(&self, num: u64, limit: usize) -> Result<Vec<PingRecord>, EngineError> {
        Ok(self.store.pings(num, limit, self.ping_history).await?)
    }

    /// The newest state transitions of a monitor, newest first.
    pub async fn transitions(
        &self,
        num: u64,
        limit: usize,
    ) -> Result<Vec<TransitionRecord>, EngineError> {
        Ok(self.store.transitions(num, limit).await?)
    }

    /// A retained (deleted with `Retain`) monitor's last record, for re-creation; `None`
    /// too when it cannot be read (logged).
    pub async fn retained(&self, key: &str) -> Option<Monitor> {
        match self.store.retained(key.to_string()).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(monitor = key, error = %e, "reading a retained monitor failed");
                None
            }
        }
    }

    /// Every retained record: those of monitors deleted with `Retain` and those a
    /// [`Self::suspend`] kept, as written (a round on its way to the store is not seen).
    pub async fn retained_all(&self) -> Result<Vec<Monitor>, EngineError> {
        Ok(self.store.retained_all().await?)
    }

    /// Subscribes to state transitions.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }
}

impl Monitor {
    /// Why it is Down, in the words its alert used; `None` unless Down.
    pub fn why_down(&self) -> Option<String> {
        let reason = self.state.down_reason.as_ref()?;
        Some(wording::describe_down(reason, self, self.state.since))
    }
}

/// Runs `worker` on its own thread: the store's synchronous calls may block, and one
/// thread keeps every change to a monitor in order.
fn spawn_worker(worker: Worker, rx: mpsc::UnboundedReceiver<Command>) -> Result<(), EngineError> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("hartslag-monitors".into())
        .spawn(move || {
            let _guard = runtime.enter();
            worker.run(rx);
        })
        .map(|_| ())
        .map_err(|e| EngineError::Thread(e.to_string()))
}

/// One monitor from the readers' snapshot.
fn read_monitor(snapshot: &Snapshot, key: &str) -> Option<Monitor> {
    snapshot
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::core::services::{Services, ServicesConfig, open_monitor_storage};
    use crate::core::storage::{MonitorRound, RoundDone, StorageFuture};
    use crate::core::token::TokenHash;

    /// The embedded backend's store, refusing rounds (as a full disk would) while `refuse`
    /// is set, and holding them (as a slow disk would) while `hold` is.
    #[derive(Default)]
    struct Gated {
        inner: Option<Arc<dyn MonitorStore>>,
        refuse: AtomicBool,
        hold: AtomicBool,
        held: std::sync::Mutex<Vec<(MonitorRound, RoundDone)>>,
        /// The keys each round handed over put whole and by state alone.
        puts: std::sync::Mutex<Vec<(Vec<String>, Vec<String>)>>,
        /// The relayed pings each round handed over applied.
        relayed: std::sync::Mutex<Vec<Vec<u64>>>,
        /// How many pings each round handed over recorded.
        ping_counts: std::sync::Mutex<Vec<usize>>,
    }

    impl Gated {
        fn over(inner: Arc<dyn MonitorStore>) -> Arc<Self> {
            Arc::new(Self {
                inner: Some(inner),
                ..Default::default()
            })
        }

        fn inner(&self) -> &Arc<dyn MonitorStore> {
            self.inner.as_ref().unwrap()
        }

        /// Pings in the rounds held so far.
        fn held_pings(&self) -> usize {
            self.held
                .lock()
                .unwrap()
                .iter()
                .map(|(r, _)| r.pings.len())
                .sum()
        }

        /// Stops holding and hands every held round to the store, in order.
        fn release(&self) {
            self.hold.store(false, Ordering::Relaxed);
            for (round, done) in std::mem::take(&mut *self.held.lock().unwrap()) {
                self.inner().commit_round(round, done);
            }
        }
    }

    impl MonitorStore for Gated {
        fn load_monitors(&self, batch: &mut dyn FnMut(Vec<Monitor>)) -> Result<(), StorageError> {
            self.inner().load_monitors(batch)
        }

        fn next_monitor_num(&self) -> Result<u64, StorageError> {
            self.inner().next_monitor_num()
        }

        fn find_retained(&self, key: &str) -> Result<Option<Monitor>, StorageError> {
            self.inner().find_retained(key)
        }

        fn commit_round(&self, round: MonitorRound, done: RoundDone) {
            let keys = |put: &[Arc<Monitor>]| put.iter().map(|m| m.def.key.clone()).collect();
            self.puts
                .lock()
                .unwrap()
                .push((keys(&round.put), keys(&round.put_state)));
            self.relayed.lock().unwrap().push(round.relayed.clone());
            self.ping_counts.lock().unwrap().push(round.pings.len());
            if self.refuse.load(Ordering::Relaxed) {
                // Reported from another thread, as a backend's writer would.
                std::thread::spawn(move || {
                    done(Err(StorageError::NotStored(
                        "no space left on device".into(),
                    )))
                });
                return;
            }
            let mut held = self.held.lock().unwrap();
            if self.hold.load(Ordering::Relaxed) {
                held.push((round, done));
                return;
            }
            drop(held);
            self.inner().commit_round(round, done);
        }

        fn pings(&self, num: u64, limit: usize, keep: u64) -> StorageFuture<'_, Vec<PingRecord>> {
            self.inner().pings(num, limit, keep)
        }

        fn transitions(&self, num: u64, limit: usize) -> StorageFuture<'_, Vec<TransitionRecord>> {
            self.inner().transitions(num, limit)
        }

        fn retained(&self, key: String) -> StorageFuture<'_, Option<Monitor>> {
            self.inner().retained(key)
        }

        fn retained_all(&self) -> StorageFuture<'_, Vec<Monitor>> {
            self.inner().retained_all()
        }
    }

    fn def(name: &str, now: jiff::Timestamp) -> MonitorDef {
        DefRecord {
            token: TokenHash::of("job-token"),
            origin: Origin::Kubernetes,
            ..DefRecord::sample(&format!("ns/{name}"), 1, now)
        }
        .into()
    }

    /// An engine over the embedded store behind a [`Gated`] one, with monitor `ns/job`.
    async fn gated_engine(dir: &std::path::Path) -> (Arc<Gated>, Engine, Monitor) {
        gated_engine_with(dir, EngineConfig::default()).await
    }

    async fn gated_engine_with(
        dir: &std::path::Path,
        config: EngineConfig,
    ) -> (Arc<Gated>, Engine, Monitor) {
        let storage = open_monitor_storage(dir);
        let store = Gated::over(storage.monitors);
        let outbox = Outbox::new(storage.outbox, Default::default());
        let engine = Engine::start(store.clone(), outbox, config, Clock::new()).unwrap();
        let m = engine
            .upsert(def("job", engine.clock().now()))
            .await
            .unwrap();
        (store, engine, m)
    }

    /// How many rounds the store was handed.
    fn rounds_of(store: &Gated) -> usize {
        store.puts.lock().unwrap().len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removal_after_a_suspension_in_the_same_round_drops_what_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine, m) = gated_engine(dir.path()).await;
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        // A ping, a suspension and a removal of one monitor, queued while the worker is
        // held: one round.
        let before = rounds_of(&store);
        engine.stall(Duration::from_millis(300)).await.unwrap();
        let (pinged, suspended, removed) = tokio::join!(
            engine.ping("ns/job", PingInput::success()),
            engine.suspend("ns/job"),
            engine.remove("ns/job")
        );
        pinged.unwrap();
        suspended.unwrap();
        removed.unwrap();
        assert_eq!(rounds_of(&store) - before, 1, "not one round");
        assert!(engine.get("ns/job").is_none());
        assert!(
            engine.retained("ns/job").await.is_none(),
            "the suspension's record outlived the removal that came after it"
        );
        assert!(engine.pings(m.num, 10).await.unwrap().is_empty());
        assert!(engine.transitions(m.num, 10).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suspension_alone_or_under_a_retain_policy_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let (_, engine, m) = gated_engine(dir.path()).await;
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        // Suspended alone: kept, history included.
        engine.suspend("ns/job").await.unwrap();
        assert!(engine.retained("ns/job").await.is_some());
        assert_eq!(engine.pings(m.num, 10).await.unwrap().len(), 1);
        // Defined again (it picks its record up), then suspended and removed in one round
        // under a `Retain` policy: the policy keeps it.
        let kept = DefRecord {
            token: TokenHash::of("job-token"),
            origin: Origin::Kubernetes,
            retain_on_delete: true,
            ..DefRecord::sample("ns/job", 1, engine.clock().now())
        };
        let back = engine.upsert(kept.into()).await.unwrap();
        assert_eq!(back.num, m.num);
        engine.stall(Duration::from_millis(300)).await.unwrap();
        let (suspended, removed) = tokio::join!(engine.suspend("ns/job"), engine.remove("ns/job"));
        suspended.unwrap();
        removed.unwrap();
        assert!(engine.retained("ns/job").await.is_some());
        assert_eq!(engine.pings(m.num, 10).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suspended_record_is_picked_up_by_its_own_resource_only() {
        let dir = tempfile::tempdir().unwrap();
        let (_, engine, m) = gated_engine(dir.path()).await;
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        let now = engine.clock().now();
        let same = |id: &str, retain| -> MonitorDef {
            DefRecord {
                id: id.into(),
                token: TokenHash::of("job-token"),
                origin: Origin::Kubernetes,
                retain_on_delete: retain,
                ..DefRecord::sample("ns/job", 1, now)
            }
            .into()
        };
        // The same resource (same id) comes back where it was.
        engine.suspend("ns/job").await.unwrap();
        let back = engine.upsert(same(&m.def.id, false)).await.unwrap();
        assert_eq!((back.num, back.state.pings), (m.num, 1));
        // Another resource of that name (the first was deleted meanwhile) starts afresh,
        // and what the suspension kept is gone.
        engine.suspend("ns/job").await.unwrap();
        let other = engine.upsert(same("another-uid", false)).await.unwrap();
        assert_ne!(other.num, m.num);
        assert_eq!(other.state.pings, 0);
        assert!(engine.pings(m.num, 10).await.unwrap().is_empty());
        // A record its `Retain` policy kept is for any resource of that name.
        engine.upsert(same("another-uid", true)).await.unwrap();
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        engine.suspend("ns/job").await.unwrap();
        let third = engine.upsert(same("third-uid", false)).await.unwrap();
        assert_eq!((third.num, third.state.pings), (other.num, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forgetting_a_suspension_drops_its_record_and_never_a_monitor() {
        let dir = tempfile::tempdir().unwrap();
        let (_, engine, m) = gated_engine(dir.path()).await;
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        // Defined under the key: it stays, whatever was kept.
        engine.forget_suspended("ns/job").await.unwrap();
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 1);
        engine.suspend("ns/job").await.unwrap();
        let listed = engine.retained_all().await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|m| m.def.key.as_str())
                .collect::<Vec<_>>(),
            vec!["ns/job"]
        );
        engine.forget_suspended("ns/job").await.unwrap();
        assert!(engine.retained("ns/job").await.is_none());
        assert!(engine.retained_all().await.unwrap().is_empty());
        assert!(engine.pings(m.num, 10).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_the_store_refuses_is_answered_with_its_error_and_never_published() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine, m) = gated_engine(dir.path()).await;
        let mut changes = engine.subscribe();
        store.refuse.store(true, Ordering::Relaxed);
        let err = engine
            .ping("ns/job", PingInput::success())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no space left on device"), "{err}");
        assert!(
            engine
                .health()
                .unwrap_err()
                .contains("writing monitor state failed")
        );
        // Readers, the history and subscribers see only what the store holds.
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 0);
        assert_eq!(engine.get("ns/job").unwrap().state.state, State::New);
        assert!(engine.pings(m.num, 10).await.unwrap().is_empty());
        assert!(
            changes.try_recv().is_err(),
            "a refused change was broadcast"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_deadlines_wait_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServicesConfig {
            data_dir: dir.path().to_path_buf(),
            cache_bytes: 8 << 20,
            ping_history: 10,
            outbox: Default::default(),
            limits: Default::default(),
            hold_deadlines: true,
            top_events: 10,
            database: None,
            installation: "standalone".into(),
            fence: Fence::sole(),
        };
        let core = Services::open(&config, &mut MetricRegistry::default())
            .await
            .unwrap();
        let now = core.engine.clock().now();
        core.engine.upsert(def("job", now)).await.unwrap();
        core.engine
            .ping("ns/job", PingInput::success())
            .await
            .unwrap();
        // Well past interval plus grace: held, so still Up.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(core.engine.get("ns/job").unwrap().state.state, State::Up);
        core.engine.release_deadlines();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while core.engine.get("ns/job").unwrap().state.state != State::Down {
            assert!(
                tokio::time::Instant::now() < deadline,
                "released deadlines were not evaluated"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A call polled once, so its command is on the engine's queue, to be awaited later.
    fn sent<T>(
        call: impl std::future::Future<Output = T> + Send + 'static,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> {
        let mut call = Box::pin(call);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending(), "answered at once");
        call
    }

    /// Waits (10 s at most) until the store holds `n` rounds.
    async fn until_held(store: &Gated, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.held.lock().unwrap().len() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store never held {n} rounds"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    type Answer = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<PingOutcome, EngineError>> + Send>,
    >;

    /// A ping of `ns/job`, on the engine's queue.
    fn ping_sent(engine: &Engine) -> Answer {
        let engine = engine.clone();
        sent(async move { engine.ping("ns/job", PingInput::success()).await })
    }

    /// An engine whose small rounds wait `gather` for the rounds ahead, and
    /// [`ROUNDS_AHEAD`](worker::ROUNDS_AHEAD) rounds of one ping each held as a slow disk
    /// would hold them, with their answers.
    async fn rounds_ahead_held(
        dir: &std::path::Path,
        gather: Duration,
    ) -> (Arc<Gated>, Engine, Vec<Answer>) {
        let config = EngineConfig {
            hold_deadlines: true,
            gather,
            ..Default::default()
        };
        let (store, engine, _) = gated_engine_with(dir, config).await;
        store.hold.store(true, Ordering::Relaxed);
        let mut answers = Vec::new();
        for n in 1..=worker::ROUNDS_AHEAD {
            answers.push(ping_sent(&engine));
            until_held(&store, n).await;
        }
        (store, engine, answers)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_that_come_while_rounds_are_on_their_way_go_in_one_round() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine, mut answers) =
            rounds_ahead_held(dir.path(), Duration::from_secs(60)).await;
        answers.push(ping_sent(&engine));
        // The thread took it and waits for the rounds ahead.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while engine.stats.gathered.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the round never waited for the rounds ahead"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answers.extend((0..9).map(|_| ping_sent(&engine)));
        store.release();
        for answer in answers {
            assert_eq!(answer.await.unwrap(), PingOutcome::Ok);
        }
        let counts = store.ping_counts.lock().unwrap().clone();
        assert_eq!(
            counts[counts.len() - 3..],
            [1, 1, 10],
            "pings per round, the last three of {counts:?}"
        );
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 12);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_round_waits_for_the_rounds_ahead_no_longer_than_its_patience() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine, mut answers) =
            rounds_ahead_held(dir.path(), Duration::from_millis(50)).await;
        answers.push(ping_sent(&engine));
        // Nothing ahead settles, yet the third round is handed over, and the thread
        // still answers its probe.
        until_held(&store, 3).await;
        engine.probe().await.unwrap();
        store.release();
        for answer in answers {
            assert_eq!(answer.await.unwrap(), PingOutcome::Ok);
        }
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 3);
    }

    /// Waits (10 s at most) until monitor `key` is in `state`.
    async fn until_in(engine: &Engine, key: &str, state: State) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while engine.get(key).map(|m| m.state.state) != Some(state) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_monitor_its_deadline_drove_down_is_armed_again_by_its_next_ping() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, engine, _) = gated_engine(dir.path()).await;
        let mut changes = engine.subscribe();
        for _ in 0..2 {
            engine.ping("ns/job", PingInput::success()).await.unwrap();
            // Its deadline fires (1 s, no grace); the Down leaves nothing to arm.
            until_in(&engine, "ns/job", State::Down).await;
        }
        let mut downs = 0;
        while let Ok(c) = changes.try_recv() {
            downs += usize::from(c.to == State::Down);
        }
        assert_eq!(downs, 2, "each ping armed a deadline that drove it Down");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn monitors_without_an_alert_target_going_down_together_log_one_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, engine, _) = gated_engine(dir.path()).await;
        let now = engine.clock().now();
        for name in ["a", "b"] {
            engine.upsert(def(name, now)).await.unwrap();
        }
        for name in ["job", "a", "b"] {
            let key = format!("ns/{name}");
            engine.ping(&key, PingInput::success()).await.unwrap();
        }
        for name in ["job", "a", "b"] {
            until_in(&engine, &format!("ns/{name}"), State::Down).await;
        }
        // The first Down's warning went out and the other two were held back; a line
        // asked for within the minute is held back too, and all three are counted.
        assert_eq!(engine.quiet.untargeted.pass(), None);
        assert_eq!(engine.quiet.untargeted.held_back(), 3);
    }

    /// An engine over `dir` whose scheduler sends nothing itself: the test hands the
    /// worker its deadlines.
    fn held_engine(dir: &std::path::Path) -> Engine {
        let storage = open_monitor_storage(dir);
        let outbox = Outbox::new(storage.outbox, Default::default());
        let config = EngineConfig {
            hold_deadlines: true,
            ..Default::default()
        };
        Engine::start(storage.monitors, outbox, config, Clock::new()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlines_due_together_are_handled_by_when_their_down_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let engine = held_engine(dir.path());
        let now = engine.clock().now();
        // Due first, by deadline and by number, but only Late then, with seconds to go.
        let mut late = def("a-late", now);
        late.grace_secs = 5;
        engine.upsert(late).await.unwrap();
        engine.upsert(def("z-down", now)).await.unwrap();
        engine
            .ping("ns/a-late", PingInput::success())
            .await
            .unwrap();
        engine
            .ping("ns/z-down", PingInput::success())
            .await
            .unwrap();
        let mut changes = engine.subscribe();
        let due = engine.get("ns/z-down").unwrap().state.deadline.unwrap();
        tokio::time::sleep_until(engine.clock().instant_for(due)).await;
        // Both reach the worker as one herd, in the order they fell due (the scheduler's,
        // held here so that it sends nothing itself).
        let herd = herd::placed(
            &engine.snapshot,
            vec!["ns/a-late".into(), "ns/z-down".into()],
        );
        engine.tx.send(Command::Due(herd)).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .expect("a transition")
            .unwrap();
        let second = changes.recv().await.unwrap();
        assert_eq!(
            [(first.key, first.to), (second.key, second.to)],
            [
                ("ns/z-down".to_string(), State::Down),
                ("ns/a-late".to_string(), State::Late)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_is_answered_before_a_herd_it_arrived_behind() {
        let dir = tempfile::tempdir().unwrap();
        let engine = held_engine(dir.path());
        let now = engine.clock().now();
        const HERD: usize = 2_000;
        let keys: Vec<String> = (0..HERD).map(|i| format!("ns/h{i}")).collect();
        for i in 0..HERD {
            engine.upsert(def(&format!("h{i}"), now)).await.unwrap();
        }
        for key in &keys {
            engine.ping(key, PingInput::success()).await.unwrap();
        }
        let due = engine.get(&keys[HERD - 1]).unwrap().state.deadline.unwrap();
        tokio::time::sleep_until(engine.clock().instant_for(due)).await;
        let before = engine
            .stats
            .transitions
            .load(std::sync::atomic::Ordering::Relaxed);
        // Both queue while the worker is held, the probe behind the whole herd.
        engine.stall(Duration::from_millis(300));
        engine
            .tx
            .send(Command::Due(herd::placed(
                &engine.snapshot,
                keys.iter().map(|k| k.as_str().into()).collect(),
            )))
            .map_err(|_| ())
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), engine.probe())
            .await
            .expect("the probe is answered")
            .unwrap();
        let stepped = engine
            .stats
            .transitions
            .load(std::sync::atomic::Ordering::Relaxed)
            - before;
        assert!(
            (stepped as usize) < HERD,
            "the probe waited for the herd: {stepped} of {HERD} monitors went Down before it"
        );
        // The herd still goes through.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while keys
            .iter()
            .any(|k| engine.get(k).unwrap().state.state != State::Down)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the herd never went Down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_down_that_came_due_goes_before_a_ping_for_another_monitor_that_came_first() {
        let dir = tempfile::tempdir().unwrap();
        let engine = held_engine(dir.path());
        let now = engine.clock().now();
        for name in ["a", "b", "c", "d", "x"] {
            engine.upsert(def(name, now)).await.unwrap();
        }
        for name in ["a", "b", "c", "d"] {
            engine
                .ping(&format!("ns/{name}"), PingInput::success())
                .await
                .unwrap();
        }
        let mut changes = engine.subscribe();
        let due = engine.get("ns/d").unwrap().state.deadline.unwrap();
        tokio::time::sleep_until(engine.clock().instant_for(due)).await;
        // Queued while the worker is held: a herd, a ping, then another herd.
        engine.stall(Duration::from_millis(300));
        let keys = |k: &[&str]| {
            let keys = k.iter().map(|k| format!("ns/{k}").into()).collect();
            herd::placed(&engine.snapshot, keys)
        };
        let send = |c| engine.tx.send(c).map_err(|_| ()).unwrap();
        send(Command::Due(keys(&["c", "a", "b"])));
        let (reply, pinged) = oneshot::channel();
        send(Command::Ping("ns/x".into(), PingInput::success(), reply));
        send(Command::Due(keys(&["d"])));
        let mut order = Vec::new();
        while order.len() < 5 {
            let c = tokio::time::timeout(Duration::from_secs(10), changes.recv())
                .await
                .expect("a transition")
                .unwrap();
            order.push((c.key, c.to));
        }
        // Every Down is due: d's, which fired after x's ping, does not wait for it.
        let expected = [
            ("a", State::Down),
            ("b", State::Down),
            ("c", State::Down),
            ("d", State::Down),
            ("x", State::Up),
        ]
        .map(|(k, s)| (format!("ns/{k}"), s));
        assert_eq!(order, expected);
        assert_eq!(pinged.await.unwrap().unwrap(), PingOutcome::Ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_stops_taking_commands_while_the_store_lags_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine, m) = gated_engine(dir.path()).await;
        store.hold.store(true, Ordering::Relaxed);
        let bound = worker::MAX_IN_FLIGHT;
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pings: Vec<_> = (0..2 * bound)
            .map(|_| {
                let (engine, sent) = (engine.clone(), sent.clone());
                tokio::spawn(async move {
                    sent.fetch_add(1, Ordering::Relaxed);
                    engine.ping("ns/job", PingInput::success()).await
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while store.held_pings() < bound || sent.load(Ordering::Relaxed) < 2 * bound {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker never filled the pipeline"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Without the bound the worker takes every queued ping within milliseconds.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = store.held_pings();
        assert!(
            held < bound + worker::MAX_ROUND,
            "{held} pings on their way to a store that took none"
        );
        store.release();
        for p in pings {
            assert_eq!(p.await.unwrap().unwrap(), PingOutcome::Ok);
        }
        assert_eq!(engine.pings(m.num, 1).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_writes_whole_only_the_monitors_whose_definition_changed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_monitor_storage(dir.path());
        let store = Gated::over(storage.monitors);
        let outbox = Outbox::new(storage.outbox, Default::default());
        let engine =
            Engine::start(store.clone(), outbox, EngineConfig::default(), Clock::new()).unwrap();
        let now = engine.clock().now();
        engine.upsert(def("job", now)).await.unwrap();
        engine.upsert(def("other", now)).await.unwrap();
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        engine.set_paused("ns/other", true).await.unwrap();
        // A ping and a redefinition of one monitor in one round: written whole.
        engine.stall(Duration::from_millis(300));
        let mut changed = def("job", now);
        changed.grace_secs = 30;
        let (pinged, defined) = tokio::join!(
            engine.ping("ns/job", PingInput::success()),
            engine.upsert(changed)
        );
        pinged.unwrap();
        assert_eq!(defined.unwrap().def.grace_secs, 30);
        engine.ping("ns/other", PingInput::success()).await.unwrap();

        let keys = |k: &[&str]| k.iter().map(|k| format!("ns/{k}")).collect::<Vec<_>>();
        assert_eq!(
            *store.puts.lock().unwrap(),
            vec![
                (keys(&["job"]), keys(&[])),
                (keys(&["other"]), keys(&[])),
                (keys(&[]), keys(&["job"])),
                (keys(&["other"]), keys(&[])),
                (keys(&["job"]), keys(&[])),
                (keys(&[]), keys(&["other"])),
            ]
        );
        let job = engine.get("ns/job").unwrap();
        assert_eq!((job.state.pings, job.def.grace_secs), (2, 30));
    }

    fn relayed(id: u64, key: &str, at: jiff::Timestamp) -> RelayedPing {
        RelayedPing {
            id,
            key: key.into(),
            at,
            input: PingInput::success(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relayed_pings_are_applied_when_taken_and_leave_the_relay_in_their_round() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine, m) = gated_engine(dir.path()).await;
        let now = engine.clock().now();
        let taken = now - jiff::SignedDuration::from_millis(400);
        let batch = vec![
            relayed(7, "ns/job", taken),
            relayed(8, "ns/gone", taken),
            relayed(9, "ns/job", now + jiff::SignedDuration::from_secs(3600)),
        ];
        engine.apply_relayed(batch).await.unwrap();
        assert_eq!(store.relayed.lock().unwrap().last(), Some(&vec![7, 8, 9]));
        let job = engine.get("ns/job").unwrap();
        assert_eq!((job.state.state, job.state.pings), (State::Up, 2));
        // The first ping counts from when it was taken; the one from a clock running an
        // hour ahead counts from when the leader applied it, not from the future.
        let pings = engine.pings(m.num, 10).await.unwrap();
        assert_eq!(pings[1].at, taken);
        assert!(pings[0].at <= engine.clock().now(), "{:?}", pings[0].at);
        assert!(job.state.last_ping_at.unwrap() <= engine.clock().now());
        // Only pings of monitors that are gone: a round that removes them all the same.
        engine
            .apply_relayed(vec![relayed(10, "ns/gone", now)])
            .await
            .unwrap();
        assert_eq!(store.relayed.lock().unwrap().last(), Some(&vec![10]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_writes_nothing_and_shows_the_leaders_changes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_monitor_storage(dir.path());
        let store = Gated::over(storage.monitors);
        let outbox = Outbox::new(storage.outbox, Default::default());
        let fence = Fence::follower();
        let config = EngineConfig {
            hold_deadlines: true,
            ..Default::default()
        };
        let engine =
            Engine::start_as(store.clone(), outbox, config, Clock::new(), fence.clone()).unwrap();
        let now = engine.clock().now();
        let refused = engine.upsert(def("job", now)).await.unwrap_err();
        assert!(matches!(refused, EngineError::NotLeader), "{refused}");
        assert!(matches!(
            engine.ping("ns/job", PingInput::success()).await,
            Err(EngineError::NotLeader)
        ));
        assert!(matches!(
            engine.apply_relayed(vec![relayed(1, "ns/job", now)]).await,
            Err(EngineError::NotLeader)
        ));
        assert!(
            store.puts.lock().unwrap().is_empty(),
            "a follower wrote a round"
        );

        // The leader defines the monitor, then it goes Down.
        let mut changes = engine.subscribe();
        let mut m = Monitor {
            num: 3,
            def: def("job", now),
            state: state::MonitorState::created(&def("job", now).timing(), now, false),
            last_run_ms: None,
        };
        let shown = |m: &Monitor, version| FeedChanges {
            monitors: vec![m.clone()],
            removed: vec![],
            version,
            everything: false,
        };
        let tokens = engine.mirror(shown(&m, 1)).await.unwrap();
        assert_eq!(tokens.added, vec![(m.def.token, "ns/job".to_string())]);
        assert_eq!(engine.get("ns/job").as_ref(), Some(&m));
        m.state.state = State::Down;
        m.state.since = now + jiff::SignedDuration::from_secs(2);
        let tokens = engine.mirror(shown(&m, 2)).await.unwrap();
        assert!(tokens.is_empty(), "{tokens:?}");
        assert_eq!(engine.get("ns/job").unwrap().state.state, State::Down);
        let told = changes.try_recv().unwrap();
        assert_eq!(
            (told.from, told.to, told.at),
            (State::New, State::Down, m.state.since)
        );

        // Once it leads, it writes, and ignores the mirror.
        fence.lead(2);
        let pinged = engine.ping("ns/job", PingInput::success()).await.unwrap();
        assert_eq!(pinged, PingOutcome::Ok);
        assert_eq!(engine.get("ns/job").unwrap().state.state, State::Up);
        engine.mirror(shown(&m, 3)).await.unwrap();
        assert_eq!(engine.get("ns/job").unwrap().state.state, State::Up);
    }
}
