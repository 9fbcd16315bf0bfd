//! Status of the custom resources computed as data (pure), and the writer that applies it.
//!
//! The writer patches the status subresource only: state transitions at once, counters at
//! most every `counter_period`, nothing when unchanged, and never more than `max_per_sec`
//! patches per second whatever the ping rate. It works from the engine's snapshot, so after
//! an API-server outage it simply writes the current truth.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::crd::{
    Application, ApplicationStatus, EventTotal, Heartbeat, HeartbeatStatus, TallyStatus,
};
use crate::core::monitor::engine::{Monitor, Origin};
use crate::core::monitor::state::{self, State};
use crate::core::store::events::{PeriodTallies, StatsReport};
use crate::core::store::keys::Tally;

/// Field manager name for server-side apply and patches.
pub const MANAGER: &str = "hartslag";

/// A condition that keeps its transition time while its status does not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
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

/// The status a Heartbeat should show for monitor `m`.
pub fn heartbeat_status(
    m: &Monitor,
    previous: &HeartbeatStatus,
    secret: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> HeartbeatStatus {
    let st = &m.state;
    let up = st.state == State::Up;
    let fmt = |t: Option<Timestamp>| t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let conditions = vec![
        condition(
            &previous.conditions,
            "Ready",
            true,
            "Armed",
            "token issued and monitor armed".into(),
            generation,
            now,
        ),
        condition(
            &previous.conditions,
            "Up",
            up,
            st.state.as_str(),
            match st.state {
                State::Up => "pings arrive on time".into(),
                State::New => "no ping received yet".into(),
                State::Late => "the deadline passed; within grace".into(),
                State::Down => "missed its deadline or reported failure".into(),
                State::Paused => "paused".into(),
                State::Started => "a run is in progress".into(),
            },
            generation,
            now,
        ),
    ];
    HeartbeatStatus {
        state: Some(st.state.as_str().into()),
        last_ping_at: fmt(st.last_ping_at),
        next_due_at: fmt(st.next_expected_at()),
        consecutive_misses: state::consecutive_misses(&m.def.timing(), st, now),
        pings: st.pings,
        last_alert_at: fmt(st.last_alert_at),
        token_secret_name: Some(secret.into()),
        conditions,
        observed_generation: generation,
    }
}

fn tally(t: Tally) -> TallyStatus {
    TallyStatus {
        count: t.count,
        weight: i64::try_from(t.weight).unwrap_or(if t.weight > 0 { i64::MAX } else { i64::MIN }),
    }
}

/// The status an Application should show for its stats.
pub fn application_status(
    report: &StatsReport,
    last_event: Option<Timestamp>,
    previous: &ApplicationStatus,
    secret: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> ApplicationStatus {
    let o: &PeriodTallies = &report.overall;
    let mut top: Vec<EventTotal> = report
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
    ApplicationStatus {
        today: Some(tally(o.today)),
        week: Some(tally(o.week)),
        month: Some(tally(o.month)),
        total: Some(tally(o.total)),
        last_event_at: last_event.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        top_events: top,
        token_secret_name: Some(secret.into()),
        conditions: vec![condition(
            &previous.conditions,
            "Ready",
            true,
            "TokenIssued",
            "token issued; events are accepted".into(),
            generation,
            now,
        )],
        observed_generation: generation,
    }
}

/// Patches `status` of a namespaced resource.
pub async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most status patches per second.
    pub max_per_sec: u32,
    /// How often counters (pings, misses, application counts) are refreshed.
    pub counter_period: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_per_sec: 20,
            counter_period: Duration::from_secs(5),
        }
    }
}

