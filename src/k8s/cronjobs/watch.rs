//! The CronJob and Job watches of each watched scope, and what their events set off:
//!
//! - a CronJob applied or deleted: the Heartbeats that name it in `cronJobRef` are
//!   reconciled again (its schedule, time zone and `suspend` are theirs), and its
//!   annotations are turned into a Heartbeat ([`super::annotated`]);
//! - a Job applied: its start, success or failure is reported to the monitors of the
//!   Heartbeats that name its CronJob ([`report_job`]).
//!
//! Pods are not cached: they are read (by the Job's `controller-uid` label) only when a Job
//! has failed, for the exit code of the container that failed it, and only once per Job.
//! CronJobs are read as dynamic objects of whichever version the server serves
//! ([`super::view::discover`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::evidence;
use super::view::CronJobView;
use jiff::Timestamp;

use crate::core::monitor::jobs::{JobOutcome, JobPhase, JobSignal, SeenJob};
use crate::core::registry::object_key;
use crate::k8s::caches::{slim, watch_config};
use crate::k8s::context::Context;

/// The caches of one scope (`namespace` `None`: the whole cluster).
#[derive(Clone)]
pub struct CronScope {
    namespace: Option<String>,
    cron_jobs: Store<DynamicObject>,
    jobs: Store<Job>,
    resource: ApiResource,
}

impl CronScope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

/// The CronJob and Job caches of every watched scope; empty until [`start`] found a
/// CronJob API to watch.
#[derive(Default)]
pub struct CronJobCaches {
    scopes: OnceLock<Vec<CronScope>>,
    /// What was last done about each CronJob's annotations.
    pub outcomes: super::annotated::Outcomes,
}

impl std::fmt::Debug for CronJobCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronJobCaches")
            .field("served", &self.served())
            .finish_non_exhaustive()
    }
}

impl CronJobCaches {
    /// Whether CronJobs are watched at all.
    pub fn served(&self) -> bool {
        self.scopes.get().is_some()
    }

    fn scope_of(&self, namespace: &str) -> Option<&CronScope> {
        self.scopes.get()?.iter().find(|s| s.covers(namespace))
    }

    /// The version of the CronJob API watched (`batch/v1` or `batch/v1beta1`).
    pub fn api_version(&self) -> Option<String> {
        Some(self.scopes.get()?.first()?.resource.api_version.clone())
    }

    /// Waits up to `within` until the caches of the scope covering `namespace` hold their
    /// first complete lists; false if they do not by then. Until then a CronJob missing
    /// from the cache may simply not be listed yet (the watch's first list is swapped in
    /// whole once it is complete).
    pub async fn ready_for(&self, namespace: &str, within: Duration) -> bool {
        let Some(scope) = self.scope_of(namespace) else {
            return true;
        };
        let both = async {
            let _ = scope.cron_jobs.wait_until_ready().await;
            let _ = scope.jobs.wait_until_ready().await;
        };
        tokio::time::timeout(within, both).await.is_ok()
    }

    /// A CronJob, as last seen.
    pub fn cron_job(&self, namespace: &str, name: &str) -> Option<CronJobView> {
        let scope = self.scope_of(namespace)?;
        let key = ObjectRef::new_with(name, scope.resource.clone()).within(namespace);
        CronJobView::read(scope.cron_jobs.get(&key)?.as_ref())
    }

    /// The Jobs of the CronJob with uid `uid` in `namespace`.
    pub fn jobs_of(&self, namespace: &str, uid: &str) -> Vec<Arc<Job>> {
        let Some(scope) = self.scope_of(namespace) else {
            return Vec::new();
        };
        scope.jobs.state_filter(|j| {
            j.metadata.namespace.as_deref() == Some(namespace) && evidence::belongs_to(j, uid)
        })
    }

