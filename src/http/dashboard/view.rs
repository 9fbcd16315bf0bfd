//! What the pages show, decided without HTML or I/O: filtering, ordering and paging of
//! monitors, relative times, and chart series from rollup buckets. Pure functions of the
//! data and `now`, so they are tested directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::chart::{Chart, Series};
use super::session::Principal;
use crate::core::monitor::engine::Monitor;
use crate::core::monitor::state::State;
use crate::core::storage::Bucket;

/// Rows per page of the monitors table.
pub const PAGE_SIZE: usize = 100;

/// Series drawn per chart; the remaining event names are summed as "other".
pub const MAX_SERIES: usize = 5;

/// How a state is shown: text, a symbol and a CSS class (never colour alone).
pub fn state_symbol(state: State) -> &'static str {
    match state {
        State::Up => "✓",
        State::Started => "▶",
        State::Late => "!",
        State::Down => "✕",
        State::New => "○",
        State::Paused => "Ⅱ",
    }
}

/// CSS class of a state.
pub fn state_class(state: State) -> &'static str {
    match state {
        State::Up => "st-up",
        State::Started => "st-started",
        State::Late => "st-late",
        State::Down => "st-down",
        State::New => "st-new",
        State::Paused => "st-paused",
    }
}

/// Order in which states need attention: Down first, then Late, then the rest.
pub fn urgency(state: State) -> u8 {
    match state {
        State::Down => 0,
        State::Late => 1,
        State::Started => 2,
        State::Up => 3,
        State::New => 4,
        State::Paused => 5,
    }
}

/// Parses a state name from a filter (case-insensitive).
pub fn parse_state(text: &str) -> Option<State> {
    State::ALL
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
}

