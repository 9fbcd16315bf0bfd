//! Ping history in the monitors tree: blocks of
//! [`PINGS_PER_BLOCK`](crate::core::monitor::history::PINGS_PER_BLOCK) consecutive pings
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

/// The monitor number in block key `k`.
fn block_num(k: &BlockKey) -> u64 {
    let mut num = [0u8; 8];
    num.copy_from_slice(&k[1..9]);
    u64::from_be_bytes(num)
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
    /// Each block, and whether [`RecentBlocks`] should hold it once written.
    blocks: HashMap<BlockKey, (Vec<u8>, bool)>,
}

/// The newest block of each monitor pinged lately, as the last round handed to the
/// committer left it: a ping appends to its monitor's newest block, and reading that
/// block back (from the committer's pending view, or from sled once applied) was the
/// largest cost of a steady ping on the engine thread. A million monitors' records and
/// timeline pages keep the blocks out of sled's cache, so most reads went to the disk
/// and decoded a whole leaf for one value.
///
/// Consistency: a block enters here only from a round the committer accepted, and every
/// accepted round is either applied in order or halts the committer for good (its
/// invariant 5: nothing is written again until a restart, which starts with this empty).
/// So an entry is never older than the store's newest version of its block. A monitor
/// removed with its history takes its entry with it ([`RecentBlocks::forget`]); ping
/// blocks have no other writer while the server runs.
///
/// Only a block that had to be read back is held, or the next block of a monitor held
/// already: a monitor pinged once (every monitor of a fleet defined and pinged for the
/// first time) starts its first block, which no read needs, and takes no room here.
/// Bounded by [`RECENT_BYTES`], with each entry's own cost counted: when full, every other
/// entry goes, an eviction that costs one pass and keeps the cache useful without the
/// bookkeeping of an LRU.
#[derive(Default)]
pub(super) struct RecentBlocks {
    blocks: HashMap<u64, (BlockKey, Vec<u8>)>,
    bytes: usize,
}

/// A monitor's newest block as a round wrote it: number, key, and its contents if
/// [`RecentBlocks`] should hold it.
pub(super) type Fresh = (u64, BlockKey, Option<Vec<u8>>);

/// Bytes [`RecentBlocks`] takes at most: ten thousand monitors pinged steadily, each with
/// a block half full of bare pings, take about six megabytes.
const RECENT_BYTES: usize = 8 << 20;

/// What an entry of [`RecentBlocks`] costs besides its block: its slot in the map (number,
/// key, vector) and the allocator's rounding of the block.
const ENTRY_BYTES: usize = 64;

impl RecentBlocks {
    /// Whether a block of monitor `num` is held.
    fn holds(&self, num: u64) -> bool {
        self.blocks.contains_key(&num)
    }

    /// Monitor `num`'s block under `key`, if it is the newest one held.
    fn get(&self, num: u64, key: &BlockKey) -> Option<&[u8]> {
        match self.blocks.get(&num) {
            Some((k, v)) if k == key => Some(v),
            _ => None,
        }
    }

    /// Takes the blocks of a round the committer accepted.
    pub fn update(&mut self, fresh: Vec<Fresh>) {
        for (num, key, block) in fresh {
            let Some(block) = block.filter(|b| b.len() <= RECENT_BYTES / 64) else {
                // Not worth holding (see above), or pings with large bodies: read back
                // when needed. An older block held for the monitor is no use either.
                self.forget(num);
                continue;
            };
            let cost = block.len() + ENTRY_BYTES;
            if self.bytes + cost > RECENT_BYTES {
                self.halve();
            }
            self.bytes += cost;
            if let Some((_, old)) = self.blocks.insert(num, (key, block)) {
                self.bytes -= old.len() + ENTRY_BYTES;
            }
        }
    }

    /// Drops monitor `num`'s block (its history is removed).
    pub fn forget(&mut self, num: u64) {
        if let Some((_, old)) = self.blocks.remove(&num) {
            self.bytes -= old.len() + ENTRY_BYTES;
        }
    }

    fn halve(&mut self) {
        let mut keep = false;
        let mut freed = 0;
        self.blocks.retain(|_, (_, v)| {
            keep = !keep;
            if !keep {
                freed += v.len() + ENTRY_BYTES;
            }
            keep
        });
        self.bytes -= freed;
    }
}

