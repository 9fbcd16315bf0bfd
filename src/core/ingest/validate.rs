//! Validation of `POST /api/v1/heartbeat` bodies, with Laravel's rules and messages.
//!
//! Clients were written against a Laravel service; they parse its 422 bodies and some show
//! the messages to people. Reproducing its rule order, wording and input normalisation
//! (trimmed strings, empty string as absent, integer strings as integers) keeps them working.

use jiff::Timestamp;
use serde_json::{Map, Value};

/// Longest accepted event name, in characters.
pub const MAX_EVENT_CHARS: usize = 255;

/// A validated event, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Trimmed event name, 1–255 characters.
    pub event: String,
    /// Weight, 1 when not given.
    pub weight: i64,
    /// Optional user id.
    pub user_id: Option<i64>,
    /// When it happened; `None` means "when the server received it".
    pub created_at: Option<Timestamp>,
}

/// Field errors in rule order, serialised as Laravel's `{"message", "errors"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors {
    fields: Vec<(String, Vec<String>)>,
}

impl ValidationErrors {
    fn add(&mut self, field: &str, message: String) {
        match self.fields.iter_mut().find(|(f, _)| f == field) {
            Some((_, list)) => list.push(message),
            None => self.fields.push((field.to_string(), vec![message])),
        }
    }

    /// A single error on the pseudo-field `body`.
    pub fn body_not_object() -> Self {
        let mut e = Self::default();
        e.add(
            "body",
            "The request body must be a JSON object.".to_string(),
        );
        e
    }

    /// True when no rule failed.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The messages for one field, for tests and logs.
    pub fn messages(&self, field: &str) -> Option<&[String]> {
        self.fields
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.as_slice())
    }

    /// Laravel's response body: first message plus "(and N more errors)".
    pub fn to_json(&self) -> Value {
        let total: usize = self.fields.iter().map(|(_, v)| v.len()).sum();
        let first = self
            .fields
            .first()
            .and_then(|(_, v)| v.first())
            .cloned()
            .unwrap_or_default();
        let message = match total {
            0 | 1 => first,
            2 => format!("{first} (and 1 more error)"),
            n => format!("{first} (and {} more errors)", n - 1),
        };
        let mut errors = Map::new();
        for (field, list) in &self.fields {
            errors.insert(field.clone(), Value::from(list.clone()));
        }
        serde_json::json!({ "message": message, "errors": errors })
    }
}

/// Laravel's TrimStrings: white space plus zero-width and byte-order marks at both ends.
fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}' || c == '\u{200B}')
}

/// Applies TrimStrings and ConvertEmptyStringsToNull to one input value.
fn normalise(v: Option<&Value>) -> Option<Value> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = trim(s);
            if t.is_empty() {
                None
            } else {
                Some(Value::String(t.to_string()))
            }
        }
        Some(other) => Some(other.clone()),
    }
}

/// Laravel's `integer` rule for JSON input: integers, integral floats and integer strings.
fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64)
                .map(|f| f as i64)
        }),
        Value::String(s) => {
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.strip_prefix('+').unwrap_or(s).parse::<i64>().ok()
        }
        _ => None,
    }
}

/// Parses the `created_at` forms the contract accepts; naive forms are UTC.
///
/// Every accepted form is ASCII, so anything else is refused before any position in the
/// text is looked at; the positions are then read with checked slices all the same.
///
/// A bracketed annotation (`2024-01-17T10:30:00[Europe/Paris]`, RFC 9557) is none of the
/// contract's forms: jiff reads it and ignores the zone, so the event would be stored at
/// another instant than its sender meant.
///
/// Any fraction of a second is accepted (the contract says so): digits past the ninth, which
/// jiff does not read, are dropped, and the store keeps microseconds in any case. A leap
/// second (`23:59:60`, which RFC 3339 allows) is taken as `23:59:59` in every form, as
/// jiff reads it: the Unix time events are stored in has no second 60.
pub fn parse_created_at(s: &str) -> Option<Timestamp> {
    if !s.is_ascii() || s.contains('[') {
        return None;
    }
    let s = &*nanosecond_fraction(s);
    if let Ok(ts) = s.parse::<Timestamp>() {
        return offset_in_range(s).then_some(ts);
    }
    if s.len() == 10 {
        let d: jiff::civil::Date = s.parse().ok()?;
        return d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp());
    }
    let (date, sep, time) = (s.get(..10)?, s.get(10..11)?, s.get(11..)?);
    let naive = s.len() >= 19
        && matches!(sep, "T" | "t" | " ")
        && !time.get(8..)?.contains(['+', 'Z', 'z'])
        && !time.contains('-');
    if !naive {
        return None;
    }
    let dt: jiff::civil::DateTime = format!("{date}T{time}").parse().ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// `s` with its fraction of a second cut to nine digits (nanoseconds), the most jiff reads.
