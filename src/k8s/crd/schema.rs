//! Kubernetes-only additions to the generated CRD schemas.
//!
//! The spec types are shared with standalone manifests, so what only the API server uses
//! is added here: defaults it fills in (printer columns are never blank and `kubectl
//! explain` shows them), length limits, and CEL rules (`x-kubernetes-validations`) for the
//! bounds Kubernetes 1.25 and later checks at admission. Older servers ignore the rules;
//! the reconciler checks the same bounds either way, so a rule only moves an error from
//! the object's status to `kubectl apply`.

use schemars::Schema;
use serde_json::{Map, Value, json};

use crate::core::spec::{DEFAULT_GRACE, MAX_INTERVAL};

/// Longest duration text accepted; bounds the cost the API server estimates for the rules.
const DURATION_MAX_LENGTH: u64 = 32;

/// CEL: the number of seconds a duration string (`90s`, `1h30m`, `7d`, `3600`) stands for.
/// Uses the Kubernetes regex (`findAll`), strings (`substring`) and lists (`sum`) libraries.
const SECONDS: &str = "(self.matches('^[0-9]+$') ? int(self) : self.findAll('[0-9]+[dhms]').map(p, int(p.substring(0, p.size() - 1)) * (p.endsWith('d') ? 86400 : p.endsWith('h') ? 3600 : p.endsWith('m') ? 60 : 1)).sum())";

fn properties(schema: &mut Schema) -> Option<&mut Map<String, Value>> {
    schema.get_mut("properties")?.as_object_mut()
}

fn field<'a>(props: &'a mut Map<String, Value>, name: &str) -> Option<&'a mut Map<String, Value>> {
    props.get_mut(name)?.as_object_mut()
}

fn rule(rule: String, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

/// A duration field: length limit, optional default and CEL bounds.
fn duration(
    props: &mut Map<String, Value>,
    name: &str,
    default: Option<String>,
    rules: Vec<Value>,
) {
    let Some(f) = field(props, name) else {
        return;
    };
    f.insert("maxLength".into(), json!(DURATION_MAX_LENGTH));
    if let Some(d) = default {
        f.insert("default".into(), json!(d));
    }
    if !rules.is_empty() {
        f.insert("x-kubernetes-validations".into(), Value::Array(rules));
    }
}

/// Sets `key` on a field's schema and on the alternatives an `Option` wraps it in, which
/// the structural rewrite later merges into the field (the inner values would win).
fn set(f: &mut Map<String, Value>, key: &str, value: Value) {
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(alts)) = f.get_mut(combinator) {
            for alt in alts.iter_mut().filter_map(Value::as_object_mut) {
                if alt.get("type") != Some(&json!("null")) {
                    alt.insert(key.into(), value.clone());
                }
            }
        }
    }
    f.insert(key.into(), value);
}

fn deletion_policy(props: &mut Map<String, Value>, what: &str) {
    if let Some(f) = field(props, "deletionPolicy") {
        f.insert("default".into(), json!("Delete"));
        set(
            f,
            "description",
            json!(format!(
                "What happens to the {what} when this resource is deleted: Delete removes it \
                 together with the resource; Retain keeps it (only the token is revoked) so a \
                 resource of the same name picks it up again. Default: Delete."
            )),
        );
    }
}

/// Alert targets: the URL and address shapes the reconciler accepts, enforced at admission
/// on every Kubernetes version (plain OpenAPI patterns, not CEL).
fn alerts(props: &mut Map<String, Value>) {
    if let Some(a) = field(props, "alerts") {
        set(
            a,
            "x-kubernetes-validations",
            json!([{
                "rule": "!(has(self.webhook) && has(self.webhookSecretRef))",
                "message": "set webhook or webhookSecretRef, not both"
            }]),
        );
    }
    let Some(alerts) = field(props, "alerts").and_then(|a| a.get_mut("properties")) else {
        return;
    };
    let Some(alerts) = alerts.as_object_mut() else {
        return;
    };
    if let Some(w) = field(alerts, "webhook") {
        w.insert("pattern".into(), json!("^https?://"));
    }
    if let Some(items) = field(alerts, "email")
        .and_then(|e| e.get_mut("items"))
        .and_then(Value::as_object_mut)
    {
        items.insert("pattern".into(), json!("^[^@]+@.*[.]"));
    }
    if let Some(items) = field(alerts, "channels")
        .and_then(|e| e.get_mut("items"))
        .and_then(Value::as_object_mut)
    {
        items.insert("pattern".into(), json!("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"));
        items.insert("maxLength".into(), json!(253));
    }
}

