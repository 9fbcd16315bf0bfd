//! The pipelines against a mocked API server: which requests each path sends (and which it
//! never sends), with the core's real services behind them.

use std::sync::Arc;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::heartbeat::reconcile;
use crate::k8s::status::{Lane, Outcome, Target};
use crate::k8s::testing::{Seen, context, heartbeat, mock_client, status_error};

/// The API server of these tests: Secrets named `missing-*` or `*-heartbeat` do not exist,
/// `plain` is someone's Secret without the adopt annotation (creating it again conflicts);
/// writes are echoed back.
fn api(req: &Seen) -> (u16, Value) {
    let path = req.uri.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET", p) if p.ends_with("/secrets/plain") => (
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "plain", "namespace": "shop", "resourceVersion": "5"},
                   "data": {"token": "c29tZW9uZS1lbHNlcy10b2tlbi0wMTIzNDU2Nzg5"}}),
        ),
        ("GET", p) if p.contains("/secrets/") => (404, status_error(404, "NotFound")),
        ("POST", p) if p.ends_with("/secrets") && req.body["metadata"]["name"] == "plain" => {
            (409, status_error(409, "AlreadyExists"))
        }
        ("POST", _) => (201, req.body.clone()),
        ("PATCH", p) if p.contains("/heartbeats/") => {
            let mut hb =
                serde_json::to_value(heartbeat("job", json!({"interval": "1h"}), &[])).unwrap();
            hb["metadata"]["finalizers"] = json!(["hartslag.dev/cleanup"]);
            (200, hb)
        }
        _ => (500, status_error(500, "unexpected")),
    }
}

fn requests(log: &crate::k8s::testing::Log) -> Vec<(String, String)> {
    log.lock()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s.method.clone(),
                s.uri.split('?').next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_new_heartbeat_gets_its_finalizer_and_nothing_else_first() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, _, _) = context(dir.path(), client).await;
    let action = reconcile(Arc::new(heartbeat("job", json!({}), &[])), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].content_type, "application/json-patch+json");
    assert!(
        seen[0].body.to_string().contains("hartslag.dev/cleanup"),
        "{:?}",
        seen[0].body
    );
    assert!(ctx.core.engine.get("shop/job").is_none());
}

#[tokio::test]
async fn an_armed_heartbeat_issues_its_secret_once_and_an_unchanged_resync_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, mut caches, mut inbox) = context(dir.path(), client).await;
    let hb = heartbeat("job", json!({"interval": "1h"}), &["hartslag.dev/cleanup"]);
    caches.heartbeat(&hb);
    ctx.caches.wait_synced().await;
    reconcile(Arc::new(hb.clone()), ctx.clone()).await.unwrap();
    assert_eq!(
        requests(&log),
        vec![
            ("POST".into(), "/api/v1/namespaces/shop/secrets".into()),
            (
                "POST".into(),
                "/apis/events.k8s.io/v1/namespaces/shop/events".into()
            ),
        ],
        "a Secret missing from the cache is created at once, without a read first"
    );
    let created = log.lock().unwrap()[0].body.clone();
    assert_eq!(created["type"], "Opaque");
    assert_eq!(
        created["metadata"]["labels"]["hartslag.dev/token"],
        "issued"
    );
    assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "uid-job");
    assert_eq!(log.lock().unwrap()[1].body["reason"], "TokenIssued");
    let verdict = ctx.verdicts.get(&Target::heartbeat("shop", "job")).unwrap();
    assert_eq!(
        verdict.outcome,
        Outcome::Ready {
            secret: "job-heartbeat".into()
        }
    );
    assert_eq!(verdict.generation, Some(1));
    let nudge = inbox.try_recv().unwrap();
    assert_eq!(
        (nudge.target, nudge.lane),
        (Target::heartbeat("shop", "job"), Lane::Verdict)
    );
    let m = ctx.core.engine.get("shop/job").unwrap();
    assert_eq!(m.def.interval_secs, 3600);

    // The Secret is in the cache now: a resync sends nothing, writes nothing, nudges nothing.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(created).unwrap();
    caches
        .secrets
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(secret));
    let before = log.lock().unwrap().len();
    reconcile(Arc::new(hb), ctx.clone()).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), before, "{:#?}", requests(&log));
    assert!(
        inbox.try_recv().is_err(),
        "an unchanged verdict nudged the status writer"
    );
    assert_eq!(
        ctx.core.engine.get("shop/job").unwrap(),
        m,
        "an unchanged monitor was rewritten"
    );
}

