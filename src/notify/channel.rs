//! Delivery through alert channels: the channel is looked up in the core's
//! [`ChannelBook`] at each attempt (so a rotated secret is used at once, and no secret is
//! stored with the delivery), the alert becomes the provider's [`Facts`], and the provider's
//! payload is posted.

use jiff::Timestamp;

use super::email::EmailSender;
use super::facts::{Facts, NoticeKind};
use super::guard::{AddressPolicy, RefusedHost};
use super::template::BodyTemplate;
use super::webhook::WebhookSender;
use super::{alertmanager, pagerduty, slack, teams};
use crate::core::alert::DeliveryError;
use crate::core::alert::channels::{ChannelBook, ChannelRef, Destination, ResolvedChannel};
use crate::core::alert::message::{Alert, AlertKind, Links};
use crate::core::channel::{AlertChannelSpec, Secrets};

/// Sends alerts through the channels the front end handed to the core.
#[derive(Clone, Debug)]
pub struct ChannelSender {
    book: ChannelBook,
    base_url: String,
}

/// What the channel sender shares with the other senders.
#[derive(Clone, Copy)]
pub struct Senders<'a> {
    /// JSON POSTs.
    pub http: &'a WebhookSender,
    /// Email, when an SMTP server is configured.
    pub email: Option<&'a EmailSender>,
}

