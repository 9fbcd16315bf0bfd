//! tokio-postgres (with deadpool-postgres) against sqlx on the ingest writer's transaction:
//! a group of events inserted from arrays with `unnest`, and the group's rollups added to
//! with `INSERT ... ON CONFLICT DO UPDATE` (daily, totals, hourly), committed as one
//! transaction. tokio-postgres sends the four statements of a group at once (it pipelines
//! statements issued together on one connection); sqlx runs them one after the other, the
//! only way it offers on one connection. Both use statements prepared once per connection. Both talk to the same durable server (fsync on)
//! over loopback without TLS, with the same number of connections and transactions in
//! flight, in interleaved rounds.
//!
//! `cargo run --release` in this directory. Env: `ROUNDS` (4), `SECONDS` (5 per driver
//! and round), `IN_FLIGHT` (4 transactions at once), `GROUP` (32 events per transaction).

#[path = "../../../tests/it/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::time::{Duration, Instant};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    app bigint NOT NULL, at bigint NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY,
    event text COLLATE \"C\" NOT NULL, weight bigint NOT NULL, user_id bigint,
    PRIMARY KEY (app, at, seq));
CREATE TABLE IF NOT EXISTS daily (
    app bigint NOT NULL, day integer NOT NULL, event text COLLATE \"C\" NOT NULL,
    count bigint NOT NULL, weight numeric NOT NULL, PRIMARY KEY (app, day, event));
CREATE TABLE IF NOT EXISTS totals (
    app bigint NOT NULL, event text COLLATE \"C\" NOT NULL,
    count bigint NOT NULL, weight numeric NOT NULL, PRIMARY KEY (app, event));
CREATE TABLE IF NOT EXISTS hourly (
    app bigint NOT NULL, hour bigint NOT NULL, event text COLLATE \"C\" NOT NULL,
    count bigint NOT NULL, weight numeric NOT NULL, PRIMARY KEY (app, hour, event));
";

const INSERT: &str = "INSERT INTO events (app, at, event, weight, user_id) \
     SELECT a, t, e, w, u FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[]) AS x(a, t, e, w, u)";
const DAILY: &str = "INSERT INTO daily AS r (app, day, event, count, weight) VALUES ($1, $2, $3, $4, $5::text::numeric) \
     ON CONFLICT (app, day, event) DO UPDATE SET count = r.count + excluded.count, weight = r.weight + excluded.weight";
const TOTALS: &str = "INSERT INTO totals AS r (app, event, count, weight) VALUES ($1, $2, $3, $4::text::numeric) \
     ON CONFLICT (app, event) DO UPDATE SET count = r.count + excluded.count, weight = r.weight + excluded.weight";
const HOURLY: &str = "INSERT INTO hourly AS r (app, hour, event, count, weight) VALUES ($1, $2, $3, $4, $5::text::numeric) \
     ON CONFLICT (app, hour, event) DO UPDATE SET count = r.count + excluded.count, weight = r.weight + excluded.weight";

/// One group's rows: each task writes its own application, so the rollup rows of
/// different tasks never wait for each other (as different replicas' groups mostly
/// do not).
struct Group {
    app: i64,
    at: Vec<i64>,
    events: Vec<String>,
    weights: Vec<i64>,
    users: Vec<i64>,
}

impl Group {
    fn new(app: i64, size: usize, n: i64) -> Self {
        Self {
            app,
            at: (0..size as i64).map(|i| n * 1000 + i).collect(),
            events: vec!["bench-event".to_string(); size],
            weights: vec![3; size],
            users: vec![42; size],
        }
    }

    fn apps(&self) -> Vec<i64> {
        vec![self.app; self.at.len()]
    }

    fn count(&self) -> i64 {
        self.at.len() as i64
    }

