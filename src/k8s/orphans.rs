//! Monitors and Applications whose custom resource is gone.
//!
//! The watch's delete event removes a monitor when its resource is deleted while the
//! operator runs. What it cannot see — a resource deleted while the operator was down or
//! while its watch was broken, a namespace dropped from `--namespaces` or taken over by
//! another installation — is found here, by comparing the core's definitions with the
//! watch caches after every complete (re)list. An orphan's token stops working at once and
//! it never alerts again; its data is removed or retained as its `deletionPolicy` said.
//! A monitor belongs to its Heartbeat's uid: one whose Heartbeat was deleted and created
//! again under its name meanwhile is an orphan too (its incident closed, its history
//! removed or retained as its policy said), so the new Heartbeat starts afresh (or picks
//! up what `Retain` kept). A monitor recorded without a uid (see
//! [`crate::core::monitor::engine::resource_uid`]) belongs to whichever Heartbeat has its
//! name, which records its uid. The same goes for what a suspension kept of a refused
//! Heartbeat's monitor: it goes with its Heartbeat (unless `deletionPolicy: Retain`), also
//! when a Heartbeat of the same name (another uid) took its place meanwhile, which must not
//! pick it up.

use std::sync::Arc;

use super::context::Context;
use super::reconcile::heartbeat::deactivate;
use super::status::Kind;
use crate::core::monitor::engine::{Origin, same_resource};
use crate::core::spec::DeletionPolicy;

/// A definition in the core, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defined {
    /// `namespace/name`.
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The uid of the resource it was defined from, as recorded; `None`: whichever
    /// resource has its name is its own.
    pub uid: Option<String>,
}

impl Defined {
    /// Whether a live resource with uid `uid` is the one this was defined from.
    pub fn is_of(&self, uid: Option<&str>) -> bool {
        same_resource(self.uid.as_deref(), uid)
    }
}

/// The definitions that have no live resource: their namespace is not ours to reconcile
/// (`ours`), or the cache of that namespace lacks them (`exists`). Pure.
pub fn orphans(
    defined: &[Defined],
    ours: impl Fn(&str) -> bool,
    exists: impl Fn(&Defined) -> bool,
) -> Vec<Defined> {
    defined
        .iter()
        .filter(|d| !ours(&d.namespace) || !exists(d))
        .cloned()
        .collect()
}

fn defined(m: &crate::core::monitor::engine::Monitor) -> Defined {
    Defined {
        namespace: m.def.namespace().to_string(),
        name: m.def.name().to_string(),
        key: m.def.key.clone(),
        uid: m.def.resource_uid().map(str::to_string),
    }
}

/// Whether `d` has its live Heartbeat: one of its name, and of its uid if it recorded one.
fn heartbeat_of(ctx: &Context, d: &Defined) -> bool {
    ctx.caches
        .heartbeat(&d.namespace, &d.name)
        .is_some_and(|h| d.is_of(h.metadata.uid.as_deref()))
}

fn ours(ctx: &Context, namespace: &str) -> bool {
    ctx.caches.covers(namespace) && ctx.instances.owns(namespace)
}

