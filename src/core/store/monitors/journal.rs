//! The timeline journal: where timeline entries wait between the round that wrote them and
//! their place under their monitor (the `Transition` family of the monitors tree).
//!
//! Why it exists: with a million monitors a herd's timeline entries land on keys spread
//! over the whole family, and each was a sled insert into a leaf outside sled's cache, 83 %
//! of the apply thread in a herd (docs/benchmarks.md). Here a round appends them under one
//! rising sequence number, at the right edge of a tree of their own (`timeline-journal`),
//! and the [mover](super::mover) carries them to their monitors later, while the store is
//! idle, in batches applied on both apply threads.
//!
//! Entries are kept in [pages](super::journal_page) of up to 64, a round's entries in pages
//! of their own. An entry is the entry's key in the monitors tree (18 bytes,
//! [`transition_key`](super::keys::transition_key)) followed by its JSON, so a move is a
//! copy of bytes. Its sequence number names its page and its slot there.
//!
//! The in-memory [`Index`] finds a monitor's entries without scanning the journal. It
//! keeps 12 bytes per entry (monitor number and offset) in chunks of up to
//! [`CHUNK_AT_MOST`] entries sorted by monitor, so a lookup is a binary search per chunk.
//!
//! Invariants, relied on by readers, trims and removals:
//! 1. An entry the index lists is in the journal tree once the round that appended it is
//!    applied, and stays there until a record that removes it is submitted; records that
//!    remove an entry unlist it first, under the index's lock, before they are submitted.
//! 2. A move is two records: the first puts the entries under their monitors, the second
//!    removes them from the journal. The committer applies a record wholly before the
//!    next, so whoever reads an entry's journal key and then its monitor's range finds it
//!    in one place or both, never in neither; both are the same bytes, merged by key.
//! 3. A chunk being moved stays listed until the move's second record is applied, so
//!    trims and removals in between see its entries and remove them from both places.
//! 4. A page's entries are all in one chunk: chunks begin and end at page boundaries, so
//!    a move's second record removes its pages whole. An entry a trim or removal took out
//!    of a page after the mover read it is gone with the page, as it should be.

use std::collections::VecDeque;

use super::journal_page::{self, PAGE_AT_MOST};
use super::keys::Family;
use crate::core::store::StoreError;

/// The journal's sled tree.
pub(crate) const JOURNAL_TREE: &str = "timeline-journal";

/// Entries per chunk of the index at most, whole pages. A chunk is what one move carries, and a round
/// that comes due behind a move waits for it: 2 048 scattered inserts hold the apply
/// threads for tens of milliseconds. A lookup visits every chunk (a binary search each):
/// at the mover's bound of 2.5 M entries, about 1 200 of them, some tens of microseconds.
pub(super) const CHUNK_AT_MOST: usize = 2048;
const _: () = assert!(CHUNK_AT_MOST.is_multiple_of(PAGE_AT_MOST));

/// Sequence numbers one chunk may span (entries trimmed or removed leave gaps): offsets
/// are kept in 32 bits.
const SPAN_AT_MOST: u64 = 1 << 24;

/// Length of an entry's key in the monitors tree, at the start of its journal value.
pub(super) const TARGET_KEY_LEN: usize = 18;

/// The monitor number of a journal entry, read in place; `Corrupt` unless the entry starts
/// with a timeline key.
fn num_of(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    match (
        value.first(),
        value.get(1..9),
        value.len() >= TARGET_KEY_LEN,
    ) {
        (Some(&f), Some(n), true) if f == Family::Transition as u8 => <[u8; 8]>::try_from(n)
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(key, "short")),
        _ => Err(corrupt(key, "the value does not start with a timeline key")),
    }
}

