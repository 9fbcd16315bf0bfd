//! The pure half of channels in the operator: which channel a Heartbeat's name means, and
//! a channel resolved with the values its `...SecretRef` fields point to, read from
//! Secrets already in the watch cache. Both build on the core's rules
//! ([`crate::core::alert::channels`]); what is added here is where Secrets come from and
//! the reasons `Ready=False` gives.
//!
//! Nothing here reads the API server or logs: a secret value never appears in a refusal,
//! only the Secret's and key's names.

use std::cell::Cell;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use crate::core::alert::channels::{
    ChannelRef, Destination, ResolveError, ResolvedChannel, SecretSource, resolve_names,
};
use crate::core::channel::{AlertChannelSpec, Secrets};
use crate::k8s::status::Refusal;
use crate::notify::channel::check_addresses;
use crate::notify::guard::AddressPolicy;

/// Label a Secret needs before channels may read it (any value). The operator watches only
/// Secrets that carry it, so a channel costs no Secret request; and only Secrets whose owner
/// labelled them can be sent to a channel's target (a webhook's headers go to its URL).
pub const CHANNEL_SECRET_LABEL: &str = "hartslag.dev/channel-secret";

/// Which channels `names` mean for a Heartbeat in `namespace`: an `AlertChannel` there
/// first, then a `ClusterAlertChannel` (`exists` says which there are); the first unknown
/// name refuses with `ChannelNotFound`, naming it.
pub fn pick(
    namespace: &str,
    names: &[String],
    exists: impl Fn(&ChannelRef) -> bool,
) -> Result<Vec<ChannelRef>, Refusal> {
    resolve_names(namespace, names, exists).map_err(|e| {
        Refusal::new(
            "ChannelNotFound",
            format!(
                "spec.alerts.channels names {:?}, but there is no AlertChannel {} in namespace {namespace} and no ClusterAlertChannel {}; this Heartbeat is not monitored until one exists",
                e.0, e.0, e.0
            ),
        )
    })
}

/// Why a secret could not be read, for the reason of `Ready=False`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Secret,
    Key,
    Value,
}

impl Missing {
    fn reason(self) -> &'static str {
        match self {
            Missing::Secret => "SecretNotFound",
            Missing::Key => "SecretKeyNotFound",
            Missing::Value => "SecretInvalid",
        }
    }
}

/// The value a Secret reference points to, looked up in `namespace` by `lookup`.
fn read(
    source: SecretSource<'_>,
    namespace: &str,
    lookup: &impl Fn(&str) -> Option<Arc<Secret>>,
) -> Result<String, (Missing, String)> {
    let r = match source {
        SecretSource::Ref(r) => r,
        SecretSource::File(_) => {
            return Err((
                Missing::Value,
                "file paths are for standalone manifests".into(),
            ));
        }
    };
    let Some(secret) = lookup(&r.name) else {
        return Err((
            Missing::Secret,
            format!(
                "Secret {namespace}/{} does not exist or does not carry the label {CHANNEL_SECRET_LABEL} (channels read only Secrets so labelled)",
                r.name
            ),
        ));
    };
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&r.key)) else {
        return Err((
            Missing::Key,
            format!("Secret {namespace}/{} has no key {}", r.name, r.key),
        ));
    };
    match std::str::from_utf8(&bytes.0).map(str::trim) {
        Ok(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err((
            Missing::Value,
            format!(
                "key {} of Secret {namespace}/{} is empty or not UTF-8 text",
                r.key, r.name
            ),
        )),
    }
}

/// The URL a resolved channel posts to that came from a Secret, with its field.
fn secret_url(d: &Destination) -> Option<(&'static str, &str)> {
    match d {
        Destination::Slack { webhook_url } => Some(("slack.webhookSecretRef", webhook_url)),
        Destination::Teams { webhook_url } => Some(("teams.webhookSecretRef", webhook_url)),
        Destination::Webhook { url, .. } => Some(("webhook.url", url)),
        _ => None,
    }
}

