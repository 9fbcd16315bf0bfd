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

/// This process's leadership as writes see it: the generation it leads under, or none.
/// Cheap to clone; every clone sees the same value.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<AtomicU64>);

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
        self.0.store(generation.max(1), Ordering::Release);
    }

    /// This process no longer leads: its leader-only writes are refused from now on.
    pub fn depose(&self) {
        self.0.store(NOT_LEADING, Ordering::Release);
    }

    /// The generation this process leads under, if it leads.
    pub fn generation(&self) -> Option<u64> {
        match self.0.load(Ordering::Acquire) {
            NOT_LEADING => None,
            g => Some(g),
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
}
