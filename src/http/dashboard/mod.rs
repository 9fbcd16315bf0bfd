//! The dashboard: server-rendered pages over the same core the APIs use, in both modes.
//!
//! Handlers are thin: the [`auth`] extractors resolve the viewer from the session cookie,
//! [`handlers`] read the engine snapshot and the store and hand plain data to [`view`]
//! (decisions) and [`pages`] (HTML). Nothing is visible without a session; an Application
//! token sees its application and the monitors that reference it, the admin token sees
//! everything. Every response carries a strict Content-Security-Policy ([`headers`]), and
//! tokens never appear in a page or a URL.

mod auth;
pub mod badge;
pub mod chart;
mod handlers;
mod headers;
mod live;
pub mod pages;
mod reply;
pub mod session;
pub mod view;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};

pub use headers::CSP;

use super::HttpState;
use session::Sessions;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");
/// The pages' icon: without one, every page's request for `/favicon.ico` failed (a 404 in
/// the browser's console).
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Dashboard state shared by its handlers.
#[derive(Debug)]
pub struct Dashboard {
    sessions: Sessions,
    badges: badge::BadgeIndex,
    base_url: String,
    https: bool,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Dashboard {
    /// A dashboard whose links use `base_url` (the external URL); cookies are `Secure`
    /// when that URL is HTTPS.
    pub fn new(base_url: &str) -> Self {
        Self {
            sessions: Sessions::default(),
            badges: badge::BadgeIndex::default(),
            base_url: base_url.trim_end_matches('/').to_string(),
            https: base_url.starts_with("https://"),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every live stream, so a graceful shutdown does not wait for open browser tabs.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }
}

/// The dashboard's routes, each answer carrying the security headers.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(handlers::overview))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(auth::login_page).post(auth::login))
        .route("/ui/logout", post(auth::logout))
        .route("/ui/monitors", get(handlers::monitors))
        .route(
            "/ui/monitors/{namespace}/{name}",
            get(handlers::monitor_detail),
        )
        .route("/ui/applications", get(handlers::applications))
        .route(
            "/ui/applications/{namespace}/{name}",
            get(handlers::application_detail),
        )
        .route(
            "/ui/applications/{namespace}/{name}/export.csv",
            get(handlers::application_export),
        )
        .route("/ui/live", get(live::live))
        .route(
            "/ui/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/static/icon.svg",
            get(|| async { asset("image/svg+xml", ICON_SVG) }),
        )
        .route("/badge/{file}", get(handlers::badge_svg))
        // Unknown pages and wrong methods answer inside the layer, so they carry the
        // security headers too; a browser gets the dashboard's own 404 page.
        .route("/ui/{*rest}", any(handlers::unknown_page))
        .method_not_allowed_fallback(crate::http::wrong_method)
        .layer(axum::middleware::from_fn(headers::security_headers))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
