//! The file format of gateway.toml, as serde reads it. These types mirror the file; the
//! validated model the gateway runs on lives in `model.rs` (so the file can evolve on its own).
//! They serialize back into the file's shape for the admin `/config` view (`view.rs`), with
//! every `Secret` redacted by its type.

use std::collections::BTreeMap;

use super::spanned::Spanned;
use schemars::JsonSchema;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize, Serializer};
use tollgate_plugin_api::{Secret, SecretUrl};

use super::values::{ByteSize, Duration};

/// The whole file.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Process-wide settings; every key has a default.
    #[serde(default)]
    pub server: ServerSection,
    /// The gateway's own log lines (on stderr).
    #[serde(default)]
    pub log: LogSection,
    /// Client-facing sockets; at least one is required.
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerSection>>,
    /// The admin HTTP listener: health, readiness, metrics, config view, reload. On by default at
    /// 127.0.0.1:9901.
    pub admin: Option<AdminSection>,
    /// Named groups of targets that routes send requests to.
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<UpstreamSection>>,
    /// Message brokers (Kafka, AMQP, NATS) that publish, subscribe and request-reply routes use.
    #[serde(default)]
    pub brokers: BTreeMap<Spanned<String>, Spanned<BrokerSection>>,
    /// Named routes: what requests they match and where they go.
    #[serde(default)]
    pub routes: BTreeMap<Spanned<String>, Spanned<RouteSection>>,
    /// One JSON line per request; on by default, to stdout.
    pub access_log: Option<Spanned<AccessLogSection>>,
    /// OpenTelemetry traces over OTLP (docs/operations/tracing.md).
    pub tracing: Option<Spanned<crate::telemetry::trace::TracingSection>>,
    /// Global plugins. Only its shape is checked here; the registry reads the tables again with
    /// spans so plugin errors point into them (and shows them).
    #[allow(dead_code)]
    #[serde(default, skip_serializing)]
    #[schemars(
        with = "PluginTables",
        description = "Global plugins, in every route's chain: `[plugins.NAME]`."
    )]
    pub plugins: BTreeMap<Spanned<String>, IgnoredAny>,
}

/// The tables of plugins by name (`[plugins.NAME]`, `[routes.R.plugins.NAME]`). Only a marker
/// here: the loader reads them through the plugin registry, and `tollgate schema` puts each
/// registered plugin's own schema in its place.
pub struct PluginTables;

impl JsonSchema for PluginTables {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        PLUGIN_TABLES.into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "object" })
    }
}

/// The name of the definition `PluginTables` stands for.
pub const PLUGIN_TABLES: &str = "Plugins";

/// `[server]`
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads per proxy service; at least 1. Default: the number of CPUs.
    pub threads: Option<Spanned<usize>>,
    /// CIDR blocks or bare IPs whose X-Forwarded-* headers are believed, e.g. "10.0.0.0/8".
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Larger request headers get 431 `headers_too_large` (sum of name + value + 4 over all
    /// headers).
    #[schemars(extend("default" = 32768))]
    pub max_request_header_bytes: Option<Spanned<ByteSize>>,
    /// A longer request target (path + query) gets 414 `uri_too_long`.
    #[schemars(extend("default" = 8192))]
    pub max_uri_bytes: Option<Spanned<ByteSize>>,
    /// Idle upstream connections kept for reuse, all upstreams together.
    #[schemars(extend("default" = 128))]
    pub keepalive_pool_size: Option<usize>,
    /// How long in-flight requests may take to finish on shutdown (whole seconds, rounded up).
    #[schemars(extend("default" = "30s"))]
    pub graceful_shutdown_timeout: Option<Duration>,
    /// Reload when the config file's modification time changes (polled every second).
    #[schemars(extend("default" = false))]
    pub watch_config: Option<bool>,
    /// Unix socket for handing listeners to a new binary (`tollgate --upgrade`); one running
    /// instance per socket.
    #[schemars(extend("default" = "/tmp/tollgate_upgrade.sock"))]
    pub upgrade_sock: Option<String>,
    /// The whole request head must arrive within this; late: 408 `client_timeout`.
    #[schemars(extend("default" = "10s"))]
    pub request_header_timeout: Option<Spanned<Duration>>,
    /// Longest wait for the next piece of a request body; late: 408 `client_timeout`.
    #[schemars(extend("default" = "30s"))]
    pub client_body_timeout: Option<Spanned<Duration>>,
    /// The whole request, head and body, must arrive within this; off when absent.
    pub request_timeout: Option<Spanned<Duration>>,
    /// What a request path containing `%2F` or `%5C` gets.
    #[schemars(extend("default" = "reject"))]
    pub escaped_slashes: Option<EscapedSlashes>,
}

