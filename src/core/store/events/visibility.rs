//! Read-your-writes for events answered before sled has them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// Read-your-writes for events answered before sled has them: the ingest writer answers a
/// batch once its record is on disk and applies it to sled right after, so every query
/// first waits until the last answered batch is applied (normally already true, otherwise
/// a few tens of microseconds).
#[derive(Debug, Default)]
pub struct Visibility {
    acknowledged: AtomicU64,
    applied: Mutex<u64>,
    caught_up: Condvar,
}

impl Visibility {
    /// Batch `seq` is about to be answered.
    pub(super) fn acknowledged(&self, seq: u64) {
        self.acknowledged.store(seq, Ordering::Release);
    }

    /// Batch `seq` is applied to sled (or failed; nothing more will arrive for it). Never
    /// goes back: after a failure, a batch already told `Durable` may hear `Failed` after
    /// later ones did.
    pub(super) fn applied(&self, seq: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        *applied = (*applied).max(seq);
        self.caught_up.notify_all();
    }

    /// Waits until everything answered so far is readable from sled.
    pub fn wait(&self) {
        if !self.wait_within(std::time::Duration::from_secs(1)) {
            tracing::warn!("a query gave up waiting for the ingest writer to apply its last batch");
        }
    }

    /// Waits up to `within` until everything answered so far is in sled; whether it is.
    pub fn wait_within(&self, within: std::time::Duration) -> bool {
        let target = self.acknowledged.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + within;
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        while *applied < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let (guard, _) = self
                .caught_up
                .wait_timeout(applied, left)
                .unwrap_or_else(|p| p.into_inner());
            applied = guard;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn queries_wait_for_answered_batches_to_be_applied() {
        let v = Arc::new(Visibility::default());
        v.wait(); // nothing answered: returns at once
        v.acknowledged(1);
        let started = std::time::Instant::now();
        let applier = {
            let v = v.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                v.applied(1);
            })
        };
        v.wait();
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        assert_eq!(*v.applied.lock().unwrap(), 1);
        applier.join().unwrap();
    }

    #[test]
    fn a_batch_that_fails_after_later_ones_does_not_take_the_mark_back() {
        // After a failed apply, a batch already durable hears `Failed` on the apply thread
        // after the batches queued behind it heard theirs.
        let v = Visibility::default();
        v.acknowledged(3);
        v.applied(3);
        v.applied(2);
        assert_eq!(*v.applied.lock().unwrap(), 3);
    }
}
