//! The validated configuration the gateway runs on. Built from the file format by `load`; every
//! reference is resolved and every value parsed, so nothing here can be wrong at request time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;
use tollgate_plugin_api::{Plugin, Secret};

use crate::router::RouteTable;

pub use super::file::{EscapedSlashes, LogFormat, Protocol};

/// One complete, valid configuration. Its `Debug` shows no secret: every credential it holds is
/// a [`Secret`] (or inside a plugin instance, which shows only its name).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it was read from.
    pub source: PathBuf,
    /// Process-wide settings.
    pub server: ServerSettings,
    /// Logging.
    pub log: LogSettings,
    /// Client-facing listeners.
    pub listeners: Vec<Listener>,
    /// The admin listener, when enabled.
    pub admin: Option<AdminSettings>,
    /// Upstreams, referenced by index from routes.
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    /// Routes, referenced by index from the route table.
    pub routes: Vec<Route>,
    /// The compiled route table.
    pub table: Arc<RouteTable>,
    /// Global plugins in execution order (also merged into every route's chain).
    pub global_plugins: Arc<[PluginEntry]>,
    /// Access log.
    pub access_log: crate::telemetry::access_log::AccessLogSettings,
    /// Tracing.
    pub tracing: crate::telemetry::trace::TracingSettings,
    /// The admin `/config` view of the file: its sections as written and every plugin's typed
    /// config, secrets redacted (see `config/view.rs`). The file's text itself is not kept.
    pub view: Arc<serde_json::Value>,
}

/// `[server]`, with defaults applied.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Worker threads.
    pub threads: usize,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Larger request headers are answered with 431.
    pub max_request_header_bytes: usize,
    /// Longer request targets are answered with 414.
    pub max_uri_bytes: usize,
    /// Idle upstream connections kept for reuse, all upstreams together.
    pub keepalive_pool_size: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub graceful_shutdown_timeout: Duration,
    /// Reload when the config file changes.
    pub watch_config: bool,
    /// Socket for handing listeners to a new binary on upgrade.
    pub upgrade_sock: PathBuf,
    /// What clients get unless their listener says otherwise.
    pub client: ClientLimits,
}

/// How long a client may take to send its request, and how its path is read: `[server]`
/// defaults, overridden per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The whole request head must arrive within this (HTTP/1.x); else 408 and close.
    pub request_header_timeout: Duration,
    /// Longest wait for the next piece of a request body; else 408 and close.
    pub client_body_timeout: Duration,
    /// The whole request (head and body) must arrive within this, when set.
    pub request_timeout: Option<Duration>,
    /// What a path with `%2F` / `%5C` gets.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            request_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(30),
            request_timeout: None,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// `[log]`, with defaults applied.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter directive; `RUST_LOG` wins over it.
    pub level: String,
}

/// A client-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Name for logs.
    pub name: String,
    /// Socket address to bind.
    pub address: SocketAddr,
    /// Whether plaintext HTTP/2 (prior knowledge) is accepted beside HTTP/1.1.
    pub h2c: bool,
    /// TLS settings; plaintext when absent.
    pub tls: Option<ListenerTls>,
    /// Client deadlines and path rules of this listener (server defaults filled in).
    pub client: ClientLimits,
}

/// TLS of a listener.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Offer h2 by ALPN.
    pub h2: bool,
    /// The certificate chain and key, loaded and checked to belong together.
    pub certified_key: Arc<rustls::sign::CertifiedKey>,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Socket address to bind (loopback by default).
    pub address: SocketAddr,
    /// Bearer token required by every admin endpoint but `/healthz` and `/readyz`, if set.
    pub token: Option<Secret<String>>,
}

