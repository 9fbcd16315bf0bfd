//! One replica among several that share a database: what it does according to whether
//! it leads ([`Fence`]).
//!
//! Every replica takes pings. The one that leads applies them in its engine; the others
//! post them to the relay and answer once the post is durable, and the leader's relay
//! pump applies them ([`Replica::spawn_relay_pump`]). A replica that does not lead shows the
//! leader's rounds ([`Mirror`]) and the applications the leader defined
//! ([`spawn_app_refresh`]). Each of these waits for the backend's change signal and also
//! polls every [`POLL`]: a notification sent while a listening connection was down is
//! lost.
//!
//! The embedded backend serves one process, which always leads: none of this runs there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::monitor::engine::{Engine, EngineError, PingInput, PingOutcome};
use super::monitor::state::State;
use super::registry::Registry;
use super::storage::{AppStore, Fence, MonitorFeed, PingRelay, Signal, StorageError};

/// How often a reader polls besides waiting for the change signal.
pub const POLL: Duration = Duration::from_secs(1);

/// Most relayed pings applied in one round.
const RELAY_BATCH: usize = 512;

/// Why a ping was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// No monitor under the key.
    #[error("heartbeat not found")]
    NotFound,
    /// The store failed or refused it (the relay's insert, or the engine's round): which
    /// failure, so the answer can name it (the database unreachable, its schema newer).
    #[error("{0}")]
    Storage(StorageError),
    /// Neither the engine nor the relay could take it for another reason (the engine
    /// stopped, or this replica stopped leading on the way); the client should retry.
    #[error("{0}")]
    Unavailable(String),
}

/// How this replica takes pings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replica {
    fence: Fence,
    engine: Engine,
    relay: Option<Arc<dyn PingRelay>>,
    /// Held while a batch is read from the relay and applied: the relay pump and a
    /// take-over's drain would otherwise read the same rows and apply each ping twice.
    applying: Arc<tokio::sync::Mutex<()>>,
}

impl Replica {
    /// A replica leading while `fence` says so, posting pings to `relay` while it does
    /// not (without a relay, it always applies them itself).
    pub fn new(fence: Fence, engine: Engine, relay: Option<Arc<dyn PingRelay>>) -> Self {
        Self {
            fence,
            engine,
            relay,
            applying: Arc::default(),
        }
    }

    /// The fence this replica leads under: whoever decides leadership sets it.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether this replica leads (its engine writes rounds).
    pub fn leads(&self) -> bool {
        self.fence.generation().is_some()
    }

    /// Takes a ping for monitor `key`: applied in the engine where this replica leads,
    /// posted to the relay where it does not. Resolves once it is durable either way,
    /// with what the monitor's state (here: as this replica shows it) tells the sender.
    pub async fn ping(&self, key: &str, input: PingInput) -> Result<PingOutcome, PingError> {
        let Some(relay) = self.relay.as_ref().filter(|_| !self.leads()) else {
            return match self.engine.ping(key, input).await {
                Ok(outcome) => Ok(outcome),
                Err(EngineError::NotFound) => Err(PingError::NotFound),
                Err(EngineError::Write(e) | EngineError::Storage(e)) => Err(PingError::Storage(e)),
                // Deposed between the check and the engine (the process is about to stop):
                // the client retries, with a replica that relays it or the new leader.
                Err(e) => Err(PingError::Unavailable(e.to_string())),
            };
        };
        let paused = self
            .engine
            .view(|all| all.get(key).map(|m| m.state.state == State::Paused))
            .ok_or(PingError::NotFound)?;
        let at = self.engine.clock().now();
        relay
            .post(key.to_string(), at, input)
            .await
            .map_err(PingError::Storage)?;
        Ok(if paused {
            PingOutcome::Paused
        } else {
            PingOutcome::Ok
        })
    }
}

impl Replica {
    /// Applies every ping in the relay, batch by batch, until it is empty: a replica that
    /// has just taken over does so (after its mirror caught up and its fence leads)
    /// before its deadlines are released, so no ping a replica answered is judged missing.
    /// The relay pump does the same on its own within [`POLL`]; this waits for it.
    pub async fn drain_relay(&self) -> Result<(), DrainError> {
        let Some(relay) = &self.relay else {
            return Ok(());
        };
        while self.apply_batch(relay.as_ref()).await? {}
        Ok(())
    }

