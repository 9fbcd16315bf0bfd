//! Events stored per Application and event name since the process started, for
//! `/metrics`: `hartslag_application_events_total{namespace, application}` and
//! `hartslag_events_total{namespace, application, event}` for each Application's most
//! frequent event names only.
//!
//! Event names are chosen by clients, up to ten thousand per Application by default: one
//! series per name would let a single tenant flood every Prometheus that scrapes us. So at
//! each scrape only the `top` names by count get a series; a name that drops out of the
//! top goes stale in Prometheus like any vanished series, and every series that is shown
//! is a true counter of its own name. The stored totals (the stats API) stay the record;
//! these counters restart with the process, as Prometheus counters may.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::core::metrics::MetricRegistry;
use crate::core::registry::Registry;

/// Default of how many event names per Application get a series.
pub const DEFAULT_TOP_EVENTS: usize = 10;

/// One Application's counts; shared by every request with its token and handed over
/// when its spec changes, like its rate limiter.
#[derive(Debug, Default)]
pub struct EventCounts(Mutex<Counts>);

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    /// Bounded by the Application's limit on distinct event names, which the store
    /// enforces before an event is counted here.
    by_name: HashMap<Box<str>, u64>,
}

impl EventCounts {
    /// Counts one stored event.
    pub fn record(&self, event: &str) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        c.total += 1;
        match c.by_name.get_mut(event) {
            Some(n) => *n += 1,
            None => {
                c.by_name.insert(event.into(), 1);
            }
        }
    }

    /// Every event counted, and the `n` most frequent names with their counts, most
    /// frequent first (ties by name, so a scrape's order is stable).
    pub fn top(&self, n: usize) -> (u64, Vec<(String, u64)>) {
        let c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(&str, u64)> = c.by_name.iter().map(|(k, v)| (&**k, *v)).collect();
        let by_count = |a: &(&str, u64), b: &(&str, u64)| b.1.cmp(&a.1).then(a.0.cmp(b.0));
        if all.len() > n {
            all.select_nth_unstable_by(n, by_count);
            all.truncate(n);
        }
        all.sort_unstable_by(by_count);
        let top = all.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        (c.total, top)
    }
}

/// Registers the two families, read from the registry's Applications at each scrape
/// (an Application that is gone has no series).
pub fn register_metrics(metrics: &mut MetricRegistry, registry: Registry, top: usize) {
    metrics.register_collector(Box::new(EventCountsCollector { registry, top }));
}

struct EventCountsCollector {
    registry: Registry,
    top: usize,
}

impl std::fmt::Debug for EventCountsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCountsCollector")
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl Collector for EventCountsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps = self.registry.applications();
        let counted: Vec<_> = apps.iter().map(|a| (a, a.counts.top(self.top))).collect();
        let mut totals = encoder.encode_descriptor(
            "hartslag_application_events",
            "Events stored per Application since start.",
            None,
            MetricType::Counter,
        )?;
        for (app, (total, _)) in &counted {
            let labels = [
                ("namespace", app.namespace.as_str()),
                ("application", app.name.as_str()),
            ];
            ConstCounter::new(*total).encode(totals.encode_family(&labels)?)?;
        }
        let mut events = encoder.encode_descriptor(
            "hartslag_events",
            "Events stored since start per Application and event name, for each Application's most frequent names (--metrics-top-events).",
            None,
            MetricType::Counter,
        )?;
        for (app, (_, top)) in &counted {
            for (event, n) in top {
                let labels = [
                    ("namespace", app.namespace.as_str()),
                    ("application", app.name.as_str()),
                    ("event", event.as_str()),
                ];
                ConstCounter::new(*n).encode(events.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_frequent_names_come_first_and_the_total_counts_every_event() {
        let counts = EventCounts::default();
        for (name, n) in [("rare", 1), ("often", 5), ("b-mid", 3), ("a-mid", 3)] {
            for _ in 0..n {
                counts.record(name);
            }
        }
        let (total, top) = counts.top(3);
        assert_eq!(total, 12);
        assert_eq!(
            top,
            vec![
                ("often".into(), 5),
                ("a-mid".into(), 3),
                ("b-mid".into(), 3)
            ]
        );
        assert_eq!(counts.top(10).1.len(), 4);
        assert!(counts.top(0).1.is_empty());
    }
}
