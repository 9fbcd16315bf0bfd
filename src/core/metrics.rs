//! Metrics: each subsystem registers its own families in one [`MetricRegistry`] as the
//! server is assembled, and `/metrics` encodes the registry as OpenMetrics text.
//!
//! Counters are registered without their `_total` suffix, which the encoder adds; the names
//! on `/metrics` are a contract (see the operations guide) and never change.

use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry as MetricRegistry;

/// Upper bounds (seconds) of the latency histograms: request handling, status patches,
/// late transitions.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Finer bounds for disk flushes, which take tens to hundreds of microseconds on a good
/// disk: the latency buckets would put nearly all of them in the first one.
pub const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram of durations, in seconds; clones share their counts.
#[derive(Debug, Clone)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(&LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// A histogram over these bucket bounds (ascending, in seconds).
    pub fn with_bounds(bounds: &[f64]) -> Self {
        Self(prometheus_client::metrics::histogram::Histogram::new(
            bounds.iter().copied(),
        ))
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    /// Appends this histogram alone, as OpenMetrics text under `name`: for benchmarks and
    /// tests that read it without a server.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let mut registry = MetricRegistry::default();
        registry.register(name, help, self.clone());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(out, &registry);
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Encodes counters read at scrape time, each a family of one sample without labels:
/// `(name without _total, help, value)`. For collectors over plain atomics.
pub fn encode_counters(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    counters: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    for &(name, help, value) in counters {
        let counter = prometheus_client::metrics::counter::ConstCounter::new(value);
        counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
    }
    Ok(())
}

/// Every registered family as OpenMetrics text.
pub fn encode(registry: &MetricRegistry) -> String {
    encode_with(registry, |_| {})
}

/// Every registered family, then the families `more` writes as OpenMetrics text (for
/// families rendered outside the registry, such as the per-monitor series), then `# EOF`.
pub fn encode_with(registry: &MetricRegistry, more: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, registry);
    more(&mut out);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_keep_their_bounds_and_count_in_seconds() {
        let h = Histogram::with_bounds(&SYNC_BUCKETS);
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(5));
        let mut text = String::new();
        h.render("sync_seconds", "Flushes", &mut text);
        assert!(
            text.contains("sync_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sync_seconds_bucket{le=\"1.0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sync_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("sync_seconds_count 3\n"), "{text}");
    }
}
