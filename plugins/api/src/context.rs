//! What a plugin knows about the request it is working on, beyond its headers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The scheme the client used to reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (HTTP/1.1 or h2c).
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Per-request state shared by the gateway core and the plugins of the request.
///
/// `vars` carries values one plugin produces for later ones (an authenticated consumer, verified
/// claims); `extensions` holds a plugin's private per-request state, keyed by its own type.
#[derive(Debug)]
pub struct RequestContext {
    /// The request id (kept from the client when sane, generated otherwise).
    pub request_id: String,
    /// The client address, resolved through the trusted proxies' `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// The address of the TCP peer (the client, or the last proxy in front of the gateway).
    pub peer_ip: Option<IpAddr>,
    /// The scheme of the client connection.
    pub scheme: Scheme,
    /// The host the client asked for, lower-case and without port.
    pub host: Option<String>,
    /// Name of the matched route.
    pub route: Arc<str>,
    /// Name of the route's upstream.
    pub upstream: Arc<str>,
    /// Path template parameters of the matched route, in template order.
    pub params: Vec<(Arc<str>, String)>,
    /// Values handed from one plugin to the next, e.g. `consumer` or `jwt.sub`.
    pub vars: HashMap<String, String>,
    /// Private per-request state of plugins, keyed by type.
    pub extensions: http::Extensions,
    /// The request's span when the request is traced and sampled; plugins hand it to
    /// [`crate::IoSpan::start`] through the context.
    pub trace: Option<crate::TraceParent>,
}

impl RequestContext {
    /// A context for a routed request; the core fills it before the request phase.
    pub fn new(request_id: String, scheme: Scheme, route: Arc<str>, upstream: Arc<str>) -> Self {
        Self {
            request_id,
            client_ip: None,
            peer_ip: None,
            scheme,
            host: None,
            route,
            upstream,
            params: Vec::new(),
            vars: HashMap::new(),
            extensions: http::Extensions::new(),
            trace: None,
        }
    }

    /// The value of a path template parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}
