//! The events side of the port on PostgreSQL: writes through the ingest task, stats and
//! charts from the rollup tables, export in keyset pages, retention in small deletes.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use tokio_postgres::types::ToSql;

use super::writer::Writer;
use super::{Db, db_id, micros, weight_of};
use crate::core::calendar::{Periods, date_key};
use crate::core::storage::{
    Bucket, EventStore, EventValue, EventWrite, ExportBatches, ExportFilter, ExportedEvent,
    IDEMPOTENCY_WINDOW, Outcome, PeriodTallies, StatsReport, StorageError, StorageFuture, Tally,
};

/// Rows per export page: one query each, and the batch handed to the response.
const EXPORT_PAGE: i64 = 1024;

/// Rows deleted per retention statement: each is a short transaction, so ingest's row
/// locks never wait long behind one.
const PURGE_BATCH: i64 = 1000;

/// Events in PostgreSQL.
pub(super) struct PgEvents {
    pub(super) db: Db,
    pub(super) writer: Writer,
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

impl PgEvents {
    /// Rows of one query on a pooled connection.
    async fn rows(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, StorageError> {
        let client = self.db.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.db.fail(e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| self.db.fail(e))
    }

    /// Rows of (bucket or date, name, count, weight as text) as tallies.
    fn tallies(rows: &[tokio_postgres::Row]) -> Result<Vec<(i64, String, Tally)>, StorageError> {
        rows.iter()
            .map(|r| {
                let weight: String = r.get(3);
                Ok((
                    r.get(0),
                    r.get(1),
                    Tally {
                        count: r.get(2),
                        weight: weight_of(&weight)?,
                    },
                ))
            })
            .collect()
    }

    async fn stats_report(
        &self,
        app: u64,
        periods: Periods,
        event: Option<String>,
        user: Option<i64>,
    ) -> Result<StatsReport, StorageError> {
        let (today, week, month) = (
            i64::from(date_key(periods.today)),
            i64::from(date_key(periods.week_start)),
            i64::from(date_key(periods.month_start)),
        );
        let earliest = i64::from(date_key(periods.earliest()));
        let (days, totals) = match user {
            None => (
                "SELECT day::bigint, event, count, weight::text FROM hartslag_daily \
                 WHERE app = $1 AND day >= $2::bigint AND day <= $3::bigint AND ($4::text IS NULL OR event = $4) AND $5::bigint IS NULL",
                "SELECT 0::bigint, event, count, weight::text FROM hartslag_totals \
                 WHERE app = $1 AND ($2::text IS NULL OR event = $2) AND $3::bigint IS NULL",
            ),
            Some(_) => (
                "SELECT day::bigint, event, count, weight::text FROM hartslag_user_daily \
                 WHERE app = $1 AND day >= $2::bigint AND day <= $3::bigint AND ($4::text IS NULL OR event = $4) AND user_id = $5",
                "SELECT 0::bigint, event, count, weight::text FROM hartslag_user_totals \
                 WHERE app = $1 AND ($2::text IS NULL OR event = $2) AND user_id = $3",
            ),
        };
        let id = db_id(app);
        let day_rows = self
            .rows(days, &[&id, &earliest, &today, &event, &user])
            .await?;
        let total_rows = self.rows(totals, &[&id, &event, &user]).await?;
        let mut report = StatsReport::default();
        for (date, name, t) in Self::tallies(&day_rows)? {
            let entry = report.events.entry(name).or_default();
            add_periods(
                entry,
                &mut report.overall,
                t,
                [date == today, date >= week, date >= month],
            );
        }
        for (_, name, t) in Self::tallies(&total_rows)? {
            report.events.entry(name).or_default().total.add(t);
            report.overall.total.add(t);
        }
        Ok(report)
    }

    async fn buckets(&self, sql: &str, params: &Params<'_>) -> Result<Vec<Bucket>, StorageError> {
        let rows = self.rows(sql, params).await?;
        Ok(Self::tallies(&rows)?
            .into_iter()
            .map(|(at, event, tally)| Bucket { at, event, tally })
            .collect())
    }

    async fn top(
        &self,
        app: u64,
        event: Option<String>,
        limit: usize,
    ) -> Result<Vec<(i64, Tally)>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "SELECT user_id, sum(count)::bigint, sum(weight)::text FROM hartslag_user_totals \
                 WHERE app = $1 AND ($2::text IS NULL OR event = $2) \
                 GROUP BY user_id ORDER BY sum(count) DESC, user_id LIMIT $3",
                &[&db_id(app), &event, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let weight: String = r.get(2);
                Ok((
                    r.get(0),
                    Tally {
                        count: r.get(1),
                        weight: weight_of(&weight)?,
                    },
                ))
            })
            .collect()
    }

