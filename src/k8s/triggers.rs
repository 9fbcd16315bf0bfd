//! Reconcile requests across controllers. A Heartbeat depends on its Application (which
//! must exist, whose alert defaults and quota apply), so when an Application is applied or
//! deleted its Heartbeats are looked at again, and when a Heartbeat goes, the ones waiting
//! for a quota slot are. Requests go straight to the Heartbeat controller of the right
//! scope; nothing polls.

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use super::context::Context;
use super::crd::Heartbeat;
use super::status::{Kind, Outcome};

/// Senders into the Heartbeat controllers, one per watched scope.
#[derive(Debug, Default)]
pub struct Triggers {
    scopes: Vec<(Option<String>, mpsc::UnboundedSender<ObjectRef<Heartbeat>>)>,
}

/// The receiving end for one scope's Heartbeat controller.
pub type TriggerStream = mpsc::UnboundedReceiver<ObjectRef<Heartbeat>>;

impl Triggers {
    /// Triggers for `scopes` (`None`: the whole cluster), with one receiver per scope in
    /// the same order.
    pub fn new(scopes: &[Option<String>]) -> (Self, Vec<TriggerStream>) {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for s in scopes {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push((s.clone(), tx));
            receivers.push(rx);
        }
        (Self { scopes: senders }, receivers)
    }

    fn send(&self, namespace: &str, name: &str) {
        if let Some((_, tx)) = self
            .scopes
            .iter()
            .find(|(s, _)| s.as_deref().is_none_or(|s| s == namespace))
        {
            let _ = tx.send(ObjectRef::new(name).within(namespace));
        }
    }

    /// Application `app` in `namespace` was applied or deleted.
    pub fn application_changed(&self, ctx: &Context, namespace: &str, app: &str) {
        self.heartbeats_where(ctx, namespace, |hb| {
            hb.spec
                .spec
                .application_ref
                .as_ref()
                .is_some_and(|r| r.name == app)
        });
    }

    /// CronJob `cron_job` in `namespace` was applied or deleted: the Heartbeats whose
    /// `cronJobRef` names it take its schedule, time zone and `suspend`.
    pub fn cron_job_changed(&self, ctx: &Context, namespace: &str, cron_job: &str) {
        self.heartbeats_where(ctx, namespace, |hb| refers_to_cron_job(hb, cron_job));
    }

    /// A CronJob watch has a new complete list (at start, and after a relist): every
    /// Heartbeat with a `cronJobRef` is looked at again, those whose CronJob went while
    /// the watch was away included.
    pub fn cron_jobs_relisted(&self, ctx: &Context) {
        for scope in ctx.caches.scopes() {
            for hb in scope.heartbeats.state() {
                if let (Some(ns), Some(name)) = (&hb.metadata.namespace, &hb.metadata.name)
                    && hb.spec.spec.cron_job_ref.is_some()
                {
                    self.send(ns, name);
                }
            }
        }
    }

    /// Channel `id` appeared or went: the Heartbeats naming it (in its namespace, or in
    /// every namespace for a `ClusterAlertChannel`) resolve their channels again.
    pub fn channel_changed(&self, ctx: &Context, id: &crate::core::alert::channels::ChannelRef) {
        let refers = |hb: &Heartbeat| crate::k8s::channels::names(ctx, hb, &id.name);
        match &id.namespace {
            Some(ns) => self.heartbeats_where(ctx, ns, refers),
            None => {
                for scope in ctx.caches.scopes() {
                    for hb in scope.heartbeats.state() {
                        if let (Some(ns), Some(name)) = (&hb.metadata.namespace, &hb.metadata.name)
                            && refers(&hb)
                        {
                            self.send(ns, name);
                        }
                    }
                }
            }
        }
    }

    /// Reconciles the Heartbeats of `namespace` that satisfy `refers`.
    fn heartbeats_where(
        &self,
        ctx: &Context,
        namespace: &str,
        refers: impl Fn(&Heartbeat) -> bool,
    ) {
        for hb in ctx.caches.heartbeats_in(namespace) {
            if refers(&hb)
                && let Some(name) = hb.metadata.name.as_deref()
            {
                self.send(namespace, name);
            }
        }
    }

    /// A Heartbeat of Application `app_key` (`namespace/name`) went away.
    pub fn quota_freed(&self, ctx: &Context, app_key: &str) {
        let Some((namespace, app)) = app_key.split_once('/') else {
            return;
        };
        for target in ctx.verdicts.targets() {
            if target.kind != Kind::Heartbeat || target.namespace != namespace {
                continue;
            }
            let waiting = ctx.verdicts.get(&target).is_some_and(
                |v| matches!(&v.outcome, Outcome::Refused(r) if r.reason == "QuotaExceeded"),
            );
            let refers = ctx
                .caches
                .heartbeat(namespace, &target.name)
                .and_then(|hb| hb.spec.spec.application_ref.clone())
                .is_some_and(|r| r.name == app);
            if waiting && refers {
                self.send(namespace, &target.name);
            }
        }
    }
}

/// Whether `hb`'s `cronJobRef` names `cron_job`.
pub fn refers_to_cron_job(hb: &Heartbeat, cron_job: &str) -> bool {
    hb.spec
        .spec
        .cron_job_ref
        .as_ref()
        .is_some_and(|r| r.name == cron_job)
}
