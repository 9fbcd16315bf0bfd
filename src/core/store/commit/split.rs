//! Applying one durable record's writes to sled on two threads.
//!
//! A round of the monitor engine is one record of a few thousand writes (state records,
//! timeline entries, ping blocks) to keys scattered over sled's leaves. With a million
//! monitors most of those leaves are outside sled's cache, so each insert spends most of
//! its time fetching, decoding and copying a leaf, and one thread applying them fell
//! behind a herd of deadlines while the other core idled. sled takes inserts from many
//! threads at once (each is a compare-and-swap on its own page), so a large record is
//! split in two and applied by the apply thread and a helper together.
//!
//! Only writes to the same key need their order: the split goes by a hash of the key,
//! so every write to one key lands on the same thread, in the record's order. Writes of a
//! rising run of keys ([`Mutation::rising`]: the timeline journal's appends and removals)
//! are the exception: they all go to the helper, with its half of the others. Rising keys
//! share the tree's rightmost leaves, and sled copies a leaf on every insert into it, and
//! again when a compare-and-swap lost to the other thread: two threads appending to one
//! leaf did each other's work over. A key is rising in every write of it or in none (its
//! tree decides), so its writes still share a thread. The
//! record is reported applied only once both halves are, so nothing a reader is told
//! about is missing; during the apply, readers of sled may see a record's writes to
//! different keys in a different order than they were written, as they could already
//! see a record half applied.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::core::store::wal::Mutation;

/// Records with fewer writes are applied on the calling thread alone: handing half to
/// the helper and waiting for it costs more than a few hundred cached inserts take.
pub(super) const SPLIT_FROM: usize = 256;

/// A record's writes and the positions of those the helper applies.
type Job = (Arc<Vec<Mutation>>, Vec<u32>);

/// The apply thread's side of its helper thread (`hartslag-apply2`), which lives as long
/// as this does. One long-lived helper rather than one per record: a thread start per
/// round cost time, and sled's deferred frees of every short-lived thread that touched it
/// piled up.
pub(super) struct Splitter {
    /// `None` once the helper could not be started or has gone: everything is applied on
    /// the calling thread.
    helper: Option<(Sender<Job>, Receiver<sled::Result<()>>)>,
}

