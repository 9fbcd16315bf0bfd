//! Operator status benchmark against a real API server (`KUBECONFIG`, e.g. the control
//! plane of `tests/cluster/cluster.sh up`): 1 000 Heartbeats (`BENCH_HEARTBEATS`) pinged
//! continuously, except 2 % that stop and go Down one after another during the measured
//! window. Prints status patches per second sent to the API server and the lag from a
//! state transition to its status patch. A warm-up first pings everything once and waits
//! until those New → Up transitions are on the API server.
//!
//! `eval "$(bash tests/cluster/cluster.sh env)"; cargo bench --bench operator`

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hartslag::k8s::crd::Heartbeat;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Config};
use serde_json::json;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn quantile(text: &str, name: &str, q: f64) -> f64 {
    let count = metric(text, &format!("{name}_count"));
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
    {
        let le = line.split('"').nth(1).unwrap_or("+Inf");
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if v >= q * count {
            return le.parse().unwrap_or(f64::INFINITY);
        }
    }
    f64::NAN
}

/// The histogram lines of `name` in `after` minus those in `before`.
fn subtract(after: &str, before: &str, name: &str) -> String {
    let mut out = String::new();
    for line in after.lines().filter(|l| l.starts_with(name)) {
        let key = line.rsplit_once(' ').map(|(k, _)| k).unwrap_or(line);
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
        out.push_str(&format!("{key} {}\n", a - b));
    }
    out
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
    let flappers = (n / 50).max(1);
    let window = Duration::from_secs(common::env_or("BENCH_SECONDS", 30));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = Client::try_from(Config::infer().await.expect("kubeconfig")).expect("client");
        let root = env!("CARGO_MANIFEST_DIR");
        let ok = Command::new("kubectl").args(["apply", "-f", &format!("{root}/crds/hartslag.dev.yaml")]).stdout(Stdio::null()).status().expect("kubectl");
        assert!(ok.success(), "kubectl apply failed");
        let ns = format!("bench-{}", &hartslag::core::token::random_id().expect("id")[..8]);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns")).await.expect("namespace");

        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hartslag"))
            .args(["operator", "--namespaces", &ns, "--listen", &format!("127.0.0.1:{port}"), "--external-url", &base, "--min-interval", "1s"])
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("HARTSLAG_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("operator");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
            assert!(started.elapsed() < Duration::from_secs(30), "operator not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        println!("operator status benchmark: {n} Heartbeats ({flappers} left to go Down), default --status-rate 20");
        let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
        let t = Instant::now();
        for i in 0..n {
            let flapper_interval = format!("{}s", 5 + i);
            let (interval, grace) = if i < flappers { (flapper_interval.as_str(), "0s") } else { ("1h", "5m") };
            let hb: Heartbeat = serde_json::from_value(json!({
                "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
                "metadata": {"name": format!("hb-{i}")}, "spec": {"interval": interval, "grace": grace}
            }))
            .expect("hb");
            hbs.create(&PostParams::default(), &hb).await.expect("create");
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let urls = loop {
            let list = secrets.list(&ListParams::default().labels("app.kubernetes.io/managed-by=hartslag")).await.expect("secrets");
            let urls: Vec<(String, String)> = list
                .items
                .iter()
                .filter_map(|s| {
                    let url = String::from_utf8(s.data.as_ref()?.get("ping-url")?.0.clone()).ok()?;
                    Some((s.metadata.name.clone()?, url))
                })
                .collect();
            if urls.len() == n {
                break urls;
            }
            assert!(t.elapsed() < Duration::from_secs(600), "only {} of {n} Heartbeats reconciled", urls.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        println!("created and reconciled {n} Heartbeats in {:.1} s", t.elapsed().as_secs_f64());

        // Warm-up: one ping each, then wait until the New → Up statuses are written.
        for (_, url) in &urls {
            let _ = http.get(url).send().await;
        }
        let t = Instant::now();
        let (mut last, mut stable_since) = (-1.0, Instant::now());
        loop {
            let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
            let count = metric(&text, "hartslag_status_lag_seconds_count");
            if count != last {
                (last, stable_since) = (count, Instant::now());
            }
            // Done when every first transition is written and nothing new arrived for 3 s.
            if (count >= n as f64 && stable_since.elapsed() > Duration::from_secs(3)) || t.elapsed() > Duration::from_secs(300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!("warm-up: {n} New → Up statuses written in {:.1} s at the patch limit", t.elapsed().as_secs_f64());
        let before = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        let t = Instant::now();
        let mut pings = 0u64;
        // First round: everyone pings once (flappers then go Down 3 s later); then the steady 90 % keep pinging.
        let flapper_names: std::collections::HashSet<String> = (0..flappers).map(|i| format!("hb-{i}-heartbeat")).collect();
        let mut first = true;
        while t.elapsed() < window {
            for (name, url) in &urls {
                if !first && flapper_names.contains(name) {
                    continue;
                }
                if http.get(url).send().await.map(|r| r.status() == 200).unwrap_or(false) {
                    pings += 1;
                }
            }
            first = false;
        }
        let elapsed = t.elapsed().as_secs_f64();
        let after = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        let patches = metric(&after, "hartslag_status_patches_total") - metric(&before, "hartslag_status_patches_total");
        println!("{pings} pings in {elapsed:.1} s ({:.0} pings/s)", pings as f64 / elapsed);
        println!("status patches: {patches:.0} in {elapsed:.1} s = {:.1} patches/s (limit 20/s)", patches / elapsed);
        let window_hist = subtract(&after, &before, "hartslag_status_lag_seconds");
        println!(
            "transition-to-status lag in the window: p50 <= {} s, p99 <= {} s ({} transitions written; histogram bucket bounds)",
            quantile(&window_hist, "hartslag_status_lag_seconds", 0.5),
            quantile(&window_hist, "hartslag_status_lag_seconds", 0.99),
            metric(&window_hist, "hartslag_status_lag_seconds_count")
        );
        let _ = child.kill();
        let _ = child.wait();
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    });
}
