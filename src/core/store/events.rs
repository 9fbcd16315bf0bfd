//! Raw events and their rollups: the ingest writer, stats queries, export and retention.
//!
//! Every event counts in five rollups (daily, per-user daily, total, per-user total,
//! hourly), merged per batch, and is stored raw in a block: one value holding a batch's
//! events of one application that lie within [`keys::BLOCK_SPAN_MICROS`] of each other, so
//! a batch costs a few sled inserts rather than one per event. A single writer thread owns
//! the rollup counters, so it can read-modify-write them without conflicts. Each batch of
//! events becomes one commit-log record (raw events and every rollup they touch, as absolute
//! values), so the rollups always agree with the raw events, even after a crash. The writer
//! commits the record itself when no other commit is running ([`super::commit`]), answers
//! the batch as soon as it is on disk and then applies it; queries wait for that apply
//! ([`Visibility`]). Meanwhile the next batch gathers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use super::keys::{self, EventValue, Family, Tally};
use super::wal::Mutation;
use super::{Store, StoreError};
use crate::core::calendar::{Periods, date_from_key, date_key};

/// Largest number of events written in one record.
const MAX_BATCH: usize = 1024;

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
}

struct Job {
    write: EventWrite,
    ack: oneshot::Sender<Result<Outcome, String>>,
}

/// Handle to the single ingest writer thread.
#[derive(Clone, Debug)]
pub struct EventWriter {
    tx: mpsc::Sender<Job>,
}

impl EventWriter {
    /// Starts the writer thread for `store`. A dedicated OS thread, because sled calls and
    /// the commit (often its own `fdatasync`) block.
    pub fn spawn(store: Store) -> Result<Self, StoreError> {
        let (tx, mut rx) = mpsc::channel::<Job>(8192);
        std::thread::Builder::new()
            .name("hartslag-ingest".into())
            .spawn(move || {
                let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
                let mut seq = 0u64;
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    seq += 1;
                    let writes: Vec<&EventWrite> = batch.iter().map(|j| &j.write).collect();
                    let (w, outcomes) = match store.event_writes(&writes, Timestamp::now()) {
                        Ok(prepared) => prepared,
                        Err(e) => {
                            tracing::error!(error = %e, "preparing a batch of events failed");
                            for job in batch.drain(..) {
                                let _ = job.ack.send(Err(e.to_string()));
                            }
                            continue;
                        }
                    };
                    // One outcome per event, in batch order. The answers go out as soon as
                    // the batch is on disk; readers wait for the apply (`Visibility`).
                    let answers: Vec<_> = batch.drain(..).map(|j| j.ack).zip(outcomes).collect();
                    let answers = Arc::new(Mutex::new(Some(answers)));
                    let on_durable = {
                        let (answers, visible) = (answers.clone(), store.visible.clone());
                        Box::new(move || {
                            visible.acknowledged(seq);
                            let taken = answers.lock().unwrap_or_else(|p| p.into_inner()).take();
                            for (ack, outcome) in taken.into_iter().flatten() {
                                let _ = ack.send(Ok(outcome));
                            }
                        })
                    };
                    // Readers may go on once the batch is in sled, without waiting for a
                    // checkpoint the commit may run next; after a failure, nothing more
                    // arrives for this batch, so they stop waiting too.
                    let visible = store.visible.clone();
                    let on_applied = Box::new(move || visible.applied(seq));
                    let result =
                        store
                            .committer()
                            .log_blocking_then(w, Some(on_durable), Some(on_applied));
                    store.visible.applied(seq);
                    if let Err(e) = result {
                        tracing::error!(error = %e, "writing a batch of events failed");
                        let taken = answers.lock().unwrap_or_else(|p| p.into_inner()).take();
                        for (ack, _) in taken.into_iter().flatten() {
                            let _ = ack.send(Err(e.to_string()));
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Self { tx })
    }

    /// Stores one event durably; returns once it is on disk (or once its `Idempotency-Key`
    /// has been settled). Queries made after that see it: they wait for the apply.
    pub async fn write(&self, write: EventWrite) -> Result<Outcome, StoreError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Job { write, ack })
            .await
            .map_err(|_| StoreError::Stopped)?;
        match rx.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(msg)) => Err(StoreError::Corrupt {
                what: "event batch".into(),
                detail: msg,
            }),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

/// Read-your-writes for events answered before sled has them: the ingest writer answers a
/// batch once its record is on disk and applies it to sled right after, so every query
/// first waits until the last answered batch is applied (normally already true, otherwise
/// a few tens of microseconds).
#[derive(Debug, Default)]
pub struct Visibility {
    acknowledged: AtomicU64,
    applied: Mutex<u64>,
    caught_up: Condvar,
}

impl Visibility {
    /// Batch `seq` is about to be answered.
    fn acknowledged(&self, seq: u64) {
        self.acknowledged.store(seq, Ordering::Release);
    }

    /// Batch `seq` is applied to sled (or failed; nothing more will arrive for it).
    fn applied(&self, seq: u64) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = seq;
        self.caught_up.notify_all();
    }

    /// Waits until everything answered so far is readable from sled.
    pub fn wait(&self) {
        let target = self.acknowledged.load(Ordering::Acquire);
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        while *applied < target {
            let (guard, timeout) = self
                .caught_up
                .wait_timeout(applied, std::time::Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner());
            applied = guard;
            if timeout.timed_out() {
                tracing::warn!(
                    "a query gave up waiting for the ingest writer to apply its last batch"
                );
                break;
            }
        }
    }
}

/// Counts and weight sums for the four periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeriodTallies {
    /// The current local day.
    pub today: Tally,
    /// The current ISO week (Monday first).
    pub week: Tally,
    /// The current month.
    pub month: Tally,
    /// Everything ever stored, including events past retention.
    pub total: Tally,
}

