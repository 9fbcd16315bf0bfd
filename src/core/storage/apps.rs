//! Application records and the token index (hashes only): the registry's backing.

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
}

impl std::fmt::Debug for dyn AppStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppStore")
    }
}
