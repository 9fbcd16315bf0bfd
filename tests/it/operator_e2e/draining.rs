//! An operator on a shared database stops without dropping a client: on SIGTERM it serves
//! on, not ready, for its shutdown delay; deposed (its Lease taken), it answers the
//! requests in flight before it exits.

use std::io::Write;
use std::time::{Duration, Instant};

use super::harness::{Install, Operator, SERIAL, prepare, secret_value, teardown};
use crate::helpers::{SmtpSink, exchange, free_port, wait_for};
use hartslag::k8s::crd::Application;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// One operator on its own PostgreSQL database, leading, with the Application `shop`:
/// the operator and the Application's token.
async fn leading_operator(
    client: &Client,
    install: &Install,
    dir: &std::path::Path,
    sink: &SmtpSink,
    extra: &[&str],
) -> (Operator, String) {
    let url = crate::pg::database_for(dir);
    let mut args = vec!["--database-url", url.as_str()];
    args.extend_from_slice(extra);
    let op = Operator::spawn(install, &dir.join("data"), &sink.url(), free_port(), &args);
    op.wait_settled().await;
    let ns = &install.namespace;
    let apps: Api<Application> = Api::namespaced(client.clone(), ns);
    let app: Application = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "shop"}, "spec": {"timeZone": "UTC"}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token = wait_for("the application's token", Duration::from_secs(30), || {
        secret_value(&secrets, "shop-hartslag-token", "token")
    })
    .await;
    // The Secret is written before the token is taken: it works once Ready says so.
    let stats = format!("{}/api/v1/stats", op.base);
    wait_for("the token to be taken", Duration::from_secs(30), || async {
        let r = reqwest::Client::new()
            .get(&stats)
            .bearer_auth(&token)
            .send();
        r.await.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    (op, token)
}

fn event(token: &str, id: &str) -> String {
    let body = format!(r#"{{"event":"order-{id}"}}"#);
    format!(
        "POST /api/v1/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn an_operator_on_a_database_serves_on_for_its_shutdown_delay_after_sigterm() {
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-drain").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&ns, &[&ns]);
    let delay = Duration::from_secs(4);
    let (mut op, token) = leading_operator(
        &client,
        &install,
        dir.path(),
        &sink,
        &["--shutdown-delay", "4s"],
    )
    .await;
    let addr = op.base.trim_start_matches("http://").to_string();
    let ready = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut kept = std::net::TcpStream::connect(&addr).unwrap();
    let (status, _, closed) = exchange(&mut kept, ready);
    assert!(status == 200 && !closed);

    let signalled = Instant::now();
    op.sigterm();
    // Not ready, and still accepting: a Service that has not yet dropped the pod sends
    // its clients here for a moment longer.
    let deadline = signalled + Duration::from_secs(3);
    loop {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap_or_else(|e| {
            panic!(
                "refused during the shutdown delay ({e}); log: {}",
                op.log.display()
            )
        });
        let close = ready.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
        if exchange(&mut conn, &close).0 == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
    }
    let (status, headers, closed) = exchange(&mut kept, &event(&token, "kept"));
    assert_eq!(status, 201, "{headers:?}");
    assert!(closed && headers.contains(&"connection: close".to_string()));
    assert!(
        signalled.elapsed() < delay,
        "the checks above took longer than the delay, so they proved nothing"
    );
    let code = op.exit_code(Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "log: {}", op.log.display());
    assert!(signalled.elapsed() >= delay, "stopped before the delay");
    teardown(&ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_deposed_operator_answers_the_request_in_flight_before_it_exits() {
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-deposed").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&ns, &[&ns]);
    let (mut op, token) = leading_operator(&client, &install, dir.path(), &sink, &[]).await;
    let addr = op.base.trim_start_matches("http://").to_string();
    // A request whose body is still on its way when the Lease is taken.
    let request = event(&token, "in-flight");
    let (head, rest) = request.split_at(request.len() - 4);
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    held.write_all(head.as_bytes()).unwrap();

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let taken = json!({"spec": {
        "holderIdentity": "another-installation", "renewTime": now, "acquireTime": now,
        "leaseDurationSeconds": 60
    }});
    leases
        .patch(
            &install.fullname,
            &PatchParams::default(),
            &Patch::Merge(&taken),
        )
        .await
        .unwrap();
    wait_for(
        "the operator to learn it lost the Lease",
        Duration::from_secs(30),
        || async {
            let log = std::fs::read_to_string(&op.log).unwrap_or_default();
            log.contains("lost the leadership; answering").then_some(())
        },
    )
    .await;

    let (status, headers, _) = exchange(&mut held, rest);
    assert_eq!(status, 201, "{headers:?}; log: {}", op.log.display());
    let code = op.exit_code(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "log: {}", op.log.display());
    teardown(&ns);
}
