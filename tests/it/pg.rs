//! A real PostgreSQL for the tests: Debian's server, run as the unprivileged `postgres`
//! user (the server refuses root) on a free loopback port from a temporary directory.
//!
//! One server is shared by the whole test binary, started on first use; each test gets a
//! database of its own (`CREATE DATABASE`). A test that stops the server gets one of its
//! own ([`PgServer::start`]). Statics are never dropped, so every server is watched by a
//! detached shell that stops it and removes its directory once the test process is gone,
//! however it ended (`kill -9` included); the directory is new on each start, so a stale
//! `postmaster.pid` from an earlier killed run is never in the way.
//!
//! The benchmarks include this file too (`benches/common`), so it names nothing else of
//! the test binary.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// A running server.
pub struct PgServer {
    /// Its data directory (owned by `postgres`), also its socket directory.
    dir: PathBuf,
    /// Its loopback port.
    pub port: u16,
    bin: PathBuf,
    databases: Mutex<HashSet<String>>,
    /// Whether the server flushes its writes (`fsync`): off for tests, on for benchmarks.
    durable: bool,
}

/// Where the server's programs are: the newest `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/N/bin/initdb): \
             apt-get install postgresql (tests/run-all.sh does)"
        ),
    }
}

/// Runs `program` from the server's directory as the `postgres` user; panics with its
/// output if it fails.
fn as_postgres(bin: &Path, program: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} as postgres: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// Initialises and starts a server of the test's own.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that flushes every commit to disk as a production one does, for figures
    /// that include the database's durability (the benchmarks include this file).
    #[allow(dead_code)]
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("hartslag-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let owner = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(owner.success(), "chown of {} failed", dir.display());
        let data = dir.to_string_lossy().into_owned();
        as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        watch(&bin, &dir);
        // A port found free may be taken before the server binds it: try another.
        for _ in 0..5 {
            let port = free_port();
            let server = Self {
                dir: dir.clone(),
                port,
                bin: bin.clone(),
                databases: Mutex::default(),
                durable,
            };
            if server.try_run() {
                return server;
            }
        }
        panic!("PostgreSQL did not start in {}", dir.display());
    }

    /// Starts the server on its port; false if it did not come up.
    fn try_run(&self) -> bool {
        let data = self.dir.to_string_lossy().into_owned();
        // Durability of the server itself is not under test (it is never killed here),
        // hartslag's is: fsync off keeps the suite fast on a shared machine.
        let flush = if self.durable {
            ""
        } else {
            " -c fsync=off -c full_page_writes=off"
        };
        let options = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=400{flush}",
            self.port
        );
        let log = format!("{data}/server.log");
        let status = Command::new("setsid")
            .args(["runuser", "-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        status.success()
    }

    /// Stops the server (fast: open transactions are aborted, connections closed).
    pub fn stop(&self) {
        let data = self.dir.to_string_lossy().into_owned();
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts the stopped server again on the same port.
    pub fn resume(&self) {
        assert!(self.try_run(), "PostgreSQL did not start again");
    }

    /// The URL of `database` (created on first use).
    pub fn database(&self, database: &str) -> String {
        let mut made = self.databases.lock().unwrap();
        if made.insert(database.to_string()) {
            self.psql("postgres", &format!("CREATE DATABASE \"{database}\""));
        }
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` in `database` with psql; its output, unaligned and without headers.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.to_string_lossy().into_owned();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a detached watcher that stops the server in `dir` and removes the directory once
/// this process has exited, whichever way.
fn watch(bin: &Path, dir: &Path) {
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; \
         runuser -u postgres -- '{pg_ctl}' -D '{dir}' -m immediate stop >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        dir = dir.display(),
    );
    // `-f`: setsid forks the watcher off and returns at once.
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "cannot start the PostgreSQL watcher");
}

/// A free loopback port for the server (bound and released, then tried: see
/// [`PgServer::start`]). Not the helpers' own: the benchmarks include this file alone.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The server shared by the test binary, started on first use.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A fresh database on the shared server for `name` (a test's directory, say): the same
/// name gives the same database, so a backend reopened on it finds its data.
pub fn database_for(name: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_os_str().as_encoded_bytes());
    shared().database(&format!("t_{}", hex::encode(&digest[..12])))
}
