//! The rules the module documentation writes down, one test each: deadlines, ordering, wakeups, misses, retiming, episodes, stored shapes, the failure threshold and maintenance windows.

use super::*;

#[test]
fn deadlines_follow_the_latest_ping() {
    let (s, _, _) = run(&HOUR, &[Success(t(0))]);
    assert_eq!(s.deadline, Some(t(3600)));
    assert_eq!(s.next_expected_at(), Some(t(3600)));
    assert_eq!(s.since, t(0));
    let (s, _, _) = run(&HOUR, &[Success(t(0)), Success(t(1000))]);
    assert_eq!(s.deadline, Some(t(4600)));
    assert_eq!(s.since, t(0), "Up since the first ping");
    // A started run keeps the regular deadline for the API and for misses.
    let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(10))]);
    assert_eq!(s.next_expected_at(), Some(t(3600)));
    assert_eq!(s.run_started_at, Some(t(10)));
}

#[test]
fn out_of_order_signals_never_move_time_backwards() {
    // An older ping is recorded but does not pull the deadline back.
    let (s, _, last) = run(&HOUR, &[Success(t(100)), Success(t(50))]);
    assert_eq!(s.last_ping_at, Some(t(100)));
    assert_eq!(s.deadline, Some(t(3700)));
    assert_eq!(last, vec![]);
    // An old ping delivered after the monitor went Down recovers it, but not in the past.
    let (s, _, last) = run(&HOUR, &[Success(t(0)), Tick(t(3900)), Success(t(3000))]);
    assert_eq!(s.state, State::Up);
    assert_eq!(s.since, t(3900));
    assert_eq!(last, vec![tr(State::Down, State::Up, 3900), recovery(3900)]);
    assert_eq!(s.deadline, Some(t(6600)));
    // A run never lasts a negative time; an older start does not restart the run.
    let (_, _, last) = run(&HOUR, &[Success(t(0)), Start(t(100)), Success(t(90))]);
    assert_eq!(last, vec![tr(State::Started, State::Up, 100), ran(0)]);
    let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(100)), Start(t(50))]);
    assert_eq!(s.run_started_at, Some(t(100)));
    // An older failure is recorded without moving last_fail_at back.
    let (s, _, _) = run(&HOUR, &[Fail(t(10), None), Fail(t(5), None)]);
    assert_eq!(s.last_fail_at, Some(t(10)));
    // Transitions from a stale signal are clamped to `since`.
    let (s, _, last) = run(&HOUR, &[Success(t(100)), Fail(t(50), Some(1))]);
    assert_eq!(s.since, t(100));
    assert_eq!(
        last,
        vec![tr(State::Up, State::Down, 100), alert(failed(Some(1)), 100)]
    );
}

#[test]
fn wakeups_are_exactly_when_a_tick_changes_something() {
    let (s, _, _) = run(&HOUR, &[Success(t(0))]);
    assert_eq!(next_wakeup(&HOUR, &s), Some(t(3600)));
    let (s, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3600))]);
    assert_eq!(next_wakeup(&HOUR, &s), Some(t(3900)));
    let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(10))]);
    assert_eq!(next_wakeup(&HOUR, &s), Some(t(310)));
    let (s, _, _) = run(&MINUTE, &[Success(t(0)), Start(t(10))]);
    assert_eq!(next_wakeup(&MINUTE, &s), Some(t(70)));
    let (s, _, _) = run(&MINUTE, &[Success(t(0))]);
    assert_eq!(next_wakeup(&MINUTE, &s), Some(t(60)));
    for signals in [
        vec![],
        vec![Fail(t(1), None)],
        vec![Pause(t(1))],
        vec![Success(t(0)), Pause(t(1))],
        vec![Success(t(0)), Tick(t(3900))],
    ] {
        let (s, _, _) = run(&HOUR, &signals);
        assert_eq!(next_wakeup(&HOUR, &s), None, "{:?}", s.state);
    }
    let (s, _, _) = run(&HOUR, &[Success(t(0)), Pause(t(1)), Success(t(2))]);
    assert_eq!(s.next_expected_at(), None, "paused shows no deadline");
    assert_eq!(s.last_ping_at, Some(t(2)), "paused records pings");
    assert!(s.pinged_while_paused);
}

