//! The domain services of a running server, opened together from one data directory or
//! one PostgreSQL database: the registry of definitions, the ingest writer, the monitor
//! engine and the alert outbox. Front ends declare definitions into them; HTTP adapters
//! read and write through them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::alert::Deliver;
use super::alert::channels::ChannelBook;
use super::alert::outbox::{Outbox, OutboxConfig, OutboxError};
use super::duration::SpecDuration;
use super::leadership::Role;
use super::limits::LimitDefaults;
use super::metrics::MetricRegistry;
use super::monitor::engine::{Engine, EngineConfig, EngineError};
use super::monitor::engine::{PingInput, PingOutcome};
use super::monitor::schedule::Clock;
use super::registry::{Registry, RegistryError};
use super::replica::{self, Mirror, PingError, Replica};
use super::storage::{EventStore, Fence, StorageError};
use super::store::events::EventWriter;
use super::store::{CommitStats, Store, StoreError, StoreOptions};
use super::store_pg::{DatabaseUrl, PgError, PgMonitorStorage};

/// Where the services keep their data and how much they keep.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    /// The sled directory (unused with [`Self::database`]).
    pub data_dir: PathBuf,
    /// sled's page cache in bytes.
    pub cache_bytes: u64,
    /// Pings kept per monitor.
    pub ping_history: u64,
    /// How alert deliveries are retried.
    pub outbox: OutboxConfig,
    /// Limits of Applications that set none of their own.
    pub limits: LimitDefaults,
    /// Hold monitor deadlines until the front end releases them (see
    /// `EngineConfig::hold_deadlines`).
    pub hold_deadlines: bool,
    /// Event names per Application with a series of their own on `/metrics`.
    pub top_events: usize,
    /// PostgreSQL for everything (events, applications, the token index, monitors and
    /// the alert outbox) instead of the data directory, which is then not opened.
    pub database: Option<DatabaseUrl>,
    /// The installation these services belong to: a database records the first one to
    /// open it, and refuses the others ([`crate::core::store_pg::claim`]). Unused with the
    /// data directory.
    pub installation: String,
    /// The generation this process leads under, which the leader-only writes to a shared
    /// database carry; [`Fence::sole`] with the data directory. A replica that does not
    /// lead writes no monitor rounds and holds its deadlines: it relays its pings and
    /// shows the leader's rounds.
    pub fence: Fence,
}

/// The embedded backend's monitor and outbox stores over `dir`, for tests of the core's
/// parts that need no services.
#[cfg(test)]
pub(crate) fn open_monitor_storage(dir: &std::path::Path) -> super::storage::MonitorStorage {
    crate::core::store::port::open_monitors(dir, &StoreOptions::default())
        .expect("the embedded backend opens")
}

/// Why the services could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// The data directory could not be opened.
    #[error("cannot open the data directory {path}: {source}")]
    Open {
        /// The directory.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// Stored definitions could not be loaded.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The alert outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The monitor engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The database could not be opened.
    #[error(transparent)]
    Database(#[from] PgError),
}

/// The running domain; cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    /// Applications, monitors' tokens and the store behind them.
    pub registry: Registry,
    /// Events: the ingest write, stats, export, retention.
    pub events: Arc<dyn EventStore>,
    /// Heartbeat monitors.
    pub engine: Engine,
    /// Alerts waiting for delivery.
    pub outbox: Outbox,
    /// The alert channels the front end resolved, and how delivery through each goes.
    pub channels: ChannelBook,
    /// Whether this process leads, and the fence its leader-only writes carry: a process
    /// opened with [`Fence::sole`] leads from the start; replicas sharing a database
    /// follow until elected (see [`Services::promote`]).
    pub role: Role,
    /// What this replica does according to whether it leads: where its pings go.
    pub replica: Replica,
    /// The leader's rounds, shown while this replica does not lead (a database shared
    /// by replicas only): a replica taking over catches up with it before it leads.
    pub mirror: Option<Arc<Mirror>>,
    /// The embedded backend, for its commit log's figures; `None` on PostgreSQL.
    store: Option<Store>,
    /// The figures of the commit log there is not, on PostgreSQL.
    no_commit_log: Arc<CommitStats>,
    /// The embedded ingest writer behind `events` (on sled), for tests that hold it.
    #[cfg(test)]
    writer: Option<EventWriter>,
}

