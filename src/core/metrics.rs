//! Prometheus metrics in the text exposition format, without a metrics framework.
//!
//! The set is small and fixed, so plain atomics and one mutex-protected map are enough;
//! other modules add their families through [`Metrics::register`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Finer bounds for disk flushes, which take tens to hundreds of microseconds on a good
/// disk: the default buckets would put nearly all of them in the first one.
pub const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64; 12],
    counts: [AtomicU64; 12],
    inf: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(&BUCKETS)
    }
}

impl Histogram {
    /// A histogram over other bucket bounds (ascending, in seconds) than the default.
    pub fn with_bounds(bounds: &'static [f64; 12]) -> Self {
        Self {
            bounds,
            counts: Default::default(),
            inf: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|b| secs <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.inf.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the histogram in the text format.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.inf.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

type Collector = Box<dyn Fn(&mut String) + Send + Sync>;

/// Request counts of one route template: method → status → count.
type RouteCounts = BTreeMap<String, BTreeMap<u16, AtomicU64>>;

/// Process-wide metrics.
#[derive(Default)]
pub struct Metrics {
    /// Route template → method → status → count. Nested so that counting a request that
    /// was seen before takes a shared lock and allocates nothing.
    requests: RwLock<BTreeMap<String, RouteCounts>>,
    /// Time from request arrival to durable acknowledgement on the ingest route.
    pub ingest_latency: Histogram,
    /// Events stored since the process started.
    pub events_stored: AtomicU64,
    /// Retries answered from their `Idempotency-Key` without counting again.
    pub events_replayed: AtomicU64,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Escapes a label value for the text format.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts one answered request by route template (never the raw path: it may hold a token).
    pub fn record_request(&self, route: &str, method: &str, status: u16) {
        {
            let map = self.requests.read().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map
                .get(route)
                .and_then(|m| m.get(method))
                .and_then(|m| m.get(&status))
            {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.requests.write().unwrap_or_else(|p| p.into_inner());
        map.entry(route.to_string())
            .or_default()
            .entry(method.to_string())
            .or_default()
            .entry(status)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a family rendered by another module at scrape time.
    pub fn register(&self, collector: impl Fn(&mut String) + Send + Sync + 'static) {
        self.collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(collector));
    }

    /// The full exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP hartslag_http_requests_total HTTP requests answered, by route template, method and status.\n");
        out.push_str("# TYPE hartslag_http_requests_total counter\n");
        let requests = self.requests.read().unwrap_or_else(|p| p.into_inner());
        for (route, methods) in requests.iter() {
            for (method, statuses) in methods {
                for (status, n) in statuses {
                    let _ = writeln!(
                        out,
                        "hartslag_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {}",
                        label(route),
                        label(method),
                        status,
                        n.load(Ordering::Relaxed)
                    );
                }
            }
        }
        drop(requests);
        self.ingest_latency.render(
            "hartslag_ingest_duration_seconds",
            "Time to validate and durably store one event.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP hartslag_events_stored_total Events stored since start.\n# TYPE hartslag_events_stored_total counter\nhartslag_events_stored_total {}",
            self.events_stored.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP hartslag_events_replayed_total Retries answered from their Idempotency-Key without counting again.\n# TYPE hartslag_events_replayed_total counter\nhartslag_events_replayed_total {}",
            self.events_replayed.load(Ordering::Relaxed)
        );
        for c in self
            .collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            c(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.record_request("/api/v1/heartbeat", "POST", 201);
        m.record_request("/api/v1/heartbeat", "POST", 201);
        m.ingest_latency.observe(Duration::from_micros(700));
        m.ingest_latency.observe(Duration::from_secs(5));
        let text = m.render();
        assert!(text.contains("hartslag_http_requests_total{route=\"/api/v1/heartbeat\",method=\"POST\",status=\"201\"} 2"));
        assert!(text.contains("hartslag_ingest_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("hartslag_ingest_duration_seconds_bucket{le=\"+Inf\"} 2"));
    }
}