#[test]
fn consecutive_misses_count_whole_intervals_while_down() {
    let (down, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3900))]);
    for (now, want) in [
        (3900, 0),
        (7199, 0),
        (7200, 1),
        (10_799, 1),
        (10_800, 2),
        (3600 + 5 * 3600 + 1, 5),
    ] {
        assert_eq!(consecutive_misses(&HOUR, &down, t(now)), want, "at {now}");
    }
    let (up, _, _) = run(&HOUR, &[Success(t(0))]);
    assert_eq!(
        consecutive_misses(&HOUR, &up, t(100_000)),
        0,
        "only while Down"
    );
    let (late, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3700))]);
    assert_eq!(
        consecutive_misses(&HOUR, &late, t(100_000)),
        0,
        "only while Down"
    );
    let (paused, _, _) = run(&HOUR, &[Success(t(0)), Pause(t(1))]);
    assert_eq!(consecutive_misses(&HOUR, &paused, t(100_000)), 0);
    let (failed_new, _, _) = run(&HOUR, &[Fail(t(1), None)]);
    assert_eq!(
        consecutive_misses(&HOUR, &failed_new, t(100_000)),
        0,
        "no deadline"
    );
    // Down by failure before the deadline: 0 until whole intervals pass after it.
    let (failed, _, _) = run(&HOUR, &[Success(t(0)), Fail(t(10), Some(1))]);
    for (now, want) in [
        (-7200, 0),
        (0, 0),
        (100, 0),
        (3600, 0),
        (7199, 0),
        (7200, 1),
        (10_800, 2),
    ] {
        assert_eq!(
            consecutive_misses(&HOUR, &failed, t(now)),
            want,
            "failed, at {now}"
        );
    }
    // Run timeouts count from the regular deadline too.
    let (timed_out, _, _) = run(&HOUR, &[Success(t(0)), Start(t(10)), Tick(t(310))]);
    assert_eq!(consecutive_misses(&HOUR, &timed_out, t(3600 * 4)), 3);
    // Sub-second precision: interval 1.5 s, 3 s past the deadline is 2 misses.
    let fast = Timing::every(SignedDuration::from_millis(1500), SignedDuration::ZERO);
    let (s, _, _) = run(&fast, &[Success(t(0)), Tick(t(2))]);
    let deadline = s.deadline.unwrap();
    assert_eq!(
        consecutive_misses(&fast, &s, deadline.checked_add(secs(3)).unwrap()),
        2
    );
    // A nonsense interval never divides by zero.
    let zero = Timing::every(SignedDuration::ZERO, SignedDuration::ZERO);
    assert_eq!(consecutive_misses(&zero, &down, t(100_000)), 0);
}

#[test]
fn retiming_recomputes_the_deadline_and_re_evaluates() {
    use State::*;
    let (late, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3700))]);
    assert_eq!(late.state, Late);
    // Longer interval: Late becomes Up now, the deadline moves.
    let longer = Timing::from_secs(7200, 300);
    let (s, e) = apply(&longer, &late, &Retimed(t(3701)));
    assert_eq!(
        (s.state, s.deadline, e),
        (Up, Some(t(7200)), vec![tr(Late, Up, 3701)])
    );
    // Longer grace only: stays Late.
    let (s, e) = apply(&Timing::from_secs(3600, 1000), &late, &Retimed(t(3701)));
    assert_eq!((s.state, e), (Late, vec![]));
    // Shorter interval: straight to Down at the logical time, with the alert.
    let shorter = Timing::from_secs(60, 0);
    let (s, e) = apply(&shorter, &late, &Retimed(t(3702)));
    assert_eq!(s.state, Down);
    assert_eq!(s.deadline, Some(t(60)));
    assert_eq!(
        e,
        vec![tr(Late, Down, 3600), alert(DownReason::Missed, 3600)],
        "since never decreases"
    );
    // Up to Late by a shorter interval.
    let (up, _, _) = run(&HOUR, &[Success(t(0))]);
    let (s, e) = apply(&Timing::from_secs(100, 1000), &up, &Retimed(t(500)));
    assert_eq!((s.state, e), (Late, vec![tr(Up, Late, 100)]));
    // Down stays Down (only a ping ends an episode), with the deadline recomputed.
    let (down, _, _) = run(&HOUR, &[Success(t(0)), Tick(t(3900))]);
    let (s, e) = apply(&Timing::from_secs(100_000, 0), &down, &Retimed(t(4000)));
    assert_eq!((s.state, s.deadline, e), (Down, Some(t(100_000)), vec![]));
    assert_eq!(
        consecutive_misses(&Timing::from_secs(100_000, 0), &s, t(4000)),
        0
    );
    // Started: a shorter grace can time the run out.
    let (started, _, _) = run(&HOUR, &[Success(t(0)), Start(t(100))]);
    let (s, e) = apply(&Timing::from_secs(3600, 50), &started, &Retimed(t(200)));
    assert_eq!(s.state, Down);
    assert_eq!(
        e,
        vec![tr(Started, Down, 150), alert(DownReason::RunTimeout, 150)]
    );
    // New and Paused have no deadline to move.
    let new = MonitorState::new(t(0));
    assert_eq!(
        apply(&shorter, &new, &Retimed(t(99_999))),
        (new.clone(), vec![])
    );
    let (paused, _, _) = run(&HOUR, &[Success(t(0)), Pause(t(1))]);
    assert_eq!(
        apply(&shorter, &paused, &Retimed(t(99_999))),
        (paused.clone(), vec![])
    );
    // Resuming uses the timing in force at resume time.
    let (paused_pinged, _, _) = run(&HOUR, &[Pause(t(1)), Success(t(2))]);
    let (s, _) = apply(&shorter, &paused_pinged, &Resume(t(100)));
    assert_eq!(s.state, Down);
}

