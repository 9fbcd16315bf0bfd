//! `crds/` must hold exactly what `hartslag crd` prints, so the checked-in YAML (and the
//! Helm chart's copy) never drifts from the Rust types.

use std::process::Command;

#[test]
fn checked_in_crds_match_the_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_hartslag"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let on_disk = std::fs::read_to_string(format!("{root}/crds/hartslag.dev.yaml")).unwrap();
    assert!(
        printed == on_disk,
        "crds/hartslag.dev.yaml is stale: run `cargo run -- crd > crds/hartslag.dev.yaml`"
    );
    for needle in [
        "name: applications.hartslag.dev",
        "name: heartbeats.hartslag.dev",
        "- hb",
        "- hsapp",
        "- hartslag",
        "status: {}",
    ] {
        assert!(printed.contains(needle), "missing {needle:?}");
    }
}

#[test]
fn chart_crds_are_the_top_level_ones() {
    let root = env!("CARGO_MANIFEST_DIR");
    let top = std::fs::read_to_string(format!("{root}/crds/hartslag.dev.yaml")).unwrap();
    let chart =
        std::fs::read_to_string(format!("{root}/charts/hartslag/crds/hartslag.dev.yaml")).unwrap();
    assert!(
        top == chart,
        "charts/hartslag/crds/ drifted from crds/: cp crds/hartslag.dev.yaml charts/hartslag/crds/"
    );
}
