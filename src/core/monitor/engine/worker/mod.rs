//! The engine thread: takes commands in rounds, steps monitors through the pure state
//! machine, stages what changed and hands each round to the store as one durable unit
//! ([`MonitorStore::commit_round`]).
//!
//! A round's later commands see its earlier ones' staged state; readers (the snapshot, the
//! deadline scheduler, the dashboard, status writers and Kubernetes Events) see it only
//! once the round is on disk, and senders are answered then too (the `Done` callbacks):
//! nothing is published or acknowledged that a crash could still lose, and a round that
//! fails to write leaves readers with what is on disk.

use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::counts::Counts;
use super::handover::Handover;
use super::herd::{Place, Tie};
use super::intake::{Intake, Next};
use super::mirror::TokenChanges;
use super::publish::{Inflight, Published, Readers, Written};
use super::snapshot::Monitors;
use super::staging::Round;
use super::types::{Change, Monitor, MonitorDef, PingInput, PingOutcome};
use super::{EngineConfig, EngineError, EngineStats};
use crate::core::alert::outbox::Outbox;
use crate::core::log_limit::LogLimit;
use crate::core::monitor::jobs::JobSignal;
use crate::core::monitor::schedule::{Clock, SchedulerHandle};
use crate::core::storage::{FeedChanges, Fence, MonitorStore, RelayedPing};

mod definitions;
mod signals;
mod stopping;

/// The in-memory view readers share with the worker.
pub(super) type Snapshot = Arc<RwLock<Monitors>>;

/// Most commands handled in one round (one durable write).
pub(super) const MAX_ROUND: usize = 1024;

/// A round ends early once its ping blocks take about this many bytes: a burst of pings
/// with large bodies to monitors with full blocks makes several writes of bounded size,
/// not one that holds hundreds of megabytes.
pub(super) const ROUND_BYTES: usize = 8 * 1024 * 1024;

/// Most commands in rounds handed to the store and not settled yet; past it the worker
/// waits for the store before it takes more. Staging is faster than storing: a herd of
/// deadlines (a hundred thousand monitors on one cron schedule, due in the same seconds)
/// would otherwise pile up as staged rounds (monitor records, encoded writes, alerts, the
/// commit log's pending view) between the worker and the disk, hundreds of megabytes for
/// a herd that waits in the command queue as keys of a few dozen bytes. Eight full rounds
/// in flight keep the disk's groups as large as they are without the bound.
pub(super) const MAX_IN_FLIGHT: usize = 8 * MAX_ROUND;

/// Rounds on their way to the store (handed over, not settled) past which a round that
/// would be small first waits for one of them ([`GATHER`]). Pings come one at a time: a
/// worker that wrote whatever was queued made a round of three or four pings per wake,
/// and every round costs the handover, the commit and the apply threads a wake and a
/// writer record of their own. Two rounds ahead are one being made durable and one ready
/// to follow it, so the disk never waits for the engine, and the pings that come
/// meanwhile go in the next round together: about one round per flush.
pub(super) const ROUNDS_AHEAD: usize = 2;

/// The longest a small round waits for a round ahead of it to settle (the default of
/// [`EngineConfig::gather`]): on a slow disk the pings go on in rounds of their own, and
/// the thread still reads its queue (and answers its probe) this often.
pub(super) const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// Transitions kept per monitor at least; older ones are trimmed in steps of [`TRIM_EVERY`].
pub(super) const TRANSITION_HISTORY: usize = 200;

/// How many transitions a monitor may add before its timeline is trimmed back to
/// [`TRANSITION_HISTORY`]; it never holds more than the sum of both plus one restart's worth.
pub(super) const TRIM_EVERY: u8 = 50;

