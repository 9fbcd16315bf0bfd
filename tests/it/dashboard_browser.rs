//! The dashboard in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`). Logs in, watches a monitor go from Up to Down
//! without reloading, opens its history, downloads the CSV, checks phone width and
//! keyboard access, and saves screenshots under `target/screenshots/`.
//!
//! Needs `chromedriver` on PATH (the test command installs it); without it the test
//! fails rather than passing silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{InProcess, heartbeat_manifest, wait_for, wait_state};
use base64::Engine as _;
use hartslag::core::duration::SpecDuration;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver child and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start(downloads: &Path) -> Self {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = crate::helpers::free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {driver_bin} ({e}); install Debian's chromium-driver (bash tests/run-all.sh does)")
            });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_for("chromedriver to answer", Duration::from_secs(20), || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let v: Value = http
                    .get(format!("{base}/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (v["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--lang=en-US"],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false
                }
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Self {
            driver,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn text(&self) -> String {
        self.script("return document.body.innerText;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn html(&self) -> String {
        self.script("return document.documentElement.outerHTML;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    async fn press_tab(&self) {
        let key = "\u{E004}";
        self.call(
            reqwest::Method::POST,
            "/actions",
            Some(
                json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                    {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}
                ]}]}),
            ),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::process::Command::new("curl")
            .args(["-s", "-X", "DELETE", &url])
            .stdout(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_live_down_history_and_csv() {
    let files = vec![
        (
            "apps.yaml",
            "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: webshop\nspec:\n  displayName: Web shop\n  timeZone: Europe/Amsterdam\n".to_string(),
        ),
        (
            "hbs.yaml",
            [
                heartbeat_manifest("nightly-backup", "1h", "10m", "  displayName: Nightly backup\n  applicationRef:\n    name: webshop\n"),
                heartbeat_manifest("invoice-run", "3s", "0s", "  displayName: Invoice run\n  applicationRef:\n    name: webshop\n"),
                heartbeat_manifest("cache-warmer", "15m", "5m", "  applicationRef:\n    name: webshop\n"),
            ]
            .join("---\n"),
        ),
    ];
    let s = InProcess::start_with(&files, |c| c.min_interval = SpecDuration::from_secs(1)).await;
    let admin = std::fs::read_to_string(s.data.join("tokens/admin.token")).unwrap();
    let admin = admin.trim();
    let shop = s.app_token("webshop");
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now();
    for i in 0..120i64 {
        let at = now - jiff::SignedDuration::from_mins(i * 37);
        let event = ["checkout", "signup", "search"][(i % 3) as usize];
        let res = http
            .post(format!("{}/api/v1/heartbeat", s.base))
            .bearer_auth(&shop)
            .json(&json!({"event": event, "weight": i % 5 + 1, "user_id": i % 7, "created_at": at.to_string()}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let url = |name: &str| {
        std::fs::read_to_string(s.data.join(format!("tokens/heartbeat-{name}.url")))
            .unwrap()
            .trim()
            .to_string()
    };
    for name in ["nightly-backup", "cache-warmer"] {
        let u = url(name);
        http.get(u.replace("/ping", "/start")).send().await.unwrap();
        http.post(&u)
            .body(format!("{name} finished\nall good"))
            .send()
            .await
            .unwrap();
    }

    let downloads = tempfile::tempdir().unwrap();
    let b = Browser::start(downloads.path()).await;

    // Not logged in: the login form, then the page asked for.
    b.goto(&format!("{}/ui/monitors", s.base)).await;
    assert!(b.url().await.contains("/ui/login"), "redirected to login");
    b.screenshot("login").await;
    b.type_into("#token", admin).await;
    b.click("form button[type=submit]").await;
    wait_for(
        "the monitors page after login",
        Duration::from_secs(10),
        || async { b.url().await.ends_with("/ui/monitors").then_some(()) },
    )
    .await;
    assert!(!b.html().await.contains(admin), "no token in the page");

    // Up → Down, seen in the open page without a reload.
    http.get(url("invoice-run")).send().await.unwrap();
    wait_state(&s.base, admin, "invoice-run", "Up", Duration::from_secs(5)).await;
    b.goto(&format!("{}/ui/monitors", s.base)).await;
    b.script("window.__sameDocument = 'yes'; return true;")
        .await;
    let row = "return (Array.from(document.querySelectorAll('table.monitors tbody tr')).find(r => r.innerText.includes('Invoice run')) || {}).innerText || '';";
    let up = wait_for("Invoice run shown Up", Duration::from_secs(5), || async {
        let t = b.script(row).await.as_str().unwrap_or_default().to_string();
        t.contains("Up").then_some(t)
    })
    .await;
    assert!(up.contains("Invoice run"));
    b.screenshot("monitors-up").await;
    let down = wait_state(
        &s.base,
        admin,
        "invoice-run",
        "Down",
        Duration::from_secs(10),
    )
    .await;
    let went_down = Instant::now();
    let since = down["since"].as_str().unwrap_or_default().to_string();
    wait_for(
        "Invoice run shown Down without reload",
        Duration::from_secs(2),
        || async {
            let t = b.script(row).await.as_str().unwrap_or_default().to_string();
            t.contains("Down").then_some(())
        },
    )
    .await;
    println!(
        "Down (since {since}) visible in the open page {:?} after the API reported it",
        went_down.elapsed()
    );
    assert_eq!(
        b.script("return window.__sameDocument || 'reloaded';")
            .await,
        "yes",
        "updated in place, not reloaded"
    );
    b.screenshot("monitors").await;

    // Keyboard: the first Tab reaches the skip link.
    b.script("document.activeElement && document.activeElement.blur(); return true;")
        .await;
    b.press_tab().await;
    let focused = b
        .script(
            "return document.activeElement.className + ' ' + document.activeElement.textContent;",
        )
        .await;
    assert!(
        focused
            .as_str()
            .unwrap_or_default()
            .contains("Skip to content"),
        "{focused}"
    );

    // History of a monitor.
    b.click("a[href='/ui/monitors/default/nightly-backup']")
        .await;
    wait_for("the monitor page", Duration::from_secs(5), || async {
        b.url().await.ends_with("/nightly-backup").then_some(())
    })
    .await;
    let text = b.text().await;
    assert!(
        text.contains("Ping history") && text.contains("nightly-backup finished"),
        "{text}"
    );
    assert!(text.contains("State timeline"));
    b.screenshot("monitor-detail").await;

    // Application page and the CSV download.
    b.goto(&format!(
        "{}/ui/applications/default/webshop?event=checkout",
        s.base
    ))
    .await;
    let text = b.text().await;
    assert!(
        text.contains("Per hour, last 48 hours") && text.contains("Top users"),
        "{text}"
    );
    b.screenshot("application").await;
    b.click("#export").await;
    let csv = wait_for("the CSV download", Duration::from_secs(10), || async {
        let entry = std::fs::read_dir(downloads.path())
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".csv"))?;
        let text = std::fs::read_to_string(entry.path()).ok()?;
        (text.lines().count() > 1).then_some(text)
    })
    .await;
    assert!(csv.starts_with("created_at,event,weight,user_id"));
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 40, "the event filter applies to the download");
    assert!(rows.iter().all(|r| r.split(',').nth(1) == Some("checkout")));

    // Phone width: no sideways scrolling of the page itself.
    b.resize(390, 844).await;
    b.goto(&format!("{}/ui/monitors", s.base)).await;
    let overflow = b
        .script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
        )
        .await;
    assert!(
        overflow.as_i64().unwrap_or(99) <= 0,
        "page wider than a phone: {overflow}"
    );
    b.screenshot("monitors-phone").await;
    b.goto(&format!("{}/ui", s.base)).await;
    b.resize(1280, 900).await;
    b.screenshot("overview").await;
    drop(b);
    s.stop().await;
}
