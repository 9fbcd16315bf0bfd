//! Outbound alert delivery: the core's [`Deliver`] port over real channels, one file per
//! kind of target. A new kind is a new file here and one arm in [`Notifier::deliver`].

pub mod alertmanager;
pub mod channel;
pub mod email;
pub mod facts;
pub mod guard;
pub mod pagerduty;
pub mod schema;
pub mod slack;
pub mod teams;
pub mod template;
pub mod webhook;

use futures::future::BoxFuture;

use crate::core::alert::message::{Alert, Links, Target};
use crate::core::alert::{Deliver, DeliveryError};
use email::{EmailConfigError, EmailSender, SmtpConfig};
use webhook::WebhookSender;

/// Why the channels could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The SMTP settings are unusable.
    #[error("--smtp-url / --mail-from: {0}")]
    Email(#[from] EmailConfigError),
    /// The HTTP client for webhooks could not be built.
    #[error("webhook client: {0}")]
    Webhook(DeliveryError),
}

/// Every channel this server can deliver through.
#[derive(Clone, Debug)]
pub struct Notifier {
    /// Email, when an SMTP server is configured.
    email: Option<EmailSender>,
    webhook: WebhookSender,
    channels: channel::ChannelSender,
}

impl Notifier {
    /// Sets up the channels: email through `smtp_url` (none when unset), webhooks always,
    /// to the addresses `webhooks` allows, and the alert channels in `channels` (links to
    /// the dashboard under `base_url`).
    pub fn new(
        smtp_url: Option<&str>,
        mail_from: &str,
        webhooks: guard::AddressPolicy,
        channels: channel::ChannelSender,
    ) -> Result<Self, NotifyError> {
        let email = match smtp_url {
            Some(url) => Some(EmailSender::new(&SmtpConfig::from_url(url, mail_from)?)?),
            None => None,
        };
        let webhook = WebhookSender::new(webhooks).map_err(NotifyError::Webhook)?;
        Ok(Self {
            email,
            webhook,
            channels,
        })
    }
}

impl Deliver for Notifier {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let dashboard = self.channels.dashboard_url(alert);
            let links = Links {
                dashboard: Some(&dashboard),
            };
            match target {
                Target::Email { to } => match &self.email {
                    Some(sender) => sender.send(alert, to, links).await,
                    None => Err(DeliveryError::Unconfigured(
                        "no SMTP server is configured (--smtp-url)".into(),
                    )),
                },
                Target::Webhook { url } => self.webhook.send(alert, url, links).await,
                Target::Channel { channel } => {
                    self.channels.send(self.senders(), alert, channel).await
                }
            }
        })
    }

    /// Through an Alertmanager channel, one `POST` of every alert's list; to any other
    /// target one after another.
    fn deliver_batch<'a>(
        &'a self,
        alerts: &'a [Alert],
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            match target {
                Target::Channel { channel } => {
                    self.channels
                        .send_batch(self.senders(), alerts, channel)
                        .await
                }
                _ => {
                    for alert in alerts {
                        self.deliver(alert, target).await?;
                    }
                    Ok(())
                }
            }
        })
    }
}

impl Notifier {
    /// What the channel sender shares with the other senders.
    fn senders(&self) -> channel::Senders<'_> {
        channel::Senders {
            http: &self.webhook,
            email: self.email.as_ref(),
        }
    }
}
