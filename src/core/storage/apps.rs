//! Application records and the token index (hashes only): the registry's backing.

use std::collections::HashMap;
use std::time::Duration;

use super::StorageFuture;
use super::types::{AppRecord, TokenOwner};
use crate::core::token::TokenHash;

/// Where applications and issued tokens are remembered across restarts. One trait, because
/// an application's record and its token index entry change together. Every write resolves
/// once durable.
pub trait AppStore: Send + Sync + 'static {
    /// Every stored application, retained ones included.
    fn load_apps(&self) -> StorageFuture<'_, Vec<AppRecord>>;

    /// The stored application under `key` (`namespace/name`).
    fn get_app(&self, key: String) -> StorageFuture<'_, Option<AppRecord>>;

    /// A numeric id no application has had; never 0.
    fn next_app_num(&self) -> StorageFuture<'_, u64>;

    /// Writes an application record and indexes its token, dropping `old_token` if it was
    /// replaced.
    fn put_app(
        &self,
        key: String,
        rec: AppRecord,
        old_token: Option<TokenHash>,
    ) -> StorageFuture<'_, ()>;

    /// Marks an application retained since `now` and drops its token; `None` if unknown.
    fn retain_app(&self, key: String, now: jiff::Timestamp)
    -> StorageFuture<'_, Option<AppRecord>>;

    /// Removes an application record and its token; the removed record, if there was one.
    fn delete_app(&self, key: String) -> StorageFuture<'_, Option<AppRecord>>;

    /// Indexes a token hash for `owner`, dropping `old` if it was replaced.
    fn put_token(
        &self,
        hash: TokenHash,
        owner: TokenOwner,
        old: Option<TokenHash>,
    ) -> StorageFuture<'_, ()>;

    /// Drops a token from the index.
    fn remove_token(&self, hash: TokenHash) -> StorageFuture<'_, ()>;

    /// Every indexed token.
    fn load_tokens(&self) -> StorageFuture<'_, Vec<(TokenHash, TokenOwner)>>;

    /// Stores monitor `key`'s ping token in plain text where every replica sharing the
    /// store reads it (`None` removes it), so each shows the token through the API. A
    /// store one process serves keeps none: the data directory's token files hold them.
    fn put_ping_token(&self, key: String, token: Option<String>) -> StorageFuture<'_, ()> {
        let _ = (key, token);
        Box::pin(async { Ok(()) })
    }

    /// The stored ping tokens of the monitors in `keys`, by key (those without one are
    /// left out).
    fn ping_tokens(&self, keys: Vec<String>) -> StorageFuture<'_, HashMap<String, String>> {
        let _ = keys;
        Box::pin(async { Ok(HashMap::new()) })
    }

    /// Records that replica `holder` holds admin token `hash` for `ttl` more (by the
    /// store's clock), forgets holds that ran out, and answers every admin token a
    /// replica holds now, `hash` among them. A store one process serves answers `hash`
    /// alone.
    fn hold_admin_token(
        &self,
        holder: String,
        hash: TokenHash,
        ttl: Duration,
    ) -> StorageFuture<'_, Vec<TokenHash>> {
        let _ = (holder, ttl);
        Box::pin(async move { Ok(vec![hash]) })
    }
}

impl std::fmt::Debug for dyn AppStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppStore")
    }
}
