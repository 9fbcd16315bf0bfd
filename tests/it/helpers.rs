//! Shared helpers for the integration tests: servers on real sockets over real sled
//! directories (or, with `HARTSLAG_TEST_BACKEND=postgres`, databases of a real
//! PostgreSQL), either in-process or as a child process that a test can kill.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hartslag::config::ServerConfig;
use hartslag::core::Services;
use hartslag::server::Server;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// With `HARTSLAG_TEST_BACKEND=postgres`, the servers these helpers start keep their data
/// in PostgreSQL (a database of the shared test server per data directory, so a restart on
/// the same directory finds it) instead of their sled directory: the end-to-end tests of
/// the engine and the APIs run on either backend unchanged.
pub fn test_database(data: &Path) -> Option<String> {
    let backend = std::env::var("HARTSLAG_TEST_BACKEND").ok()?;
    (backend == "postgres").then(|| crate::pg::database_for(data))
}

/// Whether the suite runs on PostgreSQL (`HARTSLAG_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("HARTSLAG_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The flags that put a `hartslag` process started by hand on the test backend for data
/// directory `data`: `--database-url=...` on PostgreSQL, none on sled.
pub fn backend_args(data: &Path) -> Vec<String> {
    test_database(data)
        .map(|url| vec![format!("--database-url={url}")])
        .unwrap_or_default()
}

/// For a test (or the part of one) about sled itself, its directory or its file system:
/// true on sled; on PostgreSQL false, after saying what is skipped and why.
pub fn runs_on_sled(why: &str) -> bool {
    if on_postgres() {
        eprintln!("on PostgreSQL, skipped: {why}");
        return false;
    }
    true
}

/// An Application manifest with a time zone.
pub fn app_manifest(name: &str, tz: &str) -> String {
    format!(
        "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  timeZone: {tz}\n"
    )
}

/// A server running inside the test process on a loopback port.
pub struct InProcess {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Data directory.
    pub data: PathBuf,
    /// The core's services, for white-box assertions.
    pub core: Services,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl InProcess {
    /// Starts a server on the given manifests (file name, contents).
    pub async fn start(files: &[(&str, String)]) -> Self {
        Self::start_with(files, |_| {}).await
    }

    /// Starts a server after letting `tweak` adjust the configuration.
    pub async fn start_with(
        files: &[(&str, String)],
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&manifests).unwrap();
        for (name, text) in files {
            std::fs::write(manifests.join(name), text).unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServerConfig::new(addr, data.clone());
        // Test receivers listen on loopback.
        config.webhooks.allow_all = true;
        config.database_url = test_database(&data).map(|url| url.parse().unwrap());
        tweak(&mut config);
        let mut server = Server::open(config).await.unwrap();
        hartslag::standalone::apply_manifests(&mut server, &manifests)
            .await
            .unwrap();
        let core = server.core.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            data,
            core,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// The issued token of an application.
    pub fn app_token(&self, name: &str) -> String {
        read_token(&self.data, "application", name)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Reads `<data>/tokens/<kind>-<name>.token`.
pub fn read_token(data: &Path, kind: &str, name: &str) -> String {
    std::fs::read_to_string(data.join("tokens").join(format!("{kind}-{name}.token")))
        .unwrap()
        .trim()
        .to_string()
}

/// A webhook receiver on a loopback port: its URL (ending in `path`) and the JSON bodies it
/// was sent, in order.
pub async fn webhook_sink(
    path: &str,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        path,
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, received)
}

/// A free loopback port (bound and released; the race is acceptable for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `hartslag` binary the tests start: the one built for them, or the one
/// `HARTSLAG_TEST_BINARY` names (an earlier build, to see a test fail without its fix).
pub fn binary() -> PathBuf {
    std::env::var_os("HARTSLAG_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hartslag")))
}

/// A `hartslag standalone` child process.
pub struct ChildServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The process.
    pub child: Child,
    /// Where its output (stdout and stderr) goes.
    pub log: PathBuf,
}

impl ChildServer {
    /// Starts `hartslag standalone` with extra args and waits until `/readyz` answers 200.
    pub async fn start(manifests: &Path, data: &Path, extra: &[&str]) -> Self {
        match Self::try_start(manifests, data, extra).await {
            Some(s) => s,
            None => panic!(
                "hartslag standalone exited during startup ({})",
                data.display()
            ),
        }
    }

    /// [`ChildServer::start`], or `None` if the process exits before it is ready (the
    /// data directory still locked by another process, say).
    pub async fn try_start(manifests: &Path, data: &Path, extra: &[&str]) -> Option<Self> {
        // Test receivers listen on loopback.
        let mut args = vec!["--allow-private-webhooks"];
        args.extend_from_slice(extra);
        Self::try_start_exactly(manifests, data, &args).await
    }

    /// Starts `hartslag standalone` with exactly these extra args (without the
    /// `--allow-private-webhooks` the other constructors add).
    pub async fn start_exactly(manifests: &Path, data: &Path, extra: &[&str]) -> Self {
        match Self::try_start_exactly(manifests, data, extra).await {
            Some(s) => s,
            None => panic!(
                "hartslag standalone exited during startup ({})",
                data.display()
            ),
        }
    }

