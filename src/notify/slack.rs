//! Slack incoming webhooks: a Block Kit message (header, what happened, the facts as
//! fields, a button to the dashboard) with `text` as the notification fallback.

use serde_json::{Value, json};

use super::facts::{Facts, NoticeKind, stamp};

/// Slack's mrkdwn needs `&`, `<` and `>` escaped, or a monitor name could forge a link.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn field(label: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": cut(&format!("*{label}*\n{}", escape(value)), 2000)})
}

fn icon(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::Down => ":red_circle:",
        NoticeKind::Late => ":large_yellow_circle:",
        NoticeKind::Recovery => ":large_green_circle:",
        NoticeKind::Flapping => ":large_orange_circle:",
        NoticeKind::Stopped => ":white_circle:",
    }
}

/// The webhook body for this notice.
pub fn message(facts: &Facts) -> Value {
    let mut fields = vec![
        field("State", facts.kind.state()),
        field("Since", &stamp(Some(facts.since))),
        field("Last success", &stamp(facts.last_ping_at)),
    ];
    if let Some(at) = facts.last_failure_at {
        fields.push(field("Last failure", &stamp(Some(at))));
    }
    // No deadline (a monitor that never succeeded, or one paused): no "Expected" to tell.
    if let Some(at) = facts.expected_at {
        fields.push(field("Expected", &stamp(Some(at))));
    }
    fields.push(field(
        "Application",
        facts.application.as_deref().unwrap_or("none"),
    ));
    if let Some(code) = facts.exit_code {
        fields.push(field("Exit code", &code.to_string()));
    }
    let mut buttons = vec![
        json!({"type": "button", "text": {"type": "plain_text", "text": "Open in Hartslag"}, "url": facts.dashboard_url}),
    ];
    if let Some(url) = &facts.runbook_url {
        buttons.push(json!({"type": "button", "text": {"type": "plain_text", "text": "Runbook"}, "url": url}));
    }
    json!({
        "text": format!("{} {}", icon(facts.kind), escape(&facts.headline())),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(&facts.headline(), 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("{} {}", icon(facts.kind), escape(&facts.reason)), 3000)}},
            {"type": "section", "fields": fields},
            {"type": "actions", "elements": buttons},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&format!("{}/{} · incident {}", escape(&facts.namespace), escape(&facts.name), escape(&facts.incident)), 3000)}]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::facts::sample;
    use crate::notify::schema;

    #[test]
    fn every_kind_of_notice_is_valid_block_kit() {
        for kind in NoticeKind::ALL {
            let m = message(&sample(kind));
            schema::slack(&m).unwrap_or_else(|e| panic!("{kind:?}: {e}\n{m:#}"));
        }
        let m = message(&sample(NoticeKind::Down));
        assert_eq!(
            m["blocks"][0]["text"]["text"],
            "DOWN: Nightly backup (team-a/nightly-backup)"
        );
        assert_eq!(
            m["blocks"][3]["elements"][0]["url"],
            sample(NoticeKind::Down).dashboard_url
        );
    }

    #[test]
    fn a_job_that_only_failed_shows_its_failure_and_no_expected_never() {
        let mut f = sample(NoticeKind::Down);
        f.last_ping_at = None;
        f.expected_at = None;
        let m = message(&f);
        schema::slack(&m).unwrap();
        let fields = m["blocks"][2]["fields"].to_string();
        assert!(fields.contains("*Last success*\\nnever"), "{fields}");
        assert!(
            fields.contains("*Last failure*\\n2026-12-05T03:05:00Z"),
            "{fields}"
        );
        assert!(!fields.contains("Expected"), "{fields}");
        assert!(!fields.contains("Last ping"), "{fields}");
    }

    #[test]
    fn names_cannot_forge_links_and_long_ones_are_cut() {
        let mut f = sample(NoticeKind::Down);
        f.display_name = Some(format!("<https://evil|x> {}", "n".repeat(400)));
        f.reason = "a & <b>".into();
        let m = message(&f);
        schema::slack(&m).unwrap();
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .contains("&lt;https://evil|x&gt;")
        );
        assert!(
            m["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("a &amp; &lt;b&gt;")
        );
    }
}
