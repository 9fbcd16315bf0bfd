//! Loading every stored monitor at start, decoding on every core.
//!
//! Decoding a monitor's JSON record costs several times what reading it from sled does,
//! and a million of them take seconds on one core. So one thread reads the records in
//! chunks, one per core decodes them, and the calling thread files the monitors as they
//! come to the engine: a bounded number of chunks is in flight, so memory stays that of
//! the monitors.
//!
//! The reading thread walks the monitor records and the state records side by side: both
//! families are sorted by the monitor's number, so one pass over each pairs a record with
//! its state record, if it has one, which the decoder lays over the record's state (a
//! state record is always the newer, see [`super::state`]). A state record without a
//! monitor record is none of a live monitor's, and is skipped. A monitor's slot in the
//! state file ([`states`](crate::core::store::states)) is read in the same pass, in
//! number order: a slot that holds a record is the newest state (a slot and a state
//! record in sled are never both written for one monitor, see [`super::state`]).

use std::iter::Peekable;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::keys::Family;
use crate::core::monitor::engine::Monitor;
use crate::core::store::StoreError;
use crate::core::store::states::StateFile;

/// Records decoded as one piece of work.
const CHUNK: usize = 2048;

/// A monitor's record and its state record, if it has one, as read.
type Raw = (sled::IVec, Option<sled::IVec>);

/// What the reading thread hands the decoders.
type RawChunk = Result<Vec<Raw>, StoreError>;