/// `escaped_slashes = "..."`: what a request path with `%2F` or `%5C` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
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
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `false` turns the access log off.
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// A file to append to, relative to the config file; "-" is stdout.
    #[schemars(extend("default" = "-"))]
    pub path: Option<Spanned<String>>,
    /// Subset and order of the fields of a line: time, request_id, trace_id, client_ip, method,
    /// host, path, query, protocol, route, upstream, target, status, bytes_sent, bytes_received,
    /// duration_ms, upstream_ms, attempts, error. Default: all.
    #[schemars(extend("items" = { "type": "string", "enum": crate::telemetry::access_log::FIELDS }))]
    pub fields: Option<Vec<Spanned<String>>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Line format; `--log-format` overrides it.
    #[schemars(extend("default" = "text"))]
    pub format: Option<LogFormat>,
    /// A `tracing` filter directive, e.g. "warn" or "info,tollgate=debug"; RUST_LOG wins when set.
    #[schemars(extend("default" = "info"))]
    pub level: Option<Spanned<String>>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Name for logs. Default: "listener-N" (N = 1-based position).
    pub name: Option<String>,
    /// Socket to bind, "IP:PORT", e.g. "0.0.0.0:8080".
    pub address: Spanned<String>,
    /// Accept plaintext HTTP/2 with prior knowledge beside HTTP/1.1 (plaintext listeners).
    #[schemars(extend("default" = true))]
    pub h2c: Option<bool>,
    /// Serve TLS with this certificate and key.
    pub tls: Option<Spanned<ListenerTls>>,
    /// This listener's own `[server] request_header_timeout`.
    pub request_header_timeout: Option<Spanned<Duration>>,
    /// This listener's own `[server] client_body_timeout`.
    pub client_body_timeout: Option<Spanned<Duration>>,
    /// This listener's own `[server] request_timeout`.
    pub request_timeout: Option<Spanned<Duration>>,
    /// This listener's own `[server] escaped_slashes`.
    pub escaped_slashes: Option<EscapedSlashes>,
}

/// `tls = { cert_file, key_file, h2 }` of a listener.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain (leaf first), relative to the config file.
    pub cert_file: Spanned<String>,
    /// PEM private key (RSA, ECDSA or Ed25519), relative to the config file.
    pub key_file: Spanned<String>,
    /// Offer h2 by ALPN (HTTP/2 and HTTP/1.1); `false` offers HTTP/1.1 only.
    #[schemars(extend("default" = true))]
    pub h2: Option<bool>,
    /// Whether clients present a certificate (mutual TLS).
    #[schemars(extend("default" = "none"))]
    pub client_auth: Option<Spanned<ClientAuthMode>>,
    /// PEM bundle of the CAs client certificates must chain to, relative to the config file;
    /// required with `client_auth` `optional` or `required`.
    pub client_ca_file: Option<Spanned<String>>,
    /// Certificate revocation lists (PEM or DER) of those CAs, relative to the config file.
    pub client_crl_files: Option<Spanned<Vec<Spanned<String>>>>,
    /// Longest time a client may take to complete the TLS handshake.
    #[schemars(extend("default" = "10s"))]
    pub handshake_timeout: Option<Spanned<Duration>>,
}

/// `client_auth = "..."` of a listener's `tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; without one the connection goes on and routes decide (a
    /// presented certificate that does not verify still fails the handshake).
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

