//! Status as data: what a resource's status should say, as a pure function of the
//! reconciler's verdict, the monitor engine's state, the live object and the time.
//!
//! The live status (from the watch cache) is an input, not a memory of what we wrote: a
//! condition keeps its `lastTransitionTime` while its status stays the same, and the coarse
//! facts (last ping, ping count) keep their shown values until they are stale. So after a
//! restart with nothing changed the computed status equals the live one and nothing is
//! written.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::core::monitor::engine::Monitor;
use crate::core::monitor::state::{self, State};
use crate::core::storage::{StatsReport, Tally};
use crate::k8s::crd::{
    ApplicationStatus, EventTotal, HeartbeatState, HeartbeatStatus, TallyStatus,
};

/// Condition types.
pub mod kinds {
    /// The token is issued and (for a Heartbeat) the monitor is armed.
    pub const READY: &str = "Ready";
    /// True while the Heartbeat is Up, for `kubectl wait --for=condition=Up`.
    pub const UP: &str = "Up";
    /// Another operator instance also watches this namespace.
    pub const OPERATOR_CONFLICT: &str = "OperatorConflict";
}

/// What a reconcile concluded about one object: the reconciler's half of the truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The generation the reconcile looked at.
    pub generation: Option<i64>,
    /// Ready, or why not.
    pub outcome: Outcome,
}

/// The result of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The token in Secret `secret` is accepted; a Heartbeat's monitor is armed.
    Ready {
        /// Secret holding the token.
        secret: String,
    },
    /// Not active; `Ready=False` says why.
    Refused(Refusal),
}

impl Verdict {
    /// The verdict on an object whose deletion started while a finalizer that is not ours
    /// holds it, at `generation` (a deletion bumps it): not Ready, whatever the last
    /// reconcile concluded, since its token was revoked (and a Heartbeat's monitor removed
    /// or retained) when the deletion started. `message` is [`HEARTBEAT_DELETING`] or
    /// [`APPLICATION_DELETING`].
    pub fn deleting(generation: Option<i64>, message: &str) -> Self {
        Self {
            generation,
            outcome: Outcome::Refused(Refusal::new(DELETING, message)),
        }
    }
}

/// The `Ready=False` reason of an object being deleted (see [`Verdict::deleting`]).
pub const DELETING: &str = "Deleting";

/// The `Ready=False` message of a Heartbeat being deleted.
pub const HEARTBEAT_DELETING: &str = "the Heartbeat is being deleted (a finalizer holds it): its token no longer works and it is not monitored";

/// The `Ready=False` message of an Application being deleted.
pub const APPLICATION_DELETING: &str =
    "the Application is being deleted (a finalizer holds it): its token no longer works";

