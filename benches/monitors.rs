//! Scale benchmark for the dead-man's switch: 100 000 monitors (`BENCH_MONITORS`) are
//! defined and pinged, their deadlines spread over the seconds the pings take; then every
//! one misses its deadline. Prints process RSS, Down transitions per second and the p99
//! lateness of Down transitions behind their due time.
//!
//! `cargo bench --bench monitors`

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hartslag::config::ServerConfig;
use hartslag::core::monitor::engine::{MonitorDef, Origin, PingInput, PingKind};
use hartslag::core::monitor::state::State;
use hartslag::core::token::TokenHash;
use hartslag::server::Server;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let n: usize = common::env_or("BENCH_MONITORS", 100_000);
    let interval: u64 = common::env_or("BENCH_INTERVAL_SECS", 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), dir.path().join("data"));
        config.min_interval = hartslag::core::duration::SpecDuration::from_secs(1);
        if let Some(mb) = std::env::var("BENCH_CACHE_MB").ok().and_then(|v| v.parse::<u64>().ok()) {
            config.cache_bytes = mb * 1024 * 1024;
        }
        let core = Arc::new(Server::open(config).expect("open").core);
        println!("monitor scale benchmark: {n} monitors, interval {interval}s, grace 0s");
        println!("RSS at start: {:.0} MB", rss_mb());

        let now = jiff::Timestamp::now();
        let started = Instant::now();
        // 512 client tasks, each defining every 512th monitor: the client side of the
        // benchmark stays small, so the RSS printed is the server's.
        const CLIENTS: usize = 512;
        let mut tasks = Vec::with_capacity(CLIENTS);
        for w in 0..CLIENTS {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
              for i in (w..n).step_by(CLIENTS) {
                let def = MonitorDef {
                    key: format!("bench/m{i}"),
                    id: format!("{i:016x}"),
                    namespace: "bench".into(),
                    name: format!("m{i}"),
                    display_name: None,
                    interval_secs: interval,
                    grace_secs: 0,
                    paused: false,
                    targets: Vec::new(),
                    application: None,
                    token: TokenHash::of(&format!("t{i}")),
                    ping_hint: String::new(),
                    origin: Origin::Api,
                    retain_on_delete: false,
                    created_at: now,
                    updated_at: now,
                };
                core.engine.upsert(def).await.expect("upsert");
              }
            }));
        }
        for t in tasks.drain(..) {
            t.await.expect("task");
        }
        println!("defined {n} monitors in {:.1} s ({:.0}/s)", started.elapsed().as_secs_f64(), n as f64 / started.elapsed().as_secs_f64());

        let started = Instant::now();
        for w in 0..CLIENTS {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(CLIENTS) {
                    let input = PingInput { kind: PingKind::Success, exit_code: None, source: None, user_agent: None, body: None };
                    core.engine.ping(&format!("bench/m{i}"), input).await.expect("ping");
                }
            }));
        }
        for t in tasks.drain(..) {
            t.await.expect("task");
        }
        let ping_secs = started.elapsed().as_secs_f64();
        println!("pinged {n} monitors in {ping_secs:.1} s ({:.0} pings/s); deadlines spread over that span", n as f64 / ping_secs);
        println!("RSS with {n} monitors loaded: {:.0} MB", rss_mb());

        // Wait until every monitor is Down (deadline + a generous margin).
        let deadline = Instant::now() + Duration::from_secs(interval + ping_secs as u64 + 120);
        let mut first_down: Option<Instant> = None;
        loop {
            let down = core.engine.counts().get(&State::Down).copied().unwrap_or(0);
            if down > 0 && first_down.is_none() {
                first_down = Some(Instant::now());
            }
            if down == n {
                break;
            }
            assert!(Instant::now() < deadline, "only {down} of {n} monitors went Down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let span = first_down.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0).max(0.001);
        let transitions = core.engine.stats.transitions.load(Ordering::Relaxed);
        println!("{transitions} Down transitions over {span:.2} s: {:.0} transitions/s", transitions as f64 / span);
        let mut text = String::new();
        core.engine.stats.down_lateness.render("lateness", "", &mut text);
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        let mut count = 0u64;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("lateness_bucket{le=\"") {
                let (le, v) = rest.split_once("\"} ").unwrap_or(("0", "0"));
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(0.0) };
                buckets.push((le, v.parse().unwrap_or(0)));
            }
            if let Some(c) = line.strip_prefix("lateness_count ") {
                count = c.parse().unwrap_or(0);
            }
        }
        let p = |q: f64| buckets.iter().find(|(_, c)| *c as f64 >= q * count as f64).map(|(le, _)| *le).unwrap_or(f64::NAN);
        println!("Down lateness behind due time: p50 <= {} s, p99 <= {} s (histogram bucket bounds, {count} samples)", p(0.5), p(0.99));
        println!("RSS at end: {:.0} MB", rss_mb());
    });
}
