//! Failover measured as a distribution: Down lateness before, during and after the loss
//! of the leader, and exactly one alert per incident, with thousands of monitors falling
//! Down all the while.
//!
//! Three `hartslag standalone --database-url` replicas (processes of their own, the
//! release binary) run on one PostgreSQL database (Debian's server started by the
//! benchmark, `fsync` on) and the same manifests: `BENCH_MONITORS` heartbeats, intervals
//! 10 to 30 s and grace 0 to 5 s, each alerting a webhook of its own (`/hook/<name>`) on a
//! receiver inside the benchmark that records when each delivery arrived, for which
//! monitor and incident. Clients ping every monitor through the three replicas in turn
//! (a failed or timed-out ping is sent again through the next replica, as a client behind
//! a Service would retry) for a warm-up; then the monitors stop being pinged one after the
//! other, so that Downs fall due at an even rate over `BENCH_SECONDS`. Part-way through,
//! the leader (the replica whose `/metrics` say `hartslag_leader 1`) is killed with
//! SIGKILL; later, with `BENCH_STALL=1` (the default), its successor is stalled with
//! SIGSTOP and let run again (SIGCONT) once another replica leads.
//!
//! A Down's lateness runs from its due time (the last ping the server stored, from the
//! alert itself, plus interval and grace) to the webhook's arrival at the receiver; and
//! to the moment the state is visible through the API (`GET /v1/heartbeats` on a
//! replica, polled every 250 ms: that figure is as coarse as the poll). The failover
//! window of a loss runs from 2 s before it (a Down due then may still be within its 2 s
//! when the leader goes) until every Down due before the successor led was delivered (its
//! catch-up); Downs are reported separately by whether their due time falls in a window.
//! At the end every acknowledged ping is looked up in the monitors' stored ping history.
//!
//! `cargo bench --bench failover`. Env: `BENCH_MONITORS` (3000), `BENCH_SECONDS` (90, the
//! span over which Downs fall due), `BENCH_STALL` (1; 0 for the kill alone).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::pg::PgServer;
use common::server::ServerProcess;
use hartslag::core::token::{Token, TokenKind};

const APP: &str = "bench";
const DATABASE: &str = "failover";
/// Longest interval plus grace: the warm-up lasts at least this long, so every monitor
/// has been pinged before its last ping.
const LONGEST_DUE: f64 = 35.0;
/// How often the API's view is polled.
const API_POLL: Duration = Duration::from_millis(250);
/// The target for Down lateness outside the failover windows (p99).
const LATENESS_TARGET: f64 = 2.0;
/// The target for a new leader after the loss of the old one.
const FAILOVER_TARGET: Duration = Duration::from_secs(15);

/// One monitor of the run.
struct Monitor {
    name: String,
    token: String,
    interval: u64,
    grace: u64,
    /// When its pings are sent, from the start of the pings; the last one last.
    pings: Vec<f64>,
}

/// The run's monitors: Downs due at an even rate over `run` seconds after `warm` seconds,
/// intervals and graces spread independently of the order they fall due in.
fn monitors(n: usize, warm: f64, run: f64) -> Vec<Monitor> {
    (0..n)
        .map(|i| {
            let interval = 10 + (i as u64 * 7_919) % 21;
            let grace = (i as u64 * 104_729 / 7) % 6;
            let due = warm + run * (i as f64 + 0.5) / n as f64;
            let last = due - (interval + grace) as f64;
            // Pinged every 0.6 intervals before that: never Late while pinged.
            let period = interval as f64 * 0.6;
            let mut pings: Vec<f64> = (0..)
                .map(|k| last - k as f64 * period)
                .take_while(|t| *t >= 1.0)
                .collect();
            pings.reverse();
            Monitor {
                name: format!("m{i:05}"),
                token: Token::generate(TokenKind::Heartbeat)
                    .expect("token")
                    .expose()
                    .to_string(),
                interval,
                grace,
                pings,
            }
        })
        .collect()
}

