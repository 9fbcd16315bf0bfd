//! The embedded storage backend, on sled: events, rollups, applications and the token
//! index ([`port`]), monitors and the monitor engine's rounds ([`monitors`]) and the alert
//! outbox ([`outbox`]) behind the storage port ([`crate::core::storage`]), over one
//! commit log.
//!
//! One `Store` per process (sled allows one opener). Hot write paths go through
//! single-writer threads and the group committer's commit log ([`wal`]), so an
//! acknowledged write is on disk and concurrent requests share one fsync.

pub mod apps;
pub mod commit;
pub mod dump;
pub mod events;
pub mod keys;
/// Kept here too: the commit log's flush latency was its first use.
pub use super::latency;
pub mod metrics;
pub mod monitors;
pub mod outbox;
pub mod port;
pub mod states;
pub mod wal;

use std::path::Path;

pub use commit::{CommitError, CommitStats, Committer};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption, or the directory is held by another process).
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    /// A flush could not be confirmed, so the write is not known to be durable.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The monitors' state file failed or holds a damaged slot.
    #[error(transparent)]
    States(#[from] states::StatesError),
    /// A stored record could not be decoded.
    #[error("stored record {what} is corrupt: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A write could not be made durable; the reason as the commit thread reported it.
    #[error("the write was not stored: {0}")]
    Write(String),
    /// A storage thread could not be started.
    #[error("cannot start a storage thread: {0}")]
    Thread(String),
    /// A background task stopped.
    #[error("the storage writer has stopped")]
    Stopped,
    /// Another process holds the data directory (sled's lock).
    #[error(
        "the data directory {0} is in use by another hartslag process (its lock is held): stop that one, or give this one a --data of its own"
    )]
    Locked(String),
    /// Part of the database is already open in this process.
    #[error("the {0} of this database are already open in this process")]
    InUse(&'static str),
}

impl<E: std::fmt::Display> From<sled::transaction::TransactionError<E>> for StoreError {
    fn from(e: sled::transaction::TransactionError<E>) -> Self {
        match e {
            sled::transaction::TransactionError::Storage(s) => StoreError::Sled(s),
            sled::transaction::TransactionError::Abort(a) => StoreError::Corrupt {
                what: "transaction".into(),
                detail: a.to_string(),
            },
        }
    }
}

impl From<crate::core::monitor::history::HistoryError> for StoreError {
    fn from(e: crate::core::monitor::history::HistoryError) -> Self {
        use crate::core::monitor::history::HistoryError;
        match e {
            HistoryError::Codec(e) => StoreError::Corrupt {
                what: "ping record".into(),
                detail: e.to_string(),
            },
            HistoryError::Corrupt { key, detail } => StoreError::Corrupt {
                what: format!("ping history block {key}"),
                detail: detail.into(),
            },
        }
    }
}

/// Options for opening the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache in bytes; sled's default is small and unbounded growth is worse.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The opened database and its trees.
#[derive(Clone)]
pub struct Store {
    /// The sled database, for the backend's modules that own trees of their own.
    pub(crate) db: sled::Db,
    committer: Committer,
    pub(crate) events: sled::Tree,
    pub(crate) apps: sled::Tree,
    pub(crate) tokens: sled::Tree,
    /// Queries wait here for events that were answered before sled had them.
    pub(crate) visible: std::sync::Arc<events::Visibility>,
    /// Distinct event names per application, for the ingest writer's limit.
    pub(crate) names: std::sync::Arc<events::batch::NameCounts>,
    /// Whether a `SledMonitors` holds the monitors ([`monitors::SledMonitors::open`]).
    pub(crate) monitors_open: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Makes `dir` (and its parents) when it is missing, itself readable by its owner only:
/// it holds every event and every monitor, and sled would make it with the umask's mode
/// (usually readable by every local user). A directory that exists keeps its mode.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(StoreError::Sled(sled::Error::Io(e)))
        }
        _ => Ok(()),
    }
}

impl Store {
    /// Opens (or creates) the database in `dir`, replaying the commit log first.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        private_dir(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                // sled says so only in words.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Sled(other),
            })?;
        let opened = started.elapsed();
        let (committer, replayed) = Committer::spawn(db.clone(), dir)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "applied acknowledged writes from the commit log that the database had not flushed before the last stop"
            );
        }
        tracing::info!(
            database_ms = opened.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "opened the database"
        );
        let store = Self {
            events: db.open_tree("events")?,
            apps: db.open_tree("apps")?,
            tokens: db.open_tree("tokens")?,
            visible: Default::default(),
            names: Default::default(),
            monitors_open: Default::default(),
            committer,
            db,
        };
        store.remember_newest_events()?;
        Ok(store)
    }

    /// The group committer, for modules that write their own trees.
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Adds the commit log's families to `/metrics`.
    pub fn register_metrics(&self, registry: &mut crate::core::metrics::MetricRegistry) {
        metrics::register(&self.committer, registry);
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        Ok(self.committer.flush().await?)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_new_data_directory_is_its_owners_only_and_an_existing_one_keeps_its_mode() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b/data");
        drop(Store::open(&fresh, &StoreOptions::default()).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
        drop(Store::open(&shared, &StoreOptions::default()).unwrap());
        assert_eq!(mode(&shared), 0o750);
    }
}
