//! Signals stepped through the state machine: pings (local and relayed), a Job's
//! evidence and deadlines, each staged with its history entry.

use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::oneshot;

use super::{Done, Worker};
use crate::core::log_limit::LogLimit;
use crate::core::monitor::engine::publish::arm;
use crate::core::monitor::engine::relayed::{ping_signal, relayed_at};
use crate::core::monitor::engine::staging::Round;
use crate::core::monitor::engine::types::{Monitor, PingInput, PingOutcome};
use crate::core::monitor::engine::{EngineError, PingKind, PingRecord};
use crate::core::monitor::jobs::{JobOutcome, JobSignal};
use crate::core::monitor::state::{self, Effect, MonitorState, Signal, State};
use crate::core::storage::RelayedPing;

/// A round of deadline steps was not written (its round's own error is logged too). Kept
/// for the process, so a deadline's answer captures nothing: it is boxed for every Down,
/// and an empty box allocates nothing.
static DEADLINE_FAILED: std::sync::LazyLock<LogLimit> =
    std::sync::LazyLock::new(|| LogLimit::new(std::time::Duration::from_secs(10)));

impl Worker {
    pub(super) fn due(&self, key: &str, round: &mut Round) {
        let signal = Signal::Tick(self.clock.now());
        let done: Done = Box::new(|r| {
            if let Err(e) = r
                && let Some(held_back) = DEADLINE_FAILED.pass()
            {
                tracing::error!(error = %e, held_back, "applying a deadline failed (logged once every ten seconds; held_back counts the failures since the last such line)");
            }
        });
        self.step(key, signal, None, round, done);
    }

    pub(super) fn ping(
        &self,
        key: &str,
        input: PingInput,
        reply: oneshot::Sender<Result<PingOutcome, EngineError>>,
        round: &mut Round,
    ) {
        let now = self.clock.now();
        let paused = self.with_current(key, round, |m| m.state.state == State::Paused);
        let signal = ping_signal(&input, now);
        self.stats.count_ping(input.kind);
        let outcome = if paused == Some(true) {
            PingOutcome::Paused
        } else {
            PingOutcome::Ok
        };
        let done: Done = Box::new(move |r| {
            let _ = reply.send(r.map(|_| outcome));
        });
        self.step(key, signal, Some(input), round, done);
    }

    /// Applies pings other replicas relayed, each with the instant it was taken, and
    /// stages their numbers so the round removes them from the relay: those of monitors
    /// that no longer exist too, which are dropped.
    pub(super) fn relayed(
        &self,
        pings: Vec<RelayedPing>,
        reply: oneshot::Sender<Result<(), EngineError>>,
        round: &mut Round,
    ) {
        let now = self.clock.now();
        for p in pings {
            round.writes.relayed.push(p.id);
            if self.with_current(&p.key, round, |_| ()).is_none() {
                tracing::debug!(monitor = %p.key, "dropped a relayed ping: no such monitor");
                continue;
            }
            self.stats.count_ping(p.input.kind);
            let signal = ping_signal(&p.input, relayed_at(p.at, now));
            self.step(&p.key, signal, Some(p.input), round, Box::new(|_| {}));
        }
        round.done.push(Box::new(move |r| {
            let _ = reply.send(r);
        }));
    }

    /// Applies a Job's evidence; it enters the ping history like a ping, unless it told
    /// nothing new (the same Job reported again).
    pub(super) fn job(
        &self,
        key: &str,
        job: JobSignal,
        reply: oneshot::Sender<Result<(), EngineError>>,
        round: &mut Round,
    ) {
        let done: Done = Box::new(move |r| {
            let _ = reply.send(r);
        });
        self.step(key, Signal::Job(job), None, round, done);
    }

