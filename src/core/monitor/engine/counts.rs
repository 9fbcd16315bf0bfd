//! A small count per monitor, found by the monitor's number: how many transitions each
//! monitor made since its timeline was last trimmed.
//!
//! After a herd every monitor has a count. A hash map took 36 bytes per monitor, a B-tree
//! about 22, and the B-tree's search (six nodes deep at a million monitors, each a cache
//! miss) ran for every transition on the engine thread. Monitor numbers are given out one
//! after another, so counts sit in pages of [`PAGE`] numbers: a byte per monitor, and one
//! lookup in a map of a few hundred pages that stays in the cache.

/// Numbers per page.
const PAGE: u64 = 4096;

/// Counts by monitor number; a number never counted reads as 0.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pages: foldhash::HashMap<u64, Box<[u8; PAGE as usize]>>,
}

impl Counts {
    /// Monitor `num`'s count, to change.
    pub(super) fn get_mut(&mut self, num: u64) -> &mut u8 {
        let page = self
            .pages
            .entry(num / PAGE)
            .or_insert_with(|| Box::new([0; PAGE as usize]));
        // In bounds: the remainder is below PAGE, the page's length.
        &mut page[(num % PAGE) as usize]
    }

    /// Sets monitor `num`'s count back to 0 (it was removed).
    pub(super) fn clear(&mut self, num: u64) {
        if let Some(page) = self.pages.get_mut(&(num / PAGE)) {
            page[(num % PAGE) as usize] = 0;
        }
    }

    /// Bytes the pages take.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.pages.len() * PAGE as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_number_and_cleared() {
        let mut counts = Counts::default();
        for num in [0, 1, 4095, 4096, u64::MAX] {
            assert_eq!(*counts.get_mut(num), 0);
            *counts.get_mut(num) += 1;
        }
        *counts.get_mut(1) += 1;
        assert_eq!(*counts.get_mut(1), 2);
        assert_eq!(*counts.get_mut(4096), 1);
        counts.clear(1);
        counts.clear(123_456_789);
        assert_eq!((*counts.get_mut(1), *counts.get_mut(0)), (0, 1));
        assert_eq!(*counts.get_mut(u64::MAX), 1);
    }

    #[test]
    fn a_million_numbers_take_about_a_byte_each() {
        let mut counts = Counts::default();
        for num in 1..=1_000_000 {
            *counts.get_mut(num) = 1;
        }
        assert!(
            counts.bytes() <= 1_000_000 + PAGE as usize,
            "{}",
            counts.bytes()
        );
    }
}