    async fn try_start_exactly(manifests: &Path, data: &Path, extra: &[&str]) -> Option<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log_path = data.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let database = backend_args(data)
            .into_iter()
            .filter(|_| !extra.iter().any(|a| a.starts_with("--database-url")));
        let child = Command::new(binary())
            .arg("standalone")
            .arg("--manifests")
            .arg(manifests)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .args(database)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut server = Self {
            base: format!("http://{addr}"),
            child,
            log: log_path,
        };
        server
            .wait_ready(Duration::from_secs(30))
            .await
            .then_some(server)
    }

    /// Waits for `/readyz`; false if the process exited first.
    async fn wait_ready(&mut self, within: Duration) -> bool {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "server at {} did not become ready:\n{}",
                self.base,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as the kubelet sends it; returns once the process exited, with how long
    /// that took, or `None` if it was still running after `within` (then it is killed).
    pub fn terminate(&mut self, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        while started.elapsed() < within {
            if self.child.try_wait().unwrap().is_some() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no shutdown hooks, no final flush.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's soft open-files limit to at least `want` (up to the hard limit;
/// child processes inherit it) and returns the soft limit in force afterwards.
pub fn raise_open_files(want: u64) -> u64 {
    let read = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("Max open files"));
        let mut nums = line
            .into_iter()
            .flat_map(|l| l.split_whitespace().skip(3).take(2))
            .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
        (nums.next().unwrap_or(1024), nums.next().unwrap_or(1024))
    };
    let (soft, hard) = read();
    if soft < want {
        let target = want.min(hard);
        let _ = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={target}:"),
            ])
            .status();
    }
    read().0
}

/// Polls `check` until it returns `Some`, failing the test after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `hartslag standalone` on `manifests` with exactly the `extra` args (on the test
/// backend), expects it to exit with a failure while starting, and returns its output.
pub async fn start_fails(manifests: &Path, data: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(binary())
        .arg("standalone")
        .arg("--manifests")
        .arg(manifests)
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(extra)
        .args(backend_args(data))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Still running: it started. Stopped here, not left behind the test.
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "it started ({status:?}):\n{text}"
    );
    text
}

/// A real SMTP server (Python's aiosmtpd) that stores every message in a maildir.
pub struct SmtpSink {
    /// Port it listens on.
    pub port: u16,
    /// The maildir.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl SmtpSink {
    /// Reserves a port and a maildir without starting the server (to test an outage).
    pub fn reserve(dir: &Path) -> Self {
        let maildir = dir.join("maildir");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        Self {
            port: free_port(),
            dir: maildir,
            child: None,
        }
    }

    /// Starts a server on a new port.
    pub async fn start(dir: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut s = Self::reserve(dir);
        s.run().await;
        s
    }

    /// Starts (or restarts) the server on the reserved port; waits until it accepts.
    pub async fn run(&mut self) {
        let check = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .unwrap();
        assert!(
            check.success(),
            "python3 module aiosmtpd is missing: pip install aiosmtpd (tests/run-all.sh installs it)"
        );
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for(
            "the SMTP server to accept connections",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every received message, with quoted-printable soft breaks and escapes decoded.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) {
                for e in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(e.path()) {
                        out.push(decode_quoted_printable(&text));
                    }
                }
            }
        }
        out
    }

    /// Waits (up to `within`) for mail whose subject contains `needle`; returns all of it.
    pub async fn wait_for_mail(&self, needle: &str, within: Duration) -> Vec<String> {
        wait_for(&format!("an email about {needle:?}"), within, || {
            let mails = self.with_subject(needle);
            async move { (!mails.is_empty()).then_some(mails) }
        })
        .await
    }

    /// Messages whose subject contains `needle`.
    pub fn with_subject(&self, needle: &str) -> Vec<String> {
        self.messages()
            .into_iter()
            .filter(|m| {
                m.lines()
                    .any(|l| l.starts_with("Subject:") && l.contains(needle))
            })
            .collect()
    }
}

/// Undoes quoted-printable encoding (good enough for the tests' ASCII and UTF-8 bodies).
pub fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Heartbeat manifest.
pub fn heartbeat_manifest(name: &str, interval: &str, grace: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: hartslag.dev/v1alpha1\nkind: Heartbeat\nmetadata:\n  name: {name}\nspec:\n  interval: {interval}\n  grace: {grace}\n{extra_spec}"
    )
}

/// The OpenMetrics text of `/metrics`.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample in `text` whose series (name and labels) is `series`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of `series` on the server at `base`; `None` while it cannot be read.
pub async fn metric(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_value(&text, series)
}

/// Waits until the server at `base` has no alert delivery left in its outbox.
pub async fn wait_outbox_empty(base: &str) {
    wait_for("an empty outbox", Duration::from_secs(10), || async move {
        metric(base, "hartslag_alert_deliveries_pending")
            .await
            .filter(|v| *v == 0.0)
    })
    .await;
}

