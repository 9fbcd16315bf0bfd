//! The dashboard's pages: each reads the engine snapshot and the store for one viewer and
//! hands plain data to [`view`] and [`pages`]. Rollup scans run off the async workers, so a
//! busy page never stalls pings. Every read of the rollups (stats, charts, top users) and
//! the export is a heavy read under its Application's and the server's bounds
//! ([`crate::http::reads`]), as the event API's are: the dashboard is no way around them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;

use super::auth::AppPage;
use super::pages::{self, AppDetail, AppFilters, AppSummary, MonitorDetail, Section};
use super::reply::{in_layout, message, not_found};
use super::session::Viewer;
use super::{badge, chart, view};
use crate::core::calendar::{Periods, date_key};
use crate::core::monitor::engine::{Monitor, PingRecord};
use crate::core::monitor::state::State as MonitorStateKind;
use crate::core::registry::{AppInfo, object_key};
use crate::core::storage::{Bucket, ExportFilter, StatsReport, Tally, hour_of};
use crate::http::export::{csv_response, export_filter};
use crate::http::path::{Segment, Segments};
use crate::http::query::text_param;
use crate::http::{ApiError, HttpState};

/// Rows of ping history on a monitor page.
const PING_ROWS: usize = 100;
/// Rows of the state timeline on a monitor page.
const TRANSITION_ROWS: usize = 50;
/// Monitors listed under "Needs attention".
const ATTENTION_ROWS: usize = 50;
/// Days in an application's daily chart.
const CHART_DAYS: i64 = 90;
/// Hours in an application's hourly chart.
const CHART_HOURS: i64 = 48;

fn now(st: &HttpState) -> Timestamp {
    st.core.engine.clock().now()
}

/// The stats of `app` for today, this week, this month and in total; the caller holds a
/// permit for the read ([`HttpState::reads`]).
async fn read_stats(st: &HttpState, app: &AppInfo, now: Timestamp) -> StatsReport {
    st.core
        .events
        .stats(app.num, Periods::at(now, &app.tz), None, None)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(application = %app.key, error = %e, "stats for the dashboard failed");
            Default::default()
        })
}

/// An application with its stats, when its and the server's bounds on heavy reads let
/// them be read now; without them otherwise, which the page says.
async fn summary(st: &HttpState, app: Arc<AppInfo>, now: Timestamp) -> AppSummary {
    let stats = match st.reads.permit(&app) {
        Ok(_permit) => Some(read_stats(st, &app, now).await),
        Err(_) => None,
    };
    AppSummary { app, stats }
}

/// Summaries of the viewer's applications, one after the other: one heavy read at a time.
async fn summaries(st: &HttpState, viewer: &Viewer, now: Timestamp) -> Vec<AppSummary> {
    let apps: Vec<Arc<AppInfo>> = st
        .core
        .registry
        .applications()
        .into_iter()
        .filter(|a| viewer.principal.sees_application(&a.key))
        .collect();
    let mut out = Vec::with_capacity(apps.len());
    for app in apps {
        out.push(summary(st, app, now).await);
    }
    out
}

/// Monitors per state, most urgent first, every state listed.
fn count_states(counts: &HashMap<MonitorStateKind, usize>) -> Vec<(MonitorStateKind, usize)> {
    let mut v: Vec<_> = MonitorStateKind::ALL
        .into_iter()
        .map(|s| (s, counts.get(&s).copied().unwrap_or(0)))
        .collect();
    v.sort_by_key(|(s, _)| view::urgency(*s));
    v
}

