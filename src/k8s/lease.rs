//! A `coordination.k8s.io/v1` Lease used as a lock that one process holds at a time.
//!
//! The operator takes its Lease before it starts the controllers and the monitor scheduler,
//! renews it while it runs and clears the holder on shutdown, so the next instance starts
//! at once instead of waiting for the Lease to expire. The module knows nothing of what the
//! lock protects: a backend shared by several replicas can reuse it for "one leader".
//!
//! Written here rather than taken from a crate: kube-lease-manager (the one crate that
//! builds against kube 5) reports only "held or not", and we need the other holder's name
//! (to say who blocks us) and `leaseTransitions` as a fencing generation.
//!
//! Rules, in the order they matter:
//! - Expiry is judged by our own clock: a waiting instance takes the Lease over only after
//!   it has seen the holder's record unchanged for `leaseDurationSeconds`. Timestamps
//!   written by another node are never compared with ours, so clock skew cannot cause two
//!   holders.
//! - Every take-over goes through an optimistic update (the object's `resourceVersion`),
//!   so two waiting instances cannot both win.
//! - `leaseTransitions` grows by one on every change of holder; the value after our take
//!   is the fencing [`Leadership::generation`]: unique per acquisition and increasing.
//! - The holder gives the Lease up only on evidence that someone else holds it (or that it
//!   was deleted), not when the API server is unreachable: while nobody can reach the API
//!   server nobody else can take the Lease either, and a dead-man's switch that stops
//!   during an API-server outage would fail at the worst moment. When the server answers
//!   again the holder renews first or learns that it lost, and then stops.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Why the Lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server refused in a way that retrying will not fix (403: RBAC).
    #[error("Lease {lease}: {source}")]
    Refused {
        /// `namespace/name`.
        lease: String,
        /// What the API server said.
        source: kube::Error,
    },
}

/// Where the Lease lives and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This process; unique per process so that a restarted container is a new holder.
    pub identity: String,
    /// How long a renewal counts (`leaseDurationSeconds`).
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a waiting instance looks again.
    pub retry_every: Duration,
    /// Labels set on the Lease when it is taken.
    pub labels: BTreeMap<String, String>,
    /// Annotations set on the Lease when it is taken.
    pub annotations: BTreeMap<String, String>,
}

impl LeaseSettings {
    /// Kubernetes' usual timing: 15 s validity, renewed every 5 s, looked at every 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A unique holder identity: the pod name (or host name), the process id and a random
/// suffix.
pub fn identity() -> String {
    crate::core::leadership::identity()
}

/// The parts of a Lease that decide who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Current holder; `None` when released.
    pub holder: Option<String>,
    /// Last renewal as written by the holder (informational; never compared with our clock).
    pub renewed: Option<Timestamp>,
    /// Validity of a renewal.
    pub duration: Duration,
    /// Changes of holder so far.
    pub transitions: i64,
}

impl Record {
    /// The record of a Lease object.
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed: spec.renew_time.map(|t| t.0),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(15).max(1)).unwrap_or(15),
            ),
            transitions: i64::from(spec.lease_transitions.unwrap_or(0)),
        }
    }
}

/// When a holder's record last changed, by our clock.
#[derive(Debug, Default)]
pub struct Sighting {
    last: Option<(Option<String>, Option<Timestamp>, i64)>,
    since: Option<Instant>,
}

impl Sighting {
    /// Notes `record` seen at `now`; returns how long it has been unchanged.
    pub fn observe(&mut self, record: &Record, now: Instant) -> Duration {
        let seen = (record.holder.clone(), record.renewed, record.transitions);
        if self.last.as_ref() != Some(&seen) {
            self.last = Some(seen);
            self.since = Some(now);
        }
        now.saturating_duration_since(self.since.unwrap_or(now))
    }
}

/// What to do about the Lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease object: create it, held by us.
    Create,
    /// Free, or its holder stopped renewing: take it over.
    Take,
    /// Already ours (we restarted faster than it expired): carry on holding it.
    Keep,
    /// Held by `holder`, who renewed it within its validity.
    Wait {
        /// The live holder.
        holder: String,
    },
}

/// Decides from the current record, our identity and how long the record has been
/// unchanged by our clock.
pub fn decide(record: Option<&Record>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(record) = record else {
        return Decision::Create;
    };
    match &record.holder {
        None => Decision::Take,
        Some(h) if h == me => Decision::Keep,
        Some(h) if unchanged_for >= record.duration => {
            tracing::info!(holder = %h, "the Lease holder stopped renewing; taking over");
            Decision::Take
        }
        Some(h) => Decision::Wait { holder: h.clone() },
    }
}

/// The spec of a Lease held by `me`.
fn held_spec(
    settings: &LeaseSettings,
    transitions: i64,
    acquired: Option<MicroTime>,
    now: Timestamp,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(settings.duration.as_secs().max(1)).unwrap_or(15),
        ),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(i32::try_from(transitions).unwrap_or(i32::MAX)),
        ..Default::default()
    }
}

