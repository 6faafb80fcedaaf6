//! A size in bytes as written in config files: `1048576`, `"100B"`, `"10MB"`, `"512KiB"`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// A number of bytes, from an integer or a string with a unit (KB/MB/GB are powers of 1000,
/// KiB/MiB/GiB powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "invalid size `{s}`: write a whole number of bytes or a whole number with a unit \
                 (B, KB, MB, GB, KiB, MiB, GiB), e.g. \"10MB\" or \"512KiB\""
            )
        };
        let trimmed = s.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        if number.is_empty() {
            return Err(invalid());
        }
        let unit = unit.trim_start();
        let multiplier = if unit.is_empty() {
            1
        } else {
            // Units are matched exactly: "mb" or "Kb" could mean bits or either base.
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, m)| *m)
                .ok_or_else(invalid)?
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size `{s}`: too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size like \"10MB\" or \"512KiB\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size `{v}`: must not be negative")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        d.deserialize_any(ByteSizeVisitor)
    }
}

/// Written as the number of bytes, which reads back as the same size.
impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// The text forms `FromStr` reads: digits, then one of `UNITS` (exactly), spaces around either.
const BYTE_SIZE_PATTERN: &str = r"^\s*[0-9]+\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$";

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size in bytes: a whole number of bytes, or a whole number with a \
                unit, e.g. \"10MB\" or \"512KiB\" (KB, MB, GB are powers of 1000; KiB, MiB, GiB \
                powers of 1024).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": BYTE_SIZE_PATTERN }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, String> {
        s.parse::<ByteSize>().map(ByteSize::as_u64)
    }

    #[test]
    fn units_are_decimal_or_binary_as_named() {
        assert_eq!(parse("100B"), Ok(100));
        assert_eq!(parse("10KB"), Ok(10_000));
        assert_eq!(parse("10MB"), Ok(10_000_000));
        assert_eq!(parse("1GB"), Ok(1_000_000_000));
        assert_eq!(parse("512KiB"), Ok(512 * 1024));
        assert_eq!(parse("3MiB"), Ok(3 << 20));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("42"), Ok(42));
        assert_eq!(parse(" 10 MB "), Ok(10_000_000));
    }

    #[test]
    fn unknown_units_and_fractions_are_rejected_with_a_hint() {
        for bad in ["", "MB", "10XB", "10mb", "1.5MB", "-1", "10 M B", "ten"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("KiB"), "{bad}: {err}");
        }
    }

    #[test]
    fn overflow_is_rejected() {
        assert!(parse("99999999999999999999").is_err());
        assert!(parse("18446744074GB").is_err());
    }

    #[test]
    fn deserializes_from_integer_or_string() {
        let v: Vec<ByteSize> = serde_json::from_str(r#"[1024, "2KiB"]"#).unwrap();
        assert_eq!(v, [ByteSize(1024), ByteSize(2048)]);
        let err = serde_json::from_str::<ByteSize>("-5").unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = serde_json::from_str::<ByteSize>("true").unwrap_err();
        assert!(err.to_string().contains("10MB"), "{err}");
        let err = serde_json::from_str::<ByteSize>(r#""5 lbs""#).unwrap_err();
        assert!(err.to_string().contains("invalid size `5 lbs`"), "{err}");
    }

    #[test]
    fn deserializes_from_toml_with_span() {
        #[derive(serde::Deserialize)]
        struct C {
            #[allow(dead_code)]
            limit: ByteSize,
        }
        let err = toml::from_str::<C>("limit = \"10 parsecs\"").err().unwrap();
        assert!(err.message().contains("invalid size"), "{err}");
        assert_eq!(err.span(), Some(8..20));
    }
}
