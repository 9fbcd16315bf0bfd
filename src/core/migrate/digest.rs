//! What a migration records of each part it copied, so that a later run can tell whether
//! the directory changed since: the number of rows read and an order-independent sum over
//! them ([`SourceDigest`]).
//!
//! Each row is encoded in a stable, documented form ([`encode`]) and hashed with SHA-256;
//! the hashes are summed in four 64-bit lanes (wrapping), so the order rows come in plays
//! no part while each row's content and their number do. The encoding depends on what a
//! row says, never on how this build prints or lays it out, so a later release reading
//! the same directory gets the same sum: integers are fixed-width big-endian, text and
//! bytes are length-prefixed, and records stored as JSON are their JSON with object keys
//! sorted and `null` members left out (records leave out fields at their default, so a
//! field a later release adds does not change the sum of a record that lacks it).
//! Changing the encoding makes every recorded sum read as changed: add a new form instead.
//!
//! Stored as `v2:<rows>:<hex>`. The first release of migration 7 recorded
//! `<rows>:<hex>`, summed over each row's debug text ([`Form::Debug`]), which changes
//! with the build that prints it; such a record is still compared in its own form, and
//! recorded again in the stable one once it matched.

use serde::Serialize;
use sha2::Digest;

use super::rows::Row;

/// The prefix of a sum in the stable form.
const STABLE_PREFIX: &str = "v2:";

/// How each row was turned into bytes before it was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The first form: each row's debug text, which differs between builds when a type
    /// it shows changes. Only read, to check records made in it.
    Debug,
    /// [`encode`]: what the row says, in a fixed layout.
    Stable,
}

/// A part's rows summed up: how many, and the sum of their hashes.
#[derive(Debug, Clone)]
pub struct SourceDigest {
    form: Form,
    rows: u64,
    sum: [u64; 4],
}

impl SourceDigest {
    /// An empty sum in `form`.
    pub fn new(form: Form) -> Self {
        Self {
            form,
            rows: 0,
            sum: [0; 4],
        }
    }

    /// The form a recorded sum was made in.
    pub fn form_of(recorded: &str) -> Form {
        if recorded.starts_with(STABLE_PREFIX) {
            Form::Stable
        } else {
            Form::Debug
        }
    }

    /// Adds `rows`.
    pub fn add(&mut self, rows: &[Row]) {
        let mut bytes = Vec::new();
        for row in rows {
            bytes.clear();
            match self.form {
                Form::Stable => encode(row, &mut bytes),
                Form::Debug => bytes.extend_from_slice(format!("{row:?}").as_bytes()),
            }
            let hash = sha2::Sha256::digest(&bytes);
            for (lane, chunk) in self.sum.iter_mut().zip(hash.chunks_exact(8)) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                *lane = lane.wrapping_add(u64::from_le_bytes(word));
            }
            self.rows += 1;
        }
    }

    /// As stored: `v2:<rows>:<hex>` (the debug form: `<rows>:<hex>`).
    pub fn text(&self) -> String {
        let hex: String = self.sum.iter().map(|l| format!("{l:016x}")).collect();
        match self.form {
            Form::Stable => format!("{STABLE_PREFIX}{}:{hex}", self.rows),
            Form::Debug => format!("{}:{hex}", self.rows),
        }
    }

    /// A stored sum for people: the rows it counted.
    pub fn describe(text: &str) -> String {
        let text = text.strip_prefix(STABLE_PREFIX).unwrap_or(text);
        match text.split_once(':') {
            Some((n, _)) => format!("{n} rows"),
            None => text.to_string(),
        }
    }
}

