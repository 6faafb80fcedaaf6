//! Allowed-origin rules: `*`, an exact origin, or every subdomain of a host (`https://*.example.com`).

/// One entry of `allow_origins`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginRule {
    /// `*`: any origin.
    Any,
    /// One origin, lower-case, as browsers serialize it (`https://example.com:8443`).
    Exact(String),
    /// Any subdomain of a host: `scheme_prefix` is `https://`, `suffix` is `.example.com[:port]`.
    Subdomains {
        scheme_prefix: String,
        suffix: String,
    },
}

impl OriginRule {
    /// Parses an `allow_origins` entry.
    pub(crate) fn parse(entry: &str) -> Result<Self, String> {
        if entry == "*" {
            return Ok(OriginRule::Any);
        }
        if entry.eq_ignore_ascii_case("null") {
            return Err(
                "`null` cannot be allowed: browsers send it from sandboxed frames and local \
                 files, so allowing it lets any of them in"
                    .to_owned(),
            );
        }
        let bad = |why: &str| format!("`{entry}` is not a valid origin: {why}");
        let (scheme, authority) = entry
            .split_once("://")
            .ok_or_else(|| bad("write it as scheme://host[:port], e.g. `https://example.com`"))?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(bad("the scheme is not valid"));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(bad(
                "an origin has no path, not even a trailing slash (browsers send \
                 `https://example.com`)",
            ));
        }
        if authority.contains('@') {
            return Err(bad("an origin has no user info"));
        }
        let (host, port) = split_host_port(authority).map_err(|why| bad(&why))?;
        let scheme = scheme.to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        // Browsers leave the default port out of the Origin header, so a rule with it would never
        // match.
        let port = match (scheme.as_str(), port) {
            ("http", Some(80)) | ("https", Some(443)) => None,
            (_, p) => p,
        };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        if let Some(parent) = host.strip_prefix("*.") {
            check_host(parent).map_err(|why| bad(&why))?;
            return Ok(OriginRule::Subdomains {
                scheme_prefix: format!("{scheme}://"),
                suffix: format!(".{parent}{port}"),
            });
        }
        check_host(&host).map_err(|why| bad(&why))?;
        Ok(OriginRule::Exact(format!("{scheme}://{host}{port}")))
    }

    /// Whether an Origin header value is allowed by this rule.
    pub(crate) fn matches(&self, origin: &[u8]) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => origin.eq_ignore_ascii_case(o.as_bytes()),
            OriginRule::Subdomains {
                scheme_prefix,
                suffix,
            } => {
                let (p, s) = (scheme_prefix.as_bytes(), suffix.as_bytes());
                if origin.len() <= p.len() + s.len() {
                    return false;
                }
                let (head, rest) = origin.split_at(p.len());
                let (sub, tail) = rest.split_at(rest.len() - s.len());
                head.eq_ignore_ascii_case(p)
                    && tail.eq_ignore_ascii_case(s)
                    // No ':' or '/' or '@' in the subdomain part: the port must be the rule's
                    // own, and `https://evil.com/.example.com` must not pass.
                    && sub.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
                    && !sub.starts_with(b".")
            }
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| "the IPv6 address has no closing `]`".to_owned())?;
        let (host, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => return Err(format!("unexpected `{rest}` after the host")),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("`{p}` is not a port number"))?,
        ),
    };
    Ok((host, port))
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("`{v6}` is not an IPv6 address"));
    }
    if host.contains('*') {
        return Err(
            "`*` may only stand for the subdomains of a host, as in `https://*.example.com`"
                .to_owned(),
        );
    }
    if !host.is_ascii() {
        return Err(
            "write an internationalized host name in its `xn--` (punycode) form".to_owned(),
        );
    }
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        && !host.starts_with('.')
        && !host.ends_with('.')
        && !host.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a valid host name"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rule(s: &str) -> OriginRule {
        OriginRule::parse(s).unwrap()
    }

    #[test]
    fn exact_origin_matches_ignoring_case_only() {
        let r = rule("https://App.Example.com");
        assert!(r.matches(b"https://app.example.com"));
        assert!(r.matches(b"HTTPS://APP.EXAMPLE.COM"));
        assert!(!r.matches(b"http://app.example.com"));
        assert!(!r.matches(b"https://app.example.com:8443"));
        assert!(!r.matches(b"https://app.example.com.evil.com"));
    }

    #[test]
    fn default_port_is_dropped_as_browsers_do() {
        assert_eq!(
            rule("https://example.com:443"),
            OriginRule::Exact("https://example.com".into())
        );
        assert_eq!(
            rule("http://example.com:8080"),
            OriginRule::Exact("http://example.com:8080".into())
        );
    }

    #[test]
    fn subdomain_pattern_matches_subdomains_with_the_same_scheme() {
        let r = rule("https://*.example.com");
        assert!(r.matches(b"https://a.example.com"));
        assert!(r.matches(b"https://a.b.example.com"));
        assert!(!r.matches(b"https://example.com"));
        assert!(!r.matches(b"http://a.example.com"));
        assert!(!r.matches(b"https://a.example.com:8443"));
        assert!(!r.matches(b"https://aexample.com"));
        assert!(!r.matches(b"https://evil.com/.example.com"));
        assert!(!r.matches(b"https://evil.com:1@x.example.com"));
        assert!(!r.matches(b"https://.example.com"));
    }

    #[test]
    fn subdomain_pattern_with_port_requires_that_port() {
        let r = rule("http://*.example.com:8080");
        assert!(r.matches(b"http://a.example.com:8080"));
        assert!(!r.matches(b"http://a.example.com"));
        assert!(!r.matches(b"http://a.example.com:8081"));
    }

    #[test]
    fn ipv6_origin_is_accepted() {
        assert!(rule("http://[::1]:3000").matches(b"http://[::1]:3000"));
    }

    #[test]
    fn malformed_origins_are_rejected_with_a_reason() {
        for (entry, reason) in [
            ("example.com", "scheme://host"),
            ("https://example.com/", "no path"),
            ("https://example.com/app", "no path"),
            ("https://", "host is missing"),
            ("https://ex ample.com", "not a valid host name"),
            ("https://example.com:http", "not a port number"),
            ("https://example.com:99999", "not a port number"),
            ("https://a.*.example.com", "subdomains of a host"),
            ("https://*example.com", "subdomains of a host"),
            ("https://bücher.de", "punycode"),
            ("null", "sandboxed"),
            ("1https://example.com", "scheme"),
        ] {
            let err = OriginRule::parse(entry).expect_err(entry);
            assert!(err.contains(reason), "{entry}: {err}");
        }
    }
}
