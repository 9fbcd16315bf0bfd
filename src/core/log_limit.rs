//! At most one log line per period for a warning that can repeat once per monitor: a
//! herd of a hundred thousand monitors all going Down with no alert target (or all
//! failing to be written while the disk is full) would otherwise log a line each, fill
//! the node's log and cost the engine more than the Downs themselves.
//!
//! The line let through says how many like it were held back since the one before, so
//! nothing is hidden, only counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `last` before any line was let through.
const NEVER: u64 = u64::MAX;

/// Lets one line through per period; shared by the threads that log it.
#[derive(Debug)]
pub struct LogLimit {
    period: Duration,
    base: Instant,
    /// When the last line went through, in microseconds since `base` ([`NEVER`]: none).
    last: AtomicU64,
    /// Lines held back since the last one let through.
    held: AtomicU64,
}

impl LogLimit {
    /// A limit that lets the first line through at once, then one per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            base: Instant::now(),
            last: AtomicU64::new(NEVER),
            held: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with how many were held back since the
    /// last one let through, `None` (counted) while the period since it has not passed.
    pub fn pass(&self) -> Option<u64> {
        self.pass_at(Instant::now())
    }

    /// Lines held back since the last one let through.
    pub fn held_back(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn pass_at(&self, now: Instant) -> Option<u64> {
        let now = u64::try_from(now.saturating_duration_since(self.base).as_micros())
            .unwrap_or(NEVER - 1);
        let period = u64::try_from(self.period.as_micros()).unwrap_or(NEVER);
        let last = self.last.load(Ordering::Relaxed);
        let open = last == NEVER || now.saturating_sub(last) >= period;
        // Of threads that find the period over at once, one lets its line through.
        if open
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_next_counts_those_held_back() {
        let limit = LogLimit::new(Duration::from_secs(60));
        let t0 = limit.base;
        assert_eq!(limit.pass_at(t0), Some(0), "the first line goes through");
        for s in 1..60 {
            assert_eq!(limit.pass_at(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(limit.pass_at(t0 + Duration::from_secs(60)), Some(59));
        assert_eq!(limit.pass_at(t0 + Duration::from_secs(61)), None);
        assert_eq!(limit.pass_at(t0 + Duration::from_secs(300)), Some(1));
    }

    #[test]
    fn threads_at_once_let_one_line_through_and_every_other_is_counted() {
        let limit = std::sync::Arc::new(LogLimit::new(Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || {
                    (0..1000).filter_map(|_| limit.pass()).collect::<Vec<_>>()
                })
            })
            .collect();
        let passed: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        assert_eq!(passed.len(), 1, "one line went through");
        // A line held back while the first went through may be counted in it.
        assert_eq!(passed[0] + limit.held_back(), 3999);
    }
}
