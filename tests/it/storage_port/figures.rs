//! Pings per second through the monitor engine on sled and on PostgreSQL, side by side:
//! 10 000 monitors (`FIGURES_MONITORS`) on each, pinged by 64 concurrent callers for a few
//! seconds at a time, the backends interleaved, twice each; for PostgreSQL also the
//! rounds per transaction and the time a round's transaction took. Figures, not targets:
//!
//! `cargo test --test it storage_port::figures -- --ignored --nocapture`
//!
//! It checks that every acknowledged ping is counted in its monitor's state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hartslag::core::alert::outbox::{Outbox, OutboxConfig};
use hartslag::core::monitor::engine::{Engine, EngineConfig, PingKind};
use hartslag::core::monitor::schedule::Clock;
use hartslag::core::storage::{Fence, MonitorStorage};
use hartslag::core::store_pg::RoundStats;

const CALLERS: usize = 64;
const PHASE: Duration = Duration::from_secs(4);

fn engine_on(storage: MonitorStorage) -> Engine {
    let outbox = Outbox::new(storage.outbox, OutboxConfig::default());
    let config = EngineConfig {
        ping_history: 10,
        // Nothing falls due: the figures are of pings alone.
        hold_deadlines: true,
        ..EngineConfig::default()
    };
    Engine::start(storage.monitors, outbox, config, Clock::new()).unwrap()
}

async fn define(engine: &Engine, n: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("default/m{i}")).collect();
    let defined = futures::stream::iter(0..n)
        .map(|i| engine.upsert(super::monitor(&format!("m{i}"))))
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    for d in defined {
        d.unwrap();
    }
    keys
}

/// Pings the monitors from [`CALLERS`] callers for [`PHASE`]; how many were answered.
async fn ping_phase(engine: &Engine, keys: &Arc<Vec<String>>) -> (u64, Duration) {
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let callers = (0..CALLERS).map(|c| {
        let (engine, keys, count) = (engine.clone(), keys.clone(), count.clone());
        tokio::spawn(async move {
            let mut i = c;
            while started.elapsed() < PHASE {
                let key = &keys[i % keys.len()];
                engine
                    .ping(key, super::ping(PingKind::Success, "ok"))
                    .await
                    .unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                i += CALLERS;
            }
        })
    });
    for c in futures::future::join_all(callers).await {
        c.unwrap();
    }
    (count.load(Ordering::Relaxed), started.elapsed())
}

fn stats(s: &RoundStats) -> (u64, u64, u64) {
    (
        s.transactions.load(Ordering::Relaxed),
        s.rounds.load(Ordering::Relaxed),
        s.micros.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run on its own"]
async fn pings_per_second_through_the_engine_on_each_backend() {
    let n: usize = std::env::var("FIGURES_MONITORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let sled_dir = dir.path().join("sled");
    let options = hartslag::core::store::StoreOptions {
        cache_bytes: 64 << 20,
    };
    let sled = hartslag::core::store::port::open_monitors(&sled_dir, &options).unwrap();
    let url = crate::pg::database_for(&dir.path().join("pg"))
        .parse()
        .unwrap();
    let fence = Fence::follower();
    let pg = hartslag::core::store_pg::open_monitors(&url, fence.clone())
        .await
        .unwrap();
    hartslag::core::store_pg::lead_alone_at_start(&url, &fence)
        .await
        .unwrap();
    let round_stats = pg.monitors.round_stats();
    let engines = [
        ("sled", engine_on(sled)),
        ("postgres", engine_on(pg.storage())),
    ];
    let mut keys = None;
    for (name, engine) in &engines {
        let started = Instant::now();
        keys = Some(Arc::new(define(engine, n).await));
        println!(
            "{name}: {n} monitors defined in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let keys = keys.unwrap();
    let mut answered = [0u64; 2];
    for phase in 0..2 {
        for (i, (name, engine)) in engines.iter().enumerate() {
            let before = stats(&round_stats);
            let (count, took) = ping_phase(engine, &keys).await;
            answered[i] += count;
            let rate = count as f64 / took.as_secs_f64();
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let load = load.split_whitespace().next().unwrap_or("?").to_string();
            let mut line = format!("phase {phase} {name}: {rate:.0} pings/s (load {load})");
            if *name == "postgres" {
                let after = stats(&round_stats);
                let (tx, rounds, micros) =
                    (after.0 - before.0, after.1 - before.1, after.2 - before.2);
                line += &format!(
                    "; {tx} transactions, {:.1} rounds and {:.0} pings each, {:.2} ms per transaction",
                    rounds as f64 / tx.max(1) as f64,
                    count as f64 / tx.max(1) as f64,
                    micros as f64 / 1000.0 / tx.max(1) as f64
                );
            }
            println!("{line}");
        }
    }
    // Every acknowledged ping is in its monitor's state.
    for (i, (name, engine)) in engines.iter().enumerate() {
        let counted: u64 = keys
            .iter()
            .map(|k| engine.get(k).map_or(0, |m| m.state.pings))
            .sum();
        assert_eq!(counted, answered[i], "{name}");
    }
    let mut stored = 0;
    hartslag::core::storage::MonitorStore::load_monitors(pg.monitors.as_ref(), &mut |batch| {
        stored += batch.iter().map(|m| m.state.pings).sum::<u64>()
    })
    .unwrap();
    assert_eq!(stored, answered[1], "stored on PostgreSQL");
}