/// Writes the manifests: the Application and one Heartbeat per monitor alerting
/// `hook` + its name.
fn write_manifests(dir: &Path, monitors: &[Monitor], hook: &str) {
    std::fs::create_dir_all(dir).expect("manifests dir");
    let app =
        format!("apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: {APP}\n");
    std::fs::write(dir.join("app.yaml"), app).expect("manifest");
    let mut all = String::new();
    for m in monitors {
        all += &format!(
            "---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: {}\nspec:\n  interval: {}s\n  grace: {}s\n  applicationRef:\n    name: {APP}\n  alerts:\n    webhook: \"{hook}{}\"\n",
            m.name, m.interval, m.grace, m.name
        );
    }
    std::fs::write(dir.join("heartbeats.yaml"), all).expect("manifest");
}

/// Gives a replica's data directory the tokens every replica shares (as a shared Secret
/// or token files give them).
fn write_tokens(data: &Path, monitors: &[Monitor], app_token: &str, admin: &str) {
    let tokens = data.join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens dir");
    std::fs::write(tokens.join(format!("application-{APP}.token")), app_token).expect("token");
    std::fs::write(tokens.join("admin.token"), admin).expect("token");
    for m in monitors {
        std::fs::write(tokens.join(format!("heartbeat-{}.token", m.name)), &m.token)
            .expect("token");
    }
}

/// One accepted webhook delivery.
#[derive(Clone)]
struct Arrival {
    at: SystemTime,
    monitor: String,
    alert_id: String,
    event: String,
    last_ping_at: Option<SystemTime>,
}

fn parse_time(v: &serde_json::Value) -> Option<SystemTime> {
    let ts: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(SystemTime::from(ts))
}

