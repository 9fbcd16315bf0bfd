//! A monitor's definition in two forms: [`DefRecord`], field by field, as front ends build
//! it and as it is stored, and [`MonitorDef`], the compact form the engine and its readers'
//! snapshot hold for every monitor.
//!
//! With a million monitors every byte of a definition is a megabyte. Most monitors leave
//! the optional fields empty (display name, run limit, CronJob, Application, ping hint,
//! retention), and a key is `namespace/name`, so the namespace and name it repeats are read
//! from it: a compact definition holds those only where they are set or differ, behind one
//! pointer ([`Extras`]). Both forms serialize alike, so stored records and API answers are
//! unchanged.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::types::Origin;
use crate::core::alert::alerting::AlertingBox;
use crate::core::alert::message::Target;
use crate::core::cron::Schedule;
use crate::core::monitor::state::{JobRules, Timing, secs_saturating};
use crate::core::token::TokenHash;

/// Everything the engine needs to know about a monitor, resolved by a front end
/// ([`crate::core::monitor::define`]), field by field: what front ends build and what is
/// stored. The engine holds it as a [`MonitorDef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefRecord {
    /// `namespace/name`: the engine's key.
    pub key: String,
    /// Stable id for the management API.
    pub id: String,
    /// Namespace (`default` in standalone mode).
    pub namespace: String,
    /// Resource name.
    pub name: String,
    /// Human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Expected interval, seconds; for a scheduled monitor, the schedule's typical gap.
    pub interval_secs: u64,
    /// The cron schedule of a scheduled monitor. A stored schedule that no longer parses
    /// (a parser upgrade that drops some syntax) is read as none, so the monitor falls back
    /// to `interval_secs` instead of stopping the engine from starting.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_schedule"
    )]
    pub schedule: Option<Schedule>,
    /// Grace, seconds.
    pub grace_secs: u64,
    /// Longest a run may take, seconds (`maxDuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// The watched CronJob, whose Jobs are evidence for this monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job: Option<String>,
    /// A Job that completes without a ping from its code is Down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_ping: bool,
    /// Paused by spec.
    pub paused: bool,
    /// Resolved alert targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// When to notify: threshold, maintenance windows, the Heartbeat's own policy.
    #[serde(default, skip_serializing_if = "AlertingBox::is_default")]
    pub alerting: AlertingBox,
    /// Owning application key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Hash of the ping token.
    pub token: TokenHash,
    /// How to ping it, for alert text (no token).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ping_hint: String,
    /// Who defines it.
    pub origin: Origin,
    /// Keep state and history after deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
    /// When the monitor was first defined.
    pub created_at: Timestamp,
    /// When the definition last changed.
    pub updated_at: Timestamp,
}

fn lenient_schedule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Schedule>, D::Error> {
    let raw = Option::<serde_json::Value>::deserialize(d)?;
    Ok(raw.and_then(|v| match serde_json::from_value::<Schedule>(v.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(schedule = %v, error = %e, "a stored schedule no longer parses; the monitor keeps its interval");
            None
        }
    }))
}

