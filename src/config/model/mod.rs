//! The validated configuration the gateway runs on: plain data, built from the file format by
//! `load` (separate types, so the file can evolve without touching the proxy). Every reference
//! is resolved and every value parsed, so nothing here can be wrong at request time. Nothing
//! here runs either: plugin instances, transcoders, clusters and metric handles are built from
//! it into the `Snapshot`.
//!
//! Rooms: this file holds the whole config and its process-wide sections; `upstream.rs` an
//! upstream and its policies; `route.rs` a route; `broker.rs` a broker and a publish route.

mod broker;
mod route;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tollgate_plugin_api::Secret;

use crate::router::RouteTable;

pub use broker::{
    AmqpSettings, AsyncReplies, BrokerConfig, BrokerKind, BrokerTls, Destination,
    IdempotencyConfig, KafkaSasl, KafkaSettings, NatsSettings, PublishConfig, PublishMode,
    RequestReplyConfig, Source, SubscribeConfig, Template, TemplatePart,
};
pub use route::{Rewrite, RewritePart, Route};
pub use upstream::{
    Algorithm, BalanceConfig, CircuitBreakerConfig, ClientCert, ConsulQuery, DiscoveryConfig,
    DiscoverySource, HashOn, HealthCheckConfig, Nameservers, OutlierConfig, ProbeKind, Protocol,
    RetryConfig, TargetConfig, Timeouts, UpstreamConfig, UpstreamTls,
};

/// One complete, valid configuration. Its `Debug` shows no secret: every credential it holds is
/// a [`Secret`].
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
    /// Message brokers, referenced by index from publish routes.
    pub brokers: Vec<Arc<BrokerConfig>>,
    /// Routes, referenced by index from the route table.
    pub routes: Vec<Route>,
    /// The compiled route table. Validated data rather than a runtime object: conflicts are
    /// found only by compiling it, and it holds no state, so it is compiled once, here.
    pub table: Arc<RouteTable>,
    /// Access log.
    pub access_log: crate::telemetry::access_log::AccessLogSettings,
    /// Tracing.
    pub tracing: crate::telemetry::trace::TracingSettings,
    /// The admin `/config` view of the file: its sections as written and every plugin's typed
    /// config, secrets redacted (see `config/view.rs`). The file's text itself is not kept.
    pub view: Arc<serde_json::Value>,
}

impl GatewayConfig {
    /// Every certificate and key file the config reads: those of TLS listeners and upstream
    /// client certificates. A change of one of them is a reason to reload.
    pub fn certificate_files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        let listeners = self
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| [t.cert_file.clone(), t.key_file.clone()]);
        let upstreams = self
            .upstreams
            .iter()
            .filter_map(|u| u.tls.as_ref()?.client_cert.as_ref())
            .flat_map(|c| [c.cert_file.clone(), c.key_file.clone()]);
        listeners.chain(upstreams)
    }
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

/// What a request path with `%2F` or `%5C` (an escaped separator) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400 `bad_path`: nothing can pass a prefix rule by hiding a separator.
    Reject,
    /// `%2F` becomes `/` before routing, so the router sees what a decoding upstream sees.
    Decode,
    /// Routed and forwarded as written (`%2F` is then part of a segment).
    Keep,
}

/// `[log]`, with defaults applied.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter directive; `RUST_LOG` wins over it.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
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
    /// The certificate chain and key, read and checked to belong together when the file was
    /// validated (a key that does not match is a config error, not a failed start).
    pub certified_key: Arc<rustls::sign::CertifiedKey>,
    /// Whether and how clients present certificates.
    pub client_auth: ClientAuth,
    /// Longest time a client may take to complete the handshake.
    pub handshake_timeout: Duration,
}

/// Mutual TLS of a listener.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// Client certificates are verified against `trust`.
    Verify {
        /// Whether a client without a certificate is refused in the handshake.
        required: bool,
        /// The CAs and revocation lists, read and checked at load.
        trust: ClientTrust,
    },
}

/// What client certificates are verified against, as read at load.
#[derive(Debug, Clone)]
pub struct ClientTrust {
    /// The `client_ca_file`.
    pub ca_file: PathBuf,
    /// The `client_crl_files`.
    pub crl_files: Vec<PathBuf>,
    /// DER of the CA certificates (a reload compares contents, not only paths).
    pub ca_der: Vec<Vec<u8>>,
    /// DER of the revocation lists.
    pub crl_der: Vec<Vec<u8>>,
    /// rustls' verifier over them; the listener's acceptor is built with it.
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Socket address to bind (loopback by default).
    pub address: SocketAddr,
    /// Bearer token required by every admin endpoint but `/healthz` and `/readyz`, if set.
    pub token: Option<Secret<String>>,
}
