//! The status writer: the one task that writes the status of Applications, Heartbeats
//! and alert channels.
//!
//! It is nudged from three lanes and serves them in this order:
//! 1. verdicts — a reconcile concluded something new (follows the user's own writes, so it
//!    is not rate limited);
//! 2. transitions — the monitor engine changed a Heartbeat's state;
//! 3. refreshes — a periodic sweep over every object, for coarse facts (last ping,
//!    counts) and anything a failed write left behind.
//!
//! Transitions and refreshes share a budget of `max_per_sec` writes. For each nudge the
//! writer computes the desired status ([`super::model`]) from the current truth — not from
//! the nudge — compares it with the live object in the watch cache and writes only when
//! they differ, so nudges are cheap and may repeat. At most one write per object is in
//! flight, so writes to one object are never reordered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jiff::Timestamp;
use kube::api::Api;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::apply::apply_status;
use super::model::{self, AppCounts, ApplicationInputs, HeartbeatInputs, Verdict};
use super::{Kind, Target, WriterConfig};
use crate::core::monitor::engine::Origin;
use crate::k8s::context::{Context, spread};
use crate::k8s::crd::{
    AlertChannel, AlertChannelStatus, Application, ApplicationStatus, ClusterAlertChannel,
    Heartbeat, HeartbeatStatus,
};

/// Why the writer should look at an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A reconcile reached a new verdict.
    Verdict,
    /// The engine changed the state, at this time (for the lag metric).
    Transition(Timestamp),
    /// A periodic look.
    Refresh,
}

impl Lane {
    fn budgeted(self) -> bool {
        !matches!(self, Self::Verdict)
    }

    fn rank(self) -> usize {
        match self {
            Self::Verdict => 0,
            Self::Transition(_) => 1,
            Self::Refresh => 2,
        }
    }
}

/// A request to look at one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nudge {
    /// The object.
    pub target: Target,
    /// Why.
    pub lane: Lane,
}

/// The writer's inbox; cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusQueue(mpsc::UnboundedSender<Nudge>);

impl StatusQueue {
    /// A queue and the receiving end for [`run`].
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Nudge>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Asks the writer to look at `target`.
    pub fn nudge(&self, target: Target, lane: Lane) {
        let _ = self.0.send(Nudge { target, lane });
    }
}

/// A token bucket: `rate` per second, at most `burst` saved up.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// A full bucket.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            burst: rate,
            tokens: rate,
            at: now,
        }
    }

    /// Takes one token, or says when the next one will be there.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Three FIFO lanes; an object waits at most once per lane.
#[derive(Debug, Default)]
struct Queues {
    lanes: [VecDeque<(Target, Lane)>; 3],
    queued: [HashSet<Target>; 3],
}

impl Queues {
    fn push(&mut self, target: Target, lane: Lane) {
        let r = lane.rank();
        if self.queued[r].insert(target.clone()) {
            self.lanes[r].push_back((target, lane));
        }
    }

    fn push_front(&mut self, target: Target, lane: Lane) {
        let r = lane.rank();
        if self.queued[r].insert(target.clone()) {
            self.lanes[r].push_front((target, lane));
        }
    }

