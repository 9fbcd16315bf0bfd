//! The dashboard: server-rendered pages over the same core the APIs use, in both modes.
//!
//! Handlers here are thin: resolve the viewer from the session cookie, read the engine
//! snapshot and the store, hand plain data to [`view`] (decisions) and [`pages`] (HTML).
//! Nothing is visible without a session; an Application token sees its application and
//! the monitors that reference it, the admin token sees everything. Every response carries
//! a strict Content-Security-Policy, and tokens never appear in a page or a URL.

pub mod badge;
pub mod chart;
pub mod pages;
pub mod session;
pub mod view;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use jiff::Timestamp;
use maud::Markup;

use crate::core::calendar::{Periods, date_key};
use crate::core::monitor::engine::Monitor;
use crate::core::monitor::state::State as MonitorStateKind;
use crate::core::registry::{AppInfo, object_key};
use crate::core::store::keys::hour_of;
use crate::http::api::AppState;
use pages::{AppDetail, AppFilters, AppSummary, MonitorDetail, Section};
use session::{Principal, Sessions, Viewer};

/// Rows of ping history on a monitor page.
const PING_ROWS: usize = 100;
/// Rows of the state timeline on a monitor page.
const TRANSITION_ROWS: usize = 50;
/// Monitors listed under "Needs attention".
const ATTENTION_ROWS: usize = 50;

/// The Content-Security-Policy of every dashboard response: only our own script and
/// stylesheet, no inline code, no framing, forms post only to us.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

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

#[derive(Clone)]
struct Dash {
    api: AppState,
    dash: Arc<Dashboard>,
}

impl Dash {
    fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        self.viewer_of(session::cookie_value(headers)?)
    }

    fn viewer_of(&self, cookie: &str) -> Option<Viewer> {
        self.dash.sessions.resolve(cookie, &self.api.registry)
    }

    fn secure(&self, headers: &HeaderMap) -> bool {
        self.dash.https
            || headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https"))
    }

    fn now(&self) -> Timestamp {
        self.api.engine.clock().now()
    }

    fn summary(&self, app: Arc<AppInfo>, now: Timestamp) -> AppSummary {
        let stats = self
            .api
            .registry
            .store()
            .stats(app.num, &Periods::at(now, &app.tz), None, None)
            .unwrap_or_else(|e| {
                tracing::warn!(application = %app.key, error = %e, "stats for the dashboard failed");
                Default::default()
            });
        AppSummary { app, stats }
    }

    /// Summaries of the viewer's applications, read off the async workers.
    async fn summaries(&self, viewer: &Viewer, now: Timestamp) -> Vec<AppSummary> {
        let apps = self.visible_apps(viewer);
        let st = self.clone();
        tokio::task::spawn_blocking(move || apps.into_iter().map(|a| st.summary(a, now)).collect())
            .await
            .unwrap_or_default()
    }

    fn visible_apps(&self, viewer: &Viewer) -> Vec<Arc<AppInfo>> {
        self.api
            .registry
            .applications()
            .into_iter()
            .filter(|a| viewer.principal.sees_application(&a.key))
            .collect()
    }
}

