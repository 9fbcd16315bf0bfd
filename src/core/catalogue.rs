//! The monitor catalogue: the port through which the management API creates, changes and
//! deletes monitors, and the rules every implementation shares.
//!
//! Reads come from the engine's snapshot in both modes; writes go to the front end's own
//! source of truth. Standalone mode stores API-created monitors beside the manifest ones;
//! the operator turns them into Heartbeat resources and waits for its controller. The API
//! handlers see only [`MonitorCatalogue`], so neither mode leaks into them.

use futures::future::BoxFuture;

use super::cron::Schedule;
use super::duration::SpecDuration;
use super::monitor::engine::{Engine, Monitor, MonitorDef};
use super::registry::AppInfo;
use super::spec::{ApplicationRef, HeartbeatSpec};

/// Tickstem's bounds for `interval_secs` (spec section 3): what the API accepts and what
/// it reports.
pub const INTERVAL_RANGE: (u64, u64) = (60, 86_400);
/// Tickstem's bounds for `grace_secs`.
pub const GRACE_RANGE: (u64, u64) = (0, 86_400);

/// `secs` brought within [`INTERVAL_RANGE`]: the `interval_secs` the API reports for a
/// monitor whose own cadence lies outside it (a schedule that runs less often than daily,
/// a manifest's `interval: 7d`), so a client that writes back what it read is not refused.
pub fn api_interval_secs(secs: u64) -> u64 {
    secs.clamp(INTERVAL_RANGE.0, INTERVAL_RANGE.1)
}

/// `secs` brought within [`GRACE_RANGE`]: the `grace_secs` the API reports for a monitor
/// whose grace is longer (a manifest's or a resource's `grace: 2d`).
pub fn api_grace_secs(secs: u64) -> u64 {
    secs.clamp(GRACE_RANGE.0, GRACE_RANGE.1)
}

/// A validated create request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Human name; the resource name is its [`slug`].
    pub name: String,
    /// Interval in seconds (unused with a schedule).
    pub interval_secs: u64,
    /// A cron schedule in its zone, instead of the interval.
    pub schedule: Option<Schedule>,
    /// Grace in seconds.
    pub grace_secs: u64,
}

impl CreateRequest {
    /// The Heartbeat spec this request asks for, owned by `app`.
    pub fn heartbeat_spec(&self, app: &AppInfo) -> HeartbeatSpec {
        HeartbeatSpec {
            display_name: Some(self.name.clone()),
            interval: self
                .schedule
                .is_none()
                .then(|| SpecDuration::from_secs(self.interval_secs)),
            schedule: self.schedule.as_ref().map(|s| s.expression().to_string()),
            time_zone: self.schedule.as_ref().map(|s| s.zone().to_string()),
            grace: Some(SpecDuration::from_secs(self.grace_secs)),
            application_ref: Some(ApplicationRef {
                name: app.name.clone(),
            }),
            ..Default::default()
        }
    }
}

/// A validated update request; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// New human name.
    pub name: Option<String>,
    /// New interval; without `schedule`, it also drops a schedule the monitor had.
    pub interval_secs: Option<u64>,
    /// `Some(Some(_))` puts the monitor on this schedule; `Some(None)` takes it off its
    /// schedule, onto `interval_secs` or else its schedule's typical gap brought within
    /// [`INTERVAL_RANGE`].
    pub schedule: Option<Option<Schedule>>,
    /// New grace.
    pub grace_secs: Option<u64>,
    /// Pause (true) or resume (false).
    pub paused: Option<bool>,
}

impl UpdateRequest {
    /// This request without what only repeats the API's report of `def` where the report
    /// is not the stored value: an interval monitor's `interval_secs` and any monitor's
    /// `grace_secs` are reported within the contract's bounds, so a client that writes
    /// back what it read (`interval: 7d` read as 86400) would otherwise shorten the
    /// monitor. Any other value still replaces the stored one; a scheduled monitor's
    /// `interval_secs` keeps its meaning of moving it onto an interval.
    pub fn without_reported_values(mut self, def: &MonitorDef) -> Self {
        let interval_as_read = def.schedule.is_none()
            && self.schedule.is_none()
            && self.interval_secs == Some(api_interval_secs(def.interval_secs));
        if interval_as_read {
            self.interval_secs = None;
        }
        if self.grace_secs == Some(api_grace_secs(def.grace_secs)) {
            self.grace_secs = None;
        }
        self
    }
}

/// The timing an update leaves a monitor with: its schedule (if any) and its interval in
/// seconds (a schedule's typical gap when scheduled).
///
/// A schedule dropped without an interval leaves its typical gap as the interval, within
/// [`INTERVAL_RANGE`]: a gap of years (`0 0 29 2 *`) would make an interval monitor the
/// API itself refuses when a client writes back what it read.
pub fn updated_cadence(def: &MonitorDef, req: &UpdateRequest) -> (Option<Schedule>, u64) {
    match (&req.schedule, req.interval_secs) {
        (Some(Some(s)), _) => (
            Some(s.clone()),
            u64::try_from(s.typical_gap().as_secs()).unwrap_or(u64::MAX),
        ),
        (Some(None), Some(i)) => (None, i),
        (Some(None), None) if def.schedule.is_some() => {
            (None, api_interval_secs(def.interval_secs))
        }
        (Some(None), None) => (None, def.interval_secs),
        (None, Some(i)) => (None, i),
        (None, None) => (def.schedule.clone(), def.interval_secs),
    }
}

