//! The desired state of Applications and Heartbeats, shared by both front ends.
//!
//! One Rust type per kind serves the Kubernetes custom resources and the standalone
//! manifest files, so a YAML file moves between the two unchanged. These types carry no
//! Kubernetes machinery; the operator's custom resource types wrap them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::channel::{AlertPolicy, ChannelError, MaintenanceWindow};
use crate::core::cron::{CronJobCadence, Dialect, Schedule, ScheduleError};
use crate::core::duration::SpecDuration;

/// Default retention of raw events when an Application does not say.
pub const DEFAULT_RETENTION: SpecDuration = SpecDuration::from_secs(400 * 86_400);
/// Default time between expected pings.
pub const DEFAULT_INTERVAL: SpecDuration = SpecDuration::from_secs(3_600);
/// Default extra time after a missed deadline before a monitor is Down.
pub const DEFAULT_GRACE: SpecDuration = SpecDuration::from_secs(300);
/// Shortest interval a monitor may have: shorter ones would be noise, not monitoring.
pub const MIN_INTERVAL: SpecDuration = SpecDuration::from_secs(60);
/// Longest interval or grace a monitor may have.
pub const MAX_INTERVAL: SpecDuration = SpecDuration::from_secs(365 * 86_400);
/// Longest `displayName`, in characters: as long as a name the management API takes. It
/// heads every alert, and chat titles and PagerDuty summaries have room for little more.
pub const MAX_DISPLAY_NAME: usize = 255;
/// Longest `runbookURL`, in characters: within what every channel takes for a link.
pub const MAX_RUNBOOK_URL: usize = 2000;

/// Checks a `displayName` against [`MAX_DISPLAY_NAME`] and control characters, which
/// would break an alert's title or an email subject across lines.
pub fn check_display_name(name: Option<&str>) -> Result<(), SpecError> {
    match name {
        Some(n) if n.chars().count() > MAX_DISPLAY_NAME || n.chars().any(char::is_control) => {
            Err(SpecError::DisplayName(n.chars().count()))
        }
        _ => Ok(()),
    }
}

/// Where alerts go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertTargets {
    /// Email addresses that receive Down and recovery notices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    /// A URL that receives a JSON POST (Slack-compatible `text` plus structured fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Kubernetes only: the webhook URL from a key of a Secret in the same namespace,
    /// instead of `webhook` (a Slack webhook URL is a password). Read when the resource is
    /// reconciled; never shown in status, Events or logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,
    /// Names of alert channels: an `AlertChannel` in the same namespace, else a
    /// `ClusterAlertChannel` (in standalone manifests, an `AlertChannel` document). An
    /// unknown name leaves the Heartbeat not Ready (`ChannelNotFound`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// When to notify; overrides the channels' own policy.
    #[serde(flatten)]
    pub policy: AlertPolicy,
}

/// A key of a Secret in the resource's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

impl AlertTargets {
    /// True when neither email nor a webhook is set, so defaults apply.
    pub fn is_empty(&self) -> bool {
        self.email.is_empty()
            && self.webhook.is_none()
            && self.webhook_secret_ref.is_none()
            && self.channels.is_empty()
    }
}

/// What an Application may use of the server; unset fields take the server's defaults
/// (flags `--max-heartbeats`, `--max-event-names`, `--ingest-rate`, `--ingest-burst`,
/// `--max-concurrent-reads`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Most Heartbeats this Application may own (Heartbeat resources beyond it are not
    /// Ready; the management API answers 402). Through the management API the server's
    /// default applies when unset; resources are unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub heartbeats: Option<u32>,
    /// Most distinct event names; an event with a new name beyond it gets 422. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub event_names: Option<u32>,
    /// Events per second this Application's token may send, sustained (429 with
    /// Retry-After beyond it); 0 is no limit. Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ingest_rate: Option<u32>,
    /// Events the token may send at once above the sustained rate. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ingest_burst: Option<u32>,
    /// Stats and CSV export requests of this Application running at once; one more gets
    /// 429 with Retry-After until one of them ends. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrent_reads: Option<u32>,
}

