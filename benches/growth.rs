//! Growth benchmark: does the store slow down as it fills? A store is filled to each step
//! (10 M and 50 M events by default) and, at each step, measured in interleaved rounds
//! against a fresh empty store in the same run: durable ingest events/s and p99 (64
//! keep-alive connections from a load-generator process), `stats` p99, export time to first
//! byte, start-up time and bytes per event on disk. Then a day of events (the first step's
//! worth, on the oldest day) falls out of retention and is purged while ingest runs, and
//! the ingest p99 during the purge is printed (target ≤ 20 ms).
//!
//! Both stores run as real `hartslag standalone` processes, restarted at each step (that
//! is the start-up time: process start until `/readyz` answers). The fill uses the bulk
//! path (`Store::load_events`): the same records the ingest writer commits for batches of
//! `BENCH_FILL_BATCH` events (the group size the ingest benchmark sees), written straight
//! into sled without the commit log (a unit test checks the two store the same keys and
//! values). Events of the first step lie on one day ten days ago, later ones spread over
//! the last seven days, so retention can drop exactly that day.
//!
//! `cargo bench --bench growth`. Env: `BENCH_GROWTH_STEPS` (events, comma-separated,
//! default `10000000,50000000`; `1000000,2000000` for a quick run), `BENCH_ROUNDS` (3),
//! `BENCH_SECONDS` (3 per round and store), `BENCH_CONNECTIONS` (64), `BENCH_FILL_BATCH`
//! (32), `BENCH_DIR` (default `target/growth-bench`, deleted afterwards unless
//! `BENCH_KEEP=1`). Needs about 70 bytes of disk per event.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::loadgen::{Load, Outcome, run_load};
use common::server::ServerProcess;
use hartslag::core::calendar::{date_key, local_date};
use hartslag::core::limits::AppLimits;
use hartslag::core::storage::{EventValue, EventWrite};
use hartslag::core::store::{Store, StoreOptions};
use jiff::{SignedDuration, Timestamp};

const APP: &str = "growth";
const BODY: &str = r#"{"event":"bench-event","weight":3,"user_id":42}"#;

/// Where the events of the fill lie in time.
#[derive(Clone, Copy)]
struct Layout {
    /// Events on the old day (the first step's worth).
    old_day_events: u64,
    /// Events in all, after the last step.
    total: u64,
    /// Midnight (UTC) starting the old day, ten days ago.
    old_day: Timestamp,
    /// Later events spread from here (seven days ago) …
    recent_from: Timestamp,
    /// … to here (an hour ago).
    recent_to: Timestamp,
}

impl Layout {
    fn new(old_day_events: u64, total: u64) -> Self {
        let now = Timestamp::now();
        let today = now.as_second() - now.as_second().rem_euclid(86_400);
        let day = |d: i64| Timestamp::from_second(today - d * 86_400).expect("day");
        Self {
            old_day_events,
            total,
            old_day: day(10),
            recent_from: day(7),
            recent_to: now - SignedDuration::from_hours(1),
        }
    }

    /// Time of event number `i`: evenly spread over the old day, then over the recent days.
    fn at(&self, i: u64) -> Timestamp {
        let (from, span, n, k) = if i < self.old_day_events {
            (self.old_day, 86_400_000_000i64, self.old_day_events, i)
        } else {
            let span = self.recent_to.as_microsecond() - self.recent_from.as_microsecond();
            (
                self.recent_from,
                span,
                (self.total - self.old_day_events).max(1),
                i - self.old_day_events,
            )
        };
        let offset = (span as f64 * k as f64 / n as f64) as i64;
        Timestamp::from_microsecond(from.as_microsecond() + offset).expect("time")
    }

    fn to_env(self, cmd: &mut Command) {
        cmd.env("GROWTH_OLD_DAY_EVENTS", self.old_day_events.to_string())
            .env("GROWTH_TOTAL", self.total.to_string())
            .env("GROWTH_OLD_DAY", self.old_day.as_second().to_string())
            .env(
                "GROWTH_RECENT_FROM",
                self.recent_from.as_second().to_string(),
            )
            .env("GROWTH_RECENT_TO", self.recent_to.as_second().to_string());
    }