/// What the engine handle asks of the worker.
pub(super) enum Command {
    Upsert(
        Box<MonitorDef>,
        oneshot::Sender<Result<Monitor, EngineError>>,
    ),
    /// Removes the monitor, for the resource with the uid given only, if one is.
    Remove(
        String,
        Option<String>,
        oneshot::Sender<Result<(), EngineError>>,
    ),
    /// Removes the monitor keeping its state and history, as a retained one.
    Suspend(String, oneshot::Sender<Result<(), EngineError>>),
    /// Drops what a suspension kept under the key (for the resource with the uid given
    /// only, if one is); a monitor defined under it stays.
    Forget(
        String,
        Option<String>,
        oneshot::Sender<Result<(), EngineError>>,
    ),
    Ping(
        String,
        PingInput,
        oneshot::Sender<Result<PingOutcome, EngineError>>,
    ),
    SetPaused(String, bool, oneshot::Sender<Result<Monitor, EngineError>>),
    Job(String, JobSignal, oneshot::Sender<Result<(), EngineError>>),
    /// Pings other replicas relayed, applied with the instants they were taken.
    Relayed(Vec<RelayedPing>, oneshot::Sender<Result<(), EngineError>>),
    /// The leader's rounds, shown by a replica that does not lead.
    Mirror(Box<FeedChanges>, oneshot::Sender<TokenChanges>),
    /// Monitors whose deadline came due, as many as the scheduler had fired, each with its
    /// place in the herd ([`Place`]).
    Due(Vec<(Arc<str>, Place)>),
    /// Answered as soon as the worker takes it: the thread is alive and not stuck.
    Probe(oneshot::Sender<()>),
    /// Tests: holds the worker for a while, as a stuck disk would.
    #[cfg(test)]
    Stall(std::time::Duration, oneshot::Sender<()>),
}

/// The warnings a herd would repeat once per monitor, each let through once a period.
pub(super) struct Quiet {
    /// A monitor with no alert target raised an alert.
    pub(super) untargeted: LogLimit,
}

impl Default for Quiet {
    fn default() -> Self {
        Self {
            untargeted: LogLimit::new(std::time::Duration::from_secs(60)),
        }
    }
}

/// Answers a command once its round is durable (or failed).
pub(super) type Done = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

