//! Application records and the token index (hashes only) on PostgreSQL. A record is
//! stored as JSON beside its key and number; the number is the column's, so two replicas
//! creating the same application at once both end up with the one number stored first.

use jiff::Timestamp;

use super::{Db, db_id, from_db_id};
use crate::core::storage::{AppRecord, AppStore, StorageError, StorageFuture, TokenOwner};
use crate::core::token::TokenHash;

/// The channel a change of an application record notifies, in the change's transaction:
/// replicas that do not lead refresh their registry when they hear it.
pub(super) const CHANNEL: &str = "hartslag_apps";

/// Applications and tokens in PostgreSQL.
pub(super) struct PgApps {
    pub(super) db: Db,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        what: what.into(),
        detail: e.to_string(),
    }
}

/// A stored record: its JSON, with the number of its row.
fn record(num: i64, json: &str) -> Result<AppRecord, StorageError> {
    let mut rec: AppRecord = serde_json::from_str(json).map_err(|e| corrupt("application", e))?;
    rec.num = from_db_id(num);
    Ok(rec)
}

/// A record as the JSON it is stored as.
pub(super) fn json<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StorageError> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

/// Tells listening replicas, once `tx` commits, that an application changed.
async fn notify(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(&format!("NOTIFY {CHANNEL}")).await
}

impl PgApps {
    async fn one_app(&self, key: String) -> Result<Option<AppRecord>, StorageError> {
        let client = self.db.client().await?;
        let row = client
            .query_opt(
                "SELECT num, record FROM hartslag_apps WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(|e| self.db.fail(e))?;
        row.map(|r| record(r.get(0), r.get(1))).transpose()
    }

    async fn all_apps(&self) -> Result<Vec<AppRecord>, StorageError> {
        let client = self.db.client().await?;
        let rows = client
            .query("SELECT num, record FROM hartslag_apps ORDER BY num", &[])
            .await
            .map_err(|e| self.db.fail(e))?;
        rows.iter().map(|r| record(r.get(0), r.get(1))).collect()
    }

    async fn store_app(
        &self,
        key: String,
        rec: AppRecord,
        old_token: Option<TokenHash>,
    ) -> Result<(), StorageError> {
        let owner = TokenOwner {
            kind: crate::core::token::TokenKind::Application,
            key: key.clone(),
        };
        let (rec_json, owner_json) = (json("application", &rec)?, json("token owner", &owner)?);
        let mut client = self.db.client().await?;
        let fail = |e| self.db.fail(e);
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute(
            "INSERT INTO hartslag_apps (key, num, record) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
            &[&key, &db_id(rec.num), &rec_json],
        )
        .await
        .map_err(fail)?;
        if let Some(old) = old_token.filter(|o| *o != rec.token) {
            tx.execute(
                "DELETE FROM hartslag_tokens WHERE hash = $1",
                &[&&old.0[..]],
            )
            .await
            .map_err(fail)?;
        }
        upsert_token(&tx, &rec.token, &owner_json)
            .await
            .map_err(fail)?;
        notify(&tx).await.map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    /// Marks retained (`Some(now)`) or deletes (`None`) the record under `key`, and drops
    /// its token, in one transaction.
    async fn end_app(
        &self,
        key: String,
        retain_since: Option<Timestamp>,
    ) -> Result<Option<AppRecord>, StorageError> {
        let mut client = self.db.client().await?;
        let fail = |e| self.db.fail(e);
        let tx = client.transaction().await.map_err(fail)?;
        let row = tx
            .query_opt(
                "SELECT num, record FROM hartslag_apps WHERE key = $1 FOR UPDATE",
                &[&key],
            )
            .await
            .map_err(fail)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut rec = record(row.get(0), row.get(1))?;
        match retain_since {
            Some(now) => {
                rec.retained_since = Some(now);
                tx.execute(
                    "UPDATE hartslag_apps SET record = $2 WHERE key = $1",
                    &[&key, &json("application", &rec)?],
                )
                .await
                .map_err(fail)?;
            }
            None => {
                tx.execute("DELETE FROM hartslag_apps WHERE key = $1", &[&key])
                    .await
                    .map_err(fail)?;
            }
        }
        tx.execute(
            "DELETE FROM hartslag_tokens WHERE hash = $1",
            &[&&rec.token.0[..]],
        )
        .await
        .map_err(fail)?;
        notify(&tx).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(Some(rec))
    }

    async fn next_num(&self) -> Result<u64, StorageError> {
        let client = self.db.client().await?;
        let row = client
            .query_one("SELECT nextval('hartslag_app_num')", &[])
            .await
            .map_err(|e| self.db.fail(e))?;
        Ok(from_db_id(row.get(0)))
    }

    async fn store_token(
        &self,
        hash: TokenHash,
        owner: TokenOwner,
        old: Option<TokenHash>,
    ) -> Result<(), StorageError> {
        let owner = json("token owner", &owner)?;
        let mut client = self.db.client().await?;
        let fail = |e| self.db.fail(e);
        let tx = client.transaction().await.map_err(fail)?;
        if let Some(old) = old.filter(|o| *o != hash) {
            tx.execute(
                "DELETE FROM hartslag_tokens WHERE hash = $1",
                &[&&old.0[..]],
            )
            .await
            .map_err(fail)?;
        }
        upsert_token(&tx, &hash, &owner).await.map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn drop_token(&self, hash: TokenHash) -> Result<(), StorageError> {
        let client = self.db.client().await?;
        client
            .execute(
                "DELETE FROM hartslag_tokens WHERE hash = $1",
                &[&&hash.0[..]],
            )
            .await
            .map_err(|e| self.db.fail(e))?;
        Ok(())
    }

    async fn all_tokens(&self) -> Result<Vec<(TokenHash, TokenOwner)>, StorageError> {
        let client = self.db.client().await?;
        let rows = client
            .query("SELECT hash, owner FROM hartslag_tokens", &[])
            .await
            .map_err(|e| self.db.fail(e))?;
        rows.iter()
            .map(|r| {
                let hash: &[u8] = r.get(0);
                let hash = <[u8; 32]>::try_from(hash)
                    .map_err(|_| corrupt("token hash", hex::encode(hash)))?;
                let owner: &str = r.get(1);
                let owner = serde_json::from_str(owner).map_err(|e| corrupt("token owner", e))?;
                Ok((TokenHash(hash), owner))
            })
            .collect()
    }
}

async fn upsert_token(
    tx: &deadpool_postgres::Transaction<'_>,
    hash: &TokenHash,
    owner: &str,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO hartslag_tokens (hash, owner) VALUES ($1, $2) \
         ON CONFLICT (hash) DO UPDATE SET owner = EXCLUDED.owner",
        &[&&hash.0[..], &owner],
    )
    .await
}

impl AppStore for PgApps {
    fn load_apps(&self) -> StorageFuture<'_, Vec<AppRecord>> {
        Box::pin(self.all_apps())
    }

    fn get_app(&self, key: String) -> StorageFuture<'_, Option<AppRecord>> {
        Box::pin(self.one_app(key))
    }

