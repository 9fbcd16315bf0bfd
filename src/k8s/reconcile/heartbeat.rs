//! The Heartbeat pipeline: validate → application → cronJob → channels → quota → secret →
//! alerts → build → apply → verdict. Deletion (seen by the watch, or the start of one held
//! by another finalizer) revokes the token at once and removes or retains the monitor's
//! data as `deletionPolicy` says.
//!
//! A Heartbeat that is not Ready has no monitor: a refusal deactivates it, so its status
//! never shows a state, deadline or count next to `Ready=False`.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::{
    Frame, ReconcileError, Step, Stop, TokenNews, alerts, clean_up_gone, conclude, framed,
    secret_stop, still_cached, taken_by_another,
};
use crate::core::duration::SpecDuration;
use crate::core::monitor::define::{DeclaredHeartbeat, WatchedCronJob, ping_url};
use crate::core::monitor::engine::{MonitorDef, Origin, same_resource};
use crate::core::registry::{AppInfo, RegistryError, object_key};
use crate::core::spec::HeartbeatSpec;
use crate::core::storage::TokenOwner;
use crate::core::token::{TokenHash, TokenKind};
use crate::k8s::context::Context;
use crate::k8s::crd::Heartbeat;
use crate::k8s::secrets::{self, Ensured, Wanted};
use crate::k8s::status::{Lane, Refusal, Target};

/// Reconciles a Heartbeat.
pub async fn reconcile(hb: Arc<Heartbeat>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ctx = &ctx;
    match framed(hb.as_ref(), ctx).await? {
        Frame::Elsewhere => Ok(Action::await_change()),
        Frame::Deleting(ns) => {
            cleanup(&hb, ctx, &ns).await?;
            // Its status says it is being deleted: its token no longer works.
            let target = Target::heartbeat(&ns, &hb.name_any());
            ctx.status.nudge(target, Lane::Verdict);
            Ok(Action::await_change())
        }
        Frame::Live(ns) => {
            let action = apply(&hb, ctx, &ns).await?;
            if still_cached(ctx.caches.heartbeat(&ns, &hb.name_any()), hb.as_ref()) {
                return Ok(action);
            }
            cleanup(&hb, ctx, &ns).await?;
            Ok(Action::await_change())
        }
    }
}

/// The watch saw Heartbeat `hb` deleted (it is out of the cache already): its token stops
/// working and its monitor goes.
pub async fn gone(ctx: Arc<Context>, hb: Heartbeat) {
    // Deleted right after its legacy finalizer was patched off: never seen without it.
    ctx.finalizer_patches.forget(hb.meta().uid.as_deref());
    let Some(ns) = hb.namespace() else {
        return;
    };
    if !ctx.instances.owns(&ns) {
        return;
    }
    let name = hb.name_any();
    let target = Target::heartbeat(&ns, &name);
    let back = {
        let (ns, name) = (ns.clone(), name.clone());
        move |ctx: &Context| ctx.caches.heartbeat(&ns, &name).is_some()
    };
    clean_up_gone(ctx, target, back, move |ctx| {
        let (hb, ns) = (hb.clone(), ns.clone());
        async move { cleanup(&hb, &ctx, &ns).await }
    })
    .await;
}

async fn apply(hb: &Heartbeat, ctx: &Context, ns: &str) -> Result<Action, ReconcileError> {
    let name = hb.name_any();
    let target = Target::heartbeat(ns, &name);
    let live = hb.status.as_ref().map(|s| s.conditions.as_slice());
    tracing::debug!(object = %target, generation = ?hb.metadata.generation, "reconciling");
    let key = object_key(ns, &name);
    let (concluded, news) = match steps(hb, ctx, ns, &name).await {
        Ok((secret, news)) => (Ok(secret), news),
        Err(stop) => (Err(stop), None),
    };
    let concluded = match concluded {
        // A spec edited into an invalid one leaves the monitor as the last valid spec
        // made it: a typo does not switch a monitor off.
        Err(Stop::Refused { refusal, retry })
            if refusal.reason == INVALID_SPEC && ctx.core.engine.get(&key).is_some() =>
        {
            let message = format!("{}; the last valid spec stays in effect", refusal.message);
            Err(Stop::Refused {
                refusal: Refusal::new(refusal.reason, message),
                retry,
            })
        }
        Err(Stop::Refused { refusal, retry }) => {
            // Not Ready means not monitored: the token stops working, and the monitor is
            // suspended with its state and history until it is accepted again.
            suspend(ctx, &key).await?;
            Err(Stop::Refused { refusal, retry })
        }
        other => other,
    };
    let secret = concluded.as_ref().ok().cloned();
    let action = conclude(ctx, &target, &hb.metadata, live, concluded)
        .await?
        .0;
    // After the verdict: the status writer does not wait for the Event.
    if let (Some(secret), Some(news)) = (secret, news) {
        announce(ctx, hb, ns, &secret, news).await;
    }
    Ok(action)
}

