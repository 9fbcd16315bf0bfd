//! The status a channel (`AlertChannel`, `ClusterAlertChannel`) should show: `Ready` from
//! the settled verdict (its target valid, its Secrets found), last delivery and last error
//! from the core's delivery results (kept from the live status while the core has none,
//! as after a restart). A pure function, like [`super::model`]: after a
//! restart with nothing changed it equals the live status and nothing is written.

use jiff::Timestamp;

use super::model::{Verdict, format_time, ready_condition};
use crate::k8s::crd::AlertChannelStatus;

/// What the core reports of a channel's deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deliveries {
    /// When a notice was last accepted by the target.
    pub last_delivery: Option<Timestamp>,
    /// The last delivery error (no secrets in it) and when it happened.
    pub last_error: Option<(Timestamp, String)>,
}

/// Everything a channel's status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ChannelInputs<'a> {
    /// The settled verdict.
    pub verdict: &'a Verdict,
    /// Delivery results, when the core has any.
    pub deliveries: Option<&'a Deliveries>,
    /// The status on the live object.
    pub live: &'a AlertChannelStatus,
    /// Now.
    pub now: Timestamp,
}

/// The status a channel should show.
pub fn channel_status(i: ChannelInputs<'_>) -> AlertChannelStatus {
    let ready = ready_condition(
        &i.live.conditions,
        i.verdict,
        "Resolved",
        "target valid and its Secrets found",
        i.now,
    );
    let d = i.deliveries.cloned().unwrap_or_default();
    // The core remembers deliveries in memory only: after a restart it knows none, and
    // what the live status shows stays true until the next delivery.
    let (last_error, last_error_at) = match d.last_error {
        Some((at, e)) => (Some(e), Some(format_time(at))),
        None => (i.live.last_error.clone(), i.live.last_error_at.clone()),
    };
    AlertChannelStatus {
        conditions: vec![ready],
        last_delivery_at: d
            .last_delivery
            .map(format_time)
            .or_else(|| i.live.last_delivery_at.clone()),
        last_error,
        last_error_at,
        observed_generation: i.verdict.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::status::{Outcome, Refusal};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn ready_keeps_its_transition_time_and_refusals_say_why() {
        let ok = Verdict {
            generation: Some(2),
            outcome: Outcome::Ready {
                secret: String::new(),
            },
        };
        let first = channel_status(ChannelInputs {
            verdict: &ok,
            deliveries: None,
            live: &AlertChannelStatus::default(),
            now: t(0),
        });
        assert_eq!(first.conditions[0].status, "True");
        assert_eq!(first.observed_generation, Some(2));
        // Unchanged later: equal to the live status, so nothing is written.
        let again = channel_status(ChannelInputs {
            verdict: &ok,
            deliveries: None,
            live: &first,
            now: t(600),
        });
        assert_eq!(again, first);
        let missing = Verdict {
            generation: Some(2),
            outcome: Outcome::Refused(Refusal::new("SecretNotFound", "Secret slack is missing")),
        };
        let refused = channel_status(ChannelInputs {
            verdict: &missing,
            deliveries: None,
            live: &first,
            now: t(700),
        });
        let c = &refused.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert_eq!(c.last_transition_time.0, t(700));
    }

    #[test]
    fn deliveries_show_as_times_and_the_last_error() {
        let ok = Verdict {
            generation: Some(1),
            outcome: Outcome::Ready {
                secret: String::new(),
            },
        };
        let d = Deliveries {
            last_delivery: Some(t(10)),
            last_error: Some((t(5), "HTTP 500 from hooks.slack.com".into())),
        };
        let st = channel_status(ChannelInputs {
            verdict: &ok,
            deliveries: Some(&d),
            live: &AlertChannelStatus::default(),
            now: t(20),
        });
        assert_eq!(st.last_delivery_at.as_deref(), Some("2027-01-15T08:00:10Z"));
        assert_eq!(
            st.last_error.as_deref(),
            Some("HTTP 500 from hooks.slack.com")
        );
        assert_eq!(st.last_error_at.as_deref(), Some("2027-01-15T08:00:05Z"));
        // After a restart the core knows no deliveries: the live ones stay, nothing is
        // written.
        let restarted = channel_status(ChannelInputs {
            verdict: &ok,
            deliveries: Some(&Deliveries::default()),
            live: &st,
            now: t(900),
        });
        assert_eq!(restarted, st);
    }
}