/// The dashboard routes, ready to merge into the server's router.
pub fn router(api: AppState, dashboard: Arc<Dashboard>) -> Router {
    let state = Dash {
        api,
        dash: dashboard,
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(overview))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/monitors", get(monitors))
        .route("/ui/monitors/{namespace}/{name}", get(monitor_detail))
        .route("/ui/applications", get(applications))
        .route(
            "/ui/applications/{namespace}/{name}",
            get(application_detail),
        )
        .route(
            "/ui/applications/{namespace}/{name}/export.csv",
            get(application_export),
        )
        .route("/ui/live", get(live))
        .route(
            "/ui/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route("/badge/{file}", get(badge_svg))
        .with_state(state)
        .layer(axum::middleware::from_fn(security_headers))
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

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn in_layout(viewer: &Viewer, title: &str, section: Section, body: Markup) -> Response {
    page(StatusCode::OK, pages::layout(title, viewer, section, body))
}

fn not_found(viewer: &Viewer, what: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        pages::layout(
            "Not found",
            viewer,
            Section::Overview,
            pages::message(
                "Not found",
                &format!("There is no {what} here that you may see."),
            ),
        ),
    )
}

/// Only paths inside the dashboard are followed after login (no open redirect).
fn safe_next(next: &str) -> &str {
    let inside = next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?");
    let clean = next.bytes().all(|b| b.is_ascii_graphic())
        && !next.contains('\\')
        && !next.split(['/', '?']).any(|seg| seg == "..");
    if inside && clean { next } else { "/ui" }
}

fn to_login(uri: &Uri) -> Response {
    let next = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/ui");
    Redirect::to(&format!(
        "/ui/login?next={}",
        view::urlencode(safe_next(next))
    ))
    .into_response()
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

macro_rules! viewer_or_login {
    ($st:expr, $headers:expr, $uri:expr) => {
        match $st.viewer(&$headers) {
            Some(v) => v,
            None => return to_login(&$uri),
        }
    };
}

async fn login_page(
    State(st): State<Dash>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(params.get("next").map(String::as_str).unwrap_or("/ui"));
    if st.viewer(&headers).is_some() {
        return Redirect::to(next).into_response();
    }
    page(StatusCode::OK, pages::login(next, None))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(st): State<Dash>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next).to_string();
    if !same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            pages::login(
                &next,
                Some("This login came from another site and was refused."),
            ),
        );
    }
    let token = form.token.trim();
    let owner = (!token.is_empty())
        .then(|| st.api.registry.authenticate(token))
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
        .dash
        .sessions
        .create(principal, crate::core::token::TokenHash::of(token))
    {
        Ok(id) => (
            [(
                header::SET_COOKIE,
                session::set_cookie(&id, st.secure(&headers)),
            )],
            Redirect::to(&next),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot start a dashboard session");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::login(
                    &next,
                    Some("The server could not start a session; try again."),
                ),
            )
        }
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(st): State<Dash>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(cookie) = session::cookie_value(&headers) else {
        return Redirect::to("/ui/login").into_response();
    };
    let Some(viewer) = st.viewer(&headers) else {
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
    st.dash.sessions.remove(cookie);
    (
        [(
            header::SET_COOKIE,
            session::clear_cookie(st.secure(&headers)),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

fn count_states(counts: &HashMap<MonitorStateKind, usize>) -> Vec<(MonitorStateKind, usize)> {
    let mut v: Vec<_> = MonitorStateKind::ALL
        .into_iter()
        .map(|s| (s, counts.get(&s).copied().unwrap_or(0)))
        .collect();
    v.sort_by_key(|(s, _)| view::urgency(*s));
    v
}

async fn overview(State(st): State<Dash>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = viewer_or_login!(st, headers, uri);
    let now = st.now();
    let (counts, attention) = st.api.engine.view(|all| {
        let mut counts = HashMap::new();
        let mut attention: Vec<&Monitor> = Vec::new();
        for m in all
            .values()
            .filter(|m| viewer.principal.sees_monitor(&m.def))
        {
            *counts.entry(m.state.state).or_insert(0) += 1;
            if matches!(
                m.state.state,
                MonitorStateKind::Down | MonitorStateKind::Late
            ) {
                attention.push(m);
            }
        }
        attention.sort_by(|a, b| {
            (view::urgency(a.state.state), a.state.since, &a.def.key).cmp(&(
                view::urgency(b.state.state),
                b.state.since,
                &b.def.key,
            ))
        });
        let attention: Vec<Monitor> = attention
            .into_iter()
            .take(ATTENTION_ROWS)
            .cloned()
            .collect();
        (counts, attention)
    });
    let apps = st.summaries(&viewer, now).await;
    in_layout(
        &viewer,
        "Overview",
        Section::Overview,
        pages::overview(&count_states(&counts), &attention, &apps, now),
    )
}

async fn monitors(
    State(st): State<Dash>,
    headers: HeaderMap,
    uri: Uri,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let viewer = viewer_or_login!(st, headers, uri);
    let query = view::MonitorQuery::from_params(&params);
    let page = st
        .api
        .engine
        .view(|all| view::monitor_page(all.values(), &viewer.principal, &query, view::PAGE_SIZE));
    in_layout(
        &viewer,
        "Monitors",
        Section::Monitors,
        pages::monitors(&page, &query, st.now()),
    )
}

async fn monitor_detail(
    State(st): State<Dash>,
    headers: HeaderMap,
    uri: Uri,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let viewer = viewer_or_login!(st, headers, uri);
    let Some(m) = st
        .api
        .engine
        .get(&object_key(&namespace, &name))
        .filter(|m| viewer.principal.sees_monitor(&m.def))
    else {
        return not_found(&viewer, "monitor");
    };
    let pings = st.api.engine.pings(m.num, PING_ROWS).unwrap_or_else(|e| {
        tracing::warn!(monitor = %m.def.key, error = %e, "reading ping history failed");
        Vec::new()
    });
    let transitions = st
        .api
        .engine
        .transitions(m.num, TRANSITION_ROWS)
        .unwrap_or_else(|e| {
            tracing::warn!(monitor = %m.def.key, error = %e, "reading the state timeline failed");
            Vec::new()
        });
    let runs: Vec<_> = pings
        .iter()
        .rev()
        .filter_map(|p| p.duration_ms.map(|d| (p.at, d)))
        .collect();
    let durations = (!runs.is_empty()).then(|| chart::Chart {
        title: format!("Duration of the last {} runs", runs.len()),
        x_labels: runs
            .iter()
            .map(|(at, _)| at.strftime("%m-%d %H:%M").to_string())
            .collect(),
        series: vec![chart::Series {
            name: "run duration".into(),
            values: runs.iter().map(|(_, d)| *d as f64).collect(),
        }],
        unit: "ms".into(),
    });
    let detail = MonitorDetail {
        monitor: &m,
        pings: &pings,
        transitions: &transitions,
        badge_path: format!("/badge/{}.svg", badge::badge_key(&m.def.token)),
        base_url: st.dash.base_url.clone(),
        durations,
    };
    let title = m
        .def
        .display_name
        .clone()
        .unwrap_or_else(|| m.def.name.clone());
    in_layout(
        &viewer,
        &title,
        Section::Monitors,
        pages::monitor_detail(&detail, st.now()),
    )
}

async fn applications(State(st): State<Dash>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = viewer_or_login!(st, headers, uri);
    let now = st.now();
    let apps = st.summaries(&viewer, now).await;
    in_layout(
        &viewer,
        "Applications",
        Section::Applications,
        pages::applications(&apps),
    )
}

/// The viewer and the application at `namespace/name`, or the answer to give instead: the
/// login form without a session, 404 for an application the viewer may not see.
fn viewer_and_app(
    st: &Dash,
    headers: &HeaderMap,
    uri: &Uri,
    namespace: &str,
    name: &str,
) -> Result<(Viewer, Arc<AppInfo>), Box<Response>> {
    let viewer = st.viewer(headers).ok_or_else(|| Box::new(to_login(uri)))?;
    match st
        .api
        .registry
        .application(&object_key(namespace, name))
        .filter(|a| viewer.principal.sees_application(&a.key))
    {
        Some(app) => Ok((viewer, app)),
        None => Err(Box::new(not_found(&viewer, "application"))),
    }
}

async fn application_detail(
    State(st): State<Dash>,
    headers: HeaderMap,
    uri: Uri,
    Path((namespace, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (viewer, app) = match viewer_and_app(&st, &headers, &uri, &namespace, &name) {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let filter = match crate::http::api::events::export_filter(&app, &params) {
        Ok(f) => f,
        Err(e) => {
            return page(
                e.status(),
                pages::layout(
                    "Bad filter",
                    &viewer,
                    Section::Applications,
                    pages::message("Bad filter", &e.message()),
                ),
            );
        }
    };
    let text = |k: &str| {
        params
            .get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let filters = AppFilters {
        event: filter.event.clone(),
        user_id: filter.user_id,
        from: text("from"),
        to: text("to"),
    };
    let now = st.now();
    // Rollup scans run off the async workers, so a busy page never stalls pings.
    let read = {
        let st = st.clone();
        let app = app.clone();
        let event = filters.event.clone();
        let user = filters.user_id;
        tokio::task::spawn_blocking(move || {
            let store = st.api.registry.store().clone();
            let all = st.summary(app.clone(), now);
            let event_names: Vec<String> = all.stats.events.keys().cloned().collect();
            let event = event.as_deref();
            let summary = if event.is_some() || user.is_some() {
                let stats = store
                    .stats(app.num, &Periods::at(now, &app.tz), event, user)
                    .unwrap_or_default();
                AppSummary {
                    app: app.clone(),
                    stats,
                }
            } else {
                all
            };
            // Hourly rollups are not kept per user: with a user filter the chart is left
            // out rather than shown unfiltered.
            let hour = hour_of(now);
            let hourly = match user {
                Some(_) => None,
                None => Some(
                    store
                        .hourly(app.num, hour - 47, hour + 1, event)
                        .unwrap_or_default(),
                ),
            };
            let today = now.to_zoned(app.tz.clone()).date();
            let first_day = today
                .checked_sub(jiff::Span::new().days(89))
                .unwrap_or(today);
            let daily = store
                .daily(app.num, date_key(first_day), date_key(today), event, user)
                .unwrap_or_default();
            let top_users = store.top_users(app.num, event, 10).unwrap_or_default();
            (summary, event_names, hourly, today, daily, top_users)
        })
        .await
    };
    let Ok((summary, event_names, hourly, today, daily, top_users)) = read else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::layout(
                "Error",
                &viewer,
                Section::Applications,
                pages::message(
                    "Error",
                    "Reading this application's data failed; see the server log.",
                ),
            ),
        );
    };
    let monitor_counts = st.api.engine.view(|all| {
        let mut c = HashMap::new();
        for m in all
            .values()
            .filter(|m| m.def.application.as_deref() == Some(app.key.as_str()))
        {
            *c.entry(m.state.state).or_insert(0) += 1;
        }
        c
    });
    let detail = AppDetail {
        summary: &summary,
        event_names: &event_names,
        hourly: hourly.map(|h| view::hourly_chart(&h, now, &app.tz)),
        daily: view::daily_chart(&daily, today),
        top_users: &top_users,
        filters: &filters,
        monitor_counts: if monitor_counts.is_empty() {
            Vec::new()
        } else {
            count_states(&monitor_counts)
        },
    };
    let title = app
        .spec
        .display_name
        .clone()
        .unwrap_or_else(|| app.name.clone());
    in_layout(
        &viewer,
        &title,
        Section::Applications,
        pages::application_detail(&detail),
    )
}

async fn application_export(
    State(st): State<Dash>,
    headers: HeaderMap,
    uri: Uri,
    Path((namespace, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (_, app) = match viewer_and_app(&st, &headers, &uri, &namespace, &name) {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    match crate::http::api::events::export_filter(&app, &params) {
        Ok(filter) => {
            crate::http::api::events::csv_response(st.api.registry.store().clone(), &app, filter)
        }
        Err(e) => e.into_response(),
    }
}

/// How often an idle live stream re-checks its session.
const LIVE_RECHECK: Duration = Duration::from_secs(5);

struct LiveStream {
    rx: tokio::sync::broadcast::Receiver<crate::core::monitor::engine::Change>,
    closing: tokio::sync::watch::Receiver<bool>,
    principal: Principal,
    cookie: String,
    st: Dash,
}

/// Server-sent events: a `change` event whenever a monitor the viewer sees changes state,
/// so pages refresh within a second of it instead of polling.
async fn live(State(st): State<Dash>, headers: HeaderMap) -> Response {
    let Some((cookie, viewer)) =
        session::cookie_value(&headers).and_then(|c| Some((c.to_string(), st.viewer_of(c)?)))
    else {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    };
    let stream_state = LiveStream {
        rx: st.api.engine.subscribe(),
        closing: st.dash.closing.subscribe(),
        principal: viewer.principal,
        cookie,
        st,
    };
    let stream = futures::stream::unfold(stream_state, |mut ls| async move {
        loop {
            if *ls.closing.borrow_and_update() {
                return None;
            }
            let received = tokio::select! {
                r = ls.rx.recv() => Some(r),
                _ = ls.closing.changed() => return None,
                _ = tokio::time::sleep(LIVE_RECHECK) => None,
            };
            // The session is re-checked on every event and every few seconds: logout,
            // expiry or a revoked token end the stream too.
            if ls.st.viewer_of(&ls.cookie).map(|v| v.principal).as_ref() != Some(&ls.principal) {
                return None;
            }
            let event = match received {
                None => continue,
                Some(Ok(change)) => {
                    let visible = match &ls.principal {
                        Principal::Admin => true,
                        Principal::Application(_) => ls
                            .st
                            .api
                            .engine
                            .get(&change.key)
                            .is_some_and(|m| ls.principal.sees_monitor(&m.def)),
                    };
                    if !visible {
                        continue;
                    }
                    Event::default().event("change").data(format!(
                        "{} {}",
                        change.key,
                        change.to.as_str()
                    ))
                }
                Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    Event::default().event("change").data("*")
                }
                Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            };
            return Some((Ok::<_, Infallible>(event), ls));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn badge_svg(State(st): State<Dash>, Path(file): Path<String>) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache, max-age=0"),
    ];
    let key = file
        .strip_suffix(".svg")
        .filter(|k| k.len() == 24 && k.bytes().all(|b| b.is_ascii_hexdigit()));
    // The index may be stale (token rotated, monitor re-created): the key must still match.
    let found = key.and_then(|k| {
        st.dash
            .badges
            .lookup(&st.api.engine, k)
            .and_then(|mk| st.api.engine.get(&mk))
            .filter(|m| badge::badge_key(&m.def.token) == k)
    });
    match found {
        Some(m) => {
            let label = m.def.display_name.as_deref().unwrap_or(&m.def.name);
            (headers, badge::render(label, m.state.state)).into_response()
        }
        None => (StatusCode::NOT_FOUND, headers, badge::render_unknown()).into_response(),
    }
}

#[cfg(test)]
mod tests {
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
