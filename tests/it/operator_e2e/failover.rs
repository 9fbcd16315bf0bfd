//! Two operators on one PostgreSQL database: both serve and are ready, the Lease holder
//! leads; killed with SIGKILL, the other takes over within the Lease's duration and 15 s,
//! its status writes resume, and the incident that fell in between is mailed once.

use std::time::{Duration, Instant};

use super::harness::{
    Install, Operator, SERIAL, condition, hb_status, prepare, secret_value, status_where, teardown,
};
use crate::helpers::{SmtpSink, free_port, metric, wait_for};
use hartslag::k8s::crd::{Application, Heartbeat};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The Lease's duration (the operator's default) and the bound the design promises after it.
const TAKE_OVER_WITHIN: Duration = Duration::from_secs(15 + 15);

async fn leads(op: &Operator) -> Option<bool> {
    metric(&op.base, "hartslag_leader").await.map(|v| v == 1.0)
}

/// Waits until exactly one of `ops` leads; its index.
async fn the_leader(ops: &[&Operator], within: Duration) -> usize {
    wait_for("exactly one leading operator", within, || async move {
        let mut leading = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if leads(op).await? {
                leading.push(i);
            }
        }
        (leading.len() == 1).then(|| leading[0])
    })
    .await
}

async fn state_is(hbs: &Api<Heartbeat>, state: &str, within: Duration) {
    wait_for(&format!("status {state}"), within, || async {
        hb_status(hbs, "payroll")
            .await
            .filter(|s| s["state"] == state)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run tests/run-all.sh, or set KUBECONFIG and pass --include-ignored"]
async fn two_operators_on_one_database_fail_over_when_the_lease_holder_is_killed() {
    let _serial = SERIAL.lock().await;
    let (client, ns) = prepare("e2e-failover").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(dir.path()).await;
    let install = Install::new(&ns, &[&ns]);
    let url = crate::pg::database_for(dir.path());
    let extra = ["--database-url", url.as_str()];
    let mut ops = Vec::new();
    for name in ["one", "two"] {
        let data = dir.path().join(name);
        let op = Operator::spawn(&install, &data, &sink.url(), free_port(), &extra);
        // Ready whether it leads or not.
        op.wait_ready(Duration::from_secs(60)).await;
        ops.push(op);
    }
    let leader = the_leader(&ops.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;

    let apps: Api<Application> = Api::namespaced(client.clone(), &ns);
    let hbs: Api<Heartbeat> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let app: Application = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "shop"},
        "spec": {"timeZone": "UTC", "alerts": {"email": ["ops@example.com"]}}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let hb: Heartbeat = serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
        "metadata": {"name": "payroll"},
        "spec": {"interval": "8s", "grace": "0s", "applicationRef": {"name": "shop"}}
    }))
    .unwrap();
    hbs.create(&PostParams::default(), &hb).await.unwrap();
    // A first token works once its Heartbeat is Ready (not as soon as its Secret appears:
    // the leader takes it after writing the Secret), then on every replica: a follower
    // that does not know it yet reads the leader's rounds before it answers 404.
    status_where(&hbs, "payroll", "Ready", Duration::from_secs(30), |st| {
        condition(st, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    let ping_url = wait_for("the ping URL", Duration::from_secs(30), || {
        secret_value(&secrets, "payroll-heartbeat", "ping-url")
    })
    .await;
    let path = ping_url
        .strip_prefix(&ops[leader].base)
        .unwrap_or_else(|| panic!("{ping_url} is not the leader's"))
        .to_string();
    let http = reqwest::Client::new();
    // Through the follower: it relays the ping to the leader.
    let follower = 1 - leader;
    let via = format!("{}{path}", ops[follower].base);
    assert_eq!(http.post(&via).send().await.unwrap().status(), 200);
    state_is(&hbs, "Up", Duration::from_secs(20)).await;

    ops[leader].kill();
    let killed = Instant::now();
    let successor = &ops[follower];
    wait_for(
        "the other operator to lead",
        TAKE_OVER_WITHIN * 2,
        || async { leads(successor).await.filter(|l| *l) },
    )
    .await;
    let took = killed.elapsed();
    eprintln!("the other operator led {took:?} after the holder was killed");
    assert!(took < TAKE_OVER_WITHIN, "took over after {took:?}");

    // The deadline fell while nobody led: the successor writes Down and mails it once.
    state_is(&hbs, "Down", Duration::from_secs(30)).await;
    wait_for("one DOWN email", Duration::from_secs(30), || async {
        (!sink.with_subject("DOWN: payroll").is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        sink.with_subject("DOWN: payroll").len(),
        1,
        "one email per incident"
    );
    // Status writes go on: a ping through the successor shows Up.
    assert_eq!(http.post(&via).send().await.unwrap().status(), 200);
    state_is(&hbs, "Up", Duration::from_secs(20)).await;
    drop(ops);
    teardown(&ns);
}