impl Services {
    /// Opens the store (replaying its commit log), loads the definitions, starts the monitor
    /// engine and the ingest writer, and registers each one's metrics. Needs a tokio
    /// runtime. Alerts queue up until [`Services::deliver_alerts`] starts their delivery.
    pub async fn open(
        config: &ServicesConfig,
        metrics: &mut MetricRegistry,
    ) -> Result<Self, ServicesError> {
        let open_error = |source| ServicesError::Open {
            path: config.data_dir.display().to_string(),
            source,
        };
        // On PostgreSQL, `commits` are the figures the round and ingest writers share.
        let (store, monitor_storage, commits) = match &config.database {
            None => {
                let options = StoreOptions {
                    cache_bytes: config.cache_bytes,
                };
                let store = Store::open(&config.data_dir, &options).map_err(open_error)?;
                store.register_metrics(metrics);
                let monitor_storage =
                    crate::core::store::port::monitor_storage(&store).map_err(open_error)?;
                monitor_storage.monitors.register_metrics(metrics);
                (Some(store), monitor_storage, None)
            }
            Some(url) => {
                // Before anything is written: a replica of another installation would
                // remove this one's objects.
                let holder = crate::core::store_pg::holder();
                crate::core::store_pg::claim(url, &config.installation, &holder).await?;
                let stores = open_pg_monitors(url, &config.fence).await?;
                (None, stores.storage(), Some(stores.commits))
            }
        };
        let role = Role::new(config.fence.clone(), metrics);
        let outbox = Outbox::new(monitor_storage.outbox, config.outbox);
        outbox.register_metrics(metrics);
        let follows = config.fence.generation().is_none();
        let engine_config = EngineConfig {
            ping_history: config.ping_history,
            hold_deadlines: config.hold_deadlines || follows,
            ..EngineConfig::default()
        };
        // Asked before the monitors are loaded: the mirror misses no round after it.
        let feed = match &monitor_storage.feed {
            Some(feed) => Some((
                feed.clone(),
                feed.version()
                    .await
                    .map_err(|e| ServicesError::Engine(EngineError::Storage(e)))?,
            )),
            None => None,
        };
        let engine = Engine::start_as(
            monitor_storage.monitors,
            outbox.clone(),
            engine_config,
            Clock::new(),
            config.fence.clone(),
        )?;
        engine.register_metrics(metrics);
        // A reader, not the engine: the outbox the engine holds must not keep it alive.
        let monitors = engine.reader();
        outbox.set_incident_check(Arc::new(move |key, target, kind| {
            use crate::core::alert::message::AlertKind;
            use crate::core::monitor::state::State;
            monitors(key, &|m| {
                // A paused monitor never alerts, though its incident stays open.
                let holds = match kind {
                    AlertKind::Down => m.state.incident_open && m.state.state == State::Down,
                    AlertKind::Late => m.state.state == State::Late,
                    _ => false,
                };
                holds && m.def.targets.contains(target)
            })
        }));
        let channels = outbox.channels().clone();
        // The embedded writer is kept for tests that stall it.
        let (storage, _writer) = match (&config.database, &store) {
            (None, Some(store)) => {
                let writer = EventWriter::spawn(store.clone()).map_err(open_error)?;
                writer.register_metrics(metrics);
                let storage = crate::core::store::port::storage(store, writer.clone());
                (storage, Some(writer))
            }
            (Some(url), _) => {
                let commits = commits.unwrap_or_default();
                let storage = crate::core::store_pg::open_sharing(url, metrics, commits).await?;
                (storage, None)
            }
            (None, None) => unreachable!("the data directory is opened without a database"),
        };
        let registry =
            Registry::load(storage.apps.clone(), storage.events.clone(), config.limits).await?;
        if let Some(signal) = storage.apps_changed {
            let (fence, apps) = (config.fence.clone(), storage.apps.clone());
            replica::spawn_app_refresh(fence, registry.clone(), apps, signal);
            let holder = crate::core::token::random_id()
                .map_err(|e| RegistryError::Storage(StorageError::Unavailable(e.to_string())))?;
            replica::spawn_admin_hold(registry.clone(), holder);
        }
        let mirror = feed.map(|(feed, version)| {
            let mirror = Arc::new(Mirror::new(engine.clone(), registry.clone(), feed, version));
            mirror.clone().spawn(config.fence.clone());
            mirror
        });
        let replica = Replica::new(config.fence.clone(), engine.clone(), storage.relay);
        replica.spawn_relay_pump();
        crate::core::ingest::counts::register_metrics(metrics, registry.clone(), config.top_events);
        Ok(Self {
            registry,
            events: storage.events,
            engine,
            outbox,
            channels,
            role,
            replica,
            mirror,
            store,
            no_commit_log: Arc::default(),
            #[cfg(test)]
            writer: _writer,
        })
    }