/// The engine thread's state; lives on that thread alone.
pub(super) struct Worker {
    pub(super) store: Arc<dyn MonitorStore>,
    /// Prepares and submits the rounds this thread stages ([`super::handover`]).
    pub(super) handover: Handover,
    pub(super) outbox: Outbox,
    pub(super) scheduler: SchedulerHandle<Arc<str>, Tie>,
    pub(super) snapshot: Snapshot,
    pub(super) changes: broadcast::Sender<Change>,
    pub(super) stats: Arc<EngineStats>,
    pub(super) config: EngineConfig,
    pub(super) clock: Clock,
    /// Whether this process leads: only then does the worker write rounds.
    pub(super) fence: Fence,
    /// Why the last round could not be written, until one is.
    pub(super) failure: Arc<std::sync::Mutex<Option<String>>>,
    /// Transitions written per monitor since start; the timeline is trimmed only every
    /// [`TRIM_EVERY`] of them, so a transition costs no scan of the history.
    pub(super) transitions_since_trim: RefCell<Counts>,
    /// Monitors as rounds handed to the store and not applied yet left them, by key: what
    /// the next rounds build on.
    pub(super) inflight: RefCell<foldhash::HashMap<String, Inflight>>,
    /// How far rounds have been numbered, applied and failed.
    pub(super) written: Arc<Written>,
    /// Limits on the warnings a herd would repeat for each of its monitors.
    pub(super) quiet: Arc<Quiet>,
    /// Tests make writes fail with this.
    #[cfg(test)]
    pub(super) fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl Worker {
    /// Handles commands until every engine handle is gone: each round takes what is queued
    /// (up to [`MAX_ROUND`]) and is written as one record while the next round gathers, with
    /// at most [`MAX_IN_FLIGHT`] commands on their way to the store.
    ///
    /// Commands are taken in the [`Intake`]'s order: deadlines whose Down is due first,
    /// then the other commands in the order they came (each monitor's own commands,
    /// deadlines included, always in that order), then deadlines that only make a
    /// monitor Late yet.
    pub(super) fn run(self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut intake = Intake::default();
        loop {
            if intake.is_empty() {
                let idle = std::time::Instant::now();
                let cmd = rx.blocking_recv();
                EngineStats::add_since(&self.stats.idle_micros, idle);
                match cmd {
                    Some(cmd) => self.take(&mut intake, cmd),
                    None => return,
                }
            }
            // A full round goes at once (a herd, a burst): waiting would only thin the
            // pipeline ahead of the disk.
            if intake.len() + rx.len() < MAX_ROUND {
                let gathering = std::time::Instant::now();
                let stats = &self.stats;
                self.written
                    .wait_for_rounds(ROUNDS_AHEAD, self.config.gather, || {
                        stats.gathered.fetch_add(1, Relaxed);
                    });
                EngineStats::add_since(&self.stats.gather_micros, gathering);
            }
            let waiting = std::time::Instant::now();
            self.written.wait_for_room(MAX_IN_FLIGHT);
            EngineStats::add_since(&self.stats.room_wait_micros, waiting);
            let mut round = Round::default();
            let mut commands = 0;
            while commands < MAX_ROUND && round.ping_bytes < ROUND_BYTES {
                // Deadlines come in commands of a few thousand: one between two steps,
                // so a herd's first Downs are stepped while the rest still come in.
                while let Ok(cmd) = rx.try_recv() {
                    let due = matches!(cmd, Command::Due(_));
                    self.take(&mut intake, cmd);
                    if due {
                        break;
                    }
                }
                match intake.next(self.clock.now()) {
                    Some(Next::Due(key)) => self.due(&key, &mut round),
                    Some(Next::Command { cmd, first }) => {
                        for key in &first {
                            self.due(key, &mut round);
                        }
                        commands += first.len();
                        self.handle(cmd, &mut round);
                    }
                    None => break,
                }
                commands += 1;
            }
            self.write(round, commands, intake.len() + rx.len());
        }
    }

    /// Adds a command to the intake; monitors that came due at their place in the herd.
    /// A probe is answered here: the thread reads its queue between any two steps, so
    /// taking it proves the thread alive and not stuck, and a herd it would otherwise
    /// queue behind (seconds at a million monitors) does not fail the liveness check.
    fn take(&self, intake: &mut Intake, cmd: Command) {
        let keys = match cmd {
            Command::Due(keys) => keys,
            Command::Probe(reply) => {
                let _ = reply.send(());
                return;
            }
            cmd => return intake.push(cmd),
        };
        // A replica that does not lead decides no deadline: its schedule is held, and a
        // deposed leader's rounds would be refused anyway.
        if self.fence.generation().is_none() {
            return;
        }
        self.stats.observe_arrivals(&keys, self.clock.now());
        intake.due(keys);
    }

    fn read(&self) -> RwLockReadGuard<'_, Monitors> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Monitor `key` as this round left it so far: staged, removed, as a round on its way
    /// to disk left it, or as published.
    fn current(&self, key: &str, round: &Round) -> Option<Monitor> {
        self.with_current(key, round, Monitor::clone)
    }

    /// `f` of monitor `key` as [`Self::current`] finds it, where it sits: called under
    /// the readers' lock when it is the published one, so `f` stays short.
    fn with_current<R>(
        &self,
        key: &str,
        round: &Round,
        f: impl FnOnce(&Monitor) -> R,
    ) -> Option<R> {
        if round.removed.contains(key) {
            return None;
        }
        if let Some(m) = round.monitors.get(key) {
            return Some(f(m));
        }
        if let Some((seq, m)) = self.inflight.borrow().get(key)
            && self.written.pending(*seq)
        {
            return m.as_deref().map(f);
        }
        self.read().get(key).map(f)
    }

    fn handle(&self, cmd: Command, round: &mut Round) {
        if self.fence.generation().is_none() {
            return self.follow(cmd);
        }
        match cmd {
            Command::Due(keys) => keys.iter().for_each(|(key, _)| self.due(key, round)),
            Command::Ping(key, input, reply) => self.ping(&key, input, reply, round),
            Command::Upsert(def, reply) => self.define(*def, reply, round),
            Command::SetPaused(key, paused, reply) => self.set_paused(&key, paused, reply, round),
            Command::Job(key, job, reply) => self.job(&key, job, reply, round),
            Command::Relayed(pings, reply) => self.relayed(pings, reply, round),
            Command::Mirror(_, reply) => {
                // A leader shows what it writes; the mirror's final catch-up comes before
                // the fence leads.
                tracing::debug!("ignored the leader's changes: this replica leads");
                let _ = reply.send(TokenChanges::default());
            }
            Command::Remove(key, uid, reply) => {
                self.remove(&key, false, uid.as_deref(), round);
                round.done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
            Command::Suspend(key, reply) => {
                self.remove(&key, true, None, round);
                round.done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
            Command::Forget(key, uid, reply) => {
                self.forget(&key, uid.as_deref(), round);
                round.done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                }));
            }
            Command::Probe(reply) => {
                let _ = reply.send(());
            }
            #[cfg(test)]
            Command::Stall(d, started) => {
                let _ = started.send(());
                std::thread::sleep(d)
            }
        }
    }

