//! The dashboard's HTML, rendered from view data with maud (every value escaped).
//!
//! Pages are complete documents that work without script; `app.js` only refreshes the
//! `#live` region in place. No inline script or style anywhere, so the Content-Security-
//! Policy can forbid both.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::chart::Chart;
use super::session::{Principal, Viewer};
use super::view::{
    self, MonitorPage, MonitorQuery, exact, relative, short_duration, state_class, state_symbol,
};
use crate::core::monitor::engine::{Monitor, PingKind, PingRecord, TransitionRecord};
use crate::core::monitor::state::State;
use crate::core::registry::AppInfo;
use crate::core::storage::{PeriodTallies, StatsReport, Tally};

/// Which top-level section a page belongs to (highlighted in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `/ui`: counts, what needs attention, applications at a glance.
    Overview,
    /// `/ui/monitors` and each monitor's page.
    Monitors,
    /// `/ui/applications` and each application's page.
    Applications,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · Hartslag" }
            link rel="stylesheet" href="/ui/static/app.css";
            link rel="icon" type="image/svg+xml" href="/ui/static/icon.svg";
            script src="/ui/static/app.js" defer {}
        }
    }
}

/// A whole page around `body`, with navigation and the logout form.
pub fn layout(title: &str, viewer: &Viewer, section: Section, body: Markup) -> Markup {
    let who = match &viewer.principal {
        Principal::Admin => "admin".to_string(),
        Principal::Application(key) => format!("application {key}"),
    };
    let nav = |s: Section, href: &str, label: &str| {
        html! {
            a href=(href) aria-current=[(s == section).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#live" { "Skip to content" }
                header.top {
                    a.brand href="/ui" { span aria-hidden="true" { "♥" } " Hartslag" }
                    nav aria-label="Sections" {
                        (nav(Section::Overview, "/ui", "Overview"))
                        (nav(Section::Monitors, "/ui/monitors", "Monitors"))
                        (nav(Section::Applications, "/ui/applications", "Applications"))
                    }
                    form.logout method="post" action="/ui/logout" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        span.muted { "Signed in as " (who) " " }
                        button type="submit" { "Log out" }
                    }
                }
                main #live tabindex="-1" data-live="1" {
                    (body)
                }
                footer.muted { span #live-status role="status" aria-live="polite" { "Live updates on" } }
            }
        }
    }
}

