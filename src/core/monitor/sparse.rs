//! A list most monitors leave empty, held as one pointer instead of a `Vec`'s three words.
//!
//! A monitor's state keeps the newest Jobs of a watched CronJob and the newest pings of a
//! `requirePing` monitor; most monitors watch no CronJob, and with a million monitors in
//! memory the two empty `Vec`s alone took 48 MB. Reads as a slice, compares by its items,
//! and serializes as the `Vec` it replaced, so stored state is unchanged.

use serde::{Deserialize, Serialize};

/// A list that holds nothing until an item is added.
#[derive(Debug, Clone)]
// Boxed on purpose: one pointer in every monitor, the `Vec`'s three words only in those
// that hold an item.
#[allow(clippy::box_collection)]
pub struct SparseList<T>(Option<Box<Vec<T>>>);

impl<T> Default for SparseList<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> SparseList<T> {
    /// An empty list (no allocation).
    pub const fn new() -> Self {
        Self(None)
    }

    /// The list to change, allocated on first use.
    pub fn vec_mut(&mut self) -> &mut Vec<T> {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<T> std::ops::Deref for SparseList<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl<T: PartialEq> PartialEq for SparseList<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Eq> Eq for SparseList<T> {}

impl<T> From<Vec<T>> for SparseList<T> {
    fn from(v: Vec<T>) -> Self {
        Self((!v.is_empty()).then(|| Box::new(v)))
    }
}

impl<T: Serialize> Serialize for SparseList<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SparseList<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_holds_no_allocation_and_equals_an_emptied_one() {
        let mut a = SparseList::<u32>::new();
        assert!(a.0.is_none() && a.is_empty());
        a.vec_mut().push(7);
        assert_eq!(&*a, &[7]);
        a.vec_mut().clear();
        assert_eq!(a, SparseList::new());
        assert_eq!(std::mem::size_of::<SparseList<u32>>(), 8);
    }

    #[test]
    fn serializes_as_the_vec_it_replaced() {
        let list = SparseList::from(vec![1u32, 2]);
        assert_eq!(serde_json::to_string(&list).unwrap(), "[1,2]");
        let back: SparseList<u32> = serde_json::from_str("[1,2]").unwrap();
        assert_eq!(back, list);
        let empty: SparseList<u32> = serde_json::from_str("[]").unwrap();
        assert!(empty.0.is_none());
    }

    #[test]
    fn a_copy_changes_apart_from_its_original() {
        let original = SparseList::from(vec![1u32]);
        let mut copy = original.clone();
        copy.vec_mut().push(2);
        assert_eq!((&*original, &*copy), (&[1][..], &[1, 2][..]));
    }
}
