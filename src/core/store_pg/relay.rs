//! The ping relay on PostgreSQL (`hartslag_ping_relay`, migration 2): a replica that does
//! not lead inserts the ping and notifies channel `hartslag_relay` in one transaction (the
//! notification is delivered at commit, never for a ping rolled back); the leader listens
//! on a connection of its own and reads the table in id order. Rows are deleted by the
//! round that applied them, in its own transaction.

use jiff::Timestamp;

use super::{Db, db_id, from_db_id, micros};
use crate::core::monitor::engine::PingInput;
use crate::core::storage::{PingRelay, RelayedPing, Signal, StorageError, StorageFuture};

/// The channel a post notifies.
pub(super) const CHANNEL: &str = "hartslag_relay";

/// The relay in PostgreSQL.
pub(super) struct PgRelay {
    pub(super) db: Db,
    pub(super) signal: Signal,
}

fn corrupt(id: i64, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        what: format!("relayed ping {id}"),
        detail: e.to_string(),
    }
}

impl PgRelay {
    async fn insert(
        &self,
        key: String,
        at: Timestamp,
        input: PingInput,
    ) -> Result<u64, StorageError> {
        let ping = serde_json::to_string(&input).map_err(|e| corrupt(0, e))?;
        let mut client = self.db.client().await?;
        let fail = |e| self.db.fail(e);
        let tx = client.transaction().await.map_err(fail)?;
        let row = tx
            .query_one(
                "INSERT INTO hartslag_ping_relay (monitor, at, ping) VALUES ($1, $2, $3::text::jsonb) \
                 RETURNING id",
                &[&key, &micros(at), &ping],
            )
            .await
            .map_err(fail)?;
        tx.batch_execute(&format!("NOTIFY {CHANNEL}"))
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(from_db_id(row.get(0)))
    }

    async fn after(&self, after: u64, limit: usize) -> Result<Vec<RelayedPing>, StorageError> {
        let client = self.db.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT id, monitor, at, ping::text FROM hartslag_ping_relay WHERE id > $1 \
                 ORDER BY id LIMIT $2",
                &[&db_id(after), &limit],
            )
            .await
            .map_err(|e| self.db.fail(e))?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let at = Timestamp::from_microsecond(r.get(2)).map_err(|e| corrupt(id, e))?;
                let input = serde_json::from_str(r.get(3)).map_err(|e| corrupt(id, e))?;
                Ok(RelayedPing {
                    id: from_db_id(id),
                    key: r.get(1),
                    at,
                    input,
                })
            })
            .collect()
    }
}

impl PingRelay for PgRelay {
    fn post(&self, key: String, at: Timestamp, input: PingInput) -> StorageFuture<'_, u64> {
        Box::pin(self.insert(key, at, input))
    }

    fn take(&self, after: u64, limit: usize) -> StorageFuture<'_, Vec<RelayedPing>> {
        Box::pin(self.after(after, limit))
    }

    fn signal(&self) -> Signal {
        self.signal.clone()
    }
}
