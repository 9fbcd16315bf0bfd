//! Copying another backend's data in (`hartslag migrate`): one part at a time, each in
//! one transaction that ends by recording the part as done
//! (`hartslag_migrations_from_sled`), so a part is either wholly in the database and
//! marked, or not there at all: a run killed midway leaves nothing of the part it was
//! copying, and the next run copies that part again from scratch.
//!
//! Event data goes in with `COPY ... FROM STDIN (FORMAT csv)`, streamed: ten million
//! events never sit in memory, and the server writes them without a statement per batch.
//! Idempotency records pass through a temporary table first, so a key the source holds
//! twice is stored once (the newest). Monitors, retained records, pings, timeline entries
//! and pending deliveries are gathered into monitor rounds written by the round writer's
//! own code ([`super::rounds::write_round`]), finished deliveries and targets' histories by
//! the outbox's: one encoding of each record, whoever writes it.

use std::io::Cursor;
use std::pin::Pin;

use futures::SinkExt;
use jiff::Timestamp;
use tokio_postgres::CopyInSink;

use super::apps::json;
use super::backend::TxError;
use super::{DatabaseUrl, PgError, db_id, describe, with_causes};
use crate::core::migrate::rows::{Part, Row};
use crate::core::storage::{MonitorRound, Removal, StorageError, Tally};

/// Monitor rows (monitors, pings, timeline entries, deliveries) written as one round.
const ROUND_ROWS: usize = 2048;

/// Bytes of CSV gathered before they are sent.
const CHUNK: usize = 256 * 1024;

/// The advisory lock one migration holds on the database for its whole run ("migr").
const COPY_LOCK: i64 = 0x6d69_6772;

/// A part another run finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The identity of the directory it was copied from.
    pub source: String,
    /// The part's name ([`Part::name`]).
    pub part: String,
    /// Rows it copied.
    pub copied: u64,
    /// When it finished.
    pub finished_at: Timestamp,
    /// What the part's rows were when copied (migration 7); `None` for a part copied by
    /// an earlier release.
    pub digest: Option<String>,
}

/// The database a migration copies into, on one connection of its own.
pub struct Target {
    client: deadpool_postgres::Client,
    url: DatabaseUrl,
}

/// Connects to `url`, brings the schema up to date (refusing a newer one) and takes the
/// migration lock: `Ok(None)` when another migration holds it.
pub async fn target(url: &DatabaseUrl) -> Result<Option<Target>, PgError> {
    let tls = super::connect::tls(url)?;
    super::migrate::run(url, tls.clone()).await?;
    let connect_error = |detail: String| PgError::Connect {
        url: url.to_string(),
        detail: url.redact(&detail),
    };
    // A pool of its own, of which the migration takes one connection for its whole run
    // (the lock below is that connection's): the rows go in through the transactions of
    // the PostgreSQL store's own writes, which take a pooled connection's.
    let pool = super::connect::pool(url, tls)?;
    let client = pool
        .get()
        .await
        .map_err(|e| connect_error(with_causes(&e)))?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&COPY_LOCK])
        .await
        .map_err(|e| connect_error(describe(&e)))?
        .get(0);
    Ok(locked.then_some(Target {
        client,
        url: url.clone(),
    }))
}

/// The tables whose rows a part copies.
fn tables(part: Part) -> &'static [&'static str] {
    match part {
        Part::Applications => &["hartslag_apps", "hartslag_tokens"],
        Part::Events => &["hartslag_events"],
        Part::Rollups => &[
            "hartslag_daily",
            "hartslag_user_daily",
            "hartslag_totals",
            "hartslag_user_totals",
            "hartslag_hourly",
            "hartslag_latest",
        ],
        Part::Idempotency => &["hartslag_idempotency"],
        Part::Monitors => &["hartslag_monitors", "hartslag_monitor_retained"],
        Part::Pings => &["hartslag_pings"],
        Part::Timelines => &["hartslag_timeline"],
        Part::Outbox => &[
            "hartslag_outbox",
            "hartslag_outbox_done",
            "hartslag_outbox_targets",
        ],
    }
}

impl Target {
    fn fail(&self, e: tokio_postgres::Error) -> StorageError {
        fail_with(&self.url, e)
    }