/// Hands every stored monitor to `batch`, a decoded chunk at a time.
pub(super) fn load_monitors(
    tree: &sled::Tree,
    states: &StateFile,
    batch: &mut dyn FnMut(Vec<Monitor>),
) -> Result<(), StoreError> {
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let (raw_tx, raw_rx) = sync_channel::<RawChunk>(decoders * 2);
    let (done_tx, done_rx) = sync_channel::<Result<Vec<Monitor>, StoreError>>(decoders * 2);
    let raw_rx = Mutex::new(raw_rx);
    std::thread::scope(|s| {
        s.spawn(move || read_chunks(tree, states, &raw_tx));
        for _ in 0..decoders {
            let done_tx = done_tx.clone();
            let raw_rx = &raw_rx;
            s.spawn(move || decode_chunks(raw_rx, &done_tx));
        }
        // The decoders hold the only senders left: the loop ends when they do.
        drop(done_tx);
        let mut failed = None;
        for chunk in done_rx {
            match chunk {
                Ok(monitors) if failed.is_none() => batch(monitors),
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// Sends the stored monitor records, each with its state record, in chunks; stops at the
/// first error (which it sends) or when nobody receives any more. Records in the layout of
/// earlier versions (by name) are read too: `hartslag migrate` and `dump` read a store that
/// no server has opened (and converted) since its upgrade.
fn read_chunks(tree: &sled::Tree, states: &StateFile, out: &SyncSender<RawChunk>) {
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut slots = states.cursor();
    let layouts = [
        (Family::NamedMonitor, Family::NamedState),
        (Family::Monitor, Family::State),
    ];
    for (records, state_records) in layouts {
        let mut state_records = tree.scan_prefix([state_records as u8]).peekable();
        for item in tree.scan_prefix([records as u8]) {
            let paired = item.map_err(StoreError::from).and_then(|(k, v)| {
                let state = state_of(&mut state_records, &k)?;
                match numbered(records, &k) {
                    Some(num) => Ok((slots.read(num)?.map(sled::IVec::from).or(state), v)),
                    None => Ok((state, v)),
                }
            });
            match paired {
                Ok((state, v)) => chunk.push((v, state)),
                Err(e) => {
                    let _ = out.send(Err(e));
                    return;
                }
            }
            if chunk.len() == CHUNK
                && out
                    .send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))))
                    .is_err()
            {
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = out.send(Ok(chunk));
    }
}

/// The number in a monitor record's key, in the layout by number.
fn numbered(family: Family, key: &[u8]) -> Option<u64> {
    if family != Family::Monitor {
        return None;
    }
    let num: [u8; 8] = key.get(1..)?.try_into().ok()?;
    Some(u64::from_be_bytes(num))
}

/// The state record of the monitor whose record is under `key` (family byte and all),
/// from the state records' scan of the same layout, which is at or before it: state
/// records of keys before it (without a monitor record) are passed over.
fn state_of(
    states: &mut Peekable<sled::Iter>,
    key: &[u8],
) -> Result<Option<sled::IVec>, sled::Error> {
    let name = key.get(1..).unwrap_or_default();
    while let Some(next) = states.peek() {
        let Ok((k, _)) = next else {
            return match states.next() {
                Some(Err(e)) => Err(e),
                _ => Ok(None),
            };
        };
        match k.get(1..).unwrap_or_default().cmp(name) {
            std::cmp::Ordering::Less => {
                states.next();
            }
            std::cmp::Ordering::Equal => {
                return Ok(states.next().and_then(Result::ok).map(|(_, v)| v));
            }
            std::cmp::Ordering::Greater => return Ok(None),
        }
    }
    Ok(None)
}

/// Decodes chunks until the reader is done.
fn decode_chunks(
    input: &Mutex<Receiver<RawChunk>>,
    out: &SyncSender<Result<Vec<Monitor>, StoreError>>,
) {
    loop {
        let next = input.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let decoded = match next {
            Err(_) => return,
            Ok(Err(e)) => Err(e),
            Ok(Ok(raw)) => raw.iter().map(decode).collect(),
        };
        if out.send(decoded).is_err() {
            return;
        }
    }
}

/// A monitor from its record, with its state record's state if it has one.
fn decode((v, state): &Raw) -> Result<Monitor, StoreError> {
    let mut m: Monitor = serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        what: "monitor record".into(),
        detail: e.to_string(),
    })?;
    if let Some(state) = state {
        super::state::apply(&mut m, state)?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::{Monitors, sample};
    use crate::core::monitor::state::State;
    use crate::core::store::monitors::keys::{
        monitor_key, named_monitor_key, named_state_key, state_key,
    };
    use crate::core::store::monitors::state;

    /// Loads `tree` with an empty state file.
    fn load(tree: &sled::Tree) -> Result<Monitors, StoreError> {
        let dir = tempfile::tempdir().unwrap();
        load_with(tree, &StateFile::open(dir.path()).unwrap())
    }

    fn load_with(tree: &sled::Tree, states: &StateFile) -> Result<Monitors, StoreError> {
        let mut all = Monitors::default();
        load_monitors(tree, states, &mut |batch| {
            batch.into_iter().for_each(|m| all.insert(m))
        })?;
        Ok(all)
    }

    #[test]
    fn a_slot_of_the_state_file_is_laid_over_the_record_and_a_damaged_one_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let tree = db.open_tree("monitors").unwrap();
        let states = StateFile::open(dir.path()).unwrap();
        // Far more monitors than the cursor reads at once, numbered sparsely.
        let n = 9000;
        let mut expected = Vec::new();
        for i in 0..n {
            let mut m = sample(&format!("ns/m{i:05}"), State::New);
            m.num = 3 * i as u64 + 1;
            tree.insert(monitor_key(m.num), serde_json::to_vec(&m).unwrap())
                .unwrap();
            match i % 5 {
                // In its slot.
                1 => {
                    m.state.state = State::Up;
                    m.state.pings = i as u64;
                    states
                        .write(m.num, Some(&state::encode(&m).unwrap()))
                        .unwrap();
                }
                // Kept in sled (too long for a slot, say).
                2 => {
                    m.state.state = State::Down;
                    tree.insert(state_key(m.num), state::encode(&m).unwrap())
                        .unwrap();
                }
                _ => {}
            }
            expected.push(m);
        }
        // A slot without a monitor record is skipped.
        states
            .write(2, Some(br#"{"state":{"state":"down"}}"#))
            .unwrap();
        let all = load_with(&tree, &states).unwrap();
        assert_eq!(all.len(), n);
        for m in &expected {
            assert_eq!(all.get(&m.def.key), Some(m));
        }
        assert_eq!(all.count(State::Up), n / 5);

        // A damaged slot names itself.
        let raw = std::fs::OpenOptions::new()
            .write(true)
            .open(states.path())
            .unwrap();
        use std::os::unix::fs::FileExt;
        let at = crate::core::store::states::HEADER
            + expected[6].num * crate::core::store::states::SLOT as u64
            + 8;
        raw.write_all_at(b"#", at).unwrap();
        let err = load_with(&tree, &states).unwrap_err();
        assert!(matches!(err, StoreError::States(_)), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("number {}", expected[6].num)),
            "{err}"
        );
    }

    #[test]
    fn every_stored_monitor_is_loaded_and_a_damaged_record_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("monitors").unwrap();
        let n = CHUNK * 3 + 17;
        for i in 0..n {
            let mut m = sample(
                &format!("ns/m{i}"),
                if i % 3 == 0 { State::Down } else { State::New },
            );
            m.num = i as u64 + 1;
            tree.insert(monitor_key(m.num), serde_json::to_vec(&m).unwrap())
                .unwrap();
        }
        // Other families are not monitors.
        tree.insert([Family::Monitor as u8 + 2, 1], &b"not json"[..])
            .unwrap();
        let all = load(&tree).unwrap();
        assert_eq!(all.len(), n);
        assert_eq!(all.count(State::Down), n.div_ceil(3));
        assert_eq!(
            all.get("ns/m17").map(|m| m.def.name().to_string()),
            Some("ns/m17".into())
        );
        tree.insert(monitor_key(u64::MAX), &b"{"[..]).unwrap();
        assert!(matches!(load(&tree), Err(StoreError::Corrupt { .. })));
    }

    /// Where a layout keeps monitor `m`'s record and state record.
    type Layout = fn(&Monitor) -> (Vec<u8>, Vec<u8>);

    fn by_number(m: &Monitor) -> (Vec<u8>, Vec<u8>) {
        (monitor_key(m.num).to_vec(), state_key(m.num).to_vec())
    }

    fn by_name(m: &Monitor) -> (Vec<u8>, Vec<u8>) {
        (named_monitor_key(&m.def.key), named_state_key(&m.def.key))
    }

    #[test]
    fn a_state_record_is_laid_over_its_monitors_record_and_one_without_a_monitor_is_skipped() {
        for layout in [by_number as Layout, by_name] {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("monitors").unwrap();
            // Whole records as every version writes them; state records for some, keyed so
            // that both scans must skip ahead of each other.
            let n = CHUNK + 100;
            let mut expected = Vec::new();
            for i in 0..n {
                let mut m = sample(&format!("ns/m{i:05}"), State::New);
                m.num = 10 * i as u64 + 10;
                let (record, state_at) = layout(&m);
                tree.insert(record, serde_json::to_vec(&m).unwrap())
                    .unwrap();
                if i % 7 == 3 {
                    m.state.state = State::Up;
                    m.state.pings = i as u64;
                    m.last_run_ms = Some(i as u64);
                    tree.insert(state_at, state::encode(&m).unwrap()).unwrap();
                }
                expected.push(m);
            }
            for (orphan, num) in [("ns/a", 1), ("ns/m00003x", 45), ("ns/zz", u64::MAX)] {
                let mut m = sample(orphan, State::Down);
                m.num = num;
                tree.insert(layout(&m).1, state::encode(&m).unwrap())
                    .unwrap();
            }
            let all = load(&tree).unwrap();
            assert_eq!(all.len(), n);
            for m in &expected {
                assert_eq!(all.get(&m.def.key), Some(m));
            }
            assert_eq!(all.count(State::Down), 0);

            tree.insert(layout(&expected[10]).1, &b"{"[..]).unwrap();
            assert!(matches!(load(&tree), Err(StoreError::Corrupt { .. })));
        }
    }

    #[test]
    fn monitors_in_both_layouts_are_all_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("monitors").unwrap();
        for (i, layout) in [(1, by_name as Layout), (2, by_number)] {
            let mut m = sample(&format!("ns/m{i}"), State::New);
            m.num = i;
            tree.insert(layout(&m).0, serde_json::to_vec(&m).unwrap())
                .unwrap();
        }
        let all = load(&tree).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.get("ns/m1").map(|m| m.num), Some(1));
        assert_eq!(all.get("ns/m2").map(|m| m.num), Some(2));
    }
}