/// Checks `spec` as Kubernetes reads it and resolves channel `id` with the Secrets `lookup`
/// finds in `namespace` (the channel's own, or the operator's for a `ClusterAlertChannel`).
/// Refusals: `Invalid`, `SecretNotFound`, `SecretKeyNotFound`, `SecretInvalid`, and
/// `AddressRefused` for a URL whose host `policy` (the operator's webhook flags) refuses
/// whatever DNS says: every delivery through the channel would be refused.
pub fn resolve(
    id: ChannelRef,
    spec: &AlertChannelSpec,
    namespace: &str,
    lookup: impl Fn(&str) -> Option<Arc<Secret>>,
    policy: &AddressPolicy,
) -> Result<ResolvedChannel, Refusal> {
    spec.validate(Secrets::Kubernetes)
        .map_err(|e| Refusal::new("Invalid", e.to_string()))?;
    let missing = Cell::new(Missing::Value);
    let resolved = ResolvedChannel::resolve(id, spec, |source| {
        read(source, namespace, &lookup).map_err(|(m, why)| {
            missing.set(m);
            why
        })
    })
    .map_err(|e| match e {
        ResolveError::Spec(e) => Refusal::new("Invalid", e.to_string()),
        e @ ResolveError::Secret { .. } => Refusal::new(missing.get().reason(), e.to_string()),
        e @ ResolveError::Header(_) => Refusal::new("SecretInvalid", e.to_string()),
    })?;
    if let Some((field, url)) = secret_url(&resolved.destination)
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(Refusal::new(
            "SecretInvalid",
            format!("the Secret named by spec.{field} does not hold an http:// or https:// URL"),
        ));
    }
    check_addresses(policy, spec, &resolved, Secrets::Kubernetes)
        .map_err(|e| Refusal::new("AddressRefused", e.to_string()))?;
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Arc<Secret> {
        Arc::new(Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        })
    }

    fn spec(json: &str) -> AlertChannelSpec {
        serde_json::from_str(json).unwrap()
    }

    fn id() -> ChannelRef {
        ChannelRef::namespaced("shop", "team")
    }

    /// [`super::resolve`] under the default address policy.
    fn resolve(
        id: ChannelRef,
        spec: &AlertChannelSpec,
        namespace: &str,
        lookup: impl Fn(&str) -> Option<Arc<Secret>>,
    ) -> Result<ResolvedChannel, Refusal> {
        super::resolve(id, spec, namespace, lookup, &AddressPolicy::default())
    }

    const HOOK: &str = "https://hooks.slack.com/services/T000/B000/secret-part";

    #[test]
    fn a_namespaced_channel_wins_over_a_cluster_channel_of_the_same_name() {
        let there = [
            ChannelRef::namespaced("shop", "oncall"),
            ChannelRef::cluster("oncall"),
            ChannelRef::cluster("platform"),
        ];
        let exists = |r: &ChannelRef| there.contains(r);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pick("shop", &names(&["oncall", "platform"]), exists).unwrap(),
            vec![
                ChannelRef::namespaced("shop", "oncall"),
                ChannelRef::cluster("platform")
            ]
        );
        assert_eq!(
            pick("billing", &names(&["oncall"]), exists).unwrap(),
            vec![ChannelRef::cluster("oncall")]
        );
        let r = pick("shop", &names(&["oncall", "nowhere"]), exists).unwrap_err();
        assert_eq!(r.reason, "ChannelNotFound");
        assert!(
            r.message.contains("\"nowhere\"") && r.message.contains("namespace shop"),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_slack_webhook_comes_from_its_secret_key() {
        let s = spec(r#"{"slack":{"webhookSecretRef":{"name":"slack","key":"url"}}}"#);
        let got = resolve(id(), &s, "shop", |n| {
            (n == "slack").then(|| secret(&[("url", HOOK)]))
        })
        .unwrap();
        assert_eq!(
            got.destination,
            Destination::Slack {
                webhook_url: HOOK.into()
            }
        );
        assert_eq!(got.id, id());
    }

    #[test]
    fn missing_secrets_keys_and_bad_values_are_refused_without_the_value() {
        let s = spec(r#"{"slack":{"webhookSecretRef":{"name":"slack","key":"url"}}}"#);
        let r = resolve(id(), &s, "shop", |_| None).unwrap_err();
        assert_eq!(r.reason, "SecretNotFound");
        assert!(
            r.message.contains("Secret shop/slack") && r.message.contains(CHANNEL_SECRET_LABEL),
            "{}",
            r.message
        );
        let r = resolve(id(), &s, "shop", |_| Some(secret(&[("other", HOOK)]))).unwrap_err();
        assert_eq!(r.reason, "SecretKeyNotFound");
        assert!(r.message.contains("no key url"), "{}", r.message);
        let r = resolve(id(), &s, "shop", |_| Some(secret(&[("url", "hunter2")]))).unwrap_err();
        assert_eq!(r.reason, "SecretInvalid");
        assert!(
            !r.message.contains("hunter2"),
            "the value leaked: {}",
            r.message
        );
        let r = resolve(id(), &s, "shop", |_| Some(secret(&[("url", " ")]))).unwrap_err();
        assert_eq!(r.reason, "SecretInvalid");
    }

    #[test]
    fn every_secret_ref_kind_is_resolved_and_an_invalid_spec_is_refused() {
        let pd = spec(r#"{"pagerduty":{"routingKeySecretRef":{"name":"pd","key":"k"}}}"#);
        let got = resolve(id(), &pd, "ns", |_| Some(secret(&[("k", " R0UT1NG \n")]))).unwrap();
        assert!(
            matches!(&got.destination, Destination::PagerDuty { routing_key, .. } if routing_key == "R0UT1NG")
        );
        let wh = spec(
            r#"{"webhook":{"urlSecretRef":{"name":"w","key":"url"},"headersSecretRef":{"name":"h","key":"headers"}}}"#,
        );
        let got = resolve(id(), &wh, "ns", |n| match n {
            "w" => Some(secret(&[("url", "https://example.org/hook")])),
            "h" => Some(secret(&[("headers", "Authorization: Bearer x")])),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            got.destination,
            Destination::Webhook {
                url: "https://example.org/hook".into(),
                headers: vec![("Authorization".into(), "Bearer x".into())],
                template: None,
            }
        );
        let r = resolve(id(), &wh, "ns", |n| match n {
            "w" => Some(secret(&[("url", "https://example.org/hook")])),
            _ => Some(secret(&[("headers", "not a header line")])),
        })
        .unwrap_err();
        assert_eq!(r.reason, "SecretInvalid");
        let am = spec(r#"{"alertmanager":{"url":"http://am:9093"}}"#);
        assert!(resolve(id(), &am, "ns", |_| None).is_ok());
        let file = spec(r#"{"slack":{"webhookFile":"/etc/slack"}}"#);
        assert_eq!(
            resolve(id(), &file, "ns", |_| None).unwrap_err().reason,
            "Invalid"
        );
    }

    #[test]
    fn a_channel_posting_to_a_refused_address_is_not_ready_and_says_which_field_and_flag() {
        let am = spec(r#"{"alertmanager":{"url":"http://127.0.0.1:9093"}}"#);
        let r = resolve(id(), &am, "ns", |_| None).unwrap_err();
        assert_eq!(r.reason, "AddressRefused");
        assert!(
            r.message
                .starts_with("spec.alertmanager.url: host 127.0.0.1 is loopback")
                && r.message.contains("--allow-private-webhooks"),
            "{}",
            r.message
        );
        // A URL from a Secret: the field is named, the secret URL's path is not shown.
        let slack = spec(r#"{"slack":{"webhookSecretRef":{"name":"slack","key":"url"}}}"#);
        let local = "http://localhost:8080/services/T000/B000/secret-part";
        let r = resolve(id(), &slack, "shop", |_| Some(secret(&[("url", local)]))).unwrap_err();
        assert_eq!(r.reason, "AddressRefused");
        assert!(
            r.message
                .starts_with("spec.slack.webhookSecretRef: host localhost"),
            "{}",
            r.message
        );
        assert!(!r.message.contains("secret-part"), "{}", r.message);
        let hook = spec(r#"{"webhook":{"url":"http://169.254.169.254/latest"}}"#);
        let r = resolve(id(), &hook, "ns", |_| None).unwrap_err();
        assert!(
            r.message
                .starts_with("spec.webhook.url: host 169.254.169.254 is link-local")
        );
        // Allowed by the flags, or a name that needs DNS: usable (checked at delivery).
        let allow = AddressPolicy {
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        assert!(super::resolve(id(), &am, "ns", |_| None, &allow).is_ok());
        let named = spec(r#"{"alertmanager":{"url":"http://am.monitoring:9093"}}"#);
        assert!(resolve(id(), &named, "ns", |_| None).is_ok());
    }
}
