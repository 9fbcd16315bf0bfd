//! The schema: versioned SQL files in `migrations/postgres`, compiled into the binary and
//! applied at start by refinery. Replicas starting together take turns (an advisory lock
//! held for the run), and a database whose schema is newer than this binary knows is
//! refused before anything is written. A replica already running when a newer release
//! migrates the database learns it from [`SchemaWatch`], which looks every
//! [`CHECK_EVERY`]: from then on the process refuses every use of the database (each
//! request that needs it is answered 503 naming the schema, and `/healthz` fails, so it
//! is restarted into the refused start) instead of writing rows the new schema does not
//! expect.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::{DatabaseUrl, PgError, describe};
use crate::core::storage::StorageError;

refinery::embed_migrations!("migrations/postgres");

/// Where refinery records the versions applied.
const HISTORY: &str = "hartslag_schema_history";

/// The advisory lock replicas take turns on while migrating ("hartslag" in ASCII).
const MIGRATION_LOCK: i64 = 0x6861_7274_736c_6167;

/// Applies the migrations this binary has and the database lacks, on a connection of its
/// own; refuses a schema newer than the newest migration known here.
pub(super) async fn run(url: &DatabaseUrl, tls: MakeRustlsConnect) -> Result<(), PgError> {
    let connect_error = |detail: String| PgError::Connect {
        url: url.to_string(),
        detail: url.redact(&detail),
    };
    let config = super::connect::tuned(url);
    let connecting = config.connect(tls);
    let (mut client, connection) =
        tokio::time::timeout(super::connect::CONNECT_WITHIN * 2, connecting)
            .await
            .map_err(|_| connect_error("timed out".into()))?
            .map_err(|e| connect_error(describe(&e)))?;
    let driver = tokio::spawn(connection);
    let sql = |e: tokio_postgres::Error| PgError::Migrate(url.redact(&describe(&e)));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(sql)?;
    let done = migrate_locked(&mut client, url).await;
    // Closing the connection releases the lock too; unlocking first is just tidier.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    done
}

/// The newest migration this binary has.
fn known_version() -> i64 {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

async fn migrate_locked(
    client: &mut tokio_postgres::Client,
    url: &DatabaseUrl,
) -> Result<(), PgError> {
    let known = known_version();
    if let Some(found) = applied_version(client, url).await?
        && found > known
    {
        return Err(PgError::Newer { found, known });
    }
    let mut runner = migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true);
    runner.set_migration_table_name(HISTORY);
    let report = runner
        .run_async(client)
        .await
        .map_err(|e| PgError::Migrate(url.redact(&e.to_string())))?;
    for m in report.applied_migrations() {
        tracing::info!(version = i64::from(m.version()), name = %m.name(), "applied a database migration");
    }
    Ok(())
}

/// The newest version recorded in the history table, if there is one.
async fn applied_version(
    client: &tokio_postgres::Client,
    url: &DatabaseUrl,
) -> Result<Option<i64>, PgError> {
    let sql = |e: tokio_postgres::Error| PgError::Migrate(url.redact(&describe(&e)));
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY])
        .await
        .map_err(sql)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let query = format!("SELECT max(version)::bigint FROM {HISTORY}");
    let row = client.query_one(&query, &[]).await.map_err(sql)?;
    Ok(row.get(0))
}

/// How often a running process looks at the schema's version: one indexed `max()` over a
/// table of a few rows.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Whether the database's schema has become newer than this binary knows while it ran;
/// shared by everything that queries the database through one pool. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct SchemaWatch(Arc<OnceLock<String>>);

impl SchemaWatch {
    /// `Err` naming the schema once it is newer than this binary knows: nothing more is
    /// read or written in this process.
    pub(super) fn check(&self) -> Result<(), StorageError> {
        match self.0.get() {
            Some(why) => Err(StorageError::Incompatible(why.clone())),
            None => Ok(()),
        }
    }

    /// Looks at the schema's version on `pool` every [`CHECK_EVERY`], until it is newer
    /// than this binary knows or every handle of this watch is gone. A failed look (the
    /// database away) is tried again at the next.
    pub(super) fn spawn(&self, pool: deadpool_postgres::Pool, url: DatabaseUrl) {
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(watch(weak, pool, url));
    }
}

async fn watch(seen: Weak<OnceLock<String>>, pool: deadpool_postgres::Pool, url: DatabaseUrl) {
    let known = known_version();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(seen) = seen.upgrade() else {
            return;
        };
        let Ok(client) = pool.get().await else {
            continue;
        };
        let Ok(Some(found)) = applied_version(&client, &url).await else {
            continue;
        };
        if found > known {
            let refusal = PgError::Newer { found, known }.to_string();
            tracing::error!(error = %refusal, "the database was migrated past this binary while it ran; refusing every request that needs the database (/healthz fails) until a restart");
            let _ = seen.set(refusal);
            return;
        }
    }
}
