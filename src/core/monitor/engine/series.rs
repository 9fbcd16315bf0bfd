//! The per-monitor series on `/metrics` (`hartslag_heartbeat_*`), labelled `namespace`,
//! `name` and `application`.
//!
//! At 100,000 monitors these are over a million samples, and encoding each through the
//! metric crate at every scrape takes about half a second. Most monitors do not change
//! between two scrapes, so each monitor's lines are rendered once, kept with the inputs
//! they were rendered from, and rendered again only when those differ; a scrape then
//! compares a few integers per monitor and copies bytes. The families are written as
//! OpenMetrics text beside the crate's output (before its `# EOF`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Mutex;

use jiff::Timestamp;

use super::types::Monitor;
use super::worker::Snapshot;
use crate::core::monitor::state::State;

/// The families, in the order they are written, with their help text.
const FAMILIES: [(&str, &str); 6] = [
    (
        "hartslag_heartbeat_up",
        "1 when the monitor is New, Up, Started or Paused, 0 when Late or Down.",
    ),
    (
        "hartslag_heartbeat_state",
        "The monitor's state, one-hot over every state.",
    ),
    (
        "hartslag_heartbeat_last_ping_timestamp_seconds",
        "When the monitor last heard any signal (success, start or failure).",
    ),
    (
        "hartslag_heartbeat_last_success_timestamp_seconds",
        "When the monitor last heard a success ping.",
    ),
    (
        "hartslag_heartbeat_next_due_timestamp_seconds",
        "When the next success ping is due (absent while New or Paused).",
    ),
    (
        "hartslag_heartbeat_last_duration_seconds",
        "How long the last run between /start and its end took.",
    ),
];

/// What a monitor's lines are rendered from; equal inputs render equal lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    state: State,
    last_signal: Option<Timestamp>,
    last_success: Option<Timestamp>,
    next_due: Option<Timestamp>,
    last_run_ms: Option<u64>,
    /// A definition change (its labels) bumps this.
    updated_at: Timestamp,
}

impl Inputs {
    fn of(m: &Monitor) -> Self {
        let s = &m.state;
        let last_signal = s.last_signal_at();
        let next_due = match s.state {
            State::New | State::Paused => None,
            _ => s.deadline,
        };
        Self {
            state: s.state,
            last_signal,
            last_success: s.last_ping_at,
            next_due,
            last_run_ms: m.last_run_ms,
            updated_at: m.def.updated_at,
        }
    }
}

/// One monitor's lines, family by family.
#[derive(Debug)]
struct Rendered {
    inputs: Inputs,
    text: String,
    /// Where each family's lines are in `text`.
    parts: [Range<usize>; FAMILIES.len()],
    /// The scrape that last saw the monitor; older entries are monitors since removed.
    seen: u64,
}

/// The per-monitor families, rendered from the engine's snapshot with a cache.
#[derive(Debug)]
pub struct MonitorSeries {
    snapshot: Snapshot,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    by_key: HashMap<String, Rendered>,
    scrape: u64,
}

