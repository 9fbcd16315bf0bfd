//! What a replica that does not lead makes of the leader's rounds: which monitors its
//! readers see change, which are gone, the transitions its subscribers are told of, and
//! the ping tokens its registry gains and loses. A pure function of the monitors it shows
//! and the changes it read, so every rule is tested without a database.

use std::collections::HashSet;

use super::snapshot::Monitors;
use super::types::{Change, Monitor};
use crate::core::storage::FeedChanges;
use crate::core::token::TokenHash;

/// What a batch of the leader's changes does to a mirror.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Mirrored {
    /// Monitors to show as they are now (new, or different from what is shown).
    pub(super) monitors: Vec<Monitor>,
    /// Monitors to stop showing.
    pub(super) removed: Vec<String>,
    /// Transitions to tell subscribers, as a round of the leader told its own.
    pub(super) changes: Vec<Change>,
    /// Ping tokens that changed owner or stopped working, and those that now work.
    pub(super) tokens: TokenChanges,
}

/// Ping tokens a mirror's registry must forget and learn, by hash (the store already has
/// them: the leader indexed them).
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct TokenChanges {
    /// Tokens that no longer open anything.
    pub dropped: Vec<TokenHash>,
    /// Tokens that now open the monitor under the key.
    pub added: Vec<(TokenHash, String)>,
}

impl TokenChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty() && self.added.is_empty()
    }
}

/// The effect of `changes` on a mirror showing `shown`. A removal applies only to the
/// monitor it removed (by number): one defined again under the same key stays.
pub(super) fn mirrored(shown: &Monitors, changes: FeedChanges) -> Mirrored {
    let mut out = Mirrored::default();
    let written: HashSet<&str> = changes
        .monitors
        .iter()
        .map(|m| m.def.key.as_str())
        .collect();
    let gone = |m: &Monitor| !written.contains(m.def.key.as_str());
    let mut removed: Vec<&Monitor> = changes
        .removed
        .iter()
        .filter_map(|(key, num)| shown.get(key).filter(|m| m.num == *num && gone(m)))
        .collect();
    if changes.everything {
        removed = shown.values().filter(|m| gone(m)).collect();
    }
    for m in removed {
        out.tokens.dropped.push(m.def.token);
        out.removed.push(m.def.key.clone());
    }
    for m in &changes.monitors {
        let old = shown.get(&m.def.key);
        if old == Some(m) {
            continue;
        }
        if old.map(|o| o.def.token) != Some(m.def.token) {
            out.tokens.dropped.extend(old.map(|o| o.def.token));
            out.tokens.added.push((m.def.token, m.def.key.clone()));
        }
        if let Some(old) = old.filter(|o| o.state.state != m.state.state) {
            out.changes.push(Change {
                key: m.def.key.clone(),
                from: old.state.state,
                to: m.state.state,
                at: m.state.since,
                reason: m.why_down(),
            });
        }
    }
    out.monitors = changes
        .monitors
        .into_iter()
        .filter(|m| shown.get(&m.def.key) != Some(m))
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::state::State;

    fn shown(monitors: &[&Monitor]) -> Monitors {
        let mut all = Monitors::default();
        for m in monitors {
            all.insert(Monitor::clone(m));
        }
        all
    }

    fn monitor(name: &str, num: u64) -> Monitor {
        let mut m = super::super::sample(name, State::Up);
        m.num = num;
        m.def.token = TokenHash::of(name);
        m
    }

    fn changes(monitors: Vec<Monitor>, removed: &[(&str, u64)]) -> FeedChanges {
        FeedChanges {
            monitors,
            removed: removed.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            version: 7,
            everything: false,
        }
    }

    #[test]
    fn a_state_change_is_shown_and_told_and_an_unchanged_monitor_is_not() {
        let (a, b) = (monitor("a", 1), monitor("b", 2));
        let mut down = a.clone();
        down.state.state = State::Down;
        down.state.since = a.state.since + jiff::SignedDuration::from_secs(60);
        let out = mirrored(
            &shown(&[&a, &b]),
            changes(vec![down.clone(), b.clone()], &[]),
        );
        assert_eq!(out.monitors, vec![down.clone()]);
        assert!(out.removed.is_empty() && out.tokens.is_empty());
        let told: Vec<_> = out
            .changes
            .iter()
            .map(|c| (&*c.key, c.from, c.to, c.at))
            .collect();
        assert_eq!(
            told,
            vec![(&*a.def.key, a.state.state, State::Down, down.state.since)]
        );
    }

    #[test]
    fn a_new_monitor_brings_its_token_and_a_removed_one_takes_its_token_away() {
        let (a, b) = (monitor("a", 1), monitor("b", 2));
        let out = mirrored(&shown(&[&a]), changes(vec![b.clone()], &[(&a.def.key, 1)]));
        assert_eq!(out.monitors, vec![b.clone()]);
        assert_eq!(out.removed, vec![a.def.key.clone()]);
        assert_eq!(out.tokens.added, vec![(b.def.token, b.def.key.clone())]);
        assert_eq!(out.tokens.dropped, vec![a.def.token]);
        assert!(out.changes.is_empty(), "a new monitor is no transition");
    }

    #[test]
    fn a_removal_of_an_older_monitor_under_the_same_key_leaves_the_new_one() {
        let a = monitor("a", 5);
        // Monitor 1 under the same key was removed before `a` was defined.
        let out = mirrored(&shown(&[&a]), changes(vec![], &[(&a.def.key, 1)]));
        assert_eq!(out, Mirrored::default());
        // Removed and defined again after the version: the new one is shown.
        let again = monitor("a", 6);
        let out = mirrored(
            &shown(&[&a]),
            changes(vec![again.clone()], &[(&a.def.key, 5)]),
        );
        assert_eq!(out.monitors, vec![again]);
        assert!(out.removed.is_empty());
    }

    #[test]
    fn a_rotated_token_stops_working_and_the_new_one_works() {
        let a = monitor("a", 1);
        let mut rotated = a.clone();
        rotated.def.token = TokenHash::of("new");
        let out = mirrored(&shown(&[&a]), changes(vec![rotated.clone()], &[]));
        assert_eq!(out.tokens.dropped, vec![a.def.token]);
        assert_eq!(
            out.tokens.added,
            vec![(rotated.def.token, a.def.key.clone())]
        );
    }

    #[test]
    fn everything_removes_whatever_it_does_not_hold() {
        let (a, b) = (monitor("a", 1), monitor("b", 2));
        let mut all = changes(vec![b.clone()], &[]);
        all.everything = true;
        let out = mirrored(&shown(&[&a, &b]), all);
        assert_eq!(out.removed, vec![a.def.key.clone()]);
        assert!(out.monitors.is_empty());
    }
}
