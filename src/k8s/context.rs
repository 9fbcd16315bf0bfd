//! State shared by the controllers, the status writer and the management-API facade.
//!
//! Everything here that is kept per object (verdicts, retry counts, quota locks) is
//! removed when the object goes, so memory follows the number of live objects.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::caches::Caches;
use super::instances::Instances;
use super::status::{StatusQueue, Target, Verdict};
use super::triggers::Triggers;
use crate::config::ServerConfig;
use crate::core::Services;

/// How often every object is reconciled even when nothing changed, before jitter. With
/// watch caches a resync costs no API request; it repairs what a missed event left behind.
pub const RESYNC: Duration = Duration::from_secs(3600);

/// Counters of the operator, for `/metrics`.
#[derive(Debug, Default)]
pub struct OperatorStats {
    /// Status writes sent.
    pub status_writes: AtomicU64,
    /// Time from a Heartbeat state transition to its status write.
    pub status_lag: crate::core::metrics::Histogram,
    /// Reconciles that failed and were retried.
    pub reconcile_errors: AtomicU64,
}

/// The verdicts of the last reconcile of each object.
#[derive(Debug, Default)]
pub struct Verdicts(RwLock<HashMap<Target, Verdict>>);

impl Verdicts {
    /// The verdict for `t`.
    pub fn get(&self, t: &Target) -> Option<Verdict> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(t)
            .cloned()
    }

    /// Records `v` for `t`; returns whether it differs from the one before.
    pub fn set(&self, t: &Target, v: Verdict) -> bool {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.insert(t.clone(), v.clone()) != Some(v)
    }

    /// Forgets `t` (deleted).
    pub fn remove(&self, t: &Target) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(t);
    }

    /// Every object with a verdict.
    pub fn targets(&self) -> Vec<Target> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Keeps only the verdicts for which `keep` holds.
    pub fn retain(&self, mut keep: impl FnMut(&Target) -> bool) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t, _| keep(t));
    }
}

/// Exponential backoff with jitter per object: `base · 2^n`, capped, times a random
/// factor in [0.5, 1.5) so that objects that failed together do not retry together.
#[derive(Debug)]
pub struct Retries {
    base: Duration,
    cap: Duration,
    attempts: Mutex<HashMap<Target, u32>>,
}

impl Default for Retries {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// The delay before attempt `n` (0-based), with `jitter` in [0, 1).
pub fn backoff(base: Duration, cap: Duration, n: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX));
    exp.min(cap).mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// A random factor in [0, 1).
