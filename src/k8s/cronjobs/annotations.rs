//! The annotations that make a CronJob monitored without writing a Heartbeat (pure):
//! `hartslag.dev/monitor: "true"` asks for a Heartbeat of the CronJob's name with
//! `cronJobRef` set; the optional ones fill its fields.

use std::collections::BTreeMap;

use crate::core::duration::SpecDuration;
use crate::core::spec::{AlertTargets, ApplicationRef, CronJobRef, HeartbeatSpec};

/// Monitor this CronJob (`"true"`).
pub const MONITOR: &str = "hartslag.dev/monitor";
/// `spec.grace` of the Heartbeat.
pub const GRACE: &str = "hartslag.dev/grace";
/// `spec.maxDuration` of the Heartbeat.
pub const MAX_DURATION: &str = "hartslag.dev/max-duration";
/// `spec.applicationRef.name` of the Heartbeat.
pub const APPLICATION: &str = "hartslag.dev/application";
/// `spec.alerts.email` of the Heartbeat: addresses separated by commas.
pub const ALERTS_EMAIL: &str = "hartslag.dev/alerts-email";

/// An annotation value that cannot become its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct AnnotationError {
    /// Which annotation.
    pub annotation: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

/// Whether the annotations ask for monitoring.
pub fn monitored(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(MONITOR)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn duration(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
) -> Result<Option<SpecDuration>, AnnotationError> {
    annotations
        .get(annotation)
        .map(|v| SpecDuration::parse(v))
        .transpose()
        .map_err(|e| AnnotationError {
            annotation,
            message: e.to_string(),
        })
}

/// The Heartbeat spec the annotations of CronJob `name` ask for; `None` when they ask for
/// none. The spec is checked by the same rules as any Heartbeat's.
pub fn wanted(
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<HeartbeatSpec>, AnnotationError> {
    if !monitored(annotations) {
        return Ok(None);
    }
    let email: Vec<String> = annotations
        .get(ALERTS_EMAIL)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let spec = HeartbeatSpec {
        cron_job_ref: Some(CronJobRef { name: name.into() }),
        grace: duration(annotations, GRACE)?,
        max_duration: duration(annotations, MAX_DURATION)?,
        application_ref: annotations
            .get(APPLICATION)
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(|a| ApplicationRef { name: a.into() }),
        alerts: (!email.is_empty()).then_some(AlertTargets {
            email,
            webhook: None,
            webhook_secret_ref: None,
            ..Default::default()
        }),
        ..Default::default()
    };
    spec.validate().map_err(|e| {
        let text = e.to_string();
        let annotation = if text.starts_with("spec.grace") {
            GRACE
        } else if text.starts_with("spec.maxDuration") {
            MAX_DURATION
        } else {
            ALERTS_EMAIL
        };
        AnnotationError {
            annotation,
            message: text,
        }
    })?;
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn one_annotation_is_enough() {
        assert_eq!(wanted("nightly", &annotations(&[])).unwrap(), None);
        assert_eq!(
            wanted("nightly", &annotations(&[(MONITOR, "false")])).unwrap(),
            None
        );
        let spec = wanted("nightly", &annotations(&[(MONITOR, "true")]))
            .unwrap()
            .unwrap();
        assert_eq!(spec.cron_job_ref.unwrap().name, "nightly");
        assert_eq!(
            (spec.grace, spec.max_duration, spec.schedule),
            (None, None, None)
        );
        assert!(monitored(&annotations(&[(MONITOR, " True ")])));
    }

    #[test]
    fn optional_annotations_fill_the_fields() {
        let spec = wanted(
            "nightly",
            &annotations(&[
                (MONITOR, "true"),
                (GRACE, "10m"),
                (MAX_DURATION, "1h30m"),
                (APPLICATION, "billing"),
                (ALERTS_EMAIL, "ops@example.com, dba@example.com"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(spec.grace, Some(SpecDuration::from_secs(600)));
        assert_eq!(spec.max_duration, Some(SpecDuration::from_secs(5400)));
        assert_eq!(spec.application_ref.unwrap().name, "billing");
        assert_eq!(
            spec.alerts.unwrap().email,
            ["ops@example.com", "dba@example.com"]
        );
    }

    #[test]
    fn bad_values_name_their_annotation() {
        for (pairs, annotation) in [
            (vec![(GRACE, "soon")], GRACE),
            (vec![(GRACE, "400d")], GRACE),
            (vec![(MAX_DURATION, "0s")], MAX_DURATION),
            (vec![(ALERTS_EMAIL, "ops")], ALERTS_EMAIL),
        ] {
            let mut all = pairs.clone();
            all.push((MONITOR, "true"));
            let e = wanted("nightly", &annotations(&all)).unwrap_err();
            assert_eq!(e.annotation, annotation, "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("annotation {annotation}: ")),
                "{e}"
            );
        }
    }
}
