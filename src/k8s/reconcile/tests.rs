//! The pipelines against a mocked API server: which requests each path sends (and which it
//! never sends), with the core's real services behind them.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::watcher::Event;
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
        ("PATCH", p) if p.contains("/heartbeats/") => (
            200,
            serde_json::to_value(heartbeat("job", json!({"interval": "1h"}), &[])).unwrap(),
        ),
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
async fn a_new_heartbeat_costs_one_secret_create_and_an_unchanged_resync_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, mut caches, mut inbox) = context(dir.path(), client).await;
    let hb = heartbeat("job", json!({"interval": "1h"}), &[]);
    caches.heartbeat(&hb);
    ctx.caches.wait_synced().await;
    reconcile(Arc::new(hb.clone()), ctx.clone()).await.unwrap();
    assert_eq!(
        requests(&log),
        vec![("POST".into(), "/api/v1/namespaces/shop/secrets".into())],
        "a Secret missing from the cache is created at once, without a read first; no finalizer, and no Event for the first token (Ready says it)"
    );
    let created = log.lock().unwrap()[0].body.clone();
    assert_eq!(created["type"], "Opaque");
    assert_eq!(
        created["metadata"]["labels"]["hartslag.dev/token"],
        "issued"
    );
    assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "uid-job");
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
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    ctx.caches.wait_synced().await;
    let hb = heartbeat("steal", json!({"tokenSecretName": "plain"}), &[]);
    caches.heartbeat(&hb);
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
async fn an_invalid_edit_is_refused_without_api_writes_and_the_last_valid_spec_stays_in_effect() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    let hb = heartbeat("job", json!({"interval": "1h"}), &[]);
    caches.heartbeat(&hb);
    reconcile(Arc::new(hb.clone()), ctx.clone()).await.unwrap();
    let before = ctx.core.engine.get("shop/job").unwrap();
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
    assert_eq!(
        ctx.core.engine.get("shop/job").as_ref(),
        Some(&before),
        "a typo switched the monitor off or changed it"
    );
    assert!(ctx.core.registry.owner_of_hash(&before.def.token).is_some());
    let verdict = ctx.verdicts.get(&Target::heartbeat("shop", "job")).unwrap();
    assert_eq!(verdict.generation, Some(2));
    assert!(
        matches!(&verdict.outcome, Outcome::Refused(r) if r.reason == "InvalidSpec"
            && r.message.ends_with("the last valid spec stays in effect")),
        "{:?}",
        verdict.outcome
    );
    // Only the Warning Event: the status is the writer's to write.
    assert_eq!(
        requests(&log),
        vec![(
            "POST".into(),
            "/apis/events.k8s.io/v1/namespaces/shop/events".into()
        )]
    );
}

