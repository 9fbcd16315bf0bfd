//! Property tests: arbitrary text and bytes through every parser that reads user input, and
//! arbitrary requests through the whole server (in process, over loopback). The property is
//! the contract's: success, or a 4xx with the documented body; never a panic, never a 5xx.
//!
//! Case counts are bounded (`CASES`, or `PROPTEST_CASES` to run more) so `cargo test`
//! stays fast. A new parser of user text joins [`TEXT_PARSERS`].

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hartslag::core::cron::{CronJobCadence, Schedule};
use hartslag::core::duration::SpecDuration;
use hartslag::core::ingest::validate::{parse_created_at, validate_event};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::helpers::{InProcess, heartbeat_manifest};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A parser of user-supplied text and what must hold for every input it accepts.
type TextParser = (&'static str, fn(&str) -> Result<(), String>);

/// Every parser of user text. Each must return for any input; its closure checks what an
/// accepted value must satisfy.
const TEXT_PARSERS: &[TextParser] = &[
    ("created_at", |s| {
        match parse_created_at(s) {
            // Every accepted form is ASCII and at least a date long.
            Some(_) if !s.is_ascii() || s.len() < 10 => Err(format!("accepted {s:?}")),
            _ => Ok(()),
        }
    }),
    ("duration", |s| match SpecDuration::parse(s) {
        // Printing and parsing again gives the same length.
        Ok(d) => match SpecDuration::parse(&d.to_string()) {
            Ok(again) if again == d => Ok(()),
            other => Err(format!("{s:?} -> {d} -> {other:?}")),
        },
        Err(_) => Ok(()),
    }),
    ("cron", |s| match Schedule::parse(s, None) {
        Ok(schedule) => accepted_schedule(s, &schedule),
        Err(_) => Ok(()),
    }),
    ("cron_job", |s| match Schedule::parse_cron_job(s, None) {
        Ok(CronJobCadence::Schedule(schedule)) => accepted_schedule(s, &schedule),
        Ok(CronJobCadence::Every(gap)) if !gap.is_positive() => Err(format!("{s:?} -> {gap}")),
        _ => Ok(()),
    }),
    ("time_zone", |s| {
        match Schedule::parse("0 3 * * *", Some(s)) {
            Ok(schedule) => accepted_schedule("0 3 * * *", &schedule),
            Err(_) => Ok(()),
        }
    }),
];

/// What holds for every schedule a user's text was accepted as: its expression and zone
/// read back as the same schedule, and its next occurrence lies ahead and is an occurrence.
fn accepted_schedule(text: &str, schedule: &Schedule) -> Result<(), String> {
    let again = Schedule::parse_as(
        schedule.expression(),
        Some(schedule.zone()),
        schedule.dialect(),
    )
    .map_err(|e| format!("{text:?} accepted, its expression refused: {e}"))?;
    if &again != schedule {
        return Err(format!("{text:?} reads back as {again}"));
    }
    let now = jiff::Timestamp::from_second(1_733_000_000).map_err(|e| e.to_string())?;
    match schedule.next_after(now) {
        Some(next) if next <= now || !schedule.is_occurrence(next) => {
            Err(format!("{text:?}: next after {now} is {next}"))
        }
        _ => Ok(()),
    }
}

/// Text near crontab expressions: fields of numbers, names, ranges, steps and lists, the
/// @-forms and zone prefixes, with a multibyte character or an arbitrary string now and then.
fn near_cron() -> impl Strategy<Value = String> {
    let field = "([0-9]{1,2}|\\*|[A-Za-z]{3}|\u{e9})([-/,][0-9A-Za-z*]{1,3}){0,3}";
    prop_oneof![
        proptest::collection::vec(field, 1..8).prop_map(|f| f.join(" ")),
        "(CRON_TZ=|TZ=)?[A-Za-z_/+0-9-]{0,20} [0-9*/, -]{0,16}",
        "@[a-z]{0,8}( [0-9hms]{0,6})?",
        "[A-Za-z]{0,10}/[A-Za-z_]{0,12}",
        any::<String>(),
    ]
}

/// Text that is mostly near the accepted forms (digits, separators, a multibyte character
/// here and there), plus arbitrary strings.
fn near_dates() -> impl Strategy<Value = String> {
    prop_oneof![
        mutated_date(),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[T t][0-9:.]{0,12}[Zz+é-]?[0-9:]{0,5}",
        "[0-9dhms\u{e9}\u{1F600} T:+-]{0,24}",
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// An accepted date with one character replaced, inserted or cut off, often by a
/// multibyte one: the inputs most likely to trip a parser that counts bytes.
fn mutated_date() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        Just("2024-01-17T10:30:00Z"),
        Just("2024-01-17T10:30:00.000000Z"),
        Just("2024-01-17T12:30:00+02:00"),
        Just("2024-01-17 10:30:00"),
        Just("2024-01-17"),
    ];
    let replacement = prop_oneof![
        Just('\u{e9}'),
        Just('\u{1F600}'),
        Just('\u{FEFF}'),
        any::<char>(),
    ];
    (valid, 0usize..28, replacement, 0u8..3).prop_map(|(date, at, c, how)| {
        let mut chars: Vec<char> = date.chars().collect();
        let at = at.min(chars.len());
        match how {
            0 if at < chars.len() => chars[at] = c,
            1 => chars.insert(at, c),
            _ => chars.truncate(at),
        }
        chars.into_iter().collect()
    })
}

#[test]
fn text_parsers_return_for_any_input() {
    for (name, parse) in TEXT_PARSERS {
        for strategy in [near_dates().boxed(), near_cron().boxed()] {
            runner()
                .run(&strategy, |s| {
                    parse(&s).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))
                })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// JSON values as clients send them, the contract's fields more often than others.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        near_dates().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::vec((field_name(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("event".to_string()),
        Just("weight".to_string()),
        Just("user_id".to_string()),
        Just("created_at".to_string()),
        Just("name".to_string()),
        Just("interval_secs".to_string()),
        Just("grace_secs".to_string()),
        Just("schedule".to_string()),
        Just("status".to_string()),
        "[a-z_]{1,8}",
    ]
}