impl RoundBlocks {
    /// Adds `record` to its block (the first time the round touches it, taken from
    /// `recent` or read from `tree`) and, when it starts a new block, stages the removal
    /// of blocks that now lie wholly before the newest `keep` pings. Reads go through
    /// `reader`, which sees the blocks of earlier rounds still on their way to disk.
    pub fn record(
        &mut self,
        (reader, recent): (&PendingReader<'_>, &RecentBlocks),
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
        let (block, _) = match self.blocks.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) if starts_block => {
                e.insert((Vec::new(), recent.holds(num)))
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                let stored = match recent.get(num, &key) {
                    Some(block) => block.to_vec(),
                    None => reader
                        .read(tree, &key)?
                        .map(|v| v.to_vec())
                        .unwrap_or_default(),
                };
                e.insert((stored, true))
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

    /// The round's blocks as writes, in key order (the order they sit in the store), and
    /// for [`RecentBlocks::update`] the newest block of each monitor, once the committer
    /// takes the round.
    pub fn into_writes(self, tree: &sled::Tree) -> (Vec<Mutation>, Vec<Fresh>) {
        let mut blocks: Vec<_> = self.blocks.into_iter().collect();
        blocks.sort_unstable_by_key(|b| b.0);
        let mut fresh: Vec<Fresh> = Vec::new();
        let writes = blocks
            .into_iter()
            .map(|(k, (v, held))| {
                let num = block_num(&k);
                // Keys sort by monitor, then block: a monitor's last one is its newest.
                match fresh.last_mut() {
                    Some(last) if last.0 == num => *last = (num, k, held.then(|| v.clone())),
                    _ => fresh.push((num, k, held.then(|| v.clone()))),
                }
                Mutation::put(tree, k.to_vec(), v)
            })
            .collect();
        (writes, fresh)
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
    /// the committer without waiting for the previous one to reach disk; later rounds
    /// take the blocks of earlier ones from a [`RecentBlocks`] as the store's do.
    fn record_rounds(
        c: &Committer,
        tree: &sled::Tree,
        num: u64,
        seqs: &[u64],
        keep: u64,
        round: usize,
    ) {
        let mut recent = RecentBlocks::default();
        for chunk in seqs.chunks(round) {
            let mut blocks = RoundBlocks::default();
            let mut removals = Vec::new();
            for &s in chunk {
                let from = (&c.reader(), &recent);
                blocks
                    .record(from, tree, num, &ping(s), keep, &mut removals)
                    .unwrap();
            }
            let mut writes: Vec<Mutation> = removals
                .into_iter()
                .map(|k| Mutation::remove(tree, k))
                .collect();
            let (puts, fresh) = blocks.into_writes(tree);
            writes.extend(puts);
            recent.update(fresh);
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
    fn recent_blocks_hold_each_monitors_newest_block_within_their_bound() {
        let mut recent = RecentBlocks::default();
        let block = |n: usize| Some(vec![7u8; n]);
        recent.update(vec![
            (1, block_key(1, 1), block(10)),
            (2, block_key(2, 1), block(20)),
            (3, block_key(3, 1), None),
        ]);
        assert_eq!(recent.get(1, &block_key(1, 1)), Some(&[7u8; 10][..]));
        assert!(recent.get(3, &block_key(3, 1)).is_none(), "not to be held");
        assert_eq!(
            recent.get(1, &block_key(1, 16)),
            None,
            "not its newest block"
        );
        recent.update(vec![(1, block_key(1, 16), block(5))]);
        assert_eq!(
            recent.get(1, &block_key(1, 1)),
            None,
            "replaced by the next block"
        );
        assert_eq!(recent.bytes, 25 + 2 * ENTRY_BYTES);
        recent.update(vec![(2, block_key(2, 16), None)]);
        assert!(
            !recent.holds(2),
            "a newest block not held drops the older one"
        );
        assert_eq!(recent.bytes, 5 + ENTRY_BYTES);
        // Past the bound, half the entries go; a block too large is never held.
        let size = RECENT_BYTES / 100;
        for num in 10..200 {
            recent.update(vec![(num, block_key(num, 1), block(size))]);
            assert!(recent.bytes <= RECENT_BYTES, "{} bytes held", recent.bytes);
        }
        assert!(
            recent.get(199, &block_key(199, 1)).is_some(),
            "the newest stays"
        );
        assert!(recent.blocks.len() < 100);
        recent.update(vec![(199, block_key(199, 1), block(RECENT_BYTES / 32))]);
        assert_eq!(recent.get(199, &block_key(199, 1)), None);
        let held: usize = recent
            .blocks
            .values()
            .map(|(_, v)| v.len() + ENTRY_BYTES)
            .sum();
        assert_eq!(held, recent.bytes, "the count of bytes stays exact");
    }

    #[test]
    fn only_blocks_read_back_are_held_and_a_held_monitors_next_block_too() {
        let (_dir, c, tree) = db();
        let mut recent = RecentBlocks::default();
        let round = |seqs: &[(u64, u64)], recent: &mut RecentBlocks| {
            let mut blocks = RoundBlocks::default();
            for &(num, seq) in seqs {
                let from = (&c.reader(), &*recent);
                blocks
                    .record(from, &tree, num, &ping(seq), 1000, &mut Vec::new())
                    .unwrap();
            }
            let (writes, fresh) = blocks.into_writes(&tree);
            recent.update(fresh);
            c.log_blocking(writes).unwrap();
        };
        // First pings start blocks: nothing was read, nothing is held.
        round(&[(1, 1), (2, 1)], &mut recent);
        assert!(!recent.holds(1) && !recent.holds(2));
        // Monitor 1's second ping reads its block back: held from then on.
        round(&[(1, 2)], &mut recent);
        assert!(recent.holds(1) && !recent.holds(2));
        for seq in 3..=17 {
            round(&[(1, seq)], &mut recent);
        }
        assert!(
            recent.get(1, &block_key(1, 17)).is_some(),
            "its next block, started by ping 16, is held too"
        );
        let held = recent.get(1, &block_key(1, 17)).map(<[u8]>::to_vec);
        let stored = tree.get(block_key(1, 17)).unwrap().map(|v| v.to_vec());
        assert_eq!(held, stored, "as stored");
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
