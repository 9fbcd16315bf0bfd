//! Alert webhooks: a JSON POST with a Slack-compatible `text` and structured fields.
//!
//! Redirects are not followed (a 3xx is a failed delivery): a redirect would take the
//! request to an address nobody checked. Where a webhook may connect is decided by
//! [`AddressPolicy`], on literal addresses here and on resolved ones in the client's
//! resolver. Proxies from the environment are not used, since the resolver would then
//! vet the proxy's address instead of the target's.

use std::sync::Arc;
use std::time::Duration;

use super::guard::{AddressPolicy, FilteringResolver, Refused, literal_host};
use crate::core::alert::message::{Alert, Links};
use crate::core::alert::{DeliveryError, MAX_RETRY_AFTER};

/// Posts alerts; one client (connection pool) for every webhook.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl WebhookSender {
    /// A sender with a 10 s timeout that connects only where `policy` allows.
    pub fn new(policy: AddressPolicy) -> Result<Self, DeliveryError> {
        // reqwest and lettre share rustls with the ring provider; install it if nobody has.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(FilteringResolver::new(policy.clone())))
            .user_agent(concat!("hartslag/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DeliveryError::Permanent(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client, policy })
    }

    /// POSTs `alert` to `url`: 2xx delivered; 408, 429, 5xx and network errors are retried;
    /// a refused address, a redirect and other statuses are permanent failures.
    pub async fn send(
        &self,
        alert: &Alert,
        url: &str,
        links: Links<'_>,
    ) -> Result<(), DeliveryError> {
        self.post_json(url, &alert.webhook_json(links), &[]).await
    }

    /// POSTs `body` as JSON to `url` with `headers`, by the rules of [`WebhookSender::send`].
    /// Errors never quote the URL: a chat webhook's URL is its password.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        headers: &[(String, String)],
    ) -> Result<(), DeliveryError> {
        self.post_json_as("webhook", url, body, headers).await
    }

    /// [`WebhookSender::post_json`], with errors that call the target `what` (the kind of
    /// channel and, where it is no secret, its URL: "Alertmanager at http://am:9093/...").
    pub async fn post_json_as(
        &self,
        what: &str,
        url: &str,
        body: &serde_json::Value,
        headers: &[(String, String)],
    ) -> Result<(), DeliveryError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| DeliveryError::Permanent(format!("{what}: URL is not valid: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeliveryError::Permanent(format!(
                "{what}: URL must be http:// or https://"
            )));
        }
        if let Some(ip) = literal_host(&parsed) {
            self.policy
                .check(ip)
                .map_err(|r| DeliveryError::Permanent(refused(what, &r)))?;
        }
        let mut request = self.client.post(parsed).json(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let res = request.send().await.map_err(|e| failure(what, e))?;
        let status = res.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(DeliveryError::Permanent(format!(
                "{what} answered {status}, a redirect; redirects are not followed"
            )))
        } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            let reason = format!("{what} answered {status}");
            Err(match retry_after(res.headers(), jiff::Timestamp::now()) {
                Some(after) => DeliveryError::Throttled { reason, after },
                None => DeliveryError::Transient(reason),
            })
        } else {
            Err(DeliveryError::Permanent(format!(
                "{what} answered {status}"
            )))
        }
    }
}

/// How long a `Retry-After` header asks to wait: whole seconds, or an HTTP date (RFC 9110,
/// section 10.2.3), at most [`MAX_RETRY_AFTER`]; `None` without one or with one that does not
/// parse (the scheduler's own backoff then applies).
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = jiff::fmt::rfc2822::parse(text).ok()?.timestamp();
            Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A refused address, said of `what` (its message names webhooks already).
fn refused(what: &str, r: &Refused) -> String {
    if what == "webhook" {
        r.to_string()
    } else {
        format!("{what}: {r}")
    }
}

/// A request that got no answer: permanent when the resolver refused every address of the
/// host, worth retrying otherwise.
fn failure(what: &str, e: reqwest::Error) -> DeliveryError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return DeliveryError::Permanent(self::refused(what, refused));
        }
        source = s.source();
    }
    DeliveryError::Transient(format!("{what}: {}", e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_within_the_cap() {
        let now: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        assert_eq!(
            retry_after(&with("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after(&with("Mon, 07 Dec 2026 10:01:30 GMT"), now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after(&with("Mon, 07 Dec 2026 09:00:00 GMT"), now),
            Some(Duration::ZERO),
            "a date in the past: at once"
        );
        assert_eq!(retry_after(&with("999999999"), now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&with("soon"), now), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }
}
