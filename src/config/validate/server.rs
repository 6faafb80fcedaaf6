//! `[server]`: process-wide settings, and the client limits every listener starts from.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::super::spanned::Spanned;
use ipnet::IpNet;

use super::super::file;
use super::super::model::{ClientLimits, EscapedSlashes, ServerSettings};
use super::super::values;
use super::Validator;

/// The client-limit keys of one `[server]` or `[[listeners]]` table.
pub(super) struct ClientLimitKeys<'a> {
    pub(super) request_header_timeout: Option<&'a Spanned<values::Duration>>,
    pub(super) client_body_timeout: Option<&'a Spanned<values::Duration>>,
    pub(super) request_timeout: Option<&'a Spanned<values::Duration>>,
    pub(super) escaped_slashes: Option<file::EscapedSlashes>,
}

impl Validator<'_, '_> {
    /// `[server]` with defaults filled in.
    pub(super) fn server(&mut self, s: &file::ServerSection) -> ServerSettings {
        let threads = match &s.threads {
            Some(t) if *t.get_ref() == 0 => {
                self.c.at(t.span(), "`threads` must be at least 1");
                1
            }
            Some(t) => *t.get_ref(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mut trusted_proxies = Vec::new();
        for p in &s.trusted_proxies {
            match parse_cidr(p.get_ref()) {
                Ok(net) => trusted_proxies.push(net),
                Err(m) => self.c.at(p.span(), m),
            }
        }
        let max_request_header_bytes = self.positive_size(
            s.max_request_header_bytes.as_ref(),
            32 * 1024,
            "max_request_header_bytes",
        );
        let max_uri_bytes = self.positive_size(s.max_uri_bytes.as_ref(), 8 * 1024, "max_uri_bytes");
        ServerSettings {
            threads,
            trusted_proxies,
            max_request_header_bytes,
            max_uri_bytes,
            keepalive_pool_size: s.keepalive_pool_size.unwrap_or(128),
            graceful_shutdown_timeout: s
                .graceful_shutdown_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            watch_config: s.watch_config.unwrap_or(false),
            upgrade_sock: PathBuf::from(
                s.upgrade_sock
                    .clone()
                    .unwrap_or_else(|| "/tmp/tollgate_upgrade.sock".into()),
            ),
            client: self.client_limits(
                ClientLimits::default(),
                &ClientLimitKeys {
                    request_header_timeout: s.request_header_timeout.as_ref(),
                    client_body_timeout: s.client_body_timeout.as_ref(),
                    request_timeout: s.request_timeout.as_ref(),
                    escaped_slashes: s.escaped_slashes,
                },
            ),
        }
    }

    /// `base` with the keys given in a `[server]` or `[[listeners]]` table applied.
    pub(super) fn client_limits(
        &mut self,
        base: ClientLimits,
        keys: &ClientLimitKeys<'_>,
    ) -> ClientLimits {
        let mut positive = |v: Option<&Spanned<values::Duration>>, key: &str| {
            let v = v?;
            if v.get_ref().0.is_zero() {
                let instead = if key == "request_timeout" {
                    "leave it out to have none"
                } else {
                    "leave it out for the default"
                };
                self.c.at(
                    v.span(),
                    format!("`{key}` must be longer than 0s ({instead})"),
                );
                return None;
            }
            Some(v.get_ref().0)
        };
        ClientLimits {
            request_header_timeout: positive(keys.request_header_timeout, "request_header_timeout")
                .unwrap_or(base.request_header_timeout),
            client_body_timeout: positive(keys.client_body_timeout, "client_body_timeout")
                .unwrap_or(base.client_body_timeout),
            request_timeout: positive(keys.request_timeout, "request_timeout")
                .or(base.request_timeout),
            escaped_slashes: keys
                .escaped_slashes
                .map_or(base.escaped_slashes, escaped_slashes),
        }
    }

    fn positive_size(
        &mut self,
        v: Option<&Spanned<values::ByteSize>>,
        default: usize,
        key: &str,
    ) -> usize {
        match v {
            None => default,
            Some(v) => {
                let n = v.get_ref().as_u64();
                if n == 0 {
                    self.c
                        .at(v.span(), format!("`{key}` must be greater than 0"));
                }
                usize::try_from(n).unwrap_or(usize::MAX)
            }
        }
    }
}

/// The model's reading of `escaped_slashes`.
fn escaped_slashes(e: file::EscapedSlashes) -> EscapedSlashes {
    match e {
        file::EscapedSlashes::Reject => EscapedSlashes::Reject,
        file::EscapedSlashes::Decode => EscapedSlashes::Decode,
        file::EscapedSlashes::Keep => EscapedSlashes::Keep,
    }
}

/// A CIDR block, or one address as a block of one.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("invalid CIDR or IP address `{s}` (write e.g. \"10.0.0.0/8\" or \"192.168.1.7\")")
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::model::EscapedSlashes;
    use super::super::testing::{errors, valid};

    #[test]
    fn zero_threads_is_reported_at_the_value() {
        assert_eq!(
            errors("[server]\nthreads = 0\n"),
            ["gateway.toml:2:11: `threads` must be at least 1"]
        );
    }

    #[test]
    fn bad_cidr_in_trusted_proxies_is_reported_at_the_entry() {
        assert_eq!(
            errors("[server]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/33\"]\n"),
            ["gateway.toml:2:36: invalid CIDR or IP address `10.0.0.0/33` (write e.g. \"10.0.0.0/8\" or \"192.168.1.7\")"]
        );
    }

    #[test]
    fn trusted_proxies_are_blocks_and_single_addresses() {
        let built = valid(
            "[server]\ntrusted_proxies = [\"10.1.2.3/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n",
        );
        let nets: Vec<String> = built
            .config
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // `é` is two bytes; the second entry starts at character 25 (byte 26).
        assert_eq!(
            errors("[server]\ntrusted_proxies = [\"é\", \"x\"]\n"),
            [
                "gateway.toml:2:20: invalid CIDR or IP address `é` (write e.g. \"10.0.0.0/8\" or \"192.168.1.7\")",
                "gateway.toml:2:25: invalid CIDR or IP address `x` (write e.g. \"10.0.0.0/8\" or \"192.168.1.7\")",
            ]
        );
    }

    #[test]
    fn crlf_line_endings_keep_lines_and_columns() {
        assert_eq!(
            errors("[log]\r\nlevel = \"info\"\r\n\r\n[server]\r\nthreads = 0\r\n"),
            ["gateway.toml:5:11: `threads` must be at least 1"]
        );
    }

    #[test]
    fn zero_size_limits_are_reported() {
        assert_eq!(
            errors("[server]\nmax_request_header_bytes = 0\nmax_uri_bytes = \"0KiB\"\n"),
            [
                "gateway.toml:2:28: `max_request_header_bytes` must be greater than 0",
                "gateway.toml:3:17: `max_uri_bytes` must be greater than 0",
            ]
        );
    }

    #[test]
    fn zero_client_timeouts_say_what_to_do_instead() {
        assert_eq!(
            errors(
                "[server]\nrequest_header_timeout = \"0s\"\nrequest_timeout = \"0s\"\n\
                 [[listeners]]\naddress = \"127.0.0.1:8080\"\nclient_body_timeout = \"0ms\"\n"
            ),
            [
                "gateway.toml:2:26: `request_header_timeout` must be longer than 0s (leave it out for the default)",
                "gateway.toml:3:19: `request_timeout` must be longer than 0s (leave it out to have none)",
                "gateway.toml:6:23: `client_body_timeout` must be longer than 0s (leave it out for the default)",
            ]
        );
    }

    #[test]
    fn defaults_apply_and_listeners_override_the_server_limits() {
        let built = valid(
            "[server]\nclient_body_timeout = \"5s\"\nescaped_slashes = \"decode\"\n\
             [[listeners]]\naddress = \"127.0.0.1:8080\"\n\
             [[listeners]]\naddress = \"127.0.0.1:8081\"\nrequest_timeout = \"1m\"\nescaped_slashes = \"keep\"\n",
        );
        let server = &built.config.server;
        assert_eq!(server.max_request_header_bytes, 32 * 1024);
        assert_eq!(server.max_uri_bytes, 8 * 1024);
        assert_eq!(server.keepalive_pool_size, 128);
        assert_eq!(server.graceful_shutdown_timeout, Duration::from_secs(30));
        assert!(!server.watch_config);
        let first = built.config.listeners[0].client;
        assert_eq!(first.request_header_timeout, Duration::from_secs(10));
        assert_eq!(first.client_body_timeout, Duration::from_secs(5));
        assert_eq!(first.request_timeout, None);
        assert_eq!(first.escaped_slashes, EscapedSlashes::Decode);
        let second = built.config.listeners[1].client;
        assert_eq!(second.client_body_timeout, Duration::from_secs(5));
        assert_eq!(second.request_timeout, Some(Duration::from_secs(60)));
        assert_eq!(second.escaped_slashes, EscapedSlashes::Keep);
    }

    #[test]
    fn unknown_key_in_server_is_reported_at_the_key() {
        assert_eq!(
            errors("[server]\n\"x\\u0085y\" = 1\n"),
            ["gateway.toml:2:1: unknown field `x\\u{85}y`, expected one of `threads`, `trusted_proxies`, `max_request_header_bytes`, `max_uri_bytes`, `keepalive_pool_size`, `graceful_shutdown_timeout`, `watch_config`, `upgrade_sock`, `request_header_timeout`, `client_body_timeout`, `request_timeout`, `escaped_slashes`"]
        );
    }
}
