//! PostgreSQL behind the storage port: events, rollups, idempotency keys, application
//! records and the token index in a database several replicas share.
//!
//! Writes go through a pool of connections (deadpool-postgres over tokio-postgres, TLS by
//! rustls); ingest writes are grouped by one task per process into one transaction
//! ([`writer`]), whose rollups are added with `INSERT ... ON CONFLICT DO UPDATE`, so
//! replicas writing at once keep every count exact. The schema is versioned SQL in
//! `migrations/postgres`, applied at start ([`migrate`]).
//!
//! Monitors, their history and the alert outbox ([`open_monitors`]) live on a runtime and
//! a pool of their own ([`backend`]): the monitor engine's thread calls them
//! synchronously. Their writes are the leader's alone, fenced by the leader row
//! ([`leader`]).

mod apps;
mod backend;
mod commits;
mod connect;
pub mod copy;
pub mod elector;
mod events;
mod feed;
mod ingest;
mod installation;
pub mod leader;
mod listen;
mod migrate;
mod monitors;
mod outbox;
mod relay;
mod rounds;
mod shared_tokens;
mod url;
mod writer;

use std::sync::Arc;

pub use commits::CommitMetrics;
pub use connect::POOL_SIZE;
pub use feed::PgFeed;
pub use installation::{Recorded as Installation, claim};
pub use monitors::{MonitorChange, MonitorChanges, PgMonitors};
pub use outbox::PgOutbox;
pub use rounds::RoundStats;
pub use url::{DatabaseUrl, UrlError};

use crate::core::metrics::MetricRegistry;
use crate::core::storage::{Fence, MonitorStorage, Storage, StorageError};

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No connection could be made (or the pool could not be built).
    #[error("cannot connect to the database {url}: {detail}")]
    Connect {
        /// The database, without its password.
        url: String,
        /// Why, without the password.
        detail: String,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the database schema: {0}")]
    Migrate(String),
    /// The database holds a schema this binary does not know.
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({known}): run the newer hartslag that migrated it, or restore a backup"
    )]
    Newer {
        /// The newest version applied to the database.
        found: i64,
        /// The newest version this binary has.
        known: i64,
    },
    /// The TLS setup failed.
    #[error("cannot set up TLS to the database: {0}")]
    Tls(String),
    /// The database belongs to another installation ([`claim`]).
    #[error(
        "the database {url} belongs to the installation {theirs:?} (claimed by {claimed_by} at {since}), and this replica's installation is {ours:?}: two installations on one database would remove each other's Applications, Heartbeats and tokens, so this replica does not start and has changed nothing. Give this installation a database of its own. If it is the same installation under a new name, start it with --installation {theirs:?} (HARTSLAG_INSTALLATION); to hand the database over to it on purpose, once the other installation is gone, run DELETE FROM hartslag_installation in it"
    )]
    OtherInstallation {
        /// The database, without its password.
        url: String,
        /// This replica's installation.
        ours: String,
        /// The installation the database belongs to.
        theirs: String,
        /// The replica that claimed the database for it.
        claimed_by: String,
        /// When.
        since: jiff::Timestamp,
    },
}

/// Connects to `url`, brings the schema up to date (refusing a newer one) and returns the
/// port's events and applications on it. Ingest counters and the commit figures go to
/// `metrics`. Needs a tokio runtime; the ingest task lives as long as the returned handles.
pub async fn open(url: &DatabaseUrl, metrics: &mut MetricRegistry) -> Result<Storage, PgError> {
    open_sharing(url, metrics, CommitMetrics::default()).await
}

/// [`open`], its ingest transactions counted in `commits` (which it registers in
/// `metrics`), shared with the monitor rounds of [`open_monitors`].
pub async fn open_sharing(
    url: &DatabaseUrl,
    metrics: &mut MetricRegistry,
    commits: CommitMetrics,
) -> Result<Storage, PgError> {
    let tls = connect::tls(url)?;
    migrate::run(url, tls.clone()).await?;
    let pool = connect::pool(url, tls.clone())?;
    let db = Db::watched(pool, url);
    let writer = writer::Writer::spawn(db.clone(), commits.clone());
    writer.register_metrics(metrics);
    commits.register(metrics);
    tracing::info!(database = %url, "events, applications and tokens are stored in PostgreSQL");
    Ok(Storage {
        events: Arc::new(events::PgEvents {
            db: db.clone(),
            writer,
        }),
        apps: Arc::new(apps::PgApps { db: db.clone() }),
        relay: Some(Arc::new(relay::PgRelay::spawn(
            db,
            listen::spawn(url, tls.clone(), relay::CHANNEL),
        ))),
        apps_changed: Some(listen::spawn(url, tls, apps::CHANNEL)),
    })
}

/// The monitor and outbox stores on PostgreSQL, with the concrete monitor store for what
/// only it offers (the changes a mirror asks for, the rounds' timings).
#[derive(Clone)]
pub struct PgMonitorStorage {
    /// Monitors, history, timelines and the rounds.
    pub monitors: Arc<PgMonitors>,
    /// The alert outbox.
    pub outbox: Arc<PgOutbox>,
    /// The rounds, for replicas that mirror them.
    pub feed: Arc<PgFeed>,
    /// The round writer's commit figures, to share with the ingest writer
    /// ([`open_sharing`]), which registers them.
    pub commits: CommitMetrics,
}

impl PgMonitorStorage {
    /// Both as the port's stores.
    pub fn storage(&self) -> MonitorStorage {
        MonitorStorage {
            monitors: self.monitors.clone(),
            outbox: self.outbox.clone(),
            feed: Some(self.feed.clone()),
        }
    }
}