/// The login form; `error` explains a failed attempt.
pub fn login(next: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body.login {
                main.card.login-card {
                    h1 { span aria-hidden="true" { "♥ " } "Hartslag" }
                    p { "Log in with an Application token (shows that application and its monitors) or the admin token (shows everything)." }
                    @if let Some(e) = error {
                        p.error role="alert" { (e) }
                    }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A state as text with its symbol and colour class.
pub fn state_pill(state: State) -> Markup {
    html! {
        span class={ "pill " (state_class(state)) } {
            span aria-hidden="true" { (state_symbol(state)) " " }
            (state.as_str())
        }
    }
}

fn time_cell(at: Option<Timestamp>, now: Timestamp) -> Markup {
    html! {
        @match at {
            Some(t) => time datetime=(view::machine_time(t)) title=(exact(t)) { (relative(t, now)) },
            None => span.muted { "—" },
        }
    }
}

fn monitor_href(m: &Monitor) -> String {
    format!(
        "/ui/monitors/{}/{}",
        view::urlencode(m.def.namespace()),
        view::urlencode(m.def.name())
    )
}

fn scope(m: &Monitor) -> String {
    match m.def.application() {
        Some(app) => app.to_string(),
        None => m.def.namespace().to_string(),
    }
}

/// A monitor's interval, or its schedule and zone.
fn cadence(m: &Monitor) -> Markup {
    html! {
        @match &m.def.schedule {
            Some(s) => { code { (s.expression()) } @if s.zone() != "UTC" { " " span.muted { (s.zone()) } } },
            None => (short_duration(SignedDuration::from_secs(m.def.interval_secs as i64))),
        }
    }
}

fn monitor_table(rows: &[Monitor], now: Timestamp, caption: &str) -> Markup {
    html! {
        div.scroll {
            table.monitors {
                caption { (caption) }
                thead { tr {
                    th scope="col" { "Monitor" }
                    th scope="col" { "Namespace / application" }
                    th scope="col" { "State" }
                    th scope="col" { "Last ping" }
                    th scope="col" { "Next due" }
                    th scope="col" { "Interval or schedule / grace" }
                } }
                tbody {
                    @for m in rows {
                        tr class=(state_class(m.state.state)) {
                            th scope="row" {
                                a href=(monitor_href(m)) { bdi { (m.def.display_name().unwrap_or(m.def.name())) } }
                            }
                            td data-label="Scope" { (scope(m)) }
                            td data-label="State" { (state_pill(m.state.state)) " " span.muted { (relative(m.state.since, now)) } }
                            td data-label="Last ping" { (time_cell(m.state.last_ping_at, now)) }
                            td data-label="Next due" { (time_cell(m.state.next_expected_at(), now)) }
                            td data-label="Interval or schedule / grace" { (cadence(m)) " / " (short_duration(SignedDuration::from_secs(m.def.grace_secs as i64))) }
                        }
                    }
                }
            }
        }
    }
}

/// Monitors per state, each card a link to its monitors within `scope` (the application
/// the cards count, if any).
fn count_cards(counts: &[(State, usize)], scope: &MonitorQuery) -> Markup {
    html! {
        ul.cards.states aria-label="Monitors per state" {
            @for (s, n) in counts {
                li class={ "card " (state_class(*s)) } {
                    a href=(scope.with_state(Some(*s)).href(1)) {
                        span.big { (n) }
                        (state_pill(*s))
                    }
                }
            }
        }
    }
}

/// One application's headline numbers.
#[derive(Debug, Clone)]
pub struct AppSummary {
    /// The application.
    pub app: Arc<AppInfo>,
    /// Its stats; `None` when they were not read, because the application or the server
    /// was running as many heavy reads as it may ([`crate::http::reads`]).
    pub stats: Option<StatsReport>,
}

/// What a list page shows for an application whose stats were not read now.
const NOT_READ: &str = "Not read now: too many stats are being read at once. Reload in a moment.";

fn tally_text(t: &Tally) -> Markup {
    html! { (t.count) " " span.muted { "events, weight " (t.weight) } }
}

fn period_cards(p: &PeriodTallies) -> Markup {
    html! {
        ul.cards.periods {
            @for (label, t) in [("Today", &p.today), ("This week", &p.week), ("This month", &p.month), ("Total", &p.total)] {
                li.card {
                    span.label { (label) }
                    span.big { (t.count) }
                    span.muted { "weight " (t.weight) }
                }
            }
        }
    }
}

fn app_href(app: &AppInfo) -> String {
    format!(
        "/ui/applications/{}/{}",
        view::urlencode(&app.namespace),
        view::urlencode(&app.name)
    )
}

/// The overview: states, what needs attention, today's events.
pub fn overview(
    counts: &[(State, usize)],
    attention: &[Monitor],
    apps: &[AppSummary],
    now: Timestamp,
) -> Markup {
    html! {
        h1 { "Overview" }
        section aria-labelledby="h-states" {
            h2 #h-states { "Monitors" }
            (count_cards(counts, &MonitorQuery::default()))
        }
        section aria-labelledby="h-attention" {
            h2 #h-attention { "Needs attention" }
            @if attention.is_empty() {
                p.ok { span aria-hidden="true" { "✓ " } "No monitor is Down or Late." }
            } @else {
                (monitor_table(attention, now, "Monitors that are Down or Late, most urgent first"))
            }
        }
        section aria-labelledby="h-events" {
            h2 #h-events { "Events" }
            @if apps.is_empty() {
                p.muted { "No applications yet." }
            } @else {
                div.scroll { table {
                    caption { "Events per application, in each application's time zone" }
                    thead { tr { th scope="col" { "Application" } th scope="col" { "Today" } th scope="col" { "This week" } th scope="col" { "Total" } } }
                    tbody {
                        @for a in apps {
                            tr {
                                th scope="row" { a href=(app_href(&a.app)) { bdi { (a.app.spec.display_name.as_deref().unwrap_or(&a.app.name)) } } " " span.muted { (a.app.namespace) } }
                                @if let Some(s) = &a.stats {
                                    td { (s.overall.today.count) }
                                    td { (s.overall.week.count) }
                                    td { (s.overall.total.count) }
                                } @else {
                                    td.muted colspan="3" { (NOT_READ) }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// The monitors table with its filters and pages.
pub fn monitors(page: &MonitorPage, query: &MonitorQuery, now: Timestamp) -> Markup {
    let counts: Vec<(State, usize)> = page.counts.values().copied().collect();
    let first = (page.page - 1) * view::PAGE_SIZE + 1;
    let last = first + page.rows.len().saturating_sub(1);
    html! {
        h1 { "Monitors" }
        @if let Some(app) = &query.application {
            p.scope {
                "Application " bdi { (app) } " · "
                a href=(MonitorQuery { application: None, ..query.clone() }.href(1)) { "all applications" }
            }
        }
        (count_cards(&counts, &MonitorQuery { application: query.application.clone(), ..Default::default() }))
        form.filters method="get" action="/ui/monitors" role="search" {
            @if let Some(app) = &query.application {
                input type="hidden" name="application" value=(app);
            }
            label { "State "
                select name="state" {
                    option value="" { "All" }
                    @for s in State::ALL {
                        option value=(s.as_str()) selected[query.state == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Namespace "
                select name="namespace" {
                    option value="" { "All" }
                    @for ns in &page.namespaces {
                        option value=(ns) selected[query.namespace.as_deref() == Some(ns.as_str())] { (ns) }
                    }
                }
            }
            label { "Name "
                input type="search" name="q" value=[query.text.as_deref()] placeholder="contains…";
            }
            button type="submit" { "Filter" }
        }
        @if page.matching == 0 {
            p.muted { "No monitor matches." }
        } @else {
            p.muted { "Showing " (first) "–" (last) " of " (page.matching) " (" (page.visible) " in total)." }
            (monitor_table(&page.rows, now, "Monitors, Down and Late first"))
            @if page.pages > 1 {
                nav.pages aria-label="Pages" {
                    @if page.page > 1 { a rel="prev" href=(query.href(page.page - 1)) { "← Previous" } }
                    span { "Page " (page.page) " of " (page.pages) }
                    @if page.page < page.pages { a rel="next" href=(query.href(page.page + 1)) { "Next →" } }
                }
            }
        }
    }
}

fn kind_text(kind: PingKind) -> &'static str {
    match kind {
        PingKind::Success => "success",
        PingKind::Start => "start",
        PingKind::Fail => "fail",
    }
}

/// Everything about one monitor.
pub struct MonitorDetail<'a> {
    /// The monitor.
    pub monitor: &'a Monitor,
    /// Newest pings first.
    pub pings: &'a [PingRecord],
    /// Newest transitions first.
    pub transitions: &'a [TransitionRecord],
    /// Badge path (`/badge/<key>.svg`), relative so the preview loads under any origin.
    pub badge_path: String,
    /// External base URL, for the copyable Markdown snippet.
    pub base_url: String,
    /// Run-duration chart, when runs reported durations.
    pub durations: Option<Chart>,
}

/// One monitor: summary, badge, run durations, state timeline and ping history.
pub fn monitor_detail(d: &MonitorDetail<'_>, now: Timestamp) -> Markup {
    let m = d.monitor;
    html! {
        p.crumbs { a href="/ui/monitors" { "Monitors" } " / " (m.def.namespace()) }
        h1 { bdi { (m.def.display_name().unwrap_or(m.def.name())) } " " (state_pill(m.state.state)) }
        (monitor_facts(m, now))
        section aria-labelledby="h-badge" {
            h2 #h-badge { "Status badge" }
            p { img src=(d.badge_path) alt={ "Status badge: " (m.state.state.as_str()) }; }
            p.muted { "A read-only URL that shows only the state, for READMEs and wikis:" }
            pre.copy { code { "![" (m.def.name()) "](" (d.base_url) (d.badge_path) ")" } }
        }
        section aria-labelledby="h-durations" {
            h2 #h-durations { "Run durations" }
            @match &d.durations {
                Some(c) => { figure { (PreEscaped(c.to_svg(true))) figcaption.muted { (c.title) } } },
                None => p.muted { "No run durations yet: ping " code { "/start" } " before a run and " code { "/ping" } " after it." },
            }
        }
        (timeline(d.transitions, now))
        (ping_history(d.pings, now))
    }
}

/// Scheduled runs listed on a monitor's page.
const NEXT_RUNS: usize = 5;

fn monitor_facts(m: &Monitor, now: Timestamp) -> Markup {
    let st = &m.state;
    let secs = |s: u64| short_duration(SignedDuration::from_secs(s as i64));
    html! {
        dl.facts {
            dt { "Name" } dd { (m.def.name()) }
            dt { "Namespace / application" } dd { (scope(m)) }
            dt { "State since" } dd { (time_cell(Some(st.since), now)) }
            dt { "Last ping" } dd { (time_cell(st.last_ping_at, now)) }
            dt { "Next due" } dd { (time_cell(st.next_expected_at(), now)) }
            @match &m.def.schedule {
                Some(s) => {
                    dt { "Schedule / grace" } dd { code { (s.expression()) } " in " (s.zone()) " / " (secs(m.def.grace_secs)) }
                    dt { "Next runs" } dd {
                        ol.runs {
                            @for run in s.upcoming(now, NEXT_RUNS) {
                                li { time datetime=(view::machine_time(run)) title=(exact(run)) { (s.local_time(run)) } " " span.muted { (relative(run, now)) } }
                            }
                        }
                    }
                },
                None => { dt { "Interval / grace" } dd { (secs(m.def.interval_secs)) " / " (secs(m.def.grace_secs)) } },
            }
            @if let Some(cj) = &m.def.cron_job() {
                dt { "CronJob" } dd { (cj) @if m.def.require_ping() { " " span.muted { "(its Jobs must ping)" } } }
            }
            @if let Some(max) = m.def.max_duration_secs() {
                dt { "Longest run" } dd { (secs(max)) }
            }
            @if let Some(why) = m.why_down() {
                dt { "Why Down" } dd { (why) }
            }
            dt { "Pings received" } dd { (st.pings) }
            dt { "How to ping" } dd { code { (m.def.ping_hint()) } }
        }
    }
}

/// State changes, newest first, each with how long the state lasted.
fn timeline(transitions: &[TransitionRecord], now: Timestamp) -> Markup {
    html! {
        section aria-labelledby="h-timeline" {
            h2 #h-timeline { "State timeline" }
            @if transitions.is_empty() {
                p.muted { "No state changes recorded yet." }
            } @else {
                div.scroll { table.timeline {
                    caption { "State changes, newest first" }
                    thead { tr { th scope="col" { "When" } th scope="col" { "Change" } th scope="col" { "Lasted" } th scope="col" { "Why" } } }
                    tbody {
                        @for (i, t) in transitions.iter().enumerate() {
                            @let until = if i == 0 { now } else { transitions[i - 1].at };
                            tr {
                                td { (time_cell(Some(t.at), now)) }
                                td { (state_pill(t.from)) " → " (state_pill(t.to)) }
                                td { (short_duration(until.duration_since(t.at))) @if i == 0 { span.muted { " (so far)" } } }
                                td { (t.reason.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// The newest pings with what each carried.
fn ping_history(pings: &[PingRecord], now: Timestamp) -> Markup {
    html! {
        section aria-labelledby="h-pings" {
            h2 #h-pings { "Ping history" }
            @if pings.is_empty() {
                p.muted { "No pings yet." }
            } @else {
                div.scroll { table.pings {
                    caption { "The newest " (pings.len()) " pings" }
                    thead { tr {
                        th scope="col" { "Time" } th scope="col" { "Kind" } th scope="col" { "Source" }
                        th scope="col" { "Duration" } th scope="col" { "Exit code" } th scope="col" { "Body" }
                    } }
                    tbody {
                        @for p in pings {
                            tr class={ "ping-" (kind_text(p.kind)) } {
                                td { (time_cell(Some(p.at), now)) }
                                td { (kind_text(p.kind)) }
                                td { (p.source.as_deref().unwrap_or("")) @if let Some(ua) = &p.user_agent { br; span.muted.small { (ua) } } }
                                td { @if let Some(ms) = p.duration_ms { (short_duration(SignedDuration::from_millis(ms))) } }
                                td { @if let Some(c) = p.exit_code { (c) } }
                                td.body { @if let Some(b) = &p.body { (excerpt(b, 120)) } }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Application cards.
pub fn applications(apps: &[AppSummary]) -> Markup {
    html! {
        h1 { "Applications" }
        @if apps.is_empty() {
            p.muted { "No applications yet." }
        }
        ul.app-list {
            @for a in apps {
                li.card {
                    h2 { a href=(app_href(&a.app)) { bdi { (a.app.spec.display_name.as_deref().unwrap_or(&a.app.name)) } } }
                    p.muted { (a.app.namespace) " · " (a.app.spec.time_zone_name()) }
                    @if let Some(s) = &a.stats {
                        (period_cards(&s.overall))
                    } @else {
                        p.muted { (NOT_READ) }
                    }
                }
            }
        }
    }
}

/// Filters of the application page (the CSV link carries the same ones).
#[derive(Debug, Clone, Default)]
pub struct AppFilters {
    /// Event name.
    pub event: Option<String>,
    /// User id.
    pub user_id: Option<i64>,
    /// Export from (date or time, as typed).
    pub from: Option<String>,
    /// Export to (date or time, as typed).
    pub to: Option<String>,
}

impl AppFilters {
    /// The query string for these filters (empty when none).
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.event {
            parts.push(format!("event={}", view::urlencode(e)));
        }
        if let Some(u) = self.user_id {
            parts.push(format!("user_id={u}"));
        }
        if let Some(f) = &self.from {
            parts.push(format!("from={}", view::urlencode(f)));
        }
        if let Some(t) = &self.to {
            parts.push(format!("to={}", view::urlencode(t)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// Everything on one application's page.
pub struct AppDetail<'a> {
    /// The application.
    pub app: &'a AppInfo,
    /// Its stats (filtered).
    pub stats: &'a StatsReport,
    /// Every event name it has, for the filter.
    pub event_names: &'a [String],
    /// Hourly chart; `None` with a user filter (hourly rollups are not kept per user).
    pub hourly: Option<Chart>,
    /// Daily chart.
    pub daily: Chart,
    /// Top users by count.
    pub top_users: &'a [(i64, Tally)],
    /// Current filters.
    pub filters: &'a AppFilters,
    /// Its monitors per state.
    pub monitor_counts: Vec<(State, usize)>,
}

/// One application: period cards, charts, per-event table, top users, export.
pub fn application_detail(d: &AppDetail<'_>) -> Markup {
    let app = d.app;
    html! {
        p.crumbs { a href="/ui/applications" { "Applications" } " / " (app.namespace) }
        h1 { bdi { (app.spec.display_name.as_deref().unwrap_or(&app.name)) } }
        p.muted { "Periods in " (app.spec.time_zone_name()) "." }
        (app_filters(d))
        (period_cards(&d.stats.overall))
        section aria-labelledby="h-hourly" {
            h2 #h-hourly { "Per hour, last 48 hours" }
            @match &d.hourly {
                Some(c) => (chart_figure(c)),
                None => p.muted { "Not kept per user: clear the user filter to see events per hour." },
            }
        }
        section aria-labelledby="h-daily" {
            h2 #h-daily { "Per day, last 90 days" }
            (chart_figure(&d.daily))
        }
        (per_event(d.stats))
        (top_users(d.top_users))
        @if !d.monitor_counts.is_empty() {
            section aria-labelledby="h-app-monitors" {
                h2 #h-app-monitors { "Its monitors" }
                (count_cards(&d.monitor_counts, &MonitorQuery { application: Some(app.key.clone()), ..Default::default() }))
            }
        }
    }
}

/// A `from` or `to` field: a date picker for a date, and a text field for an RFC 3339 time
/// (the export takes both), which a date picker would show empty and the next submit drop.
fn bound_field(name: &str, value: Option<&str>) -> Markup {
    let is_date = value.is_none_or(|v| v.parse::<jiff::civil::Date>().is_ok());
    html! {
        @if is_date {
            input type="date" name=(name) value=[value];
        } @else {
            input type="text" name=(name) value=[value] size="25" title="A date (YYYY-MM-DD) or an RFC 3339 time";
        }
    }
}

/// The filter form, the CSV link that keeps its filters, and what the cards are filtered by.
fn app_filters(d: &AppDetail<'_>) -> Markup {
    let app = d.app;
    let f = d.filters;
    let export = format!("{}/export.csv{}", app_href(app), f.query());
    html! {
        form.filters method="get" action=(app_href(app)) role="search" {
            label { "Event "
                select name="event" {
                    option value="" { "All events" }
                    @for n in d.event_names {
                        option value=(n) selected[f.event.as_deref() == Some(n.as_str())] { (n) }
                    }
                }
            }
            label { "User id " input type="text" inputmode="numeric" name="user_id" value=[f.user_id] size="8"; }
            label { "From " (bound_field("from", f.from.as_deref())) }
            label { "To " (bound_field("to", f.to.as_deref())) }
            button type="submit" { "Apply" }
            a.button #export href=(export) download { "Download CSV" }
        }
        @if f.event.is_some() || f.user_id.is_some() {
            p.muted { "Cards filtered by "
                @if let Some(e) = &f.event { "event “" (e) "” " }
                @if let Some(u) = f.user_id { "user " (u) }
                "; the dates filter the CSV." }
        }
    }
}

fn per_event(stats: &StatsReport) -> Markup {
    html! {
        section aria-labelledby="h-names" {
            h2 #h-names { "Per event" }
            div.scroll { table {
                caption { "Count and weight per event name" }
                thead { tr { th scope="col" { "Event" } th scope="col" { "Today" } th scope="col" { "This week" } th scope="col" { "This month" } th scope="col" { "Total" } } }
                tbody {
                    @for (name, p) in &stats.events {
                        tr {
                            th scope="row" { (name) }
                            td { (tally_text(&p.today)) }
                            td { (tally_text(&p.week)) }
                            td { (tally_text(&p.month)) }
                            td { (tally_text(&p.total)) }
                        }
                    }
                }
            } }
        }
    }
}

fn top_users(users: &[(i64, Tally)]) -> Markup {
    html! {
        section aria-labelledby="h-users" {
            h2 #h-users { "Top users" }
            @if users.is_empty() {
                p.muted { "No events with a user id yet." }
            } @else {
                table {
                    caption { "Users with the most events of all time" }
                    thead { tr { th scope="col" { "User id" } th scope="col" { "Events" } th scope="col" { "Weight" } } }
                    tbody {
                        @for (u, t) in users {
                            tr { th scope="row" { (u) } td { (t.count) } td { (t.weight) } }
                        }
                    }
                }
            }
        }
    }
}

fn chart_figure(c: &Chart) -> Markup {
    html! {
        @if c.series.is_empty() {
            p.muted { "No events in this period." }
        } @else {
            figure {
                (PreEscaped(c.to_svg(false)))
                figcaption { (PreEscaped(c.legend())) }
            }
        }
    }
}

/// A plain error page (not found, bad filter) inside the layout.
pub fn message(title: &str, text: &str) -> Markup {
    html! {
        h1 { (title) }
        p { (text) }
        p { a href="/ui" { "Back to the overview" } }
    }
}