#[test]
fn an_episode_keeps_the_reason_it_went_down_for() {
    let (s, _, _) = run(
        &HOUR,
        &[Success(t(0)), Tick(t(3900)), Fail(t(4000), Some(2))],
    );
    assert_eq!(s.down_reason, Some(DownReason::Missed));
    assert_eq!(s.since, t(3900));
    assert_eq!(s.last_fail_at, Some(t(4000)));
    let (s, _, _) = run(&HOUR, &[Fail(t(1), Some(3)), Start(t(2)), Fail(t(3), None)]);
    assert_eq!(s.down_reason, Some(failed(Some(3))));
    let (s, _, _) = run(&HOUR, &[Fail(t(1), None), Pause(t(2)), Resume(t(3))]);
    assert_eq!(s.down_reason, None, "only Down has a reason");
    assert!(!s.incident_open, "the pause closed it");
}

#[test]
fn monitoring_that_stops_closes_an_open_incident_once_and_a_kept_record_alerts_afresh() {
    // Down with its incident open, then removed or suspended.
    let (down, _, _) = run(&HOUR, &[Success(t(0)), Fail(t(10), Some(7))]);
    assert!(down.incident_open);
    let (stopped, effect) = stop(&down, t(20));
    assert_eq!(effect, Some(closed(20)));
    assert!(!stopped.incident_open);
    assert_eq!(
        (stopped.state, stopped.since, stopped.last_alert_at),
        (State::Down, down.since, down.last_alert_at),
        "nothing else changes"
    );
    // Stopping again closes nothing more.
    assert_eq!(stop(&stopped, t(30)), (stopped.clone(), None));
    // Defined again (a retained or suspended record) while still Down: a new incident.
    let (again, e) = apply(&HOUR, &stopped, &Retimed(t(40)));
    assert_eq!(e, vec![alert(failed(Some(7)), 40)]);
    assert!(again.incident_open);
    // Without an open incident (Up, or already closed by a pause) there is nothing to close.
    let (up, _, _) = run(&HOUR, &[Success(t(0))]);
    assert_eq!(stop(&up, t(5)).1, None);
    let (paused, all, last) = run(&HOUR, &[Fail(t(1), None), Pause(t(2))]);
    assert_eq!(count(&all, is_closed), 1);
    assert_eq!(last, vec![tr(State::Down, State::Paused, 2), closed(2)]);
    assert_eq!(stop(&paused, t(3)).1, None);
}

#[test]
fn a_resolved_watchdog_is_down_because_the_pipeline_stopped_with_no_exit_code() {
    let (s, all, last) = run(
        &HOUR,
        &[
            Success(t(0)),
            Signal::PipelineStopped(t(10), "Watchdog".into()),
        ],
    );
    assert_eq!(s.state, State::Down);
    assert_eq!(
        s.down_reason,
        Some(DownReason::PipelineStopped {
            alert: "Watchdog".into()
        })
    );
    assert_eq!(s.last_fail_at, Some(t(10)));
    assert_eq!(s.pings, 2);
    assert_eq!(count(&all, is_alert), 1);
    assert_eq!(last[0], tr(State::Up, State::Down, 10));
    assert_eq!(Signal::PipelineStopped(t(3), "W".into()).at(), t(3));
}

