//! The file format of gateway.toml, as serde reads it. These types mirror the file; the
//! validated model the gateway runs on lives in `model.rs` (so the file can evolve on its own).

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use toml::Spanned;

use super::values::{ByteSize, Duration};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerSection>>,
    pub admin: Option<AdminSection>,
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<UpstreamSection>>,
    #[serde(default)]
    pub routes: BTreeMap<Spanned<String>, Spanned<RouteSection>>,
    /// Global plugins; their tables are read again with spans by the plugin registry.
    #[serde(default)]
    pub plugins: BTreeMap<Spanned<String>, IgnoredAny>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub threads: Option<Spanned<usize>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub max_request_header_bytes: Option<Spanned<ByteSize>>,
    pub max_uri_bytes: Option<Spanned<ByteSize>>,
    pub keepalive_pool_size: Option<usize>,
    pub graceful_shutdown_timeout: Option<Duration>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: Option<LogFormat>,
    pub level: Option<Spanned<String>>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: Option<String>,
    pub address: Spanned<String>,
    pub h2c: Option<bool>,
    pub tls: Option<Spanned<ListenerTls>>,
}

/// `tls = { cert_file, key_file, h2 }` of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    pub h2: Option<bool>,
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub address: Option<Spanned<String>>,
    pub enabled: Option<bool>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub targets: Spanned<Vec<Spanned<TargetEntry>>>,
    pub protocol: Option<Protocol>,
    pub tls: Option<Spanned<UpstreamTls>>,
    pub host_header: Option<Spanned<String>>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub connect_failure_cooldown: Option<Duration>,
    pub max_h2_streams: Option<Spanned<usize>>,
}

/// A target: `"host:port"` or `{ address = "host:port", weight = 2 }`.
#[derive(Debug)]
pub enum TargetEntry {
    Address(String),
    Weighted(WeightedTarget),
}

// By hand rather than `#[serde(untagged)]`: untagged enums swallow the inner error, and a typo
// such as `wieght` must be reported by name.
impl<'de> Deserialize<'de> for TargetEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TargetEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a target: \"host:port\" or { address = \"host:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TargetEntry, E> {
                Ok(TargetEntry::Address(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TargetEntry, A::Error> {
                WeightedTarget::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TargetEntry::Weighted)
            }
        }
        d.deserialize_any(V)
    }
}

/// The table form of a target.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    pub address: String,
    pub weight: Option<i64>,
}

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
    H2,
}

/// `tls = { sni, ca_file, verify }` of an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub ca_file: Option<Spanned<String>>,
    pub verify: Option<bool>,
}

/// `[routes.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub exact: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub template: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub headers: BTreeMap<Spanned<String>, Spanned<HeaderCondition>>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub strip_prefix: Option<Spanned<bool>>,
    pub rewrite: Option<Spanned<String>>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    #[serde(default)]
    pub disable_plugins: Vec<Spanned<String>>,
    /// Route plugins. Only its presence is checked here; the registry reads the table again with
    /// spans so plugin errors point into it.
    #[allow(dead_code)]
    pub plugins: Option<BTreeMap<String, IgnoredAny>>,
}

/// A header condition: an exact value, or `true` for "present with any value".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderCondition {
    Equals(String),
    Present(bool),
}
