//! Byte layouts of sled keys and values.
//!
//! Keys are big-endian with signed numbers bias-flipped, so sled's byte order is the order
//! queries want: by application, then time (events) or date (rollups). Raw events and all
//! their rollups live in one tree, told apart by a leading family byte; one commit-log
//! record stores a batch of events together with every counter it changes. Values are small
//! binary layouts rather than JSON because the ingest path writes them for every batch.

use jiff::Timestamp;

/// Signed integer as big-endian bytes that sort in numeric order.
pub fn i64_key(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`i64_key`].
pub fn i64_from_key(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Microseconds since the epoch, the resolution events are stored with.
pub fn micros(ts: Timestamp) -> i64 {
    ts.as_microsecond()
}

/// Which kind of record a key in the events tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Family {
    /// Raw events: a block of one application's events within [`BLOCK_SPAN_MICROS`] of
    /// the key's time (or, as written before blocks, a single event).
    Event = 1,
    /// Count and weight per application, local date and event name.
    Rollup = 2,
    /// The same per user.
    UserRollup = 3,
    /// All-time count and weight per application and event name.
    Total = 4,
    /// The same per user.
    UserTotal = 5,
    /// Count and weight per application, UTC hour and event name (dashboard charts).
    HourRollup = 6,
    /// An `Idempotency-Key` seen with an accepted event, per application and UTC day.
    Idempotency = 7,
    /// The time of an application's newest event, so reading it never scans blocks.
    Latest = 8,
}

/// Key of an application's newest-event time.
pub fn latest_key(app: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = Family::Latest as u8;
    k[1..].copy_from_slice(&app.to_be_bytes());
    k
}

/// Key of a raw event: family, application, time, sequence.
pub fn event_key(app: u64, at_micros: i64, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = Family::Event as u8;
    k[1..9].copy_from_slice(&app.to_be_bytes());
    k[9..17].copy_from_slice(&i64_key(at_micros));
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// First key of an application's events at or after `at_micros`.
pub fn event_bound(app: u64, at_micros: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = Family::Event as u8;
    k[1..9].copy_from_slice(&app.to_be_bytes());
    k[9..].copy_from_slice(&i64_key(at_micros));
    k
}

/// First key after all of an application's events.
pub fn events_end(app: u64) -> Vec<u8> {
    let mut k = vec![Family::Event as u8];
    match app.checked_add(1) {
        Some(next) => k.extend_from_slice(&next.to_be_bytes()),
        None => k[0] += 1,
    }
    k
}

/// Splits an event key into (application, micros).
pub fn parse_event_key(k: &[u8]) -> Option<(u64, i64)> {
    if k.first() != Some(&(Family::Event as u8)) {
        return None;
    }
    let app = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let at = i64_from_key(k.get(9..17)?.try_into().ok()?);
    Some((app, at))
}

/// The first event's micros and the sequence of a raw-event (block) key.
pub fn parse_block_key(k: &[u8]) -> Option<(i64, u64)> {
    let (_, first) = parse_event_key(k)?;
    let seq = u64::from_be_bytes(k.get(17..25)?.try_into().ok()?);
    Some((first, seq))
}

/// A stored event's payload (the time lives in the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventValue {
    /// Event name.
    pub event: String,
    /// What it adds to the weight sums (1 unless the client says otherwise).
    pub weight: i64,
    /// Optional user id.
    pub user_id: Option<i64>,
}

impl EventValue {
    /// Encodes as `[1][weight LE][has_user][user LE][name]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(18 + self.event.len());
        v.push(1);
        v.extend_from_slice(&self.weight.to_le_bytes());
        match self.user_id {
            Some(u) => {
                v.push(1);
                v.extend_from_slice(&u.to_le_bytes());
            }
            None => {
                v.push(0);
                v.extend_from_slice(&[0u8; 8]);
            }
        }
        v.extend_from_slice(self.event.as_bytes());
        v
    }

    /// Decodes [`EventValue::encode`]'s layout; `None` for bytes it did not write.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.first() != Some(&1) || b.len() < 18 {
            return None;
        }
        let weight = i64::from_le_bytes(b[1..9].try_into().ok()?);
        let user = i64::from_le_bytes(b[10..18].try_into().ok()?);
        let user_id = (b[9] == 1).then_some(user);
        let event = String::from_utf8(b[18..].to_vec()).ok()?;
        Some(Self {
            event,
            weight,
            user_id,
        })
    }
}

/// Longest time, in microseconds, between the first and last event of one stored block.
/// Bounds how far a block can reach past its key's time, which is what lets export merge
/// blocks into time order while holding only the blocks of one such span, and retention
/// drop a block by its key alone.
pub const BLOCK_SPAN_MICROS: i64 = 1_000_000;

/// Most events in one stored block, so a block's value stays a few kilobytes.
pub const BLOCK_MAX_EVENTS: usize = 256;