/// Appends `row` in the stable form: its kind as text, then its fields in the order
/// below, each as [`Fields`] writes it.
///
/// | row | fields |
/// |---|---|
/// | `app` | key, record (JSON) |
/// | `token` | hash (bytes), owner (JSON) |
/// | `event` | application number, instant (µs), name, weight, user |
/// | `daily` | application number, user, date (`YYYYMMDD`, u32), name, count, weight sum |
/// | `total` | application number, user, name, count, weight sum |
/// | `hourly` | application number, hour, name, count, weight sum |
/// | `latest` | application number, instant (µs) |
/// | `idempotency` | application number, key hash (bytes), instant (µs), fingerprint (bytes) |
/// | `monitor`, `retained` | the monitor (JSON) |
/// | `ping` | monitor number, the ping (JSON) |
/// | `transition` | monitor number, position (u8), the entry (JSON) |
/// | `pending`, `done` | the delivery (JSON) |
/// | `target` | identity, its history (JSON) |
pub fn encode(row: &Row, out: &mut Vec<u8>) {
    let f = Fields(out);
    match row {
        Row::App { key, record } => f.text("app").text(key).json(record),
        Row::Token(hash, owner) => f.text("token").bytes(&hash.0).json(owner),
        Row::Event { app, at, value } => f
            .text("event")
            .u64(*app)
            .i64(at.as_microsecond())
            .text(&value.event)
            .i64(value.weight)
            .user(value.user_id),
        Row::Daily {
            app,
            user,
            day,
            event,
            tally,
        } => f
            .text("daily")
            .u64(*app)
            .user(*user)
            .u32(*day)
            .text(event)
            .i64(tally.count)
            .i128(tally.weight),
        Row::Total {
            app,
            user,
            event,
            tally,
        } => f
            .text("total")
            .u64(*app)
            .user(*user)
            .text(event)
            .i64(tally.count)
            .i128(tally.weight),
        Row::Hourly {
            app,
            hour,
            event,
            tally,
        } => f
            .text("hourly")
            .u64(*app)
            .i64(*hour)
            .text(event)
            .i64(tally.count)
            .i128(tally.weight),
        Row::Latest { app, at } => f.text("latest").u64(*app).i64(*at),
        Row::Idempotency {
            app,
            key,
            at,
            fingerprint,
        } => f
            .text("idempotency")
            .u64(*app)
            .bytes(key)
            .i64(*at)
            .bytes(fingerprint),
        Row::Monitor(m) => f.text("monitor").json(m),
        Row::Retained(m) => f.text("retained").json(m),
        Row::Ping(num, p) => f.text("ping").u64(*num).json(p),
        Row::Transition(num, pos, t) => f.text("transition").u64(*num).u8(*pos).json(t),
        Row::Pending(d) => f.text("pending").json(d),
        Row::Done(d) => f.text("done").json(d),
        Row::Target(identity, h) => f.text("target").text(identity).json(h),
    };
}

/// Writes fields one after another: integers big-endian at their width, text and bytes
/// after their length (u64, big-endian), an optional user id as `0`, or `1` and the id.
struct Fields<'a>(&'a mut Vec<u8>);

