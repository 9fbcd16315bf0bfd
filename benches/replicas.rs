//! Durable ingest on each storage backend and across replicas, in the same run: (a) a
//! no-op handler answering the route, (b) one replica on sled (the embedded default), (c)
//! one replica on PostgreSQL, (d) two replicas on one PostgreSQL database with the load
//! split evenly between them. Every replica is a `hartslag standalone` process of its
//! own; the load generator is a process of its own; the targets take turns in rounds, in a
//! rotating order, so the machine's drift reaches each alike.
//!
//! PostgreSQL is Debian's server, started by the benchmark as the tests start theirs
//! (`tests/it/pg.rs`) but with `fsync` on, as in production: an answer means the events
//! are on disk in both backends. It shares the machine's two cores with the replicas and
//! the load generator, so beside every round the benchmark prints the CPU time per event
//! of the replicas and of the database's processes and the database's commits per
//! second: from those a reader sees which of them is the limit, and what a replica would
//! reach with the database on a host of its own (printed as the replica-bound ceiling:
//! two cores over the replica's CPU per event).
//!
//! Then, with `BENCH_SOAK_SECONDS` set (600 for the ten-minute figure), one PostgreSQL
//! replica ingests for that long and its resident memory is printed every 30 s: a replica
//! keeps no per-event state, so it stays flat however many events pass through.
//!
//! `cargo bench --bench replicas`. Env: `BENCH_CONNECTIONS` (64), `BENCH_SECONDS` (3 per
//! target and round), `BENCH_ROUNDS` (5), `BENCH_SOAK_SECONDS` (0).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use common::loadgen::{self, Load, Outcome, report, run_load};
use common::pg::PgServer;
use common::server::ServerProcess;

const APP: &str = "bench";
const BODY: &str = r#"{"event":"bench-event","weight":3,"user_id":42}"#;
const DATABASE: &str = "bench";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Noop,
    Sled,
    Pg1,
    Pg2,
}

const TARGETS: [Target; 4] = [Target::Noop, Target::Sled, Target::Pg1, Target::Pg2];

fn label(t: Target) -> &'static str {
    match t {
        Target::Noop => "(a) no-op handler",
        Target::Sled => "(b) sled, one replica",
        Target::Pg1 => "(c) PostgreSQL, one replica",
        Target::Pg2 => "(d) PostgreSQL, two replicas",
    }
}

/// The servers behind a target, with the token they take.
struct Replicas {
    servers: Vec<ServerProcess>,
    token: String,
}

/// What the processes of the run used during one round.
struct Usage {
    replicas: Duration,
    database: Duration,
    commits: u64,
}

impl Usage {
    fn now(replicas: &[ServerProcess], pg: &PgServer) -> Self {
        Self {
            replicas: replicas.iter().map(ServerProcess::cpu).sum(),
            database: common::command_cpu("postgres"),
            commits: pg
                .psql(
                    DATABASE,
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                )
                .parse()
                .unwrap_or(0),
        }
    }
}

/// One target's figures in one round.
struct Round {
    outcome: Outcome,
    replica_cpu_per_event: Duration,
    database_cpu_per_event: Duration,
    commits_per_second: f64,
    probe: String,
}

impl Round {
    fn describe(&self, target: Target) -> String {
        if target == Target::Noop {
            return format!("    disk probe {}", self.probe);
        }
        let mut line = format!(
            "    disk probe {}; CPU per event: replicas {:.1} µs",
            self.probe,
            self.replica_cpu_per_event.as_secs_f64() * 1e6
        );
        if matches!(target, Target::Pg1 | Target::Pg2) {
            let per_commit = self.outcome.rate() / self.commits_per_second.max(1.0);
            line += &format!(
                ", database {:.1} µs; {:.0} database commits/s ({per_commit:.1} events each)",
                self.database_cpu_per_event.as_secs_f64() * 1e6,
                self.commits_per_second
            );
        }
        line
    }
}

