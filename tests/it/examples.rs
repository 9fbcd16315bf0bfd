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

/// `examples/channels/`: one file per kind of channel, each a valid channel for the
/// operator (Secret references), plus a Heartbeat naming channels and the Watchdog setup.
#[test]
fn channel_examples_hold_one_valid_channel_of_each_kind() {
    use hartslag::core::channel::{AlertChannelSpec, Secrets};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/channels");
    let mut kinds = Vec::new();
    for kind in [
        "alertmanager",
        "pagerduty",
        "slack",
        "teams",
        "webhook",
        "email",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{kind}.yaml"))).unwrap();
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert!(
            doc["kind"].as_str().unwrap().ends_with("AlertChannel"),
            "{kind}"
        );
        let spec: AlertChannelSpec = serde_json::from_value(doc["spec"].clone()).unwrap();
        let k = spec.validate(Secrets::Kubernetes).unwrap();
        assert_eq!(k.field(), kind);
        if let Some(t) = spec.webhook.as_ref().and_then(|w| w.template.as_deref()) {
            hartslag::notify::template::BodyTemplate::new(t).unwrap();
        }
        kinds.push(k);
    }
    assert_eq!(kinds.len(), 6);
    let hb = std::fs::read_to_string(dir.join("heartbeat-with-channels.yaml")).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&hb).unwrap();
    let spec: hartslag::core::spec::HeartbeatSpec =
        serde_json::from_value(doc["spec"].clone()).unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.alerts.unwrap().channels.len(), 3);
}
