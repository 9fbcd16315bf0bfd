//! The examples must keep working: the standalone manifests load (the README's first
//! command), and the Tickstem SDK example runs against them. The Kubernetes examples are
//! applied in `operator_e2e.rs`.

use std::path::Path;

#[test]
fn standalone_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standalone");
    let m = hartslag::standalone::manifests::load_dir(&dir, hartslag::core::spec::MIN_INTERVAL)
        .unwrap();
    assert_eq!(m.applications.len(), 2);
    assert_eq!(m.heartbeats.len(), 3);
    for hb in &m.heartbeats {
        if let Some(r) = &hb.spec.application_ref {
            assert!(
                m.applications.iter().any(|a| a.name == r.name),
                "{} refers to a missing application",
                hb.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickstem_sdk_example_runs_against_the_standalone_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standalone");
    let files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let s = crate::helpers::InProcess::start(&refs).await;
    let key = s.app_token("billing");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tickstem_sdk.py");
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &base, &key])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ping: ok"), "{stdout}");
    assert!(
        stdout.contains("Nightly database backup"),
        "the manifest monitors are listed too: {stdout}"
    );
    s.stop().await;
}
