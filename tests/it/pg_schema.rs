//! The PostgreSQL schema and connection as an operator meets them: migrations run once
//! however often a process starts, a schema newer than the binary is refused with a clear
//! error before anything is written (and a running replica stops writing once it appears),
//! and a URL's password appears in no log line or error.

use hartslag::core::metrics::MetricRegistry;
use hartslag::core::store_pg::{self, DatabaseUrl, PgError};

async fn open(url: &str) -> Result<hartslag::core::storage::Storage, PgError> {
    let url: DatabaseUrl = url.parse().unwrap();
    store_pg::open(&url, &mut MetricRegistry::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let server = crate::pg::shared();
    let url = server.database("schema_newer");
    let storage = open(&url).await.unwrap();
    drop(storage);
    // Started again (several replicas, or a restart): nothing more to apply.
    let storage = open(&url).await.unwrap();
    drop(storage);
    let history =
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM hartslag_schema_history";
    assert_eq!(server.psql("schema_newer", history), shipped().join(","));

    // A later release migrated this database: this binary must not write to it.
    server.psql(
        "schema_newer",
        "INSERT INTO hartslag_schema_history (version, name, applied_on, checksum) \
         VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
    );
    let err = open(&url).await.expect_err("a newer schema was accepted");
    let newest = shipped().pop().unwrap();
    assert!(
        matches!(
            err,
            PgError::Newer { found: 999, known } if known.to_string() == newest
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "version 999, newer than this binary knows ({newest})"
        )),
        "{text}"
    );
}

/// The versions of the migrations in the repository, in order: what a fresh database is
/// brought to.
fn shipped() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut versions: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_prefix('V')?.split("__").next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions.iter().map(u32::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_reach_its_database_stops_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let closed = crate::helpers::free_port();
    let url = format!("postgres://hartslag:sekrit-pw@127.0.0.1:{closed}/events");
    let out = std::process::Command::new(crate::helpers::binary())
        .args(["standalone", "--manifests"])
        .arg(&manifests)
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!log.contains("sekrit-pw"), "the password leaked: {log}");
    assert!(
        log.contains(&format!(
            "postgres://hartslag:***@127.0.0.1:{closed}/events"
        )),
        "{log}"
    );

    // A URL that does not parse is refused without echoing it either.
    let out = std::process::Command::new(crate::helpers::binary())
        .args(["standalone", "--manifests"])
        .arg(&manifests)
        .args([
            "--database-url",
            "postgres://hartslag:sekrit-pw@host:notaport/db",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("sekrit-pw"), "the password leaked: {err}");
    assert!(err.contains("not a PostgreSQL connection URL"), "{err}");
}

/// A database whose server certificate a private CA signed (as CloudNativePG's are): with
/// the system's roots alone the connection is refused for its unknown issuer; with the CA
/// given (`--database-ca-file`, the chart's `database.caSecret`) it is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_for_the_database_once_given() {
    let server = crate::pg::PgServer::start();
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=hartslag-test-ca 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext 2>/dev/null
        chmod 755 .
        chown postgres:postgres server.key server.crt
        chmod 600 server.key");
    let at = |file: &str| dir.join(file).display().to_string();
    for setting in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", at("server.crt")),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", at("server.key")),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        server.psql("postgres", &setting);
    }
    let url = format!("{}?sslmode=require", server.database("tls"));
    let with_ca = |url: &str| -> DatabaseUrl {
        let parsed: DatabaseUrl = url.parse().unwrap();
        parsed.with_ca_file(dir.join("ca.crt"))
    };
    // The server reads its new settings on its own time.
    crate::helpers::wait_for(
        "the server to take TLS connections",
        std::time::Duration::from_secs(20),
        || {
            let url = with_ca(&url);
            async move {
                store_pg::open(&url, &mut MetricRegistry::default())
                    .await
                    .ok()
            }
        },
    )
    .await;
    let refused = open(&url).await.expect_err("an unknown issuer was trusted");
    let text = refused.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
}

/// A release migrated the database while this replica ran: within seconds it refuses to
/// store events (503 naming the schema) and `/healthz` fails with the same reason, so it
/// is restarted into the refused start instead of writing rows the new schema does not
/// expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_replica_refuses_writes_once_the_schema_is_newer() {
    use std::time::Duration;
    let server = crate::pg::shared();
    let url = server.database("schema_newer_running");
    let files = [("app.yaml", crate::helpers::app_manifest("shop", "UTC"))];
    let s = crate::helpers::InProcess::start_with(&files, |config| {
        config.database_url = Some(url.parse().unwrap());
    })
    .await;
    let token = s.app_token("shop");
    let http = reqwest::Client::new();
    let post = || async {
        let res = http
            .post(format!("{}/api/v1/heartbeat", s.base))
            .bearer_auth(&token)
            .json(&serde_json::json!({"event": "signup"}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    assert_eq!(post().await.0, 201);

    server.psql(
        "schema_newer_running",
        "INSERT INTO hartslag_schema_history (version, name, applied_on, checksum) \
         VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
    );
    let newer = "version 999, newer than this binary knows";
    let body =
        crate::helpers::wait_for("ingest to be refused", Duration::from_secs(20), || async {
            let (status, body) = post().await;
            (status != 201).then_some((status, body))
        })
        .await;
    assert_eq!(body.0, 503, "{}", body.1);
    assert!(body.1.contains(newer), "{}", body.1);
    let health = http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let text = health.text().await.unwrap();
    assert!(text.contains(newer), "{text}");
    // Nothing is written once it refused.
    let count = "SELECT count(*) FROM hartslag_events";
    let stored = server.psql("schema_newer_running", count);
    assert_eq!(post().await.0, 503);
    assert_eq!(server.psql("schema_newer_running", count), stored);
    s.stop().await;
}