fn with_metadata(mut meta: ObjectMeta, settings: &LeaseSettings) -> ObjectMeta {
    if !settings.labels.is_empty() {
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .extend(settings.labels.clone());
    }
    if !settings.annotations.is_empty() {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(settings.annotations.clone());
    }
    meta
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_refusal(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 401 || s.code == 403)
}

/// Takes and holds one Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl Elector {
    /// An elector for the Lease `settings` name, through `client`.
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// Waits until this process holds the Lease, then keeps renewing it in the background.
    /// `waiting` is called whenever a different holder blocks us.
    pub async fn acquire(self, mut waiting: impl FnMut(&str)) -> Result<Leadership, LeaseError> {
        let key = self.settings.key();
        let mut sighting = Sighting::default();
        let mut blocked_by: Option<String> = None;
        loop {
            let current = match self.api.get_opt(&self.settings.name).await {
                Ok(c) => c,
                Err(e) if is_refusal(&e) => {
                    return Err(LeaseError::Refused {
                        lease: key,
                        source: e,
                    });
                }
                Err(e) => {
                    tracing::warn!(lease = %key, error = %e, "cannot read the Lease; retrying");
                    tokio::time::sleep(self.settings.retry_every).await;
                    continue;
                }
            };
            let record = current.as_ref().map(Record::of);
            let unchanged = record
                .as_ref()
                .map(|r| sighting.observe(r, Instant::now()))
                .unwrap_or_default();
            let now = Timestamp::now();
            let attempt = match decide(record.as_ref(), &self.settings.identity, unchanged) {
                Decision::Wait { holder } => {
                    if blocked_by.as_deref() != Some(&holder) {
                        waiting(&holder);
                        blocked_by = Some(holder);
                    }
                    tokio::time::sleep(self.settings.retry_every).await;
                    continue;
                }
                Decision::Create => {
                    let lease = Lease {
                        metadata: with_metadata(
                            ObjectMeta {
                                name: Some(self.settings.name.clone()),
                                ..Default::default()
                            },
                            &self.settings,
                        ),
                        spec: Some(held_spec(&self.settings, 0, None, now)),
                    };
                    self.api.create(&PostParams::default(), &lease).await
                }
                decision @ (Decision::Take | Decision::Keep) => {
                    let (Some(mut lease), Some(record)) = (current, record) else {
                        continue;
                    };
                    let (transitions, acquired) = if decision == Decision::Keep {
                        let acquired = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
                        (record.transitions, acquired)
                    } else {
                        (record.transitions.saturating_add(1), None)
                    };
                    lease.metadata = with_metadata(lease.metadata, &self.settings);
                    lease.spec = Some(held_spec(&self.settings, transitions, acquired, now));
                    self.api
                        .replace(&self.settings.name, &PostParams::default(), &lease)
                        .await
                }
            };
            match attempt {
                Ok(lease) => return Ok(Leadership::start(self, lease)),
                // Someone else moved first: look again.
                Err(e) if is_conflict(&e) => continue,
                Err(e) if is_refusal(&e) => {
                    return Err(LeaseError::Refused {
                        lease: key,
                        source: e,
                    });
                }
                Err(e) => {
                    tracing::warn!(lease = %key, error = %e, "cannot take the Lease; retrying");
                    tokio::time::sleep(self.settings.retry_every).await;
                }
            }
        }
    }
}

