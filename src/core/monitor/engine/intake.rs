//! What the engine thread takes next: deadlines that came due (the [`Herd`]) and every
//! other command, in an order that keeps each monitor's own history and lets an urgent
//! deadline pass commands for other monitors.
//!
//! The state machine steps each monitor on its own, so only the order of one monitor's
//! commands matters: a ping that reached the engine before its monitor's deadline fired
//! must be taken before that deadline, or the monitor goes Down with the ping waiting in
//! the queue. Between different monitors the order is free, and it decides lateness:
//! when a third of a million monitors on one schedule fall due together, most of them
//! only turn Late and have seconds before their Down, while the Downs of the next second
//! and every ping keep arriving. Taken strictly in arrival order, each second's Downs and
//! each ping waited behind the whole herd (seconds at a million monitors).
//!
//! So a command is taken in this order:
//! 1. a deadline whose Down is due by now (the herd's most urgent first);
//! 2. the oldest queued command; one that concerns a monitor still in the herd takes that
//!    monitor's deadline with it first (see [`Next::Command`]);
//! 3. the rest of the herd: deadlines that only make a monitor Late yet, taken while
//!    nothing else waits, in the order their Downs come due (see [`Herd`]). One still
//!    waiting when its Down comes due is then taken as that Down, in one write instead
//!    of two: an engine behind its herd sheds work.
//!
//! A deadline that fires while an earlier command for the same monitor is queued waits
//! behind that command, in the queue. A command that concerns no single monitor (a
//! replica's mirror of the leader) keeps every deadline that fires after it behind it.

use std::collections::VecDeque;
use std::sync::Arc;

use jiff::Timestamp;

use super::herd::{Herd, Place};
use super::worker::Command;

/// What the engine thread takes next.
pub(super) enum Next {
    /// A deadline of the monitor with this key.
    Due(Arc<str>),
    /// A queued command, after the deadlines of `first`: monitors it concerns that were
    /// still in the herd, whose deadlines fired before it arrived.
    Command { cmd: Command, first: Vec<String> },
}

/// Commands taken off the channel and waiting for the engine thread.
#[derive(Default)]
pub(super) struct Intake {
    herd: Herd,
    queue: VecDeque<Command>,
    /// How many queued commands concern each monitor, by key.
    queued: foldhash::HashMap<String, u32>,
    /// Queued commands that concern no single monitor.
    barriers: usize,
}

/// The monitors a command concerns.
enum Concerns<'a> {
    Keys(Vec<&'a str>),
    /// No single monitor: every deadline that fires after it waits for it.
    Barrier,
}

fn concerns(cmd: &Command) -> Concerns<'_> {
    match cmd {
        Command::Upsert(def, _) => Concerns::Keys(vec![def.key.as_str()]),
        Command::Remove(key, _, _)
        | Command::Suspend(key, _)
        | Command::Forget(key, _, _)
        | Command::Ping(key, _, _)
        | Command::SetPaused(key, _, _)
        | Command::Job(key, _, _) => Concerns::Keys(vec![key.as_str()]),
        Command::Relayed(pings, _) => {
            Concerns::Keys(pings.iter().map(|p| p.key.as_str()).collect())
        }
        Command::Due(keys) => Concerns::Keys(keys.iter().map(|(key, _)| &**key).collect()),
        // Nothing depends on when a probe (the worker answers it on arrival) or a test's
        // stall is taken relative to the work for any monitor.
        Command::Probe(_) => Concerns::Keys(Vec::new()),
        #[cfg(test)]
        Command::Stall(..) => Concerns::Keys(Vec::new()),
        Command::Mirror(..) => Concerns::Barrier,
    }
}

