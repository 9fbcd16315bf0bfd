//! Alert channels as the core holds them: the port through which a front end hands the core
//! the channels it resolved (secrets already read: Kubernetes Secrets by the operator,
//! `...File` paths in standalone mode) and reads back how delivery through each one goes.
//!
//! Secrets live only here, in memory. A queued delivery names its channel
//! ([`ChannelRef`]), never its URL or key, so nothing secret reaches the outbox on disk,
//! and a Secret rotated while a delivery waits is used by its next attempt. A delivery
//! whose channel the front end has not (yet) handed over waits and is retried, as while a
//! target is unreachable: after a restart the outbox may start before the operator has
//! read every channel.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::core::channel::{AlertChannelSpec, AlertPolicy, MaintenanceWindow, Severity};
use crate::core::spec::SecretKeyRef;

/// Which channel: an `AlertChannel` in a namespace, or a `ClusterAlertChannel`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelRef {
    /// The channel's namespace; `None` for a cluster-wide channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl ChannelRef {
    /// An `AlertChannel` in `namespace`.
    pub fn namespaced(namespace: &str, name: &str) -> Self {
        Self {
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    /// A `ClusterAlertChannel`.
    pub fn cluster(name: &str) -> Self {
        Self {
            namespace: None,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ChannelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "AlertChannel {ns}/{}", self.name),
            None => write!(f, "ClusterAlertChannel {}", self.name),
        }
    }
}

/// Where a channel delivers, with its secrets as values.
#[derive(Clone, PartialEq, Eq)]
pub enum Destination {
    /// Alertmanager's API v2 at `url` (the base URL), re-sent every `resend_interval`.
    Alertmanager {
        /// Base URL.
        url: String,
        /// How often an active alert is posted again.
        resend_interval: Duration,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        /// The integration's routing key.
        routing_key: String,
        /// Where events go; PagerDuty's own endpoint unless a test points elsewhere.
        events_url: String,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The webhook URL.
        webhook_url: String,
    },
    /// A Teams Workflows webhook.
    Teams {
        /// The webhook URL.
        webhook_url: String,
    },
    /// A generic JSON POST.
    Webhook {
        /// URL.
        url: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// A minijinja body template (checked by the front end when it read the channel).
        template: Option<String>,
    },
    /// Email.
    Email {
        /// Recipients.
        to: Vec<String>,
    },
}

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

impl std::fmt::Debug for Destination {
    /// Names the kind and the non-secret parts only: URLs of chat webhooks and routing keys
    /// are passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Alertmanager {
                url,
                resend_interval,
            } => write!(f, "Alertmanager({url}, every {resend_interval:?})"),
            Destination::PagerDuty { .. } => f.write_str("PagerDuty(..)"),
            Destination::Slack { .. } => f.write_str("Slack(..)"),
            Destination::Teams { .. } => f.write_str("Teams(..)"),
            Destination::Webhook { headers, .. } => {
                write!(f, "Webhook(.., {} headers)", headers.len())
            }
            Destination::Email { to } => write!(f, "Email({})", to.join(", ")),
        }
    }
}

/// A channel ready to deliver through: what the front end read, secrets resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedChannel {
    /// Which channel.
    pub id: ChannelRef,
    /// Where it delivers.
    pub destination: Destination,
    /// The severity of its alerts.
    pub severity: Severity,
    /// Its policy (a Heartbeat's own policy overrides it field by field).
    pub policy: AlertPolicy,
    /// Windows without notifications through it.
    pub maintenance: Vec<MaintenanceWindow>,
}