/// `[admin]`
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Socket to bind, "IP:PORT".
    #[schemars(extend("default" = "127.0.0.1:9901"))]
    pub address: Option<Spanned<String>>,
    /// `false` turns the admin listener off.
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// Name of an environment variable holding a bearer token every admin endpoint but /healthz
    /// and /readyz requires.
    pub token_env: Option<Spanned<String>>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// "HOST:PORT" strings or { address = "HOST:PORT", weight = N } tables; required unless
    /// `discovery` is set.
    pub targets: Option<Spanned<Vec<Spanned<TargetEntry>>>>,
    /// Find targets in DNS or Consul instead of `targets`.
    pub discovery: Option<Spanned<DiscoverySection>>,
    /// How often host names in `targets` are resolved again (at least 100ms).
    #[schemars(extend("default" = "30s"))]
    pub dns_refresh: Option<Spanned<Duration>>,
    /// Wire protocol to the targets.
    #[schemars(extend("default" = "http1"))]
    pub protocol: Option<Protocol>,
    /// TLS to the targets (implied for `protocol = "h2"`).
    pub tls: Option<Spanned<UpstreamTls>>,
    /// Replaces the Host header sent upstream; the client's is passed through without it.
    pub host_header: Option<Spanned<String>>,
    /// TCP (and TLS) connect.
    #[schemars(extend("default" = "5s"))]
    pub connect_timeout: Option<Duration>,
    /// Between reads of the response.
    #[schemars(extend("default" = "1m"))]
    pub read_timeout: Option<Duration>,
    /// Between writes of the request.
    #[schemars(extend("default" = "1m"))]
    pub write_timeout: Option<Duration>,
    /// A pooled idle connection is closed after this.
    #[schemars(extend("default" = "1m"))]
    pub idle_timeout: Option<Duration>,
    /// Concurrent HTTP/2 streams per upstream connection (h2/h2c).
    #[schemars(extend("default" = 100))]
    pub max_h2_streams: Option<Spanned<usize>>,
    /// Load-balancing algorithm.
    #[schemars(extend("default" = "round_robin"))]
    pub balance: Option<Balance>,
    /// Key of `ring_hash`: "header:NAME", "cookie:NAME", "client_ip" or "path".
    #[schemars(extend("default" = "client_ip"))]
    #[schemars(extend("pattern" = r"^(client_ip|path|header:.+|cookie:.*\S.*)$"))]
    pub hash_on: Option<Spanned<String>>,
    /// When no target is available, send to all of them anyway instead of answering 503.
    #[schemars(extend("default" = true))]
    pub panic_mode: Option<bool>,
    /// Active health checks; none when absent.
    pub health_check: Option<Spanned<HealthCheckSection>>,
    /// Passive health: eject targets that fail requests (on by default).
    pub outlier_detection: Option<Spanned<OutlierSection>>,
    /// Retries of failed attempts.
    pub retry: Option<Spanned<RetrySection>>,
    /// Admission limits; none when absent.
    pub circuit_breaker: Option<Spanned<CircuitBreakerSection>>,
}

/// `balance = "..."`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    Random,
    LeastRequest,
    RingHash,
}

/// `discovery = { type = "dns" | "dns_srv" | "consul", ... }`. One flat table rather than a tagged
/// enum: serde's internally tagged enums lose the spans that errors point with.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "`discovery = { type = ..., ... }`: find an upstream's targets in DNS or Consul. `type` decides which other keys apply."
)]
pub struct DiscoverySection {
    /// "dns" (A/AAAA), "dns_srv" (SRV) or "consul".
    #[serde(rename = "type")]
    pub kind: DiscoveryKind,
    /// dns, dns_srv: the name to resolve.
    pub name: Option<Spanned<String>>,
    /// dns: the port of every address.
    pub port: Option<Spanned<u16>>,
    /// dns, dns_srv: ["IP", "IP:PORT"]; the system resolver when absent.
    pub nameservers: Option<Vec<Spanned<String>>>,
    /// DNS: time between lookups; Consul: pause after a failed query.
    #[schemars(extend("default" = "10s"))]
    pub interval: Option<Spanned<Duration>>,
    /// consul: the agent's HTTP API.
    #[schemars(extend("default" = "http://127.0.0.1:8500"))]
    pub address: Option<Spanned<SecretUrl>>,
    /// consul: the service name; only instances whose checks pass are used.
    pub service: Option<Spanned<String>>,
    /// consul: passed as `dc`.
    pub datacenter: Option<String>,
    /// consul: passed as `tag`.
    pub tag: Option<String>,
    /// consul: sent as X-Consul-Token (secret).
    pub token: Option<Secret<String>>,
    /// consul: longest wait of one blocking query.
    #[schemars(extend("default" = "30s"))]
    pub wait: Option<Spanned<Duration>>,
}

/// Discovery mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    Dns,
    DnsSrv,
    Consul,
}