impl DefRecord {
    /// A plain monitor, for tests and benchmarks to start from and set what they care about
    /// with struct update syntax: `key` is `namespace/name` (`default/key` without a slash),
    /// id and token hash are taken from the name, no grace, schedule, targets or
    /// application, defined through the API at `now`, not kept after deletion.
    pub fn sample(key: &str, interval_secs: u64, now: Timestamp) -> Self {
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        Self {
            key: format!("{namespace}/{name}"),
            id: name.into(),
            namespace: namespace.into(),
            name: name.into(),
            display_name: None,
            interval_secs,
            schedule: None,
            grace_secs: 0,
            max_duration_secs: None,
            cron_job: None,
            require_ping: false,
            paused: false,
            targets: Vec::new(),
            alerting: AlertingBox::default(),
            application: None,
            token: TokenHash::of(name),
            ping_hint: String::new(),
            origin: Origin::Api,
            retain_on_delete: false,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A monitor's definition as the engine holds it: the fields every monitor sets, and the
/// rest behind one pointer that most monitors leave empty. Built from a [`DefRecord`];
/// stored and serialized as one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "DefRecord")]
pub struct MonitorDef {
    /// `namespace/name`: the engine's key.
    pub key: String,
    /// Stable id for the management API.
    pub id: String,
    /// Expected interval, seconds; for a scheduled monitor, the schedule's typical gap.
    pub interval_secs: u64,
    /// The cron schedule of a scheduled monitor (equal schedules share one parsed form).
    pub schedule: Option<Schedule>,
    /// Grace, seconds.
    pub grace_secs: u64,
    /// Paused by spec.
    pub paused: bool,
    /// Who defines it.
    pub origin: Origin,
    /// Resolved alert targets.
    pub targets: Vec<Target>,
    /// When to notify: threshold, maintenance windows, the Heartbeat's own policy.
    pub alerting: AlertingBox,
    /// Hash of the ping token.
    pub token: TokenHash,
    /// When the monitor was first defined.
    pub created_at: Timestamp,
    /// When the definition last changed.
    pub updated_at: Timestamp,
    /// The fields most monitors leave empty.
    extras: Extras,
}

/// The fields of a definition most monitors leave empty, boxed only when one is set: one
/// pointer in every definition instead of about 140 bytes (and two allocations for the
/// namespace and name a key already holds).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Extras(Option<Box<Rare>>);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Rare {
    /// Namespace and name when the key is not `namespace/name`.
    names: Option<(String, String)>,
    display_name: Option<String>,
    max_duration_secs: Option<u64>,
    cron_job: Option<String>,
    require_ping: bool,
    application: Option<String>,
    ping_hint: String,
    retain_on_delete: bool,
}

impl MonitorDef {
    /// Namespace (`default` in standalone mode).
    pub fn namespace(&self) -> &str {
        match self.rare().and_then(|r| r.names.as_ref()) {
            Some((namespace, _)) => namespace,
            None => self.key.split_once('/').map_or("", |(ns, _)| ns),
        }
    }

    /// Resource name.
    pub fn name(&self) -> &str {
        match self.rare().and_then(|r| r.names.as_ref()) {
            Some((_, name)) => name,
            None => self.key.split_once('/').map_or("", |(_, name)| name),
        }
    }

    /// Human name.
    pub fn display_name(&self) -> Option<&str> {
        self.rare().and_then(|r| r.display_name.as_deref())
    }

    /// Longest a run may take, seconds (`maxDuration`).
    pub fn max_duration_secs(&self) -> Option<u64> {
        self.rare().and_then(|r| r.max_duration_secs)
    }

    /// The watched CronJob, whose Jobs are evidence for this monitor.
    pub fn cron_job(&self) -> Option<&str> {
        self.rare().and_then(|r| r.cron_job.as_deref())
    }

    /// A Job that completes without a ping from its code is Down.
    pub fn require_ping(&self) -> bool {
        self.rare().is_some_and(|r| r.require_ping)
    }

    /// Owning application key, if any.
    pub fn application(&self) -> Option<&str> {
        self.rare().and_then(|r| r.application.as_deref())
    }

    /// How to ping it, for alert text (no token).
    pub fn ping_hint(&self) -> &str {
        self.rare().map_or("", |r| &r.ping_hint)
    }

    /// Keep state and history after deletion.
    pub fn retain_on_delete(&self) -> bool {
        self.rare().is_some_and(|r| r.retain_on_delete)
    }

    /// The uid of the resource this monitor was defined from (a Kubernetes object's), as
    /// recorded in its id; see [`resource_uid`].
    pub fn resource_uid(&self) -> Option<&str> {
        resource_uid(self.origin, &self.id, &self.key)
    }

    /// Whether this definition (a monitor's, or a record kept of one) belongs to another
    /// resource than `def`, defined under the same key: a Heartbeat deleted and created
    /// again under its name, which must not inherit what its predecessor left (see
    /// [`same_resource`]).
    pub fn is_of_another_resource(&self, def: &MonitorDef) -> bool {
        !same_resource(self.resource_uid(), def.resource_uid())
    }

    fn rare(&self) -> Option<&Rare> {
        self.extras.0.as_deref()
    }

    /// The definition field by field.
    pub fn to_record(&self) -> DefRecord {
        let rare = self.rare();
        DefRecord {
            key: self.key.clone(),
            id: self.id.clone(),
            namespace: self.namespace().to_string(),
            name: self.name().to_string(),
            display_name: rare.and_then(|r| r.display_name.clone()),
            interval_secs: self.interval_secs,
            schedule: self.schedule.clone(),
            grace_secs: self.grace_secs,
            max_duration_secs: self.max_duration_secs(),
            cron_job: rare.and_then(|r| r.cron_job.clone()),
            require_ping: self.require_ping(),
            paused: self.paused,
            targets: self.targets.clone(),
            alerting: self.alerting.clone(),
            application: rare.and_then(|r| r.application.clone()),
            token: self.token,
            ping_hint: self.ping_hint().to_string(),
            origin: self.origin,
            retain_on_delete: self.retain_on_delete(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// This definition with `change` made to it field by field.
    pub fn edited(self, change: impl FnOnce(&mut DefRecord)) -> Self {
        let mut record = DefRecord::from(self);
        change(&mut record);
        record.into()
    }

    /// The timing the state machine works with.
    pub fn timing(&self) -> Timing<'_> {
        Timing {
            schedule: self.schedule.as_ref(),
            max_duration: self.max_duration_secs().map(secs_saturating),
            jobs: self.cron_job().map(|_| JobRules {
                require_ping: self.require_ping(),
            }),
            failure_threshold: self.alerting.failure_threshold,
            maintenance: &self.alerting.maintenance,
            ..Timing::from_secs(self.interval_secs, self.grace_secs)
        }
    }
}

/// The uid of the resource a monitor of `origin` under `key` was defined from, as recorded
/// in its `id`. Only a Kubernetes object has one (manifests and the management API give
/// their monitors ids of their own). `None` also for a record that names none: written for
/// an object the API server had given no uid, whose id then is its key.
pub fn resource_uid<'a>(origin: Origin, id: &'a str, key: &str) -> Option<&'a str> {
    (origin == Origin::Kubernetes && !id.is_empty() && id != key).then_some(id)
}

/// Whether what was recorded for the resource with uid `recorded` belongs to the resource
/// with uid `uid` under the same key: the same uid, or either side has none. A record that
/// names no uid goes to whichever resource defines that key next, which records its own:
/// records of earlier builds, and of other front ends, stay with the name they were
/// defined under.
pub fn same_resource(recorded: Option<&str>, uid: Option<&str>) -> bool {
    match (recorded, uid) {
        (Some(recorded), Some(uid)) => recorded == uid,
        _ => true,
    }
}

impl From<DefRecord> for MonitorDef {
    fn from(r: DefRecord) -> Self {
        let derived = r
            .key
            .split_once('/')
            .is_some_and(|(ns, name)| ns == r.namespace && name == r.name);
        let rare = Rare {
            names: (!derived).then_some((r.namespace, r.name)),
            display_name: r.display_name,
            max_duration_secs: r.max_duration_secs,
            cron_job: r.cron_job,
            require_ping: r.require_ping,
            application: r.application,
            ping_hint: r.ping_hint,
            retain_on_delete: r.retain_on_delete,
        };
        Self {
            key: r.key,
            id: r.id,
            interval_secs: r.interval_secs,
            schedule: r.schedule,
            grace_secs: r.grace_secs,
            paused: r.paused,
            origin: r.origin,
            targets: r.targets,
            alerting: r.alerting,
            token: r.token,
            created_at: r.created_at,
            updated_at: r.updated_at,
            // Held only when something is set, so equal definitions compare equal.
            extras: Extras((rare != Rare::default()).then(|| Box::new(rare))),
        }
    }
}

impl From<MonitorDef> for DefRecord {
    fn from(d: MonitorDef) -> Self {
        d.to_record()
    }
}

impl Serialize for MonitorDef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_record().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, namespace: &str, name: &str) -> DefRecord {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        DefRecord {
            key: key.into(),
            id: "0001".into(),
            namespace: namespace.into(),
            name: name.into(),
            display_name: None,
            interval_secs: 60,
            schedule: None,
            grace_secs: 5,
            max_duration_secs: None,
            cron_job: None,
            require_ping: false,
            paused: false,
            targets: Vec::new(),
            alerting: Default::default(),
            application: None,
            token: TokenHash::of("t"),
            ping_hint: String::new(),
            origin: Origin::Kubernetes,
            retain_on_delete: false,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_kubernetes_monitor_names_its_resource_by_the_uid_in_its_id() {
        let def = |origin, id: &str| {
            MonitorDef::from(DefRecord {
                origin,
                id: id.into(),
                ..record("team/backup", "team", "backup")
            })
        };
        let first = def(Origin::Kubernetes, "uid-1");
        assert_eq!(first.resource_uid(), Some("uid-1"));
        // Created again under its name: another resource.
        let again = def(Origin::Kubernetes, "uid-2");
        assert!(first.is_of_another_resource(&again));
        assert!(again.is_of_another_resource(&first));
        assert!(!first.is_of_another_resource(&first.clone()));
        // Records that name no resource belong to whichever defines their key next: one
        // written for an object without a uid (its id is its key, or empty), and those of
        // the other front ends, whose ids are their own.
        for none in [
            def(Origin::Kubernetes, "team/backup"),
            def(Origin::Kubernetes, ""),
            def(Origin::Manifest, "uid-1"),
            def(Origin::Api, "0123abcd"),
        ] {
            assert_eq!(none.resource_uid(), None, "{none:?}");
            assert!(!none.is_of_another_resource(&again), "{none:?}");
            assert!(!again.is_of_another_resource(&none), "{none:?}");
        }
    }

