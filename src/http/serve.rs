//! The HTTP/1.1 server loop: hyper's connection builder with timeouts, a cap on open
//! connections and graceful shutdown.
//!
//! `axum::serve` gives hyper no timer, which turns its header-read timeout off: a client
//! that sends half a request header holds its connection (and a file descriptor) forever,
//! and two thousand such clients exhaust the process. Here every connection gets hyper's
//! timer, so a request head must arrive within `header_timeout` of the server being ready
//! for it. hyper counts that time from the end of the previous response too, so the same
//! limit is the idle keep-alive timeout. Request bodies have their own deadline
//! ([`super::body::read_body`]), and answers a write deadline without progress
//! ([`super::write_timeout`]). At most `max_connections` are open at once;
//! further clients wait in the kernel's accept queue until one closes, which the timeouts
//! guarantee happens.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::write_timeout::WriteTimeout;
use super::{HttpState, router};
use crate::core::metrics::MetricRegistry;

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest wait for a complete request head, counted from when the server is ready
    /// for it: after accepting, and after each response (so also the idle keep-alive
    /// timeout).
    pub header_timeout: Duration,
    /// Longest time to receive a whole request body.
    pub body_timeout: Duration,
    /// Longest an answer's write may wait for its client to take data before the
    /// connection is closed ([`super::write_timeout`]).
    pub write_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most heavy reads (stats, exports, the dashboard's charts) running at once over every
    /// Application together ([`super::reads`]).
    pub max_concurrent_reads_total: u32,
    /// How long a shutdown waits for requests in flight before closing their connections.
    pub shutdown_grace: Duration,
    /// How long the server goes on accepting after the first signal, not ready and closing
    /// each connection after its answer, before it stops accepting (see [`drain`]).
    pub shutdown_delay: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_concurrent_reads_total: super::reads::DEFAULT_MAX_TOTAL,
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// Connection counters for `/metrics`; clones share their values.
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    /// Connections accepted since start.
    pub accepted: Counter,
    /// Connections open now.
    pub open: Gauge,
    /// Times the server stopped accepting because `max_connections` were open.
    pub cap_reached: Counter,
    /// Connections closed because a request head did not arrive in time (slow or idle
    /// clients).
    pub header_timeouts: Counter,
    /// Connections closed because an answer's client took no data within the write
    /// timeout (stopped reading an export or a live stream).
    pub write_timeouts: Counter,
    /// Set while the server drains: every answer closes its connection, so each client's
    /// next request opens a connection the load balancer sends elsewhere.
    pub draining: Arc<AtomicBool>,
}

impl ConnectionStats {
    /// Registers these counters in `registry`, with the cap as a gauge beside them.
    pub fn register(&self, registry: &mut MetricRegistry, max_connections: usize) {
        let stats = self;
        registry.register(
            "hartslag_http_connections",
            "Open HTTP connections",
            stats.open.clone(),
        );
        let max: Gauge = Gauge::default();
        max.set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        registry.register(
            "hartslag_http_connections_max",
            "Most HTTP connections served at once (--http-max-connections)",
            max,
        );
        registry.register(
            "hartslag_http_connections_accepted",
            "HTTP connections accepted",
            stats.accepted.clone(),
        );
        registry.register(
            "hartslag_http_connection_cap_reached",
            "Times every allowed connection was open, so new clients had to wait",
            stats.cap_reached.clone(),
        );
        registry.register(
            "hartslag_http_header_timeouts",
            "Connections closed because a request head did not arrive within --http-header-timeout",
            stats.header_timeouts.clone(),
        );
        registry.register(
            "hartslag_http_write_timeouts",
            "Connections closed because the client took no data of an answer within --http-write-timeout",
            stats.write_timeouts.clone(),
        );
    }
}

/// Whether `e` ended a connection because its client stopped taking data
/// ([`WriteTimeout`]).
fn is_write_timeout(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// How often, at most, the "connection cap reached" warning is logged during a burst.
const CAP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves the APIs and the dashboard on `listener` until `shutdown` resolves; `/readyz`
/// answers ready meanwhile, while the front end's gate is open. Then stops accepting, ends
/// live dashboard streams (open browser tabs would otherwise hold the shutdown up), lets
/// requests in flight finish for up to `shutdown_grace` and returns.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    state.serving.store(true, Ordering::Release);
    let closing = state.clone();
    accept(
        listener,
        app,
        state.limits,
        state.connections.clone(),
        async move {
            shutdown.await;
            drain(&closing).await;
        },
    )
    .await
}

