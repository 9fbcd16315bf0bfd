//! Ingest load benchmark: real HTTP/1.1 keep-alive requests against (a) a no-op axum
//! handler answering `201 []` and (b) the real ingest route with durable group commit,
//! in the same run, on loopback, and (c) the heartbeat ping route. Prints requests/s,
//! p50/p99 latency and the ratios b/a and c/a.
//!
//! The load generator runs as its own process (this binary, started again in client
//! mode), the way wrk or oha would: real clients do not share the server's scheduler. A
//! generator inside the server's runtime runs its tasks on the server's own two worker
//! threads, which flatters the no-op handler by about 10 % here and the durable routes not
//! at all; `BENCH_CLIENT=in-process` measures that way for comparison.
//!
//! The targets take turns in rounds, in a rotating order, and the ratios are over the sums
//! of all rounds: on a shared machine the disk's flush latency drifts by tens of percent
//! within minutes, and one target measured after another would catch different states.
//!
//! `cargo bench --bench ingest` (env: `BENCH_CONNECTIONS`, default 64; `BENCH_SECONDS`,
//! default 3 per target and round; `BENCH_ROUNDS`, default 3; `BENCH_ONLY=noop`, `ingest`
//! or `ping` runs that target alone, for a profiler; `BENCH_CLIENT=in-process`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use hartslag::config::ServerConfig;
use hartslag::server::Server;

struct Outcome {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

async fn drive(
    url: String,
    token: Option<String>,
    body: &'static str,
    connections: usize,
    seconds: u64,
) -> Outcome {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .http1_only()
        .build()
        .expect("client");
    // Warm-up: open the connections.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        let url = url.clone();
        let token = token.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body);
                if let Some(tok) = &token {
                    req = req.bearer_auth(tok);
                }
                match req.send().await {
                    Ok(r) if r.status() == 201 || r.status() == 200 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Outcome {
        requests: latencies.len(),
        errors,
        elapsed,
        latencies,
    }
}

fn report(name: &str, o: &Outcome) {
    println!(
        "{name:<28} {:>10.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ok, {} errors)",
        o.rate(),
        o.pct(0.50).as_secs_f64() * 1e3,
        o.pct(0.99).as_secs_f64() * 1e3,
        o.requests,
        o.errors
    );
}

/// The commit log's counters from the server's `/metrics`: seconds spent in append and
/// fdatasync, groups (one fdatasync each) and the writers' records in them.
#[derive(Clone, Copy)]
struct Commits {
    sync_seconds: f64,
    groups: f64,
    records: f64,
}

async fn commits(base: &str) -> Commits {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    Commits {
        sync_seconds: value("hartslag_commit_sync_seconds_sum"),
        groups: value("hartslag_commit_groups_total"),
        records: value("hartslag_commit_records_total"),
    }
}

/// What the commit log did during a run (between two readings), as one line: the flush
/// latency the disk gave, and how many requests each flush served.
fn describe(before: Commits, after: Commits, run: &Outcome) -> String {
    let groups = after.groups - before.groups;
    if groups < 1.0 {
        return "      no commits".into();
    }
    format!(
        "      commit log: append + fdatasync {:.0} µs on average, {:.0}/s, {:.1} requests and {:.1} writer records each",
        (after.sync_seconds - before.sync_seconds) / groups * 1e6,
        groups / run.elapsed.as_secs_f64(),
        run.requests as f64 / groups,
        (after.records - before.records) / groups,
    )
}

/// One target's runs over all rounds, merged: total requests over total time, and the
/// latency percentiles of every request.
fn merge(runs: &[Outcome]) -> Outcome {
    let mut latencies: Vec<Duration> = runs
        .iter()
        .flat_map(|o| o.latencies.iter().copied())
        .collect();
    latencies.sort();
    Outcome {
        requests: latencies.len(),
        errors: runs.iter().map(|o| o.errors).sum(),
        elapsed: runs.iter().map(|o| o.elapsed).sum(),
        latencies,
    }
}

/// The lowest and highest of the per-round ratios `num/den`.
fn spread(num: &[Outcome], den: &[Outcome]) -> (f64, f64) {
    num.iter()
        .zip(den)
        .map(|(n, d)| n.rate() / d.rate())
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

/// The three targets, measured by [`drive`] one after another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Noop,
    Ingest,
    Ping,
}

/// Environment variables that put this binary in load-generator mode.
const LOADGEN_URL: &str = "BENCH_LOADGEN_URL";
const LOADGEN_TOKEN: &str = "BENCH_LOADGEN_TOKEN";
const LOADGEN_BODY: &str = "BENCH_LOADGEN_BODY";
const LOADGEN_OUT: &str = "BENCH_LOADGEN_OUT";

/// One target's load: where, with what, how hard and for how long.
struct Load {
    url: String,
    token: Option<String>,
    body: &'static str,
    connections: usize,
    seconds: u64,
}

/// Runs `load` from a generator process of its own (or on this runtime when `in_process`)
/// and collects what it measured.
async fn run_load(load: Load, in_process: bool) -> Outcome {
    if in_process {
        return drive(
            load.url,
            load.token,
            load.body,
            load.connections,
            load.seconds,
        )
        .await;
    }
    let out = tempfile::NamedTempFile::new().expect("result file");
    let path = out.path().to_path_buf();
    let exe = std::env::current_exe().expect("own executable");
    let status = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(exe);
        cmd.env(LOADGEN_URL, &load.url)
            .env(LOADGEN_BODY, load.body)
            .env(LOADGEN_OUT, &path)
            .env("BENCH_CONNECTIONS", load.connections.to_string())
            .env("BENCH_SECONDS", load.seconds.to_string());
        match &load.token {
            Some(t) => cmd.env(LOADGEN_TOKEN, t),
            None => cmd.env_remove(LOADGEN_TOKEN),
        };
        cmd.status()
    })
    .await
    .expect("generator task")
    .expect("start the load generator");
    assert!(status.success(), "the load generator failed: {status}");
    decode(&std::fs::read(out.path()).expect("generator results"))
}

