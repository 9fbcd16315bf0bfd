//! Every monitor as readers see it, by key, in memory.
//!
//! A monitor is about 410 bytes, and a hash table grows by doubling: a map holding the
//! monitors themselves keeps up to twice that per monitor in empty slots (at a million
//! monitors, about 1 GB for the table alone). So each monitor is behind a pointer and the
//! table holds one pointer per slot; the monitor is found by the key it holds, with no
//! second copy of it. The pointer is shared ([`Arc`]) with the round that wrote the
//! monitor: publishing a round of a herd swaps thousands of pointers under the readers'
//! lock instead of copying thousands of monitors under it, and the engine thread, which
//! reads that lock for every monitor it steps, waits that much less (see
//! [`Monitors::put`]). The table hashes keys with foldhash, seeded per process.
//! Counts per state are kept as monitors change, so gauges and the dashboard never walk a
//! million boxes (and hold the engine's lock meanwhile) to count them.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::types::Monitor;
use crate::core::monitor::state::State;

/// The monitors by key.
#[derive(Debug, Default, Clone)]
pub struct Monitors {
    set: HashSet<Entry, foldhash::fast::RandomState>,
    /// How many are in each state, in the order of [`State::ALL`].
    by_state: [usize; State::ALL.len()],
}

fn slot(state: State) -> usize {
    State::ALL.iter().position(|s| *s == state).unwrap_or(0)
}

/// A shared monitor, hashed and compared by its key.
#[derive(Debug, Clone)]
struct Entry(Arc<Monitor>);

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so a lookup by `&str` finds it.
        self.0.def.key.as_str().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.def.key == other.0.def.key
    }
}

impl Eq for Entry {}

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.0.def.key
    }
}

impl Monitors {
    /// The monitor under `key`.
    pub fn get(&self, key: &str) -> Option<&Monitor> {
        self.set.get(key).map(|e| &*e.0)
    }

    /// Every monitor, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Monitor> {
        self.set.iter().map(|e| &*e.0)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// How many monitors are in `state`.
    pub fn count(&self, state: State) -> usize {
        self.by_state[slot(state)]
    }

    /// Stores `m` under its key, replacing the monitor there.
    pub(crate) fn insert(&mut self, m: Monitor) {
        drop(self.put(Arc::new(m)));
    }

    /// Stores `m` under its key and hands back the monitor it replaced: a caller holding a
    /// lock drops it after letting go, so freeing it costs the lock's holders nothing.
    pub(crate) fn put(&mut self, m: Arc<Monitor>) -> Option<Arc<Monitor>> {
        self.by_state[slot(m.state.state)] += 1;
        let old = self.set.replace(Entry(m))?;
        self.by_state[slot(old.0.state.state)] -= 1;
        Some(old.0)
    }

    /// Takes the monitor under `key` out.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Arc<Monitor>> {
        let m = self.set.take(key)?.0;
        self.by_state[slot(m.state.state)] -= 1;
        Some(m)
    }
}

impl FromIterator<Monitor> for Monitors {
    fn from_iter<I: IntoIterator<Item = Monitor>>(iter: I) -> Self {
        let mut m = Self::default();
        for monitor in iter {
            m.insert(monitor);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::types::sample as monitor;

    #[test]
    fn monitors_are_found_by_key_and_counted_by_state() {
        let mut all = Monitors::default();
        all.insert(monitor("a", State::New));
        all.insert(monitor("b", State::New));
        all.insert(monitor("a", State::Down));
        assert_eq!(all.len(), 2);
        assert_eq!(all.get("a").map(|m| m.state.state), Some(State::Down));
        assert!(all.get("c").is_none());
        assert_eq!((all.count(State::New), all.count(State::Down)), (1, 1));
        assert_eq!(
            all.remove("b").map(|m| m.def.key.clone()),
            Some("b".to_string())
        );
        assert!(all.remove("b").is_none());
        assert_eq!((all.count(State::New), all.count(State::Down)), (0, 1));
        let keys: Vec<&str> = all.values().map(|m| m.def.key.as_str()).collect();
        assert_eq!(keys, vec!["a"]);
    }
}
