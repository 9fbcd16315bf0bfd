//! The outbox's families on `/metrics`: deliveries by outcome, and how many wait.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;

use std::sync::Arc;

use crate::core::metrics::MetricRegistry;
use crate::core::storage::OutboxStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Deliveries by outcome since start.
#[derive(Debug)]
pub struct OutboxStats {
    family: Family<OutcomeLabel, Counter>,
    /// Accepted by their target.
    pub delivered: Counter,
    /// Given up: a permanent error, or transient ones for too long.
    pub failed: Counter,
    /// Transient failures that were rescheduled.
    pub retried: Counter,
    /// Skipped because their channel is not configured.
    pub skipped: Counter,
    /// Not sent because a newer notice about the same monitor went to the same target
    /// (after a flapping spell, or past the target's hourly cap).
    pub superseded: Counter,
}

impl Default for OutboxStats {
    fn default() -> Self {
        let family = Family::<OutcomeLabel, Counter>::default();
        let counter = |outcome| family.get_or_create_owned(&OutcomeLabel { outcome });
        Self {
            delivered: counter("delivered"),
            failed: counter("failed"),
            retried: counter("retried"),
            skipped: counter("skipped"),
            superseded: counter("superseded"),
            family,
        }
    }
}

impl OutboxStats {
    /// Registers the outbox's families; pending deliveries are counted at each scrape.
    pub(super) fn register(&self, store: Arc<dyn OutboxStore>, registry: &mut MetricRegistry) {
        registry.register(
            "hartslag_alert_deliveries",
            "Alert deliveries by outcome",
            self.family.clone(),
        );
        registry.register_collector(Box::new(Pending(store)));
    }
}

/// The `hartslag_alert_deliveries_pending` gauge: notices waiting in the outbox.
/// Repetitions scheduled while an incident lasts are left out: they wait by design, and
/// counting them would make every long outage look like a delivery backlog.
#[derive(Debug)]
struct Pending(Arc<dyn OutboxStore>);

impl Collector for Pending {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A store that cannot count now leaves the gauge out of this scrape.
        let Ok(notices) = self.0.pending_notices() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::try_from(notices).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "hartslag_alert_deliveries_pending",
            "Alert notices waiting in the outbox (scheduled repetitions not counted).",
            None,
            gauge.metric_type(),
        )?)
    }
}
