//! Loading every stored monitor at start, decoding on every core.
//!
//! Decoding a monitor's JSON record costs several times what reading it from sled does,
//! and a million of them take seconds on one core. So one thread reads the records in
//! chunks, one per core decodes them, and the calling thread files the monitors as they
//! come to the engine: a bounded number of chunks is in flight, so memory stays that of
//! the monitors.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::keys::Family;
use crate::core::monitor::engine::Monitor;
use crate::core::store::StoreError;

/// Records decoded as one piece of work.
const CHUNK: usize = 2048;

/// Hands every stored monitor to `batch`, a decoded chunk at a time.
pub(super) fn load_monitors(
    tree: &sled::Tree,
    batch: &mut dyn FnMut(Vec<Monitor>),
) -> Result<(), StoreError> {
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let (raw_tx, raw_rx) = sync_channel::<Result<Vec<sled::IVec>, sled::Error>>(decoders * 2);
    let (done_tx, done_rx) = sync_channel::<Result<Vec<Monitor>, StoreError>>(decoders * 2);
    let raw_rx = Mutex::new(raw_rx);
    std::thread::scope(|s| {
        s.spawn(move || read_chunks(tree, &raw_tx));
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

/// Sends the stored monitor records in chunks; stops at the first error (which it sends)
/// or when nobody receives any more.
fn read_chunks(tree: &sled::Tree, out: &SyncSender<Result<Vec<sled::IVec>, sled::Error>>) {
    let mut chunk = Vec::with_capacity(CHUNK);
    for item in tree.scan_prefix([Family::Monitor as u8]).values() {
        match item {
            Ok(v) => chunk.push(v),
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
    if !chunk.is_empty() {
        let _ = out.send(Ok(chunk));
    }
}

/// Decodes chunks until the reader is done.
fn decode_chunks(
    input: &Mutex<Receiver<Result<Vec<sled::IVec>, sled::Error>>>,
    out: &SyncSender<Result<Vec<Monitor>, StoreError>>,
) {
    loop {
        let next = input.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let decoded = match next {
            Err(_) => return,
            Ok(Err(e)) => Err(StoreError::from(e)),
            Ok(Ok(raw)) => raw
                .iter()
                .map(|v| {
                    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
                        what: "monitor record".into(),
                        detail: e.to_string(),
                    })
                })
                .collect(),
        };
        if out.send(decoded).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::{Monitors, sample};
    use crate::core::monitor::state::State;
    use crate::core::store::monitors::keys::monitor_key;

    fn load(tree: &sled::Tree) -> Result<Monitors, StoreError> {
        let mut all = Monitors::default();
        load_monitors(tree, &mut |batch| {
            batch.into_iter().for_each(|m| all.insert(m))
        })?;
        Ok(all)
    }

    #[test]
    fn every_stored_monitor_is_loaded_and_a_damaged_record_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("monitors").unwrap();
        let n = CHUNK * 3 + 17;
        for i in 0..n {
            let m = sample(
                &format!("ns/m{i}"),
                if i % 3 == 0 { State::Down } else { State::New },
            );
            tree.insert(monitor_key(&m.def.key), serde_json::to_vec(&m).unwrap())
                .unwrap();
        }
        // Other families are not monitors.
        tree.insert([Family::Monitor as u8 + 1, 1], &b"not json"[..])
            .unwrap();
        let all = load(&tree).unwrap();
        assert_eq!(all.len(), n);
        assert_eq!(all.count(State::Down), n.div_ceil(3));
        assert_eq!(
            all.get("ns/m17").map(|m| m.def.name.clone()),
            Some("ns/m17".into())
        );
        tree.insert(monitor_key("ns/broken"), &b"{"[..]).unwrap();
        assert!(matches!(load(&tree), Err(StoreError::Corrupt { .. })));
    }
}