    fn weight(&self) -> String {
        self.weights.iter().sum::<i64>().to_string()
    }
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
type Params<'a, const A: usize, const B: usize, const C: usize, const D: usize> = (
    [Param<'a>; A],
    [Param<'a>; B],
    [Param<'a>; C],
    [Param<'a>; D],
);

async fn tokio_postgres_group(pool: &deadpool_postgres::Pool, g: &Group) {
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    let (apps, count, weight) = (g.apps(), g.count(), g.weight());
    let (day, hour, event) = (20261205_i32, 493_000_i64, "bench-event");
    let (p_insert, p_daily, p_totals, p_hourly): Params<5, 5, 4, 5> = (
        [&apps, &g.at, &g.events, &g.weights, &g.users],
        [&g.app, &day, &event, &count, &weight],
        [&g.app, &event, &count, &weight],
        [&g.app, &hour, &event, &count, &weight],
    );
    // Prepared once per connection and cached, as hartslag's writer does (and as sqlx
    // does by itself).
    let (s_insert, s_daily, s_totals, s_hourly) = futures::future::try_join4(
        tx.prepare_cached(INSERT),
        tx.prepare_cached(DAILY),
        tx.prepare_cached(TOTALS),
        tx.prepare_cached(HOURLY),
    )
    .await
    .expect("prepare");
    let insert = tx.execute(&s_insert, &p_insert);
    let daily = tx.execute(&s_daily, &p_daily);
    let totals = tx.execute(&s_totals, &p_totals);
    let hourly = tx.execute(&s_hourly, &p_hourly);
    futures::future::try_join4(insert, daily, totals, hourly)
        .await
        .expect("statements");
    tx.commit().await.expect("commit");
}

async fn sqlx_group(pool: &sqlx::PgPool, g: &Group) {
    let mut tx = pool.begin().await.expect("begin");
    let (apps, count, weight) = (g.apps(), g.count(), g.weight());
    let (day, hour, event) = (20261205_i32, 493_000_i64, "bench-event");
    sqlx::query(INSERT)
        .bind(&apps)
        .bind(&g.at)
        .bind(&g.events)
        .bind(&g.weights)
        .bind(&g.users)
        .execute(&mut *tx)
        .await
        .expect("insert");
    sqlx::query(DAILY)
        .bind(g.app)
        .bind(day)
        .bind(event)
        .bind(count)
        .bind(&weight)
        .execute(&mut *tx)
        .await
        .expect("daily");
    sqlx::query(TOTALS)
        .bind(g.app)
        .bind(event)
        .bind(count)
        .bind(&weight)
        .execute(&mut *tx)
        .await
        .expect("totals");
    sqlx::query(HOURLY)
        .bind(g.app)
        .bind(hour)
        .bind(event)
        .bind(count)
        .bind(&weight)
        .execute(&mut *tx)
        .await
        .expect("hourly");
    tx.commit().await.expect("commit");
}

#[derive(Clone)]
enum Driver {
    TokioPostgres(deadpool_postgres::Pool),
    Sqlx(sqlx::PgPool),
}

impl Driver {
    fn name(&self) -> &'static str {
        match self {
            Driver::TokioPostgres(_) => "tokio-postgres + deadpool",
            Driver::Sqlx(_) => "sqlx",
        }
    }

    async fn group(&self, g: &Group) {
        match self {
            Driver::TokioPostgres(p) => tokio_postgres_group(p, g).await,
            Driver::Sqlx(p) => sqlx_group(p, g).await,
        }
    }
}

/// What one driver did in one round.
struct Round {
    transactions: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    cpu: Duration,
}

async fn round(driver: &Driver, in_flight: usize, group: usize, seconds: u64) -> Round {
    let cpu_before = own_cpu();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..in_flight)
        .map(|t| {
            let driver = driver.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < until {
                    let g = Group::new(t as i64 + 1, group, n);
                    let at = Instant::now();
                    driver.group(&g).await;
                    latencies.push(at.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    latencies.sort();
    Round {
        transactions: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
        cpu: own_cpu().saturating_sub(cpu_before),
    }
}

/// This process's CPU time (user and system), from `/proc/self/stat` (USER_HZ = 100).
fn own_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(l: &[Duration], p: f64) -> f64 {
    l.get(((l.len().max(1) - 1) as f64 * p).round() as usize)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (rounds, seconds) = (env_or("ROUNDS", 4), env_or("SECONDS", 5));
    let (in_flight, group) = (
        env_or("IN_FLIGHT", 4) as usize,
        env_or("GROUP", 32) as usize,
    );
    let server = pg::PgServer::start_durable();
    let url = server.database("drivers");
    server.psql("drivers", SCHEMA);

    let config: tokio_postgres::Config = url.parse().expect("url");
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    let deadpool = deadpool_postgres::Pool::builder(manager)
        .max_size(in_flight)
        .build()
        .expect("pool");
    let sqlx = sqlx::postgres::PgPoolOptions::new()
        .max_connections(in_flight as u32)
        .connect(&url)
        .await
        .expect("sqlx pool");
    let drivers = [Driver::TokioPostgres(deadpool), Driver::Sqlx(sqlx)];
    println!(
        "PostgreSQL drivers on the ingest transaction: {group} events and 3 rollup upserts per transaction, \
         {in_flight} transactions in flight, {rounds} rounds of {seconds} s per driver in rotating order, \
         PostgreSQL {} with fsync on, loopback without TLS",
        server.psql("postgres", "SHOW server_version")
    );
    let mut all: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for r in 0..rounds as usize {
        for k in 0..2 {
            let i = (k + r) % 2;
            let d = &drivers[i];
            let o = round(d, in_flight, group, seconds).await;
            let tps = o.transactions as f64 / o.elapsed.as_secs_f64();
            println!(
                "  round {} {:<26} {:>7.0} transactions/s {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms  client CPU {:.1} µs/event",
                r + 1,
                d.name(),
                tps,
                tps * group as f64,
                pct(&o.latencies, 0.5),
                pct(&o.latencies, 0.99),
                o.cpu.as_secs_f64() * 1e6 / (o.transactions.max(1) * group) as f64
            );
            all[i].push(o);
        }
    }
    println!("medians of the rounds:");
    for (d, rounds) in drivers.iter().zip(&all) {
        let mut rates: Vec<f64> = rounds
            .iter()
            .map(|o| o.transactions as f64 * group as f64 / o.elapsed.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        let mut p99: Vec<f64> = rounds.iter().map(|o| pct(&o.latencies, 0.99)).collect();
        p99.sort_by(f64::total_cmp);
        let mut cpu: Vec<f64> = rounds
            .iter()
            .map(|o| o.cpu.as_secs_f64() * 1e6 / (o.transactions.max(1) * group) as f64)
            .collect();
        cpu.sort_by(f64::total_cmp);
        println!(
            "  {:<26} {:>8.0} events/s  p99 {:.2} ms  client CPU {:.1} µs/event",
            d.name(),
            rates[rates.len() / 2],
            p99[p99.len() / 2],
            cpu[cpu.len() / 2]
        );
    }
}