    /// Applies the oldest batch in the relay; false when there was none. One batch at a
    /// time: the next is read only once the round that applied this one is durable and
    /// has removed its pings from the relay.
    async fn apply_batch(&self, relay: &dyn PingRelay) -> Result<bool, DrainError> {
        let _one_at_a_time = self.applying.lock().await;
        let batch = relay.take(0, RELAY_BATCH).await?;
        if batch.is_empty() {
            return Ok(false);
        }
        self.engine.apply_relayed(batch).await?;
        Ok(true)
    }

    /// While this replica leads, applies the pings other replicas relayed, oldest first,
    /// a batch per round. Each batch is read afresh from the relay once the round that
    /// applied the one before is durable (and removed those from the relay), so a ping
    /// posted in a transaction that committed after a newer one's is not passed over.
    pub fn spawn_relay_pump(&self) {
        let Some(relay) = self.relay.clone() else {
            return;
        };
        let replica = self.clone();
        let signal = relay.signal();
        tokio::spawn(async move {
            loop {
                if !replica.leads() {
                    wait(&signal).await;
                    continue;
                }
                let failed = match replica.apply_batch(relay.as_ref()).await {
                    Ok(true) => None,
                    Ok(false) => {
                        wait(&signal).await;
                        continue;
                    }
                    Err(DrainError::Read(StorageError::Stopped)) => return,
                    Err(e) => Some(e),
                };
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "applying relayed pings failed; retrying");
                    tokio::time::sleep(POLL).await;
                }
            }
        });
    }
}