/// Why an object is not active: a `Ready=False` reason and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase reason, also the reason of the Warning Event.
    pub reason: &'static str,
    /// For people: what is wrong and how to fix it.
    pub message: String,
}

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A condition that keeps its transition time while its status does not change.
pub fn condition(
    live: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = live
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

pub(super) fn ready_condition(
    live: &[Condition],
    verdict: &Verdict,
    ready_reason: &str,
    ready_message: &str,
    now: Timestamp,
) -> Condition {
    match &verdict.outcome {
        Outcome::Ready { .. } => condition(
            live,
            kinds::READY,
            "True",
            ready_reason,
            ready_message.into(),
            verdict.generation,
            now,
        ),
        Outcome::Refused(r) => condition(
            live,
            kinds::READY,
            "False",
            r.reason,
            r.message.clone(),
            verdict.generation,
            now,
        ),
    }
}

fn conflict_condition(
    live: &[Condition],
    conflict: Option<&str>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Condition> {
    conflict.map(|message| {
        condition(
            live,
            kinds::OPERATOR_CONFLICT,
            "True",
            "OverlappingScope",
            message.into(),
            generation,
            now,
        )
    })
}

/// RFC 3339 in whole seconds, as Kubernetes writes times.
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// The state shown for an engine state.
pub fn shown_state(s: State) -> HeartbeatState {
    match s {
        State::New => HeartbeatState::New,
        State::Up => HeartbeatState::Up,
        State::Started => HeartbeatState::Started,
        State::Late => HeartbeatState::Late,
        State::Down => HeartbeatState::Down,
        State::Paused => HeartbeatState::Paused,
    }
}

/// The Up condition's message: for a Down monitor whose reason does not change with time
/// (a failed Job, a run not scheduled or running too long), the reason in words, as the
/// alert says it; otherwise the state in words, so the message does not change (and cost a
/// status write) as time passes.
fn up_message(m: &Monitor, now: Timestamp) -> String {
    use crate::core::monitor::state::DownReason;
    match (&m.state.state, &m.state.down_reason) {
        (State::Down, Some(r)) if !matches!(r, DownReason::Missed | DownReason::RunTimeout) => {
            crate::core::monitor::engine::describe_down(r, m, now)
        }
        // Resumed with nothing heard while paused: New again, but it was pinged before.
        (State::New, _) if m.state.last_ping_at.is_some() => {
            "no ping received since it was resumed".into()
        }
        (s, _) => state_words(*s).into(),
    }
}

/// When the next ping is due, as `nextDueAt` shows it. A Down monitor keeps the deadline
/// it missed, or the one a failed run left behind, in its state (its misses count from
/// it): the status shows the next time its rhythm expects a ping instead, the next
/// scheduled time or the next whole interval after that deadline, so a monitor that went
/// Down does not show a time in the past as its next due.
pub fn next_due(m: &Monitor, now: Timestamp) -> Option<Timestamp> {
    let st = &m.state;
    let due = st.next_expected_at()?;
    if st.state != State::Down || due > now {
        return Some(due);
    }
    let timing = m.def.timing();
    if let Some(schedule) = timing.schedule {
        return schedule.next_after(now);
    }
    let interval = timing.interval.as_nanos();
    if interval <= 0 {
        return Some(due);
    }
    let behind = now.duration_since(due).as_nanos();
    let ahead = behind
        .checked_div(interval)
        .and_then(|whole| whole.checked_add(1))
        .and_then(|n| n.checked_mul(interval))
        .and_then(|n| i64::try_from(n).ok())?;
    due.checked_add(jiff::SignedDuration::from_nanos(ahead))
        .ok()
}

fn state_words(s: State) -> &'static str {
    match s {
        State::Up => "pings arrive on time",
        State::New => "no ping received yet",
        State::Late => "the deadline passed; within grace",
        State::Down => "missed its deadline or reported failure",
        State::Paused => "paused",
        State::Started => "a run is in progress",
    }
}

/// Everything a Heartbeat's status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatInputs<'a> {
    /// The reconciler's verdict for the current generation.
    pub verdict: &'a Verdict,
    /// The armed monitor, when Ready.
    pub monitor: Option<&'a Monitor>,
    /// The status on the live object.
    pub live: &'a HeartbeatStatus,
    /// Another operator instance that also watches the namespace, in words.
    pub conflict: Option<&'a str>,
    /// Now.
    pub now: Timestamp,
    /// Shortest time between two refreshes of the last-ping facts.
    pub refresh: Duration,
}

