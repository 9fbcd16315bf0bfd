//! Stats, charts and counts, read from the rollups (raw events only where a count needs
//! them); every query first waits until the events answered so far are applied.

use jiff::Timestamp;

use crate::core::calendar::{Periods, date_from_key, date_key};
pub use crate::core::storage::{Bucket, PeriodTallies, StatsReport};
use crate::core::store::keys::{self, Family, Tally};
use crate::core::store::{Store, StoreError};

impl Store {
    /// Counts and weight sums for today, this week, this month and total, from rollups only.
    pub fn stats(
        &self,
        app: u64,
        periods: &Periods,
        event: Option<&str>,
        user: Option<i64>,
    ) -> Result<StatsReport, StoreError> {
        self.visible.wait();
        let mut report = StatsReport::default();
        self.add_periods(&mut report, app, periods, event, user)?;
        self.add_totals(&mut report, app, event, user)?;
        Ok(report)
    }

    /// Adds today, this week and this month from the daily rollups of the dates the
    /// periods span.
    fn add_periods(
        &self,
        report: &mut StatsReport,
        app: u64,
        periods: &Periods,
        event: Option<&str>,
        user: Option<i64>,
    ) -> Result<(), StoreError> {
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
        let (today, week, month) = (
            date_key(periods.today),
            date_key(periods.week_start),
            date_key(periods.month_start),
        );
        for item in self
            .events
            .range(bound(date_key(periods.earliest()))..bound(today + 1))
        {
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
            for (in_period, total, overall) in [
                (date == today, &mut entry.today, &mut report.overall.today),
                (date >= week, &mut entry.week, &mut report.overall.week),
                (date >= month, &mut entry.month, &mut report.overall.month),
            ] {
                if in_period {
                    total.add(t);
                    overall.add(t);
                }
            }
        }
        Ok(())
    }

    /// Adds the all-time totals, which outlive the raw events and daily rollups.
    fn add_totals(
        &self,
        report: &mut StatsReport,
        app: u64,
        event: Option<&str>,
        user: Option<i64>,
    ) -> Result<(), StoreError> {
        let family = if user.is_some() {
            Family::UserTotal
        } else {
            Family::Total
        };
        let prefix = keys::scope_prefix(family, app, user);
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

    /// Time of the newest event an application stored (retention may have deleted it
    /// since).
    pub fn last_event_at(&self, app: u64) -> Result<Option<Timestamp>, StoreError> {
        self.visible.wait();
        Ok(self
            .latest_event_micros(app)?
            .and_then(crate::core::storage::timestamp_from_micros))
    }

    /// The newest event time of an application in microseconds: its record, kept by the
    /// ingest writer, or for data stored before there was one, found in the blocks.
    pub(crate) fn latest_event_micros(&self, app: u64) -> Result<Option<i64>, StoreError> {
        if let Some(v) = self.events.get(keys::latest_key(app))? {
            let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "newest event time".into(),
                detail: hex::encode(&v),
            })?;
            return Ok(Some(i64::from_le_bytes(bytes)));
        }
        self.newest_in_blocks(app)
    }

    /// Writes the newest-event record of every application whose events were stored
    /// before there was one, so reading it never decodes blocks again. Runs at open, before
    /// the ingest writer (the record's only other writer) starts; the record is derived
    /// data, so it bypasses the commit log.
    pub(crate) fn remember_newest_events(&self) -> Result<(), StoreError> {
        let mut next = Some(0u64);
        while let Some(from) = next {
            let Some(k) = self.first_event_key_from(from)? else {
                break;
            };
            let Some((app, _)) = keys::parse_event_key(&k) else {
                break;
            };
            if self.events.get(keys::latest_key(app))?.is_none()
                && let Some(newest) = self.newest_in_blocks(app)?
            {
                self.events
                    .insert(keys::latest_key(app), &newest.to_le_bytes()[..])?;
            }
            next = app.checked_add(1);
        }
        Ok(())
    }

    /// The key of the first raw-event record of application `from` or a later one: event
    /// keys sort by application first, so walking the applications that have events is
    /// one seek each.
    pub(crate) fn first_event_key_from(&self, from: u64) -> Result<Option<sled::IVec>, StoreError> {
        let lo = keys::event_bound(from, i64::MIN).to_vec();
        match self.events.range(lo..vec![Family::Event as u8 + 1]).next() {
            Some(item) => Ok(Some(item?.0)),
            None => Ok(None),
        }
    }

    /// The newest event time found by reading blocks from the end (decoding each, so only
    /// for data without a [`keys::latest_key`] record).
    fn newest_in_blocks(&self, app: u64) -> Result<Option<i64>, StoreError> {
        let lo = keys::event_bound(app, i64::MIN);
        let mut newest: Option<i64> = None;
        for item in self.events.range(lo.to_vec()..keys::events_end(app)).rev() {
            let (k, v) = item?;
            let Some((first, _)) = keys::parse_block_key(&k) else {
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
        Ok(newest)
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
        let range = keys::hour_key(app, from_hour, "")..keys::hour_key(app, to_hour, "");
        self.buckets(range, prefix.len(), event, |b: [u8; 8]| {
            keys::i64_from_key(b)
        })
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
        let range = bound(from)..bound(to.saturating_add(1));
        self.buckets(range, prefix.len(), event, |b: [u8; 4]| {
            i64::from(u32::from_be_bytes(b))
        })
    }

    /// The rollups in `range`, whose keys are a prefix of `prefix_len` bytes, a bucket of
    /// `N` bytes (read by `at`) and the event name; only `event`'s when given.
    fn buckets<const N: usize>(
        &self,
        range: std::ops::Range<Vec<u8>>,
        prefix_len: usize,
        event: Option<&str>,
        at: impl Fn([u8; N]) -> i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        let mut out = Vec::new();
        for item in self.events.range(range) {
            let (k, v) = item?;
            let Some(rest) = k.get(prefix_len..) else {
                continue;
            };
            let Some(bucket) = rest.get(..N).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let name = String::from_utf8_lossy(&rest[N..]);
            if event.is_some_and(|e| e != name) {
                continue;
            }
            out.push(Bucket {
                at: at(bucket),
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
