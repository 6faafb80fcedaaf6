//! Helpers shared by the gateway core and plugins: request ids, query-string values, client
//! addresses as text.

/// A fresh request id in the UUID v4 text form, e.g. `0b8f3c2a-6d1e-4f7a-9c3b-2e5d8a1f4b6c`.
///
/// The bits come from fastrand's thread-local generator: ids must be unique, not unguessable, and a
/// syscall or a lock per request would cost more than the id is worth.
pub fn generate_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // RFC 9562: version 4 in the high nibble of byte 6, variant 0b10 in the top bits of byte 8.
    let bits = (fastrand::u128(..) & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62);
    let bytes = bits.to_be_bytes();
    // Built in a fixed buffer: per-character `String::push` was most of this function's cost,
    // and it runs for every request without an id.
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    // Always ASCII hex and dashes, so this never falls back to the empty default.
    std::str::from_utf8(&out).unwrap_or_default().to_owned()
}

/// Whether a client-supplied request id is safe to log and forward: 1 to 128 bytes of
/// `[A-Za-z0-9._:-]`.
pub fn is_sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Decodes a query-string value (`application/x-www-form-urlencoded`): `%XX` escapes and `+` for
/// space. Invalid escapes stay as written; invalid UTF-8 becomes U+FFFD. Never fails.
pub fn decode_query_value(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            // `from_str_radix` would take a sign: "%+1" is not an escape.
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {

    #[test]
    fn query_values_decode_without_ever_failing() {
        assert_eq!(decode_query_value("a%20b+c"), "a b c");
        assert_eq!(decode_query_value("%+1"), "% 1");
        for odd in ["%", "%4", "%zz", "%%%", "%e2%9c"] {
            let _ = decode_query_value(odd);
        }
        assert_eq!(decode_query_value("%zz"), "%zz");
    }
    use super::*;

    #[test]
    fn generated_id_is_a_uuid_v4() {
        let id = generate_request_id();
        assert_eq!(id.len(), 36);
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(id
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(groups[2].starts_with('4'), "version nibble in {id}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "variant bits in {id}"
        );
    }

    #[test]
    fn generated_ids_differ() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| generate_request_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn generated_id_is_sane() {
        assert!(is_sane_request_id(generate_request_id().as_bytes()));
    }

    #[test]
    fn sane_request_id_accepts_the_allowed_alphabet() {
        assert!(is_sane_request_id(b"a"));
        assert!(is_sane_request_id(b"Abc-123_x.y:z"));
        assert!(is_sane_request_id(&[b'x'; 128]));
    }

    #[test]
    fn sane_request_id_rejects_empty_long_and_odd_bytes() {
        assert!(!is_sane_request_id(b""));
        assert!(!is_sane_request_id(&[b'x'; 129]));
        for bad in [
            &b"a b"[..],
            b"a\r\nb",
            b"a/b",
            b"a\"b",
            b"caf\xc3\xa9",
            b"a\0",
        ] {
            assert!(!is_sane_request_id(bad), "{bad:?}");
        }
    }
}

/// Appends `ip` as text, an IPv4-mapped IPv6 address as plain IPv4 (`::ffff:10.1.2.3` and
/// `10.1.2.3` are the same client). Written by hand for IPv4: `Display` for an address costs more
/// than the rest of a rate-limit check or an `X-Forwarded-For` header.
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + (octet / 10) % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        v6 => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod ip_tests {
    use super::push_ip;

    #[test]
    fn addresses_are_written_as_display_writes_their_canonical_form() {
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
            let ip: std::net::IpAddr = ip.parse().expect("test address");
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{}", ip.to_canonical()).as_bytes(), "{ip}");
        }
    }
}
