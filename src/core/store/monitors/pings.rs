//! Ping history in the monitors tree: blocks of
//! [`PINGS_PER_BLOCK`] consecutive pings
//! per value (the format of [`crate::core::monitor::history`]), keyed by family, monitor
//! number and block index, so one monitor's blocks sort oldest first in one range.

use std::collections::HashMap;

use super::keys::{Family, numbered_prefix};
use crate::core::monitor::history::{PINGS_PER_BLOCK, PingRecord, append, decode};
use crate::core::store::commit::PendingReader;
use crate::core::store::wal::Mutation;
use crate::core::store::{Committer, StoreError};

/// Key of a ping block: family, monitor number, block index (big-endian, so a monitor's
/// blocks sort oldest first).
pub(super) type BlockKey = [u8; 17];

/// The prefix every block of monitor `num` starts with.
pub(super) fn monitor_prefix(num: u64) -> [u8; 9] {
    numbered_prefix(Family::PingBlock, num)
}

/// The key of the block that holds ping `seq` of monitor `num`.
pub(super) fn block_key(num: u64, seq: u64) -> BlockKey {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&monitor_prefix(num));
    k[9..].copy_from_slice(&(seq / PINGS_PER_BLOCK).to_be_bytes());
    k
}

/// Ping blocks changed by the engine's current round, written once at its end.
#[derive(Default)]
pub(super) struct RoundBlocks {
    blocks: HashMap<BlockKey, Vec<u8>>,
}

impl RoundBlocks {
    /// Adds `record` to its block (read from `tree` the first time the round touches it)
    /// and, when it starts a new block, stages the removal of blocks that now lie wholly
    /// before the newest `keep` pings. Reads go through `reader`, which sees the blocks of
    /// earlier rounds still on their way to disk.
    pub fn record(
        &mut self,
        reader: &PendingReader<'_>,
        tree: &sled::Tree,
        num: u64,
        record: &PingRecord,
        keep: u64,
        removals: &mut Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let key = block_key(num, record.seq);
        // Sequence numbers only grow, so the first ping of a block finds nothing stored
        // under its key: no need to look (a read that misses sled's cache costs more than
        // the rest of a ping).
        let starts_block = record.seq <= 1 || record.seq.is_multiple_of(PINGS_PER_BLOCK);
        let block = match self.blocks.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) if starts_block => e.insert(Vec::new()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stored = reader
                    .read(tree, &key)?
                    .map(|v| v.to_vec())
                    .unwrap_or_default();
                e.insert(stored)
            }
        };
        append(block, record)?;
        if record.seq.is_multiple_of(PINGS_PER_BLOCK) {
            // Oldest ping still kept; every block before its block holds only older ones.
            let first_kept = record.seq.saturating_sub(keep).saturating_add(1);
            let bound = block_key(num, first_kept);
            let prefix = monitor_prefix(num);
            removals.extend(reader.keys(tree, &prefix, Some(&bound))?);
            self.blocks
                .retain(|k, _| !(k.starts_with(&prefix) && k < &bound));
        }
        Ok(())
    }

    /// The round's blocks as writes, in key order (the order they sit in the store).
    pub fn into_writes(self, tree: &sled::Tree) -> impl Iterator<Item = Mutation> {
        let mut blocks: Vec<_> = self.blocks.into_iter().collect();
        blocks.sort_unstable_by_key(|b| b.0);
        blocks
            .into_iter()
            .map(move |(k, v)| Mutation::put(tree, k.to_vec(), v))
    }
}

/// The newest pings of monitor `num`, newest first: at most `limit`, and none older than
/// the newest `keep`.
pub(super) fn newest(
    tree: &sled::Tree,
    num: u64,
    limit: usize,
    keep: u64,
) -> Result<Vec<PingRecord>, StoreError> {
    let mut out = Vec::new();
    let mut floor = None;
    for item in tree.scan_prefix(monitor_prefix(num)).rev() {
        let (k, v) = item?;
        for p in decode(&k, &v)?.into_iter().rev() {
            let floor = *floor.get_or_insert(p.seq.saturating_sub(keep));
            if out.len() >= limit || p.seq <= floor {
                return Ok(out);
            }
            out.push(p);
        }
    }
    Ok(out)
}