/// An Application: a source of events with its own API token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// Human-readable name shown in status, alerts and the dashboard (at most 255
    /// characters, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub display_name: Option<String>,
    /// IANA time zone in which today, this week (Monday first) and this month are counted. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// How long raw events are kept (e.g. 400d); counts survive deletion. Default 400d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<SpecDuration>,
    /// Default alert targets for the Application's Heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertTargets>,
    /// Quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Name of the Secret that holds the issued token (key `token`). Default `<name>-hartslag-token`. A Secret that exists already is used only if it is of type Opaque and annotated `hartslag.dev/adopt: "true"`; any other is left untouched and refused (SecretNotAdoptable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// Standalone mode only: a file holding the token to use instead of an issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Delete (default) or Retain the Application's events when it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// What happens to stored data when its resource is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete events, rollups, pings and state together with the resource (the default).
    #[default]
    Delete,
    /// Keep the data; only the token is revoked. Re-creating the resource with the same
    /// name picks the data up again.
    Retain,
}

/// Reference to the Application a Heartbeat belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRef {
    /// Name of an Application in the same namespace.
    pub name: String,
}

/// Reference to the CronJob whose Jobs a Heartbeat watches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronJobRef {
    /// Name of a CronJob in the same namespace.
    pub name: String,
}

/// A Heartbeat: a dead-man's switch that expects a ping at least every `interval`, or in a
/// window after each time of a cron `schedule`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// Human-readable name shown in status, alerts and the dashboard (at most 255
    /// characters, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub display_name: Option<String>,
    /// Longest expected time between two successful pings (60s to 365d). Default 1h.
    /// Excludes `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<SpecDuration>,
    /// A cron schedule the job runs on: five fields (minute hour day-of-month month
    /// day-of-week, with ranges, steps, lists and names) or @hourly, @daily, @weekly,
    /// @monthly, @yearly. A ping is expected from each scheduled time to that time plus
    /// `grace`. Excludes `interval`; with `cronJobRef` and neither set, the CronJob's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone of `schedule` (for example Europe/Amsterdam). Default UTC, or the
    /// CronJob's `spec.timeZone` with `cronJobRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Extra time after a missed deadline (or scheduled time) before the monitor is Down and alerts (0s to 365d). Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<SpecDuration>,
    /// Watch this CronJob's Jobs and Pods: a Job starting counts as a start, completing as
    /// a successful ping, failing as a failure; no Job in a scheduled window is Down
    /// ("not scheduled"). Kubernetes mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job_ref: Option<CronJobRef>,
    /// Longest a run (a Job, or a `/start` until its end) may take before the monitor is
    /// Down ("running too long"). Default: a run may last until the next scheduled time
    /// plus grace, or, without a schedule, the grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<SpecDuration>,
    /// With `cronJobRef`: a Job that completes without a successful ping from its code
    /// during its run is Down ("completed without a ping").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_ping: bool,
    /// A paused monitor records pings but never alerts.
    #[serde(default)]
    pub paused: bool,
    /// Alert targets; when empty, the Application's and then the server's defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertTargets>,
    /// The Application this monitor belongs to (management API scope, quota, alert defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_ref: Option<ApplicationRef>,
    /// Name of the Secret that holds the issued token (keys `token`, `ping-url`). Default `<name>-heartbeat`. A Secret that exists already is used only if it is of type Opaque and annotated `hartslag.dev/adopt: "true"`; any other is left untouched and refused (SecretNotAdoptable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// Standalone mode only: a file holding the token to use instead of an issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Delete (default) or Retain the monitor's state and ping history when it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Down only after this many consecutive failed runs or missed deadlines. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<u32>,
    /// A runbook for whoever is paged: shown in alerts (Alertmanager's `runbook_url`
    /// annotation, PagerDuty links, chat buttons). An http(s) URL of at most 2000
    /// characters.
    #[serde(
        default,
        rename = "runbookURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 2000))]
    pub runbook_url: Option<String>,
    /// Windows without notifications; a monitor due during one gets a fresh deadline when
    /// it ends instead of alerting at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,
}

