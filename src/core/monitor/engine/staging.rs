//! What a round of the engine thread stages ([`Round`]): monitor records, ping records,
//! timeline entries and trims, alerts and the transitions to broadcast, all made durable
//! together once the round is handed over ([`Worker::write`](super::worker::Worker)).

use jiff::Timestamp;

use super::PingRecord;
use super::types::{Change, Monitor, TransitionRecord};
use super::wording::{self, DownWords, RECOVERED, Stopping};
use super::worker::{Done, TRANSITION_HISTORY, TRIM_EVERY, Worker};
use crate::core::alert::message::AlertKind;
use crate::core::monitor::history::{PINGS_PER_BLOCK, approx_size};
use crate::core::monitor::state::{Effect, State};
use crate::core::storage::MonitorRound;

/// Changes staged by one round of commands, made durable together.
#[derive(Default)]
pub(super) struct Round {
    /// What the round writes besides its monitor records: removals, pings, timeline
    /// entries and trims, and the alerts it queues.
    pub(super) writes: MonitorRound,
    /// Monitor records to store, by key: a monitor stepped several times in one round
    /// (pings in a burst) is written once, with its last state.
    pub(super) monitors: foldhash::HashMap<String, Monitor>,
    /// Monitors among [`Self::monitors`] whose definition changed in the round (defined,
    /// redefined, paused or resumed): written whole. The others changed their state alone
    /// and are written as state ([`MonitorRound::put_state`]).
    pub(super) redefined: foldhash::HashSet<String>,
    /// About how many bytes the round's pings make their blocks take (see [`ROUND_BYTES`](super::worker::ROUND_BYTES)).
    pub(super) ping_bytes: usize,
    /// Monitors the round appended pings for.
    pub(super) pinged: foldhash::HashSet<u64>,
    pub(super) done: Vec<Done>,
    /// Monitors removed in this round.
    pub(super) removed: foldhash::HashSet<String>,
    /// State transitions to broadcast once the round is on disk.
    pub(super) changes: Vec<Change>,
    /// When each Down a deadline caused in the round was due: how late it was is
    /// measured once the round is on disk and readers see it.
    pub(super) timed_downs: Vec<Timestamp>,
    /// Monitors the round leaves with nothing to arm (see [`Published::unarmed`](super::publish::Published::unarmed)).
    pub(super) unarmed: foldhash::HashSet<u64>,
}

impl Round {
    pub(super) fn is_empty(&self) -> bool {
        self.done.is_empty() && self.monitors.is_empty() && self.writes.is_empty()
    }

    /// Adds ping `p` of monitor `num`. The first ping of a monitor in a round counts the
    /// block it goes into as a whole (its earlier pings are most likely of the same size),
    /// since that block is written again.
    pub(super) fn ping(&mut self, num: u64, p: PingRecord) {
        let size = approx_size(&p);
        self.ping_bytes += if self.pinged.insert(num) {
            size.saturating_mul(1 + (p.seq % PINGS_PER_BLOCK) as usize)
        } else {
            size
        };
        self.writes.pings.push((num, p));
    }
}

impl Worker {
    /// Stages `m` (plus an optional ping record, its timeline entries and the alerts its
    /// effects call for); readers see it and `done` runs once the round is on disk. It is
    /// written as its state alone unless the caller changed its definition and marks it
    /// in [`Round::redefined`].
    pub(super) fn stage(
        &self,
        m: Monitor,
        effects: &[Effect],
        ping: Option<PingRecord>,
        round: &mut Round,
        done: Done,
    ) {
        if effects
            .iter()
            .any(|e| matches!(e, Effect::Transition { .. }))
        {
            self.trim_timeline_now_and_then(m.num, round);
        }
        // A Down's words, for its timeline entry, its broadcast and its alert alike: said
        // once per step (formatting them took a tenth of the engine thread in a herd).
        let mut words = DownWords::default();
        for (idx, effect) in effects.iter().enumerate() {
            match *effect {
                Effect::Transition { from, to, at } => {
                    let idx = u8::try_from(idx).unwrap_or(u8::MAX);
                    let reason = (to == State::Down)
                        .then_some(m.state.down_reason.as_ref())
                        .flatten()
                        .map(|r| words.say(r, &m, at));
                    self.stage_transition(&m, (from, to, at), reason, idx, round);
                    if let Some((kind, reason)) = wording::warning(&m, from, to) {
                        self.stage_alert(&m, kind, at, reason, round);
                    }
                }
                Effect::Alert { ref reason, at } => {
                    let reason = words.say(reason, &m, at);
                    self.stage_alert(&m, AlertKind::Down, at, reason, round);
                }
                Effect::Recovery { at } => {
                    self.stage_alert(&m, AlertKind::Recovery, at, RECOVERED.into(), round);
                }
                // A step closes an incident only by pausing the monitor (removals close
                // theirs in `stop_watching`).
                Effect::Closed { at } => {
                    let reason = wording::stopped(&m, Stopping::Paused);
                    self.stage_alert(&m, AlertKind::Stopped, at, reason, round);
                }
                Effect::RunFinished { .. } => {}
            }
        }
        if let Some(p) = ping {
            round.ping(m.num, p);
        }
        // Armed when written, unless the step staging it says otherwise (after this).
        round.unarmed.remove(&m.num);
        round.removed.remove(&m.def.key);
        round.monitors.insert(m.def.key.clone(), m);
        round.done.push(done);
    }

    /// Stores the transition in the monitor's timeline, to be broadcast once it is written;
    /// `reason` is a Down's, in words.
    fn stage_transition(
        &self,
        m: &Monitor,
        (from, to, at): (State, State, Timestamp),
        reason: Option<String>,
        idx: u8,
        round: &mut Round,
    ) {
        let record = TransitionRecord {
            at,
            from,
            to,
            reason: reason.clone(),
        };
        round.writes.transitions.push((m.num, idx, record));
        round.changes.push(Change {
            key: m.def.key.clone(),
            from,
            to,
            at,
            reason,
        });
    }

    /// Queues the alert for each of the monitor's targets, in the same round as the state
    /// change that raised it.
    pub(super) fn stage_alert(
        &self,
        m: &Monitor,
        kind: AlertKind,
        at: Timestamp,
        reason: String,
        round: &mut Round,
    ) {
        self.stats.count_alert(kind);
        if m.def.targets.is_empty() {
            // One line a minute: a herd of targetless monitors would log one each.
            if let Some(held_back) = self.quiet.untargeted.pass() {
                tracing::warn!(
                    monitor = %m.def.key,
                    held_back,
                    "alert has no target: set spec.alerts, the Application's alerts or --webhook-url (logged once a minute; held_back counts the alerts without a target since the last such line)"
                );
            }
            return;
        }
        let alert = wording::alert(m, kind, at, reason);
        round.writes.deliveries.extend(self.outbox.deliveries(
            &alert,
            &m.def.targets,
            self.clock.now(),
        ));
    }

    /// Counts a step with transitions; every [`TRIM_EVERY`] of them, stages removal of the
    /// timeline entries beyond the newest [`TRANSITION_HISTORY`] (minus room for this
    /// step's own).
    fn trim_timeline_now_and_then(&self, num: u64, round: &mut Round) {
        let due = {
            let mut counts = self.transitions_since_trim.borrow_mut();
            let n = counts.get_mut(num);
            *n += 1;
            if *n >= TRIM_EVERY {
                *n = 0;
            }
            *n == 0
        };
        if due {
            let keep = TRANSITION_HISTORY.saturating_sub(2);
            round.writes.trims.push((num, keep));
        }
    }
}
