//! When a monitor notifies, as its Heartbeat says: after how many failures it is Down
//! (`failureThreshold`), the Heartbeat's own policy (which overrides its channels'), its
//! maintenance windows and its runbook. Carried in the monitor's definition.

use std::cell::RefCell;
use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::message::AlertKind;
use crate::core::channel::{AlertPolicy, MaintenanceWindow};
use crate::core::cron::Schedule;
use crate::core::spec::HeartbeatSpec;

/// A monitor's alerting settings, from its Heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Alerting {
    /// Down only after this many consecutive failed runs or missed deadlines (at least 1).
    #[serde(default = "one")]
    pub failure_threshold: u32,
    /// The Heartbeat's (or its Application's) policy; unset fields take the channel's.
    #[serde(default)]
    pub policy: AlertPolicy,
    /// Windows without notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,
    /// A runbook for whoever is paged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook_url: Option<String>,
}

fn one() -> u32 {
    1
}

impl Default for Alerting {
    fn default() -> Self {
        Self {
            failure_threshold: 1,
            policy: AlertPolicy::default(),
            maintenance: Vec::new(),
            runbook_url: None,
        }
    }
}

impl Alerting {
    /// The settings `spec` asks for.
    pub fn of(spec: &HeartbeatSpec) -> Self {
        Self {
            failure_threshold: spec.failure_threshold().max(1),
            policy: spec
                .alerts
                .as_ref()
                .map(|a| a.policy.clone())
                .unwrap_or_default(),
            maintenance: spec.maintenance.clone(),
            runbook_url: spec.runbook_url.clone(),
        }
    }

    /// Nothing set: stored definitions leave the field out.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A monitor's [`Alerting`], held only where it differs from the defaults: most monitors
/// keep them, and a million monitors should not each carry a hundred bytes of nothing
/// (the engine and its readers' snapshot each hold every definition). Reads as an
/// [`Alerting`]; stored as one, so the stored form is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertingBox(Option<Box<Alerting>>);

static DEFAULT_ALERTING: std::sync::LazyLock<Alerting> =
    std::sync::LazyLock::new(Alerting::default);

impl From<Alerting> for AlertingBox {
    fn from(a: Alerting) -> Self {
        Self((!a.is_default()).then(|| Box::new(a)))
    }
}

impl std::ops::Deref for AlertingBox {
    type Target = Alerting;

    fn deref(&self) -> &Alerting {
        self.0.as_deref().unwrap_or(&DEFAULT_ALERTING)
    }
}

impl AlertingBox {
    /// Nothing set: stored definitions leave the field out.
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for AlertingBox {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for AlertingBox {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Alerting::deserialize(d).map(Self::from)
    }
}

/// The policy in force for one monitor through one channel: the Heartbeat's fields where
/// set, else the channel's.
pub fn effective(own: &AlertPolicy, channel: Option<&AlertPolicy>) -> AlertPolicy {
    let base = channel.cloned().unwrap_or_default();
    AlertPolicy {
        notify_after: own.notify_after.or(base.notify_after),
        repeat_every: own.repeat_every.or(base.repeat_every),
        notify_late: own.notify_late.or(base.notify_late),
    }
}

/// Most windows followed through when they overlap or touch.
const CHAINED_WINDOWS: usize = 16;

/// When the maintenance that `t` lies in ends, if it lies in one: windows that overlap or
/// follow each other without a gap count as one. A window whose schedule does not parse
/// (checked where it is defined) is ignored.
pub fn maintenance_until(windows: &[MaintenanceWindow], t: Timestamp) -> Option<Timestamp> {
    let mut end: Option<Timestamp> = None;
    let mut at = t;
    for _ in 0..CHAINED_WINDOWS {
        let next = windows
            .iter()
            .filter_map(|w| {
                let schedule = parsed(w)?;
                let length = SignedDuration::try_from(w.duration.as_std()).ok()?;
                let start = schedule.window_containing(at, length)?;
                start.checked_add(length).ok()
            })
            .max();
        match next {
            Some(e) if end.is_none_or(|prev| e > prev) => {
                end = Some(e);
                at = e;
            }
            _ => break,
        }
    }
    end
}

/// Most parsed window schedules kept per thread.
const PARSED_KEPT: usize = 1024;

/// `w`'s schedule, parsed once per thread (parsing measures the schedule's gaps, and
/// windows are looked at on every tick of their monitor).
fn parsed(w: &MaintenanceWindow) -> Option<Schedule> {
    type Parsed = HashMap<(String, Option<String>), Option<Schedule>>;
    thread_local! {
        static PARSED: RefCell<Parsed> = RefCell::default();
    }
    PARSED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= PARSED_KEPT {
            cache.clear();
        }
        cache
            .entry((w.schedule.clone(), w.time_zone.clone()))
            .or_insert_with(|| Schedule::parse(&w.schedule, w.time_zone.as_deref()).ok())
            .clone()
    })
}

