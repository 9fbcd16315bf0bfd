//! Body templates for generic webhooks (`webhook.template`), rendered with minijinja.
//!
//! Templates are JSON: each `{{ variable }}` prints a complete JSON literal (quotes and
//! escaping included), so a monitor name with quotes or newlines cannot break the body.
//! `|safe` bypasses that and is not to be used. A template is checked when it is defined, by
//! rendering it with sample data; every rendered body is parsed as JSON before it is sent,
//! and rendering is bounded (fuel, recursion), since templates come from users.
//!
//! Variables: `name`, `namespace`, `display_name`, `application`, `state`, `event`,
//! `reason`, `since`, `last_ping` (the last success), `last_failure` (a failure after
//! it), `expected_at`, `exit_code`, `dashboard_url`, `runbook_url`, `severity`, `incident`
//! (absent values are `null`).

use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Value, json};

use super::facts::{Facts, NoticeKind, sample, stamp};

/// How much work one render may do (roughly instructions).
const FUEL: u64 = 50_000;

/// The longest template accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// Why a template was refused or failed to render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Longer than [`MAX_TEMPLATE_BYTES`].
    #[error("template is longer than {MAX_TEMPLATE_BYTES} bytes")]
    TooLong,
    /// Syntax, an unknown variable, or out of fuel.
    #[error("template: {0}")]
    Render(String),
    /// What it rendered is not JSON.
    #[error("template did not render JSON: {0}")]
    NotJson(String),
}

/// A checked body template.
#[derive(Debug)]
pub struct BodyTemplate {
    env: Environment<'static>,
}

const NAME: &str = "body.json";

impl BodyTemplate {
    /// Parses `source` and renders it once with sample data, so a template that could never
    /// produce a valid body is refused where it is defined, not at 3 a.m.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLong);
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::Json);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(32);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        let t = Self { env };
        t.no_unknown_variables()?;
        let quoted = source.contains("\"{{");
        for kind in [NoticeKind::Down, NoticeKind::Recovery] {
            let mut f = sample(kind);
            t.render(&f).map_err(|e| hint_quotes(e, quoted))?;
            f.application = None;
            f.exit_code = None;
            f.last_ping_at = None;
            f.last_failure_at = None;
            f.expected_at = None;
            f.runbook_url = None;
            t.render(&f).map_err(|e| hint_quotes(e, quoted))?;
        }
        Ok(t)
    }

    /// Refuses a variable the template reads but nothing defines, naming it and the
    /// documented ones: minijinja's own error says only "undefined value".
    fn no_unknown_variables(&self) -> Result<(), TemplateError> {
        let Ok(template) = self.env.get_template(NAME) else {
            return Ok(());
        };
        let documented = variables(&sample(NoticeKind::Down));
        let documented = documented.as_object();
        // `loop` is defined by every `for`; `range`, `dict` and the like are minijinja's.
        let known = |name: &str| {
            name == "loop"
                || self.env.globals().any(|(g, _)| g == name)
                || documented.is_some_and(|d| d.contains_key(name))
        };
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !known(v))
            .collect();
        unknown.sort();
        match unknown.as_slice() {
            [] => Ok(()),
            names => Err(TemplateError::Render(format!(
                "unknown variable{} {}; the variables are {}",
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                documented
                    .map(|d| d.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
            ))),
        }
    }

    /// The body for this notice, checked to be JSON.
    pub fn render(&self, facts: &Facts) -> Result<Value, TemplateError> {
        let text = self
            .env
            .get_template(NAME)
            .and_then(|t| t.render(minijinja::Value::from(Serde(&variables(facts)))))
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| TemplateError::NotJson(e.to_string()))
    }
}

/// A template that writes `"{{ x }}"` renders `""value""`: each variable prints its own
/// quotes. The JSON error alone does not say so.
fn hint_quotes(e: TemplateError, quoted: bool) -> TemplateError {
    match e {
        TemplateError::NotJson(m) if quoted => TemplateError::NotJson(format!(
            "{m} (each variable prints a JSON value with its own quotes: write {{{{ name }}}}, not \"{{{{ name }}}}\")"
        )),
        e => e,
    }
}

