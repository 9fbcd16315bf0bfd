//! The monitor engine: owns every monitor's state, applies signals and deadlines through
//! the pure state machine, persists the result and hands alerts to the outbox.
//!
//! One engine thread serialises all changes, so a monitor is never updated twice at once.
//! A round of commands (pings, deadlines, edits) is one commit-log record: state changes,
//! ping history, timeline entries and the alerts they queue are durable together, so a
//! crash can never lose an alert or send one twice. Readers use an in-memory snapshot and
//! never touch sled.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::history::{self, RoundBlocks};
use super::schedule::{self, Clock, SchedulerHandle};
use super::state::{self, DownReason, Effect, MonitorState, Signal, State, Timing};
use crate::core::alert::message::{Alert, AlertKind, Target, human_duration};
use crate::core::alert::outbox::{self, Outbox};
use crate::core::store::Committer;
use crate::core::store::wal::Mutation;
use crate::core::token::TokenHash;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No monitor under that key.
    #[error("heartbeat not found")]
    NotFound,
    /// sled failed.
    #[error("monitor storage: {0}")]
    Sled(#[from] sled::Error),
    /// A flush failed.
    #[error(transparent)]
    Commit(#[from] crate::core::store::CommitError),
    /// A record could not be encoded or decoded.
    #[error("monitor record: {0}")]
    Codec(#[from] serde_json::Error),
    /// Ping history could not be read or written.
    #[error(transparent)]
    History(#[from] history::HistoryError),
    /// The outbox refused a record.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    /// The engine thread is gone.
    #[error("the monitor engine has stopped")]
    Stopped,
    /// Writing a round of changes failed.
    #[error("writing monitor state failed: {0}")]
    Write(String),
}

/// Where a monitor's definition comes from; decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A standalone manifest file (read-only through the API).
    Manifest,
    /// Created through the management API in standalone mode.
    Api,
    /// A Kubernetes custom resource.
    Kubernetes,
}

/// Everything the engine needs to know about a monitor, resolved by a front end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorDef {
    /// `namespace/name`: the engine's key.
    pub key: String,
    /// Stable id for the management API.
    pub id: String,
    /// Namespace (`default` in standalone mode).
    pub namespace: String,
    /// Resource name.
    pub name: String,
    /// Human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Expected interval, seconds.
    pub interval_secs: u64,
    /// Grace, seconds.
    pub grace_secs: u64,
    /// Paused by spec.
    pub paused: bool,
    /// Resolved alert targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Owning application key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Hash of the ping token.
    pub token: TokenHash,
    /// How to ping it, for alert text (no token).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ping_hint: String,
    /// Who defines it.
    pub origin: Origin,
    /// Keep state and history after deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
    /// When the monitor was first defined.
    pub created_at: Timestamp,
    /// When the definition last changed.
    pub updated_at: Timestamp,
}

impl MonitorDef {
    /// The monitor's timing.
    pub fn timing(&self) -> Timing {
        Timing::from_secs(self.interval_secs, self.grace_secs)
    }

    fn scope(&self) -> String {
        match &self.application {
            Some(app) => format!(
                "namespace {}, application {}",
                self.namespace,
                app.rsplit('/').next().unwrap_or(app)
            ),
            None => format!("namespace {}", self.namespace),
        }
    }
}

/// A monitor as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    /// Numeric id used in history keys.
    pub num: u64,
    /// Definition.
    pub def: MonitorDef,
    /// State.
    pub state: MonitorState,
}

/// What kind of signal a ping carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PingKind {
    /// Success (`/ping`, exit code 0).
    Success,
    /// A run began (`/start`).
    Start,
    /// Failure (`/fail`, exit code 1–255).
    Fail,
}

/// One received ping, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRecord {
    /// Sequence number within the monitor (1-based).
    pub seq: u64,
    /// When it arrived.
    pub at: Timestamp,
    /// Kind.
    pub kind: PingKind,
    /// Exit code, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Client address (first X-Forwarded-For entry when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// User agent, at most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Request body, at most 10 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Run duration in milliseconds, when a `/start` preceded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

