//! `[upstreams.NAME]`: targets, protocol and TLS, timeouts, balancing; the policies have rooms
//! of their own (`discovery.rs`, `health.rs`, `retry.rs`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::super::spanned::Spanned;
use http::{HeaderName, HeaderValue};

use super::super::file::{self, TargetEntry};
use super::super::model::{
    Algorithm, BalanceConfig, ClientCert, HashOn, Protocol, TargetConfig, Timeouts, UpstreamConfig,
    UpstreamTls,
};
use super::super::tls;
use super::Validator;

/// Upper bound of a target weight; keeps the round-robin schedule small.
const MAX_WEIGHT: i64 = 1000;

impl Validator<'_, '_> {
    /// Every upstream, and its index by name (routes refer to upstreams by index).
    pub(super) fn upstreams(
        &mut self,
        ups: &BTreeMap<Spanned<String>, Spanned<file::UpstreamSection>>,
    ) -> (Vec<Arc<UpstreamConfig>>, HashMap<String, usize>) {
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for (name, section) in ups {
            index.insert(name.get_ref().clone(), out.len());
            out.push(Arc::new(self.upstream(name.get_ref(), section)));
        }
        (out, index)
    }

    fn upstream(&mut self, name: &str, section: &Spanned<file::UpstreamSection>) -> UpstreamConfig {
        let u = section.get_ref();
        let targets = self.targets(name, section);
        let discovery = u.discovery.as_ref().and_then(|d| self.discovery(name, d));
        let dns_refresh = self.min_duration(
            u.dns_refresh.as_ref(),
            Duration::from_secs(30),
            "dns_refresh",
        );
        let protocol = match u.protocol.unwrap_or(file::Protocol::Http1) {
            file::Protocol::Http1 => Protocol::Http1,
            file::Protocol::H2c => Protocol::H2c,
            file::Protocol::H2 => Protocol::H2,
        };
        let tls = self.tls_towards(u.tls.as_ref(), protocol);
        let host_header = u.host_header.as_ref().and_then(|h| {
            HeaderValue::from_str(h.get_ref())
                .map_err(|_| {
                    self.c
                        .at(h.span(), "`host_header` is not a valid header value")
                })
                .ok()
        });
        let max_h2_streams = match &u.max_h2_streams {
            Some(n) if *n.get_ref() == 0 => {
                self.c.at(n.span(), "`max_h2_streams` must be at least 1");
                1
            }
            Some(n) => *n.get_ref(),
            None => 100,
        };
        let balance = self.balance(u);
        let health_check = u
            .health_check
            .as_ref()
            .map(|h| self.health_check(h, protocol));
        UpstreamConfig {
            name: Arc::from(name),
            targets,
            discovery,
            dns_refresh,
            protocol,
            tls,
            host_header,
            timeouts: Timeouts {
                connect: u.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
                read: u.read_timeout.map_or(Duration::from_secs(60), |d| d.0),
                write: u.write_timeout.map_or(Duration::from_secs(60), |d| d.0),
                idle: u.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
            },
            max_h2_streams,
            balance,
            panic_mode: u.panic_mode.unwrap_or(true),
            health_check,
            outlier: self.outlier(u.outlier_detection.as_ref()),
            retry: self.retry(u.retry.as_ref()),
            circuit_breaker: self.circuit_breaker(u.circuit_breaker.as_ref()),
        }
    }

    /// The targets written in the file; an upstream needs them or `discovery`, not both.
    fn targets(
        &mut self,
        name: &str,
        section: &Spanned<file::UpstreamSection>,
    ) -> Vec<TargetConfig> {
        let u = section.get_ref();
        match (&u.targets, &u.discovery) {
            (None, None) => self.c.at(
                section.span(),
                format!("upstream `{name}` needs `targets` or `discovery`"),
            ),
            (Some(t), _) if t.get_ref().is_empty() => self
                .c
                .at(t.span(), format!("upstream `{name}` has no targets")),
            (Some(_), Some(d)) => self.c.at(
                d.span(),
                format!("upstream `{name}`: use either `targets` or `discovery`, not both"),
            ),
            _ => {}
        }
        u.targets
            .iter()
            .flat_map(|t| t.get_ref())
            .filter_map(|t| self.target(t))
            .collect()
    }

