//! When a target may be sent what: the delivery scheduler's rules, as pure functions of a
//! target's recent history, its queue and `now`.
//!
//! - **Order**: one monitor's notices reach a target in the order they were raised (a
//!   recovery never overtakes its Down); different monitors do not wait for each other.
//! - **Flapping**: a monitor that raised more than `flapping_notices` notices within
//!   `flapping_window` gets one "flapping" notice instead of further pairs. Its notices are
//!   then held until it has raised none for a whole window; then only the newest goes out,
//!   saying the monitor is stable again and in which state.
//! - **Cap**: at most `hourly_cap` notices per target in any hour. Past it, notices wait;
//!   when the hour allows again, only the newest per monitor goes out (the older ones are
//!   superseded: nobody needs a Down that has recovered since).
//!
//! Nothing is dropped: every notice is sent, or finished as superseded by a newer notice
//! about the same monitor, so the target always learns each monitor's latest state.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// The rules' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// A monitor raising more notices than this within `flapping_window` is flapping.
    pub flapping_notices: u32,
    /// The window of the flapping rule, and how long a flapping monitor must be quiet.
    pub flapping_window: Duration,
    /// Most notices per target per hour; 0 is no cap.
    pub hourly_cap: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            flapping_notices: 6,
            flapping_window: Duration::from_secs(30 * 60),
            hourly_cap: 100,
        }
    }
}

/// What a target was sent lately; stored with the outbox, updated with each delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHistory {
    /// When notices went out within the last hour (for the cap).
    #[serde(default)]
    pub sent: Vec<Timestamp>,
    /// Per monitor (`namespace/name`): its recent notices and whether it is flapping.
    #[serde(default)]
    pub monitors: BTreeMap<String, MonitorHistory>,
    /// Set while notices wait for the cap; cleared once the queue is empty.
    #[serde(default)]
    pub capped: bool,
}

/// One monitor's recent notices to one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorHistory {
    /// When its notices of the last window were raised (sent, failed or superseded).
    #[serde(default)]
    pub raised: Vec<Timestamp>,
    /// Since when it is flapping (its "flapping" notice is queued or sent).
    #[serde(default)]
    pub flapping_since: Option<Timestamp>,
    /// Notices superseded while it flapped, for the settling notice.
    #[serde(default)]
    pub held: usize,
}

/// A queued delivery as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued<'a> {
    /// Its outbox key.
    pub key: &'a [u8],
    /// The monitor it is about.
    pub monitor: &'a str,
    /// When it was raised.
    pub created_at: Timestamp,
    /// Not before (a retry's backoff).
    pub next_attempt_at: Timestamp,
    /// Whether it is a "flapping" notice.
    pub flapping: bool,
}

/// What the scheduler does next for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send this delivery; `settled` holds how many notices were held if it is the first
    /// after a flapping spell.
    Send {
        /// The delivery.
        key: Vec<u8>,
        /// Notices held during the spell it ends.
        settled: Option<usize>,
    },
    /// Queue a "flapping" notice about `monitor`, based on the delivery `key`.
    Flapping {
        /// The delivery whose alert the notice describes.
        key: Vec<u8>,
        /// The monitor.
        monitor: String,
        /// Notices it raised within the window.
        notices: usize,
    },
    /// Finish these without sending: a newer notice about their monitor replaces them.
    Supersede {
        /// Their keys.
        keys: Vec<Vec<u8>>,
    },
    /// The target has had its notices for this hour; nothing before `until`.
    Capped {
        /// When the oldest notice of the hour leaves it.
        until: Timestamp,
    },
    /// Nothing may go before `until` (a retry's backoff, a flapping monitor's quiet time).
    Wait {
        /// When to look again.
        until: Timestamp,
    },
    /// Nothing queued.
    Idle,
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn minus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

const HOUR: Duration = Duration::from_secs(3600);

