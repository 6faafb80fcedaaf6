//! `discovery = { type = ... }` of an upstream: DNS (A/AAAA or SRV) and Consul.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::super::spanned::Spanned;
use tollgate_plugin_api::SecretUrl;

use super::super::file::{self, DiscoveryKind};
use super::super::model::{ConsulQuery, DiscoveryConfig, DiscoverySource, Nameservers};
use super::Validator;

/// The Consul agent asked when `address` is left out.
const DEFAULT_CONSUL: &str = "http://127.0.0.1:8500";

impl Validator<'_, '_> {
    /// The discovery of upstream `upstream`, or `None` when it is incomplete (and reported).
    pub(super) fn discovery(
        &mut self,
        upstream: &str,
        d: &Spanned<file::DiscoverySection>,
    ) -> Option<DiscoveryConfig> {
        let s = d.get_ref();
        let interval = self.min_duration(s.interval.as_ref(), Duration::from_secs(10), "interval");
        let mut missing = |key: &str| {
            let kind = match s.kind {
                DiscoveryKind::Dns => "dns",
                DiscoveryKind::DnsSrv => "dns_srv",
                DiscoveryKind::Consul => "consul",
            };
            self.c.at(
                d.span(),
                format!("upstream `{upstream}`: `{kind}` discovery needs `{key}`"),
            );
        };
        let source = match s.kind {
            DiscoveryKind::Dns => {
                let (Some(name), Some(port)) = (&s.name, &s.port) else {
                    missing("name` and `port");
                    return None;
                };
                DiscoverySource::Dns {
                    name: name.get_ref().clone(),
                    port: *port.get_ref(),
                    nameservers: self.nameservers(s.nameservers.as_deref())?,
                }
            }
            DiscoveryKind::DnsSrv => {
                let Some(name) = &s.name else {
                    missing("name");
                    return None;
                };
                DiscoverySource::DnsSrv {
                    name: name.get_ref().clone(),
                    nameservers: self.nameservers(s.nameservers.as_deref())?,
                }
            }
            DiscoveryKind::Consul => {
                let Some(service) = &s.service else {
                    missing("service");
                    return None;
                };
                self.consul(d, service)?
            }
        };
        Some(DiscoveryConfig { source, interval })
    }