/// `[upstreams.NAME.health_check]`
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// http: a request; tcp: connect only; grpc: grpc.health.v1.Health/Check over h2c.
    #[serde(rename = "type")]
    #[schemars(extend("default" = "http"))]
    pub kind: Option<HealthCheckKind>,
    /// HTTP: request path (with optional query).
    #[schemars(extend("default" = "/"))]
    pub path: Option<Spanned<String>>,
    /// HTTP: request method.
    #[schemars(extend("default" = "GET"))]
    pub method: Option<Spanned<String>>,
    /// HTTP: Host (:authority for h2c/gRPC); the target address when absent.
    pub host: Option<String>,
    /// HTTP: healthy statuses, as 503, "503" or "200-399".
    #[schemars(extend("default" = ["200-299"]))]
    pub expected_statuses: Option<Vec<Spanned<StatusRange>>>,
    /// gRPC: the service name asked about; the whole server when absent.
    pub service: Option<String>,
    /// Time between checks of a target (at least 100ms).
    #[schemars(extend("default" = "10s"))]
    pub interval: Option<Spanned<Duration>>,
    /// Longest one check may take.
    #[schemars(extend("default" = "2s"))]
    pub timeout: Option<Spanned<Duration>>,
    /// Up to this much random delay added to each interval.
    #[schemars(extend("default" = "0s"))]
    pub jitter: Option<Spanned<Duration>>,
    /// Consecutive passes that make an unhealthy target healthy.
    #[schemars(extend("default" = 2))]
    pub healthy_threshold: Option<Spanned<u32>>,
    /// Consecutive failures that make a healthy target unhealthy.
    #[schemars(extend("default" = 3))]
    pub unhealthy_threshold: Option<Spanned<u32>>,
}

/// Active check types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http,
    Tcp,
    Grpc,
}

/// `[upstreams.NAME.outlier_detection]`
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// `false` turns passive health off.
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// Failures in a row that eject a target.
    #[schemars(extend("default" = 5))]
    pub consecutive_failures: Option<Spanned<u32>>,
    /// First ejection length.
    #[schemars(extend("default" = "30s"))]
    pub base_ejection_time: Option<Spanned<Duration>>,
    /// Ceiling of ejection lengths.
    #[schemars(extend("default" = "5m"))]
    pub max_ejection_time: Option<Spanned<Duration>>,
    /// Share of targets that may be ejected at once (0-100).
    #[schemars(extend("default" = 50))]
    pub max_ejection_percent: Option<Spanned<u32>>,
    /// Response statuses that count as failures.
    #[schemars(extend("default" = ["500-599"]))]
    pub failure_statuses: Option<Vec<Spanned<StatusRange>>>,
}

/// `[upstreams.NAME.retry]`
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Retries after the first try (0-10); 0 never retries.
    #[schemars(extend("default" = 2))]
    pub attempts: Option<u32>,
    /// Causes retried: "connect_failure", "reset", "timeout".
    #[schemars(extend("default" = ["connect_failure", "reset"]))]
    #[schemars(extend("items" = { "type": "string", "enum": ["connect_failure", "reset", "timeout"] }))]
    pub on: Option<Vec<Spanned<String>>>,
    /// Response statuses that are retried, as 503 or "502-504".
    #[schemars(extend("default" = []))]
    pub statuses: Option<Vec<Spanned<StatusRange>>>,
    /// Read timeout of each try; the upstream's read timeout when absent.
    pub per_try_timeout: Option<Spanned<Duration>>,
    /// First backoff ceiling.
    #[schemars(extend("default" = "25ms"))]
    pub backoff_base: Option<Spanned<Duration>>,
    /// Backoff cap.
    #[schemars(extend("default" = "250ms"))]
    pub backoff_max: Option<Spanned<Duration>>,
    /// Retries in flight allowed per request in flight (0.0-1.0).
    #[schemars(extend("default" = 0.2))]
    pub budget_ratio: Option<Spanned<f64>>,
    /// Retries in flight always allowed, whatever the ratio.
    #[schemars(extend("default" = 3))]
    pub budget_min_retries: Option<u32>,
}

/// `[upstreams.NAME.circuit_breaker]`
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    /// Requests in flight to the upstream; no limit when absent.
    pub max_in_flight: Option<Spanned<u32>>,
    /// Attempts waiting for a connection to a target; no limit when absent.
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