    /// Applies `signal` to monitor `key` and stages the result; a ping is recorded in the
    /// history even when it changes no state.
    pub(super) fn step(
        &self,
        key: &str,
        signal: Signal,
        ping: Option<PingInput>,
        round: &mut Round,
        done: Done,
    ) {
        // Stepped where it sits (a monitor is copied only once it changed, and then
        // without its old state).
        let stepped = self.with_current(key, round, |m| {
            let (state, effects) = state::apply(&m.def.timing(), &m.state, &signal);
            if ping.is_none() && state == m.state && effects.is_empty() {
                // Nothing changed (e.g. a stale deadline): keep the schedule right, write
                // nothing. A monitor staged in this round is armed when it is written.
                if !round.monitors.contains_key(key) {
                    arm(&self.scheduler, m);
                }
                return None;
            }
            // The scheduler let go of the deadline that fired: a step it drove to no
            // next deadline (a Down) has nothing to disarm ([`Published::unarmed`]).
            let unarmed = matches!(signal, Signal::Tick(_))
                && state::next_wakeup(&m.def.timing(), &state).is_none();
            let changed = state != m.state;
            let last_run_ms = effects
                .iter()
                .find_map(|e| match e {
                    Effect::RunFinished { duration } => u64::try_from(duration.as_millis()).ok(),
                    _ => None,
                })
                .or(m.last_run_ms);
            let next = Monitor {
                num: m.num,
                def: m.def.clone(),
                state,
                last_run_ms,
            };
            Some((next, effects, changed, unarmed))
        });
        let Some(stepped) = stepped else {
            done(Err(EngineError::NotFound));
            return;
        };
        let Some((next, effects, changed, unarmed)) = stepped else {
            done(Ok(()));
            return;
        };
        let record = match (&signal, ping) {
            (_, Some(p)) => Some(self.ping_record(p, &signal, &next.state, &effects)),
            (Signal::Job(job), None) if changed => Some(job_record(job, &next.state, &effects)),
            _ => None,
        };
        if let Signal::Tick(_) = signal {
            self.count_timed_transitions(&effects, round);
        }
        let num = next.num;
        self.stage(next, &effects, record, round, done);
        if unarmed {
            round.unarmed.insert(num);
        }
    }

    /// The history entry of a ping, with the run's duration when it closed one.
    fn ping_record(
        &self,
        p: PingInput,
        signal: &Signal,
        state: &MonitorState,
        effects: &[Effect],
    ) -> PingRecord {
        PingRecord {
            seq: state.pings,
            at: match signal {
                Signal::Success(at)
                | Signal::SuccessFor(at, _)
                | Signal::Start(at)
                | Signal::Fail(at, _)
                | Signal::PipelineStopped(at, _) => *at,
                _ => self.clock.now(),
            },
            kind: p.kind,
            exit_code: p.exit_code,
            source: p.source,
            user_agent: p.user_agent,
            body: p.body,
            duration_ms: run_duration_ms(effects),
            rid: p.rid,
            job: None,
            reason: None,
        }
    }

    /// Counts deadline-driven transitions and keeps the time each Down was due at (its
    /// deadline plus grace), to tell how late it was once its round is on disk.
    fn count_timed_transitions(&self, effects: &[Effect], round: &mut Round) {
        for e in effects {
            if let Effect::Transition { to, at, .. } = e {
                self.stats.transitions.fetch_add(1, Relaxed);
                if *to == State::Down {
                    round.timed_downs.push(*at);
                    self.stats.observe_stepped(*at, self.clock.now());
                }
            }
        }
    }
}

/// The duration a step reports for the run it ended, in milliseconds.
fn run_duration_ms(effects: &[Effect]) -> Option<i64> {
    effects.iter().find_map(|e| match e {
        Effect::RunFinished { duration } => i64::try_from(duration.as_millis()).ok(),
        _ => None,
    })
}

/// The history entry of a Job's evidence: a start, a success or a failure with its
/// reason and exit code, at the time the Job reported it.
fn job_record(job: &JobSignal, state: &MonitorState, effects: &[Effect]) -> PingRecord {
    let (kind, exit_code, reason) = match job.outcome {
        JobOutcome::Running => (PingKind::Start, None, None),
        JobOutcome::Succeeded(_) => (PingKind::Success, None, None),
        JobOutcome::Failed {
            reason, exit_code, ..
        } => (PingKind::Fail, exit_code, Some(reason.as_str().to_string())),
    };
    PingRecord {
        seq: state.pings,
        at: job.at(),
        kind,
        exit_code,
        source: None,
        user_agent: None,
        body: None,
        duration_ms: run_duration_ms(effects).or_else(|| {
            job.duration()
                .and_then(|d| i64::try_from(d.as_millis()).ok())
        }),
        rid: None,
        job: Some(job.name.clone()),
        reason,
    }
}
