//! Secrets: only what its owner opted in is adopted; everything else stays byte for byte as
//! it was and is refused with a reason and an Event, as are a token in use twice and a
//! request the operator's RBAC does not allow.

use std::time::Duration;

use super::harness::{Scenario, events_with_reason, hb_status, kubectl, secret_value};
use crate::helpers::{wait_for, webhook_sink};
use hartslag::k8s::crd::Heartbeat;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn ready_reason(hbs: &Api<Heartbeat>, name: &str) -> Option<(String, String, String)> {
    let st = hb_status(hbs, name).await?;
    let c = st["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

async fn wait_reason(hbs: &Api<Heartbeat>, name: &str, reason: &str) -> String {
    wait_for(
        &format!("{name}: Ready with reason {reason}"),
        // Refusals that may lift by themselves are looked at again at least every minute.
        Duration::from_secs(100),
        || async {
            ready_reason(hbs, name)
                .await
                .filter(|(_, r, _)| r == reason)
                .map(|(_, _, m)| m)
        },
    )
    .await
}

async fn heartbeat(hbs: &Api<Heartbeat>, name: &str, secret: &str) {
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": name}, "spec": {"tokenSecretName": secret}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
}

/// What must not change in a refused Secret: everything the API server stores.
fn fingerprint(s: &Secret) -> Value {
    json!({
        "resourceVersion": s.metadata.resource_version,
        "labels": s.metadata.labels,
        "annotations": s.metadata.annotations,
        "owners": s.metadata.owner_references,
        "data": s.data,
        "type": s.type_,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn only_secrets_that_opt_in_are_adopted_and_refusals_are_visible() {
    let s = Scenario::start("e2e-secrets").await;
    let (client, ns, hbs, secrets, op) = (&s.client, &s.ns, &s.hbs, &s.secrets, &s.op);
    let token = "someone-elses-token-0123456789";

    // A Secret that does not opt in: refused, untouched, its token not accepted.
    let plain: Secret = serde_json::from_value(json!({
        "metadata": {"name": "plain"}, "type": "Opaque", "stringData": {"token": token}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    let before = fingerprint(&secrets.get("plain").await.unwrap());
    heartbeat(hbs, "steal", "plain").await;
    let message = wait_reason(hbs, "steal", "SecretNotAdoptable").await;
    assert!(
        message.contains("hartslag.dev/adopt: \"true\""),
        "{message}"
    );
    assert!(
        hb_status(hbs, "steal")
            .await
            .unwrap()
            .get("state")
            .is_none()
    );
    wait_for(
        "a SecretNotAdoptable Event",
        Duration::from_secs(20),
        || async {
            (events_with_reason(client, ns, "SecretNotAdoptable").await >= 1).then_some(())
        },
    )
    .await;
    let ping = format!("{}/v1/heartbeats/{token}/ping", op.base);
    assert_eq!(reqwest::get(&ping).await.unwrap().status(), 404);

    // A service-account token Secret is never adopted, annotation or not.
    kubectl(&["create", "serviceaccount", "robot", "-n", ns]);
    let sa_secret = wait_for(
        "the robot's token Secret",
        Duration::from_secs(30),
        || async {
            secrets
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|s| {
                    s.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("robot-token-"))
                })
                .and_then(|s| s.metadata.name)
        },
    )
    .await;
    kubectl(&[
        "annotate",
        "secret",
        &sa_secret,
        "-n",
        ns,
        "hartslag.dev/adopt=true",
    ]);
    let sa_before = fingerprint(&secrets.get(&sa_secret).await.unwrap());
    heartbeat(hbs, "robot", &sa_secret).await;
    let message = wait_reason(hbs, "robot", "SecretNotAdoptable").await;
    assert!(message.contains("only Opaque Secrets"), "{message}");

    // Opted in, but no usable token (too short): refused, saying what is missing, untouched.
    let short: Secret = serde_json::from_value(json!({
        "metadata": {"name": "short", "annotations": {"hartslag.dev/adopt": "true"}},
        "type": "Opaque", "stringData": {"token": "too-short"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &short)
        .await
        .unwrap();
    let short_before = fingerprint(&secrets.get("short").await.unwrap());
    heartbeat(hbs, "short", "short").await;
    let message = wait_reason(hbs, "short", "SecretNotAdoptable").await;
    assert!(message.contains("no key `token`"), "{message}");
    assert_eq!(
        fingerprint(&secrets.get("short").await.unwrap()),
        short_before,
        "a Secret without a usable token was modified"
    );
    let short_ping = format!("{}/v1/heartbeats/too-short/ping", op.base);
    assert_eq!(reqwest::get(&short_ping).await.unwrap().status(), 404);

    // Opting in: adopted without touching the Heartbeat; the operator adds ping-url.
    assert_eq!(
        fingerprint(&secrets.get("plain").await.unwrap()),
        before,
        "a refused Secret was modified"
    );
    kubectl(&[
        "annotate",
        "secret",
        "plain",
        "-n",
        ns,
        "hartslag.dev/adopt=true",
    ]);
    wait_reason(hbs, "steal", "Armed").await;
    let url = wait_for(
        "ping-url in the adopted Secret",
        Duration::from_secs(30),
        || secret_value(secrets, "plain", "ping-url"),
    )
    .await;
    assert_eq!(url, ping);
    let adopted = secrets.get("plain").await.unwrap();
    assert_eq!(
        adopted.metadata.labels.unwrap()["hartslag.dev/token"],
        "adopted"
    );
    assert!(
        adopted.metadata.owner_references.is_none(),
        "an adopted Secret stays its owner's"
    );
    assert_eq!(reqwest::get(&ping).await.unwrap().status(), 200);
    wait_for("a TokenAdopted Event", Duration::from_secs(20), || async {
        (events_with_reason(client, ns, "TokenAdopted").await >= 1).then_some(())
    })
    .await;

    // The same token in a second Secret: refused, the first keeps it.
    let copy: Secret = serde_json::from_value(json!({
        "metadata": {"name": "copy", "annotations": {"hartslag.dev/adopt": "true"}},
        "stringData": {"token": token}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &copy).await.unwrap();
    let copy_before = fingerprint(&secrets.get("copy").await.unwrap());
    heartbeat(hbs, "twin", "copy").await;
    wait_reason(hbs, "twin", "TokenInUse").await;
    assert_eq!(
        fingerprint(&secrets.get("copy").await.unwrap()),
        copy_before,
        "a Secret whose token is refused was written"
    );
    wait_for("a TokenInUse Event", Duration::from_secs(20), || async {
        (events_with_reason(client, ns, "TokenInUse").await >= 1).then_some(())
    })
    .await;
    assert_eq!(reqwest::get(&ping).await.unwrap().status(), 200);

    // The API server refuses (RBAC without `patch` on Secrets, so adopting one fails):
    // Forbidden, with an Event; once RBAC is fixed the Heartbeat becomes Ready by itself.
    let role = s.install.fullname.clone();
    let rules: Value =
        serde_json::from_str(&kubectl(&["get", "role", &role, "-n", ns, "-o", "json"])).unwrap();
    let mut narrowed = rules["rules"].clone();
    for r in narrowed.as_array_mut().unwrap() {
        if r["resources"] == json!(["secrets"]) {
            r["verbs"] = json!(["get", "list", "watch", "create"]);
        }
    }
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), ns);
    roles
        .patch(
            &role,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "rules": narrowed })),
        )
        .await
        .unwrap();
    let mine: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mine", "annotations": {"hartslag.dev/adopt": "true"}},
        "stringData": {"token": "my-very-own-token-0123456789"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &mine).await.unwrap();
    heartbeat(hbs, "denied", "mine").await;
    let message = wait_reason(hbs, "denied", "Forbidden").await;
    assert!(message.contains("Secrets"), "{message}");
    wait_for("a Forbidden Event", Duration::from_secs(20), || async {
        (events_with_reason(client, ns, "Forbidden").await >= 1).then_some(())
    })
    .await;
    roles
        .patch(
            &role,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "rules": rules["rules"] })),
        )
        .await
        .unwrap();
    wait_reason(hbs, "denied", "Armed").await;

    // Nothing the operator refused was ever written.
    assert_eq!(
        fingerprint(&secrets.get(&sa_secret).await.unwrap()),
        sa_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn a_webhook_url_can_live_in_a_secret_and_never_shows() {
    let s = Scenario::start("e2e-hook").await;
    let (_client, ns, hbs, secrets) = (&s.client, &s.ns, &s.hbs, &s.secrets);
    let (hook, received) = webhook_sink("/hook/secret-part").await;
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat", "metadata": {"name": "hooked"},
        "spec": {"interval": "1h", "alerts": {"webhookSecretRef": {"name": "slack", "key": "url"}}}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
    let message = wait_reason(hbs, "hooked", "WebhookSecretNotFound").await;
    assert!(message.contains("slack"), "{message}");
    let slack: Secret = serde_json::from_value(json!({
        "metadata": {"name": "slack"}, "stringData": {"url": hook}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &slack)
        .await
        .unwrap();
    wait_reason(hbs, "hooked", "Armed").await;
    let url = wait_for("the ping URL", Duration::from_secs(30), || {
        secret_value(secrets, "hooked-heartbeat", "ping-url")
    })
    .await;
    let failed = reqwest::Client::new()
        .post(format!("{url}?exit_code=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 200);
    let r = received.clone();
    wait_for("the Down webhook", Duration::from_secs(30), || {
        let n = r.lock().unwrap().len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    assert_eq!(received.lock().unwrap()[0]["event"], "down");
    // The URL is a credential: neither the status nor any Event shows it.
    let status = hb_status(hbs, "hooked").await.unwrap().to_string();
    assert!(!status.contains("secret-part"), "{status}");
    let events = kubectl(&["get", "events", "-n", ns, "-o", "json"]);
    assert!(
        !events.contains("secret-part"),
        "an Event shows the webhook URL"
    );
}
