//! Query-string parameters shared by the APIs and the dashboard: blank means absent, and a
//! malformed value is a 422 that names the parameter.

use std::collections::HashMap;

use axum::http::StatusCode;

use super::error::ApiError;

/// The trimmed value of `name`, `None` when absent or blank.
pub fn text_param(params: &HashMap<String, String>, name: &str) -> Option<String> {
    params
        .get(name)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// An event name filter: [`text_param`], refused with a 422 when it holds a NUL character,
/// which no stored name holds (ingest refuses it, and PostgreSQL's text cannot hold it).
pub fn event_param(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match text_param(params, name) {
        Some(s) if s.contains('\0') => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("query parameter {name} must not contain a NUL character"),
        )),
        other => Ok(other),
    }
}

/// The integer value of `name`, `None` when absent or blank.
pub fn int_param(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    match params.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("query parameter {name} must be an integer, got {s:?}"),
            )
        }),
    }
}