/// The steps that end in an armed monitor; returns the Secret holding its token, and what
/// happened to the token that a person should hear of.
async fn steps(
    hb: &Heartbeat,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<(String, Option<TokenNews>), Stop> {
    let spec = &hb.spec.spec;
    validate(spec, ctx.config.min_interval)?;
    let app = application(&ctx.core.registry, ns, spec)?;
    let cron_job = cron_job(ctx, ns, spec).await?;
    let channels = crate::k8s::channels::step(ctx, ns, spec, app.as_deref())
        .await
        .map_err(|refusal| Stop::Refused {
            refusal,
            retry: false,
        })?;
    let key = object_key(ns, name);
    // Held until the monitor is active, so two new monitors cannot both take the last slot.
    let quota_lock = app
        .as_ref()
        .filter(|a| quota_limit(a).is_some())
        .map(|a| ctx.quotas.of(&a.key));
    let _held = match &quota_lock {
        Some(l) => Some(l.lock().await),
        None => None,
    };
    if let Some(a) = &app {
        quota(a, counted_against(ctx, hb, &a.key, &key))?;
    }
    let secret_name = secret_name(spec, name);
    let ensured = token_secret(hb, ctx, ns, &secret_name).await?;
    let (spec, app) = resolved_alerts(ctx, ns, spec, app.as_deref()).await?;
    let existing = ctx.core.engine.get(&key);
    let news = TokenNews::of(&ensured, existing.is_some());
    let def = build(&BuildInputs {
        hb,
        namespace: ns,
        spec: &spec,
        app: app.as_ref(),
        cron_job: cron_job.as_ref(),
        token: ensured.token.hash(),
        secret: &secret_name,
        default_webhook: ctx.config.webhook_url.as_deref(),
        channels: &channels,
        existing: existing.as_ref().map(|m| &m.def),
        now: Timestamp::now(),
    })?;
    activate(ctx, def, existing.as_ref().map(|m| &m.def)).await?;
    if let Some(r) = &spec.cron_job_ref {
        crate::k8s::cronjobs::watch::report_all(ctx, ns, &r.name).await;
    }
    Ok((secret_name, news))
}

/// Step alerts: the alert targets that apply (the Heartbeat's own, else its Application's)
/// with a `webhookSecretRef` resolved into its URL.
async fn resolved_alerts(
    ctx: &Context,
    ns: &str,
    spec: &HeartbeatSpec,
    app: Option<&AppInfo>,
) -> Result<(HeartbeatSpec, Option<AppInfo>), Stop> {
    let mut spec = spec.clone();
    let mut app = app.cloned();
    if spec.alerts.as_ref().is_some_and(|a| !a.is_empty()) {
        spec.alerts = alerts::resolve(ctx, ns, spec.alerts.as_ref()).await?;
    } else if let Some(a) = app.as_mut() {
        a.spec.alerts = alerts::resolve(ctx, ns, a.spec.alerts.as_ref()).await?;
    }
    Ok((spec, app))
}

/// Step validate: the rules the schema cannot express (an older API server enforces none).
pub fn validate(spec: &HeartbeatSpec, min_interval: SpecDuration) -> Result<(), Stop> {
    spec.validate_with_min_interval(min_interval)
        .map_err(|e| Stop::wait(INVALID_SPEC, e.to_string()))
}

/// The reason of a spec the rules refuse.
const INVALID_SPEC: &str = "InvalidSpec";

/// Step application: the Application named by `applicationRef`, which must exist. Its
/// reconcile triggers this Heartbeat again when it appears.
pub fn application(
    registry: &crate::core::registry::Registry,
    ns: &str,
    spec: &HeartbeatSpec,
) -> Result<Option<Arc<AppInfo>>, Stop> {
    let Some(r) = &spec.application_ref else {
        return Ok(None);
    };
    registry
        .application(&object_key(ns, &r.name))
        .map(Some)
        .ok_or_else(|| {
            Stop::wait(
                "ApplicationNotFound",
                format!(
                    "Application {} does not exist in namespace {ns} (or is not Ready yet); this Heartbeat is not monitored until it does",
                    r.name
                ),
            )
        })
}

/// Step cronJob: the CronJob named by `cronJobRef`, which must exist (in the watch cache).
/// Its watch triggers this Heartbeat again when it appears or changes.
pub async fn cron_job(
    ctx: &Context,
    ns: &str,
    spec: &HeartbeatSpec,
) -> Result<Option<WatchedCronJob>, Stop> {
    let Some(r) = &spec.cron_job_ref else {
        return Ok(None);
    };
    if !ctx.cron_jobs.served() {
        return Err(Stop::retry(
            "CronJobsNotWatched",
            "the API server serves no CronJob API the operator can read (batch/v1 or batch/v1beta1), or the operator may not list CronJobs, Jobs and Pods here; check the chart's RBAC",
        ));
    }
    // Before its first complete list the cache does not know the CronJob yet: a verdict
    // now would stop monitoring a CronJob that exists (after every restart).
    if !ctx.cron_jobs.ready_for(ns, CRON_JOBS_LISTED_WITHIN).await {
        return Err(Stop::Failed(ReconcileError::core(
            Step::Validate,
            "the CronJobs are not listed yet",
        )));
    }
    ctx.cron_jobs
        .cron_job(ns, &r.name)
        .map(|c| Some(c.watched()))
        .ok_or_else(|| {
            Stop::wait(
                "CronJobNotFound",
                format!(
                    "CronJob {} does not exist in namespace {ns}; this Heartbeat is not monitored until it does",
                    r.name
                ),
            )
        })
}

/// How long a reconcile waits for the CronJob watch's first complete list before it
/// tries again later.
const CRON_JOBS_LISTED_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The active monitors of application `app` that count against `hb`'s place in its
/// quota. A new monitor counts all the others (first come, first served); one already
/// active counts those of older Heartbeats (by creation, then name) and any whose
/// Heartbeat is not in the cache, so that when the limit is lowered the oldest keep their
/// places whatever order the Heartbeats are reconciled in, instead of each refusing for
/// the others.
fn counted_against(ctx: &Context, hb: &Heartbeat, app: &str, key: &str) -> usize {
    if ctx.core.engine.get(key).is_none() {
        return ctx.core.engine.count_for_application(app, Some(key));
    }
    let place = |h: &Heartbeat| (h.metadata.creation_timestamp.clone(), h.name_any());
    let mine = place(hb);
    ctx.core.engine.count_for_application_where(app, |m| {
        m.def.key != key
            && ctx
                .caches
                .heartbeat(m.def.namespace(), m.def.name())
                .is_none_or(|other| place(&other) < mine)
    })
}

fn quota_limit(app: &AppInfo) -> Option<u32> {
    app.spec.limits.as_ref().and_then(|l| l.heartbeats)
}

/// Step quota: refuses when the Application already owns as many other monitors as its
/// limit allows. A deletion among them triggers this Heartbeat again.
pub fn quota(app: &AppInfo, others: usize) -> Result<(), Stop> {
    match quota_limit(app) {
        Some(limit) if others >= limit as usize => Err(Stop::wait(
            "QuotaExceeded",
            format!(
                "Application {} may own {limit} Heartbeats and already owns {others}; this one is not monitored until one of them goes or the limit is raised",
                app.name
            ),
        )),
        _ => Ok(()),
    }
}

/// The Secret that holds the token: `tokenSecretName`, or `<name>-heartbeat`.
pub fn secret_name(spec: &HeartbeatSpec, name: &str) -> String {
    spec.token_secret_name
        .clone()
        .unwrap_or_else(|| format!("{name}-heartbeat"))
}

/// Step secret: ensures the token Secret (issued, ours, or adopted by opt-in).
async fn token_secret(
    hb: &Heartbeat,
    ctx: &Context,
    ns: &str,
    secret_name: &str,
) -> Result<Ensured, Stop> {
    let owner = hb
        .controller_owner_ref(&())
        .ok_or(ReconcileError::Incomplete("uid"))?;
    let base = ctx.config.base_url().to_string();
    let url = move |t: &crate::core::token::Token| Some(ping_url(&base, t.expose()));
    let owner_key = TokenOwner {
        kind: TokenKind::Heartbeat,
        key: object_key(ns, &hb.name_any()),
    };
    let taken = taken_by_another(&ctx.core.registry, &owner_key);
    // Armed with a token: a new one works before its Secret is written.
    let hold = ctx.core.engine.get(&owner_key.key).map(|_| secrets::Hold {
        registry: &ctx.core.registry,
        owner: owner_key.clone(),
    });
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let cached = ctx.caches.secret(ns, secret_name);
    secrets::ensure(
        &api,
        cached.as_deref(),
        Wanted {
            name: secret_name,
            owner,
            kind: TokenKind::Heartbeat,
            ping_url: &url,
            taken: &taken,
            cache_complete: ctx.caches.synced(),
            hold,
        },
    )
    .await
    .map_err(|e| secret_stop(e, ns))
}

/// What [`build`] turns into a monitor definition.
pub struct BuildInputs<'a> {
    /// The resource.
    pub hb: &'a Heartbeat,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its spec.
    pub spec: &'a HeartbeatSpec,
    /// Its Application.
    pub app: Option<&'a AppInfo>,
    /// The CronJob its `cronJobRef` names, as last seen.
    pub cron_job: Option<&'a WatchedCronJob>,
    /// Hash of its token.
    pub token: TokenHash,
    /// The Secret holding the token (for the ping hint in alerts).
    pub secret: &'a str,
    /// The server's default alert webhook.
    pub default_webhook: Option<&'a str>,
    /// The channels its alerts go through (resolved by step channels).
    pub channels: &'a [crate::core::alert::channels::ChannelRef],
    /// The definition in the engine now.
    pub existing: Option<&'a MonitorDef>,
    /// Now.
    pub now: Timestamp,
}

