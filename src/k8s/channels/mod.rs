//! Alert channels in the operator: `AlertChannel` and `ClusterAlertChannel` resources,
//! watched with the Secrets they refer to ([`watch`]), resolved without I/O
//! ([`resolve`]), and settled into status verdicts and the core's channel set
//! ([`settle`]).
//!
//! A Heartbeat's `spec.alerts.channels` (or its Application's, when the Heartbeat sets no
//! alerts of its own) name channels: an `AlertChannel` in the Heartbeat's namespace first,
//! then a `ClusterAlertChannel`. A `ClusterAlertChannel`'s Secrets are read from the
//! operator's namespace. Channels read only Secrets labelled
//! [`resolve::CHANNEL_SECRET_LABEL`].

pub mod resolve;
pub mod settle;
pub mod watch;

use crate::core::alert::channels::{ChannelRef, channel_names};
use crate::core::registry::AppInfo;
use crate::core::spec::HeartbeatSpec;
use crate::k8s::context::Context;
use crate::k8s::crd::Heartbeat;

pub use resolve::CHANNEL_SECRET_LABEL;

/// Longest a Heartbeat's reconcile waits for the channel lists after a start.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
pub use watch::ChannelCaches;

/// Whether Heartbeat `hb` names channel `name` (itself, or through its Application's
/// defaults as the watch cache shows them).
pub fn names(ctx: &Context, hb: &Heartbeat, name: &str) -> bool {
    let spec = &hb.spec.spec;
    let app = match (hb.metadata.namespace.as_deref(), &spec.application_ref) {
        (Some(ns), Some(r)) => ctx.caches.application(ns, &r.name),
        _ => None,
    };
    let app_alerts = app.as_ref().and_then(|a| a.spec.spec.alerts.as_ref());
    channel_names(spec.alerts.as_ref(), app_alerts)
        .iter()
        .any(|c| c == name)
}

/// Step channels of the Heartbeat pipeline: every channel name that applies resolves to a
/// channel resource (`ChannelNotFound` otherwise, until a channel's watch event reconciles
/// the Heartbeat again). A channel whose Secret is missing still resolves: its deliveries
/// wait, and its own status says why.
pub async fn step(
    ctx: &Context,
    namespace: &str,
    spec: &HeartbeatSpec,
    app: Option<&AppInfo>,
) -> Result<Vec<ChannelRef>, crate::k8s::status::Refusal> {
    let app_alerts = app.and_then(|a| a.spec.alerts.as_ref());
    let names = channel_names(spec.alerts.as_ref(), app_alerts);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // Just after a start the channel lists may still be loading; a watch that cannot list
    // must not hold a reconcile for good (a channel event reconciles it again anyway).
    let _ = tokio::time::timeout(SYNC_WAIT, ctx.channels.wait_synced()).await;
    let caches = &ctx.channels;
    resolve::pick(namespace, names, |r| match &r.namespace {
        Some(ns) => caches.channel(ns, &r.name).is_some(),
        None => caches.cluster_channel(&r.name).is_some(),
    })
}
