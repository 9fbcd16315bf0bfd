//! Alertmanager's API v2: `POST /api/v2/alerts` with a JSON array of postable alerts.
//!
//! Labels identify an alert, so they hold only what names the monitor (`alertname`,
//! `namespace`, `heartbeat`, `application`, `severity`); the rest goes in annotations,
//! which Alertmanager replaces with the most recent ones it received. A firing alert is
//! re-sent every `resendInterval` with `endsAt` four intervals ahead (as Prometheus does),
//! so one lost re-send does not resolve it; recovery sends the same labels and annotations
//! with `endsAt` now.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

use super::facts::{Facts, NoticeKind};

/// Alertmanager's own default re-send interval (`resendInterval` when unset).
pub const DEFAULT_RESEND: Duration = Duration::from_secs(60);

/// How many re-send intervals a firing alert stays active without a re-send.
const ENDS_AFTER_RESENDS: u32 = 4;

/// Where alerts are posted for an Alertmanager at base URL `base` (no trailing slash).
pub fn endpoint(base: &str) -> String {
    format!("{base}/api/v2/alerts")
}

/// The alert name for a notice: Late notices are a separate, milder alert.
pub fn alertname(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::Late => "HeartbeatLate",
        NoticeKind::Down | NoticeKind::Recovery | NoticeKind::Flapping | NoticeKind::Stopped => {
            "HeartbeatDown"
        }
    }
}

/// The labels that identify the monitor's alert: the same on every re-send and on the
/// recovery, so Alertmanager sees one alert.
pub fn labels(facts: &Facts, kind: NoticeKind) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert("alertname".into(), alertname(kind).into());
    labels.insert("namespace".into(), facts.namespace.clone().into());
    labels.insert("heartbeat".into(), facts.name.clone().into());
    if let Some(app) = &facts.application {
        labels.insert("application".into(), app.clone().into());
    }
    let severity = match kind {
        NoticeKind::Late => "warning",
        _ => facts.severity.as_str(),
    };
    labels.insert("severity".into(), severity.into());
    labels
}

fn annotations(facts: &Facts) -> Map<String, Value> {
    let mut a = Map::new();
    let state = match facts.kind {
        NoticeKind::Stopped => "no longer monitored".to_string(),
        other => other.state().to_lowercase(),
    };
    a.insert(
        "summary".into(),
        format!("Heartbeat {}/{} is {state}", facts.namespace, facts.name).into(),
    );
    a.insert("description".into(), facts.description().into());
    if let Some(url) = &facts.runbook_url {
        a.insert("runbook_url".into(), url.clone().into());
    }
    a.insert("dashboard_url".into(), facts.dashboard_url.clone().into());
    a
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The body of one `POST /api/v2/alerts` for this notice at `now`: [`alerts`] as a list.
pub fn body(facts: &Facts, now: Timestamp, resend: Duration) -> Value {
    Value::Array(alerts(facts, now, resend))
}

/// The body of one `POST /api/v2/alerts` for several notices at `now`: their alerts in one
/// list, in the order given (Alertmanager takes them in order, so a later notice about a
/// monitor wins over an earlier one in the same list).
pub fn batch_body<'a>(
    notices: impl IntoIterator<Item = &'a Facts>,
    now: Timestamp,
    resend: Duration,
) -> Value {
    Value::Array(
        notices
            .into_iter()
            .flat_map(|facts| alerts(facts, now, resend))
            .collect(),
    )
}

