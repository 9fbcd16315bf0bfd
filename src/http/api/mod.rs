//! The APIs: events (the Hartslag API), pings and the status listing (Tickstem's),
//! Alertmanager's Watchdog as a ping, monitor management (Tickstem's), and health,
//! readiness and metrics for operations.

pub mod events;
pub mod manage;
pub mod ops;
pub mod pings;
pub mod watchdog;

use axum::Router;

use super::HttpState;

/// Every API route.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .merge(events::routes())
        .merge(pings::routes())
        .merge(watchdog::routes())
        .merge(manage::routes())
        .merge(ops::routes())
}
