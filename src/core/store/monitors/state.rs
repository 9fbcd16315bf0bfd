//! A monitor's state record: what a round that changed nothing but a monitor's state
//! (a ping, a deadline, a Job's evidence) writes in place of the whole record.
//!
//! The whole record holds the definition too (targets, token hash, ping hint, alerting
//! settings), a kilobyte or more; encoding, logging and applying it for every ping was
//! most of what a ping cost the engine and the committer. The state record holds
//! [`MonitorState`](crate::core::monitor::state::MonitorState) and the last run's duration, as JSON like every record of the tree
//! (about 150 bytes for a monitor pinged on an interval).
//!
//! The encoding is the port's ([`state_record`]), shared with every backend. It lives
//! under [`Family::State`](super::keys::Family::State) with the monitor's number, so
//! the state records sort like the monitor records and loading merges both ranges in one
//! pass, and a herd's state records are written in the order they sit in. Ordering: a state record is always newer than the state inside the monitor's
//! record, because every write of the whole record (and every removal) removes the state
//! record in the same commit-log record. A store written before state records existed has
//! none, and loads as it did.

use crate::core::monitor::engine::Monitor;
use crate::core::storage::{StorageError, state_record};
use crate::core::store::StoreError;

/// `m`'s state record ([`state_record::encode`]).
pub(super) fn encode(m: &Monitor) -> Result<Vec<u8>, StoreError> {
    state_record::encode(m).map_err(|e| StoreError::Write(e.to_string()))
}

/// `m` with the state of the stored state record `v` in place of its own
/// ([`state_record::apply`]).
pub(super) fn apply(m: &mut Monitor, v: &[u8]) -> Result<(), StoreError> {
    state_record::apply(m, v).map_err(|e| match e {
        StorageError::Corrupt { what, detail } => StoreError::Corrupt { what, detail },
        other => StoreError::Write(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alert::message::Target;
    use crate::core::monitor::engine::sample;
    use crate::core::monitor::state::State;

    #[test]
    fn a_state_record_carries_the_state_and_the_last_run_and_is_small() {
        let mut m = sample("ns/nightly-backup", State::Up);
        m.state.last_ping_at = Some(m.state.since);
        m.state.deadline = Some(m.state.since);
        m.state.pings = 1_234_567;
        m.last_run_ms = Some(42_000);
        m.def.targets = vec![Target::Webhook {
            url: "https://alerts.example.com/hooks/hartslag".into(),
        }];
        m.def = m.def.edited(|d| {
            d.ping_hint = "curl -fsS -X POST https://hartslag.example.com/ping/…".into()
        });
        let v = encode(&m).unwrap();
        let whole = serde_json::to_vec(&m).unwrap();
        assert!(v.len() < 200, "{} bytes", v.len());
        assert!(
            v.len() * 2 < whole.len(),
            "{} of {} bytes",
            v.len(),
            whole.len()
        );

        eprintln!(
            "state record {} bytes, whole record {}",
            v.len(),
            whole.len()
        );

        let mut loaded = m.clone();
        (loaded.state, loaded.last_run_ms) = (sample("ns/other", State::Down).state, None);
        apply(&mut loaded, &v).unwrap();
        assert_eq!(loaded, m);
        assert!(matches!(
            apply(&mut loaded, b"{\"state\":"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