    /// The embedded backend's commit-log figures (group commits, flush latency), for
    /// benchmarks that print them beside durable throughput (all zero on PostgreSQL,
    /// which has no commit log of its own).
    pub fn commit_stats(&self) -> &CommitStats {
        match &self.store {
            Some(store) => store.committer().stats(),
            None => &self.no_commit_log,
        }
    }

    /// Takes a ping for monitor `key`: applied here if this replica leads, relayed to the
    /// leader if it does not; resolves once durable either way.
    pub async fn ping(&self, key: &str, input: PingInput) -> Result<PingOutcome, PingError> {
        self.replica.ping(key, input).await
    }

    /// The monitor ping token `token` opens. A replica that does not lead and does not know
    /// the token first shows the leader's rounds written until now
    /// ([`Mirror::catch_up_fresh`]): a monitor the leader has just defined works here as
    /// soon as it works there, not only once the change signal or the next poll came.
    pub async fn monitor_for_ping_token(&self, token: &str) -> Option<String> {
        let monitor = || {
            self.registry
                .authenticate(token)
                .filter(|o| o.kind == crate::core::token::TokenKind::Heartbeat)
                .map(|o| o.key)
        };
        if let Some(key) = monitor() {
            return Some(key);
        }
        let mirror = self.mirror.as_ref().filter(|_| !self.leads())?;
        if let Err(e) = mirror.catch_up_fresh().await {
            tracing::debug!(error = %e, "could not read the leader's rounds for an unknown ping token");
        }
        monitor()
    }

    /// Why storage refuses every use until a restart, when it does: the shared
    /// database's schema became newer than this binary knows. Answers name it, since a
    /// retry will not help (a change refused by a replica that does not lead would
    /// otherwise be told to retry).
    pub fn storage_refusal(&self) -> Option<StorageError> {
        match self.events.health() {
            Err(e @ StorageError::Incompatible(_)) => Some(e),
            _ => None,
        }
    }

    /// Whether this replica leads: only then may monitors be changed through it.
    pub fn leads(&self) -> bool {
        self.replica.leads()
    }

    /// Starts delivering queued and future alerts through `courier`.
    pub fn deliver_alerts(&self, courier: Arc<dyn Deliver>) {
        tokio::spawn(self.outbox.clone().run(courier));
    }

