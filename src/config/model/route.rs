//! A route as the gateway runs it: the upstream it goes to and how its path is rewritten.

use std::sync::Arc;
use std::time::Duration;

/// A route, with everything resolved.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name in gateway.toml.
    pub name: Arc<str>,
    /// Index into `GatewayConfig::upstreams`; `None` for a route that answers without one
    /// (a publish route).
    pub upstream: Option<usize>,
    /// The upstream's name (for logs and errors); empty without an upstream.
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
    /// Publishes the request body to a broker instead of calling an upstream.
    pub publish: Option<super::PublishConfig>,
    /// Streams a broker's messages to the client instead of calling an upstream.
    pub subscribe: Option<super::SubscribeConfig>,
    /// Sends the request body to a broker and answers with the correlated reply.
    pub request_reply: Option<super::RequestReplyConfig>,
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