impl Intake {
    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.herd.is_empty() && self.queue.is_empty()
    }

    /// Monitors in the herd and commands in the queue.
    pub(super) fn len(&self) -> usize {
        self.herd.len() + self.queue.len()
    }

    /// Takes the monitors whose deadline fired, each at its place in the herd (see
    /// [`Place`]); one with an earlier command queued waits behind it.
    pub(super) fn due(&mut self, keys: Vec<(Arc<str>, Place)>) {
        let mut behind = Vec::new();
        for (key, place) in keys {
            if self.barriers > 0 || self.queued.contains_key(&*key) {
                behind.push((key, place));
            } else {
                self.herd.push(key, place);
            }
        }
        if !behind.is_empty() {
            self.push(Command::Due(behind));
        }
    }

    /// Queues a command behind those before it (deadlines come in through [`Self::due`]).
    pub(super) fn push(&mut self, cmd: Command) {
        match concerns(&cmd) {
            Concerns::Keys(keys) => {
                for key in keys {
                    *self.queued.entry(key.to_string()).or_insert(0) += 1;
                }
            }
            Concerns::Barrier => self.barriers += 1,
        }
        self.queue.push_back(cmd);
    }

    /// What to take next at `now` (see the module's order).
    pub(super) fn next(&mut self, now: Timestamp) -> Option<Next> {
        if let Some(key) = self.herd.pop_due(now) {
            return Some(Next::Due(key));
        }
        if let Some(cmd) = self.queue.pop_front() {
            let mut first = Vec::new();
            match concerns(&cmd) {
                Concerns::Keys(keys) => {
                    for key in keys {
                        if let Some(n) = self.queued.get_mut(key) {
                            *n -= 1;
                            if *n == 0 {
                                self.queued.remove(key);
                            }
                        }
                        if self.herd.take(key) {
                            first.push(key.to_string());
                        }
                    }
                }
                Concerns::Barrier => self.barriers = self.barriers.saturating_sub(1),
            }
            return Some(Next::Command { cmd, first });
        }
        self.herd.pop().map(Next::Due)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::core::monitor::engine::PingInput;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn ping(key: &str) -> Command {
        let (reply, _) = oneshot::channel();
        Command::Ping(key.into(), PingInput::success(), reply)
    }

    /// What `next` hands out at `now` until nothing waits, as `due:key` and `ping:key`
    /// (a ping that takes deadlines first as `ping:key+first`).
    fn drain(intake: &mut Intake, now: Timestamp) -> Vec<String> {
        std::iter::from_fn(|| intake.next(now))
            .map(|next| match next {
                Next::Due(key) => format!("due:{key}"),
                Next::Command { cmd, first } => {
                    let what = match cmd {
                        Command::Ping(key, ..) => format!("ping:{key}"),
                        Command::Due(keys) => {
                            let keys: Vec<&str> = keys.iter().map(|(k, _)| &**k).collect();
                            format!("due:{}", keys.join(","))
                        }
                        Command::Probe(_) => "probe".to_string(),
                        Command::Mirror(..) => "mirror".to_string(),
                        _ => "other".to_string(),
                    };
                    if first.is_empty() {
                        what
                    } else {
                        format!("{what}+{}", first.join(","))
                    }
                }
            })
            .collect()
    }

    /// `keys` placed by urgency alone (every number 0: ties go by arrival).
    fn placed(keys: &[&str], u: &[(&str, i64)]) -> Vec<(Arc<str>, Place)> {
        keys.iter()
            .map(|&key| {
                let urgency = u
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(at(0), |(_, s)| at(*s));
                (key.into(), Place::new(urgency, 0))
            })
            .collect()
    }

    #[test]
    fn a_down_due_now_passes_pings_for_other_monitors_and_lates_wait_for_them() {
        let mut intake = Intake::default();
        let u = [("late1", 50), ("late2", 40), ("down1", 5), ("down2", 8)];
        intake.due(placed(&["late1", "late2", "down1"], &u));
        intake.push(ping("x"));
        intake.due(placed(&["down2"], &u));
        intake.push(ping("y"));
        assert_eq!(
            drain(&mut intake, at(10)),
            [
                "due:down1",
                "due:down2",
                "ping:x",
                "ping:y",
                // Lates in the order their Downs come due.
                "due:late2",
                "due:late1"
            ]
        );
        assert!(intake.is_empty());
    }

    #[test]
    fn a_monitors_own_commands_keep_their_order() {
        let mut intake = Intake::default();
        let u = [("a", 50), ("b", 5)];
        // a's deadline fired before its ping came: the ping takes the deadline first.
        intake.due(placed(&["a"], &u));
        intake.push(ping("a"));
        // b's ping came before b's deadline fired: the deadline waits for the ping, even
        // though b's Down is due.
        intake.push(ping("b"));
        intake.due(placed(&["b"], &u));
        assert_eq!(drain(&mut intake, at(10)), ["ping:a+a", "ping:b", "due:b"]);
        assert!(intake.is_empty());
    }

    #[test]
    fn a_command_for_no_single_monitor_holds_every_later_deadline_behind_it() {
        let mut intake = Intake::default();
        let u = [("a", 5), ("b", 5)];
        intake.due(placed(&["a"], &u));
        let (reply, _) = oneshot::channel();
        intake.push(Command::Mirror(Box::default(), reply));
        intake.due(placed(&["b"], &u));
        let (reply, _) = oneshot::channel();
        intake.push(Command::Probe(reply));
        intake.due(placed(&["c"], &[("c", 5)]));
        assert_eq!(
            drain(&mut intake, at(10)),
            ["due:a", "mirror", "due:b", "probe", "due:c"]
        );
        // The barrier is gone: a later deadline joins the herd again.
        intake.push(ping("x"));
        intake.due(placed(&["d"], &[("d", 5)]));
        assert_eq!(drain(&mut intake, at(10)), ["due:d", "ping:x"]);
    }
}