/// The ping URL standalone mode wrote for Heartbeat `name` under `data`.
pub fn ping_url(data: &Path, name: &str) -> String {
    std::fs::read_to_string(data.join("tokens").join(format!("heartbeat-{name}.url")))
        .unwrap()
        .trim()
        .to_string()
}

/// Runs `kubectl` (the `KUBECONFIG` of the environment) and returns its output; fails the
/// test with kubectl's message when it fails.
pub fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads `/v1/status` with the admin token and returns the monitor named `name`.
pub async fn monitor_status(base: &str, admin: &str, name: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/status"))
        .bearer_auth(admin)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["monitors"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// Waits until monitor `name` reports `state`.
pub async fn wait_state(
    base: &str,
    admin: &str,
    name: &str,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    wait_for(&format!("{name} to be {state}"), within, || async move {
        monitor_status(base, admin, name)
            .await
            .filter(|m| m["state"] == state)
    })
    .await
}

/// GETs `url` with a bearer token and returns the JSON body.
pub async fn get_json(url: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// One HTTP/1.1 exchange on `conn`: the status, the lowercased header lines, and whether
/// the server closed the connection after the answer.
pub fn exchange(conn: &mut std::net::TcpStream, request: &str) -> (u16, Vec<String>, bool) {
    use std::io::{Read, Write};
    conn.write_all(request.as_bytes()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before an answer to {request:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<String> = lines.map(str::to_string).collect();
    let length: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "closed in the middle of an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let closed = match conn.read(&mut chunk) {
        Ok(0) => true,
        Ok(_) => panic!("bytes after the answer"),
        Err(_) => false,
    };
    (status, headers, closed)
}

/// Stores `rows` events named `event`, at `at`, for the Application `app` of the manifests
/// in `manifests`, through the ingest writer in process (HTTP would take minutes for
/// many), then closes the store. The server started on `data` afterwards (see
/// [`start_after_fill`]) finds them, and issues the Application's token.
pub fn fill_events(
    manifests: &Path,
    data: &Path,
    app: &str,
    rows: u64,
    event: &str,
    at: jiff::Timestamp,
) {
    fill_events_of(manifests, data, &[app], rows, event, at);
}

/// [`fill_events`] for each of `apps`, in one opening of the store (sled's lock outlives a
/// closed store for a moment, so a second opening right after the first may fail).
pub fn fill_events_of(
    manifests: &Path,
    data: &Path,
    apps: &[&str],
    rows: u64,
    event: &str,
    at: jiff::Timestamp,
) {
    use futures::StreamExt;
    use hartslag::core::metrics::MetricRegistry;
    use hartslag::core::storage::{EventValue, EventWrite};
    let (manifests, data) = (manifests.to_path_buf(), data.to_path_buf());
    let names: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
    let event = event.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let addr = "127.0.0.1:0".parse().unwrap();
            let mut config = ServerConfig::new(addr, data.clone());
            // The server started on this directory later finds the events on either backend.
            config.database_url = test_database(&data).map(|url| url.parse().unwrap());
            let config = config.services();
            let core = Services::open(&config, &mut MetricRegistry::default())
                .await
                .unwrap();
            let defined = hartslag::standalone::manifests::load_dir(
                &manifests,
                hartslag::core::spec::MIN_INTERVAL,
            )
            .unwrap()
            .applications;
            for name in names {
                // The Application as the manifest defines it.
                let spec = defined
                    .iter()
                    .find(|a| a.name == name)
                    .unwrap_or_else(|| panic!("no Application {name} in the manifests"))
                    .spec
                    .clone();
                let tz = jiff::tz::TimeZone::get(spec.time_zone_name()).unwrap();
                let date = hartslag::core::calendar::date_key(
                    hartslag::core::calendar::local_date(at, &tz),
                );
                let token = hartslag::core::token::TokenHash::of(&format!("filled-{name}"));
                let app = core
                    .registry
                    .upsert_application("default", &name, spec, token)
                    .await
                    .unwrap()
                    .num;
                let writes = futures::stream::iter(0..rows).map(|i| {
                    let (events, event) = (core.events.clone(), event.clone());
                    async move {
                        events
                            .write(EventWrite {
                                app,
                                at,
                                date,
                                value: EventValue {
                                    event,
                                    weight: 1 + (i % 3) as i64,
                                    user_id: None,
                                },
                                idempotency: None,
                                name_limit: u32::MAX,
                            })
                            .await
                            .unwrap()
                    }
                });
                writes.buffer_unordered(4096).for_each(|_| async {}).await;
            }
            core.flush().await.unwrap();
        });
        // Dropping the runtime ends the core's tasks; its threads then let go of sled.
        drop(rt);
    })
    .join()
    .unwrap();
}

/// Starts `hartslag standalone` on a data directory [`fill_events`] has just closed: sled's
/// lock is released once the filling core's threads have ended, so it retries until then.
pub async fn start_after_fill(manifests: &Path, data: &Path, extra: &[&str]) -> ChildServer {
    let started = Instant::now();
    loop {
        if let Some(s) = ChildServer::try_start(manifests, data, extra).await {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the server never started on {}",
            data.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