/// Version byte of a block in the fixed-width layout of earlier versions (a single
/// event's value starts with 1). Still read; no longer written.
const BLOCK_TAG_FIXED: u8 = 2;

/// Version byte of a block in the compact layout [`encode_block`] writes.
const BLOCK_TAG: u8 = 3;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Signed to unsigned, small magnitudes small: 0, -1, 1, -2 → 0, 1, 2, 3.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Reads a value from the front of a byte slice, advancing it; `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..len)?, self.0.get(len..)?);
        self.0 = tail;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }
}

/// Encodes events of one application, sorted by time, all within [`BLOCK_SPAN_MICROS`] of
/// `first` (the time in the block's key), as one value, so one sled insert stores a whole
/// group commit's events of an application:
///
/// `[3][count][name count][per name: len, UTF-8][per event: delta, name index × 2 + has
/// user, weight, (user)]`, every number a LEB128 varint (weights and users zigzag-encoded).
///
/// Names repeat within a block and deltas and weights are small, so an event takes three
/// to a dozen bytes instead of two dozen and more: less to write through the commit log,
/// to store, and to hold in sled's cache while a block is read.
pub fn encode_block<'a>(
    first: i64,
    events: impl IntoIterator<Item = (i64, &'a EventValue)>,
) -> Vec<u8> {
    let events: Vec<(i64, &EventValue)> = events.into_iter().collect();
    let mut names: Vec<&str> = Vec::new();
    let mut index: Vec<usize> = Vec::with_capacity(events.len());
    for (_, e) in &events {
        // Blocks hold at most a few distinct names; a linear search beats hashing.
        let i = match names.iter().position(|n| *n == e.event) {
            Some(i) => i,
            None => {
                names.push(&e.event);
                names.len() - 1
            }
        };
        index.push(i);
    }
    let mut v = Vec::with_capacity(
        16 + names.iter().map(|n| n.len() + 2).sum::<usize>() + events.len() * 6,
    );
    v.push(BLOCK_TAG);
    put_varint(&mut v, events.len() as u64);
    put_varint(&mut v, names.len() as u64);
    for n in &names {
        put_varint(&mut v, n.len() as u64);
        v.extend_from_slice(n.as_bytes());
    }
    for ((at, e), i) in events.iter().zip(index) {
        put_varint(&mut v, u64::try_from(at.saturating_sub(first)).unwrap_or(0));
        put_varint(&mut v, (i as u64) << 1 | u64::from(e.user_id.is_some()));
        put_varint(&mut v, zigzag(e.weight));
        if let Some(u) = e.user_id {
            put_varint(&mut v, zigzag(u));
        }
    }
    v
}

/// Decodes a stored value of the raw event family into `(micros, event)` pairs in time
/// order: a block written by [`encode_block`] or in the earlier fixed layout, or a single
/// event ([`EventValue::encode`]) whose time is the key's. `None` for bytes none wrote.
pub fn decode_events(key_micros: i64, b: &[u8]) -> Option<Vec<(i64, EventValue)>> {
    match b.first() {
        Some(&BLOCK_TAG) => decode_compact(key_micros, b.get(1..)?),
        Some(&BLOCK_TAG_FIXED) => decode_fixed(key_micros, b),
        _ => EventValue::decode(b).map(|e| vec![(key_micros, e)]),
    }
}

fn decode_compact(key_micros: i64, b: &[u8]) -> Option<Vec<(i64, EventValue)>> {
    let mut r = Reader(b);
    let n = r.len()?;
    let name_count = r.len()?;
    let mut names = Vec::with_capacity(name_count.min(BLOCK_MAX_EVENTS));
    for _ in 0..name_count {
        let len = r.len()?;
        names.push(std::str::from_utf8(r.take(len)?).ok()?);
    }
    let mut out = Vec::with_capacity(n.min(BLOCK_MAX_EVENTS));
    for _ in 0..n {
        let delta = i64::try_from(r.varint()?).ok()?;
        let tag = r.varint()?;
        let name = names.get(usize::try_from(tag >> 1).ok()?)?;
        let weight = unzigzag(r.varint()?);
        let user_id = match tag & 1 {
            1 => Some(unzigzag(r.varint()?)),
            _ => None,
        };
        out.push((
            key_micros.checked_add(delta)?,
            EventValue {
                event: (*name).to_string(),
                weight,
                user_id,
            },
        ));
    }
    r.0.is_empty().then_some(out)
}

/// The fixed layout of earlier versions: `[2][count u32][per event: delta u32, weight i64,
/// has_user u8, (user i64), len u16, name]`, little-endian.
fn decode_fixed(key_micros: i64, b: &[u8]) -> Option<Vec<(i64, EventValue)>> {
    let n = u32::from_le_bytes(b.get(1..5)?.try_into().ok()?) as usize;
    let mut out = Vec::with_capacity(n.min(BLOCK_MAX_EVENTS));
    let mut r = Reader(b.get(5..)?);
    for _ in 0..n {
        let delta = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let weight = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let user_id = match r.take(1)?[0] {
            0 => None,
            1 => Some(i64::from_le_bytes(r.take(8)?.try_into().ok()?)),
            _ => return None,
        };
        let len = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let event = String::from_utf8(r.take(usize::from(len))?.to_vec()).ok()?;
        out.push((
            key_micros.checked_add(i64::from(delta))?,
            EventValue {
                event,
                weight,
                user_id,
            },
        ));
    }
    Some(out)
}

/// Number of events in a stored raw-event value, read from its header alone.
pub fn event_count_of(b: &[u8]) -> usize {
    match b.first() {
        Some(&BLOCK_TAG) => b.get(1..).and_then(|rest| Reader(rest).len()).unwrap_or(0),
        Some(&BLOCK_TAG_FIXED) => b
            .get(1..5)
            .and_then(|c| c.try_into().ok())
            .map_or(0, |c| u32::from_le_bytes(c) as usize),
        Some(_) => 1,
        None => 0,
    }
}

/// Key of an idempotency record: family, application, UTC day (days since the epoch) it
/// was accepted on, SHA-256 of the client's key. Grouping by day lets expiry delete whole
/// days by range, and a lookup needs only today and yesterday.
pub fn idempotency_key(app: u64, day: i64, key_hash: &[u8; 32]) -> [u8; 45] {
    let mut k = [0u8; 45];
    k[..13].copy_from_slice(&idempotency_bound(app, day));
    k[13..].copy_from_slice(key_hash);
    k
}

/// First idempotency key of an application's records of `day`.
pub fn idempotency_bound(app: u64, day: i64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = Family::Idempotency as u8;
    k[1..9].copy_from_slice(&app.to_be_bytes());
    // Days since the epoch fit an i32 for every time jiff can represent.
    let day = i32::try_from(day).unwrap_or(if day < 0 { i32::MIN } else { i32::MAX });
    k[9..].copy_from_slice(&((day as u32) ^ (1 << 31)).to_be_bytes());
    k
}

/// UTC day (days since the epoch) of `ts`, the bucket of an idempotency record.
pub fn day_of(ts: Timestamp) -> i64 {
    ts.as_second().div_euclid(86_400)
}

/// An idempotency record's value: when its event was accepted and the fingerprint of the
/// request, `[micros i64 LE][fingerprint 32]`.
pub fn encode_idempotency(at_micros: i64, fingerprint: &[u8; 32]) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&at_micros.to_le_bytes());
    v[8..].copy_from_slice(fingerprint);
    v
}

