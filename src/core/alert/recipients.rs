//! Each recipient once per notice: a Heartbeat whose inline `alerts` and alert channels
//! name the same address (`alerts.email: [ops@example.com]` beside an email channel to
//! ops@example.com) would otherwise send the same email twice. Pure.
//!
//! The channel's delivery is kept (its policy, windows and status apply) and the inline
//! target gives up what the channel covers: addresses an email channel sends to, a URL a
//! webhook, Slack or Teams channel posts to. Two channels are never merged: each has a
//! policy and a status of its own.

use std::borrow::Cow;
use std::collections::HashSet;

use super::channels::{ChannelRef, Destination};
use super::message::Target;

/// An email address as compared: its `addr-spec` (inside `<...>` when a name is given),
/// trimmed, in lower case.
fn address(text: &str) -> String {
    let inner = match (text.find('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => text.get(open + 1..close).unwrap_or(text),
        _ => text,
    };
    inner.trim().to_lowercase()
}

/// `targets` with each recipient once: duplicates left out, inline email addresses and
/// webhook URLs that a channel among `targets` also reaches left to the channel.
/// `destination` tells where a channel delivers (`None` for one not known yet: then it
/// covers nothing). Borrowed when nothing is left out.
pub fn distinct<'a>(
    targets: &'a [Target],
    destination: impl Fn(&ChannelRef) -> Option<Destination>,
) -> Cow<'a, [Target]> {
    // Channels alone (their names are resolved without duplicates), or one inline target:
    // nothing to look up (a herd of Downs through channels looks up nothing).
    let channels = targets
        .iter()
        .filter(|t| matches!(t, Target::Channel { .. }))
        .count();
    if channels == targets.len() || (channels == 0 && targets.len() <= 1) {
        return Cow::Borrowed(targets);
    }
    let mut emails: HashSet<String> = HashSet::new();
    let mut urls: HashSet<&str> = HashSet::new();
    let destinations: Vec<Destination> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Channel { channel } => destination(channel),
            _ => None,
        })
        .collect();
    for d in &destinations {
        match d {
            Destination::Email { to } => emails.extend(to.iter().map(|a| address(a))),
            Destination::Webhook { url, .. }
            | Destination::Slack { webhook_url: url }
            | Destination::Teams { webhook_url: url } => {
                urls.insert(url.as_str());
            }
            Destination::Alertmanager { .. } | Destination::PagerDuty { .. } => {}
        }
    }
    let mut out: Vec<Target> = Vec::with_capacity(targets.len());
    for t in targets {
        let kept = match t {
            Target::Email { to } => {
                let to: Vec<String> = to
                    .iter()
                    .filter(|a| emails.insert(address(a)))
                    .cloned()
                    .collect();
                (!to.is_empty()).then_some(Target::Email { to })
            }
            Target::Webhook { url } => {
                (!urls.contains(url.as_str())).then(|| Target::Webhook { url: url.clone() })
            }
            Target::Channel { .. } => Some(t.clone()),
        };
        if let Some(kept) = kept
            && !out.contains(&kept)
        {
            out.push(kept);
        }
    }
    if out.as_slice() == targets {
        Cow::Borrowed(targets)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(to: &[&str]) -> Target {
        Target::Email {
            to: to.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn channel(name: &str) -> Target {
        Target::Channel {
            channel: ChannelRef::cluster(name),
        }
    }

    fn book(id: &ChannelRef) -> Option<Destination> {
        match id.name.as_str() {
            "ops-mail" => Some(Destination::Email {
                to: vec!["Ops <OPS@example.com>".into()],
            }),
            "hook" => Some(Destination::Webhook {
                url: "https://hooks.example.com/a".into(),
                headers: Vec::new(),
                template: None,
            }),
            "pager" => Some(Destination::PagerDuty {
                routing_key: "k".into(),
                events_url: "https://events.pagerduty.com/v2/enqueue".into(),
            }),
            _ => None,
        }
    }

    #[test]
    fn an_address_an_email_channel_covers_is_left_to_the_channel() {
        let targets = [
            email(&["ops@example.com", "dev@example.com"]),
            channel("ops-mail"),
        ];
        assert_eq!(
            distinct(&targets, book).as_ref(),
            &[email(&["dev@example.com"]), channel("ops-mail")]
        );
        // All covered: the inline target goes.
        let targets = [email(&[" ops@Example.com"]), channel("ops-mail")];
        assert_eq!(distinct(&targets, book).as_ref(), &[channel("ops-mail")]);
    }

    #[test]
    fn duplicates_go_and_a_url_a_channel_posts_to_is_left_to_it() {
        let targets = [
            email(&["a@x.io", "A@x.io"]),
            Target::Webhook {
                url: "https://hooks.example.com/a".into(),
            },
            channel("hook"),
            channel("hook"),
        ];
        assert_eq!(
            distinct(&targets, book).as_ref(),
            &[email(&["a@x.io"]), channel("hook")]
        );
    }

    #[test]
    fn nothing_shared_is_borrowed_unchanged_and_unknown_channels_cover_nothing() {
        let targets = [email(&["ops@example.com"]), channel("pager")];
        assert!(matches!(distinct(&targets, book), Cow::Borrowed(_)));
        let targets = [email(&["ops@example.com"]), channel("not-handed-over-yet")];
        assert!(matches!(distinct(&targets, book), Cow::Borrowed(_)));
        let one = [email(&["ops@example.com"])];
        assert!(matches!(distinct(&one, |_| None), Cow::Borrowed(_)));
    }
}
