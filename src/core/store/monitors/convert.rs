//! Converting the monitor records and state records that earlier versions keyed by
//! `namespace/name` into the layout by number ([`super::keys::Family`]), once, when a
//! server opens the store.
//!
//! Each chunk of monitors is one commit-log record: a monitor's record and state record
//! move together, their old keys removed in the same record, so a crash midway leaves
//! every monitor in exactly one layout, and the next start converts the rest. Loading
//! reads both layouts ([`super::load`]), so a store that was never opened since the
//! upgrade (`hartslag migrate`, `dump`) is read as it is.

use serde::Deserialize;

use super::keys::{Family, monitor_key, state_key};
use crate::core::store::StoreError;
use crate::core::store::commit::Committer;
use crate::core::store::wal::Mutation;

/// Monitors moved per commit-log record.
const CHUNK: usize = 1024;

/// The one field of a monitor's record the conversion needs.
#[derive(Deserialize)]
struct Numbered {
    num: u64,
}

/// Moves every record by name to its number; returns how many monitors moved. State
/// records by name whose monitor has no record (none of a live monitor's: loading skips
/// them) are removed.
pub(super) fn convert_named_records(
    tree: &sled::Tree,
    committer: &Committer,
) -> Result<usize, StoreError> {
    let mut converted = 0;
    loop {
        let mut writes = Vec::new();
        let mut moved = 0;
        for item in tree.scan_prefix([Family::NamedMonitor as u8]).take(CHUNK) {
            let (k, v) = item?;
            let name = k.get(1..).unwrap_or_default();
            let Numbered { num } = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                what: format!("monitor record {}", String::from_utf8_lossy(name)),
                detail: e.to_string(),
            })?;
            let named_state = [&[Family::NamedState as u8][..], name].concat();
            match tree.get(&named_state)? {
                Some(state) => {
                    writes.push(Mutation::put(tree, state_key(num).to_vec(), state.to_vec()));
                    writes.push(Mutation::remove(tree, named_state));
                }
                None => writes.push(Mutation::remove(tree, state_key(num).to_vec())),
            }
            writes.push(Mutation::put(tree, monitor_key(num).to_vec(), v.to_vec()));
            writes.push(Mutation::remove(tree, k.to_vec()));
            moved += 1;
        }
        if moved == 0 {
            break;
        }
        committer.log_blocking(writes)?;
        converted += moved;
    }
    loop {
        let orphans = tree
            .scan_prefix([Family::NamedState as u8])
            .keys()
            .take(CHUNK)
            .map(|k| k.map(|k| Mutation::remove(tree, k.to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        if orphans.is_empty() {
            return Ok(converted);
        }
        committer.log_blocking(orphans)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::{Monitor, sample};
    use crate::core::monitor::state::State;
    use crate::core::store::monitors::keys::{named_monitor_key, named_state_key};
    use crate::core::store::monitors::state;

    fn db() -> (tempfile::TempDir, Committer, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("monitors").unwrap();
        let (committer, _) = Committer::spawn(db, dir.path()).unwrap();
        (dir, committer, tree)
    }

    fn monitor(i: u64) -> Monitor {
        let mut m = sample(&format!("ns/m{i:05}"), State::Up);
        m.num = 3 * i + 1;
        m.state.pings = i;
        m
    }

    #[test]
    fn records_by_name_move_to_their_number_with_their_state_and_orphans_go() {
        let (_dir, committer, tree) = db();
        let n = CHUNK as u64 * 2 + 5;
        for i in 0..n {
            let mut m = monitor(i);
            tree.insert(
                named_monitor_key(&m.def.key),
                serde_json::to_vec(&m).unwrap(),
            )
            .unwrap();
            if i % 2 == 0 {
                m.state.pings += 1000;
                tree.insert(named_state_key(&m.def.key), state::encode(&m).unwrap())
                    .unwrap();
            }
        }
        tree.insert(named_state_key("ns/gone"), &b"{}"[..]).unwrap();

        assert_eq!(
            convert_named_records(&tree, &committer).unwrap(),
            n as usize
        );
        for family in [Family::NamedMonitor, Family::NamedState] {
            assert_eq!(tree.scan_prefix([family as u8]).count(), 0, "{family:?}");
        }
        for i in [0, 1, n - 1] {
            let m = monitor(i);
            let record = tree.get(monitor_key(m.num)).unwrap().unwrap();
            assert_eq!(serde_json::from_slice::<Monitor>(&record).unwrap(), m);
            let state = tree.get(state_key(m.num)).unwrap();
            assert_eq!(state.is_some(), i % 2 == 0, "monitor {i}");
        }
        assert_eq!(
            convert_named_records(&tree, &committer).unwrap(),
            0,
            "nothing left to convert"
        );
    }

    #[test]
    fn a_record_without_its_number_fails_the_conversion_and_moves_nothing_after_it() {
        let (_dir, committer, tree) = db();
        tree.insert(named_monitor_key("ns/broken"), &b"{\"def\":1}"[..])
            .unwrap();
        assert!(matches!(
            convert_named_records(&tree, &committer),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(tree.scan_prefix([Family::NamedMonitor as u8]).count(), 1);
    }
}