/// Starts `count` replicas on `manifests`, each with a data directory of its own under
/// `dir`, sharing the first one's Application token (as a shared token file gives every
/// replica the same one).
async fn replicas(dir: &Path, manifests: &Path, count: usize, args: &[&str]) -> Vec<ServerProcess> {
    std::fs::create_dir_all(dir).expect("replicas dir");
    let mut servers: Vec<ServerProcess> = Vec::new();
    for i in 0..count {
        let data = dir.join(format!("replica-{i}"));
        if let Some(first) = servers.first() {
            let file = format!("tokens/application-{APP}.token");
            std::fs::create_dir_all(data.join("tokens")).expect("tokens dir");
            std::fs::copy(first.data.join(&file), data.join(&file)).expect("copy token");
        }
        servers.push(ServerProcess::start(manifests, &data, args).await);
    }
    servers
}

/// The token the first of `servers` took.
fn token_of(servers: Vec<ServerProcess>) -> Replicas {
    let token = servers[0].app_token(APP);
    Replicas { servers, token }
}

/// Drives `connections` split evenly over `urls` for `seconds`, one generator per URL.
async fn drive(
    urls: Vec<String>,
    token: Option<String>,
    connections: usize,
    seconds: u64,
) -> Outcome {
    let each = (connections / urls.len()).max(1);
    let runs = urls.into_iter().map(|url| {
        run_load(
            Load {
                url,
                token: token.clone(),
                body: BODY,
                connections: each,
                seconds,
            },
            false,
        )
    });
    let outcomes = futures::future::join_all(runs).await;
    Outcome::concurrent(&outcomes)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if loadgen::run_if_generator() {
        return;
    }
    let connections: usize = common::env_or("BENCH_CONNECTIONS", 64);
    let seconds: u64 = common::env_or("BENCH_SECONDS", 3);
    let rounds: usize = common::env_or("BENCH_ROUNDS", 5).max(1);
    let soak: u64 = common::env_or("BENCH_SOAK_SECONDS", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let noop = axum::Router::new().route(
            "/api/v1/heartbeat",
            post(|| async { (StatusCode::CREATED, axum::Json(serde_json::json!([]))) }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let noop_url = format!("http://{}/api/v1/heartbeat", l.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(l, noop).await });

        let pg = PgServer::start_durable();
        let url = pg.database(DATABASE);
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        let manifest = format!("apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: {APP}\n");
        std::fs::write(manifests.join("app.yaml"), manifest).expect("manifest");
        let pg_args = ["--database-url", url.as_str()];
        let sled = token_of(replicas(&dir.path().join("sled"), &manifests, 1, &[]).await);
        // Three replicas of one database share one token: the first serves (c), the other
        // two (d).
        let mut on_pg = replicas(&dir.path().join("pg"), &manifests, 3, &pg_args).await;
        let pg2 = token_of(on_pg.split_off(1));
        let pg1 = token_of(on_pg);

        println!(
            "replica benchmark: {connections} keep-alive connections over loopback from load-generator processes (split evenly over two replicas in (d)); \
             {rounds} rounds of {seconds} s per target in rotating order; PostgreSQL {} with fsync on",
            pg.psql("postgres", "SHOW server_version")
        );
        println!("load average at start: {}", common::load_average());
        let mut results: Vec<Vec<Round>> = TARGETS.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..TARGETS.len() {
                let i = (k + round) % TARGETS.len();
                let target = TARGETS[i];
                let probe = common::describe_flushes(&common::flush_probe(dir.path(), 200));
                let behind = match target {
                    Target::Noop => None,
                    Target::Sled => Some(&sled),
                    Target::Pg1 => Some(&pg1),
                    Target::Pg2 => Some(&pg2),
                };
                let (urls, token) = match behind {
                    None => (vec![noop_url.clone()], None),
                    Some(r) => (
                        r.servers.iter().map(|s| format!("{}/api/v1/heartbeat", s.base)).collect(),
                        Some(r.token.clone()),
                    ),
                };
                let servers: &[ServerProcess] = behind.map_or(&[], |r| &r.servers);
                let before = Usage::now(servers, &pg);
                let outcome = drive(urls, token, connections, seconds).await;
                let after = Usage::now(servers, &pg);
                let events = outcome.requests.max(1) as u32;
                let r = Round {
                    replica_cpu_per_event: (after.replicas.saturating_sub(before.replicas)) / events,
                    database_cpu_per_event: (after.database.saturating_sub(before.database)) / events,
                    commits_per_second: after.commits.saturating_sub(before.commits) as f64
                        / outcome.elapsed.as_secs_f64(),
                    probe,
                    outcome,
                };
                report(&format!("  round {} {}", round + 1, label(target)), &r.outcome);
                println!("{}", r.describe(target));
                results[i].push(r);
            }
        }
        summarise(&results);
        for r in [&sled, &pg1, &pg2] {
            for s in &r.servers {
                println!("  replica {}: RSS {:.0} MB after the rounds", s.base, s.rss() as f64 / 1e6);
            }
        }
        if soak > 0 {
            soak_run(&pg1, connections, soak).await;
        }
        for r in [sled, pg1, pg2] {
            r.servers.into_iter().for_each(ServerProcess::stop);
        }
    });
}