    fn pop(&mut self) -> Option<(Target, Lane)> {
        for r in 0..3 {
            if let Some((t, lane)) = self.lanes[r].pop_front() {
                self.queued[r].remove(&t);
                return Some((t, lane));
            }
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }
}

/// A status to send.
#[derive(Clone)]
enum Write {
    Heartbeat(HeartbeatStatus),
    Application(ApplicationStatus),
    Channel(AlertChannelStatus),
}

/// What this writer wrote to each object that its watch cache has not shown back yet:
/// the status, and the `resourceVersion` the cache held when it was written. Until the
/// cache moves past that version the written status stands for the live one, so a second
/// look in that window does not write the same status again. An entry goes as soon as the
/// cache catches up.
#[derive(Default)]
struct Unseen(HashMap<Target, (Option<String>, Write)>);

impl Unseen {
    /// The status written to `t`, while the cache still shows the version `live_rv`.
    fn live(&mut self, t: &Target, live_rv: &Option<String>) -> Option<Write> {
        match self.0.get(t) {
            Some((rv, w)) if rv == live_rv => Some(w.clone()),
            Some(_) => {
                self.0.remove(t);
                None
            }
            None => None,
        }
    }
}

/// The status Heartbeat `t` should get, if it differs from the live one (or from what
/// this writer wrote and the cache does not show yet: `unseen`).
fn heartbeat_write(
    ctx: &Context,
    t: &Target,
    refresh: Duration,
    unseen: &mut Unseen,
) -> Option<(Option<String>, HeartbeatStatus)> {
    let live = ctx.caches.heartbeat(&t.namespace, &t.name)?;
    let rv = live.metadata.resource_version.clone();
    let monitor = ctx
        .core
        .engine
        .get(&t.key())
        .filter(|m| m.def.origin == Origin::Kubernetes);
    let verdict = if live.metadata.deletion_timestamp.is_some() {
        // Held by someone else's finalizer: not Ready any more once its clean-up took the
        // monitor (and token) away, which nudges this writer.
        if monitor.is_some() {
            return None;
        }
        Verdict::deleting(live.metadata.generation, model::HEARTBEAT_DELETING)
    } else {
        ctx.verdicts.get(t)?
    };
    let live_status = match unseen.live(t, &rv) {
        Some(Write::Heartbeat(st)) => st,
        _ => live.status.clone().unwrap_or_default(),
    };
    let conflict = ctx.instances.conflict_note(&t.namespace);
    let want = model::heartbeat_status(HeartbeatInputs {
        verdict: &verdict,
        monitor: monitor.as_ref(),
        live: &live_status,
        conflict: conflict.as_deref(),
        now: ctx.core.engine.clock().now(),
        refresh,
    })?;
    (want != live_status).then_some((rv, want))
}

/// The counts of Application `key`, when it is registered.
async fn counts(ctx: &Context, key: &str) -> Option<AppCounts> {
    let app = ctx.core.registry.application(key)?;
    let events = &ctx.core.events;
    let periods = crate::core::calendar::Periods::at(Timestamp::now(), &app.tz);
    let report = events.stats(app.num, periods, None, None).await.ok()?;
    let last_event = events.last_event_at(app.num).await.ok()?;
    Some(AppCounts { report, last_event })
}

/// The status Application `t` should get, if it differs from the live one (or from
/// `unseen`).
async fn application_write(
    ctx: &Context,
    t: &Target,
    unseen: &mut Unseen,
) -> Option<(Option<String>, ApplicationStatus)> {
    let live = ctx.caches.application(&t.namespace, &t.name)?;
    let rv = live.metadata.resource_version.clone();
    let verdict = if live.metadata.deletion_timestamp.is_some() {
        // As for a Heartbeat: not Ready once its clean-up revoked the token.
        if ctx.core.registry.application(&t.key()).is_some() {
            return None;
        }
        Verdict::deleting(live.metadata.generation, model::APPLICATION_DELETING)
    } else {
        ctx.verdicts.get(t)?
    };
    let counts = counts(ctx, &t.key()).await;
    let live_status = match unseen.live(t, &rv) {
        Some(Write::Application(st)) => st,
        _ => live.status.clone().unwrap_or_default(),
    };
    let conflict = ctx.instances.conflict_note(&t.namespace);
    let want = model::application_status(ApplicationInputs {
        verdict: &verdict,
        counts: counts.as_ref(),
        live: &live_status,
        conflict: conflict.as_deref(),
        now: Timestamp::now(),
    });
    (want != live_status).then_some((rv, want))
}

/// A channel's live `resourceVersion` and status, unless it is gone or being deleted.
fn live_channel(ctx: &Context, t: &Target) -> Option<(Option<String>, AlertChannelStatus)> {
    let (meta, status) = match t.kind {
        Kind::AlertChannel => {
            let c = ctx.channels.channel(&t.namespace, &t.name)?;
            (c.metadata.clone(), c.status.clone())
        }
        Kind::ClusterAlertChannel => {
            let c = ctx.channels.cluster_channel(&t.name)?;
            (c.metadata.clone(), c.status.clone())
        }
        _ => return None,
    };
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    Some((meta.resource_version, status.unwrap_or_default()))
}

/// The status channel `t` should get, if it differs from the live one (or from `unseen`).
fn channel_write(
    ctx: &Context,
    t: &Target,
    unseen: &mut Unseen,
) -> Option<(Option<String>, AlertChannelStatus)> {
    let (rv, live) = live_channel(ctx, t)?;
    let verdict = ctx.verdicts.get(t)?;
    let live_status = match unseen.live(t, &rv) {
        Some(Write::Channel(st)) => st,
        _ => live,
    };
    let deliveries = crate::k8s::channels::settle::deliveries(ctx, t);
    let want = super::channel::channel_status(super::channel::ChannelInputs {
        verdict: &verdict,
        deliveries: deliveries.as_ref(),
        live: &live_status,
        now: Timestamp::now(),
    });
    (want != live_status).then_some((rv, want))
}

/// What to write to `t`, with the `resourceVersion` it was computed against.
async fn desired(
    ctx: &Context,
    t: &Target,
    refresh: Duration,
    unseen: &mut Unseen,
) -> Option<(Option<String>, Write)> {
    // A ClusterAlertChannel belongs to no namespace; every installation may write it.
    if t.kind != Kind::ClusterAlertChannel && !ctx.instances.owns(&t.namespace) {
        return None;
    }
    match t.kind {
        Kind::Heartbeat => {
            heartbeat_write(ctx, t, refresh, unseen).map(|(rv, st)| (rv, Write::Heartbeat(st)))
        }
        Kind::Application => application_write(ctx, t, unseen)
            .await
            .map(|(rv, st)| (rv, Write::Application(st))),
        Kind::AlertChannel | Kind::ClusterAlertChannel => {
            channel_write(ctx, t, unseen).map(|(rv, st)| (rv, Write::Channel(st)))
        }
    }
}

/// A finished write: the object, why, what was written against which version, the outcome.
type Sent = (
    Target,
    Lane,
    Option<String>,
    Write,
    Result<bool, kube::Error>,
);

async fn send(ctx: Arc<Context>, t: Target, lane: Lane, rv: Option<String>, write: Write) -> Sent {
    let result = match &write {
        Write::Heartbeat(st) => {
            let api: Api<Heartbeat> = Api::namespaced(ctx.client.clone(), &t.namespace);
            apply_status(&api, &t.name, st).await
        }
        Write::Application(st) => {
            let api: Api<Application> = Api::namespaced(ctx.client.clone(), &t.namespace);
            apply_status(&api, &t.name, st).await
        }
        Write::Channel(st) if t.kind == Kind::ClusterAlertChannel => {
            let api: Api<ClusterAlertChannel> = Api::all(ctx.client.clone());
            apply_status(&api, &t.name, st).await
        }
        Write::Channel(st) => {
            let api: Api<AlertChannel> = Api::namespaced(ctx.client.clone(), &t.namespace);
            apply_status(&api, &t.name, st).await
        }
    };
    (t, lane, rv, write, result)
}

/// Every object in the watch caches.
fn everything(ctx: &Context) -> Vec<Target> {
    let mut out = Vec::new();
    for scope in ctx.caches.scopes() {
        for hb in scope.heartbeats.state() {
            if let (Some(ns), Some(name)) = (&hb.metadata.namespace, &hb.metadata.name) {
                out.push(Target::heartbeat(ns, name));
            }
        }
        for app in scope.applications.state() {
            if let (Some(ns), Some(name)) = (&app.metadata.namespace, &app.metadata.name) {
                out.push(Target::application(ns, name));
            }
        }
    }
    for c in ctx.channels.channels() {
        if let (Some(ns), Some(name)) = (&c.metadata.namespace, &c.metadata.name) {
            out.push(Target::alert_channel(ns, name));
        }
    }
    for c in ctx.channels.cluster_channels() {
        if let Some(name) = &c.metadata.name {
            out.push(Target::cluster_alert_channel(name));
        }
    }
    out
}

fn record(
    ctx: &Context,
    t: &Target,
    lane: Lane,
    result: Result<bool, kube::Error>,
    retry: &StatusQueue,
) {
    use std::sync::atomic::Ordering::Relaxed;
    match result {
        Ok(cleaned) => {
            ctx.stats
                .status_writes
                .fetch_add(1 + u64::from(cleaned), Relaxed);
            if let Lane::Transition(at) = lane {
                let lag = Timestamp::now().duration_since(at);
                ctx.stats
                    .status_lag
                    .observe(Duration::try_from(lag).unwrap_or_default());
            }
        }
        // Deleted meanwhile: nothing to write.
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            tracing::warn!(object = %t, error = %e, "status write failed; will retry");
            let (retry, t) = (retry.clone(), t.clone());
            tokio::spawn(async move {
                tokio::time::sleep(spread(Duration::from_secs(5))).await;
                retry.nudge(t, lane);
            });
        }
    }
}

