//! The operator's main flows end to end: tokens, status, alerts, the management API, the
//! examples, and an outage of the API server.

use std::process::Command;
use std::time::Duration;

use super::harness::{
    ApiServerPause, Scenario, events_with_reason, hb_status, kubectl, secret_value,
};
use crate::helpers::wait_for;
use hartslag::k8s::crd::{Application, Heartbeat};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn operator_issues_tokens_tracks_status_alerts_and_cleans_up() {
    let mut sc = Scenario::start("e2e").await;
    let (client, ns) = (sc.client.clone(), sc.ns.clone());
    let (apps, hbs, secrets) = (sc.apps.clone(), sc.hbs.clone(), sc.secrets.clone());
    let app: Application = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "shop"},
        "spec": {"timeZone": "Europe/Amsterdam", "alerts": {"email": ["ops@example.com"]}}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": "backup"},
        "spec": {"displayName": "Nightly backup", "interval": "2s", "grace": "1s", "applicationRef": {"name": "shop"}}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();

    // Issued Secrets, owned by their resources.
    let app_token = wait_for(
        "the Application's token Secret",
        Duration::from_secs(30),
        || secret_value(&secrets, "shop-hartslag-token", "token"),
    )
    .await;
    let ping_url = wait_for("the Heartbeat's ping-url", Duration::from_secs(30), || {
        secret_value(&secrets, "backup-heartbeat", "ping-url")
    })
    .await;
    assert!(
        ping_url.starts_with(&sc.op.base) && ping_url.ends_with("/ping"),
        "{ping_url}"
    );
    let s = secrets.get("backup-heartbeat").await.unwrap();
    assert_eq!(
        s.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "hartslag"
    );
    assert_eq!(s.metadata.owner_references.unwrap()[0].kind, "Heartbeat");

    // Events in, counts on the Application's status.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/heartbeat", sc.op.base))
        .bearer_auth(&app_token)
        .json(&json!({"event": "order-placed", "weight": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    wait_for(
        "Application status counts",
        Duration::from_secs(30),
        || async {
            let a = apps.get_opt("shop").await.ok()??;
            let st = a.status?;
            (st.total?.count == 1 && st.top_events.first()?.event == "order-placed").then_some(())
        },
    )
    .await;

    // Ping → Up; silence → Down, an Event and one email.
    assert_eq!(reqwest::get(&ping_url).await.unwrap().status(), 200);
    wait_for("status Up", Duration::from_secs(15), || async {
        hb_status(&hbs, "backup")
            .await
            .filter(|s| s["state"] == "Up")
    })
    .await;
    let down = wait_for("status Down", Duration::from_secs(20), || async {
        hb_status(&hbs, "backup")
            .await
            .filter(|s| s["state"] == "Down")
    })
    .await;
    let up_condition = down["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Up")
        .unwrap()
        .clone();
    assert_eq!(up_condition["status"], "False");
    assert!(down["lastPingAt"].is_string() && down["nextDueAt"].is_string());
    wait_for("a Down Event", Duration::from_secs(20), || async {
        (events_with_reason(&client, &ns, "Down").await >= 1).then_some(())
    })
    .await;
    wait_for("one DOWN email", Duration::from_secs(20), || async {
        (sc.sink.with_subject("DOWN: Nightly backup").len() == 1).then_some(())
    })
    .await;
    let out = kubectl(&["get", "heartbeats", "-n", &ns]);
    assert!(out.contains("STATE") && out.contains("Down"), "{out}");

    // The dashboard admin token, issued into a Secret in the operator's namespace, opens
    // the dashboard, which shows the custom resources' monitors.
    let admin_secret = sc.install.admin_secret();
    let admin = wait_for("the admin token Secret", Duration::from_secs(30), || {
        secret_value(&secrets, &admin_secret, "token")
    })
    .await;
    assert!(admin.starts_with("hsx_"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = wait_for(
        "an admin dashboard login",
        Duration::from_secs(30),
        || async {
            let res = http
                .post(format!("{}/ui/login", sc.op.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={admin}&next=%2Fui%2Fmonitors"))
                .send()
                .await
                .ok()?;
            let c = res.headers().get("set-cookie")?.to_str().ok()?;
            Some(c.split(';').next()?.to_string())
        },
    )
    .await;
    let html = http
        .get(format!("{}/ui/monitors?namespace={ns}", sc.op.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("Nightly backup") && html.contains("Down"),
        "{html}"
    );
    assert!(!html.contains(&admin) && !html.contains(&app_token));

    // Restart the operator: nothing lost, no second alert; a ping recovers once.
    sc.restart().await;
    assert_eq!(hb_status(&hbs, "backup").await.unwrap()["state"], "Down");
    assert_eq!(reqwest::get(&ping_url).await.unwrap().status(), 200);
    wait_for(
        "status Up after restart",
        Duration::from_secs(15),
        || async {
            hb_status(&hbs, "backup")
                .await
                .filter(|s| s["state"] == "Up")
        },
    )
    .await;
    wait_for("one RECOVERED email", Duration::from_secs(20), || async {
        (sc.sink.with_subject("RECOVERED: Nightly backup").len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        sc.sink.with_subject("DOWN: Nightly backup").len(),
        1,
        "the restart repeated the alert"
    );

    // Delete: gone at once (no finalizer holds it), the token revoked as soon as the
    // operator's watch sees it go, the Secret garbage-collected.
    hbs.delete("backup", &DeleteParams::default())
        .await
        .unwrap();
    let held = hbs.get_opt("backup").await.unwrap();
    assert!(held.is_none(), "a finalizer holds the Heartbeat: {held:?}");
    wait_for(
        "the deleted Heartbeat's ping URL to answer 404",
        Duration::from_secs(15),
        || async { (reqwest::get(&ping_url).await.ok()?.status() == 404).then_some(()) },
    )
    .await;
    wait_for(
        "the Secret to be garbage-collected",
        Duration::from_secs(150),
        || async {
            secrets
                .get_opt("backup-heartbeat")
                .await
                .ok()
                .filter(|o| o.is_none())
                .map(|_| ())
        },
    )
    .await;
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    assert!(apps.get_opt("shop").await.unwrap().is_none());
    wait_for(
        "the deleted Application's token to be refused",
        Duration::from_secs(15),
        || async {
            let r = reqwest::Client::new()
                .post(format!("{}/api/v1/heartbeat", sc.op.base))
                .bearer_auth(&app_token)
                .json(&json!({"event": "late"}))
                .send()
                .await
                .ok()?;
            (r.status() == 401).then_some(())
        },
    )
    .await;
    // The first token of each was announced by Ready alone: no TokenIssued Events.
    assert_eq!(events_with_reason(&client, &ns, "TokenIssued").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn management_api_is_a_facade_over_the_custom_resources() {
    let sc = Scenario::start("e2e-api").await;
    let (_client, ns) = (sc.client.clone(), sc.ns.clone());
    let root = env!("CARGO_MANIFEST_DIR");
    let (apps, hbs, secrets) = (sc.apps.clone(), sc.hbs.clone(), sc.secrets.clone());
    for (name, limit) in [("team-a", Some(3)), ("team-b", None)] {
        let mut spec = json!({});
        if let Some(l) = limit {
            spec["limits"] = json!({"heartbeats": l});
        }
        let app: Application = serde_json::from_value(json!({
            "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        apps.create(&PostParams::default(), &app).await.unwrap();
    }
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": "from-kubectl"}, "spec": {"interval": "1h", "applicationRef": {"name": "team-a"}}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
    let key_a = wait_for("team-a token", Duration::from_secs(30), || {
        secret_value(&secrets, "team-a-hartslag-token", "token")
    })
    .await;
    let key_b = wait_for("team-b token", Duration::from_secs(30), || {
        secret_value(&secrets, "team-b-hartslag-token", "token")
    })
    .await;
    wait_for(
        "the kubectl monitor in the API",
        Duration::from_secs(30),
        || {
            let op_base = sc.op.base.clone();
            let key = key_a.clone();
            async move {
                let v: Value = reqwest::Client::new()
                    .get(format!("{op_base}/v1/heartbeats"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (v["heartbeats"].as_array()?.len() == 1).then_some(())
            }
        },
    )
    .await;

    // The real SDK, unchanged, against the operator.
    let script = format!("{root}/tests/sdk/tickstem_flow.py");
    let base = sc.op.base.clone();
    let (ka, kb) = (key_a.clone(), key_b.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([&script, &base, &ka, &kb, "from-kubectl", "kubernetes"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "SDK flow failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Created through the API → visible to kubectl with the right interval.
    let c = reqwest::Client::new();
    let created: Value = c
        .post(format!("{}/v1/heartbeats", sc.op.base))
        .bearer_auth(&key_a)
        .json(&json!({"name": "Weekly Report", "interval_secs": 7200, "grace_secs": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["resource"], "weekly-report", "{created}");
    let out = kubectl(&[
        "get",
        "heartbeats",
        "-n",
        &ns,
        "weekly-report",
        "-o",
        "jsonpath={.spec.interval} {.spec.displayName} {.spec.applicationRef.name}",
    ]);
    assert_eq!(out, "2h Weekly Report team-a");
    let listed = kubectl(&["get", "hb", "-n", &ns]);
    assert!(
        listed.contains("weekly-report") && listed.contains("2h"),
        "{listed}"
    );
    // A kubectl edit of its interval → visible through get.
    kubectl(&[
        "patch",
        "heartbeat",
        "weekly-report",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"interval":"3h"}}"#,
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    wait_for(
        "the kubectl edit in the API",
        Duration::from_secs(30),
        || {
            let url = format!("{}/v1/heartbeats/{id}", sc.op.base);
            let key = key_a.clone();
            async move {
                let v: Value = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (v["interval_secs"] == 10800).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        reqwest::Client::new()
            .post(format!(
                "{}/v1/heartbeats/{}/ping",
                sc.op.base,
                created["token"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Quota past the limit as a condition on a kubectl-created CR: team-a owns 2 of 3 now.
    for name in ["extra-1", "extra-2"] {
        let hb: Heartbeat = serde_json::from_value(json!({
            "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
            "metadata": {"name": name}, "spec": {"interval": "1h", "applicationRef": {"name": "team-a"}}
        }))
        .unwrap();
        hbs.create(&PostParams::default(), &hb).await.unwrap();
    }
    let blocked = wait_for(
        "a QuotaExceeded condition",
        Duration::from_secs(30),
        || async {
            for name in ["extra-1", "extra-2"] {
                if let Some(st) = hb_status(&hbs, name).await
                    && st["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["reason"] == "QuotaExceeded")
                {
                    return Some(name);
                }
            }
            None
        },
    )
    .await;
    assert!(
        secrets
            .get_opt(&format!("{blocked}-heartbeat"))
            .await
            .unwrap()
            .is_none(),
        "a blocked monitor gets no token"
    );
    // Deleted through the API → the 204 comes once the deletion is complete (docs/api.md):
    // the CR is gone from the API server and the ping URL no longer answers.
    let r = c
        .delete(format!(
            "{}/v1/heartbeats/{}",
            sc.op.base,
            created["id"].as_str().unwrap()
        ))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        hbs.get_opt("weekly-report").await.unwrap().is_none(),
        "the 204 came before the resource was gone"
    );
    let pinged = reqwest::Client::new()
        .post(format!(
            "{}/v1/heartbeats/{}/ping",
            sc.op.base,
            created["token"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(pinged, 404, "the deleted Heartbeat's token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn own_tokens_are_adopted_and_outages_of_the_api_server_do_not_stop_monitoring() {
    let sc = Scenario::start("e2e-out").await;
    let (_client, _ns) = (sc.client.clone(), sc.ns.clone());
    let (apps, hbs, secrets) = (sc.apps.clone(), sc.hbs.clone(), sc.secrets.clone());

    // Bring your own token: the Secret exists before the resource and allows adoption.
    let own = "my-own-token-0123456789abcdef";
    let byo: Secret = serde_json::from_value(json!({
        "metadata": {"name": "byo", "annotations": {"hartslag.dev/adopt": "true"}},
        "stringData": {"token": own}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &byo).await.unwrap();
    let app: Application = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application", "metadata": {"name": "shop"}, "spec": {}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat", "metadata": {"name": "job"},
        "spec": {"interval": "2s", "grace": "1s", "tokenSecretName": "byo", "applicationRef": {"name": "shop"}}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
    let url = wait_for(
        "ping-url added to the adopted Secret",
        Duration::from_secs(30),
        || secret_value(&secrets, "byo", "ping-url"),
    )
    .await;
    assert!(url.contains(own), "{url}");
    assert!(
        secrets
            .get("byo")
            .await
            .unwrap()
            .metadata
            .owner_references
            .is_none(),
        "an adopted Secret stays the user's"
    );
    let app_token = wait_for("the Application's token", Duration::from_secs(30), || {
        secret_value(&secrets, "shop-hartslag-token", "token")
    })
    .await;
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    wait_for("status Up", Duration::from_secs(15), || async {
        hb_status(&hbs, "job").await.filter(|s| s["state"] == "Up")
    })
    .await;

    // The API server stops answering: events, pings and deadlines go on.
    let pause = ApiServerPause::start();
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/api/v1/heartbeat", sc.op.base))
        .bearer_auth(&app_token)
        .json(&json!({"event": "during-outage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    let status_url = format!("{}/v1/status", sc.op.base);
    wait_for(
        "Down while the API server is away",
        Duration::from_secs(20),
        || {
            let (c, u, t) = (c.clone(), status_url.clone(), app_token.clone());
            async move {
                let v: Value = c
                    .get(u)
                    .bearer_auth(t)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (v["monitors"][0]["state"] == "Down").then_some(())
            }
        },
    )
    .await;
    drop(pause);
    // Status catches up when it returns.
    wait_for(
        "status Down after the outage",
        Duration::from_secs(60),
        || async {
            hb_status(&hbs, "job")
                .await
                .filter(|s| s["state"] == "Down")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn kubernetes_examples_apply_and_issue_their_secrets() {
    let sc = Scenario::start("e2e-ex").await;
    let (client, ns) = (sc.client.clone(), sc.ns.clone());
    // Every field is documented for `kubectl explain`.
    let explained = kubectl(&["explain", "heartbeat.spec.interval"]);
    assert!(
        explained.contains("Longest expected time between two successful pings"),
        "{explained}"
    );
    let explained = kubectl(&["explain", "hsapp.spec.timeZone"]);
    assert!(explained.contains("IANA time zone"), "{explained}");
    let root = env!("CARGO_MANIFEST_DIR");
    // The examples use batch/v1 CronJobs (Kubernetes 1.21+); an older test control plane
    // (Debian's 1.20) serves them as batch/v1beta1 with the same fields.
    let batch_v1 = kubectl(&["get", "--raw", "/apis/batch/v1"]);
    let examples = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(format!("{root}/examples/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        // Directories hold examples that need more than Hartslag (cloudnativepg/: its
        // operator); they are checked in tests/chart.
        if !path.is_file() {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        if !batch_v1.contains("\"cronjobs\"") {
            text = text.replace(
                "apiVersion: batch/v1\nkind: CronJob",
                "apiVersion: batch/v1beta1\nkind: CronJob",
            );
        }
        std::fs::write(examples.path().join(path.file_name().unwrap()), text).unwrap();
    }
    let applied = kubectl(&["apply", "-n", &ns, "-f", examples.path().to_str().unwrap()]);
    for object in [
        "application.hartslag.dev/shop",
        "deployment.apps/shop-events",
        "heartbeat.hartslag.dev/backup",
        "cronjob.batch/backup",
        "heartbeat.hartslag.dev/report",
        "cronjob.batch/report",
    ] {
        assert!(applied.contains(object), "{object} not applied:\n{applied}");
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    wait_for("the shop token", Duration::from_secs(30), || {
        secret_value(&secrets, "shop-hartslag-token", "token")
    })
    .await;
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    for name in ["backup", "report"] {
        // What the CronJob does with the Secret it mounts.
        let secret = format!("{name}-heartbeat");
        let url = wait_for("a ping-url", Duration::from_secs(30), || {
            secret_value(&secrets, &secret, "ping-url")
        })
        .await;
        let base = url.trim_end_matches("/ping").to_string();
        assert_eq!(
            reqwest::get(format!("{base}/start"))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
        wait_for("status Up", Duration::from_secs(15), || async {
            hb_status(&hbs, name).await.filter(|s| s["state"] == "Up")
        })
        .await;
    }
}
