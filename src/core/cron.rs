//! Cron schedules in a time zone: when a scheduled job is due, how often it runs, and
//! whether an instant falls in a window that opens at each scheduled time.
//!
//! Parsing and the calendar walk are croner's (on jiff), never our own; this module adds
//! the rules around it: strict five-field crontab syntax, a clear error naming the field at
//! fault, rejecting expressions that never fire, and the two ways daylight-saving time is
//! read ([`Dialect`]).
//!
//! Daylight-saving time, [`Dialect::Cron`] (what cron users expect, croner's rules): a
//! fixed-time job whose local time falls in the spring-forward gap runs once, at the first
//! instant after the gap (02:30 in Europe/Amsterdam on the last Sunday of March runs at
//! 03:00 CEST); in the fall-back hour it runs once, on the first pass. Jobs with wildcards
//! or steps in the minute or hour skip the missing hour and run on both passes of the
//! repeated one.
//!
//! [`Dialect::CronJob`] reads a schedule the way the Kubernetes CronJob controller
//! (robfig/cron) does, since a monitor of a CronJob must expect the Jobs that controller
//! creates, not the ones a cron daemon would: an occurrence in the spring-forward gap is
//! skipped (the controller never creates that Job), `@midnight` and a `CRON_TZ=`/`TZ=`
//! prefix are accepted, and a day-of-month or day-of-week field that starts with `*` or
//! `?` makes both day fields apply together (robfig's "star bit"). In the repeated hour the
//! controller may create a second Job; an extra run is harmless to a monitor, so nothing
//! special is needed there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// How many gaps [`Schedule::typical_gap`] looks at.
const GAPS_SAMPLED: usize = 8;

/// Most gap occurrences skipped in one search under [`Dialect::CronJob`]; a schedule that
/// fires only in gaps would otherwise search for ever.
const MAX_SKIPPED: usize = 64;

/// Where the typical gap is measured from, so it is the same on every call and machine.
fn gap_reference() -> Timestamp {
    Timestamp::from_second(1_704_067_200).unwrap_or(Timestamp::UNIX_EPOCH) // 2024-01-01
}

/// The shorthands accepted in place of five fields.
const NICKNAMES: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// The field names of a five-field expression, for error messages.
const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

/// How a schedule is read where cron implementations differ.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// Crontab as cron users expect it, with croner's daylight-saving rules.
    #[default]
    Cron,
    /// As the Kubernetes CronJob controller reads `spec.schedule` (see the module docs).
    CronJob,
}

/// Why a schedule was refused. The message starts with the value at fault; the caller puts
/// the field's name in front (`spec.schedule "61 * * * *" is not ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not parse.
    #[error(
        "{expr:?} is not a valid cron expression: {detail}; write five fields (minute hour day-of-month month day-of-week, e.g. \"30 2 * * 1-5\") or @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    Expression {
        /// The expression as written.
        expr: String,
        /// What is wrong, naming the field when one is at fault.
        detail: String,
    },
    /// The time zone is not in the IANA database.
    #[error("{0:?} is not a known IANA time zone (for example Europe/Amsterdam)")]
    TimeZone(String),
    /// The expression parses but names no date that exists (`0 0 30 2 *`).
    #[error("{0:?} never fires: no date matches it")]
    NeverFires(String),
    /// `@every` is a fixed interval, not a schedule.
    #[error("{0:?} is a fixed interval, not a cron schedule: use interval instead")]
    Every(String),
}

/// What a CronJob's `spec.schedule` amounts to: a cron schedule, or robfig's `@every`
/// interval, which Kubernetes accepts too.
#[derive(Debug, Clone, PartialEq)]
pub enum CronJobCadence {
    /// A cron schedule (read as [`Dialect::CronJob`]).
    Schedule(Schedule),
    /// `@every <duration>`: one run per this period.
    Every(SignedDuration),
}

/// A parsed cron schedule in a time zone; cheap to clone (shared), compared by what was
/// written (expression, zone and dialect).
#[derive(Clone)]
pub struct Schedule {
    inner: Arc<Inner>,
}