    /// Waits until every cache holds its first complete list (at once when none is
    /// watched).
    pub async fn wait_synced(&self) {
        let Some(scopes) = self.scopes.get() else {
            return;
        };
        let again = Duration::from_millis(200);
        for s in scopes {
            while tokio::time::timeout(again, s.cron_jobs.wait_until_ready())
                .await
                .is_err()
            {}
            while tokio::time::timeout(again, s.jobs.wait_until_ready())
                .await
                .is_err()
            {}
        }
    }
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Discovers the CronJob API and starts the CronJob and Job watches of `scopes` over
/// `ctx`. Without a CronJob API (or without the RBAC to discover it) nothing is watched and
/// Heartbeats with `cronJobRef` say so in their status.
pub async fn start(
    ctx: &Arc<Context>,
    scopes: &[Option<String>],
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let resource = match super::view::discover(&ctx.client).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "CronJobs are not watched; Heartbeats with cronJobRef are not monitored");
            return Vec::new();
        }
    };
    // A chart from before CronJobs were watched grants no access to them: without this
    // look, the watches would retry for good and the operator never turn ready.
    for ns in scopes {
        if let Err(e) = readable(&ctx.client, ns.as_deref(), &resource).await {
            tracing::warn!(error = %e, namespace = ns.as_deref().unwrap_or("<all>"), "cannot list CronJobs or Jobs (check the chart's RBAC); CronJobs are not watched and Heartbeats with cronJobRef are not monitored");
            return Vec::new();
        }
    }
    tracing::info!(api_version = %resource.api_version, "watching CronJobs and their Jobs");
    let mut tasks = Vec::new();
    let mut caches = Vec::new();
    for ns in scopes {
        let (cron_writer, job_writer) = (
            Writer::<DynamicObject>::new(resource.clone()),
            Writer::<Job>::default(),
        );
        caches.push(CronScope {
            namespace: ns.clone(),
            cron_jobs: cron_writer.as_reader(),
            jobs: job_writer.as_reader(),
            resource: resource.clone(),
        });
        let cron_api = match ns {
            Some(n) => Api::<DynamicObject>::namespaced_with(ctx.client.clone(), n, &resource),
            None => Api::<DynamicObject>::all_with(ctx.client.clone(), &resource),
        };
        let cron_events = watcher::watcher(cron_api, watch_config())
            .default_backoff()
            .modify(slim)
            .reflect(cron_writer);
        let job_events = watcher::watcher(api::<Job>(&ctx.client, ns.as_deref()), watch_config())
            .default_backoff()
            .modify(slim)
            .reflect(job_writer);
        tasks.push(tokio::spawn(until_stopped(
            on_cron_jobs(ctx.clone(), cron_events),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(until_stopped(
            on_jobs(ctx.clone(), job_events),
            stop.clone(),
        )));
    }
    if ctx.cron_jobs.scopes.set(caches).is_err() {
        tracing::warn!("the CronJob watches were started twice");
    }
    tasks
}

/// Whether CronJobs and Jobs of the scope may be listed (one small list of each).
async fn readable(
    client: &Client,
    ns: Option<&str>,
    resource: &ApiResource,
) -> Result<(), kube::Error> {
    let cron_jobs = match ns {
        Some(n) => Api::<DynamicObject>::namespaced_with(client.clone(), n, resource),
        None => Api::<DynamicObject>::all_with(client.clone(), resource),
    };
    let one = ListParams::default().limit(1);
    cron_jobs.list_metadata(&one).await?;
    api::<Job>(client, ns).list_metadata(&one).await?;
    Ok(())
}

async fn until_stopped(work: impl Future<Output = ()>, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        () = work => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

async fn on_cron_jobs(
    ctx: Arc<Context>,
    events: impl futures::Stream<Item = Result<Event<DynamicObject>, watcher::Error>>,
) {
    let mut events = std::pin::pin!(events);
    // CronJobs of a (re)list: the cache swaps them in only once the list is complete, so
    // their Heartbeats are looked at then, with every CronJob the new list no longer has.
    let mut listed = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(obj)) => cron_job_seen(&ctx, &obj).await,
            Ok(Event::InitApply(obj)) => listed.push(obj),
            Ok(Event::Delete(obj)) => {
                if let Some(ns) = obj.namespace() {
                    ctx.triggers.cron_job_changed(&ctx, &ns, &obj.name_any());
                }
            }
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitDone) => {
                // Annotations are turned into Heartbeats by what the Heartbeat cache holds.
                ctx.caches.wait_synced().await;
                for obj in listed.drain(..) {
                    cron_job_seen(&ctx, &obj).await;
                }
                ctx.triggers.cron_jobs_relisted(&ctx);
            }
            Err(e) => tracing::warn!(error = %e, "watching CronJobs"),
        }
    }
}

async fn cron_job_seen(ctx: &Arc<Context>, obj: &DynamicObject) {
    let Some(view) = CronJobView::read(obj) else {
        return;
    };
    if !ctx.instances.owns(&view.namespace) {
        return;
    }
    ctx.triggers
        .cron_job_changed(ctx, &view.namespace, &view.name);
    super::annotated::sync(ctx, &view).await;
}

async fn on_jobs(
    ctx: Arc<Context>,
    events: impl futures::Stream<Item = Result<Event<Job>, watcher::Error>>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(job) | Event::InitApply(job)) => {
                // A failed Job's Pods are read from the API server: not in this loop.
                let ctx = ctx.clone();
                if evidence::failed(&job) {
                    tokio::spawn(async move { report_job(&ctx, &job).await });
                } else {
                    report_job(&ctx, &job).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching Jobs"),
        }
    }
}

/// The monitors (keys) of the Heartbeats in `namespace` whose `cronJobRef` names
/// `cron_job`.
fn monitors_of(ctx: &Context, namespace: &str, cron_job: &str) -> Vec<String> {
    ctx.caches
        .heartbeats_in(namespace)
        .iter()
        .filter(|hb| crate::k8s::triggers::refers_to_cron_job(hb, cron_job))
        .map(|hb| object_key(namespace, &hb.name_any()))
        .collect()
}