/// Step build (pure): the monitor definition for the core, by the core's one rule for
/// turning a Heartbeat into a monitor. Equal to `existing` when nothing changed. Refuses
/// when the timing cannot be read (such as a CronJob's time zone this build does not know).
pub fn build(i: &BuildInputs<'_>) -> Result<MonitorDef, Stop> {
    let name = i.hb.name_any();
    DeclaredHeartbeat {
        namespace: i.namespace,
        name: &name,
        spec: i.spec,
        application: i.app,
        cron_job: i.cron_job,
        token: i.token,
        ping_hint: format!(
            "curl -fsS -m 10 --retry 5 --retry-all-errors \"$PING_URL\" (the ping URL is key ping-url of Secret {}/{})",
            i.namespace, i.secret
        ),
        origin: Origin::Kubernetes,
        id: i
            .hb
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| object_key(i.namespace, &name)),
        channels: i.channels.to_vec(),
    }
    .monitor_def(i.existing, i.default_webhook, i.now)
    .map_err(|e| Stop::wait("InvalidSchedule", e.to_string()))
}

/// Step apply: registers the token (only when it is not registered to this monitor
/// already) and creates or changes the monitor (only when its definition changed), so an
/// unchanged resync writes nothing to disk.
async fn activate(
    ctx: &Context,
    def: MonitorDef,
    existing: Option<&MonitorDef>,
) -> Result<(), Stop> {
    let owner = TokenOwner {
        kind: TokenKind::Heartbeat,
        key: def.key.clone(),
    };
    let registry = &ctx.core.registry;
    // A token held ahead of its Secret is stored here.
    if registry.owner_of_hash(&def.token).as_ref() != Some(&owner) || registry.is_held(&def.token) {
        match registry
            .put_token(def.token, owner, existing.map(|d| d.token))
            .await
        {
            Ok(()) => {}
            Err(RegistryError::TokenInUse) => {
                return Err(Stop::retry(
                    "TokenInUse",
                    "the token in this Heartbeat's Secret is already used by another Heartbeat or Application; give each its own token",
                ));
            }
            Err(e) => return Err(ReconcileError::core(Step::Apply, e).into()),
        }
    }
    if existing != Some(&def) {
        ctx.core
            .engine
            .upsert(def)
            .await
            .map_err(|e| ReconcileError::core(Step::Apply, e))?;
    }
    Ok(())
}

