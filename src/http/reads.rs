//! The per-Application cap on heavy reads over HTTP: the event API's stats and CSV export
//! (and the dashboard's download of the same export). Each keeps a core busy, or a
//! blocking thread and a database connection, for as long as it runs; past
//! `spec.limits.concurrentReads` of one Application running at once, one more is refused
//! at once instead of queueing behind them, so a tenant that fires reads in parallel slows
//! down only itself.

use axum::http::StatusCode;

use super::error::ApiError;
use crate::core::limits::ReadSlot;
use crate::core::registry::AppInfo;

/// Seconds a refused read is told to wait: stats answer within that on any sensible
/// Application, and an export that holds the slot longer is refused again, cheaply.
const RETRY_AFTER_SECS: u64 = 1;

/// A slot for one heavy read of `app`, held until the read ends; 429 with `Retry-After`
/// and a message naming the limit when `app` already runs as many as it may.
pub fn read_slot(app: &AppInfo) -> Result<ReadSlot, ApiError> {
    let limit = app.limits.concurrent_reads;
    app.reads.take(limit).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many stats and export requests of this Application at once: it may run \
                 {limit} at a time (limits.concurrentReads); retry when one has finished"
            ),
        )
        .retry_after(RETRY_AFTER_SECS)
    })
}
