//! The Application pipeline: validate → secret → apply → verdict, then the Heartbeats that
//! refer to it are looked at again (they may have waited for it, and its alert defaults
//! are theirs). Deletion (seen by the watch, or the start of one held by another
//! finalizer) revokes the token at once and removes or retains the events as
//! `deletionPolicy` says.
//!
//! A refused change leaves the Application as it was: its last accepted settings and token
//! stay in force (events keep flowing), and `Ready=False` says what was refused.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::{
    Frame, ReconcileError, Step, Stop, TokenNews, alerts, clean_up_gone, conclude, framed,
    secret_stop, still_cached, taken_by_another,
};
use crate::core::registry::{RegistryError, object_key};
use crate::core::spec::{ApplicationSpec, DeletionPolicy};
use crate::core::storage::TokenOwner;
use crate::core::token::TokenKind;
use crate::k8s::context::Context;
use crate::k8s::crd::Application;
use crate::k8s::secrets::{self, Ensured, Wanted};
use crate::k8s::status::{Lane, Target};

/// Reconciles an Application.
pub async fn reconcile(app: Arc<Application>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ctx = &ctx;
    match framed(app.as_ref(), ctx).await? {
        Frame::Elsewhere => Ok(Action::await_change()),
        Frame::Deleting(ns) => {
            cleanup(&app, ctx, &ns).await?;
            // Its status says it is being deleted: its token no longer works.
            let target = Target::application(&ns, &app.name_any());
            ctx.status.nudge(target, Lane::Verdict);
            Ok(Action::await_change())
        }
        Frame::Live(ns) => {
            let action = apply(&app, ctx, &ns).await?;
            if still_cached(ctx.caches.application(&ns, &app.name_any()), app.as_ref()) {
                return Ok(action);
            }
            cleanup(&app, ctx, &ns).await?;
            Ok(Action::await_change())
        }
    }
}

/// The watch saw Application `app` deleted (it is out of the cache already): its token is
/// revoked and its events removed or retained as its `deletionPolicy` says.
pub async fn gone(ctx: Arc<Context>, app: Application) {
    // Deleted right after its legacy finalizer was patched off: never seen without it.
    ctx.finalizer_patches.forget(app.meta().uid.as_deref());
    let Some(ns) = app.namespace() else {
        return;
    };
    if !ctx.instances.owns(&ns) {
        return;
    }
    let name = app.name_any();
    let target = Target::application(&ns, &name);
    let back = {
        let (ns, name) = (ns.clone(), name.clone());
        move |ctx: &Context| ctx.caches.application(&ns, &name).is_some()
    };
    clean_up_gone(ctx, target, back, move |ctx| {
        let (app, ns) = (app.clone(), ns.clone());
        async move { cleanup(&app, &ctx, &ns).await }
    })
    .await;
}

async fn apply(app: &Application, ctx: &Context, ns: &str) -> Result<Action, ReconcileError> {
    let name = app.name_any();
    let target = Target::application(ns, &name);
    let live = app.status.as_ref().map(|s| s.conditions.as_slice());
    let concluded = steps(app, ctx, ns, &name).await;
    let (next, ready) = conclude(ctx, &target, &app.metadata, live, concluded).await?;
    if ready {
        ctx.triggers.application_changed(ctx, ns, &name);
    }
    Ok(next)
}

async fn steps(app: &Application, ctx: &Context, ns: &str, name: &str) -> Result<String, Stop> {
    let spec = &app.spec.spec;
    validate(spec)?;
    // Its Heartbeats read the URL themselves; this shows a broken reference here too.
    alerts::resolve(ctx, ns, spec.alerts.as_ref()).await?;
    let secret_name = secret_name(spec, name);
    let ensured = token_secret(app, ctx, ns, &secret_name).await?;
    let news = TokenNews::of(
        &ensured,
        ctx.core
            .registry
            .application(&object_key(ns, name))
            .is_some(),
    );
    match ctx
        .core
        .registry
        .upsert_application(ns, name, spec.clone(), ensured.token.hash())
        .await
    {
        Ok(_) => {}
        Err(RegistryError::TokenInUse) => {
            return Err(Stop::retry(
                "TokenInUse",
                format!(
                    "the token in Secret {secret_name} is already used by another Application or Heartbeat; give each its own token"
                ),
            ));
        }
        Err(e) => return Err(ReconcileError::core(Step::Apply, e).into()),
    }
    if let Some(news) = news {
        announce(ctx, app, ns, &secret_name, news).await;
    }
    Ok(secret_name)
}

