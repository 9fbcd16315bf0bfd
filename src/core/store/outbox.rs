//! The alert outbox in sled, behind [`OutboxStore`]: pending deliveries by delivery key
//! (`outbox`, where the monitor engine's rounds queue them), finished ones by sequence
//! number (`outbox_done`, the newest [`DONE_KEEP`] kept for inspection) and each target's
//! history (`outbox_targets`). Every write is one commit-log record, made durable before
//! it resolves.
//!
//! Claims live in memory: sled has one opener, so the process that claims is the only
//! one that delivers, and a claim its process never ended (a crash mid-attempt) is gone
//! with it, leaving the delivery pending for the next start.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::port::blocking;
use super::wal::Mutation;
use super::{Committer, Store, StoreError};
use crate::core::alert::outbox::{Delivery, DoneRecord, delivery_key, is_repetition};
use crate::core::alert::policy::TargetHistory;
use crate::core::storage::{Finished, OutboxStore, StorageError, StorageFuture};

/// The tree pending deliveries live in.
pub(crate) const PENDING_TREE: &str = "outbox";

/// Finished deliveries kept for inspection.
const DONE_KEEP: u64 = 10_000;

/// The outbox's trees.
pub struct SledOutbox {
    store: Store,
    pending: sled::Tree,
    done: sled::Tree,
    targets: sled::Tree,
    /// Sequence number of the newest finished delivery.
    done_seq: AtomicU64,
    /// Deliveries an attempt holds.
    claims: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl SledOutbox {
    /// Opens the outbox's trees.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let done = store.db.open_tree("outbox_done")?;
        let last = done
            .last()?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(Self {
            pending: store.db.open_tree(PENDING_TREE)?,
            targets: store.db.open_tree("outbox_targets")?,
            done,
            done_seq: AtomicU64::new(last),
            claims: Arc::default(),
            store: store.clone(),
        })
    }

    /// Writes `writes` as one commit-log record, durably, off the async workers; then ends
    /// the claims on `release`.
    fn write(&self, writes: Vec<Mutation>, release: Vec<Vec<u8>>) -> StorageFuture<'_, ()> {
        let committer: Committer = self.store.committer().clone();
        let claims = self.claims.clone();
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || committer.log_blocking(writes))
                .await
                .map_err(|e| StorageError::Unavailable(format!("an outbox write failed: {e}")))
                .and_then(|r| r.map_err(|e| StorageError::from(StoreError::from(e))));
            let mut claims = claims.lock().unwrap_or_else(|p| p.into_inner());
            for key in &release {
                claims.remove(key);
            }
            result
        })
    }

    /// The writes that finish `f`: its `done` entry, the removal of the pending record and
    /// the target's history.
    fn finish_writes(
        &self,
        f: &Finished,
        history: &Mutation,
        writes: &mut Vec<Mutation>,
    ) -> Result<(), StoreError> {
        let seq = self.done_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = DoneRecord {
            key: String::from_utf8_lossy(&f.key).into_owned(),
            outcome: f.outcome.clone(),
            detail: f.detail.clone(),
            attempts: f.attempts,
            at: Timestamp::now(),
        };
        writes.push(Mutation::put(&self.done, seq.to_be_bytes(), encode(&rec)?));
        writes.push(Mutation::remove(&self.pending, f.key.clone()));
        writes.push(history.clone());
        if seq > DONE_KEEP {
            writes.push(Mutation::remove(
                &self.done,
                (seq - DONE_KEEP).to_be_bytes(),
            ));
        }
        Ok(())
    }

    /// The write that stores a target's history.
    fn history_write(
        &self,
        (identity, history): &(String, TargetHistory),
    ) -> Result<Mutation, StoreError> {
        Ok(Mutation::put(
            &self.targets,
            identity.as_bytes(),
            encode(history)?,
        ))
    }

    /// The write that queues `d` once: a queued delivery is never replaced.
    fn queue_write(&self, d: &Delivery) -> Result<Mutation, StoreError> {
        Ok(Mutation::put_if_absent(
            &self.pending,
            delivery_key(&d.alert, &d.target),
            encode(d)?,
        ))
    }
}