/// Appends `value` as an OpenMetrics label value (backslash, quote and newline escaped).
fn label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Seconds since the epoch with millisecond precision, as Prometheus reads timestamps.
fn seconds(out: &mut String, t: Timestamp) {
    let ms = t.as_millisecond();
    let _ = write!(out, "{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
}

fn render(m: &Monitor, inputs: Inputs, seen: u64) -> Rendered {
    let mut labels = String::with_capacity(96);
    labels.push_str("namespace=\"");
    label_value(&mut labels, m.def.namespace());
    labels.push_str("\",name=\"");
    label_value(&mut labels, m.def.name());
    labels.push_str("\",application=\"");
    let app = m.def.application().unwrap_or("");
    label_value(&mut labels, app.rsplit('/').next().unwrap_or(app));
    labels.push('"');
    let mut text = String::with_capacity(12 * (labels.len() + 60));
    let mut parts: [Range<usize>; FAMILIES.len()] = Default::default();
    let up = !matches!(inputs.state, State::Late | State::Down);
    let timestamp = |text: &mut String, family: usize, at: Option<Timestamp>| {
        if let Some(at) = at {
            let _ = write!(text, "{}{{{labels}}} ", FAMILIES[family].0);
            seconds(text, at);
            text.push('\n');
        }
    };
    let start = text.len();
    let _ = writeln!(text, "{}{{{labels}}} {}", FAMILIES[0].0, u8::from(up));
    parts[0] = start..text.len();
    let start = text.len();
    for s in State::ALL {
        let on = u8::from(s == inputs.state);
        let _ = writeln!(text, "{}{{{labels},state=\"{s}\"}} {on}", FAMILIES[1].0);
    }
    parts[1] = start..text.len();
    for (family, at) in [
        (2, inputs.last_signal),
        (3, inputs.last_success),
        (4, inputs.next_due),
    ] {
        let start = text.len();
        timestamp(&mut text, family, at);
        parts[family] = start..text.len();
    }
    let start = text.len();
    if let Some(ms) = inputs.last_run_ms {
        let _ = writeln!(
            text,
            "{}{{{labels}}} {}.{:03}",
            FAMILIES[5].0,
            ms / 1000,
            ms % 1000
        );
    }
    parts[5] = start..text.len();
    Rendered {
        inputs,
        text,
        parts,
        seen,
    }
}

impl MonitorSeries {
    pub(super) fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Appends every per-monitor family to `out` as OpenMetrics text (without `# EOF`).
    pub fn write(&self, out: &mut String) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.scrape += 1;
        let scrape = cache.scrape;
        {
            let all = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            for m in all.values() {
                let inputs = Inputs::of(m);
                match cache.by_key.get_mut(m.def.key.as_str()) {
                    Some(r) if r.inputs == inputs => r.seen = scrape,
                    _ => {
                        let r = render(m, inputs, scrape);
                        cache.by_key.insert(m.def.key.clone(), r);
                    }
                }
            }
        }
        cache.by_key.retain(|_, r| r.seen == scrape);
        let bytes: usize = cache.by_key.values().map(|r| r.text.len()).sum();
        out.reserve(bytes + 1024);
        for (family, (name, help)) in FAMILIES.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for r in cache.by_key.values() {
                if let Some(part) = r.text.get(r.parts[family].clone()) {
                    out.push_str(part);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::core::monitor::engine::Monitors;
    use crate::core::monitor::engine::types::sample;

    fn series(monitors: Vec<Monitor>) -> (MonitorSeries, Snapshot) {
        let snap: Snapshot = Arc::new(RwLock::new(monitors.into_iter().collect::<Monitors>()));
        (MonitorSeries::new(snap.clone()), snap)
    }

    fn scrape(s: &MonitorSeries) -> String {
        let mut out = String::new();
        s.write(&mut out);
        out
    }

    #[test]
    fn each_monitor_has_up_a_one_hot_state_and_its_timestamps() {
        let mut down = sample("nightly", State::Down);
        down.def = down
            .def
            .edited(|d| d.application = Some("ns/billing".into()));
        down.state.last_ping_at = Some(Timestamp::from_millisecond(1_700_000_000_250).unwrap());
        down.state.deadline = Some(Timestamp::from_second(1_700_000_060).unwrap());
        down.last_run_ms = Some(1500);
        let (s, _) = series(vec![down, sample("fresh", State::New)]);
        let text = scrape(&s);
        let l = r#"{namespace="ns",name="nightly",application="billing"}"#;
        for line in [
            format!("hartslag_heartbeat_up{l} 0"),
            r#"hartslag_heartbeat_state{namespace="ns",name="nightly",application="billing",state="Down"} 1"#.to_string(),
            r#"hartslag_heartbeat_state{namespace="ns",name="nightly",application="billing",state="Up"} 0"#.to_string(),
            format!("hartslag_heartbeat_last_ping_timestamp_seconds{l} 1700000000.250"),
            format!("hartslag_heartbeat_last_success_timestamp_seconds{l} 1700000000.250"),
            format!("hartslag_heartbeat_next_due_timestamp_seconds{l} 1700000060.000"),
            format!("hartslag_heartbeat_last_duration_seconds{l} 1.500"),
            r#"hartslag_heartbeat_up{namespace="ns",name="fresh",application=""} 1"#.to_string(),
        ] {
            assert!(text.lines().any(|t| t == line), "missing {line}\n{text}");
        }
        assert_eq!(text.matches("hartslag_heartbeat_state{").count(), 12);
        assert!(
            !text.contains("name=\"fresh\",application=\"\"} 1700"),
            "{text}"
        );
        // Every family's samples follow its own TYPE line.
        let order: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(order.len(), 6);
    }

    #[test]
    fn a_changed_monitor_is_rendered_again_and_a_removed_one_disappears() {
        let (s, snap) = series(vec![sample("a", State::Up), sample("b", State::Up)]);
        assert!(scrape(&s).contains(r#"name="a",application=""} 1"#));
        snap.write().unwrap().insert(sample("a", State::Down));
        snap.write().unwrap().remove("b");
        let text = scrape(&s);
        assert!(
            text.contains(r#"hartslag_heartbeat_up{namespace="ns",name="a",application=""} 0"#),
            "{text}"
        );
        assert!(!text.contains(r#"name="b""#), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = sample("x", State::Up);
        m.def = m.def.edited(|d| d.name = "we\"ird\\\n".into());
        let (s, _) = series(vec![m]);
        assert!(scrape(&s).contains(r#"name="we\"ird\\\n""#));
    }
}