    fn from_env() -> Self {
        let n = |k: &str| -> i64 { std::env::var(k).ok().and_then(|v| v.parse().ok()).expect(k) };
        let t = |k: &str| Timestamp::from_second(n(k)).expect(k);
        Self {
            old_day_events: n("GROWTH_OLD_DAY_EVENTS") as u64,
            total: n("GROWTH_TOTAL") as u64,
            old_day: t("GROWTH_OLD_DAY"),
            recent_from: t("GROWTH_RECENT_FROM"),
            recent_to: t("GROWTH_RECENT_TO"),
        }
    }
}

/// Fill mode (a child process, so the store is closed and released when it ends): adds
/// events `GROWTH_FROM..GROWTH_TO` of the layout to the store in `GROWTH_FILL`.
fn fill(data: &str) {
    let layout = Layout::from_env();
    let from: u64 = common::env_or("GROWTH_FROM", 0);
    let to: u64 = common::env_or("GROWTH_TO", 0);
    let batch: u64 = common::env_or("BENCH_FILL_BATCH", 32).max(1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open(Path::new(data), &StoreOptions::default()).expect("open store");
        // This bench fills sled itself, so it reads the application's record from sled too.
        let app = store
            .load_apps()
            .expect("applications")
            .into_iter()
            .find(|a| a.name == APP)
            .expect("the application");
        let tz =
            jiff::tz::TimeZone::get(app.spec.time_zone_name()).unwrap_or(jiff::tz::TimeZone::UTC);
        let name_limit = AppLimits::resolve(&app.spec, &Default::default()).event_names;
        let value = EventValue {
            event: "bench-event".into(),
            weight: 3,
            user_id: Some(42),
        };
        let batches = (from..to).step_by(batch as usize).map(|start| {
            (start..(start + batch).min(to))
                .map(|i| {
                    let at = layout.at(i);
                    EventWrite {
                        app: app.num,
                        at,
                        date: date_key(local_date(at, &tz)),
                        value: value.clone(),
                        idempotency: None,
                        name_limit,
                    }
                })
                .collect::<Vec<_>>()
        });
        let stored = store.load_events(batches).await.expect("bulk load");
        assert_eq!(stored, to - from);
    });
}

fn manifest(retention_days: u32) -> String {
    format!(
        "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: {APP}\nspec:\n  retention: {}h\n",
        retention_days * 24
    )
}

/// Starts the store under `dir` (manifests in `dir/manifests`, data in `dir/data`) with
/// an Application keeping `retention_days` of raw events, and waits until it is ready.
async fn start(dir: &Path, retention_days: u32) -> ServerProcess {
    std::fs::create_dir_all(dir.join("manifests")).expect("manifests dir");
    std::fs::write(dir.join("manifests/app.yaml"), manifest(retention_days)).expect("manifest");
    ServerProcess::start(&dir.join("manifests"), &dir.join("data"), &[]).await
}

fn token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(format!("data/tokens/application-{APP}.token")))
        .expect("token")
        .trim()
        .to_string()
}

/// Bytes the directory takes on disk (allocated blocks).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The commit log's mean fdatasync and group count from `/metrics`.
async fn commit_sync(base: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("hartslag_commit_sync_seconds_sum"),
        value("hartslag_commit_sync_seconds_count"),
    )
}

/// p99 of `n` sequential requests made by `request` (one keep-alive client).
async fn p99_of<F, Fut>(n: usize, mut request: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        request().await;
        times.push(t.elapsed());
    }
    times.sort();
    times[((times.len() as f64 - 1.0) * 0.99).round() as usize]
}

/// One store's figures at one step.
#[derive(Default)]
struct Figures {
    rounds: Vec<Outcome>,
    probes: Vec<String>,
    commit: Vec<String>,
    stats_p99: Duration,
    export_first_byte: Duration,
    started_in: Duration,
    bytes: u64,
    events: u64,
}

impl Figures {
    fn rates(&self) -> Vec<f64> {
        self.rounds.iter().map(Outcome::rate).collect()
    }