/// Where a secret of a channel is read from, as the front end's spelling says.
#[derive(Debug, Clone, Copy)]
pub enum SecretSource<'a> {
    /// A key of a Secret in the channel's namespace (the operator's namespace for a
    /// `ClusterAlertChannel`).
    Ref(&'a SecretKeyRef),
    /// A file path (standalone).
    File(&'a str),
}

/// Why a channel could not be resolved: shown in its status and in logs, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The spec breaks a rule.
    #[error(transparent)]
    Spec(#[from] crate::core::channel::ChannelError),
    /// A secret could not be read (the front end's words: "Secret team-a/slack not found").
    #[error("spec.{field}: {reason}")]
    Secret {
        /// The field naming the secret.
        field: &'static str,
        /// Why, from the front end.
        reason: String,
    },
    /// A headers secret holds a line that is not `Name: value`.
    #[error("spec.webhook headers: line {0} is not `Name: value`")]
    Header(usize),
}

impl ResolvedChannel {
    /// Resolves `spec` for channel `id`, reading each secret through `read` (which returns
    /// the value, or why it cannot). The spec is expected to be valid for the front end's
    /// spelling ([`AlertChannelSpec::validate`]); a secret missing in both spellings is an
    /// error naming its field.
    pub fn resolve(
        id: ChannelRef,
        spec: &AlertChannelSpec,
        mut read: impl FnMut(SecretSource<'_>) -> Result<String, String>,
    ) -> Result<Self, ResolveError> {
        spec.kind()?;
        let mut secret = |field: &'static str,
                          r: Option<&SecretKeyRef>,
                          f: Option<&String>|
         -> Result<String, ResolveError> {
            let source = match (r, f) {
                (Some(r), _) => SecretSource::Ref(r),
                (None, Some(f)) => SecretSource::File(f),
                (None, None) => {
                    return Err(ResolveError::Secret {
                        field,
                        reason: "no secret is set".into(),
                    });
                }
            };
            read(source)
                .map(|v| v.trim().to_string())
                .map_err(|reason| ResolveError::Secret { field, reason })
        };
        let destination = if let Some(a) = &spec.alertmanager {
            Destination::Alertmanager {
                url: a.url.trim_end_matches('/').to_string(),
                resend_interval: spec.resend_interval().as_std(),
            }
        } else if let Some(p) = &spec.pagerduty {
            let key = secret(
                "pagerduty.routingKey",
                p.routing_key_secret_ref.as_ref(),
                p.routing_key_file.as_ref(),
            )?;
            Destination::PagerDuty {
                routing_key: key,
                events_url: p.url.clone().unwrap_or_else(|| PAGERDUTY_EVENTS_URL.into()),
            }
        } else if let Some(c) = &spec.slack {
            let url = secret(
                "slack.webhook",
                c.webhook_secret_ref.as_ref(),
                c.webhook_file.as_ref(),
            )?;
            Destination::Slack { webhook_url: url }
        } else if let Some(c) = &spec.teams {
            let url = secret(
                "teams.webhook",
                c.webhook_secret_ref.as_ref(),
                c.webhook_file.as_ref(),
            )?;
            Destination::Teams { webhook_url: url }
        } else if let Some(w) = &spec.webhook {
            let url = match &w.url {
                Some(u) => u.clone(),
                None => secret(
                    "webhook.url",
                    w.url_secret_ref.as_ref(),
                    w.url_file.as_ref(),
                )?,
            };
            let headers = if w.headers_secret_ref.is_some() || w.headers_file.is_some() {
                parse_headers(&secret(
                    "webhook.headers",
                    w.headers_secret_ref.as_ref(),
                    w.headers_file.as_ref(),
                )?)?
            } else {
                Vec::new()
            };
            Destination::Webhook {
                url,
                headers,
                template: w.template.clone(),
            }
        } else {
            let to = spec
                .email
                .as_ref()
                .map(|e| e.to.clone())
                .unwrap_or_default();
            Destination::Email { to }
        };
        Ok(Self {
            id,
            destination,
            severity: spec.severity.unwrap_or_default(),
            policy: spec.policy.clone(),
            maintenance: spec.maintenance.clone(),
        })
    }
}

/// `Name: value` lines (blank lines and `#` comments skipped).
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, ResolveError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(ResolveError::Header(i + 1))?;
        let name = name.trim();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(ResolveError::Header(i + 1));
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

/// The channel names a Heartbeat alerts through: its own `alerts`, else its Application's
/// (the same choice as for inline email and webhook targets).
pub fn channel_names<'a>(
    own: Option<&'a crate::core::spec::AlertTargets>,
    application: Option<&'a crate::core::spec::AlertTargets>,
) -> &'a [String] {
    [own, application]
        .into_iter()
        .flatten()
        .find(|a| !a.is_empty())
        .map_or(&[], |a| a.channels.as_slice())
}

/// A name that resolves to no channel: the Heartbeat is not Ready (`ChannelNotFound`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "spec.alerts.channels names {0:?}, which no AlertChannel in this namespace and no ClusterAlertChannel defines"
)]
pub struct ChannelNotFound(pub String);

