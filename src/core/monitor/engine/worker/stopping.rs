//! Monitoring that stops for good or for a while (a monitor removed, or suspended until
//! its definition is accepted again): whatever it left open is closed in the same round
//! as the removal, since no recovery will ever come from a monitor nobody watches.

use super::Worker;
use crate::core::alert::message::AlertKind;
use crate::core::monitor::engine::staging::Round;
use crate::core::monitor::engine::types::Monitor;
use crate::core::monitor::engine::wording::{self, Stopping};
use crate::core::monitor::state::{self, State};

impl Worker {
    /// Stages, for `m` whose monitoring stops now (suspended when `keep`, else removed),
    /// the notice that closes its open incident (PagerDuty resolves it, Alertmanager ends
    /// it, people are told), and the end of a Late warning it raised. Returns `m` with
    /// its incident closed: the record a suspension or a `Retain` policy keeps, which
    /// alerts afresh if it is defined again while still Down.
    pub(super) fn stop_watching(&self, mut m: Monitor, keep: bool, round: &mut Round) -> Monitor {
        let now = self.clock.now();
        let (closed, effect) = state::stop(&m.state, now);
        m.state = closed;
        let how = if keep {
            Stopping::Suspended
        } else {
            Stopping::Removed
        };
        if let Some(state::Effect::Closed { at }) = effect {
            let reason = wording::stopped(&m, how);
            self.stage_alert(&m, AlertKind::Stopped, at, reason, round);
        }
        // A Late warning ends as it does when the monitor is paused while Late.
        if m.state.state == State::Late
            && let Some((kind, _)) = wording::warning(&m, State::Late, State::Paused)
        {
            let reason = match how {
                Stopping::Suspended => {
                    "monitoring stopped while Late (the Heartbeat is not accepted at the moment); it will not go Down meanwhile"
                }
                _ => "the Heartbeat was removed while Late; Hartslag no longer watches it",
            };
            self.stage_alert(&m, kind, now, reason.into(), round);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use crate::core::alert::message::{AlertKind, Target};
    use crate::core::alert::outbox::{Delivery, Outbox};
    use crate::core::monitor::engine::{
        DefRecord, Engine, EngineConfig, Monitor, MonitorDef, Origin, PingInput, PingKind,
    };
    use crate::core::monitor::schedule::Clock;
    use crate::core::monitor::state::State;
    use crate::core::services::open_monitor_storage;

    fn hook() -> Target {
        Target::Webhook {
            url: "https://hooks.example.com/ops".into(),
        }
    }

    /// Monitor `ns/<name>`, alerting [`hook`], Down on a failed run (exit code 7).
    async fn down(engine: &Engine, name: &str, retain: bool) {
        let now = engine.clock().now();
        let def = DefRecord {
            targets: vec![hook()],
            retain_on_delete: retain,
            ..DefRecord::sample(&format!("ns/{name}"), 3600, now)
        };
        engine.upsert(def.into()).await.unwrap();
        let fail = PingInput {
            kind: PingKind::Fail,
            exit_code: Some(7),
            ..PingInput::success()
        };
        engine.ping(&format!("ns/{name}"), fail).await.unwrap();
        let m = engine.get(&format!("ns/{name}")).unwrap();
        assert!(m.state.incident_open && m.state.state == State::Down);
    }

    /// The notices queued about `name`, of `kind`.
    async fn queued(outbox: &Outbox, name: &str, kind: AlertKind) -> Vec<Delivery> {
        let pending = outbox.store().pending().await.unwrap();
        pending
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| d.alert.monitor == name && d.alert.kind == kind)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_down_monitor_removed_suspended_or_paused_queues_its_closing_with_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_monitor_storage(dir.path());
        let outbox = Outbox::new(storage.outbox, Default::default());
        let config = EngineConfig::default();
        let engine = Engine::start(storage.monitors, outbox.clone(), config, Clock::new()).unwrap();
        for name in ["removed", "kept", "suspended", "paused"] {
            down(&engine, name, name == "kept").await;
        }
        engine.remove("ns/removed").await.unwrap();
        engine.remove("ns/kept").await.unwrap();
        engine.suspend("ns/suspended").await.unwrap();
        engine.set_paused("ns/paused", true).await.unwrap();
        // Durable with the change: queued once its command is answered.
        for (name, words) in [
            ("removed", "the Heartbeat was removed while it was Down"),
            ("kept", "the Heartbeat was removed while it was Down"),
            ("suspended", "the Heartbeat is not accepted at the moment"),
            ("paused", "monitoring was paused while it was Down"),
        ] {
            let closing = queued(&outbox, name, AlertKind::Stopped).await;
            assert_eq!(closing.len(), 1, "{name}: {closing:?}");
            let alert = &closing[0].alert;
            assert!(alert.reason.contains(words), "{name}: {}", alert.reason);
            assert_eq!(closing[0].target, hook());
            // It names the incident it closes (PagerDuty's and Alertmanager's start).
            let down = &queued(&outbox, name, AlertKind::Down).await[0].alert;
            assert_eq!(alert.opened_at, down.opened_at, "{name}");
        }
        // Nothing is closed twice: removing the paused monitor queues no second notice.
        engine.remove("ns/paused").await.unwrap();
        assert_eq!(queued(&outbox, "paused", AlertKind::Stopped).await.len(), 1);
        // The records kept have their incident closed: defined again while still Down,
        // each opens a new one and alerts.
        for name in ["kept", "suspended"] {
            let key = format!("ns/{name}");
            let kept = engine.retained(&key).await.unwrap();
            assert_eq!(kept.state.state, State::Down, "{name}");
            assert!(!kept.state.incident_open, "{name}");
            engine.upsert(kept.def.clone()).await.unwrap();
            assert!(engine.get(&key).unwrap().state.incident_open, "{name}");
            assert_eq!(
                queued(&outbox, name, AlertKind::Down).await.len(),
                2,
                "{name}"
            );
        }
    }

    /// Monitor `ns/job` of the Kubernetes object with uid `uid`, alerting [`hook`].
    fn of_object(uid: &str, retain: bool, now: jiff::Timestamp) -> MonitorDef {
        DefRecord {
            id: uid.into(),
            origin: Origin::Kubernetes,
            targets: vec![hook()],
            retain_on_delete: retain,
            ..DefRecord::sample("ns/job", 3600, now)
        }
        .into()
    }

    /// An engine with `ns/job` of object `uid-1` Down (with a failed run in its history).
    async fn down_object(dir: &std::path::Path, retain: bool) -> (Engine, Outbox, Monitor) {
        let storage = open_monitor_storage(dir);
        let outbox = Outbox::new(storage.outbox, Default::default());
        let config = EngineConfig::default();
        let engine = Engine::start(storage.monitors, outbox.clone(), config, Clock::new()).unwrap();
        let now = engine.clock().now();
        engine
            .upsert(of_object("uid-1", retain, now))
            .await
            .unwrap();
        let fail = PingInput {
            kind: PingKind::Fail,
            exit_code: Some(7),
            ..PingInput::success()
        };
        engine.ping("ns/job", fail).await.unwrap();
        let m = engine.get("ns/job").unwrap();
        assert!(m.state.incident_open && m.state.state == State::Down);
        // Alerts are named by their millisecond: a Down alerted again must not share it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while engine.clock().now().as_millisecond() <= m.state.since.as_millisecond() {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stands still"
            );
            tokio::task::yield_now().await;
        }
        (engine, outbox, m)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_of_the_same_name_with_another_uid_starts_afresh_and_closes_the_old_incident()
    {
        let dir = tempfile::tempdir().unwrap();
        let (engine, outbox, old) = down_object(dir.path(), false).await;
        let now = engine.clock().now();
        let new = engine.upsert(of_object("uid-2", false, now)).await.unwrap();
        assert_ne!(new.num, old.num);
        assert_eq!(
            (new.def.id.as_str(), new.state.state),
            ("uid-2", State::New)
        );
        assert_eq!((new.state.pings, new.state.last_ping_at), (0, None));
        assert!(!new.state.incident_open);
        assert_eq!(engine.get("ns/job"), Some(new.clone()));
        // The old monitor went as a deletion takes it: history gone, incident closed.
        assert!(engine.pings(old.num, 10).await.unwrap().is_empty());
        assert!(engine.transitions(old.num, 10).await.unwrap().is_empty());
        assert!(engine.pings(new.num, 10).await.unwrap().is_empty());
        let closing = queued(&outbox, "job", AlertKind::Stopped).await;
        assert_eq!(closing.len(), 1, "{closing:?}");
        assert!(
            closing[0]
                .alert
                .reason
                .contains("the Heartbeat was removed while it was Down"),
            "{}",
            closing[0].alert.reason
        );
        assert_eq!(queued(&outbox, "job", AlertKind::Down).await.len(), 1);
        // Nothing was kept for a later Heartbeat of that name either.
        assert!(engine.retained("ns/job").await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_retain_the_new_object_picks_up_the_old_history_with_its_incident_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, outbox, old) = down_object(dir.path(), true).await;
        let now = engine.clock().now();
        let new = engine.upsert(of_object("uid-2", true, now)).await.unwrap();
        // As a deletion with `Retain` and a creation would: the history stays, the
        // incident was closed, and still Down the new object alerts afresh.
        assert_eq!((new.num, new.def.id.as_str()), (old.num, "uid-2"));
        assert_eq!((new.state.state, new.state.pings), (State::Down, 1));
        assert_eq!(new.def.created_at, old.def.created_at);
        assert_eq!(engine.pings(old.num, 10).await.unwrap().len(), 1);
        assert_eq!(queued(&outbox, "job", AlertKind::Stopped).await.len(), 1);
        assert!(engine.get("ns/job").unwrap().state.incident_open);
        let downs = queued(&outbox, "job", AlertKind::Down).await;
        assert_eq!(downs.len(), 2, "{downs:#?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_that_names_no_object_is_taken_over_and_records_its_uid() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, outbox, _) = down_object(dir.path(), false).await;
        // As an earlier build wrote it for an object without a uid: its id is its key.
        let now = engine.clock().now();
        let legacy = engine
            .upsert(of_object("ns/job", false, now))
            .await
            .unwrap();
        assert_eq!(legacy.def.id, "uid-1", "a uid recorded stays");
        engine.remove("ns/job").await.unwrap();
        let unnamed = engine
            .upsert(of_object("ns/job", false, now))
            .await
            .unwrap();
        assert_eq!(unnamed.def.resource_uid(), None);
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        let adopted = engine.upsert(of_object("uid-2", false, now)).await.unwrap();
        assert_eq!((adopted.num, adopted.state.pings), (unnamed.num, 1));
        assert_eq!(adopted.def.id, "uid-2");
        assert_eq!(
            engine.get("ns/job").unwrap().def.resource_uid(),
            Some("uid-2")
        );
        // So is a suspended one: its object picks it up.
        engine.suspend("ns/job").await.unwrap();
        let kept = engine.retained("ns/job").await.unwrap();
        assert_eq!(kept.def.id, "uid-2");
        drop(outbox);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suspended_record_that_names_no_object_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _outbox, _) = down_object(dir.path(), false).await;
        engine.remove("ns/job").await.unwrap();
        let now = engine.clock().now();
        let unnamed = engine
            .upsert(of_object("ns/job", false, now))
            .await
            .unwrap();
        engine.ping("ns/job", PingInput::success()).await.unwrap();
        engine.suspend("ns/job").await.unwrap();
        let back = engine.upsert(of_object("uid-3", false, now)).await.unwrap();
        assert_eq!((back.num, back.state.pings), (unnamed.num, 1));
        assert_eq!(back.def.id, "uid-3");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_monitor_removed_while_late_ends_its_late_warning() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_monitor_storage(dir.path());
        let outbox = Outbox::new(storage.outbox, Default::default());
        let config = EngineConfig::default();
        let engine = Engine::start(storage.monitors, outbox.clone(), config, Clock::new()).unwrap();
        let alerting = crate::core::alert::alerting::Alerting {
            policy: crate::core::channel::AlertPolicy {
                notify_late: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        let def = DefRecord {
            targets: vec![hook()],
            grace_secs: 3600,
            alerting: alerting.into(),
            ..DefRecord::sample("ns/slow", 1, engine.clock().now())
        };
        engine.upsert(def.into()).await.unwrap();
        engine.ping("ns/slow", PingInput::success()).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while engine.get("ns/slow").unwrap().state.state != State::Late {
            assert!(std::time::Instant::now() < deadline, "never Late");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        engine.remove("ns/slow").await.unwrap();
        let ended = queued(&outbox, "slow", AlertKind::OnTime).await;
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert!(ended[0].alert.reason.contains("removed while Late"));
        assert!(queued(&outbox, "slow", AlertKind::Stopped).await.is_empty());
    }
}