struct Inner {
    expr: String,
    zone: String,
    dialect: Dialect,
    cron: Cron,
    tz: TimeZone,
    gap: SignedDuration,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("expr", &self.inner.expr)
            .field("zone", &self.inner.zone)
            .field("dialect", &self.inner.dialect)
            .finish()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.inner, &other.inner);
        a.expr == b.expr && a.zone == b.zone && a.dialect == b.dialect
    }
}

impl Eq for Schedule {}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.inner.expr, self.inner.zone)
    }
}

/// The five fields of `expr` when it has exactly five (nicknames have one).
fn fields(expr: &str) -> Option<[&str; 5]> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    parts.try_into().ok()
}

fn parser(dialect: Dialect, expr: &str) -> CronParser {
    // robfig sets its "star bit" for a day field starting with `*` or `?` (so `*/2`
    // too) and then requires both day fields to match; croner only treats a literal `*`
    // as a wildcard, and with both fields restricted either may match.
    let robfig_and = dialect == Dialect::CronJob
        && fields(expr).is_some_and(|f| {
            [f[2], f[4]]
                .iter()
                .any(|d| d.starts_with('*') || d.starts_with('?'))
        });
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .dom_and_dow(robfig_and)
        .build()
}

/// croner's message, with the field at fault named when one field alone is: each field is
/// tried in an otherwise all-`*` expression.
fn explain(dialect: Dialect, expr: &str, err: &CronError) -> String {
    if let Some(f) = fields(expr) {
        for (i, field) in f.iter().enumerate() {
            let mut probe = ["*"; 5];
            probe[i] = field;
            if let Err(e) = parser(dialect, expr).parse(&probe.join(" ")) {
                return format!("{} field {field:?}: {}", FIELDS[i], plain(&e));
            }
        }
    }
    plain(err)
}

/// croner's message without its type prefixes.
fn plain(err: &CronError) -> String {
    match err {
        CronError::InvalidPattern(m) | CronError::ComponentError(m) => {
            m.trim_end_matches('.').to_string()
        }
        CronError::IllegalCharacters(m) => {
            format!("illegal characters ({})", m.trim_end_matches('.'))
        }
        CronError::EmptyPattern => "it is empty".into(),
        other => other.to_string(),
    }
}

impl Schedule {
    /// Parses a crontab expression in the IANA zone `zone` (UTC when `None`).
    pub fn parse(expr: &str, zone: Option<&str>) -> Result<Self, ScheduleError> {
        Self::parse_as(expr, zone, Dialect::Cron)
    }

    /// As [`Schedule::parse`], read in `dialect` (the syntax is crontab's either way).
    pub fn parse_as(
        expr: &str,
        zone: Option<&str>,
        dialect: Dialect,
    ) -> Result<Self, ScheduleError> {
        let trimmed = expr.trim();
        if trimmed.to_ascii_lowercase().starts_with("@every") {
            return Err(ScheduleError::Every(trimmed.into()));
        }
        Self::build(trimmed, zone.unwrap_or("UTC"), dialect)
    }