impl ChannelSender {
    /// A sender reading channels from `book`; dashboard links start with `base_url`.
    pub fn new(book: ChannelBook, base_url: &str) -> Self {
        Self {
            book,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The dashboard page of `alert`'s monitor, for notices outside channels too.
    pub fn dashboard_url(&self, alert: &Alert) -> String {
        dashboard_url(alert, &self.base_url)
    }

    /// One attempt to deliver `alert` through channel `id`.
    pub async fn send(
        &self,
        senders: Senders<'_>,
        alert: &Alert,
        id: &ChannelRef,
    ) -> Result<(), DeliveryError> {
        let Some(channel) = self.book.get(id) else {
            // After a restart the operator may not have handed the channel over yet; a
            // deleted channel gives up after the outbox's give-up time.
            return Err(DeliveryError::Transient(format!(
                "{id} is not known (not defined, or not resolved yet)"
            )));
        };
        let facts = facts(alert, &channel, &self.base_url);
        let links = Links {
            dashboard: Some(&facts.dashboard_url),
        };
        let http = senders.http;
        let what = target_name(&channel);
        match &channel.destination {
            Destination::Alertmanager {
                url,
                resend_interval,
            } => {
                let body = alertmanager::body(&facts, Timestamp::now(), *resend_interval);
                http.post_json_as(&what, &alertmanager::endpoint(url), &body, &[])
                    .await
            }
            Destination::PagerDuty {
                routing_key,
                events_url,
            } => {
                for event in pagerduty::events(&facts, routing_key) {
                    http.post_json_as(&what, events_url, &event, &[]).await?;
                }
                Ok(())
            }
            Destination::Slack { webhook_url } => {
                http.post_json_as(&what, webhook_url, &slack::message(&facts), &[])
                    .await
            }
            Destination::Teams { webhook_url } => {
                http.post_json_as(&what, webhook_url, &teams::message(&facts), &[])
                    .await
            }
            Destination::Webhook {
                url,
                headers,
                template,
            } => {
                let body = match template {
                    Some(source) => BodyTemplate::new(source)
                        .and_then(|t| t.render(&facts))
                        .map_err(|e| DeliveryError::Permanent(format!("{what}: webhook.{e}")))?,
                    None => alert.webhook_json(links),
                };
                http.post_json_as(&what, url, &body, headers).await
            }
            Destination::Email { to } => match senders.email {
                Some(sender) => sender.send(alert, to, links).await,
                None => Err(DeliveryError::Unconfigured(
                    "no SMTP server is configured (--smtp-url)".into(),
                )),
            },
        }
    }

    /// One attempt to deliver all of `alerts` through channel `id`: to Alertmanager, whose
    /// API takes a list, in one `POST` (their alerts in the order given), accepted or failed
    /// as a whole; through any other kind of channel one after another, stopping at the
    /// first failure (the scheduler batches only for Alertmanager).
    pub async fn send_batch(
        &self,
        senders: Senders<'_>,
        alerts: &[Alert],
        id: &ChannelRef,
    ) -> Result<(), DeliveryError> {
        if let Some(channel) = self.book.get(id)
            && let Destination::Alertmanager {
                url,
                resend_interval,
            } = &channel.destination
        {
            let facts: Vec<Facts> = alerts
                .iter()
                .map(|a| facts(a, &channel, &self.base_url))
                .collect();
            let body = alertmanager::batch_body(&facts, Timestamp::now(), *resend_interval);
            let what = target_name(&channel);
            return senders
                .http
                .post_json_as(&what, &alertmanager::endpoint(url), &body, &[])
                .await;
        }
        for alert in alerts {
            self.send(senders, alert, id).await?;
        }
        Ok(())
    }
}

/// A channel posting to a URL whose host the address policy refuses whatever DNS says,
/// found when the channel is defined: every delivery through it would be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {refused}")]
pub struct AddressRefused {
    /// The field the URL came from, as the front end spells it (`webhook.urlFile`).
    pub field: &'static str,
    /// Why.
    pub refused: RefusedHost,
}

/// Checks the URL `channel` posts to against `policy`, as far as that needs no DNS
/// ([`AddressPolicy::check_url`]): the check each delivery makes, made when the channel is
/// defined, so a channel nobody can reach is refused then instead of losing its first
/// alert. `spec` and `secrets` (the front end's spelling) name the field in the refusal.
pub fn check_addresses(
    policy: &AddressPolicy,
    spec: &AlertChannelSpec,
    channel: &ResolvedChannel,
    secrets: Secrets,
) -> Result<(), AddressRefused> {
    let from_secret = |secret_ref: &'static str, file: &'static str| match secrets {
        Secrets::Kubernetes => secret_ref,
        Secrets::Files => file,
    };
    let (field, url) = match &channel.destination {
        Destination::Alertmanager { url, .. } => ("alertmanager.url", url),
        Destination::PagerDuty { events_url, .. } => ("pagerduty.url", events_url),
        Destination::Slack { webhook_url } => (
            from_secret("slack.webhookSecretRef", "slack.webhookFile"),
            webhook_url,
        ),
        Destination::Teams { webhook_url } => (
            from_secret("teams.webhookSecretRef", "teams.webhookFile"),
            webhook_url,
        ),
        Destination::Webhook { url, .. } => {
            let literal = spec.webhook.as_ref().is_some_and(|w| w.url.is_some());
            let field = match literal {
                true => "webhook.url",
                false => from_secret("webhook.urlSecretRef", "webhook.urlFile"),
            };
            (field, url)
        }
        Destination::Email { .. } => return Ok(()),
    };
    policy
        .check_url(url)
        .map_err(|refused| AddressRefused { field, refused })
}

/// How delivery errors name a channel: its kind and name, and its URL where that is no
/// secret (Alertmanager's and PagerDuty's endpoints; a chat or webhook URL is a password,
/// so only its host is told).
pub fn target_name(channel: &ResolvedChannel) -> String {
    let id = &channel.id;
    match &channel.destination {
        Destination::Alertmanager { url, .. } => {
            format!("Alertmanager {} ({id})", alertmanager::endpoint(url))
        }
        Destination::PagerDuty { events_url, .. } => format!("PagerDuty {events_url} ({id})"),
        Destination::Slack { webhook_url } => format!("Slack webhook {} ({id})", host(webhook_url)),
        Destination::Teams { webhook_url } => format!("Teams webhook {} ({id})", host(webhook_url)),
        Destination::Webhook { url, .. } => format!("webhook {} ({id})", host(url)),
        Destination::Email { .. } => format!("email ({id})"),
    }
}

/// `scheme://host[:port]/...` of `url`, its path and query left out: they may hold the
/// secret.
fn host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/...",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.port().map_or(String::new(), |p| format!(":{p}"))
        ),
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// The monitor's dashboard page under `base_url` (the server's external URL, no
/// trailing slash): the link every kind of notice carries.
pub fn dashboard_url(alert: &Alert, base_url: &str) -> String {
    format!(
        "{base_url}/ui/monitors/{}/{}",
        alert.namespace(),
        alert.monitor
    )
}

/// The provider facts of `alert` sent through `channel`.
pub fn facts(alert: &Alert, channel: &ResolvedChannel, base_url: &str) -> Facts {
    let opened_at = alert.incident_opened_at();
    let namespace = alert.namespace().to_string();
    Facts {
        kind: match alert.kind {
            AlertKind::Down => NoticeKind::Down,
            AlertKind::Recovery | AlertKind::OnTime => NoticeKind::Recovery,
            AlertKind::Flapping => NoticeKind::Flapping,
            AlertKind::Late => NoticeKind::Late,
            AlertKind::Stopped => NoticeKind::Stopped,
        },
        dashboard_url: dashboard_url(alert, base_url),
        namespace,
        name: alert.monitor.clone(),
        display_name: alert.display_name.clone(),
        application: alert.application.clone(),
        reason: alert.reason.clone(),
        since: alert.occurred_at,
        opened_at,
        last_ping_at: alert.last_ping_at,
        last_failure_at: alert.failure_since_success().map(|(at, _)| at),
        expected_at: alert.expected_at,
        exit_code: alert.exit_code,
        incident: opened_at.as_millisecond().to_string(),
        runbook_url: alert.runbook_url.clone(),
        severity: channel.severity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::channel::Severity;

    fn channel(destination: Destination) -> ResolvedChannel {
        ResolvedChannel {
            id: ChannelRef::namespaced("team-a", "ops"),
            destination,
            severity: Severity::Critical,
            policy: Default::default(),
            maintenance: Vec::new(),
        }
    }

    #[test]
    fn errors_name_the_kind_and_a_url_only_where_it_is_no_secret() {
        let am = channel(Destination::Alertmanager {
            url: "http://am:9093".into(),
            resend_interval: std::time::Duration::from_secs(60),
        });
        assert_eq!(
            target_name(&am),
            "Alertmanager http://am:9093/api/v2/alerts (AlertChannel team-a/ops)"
        );
        let slack = channel(Destination::Slack {
            webhook_url: "https://hooks.slack.com/services/T0/B0/s3cr3t".into(),
        });
        let name = target_name(&slack);
        assert_eq!(
            name,
            "Slack webhook https://hooks.slack.com/... (AlertChannel team-a/ops)"
        );
        let hook = channel(Destination::Webhook {
            url: "http://127.0.0.1:8081/hook?token=s3cr3t".into(),
            headers: Vec::new(),
            template: None,
        });
        let name = target_name(&hook);
        assert!(
            name.starts_with("webhook http://127.0.0.1:8081/..."),
            "{name}"
        );
        assert!(!name.contains("s3cr3t"), "{name}");
    }

    #[test]
    fn a_refused_address_names_the_field_in_the_front_ends_spelling() {
        let policy = AddressPolicy::default();
        let spec = |json: &str| -> AlertChannelSpec { serde_json::from_str(json).unwrap() };
        let hook = |url: &str| {
            channel(Destination::Webhook {
                url: url.into(),
                headers: Vec::new(),
                template: None,
            })
        };
        let literal = spec(r#"{"webhook":{"url":"http://127.0.0.1:8081/hook"}}"#);
        let from_file = spec(r#"{"webhook":{"urlFile":"hook-url"}}"#);
        let local = hook("http://127.0.0.1:8081/hook?token=s3cr3t");
        let field = |spec: &AlertChannelSpec, c: &ResolvedChannel, s: Secrets| {
            check_addresses(&policy, spec, c, s).map_err(|e| (e.field, e.to_string()))
        };
        assert_eq!(
            field(&literal, &local, Secrets::Files).unwrap_err().0,
            "webhook.url"
        );
        let (name, msg) = field(&from_file, &local, Secrets::Files).unwrap_err();
        assert_eq!(name, "webhook.urlFile");
        assert!(
            msg.starts_with("spec.webhook.urlFile: host 127.0.0.1 is loopback")
                && !msg.contains("s3cr3t"),
            "{msg}"
        );
        assert_eq!(
            field(&from_file, &local, Secrets::Kubernetes)
                .unwrap_err()
                .0,
            "webhook.urlSecretRef"
        );
        let teams = channel(Destination::Teams {
            webhook_url: "http://[::1]/x".into(),
        });
        assert_eq!(
            field(&spec("{}"), &teams, Secrets::Files).unwrap_err().0,
            "teams.webhookFile"
        );
        let pd = channel(Destination::PagerDuty {
            routing_key: "k".into(),
            events_url: "https://events.pagerduty.com/v2/enqueue".into(),
        });
        assert_eq!(field(&spec("{}"), &pd, Secrets::Files), Ok(()));
        let mail = channel(Destination::Email {
            to: vec!["ops@example.com".into()],
        });
        assert_eq!(field(&spec("{}"), &mail, Secrets::Files), Ok(()));
        assert_eq!(
            field(
                &literal,
                &hook("https://hooks.example.com/x"),
                Secrets::Files
            ),
            Ok(())
        );
    }
}
