//! Pages of the timeline journal: a round's entries, up to [`PAGE_AT_MOST`] to a sled
//! value, under the page's number.
//!
//! Why pages: one journal value per entry made every Down of a herd a sled insert of its
//! own, on the helper apply thread. sled 0.34 copies the leaf it inserts into, and the
//! index node above it whenever that leaf splits, so those inserts were a quarter of the
//! process's CPU in a herd, the most of any single kind of work (docs/benchmarks.md). A
//! page of 64 entries is one insert.
//!
//! An entry's sequence number is its page's number shifted left by [`SLOT_BITS`], plus its
//! slot in the page: numbers still rise in the order entries were appended, and a number
//! names its page without a lookup.
//!
//! A page's value is [`PAGE_MARK`], then per entry its slot (one byte), its length (four
//! bytes, big-endian) and its bytes: the entry's key in the monitors tree followed by its
//! JSON ([`split_value`](super::journal::split_value)). A value that starts with the
//! timeline family's byte instead is one entry of the layout before pages, read as a page
//! of one at slot 0.
//!
//! Entries leave a page by a rewrite of the page without them (trims and removals, through
//! the committer's pending view, which sees every page written before), or with the whole
//! page when the mover has carried its entries to their monitors.

use super::keys::Family;
use crate::core::store::StoreError;
use crate::core::store::commit::PendingReader;
use crate::core::store::wal::Mutation;

/// Bits of a sequence number that give an entry's slot in its page.
pub(super) const SLOT_BITS: u32 = 6;

/// Entries a page holds at most. The index's chunks hold whole pages: its chunk size is a
/// multiple of this.
pub(super) const PAGE_AT_MOST: usize = 1 << SLOT_BITS;

/// The first byte of a page's value; a value of the layout before pages starts with the
/// timeline family's byte.
const PAGE_MARK: u8 = 0xA7;

/// Bytes before an entry's own in a page: slot and length.
const ENTRY_HEAD: usize = 5;

/// The page of entry `seq`.
pub(super) fn page_of(seq: u64) -> u64 {
    seq >> SLOT_BITS
}

/// The sequence number of slot `slot` of page `page`.
pub(super) fn seq_at(page: u64, slot: u8) -> u64 {
    (page << SLOT_BITS) | u64::from(slot)
}

/// Entry `seq`'s slot in its page.
fn slot_of(seq: u64) -> u8 {
    (seq & (PAGE_AT_MOST as u64 - 1)) as u8
}

/// Key of page `page` in the journal tree: its number, big-endian, so pages sort in the
/// order they were appended.
pub(super) fn page_key(page: u64) -> [u8; 8] {
    page.to_be_bytes()
}

/// The page number of a journal key, or `Corrupt`.
pub(super) fn page_of_key(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key, "a journal key is 8 bytes"))
}

/// Writes page `page` of the journal `tree`: appended by a round or rewritten by a trim.
/// Read back through the committer's pending view, so a later round's trim sees it before
/// sled has it. Rising: pages share the tree's rightmost leaves ([`Mutation::rising`]).
pub(super) fn put_page(tree: &sled::Tree, page: u64, value: Vec<u8>) -> Mutation {
    Mutation::put(tree, page_key(page).to_vec(), value).in_rising_run()
}

/// Removes page `page` from the journal `tree` (rising, as [`put_page`]).
pub(super) fn remove_page(tree: &sled::Tree, page: u64) -> Mutation {
    Mutation::remove(tree, page_key(page).to_vec()).in_rising_run()
}

/// A page being written: entries appended in slot order.
pub(super) struct PageWriter {
    buf: Vec<u8>,
}

impl PageWriter {
    /// An empty page with room for about `entries` entries.
    pub(super) fn with_room(entries: usize) -> Self {
        let mut buf = Vec::with_capacity(1 + entries * 200);
        buf.push(PAGE_MARK);
        Self { buf }
    }

