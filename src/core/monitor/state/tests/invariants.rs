//! Thousands of random signal sequences against the invariants the module documentation lists.

use super::*;

/// A small deterministic generator, so the invariants below see thousands of sequences
/// without a dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// A random Job signal: one of a few names, started a little before `at`, and
/// running, succeeded or failed.
fn random_job(rng: &mut Lcg, at: Timestamp) -> Signal {
    let n = rng.next(4);
    let started_at = at
        .checked_sub(secs(i64::try_from(rng.next(120)).unwrap()))
        .unwrap();
    let outcome = match rng.next(3) {
        0 => JobOutcome::Running,
        1 => JobOutcome::Succeeded(at),
        _ => JobOutcome::Failed {
            at,
            reason: JobFailure::BackoffLimitExceeded,
            exit_code: Some(3),
        },
    };
    Signal::Job(JobSignal {
        name: format!("job-{n}"),
        started_at,
        outcome,
        run_ids: vec![format!("job-{n}")],
    })
}

#[test]
fn invariants_hold_for_random_sequences() {
    let minutely = Schedule::parse("* * * * *", None).unwrap();
    let five = Schedule::parse("*/5 * * * *", Some("Europe/Amsterdam")).unwrap();
    let jobs = Some(JobRules { require_ping: true });
    // A window every 20 minutes for 5 minutes, from t(0) on.
    let windows = [MaintenanceWindow {
        schedule: "*/20 * * * *".into(),
        duration: crate::core::duration::SpecDuration::from_secs(300),
        time_zone: None,
    }];
    let timings = [
        Timing {
            failure_threshold: 3,
            ..Timing::from_secs(60, 10)
        },
        Timing {
            failure_threshold: 2,
            jobs,
            ..Timing::from_secs(60, 10).with_schedule(Some(&minutely))
        },
        Timing {
            maintenance: &windows,
            ..Timing::from_secs(600, 60)
        },
        Timing {
            maintenance: &windows,
            failure_threshold: 2,
            ..Timing::from_secs(300, 30).with_schedule(Some(&five))
        },
        HOUR,
        MINUTE,
        Timing::from_secs(10, 5),
        Timing::from_secs(60, 10).with_schedule(Some(&minutely)),
        Timing {
            jobs,
            ..Timing::from_secs(300, 0).with_schedule(Some(&five))
        },
        Timing {
            jobs: Some(JobRules::default()),
            max_duration: Some(secs(30)),
            ..Timing::from_secs(60, 20).with_schedule(Some(&minutely))
        },
        Timing {
            jobs,
            ..Timing::from_secs(120, 30)
        },
    ];
    let mut rng = Lcg(42);
    for round in 0..4200 {
        let timing = timings[round % timings.len()];
        let mut s = MonitorState::created(&timing, t(0), false);
        let mut now = 0i64;
        let mut alerts = 0usize;
        let mut recoveries = 0usize;
        for _ in 0..40 {
            // Mostly forward in time, sometimes a stale timestamp.
            now += i64::try_from(rng.next(400)).unwrap();
            let at = t(now - i64::try_from(rng.next(4) * rng.next(30)).unwrap());
            // Monitoring stops (removed, suspended): an open incident closes, once; a
            // record kept and defined again alerts afresh while still Down. The
            // sequence then goes on with a monitor defined again.
            if rng.next(40) == 0 {
                let (stopped, effect) = stop(&s, t(now));
                let ctx = format!("stop on {s:?} gave {effect:?}");
                assert_eq!(effect.is_some(), s.incident_open, "{ctx}");
                assert!(!stopped.incident_open, "{ctx}");
                assert_eq!(stopped.state, s.state, "{ctx}");
                assert_eq!(stop(&stopped, t(now)).1, None, "{ctx}");
                recoveries += usize::from(effect.is_some());
                let (again, e) = apply(&timing, &stopped, &Retimed(t(now)));
                if again.state == State::Down {
                    assert!(again.incident_open, "{ctx} then {e:?}");
                }
                alerts += count(&e, is_alert);
                recoveries += count(&e, is_recovery) + count(&e, is_closed);
                s = again;
                continue;
            }
            let sig = match rng.next(12) {
                0 => Success(at),
                1 => Start(at),
                2 => Fail(at, Some(u8::try_from(rng.next(256)).unwrap())),
                3 => Fail(at, None),
                4 => Pause(at),
                5 => Resume(at),
                6 => Retimed(at),
                7 => SuccessFor(at, format!("job-{}", rng.next(4))),
                8 => random_job(&mut rng, at),
                9 => Signal::PipelineStopped(at, "Watchdog".into()),
                _ => Tick(t(now)),
            };
            let before = s.clone();
            let (next, effects) = apply(&timing, &s, &sig);
            let ctx = format!("{sig:?} on {before:?} gave {effects:?}");
            // One transition at most, at the new `since`, which never decreases.
            let transitions: Vec<_> = effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Transition { from, to, at } => Some((*from, *to, *at)),
                    _ => None,
                })
                .collect();
            assert!(next.since >= before.since, "{ctx}");
            match transitions.as_slice() {
                [] => assert_eq!(next.state, before.state, "{ctx}"),
                [(from, to, at)] => {
                    assert_eq!(
                        (*from, *to, *at),
                        (before.state, next.state, next.since),
                        "{ctx}"
                    );
                    assert_ne!(from, to, "{ctx}");
                }
                _ => panic!("several transitions: {ctx}"),
            }
            // Alerts only open an episode, recoveries (or the closing of a pause) only
            // close one.
            let a = count(&effects, is_alert);
            let c = count(&effects, is_closed);
            let r = count(&effects, is_recovery);
            assert!(a + r + c <= 1, "{ctx}");
            if c == 1 {
                assert!(
                    before.incident_open && !next.incident_open && next.state == State::Paused,
                    "{ctx}"
                );
            }
            if a == 1 {
                assert!(
                    !before.incident_open && next.incident_open && next.state == State::Down,
                    "{ctx}"
                );
            }
            if r == 1 {
                assert!(
                    before.incident_open && !next.incident_open && next.state == State::Up,
                    "{ctx}"
                );
            }
            alerts += a;
            recoveries += r + c;
            assert!(alerts == recoveries || alerts == recoveries + 1, "{ctx}");
            assert_eq!(next.incident_open, alerts > recoveries, "{ctx}");
            // Shape of the state.
            assert!(!(next.incident_open && next.state == State::Up), "{ctx}");
            assert_eq!(
                next.down_reason.is_some(),
                next.state == State::Down,
                "{ctx}"
            );
            assert!(
                next.run_started_at.is_none() || matches!(next.state, State::Started | State::Down),
                "{ctx}"
            );
            if next.state == State::Started {
                assert!(next.run_started_at.is_some(), "{ctx}");
            }
            if next.state == State::Paused {
                assert_eq!(next.deadline, None, "{ctx}");
                assert_eq!(next.run_started_at, None, "{ctx}");
            }
            // Absorbed failures and maintenance move deadlines past the last ping's.
            let moved_on = timing.failure_threshold > 1 || !timing.maintenance.is_empty();
            match timing.schedule {
                None => {
                    if next.state == State::New {
                        assert_eq!(next.deadline, None, "{ctx}");
                    }
                    if let (Some(d), Some(p)) = (next.deadline, next.last_ping_at) {
                        let from_ping = p.checked_add(timing.interval).unwrap();
                        if moved_on {
                            assert!(d >= from_ping, "{ctx}");
                        } else {
                            assert_eq!(d, from_ping, "{ctx}");
                        }
                    }
                }
                Some(schedule) => {
                    if next.state != State::Paused {
                        let d = next.deadline.expect(&ctx);
                        assert!(schedule.is_occurrence(d), "{ctx}");
                    }
                    if let (State::Up, Some(p)) = (next.state, next.last_ping_at) {
                        if moved_on {
                            assert!(next.deadline >= schedule.next_after(p), "{ctx}");
                        } else {
                            assert_eq!(next.deadline, schedule.next_after(p), "{ctx}");
                        }
                    }
                }
            }
            // The same signal again: a Job is counted once.
            if matches!(sig, Signal::Job(_)) {
                let (again, e) = apply(&timing, &next, &sig);
                assert_eq!((&again, e.as_slice()), (&next, &[][..]), "{ctx}");
            }
            // Failures below the threshold are counted, never more than it.
            assert!(
                next.failures <= timing.failure_threshold.max(1) || next.state == State::Down,
                "{ctx}"
            );
            if next.failures > 0 && next.state != State::Down {
                assert!(next.failures < timing.failure_threshold, "{ctx}");
            }
            // Inside a maintenance window a tick may move a deadline at any time (it
            // has no wakeup of its own), so the wakeup rules below are for the rest;
            // ticks stay idempotent.
            if !timing.maintenance.is_empty() {
                let (once, _) = apply(&timing, &next, &Tick(t(now)));
                let (twice, e) = apply(&timing, &once, &Tick(t(now)));
                assert_eq!((&twice, e.as_slice()), (&once, &[][..]), "{ctx}");
                s = next;
                continue;
            }
            // Ticks: idempotent, and they change something exactly from next_wakeup on.
            let (again, e) = apply(&timing, &next, &Tick(next.since));
            if next_wakeup(&timing, &next).is_none_or(|w| w > next.since) {
                assert_eq!((&again, e.as_slice()), (&next, &[][..]), "{ctx}");
            }
            if let Some(w) = next_wakeup(&timing, &next) {
                let just_before = w.checked_sub(SignedDuration::from_nanos(1)).unwrap();
                if just_before >= next.since {
                    let (same, e) = apply(&timing, &next, &Tick(just_before));
                    assert_eq!((&same, e.as_slice()), (&next, &[][..]), "{ctx}");
                }
                let (moved, e) = apply(&timing, &next, &Tick(w));
                assert_ne!(
                    moved.state, next.state,
                    "wakeup at {w} changed nothing: {ctx}"
                );
                let (twice, e2) = apply(&timing, &moved, &Tick(w));
                assert_eq!(
                    (&twice, e2.as_slice()),
                    (&moved, &[][..]),
                    "{ctx} then {e:?}"
                );
            } else {
                let (same, e) = apply(&timing, &next, &Tick(t(now + 10_000_000)));
                assert_eq!(
                    (&same, e.as_slice()),
                    (&next, &[][..]),
                    "no wakeup yet a tick moved: {ctx}"
                );
            }
            s = next;
        }
    }
}