/// A spec value that breaks a rule the schema cannot express; shown in conditions and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `timeZone` is not a known IANA zone.
    #[error("spec.timeZone {0:?} is not a known IANA time zone (for example Europe/Amsterdam)")]
    TimeZone(String),
    /// `interval` outside 60s..365d.
    #[error("spec.interval {0} is out of range: it must be between {1} and 365d")]
    Interval(SpecDuration, SpecDuration),
    /// `grace` above 365d.
    #[error("spec.grace {0} is out of range: it must be between 0s and 365d")]
    Grace(SpecDuration),
    /// `retention` of zero.
    #[error("spec.retention must be at least 1s")]
    Retention,
    /// An alert email address without an `@`.
    #[error("spec.alerts.email {0:?} is not an email address")]
    Email(String),
    /// An alert webhook that is not an http(s) URL.
    #[error("spec.alerts.webhook {0:?} is not an http:// or https:// URL")]
    Webhook(String),
    /// Both `schedule` and `interval` are set.
    #[error(
        "spec.schedule and spec.interval are mutually exclusive: set schedule for cron timing or interval for a fixed period, not both"
    )]
    ScheduleAndInterval,
    /// `schedule` does not parse or never fires.
    #[error("spec.schedule {0}")]
    Schedule(ScheduleError),
    /// The watched CronJob's schedule cannot be read (only when it is not the API
    /// server's to validate, such as an unknown `timeZone`).
    #[error("the CronJob's spec.schedule {0}")]
    CronJobSchedule(ScheduleError),
    /// `timeZone` without anything it could apply to.
    #[error(
        "spec.timeZone applies to a cron schedule: set spec.schedule or spec.cronJobRef as well"
    )]
    TimeZoneWithoutSchedule,
    /// `requirePing` without Jobs to judge.
    #[error(
        "spec.requirePing needs spec.cronJobRef: only the Jobs of a watched CronJob can complete without a ping"
    )]
    RequirePingWithoutCronJob,
    /// `maxDuration` outside 1s..365d.
    #[error("spec.maxDuration {0} is out of range: it must be between 1s and 365d")]
    MaxDuration(SpecDuration),
    /// Both `webhook` and `webhookSecretRef`.
    #[error("spec.alerts: set webhook or webhookSecretRef, not both")]
    TwoWebhooks,
    /// A channel name that cannot name a resource.
    #[error("spec.alerts.channels {0:?} is not a valid resource name")]
    ChannelName(String),
    /// `failureThreshold` outside 1..100.
    #[error("spec.failureThreshold {0} is out of range: it must be between 1 and 100")]
    FailureThreshold(u32),
    /// `runbookURL` that is not http(s).
    #[error("spec.runbookURL {0:?} is not an http:// or https:// URL")]
    RunbookUrl(String),
    /// `runbookURL` longer than [`MAX_RUNBOOK_URL`] or with spaces or control characters.
    #[error(
        "spec.runbookURL must be at most {MAX_RUNBOOK_URL} characters without spaces or control characters (Slack refuses a button whose URL is over 3000); got {0} characters"
    )]
    RunbookUrlForm(usize),
    /// `displayName` longer than [`MAX_DISPLAY_NAME`] or with control characters.
    #[error(
        "spec.displayName must be at most {MAX_DISPLAY_NAME} characters without control characters (line breaks included); got {0} characters"
    )]
    DisplayName(usize),
    /// An alert policy or a maintenance window that cannot be applied.
    #[error("{0}")]
    Policy(#[from] ChannelError),
}

