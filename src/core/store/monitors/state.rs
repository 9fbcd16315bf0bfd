//! A monitor's state record: what a round that changed nothing but a monitor's state
//! (a ping, a deadline, a Job's evidence) writes in place of the whole record.
//!
//! The whole record holds the definition too (targets, token hash, ping hint, alerting
//! settings), a kilobyte or more; encoding, logging and applying it for every ping was
//! most of what a ping cost the engine and the committer. The state record holds
//! [`MonitorState`](crate::core::monitor::state::MonitorState) and the last run's duration, as JSON like every record of the tree
//! (about 150 bytes for a monitor pinged on an interval).
//!
//! The encoding is the port's ([`state_record`]), shared with every backend. It goes to
//! the monitor's slot in the state file ([`states`]): one
//! positional write, where an insert into sled fetched and copied a B-tree leaf that a
//! million monitors keep out of sled's cache. A state record too long for a slot (a
//! monitor that remembers many Jobs) lives in sled under
//! [`Family::State`] with the monitor's number instead, and
//! its slot is cleared in the same commit-log record; the next one that fits clears it
//! from sled. So a monitor's state is in at most one of the two places.
//!
//! Ordering: a state record is always newer than the state inside the monitor's record,
//! because every write of the whole record (and every removal) clears both places in
//! the same commit-log record. A store written before state records existed has none,
//! and loads as it did; one written before the state file keeps them in sled, and they
//! move to the state file when a server opens it ([`move_to_state_file`]).

use std::collections::HashSet;

use super::keys::{Family, STATE_FILE_KEY, state_key};
use crate::core::monitor::engine::Monitor;
use crate::core::storage::{StorageError, state_record};
use crate::core::store::StoreError;
use crate::core::store::commit::Committer;
use crate::core::store::states::{self, CAPACITY, StateFile, StatesError};
use crate::core::store::wal::Mutation;

/// State records moved to the state file per commit-log record.
const CHUNK: usize = 1024;

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

/// Whether a state record fits a slot of the state file.
fn fits(record: &[u8]) -> bool {
    !record.is_empty() && record.len() <= CAPACITY
}

/// Adds the writes that make `record` monitor `num`'s state: into its slot when it fits
/// (removing the one kept in sled, if `in_sled` says there is one), otherwise into sled
/// with the slot cleared (unless it was cleared when the record went to sled before).
/// Returns whether monitor `num` has its state record in sled afterwards.
pub(super) fn write(
    writes: &mut Vec<Mutation>,
    (tree, states): (&sled::Tree, &StateFile),
    num: u64,
    record: Vec<u8>,
    in_sled: bool,
) -> bool {
    if fits(&record) && states::addressable(num) {
        writes.push(Mutation::state(states, num, Some(record)));
        if in_sled {
            writes.push(Mutation::remove(tree, state_key(num).to_vec()));
        }
        false
    } else {
        // Read back only when the monitors are loaded: never pending.
        writes.push(Mutation::put_unread(tree, state_key(num).to_vec(), record));
        if !in_sled {
            clear(writes, states, num);
        }
        true
    }
}

/// Adds the write that clears monitor `num`'s slot, if it has one.
pub(super) fn clear(writes: &mut Vec<Mutation>, states: &StateFile, num: u64) {
    if states::addressable(num) {
        writes.push(Mutation::state(states, num, None));
    }
}

/// Checks that the state file is the one the database's monitors were written with, and
/// records its id in the database the first time (before any slot is written): a state
/// file lost or replaced since would otherwise give every monitor the state of its last
/// definition change, silently.
pub(super) fn claim_state_file(tree: &sled::Tree, committer: &Committer) -> Result<(), StoreError> {
    let states = committer.states();
    if is_claimed(tree, states)? {
        // A file claimed before the header kept the mark gets it now.
        return Ok(states.mark_claimed()?);
    }
    // Slots are written only after the claim, and the mark only once the claim is
    // durable: either in a file the database has no record of means the database the
    // file was made with is gone.
    if states.has_slots()? || states.marked_claimed() {
        return Err(StoreError::States(StatesError::Unclaimed {
            path: states.path().to_path_buf(),
        }));
    }
    committer.log_blocking(vec![Mutation::put(
        tree,
        STATE_FILE_KEY.to_vec(),
        states.id().to_vec(),
    )])?;
    Ok(states.mark_claimed()?)
}

