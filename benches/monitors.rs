//! Scale benchmark for the dead-man's switch: 100 000 monitors (`BENCH_MONITORS`; the
//! target is for 1 000 000) are defined and pinged, their deadlines spread over the
//! seconds the pings take; then every one misses its deadline. Prints process RSS (and its
//! peak; target ≤ 1 GB), Down transitions per second and the p99 lateness of Down
//! transitions behind their due time (target ≤ 1 s), the disk's and the commit log's flush
//! latency; then a new process opens the store and prints how long the monitors take to
//! load (target ≤ 10 s).
//!
//! A third of the monitors (every `BENCH_SCHEDULED_EVERY`th, 3; 0 for none) are on the
//! cron schedule `* * * * *`, each parsed from its text as definitions are (equal
//! schedules share one parsed form), due at the next whole minute after their ping with a
//! grace of 0 to 9 s: a herd of Down transitions at each of ten instants, as at the top of
//! every hour in a real cluster.
//!
//! `cargo bench --bench monitors` (env: `BENCH_MONITORS`, `BENCH_INTERVAL_SECS` (20),
//! `BENCH_SCHEDULED_EVERY` (3),
//! `BENCH_CACHE_MB`, `BENCH_DIR`, default `target/monitors-bench`, deleted afterwards
//! unless `BENCH_KEEP=1`).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hartslag::config::ServerConfig;
use hartslag::core::cron::Schedule;
use hartslag::core::monitor::engine::{MonitorDef, Origin, PingInput, PingKind};
use hartslag::core::monitor::state::State;
use hartslag::core::token::TokenHash;
use hartslag::server::Server;

/// A `/proc/self/status` figure in MB (`VmRSS`, `VmHWM`).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn config(data: &std::path::Path) -> ServerConfig {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), data.to_path_buf());
    config.min_interval = hartslag::core::duration::SpecDuration::from_secs(1);
    if let Some(mb) = std::env::var("BENCH_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.cache_bytes = mb * 1024 * 1024;
    }
    config
}

/// Restart mode (a process of its own, after the run's process released the store):
/// opens the store the run left and times how long the monitors take to load.
fn restart(data: &str) {
    // The store and the engine log how long each part of the start took.
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let before = rss_mb();
        let started = Instant::now();
        let server = Server::open(config(std::path::Path::new(data))).await.expect("open");
        let took = started.elapsed();
        let loaded: usize = server.core.engine.counts().values().sum();
        println!(
            "restart: {loaded} monitors loaded in {:.2} s (target ≤ 10 s: {}); RSS {:.0} MB after loading ({before:.0} MB before)",
            took.as_secs_f64(),
            if took <= Duration::from_secs(10) { "met" } else { "NOT met" },
            rss_mb()
        );
    });
}

/// Runs this binary again with `var` set to `data`: the run, then the restart, each in a
/// process of its own so the store is released in between.
fn child(var: &str, data: &std::path::Path) {
    let status = std::process::Command::new(std::env::current_exe().expect("own executable"))
        .env(var, data)
        .status()
        .expect("start the benchmark process");
    assert!(status.success(), "{var} failed: {status}");
}

fn main() {
    if let Ok(data) = std::env::var("MONITORS_RUN") {
        return run(&data);
    }
    if let Ok(data) = std::env::var("MONITORS_RESTART") {
        return restart(&data);
    }
    let root =
        std::path::PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/monitors-bench").into()
        }));
    let _ = std::fs::remove_dir_all(&root);
    child("MONITORS_RUN", &root.join("data"));
    child("MONITORS_RESTART", &root.join("data"));
    if std::env::var("BENCH_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Defines, pings and lets every monitor go Down, in this process.
fn run(data: &str) {
    let n: usize = common::env_or("BENCH_MONITORS", 100_000);
    let interval: u64 = common::env_or("BENCH_INTERVAL_SECS", 20);
    let scheduled_every: usize = common::env_or("BENCH_SCHEDULED_EVERY", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let server = Server::open(config(std::path::Path::new(data))).await.expect("open");
        let services = server.core.clone();
        let core = Arc::new(server.core);
        let probe = common::flush_probe(std::path::Path::new(data), 200);
        println!("disk probe: fdatasync {}; load average {}", common::describe_flushes(&probe), common::load_average());
        let share = if scheduled_every > 0 { format!("1 in {scheduled_every}") } else { "none".into() };
        println!("monitor scale benchmark: {n} monitors on interval {interval}s with grace 0s, {share} of them on schedule \"* * * * *\" with grace 0-9s instead");
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
                let scheduled = scheduled_every > 0 && i % scheduled_every == 0;
                let def = MonitorDef {
                    key: format!("bench/m{i}"),
                    id: format!("{i:016x}"),
                    namespace: "bench".into(),
                    name: format!("m{i}"),
                    display_name: None,
                    interval_secs: if scheduled { 60 } else { interval },
                    grace_secs: if scheduled { i as u64 % 10 } else { 0 },
                    schedule: scheduled.then(|| Schedule::parse("* * * * *", None).expect("schedule")),
                    max_duration_secs: None,
                    cron_job: None,
                    require_ping: false,
                    paused: false,
                    targets: Vec::new(),
                    alerting: Default::default(),
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

        println!("RSS with {n} monitors defined: {:.0} MB", rss_mb());
        let flushes = services.commit_stats().flush.snapshot();
        let threads = common::Threads::of("self");
        let started = Instant::now();
        for w in 0..CLIENTS {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(CLIENTS) {
                    let input = PingInput { kind: PingKind::Success, exit_code: None, rid: None, source: None, user_agent: None, body: None };
                    core.engine.ping(&format!("bench/m{i}"), input).await.expect("ping");
                }
            }));
        }
        for t in tasks.drain(..) {
            t.await.expect("task");
        }
        let ping_secs = started.elapsed().as_secs_f64();
        println!("pinged {n} monitors in {ping_secs:.1} s ({:.0} pings/s); deadlines spread over that span", n as f64 / ping_secs);
        let flushes = services.commit_stats().flush.snapshot().since(&flushes);
        println!("commit log during the pings: fdatasync {} over {} flushes", common::describe_flushes(&flushes), flushes.count());
        println!("CPU µs per ping by thread: {}", common::Threads::of("self").since(&threads).per(n as f64));
        let threads = common::Threads::of("self");
        println!("RSS with {n} monitors loaded: {:.0} MB", rss_mb());

        // Wait until every monitor is Down (deadline + a generous margin).
        // A scheduled monitor is due up to a minute after its ping, plus its grace.
        let latest = if scheduled_every > 0 { interval.max(70) } else { interval };
        let deadline = Instant::now() + Duration::from_secs(latest + ping_secs as u64 + 120);
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
        println!("CPU µs per transition by thread (with the bench's polling): {}", common::Threads::of("self").since(&threads).per(transitions as f64));
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
        println!(
            "Down lateness behind due time: p50 <= {} s, p99 <= {} s (histogram bucket bounds, {count} samples; target p99 ≤ 1 s: {})",
            p(0.5),
            p(0.99),
            if p(0.99) <= 1.0 { "met" } else { "NOT met" }
        );
        let peak = status_mb("VmHWM:");
        println!(
            "RSS at end: {:.0} MB, peak {peak:.0} MB (target ≤ 1024 MB: {})",
            rss_mb(),
            if peak <= 1024.0 { "met" } else { "NOT met" }
        );
    });
}