pub async fn overview(State(st): State<HttpState>, viewer: Viewer) -> Response {
    let now = now(&st);
    let (counts, attention) = st.core.engine.view(|all| {
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
    let apps = summaries(&st, &viewer, now).await;
    let body = pages::overview(&count_states(&counts), &attention, &apps, now);
    in_layout(&viewer, "Overview", Section::Overview, body)
}

pub async fn monitors(
    State(st): State<HttpState>,
    viewer: Viewer,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = view::MonitorQuery::from_params(&params);
    let page = st
        .core
        .engine
        .view(|all| view::monitor_page(all.values(), &viewer.principal, &query, view::PAGE_SIZE));
    let body = pages::monitors(&page, &query, now(&st));
    in_layout(&viewer, "Monitors", Section::Monitors, body)
}

pub async fn monitor_detail(
    State(st): State<HttpState>,
    viewer: Viewer,
    Segments(namespace, name): Segments,
) -> Response {
    let Some(m) = st
        .core
        .engine
        .get(&object_key(&namespace, &name))
        .filter(|m| viewer.principal.sees_monitor(&m.def))
    else {
        return not_found(&viewer, "monitor");
    };
    let engine = &st.core.engine;
    let pings = engine.pings(m.num, PING_ROWS).await.unwrap_or_else(|e| {
        tracing::warn!(monitor = %m.def.key, error = %e, "reading ping history failed");
        Vec::new()
    });
    let transitions = engine
        .transitions(m.num, TRANSITION_ROWS)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(monitor = %m.def.key, error = %e, "reading the state timeline failed");
            Vec::new()
        });
    let detail = MonitorDetail {
        monitor: &m,
        pings: &pings,
        transitions: &transitions,
        badge_path: format!(
            "/badge/{}.svg",
            st.dashboard.badges.note(&m.def.token, &m.def.key)
        ),
        base_url: st.dashboard.base_url.clone(),
        durations: durations_chart(&pings),
    };
    let title = m.def.display_name().unwrap_or(m.def.name());
    in_layout(
        &viewer,
        title,
        Section::Monitors,
        pages::monitor_detail(&detail, now(&st)),
    )
}

/// How long the runs that reported a duration took, oldest first; `None` without any.
fn durations_chart(pings: &[PingRecord]) -> Option<chart::Chart> {
    let runs: Vec<_> = pings
        .iter()
        .rev()
        .filter_map(|p| p.duration_ms.map(|d| (p.at, d)))
        .collect();
    (!runs.is_empty()).then(|| chart::Chart {
        title: format!("Duration of the last {} runs (times in UTC)", runs.len()),
        x_labels: runs
            .iter()
            .map(|(at, _)| at.strftime("%m-%d %H:%M").to_string())
            .collect(),
        series: vec![chart::Series {
            name: "run duration".into(),
            values: runs.iter().map(|(_, d)| *d as f64).collect(),
        }],
        unit: "ms".into(),
    })
}

/// A path under `/ui` that is no page: the dashboard's 404, after the login like any page.
pub async fn unknown_page(viewer: Viewer) -> Response {
    not_found(&viewer, "page")
}

pub async fn applications(State(st): State<HttpState>, viewer: Viewer) -> Response {
    let apps = summaries(&st, &viewer, now(&st)).await;
    in_layout(
        &viewer,
        "Applications",
        Section::Applications,
        pages::applications(&apps),
    )
}

/// What an application's page shows, read from the rollups in one go.
struct AppData {
    stats: StatsReport,
    event_names: Vec<String>,
    hourly: Option<Vec<Bucket>>,
    today: jiff::civil::Date,
    daily: Vec<Bucket>,
    top_users: Vec<(i64, Tally)>,
}

pub async fn application_detail(
    State(st): State<HttpState>,
    AppPage { viewer, app }: AppPage,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filter = match export_filter(&app, &params) {
        Ok(f) => f,
        Err(e) => {
            return message(
                e.status(),
                &viewer,
                Section::Applications,
                "Bad filter",
                &e.message(),
            );
        }
    };
    let filters = AppFilters {
        event: filter.event.clone(),
        user_id: filter.user_id,
        from: text_param(&params, "from"),
        to: text_param(&params, "to"),
    };
    let now = now(&st);
    // One permit for the page's reads, which run one after the other.
    let data = match st.reads.permit(&app) {
        Ok(_permit) => read_app_data(&st, &app, &filter, now).await,
        Err(refused) => return busy(&viewer, &refused),
    };
    let detail = AppDetail {
        app: &app,
        stats: &data.stats,
        event_names: &data.event_names,
        hourly: data.hourly.map(|h| view::hourly_chart(&h, now, &app.tz)),
        daily: view::daily_chart(&data.daily, data.today, &app.tz),
        top_users: &data.top_users,
        filters: &filters,
        monitor_counts: monitor_counts(&st, &app),
    };
    let title = app.spec.display_name.as_deref().unwrap_or(&app.name);
    in_layout(
        &viewer,
        title,
        Section::Applications,
        pages::application_detail(&detail),
    )
}