/// Whether the database recorded `states` as its state file (`false`: none yet); another
/// file recorded is an error. Readers of a store (`migrate`, `dump`) check this alone.
pub(super) fn is_claimed(tree: &sled::Tree, states: &StateFile) -> Result<bool, StoreError> {
    match tree.get(STATE_FILE_KEY)? {
        Some(id) if id.as_ref() == states.id().as_slice() => Ok(true),
        Some(_) => {
            states.discard_if_made_now();
            Err(StoreError::States(StatesError::Foreign {
                path: states.path().to_path_buf(),
            }))
        }
        None => Ok(false),
    }
}

/// Moves the state records kept in sled that fit a slot to the state file, a chunk per
/// commit-log record (each moved record written to its slot and removed from sled in
/// the same record, so a crash leaves it in one place or the other); returns how many
/// moved.
pub(super) fn move_to_state_file(
    tree: &sled::Tree,
    committer: &Committer,
) -> Result<usize, StoreError> {
    let mut moved = 0;
    let mut from = vec![Family::State as u8];
    loop {
        let mut writes = Vec::new();
        let mut last = None;
        for item in tree.range(from.as_slice()..).take(CHUNK) {
            let (k, v) = item?;
            if k.first() != Some(&(Family::State as u8)) {
                break;
            }
            if let Some(num) = number(&k)
                && fits(&v)
                && states::addressable(num)
            {
                writes.push(Mutation::state(committer.states(), num, Some(v.to_vec())));
                writes.push(Mutation::remove(tree, k.to_vec()));
                moved += 1;
            }
            last = Some(k);
        }
        let Some(last) = last else {
            return Ok(moved);
        };
        if !writes.is_empty() {
            committer.log_blocking(writes)?;
        }
        // The next key after the last one read.
        from = [last.as_ref(), &[0]].concat();
    }
}

/// The monitors whose state record is kept in sled (too long for a slot).
pub(super) fn kept_in_sled(tree: &sled::Tree) -> Result<HashSet<u64>, StoreError> {
    let mut kept = HashSet::new();
    for k in tree.scan_prefix([Family::State as u8]).keys() {
        if let Some(num) = number(&k?) {
            kept.insert(num);
        }
    }
    Ok(kept)
}

/// The monitor number in a state record's key.
fn number(key: &[u8]) -> Option<u64> {
    let num: [u8; 8] = key.get(1..)?.try_into().ok()?;
    Some(u64::from_be_bytes(num))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alert::message::Target;
    use crate::core::monitor::engine::sample;
    use crate::core::monitor::state::State;

    #[test]
    fn a_busy_monitors_state_record_fits_a_slot_of_the_state_file() {
        use crate::core::monitor::state::DownReason;
        // Every timestamp to the nanosecond, as pings and deadlines set them.
        let at: jiff::Timestamp = "2026-12-05T22:21:40.020728805Z".parse().unwrap();
        let mut m = sample("some-long-namespace/nightly-database-backup", State::Down);
        m.num = u64::MAX / 1024;
        m.state.since = at;
        m.state.last_ping_at = Some(at);
        m.state.run_started_at = Some(at);
        m.state.last_fail_at = Some(at);
        m.state.deadline = Some(at);
        m.state.last_alert_at = Some(at);
        m.state.down_reason = Some(DownReason::Failed {
            exit_code: Some(255),
        });
        m.state.incident_open = true;
        m.state.pings = u64::MAX;
        m.state.failures = u32::MAX;
        m.last_run_ms = Some(u64::MAX);
        let v = encode(&m).unwrap();
        assert!(v.len() <= CAPACITY, "{} bytes", v.len());
    }

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
