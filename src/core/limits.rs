//! Per-Application limits: what one tenant may use of a shared server.
//!
//! Each Application may set its own in `spec.limits`; what it leaves unset comes from the
//! server's defaults ([`LimitDefaults`], flags). Four limits keep one tenant from
//! degrading the others: Heartbeats created through the management API, distinct event
//! names (every name is a set of rollup keys kept forever, read by every stats query), the
//! rate of ingested events per token, and the stats and export reads running at once
//! ([`ReadSlots`]), each of which keeps a core busy on a large Application.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::core::spec::ApplicationSpec;

/// The server's limits for Applications that do not set their own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitDefaults {
    /// Most Heartbeats per Application through the management API.
    pub heartbeats: u32,
    /// Most distinct event names per Application.
    pub event_names: u32,
    /// Events per second per Application token, sustained; 0 is no limit.
    pub ingest_rate: u32,
    /// Events an Application may send at once above the sustained rate.
    pub ingest_burst: u32,
    /// Stats and export reads per Application running at once.
    pub concurrent_reads: u32,
}

impl Default for LimitDefaults {
    fn default() -> Self {
        Self {
            heartbeats: 1000,
            event_names: 10_000,
            ingest_rate: 2000,
            ingest_burst: 10_000,
            concurrent_reads: 2,
        }
    }
}

/// An Application's limits, its spec's over the server's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppLimits {
    /// Most Heartbeats through the management API.
    pub heartbeats: u32,
    /// Most distinct event names.
    pub event_names: u32,
    /// Sustained events per second and burst; `None` is no limit.
    pub ingest: Option<(u32, u32)>,
    /// Stats and export reads running at once (at least 1).
    pub concurrent_reads: u32,
}

impl AppLimits {
    /// `spec.limits` over `defaults`.
    pub fn resolve(spec: &ApplicationSpec, defaults: &LimitDefaults) -> Self {
        let own = spec.limits.clone().unwrap_or_default();
        let rate = own.ingest_rate.unwrap_or(defaults.ingest_rate);
        let burst = own.ingest_burst.unwrap_or(defaults.ingest_burst).max(1);
        Self {
            heartbeats: own.heartbeats.unwrap_or(defaults.heartbeats),
            event_names: own.event_names.unwrap_or(defaults.event_names),
            ingest: (rate > 0).then_some((rate, burst)),
            concurrent_reads: own
                .concurrent_reads
                .unwrap_or(defaults.concurrent_reads)
                .max(1),
        }
    }
}

/// A token bucket of one Application's ingest, in the form of the generic cell rate
/// algorithm: one atomic "theoretical arrival time" instead of a count and a timestamp
/// under a lock, so checking it on every event costs a load and a compare-and-swap.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time between events at the sustained rate, in nanoseconds.
    interval: u64,
    /// How far ahead of now the arrival time may run: the burst.
    tolerance: u64,
    /// When the next event would arrive at the sustained rate, in nanoseconds since
    /// `epoch`.
    tat: AtomicU64,
    epoch: Instant,
}

impl RateLimiter {
    /// `per_sec` events per second sustained, `burst` at once (at least 1 each).
    pub fn new(per_sec: u32, burst: u32) -> Self {
        // At least a nanosecond: a rate past a billion a second would otherwise leave no
        // tolerance at all, and requests racing each other would be refused.
        let interval = (1_000_000_000 / u64::from(per_sec.max(1))).max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1)) - 1),
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Takes one event at `now`; `Err` holds how long until one would be allowed.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let t =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(t);
            if start - t > self.tolerance {
                return Err(Duration::from_nanos(start - t - self.tolerance));
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Whether this limiter enforces `per_sec` and `burst` (a spec edit replaces it).
    pub fn is_for(&self, per_sec: u32, burst: u32) -> bool {
        let other = Self::new(per_sec, burst);
        (self.interval, self.tolerance) == (other.interval, other.tolerance)
    }
}

