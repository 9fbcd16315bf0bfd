//! Timestamps written as jiff writes them (RFC 3339 in UTC, `Z`, the fraction of a second
//! without trailing zeros), byte for byte, without going through jiff's general printer.
//!
//! Why: every state record and timeline entry the monitor engine writes holds a few
//! timestamps, and printing them through jiff's printer (a `Display` driven through
//! serde_json's `collect_str`, fragment by fragment) was most of the time the engine
//! thread spent encoding state records in a herd, about a tenth of its busy time
//! (docs/benchmarks.md). Years outside 0000–9999 (which jiff writes in its extended form)
//! and instants before 1970 go to jiff as before. Reading is jiff's, unchanged.

use jiff::Timestamp;
use serde::Serializer;

/// Longest text written here: `9999-12-31T23:59:59.999999999Z`.
const LONGEST: usize = 30;

/// `ts` as [`Timestamp`]'s `Display` writes it, or `None` where that is left to jiff.
fn write(ts: Timestamp, buf: &mut [u8; LONGEST]) -> Option<usize> {
    let secs = ts.as_second();
    let nanos = u32::try_from(ts.subsec_nanosecond()).ok()?;
    if secs < 0 {
        return None;
    }
    let (days, sod) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return None;
    }
    let sod = sod as u64;
    put(buf, 0, y, 4);
    put_byte(buf, 4, b'-');
    put(buf, 5, m, 2);
    put_byte(buf, 7, b'-');
    put(buf, 8, d, 2);
    put_byte(buf, 10, b'T');
    put(buf, 11, sod / 3600, 2);
    put_byte(buf, 13, b':');
    put(buf, 14, sod / 60 % 60, 2);
    put_byte(buf, 16, b':');
    put(buf, 17, sod % 60, 2);
    let mut len = 19;
    if nanos > 0 {
        put_byte(buf, 19, b'.');
        // Nine digits, then trailing zeros dropped, as jiff does.
        let (mut frac, mut digits) = (nanos, 9);
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        put(buf, 20, u64::from(frac), digits);
        len = 20 + digits;
    }
    put_byte(buf, len, b'Z');
    Some(len + 1)
}

/// `n`'s last `width` decimal digits at `at`, zero-padded.
fn put(buf: &mut [u8; LONGEST], at: usize, mut n: u64, width: usize) {
    for i in (0..width).rev() {
        if let Some(b) = buf.get_mut(at + i) {
            *b = b'0' + (n % 10) as u8;
        }
        n /= 10;
    }
}

fn put_byte(buf: &mut [u8; LONGEST], at: usize, b: u8) {
    if let Some(slot) = buf.get_mut(at) {
        *slot = b;
    }
}

/// Year, month and day of the proleptic Gregorian calendar, `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: i64) -> (u64, u64, u64) {
    let z = days as u64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Serializes `ts` as jiff does (use with `#[serde(serialize_with = ...)]`).
pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; LONGEST];
    match write(*ts, &mut buf)
        .and_then(|len| buf.get(..len))
        .and_then(|b| std::str::from_utf8(b).ok())
    {
        Some(text) => s.serialize_str(text),
        None => s.collect_str(ts),
    }
}

/// [`serialize`] for an optional timestamp.
pub fn option<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => s.serialize_some(&Rfc3339(*ts)),
        None => s.serialize_none(),
    }
}

/// A timestamp that serializes through [`serialize`].
struct Rfc3339(Timestamp);

impl serde::Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(ts: Timestamp) -> String {
        serde_json::to_string(&Rfc3339(ts)).unwrap()
    }

    fn jiffs(ts: Timestamp) -> String {
        serde_json::to_string(&ts).unwrap()
    }

    #[test]
    fn every_instant_reads_as_jiff_writes_it() {
        let edges = [
            (0, 0),
            (0, 1),
            (59, 999_999_999),
            (951_782_400, 0),             // 2000-02-29
            (951_868_799, 500_000_000),   // 2000-02-29T23:59:59.5
            (4_107_542_400, 120_000_000), // 2100-03-01
            (1_700_000_000, 100),
            (253_402_207_199, 999_999_999), // jiff's last second but one
            (-1, 0),
            (-62_135_596_800, 0), // 0001-01-01
            (253_402_207_200, 0),
        ];
        for (s, n) in edges {
            let ts = Timestamp::new(s, n).unwrap();
            assert_eq!(ours(ts), jiffs(ts), "{s}.{n}");
        }
        // A spread over the whole range jiff writes in the plain form, and beyond it.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = (x % 253_402_207_200) as i64 - (x >> 60) as i64 * 1_000_000;
            let n = match x % 4 {
                0 => 0,
                1 => (x >> 20) as i32 % 1000 * 1_000_000,
                _ => (x >> 16) as i32 % 1_000_000_000,
            };
            let ts = Timestamp::new(s, n.abs()).unwrap();
            assert_eq!(ours(ts), jiffs(ts), "{s}.{n}");
            // Written here, not left to jiff, from the epoch on.
            assert_eq!(write(ts, &mut [0; LONGEST]).is_some(), s >= 0, "{s}");
        }
    }

    #[test]
    fn optional_instants_too() {
        #[derive(serde::Serialize)]
        struct Both {
            #[serde(serialize_with = "option")]
            ours: Option<Timestamp>,
            jiffs: Option<Timestamp>,
        }
        let ts = Timestamp::new(1_700_000_000, 5).unwrap();
        let v = serde_json::to_value(Both {
            ours: Some(ts),
            jiffs: Some(ts),
        })
        .unwrap();
        assert_eq!(v["ours"], v["jiffs"]);
        let v = serde_json::to_value(Both {
            ours: None,
            jiffs: None,
        })
        .unwrap();
        assert_eq!(v["ours"], v["jiffs"]);
    }
}