/// Reports `job` to the monitors of its CronJob's Heartbeats. A Job these monitors know
/// at its phase already is skipped (no Pod read), and so is one that ended before the
/// monitor existed: it is history, not news.
pub async fn report_job(ctx: &Context, job: &Job) {
    let Some(ns) = job.namespace() else { return };
    let Some(owner) = job
        .owner_references()
        .iter()
        .find(|o| o.kind == "CronJob")
        .cloned()
    else {
        return;
    };
    let current = ctx.cron_jobs.cron_job(&ns, &owner.name);
    if current.is_none_or(|c| c.uid != owner.uid) {
        return;
    }
    let keys = monitors_of(ctx, &ns, &owner.name);
    let mut exit_code = None;
    let mut pods_read = false;
    for key in keys {
        let Some(monitor) = ctx.core.engine.get(&key) else {
            continue;
        };
        let Some(probe) = evidence::signal(job, None) else {
            return;
        };
        if !news(&monitor.state.jobs, &probe, monitor.def.created_at) {
            continue;
        }
        if matches!(probe.outcome, JobOutcome::Failed { .. }) && !pods_read {
            exit_code = failed_exit_code(ctx, &ns, job).await;
            pods_read = true;
        }
        let Some(signal) = evidence::signal(job, exit_code) else {
            return;
        };
        if let Err(e) = ctx.core.engine.job(&key, signal).await {
            tracing::warn!(error = %e, monitor = %key, job = %job.name_any(), "cannot record the Job");
        }
    }
}

/// Whether `job` tells a monitor that remembers `seen` (and was created at `created`)
/// something new: a Job it has not seen (unless that Job ended before the monitor
/// existed: history, not news), or the end of one it saw running.
pub fn news(seen: &[SeenJob], job: &JobSignal, created: Timestamp) -> bool {
    let known = seen
        .iter()
        .find(|s| s.name == job.name && s.started_at == job.started_at);
    let ended = !matches!(job.outcome, JobOutcome::Running);
    match known {
        Some(k) => k.phase == JobPhase::Running && ended,
        None => !ended || job.at() >= created,
    }
}

/// The exit code that failed `job`, from its Pods (those still there).
async fn failed_exit_code(ctx: &Context, ns: &str, job: &Job) -> Option<u8> {
    let uid = job.uid()?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match pods
        .list(&ListParams::default().labels(&format!("controller-uid={uid}")))
        .await
    {
        Ok(list) => evidence::failed_exit_code(&list.items),
        Err(e) => {
            tracing::warn!(error = %e, job = %job.name_any(), "cannot read the failed Job's Pods for its exit code");
            None
        }
    }
}

/// Reports every cached Job to the monitors that watch its CronJob: once the caches hold
/// complete lists after a start, before deadlines are released, so a Job that ran while
/// the operator was down counts before its window is judged.
pub async fn report_everything(ctx: &Context) {
    let Some(scopes) = ctx.cron_jobs.scopes.get() else {
        return;
    };
    for scope in scopes {
        for job in scope.jobs.state() {
            report_job(ctx, &job).await;
        }
    }
}

/// Reports every Job of CronJob `cron_job` to the monitors that watch it: after a
/// Heartbeat's monitor is (re)defined, so a monitor made while a Job runs knows it.
pub async fn report_all(ctx: &Context, namespace: &str, cron_job: &str) {
    let Some(view) = ctx.cron_jobs.cron_job(namespace, cron_job) else {
        return;
    };
    for job in ctx.cron_jobs.jobs_of(namespace, &view.uid) {
        report_job(ctx, &job).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn job(outcome: JobOutcome) -> JobSignal {
        JobSignal {
            name: "nightly-1".into(),
            started_at: t(0),
            outcome,
            run_ids: vec!["nightly-1".into()],
        }
    }

    fn seen(phase: JobPhase) -> Vec<SeenJob> {
        vec![SeenJob {
            name: "nightly-1".into(),
            started_at: t(0),
            phase,
        }]
    }

    #[test]
    fn only_news_is_reported() {
        let running = job(JobOutcome::Running);
        let done = job(JobOutcome::Succeeded(t(60)));
        // Unknown: a running Job always, a finished one only if it ended after creation.
        assert!(news(&[], &running, t(100)));
        assert!(news(&[], &done, t(30)));
        assert!(!news(&[], &done, t(100)), "history, not news");
        // Seen running: its end is news, its running again is not.
        assert!(news(&seen(JobPhase::Running), &done, t(100)));
        assert!(!news(&seen(JobPhase::Running), &running, t(100)));
        // Seen ended: nothing more.
        assert!(!news(&seen(JobPhase::Succeeded), &done, t(0)));
        let failed = job(JobOutcome::Failed {
            at: t(60),
            reason: crate::core::monitor::jobs::JobFailure::BackoffLimitExceeded,
            exit_code: None,
        });
        assert!(!news(&seen(JobPhase::Failed), &failed, t(0)));
    }
}
