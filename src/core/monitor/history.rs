//! Ping history on sled, in blocks of [`PINGS_PER_BLOCK`] consecutive pings per value.
//!
//! One sled insert costs far more than the few hundred bytes a ping record holds, and a
//! bounded history used to cost two per ping: the new record and the removal of the one
//! that fell out of the window. A block is one value holding consecutive pings of one
//! monitor, keyed by monitor and `seq / PINGS_PER_BLOCK`; the engine appends to it in
//! memory during a round and writes it once, and a whole block is dropped once every ping in
//! it is older than the kept window. Readers cut the window exactly, so at most
//! `ping_history` pings are ever shown even though up to one block more is stored.
//!
//! The value is a version byte, then per ping a little-endian `u32` length and the record
//! as JSON (so fields can be added later, as with every other monitor record).

use std::collections::HashMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::engine::keys::{Family, numbered_prefix};
use crate::core::store::Committer;
use crate::core::store::commit::PendingReader;
use crate::core::store::wal::Mutation;

/// What kind of signal a ping carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PingKind {
    /// Success (`/ping`, exit code 0).
    Success,
    /// A run began (`/start`).
    Start,
    /// Failure (`/fail`, exit code 1–255).
    Fail,
}

/// One received ping, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRecord {
    /// Sequence number within the monitor (1-based).
    pub seq: u64,
    /// When it arrived.
    pub at: Timestamp,
    /// Success, start or failure.
    pub kind: PingKind,
    /// Exit code, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Client address (first X-Forwarded-For entry when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// User agent, at most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Request body, at most 10 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Run duration in milliseconds, when a `/start` (or the Job's start) preceded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// The run id the ping carried (`?rid=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// The Job this entry reports, for evidence from a watched CronJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Why the Job failed (`BackoffLimitExceeded`, `DeadlineExceeded`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Pings per block.
pub const PINGS_PER_BLOCK: u64 = 16;

/// First byte of a block value.
const BLOCK_V1: u8 = 1;

/// Key of a ping block: family, monitor number, block index (big-endian, so a monitor's
/// blocks sort oldest first).
pub type BlockKey = [u8; 17];

/// Why stored ping history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// sled failed.
    #[error("ping history storage: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("ping record: {0}")]
    Codec(#[from] serde_json::Error),
    /// A stored block is cut short or has an unknown layout.
    #[error("ping history block {key} is corrupt: {detail}")]
    Corrupt {
        /// The block's key, hex-encoded.
        key: String,
        /// What is wrong.
        detail: &'static str,
    },
    /// Writing the converted history failed.
    #[error(transparent)]
    Commit(#[from] crate::core::store::CommitError),
}

/// The prefix every block of monitor `num` starts with.
pub fn monitor_prefix(num: u64) -> [u8; 9] {
    numbered_prefix(Family::PingBlock, num)
}

/// The key of the block that holds ping `seq` of monitor `num`.
pub fn block_key(num: u64, seq: u64) -> BlockKey {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&monitor_prefix(num));
    k[9..].copy_from_slice(&(seq / PINGS_PER_BLOCK).to_be_bytes());
    k
}