    fn p99(&self) -> Duration {
        let mut all: Vec<Duration> = self
            .rounds
            .iter()
            .flat_map(|o| o.latencies.iter().copied())
            .collect();
        all.sort();
        all.get(((all.len() as f64 - 1.0) * 0.99).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// One ingest round against `server`, with the disk probe before it and the commit log's
/// mean flush during it.
async fn ingest_round(server: &ServerProcess, dir: &Path, figures: &mut Figures) {
    let probe = common::flush_probe(dir, 200);
    let before = commit_sync(&server.base).await;
    let o = run_load(
        Load {
            url: format!("{}/api/v1/heartbeat", server.base),
            token: Some(token(dir)),
            body: BODY,
            connections: common::env_or("BENCH_CONNECTIONS", 64),
            seconds: common::env_or("BENCH_SECONDS", 3),
        },
        false,
    )
    .await;
    let after = commit_sync(&server.base).await;
    let groups = (after.1 - before.1).max(1.0);
    figures.probes.push(common::describe_flushes(&probe));
    figures.commit.push(format!(
        "mean {:.0} µs, {:.1} requests each",
        (after.0 - before.0) / groups * 1e6,
        o.requests as f64 / groups
    ));
    figures.rounds.push(o);
}

/// `stats` p99 and export time to first byte, measured one request at a time.
async fn queries(server: &ServerProcess, dir: &Path, figures: &mut Figures) {
    let client = reqwest::Client::new();
    let token = token(dir);
    let stats = format!("{}/api/v1/stats", server.base);
    figures.stats_p99 = p99_of(200, || async {
        let r = client
            .get(&stats)
            .bearer_auth(&token)
            .send()
            .await
            .expect("stats");
        assert!(r.status().is_success());
        let _ = r.bytes().await;
    })
    .await;
    let export = format!("{}/api/v1/export.csv", server.base);
    let mut firsts = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut r = client
            .get(&export)
            .bearer_auth(&token)
            .send()
            .await
            .expect("export");
        assert!(r.status().is_success());
        let _ = r.chunk().await.expect("first chunk");
        firsts.push(t.elapsed());
    }
    firsts.sort();
    figures.export_first_byte = firsts[firsts.len() / 2];
}

fn print_step(step: u64, full: &Figures, empty: &Figures) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "at {step} events (load average {}):",
        common::load_average()
    );
    for (name, f) in [("full ", full), ("empty", empty)] {
        println!(
            "  {name} store: ingest {:.0} events/s (median of rounds {}), p99 {:.2} ms; stats p99 {:.2} ms; export first byte {:.2} ms (median); start-up {:.2} s; {:.1} bytes per event ({:.2} GB, {} events)",
            common::median(f.rates()),
            f.rates()
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join("/"),
            ms(f.p99()),
            ms(f.stats_p99),
            ms(f.export_first_byte),
            f.started_in.as_secs_f64(),
            f.bytes as f64 / f.events.max(1) as f64,
            f.bytes as f64 / 1e9,
            f.events,
        );
        for (i, (probe, commit)) in f.probes.iter().zip(&f.commit).enumerate() {
            println!(
                "      round {}: disk probe fdatasync {probe}; commit log fdatasync {commit}",
                i + 1
            );
        }
    }
    let ratio = common::median(full.rates()) / common::median(empty.rates());
    let per_round: Vec<f64> = full
        .rates()
        .iter()
        .zip(empty.rates())
        .map(|(f, e)| f / e)
        .collect();
    println!(
        "  full/empty ingest: {ratio:.2} (rounds {}); target at 50 M: ≥ 0.95, ≤ 80 bytes per event, start-up ≤ 2 s",
        per_round
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Runs `GROWTH` fill mode in a child process.
fn fill_to(data: &Path, layout: Layout, from: u64, to: u64) {
    let started = Instant::now();
    let exe = std::env::current_exe().expect("own executable");
    let mut cmd = Command::new(exe);
    cmd.env("GROWTH_FILL", data)
        .env("GROWTH_FROM", from.to_string())
        .env("GROWTH_TO", to.to_string());
    layout.to_env(&mut cmd);
    let status = cmd.status().expect("start the fill");
    assert!(status.success(), "the fill failed: {status}");
    println!(
        "filled events {from}..{to} in {:.0} s ({:.0}/s, bulk path, batches of {})",
        started.elapsed().as_secs_f64(),
        (to - from) as f64 / started.elapsed().as_secs_f64(),
        common::env_or::<u64>("BENCH_FILL_BATCH", 32)
    );
}

/// Purges the old day while ingest runs: restarts the full store with a retention that
/// drops it (the retention pass runs at start) and drives ingest in one-second rounds
/// until the server reports the purge done.
async fn purge_while_ingesting(full_dir: &Path) {
    let server = start(full_dir, 8).await;
    println!(
        "retention: restarted the full store with retention 8 days (start-up {:.2} s); ingesting while it purges the old day",
        server.started_in.as_secs_f64()
    );
    let started = Instant::now();
    let mut rounds = Vec::new();
    loop {
        let log = server.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("deleted events past retention"))
        {
            println!(
                "  purge finished after about {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                line.trim()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the purge did not finish"
        );
        let o = run_load(
            Load {
                url: format!("{}/api/v1/heartbeat", server.base),
                token: Some(token(full_dir)),
                body: BODY,
                connections: common::env_or("BENCH_CONNECTIONS", 64),
                seconds: 1,
            },
            false,
        )
        .await;
        rounds.push(o);
    }
    let mut all: Vec<Duration> = rounds
        .iter()
        .flat_map(|o| o.latencies.iter().copied())
        .collect();
    all.sort();
    let p99 = all
        .get(((all.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied()
        .unwrap_or_default();
    let rate = all.len() as f64
        / rounds
            .iter()
            .map(|o| o.elapsed.as_secs_f64())
            .sum::<f64>()
            .max(1e-9);
    println!(
        "  ingest during the purge: {rate:.0} events/s, p99 {:.2} ms over {} requests (target p99 ≤ 20 ms: {})",
        p99.as_secs_f64() * 1e3,
        all.len(),
        if p99 <= Duration::from_millis(20) {
            "met"
        } else {
            "NOT met"
        }
    );
    server.stop();
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if common::loadgen::run_if_generator() {
        return;
    }
    if let Ok(data) = std::env::var("GROWTH_FILL") {
        return fill(&data);
    }
    let steps: Vec<u64> = std::env::var("BENCH_GROWTH_STEPS")
        .unwrap_or_else(|_| "10000000,50000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    assert!(!steps.is_empty(), "BENCH_GROWTH_STEPS names no step");
    let rounds: usize = common::env_or("BENCH_ROUNDS", 3).max(1);
    let root =
        PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/growth-bench").into()
        }));
    let _ = std::fs::remove_dir_all(&root);
    let (full_dir, empty_dir) = (root.join("full"), root.join("empty"));
    let layout = Layout::new(steps[0], *steps.iter().max().unwrap_or(&steps[0]));
    println!(
        "growth benchmark: steps {steps:?} events; {rounds} interleaved rounds per step against a fresh empty store; data in {}",
        root.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Both stores get their application (and token) from a first start.
        for dir in [&full_dir, &empty_dir] {
            start(dir, 400).await.stop();
        }
        let mut filled = 0;
        // Events the ingest rounds added to each store so far.
        let (mut full_ingested, mut empty_ingested) = (0, 0);
        for &step in &steps {
            fill_to(&full_dir.join("data"), layout, filled, step);
            filled = step;
            let mut full = Figures::default();
            let mut empty = Figures::default();
            let servers = [start(&full_dir, 400).await, start(&empty_dir, 400).await];
            full.started_in = servers[0].started_in;
            empty.started_in = servers[1].started_in;
            for round in 0..rounds {
                for k in 0..2 {
                    let i = (k + round) % 2;
                    let (dir, figures) = if i == 0 {
                        (&full_dir, &mut full)
                    } else {
                        (&empty_dir, &mut empty)
                    };
                    ingest_round(&servers[i], dir, figures).await;
                }
            }
            queries(&servers[0], &full_dir, &mut full).await;
            queries(&servers[1], &empty_dir, &mut empty).await;
            let ingested = |f: &Figures| f.rounds.iter().map(|o| o.requests as u64).sum::<u64>();
            full_ingested += ingested(&full);
            empty_ingested += ingested(&empty);
            full.events = step + full_ingested;
            empty.events = empty_ingested;
            for s in servers {
                s.stop();
            }
            full.bytes = disk_bytes(&full_dir.join("data"));
            empty.bytes = disk_bytes(&empty_dir.join("data"));
            print_step(step, &full, &empty);
            // What the rounds added to the full store stays; the fill continues after it.
        }
        purge_while_ingesting(&full_dir).await;
    });
    if std::env::var("BENCH_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
