//! Ingest load benchmark: real HTTP/1.1 keep-alive requests against (a) a no-op axum
//! handler answering `201 []` and (b) the real ingest route with durable group commit,
//! in the same run, on loopback, and (c) the heartbeat ping route. Prints requests/s,
//! p50/p99 latency and the ratios b/a and c/a, with the median and weakest round against
//! the targets (median ≥ 0.6, weakest ≥ 0.5, p99 ≤ 5 ms).
//!
//! The load generator runs as its own process (this binary, started again in client
//! mode), the way wrk or oha would: real clients do not share the server's scheduler. A
//! generator inside the server's runtime runs its tasks on the server's own two worker
//! threads, which flatters the no-op handler by about 10 % here and the durable routes not
//! at all; `BENCH_CLIENT=in-process` measures that way for comparison.
//!
//! The targets take turns in rounds, in a rotating order: on a shared machine the disk's
//! flush latency drifts by tens of percent within minutes, and one target measured after
//! another would catch different states. Beside every round it prints what bounds the
//! durable routes: the disk's own flush latency (a probe of 200 `fdatasync`s just before
//! the round), the commit log's fdatasync latency during the round (p50/p99), requests per
//! fdatasync and the disk ceiling (that group size over the mean flush latency: the rate
//! of an ideal group commit with fsyncs back to back), the bytes the commit log takes per
//! writer record and per request, the machine's idle share, the CPU time per request (and
//! per fdatasync) of every server thread and of the generator, and the CPU ceiling (the
//! cores over the server's and the generator's CPU per request: the rate at which the
//! same work would keep every core busy). The CPU ceilings give each ratio its bound on
//! this machine: a durable route's ceiling over the no-op handler's rate in the same round.
//!
//! `cargo bench --bench ingest` (env: `BENCH_CONNECTIONS`, default 64; `BENCH_SECONDS`,
//! default 3 per target and round; `BENCH_ROUNDS`, default 5; `BENCH_ONLY=noop`, `ingest`
//! or `ping` runs that target alone, for a profiler; `BENCH_CLIENT=in-process`;
//! `BENCH_DATABASE_URL=postgres://...` stores the events in that PostgreSQL database).

mod common;

use common::loadgen::{self, Load, Outcome, report, run_load};

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use axum::routing::post;
use hartslag::config::ServerConfig;
use hartslag::core::store::CommitStats;
use hartslag::core::store::latency::LatencySnapshot;
use hartslag::server::Server;

/// What the machine, the server's threads and its commit log did during one run.
struct Readings {
    threads: common::Threads,
    machine: common::Machine,
    flushes: LatencySnapshot,
    groups: u64,
    records: u64,
    bytes: u64,
}

impl Readings {
    fn take(stats: &CommitStats) -> Self {
        Self {
            threads: common::Threads::of("self"),
            machine: common::Machine::now(),
            flushes: stats.flush.snapshot(),
            groups: stats.groups.load(Ordering::Relaxed),
            records: stats.records.load(Ordering::Relaxed),
            bytes: stats.bytes.load(Ordering::Relaxed),
        }
    }
}

/// One round of one target: what the client saw, and what happened on the server.
struct Round {
    outcome: Outcome,
    /// The disk's flush latency just before the round, measured apart from the server.
    probe: LatencySnapshot,
    /// The commit log's fdatasync latencies during the round.
    flushes: LatencySnapshot,
    groups: u64,
    records: u64,
    /// Bytes the commit log took during the round.
    bytes: u64,
    cpu: common::Cpu,
    idle: (f64, f64),
}

impl Round {
    fn new(outcome: Outcome, probe: LatencySnapshot, before: &Readings, after: &Readings) -> Self {
        Self {
            probe,
            flushes: after.flushes.since(&before.flushes),
            groups: after.groups - before.groups,
            records: after.records - before.records,
            bytes: after.bytes - before.bytes,
            cpu: after.threads.since(&before.threads),
            idle: after.machine.idle_since(&before.machine),
            outcome,
        }
    }

    /// Requests each fdatasync served.
    fn group_size(&self) -> f64 {
        self.outcome.requests as f64 / self.groups.max(1) as f64
    }

