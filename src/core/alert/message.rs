//! What an alert says, rendered for email and for webhooks. Pure; no I/O.
//!
//! People read these at 3 a.m.: the subject names the monitor and the state, the body says
//! what happened, when it last pinged, when it was expected and how to ping it — never the
//! token itself.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Down, back up, or flipping between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The monitor went Down.
    Down,
    /// The monitor is Late (a warning before Down, for channels with `notifyLate`).
    Late,
    /// The monitor pinged again after a Late warning, before it was Down: the warning is
    /// over (sent where the warning went).
    OnTime,
    /// The monitor is Up again after a Down alert.
    Recovery,
    /// The monitor went Down and up so often that its notices are held until it settles
    /// (sent once, by the delivery scheduler, instead of each pair).
    Flapping,
    /// Monitoring stopped while the monitor was Down (it was paused, removed or
    /// suspended): its incident is closed where it is open (PagerDuty, Alertmanager) and
    /// people are told nobody watches it any more. Goes wherever a recovery would.
    Stopped,
}

/// One alert about one monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id (monitor, incident, kind): enqueueing it twice delivers it once.
    pub id: String,
    /// Down or recovery.
    pub kind: AlertKind,
    /// Monitor name (the resource name).
    pub monitor: String,
    /// Human name, when the spec has one.
    pub display_name: Option<String>,
    /// Namespace and application: where to find it.
    pub scope: String,
    /// What happened, in words.
    pub reason: String,
    /// When it went Down or recovered.
    pub occurred_at: Timestamp,
    /// Last successful ping.
    pub last_ping_at: Option<Timestamp>,
    /// Last failure signal (`/fail`, a non-zero exit code, a failed Job, the Watchdog
    /// resolved): told beside the last success, so a job that pinged only with failures
    /// does not read as one that never pinged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<Timestamp>,
    /// When a ping was expected.
    pub expected_at: Option<Timestamp>,
    /// How to ping it, without the token.
    pub ping_hint: String,
    /// The monitor's namespace (empty in alerts stored before it was recorded: then read
    /// from the id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Its Application's name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// When the incident opened (its Down): equal to `occurred_at` on a Down alert, earlier
    /// on its recovery. Names the incident for providers that deduplicate (PagerDuty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<Timestamp>,
    /// The Heartbeat's runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook_url: Option<String>,
    /// The failing run's exit code, on a Down a run reported with one (`/fail?exit_code=`,
    /// a failed Job's container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// 0 for the notice itself; n for its n-th repetition while the monitor stays Down
    /// (`repeatEvery`, Alertmanager's re-send).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeat: u32,
    /// The Heartbeat's (or its Application's) policy, over each channel's.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub policy: crate::core::channel::AlertPolicy,
    /// The Heartbeat's maintenance windows: no notices inside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<crate::core::channel::MaintenanceWindow>,
}

