//! What alerts and timeline entries say about a monitor. People read these at 3 a.m., so
//! each names the monitor, where it lives and what happened, in words.

use jiff::Timestamp;

use super::types::{Monitor, MonitorDef};
use crate::core::alert::message::{Alert, AlertKind, HumanDuration, Target, human_duration};
use crate::core::monitor::state::{DownReason, State};

/// Why a recovery alert was sent.
pub const RECOVERED: &str = "a successful ping arrived; the monitor is up again";

/// Why monitoring of a monitor stopped, for the notice that closes an incident it left
/// open ([`stopped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    /// Paused (its spec, the API, a suspended CronJob).
    Paused,
    /// Removed (deleted, or gone from the manifests).
    Removed,
    /// Suspended until its definition is accepted again (Kubernetes).
    Suspended,
}

/// The reason a notice gives when monitoring of `m` stopped, as `how` says, while its
/// incident was open.
pub fn stopped(m: &Monitor, how: Stopping) -> String {
    let since = m.state.last_alert_at.map_or(String::new(), |t| {
        format!(" (Down since {})", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    });
    match how {
        Stopping::Paused => format!(
            "monitoring was paused while it was Down{since}; the incident is closed here and nothing more is sent about it while it is paused (resumed and still Down, it alerts again)"
        ),
        Stopping::Removed => format!(
            "the Heartbeat was removed while it was Down{since}; the incident is closed here and Hartslag no longer watches it"
        ),
        Stopping::Suspended => format!(
            "monitoring stopped while it was Down{since}: the Heartbeat is not accepted at the moment (see its status); the incident is closed here, and it alerts again if it is still Down once accepted"
        ),
    }
}

/// The words of the last Down described in a step, by what they describe.
#[derive(Default)]
pub(super) struct DownWords(Option<(DownReason, Timestamp, String)>);

impl DownWords {
    /// `reason` for `m`'s Down at `at`, in words ([`describe_down`]); formatted only when
    /// it differs from the last one asked for.
    pub(super) fn say(&mut self, reason: &DownReason, m: &Monitor, at: Timestamp) -> String {
        match &self.0 {
            Some((r, t, words)) if r == reason && *t == at => words.clone(),
            _ => {
                let words = describe_down(reason, m, at);
                self.0 = Some((reason.clone(), at, words.clone()));
                words
            }
        }
    }
}

/// Why the monitor went Down, in words.
pub fn describe_down(reason: &DownReason, m: &Monitor, at: Timestamp) -> String {
    let def = &m.def;
    let grace = HumanDuration::of(def.grace_secs as i64);
    match reason {
        DownReason::Missed => match (&def.schedule, m.state.deadline) {
            (Some(s), Some(due)) => format!(
                "no ping for the run scheduled at {} ({s}, grace {grace}){}",
                s.local_time(due),
                match m.state.last_ping_at {
                    Some(last) => format!(
                        "; last ping {} before",
                        HumanDuration::of(at.duration_since(last).as_secs())
                    ),
                    None => "; no ping received yet".into(),
                }
            ),
            _ => match m.state.last_ping_at {
                Some(last) => format!(
                    "no ping for {} (interval {}, grace {grace})",
                    HumanDuration::of(at.duration_since(last).as_secs()),
                    HumanDuration::of(def.interval_secs as i64),
                ),
                None => "no ping received".into(),
            },
        },
        DownReason::NotScheduled => {
            let cron_job = def.cron_job().unwrap_or(def.name());
            let due = match (&def.schedule, m.state.deadline) {
                (Some(s), Some(due)) => format!("the run due at {} ({s})", s.local_time(due)),
                _ => format!(
                    "{} (interval {})",
                    "the expected run",
                    human_duration(def.interval_secs as i64)
                ),
            };
            format!(
                "not scheduled: CronJob {cron_job} started no Job for {due} within grace {grace}; check whether it is suspended, its startingDeadlineSeconds and concurrencyPolicy, and its Events"
            )
        }
        DownReason::Failed { exit_code: Some(c) } => {
            format!("the job reported failure (exit code {c})")
        }
        DownReason::Failed { exit_code: None } => "the job reported failure (/fail)".into(),
        DownReason::PipelineStopped { alert } => format!(
            "the alerting pipeline stopped firing {alert}: Alertmanager sent it as resolved (check Prometheus, its rules and the route to Alertmanager)"
        ),
        DownReason::JobFailed {
            job,
            reason,
            exit_code,
        } => format!(
            "Job {job} failed: {} ({}){}",
            reason.as_str(),
            reason.explain(),
            exit_code.map_or(String::new(), |c| format!(", exit code {c}"))
        ),
        DownReason::JobTooLong { job } => {
            format!(
                "running too long: Job {job} has run longer than {}",
                run_limit(def)
            )
        }
        DownReason::CompletedWithoutPing { job } => format!(
            "completed without a ping: Job {job} succeeded, but its code sent no successful ping during its run (requirePing)"
        ),
        DownReason::RunTimeout if def.max_duration_secs().is_some() => format!(
            "running too long: a run that signalled /start did not finish within {}",
            run_limit(def)
        ),
        DownReason::RunTimeout => format!(
            "a run that signalled /start did not finish within {}",
            run_limit(def)
        ),
    }
}

/// How long a run may take, in words.
fn run_limit(def: &MonitorDef) -> String {
    match (def.max_duration_secs(), &def.schedule) {
        (Some(max), _) => format!("maxDuration {}", human_duration(max as i64)),
        (None, Some(_)) => format!(
            "the next scheduled run plus grace {}",
            human_duration(def.grace_secs as i64)
        ),
        (None, None) => human_duration(def.timing().run_allowance().as_secs()),
    }
}

/// The alert about `m` going Down or recovering at `at`. Its id names the monitor, the
/// instant and the kind, so staging it twice still delivers it once.
pub fn alert(m: &Monitor, kind: AlertKind, at: Timestamp, reason: String) -> Alert {
    let kind_word = match kind {
        AlertKind::Down => "down",
        AlertKind::Late => "late",
        AlertKind::OnTime => "on_time",
        AlertKind::Recovery => "recovery",
        AlertKind::Flapping => "flapping",
        AlertKind::Stopped => "stopped",
    };
    Alert {
        id: format!("{}:{}:{kind_word}", m.def.key, at.as_millisecond()),
        kind,
        monitor: m.def.name().to_string(),
        display_name: m.def.display_name().map(str::to_string),
        scope: scope(&m.def),
        reason,
        occurred_at: at,
        last_ping_at: m.state.last_ping_at,
        last_failure_at: m.state.last_fail_at,
        expected_at: m.state.deadline,
        ping_hint: m.def.ping_hint().to_string(),
        namespace: m.def.namespace().to_string(),
        application: m
            .def
            .application()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string()),
        opened_at: Some(match kind {
            AlertKind::Down => at,
            _ => m.state.last_alert_at.unwrap_or(at),
        }),
        runbook_url: m.def.alerting.runbook_url.clone(),
        exit_code: match (kind, &m.state.down_reason) {
            (
                AlertKind::Down | AlertKind::Stopped,
                Some(DownReason::Failed { exit_code } | DownReason::JobFailed { exit_code, .. }),
            ) => *exit_code,
            _ => None,
        },
        repeat: 0,
        policy: m.def.alerting.policy.clone(),
        maintenance: m.def.alerting.maintenance.clone(),
    }
}