/// Why a catalogue operation failed; the API maps each to the contract's status code.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// No such monitor for this application (404).
    #[error("heartbeat not found")]
    NotFound,
    /// The application owns as many monitors as its limit allows (402).
    #[error("heartbeat quota reached")]
    Quota,
    /// The monitor is defined elsewhere, in a manifest file (409).
    #[error("{0}")]
    ReadOnly(String),
    /// The request asks for something the rules refuse (422).
    #[error("{0}")]
    Invalid(String),
    /// Storage or the cluster could not complete the change (503).
    #[error("{0}")]
    Unavailable(String),
    /// The cluster refused the change: its access rules, validation or admission policies
    /// (422). Retrying the same request will not help.
    #[error("{0}")]
    Refused(String),
}

/// What the management API needs from a front end to change monitors.
pub trait MonitorCatalogue: Send + Sync {
    /// Creates a monitor for `app`; returns it with its ping token.
    fn create<'a>(
        &'a self,
        app: &'a AppInfo,
        req: CreateRequest,
    ) -> BoxFuture<'a, Result<(Monitor, String), CatalogueError>>;
    /// Applies an update to `monitor`, one of `app`'s.
    fn update<'a>(
        &'a self,
        app: &'a AppInfo,
        monitor: &'a Monitor,
        req: UpdateRequest,
    ) -> BoxFuture<'a, Result<Monitor, CatalogueError>>;
    /// Deletes `monitor`, one of `app`'s.
    fn delete<'a>(
        &'a self,
        app: &'a AppInfo,
        monitor: &'a Monitor,
    ) -> BoxFuture<'a, Result<(), CatalogueError>>;
    /// The ping tokens of `monitors`, in their order, for the API's `token` field
    /// (`None` where it is not known). Every replica sharing a store answers alike.
    fn tokens<'a>(&'a self, monitors: &'a [Monitor]) -> BoxFuture<'a, Vec<Option<String>>>;
}

/// Refuses a create when the Application already owns as many monitors as its limit
/// (`spec.limits.heartbeats`, else the server's default) allows.
pub fn check_quota(engine: &Engine, app: &AppInfo) -> Result<(), CatalogueError> {
    let limit = usize::try_from(app.limits.heartbeats).unwrap_or(usize::MAX);
    if engine.count_for_application(&app.key, None) >= limit {
        return Err(CatalogueError::Quota);
    }
    Ok(())
}

/// A DNS-safe resource name from a human name (`Daily Backup!` → `daily-backup`), so a
/// monitor created through the API gets the same name in both modes.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(50).collect();
    let trimmed = trimmed.trim_end_matches('-').to_string();
    if trimmed.is_empty() {
        "heartbeat".into()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_safe() {
        assert_eq!(slug("Daily Backup!"), "daily-backup");
        assert_eq!(slug("  --Weekly  report-- "), "weekly-report");
        assert_eq!(slug("ÄÖÜ"), "heartbeat");
        assert_eq!(slug(&"x".repeat(80)).len(), 50);
    }

    #[test]
    fn reported_intervals_stay_within_tickstems_range() {
        for (secs, reported) in [
            (0, 60),
            (30, 60),
            (60, 60),
            (3600, 3600),
            (86_400, 86_400),
            (86_401, 86_400),
            (126_230_400, 86_400),
            (u64::MAX, 86_400),
        ] {
            assert_eq!(api_interval_secs(secs), reported, "{secs}");
        }
        assert_eq!(api_grace_secs(172_800), 86_400);
        assert_eq!(api_grace_secs(300), 300);
    }

    #[test]
    fn writing_back_a_reported_value_leaves_a_longer_stored_one_as_it_is() {
        let week = crate::core::monitor::engine::sample(
            "ns/weekly",
            crate::core::monitor::state::State::New,
        )
        .def
        .edited(|d| (d.interval_secs, d.grace_secs) = (7 * 86_400, 2 * 86_400));
        let as_read = UpdateRequest {
            name: Some("weekly".into()),
            interval_secs: Some(86_400),
            grace_secs: Some(86_400),
            ..Default::default()
        }
        .without_reported_values(&week);
        assert_eq!((as_read.interval_secs, as_read.grace_secs), (None, None));
        assert_eq!(as_read.name.as_deref(), Some("weekly"));
        assert_eq!(updated_cadence(&week, &as_read), (None, 7 * 86_400));
        // Another value is a change.
        let shorter = UpdateRequest {
            interval_secs: Some(3600),
            grace_secs: Some(600),
            ..Default::default()
        }
        .without_reported_values(&week);
        assert_eq!(
            (shorter.interval_secs, shorter.grace_secs),
            (Some(3600), Some(600))
        );
    }
}
