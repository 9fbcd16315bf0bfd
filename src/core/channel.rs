//! Alert channels as resources (`AlertChannel`, `ClusterAlertChannel`, and the same
//! documents in standalone manifests): where alerts go, and the policy for sending them.
//!
//! One spec type serves both front ends, as for Heartbeats. A secret-bearing field comes in
//! two spellings: `...SecretRef` (a key of a Secret, Kubernetes) and `...File` (a file
//! path, standalone); each front end accepts only its own, so a channel is checked with the
//! [`Secrets`] flavour of the front end reading it. Exactly one kind of target is set.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::duration::SpecDuration;
use crate::core::spec::SecretKeyRef;

/// Alertmanager's own default re-send interval.
pub const DEFAULT_RESEND_INTERVAL: SpecDuration = SpecDuration::from_secs(60);

/// Alert severity (`severity` on a channel; default `critical`): the Alertmanager label and
/// PagerDuty's `payload.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Wake someone.
    #[default]
    Critical,
    /// Something failed; look soon.
    Error,
    /// Worth a look.
    Warning,
    /// For the record.
    Info,
}

impl Severity {
    /// The spelling Alertmanager and PagerDuty share.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// When to notify, on a channel or a Heartbeat (the Heartbeat's value wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertPolicy {
    /// Escalation delay: notify only once Down has lasted this long (a recovery before
    /// then sends nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_after: Option<SpecDuration>,
    /// Notify again at this period while the monitor stays Down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_every: Option<SpecDuration>,
    /// Also send a warning when the monitor is Late, before it is Down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_late: Option<bool>,
}

/// A recurring window without notifications: from each time the cron `schedule` fires, for
/// `duration`, in `timeZone`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When each window starts: a cron expression (5 fields, or `@daily` and the like).
    pub schedule: String,
    /// How long each window lasts.
    pub duration: SpecDuration,
    /// IANA time zone of the schedule. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Alertmanager's API v2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerTarget {
    /// Alertmanager's base URL (`http://alertmanager.monitoring:9093`); alerts are posted
    /// to `<url>/api/v2/alerts`.
    pub url: String,
    /// How often an active alert is sent again, as Alertmanager expects of its clients.
    /// Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_interval: Option<SpecDuration>,
}

/// PagerDuty's Events API v2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagerDutyTarget {
    /// The integration's routing key, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_secret_ref: Option<SecretKeyRef>,
    /// Standalone mode: a file holding the routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_file: Option<String>,
    /// The Events API endpoint. Default `https://events.pagerduty.com/v2/enqueue`; the EU
    /// service region uses `https://events.eu.pagerduty.com/v2/enqueue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A chat webhook whose URL is a secret (Slack incoming webhook, Teams Workflows webhook).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatTarget {
    /// The webhook URL, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,
    /// Standalone mode: a file holding the webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_file: Option<String>,
}

/// A generic JSON POST.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTarget {
    /// The URL, when it is no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The URL, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Standalone mode: a file holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<String>,
    /// Extra request headers, from a Secret holding `Name: value` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretKeyRef>,
    /// Standalone mode: a file of `Name: value` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_file: Option<String>,
    /// A minijinja template of the JSON body; variables `name`, `namespace`,
    /// `display_name`, `application`, `state`, `event`, `reason`, `since`, `last_ping`,
    /// `expected_at`, `exit_code`, `dashboard_url`, `runbook_url`, `severity`, `incident`.
    /// Default: Hartslag's own JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// Email.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailTarget {
    /// Recipients.
    pub to: Vec<String>,
}

/// An alert channel: exactly one kind of target, its severity and its policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertChannelSpec {
    /// Alertmanager's API v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerTarget>,
    /// PagerDuty's Events API v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<PagerDutyTarget>,
    /// A Slack incoming webhook (Block Kit message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<ChatTarget>,
    /// A Microsoft Teams Workflows webhook (Adaptive Card).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<ChatTarget>,
    /// A generic JSON POST, optionally templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
    /// Email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailTarget>,
    /// Severity of the alerts sent here. Default critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// When to notify.
    #[serde(flatten)]
    pub policy: AlertPolicy,
    /// Windows without notifications through this channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,
}

/// Which spelling of secret-bearing fields a front end reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// `...SecretRef`: a key of a Secret in the channel's namespace.
    Kubernetes,
    /// `...File`: a file path.
    Files,
}

/// The one kind of target a channel holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Alertmanager.
    Alertmanager,
    /// PagerDuty.
    PagerDuty,
    /// Slack.
    Slack,
    /// Teams.
    Teams,
    /// Generic webhook.
    Webhook,
    /// Email.
    Email,
}