/// The next step for a target with `queue` (oldest first) and `history`.
pub fn decide(
    config: &PolicyConfig,
    history: &TargetHistory,
    queue: &[Queued<'_>],
    now: Timestamp,
) -> Decision {
    if queue.is_empty() {
        return Decision::Idle;
    }
    if let Some(until) = cap_reached(config, history, now) {
        return Decision::Capped { until };
    }
    let mut wait: Option<Timestamp> = None;
    for group in by_monitor(queue) {
        match decide_monitor(config, history, &group, now) {
            Ok(decision) => return decision,
            Err(until) => wait = Some(wait.map_or(until, |w| w.min(until))),
        }
    }
    wait.map_or(Decision::Idle, |until| Decision::Wait { until })
}

/// The notices that may go to the target together with `first` (the one [`decide`] chose
/// to send, with its `settled`), in one request to a target whose API takes a list: at
/// most `room` more, each about another monitor (one monitor's notices stay one per
/// request, in order), each one [`decide`] would choose next if the ones before it had
/// been sent at `now`: the cap and the flapping rule count them as sent. A monitor whose
/// next step is no send (a flapping notice to queue, older notices to supersede, a retry
/// not due) is left for after this request.
pub fn more_to_send(
    config: &PolicyConfig,
    history: &TargetHistory,
    queue: &[Queued<'_>],
    first: (&[u8], Option<usize>),
    now: Timestamp,
    room: usize,
) -> Vec<(Vec<u8>, Option<usize>)> {
    let mut sent = history.clone();
    let count = |h: &mut TargetHistory, q: &Queued<'_>, settled: Option<usize>| {
        if q.flapping {
            h.notice_sent(config, true, now);
        } else {
            h.record(
                config,
                q.monitor,
                q.created_at,
                true,
                settled.is_some(),
                now,
            );
        }
    };
    let Some(head) = queue.iter().find(|q| q.key == first.0) else {
        return Vec::new();
    };
    count(&mut sent, head, first.1);
    let mut more = Vec::new();
    for group in by_monitor(queue) {
        if more.len() >= room || cap_reached(config, &sent, now).is_some() {
            break;
        }
        if group[0].monitor == head.monitor {
            continue;
        }
        if let Ok(Decision::Send { key, settled }) = decide_monitor(config, &sent, &group, now)
            && let Some(q) = group.iter().find(|q| q.key == key.as_slice())
        {
            count(&mut sent, q, settled);
            more.push((key, settled));
        }
    }
    more
}

/// When the cap lets the next notice go, if it is reached now.
fn cap_reached(
    config: &PolicyConfig,
    history: &TargetHistory,
    now: Timestamp,
) -> Option<Timestamp> {
    if config.hourly_cap == 0 {
        return None;
    }
    let hour_ago = minus(now, HOUR);
    let mut recent: Vec<Timestamp> = history
        .sent
        .iter()
        .copied()
        .filter(|t| *t > hour_ago)
        .collect();
    if recent.len() < config.hourly_cap as usize {
        return None;
    }
    recent.sort();
    let oldest_that_counts = recent[recent.len() - config.hourly_cap as usize];
    Some(plus(oldest_that_counts, HOUR))
}

/// The queue split per monitor, each in order, monitors by their oldest delivery.
fn by_monitor<'q, 'a>(queue: &'q [Queued<'a>]) -> Vec<Vec<&'q Queued<'a>>> {
    let mut groups: Vec<Vec<&Queued>> = Vec::new();
    for q in queue {
        match groups.iter_mut().find(|g| g[0].monitor == q.monitor) {
            Some(g) => g.push(q),
            None => groups.push(vec![q]),
        }
    }
    groups
}

