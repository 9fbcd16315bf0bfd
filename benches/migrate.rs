//! `hartslag migrate --from-sled`: how long copying a sled directory into PostgreSQL takes,
//! and what it holds in memory, for a store of `BENCH_EVENTS` events.
//!
//! The directory is filled through the bulk path (`Store::load_events`, the records the
//! ingest writer commits) with three applications, a thousand users and twenty event names
//! over thirty days; then the migration runs as the command runs it, into a database the
//! bench creates on the server of `BENCH_DATABASE_URL` and drops afterwards. Each part is
//! one transaction, so the figure that matters besides the time is that memory stays flat:
//! rows are streamed from sled into `COPY`, never gathered.
//!
//! `BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench migrate`
//! (env: `BENCH_EVENTS`, default 1000000; `BENCH_DIR`, default a temporary directory).

use std::time::{Duration, Instant};

use hartslag::core::calendar::date_key;
use hartslag::core::migrate::{self, MigrateError};
use hartslag::core::storage::{EventValue, EventWrite};
use hartslag::core::store::{Store, StoreOptions};
use hartslag::core::store_pg::DatabaseUrl;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

const BATCH: u64 = 1024;

fn main() {
    let Ok(server) = std::env::var("BENCH_DATABASE_URL") else {
        eprintln!(
            "migrate bench: set BENCH_DATABASE_URL to a PostgreSQL server the bench may create a database on"
        );
        return;
    };
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(&server, events));
}

async fn run(server: &str, events: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("data"));
    let started = Instant::now();
    fill(&data, events).await;
    let fill_took = started.elapsed();
    let sled_bytes = du(&data);
    let rss_before = memory("VmRSS");

    let database = format!("hartslag_migrate_bench_{}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .expect("connect to BENCH_DATABASE_URL");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create the bench database");
    let url = match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{database}"),
        None => panic!("BENCH_DATABASE_URL names no database"),
    };
    let target: DatabaseUrl = url.parse().expect("database URL");

    let started = Instant::now();
    let report = loop {
        // The fill's store lets go of the directory once its threads have ended.
        match migrate::from_sled(&data, &target, "standalone").await {
            Err(MigrateError::Locked { .. }) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => break done.expect("migrate"),
        }
    };
    let took = started.elapsed();
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let size: i64 = db
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .expect("size")
        .get(0);
    drop(db);
    println!(
        "migrate: {events} events filled into sled in {:.1} s ({} MiB on disk)",
        fill_took.as_secs_f64(),
        sled_bytes >> 20
    );
    println!("{report}");
    println!(
        "migrate: {:.1} s in all, {:.0} events/s; database {} MiB; RSS {} MiB before, {} MiB after, peak {} MiB",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64(),
        size >> 20,
        rss_before >> 10,
        memory("VmRSS") >> 10,
        memory("VmHWM") >> 10,
    );
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .await;
}

/// Fills a sled store in `dir` with `events` events of three applications.
async fn fill(dir: &std::path::Path, events: u64) {
    let store = Store::open(dir, &StoreOptions::default()).expect("open sled");
    let now = Timestamp::now();
    let span = 30 * 86_400_000_000i64;
    let batches = (0..events.div_ceil(BATCH)).map(move |b| {
        (b * BATCH..((b + 1) * BATCH).min(events))
            .map(|i| {
                // Oldest first, as ingest would have stored them.
                let back = span - (i as i64).saturating_mul(span / events.max(1) as i64);
                let at = now
                    .checked_sub(SignedDuration::from_micros(back))
                    .unwrap_or(now);
                EventWrite {
                    app: 1 + i % 3,
                    at,
                    date: date_key(at.to_zoned(TimeZone::UTC).date()),
                    value: EventValue {
                        event: format!("event-{}", i % 20),
                        weight: (i % 7) as i64,
                        user_id: (i % 4 != 0).then_some((i % 1000) as i64),
                    },
                    idempotency: None,
                    name_limit: 100,
                }
            })
            .collect::<Vec<_>>()
    });
    let stored = store.load_events(batches).await.expect("bulk load");
    assert_eq!(stored, events);
}

/// A line of `/proc/self/status` in KiB.
fn memory(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            // Blocks taken, not the length: the monitors' state file is sparse.
            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            Err(_) => 0,
        })
        .sum()
}
