//! The validated configuration the gateway runs on. Built from the file format by `load`; every
//! reference is resolved and every value parsed, so nothing here can be wrong at request time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;
use tollgate_plugin_api::Plugin;

use crate::router::RouteTable;

pub use super::file::{LogFormat, Protocol};

/// One complete, valid configuration.
#[derive(Clone)]
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
}

/// A named upstream service.
#[derive(Debug)]
pub struct UpstreamConfig {
    /// Its name in gateway.toml.
    pub name: Arc<str>,
    /// Where requests go.
    pub targets: Vec<TargetConfig>,
    /// Wire protocol.
    pub protocol: Protocol,
    /// TLS towards the targets, when on.
    pub tls: Option<UpstreamTls>,
    /// Replaces the client's Host header when set.
    pub host_header: Option<HeaderValue>,
    /// Timeouts of every attempt.
    pub timeouts: Timeouts,
    /// How long a target that refused a connection is skipped.
    pub connect_failure_cooldown: Duration,
    /// Concurrent h2 streams per connection.
    pub max_h2_streams: usize,
}

/// One target of an upstream.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// As written in the file (`host:port`).
    pub label: String,
    /// The resolved address.
    pub address: SocketAddr,
    /// The host part when it is a name (default SNI).
    pub hostname: Option<String>,
    /// Relative share of requests.
    pub weight: u32,
}

/// TLS towards an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Server name to send; defaults to the target's host name.
    pub sni: Option<String>,
    /// DER certificates of the CAs to trust instead of the system roots.
    pub ca_certs: Option<Vec<Vec<u8>>>,
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
#[derive(Clone)]
pub struct Route {
    /// Its name in gateway.toml.
    pub name: Arc<str>,
    /// Index into `GatewayConfig::upstreams`.
    pub upstream: usize,
    /// The upstream's name (for logs and errors).
    pub upstream_name: Arc<str>,
    /// Template parameter names, in order, when the route is a template.
    pub param_names: Vec<Arc<str>>,
    /// How the path is changed before it goes upstream.
    pub rewrite: Rewrite,
    /// Per-route timeout overrides.
    pub connect_timeout: Option<Duration>,
    /// Per-route read timeout override.
    pub read_timeout: Option<Duration>,
    /// Per-route write timeout override.
    pub write_timeout: Option<Duration>,
    /// Plugins of the route (global ones merged in), in execution order.
    pub plugins: Arc<[PluginEntry]>,
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