/// Requests, errors, elapsed nanoseconds, then each latency in nanoseconds (u64 LE).
fn encode(o: &Outcome) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 * (o.latencies.len() + 3));
    for v in [
        o.requests as u64,
        o.errors as u64,
        o.elapsed.as_nanos() as u64,
    ]
    .into_iter()
    .chain(o.latencies.iter().map(|l| l.as_nanos() as u64))
    {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn decode(b: &[u8]) -> Outcome {
    let v: Vec<u64> = b
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    assert!(v.len() >= 3, "the load generator wrote no results");
    Outcome {
        requests: v[0] as usize,
        errors: v[1] as usize,
        elapsed: Duration::from_nanos(v[2]),
        latencies: v[3..].iter().map(|n| Duration::from_nanos(*n)).collect(),
    }
}

/// Load-generator mode: drives the target named in the environment and writes the
/// results to the file named there.
fn generate(url: String, out: String) {
    let load = Load {
        url,
        token: std::env::var(LOADGEN_TOKEN).ok(),
        body: Box::leak(
            std::env::var(LOADGEN_BODY)
                .unwrap_or_default()
                .into_boxed_str(),
        ),
        connections: common::env_or("BENCH_CONNECTIONS", 64),
        seconds: common::env_or("BENCH_SECONDS", 3),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let o = rt.block_on(run_load(load, true));
    std::fs::write(out, encode(&o)).expect("write results");
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let (Ok(url), Ok(out)) = (std::env::var(LOADGEN_URL), std::env::var(LOADGEN_OUT)) {
        return generate(url, out);
    }
    let connections: usize = common::env_or("BENCH_CONNECTIONS", 64);
    let seconds: u64 = common::env_or("BENCH_SECONDS", 3);
    let rounds: usize = common::env_or("BENCH_ROUNDS", 3).max(1);
    let in_process = std::env::var("BENCH_CLIENT").is_ok_and(|v| v == "in-process");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // (a) no-op handler.
        let noop = axum::Router::new().route("/api/v1/heartbeat", post(|| async { (StatusCode::CREATED, axum::Json(serde_json::json!([]))) }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let noop_addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, noop).await });

        // (b) the real server with an application.
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        std::fs::write(
            manifests.join("app.yaml"),
            "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: bench\n---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: bench-job\nspec:\n  interval: 1h\n",
        )
        .expect("write");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut config = ServerConfig::new(addr, dir.path().join("data"));
        // A rate no load generator here reaches: the limiter is checked on every event, as
        // in production, but never refuses one.
        config.limits.ingest_rate = u32::MAX;
        config.limits.ingest_burst = u32::MAX;
        let mut server = Server::open(config).expect("open");
        hartslag::standalone::apply_manifests(&mut server, &manifests).await.expect("manifests");
        let token = std::fs::read_to_string(dir.path().join("data/tokens/application-bench.token")).expect("token");
        tokio::spawn(async move { server.serve(l, std::future::pending()).await });

        let body = r#"{"event":"bench-event","weight":3,"user_id":42}"#;
        let ping = std::fs::read_to_string(dir.path().join("data/tokens/heartbeat-bench-job.url")).expect("ping url");
        let targets: Vec<Target> = match std::env::var("BENCH_ONLY").as_deref() {
            Ok("ingest") => vec![Target::Ingest],
            Ok("ping") => vec![Target::Ping],
            Ok("noop") => vec![Target::Noop],
            _ => vec![Target::Noop, Target::Ingest, Target::Ping],
        };
        println!(
            "ingest benchmark: {connections} keep-alive connections over loopback from {}; {rounds} rounds of {seconds} s per target, \
             the order rotating each round so drift on the machine reaches every target alike",
            if in_process { "a client on the server's own runtime" } else { "a load-generator process" }
        );
        let base = format!("http://{addr}");
        let mut results: Vec<Vec<Outcome>> = targets.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                // Only the durable routes commit; the no-op round needs no readings.
                let durable = targets[i] != Target::Noop;
                let before = if durable { Some(commits(&base).await) } else { None };
                let (url, token, body) = match targets[i] {
                    Target::Noop => (format!("http://{noop_addr}/api/v1/heartbeat"), None, body),
                    Target::Ingest => (format!("http://{addr}/api/v1/heartbeat"), Some(token.trim().to_string()), body),
                    Target::Ping => (ping.trim().to_string(), None, ""),
                };
                let o = run_load(Load { url, token, body, connections, seconds }, in_process).await;
                report(&format!("  round {} {}", round + 1, label(targets[i])), &o);
                if let Some(before) = before {
                    println!("{}", describe(before, commits(&base).await, &o));
                }
                results[i].push(o);
            }
        }
        println!("all rounds:");
        let merged: Vec<Outcome> = results.iter().map(|r| merge(r)).collect();
        for (t, o) in targets.iter().zip(&merged) {
            report(label(*t), o);
        }
        if targets.len() == 3 {
            for (i, name) in [(1, "b/a"), (2, "c/a")] {
                let (lo, hi) = spread(&results[i], &results[0]);
                println!(
                    "ratio {name}: {:.2}   (rounds {lo:.2}–{hi:.2})",
                    merged[i].rate() / merged[0].rate()
                );
            }
        }
    });
}

fn label(t: Target) -> &'static str {
    match t {
        Target::Noop => "(a) no-op handler",
        Target::Ingest => "(b) ingest, durable",
        Target::Ping => "(c) ping, durable",
    }
}