impl JsonSchema for StatusRange {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StatusRange".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A status such as 503, or an inclusive range such as \"500-599\" \
                (statuses 100 to 599).",
            "anyOf": [
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "type": "string", "pattern": r"^\s*[0-9]+\s*(-\s*[0-9]+\s*)?$" }
            ]
        })
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
#[derive(Debug, Serialize, JsonSchema)]
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
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// "HOST:PORT".
    pub address: String,
    /// Relative share of requests (1-1000).
    #[schemars(extend("default" = 1))]
    pub weight: Option<i64>,
}

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
    H2,
}

/// `tls = { sni, ca_file, verify }` of an upstream.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent and verified; the target's host name (else its IP) when absent.
    pub sni: Option<String>,
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<Spanned<String>>,
    /// Verify the server certificate and host name.
    #[schemars(extend("default" = true))]
    pub verify: Option<bool>,
    /// PEM certificate chain the gateway presents to the targets (mutual TLS); needs
    /// `client_key_file`.
    pub client_cert_file: Option<Spanned<String>>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<Spanned<String>>,
}

/// `[routes.NAME]`
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Match this path only.
    pub exact: Option<Spanned<String>>,
    /// Match this path and everything below it (segment boundaries).
    pub prefix: Option<Spanned<String>>,
    /// Match a path shape such as "/users/{id}/posts/{post}".
    pub template: Option<Spanned<String>>,
    /// "api.example.com" or "*.example.com"; any host when absent.
    pub host: Option<Spanned<String>>,
    /// Accepted methods, e.g. ["GET", "POST"]; any method when absent.
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Required request headers: name = "value" (exact value) or name = true (present).
    #[serde(default)]
    pub headers: BTreeMap<Spanned<String>, Spanned<HeaderCondition>>,
    /// Name of an [upstreams.NAME]; required unless `publish`, `subscribe` or `request_reply` is
    /// set.
    pub upstream: Option<Spanned<String>>,
    /// Remove the matched prefix before proxying (prefix routes only).
    #[serde(default)]
    #[schemars(extend("default" = false))]
    pub strip_prefix: Option<Spanned<bool>>,
    /// Replace the path before proxying (docs/configuration.md, Path rewriting).
    pub rewrite: Option<Spanned<String>>,
    /// Per-route override of the upstream's connect_timeout.
    pub connect_timeout: Option<Spanned<Duration>>,
    /// Per-route override of the upstream's read_timeout.
    pub read_timeout: Option<Spanned<Duration>>,
    /// Per-route override of the upstream's write_timeout.
    pub write_timeout: Option<Spanned<Duration>>,
    /// Global plugins this route does not run.
    #[serde(default)]
    pub disable_plugins: Vec<Spanned<String>>,
    /// Let the upstream's retry policy also retry POST/PATCH requests of this route.
    #[schemars(extend("default" = false))]
    pub retry_non_idempotent: Option<Spanned<bool>>,
    /// Answer HTTP/JSON requests by calling the upstream's gRPC methods (docs/grpc.md).
    pub grpc: Option<Spanned<crate::grpc::GrpcSection>>,
    /// Publish the request body to a broker instead of calling an upstream.
    pub publish: Option<Spanned<PublishSection>>,
    /// Stream a broker's messages to the client as Server-Sent Events.
    pub subscribe: Option<Spanned<SubscribeSection>>,
    /// Send the request body to a broker and answer with the correlated reply.
    pub request_reply: Option<Spanned<RequestReplySection>>,
    /// Route plugins. Only its presence is checked here; the registry reads the table again with
    /// spans so plugin errors point into it (and shows it).
    #[allow(dead_code)]
    #[serde(skip_serializing)]
    #[schemars(
        with = "Option<PluginTables>",
        description = "This route's plugins: `[routes.NAME.plugins.PLUGIN]`."
    )]
    pub plugins: Option<BTreeMap<String, IgnoredAny>>,
}

/// A header condition: an exact value, or `true` for "present with any value".
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum HeaderCondition {
    Equals(String),
    Present(bool),
}