/// Set once the process got its first SIGTERM or Ctrl-C ([`signal_received`]).
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Marks the stop as asked from outside. Only such a stop drains for `shutdown_delay`: the
/// kubelet sends SIGTERM as it takes the pod out of the Service. A stop the process decides
/// on itself (a lost Lease, a deposed leader) is not announced to any load balancer, and a
/// lost Lease must stop the controllers without delay.
pub fn signal_received() {
    SIGNALLED.store(true, Ordering::Release);
}

/// The first part of a shutdown, before the server stops accepting: `/readyz` answers 503
/// at once, and for `shutdown_delay` the server goes on serving, each answer closing its
/// connection. Kubernetes takes a terminating pod out of its Service's endpoints while the
/// pod is told to stop, and kube-proxy and ingress controllers learn of it a moment later:
/// a server that stopped accepting at once would refuse the connections they still send
/// (lost pings, in the middle of a rolling update). Then live dashboard streams end (open
/// browser tabs would otherwise hold the shutdown up).
pub(super) async fn drain(state: &HttpState) {
    state.stopping.store(true, Ordering::Release);
    state.serving.store(false, Ordering::Release);
    let delay = match SIGNALLED.load(Ordering::Acquire) {
        true => state.limits.shutdown_delay,
        false => Duration::ZERO,
    };
    if !delay.is_zero() {
        state.connections.draining.store(true, Ordering::Release);
        tracing::info!(
            delay_secs = delay.as_secs_f64(),
            "not ready; still serving, each answer closing its connection, until the load balancers have stopped sending requests here"
        );
        tokio::time::sleep(delay).await;
    }
    state.dashboard.close_streams();
}

/// Accepts connections on `listener` and serves `app` on each (HTTP/1.1 with hyper's
/// header-read and keep-alive timeout, at most `max_connections` at once) until `stop`
/// resolves; then stops accepting and lets requests in flight finish for up to
/// `shutdown_grace`.
pub(super) async fn accept(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: ConnectionStats,
    stop: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    warn_if_descriptors_are_short(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut last_cap_log: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        if permits.available_permits() == 0 {
            stats.cap_reached.inc();
            if last_cap_log.is_none_or(|t| t.elapsed() >= CAP_LOG_EVERY) {
                last_cap_log = Some(Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "HTTP connection cap reached: new clients wait until a connection closes (idle and slow ones close after --http-header-timeout); raise --http-max-connections if this is normal load"
                );
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: keep
                    // serving the connections there are, try again shortly.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        stats.accepted.inc();
        stats.open.inc();
        let service = app
            .clone()
            .map_request(move |mut req: axum::extract::Request| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            })
            .map_request(|req: hyper::Request<hyper::body::Incoming>| {
                req.map(axum::body::Body::new)
            });
        let draining = stats.draining.clone();
        let service = service.map_response(move |mut res: axum::response::Response| {
            if draining.load(Ordering::Acquire) {
                res.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            res
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let conn = graceful.watch(builder.serve_connection(
            TokioIo::new(WriteTimeout::new(stream, limits.write_timeout)),
            TowerToHyperService::new(service),
        ));
        let stats = stats.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    stats.header_timeouts.inc();
                } else if is_write_timeout(&e) {
                    stats.write_timeouts.inc();
                }
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
            stats.open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(
                grace_secs = limits.shutdown_grace.as_secs(),
                "requests still running at the end of the shutdown grace period were cut off"
            );
        }
    }
    Ok(())
}

/// Warns when the process may run out of file descriptors before reaching the connection
/// cap (Linux: the soft `RLIMIT_NOFILE` from `/proc/self/limits`).
fn warn_if_descriptors_are_short(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    // The database, the commit log and outgoing connections need descriptors too.
    if let Some(soft) = soft
        && soft < max_connections.saturating_add(256)
    {
        tracing::warn!(
            open_files_limit = soft,
            max_connections,
            "the open-files limit is below --http-max-connections plus what storage needs; lower the cap or raise the limit (ulimit -n)"
        );
    }
}