pub fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` spread by ±10 %.
pub fn spread(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * jitter())
}

impl Retries {
    /// Backoff from `base` up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempts: Mutex::default(),
        }
    }

    /// The delay before the next attempt for `t`, counting this failure.
    pub fn next(&self, t: &Target) -> Duration {
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(t.clone()).or_insert(0);
        let d = backoff(self.base, self.cap, *n, jitter());
        *n = n.saturating_add(1);
        d
    }

    /// How many times in a row `t` failed.
    pub fn failures(&self, t: &Target) -> u32 {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(t)
            .copied()
            .unwrap_or(0)
    }

    /// `t` succeeded (or is gone): start from the base again.
    pub fn reset(&self, t: &Target) {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(t);
    }
}

/// One lock per Application that has a Heartbeat quota, held from the quota check to the
/// monitor's activation so two new monitors cannot both take the last slot. Applications
/// without a limit take no lock, and different Applications never wait for each other.
#[derive(Debug, Default)]
pub struct QuotaLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl QuotaLocks {
    /// The lock of Application `key`.
    pub fn of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Drops the lock of a removed Application (unless someone holds it right now).
    pub fn forget(&self, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(key);
        }
    }
}

/// The versions that a patch taking the legacy finalizer off went out from, per object
/// uid. The watch cache can hand a reconcile the object as it was before that patch (a
/// Secret's event starts one before the patched object has come back); sending the patch
/// again would only fail its `test` and cost a request and a retry. An entry is dropped
/// when the object is seen without the finalizer.
#[derive(Debug, Default)]
pub struct FinalizerPatches(Mutex<HashMap<String, String>>);

impl FinalizerPatches {
    /// Whether the patch already went out from this version of the object.
    pub fn sent_from(&self, uid: Option<&str>, version: Option<&str>) -> bool {
        let (Some(uid), Some(version)) = (uid, version) else {
            return false;
        };
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).is_some_and(|v| v == version)
    }

    /// The patch went out from `version`.
    pub fn sent(&self, uid: Option<&str>, version: Option<&str>) {
        if let (Some(uid), Some(version)) = (uid, version) {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(uid.to_string(), version.to_string());
        }
    }

    /// The object was seen without the finalizer, or deleted.
    pub fn forget(&self, uid: Option<&str>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(uid) = uid
            && !map.is_empty()
        {
            map.remove(uid);
        }
    }

    /// How many objects have a patch on its way back.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no patch is on its way back.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shared state of the controllers.
pub struct Context {
    /// The core's services.
    pub core: Services,
    /// The process configuration.
    pub config: ServerConfig,
    /// Kubernetes client.
    pub client: Client,
    /// Watch caches: the live objects.
    pub caches: Caches,
    /// Reconcile verdicts, for the status writer.
    pub verdicts: Verdicts,
    /// Retry backoff per object.
    pub retries: Retries,
    /// Quota locks per Application.
    pub quotas: QuotaLocks,
    /// Where the legacy finalizer's removal went out.
    pub finalizer_patches: FinalizerPatches,
    /// The status writer's inbox.
    pub status: StatusQueue,
    /// Other operator instances and who reconciles which namespace.
    pub instances: Instances,
    /// Reconcile requests across controllers (an Application's Heartbeats).
    pub triggers: Triggers,
    /// Counters.
    pub stats: OperatorStats,
    /// Recent reads of webhook Secrets.
    pub webhook_secrets: super::reconcile::alerts::WebhookSecrets,
    /// CronJobs and their Jobs, for Heartbeats with `cronJobRef`.
    pub cron_jobs: super::cronjobs::watch::CronJobCaches,
    /// AlertChannels, ClusterAlertChannels and the Secrets they read.
    pub channels: super::channels::ChannelCaches,
    recorder: Recorder,
    reporter: Reporter,
}

impl Context {
    /// A context; `instance` names this process in Events.
    pub fn new(
        core: Services,
        config: ServerConfig,
        client: Client,
        caches: Caches,
        status: StatusQueue,
        instances: Instances,
        triggers: Triggers,
    ) -> Self {
        let reporter = Reporter {
            controller: "hartslag".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            core,
            config,
            client,
            caches,
            verdicts: Verdicts::default(),
            retries: Retries::default(),
            quotas: QuotaLocks::default(),
            finalizer_patches: FinalizerPatches::default(),
            status,
            instances,
            triggers,
            stats: OperatorStats::default(),
            webhook_secrets: Default::default(),
            cron_jobs: Default::default(),
            channels: Default::default(),
        }
    }

    /// Publishes a Kubernetes Event about `about`; failures are logged, not fatal.
    pub async fn event(
        &self,
        about: &Target,
        uid: Option<String>,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        self.event_on(&reference(about, uid), type_, reason, note, action)
            .await;
    }

    /// Publishes a Kubernetes Event about `about` as one of its own, never folded into an
    /// earlier one of the same reason: a series keeps the first Event's note, and every
    /// state change has its own (which Job failed, with what exit code).
    pub async fn event_each(
        &self,
        about: &Target,
        uid: Option<String>,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let once = Recorder::new(self.client.clone(), self.reporter.clone());
        publish(&once, &reference(about, uid), type_, reason, note, action).await;
    }

    /// Publishes a Kubernetes Event about any object (such as a CronJob); failures are
    /// logged, not fatal.
    pub async fn event_on(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        publish(&self.recorder, reference, type_, reason, note, action).await;
    }

    /// The token a Heartbeat's Secret holds, read from the watch cache.
    pub fn heartbeat_token(&self, namespace: &str, name: &str) -> Option<String> {
        let verdict = self.verdicts.get(&Target::heartbeat(namespace, name))?;
        let super::status::Outcome::Ready { secret } = verdict.outcome else {
            return None;
        };
        let s = self.caches.secret(namespace, &secret)?;
        super::secrets::token_in(&s)
    }
}

/// Publishes `note` through `recorder`; failures are logged, not fatal.
async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::warn!(error = %e, kind = ?reference.kind, name = ?reference.name, reason, "cannot publish a Kubernetes Event");
    }
}

/// The reference an Event about `about` names.
fn reference(about: &Target, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("hartslag.dev/v1alpha1".into()),
        kind: Some(about.kind.as_str().into()),
        // Cluster-scoped objects (ClusterAlertChannel) have no namespace.
        namespace: (!about.namespace.is_empty()).then(|| about.namespace.clone()),
        name: Some(about.name.clone()),
        uid,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_around_it() {
        let (b, c) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff(b, c, 0, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(b, c, 3, 0.5), Duration::from_secs(8));
        assert_eq!(backoff(b, c, 30, 0.5), Duration::from_secs(300));
        assert_eq!(backoff(b, c, 3, 0.0), Duration::from_secs(4));
        assert!(backoff(b, c, 3, 0.999) < Duration::from_secs(12));
    }

    #[test]
    fn retries_count_per_object_and_reset() {
        let r = Retries::new(Duration::from_secs(1), Duration::from_secs(60));
        let t = Target::heartbeat("ns", "a");
        let first = r.next(&t);
        assert!(first >= Duration::from_millis(500) && first < Duration::from_millis(1500));
        let second = r.next(&t);
        assert!(second >= Duration::from_secs(1) && second < Duration::from_secs(3));
        assert_eq!(r.failures(&t), 2);
        r.reset(&t);
        assert_eq!(r.failures(&t), 0);
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
            let s = spread(Duration::from_secs(100));
            assert!(s >= Duration::from_secs(90) && s <= Duration::from_secs(110));
        }
    }

    #[tokio::test]
    async fn quota_locks_are_per_application_and_forgotten() {
        let q = QuotaLocks::default();
        let a = q.of("ns/a");
        let _held = a.lock().await;
        // Another Application does not wait.
        let b = q.of("ns/b");
        assert!(b.try_lock().is_ok());
        drop(b);
        q.forget("ns/b");
        assert_eq!(q.0.lock().unwrap().len(), 1, "ns/b forgotten, ns/a held");
        q.forget("ns/a");
        assert_eq!(q.0.lock().unwrap().len(), 1, "a held lock is kept");
    }
}