/// Stats for an application: overall and per event name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsReport {
    /// Sum over all event names.
    pub overall: PeriodTallies,
    /// Per event name, sorted by name.
    pub events: BTreeMap<String, PeriodTallies>,
}

/// Filters for export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Inclusive lower bound.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound.
    pub to: Option<Timestamp>,
    /// Only this event name.
    pub event: Option<String>,
    /// Only this user.
    pub user_id: Option<i64>,
}

/// One exported row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEvent {
    /// When it happened.
    pub at: Timestamp,
    /// Name, weight and user.
    pub value: EventValue,
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

/// Application, first event's micros and sequence of a raw-event key.
fn block_key(k: &[u8]) -> Option<(i64, u64)> {
    let (_, first) = keys::parse_event_key(k)?;
    let seq = u64::from_be_bytes(k.get(17..25)?.try_into().ok()?);
    Some((first, seq))
}

/// An event read from a block, waiting until no later block can hold an earlier one.
struct Buffered {
    at: i64,
    seq: u64,
    index: usize,
    value: EventValue,
}

impl Buffered {
    fn order(&self) -> (i64, u64, usize) {
        (self.at, self.seq, self.index)
    }
}

impl PartialEq for Buffered {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}
impl Eq for Buffered {}
impl PartialOrd for Buffered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Buffered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

/// Streams an application's events in time order (ties in the order they were stored).
/// Blocks are keyed by their first event and reach at most [`keys::BLOCK_SPAN_MICROS`]
/// further, so once a block starting at `t` is read, every buffered event before `t` is
/// final: memory holds only the events of blocks that overlap in time.
struct ExportIter {
    blocks: sled::Iter,
    buffered: std::collections::BinaryHeap<std::cmp::Reverse<Buffered>>,
    frontier: i64,
    done: bool,
    from: i64,
    to: i64,
    filter: ExportFilter,
}