    /// Appends entry `seq`: `target` (its key in the monitors tree), then whatever `body`
    /// writes (its JSON), encoded in place.
    pub(super) fn push(
        &mut self,
        seq: u64,
        target: &[u8],
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.buf.push(slot_of(seq));
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(target);
        body(&mut self.buf)?;
        let len = self.buf.len() - len_at - 4;
        let len = u32::try_from(len)
            .map_err(|_| StoreError::Write(format!("a timeline entry of {len} bytes")))?;
        if let Some(at) = self.buf.get_mut(len_at..len_at + 4) {
            at.copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }

    /// Appends entry `seq`, already encoded (its target key and JSON).
    pub(super) fn push_encoded(&mut self, seq: u64, entry: &[u8]) -> Result<(), StoreError> {
        self.push(seq, entry, |_| Ok(()))
    }

    /// Whether no entry was pushed.
    pub(super) fn is_empty(&self) -> bool {
        self.buf.len() <= 1
    }

    pub(super) fn into_value(self) -> Vec<u8> {
        self.buf
    }
}

/// The entries of the page stored under `key`, as (sequence number, entry bytes), in slot
/// order; `Corrupt` if the value is neither a page nor an entry of the layout before.
pub(super) fn entries<'v>(key: &[u8], value: &'v [u8]) -> Result<Vec<(u64, &'v [u8])>, StoreError> {
    let page = page_of_key(key)?;
    match value.first() {
        Some(&f) if f == Family::Transition as u8 => return Ok(vec![(seq_at(page, 0), value)]),
        Some(&PAGE_MARK) => {}
        _ => return Err(corrupt(key, "neither a page nor a timeline entry")),
    }
    let mut out = Vec::new();
    let mut rest = value.get(1..).unwrap_or_default();
    while !rest.is_empty() {
        let (Some(&slot), Some(len)) = (rest.first(), rest.get(1..ENTRY_HEAD)) else {
            return Err(corrupt(key, "a page entry cut short in its head"));
        };
        let len = <[u8; 4]>::try_from(len).map_or(0, u32::from_be_bytes) as usize;
        let Some(entry) = rest.get(ENTRY_HEAD..ENTRY_HEAD + len) else {
            return Err(corrupt(key, "a page entry cut short"));
        };
        if usize::from(slot) >= PAGE_AT_MOST {
            return Err(corrupt(key, "a slot beyond the page"));
        }
        out.push((seq_at(page, slot), entry));
        rest = rest.get(ENTRY_HEAD + len..).unwrap_or_default();
    }
    Ok(out)
}

/// Entry `seq` of the page stored under `key`, if the page holds it.
pub(super) fn entry_of<'v>(
    key: &[u8],
    value: &'v [u8],
    seq: u64,
) -> Result<Option<&'v [u8]>, StoreError> {
    Ok(entries(key, value)?
        .into_iter()
        .find(|(s, _)| *s == seq)
        .map(|(_, e)| e))
}

/// The page stored under `key` without the entries `gone` names (sequence numbers of this
/// page), or `None` when none is left.
pub(super) fn without(
    key: &[u8],
    value: &[u8],
    gone: &[u64],
) -> Result<Option<Vec<u8>>, StoreError> {
    let kept: Vec<(u64, &[u8])> = entries(key, value)?
        .into_iter()
        .filter(|(seq, _)| !gone.contains(seq))
        .collect();
    if kept.is_empty() {
        return Ok(None);
    }
    let mut page = PageWriter::with_room(kept.len());
    for (seq, entry) in kept {
        page.push_encoded(seq, entry)?;
    }
    Ok(Some(page.into_value()))
}

/// The pages a round takes entries out of (trims, removals), as the records before it
/// leave them, rewritten once at the round's end.
#[derive(Default)]
pub(super) struct PageEdits {
    /// Page → its value as the round found it (`None`: there is none), and the entries the
    /// round took out of it.
    pages: foldhash::HashMap<u64, (Option<sled::IVec>, Vec<u64>)>,
}