/// Publishes a Normal Event for a token change a person should hear of. The first issue of
/// a token has none: `Ready=True` says it, and an Event would cost every new Heartbeat a
/// request.
async fn announce(ctx: &Context, hb: &Heartbeat, ns: &str, secret: &str, news: TokenNews) {
    let note = match news {
        TokenNews::Adopted => format!("using the token in Secret {secret}, which allows adoption"),
        TokenNews::Reissued => format!(
            "issued a new ping token and URL into Secret {secret}, which had none; the previous ping URL no longer works"
        ),
    };
    ctx.event(
        &Target::heartbeat(ns, &hb.name_any()),
        hb.metadata.uid.clone(),
        EventType::Normal,
        news.reason(),
        note,
        "IssueToken",
    )
    .await;
}

/// Stops monitoring `key` until it is accepted again: its token stops working at once,
/// and its monitor is suspended with its state and history.
async fn suspend(ctx: &Context, key: &str) -> Result<(), ReconcileError> {
    // A slot in the Application's quota is free.
    if let Some(m) = stop_monitoring(ctx, key, true, None).await?
        && let Some(app) = m.def.application()
    {
        ctx.triggers.quota_freed(ctx, app);
    }
    Ok(())
}

/// Stops monitoring `key` for good: its token stops working at once and its monitor goes
/// (its data stays when its `deletionPolicy` is `Retain`), with what a suspension kept.
/// With `uid` (the Heartbeat that is gone), only what was defined from that Heartbeat
/// (or from one whose uid was not recorded): a Heartbeat of its name created since keeps
/// its own monitor.
pub async fn deactivate(ctx: &Context, key: &str, uid: Option<&str>) -> Result<(), ReconcileError> {
    stop_monitoring(ctx, key, false, uid).await.map(|_| ())
}

