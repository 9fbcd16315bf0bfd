//! The dashboard over real sockets and a real store filled through the ingest and ping
//! APIs: every page rendered with real data, access control per token kind, no token in
//! any page, cookies and CSP, CSV export through the session, badges and the live stream.

use std::time::Duration;

use crate::helpers::{InProcess, heartbeat_manifest, ping_url, read_token, wait_state};
use hartslag::core::duration::SpecDuration;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

fn files() -> Vec<(&'static str, String)> {
    vec![
        (
            "apps.yaml",
            "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: shop\nspec:\n  displayName: Web shop\n  timeZone: Europe/Amsterdam\n---\napiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: billing\nspec:\n  timeZone: UTC\n".to_string(),
        ),
        (
            "hbs.yaml",
            [
                heartbeat_manifest(
                    "backup",
                    "1h",
                    "5m",
                    "  displayName: Nightly backup\n  applicationRef:\n    name: shop\n",
                ),
                heartbeat_manifest("report", "1h", "5m", "  applicationRef:\n    name: billing\n"),
                heartbeat_manifest("flappy", "2s", "0s", "  applicationRef:\n    name: shop\n"),
                heartbeat_manifest("orphan", "1h", "5m", ""),
            ]
            .join("---\n"),
        ),
    ]
}

async fn start() -> InProcess {
    InProcess::start_with(&files(), |c| {
        c.min_interval = SpecDuration::from_secs(1);
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in and returns the session cookie (`name=value`).
async fn login(base: &str, token: &str) -> String {
    let res = client()
        .post(format!("{base}/ui/login"))
        .form_body(&[("token", token), ("next", "/ui")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "login with a valid token"
    );
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_string()
}

async fn get(base: &str, path: &str, cookie: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

async fn page(base: &str, path: &str, cookie: &str) -> String {
    let (status, headers, body) = get(base, path, Some(cookie)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{path}: CSP {csp:?}"
    );
    assert!(!body.contains("style=\""), "{path}: no inline style");
    assert!(!body.contains("<script>"), "{path}: no inline script");
    body
}

async fn send_event(base: &str, token: &str, body: serde_json::Value) {
    let res = client()
        .post(format!("{base}/api/v1/heartbeat"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "{body}");
}

/// Sends a form the way a browser does (`application/x-www-form-urlencoded`).
trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        use hartslag::http::dashboard::view::urlencode;
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_real_data_only_to_those_who_may_see_it() {
    let s = start().await;
    let base = s.base.clone();
    let shop = s.app_token("shop");
    let billing = s.app_token("billing");
    let admin = std::fs::read_to_string(s.data.join("tokens/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let hb_tokens: Vec<String> = ["backup", "report", "flappy", "orphan"]
        .iter()
        .map(|n| read_token(&s.data, "heartbeat", n))
        .collect();

    // Data through the public APIs.
    let now = jiff::Timestamp::now();
    for (i, (event, user)) in [
        ("order", Some(7)),
        ("order", Some(7)),
        ("order", Some(8)),
        ("<script>alert(1)</script>", None),
        ("signup", Some(9)),
    ]
    .iter()
    .enumerate()
    {
        let mut body = json!({"event": event, "weight": i + 1});
        if let Some(u) = user {
            body["user_id"] = json!(u);
        }
        send_event(&base, &shop, body).await;
    }
    for (ago_h, event) in [(1, "order"), (30, "order"), (24 * 10, "refund")] {
        let at = now - jiff::SignedDuration::from_hours(ago_h);
        send_event(
            &base,
            &shop,
            json!({"event": event, "created_at": at.to_string()}),
        )
        .await;
    }
    send_event(&base, &billing, json!({"event": "invoice"})).await;
    let backup = ping_url(&s.data, "backup");
    let c = client();
    assert!(
        c.get(backup.replace("/ping", "/start"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let res = c
        .post(&backup)
        .header("user-agent", "backup-cron/1.0")
        .body("dumped 42 tables")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());

    // Nothing without a session: pages go to the login form, the live stream refuses.
    for path in [
        "/ui",
        "/ui/monitors",
        "/ui/monitors/default/backup",
        "/ui/applications",
        "/ui/applications/default/shop",
        "/ui/applications/default/shop/export.csv",
    ] {
        let (status, headers, _) = get(&base, path, None).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        let loc = headers.get("location").unwrap().to_str().unwrap();
        assert!(loc.starts_with("/ui/login?next=%2Fui"), "{path} → {loc}");
    }
    assert_eq!(
        get(&base, "/ui/live", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, body) = get(&base, "/ui/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("type=\"password\""));

    // Wrong credentials are told apart, and a cross-site login is refused.
    for (token, expect) in [
        ("hsa_not-a-real-token", "not valid"),
        (hb_tokens[0].as_str(), "heartbeat ping token"),
    ] {
        let res = client()
            .post(format!("{base}/ui/login"))
            .form_body(&[("token", token), ("next", "/ui")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.text().await.unwrap().contains(expect));
    }
    let res = client()
        .post(format!("{base}/ui/login"))
        .header("origin", "https://evil.example")
        .form_body(&[("token", admin.as_str()), ("next", "/ui")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = client()
        .post(format!("{base}/ui/login"))
        .header("x-forwarded-proto", "https")
        .form_body(&[("token", admin.as_str()), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["location"], "/ui", "no open redirect");
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Secure"),
        "Secure behind an HTTPS proxy"
    );

    let secrets: Vec<&str> = [&admin, &shop, &billing]
        .into_iter()
        .chain(hb_tokens.iter())
        .map(String::as_str)
        .collect();
    let assert_no_tokens = |path: &str, html: &str| {
        for t in &secrets {
            assert!(!html.contains(t), "{path} contains a token");
        }
    };

    // Admin sees everything.
    let a = login(&base, &admin).await;
    let overview = page(&base, "/ui", &a).await;
    assert!(overview.contains("Signed in as admin"));
    // Every asset a page links to is served (a missing icon was a 404 on every page).
    for asset in [
        "/ui/static/app.css",
        "/ui/static/app.js",
        "/ui/static/icon.svg",
    ] {
        assert!(overview.contains(asset), "{asset} linked");
        let (status, headers, _) = get(&base, asset, None).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert!(headers.contains_key("content-type"), "{asset}");
    }
    assert!(overview.contains("Web shop") && overview.contains("billing"));
    assert!(overview.contains("No monitor is Down or Late."));
    let monitors = page(&base, "/ui/monitors", &a).await;
    for name in ["Nightly backup", "report", "flappy", "orphan"] {
        assert!(monitors.contains(name), "admin sees {name}");
        // Set apart, so a name in another script or with bidi controls reorders nothing.
        assert!(
            monitors.contains(&format!("<bdi>{name}</bdi>")),
            "{name} in a bdi"
        );
    }
    assert!(monitors.contains("Showing 1–4 of 4"));
    let down_only = page(&base, "/ui/monitors?state=Down", &a).await;
    assert!(down_only.contains("No monitor matches."));
    let detail = page(&base, "/ui/monitors/default/backup", &a).await;
    assert!(detail.contains("dumped 42 tables"), "ping body excerpt");
    assert!(detail.contains("backup-cron/1.0"), "user agent");
    assert!(
        detail.contains("Duration of the last 1 runs"),
        "run duration chart"
    );
    assert!(detail.contains(">start<") && detail.contains(">success<"));
    let app = page(&base, "/ui/applications/default/shop", &a).await;
    assert!(
        app.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "names escaped"
    );
    assert!(!app.contains("<script>alert"));
    assert!(app.contains("Europe/Amsterdam"));
    assert!(
        app.contains("Events per hour, last 48 hours (Europe/Amsterdam)"),
        "the chart names its zone"
    );
    assert!(app.contains("Events per day, last 90 days (Europe/Amsterdam)"));
    assert!(app.contains("<polyline"), "charts drawn");
    assert!(
        app.contains("refund"),
        "a 10-day-old event in the daily chart and totals"
    );
    // Its state cards count and list this application's monitors only.
    let cards = app.split("Its monitors").nth(1).unwrap();
    let link = "/ui/monitors?state=Up&amp;application=default%2Fshop";
    assert!(cards.contains(link), "cards link within the application");
    let its = page(&base, &link.replace("&amp;", "&"), &a).await;
    assert!(its.contains("Nightly backup") && !its.contains("report") && !its.contains("orphan"));
    assert!(
        its.contains(r#"name="application" value="default/shop""#),
        "the filter form keeps it"
    );
    let users = app.split("Top users").nth(1).unwrap();
    let (u7, u8) = (users.find(">7<").unwrap(), users.find(">8<").unwrap());
    assert!(u7 < u8, "user 7 (2 events) ranks above user 8 (1 event)");
    let filtered = page(
        &base,
        "/ui/applications/default/shop?event=order&from=2000-01-01",
        &a,
    )
    .await;
    assert!(
        filtered.contains("export.csv?event=order&amp;from=2000-01-01"),
        "export link keeps the filters"
    );
    assert!(filtered.contains(r#"type="date" name="from" value="2000-01-01""#));
    // A time the export takes, which a date picker cannot show, stays in the form.
    let timed = page(
        &base,
        "/ui/applications/default/shop?from=2000-01-01T10%3A00%3A00Z",
        &a,
    )
    .await;
    assert!(
        timed.contains(r#"type="text" name="from" value="2000-01-01T10:00:00Z""#),
        "an RFC 3339 bound is shown as typed"
    );
    let (status, _, bad) = get(&base, "/ui/applications/default/shop?user_id=abc", Some(&a)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.contains("user_id must be an integer"));
    for (path, html) in [
        ("/ui", &overview),
        ("/ui/monitors", &monitors),
        ("/ui/monitors/default/backup", &detail),
        ("/ui/applications/default/shop", &app),
        (
            "/ui/applications",
            &page(&base, "/ui/applications", &a).await,
        ),
    ] {
        assert_no_tokens(path, html);
    }

    // The hourly rollups behind the chart hold the events in their hours.
    let num = s.core.registry.application("default/shop").unwrap().num;
    let hour = hartslag::core::storage::hour_of(now);
    let hourly = s
        .core
        .events
        .hourly(num, hour - 47, hour + 1, Some("order".into()))
        .await
        .unwrap();
    let count_at = |h: i64| -> i64 {
        hourly
            .iter()
            .filter(|b| b.at == h)
            .map(|b| b.tally.count)
            .sum()
    };
    assert_eq!(count_at(hour - 1), 1);
    assert_eq!(count_at(hour - 30), 1);
    assert!(count_at(hour) >= 3);

    // CSV through the session, honouring filters.
    let (status, headers, csv) = get(
        &base,
        "/ui/applications/default/shop/export.csv?event=order",
        Some(&a),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(
        rows.len(),
        5,
        "3 orders now, 1 an hour ago, 1 thirty hours ago"
    );
    assert!(rows.iter().all(|r| &r[1] == "order"));

    // Badge: public, read-only, not the ping token.
    let at = detail.find("/badge/").unwrap();
    let badge_path: String = detail[at..]
        .chars()
        .take_while(|c| *c != '"' && *c != ')')
        .collect();
    assert!(badge_path.ends_with(".svg") && badge_path.len() == "/badge/".len() + 24 + 4);
    let (status, headers, svg) = get(&base, &badge_path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("image/svg+xml")
    );
    assert!(svg.contains(">Up<") && svg.contains("Nightly backup"));
    assert_eq!(
        get(&base, "/badge/000000000000000000000000.svg", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // A monitor created just after that miss (which rebuilt the badge index) has a working
    // badge as soon as its page shows the URL, not only at the next rebuild.
    let created = client()
        .post(format!("{base}/v1/heartbeats"))
        .bearer_auth(&shop)
        .json(&json!({"name": "Fresh one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let fresh = page(&base, "/ui/monitors/default/fresh-one", &a).await;
    let at = fresh.find("/badge/").unwrap();
    let fresh_badge: String = fresh[at..].chars().take_while(|c| *c != '"').collect();
    let (status, _, svg) = get(&base, &fresh_badge, None).await;
    assert_eq!(status, StatusCode::OK, "{fresh_badge}: {svg}");
    assert!(svg.contains("Fresh one"));

    // An application token sees its application and its monitors only.
    let sh = login(&base, &shop).await;
    let monitors = page(&base, "/ui/monitors", &sh).await;
    assert!(monitors.contains("Nightly backup") && monitors.contains("flappy"));
    assert!(!monitors.contains("report") && !monitors.contains("orphan"));
    assert_eq!(
        get(&base, "/ui/monitors/default/report", Some(&sh)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&base, "/ui/applications/default/billing", Some(&sh))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(
            &base,
            "/ui/applications/default/billing/export.csv",
            Some(&sh)
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let apps = page(&base, "/ui/applications", &sh).await;
    assert!(apps.contains("Web shop") && !apps.contains("billing"));
    let overview = page(&base, "/ui", &sh).await;
    assert!(!overview.contains("billing") && !overview.contains("orphan"));
    assert_no_tokens("/ui (shop)", &overview);

    // A monitor that goes Down shows first, in the overview and its timeline.
    let flappy = ping_url(&s.data, "flappy");
    assert!(c.get(&flappy).send().await.unwrap().status().is_success());
    wait_state(&base, &admin, "flappy", "Down", Duration::from_secs(10)).await;
    let overview = page(&base, "/ui", &sh).await;
    assert!(!overview.contains("No monitor is Down or Late."));
    assert!(overview.contains("flappy"));
    let detail = page(&base, "/ui/monitors/default/flappy", &sh).await;
    let timeline = detail.split("State timeline").nth(1).unwrap();
    assert!(
        timeline.contains("st-up") && timeline.contains("st-down"),
        "Up → … → Down rows"
    );
    let monitors = page(&base, "/ui/monitors", &sh).await;
    assert!(
        monitors.find("flappy").unwrap() < monitors.find("Nightly backup").unwrap(),
        "Down before Up"
    );

    // Logout needs the session's form token.
    let csrf = csrf_of(&overview);
    let res = client()
        .post(format!("{base}/ui/logout"))
        .header("cookie", &sh)
        .form_body(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = client()
        .post(format!("{base}/ui/logout"))
        .header("cookie", &sh)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(get(&base, "/ui", Some(&sh)).await.0, StatusCode::SEE_OTHER);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_application_ends_its_sessions() {
    let s = start().await;
    let shop = s.app_token("shop");
    let cookie = login(&s.base, &shop).await;
    page(&s.base, "/ui", &cookie).await;
    s.core
        .registry
        .remove_application("default", "shop", false)
        .await
        .unwrap();
    let (status, _, _) = get(&s.base, "/ui", Some(&cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "revoked token, no session");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pages_and_wrong_methods_under_ui_keep_the_security_headers() {
    let s = start().await;
    let cookie = login(&s.base, &s.app_token("shop")).await;
    let c = client();
    for (method, path) in [
        (reqwest::Method::GET, "/ui/nope"),
        (reqwest::Method::GET, "/ui/monitors/default/backup/extra"),
        (reqwest::Method::POST, "/ui/monitors"),
        (reqwest::Method::DELETE, "/ui/applications/default/shop"),
    ] {
        let res = c
            .request(method.clone(), format!("{}{path}", s.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert!(
            matches!(
                status,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ),
            "{method} {path}: {status}"
        );
        let h = res.headers();
        for name in [
            "content-security-policy",
            "x-frame-options",
            "x-content-type-options",
        ] {
            assert!(
                h.contains_key(name),
                "{method} {path} ({status}) lacks {name}"
            );
        }
        let ct = h["content-type"].to_str().unwrap().to_string();
        let body = res.text().await.unwrap();
        if status == StatusCode::NOT_FOUND {
            assert!(
                ct.starts_with("text/html"),
                "{path}: a page for the browser, got {ct}"
            );
            assert!(
                body.contains("Not found") && body.contains(r#"href="/ui""#),
                "{body}"
            );
        }
    }
    // Without a session an unknown page asks for the login, as a known one does.
    let res = c.get(format!("{}/ui/nope", s.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // Outside the dashboard the API's JSON 404 stays.
    let res = c
        .get(format!("{}/api/v1/nope", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.text().await.unwrap().contains("no such route"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_announces_a_state_change_at_once() {
    let s = start().await;
    let cookie = login(&s.base, &s.app_token("shop")).await;
    let mut headers = HeaderMap::new();
    headers.insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    let mut res = client()
        .get(format!("{}/ui/live", s.base))
        .headers(headers)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // A change the viewer may not see is not announced; its own monitor's change is.
    let report = ping_url(&s.data, "report");
    let backup = ping_url(&s.data, "backup");
    let c = client();
    assert!(c.get(&report).send().await.unwrap().status().is_success());
    let sent = std::time::Instant::now();
    assert!(c.get(&backup).send().await.unwrap().status().is_success());
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !got.contains("default/backup Up") {
        match tokio::time::timeout_at(deadline, res.chunk()).await {
            Ok(Ok(Some(bytes))) => got.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("no change event for backup within 2 s: {other:?}; got {got:?}"),
        }
    }
    assert!(got.contains("event: change"));
    assert!(!got.contains("default/report"), "{got}");
    println!("change announced {:?} after the ping", sent.elapsed());

    // Logging out ends the open stream as well (the session is re-checked as it runs).
    let csrf = csrf_of(&page(&s.base, "/ui", &cookie).await);
    let out = client()
        .post(format!("{}/ui/logout", s.base))
        .header("cookie", &cookie)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, res_chunk(&mut res)).await {
            Ok(None) => break,
            Ok(Some(_)) => continue,
            Err(_) => panic!("the live stream outlived its session"),
        }
    }
    s.stop().await;
}

/// The length of the next chunk of a streamed body; `None` once it has ended.
async fn res_chunk(res: &mut reqwest::Response) -> Option<usize> {
    match res.chunk().await {
        Ok(Some(b)) => Some(b.len()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_monitor_shows_its_schedule_and_next_runs() {
    let hb = "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: weekly\nspec:\n  schedule: \"30 2 * * sun\"\n  timeZone: Europe/Amsterdam\n  grace: 15m\n  maxDuration: 1h\n";
    let s = InProcess::start(&[("hb.yaml", hb.to_string())]).await;
    let admin = std::fs::read_to_string(s.data.join("tokens/admin.token")).unwrap();
    let a = login(&s.base, admin.trim()).await;
    let detail = page(&s.base, "/ui/monitors/default/weekly", &a).await;
    assert!(
        detail.contains("<code>30 2 * * sun</code> in Europe/Amsterdam"),
        "{detail}"
    );
    assert!(detail.contains("Next runs"), "{detail}");
    let runs = detail.split("Next runs").nth(1).unwrap();
    let runs = runs.split("</ol>").next().unwrap();
    assert_eq!(runs.matches("<li>").count(), 5, "{runs}");
    assert_eq!(runs.matches(" 02:30 ").count(), 5, "local times: {runs}");
    assert!(runs.contains("CET") || runs.contains("CEST"), "{runs}");
    assert!(detail.contains("Longest run"), "maxDuration shown");
    let list = page(&s.base, "/ui/monitors", &a).await;
    assert!(
        list.contains("30 2 * * sun"),
        "the list shows the schedule: {list}"
    );
    s.stop().await;
}