    /// TLS towards the targets: as configured, or verified defaults for `h2`.
    fn tls_towards(
        &mut self,
        t: Option<&Spanned<file::UpstreamTls>>,
        protocol: Protocol,
    ) -> Option<UpstreamTls> {
        match (t, protocol) {
            (Some(t), Protocol::H2c) => {
                self.c.at(
                    t.span(),
                    "`tls` cannot be used with protocol \"h2c\" (h2c is plaintext; use \"h2\")",
                );
                None
            }
            (Some(t), _) => Some(self.upstream_tls(t.get_ref())),
            (None, Protocol::H2) => Some(UpstreamTls {
                sni: None,
                ca_certs: None,
                ca: None,
                verify: true,
                client_cert: None,
            }),
            (None, _) => None,
        }
    }

    /// `balance` and `hash_on`, which only `ring_hash` reads.
    fn balance(&mut self, u: &file::UpstreamSection) -> BalanceConfig {
        let algorithm = match u.balance.unwrap_or(file::Balance::RoundRobin) {
            file::Balance::RoundRobin => Algorithm::RoundRobin,
            file::Balance::Random => Algorithm::Random,
            file::Balance::LeastRequest => Algorithm::LeastRequest,
            file::Balance::RingHash => Algorithm::RingHash,
        };
        let hash_on = match (&u.hash_on, algorithm) {
            (Some(h), Algorithm::RingHash) => self.hash_on(h),
            (Some(h), _) => {
                self.c.at(
                    h.span(),
                    "`hash_on` only applies to `balance = \"ring_hash\"`",
                );
                HashOn::ClientIp
            }
            (None, _) => HashOn::ClientIp,
        };
        BalanceConfig { algorithm, hash_on }
    }

