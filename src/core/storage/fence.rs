//! The generation a leader's writes carry, so that a deposed leader can write nothing.
//!
//! Several replicas share one database; exactly one leads (runs the deadline scheduler,
//! alert delivery, retention and the controllers). Mutual exclusion alone is not enough:
//! a leader that stalls (a long pause, a partition) may wake after another replica took
//! over and still hold a connection. So every write only a leader may make carries the
//! generation under which it leads, and the backend refuses it unless that generation is
//! still the current one ([`StorageError::Fenced`](super::StorageError::Fenced)). The
//! embedded backend serves one process, which always leads ([`Fence::sole`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// This process's leadership as writes see it: the generation it leads under, or none.
/// Cheap to clone; every clone sees the same value.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    generation: AtomicU64,
    /// Woken when a leading process is deposed, so the process stops at once instead of
    /// finding out at its next write.
    deposed: Notify,
}

/// Generations start at 1; 0 is "not leading".
const NOT_LEADING: u64 = 0;

impl Fence {
    /// A process that does not lead (yet): its leader-only writes are refused.
    pub fn follower() -> Self {
        Self::default()
    }

    /// The only process a store serves: it leads for as long as it runs.
    pub fn sole() -> Self {
        let fence = Self::default();
        fence.lead(1);
        fence
    }

    /// From now on this process leads under `generation` (never 0).
    pub fn lead(&self, generation: u64) {
        self.0
            .generation
            .store(generation.max(1), Ordering::Release);
    }

    /// This process no longer leads: its leader-only writes are refused from now on, and
    /// [`Fence::deposed`] resolves.
    pub fn depose(&self) {
        let was = self.0.generation.swap(NOT_LEADING, Ordering::AcqRel);
        if was != NOT_LEADING {
            self.0.deposed.notify_waiters();
        }
    }

    /// The generation this process leads under, if it leads.
    pub fn generation(&self) -> Option<u64> {
        match self.0.generation.load(Ordering::Acquire) {
            NOT_LEADING => None,
            g => Some(g),
        }
    }

    /// Resolves once this process does not lead: at once for a follower, or when a leader
    /// is deposed (a write of it was refused because another replica took over).
    pub async fn deposed(&self) {
        loop {
            let woken = self.0.deposed.notified();
            tokio::pin!(woken);
            // Registered before looking, so a deposition between the two is not missed.
            woken.as_mut().enable();
            if self.generation().is_none() {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_leads_once_told_and_every_clone_sees_it() {
        let fence = Fence::follower();
        let clone = fence.clone();
        assert_eq!(clone.generation(), None);
        fence.lead(7);
        assert_eq!(clone.generation(), Some(7));
        clone.depose();
        assert_eq!(fence.generation(), None);
        assert_eq!(Fence::sole().generation(), Some(1));
    }

    #[tokio::test]
    async fn a_leader_waiting_on_its_fence_learns_when_it_is_deposed() {
        let fence = Fence::follower();
        fence.lead(3);
        let waiting = tokio::spawn({
            let fence = fence.clone();
            async move { fence.deposed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        fence.depose();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        // A follower is not leading to begin with.
        Fence::follower().deposed().await;
    }
}