    /// Every part recorded as copied, from any source.
    pub async fn markers(&self) -> Result<Vec<Marker>, StorageError> {
        let rows = self
            .client
            .query(
                "SELECT source, part, copied, finished_at, digest \
                 FROM hartslag_migrations_from_sled ORDER BY finished_at",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(rows
            .iter()
            .map(|r| Marker {
                source: r.get(0),
                part: r.get(1),
                copied: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                finished_at: Timestamp::from_microsecond(r.get(3)).unwrap_or(Timestamp::UNIX_EPOCH),
                digest: r.get(4),
            })
            .collect())
    }

    /// The installation the database belongs to, if it belongs to one yet
    /// (`hartslag_installation`).
    pub async fn installation(&self) -> Result<Option<super::Installation>, StorageError> {
        super::installation::recorded(&self.client)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Records `name` as the installation the database belongs to unless it belongs to one
    /// already, as a starting replica does ([`super::claim`]); the row as found after.
    /// `holder` names this migration for people reading the row.
    pub async fn claim(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<super::Installation, StorageError> {
        super::installation::record(&self.client, name, holder)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Records `digest` as what `source`'s `part` held when copied, in place of the sum
    /// recorded before (an earlier release's form of the same rows).
    pub async fn record_digest(
        &self,
        source: &str,
        part: Part,
        digest: &str,
    ) -> Result<(), StorageError> {
        self.client
            .execute(
                "UPDATE hartslag_migrations_from_sled SET digest = $3 \
                 WHERE source = $1 AND part = $2",
                &[&source, &part.name(), &digest],
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The first of `part`'s tables that holds a row, if one does.
    pub async fn occupied(&self, part: Part) -> Result<Option<&'static str>, StorageError> {
        for table in tables(part) {
            let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
            let row = self
                .client
                .query_one(&sql, &[])
                .await
                .map_err(|e| self.fail(e))?;
            if row.get::<_, bool>(0) {
                return Ok(Some(table));
            }
        }
        Ok(None)
    }

    /// Starts copying `part` in a transaction of its own.
    pub async fn begin(&mut self, part: Part) -> Result<PartCopy<'_>, StorageError> {
        let url = self.url.clone();
        let fail = |e: tokio_postgres::Error| fail_with(&url, e);
        let tx = self.client.transaction().await.map_err(fail)?;
        if part == Part::Idempotency {
            tx.batch_execute(
                "CREATE TEMPORARY TABLE hartslag_copy_idempotency \
                 (app bigint, key bytea, at bigint, fingerprint bytea) ON COMMIT DROP",
            )
            .await
            .map_err(fail)?;
        }
        Ok(PartCopy {
            tx,
            url,
            part,
            open: None,
            round: unbounded_round(),
            staged: 0,
            counts: Vec::new(),
        })
    }
}

/// A failed statement as the port's error, as [`super::Db::fail`] has it.
fn fail_with(url: &DatabaseUrl, e: tokio_postgres::Error) -> StorageError {
    let text = url.redact(&describe(&e));
    if e.is_closed() || e.code().is_none() {
        StorageError::Unavailable(text)
    } else {
        StorageError::NotStored(text)
    }
}

/// A `COPY` under way into one table.
struct OpenCopy {
    table: &'static str,
    sink: Pin<Box<CopyInSink<Cursor<Vec<u8>>>>>,
    buffer: Vec<u8>,
    rows: u64,
}

/// One part's copy: its transaction, the `COPY` under way, the monitor rows gathered
/// into a round not written yet, and the rows per table so far.
pub struct PartCopy<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    url: DatabaseUrl,
    part: Part,
    open: Option<OpenCopy>,
    round: MonitorRound,
    staged: usize,
    counts: Vec<(&'static str, u64)>,
}

/// A round that keeps every ping it is given (the history is copied as it is).
fn unbounded_round() -> MonitorRound {
    MonitorRound {
        keep_pings: u64::MAX,
        ..MonitorRound::default()
    }
}

/// A failed write of the store's own as the port's error.
fn tx_fail(url: &DatabaseUrl, e: TxError) -> StorageError {
    match e {
        TxError::Db(e) => fail_with(url, e),
        TxError::Refused(e) => e,
    }
}

impl PartCopy<'_> {
    fn fail(&self, e: tokio_postgres::Error) -> StorageError {
        fail_with(&self.url, e)
    }

    fn count(&mut self, table: &'static str, n: u64) {
        match self.counts.iter_mut().find(|(t, _)| *t == table) {
            Some((_, c)) => *c += n,
            None => self.counts.push((table, n)),
        }
    }

    /// Adds `rows` to the part: event data through `COPY`, monitors, their history and
    /// the outbox through the PostgreSQL store's own writes (a monitor round, the
    /// outbox's records).
    pub async fn write(&mut self, rows: Vec<Row>) -> Result<(), StorageError> {
        for row in rows {
            match row {
                Row::Monitor(_)
                | Row::Retained(_)
                | Row::Ping(..)
                | Row::Transition(..)
                | Row::Pending(_) => {
                    self.close().await?;
                    self.stage(row);
                    if self.staged >= ROUND_ROWS {
                        self.write_round().await?;
                    }
                }
                Row::Done(done) => {
                    self.close().await?;
                    self.write_round().await?;
                    let written = super::outbox::put_done(&self.tx, &done).await;
                    written.map_err(|e| tx_fail(&self.url, e))?;
                    self.count("hartslag_outbox_done", 1);
                }
                Row::Target(identity, history) => {
                    self.close().await?;
                    self.write_round().await?;
                    let target = (identity, *history);
                    let written = super::outbox::put_history(&self.tx, &target).await;
                    written.map_err(|e| tx_fail(&self.url, e))?;
                    self.count("hartslag_outbox_targets", 1);
                }
                row => self.copy_row(row).await?,
            }
        }
        Ok(())
    }

    /// Adds a monitor row to the round being gathered.
    fn stage(&mut self, row: Row) {
        let table = match row {
            Row::Monitor(m) => {
                self.round.put.push(std::sync::Arc::new(*m));
                "hartslag_monitors"
            }
            Row::Retained(m) => {
                self.round.remove.push(Removal {
                    key: m.def.key.clone(),
                    num: m.num,
                    retain: Some(*m),
                });
                "hartslag_monitor_retained"
            }
            Row::Ping(num, p) => {
                self.round.pings.push((num, *p));
                "hartslag_pings"
            }
            Row::Transition(num, pos, t) => {
                self.round.transitions.push((num, pos, *t));
                "hartslag_timeline"
            }
            Row::Pending(d) => {
                self.round.deliveries.push(*d);
                "hartslag_outbox"
            }
            _ => return,
        };
        self.staged += 1;
        self.count(table, 1);
    }

    /// Writes the round gathered so far, as the round writer writes one, under a version
    /// of its own.
    async fn write_round(&mut self) -> Result<(), StorageError> {
        if self.staged == 0 {
            return Ok(());
        }
        let round = std::mem::replace(&mut self.round, unbounded_round());
        self.staged = 0;
        let version: i64 = self
            .tx
            .query_one("SELECT nextval('hartslag_round')", &[])
            .await
            .map_err(|e| fail_with(&self.url, e))?
            .get(0);
        super::rounds::write_round(&self.tx, &round, version)
            .await
            .map_err(|e| tx_fail(&self.url, e))
    }

    /// Adds a row of event data to the `COPY` of its table.
    async fn copy_row(&mut self, row: Row) -> Result<(), StorageError> {
        let Some((table, columns)) = destination(&row) else {
            return Ok(());
        };
        if self.open.as_ref().is_none_or(|o| o.table != table) {
            self.close().await?;
            let sql = format!("COPY {table} ({columns}) FROM STDIN (FORMAT csv)");
            let sink = self.tx.copy_in(&sql).await.map_err(|e| self.fail(e))?;
            self.open = Some(OpenCopy {
                table,
                sink: Box::pin(sink),
                buffer: Vec::with_capacity(CHUNK),
                rows: 0,
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        csv_line(&row, &mut open.buffer)?;
        open.rows += 1;
        if open.buffer.len() >= CHUNK {
            let chunk = std::mem::replace(&mut open.buffer, Vec::with_capacity(CHUNK));
            let sent = open.sink.send(Cursor::new(chunk)).await;
            sent.map_err(|e| fail_with(&self.url, e))?;
        }
        Ok(())
    }

    /// Ends the `COPY` under way, if there is one.
    async fn close(&mut self) -> Result<(), StorageError> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        if !open.buffer.is_empty() {
            let chunk = std::mem::take(&mut open.buffer);
            open.sink
                .send(Cursor::new(chunk))
                .await
                .map_err(|e| self.fail(e))?;
        }
        open.sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| self.fail(e))?;
        let label = match open.table {
            "hartslag_copy_idempotency" => "hartslag_idempotency",
            t => t,
        };
        self.count(label, open.rows);
        Ok(())
    }

    /// Ends the part: records it as copied from `source`, its rows summed up as `digest`,
    /// and commits, all or nothing. Returns the rows copied per table.
    pub async fn finish(
        mut self,
        source: &str,
        digest: &str,
    ) -> Result<Vec<(&'static str, u64)>, StorageError> {
        self.close().await?;
        self.write_round().await?;
        if self.part == Part::Idempotency {
            self.tx
                .batch_execute(
                    "INSERT INTO hartslag_idempotency (app, key, at, fingerprint) \
                     SELECT DISTINCT ON (app, key) app, key, at, fingerprint \
                     FROM hartslag_copy_idempotency ORDER BY app, key, at DESC",
                )
                .await
                .map_err(|e| self.fail(e))?;
        }
        // Numbers handed out from now on follow every number the source gave.
        self.tx
            .batch_execute(
                "SELECT setval('hartslag_app_num', GREATEST( \
                   (SELECT last_value FROM hartslag_app_num), \
                   (SELECT COALESCE(max(num), 1) FROM hartslag_apps), \
                   (SELECT COALESCE(max(app), 1) FROM hartslag_totals))); \
                 SELECT setval('hartslag_monitor_num', GREATEST( \
                   (SELECT last_value FROM hartslag_monitor_num), \
                   (SELECT COALESCE(max(num), 1) FROM hartslag_monitors), \
                   (SELECT COALESCE(max(num), 1) FROM hartslag_monitor_retained), \
                   (SELECT COALESCE(max(num), 1) FROM hartslag_pings), \
                   (SELECT COALESCE(max(num), 1) FROM hartslag_timeline)))",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let copied: u64 = self.counts.iter().map(|(_, n)| n).sum();
        let now = Timestamp::now().as_microsecond();
        self.tx
            .execute(
                "INSERT INTO hartslag_migrations_from_sled \
                 (source, part, copied, finished_at, digest) VALUES ($1, $2, $3, $4, $5)",
                &[&source, &self.part.name(), &db_id(copied), &now, &digest],
            )
            .await
            .map_err(|e| self.fail(e))?;
        let counts = std::mem::take(&mut self.counts);
        self.tx
            .commit()
            .await
            .map_err(|e| fail_with(&self.url, e))?;
        Ok(counts)
    }
}

/// The table and columns a row of event data is copied into.
fn destination(row: &Row) -> Option<(&'static str, &'static str)> {
    Some(match row {
        Row::App { .. } => ("hartslag_apps", "key, num, record"),
        Row::Token(..) => ("hartslag_tokens", "hash, owner"),
        Row::Event { .. } => ("hartslag_events", "app, at, event, weight, user_id"),
        Row::Daily { user: None, .. } => ("hartslag_daily", "app, day, event, count, weight"),
        Row::Daily { user: Some(_), .. } => (
            "hartslag_user_daily",
            "app, user_id, day, event, count, weight",
        ),
        Row::Total { user: None, .. } => ("hartslag_totals", "app, event, count, weight"),
        Row::Total { user: Some(_), .. } => {
            ("hartslag_user_totals", "app, user_id, event, count, weight")
        }
        Row::Hourly { .. } => ("hartslag_hourly", "app, hour, event, count, weight"),
        Row::Latest { .. } => ("hartslag_latest", "app, at"),
        Row::Idempotency { .. } => ("hartslag_copy_idempotency", "app, key, at, fingerprint"),
        _ => return None,
    })
}

/// `row` as one CSV line, in [`destination`]'s columns.
fn csv_line(row: &Row, out: &mut Vec<u8>) -> Result<(), StorageError> {
    use std::io::Write;
    let written = match row {
        Row::App { key, record } => {
            let json = json("application", record.as_ref())?;
            write!(out, "{},{},{}", text(key), db_id(record.num), text(&json))
        }
        Row::Token(hash, owner) => {
            let owner = json("token owner", owner)?;
            write!(out, "\\x{},{}", hex::encode(hash.0), text(&owner))
        }
        Row::Event { app, at, value } => write!(
            out,
            "{},{},{},{},{}",
            db_id(*app),
            at.as_microsecond(),
            text(&value.event),
            value.weight,
            optional(value.user_id)
        ),
        Row::Daily {
            app,
            user,
            day,
            event,
            tally,
        } => match user {
            None => write!(out, "{},{day},{},{}", db_id(*app), text(event), sums(tally)),
            Some(u) => write!(
                out,
                "{},{u},{day},{},{}",
                db_id(*app),
                text(event),
                sums(tally)
            ),
        },
        Row::Total {
            app,
            user,
            event,
            tally,
        } => match user {
            None => write!(out, "{},{},{}", db_id(*app), text(event), sums(tally)),
            Some(u) => write!(out, "{},{u},{},{}", db_id(*app), text(event), sums(tally)),
        },
        Row::Hourly {
            app,
            hour,
            event,
            tally,
        } => write!(
            out,
            "{},{hour},{},{}",
            db_id(*app),
            text(event),
            sums(tally)
        ),
        Row::Latest { app, at } => write!(out, "{},{at}", db_id(*app)),
        Row::Idempotency {
            app,
            key,
            at,
            fingerprint,
        } => write!(
            out,
            "{},\\x{},{at},\\x{}",
            db_id(*app),
            hex::encode(key),
            hex::encode(fingerprint)
        ),
        _ => return Ok(()),
    };
    written.map_err(|e| StorageError::NotStored(e.to_string()))?;
    out.push(b'\n');
    Ok(())
}

/// Count and weight sum as two CSV fields.
fn sums(t: &Tally) -> String {
    format!("{},{}", t.count, t.weight)
}

/// A nullable number as a CSV field (empty, unquoted, is NULL).
fn optional(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Text as a quoted CSV field (quoted, so an empty string is not NULL).
fn text(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