#[test]
fn records_written_by_the_previous_state_machine_step_sanely() {
    // It kept the deadline while Paused: resuming to New must drop it.
    let paused = MonitorState {
        deadline: Some(t(3600)),
        last_ping_at: Some(t(0)),
        ..MonitorState::new_paused(t(10))
    };
    let (s, e) = apply(&HOUR, &paused, &Resume(t(20)));
    assert_eq!(
        (s.state, s.deadline, e),
        (State::New, None, vec![tr(State::Paused, State::New, 20)])
    );
    assert_eq!(next_wakeup(&HOUR, &s), None);
    // It could leave Up with an incident open: the next ping sends the recovery.
    let up = MonitorState {
        state: State::Up,
        deadline: Some(t(3600)),
        last_ping_at: Some(t(0)),
        incident_open: true,
        ..MonitorState::new(t(0))
    };
    let (s, e) = apply(&HOUR, &up, &Success(t(100)));
    assert_eq!(e, vec![recovery(100)]);
    assert!(!s.incident_open);
}

#[test]
fn counts_pings_and_alert_times() {
    let (s, _, _) = run(
        &HOUR,
        &[
            Success(t(0)),
            Start(t(1)),
            Fail(t(2), Some(4)),
            Pause(t(3)),
            Success(t(4)),
            Tick(t(5)),
        ],
    );
    assert_eq!(
        s.pings, 4,
        "success, start, fail and the paused ping; not pause or tick"
    );
    assert_eq!(s.last_alert_at, Some(t(2)));
    assert!(!s.incident_open, "paused: closed");
}

#[test]
fn tickstem_status_mapping() {
    assert_eq!(State::Paused.tickstem_status(), "paused");
    assert_eq!(State::Down.tickstem_status(), "failing");
    for s in [State::New, State::Up, State::Started, State::Late] {
        assert_eq!(s.tickstem_status(), "active");
    }
    for s in State::ALL {
        assert_eq!(s.to_string(), s.as_str());
    }
}

#[test]
fn timing_validation() {
    assert_eq!(Timing::new(secs(60), secs(0)), Ok(MINUTE));
    assert_eq!(
        Timing::new(secs(0), secs(0)),
        Err(TimingError::NonPositiveInterval(secs(0)))
    );
    assert_eq!(
        Timing::new(secs(60), secs(-1)),
        Err(TimingError::NegativeGrace(secs(-1)))
    );
    assert_eq!(Timing::from_secs(3600, 300), HOUR);
    assert_eq!(Timing::from_secs(u64::MAX, 0).interval, secs(i64::MAX));
    assert_eq!(HOUR.run_allowance(), secs(300));
    assert_eq!(MINUTE.run_allowance(), secs(60));
    // A negative grace given as a literal is treated as zero, not as "Down before Late".
    let odd = Timing::every(secs(60), secs(-30));
    let (_, _, last) = run(&odd, &[Success(t(0)), Tick(t(59))]);
    assert_eq!(last, vec![]);
}

#[test]
fn signal_helpers() {
    assert_eq!(Signal::from_exit_code(t(1), 0), Success(t(1)));
    assert_eq!(Signal::from_exit_code(t(1), 7), Fail(t(1), Some(7)));
    for sig in [
        Success(t(1)),
        Start(t(1)),
        Fail(t(1), None),
        Pause(t(1)),
        Resume(t(1)),
        Tick(t(1)),
        Retimed(t(1)),
    ] {
        assert_eq!(sig.at(), t(1));
    }
}

#[test]
fn state_round_trips_through_json_in_a_stable_shape() {
    let (s, _, _) = run(&HOUR, &[Success(t(0)), Start(t(1)), Fail(t(2), Some(4))]);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["state"], "Down");
    assert_eq!(json["down_reason"]["kind"], "failed");
    assert_eq!(json["down_reason"]["exit_code"], 4);
    assert_eq!(json["incident_open"], true);
    assert_eq!(serde_json::from_value::<MonitorState>(json).unwrap(), s);
    // Optional fields may be missing (older records).
    let minimal = serde_json::json!({"state": "New", "since": "2023-11-14T22:13:20Z"});
    assert_eq!(
        serde_json::from_value::<MonitorState>(minimal).unwrap(),
        MonitorState::new(t(0))
    );
}

#[test]
fn down_reasons_are_stored_in_a_stable_shape() {
    let reason = DownReason::JobFailed {
        job: "nightly-1".into(),
        reason: JobFailure::BackoffLimitExceeded,
        exit_code: Some(3),
    };
    let json = serde_json::to_value(&reason).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"kind": "job_failed", "job": "nightly-1", "reason": "BackoffLimitExceeded", "exit_code": 3})
    );
    assert_eq!(serde_json::from_value::<DownReason>(json).unwrap(), reason);
    for (r, kind) in [
        (DownReason::NotScheduled, "not_scheduled"),
        (DownReason::RunTimeout, "run_timeout"),
        (
            DownReason::CompletedWithoutPing { job: "j".into() },
            "completed_without_ping",
        ),
        (DownReason::JobTooLong { job: "j".into() }, "job_too_long"),
    ] {
        assert_eq!(serde_json::to_value(&r).unwrap()["kind"], kind);
    }
}

