//! A three-million-row export of one instant (a backfill dated `2024-01-01`) streams from a
//! real server process in bounded memory: the export once held every event of the instant
//! in memory, 455 MB for three million, before the first byte of the last row.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{app_manifest, fill_events, read_token, start_after_fill};

/// Events in the export.
const ROWS: u64 = 3_000_000;

/// Most the server may grow over its idle size while exporting them.
const BUDGET_BYTES: u64 = 64 * 1024 * 1024;

/// Stores `ROWS` events of one instant for Application `shop`.
fn fill(manifests: &Path, data: &Path) {
    let at: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
    fill_events(manifests, data, "shop", ROWS, "backfill", at);
}

/// Resident set size of process `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_million_row_export_of_one_instant_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    // Kept for ten years: retention would otherwise delete a backfill of 2024 at start.
    let app = format!("{}  retention: 3650d\n", app_manifest("shop", "UTC"));
    std::fs::write(manifests.join("app.yaml"), app).unwrap();
    let started = Instant::now();
    fill(&manifests, &data);
    eprintln!("stored {ROWS} events in {:?}", started.elapsed());

    let server = start_after_fill(&manifests, &data, &[]).await;
    let token = read_token(&data, "application", "shop");
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let get = |q: &str| {
        http.get(format!("{}/api/v1/export.csv{q}", server.base))
            .bearer_auth(&token)
            .send()
    };
    // Warm up the paths an export takes, on an empty range.
    let warm = get("?from=2024-01-02").await.unwrap().text().await.unwrap();
    assert_eq!(warm.lines().count(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss(pid);

    let peak = Arc::new(AtomicU64::new(idle));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let exported = Instant::now();
    let res = get("").await.unwrap();
    assert_eq!(res.status(), 200);
    let mut res = res;
    let (mut lines, mut first_row, mut last) = (0u64, None::<Duration>, Vec::new());
    while let Some(chunk) = res.chunk().await.unwrap() {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        if lines > 1 && first_row.is_none() {
            first_row = Some(exported.elapsed());
        }
        last = chunk.to_vec();
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let took = exported.elapsed();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(idle);
    eprintln!(
        "exported {} rows in {took:?} (first row after {first_row:?}); idle RSS {} MiB, peak {} MiB, growth {} MiB",
        lines - 1,
        idle >> 20,
        peak.load(Ordering::Relaxed) >> 20,
        growth >> 20
    );
    assert_eq!(lines, ROWS + 1, "header plus one line per event");
    let tail = String::from_utf8_lossy(&last);
    assert!(
        tail.lines()
            .last()
            .unwrap_or_default()
            .starts_with("2024-01-01T00:00:00Z,backfill,"),
        "{tail}"
    );
    assert!(
        growth <= BUDGET_BYTES,
        "the server grew by {} MiB while exporting (budget {} MiB)",
        growth >> 20,
        BUDGET_BYTES >> 20
    );
}