/// The status a Heartbeat should show, or `None` when the verdict says Ready but the
/// monitor is not (yet) in the engine: then nothing true can be written.
pub fn heartbeat_status(i: HeartbeatInputs<'_>) -> Option<HeartbeatStatus> {
    let live = &i.live.conditions;
    let generation = i.verdict.generation;
    let mut conditions = vec![ready_condition(
        live,
        i.verdict,
        "Armed",
        "token issued and monitor armed",
        i.now,
    )];
    let exact = match (&i.verdict.outcome, i.monitor) {
        (Outcome::Refused(_), None) => {
            conditions.extend(conflict_condition(live, i.conflict, generation, i.now));
            // Not monitored: no state, no deadline, no counters. A stale value must never
            // outlive the condition that made it stale.
            return Some(HeartbeatStatus {
                conditions,
                observed_generation: generation,
                ..Default::default()
            });
        }
        (Outcome::Ready { .. }, None) => return None,
        (outcome, Some(m)) => {
            // Refused with a monitor: an invalid edit, the last valid spec still in effect
            // (and still alerting), so its state is shown beside the refusal.
            let secret = match outcome {
                Outcome::Ready { secret } => Some(secret.clone()),
                Outcome::Refused(_) => i.live.token_secret_name.clone(),
            };
            let st = &m.state;
            conditions.push(condition(
                live,
                kinds::UP,
                if st.state == State::Up {
                    "True"
                } else {
                    "False"
                },
                st.state.as_str(),
                up_message(m, i.now),
                generation,
                i.now,
            ));
            conditions.extend(conflict_condition(live, i.conflict, generation, i.now));
            HeartbeatStatus {
                state: Some(shown_state(st.state)),
                last_ping_at: st.last_ping_at.map(format_time),
                next_due_at: next_due(m, i.now).map(format_time),
                consecutive_misses: state::consecutive_misses(&m.def.timing(), st, i.now),
                pings: st.pings,
                last_alert_at: st.last_alert_at.map(format_time),
                token_secret_name: secret,
                conditions,
                observed_generation: generation,
            }
        }
    };
    let m = i.monitor?;
    Some(coarsen(exact, i.live, m, i.now, i.refresh))
}

/// How stale the shown last ping may get before it is refreshed: the refresh period, or
/// interval plus grace when that is longer. The shown value is then never older than the
/// silence that would make the monitor Down, so it cannot make a healthy job look dead,
/// and a job pinging every few seconds costs one status write per period, not per ping.
pub fn ping_refresh_after(m: &Monitor, refresh: Duration) -> Duration {
    let slack = Duration::from_secs(m.def.interval_secs.saturating_add(m.def.grace_secs));
    refresh.max(slack)
}

/// Keeps the shown last-ping facts (`lastPingAt`, `nextDueAt`, `pings`) while everything
/// else matches and they are not stale; any other difference writes the exact status. A
/// Down monitor's shown `nextDueAt` is stale once it has passed ([`next_due`] moves on
/// with its rhythm, at most once an interval or scheduled time).
fn coarsen(
    exact: HeartbeatStatus,
    live: &HeartbeatStatus,
    m: &Monitor,
    now: Timestamp,
    refresh: Duration,
) -> HeartbeatStatus {
    let same_otherwise = HeartbeatStatus {
        last_ping_at: live.last_ping_at.clone(),
        next_due_at: live.next_due_at.clone(),
        pings: live.pings,
        ..exact.clone()
    } == *live;
    if !same_otherwise {
        return exact;
    }
    let due_passed = m.state.state == State::Down
        && live.next_due_at != exact.next_due_at
        && live
            .next_due_at
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|shown| shown <= now);
    if due_passed {
        return exact;
    }
    let shown = live.last_ping_at.as_deref().and_then(parse_time);
    let fresh = match (shown, m.state.last_ping_at) {
        (Some(shown), Some(real)) => {
            let behind = Duration::try_from(real.duration_since(shown)).unwrap_or_default();
            behind < ping_refresh_after(m, refresh)
        }
        (None, None) => true,
        _ => false,
    };
    if fresh { live.clone() } else { exact }
}

fn tally(t: Tally) -> TallyStatus {
    TallyStatus {
        count: t.count,
        weight: i64::try_from(t.weight).unwrap_or(if t.weight > 0 { i64::MAX } else { i64::MIN }),
    }
}

/// An Application's stored counts, as the status shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppCounts {
    /// Counts per period and event name.
    pub report: StatsReport,
    /// Time of the newest event.
    pub last_event: Option<Timestamp>,
}