/// Request bodies: JSON objects of the contract's fields, any JSON, or arbitrary bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        mutated_date().prop_map(|d| serde_json::json!({"event": "x", "created_at": d})
            .to_string()
            .into_bytes()),
        proptest::collection::vec((field_name(), json_value()), 0..6).prop_map(|kv| Value::Object(
            kv.into_iter().collect()
        )
        .to_string()
        .into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A query-string value: text near the accepted forms, percent-encoded byte by byte (so
/// invalid UTF-8 and reserved characters reach the server too).
fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        near_dates().prop_map(|s| s.into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ]
    .prop_map(|b| b.iter().map(|c| format!("%{c:02X}")).collect())
}

/// Checks an answer against the contract: the statuses the route may give, and for an
/// error, the documented JSON body.
fn check(status: StatusCode, ct: &str, body: &[u8], allowed: &[u16]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(body);
    prop_assert!(
        allowed.contains(&status.as_u16()),
        "status {status} not among {allowed:?}: {text}"
    );
    if status.is_client_error() {
        prop_assert_eq!(ct, "application/json", "{} {}", status, text);
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| TestCaseError::fail(format!("{status} body is not JSON ({e}): {text}")))?;
        let laravel = v["message"].is_string() && v["errors"].is_object();
        prop_assert!(
            v["error"].is_string() || laravel,
            "{} body is neither {{\"error\"}} nor Laravel's shape: {}",
            status,
            text
        );
        if laravel {
            // The message is the first error (in rule order), plus how many more there are.
            let message = v["message"].as_str().unwrap_or_default();
            let firsts = v["errors"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, l)| l[0].as_str());
            prop_assert!(
                firsts.into_iter().any(|f| message.starts_with(f)),
                "{}",
                text
            );
        }
    }
    Ok(())
}

struct Harness {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    server: InProcess,
    app_token: String,
    cookie: String,
}

impl Harness {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: shop\nspec:\n  limits:\n    heartbeats: 4\n";
        let files = [
            ("app.yaml", app.to_string()),
            (
                "hb.yaml",
                heartbeat_manifest("nightly", "1h", "5m", "  applicationRef:\n    name: shop\n"),
            ),
        ];
        let server = rt.block_on(InProcess::start_with(&files, |c| {
            c.api_rate_per_sec = 1e6;
            c.api_rate_burst = 1e6;
        }));
        let app_token = server.app_token("shop");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut h = Self {
            rt,
            http,
            server,
            app_token,
            cookie: String::new(),
        };
        let form = format!("token={}&next=%2Fui", h.app_token);
        let res = h.send(
            Request::post("/ui/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap(),
        );
        h.cookie = res.1.split(';').next().unwrap_or_default().to_string();
        assert!(h.cookie.contains('='), "no session cookie");
        h
    }

    /// Sends one request to the server; returns status, content type (or, for the login,
    /// the cookie) and body. The path and query go out exactly as written.
    fn send(&self, req: Request<Body>) -> (StatusCode, String, Vec<u8>) {
        let http = self.http.clone();
        let base = self.server.base.clone();
        self.rt.block_on(async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let url = format!("{base}{}", parts.uri);
            let mut out = http.request(parts.method, url).body(body.to_vec());
            for (name, value) in &parts.headers {
                out = out.header(name, value);
            }
            let res = out.send().await.unwrap();
            let status = res.status();
            let head = res
                .headers()
                .get(header::SET_COOKIE)
                .or_else(|| res.headers().get(header::CONTENT_TYPE))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = res.bytes().await.unwrap().to_vec();
            (status, head, body)
        })
    }

    fn authed(&self, method: &str, uri: &str, body: Vec<u8>) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.app_token))
            .body(Body::from(body))
            .unwrap()
    }
}