/// What the delivery scheduler does with a queued notice through a channel now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// It may go.
    Go,
    /// Not before then: inside a maintenance window, or before `notifyAfter`.
    HoldUntil(Timestamp),
    /// Not for this channel (a Late warning without `notifyLate`).
    Skip(&'static str),
}

/// The rules of a channel's policy for one notice: `kind` raised for the incident opened
/// at `opened_at`, its `repeat` number, under `policy`, with the channel's and the
/// monitor's maintenance `windows`. Pure.
pub fn gate(
    kind: AlertKind,
    repeat: u32,
    opened_at: Timestamp,
    policy: &AlertPolicy,
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Gate {
    if matches!(kind, AlertKind::Late | AlertKind::OnTime) && policy.notify_late != Some(true) {
        return Gate::Skip("notifyLate is not set");
    }
    if let Some(end) = maintenance_until(windows, now) {
        return Gate::HoldUntil(end);
    }
    if kind == AlertKind::Down
        && repeat == 0
        && let Some(after) = policy.notify_after
        && let Ok(after) = SignedDuration::try_from(after.as_std())
        && let Ok(due) = opened_at.checked_add(after)
        && due > now
    {
        return Gate::HoldUntil(due);
    }
    Gate::Go
}

/// How often a Down notice is repeated while the incident lasts: Alertmanager's re-send
/// interval for an Alertmanager channel (its alerts expire otherwise), else `repeatEvery`.
pub fn repeat_interval(
    policy: &AlertPolicy,
    resend: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    resend.or(policy.repeat_every.map(|d| d.as_std()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::duration::SpecDuration;

    #[test]
    fn only_settings_that_differ_from_the_defaults_are_boxed_and_both_store_as_before() {
        let plain = AlertingBox::from(Alerting::default());
        assert!(plain.is_default());
        assert_eq!(plain.failure_threshold, 1);
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::to_value(Alerting::default()).unwrap()
        );
        let set = Alerting {
            failure_threshold: 3,
            runbook_url: Some("https://runbooks.example/backup".into()),
            ..Alerting::default()
        };
        let boxed = AlertingBox::from(set.clone());
        assert!(!boxed.is_default());
        assert_eq!(*boxed, set);
        let stored = serde_json::to_string(&boxed).unwrap();
        assert_eq!(stored, serde_json::to_string(&set).unwrap());
        let read: AlertingBox = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, boxed);
        let read_plain: AlertingBox = serde_json::from_str("{}").unwrap();
        assert!(read_plain.is_default());
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(schedule: &str, secs: u64) -> MaintenanceWindow {
        MaintenanceWindow {
            schedule: schedule.into(),
            duration: SpecDuration::from_secs(secs),
            time_zone: None,
        }
    }

    #[test]
    fn windows_hold_notices_until_they_end_and_chain() {
        let nightly = [window("0 2 * * *", 7200)];
        assert_eq!(
            maintenance_until(&nightly, t("2026-12-05T03:00:00Z")),
            Some(t("2026-12-05T04:00:00Z"))
        );
        assert_eq!(maintenance_until(&nightly, t("2026-12-05T04:00:00Z")), None);
        assert_eq!(maintenance_until(&nightly, t("2026-12-05T01:59:59Z")), None);
        let chained = [window("0 2 * * *", 3600), window("0 3 * * *", 1800)];
        assert_eq!(
            maintenance_until(&chained, t("2026-12-05T02:30:00Z")),
            Some(t("2026-12-05T03:30:00Z"))
        );
        let zoned = [MaintenanceWindow {
            time_zone: Some("Europe/Amsterdam".into()),
            ..window("0 3 * * *", 3600)
        }];
        // 03:00 in Amsterdam is 02:00 UTC in winter.
        assert_eq!(
            maintenance_until(&zoned, t("2026-12-05T02:10:00Z")),
            Some(t("2026-12-05T03:00:00Z"))
        );
    }

    #[test]
    fn the_gate_applies_notify_after_late_and_maintenance() {
        let opened = t("2026-12-05T03:00:00Z");
        let policy = AlertPolicy {
            notify_after: Some(SpecDuration::from_secs(600)),
            ..Default::default()
        };
        let early = t("2026-12-05T03:05:00Z");
        let due = t("2026-12-05T03:10:00Z");
        assert_eq!(
            gate(AlertKind::Down, 0, opened, &policy, &[], early),
            Gate::HoldUntil(due)
        );
        assert_eq!(
            gate(AlertKind::Down, 0, opened, &policy, &[], due),
            Gate::Go
        );
        // Repetitions and recoveries are not delayed.
        assert_eq!(
            gate(AlertKind::Down, 2, opened, &policy, &[], early),
            Gate::Go
        );
        assert_eq!(
            gate(AlertKind::Recovery, 0, opened, &policy, &[], early),
            Gate::Go
        );
        for warning in [AlertKind::Late, AlertKind::OnTime] {
            assert!(matches!(
                gate(warning, 0, opened, &policy, &[], early),
                Gate::Skip(_)
            ));
        }
        let late = AlertPolicy {
            notify_late: Some(true),
            ..Default::default()
        };
        assert_eq!(
            gate(AlertKind::Late, 0, opened, &late, &[], early),
            Gate::Go
        );
        let windows = [window("0 3 * * *", 3600)];
        assert_eq!(
            gate(AlertKind::Recovery, 0, opened, &late, &windows, early),
            Gate::HoldUntil(t("2026-12-05T04:00:00Z"))
        );
    }

    #[test]
    fn the_heartbeat_policy_overrides_the_channel_field_by_field() {
        let own = AlertPolicy {
            notify_late: Some(false),
            ..Default::default()
        };
        let channel = AlertPolicy {
            notify_after: Some(SpecDuration::from_secs(60)),
            notify_late: Some(true),
            repeat_every: None,
        };
        let e = effective(&own, Some(&channel));
        assert_eq!(e.notify_late, Some(false));
        assert_eq!(e.notify_after, Some(SpecDuration::from_secs(60)));
        let resend = std::time::Duration::from_secs(60);
        assert_eq!(repeat_interval(&e, Some(resend)), Some(resend));
        assert_eq!(repeat_interval(&e, None), None);
    }
}

/// A queued notice as [`tidy`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending<'a> {
    /// Its outbox key.
    pub key: &'a [u8],
    /// The monitor it is about.
    pub monitor: &'a str,
    /// What it says.
    pub kind: AlertKind,
    /// Its repetition number (0: the notice itself).
    pub repeat: u32,
    /// When it was raised.
    pub created_at: Timestamp,
    /// Attempts made.
    pub attempts: u32,
    /// Held by [`gate`] now (maintenance, `notifyAfter`).
    pub held: bool,
}

/// Notices in one target's queue that nobody needs any more, each with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tidy {
    /// Repetitions of a Down that a newer notice about the monitor follows (it recovered).
    pub stale: Vec<Vec<u8>>,
    /// A Down never sent (held by maintenance or `notifyAfter`) and the recovery that
    /// followed it: the incident ended before anyone was to be told.
    pub cancelled: Vec<Vec<u8>>,
}