    /// Makes this replica the leader under `term`: catches up with the rounds the deposed
    /// leader wrote (the take-over behind `term` fenced it), leads, then applies every
    /// ping the relay holds, so that the deadlines released after it judge no answered
    /// ping missing.
    pub async fn promote(&self, term: &super::leadership::Term) -> Result<(), StorageError> {
        if let Some(mirror) = &self.mirror {
            mirror.catch_up().await?;
        }
        self.role.lead(term);
        // Every ping a follower answered is applied before the deadlines are released.
        self.replica
            .drain_relay()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// Starts the work only the leader does: lets the held deadlines through, delivers
    /// alerts through `courier`, and runs retention every `retention_every`.
    pub fn start_leading(&self, courier: Arc<dyn Deliver>, retention_every: Duration) {
        self.engine.release_deadlines();
        self.deliver_alerts(courier);
        self.spawn_retention(retention_every);
    }

    /// Deletes raw events past each application's retention, now and then every `every`;
    /// applications deleted with their data retained included.
    pub fn spawn_retention(&self, every: Duration) {
        let registry = self.registry.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match registry.retention_targets().await {
                    Ok(targets) => {
                        for (key, num, retention) in targets {
                            purge_past_retention(events.as_ref(), &key, num, retention).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "retention pass failed"),
                }
            }
        });
    }

    /// Whether the services can do their work: `Err` names the first that cannot. The
    /// commit log, the monitor engine and the outbox must be able to write, and the ingest
    /// writer and the engine threads must answer a probe within `within` (a dead or stuck
    /// thread would otherwise leave the process serving requests it can never answer).
    pub async fn health(&self, within: Duration) -> Result<(), String> {
        self.events.health().map_err(|e| e.to_string())?;
        self.engine.health()?;
        self.outbox.health()?;
        let probes = async {
            self.events
                .probe()
                .await
                .map_err(|_| "the ingest writer has stopped".to_string())?;
            self.engine
                .probe()
                .await
                .map_err(|_| "the monitor engine has stopped".to_string())
        };
        match tokio::time::timeout(within, probes).await {
            Ok(answered) => answered,
            Err(_) => Err(format!(
                "the ingest writer or the monitor engine did not answer within {}s",
                within.as_secs()
            )),
        }
    }

    /// Waits until everything written so far is on disk (on PostgreSQL every write is
    /// durable once it resolved).
    pub async fn flush(&self) -> Result<(), StorageError> {
        match &self.store {
            Some(store) => Ok(store.flush().await?),
            None => Ok(()),
        }
    }
}

/// The monitor and outbox stores on PostgreSQL. A process opened to lead ([`Fence::sole`])
/// takes the leader row over at start, so one process on a database works as on the
/// embedded backend; a replica opened as a follower leads once elected
/// ([`Services::promote`]).
async fn open_pg_monitors(url: &DatabaseUrl, fence: &Fence) -> Result<PgMonitorStorage, PgError> {
    let stores = crate::core::store_pg::open_monitors(url, fence.clone()).await?;
    if fence.generation().is_some() {
        crate::core::store_pg::lead_alone_at_start(url, fence).await?;
    }
    Ok(stores)
}

