//! PagerDuty's Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`).
//!
//! A Down notice triggers an alert whose `dedup_key` names the monitor
//! (`hartslag/<namespace>/<name>`), so re-sends and a "flapping" notice fold into the one
//! open alert, and the recovery resolves it, whichever incident it closes. PagerDuty opens
//! a new alert for a trigger on a key whose alert is resolved, so the next incident is a
//! new alert all the same. A key per incident left alerts open for good when the notices
//! between two incidents were held and superseded (a flapping spell, the hourly cap): the
//! recovery that was sent named another incident. Notices to one target go in order, so a
//! recovery never overtakes the Down after it.
//!
//! A Late warning is its own alert (key `hartslag/<namespace>/<name>/late`), since a
//! trigger on an open key is dropped as a duplicate and would keep the milder severity; a
//! recovery, or the end of the Late spell, resolves it.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::facts::{Facts, NoticeKind, stamp};

/// Where events go unless a channel says otherwise.
pub const EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty refuses a `payload.summary` longer than this (characters).
const SUMMARY_MAX: usize = 1024;

/// PagerDuty refuses a `dedup_key` longer than this (characters).
const DEDUP_MAX: usize = 255;

/// Hex digits of the digest that stands in for a monitor name too long for the key.
const DIGEST_HEX: usize = 16;

/// The key PagerDuty deduplicates on: one per monitor, and one per monitor's Late warning.
///
/// A namespace and name too long for the key (Kubernetes allows 63 and 253 characters) are
/// cut, followed by a digest of both whole: cutting the end of the key instead made a
/// monitor's Late warning and its Down one alert (the Down, a duplicate, was dropped at the
/// milder severity), and two long names one key.
pub fn dedup_key(facts: &Facts, kind: NoticeKind) -> String {
    let suffix = if kind == NoticeKind::Late {
        "/late"
    } else {
        ""
    };
    let monitor = format!("{}/{}", facts.namespace, facts.name);
    let key = format!("hartslag/{monitor}{suffix}");
    if key.chars().count() <= DEDUP_MAX {
        return key;
    }
    let digest: String = Sha256::digest(monitor.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .take(DIGEST_HEX / 2)
        .collect();
    let room = DEDUP_MAX - "hartslag/".len() - 1 - DIGEST_HEX - suffix.len();
    let head: String = monitor.chars().take(room).collect();
    format!("hartslag/{head}~{digest}{suffix}")
}

fn summary(facts: &Facts) -> String {
    facts.description().chars().take(SUMMARY_MAX).collect()
}

fn trigger(facts: &Facts, routing_key: &str, kind: NoticeKind) -> Value {
    let severity = match kind {
        NoticeKind::Late => "warning",
        _ => facts.severity.as_str(),
    };
    let mut links = vec![json!({"href": facts.dashboard_url, "text": "Hartslag dashboard"})];
    if let Some(url) = &facts.runbook_url {
        links.push(json!({"href": url, "text": "Runbook"}));
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(facts, kind),
        "client": "Hartslag",
        "client_url": facts.dashboard_url,
        "links": links,
        "payload": {
            "summary": summary(facts),
            "source": format!("{}/{}", facts.namespace, facts.name),
            "severity": severity,
            "timestamp": stamp(Some(facts.since)),
            "component": facts.name,
            "group": facts.application.as_deref().unwrap_or(&facts.namespace),
            "class": "heartbeat",
            "custom_details": {
                "state": facts.kind.state(),
                "reason": facts.reason,
                "since": stamp(Some(facts.since)),
                "last_ping": stamp(facts.last_ping_at),
                "last_failure": facts.last_failure_at.map(|t| stamp(Some(t))),
                "expected_at": facts.expected_at.map(|t| stamp(Some(t))),
                "exit_code": facts.exit_code,
                "namespace": facts.namespace,
                "application": facts.application,
            },
        },
    })
}

fn resolve(facts: &Facts, routing_key: &str, kind: NoticeKind) -> Value {
    json!({
        "routing_key": routing_key,
        "event_action": "resolve",
        "dedup_key": dedup_key(facts, kind),
    })
}