/// Revokes `key`'s token and suspends (`keep`) or removes its monitor, the one of the
/// Heartbeat with `uid` only if one is given; returns the monitor it stopped, if there
/// was one.
async fn stop_monitoring(
    ctx: &Context,
    key: &str,
    keep: bool,
    uid: Option<&str>,
) -> Result<Option<crate::core::monitor::engine::Monitor>, ReconcileError> {
    let failed = |e| ReconcileError::core(Step::Cleanup, e);
    let engine = &ctx.core.engine;
    let remove = || async {
        match uid {
            Some(uid) => engine.remove_of(key, uid).await,
            None => engine.remove(key).await,
        }
    };
    let Some(m) = engine.get(key) else {
        // What an earlier suspension kept goes with a removal.
        if !keep {
            remove().await.map_err(failed)?;
        }
        return Ok(None);
    };
    if !same_resource(m.def.resource_uid(), uid) {
        // Another Heartbeat's of that name, created since.
        return Ok(None);
    }
    ctx.core
        .registry
        .remove_token(m.def.token)
        .await
        .map_err(|e| ReconcileError::core(Step::Cleanup, e))?;
    let stopped = if keep {
        engine.suspend(key).await
    } else {
        remove().await
    };
    stopped.map_err(failed)?;
    Ok(Some(m))
}

