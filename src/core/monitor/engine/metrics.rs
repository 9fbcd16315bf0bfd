//! The engine's families on `/metrics`: monitors by state, pings and alerts by kind, and
//! how late Down transitions were applied.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use jiff::Timestamp;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use std::sync::Arc;

use super::PingKind;
use super::herd::Place;
use super::worker::Snapshot;
use crate::core::alert::message::AlertKind;
use crate::core::latency::LatencyRecord;
use crate::core::metrics::{Histogram, MetricRegistry};
use crate::core::monitor::state::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// What the engine has done since start. Each kind's counter is fetched from its family
/// once, so counting a ping is one atomic add.
#[derive(Debug)]
pub struct EngineStats {
    ping_family: Family<KindLabel, Counter>,
    alert_family: Family<KindLabel, Counter>,
    pings: [Counter; 3],
    alerts: [Counter; 3],
    /// Time-driven transitions applied (read by the monitors benchmark).
    pub transitions: AtomicU64,
    /// How long after its due time (deadline plus grace) each Down transition was
    /// applied: on disk, seen by readers and its alert queued.
    pub down_lateness: Histogram,
    /// The same, finely (buckets about 3 % wide), for the benchmarks' quantiles.
    pub down_lateness_record: LatencyRecord,
    /// How late each Down was when the engine thread stepped it, before its round went to
    /// the store: what `down_lateness` adds on top of it is the store's share (and the
    /// readers'), the rest came before the step (the scheduler, the herd, the engine
    /// waiting for room). For the benchmarks, which tell the two apart.
    pub down_stepped_record: LatencyRecord,
    /// How late each Down that came due in the scheduler was when its deadline reached
    /// the engine thread: the delivery's share of `down_stepped_record`.
    pub down_arrived_record: LatencyRecord,
    /// Microseconds the engine thread waited with nothing to do.
    pub idle_micros: AtomicU64,
    /// Microseconds the engine thread waited for the store to make room for a round
    /// ([`MAX_IN_FLIGHT`](super::worker::MAX_IN_FLIGHT)).
    pub room_wait_micros: AtomicU64,
    /// Rounds that waited for the rounds ahead of them to reach the disk
    /// ([`ROUNDS_AHEAD`](super::worker::ROUNDS_AHEAD)), gathering what came meanwhile.
    pub gathered: AtomicU64,
    /// Microseconds the engine thread spent so.
    pub gather_micros: AtomicU64,
    /// Rounds the engine thread handed to the store itself: small, with few commands
    /// waiting behind them, while nothing was queued for the handover thread
    /// ([`DIRECT_AT_MOST`](super::handover::DIRECT_AT_MOST)).
    pub direct_rounds: AtomicU64,
}

impl Default for EngineStats {
    fn default() -> Self {
        let ping_family = Family::<KindLabel, Counter>::default();
        let alert_family = Family::<KindLabel, Counter>::default();
        let pings = ["success", "start", "fail"]
            .map(|kind| ping_family.get_or_create_owned(&KindLabel { kind }));
        let alerts = ["down", "recovery", "stopped"]
            .map(|kind| alert_family.get_or_create_owned(&KindLabel { kind }));
        Self {
            ping_family,
            alert_family,
            pings,
            alerts,
            transitions: AtomicU64::new(0),
            down_lateness: Histogram::default(),
            down_lateness_record: LatencyRecord::default(),
            down_stepped_record: LatencyRecord::default(),
            room_wait_micros: AtomicU64::new(0),
            down_arrived_record: LatencyRecord::default(),
            idle_micros: AtomicU64::new(0),
            gathered: AtomicU64::new(0),
            gather_micros: AtomicU64::new(0),
            direct_rounds: AtomicU64::new(0),
        }
    }
}

impl EngineStats {
    pub(super) fn count_ping(&self, kind: PingKind) {
        let i = match kind {
            PingKind::Success => 0,
            PingKind::Start => 1,
            PingKind::Fail => 2,
        };
        self.pings[i].inc();
    }

    /// Counts how late a Down due `at` was when the engine thread stepped it `now`.
    pub(super) fn observe_stepped(&self, at: Timestamp, now: Timestamp) {
        let late = Duration::try_from(now.duration_since(at)).unwrap_or_default();
        self.down_stepped_record.observe(late);
    }

