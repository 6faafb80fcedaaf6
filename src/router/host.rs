//! Host matching: normalising configured hosts once at build time, and reading the request's Host
//! or `:authority` without allocating.

use std::net::Ipv6Addr;

/// Which request hosts a route applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// One host, lower-case and without a port (IPv6 in brackets: `[::1]`).
    Exact(String),
    /// Any subdomain of a domain, stored as the suffix `.example.com` for `*.example.com`.
    Wildcard(String),
}

impl HostMatch {
    /// Reads a configured host such as `api.example.com` or `*.example.com`.
    pub fn parse(host: &str) -> HostMatch {
        match host.strip_prefix('*') {
            Some(suffix) => HostMatch::Wildcard(suffix.to_ascii_lowercase()),
            None => HostMatch::Exact(host.to_ascii_lowercase()),
        }
    }

    /// Returns the canonical form used as a lookup key, or why the host can never match.
    pub(crate) fn normalized(&self) -> Result<HostMatch, String> {
        match self {
            HostMatch::Exact(host) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                if host.parse::<Ipv6Addr>().is_ok() {
                    return Ok(HostMatch::Exact(format!("[{host}]")));
                }
                check_host_chars(&host, "host")?;
                let is_bracketed_ipv6 = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok());
                if host.contains(':') && !is_bracketed_ipv6 {
                    return Err(format!(
                        "host `{host}` must not include a port; routes match any port"
                    ));
                }
                Ok(HostMatch::Exact(host))
            }
            HostMatch::Wildcard(suffix) => {
                // Accept `*.example.com`, `.example.com` and `example.com` for the same thing.
                let domain = suffix.trim_start_matches('*').trim_start_matches('.');
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                check_host_chars(&domain, "wildcard host")?;
                if domain.contains(':') {
                    return Err(format!(
                        "wildcard host `*.{domain}` must be a domain name without a port"
                    ));
                }
                Ok(HostMatch::Wildcard(format!(".{domain}")))
            }
        }
    }

    /// Shows the host as a user would write it in configuration.
    pub(crate) fn display(&self) -> String {
        match self {
            HostMatch::Exact(host) => host.clone(),
            HostMatch::Wildcard(suffix) => format!("*{suffix}"),
        }
    }
}

fn check_host_chars(host: &str, what: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '*' | '@' | '?' | '#'))
    {
        return Err(format!(
            "{what} `{host}` contains `{c}`, which no request host can"
        ));
    }
    Ok(())
}

/// Strips the port (and a trailing root dot) from a Host header or `:authority` value.
pub(crate) fn request_host(raw: &str) -> &str {
    let host = if raw.starts_with('[') {
        // `[::1]:8080` — the port, if any, follows the closing bracket.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.split_once(':') {
            // A second colon means a bare IPv6 address, which has no port to strip.
            Some((host, port)) if !port.contains(':') => host,
            _ => raw,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Whether `host` is a strict subdomain of `suffix` (which starts with `.`), ignoring ASCII case.
pub(crate) fn has_wildcard_suffix(host: &str, suffix: &str) -> bool {
    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
    host.len() > suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Longest host we lower-case on the stack; DNS names are at most 253 bytes.
const STACK_HOST: usize = 256;

/// Calls `f` with `host` in lower case, copying only when it has upper-case letters.
pub(crate) fn with_lowercase<R>(host: &str, f: impl FnOnce(&str) -> R) -> R {
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(host);
    }
    let mut buf = [0u8; STACK_HOST];
    match buf.get_mut(..host.len()) {
        Some(dst) => {
            dst.copy_from_slice(host.as_bytes());
            dst.make_ascii_lowercase();
            // ASCII lower-casing keeps UTF-8 valid, so this cannot fail; fall back rather than panic.
            match std::str::from_utf8(dst) {
                Ok(lower) => f(lower),
                Err(_) => f(&host.to_ascii_lowercase()),
            }
        }
        None => f(&host.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_host_strips_port_for_names_and_ipv6() {
        assert_eq!(request_host("example.com"), "example.com");
        assert_eq!(request_host("Example.COM:8080"), "Example.COM");
        assert_eq!(request_host("example.com."), "example.com");
        assert_eq!(request_host("example.com.:443"), "example.com");
        assert_eq!(request_host("[::1]:8080"), "[::1]");
        assert_eq!(request_host("[::1]"), "[::1]");
        assert_eq!(request_host("::1"), "::1");
        assert_eq!(request_host("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(request_host(""), "");
    }

    #[test]
    fn configured_hosts_are_normalised() {
        let exact = |h: &str| HostMatch::Exact(h.into()).normalized();
        assert_eq!(
            exact("API.Example.com."),
            Ok(HostMatch::Exact("api.example.com".into()))
        );
        assert_eq!(exact("::1"), Ok(HostMatch::Exact("[::1]".into())));
        assert_eq!(exact("[::1]"), Ok(HostMatch::Exact("[::1]".into())));
        assert!(exact("example.com:8080").unwrap_err().contains("port"));
        assert!(exact("").unwrap_err().contains("empty"));
        assert!(exact("a b").is_err());
        let wild = |h: &str| HostMatch::Wildcard(h.into()).normalized();
        for spelling in ["*.Example.com", ".example.com", "example.com"] {
            assert_eq!(
                wild(spelling),
                Ok(HostMatch::Wildcard(".example.com".into()))
            );
        }
        assert!(wild("*.").is_err());
        assert!(wild("*.a.*.com").is_err());
    }

    #[test]
    fn parse_recognises_wildcards() {
        assert_eq!(
            HostMatch::parse("*.Example.com"),
            HostMatch::Wildcard(".example.com".into())
        );
        assert_eq!(HostMatch::parse("API.x"), HostMatch::Exact("api.x".into()));
    }

    #[test]
    fn wildcard_matches_strict_subdomains_case_insensitively() {
        assert!(has_wildcard_suffix("a.example.com", ".example.com"));
        assert!(has_wildcard_suffix("A.B.EXAMPLE.com", ".example.com"));
        assert!(!has_wildcard_suffix("example.com", ".example.com"));
        assert!(!has_wildcard_suffix(".example.com", ".example.com"));
        assert!(!has_wildcard_suffix("badexample.com", ".example.com"));
    }

    #[test]
    fn lowercase_copies_only_when_needed() {
        assert_eq!(with_lowercase("Api.X", str::to_owned), "api.x");
        assert_eq!(with_lowercase("api.x", str::to_owned), "api.x");
        let long = "A".repeat(400);
        assert_eq!(with_lowercase(&long, str::to_owned), "a".repeat(400));
    }
}
