//! Monitor numbers, given out by the store: densely, so that the state file's slots
//! ([`crate::core::store::states`]) are dense too, and never twice.
//!
//! Builds before the state file took numbers from sled's id generator, which event
//! blocks and Applications share and which moves on by up to two million at each start:
//! a store of such a build may hold numbers far past [`SLOTS`], whose monitors keep their
//! state records in sled. New numbers fill the range below [`SLOTS`] first, above every
//! number used there, and go on above the numbers past it only once it is full.
//!
//! How far each range was given out is kept in the monitors tree ([`NEXT_NUMS_KEY`]),
//! written in the round that stores a monitor with a new number: a number whose monitor
//! was deleted is not given out again after a restart, as the storage port promises.

use super::keys::{Family, NEXT_NUMS_KEY, numbered_prefix};
use super::{StoreError, decode};
use crate::core::store::states::SLOTS;
use crate::core::store::wal::Mutation;

/// The next number of each range, as given out or as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Numbers {
    /// The next number below [`SLOTS`] (reaching it: the range is full).
    pub(super) low: u64,
    /// The next number from [`SLOTS`] on.
    pub(super) high: u64,
}

impl Numbers {
    /// Gives out the next number.
    pub(super) fn take(&mut self) -> u64 {
        if self.low < SLOTS {
            self.low += 1;
            self.low - 1
        } else {
            self.high += 1;
            self.high - 1
        }
    }

    /// Whether `num` is past what `self` says was given out (then it must be stored).
    fn covers(&self, num: u64) -> bool {
        if num < SLOTS {
            num < self.low
        } else {
            num < self.high
        }
    }

    /// Moves past `num`.
    fn include(&mut self, num: u64) {
        if num < SLOTS {
            self.low = self.low.max(num + 1);
        } else {
            self.high = self.high.max(num.saturating_add(1));
        }
    }

    fn encode(&self) -> Vec<u8> {
        [self.low.to_be_bytes(), self.high.to_be_bytes()].concat()
    }

    fn decode(v: &[u8]) -> Option<Self> {
        let low = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let high = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
        Some(Self { low, high })
    }

    /// The next numbers of the store in `tree`: past what was stored as given out, and
    /// past every number the tree keeps anything under (records, state records,
    /// timelines, ping blocks, retained records), in each range.
    pub(super) fn of(tree: &sled::Tree) -> Result<Self, StoreError> {
        let mut n = match tree.get(NEXT_NUMS_KEY)? {
            Some(v) => Self::decode(&v).ok_or_else(|| StoreError::Corrupt {
                what: "the monitor numbers given out".into(),
                detail: format!("{} bytes, not 16", v.len()),
            })?,
            None => Self {
                low: 1,
                high: SLOTS,
            },
        };
        n.low = n.low.max(1);
        n.high = n.high.max(SLOTS);
        for family in [
            Family::Monitor,
            Family::State,
            Family::Transition,
            Family::PingBlock,
        ] {
            let below = tree
                .range(numbered_prefix(family, 0)..numbered_prefix(family, SLOTS))
                .next_back();
            for item in [below, tree.scan_prefix([family as u8]).next_back()]
                .into_iter()
                .flatten()
            {
                let (k, _) = item?;
                if let Some(num) = k.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    n.include(u64::from_be_bytes(num));
                }
            }
        }
        for item in tree.scan_prefix([Family::Retained as u8]) {
            let (_, v) = item?;
            let retained: Numbered = decode("retained monitor", &v)?;
            n.include(retained.num);
        }
        Ok(n)
    }

    /// The write that stores the numbers of a round's monitors as given out, if any goes
    /// past what `stored` says (which follows): one write for the round, however many new
    /// monitors it stores.
    pub(super) fn record(
        stored: &mut Self,
        nums: impl IntoIterator<Item = u64>,
        tree: &sled::Tree,
    ) -> Option<Mutation> {
        let mut past = false;
        for num in nums {
            if !stored.covers(num) {
                stored.include(num);
                past = true;
            }
        }
        past.then(|| Mutation::put(tree, NEXT_NUMS_KEY.to_vec(), stored.encode()))
    }
}

/// The one field of a monitor's record the numbering needs.
#[derive(serde::Deserialize)]
struct Numbered {
    num: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_fill_the_range_with_slots_first_then_go_on_past_the_numbers_above_it() {
        let mut n = Numbers {
            low: SLOTS - 2,
            high: SLOTS + 7,
        };
        assert_eq!(
            [n.take(), n.take(), n.take(), n.take()],
            [SLOTS - 2, SLOTS - 1, SLOTS + 7, SLOTS + 8]
        );
    }

    #[test]
    fn the_next_numbers_pass_every_number_in_use_and_what_was_given_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("monitors").unwrap();
        assert_eq!(
            Numbers::of(&tree).unwrap(),
            Numbers {
                low: 1,
                high: SLOTS
            }
        );
        // Numbers of an earlier build, in both ranges, under several families.
        tree.insert(numbered_prefix(Family::Monitor, 40), &b"{}"[..])
            .unwrap();
        tree.insert(numbered_prefix(Family::Transition, 41), &b"{}"[..])
            .unwrap();
        tree.insert(
            numbered_prefix(Family::PingBlock, SLOTS + 1_000_000),
            &b"{}"[..],
        )
        .unwrap();
        tree.insert(
            [&[Family::Retained as u8][..], b"ns/gone"].concat(),
            &br#"{"num":57}"#[..],
        )
        .unwrap();
        let mut n = Numbers::of(&tree).unwrap();
        assert_eq!(
            n,
            Numbers {
                low: 58,
                high: SLOTS + 1_000_001
            }
        );
        // Given out and stored, then deleted: not given out again.
        let mut stored = n;
        let num = n.take();
        let write = Numbers::record(&mut stored, [num], &tree).unwrap();
        write.apply().unwrap();
        assert!(
            Numbers::record(&mut stored, [num], &tree).is_none(),
            "stored once"
        );
        assert_eq!(Numbers::of(&tree).unwrap().low, 59);
        // A round of several new monitors stores them in one write.
        let nums = [n.take(), n.take(), n.take()];
        let write = Numbers::record(&mut stored, nums, &tree).unwrap();
        write.apply().unwrap();
        assert_eq!(Numbers::of(&tree).unwrap().low, 62);
        tree.insert(NEXT_NUMS_KEY, &b"short"[..]).unwrap();
        assert!(matches!(
            Numbers::of(&tree),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