impl From<ScheduleError> for SpecError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::TimeZone(name) => SpecError::TimeZone(name),
            other => SpecError::Schedule(other),
        }
    }
}

fn check_alerts(alerts: Option<&AlertTargets>) -> Result<(), SpecError> {
    let Some(a) = alerts else { return Ok(()) };
    for e in &a.email {
        let ok = e
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
        if !ok {
            return Err(SpecError::Email(e.clone()));
        }
    }
    if let Some(w) = &a.webhook
        && !(w.starts_with("http://") || w.starts_with("https://"))
    {
        return Err(SpecError::Webhook(w.clone()));
    }
    if a.webhook.is_some() && a.webhook_secret_ref.is_some() {
        return Err(SpecError::TwoWebhooks);
    }
    for name in &a.channels {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with(['-', '.']);
        if !ok {
            return Err(SpecError::ChannelName(name.clone()));
        }
    }
    crate::core::channel::check_policy(&a.policy)?;
    Ok(())
}

impl ApplicationSpec {
    /// The time zone name to use, UTC when unset.
    pub fn time_zone_name(&self) -> &str {
        self.time_zone.as_deref().unwrap_or("UTC")
    }

    /// The retention to apply.
    pub fn retention(&self) -> SpecDuration {
        self.retention.unwrap_or(DEFAULT_RETENTION)
    }

    /// Checks the rules the schema cannot express and resolves the time zone.
    pub fn validate(&self) -> Result<jiff::tz::TimeZone, SpecError> {
        let name = self.time_zone_name();
        let tz = jiff::tz::TimeZone::get(name).map_err(|_| SpecError::TimeZone(name.into()))?;
        if self.retention().as_secs() == 0 {
            return Err(SpecError::Retention);
        }
        check_display_name(self.display_name.as_deref())?;
        check_alerts(self.alerts.as_ref())?;
        Ok(tz)
    }
}

impl HeartbeatSpec {
    /// The interval to apply.
    pub fn interval(&self) -> SpecDuration {
        self.interval.unwrap_or(DEFAULT_INTERVAL)
    }

    /// The grace to apply.
    pub fn grace(&self) -> SpecDuration {
        self.grace.unwrap_or(DEFAULT_GRACE)
    }

