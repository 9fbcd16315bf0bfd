//! Secrets stay where they are put: not in the output, not in answers to API clients.

use crate::helpers::{ChildServer, heartbeat_manifest, read_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_names_the_token_files_but_never_prints_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("app.yaml"),
        crate::helpers::app_manifest("shop", "UTC"),
    )
    .unwrap();
    std::fs::write(
        manifests.join("hb.yaml"),
        heartbeat_manifest("nightly", "1h", "5m", ""),
    )
    .unwrap();
    let server = ChildServer::start(&manifests, &data, &[]).await;
    let output = server.log_text();
    let app = read_token(&data, "application", "shop");
    let admin = std::fs::read_to_string(data.join("tokens").join("admin.token")).unwrap();
    let ping_url = crate::helpers::ping_url(&data, "nightly");
    let ping_token = ping_url
        .strip_suffix("/ping")
        .and_then(|u| u.rsplit('/').next())
        .unwrap();
    for (what, secret) in [
        ("application token", app.trim()),
        ("admin token", admin.trim()),
        ("ping token", ping_token),
    ] {
        assert!(!secret.is_empty());
        assert!(
            !output.contains(secret),
            "the {what} is in the output:\n{output}"
        );
    }
    let app_file = data.join("tokens").join("application-shop.token");
    assert!(
        output.contains(&app_file.display().to_string()),
        "the output says where the application token is:\n{output}"
    );
}
