//! Persistent records of applications and the token index (hashes only).

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::core::spec::ApplicationSpec;
use crate::core::token::{TokenHash, TokenKind};

/// What the store remembers about an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Compact numeric id used in every event and rollup key.
    pub num: u64,
    /// Namespace (Kubernetes) or `default` (standalone).
    pub namespace: String,
    /// Resource name (`metadata.name`).
    pub name: String,
    /// The spec last applied.
    pub spec: ApplicationSpec,
    /// Hash of its API token.
    pub token: TokenHash,
    /// Set while the application is deleted with its data retained: its token is revoked,
    /// its data stays under its name for a re-created one, and retention still applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_since: Option<jiff::Timestamp>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenOwner {
    /// The kind of credential.
    pub kind: TokenKind,
    /// The owner's key, `namespace/name`.
    pub key: String,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt {
        what: "record".into(),
        detail: e.to_string(),
    })
}

impl Store {
    /// Every stored application.
    pub fn load_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.apps
            .iter()
            .map(|item| {
                let (k, v) = item?;
                decode(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// The stored application under `key`.
    pub fn get_app(&self, key: &str) -> Result<Option<AppRecord>, StoreError> {
        self.apps.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// A fresh numeric id for a new application.
    pub fn next_app_num(&self) -> Result<u64, StoreError> {
        // sled ids start at 0; keep 0 free so it can never collide with a zeroed key.
        Ok(self.db.generate_id()? + 1)
    }

    /// Writes an application record and its token index entry, dropping a replaced token.
    pub fn put_app(
        &self,
        key: &str,
        rec: &AppRecord,
        old_token: Option<TokenHash>,
    ) -> Result<(), StoreError> {
        let owner = TokenOwner {
            kind: TokenKind::Application,
            key: key.to_string(),
        };
        self.put_token(rec.token, &owner, old_token)?;
        self.apps.insert(key, encode(rec)?)?;
        Ok(())
    }

    /// Keeps an application's record as retained and drops its token from the index.
    pub fn retain_app(
        &self,
        key: &str,
        now: jiff::Timestamp,
    ) -> Result<Option<AppRecord>, StoreError> {
        let Some(mut rec) = self.get_app(key)? else {
            return Ok(None);
        };
        self.tokens.remove(rec.token.0)?;
        rec.retained_since.get_or_insert(now);
        self.apps.insert(key, encode(&rec)?)?;
        Ok(Some(rec))
    }

    /// Removes an application record and its token.
    pub fn delete_app(&self, key: &str) -> Result<Option<AppRecord>, StoreError> {
        let Some(rec) = self.get_app(key)? else {
            return Ok(None);
        };
        self.tokens.remove(rec.token.0)?;
        self.apps.remove(key)?;
        Ok(Some(rec))
    }

    /// Indexes a token hash for `owner`, removing `old` if it was replaced.
    pub fn put_token(
        &self,
        hash: TokenHash,
        owner: &TokenOwner,
        old: Option<TokenHash>,
    ) -> Result<(), StoreError> {
        if let Some(old) = old
            && old != hash
        {
            self.tokens.remove(old.0)?;
        }
        self.tokens.insert(hash.0, encode(owner)?)?;
        Ok(())
    }

    /// Drops a token from the index.
    pub fn remove_token(&self, hash: TokenHash) -> Result<(), StoreError> {
        self.tokens.remove(hash.0)?;
        Ok(())
    }

    /// Every indexed token.
    pub fn load_tokens(&self) -> Result<Vec<(TokenHash, TokenOwner)>, StoreError> {
        self.tokens
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let mut h = [0u8; 32];
                if k.len() != 32 {
                    return Err(StoreError::Corrupt {
                        what: "token index".into(),
                        detail: "bad key length".into(),
                    });
                }
                h.copy_from_slice(&k);
                Ok((TokenHash(h), decode("token owner", &v)?))
            })
            .collect()
    }
}
