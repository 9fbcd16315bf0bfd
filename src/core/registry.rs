//! The in-memory view of defined applications and issued tokens, backed by the store.
//!
//! Both front ends (Kubernetes controllers, standalone manifests) declare applications
//! here; request handlers authenticate and resolve against memory, never against the
//! store, so a bearer check costs a hash and a map lookup.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use jiff::tz::TimeZone;

use crate::core::ingest::counts::EventCounts;
use crate::core::limits::{AppLimits, LimitDefaults, RateLimiter, ReadSlots};
use crate::core::spec::{ApplicationSpec, SpecError};
use crate::core::storage::{AppRecord, AppStore, EventStore, StorageError, TokenOwner};
use crate::core::token::{TokenHash, TokenKind};

/// Errors when declaring or resolving definitions.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The spec breaks a rule.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Persisting failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The token is already issued to something else.
    #[error("this token is already used by another resource")]
    TokenInUse,
}

/// A defined application, resolved for request handling.
#[derive(Debug, Clone)]
pub struct AppInfo {
    /// `namespace/name`.
    pub key: String,
    /// Numeric id in storage keys.
    pub num: u64,
    /// Namespace, or `default` in standalone mode.
    pub namespace: String,
    /// Resource name (`metadata.name`).
    pub name: String,
    /// The applied spec.
    pub spec: ApplicationSpec,
    /// Its resolved time zone.
    pub tz: TimeZone,
    /// Its limits, `spec.limits` over the server's defaults.
    pub limits: AppLimits,
    /// Its ingest rate limit, shared by every request with its token; `None` is no limit.
    pub ingest: Option<Arc<RateLimiter>>,
    /// Events stored since start by name, for `/metrics`; handed over like the limiter.
    pub counts: Arc<EventCounts>,
    /// Its stats and export reads running now, held against `limits.concurrent_reads`;
    /// handed over like the limiter, so an edit does not forget the reads running.
    pub reads: Arc<ReadSlots>,
}

/// The owner of every admin token.
fn admin_owner() -> TokenOwner {
    TokenOwner {
        kind: TokenKind::Admin,
        key: "admin".into(),
    }
}

/// The key under which a namespaced object is known: `namespace/name`.
pub fn object_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[derive(Default)]
struct Inner {
    apps: HashMap<String, Arc<AppInfo>>,
    tokens: HashMap<[u8; 32], TokenOwner>,
    /// Admin token hashes found in the store (earlier releases indexed them there):
    /// never honoured, removed from the store when this process installs its own.
    stored_admin: Vec<TokenHash>,
    /// The admin token this process was given; the other admin tokens in `tokens` are
    /// those other replicas hold ([`Registry::hold_admin_token`]).
    own_admin: Option<TokenHash>,
    /// Tokens in `tokens` that are not stored yet ([`Registry::hold_token`]).
    held: HashSet<[u8; 32]>,
}

/// A token that works in this process ahead of its store write ([`Registry::hold_token`]).
/// Dropping it takes the token back, unless it was stored meanwhile (by
/// [`Registry::put_token`] or [`Registry::upsert_application`]): whoever holds one drops it
/// once it has stored the token, or given up.
#[must_use = "the token stops working when this is dropped, unless it was stored"]
pub struct HeldToken {
    registry: Registry,
    hash: TokenHash,
}

impl std::fmt::Debug for HeldToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldToken")
    }
}

impl Drop for HeldToken {
    fn drop(&mut self) {
        let mut inner = self.registry.write();
        if inner.held.remove(&self.hash.0) {
            inner.tokens.remove(&self.hash.0);
        }
    }
}

/// Shared registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn AppStore>,
    /// Where a purged application's events are deleted.
    events: Arc<dyn EventStore>,
    inner: Arc<RwLock<Inner>>,
    defaults: LimitDefaults,
    /// Raised when this process's admin token changes, so its hold is renewed at once.
    admin_changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The resolved view of `rec`; `previous` (the same application before a spec change)
/// hands over its rate limiter, so an edit does not refill a drained bucket, its event
/// counts, so an edit does not reset counters, and its running reads.
fn info_from(rec: &AppRecord, defaults: &LimitDefaults, previous: Option<&AppInfo>) -> AppInfo {
    let tz = TimeZone::get(rec.spec.time_zone_name()).unwrap_or(TimeZone::UTC);
    let limits = AppLimits::resolve(&rec.spec, defaults);
    let ingest = limits.ingest.map(|(rate, burst)| {
        previous
            .and_then(|p| p.ingest.clone())
            .filter(|l| l.is_for(rate, burst))
            .unwrap_or_else(|| Arc::new(RateLimiter::new(rate, burst)))
    });
    AppInfo {
        key: object_key(&rec.namespace, &rec.name),
        num: rec.num,
        namespace: rec.namespace.clone(),
        name: rec.name.clone(),
        spec: rec.spec.clone(),
        tz,
        limits,
        ingest,
        counts: previous.map(|p| p.counts.clone()).unwrap_or_default(),
        reads: previous.map(|p| p.reads.clone()).unwrap_or_default(),
    }
}