#[test]
fn arbitrary_ingest_bodies_get_201_or_the_documented_4xx() {
    let h = Harness::new();
    runner()
        .run(&body(), |b| {
            // Validation alone must agree with the route.
            if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                let _ = validate_event(&v);
            }
            let (status, ct, body) = h.send(h.authed("POST", "/api/v1/heartbeat", b));
            check(status, &ct, &body, &[201, 413, 422])?;
            if status == StatusCode::CREATED {
                prop_assert_eq!(&body[..], b"[]");
            }
            Ok(())
        })
        .unwrap();
    h.rt.block_on(h.server.stop());
}

#[test]
fn arbitrary_queries_get_200_or_the_documented_4xx() {
    let h = Harness::new();
    let queries = (query_value(), query_value(), query_value(), query_value());
    runner()
        .run(&queries, |(a, b, c, d)| {
            // A path segment of `.` or `..`, even percent-encoded, is a dot segment that the
            // client's URL parser resolves away (`/v1/heartbeats/%2E/ping` goes out as
            // `/v1/heartbeats/ping`, a route without POST): such a value becomes `.x`.
            let a = if matches!(a.as_str(), "%2E" | "%2E%2E") {
                format!("{a}x")
            } else {
                a
            };
            for (uri, allowed) in [
                (
                    format!("/api/v1/export.csv?from={a}&to={b}&user_id={c}&event={d}"),
                    &[200, 422][..],
                ),
                (
                    format!("/api/v1/stats?date={a}&user_id={b}&event={c}"),
                    &[200, 422],
                ),
                (format!("/v1/heartbeats?limit={a}"), &[200]),
                (
                    format!("/v1/heartbeats/{a}/pings?limit={b}"),
                    &[200, 404, 422],
                ),
                (format!("/v1/heartbeats/{a}"), &[200, 404]),
                (format!("/v1/status?state={a}"), &[200, 422]),
            ] {
                let (status, ct, body) = h.send(h.authed("GET", &uri, Vec::new()));
                check(status, &ct, &body, allowed)?;
            }
            for kind in ["ping", "start", "fail"] {
                let uri = format!("/v1/heartbeats/{a}/{kind}?exit_code={b}");
                let req = Request::post(uri).body(Body::from(c.clone())).unwrap();
                let (status, ct, body) = h.send(req);
                check(status, &ct, &body, &[200, 400, 404])?;
            }
            // The dashboard answers a page, with the status the API would give.
            for path in ["", "/export.csv"] {
                let uri = format!(
                    "/ui/applications/default/shop{path}?from={a}&to={b}&user_id={c}&event={d}"
                );
                let req = Request::get(uri)
                    .header(header::COOKIE, &h.cookie)
                    .body(Body::empty())
                    .unwrap();
                let (status, _, body) = h.send(req);
                prop_assert!(
                    matches!(status.as_u16(), 200 | 422),
                    "dashboard {path}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let uri = format!("/ui/monitors?state={a}&namespace={b}&q={c}&page={d}");
            let req = Request::get(uri)
                .header(header::COOKIE, &h.cookie)
                .body(Body::empty())
                .unwrap();
            prop_assert_eq!(h.send(req).0, StatusCode::OK);
            Ok(())
        })
        .unwrap();
    h.rt.block_on(h.server.stop());
}

#[test]
fn arbitrary_management_bodies_get_2xx_or_the_documented_4xx() {
    let h = Harness::new();
    let id = h.rt.block_on(async {
        let list =
            crate::helpers::get_json(&format!("{}/v1/heartbeats", h.server.base), &h.app_token)
                .await;
        list["heartbeats"][0]["id"].as_str().unwrap().to_string()
    });
    runner()
        .run(&body(), |b| {
            let (status, ct, body) = h.send(h.authed("POST", "/v1/heartbeats", b.clone()));
            check(status, &ct, &body, &[201, 400, 402, 413, 422])?;
            let uri = format!("/v1/heartbeats/{id}");
            let (status, ct, body) = h.send(h.authed("PATCH", &uri, b));
            // The monitor comes from a manifest: a valid change is refused as read-only.
            check(status, &ct, &body, &[200, 400, 409, 413, 422])?;
            Ok(())
        })
        .unwrap();
    h.rt.block_on(h.server.stop());
}
