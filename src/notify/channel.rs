//! Delivery through alert channels: the channel is looked up in the core's
//! [`ChannelBook`] at each attempt (so a rotated secret is used at once, and no secret is
//! stored with the delivery), the alert becomes the provider's [`Facts`], and the provider's
//! payload is posted.

use jiff::Timestamp;

use super::email::EmailSender;
use super::facts::{Facts, NoticeKind};
use super::template::BodyTemplate;
use super::webhook::WebhookSender;
use super::{alertmanager, pagerduty, slack, teams};
use crate::core::alert::DeliveryError;
use crate::core::alert::channels::{ChannelBook, ChannelRef, Destination, ResolvedChannel};
use crate::core::alert::message::{Alert, AlertKind};

/// Sends alerts through the channels the front end handed to the core.
#[derive(Clone, Debug)]
pub struct ChannelSender {
    book: ChannelBook,
    base_url: String,
}

/// What the channel sender shares with the other senders.
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
        let http = senders.http;
        match &channel.destination {
            Destination::Alertmanager {
                url,
                resend_interval,
            } => {
                let body = alertmanager::body(&facts, Timestamp::now(), *resend_interval);
                http.post_json(&format!("{url}/api/v2/alerts"), &body, &[])
                    .await
            }
            Destination::PagerDuty {
                routing_key,
                events_url,
            } => {
                for event in pagerduty::events(&facts, routing_key) {
                    http.post_json(events_url, &event, &[]).await?;
                }
                Ok(())
            }
            Destination::Slack { webhook_url } => {
                http.post_json(webhook_url, &slack::message(&facts), &[])
                    .await
            }
            Destination::Teams { webhook_url } => {
                http.post_json(webhook_url, &teams::message(&facts), &[])
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
                        .map_err(|e| DeliveryError::Permanent(format!("webhook.{e}")))?,
                    None => alert.webhook_json(),
                };
                http.post_json(url, &body, headers).await
            }
            Destination::Email { to } => match senders.email {
                Some(sender) => sender.send(alert, to).await,
                None => Err(DeliveryError::Unconfigured(
                    "no SMTP server is configured (--smtp-url)".into(),
                )),
            },
        }
    }
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
        },
        dashboard_url: format!("{base_url}/ui/monitors/{namespace}/{}", alert.monitor),
        namespace,
        name: alert.monitor.clone(),
        display_name: alert.display_name.clone(),
        application: alert.application.clone(),
        reason: alert.reason.clone(),
        since: alert.occurred_at,
        opened_at,
        last_ping_at: alert.last_ping_at,
        expected_at: alert.expected_at,
        exit_code: alert.exit_code,
        incident: opened_at.as_millisecond().to_string(),
        runbook_url: alert.runbook_url.clone(),
        severity: channel.severity,
    }
}
