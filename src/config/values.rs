//! Value types of the config file that carry their own parsing, so that a bad value is reported
//! by serde with the exact position of the value.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `"250ms"`, `"5s"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Duration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // A bare number has no unit to go by: say how a duration is written.
                f.write_str("a duration string such as \"250ms\", \"5s\" or \"1m\"")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
                humantime::parse_duration(s).map(Duration).map_err(|e| {
                    E::custom(format!(
                        "invalid duration `{s}`: {e} (write e.g. \"250ms\", \"5s\", \"1m\")"
                    ))
                })
            }
        }
        d.deserialize_str(Text)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        tollgate_plugin_api::schema::duration()
    }
}

/// Written as humantime writes it (`"1m 30s"`), which reads back the same.
impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

pub use tollgate_plugin_api::ByteSize;