/// The fraction is the one run of digits after a `.` or `,` (no other part of an accepted
/// form holds either). `s` is ASCII.
fn nanosecond_fraction(s: &str) -> std::borrow::Cow<'_, str> {
    const DIGITS: usize = 9;
    let Some(start) = s.find(['.', ',']).map(|dot| dot + 1) else {
        return s.into();
    };
    let digits = s
        .get(start..)
        .map_or(0, |f| f.bytes().take_while(u8::is_ascii_digit).count());
    if digits <= DIGITS {
        return s.into();
    }
    match (s.get(..start + DIGITS), s.get(start + digits..)) {
        (Some(kept), Some(rest)) => format!("{kept}{rest}").into(),
        _ => s.into(),
    }
}

/// RFC 3339 offsets stop at ±23:59; jiff also reads ±24 and ±25 hours.
fn offset_in_range(s: &str) -> bool {
    let Some(time) = s.get(11..) else { return true };
    match time.rfind(['+', '-']) {
        Some(i) => time
            .get(i + 1..i + 3)
            .and_then(|h| h.parse::<u8>().ok())
            .is_none_or(|h| h <= 23),
        None => true,
    }
}

/// Applies the contract's rules to a parsed JSON body; every field at fault is named.
pub fn validate_event(body: &Value) -> Result<NewEvent, ValidationErrors> {
    let Value::Object(map) = body else {
        return Err(ValidationErrors::body_not_object());
    };
    let mut errors = ValidationErrors::default();
    let event = event_field(map, &mut errors);
    let weight = integer_field(map, "weight", "weight", &mut errors);
    let user_id = integer_field(map, "user_id", "user id", &mut errors);
    let created_at = created_at_field(map, &mut errors);
    match (errors.is_empty(), event) {
        (true, Some(event)) => Ok(NewEvent {
            event,
            weight: weight.unwrap_or(1),
            user_id,
            created_at,
        }),
        _ => Err(errors),
    }
}

/// `event`: required, a string of at most 255 characters without a NUL.
fn event_field(map: &Map<String, Value>, errors: &mut ValidationErrors) -> Option<String> {
    match normalise(map.get("event")) {
        None => {
            errors.add("event", "The event field is required.".into());
            None
        }
        Some(Value::String(s)) if s.chars().count() > MAX_EVENT_CHARS => {
            errors.add(
                "event",
                "The event field must not be greater than 255 characters.".into(),
            );
            None
        }
        // No backend keeps it alike (PostgreSQL's text cannot hold it at all).
        Some(Value::String(s)) if s.contains('\0') => {
            errors.add(
                "event",
                "The event field must not contain a NUL character.".into(),
            );
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.add("event", "The event field must be a string.".into());
            None
        }
    }
}

/// An optional integer field (an integer string such as `"150"` counts).
fn integer_field(
    map: &Map<String, Value>,
    field: &str,
    label: &str,
    errors: &mut ValidationErrors,
) -> Option<i64> {
    let v = normalise(map.get(field))?;
    let parsed = as_integer(&v);
    if parsed.is_none() {
        errors.add(field, format!("The {label} field must be an integer."));
    }
    parsed
}