impl ChannelKind {
    /// The field that selects it.
    pub fn field(self) -> &'static str {
        match self {
            ChannelKind::Alertmanager => "alertmanager",
            ChannelKind::PagerDuty => "pagerduty",
            ChannelKind::Slack => "slack",
            ChannelKind::Teams => "teams",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
        }
    }
}

/// A channel spec that cannot be used, in words that name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No kind, or more than one.
    #[error(
        "spec must set exactly one of alertmanager, pagerduty, slack, teams, webhook, email (found {0})"
    )]
    NotExactlyOne(String),
    /// A URL that is not http(s).
    #[error("spec.{0} {1:?} is not an http:// or https:// URL")]
    Url(&'static str, String),
    /// An Alertmanager URL that holds the API's path: alerts would go to
    /// `.../api/v2/alerts/api/v2/alerts`, which answers 404.
    #[error(
        "spec.alertmanager.url {0:?} includes the API path; give Alertmanager's base URL (such as http://alertmanager.monitoring:9093, with its --web.route-prefix if it has one): Hartslag posts to <url>/api/v2/alerts itself"
    )]
    AlertmanagerPath(String),
    /// A required secret is missing, or given in the other front end's spelling.
    #[error("spec.{field}: set {wanted}{other}")]
    Secret {
        /// Where.
        field: &'static str,
        /// What this front end reads.
        wanted: &'static str,
        /// A note when the other spelling was used.
        other: &'static str,
    },
    /// Both a URL and a secret URL.
    #[error("spec.webhook: set one of url, urlSecretRef or urlFile")]
    TwoUrls,
    /// No recipient, or one without an `@`.
    #[error("spec.email.to {0:?} is not a list of email addresses")]
    Email(String),
    /// A duration of zero where it would mean "always".
    #[error("spec.{0} must be at least 1s")]
    ZeroDuration(&'static str),
    /// A maintenance window without a schedule or a duration.
    #[error("spec.maintenance[{0}]: {1}")]
    Maintenance(usize, String),
}

fn http_url(field: &'static str, url: &str) -> Result<(), ChannelError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ChannelError::Url(field, url.into()))
    }
}

/// Refuses an Alertmanager URL ending in the API's path (`/api/v2/alerts`, `/api/v1`, ...)
/// rather than guessing what else it may mean: the field is the base URL, as Prometheus'
/// own `alertmanagers` setting takes it.
fn alertmanager_base(url: &str) -> Result<(), ChannelError> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let api = ["/api/v1", "/api/v2", "/api/v1/alerts", "/api/v2/alerts"];
    if api.iter().any(|suffix| path.ends_with(suffix)) {
        return Err(ChannelError::AlertmanagerPath(url.to_string()));
    }
    Ok(())
}

/// Checks that the secret is given once, in the spelling `secrets` reads.
fn secret(
    field: &'static str,
    secrets: Secrets,
    secret_ref: Option<&SecretKeyRef>,
    file: Option<&String>,
    names: (&'static str, &'static str),
) -> Result<(), ChannelError> {
    let (wanted, other_given) = match secrets {
        Secrets::Kubernetes => (names.0, file.is_some()),
        Secrets::Files => (names.1, secret_ref.is_some()),
    };
    let given = match secrets {
        Secrets::Kubernetes => secret_ref.is_some_and(|r| !r.name.is_empty() && !r.key.is_empty()),
        Secrets::Files => file.is_some_and(|f| !f.is_empty()),
    };
    if given && !other_given {
        return Ok(());
    }
    Err(ChannelError::Secret {
        field,
        wanted,
        other: match (other_given, secrets) {
            (true, Secrets::Kubernetes) => " (file paths are for standalone manifests)",
            (true, Secrets::Files) => " (Secret references are for Kubernetes)",
            (false, _) => "",
        },
    })
}

