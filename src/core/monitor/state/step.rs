//! One step of the state machine in progress: how each signal moves the state being
//! built, and the effects it leaves for the engine.

use jiff::{SignedDuration, Timestamp};

use super::{DownReason, Effect, MonitorState, Signal, State, Timing, plus};
use crate::core::monitor::jobs::{self, JobOutcome, JobSignal, Novelty};

/// When a run in progress times out.
pub(super) fn run_deadline(timing: &Timing<'_>, s: &MonitorState) -> Option<Timestamp> {
    s.run_started_at.and_then(|r| timing.run_deadline(r))
}

/// Where a monitor stands at `now` judged only by its deadline, and since when; `None`
/// when nothing is due yet.
pub(super) fn overdue(
    timing: &Timing<'_>,
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> Option<(State, Timestamp)> {
    let deadline = deadline?;
    match plus(deadline, timing.grace_or_zero()) {
        Some(down_at) if down_at <= now => Some((State::Down, down_at)),
        _ if deadline <= now => Some((State::Late, deadline)),
        _ => None,
    }
}

/// One step in progress: the state being built, the state it started from and the effects
/// that are not derived from the final state.
struct Step<'a, 't> {
    timing: &'a Timing<'t>,
    from: State,
    s: MonitorState,
    run_finished: Option<SignedDuration>,
}

impl Step<'_, '_> {
    /// Moves to `to`, which began at `at` (clamped so `since` never decreases).
    fn enter(&mut self, to: State, at: Timestamp) {
        if self.s.state != to {
            self.s.state = to;
            self.s.since = self.s.since.max(at);
        }
        if to != State::Down {
            self.s.down_reason = None;
        }
    }

    /// A failed run or a missed deadline at `at`: Down for `reason` once it is the
    /// `failureThreshold`-th in a row, unless already Down (the first reason of an episode
    /// stays). Below the threshold it is counted and absorbed: the monitor waits for its
    /// next deadline ([`Step::absorb`]). Returns whether it was absorbed.
    fn down(&mut self, reason: DownReason, at: Timestamp) -> bool {
        if self.s.state == State::Down {
            return false;
        }
        self.s.failures = self.s.failures.saturating_add(1);
        if self.s.failures >= self.timing.failure_threshold.max(1) {
            self.enter(State::Down, at);
            self.s.down_reason = Some(reason);
            return false;
        }
        self.absorb(&reason, at);
        true
    }

    /// A failure below the threshold. A missed deadline moves the deadline to the next
    /// one (the next interval or scheduled time after it); a failed or timed-out run
    /// counts as the run of its window, so the next deadline follows from `at` (else the
    /// same window would count again as missed). A run in progress ends.
    fn absorb(&mut self, reason: &DownReason, at: Timestamp) {
        let from = match reason {
            DownReason::Missed | DownReason::NotScheduled => self.s.deadline.unwrap_or(at),
            // A failure reported late never moves the deadline before the last success's.
            _ => self.s.last_ping_at.map_or(at, |p| p.max(at)),
        };
        // An interval monitor that never pinged has no rhythm to move on.
        if self.s.deadline.is_some() || self.timing.schedule.is_some() {
            self.s.deadline = self.timing.deadline_after(from).or(self.s.deadline);
        }
        self.s.run_started_at = None;
        // Paused only while resuming: the monitor is running again.
        if matches!(self.s.state, State::Started | State::Late | State::Paused) {
            let back = if self.s.last_ping_at.is_some() || self.timing.schedule.is_some() {
                State::Up
            } else {
                State::New
            };
            self.enter(back, at);
        }
    }

    /// Ends the run in progress, if any, at `at`.
    fn finish_run(&mut self, at: Timestamp) {
        if let Some(started) = self.s.run_started_at.take() {
            self.run_finished = Some(at.duration_since(started).max(SignedDuration::ZERO));
        }
    }

    /// Applies the time-driven transitions due by `now`, forwards only. Inside a
    /// maintenance window nothing is due: a deadline that falls in it is replaced by a
    /// fresh one after it.
    fn tick(&mut self, now: Timestamp) {
        if let Some(end) = self.timing.maintenance_until(now) {
            return self.maintain(end, now);
        }
        match self.s.state {
            State::New | State::Up | State::Late => self.judge_deadline(now),
            State::Started => {
                if let Some(at) = run_deadline(self.timing, &self.s).filter(|at| *at <= now) {
                    let reason = self.timeout_reason();
                    self.s.run_started_at = None;
                    // Absorbed below the threshold: the new deadline may be due already.
                    if self.down(reason, at) {
                        self.judge_deadline(now);
                    }
                }
            }
            State::Down | State::Paused => {}
        }
    }

    /// Late or Down by the deadline; each miss absorbed below the failure threshold moves
    /// the deadline on, so a tick long after several missed deadlines counts each.
    fn judge_deadline(&mut self, now: Timestamp) {
        for _ in 0..=self.timing.failure_threshold {
            match overdue(self.timing, self.s.deadline, now) {
                Some((State::Down, at)) => {
                    if !self.down(self.timing.miss_reason(), at) {
                        return;
                    }
                }
                Some((State::Late, at)) => {
                    if self.s.state != State::Late {
                        self.enter(State::Late, at);
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    /// Inside a maintenance window that ends at `end`: a monitor whose deadline falls
    /// before the end gets a fresh one after it (and is no longer Late), instead of
    /// alerting the moment the window closes.
    fn maintain(&mut self, end: Timestamp, now: Timestamp) {
        if !matches!(self.s.state, State::New | State::Up | State::Late) {
            return;
        }
        if self.s.deadline.is_some_and(|d| d < end) {
            self.s.deadline = self.timing.deadline_after(end).or(self.s.deadline);
            if self.s.state == State::Late {
                let back = if self.s.last_ping_at.is_some() {
                    State::Up
                } else {
                    State::New
                };
                self.enter(back, now);
            }
        }
    }

    /// A run timed out: a Job's when the run in progress is a remembered Job's.
    fn timeout_reason(&self) -> DownReason {
        self.s
            .run_started_at
            .and_then(|r| jobs::running_since(&self.s.jobs, r))
            .map_or(DownReason::RunTimeout, |j| DownReason::JobTooLong {
                job: j.name.clone(),
            })
    }

    fn success(&mut self, at: Timestamp, rid: Option<&str>) {
        self.s.pings = self.s.pings.saturating_add(1);
        if self.timing.jobs.is_some_and(|j| j.require_ping) {
            jobs::remember_ping(self.s.recent_pings.vec_mut(), at, rid);
        }
        self.succeed(at);
    }

    /// A success, from a ping or a Job: recorded always, applied unless paused.
    fn succeed(&mut self, at: Timestamp) {
        if self.record_success(at) {
            self.finish_run(at);
            self.enter(State::Up, at);
        }
    }

    /// Keeps the latest success and the deadline it sets; false while paused, where it
    /// is only remembered for the resume.
    fn record_success(&mut self, at: Timestamp) -> bool {
        let last = self.s.last_ping_at.map_or(at, |p| p.max(at));
        self.s.last_ping_at = Some(last);
        if self.s.state == State::Paused {
            self.s.pinged_while_paused = true;
            return false;
        }
        self.s.deadline = self.timing.deadline_after(last);
        self.s.failures = 0;
        true
    }

    fn start(&mut self, at: Timestamp) {
        self.s.pings = self.s.pings.saturating_add(1);
        self.begin_run(at);
    }

    fn begin_run(&mut self, at: Timestamp) {
        match self.s.state {
            State::Paused => {}
            // A start proves nothing: the episode stays Down (and "failing") until the run
            // succeeds, but the run is tracked so its end reports a duration.
            State::Down | State::Started => {
                self.s.run_started_at = Some(self.s.run_started_at.map_or(at, |r| r.max(at)));
            }
            State::New | State::Up | State::Late => {
                self.s.run_started_at = Some(at);
                self.enter(State::Started, at);
            }
        }
    }

    fn fail(&mut self, at: Timestamp, exit_code: Option<u8>) {
        self.s.pings = self.s.pings.saturating_add(1);
        self.finish_run(at);
        self.fail_with(at, DownReason::Failed { exit_code });
    }

    /// Alertmanager reported its always-firing `alert` resolved: the alerting pipeline
    /// stopped, a failure with that reason (and no exit code: nobody reported one).
    fn pipeline_stopped(&mut self, at: Timestamp, alert: &str) {
        self.s.pings = self.s.pings.saturating_add(1);
        self.finish_run(at);
        let reason = DownReason::PipelineStopped {
            alert: alert.to_string(),
        };
        self.fail_with(at, reason);
    }

    /// A failure: recorded always, Down unless paused (where no run is tracked to end).
    fn fail_with(&mut self, at: Timestamp, reason: DownReason) {
        self.s.last_fail_at = Some(self.s.last_fail_at.map_or(at, |f| f.max(at)));
        if self.s.state != State::Paused {
            self.down(reason, at);
        }
    }

    /// Evidence from a Job: its start is a start, its end a success or a failure. An end
    /// that belongs to an older run than the one in progress (Jobs that overlap) is
    /// recorded, and a failure still counts, but a success does not end the newer run.
    fn job(&mut self, job: &JobSignal) {
        let novelty = jobs::remember(self.s.jobs.vec_mut(), job);
        if novelty == Novelty::Stale {
            return;
        }
        self.s.pings = self.s.pings.saturating_add(1);
        if novelty == Novelty::New {
            self.begin_run(job.started_at);
        }
        let newer_run = self.s.run_started_at.is_some_and(|r| r > job.started_at);
        match job.outcome {
            JobOutcome::Running => {}
            JobOutcome::Failed {
                at,
                reason,
                exit_code,
            } => {
                let reason = DownReason::JobFailed {
                    job: job.name.clone(),
                    reason,
                    exit_code,
                };
                self.end_job_run(job, newer_run);
                self.fail_with(at, reason);
            }
            JobOutcome::Succeeded(at) => {
                let require_ping = self.timing.jobs.is_some_and(|j| j.require_ping);
                if require_ping && !job.pinged(&self.s.recent_pings) {
                    self.end_job_run(job, newer_run);
                    let reason = DownReason::CompletedWithoutPing {
                        job: job.name.clone(),
                    };
                    self.fail_with(at, reason);
                } else if newer_run {
                    self.run_finished = job.duration();
                    self.record_success(at);
                } else {
                    self.end_job_run(job, false);
                    self.succeed(at);
                }
            }
        }
    }

    /// Reports the Job's own duration and, unless a newer run is in progress, ends the run.
    fn end_job_run(&mut self, job: &JobSignal, newer_run: bool) {
        self.run_finished = job.duration();
        if !newer_run {
            self.s.run_started_at = None;
        }
    }

    fn pause(&mut self, at: Timestamp) {
        if self.s.state != State::Paused {
            self.enter(State::Paused, at);
            self.s.pinged_while_paused = false;
            self.s.run_started_at = None;
            self.s.deadline = None;
            // Counting starts again after the pause.
            self.s.failures = 0;
        }
    }

    fn resume(&mut self, at: Timestamp) {
        if self.s.state != State::Paused {
            return;
        }
        match self.s.last_ping_at.filter(|_| self.s.pinged_while_paused) {
            Some(last) => {
                self.s.deadline = self.timing.deadline_after(last);
                // Nothing could be late while paused: whatever it is now, it became so now.
                match overdue(self.timing, self.s.deadline, at) {
                    Some((State::Down, _)) => {
                        self.down(self.timing.miss_reason(), at);
                    }
                    Some((to, _)) => self.enter(to, at),
                    None => self.enter(State::Up, at),
                }
            }
            None => {
                self.s.deadline = self.timing.schedule.and_then(|s| s.next_after(at));
                self.enter(State::New, at);
            }
        }
        self.s.pinged_while_paused = false;
    }

    fn retime(&mut self, now: Timestamp) {
        if self.s.state == State::Paused {
            return;
        }
        self.s.deadline = self.retimed_deadline(now);
        match self.s.state {
            // Up and Late are judged afresh, so a longer interval can make Late Up again,
            // and a monitor that never pinged goes back to waiting.
            State::Up | State::Late => match overdue(self.timing, self.s.deadline, now) {
                Some((State::Down, at)) => {
                    self.down(self.timing.miss_reason(), at);
                }
                Some((to, at)) => self.enter(to, at),
                None if self.s.last_ping_at.is_some() && self.s.deadline.is_some() => {
                    self.enter(State::Up, now)
                }
                None => self.enter(State::New, now),
            },
            State::New | State::Started => self.tick(now),
            // Down ends only with a success ping.
            State::Down | State::Paused => {}
        }
    }

    /// The deadline after a change of timing. On a schedule: the current deadline while it
    /// is still a scheduled time (only grace or run limits changed), else the next
    /// scheduled time from now, since a new schedule is not applied to the past. On an
    /// interval: from the last ping, where the deadline came from one.
    fn retimed_deadline(&self, now: Timestamp) -> Option<Timestamp> {
        match self.timing.schedule {
            Some(s) => match self.s.deadline {
                Some(d) if s.is_occurrence(d) => Some(d),
                _ => s.next_after(now),
            },
            None if self.s.state == State::New => None,
            None => self
                .s
                .deadline
                .and(self.s.last_ping_at)
                .and_then(|p| self.timing.deadline_after(p)),
        }
    }

    /// Derives the notifications from the final state and assembles the effects.
    fn finish(mut self, signal_at: Timestamp) -> (MonitorState, Vec<Effect>) {
        let changed = self.s.state != self.from;
        let at = if changed {
            self.s.since
        } else {
            self.s.since.max(signal_at)
        };
        let mut effects = Vec::new();
        if changed {
            effects.push(Effect::Transition {
                from: self.from,
                to: self.s.state,
                at,
            });
        }
        if let Some(duration) = self.run_finished {
            effects.push(Effect::RunFinished { duration });
        }
        match self.s.state {
            // Paused, it is watched no more: whoever was told of the incident is told it
            // is closed, since no recovery would follow while paused (nor ever, if it is
            // removed while paused). Resuming starts afresh: still Down, it alerts again.
            State::Paused if self.s.incident_open => {
                self.s.incident_open = false;
                effects.push(Effect::Closed { at });
            }
            State::Down if !self.s.incident_open => {
                self.s.incident_open = true;
                self.s.last_alert_at = Some(at);
                effects.push(Effect::Alert {
                    reason: self.s.down_reason.clone().unwrap_or(DownReason::Missed),
                    at,
                });
            }
            State::Up if self.s.incident_open => {
                self.s.incident_open = false;
                effects.push(Effect::Recovery { at });
            }
            _ => {}
        }
        (self.s, effects)
    }
}

/// One step: the new state and the effects the engine must carry out, in the order
/// transition, run finished, alert or recovery.
pub fn apply(
    timing: &Timing<'_>,
    state: &MonitorState,
    signal: &Signal,
) -> (MonitorState, Vec<Effect>) {
    let mut step = Step {
        timing,
        from: state.state,
        s: state.clone(),
        run_finished: None,
    };
    match signal {
        Signal::Success(at) | Signal::Fail(at, Some(0)) => step.success(*at, None),
        Signal::SuccessFor(at, rid) => step.success(*at, Some(rid)),
        Signal::Start(at) => step.start(*at),
        Signal::Fail(at, exit_code) => step.fail(*at, *exit_code),
        Signal::PipelineStopped(at, alert) => step.pipeline_stopped(*at, alert),
        Signal::Job(job) => step.job(job),
        Signal::Pause(at) => step.pause(*at),
        Signal::Resume(at) => step.resume(*at),
        Signal::Tick(now) => step.tick(*now),
        Signal::Retimed(now) => step.retime(*now),
    }
    step.finish(signal.at())
}

/// Monitoring of a monitor in `state` ends at `at` (it is removed, or suspended until its
/// definition is accepted again): an open incident is closed, with [`Effect::Closed`],
/// since no recovery can follow. Nothing else changes, so a record kept (`Retain`, a
/// suspension) that is defined again while still Down opens a new incident and alerts.
pub fn stop(state: &MonitorState, at: Timestamp) -> (MonitorState, Option<Effect>) {
    let mut s = state.clone();
    let closed = s.incident_open.then(|| {
        s.incident_open = false;
        Effect::Closed {
            at: s.since.max(at),
        }
    });
    (s, closed)
}