/// A ping as received by the HTTP layer.
#[derive(Debug, Clone)]
pub struct PingInput {
    /// Kind.
    pub kind: PingKind,
    /// Exit code.
    pub exit_code: Option<u8>,
    /// Client address.
    pub source: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Body excerpt.
    pub body: Option<String>,
}

/// What a ping's sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// Recorded and applied.
    Ok,
    /// Recorded; the monitor is paused.
    Paused,
}

/// A state transition as kept in a monitor's timeline (newest first when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// When the monitor entered `to`.
    pub at: Timestamp,
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Why, in words (for Down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Transitions kept per monitor at least; older ones are trimmed in steps of [`TRIM_EVERY`].
const TRANSITION_HISTORY: usize = 200;

/// A state transition, for status writers and event recorders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Monitor key.
    pub key: String,
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// When.
    pub at: Timestamp,
    /// Why, in words (for Down).
    pub reason: Option<String>,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Pings kept per monitor.
    pub ping_history: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { ping_history: 1000 }
    }
}

enum Command {
    Upsert(MonitorDef, oneshot::Sender<Result<Monitor, EngineError>>),
    Remove(String, oneshot::Sender<Result<(), EngineError>>),
    Ping(
        String,
        PingInput,
        oneshot::Sender<Result<PingOutcome, EngineError>>,
    ),
    SetPaused(String, bool, oneshot::Sender<Result<Monitor, EngineError>>),
    Due(String),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Pings by kind: success, start, fail.
    pub pings: [std::sync::atomic::AtomicU64; 3],
    /// Alerts enqueued: down, recovery.
    pub alerts: [std::sync::atomic::AtomicU64; 2],
    /// Time-driven transitions applied.
    pub transitions: std::sync::atomic::AtomicU64,
    /// How long after its due time each Down transition was applied.
    pub down_lateness: crate::core::metrics::Histogram,
}

/// Handle to the engine; clone freely.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    snapshot: Arc<RwLock<HashMap<String, Monitor>>>,
    history: sled::Tree,
    ping_history: u64,
    changes: broadcast::Sender<Change>,
    /// Counters.
    pub stats: Arc<EngineStats>,
    clock: Clock,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

// Key families of the monitors tree. 2 held single pings in earlier versions and 5 holds
// ping blocks; both belong to `history`.
const FAMILY_MONITOR: u8 = 1;
const FAMILY_RETAINED: u8 = 3;
const FAMILY_TRANSITION: u8 = 4;

fn transition_prefix(num: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = FAMILY_TRANSITION;
    k[1..].copy_from_slice(&num.to_be_bytes());
    k
}

/// Transition key: family, monitor, time, position among the effects of one step (two
/// transitions can share an instant).
fn transition_key(num: u64, at: Timestamp, idx: u8) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..9].copy_from_slice(&transition_prefix(num));
    k[9..17].copy_from_slice(&crate::core::store::keys::i64_key(at.as_microsecond()));
    k[17] = idx;
    k
}

fn monitor_key(key: &str) -> Vec<u8> {
    let mut k = vec![FAMILY_MONITOR];
    k.extend_from_slice(key.as_bytes());
    k
}

/// Applies `signals` in order, collecting every effect.
fn apply_all(
    timing: &Timing,
    state: &MonitorState,
    signals: Vec<Signal>,
) -> (MonitorState, Vec<Effect>) {
    let mut st = state.clone();
    let mut effects = Vec::new();
    for sig in signals {
        let (next, e) = state::apply(timing, &st, sig);
        st = next;
        effects.extend(e);
    }
    (st, effects)
}

/// Where a monitor deleted with `Retain` keeps its last record.
fn tombstone_key(key: &str) -> Vec<u8> {
    let mut k = vec![FAMILY_RETAINED];
    k.extend_from_slice(key.as_bytes());
    k
}

struct Worker {
    tree: sled::Tree,
    db: sled::Db,
    outbox: Outbox,
    committer: Committer,
    scheduler: SchedulerHandle<String>,
    snapshot: Arc<RwLock<HashMap<String, Monitor>>>,
    changes: broadcast::Sender<Change>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
    clock: Clock,
    /// Transitions written per monitor since start; the timeline is trimmed only every
    /// [`TRIM_EVERY`] of them, so a transition costs no scan of the history.
    transitions_since_trim: std::cell::RefCell<HashMap<u64, u32>>,
}

