//! Which host a request is for (RFC 9110 §7.2, RFC 9112 §3.2.2, RFC 9113 §8.3.1): the
//! authority of the request target when it has one (absolute-form, HTTP/2 `:authority`), else
//! the `Host` header. A host that is missing (HTTP/1.1, HTTP/2), empty, repeated or not a host
//! name, IP address or bracketed IPv6 address with an optional port is a 400 `bad_host`.

use crate::error::GatewayError;
use http::header::HOST;
use pingora_http::RequestHeader;

fn bad_host(message: String) -> GatewayError {
    GatewayError::BadHost(message)
}

/// The request's host as sent (with its port), or `None` for an HTTP/1.0 request without one.
pub fn request_host(req: &RequestHeader) -> Result<Option<&str>, GatewayError> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let (header, again) = (hosts.next(), hosts.next());
    if again.is_some() {
        return Err(bad_host(
            "the request has more than one Host header".to_owned(),
        ));
    }
    // HTTP/2 puts the authority in the URI; pingora keeps an HTTP/1.1 absolute-form target
    // whole in `raw_path` and only its path in the URI.
    let authority = req
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| super::head::target_authority(req.raw_path()));
    if header.is_none() && req.version == http::Version::HTTP_11 {
        return Err(bad_host(
            "the request has no Host header (HTTP/1.1 requires one, also with an absolute-form \
             target)"
                .to_owned(),
        ));
    }
    let host: &[u8] = match (authority, header) {
        (Some(authority), _) => authority,
        (None, Some(h)) => h.as_bytes(),
        (None, None) if req.version == http::Version::HTTP_10 => return Ok(None),
        (None, None) => {
            return Err(bad_host(
                "the request has no Host header (HTTP/1.1 requires one)".to_owned(),
            ))
        }
    };
    if !is_valid_host(host) {
        return Err(bad_host(format!(
            "Host `{}` is not a host name or address with an optional port",
            String::from_utf8_lossy(host).escape_debug()
        )));
    }
    // Valid hosts are ASCII.
    Ok(std::str::from_utf8(host).ok())
}

/// `uri-host [ ":" port ]` where the host is a reg-name (without `,`, which only a list of
/// hosts would have) or a bracketed IP literal.
fn is_valid_host(h: &[u8]) -> bool {
    let (name_ok, port) = if h.first() == Some(&b'[') {
        let Some(end) = h.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &h[1..end];
        let literal_ok = !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        match &h[end + 1..] {
            [] => (literal_ok, &[][..]),
            [b':', port @ ..] => (literal_ok, port),
            _ => return false,
        }
    } else {
        let (name, port) = match h.iter().position(|b| *b == b':') {
            Some(i) => (&h[..i], &h[i + 1..]),
            None => (h, &[][..]),
        };
        (
            !name.is_empty() && name.iter().all(|b| is_reg_name_byte(*b)),
            port,
        )
    };
    name_ok
        && port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()))
}

fn is_reg_name_byte(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

/// Bytes of a host name (RFC 3986 reg-name, without `,`), as a table: every request's host is
/// read byte by byte.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+;=%";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: http::Version, target: &str, hosts: &[&str]) -> RequestHeader {
        let mut r = if version == http::Version::HTTP_2 {
            // As pingora's HTTP/2 server builds it: the whole URI, `:authority` included.
            let parts = http::Request::get(target)
                .body(())
                .expect("request")
                .into_parts()
                .0;
            RequestHeader::from(parts)
        } else {
            RequestHeader::build("GET", target.as_bytes(), None).expect("head")
        };
        r.set_version(version);
        for h in hosts {
            r.append_header(HOST, *h).expect("host");
        }
        r
    }

    fn host(
        version: http::Version,
        target: &str,
        hosts: &[&str],
    ) -> Result<Option<String>, &'static str> {
        request_host(&req(version, target, hosts))
            .map(|h| h.map(str::to_owned))
            .map_err(|e| e.code())
    }

    #[test]
    fn good_hosts_are_taken_as_sent() {
        use http::Version as V;
        for h in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:443",
            "[::1]",
            "a_b.internal",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(host(V::HTTP_11, "/", &[h]), Ok(Some(h.to_owned())), "{h}");
        }
        assert_eq!(host(V::HTTP_10, "/", &[]), Ok(None));
    }

    #[test]
    fn the_target_authority_wins_over_host() {
        assert_eq!(
            host(http::Version::HTTP_11, "http://a.example/x", &["a.example"]),
            Ok(Some("a.example".to_owned()))
        );
        assert_eq!(
            host(http::Version::HTTP_10, "http://a.example:81/x", &[]),
            Ok(Some("a.example:81".to_owned()))
        );
        assert_eq!(
            host(http::Version::HTTP_2, "https://b.example/x", &[]),
            Ok(Some("b.example".to_owned()))
        );
    }

    #[test]
    fn missing_empty_repeated_and_malformed_hosts_are_bad() {
        use http::Version as V;
        assert_eq!(host(V::HTTP_11, "/", &[]), Err("bad_host"));
        assert_eq!(host(V::HTTP_2, "/", &[]), Err("bad_host"));
        assert_eq!(host(V::HTTP_11, "http:///x", &[]), Err("bad_host"));
        assert_eq!(host(V::HTTP_11, "http://a.example/x", &[]), Err("bad_host"));
        assert_eq!(host(V::HTTP_11, "/", &["a", "b"]), Err("bad_host"));
        for h in [
            "",
            "a, b",
            "a,b",
            "x/y",
            "a b",
            "host:port",
            "[::1",
            "[zz]",
            "a:123456",
            "@a",
            "a?b",
            "a#b",
        ] {
            assert_eq!(host(V::HTTP_11, "/", &[h]), Err("bad_host"), "{h:?}");
        }
    }
}