    /// Counts how late the Downs among deadlines that reached the engine thread `now` were.
    pub(super) fn observe_arrivals(&self, keys: &[(Arc<str>, Place)], now: Timestamp) {
        for (_, place) in keys {
            if place.is_due(now) && !place.is_unknown() {
                self.down_arrived_record.observe(place.late_at(now));
            }
        }
    }

    /// Adds the microseconds since `since` to `total`.
    pub(super) fn add_since(total: &AtomicU64, since: std::time::Instant) {
        let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        total.fetch_add(micros, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts how late each Down due at one of `due` was, applied `now`.
    pub(super) fn observe_down_lateness(&self, due: &[Timestamp], now: Timestamp) {
        for at in due {
            let late = Duration::try_from(now.duration_since(*at)).unwrap_or_default();
            self.down_lateness.observe(late);
            self.down_lateness_record.observe(late);
        }
    }

    pub(super) fn count_alert(&self, kind: AlertKind) {
        match kind {
            AlertKind::Down | AlertKind::Flapping => {
                self.alerts[0].inc();
            }
            AlertKind::Recovery => {
                self.alerts[1].inc();
            }
            // The notice that closes an incident because monitoring stopped (paused,
            // removed, suspended while Down): it pages no one but ends what was paged, as
            // a recovery does, so it is counted beside the recoveries, under its own kind.
            AlertKind::Stopped => {
                self.alerts[2].inc();
            }
            // Warnings are no alerts of their own.
            AlertKind::Late | AlertKind::OnTime => {}
        }
    }

    /// Registers the engine's families; monitors by state are counted at each scrape.
    pub(super) fn register(&self, snapshot: Snapshot, registry: &mut MetricRegistry) {
        registry.register(
            "hartslag_pings",
            "Pings received by kind",
            self.ping_family.clone(),
        );
        registry.register(
            "hartslag_alerts",
            "Alerts raised by kind",
            self.alert_family.clone(),
        );
        registry.register_with_unit(
            "hartslag_down_transition_lateness",
            "How long after its due time a Down transition was applied",
            Unit::Seconds,
            self.down_lateness.clone(),
        );
        registry.register_collector(Box::new(MonitorsByState(snapshot)));
    }
}

/// The `hartslag_monitors` gauge, counted from the readers' snapshot.
struct MonitorsByState(Snapshot);

impl std::fmt::Debug for MonitorsByState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorsByState").finish_non_exhaustive()
    }
}

impl Collector for MonitorsByState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = {
            let all = self.0.read().unwrap_or_else(|p| p.into_inner());
            State::ALL.map(|s| i64::try_from(all.count(s)).unwrap_or(i64::MAX))
        };
        let mut family = encoder.encode_descriptor(
            "hartslag_monitors",
            "Heartbeat monitors by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in State::ALL.iter().zip(counts) {
            let label = StateLabel {
                state: state.as_str(),
            };
            ConstGauge::new(n).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `hartslag_alerts_total` lines of `stats`.
    fn alerts_text(stats: &EngineStats) -> String {
        let mut registry = MetricRegistry::default();
        registry.register("hartslag_alerts", "Alerts", stats.alert_family.clone());
        crate::core::metrics::encode(&registry)
    }

    #[test]
    fn a_closing_because_monitoring_stopped_is_counted_under_its_own_kind() {
        let stats = EngineStats::default();
        for kind in [
            AlertKind::Down,
            AlertKind::Stopped,
            AlertKind::Stopped,
            AlertKind::Recovery,
            AlertKind::Late,
            AlertKind::OnTime,
            AlertKind::Flapping,
        ] {
            stats.count_alert(kind);
        }
        let text = alerts_text(&stats);
        for line in [
            "hartslag_alerts_total{kind=\"down\"} 2",
            "hartslag_alerts_total{kind=\"recovery\"} 1",
            "hartslag_alerts_total{kind=\"stopped\"} 2",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        // Every kind is there from the start, at zero.
        let fresh = alerts_text(&EngineStats::default());
        assert!(
            fresh.contains("hartslag_alerts_total{kind=\"stopped\"} 0"),
            "{fresh}"
        );
    }
}