/// The Heartbeat spec's schema.
pub fn heartbeat_spec(schema: &mut Schema) {
    let Some(props) = properties(schema) else {
        return;
    };
    let max = MAX_INTERVAL.as_secs();
    // No default for interval: it excludes `schedule`, and a Heartbeat with `cronJobRef`
    // takes the CronJob's schedule; a default filled in by the API server would be
    // indistinguishable from an interval set on purpose. The core applies 1h when neither
    // is set.
    duration(
        props,
        "interval",
        None,
        vec![rule(
            format!("{SECONDS} >= 1 && {SECONDS} <= {max}"),
            "interval must be between 1s and 365d (the operator's --min-interval, 60s by default, is checked when it is applied)",
        )],
    );
    duration(
        props,
        "grace",
        Some(DEFAULT_GRACE.to_string()),
        vec![rule(
            format!("{SECONDS} <= {max}"),
            "grace must be at most 365d",
        )],
    );
    deletion_policy(props, "monitor's state and ping history");
    alerts(props);
}

/// The Application spec's schema.
pub fn application_spec(schema: &mut Schema) {
    let Some(props) = properties(schema) else {
        return;
    };
    duration(
        props,
        "retention",
        None,
        vec![rule(
            format!("{SECONDS} >= 1"),
            "retention must be at least 1s",
        )],
    );
    deletion_policy(props, "Application's events and counts");
    alerts(props);
}

/// Removes the standalone-only `...File` fields from a schema and everything under it: in
/// a cluster, secrets come from Secrets.
fn drop_file_fields(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Object(props)) = o.get_mut("properties") {
                props.retain(|k, _| !k.ends_with("File"));
            }
            o.values_mut().for_each(drop_file_fields);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_file_fields),
        _ => {}
    }
}

/// The kinds of target a channel may hold: exactly one is required.
const CHANNEL_KINDS: [&str; 6] = [
    "alertmanager",
    "pagerduty",
    "slack",
    "teams",
    "webhook",
    "email",
];

