//! Dead-man's switch end to end: pings over real sockets, deadlines on the real clock,
//! alerts through a real SMTP server (aiosmtpd) and a real webhook receiver, restarts and
//! kill -9 of real child processes.

use std::time::Duration;

use crate::helpers::{
    ChildServer, InProcess, SmtpSink, heartbeat_manifest, metric, ping_url, wait_for,
    wait_outbox_empty, wait_state, webhook_sink,
};
use hartslag::core::duration::SpecDuration;
use serde_json::{Value, json};

const EMAIL: &str = "  alerts:\n    email: [\"ops@example.com\"]\n";

async fn start(files: &[(&str, String)], smtp: Option<String>) -> InProcess {
    InProcess::start_with(files, |c| {
        c.smtp_url = smtp;
        c.min_interval = SpecDuration::from_secs(1);
        c.outbox.base_delay = Duration::from_millis(200);
        c.outbox.max_delay = Duration::from_secs(1);
        c.ping_history = 5;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_then_recovery_send_exactly_one_email_each() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let s = start(
        &[(
            "hb.yaml",
            heartbeat_manifest(
                "backup",
                "2s",
                "1s",
                &format!("  displayName: Nightly backup\n{EMAIL}"),
            ),
        )],
        Some(sink.url()),
    )
    .await;
    let admin = std::fs::read_to_string(s.data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let url = ping_url(&s.data, "backup");
    assert!(url.starts_with(&s.base) && url.ends_with("/ping"), "{url}");

    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    wait_state(&s.base, &admin, "backup", "Up", Duration::from_secs(5)).await;
    let down = wait_state(&s.base, &admin, "backup", "Down", Duration::from_secs(15)).await;
    assert_eq!(down["status"], "failing");
    let mails = sink
        .wait_for_mail("DOWN: Nightly backup", Duration::from_secs(15))
        .await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    for needle in [
        "To: ops@example.com",
        "Monitor:       backup",
        "namespace default",
        "no ping for",
        "Last success:",
        "Expected by:",
        "heartbeat-backup.url",
    ] {
        assert!(mail.contains(needle), "missing {needle:?} in\n{mail}");
    }
    let token = url.rsplit('/').nth(1).unwrap();
    assert!(!mail.contains(token), "the token leaked into the email");

    let r = reqwest::Client::new()
        .post(&url)
        .body("backup finished: 42 files")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mails = sink
        .wait_for_mail("RECOVERED: Nightly backup", Duration::from_secs(15))
        .await;
    assert_eq!(mails.len(), 1, "one RECOVERED email");
    assert_eq!(
        sink.with_subject("DOWN").len(),
        1,
        "a second DOWN email was sent"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_outage_is_retried_and_delivered_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SmtpSink::reserve(dir.path());
    let s = start(
        &[("hb.yaml", heartbeat_manifest("report", "1s", "0s", EMAIL))],
        Some(sink.url()),
    )
    .await;
    let admin = std::fs::read_to_string(s.data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    reqwest::get(ping_url(&s.data, "report")).await.unwrap();
    wait_state(&s.base, &admin, "report", "Down", Duration::from_secs(10)).await;
    let base = s.base.clone();
    wait_for("a failed delivery attempt", Duration::from_secs(15), || {
        let base = base.clone();
        async move {
            metric(
                &base,
                "hartslag_alert_deliveries_total{outcome=\"retried\"}",
            )
            .await
            .filter(|v| *v >= 2.0)
        }
    })
    .await;
    assert!(sink.messages().is_empty());
    sink.run().await;
    sink.wait_for_mail("DOWN: report", Duration::from_secs(20))
        .await;
    wait_outbox_empty(&s.base).await;
    assert_eq!(sink.with_subject("DOWN: report").len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_monitors_answer_paused_and_never_alert() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let s = start(
        &[(
            "hb.yaml",
            heartbeat_manifest("sleepy", "1s", "0s", &format!("  paused: true\n{EMAIL}")),
        )],
        Some(sink.url()),
    )
    .await;
    let admin = std::fs::read_to_string(s.data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let url = ping_url(&s.data, "sleepy");
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "paused"})
    );
    let r = reqwest::Client::new()
        .post(url.replace("/ping", "/fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "paused"})
    );
    // Let several intervals pass on the wall clock.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    wait_for("four seconds", Duration::from_secs(10), || async move {
        (std::time::Instant::now() >= until).then_some(())
    })
    .await;
    let m = crate::helpers::monitor_status(&s.base, &admin, "sleepy")
        .await
        .unwrap();
    assert_eq!(
        (
            m["state"].as_str(),
            m["status"].as_str(),
            m["pings"].as_u64()
        ),
        (Some("Paused"), Some("paused"), Some(2))
    );
    assert_eq!(
        metric(&s.base, "hartslag_alerts_total{kind=\"down\"}").await,
        Some(0.0)
    );
    assert!(sink.messages().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_endpoints_record_what_the_job_sent() {
    let s = start(
        &[("hb.yaml", heartbeat_manifest("job", "1h", "5m", ""))],
        None,
    )
    .await;
    let url = ping_url(&s.data, "job");
    let base_url = url.trim_end_matches("/ping").to_string();
    let c = reqwest::Client::new();

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{base_url}/start")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let r = c
        .post(format!("{url}?exit_code=0"))
        .header("User-Agent", "x".repeat(300))
        .header("X-Forwarded-For", "203.0.113.7, 10.0.0.1")
        .body("é".repeat(6000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let key = "default/job";
    let m = s.core.engine.get(key).unwrap();
    assert_eq!(m.state.state.as_str(), "Up");
    let pings = s.core.engine.pings(m.num, 10).await.unwrap();
    assert_eq!(pings.len(), 3);
    let last = &pings[0];
    assert_eq!(last.seq, 3, "newest first");
    // No proxy is trusted here: the header is not believed.
    assert_eq!(last.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(last.user_agent.as_ref().unwrap().chars().count(), 200);
    assert!(
        last.body.as_ref().unwrap().len() <= 10 * 1024
            && last.body.as_ref().unwrap().len() > 10_000
    );
    assert!(last.duration_ms.is_some(), "a /start preceded it");
    assert_eq!(pings[2].source.as_deref(), Some("127.0.0.1"));

    let r = c.get(format!("{url}?exit_code=3")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m = s.core.engine.get(key).unwrap();
    assert_eq!(
        m.state.state.as_str(),
        "Down",
        "a non-zero exit code is a failure"
    );
    let r = c.get(format!("{url}?exit_code=nope")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("exit_code")
    );

    for bad in [
        "/v1/heartbeats/hsh_unknown/ping",
        "/v1/heartbeats/x/start",
        "/v1/heartbeats/x/fail",
    ] {
        let r = c.post(format!("{}{bad}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": "heartbeat not found"})
        );
    }
    // An application token is not a ping token.
    let r = c
        .get(format!(
            "{}/v1/heartbeats/{}/ping",
            s.base,
            std::fs::read_to_string(s.data.join("tokens/admin.token"))
                .unwrap()
                .trim()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // History is bounded (ping_history = 5 here).
    for _ in 0..6 {
        c.get(&url).send().await.unwrap();
    }
    let pings = s.core.engine.pings(m.num, 100).await.unwrap();
    assert_eq!(
        pings.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![10, 9, 8, 7, 6]
    );
    let text = crate::helpers::metrics_text(&s.base).await;
    assert!(
        text.contains("hartslag_pings_total{kind=\"success\"} 8"),
        "{text}"
    );
    assert!(text.contains("hartslag_monitors{state=\"Up\"} 1"), "{text}");
    // The monitor's timeline entries went through the journal: a gauge of sled's own.
    let journal = crate::helpers::metric_value(&text, "hartslag_timeline_journal_entries");
    assert_eq!(journal.is_some(), !crate::helpers::on_postgres(), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_pings_and_events_wait_for_commits_shown_on_metrics() {
    let files = [
        ("app.yaml", crate::helpers::app_manifest("shop", "UTC")),
        ("hb.yaml", heartbeat_manifest("backup", "1h", "5m", "")),
    ];
    let s = InProcess::start_with(&files, |c| {
        let url = crate::pg::database_for(&c.data_dir);
        c.database_url = Some(url.parse().unwrap());
    })
    .await;
    let commits = || async {
        let text = crate::helpers::metrics_text(&s.base).await;
        let value = |name: &str| {
            crate::helpers::metric_value(&text, name)
                .unwrap_or_else(|| panic!("{name} missing: {text}"))
        };
        let groups = value("hartslag_commit_groups_total");
        assert_eq!(
            value("hartslag_commit_sync_seconds_count"),
            groups,
            "{text}"
        );
        assert!(value("hartslag_commit_records_total") >= groups, "{text}");
        groups
    };
    let c = reqwest::Client::new();
    let before = commits().await;
    let r = c.post(ping_url(&s.data, "backup")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let pinged = commits().await;
    assert!(
        pinged > before,
        "{before} transactions before a ping, {pinged} after"
    );
    let r = c
        .post(format!("{}/api/v1/heartbeat", s.base))
        .bearer_auth(s.app_token("shop"))
        .json(&json!({"event": "deploy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let stored = commits().await;
    assert!(
        stored > pinged,
        "{pinged} transactions before an event, {stored} after"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receives_down_and_recovery() {
    let (hook, received) = webhook_sink("/hook").await;
    let extra = format!("  alerts:\n    webhook: {hook}\n");
    let s = start(
        &[("hb.yaml", heartbeat_manifest("etl", "1s", "0s", &extra))],
        None,
    )
    .await;
    let url = ping_url(&s.data, "etl");
    reqwest::Client::new()
        .post(format!("{url}?exit_code=2"))
        .send()
        .await
        .unwrap();
    let r = received.clone();
    wait_for("the down webhook", Duration::from_secs(10), || {
        let n = r.lock().unwrap().len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    reqwest::get(&url).await.unwrap();
    let r = received.clone();
    wait_for("the recovery webhook", Duration::from_secs(10), || {
        let n = r.lock().unwrap().len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got[0]["event"], "down");
    assert!(got[0]["text"].as_str().unwrap().contains("DOWN: etl"));
    assert!(got[0]["reason"].as_str().unwrap().contains("exit code 2"));
    assert_eq!(got[0]["exit_code"], 2, "the run's exit code, as a field");
    assert_eq!(got[1]["event"], "recovery");
    assert_eq!(got[1]["exit_code"], Value::Null);
    assert_eq!(got[0]["monitor"]["name"], "etl");
    s.stop().await;
}

fn write_manifests(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("hb.yaml"), text).unwrap();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_down_and_delivery_delivers_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SmtpSink::reserve(dir.path());
    let manifests = write_manifests(
        dir.path(),
        &heartbeat_manifest("nightly", "1s", "0s", EMAIL),
    );
    let data = dir.path().join("data");
    let args = [
        "--smtp-url",
        &sink.url(),
        "--min-interval",
        "1s",
        "--alert-retry-base",
        "1s",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ChildServer::start(&manifests, &data, &args).await;
    let admin = std::fs::read_to_string(data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    reqwest::get(ping_url(&data, "nightly")).await.unwrap();
    wait_state(
        &server.base,
        &admin,
        "nightly",
        "Down",
        Duration::from_secs(10),
    )
    .await;
    let base = server.base.clone();
    wait_for("a failed delivery attempt", Duration::from_secs(15), || {
        let base = base.clone();
        async move {
            metric(
                &base,
                "hartslag_alert_deliveries_total{outcome=\"retried\"}",
            )
            .await
            .filter(|v| *v >= 1.0)
        }
    })
    .await;
    server.kill9();
    sink.run().await;
    let server = ChildServer::start(&manifests, &data, &args).await;
    sink.wait_for_mail("DOWN: nightly", Duration::from_secs(20))
        .await;
    wait_outbox_empty(&server.base).await;
    assert_eq!(sink.with_subject("DOWN: nightly").len(), 1);
    assert_eq!(
        metric(&server.base, "hartslag_alerts_total{kind=\"down\"}").await,
        Some(0.0),
        "the restarted process raised the alert again"
    );
    let m = crate::helpers::monitor_status(&server.base, &admin, "nightly")
        .await
        .unwrap();
    assert_eq!(m["state"], "Down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_while_stopped_alerts_once_and_edits_keep_history() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let manifests = write_manifests(dir.path(), &heartbeat_manifest("cron", "2s", "1s", EMAIL));
    let data = dir.path().join("data");
    let args = [
        "--smtp-url",
        &sink.url(),
        "--min-interval",
        "1s",
        "--alert-retry-base",
        "1s",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ChildServer::start(&manifests, &data, &args).await;
    let admin = std::fs::read_to_string(data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let url = ping_url(&data, "cron");
    for _ in 0..3 {
        reqwest::get(&url).await.unwrap();
    }
    server.kill9();
    // Stay down past deadline + grace.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    wait_for(
        "the deadline to pass while stopped",
        Duration::from_secs(10),
        || async move { (std::time::Instant::now() >= until).then_some(()) },
    )
    .await;
    let server = ChildServer::start(&manifests, &data, &args).await;
    wait_state(
        &server.base,
        &admin,
        "cron",
        "Down",
        Duration::from_secs(10),
    )
    .await;
    sink.wait_for_mail("DOWN: cron", Duration::from_secs(15))
        .await;
    wait_outbox_empty(&server.base).await;
    drop(server);

    // Edit the manifest (longer interval) and restart: state, counts and history survive.
    std::fs::write(
        manifests.join("hb.yaml"),
        heartbeat_manifest("cron", "1h", "5m", EMAIL),
    )
    .unwrap();
    let server = ChildServer::start(&manifests, &data, &args).await;
    let m = crate::helpers::monitor_status(&server.base, &admin, "cron")
        .await
        .unwrap();
    assert_eq!(m["interval_secs"], 3600);
    assert_eq!(m["pings"], 3);
    assert_eq!(
        m["state"], "Down",
        "a longer interval does not pretend the job ran"
    );
    let token = |u: &str| u.rsplit('/').nth(1).unwrap().to_string();
    assert_eq!(
        token(&ping_url(&data, "cron")),
        token(&url),
        "the token survives restarts"
    );
    reqwest::get(ping_url(&data, "cron")).await.unwrap();
    let m = wait_state(&server.base, &admin, "cron", "Up", Duration::from_secs(5)).await;
    assert_eq!(m["pings"], 4);
    let mails = sink
        .wait_for_mail("RECOVERED: cron", Duration::from_secs(15))
        .await;
    assert_eq!(mails.len(), 1, "one RECOVERED email");
    assert_eq!(
        sink.with_subject("DOWN: cron").len(),
        1,
        "restarts must not repeat the alert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_timeline_is_recorded_newest_first_and_stays_bounded() {
    let s = start(
        &[("hb.yaml", heartbeat_manifest("flip", "1h", "5m", ""))],
        None,
    )
    .await;
    let key = "default/flip";
    for i in 0..300 {
        s.core.engine.set_paused(key, i % 2 == 0).await.unwrap();
    }
    let m = s.core.engine.get(key).unwrap();
    let timeline = s.core.engine.transitions(m.num, 10_000).await.unwrap();
    assert!(
        (190..=250).contains(&timeline.len()),
        "bounded to the newest ~200: {}",
        timeline.len()
    );
    assert!(
        timeline.windows(2).all(|w| w[0].at >= w[1].at),
        "newest first"
    );
    assert_eq!(
        timeline[0].to, m.state.state,
        "the newest entry is the current state"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pings_to_one_monitor_is_stored_whole_across_kill_9() {
    // Concurrent pings of one monitor share engine rounds, whose monitor record is written
    // once with its last state: every acknowledged ping must still count after kill -9.
    let dir = tempfile::tempdir().unwrap();
    let manifests = write_manifests(dir.path(), &heartbeat_manifest("burst", "1h", "5m", ""));
    let data = dir.path().join("data");
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let admin = std::fs::read_to_string(data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let url = ping_url(&data, "burst");
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let r = client.post(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.kill9();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let m = crate::helpers::monitor_status(&server.base, &admin, "burst")
        .await
        .unwrap();
    assert_eq!(m["pings"], 320, "{m}");
    assert_eq!(m["state"], "Up", "{m}");
}

/// A ping answered in the same engine round as the deletion of its retained monitor is
/// kept with the monitor's history. Every ping and delete is sent before any is awaited,
/// so the engine takes most pairs into one round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_answered_just_before_a_retained_monitor_is_deleted_stays_in_its_history() {
    use hartslag::config::ServerConfig;
    use hartslag::core::monitor::engine::{DefRecord, PingInput};
    use hartslag::core::token::TokenHash;
    use hartslag::server::Server;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("data"),
    ))
    .await
    .unwrap();
    let engine = &server.core.engine;
    let now = jiff::Timestamp::now();
    const MONITORS: usize = 50;
    for i in 0..MONITORS {
        engine
            .upsert(
                DefRecord {
                    id: format!("{i:016x}"),
                    token: TokenHash::of(&format!("t{i}")),
                    retain_on_delete: true,
                    ..DefRecord::sample(&format!("ns/m{i}"), 3600, now)
                }
                .into(),
            )
            .await
            .unwrap();
    }
    let keys: Vec<String> = (0..MONITORS).map(|i| format!("ns/m{i}")).collect();
    let calls = keys.iter().flat_map(|key| {
        let input = PingInput::success();
        [
            futures::future::Either::Left(async move { engine.ping(key, input).await.map(|_| ()) }),
            futures::future::Either::Right(engine.remove(key)),
        ]
    });
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    for key in &keys {
        let retained = engine.retained(key).await.unwrap();
        assert_eq!(
            retained.state.pings, 1,
            "{key}: the tombstone counts the ping"
        );
        let history = engine.pings(retained.num, 10).await.unwrap();
        assert_eq!(
            history.len(),
            1,
            "{key}: the answered ping is in its history"
        );
    }
}

#[tokio::test]
async fn a_ping_with_a_long_log_is_recorded_with_the_first_ten_kib_of_it() {
    // Longer than the largest accepted event body (64 KiB): the ping once got 413 and was
    // lost, and a job that posted its log was reported Down.
    let s = start(
        &[("hb.yaml", heartbeat_manifest("job", "1h", "5m", ""))],
        None,
    )
    .await;
    let url = ping_url(&s.data, "job");
    let log: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    assert!(log.len() > 200 * 1024);
    let c = reqwest::Client::new();
    let r = c.post(&url).body(log.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Sent in chunks, with no declared length, too.
    let path = url.trim_start_matches(&s.base);
    let addr = s.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for chunk in log.as_bytes().chunks(7000) {
        request.extend(format!("{:x}\r\n", chunk.len()).bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(&request).await.unwrap();
    let mut answer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let m = s.core.engine.get("default/job").unwrap();
    let pings = s.core.engine.pings(m.num, 10).await.unwrap();
    assert_eq!(pings.len(), 2);
    for p in &pings {
        let body = p.body.as_deref().unwrap();
        assert_eq!(body.len(), 10 * 1024);
        assert!(log.starts_with(body));
    }
}
