//! The example manifests directory must load, so the README's first command works.

use std::path::Path;

#[test]
fn standalone_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standalone");
    let m = hartslag::standalone::manifests::load_dir(&dir, hartslag::spec::MIN_INTERVAL).unwrap();
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
