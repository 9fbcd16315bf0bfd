//! Cron-scheduled monitors in standalone mode: a real minute schedule on the real clock,
//! alerts through a real SMTP server (aiosmtpd), the management API's `schedule`, and the
//! error a bad expression gives at start.

use std::process::Command;
use std::time::Duration;

use crate::helpers::{InProcess, SmtpSink, app_manifest, binary, ping_url, wait_state};
use hartslag::core::duration::SpecDuration;
use jiff::Timestamp;
use serde_json::{Value, json};

fn scheduled_manifest(name: &str, schedule: &str, grace: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: {name}\nspec:\n  schedule: \"{schedule}\"\n  grace: {grace}\n{extra_spec}"
    )
}

fn admin_token(s: &InProcess) -> String {
    std::fs::read_to_string(s.data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn timestamp(v: &Value) -> Timestamp {
    v.as_str().unwrap().parse().unwrap()
}

/// The first whole minute after `t`.
fn next_minute(t: Timestamp) -> Timestamp {
    Timestamp::from_second((t.as_second() / 60 + 1) * 60).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_minute_is_down_with_one_email() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let email = "  displayName: Every minute\n  alerts:\n    email: [\"ops@example.com\"]\n";
    let s = InProcess::start_with(
        &[(
            "hb.yaml",
            scheduled_manifest("minutely", "* * * * *", "3s", email),
        )],
        |c| {
            c.smtp_url = Some(sink.url());
            c.min_interval = SpecDuration::from_secs(1);
            c.outbox.base_delay = Duration::from_millis(200);
        },
    )
    .await;
    let admin = admin_token(&s);
    // Armed from the start: New, due at the next whole minute.
    let created = Timestamp::now();
    let new = wait_state(&s.base, &admin, "minutely", "New", Duration::from_secs(5)).await;
    assert_eq!(new["schedule"], "* * * * *");
    assert_eq!(new["time_zone"], "UTC");
    assert_eq!(new["interval_secs"], 60);
    let due = timestamp(&new["next_due_at"]);
    assert!(
        due == next_minute(created) || due == next_minute(Timestamp::now()),
        "{new}"
    );

    let r = reqwest::get(ping_url(&s.data, "minutely")).await.unwrap();
    assert_eq!(r.status(), 200);
    let pinged = Timestamp::now();
    let up = wait_state(&s.base, &admin, "minutely", "Up", Duration::from_secs(5)).await;
    let due = timestamp(&up["next_due_at"]);
    assert_eq!(due, next_minute(timestamp(&up["last_ping_at"])), "{up}");
    assert!(
        due > pinged
            .checked_sub(jiff::SignedDuration::from_secs(1))
            .unwrap()
    );

    // No ping for that minute: Down three seconds after it, and one email.
    let down = wait_state(&s.base, &admin, "minutely", "Down", Duration::from_secs(75)).await;
    assert_eq!(
        timestamp(&down["since"]),
        due.checked_add(jiff::SignedDuration::from_secs(3)).unwrap()
    );
    let reason = down["down_reason"].as_str().unwrap();
    assert!(
        reason.contains("no ping for the run scheduled at"),
        "{reason}"
    );
    assert!(reason.contains("* * * * * (UTC)"), "{reason}");
    let mails = sink
        .wait_for_mail("DOWN: Every minute", Duration::from_secs(15))
        .await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("no ping for the run scheduled at"),
        "{}",
        mails[0]
    );
    assert_eq!(
        sink.with_subject("DOWN").len(),
        1,
        "a second DOWN email was sent"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schedule_stops_standalone_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("hb.yaml"),
        scheduled_manifest("nightly", "0 25 * * *", "5m", ""),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .arg("standalone")
            .arg("--manifests")
            .arg(&manifests)
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .args(crate::helpers::backend_args(&dir.path().join("data")))
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "Heartbeat nightly: spec.schedule \"0 25 * * *\" is not a valid cron expression: hour field \"25\""
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hb.yaml"), "names the file: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_sets_and_reports_schedules() {
    let s = InProcess::start(&[("a.yaml", app_manifest("team", "UTC"))]).await;
    let key = s.app_token("team");
    let c = reqwest::Client::new();
    let api = format!("{}/v1/heartbeats", s.base);
    let send = |method: reqwest::Method, url: String, body: Value| {
        let req = c.request(method, url).bearer_auth(&key).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, hb) = send(
        reqwest::Method::POST,
        api.clone(),
        json!({"name": "Weekday report", "schedule": "30 7 * * mon-fri", "time_zone": "Europe/Amsterdam", "grace_secs": 600}),
    )
    .await;
    assert_eq!(status, 201, "{hb}");
    assert_eq!(
        (
            &hb["schedule"],
            &hb["time_zone"],
            &hb["interval_secs"],
            &hb["grace_secs"]
        ),
        (
            &json!("30 7 * * mon-fri"),
            &json!("Europe/Amsterdam"),
            &json!(86_400),
            &json!(600)
        ),
        "the typical gap stands in for the interval"
    );
    let next = timestamp(&hb["next_expected_at"]);
    let local = next.to_zoned(jiff::tz::TimeZone::get("Europe/Amsterdam").unwrap());
    assert_eq!((local.hour(), local.minute()), (7, 30), "{hb}");
    let one = format!("{api}/{}", hb["id"].as_str().unwrap());

    // Bad input is a 422 naming the field and the rule.
    for (body, needle) in [
        (
            json!({"name": "x", "schedule": "61 * * * *"}),
            "schedule \"61 * * * *\" is not a valid cron expression: minute field",
        ),
        (
            json!({"name": "x", "schedule": "@daily", "interval_secs": 3600}),
            "schedule and interval_secs are mutually exclusive",
        ),
        (
            json!({"name": "x", "schedule": "@daily", "time_zone": "Mars/Base"}),
            "time_zone \"Mars/Base\" is not a known IANA time zone",
        ),
        (
            json!({"name": "x", "time_zone": "UTC"}),
            "time_zone applies to a schedule",
        ),
        (
            json!({"name": "x", "schedule": 5}),
            "schedule must be a string",
        ),
        (
            json!({"name": "x", "schedule": "0 0 30 2 *"}),
            "never fires",
        ),
    ] {
        let (status, v) = send(reqwest::Method::POST, api.clone(), body.clone()).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    // Another zone for the same expression; then a Tickstem client that only knows
    // intervals moves it back to one.
    let (status, v) = send(
        reqwest::Method::PATCH,
        one.clone(),
        json!({"time_zone": "Asia/Tokyo"}),
    )
    .await;
    assert_eq!(
        (status, &v["schedule"], &v["time_zone"]),
        (200, &json!("30 7 * * mon-fri"), &json!("Asia/Tokyo")),
        "{v}"
    );
    let (status, v) = send(
        reqwest::Method::PATCH,
        one.clone(),
        json!({"interval_secs": 7200}),
    )
    .await;
    assert_eq!(
        (status, &v["schedule"], &v["interval_secs"]),
        (200, &Value::Null, &json!(7200)),
        "{v}"
    );
    let (status, v) = send(
        reqwest::Method::PATCH,
        one.clone(),
        json!({"schedule": "@hourly"}),
    )
    .await;
    assert_eq!(
        (status, &v["schedule"], &v["time_zone"], &v["interval_secs"]),
        (200, &json!("@hourly"), &json!("UTC"), &json!(3600)),
        "{v}"
    );
    let (status, v) = send(
        reqwest::Method::PATCH,
        one.clone(),
        json!({"schedule": null}),
    )
    .await;
    assert_eq!(
        (status, &v["schedule"], &v["interval_secs"]),
        (200, &Value::Null, &json!(3600)),
        "{v}"
    );
    // Schedule and zone together; the listing shows them too.
    let (status, v) = send(
        reqwest::Method::PATCH,
        one.clone(),
        json!({"schedule": "0 3 * * *", "time_zone": "Europe/Amsterdam"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, listed) = send(reqwest::Method::GET, api.clone(), Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(listed["heartbeats"][0]["schedule"], "0 3 * * *", "{listed}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_rarer_than_daily_reports_and_leaves_an_interval_the_api_accepts() {
    // `0 0 29 2 *` runs once in four years: its typical gap (126230400 s) was reported as
    // `interval_secs`, and dropping the schedule left an interval monitor whose interval a
    // client could not write back (422).
    let s = InProcess::start(&[("a.yaml", app_manifest("team", "UTC"))]).await;
    let key = s.app_token("team");
    let c = reqwest::Client::new();
    let api = format!("{}/v1/heartbeats", s.base);
    let send = |method: reqwest::Method, url: String, body: Value| {
        let req = c.request(method, url).bearer_auth(&key).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for schedule in ["0 0 29 2 *", "@yearly", "0 0 1 */3 *"] {
        let body = json!({"name": format!("rare {schedule}"), "schedule": schedule});
        let (status, hb) = send(reqwest::Method::POST, api.clone(), body).await;
        assert_eq!(status, 201, "{hb}");
        assert_eq!(hb["interval_secs"], 86_400, "{hb}");
        let one = format!("{api}/{}", hb["id"].as_str().unwrap());
        let (status, got) = send(reqwest::Method::GET, one.clone(), Value::Null).await;
        assert_eq!(
            (status, &got["interval_secs"]),
            (200, &json!(86_400)),
            "{got}"
        );

        let (status, v) = send(
            reqwest::Method::PATCH,
            one.clone(),
            json!({"schedule": null}),
        )
        .await;
        assert_eq!(
            (status, &v["schedule"], &v["interval_secs"]),
            (200, &Value::Null, &json!(86_400)),
            "{schedule}: {v}"
        );
        // What the client read it can write back.
        let (status, v) = send(
            reqwest::Method::PATCH,
            one.clone(),
            json!({"interval_secs": v["interval_secs"], "grace_secs": v["grace_secs"]}),
        )
        .await;
        assert_eq!((status, &v["interval_secs"]), (200, &json!(86_400)), "{v}");
    }
    s.stop().await;
}
