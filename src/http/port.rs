//! The HTTP port, bound as the process starts.
//!
//! Waiting for a Lease and recovering a large database can take a while. Meanwhile the port
//! answers every request with `503 Service Unavailable`, a `Retry-After` header and a body
//! saying what the process waits for — instead of refusing connections — so clients with
//! retries (a CronJob's `curl --retry`) back off sensibly, and a startup probe sees a process
//! that is alive but not started. Once the server is open the same port serves the APIs and
//! the dashboard.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

use super::serve::{accept, drain};
use super::{ConnectionStats, HttpLimits, HttpState, router};

/// Seconds a client is told to wait while the process starts.
pub const RETRY_AFTER_SECS: u64 = 5;

type Slot = Arc<RwLock<Option<Router>>>;

/// A bound port that answers 503 until [`Port::serve`] hands it the real router.
pub struct Port {
    addr: SocketAddr,
    slot: Slot,
    phase: Arc<RwLock<&'static str>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    connections: ConnectionStats,
}

fn starting(phase: &str) -> Response {
    let body = axum::Json(serde_json::json!({
        "status": "starting",
        "waiting_for": phase,
    }));
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    res
}

impl Port {
    /// Binds `addr` and starts answering, with the connection `limits` in force from the
    /// first connection.
    pub async fn bind(addr: SocketAddr, limits: HttpLimits) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let slot: Slot = Arc::default();
        let phase = Arc::new(RwLock::new("startup"));
        let (stop, mut stopped) = watch::channel(false);
        let app = {
            let (slot, phase) = (slot.clone(), phase.clone());
            Router::new().fallback(move |req: Request| {
                let inner = slot.read().unwrap_or_else(|p| p.into_inner()).clone();
                let phase = *phase.read().unwrap_or_else(|p| p.into_inner());
                async move {
                    match inner {
                        Some(mut router) => match router.call(req).await {
                            Ok(res) => res,
                            Err(never) => match never {},
                        },
                        None => starting(phase),
                    }
                }
            })
        };
        let connections = ConnectionStats::default();
        let task = tokio::spawn(accept(
            listener,
            app,
            limits,
            connections.clone(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "listening; starting");
        Ok(Self {
            addr,
            slot,
            phase,
            stop,
            task,
            connections,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port's connection counters, for `/metrics` once the server is open.
    pub fn connections(&self) -> ConnectionStats {
        self.connections.clone()
    }

    /// What the process waits for now, shown in the 503 answers.
    pub fn waiting_for(&self, phase: &'static str) {
        *self.phase.write().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    /// Serves `state` on this port until `shutdown` resolves. `/readyz` answers ready
    /// while the state's readiness gate is open.
    pub async fn serve(
        self,
        state: HttpState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(router(state.clone()));
        state.serving.store(true, Ordering::Release);
        tracing::info!(addr = %self.addr, "serving");
        shutdown.await;
        drain(&state).await;
        self.close().await
    }

    /// Stops answering (a shutdown before the server was open).
    pub async fn close(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
