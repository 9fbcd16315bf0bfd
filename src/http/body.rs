//! Request bodies, read within the configured size and time limits.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::StatusCode;
use futures::StreamExt;

use super::error::ApiError;

/// Reads the body within `limit` bytes and `timeout`; `Err` is the 413, 408 (too slow) or
/// 400 answer.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    declared_within(&body, limit)?;
    let Ok(read) = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await else {
        return Err(too_slow(timeout));
    };
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .map(|s| s.to_string().contains("length limit"))
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if too_large {
            larger_than(limit)
        } else {
            unreadable(e)
        }
    })
}

/// Reads a body of at most `limit` bytes within `timeout` and keeps its first `keep`
/// bytes, dropping the rest as it arrives: for a ping, whose body is kept only in part (a
/// job's last log lines), a long log costs the client no refused ping and the server no
/// memory beyond `keep`.
pub async fn read_head(
    body: Body,
    keep: usize,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    declared_within(&body, limit)?;
    let read = async {
        let mut kept: Vec<u8> = Vec::new();
        let mut total: usize = 0;
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(unreadable)?;
            total = total.saturating_add(chunk.len());
            if total > limit {
                return Err(larger_than(limit));
            }
            let room = keep.saturating_sub(kept.len()).min(chunk.len());
            kept.extend(chunk.iter().take(room));
        }
        Ok(Bytes::from(kept))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(too_slow(timeout)))
}

/// Refuses a body whose declared length (`Content-Length`) is over `limit` before
/// anything is read: waiting for bytes a client declared and may never send ended in a
/// 408 after the body timeout, which does not name the problem.
fn declared_within(body: &Body, limit: usize) -> Result<(), ApiError> {
    let declared = HttpBody::size_hint(body).lower();
    match usize::try_from(declared) {
        Ok(n) if n <= limit => Ok(()),
        _ => Err(larger_than(limit)),
    }
}

fn larger_than(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes"),
    )
}

fn too_slow(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {}s",
            timeout.as_secs()
        ),
    )
}

fn unreadable(e: axum::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("could not read the request body: {e}"),
    )
}