    /// The system's resolver, or the name servers listed (all of them valid).
    fn nameservers(&mut self, list: Option<&[Spanned<String>]>) -> Option<Nameservers> {
        let Some(list) = list else {
            return Some(Nameservers::System);
        };
        let mut out = Vec::new();
        for ns in list {
            let text = ns.get_ref();
            let parsed = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(a) => out.push(a),
                Err(_) => self.c.at(
                    ns.span(),
                    format!("invalid name server `{text}`: expected IP or IP:PORT"),
                ),
            }
        }
        (out.len() == list.len()).then_some(Nameservers::Explicit(out))
    }

    /// A Consul query; the agent's address must be plain `http://HOST:PORT`, without
    /// credentials.
    fn consul(
        &mut self,
        d: &Spanned<file::DiscoverySection>,
        service: &Spanned<String>,
    ) -> Option<DiscoverySource> {
        let s = d.get_ref();
        let default = SecretUrl::new(DEFAULT_CONSUL);
        let address = s.address.as_ref().map_or(&default, |a| a.get_ref());
        let span = s.address.as_ref().map_or(d.span(), |a| a.span());
        let shown = address.redacted();
        let base = match address.expose().parse::<http::Uri>() {
            // Credentials in the URL would not be sent, only logged with the address.
            Ok(_) if address.has_user_info() => {
                self.c.at(
                    span,
                    format!(
                        "Consul address `{shown}` carries credentials, which are not \
                         sent; give the ACL token as `token`"
                    ),
                );
                return None;
            }
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => u,
            _ => {
                self.c.at(
                    span,
                    format!("invalid Consul address `{shown}`: expected http://HOST:PORT"),
                );
                return None;
            }
        };
        let wait = s
            .wait
            .as_ref()
            .map_or(Duration::from_secs(30), |w| w.get_ref().0);
        Some(DiscoverySource::Consul {
            query: ConsulQuery {
                base,
                service: service.get_ref().clone(),
                datacenter: s.datacenter.clone(),
                tag: s.tag.clone(),
                token: s.token.clone(),
            },
            wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::model::{DiscoverySource, Nameservers};
    use super::super::testing::{errors, valid};

    #[test]
    fn missing_keys_and_targets_beside_discovery_are_reported() {
        assert_eq!(
            errors(
                "[upstreams.a]\ndiscovery = { type = \"dns\", name = \"users.internal\" }\n\
                 [upstreams.b]\ntargets = [\"127.0.0.1:1\"]\n\
                 discovery = { type = \"consul\", service = \"b\", address = \"consul:8500\" }\n\
                 [upstreams.c]\ndiscovery = { type = \"dns_srv\" }\n\
                 [upstreams.d]\ndiscovery = { type = \"consul\" }\n"
            ),
            [
                "gateway.toml:2:13: upstream `a`: `dns` discovery needs `name` and `port`",
                "gateway.toml:5:13: upstream `b`: use either `targets` or `discovery`, not both",
                "gateway.toml:5:57: invalid Consul address `consul:8500`: expected http://HOST:PORT",
                "gateway.toml:7:13: upstream `c`: `dns_srv` discovery needs `name`",
                "gateway.toml:9:13: upstream `d`: `consul` discovery needs `service`",
            ]
        );
    }

    #[test]
    fn consul_address_with_credentials_is_refused_without_quoting_them() {
        let errors = errors(
            "[upstreams.a]\n\
             discovery = { type = \"consul\", service = \"a\", address = \"http://ops:s3cret@consul:8500\" }\n",
        );
        assert_eq!(
            errors,
            ["gateway.toml:2:57: Consul address `http://ops:<redacted>@consul:8500` carries credentials, which are not sent; give the ACL token as `token`"]
        );
    }

    #[test]
    fn bad_name_servers_and_short_intervals_are_reported() {
        assert_eq!(
            errors(
                "[upstreams.a]\ndiscovery = { type = \"dns\", name = \"a.internal\", port = 80, \
                 nameservers = [\"10.0.0.53\", \"dns.internal\"], interval = \"10ms\" }\n"
            ),
            [
                "gateway.toml:2:89: invalid name server `dns.internal`: expected IP or IP:PORT",
                "gateway.toml:2:117: `interval` must be at least 100ms (checking more often only adds load)",
            ]
        );
    }

    #[test]
    fn discovery_reaches_the_model_with_defaults() {
        let built = valid(
            "[upstreams.a]\ndiscovery = { type = \"dns\", name = \"a.internal\", port = 80, \
             nameservers = [\"10.0.0.53\", \"10.0.0.54:5353\"] }\n\
             [upstreams.b]\ndiscovery = { type = \"consul\", service = \"b\", tag = \"v2\" }\n",
        );
        let [a, b] = &built.config.upstreams[..] else {
            panic!("two upstreams");
        };
        let a = a.discovery.as_ref().expect("discovery");
        assert_eq!(a.interval, Duration::from_secs(10));
        match &a.source {
            DiscoverySource::Dns {
                name,
                port,
                nameservers: Nameservers::Explicit(servers),
            } => {
                assert_eq!((name.as_str(), *port), ("a.internal", 80));
                let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
                assert_eq!(servers, ["10.0.0.53:53", "10.0.0.54:5353"]);
            }
            other => panic!("{other:?}"),
        }
        match &b.discovery.as_ref().expect("discovery").source {
            DiscoverySource::Consul { query, wait } => {
                assert_eq!(query.base.to_string(), "http://127.0.0.1:8500/");
                assert_eq!(query.service, "b");
                assert_eq!(query.tag.as_deref(), Some("v2"));
                assert_eq!(*wait, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
    }
}
