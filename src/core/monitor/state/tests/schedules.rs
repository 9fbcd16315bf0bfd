//! Monitors on a cron schedule: armed from creation, resumed, retimed, and across daylight saving time.

use super::*;

#[test]
fn a_scheduled_monitor_expects_each_run_from_its_creation() {
    use State::*;
    let daily = Schedule::parse("0 2 * * *", None).unwrap();
    let timing = Timing::from_secs(86_400, 300).with_schedule(Some(&daily));
    let new = MonitorState::created(&timing, at("2026-01-05T01:00:00Z"), false);
    assert_eq!(
        (new.state, new.deadline),
        (New, Some(at("2026-01-05T02:00:00Z")))
    );
    assert_eq!(new.next_expected_at(), Some(at("2026-01-05T02:00:00Z")));
    assert_eq!(next_wakeup(&timing, &new), Some(at("2026-01-05T02:00:00Z")));
    // Due at the scheduled time, Down when grace has passed with no ping.
    let (late, e) = apply(&timing, &new, &Tick(at("2026-01-05T02:00:00Z")));
    assert_eq!(e, vec![trans(New, Late, "2026-01-05T02:00:00Z")]);
    let (down, e) = apply(&timing, &late, &Tick(at("2026-01-05T02:05:00Z")));
    assert_eq!(down.down_reason, Some(DownReason::Missed));
    assert_eq!(
        e,
        vec![
            trans(Late, Down, "2026-01-05T02:05:00Z"),
            Effect::Alert {
                reason: DownReason::Missed,
                at: at("2026-01-05T02:05:00Z")
            }
        ]
    );
    // Three more runs missed by the morning of the fourth day.
    assert_eq!(
        consecutive_misses(&timing, &down, at("2026-01-08T03:00:00Z")),
        3
    );
    // A ping in the window: Up, next due at tomorrow's run.
    let (up, _) = apply(&timing, &late, &Success(at("2026-01-05T02:03:00Z")));
    assert_eq!(
        (up.state, up.deadline),
        (Up, Some(at("2026-01-06T02:00:00Z")))
    );
    // A ping before the run (a manual run at 01:30) does not stand for the 02:00 run.
    let (early, _) = apply(&timing, &new, &Success(at("2026-01-05T01:30:00Z")));
    assert_eq!(
        (early.state, early.deadline),
        (Up, Some(at("2026-01-05T02:00:00Z")))
    );
    // A ping far after a missed run recovers, due at the next run after it.
    let (back, e) = apply(&timing, &down, &Success(at("2026-01-07T12:00:00Z")));
    assert_eq!(back.deadline, Some(at("2026-01-08T02:00:00Z")));
    assert!(e.contains(&Effect::Recovery {
        at: at("2026-01-07T12:00:00Z")
    }));
    // Created paused: nothing armed.
    let paused = MonitorState::created(&timing, at("2026-01-05T01:00:00Z"), true);
    assert_eq!((paused.state, paused.deadline), (Paused, None));
}

#[test]
fn scheduled_runs_and_resumes() {
    use State::*;
    let hourly = Schedule::parse("@hourly", None).unwrap();
    let timing = Timing::from_secs(3600, 60).with_schedule(Some(&hourly));
    let start = MonitorState::created(&timing, at("2026-01-05T09:30:00Z"), false);
    // A run may last until the next scheduled run plus grace.
    let (started, _) = steps(&timing, start.clone(), &[Start(at("2026-01-05T10:00:10Z"))]);
    assert_eq!(
        next_wakeup(&timing, &started),
        Some(at("2026-01-05T11:01:00Z"))
    );
    let (s, _) = apply(&timing, &started, &Tick(at("2026-01-05T11:01:00Z")));
    assert_eq!(
        (s.state, s.down_reason),
        (Down, Some(DownReason::RunTimeout))
    );
    // maxDuration limits it instead.
    let capped = Timing {
        max_duration: Some(secs(600)),
        ..timing
    };
    assert_eq!(
        next_wakeup(&capped, &started),
        Some(at("2026-01-05T10:10:10Z"))
    );
    // Resumed without a ping while paused: New, armed for the next run after the resume.
    let (s, _) = steps(
        &timing,
        start,
        &[
            Pause(at("2026-01-05T09:40:00Z")),
            Resume(at("2026-01-05T13:20:00Z")),
        ],
    );
    assert_eq!(
        (s.state, s.deadline),
        (New, Some(at("2026-01-05T14:00:00Z")))
    );
}

