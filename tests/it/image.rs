//! The daemonless image build (`image/build-oci.sh`, umoci) produces an OCI archive with the
//! expected entrypoint, user, labels and ports, and the binary runs from its root
//! filesystem alone.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn blob(root: &Path, digest: &str) -> Vec<u8> {
    let (algo, hex) = digest.split_once(':').unwrap();
    std::fs::read(root.join("blobs").join(algo).join(hex)).unwrap()
}

#[test]
fn oci_archive_has_entrypoint_user_and_labels() {
    let has_umoci = Command::new("umoci")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        has_umoci,
        "umoci is missing: apt-get install umoci (tests/run-all.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hartslag-oci.tar");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/image/build-oci.sh"))
        .arg(&archive)
        .env("BINARY", env!("CARGO_BIN_EXE_hartslag"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let layout = dir.path().join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout)
            .status()
            .unwrap()
            .success()
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert!(
        tags.contains(&"hartslag") && tags.contains(&env!("CARGO_PKG_VERSION")),
        "{tags:?}"
    );
    let manifest: Value = serde_json::from_slice(&blob(
        &layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let config: Value = serde_json::from_slice(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/hartslag"])
    );
    assert_eq!(c["Cmd"], serde_json::json!(["operator"]));
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["WorkingDir"], "/data");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object(), "{c}");
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], "hartslag");
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // The root filesystem alone runs the binary (its C runtime is in the image).
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let (algo, hex) = layer["digest"].as_str().unwrap().split_once(':').unwrap();
        let path = layout.join("blobs").join(algo).join(hex);
        assert!(
            Command::new("tar")
                .arg("-xzf")
                .arg(&path)
                .arg("-C")
                .arg(&rootfs)
                .status()
                .unwrap()
                .success()
        );
    }
    assert!(rootfs.join("usr/local/bin/hartslag").exists());
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").exists());
    let run = Command::new("chroot")
        .arg(&rootfs)
        .args(["/usr/local/bin/hartslag", "--version"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the image's binary does not run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains(env!("CARGO_PKG_VERSION")));
}
