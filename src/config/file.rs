//! The file format of gateway.toml, as serde reads it. These types mirror the file; the
//! validated model the gateway runs on lives in `model.rs` (so the file can evolve on its own).
//! They serialize back into the file's shape for the admin `/config` view (`view.rs`), with
//! every `Secret` redacted by its type.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize, Serializer};
use tollgate_plugin_api::{Secret, SecretUrl};
use toml::Spanned;

use super::values::{ByteSize, Duration};

/// The whole file.
#[derive(Debug, Deserialize, Serialize)]
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
    pub brokers: BTreeMap<Spanned<String>, Spanned<BrokerSection>>,
    #[serde(default)]
    pub routes: BTreeMap<Spanned<String>, Spanned<RouteSection>>,
    pub access_log: Option<Spanned<AccessLogSection>>,
    pub tracing: Option<Spanned<crate::telemetry::trace::TracingSection>>,
    /// Global plugins. Only its shape is checked here; the registry reads the tables again with
    /// spans so plugin errors point into them (and shows them).
    #[allow(dead_code)]
    #[serde(default, skip_serializing)]
    pub plugins: BTreeMap<Spanned<String>, IgnoredAny>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub threads: Option<Spanned<usize>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub max_request_header_bytes: Option<Spanned<ByteSize>>,
    pub max_uri_bytes: Option<Spanned<ByteSize>>,
    pub keepalive_pool_size: Option<usize>,
    pub graceful_shutdown_timeout: Option<Duration>,
    pub watch_config: Option<bool>,
    pub upgrade_sock: Option<String>,
    pub request_header_timeout: Option<Spanned<Duration>>,
    pub client_body_timeout: Option<Spanned<Duration>>,
    pub request_timeout: Option<Spanned<Duration>>,
    pub escaped_slashes: Option<EscapedSlashes>,
}

/// `escaped_slashes = "..."`: what a request path with `%2F` or `%5C` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 `bad_path`: nothing can pass a prefix rule by hiding a separator.
    #[default]
    Reject,
    /// `%2F` becomes `/` before routing, so the router sees what a decoding upstream sees.
    Decode,
    /// Routed and forwarded as written (`%2F` is then part of a segment).
    Keep,
}

/// `[access_log]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    pub enabled: Option<bool>,
    pub path: Option<Spanned<String>>,
    pub fields: Option<Vec<Spanned<String>>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: Option<LogFormat>,
    pub level: Option<Spanned<String>>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: Option<String>,
    pub address: Spanned<String>,
    pub h2c: Option<bool>,
    pub tls: Option<Spanned<ListenerTls>>,
    pub request_header_timeout: Option<Spanned<Duration>>,
    pub client_body_timeout: Option<Spanned<Duration>>,
    pub request_timeout: Option<Spanned<Duration>>,
    pub escaped_slashes: Option<EscapedSlashes>,
}

/// `tls = { cert_file, key_file, h2 }` of a listener.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    pub h2: Option<bool>,
}

/// `[admin]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub address: Option<Spanned<String>>,
    pub enabled: Option<bool>,
    pub token_env: Option<Spanned<String>>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub targets: Option<Spanned<Vec<Spanned<TargetEntry>>>>,
    pub discovery: Option<Spanned<DiscoverySection>>,
    pub dns_refresh: Option<Spanned<Duration>>,
    pub protocol: Option<Protocol>,
    pub tls: Option<Spanned<UpstreamTls>>,
    pub host_header: Option<Spanned<String>>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_h2_streams: Option<Spanned<usize>>,
    pub balance: Option<Balance>,
    pub hash_on: Option<Spanned<String>>,
    pub panic_mode: Option<bool>,
    pub health_check: Option<Spanned<HealthCheckSection>>,
    pub outlier_detection: Option<Spanned<OutlierSection>>,
    pub retry: Option<Spanned<RetrySection>>,
    pub circuit_breaker: Option<Spanned<CircuitBreakerSection>>,
}

/// `balance = "..."`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    Random,
    LeastRequest,
    RingHash,
}

/// `discovery = { type = "dns" | "dns_srv" | "consul", ... }`. One flat table rather than a tagged
/// enum: serde's internally tagged enums lose the spans that errors point with.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    #[serde(rename = "type")]
    pub kind: DiscoveryKind,
    pub name: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub nameservers: Option<Vec<Spanned<String>>>,
    pub interval: Option<Spanned<Duration>>,
    pub address: Option<Spanned<SecretUrl>>,
    pub service: Option<Spanned<String>>,
    pub datacenter: Option<String>,
    pub tag: Option<String>,
    pub token: Option<Secret<String>>,
    pub wait: Option<Spanned<Duration>>,
}

/// Discovery mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    Dns,
    DnsSrv,
    Consul,
}

