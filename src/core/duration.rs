//! Human durations as written in manifests (`90s`, `5m`, `1h30m`, `7d`).
//!
//! Kubernetes users write durations the way Go and Prometheus print them; we accept that
//! form (with days added, since retention is naturally counted in days) and print the
//! shortest canonical form back, so status and docs read the same as the YAML.

use std::fmt;

/// Why a duration string was rejected; the message is shown to users as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but white space was given.
    #[error("duration is empty; write it like 90s, 5m, 1h30m or 7d")]
    Empty,
    /// A character that is neither a digit nor a known unit.
    #[error("duration {0:?} is not valid; write it like 90s, 5m, 1h30m or 7d (units d, h, m, s)")]
    Invalid(String),
    /// The value does not fit in 64 bits of seconds.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// A whole number of seconds, parsed from and printed as `1h30m` style text: the form of
/// every duration in specs, manifests and flags. Code that computes with time uses
/// `std::time::Duration` or `jiff::SignedDuration`; this type only crosses the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SpecDuration {
    secs: u64,
}

impl SpecDuration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self { secs }
    }

    /// The length in whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.secs
    }

    /// The length as a `std::time::Duration`.
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secs)
    }

    /// Parses `90s`, `5m`, `1h30m`, `7d`, `2d12h`. A bare number is taken as seconds.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .map(Self::from_secs)
                .map_err(|_| DurationError::Overflow(s.to_string()));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit: u64 = match c {
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return Err(DurationError::Invalid(s.to_string())),
            };
            if digits.is_empty() {
                return Err(DurationError::Invalid(s.to_string()));
            }
            let n: u64 = digits
                .parse()
                .map_err(|_| DurationError::Overflow(s.to_string()))?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
        }
        if !digits.is_empty() {
            return Err(DurationError::Invalid(s.to_string()));
        }
        Ok(Self::from_secs(total))
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secs == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.secs;
        for (unit, name) in [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')] {
            if rest >= unit {
                write!(f, "{}{}", rest / unit, name)?;
                rest %= unit;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for SpecDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpecDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpecDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SpecDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 5m, 1h30m or 7d")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SpecDuration, E> {
                SpecDuration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SpecDuration, E> {
                Ok(SpecDuration::from_secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SpecDuration, E> {
                u64::try_from(v)
                    .map(SpecDuration::from_secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for SpecDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+[dhms])+$|^[0-9]+$",
            "description": "A duration such as 90s, 5m, 1h30m or 7d (units d, h, m, s)."
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        for (text, secs) in [
            ("90s", 90),
            ("5m", 300),
            ("1h30m", 5400),
            ("7d", 604_800),
            ("400d", 34_560_000),
            ("2d12h", 216_000),
            ("45", 45),
            (" 1h ", 3600),
        ] {
            assert_eq!(SpecDuration::parse(text).unwrap().as_secs(), secs, "{text}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_message() {
        for text in [
            "",
            "h",
            "1x",
            "1h30",
            "-5m",
            "1.5h",
            "99999999999999999999s",
        ] {
            let err = SpecDuration::parse(text).unwrap_err();
            assert!(!err.to_string().is_empty(), "{text}");
        }
    }

    #[test]
    fn prints_canonical_form() {
        assert_eq!(SpecDuration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(SpecDuration::from_secs(0).to_string(), "0s");
        assert_eq!(SpecDuration::from_secs(86_461).to_string(), "1d1m1s");
    }
}
