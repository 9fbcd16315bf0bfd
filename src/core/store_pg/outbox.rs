//! The alert outbox on PostgreSQL (migration 3), behind [`OutboxStore`]: pending
//! deliveries (queued by the engine's rounds, [`super::rounds`]), finished ones and each
//! target's history.
//!
//! Every write is a fenced transaction ([`super::backend::fenced`]): a deposed leader can
//! neither claim nor finish a delivery. A claim is stored as the generation of the leader
//! whose attempt holds it (`claimed_by`) and when it runs out (`claim_expires`,
//! [`CLAIM_FOR`] after the claim by the database's clock): no other attempt claims the
//! delivery before then, a new leader's after a failover included, and the attempt itself
//! gives up unsent once the claim may have run out by its own clock
//! ([`crate::core::storage::ATTEMPT_WITHIN`]). So a leader that stalled between its claim
//! and its send cannot send what its successor sends; the successor sends it once the
//! claim ran out (the alert may still go out twice when the stall fell inside the send
//! itself, never not at all).

use std::sync::atomic::Ordering;

use jiff::Timestamp;

use super::backend::{Backend, Ctx, TxError, decode, encode, fenced};
use crate::core::alert::outbox::{Delivery, DoneRecord, delivery_key, is_repetition};
use crate::core::alert::policy::TargetHistory;
use crate::core::storage::{CLAIM_FOR, Finished, OutboxStore, StorageError, StorageFuture};

/// The database's clock in microseconds since the Unix epoch: a claim runs out by this
/// one clock, whichever replica made it and whichever asks.
const NOW_MICROS: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// Finished deliveries kept for inspection.
const DONE_KEEP: i64 = 10_000;

/// The alert outbox in PostgreSQL.
pub struct PgOutbox {
    backend: Backend,
}

impl PgOutbox {
    pub(super) fn new(backend: Backend) -> Self {
        Self { backend }
    }

    /// Counts the pending notices for the gauge (at start; writes keep it up to date).
    pub(super) async fn count_notices(backend: &Ctx) -> Result<(), StorageError> {
        let client = backend.db.client().await?;
        let n = pending_notices(&**client)
            .await
            .map_err(|e| backend.db.fail(e))?;
        backend
            .notices
            .store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Runs `write` in a fenced transaction and commits it; then counts the notices when
    /// `recount`.
    fn write<T, W>(&self, recount: bool, write: W) -> StorageFuture<'static, T>
    where
        T: Send + 'static,
        W: for<'a> FnOnce(
                &'a deadpool_postgres::Transaction<'a>,
                i64,
            ) -> futures::future::BoxFuture<'a, Result<T, TxError>>
            + Send
            + 'static,
    {
        let backend = self.backend.ctx.clone();
        self.backend.run(async move {
            let mut client = backend.db.client().await?;
            let done = async {
                let tx = fenced(&mut client, &backend.fence).await?;
                let generation = backend.fence.generation().map_or(0, super::db_id);
                let out = write(&tx, generation).await?;
                let notices = match recount {
                    true => Some(pending_notices(&*tx).await?),
                    false => None,
                };
                tx.commit().await?;
                Ok::<_, TxError>((out, notices))
            };
            match done.await {
                Ok((out, notices)) => {
                    if let Some(n) = notices {
                        backend
                            .notices
                            .store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                    }
                    Ok(out)
                }
                Err(e) => Err(backend.fail(e)),
            }
        })
    }
}

/// Queues `d` unless one is pending under its key.
/// Pending deliveries that are notices (not scheduled repetitions), for the gauge.
pub(super) async fn pending_notices(
    client: &impl tokio_postgres::GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT count(*) FROM hartslag_outbox WHERE notice", &[])
        .await?;
    Ok(row.get(0))
}

async fn queue_one(tx: &deadpool_postgres::Transaction<'_>, d: &Delivery) -> Result<(), TxError> {
    let key = delivery_key(&d.alert, &d.target);
    let notice = !is_repetition(&key);
    let record = encode(d)?;
    tx.execute(
        "INSERT INTO hartslag_outbox (key, delivery, notice) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
        &[&key, &record, &notice],
    )
    .await?;
    Ok(())
}

/// Records a finished delivery.
pub(super) async fn put_done(
    tx: &deadpool_postgres::Transaction<'_>,
    done: &DoneRecord,
) -> Result<(), TxError> {
    let record = encode(done)?;
    tx.execute(
        "INSERT INTO hartslag_outbox_done (record) VALUES ($1)",
        &[&record],
    )
    .await?;
    Ok(())
}

/// Stores a target's history.
pub(super) async fn put_history(
    tx: &deadpool_postgres::Transaction<'_>,
    (identity, history): &(String, TargetHistory),
) -> Result<(), TxError> {
    let record = encode(history)?;
    tx.execute(
        "INSERT INTO hartslag_outbox_targets (identity, history) VALUES ($1, $2) \
         ON CONFLICT (identity) DO UPDATE SET history = excluded.history",
        &[identity, &record],
    )
    .await?;
    Ok(())
}