/// A named upstream service.
#[derive(Debug)]
pub struct UpstreamConfig {
    /// Its name in gateway.toml.
    pub name: Arc<str>,
    /// Targets written in the file (IP targets are used as is, host names are re-resolved).
    pub targets: Vec<TargetConfig>,
    /// Where targets come from instead of (or beside) `targets`.
    pub discovery: Option<DiscoveryConfig>,
    /// How often host names in `targets` are resolved again.
    pub dns_refresh: Duration,
    /// Wire protocol.
    pub protocol: Protocol,
    /// TLS towards the targets, when on.
    pub tls: Option<UpstreamTls>,
    /// Replaces the client's Host header when set.
    pub host_header: Option<HeaderValue>,
    /// Timeouts of every attempt.
    pub timeouts: Timeouts,
    /// Concurrent h2 streams per connection.
    pub max_h2_streams: usize,
    /// Load-balancing algorithm and its key.
    pub balance: BalanceConfig,
    /// When no target is healthy, spread load over all of them rather than fail every request.
    pub panic_mode: bool,
    /// Active health checking, when configured.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health (outlier ejection), when enabled.
    pub outlier: Option<OutlierConfig>,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Admission limits.
    pub circuit_breaker: CircuitBreakerConfig,
}

/// One target of an upstream as written in the file.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// As written in the file (`host:port`).
    pub label: String,
    /// The address, when the target is an IP literal.
    pub address: Option<SocketAddr>,
    /// The host name and port, when the target is a name (resolved at runtime; also default SNI).
    pub hostname: Option<(String, u16)>,
    /// Relative share of requests.
    pub weight: u32,
}

/// Load-balancing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceConfig {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The key `ring_hash` hashes.
    pub hash_on: HashOn,
}

/// Load-balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices by requests in flight per unit of weight.
    LeastRequest,
    /// Consistent hashing on a ring (sticky sessions).
    RingHash,
}

/// What `ring_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The value of a request header.
    Header(http::HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The client address (after trusted proxies).
    ClientIp,
    /// The normalised request path.
    Path,
}

/// Target discovery.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The mechanism.
    pub source: DiscoverySource,
    /// Time between refreshes (for Consul: between failed blocking queries).
    pub interval: Duration,
}

/// Discovery mechanisms.
#[derive(Debug, Clone)]
pub enum DiscoverySource {
    /// A/AAAA records of a name, all on one port.
    Dns {
        /// Name to resolve.
        name: String,
        /// Port of every address.
        port: u16,
        /// Name servers to ask.
        nameservers: crate::upstream::discovery::Nameservers,
    },
    /// SRV records (ports and weights from the records).
    DnsSrv {
        /// SRV name, e.g. `_http._tcp.users.service.consul`.
        name: String,
        /// Name servers to ask.
        nameservers: crate::upstream::discovery::Nameservers,
    },
    /// Consul's health API, passing instances only, by blocking queries.
    Consul {
        /// The query.
        query: crate::upstream::discovery::ConsulQuery,
        /// Longest wait of one blocking query.
        wait: Duration,
    },
}

/// Active health checking of every target.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// What one check does.
    pub probe: crate::upstream::probe::ProbeKind,
    /// Time between checks of one target.
    pub interval: Duration,
    /// Longest a check may take.
    pub timeout: Duration,
    /// Up to this much random delay is added to each interval.
    pub jitter: Duration,
    /// Consecutive passes that make an unhealthy target healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy target unhealthy.
    pub unhealthy_threshold: u32,
}

/// Passive health: eject targets that keep failing real requests.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive failures (connect errors, resets, timeouts, failure statuses) that eject.
    pub consecutive_failures: u32,
    /// Ejection time is this × the number of times the target was ejected...
    pub base_ejection_time: Duration,
    /// ...capped at this.
    pub max_ejection_time: Duration,
    /// At most this share of targets is ejected at once (at least one may always be).
    pub max_ejection_percent: u32,
    /// Response statuses that count as failures.
    pub failure_statuses: Vec<(u16, u16)>,
}