    #[test]
    fn a_record_without_a_uid_belongs_to_any_resource_of_its_name() {
        assert!(same_resource(Some("a"), Some("a")));
        assert!(!same_resource(Some("a"), Some("b")));
        assert!(same_resource(None, Some("b")));
        assert!(same_resource(Some("a"), None));
        assert!(same_resource(None, None));
    }

    #[test]
    fn a_plain_definition_holds_no_extras_and_reads_its_names_from_its_key() {
        let def = MonitorDef::from(record("team/backup", "team", "backup"));
        assert!(def.extras.0.is_none());
        assert_eq!((def.namespace(), def.name()), ("team", "backup"));
        assert_eq!(def.to_record(), record("team/backup", "team", "backup"));
    }

    #[test]
    fn a_sample_is_a_plain_definition_named_by_its_key() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let def = MonitorDef::from(DefRecord::sample("team/backup", 60, now));
        assert!(def.extras.0.is_none());
        assert_eq!(
            (def.namespace(), def.name(), def.id.as_str()),
            ("team", "backup", "backup")
        );
        assert_eq!(def.token, TokenHash::of("backup"));
        let bare = DefRecord::sample("backup", 60, now);
        assert_eq!(
            (bare.key.as_str(), bare.namespace.as_str()),
            ("default/backup", "default")
        );
    }

