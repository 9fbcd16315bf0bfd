//! Quiet on the API server, counted from the API server's audit log: a new Heartbeat costs
//! the operator two requests, pings cost no Secret request (and a status write only for a
//! state change), and idle Heartbeats cost no request at all beyond the watches, whose
//! number does not grow with the Heartbeats.

use std::time::Duration;

use super::harness::{Scenario, kubectl, requests, secret_value};
use crate::helpers::wait_for;
use hartslag::k8s::crd::Heartbeat;
use kube::api::PostParams;
use serde_json::json;

/// Idle requests per second the operator may send, whatever the number of Heartbeats.
const IDLE_BUDGET: f64 = 0.02;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn pings_cost_no_secret_requests_and_idle_heartbeats_cost_nothing() {
    let started = jiff::Timestamp::now();
    let s = Scenario::start("e2e-quiet").await;
    let (_client, ns, hbs, secrets, _op) = (&s.client, &s.ns, &s.hbs, &s.secrets, &s.op);
    let n = 40;
    let applied = jiff::Timestamp::now();
    for i in 0..n {
        let hb: Heartbeat = serde_json::from_value(json!({
            "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
            "metadata": {"name": format!("hb-{i}")}, "spec": {"interval": "1h"}
        }))
        .unwrap();
        hbs.create(&PostParams::default(), &hb).await.unwrap();
    }
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "heartbeats",
        "--all",
        "--timeout=120s",
    ]);
    // Apply: a new Heartbeat costs the operator two requests, its Secret's create and one
    // status write: no finalizer patch, no read, no Event for its first token.
    let sent = wait_for(
        "the apply in the audit log",
        Duration::from_secs(20),
        || async {
            let sent: Vec<_> = requests(&s.install.user, applied)
                .into_iter()
                .filter(|r| r.resource != "leases" && !["watch", "list"].contains(&r.verb.as_str()))
                .collect();
            let done = |resource: &str, sub: &str, verb: &str| {
                sent.iter()
                    .filter(|r| r.resource == resource && r.subresource == sub && r.verb == verb)
                    .count()
                    >= n
            };
            (done("secrets", "", "create") && done("heartbeats", "status", "patch")).then_some(sent)
        },
    )
    .await;
    assert_eq!(
        sent.len(),
        2 * n,
        "more than two requests per new Heartbeat: {:#?}",
        sent.iter()
            .map(|r| format!("{} {}/{}", r.verb, r.resource, r.subresource))
            .collect::<std::collections::BTreeSet<_>>()
    );
    let mut urls = Vec::new();
    for i in 0..5 {
        let name = format!("hb-{i}-heartbeat");
        urls.push(
            wait_for("a ping URL", Duration::from_secs(30), || {
                secret_value(secrets, &name, "ping-url")
            })
            .await,
        );
    }

    // Pings: five Heartbeats every half second for 15 s.
    let since = jiff::Timestamp::now();
    let start = tokio::time::Instant::now();
    let http = reqwest::Client::new();
    while start.elapsed() < Duration::from_secs(15) {
        for u in &urls {
            assert_eq!(http.get(u).send().await.unwrap().status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = requests(&s.install.user, since);
    let secret_requests: Vec<_> = sent.iter().filter(|r| r.resource == "secrets").collect();
    assert!(
        secret_requests.is_empty(),
        "pings caused Secret requests: {secret_requests:#?}"
    );
    let status: Vec<_> = sent.iter().filter(|r| r.subresource == "status").collect();
    // New → Up once each; the last ping is refreshed only after interval plus grace.
    assert!(
        status.len() <= urls.len(),
        "pings caused {} status writes: {status:#?}",
        status.len()
    );
    let reconciles: Vec<_> = sent
        .iter()
        .filter(|r| r.resource == "heartbeats" && r.subresource.is_empty() && r.verb != "watch")
        .collect();
    assert!(
        reconciles.is_empty(),
        "pings woke the reconciler: {reconciles:#?}"
    );

    // Idle: only watch renewals, each watch at most once in a window shorter than the
    // shortest watch (5 minutes), and no other request.
    let window = Duration::from_secs(240);
    let since = jiff::Timestamp::now();
    tokio::time::sleep(window).await;
    let sent: Vec<_> = requests(&s.install.user, since)
        .into_iter()
        .filter(|r| r.resource != "leases")
        .collect();
    let not_watches: Vec<_> = sent.iter().filter(|r| r.verb != "watch").collect();
    assert!(
        not_watches.is_empty(),
        "idle Heartbeats caused requests: {not_watches:#?}"
    );
    let rate = sent.len() as f64 / window.as_secs_f64();
    assert!(
        rate <= IDLE_BUDGET,
        "{} idle requests in {window:?} ({rate:.4}/s) with {n} Heartbeats: {sent:#?}",
        sent.len()
    );

    // RBAC cannot hold the operator to a selector, so check it holds itself to one: every
    // Secret it listed or watched was selected by the token label, the channel label or by
    // name.
    let admin = format!("fieldSelector=metadata.name%3D{}", s.install.admin_secret());
    let unselected: Vec<_> = requests(&s.install.user, started)
        .into_iter()
        .filter(|r| r.resource == "secrets" && (r.verb == "list" || r.verb == "watch"))
        .filter(|r| {
            !r.uri.contains("labelSelector=hartslag.dev%2Ftoken")
                && !r
                    .uri
                    .contains("labelSelector=hartslag.dev%2Fchannel-secret")
                && !r.uri.contains(&admin)
        })
        .collect();
    assert!(
        unselected.is_empty(),
        "Secrets listed without a selector: {unselected:#?}"
    );
}
