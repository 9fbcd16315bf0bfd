//! Byte layouts of sled keys and values.
//!
//! Keys are big-endian with signed numbers bias-flipped, so sled's byte order is the order
//! queries want: by application, then time (events) or date (rollups). Raw events and all
//! their rollups live in one tree, told apart by a leading family byte; one commit-log
//! record stores a batch of events together with every counter it changes. Values are small
//! fixed layouts rather than JSON because the ingest path writes six of them per event.

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
    /// A raw event.
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

/// A stored event's payload (the time lives in the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventValue {
    /// Event name.
    pub event: String,
    /// Weight.
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
}