impl Registry {
    /// Loads every stored application and token; applications that set no limits of
    /// their own get `defaults`.
    pub async fn load(
        store: Arc<dyn AppStore>,
        events: Arc<dyn EventStore>,
        defaults: LimitDefaults,
    ) -> Result<Self, RegistryError> {
        let mut inner = Inner::default();
        for rec in store.load_apps().await? {
            if rec.retained_since.is_some() {
                continue;
            }
            let info = info_from(&rec, &defaults, None);
            inner.apps.insert(info.key.clone(), Arc::new(info));
        }
        for (hash, owner) in store.load_tokens().await? {
            if owner.kind == TokenKind::Admin {
                inner.stored_admin.push(hash);
                continue;
            }
            inner.tokens.insert(hash.0, owner);
        }
        Ok(Self {
            store,
            events,
            inner: Arc::new(RwLock::new(inner)),
            defaults,
            admin_changed: Arc::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or updates an application with the hash of its token, durably.
    pub async fn upsert_application(
        &self,
        namespace: &str,
        name: &str,
        spec: ApplicationSpec,
        token: TokenHash,
    ) -> Result<Arc<AppInfo>, RegistryError> {
        spec.validate()?;
        let key = object_key(namespace, name);
        if let Some(owner) = self.read().tokens.get(&token.0)
            && (owner.kind != TokenKind::Application || owner.key != key)
        {
            return Err(RegistryError::TokenInUse);
        }
        let existing = self.store.get_app(key.clone()).await?;
        let num = match &existing {
            Some(r) => r.num,
            None => self.store.next_app_num().await?,
        };
        let rec = AppRecord {
            num,
            namespace: namespace.into(),
            name: name.into(),
            spec,
            token,
            retained_since: None,
        };
        // A retained record's token was revoked with it; a re-created application brings
        // its own.
        let old_token = existing
            .as_ref()
            .filter(|r| r.retained_since.is_none())
            .map(|r| r.token);
        if existing.as_ref() != Some(&rec) {
            self.store
                .put_app(key.clone(), rec.clone(), old_token)
                .await?;
        }
        // A store shared by several replicas keeps the number of whichever created the
        // application first: every replica must count its events under that one.
        let rec = match existing {
            None => self.store.get_app(key.clone()).await?.unwrap_or(rec),
            Some(_) => rec,
        };
        let previous = self.application(&key);
        let info = Arc::new(info_from(&rec, &self.defaults, previous.as_deref()));
        let mut inner = self.write();
        if let Some(old) = old_token
            && old != token
        {
            inner.tokens.remove(&old.0);
        }
        inner.tokens.insert(
            token.0,
            TokenOwner {
                kind: TokenKind::Application,
                key: key.clone(),
            },
        );
        inner.held.remove(&token.0);
        inner.apps.insert(key, info.clone());
        Ok(info)
    }

    /// Removes an application: its token stops working at once. With `purge` its events go
    /// too; without, its record stays (retained) so that an application re-created under
    /// the same name picks its data up, and retention keeps applying to that data.
    pub async fn remove_application(
        &self,
        namespace: &str,
        name: &str,
        purge: bool,
    ) -> Result<(), RegistryError> {
        let key = object_key(namespace, name);
        {
            let mut inner = self.write();
            inner.apps.remove(&key);
            inner
                .tokens
                .retain(|_, o| !(o.kind == TokenKind::Application && o.key == key));
            let Inner { tokens, held, .. } = &mut *inner;
            held.retain(|h| tokens.contains_key(h));
        }
        if purge {
            if let Some(rec) = self.store.delete_app(key).await? {
                self.events.purge_application(rec.num).await?;
            }
        } else {
            self.store.retain_app(key, jiff::Timestamp::now()).await?;
        }
        Ok(())
    }

    /// Every application whose raw events retention applies to: the defined ones and the
    /// retained ones, as (key, numeric id, retention).
    pub async fn retention_targets(
        &self,
    ) -> Result<Vec<(String, u64, crate::core::duration::SpecDuration)>, RegistryError> {
        Ok(self
            .store
            .load_apps()
            .await?
            .into_iter()
            .map(|rec| {
                let key = object_key(&rec.namespace, &rec.name);
                (key, rec.num, rec.spec.retention())
            })
            .collect())
    }

    /// Indexes a heartbeat's token.
    pub async fn put_token(
        &self,
        hash: TokenHash,
        owner: TokenOwner,
        old: Option<TokenHash>,
    ) -> Result<(), RegistryError> {
        {
            let inner = self.read();
            if let Some(existing) = inner.tokens.get(&hash.0) {
                if existing != &owner {
                    return Err(RegistryError::TokenInUse);
                }
                // Indexed for this owner already, and the index mirrors the store: nothing
                // to write. A leader taking office re-declares thousands of unchanged
                // manifests before its deadlines run; a write each would hold them up for
                // seconds.
                if old.is_none_or(|old| old == hash) && !inner.held.contains(&hash.0) {
                    return Ok(());
                }
            }
        }
        self.store.put_token(hash, owner.clone(), old).await?;
        let mut inner = self.write();
        if let Some(old) = old
            && old != hash
        {
            inner.tokens.remove(&old.0);
        }
        inner.tokens.insert(hash.0, owner);
        inner.held.remove(&hash.0);
        Ok(())
    }

    /// Makes `hash` this process's admin token: the one it held before (an edited token
    /// file, a rotated Secret) stops working here at once.
    ///
    /// The admin token is never kept in the token index: replicas sharing a database may
    /// be given different admin tokens (during a rolling rotation of the admin Secret),
    /// and none may revoke another's. Each holds its own and accepts those the others hold
    /// now ([`Registry::hold_admin_token`]); an admin token stops working once no running
    /// replica holds it.
    pub async fn set_admin_token(&self, hash: TokenHash) -> Result<(), RegistryError> {
        let stored = {
            let mut inner = self.write();
            if let Some(existing) = inner.tokens.get(&hash.0)
                && existing.kind != TokenKind::Admin
            {
                return Err(RegistryError::TokenInUse);
            }
            if let Some(previous) = inner.own_admin.replace(hash) {
                inner.tokens.remove(&previous.0);
            }
            inner.tokens.insert(hash.0, admin_owner());
            std::mem::take(&mut inner.stored_admin)
        };
        self.admin_changed.notify_one();
        // Left by an earlier release, which indexed admin tokens in the store: nobody
        // reads them any more.
        for old in stored {
            self.store.remove_token(old).await?;
        }
        Ok(())
    }

    /// Renews this process's hold on its admin token for `ttl` as replica `holder`, and
    /// makes the admin tokens this process accepts its own and those the other replicas
    /// hold now. Nothing happens before it has an admin token.
    pub async fn hold_admin_token(
        &self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<(), RegistryError> {
        let Some(own) = self.read().own_admin else {
            return Ok(());
        };
        let held = self
            .store
            .hold_admin_token(holder.to_string(), own, ttl)
            .await?;
        let mut inner = self.write();
        // Changed meanwhile: the next renewal, which the change raised, counts.
        if inner.own_admin != Some(own) {
            return Ok(());
        }
        inner
            .tokens
            .retain(|h, o| o.kind != TokenKind::Admin || *h == own.0);
        for hash in held {
            // A hash another kind of token has is no admin token.
            inner.tokens.entry(hash.0).or_insert_with(admin_owner);
        }
        Ok(())
    }

    /// Raised when this process's admin token changes.
    pub fn admin_changed(&self) -> Arc<tokio::sync::Notify> {
        self.admin_changed.clone()
    }

    /// Stores monitor `key`'s plain ping token (`None`: removes it) where every replica
    /// sharing the store reads it; a store one process serves keeps none.
    pub async fn share_ping_token(
        &self,
        key: &str,
        token: Option<&str>,
    ) -> Result<(), RegistryError> {
        let token = token.map(str::to_string);
        Ok(self.store.put_ping_token(key.to_string(), token).await?)
    }

    /// The plain ping tokens stored for the monitors in `keys`, by key.
    pub async fn shared_ping_tokens(
        &self,
        keys: Vec<String>,
    ) -> Result<HashMap<String, String>, RegistryError> {
        Ok(self.store.ping_tokens(keys).await?)
    }

    /// Makes `hash` work as `owner`'s token in this process at once, ahead of the store
    /// write that makes it last ([`Self::put_token`], [`Self::upsert_application`]): a
    /// front end takes a token it issues again to a defined owner before it hands the
    /// token out, so the token works from the moment anyone can read it. Nothing is
    /// written, so a crash before the store write forgets it. `None` when the token works
    /// for `owner` already.
    pub fn hold_token(
        &self,
        hash: TokenHash,
        owner: TokenOwner,
    ) -> Result<Option<HeldToken>, RegistryError> {
        let mut inner = self.write();
        match inner.tokens.get(&hash.0) {
            Some(existing) if *existing != owner => Err(RegistryError::TokenInUse),
            Some(_) => Ok(None),
            None => {
                inner.tokens.insert(hash.0, owner);
                inner.held.insert(hash.0);
                Ok(Some(HeldToken {
                    registry: self.clone(),
                    hash,
                }))
            }
        }
    }

    /// Whether `hash` works only because it is held ([`Self::hold_token`]), not stored.
    pub fn is_held(&self, hash: &TokenHash) -> bool {
        self.read().held.contains(&hash.0)
    }

    /// Drops a token so it stops working at once.
    pub async fn remove_token(&self, hash: TokenHash) -> Result<(), RegistryError> {
        {
            let mut inner = self.write();
            inner.tokens.remove(&hash.0);
            inner.held.remove(&hash.0);
        }
        self.store.remove_token(hash).await?;
        Ok(())
    }

    /// Resolves presented token text to its owner; constant-time on the hash comparison.
    pub fn authenticate(&self, presented: &str) -> Option<TokenOwner> {
        let hash = TokenHash::of(presented);
        let inner = self.read();
        let (stored, owner) = inner.tokens.get_key_value(&hash.0)?;
        TokenHash(*stored).ct_eq(&hash).then(|| owner.clone())
    }

    /// The current owner of a token known only by its hash (a dashboard session re-checks
    /// it on every request, so a revoked or rotated token ends the session at once).
    pub fn owner_of_hash(&self, hash: &TokenHash) -> Option<TokenOwner> {
        self.read().tokens.get(&hash.0).cloned()
    }

    /// Resolves an application token to its application.
    pub fn application_for_token(&self, presented: &str) -> Option<Arc<AppInfo>> {
        // One read lock and no copy of the owner: this runs for every ingested event.
        let hash = TokenHash::of(presented);
        let inner = self.read();
        let (stored, owner) = inner.tokens.get_key_value(&hash.0)?;
        if !TokenHash(*stored).ct_eq(&hash) || owner.kind != TokenKind::Application {
            return None;
        }
        inner.apps.get(&owner.key).cloned()
    }

    /// Makes the applications this registry knows (and their tokens) those of `records`,
    /// as another replica stored them: a replica that does not lead learns of the
    /// applications the leader defines this way. Nothing is written.
    pub fn sync_applications(&self, records: Vec<AppRecord>) {
        let mut inner = self.write();
        let mut apps = HashMap::with_capacity(records.len());
        for rec in records.iter().filter(|r| r.retained_since.is_none()) {
            let key = object_key(&rec.namespace, &rec.name);
            let previous = inner.apps.get(&key).cloned();
            let info = info_from(rec, &self.defaults, previous.as_deref());
            apps.insert(key, Arc::new(info));
        }
        inner.apps = apps;
        inner.tokens.retain(|_, o| o.kind != TokenKind::Application);
        for rec in records.iter().filter(|r| r.retained_since.is_none()) {
            let owner = TokenOwner {
                kind: TokenKind::Application,
                key: object_key(&rec.namespace, &rec.name),
            };
            inner.tokens.insert(rec.token.0, owner);
        }
    }

    /// Forgets the ping tokens in `dropped` and indexes those in `added` (hash, monitor
    /// key), as another replica stored them: a replica that does not lead learns of the
    /// monitors the leader defines this way. Nothing is written.
    pub fn index_monitor_tokens(&self, dropped: &[TokenHash], added: &[(TokenHash, String)]) {
        let mut inner = self.write();
        for hash in dropped {
            if inner
                .tokens
                .get(&hash.0)
                .is_some_and(|o| o.kind == TokenKind::Heartbeat)
            {
                inner.tokens.remove(&hash.0);
            }
        }
        for (hash, key) in added {
            let owner = TokenOwner {
                kind: TokenKind::Heartbeat,
                key: key.clone(),
            };
            inner.tokens.insert(hash.0, owner);
        }
    }

    /// The application under `namespace/name`.
    pub fn application(&self, key: &str) -> Option<Arc<AppInfo>> {
        self.read().apps.get(key).cloned()
    }

    /// Every defined application.
    pub fn applications(&self) -> Vec<Arc<AppInfo>> {
        let mut v: Vec<_> = self.read().apps.values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}