#[tokio::test]
async fn a_secret_that_does_not_opt_in_is_refused_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, _, _) = context(dir.path(), client).await;
    ctx.caches.wait_synced().await;
    let hb = heartbeat(
        "steal",
        json!({"tokenSecretName": "plain"}),
        &["hartslag.dev/cleanup"],
    );
    let action = reconcile(Arc::new(hb), ctx.clone()).await.unwrap();
    assert_ne!(
        action,
        Action::await_change(),
        "looked at again: the owner may opt in"
    );
    assert_eq!(
        requests(&log),
        vec![
            ("POST".into(), "/api/v1/namespaces/shop/secrets".into()),
            ("GET".into(), "/api/v1/namespaces/shop/secrets/plain".into()),
            (
                "POST".into(),
                "/apis/events.k8s.io/v1/namespaces/shop/events".into()
            ),
        ],
        "nothing but a create that conflicts, a read of the Secret and a Warning Event"
    );
    let event = log.lock().unwrap()[2].body.clone();
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("SecretNotAdoptable"))
    );
    let verdict = ctx
        .verdicts
        .get(&Target::heartbeat("shop", "steal"))
        .unwrap();
    assert!(matches!(verdict.outcome, Outcome::Refused(r) if r.reason == "SecretNotAdoptable"));
    assert!(ctx.core.engine.get("shop/steal").is_none());
    assert!(
        ctx.core
            .registry
            .authenticate("someone-elses-token-0123456789")
            .is_none()
    );
}

#[tokio::test]
async fn deletion_revokes_the_token_and_then_removes_the_finalizer() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    let hb = heartbeat("job", json!({}), &["hartslag.dev/cleanup"]);
    caches.heartbeat(&hb);
    reconcile(Arc::new(hb.clone()), ctx.clone()).await.unwrap();
    let token = ctx.core.engine.get("shop/job").unwrap().def.token;
    assert!(ctx.core.registry.owner_of_hash(&token).is_some());
    log.lock().unwrap().clear();

    let mut deleting = hb;
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    reconcile(Arc::new(deleting), ctx.clone()).await.unwrap();
    assert!(ctx.core.engine.get("shop/job").is_none());
    assert!(
        ctx.core.registry.owner_of_hash(&token).is_none(),
        "the token still works"
    );
    assert!(
        ctx.verdicts
            .get(&Target::heartbeat("shop", "job"))
            .is_none(),
        "per-object state kept"
    );
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "PATCH");
    let ops = seen[0].body.as_array().unwrap();
    assert!(
        ops.iter().any(|o| o["op"] == "test") && ops.iter().any(|o| o["op"] == "remove"),
        "{ops:?}"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_refused_and_its_monitor_removed_without_api_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    let hb = heartbeat("job", json!({"interval": "1h"}), &["hartslag.dev/cleanup"]);
    caches.heartbeat(&hb);
    reconcile(Arc::new(hb.clone()), ctx.clone()).await.unwrap();
    assert!(ctx.core.engine.get("shop/job").is_some());
    log.lock().unwrap().clear();
    let mut invalid = hb;
    invalid.spec.spec.interval = Some(crate::core::duration::SpecDuration::from_secs(400 * 86_400));
    invalid.metadata.generation = Some(2);
    let action = reconcile(Arc::new(invalid), ctx.clone()).await.unwrap();
    assert_eq!(
        action,
        Action::await_change(),
        "only a spec change can fix it"
    );
    assert!(
        ctx.core.engine.get("shop/job").is_none(),
        "a refused Heartbeat keeps no monitor"
    );
    let verdict = ctx.verdicts.get(&Target::heartbeat("shop", "job")).unwrap();
    assert_eq!(verdict.generation, Some(2));
    assert!(matches!(verdict.outcome, Outcome::Refused(r) if r.reason == "InvalidSpec"));
    // Only the Warning Event: the status is the writer's to write.
    assert_eq!(
        requests(&log),
        vec![(
            "POST".into(),
            "/apis/events.k8s.io/v1/namespaces/shop/events".into()
        )]
    );
}
