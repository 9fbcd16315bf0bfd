//! Definitions: a monitor created, changed, paused or removed on the leader, and the
//! leader's changes shown on a replica that follows.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Command, Done, Worker};
use crate::core::monitor::engine::EngineError;
use crate::core::monitor::engine::def::same_resource;
use crate::core::monitor::engine::mirror::{TokenChanges, mirrored};
use crate::core::monitor::engine::publish::Published;
use crate::core::monitor::engine::staging::Round;
use crate::core::monitor::engine::types::{Monitor, MonitorDef};
use crate::core::monitor::state::{self, Effect, MonitorState, Signal, Timing};
use crate::core::storage::{FeedChanges, Removal};

impl Worker {
    /// A command on a replica that does not lead: it shows the leader's changes and
    /// writes nothing, so every write is refused (a deadline waits for the leader).
    pub(super) fn follow(&self, cmd: Command) {
        match cmd {
            Command::Mirror(changes, reply) => {
                let _ = reply.send(self.mirror(*changes));
            }
            Command::Upsert(_, reply) | Command::SetPaused(_, _, reply) => {
                let _ = reply.send(Err(EngineError::NotLeader));
            }
            Command::Remove(_, _, reply)
            | Command::Suspend(_, reply)
            | Command::Forget(_, _, reply)
            | Command::Job(_, _, reply)
            | Command::Relayed(_, reply) => {
                let _ = reply.send(Err(EngineError::NotLeader));
            }
            Command::Ping(_, _, reply) => {
                let _ = reply.send(Err(EngineError::NotLeader));
            }
            Command::Due(_) => {}
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

    /// Shows the leader's `changes` to readers, the deadline scheduler (whose deadlines
    /// wait until this replica leads) and subscribers; the ping tokens that changed, for
    /// the registry.
    fn mirror(&self, changes: FeedChanges) -> TokenChanges {
        let out = mirrored(&self.read(), changes);
        let mut shown = Published {
            seq: 0,
            commands: 0,
            monitors: out.monitors.into_iter().map(Arc::new).collect(),
            removed: out.removed,
            changes: out.changes,
            alerts: false,
            done: Vec::new(),
            // The leader measured how late its Downs were; a mirror only shows them.
            timed_downs: Vec::new(),
            // No deadline fired here: every monitor is armed as the leader left it.
            unarmed: Default::default(),
        };
        self.readers().publish(&mut shown);
        out.tokens
    }

    pub(super) fn define(
        &self,
        def: MonitorDef,
        reply: oneshot::Sender<Result<Monitor, EngineError>>,
        round: &mut Round,
    ) {
        match self.upsert(def, round) {
            Ok((m, _)) if self.current(&m.def.key, round).as_ref() == Some(&m) => {
                let _ = reply.send(Ok(m));
            }
            Ok((m, effects)) => self.redefine(m, &effects, reply, round),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    pub(super) fn set_paused(
        &self,
        key: &str,
        paused: bool,
        reply: oneshot::Sender<Result<Monitor, EngineError>>,
        round: &mut Round,
    ) {
        let now = self.clock.now();
        let Some(mut m) = self.current(key, round) else {
            let _ = reply.send(Err(EngineError::NotFound));
            return;
        };
        m.def.paused = paused;
        m.def.updated_at = now;
        let signal = if paused {
            Signal::Pause(now)
        } else {
            Signal::Resume(now)
        };
        let (st, effects) = state::apply(&m.def.timing(), &m.state, &signal);
        m.state = st;
        self.redefine(m, &effects, reply, round);
    }

    /// Stages `m` under its changed definition (its whole record is written, not only its
    /// state); `reply` gets the monitor once the round is durable.
    fn redefine(
        &self,
        m: Monitor,
        effects: &[Effect],
        reply: oneshot::Sender<Result<Monitor, EngineError>>,
        round: &mut Round,
    ) {
        let out = m.clone();
        let done: Done = Box::new(move |r| {
            let _ = reply.send(r.map(|_| out));
        });
        let key = m.def.key.clone();
        self.stage(m, effects, None, round, done);
        round.redefined.insert(key);
    }

    /// The monitor `def` defines, and the effects of the change: a known monitor keeps its
    /// id, creation time and state; one deleted with `Retain` picks its state back up, and
    /// so does one suspended, when it is the same resource again (the same id). What a
    /// suspension kept of another resource of that name went with it: it is dropped here,
    /// whatever the order in which that deletion and this definition are learnt. So does a
    /// monitor of another resource of that name ([`Self::replace`]). A record that names
    /// no resource ([`MonitorDef::resource_uid`]) is taken over by `def`, which records
    /// its own.
    fn upsert(
        &self,
        mut def: MonitorDef,
        round: &mut Round,
    ) -> Result<(Monitor, Vec<Effect>), EngineError> {
        let now = self.clock.now();
        if let Some(old) = self.current(&def.key, round) {
            if old.def.is_of_another_resource(&def) {
                return self.replace(old, def, round);
            }
            def.created_at = old.def.created_at;
            if old.def.resource_uid().is_some() || def.resource_uid().is_none() {
                def.id = old.def.id.clone();
            }
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
            return Ok(redefined(old, def, signals));
        }
        // The store answers from the rounds handed to it: first hand it every one staged.
        self.handover.settle();
        let kept = self.store.find_retained(&def.key)?;
        if let Some(old) = kept.as_ref().filter(|old| !picks_up(old, &def)) {
            round.writes.remove.push(Removal {
                key: def.key.clone(),
                num: old.num,
                retain: None,
            });
        }
        if let Some(old) = kept.filter(|old| picks_up(old, &def)) {
            return Ok(picked_up(old, def, now));
        }
        self.created(def)
    }

    /// A new monitor defined by `def`, with a number no monitor has had.
    fn created(&self, def: MonitorDef) -> Result<(Monitor, Vec<Effect>), EngineError> {
        let now = self.clock.now();
        let num = self.store.next_monitor_num()?;
        let state = MonitorState::created(&def.timing(), now, def.paused);
        Ok((
            Monitor {
                num,
                def,
                state,
                last_run_ms: None,
            },
            Vec::new(),
        ))
    }

    /// `def`, of another resource than the monitor `old` under its key (one deleted and
    /// created again under its name while its front end did not look): `old` stops as a
    /// removal stops it, in this round — its open incident closed, its Late warning ended,
    /// its record and history kept only by its `Retain` policy — and `def` is a new
    /// monitor, which picks up what that policy kept, as it would after a removal.
    fn replace(
        &self,
        old: Monitor,
        def: MonitorDef,
        round: &mut Round,
    ) -> Result<(Monitor, Vec<Effect>), EngineError> {
        tracing::info!(
            monitor = %def.key,
            "defined by another resource of its name (deleted and created again): the old monitor stops, the new one starts afresh"
        );
        let old = self.stop_watching(old, false, round);
        if old.def.retain_on_delete() {
            return Ok(picked_up(old, def, self.clock.now()));
        }
        let num = old.num;
        self.transitions_since_trim.borrow_mut().clear(num);
        round.monitors.remove(&def.key);
        round.writes.pings.retain(|(n, _)| *n != num);
        round.writes.transitions.retain(|(n, ..)| *n != num);
        round.writes.trims.retain(|(n, _)| *n != num);
        round.writes.remove.push(Removal {
            key: def.key.clone(),
            num,
            retain: None,
        });
        self.created(def)
    }

    /// Removes monitor `key`; with `keep`, its state and history stay under the retained
    /// key whatever its deletion policy (a monitor suspended until its definition is
    /// accepted again, which then finds them). Without a monitor under `key`, a record
    /// kept that way (not by a `Retain` policy) goes with its history. With `uid`, only
    /// a monitor (or record) of that resource, or of none ([`same_resource`]), goes.
    pub(super) fn remove(&self, key: &str, keep: bool, uid: Option<&str>, round: &mut Round) {
        let Some(m) = self.current(key, round) else {
            self.forget_suspended(key, keep, uid, round);
            return;
        };
        if !same_resource(m.def.resource_uid(), uid) {
            return;
        }
        if !keep {
            // Suspended earlier in this round, then defined again: the removal goes for
            // what the suspension kept too.
            unkeep_staged(key, round);
        }
        let m = self.stop_watching(m, keep, round);
        self.transitions_since_trim.borrow_mut().clear(m.num);
        round.monitors.remove(key);
        round.redefined.remove(key);
        round.removed.insert(key.to_string());
        let num = m.num;
        // Kept with history and state under the retained key, so a re-created monitor
        // finds them: pings answered earlier in this round stay staged and are written
        // with it. Otherwise they go with the rest of its history.
        let retain = (keep || m.def.retain_on_delete()).then_some(m);
        if retain.is_none() {
            round.writes.pings.retain(|(n, _)| *n != num);
            round.writes.transitions.retain(|(n, ..)| *n != num);
            round.writes.trims.retain(|(n, _)| *n != num);
        }
        round.writes.remove.push(Removal {
            key: key.to_string(),
            num,
            retain,
        });
    }
}

impl Worker {
    /// Drops the record (and history) a suspension kept under `key`, never a monitor
    /// defined under it: what [`super::Command::Forget`] asks, for a suspended monitor
    /// whose resource is gone.
    pub(super) fn forget(&self, key: &str, uid: Option<&str>, round: &mut Round) {
        if self.current(key, round).is_none() {
            self.forget_suspended(key, false, uid, round);
        }
    }

    /// Drops the record (and history) a suspension kept under `key`, unless `keep` or
    /// its definition asks for it to be retained, or it was kept for another resource
    /// than the one with `uid`.
    fn forget_suspended(&self, key: &str, keep: bool, uid: Option<&str>, round: &mut Round) {
        if keep {
            return;
        }
        if round.removed.contains(key) {
            // Removed earlier in this round: the store does not see that round yet, and a
            // suspension there is undone here (the removal came after it, and wins).
            unkeep_staged(key, round);
            return;
        }
        self.handover.settle();
        let kept = match self.store.find_retained(key) {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(monitor = key, error = %e, "reading a suspended monitor's record failed; it stays");
                return;
            }
        };
        let Some(m) =
            kept.filter(|m| !m.def.retain_on_delete() && same_resource(m.def.resource_uid(), uid))
        else {
            return;
        };
        round.removed.insert(key.to_string());
        round.writes.remove.push(Removal {
            key: key.to_string(),
            num: m.num,
            retain: None,
        });
    }
}

/// Whether `def` picks up the retained record `old`: always when a `Retain` policy kept
/// it, and when a suspension kept it only for the same resource (or for one a record of an
/// earlier build does not name).
fn picks_up(old: &Monitor, def: &MonitorDef) -> bool {
    old.def.retain_on_delete() || !old.def.is_of_another_resource(def)
}

/// `def` picking up the retained record `old` (its state and history, its number and age),
/// re-armed from `now`, and paused at once if `def` is.
fn picked_up(old: Monitor, mut def: MonitorDef, now: jiff::Timestamp) -> (Monitor, Vec<Effect>) {
    def.created_at = old.def.created_at;
    let mut signals = vec![Signal::Retimed(now)];
    if def.paused {
        signals.push(Signal::Pause(now));
    }
    redefined(old, def, signals)
}

/// Turns the removals this round staged for `key` that keep its record only because it
/// was suspended (not by its `Retain` policy) into plain removals, and drops the history
/// they would have kept: a removal that follows a suspension in one round wins, as it
/// would in the next round.
fn unkeep_staged(key: &str, round: &mut Round) {
    let mut dropped = Vec::new();
    for r in round.writes.remove.iter_mut().filter(|r| r.key == key) {
        if r.retain.as_ref().is_some_and(|m| !m.def.retain_on_delete()) {
            r.retain = None;
            dropped.push(r.num);
        }
    }
    if dropped.is_empty() {
        return;
    }
    let gone = |n: &u64| dropped.contains(n);
    round.writes.pings.retain(|(n, _)| !gone(n));
    round.writes.transitions.retain(|(n, ..)| !gone(n));
    round.writes.trims.retain(|(n, _)| !gone(n));
}

/// `old` under its new definition, with the effects of `signals` applied in order.
fn redefined(old: Monitor, def: MonitorDef, signals: Vec<Signal>) -> (Monitor, Vec<Effect>) {
    let (state, effects) = apply_all(&def.timing(), &old.state, signals);
    (
        Monitor {
            num: old.num,
            def,
            state,
            last_run_ms: old.last_run_ms,
        },
        effects,
    )
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
        let (next, e) = state::apply(timing, &st, &sig);
        st = next;
        effects.extend(e);
    }
    (st, effects)
}
