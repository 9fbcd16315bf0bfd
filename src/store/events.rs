//! Raw events and their rollups: the ingest writer, stats queries, export and retention.
//!
//! Every event writes six records (raw, daily rollup, per-user daily rollup, total,
//! per-user total, hourly rollup) into the events tree; rollups are merged per batch. A
//! single writer thread owns the rollup counters, so it can read-modify-write them without
//! conflicts. Each batch of events becomes one commit-log record (raw events and every
//! rollup they touch, as absolute values), so the rollups always agree with the raw events,
//! even after a crash. The writer waits until the committer has made the record durable
//! and applied it, then answers the batch; while it waits, the next batch gathers.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use super::keys::{self, EventValue, Family, Tally};
use super::wal::Write;
use super::{Store, StoreError};
use crate::ingest::periods::{Periods, date_from_key, date_key};

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
}

struct Job {
    write: EventWrite,
    ack: oneshot::Sender<Result<(), String>>,
}

/// Handle to the single ingest writer thread.
#[derive(Clone, Debug)]
pub struct EventWriter {
    tx: mpsc::Sender<Job>,
}

impl EventWriter {
    /// Starts the writer thread for `store`. A dedicated OS thread, because sled calls and
    /// the wait for the committer block; the committer makes each batch durable.
    pub fn spawn(store: Store) -> Result<Self, StoreError> {
        let (tx, mut rx) = mpsc::channel::<Job>(8192);
        std::thread::Builder::new()
            .name("hartslag-ingest".into())
            .spawn(move || {
                let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let writes: Vec<&EventWrite> = batch.iter().map(|j| &j.write).collect();
                    let result = store
                        .event_writes(&writes)
                        .and_then(|w| Ok(store.committer().log_blocking(w)?))
                        .map_err(|e| {
                            tracing::error!(error = %e, "writing a batch of events failed");
                            e.to_string()
                        });
                    for job in batch.drain(..) {
                        let _ = job.ack.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Self { tx })
    }

    /// Stores one event durably; returns once it is on disk and visible to queries.
    pub async fn write(&self, write: EventWrite) -> Result<(), StoreError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Job { write, ack })
            .await
            .map_err(|_| StoreError::Stopped)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::Corrupt {
                what: "event batch".into(),
                detail: msg,
            }),
            Err(_) => Err(StoreError::Stopped),
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

fn add_delta(map: &mut HashMap<Vec<u8>, Tally>, key: Vec<u8>, weight: i64) {
    map.entry(key).or_default().add(Tally {
        count: 1,
        weight: i128::from(weight),
    });
}

impl Store {
    /// The writes for a batch: raw events plus every rollup they touch, with the rollups'
    /// new absolute values (so the record replays to the same result however often).
    pub(crate) fn event_writes(&self, writes: &[&EventWrite]) -> Result<Vec<Write>, StoreError> {
        let mut out = Vec::with_capacity(writes.len() + 8);
        let mut rollups = HashMap::new();
        let mut user_rollups = HashMap::new();
        let mut totals = HashMap::new();
        let mut user_totals = HashMap::new();
        let mut hours = HashMap::new();
        for w in writes {
            let seq = self.db.generate_id()?;
            out.push(Write::put(
                &self.events,
                keys::event_key(w.app, keys::micros(w.at), seq).to_vec(),
                w.value.encode(),
            ));
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
        for deltas in [rollups, user_rollups, totals, user_totals, hours] {
            for (k, d) in deltas {
                let mut t = self
                    .events
                    .get(&k)?
                    .map(|b| Tally::decode(&b))
                    .unwrap_or_default();
                t.add(d);
                out.push(Write::put(&self.events, k, t.encode().to_vec()));
            }
        }
        Ok(out)
    }

    /// Counts and weight sums for today, this week, this month and total, from rollups only.
    pub fn stats(
        &self,
        app: u64,
        periods: &Periods,
        event: Option<&str>,
        user: Option<i64>,
    ) -> Result<StatsReport, StoreError> {
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
        let lo = keys::event_bound(app, filter.from.map(keys::micros).unwrap_or(i64::MIN));
        let hi = match filter.to {
            Some(to) => keys::event_bound(app, keys::micros(to)).to_vec(),
            None => keys::events_end(app),
        };
        self.events.range(lo.to_vec()..hi).filter_map(move |item| {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(StoreError::Sled(e))),
            };
            let (_, micros) = keys::parse_event_key(&k)?;
            let Some(value) = EventValue::decode(&v) else {
                return Some(Err(StoreError::Corrupt {
                    what: "event".into(),
                    detail: hex::encode(&k[..]),
                }));
            };
            if filter.event.as_deref().is_some_and(|e| e != value.event)
                || filter.user_id.is_some_and(|u| Some(u) != value.user_id)
            {
                return None;
            }
            let at = Timestamp::from_microsecond(micros).ok()?;
            Some(Ok(ExportedEvent { at, value }))
        })
    }

    /// Deletes an application's raw events and hourly rollups older than `cutoff`; daily
    /// rollups and totals stay, so every period and `total` stay exact. These deletes bypass
    /// the commit log: after a crash, a replay may bring back a few events that were past
    /// retention already, and the next pass deletes them again.
    pub fn purge_events_before(&self, app: u64, cutoff: Timestamp) -> Result<usize, StoreError> {
        let lo = keys::event_bound(app, i64::MIN).to_vec();
        let hi = keys::event_bound(app, keys::micros(cutoff)).to_vec();
        let removed = self.purge_range(lo, hi)?;
        let hour_lo = keys::hour_key(app, i64::MIN, "");
        let hour_hi = keys::hour_key(app, keys::hour_of(cutoff), "");
        self.purge_range(hour_lo, hour_hi)?;
        Ok(removed)
    }

    fn purge_range(&self, lo: Vec<u8>, hi: Vec<u8>) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in self.events.range(lo.clone()..hi.clone()).keys().take(4096) {
                batch.remove(k?);
                n += 1;
            }
            if n == 0 {
                return Ok(removed);
            }
            self.events.apply_batch(batch)?;
            removed += n;
        }
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
    pub fn event_count(&self, app: u64) -> usize {
        self.events
            .scan_prefix(keys::scope_prefix(Family::Event, app, None))
            .count()
    }

    /// Time of the newest stored event of an application.
    pub fn last_event_at(&self, app: u64) -> Result<Option<Timestamp>, StoreError> {
        let lo = keys::event_bound(app, i64::MIN);
        match self
            .events
            .range(lo.to_vec()..keys::events_end(app))
            .next_back()
        {
            Some(item) => {
                let (k, _) = item?;
                Ok(
                    keys::parse_event_key(&k)
                        .and_then(|(_, m)| Timestamp::from_microsecond(m).ok()),
                )
            }
            None => Ok(None),
        }
    }

    /// Event counts per UTC hour in `[from_hour, to_hour)`, per event name (charts).
    pub fn hourly(
        &self,
        app: u64,
        from_hour: i64,
        to_hour: i64,
        event: Option<&str>,
    ) -> Result<Vec<Bucket>, StoreError> {
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