/// The Lease, held: renewed in the background until [`Leadership::release`].
pub struct Leadership {
    generation: i64,
    created: Option<Timestamp>,
    lost: watch::Receiver<Option<String>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    fn start(elector: Elector, lease: Lease) -> Self {
        let record = Record::of(&lease);
        let created = lease.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let (lost_tx, lost) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel();
        tracing::info!(
            lease = %elector.settings.key(),
            identity = %elector.settings.identity,
            generation = record.transitions,
            "holding the Lease"
        );
        let task = tokio::spawn(renew(elector, lease, lost_tx, stop_rx));
        Self {
            generation: record.transitions,
            created,
            lost,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The fencing generation: `leaseTransitions` after our take-over. Every acquisition
    /// gets a larger one, so a shared store can refuse writes carrying an older one.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// When the Lease object was created: how long this installation has held its claim.
    pub fn created(&self) -> Option<Timestamp> {
        self.created
    }

    /// Resolves when another process took the Lease (or it was deleted), with the reason.
    pub async fn lost(&mut self) -> String {
        loop {
            if let Some(reason) = self.lost.borrow_and_update().clone() {
                return reason;
            }
            if self.lost.changed().await.is_err() {
                return "the Lease renewal stopped".into();
            }
        }
    }

    /// A future that resolves like [`Leadership::lost`] without borrowing the leadership.
    pub fn on_lost(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            loop {
                if let Some(reason) = rx.borrow_and_update().clone() {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    return "the Lease renewal stopped".into();
                }
            }
        }
    }

    /// Stops renewing and clears the holder, so the next instance takes over at once.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn renew(
    elector: Elector,
    mut lease: Lease,
    lost: watch::Sender<Option<String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let Elector { api, settings } = elector;
    let key = settings.key();
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stop => {
                release(&api, &settings, lease).await;
                return;
            }
            _ = tokio::time::sleep(settings.renew_every) => {}
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match api
            .replace(&settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(renewed) => {
                if failing_since.take().is_some() {
                    tracing::info!(lease = %key, "renewing the Lease again");
                }
                lease = renewed;
            }
            Err(e) if is_conflict(&e) => match api.get_opt(&settings.name).await {
                Ok(Some(current))
                    if Record::of(&current).holder.as_ref() == Some(&settings.identity) =>
                {
                    // Someone edited its labels (a Helm upgrade, say); still ours.
                    let spec = lease.spec.take();
                    lease = current;
                    lease.spec = spec;
                }
                Ok(Some(current)) => {
                    let holder = Record::of(&current)
                        .holder
                        .unwrap_or_else(|| "nobody".into());
                    let _ = lost.send(Some(format!("Lease {key} is now held by {holder}")));
                    return;
                }
                Ok(None) => {
                    let _ = lost.send(Some(format!("Lease {key} was deleted")));
                    return;
                }
                Err(e) => tracing::warn!(lease = %key, error = %e, "cannot read the Lease"),
            },
            Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 404) => {
                let _ = lost.send(Some(format!("Lease {key} was deleted")));
                return;
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                // Keep holding: see the module documentation.
                tracing::warn!(
                    lease = %key,
                    error = %e,
                    failing_for = ?since.elapsed(),
                    "cannot renew the Lease; still holding it until the API server says otherwise"
                );
            }
        }
    }
}

async fn release(api: &Api<Lease>, settings: &LeaseSettings, mut lease: Lease) {
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
    }
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %settings.key(), "released the Lease"),
        Err(e) => {
            tracing::warn!(lease = %settings.key(), error = %e, "cannot release the Lease; it expires by itself")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, renewed: i64, transitions: i64) -> Record {
        Record {
            holder: holder.map(String::from),
            renewed: Some(Timestamp::from_second(1_700_000_000 + renewed).unwrap()),
            duration: Duration::from_secs(15),
            transitions,
        }
    }

    #[test]
    fn a_missing_or_free_lease_is_taken_and_our_own_is_kept() {
        assert_eq!(decide(None, "me", Duration::ZERO), Decision::Create);
        let free = record(None, 0, 3);
        assert_eq!(decide(Some(&free), "me", Duration::ZERO), Decision::Take);
        let mine = record(Some("me"), 0, 3);
        assert_eq!(decide(Some(&mine), "me", Duration::ZERO), Decision::Keep);
    }

    #[test]
    fn a_live_holder_blocks_until_its_record_stands_still_for_the_lease_duration() {
        let theirs = record(Some("other"), 0, 1);
        let wait = Decision::Wait {
            holder: "other".into(),
        };
        assert_eq!(decide(Some(&theirs), "me", Duration::from_secs(14)), wait);
        assert_eq!(
            decide(Some(&theirs), "me", Duration::from_secs(15)),
            Decision::Take
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_measured_by_our_clock_from_the_last_change_we_saw() {
        let mut sighting = Sighting::default();
        let t0 = Instant::now();
        // A renewal timestamp from the distant past says nothing: we start counting when
        // we first see the record.
        let ancient = record(Some("other"), -86_400, 1);
        assert_eq!(sighting.observe(&ancient, t0), Duration::ZERO);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(sighting.observe(&ancient, t1), Duration::from_secs(10));
        // A renewal restarts the count, whatever time the holder wrote.
        let renewed = record(Some("other"), -86_000, 1);
        assert_eq!(sighting.observe(&renewed, t1), Duration::ZERO);
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(sighting.observe(&renewed, t2), Duration::from_secs(20));
        assert_eq!(
            decide(Some(&renewed), "me", Duration::from_secs(20)),
            Decision::Take
        );
    }

    #[test]
    fn the_record_of_a_released_lease_has_no_holder() {
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(30),
                lease_transitions: Some(7),
                ..Default::default()
            }),
        };
        let r = Record::of(&lease);
        assert_eq!(r.holder, None);
        assert_eq!(r.duration, Duration::from_secs(30));
        assert_eq!(r.transitions, 7);
    }

    #[test]
    fn a_held_spec_names_us_and_counts_transitions() {
        let s = LeaseSettings::new("ops", "hartslag", "pod-1_abc");
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let spec = held_spec(&s, 4, None, now);
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-1_abc"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }
}
