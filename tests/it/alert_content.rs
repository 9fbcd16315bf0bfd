//! What alerts say and to whom, through real servers and receivers: email and the default
//! webhook JSON carry the runbook and the dashboard link, a job that only ever pinged
//! with a failure reads as failed (not "never pinged"), an address named inline and by an
//! email channel gets each notice once, a resolved Watchdog says the pipeline stopped
//! (no made-up exit code), and an Alertmanager URL with the API's path, or a channel posting
//! to a loopback address, is refused at load while delivery errors name the channel and
//! its URL.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::alerting::Alertmanager;
use crate::channels::{channel, setup, signal};
use crate::helpers::{
    ChildServer, InProcess, SmtpSink, binary, free_port, heartbeat_manifest, metric,
    monitor_status, ping_url, start_fails, wait_for, wait_outbox_empty, webhook_sink,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_and_webhook_carry_the_runbook_the_dashboard_and_the_failure_they_heard() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let (hook, got) = webhook_sink("/hook").await;
    let docs = [heartbeat_manifest(
        "etl",
        "1h",
        "5m",
        &format!(
            "  runbookURL: https://runbooks.example.com/etl\n  alerts:\n    email: [\"ops@example.com\"]\n    webhook: {hook}\n"
        ),
    )];
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let smtp = sink.url();
    let server = ChildServer::start(&manifests, &data, &["--smtp-url", &smtp]).await;
    // The job never succeeded: its first signal is a failure with exit code 7.
    signal(&data, "etl", "ping?exit_code=7").await;
    let dashboard = format!("{}/ui/monitors/default/etl", server.base);
    let mail = sink
        .wait_for_mail("DOWN: etl", Duration::from_secs(15))
        .await
        .remove(0);
    for needle in [
        "Runbook:       https://runbooks.example.com/etl",
        &format!("Dashboard:     {dashboard}"),
        "Last success:  never",
        "Last failure:  ",
        ", exit code 7",
    ] {
        assert!(mail.contains(needle), "missing {needle:?} in\n{mail}");
    }
    assert!(!mail.contains("Last ping:     never"), "{mail}");
    assert!(!mail.contains("Expected by"), "no deadline to tell: {mail}");
    let sent = wait_for("the webhook", Duration::from_secs(15), || {
        let v = got.lock().unwrap().clone();
        async move { v.first().cloned() }
    })
    .await;
    assert_eq!(sent["runbook_url"], "https://runbooks.example.com/etl");
    assert_eq!(sent["dashboard_url"], dashboard.as_str());
    assert!(sent["last_failure_at"].is_string(), "{sent}");
    assert_eq!(sent["last_ping_at"], Value::Null);
    assert_eq!(sent["exit_code"], 7);
    let text = sent["text"].as_str().unwrap();
    assert!(
        text.contains("Last success: never; last failure: "),
        "{text}"
    );
    assert!(text.contains(", exit code 7."), "{text}");
    // The status API keeps `last_ping_at` the last success and says what else came.
    let admin = std::fs::read_to_string(data.join("tokens/admin.token")).unwrap();
    let status = monitor_status(&server.base, admin.trim(), "etl")
        .await
        .unwrap();
    assert_eq!(status["last_ping_at"], Value::Null, "{status}");
    assert!(status["last_failure_at"].is_string(), "{status}");
    assert_eq!(status["last_signal_at"], status["last_failure_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_named_inline_and_by_an_email_channel_gets_each_notice_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let docs = [
        channel(
            "ClusterAlertChannel",
            "ops-mail",
            "  email:\n    to: [\"ops@example.com\"]\n",
        ),
        heartbeat_manifest(
            "twice",
            "1h",
            "5m",
            "  alerts:\n    email: [\"OPS@example.com\", \"dev@example.com\"]\n    channels: [ops-mail]\n",
        ),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let smtp = sink.url();
    let server = ChildServer::start(&manifests, &data, &["--smtp-url", &smtp]).await;
    signal(&data, "twice", "ping").await;
    signal(&data, "twice", "fail").await;
    sink.wait_for_mail("DOWN: twice", Duration::from_secs(15))
        .await;
    signal(&data, "twice", "ping").await;
    sink.wait_for_mail("RECOVERED: twice", Duration::from_secs(15))
        .await;
    wait_outbox_empty(&server.base).await;
    for subject in ["DOWN: twice", "RECOVERED: twice"] {
        let mails = sink.with_subject(subject);
        // One through the channel, one inline to the address it does not cover.
        assert_eq!(mails.len(), 2, "{subject}: {mails:#?}");
        let to_ops = mails
            .iter()
            .filter(|m| m.to_lowercase().contains("to: ops@example.com"))
            .count();
        assert_eq!(to_ops, 1, "{subject}: {mails:#?}");
        assert!(
            mails.iter().any(|m| m.contains("To: dev@example.com")),
            "{mails:#?}"
        );
    }
}

#[tokio::test]
async fn a_resolved_watchdog_says_the_pipeline_stopped_without_an_exit_code() {
    let (hook, got) = webhook_sink("/hook").await;
    let server = InProcess::start(&[(
        "hb.yaml",
        heartbeat_manifest(
            "pipeline",
            "10m",
            "1m",
            &format!("  alerts:\n    webhook: {hook}\n"),
        ),
    )])
    .await;
    let ping = ping_url(&server.data, "pipeline");
    let receiver = format!("{}/alertmanager", ping.trim_end_matches("/ping"));
    let am = Alertmanager::start(Some(&receiver)).await;
    let watchdog = |ends: Option<String>| {
        let mut alert = serde_json::json!({
            "labels": {"alertname": "Watchdog", "severity": "none"},
            "annotations": {"summary": "The alerting pipeline is alive"},
        });
        if let Some(ends) = ends {
            alert["endsAt"] = ends.into();
        }
        serde_json::json!([alert])
    };
    let post = |body: Value| {
        let url = format!("{}/api/v2/alerts", am.base);
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success(), "{}", res.status());
        }
    };
    post(watchdog(None)).await;
    let admin = std::fs::read_to_string(server.data.join("tokens/admin.token")).unwrap();
    let admin = admin.trim();
    wait_for("Up by the Watchdog", Duration::from_secs(20), || async {
        let m = monitor_status(&server.base, admin, "pipeline").await?;
        (m["state"] == "Up").then_some(())
    })
    .await;
    // The pipeline stops firing it: Alertmanager sends it resolved.
    post(watchdog(Some(jiff::Timestamp::now().to_string()))).await;
    let down = wait_for("the Down webhook", Duration::from_secs(30), || {
        let v = got.lock().unwrap().clone();
        async move { v.into_iter().find(|b| b["event"] == "down") }
    })
    .await;
    let reason = down["reason"].as_str().unwrap();
    assert!(
        reason.contains("the alerting pipeline stopped firing Watchdog"),
        "{reason}"
    );
    assert!(!reason.contains("exit code"), "{reason}");
    assert_eq!(down["exit_code"], Value::Null, "no exit code was reported");
    let m = monitor_status(&server.base, admin, "pipeline")
        .await
        .unwrap();
    assert_eq!(m["down_reason"], reason);
    drop(am);
    server.stop().await;
}