    /// Reads a CronJob's `spec.schedule` and `spec.timeZone` as the Kubernetes controller
    /// does: `@midnight`, `@every <duration>` and a legacy `CRON_TZ=`/`TZ=` prefix are
    /// accepted, and the schedule keeps [`Dialect::CronJob`].
    pub fn parse_cron_job(expr: &str, zone: Option<&str>) -> Result<CronJobCadence, ScheduleError> {
        let mut text = expr.trim();
        let mut zone = zone.unwrap_or("UTC").to_string();
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (tz, cron) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                zone = tz.to_string();
                text = cron.trim();
            }
        }
        let lower = text.to_ascii_lowercase();
        if let Some(every) = lower.strip_prefix("@every") {
            return go_duration(every.trim())
                .map(CronJobCadence::Every)
                .ok_or_else(|| ScheduleError::Expression {
                    expr: expr.trim().into(),
                    detail: "@every needs a duration such as 90s, 15m or 1h30m".into(),
                });
        }
        Self::build(text, &zone, Dialect::CronJob).map(CronJobCadence::Schedule)
    }

    /// A schedule parsed before and still in use is shared (see [`Interned`]); otherwise
    /// parsed now.
    fn build(expr: &str, zone: &str, dialect: Dialect) -> Result<Self, ScheduleError> {
        let key = (expr.to_string(), zone.to_string(), dialect);
        if let Some(inner) = Interned::get(&key) {
            return Ok(Self { inner });
        }
        let schedule = Self::parse_now(expr, zone, dialect)?;
        Interned::put(key, &schedule.inner);
        Ok(schedule)
    }

    fn parse_now(expr: &str, zone: &str, dialect: Dialect) -> Result<Self, ScheduleError> {
        let lower = expr.to_ascii_lowercase();
        if lower.starts_with('@') && !NICKNAMES.contains(&lower.as_str()) {
            return Err(ScheduleError::Expression {
                expr: expr.into(),
                detail: format!("{expr} is not a known shorthand"),
            });
        }
        // vixie cron and Kubernetes both know `@midnight`; croner does not.
        let text = if lower == "@midnight" { "@daily" } else { expr };
        let cron = parser(dialect, text)
            .parse(text)
            .map_err(|e| ScheduleError::Expression {
                expr: expr.into(),
                detail: explain(dialect, expr, &e),
            })?;
        let tz = TimeZone::get(zone).map_err(|_| ScheduleError::TimeZone(zone.into()))?;
        let mut schedule = Self {
            inner: Arc::new(Inner {
                expr: expr.into(),
                zone: zone.into(),
                dialect,
                cron,
                tz,
                gap: SignedDuration::ZERO,
            }),
        };
        let gap = schedule
            .measure_gap()
            .ok_or_else(|| ScheduleError::NeverFires(expr.into()))?;
        if let Some(inner) = Arc::get_mut(&mut schedule.inner) {
            inner.gap = gap;
        }
        Ok(schedule)
    }

    /// The expression as written (after a `CRON_TZ=` prefix was taken off).
    pub fn expression(&self) -> &str {
        &self.inner.expr
    }

    /// The IANA zone name.
    pub fn zone(&self) -> &str {
        &self.inner.zone
    }

    /// How daylight-saving time and robfig's quirks are read.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// `t` on the schedule's wall clock, for messages (`2026-03-29 03:00 CEST`).
    pub fn local_time(&self, t: Timestamp) -> String {
        t.to_zoned(self.inner.tz.clone())
            .strftime("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    /// The first scheduled instant strictly after `t`; `None` when there is none (only
    /// within croner's search limit of year 5000, or at the end of time).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut from = t.to_zoned(self.inner.tz.clone());
        for _ in 0..MAX_SKIPPED {
            let next = self.inner.cron.find_next_occurrence(&from, false).ok()?;
            if self.expected(&next) {
                return Some(next.timestamp());
            }
            from = next;
        }
        None
    }

    /// The latest scheduled instant at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let mut from = t.to_zoned(self.inner.tz.clone());
        let mut inclusive = true;
        for _ in 0..MAX_SKIPPED {
            let prev = self
                .inner
                .cron
                .find_previous_occurrence(&from, inclusive)
                .ok()?;
            if self.expected(&prev) {
                return Some(prev.timestamp());
            }
            from = prev;
            inclusive = false;
        }
        None
    }

    /// Whether `t` is itself a scheduled instant.
    pub fn is_occurrence(&self, t: Timestamp) -> bool {
        self.latest_at_or_before(t) == Some(t)
    }

    /// Up to `n` scheduled instants after `t`, for "next runs" lists.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// How many scheduled instants lie in `(after, until]`, counting at most `cap`.
    pub fn count_between(&self, after: Timestamp, until: Timestamp, cap: u64) -> u64 {
        let mut n = 0;
        let mut at = after;
        while n < cap {
            match self.next_after(at) {
                Some(next) if next <= until => {
                    n += 1;
                    at = next;
                }
                _ => break,
            }
        }
        n
    }

    /// The usual time between two runs: the median of the first gaps after a fixed date,
    /// so it reads the same on every call (`0 9 * * 1-5` gives one day). Shown where a
    /// single interval is expected, such as Tickstem's `interval_secs`.
    pub fn typical_gap(&self) -> SignedDuration {
        self.inner.gap
    }

    /// The start of the window containing `t`, when `t` lies within `length` after a
    /// scheduled instant (`[start, start + length)`); for maintenance windows.
    pub fn window_containing(&self, t: Timestamp, length: SignedDuration) -> Option<Timestamp> {
        let start = self.latest_at_or_before(t)?;
        let end = start.checked_add(length).ok()?;
        (t < end).then_some(start)
    }

    /// Whether this occurrence is one the dialect expects to run: under
    /// [`Dialect::CronJob`] an occurrence croner moved out of a spring-forward gap (its
    /// local time no longer matches the pattern) is one the controller never creates.
    fn expected(&self, at: &Zoned) -> bool {
        self.inner.dialect == Dialect::Cron || self.inner.cron.is_time_matching(at).unwrap_or(true)
    }

    fn measure_gap(&self) -> Option<SignedDuration> {
        let runs = self.upcoming(gap_reference(), GAPS_SAMPLED + 1);
        let first = *runs.first()?;
        let mut gaps: Vec<SignedDuration> =
            runs.windows(2).map(|w| w[1].duration_since(w[0])).collect();
        gaps.sort();
        // A schedule with one run in five thousand years still has a "gap": that long.
        let fallback = Timestamp::MAX.duration_since(first);
        Some(gaps.get(gaps.len() / 2).copied().unwrap_or(fallback))
    }
}

