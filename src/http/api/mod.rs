//! The HTTP surface: one module per API family, assembled into one axum router.

pub mod events;
pub mod manage;
pub mod ops;
pub mod pings;
pub mod track;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::catalogue::MonitorCatalogue;
use crate::core::metrics::Metrics;
use crate::core::registry::{AppInfo, Registry};
use crate::core::store::events::EventWriter;

/// Everything request handlers share, behind one `Arc`: axum clones the state for every
/// request, and one reference count is cheaper than one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the shared parts for the router.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// Applications and tokens.
    pub registry: Registry,
    /// The ingest writer.
    pub events: EventWriter,
    /// Heartbeat monitors.
    pub engine: crate::core::monitor::engine::Engine,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Longest time to receive a request body.
    pub body_timeout: std::time::Duration,
    /// Set once startup finished (definitions loaded); `/readyz` reports it.
    pub ready: Arc<AtomicBool>,
    /// Where management API writes go; set by the front end.
    pub catalogue: Arc<std::sync::OnceLock<Arc<dyn MonitorCatalogue>>>,
    /// Per-key rate limit of the management API.
    pub rate_limit: Arc<manage::RateLimiter>,
}

/// A fixed JSON answer: the hot routes' bodies never change, so they skip building and
/// serializing a `serde_json::Value` per request.
pub fn json_body(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A JSON error body `{"error": message}` with a status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// An error answer: a status and the JSON body clients parse.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    /// `{"error": message}` with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    /// A status with an arbitrary JSON body (Laravel-shaped validation errors).
    pub fn with_body(status: StatusCode, body: serde_json::Value) -> Self {
        Self { status, body }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The human-readable message, for callers that show it in a page instead of JSON.
    pub fn message(&self) -> String {
        match self.body.get("error").and_then(|v| v.as_str()) {
            Some(m) => m.to_string(),
            None => self.body.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// One path parameter. A segment that is not UTF-8 once percent-decoded names nothing that
/// exists, so it reads as `None` and the route gives its own 404 instead of axum's plain
/// text 400.
pub struct Segment(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let path = axum::extract::Path::<String>::from_request_parts(parts, state).await;
        Ok(Self(path.ok().map(|p| p.0)))
    }
}

/// The token of an `Authorization: Bearer` header, if well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Resolves the bearer token to an application or answers 401 the way clients expect.
pub fn authenticate_app(state: &AppState, headers: &HeaderMap) -> Result<Arc<AppInfo>, ApiError> {
    bearer(headers)
        .and_then(|t| state.registry.application_for_token(t))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized"))
}

/// The complete router for both front ends: the APIs plus `pages` (the dashboard), all
/// counted in the request metrics.
pub fn router(state: AppState, pages: Router) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .merge(events::routes())
        .merge(pings::routes())
        .merge(manage::routes())
        .merge(ops::routes())
        .with_state(state)
        .merge(pages)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(track::TrackLayer::new(metrics))
}
