//! Malformed input against a real server process: every answer is a 4xx with the documented
//! body, never a dropped connection.

use std::time::Duration;

use crate::helpers::{ChildServer, app_manifest, read_token};
use serde_json::{Value, json};

/// Dates with a multibyte character where the contract expects ASCII: each once panicked
/// the parser (byte slicing inside a character) and the client got an empty reply.
const MULTIBYTE_DATES: [&str; 5] = [
    "2024-01-01T00:00:0\u{e9}",
    "2024-01-01\u{e9}00:00:00",
    "2024-01-01T00:00:00\u{e9}",
    "\u{e9}024-01-01T00:00:00",
    "2024-01-01 00:00:00+\u{1F600}",
];

fn encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A server with one Application, `shop`: its temporary directory, data directory and
/// process.
async fn shop() -> (tempfile::TempDir, std::path::PathBuf, ChildServer) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), app_manifest("shop", "UTC")).unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    (dir, data, server)
}

/// A client that follows no redirect and gives up after ten seconds.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The dashboard session cookie for `token`.
async fn dashboard_cookie(http: &reqwest::Client, base: &str, token: &str) -> String {
    let login = http
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=%2Fui"))
        .send()
        .await
        .unwrap();
    login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string()
}

/// Everything the servers started in `dir` logged (their logs sit beside their data).
fn logs_in(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multibyte_dates_get_422_from_ingest_export_and_the_dashboard() {
    let (_dir, data, server) = shop().await;
    let token = read_token(&data, "application", "shop");
    let http = client();

    for date in MULTIBYTE_DATES {
        let res = http
            .post(format!("{}/api/v1/heartbeat", server.base))
            .bearer_auth(&token)
            .json(&json!({"event": "x", "created_at": date}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("ingest with {date:?}: no answer: {e}"));
        assert_eq!(res.status(), 422, "{date:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "message": "The created at field must be a valid date.",
                "errors": {"created_at": ["The created at field must be a valid date."]}
            }),
            "{date:?}"
        );

        for param in ["from", "to"] {
            let url = format!("{}/api/v1/export.csv?{param}={}", server.base, encode(date));
            let res = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("export with {param}={date:?}: no answer: {e}"));
            assert_eq!(res.status(), 422, "{param}={date:?}");
            let body: Value = res.json().await.unwrap();
            let msg = body["error"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("query parameter {param} must be")),
                "{msg}"
            );
        }
    }

    // The dashboard's filters read the same parser.
    let cookie = dashboard_cookie(&http, &server.base, &token).await;
    for date in MULTIBYTE_DATES {
        for path in ["", "/export.csv"] {
            let url = format!(
                "{}/ui/applications/default/shop{path}?from={}",
                server.base,
                encode(date)
            );
            let res = http
                .get(&url)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap_or_else(|e| panic!("dashboard {path} with from={date:?}: no answer: {e}"));
            assert_eq!(res.status(), 422, "{path} from={date:?}");
        }
    }

    // The server is still there and still counting.
    let res = http
        .post(format!("{}/api/v1/heartbeat", server.base))
        .bearer_auth(&token)
        .json(&json!({"event": "after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), app_manifest("shop", "UTC")).unwrap();
    std::fs::write(
        manifests.join("hb.yaml"),
        crate::helpers::heartbeat_manifest(
            "job",
            "1h",
            "5m",
            "  applicationRef:\n    name: shop\n",
        ),
    )
    .unwrap();
    let cases = [
        (
            None,
            "127.0.0.1",
            "ignored from a peer that is not a trusted proxy",
        ),
        (
            Some("127.0.0.1,10.0.0.0/8"),
            "203.0.113.7",
            "through trusted proxies, the nearest hop they do not cover",
        ),
    ];
    for (i, (trusted, want, why)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("data-{i}"));
        let args: Vec<&str> = trusted
            .map(|t| vec!["--trusted-proxies", t])
            .unwrap_or_default();
        let server = ChildServer::start(&manifests, &data, &args).await;
        let token = read_token(&data, "application", "shop");
        let res = reqwest::Client::new()
            .post(crate::helpers::ping_url(&data, "job"))
            .header("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.0.0.1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let base = &server.base;
        let list = crate::helpers::get_json(&format!("{base}/v1/heartbeats"), &token).await;
        let id = list["heartbeats"][0]["id"].as_str().unwrap().to_string();
        let pings =
            crate::helpers::get_json(&format!("{base}/v1/heartbeats/{id}/pings"), &token).await;
        assert_eq!(pings["pings"][0]["source"], want, "{why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_asked_with_a_method_it_does_not_take_gets_405_with_allow_and_a_json_error() {
    let (_dir, _data, server) = shop().await;
    let http = reqwest::Client::new();

    for (method, path, allowed) in [
        (reqwest::Method::GET, "/api/v1/heartbeat", "POST"),
        (reqwest::Method::DELETE, "/api/v1/export.csv", "GET"),
        (reqwest::Method::PUT, "/healthz", "GET"),
    ] {
        let res = http
            .request(method.clone(), format!("{}{path}", server.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
        assert_eq!(res.status(), 405, "{method} {path}");
        let allow = res
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow {allow:?}"
        );
        let body: Value = res
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(method.as_str()), "{method} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_of_one_name_at_once_each_get_a_monitor_and_a_working_token() {
    // They once all found the name free and wrote one temporary token file: some answered
    // 503 naming a server path, and the token file held a token no monitor had.
    let (_dir, data, server) = shop().await;
    let key = read_token(&data, "application", "shop");
    let api = format!("{}/v1/heartbeats", server.base);
    // One client, built first (building one takes milliseconds, which spread the requests
    // out), and every request sent at once.
    let http = reqwest::Client::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(16));
    let creates: Vec<_> = (0..16)
        .map(|_| {
            let (api, key, http, start) = (api.clone(), key.clone(), http.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let r = http
                    .post(&api)
                    .bearer_auth(&key)
                    .json(&json!({"name": "race"}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                assert_eq!(status, 201, "{body}");
                let field = |f: &str| body[f].as_str().unwrap().to_string();
                (field("resource"), field("token"))
            })
        })
        .collect();
    let mut made = Vec::new();
    for c in creates {
        made.push(c.await.unwrap());
    }
    let mut names: Vec<&str> = made.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 16, "every create its own name: {names:?}");
    let listed: Value = http
        .get(&api)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (name, token) in &made {
        let r = http
            .post(format!("{}/v1/heartbeats/{token}/ping", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the token {name}'s create answered pings");
        let file = std::fs::read_to_string(data.join(format!("tokens/heartbeat-{name}.token")));
        assert_eq!(file.unwrap().trim(), token, "{name}'s token file");
        let hb = listed["heartbeats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["resource"] == name.as_str())
            .unwrap();
        assert_eq!(hb["token"], token.as_str(), "{name} listed with its token");
    }
    let leftovers: Vec<String> = std::fs::read_dir(data.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_segments_that_do_not_decode_get_each_routes_own_404() {
    // Axum answered these with a plain-text 400 ("Invalid URL: ...") in no route's shape.
    let (_dir, data, server) = shop().await;
    let token = read_token(&data, "application", "shop");
    let http = client();
    let res = http
        .post(format!("{}/v1/heartbeats/%ff/alertmanager", server.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"error": "heartbeat not found"}));

    let res = http
        .get(format!("{}/badge/%ff.svg", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("image/svg+xml")
    );

    let cookie = dashboard_cookie(&http, &server.base, &token).await;
    for path in [
        "/ui/monitors/%ff/%ff",
        "/ui/applications/%ff/shop",
        "/ui/applications/default/%ff",
    ] {
        let res = http
            .get(format!("{}{path}", server.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_by_removing_its_manifest_does_not_come_back_with_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    let defined = format!(
        "{}---\napiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: job\nspec:\n  interval: 1h\n",
        app_manifest("shop", "UTC")
    );
    std::fs::write(manifests.join("all.yaml"), &defined).unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let old_app = read_token(&data, "application", "shop");
    let old_url = std::fs::read_to_string(data.join("tokens/heartbeat-job.url")).unwrap();
    server.kill9();
    // Both removed from the manifests: revoked, and their files gone.
    std::fs::write(manifests.join("all.yaml"), "").unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    for file in [
        "application-shop.token",
        "heartbeat-job.token",
        "heartbeat-job.url",
    ] {
        assert!(
            !data.join("tokens").join(file).exists(),
            "{file} left behind"
        );
    }
    server.kill9();
    // Defined again: new tokens; the old ones stay dead.
    std::fs::write(manifests.join("all.yaml"), &defined).unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let http = reqwest::Client::new();
    // Each start listens on a port of its own: the same path on this one.
    let path = |url: &str| url.trim()[url.find("/v1/").unwrap()..].to_string();
    let r = http
        .post(format!("{}{}", server.base, path(&old_url)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the old ping URL");
    let r = http
        .get(format!("{}/api/v1/stats", server.base))
        .bearer_auth(&old_app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old application token");
    assert_ne!(read_token(&data, "application", "shop"), old_app);
    let new_url = std::fs::read_to_string(data.join("tokens/heartbeat-job.url")).unwrap();
    assert_ne!(path(&new_url), path(&old_url));
    assert_eq!(
        http.post(new_url.trim()).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_heartbeat_does_not_take_over_a_monitor_created_through_the_api() {
    let (dir, data, server) = shop().await;
    let key = read_token(&data, "application", "shop");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/heartbeats", server.base))
        .bearer_auth(&key)
        .json(&json!({"name": "daily backup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["resource"], "daily-backup");
    server.kill9();
    let manifests = dir.path().join("manifests");
    std::fs::write(
        manifests.join("hb.yaml"),
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: daily-backup\nspec:\n  interval: 1h\n",
    )
    .unwrap();
    assert!(
        ChildServer::try_start(&manifests, &data, &[])
            .await
            .is_none(),
        "refused"
    );
    let logs = logs_in(dir.path());
    assert!(
        logs.contains("Heartbeat daily-backup: a monitor of that name was created through the management API (Application shop)"),
        "{logs}"
    );
    // Without the manifest it starts, and the monitor is as it was.
    std::fs::remove_file(manifests.join("hb.yaml")).unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/v1/heartbeats", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["heartbeats"][0]["id"], created["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_is_told_why_it_cannot_start() {
    if !crate::helpers::runs_on_sled(
        "the lock of a sled directory: on PostgreSQL two servers are replicas",
    ) {
        return;
    }
    let (dir, data, _server) = shop().await;
    let manifests = dir.path().join("manifests");
    assert!(
        ChildServer::try_start(&manifests, &data, &[])
            .await
            .is_none()
    );
    let logs = logs_in(dir.path());
    assert!(
        logs.contains("is in use by another hartslag process"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_state_filter_on_the_status_gets_422_naming_the_accepted_values() {
    let dir = tempfile::tempdir().unwrap();
    let (manifests, data) = (dir.path().join("manifests"), dir.path().join("data"));
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), app_manifest("shop", "UTC")).unwrap();
    let spec = "  applicationRef:\n    name: shop\n";
    std::fs::write(
        manifests.join("hb.yaml"),
        crate::helpers::heartbeat_manifest("nightly", "1h", "5m", spec),
    )
    .unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let token = read_token(&data, "application", "shop");
    let http = client();
    let status = |query: &str| {
        http.get(format!("{}/v1/status?state={query}", server.base))
            .bearer_auth(&token)
            .send()
    };
    for bad in ["Bogus", "%FF", "down%00", "activ"] {
        let res = status(bad).await.unwrap();
        assert_eq!(res.status(), 422, "{bad}");
        let body: Value = res.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        for accepted in ["New", "Up", "Started", "Late", "Down", "Paused", "failing"] {
            assert!(error.contains(accepted), "{bad}: {body}");
        }
    }
    // Ours in any case, and Tickstem's words, which group ours (spec section 4).
    for (query, found) in [
        ("New", 1),
        ("new", 1),
        ("Down", 0),
        ("active", 1),
        ("failing", 0),
        ("paused", 0),
        ("", 1),
    ] {
        let res = status(query).await.unwrap();
        assert_eq!(res.status(), 200, "{query}");
        let body: Value = res.json().await.unwrap();
        let monitors = body["monitors"].as_array().unwrap();
        assert_eq!(monitors.len(), found, "{query}: {body}");
    }
}