/// `[upstreams.NAME.health_check]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(rename = "type")]
    pub kind: Option<HealthCheckKind>,
    pub path: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub host: Option<String>,
    pub expected_statuses: Option<Vec<Spanned<StatusRange>>>,
    pub service: Option<String>,
    pub interval: Option<Spanned<Duration>>,
    pub timeout: Option<Spanned<Duration>>,
    pub jitter: Option<Spanned<Duration>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
}

/// Active check types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http,
    Tcp,
    Grpc,
}

/// `[upstreams.NAME.outlier_detection]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<Spanned<u32>>,
    pub base_ejection_time: Option<Spanned<Duration>>,
    pub max_ejection_time: Option<Spanned<Duration>>,
    pub max_ejection_percent: Option<Spanned<u32>>,
    pub failure_statuses: Option<Vec<Spanned<StatusRange>>>,
}

/// `[upstreams.NAME.retry]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    pub attempts: Option<u32>,
    pub on: Option<Vec<Spanned<String>>>,
    pub statuses: Option<Vec<Spanned<StatusRange>>>,
    pub per_try_timeout: Option<Spanned<Duration>>,
    pub backoff_base: Option<Spanned<Duration>>,
    pub backoff_max: Option<Spanned<Duration>>,
    pub budget_ratio: Option<Spanned<f64>>,
    pub budget_min_retries: Option<u32>,
}

/// `[upstreams.NAME.circuit_breaker]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    pub max_in_flight: Option<Spanned<u32>>,
    pub max_pending: Option<Spanned<u32>>,
}

/// A status or an inclusive range of statuses: `503`, `"503"` or `"500-599"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

/// Written as a status (`503`) or a range (`"500-599"`), both of which read back the same.
impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == self.1 {
            s.serialize_u16(self.0)
        } else {
            s.collect_str(&format_args!("{}-{}", self.0, self.1))
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status such as 503 or a range such as \"500-599\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                let s = status(v)
                    .ok_or_else(|| E::custom(format!("status {v} is not between 100 and 599")))?;
                Ok(StatusRange(s, s))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                let bad = || {
                    E::custom(format!("invalid status range `{v}`: write e.g. \"200-299\" or \"503\" (100 to 599)"))
                };
                let (lo, hi) = v.split_once('-').unwrap_or((v, v));
                let lo = lo
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(status)
                    .ok_or_else(bad)?;
                let hi = hi
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(status)
                    .ok_or_else(bad)?;
                if lo > hi {
                    return Err(bad());
                }
                Ok(StatusRange(lo, hi))
            }
        }
        fn status(v: i64) -> Option<u16> {
            u16::try_from(v).ok().filter(|s| (100..=599).contains(s))
        }
        d.deserialize_any(V)
    }
}

/// A target: `"host:port"` or `{ address = "host:port", weight = 2 }`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
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
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    pub address: String,
    pub weight: Option<i64>,
}

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
    H2,
}

/// `tls = { sni, ca_file, verify }` of an upstream.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub ca_file: Option<Spanned<String>>,
    pub verify: Option<bool>,
}

/// `[routes.NAME]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub exact: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub template: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub headers: BTreeMap<Spanned<String>, Spanned<HeaderCondition>>,
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub strip_prefix: Option<Spanned<bool>>,
    pub rewrite: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<Duration>>,
    pub read_timeout: Option<Spanned<Duration>>,
    pub write_timeout: Option<Spanned<Duration>>,
    #[serde(default)]
    pub disable_plugins: Vec<Spanned<String>>,
    pub retry_non_idempotent: Option<Spanned<bool>>,
    pub grpc: Option<Spanned<crate::grpc::GrpcSection>>,
    pub publish: Option<Spanned<PublishSection>>,
    pub subscribe: Option<Spanned<SubscribeSection>>,
    pub request_reply: Option<Spanned<RequestReplySection>>,
    /// Route plugins. Only its presence is checked here; the registry reads the table again with
    /// spans so plugin errors point into it (and shows it).
    #[allow(dead_code)]
    #[serde(skip_serializing)]
    pub plugins: Option<BTreeMap<String, IgnoredAny>>,
}

/// A header condition: an exact value, or `true` for "present with any value".
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HeaderCondition {
    Equals(String),
    Present(bool),
}

