//! What one batch of events writes: raw blocks, the new absolute value of every rollup it
//! touches and the idempotency records of events sent with a key, all in one record.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use crate::core::store::commit::PendingReader;
use crate::core::store::keys::{self, EventValue, Tally};
use crate::core::store::wal::Mutation;
use crate::core::store::{Store, StoreError};

/// An event ready to be written: validated, timestamped and dated in its app's zone.
#[derive(Debug, Clone)]
pub struct EventWrite {
    /// Numeric id of the application.
    pub app: u64,
    /// When it happened.
    pub at: Timestamp,
    /// Local date (`YYYYMMDD` key) in the application's time zone.
    pub date: u32,
    /// Name, weight and user.
    pub value: EventValue,
    /// The client's `Idempotency-Key`, when it sent one.
    pub idempotency: Option<Idempotency>,
    /// Most distinct event names the application may have: an event with a new name is
    /// refused once it has this many.
    pub name_limit: u32,
}

/// How long an `Idempotency-Key` keeps answering retries.
pub const IDEMPOTENCY_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// An `Idempotency-Key` and the request it came with, both hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    /// SHA-256 of the header value.
    pub key: [u8; 32],
    /// SHA-256 of what the event says (name, weight, user, given time), so a retry is told
    /// apart from a different event sent under the same key.
    pub fingerprint: [u8; 32],
}

/// What became of an event handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (and counted).
    Stored,
    /// A retry: its `Idempotency-Key` came with the same event within the window, which was
    /// stored then; nothing was counted again.
    Replayed,
    /// Its `Idempotency-Key` came with a different event within the window; nothing stored.
    KeyReused,
    /// Its name would be one more distinct name than the application may have; nothing
    /// stored.
    TooManyNames,
}

/// How many distinct event names each application has, kept by the ingest writer (the one
/// thread that adds names) so a batch need not count rollup keys.
#[derive(Debug, Default)]
pub struct NameCounts(std::sync::Mutex<HashMap<u64, usize>>);

impl NameCounts {
    /// Forgets what is known (a failed write, a purged application): counted again on use.
    pub(crate) fn forget(&self, app: Option<u64>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match app {
            Some(app) => {
                map.remove(&app);
            }
            None => map.clear(),
        }
    }
}

/// Cuts one application's events, sorted by time, into stored blocks: each at most
/// [`keys::BLOCK_MAX_EVENTS`] long and spanning at most [`keys::BLOCK_SPAN_MICROS`].
fn split_blocks<'a, 'e>(events: &'a [(i64, &'e EventValue)]) -> Vec<&'a [(i64, &'e EventValue)]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let first = events[start].0;
        let mut end = start + 1;
        while end < events.len()
            && end - start < keys::BLOCK_MAX_EVENTS
            && events[end].0 - first <= keys::BLOCK_SPAN_MICROS
        {
            end += 1;
        }
        out.push(&events[start..end]);
        start = end;
    }
    out
}

/// Names a batch adds, per application.
#[derive(Default)]
struct NewNames<'a>(std::collections::HashSet<(u64, &'a str)>);

/// What a batch adds to each rollup it touches, one map per family, in the order their
/// new values are written.
#[derive(Default)]
struct RollupDeltas([HashMap<Vec<u8>, Tally>; 5]);

impl RollupDeltas {
    const DAILY: usize = 0;
    const USER_DAILY: usize = 1;
    const TOTAL: usize = 2;
    const USER_TOTAL: usize = 3;
    const HOURLY: usize = 4;

    fn of(events: &[&EventWrite]) -> Self {
        let mut d = Self::default();
        for w in events {
            let v = &w.value;
            d.add(
                Self::DAILY,
                keys::rollup_key(w.app, None, w.date, &v.event),
                v.weight,
            );
            d.add(
                Self::TOTAL,
                keys::total_key(w.app, None, &v.event),
                v.weight,
            );
            let hour = keys::hour_key(w.app, keys::hour_of(w.at), &v.event);
            d.add(Self::HOURLY, hour, v.weight);
            if let Some(u) = v.user_id {
                let daily = keys::rollup_key(w.app, Some(u), w.date, &v.event);
                d.add(Self::USER_DAILY, daily, v.weight);
                d.add(
                    Self::USER_TOTAL,
                    keys::total_key(w.app, Some(u), &v.event),
                    v.weight,
                );
            }
        }
        d
    }

    fn add(&mut self, family: usize, key: Vec<u8>, weight: i64) {
        self.0[family].entry(key).or_default().add(Tally {
            count: 1,
            weight: i128::from(weight),
        });
    }
}