impl Splitter {
    /// Starts the helper; without one (no thread to be had), applies alone.
    pub(super) fn start() -> Self {
        let (jobs, take) = channel::<Job>();
        let (give, results) = channel();
        let spawned = std::thread::Builder::new()
            .name("hartslag-apply2".into())
            .spawn(move || {
                for (writes, mine) in take {
                    let result = mine.iter().try_for_each(|&i| match writes.get(i as usize) {
                        Some(w) => w.apply(),
                        None => Ok(()),
                    });
                    // The caller takes its writes back once this copy is gone.
                    drop(writes);
                    if give.send(result).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = &spawned {
            tracing::warn!(error = %e, "no helper thread to apply large records with; applying them on one thread");
        }
        Self {
            helper: spawned.ok().map(|_| (jobs, results)),
        }
    }

    /// Applies everything on the calling thread.
    pub(super) fn alone() -> Self {
        Self { helper: None }
    }

    /// Applies `writes` to sled, half of them on the helper when there are at least
    /// [`SPLIT_FROM`]. Stops at the first failure of either half (the other half may have
    /// gone on: the record is durable, and a restart replays it whole).
    pub(super) fn apply(&mut self, writes: &mut Vec<Mutation>) -> sled::Result<()> {
        let Some((jobs, results)) = self.helper.as_ref().filter(|_| writes.len() >= SPLIT_FROM)
        else {
            return writes.iter().try_for_each(Mutation::apply);
        };
        let shared = Arc::new(std::mem::take(writes));
        let (theirs, mine) = halves(&shared);
        if jobs.send((shared.clone(), theirs)).is_err() {
            // The helper is gone (it never is while this lives): apply alone.
            self.helper = None;
            *writes = Arc::try_unwrap(shared).unwrap_or_else(|a| a.as_ref().clone());
            return writes.iter().try_for_each(Mutation::apply);
        }
        let own = mine.iter().try_for_each(|&i| shared[i as usize].apply());
        let other = results.recv().unwrap_or_else(|_| {
            Err(sled::Error::ReportableBug(
                "the helper applying half a record stopped".into(),
            ))
        });
        *writes = Arc::try_unwrap(shared).unwrap_or_else(|a| a.as_ref().clone());
        own.and(other)
    }
}

/// The positions of the writes the helper applies, and of those the calling thread does:
/// rising writes to the helper, the others by a hash of the key.
fn halves(writes: &[Mutation]) -> (Vec<u32>, Vec<u32>) {
    (0..writes.len() as u32).partition(|&i| {
        let w = &writes[i as usize];
        w.rising || half(&w.key)
    })
}

/// Which half a key goes to: FNV-1a over its bytes, so keys that differ anywhere spread.
fn half(key: &[u8]) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h & 1 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        (dir, tree)
    }

    #[test]
    fn a_large_record_lands_whole_with_each_keys_writes_in_order() {
        let (_dir, tree) = tree();
        // Every key written three times (put, remove, put) and some only put and
        // removed: the last write of each key must win, on whichever thread it ran.
        let mut writes = Vec::new();
        for i in 0..2_000u32 {
            let key = format!("k{i:05}").into_bytes();
            writes.push(Mutation::put(&tree, key.clone(), b"first".to_vec()));
            writes.push(Mutation::remove(&tree, key.clone()));
            if i % 3 != 0 {
                writes.push(Mutation::put(
                    &tree,
                    key.clone(),
                    format!("last{i}").into_bytes(),
                ));
            }
            writes.push(Mutation::put_if_absent(&tree, key, b"absent".to_vec()));
        }
        assert!(writes.len() >= SPLIT_FROM);
        let written = writes.len();
        let mut splitter = Splitter::start();
        assert!(splitter.helper.is_some());
        splitter.apply(&mut writes).unwrap();
        assert_eq!(writes.len(), written, "the record's writes are handed back");
        for i in 0..2_000u32 {
            let got = tree.get(format!("k{i:05}")).unwrap().unwrap();
            let want = if i % 3 != 0 {
                format!("last{i}")
            } else {
                "absent".into()
            };
            assert_eq!(got.as_ref(), want.as_bytes(), "key {i}");
        }
        assert_eq!(tree.len(), 2_000);
    }

    #[test]
    fn a_records_rising_writes_all_go_to_the_helper_and_the_rest_by_their_keys() {
        let (_dir, tree) = tree();
        let mut writes = Vec::new();
        for i in 0..600u64 {
            writes.push(Mutation::put(&tree, format!("m{i}").into_bytes(), vec![1]));
            writes.push(
                Mutation::put_unread(&tree, i.to_be_bytes().to_vec(), vec![2]).in_rising_run(),
            );
            writes
                .push(Mutation::remove(&tree, (i + 10_000).to_be_bytes().to_vec()).in_rising_run());
        }
        let (theirs, mine) = halves(&writes);
        let rising = theirs
            .iter()
            .filter(|&&i| writes[i as usize].rising)
            .count();
        assert_eq!(rising, 1_200, "every rising write on the helper");
        assert!(mine.iter().all(|&i| !writes[i as usize].rising));
        assert!(
            (200..400).contains(&mine.len()),
            "{} of 600 others",
            mine.len()
        );
        let written = writes.len();
        Splitter::start().apply(&mut writes).unwrap();
        assert_eq!(writes.len(), written, "the record's writes are handed back");
        assert_eq!(tree.len(), 1_200);
    }

    #[test]
    fn the_halves_split_keys_about_evenly_and_a_small_record_stays_on_one_thread() {
        let keys: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| format!("ns/monitor-{i}").into_bytes())
            .collect();
        let first = keys.iter().filter(|k| half(k)).count();
        assert!(
            (4_500..5_500).contains(&first),
            "{first} of 10 000 in the first half"
        );
        let (_dir, tree) = tree();
        let mut writes: Vec<Mutation> = (0..10)
            .map(|i| Mutation::put(&tree, vec![i], vec![i]))
            .collect();
        Splitter::start().apply(&mut writes).unwrap();
        assert_eq!(tree.len(), 10);
    }
}