/// How many transitions a monitor may add before its timeline is trimmed back to
/// [`TRANSITION_HISTORY`]; it never holds more than the sum of both plus one restart's worth.
const TRIM_EVERY: u32 = 50;

fn describe_down(reason: DownReason, m: &Monitor, at: Timestamp) -> String {
    match reason {
        DownReason::Missed => match m.state.last_ping_at {
            Some(last) => format!(
                "no ping for {} (interval {}, grace {})",
                human_duration(at.duration_since(last).as_secs()),
                human_duration(m.def.interval_secs as i64),
                human_duration(m.def.grace_secs as i64)
            ),
            None => "no ping received".into(),
        },
        DownReason::Failed { exit_code: Some(c) } => {
            format!("the job reported failure (exit code {c})")
        }
        DownReason::Failed { exit_code: None } => "the job reported failure (/fail)".into(),
        DownReason::RunTimeout => format!(
            "a run that signalled /start did not finish within {}",
            human_duration(m.def.timing().run_allowance().as_secs())
        ),
    }
}

type Done = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

/// Changes staged by one round of commands, made durable together.
#[derive(Default)]
struct Round {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Monitor records to store, by key: a monitor stepped several times in one round
    /// (pings in a burst) is serialized and written once, with its last state.
    monitors: HashMap<String, Monitor>,
    /// Ping blocks appended to in this round, written once each.
    pings: RoundBlocks,
    alerts: Vec<outbox::Record>,
    done: Vec<Done>,
}

/// Most commands handled in one round (one commit-log record).
const MAX_ROUND: usize = 1024;