/// What preparing a batch reads and writes: the events tree, the id generator for block
/// keys, and the committer's view of records not applied yet (the previous batch may still
/// be on its way to disk when the next is prepared).
pub(crate) struct Prepare<'a> {
    /// The events tree.
    pub events: &'a sled::Tree,
    /// The database, for block sequence numbers.
    pub db: &'a sled::Db,
    /// Reads that see batches not applied yet.
    pub reader: &'a PendingReader<'a>,
    /// Distinct event names per application, kept by the commit thread.
    pub names: &'a NameCounts,
}

impl Store {
    /// The writes for a batch and what became of each event ([`Prepare::event_writes`]),
    /// read through this store's committer.
    #[cfg(test)]
    pub(crate) fn event_writes(
        &self,
        all: &[&EventWrite],
        now: Timestamp,
    ) -> Result<(Vec<Mutation>, Vec<Outcome>), StoreError> {
        let reader = self.committer().reader();
        Prepare {
            events: &self.events,
            db: &self.db,
            reader: &reader,
            names: &self.names,
        }
        .event_writes(all, now)
    }
}

impl Prepare<'_> {
    /// What an event's `Idempotency-Key` says about it: a key accepted within the window
    /// (earlier in this batch, or stored) answers for it.
    fn idempotency_outcome(
        &self,
        app: u64,
        idem: &Idempotency,
        now: Timestamp,
        batch: &HashMap<(u64, [u8; 32]), [u8; 32]>,
    ) -> Result<Outcome, StoreError> {
        let seen = match batch.get(&(app, idem.key)) {
            Some(fp) => Some(*fp),
            None => {
                let since = keys::micros(
                    now.checked_sub(IDEMPOTENCY_WINDOW)
                        .unwrap_or(Timestamp::MIN),
                );
                let today = keys::day_of(now);
                let mut found = None;
                for day in [today, today - 1] {
                    let stored = self
                        .reader
                        .read(self.events, &keys::idempotency_key(app, day, &idem.key))?
                        .and_then(|v| keys::decode_idempotency(&v))
                        .filter(|(at, _)| *at >= since);
                    if let Some((_, fp)) = stored {
                        found = Some(fp);
                        break;
                    }
                }
                found
            }
        };
        Ok(match seen {
            None => Outcome::Stored,
            Some(fp) if fp == idem.fingerprint => Outcome::Replayed,
            Some(_) => Outcome::KeyReused,
        })
    }

    /// The writes for a batch: raw events plus every rollup they touch, with the rollups'
    /// new absolute values (so the record replays to the same result however often), and
    /// the idempotency records of events sent with a key; plus what became of each event.
    /// Retries of a key are settled here, in the single writer, so two copies of one
    /// request racing each other still count once.
    pub(crate) fn event_writes(
        &self,
        all: &[&EventWrite],
        now: Timestamp,
    ) -> Result<(Vec<Mutation>, Vec<Outcome>), StoreError> {
        let mut out = Vec::with_capacity(all.len() + 8);
        let (stored, outcomes) = self.settle_idempotency(all, now, &mut out)?;
        self.push_blocks(&stored, &mut out)?;
        self.push_latest(&stored, &mut out)?;
        self.push_rollups(RollupDeltas::of(&stored), &mut out)?;
        Ok((out, outcomes))
    }

    /// What became of each event under its `Idempotency-Key`, and the events to store; the
    /// idempotency records of newly accepted keys go to `out`.
    fn settle_idempotency<'a>(
        &self,
        all: &[&'a EventWrite],
        now: Timestamp,
        out: &mut Vec<Mutation>,
    ) -> Result<(Vec<&'a EventWrite>, Vec<Outcome>), StoreError> {
        let mut outcomes = Vec::with_capacity(all.len());
        let mut accepted = HashMap::new();
        let mut stored = Vec::with_capacity(all.len());
        let mut names = NewNames::default();
        for w in all {
            let outcome = match &w.idempotency {
                None => self.name_outcome(w, &mut names)?,
                Some(idem) => {
                    let mut o = self.idempotency_outcome(w.app, idem, now, &accepted)?;
                    if o == Outcome::Stored {
                        o = self.name_outcome(w, &mut names)?;
                    }
                    if o == Outcome::Stored {
                        accepted.insert((w.app, idem.key), idem.fingerprint);
                        out.push(Mutation::put(
                            self.events,
                            keys::idempotency_key(w.app, keys::day_of(now), &idem.key).to_vec(),
                            keys::encode_idempotency(keys::micros(now), &idem.fingerprint).to_vec(),
                        ));
                    }
                    o
                }
            };
            if outcome == Outcome::Stored {
                stored.push(*w);
            }
            outcomes.push(outcome);
        }
        Ok((stored, outcomes))
    }

    /// Whether `w`'s name may be stored: a name the application has, or a new one while it
    /// has fewer than its limit. New names of this batch count as they are accepted.
    fn name_outcome<'a>(
        &self,
        w: &'a EventWrite,
        batch: &mut NewNames<'a>,
    ) -> Result<Outcome, StoreError> {
        let name = w.value.event.as_str();
        if batch.0.contains(&(w.app, name))
            || self
                .reader
                .read(self.events, &keys::total_key(w.app, None, name))?
                .is_some()
        {
            return Ok(Outcome::Stored);
        }
        let mut counts = self.names.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = match counts.get(&w.app) {
            Some(n) => *n,
            None => {
                let prefix = keys::scope_prefix(keys::Family::Total, w.app, None);
                let n = self.reader.keys_with_prefix(self.events, &prefix)?.len();
                counts.insert(w.app, n);
                n
            }
        };
        if count >= usize::try_from(w.name_limit).unwrap_or(usize::MAX) {
            return Ok(Outcome::TooManyNames);
        }
        counts.insert(w.app, count + 1);
        batch.0.insert((w.app, name));
        Ok(Outcome::Stored)
    }

    /// The raw events, as blocks per application.
    fn push_blocks(
        &self,
        events: &[&EventWrite],
        out: &mut Vec<Mutation>,
    ) -> Result<(), StoreError> {
        // By application in order, so the block keys' sequence numbers follow from the
        // batch alone: the same batch stores the same keys however it reaches sled.
        let mut by_app: BTreeMap<u64, Vec<(i64, &EventValue)>> = BTreeMap::new();
        for w in events {
            by_app
                .entry(w.app)
                .or_default()
                .push((keys::micros(w.at), &w.value));
        }
        for (app, mut events) in by_app {
            // Stable: events of the same microsecond keep their arrival order.
            events.sort_by_key(|(at, _)| *at);
            for block in split_blocks(&events) {
                let first = block[0].0;
                let seq = self.db.generate_id()?;
                out.push(Mutation::put(
                    self.events,
                    keys::event_key(app, first, seq).to_vec(),
                    keys::encode_block(first, block.iter().copied()),
                ));
            }
        }
        Ok(())
    }

    /// The newest event time of each application in the batch, where it moved forward.
    fn push_latest(
        &self,
        events: &[&EventWrite],
        out: &mut Vec<Mutation>,
    ) -> Result<(), StoreError> {
        let mut newest: HashMap<u64, i64> = HashMap::new();
        for w in events {
            let at = keys::micros(w.at);
            newest
                .entry(w.app)
                .and_modify(|m| *m = (*m).max(at))
                .or_insert(at);
        }
        for (app, at) in newest {
            if self
                .latest_event_micros(app)?
                .is_none_or(|known| at > known)
            {
                out.push(Mutation::put(
                    self.events,
                    keys::latest_key(app).to_vec(),
                    at.to_le_bytes().to_vec(),
                ));
            }
        }
        Ok(())
    }

    /// The newest event time recorded for `app`, the previous batch's included (it may be
    /// on its way to disk still). Every application with stored events has the record: the
    /// store writes it at open for data from before there was one.
    fn latest_event_micros(&self, app: u64) -> Result<Option<i64>, StoreError> {
        let Some(v) = self.reader.read(self.events, &keys::latest_key(app))? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            what: "newest event time".into(),
            detail: hex::encode(&v),
        })?;
        Ok(Some(i64::from_le_bytes(bytes)))
    }

    /// Every touched rollup's new absolute value: the stored one plus the batch's delta.
    fn push_rollups(
        &self,
        deltas: RollupDeltas,
        out: &mut Vec<Mutation>,
    ) -> Result<(), StoreError> {
        for family in deltas.0 {
            for (k, d) in family {
                let mut t = self
                    .reader
                    .read(self.events, &k)?
                    .map(|b| Tally::decode(&b))
                    .unwrap_or_default();
                t.add(d);
                out.push(Mutation::put(self.events, k, t.encode().to_vec()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str) -> EventValue {
        EventValue {
            event: name.into(),
            weight: 1,
            user_id: None,
        }
    }

    #[test]
    fn blocks_respect_their_span_and_size() {
        let e = ev("x");
        let events: Vec<(i64, &EventValue)> = (0..600)
            .map(|i| (i * 10, &e))
            .chain([(2_000_000, &e), (3_000_001, &e)])
            .collect();
        let blocks = split_blocks(&events);
        let sizes: Vec<usize> = blocks.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![256, 256, 88, 1, 1]);
        for b in blocks {
            assert!(b[b.len() - 1].0 - b[0].0 <= keys::BLOCK_SPAN_MICROS);
        }
    }
}
