//! Monitors of a watched CronJob: a Job's start, success and failure, a window with no Job, runs too long or overlapping, and pings tied to Jobs.

use super::*;

/// `*/10 * * * *` with two minutes' grace, Jobs watched.
fn watched<'a>(schedule: &'a Schedule, require_ping: bool) -> Timing<'a> {
    Timing {
        jobs: Some(JobRules { require_ping }),
        ..Timing::from_secs(600, 120).with_schedule(Some(schedule))
    }
}

fn job(name: &str, started: &str, outcome: JobOutcome) -> Signal {
    Signal::Job(JobSignal {
        name: name.into(),
        started_at: at(started),
        outcome,
        run_ids: vec![name.into()],
    })
}

fn job_failed(when: &str, reason: JobFailure, exit_code: Option<u8>) -> JobOutcome {
    JobOutcome::Failed {
        at: at(when),
        reason,
        exit_code,
    }
}

#[test]
fn jobs_start_succeed_and_fail_like_pings() {
    use State::*;
    let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
    let timing = watched(&every10, false);
    let new = MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false);
    // Created at 10:00:07 for the 10:00 run, done a minute later.
    let (s, e) = steps(
        &timing,
        new.clone(),
        &[job(
            "nightly-1",
            "2026-01-05T10:00:07Z",
            JobOutcome::Running,
        )],
    );
    assert_eq!(
        (s.state, s.run_started_at),
        (Started, Some(at("2026-01-05T10:00:07Z")))
    );
    assert_eq!(e, vec![trans(New, Started, "2026-01-05T10:00:07Z")]);
    let done = job(
        "nightly-1",
        "2026-01-05T10:00:07Z",
        JobOutcome::Succeeded(at("2026-01-05T10:01:07Z")),
    );
    let (up, e) = apply(&timing, &s, &done);
    assert_eq!(
        (up.state, up.deadline),
        (Up, Some(at("2026-01-05T10:10:00Z")))
    );
    assert_eq!(e, vec![trans(Started, Up, "2026-01-05T10:01:07Z"), ran(60)]);
    assert_eq!(up.pings, 2);
    // The same evidence again (a re-list, a restart) changes nothing.
    assert_eq!(apply(&timing, &up, &done), (up.clone(), vec![]));
    let (again, e) = steps(
        &timing,
        up.clone(),
        &[job(
            "nightly-1",
            "2026-01-05T10:00:07Z",
            JobOutcome::Running,
        )],
    );
    assert_eq!((again, e), (up.clone(), vec![]));
    // A failed Job: Down with its reason and exit code.
    let failure = job_failed(
        "2026-01-05T10:10:40Z",
        JobFailure::BackoffLimitExceeded,
        Some(3),
    );
    let (down, e) = steps(
        &timing,
        up.clone(),
        &[job("nightly-2", "2026-01-05T10:10:05Z", failure)],
    );
    let reason = DownReason::JobFailed {
        job: "nightly-2".into(),
        reason: JobFailure::BackoffLimitExceeded,
        exit_code: Some(3),
    };
    assert_eq!(down.down_reason, Some(reason.clone()));
    assert_eq!(
        e,
        vec![
            trans(Up, Down, "2026-01-05T10:10:40Z"),
            ran(35),
            Effect::Alert {
                reason,
                at: at("2026-01-05T10:10:40Z")
            }
        ]
    );
    // The next Job succeeds: Up, one recovery.
    let (s, e) = steps(
        &timing,
        down,
        &[job(
            "nightly-3",
            "2026-01-05T10:20:04Z",
            JobOutcome::Succeeded(at("2026-01-05T10:20:30Z")),
        )],
    );
    assert_eq!(s.state, Up);
    assert_eq!(count(&e, is_recovery), 1);
}

#[test]
fn no_job_in_the_window_is_not_scheduled() {
    use State::*;
    let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
    let timing = watched(&every10, false);
    let (s, e) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
        &[
            Tick(at("2026-01-05T10:00:00Z")),
            Tick(at("2026-01-05T10:02:00Z")),
        ],
    );
    assert_eq!(
        (s.state, s.down_reason.clone()),
        (Down, Some(DownReason::NotScheduled))
    );
    assert_eq!(count(&e, is_alert), 1);
    // A Job that starts late in the window (controller lag) is in time.
    let (s, _) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
        &[
            Tick(at("2026-01-05T10:00:00Z")),
            job("j", "2026-01-05T10:01:50Z", JobOutcome::Running),
            Tick(at("2026-01-05T10:02:00Z")),
        ],
    );
    assert_eq!(s.state, Started);
}