/// The AlertChannel and ClusterAlertChannel spec's schema: exactly one kind of target
/// (`oneOf` of `required`, which every Kubernetes version checks), URL and address
/// patterns, the Alertmanager re-send default, and no standalone `...File` fields.
pub fn channel_spec(schema: &mut Schema) {
    let mut value = schema.as_value().clone();
    drop_file_fields(&mut value);
    if let Ok(s) = Schema::try_from(value) {
        *schema = s;
    }
    let one_of: Vec<Value> = CHANNEL_KINDS
        .iter()
        .map(|k| json!({ "required": [k] }))
        .collect();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("oneOf".into(), Value::Array(one_of));
    }
    let Some(props) = properties(schema) else {
        return;
    };
    for (kind, name, key, value) in [
        ("alertmanager", "url", "pattern", json!("^https?://")),
        ("alertmanager", "resendInterval", "default", json!("1m")),
        ("webhook", "url", "pattern", json!("^https?://")),
        ("email", "to", "minItems", json!(1)),
    ] {
        let target = field(props, kind)
            .and_then(|f| f.get_mut("properties"))
            .and_then(Value::as_object_mut)
            .and_then(|p| field(p, name));
        if let Some(f) = target {
            set(f, key, value);
        }
    }
    if let Some(items) = field(props, "email")
        .and_then(|f| f.get_mut("properties"))
        .and_then(Value::as_object_mut)
        .and_then(|p| field(p, "to"))
        .and_then(|t| t.get_mut("items"))
        .and_then(Value::as_object_mut)
    {
        items.insert("pattern".into(), json!("^[^@]+@.*[.]"));
    }
    if let Some(f) = field(props, "severity") {
        f.insert("default".into(), json!("critical"));
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use crate::k8s::crd::{AlertChannel, Application, ClusterAlertChannel, Heartbeat};

    fn schema(
        crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        serde_json::to_value(&crd.spec.versions[0].schema).unwrap()["openAPIV3Schema"].clone()
    }

    /// The messages of the CEL rules that `spec` breaks, evaluated as Kubernetes would.
    fn broken(schema: &Value, spec: Value) -> Vec<String> {
        match kube_cel::Validator::new().validate(schema, &json!({ "spec": spec }), None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
        }
    }

    #[test]
    fn cel_rules_bound_heartbeat_durations_in_every_spelling_the_parser_accepts() {
        let s = schema(Heartbeat::crd());
        for ok in [
            "1s", "90", "5m", "1h30m", "30m1h", "2d12h", "365d", "8760h", "525600m",
        ] {
            assert!(
                broken(&s, json!({ "interval": ok })).is_empty(),
                "interval {ok}"
            );
            assert!(broken(&s, json!({ "grace": ok })).is_empty(), "grace {ok}");
        }
        for bad in ["366d", "8761h", "365d1s", "31536001"] {
            let b = broken(&s, json!({ "interval": bad }));
            assert_eq!(b.len(), 1, "interval {bad}: {b:?}");
            assert!(b[0].contains("365d"), "{b:?}");
            assert_eq!(broken(&s, json!({ "grace": bad })).len(), 1, "grace {bad}");
        }
        assert_eq!(broken(&s, json!({ "interval": "0s" })).len(), 1);
        assert!(
            broken(&s, json!({ "grace": "0s" })).is_empty(),
            "no grace is fine"
        );
    }

    #[test]
    fn cel_rules_stay_within_the_cost_budget_the_api_server_estimates() {
        for (crd, field) in [
            (Heartbeat::crd(), "interval"),
            (Heartbeat::crd(), "grace"),
            (Application::crd(), "retention"),
        ] {
            let f = schema(crd)["properties"]["spec"]["properties"][field].clone();
            let compiled = kube_cel::compile_schema(&f);
            for rule in f["x-kubernetes-validations"].as_array().unwrap() {
                let rule = rule["rule"].as_str().unwrap();
                let warnings = kube_cel::estimate_rule_cost(rule, &compiled);
                assert!(
                    warnings.is_empty(),
                    "{field}: {:?}",
                    warnings.iter().map(|w| &w.message).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn a_webhook_comes_from_the_spec_or_from_a_secret_not_both() {
        for s in [schema(Heartbeat::crd()), schema(Application::crd())] {
            let both = json!({"alerts": {"webhook": "https://x", "webhookSecretRef": {"name": "s", "key": "url"}}});
            assert_eq!(broken(&s, both).len(), 1);
            assert!(
                broken(
                    &s,
                    json!({"alerts": {"webhookSecretRef": {"name": "s", "key": "url"}}})
                )
                .is_empty()
            );
            assert!(broken(&s, json!({"alerts": {"webhook": "https://x"}})).is_empty());
        }
    }

    #[test]
    fn cel_rules_need_a_retention_of_at_least_a_second() {
        let s = schema(Application::crd());
        assert!(broken(&s, json!({ "retention": "400d" })).is_empty());
        assert_eq!(broken(&s, json!({ "retention": "0s" })).len(), 1);
    }

    #[test]
    fn defaults_limits_and_list_types_are_in_the_schema() {
        let s = schema(Heartbeat::crd());
        let spec = &s["properties"]["spec"]["properties"];
        assert!(
            spec["interval"].get("default").is_none(),
            "interval excludes schedule: no default"
        );
        assert_eq!(spec["grace"]["default"], "5m");
        assert_eq!(spec["deletionPolicy"]["default"], "Delete");
        assert!(
            spec["deletionPolicy"]["description"]
                .as_str()
                .unwrap()
                .contains("Default: Delete")
        );
        assert_eq!(spec["interval"]["maxLength"], 32);
        assert_eq!(
            spec["alerts"]["properties"]["webhook"]["pattern"],
            "^https?://"
        );
        let status = &s["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
        assert_eq!(
            status["state"]["enum"],
            json!(["New", "Up", "Started", "Late", "Down", "Paused"])
        );
    }

    #[test]
    fn channels_require_exactly_one_kind_and_show_no_file_fields() {
        for crd in [AlertChannel::crd(), ClusterAlertChannel::crd()] {
            let spec = schema(crd)["properties"]["spec"].clone();
            let kinds: Vec<&str> = spec["oneOf"]
                .as_array()
                .unwrap()
                .iter()
                .map(|alt| alt["required"][0].as_str().unwrap())
                .collect();
            assert_eq!(
                kinds,
                [
                    "alertmanager",
                    "pagerduty",
                    "slack",
                    "teams",
                    "webhook",
                    "email"
                ]
            );
            let text = spec.to_string();
            assert!(
                !text.contains("File\""),
                "a standalone ...File field in {text}"
            );
            assert!(text.contains("webhookSecretRef") && text.contains("routingKeySecretRef"));
            let am = &spec["properties"]["alertmanager"]["properties"];
            assert_eq!(am["resendInterval"]["default"], "1m");
            assert_eq!(am["url"]["pattern"], "^https?://");
            assert_eq!(spec["properties"]["severity"]["default"], "critical");
        }
        let hb = schema(Heartbeat::crd())["properties"]["spec"].clone();
        let alerts = &hb["properties"]["alerts"]["properties"];
        assert!(alerts["channels"]["items"]["pattern"].is_string());
        assert!(alerts["notifyAfter"].is_object() && alerts["notifyLate"].is_object());
        assert!(hb["properties"]["runbookURL"].is_object());
        assert_eq!(
            hb["properties"]["failureThreshold"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert!(hb["properties"]["maintenance"]["items"]["properties"]["schedule"].is_object());
    }
}
