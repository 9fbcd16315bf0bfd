//! Bearer tokens on the APIs: an Application's token opens its events and monitors.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use super::HttpState;
use super::error::ApiError;
use crate::core::registry::AppInfo;

/// The token of an `Authorization: Bearer` header, if well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The Application whose token the request bears; without one, the 401 clients expect.
/// Resolved from memory (a hash and a map lookup), never from storage.
pub struct AuthenticatedApp(pub Arc<AppInfo>);

impl FromRequestParts<HttpState> for AuthenticatedApp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, ApiError> {
        bearer(&parts.headers)
            .and_then(|t| state.core.registry.application_for_token(t))
            .map(Self)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized"))
    }
}