impl Iterator for ExportIter {
    type Item = Result<ExportedEvent, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let ready = self
                .buffered
                .peek()
                .is_some_and(|p| self.done || p.0.at < self.frontier);
            if ready {
                let std::cmp::Reverse(p) = self.buffered.pop()?;
                match Timestamp::from_microsecond(p.at) {
                    Ok(at) => {
                        return Some(Ok(ExportedEvent { at, value: p.value }));
                    }
                    Err(_) => continue,
                }
            }
            if self.done {
                return None;
            }
            let (k, v) = match self.blocks.next() {
                None => {
                    self.done = true;
                    continue;
                }
                Some(Err(e)) => return Some(Err(StoreError::Sled(e))),
                Some(Ok(kv)) => kv,
            };
            let Some((first, seq)) = block_key(&k) else {
                continue;
            };
            self.frontier = first;
            let Some(events) = keys::decode_events(first, &v) else {
                return Some(Err(StoreError::Corrupt {
                    what: "event".into(),
                    detail: hex::encode(&k[..]),
                }));
            };
            for (index, (at, value)) in events.into_iter().enumerate() {
                if at < self.from
                    || at >= self.to
                    || self
                        .filter
                        .event
                        .as_deref()
                        .is_some_and(|e| e != value.event)
                    || self
                        .filter
                        .user_id
                        .is_some_and(|u| Some(u) != value.user_id)
                {
                    continue;
                }
                self.buffered.push(std::cmp::Reverse(Buffered {
                    at,
                    seq,
                    index,
                    value,
                }));
            }
        }
    }
}

fn add_delta(map: &mut HashMap<Vec<u8>, Tally>, key: Vec<u8>, weight: i64) {
    map.entry(key).or_default().add(Tally {
        count: 1,
        weight: i128::from(weight),
    });
}