/// Appends `record` to `block` (an empty vector starts a new block).
pub fn append(block: &mut Vec<u8>, record: &PingRecord) -> Result<(), HistoryError> {
    if block.is_empty() {
        block.push(BLOCK_V1);
    }
    let at = block.len();
    block.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *block, record)?;
    let len = u32::try_from(block.len() - at - 4).map_err(|_| HistoryError::Corrupt {
        key: String::new(),
        detail: "a ping record is larger than 4 GiB",
    })?;
    block[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The pings of a block, oldest first.
pub fn decode(key: &[u8], block: &[u8]) -> Result<Vec<PingRecord>, HistoryError> {
    let corrupt = |detail| HistoryError::Corrupt {
        key: hex::encode(key),
        detail,
    };
    let Some((&BLOCK_V1, mut rest)) = block.split_first() else {
        return Err(corrupt("unknown block version"));
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (json, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| corrupt("truncated record"))?;
        out.push(serde_json::from_slice(json)?);
        rest = tail;
    }
    Ok(out)
}

/// Ping blocks changed by the engine's current round, written once at its end.
#[derive(Default)]
pub struct RoundBlocks {
    blocks: HashMap<BlockKey, Vec<u8>>,
    /// Bytes of blocks read and appended in this round (blocks dropped again included).
    bytes: usize,
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
    ) -> Result<(), HistoryError> {
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
                self.bytes += stored.len();
                e.insert(stored)
            }
        };
        let before = block.len();
        append(block, record)?;
        self.bytes += block.len().saturating_sub(before);
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

    /// Forgets the blocks of a monitor removed in this round.
    pub fn forget(&mut self, num: u64) {
        let prefix = monitor_prefix(num);
        self.blocks.retain(|k, _| !k.starts_with(&prefix));
    }

    /// The round's blocks as writes.
    pub fn into_writes(self, tree: &sled::Tree) -> impl Iterator<Item = Mutation> {
        self.blocks
            .into_iter()
            .map(move |(k, v)| Mutation::put(tree, k.to_vec(), v))
    }

    /// About how many bytes the round's blocks will write: what a round is cut by, so that
    /// bursts of pings with large bodies make several records of bounded size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the round touched no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// The newest pings of monitor `num`, newest first: at most `limit`, and none older than
/// the newest `keep`.
pub fn newest(
    tree: &sled::Tree,
    num: u64,
    limit: usize,
    keep: u64,
) -> Result<Vec<PingRecord>, HistoryError> {
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
pub fn convert_single_records(
    tree: &sled::Tree,
    committer: &Committer,
) -> Result<usize, HistoryError> {
    let mut converted = 0;
    loop {
        let Some(first) = tree.scan_prefix([Family::PingSingle as u8]).keys().next() else {
            return Ok(converted);
        };
        let first = first?;
        let Some(num_bytes) = first.get(1..9) else {
            // Not a key this family ever had: leave it, but do not loop on it.
            return Err(HistoryError::Corrupt {
                key: hex::encode(&first),
                detail: "short single-ping key",
            });
        };
        let mut blocks: std::collections::BTreeMap<BlockKey, Vec<u8>> = Default::default();
        let mut writes = Vec::new();
        let mut num = [0u8; 8];
        num.copy_from_slice(num_bytes);
        let num = u64::from_be_bytes(num);
        for item in tree.scan_prefix(&first[..9]) {
            let (k, v) = item?;
            let record: PingRecord = serde_json::from_slice(&v)?;
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

    fn ping(seq: u64) -> PingRecord {
        PingRecord {
            seq,
            at: Timestamp::from_second(1_700_000_000 + seq as i64).unwrap(),
            kind: PingKind::Success,
            exit_code: None,
            source: Some("10.0.0.1".into()),
            user_agent: Some("curl/8".into()),
            body: seq
                .is_multiple_of(3)
                .then(|| format!("run {seq}\nline two, \"quoted\"")),
            duration_ms: None,
            rid: None,
            job: None,
            reason: None,
        }
    }

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
    fn blocks_round_trip_and_refuse_truncation() {
        let mut block = Vec::new();
        for s in 1..=5 {
            append(&mut block, &ping(s)).unwrap();
        }
        assert_eq!(
            decode(b"k", &block).unwrap(),
            (1..=5).map(ping).collect::<Vec<_>>()
        );
        assert!(matches!(
            decode(b"k", &block[..block.len() - 1]),
            Err(HistoryError::Corrupt { .. })
        ));
        assert!(decode(b"k", &block[..3]).is_err());
        assert!(decode(b"k", &[9, 0, 0, 0, 0]).is_err());
        assert!(decode(b"k", &[]).is_err());
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
    fn a_removed_monitor_leaves_no_block_behind_from_its_last_round() {
        let (_dir, c, tree) = db();
        let mut blocks = RoundBlocks::default();
        let mut removals = Vec::new();
        blocks
            .record(&c.reader(), &tree, 4, &ping(1), 10, &mut removals)
            .unwrap();
        blocks
            .record(&c.reader(), &tree, 5, &ping(1), 10, &mut removals)
            .unwrap();
        blocks.forget(4);
        let keys: Vec<Vec<u8>> = blocks.into_writes(&tree).map(|w| w.key).collect();
        assert_eq!(keys, vec![block_key(5, 1).to_vec()]);
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