/// Why the relay could not be drained.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The relay could not be read.
    #[error("reading the relayed pings failed: {0}")]
    Read(#[from] StorageError),
    /// The engine could not apply them.
    #[error("applying the relayed pings failed: {0}")]
    Apply(#[from] EngineError),
}

/// Waits until `signal` is raised or [`POLL`] has passed.
async fn wait(signal: &Signal) {
    let _ = tokio::time::timeout(POLL, signal.notified()).await;
}

/// While this replica does not lead, refreshes the applications its registry knows from
/// the store whenever one may have changed: the leader defines them (and their tokens).
pub fn spawn_app_refresh(
    fence: Fence,
    registry: Registry,
    apps: Arc<dyn AppStore>,
    signal: Signal,
) {
    tokio::spawn(async move {
        loop {
            wait(&signal).await;
            if fence.generation().is_some() {
                continue;
            }
            match apps.load_apps().await {
                Ok(records) => registry.sync_applications(records),
                Err(StorageError::Stopped) => return,
                Err(e) => tracing::warn!(error = %e, "refreshing the applications failed"),
            }
        }
    });
}

/// How long a replica's hold on its admin token lasts unless renewed: its token stops
/// working this long after the replica stopped (or stalled), unless another holds it.
pub const ADMIN_HOLD: Duration = Duration::from_secs(15);

/// How often a replica renews its hold and learns the admin tokens the others hold.
const ADMIN_RENEW: Duration = Duration::from_secs(3);

/// Keeps this replica's admin token held in the store as replica `holder`, and its
/// registry accepting the admin tokens every running replica holds (see
/// [`Registry::set_admin_token`]): renewed every few seconds, and at once when its own
/// changes.
pub fn spawn_admin_hold(registry: Registry, holder: String) {
    let changed = registry.admin_changed();
    tokio::spawn(async move {
        loop {
            match registry.hold_admin_token(&holder, ADMIN_HOLD).await {
                Ok(()) => {}
                Err(super::registry::RegistryError::Storage(StorageError::Stopped)) => return,
                // The tokens accepted stay as they are until the store answers again.
                Err(e) => tracing::warn!(error = %e, "renewing the admin token's hold failed"),
            }
            let _ = tokio::time::timeout(ADMIN_RENEW, changed.notified()).await;
        }
    });
}

/// The leader's rounds, shown by a replica that does not lead: its engine's monitors and
/// its registry's ping tokens follow what the leader writes.
#[derive(Debug)]
pub struct Mirror {
    engine: Engine,
    registry: Registry,
    feed: Arc<dyn MonitorFeed>,
    /// The version of the newest round shown.
    version: tokio::sync::Mutex<u64>,
    /// Catch-ups begun (numbered from 1, under `version`'s lock), and the number of the
    /// newest one that succeeded: whoever asks for a catch-up that began after its own
    /// arrival shares one with the others who asked meanwhile ([`Mirror::catch_up_fresh`]).
    begun: AtomicU64,
    finished: AtomicU64,
}

impl Mirror {
    /// A mirror of `feed` whose engine shows every round up to `version`.
    pub fn new(
        engine: Engine,
        registry: Registry,
        feed: Arc<dyn MonitorFeed>,
        version: u64,
    ) -> Self {
        Self {
            engine,
            registry,
            feed,
            version: tokio::sync::Mutex::new(version),
            begun: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        }
    }

    /// Shows every round written so far. A replica taking over calls it once the
    /// deposed leader can write no more and before its fence leads: its engine then
    /// builds on every round the deposed leader wrote.
    pub async fn catch_up(&self) -> Result<(), StorageError> {
        let mut version = self.version.lock().await;
        self.catch_up_from(&mut version).await
    }

    /// Shows every round written before the call, as [`Self::catch_up`] does, without
    /// waiting for the change signal: for a ping whose token this replica does not know
    /// yet, which may be that of a monitor the leader has just defined (its `Ready`
    /// condition written, its Secret read by a job), so that a token that works on the
    /// leader works here too. Callers that come while one catch-up runs share the next:
    /// a burst of unknown tokens costs a read of the database or two, not one each.
    pub async fn catch_up_fresh(&self) -> Result<(), StorageError> {
        self.catch_up_after(self.ticket()).await
    }

    /// The number of the first catch-up that begins after now.
    fn ticket(&self) -> u64 {
        self.begun.load(Ordering::Acquire) + 1
    }

    /// Catches up unless a catch-up numbered `wanted` or later has succeeded meanwhile.
    async fn catch_up_after(&self, wanted: u64) -> Result<(), StorageError> {
        let mut version = self.version.lock().await;
        if self.finished.load(Ordering::Acquire) >= wanted {
            return Ok(());
        }
        self.catch_up_from(&mut version).await
    }

    /// Catches up from `version` (its lock held) and moves it on.
    async fn catch_up_from(&self, version: &mut u64) -> Result<(), StorageError> {
        let number = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
        let changes = self.feed.changes_since(*version).await?;
        let next = changes.version;
        let empty = changes.monitors.is_empty() && changes.removed.is_empty();
        if !empty || changes.everything {
            let tokens = self
                .engine
                .mirror(changes)
                .await
                .map_err(|_| StorageError::Stopped)?;
            self.registry
                .index_monitor_tokens(&tokens.dropped, &tokens.added);
        }
        *version = next.max(*version);
        self.finished.fetch_max(number, Ordering::AcqRel);
        Ok(())
    }

    /// Catches up whenever a round may have been written, for as long as this replica
    /// does not lead.
    pub fn spawn(self: Arc<Self>, fence: Fence) {
        let signal = self.feed.signal();
        tokio::spawn(async move {
            while fence.generation().is_none() {
                match self.catch_up().await {
                    Ok(()) => {}
                    Err(StorageError::Stopped) => return,
                    Err(e) => tracing::warn!(error = %e, "reading the leader's rounds failed"),
                }
                wait(&signal).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use jiff::Timestamp;

    use super::*;
    use crate::core::alert::outbox::Outbox;
    use crate::core::monitor::engine::{
        DefRecord, EngineConfig, Monitor, MonitorDef, PingRecord, TransitionRecord,
    };
    use crate::core::monitor::schedule::Clock;
    use crate::core::monitor::state::MonitorState;
    use crate::core::services::open_monitor_storage;
    use crate::core::storage::{
        FeedChanges, MonitorRound, MonitorStore, RelayedPing, RoundDone, StorageFuture,
    };
    use crate::core::token::TokenKind;

    /// A relay in memory.
    #[derive(Default)]
    struct Relay {
        rows: Mutex<BTreeMap<u64, RelayedPing>>,
        next: Mutex<u64>,
        signal: Signal,
    }

    impl PingRelay for Relay {
        fn post(&self, key: String, at: Timestamp, input: PingInput) -> StorageFuture<'_, u64> {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            let id = *next;
            let ping = RelayedPing { id, key, at, input };
            self.rows.lock().unwrap().insert(id, ping);
            self.signal.notify_one();
            Box::pin(async move { Ok(id) })
        }

        fn take(&self, after: u64, limit: usize) -> StorageFuture<'_, Vec<RelayedPing>> {
            let rows = self.rows.lock().unwrap();
            let taken = rows.range(after + 1..).take(limit).map(|(_, p)| p.clone());
            let taken: Vec<_> = taken.collect();
            Box::pin(async move { Ok(taken) })
        }

        fn signal(&self) -> Signal {
            self.signal.clone()
        }
    }

    /// The embedded store, removing a round's relayed pings from `relay` once the round is
    /// durable, as a shared backend does in the round's transaction; refusing every round
    /// (as a leader killed before its round commits) while `refuse` is set.
    struct Shared {
        inner: Arc<dyn MonitorStore>,
        relay: Arc<Relay>,
        refuse: AtomicBool,
    }

    impl MonitorStore for Shared {
        fn load_monitors(&self, batch: &mut dyn FnMut(Vec<Monitor>)) -> Result<(), StorageError> {
            self.inner.load_monitors(batch)
        }

        fn next_monitor_num(&self) -> Result<u64, StorageError> {
            self.inner.next_monitor_num()
        }

        fn find_retained(&self, key: &str) -> Result<Option<Monitor>, StorageError> {
            self.inner.find_retained(key)
        }

        fn commit_round(&self, round: MonitorRound, done: RoundDone) {
            if self.refuse.load(Ordering::Relaxed) {
                return done(Err(StorageError::Unavailable(
                    "the leader was killed".into(),
                )));
            }
            let (relay, ids) = (self.relay.clone(), round.relayed.clone());
            self.inner.commit_round(
                round,
                Box::new(move |r| {
                    if r.is_ok() {
                        let mut rows = relay.rows.lock().unwrap();
                        ids.iter().for_each(|id| drop(rows.remove(id)));
                    }
                    done(r)
                }),
            );
        }

        fn pings(&self, num: u64, limit: usize, keep: u64) -> StorageFuture<'_, Vec<PingRecord>> {
            self.inner.pings(num, limit, keep)
        }

        fn transitions(&self, num: u64, limit: usize) -> StorageFuture<'_, Vec<TransitionRecord>> {
            self.inner.transitions(num, limit)
        }

        fn retained(&self, key: String) -> StorageFuture<'_, Option<Monitor>> {
            self.inner.retained(key)
        }

        fn retained_all(&self) -> StorageFuture<'_, Vec<Monitor>> {
            self.inner.retained_all()
        }
    }

    fn def(name: &str) -> MonitorDef {
        DefRecord::sample(&format!("ns/{name}"), 3600, Timestamp::now()).into()
    }

    /// A success ping with a body, so the relayed ping can be told in the history.
    fn success() -> PingInput {
        PingInput {
            body: Some("done".into()),
            ..PingInput::success()
        }
    }

    /// An engine over `dir`'s embedded store shared through `relay`, leading while
    /// `fence` says so.
    fn engine(dir: &std::path::Path, relay: &Arc<Relay>, fence: &Fence) -> (Engine, Arc<Shared>) {
        let storage = open_monitor_storage(dir);
        let store = Arc::new(Shared {
            inner: storage.monitors,
            relay: relay.clone(),
            refuse: AtomicBool::new(false),
        });
        let outbox = Outbox::new(storage.outbox, Default::default());
        let config = EngineConfig::default();
        let engine = Engine::start_as(store.clone(), outbox, config, Clock::new(), fence.clone());
        (engine.unwrap(), store)
    }

    async fn until(what: &str, mut test: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !test() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relayed_ping_is_applied_once_and_leaves_the_relay_with_its_round() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Arc::new(Relay::default());
        let fence = Fence::sole();
        let (engine, _) = engine(dir.path(), &relay, &fence);
        engine.upsert(def("job")).await.unwrap();
        engine.upsert(def("held")).await.unwrap();
        engine.set_paused("ns/held", true).await.unwrap();
        // This replica stops leading: its pings go to the relay.
        fence.depose();
        let replica = Replica::new(fence.clone(), engine.clone(), Some(relay.clone()));
        assert_eq!(
            replica.ping("ns/job", success()).await.unwrap(),
            PingOutcome::Ok
        );
        let paused = replica.ping("ns/held", success()).await.unwrap();
        assert_eq!(paused, PingOutcome::Paused, "as this replica shows it");
        assert!(matches!(
            replica.ping("ns/none", success()).await,
            Err(PingError::NotFound)
        ));
        assert_eq!(relay.rows.lock().unwrap().len(), 2);
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 0);

        // It leads again: the pump applies both, once.
        replica.spawn_relay_pump();
        fence.lead(2);
        until("the relay is drained", || {
            relay.rows.lock().unwrap().is_empty()
        })
        .await;
        let job = engine.get("ns/job").unwrap();
        assert_eq!((job.state.state, job.state.pings), (State::Up, 1));
        let history = engine.pings(job.num, 10).await.unwrap();
        assert_eq!(history[0].body.as_deref(), Some("done"));
        // Polled and signalled again: nothing is applied twice.
        relay.signal.notify_one();
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 1);
        assert_eq!(engine.get("ns/held").unwrap().state.pings, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ping_whose_round_never_committed_is_applied_by_the_next_leader() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Arc::new(Relay::default());
        let first = Fence::sole();
        {
            let (engine, store) = engine(dir.path(), &relay, &first);
            engine.upsert(def("job")).await.unwrap();
            first.depose();
            let follower = Replica::new(first.clone(), engine.clone(), Some(relay.clone()));
            follower.ping("ns/job", success()).await.unwrap();
            // It leads and applies the ping, but dies before the round commits.
            store.refuse.store(true, Ordering::Relaxed);
            first.lead(2);
            let taken = relay.take(0, 10).await.unwrap();
            assert!(engine.apply_relayed(taken).await.is_err());
            assert_eq!(
                relay.rows.lock().unwrap().len(),
                1,
                "the ping left the relay"
            );
        }
        // The next leader (its store holds what the first one's held: the monitor, not
        // the ping) applies it once.
        let next = Fence::sole();
        let other = tempfile::tempdir().unwrap();
        let (engine, _) = engine(other.path(), &relay, &next);
        engine.upsert(def("job")).await.unwrap();
        let replica = Replica::new(next.clone(), engine.clone(), Some(relay.clone()));
        replica.drain_relay().await.unwrap();
        assert!(relay.rows.lock().unwrap().is_empty());
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 1);
        // Its pump finds nothing more to apply.
        replica.spawn_relay_pump();
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(engine.get("ns/job").unwrap().state.pings, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_take_overs_drain_racing_the_pump_applies_each_relayed_ping_once() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Arc::new(Relay::default());
        let fence = Fence::sole();
        let (engine, _) = engine(dir.path(), &relay, &fence);
        engine.upsert(def("job")).await.unwrap();
        fence.depose();
        let replica = Replica::new(fence.clone(), engine.clone(), Some(relay.clone()));
        replica.spawn_relay_pump();
        let relayed = 4 * RELAY_BATCH as u64 + 100;
        for _ in 0..relayed {
            replica.ping("ns/job", success()).await.unwrap();
        }
        // The take-over: it leads, a follower's post wakes the pump, and the promotion
        // drains the relay at the same moment.
        fence.lead(2);
        relay.signal.notify_one();
        replica.drain_relay().await.unwrap();
        assert!(relay.rows.lock().unwrap().is_empty());
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(engine.get("ns/job").unwrap().state.pings, relayed);
    }

    /// A feed that hands out what a test put in it, counting its reads.
    #[derive(Default)]
    struct Feed {
        changes: Mutex<Vec<Monitor>>,
        signal: Signal,
        reads: std::sync::atomic::AtomicUsize,
        /// Held for writing, it holds every read.
        gate: tokio::sync::RwLock<()>,
    }

    impl MonitorFeed for Feed {
        fn version(&self) -> StorageFuture<'_, u64> {
            Box::pin(async { Ok(0) })
        }

        fn changes_since(&self, version: u64) -> StorageFuture<'_, FeedChanges> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let _open = self.gate.read().await;
                let monitors = std::mem::take(&mut *self.changes.lock().unwrap());
                let version = version + u64::from(!monitors.is_empty());
                Ok(FeedChanges {
                    monitors,
                    removed: Vec::new(),
                    version,
                    everything: false,
                })
            })
        }

        fn signal(&self) -> Signal {
            self.signal.clone()
        }
    }

    /// The services over `dir`'s embedded store, following, and their fence.
    async fn following(dir: &std::path::Path) -> (crate::core::Services, Fence) {
        let config = crate::core::ServicesConfig {
            data_dir: dir.to_path_buf(),
            cache_bytes: 8 << 20,
            ping_history: 10,
            outbox: Default::default(),
            limits: Default::default(),
            hold_deadlines: false,
            top_events: 10,
            database: None,
            installation: "standalone".into(),
            fence: Fence::follower(),
        };
        let metrics = &mut crate::core::metrics::MetricRegistry::default();
        let core = crate::core::Services::open(&config, metrics).await.unwrap();
        (core, config.fence)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_ping_token_on_a_follower_is_looked_for_in_the_leaders_rounds_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut core, fence) = following(dir.path()).await;
        let feed = Arc::new(Feed::default());
        let mirror = Arc::new(Mirror::new(
            core.engine.clone(),
            core.registry.clone(),
            feed.clone(),
            0,
        ));
        // Not spawned, and the feed never signals: only the lookup reads it.
        core.mirror = Some(mirror.clone());
        let now = Timestamp::now();
        let m = Monitor {
            num: 4,
            def: def("job"),
            state: MonitorState::created(&def("job").timing(), now, false),
            last_run_ms: None,
        };
        feed.changes.lock().unwrap().push(m);
        assert_eq!(
            core.monitor_for_ping_token("job").await.as_deref(),
            Some("ns/job")
        );
        assert_eq!(feed.reads.load(Ordering::SeqCst), 1);
        // Known now: no read. Unknown tokens asked at once share reads.
        assert!(core.monitor_for_ping_token("job").await.is_some());
        assert_eq!(feed.reads.load(Ordering::SeqCst), 1);
        assert_eq!(core.monitor_for_ping_token("nope").await, None);
        assert_eq!(feed.reads.load(Ordering::SeqCst), 2);
        // A replica that leads knows every token it has: it reads nothing.
        fence.lead(1);
        assert_eq!(core.monitor_for_ping_token("nope").await, None);
        assert_eq!(feed.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asks_that_come_while_a_catch_up_runs_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = following(dir.path()).await;
        let feed = Arc::new(Feed::default());
        let mirror = Mirror::new(core.engine.clone(), core.registry.clone(), feed.clone(), 0);
        let mirror = Arc::new(mirror);
        let closed = feed.gate.write().await;
        let first = tokio::spawn({
            let mirror = mirror.clone();
            async move { mirror.catch_up_fresh().await }
        });
        until("the first read begins", || {
            feed.reads.load(Ordering::SeqCst) == 1
        })
        .await;
        // Two asks while it reads: what it reads may predate them, so one more read is
        // made, for both.
        let later: Vec<_> = (0..2)
            .map(|_| {
                let (mirror, ticket) = (mirror.clone(), mirror.ticket());
                tokio::spawn(async move { mirror.catch_up_after(ticket).await })
            })
            .collect();
        drop(closed);
        first.await.unwrap().unwrap();
        for ask in later {
            ask.await.unwrap().unwrap();
        }
        assert_eq!(feed.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_monitor_the_leader_created_authenticates_on_a_follower_once_mirrored() {
        let dir = tempfile::tempdir().unwrap();
        let (core, fence) = following(dir.path()).await;
        let feed = Arc::new(Feed::default());
        let mirror = Arc::new(Mirror::new(
            core.engine.clone(),
            core.registry.clone(),
            feed.clone(),
            0,
        ));
        mirror.clone().spawn(fence.clone());
        assert!(core.registry.authenticate("job").is_none());
        let now = Timestamp::now();
        let m = Monitor {
            num: 4,
            def: def("job"),
            state: MonitorState::created(&def("job").timing(), now, false),
            last_run_ms: None,
        };
        feed.changes.lock().unwrap().push(m.clone());
        feed.signal.notify_one();
        until("the token works", || {
            core.registry.authenticate("job").is_some()
        })
        .await;
        let owner = core.registry.authenticate("job").unwrap();
        assert_eq!(
            (owner.kind, owner.key.as_str()),
            (TokenKind::Heartbeat, "ns/job")
        );
        assert_eq!(core.engine.get("ns/job"), Some(m));
        // Its pings are refused by a follower without a relay, never applied there.
        assert!(matches!(
            core.ping("ns/job", success()).await,
            Err(PingError::Unavailable(_))
        ));
    }
}