/// The Late warning (or its end) a transition from `from` to `to` raises, when `m` may
/// want one: its own policy says `notifyLate`, or it alerts through channels (whose policy
/// the delivery scheduler applies; a channel without `notifyLate` skips it).
pub fn warning(m: &Monitor, from: State, to: State) -> Option<(AlertKind, String)> {
    let own = m.def.alerting.policy.notify_late;
    let channels = m
        .def
        .targets
        .iter()
        .any(|t| matches!(t, Target::Channel { .. }));
    if own == Some(false) || (own.is_none() && !channels) {
        return None;
    }
    let expected = m.state.deadline.map_or("its deadline".to_string(), |d| {
        d.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    });
    match (from, to) {
        (State::Late, State::Late) => None,
        (_, State::Late) => Some((
            AlertKind::Late,
            format!("no ping since it was expected at {expected}; Down when its grace ends"),
        )),
        (State::Late, State::Down) => None,
        (State::Late, State::Paused) => Some((
            AlertKind::OnTime,
            "paused while Late; it will not go Down while paused".to_string(),
        )),
        (State::Late, _) => Some((
            AlertKind::OnTime,
            "pinged again before it was Down".to_string(),
        )),
        _ => None,
    }
}

/// Where to find the monitor: its namespace and, when it has one, its Application.
fn scope(def: &MonitorDef) -> String {
    match &def.application() {
        Some(app) => format!(
            "namespace {}, application {}",
            def.namespace(),
            app.rsplit('/').next().unwrap_or(app)
        ),
        None => format!("namespace {}", def.namespace()),
    }
}
