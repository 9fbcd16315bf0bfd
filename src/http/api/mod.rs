//! The APIs: events (the Hartslag API), pings and the status listing (Tickstem's), monitor
//! management (Tickstem's), and health, readiness and metrics for operations.

pub mod events;
pub mod manage;
pub mod ops;
pub mod pings;

use axum::Router;

use super::HttpState;

/// Every API route.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .merge(events::routes())
        .merge(pings::routes())
        .merge(manage::routes())
        .merge(ops::routes())
}