/// Inverse of [`encode_idempotency`].
pub fn decode_idempotency(b: &[u8]) -> Option<(i64, [u8; 32])> {
    let at = i64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let fp = b.get(8..40)?.try_into().ok()?;
    Some((at, fp))
}

/// A count and a weight sum; the sum is 128-bit so no realistic volume overflows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Tally {
    /// Number of events.
    pub count: i64,
    /// Sum of their weights.
    pub weight: i128,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, other: Tally) {
        self.count = self.count.saturating_add(other.count);
        self.weight = self.weight.saturating_add(other.weight);
    }

    /// 24-byte little-endian layout.
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..].copy_from_slice(&self.weight.to_le_bytes());
        b
    }

    /// Inverse of [`Tally::encode`]; a malformed value reads as zero.
    pub fn decode(b: &[u8]) -> Self {
        let count = b
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .map(i64::from_le_bytes);
        let weight = b
            .get(8..24)
            .and_then(|s| s.try_into().ok())
            .map(i128::from_le_bytes);
        Self {
            count: count.unwrap_or(0),
            weight: weight.unwrap_or(0),
        }
    }
}

/// Key prefix of a rollup or total family for an application, narrowed to a user for
/// the per-user families.
pub fn scope_prefix(family: Family, app: u64, user: Option<i64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.push(family as u8);
    k.extend_from_slice(&app.to_be_bytes());
    if let Some(u) = user {
        k.extend_from_slice(&i64_key(u));
    }
    k
}

/// Rollup key: family, application, (user,) date, event name.
pub fn rollup_key(app: u64, user: Option<i64>, date: u32, event: &str) -> Vec<u8> {
    let family = if user.is_some() {
        Family::UserRollup
    } else {
        Family::Rollup
    };
    let mut k = scope_prefix(family, app, user);
    k.extend_from_slice(&date.to_be_bytes());
    k.extend_from_slice(event.as_bytes());
    k
}