impl OutboxStore for PgOutbox {
    fn pending(&self) -> StorageFuture<'_, Vec<(Vec<u8>, Delivery)>> {
        let backend = self.backend.ctx.clone();
        self.backend.run(async move {
            let client = backend.db.client().await?;
            let rows = client
                .query("SELECT key, delivery FROM hartslag_outbox", &[])
                .await
                .map_err(|e| backend.db.fail(e))?;
            let mut notices = 0;
            let pending: Vec<(Vec<u8>, Delivery)> = rows
                .iter()
                .filter_map(|r| {
                    let key: Vec<u8> = r.get(0);
                    match decode::<Delivery>("pending delivery", r.get(1)) {
                        Ok(d) => {
                            notices += u64::from(!is_repetition(&key));
                            Some((key, d))
                        }
                        Err(e) => {
                            // Left where it is: only the leader's fenced writes delete.
                            tracing::error!(error = %e, "skipping an unreadable outbox record");
                            None
                        }
                    }
                })
                .collect();
            backend.notices.store(notices, Ordering::Relaxed);
            Ok(pending)
        })
    }

    fn pending_notices(&self) -> Result<u64, StorageError> {
        Ok(self.backend.ctx.notices.load(Ordering::Relaxed))
    }

    fn target_histories(&self) -> StorageFuture<'_, Vec<(String, TargetHistory)>> {
        let backend = self.backend.ctx.clone();
        self.backend.run(async move {
            let client = backend.db.client().await?;
            let rows = client
                .query("SELECT identity, history FROM hartslag_outbox_targets", &[])
                .await
                .map_err(|e| backend.db.fail(e))?;
            Ok(rows
                .iter()
                .map(|r| {
                    // An unreadable history is as good as none: the target starts afresh.
                    let history = serde_json::from_slice(r.get(1)).unwrap_or_default();
                    (r.get(0), history)
                })
                .collect())
        })
    }

    fn claim(&self, key: Vec<u8>) -> StorageFuture<'_, bool> {
        let ttl = i64::try_from(CLAIM_FOR.as_micros()).unwrap_or(i64::MAX);
        self.write(false, move |tx, generation| {
            Box::pin(async move {
                let claimed = tx
                    .execute(
                        &format!(
                            "UPDATE hartslag_outbox \
                             SET claimed_by = $2, claim_expires = {NOW_MICROS} + $3 \
                             WHERE key = $1 AND (claimed_by IS NULL \
                               OR coalesce(claim_expires, 0) <= {NOW_MICROS})"
                        ),
                        &[&key, &generation, &ttl],
                    )
                    .await?;
                Ok(claimed == 1)
            })
        })
    }

    fn finish(
        &self,
        done: Vec<Finished>,
        target: (String, TargetHistory),
        next: Option<Delivery>,
    ) -> StorageFuture<'_, ()> {
        self.write(true, move |tx, _| {
            Box::pin(async move {
                for f in &done {
                    tx.execute("DELETE FROM hartslag_outbox WHERE key = $1", &[&f.key])
                        .await?;
                    let record = DoneRecord {
                        key: String::from_utf8_lossy(&f.key).into_owned(),
                        outcome: f.outcome.clone(),
                        detail: f.detail.clone(),
                        attempts: f.attempts,
                        at: Timestamp::now(),
                    };
                    put_done(tx, &record).await?;
                }
                tx.execute(
                    "DELETE FROM hartslag_outbox_done WHERE seq <= \
                     (SELECT max(seq) FROM hartslag_outbox_done) - $1",
                    &[&DONE_KEEP],
                )
                .await?;
                put_history(tx, &target).await?;
                if let Some(next) = &next {
                    queue_one(tx, next).await?;
                }
                Ok(())
            })
        })
    }

    fn retry(&self, key: Vec<u8>, delivery: Delivery) -> StorageFuture<'_, ()> {
        self.write(false, move |tx, _| {
            Box::pin(async move {
                let notice = !is_repetition(&key);
                let record = encode(&delivery)?;
                tx.execute(
                    "INSERT INTO hartslag_outbox (key, delivery, notice) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO UPDATE SET delivery = excluded.delivery, \
                     claimed_by = NULL, claim_expires = NULL",
                    &[&key, &record, &notice],
                )
                .await?;
                Ok(())
            })
        })
    }

    fn queue(
        &self,
        delivery: Delivery,
        target: Option<(String, TargetHistory)>,
    ) -> StorageFuture<'_, ()> {
        self.write(true, move |tx, _| {
            Box::pin(async move {
                queue_one(tx, &delivery).await?;
                if let Some(target) = &target {
                    put_history(tx, target).await?;
                }
                Ok(())
            })
        })
    }
}
