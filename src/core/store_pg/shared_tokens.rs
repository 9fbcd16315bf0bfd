//! Tokens every replica must know alike (migration 5): the plain ping tokens of monitors
//! created through the management API, and the admin tokens the running replicas hold.

use std::collections::HashMap;
use std::time::Duration;

use super::apps::PgApps;
use crate::core::storage::StorageError;
use crate::core::token::TokenHash;

/// The database's clock in microseconds since the Unix epoch: every replica's hold is
/// judged by this one clock, never by the replicas' own.
const NOW_MICROS: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

impl PgApps {
    pub(super) async fn store_ping_token(
        &self,
        key: String,
        token: Option<String>,
    ) -> Result<(), StorageError> {
        let client = self.db.client().await?;
        let done = match &token {
            Some(token) => {
                client
                    .execute(
                        "INSERT INTO hartslag_ping_tokens (key, token) VALUES ($1, $2) \
                         ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token",
                        &[&key, token],
                    )
                    .await
            }
            None => {
                client
                    .execute("DELETE FROM hartslag_ping_tokens WHERE key = $1", &[&key])
                    .await
            }
        };
        done.map(|_| ()).map_err(|e| self.db.fail(e))
    }

    pub(super) async fn read_ping_tokens(
        &self,
        keys: Vec<String>,
    ) -> Result<HashMap<String, String>, StorageError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT key, token FROM hartslag_ping_tokens WHERE key = ANY($1)",
                &[&keys],
            )
            .await
            .map_err(|e| self.db.fail(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub(super) async fn hold_admin(
        &self,
        holder: String,
        hash: TokenHash,
        ttl: Duration,
    ) -> Result<Vec<TokenHash>, StorageError> {
        let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let client = self.db.client().await?;
        let fail = |e| self.db.fail(e);
        client
            .execute(
                &format!("DELETE FROM hartslag_admin_tokens WHERE expires < {NOW_MICROS}"),
                &[],
            )
            .await
            .map_err(fail)?;
        client
            .execute(
                &format!(
                    "INSERT INTO hartslag_admin_tokens (holder, hash, expires) \
                     VALUES ($1, $2, {NOW_MICROS} + $3) \
                     ON CONFLICT (holder) DO UPDATE \
                     SET hash = EXCLUDED.hash, expires = EXCLUDED.expires"
                ),
                &[&holder, &&hash.0[..], &ttl],
            )
            .await
            .map_err(fail)?;
        let rows = client
            .query("SELECT DISTINCT hash FROM hartslag_admin_tokens", &[])
            .await
            .map_err(fail)?;
        let mut held = vec![hash];
        for row in rows {
            let stored: &[u8] = row.get(0);
            // A row this binary cannot read opens nothing.
            if let Ok(h) = <[u8; 32]>::try_from(stored)
                && h != hash.0
            {
                held.push(TokenHash(h));
            }
        }
        Ok(held)
    }
}
