//! Dashboard speed and weight: 10 000 monitors (`BENCH_MONITORS`) in a mix of states,
//! an application with events, then every page fetched over real HTTP with a logged-in
//! session. Prints the server time of the monitors page (p50/p99 over `BENCH_REQUESTS`
//! requests, one at a time, loopback) and the size of every page.
//!
//! Targets: monitors page p99 ≤ 50 ms with 10 000 monitors; every page ≤ 200 KB.
//!
//! `cargo bench --bench dashboard`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hartslag::config::ServerConfig;
use hartslag::core::monitor::engine::{DefRecord, MonitorDef, PingInput, PingKind};
use hartslag::core::token::TokenHash;
use hartslag::server::Server;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let n: usize = common::env_or("BENCH_MONITORS", 10_000);
    let requests: usize = common::env_or("BENCH_REQUESTS", 300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        std::fs::write(
            manifests.join("app.yaml"),
            "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: shop\nspec:\n  timeZone: Europe/Amsterdam\n",
        )
        .expect("manifest");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = ServerConfig::new(addr, dir.path().join("data"));
        config.min_interval = hartslag::core::duration::SpecDuration::from_secs(1);
        let mut server = Server::open(config).await.expect("open");
        hartslag::standalone::apply_manifests(&mut server, &manifests)
            .await
            .expect("manifests");
        let base = format!("http://{addr}");
        let core = Arc::new(server.core.clone());
        tokio::spawn(async move {
            let _ = server.serve(listener, std::future::pending()).await;
        });

        // Monitors: a quarter never pinged (New), the rest pinged; 1 in 50 with a 1 s
        // interval so they go Down during setup.
        println!("dashboard benchmark: {n} monitors");
        let now = jiff::Timestamp::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let core = core.clone();
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            tasks.push(tokio::spawn(async move {
                let interval_secs = if i % 50 == 0 { 1 } else { 3600 };
                let def: MonitorDef = DefRecord {
                    id: format!("{i:016x}"),
                    display_name: (i % 3 == 0).then(|| format!("Nightly job number {i}")),
                    grace_secs: if i % 50 == 0 { 0 } else { 300 },
                    paused: i % 97 == 0,
                    application: (i % 2 == 0).then(|| "default/shop".to_string()),
                    token: TokenHash::of(&format!("t{i}")),
                    ping_hint: format!("curl -fsS http://example/v1/heartbeats/<token of job-{i:05}>/ping"),
                    ..DefRecord::sample(&format!("team-{}/job-{i:05}", i % 20), interval_secs, now)
                }.into();
                let key = def.key.clone();
                core.engine.upsert(def).await.expect("upsert");
                if i % 4 != 0 {
                    core.engine
                        .ping(
                            &key,
                            PingInput {
                                kind: PingKind::Success,
                                exit_code: Some(0),
                                source: Some("10.0.0.7".into()),
                                user_agent: Some("curl/8.5.0".into()),
                                body: Some("ok".into()),
                                rid: None,
                                stopped_alert: None,
                            },
                        )
                        .await
                        .expect("ping");
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        // One monitor with a full page of history.
        for _ in 0..150 {
            for kind in [PingKind::Start, PingKind::Success] {
                core.engine
                    .ping(
                        "team-1/job-00001",
                        PingInput {
                            kind,
                            exit_code: None,
                            source: Some("10.0.0.7".into()),
                            user_agent: Some("backup-cron/2.1 (linux; amd64) with a long user agent string".into()),
                            body: Some("x".repeat(400)),
                            rid: None,
                            stopped_alert: None,
                        },
                    )
                    .await
                    .expect("ping");
            }
        }
        // Events: 20 names over the last 90 days.
        let app = core.registry.application("default/shop").expect("app");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let token = std::fs::read_to_string(dir.path().join("data/tokens/application-shop.token"))
            .expect("token");
        for i in 0..2000i64 {
            let at = now - jiff::SignedDuration::from_mins(i * 61);
            let res = client
                .post(format!("{base}/api/v1/heartbeat"))
                .bearer_auth(token.trim())
                .json(&serde_json::json!({"event": format!("event-{}", i % 20), "user_id": i % 300, "created_at": at.to_string()}))
                .send()
                .await
                .expect("event");
            assert_eq!(res.status(), 201);
        }
        let _ = app;
        // Wait (bounded) for the 1 s monitors that were pinged to go Down.
        let expect_down = (0..n).filter(|i| i % 50 == 0 && i % 4 != 0 && i % 97 != 0).count();
        let deadline = Instant::now() + Duration::from_secs(10);
        while core.engine.counts().get(&hartslag::core::monitor::state::State::Down).copied().unwrap_or(0) < expect_down
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let counts = core.engine.counts();
        println!("states: {counts:?}");

        let admin = std::fs::read_to_string(dir.path().join("data/tokens/admin.token")).expect("admin");
        let res = client
            .post(format!("{base}/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}&next=%2Fui", admin.trim()))
            .send()
            .await
            .expect("login");
        let cookie = res
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .expect("cookie")
            .to_string();

        let fetch = |path: String| {
            let client = client.clone();
            // The login page is what a visitor without a session gets.
            let cookie = if path == "/ui/login" { String::new() } else { cookie.clone() };
            let base = base.clone();
            async move {
                let started = Instant::now();
                let res = client
                    .get(format!("{base}{path}"))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .expect("get");
                let status = res.status();
                let body = res.bytes().await.expect("body");
                (started.elapsed(), status, body.len())
            }
        };

        for (label, path) in [
            ("monitors page (10k, first page)", "/ui/monitors".to_string()),
            ("monitors page filtered (state=Down)", "/ui/monitors?state=Down".to_string()),
            ("overview", "/ui".to_string()),
        ] {
            for _ in 0..20 {
                fetch(path.clone()).await;
            }
            let mut times = Vec::with_capacity(requests);
            for _ in 0..requests {
                times.push(fetch(path.clone()).await.0);
            }
            times.sort();
            println!(
                "{label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {requests} requests",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.99).as_secs_f64() * 1e3,
                times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            );
        }

        println!("page sizes:");
        let mut largest = 0;
        for path in [
            "/ui/login",
            "/ui",
            "/ui/monitors",
            "/ui/monitors?page=50",
            "/ui/monitors?state=Down",
            "/ui/monitors/team-1/job-00001",
            "/ui/applications",
            "/ui/applications/default/shop",
            "/ui/static/app.css",
            "/ui/static/app.js",
        ] {
            let (t, status, size) = fetch(path.to_string()).await;
            largest = largest.max(size);
            println!(
                "  {path}: {:.1} KB ({status}, {:.1} ms)",
                size as f64 / 1024.0,
                t.as_secs_f64() * 1e3
            );
        }
        println!(
            "largest page {:.1} KB (target ≤ 200 KB)",
            largest as f64 / 1024.0
        );
    });
}
