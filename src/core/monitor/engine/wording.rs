//! What alerts and timeline entries say about a monitor. People read these at 3 a.m., so
//! each names the monitor, where it lives and what happened, in words.

use jiff::Timestamp;

use super::types::{Monitor, MonitorDef};
use crate::core::alert::message::{Alert, AlertKind, human_duration};
use crate::core::monitor::state::DownReason;

/// Why a recovery alert was sent.
pub const RECOVERED: &str = "a successful ping arrived; the monitor is up again";

/// Why the monitor went Down, in words.
pub fn describe_down(reason: DownReason, m: &Monitor, at: Timestamp) -> String {
    match reason {
        DownReason::Missed => match m.state.last_ping_at {
            Some(last) => format!(
                "no ping for {} (interval {}, grace {})",
                human_duration(at.duration_since(last).as_secs()),
                human_duration(m.def.interval_secs as i64),
                human_duration(m.def.grace_secs as i64)
            ),
            None => "no ping received".into(),
        },
        DownReason::Failed { exit_code: Some(c) } => {
            format!("the job reported failure (exit code {c})")
        }
        DownReason::Failed { exit_code: None } => "the job reported failure (/fail)".into(),
        DownReason::RunTimeout => format!(
            "a run that signalled /start did not finish within {}",
            human_duration(m.def.timing().run_allowance().as_secs())
        ),
    }
}

/// The alert about `m` going Down or recovering at `at`. Its id names the monitor, the
/// instant and the kind, so staging it twice still delivers it once.
pub fn alert(m: &Monitor, kind: AlertKind, at: Timestamp, reason: String) -> Alert {
    let kind_word = match kind {
        AlertKind::Down => "down",
        AlertKind::Recovery => "recovery",
        AlertKind::Flapping => "flapping",
    };
    Alert {
        id: format!("{}:{}:{kind_word}", m.def.key, at.as_millisecond()),
        kind,
        monitor: m.def.name.clone(),
        display_name: m.def.display_name.clone(),
        scope: scope(&m.def),
        reason,
        occurred_at: at,
        last_ping_at: m.state.last_ping_at,
        expected_at: m.state.deadline,
        ping_hint: m.def.ping_hint.clone(),
    }
}

/// Where to find the monitor: its namespace and, when it has one, its Application.
fn scope(def: &MonitorDef) -> String {
    match &def.application {
        Some(app) => format!(
            "namespace {}, application {}",
            def.namespace,
            app.rsplit('/').next().unwrap_or(app)
        ),
        None => format!("namespace {}", def.namespace),
    }
}