/// A Go duration as `@every` takes it (`90s`, `1h30m`, `1.5h`, `500ms`), rounded to whole
/// seconds like the CronJob controller; `None` unless it is positive and well formed.
fn go_duration(text: &str) -> Option<SignedDuration> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    let secs = total.round();
    (1.0..1e15)
        .contains(&secs)
        .then(|| SignedDuration::from_secs(secs as i64))
}

/// Parsed schedules by what was written, so that monitors with the same schedule share
/// one parsed form: a parsed pattern with its time zone takes kilobytes, and a hundred
/// thousand monitors use far fewer distinct schedules (most are `@hourly`, `@daily` or a
/// few dozen crontab lines). Only weak references are kept; entries of schedules no
/// longer used are dropped whenever the map has doubled since the last sweep.
struct Interned {
    map: HashMap<InternKey, Weak<Inner>>,
    sweep_at: usize,
}

type InternKey = (String, String, Dialect);

static INTERNED: Mutex<Option<Interned>> = Mutex::new(None);

impl Interned {
    fn get(key: &InternKey) -> Option<Arc<Inner>> {
        let guard = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref()?.map.get(key)?.upgrade()
    }

    fn put(key: InternKey, inner: &Arc<Inner>) {
        let mut guard = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
        let interned = guard.get_or_insert_with(|| Interned {
            map: HashMap::new(),
            sweep_at: 1024,
        });
        interned.map.insert(key, Arc::downgrade(inner));
        if interned.map.len() >= interned.sweep_at {
            interned.map.retain(|_, w| w.strong_count() > 0);
            interned.sweep_at = (interned.map.len() * 2).max(1024);
        }
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            expr: self.inner.expr.clone(),
            zone: self.inner.zone.clone(),
            dialect: self.inner.dialect,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let stored = Stored::deserialize(d)?;
        Self::build(&stored.expr, &stored.zone, stored.dialect).map_err(serde::de::Error::custom)
    }
}

/// The stored form: what was written, parsed again when read.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    expr: String,
    zone: String,
    #[serde(default, skip_serializing_if = "is_cron")]
    dialect: Dialect,
}