#[test]
fn a_new_schedule_is_not_applied_to_the_past() {
    use State::*;
    let two = Schedule::parse("0 2 * * *", None).unwrap();
    let three = Schedule::parse("0 3 * * *", None).unwrap();
    let at_two = Timing::from_secs(86_400, 300).with_schedule(Some(&two));
    let at_three = Timing::from_secs(86_400, 300).with_schedule(Some(&three));
    let (up, _) = steps(
        &at_two,
        MonitorState::created(&at_two, at("2026-01-04T00:00:00Z"), false),
        &[Success(at("2026-01-04T02:01:00Z"))],
    );
    // Moved to 03:00 at 02:30 the next day: due at today's 03:00, not yesterday's.
    let (s, e) = apply(&at_three, &up, &Retimed(at("2026-01-05T02:30:00Z")));
    assert_eq!(
        (s.state, s.deadline, e),
        (Up, Some(at("2026-01-05T03:00:00Z")), vec![])
    );
    // Only the grace changed: the deadline stays, and is judged with the new grace.
    let shorter = Timing {
        grace: secs(0),
        ..at_two
    };
    let (late, _) = apply(&at_two, &up, &Tick(at("2026-01-05T02:00:00Z")));
    let (s, _) = apply(&shorter, &late, &Retimed(at("2026-01-05T02:01:00Z")));
    assert_eq!(
        (s.state, s.deadline),
        (Down, Some(at("2026-01-05T02:00:00Z")))
    );
    // From an interval to a schedule while New: armed from now.
    let new = MonitorState::new(at("2026-01-01T00:00:00Z"));
    let (s, e) = apply(&at_two, &new, &Retimed(at("2026-01-05T12:00:00Z")));
    assert_eq!(
        (s.state, s.deadline, e),
        (New, Some(at("2026-01-06T02:00:00Z")), vec![])
    );
    // From a schedule to an interval before any ping: back to waiting for one.
    let (late_new, _) = apply(
        &at_two,
        &MonitorState::created(&at_two, at("2026-01-05T01:00:00Z"), false),
        &Tick(at("2026-01-05T02:01:00Z")),
    );
    assert_eq!(late_new.state, Late);
    let (s, e) = apply(&HOUR, &late_new, &Retimed(at("2026-01-05T02:02:00Z")));
    assert_eq!((s.state, s.deadline), (New, None));
    assert_eq!(e, vec![trans(Late, New, "2026-01-05T02:02:00Z")]);
}

#[test]
fn daylight_saving_days_in_amsterdam() {
    // A cron user's 02:30 runs at 03:00 CEST on the spring-forward day...
    let cron = Schedule::parse("30 2 * * *", Some("Europe/Amsterdam")).unwrap();
    let timing = Timing::from_secs(86_400, 600).with_schedule(Some(&cron));
    let (s, _) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-03-28T00:00:00Z"), false),
        &[Success(at("2026-03-28T01:31:00Z"))],
    );
    assert_eq!(s.deadline, Some(at("2026-03-29T01:00:00Z")));
    // ...but the CronJob controller creates no Job that day: a CronJob's monitor
    // expects none, so no false "not scheduled".
    let k8s = Schedule::parse_as("30 2 * * *", Some("Europe/Amsterdam"), Dialect::CronJob).unwrap();
    let watched = Timing {
        jobs: Some(JobRules::default()),
        ..Timing::from_secs(86_400, 600).with_schedule(Some(&k8s))
    };
    let (s, _) = steps(
        &watched,
        MonitorState::created(&watched, at("2026-03-28T00:00:00Z"), false),
        &[
            Success(at("2026-03-28T01:31:00Z")),
            Tick(at("2026-03-29T12:00:00Z")),
        ],
    );
    assert_eq!(
        (s.state, s.deadline),
        (State::Up, Some(at("2026-03-30T00:30:00Z")))
    );
    // Fall back: one run expected, on the first pass; the next is the following day.
    let (s, _) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-10-24T12:00:00Z"), false),
        &[
            Success(at("2026-10-25T00:31:00Z")),
            Tick(at("2026-10-25T01:45:00Z")),
        ],
    );
    assert_eq!(
        (s.state, s.deadline),
        (State::Up, Some(at("2026-10-26T01:30:00Z")))
    );
}