/// Removes every orphaned monitor and Application, and forgets per-object state of
/// objects that are gone. Call only when the caches hold complete lists.
pub async fn sweep(ctx: &Arc<Context>) {
    let monitors: Vec<Defined> = ctx
        .core
        .engine
        .list()
        .iter()
        .filter(|m| m.def.origin == Origin::Kubernetes)
        .map(defined)
        .collect();
    let gone = orphans(&monitors, |ns| ours(ctx, ns), |d| heartbeat_of(ctx, d));
    for d in gone {
        tracing::info!(heartbeat = %d.key, uid = ?d.uid, "its Heartbeat is gone, or was created again (another uid), or is not ours to reconcile; removing the monitor");
        if let Err(e) = deactivate(ctx, &d.key, d.uid.as_deref()).await {
            tracing::warn!(heartbeat = %d.key, error = %e, "cannot remove an orphaned monitor; will try again");
        }
    }
    sweep_suspended(ctx).await;
    let apps: Vec<Defined> = ctx
        .core
        .registry
        .applications()
        .into_iter()
        .map(|a| Defined {
            key: a.key.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            uid: None,
        })
        .collect();
    let gone = orphans(
        &apps,
        |ns| ours(ctx, ns),
        |d| ctx.caches.application(&d.namespace, &d.name).is_some(),
    );
    for d in gone {
        let purge = ctx
            .core
            .registry
            .application(&d.key)
            .is_none_or(|a| a.spec.deletion_policy != Some(DeletionPolicy::Retain));
        tracing::info!(application = %d.key, purge, "its Application is gone (or not ours to reconcile); revoking its token");
        if let Err(e) = ctx
            .core
            .registry
            .remove_application(&d.namespace, &d.name, purge)
            .await
        {
            tracing::warn!(application = %d.key, error = %e, "cannot remove an orphaned Application; will try again");
        }
        ctx.quotas.forget(&d.key);
    }
    // Per-object state of objects that are gone.
    ctx.verdicts.retain(|t| {
        let live = match t.kind {
            Kind::Heartbeat => ctx.caches.heartbeat(&t.namespace, &t.name).is_some(),
            Kind::Application => ctx.caches.application(&t.namespace, &t.name).is_some(),
            // Channels settle their own verdicts as they come and go.
            Kind::AlertChannel | Kind::ClusterAlertChannel => return true,
        };
        let keep = live && ours(ctx, &t.namespace);
        if !keep {
            ctx.retries.reset(t);
        }
        keep
    });
}

/// Drops what suspensions kept of monitors whose Heartbeat is gone, is not ours to
/// reconcile, or was replaced by another of the same name (another uid): the active
/// monitors' sweep never sees them, and a Heartbeat of that name created later would pick
/// up their state and ping history. Records kept by `deletionPolicy: Retain` stay (the
/// engine keeps them), and so does a monitor defined under the key meanwhile.
async fn sweep_suspended(ctx: &Context) {
    let kept = match ctx.core.engine.retained_all().await {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the suspended monitors; will look again after the next relist");
            return;
        }
    };
    let suspended: Vec<Defined> = kept
        .iter()
        .filter(|m| m.def.origin == Origin::Kubernetes && !m.def.retain_on_delete())
        .map(defined)
        .collect();
    let gone = orphans(&suspended, |ns| ours(ctx, ns), |d| heartbeat_of(ctx, d));
    for d in gone {
        tracing::info!(heartbeat = %d.key, "the Heartbeat of a suspended monitor is gone (or not ours to reconcile); removing what the suspension kept");
        let forgotten = match &d.uid {
            Some(uid) => ctx.core.engine.forget_suspended_of(&d.key, uid).await,
            None => ctx.core.engine.forget_suspended(&d.key).await,
        };
        if let Err(e) = forgotten {
            tracing::warn!(heartbeat = %d.key, error = %e, "cannot remove a suspended monitor's record; will try again after the next relist");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ns: &str, name: &str) -> Defined {
        Defined {
            key: format!("{ns}/{name}"),
            namespace: ns.into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
        }
    }

    #[test]
    fn a_definition_without_its_resource_or_outside_our_namespaces_is_an_orphan() {
        let defined = vec![d("a", "kept"), d("a", "deleted"), d("dropped", "x")];
        let gone = orphans(
            &defined,
            |ns| ns == "a",
            |d| d.namespace == "a" && d.name == "kept",
        );
        assert_eq!(gone, vec![d("a", "deleted"), d("dropped", "x")]);
    }

    #[test]
    fn a_definition_whose_resource_was_created_again_is_an_orphan() {
        // Live: `again` under another uid, `kept` under its own, `legacy` under a uid
        // its definition did not record.
        let live = |d: &Defined| match d.name.as_str() {
            "again" => Some("uid-new"),
            "kept" => Some("uid-kept"),
            "legacy" => Some("uid-legacy"),
            _ => None,
        };
        let legacy = Defined {
            uid: None,
            ..d("a", "legacy")
        };
        let defined = vec![d("a", "again"), d("a", "kept"), legacy];
        let gone = orphans(
            &defined,
            |_| true,
            |d| live(d).is_some_and(|uid| d.is_of(Some(uid))),
        );
        assert_eq!(gone, vec![d("a", "again")]);
    }
}