/// Clean-up after a deletion: the token and monitor go (the monitor's data stays when its
/// `deletionPolicy` is `Retain`), and the per-object state.
async fn cleanup(hb: &Heartbeat, ctx: &Context, ns: &str) -> Result<(), ReconcileError> {
    let name = hb.name_any();
    let key = object_key(ns, &name);
    let app = ctx
        .core
        .engine
        .get(&key)
        .and_then(|m| m.def.application().map(str::to_string));
    deactivate(ctx, &key, hb.metadata.uid.as_deref()).await?;
    let target = Target::heartbeat(ns, &name);
    ctx.verdicts.remove(&target);
    ctx.retries.reset(&target);
    // A slot in the Application's quota is free: look at the ones that waited for it.
    if let Some(app) = app {
        ctx.triggers.quota_freed(ctx, &app);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::{ApplicationRef, ApplicationSpec, Limits};

    fn heartbeat(spec: serde_json::Value) -> Heartbeat {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
            "metadata": {"name": "backup", "namespace": "shop", "uid": "u-1", "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    fn app(limit: Option<u32>) -> AppInfo {
        let spec = ApplicationSpec {
            limits: Some(Limits {
                heartbeats: limit,
                ..Default::default()
            }),
            alerts: Some(crate::core::spec::AlertTargets {
                email: vec!["ops@example.com".into()],
                webhook: None,
                webhook_secret_ref: None,
                ..Default::default()
            }),
            ..Default::default()
        };
        AppInfo {
            key: "shop/web".into(),
            num: 1,
            namespace: "shop".into(),
            name: "web".into(),
            limits: crate::core::limits::AppLimits::resolve(&spec, &Default::default()),
            ingest: None,
            counts: Default::default(),
            reads: Default::default(),
            spec,
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    fn refused(stop: Stop) -> (&'static str, String, bool) {
        match stop {
            Stop::Refused { refusal, retry } => (refusal.reason, refusal.message, retry),
            Stop::Failed(e) => panic!("not a refusal: {e}"),
        }
    }

    #[test]
    fn validation_refuses_out_of_range_intervals_until_the_spec_changes() {
        let hb = heartbeat(serde_json::json!({"interval": "400d"}));
        let (reason, message, retry) =
            refused(validate(&hb.spec.spec, SpecDuration::from_secs(60)).unwrap_err());
        assert_eq!(reason, "InvalidSpec");
        assert!(message.contains("400d"), "{message}");
        assert!(!retry, "only a spec change can fix it");
        let ok = heartbeat(serde_json::json!({"interval": "5m"}));
        assert!(validate(&ok.spec.spec, SpecDuration::from_secs(60)).is_ok());
    }

    #[tokio::test]
    async fn a_missing_application_is_refused_and_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            crate::config::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
        let metrics = &mut Default::default();
        let registry = crate::core::Services::open(&config.services(), metrics)
            .await
            .unwrap()
            .registry;
        let spec = HeartbeatSpec {
            application_ref: Some(ApplicationRef { name: "web".into() }),
            ..Default::default()
        };
        let (reason, message, retry) = refused(application(&registry, "shop", &spec).unwrap_err());
        assert_eq!(reason, "ApplicationNotFound");
        assert!(message.contains("web") && message.contains("shop"));
        assert!(!retry);
        assert!(
            application(&registry, "shop", &HeartbeatSpec::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_quota_counts_the_other_monitors_of_the_application() {
        assert!(quota(&app(Some(2)), 1).is_ok());
        let (reason, message, _) = refused(quota(&app(Some(2)), 2).unwrap_err());
        assert_eq!(reason, "QuotaExceeded");
        assert!(message.contains("may own 2"), "{message}");
        assert!(quota(&app(None), 1000).is_ok(), "no limit, no check");
    }

    #[test]
    fn build_resolves_defaults_targets_and_keeps_creation_time() {
        let hb = heartbeat(
            serde_json::json!({"displayName": "Backup", "applicationRef": {"name": "web"}}),
        );
        let a = app(None);
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let inputs = BuildInputs {
            hb: &hb,
            namespace: "shop",
            spec: &hb.spec.spec,
            app: Some(&a),
            cron_job: None,
            token: TokenHash::of("t"),
            secret: "backup-heartbeat",
            default_webhook: Some("https://hooks.example.com/x"),
            channels: &[],
            existing: None,
            now: t0,
        };
        let def = build(&inputs).unwrap();
        assert_eq!(def.key, "shop/backup");
        assert_eq!(def.id, "u-1");
        assert_eq!(def.interval_secs, 3600, "default interval");
        assert_eq!(def.grace_secs, 300, "default grace");
        assert_eq!(def.application(), Some("shop/web"));
        assert_eq!(
            def.targets,
            vec![crate::core::alert::message::Target::Email {
                to: vec!["ops@example.com".into()]
            }],
            "the Application's targets before the server default"
        );
        assert!(
            def.ping_hint().contains("Secret shop/backup-heartbeat"),
            "{}",
            def.ping_hint()
        );
        let later = build(&BuildInputs {
            existing: Some(&def),
            now: t0 + jiff::SignedDuration::from_secs(60),
            ..inputs
        })
        .unwrap();
        assert_eq!(later, def, "an unchanged spec builds the same definition");
        let paused = HeartbeatSpec {
            paused: true,
            ..hb.spec.spec.clone()
        };
        let changed = build(&BuildInputs {
            spec: &paused,
            existing: Some(&def),
            now: t0 + jiff::SignedDuration::from_secs(60),
            ..inputs
        })
        .unwrap();
        assert!(
            changed.paused
                && changed.updated_at > def.updated_at
                && changed.created_at == def.created_at
        );
    }

    #[test]
    fn ping_urls_and_secret_names() {
        assert_eq!(
            ping_url("http://h:8080", "hsh_x"),
            "http://h:8080/v1/heartbeats/hsh_x/ping"
        );
        let spec = HeartbeatSpec::default();
        assert_eq!(secret_name(&spec, "backup"), "backup-heartbeat");
        let named = HeartbeatSpec {
            token_secret_name: Some("mine".into()),
            ..Default::default()
        };
        assert_eq!(secret_name(&named, "backup"), "mine");
    }
}
