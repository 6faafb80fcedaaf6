//! Turning an upstream target into the pingora peer an attempt connects to.

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;

use super::Target;
use crate::config::{Protocol, Route, UpstreamConfig};

/// The peer for one attempt at `target`, with the route's timeout overrides applied.
pub fn build_peer(upstream: &UpstreamConfig, target: &Target, route: &Route) -> HttpPeer {
    let tls = upstream.tls.as_ref();
    let sni = match tls {
        // Plaintext: pingora never reads it (and formatting an address per request is not free).
        None => String::new(),
        Some(t) => t
            .sni
            .clone()
            .or_else(|| target.hostname.clone())
            // An empty SNI makes pingora skip certificate verification; an IP target is
            // verified against the IP SANs of its certificate instead.
            .unwrap_or_else(|| target.address.ip().to_string()),
    };
    let mut peer = HttpPeer::new(target.address, tls.is_some(), sni);
    let o = &mut peer.options;
    let t = &upstream.timeouts;
    o.connection_timeout = Some(route.connect_timeout.unwrap_or(t.connect));
    let read = route.read_timeout.unwrap_or(t.read);
    // A per-try timeout bounds each attempt so a retry still fits the client's patience.
    o.read_timeout = Some(upstream.retry.per_try_timeout.map_or(read, |p| p.min(read)));
    o.write_timeout = Some(route.write_timeout.unwrap_or(t.write));
    o.idle_timeout = Some(t.idle);
    o.tcp_keepalive = None;
    o.max_h2_streams = upstream.max_h2_streams;
    o.alpn = match upstream.protocol {
        Protocol::Http1 => ALPN::H1,
        Protocol::H2c | Protocol::H2 => ALPN::H2,
    };
    if let Some(tls) = tls {
        o.verify_cert = tls.verify;
        o.verify_hostname = tls.verify;
        o.ca = tls.ca.clone();
        peer.client_cert_key = tls.client_cert.as_ref().map(|c| c.pingora.clone());
    }
    peer
}