/// Step validate: the time zone, retention and alert targets.
pub fn validate(spec: &ApplicationSpec) -> Result<(), Stop> {
    spec.validate().map(|_| ()).map_err(|e| {
        Stop::wait(
            "InvalidSpec",
            format!("{e}; the last accepted settings stay in force"),
        )
    })
}

/// The Secret that holds the token: `tokenSecretName`, or `<name>-hartslag-token`.
pub fn secret_name(spec: &ApplicationSpec, name: &str) -> String {
    spec.token_secret_name
        .clone()
        .unwrap_or_else(|| format!("{name}-hartslag-token"))
}

async fn token_secret(
    app: &Application,
    ctx: &Context,
    ns: &str,
    secret_name: &str,
) -> Result<Ensured, Stop> {
    let owner = app
        .controller_owner_ref(&())
        .ok_or(ReconcileError::Incomplete("uid"))?;
    let owner_key = TokenOwner {
        kind: TokenKind::Application,
        key: object_key(ns, &app.name_any()),
    };
    let taken = taken_by_another(&ctx.core.registry, &owner_key);
    // Defined with a token: a new one works before its Secret is written.
    let hold = ctx
        .core
        .registry
        .application(&owner_key.key)
        .map(|_| secrets::Hold {
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
            kind: TokenKind::Application,
            ping_url: &|_| None,
            taken: &taken,
            cache_complete: ctx.caches.synced(),
            hold,
        },
    )
    .await
    .map_err(|e| secret_stop(e, ns))
}

/// Publishes a Normal Event for a token change a person should hear of (not the first
/// issue: `Ready=True` says it).
async fn announce(ctx: &Context, app: &Application, ns: &str, secret: &str, news: TokenNews) {
    let note = match news {
        TokenNews::Adopted => format!("using the token in Secret {secret}, which allows adoption"),
        TokenNews::Reissued => format!(
            "issued a new API token into Secret {secret}, which had none; the previous token no longer works"
        ),
    };
    ctx.event(
        &Target::application(ns, &app.name_any()),
        app.metadata.uid.clone(),
        EventType::Normal,
        news.reason(),
        note,
        "IssueToken",
    )
    .await;
}

/// Clean-up after a deletion: the token is revoked, the events go unless `deletionPolicy`
/// is `Retain`, and the per-object state goes.
async fn cleanup(app: &Application, ctx: &Context, ns: &str) -> Result<(), ReconcileError> {
    let name = app.name_any();
    let purge = app.spec.spec.deletion_policy != Some(DeletionPolicy::Retain);
    ctx.core
        .registry
        .remove_application(ns, &name, purge)
        .await
        .map_err(|e| ReconcileError::core(Step::Cleanup, e))?;
    let target = Target::application(ns, &name);
    ctx.verdicts.remove(&target);
    ctx.retries.reset(&target);
    ctx.quotas.forget(&object_key(ns, &name));
    // Its Heartbeats lose their Application: they say so in their status.
    ctx.triggers.application_changed(ctx, ns, &name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_time_zone_is_refused_and_the_old_settings_stay() {
        let spec: ApplicationSpec = serde_json::from_str(r#"{"timeZone":"Mars/Olympus"}"#).unwrap();
        match validate(&spec).unwrap_err() {
            Stop::Refused { refusal, retry } => {
                assert_eq!(refusal.reason, "InvalidSpec");
                assert!(refusal.message.contains("Mars/Olympus"));
                assert!(refusal.message.contains("last accepted settings"));
                assert!(!retry);
            }
            Stop::Failed(e) => panic!("{e}"),
        }
        assert_eq!(secret_name(&spec, "shop"), "shop-hartslag-token");
    }
}