    /// Hands a round to the store as one durable unit (monitor state, pings, timeline and
    /// the alerts it queues, all or nothing) and goes on with the next round while the
    /// store prepares this one ([`Handover`]) and makes it durable: the next round builds
    /// on this one's monitors through [`Worker::current`] (and the store's own reads see
    /// it once [`Handover::settle`] returns). Once the round is durable
    /// and visible, readers see it and its callers are answered, so whoever reads the
    /// history after an answer finds the ping there; a round that is not written is never
    /// published.
    fn write(&self, mut round: Round, commands: usize, waiting: usize) {
        if round.is_empty() {
            return;
        }
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return self.refuse(
                round,
                crate::core::storage::StorageError::NotStored("injected failure".into()),
            );
        }
        let seq = self.written.next();
        // In number order, the order their records sit in the store: a round of a herd
        // then writes sled's leaves in order.
        let mut monitors: Vec<Arc<Monitor>> = std::mem::take(&mut round.monitors)
            .into_values()
            .map(Arc::new)
            .collect();
        monitors.sort_unstable_by_key(|m| m.num);
        // A monitor staged after its removal left `removed` then.
        let removed: Vec<String> = std::mem::take(&mut round.removed).into_iter().collect();
        {
            let mut inflight = self.inflight.borrow_mut();
            // Entries of applied rounds are stale and never read (see `current`); they
            // are dropped in one sweep whenever they could make up half the map, not in
            // every round, where the sweep took a twentieth of the thread in a herd.
            if inflight.len() >= 2 * MAX_IN_FLIGHT {
                let applied = self.written.applied();
                inflight.retain(|_, (s, _)| *s > applied);
            }
            for key in &removed {
                inflight.insert(key.clone(), (seq, None));
            }
            for m in &monitors {
                inflight.insert(m.def.key.clone(), (seq, Some(m.clone())));
            }
        }
        let mut writes = std::mem::take(&mut round.writes);
        (writes.put, writes.put_state) = monitors
            .iter()
            .cloned()
            .partition(|m| round.redefined.contains(&m.def.key));
        writes.keep_pings = self.config.ping_history;
        self.written.hand_over(commands);
        let published = Published {
            seq,
            commands,
            monitors,
            removed,
            changes: std::mem::take(&mut round.changes),
            alerts: !writes.deliveries.is_empty(),
            timed_downs: std::mem::take(&mut round.timed_downs),
            unarmed: std::mem::take(&mut round.unarmed),
            done: std::mem::take(&mut round.done),
        };
        let readers = self.readers();
        let direct = self.handover.commit_round(
            writes,
            waiting,
            Box::new(move |result| readers.settle(published, result)),
        );
        if direct {
            self.stats.direct_rounds.fetch_add(1, Relaxed);
        }
    }

    /// Answers a round that could not be handed to the store with `error`.
    #[cfg(test)]
    fn refuse(&self, mut round: Round, error: crate::core::storage::StorageError) {
        tracing::error!(error = %error, "a round of monitor changes was not written");
        let failure = EngineError::Write(error.clone()).to_string();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
        for d in std::mem::take(&mut round.done) {
            d(Err(EngineError::Write(error.clone())));
        }
    }

    /// What a written round is handed to.
    fn readers(&self) -> Readers {
        Readers {
            snapshot: self.snapshot.clone(),
            scheduler: self.scheduler.clone(),
            changes: self.changes.clone(),
            outbox: self.outbox.clone(),
            failure: self.failure.clone(),
            written: self.written.clone(),
            stats: self.stats.clone(),
            clock: self.clock,
        }
    }
}