fn is_default_policy(p: &crate::core::channel::AlertPolicy) -> bool {
    *p == crate::core::channel::AlertPolicy::default()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where an alert goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Target {
    /// One email to these addresses.
    Email {
        /// Recipients.
        to: Vec<String>,
    },
    /// A JSON POST to this URL.
    Webhook {
        /// URL.
        url: String,
    },
    /// An alert channel the front end resolved ([`ChannelBook`](super::channels::ChannelBook)
    /// holds where it delivers, secrets included; the outbox stores only its name).
    Channel {
        /// Which channel.
        channel: super::channels::ChannelRef,
    },
}

impl Target {
    /// Who receives it, as one string: alerts to one identity share a delivery queue, its
    /// order and its notification cap, whichever monitors raised them.
    pub fn identity(&self) -> String {
        use sha2::Digest as _;
        let (kind, who) = match self {
            Target::Email { to } => {
                let mut to = to.clone();
                to.sort();
                ("email", to.join(","))
            }
            Target::Webhook { url } => ("webhook", url.clone()),
            Target::Channel { channel } => ("channel", channel.to_string()),
        };
        let digest = sha2::Sha256::digest(who.as_bytes());
        format!("{kind}:{}", hex::encode(&digest[..8]))
    }
}

/// The targets a monitor alerts: its own, else its Application's, else the server's
/// default webhook.
pub fn resolve_targets(
    own: Option<&crate::core::spec::AlertTargets>,
    application: Option<&crate::core::spec::AlertTargets>,
    default_webhook: Option<&str>,
) -> Vec<Target> {
    let chosen = [own, application]
        .into_iter()
        .flatten()
        .find(|a| !a.is_empty());
    let mut out = Vec::new();
    match chosen {
        Some(a) => {
            if !a.email.is_empty() {
                out.push(Target::Email {
                    to: a.email.clone(),
                });
            }
            if let Some(url) = &a.webhook {
                out.push(Target::Webhook { url: url.clone() });
            }
        }
        None => {
            if let Some(url) = default_webhook {
                out.push(Target::Webhook {
                    url: url.to_string(),
                });
            }
        }
    }
    out
}

/// "2h 5m" style: the two largest units.
pub fn human_duration(secs: i64) -> String {
    HumanDuration::of(secs).to_string()
}

/// A duration in words as [`human_duration`] writes it, written straight into whatever
/// formats it: a herd's Downs each say two or three durations, and building each as
/// strings of its own cost the engine thread a tenth of a Down's step.
#[derive(Debug, Clone, Copy)]
pub struct HumanDuration(u64);

impl HumanDuration {
    /// `secs` seconds, either side of now.
    pub fn of(secs: i64) -> Self {
        Self(secs.unsigned_abs())
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
        let (mut rest, mut written) = (self.0, 0);
        for (size, name) in units {
            if rest >= size && written < 2 {
                if written > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{}{name}", rest / size)?;
                rest %= size;
                written += 1;
            } else if written > 0 {
                break;
            }
        }
        if written == 0 {
            f.write_str("0s")?;
        }
        Ok(())
    }
}

fn when(at: Option<Timestamp>, now: Timestamp) -> String {
    match at {
        None => "never".into(),
        Some(t) => {
            let d = now.duration_since(t).as_secs();
            let rel = if d >= 0 {
                format!("{} ago", human_duration(d))
            } else {
                format!("in {}", human_duration(d))
            };
            format!("{} ({rel})", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
        }
    }
}

/// The links an alert carries where its Heartbeat (and the server) has them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Links<'a> {
    /// The monitor's dashboard page, absolute (`<external URL>/ui/monitors/<ns>/<name>`).
    pub dashboard: Option<&'a str>,
}

impl Alert {
    /// The monitor's `namespace/name`: the id without its instant and kind.
    pub fn monitor_key(&self) -> &str {
        self.id.rsplitn(3, ':').last().unwrap_or(&self.id)
    }

    /// The monitor's namespace.
    pub fn namespace(&self) -> &str {
        if self.namespace.is_empty() {
            self.monitor_key().split('/').next().unwrap_or_default()
        } else {
            &self.namespace
        }
    }

    /// When the incident this alert belongs to opened.
    pub fn incident_opened_at(&self) -> Timestamp {
        self.opened_at.unwrap_or(self.occurred_at)
    }

    /// The `n`-th repetition of this Down alert (a new id, so it is queued and recorded
    /// on its own).
    pub fn repetition(&self, n: u32) -> Alert {
        Alert {
            id: match self.id.rsplit_once(':') {
                Some((head, last)) => {
                    let kind = last.split_once("-r").map_or(last, |(k, _)| k);
                    format!("{head}:{kind}-r{n}")
                }
                None => format!("{}-r{n}", self.id),
            },
            repeat: n,
            ..self.clone()
        }
    }

    /// The notice that `self`'s monitor is flapping, having raised `notices` alerts within
    /// `window`: it replaces the alerts that follow until the monitor settles.
    pub fn flapping(&self, notices: usize, window: std::time::Duration, now: Timestamp) -> Alert {
        let window = human_duration(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
        Alert {
            id: format!("{}:{}:flapping", self.monitor_key(), now.as_millisecond()),
            kind: AlertKind::Flapping,
            reason: format!(
                "{notices} Down and recovery notices within {window}; further notices are held until it has been stable for {window}, then the last one is sent"
            ),
            occurred_at: now,
            ..self.clone()
        }
    }

    /// `self` sent as the first notice after a flapping spell: it tells the state the
    /// monitor settled in.
    pub fn settled(&self, held: usize) -> Alert {
        let mut a = self.clone();
        a.reason = format!(
            "{} (stable again after flapping; {held} notice{} held meanwhile)",
            self.reason,
            if held == 1 { "" } else { "s" }
        );
        a
    }

    /// The name people know the monitor by.
    pub fn title(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.monitor)
    }

    fn state_word(&self) -> &'static str {
        match self.kind {
            AlertKind::Down => "DOWN",
            AlertKind::Late => "LATE",
            AlertKind::OnTime => "ON TIME",
            AlertKind::Recovery => "RECOVERED",
            AlertKind::Flapping => "FLAPPING",
            AlertKind::Stopped => "NO LONGER MONITORED",
        }
    }

    /// The last failure when it is newer than the last success (an older one is over),
    /// with the failing run's exit code when this alert knows it.
    pub fn failure_since_success(&self) -> Option<(Timestamp, Option<u8>)> {
        let failed = self.last_failure_at?;
        if self.last_ping_at.is_some_and(|ok| ok >= failed) {
            return None;
        }
        Some((failed, self.exit_code))
    }

    /// "Last success: never; last failure: 2024-05-01T03:05:00Z (5m ago), exit code 7":
    /// what the monitor last heard, true whichever kinds of signal it got.
    pub fn last_heard(&self, now: Timestamp) -> String {
        let mut text = format!("Last success: {}", when(self.last_ping_at, now));
        if let Some((at, code)) = self.failure_since_success() {
            text.push_str(&format!("; last failure: {}", when(Some(at), now)));
            if let Some(code) = code {
                text.push_str(&format!(", exit code {code}"));
            }
        }
        text
    }

    /// Email subject.
    pub fn subject(&self) -> String {
        format!(
            "[Hartslag] {}: {} ({})",
            self.state_word(),
            self.title(),
            self.scope
        )
    }

    /// The email's first line: the monitor and what became of it.
    fn headline(&self) -> String {
        match self.kind {
            AlertKind::Down => format!("Heartbeat monitor \"{}\" is DOWN.", self.title()),
            AlertKind::Late => format!(
                "Heartbeat monitor \"{}\" is LATE: it will be Down when its grace ends.",
                self.title()
            ),
            AlertKind::OnTime => format!(
                "Heartbeat monitor \"{}\" pinged again after being Late; it did not go Down.",
                self.title()
            ),
            AlertKind::Recovery => format!(
                "Heartbeat monitor \"{}\" has RECOVERED and is up again.",
                self.title()
            ),
            AlertKind::Flapping => format!(
                "Heartbeat monitor \"{}\" is FLAPPING between Down and up.",
                self.title()
            ),
            AlertKind::Stopped => format!(
                "Heartbeat monitor \"{}\" is NO LONGER MONITORED: it was Down when monitoring stopped.",
                self.title()
            ),
        }
    }

    /// Plain-text email body, with the runbook and the dashboard page where there are.
    pub fn body(&self, links: Links<'_>) -> String {
        let now = self.occurred_at;
        let mut body = format!(
            "{headline}\n\n\
             Monitor:       {monitor}\n\
             Where:         {scope}\n\
             What happened: {reason}\n\
             When:          {at}\n\
             Last success:  {last}\n",
            headline = self.headline(),
            monitor = self.monitor,
            scope = self.scope,
            reason = self.reason,
            at = self.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            last = when(self.last_ping_at, now),
        );
        if let Some((at, code)) = self.failure_since_success() {
            let code = code.map_or(String::new(), |c| format!(", exit code {c}"));
            body.push_str(&format!("Last failure:  {}{code}\n", when(Some(at), now)));
        }
        if let Some(expected) = self.expected_at {
            body.push_str(&format!("Expected by:   {}\n", when(Some(expected), now)));
        }
        if let Some(url) = &self.runbook_url {
            body.push_str(&format!("Runbook:       {url}\n"));
        }
        if let Some(url) = links.dashboard {
            body.push_str(&format!("Dashboard:     {url}\n"));
        }
        body.push_str(&format!(
            "\nHow to ping it:\n  {hint}\n\n-- \nHartslag, alert {id}\n",
            hint = self.ping_hint,
            id = self.id,
        ));
        body
    }

    /// Webhook payload: Slack-compatible `text` plus structured fields (fields are only
    /// ever added: receivers parse them).
    pub fn webhook_json(&self, links: Links<'_>) -> serde_json::Value {
        let event = match self.kind {
            AlertKind::Down => "down",
            AlertKind::Late => "late",
            AlertKind::OnTime => "on_time",
            AlertKind::Recovery => "recovery",
            AlertKind::Flapping => "flapping",
            AlertKind::Stopped => "stopped",
        };
        let mut text = format!(
            "{} {}: {} ({}) — {}. {}.",
            match self.kind {
                AlertKind::Down => ":red_circle:",
                AlertKind::Late => ":large_yellow_circle:",
                AlertKind::OnTime => ":large_green_circle:",
                AlertKind::Recovery => ":large_green_circle:",
                AlertKind::Flapping => ":large_orange_circle:",
                AlertKind::Stopped => ":white_circle:",
            },
            self.state_word(),
            self.title(),
            self.scope,
            self.reason,
            self.last_heard(self.occurred_at),
        );
        if let Some(url) = &self.runbook_url {
            text.push_str(&format!(" Runbook: {url}"));
        }
        if let Some(url) = links.dashboard {
            text.push_str(&format!(" Dashboard: {url}"));
        }
        serde_json::json!({
            "text": text,
            "event": event,
            "alert_id": self.id,
            "monitor": {
                "name": self.monitor,
                "display_name": self.display_name,
                "scope": self.scope,
            },
            "reason": self.reason,
            "occurred_at": self.occurred_at.to_string(),
            "last_ping_at": self.last_ping_at.map(|t| t.to_string()),
            "expected_at": self.expected_at.map(|t| t.to_string()),
            "exit_code": self.exit_code,
            "ping_hint": self.ping_hint,
            "last_failure_at": self.last_failure_at.map(|t| t.to_string()),
            "runbook_url": self.runbook_url,
            "dashboard_url": links.dashboard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: AlertKind) -> Alert {
        Alert {
            id: "team-a/backup:1:down".into(),
            kind,
            monitor: "backup".into(),
            display_name: Some("Nightly backup".into()),
            scope: "namespace team-a".into(),
            reason: "no ping for 1h 5m (interval 1h, grace 5m)".into(),
            occurred_at: "2024-05-01T03:05:00Z".parse().unwrap(),
            last_ping_at: Some("2024-05-01T02:00:00Z".parse().unwrap()),
            last_failure_at: None,
            expected_at: Some("2024-05-01T03:00:00Z".parse().unwrap()),
            ping_hint: "curl -fsS \"$PING_URL\" (ping-url in Secret team-a/backup-heartbeat)"
                .into(),
            namespace: String::new(),
            application: None,
            opened_at: None,
            runbook_url: None,
            exit_code: None,
            repeat: 0,
            policy: Default::default(),
            maintenance: Vec::new(),
        }
    }

    #[test]
    fn email_says_what_when_and_how() {
        let a = alert(AlertKind::Down);
        assert_eq!(
            a.subject(),
            "[Hartslag] DOWN: Nightly backup (namespace team-a)"
        );
        let body = a.body(Links::default());
        for needle in [
            "is DOWN",
            "Monitor:       backup",
            "namespace team-a",
            "no ping for 1h 5m",
            "Last success:  2024-05-01T02:00:00Z (1h 5m ago)",
            "Expected by:   2024-05-01T03:00:00Z (5m ago)",
            "ping-url in Secret team-a/backup-heartbeat",
        ] {
            assert!(body.contains(needle), "missing {needle:?} in\n{body}");
        }
        let r = alert(AlertKind::Recovery);
        assert!(
            r.subject()
                .starts_with("[Hartslag] RECOVERED: Nightly backup")
        );
    }

    #[test]
    fn webhook_has_text_and_fields() {
        let v = alert(AlertKind::Down).webhook_json(Links::default());
        assert_eq!(v["event"], "down");
        assert_eq!(v["monitor"]["name"], "backup");
        assert_eq!(v["last_ping_at"], "2024-05-01T02:00:00Z");
        assert!(
            v["text"]
                .as_str()
                .unwrap()
                .contains("DOWN: Nightly backup (namespace team-a)")
        );
    }

    #[test]
    fn email_and_the_default_webhook_carry_the_runbook_and_the_dashboard() {
        let mut a = alert(AlertKind::Down);
        a.runbook_url = Some("https://runbooks.example.com/backup".into());
        let links = Links {
            dashboard: Some("https://hartslag.example.com/ui/monitors/team-a/backup"),
        };
        let body = a.body(links);
        assert!(
            body.contains("Runbook:       https://runbooks.example.com/backup\n"),
            "{body}"
        );
        assert!(
            body.contains(
                "Dashboard:     https://hartslag.example.com/ui/monitors/team-a/backup\n"
            ),
            "{body}"
        );
        let v = a.webhook_json(links);
        assert_eq!(v["runbook_url"], "https://runbooks.example.com/backup");
        assert_eq!(
            v["dashboard_url"],
            "https://hartslag.example.com/ui/monitors/team-a/backup"
        );
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains("Runbook: https://runbooks.example.com/backup"),
            "{text}"
        );
        // Without them, nothing is made up.
        a.runbook_url = None;
        assert!(!a.body(Links::default()).contains("Runbook"));
        let v = a.webhook_json(Links::default());
        assert_eq!(v["runbook_url"], serde_json::Value::Null);
        assert_eq!(v["dashboard_url"], serde_json::Value::Null);
    }

    #[test]
    fn a_job_that_only_failed_reads_as_having_failed_not_as_never_pinged() {
        let mut a = alert(AlertKind::Down);
        a.last_ping_at = None;
        a.last_failure_at = Some("2024-05-01T03:04:00Z".parse().unwrap());
        a.exit_code = Some(7);
        a.expected_at = None;
        let body = a.body(Links::default());
        assert!(body.contains("Last success:  never\n"), "{body}");
        assert!(
            body.contains("Last failure:  2024-05-01T03:04:00Z (1m ago), exit code 7\n"),
            "{body}"
        );
        assert!(
            !body.contains("Expected by"),
            "no deadline, no line: {body}"
        );
        let v = a.webhook_json(Links::default());
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains(
                "Last success: never; last failure: 2024-05-01T03:04:00Z (1m ago), exit code 7."
            ),
            "{text}"
        );
        assert_eq!(v["last_failure_at"], "2024-05-01T03:04:00Z");
        assert_eq!(v["last_ping_at"], serde_json::Value::Null);
        // A failure before the last success is over: not told as the last thing heard.
        a.last_ping_at = Some("2024-05-01T03:04:30Z".parse().unwrap());
        assert!(!a.body(Links::default()).contains("Last failure"));
    }

    #[test]
    fn flapping_and_settled_notices_say_so() {
        let a = alert(AlertKind::Down);
        assert_eq!(a.monitor_key(), "team-a/backup");
        let now: Timestamp = "2024-05-01T03:30:00Z".parse().unwrap();
        let f = a.flapping(7, std::time::Duration::from_secs(1800), now);
        assert_eq!(
            f.id,
            format!("team-a/backup:{}:flapping", now.as_millisecond())
        );
        assert_eq!(f.monitor_key(), "team-a/backup");
        assert!(
            f.subject()
                .starts_with("[Hartslag] FLAPPING: Nightly backup")
        );
        assert!(
            f.body(Links::default())
                .contains("7 Down and recovery notices within 30m"),
            "{}",
            f.body(Links::default())
        );
        assert_eq!(f.webhook_json(Links::default())["event"], "flapping");
        let s = a.settled(3);
        assert!(
            s.reason
                .ends_with("(stable again after flapping; 3 notices held meanwhile)")
        );
        let one = Target::Email {
            to: vec!["b@x.io".into(), "a@x.io".into()],
        };
        let same = Target::Email {
            to: vec!["a@x.io".into(), "b@x.io".into()],
        };
        assert_eq!(one.identity(), same.identity());
        assert_ne!(
            one.identity(),
            Target::Webhook {
                url: "https://x.io".into()
            }
            .identity()
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(3900), "1h 5m");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(90_061), "1d 1h");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(-3_600), "1h");
        assert_eq!(
            human_duration(86_400 + 59),
            "1d",
            "the two largest units, in a row"
        );
    }
}