/// The step for one monitor's deliveries (oldest first), or when to look again.
fn decide_monitor(
    config: &PolicyConfig,
    history: &TargetHistory,
    group: &[&Queued<'_>],
    now: Timestamp,
) -> Result<Decision, Timestamp> {
    let head = group[0];
    if head.next_attempt_at > now {
        return Err(head.next_attempt_at);
    }
    let send = |q: &Queued, settled| Decision::Send {
        key: q.key.to_vec(),
        settled,
    };
    // A "flapping" notice goes first, whatever else waits, but not before its own retry
    // is due: sent at once whenever the oldest notice was, a target refusing it (a 429)
    // had it again thousands of times a minute.
    if let Some(notice) = group.iter().find(|q| q.flapping) {
        if notice.next_attempt_at > now {
            return Err(notice.next_attempt_at);
        }
        return Ok(send(notice, None));
    }
    let own = history.monitors.get(head.monitor);
    let newest = group.last().map_or(head.created_at, |q| q.created_at);
    if let Some(m) = own.filter(|m| m.flapping_since.is_some()) {
        let last = m
            .raised
            .iter()
            .copied()
            .max()
            .map_or(newest, |r| r.max(newest));
        let quiet_at = plus(last, config.flapping_window);
        if now < quiet_at {
            return Err(quiet_at);
        }
        return Ok(supersede_older(group).unwrap_or_else(|| send(head, Some(m.held))));
    }
    let window_start = minus(now, config.flapping_window);
    let raised = own.map_or(0, |m| {
        m.raised.iter().filter(|t| **t > window_start).count()
    }) + group.iter().filter(|q| q.created_at > window_start).count();
    if raised > config.flapping_notices as usize {
        return Ok(Decision::Flapping {
            key: head.key.to_vec(),
            monitor: head.monitor.to_string(),
            notices: raised,
        });
    }
    if history.capped
        && let Some(older) = supersede_older(group)
    {
        return Ok(older);
    }
    Ok(send(head, None))
}

/// Supersedes all but the newest of a monitor's deliveries, if there is more than one.
fn supersede_older(group: &[&Queued<'_>]) -> Option<Decision> {
    (group.len() > 1).then(|| Decision::Supersede {
        keys: group[..group.len() - 1]
            .iter()
            .map(|q| q.key.to_vec())
            .collect(),
    })
}

impl TargetHistory {
    /// Records a notice about `monitor` raised at `raised` that was sent at `now` (or, with
    /// `sent` false, finished otherwise); `settled` ends the monitor's flapping spell.
    pub fn record(
        &mut self,
        config: &PolicyConfig,
        monitor: &str,
        raised: Timestamp,
        sent: bool,
        settled: bool,
        now: Timestamp,
    ) {
        if sent {
            self.sent.push(now);
        }
        let m = self.monitors.entry(monitor.to_string()).or_default();
        m.raised.push(raised);
        if settled {
            m.flapping_since = None;
            m.held = 0;
        }
        self.trim(config, now);
    }

    /// Records a "flapping" notice finished at `now` (sent, or failed): it counts toward
    /// the cap, not as a flip.
    pub fn notice_sent(&mut self, config: &PolicyConfig, sent: bool, now: Timestamp) {
        if sent {
            self.sent.push(now);
        }
        self.trim(config, now);
    }

    /// Records a "flapping" notice queued for `monitor` at `now`.
    pub fn start_flapping(&mut self, monitor: &str, now: Timestamp) {
        let m = self.monitors.entry(monitor.to_string()).or_default();
        m.flapping_since = Some(now);
        m.held = 0;
    }

    /// Records notices about `monitor` finished as superseded by a newer one.
    pub fn superseded(
        &mut self,
        config: &PolicyConfig,
        monitor: &str,
        raised: &[Timestamp],
        now: Timestamp,
    ) {
        let m = self.monitors.entry(monitor.to_string()).or_default();
        m.raised.extend_from_slice(raised);
        if m.flapping_since.is_some() {
            m.held += raised.len();
        }
        self.trim(config, now);
    }

    /// Forgets what no rule looks at any more: sends over an hour ago, notices older than
    /// the flapping window, monitors with neither.
    fn trim(&mut self, config: &PolicyConfig, now: Timestamp) {
        let hour_ago = minus(now, HOUR);
        self.sent.retain(|t| *t > hour_ago);
        let window_start = minus(now, config.flapping_window);
        for m in self.monitors.values_mut() {
            // A flapping monitor keeps its newest notice: its quiet time counts from it.
            let newest = m.raised.iter().copied().max();
            m.raised.retain(|t| {
                *t > window_start || (m.flapping_since.is_some() && Some(*t) == newest)
            });
        }
        self.monitors
            .retain(|_, m| !m.raised.is_empty() || m.flapping_since.is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn q<'a>(key: &'a str, monitor: &'a str, created: i64) -> Queued<'a> {
        Queued {
            key: key.as_bytes(),
            monitor,
            created_at: at(created),
            next_attempt_at: at(created),
            flapping: false,
        }
    }

    fn config() -> PolicyConfig {
        PolicyConfig {
            flapping_notices: 4,
            flapping_window: Duration::from_secs(600),
            hourly_cap: 5,
        }
    }

    fn send(key: &str) -> Decision {
        Decision::Send {
            key: key.as_bytes().to_vec(),
            settled: None,
        }
    }

    #[test]
    fn notices_of_other_monitors_go_along_within_the_cap_and_the_flapping_rule() {
        let c = config();
        let h = TargetHistory::default();
        let queue = [
            q("a-down", "a", 0),
            q("b-down", "b", 1),
            q("a-up", "a", 2),
            q("c-down", "c", 3),
        ];
        assert_eq!(decide(&c, &h, &queue, at(5)), send("a-down"));
        let keys = |v: Vec<(Vec<u8>, Option<usize>)>| -> Vec<String> {
            v.into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        // One notice per monitor: a's recovery waits for the request with its Down.
        let more = more_to_send(&c, &h, &queue, (b"a-down", None), at(5), 10);
        assert_eq!(keys(more), ["b-down", "c-down"]);
        assert_eq!(
            keys(more_to_send(&c, &h, &queue, (b"a-down", None), at(5), 1)),
            ["b-down"],
            "no more than room"
        );
        // A retry not yet due stays behind.
        let mut retrying = queue;
        retrying[1].next_attempt_at = at(60);
        assert_eq!(
            keys(more_to_send(
                &c,
                &h,
                &retrying,
                (b"a-down", None),
                at(5),
                10
            )),
            ["c-down"]
        );
        // The cap (5 an hour) counts them: 3 sent this hour leave room for the first and
        // one more.
        let mut busy = TargetHistory::default();
        for t in [0, 1, 2] {
            busy.record(&c, "z", at(t), true, false, at(t));
        }
        assert_eq!(
            keys(more_to_send(
                &c,
                &busy,
                &queue,
                (b"a-down", None),
                at(5),
                10
            )),
            ["b-down"]
        );
        // A monitor about to flap is left for after the request (its notice is queued then).
        let mut flappy = TargetHistory::default();
        for t in [0, 1, 2, 3] {
            flappy.record(&c, "b", at(t), true, false, at(t));
        }
        let c = PolicyConfig { hourly_cap: 0, ..c };
        assert_eq!(
            keys(more_to_send(
                &c,
                &flappy,
                &queue,
                (b"a-down", None),
                at(5),
                10
            )),
            ["c-down"]
        );
    }

    #[test]
    fn one_monitor_in_order_and_a_retrying_one_does_not_hold_up_another() {
        let c = config();
        let h = TargetHistory::default();
        let queue = [q("a-down", "a", 0), q("b-down", "b", 1), q("a-up", "a", 2)];
        assert_eq!(decide(&c, &h, &queue, at(5)), send("a-down"));
        let mut retrying = queue;
        retrying[0].next_attempt_at = at(60);
        assert_eq!(decide(&c, &h, &retrying, at(5)), send("b-down"));
        assert_eq!(
            decide(&c, &h, &retrying[..1], at(5)),
            Decision::Wait { until: at(60) }
        );
        assert_eq!(decide(&c, &h, &[], at(5)), Decision::Idle);
    }

    #[test]
    fn a_flapping_monitor_gets_one_notice_then_its_settled_state() {
        let c = PolicyConfig {
            hourly_cap: 0,
            ..config()
        };
        let mut h = TargetHistory::default();
        // Four notices within the window go out as usual.
        for (i, t) in [0, 60, 120, 180].into_iter().enumerate() {
            let key = format!("n{i}");
            assert_eq!(decide(&c, &h, &[q(&key, "a", t)], at(t)), send(&key));
            h.record(&c, "a", at(t), true, false, at(t));
        }
        // The fifth makes it flapping: one notice instead.
        let fifth = [q("n4", "a", 240)];
        assert_eq!(
            decide(&c, &h, &fifth, at(240)),
            Decision::Flapping {
                key: b"n4".to_vec(),
                monitor: "a".into(),
                notices: 5
            }
        );
        h.start_flapping("a", at(240));
        let mut notice = q("flap", "a", 240);
        notice.flapping = true;
        assert_eq!(decide(&c, &h, &[fifth[0], notice], at(240)), send("flap"));
        // Refused and retrying: it waits for its retry, however ready the others are.
        let mut retrying = notice;
        retrying.next_attempt_at = at(300);
        assert_eq!(
            decide(&c, &h, &[fifth[0], retrying], at(250)),
            Decision::Wait { until: at(300) }
        );
        assert_eq!(decide(&c, &h, &[fifth[0], retrying], at(300)), send("flap"));
        h.notice_sent(&c, true, at(240));
        // More flips are held until ten quiet minutes after the last one.
        let held = [fifth[0], q("n5", "a", 300), q("n6", "a", 360)];
        assert_eq!(
            decide(&c, &h, &held, at(400)),
            Decision::Wait { until: at(960) }
        );
        // Another monitor is not held up by it.
        let with_b = [held[0], held[1], q("b", "b", 380), held[2]];
        assert_eq!(decide(&c, &h, &with_b, at(400)), send("b"));
        // Then the older ones are superseded and the newest goes, saying it settled.
        assert_eq!(
            decide(&c, &h, &held, at(960)),
            Decision::Supersede {
                keys: vec![b"n4".to_vec(), b"n5".to_vec()]
            }
        );
        h.superseded(&c, "a", &[at(240), at(300)], at(960));
        assert_eq!(
            decide(&c, &h, &held[2..], at(960)),
            Decision::Send {
                key: b"n6".to_vec(),
                settled: Some(2)
            }
        );
        h.record(&c, "a", at(360), true, true, at(960));
        assert_eq!(h.monitors.get("a").and_then(|m| m.flapping_since), None);
    }

    #[test]
    fn past_the_hourly_cap_notices_wait_and_then_only_the_newest_per_monitor_goes() {
        let c = config();
        let mut h = TargetHistory::default();
        for (i, m) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let t = i as i64 * 10;
            h.record(&c, m, at(t), true, false, at(t));
        }
        let queue = [q("a2", "a", 100), q("f1", "f", 110), q("a3", "a", 120)];
        assert_eq!(
            decide(&c, &h, &queue, at(200)),
            Decision::Capped { until: at(3600) }
        );
        h.capped = true;
        assert_eq!(
            decide(&c, &h, &queue, at(3600)),
            Decision::Supersede {
                keys: vec![b"a2".to_vec()]
            }
        );
        assert_eq!(decide(&c, &h, &queue[1..], at(3600)), send("f1"));
        let no_cap = PolicyConfig { hourly_cap: 0, ..c };
        h.capped = false;
        assert_eq!(decide(&no_cap, &h, &queue, at(200)), send("a2"));
    }

    #[test]
    fn history_forgets_what_no_rule_needs() {
        let c = config();
        let mut h = TargetHistory::default();
        h.record(&c, "a", at(0), true, false, at(0));
        h.record(&c, "b", at(3900), true, false, at(4000));
        assert_eq!(h.sent, vec![at(4000)]);
        assert!(!h.monitors.contains_key("a"));
        assert!(h.monitors.contains_key("b"));
        h.record(&c, "b", at(4100), false, false, at(8000));
        assert_eq!(h.sent, vec![]);
        assert!(h.monitors.is_empty());
    }
}