/// Resolves channel names as Kubernetes does: an `AlertChannel` in `namespace` first, then
/// a `ClusterAlertChannel`; `exists` says which channels there are. Pure.
pub fn resolve_names(
    namespace: &str,
    names: &[String],
    exists: impl Fn(&ChannelRef) -> bool,
) -> Result<Vec<ChannelRef>, ChannelNotFound> {
    let mut out: Vec<ChannelRef> = Vec::new();
    for name in names {
        let local = ChannelRef::namespaced(namespace, name);
        let found = if exists(&local) {
            local
        } else {
            let cluster = ChannelRef::cluster(name);
            if !exists(&cluster) {
                return Err(ChannelNotFound(name.clone()));
            }
            cluster
        };
        if !out.contains(&found) {
            out.push(found);
        }
    }
    Ok(out)
}

/// How delivery through one channel has gone, for its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStatus {
    /// When the channel last accepted a notice.
    pub last_delivery: Option<Timestamp>,
    /// The last failed attempt: when, and why (no secrets: URLs are not quoted).
    pub last_error: Option<(Timestamp, String)>,
}

#[derive(Default)]
struct Book {
    channels: HashMap<ChannelRef, Arc<ResolvedChannel>>,
    status: HashMap<ChannelRef, ChannelStatus>,
}

/// The channels the front end handed over, and their delivery status: the port. Cheap to
/// clone; every clone sees the same channels.
#[derive(Clone)]
pub struct ChannelBook {
    book: Arc<RwLock<Book>>,
    changed: watch::Sender<u64>,
}

impl Default for ChannelBook {
    fn default() -> Self {
        Self {
            book: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl std::fmt::Debug for ChannelBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBook").finish_non_exhaustive()
    }
}

impl ChannelBook {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Book> {
        self.book.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces one channel (the operator, on each reconcile of a channel).
    pub fn upsert(&self, channel: ResolvedChannel) {
        let mut book = self.write();
        book.channels.insert(channel.id.clone(), Arc::new(channel));
    }

    /// Forgets a channel (deleted, or no longer resolvable): deliveries through it wait
    /// until it is back, and give up after the outbox's give-up time.
    pub fn remove(&self, id: &ChannelRef) {
        let mut book = self.write();
        book.channels.remove(id);
        book.status.remove(id);
    }

    /// Replaces every channel at once (standalone mode, at start and on reload).
    pub fn replace_all(&self, channels: Vec<ResolvedChannel>) {
        let mut book = self.write();
        book.channels = channels
            .into_iter()
            .map(|c| (c.id.clone(), Arc::new(c)))
            .collect();
        let Book { channels, status } = &mut *book;
        status.retain(|k, _| channels.contains_key(k));
    }

    /// The channel `id`, if the front end handed it over.
    pub fn get(&self, id: &ChannelRef) -> Option<Arc<ResolvedChannel>> {
        self.read().channels.get(id).cloned()
    }

    /// Whether channel `id` is known.
    pub fn contains(&self, id: &ChannelRef) -> bool {
        self.read().channels.contains_key(id)
    }

    /// How delivery through `id` has gone (default: nothing delivered, no error yet).
    pub fn status(&self, id: &ChannelRef) -> ChannelStatus {
        self.read().status.get(id).cloned().unwrap_or_default()
    }