    /// The rate an ideal group commit would reach: fdatasyncs back to back, each taking the
    /// mean latency measured in this round and serving this round's group size.
    fn disk_ceiling(&self) -> f64 {
        self.group_size() / self.flushes.mean().map_or(f64::NAN, |d| d.as_secs_f64())
    }

    /// CPU µs per answered request, the server's and the load generator's together: on a
    /// machine they share, this is what a request costs the cores.
    fn cpu_per_request(&self) -> f64 {
        let n = self.outcome.requests.max(1) as f64;
        (self.cpu.run() + self.outcome.client_cpu).as_secs_f64() * 1e6 / n
    }

    /// The rate at which this round's CPU per request would keep every core busy: the most
    /// any scheduling of the same work could reach on this machine.
    /// Times the server's threads went to sleep to wait, per request.
    fn switches_per_request(&self) -> f64 {
        self.cpu.switches() as f64 / self.outcome.requests.max(1) as f64
    }

    fn cpu_ceiling(&self) -> f64 {
        common::cores() * 1e6 / self.cpu_per_request()
    }

    /// The lines printed under a round's figures.
    fn describe(&self) -> String {
        let o = &self.outcome;
        let n = o.requests.max(1) as f64;
        let mut out = format!(
            "      disk probe before the round: fdatasync {}; machine idle {:.0} %, iowait {:.0} %",
            common::describe_flushes(&self.probe),
            self.idle.0 * 100.0,
            self.idle.1 * 100.0
        );
        if self.groups > 0 {
            out += &format!(
                "\n      commit log: fdatasync {} (mean {:.0} µs), {:.0}/s, {:.1} requests and {:.1} writer records each; \
                 disk ceiling {:.0}/s, reached {:.0} %; {:.0} bytes per writer record, {:.0} per request",
                common::describe_flushes(&self.flushes),
                common::us(self.flushes.mean()),
                self.groups as f64 / o.elapsed.as_secs_f64(),
                self.group_size(),
                self.records as f64 / self.groups as f64,
                self.disk_ceiling(),
                o.rate() / self.disk_ceiling() * 100.0,
                self.bytes as f64 / self.records.max(1) as f64,
                self.bytes as f64 / n
            );
        }
        out += &format!(
            "\n      CPU µs per request: server {:.1}, load generator {:.1}; CPU ceiling {:.0}/s on {} cores, reached {:.0} %; by thread: {}",
            self.cpu.run().as_secs_f64() * 1e6 / n,
            o.client_cpu.as_secs_f64() * 1e6 / n,
            self.cpu_ceiling(),
            common::cores(),
            o.rate() / self.cpu_ceiling() * 100.0,
            self.cpu.per(n)
        );
        out += &format!(
            "\n      sleeps (voluntary switches) per request: {:.2} ({})",
            self.cpu.switches() as f64 / n,
            self.cpu.switches_per(n)
        );
        if self.groups > 0 {
            out += &format!(
                "\n      CPU µs per fdatasync: {}\n      sleeps per fdatasync: {:.1} ({})",
                self.cpu.per(self.groups as f64),
                self.cpu.switches() as f64 / self.groups as f64,
                self.cpu.switches_per(self.groups as f64)
            );
        }
        out
    }
}

/// One target's runs over all rounds, merged: total requests over total time, and the
/// latency percentiles of every request.
fn merge(runs: &[Round]) -> Outcome {
    Outcome::sequential(runs.iter().map(|r| &r.outcome))
}

/// The per-round ratios `num/den`.
fn ratios(num: &[Round], den: &[Round]) -> Vec<f64> {
    num.iter()
        .zip(den)
        .map(|(n, d)| n.outcome.rate() / d.outcome.rate())
        .collect()
}

