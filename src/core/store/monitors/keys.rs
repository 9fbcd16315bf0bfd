//! Byte layouts of the keys in the monitors tree. A leading family byte keeps each kind of
//! record in one contiguous range, so the engine loads all monitors, and history readers
//! scan one monitor's pings or timeline, with a single prefix scan each.

use jiff::Timestamp;

use crate::core::store::keys::i64_key;

/// Which kind of record a key in the monitors tree holds.
///
/// Everything a monitor writes as it goes (its state, timeline entries and ping blocks)
/// is keyed by its number, and so is its record: a herd of deadlines is taken in number
/// order ([`crate::core::monitor::engine`]'s herd), so its writes walk each family's
/// leaves in order, and loading pairs each record with its state record in one pass over
/// both ranges. Earlier versions keyed records and state records by `namespace/name`;
/// those are converted at start ([`super::convert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Family {
    /// A monitor's definition and state by `namespace/name`, as earlier versions wrote it.
    NamedMonitor = 1,
    /// One ping per value, as earlier versions wrote them; converted to blocks at start.
    PingSingle = 2,
    /// The last record of a monitor deleted with `Retain`, by `namespace/name`, so a
    /// re-created monitor picks up its state and history.
    Retained = 3,
    /// A state transition, by monitor number and time.
    Transition = 4,
    /// A block of consecutive pings, by monitor number and block index.
    PingBlock = 5,
    /// A monitor's state record by `namespace/name`, as earlier versions wrote it.
    NamedState = 6,
    /// A monitor's definition and state, by number.
    Monitor = 7,
    /// A monitor's state alone, by number, written by the rounds that changed nothing
    /// else; newer than the state in the monitor's record while it exists. Only state
    /// records too long for a slot of the state file ([`crate::core::store::states`]),
    /// or of monitors numbered past its slots, are here.
    State = 8,
}

/// Key of monitor `num`'s record.
pub fn monitor_key(num: u64) -> [u8; 9] {
    numbered_prefix(Family::Monitor, num)
}

/// Key of monitor `num`'s state record.
pub fn state_key(num: u64) -> [u8; 9] {
    numbered_prefix(Family::State, num)
}

/// Key of a monitor's record as earlier versions wrote it.
pub fn named_monitor_key(key: &str) -> Vec<u8> {
    named(Family::NamedMonitor, key)
}

/// Key of a monitor's state record as earlier versions wrote it.
pub fn named_state_key(key: &str) -> Vec<u8> {
    named(Family::NamedState, key)
}

/// Key of a retained monitor's last record.
pub fn retained_key(key: &str) -> Vec<u8> {
    named(Family::Retained, key)
}

fn named(family: Family, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(family as u8);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The prefix of every key of `family` that belongs to monitor number `num`.
pub fn numbered_prefix(family: Family, num: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = family as u8;
    k[1..].copy_from_slice(&num.to_be_bytes());
    k
}

/// Transition key: family, monitor, time, position among the effects of one step (two
/// transitions can share an instant).
pub fn transition_key(num: u64, at: Timestamp, idx: u8) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..9].copy_from_slice(&numbered_prefix(Family::Transition, num));
    k[9..17].copy_from_slice(&i64_key(at.as_microsecond()));
    k[17] = idx;
    k
}

/// Where the monitors tree keeps the id of the state file its monitors' states are in
/// ([`crate::core::store::states::StateFile::id`]): outside every family.
pub const STATE_FILE_KEY: &[u8] = b"\xffstate-file";

/// Where the monitors tree keeps how far monitor numbers were given out
/// ([`super::numbers`]): outside every family.
pub const NEXT_NUMS_KEY: &[u8] = b"\xffnext-nums";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitors_timeline_sorts_by_time_inside_its_own_range() {
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let keys = [
            transition_key(7, at(-5), 0),
            transition_key(7, at(10), 0),
            transition_key(7, at(10), 1),
            transition_key(8, at(0), 0),
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert!(
            keys[..3]
                .iter()
                .all(|k| k.starts_with(&numbered_prefix(Family::Transition, 7)))
        );
        assert_ne!(named_monitor_key("a/b")[0], retained_key("a/b")[0]);
        assert_eq!(monitor_key(7)[1..], state_key(7)[1..]);
        assert!(monitor_key(7) < monitor_key(8) && monitor_key(8) < monitor_key(256));
        assert!(state_key(u64::MAX) < monitor_key(0) || state_key(0) > monitor_key(u64::MAX));
    }
}
