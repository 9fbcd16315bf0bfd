//! The HTTP adapters over the core's services: the event, ping, management and operations
//! APIs ([`api`]) and the dashboard ([`dashboard`]), in one router whose every answer is
//! counted ([`track`]).

pub mod api;
pub mod auth;
pub mod body;
pub mod dashboard;
pub mod error;
pub mod export;
pub mod path;
pub mod port;
pub mod query;
pub mod reads;
mod serve;
mod state;
pub mod track;
mod write_timeout;

use axum::Router;
use axum::http::{Method, StatusCode};

pub use error::ApiError;
pub use port::Port;
pub use serve::{ConnectionStats, HttpLimits, serve, signal_received};
pub use state::{HttpState, Shared};

/// The complete router: the APIs plus the dashboard, all counted in the request metrics.
pub fn router(state: HttpState) -> Router {
    let requests = state.requests.clone();
    Router::new()
        .merge(api::routes())
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        // After the merges: it applies to the routes the router has when it is called.
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
        .layer(track::TrackLayer::new(requests))
}

/// A known route asked with a method it does not take: the usual `{"error"}` body, so a
/// client reads every refusal alike (axum's own 405 has an empty body); axum still sets
/// `Allow` to the methods the route takes.
pub(crate) async fn wrong_method(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this route does not take {method}; the Allow header lists the methods it takes"),
    )
}