/// Connects to `url`, brings the schema up to date and returns the monitor and outbox
/// stores on it, whose leader-only writes carry `fence` (a replica that does not lead
/// reads them and writes nothing). They run on a runtime of their own, shut down when the
/// last handle goes.
pub async fn open_monitors(url: &DatabaseUrl, fence: Fence) -> Result<PgMonitorStorage, PgError> {
    migrate::run(url, connect::tls(url)?).await?;
    let backend = backend::Backend::start(url, fence)?;
    let first = backend.run({
        let ctx = backend.ctx.clone();
        async move { outbox::PgOutbox::count_notices(&ctx).await }
    });
    first.await.map_err(|e| PgError::Connect {
        url: url.to_string(),
        detail: url.redact(&e.to_string()),
    })?;
    tracing::info!(database = %url, "monitors and the alert outbox are stored in PostgreSQL");
    let commits = CommitMetrics::default();
    let monitors = Arc::new(PgMonitors::new(backend.clone(), commits.clone()));
    let feed = Arc::new(PgFeed {
        monitors: monitors.clone(),
        signal: listen::spawn(url, connect::tls(url)?, feed::CHANNEL),
    });
    Ok(PgMonitorStorage {
        monitors,
        outbox: Arc::new(PgOutbox::new(backend)),
        feed,
        commits,
    })
}

/// Makes this process the leader of the replicas on `url` at start, unconditionally, and
/// `fence` lead under the new generation: one replica per database leads as a single
/// process always has. (Leadership by election replaces this.)
pub async fn lead_alone_at_start(url: &DatabaseUrl, fence: &Fence) -> Result<u64, PgError> {
    let config = connect::tuned(url);
    let connect_error = |detail: String| PgError::Connect {
        url: url.to_string(),
        detail: url.redact(&detail),
    };
    let (client, connection) = tokio::time::timeout(
        connect::CONNECT_WITHIN * 2,
        config.connect(connect::tls(url)?),
    )
    .await
    .map_err(|_| connect_error("timed out".into()))?
    .map_err(|e| connect_error(describe(&e)))?;
    let driver = tokio::spawn(connection);
    let generation = leader::take_over(&client, &holder())
        .await
        .map_err(|e| connect_error(describe(&e)))?;
    drop(client);
    let _ = driver.await;
    fence.lead(generation);
    tracing::info!(generation, "this replica leads");
    Ok(generation)
}

/// This replica as the leader and installation rows show it: its host's name and its
/// process id.
pub fn holder() -> String {
    format!(
        "{} (pid {})",
        hostname().unwrap_or_else(|| "hartslag".into()),
        std::process::id()
    )
}

/// This host's name, as the leader row shows it.
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
}

/// The pool and what errors need to name the database without its password.
#[derive(Clone)]
pub(crate) struct Db {
    pool: deadpool_postgres::Pool,
    url: DatabaseUrl,
    /// Refuses every use of the database once its schema is newer than this binary.
    schema: migrate::SchemaWatch,
}

impl Db {
    /// The pool over `url`, its schema watched (needs a tokio runtime).
    fn watched(pool: deadpool_postgres::Pool, url: &DatabaseUrl) -> Self {
        let schema = migrate::SchemaWatch::default();
        schema.spawn(pool.clone(), url.clone());
        Self {
            pool,
            url: url.clone(),
            schema,
        }
    }

    /// A connection from the pool; `Unavailable` when none can be had in time,
    /// `Incompatible` once the schema is newer than this binary knows.
    async fn client(&self) -> Result<deadpool_postgres::Client, StorageError> {
        self.schema.check()?;
        self.pool
            .get()
            .await
            .map_err(|e| StorageError::Unavailable(self.url.redact(&with_causes(&e))))
    }

    /// A failed statement as the port's error: the database unreachable or gone is
    /// `Unavailable`, anything else `NotStored`; the password never appears.
    fn fail(&self, e: tokio_postgres::Error) -> StorageError {
        let text = self.url.redact(&describe(&e));
        if e.is_closed() || e.code().is_none() {
            StorageError::Unavailable(text)
        } else {
            StorageError::NotStored(text)
        }
    }
}

/// An error with the server's message where there is one, and the cause of a connection
/// error (tokio-postgres' own `Display` says only "db error" or "error connecting to
/// server").
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    with_causes(e)
}

/// An error and every cause under it, as one line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        // Some errors print their cause themselves (tokio-postgres' "error connecting to
        // server: ..."): said once is enough.
        let said = c.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

/// Application numbers and user ids are stored as `bigint`; numbers the store gave out
/// always fit, and the cast round-trips every value.
fn db_id(n: u64) -> i64 {
    n as i64
}

/// The inverse of [`db_id`].
fn from_db_id(n: i64) -> u64 {
    n as u64
}

/// An instant as stored: microseconds since the epoch.
fn micros(t: jiff::Timestamp) -> i64 {
    t.as_microsecond()
}

/// A stored weight sum (`numeric`, read as text) as the port's 128-bit sum.
fn weight_of(text: &str) -> Result<i128, StorageError> {
    text.parse().map_err(|_| StorageError::Corrupt {
        what: "weight sum".into(),
        detail: text.chars().take(64).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    /// An error that prints its cause itself, as tokio-postgres' do.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error connecting to server: {}", self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_the_error_already_printed_is_not_repeated() {
        let e = Outer(std::io::Error::other("Connection refused"));
        assert_eq!(
            with_causes(&e),
            "error connecting to server: Connection refused"
        );
        let plain = std::io::Error::other(Outer(std::io::Error::other("reset")));
        assert_eq!(with_causes(&plain), "error connecting to server: reset");
    }
}
