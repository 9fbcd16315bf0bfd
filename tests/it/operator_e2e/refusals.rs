//! What API clients are told when the API server refuses a change the management API asks
//! for: our words, never the API server's.

use std::time::Duration;

use super::harness::{Scenario, secret_value};
use crate::helpers::{kubectl, wait_for};
use hartslag::k8s::crd::Application;
use kube::api::PostParams;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_namespace_quota_reaches_an_api_client_as_a_quota_not_as_the_api_servers_words() {
    let sc = Scenario::start("e2e-refuse").await;
    let app: Application = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "team"}, "spec": {}
    }))
    .unwrap();
    sc.apps.create(&PostParams::default(), &app).await.unwrap();
    let key = wait_for("the team token", Duration::from_secs(30), || {
        secret_value(&sc.secrets, "team-hartslag-token", "token")
    })
    .await;
    // The cluster's own limit: no Heartbeats in this namespace.
    kubectl(&[
        "create",
        "quota",
        "night-freeze",
        "--hard=count/heartbeats.hartslag.dev=0",
        "-n",
        &sc.ns,
    ]);
    let ns = sc.ns.clone();
    wait_for("the quota counted", Duration::from_secs(30), || {
        let hard = kubectl(&[
            "get",
            "resourcequota",
            "night-freeze",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.used}",
        ]);
        async move { (!hard.is_empty()).then_some(()) }
    })
    .await;
    // The API server's quota check may lag its count for a moment: a 503 says retry.
    let base = sc.op.base.clone();
    let (status, text) = wait_for(
        "an answer other than retry",
        Duration::from_secs(30),
        || {
            let (base, key) = (base.clone(), key.clone());
            async move {
                let r = reqwest::Client::new()
                    .post(format!("{base}/v1/heartbeats"))
                    .bearer_auth(&key)
                    .json(&json!({"name": "Nightly", "interval_secs": 3600, "grace_secs": 60}))
                    .send()
                    .await
                    .ok()?;
                let status = r.status().as_u16();
                let body: Value = r.json().await.ok()?;
                (status != 503).then(|| (status, body.to_string()))
            }
        },
    )
    .await;
    assert_eq!(status, 402, "{text}");
    for word in [
        "exceeded quota",
        "night-freeze",
        "count/",
        "forbidden",
        "serviceaccount",
    ] {
        assert!(!text.contains(word), "the answer says {word:?}: {text}");
    }
    let listed = kubectl(&["get", "heartbeats", "-n", &sc.ns, "-o", "name"]);
    assert!(listed.trim().is_empty(), "{listed}");
}