/// What to finish in a target's queue before anything else is decided. Pure; linear in
/// the queue but for each monitor's own notices (a queue may hold a repetition for every
/// monitor that is Down).
pub fn tidy(queue: &[Pending<'_>]) -> Tidy {
    let mut by_monitor: HashMap<&str, Vec<&Pending<'_>>> = HashMap::new();
    for p in queue {
        by_monitor.entry(p.monitor).or_default().push(p);
    }
    let mut out = Tidy::default();
    for group in by_monitor.values() {
        tidy_monitor(group, &mut out);
    }
    out
}

/// [`tidy`] for one monitor's notices.
fn tidy_monitor(group: &[&Pending<'_>], out: &mut Tidy) {
    for p in group {
        let later = |q: &&&Pending| q.created_at > p.created_at;
        // A flapping notice's repetitions outlast the flips it holds: they end with the
        // spell (the scheduler's check), not with the next notice queued.
        if p.repeat > 0
            && p.kind != AlertKind::Flapping
            && group.iter().any(|q| later(&q) && q.repeat == 0)
        {
            out.stale.push(p.key.to_vec());
            continue;
        }
        // A Down ends with its recovery, or with the notice that monitoring stopped.
        let closes = |q: &&&Pending| match p.kind {
            AlertKind::Down => matches!(q.kind, AlertKind::Recovery | AlertKind::Stopped),
            _ => q.kind == AlertKind::OnTime,
        };
        if !matches!(p.kind, AlertKind::Down | AlertKind::Late) {
            continue;
        }
        let unsent = p.repeat == 0 && p.attempts == 0 && p.held;
        if unsent
            && let Some(recovery) = group.iter().filter(later).find(closes)
            && !out.cancelled.iter().any(|k| k == recovery.key)
        {
            out.cancelled.push(p.key.to_vec());
            out.cancelled.push(recovery.key.to_vec());
        }
    }
}

#[cfg(test)]
mod tidy_tests {
    use super::*;

    fn p<'a>(key: &'a [u8], kind: AlertKind, repeat: u32, at: i64, held: bool) -> Pending<'a> {
        Pending {
            key,
            monitor: "ns/a",
            kind,
            repeat,
            created_at: Timestamp::from_second(1_700_000_000 + at).unwrap(),
            attempts: 0,
            held,
        }
    }

    #[test]
    fn a_flapping_notices_repetition_outlasts_the_flips_it_holds() {
        let q = [
            p(b"flap-r1", AlertKind::Flapping, 1, 0, false),
            p(b"down", AlertKind::Down, 0, 5, false),
            p(b"up", AlertKind::Recovery, 0, 6, false),
        ];
        assert!(tidy(&q).stale.is_empty(), "{:?}", tidy(&q));
    }

    #[test]
    fn a_recovery_ends_repetitions_and_cancels_a_down_nobody_was_told() {
        let q = [
            p(b"r", AlertKind::Down, 3, 0, false),
            p(b"up", AlertKind::Recovery, 0, 5, false),
        ];
        assert_eq!(tidy(&q).stale, vec![b"r".to_vec()]);
        assert!(tidy(&q).cancelled.is_empty());
        let q = [
            p(b"down", AlertKind::Down, 0, 0, true),
            p(b"up", AlertKind::Recovery, 0, 5, false),
        ];
        assert_eq!(tidy(&q).cancelled, vec![b"down".to_vec(), b"up".to_vec()]);
        // Monitoring stopped before anyone was told of the Down: neither goes.
        let q = [
            p(b"down", AlertKind::Down, 0, 0, true),
            p(b"stop", AlertKind::Stopped, 0, 5, false),
        ];
        assert_eq!(tidy(&q).cancelled, vec![b"down".to_vec(), b"stop".to_vec()]);
        // A Down that may go (or was tried) is sent, and its recovery after it.
        let q = [
            p(b"down", AlertKind::Down, 0, 0, false),
            p(b"up", AlertKind::Recovery, 0, 5, false),
        ];
        assert_eq!(tidy(&q), Tidy::default());
        // A repetition alone waits for its time.
        assert_eq!(tidy(&q[..1]), Tidy::default());
        // A held Late warning and the end of it go the same way.
        let q = [
            p(b"late", AlertKind::Late, 0, 0, true),
            p(b"ok", AlertKind::OnTime, 0, 5, false),
        ];
        assert_eq!(tidy(&q).cancelled, vec![b"late".to_vec(), b"ok".to_vec()]);
    }
}
