//! How the APIs answer errors: a status and the JSON body clients parse.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::core::storage::StorageError;

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

    /// The seconds of its `Retry-After`, for callers that answer with a page instead.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
    }
}

impl ApiError {
    /// 503 for `what` ("the ping could not be recorded") when storage failed, saying what
    /// failed in words of our own: the backend's details (addresses, the server's
    /// messages) go to the log, not to clients. A database whose schema is newer than
    /// this binary is named with both versions: retrying will not help until an operator
    /// acts.
    pub fn storage(what: &str, e: &StorageError) -> Self {
        let message = match e {
            StorageError::Incompatible(why) => format!("{what}: {why}"),
            StorageError::Unavailable(_) => {
                format!("{what}: the database is unreachable or failing; retry later")
            }
            StorageError::NotStored(_) => {
                format!("{what}: the database did not store it; retry later")
            }
            StorageError::Stopped => {
                format!("{what}: the storage writer has stopped; retry later")
            }
            StorageError::Fenced(_) => format!("{what}: this replica no longer leads; retry"),
            StorageError::Corrupt { .. } => {
                format!("{what}: a stored record is corrupt; the server's log has the details")
            }
        };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_failure_is_a_503_naming_what_failed_without_the_backends_details() {
        let detail = "error connecting to server 10.1.2.3:5432: Connection refused";
        let said = |e: StorageError| {
            let answer = ApiError::storage("the ping could not be recorded", &e);
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            let message = answer.message();
            assert!(!message.contains("10.1.2.3"), "{message}");
            message
        };
        assert_eq!(
            said(StorageError::Unavailable(detail.into())),
            "the ping could not be recorded: the database is unreachable or failing; retry later"
        );
        assert_eq!(
            said(StorageError::Incompatible(
                "the database schema is at version 9, newer than this binary knows (8)".into()
            )),
            "the ping could not be recorded: the database schema is at version 9, newer than this binary knows (8)"
        );
        assert!(said(StorageError::NotStored(detail.into())).contains("did not store it"));
        assert!(said(StorageError::Fenced(detail.into())).contains("no longer leads"));
        assert!(said(StorageError::Stopped).contains("writer has stopped"));
        let corrupt = StorageError::Corrupt {
            what: "x".into(),
            detail: detail.into(),
        };
        assert!(said(corrupt).contains("corrupt"));
    }
}