    /// Runs `sql` (a delete of at most [`PURGE_BATCH`] rows) until it deletes fewer; rests
    /// after each as long as it took, so a large purge takes at most half the database's
    /// time from ingest. Returns how many rows went.
    async fn purge_in_batches(&self, sql: &str, params: &Params<'_>) -> Result<u64, StorageError> {
        let mut removed = 0;
        loop {
            let started = Instant::now();
            let client = self.db.client().await?;
            let statement = client
                .prepare_cached(sql)
                .await
                .map_err(|e| self.db.fail(e))?;
            let n = client
                .execute(&statement, params)
                .await
                .map_err(|e| self.db.fail(e))?;
            drop(client);
            removed += n;
            if n < PURGE_BATCH as u64 {
                return Ok(removed);
            }
            tokio::time::sleep(started.elapsed().min(Duration::from_secs(1))).await;
        }
    }
}

/// Adds `t` to the periods it falls in (today, week, month), for its name and overall.
fn add_periods(
    entry: &mut PeriodTallies,
    overall: &mut PeriodTallies,
    t: Tally,
    within: [bool; 3],
) {
    let [today, week, month] = within;
    if today {
        entry.today.add(t);
        overall.today.add(t);
    }
    if week {
        entry.week.add(t);
        overall.week.add(t);
    }
    if month {
        entry.month.add(t);
        overall.month.add(t);
    }
}

impl EventStore for PgEvents {
    fn write(&self, write: EventWrite) -> StorageFuture<'_, Outcome> {
        Box::pin(self.writer.write(write))
    }

    fn stats(
        &self,
        app: u64,
        periods: Periods,
        event: Option<String>,
        user: Option<i64>,
    ) -> StorageFuture<'_, StatsReport> {
        Box::pin(self.stats_report(app, periods, event, user))
    }

    fn hourly(
        &self,
        app: u64,
        from_hour: i64,
        to_hour: i64,
        event: Option<String>,
    ) -> StorageFuture<'_, Vec<Bucket>> {
        Box::pin(async move {
            self.buckets(
                "SELECT hour, event, count, weight::text FROM hartslag_hourly \
                 WHERE app = $1 AND hour >= $2 AND hour < $3 AND ($4::text IS NULL OR event = $4) \
                 ORDER BY hour, event",
                &[&db_id(app), &from_hour, &to_hour, &event],
            )
            .await
        })
    }

    fn daily(
        &self,
        app: u64,
        from: u32,
        to: u32,
        event: Option<String>,
        user: Option<i64>,
    ) -> StorageFuture<'_, Vec<Bucket>> {
        Box::pin(async move {
            let (from, to) = (i64::from(from), i64::from(to));
            let sql = match user {
                None => {
                    "SELECT day::bigint, event, count, weight::text FROM hartslag_daily \
                     WHERE app = $1 AND day >= $2::bigint AND day <= $3::bigint AND ($4::text IS NULL OR event = $4) \
                     AND $5::bigint IS NULL ORDER BY day, event"
                }
                Some(_) => {
                    "SELECT day::bigint, event, count, weight::text FROM hartslag_user_daily \
                     WHERE app = $1 AND day >= $2::bigint AND day <= $3::bigint AND ($4::text IS NULL OR event = $4) \
                     AND user_id = $5 ORDER BY day, event"
                }
            };
            self.buckets(sql, &[&db_id(app), &from, &to, &event, &user])
                .await
        })
    }

    fn top_users(
        &self,
        app: u64,
        event: Option<String>,
        limit: usize,
    ) -> StorageFuture<'_, Vec<(i64, Tally)>> {
        Box::pin(self.top(app, event, limit))
    }

    fn event_count(&self, app: u64) -> StorageFuture<'_, u64> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT count(*) FROM hartslag_events WHERE app = $1",
                    &[&db_id(app)],
                )
                .await?;
            let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn last_event_at(&self, app: u64) -> StorageFuture<'_, Option<Timestamp>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT at FROM hartslag_latest WHERE app = $1",
                    &[&db_id(app)],
                )
                .await?;
            Ok(rows
                .first()
                .and_then(|r| crate::core::storage::timestamp_from_micros(r.get(0))))
        })
    }

    fn export(&self, app: u64, filter: ExportFilter) -> ExportBatches {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(export_pages(self.db.clone(), app, filter, tx));
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|batch| (batch, rx))
        })
        .boxed()
    }

    fn purge_before(&self, app: u64, cutoff: Timestamp) -> StorageFuture<'_, u64> {
        Box::pin(async move {
            let (id, cut, hour) = (
                db_id(app),
                micros(cutoff),
                crate::core::storage::hour_of(cutoff),
            );
            let events = self
                .purge_in_batches(
                    "DELETE FROM hartslag_events WHERE (app, at, seq) IN \
                     (SELECT app, at, seq FROM hartslag_events WHERE app = $1 AND at < $2 ORDER BY at, seq LIMIT 1000)",
                    &[&id, &cut],
                )
                .await?;
            self.purge_in_batches(
                "DELETE FROM hartslag_hourly WHERE (app, hour, event) IN \
                 (SELECT app, hour, event FROM hartslag_hourly WHERE app = $1 AND hour < $2 LIMIT 1000)",
                &[&id, &hour],
            )
            .await?;
            Ok(events)
        })
    }

    fn purge_idempotency(&self, app: u64, now: Timestamp) -> StorageFuture<'_, u64> {
        Box::pin(async move {
            let since = micros(
                now.checked_sub(IDEMPOTENCY_WINDOW)
                    .unwrap_or(Timestamp::MIN),
            );
            self.purge_in_batches(
                "DELETE FROM hartslag_idempotency WHERE (app, key) IN \
                 (SELECT app, key FROM hartslag_idempotency WHERE app = $1 AND at < $2 LIMIT 1000)",
                &[&db_id(app), &since],
            )
            .await
        })
    }

    fn purge_application(&self, app: u64) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.db.client().await?;
            let id = db_id(app);
            let tx = client.transaction().await.map_err(|e| self.db.fail(e))?;
            for table in [
                "hartslag_events",
                "hartslag_daily",
                "hartslag_user_daily",
                "hartslag_totals",
                "hartslag_user_totals",
                "hartslag_hourly",
                "hartslag_latest",
                "hartslag_idempotency",
            ] {
                let sql = format!("DELETE FROM {table} WHERE app = $1");
                tx.execute(sql.as_str(), &[&id])
                    .await
                    .map_err(|e| self.db.fail(e))?;
            }
            tx.commit().await.map_err(|e| self.db.fail(e))
        })
    }

    fn health(&self) -> Result<(), StorageError> {
        self.db.schema.check()?;
        self.writer.health()
    }

    fn probe(&self) -> StorageFuture<'_, ()> {
        Box::pin(self.writer.probe())
    }
}

