//! Settling channels: each channel in the caches is resolved ([`super::resolve`]), its
//! verdict goes to the status writer, the Heartbeats naming a channel that appeared or
//! went are reconciled again, and the core's channel book ([`ChannelBook`]) is brought up
//! to date: usable channels handed over with their secret values, the others removed.
//!
//! [`ChannelBook`]: crate::core::alert::channels::ChannelBook

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};

use super::resolve;
use crate::core::alert::channels::{ChannelRef, ResolvedChannel};
use crate::core::channel::AlertChannelSpec;
use crate::k8s::context::Context;
use crate::k8s::reconcile;
use crate::k8s::status::channel::Deliveries;
use crate::k8s::status::{Kind, Lane, Outcome, Refusal, Target, Verdict};

/// What a channel was settled to: the generation looked at, and the channel resolved or
/// why it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The generation looked at.
    pub generation: Option<i64>,
    /// The channel with its secret values, or the refusal for `Ready=False`.
    pub result: Result<ResolvedChannel, Refusal>,
    /// Its uid, for Events.
    pub uid: Option<String>,
}

/// The status target of a channel.
pub fn target(id: &ChannelRef) -> Target {
    match &id.namespace {
        Some(ns) => Target::alert_channel(ns, &id.name),
        None => Target::cluster_alert_channel(&id.name),
    }
}

/// The channel a status target names, if it is one.
pub fn channel_of(t: &Target) -> Option<ChannelRef> {
    match t.kind {
        Kind::AlertChannel => Some(ChannelRef::namespaced(&t.namespace, &t.name)),
        Kind::ClusterAlertChannel => Some(ChannelRef::cluster(&t.name)),
        Kind::Application | Kind::Heartbeat => None,
    }
}

/// Resolves one channel against the Secrets `lookup` finds in `namespace`, its URL checked
/// against the webhook address `policy`.
pub fn settle_one(
    id: ChannelRef,
    spec: &AlertChannelSpec,
    meta: &ObjectMeta,
    namespace: &str,
    lookup: impl Fn(&str) -> Option<std::sync::Arc<k8s_openapi::api::core::v1::Secret>>,
    policy: &crate::notify::guard::AddressPolicy,
) -> Settled {
    Settled {
        generation: meta.generation,
        result: resolve::resolve(id, spec, namespace, lookup, policy),
        uid: meta.uid.clone(),
    }
}

/// Every channel in the caches (of namespaces this installation reconciles), settled, with
/// its live conditions.
fn current(ctx: &Context) -> BTreeMap<ChannelRef, (Settled, Vec<Condition>)> {
    let mut out = BTreeMap::new();
    let caches = &ctx.channels;
    for ch in caches.channels() {
        let (Some(ns), Some(name)) = (&ch.metadata.namespace, &ch.metadata.name) else {
            continue;
        };
        if !ctx.instances.owns(ns) || ch.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let id = ChannelRef::namespaced(ns, name);
        let lookup = |n: &str| caches.secret(ns, n);
        let policy = &ctx.config.webhooks;
        let s = settle_one(id.clone(), &ch.spec.spec, &ch.metadata, ns, lookup, policy);
        let live = ch.status.clone().unwrap_or_default().conditions;
        out.insert(id, (s, live));
    }
    let home = caches.home().unwrap_or_default().to_string();
    for ch in caches.cluster_channels() {
        let Some(name) = &ch.metadata.name else {
            continue;
        };
        if ch.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let id = ChannelRef::cluster(name);
        let lookup = |n: &str| caches.secret(&home, n);
        let policy = &ctx.config.webhooks;
        let s = settle_one(
            id.clone(),
            &ch.spec.spec,
            &ch.metadata,
            &home,
            lookup,
            policy,
        );
        let live = ch.status.clone().unwrap_or_default().conditions;
        out.insert(id, (s, live));
    }
    out
}

/// The verdict a settled channel gives.
fn verdict(s: &Settled) -> Verdict {
    Verdict {
        generation: s.generation,
        outcome: match &s.result {
            Ok(_) => Outcome::Ready {
                secret: String::new(),
            },
            Err(r) => Outcome::Refused(r.clone()),
        },
    }
}

/// Settles every channel: new verdicts to the status writer (with a Warning Event for a
/// new refusal), Heartbeats naming a channel that appeared or went reconciled again, and
/// the core's book brought up to date.
pub async fn all(ctx: &Context) {
    let now = current(ctx);
    let before = {
        let mut settled = ctx
            .channels
            .settled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let next = now
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect();
        std::mem::replace(&mut *settled, next)
    };
    let book = &ctx.core.channels;
    for (id, (s, live)) in &now {
        let t = target(id);
        let v = verdict(s);
        let changed = before.get(id) != Some(s);
        if changed || ctx.verdicts.get(&t).as_ref() != Some(&v) {
            reconcile::settle(ctx, &t, s.uid.clone(), Some(live.as_slice()), v).await;
        }
        if changed {
            match &s.result {
                Ok(channel) => book.upsert(channel.clone()),
                Err(r) => {
                    tracing::info!(channel = %id, reason = r.reason, "alert channel not usable");
                    book.remove(id);
                }
            }
        }
        if !before.contains_key(id) {
            ctx.triggers.channel_changed(ctx, id);
        }
    }
    for id in before.keys().filter(|id| !now.contains_key(*id)) {
        book.remove(id);
        ctx.verdicts.remove(&target(id));
        ctx.retries.reset(&target(id));
        ctx.triggers.channel_changed(ctx, id);
    }
}

/// Asks the status writer to look at every settled channel (their delivery results
/// changed).
pub fn nudge_all(ctx: &Context) {
    let ids: Vec<ChannelRef> = ctx
        .channels
        .settled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    for id in ids {
        ctx.status.nudge(target(&id), Lane::Refresh);
    }
}

/// What the core reports of the deliveries through channel `t`.
pub fn deliveries(ctx: &Context, t: &Target) -> Option<Deliveries> {
    let status = ctx.core.channels.status(&channel_of(t)?);
    Some(Deliveries {
        last_delivery: status.last_delivery,
        last_error: status.last_error,
    })
}
