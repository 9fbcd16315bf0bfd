//! Alerting against real parts: Debian's Alertmanager started on loopback (its API v2
//! takes Hartslag's alerts; its webhook receiver pings a Heartbeat with the Watchdog).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hartslag::notify::alertmanager;
use hartslag::notify::facts::{NoticeKind, sample};
use serde_json::Value;

use crate::helpers::{InProcess, free_port, heartbeat_manifest, metrics_text, ping_url, wait_for};

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on a loopback port, from a
/// temporary directory, without clustering; killed when dropped.
pub(crate) struct Alertmanager {
    pub(crate) base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts one routing every alert to `webhook` (when given) and waits until ready.
    pub(crate) async fn start(webhook: Option<&str>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bin = ["/usr/bin/prometheus-alertmanager", "/usr/local/bin/alertmanager"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "prometheus-alertmanager is missing: apt-get install prometheus-alertmanager (tests/run-all.sh installs it)",
            );
        let dir = tempfile::tempdir().unwrap();
        let receiver = match webhook {
            Some(url) => format!(
                "  - name: hook\n    webhook_configs: [{{url: \"{url}\", send_resolved: true}}]\n"
            ),
            None => "  - name: hook\n".to_string(),
        };
        let config = format!(
            "route: {{receiver: hook, group_by: [alertname], group_wait: 1s, group_interval: 2s, repeat_interval: 1m}}\nreceivers:\n{receiver}"
        );
        std::fs::write(dir.path().join("am.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("am.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("am.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/-/ready");
        wait_for("Alertmanager ready", Duration::from_secs(30), || {
            let ready = ready.clone();
            async move {
                let r = reqwest::get(&ready).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        Self {
            base,
            child,
            _dir: dir,
        }
    }

    async fn post(&self, body: &Value) {
        let res = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            res.text().await.unwrap()
        );
    }

    /// The active alerts named `alertname`.
    pub(crate) async fn active(&self, alertname: &str) -> Vec<Value> {
        let url = format!(
            "{}/api/v2/alerts?active=true&silenced=false&inhibited=false&filter=alertname%3D%22{alertname}%22",
            self.base
        );
        let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn alertmanager_accepts_down_keeps_it_active_on_resend_and_resolves_it() {
    let am = Alertmanager::start(None).await;
    let now = jiff::Timestamp::now();
    let mut down = sample(NoticeKind::Down);
    down.opened_at = now;
    down.since = now;
    let resend = Duration::from_secs(60);
    am.post(&alertmanager::body(&down, now, resend)).await;
    let alerts = wait_for("HeartbeatDown active", Duration::from_secs(15), || async {
        let a = am.active("HeartbeatDown").await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(alerts.len(), 1);
    let labels = &alerts[0]["labels"];
    for (k, v) in [
        ("alertname", "HeartbeatDown"),
        ("namespace", "team-a"),
        ("heartbeat", "nightly-backup"),
        ("application", "billing"),
        ("severity", "critical"),
    ] {
        assert_eq!(labels[k], v, "{labels}");
    }
    assert_eq!(alerts[0]["generatorURL"], down.dashboard_url);
    assert_eq!(
        alerts[0]["annotations"]["runbook_url"],
        "https://runbooks.example.com/nightly-backup"
    );
    // A re-send a minute later is the same alert, still active, its end pushed on.
    let later = now
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap();
    am.post(&alertmanager::body(&down, later, resend)).await;
    let alerts = am.active("HeartbeatDown").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let ends: jiff::Timestamp = alerts[0]["endsAt"].as_str().unwrap().parse().unwrap();
    assert!(
        ends >= later
            .checked_add(jiff::SignedDuration::from_secs(200))
            .unwrap(),
        "{ends}"
    );
    // Recovery: the same labels with endsAt now resolve it.
    let mut up = down.clone();
    up.kind = NoticeKind::Recovery;
    up.since = jiff::Timestamp::now();
    am.post(&alertmanager::body(&up, jiff::Timestamp::now(), resend))
        .await;
    wait_for(
        "HeartbeatDown resolved",
        Duration::from_secs(15),
        || async { am.active("HeartbeatDown").await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn watchdog_notifications_from_a_real_alertmanager_ping_a_heartbeat() {
    let server = InProcess::start(&[(
        "hb.yaml",
        heartbeat_manifest("alertmanager-watchdog", "10m", "1m", ""),
    )])
    .await;
    let ping = ping_url(&server.data, "alertmanager-watchdog");
    let hook = format!("{}/alertmanager", ping.trim_end_matches("/ping"));
    let am = Alertmanager::start(Some(&hook)).await;
    let watchdog = serde_json::json!([{
        "labels": {"alertname": "Watchdog", "severity": "none"},
        "annotations": {"summary": "The alerting pipeline is alive"},
    }]);
    am.post(&watchdog).await;
    let series = r#"hartslag_heartbeat_state{namespace="default",name="alertmanager-watchdog",application="",state="Up"}"#;
    wait_for(
        "the Watchdog counted as a ping",
        Duration::from_secs(15),
        || async {
            let text = metrics_text(&server.base).await;
            crate::helpers::metric_value(&text, series).filter(|v| *v == 1.0)
        },
    )
    .await;
    // Other alerts routed here are refused and keep nothing alive.
    let res = reqwest::Client::new()
        .post(&hook)
        .json(
            &serde_json::json!({"version": "4", "receiver": "x", "alerts": [
            {"status": "firing", "labels": {"alertname": "HeartbeatDown"}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("no alert named \\\"Watchdog\\\"")
    );
    let bad = reqwest::Client::new()
        .post(&hook)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    drop(am);
    server.stop().await;
}

/// A real Prometheus (Debian's) on loopback, scraping `target` every second.
struct Prometheus {
    base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Self {
        let bin = "/usr/bin/prometheus";
        assert!(
            std::path::Path::new(bin).exists(),
            "prometheus is missing: apt-get install prometheus (tests/run-all.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: hartslag\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            base: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }

    /// The value of an instant query's single sample, once there is one.
    async fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let url = format!("{}/api/v1/query?query={encoded}", self.base);
        let res = reqwest::get(url).await.ok()?;
        let v: Value = res.json().await.ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_reads_a_down_heartbeat_as_up_zero() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = InProcess::start_with(
        &[("hb.yaml", heartbeat_manifest("nightly", "2s", "0s", ""))],
        |c| c.min_interval = hartslag::core::duration::SpecDuration::from_secs(1),
    )
    .await;
    let ping = ping_url(&server.data, "nightly");
    let res = reqwest::get(&ping).await.unwrap();
    assert!(res.status().is_success());
    let target = server.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target).await;
    let query = r#"hartslag_heartbeat_up{name="nightly",namespace="default"}"#;
    wait_for(
        "Prometheus reading the Heartbeat as down",
        Duration::from_secs(60),
        || async { prometheus.value(query).await.filter(|v| *v == 0.0) },
    )
    .await;
    let down = r#"hartslag_heartbeat_state{name="nightly",state="Down"}"#;
    assert_eq!(prometheus.value(down).await, Some(1.0));
    // A ping brings it back up.
    reqwest::get(&ping).await.unwrap();
    wait_for(
        "Prometheus reading the Heartbeat as up",
        Duration::from_secs(30),
        || async { prometheus.value(query).await.filter(|v| *v == 1.0) },
    )
    .await;
    drop(prometheus);
    server.stop().await;
}
