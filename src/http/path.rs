//! Path parameters read so that a malformed one names nothing instead of failing the
//! request.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

/// One path parameter, percent-decoded. A segment that is not UTF-8 once decoded names
/// nothing that exists, so it reads as empty and the route answers its own 404 (in the
/// API's JSON shape) instead of axum's plain-text 400.
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let path = Path::<String>::from_request_parts(parts, state).await;
        Ok(Self(path.map(|p| p.0).unwrap_or_default()))
    }
}

/// Two path parameters, read as [`Segment`] reads one: `{namespace}/{name}` that does not
/// decode names nothing, and the page answers its own 404.
pub struct Segments(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segments {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let path = Path::<(String, String)>::from_request_parts(parts, state).await;
        let (a, b) = path.map(|p| p.0).unwrap_or_default();
        Ok(Self(a, b))
    }
}