impl AlertChannelSpec {
    /// The kind of target it holds, once it holds exactly one.
    pub fn kind(&self) -> Result<ChannelKind, ChannelError> {
        let set: Vec<ChannelKind> = [
            (self.alertmanager.is_some(), ChannelKind::Alertmanager),
            (self.pagerduty.is_some(), ChannelKind::PagerDuty),
            (self.slack.is_some(), ChannelKind::Slack),
            (self.teams.is_some(), ChannelKind::Teams),
            (self.webhook.is_some(), ChannelKind::Webhook),
            (self.email.is_some(), ChannelKind::Email),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        match set.as_slice() {
            [one] => Ok(*one),
            [] => Err(ChannelError::NotExactlyOne("none".into())),
            many => Err(ChannelError::NotExactlyOne(
                many.iter()
                    .map(|k| k.field())
                    .collect::<Vec<_>>()
                    .join(" and "),
            )),
        }
    }

    /// The re-send interval for Alertmanager.
    pub fn resend_interval(&self) -> SpecDuration {
        self.alertmanager
            .as_ref()
            .and_then(|a| a.resend_interval)
            .unwrap_or(DEFAULT_RESEND_INTERVAL)
    }

    /// Checks the rules the schema cannot express (or that servers before 1.25 do not
    /// check): one kind, URLs, secrets in this front end's spelling, durations, windows.
    /// Templates are checked by the adapter that renders them.
    pub fn validate(&self, secrets: Secrets) -> Result<ChannelKind, ChannelError> {
        let kind = self.kind()?;
        if let Some(a) = &self.alertmanager {
            http_url("alertmanager.url", &a.url)?;
            alertmanager_base(&a.url)?;
            if a.resend_interval.is_some_and(|d| d.as_secs() == 0) {
                return Err(ChannelError::ZeroDuration("alertmanager.resendInterval"));
            }
        }
        if let Some(p) = &self.pagerduty {
            let names = ("routingKeySecretRef", "routingKeyFile");
            let (r, f) = (
                p.routing_key_secret_ref.as_ref(),
                p.routing_key_file.as_ref(),
            );
            secret("pagerduty", secrets, r, f, names)?;
            if let Some(url) = &p.url {
                http_url("pagerduty.url", url)?;
            }
        }
        for (field, chat) in [("slack", &self.slack), ("teams", &self.teams)] {
            if let Some(c) = chat {
                let names = ("webhookSecretRef", "webhookFile");
                let (r, f) = (c.webhook_secret_ref.as_ref(), c.webhook_file.as_ref());
                secret(field, secrets, r, f, names)?;
            }
        }
        if let Some(w) = &self.webhook {
            self.check_webhook(w, secrets)?;
        }
        if let Some(e) = &self.email {
            let ok = !e.to.is_empty()
                && e.to.iter().all(|a| {
                    a.split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                });
            if !ok {
                return Err(ChannelError::Email(e.to.join(", ")));
            }
        }
        check_policy(&self.policy)?;
        check_windows(&self.maintenance)?;
        Ok(kind)
    }

    fn check_webhook(&self, w: &WebhookTarget, secrets: Secrets) -> Result<(), ChannelError> {
        let urls = [
            w.url.is_some(),
            w.url_secret_ref.is_some(),
            w.url_file.is_some(),
        ];
        if urls.iter().filter(|u| **u).count() > 1 {
            return Err(ChannelError::TwoUrls);
        }
        match &w.url {
            Some(url) => http_url("webhook.url", url)?,
            None => {
                let names = ("url or urlSecretRef", "url or urlFile");
                let (r, f) = (w.url_secret_ref.as_ref(), w.url_file.as_ref());
                secret("webhook", secrets, r, f, names)?;
            }
        }
        if w.headers_secret_ref.is_some() || w.headers_file.is_some() {
            let names = ("headersSecretRef", "headersFile");
            let (r, f) = (w.headers_secret_ref.as_ref(), w.headers_file.as_ref());
            secret("webhook", secrets, r, f, names)?;
        }
        Ok(())
    }
}

/// A policy's durations: a zero `repeatEvery` would re-notify without pause.
pub fn check_policy(p: &AlertPolicy) -> Result<(), ChannelError> {
    if p.repeat_every.is_some_and(|d| d.as_secs() == 0) {
        return Err(ChannelError::ZeroDuration("repeatEvery"));
    }
    Ok(())
}

/// Maintenance windows: a valid schedule in a known time zone and a positive duration
/// each. A window whose schedule cannot be read would never open: refused, not ignored.
pub fn check_windows(windows: &[MaintenanceWindow]) -> Result<(), ChannelError> {
    for (i, w) in windows.iter().enumerate() {
        if w.schedule.trim().is_empty() {
            return Err(ChannelError::Maintenance(i, "schedule is required".into()));
        }
        if w.duration.as_secs() == 0 {
            return Err(ChannelError::Maintenance(
                i,
                "duration must be at least 1s".into(),
            ));
        }
        if let Some(tz) = &w.time_zone
            && jiff::tz::TimeZone::get(tz).is_err()
        {
            return Err(ChannelError::Maintenance(
                i,
                format!("timeZone {tz:?} is not a known IANA time zone"),
            ));
        }
        if let Err(e) = crate::core::cron::Schedule::parse(&w.schedule, w.time_zone.as_deref()) {
            return Err(ChannelError::Maintenance(
                i,
                format!("schedule {:?}: {e}", w.schedule),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> AlertChannelSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_channel_holds_exactly_one_kind() {
        let none = spec("{}");
        assert_eq!(
            none.validate(Secrets::Kubernetes).unwrap_err().to_string(),
            "spec must set exactly one of alertmanager, pagerduty, slack, teams, webhook, email (found none)"
        );
        let two = spec(r#"{"email":{"to":["a@b.io"]},"alertmanager":{"url":"http://am:9093"}}"#);
        assert!(
            two.validate(Secrets::Kubernetes)
                .unwrap_err()
                .to_string()
                .contains("(found alertmanager and email)")
        );
        let am = spec(r#"{"alertmanager":{"url":"http://am:9093"},"severity":"warning"}"#);
        assert_eq!(am.validate(Secrets::Files), Ok(ChannelKind::Alertmanager));
        // A route prefix is a base URL; the API's own path is not.
        let prefixed = spec(r#"{"alertmanager":{"url":"http://monitoring/alertmanager/"}}"#);
        assert_eq!(
            prefixed.validate(Secrets::Files),
            Ok(ChannelKind::Alertmanager)
        );
        for url in [
            "http://am:9093/api/v2/alerts",
            "http://am:9093/api/v2/alerts/",
            "https://am.example.com/prefix/api/v1/alerts",
            "http://am:9093/api/v2",
        ] {
            let full = spec(&format!(r#"{{"alertmanager":{{"url":"{url}"}}}}"#));
            let e = full.validate(Secrets::Files).unwrap_err();
            assert_eq!(e, ChannelError::AlertmanagerPath(url.into()));
            assert!(
                e.to_string().contains("give Alertmanager's base URL"),
                "{e}"
            );
        }
        assert_eq!(am.resend_interval().as_secs(), 60);
        assert_eq!(am.severity, Some(Severity::Warning));
    }

    #[test]
    fn secrets_come_in_the_front_ends_own_spelling() {
        let k8s = spec(r#"{"slack":{"webhookSecretRef":{"name":"slack","key":"url"}}}"#);
        assert_eq!(k8s.validate(Secrets::Kubernetes), Ok(ChannelKind::Slack));
        let err = k8s.validate(Secrets::Files).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.slack: set webhookFile (Secret references are for Kubernetes)"
        );
        let file = spec(r#"{"pagerduty":{"routingKeyFile":"/etc/hartslag/pd"}}"#);
        assert_eq!(file.validate(Secrets::Files), Ok(ChannelKind::PagerDuty));
        assert!(file.validate(Secrets::Kubernetes).is_err());
        let empty = spec(r#"{"teams":{}}"#);
        assert_eq!(
            empty.validate(Secrets::Kubernetes).unwrap_err().to_string(),
            "spec.teams: set webhookSecretRef"
        );
    }

    #[test]
    fn webhooks_urls_emails_policy_and_windows_are_checked() {
        let two =
            spec(r#"{"webhook":{"url":"https://x.io","urlSecretRef":{"name":"a","key":"b"}}}"#);
        assert_eq!(
            two.validate(Secrets::Kubernetes),
            Err(ChannelError::TwoUrls)
        );
        let ftp = spec(r#"{"webhook":{"url":"ftp://x.io"}}"#);
        assert!(matches!(
            ftp.validate(Secrets::Kubernetes),
            Err(ChannelError::Url(..))
        ));
        let mail = spec(r#"{"email":{"to":[]}}"#);
        assert!(matches!(
            mail.validate(Secrets::Kubernetes),
            Err(ChannelError::Email(_))
        ));
        let policy =
            spec(r#"{"email":{"to":["ops@example.com"]},"notifyAfter":"10m","repeatEvery":"0s"}"#);
        assert_eq!(
            policy.validate(Secrets::Kubernetes),
            Err(ChannelError::ZeroDuration("repeatEvery"))
        );
        let window = spec(
            r#"{"email":{"to":["ops@example.com"]},"maintenance":[{"schedule":"0 2 * * 0","duration":"2h","timeZone":"Mars/Base"}]}"#,
        );
        assert!(
            window
                .validate(Secrets::Kubernetes)
                .unwrap_err()
                .to_string()
                .starts_with("spec.maintenance[0]: timeZone")
        );
        let hour_25 = spec(
            r#"{"email":{"to":["ops@example.com"]},"maintenance":[{"schedule":"0 2 * * 0","duration":"1h"},{"schedule":"* 25 * * *","duration":"1h"}]}"#,
        );
        let refused = hour_25
            .validate(Secrets::Kubernetes)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("spec.maintenance[1]: schedule \"* 25 * * *\""),
            "{refused}"
        );
    }
}