/// A record as its JSON value.
fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Write(format!("encoding a record: {e}")))
}

/// A future that fails at once with `e`.
fn failed<T: Send + 'static>(e: StoreError) -> StorageFuture<'static, T> {
    let e = StorageError::from(e);
    Box::pin(async move { Err(e) })
}

impl OutboxStore for SledOutbox {
    fn pending(&self) -> StorageFuture<'_, Vec<(Vec<u8>, Delivery)>> {
        let pending = self.pending.clone();
        blocking(&self.store, move |_| {
            Ok(pending
                .iter()
                .filter_map(|item| item.ok())
                .filter_map(|(k, v)| match serde_json::from_slice::<Delivery>(&v) {
                    Ok(d) => Some((k.to_vec(), d)),
                    Err(e) => {
                        tracing::error!(error = %e, "dropping an unreadable outbox record");
                        let _ = pending.remove(&k);
                        None
                    }
                })
                .collect())
        })
    }

    fn pending_notices(&self) -> Result<u64, StorageError> {
        let notices = self
            .pending
            .iter()
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !is_repetition(k))
            .count();
        Ok(notices as u64)
    }

    fn target_histories(&self) -> StorageFuture<'_, Vec<(String, TargetHistory)>> {
        let targets = self.targets.clone();
        blocking(&self.store, move |_| {
            Ok(targets
                .iter()
                .filter_map(|item| item.ok())
                .filter_map(|(k, v)| {
                    let identity = String::from_utf8(k.to_vec()).ok()?;
                    // An unreadable history is as good as none: the target starts afresh.
                    Some((identity, serde_json::from_slice(&v).unwrap_or_default()))
                })
                .collect())
        })
    }

    fn claim(&self, key: Vec<u8>) -> StorageFuture<'_, bool> {
        if !self
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return Box::pin(async { Ok(false) });
        }
        let pending = self.pending.clone();
        let claims = self.claims.clone();
        blocking(&self.store, move |_| {
            let there = pending.contains_key(&key);
            if !matches!(there, Ok(true)) {
                claims
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
            Ok(there?)
        })
    }

    fn finish(
        &self,
        done: Vec<Finished>,
        target: (String, TargetHistory),
        next: Option<Delivery>,
    ) -> StorageFuture<'_, ()> {
        let prepared = (|| -> Result<Vec<Mutation>, StoreError> {
            let history = self.history_write(&target)?;
            let mut writes = Vec::with_capacity(done.len() * 3 + 1);
            for f in &done {
                self.finish_writes(f, &history, &mut writes)?;
            }
            if let Some(next) = &next {
                writes.push(self.queue_write(next)?);
            }
            Ok(writes)
        })();
        match prepared {
            Ok(writes) => self.write(writes, done.into_iter().map(|f| f.key).collect()),
            Err(e) => failed(e),
        }
    }

    fn retry(&self, key: Vec<u8>, delivery: Delivery) -> StorageFuture<'_, ()> {
        match encode(&delivery) {
            Ok(v) => self.write(
                vec![Mutation::put(&self.pending, key.clone(), v)],
                vec![key],
            ),
            Err(e) => failed(e),
        }
    }

    fn queue(
        &self,
        delivery: Delivery,
        target: Option<(String, TargetHistory)>,
    ) -> StorageFuture<'_, ()> {
        let prepared = (|| -> Result<Vec<Mutation>, StoreError> {
            let mut writes = vec![self.queue_write(&delivery)?];
            if let Some(target) = &target {
                writes.push(self.history_write(target)?);
            }
            Ok(writes)
        })();
        match prepared {
            Ok(writes) => self.write(writes, Vec::new()),
            Err(e) => failed(e),
        }
    }
}