    fn next_app_num(&self) -> StorageFuture<'_, u64> {
        Box::pin(self.next_num())
    }

    fn put_app(
        &self,
        key: String,
        rec: AppRecord,
        old_token: Option<TokenHash>,
    ) -> StorageFuture<'_, ()> {
        Box::pin(self.store_app(key, rec, old_token))
    }

    fn retain_app(&self, key: String, now: Timestamp) -> StorageFuture<'_, Option<AppRecord>> {
        Box::pin(self.end_app(key, Some(now)))
    }

    fn delete_app(&self, key: String) -> StorageFuture<'_, Option<AppRecord>> {
        Box::pin(self.end_app(key, None))
    }

    fn put_token(
        &self,
        hash: TokenHash,
        owner: TokenOwner,
        old: Option<TokenHash>,
    ) -> StorageFuture<'_, ()> {
        Box::pin(self.store_token(hash, owner, old))
    }

    fn remove_token(&self, hash: TokenHash) -> StorageFuture<'_, ()> {
        Box::pin(self.drop_token(hash))
    }

    fn load_tokens(&self) -> StorageFuture<'_, Vec<(TokenHash, TokenOwner)>> {
        Box::pin(self.all_tokens())
    }

    fn put_ping_token(&self, key: String, token: Option<String>) -> StorageFuture<'_, ()> {
        Box::pin(self.store_ping_token(key, token))
    }

    fn ping_tokens(
        &self,
        keys: Vec<String>,
    ) -> StorageFuture<'_, std::collections::HashMap<String, String>> {
        Box::pin(self.read_ping_tokens(keys))
    }

    fn hold_admin_token(
        &self,
        holder: String,
        hash: TokenHash,
        ttl: std::time::Duration,
    ) -> StorageFuture<'_, Vec<TokenHash>> {
        Box::pin(self.hold_admin(holder, hash, ttl))
    }
}
