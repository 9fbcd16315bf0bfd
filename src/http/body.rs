//! Request bodies, read whole up to the configured size and time limits.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;

use super::error::ApiError;

/// Reads the body within `limit` bytes and `timeout`; `Err` is the 413, 408 (too slow) or
/// 400 answer.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let Ok(read) = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}s",
                timeout.as_secs()
            ),
        ));
    };
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .map(|s| s.to_string().contains("length limit"))
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })
}
