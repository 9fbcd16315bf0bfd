//! How a Heartbeat becomes a monitor: the one rule every front end follows, whether the
//! Heartbeat comes from a manifest file, a custom resource or the management API.

use jiff::Timestamp;

use super::engine::{DefRecord, MonitorDef, Origin, resource_uid, same_resource};
use crate::core::alert::alerting::Alerting;
use crate::core::alert::channels::ChannelRef;
use crate::core::alert::message::{Target, resolve_targets};
use crate::core::registry::AppInfo;
use crate::core::spec::{Cadence, CronJobSchedule, DeletionPolicy, HeartbeatSpec, SpecError};
use crate::core::token::TokenHash;

/// What a front end read from the CronJob a Heartbeat's `cronJobRef` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedCronJob {
    /// Its schedule and time zone.
    pub schedule: CronJobSchedule,
    /// `spec.suspend`: no Jobs are created, so the monitor is paused.
    pub suspended: bool,
}

/// A Heartbeat as a front end found it: its spec and what the front end resolved around it.
#[derive(Debug, Clone)]
pub struct DeclaredHeartbeat<'a> {
    /// Namespace (`default` in standalone mode).
    pub namespace: &'a str,
    /// Resource name.
    pub name: &'a str,
    /// The desired state.
    pub spec: &'a HeartbeatSpec,
    /// The Application its `applicationRef` names, already looked up.
    pub application: Option<&'a AppInfo>,
    /// The CronJob its `cronJobRef` names, already read; `None` without a `cronJobRef`
    /// (or while the CronJob cannot be read, when the Heartbeat's own timing applies).
    pub cron_job: Option<&'a WatchedCronJob>,
    /// Hash of its ping token.
    pub token: TokenHash,
    /// How to ping it, for alert text; never the token itself.
    pub ping_hint: String,
    /// Who defines it, which decides who may change it.
    pub origin: Origin,
    /// The id a new monitor gets. An existing monitor keeps its own, unless the id is a
    /// Kubernetes object's uid ([`resource_uid`]): then it is the object's monitor's id,
    /// recorded over a record that names none, and a monitor recorded for another uid is
    /// not this object's (see [`DeclaredHeartbeat::monitor_def`]).
    pub id: String,
    /// The alert channels its `alerts.channels` (or its Application's) name, resolved by
    /// the front end ([`channels::resolve_names`](crate::core::alert::channels::resolve_names)).
    pub channels: Vec<ChannelRef>,
}

impl DeclaredHeartbeat<'_> {
    /// The monitor definition this Heartbeat asks for. Against `existing` (the definition
    /// the engine holds now) the id and creation time are kept, and `updated_at` moves to
    /// `now` only when something else changed: a result equal to `existing` means there is
    /// nothing to write. A Kubernetes object's uid is its monitor's id: an `existing`
    /// recorded for another uid (an object of the same name, deleted since) is ignored,
    /// so the definition is a new monitor's, which the engine puts in that one's place; one
    /// that records no uid takes this one's. Fails only when the timing cannot be read
    /// (the spec's, or the CronJob's schedule).
    pub fn monitor_def(
        self,
        existing: Option<&MonitorDef>,
        default_webhook: Option<&str>,
        now: Timestamp,
    ) -> Result<MonitorDef, SpecError> {
        let key = crate::core::registry::object_key(self.namespace, self.name);
        let uid = resource_uid(self.origin, &self.id, &key);
        let existing = existing.filter(|e| same_resource(e.resource_uid(), uid));
        // A uid is recorded (over a record without one); other ids are the monitor's own.
        let id = match (existing, uid) {
            (Some(e), None) => e.id.clone(),
            _ => self.id.clone(),
        };
        let spec = self.spec;
        let (interval_secs, schedule) = match spec.cadence(self.cron_job.map(|c| &c.schedule))? {
            Cadence::Every(d) => (d.as_secs(), None),
            Cadence::Schedule(s) => (
                u64::try_from(s.typical_gap().as_secs()).unwrap_or(u64::MAX),
                Some(s),
            ),
        };
        let mut def = MonitorDef::from(DefRecord {
            key,
            id,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            display_name: spec.display_name.clone(),
            interval_secs,
            schedule,
            grace_secs: spec.grace().as_secs(),
            max_duration_secs: spec.max_duration.map(|d| d.as_secs()),
            cron_job: spec.cron_job_ref.as_ref().map(|r| r.name.clone()),
            require_ping: spec.require_ping,
            paused: spec.paused || self.cron_job.is_some_and(|c| c.suspended),
            targets: resolve_targets(
                spec.alerts.as_ref(),
                self.application.and_then(|a| a.spec.alerts.as_ref()),
                default_webhook,
            )
            .into_iter()
            .chain(
                self.channels
                    .into_iter()
                    .map(|channel| Target::Channel { channel }),
            )
            .collect(),
            alerting: Alerting::of(spec).into(),
            application: self.application.map(|a| a.key.clone()),
            token: self.token,
            ping_hint: self.ping_hint,
            origin: self.origin,
            retain_on_delete: spec.deletion_policy == Some(DeletionPolicy::Retain),
            created_at: existing.map_or(now, |e| e.created_at),
            updated_at: existing.map_or(now, |e| e.updated_at),
        });
        if existing.is_some_and(|e| *e != def) {
            def.updated_at = now;
        }
        Ok(def)
    }
}

