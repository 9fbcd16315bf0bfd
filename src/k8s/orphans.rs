//! Monitors and Applications whose custom resource is gone.
//!
//! The watch's delete event removes a monitor when its resource is deleted while the
//! operator runs. What it cannot see — a resource deleted while the operator was down or
//! while its watch was broken, a namespace dropped from `--namespaces` or taken over by
//! another installation — is found here, by comparing the core's definitions with the
//! watch caches after every complete (re)list. An orphan's token stops working at once and
//! it never alerts again; its data is removed or retained as its `deletionPolicy` said.
//! The same goes for what a suspension kept of a refused Heartbeat's monitor: it goes with
//! its Heartbeat (unless `deletionPolicy: Retain`), also when a Heartbeat of the same name
//! (another uid) took its place meanwhile, which must not pick it up.

use std::sync::Arc;

use super::context::Context;
use super::reconcile::heartbeat::deactivate;
use super::status::Kind;
use crate::core::monitor::engine::Origin;
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
    /// The uid of the resource it was defined from (a monitor's id).
    pub id: String,
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
        id: m.def.id.clone(),
    }
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
    let gone = orphans(
        &monitors,
        |ns| ours(ctx, ns),
        |d| ctx.caches.heartbeat(&d.namespace, &d.name).is_some(),
    );
    for d in gone {
        tracing::info!(heartbeat = %d.key, "its Heartbeat is gone (or not ours to reconcile); removing the monitor");
        if let Err(e) = deactivate(ctx, &d.key).await {
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
            id: String::new(),
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
    let gone = orphans(
        &suspended,
        |ns| ours(ctx, ns),
        |d| {
            ctx.caches
                .heartbeat(&d.namespace, &d.name)
                .is_some_and(|h| h.metadata.uid.as_deref() == Some(d.id.as_str()))
        },
    );
    for d in gone {
        tracing::info!(heartbeat = %d.key, "the Heartbeat of a suspended monitor is gone (or not ours to reconcile); removing what the suspension kept");
        if let Err(e) = ctx.core.engine.forget_suspended(&d.key).await {
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
            id: format!("uid-{name}"),
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
}
