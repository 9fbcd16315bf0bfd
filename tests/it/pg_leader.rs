//! The leader row fences leader-only writes: a take-over makes every later check by the
//! deposed leader fail (and tells its fence), and waits for the deposed leader's
//! transaction in flight instead of overtaking it.

use std::time::Duration;

use hartslag::core::storage::{Fence, StorageError};
use hartslag::core::store_pg::leader;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_fences_the_deposed_leader_and_waits_for_its_transaction() {
    let server = crate::pg::shared();
    let url = server.database("leader_fence");
    // The schema, migrations included.
    let url_parsed = url.parse().unwrap();
    drop(
        hartslag::core::store_pg::open(
            &url_parsed,
            &mut hartslag::core::metrics::MetricRegistry::default(),
        )
        .await
        .unwrap(),
    );
    let mut first = connect(&url).await;
    let second = connect(&url).await;

    let old = Fence::follower();
    let refused = leader::check(&first, &old).await.unwrap();
    assert!(
        matches!(refused, Err(StorageError::Fenced(_))),
        "{refused:?}"
    );
    old.lead(leader::take_over(&first, "replica-a").await.unwrap());

    // The old leader is inside a leader-only transaction when the new one takes over.
    let tx = first.transaction().await.unwrap();
    leader::check(&tx, &old).await.unwrap().unwrap();
    let take = tokio::spawn(async move { leader::take_over(&second, "replica-b").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !take.is_finished(),
        "the take-over overtook a transaction in flight"
    );
    tx.commit().await.unwrap();
    let new_generation = tokio::time::timeout(Duration::from_secs(10), take)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(Some(new_generation), old.generation().map(|g| g + 1));

    // Every check the deposed leader makes from now on is refused, and names who leads.
    let refused = leader::check(&first, &old).await.unwrap();
    match refused {
        Err(StorageError::Fenced(why)) => assert!(why.contains("replica-b"), "{why}"),
        other => panic!("the deposed leader passed the check: {other:?}"),
    }
    assert_eq!(old.generation(), None, "the fence was not told");
}
