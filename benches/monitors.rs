//! Scale benchmark for the dead-man's switch: 100 000 monitors (`BENCH_MONITORS`; the
//! target is for 1 000 000) are defined and pinged, their deadlines spread over the
//! seconds the pings take; then every one misses its deadline. Prints process RSS (and its
//! peak; target ≤ 1 GB), Down transitions per second and the p99 lateness of Down
//! transitions behind their due time (target ≤ 1 s), the disk's and the commit log's flush
//! latency; then the run flushes the store as a stopping server does, and a new process
//! opens it and prints how long the monitors take to load (target ≤ 10 s).
//!
//! A third of the monitors (every `BENCH_SCHEDULED_EVERY`th, 3; 0 for none) are on the
//! cron schedule `* * * * *`, each parsed from its text as definitions are (equal
//! schedules share one parsed form), due at the next whole minute after their ping with a
//! grace of 0 to 9 s: a herd of Down transitions at each of ten instants, as at the top of
//! every hour in a real cluster. `BENCH_GRACES` sets how many graces they spread over
//! (10); with 1 the whole scheduled third is due Down at once, a herd of monitors that
//! sit side by side in the store (every third).
//!
//! Where the whole minute falls in the ping phase decides how hard a run is: at a minute
//! 30–40 s into it, the whole scheduled third is due at once (those pinged before it, and
//! those not pinged yet since they were defined), on top of the interval monitors' Downs
//! and the pings; earlier, fewer are due and no interval monitor yet. So the run starts
//! defining at a fixed second of the minute (`BENCH_START_SECOND`, 0; a million take about 20 s to
//! define, so the minute falls 35–40 s into the ping phase), and says where it fell.
//!
//! Pings keep coming while the monitors go Down, as in production: a hundredth of the
//! monitors again (`BENCH_STEADY`), on a one-hour interval, are pinged by 64 clients as
//! fast as the server answers from the start of the ping phase until the last Down.
//!
//! Lateness is the time from a Down's due time (its deadline plus grace) to the moment the
//! round holding it is on disk and readers see it; quantiles are read from buckets about
//! 3 % wide, printed for the Downs applied during the ping phase and after it, each with
//! where it built up: by the engine thread's step, and on the way there for the Downs the
//! scheduler fired (see [`Stages`]).
//!
//! How fast the host is decides how near the herd's Downs come to their target: on shared
//! machines that drifts by the hour. `BENCH_BUSY=1` makes a slow hour on purpose: a
//! process of its own computes without pause for the whole run, taking about a core.
//!
//! `cargo bench --bench monitors` (env: `BENCH_MONITORS`, `BENCH_INTERVAL_SECS` (20),
//! `BENCH_SCHEDULED_EVERY` (3), `BENCH_GRACES` (10), `BENCH_STEADY` (monitors / 100), `BENCH_BUSY` (0), `BENCH_START_SECOND` (0;
//! any other value than 0–59 starts at once),
//! `BENCH_CACHE_MB`, `BENCH_DIR`, default `target/monitors-bench`, deleted afterwards
//! unless `BENCH_KEEP=1`). `BENCH_SIZES=1` prints instead what each in-memory structure
//! of the engine holds per monitor.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hartslag::config::ServerConfig;
use hartslag::core::cron::Schedule;
use hartslag::core::monitor::engine::{DefRecord, EngineStats, MonitorDef, PingInput};
use hartslag::core::monitor::state::State;
use hartslag::core::store::latency::{LatencyRecord, LatencySnapshot};
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