#[tokio::test]
async fn an_alertmanager_url_with_the_api_path_is_refused_when_the_manifests_load() {
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "ClusterAlertChannel",
            "am",
            "  alertmanager:\n    url: http://127.0.0.1:9093/api/v2/alerts\n",
        ),
        heartbeat_manifest("job", "1h", "5m", "  alerts:\n    channels: [am]\n"),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let mut child = Command::new(binary())
        .arg("standalone")
        .arg("--manifests")
        .arg(&manifests)
        .arg("--data")
        .arg(&data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the refusal", Duration::from_secs(30), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "started:\n{text}");
    assert!(text.contains("spec.alertmanager.url"), "{text}");
    assert!(text.contains("give Alertmanager's base URL"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_posting_to_a_loopback_address_is_refused_when_the_manifests_load() {
    let am = |url: &str| {
        vec![
            channel(
                "ClusterAlertChannel",
                "am",
                &format!("  alertmanager:\n    url: {url}\n"),
            ),
            heartbeat_manifest("job", "1h", "5m", "  alerts:\n    channels: [am]\n"),
        ]
    };
    // Without --allow-private-webhooks or a range covering it, every delivery would be
    // refused: the start fails, naming the file, the channel, the field and the flags.
    let dir = tempfile::tempdir().unwrap();
    let (manifests, data) = setup(dir.path(), &am("http://127.0.0.1:9093"), &[]);
    let text = start_fails(&manifests, &data, &[]).await;
    let file = manifests.join("all.yaml").display().to_string();
    for needed in [
        file.as_str(),
        "ClusterAlertChannel am",
        "spec.alertmanager.url: host 127.0.0.1 is loopback",
        "--webhook-allowed-cidrs",
        "--allow-private-webhooks",
    ] {
        assert!(text.contains(needed), "{needed:?} not in\n{text}");
    }
    // A URL read from a file: named by its field and host, its secret path never shown.
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "AlertChannel",
            "chat",
            "  slack:\n    webhookFile: slack-url\n",
        ),
        heartbeat_manifest("job", "1h", "5m", "  alerts:\n    channels: [chat]\n"),
    ];
    let hook = "http://localhost:8080/services/T000/B000/s3cr3t";
    let (manifests, data) = setup(dir.path(), &docs, &[("slack-url", hook)]);
    let text = start_fails(&manifests, &data, &[]).await;
    assert!(
        text.contains(
            "AlertChannel default/chat: spec.slack.webhookFile: host localhost is loopback"
        ),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "the secret URL leaked:\n{text}");
    // Allowed by a range, the same channel loads; a host name is left to the check at
    // each delivery (what it resolves to may change).
    let dir = tempfile::tempdir().unwrap();
    let (manifests, data) = setup(dir.path(), &am("http://127.0.0.1:9093"), &[]);
    let args = ["--webhook-allowed-cidrs", "127.0.0.1/32"];
    drop(ChildServer::start_exactly(&manifests, &data, &args).await);
    let dir = tempfile::tempdir().unwrap();
    let (manifests, data) = setup(dir.path(), &am("http://alertmanager.invalid:9093"), &[]);
    drop(ChildServer::start_exactly(&manifests, &data, &[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_names_the_channel_kind_and_its_url() {
    // Something that is no Alertmanager: every path answers 404.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/not-alertmanager", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, axum::Router::new()).await });
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        channel(
            "ClusterAlertChannel",
            "am",
            &format!("  alertmanager:\n    url: {base}\n"),
        ),
        heartbeat_manifest("job", "1h", "5m", "  alerts:\n    channels: [am]\n"),
    ];
    let (manifests, data) = setup(dir.path(), &docs, &[]);
    let server = ChildServer::start(&manifests, &data, &[]).await;
    signal(&data, "job", "ping").await;
    signal(&data, "job", "fail").await;
    wait_for("the failed delivery", Duration::from_secs(15), || async {
        metric(
            &server.base,
            "hartslag_alert_deliveries_total{outcome=\"failed\"}",
        )
        .await
        .filter(|v| *v >= 1.0)
    })
    .await;
    let log = server.log_text();
    let named = format!(
        "Alertmanager {base}/api/v2/alerts (ClusterAlertChannel am) answered 404 Not Found"
    );
    assert!(log.contains(&named), "{named:?} not in\n{log}");
}