/// One application's retention pass: raw events older than its window, and idempotency
/// records past theirs. Failures are logged and retried on the next pass.
async fn purge_past_retention(
    events: &dyn EventStore,
    key: &str,
    num: u64,
    retention: SpecDuration,
) {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MIN);
    let purged = async {
        events.purge_idempotency(num, Timestamp::now()).await?;
        events.purge_before(num, cutoff).await
    };
    match purged.await {
        Ok(0) => {}
        Ok(n) => tracing::info!(application = %key, removed = n, "deleted events past retention"),
        Err(e) => tracing::warn!(application = %key, error = %e, "retention pass failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::core::monitor::engine::PingInput;

    async fn open(dir: &std::path::Path) -> Services {
        let config = ServicesConfig {
            data_dir: dir.to_path_buf(),
            cache_bytes: 8 << 20,
            ping_history: 10,
            outbox: OutboxConfig::default(),
            limits: LimitDefaults::default(),
            hold_deadlines: false,
            top_events: 10,
            database: None,
            installation: "standalone".into(),
            fence: Fence::sole(),
        };
        Services::open(&config, &mut MetricRegistry::default())
            .await
            .unwrap()
    }

    const WITHIN: Duration = Duration::from_millis(500);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_fails_while_a_thread_is_stuck_and_recovers_after() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(dir.path()).await;
        assert_eq!(core.health(WITHIN).await, Ok(()));

        // Held: a probe the worker took before the stall would be answered.
        core.engine.stall(Duration::from_secs(2)).await.unwrap();
        let err = core.health(WITHIN).await.unwrap_err();
        assert!(err.contains("did not answer within"), "{err}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(core.health(WITHIN).await, Ok(()));

        let writer = core.writer.as_ref().unwrap();
        writer.stall(Duration::from_secs(2)).await;
        assert!(core.health(WITHIN).await.is_err());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(core.health(WITHIN).await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_state_is_published_and_broadcast_only_once_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(dir.path()).await;
        core.engine.upsert(monitor("a")).await.unwrap();
        let mut changes = core.engine.subscribe();
        core.engine.fail_writes(true);
        assert!(
            core.engine
                .ping("default/a", PingInput::success())
                .await
                .is_err()
        );
        // Readers, the deadline scheduler and subscribers still see what is on disk.
        let m = core.engine.get("default/a").unwrap();
        assert_eq!(m.state.state, crate::core::monitor::state::State::New);
        assert_eq!(m.state.pings, 0);
        assert!(
            changes.try_recv().is_err(),
            "a change that was never written was broadcast"
        );
        core.engine.fail_writes(false);
        core.engine
            .ping("default/a", PingInput::success())
            .await
            .unwrap();
        let m = core.engine.get("default/a").unwrap();
        assert_eq!(m.state.state, crate::core::monitor::state::State::Up);
        let change = changes.try_recv().unwrap();
        assert_eq!(
            (change.key.as_str(), change.to),
            ("default/a", m.state.state)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_pings_with_large_bodies_is_written_in_records_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(dir.path()).await;
        core.engine.upsert(monitor("a")).await.unwrap();
        let stats = core.commit_stats();
        let before = stats.records.load(Ordering::Relaxed);
        // Everything queues behind the stall and is taken into as few rounds as allowed.
        core.engine.stall(Duration::from_secs(1));
        let body = "x".repeat(10 * 1024);
        let pings: Vec<_> = (0..1000)
            .map(|_| {
                let (engine, body) = (core.engine.clone(), body.clone());
                tokio::spawn(async move {
                    let mut p = PingInput::success();
                    p.body = Some(body);
                    engine.ping("default/a", p).await
                })
            })
            .collect();
        for p in pings {
            p.await.unwrap().unwrap();
        }
        let records = stats.records.load(Ordering::Relaxed) - before;
        // About 10 MiB of ping blocks: more than one round may hold.
        assert!(records >= 2, "{records} records");
        let m = core.engine.get("default/a").unwrap();
        assert_eq!(m.state.pings, 1000);
        let newest = core.engine.pings(m.num, 1).await.unwrap();
        assert_eq!(newest[0].seq, 1000);
    }

    fn monitor(name: &str) -> crate::core::monitor::engine::MonitorDef {
        crate::core::monitor::engine::DefRecord {
            origin: crate::core::monitor::engine::Origin::Manifest,
            ..crate::core::monitor::engine::DefRecord::sample(
                &format!("default/{name}"),
                60,
                Timestamp::now(),
            )
        }
        .into()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_fails_while_the_engine_or_the_outbox_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(dir.path()).await;
        core.engine.fail_writes(true);
        let def = monitor("a");
        assert!(core.engine.upsert(def.clone()).await.is_err());
        let err = core.health(WITHIN).await.unwrap_err();
        assert!(err.contains("writing monitor state failed"), "{err}");
        // Nothing was published that is not on disk.
        assert!(core.engine.get("default/a").is_none());
        core.engine.fail_writes(false);
        assert!(core.engine.upsert(def).await.is_ok());
        assert_eq!(core.health(WITHIN).await, Ok(()));

        core.outbox.fail_writes.store(true, Ordering::Relaxed);
        let _ = core.outbox.record(Box::pin(async { Ok(()) })).await;
        let err = core.health(WITHIN).await.unwrap_err();
        assert!(err.contains("cannot record deliveries"), "{err}");
    }
}