/// Prints each target over all rounds, the ratios to the no-op handler (median and
/// weakest round) and the target for one PostgreSQL replica.
fn summarise(results: &[Vec<Round>]) {
    println!("all rounds (load average now {}):", common::load_average());
    let merged: Vec<Outcome> = results
        .iter()
        .map(|rounds| Outcome::sequential(rounds.iter().map(|r| &r.outcome)))
        .collect();
    for (t, o) in TARGETS.iter().zip(&merged) {
        report(label(*t), o);
    }
    for (i, t) in TARGETS.iter().enumerate().skip(1) {
        let per_round: Vec<f64> = results[i]
            .iter()
            .zip(&results[0])
            .map(|(r, noop)| r.outcome.rate() / noop.outcome.rate())
            .collect();
        let weakest = per_round.iter().copied().fold(f64::MAX, f64::min);
        let median = common::median(per_round);
        let p99 = merged[i].pct(0.99).as_secs_f64() * 1e3;
        let cpu: Vec<f64> = results[i]
            .iter()
            .map(|r| r.replica_cpu_per_event.as_secs_f64())
            .collect();
        let per_replica = common::median(cpu) / if *t == Target::Pg2 { 2.0 } else { 1.0 };
        let mut line = format!(
            "{} / no-op: median of rounds {median:.2}, weakest round {weakest:.2}; p99 {p99:.2} ms; \
             replica-bound ceiling with the database elsewhere: {:.0} events/s per replica (2 cores / {:.1} µs)",
            label(*t),
            2.0 / per_replica.max(1e-9),
            per_replica * 1e6,
        );
        if *t == Target::Pg1 {
            let met = median >= 0.25 && p99 <= 20.0;
            line += &format!(
                " (target ≥ 0.25 and p99 ≤ 20 ms: {})",
                if met { "met" } else { "NOT met" }
            );
        }
        println!("{line}");
    }
}

/// One PostgreSQL replica under load for `seconds`, its resident memory every 30 s.
async fn soak_run(replicas: &Replicas, connections: usize, seconds: u64) {
    let server = &replicas.servers[0];
    let url = format!("{}/api/v1/heartbeat", server.base);
    println!("soak: one PostgreSQL replica under load for {seconds} s; its RSS every 30 s");
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut events = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let chunk = 30
            .min(seconds.saturating_sub(started.elapsed().as_secs()))
            .max(1);
        let o = drive(
            vec![url.clone()],
            Some(replicas.token.clone()),
            connections,
            chunk,
        )
        .await;
        events += o.requests;
        let rss = server.rss() as f64 / 1e6;
        println!(
            "  {:>5.0} s: {events} events so far, {:.0} events/s in this chunk, RSS {rss:.0} MB",
            started.elapsed().as_secs_f64(),
            o.rate()
        );
        samples.push(rss);
    }
    // The first chunk warms pools and buffers up: judge from the second sample on.
    let settled = samples
        .get(1..)
        .filter(|s| !s.is_empty())
        .unwrap_or(&samples);
    let (low, high) = settled
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    println!(
        "soak: {events} events; RSS from the second sample on between {low:.0} and {high:.0} MB ({:+.1} % from lowest to highest)",
        (high / low.max(1.0) - 1.0) * 100.0
    );
}