#[test]
fn down_only_at_the_failure_threshold_and_a_success_resets_the_count() {
    let timing = Timing {
        failure_threshold: 2,
        ..HOUR
    };
    let (s, all, _) = run(&timing, &[Success(t(0)), Fail(t(10), Some(1))]);
    assert_eq!((s.state, s.failures), (State::Up, 1));
    assert_eq!(count(&all, is_alert), 0);
    // The failed run counts as its window's run: the next deadline follows from it.
    assert_eq!(s.deadline, Some(t(3610)));
    let (s, _, last) = run(
        &timing,
        &[Success(t(0)), Fail(t(10), Some(1)), Fail(t(20), Some(2))],
    );
    assert_eq!(s.state, State::Down);
    assert_eq!(
        last,
        vec![tr(State::Up, State::Down, 20), alert(failed(Some(2)), 20)]
    );
    let (s, _, _) = run(
        &timing,
        &[
            Success(t(0)),
            Fail(t(10), None),
            Success(t(15)),
            Fail(t(20), None),
        ],
    );
    assert_eq!((s.state, s.failures), (State::Up, 1));
}

#[test]
fn missed_deadlines_count_one_window_each_even_in_one_late_tick() {
    let timing = Timing {
        failure_threshold: 2,
        ..HOUR
    };
    // Late at 3600; the first miss at 3900 is absorbed and moves the deadline on.
    let (s, _, last) = run(&timing, &[Success(t(0)), Tick(t(3600)), Tick(t(3900))]);
    assert_eq!(
        (s.state, s.failures, s.deadline),
        (State::Up, 1, Some(t(7200)))
    );
    assert_eq!(last, vec![tr(State::Late, State::Up, 3900)]);
    let (s, all, _) = run(&timing, &[Success(t(0)), Tick(t(3900)), Tick(t(7500))]);
    assert_eq!(s.state, State::Down);
    assert_eq!(count(&all, is_alert), 1);
    // One tick long after both misses: one transition, Down when the second was due.
    let (s, _, last) = run(&timing, &[Success(t(0)), Tick(t(8000))]);
    assert_eq!(s.state, State::Down);
    assert_eq!(
        last,
        vec![
            tr(State::Up, State::Down, 7500),
            alert(DownReason::Missed, 7500)
        ]
    );
}

#[test]
fn a_deadline_inside_maintenance_gets_a_fresh_one_after_it() {
    // t(0) is 22:13:20 UTC; the window runs 23:00 to 00:00 (t(2800) to t(6400)).
    let windows = [MaintenanceWindow {
        schedule: "0 23 * * *".into(),
        duration: crate::core::duration::SpecDuration::from_secs(3600),
        time_zone: None,
    }];
    let timing = Timing {
        maintenance: &windows,
        ..HOUR
    };
    let (s, all, _) = run(&timing, &[Success(t(0)), Tick(t(3600)), Tick(t(3900))]);
    assert_eq!(s.state, State::Up);
    assert_eq!(s.deadline, Some(t(10_000)));
    assert_eq!(count(&all, is_alert), 0);
    // Its end finds nothing overdue; the fresh deadline counts as usual.
    let (s, _, _) = run(&timing, &[Success(t(0)), Tick(t(3600)), Tick(t(6400))]);
    assert_eq!(s.state, State::Up);
    let (s, all, _) = run(
        &timing,
        &[Success(t(0)), Tick(t(3600)), Tick(t(6400)), Tick(t(10_300))],
    );
    assert_eq!(s.state, State::Down);
    assert_eq!(count(&all, is_alert), 1);
    // Late when the window opens: back to Up with the fresh deadline.
    let (s, _, last) = run(&timing, &[Success(t(-1000)), Tick(t(2600)), Tick(t(2900))]);
    assert_eq!(s.state, State::Up);
    assert_eq!(last, vec![tr(State::Late, State::Up, 2900)]);
    // A run deadline inside the window is judged when it ends.
    let (s, _, _) = run(&timing, &[Success(t(0)), Start(t(2700))]);
    assert_eq!(next_wakeup(&timing, &s), Some(t(6400)));
    let (s, _, _) = run(&timing, &[Success(t(0)), Start(t(2700)), Tick(t(3100))]);
    assert_eq!(s.state, State::Started);
}
