//! Reading the whole store out, part by part, as the port's values: what
//! `hartslag migrate --from-sled` copies into another backend. Reads only, except for the
//! directory's identity, which is written once, so a database can tell which directory
//! it was copied from (and opening the store makes the monitors' state file if there is
//! none).

use jiff::Timestamp;

use super::keys::{self, Family};
use super::monitors::keys::Family as MonitorFamily;
use super::{Store, StoreError};
use crate::core::alert::outbox::{Delivery, DoneRecord};
use crate::core::alert::policy::TargetHistory;
use crate::core::migrate::rows::{Part, Row};
use crate::core::monitor::engine::{Monitor, TransitionRecord};
use crate::core::storage::{ExportFilter, IDEMPOTENCY_WINDOW, Tally};

/// Rows handed over at once.
const BATCH: usize = 4096;

/// Where the directory's identity is kept, in sled's default tree.
const SOURCE_KEY: &[u8] = b"hartslag/migration-source";

impl Store {
    /// This directory's identity: random, made on first use and kept in the directory, so
    /// it follows a copy of the directory and tells two directories apart.
    pub fn source_id(&self) -> Result<String, StoreError> {
        if let Some(id) = self.db.get(SOURCE_KEY)? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::Write(e.to_string()))?;
        let id = hex::encode(bytes);
        self.db.insert(SOURCE_KEY, id.as_bytes())?;
        self.db.flush()?;
        Ok(id)
    }

    /// Hands every row of `part` to `out` in batches, stopping early when `out` returns
    /// false (the receiver went away). `now` bounds the idempotency window.
    pub fn dump(
        &self,
        part: Part,
        now: Timestamp,
        out: &mut dyn FnMut(Vec<Row>) -> bool,
    ) -> Result<(), StoreError> {
        let mut rows = Batcher {
            rows: Vec::new(),
            out,
            open: true,
        };
        match part {
            Part::Applications => self.dump_apps(&mut rows)?,
            Part::Events => self.dump_events(&mut rows)?,
            Part::Rollups => self.dump_rollups(&mut rows)?,
            Part::Idempotency => self.dump_idempotency(now, &mut rows)?,
            Part::Monitors => self.dump_monitors(&mut rows)?,
            Part::Pings => self.dump_pings(&mut rows)?,
            Part::Timelines => self.dump_timelines(&mut rows)?,
            Part::Outbox => self.dump_outbox(&mut rows)?,
        }
        rows.flush();
        Ok(())
    }

    fn dump_apps(&self, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        for item in self.apps.iter() {
            let (k, _) = item?;
            let key = String::from_utf8(k.to_vec()).map_err(|_| corrupt("application key", &k))?;
            if let Some(record) = self.get_app(&key)? {
                rows.push(Row::App {
                    key,
                    record: Box::new(record),
                });
            }
        }
        for (hash, owner) in self.load_tokens()? {
            rows.push(Row::Token(hash, owner));
        }
        Ok(())
    }

    /// Every application's raw events in export order (time, then the order stored), so
    /// the copy numbers events of one instant in the order they were stored.
    fn dump_events(&self, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        let mut next = Some(0u64);
        while let Some(from) = next {
            let Some(k) = self.first_event_key_from(from)? else {
                break;
            };
            let Some((app, _)) = keys::parse_event_key(&k) else {
                return Err(corrupt("event key", &k));
            };
            for event in self.export(app, ExportFilter::default()) {
                let event = event?;
                if !rows.push(Row::Event {
                    app,
                    at: event.at,
                    value: event.value,
                }) {
                    return Ok(());
                }
            }
            next = app.checked_add(1);
        }
        Ok(())
    }

    fn dump_rollups(&self, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        for family in [
            Family::Rollup,
            Family::UserRollup,
            Family::Total,
            Family::UserTotal,
            Family::HourRollup,
            Family::Latest,
        ] {
            for item in self.events.scan_prefix([family as u8]) {
                let (k, v) = item?;
                let row = rollup_row(family, &k, &v).ok_or_else(|| corrupt("rollup", &k))?;
                if !rows.push(row) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn dump_idempotency(&self, now: Timestamp, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        let since = now
            .checked_sub(IDEMPOTENCY_WINDOW)
            .unwrap_or(Timestamp::MIN)
            .as_microsecond();
        for item in self.events.scan_prefix([Family::Idempotency as u8]) {
            let (k, v) = item?;
            let app = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            let key = k.get(13..45).and_then(|b| <[u8; 32]>::try_from(b).ok());
            let (Some(app), Some(key), Some((at, fingerprint))) =
                (app, key, keys::decode_idempotency(&v))
            else {
                return Err(corrupt("idempotency record", &k));
            };
            if at >= since
                && !rows.push(Row::Idempotency {
                    app,
                    key,
                    at,
                    fingerprint,
                })
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl Store {
    /// Retained records first, then the monitors: a monitor defined again under a
    /// retained key is stored after its retained record.
    fn dump_monitors(&self, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        let tree = self.db.open_tree("monitors")?;
        for item in tree.scan_prefix([MonitorFamily::Retained as u8]) {
            let (k, v) = item?;
            let m: Monitor = json("retained monitor", &k, &v)?;
            if !rows.push(Row::Retained(Box::new(m))) {
                return Ok(());
            }
        }
        let mut open = true;
        super::monitors::load_all(self, &mut |batch| {
            for m in batch {
                open = open && rows.push(Row::Monitor(Box::new(m)));
            }
        })
    }

    fn dump_pings(&self, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        let tree = self.db.open_tree("monitors")?;
        for item in tree.scan_prefix([MonitorFamily::PingBlock as u8]) {
            let (k, v) = item?;
            let num = number(&k).ok_or_else(|| corrupt("ping block key", &k))?;
            for p in crate::core::monitor::history::decode(&k, &v)? {
                if !rows.push(Row::Ping(num, Box::new(p))) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn dump_timelines(&self, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        let tree = self.db.open_tree("monitors")?;
        for item in tree.scan_prefix([MonitorFamily::Transition as u8]) {
            let (k, v) = item?;
            let (Some(num), Some(&pos)) = (number(&k), k.get(17)) else {
                return Err(corrupt("timeline key", &k));
            };
            let t: TransitionRecord = json("timeline entry", &k, &v)?;
            if !rows.push(Row::Transition(num, pos, Box::new(t))) {
                return Ok(());
            }
        }
        // Entries still waiting in the timeline journal; one already copied under its
        // monitor by a move that a crash cut short was rowed above. Of two under one key
        // (two steps at one instant), the later one, as a read sees it.
        let journal = self.db.open_tree(super::monitors::JOURNAL_TREE)?;
        let mut last: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        for item in journal.iter() {
            let (k, v) = item?;
            for (seq, (target, _, _)) in super::monitors::journal_page_entries(&k, &v)? {
                last.insert(target, seq);
            }
        }
        for item in journal.iter() {
            let (k, v) = item?;
            for (seq, (target, num, body)) in super::monitors::journal_page_entries(&k, &v)? {
                if last.get(&target) != Some(&seq) || tree.contains_key(&target)? {
                    continue;
                }
                let Some(&pos) = target.get(17) else {
                    return Err(corrupt("timeline key", &target));
                };
                let t: TransitionRecord = json("timeline entry", &target, &body)?;
                if !rows.push(Row::Transition(num, pos, Box::new(t))) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn dump_outbox(&self, rows: &mut Batcher<'_>) -> Result<(), StoreError> {
        for item in self.db.open_tree(super::outbox::PENDING_TREE)?.iter() {
            let (k, v) = item?;
            let d: Delivery = json("pending delivery", &k, &v)?;
            if !rows.push(Row::Pending(Box::new(d))) {
                return Ok(());
            }
        }
        for item in self.db.open_tree("outbox_done")?.iter() {
            let (k, v) = item?;
            let d: DoneRecord = json("finished delivery", &k, &v)?;
            if !rows.push(Row::Done(Box::new(d))) {
                return Ok(());
            }
        }
        for item in self.db.open_tree("outbox_targets")?.iter() {
            let (k, v) = item?;
            let identity =
                String::from_utf8(k.to_vec()).map_err(|_| corrupt("alert target", &k))?;
            let h: TargetHistory = json("alert target history", &k, &v)?;
            if !rows.push(Row::Target(identity, Box::new(h))) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The monitor number in a numbered key of the monitors tree.
fn number(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

/// A stored JSON record.
fn json<T: serde::de::DeserializeOwned>(what: &str, k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        what: format!("{what} {}", hex::encode(k)),
        detail: e.to_string(),
    })
}

/// The row of a rollup record of `family` (laid out as [`keys`] writes them).
fn rollup_row(family: Family, k: &[u8], v: &[u8]) -> Option<Row> {
    let app = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let i64_at = |at: usize| -> Option<i64> {
        Some(keys::i64_from_key(k.get(at..at + 8)?.try_into().ok()?))
    };
    let date_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(k.get(at..at + 4)?.try_into().ok()?))
    };
    let name_from = |at: usize| -> Option<String> { String::from_utf8(k.get(at..)?.to_vec()).ok() };
    let tally = Tally::decode(v);
    Some(match family {
        Family::Rollup => Row::Daily {
            app,
            user: None,
            day: date_at(9)?,
            event: name_from(13)?,
            tally,
        },
        Family::UserRollup => Row::Daily {
            app,
            user: Some(i64_at(9)?),
            day: date_at(17)?,
            event: name_from(21)?,
            tally,
        },
        Family::Total => Row::Total {
            app,
            user: None,
            event: name_from(9)?,
            tally,
        },
        Family::UserTotal => Row::Total {
            app,
            user: Some(i64_at(9)?),
            event: name_from(17)?,
            tally,
        },
        Family::HourRollup => Row::Hourly {
            app,
            hour: i64_at(9)?,
            event: name_from(17)?,
            tally,
        },
        Family::Latest => Row::Latest {
            app,
            at: i64::from_le_bytes(v.try_into().ok()?),
        },
        Family::Event | Family::Idempotency => return None,
    })
}

fn corrupt(what: &str, key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        what: format!("{what} {}", hex::encode(key)),
        detail: "not a layout this version reads".into(),
    }
}

/// Gathers rows into batches for the receiver.
struct Batcher<'a> {
    rows: Vec<Row>,
    out: &'a mut dyn FnMut(Vec<Row>) -> bool,
    /// False once the receiver went away.
    open: bool,
}

impl Batcher<'_> {
    /// Adds `row`; false once the receiver went away.
    fn push(&mut self, row: Row) -> bool {
        self.rows.push(row);
        if self.rows.len() >= BATCH {
            self.flush();
        }
        self.open
    }

    fn flush(&mut self) {
        if self.open && !self.rows.is_empty() {
            self.open = (self.out)(std::mem::take(&mut self.rows));
        }
    }
}