fn is_cron(d: &Dialect) -> bool {
    *d == Dialect::Cron
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_schedules_share_one_parsed_form() {
        use super::*;
        let a = Schedule::parse("*/7 3 * * 1", Some("Europe/Amsterdam")).unwrap();
        let b = Schedule::parse(" */7 3 * * 1 ", Some("Europe/Amsterdam")).unwrap();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        let other_zone = Schedule::parse("*/7 3 * * 1", None).unwrap();
        let other_dialect =
            Schedule::parse_as("*/7 3 * * 1", Some("Europe/Amsterdam"), Dialect::CronJob).unwrap();
        assert!(!Arc::ptr_eq(&a.inner, &other_zone.inner));
        assert!(!Arc::ptr_eq(&a.inner, &other_dialect.inner));
        // Stored and read back: shared as well.
        let json = serde_json::to_string(&a).unwrap();
        let c: Schedule = serde_json::from_str(&json).unwrap();
        assert!(Arc::ptr_eq(&a.inner, &c.inner));
    }

    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn cron(expr: &str, zone: &str) -> Schedule {
        Schedule::parse(expr, Some(zone)).unwrap()
    }

    fn cron_job(expr: &str, zone: Option<&str>) -> Schedule {
        match Schedule::parse_cron_job(expr, zone).unwrap() {
            CronJobCadence::Schedule(s) => s,
            CronJobCadence::Every(d) => panic!("{expr} read as @every {d}"),
        }
    }

    fn runs(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        s.upcoming(ts(from), n)
            .iter()
            .map(|t| t.to_string())
            .collect()
    }

    #[test]
    fn crontab_syntax_is_accepted() {
        for (expr, from, next) in [
            ("* * * * *", "2026-01-05T10:00:30Z", "2026-01-05T10:01:00Z"),
            ("@hourly", "2026-01-05T10:00:00Z", "2026-01-05T11:00:00Z"),
            ("@daily", "2026-01-05T10:00:00Z", "2026-01-06T00:00:00Z"),
            ("@midnight", "2026-01-05T10:00:00Z", "2026-01-06T00:00:00Z"),
            ("@weekly", "2026-01-05T10:00:00Z", "2026-01-11T00:00:00Z"),
            ("@monthly", "2026-01-05T10:00:00Z", "2026-02-01T00:00:00Z"),
            ("@yearly", "2026-01-05T10:00:00Z", "2027-01-01T00:00:00Z"),
            ("@annually", "2026-01-05T10:00:00Z", "2027-01-01T00:00:00Z"),
            (
                "0 9 * jan-mar mon-fri",
                "2026-01-09T10:00:00Z",
                "2026-01-12T09:00:00Z",
            ),
            (
                "*/15 8-18/2 1,15 * *",
                "2026-01-01T18:50:00Z",
                "2026-01-15T08:00:00Z",
            ),
            (
                "5/20 * * * *",
                "2026-01-05T10:30:00Z",
                "2026-01-05T10:45:00Z",
            ),
            ("0 0 * * 7", "2026-01-05T10:00:00Z", "2026-01-11T00:00:00Z"),
            (
                "0 0 ? * SUN",
                "2026-01-05T10:00:00Z",
                "2026-01-11T00:00:00Z",
            ),
            (
                "  0   12 * * *  ",
                "2026-01-05T10:00:00Z",
                "2026-01-05T12:00:00Z",
            ),
        ] {
            let s = Schedule::parse(expr, None).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(s.next_after(ts(from)), Some(ts(next)), "{expr}");
            assert_eq!(s.zone(), "UTC");
        }
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let cases = [
            ("61 * * * *", "minute field \"61\""),
            ("0 25 * * *", "hour field \"25\""),
            ("0 0 32 * *", "day-of-month field \"32\""),
            ("0 0 * 13 *", "month field \"13\""),
            ("0 0 * * 8", "day-of-week field \"8\""),
            ("0 0 * * monday", "day-of-week field"),
            ("H * * * *", "minute field \"H\""),
            ("* * * * * *", "5 fields"),
            ("* * * *", "5 fields"),
            ("", "empty"),
            ("@fortnightly", "not a known shorthand"),
        ];
        for (expr, needle) in cases {
            let err = Schedule::parse(expr, None).unwrap_err();
            assert!(
                matches!(err, ScheduleError::Expression { .. }),
                "{expr}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(needle), "{expr}: {text}");
            assert!(text.contains("five fields"), "{expr}: {text}");
        }
        assert_eq!(
            Schedule::parse("0 0 30 2 *", None).unwrap_err(),
            ScheduleError::NeverFires("0 0 30 2 *".into())
        );
        assert_eq!(
            Schedule::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
        assert!(matches!(
            Schedule::parse("@every 1h", None),
            Err(ScheduleError::Every(_))
        ));
    }

    #[test]
    fn spring_forward_in_amsterdam_runs_a_fixed_time_job_once_after_the_gap() {
        // 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; 02:30 does not exist.
        let s = cron("30 2 * * *", "Europe/Amsterdam");
        assert_eq!(
            runs(&s, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
            "03:00 CEST on the day of the gap, 02:30 CEST the next"
        );
        // The job before the gap runs once, not twice (croner 4.0.3 fixed exactly this).
        let before = cron("30 1 * * *", "Europe/Amsterdam");
        assert_eq!(
            runs(&before, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T00:30:00Z", "2026-03-29T23:30:00Z"]
        );
        // Wildcard jobs skip the missing hour.
        let every = cron("*/30 * * * *", "Europe/Amsterdam");
        assert_eq!(
            runs(&every, "2026-03-29T00:15:00Z", 3),
            [
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z"
            ]
        );
    }

    #[test]
    fn fall_back_in_amsterdam_runs_a_fixed_time_job_once_on_the_first_pass() {
        // 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
        let s = cron("30 2 * * *", "Europe/Amsterdam");
        assert_eq!(
            runs(&s, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
            "02:30 CEST once, then 02:30 CET the next day"
        );
        // Asked from within the repeated hour, on either pass: no second run.
        for from in [
            "2026-10-25T00:31:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:31:00Z",
        ] {
            assert_eq!(
                s.next_after(ts(from)),
                Some(ts("2026-10-26T01:30:00Z")),
                "{from}"
            );
        }
        // Wildcard jobs run on both passes.
        let every = cron("*/30 * * * *", "Europe/Amsterdam");
        assert_eq!(
            runs(&every, "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z"
            ]
        );
    }

    #[test]
    fn cron_job_schedules_skip_the_gap_like_the_controller() {
        let s = cron_job("30 2 * * *", Some("Europe/Amsterdam"));
        assert_eq!(s.dialect(), Dialect::CronJob);
        assert_eq!(
            runs(&s, "2026-03-28T12:00:00Z", 2),
            ["2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"],
            "the controller creates no Job on the day 02:30 does not exist"
        );
        assert!(!s.is_occurrence(ts("2026-03-29T01:00:00Z")));
        assert_eq!(
            s.latest_at_or_before(ts("2026-03-29T12:00:00Z")),
            Some(ts("2026-03-28T01:30:00Z"))
        );
        // The fall-back day is expected once, like a cron user's.
        assert_eq!(
            runs(&s, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn cron_job_schedules_read_the_controller_s_extras() {
        assert_eq!(
            cron_job("@midnight", None).next_after(ts("2026-01-05T10:00:00Z")),
            Some(ts("2026-01-06T00:00:00Z"))
        );
        let tz = cron_job("CRON_TZ=Europe/Amsterdam 0 9 * * *", None);
        assert_eq!(
            (tz.expression(), tz.zone()),
            ("0 9 * * *", "Europe/Amsterdam")
        );
        assert_eq!(
            tz.next_after(ts("2026-01-05T00:00:00Z")),
            Some(ts("2026-01-05T08:00:00Z"))
        );
        assert_eq!(
            cron_job("TZ=Asia/Tokyo 0 9 * * *", None).zone(),
            "Asia/Tokyo"
        );
        assert_eq!(
            Schedule::parse_cron_job("@every 1h30m", None).unwrap(),
            CronJobCadence::Every(SignedDuration::from_secs(5400))
        );
        assert_eq!(
            Schedule::parse_cron_job("@every 1.5m", None).unwrap(),
            CronJobCadence::Every(SignedDuration::from_secs(90))
        );
        for bad in ["@every", "@every soon", "@every 0s", "@every 10x"] {
            assert!(Schedule::parse_cron_job(bad, None).is_err(), "{bad}");
        }
        // robfig's star bit: `*/2` in day-of-month with a weekday means both must hold.
        let both = cron_job("0 0 */2 * 1", None);
        let either = cron("0 0 */2 * 1", "UTC");
        // 2026-01-05 is an (odd) Monday, 2026-01-07 an odd Wednesday.
        assert_eq!(
            both.next_after(ts("2026-01-04T12:00:00Z")),
            Some(ts("2026-01-05T00:00:00Z"))
        );
        assert_eq!(
            both.next_after(ts("2026-01-05T12:00:00Z")),
            Some(ts("2026-01-19T00:00:00Z"))
        );
        assert_eq!(
            either.next_after(ts("2026-01-05T12:00:00Z")),
            Some(ts("2026-01-07T00:00:00Z"))
        );
        // Both day fields restricted without a star: either matches, in both dialects.
        let or = cron_job("0 0 1 * 1", None);
        assert_eq!(
            or.next_after(ts("2026-01-02T00:00:00Z")),
            Some(ts("2026-01-05T00:00:00Z"))
        );
    }

    #[test]
    fn typical_gap_is_the_usual_time_between_runs() {
        for (expr, secs) in [
            ("* * * * *", 60),
            ("*/15 * * * *", 900),
            ("0 9 * * 1-5", 86_400),
            ("0 0,12 * * *", 43_200),
            ("@weekly", 604_800),
            ("@yearly", 365 * 86_400),
        ] {
            assert_eq!(cron(expr, "UTC").typical_gap().as_secs(), secs, "{expr}");
        }
        // Stable: the same on every call, whatever the date.
        let s = cron("30 2 * * *", "Europe/Amsterdam");
        assert_eq!(s.typical_gap(), s.clone().typical_gap());
        assert_eq!(s.typical_gap().as_secs(), 86_400);
    }

    #[test]
    fn windows_and_counts() {
        let s = cron("0 2 * * *", "UTC");
        let hour = SignedDuration::from_secs(3600);
        assert_eq!(
            s.window_containing(ts("2026-01-05T02:30:00Z"), hour),
            Some(ts("2026-01-05T02:00:00Z"))
        );
        assert_eq!(
            s.window_containing(ts("2026-01-05T02:00:00Z"), hour),
            Some(ts("2026-01-05T02:00:00Z"))
        );
        assert_eq!(
            s.window_containing(ts("2026-01-05T03:00:00Z"), hour),
            None,
            "end excluded"
        );
        assert_eq!(s.window_containing(ts("2026-01-05T01:59:59Z"), hour), None);
        // A window longer than the gap is always open.
        let long = SignedDuration::from_secs(2 * 86_400);
        assert!(
            s.window_containing(ts("2026-01-05T01:00:00Z"), long)
                .is_some()
        );
        assert_eq!(
            s.count_between(ts("2026-01-05T02:00:00Z"), ts("2026-01-08T02:00:00Z"), 100),
            3
        );
        assert_eq!(
            s.count_between(ts("2026-01-05T02:00:00Z"), ts("2026-01-08T01:59:00Z"), 100),
            2
        );
        assert_eq!(
            s.count_between(ts("2026-01-05T02:00:00Z"), ts("2026-02-05T02:00:00Z"), 10),
            10
        );
        assert!(s.is_occurrence(ts("2026-01-05T02:00:00Z")));
        assert!(!s.is_occurrence(ts("2026-01-05T02:00:01Z")));
    }

    #[test]
    fn stored_form_round_trips_and_compares_by_what_was_written() {
        let s = cron_job("CRON_TZ=Europe/Amsterdam 30 2 * * *", None);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"expr": "30 2 * * *", "zone": "Europe/Amsterdam", "dialect": "cron_job"})
        );
        let back: Schedule = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.next_after(ts("2026-03-28T12:00:00Z")),
            s.next_after(ts("2026-03-28T12:00:00Z"))
        );
        let plain = serde_json::to_value(cron("@daily", "UTC")).unwrap();
        assert_eq!(plain, serde_json::json!({"expr": "@daily", "zone": "UTC"}));
        assert_ne!(cron("@daily", "UTC"), cron("@daily", "Europe/Amsterdam"));
        assert_ne!(
            cron("0 0 * * *", "UTC"),
            cron("@daily", "UTC"),
            "as written"
        );
        assert!(
            serde_json::from_value::<Schedule>(serde_json::json!({"expr": "nope", "zone": "UTC"}))
                .is_err()
        );
    }
}