#[test]
fn jobs_running_too_long_and_overlapping() {
    use State::*;
    let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
    let capped = Timing {
        max_duration: Some(secs(300)),
        ..watched(&every10, false)
    };
    let (s, e) = steps(
        &capped,
        MonitorState::created(&capped, at("2026-01-05T09:55:00Z"), false),
        &[
            job("a", "2026-01-05T10:00:05Z", JobOutcome::Running),
            Tick(at("2026-01-05T10:05:05Z")),
        ],
    );
    assert_eq!(
        s.down_reason,
        Some(DownReason::JobTooLong { job: "a".into() })
    );
    assert_eq!(
        e.last(),
        Some(&Effect::Alert {
            reason: DownReason::JobTooLong { job: "a".into() },
            at: at("2026-01-05T10:05:05Z")
        })
    );
    // Without maxDuration, a Job may run until the next run's window has passed.
    let timing = watched(&every10, false);
    let (s, _) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
        &[job("a", "2026-01-05T10:00:05Z", JobOutcome::Running)],
    );
    assert_eq!(next_wakeup(&timing, &s), Some(at("2026-01-05T10:12:00Z")));
    // Overlap: b starts while a runs; a's success is recorded, b's run goes on.
    let (s, e) = steps(
        &timing,
        s,
        &[
            job("b", "2026-01-05T10:10:05Z", JobOutcome::Running),
            job(
                "a",
                "2026-01-05T10:00:05Z",
                JobOutcome::Succeeded(at("2026-01-05T10:11:05Z")),
            ),
        ],
    );
    assert_eq!(
        (s.state, s.run_started_at),
        (Started, Some(at("2026-01-05T10:10:05Z")))
    );
    assert_eq!(s.last_ping_at, Some(at("2026-01-05T10:11:05Z")));
    assert_eq!(e.last(), Some(&ran(660)));
    // A failure of the older Job still counts.
    let failure = job_failed("2026-01-05T10:11:05Z", JobFailure::DeadlineExceeded, None);
    let (s2, _) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
        &[
            job("a", "2026-01-05T10:00:05Z", JobOutcome::Running),
            job("b", "2026-01-05T10:10:05Z", JobOutcome::Running),
            job("a", "2026-01-05T10:00:05Z", failure),
        ],
    );
    assert_eq!(s2.state, Down);
    assert_eq!(
        s2.run_started_at,
        Some(at("2026-01-05T10:10:05Z")),
        "b is still tracked"
    );
    // A Job first seen finished (it ran while the operator was away) counts as a run.
    let (s3, e) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false),
        &[job(
            "c",
            "2026-01-05T10:00:05Z",
            JobOutcome::Succeeded(at("2026-01-05T10:00:35Z")),
        )],
    );
    assert_eq!(s3.state, Up);
    assert_eq!(e, vec![trans(New, Up, "2026-01-05T10:00:35Z"), ran(30)]);
}

#[test]
fn require_ping_ties_pings_to_jobs() {
    use State::*;
    let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
    let timing = watched(&every10, true);
    let created = MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), false);
    let run = |signals: &[Signal]| steps(&timing, created.clone(), signals).0;
    let start = job("a", "2026-01-05T10:00:05Z", JobOutcome::Running);
    let end = job(
        "a",
        "2026-01-05T10:00:05Z",
        JobOutcome::Succeeded(at("2026-01-05T10:01:00Z")),
    );
    // No ping: Down, "completed without a ping".
    let s = run(&[start.clone(), end.clone()]);
    assert_eq!(
        (s.state, s.down_reason),
        (
            Down,
            Some(DownReason::CompletedWithoutPing { job: "a".into() })
        )
    );
    assert_eq!(s.last_ping_at, None, "the run proved nothing");
    // An untagged ping during the run: Up.
    let s = run(&[
        start.clone(),
        Success(at("2026-01-05T10:00:58Z")),
        end.clone(),
    ]);
    assert_eq!(s.state, Up);
    // A ping tagged with this Job's pod: Up. Tagged with another Job's: not this one's.
    let s = run(&[
        start.clone(),
        SuccessFor(at("2026-01-05T10:00:58Z"), "a-x7k2p".into()),
        end.clone(),
    ]);
    assert_eq!(s.state, Up);
    let s = run(&[
        start.clone(),
        SuccessFor(at("2026-01-05T10:00:58Z"), "b-x7k2p".into()),
        end.clone(),
    ]);
    assert_eq!(s.state, Down);
    // A ping long before the run does not count.
    let s = run(&[Success(at("2026-01-05T09:56:00Z")), start, end]);
    assert_eq!(s.state, Down);
}

#[test]
fn jobs_while_paused_are_recorded_and_judge_the_resume() {
    use State::*;
    let every10 = Schedule::parse_as("*/10 * * * *", None, Dialect::CronJob).unwrap();
    let timing = watched(&every10, false);
    let (s, e) = steps(
        &timing,
        MonitorState::created(&timing, at("2026-01-05T09:55:00Z"), true),
        &[
            job("a", "2026-01-05T10:00:05Z", JobOutcome::Running),
            job(
                "a",
                "2026-01-05T10:00:05Z",
                job_failed(
                    "2026-01-05T10:00:15Z",
                    JobFailure::BackoffLimitExceeded,
                    Some(1),
                ),
            ),
            job(
                "b",
                "2026-01-05T10:10:05Z",
                JobOutcome::Succeeded(at("2026-01-05T10:10:15Z")),
            ),
        ],
    );
    assert_eq!((s.state, s.pings), (Paused, 3));
    assert_eq!(
        e,
        vec![ran(10), ran(10)],
        "durations are reported, nothing else"
    );
    let (s, _) = apply(&timing, &s, &Resume(at("2026-01-05T10:12:00Z")));
    assert_eq!(
        (s.state, s.deadline),
        (Up, Some(at("2026-01-05T10:20:00Z")))
    );
}
