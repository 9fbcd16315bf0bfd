//! Health, readiness and metrics endpoints for probes and Prometheus.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::core::metrics::encode_with;
use crate::http::HttpState;

/// How long the liveness check waits for the ingest writer and the engine to answer.
const PROBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Liveness: fails once storage, the monitor engine or the alert outbox cannot write (after
/// a failed write to disk, or once a shared database's schema is newer than this binary),
/// or once the ingest writer or the engine thread is dead or stuck,
/// so the kubelet restarts the pod and the restart replays the commit log.
async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.core.health(PROBE_WITHIN).await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "failing", "error": e.to_string()})),
        ),
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.serving.load(Ordering::Acquire) && state.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
    } else {
        let status = if state.stopping.load(Ordering::Acquire) {
            "stopping"
        } else {
            "starting"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": status })),
        )
    }
}

/// The registry's families and the per-monitor series. With many monitors this is tens of
/// megabytes of text, so it is built on a blocking thread, not on the async workers.
async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || {
        encode_with(&state.metrics, |out| state.core.engine.series().write(out))
    })
    .await;
    match body {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("metrics: {e}"),
        ),
    }
}

/// Routes of this family.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}
