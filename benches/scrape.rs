//! `/metrics` with many monitors: 100 000 (`BENCH_MONITORS`) Heartbeats are defined in a
//! real engine, half of them pinged and a tenth left to go Down; then the whole `/metrics`
//! body (the registry's families and the per-monitor series) is encoded, as a scrape does.
//! Prints the first scrape (every monitor rendered), steady scrapes (nothing changed),
//! scrapes after 1 % of the monitors changed, and the body's size. Target: ≤ 250 ms.
//!
//! `cargo bench --bench scrape` (env: `BENCH_MONITORS`, `BENCH_ROUNDS` (5), `BENCH_DIR`,
//! default `target/scrape-bench`, deleted afterwards).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hartslag::config::ServerConfig;
use hartslag::core::metrics::encode_with;
use hartslag::core::monitor::engine::{DefRecord, MonitorDef, PingInput, PingKind};
use hartslag::core::token::TokenHash;
use hartslag::server::Server;

fn def(i: usize, now: jiff::Timestamp) -> MonitorDef {
    DefRecord {
        id: format!("{i:016x}"),
        name: format!("monitor-{i}"),
        grace_secs: 300,
        application: Some(format!("bench/app-{}", i % 100)),
        token: TokenHash::of(&format!("t{i}")),
        ..DefRecord::sample(&format!("bench/m{i}"), 3600, now)
    }
    .into()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let n: usize = common::env_or("BENCH_MONITORS", 100_000);
    let rounds: usize = common::env_or("BENCH_ROUNDS", 5);
    let root =
        std::path::PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/scrape-bench").into()
        }));
    let _ = std::fs::remove_dir_all(&root);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), root.join("data"));
        let mut server = Server::open(config).await.expect("open");
        let registry = std::mem::take(server.metrics());
        let core = Arc::new(server.core);
        println!(
            "scrape benchmark: {n} monitors; load average {}",
            common::load_average()
        );
        let now = jiff::Timestamp::now();
        let mut tasks = Vec::new();
        const CLIENTS: usize = 256;
        for w in 0..CLIENTS {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(CLIENTS) {
                    core.engine.upsert(def(i, now)).await.expect("upsert");
                    if i % 2 == 0 {
                        let kind = if i % 20 == 0 {
                            PingKind::Fail
                        } else {
                            PingKind::Success
                        };
                        let exit_code = (kind == PingKind::Fail).then_some(1);
                        let input = PingInput {
                            kind,
                            exit_code,
                            source: None,
                            user_agent: None,
                            body: None,
                            rid: None,
                            stopped_alert: None,
                        };
                        core.engine
                            .ping(&format!("bench/m{i}"), input)
                            .await
                            .expect("ping");
                    }
                }
            }));
        }
        for t in tasks.drain(..) {
            t.await.expect("task");
        }
        let registry = Arc::new(registry);
        let scrape = || {
            let started = Instant::now();
            let body = encode_with(&registry, |out| core.engine.series().write(out));
            (started.elapsed(), body)
        };
        let (first, body) = scrape();
        let samples = body.lines().filter(|l| !l.starts_with('#')).count();
        println!(
            "body: {:.1} MB, {samples} samples; first scrape (every monitor rendered): {:.0} ms",
            body.len() as f64 / 1e6,
            ms(first)
        );
        drop(body);
        let mut steady = Vec::new();
        let mut changed = Vec::new();
        for round in 0..rounds {
            steady.push(scrape().0);
            // 1 % of the monitors change between two scrapes.
            for i in (round..n).step_by(100) {
                let input = PingInput::success();
                core.engine
                    .ping(&format!("bench/m{i}"), input)
                    .await
                    .expect("ping");
            }
            changed.push(scrape().0);
        }
        let show = |v: &mut Vec<Duration>| {
            v.sort();
            format!(
                "median {:.0} ms, max {:.0} ms",
                ms(v[v.len() / 2]),
                ms(v[v.len() - 1])
            )
        };
        println!(
            "steady scrape (nothing changed), {rounds} rounds: {}",
            show(&mut steady)
        );
        println!(
            "scrape after 1 % changed, {rounds} rounds: {}",
            show(&mut changed)
        );
        println!("target: ≤ 250 ms per scrape");
    });
    let _ = std::fs::remove_dir_all(&root);
}
