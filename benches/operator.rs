//! Operator benchmark against a real API server (`KUBECONFIG` and `HARTSLAG_CLUSTER_RUN`:
//! the control plane of `tests/cluster/cluster.sh up`, whose audit log counts the
//! operator's requests). The operator runs as the Helm chart's ServiceAccount with the
//! chart's RBAC, as in the end-to-end tests.
//!
//! 0. apply rounds: for each `--reconcile-concurrency` in `BENCH_APPLY_CONCURRENCY` (a
//!    comma-separated list, e.g. `16,32,16,32` to interleave; empty by default), a fresh
//!    namespace and operator, `BENCH_HEARTBEATS` Heartbeats created, the time until all are
//!    Ready, and from the audit log the operator's requests, their mean latency, and the
//!    requests per second the API server answered from all clients.
//! 1. apply → Ready: `BENCH_HEARTBEATS` (1 000) Heartbeats created 32 at a time; the time
//!    until every one is Ready (followed by a watch), and the operator's requests meanwhile.
//! 2. idle: the operator's requests per second with those Heartbeats idle, over
//!    `BENCH_IDLE_SECONDS` (300), leases apart. `BENCH_IDLE_SECONDS=0` skips phases 1–3.
//! 3. restart: status writes after a restart with nothing changed, and the gap from SIGTERM
//!    of the old process to the first ping the new one accepts.
//! 4. status lag: `BENCH_LAG_HEARTBEATS` (10 000) Heartbeats pinging every 5 minutes
//!    (`BENCH_LAG_INTERVAL`; interval and grace as long), 1 % of them left to go Late and
//!    Down; after a warm-up (the first round of pings, New → Up, written at the budget),
//!    over `BENCH_LAG_SECONDS` (120; pings are spread evenly, so a window shorter than the
//!    ping period sees the steady rate), the status writes per second (budget 20) and the
//!    lag from a state transition to its status write. `BENCH_LAG_HEARTBEATS=0` skips it.
//!
//! `eval "$(bash tests/cluster/cluster.sh env)"; cargo bench --bench operator`

mod common;
#[path = "../tests/it/operator_e2e/harness.rs"]
#[allow(dead_code)] // the benchmark uses part of the end-to-end harness
mod harness;
#[path = "../tests/it/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "../tests/it/pg.rs"]
#[allow(dead_code)] // the harness can put its servers on PostgreSQL
mod pg;

use std::time::{Duration, Instant};

