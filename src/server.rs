//! Assembly of the core: store, registry, writers, background tasks and the HTTP server.
//!
//! Both front ends build a [`Core`], declare their definitions into it, then serve.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::core::alert::outbox::{Outbox, OutboxError};
use crate::core::metrics::Metrics;
use crate::core::monitor::engine::{Engine, EngineConfig, EngineError};
use crate::core::monitor::schedule::Clock;
use crate::core::registry::{Registry, RegistryError};
use crate::core::store::events::EventWriter;
use crate::core::store::{Committer, Store, StoreError, StoreOptions};
use crate::http::api::{self, AppState};
use crate::notify::{Notifier, NotifyError};

/// Errors while starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be opened.
    #[error("cannot open the data directory {path}: {source}")]
    Open {
        /// The directory.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// Loading definitions failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// An alert channel could not be set up.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The alert outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The monitor engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Binding or serving failed.
    #[error("HTTP server error on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The running core, shared by the front ends.
#[derive(Clone)]
pub struct Core {
    /// Configuration.
    pub config: ServerConfig,
    /// Definitions and tokens.
    pub registry: Registry,
    /// Ingest writer.
    pub events: EventWriter,
    /// Heartbeat monitors.
    pub engine: Engine,
    /// Alert outbox.
    pub outbox: Outbox,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness flag.
    pub ready: Arc<AtomicBool>,
    /// Management API writes, installed by the front end.
    pub catalogue: Arc<std::sync::OnceLock<Arc<dyn crate::core::catalogue::MonitorCatalogue>>>,
    /// Management API rate limit.
    pub rate_limit: Arc<crate::http::api::manage::RateLimiter>,
    /// Dashboard sessions and badge index.
    pub dashboard: Arc<crate::http::dashboard::Dashboard>,
    /// HTTP connection counters.
    pub connections: Arc<crate::http::serve::ConnectionStats>,
}

impl Core {
    /// Opens the store and starts the writers. Needs a tokio runtime.
    pub fn open(config: ServerConfig) -> Result<Self, ServerError> {
        let store = Store::open(
            &config.data_dir,
            &StoreOptions {
                cache_bytes: config.cache_bytes,
            },
        )
        .map_err(|source| ServerError::Open {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let notifier = Notifier::new(config.smtp_url.as_deref(), &config.mail_from)?;
        let registry = Registry::load(store.clone())?;
        let outbox = Outbox::open(&store.db, store.committer().clone(), config.outbox)?;
        let engine = Engine::start(
            &store.db,
            store.committer().clone(),
            outbox.clone(),
            EngineConfig {
                ping_history: config.ping_history as u64,
            },
            Clock::new(),
        )?;
        tokio::spawn(outbox.clone().run(Arc::new(notifier)));
        let committer = store.committer().clone();
        let events = EventWriter::spawn(store).map_err(|source| ServerError::Open {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let config_rate = (config.api_rate_per_sec, config.api_rate_burst);
        let metrics = Arc::new(Metrics::default());
        register_metrics(&metrics, &engine, &outbox, committer);
        let dashboard = Arc::new(crate::http::dashboard::Dashboard::new(&config.external_url));
        let connections = Arc::new(crate::http::serve::ConnectionStats::default());
        {
            let (connections, max) = (connections.clone(), config.http.max_connections);
            metrics.register(move |out| connections.render(max, out));
        }
        Ok(Self {
            config,
            registry,
            events,
            engine,
            outbox,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            catalogue: Arc::default(),
            rate_limit: Arc::new(crate::http::api::manage::RateLimiter::new(
                config_rate.0,
                config_rate.1,
            )),
            dashboard,
            connections,
        })
    }

    /// The HTTP router over this core.
    pub fn router(&self) -> axum::Router {
        api::router(
            self.app_state(),
            crate::http::dashboard::router(self.app_state(), self.dashboard.clone()),
        )
    }

    fn app_state(&self) -> AppState {
        AppState::new(api::Shared {
            registry: self.registry.clone(),
            events: self.events.clone(),
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            max_body_bytes: self.config.max_body_bytes,
            body_timeout: self.config.http.body_timeout,
            ready: self.ready.clone(),
            catalogue: self.catalogue.clone(),
            rate_limit: self.rate_limit.clone(),
        })
    }

    /// Deletes raw events past each application's retention, now and then every `every`.
    pub fn spawn_retention(&self, every: Duration) {
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for app in registry.applications() {
                    let secs = i64::try_from(app.spec.retention().as_secs()).unwrap_or(i64::MAX);
                    let cutoff = Timestamp::now()
                        .checked_sub(jiff::SignedDuration::from_secs(secs))
                        .unwrap_or(Timestamp::MIN);
                    let store = registry.store().clone();
                    let num = app.num;
                    match tokio::task::spawn_blocking(move || {
                        store.purge_idempotency(num, Timestamp::now())?;
                        store.purge_events_before(num, cutoff)
                    })
                    .await
                    {
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
            }
        });
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<TcpListener, ServerError> {
        let addr = self.config.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Http {
                addr: addr.to_string(),
                source,
            })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then flushes the store.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.ready.store(true, Ordering::Release);
        tracing::info!(%addr, "listening");
        let dashboard = self.dashboard.clone();
        crate::http::serve::serve(
            listener,
            self.router(),
            self.config.http,
            self.connections.clone(),
            async move {
                shutdown.await;
                // Live streams never end by themselves: end them, so the shutdown does
                // not wait for open browser tabs.
                dashboard.close_streams();
            },
        )
        .await;
        self.ready.store(false, Ordering::Release);
        if let Err(e) = self.registry.store().flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        Ok(())
    }
}

/// Adds the monitor, alert and commit-log families to `/metrics`.
fn register_metrics(metrics: &Metrics, engine: &Engine, outbox: &Outbox, committer: Committer) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let engine = engine.clone();
    let outbox = outbox.clone();
    metrics.register(move |out| {
        let counts = engine.counts();
        out.push_str("# HELP hartslag_monitors Heartbeat monitors by state.\n# TYPE hartslag_monitors gauge\n");
        for s in crate::core::monitor::state::State::ALL {
            let _ = writeln!(out, "hartslag_monitors{{state=\"{s}\"}} {}", counts.get(&s).copied().unwrap_or(0));
        }
        out.push_str("# HELP hartslag_pings_total Pings received by kind.\n# TYPE hartslag_pings_total counter\n");
        for (i, kind) in ["success", "start", "fail"].iter().enumerate() {
            let _ = writeln!(out, "hartslag_pings_total{{kind=\"{kind}\"}} {}", engine.stats.pings[i].load(Relaxed));
        }
        out.push_str("# HELP hartslag_alerts_total Alerts raised by kind.\n# TYPE hartslag_alerts_total counter\n");
        for (i, kind) in ["down", "recovery"].iter().enumerate() {
            let _ = writeln!(out, "hartslag_alerts_total{{kind=\"{kind}\"}} {}", engine.stats.alerts[i].load(Relaxed));
        }
        out.push_str("# HELP hartslag_alert_deliveries_total Alert deliveries by outcome.\n# TYPE hartslag_alert_deliveries_total counter\n");
        for (name, v) in [
            ("delivered", &outbox.stats.delivered),
            ("failed", &outbox.stats.failed),
            ("retried", &outbox.stats.retried),
            ("skipped", &outbox.stats.skipped),
        ] {
            let _ = writeln!(out, "hartslag_alert_deliveries_total{{outcome=\"{name}\"}} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP hartslag_alert_deliveries_pending Alert deliveries waiting in the outbox.\n# TYPE hartslag_alert_deliveries_pending gauge\nhartslag_alert_deliveries_pending {}",
            outbox.pending_tree().len()
        );
        engine.stats.down_lateness.render(
            "hartslag_down_transition_lateness_seconds",
            "How long after its due time a Down transition was applied.",
            out,
        );
        let commits = committer.stats();
        commits.sync.render(
            "hartslag_commit_sync_seconds",
            "How long each group commit's append and fdatasync took: the disk's flush latency, which bounds durable writes.",
            out,
        );
        let _ = writeln!(
            out,
            "# HELP hartslag_commit_groups_total Group commits (one fdatasync each).\n# TYPE hartslag_commit_groups_total counter\nhartslag_commit_groups_total {}",
            commits.groups.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP hartslag_commit_records_total Writer records committed; divided by the groups, how many writes one fdatasync served.\n# TYPE hartslag_commit_records_total counter\nhartslag_commit_records_total {}",
            commits.records.load(Relaxed)
        );
        commits.checkpoint.render(
            "hartslag_commit_checkpoint_seconds",
            "How long each checkpoint (database flush, then emptying the commit log) took.",
            out,
        );
    });
}

/// Resolves on SIGTERM or Ctrl-C, for graceful shutdown in pods and terminals.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
