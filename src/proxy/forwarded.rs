//! Who the client is, and the `X-Forwarded-*` headers the upstream gets.
//!
//! `X-Forwarded-*` headers from a peer that is not a trusted proxy are lies until proven
//! otherwise: they are replaced, never extended. From a trusted peer, the client is the rightmost
//! address of `X-Forwarded-For` that is not itself a trusted proxy.

use std::net::IpAddr;

use http::header::{HeaderName, HOST};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use pingora_http::RequestHeader;
use tollgate_plugin_api::RequestContext;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client certificate as the gateway saw it (Envoy's format), set by the `cert-auth`
/// plugin; only the gateway may set it.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Removes from a client's request the headers only the gateway may set, whoever sent them (a
/// trusted proxy's `x-forwarded-client-cert` describes its own client, whom this gateway has not
/// verified).
pub fn remove_gateway_only(req: &mut RequestHeader) {
    if req.headers.contains_key(&X_FORWARDED_CLIENT_CERT) {
        req.remove_header(&X_FORWARDED_CLIENT_CERT);
    }
}

/// An address as a header value. IPv4 is written by hand: `Display` for `Ipv4Addr` goes through
/// the formatting machinery and was ~1,300 instructions of every proxied request.
pub fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut buf = Vec::with_capacity(15);
    tollgate_plugin_api::push_ip(&mut buf, ip);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(buf)).ok()
}

/// Whether a request carries a field pingora's upstream request policy would strip or rewrite:
/// a standard hop-by-hop field or `Connection` (whose nominations it removes). One pass over the
/// names; the policy itself makes ~15 hashed lookups whether or not any is there.
pub fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "http2-settings"
        )
    })
}

/// Whether `ip` is inside one of the trusted networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client address: the peer itself, or from a trusted peer, the rightmost untrusted hop.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A garbled hop ends the chain we can believe.
            break;
        };
        client = canonical(ip);
        if !is_trusted(client, trusted) {
            break;
        }
    }
    Some(client)
}

/// IPv4-mapped IPv6 addresses are compared and reported as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Sets the forwarded headers of the upstream request `up` of the client request `req`:
/// `X-Forwarded-For` (a trusted proxy's chain extended with the peer), `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (a trusted proxy's own kept).
pub fn set_upstream_headers(
    req: &RequestHeader,
    up: &mut RequestHeader,
    ctx: &RequestContext,
    trusted_proxies: &[IpNet],
) {
    let trusted = ctx
        .peer_ip
        .is_some_and(|ip| is_trusted(ip, trusted_proxies));
    if let Some(peer) = ctx.peer_ip {
        // A trusted proxy's chain may arrive split over several header lines.
        let prev: Vec<&str> = if trusted {
            req.headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        } else {
            Vec::new()
        };
        let xff = if prev.is_empty() {
            ip_header_value(peer)
        } else {
            let peer = peer.to_canonical();
            HeaderValue::from_str(&format!("{}, {peer}", prev.join(", "))).ok()
        };
        if let Some(v) = xff {
            let _ = up.insert_header("x-forwarded-for", v);
        }
    }
    let keep = |name: &HeaderName| trusted && req.headers.contains_key(name);
    if !keep(&X_FORWARDED_PROTO) {
        let _ = up.insert_header(
            "x-forwarded-proto",
            HeaderValue::from_static(ctx.scheme.as_str()),
        );
    }
    if !keep(&X_FORWARDED_HOST) {
        let host = req.headers.get(HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(h) => {
                let _ = up.insert_header("x-forwarded-host", h);
            }
            None => {
                up.remove_header("x-forwarded-host");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_header_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "9.99.100.199",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let want = ip.to_canonical().to_string();
            assert_eq!(ip_header_value(ip).unwrap(), want.as_str(), "{ip}");
        }
    }

    #[test]
    fn hop_by_hop_fields_are_found_in_any_case_and_position() {
        let mut h = HeaderMap::new();
        h.insert("x-one", "1".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        assert!(!has_hop_by_hop(&h));
        for name in [
            "Connection",
            "Keep-Alive",
            "Proxy-Connection",
            "Proxy-Authenticate",
            "Proxy-Authorization",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "HTTP2-Settings",
        ] {
            let mut with = h.clone();
            with.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "x".parse().unwrap(),
            );
            assert!(has_hop_by_hop(&with), "{name}");
        }
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = client_ip(
            Some("203.0.113.9".parse().unwrap()),
            &xff("1.2.3.4"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn trusted_chain_yields_rightmost_untrusted_hop() {
        let ip = client_ip(
            Some("10.0.0.1".parse().unwrap()),
            &xff("1.2.3.4, 198.51.100.7, 10.0.0.2"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("198.51.100.7".parse().unwrap()));
    }

    #[test]
    fn garbage_hop_stops_the_walk() {
        let ip = client_ip(
            Some("10.0.0.1".parse().unwrap()),
            &xff("1.2.3.4, nonsense"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_v6_peer_is_reported_as_v4() {
        let ip = client_ip(
            Some("::ffff:192.0.2.1".parse().unwrap()),
            &HeaderMap::new(),
            &[],
        );
        assert_eq!(ip, Some("192.0.2.1".parse().unwrap()));
    }
}