    /// Checks the rules the schema cannot express.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_with_min_interval(MIN_INTERVAL)
    }

    /// As [`HeartbeatSpec::validate`] with another lower bound for the interval
    /// (`--min-interval`, for development and tests).
    pub fn validate_with_min_interval(&self, min: SpecDuration) -> Result<(), SpecError> {
        self.own_cadence()?;
        let i = self.interval();
        if self.schedule.is_none() && (i < min || i > MAX_INTERVAL) {
            return Err(SpecError::Interval(i, min));
        }
        if self.grace() > MAX_INTERVAL {
            return Err(SpecError::Grace(self.grace()));
        }
        if let Some(d) = self.max_duration
            && (d.as_secs() == 0 || d > MAX_INTERVAL)
        {
            return Err(SpecError::MaxDuration(d));
        }
        if self.require_ping && self.cron_job_ref.is_none() {
            return Err(SpecError::RequirePingWithoutCronJob);
        }
        if self.time_zone.is_some() && self.schedule.is_none() && self.cron_job_ref.is_none() {
            return Err(SpecError::TimeZoneWithoutSchedule);
        }
        if let Some(n) = self.failure_threshold
            && !(1..=100).contains(&n)
        {
            return Err(SpecError::FailureThreshold(n));
        }
        if let Some(url) = &self.runbook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(SpecError::RunbookUrl(url.clone()));
            }
            let len = url.chars().count();
            if len > MAX_RUNBOOK_URL || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(SpecError::RunbookUrlForm(len));
            }
        }
        check_display_name(self.display_name.as_deref())?;
        crate::core::channel::check_windows(&self.maintenance)?;
        check_alerts(self.alerts.as_ref())
    }

    /// Consecutive failures before Down.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(1)
    }

    /// The schedule the Heartbeat sets itself, parsed; `None` when it sets none. With a
    /// `cronJobRef` the schedule is read as the CronJob controller reads it, since that
    /// controller creates the Jobs the monitor expects.
    pub fn own_schedule(&self) -> Result<Option<Schedule>, SpecError> {
        self.own_cadence()
    }

    fn own_cadence(&self) -> Result<Option<Schedule>, SpecError> {
        let Some(expr) = &self.schedule else {
            return Ok(None);
        };
        if self.interval.is_some() {
            return Err(SpecError::ScheduleAndInterval);
        }
        let dialect = if self.cron_job_ref.is_some() {
            Dialect::CronJob
        } else {
            Dialect::Cron
        };
        Ok(Some(Schedule::parse_as(
            expr,
            self.time_zone.as_deref(),
            dialect,
        )?))
    }

    /// How the monitor is timed: its own schedule or interval, else the watched CronJob's
    /// (`cron_job`, read by the front end from the CronJob's `spec.schedule` and
    /// `spec.timeZone`, with this Heartbeat's `timeZone` taking precedence), else the
    /// default interval.
    pub fn cadence(&self, cron_job: Option<&CronJobSchedule>) -> Result<Cadence, SpecError> {
        if let Some(s) = self.own_cadence()? {
            return Ok(Cadence::Schedule(s));
        }
        if let Some(i) = self.interval {
            return Ok(Cadence::Every(i));
        }
        let Some(cj) = cron_job else {
            return Ok(Cadence::Every(self.interval()));
        };
        let zone = self.time_zone.as_deref().or(cj.time_zone.as_deref());
        match Schedule::parse_cron_job(&cj.schedule, zone).map_err(SpecError::CronJobSchedule)? {
            CronJobCadence::Schedule(s) => Ok(Cadence::Schedule(s)),
            CronJobCadence::Every(d) => Ok(Cadence::Every(SpecDuration::from_secs(
                u64::try_from(d.as_secs()).unwrap_or(u64::MAX),
            ))),
        }
    }
}

/// A watched CronJob's own timing, as its front end read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronJobSchedule {
    /// `spec.schedule`.
    pub schedule: String,
    /// `spec.timeZone`, where the API server has it.
    pub time_zone: Option<String>,
}