/// `p50 …, p90 …, p99 …, max …` seconds of a set of lateness observations.
fn describe_lateness(s: &LatencySnapshot) -> String {
    let q = |q: f64| s.quantile(q).map_or(f64::NAN, |d| d.as_secs_f64());
    format!(
        "{} Downs: p50 {:.3} s, p90 {:.3} s, p99 {:.3} s, max {:.3} s",
        s.count(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    )
}

/// A monitor's definition as the benchmark defines it: `scheduled` ones on `* * * * *`.
/// How many graces the scheduled monitors spread over (`BENCH_GRACES`, 10: 0 to 9 s; 1:
/// none, so the whole scheduled third is due Down in the same instant).
/// Where a Down's lateness built up: on its way to the engine thread, before the engine
/// stepped it, and what the engine thread did with its time meanwhile.
#[derive(Default)]
struct Stages {
    arrived: LatencySnapshot,
    stepped: LatencySnapshot,
    room_wait: u64,
    gathered: u64,
    gather_wait: u64,
    direct: u64,
    idle: u64,
}

impl Stages {
    fn of(stats: &EngineStats) -> Self {
        Self {
            arrived: stats.down_arrived_record.snapshot(),
            stepped: stats.down_stepped_record.snapshot(),
            room_wait: stats.room_wait_micros.load(Ordering::Relaxed),
            gathered: stats.gathered.load(Ordering::Relaxed),
            gather_wait: stats.gather_micros.load(Ordering::Relaxed),
            direct: stats.direct_rounds.load(Ordering::Relaxed),
            idle: stats.idle_micros.load(Ordering::Relaxed),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            arrived: self.arrived.since(&before.arrived),
            stepped: self.stepped.since(&before.stepped),
            room_wait: self.room_wait - before.room_wait,
            gathered: self.gathered - before.gathered,
            gather_wait: self.gather_wait - before.gather_wait,
            direct: self.direct - before.direct,
            idle: self.idle - before.idle,
        }
    }

    fn print(&self) {
        println!(
            "  of which when the engine stepped them: {}",
            describe_lateness(&self.stepped)
        );
        println!(
            "  Downs the scheduler fired, when they reached the engine thread: {}",
            describe_lateness(&self.arrived)
        );
        println!(
            "  the engine thread waited {:.1} s for the store's room, {:.1} s for the rounds ahead \
             ({} small rounds gathered), {:.1} s with nothing to do; it handed {} small rounds to the store itself",
            self.room_wait as f64 / 1e6,
            self.gather_wait as f64 / 1e6,
            self.gathered,
            self.idle as f64 / 1e6,
            self.direct
        );
    }
}

fn graces() -> u64 {
    common::env_or::<u64>("BENCH_GRACES", 10).max(1)
}

fn bench_def(i: usize, scheduled: bool, interval: u64, now: jiff::Timestamp) -> MonitorDef {
    let interval_secs = if scheduled { 60 } else { interval };
    DefRecord {
        id: format!("{i:016x}"),
        grace_secs: if scheduled { i as u64 % graces() } else { 0 },
        schedule: scheduled.then(|| Schedule::parse("* * * * *", None).expect("schedule")),
        token: TokenHash::of(&format!("t{i}")),
        ..DefRecord::sample(&format!("bench/m{i}"), interval_secs, now)
    }
    .into()
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

/// Processes that take a CPU each from the run (`BENCH_BUSY`), as a busy neighbour on a
/// shared host does in a slow hour, so a run can tell whether the targets hold then, at
/// any hour. Stopped when dropped, also when a run fails.
struct Busy(Vec<std::process::Child>);

impl Busy {
    fn start(n: usize) -> Self {
        if n > 0 {
            println!(
                "contention: {n} busy process(es) compete for the CPUs throughout (BENCH_BUSY)"
            );
        }
        Self(
            (0..n)
                .map(|_| {
                    std::process::Command::new(std::env::current_exe().expect("own executable"))
                        .env("MONITORS_BUSY", "1")
                        .spawn()
                        .expect("start a busy process")
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Busy mode (`MONITORS_BUSY`): computes until killed.
fn busy() {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
}

/// Sizes mode (`BENCH_SIZES=1`, a process of its own): what each in-memory structure of
/// the engine holds per monitor, built alone from `BENCH_MONITORS` definitions as the run
/// makes them, measured as the growth of resident memory.
fn sizes() {
    use hartslag::core::monitor::engine::{Monitor, Monitors};
    use hartslag::core::monitor::schedule::DeadlineQueue;
    use hartslag::core::monitor::state::MonitorState;
    let n: usize = common::env_or("BENCH_MONITORS", 100_000);
    let every: usize = common::env_or("BENCH_SCHEDULED_EVERY", 3);
    let now = jiff::Timestamp::now();
    println!(
        "sizes: Monitor {} bytes inline (MonitorDef {}, field by field as stored {}; MonitorState {})",
        std::mem::size_of::<Monitor>(),
        std::mem::size_of::<MonitorDef>(),
        std::mem::size_of::<DefRecord>(),
        std::mem::size_of::<MonitorState>()
    );
    let per = |before: f64| (rss_mb() - before) * 1024.0 * 1024.0 / n as f64;
    let before = rss_mb();
    let monitors: Monitors = (0..n)
        .map(|i| Monitor {
            num: i as u64 + 1,
            def: bench_def(i, every > 0 && i % every == 0, 20, now),
            state: MonitorState::new(now),
            last_run_ms: None,
        })
        .collect();
    println!(
        "sizes: the readers' snapshot (boxed monitors by key): {:.0} bytes per monitor",
        per(before)
    );
    let before = rss_mb();
    let mut by_key = DeadlineQueue::<String>::new();
    for m in monitors.values() {
        by_key.arm(m.def.key.clone(), now);
    }
    println!(
        "sizes: a deadline queue of keys and timestamps: {:.0} bytes per monitor",
        per(before)
    );
    let before = rss_mb();
    let mut boxed = DeadlineQueue::<Box<str>, i64>::new();
    for m in monitors.values() {
        boxed.arm(m.def.key.as_str().into(), now.as_microsecond());
    }
    println!(
        "sizes: a queue of boxed keys and microseconds: {:.0} bytes per monitor",
        per(before)
    );
    let before = rss_mb();
    let mut shared = DeadlineQueue::<Arc<str>, i64>::new();
    for m in monitors.values() {
        shared.arm(m.def.key.as_str().into(), now.as_microsecond());
        // Re-armed with a fresh copy, as every ping does: the queue keeps one.
        shared.arm(m.def.key.as_str().into(), now.as_microsecond() + 1);
    }
    println!(
        "sizes: the scheduler's queue (one shared key per monitor, microseconds): {:.0} bytes per monitor",
        per(before)
    );
    let before = rss_mb();
    let mut by_num = DeadlineQueue::<u64, i64>::new();
    for m in monitors.values() {
        by_num.arm(m.num, now.as_microsecond());
    }
    println!(
        "sizes: a queue of monitor numbers and microseconds: {:.0} bytes per monitor",
        per(before)
    );
    drop((by_key, boxed, shared, by_num, monitors));
}

fn main() {
    if std::env::var("BENCH_SIZES").is_ok_and(|v| v == "1") {
        return sizes();
    }
    if std::env::var("MONITORS_BUSY").is_ok() {
        return busy();
    }
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
    let busy = Busy::start(common::env_or("BENCH_BUSY", 0));
    child("MONITORS_RUN", &root.join("data"));
    child("MONITORS_RESTART", &root.join("data"));
    drop(busy);
    if std::env::var("BENCH_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Defines, pings and lets every monitor go Down, in this process.
fn run(data: &str) {
    let n: usize = common::env_or("BENCH_MONITORS", 100_000);
    let interval: u64 = common::env_or("BENCH_INTERVAL_SECS", 20);
    let scheduled_every: usize = common::env_or("BENCH_SCHEDULED_EVERY", 3);
    let steady: usize = common::env_or("BENCH_STEADY", n / 100);
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
        println!("monitor scale benchmark: {n} monitors on interval {interval}s with grace 0s, {share} of them on schedule \"* * * * *\" with grace 0-9s instead; {steady} more on interval 3600s pinged throughout");
        println!("RSS at start: {:.0} MB", rss_mb());

        // Where the whole minute falls in the ping phase decides how hard the run is (see
        // the module's doc): start at a fixed second of the minute, so runs compare.
        let start_second: i64 = common::env_or("BENCH_START_SECOND", 0);
        if scheduled_every > 0 && (0..60).contains(&start_second) {
            let wait = (start_second - jiff::Timestamp::now().as_second().rem_euclid(60)).rem_euclid(60);
            println!("waiting {wait} s to start at second {start_second} of a minute");
            tokio::time::sleep(std::time::Duration::from_secs(wait as u64)).await;
        }
        let now = jiff::Timestamp::now();
        let started = Instant::now();
        // 512 client tasks, each defining every 512th monitor: the client side of the
        // benchmark stays small, so the RSS printed is the server's.
        const CLIENTS: usize = 512;
        let mut tasks = Vec::with_capacity(CLIENTS);
        for w in 0..CLIENTS {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
              for i in (w..n + steady).step_by(CLIENTS) {
                let scheduled = i < n && scheduled_every > 0 && i % scheduled_every == 0;
                let def = bench_def(i, scheduled, if i < n { interval } else { 3600 }, now);
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
        let minute_into = (scheduled_every > 0).then(|| 60 - jiff::Timestamp::now().as_second().rem_euclid(60));
        if let Some(into) = minute_into {
            println!("the next whole minute falls {into} s into the ping phase: every scheduled monitor not pinged by then, and every one pinged before it, is due then");
        }
        // The steady pings: 64 clients, each on its own share of the extra monitors, until
        // every benchmark monitor is Down.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let steady_latency = Arc::new(LatencyRecord::default());
        let mut steady_tasks = Vec::new();
        for w in 0..64.min(steady) {
            let (core, stop, latency) = (core.clone(), stop.clone(), steady_latency.clone());
            steady_tasks.push(tokio::spawn(async move {
                let mut i = n + w;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    core.engine.ping(&format!("bench/m{i}"), PingInput::success()).await.expect("steady ping");
                    latency.observe(t.elapsed());
                    i = if i + 64 < n + steady { i + 64 } else { n + w };
                }
            }));
        }
        for w in 0..CLIENTS {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(CLIENTS) {
                    core.engine.ping(&format!("bench/m{i}"), PingInput::success()).await.expect("ping");
                }
            }));
        }
        for t in tasks.drain(..) {
            t.await.expect("task");
        }
        let ping_secs = started.elapsed().as_secs_f64();
        println!("pinged {n} monitors in {ping_secs:.1} s ({:.0} pings/s); deadlines spread over that span", n as f64 / ping_secs);
        // Which of the two runs this was (docs/benchmarks.md): the scheduled herd meets
        // either the ping flood or the interval monitors' Downs after it.
        if let Some(into) = minute_into {
            let after = into as f64 - ping_secs;
            if after > 0.0 {
                println!("the scheduled herd falls {after:.1} s after the ping phase ends");
            } else {
                println!("the scheduled herd falls inside the ping phase, {:.1} s before it ends", -after);
            }
        }
        let flushes = services.commit_stats().flush.snapshot().since(&flushes);
        println!("commit log during the pings: fdatasync {} over {} flushes", common::describe_flushes(&flushes), flushes.count());
        println!("CPU µs per ping by thread: {}", common::Threads::of("self").since(&threads).per(n as f64));
        let threads = common::Threads::of("self");
        println!("RSS with {n} monitors loaded: {:.0} MB", rss_mb());
        let lateness = &core.engine.stats.down_lateness_record;
        let late_in_pings = lateness.snapshot();
        println!("Down lateness during the ping phase: {}", describe_lateness(&late_in_pings));
        let stages_in_pings = Stages::of(&core.engine.stats);
        stages_in_pings.since(&Stages::default()).print();
        let checkpoints = services.commit_stats().checkpoint_time.snapshot();
        let steady_before = steady_latency.snapshot();
        let down_phase = Instant::now();

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
        stop.store(true, Ordering::Relaxed);
        let steady_pings = steady_latency.snapshot().since(&steady_before);
        println!(
            "steady pings during the Down phase: {:.0}/s, latency {}",
            steady_pings.count() as f64 / down_phase.elapsed().as_secs_f64(),
            common::describe_flushes(&steady_pings)
        );
        for t in steady_tasks {
            t.await.expect("steady task");
        }
        let checkpoints = services.commit_stats().checkpoint_time.snapshot().since(&checkpoints);
        println!(
            "checkpoints during the Down phase (writes wait meanwhile): {}, each p50 {:.0} ms, max {:.0} ms",
            checkpoints.count(),
            checkpoints.quantile(0.5).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            checkpoints.quantile(1.0).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        let all = lateness.snapshot();
        println!("Down lateness after the ping phase: {}", describe_lateness(&all.since(&late_in_pings)));
        Stages::of(&core.engine.stats).since(&stages_in_pings).print();
        let p99 = all.quantile(0.99).map_or(f64::NAN, |d| d.as_secs_f64());
        println!(
            "Down lateness behind due time + grace, to on disk and seen, whole run: {} (target p99 ≤ 1 s: {}; load average {})",
            describe_lateness(&all),
            if p99 <= 1.0 { "met" } else { "NOT met" },
            common::load_average()
        );
        let peak = status_mb("VmHWM:");
        println!(
            "RSS at end: {:.0} MB, peak {peak:.0} MB (target ≤ 1024 MB: {})",
            rss_mb(),
            if peak <= 1024.0 { "met" } else { "NOT met" }
        );
        // Stopped as the server stops (a final flush: the restart replays no log).
        let flushing = Instant::now();
        services.flush().await.expect("final flush");
        println!("final flush before the restart: {:.2} s", flushing.elapsed().as_secs_f64());
    });
}