/// Feeds export's pages to `tx` until the last, the first error, or until the receiver
/// is gone (the client went away). Each page is one query that starts after the last row
/// sent (keyset paging on the primary key), so no cursor or transaction stays open
/// between pages while a slow client reads.
async fn export_pages(
    db: Db,
    app: u64,
    filter: ExportFilter,
    tx: tokio::sync::mpsc::Sender<Result<Vec<ExportedEvent>, StorageError>>,
) {
    let id = db_id(app);
    let mut after = (filter.from.map(micros).unwrap_or(i64::MIN), i64::MIN);
    let to = filter.to.map(micros).unwrap_or(i64::MAX);
    loop {
        let page = export_page(&db, id, after, to, &filter).await;
        let rows = match page {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let full = rows.len() as i64 == EXPORT_PAGE;
        let mut batch = Vec::with_capacity(rows.len());
        for (at, seq, value) in rows {
            after = (at, seq);
            match crate::core::storage::timestamp_from_micros(at) {
                Some(at) => batch.push(ExportedEvent { at, value }),
                None => {
                    let corrupt = StorageError::Corrupt {
                        what: "event time".into(),
                        detail: at.to_string(),
                    };
                    let _ = tx.send(Err(corrupt)).await;
                    return;
                }
            }
        }
        if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
            return;
        }
        if !full {
            return;
        }
    }
}

/// One page of export: rows after `after` (time, sequence), before `to`, filtered.
async fn export_page(
    db: &Db,
    app: i64,
    after: (i64, i64),
    to: i64,
    filter: &ExportFilter,
) -> Result<Vec<(i64, i64, EventValue)>, StorageError> {
    let client = db.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT at, seq, event, weight, user_id FROM hartslag_events \
             WHERE app = $1 AND (at, seq) > ($2, $3) AND at < $4 \
             AND ($5::text IS NULL OR event = $5) AND ($6::bigint IS NULL OR user_id = $6) \
             ORDER BY at, seq LIMIT $7",
        )
        .await
        .map_err(|e| db.fail(e))?;
    // Starting at `from` itself: a row at `from` has a sequence above the start's.
    let rows = client
        .query(
            &statement,
            &[
                &app,
                &after.0,
                &after.1,
                &to,
                &filter.event,
                &filter.user_id,
                &EXPORT_PAGE,
            ],
        )
        .await
        .map_err(|e| db.fail(e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                EventValue {
                    event: r.get(2),
                    weight: r.get(3),
                    user_id: r.get(4),
                },
            )
        })
        .collect())
}