/// `[brokers.NAME]`. One flat table for every kind rather than a tagged enum (whose variants
/// lose the spans errors point with); the keys of the other kinds are refused in validation.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub kind: BrokerKind,
    pub connect_timeout: Option<Spanned<Duration>>,
    pub publish_timeout: Option<Spanned<Duration>>,
    pub max_in_flight: Option<Spanned<usize>>,
    pub required_for_readiness: Option<bool>,
    pub tls: Option<Spanned<BrokerTls>>,
    // Kafka
    pub bootstrap: Option<Spanned<Vec<Spanned<String>>>>,
    pub client_id: Option<Spanned<String>>,
    pub linger: Option<Spanned<Duration>>,
    pub compression: Option<Spanned<Compression>>,
    pub message_max_bytes: Option<Spanned<ByteSize>>,
    pub sasl: Option<Spanned<KafkaSasl>>,
    // AMQP
    pub url: Option<Spanned<SecretUrl>>,
    pub heartbeat: Option<Spanned<Duration>>,
    pub max_message_bytes: Option<Spanned<ByteSize>>,
    // NATS
    pub servers: Option<Spanned<Vec<Spanned<SecretUrl>>>>,
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<Secret<String>>>,
    pub token: Option<Spanned<Secret<String>>>,
    pub jetstream: Option<Spanned<bool>>,
}

/// `kind = "..."` of a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Kafka,
    Amqp,
    Nats,
}

impl BrokerKind {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Kafka => "kafka",
            BrokerKind::Amqp => "amqp",
            BrokerKind::Nats => "nats",
        }
    }
}

/// `compression = "..."` of a Kafka broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// `sasl = { mechanism, username, password }` of a Kafka broker.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: Spanned<String>,
    pub password: Secret<String>,
}

/// SASL mechanisms, named as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// `tls = { ca_file, verify }` of a broker.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    pub ca_file: Option<Spanned<String>>,
    pub verify: Option<bool>,
}

/// `[routes.NAME.publish]`. Like a broker, one flat table whose destination keys depend on the
/// broker's kind.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSection {
    pub broker: Spanned<String>,
    // Kafka
    pub topic: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    // AMQP
    pub exchange: Option<Spanned<String>>,
    pub routing_key: Option<Spanned<String>>,
    // NATS
    pub subject: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    pub mode: Option<Spanned<PublishMode>>,
    pub status: Option<Spanned<u16>>,
    pub idempotency_window: Option<Spanned<Duration>>,
    pub idempotency_max_keys: Option<Spanned<u64>>,
    pub idempotency_redis: Option<Spanned<tollgate_plugin_api::SecretUrl>>,
}

/// `[routes.NAME.subscribe]`: where a route's Server-Sent Events come from (keys by the
/// broker's kind, as for publish) and how each subscriber is served.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeSection {
    pub broker: Spanned<String>,
    // Kafka
    pub topic: Option<Spanned<String>>,
    // AMQP: a binding (exchange + routing key) or a named queue
    pub exchange: Option<Spanned<String>>,
    pub routing_key: Option<Spanned<String>>,
    pub queue: Option<Spanned<String>>,
    // NATS
    pub subject: Option<Spanned<String>>,
    pub filter: Option<Spanned<SubscribeFilter>>,
    pub heartbeat: Option<Spanned<Duration>>,
    pub stall_timeout: Option<Spanned<Duration>>,
    pub buffer: Option<Spanned<u64>>,
    pub max_subscribers: Option<Spanned<u64>>,
}

/// `filter = { key = "...", headers = { NAME = "..." } }` of a subscribe route.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeFilter {
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}

/// The destination keys of a publish or request-reply table, borrowed: both are read by the
/// same validation.
pub struct DestinationKeys<'a> {
    pub topic: &'a Option<Spanned<String>>,
    pub key: &'a Option<Spanned<String>>,
    pub exchange: &'a Option<Spanned<String>>,
    pub routing_key: &'a Option<Spanned<String>>,
    pub subject: &'a Option<Spanned<String>>,
}

impl PublishSection {
    pub fn destination_keys(&self) -> DestinationKeys<'_> {
        DestinationKeys {
            topic: &self.topic,
            key: &self.key,
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            subject: &self.subject,
        }
    }
}

/// `[routes.NAME.request_reply]`: the destination keys of `publish`, the Kafka reply topic, and
/// how long and how a reply is waited for.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestReplySection {
    pub broker: Spanned<String>,
    // Kafka
    pub topic: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub reply_topic: Option<Spanned<String>>,
    // AMQP
    pub exchange: Option<Spanned<String>>,
    pub routing_key: Option<Spanned<String>>,
    // NATS
    pub subject: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    pub timeout: Option<Spanned<Duration>>,
    pub respond_async: Option<Spanned<bool>>,
    pub async_ttl: Option<Spanned<Duration>>,
    pub async_max_replies: Option<Spanned<u64>>,
}

impl RequestReplySection {
    pub fn destination_keys(&self) -> DestinationKeys<'_> {
        DestinationKeys {
            topic: &self.topic,
            key: &self.key,
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            subject: &self.subject,
        }
    }
}

/// `mode = "..."` of a publish route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    Confirmed,
    FireAndForget,
}