/// The webhook receiver: its URL prefix (append the monitor's name) and what arrived.
async fn receiver() -> (String, Arc<Mutex<Vec<Arrival>>>) {
    let got: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook/{name}",
        axum::routing::post(
            move |axum::extract::Path(name): axum::extract::Path<String>,
                  axum::Json(v): axum::Json<serde_json::Value>| {
                let sink = sink.clone();
                async move {
                    let at = SystemTime::now();
                    let arrival = Arrival {
                        at,
                        monitor: name,
                        alert_id: v["alert_id"].as_str().unwrap_or_default().to_string(),
                        event: v["event"].as_str().unwrap_or_default().to_string(),
                        last_ping_at: parse_time(&v["last_ping_at"]),
                    };
                    sink.lock().expect("arrivals").push(arrival);
                    "ok"
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook/", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

/// The replicas' addresses and which of them are not to be asked (killed or stalled).
#[derive(Clone)]
struct Fleet {
    bases: Arc<Vec<String>>,
    down: Arc<Mutex<Vec<bool>>>,
    client: reqwest::Client,
}

impl Fleet {
    fn up(&self) -> Vec<usize> {
        let down = self.down.lock().expect("fleet");
        (0..self.bases.len()).filter(|i| !down[*i]).collect()
    }

    fn set_down(&self, i: usize, down: bool) {
        self.down.lock().expect("fleet")[i] = down;
    }

    /// Whether replica `i` says it leads; `None` while it does not answer. Reads
    /// `/metrics` only as far as the `hartslag_leader` line: with thousands of monitors
    /// the whole body is megabytes.
    async fn leads(&self, i: usize) -> Option<bool> {
        let ask = async {
            let mut r = self
                .client
                .get(format!("{}/metrics", self.bases[i]))
                .send()
                .await
                .ok()?;
            let mut text = Vec::new();
            while let Some(chunk) = r.chunk().await.ok()? {
                text.extend_from_slice(&chunk);
                let body = String::from_utf8_lossy(&text);
                if let Some(at) = body.find("\nhartslag_leader ") {
                    let line = body[at + 1..].lines().next().unwrap_or_default();
                    if body[at + 1..].contains('\n') {
                        return Some(line.trim_end().ends_with(" 1"));
                    }
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .ok()
            .flatten()
    }

    /// Waits until a replica other than `not` leads; its index.
    async fn new_leader(&self, not: Option<usize>, within: Duration) -> usize {
        let started = Instant::now();
        loop {
            for i in 0..self.bases.len() {
                if Some(i) != not && self.leads(i).await == Some(true) {
                    return i;
                }
            }
            assert!(
                started.elapsed() < within,
                "no replica led within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the ping clients did.
#[derive(Default)]
struct PingLog {
    sent: AtomicUsize,
    acknowledged: AtomicUsize,
    /// Attempts that failed or timed out and were sent again through another replica.
    retried: AtomicUsize,
    /// Pings no replica acknowledged.
    given_up: AtomicUsize,
    /// Per monitor: (sent, acknowledged) of each acknowledged ping.
    acks: Mutex<HashMap<usize, Vec<(SystemTime, SystemTime)>>>,
    /// Round-robin position.
    next: AtomicU64,
}

/// Sends one ping of monitor `m`, through the replicas in turn until one acknowledges it.
async fn ping(fleet: &Fleet, log: &PingLog, m: usize, token: &str) {
    log.sent.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..6 {
        let up = fleet.up();
        if up.is_empty() {
            break;
        }
        let k = log.next.fetch_add(1, Ordering::Relaxed) as usize % up.len();
        let url = format!("{}/v1/heartbeats/{token}/ping", fleet.bases[up[k]]);
        let sent = SystemTime::now();
        let answer = fleet
            .client
            .post(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            log.acknowledged.fetch_add(1, Ordering::Relaxed);
            let acked = SystemTime::now();
            log.acks
                .lock()
                .expect("acks")
                .entry(m)
                .or_default()
                .push((sent, acked));
            return;
        }
        if attempt < 5 {
            log.retried.fetch_add(1, Ordering::Relaxed);
        }
    }
    log.given_up.fetch_add(1, Ordering::Relaxed);
}

/// Sends every monitor's pings at their times from `start`, at most 64 at once.
async fn drive_pings(fleet: Fleet, log: Arc<PingLog>, monitors: Arc<Vec<Monitor>>, start: Instant) {
    let mut schedule: Vec<(f64, usize)> = monitors
        .iter()
        .enumerate()
        .flat_map(|(i, m)| m.pings.iter().map(move |t| (*t, i)))
        .collect();
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for (t, i) in schedule {
        tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into()).await;
        let permit = permits.clone().acquire_owned().await.expect("permits");
        let (fleet, log, monitors) = (fleet.clone(), log.clone(), monitors.clone());
        tasks.spawn(async move {
            ping(&fleet, &log, i, &monitors[i].token).await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Polls `GET /v1/heartbeats` on a replica that answers; the first time each monitor (by
/// name) showed `failing`.
async fn watch_api(fleet: Fleet, token: String, seen: Arc<Mutex<HashMap<String, SystemTime>>>) {
    let mut k = 0;
    loop {
        let up = fleet.up();
        let i = up[k % up.len().max(1)];
        let answer = fleet
            .client
            .get(format!("{}/v1/heartbeats", fleet.bases[i]))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let at = SystemTime::now();
        match answer {
            Ok(r) if r.status().is_success() => {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    let mut seen = seen.lock().expect("seen");
                    for h in v["heartbeats"].as_array().into_iter().flatten() {
                        if h["status"] == "failing"
                            && let Some(name) = h["name"].as_str()
                        {
                            seen.entry(name.to_string()).or_insert(at);
                        }
                    }
                }
            }
            // Another replica next time.
            _ => k += 1,
        }
        tokio::time::sleep(API_POLL).await;
    }
}

/// A failover during the run: when the leader was lost, when another led, and when the
/// Downs due until then were all delivered.
struct Window {
    what: &'static str,
    lost: SystemTime,
    led: SystemTime,
    caught_up: SystemTime,
}

impl Window {
    /// From 2 s before the loss (a Down due then may still be within its target) to the
    /// end of the catch-up.
    fn holds(&self, due: SystemTime) -> bool {
        due >= self.lost - Duration::from_secs_f64(LATENESS_TARGET) && due <= self.caught_up
    }
}

/// Seconds from `a` to `b`, negative if `b` is earlier.
fn secs(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// `n Downs: p50 …, p90 …, p99 …, max …` of lateness in seconds; and the p99.
fn describe(mut v: Vec<f64>) -> (String, f64) {
    if v.is_empty() {
        return ("no Downs".into(), f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let q = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    let p99 = q(0.99);
    (
        format!(
            "{} Downs: p50 {:.3} s, p90 {:.3} s, p99 {p99:.3} s, max {:.3} s",
            v.len(),
            q(0.5),
            q(0.9),
            q(1.0)
        ),
        p99,
    )
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = common::env_or("BENCH_MONITORS", 3_000);
    let run: f64 = common::env_or("BENCH_SECONDS", 90.0);
    let stall = common::env_or("BENCH_STALL", 1) == 1;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(n, run, stall));
}

async fn bench(n: usize, run: f64, stall: bool) {
    let warm = LONGEST_DUE + 5.0;
    let monitors = Arc::new(monitors(n, warm, run));
    let (hook, arrivals) = receiver().await;
    let pg = PgServer::start_durable();
    let url = pg.database(DATABASE);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    write_manifests(&manifests, &monitors, &hook);
    let app_token = Token::generate(TokenKind::Application).expect("token");
    let admin = Token::generate(TokenKind::Admin).expect("token");
    let probe = common::describe_flushes(&common::flush_probe(dir.path(), 200));
    println!(
        "failover benchmark: {n} monitors (interval 10-30 s, grace 0-5 s, a webhook each) on three replicas of one PostgreSQL {} database (fsync on); \
         Downs due at {:.0}/s over {run:.0} s after a {warm:.0} s warm-up; kill -9 of the leader{}",
        pg.psql("postgres", "SHOW server_version"),
        n as f64 / run,
        if stall {
            ", then SIGSTOP of its successor"
        } else {
            ""
        }
    );
    println!(
        "load average at start: {}; disk probe: fdatasync {probe}",
        common::load_average()
    );

    let args = [
        "--database-url",
        url.as_str(),
        "--min-interval",
        "1s",
        "--allow-private-webhooks",
    ];
    let mut servers = Vec::new();
    for i in 0..3 {
        // Every replica's data directory is `data` in a directory of its own, as on a
        // Deployment's pods: a successor finds the definitions it declares unchanged.
        let home = dir.path().join(format!("replica-{i}"));
        write_tokens(
            &home.join("data"),
            &monitors,
            app_token.expose(),
            admin.expose(),
        );
        let s = ServerProcess::start_in(Some(&home), &manifests, Path::new("data"), &args).await;
        println!(
            "  replica {i} at {} ready in {:.2} s",
            s.base,
            s.started_in.as_secs_f64()
        );
        servers.push(s);
    }
    let fleet = Fleet {
        bases: Arc::new(servers.iter().map(|s| s.base.clone()).collect()),
        down: Arc::new(Mutex::new(vec![false; 3])),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client"),
    };
    let first = fleet.new_leader(None, Duration::from_secs(60)).await;
    // Every Heartbeat is declared (by the leader) before the clock starts.
    wait_declared(&fleet, app_token.expose(), n).await;
    println!("  replica {first} leads; every monitor declared");

    let log = Arc::new(PingLog::default());
    let start = Instant::now();
    let at = |t: f64| start + Duration::from_secs_f64(t);
    let pings = tokio::spawn(drive_pings(
        fleet.clone(),
        log.clone(),
        monitors.clone(),
        start,
    ));
    let seen: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let watcher = tokio::spawn(watch_api(
        fleet.clone(),
        app_token.expose().to_string(),
        seen.clone(),
    ));

    // The loss of the leader: part-way through the Downs (the middle without a stall).
    let kill_at = warm + run * if stall { 0.35 } else { 0.5 };
    tokio::time::sleep_until(at(kill_at).into()).await;
    servers[first].signal("-KILL");
    let lost = SystemTime::now();
    let lost_at = Instant::now();
    let second = fleet.new_leader(Some(first), Duration::from_secs(60)).await;
    let took = lost_at.elapsed();
    // Clients met refused connections until now; a Service drops the endpoint later.
    fleet.set_down(first, true);
    let mut losses = vec![(
        "kill -9 of the leader",
        lost,
        SystemTime::now(),
        took,
        second,
    )];
    println!(
        "  +{:.1} s: kill -9 of the leader (replica {first}); replica {second} leads {:.2} s later",
        start.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );

    if stall {
        tokio::time::sleep_until(at(warm + run * 0.7).into()).await;
        let leading = fleet.leads(second).await;
        assert_eq!(leading, Some(true), "replica {second} no longer leads");
        servers[second].signal("-STOP");
        let lost = SystemTime::now();
        let lost_at = Instant::now();
        let third = fleet
            .new_leader(Some(second), Duration::from_secs(60))
            .await;
        let took = lost_at.elapsed();
        losses.push((
            "SIGSTOP of the leader",
            lost,
            SystemTime::now(),
            took,
            third,
        ));
        servers[second].signal("-CONT");
        fleet.set_down(second, true);
        println!(
            "  +{:.1} s: SIGSTOP of the leader (replica {second}); replica {third} leads {:.2} s later; SIGCONT",
            start.elapsed().as_secs_f64() - took.as_secs_f64(),
            took.as_secs_f64()
        );
    }
    let _ = pings.await;
    // Every monitor has a Down delivered, or a minute passed after the last was due.
    let until = at(warm + run + 60.0);
    while Instant::now() < until {
        let got: std::collections::HashSet<String> = arrivals
            .lock()
            .expect("arrivals")
            .iter()
            .map(|a| a.monitor.clone())
            .collect();
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And nothing is left to send.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && pg.psql(DATABASE, "SELECT count(*) FROM hartslag_outbox") != "0"
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watcher.abort();
    let end_load = common::load_average();

    let arrivals = arrivals.lock().expect("arrivals").clone();
    let windows: Vec<Window> = losses
        .iter()
        .map(|(what, lost, led, _, _)| Window {
            what,
            lost: *lost,
            led: *led,
            caught_up: caught_up(&arrivals, &monitors, *led),
        })
        .collect();
    for ((what, _, _, took, _), w) in losses.iter().zip(&windows) {
        println!(
            "{what}: a new leader after {:.2} s (target ≤ 15 s: {}); catch-up done {:.2} s after it led",
            took.as_secs_f64(),
            met(*took <= FAILOVER_TARGET),
            secs(w.led, w.caught_up)
        );
    }
    let by_name: HashMap<&str, usize> = monitors
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    report_lateness(&arrivals, &monitors, &by_name, &windows, &seen);
    report_alerts(&arrivals, &monitors, &windows);
    report_pings(&pg, &log, &monitors);
    for (i, s) in servers.iter_mut().enumerate() {
        let state = match s.exited() {
            None => "running".to_string(),
            Some(None) => "killed".to_string(),
            Some(Some(code)) => format!("exited {code}"),
        };
        println!("  replica {i}: {state}, RSS {:.0} MB", s.rss() as f64 / 1e6);
    }
    let probe = common::describe_flushes(&common::flush_probe(dir.path(), 200));
    println!(
        "load average at the end of the run: {end_load}; now {}; disk probe: fdatasync {probe}",
        common::load_average()
    );
    drop(servers);
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("replicas' logs kept in {}", dir.keep().display());
    }
}

/// Waits until the API lists all `n` Heartbeats.
async fn wait_declared(fleet: &Fleet, token: &str, n: usize) {
    let started = Instant::now();
    loop {
        let listed = fleet
            .client
            .get(format!("{}/v1/heartbeats", fleet.bases[0]))
            .bearer_auth(token)
            .send()
            .await
            .ok();
        let count = match listed {
            Some(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["heartbeats"].as_array().map(Vec::len))
                .unwrap_or(0),
            None => 0,
        };
        if count >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {count} of {n} Heartbeats declared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The due time of the Down an arrival is about: the stored last ping plus interval and
/// grace.
fn due(a: &Arrival, m: &Monitor) -> Option<SystemTime> {
    Some(a.last_ping_at? + Duration::from_secs(m.interval + m.grace))
}

/// When the last of the Downs due before `led` was delivered (at least `led`).
fn caught_up(arrivals: &[Arrival], monitors: &[Monitor], led: SystemTime) -> SystemTime {
    let by_name: HashMap<&str, &Monitor> = monitors.iter().map(|m| (m.name.as_str(), m)).collect();
    arrivals
        .iter()
        .filter(|a| a.event == "down")
        .filter(|a| {
            by_name
                .get(a.monitor.as_str())
                .and_then(|m| due(a, m))
                .is_some_and(|d| d <= led)
        })
        .map(|a| a.at)
        .fold(led, |latest, at| latest.max(at))
}

/// Down lateness to the webhook and to the API, by where the due time falls.
fn report_lateness(
    arrivals: &[Arrival],
    monitors: &[Monitor],
    by_name: &HashMap<&str, usize>,
    windows: &[Window],
    seen: &Mutex<HashMap<String, SystemTime>>,
) {
    let seen = seen.lock().expect("seen");
    // Per part of the run: webhook lateness, API lateness.
    let mut parts: BTreeMap<usize, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut first = HashMap::new();
    for a in arrivals.iter().filter(|a| a.event == "down") {
        first.entry(a.monitor.as_str()).or_insert(a);
    }
    for (name, a) in first {
        let Some(m) = by_name.get(name).map(|i| &monitors[*i]) else {
            continue;
        };
        let Some(due) = due(a, m) else { continue };
        // 0: before the first window, 2k+1: inside window k, 2k+2: after it.
        let part = windows
            .iter()
            .enumerate()
            .find_map(|(k, w)| w.holds(due).then_some(2 * k + 1))
            .unwrap_or_else(|| 2 * windows.iter().filter(|w| due > w.caught_up).count());
        let e = parts.entry(part).or_default();
        e.0.push(secs(due, a.at));
        if let Some(at) = seen.get(name) {
            e.1.push(secs(due, *at));
        }
    }
    println!(
        "Down lateness, due time (stored last ping + interval + grace) to the webhook's arrival [to failing in GET /v1/heartbeats, polled every {} ms]:",
        API_POLL.as_millis()
    );
    let mut outside = (Vec::new(), Vec::new());
    for (part, (hook, api)) in &parts {
        let label = match (part % 2, part / 2) {
            (0, 0) => "before the first loss".to_string(),
            (0, k) => format!("after {} and its catch-up", windows[k - 1].what),
            (_, k) => format!("inside the window of {}", windows[k].what),
        };
        println!(
            "  {label}: {} [{}]",
            describe(hook.clone()).0,
            describe(api.clone()).0
        );
        if part % 2 == 0 {
            outside.0.extend(hook);
            outside.1.extend(api);
        }
    }
    let (text, p99) = describe(outside.0);
    println!(
        "  outside the windows: {text} [{}] (target p99 ≤ {LATENESS_TARGET} s: {})",
        describe(outside.1).0,
        met(p99 <= LATENESS_TARGET)
    );
}

/// Deliveries per incident: every monitor goes Down once in the run. Repeats are listed
/// with when they arrived, from each loss of the leader.
fn report_alerts(arrivals: &[Arrival], monitors: &[Monitor], windows: &[Window]) {
    let mut per_monitor: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut other = 0;
    for a in arrivals {
        if a.event == "down" {
            per_monitor.entry(&a.monitor).or_default().push(&a.alert_id);
        } else {
            other += 1;
        }
    }
    let counts: Vec<usize> = monitors
        .iter()
        .map(|m| per_monitor.get(m.name.as_str()).map_or(0, Vec::len))
        .collect();
    let none = counts.iter().filter(|c| **c == 0).count();
    let one = counts.iter().filter(|c| **c == 1).count();
    let more = counts.iter().filter(|c| **c > 1).count();
    let repeats = per_monitor
        .values()
        .filter(|ids| ids.len() > 1 && ids.iter().all(|id| *id == ids[0]))
        .count();
    println!(
        "alerts per incident ({} incidents): {none} with none, {one} with one, {more} with more ({repeats} of them the same alert id again); {other} other deliveries (target: every incident exactly one: {})",
        monitors.len(),
        met(none == 0 && more == 0 && other == 0)
    );
    for (name, ids) in per_monitor.iter().filter(|(_, ids)| ids.len() > 1).take(5) {
        let times: Vec<String> = arrivals
            .iter()
            .filter(|a| a.monitor == *name)
            .map(|a| {
                let from: Vec<String> = windows
                    .iter()
                    .map(|w| format!("{:+.3} s", secs(w.lost, a.at)))
                    .collect();
                format!("{} at {} from the losses", a.alert_id, from.join(", "))
            })
            .collect();
        println!("    {name}: {ids:?}: {}", times.join("; "));
    }
}

/// Acknowledged pings against the stored ping history, read from the database (the
/// management API's rate limit would take minutes for thousands of monitors).
fn report_pings(pg: &PgServer, log: &PingLog, monitors: &[Monitor]) {
    let rows = pg.psql(
        DATABASE,
        "SELECT m.key, convert_from(p.record, 'UTF8')::jsonb->>'at' \
         FROM hartslag_pings p JOIN hartslag_monitors m USING (num)",
    );
    let mut stored: HashMap<&str, Vec<SystemTime>> = HashMap::new();
    let mut stored_total = 0;
    for line in rows.lines() {
        let Some((key, at)) = line.split_once('|') else {
            continue;
        };
        let name = key.rsplit('/').next().unwrap_or(key);
        let Some(m) = monitors.iter().find(|m| m.name == name) else {
            continue;
        };
        if let Ok(ts) = at.parse::<jiff::Timestamp>() {
            stored_total += 1;
            stored
                .entry(m.name.as_str())
                .or_default()
                .push(SystemTime::from(ts));
        }
    }
    let acks = std::mem::take(&mut *log.acks.lock().expect("acks"));
    let (mut found, mut lost) = (0, 0);
    let slack = Duration::from_millis(5);
    for (k, m) in monitors.iter().enumerate() {
        let times = stored.get(m.name.as_str()).map_or(&[][..], Vec::as_slice);
        for (sent, acked) in acks.get(&k).into_iter().flatten() {
            if times
                .iter()
                .any(|t| *t + slack >= *sent && *t <= *acked + slack)
            {
                found += 1;
            } else {
                lost += 1;
            }
        }
    }
    println!(
        "pings: {} sent, {} acknowledged ({} attempts sent again through another replica, {} given up); stored: {stored_total}; acknowledged and not stored: {lost} of {} (target none lost: {})",
        log.sent.load(Ordering::Relaxed),
        log.acknowledged.load(Ordering::Relaxed),
        log.retried.load(Ordering::Relaxed),
        log.given_up.load(Ordering::Relaxed),
        found + lost,
        met(lost == 0)
    );
}
