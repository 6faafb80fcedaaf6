//! An upstream as the gateway runs it: where its targets come from, how they are balanced,
//! checked, retried and limited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tollgate_plugin_api::Secret;

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

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (over TLS when the upstream has `tls`).
    Http1,
    /// Plaintext HTTP/2 with prior knowledge.
    H2c,
    /// HTTP/2 over TLS, chosen by ALPN.
    H2,
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
        nameservers: Nameservers,
    },
    /// SRV records (ports and weights from the records).
    DnsSrv {
        /// SRV name, e.g. `_http._tcp.users.service.consul`.
        name: String,
        /// Name servers to ask.
        nameservers: Nameservers,
    },
    /// Consul's health API, passing instances only, by blocking queries.
    Consul {
        /// The query.
        query: ConsulQuery,
        /// Longest wait of one blocking query.
        wait: Duration,
    },
}

/// Where DNS questions go: the system resolver (/etc/resolv.conf) or explicit name servers (UDP+TCP).
#[derive(Debug, Clone, PartialEq)]
pub enum Nameservers {
    /// The name servers, search list and options of /etc/resolv.conf, plus /etc/hosts.
    System,
    /// These name servers only, each asked over UDP and (for truncated answers) TCP on its port.
    Explicit(Vec<SocketAddr>),
}

/// What to ask Consul for.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulQuery {
    /// The agent's address, e.g. `http://127.0.0.1:8500`; a path prefix is kept.
    pub base: http::Uri,
    /// The service name as registered.
    pub service: String,
    /// `dc=`: the datacenter to ask; the agent's own when `None`.
    pub datacenter: Option<String>,
    /// `tag=`: only instances carrying this tag.
    pub tag: Option<String>,
    /// Sent as `X-Consul-Token`.
    pub token: Option<Secret<String>>,
}

/// Active health checking of every target.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// What one check does.
    pub probe: ProbeKind,
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

/// What one active check does.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// HTTP request; healthy when the status is in one of `expected` (inclusive ranges).
    Http {
        /// Path (and query) requested, starting with `/`.
        path: String,
        /// Request method.
        method: http::Method,
        /// `Host` (HTTP/1.1) or `:authority` (h2c) sent; the target address when `None`.
        host: Option<String>,
        /// Inclusive status ranges that count as healthy.
        expected: Vec<(u16, u16)>,
        /// Speak HTTP/2 with prior knowledge instead of HTTP/1.1.
        h2c: bool,
    },
    /// TCP connect succeeds.
    Tcp,
    /// grpc.health.v1.Health/Check over h2c with `service` ("" = whole server); healthy when SERVING.
    Grpc {
        /// Service asked about; "" asks about the whole server.
        service: String,
        /// `:authority` sent; the target address when `None`.
        authority: Option<String>,
    },
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
    /// The certificate the gateway presents to the targets (mutual TLS).
    pub client_cert: Option<ClientCert>,
}

/// A client certificate and its key, read and checked to belong together at config time.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// PEM certificate chain (leaf first).
    pub cert_file: std::path::PathBuf,
    /// PEM private key.
    pub key_file: std::path::PathBuf,
    /// For the gateway's own TLS clients (gRPC calls, health checks).
    pub certified_key: std::sync::Arc<rustls::sign::CertifiedKey>,
    /// The same for pingora's connector, built once per config rather than per attempt.
    pub pingora: std::sync::Arc<pingora_core::utils::tls::CertKey>,
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
