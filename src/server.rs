//! Assembly of the core: store, registry, writers, background tasks and the HTTP server.
//!
//! Both front ends build a [`Core`], declare their definitions into it, then serve.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError};
use crate::store::events::EventWriter;
use crate::store::{Store, StoreError, StoreOptions};

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
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness flag.
    pub ready: Arc<AtomicBool>,
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
        let registry = Registry::load(store.clone())?;
        let events = EventWriter::spawn(store).map_err(|source| ServerError::Open {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            config,
            registry,
            events,
            metrics: Arc::new(Metrics::default()),
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The HTTP router over this core.
    pub fn router(&self) -> axum::Router {
        api::router(AppState {
            registry: self.registry.clone(),
            events: self.events.clone(),
            metrics: self.metrics.clone(),
            max_body_bytes: self.config.max_body_bytes,
            ready: self.ready.clone(),
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
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServerError::Http {
                addr: addr.clone(),
                source,
            })?;
        self.ready.store(false, Ordering::Release);
        if let Err(e) = self.registry.store().flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        Ok(())
    }
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