/// The three targets, measured by [`drive`] one after another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Noop,
    Ingest,
    Ping,
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if loadgen::run_if_generator() {
        return;
    }
    let connections: usize = common::env_or("BENCH_CONNECTIONS", 64);
    let seconds: u64 = common::env_or("BENCH_SECONDS", 3);
    let rounds: usize = common::env_or("BENCH_ROUNDS", 5).max(1);
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
        // Events in PostgreSQL instead of sled (the commit-log figures then show only the
        // pings' share).
        if let Ok(url) = std::env::var("BENCH_DATABASE_URL") {
            config.database_url = Some(url.parse().expect("BENCH_DATABASE_URL"));
        }
        let mut server = Server::open(config).await.expect("open");
        hartslag::standalone::apply_manifests(&mut server, &manifests).await.expect("manifests");
        let token = std::fs::read_to_string(dir.path().join("data/tokens/application-bench.token")).expect("token");
        let core = server.core.clone();
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
        let stats = core.commit_stats();
        println!("load average at start: {}", common::load_average());
        let mut results: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let probe = common::flush_probe(dir.path(), 200);
                let (url, token, body) = match targets[i] {
                    Target::Noop => (format!("http://{noop_addr}/api/v1/heartbeat"), None, body),
                    Target::Ingest => (format!("http://{addr}/api/v1/heartbeat"), Some(token.trim().to_string()), body),
                    Target::Ping => (ping.trim().to_string(), None, ""),
                };
                let before = Readings::take(stats);
                let o = run_load(Load { url, token, body, connections, seconds }, in_process).await;
                let r = Round::new(o, probe, &before, &Readings::take(stats));
                report(&format!("  round {} {}", round + 1, label(targets[i])), &r.outcome);
                println!("{}", r.describe());
                results[i].push(r);
            }
        }
        println!("all rounds (load average now {}):", common::load_average());
        let merged: Vec<Outcome> = results.iter().map(|r| merge(r)).collect();
        for (t, o) in targets.iter().zip(&merged) {
            report(label(*t), o);
        }
        for (t, rounds) in targets.iter().zip(&results) {
            if *t == Target::Noop {
                continue;
            }
            let ceilings: Vec<f64> = rounds.iter().map(Round::disk_ceiling).collect();
            let reached: Vec<f64> = rounds.iter().map(|r| r.outcome.rate() / r.disk_ceiling()).collect();
            let flushes = rounds.iter().fold(LatencySnapshot::default(), |acc, r| acc.plus(&r.flushes));
            let probes = rounds.iter().fold(LatencySnapshot::default(), |acc, r| acc.plus(&r.probe));
            println!(
                "{}: commit-log fdatasync {}, disk probe {}; disk ceiling median {:.0}/s, reached {:.0} % (median of rounds)",
                label(*t),
                common::describe_flushes(&flushes),
                common::describe_flushes(&probes),
                common::median(ceilings),
                common::median(reached) * 100.0,
            );
        }
        if targets.len() == 3 {
            for (i, name) in [(1, "b/a"), (2, "c/a")] {
                let per_round = ratios(&results[i], &results[0]);
                let weakest = per_round.iter().copied().fold(f64::MAX, f64::min);
                let median = common::median(per_round.clone());
                let p99 = merged[i].pct(0.99).as_secs_f64() * 1e3;
                let met = median >= 0.6 && weakest >= 0.5 && p99 <= 5.0;
                // What the ratio would be with this route's CPU per request keeping every
                // core busy, against the no-op handler as it ran: the ratio's bound on this
                // machine, however the waits were arranged.
                let bound: Vec<f64> = results[i]
                    .iter()
                    .zip(&results[0])
                    .map(|(r, a)| r.cpu_ceiling() / a.outcome.rate())
                    .collect();
                println!(
                    "ratio {name}: median of rounds {median:.2}, weakest round {weakest:.2}, over all rounds {:.2}; p99 {p99:.2} ms \
                     (target: median ≥ 0.60, weakest ≥ 0.50, p99 ≤ 5 ms: {})",
                    merged[i].rate() / merged[0].rate(),
                    if met { "met" } else { "NOT met" },
                );
                println!(
                    "  bound by CPU: median of rounds {:.2}, weakest round {:.2} (this route's CPU ceiling over the no-op handler's rate; \
                     server and generator µs per request {:.1} against {:.1})",
                    common::median(bound.clone()),
                    bound.iter().copied().fold(f64::MAX, f64::min),
                    common::median(results[i].iter().map(Round::cpu_per_request).collect()),
                    common::median(results[0].iter().map(Round::cpu_per_request).collect()),
                );
                println!(
                    "  server threads' sleeps (voluntary switches) per request: median of rounds {:.2} against {:.2} for the no-op handler",
                    common::median(results[i].iter().map(Round::switches_per_request).collect()),
                    common::median(results[0].iter().map(Round::switches_per_request).collect()),
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