/// "3m ago" / "in 2h" for `at` relative to `now`.
pub fn relative(at: Timestamp, now: Timestamp) -> String {
    let d = now.duration_since(at);
    let (secs, past) = if d.is_negative() {
        (-d.as_secs(), false)
    } else {
        (d.as_secs(), true)
    };
    let amount = if secs < 5 {
        return if past { "just now" } else { "now" }.to_string();
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 86_400 {
        let (h, m) = (secs / 3600, (secs % 3600) / 60);
        if m == 0 || h >= 10 {
            format!("{h}h")
        } else {
            format!("{h}h {m}m")
        }
    } else {
        format!("{}d", secs / 86_400)
    };
    if past {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// A compact duration such as "1h 30m" or "90s" for intervals, grace and run times.
pub fn short_duration(d: SignedDuration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        return if ms % 1000 == 0 || secs >= 10 {
            format!("{secs}s")
        } else {
            format!("{:.1}s", ms as f64 / 1000.0)
        };
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..(first + 2).min(parts.len())]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `<time datetime>` value: RFC 3339 in UTC to the millisecond, since HTML allows at
/// most three fraction digits there.
pub fn machine_time(at: Timestamp) -> String {
    format!("{:.3}", at)
}

/// Exact time (UTC) for `title` attributes.
pub fn exact(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The filters of the monitors table, from its query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorQuery {
    /// Only this state.
    pub state: Option<State>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only the monitors of this Application (`namespace/name`): an application's page
    /// links here, so its state cards count and list its own monitors.
    pub application: Option<String>,
    /// Name contains this text (case-insensitive), as typed, so the field shows it back.
    pub text: Option<String>,
    /// 1-based page.
    pub page: usize,
}

impl MonitorQuery {
    /// Reads `state`, `namespace`, `application`, `q` and `page`; unknown values mean
    /// "no filter".
    pub fn from_params(params: &HashMap<String, String>) -> Self {
        let nonempty = |k: &str| {
            params
                .get(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Self {
            state: nonempty("state").and_then(|s| parse_state(&s)),
            namespace: nonempty("namespace"),
            application: nonempty("application"),
            text: nonempty("q"),
            page: nonempty("page")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 1)
                .unwrap_or(1),
        }
    }

    /// Whether `m` is in the query's application, the scope the state cards count.
    fn in_scope(&self, m: &Monitor) -> bool {
        self.application
            .as_deref()
            .is_none_or(|a| m.def.application() == Some(a))
    }

    /// Whether `m` passes every filter; `lowered` is [`Self::text`] in lower case.
    fn matches(&self, m: &Monitor, lowered: Option<&str>) -> bool {
        self.state.is_none_or(|s| m.state.state == s)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| m.def.namespace() == ns)
            && lowered.is_none_or(|t| {
                m.def.name().to_lowercase().contains(t)
                    || m.def
                        .display_name()
                        .is_some_and(|d| d.to_lowercase().contains(t))
            })
    }

    /// The same filters in another state (`None`: every state), from the first page: the
    /// state cards' links.
    pub fn with_state(&self, state: Option<State>) -> Self {
        Self {
            state,
            page: 1,
            ..self.clone()
        }
    }

    /// The query string for page `page` with the same filters.
    pub fn href(&self, page: usize) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.state {
            parts.push(format!("state={}", s.as_str()));
        }
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={}", urlencode(ns)));
        }
        if let Some(a) = &self.application {
            parts.push(format!("application={}", urlencode(a)));
        }
        if let Some(t) = &self.text {
            parts.push(format!("q={}", urlencode(t)));
        }
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        if parts.is_empty() {
            "/ui/monitors".into()
        } else {
            format!("/ui/monitors?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes a query value.
pub fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One page of the monitors table and what the filters need.
#[derive(Debug, Clone, Default)]
pub struct MonitorPage {
    /// The rows of this page, most urgent first.
    pub rows: Vec<Monitor>,
    /// Monitors matching the filters.
    pub matching: usize,
    /// Monitors visible to the viewer (in the query's application, when it names one).
    pub visible: usize,
    /// Visible monitors per state (in the query's application, when it names one).
    pub counts: BTreeMap<u8, (State, usize)>,
    /// Namespaces of visible monitors, for the filter.
    pub namespaces: BTreeSet<String>,
    /// The (clamped) page shown.
    pub page: usize,
    /// Number of pages.
    pub pages: usize,
}

/// Filters, orders (urgency, then namespace and name) and pages the monitors a viewer sees.
/// Only the page's rows are cloned, so a large set costs a scan, not a copy.
pub fn monitor_page<'a>(
    all: impl Iterator<Item = &'a Monitor>,
    viewer: &Principal,
    query: &MonitorQuery,
    page_size: usize,
) -> MonitorPage {
    let mut out = MonitorPage::default();
    let mut matching: Vec<&Monitor> = Vec::new();
    let lowered = query.text.as_deref().map(str::to_lowercase);
    for m in all.filter(|m| viewer.sees_monitor(&m.def) && query.in_scope(m)) {
        out.visible += 1;
        out.counts
            .entry(urgency(m.state.state))
            .or_insert((m.state.state, 0))
            .1 += 1;
        if !out.namespaces.contains(m.def.namespace()) {
            out.namespaces.insert(m.def.namespace().to_string());
        }
        if query.matches(m, lowered.as_deref()) {
            matching.push(m);
        }
    }
    out.matching = matching.len();
    out.pages = matching.len().div_ceil(page_size).max(1);
    out.page = query.page.clamp(1, out.pages);
    fn key<'m>(m: &&'m Monitor) -> (u8, &'m str, &'m str) {
        (urgency(m.state.state), m.def.namespace(), m.def.name())
    }
    let start = (out.page - 1) * page_size;
    let end = (start + page_size).min(matching.len());
    if start < matching.len() {
        // Partial selection: only the page's slice gets fully sorted.
        if end < matching.len() {
            matching.select_nth_unstable_by(end, |a, b| key(a).cmp(&key(b)));
        }
        let head = &mut matching[..end];
        if start > 0 {
            head.select_nth_unstable_by(start, |a, b| key(a).cmp(&key(b)));
        }
        let page = &mut head[start..];
        page.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
        out.rows = page.iter().map(|m| (*m).clone()).collect();
    }
    out
}

/// Series per event name over `slots` (x positions), keeping the busiest
/// [`MAX_SERIES`] names and summing the rest as "other".
pub fn series_by_event(
    buckets: &[Bucket],
    slot_of: impl Fn(i64) -> Option<usize>,
    slots: usize,
) -> Vec<Series> {
    let mut per_event: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for b in buckets {
        let Some(i) = slot_of(b.at).filter(|i| *i < slots) else {
            continue;
        };
        per_event
            .entry(b.event.as_str())
            .or_insert_with(|| vec![0.0; slots])[i] += b.tally.count as f64;
    }
    let mut ranked: Vec<(&str, Vec<f64>)> = per_event.into_iter().collect();
    ranked.sort_by(|a, b| {
        let (sa, sb): (f64, f64) = (a.1.iter().sum(), b.1.iter().sum());
        sb.total_cmp(&sa).then(a.0.cmp(b.0))
    });
    let mut out: Vec<Series> = Vec::new();
    let mut other: Option<Vec<f64>> = None;
    for (i, (name, values)) in ranked.into_iter().enumerate() {
        if i < MAX_SERIES {
            out.push(Series {
                name: name.to_string(),
                values,
            });
        } else {
            let acc = other.get_or_insert_with(|| vec![0.0; slots]);
            for (a, v) in acc.iter_mut().zip(values) {
                *a += v;
            }
        }
    }
    if let Some(values) = other {
        out.push(Series {
            name: "other".into(),
            values,
        });
    }
    out
}

/// Events per hour over the 48 hours ending with the current one, labelled in `tz`.
pub fn hourly_chart(buckets: &[Bucket], now: Timestamp, tz: &TimeZone) -> Chart {
    let last = crate::core::storage::hour_of(now);
    let first = last - 47;
    let labels = (first..=last)
        .map(|h| {
            Timestamp::from_second(h * 3600)
                .map(|t| t.to_zoned(tz.clone()).strftime("%a %H:%M").to_string())
                .unwrap_or_default()
        })
        .collect();
    Chart {
        title: format!("Events per hour, last 48 hours ({})", zone_name(tz)),
        x_labels: labels,
        series: series_by_event(buckets, |h| usize::try_from(h - first).ok(), 48),
        unit: "events".into(),
    }
}

/// The name a chart gives its time zone (`UTC` for a zone without an IANA name).
fn zone_name(tz: &TimeZone) -> &str {
    tz.iana_name().unwrap_or("UTC")
}

/// Events per local day over the 90 days ending `today` in `tz`.
pub fn daily_chart(buckets: &[Bucket], today: jiff::civil::Date, tz: &TimeZone) -> Chart {
    let days: Vec<jiff::civil::Date> = (0..90)
        .rev()
        .filter_map(|back| today.checked_sub(jiff::Span::new().days(back)).ok())
        .collect();
    let index: HashMap<i64, usize> = days
        .iter()
        .enumerate()
        .map(|(i, d)| (i64::from(crate::core::calendar::date_key(*d)), i))
        .collect();
    Chart {
        title: format!("Events per day, last 90 days ({})", zone_name(tz)),
        x_labels: days
            .iter()
            .map(|d| d.strftime("%b %d").to_string())
            .collect(),
        series: series_by_event(buckets, |k| index.get(&k).copied(), days.len()),
        unit: "events".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::{DefRecord, Origin};
    use crate::core::monitor::state::MonitorState;
    use crate::core::storage::Tally;

    fn monitor(ns: &str, name: &str, app: Option<&str>, state: State) -> Monitor {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut st = MonitorState::new(t0);
        st.state = state;
        Monitor {
            num: 1,
            def: DefRecord {
                application: app.map(String::from),
                origin: Origin::Manifest,
                ..DefRecord::sample(&format!("{ns}/{name}"), 60, t0)
            }
            .into(),
            state: st,
            last_run_ms: None,
        }
    }

    #[test]
    fn relative_times() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        assert_eq!(relative(at(0), now), "just now");
        assert_eq!(relative(at(-42), now), "42s ago");
        assert_eq!(relative(at(-3 * 60), now), "3m ago");
        assert_eq!(relative(at(90 * 60), now), "in 1h 30m");
        assert_eq!(relative(at(-3 * 86_400), now), "3d ago");
    }

    #[test]
    fn machine_times_have_at_most_three_fraction_digits() {
        let at = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(machine_time(at), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            machine_time(Timestamp::from_second(0).unwrap()),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(short_duration(SignedDuration::from_millis(250)), "250ms");
        assert_eq!(short_duration(SignedDuration::from_millis(1500)), "1.5s");
        assert_eq!(short_duration(SignedDuration::from_secs(90)), "1m 30s");
        assert_eq!(short_duration(SignedDuration::from_secs(5400)), "1h 30m");
        assert_eq!(short_duration(SignedDuration::from_secs(86_400 * 2)), "2d");
    }

    #[test]
    fn pages_put_down_first_and_respect_the_viewer() {
        let all = [
            monitor("a", "up1", Some("a/shop"), State::Up),
            monitor("a", "down1", Some("a/shop"), State::Down),
            monitor("b", "late1", None, State::Late),
            monitor("a", "late2", Some("a/shop"), State::Late),
        ];
        let q = MonitorQuery::default();
        let admin = monitor_page(all.iter(), &Principal::Admin, &q, 100);
        let names: Vec<_> = admin.rows.iter().map(|m| m.def.name()).collect();
        assert_eq!(names, ["down1", "late2", "late1", "up1"]);
        let shop = monitor_page(
            all.iter(),
            &Principal::Application("a/shop".into()),
            &q,
            100,
        );
        assert_eq!(shop.visible, 3);
        assert!(shop.rows.iter().all(|m| m.def.name() != "late1"));
        let only_late = MonitorQuery {
            state: Some(State::Late),
            ..q.clone()
        };
        assert_eq!(
            monitor_page(all.iter(), &Principal::Admin, &only_late, 100).matching,
            2
        );
    }

    #[test]
    fn an_application_scopes_the_rows_the_counts_and_the_card_links() {
        let all = [
            monitor("a", "up1", Some("a/shop"), State::Up),
            monitor("a", "down1", Some("a/shop"), State::Down),
            monitor("b", "late1", Some("b/pay"), State::Late),
            monitor("a", "late2", None, State::Late),
        ];
        let mut p = HashMap::new();
        p.insert("application".to_string(), "a/shop".to_string());
        let q = MonitorQuery::from_params(&p);
        let page = monitor_page(all.iter(), &Principal::Admin, &q, 100);
        let names: Vec<_> = page.rows.iter().map(|m| m.def.name()).collect();
        assert_eq!(names, ["down1", "up1"]);
        assert_eq!(page.visible, 2);
        let counted: Vec<_> = page.counts.values().copied().collect();
        assert_eq!(counted, [(State::Down, 1), (State::Up, 1)]);
        assert_eq!(
            q.with_state(Some(State::Down)).href(1),
            "/ui/monitors?state=Down&application=a%2Fshop"
        );
    }

    #[test]
    fn the_name_filter_matches_any_case_and_keeps_what_was_typed() {
        let t0 = Timestamp::UNIX_EPOCH;
        let m = Monitor {
            num: 1,
            def: DefRecord {
                display_name: Some("Nightly Backup".into()),
                ..DefRecord::sample("a/nightly", 60, t0)
            }
            .into(),
            state: MonitorState::new(t0),
            last_run_ms: None,
        };
        let mut p = HashMap::new();
        p.insert("q".to_string(), "BackUp".to_string());
        let q = MonitorQuery::from_params(&p);
        assert_eq!(q.text.as_deref(), Some("BackUp"));
        assert_eq!(q.href(1), "/ui/monitors?q=BackUp");
        let page = monitor_page([m].iter(), &Principal::Admin, &q, 100);
        assert_eq!(page.matching, 1);
    }

    #[test]
    fn paging_matches_a_full_sort() {
        let states = State::ALL;
        let all: Vec<Monitor> = (0..537)
            .map(|i| monitor("ns", &format!("m{i:04}"), None, states[(i * 7) % 6]))
            .collect();
        let mut sorted: Vec<&Monitor> = all.iter().collect();
        sorted.sort_by_key(|m| (urgency(m.state.state), m.def.name().to_string()));
        for page in 1..=6 {
            let q = MonitorQuery {
                page,
                ..Default::default()
            };
            let p = monitor_page(all.iter(), &Principal::Admin, &q, 100);
            assert_eq!(p.pages, 6);
            let want: Vec<_> = sorted
                .iter()
                .skip((page - 1) * 100)
                .take(100)
                .map(|m| m.def.name().to_string())
                .collect();
            let got: Vec<_> = p.rows.iter().map(|m| m.def.name().to_string()).collect();
            assert_eq!(got, want, "page {page}");
        }
        let beyond = MonitorQuery {
            page: 99,
            ..Default::default()
        };
        assert_eq!(
            monitor_page(all.iter(), &Principal::Admin, &beyond, 100).page,
            6
        );
    }

    #[test]
    fn query_round_trips_through_href() {
        let mut p = HashMap::new();
        p.insert("state".to_string(), "down".to_string());
        p.insert("namespace".to_string(), "team a".to_string());
        p.insert("page".to_string(), "x".to_string());
        let q = MonitorQuery::from_params(&p);
        assert_eq!(q.state, Some(State::Down));
        assert_eq!(q.page, 1);
        assert_eq!(
            q.href(2),
            "/ui/monitors?state=Down&namespace=team%20a&page=2"
        );
    }

    #[test]
    fn series_keep_the_busiest_names() {
        let b = |at: i64, event: &str, count: i64| Bucket {
            at,
            event: event.into(),
            tally: Tally {
                count,
                weight: count as i128,
            },
        };
        let mut buckets = vec![b(0, "a", 5), b(1, "a", 1), b(1, "b", 9)];
        for i in 0..6 {
            buckets.push(b(0, &format!("z{i}"), 1));
        }
        let s = series_by_event(&buckets, |h| usize::try_from(h).ok(), 2);
        assert_eq!(s[0].name, "b");
        assert_eq!(s[1].name, "a");
        assert_eq!(s[1].values, vec![5.0, 1.0]);
        assert_eq!(s.len(), MAX_SERIES + 1);
        assert_eq!(s.last().map(|x| x.name.as_str()), Some("other"));
        assert_eq!(s.last().map(|x| x.values[0]), Some(3.0), "z3, z4 and z5");
    }

    #[test]
    fn hourly_chart_places_buckets_by_hour() {
        let now = Timestamp::from_second(100 * 3600 + 1800).unwrap();
        let buckets = vec![
            Bucket {
                at: 100,
                event: "x".into(),
                tally: Tally {
                    count: 3,
                    weight: 3,
                },
            },
            Bucket {
                at: 53,
                event: "x".into(),
                tally: Tally {
                    count: 1,
                    weight: 1,
                },
            },
        ];
        let c = hourly_chart(&buckets, now, &TimeZone::UTC);
        assert_eq!(c.x_labels.len(), 48);
        assert_eq!(c.series[0].values[47], 3.0);
        assert_eq!(c.series[0].values[0], 1.0);
    }
}