#[tokio::test]
async fn a_refused_heartbeat_is_suspended_and_comes_back_with_its_state_and_history() {
    use crate::core::monitor::engine::PingInput;
    use crate::core::monitor::state::State;
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut caches, _, hb) = armed(dir.path(), json!({"interval": "1h"})).await;
    ctx.core
        .engine
        .ping("shop/job", PingInput::success())
        .await
        .unwrap();
    let up = ctx.core.engine.get("shop/job").unwrap();
    assert_eq!((up.state.state, up.state.pings), (State::Up, 1));

    // It names an Application that does not exist: not monitored, its token refused.
    let mut orphan = hb.clone();
    orphan.spec.spec.application_ref = Some(crate::core::spec::ApplicationRef {
        name: "nowhere".into(),
    });
    orphan.metadata.generation = Some(2);
    caches.heartbeat(&orphan);
    reconcile(Arc::new(orphan.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(ctx.core.engine.get("shop/job").is_none());
    assert!(ctx.core.registry.owner_of_hash(&up.def.token).is_none());
    assert!(ctx.core.engine.retained("shop/job").await.is_some());

    // Fixed: the monitor is back where it was, history included.
    let mut fixed = hb.clone();
    fixed.metadata.generation = Some(3);
    caches.heartbeat(&fixed);
    reconcile(Arc::new(fixed), ctx.clone()).await.unwrap();
    let back = ctx.core.engine.get("shop/job").unwrap();
    assert_eq!(
        (back.num, back.state.state, back.state.pings),
        (up.num, State::Up, 1)
    );
    assert_eq!(ctx.core.engine.pings(back.num, 10).await.unwrap().len(), 1);
    assert!(ctx.core.registry.owner_of_hash(&back.def.token).is_some());

    // Suspended again, then deleted: what the suspension kept goes too.
    caches.heartbeat(&orphan);
    reconcile(Arc::new(orphan.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(ctx.core.engine.retained("shop/job").await.is_some());
    caches
        .heartbeats
        .apply_watcher_event(&Event::Delete(orphan.clone()));
    super::heartbeat::gone(ctx.clone(), orphan).await;
    assert!(ctx.core.engine.retained("shop/job").await.is_none());
    assert!(
        ctx.core
            .engine
            .pings(back.num, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Arms Heartbeat `name` (with `spec`) in `ctx`, pings it once and has it refused (its
/// Application does not exist): its monitor is suspended. Returns the refused Heartbeat.
async fn suspended_one(
    ctx: &Arc<crate::k8s::context::Context>,
    caches: &mut crate::k8s::testing::CacheWriters,
    name: &str,
    spec: Value,
) -> crate::k8s::crd::Heartbeat {
    use crate::core::monitor::engine::PingInput;
    let hb = heartbeat(name, spec, &[]);
    caches.heartbeat(&hb);
    reconcile(Arc::new(hb.clone()), ctx.clone()).await.unwrap();
    let key = format!("shop/{name}");
    ctx.core
        .engine
        .ping(&key, PingInput::success())
        .await
        .unwrap();
    let mut refused = hb;
    refused.spec.spec.application_ref = Some(crate::core::spec::ApplicationRef {
        name: "nowhere".into(),
    });
    refused.metadata.generation = Some(2);
    caches.heartbeat(&refused);
    reconcile(Arc::new(refused.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(ctx.core.engine.get(&key).is_none(), "{name} not suspended");
    assert!(ctx.core.engine.retained(&key).await.is_some(), "{name}");
    refused
}

#[tokio::test]
async fn the_orphan_sweep_drops_suspended_monitors_whose_heartbeat_went_unless_retained() {
    let dir = tempfile::tempdir().unwrap();
    let (client, _) = mock_client(api);
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    ctx.caches.wait_synced().await;
    let interval = json!({"interval": "1h"});
    let retain = json!({"interval": "1h", "deletionPolicy": "Retain"});
    let gone = suspended_one(&ctx, &mut caches, "gone", interval.clone()).await;
    let replaced = suspended_one(&ctx, &mut caches, "replaced", interval.clone()).await;
    let kept = suspended_one(&ctx, &mut caches, "kept", retain).await;
    suspended_one(&ctx, &mut caches, "waiting", interval).await;
    let num = ctx.core.engine.retained("shop/gone").await.unwrap().num;
    assert_eq!(ctx.core.engine.pings(num, 10).await.unwrap().len(), 1);
    // While no operator ran: `gone` and `kept` were deleted, `replaced` deleted and
    // created again under its name (another uid). The watch's relist shows only that.
    caches.heartbeats.apply_watcher_event(&Event::Delete(gone));
    caches.heartbeats.apply_watcher_event(&Event::Delete(kept));
    let mut other = replaced;
    other.metadata.uid = Some("uid-another".into());
    other.spec.spec.application_ref = None;
    caches.heartbeat(&other);
    crate::k8s::orphans::sweep(&ctx).await;
    for (name, left) in [
        ("gone", false),
        ("replaced", false),
        ("kept", true),
        ("waiting", true),
    ] {
        assert_eq!(
            ctx.core
                .engine
                .retained(&format!("shop/{name}"))
                .await
                .is_some(),
            left,
            "{name}"
        );
    }
    assert!(ctx.core.engine.pings(num, 10).await.unwrap().is_empty());
    // The new Heartbeat of the same name starts afresh.
    reconcile(Arc::new(other), ctx.clone()).await.unwrap();
    let fresh = ctx.core.engine.get("shop/replaced").unwrap();
    assert_eq!(
        fresh.state.pings, 0,
        "picked up the old Heartbeat's monitor"
    );
}

#[tokio::test]
async fn a_heartbeat_created_again_under_its_name_starts_afresh_whoever_sees_it_first() {
    use crate::core::monitor::engine::{DefRecord, Origin, PingInput, PingKind};
    let dir = tempfile::tempdir().unwrap();
    let (client, _) = mock_client(api);
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    ctx.caches.wait_synced().await;
    let failed = PingInput {
        kind: PingKind::Fail,
        exit_code: Some(1),
        ..PingInput::success()
    };
    let mut old = Vec::new();
    for name in ["swept", "reconciled"] {
        let hb = heartbeat(name, json!({"interval": "1h"}), &[]);
        caches.heartbeat(&hb);
        reconcile(Arc::new(hb), ctx.clone()).await.unwrap();
        let key = format!("shop/{name}");
        ctx.core.engine.ping(&key, failed.clone()).await.unwrap();
        old.push(ctx.core.engine.get(&key).unwrap());
    }
    // Written by a build that recorded no uid (the id is the key).
    let now = jiff::Timestamp::now();
    let legacy = DefRecord {
        id: "shop/legacy".into(),
        origin: Origin::Kubernetes,
        ..DefRecord::sample("shop/legacy", 3600, now)
    };
    let legacy = ctx.core.engine.upsert(legacy.into()).await.unwrap();
    ctx.core
        .engine
        .ping("shop/legacy", PingInput::success())
        .await
        .unwrap();
    // While no operator ran, both were deleted and created again (new uids).
    let again = |name: &str| {
        let mut hb = heartbeat(name, json!({"interval": "1h"}), &[]);
        hb.metadata.uid = Some(format!("uid-{name}-again"));
        hb
    };
    for name in ["swept", "reconciled"] {
        caches.heartbeat(&again(name));
    }
    caches.heartbeat(&heartbeat("legacy", json!({"interval": "1h"}), &[]));
    // `reconciled` is reconciled before the sweep runs, `swept` after it.
    reconcile(Arc::new(again("reconciled")), ctx.clone())
        .await
        .unwrap();
    crate::k8s::orphans::sweep(&ctx).await;
    assert!(
        ctx.core.engine.get("shop/swept").is_none(),
        "the sweep left the old monitor"
    );
    assert_eq!(ctx.core.registry.owner_of_hash(&old[0].def.token), None);
    assert!(
        ctx.core.engine.get("shop/legacy").is_some(),
        "a monitor without a uid is its Heartbeat's"
    );
    reconcile(Arc::new(again("swept")), ctx.clone())
        .await
        .unwrap();
    reconcile(
        Arc::new(heartbeat("legacy", json!({"interval": "1h"}), &[])),
        ctx.clone(),
    )
    .await
    .unwrap();
    for (name, old) in [("swept", &old[0]), ("reconciled", &old[1])] {
        let fresh = ctx.core.engine.get(&format!("shop/{name}")).unwrap();
        assert_ne!(fresh.num, old.num, "{name}");
        assert_eq!(fresh.def.id, format!("uid-{name}-again"));
        assert_eq!(
            (fresh.state.pings, fresh.state.incident_open),
            (0, false),
            "{name} picked up the old Heartbeat's monitor"
        );
        assert!(
            ctx.core.engine.pings(old.num, 10).await.unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(ctx.core.registry.owner_of_hash(&old.def.token), None);
    }
    let adopted = ctx.core.engine.get("shop/legacy").unwrap();
    assert_eq!((adopted.num, adopted.state.pings), (legacy.num, 1));
    assert_eq!(adopted.def.id, "uid-legacy");
    // The old Heartbeat's deletion, learnt late, leaves its successor's monitor alone.
    let successor = ctx.core.engine.get("shop/reconciled").unwrap();
    let late = heartbeat("reconciled", json!({"interval": "1h"}), &[]);
    super::heartbeat::gone(ctx.clone(), late).await;
    assert_eq!(ctx.core.engine.get("shop/reconciled"), Some(successor));
}

/// Arms Heartbeat `job` (with `spec`) in a fresh context, with its Secret in the cache as
/// the watch would bring it; the request log starts empty.
async fn armed(
    dir: &std::path::Path,
    spec: Value,
) -> (
    Arc<crate::k8s::context::Context>,
    crate::k8s::testing::CacheWriters,
    crate::k8s::testing::Log,
    crate::k8s::crd::Heartbeat,
) {
    let (client, log) = mock_client(api);
    let (ctx, mut caches, _) = context(dir, client).await;
    let hb = heartbeat("job", spec, &[]);
    caches.heartbeat(&hb);
    ctx.caches.wait_synced().await;
    reconcile(Arc::new(hb.clone()), ctx.clone()).await.unwrap();
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(log.lock().unwrap()[0].body.clone()).unwrap();
    caches.secrets.apply_watcher_event(&Event::Apply(secret));
    log.lock().unwrap().clear();
    (ctx, caches, log, hb)
}

#[tokio::test]
async fn a_deleted_heartbeat_loses_token_and_monitor_from_the_watch_event_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut caches, log, hb) = armed(dir.path(), json!({"interval": "1h"})).await;
    let token = ctx.core.engine.get("shop/job").unwrap().def.token;
    assert!(ctx.core.registry.owner_of_hash(&token).is_some());
    caches
        .heartbeats
        .apply_watcher_event(&Event::Delete(hb.clone()));
    super::heartbeat::gone(ctx.clone(), hb).await;
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
    assert!(
        ctx.core.engine.retained("shop/job").await.is_none(),
        "deletionPolicy Delete (the default) kept the monitor's record"
    );
    assert_eq!(
        requests(&log),
        vec![],
        "the Secret is the garbage collector's"
    );
}

#[tokio::test]
async fn a_deleted_heartbeat_with_retain_keeps_its_record_and_loses_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({"interval": "1h", "deletionPolicy": "Retain"});
    let (ctx, mut caches, _, hb) = armed(dir.path(), spec).await;
    let token = ctx.core.engine.get("shop/job").unwrap().def.token;
    caches
        .heartbeats
        .apply_watcher_event(&Event::Delete(hb.clone()));
    super::heartbeat::gone(ctx.clone(), hb).await;
    assert!(ctx.core.engine.get("shop/job").is_none());
    assert!(ctx.core.registry.owner_of_hash(&token).is_none());
    assert!(ctx.core.engine.retained("shop/job").await.is_some());
}

#[tokio::test]
async fn a_heartbeat_deleted_while_it_was_reconciled_keeps_no_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let (client, _) = mock_client(api);
    let (ctx, _, _) = context(dir.path(), client).await;
    ctx.caches.wait_synced().await;
    // Not in the cache (any more): the watch saw it go while this reconcile ran.
    let hb = heartbeat("job", json!({"interval": "1h"}), &[]);
    let action = reconcile(Arc::new(hb), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(ctx.core.engine.get("shop/job").is_none());
    assert!(
        ctx.verdicts
            .get(&Target::heartbeat("shop", "job"))
            .is_none()
    );
}

#[tokio::test]
async fn the_legacy_finalizer_is_taken_off_with_one_patch_and_the_apply_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    ctx.caches.wait_synced().await;
    let hb = heartbeat(
        "job",
        json!({"interval": "1h"}),
        &["example.com/keep", "hartslag.dev/cleanup"],
    );
    caches.heartbeat(&hb);
    reconcile(Arc::new(hb), ctx.clone()).await.unwrap();
    assert_eq!(
        requests(&log),
        vec![
            (
                "PATCH".into(),
                "/apis/hartslag.dev/v1alpha1/namespaces/shop/heartbeats/job".into()
            ),
            ("POST".into(), "/api/v1/namespaces/shop/secrets".into()),
        ]
    );
    let patch = log.lock().unwrap()[0].clone();
    assert_eq!(patch.content_type, "application/json-patch+json");
    assert_eq!(
        patch.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/1", "value": "hartslag.dev/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/1"},
        ]),
        "only that finalizer, and only while it is where it was"
    );
    assert!(ctx.core.engine.get("shop/job").is_some());
    assert!(super::legacy_finalizer_removal(&[]).is_none());
    assert!(super::legacy_finalizer_removal(&["example.com/keep".into()]).is_none());
}

#[tokio::test]
async fn the_legacy_finalizer_is_not_patched_off_again_from_the_same_version() {
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = mock_client(api);
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    ctx.caches.wait_synced().await;
    let held = heartbeat("job", json!({"interval": "1h"}), &["hartslag.dev/cleanup"]);
    caches.heartbeat(&held);
    let patches = |log: &crate::k8s::testing::Log| {
        requests(log)
            .into_iter()
            .filter(|(verb, path)| verb == "PATCH" && path.ends_with("/heartbeats/job"))
            .count()
    };
    reconcile(Arc::new(held.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(patches(&log), 1);
    // The watch cache has not caught up with the patch: the same version comes again.
    reconcile(Arc::new(held.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(patches(&log), 1, "patched again from a stale cache");
    assert_eq!(ctx.finalizer_patches.len(), 1);
    // Someone put it back: a newer version, patched again.
    let mut again = held.clone();
    again.metadata.resource_version = Some("12".into());
    caches.heartbeat(&again);
    reconcile(Arc::new(again.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(patches(&log), 2, "a finalizer put back stays on");
    // Seen without it: nothing more to remember.
    let mut off = again;
    off.metadata.resource_version = Some("13".into());
    off.metadata.finalizers = None;
    caches.heartbeat(&off);
    reconcile(Arc::new(off), ctx.clone()).await.unwrap();
    assert_eq!(patches(&log), 2);
    assert!(ctx.finalizer_patches.is_empty());
    // Patched, then deleted before it came back without the finalizer: forgotten too.
    let other = heartbeat(
        "other",
        json!({"interval": "1h"}),
        &["hartslag.dev/cleanup"],
    );
    caches.heartbeat(&other);
    reconcile(Arc::new(other.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(ctx.finalizer_patches.len(), 1);
    caches
        .heartbeats
        .apply_watcher_event(&Event::Delete(other.clone()));
    super::heartbeat::gone(ctx.clone(), other).await;
    assert!(
        ctx.finalizer_patches.is_empty(),
        "a deleted object is forgotten"
    );
}

#[tokio::test]
async fn a_heartbeat_held_by_the_legacy_finalizer_is_cleaned_up_and_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _, log, hb) = armed(dir.path(), json!({"interval": "1h"})).await;
    let token = ctx.core.engine.get("shop/job").unwrap().def.token;
    // Deleted while an earlier version's finalizer was on it.
    let mut deleting = hb;
    deleting.metadata.finalizers = Some(vec!["hartslag.dev/cleanup".into()]);
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    let action = reconcile(Arc::new(deleting), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(ctx.core.engine.get("shop/job").is_none());
    assert!(
        ctx.core.registry.owner_of_hash(&token).is_none(),
        "the token still works"
    );
    let seen = requests(&log);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].0, "PATCH");
}

#[tokio::test]
async fn a_token_issued_again_is_announced_and_the_old_one_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut caches, log, hb) = armed(dir.path(), json!({"interval": "1h"})).await;
    let old = ctx.core.engine.get("shop/job").unwrap().def.token;
    // Someone deleted the Secret.
    let secret = ctx.caches.secret("shop", "job-heartbeat").unwrap();
    caches
        .secrets
        .apply_watcher_event(&Event::Delete(secret.as_ref().clone()));
    reconcile(Arc::new(hb), ctx.clone()).await.unwrap();
    assert_eq!(
        requests(&log),
        vec![
            ("POST".into(), "/api/v1/namespaces/shop/secrets".into()),
            (
                "POST".into(),
                "/apis/events.k8s.io/v1/namespaces/shop/events".into()
            ),
        ]
    );
    let event = log.lock().unwrap()[1].body.clone();
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Normal"), Some("TokenReissued"))
    );
    let new = ctx.core.engine.get("shop/job").unwrap().def.token;
    assert_ne!(new, old);
    assert!(ctx.core.registry.owner_of_hash(&old).is_none());
    assert!(ctx.core.registry.owner_of_hash(&new).is_some());
}

/// What the token of each Secret the operator created (or tried to) authenticated as at
/// the moment the API server received the create.
type AtCreate = Arc<std::sync::Mutex<Vec<(String, Option<crate::core::storage::TokenOwner>)>>>;

/// An API server like [`api`] that answers Secret creates with 500 while `fail` is set and
/// records in `seen` what each created Secret's token authenticated as then, in `registry`.
fn recording_api(
    registry: Arc<std::sync::OnceLock<crate::core::registry::Registry>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    seen: AtCreate,
) -> impl Fn(&Seen) -> (u16, Value) + Send + Sync + 'static {
    move |req| {
        if req.method == "POST"
            && req
                .uri
                .split('?')
                .next()
                .unwrap_or("")
                .ends_with("/secrets")
        {
            let secret: k8s_openapi::api::core::v1::Secret =
                serde_json::from_value(req.body.clone()).unwrap();
            let token = crate::k8s::secrets::token_in(&secret).unwrap();
            let owner = registry.get().unwrap().authenticate(&token);
            seen.lock().unwrap().push((token, owner));
            if fail.load(std::sync::atomic::Ordering::SeqCst) {
                return (500, status_error(500, "etcd is down"));
            }
        }
        api(req)
    }
}

#[tokio::test]
async fn a_token_issued_again_works_before_its_secret_is_written_and_not_if_the_write_fails() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(std::sync::OnceLock::new());
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: AtCreate = Arc::default();
    let (client, _) = mock_client(recording_api(registry.clone(), fail.clone(), seen.clone()));
    let (ctx, mut caches, _) = context(dir.path(), client).await;
    registry.set(ctx.core.registry.clone()).unwrap();
    ctx.caches.wait_synced().await;
    let hb = heartbeat("job", json!({"interval": "1h"}), &[]);
    let app = application(json!({}));
    caches.heartbeat(&hb);
    caches
        .applications
        .apply_watcher_event(&Event::Apply(app.clone()));
    let reconcile_both = || async {
        let h = reconcile(Arc::new(hb.clone()), ctx.clone()).await;
        let a = super::application::reconcile(Arc::new(app.clone()), ctx.clone()).await;
        (h, a)
    };
    let (h, a) = reconcile_both().await;
    h.unwrap();
    a.unwrap();
    let first: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert_eq!(first.len(), 2);
    // A first token works once its monitor and Application are defined, after the Secret.
    assert!(first.iter().all(|(_, owner)| owner.is_none()), "{first:?}");
    let old: Vec<String> = first.into_iter().map(|(t, _)| t).collect();

    // Both Secrets are deleted; writing their replacements fails at first.
    fail.store(true, SeqCst);
    let (h, a) = reconcile_both().await;
    assert!(h.is_err() && a.is_err(), "{h:?} {a:?}");
    let failed: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert_eq!(failed.len(), 2);
    for ((token, owner), kind) in failed.iter().zip(["Heartbeat", "Application"]) {
        assert!(
            owner.is_some(),
            "{kind}: the new token did not work when its Secret was written"
        );
        assert!(
            ctx.core.registry.authenticate(token).is_none(),
            "{kind}: a token whose Secret was never written works"
        );
    }
    for token in &old {
        assert!(
            ctx.core.registry.authenticate(token).is_some(),
            "a failed reissue revoked the token in use"
        );
    }

    // Written: the new tokens work from the start, and stay; the old ones stop.
    fail.store(false, SeqCst);
    let (h, a) = reconcile_both().await;
    h.unwrap();
    a.unwrap();
    let written: Vec<_> = seen.lock().unwrap().drain(..).collect();
    let owners: Vec<_> = written
        .iter()
        .map(|(_, o)| o.as_ref().map(|o| o.key.clone()))
        .collect();
    assert_eq!(
        owners,
        vec![Some("shop/job".to_string()), Some("shop/web".to_string())]
    );
    for (token, _) in &written {
        assert!(ctx.core.registry.authenticate(token).is_some());
        assert!(
            !ctx.core
                .registry
                .is_held(&crate::core::token::TokenHash::of(token))
        );
    }
    assert_eq!(
        ctx.core.engine.get("shop/job").unwrap().def.token,
        crate::core::token::TokenHash::of(&written[0].0)
    );
    for token in &old {
        assert!(ctx.core.registry.authenticate(token).is_none());
    }
}

fn application(spec: Value) -> crate::k8s::crd::Application {
    serde_json::from_value(json!({
        "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web", "generation": 1},
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn a_deleted_application_is_removed_and_its_events_kept_only_with_retain() {
    for (policy, kept) in [("Retain", true), ("Delete", false)] {
        let dir = tempfile::tempdir().unwrap();
        let (client, log) = mock_client(api);
        let (ctx, _, _) = context(dir.path(), client).await;
        let registry = &ctx.core.registry;
        let hash = |t: &str| crate::core::token::Token::from_string(t).hash();
        let spec = crate::core::spec::ApplicationSpec::default();
        let num = registry
            .upsert_application("shop", "web", spec.clone(), hash("first-token-0123456789"))
            .await
            .unwrap()
            .num;
        // Its legacy finalizer was patched off just before: that is forgotten with it.
        ctx.finalizer_patches.sent(Some("uid-web"), Some("10"));
        super::application::gone(ctx.clone(), application(json!({"deletionPolicy": policy}))).await;
        assert!(ctx.finalizer_patches.is_empty(), "{policy}");
        assert!(registry.application("shop/web").is_none(), "{policy}");
        assert!(
            registry.authenticate("first-token-0123456789").is_none(),
            "{policy}: the token still works"
        );
        let again = registry
            .upsert_application("shop", "web", spec, hash("second-token-0123456789"))
            .await
            .unwrap();
        assert_eq!(again.num == num, kept, "{policy}: storage kept or not");
        assert!(log.lock().unwrap().is_empty());
    }
}

/// A clean-up for [`super::clean_up_gone`].
type CleanUp = Box<
    dyn Fn(
            Arc<crate::k8s::context::Context>,
        ) -> std::future::Ready<Result<(), super::ReconcileError>>
        + Send,
>;

/// A clean-up that fails `failures` times, then succeeds; counts its calls.
fn flaky(failures: usize) -> (Arc<std::sync::atomic::AtomicUsize>, CleanUp) {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let cleanup = move |_| {
        let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(if n < failures {
            Err(super::ReconcileError::core(
                super::Step::Cleanup,
                "disk full",
            ))
        } else {
            Ok(())
        })
    };
    (calls, Box::new(cleanup))
}

#[tokio::test(start_paused = true)]
async fn a_failed_clean_up_after_a_deletion_is_tried_again_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (client, _) = mock_client(api);
    let (ctx, _, _) = context(dir.path(), client).await;
    let target = Target::heartbeat("shop", "job");
    let (calls, cleanup) = flaky(2);
    super::clean_up_gone(ctx.clone(), target.clone(), |_| false, cleanup).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Backoff from 1 s with jitter: well within ten minutes of paused time.
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "tried again until it succeeded, and not after"
    );

    // An object of that name is back: its reconcile decides, the clean-up stops.
    let (calls, cleanup) = flaky(usize::MAX);
    super::clean_up_gone(ctx.clone(), target.clone(), |_| true, cleanup).await;
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(ctx.retries.failures(&target), 0);
}
