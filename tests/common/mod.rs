//! Shared helpers for the integration tests: servers on real sockets over real sled
//! directories, either in-process or as a child process that a test can kill.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hartslag::config::ServerConfig;
use hartslag::server::Core;
use tempfile::TempDir;
use tokio::sync::oneshot;

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
    /// Manifests directory.
    pub manifests: PathBuf,
    /// The core, for white-box assertions.
    pub core: Core,
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
        tweak(&mut config);
        let core = Core::open(config).unwrap();
        hartslag::standalone::apply_manifests(&core, &manifests)
            .await
            .unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let c = core.clone();
        let task = tokio::spawn(async move {
            c.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            data,
            manifests,
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

/// A free loopback port (bound and released; the race is acceptable for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `hartslag` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hartslag"))
}

/// A `hartslag standalone` child process.
pub struct ChildServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The process.
    pub child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts `hartslag standalone` with extra args and waits until `/readyz` answers 200.
    pub async fn start(manifests: &Path, data: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(data.with_extension(format!("{port}.log"))).unwrap();
        let child = Command::new(binary())
            .arg("standalone")
            .arg("--manifests")
            .arg(manifests)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let server = Self {
            base: format!("http://{addr}"),
            child,
            addr,
        };
        server.wait_ready(Duration::from_secs(30)).await;
        server
    }

    async fn wait_ready(&self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server at {} did not become ready",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