/// The documented template variables for a notice.
pub fn variables(facts: &Facts) -> Value {
    json!({
        "name": facts.name,
        "namespace": facts.namespace,
        "display_name": facts.display_name,
        "application": facts.application,
        "state": facts.kind.state(),
        "event": facts.kind,
        "reason": facts.reason,
        "since": stamp(Some(facts.since)),
        "last_ping": facts.last_ping_at.map(|t| stamp(Some(t))),
        "last_failure": facts.last_failure_at.map(|t| stamp(Some(t))),
        "expected_at": facts.expected_at.map(|t| stamp(Some(t))),
        "exit_code": facts.exit_code,
        "dashboard_url": facts.dashboard_url,
        "runbook_url": facts.runbook_url,
        "severity": facts.severity.as_str(),
        "incident": facts.incident,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_print_as_json_literals_whatever_they_hold() {
        let t = BodyTemplate::new(
            r#"{"text": "{{ state }}: " , "monitor": {{ name }}, "who": {{ display_name }}, "code": {{ exit_code }}, "last": {{ last_ping }}, "url": {{ dashboard_url }}}"#,
        );
        // A string literal around a variable is two literals: refused at definition, saying
        // why.
        assert!(
            matches!(&t, Err(TemplateError::NotJson(m)) if m.contains("write {{ name }}, not \"{{ name }}\"")),
            "{t:?}"
        );
        let t = BodyTemplate::new(
            r#"{"text": {{ state ~ ": " ~ name }}, "who": {{ display_name }}, "code": {{ exit_code }}, "last": {{ last_ping }}, "url": {{ dashboard_url }}}"#,
        )
        .unwrap();
        let mut f = sample(NoticeKind::Down);
        f.display_name = Some("quote \" newline \n <x>".into());
        let body = t.render(&f).unwrap();
        assert_eq!(body["text"], "Down: nightly-backup");
        assert_eq!(body["who"], "quote \" newline \n <x>");
        assert_eq!(body["code"], 2);
        assert_eq!(body["last"], "2026-12-05T02:00:00Z");
        f.last_ping_at = None;
        assert_eq!(t.render(&f).unwrap()["last"], Value::Null);
    }

    #[test]
    fn bad_templates_are_refused_when_defined_with_a_reason() {
        let unknown = BodyTemplate::new(r#"{"x": {{ nmae }}, "y": {{ stat }}}"#).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("unknown variables nmae, stat; the variables are "),
            "{unknown}"
        );
        assert!(unknown.to_string().contains("display_name"), "{unknown}");
        // Names a template defines itself, and minijinja's own functions, are no unknowns.
        let own = r#"{% set n = name %}{"x": [{% for i in range(2) %}{{ n }}{% if not loop.last %},{% endif %}{% endfor %}]}"#;
        assert!(BodyTemplate::new(own).is_ok());
        // What the static look cannot see (an attribute of a variable) fails at the sample
        // render.
        let late = BodyTemplate::new(r#"{"x": {{ name.nope }}}"#);
        assert!(late.is_err(), "{late:?}");
        let syntax = BodyTemplate::new(r#"{"x": {{ name }"#).unwrap_err();
        assert!(syntax.to_string().contains("syntax error"), "{syntax}");
        let endless = BodyTemplate::new(
            r#"{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}{}"#,
        )
        .unwrap_err();
        assert!(endless.to_string().contains("fuel"), "{endless}");
        let long = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert_eq!(
            BodyTemplate::new(&long).unwrap_err(),
            TemplateError::TooLong
        );
    }

    #[test]
    fn loops_and_conditions_work_on_the_documented_variables() {
        let t = BodyTemplate::new(
            r#"{"summary": {{ "%s/%s is %s"|format(namespace, name, state) }}{% if runbook_url %}, "runbook": {{ runbook_url }}{% endif %}, "event": {{ event }}}"#,
        )
        .unwrap();
        let body = t.render(&sample(NoticeKind::Recovery)).unwrap();
        assert_eq!(body["summary"], "team-a/nightly-backup is Up");
        assert_eq!(body["event"], "recovery");
        assert!(body["runbook"].is_string());
    }
}