impl Store {
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
                        .events
                        .get(keys::idempotency_key(app, day, &idem.key))?
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
        let mut outcomes = Vec::with_capacity(all.len());
        let mut accepted = HashMap::new();
        let mut out = Vec::with_capacity(all.len() + 8);
        let mut writes = Vec::with_capacity(all.len());
        for w in all {
            let outcome = match &w.idempotency {
                None => Outcome::Stored,
                Some(idem) => {
                    let o = self.idempotency_outcome(w.app, idem, now, &accepted)?;
                    if o == Outcome::Stored {
                        accepted.insert((w.app, idem.key), idem.fingerprint);
                        out.push(Mutation::put(
                            &self.events,
                            keys::idempotency_key(w.app, keys::day_of(now), &idem.key).to_vec(),
                            keys::encode_idempotency(keys::micros(now), &idem.fingerprint).to_vec(),
                        ));
                    }
                    o
                }
            };
            if outcome == Outcome::Stored {
                writes.push(*w);
            }
            outcomes.push(outcome);
        }
        let mut rollups = HashMap::new();
        let mut user_rollups = HashMap::new();
        let mut totals = HashMap::new();
        let mut user_totals = HashMap::new();
        let mut hours = HashMap::new();
        let mut by_app: HashMap<u64, Vec<(i64, &EventValue)>> = HashMap::new();
        for w in writes {
            by_app
                .entry(w.app)
                .or_default()
                .push((keys::micros(w.at), &w.value));
            let v = &w.value;
            add_delta(
                &mut rollups,
                keys::rollup_key(w.app, None, w.date, &v.event),
                v.weight,
            );
            add_delta(
                &mut totals,
                keys::total_key(w.app, None, &v.event),
                v.weight,
            );
            add_delta(
                &mut hours,
                keys::hour_key(w.app, keys::hour_of(w.at), &v.event),
                v.weight,
            );
            if let Some(u) = v.user_id {
                add_delta(
                    &mut user_rollups,
                    keys::rollup_key(w.app, Some(u), w.date, &v.event),
                    v.weight,
                );
                add_delta(
                    &mut user_totals,
                    keys::total_key(w.app, Some(u), &v.event),
                    v.weight,
                );
            }
        }
        for (app, mut events) in by_app {
            // Stable: events of the same microsecond keep their arrival order.
            events.sort_by_key(|(at, _)| *at);
            for block in split_blocks(&events) {
                let first = block[0].0;
                let seq = self.db.generate_id()?;
                out.push(Mutation::put(
                    &self.events,
                    keys::event_key(app, first, seq).to_vec(),
                    keys::encode_block(first, block.iter().copied()),
                ));
            }
        }
        for deltas in [rollups, user_rollups, totals, user_totals, hours] {
            for (k, d) in deltas {
                let mut t = self
                    .events
                    .get(&k)?
                    .map(|b| Tally::decode(&b))
                    .unwrap_or_default();
                t.add(d);
                out.push(Mutation::put(&self.events, k, t.encode().to_vec()));
            }
        }
        Ok((out, outcomes))
    }

    /// Counts and weight sums for today, this week, this month and total, from rollups only.
    pub fn stats(
        &self,
        app: u64,
        periods: &Periods,
        event: Option<&str>,
        user: Option<i64>,
    ) -> Result<StatsReport, StoreError> {
        self.visible.wait();
        let (rollup_family, total_family) = match user {
            Some(_) => (Family::UserRollup, Family::UserTotal),
            None => (Family::Rollup, Family::Total),
        };
        let prefix = keys::scope_prefix(rollup_family, app, user);
        let mut report = StatsReport::default();
        let lo = {
            let mut k = prefix.clone();
            k.extend_from_slice(&date_key(periods.earliest()).to_be_bytes());
            k
        };
        let hi = {
            let mut k = prefix.clone();
            k.extend_from_slice(&(date_key(periods.today) + 1).to_be_bytes());
            k
        };
        let (today, week, month) = (
            date_key(periods.today),
            date_key(periods.week_start),
            date_key(periods.month_start),
        );
        for item in self.events.range(lo..hi) {
            let (k, v) = item?;
            let rest = &k[prefix.len()..];
            let Some(date) = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
            else {
                continue;
            };
            let name = String::from_utf8_lossy(&rest[4..]);
            if event.is_some_and(|e| e != name) {
                continue;
            }
            debug_assert!(date_from_key(date).is_some());
            let t = Tally::decode(&v);
            let entry = report.events.entry(name.into_owned()).or_default();
            if date == today {
                entry.today.add(t);
                report.overall.today.add(t);
            }
            if date >= week {
                entry.week.add(t);
                report.overall.week.add(t);
            }
            if date >= month {
                entry.month.add(t);
                report.overall.month.add(t);
            }
        }
        let prefix = keys::scope_prefix(total_family, app, user);
        let scan: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match event {
            Some(e) => {
                let key = keys::total_key(app, user, e);
                Box::new(
                    self.events
                        .get(&key)?
                        .map(|v| Ok((sled::IVec::from(key), v)))
                        .into_iter(),
                )
            }
            None => Box::new(self.events.scan_prefix(&prefix)),
        };
        for item in scan {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let t = Tally::decode(&v);
            report.events.entry(name).or_default().total.add(t);
            report.overall.total.add(t);
        }
        Ok(report)
    }

    /// Iterates an application's stored events, oldest first, applying `filter`.
    pub fn export(
        &self,
        app: u64,
        filter: ExportFilter,
    ) -> impl Iterator<Item = Result<ExportedEvent, StoreError>> + Send + 'static {
        self.visible.wait();
        let from = filter.from.map(keys::micros).unwrap_or(i64::MIN);
        let to = filter.to.map(keys::micros).unwrap_or(i64::MAX);
        // A block starting up to one span before `from` may still hold events after it.
        let lo = keys::event_bound(app, from.saturating_sub(keys::BLOCK_SPAN_MICROS));
        let hi = match filter.to {
            Some(_) => keys::event_bound(app, to).to_vec(),
            None => keys::events_end(app),
        };
        ExportIter {
            blocks: self.events.range(lo.to_vec()..hi),
            buffered: std::collections::BinaryHeap::new(),
            frontier: i64::MIN,
            done: false,
            from,
            to,
            filter,
        }
    }

    /// Deletes an application's raw events and hourly rollups older than `cutoff`; daily
    /// rollups and totals stay, so every period and `total` stay exact. Blocks that end
    /// before `cutoff` go whole; a block that straddles it keeps its later events. These
    /// writes bypass the commit log: after a crash, a replay may bring back a few events
    /// that were past retention already, and the next pass deletes them again. Returns the
    /// number of events deleted.
    pub fn purge_events_before(&self, app: u64, cutoff: Timestamp) -> Result<usize, StoreError> {
        let cut = keys::micros(cutoff);
        let whole = cut.saturating_sub(keys::BLOCK_SPAN_MICROS);
        let lo = keys::event_bound(app, i64::MIN).to_vec();
        let hi = keys::event_bound(app, whole).to_vec();
        let mut removed = self.purge_range(lo, hi.clone(), keys::event_count_of)?;
        let mut batch = sled::Batch::default();
        for item in self.events.range(hi..keys::event_bound(app, cut).to_vec()) {
            let (k, v) = item?;
            let Some((first, _)) = block_key(&k) else {
                continue;
            };
            let Some(events) = keys::decode_events(first, &v) else {
                continue;
            };
            let keep: Vec<(i64, &EventValue)> = events
                .iter()
                .filter(|(at, _)| *at >= cut)
                .map(|(at, e)| (*at, e))
                .collect();
            removed += events.len() - keep.len();
            if keep.is_empty() {
                batch.remove(k);
            } else if keep.len() < events.len() {
                batch.insert(k, keys::encode_block(first, keep));
            }
        }
        self.events.apply_batch(batch)?;
        let hour_lo = keys::hour_key(app, i64::MIN, "");
        let hour_hi = keys::hour_key(app, keys::hour_of(cutoff), "");
        self.purge_range(hour_lo, hour_hi, |_| 1)?;
        Ok(removed)
    }

    /// Deletes every key in `lo..hi`, in batches; returns the sum of `weigh` over the
    /// deleted values (records, or events for raw-event blocks).
    fn purge_range(
        &self,
        lo: Vec<u8>,
        hi: Vec<u8>,
        weigh: impl Fn(&[u8]) -> usize,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in self.events.range(lo.clone()..hi.clone()).take(4096) {
                let (k, v) = item?;
                removed += weigh(&v);
                batch.remove(k);
                n += 1;
            }
            if n == 0 {
                return Ok(removed);
            }
            self.events.apply_batch(batch)?;
        }
    }

    /// Deletes an application's idempotency records of days before yesterday (UTC): they
    /// are past the window, which lookups check by time as well.
    pub fn purge_idempotency(&self, app: u64, now: Timestamp) -> Result<usize, StoreError> {
        let lo = keys::idempotency_bound(app, i64::from(i32::MIN)).to_vec();
        let hi = keys::idempotency_bound(app, keys::day_of(now) - 1).to_vec();
        self.purge_range(lo, hi, |_| 1)
    }

    /// Removes every event and rollup of an application (its deletion with data purge).
    pub fn purge_application_events(&self, app: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for family in [
            Family::Event,
            Family::Rollup,
            Family::UserRollup,
            Family::Total,
            Family::UserTotal,
            Family::HourRollup,
            Family::Idempotency,
        ] {
            for k in self
                .events
                .scan_prefix(keys::scope_prefix(family, app, None))
                .keys()
            {
                batch.remove(k?);
            }
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// Number of raw events an application holds (for metrics and tests).
    pub fn event_count(&self, app: u64) -> Result<usize, StoreError> {
        self.visible.wait();
        let mut n = 0;
        for item in self
            .events
            .scan_prefix(keys::scope_prefix(Family::Event, app, None))
            .values()
        {
            n += keys::event_count_of(&item?);
        }
        Ok(n)
    }

    /// Time of the newest stored event of an application.
    pub fn last_event_at(&self, app: u64) -> Result<Option<Timestamp>, StoreError> {
        self.visible.wait();
        let lo = keys::event_bound(app, i64::MIN);
        let mut newest: Option<i64> = None;
        for item in self.events.range(lo.to_vec()..keys::events_end(app)).rev() {
            let (k, v) = item?;
            let Some((first, _)) = block_key(&k) else {
                continue;
            };
            // Blocks are keyed by their first event: one that starts more than a span
            // before the newest event found cannot hold a newer one.
            if newest.is_some_and(|m| first.saturating_add(keys::BLOCK_SPAN_MICROS) < m) {
                break;
            }
            let last = keys::decode_events(first, &v)
                .and_then(|events| events.iter().map(|(at, _)| *at).max());
            newest = newest.max(last);
        }
        Ok(newest.and_then(|m| Timestamp::from_microsecond(m).ok()))
    }

    /// Event counts per UTC hour in `[from_hour, to_hour)`, per event name (charts).
    pub fn hourly(
        &self,
        app: u64,
        from_hour: i64,
        to_hour: i64,
        event: Option<&str>,
    ) -> Result<Vec<Bucket>, StoreError> {
        self.visible.wait();
        let prefix = keys::scope_prefix(Family::HourRollup, app, None);
        let lo = keys::hour_key(app, from_hour, "");
        let hi = keys::hour_key(app, to_hour, "");
        let mut out = Vec::new();
        for item in self.events.range(lo..hi) {
            let (k, v) = item?;
            let rest = &k[prefix.len()..];
            let Some(hour) = rest.get(..8).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let name = String::from_utf8_lossy(&rest[8..]);
            if event.is_some_and(|e| e != name) {
                continue;
            }
            out.push(Bucket {
                at: keys::i64_from_key(hour),
                event: name.into_owned(),
                tally: Tally::decode(&v),
            });
        }
        Ok(out)
    }

    /// Event counts per local date in `[from, to]` (`YYYYMMDD` keys), per event name.
    pub fn daily(
        &self,
        app: u64,
        from: u32,
        to: u32,
        event: Option<&str>,
        user: Option<i64>,
    ) -> Result<Vec<Bucket>, StoreError> {
        self.visible.wait();
        let family = if user.is_some() {
            Family::UserRollup
        } else {
            Family::Rollup
        };
        let prefix = keys::scope_prefix(family, app, user);
        let bound = |date: u32| {
            let mut k = prefix.clone();
            k.extend_from_slice(&date.to_be_bytes());
            k
        };
        let mut out = Vec::new();
        for item in self.events.range(bound(from)..bound(to.saturating_add(1))) {
            let (k, v) = item?;
            let rest = &k[prefix.len()..];
            let Some(date) = rest.get(..4).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let name = String::from_utf8_lossy(&rest[4..]);
            if event.is_some_and(|e| e != name) {
                continue;
            }
            out.push(Bucket {
                at: i64::from(u32::from_be_bytes(date)),
                event: name.into_owned(),
                tally: Tally::decode(&v),
            });
        }
        Ok(out)
    }

    /// The `limit` users with the most events of all time (optionally of one event name),
    /// most first; ties by user id.
    pub fn top_users(
        &self,
        app: u64,
        event: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(i64, Tally)>, StoreError> {
        self.visible.wait();
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let prefix = keys::scope_prefix(Family::UserTotal, app, None);
        // A min-heap of the best `limit` so far: memory stays bounded for any user count.
        let mut best: BinaryHeap<Reverse<(i64, Reverse<i64>, i128)>> = BinaryHeap::new();
        let mut offer = |user: i64, t: Tally| {
            best.push(Reverse((t.count, Reverse(user), t.weight)));
            if best.len() > limit {
                best.pop();
            }
        };
        let mut current: Option<(i64, Tally)> = None;
        for item in self.events.scan_prefix(&prefix) {
            let (k, v) = item?;
            let rest = &k[prefix.len()..];
            let Some(user) = rest.get(..8).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            if event.is_some_and(|e| e.as_bytes() != &rest[8..]) {
                continue;
            }
            let user = keys::i64_from_key(user);
            let t = Tally::decode(&v);
            // Keys are ordered by user, so one user's event names are adjacent.
            match &mut current {
                Some((u, acc)) if *u == user => acc.add(t),
                _ => {
                    if let Some((u, acc)) = current.replace((user, t)) {
                        offer(u, acc);
                    }
                }
            }
        }
        if let Some((u, acc)) = current {
            offer(u, acc);
        }
        let mut out: Vec<(i64, Tally)> = best
            .into_iter()
            .map(|Reverse((count, Reverse(user), weight))| (user, Tally { count, weight }))
            .collect();
        out.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        Ok(out)
    }
}

/// A tally in one time bucket for one event name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Hours since the epoch (hourly) or a `YYYYMMDD` date key (daily).
    pub at: i64,
    /// Event name.
    pub event: String,
    /// Count and weight sum.
    pub tally: Tally,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_wait_for_answered_batches_to_be_applied() {
        let v = Arc::new(Visibility::default());
        v.wait(); // nothing answered: returns at once
        v.acknowledged(1);
        let started = std::time::Instant::now();
        let applier = {
            let v = v.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                v.applied(1);
            })
        };
        v.wait();
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        assert_eq!(*v.applied.lock().unwrap(), 1);
        applier.join().unwrap();
    }
    use crate::core::store::StoreOptions;

    fn ev(name: &str, user: Option<i64>) -> EventValue {
        EventValue {
            event: name.into(),
            weight: 1,
            user_id: user,
        }
    }

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_microsecond(micros).unwrap()
    }

    /// Writes one group commit's worth of events, as the ingest writer does.
    fn batch(store: &Store, events: &[(u64, i64, &str)]) {
        let writes: Vec<EventWrite> = events
            .iter()
            .map(|(app, micros, name)| EventWrite {
                app: *app,
                at: at(*micros),
                date: 20240101,
                value: ev(name, None),
                idempotency: None,
            })
            .collect();
        let refs: Vec<&EventWrite> = writes.iter().collect();
        let (w, _) = store.event_writes(&refs, Timestamp::now()).unwrap();
        store.committer().log_blocking(w).unwrap();
    }

    fn names(store: &Store, app: u64, filter: ExportFilter) -> Vec<(i64, String)> {
        store
            .export(app, filter)
            .map(|r| {
                let e = r.unwrap();
                (e.at.as_microsecond(), e.value.event)
            })
            .collect()
    }

    const T: i64 = 1_700_000_000_000_000;

    #[tokio::test]
    async fn export_merges_overlapping_blocks_into_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        // Batch 1 spans 0.9 s; batch 2 lands inside it; app 2 must not leak into app 1.
        batch(
            &store,
            &[(1, T + 900_000, "c"), (1, T, "a"), (2, T + 1, "other")],
        );
        batch(&store, &[(1, T + 500_000, "b"), (1, T + 900_000, "c2")]);
        // A value written before blocks existed (one event per key) still reads.
        store
            .events
            .insert(
                keys::event_key(1, T + 700_000, u64::MAX),
                ev("old", Some(7)).encode(),
            )
            .unwrap();
        // Out of the span of the first block: starts a block of its own.
        batch(&store, &[(1, T + 3_000_000, "d"), (1, T - 5, "z")]);
        assert_eq!(
            names(&store, 1, ExportFilter::default()),
            vec![
                (T - 5, "z".to_string()),
                (T, "a".into()),
                (T + 500_000, "b".into()),
                (T + 700_000, "old".into()),
                (T + 900_000, "c".into()),
                (T + 900_000, "c2".into()),
                (T + 3_000_000, "d".into()),
            ]
        );
        assert_eq!(store.event_count(1).unwrap(), 7);
        assert_eq!(store.event_count(2).unwrap(), 1);
        // Bounds that cut through blocks.
        let f = ExportFilter {
            from: Some(at(T + 500_000)),
            to: Some(at(T + 900_000)),
            ..Default::default()
        };
        assert_eq!(
            names(&store, 1, f),
            vec![(T + 500_000, "b".into()), (T + 700_000, "old".into())]
        );
        let f = ExportFilter {
            user_id: Some(7),
            ..Default::default()
        };
        assert_eq!(names(&store, 1, f), vec![(T + 700_000, "old".into())]);
        assert_eq!(store.last_event_at(1).unwrap(), Some(at(T + 3_000_000)));
    }

    #[tokio::test]
    async fn newest_event_may_sit_in_an_earlier_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        batch(&store, &[(1, T, "a"), (1, T + 800_000, "newest")]);
        batch(&store, &[(1, T + 100_000, "b")]);
        assert_eq!(store.last_event_at(1).unwrap(), Some(at(T + 800_000)));
        assert_eq!(store.last_event_at(3).unwrap(), None);
    }

    #[tokio::test]
    async fn retention_cuts_through_a_block_and_keeps_its_later_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        batch(&store, &[(1, T - 10_000_000, "old")]);
        batch(
            &store,
            &[(1, T - 300_000, "before"), (1, T + 200_000, "after")],
        );
        batch(&store, &[(1, T - 100, "just-before")]);
        assert_eq!(store.purge_events_before(1, at(T)).unwrap(), 3);
        assert_eq!(
            names(&store, 1, ExportFilter::default()),
            vec![(T + 200_000, "after".to_string())]
        );
        assert_eq!(store.purge_events_before(1, at(T)).unwrap(), 0);
        // Totals are kept when raw events go.
        let total = store
            .events
            .get(keys::total_key(1, None, "before"))
            .unwrap()
            .map(|v| Tally::decode(&v));
        assert_eq!(total.map(|t| t.count), Some(1));
    }

    #[test]
    fn blocks_respect_their_span_and_size() {
        let e = ev("x", None);
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

    #[tokio::test]
    async fn an_idempotency_key_answers_for_24_hours_then_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let idem = |fp: u8| Idempotency {
            key: [7; 32],
            fingerprint: [fp; 32],
        };
        let write = |fp: u8| EventWrite {
            app: 1,
            at: at(T),
            date: 20231114,
            value: ev("e", None),
            idempotency: Some(idem(fp)),
        };
        let run = |now: Timestamp, ws: &[EventWrite]| {
            let refs: Vec<&EventWrite> = ws.iter().collect();
            let (w, outcomes) = store.event_writes(&refs, now).unwrap();
            store.committer().log_blocking(w).unwrap();
            outcomes
        };
        // Late in a UTC day, so the retry lands on the next day's bucket.
        let t0 = Timestamp::from_second(1_700_000_000 - 1_700_000_000 % 86_400 + 86_000).unwrap();
        // Two copies in one batch count once.
        assert_eq!(
            run(t0, &[write(1), write(1), write(2)]),
            vec![Outcome::Stored, Outcome::Replayed, Outcome::KeyReused]
        );
        let hours = |h: i64| t0.checked_add(jiff::SignedDuration::from_hours(h)).unwrap();
        assert_eq!(run(hours(23), &[write(1)]), vec![Outcome::Replayed]);
        assert_eq!(run(hours(23), &[write(3)]), vec![Outcome::KeyReused]);
        assert_eq!(store.event_count(1).unwrap(), 1);
        // Past the window the key is new again.
        assert_eq!(run(hours(25), &[write(3)]), vec![Outcome::Stored]);
        assert_eq!(store.event_count(1).unwrap(), 2);
        // Expiry drops whole days before yesterday: the first record goes, the new stays.
        assert_eq!(store.purge_idempotency(1, hours(50)).unwrap(), 1);
        assert_eq!(run(hours(26), &[write(3)]), vec![Outcome::Replayed]);
        assert_eq!(store.purge_idempotency(1, hours(80)).unwrap(), 1);
        assert_eq!(run(hours(26), &[write(3)]), vec![Outcome::Stored]);
    }
}