    /// A receiver that changes whenever some channel's status changes: the operator waits
    /// on it, then reads [`ChannelBook::status`] of its channels and writes what differs.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records an accepted delivery through `id` (the delivery scheduler).
    pub fn delivered(&self, id: &ChannelRef, at: Timestamp) {
        self.write()
            .status
            .entry(id.clone())
            .or_default()
            .last_delivery = Some(at);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records a failed attempt through `id` (the delivery scheduler); an attempt through
    /// a channel not handed over yet is no failure of the channel.
    pub fn failed(&self, id: &ChannelRef, at: Timestamp, why: &str) {
        let mut book = self.write();
        if !book.channels.contains_key(id) {
            return;
        }
        book.status.entry(id.clone()).or_default().last_error = Some((at, why.into()));
        drop(book);
        self.changed.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> AlertChannelSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn names_resolve_to_the_namespace_first_then_the_cluster() {
        let known = [
            ChannelRef::namespaced("team-a", "oncall"),
            ChannelRef::cluster("oncall"),
            ChannelRef::cluster("alertmanager"),
        ];
        let exists = |r: &ChannelRef| known.contains(r);
        let names = vec!["oncall".to_string(), "alertmanager".into(), "oncall".into()];
        assert_eq!(
            resolve_names("team-a", &names, exists),
            Ok(vec![
                ChannelRef::namespaced("team-a", "oncall"),
                ChannelRef::cluster("alertmanager")
            ])
        );
        assert_eq!(
            resolve_names("team-b", &names[..1], exists),
            Ok(vec![ChannelRef::cluster("oncall")])
        );
        let err = resolve_names("team-b", &["pager".into()], exists).unwrap_err();
        assert_eq!(err, ChannelNotFound("pager".into()));
        assert!(err.to_string().contains("\"pager\""));
    }

    #[test]
    fn a_heartbeat_without_alerts_of_its_own_takes_its_applications_channels() {
        use crate::core::spec::AlertTargets;
        let app = AlertTargets {
            channels: vec!["team".into()],
            ..Default::default()
        };
        let own = AlertTargets {
            channels: vec!["mine".into()],
            ..Default::default()
        };
        let inline = AlertTargets {
            email: vec!["ops@example.com".into()],
            ..Default::default()
        };
        assert_eq!(channel_names(None, Some(&app)), ["team"]);
        assert_eq!(channel_names(Some(&own), Some(&app)), ["mine"]);
        // Alerts of its own, even inline ones only, replace the Application's.
        assert!(channel_names(Some(&inline), Some(&app)).is_empty());
        assert_eq!(
            channel_names(Some(&AlertTargets::default()), Some(&app)),
            ["team"]
        );
    }

    #[test]
    fn secrets_are_read_through_the_front_end_and_never_printed() {
        let s = spec(
            r#"{"webhook":{"urlSecretRef":{"name":"hook","key":"url"},"headersSecretRef":{"name":"hook","key":"headers"}},"severity":"warning"}"#,
        );
        let id = ChannelRef::namespaced("team-a", "hook");
        let ch = ResolvedChannel::resolve(id.clone(), &s, |src| match src {
            SecretSource::Ref(r) if r.key == "url" => {
                Ok("https://hooks.example.com/T0/secret\n".into())
            }
            SecretSource::Ref(_) => Ok("Authorization: Bearer s3cret\n# note\nX-Team: a\n".into()),
            SecretSource::File(_) => Err("unexpected".into()),
        })
        .unwrap();
        assert_eq!(ch.severity, Severity::Warning);
        let Destination::Webhook { url, headers, .. } = &ch.destination else {
            panic!("{ch:?}")
        };
        assert_eq!(url, "https://hooks.example.com/T0/secret");
        assert_eq!(headers[0], ("Authorization".into(), "Bearer s3cret".into()));
        assert_eq!(headers.len(), 2);
        let printed = format!("{ch:?}");
        assert!(!printed.contains("s3cret") && !printed.contains("T0/secret"));
        let missing = ResolvedChannel::resolve(
            id,
            &spec(r#"{"slack":{"webhookSecretRef":{"name":"slack","key":"url"}}}"#),
            |_| Err("Secret team-a/slack not found".into()),
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "spec.slack.webhook: Secret team-a/slack not found"
        );
        assert_eq!(parse_headers("no colon"), Err(ResolveError::Header(1)));
    }

    #[test]
    fn the_book_keeps_channels_and_their_status() {
        let book = ChannelBook::default();
        let id = ChannelRef::cluster("mail");
        let ch = ResolvedChannel::resolve(
            id.clone(),
            &spec(r#"{"email":{"to":["ops@example.com"]}}"#),
            |_| Err("none".into()),
        )
        .unwrap();
        book.upsert(ch);
        assert!(book.contains(&id));
        let mut rx = book.subscribe();
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        book.failed(&id, at, "connection refused");
        book.delivered(&id, at);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let st = book.status(&id);
        assert_eq!(st.last_delivery, Some(at));
        assert_eq!(st.last_error.unwrap().1, "connection refused");
        book.replace_all(Vec::new());
        assert!(!book.contains(&id));
        assert_eq!(book.status(&id), ChannelStatus::default());
    }
}
