//! Who is looking: the session extractors every page starts from, and logging in and out.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::pages;
use super::reply::{not_found, page};
use super::session::{self, Principal, Viewer};
use super::view;
use crate::core::registry::{AppInfo, object_key};
use crate::core::token::TokenHash;
use crate::http::HttpState;
use crate::http::path::Segments;

/// Why a page was not shown.
pub enum Refused {
    /// No session: to the login form, then back to the page asked for.
    Login(String),
    /// Nothing here the viewer may see.
    NotFound(Viewer, &'static str),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Login(next) => Redirect::to(&format!(
                "/ui/login?next={}",
                view::urlencode(safe_next(&next))
            ))
            .into_response(),
            Refused::NotFound(viewer, what) => not_found(&viewer, what),
        }
    }
}

/// The viewer of the request's session cookie, if it names a live session.
pub fn viewer(state: &HttpState, headers: &HeaderMap) -> Option<Viewer> {
    let cookie = session::cookie_value(headers)?;
    state
        .dashboard
        .sessions
        .resolve(cookie, &state.core.registry)
}

fn login_for(uri: &Uri) -> Refused {
    Refused::Login(
        uri.path_and_query()
            .map_or("/ui", |p| p.as_str())
            .to_string(),
    )
}

impl FromRequestParts<HttpState> for Viewer {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Refused> {
        viewer(state, &parts.headers).ok_or_else(|| login_for(&parts.uri))
    }
}

/// The viewer and the application at the page's `{namespace}/{name}`, when they may see it.
pub struct AppPage {
    /// Who is looking.
    pub viewer: Viewer,
    /// The application.
    pub app: Arc<AppInfo>,
}

impl FromRequestParts<HttpState> for AppPage {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Refused> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        let Ok(Segments(namespace, name)) = Segments::from_request_parts(parts, state).await;
        match state
            .core
            .registry
            .application(&object_key(&namespace, &name))
            .filter(|a| viewer.principal.sees_application(&a.key))
        {
            Some(app) => Ok(Self { viewer, app }),
            None => Err(Refused::NotFound(viewer, "application")),
        }
    }
}

/// Only paths inside the dashboard are followed after login (no open redirect).
///
/// The path (before `?`) may hold no escapes and no empty or `..` segment: a browser
/// decodes `%2e%2e` to `..` before it resolves the path, so `/ui/%2e%2e/metrics` led out
/// of the dashboard. Its own paths never need an escape (Kubernetes names are plain).
pub fn safe_next(next: &str) -> &str {
    let inside = next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?");
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let clean = next.bytes().all(|b| b.is_ascii_graphic())
        && !next.contains('\\')
        && !path.contains('%')
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == ".." || seg == ".");
    if inside && clean { next } else { "/ui" }
}

/// A cross-site form post is refused: the browser says where the request came from.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Whether cookies must be `Secure`: the external URL is HTTPS, or a TLS-terminating
/// proxy says the browser used HTTPS.
fn secure(state: &HttpState, headers: &HeaderMap) -> bool {
    state.dashboard.https
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

pub async fn login_page(
    State(st): State<HttpState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(params.get("next").map(String::as_str).unwrap_or("/ui"));
    if viewer(&st, &headers).is_some() {
        return Redirect::to(next).into_response();
    }
    page(StatusCode::OK, pages::login(next, None))
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(st): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next).to_string();
    if !same_origin(&headers) {
        let why = "This login came from another site and was refused.";
        return page(StatusCode::FORBIDDEN, pages::login(&next, Some(why)));
    }
    let token = form.token.trim();
    let owner = (!token.is_empty())
        .then(|| st.core.registry.authenticate(token))
        .flatten();
    let Some(principal) = owner.as_ref().and_then(Principal::of_owner) else {
        let why = if owner.is_some() {
            "That is a heartbeat ping token; log in with an Application token or the admin token."
        } else {
            "That token is not valid. Use an Application token or the admin token."
        };
        return page(StatusCode::UNAUTHORIZED, pages::login(&next, Some(why)));
    };
    match st
        .dashboard
        .sessions
        .create(principal, TokenHash::of(token))
    {
        Ok(id) => (
            [(
                header::SET_COOKIE,
                session::set_cookie(&id, secure(&st, &headers)),
            )],
            Redirect::to(&next),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot start a dashboard session");
            let why = "The server could not start a session; try again.";
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::login(&next, Some(why)),
            )
        }
    }
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(st): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (Some(cookie), Some(viewer)) = (session::cookie_value(&headers), viewer(&st, &headers))
    else {
        return Redirect::to("/ui/login").into_response();
    };
    let valid = {
        use subtle::ConstantTimeEq;
        bool::from(viewer.csrf.as_bytes().ct_eq(form.csrf.as_bytes()))
    };
    if !valid || !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "This form is stale or came from another site; reload the page and try again.",
        )
            .into_response();
    }
    st.dashboard.sessions.remove(cookie);
    (
        [(
            header::SET_COOKIE,
            session::clear_cookie(secure(&st, &headers)),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn next_stays_inside_the_dashboard() {
        assert_eq!(
            safe_next("/ui/monitors?state=Down"),
            "/ui/monitors?state=Down"
        );
        assert_eq!(safe_next("//evil.example/ui"), "/ui");
        assert_eq!(safe_next("https://evil.example"), "/ui");
        assert_eq!(safe_next("/ui\\@evil"), "/ui");
        assert_eq!(safe_next("/ui\r\nX: y"), "/ui");
        assert_eq!(safe_next("/ui/../metrics"), "/ui");
        assert_eq!(safe_next("/ui/%2e%2e/metrics"), "/ui");
        assert_eq!(safe_next("/ui/%2E%2E/api/v1/stats"), "/ui");
        assert_eq!(safe_next("/ui/%252e%252e/api/v1/stats"), "/ui");
        assert_eq!(safe_next("/ui/%2e%2e/%2e%2e//evil.example"), "/ui");
        assert_eq!(safe_next("/ui/.//x"), "/ui");
        assert_eq!(
            safe_next("/ui/monitors?q=a%20b&state=Down"),
            "/ui/monitors?q=a%20b&state=Down",
            "escapes in the query are fine"
        );
        assert_eq!(safe_next("/uix"), "/ui");
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no browser hints: a non-browser client");
        h.insert(
            header::HOST,
            HeaderValue::from_static("hartslag.local:8080"),
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://hartslag.local:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
    }
}