use futures::StreamExt;
use hartslag::k8s::crd::Heartbeat;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use harness::{Install, Operator, prepare, requests, status_writes};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The bucket bound below which a fraction `q` of the observations of histogram `name` fall,
/// in the difference `after` − `before`.
fn quantile(after: &str, before: &str, name: &str, q: f64) -> f64 {
    let count = metric(after, &format!("{name}_count")) - metric(before, &format!("{name}_count"));
    for line in after
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
    {
        let key = line.rsplit_once(' ').map(|(k, _)| k).unwrap_or(line);
        let le = line.split('"').nth(1).unwrap_or("+Inf");
        let a: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let b: f64 = before
            .lines()
            .find(|l| l.rsplit_once(' ').map(|(k, _)| k) == Some(key))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if count > 0.0 && a - b >= q * count {
            return le.parse().unwrap_or(f64::INFINITY);
        }
    }
    f64::NAN
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Creates Heartbeats `prefix-0..n` with `spec`, 32 requests at a time.
async fn create(hbs: &Api<Heartbeat>, prefix: &str, n: usize, spec: &Value) {
    futures::stream::iter(0..n)
        .map(|i| {
            let hb: Heartbeat = serde_json::from_value(json!({
                "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
                "metadata": {"name": format!("{prefix}-{i}")}, "spec": spec,
            }))
            .expect("hb");
            async move {
                hbs.create(&PostParams::default(), &hb)
                    .await
                    .expect("create")
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

fn is_ready(h: &Heartbeat) -> bool {
    h.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Waits until `n` Heartbeats are Ready, following a watch (a list of every Heartbeat a few
/// times a second would load the API server the benchmark measures).
async fn all_ready(hbs: &Api<Heartbeat>, n: usize, within: Duration) {
    use kube::ResourceExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let mut ready = std::collections::HashSet::new();
    let stream = watcher(hbs.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::Instant::now() + within;
    while ready.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(hb))) if is_ready(&hb) => {
                ready.insert(hb.name_any());
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch of Heartbeats ended"),
            Err(_) => panic!(
                "only {} of {n} Heartbeats Ready after {within:?}",
                ready.len()
            ),
        }
    }
}

/// What the API server's audit log shows for `[from, to)`: requests from every client
/// (watches apart) per second on average and in the busiest second, and `user`'s requests
/// with their mean latency (received → answered) and how many were in flight on average;
/// both also per Heartbeat of the `heartbeats` created, the figure that does not depend on
/// the machine's load.
fn server_load(
    user: &str,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
    heartbeats: usize,
) -> String {
    let dir = harness::cluster_run().join("logs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("audit logs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit"))
        })
        .collect();
    files.sort();
    let mut per_second: std::collections::HashMap<i64, usize> = Default::default();
    let (mut all, mut mine, mut busy) = (0usize, 0usize, 0.0f64);
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if e["verb"] == "watch" || e["stage"] != "ResponseComplete" {
                continue;
            }
            let at = |k: &str| {
                e[k].as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            };
            let (Some(received), Some(answered)) =
                (at("requestReceivedTimestamp"), at("stageTimestamp"))
            else {
                continue;
            };
            if received < from || received >= to {
                continue;
            }
            all += 1;
            *per_second.entry(received.as_second()).or_default() += 1;
            if e["user"]["username"] == user && e["objectRef"]["resource"] != "leases" {
                mine += 1;
                busy += answered.duration_since(received).as_secs_f64();
            }
        }
    }
    let secs = to.duration_since(from).as_secs_f64().max(1e-3);
    let per = heartbeats.max(1) as f64;
    format!(
        "the operator sent {mine} requests (leases apart; {:.2} per Heartbeat), mean latency {:.0} ms, {:.1} in flight on average; the API server answered {all} requests from all clients ({:.2} per Heartbeat, the creates included), {:.0} requests/s, {} in the busiest second",
        mine as f64 / per,
        1000.0 * busy / (mine.max(1) as f64),
        busy / secs,
        all as f64 / per,
        all as f64 / secs,
        per_second.values().max().copied().unwrap_or(0)
    )
}

/// Removes namespace `ns` with its Heartbeats (which carry no finalizer) and waits until it
/// is gone: the namespace controller deletes its thousands of objects one request at a time,
/// and a round measured meanwhile shares the API server with that.
fn teardown_many(ns: &str) {
    let _ = std::process::Command::new("kubectl")
        .args(["delete", "namespace", ns, "--wait=true", "--timeout=600s"])
        .output();
}

/// One round of apply → Ready with `--reconcile-concurrency concurrency`, in a namespace
/// of its own.
async fn apply_round(n: usize, concurrency: u16) {
    let (client, ns) = prepare("bench-apply").await;
    let install = Install::new(&ns, &[&ns]);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = concurrency.to_string();
    let op = Operator::spawn(
        &install,
        &dir.path().join("data"),
        "smtp://127.0.0.1:1",
        port(),
        &["--status-period", "60s", "--reconcile-concurrency", &c],
    );
    op.wait_ready(Duration::from_secs(60)).await;
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    let since = jiff::Timestamp::now();
    let t = Instant::now();
    create(&hbs, "hb", n, &json!({"interval": "1h"})).await;
    let created = t.elapsed();
    all_ready(&hbs, n, Duration::from_secs(600)).await;
    let ready = t.elapsed();
    let until = jiff::Timestamp::now();
    // The audit log is written a moment after the answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "apply → Ready, --reconcile-concurrency {concurrency}: {n} Heartbeats created in {:.1} s, all Ready after {:.1} s; {}",
        created.as_secs_f64(),
        ready.as_secs_f64(),
        server_load(&install.user, since, until, n)
    );
    drop(op);
    teardown_many(&ns);
}

/// Every issued ping URL in the namespace, by Heartbeat name.
async fn ping_urls(secrets: &Api<Secret>) -> Vec<(String, String)> {
    let list = secrets
        .list(&ListParams::default().labels("hartslag.dev/token=issued"))
        .await
        .expect("secrets");
    list.items
        .iter()
        .filter_map(|s| {
            let url = String::from_utf8(s.data.as_ref()?.get("ping-url")?.0.clone()).ok()?;
            let name = s
                .metadata
                .name
                .as_ref()?
                .strip_suffix("-heartbeat")?
                .to_string();
            Some((name, url))
        })
        .collect()
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Phases 1 to 3.
async fn apply_idle_restart(n: usize, idle: Duration) {
    let (client, ns) = prepare("bench-op").await;
    let install = Install::new(&ns, &[&ns]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = port();
    let op = Operator::spawn(
        &install,
        &data,
        "smtp://127.0.0.1:1",
        port,
        &["--status-period", "60s"],
    );
    op.wait_ready(Duration::from_secs(60)).await;
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);

    let since = jiff::Timestamp::now();
    let t = Instant::now();
    create(&hbs, "hb", n, &json!({"interval": "1h"})).await;
    let created = t.elapsed();
    all_ready(&hbs, n, Duration::from_secs(600)).await;
    let ready = t.elapsed();
    let sent = requests(&install.user, since)
        .into_iter()
        .filter(|r| r.resource != "leases")
        .count();
    println!(
        "apply → Ready: {n} Heartbeats created in {:.1} s (32 at a time), all Ready after {:.1} s; the operator sent {sent} requests meanwhile ({:.2} per Heartbeat)",
        created.as_secs_f64(),
        ready.as_secs_f64(),
        sent as f64 / n.max(1) as f64
    );

    tokio::time::sleep(Duration::from_secs(10)).await;
    let since = jiff::Timestamp::now();
    tokio::time::sleep(idle).await;
    let sent: Vec<_> = requests(&install.user, since)
        .into_iter()
        .filter(|r| r.resource != "leases")
        .collect();
    let watches = sent.iter().filter(|r| r.verb == "watch").count();
    println!(
        "idle: {} requests in {} s with {n} idle Heartbeats = {:.4} requests/s ({watches} watch renewals, {} other; Lease renewals apart)",
        sent.len(),
        idle.as_secs(),
        sent.len() as f64 / idle.as_secs_f64(),
        sent.len() - watches
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // The gap is measured with a ping, which turns that one Heartbeat from New to Up: its
    // status write is the ping's, not the restart's, and is counted apart.
    let (pinged, url) = ping_urls(&secrets)
        .await
        .into_iter()
        .next()
        .expect("a ping URL");
    let http = reqwest::Client::new();
    let stopping = Instant::now();
    assert!(op.terminate(), "the operator did not stop cleanly");
    let since = jiff::Timestamp::now();
    let op = Operator::spawn(
        &install,
        &data,
        "smtp://127.0.0.1:1",
        port,
        &["--status-period", "60s"],
    );
    loop {
        let answered = http
            .get(&url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if answered == 200 {
            break;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(120),
            "no ping accepted after a restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gap = stopping.elapsed();
    op.wait_ready(Duration::from_secs(60)).await;
    let ready_after = stopping.elapsed();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let sent = requests(&install.user, since);
    let (ping_caused, writes): (Vec<_>, Vec<_>) = status_writes(&sent)
        .into_iter()
        .partition(|r| r.uri.contains(&format!("/heartbeats/{pinged}/")));
    let (writes, ping_caused) = (writes.len(), ping_caused.len());
    println!(
        "restart: SIGTERM → first ping accepted by the new process {:.2} s (ready {:.2} s); status writes after the restart with nothing changed: {writes} for {n} Heartbeats (and {ping_caused} for the one the gap's ping turned Up)",
        gap.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    drop(op);
    teardown_many(&ns);
}

/// Phase 4.
async fn status_lag(n: usize, window: Duration, every: Duration) {
    let (client, ns) = prepare("bench-lag").await;
    let install = Install::new(&ns, &[&ns]);
    let dir = tempfile::tempdir().expect("tempdir");
    let op = Operator::spawn(
        &install,
        &dir.path().join("data"),
        "smtp://127.0.0.1:1",
        port(),
        &["--status-period", "60s"],
    );
    op.wait_ready(Duration::from_secs(60)).await;
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    let every_s = format!("{}s", every.as_secs());
    let t = Instant::now();
    create(
        &hbs,
        "lag",
        n,
        &json!({"interval": every_s, "grace": every_s}),
    )
    .await;
    all_ready(&hbs, n, Duration::from_secs(3600)).await;
    println!(
        "status lag: {n} Heartbeats (interval {every_s}, grace {every_s}) Ready after {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let urls = ping_urls(&secrets).await;
    assert_eq!(urls.len(), n, "ping URLs");
    let flappers = (n / 100).max(1);
    // Every Heartbeat pings once per `every`, spread evenly; the first `flappers` stop after
    // their first ping and go Late, then Down, during the measurement.
    let start = tokio::time::Instant::now();
    let http = reqwest::Client::new();
    let mut pingers = Vec::new();
    for (i, (name, url)) in urls.into_iter().enumerate() {
        let http = http.clone();
        let offset = every.mul_f64(i as f64 / n as f64);
        let stops = name
            .strip_prefix("lag-")
            .and_then(|k| k.parse::<usize>().ok())
            .is_some_and(|k| k < flappers);
        pingers.push(tokio::spawn(async move {
            let mut at = start + offset;
            loop {
                tokio::time::sleep_until(at).await;
                let _ = http.get(&url).send().await;
                if stops {
                    return;
                }
                at += every;
            }
        }));
    }
    // Warm-up: the first round (New → Up for all) is written at the budget; measure once
    // as many transitions were written as there are Heartbeats. (Not "once the count stops
    // moving": jobs pinging right at their deadline keep flipping Late and back.)
    let base = op.base.clone();
    let warm = Instant::now();
    tokio::time::sleep(every).await;
    loop {
        let c = metric(&metrics(&base).await, "hartslag_status_lag_seconds_count");
        if c >= n as f64 || warm.elapsed() > every * 6 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    println!(
        "status lag: warm-up (first round of pings, {n} New → Up written) took {:.0} s",
        warm.elapsed().as_secs_f64()
    );
    let before = metrics(&base).await;
    let measured = Instant::now();
    // Sampled every 10 s, for the busiest 10 s of the window.
    let mut busiest: f64 = 0.0;
    let mut last = metric(&before, "hartslag_status_patches_total");
    while measured.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(10).min(window)).await;
        let now = metric(&metrics(&base).await, "hartslag_status_patches_total");
        busiest = busiest.max((now - last) / 10.0);
        last = now;
    }
    let after = metrics(&base).await;
    let secs = measured.elapsed().as_secs_f64();
    let writes = metric(&after, "hartslag_status_patches_total")
        - metric(&before, "hartslag_status_patches_total");
    let name = "hartslag_status_lag_seconds";
    let transitions =
        metric(&after, &format!("{name}_count")) - metric(&before, &format!("{name}_count"));
    println!(
        "status lag: {n} Heartbeats pinging every {every_s} ({:.0} pings/s), {flappers} going Late and Down: {writes:.0} status writes in {secs:.0} s = {:.1}/s (budget 20/s); busiest 10 s {busiest:.1}/s; {transitions:.0} transitions written, lag from transition to status p50 ≤ {} s, p99 ≤ {} s, max ≤ {} s (histogram bucket bounds)",
        n as f64 / every.as_secs_f64(),
        writes / secs,
        quantile(&after, &before, name, 0.5),
        quantile(&after, &before, name, 0.99),
        quantile(&after, &before, name, 1.0),
    );
    for p in pingers {
        p.abort();
    }
    drop(op);
    teardown_many(&ns);
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "set KUBECONFIG to a test cluster: eval \"$(bash tests/cluster/cluster.sh env)\""
        );
        std::process::exit(1);
    }
    let n: usize = common::env_or("BENCH_HEARTBEATS", 1000);
    let idle = Duration::from_secs(common::env_or("BENCH_IDLE_SECONDS", 300));
    let lag_n: usize = common::env_or("BENCH_LAG_HEARTBEATS", 10_000);
    let lag_window = Duration::from_secs(common::env_or("BENCH_LAG_SECONDS", 120));
    let every = Duration::from_secs(common::env_or("BENCH_LAG_INTERVAL", 300));
    let rounds: Vec<u16> = std::env::var("BENCH_APPLY_CONCURRENCY")
        .unwrap_or_default()
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        println!("operator benchmark (the operator runs as the chart's ServiceAccount; requests counted from the API server's audit log)");
        for c in &rounds {
            apply_round(n, *c).await;
        }
        if !idle.is_zero() {
            apply_idle_restart(n, idle).await;
        }
        if lag_n > 0 {
            status_lag(lag_n, lag_window, every).await;
        }
    });
}