/// Runs the Heartbeat status writer until the process ends.
///
/// Transitions go to the front of the queue; the periodic sweep (counters, last ping) fills
/// the remaining budget. One patch per `1 / max_per_sec`, shared by both, so the API server
/// sees a bounded rate whatever the ping rate.
pub async fn run_heartbeat_writer(ctx: std::sync::Arc<super::Context>, config: WriterConfig) {
    use std::collections::{HashSet, VecDeque};
    use tokio::sync::broadcast::error::TryRecvError;

    let mut changes = ctx.core.engine.subscribe();
    let mut written: HashMap<String, HeartbeatStatus> = HashMap::new();
    // Transitions not yet written, with the (logical) time they happened.
    let mut urgent: VecDeque<(String, Timestamp)> = VecDeque::new();
    let mut urgent_keys: HashSet<String> = HashSet::new();
    let mut sweep: VecDeque<String> = VecDeque::new();
    let mut next_sweep = tokio::time::Instant::now();
    let mut budget = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(config.max_per_sec.max(1)),
    ));
    budget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Collect transitions without blocking.
        loop {
            match changes.try_recv() {
                Ok(c) => {
                    if urgent_keys.insert(c.key.clone()) {
                        urgent.push_back((c.key, c.at));
                    }
                }
                Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Closed) => return,
                Err(TryRecvError::Empty) => break,
            }
        }
        if sweep.is_empty() && tokio::time::Instant::now() >= next_sweep {
            sweep = ctx
                .core
                .engine
                .list()
                .into_iter()
                .filter(|m| m.def.origin == Origin::Kubernetes)
                .map(|m| m.def.key)
                .collect();
            next_sweep = tokio::time::Instant::now() + config.counter_period;
        }
        let (key, since) = match urgent.pop_front() {
            Some((k, at)) => {
                urgent_keys.remove(&k);
                (k, Some(at))
            }
            None => match sweep.pop_front() {
                Some(k) => (k, None),
                None => {
                    // Idle: wait for a transition or the next sweep.
                    let wait = next_sweep.saturating_duration_since(tokio::time::Instant::now());
                    tokio::select! {
                        c = changes.recv() => match c {
                            Ok(c) => {
                                if urgent_keys.insert(c.key.clone()) {
                                    urgent.push_back((c.key, c.at));
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            },
        };
        let Some(m) = ctx
            .core
            .engine
            .get(&key)
            .filter(|m| m.def.origin == Origin::Kubernetes)
        else {
            continue;
        };
        let Some(meta) = ctx.heartbeat_meta(&key) else {
            continue;
        };
        let now = ctx.core.engine.clock().now();
        let previous = written.get(&key).cloned().unwrap_or_default();
        let desired = heartbeat_status(&m, &previous, &meta.secret, meta.generation, now);
        if desired == previous {
            continue;
        }
        budget.tick().await;
        let api: Api<Heartbeat> = Api::namespaced(ctx.client.clone(), &m.def.namespace);
        match patch_status(&api, &m.def.name, &desired).await {
            Ok(()) => {
                ctx.patches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(at) = since {
                    let lag = Timestamp::now().duration_since(at);
                    ctx.status_lag
                        .observe(Duration::try_from(lag).unwrap_or_default());
                }
                written.insert(key, desired);
            }
            Err(e) => {
                tracing::warn!(heartbeat = %key, error = %e, "status patch failed; will retry");
                if since.is_some() && urgent_keys.insert(key.clone()) {
                    urgent.push_back((key, since.unwrap_or(now)));
                }
            }
        }
    }
}

/// Runs the Application status writer until the process ends.
pub async fn run_application_writer(ctx: std::sync::Arc<super::Context>, config: WriterConfig) {
    let mut written: HashMap<String, ApplicationStatus> = HashMap::new();
    let mut tick = tokio::time::interval(config.counter_period);
    let gap = Duration::from_secs_f64(1.0 / f64::from(config.max_per_sec.max(1)));
    loop {
        tick.tick().await;
        for app in ctx.core.registry.applications() {
            let Some(meta) = ctx.application_meta(&app.key) else {
                continue;
            };
            let store = ctx.core.registry.store().clone();
            let num = app.num;
            let periods = crate::core::calendar::Periods::at(Timestamp::now(), &app.tz);
            let Ok(Ok((report, last))) = tokio::task::spawn_blocking(move || {
                let r = store.stats(num, &periods, None, None)?;
                let last = store.last_event_at(num)?;
                Ok::<_, crate::core::store::StoreError>((r, last))
            })
            .await
            else {
                continue;
            };
            let previous = written.get(&app.key).cloned().unwrap_or_default();
            let desired = application_status(
                &report,
                last,
                &previous,
                &meta.secret,
                meta.generation,
                Timestamp::now(),
            );
            if desired == previous {
                continue;
            }
            let api: Api<Application> = Api::namespaced(ctx.client.clone(), &app.namespace);
            match patch_status(&api, &app.name, &desired).await {
                Ok(()) => {
                    ctx.patches
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    written.insert(app.key.clone(), desired);
                }
                Err(e) => {
                    tracing::warn!(application = %app.key, error = %e, "status patch failed; will retry")
                }
            }
            tokio::time::sleep(gap).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::monitor::engine::{MonitorDef, Origin};
    use crate::core::monitor::state::{MonitorState, Signal, apply};
    use crate::core::token::TokenHash;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn monitor(state: MonitorState) -> Monitor {
        Monitor {
            num: 1,
            def: MonitorDef {
                key: "ns/backup".into(),
                id: "id".into(),
                namespace: "ns".into(),
                name: "backup".into(),
                display_name: None,
                interval_secs: 60,
                grace_secs: 30,
                schedule: None,
                max_duration_secs: None,
                cron_job: None,
                require_ping: false,
                paused: false,
                targets: vec![],
                application: None,
                token: TokenHash::of("x"),
                ping_hint: String::new(),
                origin: Origin::Kubernetes,
                retain_on_delete: false,
                created_at: t(0),
                updated_at: t(0),
            },
            state,
        }
    }

    #[test]
    fn heartbeat_status_reflects_state_and_keeps_transition_times() {
        let m = monitor(MonitorState::new(t(0)));
        let (s, _) = apply(&m.def.timing(), &m.state, &Signal::Success(t(10)));
        let up = monitor(s);
        let first = heartbeat_status(
            &up,
            &HeartbeatStatus::default(),
            "backup-heartbeat",
            Some(1),
            t(11),
        );
        assert_eq!(first.state.as_deref(), Some("Up"));
        assert_eq!(first.last_ping_at.as_deref(), Some("2023-11-14T22:13:30Z"));
        assert_eq!(first.next_due_at.as_deref(), Some("2023-11-14T22:14:30Z"));
        let cond = |st: &HeartbeatStatus, ty: &str| {
            st.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .cloned()
                .unwrap()
        };
        assert_eq!(cond(&first, "Up").status, "True");
        // Same state later: identical status, so the writer sends nothing.
        let again = heartbeat_status(&up, &first, "backup-heartbeat", Some(1), t(20));
        assert_eq!(again, first);
        // Down: the Up condition flips and its transition time moves.
        let (s, _) = apply(&up.def.timing(), &up.state, &Signal::Tick(t(200)));
        let down = heartbeat_status(&monitor(s), &first, "backup-heartbeat", Some(1), t(200));
        assert_eq!(down.state.as_deref(), Some("Down"));
        assert_eq!(cond(&down, "Up").status, "False");
        assert_eq!(cond(&down, "Up").last_transition_time, Time(t(200)));
        assert_eq!(
            cond(&down, "Ready").last_transition_time,
            cond(&first, "Ready").last_transition_time
        );
        assert_eq!(down.consecutive_misses, 2);
    }

    #[test]
    fn application_status_keeps_the_top_ten() {
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
        let st = application_status(
            &report,
            Some(t(5)),
            &ApplicationStatus::default(),
            "s",
            Some(2),
            t(6),
        );
        assert_eq!(st.top_events.len(), 10);
        assert_eq!(st.top_events[0].event, "e11");
        assert_eq!(st.total.unwrap().count, 66);
        assert_eq!(st.last_event_at.as_deref(), Some("2023-11-14T22:13:25Z"));
        let big = Tally {
            count: 1,
            weight: i128::MAX,
        };
        assert_eq!(tally(big).weight, i64::MAX, "weights saturate in status");
    }
}
