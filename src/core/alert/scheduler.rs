//! The delivery scheduler: one queue per target, a bounded number of deliveries in flight,
//! and the notification rules of [`policy`] deciding what each target gets.
//!
//! One task owns the bookkeeping; each delivery runs in a task of its own, at most
//! [`OutboxConfig::concurrency`](super::outbox::OutboxConfig) at once and one per target,
//! so a target that accepts a connection and never answers holds up its own queue only:
//! another monitor's email goes out meanwhile. Targets are told apart by
//! [`Target::identity`](super::message::Target::identity), whatever kind of channel they
//! are, so a new kind of target gets its queue, order, flapping rule and cap for free.
//!
//! A target whose API takes a list (an Alertmanager channel) gets what is due for it in
//! one request: the notices the rules let go now (one per monitor) and the re-sends due
//! (with those due within the next interval, early), up to [`BATCH_AT_MOST`], so many
//! monitors Down cost one `POST` per re-send interval, not one each. Each delivery in it
//! is still claimed, finished or retried on its own; a request that fails retries every
//! delivery in it, together.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{Semaphore, mpsc};

use super::alerting::{self, Gate, Pending};
use super::channels::Destination;
use super::message::{AlertKind, Target};
use super::outbox::{Delivery, Outbox, backoff};
use super::policy::{self, Decision, Queued, TargetHistory};
use super::{Deliver, DeliveryError};
use crate::core::channel::{AlertPolicy, MaintenanceWindow};
use crate::core::storage::{ATTEMPT_WITHIN, Finished, StorageError};

/// Longest sleep between two looks at the queues, whatever they say.
const IDLE_LOOK: Duration = Duration::from_secs(30);

/// How long a delivery whose claim was refused (another attempt holds it: a stalled or
/// deposed leader's, until its claim runs out) waits before it is tried again.
const REFUSED_WAIT: Duration = Duration::from_secs(2);

/// Most deliveries sent in one request to a target that takes a list: a few hundred
/// Alertmanager alerts (a recovery ends two), a body of some hundred KiB.
pub const BATCH_AT_MOST: usize = 128;

/// One delivery's part of an attempt, handed back to the scheduler task (all of one
/// request together).
struct Attempted {
    identity: String,
    key: Vec<u8>,
    delivery: Delivery,
    settled: Option<usize>,
    /// `false`: the store did not hand the delivery to this attempt (it was finished
    /// meanwhile); nothing was sent.
    claimed: bool,
    result: Result<(), DeliveryError>,
}

struct Scheduler {
    outbox: Outbox,
    courier: Arc<dyn Deliver>,
    histories: HashMap<String, TargetHistory>,
    /// Targets with a delivery in flight.
    busy: HashSet<String>,
    /// The deliveries in flight: nothing else finishes them.
    in_flight: HashSet<Vec<u8>>,
    /// Delivered, but their finish could not be written: never sent again by this process.
    unrecorded: HashSet<Vec<u8>>,
    /// Rescheduled, but the new attempt time could not be written.
    rescheduled: HashMap<Vec<u8>, Delivery>,
    /// Deliveries whose claim was refused, and when to try again.
    refused: HashMap<Vec<u8>, Timestamp>,
    permits: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<Vec<Attempted>>,
    done_rx: mpsc::UnboundedReceiver<Vec<Attempted>>,
}

/// A delivery to start: its key, the delivery, and `settled` (see [`Decision::Send`]).
type Start = (Vec<u8>, Delivery, Option<usize>);

/// Delivers `alerts` (one, or a list in one request) to `target` unless `deadline` (the
/// attempt's claims may have run out by then) passes first: an attempt that starts late
/// (its process stalled after the claim) sends nothing, and one still running then is
/// given up (the deadline's timer is looked at before each step of the delivery).
async fn within_claim(
    courier: &dyn Deliver,
    alerts: &[super::message::Alert],
    target: &Target,
    deadline: tokio::time::Instant,
) -> Result<(), DeliveryError> {
    let outlived = || {
        Err(DeliveryError::Transient(format!(
            "the attempt did not end within {}s of its claim (the process stalled, or the target answers too slowly); not sent",
            ATTEMPT_WITHIN.as_secs()
        )))
    };
    // A timer past its deadline fires only at the timer's next turn: look at the clock.
    if tokio::time::Instant::now() >= deadline {
        return outlived();
    }
    let send = async {
        match alerts {
            [alert] => courier.deliver(alert, target).await,
            many => courier.deliver_batch(many, target).await,
        }
    };
    tokio::select! {
        biased;
        () = tokio::time::sleep_until(deadline) => outlived(),
        sent = send => sent,
    }
}

