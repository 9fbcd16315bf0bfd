//! The leader row (`hartslag_leader`, migration 2): taking it over and checking it.
//!
//! Whoever decides leadership (an advisory lock, a Kubernetes Lease) calls [`take_over`]
//! once it holds the lock, and leads under the generation it returns. Every leader-only
//! write calls [`check`] first in its own transaction: the share lock it takes makes a
//! later take-over wait until that transaction ends, and a transaction begun after a
//! take-over sees the new generation and is refused. So between the two, a write is
//! either committed before the successor leads or not at all.

use tokio_postgres::GenericClient;

use crate::core::storage::{Fence, StorageError};

/// Makes `holder` the leader: bumps the generation and returns it. Waits for leader-only
/// transactions in flight (they hold the row's share lock).
pub async fn take_over(
    client: &impl GenericClient,
    holder: &str,
) -> Result<u64, tokio_postgres::Error> {
    let since = jiff::Timestamp::now().as_microsecond();
    let row = client
        .query_one(
            "UPDATE hartslag_leader SET generation = generation + 1, holder = $1, since = $2 \
             WHERE id = 1 RETURNING generation",
            &[&holder, &since],
        )
        .await?;
    let generation: i64 = row.get(0);
    Ok(u64::try_from(generation).unwrap_or(0))
}

/// Refuses the transaction `tx` belongs to unless `fence` leads under the current
/// generation; holds the row's share lock until the transaction ends.
pub async fn check(
    tx: &impl GenericClient,
    fence: &Fence,
) -> Result<Result<(), StorageError>, tokio_postgres::Error> {
    let Some(mine) = fence.generation() else {
        return Ok(Err(StorageError::Fenced(
            "this replica does not lead".into(),
        )));
    };
    let row = tx
        .query_one(
            "SELECT generation, holder FROM hartslag_leader WHERE id = 1 FOR SHARE",
            &[],
        )
        .await?;
    let (current, holder): (i64, String) = (row.get(0), row.get(1));
    if u64::try_from(current).ok() == Some(mine) {
        return Ok(Ok(()));
    }
    fence.depose();
    Ok(Err(StorageError::Fenced(format!(
        "this replica led under generation {mine}; {holder} has led since (generation {current})"
    ))))
}