/// A journal value split into the entry's key in the monitors tree, its monitor's number
/// and its JSON; `Corrupt` unless the key is a timeline key.
pub(crate) fn split_value(key: &[u8], value: &[u8]) -> Result<Entry, StoreError> {
    let target = value
        .get(..TARGET_KEY_LEN)
        .ok_or_else(|| corrupt(key, "the value is shorter than a timeline key"))?;
    let num = match (target.first(), target.get(1..9)) {
        (Some(&f), Some(n)) if f == Family::Transition as u8 => {
            u64::from_be_bytes(<[u8; 8]>::try_from(n).map_err(|_| corrupt(key, "short"))?)
        }
        _ => return Err(corrupt(key, "the value does not start with a timeline key")),
    };
    let json = value.get(TARGET_KEY_LEN..).unwrap_or_default();
    Ok((target.to_vec(), num, json.to_vec()))
}

/// The entries of the journal page stored under `key`, each as its sequence number and
/// [`split_value`]'s parts, for readers of the whole journal (dumps).
pub(crate) fn page_entries(key: &[u8], value: &[u8]) -> Result<Vec<(u64, Entry)>, StoreError> {
    journal_page::entries(key, value)?
        .into_iter()
        .map(|(seq, entry)| Ok((seq, split_value(key, entry)?)))
        .collect()
}

/// An entry's key in the monitors tree, its monitor's number and its JSON.
pub(crate) type Entry = (Vec<u8>, u64, Vec<u8>);

fn corrupt(key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("timeline journal entry {key:02x?}"),
        detail: detail.to_string(),
    }
}

/// Entries appended by rounds, by monitor, in chunks in the order they were appended.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// The page the next round's entries begin.
    next_page: u64,
    chunks: VecDeque<Chunk>,
    /// Entries listed.
    len: usize,
    next_chunk: u64,
}

/// Entries appended one after the other: up to [`CHUNK_AT_MOST`], sorted by monitor.
#[derive(Debug)]
struct Chunk {
    id: u64,
    /// The sequence number of its first entry; every entry's is `first + offset`.
    first: u64,
    /// One past the last sequence number appended to it.
    end: u64,
    /// Monitor numbers, sorted; `offsets` pairs with it.
    nums: Vec<u64>,
    offsets: Vec<u32>,
    /// The rounds submitted when it was last appended to: its entries are all in the
    /// journal tree once that many rounds have finished.
    last_round: u64,
    /// A move of it was submitted and has not finished.
    moving: bool,
}

/// A chunk handed to the mover: which entries to move, once it has checked they are all
/// in the journal tree.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Move {
    /// The chunk, for [`Index::moved`].
    pub(super) id: u64,
    /// Its range of sequence numbers.
    pub(super) first: u64,
    pub(super) end: u64,
    /// The sequence numbers listed, sorted.
    pub(super) seqs: Vec<u64>,
}

impl Chunk {
    fn seq(&self, i: usize) -> Option<u64> {
        self.offsets.get(i).map(|&o| self.first + u64::from(o))
    }

    /// Positions of monitor `num`'s entries.
    fn positions(&self, num: u64) -> std::ops::Range<usize> {
        let lo = self.nums.partition_point(|&n| n < num);
        let hi = self.nums.partition_point(|&n| n <= num);
        lo..hi
    }

    /// Adds `entries` (monitor, sequence number at least `first`), keeping the order: the
    /// new ones sorted, then merged into the old in one pass.
    fn add(&mut self, entries: &[(u64, u64)]) {
        let mut new: Vec<(u64, u32)> = entries
            .iter()
            .map(|&(n, s)| (n, (s - self.first) as u32))
            .collect();
        new.sort_unstable();
        let old = std::mem::take(&mut self.nums)
            .into_iter()
            .zip(std::mem::take(&mut self.offsets));
        let mut new = new.into_iter().peekable();
        let mut nums = Vec::with_capacity(old.len() + new.len());
        let mut offsets = Vec::with_capacity(nums.capacity());
        for o in old {
            while let Some(n) = new.next_if(|n| *n < o) {
                nums.push(n.0);
                offsets.push(n.1);
            }
            nums.push(o.0);
            offsets.push(o.1);
        }
        for n in new {
            nums.push(n.0);
            offsets.push(n.1);
        }
        (self.nums, self.offsets) = (nums, offsets);
    }

