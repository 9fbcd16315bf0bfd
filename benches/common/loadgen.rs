//! The load generator: HTTP/1.1 keep-alive clients that post one body over and over for a
//! while and record every latency. It runs as a process of its own (the benchmark binary
//! started again with its settings in the environment), as wrk or oha would: real clients
//! do not share the server's scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one run of the load generator measured.
pub struct Outcome {
    /// Requests answered 200 or 201.
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    /// CPU time the load generator used (zero when it ran in-process).
    pub client_cpu: Duration,
}

impl Outcome {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    /// Runs made one after another, as one: their requests over their summed time.
    pub fn sequential<'a>(runs: impl IntoIterator<Item = &'a Outcome>) -> Outcome {
        Self::merged(runs, |a, b| a + b)
    }

    /// Runs made at the same time (one generator per server), as one: their requests over
    /// the longest of them.
    pub fn concurrent<'a>(runs: impl IntoIterator<Item = &'a Outcome>) -> Outcome {
        Self::merged(runs, Duration::max)
    }

    fn merged<'a>(
        runs: impl IntoIterator<Item = &'a Outcome>,
        elapsed: fn(Duration, Duration) -> Duration,
    ) -> Outcome {
        let mut all = Outcome {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
            client_cpu: Duration::ZERO,
        };
        for r in runs {
            all.errors += r.errors;
            all.elapsed = elapsed(all.elapsed, r.elapsed);
            all.latencies.extend_from_slice(&r.latencies);
            all.client_cpu += r.client_cpu;
        }
        all.latencies.sort();
        all.requests = all.latencies.len();
        all
    }

    /// The `p` quantile of the latencies (sorted).
    pub fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// `connections` keep-alive clients posting `body` to `url` for `seconds`, on this runtime.
pub async fn drive(
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
        client_cpu: Duration::ZERO,
    }
}

pub fn report(name: &str, o: &Outcome) {
    println!(
        "{name:<28} {:>10.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ok, {} errors)",
        o.rate(),
        o.pct(0.50).as_secs_f64() * 1e3,
        o.pct(0.99).as_secs_f64() * 1e3,
        o.requests,
        o.errors
    );
}

/// Environment variables that put this binary in load-generator mode.
const LOADGEN_URL: &str = "BENCH_LOADGEN_URL";
const LOADGEN_TOKEN: &str = "BENCH_LOADGEN_TOKEN";
const LOADGEN_BODY: &str = "BENCH_LOADGEN_BODY";
const LOADGEN_OUT: &str = "BENCH_LOADGEN_OUT";

/// One target's load: where, with what, how hard and for how long.
pub struct Load {
    pub url: String,
    pub token: Option<String>,
    pub body: &'static str,
    pub connections: usize,
    pub seconds: u64,
}

/// Runs `load` from a generator process of its own (or on this runtime when `in_process`)
/// and collects what it measured.
pub async fn run_load(load: Load, in_process: bool) -> Outcome {
    if in_process {
        let o = drive(
            load.url,
            load.token,
            load.body,
            load.connections,
            load.seconds,
        )
        .await;
        warn_of_errors(&o);
        return o;
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
    let outcome = decode(&std::fs::read(out.path()).expect("generator results"));
    warn_of_errors(&outcome);
    outcome
}

/// A run whose requests failed (a 429 from a tenant limit, a 503) measured the failures, not
/// the server: say so beside the figures instead of printing a rate nobody should quote.
fn warn_of_errors(o: &Outcome) {
    if o.errors > 0 {
        println!(
            "  WARNING: {} of {} requests failed; the figures of this round do not measure ingest",
            o.errors,
            o.errors + o.requests
        );
    }
}

/// Requests, errors, elapsed and CPU nanoseconds, then each latency in nanoseconds (u64 LE).
fn encode(o: &Outcome) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 * (o.latencies.len() + 4));
    for v in [
        o.requests as u64,
        o.errors as u64,
        o.elapsed.as_nanos() as u64,
        o.client_cpu.as_nanos() as u64,
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
    assert!(v.len() >= 4, "the load generator wrote no results");
    Outcome {
        requests: v[0] as usize,
        errors: v[1] as usize,
        elapsed: Duration::from_nanos(v[2]),
        client_cpu: Duration::from_nanos(v[3]),
        latencies: v[4..].iter().map(|n| Duration::from_nanos(*n)).collect(),
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
        connections: super::env_or("BENCH_CONNECTIONS", 64),
        seconds: super::env_or("BENCH_SECONDS", 3),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut o = rt.block_on(run_load(load, true));
    o.client_cpu = super::Threads::of("self").total_run();
    std::fs::write(out, encode(&o)).expect("write results");
}

/// If this process was started as a load generator, runs it and returns `true`: the
/// benchmark's `main` then returns at once.
pub fn run_if_generator() -> bool {
    match (std::env::var(LOADGEN_URL), std::env::var(LOADGEN_OUT)) {
        (Ok(url), Ok(out)) => {
            generate(url, out);
            true
        }
        _ => false,
    }
}