impl Fields<'_> {
    fn bytes(self, b: &[u8]) -> Self {
        let len = u64::try_from(b.len()).unwrap_or(u64::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    fn text(self, t: &str) -> Self {
        self.bytes(t.as_bytes())
    }

    fn u8(self, n: u8) -> Self {
        self.0.push(n);
        self
    }

    fn u32(self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn u64(self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn i64(self, n: i64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn i128(self, n: i128) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    fn user(self, user: Option<i64>) -> Self {
        match user {
            None => self.u8(0),
            Some(id) => self.u8(1).i64(id),
        }
    }

    /// A record as its JSON, object keys sorted and `null` members left out. A record
    /// that cannot be turned into JSON (none can: they are stored as JSON) counts as the
    /// error's text, so it still changes the sum.
    fn json(self, record: &impl Serialize) -> Self {
        let mut text = String::new();
        match serde_json::to_value(record) {
            Ok(value) => canonical(&value, &mut text),
            Err(e) => text = format!("unencodable: {e}"),
        }
        self.text(&text)
    }
}

/// `value` as JSON text with every object's keys sorted and its `null` members left out,
/// whatever order the record's fields (or a map's entries) came in.
fn canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> =
                map.iter().filter(|(_, v)| !v.is_null()).collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(member, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::storage::{AppRecord, EventValue, Tally, TokenOwner};
    use crate::core::token::{TokenHash, TokenKind};

    fn sum(form: Form, rows: &[Row]) -> String {
        let mut digest = SourceDigest::new(form);
        digest.add(rows);
        digest.text()
    }

    fn hash(last: u8) -> TokenHash {
        let mut bytes = [7u8; 32];
        bytes[31] = last;
        TokenHash(bytes)
    }

    fn app(token: TokenHash) -> Row {
        Row::App {
            key: "default/shop".into(),
            record: Box::new(AppRecord {
                num: 1,
                namespace: "default".into(),
                name: "shop".into(),
                spec: Default::default(),
                token,
                retained_since: None,
            }),
        }
    }

    fn owner() -> TokenOwner {
        TokenOwner {
            kind: TokenKind::Application,
            key: "default/shop".into(),
        }
    }

    /// The debug text of a token hash shows its first four bytes only, so rows whose
    /// hashes differ past them summed alike in the debug form; the stable form tells them
    /// apart.
    #[test]
    fn the_stable_sum_tells_apart_rows_whose_debug_text_is_the_same() {
        for (a, b) in [
            (app(hash(1)), app(hash(2))),
            (Row::Token(hash(1), owner()), Row::Token(hash(2), owner())),
        ] {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            assert_eq!(
                sum(Form::Debug, std::slice::from_ref(&a)),
                sum(Form::Debug, std::slice::from_ref(&b))
            );
            assert_ne!(sum(Form::Stable, &[a]), sum(Form::Stable, &[b]));
        }
    }

    /// The encoding is a contract with every sum already recorded: these rows' bytes and
    /// sum are pinned (a change to them makes every recorded part read as changed). The
    /// sum was computed apart from this code, from the layout documented on [`encode`].
    #[test]
    fn the_stable_encoding_is_pinned() {
        let event = Row::Event {
            app: 3,
            at: jiff::Timestamp::from_microsecond(1_700_000_000_000_001).unwrap(),
            value: EventValue {
                event: "order".into(),
                weight: -5,
                user_id: Some(42),
            },
        };
        let mut bytes = Vec::new();
        encode(&event, &mut bytes);
        let mut expected = Vec::new();
        expected.extend_from_slice(&5u64.to_be_bytes());
        expected.extend_from_slice(b"event");
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_000_001i64.to_be_bytes());
        expected.extend_from_slice(&5u64.to_be_bytes());
        expected.extend_from_slice(b"order");
        expected.extend_from_slice(&(-5i64).to_be_bytes());
        expected.push(1);
        expected.extend_from_slice(&42i64.to_be_bytes());
        assert_eq!(bytes, expected);

        let daily = Row::Daily {
            app: 3,
            user: None,
            day: 20_240_117,
            event: "order".into(),
            tally: Tally {
                count: 2,
                weight: i128::from(i64::MAX) * 2,
            },
        };
        let rows = [event, daily, app(hash(1)), Row::Token(hash(1), owner())];
        assert_eq!(
            sum(Form::Stable, &rows),
            "v2:4:e63b45d4d12a3ae2cb3228042d4a749f02a3eae74669c00ffa315537d0beebd6"
        );
        // The order rows come in plays no part.
        let reversed: Vec<Row> = rows.iter().rev().cloned().collect();
        assert_eq!(sum(Form::Stable, &reversed), sum(Form::Stable, &rows));
    }

    #[test]
    fn records_are_their_json_with_sorted_keys_and_no_nulls() {
        let value = serde_json::json!({"b": 1, "a": {"z": null, "y": [{"d": null, "c": "x"}]}});
        let mut text = String::new();
        canonical(&value, &mut text);
        assert_eq!(text, r#"{"a":{"y":[{"c":"x"}]},"b":1}"#);
        let mut bytes = Vec::new();
        encode(&app(hash(1)), &mut bytes);
        let text = String::from_utf8_lossy(&bytes);
        let record = r#"{"name":"shop","namespace":"default","num":1,"spec":{},"token":"#;
        assert!(text.contains(record), "{text}");
    }

    #[test]
    fn a_recorded_sum_is_read_in_the_form_it_was_made_in() {
        let rows = [app(hash(1))];
        let stable = sum(Form::Stable, &rows);
        let debug = sum(Form::Debug, &rows);
        assert!(stable.starts_with("v2:1:"), "{stable}");
        assert!(debug.starts_with("1:"), "{debug}");
        assert_eq!(SourceDigest::form_of(&stable), Form::Stable);
        assert_eq!(SourceDigest::form_of(&debug), Form::Debug);
        assert_eq!(SourceDigest::describe(&stable), "1 rows");
        assert_eq!(SourceDigest::describe(&debug), "1 rows");
    }
}
