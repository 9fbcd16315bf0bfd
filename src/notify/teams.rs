//! Microsoft Teams through a Workflows webhook ("Post to a channel when a webhook request is
//! received"): a message with one Adaptive Card, version 1.4. Office 365 connectors and
//! their MessageCard format are retired, so they are not offered.

use serde_json::{Value, json};

use super::facts::{Facts, NoticeKind, stamp};

/// The Adaptive Card version sent: rendered by Teams on every client.
pub const CARD_VERSION: &str = "1.4";

fn colour(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::Down | NoticeKind::Flapping => "Attention",
        NoticeKind::Late => "Warning",
        NoticeKind::Recovery => "Good",
        NoticeKind::Stopped => "Accent",
    }
}

/// A block whose text Teams shows as it is. A `TextBlock` renders Markdown, so a display
/// name like `**URGENT**` or a schedule like `*/5 * * * *` would come out bold or italic;
/// a `RichTextBlock`'s `TextRun` takes no Markdown (the facts' values, which do, are
/// Kubernetes names, times and numbers).
fn literal(run: Value) -> Value {
    json!({"type": "RichTextBlock", "inlines": [run]})
}

/// The webhook body for this notice.
pub fn message(facts: &Facts) -> Value {
    let mut facts_list = vec![
        json!({"title": "State", "value": facts.kind.state()}),
        json!({"title": "Since", "value": stamp(Some(facts.since))}),
        json!({"title": "Last success", "value": stamp(facts.last_ping_at)}),
    ];
    if let Some(at) = facts.last_failure_at {
        facts_list.push(json!({"title": "Last failure", "value": stamp(Some(at))}));
    }
    // No deadline (a monitor that never succeeded, or one paused): no "Expected" to tell.
    if let Some(at) = facts.expected_at {
        facts_list.push(json!({"title": "Expected", "value": stamp(Some(at))}));
    }
    facts_list.push(json!({"title": "Namespace", "value": facts.namespace}));
    facts_list.push(
        json!({"title": "Application", "value": facts.application.as_deref().unwrap_or("none")}),
    );
    if let Some(code) = facts.exit_code {
        facts_list.push(json!({"title": "Exit code", "value": code.to_string()}));
    }
    let mut actions = vec![
        json!({"type": "Action.OpenUrl", "title": "Open in Hartslag", "url": facts.dashboard_url}),
    ];
    if let Some(url) = &facts.runbook_url {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Runbook", "url": url}));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": CARD_VERSION,
                "body": [
                    literal(json!({"type": "TextRun", "text": facts.headline(), "weight": "Bolder",
                     "size": "Medium", "color": colour(facts.kind)})),
                    literal(json!({"type": "TextRun", "text": facts.reason})),
                    {"type": "FactSet", "facts": facts_list},
                ],
                "actions": actions,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::facts::sample;
    use crate::notify::schema;

    #[test]
    fn every_kind_of_notice_is_one_adaptive_card_the_workflow_accepts() {
        for kind in NoticeKind::ALL {
            let m = message(&sample(kind));
            schema::teams(&m).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
        let m = message(&sample(NoticeKind::Recovery));
        let card = &m["attachments"][0]["content"];
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["body"][0]["inlines"][0]["color"], "Good");
        assert_eq!(
            card["actions"][0]["url"],
            sample(NoticeKind::Recovery).dashboard_url
        );
    }

    #[test]
    fn names_and_reasons_are_shown_as_written_not_as_markdown() {
        let mut f = sample(NoticeKind::Down);
        f.display_name = Some("**URGENT** [click](https://evil.example)".into());
        f.reason = "no ping for the run scheduled at 02:00 (*/5 * * * *, grace 5m)".into();
        let m = message(&f);
        schema::teams(&m).unwrap();
        let body = &m["attachments"][0]["content"]["body"];
        for (i, text) in [(0, "**URGENT** [click]"), (1, "*/5 * * * *")] {
            assert_eq!(body[i]["type"], "RichTextBlock");
            assert_eq!(body[i]["inlines"][0]["type"], "TextRun");
            let shown = body[i]["inlines"][0]["text"].as_str().unwrap();
            assert!(shown.contains(text), "{shown}");
        }
        assert!(
            body.as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"] != "TextBlock"),
            "no block renders the free text as Markdown"
        );
    }

    #[test]
    fn the_schema_check_refuses_what_teams_would() {
        let mut m = message(&sample(NoticeKind::Down));
        m["attachments"][0]["content"]["version"] = "2.0".into();
        assert!(schema::teams(&m).is_err());
        let mut m = message(&sample(NoticeKind::Down));
        m["attachments"][0]["content"]["actions"][0]["type"] = "Action.Submit".into();
        assert!(schema::teams(&m).is_err());
    }
}