    fn remove_at(&mut self, range: std::ops::Range<usize>) {
        self.nums.drain(range.clone());
        self.offsets.drain(range);
    }
}

impl Index {
    /// The index of a journal read from its tree at start, every entry in it applied.
    pub(super) fn load(tree: &sled::Tree) -> Result<Self, StoreError> {
        let mut index = Index::default();
        let mut batch: Vec<(u64, u64)> = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            let entries = journal_page::entries(&k, &v)?;
            index.next_page = journal_page::page_of_key(&k)? + 1;
            let (Some(&(first, _)), Some(&(last, _))) = (entries.first(), entries.last()) else {
                continue;
            };
            // A chunk ends only between pages (invariant 4).
            if batch
                .first()
                .is_some_and(|&(_, s)| last - s >= SPAN_AT_MOST)
                || batch.len() + entries.len() > CHUNK_AT_MOST
            {
                index.push_chunk(std::mem::take(&mut batch), 0);
            }
            debug_assert!(batch.last().is_none_or(|&(_, s)| s < first));
            for (seq, entry) in entries {
                batch.push((num_of(&k, entry)?, seq));
            }
        }
        index.push_chunk(batch, 0);
        Ok(index)
    }

    /// Entries listed.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Gives out `n` sequence numbers for a round's entries, in order: pages of their own,
    /// full but for the last.
    pub(super) fn take_seqs(&mut self, n: usize) -> Vec<u64> {
        let first = self.next_page << journal_page::SLOT_BITS;
        self.next_page += n.div_ceil(PAGE_AT_MOST) as u64;
        (first..first + n as u64).collect()
    }

    /// Lists a round's entries (monitor, sequence number from [`Index::take_seqs`]), in
    /// the journal once `round` rounds have finished. A round too big for the last chunk
    /// starts chunks of its own, each of whole pages (invariant 4).
    pub(super) fn append(&mut self, entries: &[(u64, u64)], round: u64) {
        let (Some(&(_, lo)), Some(&(_, hi))) = (entries.first(), entries.last()) else {
            return;
        };
        let fits = self.chunks.back().is_some_and(|c| {
            !c.moving
                && c.nums.len() + entries.len() <= CHUNK_AT_MOST
                && hi - c.first < SPAN_AT_MOST
        });
        match self.chunks.back_mut() {
            Some(c) if fits && lo >= c.first => {
                c.add(entries);
                c.end = hi + 1;
                c.last_round = round;
                self.len += entries.len();
            }
            _ => {
                for part in entries.chunks(CHUNK_AT_MOST) {
                    self.push_chunk(part.to_vec(), round);
                }
            }
        }
    }

    fn push_chunk(&mut self, entries: Vec<(u64, u64)>, round: u64) {
        let (Some(&(_, first)), Some(&(_, last))) = (entries.first(), entries.last()) else {
            return;
        };
        let mut chunk = Chunk {
            id: self.next_chunk,
            first,
            end: last + 1,
            nums: Vec::new(),
            offsets: Vec::new(),
            last_round: round,
            moving: false,
        };
        self.next_chunk += 1;
        self.len += entries.len();
        chunk.add(&entries);
        self.chunks.push_back(chunk);
    }

    /// Sequence numbers of monitor `num`'s entries, oldest first.
    pub(super) fn seqs_of(&self, num: u64) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .chunks
            .iter()
            .flat_map(|c| c.positions(num).filter_map(|i| c.seq(i)))
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// Unlists monitor `num`'s entry `seq` (a trim removes it).
    pub(super) fn unlist(&mut self, num: u64, seq: u64) {
        for c in &mut self.chunks {
            if !(c.first..c.end).contains(&seq) {
                continue;
            }
            let found = c.positions(num).find(|&i| c.seq(i) == Some(seq));
            if let Some(i) = found {
                c.remove_at(i..i + 1);
                self.len -= 1;
            }
            return;
        }
    }

    /// Unlists entry `seq` whatever its monitor (a damaged one).
    pub(super) fn unlist_seq(&mut self, seq: u64) {
        for c in &mut self.chunks {
            if !(c.first..c.end).contains(&seq) {
                continue;
            }
            if let Some(i) = (0..c.offsets.len()).find(|&i| c.seq(i) == Some(seq)) {
                c.remove_at(i..i + 1);
                self.len -= 1;
            }
            return;
        }
    }

    /// The sequence numbers chunk `id` lists, sorted (none once it is gone).
    pub(super) fn listed(&self, id: u64) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .chunks
            .iter()
            .filter(|c| c.id == id)
            .flat_map(|c| (0..c.offsets.len()).filter_map(|i| c.seq(i)))
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// Unlists every entry of monitor `num` (it is removed); returns their numbers.
    pub(super) fn unlist_monitor(&mut self, num: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        for c in &mut self.chunks {
            let range = c.positions(num);
            seqs.extend(range.clone().filter_map(|i| c.seq(i)));
            c.remove_at(range);
        }
        self.len -= seqs.len();
        seqs
    }

    /// The oldest chunk, marked as moving, if it is not being moved and every round that
    /// appended to it has finished (`finished` rounds have).
    pub(super) fn start_move(&mut self, finished: u64) -> Option<Move> {
        let c = self.chunks.front_mut()?;
        if c.moving || c.last_round > finished {
            return None;
        }
        c.moving = true;
        let mut seqs: Vec<u64> = (0..c.offsets.len()).filter_map(|i| c.seq(i)).collect();
        seqs.sort_unstable();
        Some(Move {
            id: c.id,
            first: c.first,
            end: c.end,
            seqs,
        })
    }

    /// Whether the oldest chunk could be moved now (see [`Index::start_move`]).
    #[cfg(test)]
    pub(super) fn movable(&self, finished: u64) -> bool {
        self.chunks
            .front()
            .is_some_and(|c| !c.moving && c.last_round <= finished)
    }

    /// Records what became of the move of chunk `id`: moved, it is unlisted; otherwise it
    /// stays, to be moved again.
    pub(super) fn moved(&mut self, id: u64, done: bool) {
        let Some(at) = self.chunks.iter().position(|c| c.id == id) else {
            return;
        };
        if !done {
            if let Some(c) = self.chunks.get_mut(at) {
                c.moving = false;
            }
            return;
        }
        if let Some(c) = self.chunks.remove(at) {
            self.len -= c.nums.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::journal_page::page_key;
    use super::*;

    fn appended(index: &mut Index, nums: &[u64], round: u64) -> Vec<(u64, u64)> {
        let seqs = index.take_seqs(nums.len());
        let entries: Vec<(u64, u64)> = nums.iter().copied().zip(seqs).collect();
        index.append(&entries, round);
        entries
    }

    #[test]
    fn a_monitors_entries_are_found_across_chunks_oldest_first() {
        let mut index = Index::default();
        appended(&mut index, &[7, 3, 7], 1);
        let many: Vec<u64> = (0..CHUNK_AT_MOST as u64).collect();
        appended(&mut index, &many, 2);
        appended(&mut index, &[7], 3);
        assert_eq!(
            index.chunks.len(),
            3,
            "a round too big for the tail opens a chunk"
        );
        assert_eq!(index.len(), 4 + CHUNK_AT_MOST);
        // Each round's entries start a page of their own: the second at page 1, the third
        // after its 32 pages.
        let page = PAGE_AT_MOST as u64;
        assert_eq!(index.seqs_of(7), vec![0, 2, page + 7, 33 * page]);
        assert_eq!(index.seqs_of(3), vec![1, page + 3]);
        assert_eq!(index.seqs_of(1 << 40), Vec::<u64>::new());
    }

    #[test]
    fn unlisting_drops_one_entry_or_a_whole_monitor() {
        let mut index = Index::default();
        appended(&mut index, &[5, 6, 5, 5], 1);
        index.unlist(5, 2);
        index.unlist(5, 99);
        assert_eq!(index.seqs_of(5), vec![0, 3]);
        assert_eq!(index.unlist_monitor(5), vec![0, 3]);
        assert_eq!(index.seqs_of(6), vec![1]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_chunk_moves_once_its_rounds_finished_and_stays_listed_until_moved() {
        let mut index = Index::default();
        appended(&mut index, &[1, 2], 1);
        appended(&mut index, &[1], 2);
        assert!(
            !index.movable(1),
            "round 2 appended to it and has not finished"
        );
        assert_eq!(index.start_move(1), None);
        let m = index.start_move(2).expect("movable");
        // Each round's entries in a page of their own.
        let page = PAGE_AT_MOST as u64;
        assert_eq!(
            (m.first, m.end, m.seqs.clone()),
            (0, page + 1, vec![0, 1, page])
        );
        assert!(
            index.start_move(2).is_none(),
            "one move of a chunk at a time"
        );
        // Entries appended while it moves go to a new chunk, so the move is the whole chunk.
        appended(&mut index, &[1], 3);
        assert_eq!(index.seqs_of(1), vec![0, page, 2 * page]);
        index.moved(m.id, false);
        let again = index.start_move(2).expect("a failed move is tried again");
        assert_eq!(again.id, m.id);
        index.moved(again.id, true);
        assert_eq!(index.seqs_of(1), vec![2 * page]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn entries_carry_their_target_key_and_bad_ones_are_corrupt() {
        let target = super::super::keys::transition_key(9, jiff::Timestamp::UNIX_EPOCH, 1);
        let mut v = target.to_vec();
        v.extend_from_slice(b"{}");
        let (k, num, json) = split_value(&page_key(4), &v).expect("valid");
        assert_eq!(
            (k.as_slice(), num, json.as_slice()),
            (&target[..], 9, &b"{}"[..])
        );
        assert!(split_value(b"k", &v[..10]).is_err());
        let mut wrong = v.clone();
        wrong[0] = Family::Monitor as u8;
        assert!(split_value(b"k", &wrong).is_err());
    }

    #[test]
    fn a_listing_at_start_ends_its_chunks_between_pages() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::Config::new()
            .path(dir.path())
            .open()
            .unwrap()
            .open_tree(JOURNAL_TREE)
            .unwrap();
        let target = super::super::keys::transition_key(5, jiff::Timestamp::UNIX_EPOCH, 0);
        // A page of 10, then 32 full pages: 2 058 entries, more than a chunk holds, and
        // a chunk ended by count alone would end inside the last page.
        let mut index = Index::default();
        for n in std::iter::once(10).chain([PAGE_AT_MOST; 32]) {
            let seqs = index.take_seqs(n);
            let mut w = journal_page::PageWriter::with_room(n);
            for &s in &seqs {
                w.push_encoded(s, &target).unwrap();
            }
            tree.insert(page_key(seqs[0] >> journal_page::SLOT_BITS), w.into_value())
                .unwrap();
        }
        let listed = Index::load(&tree).unwrap();
        assert_eq!(listed.len(), 10 + 32 * PAGE_AT_MOST);
        assert_eq!(listed.chunks.len(), 2);
        let mut pages_before = 0;
        for c in &listed.chunks {
            let (first, last) = (
                c.first >> journal_page::SLOT_BITS,
                (c.end - 1) >> journal_page::SLOT_BITS,
            );
            assert!(first >= pages_before, "a page in two chunks");
            assert!(c.nums.len() <= CHUNK_AT_MOST);
            pages_before = last + 1;
        }
        assert_eq!(
            listed.next_page, 33,
            "the next round starts a page of its own"
        );
    }
}
