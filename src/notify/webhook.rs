//! Alert webhooks: a JSON POST with a Slack-compatible `text` and structured fields.

use std::time::Duration;

use crate::core::alert::DeliveryError;
use crate::core::alert::message::Alert;

/// Posts alerts; one client (connection pool) for every webhook.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
}

impl WebhookSender {
    /// A sender with a 10 s timeout.
    pub fn new() -> Result<Self, DeliveryError> {
        // reqwest and lettre share rustls with the ring provider; install it if nobody has.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("hartslag/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DeliveryError::Permanent(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client })
    }

    /// POSTs `alert` to `url`: 2xx delivered; 408, 429, 5xx and network errors are retried.
    pub async fn send(&self, alert: &Alert, url: &str) -> Result<(), DeliveryError> {
        let res = self
            .client
            .post(url)
            .json(&alert.webhook_json())
            .send()
            .await
            .map_err(|e| DeliveryError::Transient(format!("webhook: {}", e.without_url())))?;
        let status = res.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(DeliveryError::Transient(format!(
                "webhook answered {status}"
            )))
        } else {
            Err(DeliveryError::Permanent(format!(
                "webhook answered {status}"
            )))
        }
    }
}
