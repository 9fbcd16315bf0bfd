//! The committer's view of records not applied yet: the overlay of their writes, and the
//! reader that looks there before it reads sled.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Inner;
use crate::core::store::wal::{Mutation, Op};

/// The writes of records submitted and not applied yet, by tree and key: the latest one of
/// each key, with the sequence number of its record. `None` is a pending remove.
#[derive(Default)]
pub(super) struct Overlay {
    pub(super) trees: foldhash::HashMap<sled::IVec, PendingKeys>,
}

/// One tree's pending writes: key → (record, value or `None` for a remove).
type PendingKeys = BTreeMap<Vec<u8>, (u64, Option<sled::IVec>)>;

impl Overlay {
    pub(super) fn add(&mut self, seq: u64, writes: &[Mutation]) {
        for w in writes.iter().filter(|w| w.read_back) {
            let value = match &w.op {
                Op::Put(v) => Some(sled::IVec::from(v.as_slice())),
                Op::Remove => None,
                // Its writer never reads it back (queued alerts); sled decides on apply.
                Op::PutIfAbsent(_) => continue,
            };
            self.trees
                .entry(w.target.name())
                .or_default()
                .insert(w.key.clone(), (seq, value));
        }
    }

    /// Forgets the writes of record `seq`, now in sled, unless a later record rewrote them.
    pub(super) fn applied(&mut self, seq: u64, writes: &[Mutation]) {
        for w in writes.iter().filter(|w| w.read_back) {
            if let Some(keys) = self.trees.get_mut(&w.target.name())
                && keys.get(&w.key).is_some_and(|(s, _)| *s == seq)
            {
                keys.remove(&w.key);
            }
        }
    }
}

/// Reads as the records submitted so far leave the database, applied or not: for the
/// single writer of the keys read, preparing its next record. Every write stays in the
/// committer's overlay from submission until sled has it, and reads look there first.
pub struct PendingReader<'a> {
    pub(super) inner: &'a Inner,
}

impl PendingReader<'_> {
    /// The value of `key` in `tree`.
    pub fn read(&self, tree: &sled::Tree, key: &[u8]) -> Result<Option<sled::IVec>, sled::Error> {
        // The overlay first: a write leaves it only after sled has it.
        if let Some(keys) = self.inner.overlay().trees.get(&tree.name())
            && let Some((_, value)) = keys.get(key)
        {
            return Ok(value.clone());
        }
        tree.get(key)
    }

    /// The keys of `tree` from `lo` up to `hi` (excluded; `None`: to the end) as the
    /// records submitted so far leave them, in order: like [`PendingReader::read`], for the
    /// single writer of those keys.
    pub fn keys(
        &self,
        tree: &sled::Tree,
        lo: &[u8],
        hi: Option<&[u8]>,
    ) -> Result<Vec<Vec<u8>>, sled::Error> {
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        // The overlay first, then sled: a write applied in between is in both.
        let pending: Vec<(Vec<u8>, bool)> = match self.inner.overlay().trees.get(&tree.name()) {
            Some(keys) => keys
                .range::<[u8], _>((Bound::Included(lo), upper))
                .map(|(k, (_, v))| (k.clone(), v.is_some()))
                .collect(),
            None => Vec::new(),
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut pending = pending.into_iter().peekable();
        let stored = match hi {
            Some(hi) => tree.range(lo..hi),
            None => tree.range(lo..),
        };
        for k in stored.keys() {
            let k = k?;
            while let Some((p, present)) = pending.next_if(|(p, _)| p.as_slice() < &k[..]) {
                if present {
                    out.push(p);
                }
            }
            match pending.next_if(|(p, _)| p.as_slice() == &k[..]) {
                Some((_, false)) => {}
                _ => out.push(k.to_vec()),
            }
        }
        out.extend(pending.filter(|(_, present)| *present).map(|(p, _)| p));
        Ok(out)
    }

    /// The keys of `tree` starting with `prefix`, as [`PendingReader::keys`] sees them.
    pub fn keys_with_prefix(
        &self,
        tree: &sled::Tree,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, sled::Error> {
        // The first key after every key with this prefix: the prefix without its trailing
        // 0xff bytes, last byte plus one. Every key after a prefix of only 0xff bytes
        // starts with it.
        let mut end = prefix.to_vec();
        while end.last() == Some(&0xff) {
            end.pop();
        }
        match end.last_mut() {
            Some(last) => {
                *last += 1;
                self.keys(tree, prefix, Some(&end))
            }
            None => self.keys(tree, prefix, None),
        }
    }
}