impl Worker {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Monitor>> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, m: &Monitor) {
        self.snapshot
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.def.key.clone(), m.clone());
        match state::next_wakeup(&m.def.timing(), &m.state) {
            Some(at) => self.scheduler.arm(m.def.key.clone(), at),
            None => self.scheduler.disarm(m.def.key.clone()),
        }
    }

    /// Stages `m` (plus an optional ping record and the alerts its effects call for) and
    /// publishes it to readers; `done` runs once the round is on disk.
    fn stage(
        &self,
        m: &Monitor,
        effects: &[Effect],
        ping: Option<&PingRecord>,
        round: &mut Round,
        done: Done,
    ) {
        let staged = (|| -> Result<(), EngineError> {
            let mut dropped_old = false;
            for (idx, e) in effects.iter().enumerate() {
                let (kind, at, reason) = match e {
                    Effect::Alert { reason, at } => {
                        (AlertKind::Down, *at, describe_down(*reason, m, *at))
                    }
                    Effect::Recovery { at } => (
                        AlertKind::Recovery,
                        *at,
                        "a successful ping arrived; the monitor is up again".to_string(),
                    ),
                    Effect::Transition { from, to, at } => {
                        let reason = (*to == State::Down)
                            .then(|| m.state.down_reason.map(|r| describe_down(r, m, *at)))
                            .flatten();
                        let record = TransitionRecord {
                            at: *at,
                            from: *from,
                            to: *to,
                            reason: reason.clone(),
                        };
                        round.ops.push((
                            transition_key(m.num, *at, u8::try_from(idx).unwrap_or(u8::MAX))
                                .to_vec(),
                            Some(serde_json::to_vec(&record)?),
                        ));
                        if !dropped_old {
                            dropped_old = true;
                            let due = {
                                let mut counts = self.transitions_since_trim.borrow_mut();
                                let n = counts.entry(m.num).or_insert(0);
                                *n += 1;
                                *n >= TRIM_EVERY
                            };
                            if due {
                                self.transitions_since_trim.borrow_mut().insert(m.num, 0);
                                self.drop_old_transitions(m.num, round)?;
                            }
                        }
                        let _ = self.changes.send(Change {
                            key: m.def.key.clone(),
                            from: *from,
                            to: *to,
                            at: *at,
                            reason,
                        });
                        continue;
                    }
                    Effect::RunFinished { .. } => continue,
                };
                let idx = usize::from(kind == AlertKind::Recovery);
                self.stats.alerts[idx].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if m.def.targets.is_empty() {
                    tracing::warn!(monitor = %m.def.key, "alert has no target: set spec.alerts, the Application's alerts or --webhook-url");
                    continue;
                }
                let alert = Alert {
                    id: format!(
                        "{}:{}:{}",
                        m.def.key,
                        at.as_millisecond(),
                        if kind == AlertKind::Down {
                            "down"
                        } else {
                            "recovery"
                        }
                    ),
                    kind,
                    monitor: m.def.name.clone(),
                    display_name: m.def.display_name.clone(),
                    scope: m.def.scope(),
                    reason,
                    occurred_at: at,
                    last_ping_at: m.state.last_ping_at,
                    expected_at: m.state.deadline,
                    ping_hint: m.def.ping_hint.clone(),
                };
                round
                    .alerts
                    .extend(outbox::records(&alert, &m.def.targets, self.clock.now())?);
            }
            round.monitors.insert(m.def.key.clone(), m.clone());
            if let Some(p) = ping {
                let mut expired = Vec::new();
                round
                    .pings
                    .record(&self.tree, m.num, p, self.config.ping_history, &mut expired)?;
                round.ops.extend(expired.into_iter().map(|k| (k, None)));
            }
            Ok(())
        })();
        match staged {
            Ok(()) => {
                self.publish(m);
                round.done.push(done);
            }
            Err(e) => done(Err(e)),
        }
    }

    /// Keeps the timeline bounded: stages removal of entries beyond the newest
    /// [`TRANSITION_HISTORY`] (minus room for this step's own); called every
    /// [`TRIM_EVERY`] transitions of a monitor.
    fn drop_old_transitions(&self, num: u64, round: &mut Round) -> Result<(), EngineError> {
        let keep = TRANSITION_HISTORY.saturating_sub(2);
        for k in self
            .tree
            .scan_prefix(transition_prefix(num))
            .keys()
            .rev()
            .skip(keep)
        {
            round.ops.push((k?.to_vec(), None));
        }
        Ok(())
    }

    /// Writes a round as one commit-log record (monitor state, pings, timeline and the
    /// alerts it queues, all or nothing) and waits until it is durable and applied, so the
    /// next round reads what this one wrote; commands gather meanwhile.
    fn write(&self, round: Round) {
        if round.done.is_empty()
            && round.ops.is_empty()
            && round.monitors.is_empty()
            && round.pings.is_empty()
        {
            return;
        }
        let alerts = !round.alerts.is_empty();
        let mut writes = match self.round_writes(round.ops, round.pings, round.monitors) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "encoding monitor state failed");
                for d in round.done {
                    d(Err(EngineError::Write(e.to_string())));
                }
                return;
            }
        };
        writes.extend(
            round
                .alerts
                .into_iter()
                .map(|(k, v)| Mutation::put_if_absent(self.outbox.pending_tree(), k, v)),
        );
        let result = self.committer.log_blocking(writes).map_err(|e| {
            tracing::error!(error = %e, "writing monitor state failed");
            e.to_string()
        });
        if alerts && result.is_ok() {
            self.outbox.wake();
        }
        for d in round.done {
            d(result.clone().map_err(EngineError::Write));
        }
    }

    /// A round's changes to the monitors tree as writes, in the order they were staged;
    /// ping blocks and monitor records come after the other changes, since a monitor
    /// removed in the round is no longer among them.
    fn round_writes(
        &self,
        ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        pings: RoundBlocks,
        monitors: HashMap<String, Monitor>,
    ) -> Result<Vec<Mutation>, serde_json::Error> {
        let mut writes: Vec<Mutation> = Vec::with_capacity(ops.len() + monitors.len() + 1);
        for (k, v) in ops {
            writes.push(match v {
                Some(v) => Mutation::put(&self.tree, k, v),
                None => Mutation::remove(&self.tree, k),
            });
        }
        writes.extend(pings.into_writes(&self.tree));
        for (key, m) in monitors {
            writes.push(Mutation::put(
                &self.tree,
                monitor_key(&key),
                serde_json::to_vec(&m)?,
            ));
        }
        Ok(writes)
    }

    fn step(
        &self,
        key: &str,
        signal: Signal,
        ping: Option<PingInput>,
        round: &mut Round,
        done: Done,
    ) {
        let Some(m) = self.read().get(key).cloned() else {
            done(Err(EngineError::NotFound));
            return;
        };
        let timing = m.def.timing();
        let (new_state, effects) = state::apply(&timing, &m.state, signal);
        let record = ping.map(|p| {
            let duration_ms = effects.iter().find_map(|e| match e {
                Effect::RunFinished { duration } => Some(duration.as_millis() as i64),
                _ => None,
            });
            PingRecord {
                seq: new_state.pings,
                at: match signal {
                    Signal::Success(at) | Signal::Start(at) | Signal::Fail(at, _) => at,
                    _ => self.clock.now(),
                },
                kind: p.kind,
                exit_code: p.exit_code,
                source: p.source,
                user_agent: p.user_agent,
                body: p.body,
                duration_ms,
            }
        });
        if record.is_none() && new_state == m.state && effects.is_empty() {
            // Nothing changed (e.g. a stale deadline): keep the schedule right, write nothing.
            self.publish(&m);
            done(Ok(()));
            return;
        }
        if let Signal::Tick(now) = signal {
            for e in &effects {
                if let Effect::Transition { to, at, .. } = e {
                    self.stats
                        .transitions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if *to == State::Down {
                        let late = now.duration_since(*at);
                        self.stats
                            .down_lateness
                            .observe(std::time::Duration::try_from(late).unwrap_or_default());
                    }
                }
            }
        }
        let next = Monitor {
            num: m.num,
            def: m.def,
            state: new_state,
        };
        self.stage(&next, &effects, record.as_ref(), round, done);
    }

    fn upsert(&self, mut def: MonitorDef) -> Result<(Monitor, Vec<Effect>), EngineError> {
        let now = self.clock.now();
        let existing = self.read().get(&def.key).cloned();
        let (m, effects) = match existing {
            Some(old) => {
                def.created_at = old.def.created_at;
                def.id = old.def.id.clone();
                if def == old.def {
                    return Ok((old, Vec::new()));
                }
                let mut signals = Vec::new();
                if def.paused != old.def.paused {
                    signals.push(if def.paused {
                        Signal::Pause(now)
                    } else {
                        Signal::Resume(now)
                    });
                }
                if def.timing() != old.def.timing() {
                    signals.push(Signal::Retimed(now));
                }
                let (st, effects) = apply_all(&def.timing(), &old.state, signals);
                (
                    Monitor {
                        num: old.num,
                        def,
                        state: st,
                    },
                    effects,
                )
            }
            None => match self.tree.get(tombstone_key(&def.key))? {
                // Deleted with Retain and defined again: pick up its state and history.
                Some(v) => {
                    let old: Monitor = serde_json::from_slice(&v)?;
                    def.created_at = old.def.created_at;
                    let mut signals = vec![Signal::Retimed(now)];
                    if def.paused {
                        signals.push(Signal::Pause(now));
                    }
                    let (st, effects) = apply_all(&def.timing(), &old.state, signals);
                    (
                        Monitor {
                            num: old.num,
                            def,
                            state: st,
                        },
                        effects,
                    )
                }
                None => {
                    let num = self.db.generate_id()? + 1;
                    let state = if def.paused {
                        MonitorState::new_paused(now)
                    } else {
                        MonitorState::new(now)
                    };
                    (Monitor { num, def, state }, Vec::new())
                }
            },
        };
        Ok((m, effects))
    }

    fn remove(&self, key: &str, round: &mut Round) -> Result<(), EngineError> {
        let Some(m) = self
            .snapshot
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
        else {
            return Ok(());
        };
        self.scheduler.disarm(key.to_string());
        self.transitions_since_trim.borrow_mut().remove(&m.num);
        round.monitors.remove(key);
        round.ops.push((monitor_key(key), None));
        if m.def.retain_on_delete {
            // Keep history and state under a tombstone key so a re-created monitor finds them;
            // pings answered earlier in this round stay staged and are written with it.
            round
                .ops
                .push((tombstone_key(key), Some(serde_json::to_vec(&m)?)));
        } else {
            // Staged ping blocks would be written after the removals below.
            round.pings.forget(m.num);
            round.ops.push((tombstone_key(key), None));
            for k in self.tree.scan_prefix(history::monitor_prefix(m.num)).keys() {
                round.ops.push((k?.to_vec(), None));
            }
            for k in self.tree.scan_prefix(transition_prefix(m.num)).keys() {
                round.ops.push((k?.to_vec(), None));
            }
        }
        Ok(())
    }

    fn handle(&self, cmd: Command, round: &mut Round) {
        match cmd {
            Command::Due(key) => {
                let now = self.clock.now();
                self.step(
                    &key,
                    Signal::Tick(now),
                    None,
                    round,
                    Box::new(|r| {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "applying a deadline failed");
                        }
                    }),
                );
            }
            Command::Ping(key, input, reply) => {
                let now = self.clock.now();
                let paused = self
                    .read()
                    .get(&key)
                    .map(|m| m.state.state == State::Paused);
                let kind = input.kind;
                let signal = match kind {
                    PingKind::Success => Signal::Success(now),
                    PingKind::Start => Signal::Start(now),
                    PingKind::Fail => Signal::Fail(now, input.exit_code),
                };
                let idx = match kind {
                    PingKind::Success => 0,
                    PingKind::Start => 1,
                    PingKind::Fail => 2,
                };
                self.stats.pings[idx].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let outcome = if paused == Some(true) {
                    PingOutcome::Paused
                } else {
                    PingOutcome::Ok
                };
                self.step(
                    &key,
                    signal,
                    Some(input),
                    round,
                    Box::new(move |r| {
                        let _ = reply.send(r.map(|_| outcome));
                    }),
                );
            }
            Command::Upsert(def, reply) => match self.upsert(def) {
                Ok((m, effects)) => {
                    if self.read().get(&m.def.key) == Some(&m) {
                        let _ = reply.send(Ok(m));
                    } else {
                        let out = m.clone();
                        self.stage(
                            &m,
                            &effects,
                            None,
                            round,
                            Box::new(move |r| {
                                let _ = reply.send(r.map(|_| out));
                            }),
                        );
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::SetPaused(key, paused, reply) => {
                let now = self.clock.now();
                let Some(mut m) = self.read().get(&key).cloned() else {
                    let _ = reply.send(Err(EngineError::NotFound));
                    return;
                };
                m.def.paused = paused;
                m.def.updated_at = now;
                let sig = if paused {
                    Signal::Pause(now)
                } else {
                    Signal::Resume(now)
                };
                let (st, effects) = state::apply(&m.def.timing(), &m.state, sig);
                m.state = st;
                let out = m.clone();
                self.stage(
                    &m,
                    &effects,
                    None,
                    round,
                    Box::new(move |r| {
                        let _ = reply.send(r.map(|_| out));
                    }),
                );
            }
            Command::Remove(key, reply) => match self.remove(&key, round) {
                Ok(()) => round.done.push(Box::new(move |r| {
                    let _ = reply.send(r);
                })),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    fn run(self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut round = Round::default();
            self.handle(first, &mut round);
            for _ in 1..MAX_ROUND {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd, &mut round),
                    Err(_) => break,
                }
            }
            self.write(round);
        }
    }
}