/// Total key: family, application, (user,) event name.
pub fn total_key(app: u64, user: Option<i64>, event: &str) -> Vec<u8> {
    let family = if user.is_some() {
        Family::UserTotal
    } else {
        Family::Total
    };
    let mut k = scope_prefix(family, app, user);
    k.extend_from_slice(event.as_bytes());
    k
}

/// Hour rollup key: family, application, hours since the epoch, event name.
pub fn hour_key(app: u64, hour: i64, event: &str) -> Vec<u8> {
    let mut k = scope_prefix(Family::HourRollup, app, None);
    k.extend_from_slice(&i64_key(hour));
    k.extend_from_slice(event.as_bytes());
    k
}

/// Hours since the epoch of `ts`, the bucket of an hour rollup.
pub fn hour_of(ts: Timestamp) -> i64 {
    ts.as_second().div_euclid(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_keys_sort_numerically() {
        let vals = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let keys: Vec<_> = vals.iter().map(|v| i64_key(*v)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(i64_from_key(i64_key(-5)), -5);
    }

    #[test]
    fn event_value_round_trip() {
        let v = EventValue {
            event: "a,\"b\"\nc".into(),
            weight: -3,
            user_id: Some(-1),
        };
        assert_eq!(EventValue::decode(&v.encode()), Some(v));
        let v = EventValue {
            event: "x".into(),
            weight: 1,
            user_id: None,
        };
        assert_eq!(EventValue::decode(&v.encode()), Some(v));
        assert_eq!(EventValue::decode(b"garbage"), None);
    }

    #[test]
    fn tally_round_trip() {
        let t = Tally {
            count: 3,
            weight: -(1i128 << 70),
        };
        assert_eq!(Tally::decode(&t.encode()), t);
    }

    #[test]
    fn block_round_trip_and_single_event_values() {
        let a = EventValue {
            event: "é,\"x\"".into(),
            weight: -7,
            user_id: Some(i64::MIN),
        };
        let b = EventValue {
            event: "b".into(),
            weight: i64::MAX,
            user_id: None,
        };
        let enc = encode_block(1_000, [(1_000, &a), (1_999_000, &b)]);
        assert_eq!(event_count_of(&enc), 2);
        assert_eq!(
            decode_events(1_000, &enc),
            Some(vec![(1_000, a.clone()), (1_999_000, b)])
        );
        // Values written before blocks: one event at the key's time.
        assert_eq!(decode_events(5, &a.encode()), Some(vec![(5, a.clone())]));
        assert_eq!(event_count_of(&a.encode()), 1);
        // A truncated block is refused, not misread.
        assert_eq!(decode_events(1_000, &enc[..enc.len() - 1]), None);
        assert_eq!(decode_events(0, &[2, 1, 0, 0, 0]), None);
        assert_eq!(decode_events(0, &[3, 1, 1, 0]), None);
    }

    #[test]
    fn blocks_in_the_earlier_fixed_layout_still_read() {
        // [2][count 2][delta 0, weight 5, user -1, "ab"][delta 7, weight -1, no user, ""]
        let mut b = vec![2, 2, 0, 0, 0];
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&5i64.to_le_bytes());
        b.push(1);
        b.extend_from_slice(&(-1i64).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(b"ab");
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&(-1i64).to_le_bytes());
        b.push(0);
        b.extend_from_slice(&0u16.to_le_bytes());
        let want = vec![
            (
                100,
                EventValue {
                    event: "ab".into(),
                    weight: 5,
                    user_id: Some(-1),
                },
            ),
            (
                107,
                EventValue {
                    event: "".into(),
                    weight: -1,
                    user_id: None,
                },
            ),
        ];
        assert_eq!(decode_events(100, &b), Some(want));
        assert_eq!(event_count_of(&b), 2);
    }

    #[test]
    fn compact_blocks_are_small_and_round_trip_extreme_values() {
        let names = ["backfill", "login", "backfill"];
        let events: Vec<(i64, EventValue)> = (0..256)
            .map(|i| {
                (
                    T0 + i64::from(i % 3),
                    EventValue {
                        event: names[(i % 3) as usize].into(),
                        weight: [1, i64::MIN, i64::MAX][(i % 3) as usize],
                        user_id: [None, Some(i64::MIN), Some(i64::MAX)][(i % 3) as usize],
                    },
                )
            })
            .collect();
        let enc = encode_block(T0, events.iter().map(|(at, e)| (*at, e)));
        assert_eq!(decode_events(T0, &enc), Some(events));
        assert_eq!(event_count_of(&enc), 256);
        // One instant, one name, small weights: three bytes an event.
        let same = EventValue {
            event: "backfill".into(),
            weight: 2,
            user_id: None,
        };
        let enc = encode_block(T0, (0..256).map(|_| (T0, &same)));
        assert!(enc.len() <= 3 * 256 + 16, "{} bytes", enc.len());
    }

    const T0: i64 = 1_700_000_000_000_000;
}