/// `created_at`: optional, a date or an instant.
fn created_at_field(map: &Map<String, Value>, errors: &mut ValidationErrors) -> Option<Timestamp> {
    let parsed = match normalise(map.get("created_at"))? {
        Value::String(s) => parse_created_at(&s),
        _ => None,
    };
    if parsed.is_none() {
        errors.add(
            "created_at",
            "The created at field must be a valid date.".into(),
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> NewEvent {
        validate_event(&v).unwrap()
    }

    fn err(v: Value) -> Value {
        validate_event(&v).unwrap_err().to_json()
    }

    #[test]
    fn minimal_event_defaults() {
        let e = ok(json!({"event": "  user-login \n"}));
        assert_eq!(e.event, "user-login");
        assert_eq!(e.weight, 1);
        assert_eq!(e.user_id, None);
        assert_eq!(e.created_at, None);
    }

    #[test]
    fn integer_strings_nulls_and_empty_strings() {
        let e = ok(json!({"event": "x", "weight": "150", "user_id": " -7 "}));
        assert_eq!((e.weight, e.user_id), (150, Some(-7)));
        let e = ok(json!({"event": "x", "weight": null, "user_id": ""}));
        assert_eq!((e.weight, e.user_id), (1, None));
        let e = ok(json!({"event": "x", "weight": 3.0}));
        assert_eq!(e.weight, 3);
    }

    #[test]
    fn accepted_dates() {
        let cases = [
            ("2024-01-17T10:30:00Z", "2024-01-17T10:30:00Z"),
            ("2024-01-17T10:30:00.000000Z", "2024-01-17T10:30:00Z"),
            ("2024-01-17T12:30:00+02:00", "2024-01-17T10:30:00Z"),
            ("2024-01-17T10:30:00", "2024-01-17T10:30:00Z"),
            ("2024-01-17 10:30:00", "2024-01-17T10:30:00Z"),
            ("2024-01-17", "2024-01-17T00:00:00Z"),
            (
                "2024-01-17T10:30:00.123456789-05:00",
                "2024-01-17T15:30:00.123456789Z",
            ),
            // Any fraction of a second: past nanoseconds, the digits are dropped.
            (
                "2024-01-17T10:30:00.1234567891Z",
                "2024-01-17T10:30:00.123456789Z",
            ),
            (
                "2024-01-17T10:30:00,99999999999999999999+01:00",
                "2024-01-17T09:30:00.999999999Z",
            ),
            ("2024-01-17T10:30:00.0000000000Z", "2024-01-17T10:30:00Z"),
            (
                "2024-01-17 10:30:00.1234567891",
                "2024-01-17T10:30:00.123456789Z",
            ),
            ("2024-01-17T10:30:00.0000000001", "2024-01-17T10:30:00Z"),
            // A leap second, which RFC 3339 allows, is the second before it in every form:
            // Unix time has no second 60.
            ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59Z"),
            ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:59.5Z"),
            ("2017-01-01T00:59:60+01:00", "2016-12-31T23:59:59Z"),
            ("2016-12-31T23:59:60", "2016-12-31T23:59:59Z"),
            ("2016-12-31 23:59:60", "2016-12-31T23:59:59Z"),
        ];
        for (input, want) in cases {
            let e = ok(json!({"event": "x", "created_at": input}));
            assert_eq!(e.created_at.unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn rejected_dates() {
        for input in [
            "2024-02-30",
            "yesterday",
            "17/01/2024",
            "2024-13-01T00:00:00Z",
            "2024-01-17T25:00:00",
            "2024-01-01T00:00:0\u{e9}",
            "2024-01-01\u{e9}00:00:00",
            "\u{e9}024-01-01",
            "2024-01-01T00:00:00\u{e9}",
            "2024-01-01 00:00:00+\u{1F600}",
            "2024-01-17T10:30:00[Europe/Paris]",
            "2024-01-17T10:30:00+01:00[Europe/Paris]",
            "2024-01-17[u-ca=iso8601]",
            "2024-01-17T10:30:61Z",
            "2024-01-17T10:30:00.Z",
            "2024-01-17T10:30:00.1234567891ZZ",
            "2024-01-17T10:30:00.12345678901.5Z",
        ] {
            let body = err(json!({"event": "x", "created_at": input}));
            assert_eq!(
                body["errors"]["created_at"][0], "The created at field must be a valid date.",
                "{input}"
            );
        }
        let body = err(json!({"event": "x", "created_at": 1705487400}));
        assert_eq!(
            body["message"],
            "The created at field must be a valid date."
        );
    }

    #[test]
    fn every_message_and_the_count_suffix() {
        let body = err(json!({"weight": "a", "user_id": 1.5, "created_at": "nope"}));
        assert_eq!(
            body["message"],
            "The event field is required. (and 3 more errors)"
        );
        assert_eq!(
            body["errors"]["weight"][0],
            "The weight field must be an integer."
        );
        assert_eq!(
            body["errors"]["user_id"][0],
            "The user id field must be an integer."
        );
        let body = err(json!({"event": 5, "weight": true}));
        assert_eq!(
            body["message"],
            "The event field must be a string. (and 1 more error)"
        );
        let body = err(json!({"event": "e".repeat(256)}));
        assert_eq!(
            body["message"],
            "The event field must not be greater than 255 characters."
        );
        assert_eq!(
            ok(json!({"event": "é".repeat(255)})).event.chars().count(),
            255
        );
        let body = err(json!({"event": "a\u{0}b"}));
        assert_eq!(
            body["message"],
            "The event field must not contain a NUL character."
        );
        let body = err(json!({"event": "   "}));
        assert_eq!(body["errors"]["event"][0], "The event field is required.");
        let body = err(json!([1, 2]));
        assert_eq!(
            body["errors"]["body"][0],
            "The request body must be a JSON object."
        );
    }

    #[test]
    fn integer_edge_cases() {
        for bad in [
            json!("1e3"),
            json!("12a"),
            json!("9223372036854775808"),
            json!([1]),
            json!({}),
        ] {
            assert!(
                validate_event(&json!({"event": "x", "weight": bad})).is_err(),
                "{bad}"
            );
        }
        let e = ok(json!({"event": "x", "weight": "+42", "user_id": 9223372036854775807i64}));
        assert_eq!((e.weight, e.user_id), (42, Some(i64::MAX)));
    }
}
