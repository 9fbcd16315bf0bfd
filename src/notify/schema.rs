//! The providers' documented request schemas, as checks: what PagerDuty, Slack, Teams and
//! Alertmanager would refuse. The payload builders are tested against them, and the test
//! receivers that stand in for the providers (which cannot be reached from a test) answer
//! 400 when a request fails them.
//!
//! Sources: PagerDuty Events API v2 (required fields, limits, severities); Slack Block Kit
//! (block types, text limits, at most 50 blocks); Adaptive Cards as Teams Workflows accept
//! them (`AdaptiveCard` 1.0–1.5, `Action.OpenUrl`); Alertmanager's OpenAPI (`postableAlerts`).

use serde_json::Value;

/// What is wrong with a request body, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(String);

fn fail<T>(msg: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError(msg.into()))
}

fn text<'a>(v: &'a Value, field: &str) -> Result<&'a str, SchemaError> {
    match v.get(field).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => fail(format!("{field} is required (non-empty string)")),
    }
}

fn max_chars(s: &str, max: usize, field: &str) -> Result<(), SchemaError> {
    if s.chars().count() > max {
        return fail(format!("{field} is longer than {max} characters"));
    }
    Ok(())
}

/// A PagerDuty Events API v2 event.
pub fn pagerduty(e: &Value) -> Result<(), SchemaError> {
    let key = text(e, "routing_key")?;
    if key.len() != 32 {
        return fail("routing_key must be a 32-character integration key");
    }
    let action = text(e, "event_action")?;
    if let Some(dedup) = e.get("dedup_key") {
        max_chars(dedup.as_str().unwrap_or(""), 255, "dedup_key")?;
    }
    match action {
        "trigger" => {
            let p = e
                .get("payload")
                .ok_or(SchemaError("payload is required".into()))?;
            max_chars(text(p, "summary")?, 1024, "payload.summary")?;
            text(p, "source")?;
            let sev = text(p, "severity")?;
            if !["critical", "error", "warning", "info"].contains(&sev) {
                return fail(format!(
                    "payload.severity {sev:?} is not one of critical, error, warning, info"
                ));
            }
            if let Some(d) = p.get("custom_details")
                && !d.is_object()
            {
                return fail("payload.custom_details must be an object");
            }
        }
        "acknowledge" | "resolve" => {
            text(e, "dedup_key")?;
        }
        other => {
            return fail(format!(
                "event_action {other:?} is not trigger, acknowledge or resolve"
            ));
        }
    }
    for link in e
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        text(link, "href")?;
    }
    Ok(())
}

fn slack_text(t: &Value, max: usize, field: &str, plain_only: bool) -> Result<(), SchemaError> {
    let kind = text(t, "type")?;
    if kind != "plain_text" && (plain_only || kind != "mrkdwn") {
        return fail(format!("{field}.type {kind:?} is not allowed here"));
    }
    max_chars(text(t, "text")?, max, &format!("{field}.text"))
}

/// A Slack incoming-webhook message with Block Kit blocks.
pub fn slack(m: &Value) -> Result<(), SchemaError> {
    text(m, "text")?;
    let blocks = match m.get("blocks").and_then(Value::as_array) {
        Some(b) if !b.is_empty() => b,
        _ => return fail("blocks must be a non-empty array"),
    };
    if blocks.len() > 50 {
        return fail("more than 50 blocks");
    }
    for (i, b) in blocks.iter().enumerate() {
        let at = format!("blocks[{i}]");
        match text(b, "type")? {
            "header" => slack_text(&b["text"], 150, &format!("{at}.text"), true)?,
            "section" => {
                let has_text = b.get("text").is_some();
                if has_text {
                    slack_text(&b["text"], 3000, &format!("{at}.text"), false)?;
                }
                let fields = b.get("fields").and_then(Value::as_array);
                if let Some(f) = fields {
                    if f.len() > 10 {
                        return fail(format!("{at}.fields has more than 10 items"));
                    }
                    for (j, t) in f.iter().enumerate() {
                        slack_text(t, 2000, &format!("{at}.fields[{j}]"), false)?;
                    }
                }
                if !has_text && fields.is_none() {
                    return fail(format!("{at} needs text or fields"));
                }
            }
            "context" => {
                let els = b.get("elements").and_then(Value::as_array);
                match els {
                    Some(e) if !e.is_empty() && e.len() <= 10 => {
                        for (j, t) in e.iter().enumerate() {
                            slack_text(t, 3000, &format!("{at}.elements[{j}]"), false)?;
                        }
                    }
                    _ => return fail(format!("{at}.elements must hold 1 to 10 items")),
                }
            }
            "actions" => {
                let els = b.get("elements").and_then(Value::as_array);
                match els {
                    Some(e) if !e.is_empty() && e.len() <= 25 => {
                        for (j, el) in e.iter().enumerate() {
                            if text(el, "type")? != "button" {
                                return fail(format!("{at}.elements[{j}] is not a button"));
                            }
                            slack_text(&el["text"], 75, &format!("{at}.elements[{j}].text"), true)?;
                            max_chars(text(el, "url")?, 3000, "url")?;
                        }
                    }
                    _ => return fail(format!("{at}.elements must hold 1 to 25 items")),
                }
            }
            "divider" => {}
            other => return fail(format!("{at}.type {other:?} is not a known block")),
        }
        if let Some(id) = b.get("block_id") {
            max_chars(id.as_str().unwrap_or(""), 255, &format!("{at}.block_id"))?;
        }
    }
    Ok(())
}

