//! The installation a database belongs to (`hartslag_installation`, migration 8).
//!
//! Replicas of one installation declare the same Applications and Heartbeats, and the
//! leader removes whatever it does not declare (an object gone from the manifests, a
//! resource deleted while the operator was down). A replica of another installation on
//! the same database would therefore remove the first one's objects and revoke its tokens
//! as soon as it led, and the first would do the same to it in turn. So the first replica
//! to open a database records its installation's name there, and a replica of another
//! installation refuses to start before it writes anything. A database from an earlier
//! release has no name yet and is claimed by the first replica that opens it.

use jiff::Timestamp;

use super::{DatabaseUrl, PgError, describe};

/// Records `name` as the installation `url`'s database belongs to, unless it belongs to
/// one already; refuses ([`PgError::OtherInstallation`]) when that is another. `holder`
/// names this replica for people reading the row. Brings the schema up to date first.
pub async fn claim(url: &DatabaseUrl, name: &str, holder: &str) -> Result<(), PgError> {
    let tls = super::connect::tls(url)?;
    super::migrate::run(url, tls.clone()).await?;
    let connect_error = |detail: String| PgError::Connect {
        url: url.to_string(),
        detail: url.redact(&detail),
    };
    let (client, connection) = tokio::time::timeout(
        super::connect::CONNECT_WITHIN * 2,
        super::connect::tuned(url).connect(tls),
    )
    .await
    .map_err(|_| connect_error("timed out".into()))?
    .map_err(|e| connect_error(describe(&e)))?;
    let driver = tokio::spawn(connection);
    let recorded = record(&client, name, holder).await;
    drop(client);
    let _ = driver.await;
    let recorded = recorded.map_err(|e| connect_error(describe(&e)))?;
    if recorded.name != name {
        return Err(PgError::OtherInstallation {
            url: url.to_string(),
            ours: name.to_string(),
            theirs: recorded.name,
            claimed_by: recorded.claimed_by,
            since: recorded.since,
        });
    }
    if recorded.now {
        tracing::info!(installation = %name, "this database now belongs to this installation");
    } else {
        tracing::debug!(installation = %name, "the database belongs to this installation");
    }
    Ok(())
}

/// The row as found after the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The installation the database belongs to.
    pub name: String,
    /// Who claimed it for that installation.
    pub claimed_by: String,
    /// When.
    pub since: Timestamp,
    /// Whether this claim wrote it.
    pub now: bool,
}

/// The row, if the database belongs to an installation yet (read only).
pub(super) async fn recorded(
    client: &tokio_postgres::Client,
) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT name, claimed_by, claimed_at FROM hartslag_installation WHERE id = 1",
            &[],
        )
        .await?;
    Ok(row.map(|row| Recorded {
        name: row.get(0),
        claimed_by: row.get(1),
        since: Timestamp::from_microsecond(row.get(2)).unwrap_or(Timestamp::UNIX_EPOCH),
        now: false,
    }))
}

/// Inserts the row unless there is one (replicas starting together: one insert wins, the
/// others find it), then reads it.
pub(super) async fn record(
    client: &tokio_postgres::Client,
    name: &str,
    holder: &str,
) -> Result<Recorded, tokio_postgres::Error> {
    let at = Timestamp::now().as_microsecond();
    let inserted = client
        .execute(
            "INSERT INTO hartslag_installation (id, name, claimed_by, claimed_at) \
             VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&name, &holder, &at],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT name, claimed_by, claimed_at FROM hartslag_installation WHERE id = 1",
            &[],
        )
        .await?;
    Ok(Recorded {
        name: row.get(0),
        claimed_by: row.get(1),
        since: Timestamp::from_microsecond(row.get(2)).unwrap_or(Timestamp::UNIX_EPOCH),
        now: inserted == 1,
    })
}