/// `[brokers.NAME]`. One flat table for every kind rather than a tagged enum (whose variants
/// lose the spans errors point with); the keys of the other kinds are refused in validation.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "`[brokers.NAME]`: a message broker. `kind` decides which other keys apply; a key of another kind is an error."
)]
pub struct BrokerSection {
    /// The kind of broker; it decides which other keys apply.
    pub kind: BrokerKind,
    /// Longest wait for a connection, and for each reconnection attempt.
    #[schemars(extend("default" = "5s"))]
    pub connect_timeout: Option<Spanned<Duration>>,
    /// Longest wait for the broker's acknowledgement of one message.
    #[schemars(extend("default" = "5s"))]
    pub publish_timeout: Option<Spanned<Duration>>,
    /// Messages waiting for an acknowledgement at once, over every route.
    #[schemars(extend("default" = 1024))]
    pub max_in_flight: Option<Spanned<usize>>,
    /// Whether this broker being down makes /readyz answer 503.
    #[schemars(extend("default" = true))]
    pub required_for_readiness: Option<bool>,
    /// TLS to the broker; `tls = {}` turns it on with the system roots.
    pub tls: Option<Spanned<BrokerTls>>,
    // Kafka
    /// Kafka: bootstrap servers, "HOST:PORT"; required.
    pub bootstrap: Option<Spanned<Vec<Spanned<String>>>>,
    /// Kafka: client.id.
    #[schemars(extend("default" = "tollgate"))]
    pub client_id: Option<Spanned<String>>,
    /// Kafka: linger.ms, how long the producer waits to batch messages.
    #[schemars(extend("default" = "5ms"))]
    pub linger: Option<Spanned<Duration>>,
    /// Kafka: compression.type.
    #[schemars(extend("default" = "none"))]
    pub compression: Option<Spanned<Compression>>,
    /// Kafka: the largest message the broker takes.
    #[schemars(extend("default" = 1048576))]
    pub message_max_bytes: Option<Spanned<ByteSize>>,
    /// Kafka: SASL credentials.
    pub sasl: Option<Spanned<KafkaSasl>>,
    // AMQP
    /// AMQP: amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST] or amqps://...; required.
    pub url: Option<Spanned<SecretUrl>>,
    /// AMQP: heartbeat interval asked for, whole seconds; "0s" turns heartbeats off.
    #[schemars(extend("default" = "10s"))]
    pub heartbeat: Option<Spanned<Duration>>,
    /// AMQP: the largest message the gateway sends.
    #[schemars(extend("default" = 16777216))]
    pub max_message_bytes: Option<Spanned<ByteSize>>,
    // NATS
    /// NATS: nats://HOST[:PORT] or tls://HOST[:PORT] urls; required.
    pub servers: Option<Spanned<Vec<Spanned<SecretUrl>>>>,
    /// NATS: user name, with `password`.
    pub user: Option<Spanned<String>>,
    /// NATS: password, with `user` (secret).
    pub password: Option<Spanned<Secret<String>>>,
    /// NATS: a token instead of user/password (secret).
    pub token: Option<Spanned<Secret<String>>>,
    /// NATS: publish through JetStream, which acknowledges every message.
    #[schemars(extend("default" = true))]
    pub jetstream: Option<Spanned<bool>>,
}

/// `kind = "..."` of a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// `sasl = { mechanism, username, password }` of a Kafka broker.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: Spanned<String>,
    /// The password (secret).
    pub password: Secret<String>,
}

/// SASL mechanisms, named as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// `tls = { ca_file, verify }` of a broker.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<Spanned<String>>,
    /// Verify the broker's certificate and host name.
    #[schemars(extend("default" = true))]
    pub verify: Option<bool>,
}

/// `[routes.NAME.publish]`. Like a broker, one flat table whose destination keys depend on the
/// broker's kind.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "`[routes.NAME.publish]`: publish the request body to a broker. The broker's kind decides the destination keys."
)]
pub struct PublishSection {
    /// Name of a [brokers.NAME]; its kind decides the destination keys.
    pub broker: Spanned<String>,
    // Kafka
    /// Kafka: topic (a template); required.
    pub topic: Option<Spanned<String>>,
    /// Kafka: message key (a template).
    pub key: Option<Spanned<String>>,
    // AMQP
    /// AMQP: exchange (a template); "" is the default exchange.
    #[schemars(extend("default" = ""))]
    pub exchange: Option<Spanned<String>>,
    /// AMQP: routing key (a template); required.
    pub routing_key: Option<Spanned<String>>,
    // NATS
    /// NATS: subject (a template); required.
    pub subject: Option<Spanned<String>>,
    /// Request headers copied into the message (content-type, x-request-id, traceparent and
    /// tracestate always are).
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    /// Largest request body published (413 above); the broker's limit if smaller.
    #[schemars(extend("default" = 1048576))]
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    /// Answer after the broker acknowledged the message, or as soon as the client library has it.
    #[schemars(extend("default" = "confirmed"))]
    pub mode: Option<Spanned<PublishMode>>,
    /// Status of the answer (200-299).
    #[schemars(extend("default" = 202))]
    pub status: Option<Spanned<u16>>,
    /// How long a repeated Idempotency-Key gets the first answer again.
    #[schemars(extend("default" = "1h"))]
    pub idempotency_window: Option<Spanned<Duration>>,
    /// Most answers kept at once for the route in this process.
    #[schemars(extend("default" = 100000))]
    pub idempotency_max_keys: Option<Spanned<u64>>,
    /// redis://... to keep idempotent answers in Redis, shared by instances.
    pub idempotency_redis: Option<Spanned<tollgate_plugin_api::SecretUrl>>,
}