/// The events to enqueue for this notice, in order.
pub fn events(facts: &Facts, routing_key: &str) -> Vec<Value> {
    match facts.kind {
        NoticeKind::Down | NoticeKind::Flapping => {
            vec![trigger(facts, routing_key, NoticeKind::Down)]
        }
        NoticeKind::Late => vec![trigger(facts, routing_key, NoticeKind::Late)],
        // Paused or removed while Down: nothing would ever resolve the alert else.
        NoticeKind::Recovery | NoticeKind::Stopped => vec![
            resolve(facts, routing_key, NoticeKind::Down),
            resolve(facts, routing_key, NoticeKind::Late),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::facts::sample;
    use crate::notify::schema;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_down_triggers_and_the_recovery_resolves_the_same_dedup_key() {
        let down = events(&sample(NoticeKind::Down), KEY);
        let up = events(&sample(NoticeKind::Recovery), KEY);
        for e in down.iter().chain(&up) {
            schema::pagerduty(e).unwrap();
        }
        assert_eq!(down[0]["event_action"], "trigger");
        assert_eq!(up[0]["event_action"], "resolve");
        assert_eq!(down[0]["dedup_key"], up[0]["dedup_key"]);
        assert_eq!(down[0]["dedup_key"], "hartslag/team-a/nightly-backup");
        assert_eq!(down[0]["payload"]["severity"], "critical");
        assert_eq!(down[0]["links"][1]["text"], "Runbook");
    }

    #[test]
    fn every_incident_and_flapping_share_the_monitors_key_and_late_warnings_have_their_own() {
        // The recovery of a later incident resolves whatever the monitor left open: notices
        // held and superseded between two incidents leave no alert behind.
        let mut next = sample(NoticeKind::Down);
        next.incident = "1764990000000".into();
        let first = events(&sample(NoticeKind::Down), KEY);
        assert_eq!(events(&next, KEY)[0]["dedup_key"], first[0]["dedup_key"]);
        let flapping = events(&sample(NoticeKind::Flapping), KEY);
        assert_eq!(flapping[0]["event_action"], "trigger");
        assert_eq!(flapping[0]["dedup_key"], first[0]["dedup_key"]);
        let late = events(&sample(NoticeKind::Late), KEY);
        schema::pagerduty(&late[0]).unwrap();
        assert_eq!(late[0]["payload"]["severity"], "warning");
        let up = events(&sample(NoticeKind::Recovery), KEY);
        assert_eq!(up[0]["dedup_key"], first[0]["dedup_key"]);
        assert_eq!(up[1]["dedup_key"], late[0]["dedup_key"]);
        assert_eq!(late[0]["dedup_key"], "hartslag/team-a/nightly-backup/late");
        assert_eq!(events(&next, KEY).len(), 1);
    }

    #[test]
    fn monitoring_stopped_while_down_resolves_what_the_monitor_left_open() {
        let down = events(&sample(NoticeKind::Down), KEY);
        let stopped = events(&sample(NoticeKind::Stopped), KEY);
        for e in &stopped {
            schema::pagerduty(e).unwrap();
            assert_eq!(e["event_action"], "resolve");
        }
        assert_eq!(stopped[0]["dedup_key"], down[0]["dedup_key"]);
        assert_eq!(
            stopped[1]["dedup_key"],
            "hartslag/team-a/nightly-backup/late"
        );
    }

    #[test]
    fn a_trigger_tells_the_last_failure_and_no_made_up_deadline() {
        let mut f = sample(NoticeKind::Down);
        f.last_ping_at = None;
        f.expected_at = None;
        let e = &events(&f, KEY)[0];
        schema::pagerduty(e).unwrap();
        let details = &e["payload"]["custom_details"];
        assert_eq!(details["last_ping"], "never");
        assert_eq!(details["last_failure"], "2026-12-05T03:05:00Z");
        assert_eq!(details["expected_at"], Value::Null);
        let summary = e["payload"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("Last success: never; last failure: 2026-12-05T03:05:00Z."),
            "{summary}"
        );
    }

    #[test]
    fn long_names_keep_their_keys_apart_within_the_limit() {
        let long = |name: &str| {
            let mut f = sample(NoticeKind::Down);
            f.namespace = "n".repeat(63);
            f.name = format!("{}{name}", "x".repeat(240));
            f
        };
        let (a, b) = (long("-a"), long("-b"));
        let keys = [
            dedup_key(&a, NoticeKind::Down),
            dedup_key(&a, NoticeKind::Late),
            dedup_key(&b, NoticeKind::Down),
            dedup_key(&b, NoticeKind::Late),
        ];
        for k in &keys {
            assert!(k.chars().count() <= 255, "{k}");
            assert!(k.starts_with("hartslag/nnn"), "{k}");
            schema::pagerduty(&events(&a, KEY)[0]).unwrap();
        }
        let mut distinct = keys.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{keys:?}");
        assert!(keys[1].ends_with("/late"));
        assert_eq!(
            dedup_key(&a, NoticeKind::Down),
            dedup_key(&a, NoticeKind::Recovery)
        );
    }

    #[test]
    fn a_long_reason_is_cut_to_the_summary_limit() {
        let mut f = sample(NoticeKind::Down);
        f.reason = "é".repeat(3000);
        let e = &events(&f, KEY)[0];
        schema::pagerduty(e).unwrap();
        assert_eq!(
            e["payload"]["summary"].as_str().unwrap().chars().count(),
            1024
        );
    }
}
