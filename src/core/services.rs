//! The domain services of a running server, opened together from one data directory: the
//! registry of definitions, the ingest writer, the monitor engine and the alert outbox.
//! Front ends declare definitions into them; HTTP adapters read and write through them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::alert::Deliver;
use super::alert::outbox::{Outbox, OutboxConfig, OutboxError};
use super::limits::LimitDefaults;
use super::metrics::MetricRegistry;
use super::monitor::engine::{Engine, EngineConfig, EngineError};
use super::monitor::schedule::Clock;
use super::registry::{AppInfo, Registry, RegistryError};
use super::store::events::EventWriter;
use super::store::{Store, StoreError, StoreOptions};

/// Where the services keep their data and how much they keep.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    /// The sled directory.
    pub data_dir: PathBuf,
    /// sled's page cache in bytes.
    pub cache_bytes: u64,
    /// Pings kept per monitor.
    pub ping_history: u64,
    /// How alert deliveries are retried.
    pub outbox: OutboxConfig,
    /// Limits of Applications that set none of their own.
    pub limits: LimitDefaults,
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
}

/// The running domain; cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    /// Applications, monitors' tokens and the store behind them.
    pub registry: Registry,
    /// The ingest writer.
    pub events: EventWriter,
    /// Heartbeat monitors.
    pub engine: Engine,
    /// Alerts waiting for delivery.
    pub outbox: Outbox,
}

impl Services {
    /// Opens the store (replaying its commit log), loads the definitions, starts the monitor
    /// engine and the ingest writer, and registers each one's metrics. Needs a tokio
    /// runtime. Alerts queue up until [`Services::deliver_alerts`] starts their delivery.
    pub fn open(
        config: &ServicesConfig,
        metrics: &mut MetricRegistry,
    ) -> Result<Self, ServicesError> {
        let open_error = |source| ServicesError::Open {
            path: config.data_dir.display().to_string(),
            source,
        };
        let options = StoreOptions {
            cache_bytes: config.cache_bytes,
        };
        let store = Store::open(&config.data_dir, &options).map_err(open_error)?;
        store.register_metrics(metrics);
        let registry = Registry::load(store.clone(), config.limits)?;
        let outbox = Outbox::open(&store.db, store.committer().clone(), config.outbox)?;
        outbox.register_metrics(metrics);
        let engine_config = EngineConfig {
            ping_history: config.ping_history,
        };
        let committer = store.committer().clone();
        let engine = Engine::start(
            &store.db,
            committer,
            outbox.clone(),
            engine_config,
            Clock::new(),
        )?;
        engine.register_metrics(metrics);
        let events = EventWriter::spawn(store).map_err(open_error)?;
        events.register_metrics(metrics);
        Ok(Self {
            registry,
            events,
            engine,
            outbox,
        })
    }

    /// Starts delivering queued and future alerts through `courier`.
    pub fn deliver_alerts(&self, courier: Arc<dyn Deliver>) {
        tokio::spawn(self.outbox.clone().run(courier));
    }

    /// Deletes raw events past each application's retention, now and then every `every`.
    pub fn spawn_retention(&self, every: Duration) {
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for app in registry.applications() {
                    purge_past_retention(&registry, &app).await;
                }
            }
        });
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.registry.store().flush().await
    }
}

/// One application's retention pass: raw events older than its window, and idempotency
/// records past theirs. Runs off the async workers; failures are logged and retried on the
/// next pass.
async fn purge_past_retention(registry: &Registry, app: &AppInfo) {
    let secs = i64::try_from(app.spec.retention().as_secs()).unwrap_or(i64::MAX);
    let cutoff = Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MIN);
    let store = registry.store().clone();
    let num = app.num;
    let purged = tokio::task::spawn_blocking(move || {
        store.purge_idempotency(num, Timestamp::now())?;
        store.purge_events_before(num, cutoff)
    })
    .await;
    match purged {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            tracing::info!(application = %app.key, removed = n, "deleted events past retention")
        }
        Ok(Err(e)) => {
            tracing::warn!(application = %app.key, error = %e, "retention pass failed")
        }
        Err(e) => tracing::warn!(error = %e, "retention task panicked"),
    }
}