/// The stats and export reads running now, of one Application (or of the whole server:
/// the HTTP layer keeps one more for every Application together). A read takes a
/// [`ReadSlot`] before it starts and gives it back when it ends (an export: when it stops
/// streaming), so one tenant's heavy reads occupy at most its limit's worth of the
/// server's cores and storage connections, whatever it sends. A counter rather than a
/// semaphore: a spec edit changes the limit without losing count of the reads running.
#[derive(Debug, Default)]
pub struct ReadSlots {
    busy: AtomicU32,
}

impl ReadSlots {
    /// A slot when fewer than `limit` reads are running; `None` at the limit.
    pub fn take(self: &Arc<Self>, limit: u32) -> Option<ReadSlot> {
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit.max(1)).then_some(n + 1)
            })
            .ok()?;
        Some(ReadSlot {
            slots: self.clone(),
        })
    }

    /// Reads running now.
    pub fn busy(&self) -> u32 {
        self.busy.load(Ordering::Acquire)
    }
}

/// One running read's place in its [`ReadSlots`], given back on drop.
#[derive(Debug)]
pub struct ReadSlot {
    slots: Arc<ReadSlots>,
}

impl Drop for ReadSlot {
    fn drop(&mut self) {
        self.slots.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::Limits;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.check(t0).is_ok());
        }
        let wait = l.check(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // One more every 100 ms after that.
        assert!(l.check(t0 + Duration::from_millis(100)).is_ok());
        assert!(l.check(t0 + Duration::from_millis(100)).is_err());
        // A long quiet spell refills the burst, never more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(l.check(later).is_ok());
        }
        assert!(l.check(later).is_err());
    }

    #[test]
    fn a_rate_past_a_billion_a_second_refuses_no_racing_request() {
        let l = RateLimiter::new(u32::MAX, u32::MAX);
        let t0 = Instant::now();
        // One request's clock read later than another's, which then takes its turn.
        assert!(l.check(t0 + Duration::from_micros(50)).is_ok());
        assert!(l.check(t0).is_ok());
    }

    #[test]
    fn threads_never_take_more_than_the_burst_at_once() {
        let l = std::sync::Arc::new(RateLimiter::new(1, 1000));
        let t0 = Instant::now();
        let taken: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || (0..1000).filter(|_| l.check(t0).is_ok()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 1000);
    }

    #[test]
    fn spec_limits_override_the_defaults_and_zero_turns_the_rate_off() {
        let d = LimitDefaults::default();
        let spec = ApplicationSpec::default();
        assert_eq!(
            AppLimits::resolve(&spec, &d),
            AppLimits {
                heartbeats: 1000,
                event_names: 10_000,
                ingest: Some((2000, 10_000)),
                concurrent_reads: 2,
            }
        );
        let spec = ApplicationSpec {
            limits: Some(Limits {
                heartbeats: Some(3),
                event_names: Some(50),
                ingest_rate: Some(0),
                ingest_burst: None,
                concurrent_reads: Some(0),
            }),
            ..Default::default()
        };
        let l = AppLimits::resolve(&spec, &d);
        assert_eq!((l.heartbeats, l.event_names, l.ingest), (3, 50, None));
        assert_eq!(l.concurrent_reads, 1, "at least one read runs");
    }

    #[test]
    fn read_slots_stop_at_the_limit_and_come_back_when_a_read_ends() {
        let slots = Arc::new(ReadSlots::default());
        let first = slots.take(2).unwrap();
        let second = slots.take(2).unwrap();
        assert!(slots.take(2).is_none());
        assert_eq!(slots.busy(), 2);
        drop(first);
        let third = slots.take(2).unwrap();
        // A lowered limit refuses new reads until the running ones are under it.
        assert!(slots.take(1).is_none());
        drop((second, third));
        assert_eq!(slots.busy(), 0);
        assert!(slots.take(1).is_some());
    }
}