/// The URL a job calls to ping the monitor whose token is `token`, under the server's
/// external URL `base_url` (no trailing slash). The token is percent-encoded: one a user
/// brings (`openssl rand -base64` writes `+` and `/`) would otherwise name another path.
/// Issued tokens hold only characters that need no escape.
pub fn ping_url(base_url: &str, token: &str) -> String {
    let mut url = format!("{base_url}/v1/heartbeats/");
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("/ping");
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_is_not_url_safe_is_escaped_in_its_ping_url() {
        assert_eq!(
            ping_url("http://h", "hsh_abc-DEF_1"),
            "http://h/v1/heartbeats/hsh_abc-DEF_1/ping"
        );
        assert_eq!(
            ping_url("http://h", "q7Zk+9/fXh2=="),
            "http://h/v1/heartbeats/q7Zk%2B9%2FfXh2%3D%3D/ping"
        );
    }
    use crate::core::spec::{AlertTargets, ApplicationSpec};

    fn app() -> AppInfo {
        AppInfo {
            key: "team/shop".into(),
            num: 1,
            namespace: "team".into(),
            name: "shop".into(),
            spec: ApplicationSpec {
                alerts: Some(AlertTargets {
                    email: vec!["ops@example.com".into()],
                    webhook: None,
                    webhook_secret_ref: None,
                    ..Default::default()
                }),
                ..Default::default()
            },
            tz: jiff::tz::TimeZone::UTC,
            limits: crate::core::limits::AppLimits::resolve(
                &ApplicationSpec::default(),
                &Default::default(),
            ),
            ingest: None,
            counts: Default::default(),
            reads: Default::default(),
        }
    }

    fn declared<'a>(spec: &'a HeartbeatSpec, app: Option<&'a AppInfo>) -> DeclaredHeartbeat<'a> {
        DeclaredHeartbeat {
            namespace: "team",
            name: "backup",
            spec,
            application: app,
            cron_job: None,
            token: TokenHash::of("token"),
            ping_hint: "curl".into(),
            origin: Origin::Kubernetes,
            id: "new-id".into(),
            channels: Vec::new(),
        }
    }

    #[test]
    fn a_new_monitor_takes_the_spec_and_the_application_defaults() {
        let spec: HeartbeatSpec = serde_json::from_str(
            r#"{"interval":"2h","grace":"10m","deletionPolicy":"Retain","displayName":"Backup"}"#,
        )
        .unwrap();
        let app = app();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let def = declared(&spec, Some(&app))
            .monitor_def(None, Some("http://hook"), now)
            .unwrap();
        assert_eq!(def.key, "team/backup");
        assert_eq!(def.id, "new-id");
        assert_eq!((def.interval_secs, def.grace_secs), (7200, 600));
        assert_eq!(def.application(), Some("team/shop"));
        assert!(def.retain_on_delete());
        assert_eq!((def.created_at, def.updated_at), (now, now));
        // The Application's targets win over the server's default webhook.
        assert_eq!(
            serde_json::to_value(&def.targets).unwrap(),
            serde_json::json!([{"type": "email", "to": ["ops@example.com"]}])
        );
        let alone = declared(&spec, None)
            .monitor_def(None, Some("http://hook"), now)
            .unwrap();
        assert_eq!(
            serde_json::to_value(&alone.targets).unwrap(),
            serde_json::json!([{"type": "webhook", "url": "http://hook"}])
        );
    }

    #[test]
    fn an_unchanged_heartbeat_yields_the_definition_the_engine_holds() {
        let spec = HeartbeatSpec::default();
        let then = Timestamp::from_second(1_600_000_000).unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let existing = declared(&spec, None).monitor_def(None, None, then).unwrap();
        assert_eq!(
            declared(&spec, None)
                .monitor_def(Some(&existing), None, now)
                .unwrap(),
            existing
        );
        // A front end whose ids are the monitors' own (a manifest read again) keeps it.
        let mut manifest = declared(&spec, None);
        manifest.origin = Origin::Manifest;
        let kept = manifest.monitor_def(None, None, then).unwrap();
        let mut again = declared(&spec, None);
        again.origin = Origin::Manifest;
        again.id = "another-id".into();
        assert_eq!(again.monitor_def(Some(&kept), None, now).unwrap(), kept);
        let paused = HeartbeatSpec {
            paused: true,
            ..Default::default()
        };
        let changed = declared(&paused, None)
            .monitor_def(Some(&existing), None, now)
            .unwrap();
        assert_eq!(changed.id, existing.id);
        assert_eq!(changed.created_at, then);
        assert_eq!(changed.updated_at, now);
    }

    #[test]
    fn an_object_of_the_same_name_with_another_uid_defines_a_new_monitor() {
        let spec = HeartbeatSpec::default();
        let then = Timestamp::from_second(1_600_000_000).unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let existing = declared(&spec, None).monitor_def(None, None, then).unwrap();
        let mut recreated = declared(&spec, None);
        recreated.id = "another-uid".into();
        let def = recreated.monitor_def(Some(&existing), None, now).unwrap();
        assert_eq!(def.id, "another-uid");
        assert_eq!((def.created_at, def.updated_at), (now, now));
        assert!(existing.is_of_another_resource(&def));
    }

    #[test]
    fn a_monitor_recorded_without_a_uid_takes_its_objects_and_keeps_its_age() {
        let spec = HeartbeatSpec::default();
        let then = Timestamp::from_second(1_600_000_000).unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        // Written for an object that had no uid: its id is its key.
        let mut unnamed = declared(&spec, None);
        unnamed.id = "team/backup".into();
        let existing = unnamed.monitor_def(None, None, then).unwrap();
        assert_eq!(existing.resource_uid(), None);
        let def = declared(&spec, None)
            .monitor_def(Some(&existing), None, now)
            .unwrap();
        assert_eq!(def.id, "new-id");
        assert_eq!((def.created_at, def.updated_at), (then, now));
        assert!(!existing.is_of_another_resource(&def));
    }
}