/// Everything an Application's status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ApplicationInputs<'a> {
    /// The reconciler's verdict for the current generation.
    pub verdict: &'a Verdict,
    /// Its counts, when the Application is registered.
    pub counts: Option<&'a AppCounts>,
    /// The status on the live object.
    pub live: &'a ApplicationStatus,
    /// Another operator instance that also watches the namespace, in words.
    pub conflict: Option<&'a str>,
    /// Now.
    pub now: Timestamp,
}

/// The status an Application should show.
pub fn application_status(i: ApplicationInputs<'_>) -> ApplicationStatus {
    let live = &i.live.conditions;
    let mut conditions = vec![ready_condition(
        live,
        i.verdict,
        "TokenIssued",
        "token issued; events are accepted",
        i.now,
    )];
    conditions.extend(conflict_condition(
        live,
        i.conflict,
        i.verdict.generation,
        i.now,
    ));
    let token_secret_name = match &i.verdict.outcome {
        Outcome::Ready { secret } => Some(secret.clone()),
        Outcome::Refused(_) => None,
    };
    let mut st = ApplicationStatus {
        token_secret_name,
        conditions,
        observed_generation: i.verdict.generation,
        ..Default::default()
    };
    // Counts stay while the Application is registered: a refused change keeps the last
    // accepted settings and token in force, so its counts are still true.
    if let Some(c) = i.counts {
        let o = &c.report.overall;
        let mut top: Vec<EventTotal> = c
            .report
            .events
            .iter()
            .map(|(name, p)| EventTotal {
                event: name.clone(),
                count: p.total.count,
                weight: tally(p.total).weight,
            })
            .collect();
        top.sort_by(|a, b| b.count.cmp(&a.count).then(a.event.cmp(&b.event)));
        top.truncate(10);
        st.today = Some(tally(o.today));
        st.week = Some(tally(o.week));
        st.month = Some(tally(o.month));
        st.total = Some(tally(o.total));
        st.last_event_at = c.last_event.map(format_time);
        st.top_events = top;
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::{DefRecord, Origin};
    use crate::core::monitor::state::{MonitorState, Signal, apply};
    use crate::core::storage::PeriodTallies;
    use crate::core::token::TokenHash;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn monitor(state: MonitorState) -> Monitor {
        Monitor {
            num: 1,
            def: DefRecord {
                id: "id".into(),
                grace_secs: 30,
                token: TokenHash::of("x"),
                origin: Origin::Kubernetes,
                ..DefRecord::sample("ns/backup", 60, t(0))
            }
            .into(),
            state,
            last_run_ms: None,
        }
    }

    fn ready(generation: i64) -> Verdict {
        Verdict {
            generation: Some(generation),
            outcome: Outcome::Ready {
                secret: "backup-heartbeat".into(),
            },
        }
    }

    fn refused(generation: i64) -> Verdict {
        Verdict {
            generation: Some(generation),
            outcome: Outcome::Refused(Refusal::new(
                "InvalidSpec",
                "spec.interval 400d is out of range",
            )),
        }
    }

    fn hb(
        verdict: &Verdict,
        m: Option<&Monitor>,
        live: &HeartbeatStatus,
        now: i64,
    ) -> HeartbeatStatus {
        heartbeat_status(HeartbeatInputs {
            verdict,
            monitor: m,
            live,
            conflict: None,
            now: t(now),
            refresh: Duration::from_secs(60),
        })
        .unwrap()
    }

    fn cond<'a>(st: &'a HeartbeatStatus, ty: &str) -> &'a Condition {
        st.conditions.iter().find(|c| c.type_ == ty).unwrap()
    }

    fn pinged(m: &Monitor, at: i64) -> Monitor {
        let (s, _) = apply(&m.def.timing(), &m.state, &Signal::Success(t(at)));
        Monitor {
            state: s,
            ..m.clone()
        }
    }

    #[test]
    fn heartbeat_status_reflects_state_and_keeps_transition_times() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        let first = hb(&ready(1), Some(&up), &HeartbeatStatus::default(), 11);
        assert_eq!(first.state, Some(HeartbeatState::Up));
        assert_eq!(first.last_ping_at.as_deref(), Some("2023-11-14T22:13:30Z"));
        assert_eq!(first.next_due_at.as_deref(), Some("2023-11-14T22:14:30Z"));
        assert_eq!(cond(&first, "Up").status, "True");
        // Same state later: identical status, so nothing is written.
        assert_eq!(hb(&ready(1), Some(&up), &first, 20), first);
        // Down: the Up condition flips and its transition time moves; Ready's does not.
        let (s, _) = apply(&up.def.timing(), &up.state, &Signal::Tick(t(200)));
        let down = hb(&ready(1), Some(&monitor(s)), &first, 200);
        assert_eq!(down.state, Some(HeartbeatState::Down));
        assert_eq!(cond(&down, "Up").status, "False");
        assert_eq!(cond(&down, "Up").last_transition_time, Time(t(200)));
        assert_eq!(
            cond(&down, "Ready").last_transition_time,
            cond(&first, "Ready").last_transition_time
        );
        assert_eq!(down.consecutive_misses, 2);
    }

    #[test]
    fn a_refused_heartbeat_shows_no_state_deadline_or_counters() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        let live = hb(&ready(1), Some(&up), &HeartbeatStatus::default(), 11);
        let invalid = hb(&refused(2), None, &live, 30);
        assert_eq!(invalid.state, None);
        assert_eq!(invalid.last_ping_at, None);
        assert_eq!(invalid.next_due_at, None);
        assert_eq!(invalid.pings, 0);
        assert_eq!(invalid.token_secret_name, None);
        assert_eq!(invalid.observed_generation, Some(2));
        assert_eq!(
            invalid.conditions.len(),
            1,
            "no Up condition: not monitored"
        );
        let ready = cond(&invalid, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(ready.last_transition_time, Time(t(30)));
    }

    #[test]
    fn a_paused_heartbeat_has_no_next_due_time() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        let live = hb(&ready(1), Some(&up), &HeartbeatStatus::default(), 11);
        let (s, _) = apply(&up.def.timing(), &up.state, &Signal::Pause(t(20)));
        let paused = hb(&ready(2), Some(&monitor(s)), &live, 20);
        assert_eq!(paused.state, Some(HeartbeatState::Paused));
        assert_eq!(paused.next_due_at, None);
    }

    #[test]
    fn a_resumed_heartbeat_that_was_pinged_before_does_not_say_it_never_was() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        let timing = up.def.timing();
        let (paused, _) = apply(&timing, &up.state, &Signal::Pause(t(20)));
        let (resumed, _) = apply(&timing, &paused, &Signal::Resume(t(30)));
        assert_eq!(resumed.state, State::New);
        let st = hb(&ready(1), Some(&monitor(resumed)), &up_status(&up), 31);
        let c = cond(&st, "Up");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "New"));
        assert_eq!(c.message, "no ping received since it was resumed");
        // One never pinged says so.
        let new = hb(
            &ready(1),
            Some(&monitor(MonitorState::new(t(0)))),
            &HeartbeatStatus::default(),
            1,
        );
        assert_eq!(cond(&new, "Up").message, "no ping received yet");
    }

    fn up_status(m: &Monitor) -> HeartbeatStatus {
        hb(&ready(1), Some(m), &HeartbeatStatus::default(), 11)
    }

    /// Monitor `ns/backup` of a CronJob that runs hourly, created at `t(0)` (22:13:20).
    fn hourly_cron_job() -> Monitor {
        let def: crate::core::monitor::engine::MonitorDef = DefRecord {
            id: "id".into(),
            grace_secs: 300,
            token: TokenHash::of("x"),
            origin: Origin::Kubernetes,
            schedule: Some(crate::core::cron::Schedule::parse("0 * * * *", None).unwrap()),
            cron_job: Some("backup".into()),
            ..DefRecord::sample("ns/backup", 3600, t(0))
        }
        .into();
        let state = MonitorState::created(&def.timing(), t(0), false);
        Monitor {
            num: 1,
            def,
            state,
            last_run_ms: None,
        }
    }

    #[test]
    fn after_a_failed_run_the_next_due_time_is_the_next_scheduled_run() {
        let m = hourly_cron_job();
        // Created at 22:13:20: the first run is due at 23:00 (t(2800)).
        assert_eq!(m.state.deadline, Some(t(2800)));
        let job = crate::core::monitor::jobs::JobSignal {
            name: "backup-1".into(),
            started_at: t(2800),
            outcome: crate::core::monitor::jobs::JobOutcome::Failed {
                at: t(2900),
                reason: crate::core::monitor::jobs::JobFailure::BackoffLimitExceeded,
                exit_code: Some(3),
            },
            run_ids: Vec::new(),
        };
        let (failed, _) = apply(&m.def.timing(), &m.state, &Signal::Job(job));
        assert_eq!(failed.state, State::Down);
        let down = Monitor { state: failed, ..m };
        let st = hb(&ready(1), Some(&down), &HeartbeatStatus::default(), 2901);
        assert_eq!(st.state, Some(HeartbeatState::Down));
        assert_eq!(
            st.next_due_at.as_deref(),
            Some(format_time(t(6400)).as_str()),
            "the next run, at midnight, not the failed one's 23:00"
        );
        // Still Down after midnight: the shown time has passed, the next is at 01:00.
        let later = hb(&ready(1), Some(&down), &st, 6500);
        assert_eq!(
            later.next_due_at.as_deref(),
            Some(format_time(t(10_000)).as_str())
        );
    }

    #[test]
    fn a_down_interval_monitor_shows_the_next_interval_once_its_deadline_passed() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        // Failed before its deadline (70): that deadline is still ahead.
        let (s, _) = apply(&up.def.timing(), &up.state, &Signal::Fail(t(20), Some(1)));
        let down = monitor(s);
        let st = hb(&ready(1), Some(&down), &up_status(&up), 21);
        assert_eq!(st.state, Some(HeartbeatState::Down));
        assert_eq!(st.next_due_at.as_deref(), Some(format_time(t(70)).as_str()));
        // Past it, with nothing else changed: the next interval, not a time in the past.
        let later = hb(&ready(1), Some(&down), &st, 80);
        assert_eq!(
            later.next_due_at.as_deref(),
            Some(format_time(t(130)).as_str())
        );
        // And nothing to write while it is still ahead.
        assert_eq!(hb(&ready(1), Some(&down), &later, 100), later);
    }

    #[test]
    fn frequent_pings_refresh_the_last_ping_only_when_it_is_stale() {
        let m0 = monitor(MonitorState::new(t(0)));
        let up = pinged(&m0, 10);
        let live = hb(&ready(1), Some(&up), &HeartbeatStatus::default(), 11);
        // Pings every 10 s: interval plus grace is 90 s, so the shown ping stays until then.
        let mut m = up.clone();
        for at in (20..100).step_by(10) {
            m = pinged(&m, at);
            assert_eq!(hb(&ready(1), Some(&m), &live, at), live, "ping at +{at}s");
        }
        m = pinged(&m, 100);
        let refreshed = hb(&ready(1), Some(&m), &live, 100);
        assert_eq!(
            refreshed.last_ping_at.as_deref(),
            Some(format_time(t(100)).as_str())
        );
        assert_eq!(refreshed.pings, m.state.pings);
        // A state change is written at once, whatever the shown ping.
        let (s, _) = apply(&m.def.timing(), &m.state, &Signal::Fail(t(101), None));
        let failed = hb(&ready(1), Some(&monitor(s)), &refreshed, 101);
        assert_eq!(failed.state, Some(HeartbeatState::Down));
    }

    #[test]
    fn a_new_generation_is_written_exactly() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        let live = hb(&ready(1), Some(&up), &HeartbeatStatus::default(), 11);
        let m = pinged(&up, 20);
        let next = hb(&ready(2), Some(&m), &live, 21);
        assert_eq!(next.observed_generation, Some(2));
        assert_eq!(
            next.last_ping_at.as_deref(),
            Some(format_time(t(20)).as_str())
        );
    }

    #[test]
    fn a_conflict_is_a_condition_that_names_the_other_operator_and_goes_away() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        let verdict = ready(1);
        let base = HeartbeatInputs {
            verdict: &verdict,
            monitor: Some(&up),
            live: &HeartbeatStatus::default(),
            conflict: Some("also watched by the operator of Lease ops-b/other"),
            now: t(11),
            refresh: Duration::from_secs(60),
        };
        let with = heartbeat_status(base).unwrap();
        let c = cond(&with, "OperatorConflict");
        assert_eq!(c.status, "True");
        assert!(c.message.contains("ops-b/other"));
        let without = heartbeat_status(HeartbeatInputs {
            live: &with,
            conflict: None,
            ..base
        })
        .unwrap();
        assert!(
            without
                .conditions
                .iter()
                .all(|c| c.type_ != "OperatorConflict")
        );
    }

    #[test]
    fn a_heartbeat_being_deleted_is_not_ready_and_shows_no_state() {
        let up = pinged(&monitor(MonitorState::new(t(0))), 10);
        let live = hb(&ready(1), Some(&up), &HeartbeatStatus::default(), 11);
        let deleting = Verdict::deleting(Some(2), HEARTBEAT_DELETING);
        let st = hb(&deleting, None, &live, 20);
        let c = cond(&st, "Ready");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Deleting")
        );
        assert!(c.message.contains("token no longer works"), "{}", c.message);
        assert_eq!((st.state, st.next_due_at.as_deref()), (None, None));
        assert!(st.conditions.iter().all(|c| c.type_ != "Up"));
        assert_eq!(st.observed_generation, Some(2));
    }

    #[test]
    fn ready_without_a_monitor_writes_nothing() {
        assert!(
            heartbeat_status(HeartbeatInputs {
                verdict: &ready(1),
                monitor: None,
                live: &HeartbeatStatus::default(),
                conflict: None,
                now: t(0),
                refresh: Duration::from_secs(60),
            })
            .is_none()
        );
    }

    #[test]
    fn application_status_keeps_the_top_ten_and_keeps_counts_when_refused() {
        let mut report = StatsReport::default();
        for i in 0..12 {
            let p = PeriodTallies {
                total: Tally {
                    count: i,
                    weight: i128::from(i) * 10,
                },
                ..Default::default()
            };
            report.events.insert(format!("e{i:02}"), p);
            report.overall.total.add(p.total);
        }
        let counts = AppCounts {
            report,
            last_event: Some(t(5)),
        };
        let verdict = Verdict {
            generation: Some(2),
            outcome: Outcome::Ready { secret: "s".into() },
        };
        let inputs = ApplicationInputs {
            verdict: &verdict,
            counts: Some(&counts),
            live: &ApplicationStatus::default(),
            conflict: None,
            now: t(6),
        };
        let st = application_status(inputs);
        assert_eq!(st.top_events.len(), 10);
        assert_eq!(st.top_events[0].event, "e11");
        assert_eq!(st.total.unwrap().count, 66);
        assert_eq!(st.last_event_at.as_deref(), Some("2023-11-14T22:13:25Z"));
        assert_eq!(st.token_secret_name.as_deref(), Some("s"));
        let refused = Verdict {
            generation: Some(3),
            outcome: Outcome::Refused(Refusal::new("InvalidSpec", "bad zone")),
        };
        let st2 = application_status(ApplicationInputs {
            verdict: &refused,
            live: &st,
            ..inputs
        });
        assert_eq!(st2.total.unwrap().count, 66);
        assert_eq!(st2.token_secret_name, None);
        assert_eq!(st2.conditions[0].reason, "InvalidSpec");
        let big = Tally {
            count: 1,
            weight: i128::MAX,
        };
        assert_eq!(tally(big).weight, i64::MAX, "weights saturate in status");
    }
}
