//! The event API of spec section 1 over real sockets and a real sled directory.

use crate::helpers::{InProcess, app_manifest};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn server() -> (InProcess, String) {
    let s = InProcess::start(&[("apps.yaml", app_manifest("shop", "UTC"))]).await;
    let token = s.app_token("shop");
    (s, token)
}

async fn post_raw(
    base: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
    content_type: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/api/v1/heartbeat"))
        .body(body);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = res.text().await.unwrap();
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "status {status} body {text}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

async fn post(base: &str, token: &str, body: Value) -> (StatusCode, Value) {
    post_raw(
        base,
        Some(token),
        body.to_string(),
        Some("application/json"),
    )
    .await
}

async fn export(base: &str, token: &str, query: &str) -> Vec<csv::StringRecord> {
    let res = reqwest::Client::new()
        .get(format!("{base}/api/v1/export.csv{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = res.text().await.unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec!["created_at", "event", "weight", "user_id"]
    );
    reader.records().map(|r| r.unwrap()).collect()
}

async fn stats(base: &str, token: &str, query: &str) -> Value {
    let res = reqwest::Client::new()
        .get(format!("{base}/api/v1/stats{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn accepted_bodies_are_stored_as_given() {
    let (s, token) = server().await;
    let cases = [
        (
            json!({"event": "user-login", "weight": 1, "user_id": 123, "created_at": "2024-01-17T10:30:00Z"}),
            "2024-01-17T10:30:00Z",
            "user-login",
            "1",
            "123",
        ),
        (
            json!({"event": "  padded  ", "weight": "150", "user_id": "42"}),
            "",
            "padded",
            "150",
            "42",
        ),
        (
            json!({"event": "nulls", "weight": null, "user_id": null, "created_at": null}),
            "",
            "nulls",
            "1",
            "",
        ),
        (
            json!({"event": "empties", "weight": "", "user_id": " ", "created_at": ""}),
            "",
            "empties",
            "1",
            "",
        ),
        (
            json!({"event": "micro", "created_at": "2024-01-17T10:30:00.000000Z"}),
            "2024-01-17T10:30:00Z",
            "micro",
            "1",
            "",
        ),
        (
            json!({"event": "offset", "created_at": "2024-01-17T12:30:00+02:00"}),
            "2024-01-17T10:30:00Z",
            "offset",
            "1",
            "",
        ),
        (
            json!({"event": "naive-t", "created_at": "2024-01-17T10:30:00"}),
            "2024-01-17T10:30:00Z",
            "naive-t",
            "1",
            "",
        ),
        (
            json!({"event": "naive-space", "created_at": "2024-01-17 10:30:00"}),
            "2024-01-17T10:30:00Z",
            "naive-space",
            "1",
            "",
        ),
        (
            json!({"event": "date-only", "created_at": "2024-01-17"}),
            "2024-01-17T00:00:00Z",
            "date-only",
            "1",
            "",
        ),
        (
            json!({"event": "extra", "unknown": {"x": 1}}),
            "",
            "extra",
            "1",
            "",
        ),
    ];
    for (body, ..) in &cases {
        let (status, value) = post(&s.base, &token, body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(value, json!([]));
    }
    let rows = export(&s.base, &token, "").await;
    for (body, at, event, weight, user) in cases {
        let row = rows
            .iter()
            .find(|r| &r[1] == event)
            .unwrap_or_else(|| panic!("{body} not exported"));
        if !at.is_empty() {
            assert_eq!(&row[0], at, "{body}");
        }
        assert_eq!((&row[2], &row[3]), (weight, user), "{body}");
    }
    s.stop().await;
}

#[tokio::test]
async fn missing_content_type_is_parsed_as_json() {
    let (s, token) = server().await;
    let (status, _) = post_raw(&s.base, Some(&token), r#"{"event":"no-ct"}"#, None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = post_raw(
        &s.base,
        Some(&token),
        r#"{"event":"text-ct"}"#,
        Some("text/plain"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    s.stop().await;
}

#[tokio::test]
async fn every_validation_message() {
    let (s, token) = server().await;
    let cases: Vec<(Value, &str, Value)> = vec![
        (
            json!({}),
            "The event field is required.",
            json!({"event": ["The event field is required."]}),
        ),
        (
            json!({"event": "   "}),
            "The event field is required.",
            json!({"event": ["The event field is required."]}),
        ),
        (
            json!({"event": 12}),
            "The event field must be a string.",
            json!({"event": ["The event field must be a string."]}),
        ),
        (
            json!({"event": "x".repeat(256)}),
            "The event field must not be greater than 255 characters.",
            json!({"event": ["The event field must not be greater than 255 characters."]}),
        ),
        (
            json!({"event": "a\u{0}b"}),
            "The event field must not contain a NUL character.",
            json!({"event": ["The event field must not contain a NUL character."]}),
        ),
        (
            json!({"event": "a", "weight": "1.5"}),
            "The weight field must be an integer.",
            json!({"weight": ["The weight field must be an integer."]}),
        ),
        (
            json!({"event": "a", "user_id": "abc"}),
            "The user id field must be an integer.",
            json!({"user_id": ["The user id field must be an integer."]}),
        ),
        (
            json!({"event": "a", "created_at": "2024-02-30"}),
            "The created at field must be a valid date.",
            json!({"created_at": ["The created at field must be a valid date."]}),
        ),
        (
            json!({"event": "a", "created_at": "next tuesday"}),
            "The created at field must be a valid date.",
            json!({"created_at": ["The created at field must be a valid date."]}),
        ),
        (
            json!({"event": "a", "created_at": "2024-01-17T10:30:00+25:00"}),
            "The created at field must be a valid date.",
            json!({"created_at": ["The created at field must be a valid date."]}),
        ),
        (
            json!({"weight": "x"}),
            "The event field is required. (and 1 more error)",
            json!({"event": ["The event field is required."], "weight": ["The weight field must be an integer."]}),
        ),
        (
            json!({"weight": "x", "user_id": [], "created_at": "2024-13-01"}),
            "The event field is required. (and 3 more errors)",
            json!({
                "event": ["The event field is required."],
                "weight": ["The weight field must be an integer."],
                "user_id": ["The user id field must be an integer."],
                "created_at": ["The created at field must be a valid date."]
            }),
        ),
    ];
    for (body, message, errors) in cases {
        let (status, value) = post(&s.base, &token, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            value,
            json!({"message": message, "errors": errors}),
            "{body}"
        );
    }
    for raw in ["[1,2]", "\"event\"", "42", "{not json", "null"] {
        let (status, value) = post_raw(&s.base, Some(&token), raw, Some("application/json")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{raw}");
        assert_eq!(
            value,
            json!({"message": "The request body must be a JSON object.", "errors": {"body": ["The request body must be a JSON object."]}}),
            "{raw}"
        );
    }
    let rows = export(&s.base, &token, "").await;
    assert!(rows.is_empty(), "rejected requests stored events: {rows:?}");
    s.stop().await;
}

#[tokio::test]
async fn authentication_comes_before_validation() {
    let (s, token) = server().await;
    let bad_bodies = ["{}", "[1]", "{\"event\": 5}"];
    for body in bad_bodies {
        for auth in [None, Some("wrong-token-000000000000"), Some("")] {
            let (status, value) = post_raw(&s.base, auth, body, Some("application/json")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body} {auth:?}");
            assert_eq!(value, json!({"error": "Unauthorized"}));
        }
    }
    // Not the Bearer scheme.
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/heartbeat", s.base))
        .header("Authorization", format!("Basic {token}"))
        .body("{\"event\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for path in ["/api/v1/stats", "/api/v1/export.csv"] {
        let res = reqwest::Client::new()
            .get(format!("{}{path}", s.base))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            json!({"error": "Unauthorized"})
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_store_nothing() {
    let (s, token) = server().await;
    let big = json!({"event": "big", "padding": "x".repeat(70 * 1024)}).to_string();
    let (status, value) = post_raw(&s.base, Some(&token), big, Some("application/json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        value["error"].as_str().unwrap().contains("65536"),
        "{value}"
    );
    assert!(export(&s.base, &token, "").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn csv_round_trips_awkward_names_and_filters() {
    let (s, token) = server().await;
    let names = [
        "plain",
        "with,comma",
        "with \"quotes\"",
        "multi\nline",
        "=1+2",
        " lead and trail ",
        "crlf\r\nend",
        "ünïcødé ✓",
    ];
    for (i, name) in names.iter().enumerate() {
        let body = json!({"event": name, "weight": i as i64 + 1, "user_id": (i % 2) as i64, "created_at": format!("2024-05-{:02}T08:00:00Z", i + 1)});
        assert_eq!(post(&s.base, &token, body).await.0, StatusCode::CREATED);
    }
    let rows = export(&s.base, &token, "").await;
    // Names are trimmed at ingest, exactly as Laravel does, and one a spreadsheet would
    // run as a formula is exported behind a `'`.
    let expected: Vec<String> = names
        .iter()
        .map(|n| match n.trim() {
            "=1+2" => "'=1+2".to_string(),
            n => n.to_string(),
        })
        .collect();
    let got: Vec<String> = rows.iter().map(|r| r[1].to_string()).collect();
    assert_eq!(got, expected, "oldest first, names intact");
    assert_eq!(&rows[0][0], "2024-05-01T08:00:00Z");

    let only_user1 = export(&s.base, &token, "?user_id=1").await;
    assert_eq!(only_user1.len(), 4);
    assert!(only_user1.iter().all(|r| &r[3] == "1"));
    let one_event = export(&s.base, &token, "?event=with%2Ccomma").await;
    assert_eq!(one_event.len(), 1);
    assert_eq!(&one_event[0][1], "with,comma");
    let window = export(&s.base, &token, "?from=2024-05-02&to=2024-05-04").await;
    assert_eq!(
        window.iter().map(|r| r[0].to_string()).collect::<Vec<_>>(),
        vec![
            "2024-05-02T08:00:00Z",
            "2024-05-03T08:00:00Z",
            "2024-05-04T08:00:00Z"
        ]
    );
    let instants = export(
        &s.base,
        &token,
        "?from=2024-05-02T08:00:00Z&to=2024-05-03T08:00:00Z",
    )
    .await;
    assert_eq!(
        instants.len(),
        1,
        "from inclusive, to exclusive for instants"
    );
    let res = reqwest::Client::new()
        .get(format!("{}/api/v1/export.csv?from=yesterday", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        res.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("from")
    );
    s.stop().await;
}

#[tokio::test]
async fn stats_buckets_follow_the_application_time_zone_across_dst() {
    let s = InProcess::start(&[("apps.yaml", app_manifest("ams", "Europe/Amsterdam"))]).await;
    let token = s.app_token("ams");
    // (UTC instant, local date in Amsterdam)
    let events = [
        ("2024-03-31T21:59:59Z", "sun-before-midnight"), // Sun 31 Mar 23:59:59 CEST (DST began that night)
        ("2024-03-31T22:00:00Z", "mon-after-midnight"), // Mon 1 Apr 00:00:00 CEST: new day, week and month
        ("2024-10-27T22:59:59Z", "oct-sun"), // Sun 27 Oct 23:59:59 CET (DST ended that night)
        ("2024-10-27T23:00:00Z", "oct-mon"), // Mon 28 Oct 00:00 CET: new week
        ("2024-10-31T22:59:59Z", "oct-last"), // Thu 31 Oct 23:59:59 CET
        ("2024-10-31T23:00:00Z", "nov-first"), // Fri 1 Nov 00:00 CET: new month, same week
    ];
    for (i, (at, name)) in events.iter().enumerate() {
        let body = json!({"event": name, "weight": 10 * (i as i64 + 1), "created_at": at});
        assert_eq!(post(&s.base, &token, body).await.0, StatusCode::CREATED);
    }
    let by_event = |v: &Value, name: &str, period: &str| -> i64 {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == name)
            .map(|e| e[period]["count"].as_i64().unwrap())
            .unwrap_or(0)
    };

    let sun = stats(&s.base, &token, "?date=2024-03-31").await;
    assert_eq!(sun["time_zone"], "Europe/Amsterdam");
    assert_eq!(sun["periods"]["week_start"], "2024-03-25");
    assert_eq!(
        (
            by_event(&sun, "sun-before-midnight", "today"),
            by_event(&sun, "mon-after-midnight", "today")
        ),
        (1, 0)
    );
    assert_eq!(
        (
            sun["today"]["count"].as_i64(),
            sun["week"]["count"].as_i64(),
            sun["month"]["count"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(sun["today"]["weight"].as_i64(), Some(10));

    let mon = stats(&s.base, &token, "?date=2024-04-01").await;
    assert_eq!(mon["periods"]["week_start"], "2024-04-01");
    assert_eq!(
        (
            mon["today"]["count"].as_i64(),
            mon["week"]["count"].as_i64(),
            mon["month"]["count"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(by_event(&mon, "mon-after-midnight", "month"), 1);
    assert_eq!(by_event(&mon, "sun-before-midnight", "week"), 0);

    let oct_sun = stats(&s.base, &token, "?date=2024-10-27").await;
    assert_eq!(
        (
            by_event(&oct_sun, "oct-sun", "today"),
            by_event(&oct_sun, "oct-mon", "week")
        ),
        (1, 0)
    );

    let oct_last = stats(&s.base, &token, "?date=2024-10-31").await;
    assert_eq!(oct_last["periods"]["week_start"], "2024-10-28");
    assert_eq!(by_event(&oct_last, "oct-mon", "week"), 1);
    assert_eq!(by_event(&oct_last, "oct-sun", "week"), 0);
    assert_eq!(
        oct_last["month"]["count"].as_i64(),
        Some(3),
        "oct-sun, oct-mon, oct-last"
    );
    assert_eq!(by_event(&oct_last, "nov-first", "month"), 0);

    let nov = stats(&s.base, &token, "?date=2024-11-01").await;
    assert_eq!(nov["month"]["count"].as_i64(), Some(1));
    assert_eq!(
        nov["week"]["count"].as_i64(),
        Some(3),
        "week of 28 Oct spans the month boundary"
    );
    assert_eq!(nov["total"]["count"].as_i64(), Some(6));
    assert_eq!(nov["total"]["weight"].as_i64(), Some(210));

    let filtered = stats(&s.base, &token, "?date=2024-11-01&event=oct-last").await;
    assert_eq!(
        (
            filtered["week"]["count"].as_i64(),
            filtered["total"]["count"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let res = reqwest::Client::new()
        .get(format!("{}/api/v1/stats?date=2024-02-30", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    s.stop().await;
}

#[tokio::test]
async fn stats_for_today_and_per_user() {
    let (s, token) = server().await;
    for (user, weight) in [(1, 5), (1, 7), (2, 100)] {
        let body = json!({"event": "purchase", "weight": weight, "user_id": user});
        assert_eq!(post(&s.base, &token, body).await.0, StatusCode::CREATED);
    }
    assert_eq!(
        post(&s.base, &token, json!({"event": "login"})).await.0,
        StatusCode::CREATED
    );
    let all = stats(&s.base, &token, "").await;
    assert_eq!(all["today"], json!({"count": 4, "weight": 113}));
    assert_eq!(all["total"], json!({"count": 4, "weight": 113}));
    assert_eq!(all["events"][0]["event"], "purchase");
    let user1 = stats(&s.base, &token, "?user_id=1").await;
    assert_eq!(user1["month"], json!({"count": 2, "weight": 12}));
    assert_eq!(user1["events"].as_array().unwrap().len(), 1);
    let bad = reqwest::Client::new()
        .get(format!("{}/api/v1/stats?user_id=abc", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    s.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let (s, token) = server().await;
    assert_eq!(
        post(&s.base, &token, json!({"event": "m"})).await.0,
        StatusCode::CREATED
    );
    let c = reqwest::Client::new();
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/no/such/route", 404)] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
    let text = crate::helpers::metrics_text(&s.base).await;
    assert!(text.contains("hartslag_http_requests_total{route=\"/api/v1/heartbeat\",method=\"POST\",status=\"201\"} 1"), "{text}");
    let build = format!(
        "hartslag_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{text}");
    assert!(
        text.contains(
            "hartslag_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "hartslag_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("hartslag_ingest_duration_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("hartslag_events_stored_total 1"), "{text}");
    assert!(!text.contains(&token));
    // Commits: every group is one timed fdatasync of the commit log (on PostgreSQL one
    // transaction), serving one or more records.
    let value = |name: &str| -> f64 {
        crate::helpers::metric_value(&text, name)
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    };
    let groups = value("hartslag_commit_groups_total");
    assert!(groups >= 1.0, "{text}");
    assert_eq!(
        value("hartslag_commit_sync_seconds_count"),
        groups,
        "{text}"
    );
    assert!(value("hartslag_commit_records_total") >= groups, "{text}");
    assert!(
        text.contains("hartslag_commit_sync_seconds_bucket{le=\"0.0001\"}"),
        "{text}"
    );
    assert!(!text.contains(&token));
    s.stop().await;
}

async fn post_with_key(base: &str, token: &str, key: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/heartbeat"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn total_count(stats: &Value) -> i64 {
    stats["total"]["count"].as_i64().unwrap_or_else(|| {
        panic!("no total count in {stats}");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_retries_count_once() {
    let (s, token) = server().await;
    let body =
        json!({"event": "order", "weight": 3, "user_id": 9, "created_at": "2024-01-17T10:30:00Z"});
    let first = post_with_key(&s.base, &token, "order-1", body.clone()).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    // The same event re-serialized differently (key order, a string integer) is a retry.
    let retry = post_with_key(
        &s.base,
        &token,
        "order-1",
        json!({"created_at": "2024-01-17T12:30:00+02:00", "user_id": "9", "weight": 3, "event": " order "}),
    )
    .await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), json!([]));
    // Another key counts; no key counts every time.
    assert_eq!(
        post_with_key(&s.base, &token, "order-2", body.clone())
            .await
            .status(),
        201
    );
    assert_eq!(
        post(&s.base, &token, body.clone()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        post(&s.base, &token, body.clone()).await.0,
        StatusCode::CREATED
    );
    let st = stats(&s.base, &token, "").await;
    assert_eq!(total_count(&st), 4, "{st}");
    assert_eq!(st["total"]["weight"], 12);
    assert_eq!(export(&s.base, &token, "").await.len(), 4);

    // The key with a different event: refused, nothing stored.
    let reused = post_with_key(
        &s.base,
        &token,
        "order-1",
        json!({"event": "order", "weight": 4}),
    )
    .await;
    assert_eq!(reused.status(), 422);
    let v: Value = reused.json().await.unwrap();
    assert_eq!(
        v["message"],
        "The Idempotency-Key was already used with a different event in the last 24 hours."
    );
    assert!(v["errors"]["idempotency_key"].is_array(), "{v}");
    assert_eq!(total_count(&stats(&s.base, &token, "").await), 4);

    // Malformed keys are refused before anything is stored.
    for bad in ["", &"k".repeat(256)] {
        let r = post_with_key(&s.base, &token, bad, body.clone()).await;
        assert_eq!(r.status(), 400, "key {bad:?}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("Idempotency-Key"),
            "{v}"
        );
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/heartbeat", s.base))
        .bearer_auth(&token)
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Authentication still comes first.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/heartbeat", s.base))
        .header("Idempotency-Key", "")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(total_count(&stats(&s.base, &token, "").await), 4);
    let metrics = crate::helpers::metrics_text(&s.base).await;
    assert!(
        metrics.contains("hartslag_events_replayed_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_request_count_once_and_keys_are_per_application() {
    let s = InProcess::start(&[(
        "apps.yaml",
        format!(
            "{}---\n{}",
            app_manifest("a", "UTC"),
            app_manifest("b", "UTC")
        ),
    )])
    .await;
    let (a, b) = (s.app_token("a"), s.app_token("b"));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let base = s.base.clone();
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            post_with_key(&base, &a, "same", json!({"event": "job"}))
                .await
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    assert_eq!(total_count(&stats(&s.base, &a, "").await), 1);
    // Another application's identical key is its own.
    assert_eq!(
        post_with_key(&s.base, &b, "same", json!({"event": "job"}))
            .await
            .status(),
        201
    );
    assert_eq!(total_count(&stats(&s.base, &b, "").await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_cells_a_spreadsheet_would_run_as_formulas_are_neutralised() {
    let (s, token) = server().await;
    let names = [
        "=HYPERLINK(\"http://evil.example\",\"x\")",
        "+1+1",
        "-2+3",
        "@SUM(A1:A9)",
        "safe=name",
        "'quoted",
    ];
    for (i, name) in names.iter().enumerate() {
        let body = json!({"event": name, "weight": -(i as i64), "created_at": format!("2024-05-{:02}T08:00:00Z", i + 1)});
        assert_eq!(post(&s.base, &token, body).await.0, StatusCode::CREATED);
    }
    let rows = export(&s.base, &token, "").await;
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[1].to_string(), r[2].to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "'=HYPERLINK(\"http://evil.example\",\"x\")".into(),
                "0".into()
            ),
            ("'+1+1".into(), "-1".into()),
            ("'-2+3".into(), "-2".into()),
            ("'@SUM(A1:A9)".into(), "-3".into()),
            ("safe=name".into(), "-4".into()),
            ("'quoted".into(), "-5".into()),
        ],
        "event names are neutralised, numbers written by the server are not"
    );
    // Filters still take the name as stored.
    assert_eq!(export(&s.base, &token, "?event=%2B1%2B1").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_events_per_application_and_only_its_most_frequent_names() {
    let s = InProcess::start_with(&[("apps.yaml", app_manifest("shop", "UTC"))], |c| {
        c.metrics_top_events = 2;
    })
    .await;
    let token = s.app_token("shop");
    for (name, n) in [("signup", 3), ("login", 2), ("rare", 1)] {
        for _ in 0..n {
            let (status, _) = post(&s.base, &token, json!({"event": name})).await;
            assert_eq!(status, StatusCode::CREATED);
        }
    }
    // Refused events are not counted.
    let (status, _) = post(&s.base, &token, json!({"event": ""})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let text = crate::helpers::metrics_text(&s.base).await;
    let series = |labels: &str| crate::helpers::metric_value(&text, labels);
    assert_eq!(
        series(r#"hartslag_application_events_total{namespace="default",application="shop"}"#),
        Some(6.0),
        "{text}"
    );
    for (name, n) in [("signup", Some(3.0)), ("login", Some(2.0)), ("rare", None)] {
        let labels = format!(
            r#"hartslag_events_total{{namespace="default",application="shop",event="{name}"}}"#
        );
        assert_eq!(series(&labels), n, "{name} in {text}");
    }
}

/// PostgreSQL's text cannot hold a NUL: such a name was answered 503 there for good (and
/// failed the batch it was in), and a filter holding one 500 on the stats and an export cut
/// off before its header. On every backend it is a 422 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_an_event_name_or_filter_is_a_422_that_says_so() {
    let (s, token) = server().await;
    let (status, body) = post(&s.base, &token, json!({"event": "a\u{0}b"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = post(&s.base, &token, json!({"event": "ab"})).await;
    assert_eq!(status, StatusCode::CREATED);
    for path in ["/api/v1/stats", "/api/v1/export.csv"] {
        let res = reqwest::Client::new()
            .get(format!("{}{path}?event=a%00b", s.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["error"], "query parameter event must not contain a NUL character",
            "{path}"
        );
    }
    assert_eq!(export(&s.base, &token, "?event=ab").await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn weight_sums_past_the_range_of_i64_are_answered_as_plain_integers() {
    // Each weight is a valid i64; their sums are not: a stats answer built as a JSON value
    // could not hold them and dropped the connection, for good, since the sums are stored.
    let (s, token) = server().await;
    for _ in 0..3 {
        let body = json!({"event": "big", "weight": i64::MAX});
        assert_eq!(post(&s.base, &token, body).await.0, StatusCode::CREATED);
    }
    for _ in 0..2 {
        let body = json!({"event": "small", "weight": i64::MIN.to_string()});
        assert_eq!(post(&s.base, &token, body).await.0, StatusCode::CREATED);
    }
    let read = |query: &'static str| {
        let (base, token) = (s.base.clone(), token.clone());
        async move {
            let res = reqwest::Client::new()
                .get(format!("{base}/api/v1/stats{query}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.text().await.unwrap()
        }
    };
    let big = 3 * i128::from(i64::MAX);
    let small = 2 * i128::from(i64::MIN);
    let text = read("?event=big").await;
    assert!(
        text.contains(&format!(r#""total":{{"count":3,"weight":{big}}}"#)),
        "{text}"
    );
    let text = read("").await;
    let sum = big + small;
    assert!(
        text.contains(&format!(r#""total":{{"count":5,"weight":{sum}}}"#)),
        "{text}"
    );
    assert!(text.contains(&format!(r#""weight":{small}"#)), "{text}");
    // Still JSON a client parses (numbers past 64 bits become floats there).
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert_eq!(v["application"], "shop");
    s.stop().await;
}

#[tokio::test]
async fn events_dated_in_the_last_second_accepted_are_exported() {
    // The last second a timestamp holds: its fractions were accepted and counted, but the
    // export could not turn their stored microseconds back into a time and left them out.
    let s = InProcess::start(&[("apps.yaml", app_manifest("far", "Pacific/Kiritimati"))]).await;
    let token = s.app_token("far");
    let dates = [
        ("9999-12-30T22:00:00Z", "9999-12-30T22:00:00Z"),
        ("9999-12-30T22:00:00.5Z", "9999-12-30T22:00:00.5Z"),
        (
            "9999-12-31T10:00:00.999999999+12:00",
            "9999-12-30T22:00:00.999999Z",
        ),
    ];
    for (sent, _) in dates {
        let body = json!({"event": "far", "created_at": sent});
        assert_eq!(
            post(&s.base, &token, body).await.0,
            StatusCode::CREATED,
            "{sent}"
        );
    }
    let rows = export(&s.base, &token, "").await;
    let exported: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    let stored: Vec<&str> = dates.iter().map(|(_, stored)| *stored).collect();
    assert_eq!(exported, stored);
    let total = total_count(&stats(&s.base, &token, "").await);
    assert_eq!(total, dates.len() as i64);
    let rows = export(&s.base, &token, "?from=9999-12-30T22:00:00.5Z").await;
    assert_eq!(rows.len(), 2);
    s.stop().await;
}
