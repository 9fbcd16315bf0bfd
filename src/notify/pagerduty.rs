//! PagerDuty's Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`).
//!
//! A Down notice triggers an alert whose `dedup_key` names the monitor and the incident, so
//! re-sends fold into one PagerDuty alert and the recovery resolves exactly that one; the
//! next incident gets a new key and so a new alert. A Late warning is its own alert (key
//! `hartslag/<namespace>/<name>/late`, one per monitor: a Late episode comes before the
//! incident it may open), since a trigger on an open key is dropped as a duplicate and
//! would keep the milder severity; a recovery, or the end of the Late spell, resolves it.

use serde_json::{Value, json};

use super::facts::{Facts, NoticeKind, stamp};

/// Where events go unless a channel says otherwise.
pub const EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty refuses a `payload.summary` longer than this (characters).
const SUMMARY_MAX: usize = 1024;

/// The key PagerDuty deduplicates on: stable for one monitor and incident, and for one
/// monitor's Late warning (≤ 255 chars).
pub fn dedup_key(facts: &Facts, kind: NoticeKind) -> String {
    let key = match kind {
        NoticeKind::Late => format!("hartslag/{}/{}/late", facts.namespace, facts.name),
        _ => format!(
            "hartslag/{}/{}/{}",
            facts.namespace, facts.name, facts.incident
        ),
    };
    key.chars().take(255).collect()
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
                "expected_at": stamp(facts.expected_at),
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
        NoticeKind::Recovery => vec![
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
        assert_eq!(
            down[0]["dedup_key"],
            "hartslag/team-a/nightly-backup/1764903900000"
        );
        assert_eq!(down[0]["payload"]["severity"], "critical");
        assert_eq!(down[0]["links"][1]["text"], "Runbook");
    }

    #[test]
    fn the_next_incident_gets_a_new_key_and_late_warnings_their_own() {
        let mut next = sample(NoticeKind::Down);
        next.incident = "1764990000000".into();
        let first = events(&sample(NoticeKind::Down), KEY);
        assert_ne!(events(&next, KEY)[0]["dedup_key"], first[0]["dedup_key"]);
        let late = events(&sample(NoticeKind::Late), KEY);
        schema::pagerduty(&late[0]).unwrap();
        assert_eq!(late[0]["payload"]["severity"], "warning");
        let up = events(&sample(NoticeKind::Recovery), KEY);
        assert_eq!(up[1]["dedup_key"], late[0]["dedup_key"]);
        // The Late warning's key does not depend on the incident the Down opens later.
        assert_eq!(late[0]["dedup_key"], "hartslag/team-a/nightly-backup/late");
        assert_eq!(events(&next, KEY).len(), 1);
        let mut later_up = sample(NoticeKind::Recovery);
        later_up.incident = "1764990000000".into();
        assert_eq!(events(&later_up, KEY)[1]["dedup_key"], late[0]["dedup_key"]);
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