/// The page refused because a bound on heavy reads was reached: the refusal's status
/// (429 for the Application's own limit, 503 for the server's), its `Retry-After` and its
/// message, in the layout.
fn busy(viewer: &Viewer, refused: &ApiError) -> Response {
    let mut res = message(
        refused.status(),
        viewer,
        Section::Applications,
        "Too many reads at once",
        &refused.message(),
    );
    if let Some(secs) = refused.retry_after_secs() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
    }
    res
}

/// The application's monitors per state; empty when it has none.
fn monitor_counts(st: &HttpState, app: &AppInfo) -> Vec<(MonitorStateKind, usize)> {
    let counts = st.core.engine.view(|all| {
        let mut c = HashMap::new();
        for m in all
            .values()
            .filter(|m| m.def.application() == Some(app.key.as_str()))
        {
            *c.entry(m.state.state).or_insert(0) += 1;
        }
        c
    });
    if counts.is_empty() {
        Vec::new()
    } else {
        count_states(&counts)
    }
}

/// Stats (filtered by event and user when asked), charts and top users of `app`. Hourly
/// rollups are not kept per user: with a user filter the hourly chart is left out rather
/// than shown unfiltered.
async fn read_app_data(
    st: &HttpState,
    app: &AppInfo,
    filter: &ExportFilter,
    now: Timestamp,
) -> AppData {
    let store = &st.core.events;
    let all = read_stats(st, app, now).await;
    let event_names: Vec<String> = all.events.keys().cloned().collect();
    let (event, user) = (filter.event.clone(), filter.user_id);
    let stats = if event.is_some() || user.is_some() {
        let periods = Periods::at(now, &app.tz);
        store
            .stats(app.num, periods, event.clone(), user)
            .await
            .unwrap_or_default()
    } else {
        all
    };
    let hour = hour_of(now);
    let hourly = match user {
        None => Some(
            store
                .hourly(app.num, hour - (CHART_HOURS - 1), hour + 1, event.clone())
                .await
                .unwrap_or_default(),
        ),
        Some(_) => None,
    };
    let today = now.to_zoned(app.tz.clone()).date();
    let first_day = today
        .checked_sub(jiff::Span::new().days(CHART_DAYS - 1))
        .unwrap_or(today);
    let daily = store
        .daily(
            app.num,
            date_key(first_day),
            date_key(today),
            event.clone(),
            user,
        )
        .await
        .unwrap_or_default();
    let top_users = store
        .top_users(app.num, event, 10)
        .await
        .unwrap_or_default();
    AppData {
        stats,
        event_names,
        hourly,
        today,
        daily,
        top_users,
    }
}

pub async fn application_export(
    State(st): State<HttpState>,
    AppPage { app, .. }: AppPage,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let started = export_filter(&app, &params)
        .and_then(|filter| Ok((filter, st.reads.permit(&app)?)))
        .map(|(filter, permit)| csv_response(st.core.events.as_ref(), &app, filter, permit));
    started.unwrap_or_else(IntoResponse::into_response)
}

pub async fn badge_svg(State(st): State<HttpState>, Segment(file): Segment) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache, max-age=0"),
    ];
    let key = file
        .strip_suffix(".svg")
        .filter(|k| k.len() == 24 && k.bytes().all(|b| b.is_ascii_hexdigit()));
    let engine = &st.core.engine;
    // The index may be stale (token rotated, monitor re-created): the key must still match.
    let found = key.and_then(|k| {
        st.dashboard
            .badges
            .lookup(engine, k)
            .and_then(|mk| engine.get(&mk))
            .filter(|m| badge::badge_key(&m.def.token) == k)
    });
    match found {
        Some(m) => {
            let label = m.def.display_name().unwrap_or(m.def.name());
            (headers, badge::render(label, m.state.state)).into_response()
        }
        None => (StatusCode::NOT_FOUND, headers, badge::render_unknown()).into_response(),
    }
}