    fn hash_on(&mut self, h: &Spanned<String>) -> HashOn {
        let v = h.get_ref();
        let parsed = match v.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                .ok()
                .map(HashOn::Header),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Some(HashOn::Cookie(name.trim().to_string()))
            }
            None if v == "client_ip" => Some(HashOn::ClientIp),
            None if v == "path" => Some(HashOn::Path),
            _ => None,
        };
        parsed.unwrap_or_else(|| {
            self.c.at(
                h.span(),
                format!("invalid `hash_on` `{v}`: use \"header:NAME\", \"cookie:NAME\", \"client_ip\" or \"path\""),
            );
            HashOn::ClientIp
        })
    }

    fn target(&mut self, t: &Spanned<TargetEntry>) -> Option<TargetConfig> {
        let (address, weight) = match t.get_ref() {
            TargetEntry::Address(a) => (a.as_str(), 1),
            TargetEntry::Weighted(w) => (w.address.as_str(), w.weight.unwrap_or(1)),
        };
        if !(1..=MAX_WEIGHT).contains(&weight) {
            self.c.at(
                t.span(),
                format!(
                    "target `{address}`: weight must be between 1 and {MAX_WEIGHT}, got {weight}"
                ),
            );
            return None;
        }
        if let Ok(sa) = address.parse::<SocketAddr>() {
            return Some(TargetConfig {
                label: address.to_string(),
                address: Some(sa),
                hostname: None,
                weight: weight as u32,
            });
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            self.c.at(
                t.span(),
                format!("target `{address}` must be HOST:PORT, e.g. \"127.0.0.1:3000\""),
            );
            return None;
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 && !host.is_empty() => p,
            _ => {
                self.c.at(
                    t.span(),
                    format!("target `{address}` must be HOST:PORT with a port from 1 to 65535"),
                );
                return None;
            }
        };
        let valid_name = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !valid_name {
            self.c.at(
                t.span(),
                format!("target `{address}`: `{host}` is neither an IP address nor a host name"),
            );
            return None;
        }
        // Names are resolved at runtime (and again every `dns_refresh`), so a name that doesn't
        // resolve yet is reported in the log and retried rather than refusing the whole config.
        Some(TargetConfig {
            label: address.to_string(),
            address: None,
            hostname: Some((host.to_string(), port)),
            weight: weight as u32,
        })
    }

    fn upstream_tls(&mut self, t: &file::UpstreamTls) -> UpstreamTls {
        let ca_certs = t.ca_file.as_ref().and_then(|f| {
            let path = self.existing_file(f, "CA")?;
            match tls::read_pem_certs(&path) {
                Ok(certs) => Some(certs),
                Err(m) => {
                    self.c.at(f.span(), m);
                    None
                }
            }
        });
        // The DER was validated with x509-parser when read, so parse_x509 cannot panic.
        let ca = ca_certs.as_ref().map(|cas| {
            cas.iter()
                .map(|der| {
                    pingora_core::utils::tls::WrappedX509::new(
                        der.clone(),
                        pingora_core::utils::tls::parse_x509,
                    )
                })
                .collect()
        });
        UpstreamTls {
            sni: t.sni.clone(),
            ca_certs,
            ca,
            verify: t.verify.unwrap_or(true),
            client_cert: self.client_cert(t),
        }
    }

    /// `client_cert_file` and `client_key_file`: both or neither, read and checked to belong
    /// together.
    fn client_cert(&mut self, t: &file::UpstreamTls) -> Option<ClientCert> {
        let (cert, key) = match (&t.client_cert_file, &t.client_key_file) {
            (None, None) => return None,
            (Some(c), Some(k)) => (c, k),
            (Some(c), None) => {
                self.c.at(
                    c.span(),
                    "`client_cert_file` needs `client_key_file` (the certificate's private key) too",
                );
                return None;
            }
            (None, Some(k)) => {
                self.c.at(
                    k.span(),
                    "`client_key_file` needs `client_cert_file` (the certificate it belongs to) too",
                );
                return None;
            }
        };
        let cert_file = self.existing_file(cert, "client certificate");
        let key_file = self.existing_file(key, "client private key");
        let (cert_file, key_file) = (cert_file?, key_file?);
        match tls::load_client_cert(&cert_file, &key_file) {
            Ok((certified_key, pingora)) => Some(ClientCert {
                cert_file,
                key_file,
                certified_key,
                pingora,
            }),
            Err(tls::KeyError::Cert(m)) => {
                self.c.at(cert.span(), m);
                None
            }
            Err(tls::KeyError::Key(m)) => {
                self.c.at(key.span(), m);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::model::{Algorithm, HashOn, Protocol};
    use super::super::testing::{errors, valid};

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_its_certificate() {
        assert_eq!(
            errors(
                "[upstreams.a]\ntargets = [\"127.0.0.1:3000\"]\n\
                 tls = { client_cert_file = \"c.pem\" }\n\
                 [upstreams.b]\ntargets = [\"127.0.0.1:3000\"]\n\
                 tls = { client_key_file = \"c.key\" }\n"
            ),
            [
                "gateway.toml:3:28: `client_cert_file` needs `client_key_file` (the certificate's private key) too",
                "gateway.toml:6:27: `client_key_file` needs `client_cert_file` (the certificate it belongs to) too",
            ]
        );
    }

    #[test]
    fn a_client_certificate_is_loaded_with_its_key_for_every_tls_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["gw".to_string()]).expect("cert");
        std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).expect("write");
        std::fs::write(dir.path().join("c.key"), cert.signing_key.serialize_pem()).expect("write");
        let built = valid(&format!(
            "[upstreams.a]\ntargets = [\"127.0.0.1:3000\"]\n\
             tls = {{ client_cert_file = \"{0}/c.pem\", client_key_file = \"{0}/c.key\" }}\n",
            dir.path().display()
        ));
        let tls = built.config.upstreams[0].tls.as_ref().expect("tls");
        let client = tls.client_cert.as_ref().expect("client certificate");
        assert_eq!(
            client.certified_key.cert[0].as_ref(),
            cert.cert.der().as_ref()
        );
        assert_eq!(
            client.pingora.leaf().borrow_raw_cert().as_slice(),
            cert.cert.der().as_ref()
        );
        assert_eq!(
            built.config.certificate_files().collect::<Vec<_>>(),
            [dir.path().join("c.pem"), dir.path().join("c.key")]
        );
    }

    #[test]
    fn target_without_port_is_reported_at_the_target() {
        assert_eq!(
            errors("[upstreams.u]\ntargets = [\"127.0.0.1:3000\", \"127.0.0.1\"]\n"),
            ["gateway.toml:2:30: target `127.0.0.1` must be HOST:PORT, e.g. \"127.0.0.1:3000\""]
        );
    }

    #[test]
    fn targets_that_are_neither_addresses_nor_names_are_reported() {
        assert_eq!(
            errors("[upstreams.u]\ntargets = [\"users:0\", \"us ers:80\", \":80\"]\n"),
            [
                "gateway.toml:2:12: target `users:0` must be HOST:PORT with a port from 1 to 65535",
                "gateway.toml:2:23: target `us ers:80`: `us ers` is neither an IP address nor a host name",
                "gateway.toml:2:36: target `:80` must be HOST:PORT with a port from 1 to 65535",
            ]
        );
    }

    #[test]
    fn target_weights_out_of_range_are_reported_at_each_target() {
        assert_eq!(
            errors(
                "[upstreams.u]\ntargets = [\n\
                 \x20 { address = \"127.0.0.1:3000\", weight = 0 },\n\
                 \x20 { address = \"127.0.0.1:3001\", weight = 1001 },\n\
                 \x20 { address = \"127.0.0.1:3002\", weight = -3 },\n\
                 \x20 { address = \"127.0.0.1:3003\", weight = 1000 },\n]\n"
            ),
            [
                "gateway.toml:3:3: target `127.0.0.1:3000`: weight must be between 1 and 1000, got 0",
                "gateway.toml:4:3: target `127.0.0.1:3001`: weight must be between 1 and 1000, got 1001",
                "gateway.toml:5:3: target `127.0.0.1:3002`: weight must be between 1 and 1000, got -3",
            ]
        );
    }

    #[test]
    fn unknown_key_in_a_weighted_target_is_named() {
        assert_eq!(
            errors("[upstreams.u]\ntargets = [{ address = \"127.0.0.1:3000\", wieght = 2 }]\n"),
            ["gateway.toml:2:42: unknown field `wieght`, expected `address` or `weight`"]
        );
    }

    #[test]
    fn targets_given_as_a_string_instead_of_a_list_is_a_type_error() {
        assert_eq!(
            errors("[upstreams.u]\ntargets = \"127.0.0.1:3000\"\n"),
            ["gateway.toml:2:11: invalid type: string \"127.0.0.1:3000\", expected a sequence"]
        );
    }

    #[test]
    fn upstream_without_targets_or_with_both_sources_is_reported() {
        assert_eq!(
            errors(
                "[upstreams.a]\nprotocol = \"http1\"\n\
                 [upstreams.empty]\ntargets = []\n"
            ),
            [
                "gateway.toml:1:1: upstream `a` needs `targets` or `discovery`",
                "gateway.toml:4:11: upstream `empty` has no targets",
            ]
        );
    }

    #[test]
    fn bad_duration_is_reported_at_the_value() {
        assert_eq!(
            errors("[upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\nconnect_timeout = \"5 parsecs\"\n"),
            ["gateway.toml:3:19: invalid duration `5 parsecs`: unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write e.g. \"250ms\", \"5s\", \"1m\")"]
        );
    }

    #[test]
    fn tls_on_an_h2c_upstream_is_reported() {
        assert_eq!(
            errors(
                "[upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\nprotocol = \"h2c\"\ntls = { verify = false }\n"
            ),
            ["gateway.toml:4:7: `tls` cannot be used with protocol \"h2c\" (h2c is plaintext; use \"h2\")"]
        );
    }

    #[test]
    fn a_missing_ca_file_is_reported() {
        assert_eq!(
            errors("[upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\ntls = { ca_file = \"no-ca.pem\" }\n"),
            ["gateway.toml:3:19: CA file `no-ca.pem` does not exist"]
        );
    }

    #[test]
    fn unknown_balancing_algorithm_is_reported_at_the_value() {
        assert_eq!(
            errors("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nbalance = \"fastest\"\n"),
            ["gateway.toml:3:11: unknown variant `fastest`, expected one of `round_robin`, `random`, `least_request`, `ring_hash`"]
        );
    }

    #[test]
    fn hash_on_without_ring_hash_and_bad_hash_keys_are_reported() {
        assert_eq!(
            errors(
                "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nhash_on = \"path\"\n\
                 [upstreams.b]\ntargets = [\"127.0.0.1:1\"]\nbalance = \"ring_hash\"\nhash_on = \"moon_phase\"\n"
            ),
            [
                "gateway.toml:3:11: `hash_on` only applies to `balance = \"ring_hash\"`",
                "gateway.toml:7:11: invalid `hash_on` `moon_phase`: use \"header:NAME\", \"cookie:NAME\", \"client_ip\" or \"path\"",
            ]
        );
    }

    #[test]
    fn bad_host_header_and_zero_h2_streams_are_reported() {
        assert_eq!(
            errors(
                "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nhost_header = \"a\\u0000b\"\nmax_h2_streams = 0\n"
            ),
            [
                "gateway.toml:3:15: `host_header` is not a valid header value",
                "gateway.toml:4:18: `max_h2_streams` must be at least 1",
            ]
        );
    }

    #[test]
    fn an_unresolvable_host_name_target_is_not_a_config_error() {
        // It is reported in the log at startup and resolved again in the background.
        let built = valid("[upstreams.a]\ntargets = [\"no-such-host.invalid:8080\"]\n");
        let target = &built.config.upstreams[0].targets[0];
        assert_eq!(target.address, None);
        assert_eq!(
            target.hostname,
            Some(("no-such-host.invalid".to_string(), 8080))
        );
    }

    #[test]
    fn defaults_and_choices_reach_the_model() {
        let built = valid(
            "[upstreams.a]\ntargets = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = 3 }]\n\
             [upstreams.b]\ntargets = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\nbalance = \"ring_hash\"\n\
             hash_on = \"header:X-User\"\nread_timeout = \"2s\"\n",
        );
        let [a, b] = &built.config.upstreams[..] else {
            panic!("two upstreams");
        };
        assert_eq!(a.protocol, Protocol::Http1);
        assert!(a.tls.is_none());
        assert_eq!(a.balance.algorithm, Algorithm::RoundRobin);
        assert_eq!(
            a.targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(a.timeouts.connect, Duration::from_secs(5));
        assert_eq!(a.max_h2_streams, 100);
        assert!(a.panic_mode);
        assert_eq!(b.protocol, Protocol::H2);
        assert!(b.tls.as_ref().is_some_and(|t| t.verify && t.sni.is_none()));
        assert_eq!(b.balance.algorithm, Algorithm::RingHash);
        assert_eq!(
            b.balance.hash_on,
            HashOn::Header(http::HeaderName::from_static("x-user"))
        );
        assert_eq!(b.timeouts.read, Duration::from_secs(2));
    }
}