    #[test]
    fn names_that_the_key_does_not_hold_are_kept() {
        let r = record("odd-key", "ns", "name");
        let def = MonitorDef::from(r.clone());
        assert_eq!((def.namespace(), def.name()), ("ns", "name"));
        assert_eq!(def.to_record(), r);
        // A name with a slash is not split at the wrong place.
        let r = record("a/b/c", "a/b", "c");
        let def = MonitorDef::from(r.clone());
        assert_eq!((def.namespace(), def.name()), ("a/b", "c"));
        assert_eq!(def.to_record(), r);
    }

    #[test]
    fn every_optional_field_survives_the_compact_form() {
        let mut r = record("team/backup", "team", "backup");
        r.display_name = Some("Nightly backup".into());
        r.max_duration_secs = Some(600);
        r.cron_job = Some("backup".into());
        r.require_ping = true;
        r.application = Some("team/shop".into());
        r.ping_hint = "curl …/ping".into();
        r.retain_on_delete = true;
        let def = MonitorDef::from(r.clone());
        assert_eq!(def.display_name(), Some("Nightly backup"));
        assert_eq!(def.max_duration_secs(), Some(600));
        assert_eq!(def.cron_job(), Some("backup"));
        assert!(def.require_ping() && def.retain_on_delete());
        assert_eq!(def.application(), Some("team/shop"));
        assert_eq!(def.ping_hint(), "curl …/ping");
        assert_eq!(def.to_record(), r);
    }

    #[test]
    fn both_forms_serialize_alike_and_read_back_equal() {
        let mut r = record("team/backup", "team", "backup");
        r.cron_job = Some("backup".into());
        for r in [r, record("team/x", "team", "x")] {
            let def = MonitorDef::from(r.clone());
            let json = serde_json::to_string(&def).unwrap();
            assert_eq!(json, serde_json::to_string(&r).unwrap());
            let back: MonitorDef = serde_json::from_str(&json).unwrap();
            assert_eq!(back, def);
        }
    }

    #[test]
    fn definitions_compare_by_what_they_define() {
        let a = MonitorDef::from(record("team/x", "team", "x"));
        let mut r = record("team/x", "team", "x");
        r.ping_hint = "hint".into();
        let b = MonitorDef::from(r.clone());
        assert_ne!(a, b);
        r.ping_hint = String::new();
        assert_eq!(a, MonitorDef::from(r));
    }

    #[test]
    fn an_edited_copy_leaves_its_original_as_it_was() {
        let mut r = record("team/x", "team", "x");
        r.display_name = Some("X".into());
        let original = MonitorDef::from(r);
        let edited = original
            .clone()
            .edited(|d| d.display_name = Some("Y".into()));
        assert_eq!(original.display_name(), Some("X"));
        assert_eq!(edited.display_name(), Some("Y"));
        // Emptied again, it holds no extras, and equals a definition that never had any.
        let plain = edited.edited(|d| d.display_name = None);
        assert!(plain.extras.0.is_none());
        assert_eq!(plain, MonitorDef::from(record("team/x", "team", "x")));
    }

    #[test]
    fn the_compact_form_is_smaller() {
        assert!(
            std::mem::size_of::<MonitorDef>() + 128 <= std::mem::size_of::<DefRecord>(),
            "{} vs {}",
            std::mem::size_of::<MonitorDef>(),
            std::mem::size_of::<DefRecord>()
        );
    }
}