/// Runs the scheduler for `outbox` until the process ends.
pub(super) async fn run(outbox: Outbox, courier: Arc<dyn Deliver>) {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    // The scheduler writes every target's history from now on: read them once.
    let histories = match outbox.store().target_histories().await {
        Ok(all) => all.into_iter().collect(),
        // The runtime is shutting down; this task ends at its next wait.
        Err(StorageError::Stopped) => HashMap::new(),
        Err(e) => {
            tracing::error!(error = %e, "the targets' alert history could not be read; every target starts afresh");
            HashMap::new()
        }
    };
    let mut s = Scheduler {
        permits: Arc::new(Semaphore::new(outbox.config.concurrency.max(1))),
        outbox,
        courier,
        histories,
        busy: HashSet::new(),
        in_flight: HashSet::new(),
        unrecorded: HashSet::new(),
        rescheduled: HashMap::new(),
        refused: HashMap::new(),
        done_tx,
        done_rx,
    };
    loop {
        let wake_at = s.dispatch().await;
        let sleep = Timestamp::now()
            .duration_until(wake_at)
            .try_into()
            .unwrap_or(Duration::ZERO)
            .min(IDLE_LOOK);
        tokio::select! {
            () = s.outbox.woken() => {}
            Some(done) = s.done_rx.recv() => {
                s.settle_all(done).await;
                // Every attempt that ended meanwhile is recorded before the queues are read
                // again: one read of the pending deliveries per batch, not per delivery
                // (a backlog after a failover drains in linear time), and an alert its
                // target accepted waits less for its record, the window in which a lost
                // leader's successor sends it again.
                while let Ok(done) = s.done_rx.try_recv() {
                    s.settle_all(done).await;
                }
            }
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

impl Scheduler {
    /// The pending deliveries per target identity, each queue oldest first; none while
    /// the store cannot be read (logged; the next look tries again).
    async fn queues(&self) -> BTreeMap<String, Vec<(Vec<u8>, Delivery)>> {
        let mut queues: BTreeMap<String, Vec<(Vec<u8>, Delivery)>> = BTreeMap::new();
        let pending = match self.outbox.store().pending().await {
            Ok(pending) => pending,
            // The runtime is shutting down, or the store has stopped (which `/healthz`
            // reports): nothing to add to the log here; the next look tries again.
            Err(StorageError::Stopped) => return queues,
            Err(e) => {
                tracing::error!(error = %e, "the outbox's pending deliveries could not be read");
                return queues;
            }
        };
        let now = Timestamp::now();
        for (key, d) in pending {
            if self.unrecorded.contains(&key) || self.refused.get(&key).is_some_and(|t| *t > now) {
                continue;
            }
            let d = self.rescheduled.get(&key).cloned().unwrap_or(d);
            queues
                .entry(d.target.identity())
                .or_default()
                .push((key, d));
        }
        for q in queues.values_mut() {
            q.sort_by(|a, b| (a.1.created_at, &a.0).cmp(&(b.1.created_at, &b.0)));
        }
        queues
    }

    fn history(&mut self, identity: &str) -> &mut TargetHistory {
        self.histories.entry(identity.to_string()).or_default()
    }

    /// Starts what may start now on every idle target; returns when to look again.
    async fn dispatch(&mut self) -> Timestamp {
        loop {
            let now = Timestamp::now();
            self.refused.retain(|_, t| *t > now);
            let next_refused = self.refused.values().min().copied();
            let mut wake = plus(now, IDLE_LOOK).min(next_refused.unwrap_or(Timestamp::MAX));
            let mut changed = false;
            let queues = self.queues().await;
            // A target whose queue is empty is no longer held back by its cap.
            for (identity, h) in &mut self.histories {
                h.capped &= queues.contains_key(identity);
            }
            for (identity, queue) in queues {
                let gates: Vec<Gate> = queue.iter().map(|(_, d)| self.gate(d, now)).collect();
                if self.tidy(&identity, &queue, &gates).await {
                    changed = true;
                    continue;
                }
                if self.busy.contains(&identity) {
                    continue;
                }
                // Repetitions go at their time, outside the notification rules: they repeat
                // what the target was told, they are no new notice.
                let not_before = |i: usize, d: &Delivery| match gates[i] {
                    Gate::HoldUntil(t) => d.next_attempt_at.max(t),
                    _ => d.next_attempt_at,
                };
                let repeats = queue
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, d))| d.alert.repeat > 0);
                let resend = self.takes_lists(&queue);
                if let Some((i, (key, d))) = repeats.min_by_key(|(i, (_, d))| not_before(*i, d)) {
                    let at = not_before(i, d);
                    if at > now {
                        wake = wake.min(at);
                    } else if resend.is_none() {
                        if !self.start(&identity, vec![(key.clone(), d.clone(), None)]) {
                            break;
                        }
                        continue;
                    }
                }
                let config = self.outbox.config.policy;
                let queued: Vec<Queued> = queue
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, d))| d.alert.repeat == 0)
                    .map(|(i, (key, d))| Queued {
                        key,
                        monitor: d.alert.monitor_key(),
                        created_at: d.created_at,
                        next_attempt_at: not_before(i, d),
                        flapping: d.alert.kind == AlertKind::Flapping,
                    })
                    .collect();
                let decision = policy::decide(&config, self.history(&identity), &queued, now);
                if let Some(resend) = resend {
                    let batch =
                        self.batch(&identity, &queue, &gates, &queued, &decision, now, resend);
                    if !batch.is_empty() {
                        if !self.start(&identity, batch) {
                            break;
                        }
                        continue;
                    }
                }
                match decision {
                    Decision::Send { key, settled } => {
                        let Some((_, d)) = queue.iter().find(|(k, _)| *k == key) else {
                            continue;
                        };
                        if !self.start(&identity, vec![(key.clone(), d.clone(), settled)]) {
                            // Every permit is taken: a finishing delivery wakes the loop.
                            break;
                        }
                    }
                    Decision::Flapping {
                        key,
                        monitor,
                        notices,
                    } => {
                        self.queue_flapping_notice(&identity, &queue, &key, &monitor, notices)
                            .await;
                        changed = true;
                    }
                    Decision::Supersede { keys } => {
                        self.supersede(&identity, &queue, &keys).await;
                        changed = true;
                    }
                    Decision::Capped { until } => {
                        if !self.history(&identity).capped {
                            tracing::warn!(target = %identity, until = %until, "alert target reached its hourly cap; its notices wait, then only the newest per monitor goes");
                            self.history(&identity).capped = true;
                        }
                        wake = wake.min(until);
                    }
                    Decision::Wait { until } => wake = wake.min(until),
                    Decision::Idle => {}
                }
            }
            if !changed {
                return wake;
            }
        }
    }

    /// The re-send interval of the target of `queue` when it takes lists (an Alertmanager
    /// channel, as the book holds it now); `None` for every other target.
    fn takes_lists(&self, queue: &[(Vec<u8>, Delivery)]) -> Option<Duration> {
        let (_, first) = queue.first()?;
        let Target::Channel { channel } = &first.target else {
            return None;
        };
        match self.outbox.channels.get(channel)?.destination {
            Destination::Alertmanager {
                resend_interval, ..
            } => Some(resend_interval),
            _ => None,
        }
    }

    /// What goes in one request to a target that takes lists (re-sent every `resend`):
    /// the notice `decision` sends with the others the rules let go with it
    /// ([`policy::more_to_send`]), and the re-sends due; once one is due, every re-send
    /// due within the next interval goes with it, early (Alertmanager holds an alert for
    /// four intervals), so re-sends whose notices went in different requests share one
    /// time from then on: one request per interval, not one per group. At most
    /// [`BATCH_AT_MOST`], in the order raised (a monitor's later notice after its earlier
    /// re-send). Empty when nothing is due.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &mut self,
        identity: &str,
        queue: &[(Vec<u8>, Delivery)],
        gates: &[Gate],
        queued: &[Queued<'_>],
        decision: &Decision,
        now: Timestamp,
        resend: Duration,
    ) -> Vec<Start> {
        let mut chosen: Vec<(Vec<u8>, Option<usize>)> = Vec::new();
        if let Decision::Send { key, settled } = decision {
            chosen.push((key.clone(), *settled));
            let config = self.outbox.config.policy;
            let room = BATCH_AT_MOST.saturating_sub(1);
            let first = (key.as_slice(), *settled);
            let history = self.history(identity);
            chosen.extend(policy::more_to_send(
                &config, history, queued, first, now, room,
            ));
        }
        // Re-sends, each with when it is due and whether it may go early: not one held
        // by a maintenance window or `notifyAfter`.
        let mut resends: Vec<(Timestamp, usize, bool)> = queue
            .iter()
            .enumerate()
            .filter(|(_, (_, d))| d.alert.repeat > 0)
            .map(|(i, (_, d))| match gates[i] {
                Gate::HoldUntil(t) => (d.next_attempt_at.max(t), i, false),
                _ => (d.next_attempt_at, i, true),
            })
            .collect();
        let due_now = resends.iter().any(|(at, _, _)| *at <= now);
        if chosen.is_empty() && !due_now {
            return Vec::new();
        }
        let early = if due_now { plus(now, resend) } else { now };
        resends.retain(|(at, _, may)| *at <= now || (*may && *at <= early));
        resends.sort();
        let room = BATCH_AT_MOST.saturating_sub(chosen.len());
        chosen.extend(
            resends
                .into_iter()
                .take(room)
                .filter_map(|(_, i, _)| queue.get(i).map(|(key, _)| (key.clone(), None))),
        );
        let mut batch: Vec<Start> = chosen
            .into_iter()
            .filter_map(|(key, settled)| {
                let (_, d) = queue.iter().find(|(k, _)| *k == key)?;
                Some((key, d.clone(), settled))
            })
            .collect();
        batch.sort_by(|a, b| (a.1.created_at, &a.0).cmp(&(b.1.created_at, &b.0)));
        batch
    }

    /// Starts delivering `batch` (one delivery, or several to one target that takes lists,
    /// in one request) in a task of its own; false when no permit is free. Each delivery is
    /// claimed on its own; those claimed go in the request.
    fn start(&mut self, identity: &str, batch: Vec<Start>) -> bool {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return false;
        };
        self.busy.insert(identity.to_string());
        self.in_flight
            .extend(batch.iter().map(|(key, _, _)| key.clone()));
        let courier = self.courier.clone();
        let store = self.outbox.store().clone();
        let done = self.done_tx.clone();
        let identity = identity.to_string();
        tokio::spawn(async move {
            // Before the claims are asked for, so they run out after this deadline.
            let deadline = tokio::time::Instant::now() + ATTEMPT_WITHIN;
            let claims =
                futures::future::join_all(batch.iter().map(|(key, _, _)| store.claim(key.clone())))
                    .await;
            let mut attempted = Vec::with_capacity(batch.len());
            let mut sending = Vec::new();
            for ((key, d, settled), claim) in batch.into_iter().zip(claims) {
                let (claimed, result) = match claim {
                    Ok(true) => {
                        sending.push((key, d, settled));
                        continue;
                    }
                    Ok(false) => (false, Ok(())),
                    // Retried with backoff, like a target that could not be reached.
                    Err(e) => (
                        true,
                        Err(DeliveryError::Transient(format!(
                            "the outbox could not claim it: {e}"
                        ))),
                    ),
                };
                attempted.push(Attempted {
                    identity: identity.clone(),
                    key,
                    delivery: d,
                    settled,
                    claimed,
                    result,
                });
            }
            if let Some((_, first, _)) = sending.first() {
                let target = first.target.clone();
                let alerts: Vec<_> = sending
                    .iter()
                    .map(|(_, d, settled)| match settled {
                        Some(held) => d.alert.settled(*held),
                        None => d.alert.clone(),
                    })
                    .collect();
                let result = within_claim(&*courier, &alerts, &target, deadline).await;
                attempted.extend(sending.into_iter().map(|(key, d, settled)| Attempted {
                    identity: identity.clone(),
                    key,
                    delivery: d,
                    settled,
                    claimed: true,
                    result: result.clone(),
                }));
            }
            drop(permit);
            let _ = done.send(attempted);
        });
        true
    }

    /// Records the attempts of one request as of one moment, so the re-sends they leave
    /// come due together, and a failure worth retrying retries every delivery in it at one
    /// time (the longest of their backoffs): they go together again.
    async fn settle_all(&mut self, batch: Vec<Attempted>) {
        let now = Timestamp::now();
        let retry_at = (batch.len() > 1)
            .then(|| self.shared_retry(&batch))
            .flatten();
        for a in batch {
            self.settle(a, retry_at, now).await;
        }
    }

    /// When the deliveries of a request that failed for now are all tried again: after the
    /// longest wait any of them is owed (its own backoff, or what the target asked).
    fn shared_retry(&self, batch: &[Attempted]) -> Option<Timestamp> {
        let wait = batch
            .iter()
            .filter(|a| a.claimed && a.delivery.alert.repeat == 0)
            .filter_map(|a| {
                let asked = match &a.result {
                    Err(DeliveryError::Throttled { after, .. }) => *after,
                    Err(DeliveryError::Transient(_)) => Duration::ZERO,
                    _ => return None,
                };
                let own = backoff(&self.outbox.config, a.delivery.attempts, &a.key);
                Some(own.max(asked.min(super::MAX_RETRY_AFTER)))
            })
            .max()?;
        Some(plus(Timestamp::now(), wait))
    }

    /// Records a finished attempt, ended `now`: delivered, failed, skipped, or rescheduled
    /// (at `retry_at` when its request's deliveries are retried together).
    async fn settle(&mut self, a: Attempted, retry_at: Option<Timestamp>, now: Timestamp) {
        self.busy.remove(&a.identity);
        self.in_flight.remove(&a.key);
        if !a.claimed {
            // Finished meanwhile (then it is gone), or held by another attempt until its
            // claim ends: not tried again at once.
            self.refused
                .insert(a.key, plus(Timestamp::now(), REFUSED_WAIT));
            return;
        }
        let mut d = a.delivery;
        d.attempts += 1;
        let stats = self.outbox.stats.clone();
        if let Target::Channel { channel } = &d.target {
            let book = &self.outbox.channels;
            match &a.result {
                Ok(()) => book.delivered(channel, Timestamp::now()),
                Err(e) => book.failed(channel, Timestamp::now(), &e.to_string()),
            }
        }
        let repetition = d.alert.repeat > 0;
        let (outcome, detail, sent) = match a.result {
            Ok(()) => {
                tracing::info!(alert = %d.alert.id, attempts = d.attempts, "alert delivered");
                stats.delivered.inc();
                ("delivered", None, true)
            }
            Err(DeliveryError::Unconfigured(msg)) => {
                tracing::warn!(alert = %d.alert.id, reason = %msg, "alert not sent: its channel is not configured");
                stats.skipped.inc();
                ("skipped", Some(msg), false)
            }
            Err(DeliveryError::Permanent(msg)) => {
                tracing::warn!(alert = %d.alert.id, error = %msg, "alert delivery failed permanently");
                stats.failed.inc();
                ("failed", Some(msg), false)
            }
            Err(e @ (DeliveryError::Transient(_) | DeliveryError::Throttled { .. })) => {
                let (msg, asked) = match e {
                    DeliveryError::Throttled { reason, after } => (reason, after),
                    DeliveryError::Transient(msg) => (msg, std::time::Duration::ZERO),
                    other => (other.to_string(), std::time::Duration::ZERO),
                };
                let given_up = SignedDuration::try_from(self.outbox.config.give_up_after)
                    .is_ok_and(|limit| Timestamp::now().duration_since(d.created_at) > limit);
                // A failed repetition is not retried: the next one follows at its time.
                if !given_up && !repetition {
                    return self.reschedule(a.key, d, msg, asked, retry_at).await;
                }
                tracing::warn!(alert = %d.alert.id, error = %msg, attempts = d.attempts, "alert delivery given up");
                stats.failed.inc();
                ("failed", Some(format!("gave up: {msg}")), false)
            }
        };
        let config = self.outbox.config.policy;
        let monitor = d.alert.monitor_key().to_string();
        let next = self.next_repetition(&a.identity, &d, now);
        let history = self.history(&a.identity);
        if repetition {
            // Repetitions count neither toward flapping nor toward the cap.
        } else if d.alert.kind == AlertKind::Flapping {
            history.notice_sent(&config, sent, now);
        } else {
            history.record(
                &config,
                &monitor,
                d.created_at,
                sent,
                a.settled.is_some(),
                now,
            );
        }
        let history = history.clone();
        let finished = Finished {
            key: a.key.clone(),
            outcome: outcome.into(),
            detail,
            attempts: d.attempts,
        };
        let write = self
            .outbox
            .store()
            .finish(vec![finished], (a.identity.clone(), history), next);
        if let Err(e) = self.outbox.record(write).await {
            tracing::error!(error = %e, alert = %d.alert.id, "the outbox could not record a finished delivery; it will not be sent again until a restart");
            self.unrecorded.insert(a.key);
        } else {
            self.rescheduled.remove(&a.key);
        }
    }

    /// What the channel's policy says of `d` now (for targets that are no channel, the
    /// Heartbeat's own policy and windows).
    fn gate(&self, d: &Delivery, now: Timestamp) -> Gate {
        let (policy, windows) = self.policy_of(d);
        alerting::gate(
            d.alert.kind,
            d.alert.repeat,
            d.alert.incident_opened_at(),
            &policy,
            &windows,
            now,
        )
    }

    /// The policy in force for `d` and the maintenance windows that hold it.
    fn policy_of(&self, d: &Delivery) -> (AlertPolicy, Vec<MaintenanceWindow>) {
        let mut windows = d.alert.maintenance.clone();
        let channel = match &d.target {
            Target::Channel { channel } => self.outbox.channels.get(channel),
            _ => None,
        };
        if let Some(c) = &channel {
            windows.extend(c.maintenance.iter().cloned());
        }
        let policy = alerting::effective(&d.alert.policy, channel.as_ref().map(|c| &c.policy));
        (policy, windows)
    }

    /// The repetition that follows notice `d` to `identity` (sent or not) while what it
    /// reported lasts, when its target repeats: a Down while its incident is open, through
    /// Alertmanager or with `repeatEvery`; a Late warning while the monitor is Late, and a
    /// "flapping" notice while the flapping spell lasts, through Alertmanager only, whose
    /// alerts resolve themselves when they are not sent again.
    fn next_repetition(&self, identity: &str, d: &Delivery, now: Timestamp) -> Option<Delivery> {
        if !self.still_firing(identity, d) {
            return None;
        }
        let resend = match &d.target {
            Target::Channel { channel } => match &self.outbox.channels.get(channel)?.destination {
                Destination::Alertmanager {
                    resend_interval, ..
                } => Some(*resend_interval),
                _ => None,
            },
            _ => None,
        };
        if d.alert.kind != AlertKind::Down {
            resend?;
        }
        let (policy, _) = self.policy_of(d);
        let every = alerting::repeat_interval(&policy, resend)?;
        Some(Delivery {
            alert: d.alert.repetition(d.alert.repeat + 1),
            target: d.target.clone(),
            attempts: 0,
            next_attempt_at: plus(now, every),
            // Raised with the notice it repeats, so any later notice about the monitor
            // (its recovery) sorts after it and ends the repetitions.
            created_at: d.created_at,
            last_error: None,
        })
    }

    /// Whether what notice `d` to `identity` reported still holds, so its repetitions go on.
    fn still_firing(&self, identity: &str, d: &Delivery) -> bool {
        let monitor = d.alert.monitor_key();
        match d.alert.kind {
            AlertKind::Down | AlertKind::Late => {
                self.outbox.still_holds(monitor, &d.target, d.alert.kind)
            }
            AlertKind::Flapping => self
                .histories
                .get(identity)
                .and_then(|h| h.monitors.get(monitor))
                .is_some_and(|m| m.flapping_since.is_some()),
            AlertKind::Recovery | AlertKind::OnTime | AlertKind::Stopped => false,
        }
    }

    /// Finishes what nobody needs any more in `identity`'s queue (stale repetitions, Late
    /// warnings the channel does not want, incidents that ended unannounced); true when
    /// something was finished.
    async fn tidy(
        &mut self,
        identity: &str,
        queue: &[(Vec<u8>, Delivery)],
        gates: &[Gate],
    ) -> bool {
        let pending: Vec<Pending> = queue
            .iter()
            .zip(gates)
            .map(|((key, d), gate)| Pending {
                key,
                monitor: d.alert.monitor_key(),
                kind: d.alert.kind,
                repeat: d.alert.repeat,
                created_at: d.created_at,
                attempts: d.attempts,
                held: matches!(gate, Gate::HoldUntil(_)),
            })
            .collect();
        let tidy = alerting::tidy(&pending);
        let mut finish: Vec<Finished> = Vec::new();
        for ((key, d), gate) in queue.iter().zip(gates) {
            if self.in_flight.contains(key) {
                continue;
            }
            let over = d.alert.repeat > 0 && !self.still_firing(identity, d);
            let why = if tidy.stale.contains(key) || over {
                Some(("superseded", "the incident is over".to_string()))
            } else if tidy.cancelled.contains(key) {
                Some((
                    "skipped",
                    "the incident ended before it was to be notified (maintenance or notifyAfter)"
                        .to_string(),
                ))
            } else if let Gate::Skip(why) = gate {
                Some(("skipped", why.to_string()))
            } else {
                None
            };
            if let Some((outcome, detail)) = why {
                finish.push(Finished {
                    key: key.clone(),
                    outcome: outcome.into(),
                    detail: Some(detail),
                    attempts: d.attempts,
                });
            }
        }
        if finish.is_empty() {
            return false;
        }
        let history = self.history(identity).clone();
        let keys: Vec<Vec<u8>> = finish.iter().map(|f| f.key.clone()).collect();
        self.outbox.stats.skipped.inc_by(finish.len() as u64);
        let write = self
            .outbox
            .store()
            .finish(finish, (identity.to_string(), history), None);
        if let Err(e) = self.outbox.record(write).await {
            tracing::error!(error = %e, "the outbox could not record finished notices");
            self.unrecorded.extend(keys);
        }
        true
    }

    /// Schedules the next attempt of a delivery that failed for now.
    /// Retries `d` after its backoff, or after `asked` when the target asked for longer, or
    /// at `at` with the other deliveries of its request.
    async fn reschedule(
        &mut self,
        key: Vec<u8>,
        mut d: Delivery,
        msg: String,
        asked: std::time::Duration,
        at: Option<Timestamp>,
    ) {
        let backoff = backoff(&self.outbox.config, d.attempts.saturating_sub(1), &key);
        let delay = backoff.max(asked.min(super::MAX_RETRY_AFTER));
        let next = at.unwrap_or_else(|| plus(Timestamp::now(), delay));
        let retry_in =
            u64::try_from(Timestamp::now().duration_until(next).as_millis()).unwrap_or(0);
        tracing::info!(alert = %d.alert.id, error = %msg, attempts = d.attempts, retry_in_ms = retry_in, "alert delivery will be retried");
        self.outbox.stats.retried.inc();
        d.next_attempt_at = next;
        d.last_error = Some(msg);
        let write = self.outbox.store().retry(key.clone(), d.clone());
        if let Err(e) = self.outbox.record(write).await {
            tracing::error!(error = %e, alert = %d.alert.id, "the outbox could not record a retry");
            self.rescheduled.insert(key, d);
        } else {
            self.rescheduled.remove(&key);
        }
    }

    /// Queues the "flapping" notice about `monitor` and marks it flapping, in one record.
    async fn queue_flapping_notice(
        &mut self,
        identity: &str,
        queue: &[(Vec<u8>, Delivery)],
        key: &[u8],
        monitor: &str,
        notices: usize,
    ) {
        let Some((_, base)) = queue.iter().find(|(k, _)| k == key) else {
            return;
        };
        let now = Timestamp::now();
        let window = self.outbox.config.policy.flapping_window;
        let notice = Delivery {
            alert: base.alert.flapping(notices, window, now),
            target: base.target.clone(),
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            last_error: None,
        };
        tracing::warn!(monitor, target = %identity, notices, "monitor is flapping: one notice instead of each Down and recovery");
        let history = {
            let h = self.history(identity);
            h.start_flapping(monitor, now);
            h.clone()
        };
        let write = self
            .outbox
            .store()
            .queue(notice, Some((identity.to_string(), history)));
        if let Err(e) = self.outbox.record(write).await {
            tracing::error!(error = %e, "the outbox could not queue a flapping notice");
            // Without the notice queued, the monitor must not stay flapping.
            if let Some(m) = self.history(identity).monitors.get_mut(monitor) {
                m.flapping_since = None;
            }
        }
    }

    /// Finishes `keys` as superseded by a newer notice about their monitor, in one record.
    async fn supersede(&mut self, identity: &str, queue: &[(Vec<u8>, Delivery)], keys: &[Vec<u8>]) {
        let config = self.outbox.config.policy;
        let now = Timestamp::now();
        let gone: Vec<&(Vec<u8>, Delivery)> =
            queue.iter().filter(|(k, _)| keys.contains(k)).collect();
        let Some((_, first)) = gone.first() else {
            return;
        };
        let monitor = first.alert.monitor_key().to_string();
        let raised: Vec<Timestamp> = gone.iter().map(|(_, d)| d.created_at).collect();
        let history = {
            let h = self.history(identity);
            h.superseded(&config, &monitor, &raised, now);
            h.clone()
        };
        let finish = gone
            .iter()
            .map(|(key, d)| Finished {
                key: key.clone(),
                outcome: "superseded".into(),
                detail: Some("a newer notice about the same monitor was sent instead".into()),
                attempts: d.attempts,
            })
            .collect();
        self.outbox.stats.superseded.inc_by(gone.len() as u64);
        let write = self
            .outbox
            .store()
            .finish(finish, (identity.to_string(), history), None);
        if let Err(e) = self.outbox.record(write).await {
            tracing::error!(error = %e, "the outbox could not record superseded notices");
            self.unrecorded.extend(gone.iter().map(|(k, _)| k.clone()));
        }
    }
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use futures::future::BoxFuture;

    use super::*;
    use crate::core::alert::message::{Alert, Target};
    use crate::core::alert::outbox::{OutboxConfig, deliveries};
    use crate::core::alert::policy::PolicyConfig;
    use crate::core::services::open_monitor_storage;

    /// Records what it was asked to deliver; never answers for `black_hole`.
    #[derive(Default)]
    struct Courier {
        black_hole: Option<Target>,
        sent: Mutex<Vec<(Alert, Target)>>,
        /// Each request: the `repeat` of each alert in it, and whether it was accepted.
        requests: Mutex<Vec<(Vec<u32>, bool)>>,
        /// How many more requests of several alerts to refuse, as an unavailable target.
        refuse_lists: std::sync::atomic::AtomicUsize,
    }

    impl Deliver for Courier {
        fn deliver<'a>(
            &'a self,
            alert: &'a Alert,
            target: &'a Target,
        ) -> BoxFuture<'a, Result<(), DeliveryError>> {
            Box::pin(async move {
                if self.black_hole.as_ref() == Some(target) {
                    std::future::pending::<()>().await;
                }
                self.sent
                    .lock()
                    .unwrap()
                    .push((alert.clone(), target.clone()));
                self.requests
                    .lock()
                    .unwrap()
                    .push((vec![alert.repeat], true));
                Ok(())
            })
        }

        fn deliver_batch<'a>(
            &'a self,
            alerts: &'a [Alert],
            target: &'a Target,
        ) -> BoxFuture<'a, Result<(), DeliveryError>> {
            Box::pin(async move {
                let repeats = alerts.iter().map(|a| a.repeat).collect();
                let refuse = self
                    .refuse_lists
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                self.requests.lock().unwrap().push((repeats, !refuse));
                if refuse {
                    return Err(DeliveryError::Transient("503 Service Unavailable".into()));
                }
                let mut sent = self.sent.lock().unwrap();
                sent.extend(alerts.iter().map(|a| (a.clone(), target.clone())));
                Ok(())
            })
        }
    }

    impl Courier {
        fn sent(&self) -> Vec<(Alert, Target)> {
            self.sent.lock().unwrap().clone()
        }

        fn requests(&self) -> Vec<(Vec<u32>, bool)> {
            self.requests.lock().unwrap().clone()
        }

        /// How many alerts with `repeat` were delivered.
        fn delivered(&self, repeat: u32) -> usize {
            self.sent()
                .iter()
                .filter(|(a, _)| a.repeat == repeat)
                .count()
        }
    }

    /// An Alertmanager channel re-sent every `resend`, as the book holds it, and the target
    /// naming it.
    fn alertmanager(outbox: &Outbox, resend: Duration) -> Target {
        use crate::core::alert::channels::{ChannelRef, ResolvedChannel};
        let id = ChannelRef::cluster("am");
        outbox.channels().upsert(ResolvedChannel {
            id: id.clone(),
            destination: Destination::Alertmanager {
                url: "http://am:9093".into(),
                resend_interval: resend,
            },
            severity: Default::default(),
            policy: Default::default(),
            maintenance: Vec::new(),
        });
        Target::Channel { channel: id }
    }

    fn uncapped() -> OutboxConfig {
        OutboxConfig {
            policy: PolicyConfig {
                hourly_cap: 0,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alertmanager_channel_gets_what_is_due_in_few_bounded_requests() {
        let (_dir, outbox) = open(uncapped());
        let target = alertmanager(&outbox, Duration::from_secs(1));
        let now = Timestamp::now();
        for i in 0..150 {
            let down = alert(&format!("m{i}"), i, AlertKind::Down);
            queue(&outbox, &down, &target, now).await;
        }
        let courier = Arc::new(Courier::default());
        tokio::spawn(outbox.clone().run(courier.clone()));
        until("the Downs", || courier.delivered(0) == 150).await;
        // How many alerts of each request are the `repeat`-th (re-sends may share a
        // request with notices).
        let sizes = |r: &[(Vec<u32>, bool)], repeat: u32| -> Vec<usize> {
            r.iter()
                .map(|(repeats, _)| repeats.iter().filter(|n| **n == repeat).count())
                .filter(|n| *n > 0)
                .collect()
        };
        // Every notice due at once: two requests, the first as large as allowed.
        assert_eq!(sizes(&courier.requests(), 0), [BATCH_AT_MOST, 22]);
        // Each re-send interval, the re-sends go in as few requests again, each once.
        until("the second re-sends", || courier.delivered(2) == 150).await;
        let requests = courier.requests();
        assert!(
            requests.iter().all(|(r, _)| r.len() <= BATCH_AT_MOST),
            "{requests:?}"
        );
        for repeat in [1, 2] {
            let round = sizes(&requests, repeat);
            assert!(round.len() <= 3, "re-send {repeat} took {round:?}");
            assert_eq!(courier.delivered(repeat), 150);
        }
        // Each counted as delivered on its own.
        until("the records", || outbox.stats.delivered.get() >= 450).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_request_retries_every_delivery_in_it_together() {
        let config = OutboxConfig {
            base_delay: Duration::from_millis(200),
            ..uncapped()
        };
        let (_dir, outbox) = open(config);
        let target = alertmanager(&outbox, Duration::from_secs(3600));
        let now = Timestamp::now();
        for i in 0..5 {
            let down = alert(&format!("m{i}"), i, AlertKind::Down);
            queue(&outbox, &down, &target, now).await;
        }
        let courier = Arc::new(Courier::default());
        courier.refuse_lists.store(1, Ordering::SeqCst);
        tokio::spawn(outbox.clone().run(courier.clone()));
        until("the Downs", || courier.delivered(0) == 5).await;
        // Refused as a whole, each delivery was retried, all at one time: one request again.
        assert_eq!(
            courier.requests(),
            [(vec![0; 5], false), (vec![0; 5], true)]
        );
        // Each finished on its own: only their re-sends, an hour ahead, are left.
        until_pending("the re-sends", &outbox, |p| {
            p.len() == 5
                && p.iter()
                    .all(|(_, d)| d.alert.repeat == 1 && d.attempts == 0)
        })
        .await;
        assert_eq!(waiting(&outbox), 0);
        assert_eq!(outbox.stats.retried.get(), 5);
        assert_eq!(outbox.stats.delivered.get(), 5);
    }

    fn alert(monitor: &str, n: i64, kind: AlertKind) -> Alert {
        let at = Timestamp::from_second(1_700_000_000 + n).unwrap();
        Alert {
            id: format!("default/{monitor}:{}:{kind:?}", at.as_millisecond()),
            kind,
            monitor: monitor.into(),
            display_name: None,
            scope: "namespace default".into(),
            reason: "test".into(),
            occurred_at: at,
            last_ping_at: None,
            last_failure_at: None,
            expected_at: None,
            ping_hint: String::new(),
            namespace: String::new(),
            application: None,
            opened_at: None,
            runbook_url: None,
            exit_code: None,
            repeat: 0,
            policy: Default::default(),
            maintenance: Vec::new(),
        }
    }

    async fn queue(outbox: &Outbox, alert: &Alert, target: &Target, created: Timestamp) {
        for d in deliveries(alert, std::slice::from_ref(target), created) {
            outbox.store().queue(d, None).await.unwrap();
        }
        outbox.wake();
    }

    fn open(config: OutboxConfig) -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(open_monitor_storage(dir.path()).outbox, config);
        (dir, outbox)
    }

    /// Notices waiting (repetitions not counted).
    fn waiting(outbox: &Outbox) -> u64 {
        outbox.store().pending_notices().unwrap()
    }

    /// Waits until the pending deliveries pass `check`.
    async fn until_pending(
        what: &str,
        outbox: &Outbox,
        check: impl Fn(&[(Vec<u8>, Delivery)]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check(&outbox.store().pending().await.unwrap()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn email() -> Target {
        Target::Email {
            to: vec!["ops@example.com".into()],
        }
    }

    fn hole() -> Target {
        Target::Webhook {
            url: "http://192.0.2.1/never-answers".into(),
        }
    }

    #[tokio::test]
    async fn an_attempt_past_its_claim_sends_nothing_and_one_outliving_it_is_given_up() {
        let courier = Courier {
            black_hole: Some(hole()),
            ..Default::default()
        };
        let a = alert("a", 1, AlertKind::Down);
        // Woken at or past the deadline (it stalled between its claim and its send).
        let now = tokio::time::Instant::now();
        let late = within_claim(&courier, std::slice::from_ref(&a), &email(), now).await;
        assert!(matches!(late, Err(DeliveryError::Transient(_))), "{late:?}");
        assert!(courier.sent().is_empty(), "sent past its claim");
        // Still running at the deadline: given up.
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        let slow = within_claim(&courier, std::slice::from_ref(&a), &hole(), soon).await;
        assert!(matches!(slow, Err(DeliveryError::Transient(_))), "{slow:?}");
        // In time: sent.
        let later = tokio::time::Instant::now() + Duration::from_secs(10);
        within_claim(&courier, std::slice::from_ref(&a), &email(), later)
            .await
            .unwrap();
        assert_eq!(courier.sent().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_target_that_never_answers_holds_up_only_its_own_queue() {
        let (_dir, outbox) = open(OutboxConfig::default());
        let courier = Arc::new(Courier {
            black_hole: Some(hole()),
            ..Default::default()
        });
        let now = Timestamp::now();
        for (i, m) in ["a", "b", "c"].into_iter().enumerate() {
            queue(&outbox, &alert(m, i as i64, AlertKind::Down), &hole(), now).await;
        }
        queue(&outbox, &alert("d", 9, AlertKind::Down), &email(), now).await;
        tokio::spawn(outbox.clone().run(courier.clone()));
        let started = std::time::Instant::now();
        until("the email", || !courier.sent().is_empty()).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(courier.sent()[0].1, email());
        // The black hole has one delivery in flight, the rest wait behind it in order.
        until("the email's record", || waiting(&outbox) == 3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_whose_finish_cannot_be_written_is_not_sent_again() {
        let (_dir, outbox) = open(OutboxConfig::default());
        let courier = Arc::new(Courier::default());
        outbox.fail_writes.store(true, Ordering::Relaxed);
        queue(
            &outbox,
            &alert("a", 0, AlertKind::Down),
            &email(),
            Timestamp::now(),
        )
        .await;
        tokio::spawn(outbox.clone().run(courier.clone()));
        until("the delivery", || courier.sent().len() == 1).await;
        until("the failed write", || outbox.health().is_err()).await;
        // The scheduler keeps looking (new alerts, timers) but never sends it again.
        for _ in 0..20 {
            outbox.wake();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(courier.sent().len(), 1);
        assert!(
            outbox
                .health()
                .unwrap_err()
                .contains("cannot record deliveries")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_delivery_leaves_the_queue_and_its_record_in_one_write() {
        let (_dir, outbox) = open(OutboxConfig::default());
        let courier = Arc::new(Courier::default());
        queue(
            &outbox,
            &alert("a", 0, AlertKind::Down),
            &email(),
            Timestamp::now(),
        )
        .await;
        tokio::spawn(outbox.clone().run(courier.clone()));
        until("the delivery", || waiting(&outbox) == 0).await;
        let targets = outbox.store().target_histories().await.unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].1.sent.len(), 1, "{targets:?}");
        assert!(outbox.health().is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flapping_monitor_sends_one_notice_then_where_it_settled() {
        let config = OutboxConfig {
            policy: PolicyConfig {
                flapping_notices: 3,
                flapping_window: Duration::from_secs(2),
                hourly_cap: 0,
            },
            ..Default::default()
        };
        let (_dir, outbox) = open(config);
        let courier = Arc::new(Courier::default());
        tokio::spawn(outbox.clone().run(courier.clone()));
        // Eight flips within a second: Down, recovery, Down, ...
        for i in 0..8 {
            let kind = if i % 2 == 0 {
                AlertKind::Down
            } else {
                AlertKind::Recovery
            };
            queue(&outbox, &alert("a", i, kind), &email(), Timestamp::now()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        until("the settled notice", || waiting(&outbox) == 0).await;
        let kinds: Vec<(AlertKind, bool)> = courier
            .sent()
            .iter()
            .map(|(a, _)| (a.kind, a.reason.contains("stable again after flapping")))
            .collect();
        use AlertKind::*;
        assert_eq!(
            kinds,
            vec![
                (Down, false),
                (Recovery, false),
                (Down, false),
                (Flapping, false),
                (Recovery, true)
            ]
        );
        assert_eq!(outbox.stats.superseded.get(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repetitions_waiting_for_their_time_hold_up_no_notice() {
        let (_dir, outbox) = open(OutboxConfig::default());
        let courier = Arc::new(Courier::default());
        tokio::spawn(outbox.clone().run(courier.clone()));
        let hourly = |mut a: Alert| {
            a.policy.repeat_every = Some(crate::core::duration::SpecDuration::from_secs(3600));
            a
        };
        let now = Timestamp::now();
        for i in 0..50 {
            let down = hourly(alert(&format!("m{i}"), i, AlertKind::Down));
            queue(&outbox, &down, &email(), now).await;
        }
        // Each Down is sent and leaves its next repetition, an hour ahead, in the queue.
        until("the Downs", || courier.sent().len() == 50).await;
        until_pending("the repetitions", &outbox, |pending| {
            pending.iter().filter(|(_, d)| d.alert.repeat == 1).count() == 50
        })
        .await;
        let up = alert("m7", 100, AlertKind::Recovery);
        queue(&outbox, &up, &email(), Timestamp::now()).await;
        until("the recovery", || courier.sent().len() == 51).await;
        assert_eq!(courier.sent()[50].0.kind, AlertKind::Recovery);
        // The recovered monitor's repetition is gone; the others wait for their time.
        until_pending("the stale repetition", &outbox, |p| p.len() == 49).await;
        assert!(
            outbox
                .store()
                .pending()
                .await
                .unwrap()
                .iter()
                .all(|(_, d)| d.alert.monitor != "m7")
        );
    }
}
