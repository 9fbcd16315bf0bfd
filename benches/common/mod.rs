//! Shared by the benchmarks: settings read from the environment, the disk's own flush
//! latency, and where the CPU time of a run went (per thread, from the scheduler's own
//! accounting). Each benchmark uses a part of it.
#![allow(dead_code)]

pub mod loadgen;
pub mod server;

#[path = "../../tests/it/pg.rs"]
pub mod pg;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hartslag::core::store::latency::{LatencyRecord, LatencySnapshot};

/// The number in environment variable `name`, or `default` when it is unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Microseconds of a duration, for printing.
pub fn us(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// The disk's own flush latency, measured apart from the server: `samples` times a 4 KiB
/// write over existing zeroed blocks of a file in `dir` followed by `fdatasync`, the
/// same kind of I/O as a commit-log group. Taken between rounds, so a reader can tell a
/// slow disk from a slow server.
pub fn flush_probe(dir: &Path, samples: usize) -> LatencySnapshot {
    let path = dir.join("flush-probe");
    let record = LatencyRecord::default();
    let run = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        if f.metadata()?.len() < 1 << 20 {
            f.write_all(&vec![0u8; 1 << 20])?;
            f.sync_all()?;
        }
        let block = [0x5au8; 4096];
        for i in 0..samples {
            f.write_all_at(&block, ((i % 256) * 4096) as u64)?;
            let t = Instant::now();
            f.sync_data()?;
            record.observe(t.elapsed());
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("flush probe in {}: {e}", dir.display());
    }
    record.snapshot()
}

/// `p50 … µs, p99 … µs` of a set of flush latencies.
pub fn describe_flushes(s: &LatencySnapshot) -> String {
    format!(
        "p50 {:.0} µs, p99 {:.0} µs",
        us(s.quantile(0.5)),
        us(s.quantile(0.99))
    )
}

/// CPU time (run and run-queue wait, from `/proc/<pid>/task/*/schedstat`) of every thread
/// of a process, by thread id, with its name and how many times it went to sleep to wait
/// for something (`voluntary_ctxt_switches`: each is a switch of threads there and another
/// when it is woken). Preemptions are left out: they follow the host's load, the sleeps
/// follow the design.
#[derive(Debug, Clone, Default)]
pub struct Threads {
    by_tid: BTreeMap<u32, (String, u64, u64, u64)>,
}

impl Threads {
    /// The threads of process `pid` now (`"self"` for this one).
    pub fn of(pid: &str) -> Self {
        let mut by_tid = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Self::default();
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
            let mut f = stat
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let slices = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            by_tid.insert(tid, (name.trim().to_string(), run, wait, slices));
        }
        Self { by_tid }
    }

    /// Run and wait time per thread kind (name without trailing digits) since `earlier`.
    pub fn since(&self, earlier: &Threads) -> Cpu {
        let mut kinds: BTreeMap<String, (Duration, Duration)> = BTreeMap::new();
        let mut switches: BTreeMap<String, u64> = BTreeMap::new();
        for (tid, (name, run, wait, slices)) in &self.by_tid {
            let (run0, wait0, slices0) = earlier
                .by_tid
                .get(tid)
                .map_or((0, 0, 0), |(_, r, w, s)| (*r, *w, *s));
            let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
            let e = kinds.entry(kind.to_string()).or_default();
            e.0 += Duration::from_nanos(run.saturating_sub(run0));
            e.1 += Duration::from_nanos(wait.saturating_sub(wait0));
            *switches.entry(kind.to_string()).or_default() += slices.saturating_sub(slices0);
        }
        Cpu { kinds, switches }
    }

    /// CPU time of all threads together.
    pub fn total_run(&self) -> Duration {
        Duration::from_nanos(self.by_tid.values().map(|(_, r, _, _)| r).sum())
    }
}

/// CPU time spent per thread kind over an interval: (running, waiting for a CPU); and how
/// many times the threads of each kind went to sleep to wait.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pub kinds: BTreeMap<String, (Duration, Duration)>,
    pub switches: BTreeMap<String, u64>,
}

impl Cpu {
    /// Total running time.
    pub fn run(&self) -> Duration {
        self.kinds.values().map(|(r, _)| *r).sum()
    }

    /// Running time of the thread kinds whose name starts with `prefix`.
    pub fn run_of(&self, prefix: &str) -> Duration {
        self.kinds
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, (r, _))| *r)
            .sum()
    }

    /// Run-queue wait of the thread kinds whose name starts with `prefix`.
    pub fn wait_of(&self, prefix: &str) -> Duration {
        self.kinds
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, (_, w))| *w)
            .sum()
    }

    /// Times the threads went to sleep to wait, in all.
    pub fn switches(&self) -> u64 {
        self.switches.values().sum()
    }

    /// `kind n` sleeps per `per` units, every kind that slept, most first.
    pub fn switches_per(&self, per: f64) -> String {
        let mut kinds: Vec<_> = self.switches.iter().filter(|(_, n)| **n > 0).collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(*k.1));
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {:.2}", **n as f64 / per))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `kind run µs (wait µs)` per `per` units, every kind that ran, busiest first.
    pub fn per(&self, per: f64) -> String {
        let mut kinds: Vec<_> = self
            .kinds
            .iter()
            .filter(|(_, (r, _))| !r.is_zero())
            .collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1.0));
        kinds
            .iter()
            .map(|(k, (r, w))| {
                format!(
                    "{k} {:.1} (wait {:.1})",
                    r.as_secs_f64() * 1e6 / per,
                    w.as_secs_f64() * 1e6 / per
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The cores this process may run on (one when that cannot be read).
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The machine's CPU time by state, from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    busy: u64,
    idle: u64,
    iowait: u64,
}

impl Machine {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        Self {
            busy: get(0) + get(1) + get(2) + get(5) + get(6) + get(7),
            idle: get(3),
            iowait: get(4),
        }
    }

    /// Share of the machine's CPU time since `earlier` that was idle and in iowait.
    pub fn idle_since(&self, earlier: &Machine) -> (f64, f64) {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let iowait = self.iowait.saturating_sub(earlier.iowait) as f64;
        let total = (busy + idle + iowait).max(1.0);
        (idle / total, iowait / total)
    }
}

/// The 1-minute load average, to print with the figures (others' work on a shared machine
/// moves them).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Median of some numbers (NaN if none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS`), 0 when it is gone.
pub fn process_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU time (user and system) process `pid` used so far; zero when it is gone.
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    ticks_to_duration(ticks(11) + ticks(12))
}

/// CPU time used so far by every process whose command name is `comm` (a database
/// server's backends, say), the ones that ended before the call excepted.
pub fn command_cpu(comm: &str) -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .map(process_cpu)
        .sum()
}

/// Clock ticks of `/proc` as time (the kernel's USER_HZ is 100 on Linux).
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}