/// When and how requests are retried.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Retries after the first try (0: never retry).
    pub attempts: u32,
    /// Retry when connecting failed (always safe: nothing was sent).
    pub on_connect_failure: bool,
    /// Retry when the upstream closed or reset the connection before answering.
    pub on_reset: bool,
    /// Retry when the upstream did not answer within the (per-try) timeout.
    pub on_timeout: bool,
    /// Response statuses that are retried.
    pub statuses: Vec<(u16, u16)>,
    /// Read timeout of each try (defaults to the upstream's read timeout).
    pub per_try_timeout: Option<Duration>,
    /// First backoff; doubles with each retry, with full jitter.
    pub backoff_base: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// Retries in flight may be at most this share of requests in flight...
    pub budget_ratio: f64,
    /// ...but this many are always allowed.
    pub budget_min_retries: u32,
}

/// Admission limits of an upstream; over them the gateway answers 503 at once.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerConfig {
    /// Requests in flight to the upstream.
    pub max_in_flight: Option<usize>,
    /// Requests waiting for a connection to a target.
    pub max_pending: Option<usize>,
}

/// TLS towards an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Server name to send; defaults to the target's host name.
    pub sni: Option<String>,
    /// DER certificates of the CAs to trust instead of the system roots.
    pub ca_certs: Option<Vec<Vec<u8>>>,
    /// The same CAs parsed for pingora's connector, once per config rather than per attempt.
    pub ca: Option<std::sync::Arc<[pingora_core::utils::tls::WrappedX509]>>,
    /// Verify the server certificate and host name.
    pub verify: bool,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// Between reads of the response.
    pub read: Duration,
    /// Between writes of the request.
    pub write: Duration,
    /// An idle pooled connection is closed after this.
    pub idle: Duration,
}

/// A route, with everything resolved.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name in gateway.toml.
    pub name: Arc<str>,
    /// Index into `GatewayConfig::upstreams`.
    pub upstream: usize,
    /// The upstream's name (for logs and errors).
    pub upstream_name: Arc<str>,
    /// Template parameter names, in order, when the route is a template.
    pub param_names: Vec<Arc<str>>,
    /// The path pattern for telemetry (`http.route`): the exact path, the template, or the
    /// prefix followed by `/*`.
    pub pattern: Arc<str>,
    /// How the path is changed before it goes upstream.
    pub rewrite: Rewrite,
    /// Per-route timeout overrides.
    pub connect_timeout: Option<Duration>,
    /// Per-route read timeout override.
    pub read_timeout: Option<Duration>,
    /// Per-route write timeout override.
    pub write_timeout: Option<Duration>,
    /// Retry non-idempotent methods too (the route says its upstream tolerates it).
    pub retry_non_idempotent: bool,
    /// HTTP/JSON → gRPC transcoding and gRPC-Web, when the route has a `grpc` table.
    pub grpc: Option<Arc<crate::grpc::Transcoder>>,
    /// Plugins of the route (global ones merged in), in execution order.
    pub plugins: Arc<[PluginEntry]>,
    /// Its metric series, resolved on first use.
    pub metrics: Arc<crate::telemetry::metrics::RouteMetrics>,
}

/// One plugin of a route's chain.
#[derive(Clone)]
pub struct PluginEntry {
    /// Registered name.
    pub name: Arc<str>,
    /// Execution priority (higher first).
    pub priority: i32,
    /// Whether it came from the global `[plugins]` section.
    pub global: bool,
    /// The instance.
    pub plugin: Arc<dyn Plugin>,
}

// The instance is left out: plugins hold keys and secrets, and `Plugin` asks for no `Debug`.
impl std::fmt::Debug for PluginEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEntry")
            .field("name", &self.name)
            .field("priority", &self.priority)
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

/// How a route changes the path before proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// The path goes upstream as normalised.
    None,
    /// The matched prefix is replaced by this string (empty for `strip_prefix`).
    Prefix(String),
    /// The whole path is replaced; parameters are filled in.
    Template(Vec<RewritePart>),
}

/// A piece of a whole-path rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewritePart {
    /// Copied as is.
    Literal(String),
    /// The value of the template parameter with this index.
    Param(usize),
}