impl Engine {
    /// Loads every stored monitor, arms its deadline and starts the engine thread. Monitors
    /// that fell due while the process was down are evaluated at once (and alert once).
    pub fn start(
        db: &sled::Db,
        committer: Committer,
        outbox: Outbox,
        config: EngineConfig,
        clock: Clock,
    ) -> Result<Self, EngineError> {
        let tree = db.open_tree("monitors")?;
        let converted = history::convert_single_records(&tree, &committer)?;
        if converted > 0 {
            tracing::info!(pings = converted, "converted stored ping history to blocks");
        }
        let mut map = HashMap::new();
        for item in tree.scan_prefix([FAMILY_MONITOR]) {
            let (_, v) = item?;
            let m: Monitor = serde_json::from_slice(&v)?;
            map.insert(m.def.key.clone(), m);
        }
        let snapshot = Arc::new(RwLock::new(map));
        let (scheduler, mut due) = schedule::spawn::<String>(clock);
        let (tx, rx) = mpsc::unbounded_channel();
        let (changes, _) = broadcast::channel(4096);
        let stats = Arc::new(EngineStats::default());
        let worker = Worker {
            transitions_since_trim: Default::default(),
            tree: tree.clone(),
            db: db.clone(),
            outbox,
            committer,
            scheduler: scheduler.clone(),
            snapshot: snapshot.clone(),
            changes: changes.clone(),
            stats: stats.clone(),
            config,
            clock,
        };
        for m in snapshot.read().unwrap_or_else(|p| p.into_inner()).values() {
            if let Some(at) = state::next_wakeup(&m.def.timing(), &m.state) {
                scheduler.arm(m.def.key.clone(), at);
            }
        }
        let forward = tx.clone();
        tokio::spawn(async move {
            while let Some((key, _)) = due.recv().await {
                if forward.send(Command::Due(key)).is_err() {
                    return;
                }
            }
        });
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("hartslag-monitors".into())
            .spawn(move || {
                let _guard = runtime.enter();
                worker.run(rx);
            })
            .map_err(|e| EngineError::Sled(sled::Error::Io(e)))?;
        Ok(Self {
            tx,
            snapshot,
            history: tree,
            ping_history: config.ping_history,
            changes,
            stats,
            clock,
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Command,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Creates or updates a monitor durably; spec changes re-arm its deadline at once.
    pub async fn upsert(&self, def: MonitorDef) -> Result<Monitor, EngineError> {
        self.call(|tx| Command::Upsert(def, tx)).await
    }

    /// Removes a monitor (its history too, unless it is retained).
    pub async fn remove(&self, key: &str) -> Result<(), EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::Remove(key, tx)).await
    }

    /// Applies a ping durably and tells whether the monitor is paused.
    pub async fn ping(&self, key: &str, input: PingInput) -> Result<PingOutcome, EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::Ping(key, input, tx)).await
    }

    /// Pauses or resumes a monitor.
    pub async fn set_paused(&self, key: &str, paused: bool) -> Result<Monitor, EngineError> {
        let key = key.to_string();
        self.call(|tx| Command::SetPaused(key, paused, tx)).await
    }

    /// One monitor.
    pub fn get(&self, key: &str) -> Option<Monitor> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Every monitor, sorted by key.
    pub fn list(&self) -> Vec<Monitor> {
        let mut v: Vec<Monitor> = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.def.key.cmp(&b.def.key));
        v
    }

    /// Runs `f` over the snapshot under its read lock, so readers can filter and count a
    /// large set without cloning every monitor; keep `f` short (the engine waits for it).
    pub fn view<R>(&self, f: impl FnOnce(&HashMap<String, Monitor>) -> R) -> R {
        f(&self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// How many monitors belong to application `app`, not counting `except`.
    pub fn count_for_application(&self, app: &str, except: Option<&str>) -> usize {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|m| {
                m.def.application.as_deref() == Some(app) && Some(m.def.key.as_str()) != except
            })
            .count()
    }

    /// Monitors per state, for gauges.
    pub fn counts(&self) -> HashMap<State, usize> {
        let mut c = HashMap::new();
        for m in self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            *c.entry(m.state.state).or_insert(0) += 1;
        }
        c
    }

    /// The newest pings of a monitor, newest first.
    pub fn pings(&self, num: u64, limit: usize) -> Result<Vec<PingRecord>, EngineError> {
        Ok(history::newest(
            &self.history,
            num,
            limit,
            self.ping_history,
        )?)
    }

    /// The newest state transitions of a monitor, newest first.
    pub fn transitions(
        &self,
        num: u64,
        limit: usize,
    ) -> Result<Vec<TransitionRecord>, EngineError> {
        self.history
            .scan_prefix(transition_prefix(num))
            .rev()
            .take(limit)
            .map(|item| {
                let (_, v) = item?;
                Ok(serde_json::from_slice(&v)?)
            })
            .collect()
    }

    /// A retained (deleted with `Retain`) monitor's last record, for re-creation.
    pub fn retained(&self, key: &str) -> Option<Monitor> {
        self.history
            .get(tombstone_key(key))
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Subscribes to state transitions.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }
}
