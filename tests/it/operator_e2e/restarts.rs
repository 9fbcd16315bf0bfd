//! Restarts, a second instance and a second installation: a restart with nothing changed
//! writes nothing, what vanished during downtime stops answering, a second instance waits
//! for the Lease, and overlapping installations are detected with a condition.

use std::time::Duration;

use super::harness::{
    Install, Operator, SERIAL, hb_status, kubectl, prepare, requests, secret_value, status_writes,
    teardown,
};
use crate::helpers::{SmtpSink, free_port, wait_for};
use hartslag::k8s::crd::Heartbeat;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

async fn create(hbs: &Api<Heartbeat>, name: &str) {
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": name}, "spec": {"interval": "1h"}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
}

async fn ping_url(secrets: &Api<Secret>, hb: &str) -> String {
    let name = format!("{hb}-heartbeat");
    wait_for("a ping URL", Duration::from_secs(30), || {
        secret_value(secrets, &name, "ping-url")
    })
    .await
}

fn ready_all(ns: &str) {
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "heartbeats",
        "--all",
        "--timeout=60s",
    ]);
}

fn transition_times(status: &Value) -> Vec<(String, String)> {
    status["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["type"].as_str().unwrap_or_default().to_string(),
                        c["lastTransitionTime"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_restart_with_nothing_changed_writes_nothing_and_vanished_monitors_stop_answering() {
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-restart").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&ns, &[&ns]);
    let data = dir.path().join("data");
    let port = free_port();
    let op = Operator::start(&install, &data, &sink.url(), port).await;
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in ["up", "new", "doomed"] {
        create(&hbs, name).await;
    }
    ready_all(&ns);
    let up_url = ping_url(&secrets, "up").await;
    let doomed_url = ping_url(&secrets, "doomed").await;
    for url in [&up_url, &doomed_url] {
        assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
    }
    wait_for("up and doomed Up", Duration::from_secs(30), || async {
        let a = hb_status(&hbs, "up").await?;
        let b = hb_status(&hbs, "doomed").await?;
        (a["state"] == "Up" && b["state"] == "Up").then_some(())
    })
    .await;
    let before: Vec<Value> = futures::future::join_all(
        ["up", "new"].map(|n| async { hb_status(&hbs, n).await.unwrap() }),
    )
    .await;

    // Down for a while: a Heartbeat is deleted (no finalizer holds it), so the operator
    // never hears of it.
    assert!(op.terminate(), "the operator exits cleanly on SIGTERM");
    kubectl(&["delete", "heartbeat", "doomed", "-n", &ns, "--wait=false"]);
    wait_for("doomed to be gone", Duration::from_secs(30), || async {
        hbs.get_opt("doomed").await.ok()?.is_none().then_some(())
    })
    .await;

    let restarted = jiff::Timestamp::now();
    let op = Operator::start(&install, &data, &sink.url(), port).await;
    // On PostgreSQL a replica is ready at once; the leader sweeps once settled.
    op.wait_settled().await;
    // Ready means orphans are gone: its ping URL no longer answers.
    assert_eq!(reqwest::get(&doomed_url).await.unwrap().status(), 404);
    assert_eq!(
        reqwest::get(format!("{}/readyz", op.base))
            .await
            .unwrap()
            .status(),
        200
    );
    // Give every reconcile and a few status sweeps (--status-period 1s) time to write.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent = requests(&install.user, restarted);
    let writes = status_writes(&sent);
    assert!(
        writes.is_empty(),
        "a restart with nothing changed wrote status: {writes:#?}"
    );
    let other: Vec<_> = sent
        .iter()
        .filter(|r| r.resource != "leases" && !["get", "list", "watch"].contains(&r.verb.as_str()))
        .collect();
    assert!(
        other.is_empty(),
        "a restart with nothing changed wrote: {other:#?}"
    );
    for (name, was) in ["up", "new"].iter().zip(&before) {
        let now = hb_status(&hbs, name).await.unwrap();
        assert_eq!(
            transition_times(&now),
            transition_times(was),
            "{name}: lastTransitionTime moved"
        );
        assert_eq!(now, *was, "{name}: status changed");
    }
    assert_eq!(reqwest::get(&up_url).await.unwrap().status(), 200);
    drop(op);
    teardown(&ns);
}

/// The finalizer earlier versions put on Heartbeats and Applications.
const LEGACY_FINALIZER: &str = "hartslag.dev/cleanup";

async fn create_with(hbs: &Api<Heartbeat>, name: &str, spec: &Value, finalizers: &[&str]) {
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": name, "finalizers": finalizers}, "spec": spec
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
}

/// Waits until `url` answers `code`.
async fn answers(url: &str, code: u16) {
    wait_for(
        &format!("{url} to answer {code}"),
        Duration::from_secs(20),
        || async { (reqwest::get(url).await.ok()?.status() == code).then_some(()) },
    )
    .await;
}

/// Pings `names` (each once) and waits until they are Up; returns their ping URLs.
async fn ping_up(hbs: &Api<Heartbeat>, secrets: &Api<Secret>, names: &[&str]) -> Vec<String> {
    let mut urls = Vec::new();
    for name in names {
        let url = ping_url(secrets, name).await;
        answers(&url, 200).await;
        wait_for(&format!("{name} Up"), Duration::from_secs(30), || async {
            (hb_status(hbs, name).await?["state"] == "Up").then_some(())
        })
        .await;
        urls.push(url);
    }
    urls
}

/// Re-creates `kept` (Retain) and `purged` (Delete) after their deletion: `kept` picks up
/// its state and last ping, `purged` starts afresh.
async fn recreate_and_check(
    hbs: &Api<Heartbeat>,
    ns: &str,
    kept: &Value,
    purged: &Value,
    when: &str,
) {
    create_with(hbs, "kept", kept, &[]).await;
    create_with(hbs, "purged", purged, &[]).await;
    ready_all(ns);
    let k = hb_status(hbs, "kept").await.unwrap();
    assert!(
        k["state"] == "Up" && k["lastPingAt"].is_string(),
        "{when}: Retain lost the monitor's state: {k}"
    );
    let p = hb_status(hbs, "purged").await.unwrap();
    assert!(
        p["state"] != "Up" && p["lastPingAt"].is_null(),
        "{when}: Delete kept the monitor's state: {p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn deletions_keep_to_their_policy_running_or_down_and_the_old_finalizer_is_taken_off() {
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-delete").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&ns, &[&ns]);
    let data = dir.path().join("data");
    let port = free_port();
    let op = Operator::start(&install, &data, &sink.url(), port).await;
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let kept = json!({"interval": "1h", "deletionPolicy": "Retain"});
    let purged = json!({"interval": "1h", "deletionPolicy": "Delete"});

    // A Heartbeat that still carries an earlier version's finalizer loses it, in one
    // patch; the others get none.
    let since = jiff::Timestamp::now();
    create_with(
        &hbs,
        "held",
        &json!({"interval": "1h"}),
        &[LEGACY_FINALIZER],
    )
    .await;
    create_with(&hbs, "kept", &kept, &[]).await;
    create_with(&hbs, "purged", &purged, &[]).await;
    ready_all(&ns);
    wait_for(
        "the old finalizer taken off",
        Duration::from_secs(20),
        || async {
            let hb = hbs.get_opt("held").await.ok()??;
            hb.metadata
                .finalizers
                .unwrap_or_default()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let patches: Vec<_> = requests(&install.user, since)
        .into_iter()
        .filter(|r| r.resource == "heartbeats" && r.subresource.is_empty() && r.verb == "patch")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert!(patches[0].uri.contains("/heartbeats/held"), "{patches:#?}");

    // Deleted while the operator runs: the tokens stop working; Retain keeps the state
    // for a resource of the same name, Delete does not.
    let urls = ping_up(&hbs, &secrets, &["kept", "purged"]).await;
    for name in ["kept", "purged"] {
        kubectl(&["delete", "heartbeat", name, "-n", &ns]);
    }
    for url in &urls {
        answers(url, 404).await;
    }
    recreate_and_check(&hbs, &ns, &kept, &purged, "running").await;

    // Deleted while the operator is down: the same. `held` gets the old finalizer back,
    // as if an earlier version were still running, and waits in its deletion for it.
    let urls = ping_up(&hbs, &secrets, &["kept", "purged", "held"]).await;
    assert!(op.terminate(), "the operator exits cleanly on SIGTERM");
    kubectl(&[
        "patch",
        "heartbeat",
        "held",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        &json!({"metadata": {"finalizers": [LEGACY_FINALIZER]}}).to_string(),
    ]);
    for name in ["kept", "purged", "held"] {
        kubectl(&["delete", "heartbeat", name, "-n", &ns, "--wait=false"]);
    }
    wait_for("kept and purged gone", Duration::from_secs(30), || async {
        let k = hbs.get_opt("kept").await.ok()?;
        let p = hbs.get_opt("purged").await.ok()?;
        (k.is_none() && p.is_none()).then_some(())
    })
    .await;
    let held = hbs
        .get_opt("held")
        .await
        .unwrap()
        .expect("held waits for its finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    let op = Operator::start(&install, &data, &sink.url(), port).await;
    for url in &urls {
        answers(url, 404).await;
    }
    wait_for("held let go and gone", Duration::from_secs(20), || async {
        hbs.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await;
    recreate_and_check(&hbs, &ns, &kept, &purged, "down").await;
    drop(op);
    teardown(&ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_second_instance_waits_while_the_lease_is_held_and_takes_over_on_release() {
    if !crate::helpers::runs_on_sled(
        "with a database every replica serves and is ready while one leads; \
         operator_e2e::failover takes the Lease over on PostgreSQL",
    ) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-lease").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&ns, &[&ns]);
    let first = Operator::start(&install, &dir.path().join("one"), &sink.url(), free_port()).await;
    let mut second = Operator::spawn(
        &install,
        &dir.path().join("two"),
        &sink.url(),
        free_port(),
        &[],
    );
    // Longer than the Lease's 15 s: the holder renews, so the second never takes over.
    let waited = tokio::time::Instant::now();
    while waited.elapsed() < Duration::from_secs(25) {
        assert!(
            !second.ready().await,
            "a second instance started while the Lease was held"
        );
        assert!(
            second.running(),
            "the second instance gave up instead of waiting"
        );
        assert!(first.ready().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(log.contains("another instance holds the Lease"), "{log}");
    // Its port answers meanwhile: 503 with Retry-After, saying what it waits for.
    let waiting = reqwest::get(format!("{}/v1/heartbeats/some-token/ping", second.base))
        .await
        .unwrap();
    assert_eq!(waiting.status(), 503);
    assert_eq!(waiting.headers()["retry-after"], "5");
    assert!(waiting.text().await.unwrap().contains("Lease"));
    // Only the holder reconciles: the ping URL points at it.
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create(&hbs, "job").await;
    let url = ping_url(&secrets, "job").await;
    assert!(url.starts_with(&first.base), "{url}");
    // A clean stop releases the Lease: the second takes over at once, not after expiry.
    let stopped = tokio::time::Instant::now();
    assert!(first.terminate());
    second.wait_ready(Duration::from_secs(30)).await;
    let gap = stopped.elapsed();
    assert!(
        gap < Duration::from_secs(12),
        "took {gap:?} to take over a released Lease"
    );
    let lease: Value = serde_json::from_str(&kubectl(&[
        "get",
        "lease",
        &install.fullname,
        "-n",
        &ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1);
    drop(second);
    teardown(&ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn overlapping_installations_are_detected_and_only_the_older_reconciles() {
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-overlap").await;
    let (_, other_ns) = prepare("e2e-overlap-b").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let older = Install::new(&ns, &[&ns]);
    let op = Operator::start(&older, &dir.path().join("a"), &sink.url(), free_port()).await;
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create(&hbs, "shared").await;
    ready_all(&ns);
    let url = ping_url(&secrets, "shared").await;

    // A second release, installed in another namespace, also watches ours.
    let newer = Install::new(&other_ns, &[&ns]);
    let since = jiff::Timestamp::now();
    let op2 = Operator::start(&newer, &dir.path().join("b"), &sink.url(), free_port()).await;
    let lease = format!("{other_ns}/{}", newer.fullname);
    let note = wait_for(
        "an OperatorConflict condition",
        Duration::from_secs(60),
        || async {
            let st = hb_status(&hbs, "shared").await?;
            let c = st["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "OperatorConflict")?
                .clone();
            (c["status"] == "True").then_some(c["message"].as_str()?.to_string())
        },
    )
    .await;
    assert!(note.contains(&lease), "{note}");
    // Its admin Secret lives outside the watched namespace: issued through the Role that
    // allows only that one Secret by name (list and watch with a field selector).
    let other_secrets: Api<Secret> = Api::namespaced(client.clone(), &other_ns);
    let admin = newer.admin_secret();
    wait_for(
        "the newer installation's admin Secret",
        Duration::from_secs(30),
        || secret_value(&other_secrets, &admin, "token"),
    )
    .await;
    // The newer one leaves the namespace alone: no writes, and no monitor of its own.
    create(&hbs, "later").await;
    ready_all(&ns);
    let token = url.rsplit('/').nth(1).unwrap();
    let elsewhere = format!("{}/v1/heartbeats/{token}/ping", op2.base);
    assert_eq!(reqwest::get(&elsewhere).await.unwrap().status(), 404);
    let writes: Vec<_> = requests(&newer.user, since)
        .into_iter()
        .filter(|r| r.resource != "leases" && !["get", "list", "watch"].contains(&r.verb.as_str()))
        .collect();
    assert!(
        writes
            .iter()
            .all(|r| r.resource == "secrets" && r.uri.contains(&other_ns)),
        "the newer installation wrote in the shared namespace: {writes:#?}"
    );
    assert_eq!(
        secret_value(&secrets, "later-heartbeat", "ping-url")
            .await
            .map(|u| u.starts_with(&op.base)),
        Some(true)
    );
    // Uninstalling it (its Lease goes) removes the condition.
    drop(op2);
    kubectl(&["delete", "lease", &newer.fullname, "-n", &other_ns]);
    wait_for(
        "the OperatorConflict condition to go",
        Duration::from_secs(90),
        || async {
            let st = hb_status(&hbs, "shared").await?;
            st["conditions"]
                .as_array()?
                .iter()
                .all(|c| c["type"] != "OperatorConflict")
                .then_some(())
        },
    )
    .await;
    drop(op);
    teardown(&ns);
    teardown(&other_ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn readiness_waits_for_the_watch_caches() {
    if !crate::helpers::runs_on_sled(
        "with a database a replica is ready at once, as a follower, and serves from the \
         database; only its leadership waits for the watch caches",
    ) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-ready").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&ns, &[&ns]);
    // Take away listing Heartbeats: the Lease and the database are fine, the cache is not.
    let role = install.fullname.clone();
    let rules: Value =
        serde_json::from_str(&kubectl(&["get", "role", &role, "-n", &ns, "-o", "json"])).unwrap();
    let mut narrowed = rules["rules"].clone();
    for r in narrowed.as_array_mut().unwrap() {
        if r["resources"] == json!(["heartbeats"]) {
            r["verbs"] = json!(["patch", "create", "delete"]);
        }
    }
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), &ns);
    let patch = |rules: &Value| kube::api::Patch::Merge(json!({ "rules": rules }));
    roles
        .patch(&role, &kube::api::PatchParams::default(), &patch(&narrowed))
        .await
        .unwrap();
    let op = Operator::spawn(
        &install,
        &dir.path().join("data"),
        &sink.url(),
        free_port(),
        &[],
    );
    wait_for(
        "the database to be open",
        Duration::from_secs(60),
        || async {
            let r = reqwest::get(format!("{}/healthz", op.base)).await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        assert!(
            !op.ready().await,
            "ready before its Heartbeat cache was complete"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    roles
        .patch(
            &role,
            &kube::api::PatchParams::default(),
            &patch(&rules["rules"]),
        )
        .await
        .unwrap();
    op.wait_ready(Duration::from_secs(90)).await;
    drop(op);
    teardown(&ns);
}
