//! HTTP headers ↔ gRPC metadata: which request headers go upstream, which response metadata
//! comes back as headers, and `grpc-timeout`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::config::Options;

/// Whether a header belongs to HTTP or to the gRPC protocol itself, never to an application.
pub fn is_reserved(name: &str) -> bool {
    // A `match` compares lengths first: scanning a list of names was most of the cost of
    // copying a response's metadata.
    matches!(
        name,
        "content-type"
            | "content-length"
            | "content-encoding"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "host"
            | "date"
            | "server"
            | "grpc-status"
            | "grpc-message"
            | "grpc-status-details-bin"
            | "grpc-encoding"
            | "grpc-accept-encoding"
            | "grpc-timeout"
    ) || name.starts_with(':')
}

/// The request id header: the gateway's id for the request replaces any the client sent.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Copies the allowed request headers into the upstream request's metadata; `request_id`
/// (when not empty) is sent as `x-request-id` if that header is allowed.
pub fn forward_request(
    from: &HeaderMap,
    allow: &[HeaderName],
    request_id: &str,
    to: &mut HeaderMap,
) {
    // One pass over the request's few headers: a hashed lookup per allowed name cost ~10 times
    // as much as comparing names.
    for (name, value) in from {
        if allow.contains(name) && (request_id.is_empty() || name != X_REQUEST_ID) {
            to.append(name.clone(), value.clone());
        }
    }
    if !request_id.is_empty() && allow.contains(&X_REQUEST_ID) {
        put_request_id(request_id, to);
    }
}

fn put_request_id(request_id: &str, to: &mut HeaderMap) {
    if let Ok(mut v) = HeaderValue::from_str(request_id) {
        // Never indexed in HPACK: a value unique to one request would only evict useful
        // entries from the upstream connection's table (and cost an insertion per call).
        v.set_sensitive(true);
        to.append(X_REQUEST_ID, v);
    }
}

/// Copies every application header of a gRPC-Web request: the browser's custom headers are its
/// metadata, and there is no JSON mapping to choose from. `request_id` as in
/// [`forward_request`].
pub fn forward_web_request(from: &HeaderMap, request_id: &str, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if is_reserved(n)
            || matches!(
                n,
                "accept"
                    | "accept-encoding"
                    | "x-grpc-web"
                    | "x-user-agent"
                    | "origin"
                    | "referer"
                    | "cookie"
                    | "proxy-authorization"
            )
            || n.starts_with("access-control-")
            || n.starts_with("sec-")
            || (!request_id.is_empty() && name == X_REQUEST_ID)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    if !request_id.is_empty() {
        put_request_id(request_id, to);
    }
}

/// Response metadata (from headers and trailers) as HTTP headers: reserved names dropped, the
/// allowlist applied, the prefix put before each name; appended to `out`.
pub fn response_headers(sources: &[&HeaderMap], opts: &Options, out: &mut HeaderMap) {
    for map in sources {
        for (name, value) in map.iter() {
            let n = name.as_str();
            if is_reserved(n) {
                continue;
            }
            if let Some(allow) = &opts.response_headers {
                if !allow.iter().any(|a| a == n) {
                    continue;
                }
            }
            let prefix = opts.response_header_prefix.as_bytes();
            if prefix.is_empty() {
                out.append(name.clone(), value.clone());
                continue;
            }
            // Joined on the stack: `format!` per header was most of this function's cost.
            let mut buf = [0u8; 256];
            let len = prefix.len() + n.len();
            let full: std::borrow::Cow<[u8]> = match buf.get_mut(..len) {
                Some(b) => {
                    b[..prefix.len()].copy_from_slice(prefix);
                    b[prefix.len()..].copy_from_slice(n.as_bytes());
                    std::borrow::Cow::Borrowed(&buf[..len])
                }
                None => std::borrow::Cow::Owned([prefix, n.as_bytes()].concat()),
            };
            if let Ok(h) = HeaderName::from_bytes(&full) {
                out.append(h, value.clone());
            }
        }
    }
}

/// The `grpc-timeout` header.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses `grpc-timeout` (`1S`, `250m`, up to 8 digits and a unit of H M S m u n).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    // Byte lengths and the unit split below assume ASCII; a multi-byte last character made
    // `split_at` panic (found by fuzz/grpc_web_framing; header values reach here as ASCII only).
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a deadline as `grpc-timeout`, in the finest unit that fits in 8 digits.
pub fn format_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units: [(u128, &str); 4] = [
        (d.as_millis(), "m"),
        (d.as_secs() as u128, "S"),
        (d.as_secs() as u128 / 60, "M"),
        (d.as_secs() as u128 / 3600, "H"),
    ];
    if d.as_micros() <= MAX && d.as_millis() < 10 {
        return format!("{}u", d.as_micros().max(1));
    }
    for (n, unit) in units {
        if n <= MAX {
            return format!("{n}{unit}");
        }
    }
    format!("{MAX}H")
}

/// The deadline of a call: the client's `grpc-timeout` if any, capped by the route's timeout.
pub fn deadline(headers: &HeaderMap, route: Option<Duration>) -> Option<Duration> {
    let client = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout);
    match (client, route) {
        (Some(c), Some(r)) => Some(c.min(r)),
        (c, r) => c.or(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn grpc_timeout_parses_every_unit_and_refuses_junk() {
        assert_eq!(parse_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_timeout("123456789S"), None);
        assert_eq!(parse_timeout("S"), None);
        assert_eq!(parse_timeout("-1S"), None);
        assert_eq!(parse_timeout("1x"), None);
    }

    #[test]
    fn grpc_timeout_with_a_multibyte_unit_is_refused_not_a_panic() {
        assert_eq!(parse_timeout("9999999\u{177}"), None);
        assert_eq!(parse_timeout("1\u{e9}"), None);
    }

    #[test]
    fn grpc_timeout_formats_within_eight_digits() {
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(format_timeout(Duration::from_micros(5)), "5u");
        assert_eq!(format_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            parse_timeout(&format_timeout(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn client_deadline_is_capped_by_the_route() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static("10S"));
        assert_eq!(
            deadline(&h, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(deadline(&h, None), Some(Duration::from_secs(10)));
        assert_eq!(deadline(&HeaderMap::new(), None), None);
    }

    #[test]
    fn response_metadata_is_prefixed_and_reserved_names_dropped() {
        let section: super::super::config::GrpcSection =
            toml::from_str("reflection = true").unwrap();
        let opts = section.validate(Path::new(".")).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("grpc-status", HeaderValue::from_static("0"));
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        let mut out = HeaderMap::new();
        response_headers(&[&h], &opts, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out.get("grpc-metadata-x-trace").unwrap(), "1");
    }
}