/// How a monitor is timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// A ping at least this often.
    Every(SpecDuration),
    /// A ping in a window after each scheduled time.
    Schedule(Schedule),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_defaults_and_zone() {
        let spec: ApplicationSpec =
            serde_json::from_str(r#"{"timeZone":"Europe/Amsterdam"}"#).unwrap();
        assert!(spec.validate().is_ok());
        assert_eq!(spec.retention().as_secs(), 400 * 86_400);
        let bad: ApplicationSpec = serde_json::from_str(r#"{"timeZone":"Mars/Olympus"}"#).unwrap();
        assert_eq!(
            bad.validate().unwrap_err(),
            SpecError::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn heartbeat_ranges() {
        let ok: HeartbeatSpec =
            serde_json::from_str(r#"{"interval":"1h30m","grace":"0s"}"#).unwrap();
        assert!(ok.validate().is_ok());
        let short: HeartbeatSpec = serde_json::from_str(r#"{"interval":"59s"}"#).unwrap();
        assert!(matches!(short.validate(), Err(SpecError::Interval(..))));
        let long: HeartbeatSpec = serde_json::from_str(r#"{"grace":"366d"}"#).unwrap();
        assert!(matches!(long.validate(), Err(SpecError::Grace(_))));
        let mail: HeartbeatSpec =
            serde_json::from_str(r#"{"alerts":{"email":["nobody"]}}"#).unwrap();
        assert!(matches!(mail.validate(), Err(SpecError::Email(_))));
    }

    #[test]
    fn display_names_and_runbooks_fit_every_channel() {
        let hb =
            |json: serde_json::Value| -> HeartbeatSpec { serde_json::from_value(json).unwrap() };
        let at_limit = "é".repeat(MAX_DISPLAY_NAME);
        assert!(
            hb(serde_json::json!({"displayName": at_limit}))
                .validate()
                .is_ok()
        );
        let over = format!("{at_limit}x");
        assert_eq!(
            hb(serde_json::json!({"displayName": over})).validate(),
            Err(SpecError::DisplayName(256))
        );
        let broken = hb(serde_json::json!({"displayName": "backup\nBcc: x@example.com"}));
        assert!(matches!(broken.validate(), Err(SpecError::DisplayName(_))));
        let app: ApplicationSpec =
            serde_json::from_value(serde_json::json!({"displayName": "a\u{7}b"})).unwrap();
        assert!(matches!(app.validate(), Err(SpecError::DisplayName(_))));
        let url = format!("https://wiki.example.com/{}", "x".repeat(MAX_RUNBOOK_URL));
        let e = hb(serde_json::json!({"runbookURL": url}))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("at most 2000 characters"), "{e}");
        let spaced = hb(serde_json::json!({"runbookURL": "https://wiki.example.com/a b"}));
        assert!(matches!(
            spaced.validate(),
            Err(SpecError::RunbookUrlForm(_))
        ));
    }

    #[test]
    fn channels_policy_threshold_runbook_and_windows() {
        let ok: HeartbeatSpec = serde_json::from_str(
            r#"{"alerts":{"channels":["oncall","team.slack"],"notifyAfter":"10m","notifyLate":true},
                "failureThreshold":3,"runbookURL":"https://runbooks.example.com/x",
                "maintenance":[{"schedule":"0 2 * * 0","duration":"2h","timeZone":"Europe/Amsterdam"}]}"#,
        )
        .unwrap();
        assert!(ok.validate().is_ok(), "{:?}", ok.validate());
        let alerts = ok.alerts.as_ref().unwrap();
        assert_eq!(alerts.channels, vec!["oncall", "team.slack"]);
        assert_eq!(alerts.policy.notify_after.map(|d| d.as_secs()), Some(600));
        assert!(!alerts.is_empty());
        assert_eq!(ok.failure_threshold(), 3);
        assert_eq!(HeartbeatSpec::default().failure_threshold(), 1);
        let round_trip = serde_json::to_value(&ok).unwrap();
        assert_eq!(round_trip["runbookURL"], "https://runbooks.example.com/x");
        assert_eq!(round_trip["alerts"]["notifyLate"], true);
        for (bad, what) in [
            (r#"{"alerts":{"channels":["Bad_Name"]}}"#, "channels"),
            (r#"{"failureThreshold":0}"#, "failureThreshold"),
            (r#"{"runbookURL":"wiki/x"}"#, "runbookURL"),
            (r#"{"alerts":{"repeatEvery":"0s"}}"#, "repeatEvery"),
            (
                r#"{"maintenance":[{"schedule":"","duration":"1h"}]}"#,
                "maintenance",
            ),
        ] {
            let spec: HeartbeatSpec = serde_json::from_str(bad).unwrap();
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }

    fn hb(json: &str) -> HeartbeatSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn schedules_are_checked_with_messages_that_name_the_field() {
        assert!(
            hb(r#"{"schedule":"30 2 * * 1-5","timeZone":"Europe/Amsterdam"}"#)
                .validate()
                .is_ok()
        );
        let both = hb(r#"{"schedule":"@daily","interval":"1h"}"#)
            .validate()
            .unwrap_err();
        assert_eq!(both, SpecError::ScheduleAndInterval);
        assert!(
            both.to_string()
                .contains("spec.schedule and spec.interval are mutually exclusive")
        );
        let bad = hb(r#"{"schedule":"61 * * * *"}"#).validate().unwrap_err();
        assert_eq!(
            bad.to_string(),
            "spec.schedule \"61 * * * *\" is not a valid cron expression: minute field \"61\": Number out of bounds; write five fields (minute hour day-of-month month day-of-week, e.g. \"30 2 * * 1-5\") or @hourly, @daily, @weekly, @monthly, @yearly"
        );
        assert_eq!(
            hb(r#"{"schedule":"@daily","timeZone":"Mars/Olympus"}"#)
                .validate()
                .unwrap_err(),
            SpecError::TimeZone("Mars/Olympus".into())
        );
        assert_eq!(
            hb(r#"{"timeZone":"Europe/Amsterdam"}"#)
                .validate()
                .unwrap_err(),
            SpecError::TimeZoneWithoutSchedule
        );
        assert_eq!(
            hb(r#"{"requirePing":true}"#).validate().unwrap_err(),
            SpecError::RequirePingWithoutCronJob
        );
        assert!(matches!(
            hb(r#"{"maxDuration":"0s"}"#).validate(),
            Err(SpecError::MaxDuration(_))
        ));
        // A schedule needs no interval check: `* * * * *` is as often as cron goes.
        assert!(
            hb(r#"{"schedule":"* * * * *"}"#)
                .validate_with_min_interval(SpecDuration::from_secs(3600))
                .is_ok()
        );
    }

    #[test]
    fn cadence_comes_from_the_heartbeat_then_the_cron_job() {
        let cj = CronJobSchedule {
            schedule: "0 4 * * *".into(),
            time_zone: Some("Asia/Tokyo".into()),
        };
        let Cadence::Schedule(s) = hb(r#"{"cronJobRef":{"name":"nightly"}}"#)
            .cadence(Some(&cj))
            .unwrap()
        else {
            panic!("not scheduled")
        };
        assert_eq!(
            (s.expression(), s.zone(), s.dialect()),
            ("0 4 * * *", "Asia/Tokyo", Dialect::CronJob)
        );
        // The Heartbeat's zone wins; its own schedule too, read as the controller reads it.
        let Cadence::Schedule(s) = hb(r#"{"cronJobRef":{"name":"n"},"timeZone":"UTC"}"#)
            .cadence(Some(&cj))
            .unwrap()
        else {
            panic!("not scheduled")
        };
        assert_eq!(s.zone(), "UTC");
        let Cadence::Schedule(s) = hb(r#"{"cronJobRef":{"name":"n"},"schedule":"0 5 * * *"}"#)
            .cadence(Some(&cj))
            .unwrap()
        else {
            panic!("not scheduled")
        };
        assert_eq!(
            (s.expression(), s.zone(), s.dialect()),
            ("0 5 * * *", "UTC", Dialect::CronJob)
        );
        assert_eq!(
            hb(r#"{"cronJobRef":{"name":"n"},"interval":"2h"}"#)
                .cadence(Some(&cj))
                .unwrap(),
            Cadence::Every(SpecDuration::from_secs(7200))
        );
        let every = CronJobSchedule {
            schedule: "@every 90m".into(),
            time_zone: None,
        };
        assert_eq!(
            hb(r#"{"cronJobRef":{"name":"n"}}"#)
                .cadence(Some(&every))
                .unwrap(),
            Cadence::Every(SpecDuration::from_secs(5400))
        );
        // Without the CronJob read (yet): the default interval.
        assert_eq!(
            hb(r#"{"cronJobRef":{"name":"n"}}"#).cadence(None).unwrap(),
            Cadence::Every(DEFAULT_INTERVAL)
        );
        let broken = CronJobSchedule {
            schedule: "0 4 * * *".into(),
            time_zone: Some("Nowhere/Land".into()),
        };
        assert!(matches!(
            hb(r#"{"cronJobRef":{"name":"n"}}"#).cadence(Some(&broken)),
            Err(SpecError::CronJobSchedule(_))
        ));
    }
}
