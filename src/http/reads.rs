//! The bounds on heavy reads over HTTP: the event API's stats and CSV export, and the
//! dashboard's stats, charts, top users and download of the same export. Each keeps a
//! core busy, or a blocking thread and a database connection, for as long as it runs.
//!
//! Two bounds apply to each, and a read past either is refused at once instead of queueing
//! behind the running ones:
//!
//! - per Application, `spec.limits.concurrentReads` (`--max-concurrent-reads`): a tenant
//!   that fires reads in parallel slows down only itself, and is told so with `429`;
//! - per server, `--max-concurrent-reads-total`, over every Application together: many
//!   tenants each within their own limit still cannot take every core, or every database
//!   connection the ingest writer needs. That is no client's fault, so the answer is
//!   `503` (RFC 9110: the server is "temporarily overloaded"), as nginx's `limit_conn`
//!   and Envoy's overload manager answer a server-wide limit, with `Retry-After`.

use std::sync::Arc;

use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::error::ApiError;
use crate::core::limits::{ReadSlot, ReadSlots};
use crate::core::metrics::MetricRegistry;
use crate::core::registry::AppInfo;

/// Seconds a refused read is told to wait: stats answer within that on any sensible
/// Application, and an export that holds the slot longer is refused again, cheaply.
const RETRY_AFTER_SECS: u64 = 1;

/// The default of `--max-concurrent-reads-total`. On PostgreSQL every heavy read takes a
/// connection of the process's pool ([`crate::core::store_pg::POOL_SIZE`], 16) while it
/// queries, beside the ingest writer's transaction, the ping relay, retention, the token
/// and application records and the schema watch; a writer that waits for a connection
/// longer than the pool's 3 s wait fails its events with 503. Eight leaves half the pool
/// to them. On sled it bounds the blocking threads the reads keep busy, four tenants'
/// worth at the default of two each.
pub const DEFAULT_MAX_TOTAL: u32 = 8;

// Shrinking the pool below twice the default would let reads crowd out the writers again.
const _: () = assert!(DEFAULT_MAX_TOTAL as usize * 2 <= crate::core::store_pg::POOL_SIZE);

/// Which bound refused a read, the `limit` label of `hartslag_http_heavy_reads_refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    limit: &'static str,
}

/// The server-wide side of the bounds, shared by every request: the heavy reads running
/// now, the limit, and their metrics.
#[derive(Debug)]
pub struct HeavyReads {
    running: Arc<ReadSlots>,
    limit: u32,
    in_flight: Gauge,
    refused: Family<RefusedLabel, Counter>,
    by_application: Counter,
    by_server: Counter,
}

impl HeavyReads {
    /// At most `limit` heavy reads at once over the whole server (at least 1).
    pub fn new(limit: u32) -> Self {
        let refused = Family::<RefusedLabel, Counter>::default();
        let counter = |limit| refused.get_or_create_owned(&RefusedLabel { limit });
        Self {
            running: Arc::default(),
            limit: limit.max(1),
            in_flight: Gauge::default(),
            by_application: counter("application"),
            by_server: counter("server"),
            refused,
        }
    }

    /// Registers the reads running, the limit and the refusals in `registry`.
    pub fn register(&self, registry: &mut MetricRegistry) {
        registry.register(
            "hartslag_http_heavy_reads",
            "Heavy reads (stats, exports, the dashboard's charts) running now",
            self.in_flight.clone(),
        );
        let max: Gauge = Gauge::default();
        max.set(i64::from(self.limit));
        registry.register(
            "hartslag_http_heavy_reads_max",
            "Most heavy reads the server runs at once (--max-concurrent-reads-total)",
            max,
        );
        registry.register(
            "hartslag_http_heavy_reads_refused",
            "Heavy reads refused, by the limit that refused them: application \
             (spec.limits.concurrentReads, 429) or server (--max-concurrent-reads-total, 503)",
            self.refused.clone(),
        );
    }

    /// A permit for one heavy read of `app`, held until the read ends. Its Application's
    /// bound is asked first: a tenant past its own limit is told so (429) whatever the
    /// server's load. Then the server's: 503 with `Retry-After` and a message naming the
    /// server-wide limit.
    pub fn permit(&self, app: &AppInfo) -> Result<ReadPermit, ApiError> {
        let own = app.limits.concurrent_reads;
        let Some(app_slot) = app.reads.take(own) else {
            self.by_application.inc();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many stats and export requests of this Application at once: it may \
                     run {own} at a time (limits.concurrentReads); retry when one has finished"
                ),
            )
            .retry_after(RETRY_AFTER_SECS));
        };
        let Some(server_slot) = self.running.take(self.limit) else {
            self.by_server.inc();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is running as many stats and export requests as it allows \
                     for all Applications together ({} at a time, \
                     --max-concurrent-reads-total); this is no fault of this Application: \
                     retry in a moment",
                    self.limit
                ),
            )
            .retry_after(RETRY_AFTER_SECS));
        };
        self.in_flight.inc();
        Ok(ReadPermit {
            _app: app_slot,
            _server: server_slot,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// One heavy read's place under both bounds, given back when it is dropped: when a stats
/// answer is written, when a page's reads are done, when an export stops streaming.
#[derive(Debug)]
pub struct ReadPermit {
    _app: ReadSlot,
    _server: ReadSlot,
    in_flight: Gauge,
}

impl Drop for ReadPermit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}
