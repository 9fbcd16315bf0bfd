//! Kubernetes Events for Heartbeat state changes, so `kubectl describe heartbeat` and
//! `kubectl get events` tell the monitor's story (Down and Late as Warnings).

use std::sync::Arc;

use kube::runtime::events::EventType;
use tokio::sync::broadcast::error::RecvError;

use super::context::Context;
use super::status::Target;
use crate::core::monitor::engine::Origin;
use crate::core::monitor::state::State;

/// Publishes an Event for every transition of a Kubernetes monitor, until the engine stops.
pub async fn publish(ctx: Arc<Context>) {
    let mut changes = ctx.core.engine.subscribe();
    loop {
        let change = match changes.recv().await {
            Ok(c) => c,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "too many transitions at once; some Events were not published"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        tracing::debug!(monitor = %change.key, from = %change.from, to = %change.to, "transition");
        let Some(m) = ctx.core.engine.get(&change.key) else {
            continue;
        };
        if m.def.origin != Origin::Kubernetes || !ctx.instances.owns(m.def.namespace()) {
            continue;
        }
        let target = Target::heartbeat(m.def.namespace(), m.def.name());
        let uid = ctx
            .caches
            .heartbeat(&target.namespace, &target.name)
            .and_then(|h| h.metadata.uid.clone());
        let warning = matches!(change.to, State::Down | State::Late);
        let note = match &change.reason {
            Some(r) => format!("{} → {}: {r}", change.from, change.to),
            None => format!("{} → {}", change.from, change.to),
        };
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event_each(&target, uid, type_, change.to.as_str(), note, "StateChange")
            .await;
    }
}