/// A Teams Workflows webhook message carrying one Adaptive Card.
pub fn teams(m: &Value) -> Result<(), SchemaError> {
    if text(m, "type")? != "message" {
        return fail("type must be \"message\"");
    }
    let atts = match m.get("attachments").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a,
        _ => return fail("attachments must be a non-empty array"),
    };
    for a in atts {
        if text(a, "contentType")? != "application/vnd.microsoft.card.adaptive" {
            return fail(
                "attachments[].contentType must be application/vnd.microsoft.card.adaptive",
            );
        }
        let card = &a["content"];
        if text(card, "type")? != "AdaptiveCard" {
            return fail("content.type must be AdaptiveCard");
        }
        let version = text(card, "version")?;
        if !["1.0", "1.1", "1.2", "1.3", "1.4", "1.5"].contains(&version) {
            return fail(format!("content.version {version:?} is not 1.0 to 1.5"));
        }
        let body = card.get("body").and_then(Value::as_array);
        for el in body.into_iter().flatten() {
            match text(el, "type")? {
                "TextBlock" => {
                    text(el, "text")?;
                }
                "RichTextBlock" => {
                    let inlines = match el.get("inlines").and_then(Value::as_array) {
                        Some(i) if !i.is_empty() => i,
                        _ => return fail("RichTextBlock inlines must be a non-empty array"),
                    };
                    for run in inlines {
                        if !run.is_string() {
                            if text(run, "type")? != "TextRun" {
                                return fail("RichTextBlock inlines[] must be TextRuns");
                            }
                            text(run, "text")?;
                        }
                    }
                }
                "FactSet" => {
                    for f in el
                        .get("facts")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        text(f, "title")?;
                        if !f["value"].is_string() {
                            return fail("FactSet facts[].value must be a string");
                        }
                    }
                }
                "ColumnSet" | "Container" | "Image" => {}
                other => return fail(format!("body element {other:?} is not supported")),
            }
        }
        for act in card
            .get("actions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match text(act, "type")? {
                "Action.OpenUrl" => {
                    text(act, "url")?;
                }
                "Action.ShowCard" | "Action.ToggleVisibility" => {}
                other => return fail(format!("action {other:?} is not supported in webhooks")),
            }
        }
    }
    Ok(())
}

/// An Alertmanager API v2 `postableAlerts` body.
pub fn alertmanager(body: &Value) -> Result<(), SchemaError> {
    let alerts = match body.as_array() {
        Some(a) => a,
        None => return fail("the body must be an array of alerts"),
    };
    for (i, a) in alerts.iter().enumerate() {
        match a.get("labels").and_then(Value::as_object) {
            Some(l) if !l.is_empty() => {
                if l.values().any(|v| !v.is_string()) {
                    return fail(format!("{i}.labels values must be strings"));
                }
            }
            _ => {
                return fail(format!(
                    "{i}.labels in body is required (at least one pair)"
                ));
            }
        }
        for field in ["startsAt", "endsAt"] {
            if let Some(v) = a.get(field) {
                let ok = v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
                if ok.is_none() {
                    return fail(format!("{i}.{field} must be an RFC 3339 date-time"));
                }
            }
        }
        if let Some(u) = a.get("generatorURL") {
            let s = u.as_str().unwrap_or("");
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return fail(format!("{i}.generatorURL must be of type uri"));
            }
        }
    }
    Ok(())
}
