//! The assembly: opens the core's services, connects alert delivery to its channels, and
//! serves the HTTP adapters over them.
//!
//! Both front ends open a [`Server`], declare their definitions into its services, give it
//! their monitor catalogue and their metric families, then serve.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::core::alert::Deliver;
use crate::core::catalogue::MonitorCatalogue;
use crate::core::metrics::MetricRegistry;
use crate::core::{Services, ServicesError};
use crate::http::{self, HttpState, Port};
use crate::notify::{Notifier, NotifyError};

/// Errors while starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The core's services could not be opened.
    #[error(transparent)]
    Services(#[from] ServicesError),
    /// An alert channel could not be set up.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// Binding or serving failed.
    #[error("HTTP server error on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A server being assembled: the domain is running; HTTP starts with [`Server::serve`].
pub struct Server {
    /// The process configuration.
    pub config: ServerConfig,
    /// The domain.
    pub core: Services,
    metrics: MetricRegistry,
    catalogue: Option<Arc<dyn MonitorCatalogue>>,
    ready: Option<Arc<AtomicBool>>,
    courier: Arc<dyn Deliver>,
}

impl Server {
    /// Opens the services (each registering its metrics) and, when this process leads from
    /// the start (an embedded store), starts delivering alerts through the configured
    /// channels; a replica on a shared database delivers once elected
    /// ([`Services::start_leading`] with [`Server::courier`]). Needs a tokio runtime.
    pub async fn open(config: ServerConfig) -> Result<Self, ServerError> {
        let mut metrics = MetricRegistry::default();
        // `hartslag_build_info{version}`: which build each replica runs, during a rollout
        // too.
        metrics.register(
            "hartslag_build",
            "The version of this build",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
        let core = Services::open(&config.services(), &mut metrics).await?;
        let notifier = Notifier::new(
            config.smtp_url.as_deref(),
            &config.mail_from,
            config.webhooks.clone(),
            crate::notify::channel::ChannelSender::new(core.channels.clone(), config.base_url()),
        )?;
        let courier: Arc<dyn Deliver> = Arc::new(notifier);
        if core.role.leads() {
            core.deliver_alerts(courier.clone());
        }
        Ok(Self {
            config,
            core,
            metrics,
            catalogue: None,
            ready: None,
            courier,
        })
    }

    /// What delivers alerts through the configured channels.
    pub fn courier(&self) -> Arc<dyn Deliver> {
        self.courier.clone()
    }

    /// The registry a front end adds its own metric families to.
    pub fn metrics(&mut self) -> &mut MetricRegistry {
        &mut self.metrics
    }

    /// Where the management API's writes go.
    pub fn set_catalogue(&mut self, catalogue: Arc<dyn MonitorCatalogue>) {
        self.catalogue = Some(catalogue);
    }

    /// A readiness gate the front end opens when it is ready: `/readyz` answers ready only
    /// while it is open. Without one the server is ready as soon as it serves.
    pub fn ready_when(&mut self, gate: Arc<AtomicBool>) {
        self.ready = Some(gate);
    }

    fn http_state(self, connections: http::ConnectionStats) -> (Services, HttpState) {
        let core = self.core.clone();
        let ready = self
            .ready
            .unwrap_or_else(|| Arc::new(AtomicBool::new(true)));
        let state = HttpState::new(
            self.core,
            &self.config,
            self.catalogue,
            self.metrics,
            ready,
            connections,
        );
        (core, state)
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
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (core, state) = self.http_state(http::ConnectionStats::default());
        tracing::info!(%addr, "listening");
        http::serve(listener, state, shutdown)
            .await
            .map_err(|source| ServerError::Http { addr, source })?;
        if let Err(e) = core.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        Ok(())
    }

    /// Serves HTTP on a port bound before the server was open (see [`Port`]) until
    /// `shutdown` resolves, then flushes the store.
    pub async fn serve_on(
        self,
        port: Port,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = port.addr().to_string();
        let (core, state) = self.http_state(port.connections());
        port.serve(state, shutdown)
            .await
            .map_err(|source| ServerError::Http { addr, source })?;
        if let Err(e) = core.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        Ok(())
    }
}

/// Binds `addr` at once, with the connection `limits` in force; it answers 503 with
/// `Retry-After` until [`Server::serve_on`].
pub async fn bind_early(
    addr: std::net::SocketAddr,
    limits: http::HttpLimits,
) -> Result<Port, ServerError> {
    Port::bind(addr, limits)
        .await
        .map_err(|source| ServerError::Http {
            addr: addr.to_string(),
            source,
        })
}

/// Resolves on SIGTERM or Ctrl-C, for graceful shutdown in pods and terminals.
pub async fn shutdown_signal() {
    one_signal().await;
    http::signal_received();
    let first = std::time::Instant::now();
    tracing::info!("shutting down");
    // A second signal, for whoever cannot wait for the requests in flight: every write
    // acknowledged so far is on disk already (in the commit log or the database), so an
    // exit at once loses nothing that was promised. One within a second of the first is
    // taken for the same one delivered twice (an init that forwards a terminal's Ctrl-C
    // the process got as well).
    tokio::spawn(async move {
        loop {
            one_signal().await;
            if first.elapsed() >= SAME_SIGNAL {
                break;
            }
        }
        tracing::warn!(
            "a second signal: stopping at once; every acknowledged write is on disk, requests in flight get no answer"
        );
        std::process::exit(130);
    });
}

/// Signals this close after the first are taken for the same one ([`shutdown_signal`]).
const SAME_SIGNAL: std::time::Duration = std::time::Duration::from_secs(1);

/// SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
async fn one_signal() {
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
}
