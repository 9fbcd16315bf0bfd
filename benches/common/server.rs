//! A `hartslag standalone` process for the benchmarks that measure the server as it is
//! deployed, a process of its own (not a server inside the benchmark's runtime, which
//! would share its worker threads with the benchmark's own work).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `hartslag standalone`.
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// From the process's start until `/readyz` answered: its start-up time.
    pub started_in: Duration,
    /// Its data directory.
    pub data: PathBuf,
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl ServerProcess {
    /// Starts the server on `manifests` and `data` (its log goes to `data` + `.log`), with
    /// `args` added, and waits until it is ready. Runs without a tenant ingest limit: the
    /// load generator's connections are one application.
    pub async fn start(manifests: &Path, data: &Path, args: &[&str]) -> Self {
        Self::start_in(None, manifests, data, args).await
    }

    /// [`ServerProcess::start`] run in directory `cwd`, with `data` relative to it when
    /// it is relative: replicas on one machine then name their data directories alike, as
    /// the pods of a Deployment do (what a Heartbeat's ping hint says, say).
    pub async fn start_in(
        cwd: Option<&Path>,
        manifests: &Path,
        data: &Path,
        args: &[&str],
    ) -> Self {
        let port = free_port();
        let given = data;
        let data = cwd.map_or_else(|| data.to_path_buf(), |dir| dir.join(data));
        let data = data.as_path();
        let log = std::fs::File::create(data.with_extension("log")).expect("log file");
        let started = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hartslag"));
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let mut child = command
            .arg("standalone")
            .arg("--manifests")
            .arg(manifests)
            .args(args)
            .env("HARTSLAG_LISTEN", format!("127.0.0.1:{port}"))
            .env("HARTSLAG_DATA", given)
            .env("HARTSLAG_INGEST_RATE", "0")
            .env("HARTSLAG_LOG", "info")
            .env("HARTSLAG_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start hartslag");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            // A server that refused to start (bad manifests, say) ends at once: say why
            // instead of waiting out the deadline.
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "the server exited ({status}) before it was ready:\n{}",
                    tail.join("\n")
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the server did not get ready; see {}",
                data.with_extension("log").display()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self {
            child,
            base,
            started_in: started.elapsed(),
            data: data.to_path_buf(),
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// Its resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        super::process_rss(self.child.id())
    }

    /// Its CPU time so far (user and system).
    pub fn cpu(&self) -> Duration {
        super::process_cpu(self.child.id())
    }

    /// The token of Application `app`, as the server wrote it into its data directory.
    pub fn app_token(&self, app: &str) -> String {
        std::fs::read_to_string(self.data.join(format!("tokens/application-{app}.token")))
            .expect("token")
            .trim()
            .to_string()
    }

    /// Stops it as Kubernetes would (SIGTERM) and waits for it to exit.
    pub fn stop(self) {
        drop(self);
    }

    /// Sends it `signal` (`-KILL`, `-STOP`, `-CONT`), unless it has exited already.
    pub fn signal(&mut self, signal: &str) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(self.child.id().to_string())
                .status();
        }
    }

    /// Its exit code once it has exited, `None` while it runs (or if a signal ended it).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }
}

/// A benchmark that panics still stops its servers: none is left running after it. One
/// that has exited (killed, or stopped by itself) is only reaped: its process id may
/// belong to another process by now.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.signal("-TERM");
        let _ = self.child.wait();
    }
}
