//! How the APIs answer errors: a status and the JSON body clients parse.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer: a status and the JSON body clients parse.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
    /// Seconds for the answer's `Retry-After` (a 429 says when to come back).
    retry_after: Option<u64>,
}

impl ApiError {
    /// `{"error": message}` with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
            retry_after: None,
        }
    }

    /// A status with an arbitrary JSON body (Laravel-shaped validation errors).
    pub fn with_body(status: StatusCode, body: serde_json::Value) -> Self {
        Self {
            status,
            body,
            retry_after: None,
        }
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

impl ApiError {
    /// The same answer, telling the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        res
    }
}

/// A fixed JSON answer: the hot routes' bodies never change, so they skip building and
/// serializing a `serde_json::Value` per request.
pub fn json_body(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