/// Runs the writer until the engine stops. `inbox` is the receiving end of the context's
/// [`StatusQueue`]; `retry` a sender into it.
pub async fn run(
    ctx: Arc<Context>,
    mut inbox: mpsc::UnboundedReceiver<Nudge>,
    retry: StatusQueue,
    config: WriterConfig,
) {
    let mut changes = ctx.core.engine.subscribe();
    let mut ownership = ctx.instances.subscribe();
    let mut queues = Queues::default();
    let mut budget = Budget::new(config.max_per_sec, Instant::now());
    let mut inflight = FuturesUnordered::new();
    let mut busy: HashSet<Target> = HashSet::new();
    let mut again: HashMap<Target, Lane> = HashMap::new();
    let mut unseen = Unseen::default();
    let mut sweep = tokio::time::interval(config.refresh);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut budget_at = None;
        while inflight.len() < config.concurrency.max(1) && !queues.is_empty() {
            let Some((target, lane)) = queues.pop() else {
                break;
            };
            if busy.contains(&target) {
                let keep = again.get(&target).is_some_and(|l| l.rank() <= lane.rank());
                if !keep {
                    again.insert(target, lane);
                }
                continue;
            }
            let Some((rv, write)) = desired(&ctx, &target, config.refresh, &mut unseen).await
            else {
                continue;
            };
            if lane.budgeted()
                && let Err(when) = budget.take(Instant::now())
            {
                queues.push_front(target, lane);
                budget_at = Some(when);
                break;
            }
            busy.insert(target.clone());
            inflight.push(send(ctx.clone(), target, lane, rv, write));
        }
        tokio::select! {
            nudge = inbox.recv() => match nudge {
                Some(n) => queues.push(n.target, n.lane),
                None => return,
            },
            change = changes.recv() => match change {
                Ok(c) => {
                    if let Some((ns, name)) = c.key.split_once('/') {
                        queues.push(Target::heartbeat(ns, name), Lane::Transition(c.at));
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "transitions came faster than status writes; looking at everything");
                    for t in everything(&ctx) {
                        queues.push(t, Lane::Refresh);
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = sweep.tick() => {
                let all = everything(&ctx);
                // Forget what was written to objects that are gone.
                let live: HashSet<&Target> = all.iter().collect();
                unseen.0.retain(|t, _| live.contains(t));
                for t in all {
                    queues.push(t, Lane::Refresh);
                }
            }
            _ = ownership.changed() => {
                for t in everything(&ctx) {
                    queues.push(t, Lane::Refresh);
                }
            }
            Some((target, lane, rv, write, result)) = inflight.next(), if !inflight.is_empty() => {
                busy.remove(&target);
                if result.is_ok() {
                    unseen.0.insert(target.clone(), (rv, write));
                }
                record(&ctx, &target, lane, result, &retry);
                if let Some(l) = again.remove(&target) {
                    queues.push(target, l);
                }
            }
            _ = async { if let Some(at) = budget_at { tokio::time::sleep_until(at).await } }, if budget_at.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::status::{Outcome, Refusal, Verdict};
    use crate::k8s::testing::{Seen, context, heartbeat, mock_client, status_error};
    use serde_json::{Value, json};

    /// Applies a status by echoing it on the object, as the API server would.
    fn api(req: &Seen) -> (u16, Value) {
        if req.method == "PATCH" && req.uri.contains("/status") {
            let mut obj = serde_json::to_value(heartbeat("job", json!({}), &[])).unwrap();
            obj["status"] = req.body["status"].clone();
            return (200, obj);
        }
        (500, status_error(500, "unexpected"))
    }

    #[tokio::test]
    async fn status_is_applied_server_side_once_and_not_again_when_the_live_object_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let (client, log) = mock_client(api);
        let (ctx, mut caches, inbox) = context(dir.path(), client).await;
        let hb = heartbeat(
            "job",
            json!({"interval": "400d"}),
            &["hartslag.dev/cleanup"],
        );
        caches.heartbeat(&hb);
        let target = Target::heartbeat("shop", "job");
        ctx.verdicts.set(
            &target,
            Verdict {
                generation: Some(1),
                outcome: Outcome::Refused(Refusal::new(
                    "InvalidSpec",
                    "spec.interval 400d is out of range",
                )),
            },
        );
        let config = WriterConfig {
            refresh: Duration::from_secs(3600),
            ..Default::default()
        };
        tokio::spawn(run(ctx.clone(), inbox, ctx.status.clone(), config));
        ctx.status.nudge(target.clone(), Lane::Verdict);
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no status write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = log.lock().unwrap()[0].clone();
        assert_eq!(sent.method, "PATCH");
        assert!(
            sent.uri
                .starts_with("/apis/hartslag.dev/v1alpha1/namespaces/shop/heartbeats/job/status?"),
            "{}",
            sent.uri
        );
        assert!(
            sent.uri.contains("fieldManager=hartslag") && sent.uri.contains("force=true"),
            "{}",
            sent.uri
        );
        assert_eq!(sent.content_type, "application/apply-patch+yaml");
        assert_eq!(
            (sent.body["apiVersion"].as_str(), sent.body["kind"].as_str()),
            (Some("hartslag.dev/v1alpha1"), Some("Heartbeat"))
        );
        let status = &sent.body["status"];
        assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
        assert!(
            status.get("state").is_none() && status.get("nextDueAt").is_none(),
            "{status}"
        );
        assert_eq!(status["observedGeneration"], 1);

        // The watch brings the written status back: nudges now find nothing to write.
        let mut written = hb;
        written.status = Some(serde_json::from_value(status.clone()).unwrap());
        caches.heartbeat(&written);
        ctx.status.nudge(target.clone(), Lane::Verdict);
        ctx.status.nudge(target, Lane::Refresh);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            log.lock().unwrap().len(),
            1,
            "wrote a status equal to the live one"
        );
        assert_eq!(
            ctx.stats
                .status_writes
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn an_object_held_in_its_deletion_is_shown_not_ready_once_its_token_is_revoked() {
        use crate::core::monitor::engine::{DefRecord, Origin};
        let dir = tempfile::tempdir().unwrap();
        let (client, _) = mock_client(api);
        let (ctx, mut caches, _) = context(dir.path(), client).await;
        // Ready and armed; then deleted while another finalizer holds it.
        let mut hb = heartbeat("job", json!({"interval": "1h"}), &["example.com/hold"]);
        let target = Target::heartbeat("shop", "job");
        let ready = Verdict {
            generation: Some(1),
            outcome: Outcome::Ready {
                secret: "job-heartbeat".into(),
            },
        };
        ctx.verdicts.set(&target, ready);
        let now = ctx.core.engine.clock().now();
        let def = DefRecord {
            origin: Origin::Kubernetes,
            ..DefRecord::sample("shop/job", 3600, now)
        };
        ctx.core.engine.upsert(def.into()).await.unwrap();
        hb.status = Some(
            model::heartbeat_status(HeartbeatInputs {
                verdict: &ctx.verdicts.get(&target).unwrap(),
                monitor: ctx.core.engine.get("shop/job").as_ref(),
                live: &HeartbeatStatus::default(),
                conflict: None,
                now,
                refresh: Duration::from_secs(60),
            })
            .unwrap(),
        );
        hb.metadata.generation = Some(2);
        hb.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        caches.heartbeat(&hb);
        let refresh = Duration::from_secs(60);
        // Its clean-up has not run yet: its token still works, and the status says so.
        assert!(heartbeat_write(&ctx, &target, refresh, &mut Unseen::default()).is_none());
        // Cleaned up (monitor and verdict gone): not Ready, no state.
        ctx.core.engine.remove("shop/job").await.unwrap();
        ctx.verdicts.remove(&target);
        let (_, st) = heartbeat_write(&ctx, &target, refresh, &mut Unseen::default())
            .expect("a status for the Heartbeat being deleted");
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", model::DELETING)
        );
        assert_eq!((st.state, st.observed_generation), (None, Some(2)));

        // An Application likewise, once its token is revoked.
        let app: crate::k8s::crd::Application = serde_json::from_value(json!({
            "apiVersion": "hartslag.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web", "generation": 3,
                         "finalizers": ["example.com/hold"],
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {},
        }))
        .unwrap();
        caches
            .applications
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(app));
        let target = Target::application("shop", "web");
        let (_, st) = application_write(&ctx, &target, &mut Unseen::default())
            .await
            .expect("a status for the Application being deleted");
        assert_eq!(st.conditions[0].reason, model::DELETING);
        assert_eq!(st.token_secret_name, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(20, t0);
        for _ in 0..20 {
            assert!(b.take(t0).is_ok());
        }
        let next = b.take(t0).unwrap_err();
        assert_eq!(next - t0, Duration::from_millis(50));
        assert!(b.take(t0 + Duration::from_millis(50)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(60)).is_err());
        // Saved up for a second at most: a long pause does not allow more than a burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn verdicts_go_before_transitions_before_refreshes_and_each_object_waits_once() {
        let mut q = Queues::default();
        let a = Target::heartbeat("ns", "a");
        let b = Target::heartbeat("ns", "b");
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        q.push(a.clone(), Lane::Refresh);
        q.push(a.clone(), Lane::Refresh);
        q.push(b.clone(), Lane::Transition(at));
        q.push(a.clone(), Lane::Verdict);
        assert_eq!(q.pop(), Some((a.clone(), Lane::Verdict)));
        assert_eq!(q.pop(), Some((b, Lane::Transition(at))));
        assert_eq!(q.pop(), Some((a, Lane::Refresh)));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }
}