/// The postable alerts of this notice at `now`.
///
/// A Down (or Flapping) notice fires `HeartbeatDown`; a Late notice fires `HeartbeatLate`;
/// a recovery resolves both (resolving an alert Alertmanager does not hold is a no-op), and
/// so does a stopped notice (paused or removed while Down: no recovery will come).
pub fn alerts(facts: &Facts, now: Timestamp, resend: Duration) -> Vec<Value> {
    let kinds: &[NoticeKind] = match facts.kind {
        NoticeKind::Recovery | NoticeKind::Stopped => &[NoticeKind::Down, NoticeKind::Late],
        other => &[other][..],
    };
    let ahead = SignedDuration::try_from(resend.saturating_mul(ENDS_AFTER_RESENDS))
        .unwrap_or(SignedDuration::from_hours(1));
    let ends_at = if facts.kind.is_firing() {
        now.saturating_add(ahead).unwrap_or(now)
    } else {
        now.max(facts.opened_at)
    };
    kinds
        .iter()
        .map(|&kind| {
            json!({
                "labels": labels(facts, kind),
                "annotations": annotations(facts),
                "startsAt": rfc3339(facts.opened_at.min(ends_at)),
                "endsAt": rfc3339(ends_at),
                "generatorURL": facts.dashboard_url,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::facts::sample;

    fn now() -> Timestamp {
        "2026-12-05T03:10:00Z".parse().unwrap()
    }

    #[test]
    fn a_down_notice_fires_with_the_documented_labels_and_ends_four_resends_ahead() {
        let body = body(&sample(NoticeKind::Down), now(), DEFAULT_RESEND);
        let alerts = body.as_array().unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            a["labels"],
            json!({"alertname": "HeartbeatDown", "namespace": "team-a",
                   "heartbeat": "nightly-backup", "application": "billing",
                   "severity": "critical"})
        );
        assert_eq!(
            a["annotations"]["summary"],
            "Heartbeat team-a/nightly-backup is down"
        );
        assert_eq!(
            a["annotations"]["runbook_url"],
            "https://runbooks.example.com/nightly-backup"
        );
        assert!(
            a["annotations"]["description"]
                .as_str()
                .unwrap()
                .contains("Exit code: 2.")
        );
        assert_eq!(a["startsAt"], "2026-12-05T03:05:00Z");
        assert_eq!(a["endsAt"], "2026-12-05T03:14:00Z");
        assert_eq!(a["generatorURL"], sample(NoticeKind::Down).dashboard_url);
    }

    #[test]
    fn a_recovery_resolves_down_and_late_with_the_same_labels_and_annotations() {
        let mut f = sample(NoticeKind::Recovery);
        f.since = now();
        let body = body(&f, now(), DEFAULT_RESEND);
        let alerts = body.as_array().unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(
            alerts[0]["labels"],
            Value::Object(labels(&f, NoticeKind::Down))
        );
        assert_eq!(alerts[1]["labels"]["alertname"], "HeartbeatLate");
        assert_eq!(alerts[1]["labels"]["severity"], "warning");
        for a in alerts {
            assert_eq!(a["endsAt"], "2026-12-05T03:10:00Z");
            assert_eq!(a["startsAt"], "2026-12-05T03:05:00Z");
            assert!(a["annotations"]["summary"].is_string());
        }
    }

    #[test]
    fn monitoring_stopped_while_down_ends_the_alerts_now_and_says_why() {
        let mut f = sample(NoticeKind::Stopped);
        f.since = now();
        let body = body(&f, now(), DEFAULT_RESEND);
        let alerts = body.as_array().unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(
            alerts[0]["labels"],
            Value::Object(labels(&sample(NoticeKind::Down), NoticeKind::Down)),
            "the same labels as the Down it ends"
        );
        assert_eq!(alerts[1]["labels"]["alertname"], "HeartbeatLate");
        for a in alerts {
            assert_eq!(a["endsAt"], "2026-12-05T03:10:00Z");
            assert_eq!(
                a["annotations"]["summary"],
                "Heartbeat team-a/nightly-backup is no longer monitored"
            );
        }
        assert_eq!(endpoint("http://am:9093"), "http://am:9093/api/v2/alerts");
    }

    #[test]
    fn without_an_application_the_label_is_left_out_not_empty() {
        let mut f = sample(NoticeKind::Down);
        f.application = None;
        let body = body(&f, now(), DEFAULT_RESEND);
        assert!(body[0]["labels"].get("application").is_none());
    }

    #[test]
    fn several_notices_share_one_list_in_their_order() {
        let mut other = sample(NoticeKind::Down);
        other.name = "hourly-export".into();
        let recovery = sample(NoticeKind::Recovery);
        let list = batch_body(
            [&sample(NoticeKind::Down), &other, &recovery],
            now(),
            DEFAULT_RESEND,
        );
        let alerts = list.as_array().unwrap();
        // A Down is one alert each; the recovery ends HeartbeatDown and HeartbeatLate.
        let named: Vec<(&str, &str)> = alerts
            .iter()
            .map(|a| {
                (
                    a["labels"]["heartbeat"].as_str().unwrap(),
                    a["labels"]["alertname"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                ("nightly-backup", "HeartbeatDown"),
                ("hourly-export", "HeartbeatDown"),
                ("nightly-backup", "HeartbeatDown"),
                ("nightly-backup", "HeartbeatLate"),
            ]
        );
        assert_eq!(
            alerts[1],
            body(&other, now(), DEFAULT_RESEND)[0],
            "each alert as it would be posted alone"
        );
    }
}
