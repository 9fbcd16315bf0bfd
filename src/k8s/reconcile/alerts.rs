//! Step alerts: a `webhookSecretRef` becomes the URL it points to, read from the Secret in
//! the resource's namespace. Webhook URLs are credentials (a Slack URL is a password): the
//! value is never logged or shown in status or Events; only the Secret's and key's names.
//!
//! The Secret is read when the resource is reconciled (a spec change, its Application's
//! change, the hourly resync), not watched: it is the user's Secret and carries no label
//! a watch could select. Reads within a short time share one answer, so a change of an
//! Application that many Heartbeats follow reads each Secret once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tokio::time::Instant;

use super::Stop;
use crate::core::spec::{AlertTargets, SecretKeyRef};
use crate::k8s::context::Context;
use crate::notify::guard::AddressPolicy;

/// How long one read of a webhook Secret is reused.
const REUSE: Duration = Duration::from_secs(30);

/// A Secret by namespace and name.
type SecretKey = (String, String);

/// Recent reads of webhook Secrets: when, and what the API server answered.
#[derive(Default)]
pub struct WebhookSecrets(Mutex<HashMap<SecretKey, (Instant, Option<Secret>)>>);

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets").finish_non_exhaustive()
    }
}

impl WebhookSecrets {
    fn recent(&self, key: &SecretKey) -> Option<Option<Secret>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < REUSE);
        map.get(key).map(|(_, s)| s.clone())
    }

    fn remember(&self, key: SecretKey, secret: Option<Secret>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Instant::now(), secret));
    }
}

/// The URL in `secret` under `r.key`, or why there is none (pure; never returns the value
/// in an error).
pub fn url_in(secret: Option<&Secret>, r: &SecretKeyRef, namespace: &str) -> Result<String, Stop> {
    let Some(secret) = secret else {
        return Err(Stop::retry(
            "WebhookSecretNotFound",
            format!(
                "Secret {} named by spec.alerts.webhookSecretRef does not exist in namespace {namespace}",
                r.name
            ),
        ));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .map(|v| v.trim().to_string());
    match value {
        None => Err(Stop::retry(
            "WebhookSecretNotFound",
            format!(
                "Secret {} has no key {} (spec.alerts.webhookSecretRef)",
                r.name, r.key
            ),
        )),
        Some(v) if v.starts_with("https://") || v.starts_with("http://") => Ok(v),
        Some(_) => Err(Stop::retry(
            "WebhookSecretInvalid",
            format!(
                "key {} of Secret {} (spec.alerts.webhookSecretRef) does not hold an http:// or https:// URL",
                r.key, r.name
            ),
        )),
    }
}

async fn read(ctx: &Context, namespace: &str, name: &str) -> Result<Option<Secret>, Stop> {
    let key = (namespace.to_string(), name.to_string());
    if let Some(s) = ctx.webhook_secrets.recent(&key) {
        return Ok(s);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = match api.get_opt(name).await {
        Ok(s) => s,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(Stop::retry(
                "Forbidden",
                format!(
                    "the operator may not read Secret {name} in namespace {namespace} (spec.alerts.webhookSecretRef); check that the namespace is in the chart's scope"
                ),
            ));
        }
        Err(e) => {
            return Err(Stop::Failed(super::ReconcileError::Kube {
                step: super::Step::Alerts,
                source: e,
            }));
        }
    };
    ctx.webhook_secrets.remember(key, secret.clone());
    Ok(secret)
}

/// `alerts` with a `webhookSecretRef` replaced by the `webhook` it points to; a webhook
/// whose host the operator's address policy refuses whatever DNS says is refused
/// ([`address_allowed`]).
pub async fn resolve(
    ctx: &Context,
    namespace: &str,
    alerts: Option<&AlertTargets>,
) -> Result<Option<AlertTargets>, Stop> {
    let Some(a) = alerts else {
        return Ok(None);
    };
    let Some(r) = &a.webhook_secret_ref else {
        if let Some(url) = &a.webhook {
            let field = "spec.alerts.webhook";
            address_allowed(&ctx.config.webhooks, url, field)
                .map_err(|m| Stop::wait(REFUSED, m))?;
        }
        return Ok(Some(a.clone()));
    };
    let secret = read(ctx, namespace, &r.name).await?;
    let url = url_in(secret.as_ref(), r, namespace)?;
    // The Secret is not watched: look again, as for a Secret without a URL.
    let field = "spec.alerts.webhookSecretRef";
    address_allowed(&ctx.config.webhooks, &url, field).map_err(|m| Stop::retry(REFUSED, m))?;
    Ok(Some(AlertTargets {
        webhook: Some(url),
        webhook_secret_ref: None,
        ..a.clone()
    }))
}

/// The reason of a webhook refused by [`address_allowed`].
const REFUSED: &str = "WebhookAddressRefused";

/// Why a webhook `url`, given by `field`, cannot be used: its host is one `policy` refuses
/// whatever DNS says, so every alert to it would be refused at delivery, and nobody would
/// know before one was lost. Host names that need DNS pass: they are checked at each
/// delivery. Pure.
pub fn address_allowed(policy: &AddressPolicy, url: &str, field: &str) -> Result<(), String> {
    policy.check_url(url).map_err(|e| format!("{field}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(key: &str, value: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn refusal(r: Result<String, Stop>) -> (&'static str, String) {
        match r {
            Err(Stop::Refused { refusal, retry }) => {
                assert!(retry, "the Secret may be fixed: look again");
                (refusal.reason, refusal.message)
            }
            other => panic!("{:?}", other.map_err(|_| ())),
        }
    }

    #[test]
    fn the_url_comes_from_the_key_and_never_appears_in_a_refusal() {
        let r = SecretKeyRef {
            name: "slack".into(),
            key: "url".into(),
        };
        let hook = "https://hooks.slack.com/services/T000/B000/secret-part";
        assert_eq!(
            url_in(Some(&secret("url", hook)), &r, "shop").unwrap(),
            hook
        );
        let (reason, m) = refusal(url_in(None, &r, "shop"));
        assert_eq!(reason, "WebhookSecretNotFound");
        assert!(m.contains("slack") && m.contains("shop"), "{m}");
        let (reason, m) = refusal(url_in(Some(&secret("other", hook)), &r, "shop"));
        assert_eq!(reason, "WebhookSecretNotFound");
        assert!(m.contains("no key url"), "{m}");
        let (reason, m) = refusal(url_in(Some(&secret("url", "hunter2-password")), &r, "shop"));
        assert_eq!(reason, "WebhookSecretInvalid");
        assert!(!m.contains("hunter2"), "the value leaked: {m}");
    }

    #[test]
    fn a_webhook_to_an_address_refused_whatever_dns_says_is_not_usable() {
        let policy = AddressPolicy::default();
        let m = address_allowed(&policy, "http://127.0.0.1:8080/hook", "spec.alerts.webhook")
            .unwrap_err();
        assert!(
            m.starts_with("spec.alerts.webhook: host 127.0.0.1 is loopback")
                && m.contains("--allow-private-webhooks")
                && !m.contains("/hook"),
            "{m}"
        );
        let field = "spec.alerts.webhookSecretRef";
        assert!(address_allowed(&policy, "https://hooks.slack.com/services/x", field).is_ok());
        let all = AddressPolicy {
            allow_all: true,
            ..Default::default()
        };
        assert!(address_allowed(&all, "http://127.0.0.1:8080/hook", field).is_ok());
    }
}