/// Converts single-ping records of earlier versions into blocks, one commit-log record per
/// monitor (old records removed in the same record, so a crash midway converts the rest on
/// the next start). Returns how many pings were converted.
pub(super) fn convert_single_records(
    tree: &sled::Tree,
    committer: &Committer,
) -> Result<usize, StoreError> {
    let mut converted = 0;
    loop {
        let Some(first) = tree.scan_prefix([Family::PingSingle as u8]).keys().next() else {
            return Ok(converted);
        };
        let first = first?;
        let Some(num_bytes) = first.get(1..9) else {
            // Not a key this family ever had: leave it, but do not loop on it.
            return Err(StoreError::Corrupt {
                what: format!("ping record {}", hex::encode(&first)),
                detail: "short single-ping key".into(),
            });
        };
        let mut blocks: std::collections::BTreeMap<BlockKey, Vec<u8>> = Default::default();
        let mut writes = Vec::new();
        let mut num = [0u8; 8];
        num.copy_from_slice(num_bytes);
        let num = u64::from_be_bytes(num);
        for item in tree.scan_prefix(&first[..9]) {
            let (k, v) = item?;
            let record: PingRecord =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    what: format!("ping record {}", hex::encode(&k)),
                    detail: e.to_string(),
                })?;
            let key = block_key(num, record.seq);
            let block = match blocks.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(tree.get(key)?.map(|v| v.to_vec()).unwrap_or_default())
                }
            };
            append(block, &record)?;
            writes.push(Mutation::remove(tree, k.to_vec()));
            converted += 1;
        }
        writes.extend(
            blocks
                .into_iter()
                .map(|(k, v)| Mutation::put(tree, k.to_vec(), v)),
        );
        committer.log_blocking(writes)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::history::sample_ping as ping;

    fn db() -> (tempfile::TempDir, Committer, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("monitors").unwrap();
        let (committer, _) = Committer::spawn(db, dir.path()).unwrap();
        (dir, committer, tree)
    }

    /// Records `seqs` the way the engine does, one round per chunk, each round handed to
    /// the committer without waiting for the previous one to reach disk.
    fn record_rounds(
        c: &Committer,
        tree: &sled::Tree,
        num: u64,
        seqs: &[u64],
        keep: u64,
        round: usize,
    ) {
        for chunk in seqs.chunks(round) {
            let mut blocks = RoundBlocks::default();
            let mut removals = Vec::new();
            for &s in chunk {
                blocks
                    .record(&c.reader(), tree, num, &ping(s), keep, &mut removals)
                    .unwrap();
            }
            let mut writes: Vec<Mutation> = removals
                .into_iter()
                .map(|k| Mutation::remove(tree, k))
                .collect();
            writes.extend(blocks.into_writes(tree));
            c.submit(writes, Box::new(|_| {}));
        }
        // Records are applied in order: once this one is, every round before it is too.
        c.log_blocking(Vec::new()).unwrap();
    }

    #[test]
    fn the_window_is_exact_and_old_blocks_are_dropped() {
        let (_dir, c, tree) = db();
        let seqs: Vec<u64> = (1..=250).collect();
        for round in [1, 7, 64] {
            tree.clear().unwrap();
            record_rounds(&c, &tree, 3, &seqs, 40, round);
            let got = newest(&tree, 3, 1000, 40).unwrap();
            assert_eq!(
                got.iter().map(|p| p.seq).collect::<Vec<_>>(),
                (211..=250).rev().collect::<Vec<_>>(),
                "round of {round}"
            );
            // Stored: the kept window plus at most one block before it, never more.
            let stored = tree.scan_prefix(monitor_prefix(3)).count() as u64;
            assert!(stored <= 40 / PINGS_PER_BLOCK + 2, "{stored} blocks");
            assert_eq!(newest(&tree, 3, 5, 40).unwrap()[0].seq, 250);
            assert_eq!(newest(&tree, 3, 5, 40).unwrap().len(), 5);
        }
    }

    #[test]
    fn monitors_keep_their_own_history() {
        let (_dir, c, tree) = db();
        record_rounds(&c, &tree, 1, &(1..=20).collect::<Vec<_>>(), 1000, 4);
        record_rounds(&c, &tree, 2, &(1..=3).collect::<Vec<_>>(), 1000, 4);
        assert_eq!(newest(&tree, 1, 100, 1000).unwrap().len(), 20);
        assert_eq!(
            newest(&tree, 2, 100, 1000)
                .unwrap()
                .iter()
                .map(|p| p.seq)
                .collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert!(newest(&tree, 9, 100, 1000).unwrap().is_empty());
    }

    #[test]
    fn single_records_of_earlier_versions_become_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("monitors").unwrap();
        let (committer, _) = crate::core::store::Committer::spawn(db.clone(), dir.path()).unwrap();
        for num in [7u64, 8] {
            for seq in 1..=40u64 {
                let mut k = vec![Family::PingSingle as u8];
                k.extend_from_slice(&num.to_be_bytes());
                k.extend_from_slice(&seq.to_be_bytes());
                tree.insert(k, serde_json::to_vec(&ping(seq)).unwrap())
                    .unwrap();
            }
        }
        assert_eq!(convert_single_records(&tree, &committer).unwrap(), 80);
        assert_eq!(tree.scan_prefix([Family::PingSingle as u8]).count(), 0);
        for num in [7u64, 8] {
            let got = newest(&tree, num, 1000, 1000).unwrap();
            assert_eq!(got, (1..=40).rev().map(ping).collect::<Vec<_>>());
        }
        // A second start finds nothing left to convert.
        assert_eq!(convert_single_records(&tree, &committer).unwrap(), 0);
    }
}