impl PageEdits {
    /// Page `page` and what the round took out of it, read the first time the round
    /// touches it.
    fn page(
        &mut self,
        reader: &PendingReader<'_>,
        tree: &sled::Tree,
        page: u64,
    ) -> Result<&mut (Option<sled::IVec>, Vec<u64>), StoreError> {
        Ok(match self.pages.entry(page) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((reader.read(tree, &page_key(page))?, Vec::new()))
            }
        })
    }

    /// Entry `seq` as the round sees it: `None` if its page does not hold it or the round
    /// took it out.
    pub(super) fn entry(
        &mut self,
        reader: &PendingReader<'_>,
        tree: &sled::Tree,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let p = page_of(seq);
        let (value, gone) = self.page(reader, tree, p)?;
        match value {
            Some(v) if !gone.contains(&seq) => {
                Ok(entry_of(&page_key(p), v, seq)?.map(<[u8]>::to_vec))
            }
            _ => Ok(None),
        }
    }

    /// Takes entry `seq` out of its page.
    pub(super) fn remove(
        &mut self,
        reader: &PendingReader<'_>,
        tree: &sled::Tree,
        seq: u64,
    ) -> Result<(), StoreError> {
        let (_, gone) = self.page(reader, tree, page_of(seq))?;
        gone.push(seq);
        Ok(())
    }

    /// The rewrites of the pages the round took entries out of, in page order: each
    /// without them, or removed when nothing is left. A damaged page is removed: nothing
    /// in it can be read, and a trim that found it unlisted what it took out.
    pub(super) fn into_writes(self, tree: &sled::Tree) -> Vec<Mutation> {
        // Pages found, with entries taken out of them.
        let mut pages: Vec<(u64, sled::IVec, Vec<u64>)> = self
            .pages
            .into_iter()
            .filter_map(|(p, (v, gone))| Some((p, v?, gone)).filter(|e| !e.2.is_empty()))
            .collect();
        pages.sort_unstable_by_key(|e| e.0);
        pages
            .into_iter()
            .map(|(p, v, gone)| match without(&page_key(p), &v, &gone) {
                Ok(Some(rest)) => put_page(tree, p, rest),
                Ok(None) | Err(_) => remove_page(tree, p),
            })
            .collect()
    }
}

fn corrupt(key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("timeline journal entry {key:02x?}"),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seqs: &[u64]) -> Vec<u8> {
        let mut w = PageWriter::with_room(seqs.len());
        for &s in seqs {
            w.push(s, &[Family::Transition as u8, s as u8], |b| {
                b.extend_from_slice(b"{}");
                Ok(())
            })
            .unwrap();
        }
        w.into_value()
    }

    #[test]
    fn a_page_reads_back_its_entries_by_number_and_loses_them_one_by_one() {
        let key = page_key(3);
        let v = page(&[seq_at(3, 0), seq_at(3, 1), seq_at(3, 63)]);
        let got = entries(&key, &v).unwrap();
        assert_eq!(
            got.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![192, 193, 255]
        );
        assert_eq!(got[2].1, &[Family::Transition as u8, 255, b'{', b'}'][..]);
        let fewer = without(&key, &v, &[193]).unwrap().unwrap();
        let left: Vec<u64> = entries(&key, &fewer).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(left, vec![192, 255]);
        assert_eq!(without(&key, &fewer, &[192, 255]).unwrap(), None);
        assert_eq!(page_of(255), 3);
    }

    #[test]
    fn an_entry_of_the_layout_before_pages_reads_as_a_page_of_one() {
        let v = [Family::Transition as u8, 1, 2];
        assert_eq!(
            entries(&page_key(9), &v).unwrap(),
            vec![(seq_at(9, 0), &v[..])]
        );
    }

    #[test]
    fn damaged_pages_are_corrupt_by_key_never_a_panic() {
        let key = page_key(1);
        let v = page(&[64, 65]);
        for cut in 0..v.len() {
            if let Ok(e) = entries(&key, &v[..cut]) {
                assert!(e.len() < 2, "a cut page reads whole at {cut}");
            }
        }
        assert!(
            entries(&key, &[PAGE_MARK, 200, 0, 0, 0, 0]).is_err(),
            "slot beyond"
        );
        assert!(entries(&key, b"x").is_err());
        assert!(entries(b"short", &v).is_err());
    }
}
