//! The ping relay on PostgreSQL (`hartslag_ping_relay`, migration 2): a replica that does
//! not lead inserts pings and notifies channel `hartslag_relay` in one transaction (the
//! notification is delivered at commit, never for a ping rolled back); the leader listens
//! on a connection of its own and reads the table in id order. Rows are deleted by the
//! round that applied them, in its own transaction.
//!
//! One task per process writes the posts: every ping posted while the previous
//! transaction committed goes into the next one, and each is answered once that
//! transaction's `COMMIT` returned. A transaction per ping would hold a burst of pings to
//! one commit each (and the notification queue's lock, which a commit that notifies
//! takes, serialises them).

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use super::{Db, db_id, from_db_id, micros};
use crate::core::monitor::engine::PingInput;
use crate::core::storage::{PingRelay, RelayedPing, Signal, StorageError, StorageFuture};

/// The channel a post notifies.
pub(super) const CHANNEL: &str = "hartslag_relay";

/// Most pings in one transaction.
const MAX_BATCH: usize = 1024;

/// Longest a batch's transaction may take, connection included: past it the batch is
/// answered with an error (its outcome unknown, so never acknowledged) and the next one
/// starts afresh.
const COMMIT_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// A ping waiting for its transaction.
struct Post {
    key: String,
    at: Timestamp,
    ping: String,
    answer: oneshot::Sender<Result<u64, StorageError>>,
}

/// The relay in PostgreSQL.
pub(super) struct PgRelay {
    db: Db,
    posts: mpsc::UnboundedSender<Post>,
    signal: Signal,
}

fn corrupt(id: i64, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        what: format!("relayed ping {id}"),
        detail: e.to_string(),
    }
}

impl PgRelay {
    /// The relay on `db`, its posts written by a task of its own (ending with the relay),
    /// raising `signal` when a post may have been made.
    pub(super) fn spawn(db: Db, signal: Signal) -> Self {
        let (posts, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_posts(db.clone(), queue));
        Self { db, posts, signal }
    }

    async fn post(
        &self,
        key: String,
        at: Timestamp,
        input: PingInput,
    ) -> Result<u64, StorageError> {
        let ping = serde_json::to_string(&input).map_err(|e| corrupt(0, e))?;
        let (answer, answered) = oneshot::channel();
        let post = Post {
            key,
            at,
            ping,
            answer,
        };
        self.posts.send(post).map_err(|_| StorageError::Stopped)?;
        answered.await.map_err(|_| StorageError::Stopped)?
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
        Ok(rows
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let read = || -> Result<RelayedPing, StorageError> {
                    let at = Timestamp::from_microsecond(r.get(2)).map_err(|e| corrupt(id, e))?;
                    let input = serde_json::from_str(r.get(3)).map_err(|e| corrupt(id, e))?;
                    Ok(RelayedPing {
                        id: from_db_id(id),
                        key: r.get(1),
                        at,
                        input,
                    })
                };
                read().unwrap_or_else(|e| unreadable(id, r.get(1), r.get(3), &e))
            })
            .collect())
    }
}

/// A relayed ping that cannot be read (written by a newer release, or damaged): logged
/// with what it said and handed over under no monitor's key, so the leader drops it and
/// removes it from the relay instead of stopping at it for good.
fn unreadable(id: i64, key: String, ping: &str, e: &StorageError) -> RelayedPing {
    tracing::error!(id, monitor = %key, ping, error = %e, "a relayed ping cannot be read; it is dropped");
    RelayedPing {
        id: from_db_id(id),
        key: String::new(),
        at: Timestamp::UNIX_EPOCH,
        input: PingInput {
            kind: crate::core::monitor::engine::PingKind::Success,
            exit_code: None,
            source: None,
            user_agent: None,
            body: None,
            rid: None,
            stopped_alert: None,
        },
    }
}

/// Writes every post waiting, a transaction at a time, until the relay is gone.
async fn write_posts(db: Db, mut queue: mpsc::UnboundedReceiver<Post>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(post) => batch.push(post),
                Err(_) => break,
            }
        }
        let inserted = tokio::time::timeout(COMMIT_WITHIN, insert(&db, &batch))
            .await
            .unwrap_or_else(|_| {
                let secs = COMMIT_WITHIN.as_secs();
                Err(StorageError::Unavailable(format!(
                    "the database did not commit relayed pings within {secs}s"
                )))
            });
        match inserted {
            Ok(ids) => {
                for (post, id) in batch.into_iter().zip(ids) {
                    let _ = post.answer.send(Ok(id));
                }
            }
            Err(e) => {
                for post in batch {
                    let _ = post.answer.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Inserts `batch` in one transaction that notifies the leader; the numbers it got, in
/// the batch's order.
async fn insert(db: &Db, batch: &[Post]) -> Result<Vec<u64>, StorageError> {
    let keys: Vec<&str> = batch.iter().map(|p| p.key.as_str()).collect();
    let ats: Vec<i64> = batch.iter().map(|p| micros(p.at)).collect();
    let pings: Vec<&str> = batch.iter().map(|p| p.ping.as_str()).collect();
    let mut client = db.client().await?;
    let fail = |e| db.fail(e);
    let tx = client.transaction().await.map_err(fail)?;
    // Rows are numbered in the order of the batch (`ORDER BY n`): the smallest number
    // is the first post's.
    let rows = tx
        .query(
            "INSERT INTO hartslag_ping_relay (monitor, at, ping) \
             SELECT m, a, p::jsonb FROM unnest($1::text[], $2::bigint[], $3::text[]) \
             WITH ORDINALITY AS u(m, a, p, n) ORDER BY n RETURNING id",
            &[&keys, &ats, &pings],
        )
        .await
        .map_err(fail)?;
    tx.batch_execute(&format!("NOTIFY {CHANNEL}"))
        .await
        .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    let mut ids: Vec<u64> = rows.iter().map(|r| from_db_id(r.get(0))).collect();
    ids.sort_unstable();
    Ok(ids)
}

impl PingRelay for PgRelay {
    fn post(&self, key: String, at: Timestamp, input: PingInput) -> StorageFuture<'_, u64> {
        Box::pin(PgRelay::post(self, key, at, input))
    }

    fn take(&self, after: u64, limit: usize) -> StorageFuture<'_, Vec<RelayedPing>> {
        Box::pin(self.after(after, limit))
    }

    fn signal(&self) -> Signal {
        self.signal.clone()
    }
}
