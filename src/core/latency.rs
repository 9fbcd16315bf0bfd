//! A fine-grained latency record: every observation counted in a bucket about 3 % wide, so
//! percentiles of disk flushes (tens to hundreds of microseconds, with a long tail) or of
//! how late Down transitions were applied (milliseconds to seconds) can be read over any
//! interval, by diffing two snapshots, without keeping the samples.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two (and the number of exact one-microsecond buckets below
/// the first power of two that is split).
const SUB: u64 = 32;
const SUB_BITS: u32 = 5;

/// Largest recorded value in microseconds (about 18 minutes); longer ones count as it.
const MAX_MICROS: u64 = 1 << 30;

/// Buckets: 32 exact ones, then 32 per power of two up to [`MAX_MICROS`].
const BUCKETS: usize = (SUB + (30 - SUB_BITS as u64 + 1) * SUB) as usize;

fn bucket_of(micros: u64) -> usize {
    let v = micros.min(MAX_MICROS - 1);
    if v < SUB {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros();
    let shift = octave - SUB_BITS;
    let sub = (v >> shift) - SUB;
    (SUB + u64::from(octave - SUB_BITS) * SUB + sub) as usize
}

/// Lower and upper bound (microseconds) of bucket `i`.
fn bounds_of(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i + 1);
    }
    let shift = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    let lower = (SUB + sub) << shift;
    (lower, lower + (1 << shift))
}

/// Counts of observations per bucket; share it between the threads that observe.
#[derive(Debug)]
pub struct LatencyRecord {
    counts: Box<[AtomicU64]>,
}

impl Default for LatencyRecord {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyRecord {
    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, to diff against a later snapshot.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// The counts of a [`LatencyRecord`] at one moment, or between two moments.
#[derive(Debug, Clone, Default)]
pub struct LatencySnapshot {
    counts: Vec<u64>,
}

impl LatencySnapshot {
    /// What was observed after `earlier` (a snapshot of the same record).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The observations of both.
    pub fn plus(&self, other: &LatencySnapshot) -> LatencySnapshot {
        let n = self.counts.len().max(other.counts.len());
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        LatencySnapshot {
            counts: (0..n)
                .map(|i| at(&self.counts, i) + at(&other.counts, i))
                .collect(),
        }
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0..=1), as the middle of its bucket; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds_of(i);
                return Some(Duration::from_nanos((lo + hi) * 500));
            }
        }
        None
    }

    /// Mean of the observations, from bucket middles.
    pub fn mean(&self) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let sum: f64 = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (lo, hi) = bounds_of(i);
                *c as f64 * (lo + hi) as f64 / 2.0
            })
            .sum();
        Some(Duration::from_nanos((sum / total as f64 * 1000.0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_and_stay_within_three_percent() {
        let mut last = 0;
        for v in (0..5000).chain([65_535, 1 << 20, MAX_MICROS - 1, u64::MAX]) {
            let i = bucket_of(v);
            assert!(i < BUCKETS, "{v} → {i}");
            assert!(i >= last || v > 5000, "buckets out of order at {v}");
            last = i;
            let (lo, hi) = bounds_of(i);
            let v = v.min(MAX_MICROS - 1);
            assert!(lo <= v && v < hi, "{v} not in [{lo}, {hi})");
            assert!(
                (hi - lo) as f64 <= (lo as f64 / 32.0).max(1.0),
                "{lo}..{hi}"
            );
        }
    }

    #[test]
    fn quantiles_of_an_interval() {
        let r = LatencyRecord::default();
        for _ in 0..10 {
            r.observe(Duration::from_micros(5000));
        }
        let before = r.snapshot();
        for us in 1..=100 {
            r.observe(Duration::from_micros(us * 10));
        }
        let d = r.snapshot().since(&before);
        assert_eq!(d.count(), 100);
        let p50 = d.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = d.quantile(0.99).unwrap().as_micros() as f64;
        assert!((p50 - 500.0).abs() <= 16.0, "{p50}");
        assert!((p99 - 990.0).abs() <= 32.0, "{p99}");
        let mean = d.mean().unwrap().as_micros() as f64;
        assert!((mean - 505.0).abs() <= 16.0, "{mean}");
        assert_eq!(LatencySnapshot::default().quantile(0.5), None);
    }
}