/// `[routes.NAME.subscribe]`: where a route's Server-Sent Events come from (keys by the
/// broker's kind, as for publish) and how each subscriber is served.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeSection {
    /// Name of a [brokers.NAME]; its kind decides the source keys.
    pub broker: Spanned<String>,
    // Kafka
    /// Kafka: topic (a template); required.
    pub topic: Option<Spanned<String>>,
    // AMQP: a binding (exchange + routing key) or a named queue
    /// AMQP: exchange a queue of the client's own is bound to.
    pub exchange: Option<Spanned<String>>,
    /// AMQP: binding key of that queue.
    pub routing_key: Option<Spanned<String>>,
    /// AMQP: a named queue the route's subscribers share, instead of exchange + routing_key.
    pub queue: Option<Spanned<String>>,
    // NATS
    /// NATS: subject (a template; `*` and `>` wildcards allowed).
    pub subject: Option<Spanned<String>>,
    /// Only messages whose key or headers match, filled from the request.
    pub filter: Option<Spanned<SubscribeFilter>>,
    /// After this much silence a comment line is sent to keep the stream open.
    #[schemars(extend("default" = "15s"))]
    pub heartbeat: Option<Spanned<Duration>>,
    /// A client that takes no bytes for this long while an event waits to be written is cut.
    #[schemars(extend("default" = "30s"))]
    pub stall_timeout: Option<Spanned<Duration>>,
    /// Messages held for one client (1-65536).
    #[schemars(extend("default" = 256))]
    pub buffer: Option<Spanned<u64>>,
    /// Clients streaming from the route at once, per instance.
    #[schemars(extend("default" = 10000))]
    pub max_subscribers: Option<Spanned<u64>>,
}

/// `filter = { key = "...", headers = { NAME = "..." } }` of a subscribe route.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeFilter {
    /// Kafka: only messages whose key equals this (a template).
    pub key: Option<Spanned<String>>,
    /// Only messages that have each of these headers with this value (templates).
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
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestReplySection {
    /// Name of a [brokers.NAME]; its kind decides the destination keys.
    pub broker: Spanned<String>,
    // Kafka
    /// Kafka: topic of requests (a template); required.
    pub topic: Option<Spanned<String>>,
    /// Kafka: message key (a template).
    pub key: Option<Spanned<String>>,
    /// Kafka: the topic responders answer on; required.
    pub reply_topic: Option<Spanned<String>>,
    // AMQP
    /// AMQP: exchange (a template).
    #[schemars(extend("default" = ""))]
    pub exchange: Option<Spanned<String>>,
    /// AMQP: routing key (a template); required.
    pub routing_key: Option<Spanned<String>>,
    // NATS
    /// NATS: subject (a template); required.
    pub subject: Option<Spanned<String>>,
    /// Request headers copied into the request message.
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    /// Largest request body sent (413 above); the broker's limit if smaller.
    #[schemars(extend("default" = 1048576))]
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    /// Longest wait for the reply; past it 504 `reply_timeout`.
    #[schemars(extend("default" = "5s"))]
    pub timeout: Option<Spanned<Duration>>,
    /// Offer `Prefer: respond-async`: answer 202 at once with a Location to poll.
    #[schemars(extend("default" = false))]
    pub respond_async: Option<Spanned<bool>>,
    /// With respond_async: how long a reply is kept for polling.
    #[schemars(extend("default" = "5m"))]
    pub async_ttl: Option<Spanned<Duration>>,
    /// With respond_async: most replies kept at once for the route.
    #[schemars(extend("default" = 10000))]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    Confirmed,
    FireAndForget,
}
