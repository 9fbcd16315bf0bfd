//! Alertmanager as a monitored thing: `POST /v1/heartbeats/{token}/alertmanager` accepts
//! Alertmanager's webhook JSON and counts a firing `Watchdog` alert (Prometheus'
//! always-firing alert) as a ping, so the alerting pipeline itself is watched by a
//! dead-man's switch. Point a route for `alertname="Watchdog"` at it with a
//! `repeat_interval` shorter than the Heartbeat's interval.
//!
//! - a notification holding a firing alert named `alertname` (query parameter, default
//!   `Watchdog`) is a success ping;
//! - a notification that says that alert resolved is a failure ping: the pipeline stopped
//!   firing it, which is what the switch is there to catch;
//! - one without that alert is refused (422, naming it) and records nothing, so a route
//!   sending other alerts here cannot keep the Heartbeat up.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use super::pings::{monitor_of, not_found, record, source, split, user_agent};
use crate::core::monitor::engine::{PingInput, PingKind};
use crate::http::HttpState;
use crate::http::body::read_body;
use crate::http::error::ApiError;
use crate::http::path::Segment;

/// The only webhook payload version Alertmanager has sent since 0.x.
const VERSION: &str = "4";

/// Routes of this family.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/heartbeats/{token}/alertmanager", post(receive))
}

/// The parts of Alertmanager's webhook payload that decide.
#[derive(Debug, Deserialize)]
struct Notification {
    version: String,
    #[serde(default)]
    receiver: String,
    alerts: Vec<AlertItem>,
}

#[derive(Debug, Deserialize)]
struct AlertItem {
    status: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

/// What a notification means for the Heartbeat.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Alive,
    Stopped,
    Unrelated,
}

fn judge(n: &Notification, alertname: &str) -> Verdict {
    let named = || {
        n.alerts
            .iter()
            .filter(|a| a.labels.get("alertname").map(String::as_str) == Some(alertname))
    };
    if named().any(|a| a.status == "firing") {
        Verdict::Alive
    } else if named().any(|a| a.status == "resolved") {
        Verdict::Stopped
    } else {
        Verdict::Unrelated
    }
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> Response {
    ApiError::new(status, msg).into_response()
}

async fn receive(
    State(state): State<HttpState>,
    Segment(token): Segment,
    Query(params): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let (headers, peer, body) = split(req);
    let Some(key) = monitor_of(&state, &token).await else {
        return not_found();
    };
    let bytes = match read_body(body, state.max_body_bytes, state.limits.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let n: Notification = match serde_json::from_slice(&bytes) {
        Ok(n) => n,
        Err(e) => {
            let msg = format!("the body is not an Alertmanager webhook notification: {e}");
            return refuse(StatusCode::BAD_REQUEST, msg);
        }
    };
    if n.version != VERSION {
        let msg = format!(
            "Alertmanager webhook version {:?} is not supported (expected \"4\")",
            n.version
        );
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, msg);
    }
    let alertname = params.get("alertname").map_or("Watchdog", String::as_str);
    let (kind, note) = match judge(&n, alertname) {
        Verdict::Alive => (PingKind::Success, "firing"),
        Verdict::Stopped => (
            PingKind::Fail,
            "resolved: the alerting pipeline stopped firing it",
        ),
        Verdict::Unrelated => {
            let msg = format!(
                "the notification holds no alert named {alertname:?} (set ?alertname= to the alert this route sends)"
            );
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, msg);
        }
    };
    let user_agent = user_agent(&headers);
    let input = PingInput {
        kind,
        // Nobody reported an exit code: Down says the pipeline stopped firing the alert.
        exit_code: None,
        stopped_alert: (kind == PingKind::Fail).then(|| alertname.to_string()),
        source: source(&headers, peer, &state.trusted_proxies),
        user_agent,
        body: Some(format!(
            "Alertmanager receiver {:?}: {alertname} {note}",
            n.receiver.chars().take(200).collect::<String>()
        )),
        rid: None,
    };
    record(&state, &key, input).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(json: &str) -> Notification {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_firing_watchdog_is_alive_a_resolved_one_stopped_others_unrelated() {
        let firing = notification(
            r#"{"receiver":"hartslag","status":"firing","version":"4","groupKey":"{}","truncatedAlerts":0,
                "alerts":[{"status":"firing","labels":{"alertname":"Watchdog","severity":"none"},
                "annotations":{},"startsAt":"2026-12-04T21:50:16Z","endsAt":"0001-01-01T00:00:00Z",
                "generatorURL":"http://prometheus/graph","fingerprint":"4ff54f8bfc17f2c6"}]}"#,
        );
        assert_eq!(judge(&firing, "Watchdog"), Verdict::Alive);
        assert_eq!(judge(&firing, "DeadMansSwitch"), Verdict::Unrelated);
        let resolved = notification(
            r#"{"version":"4","alerts":[{"status":"resolved","labels":{"alertname":"Watchdog"}}]}"#,
        );
        assert_eq!(judge(&resolved, "Watchdog"), Verdict::Stopped);
        let other = notification(
            r#"{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"HeartbeatDown"}}]}"#,
        );
        assert_eq!(judge(&other, "Watchdog"), Verdict::Unrelated);
    }
}
