//! DNS discovery: A/AAAA and SRV through a hickory resolver that keeps no cache.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as NoAnswer, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use tokio::task::JoinSet;

use super::{Endpoint, Nameservers};

/// Why a resolver could not be built or a name could not be resolved; each names the name.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A resolver timeout of zero.
    #[error("DNS resolver: the timeout must be greater than zero")]
    ZeroTimeout,
    /// `/etc/resolv.conf` could not be read.
    #[error("DNS resolver: cannot read the system configuration (/etc/resolv.conf): {0}")]
    SystemConfig(Box<NetError>),
    /// An explicit list of no name servers.
    #[error("DNS resolver: the list of name servers is empty")]
    NoNameServers,
    /// hickory refused the resolver's settings.
    #[error("DNS resolver: cannot be built: {0}")]
    Build(Box<NetError>),
    /// The lookup as a whole took longer than the resolver's timeout.
    #[error("DNS {kind} lookup of `{name}`: no answer within {timeout:?} (timed out)")]
    TimedOut {
        /// `A/AAAA` or `SRV`.
        kind: &'static str,
        /// The name looked up.
        name: String,
        /// The resolver's timeout.
        timeout: Duration,
    },
    /// NXDOMAIN.
    #[error("DNS {kind} lookup of `{name}`: the name does not exist (NXDOMAIN)")]
    NoSuchName {
        /// `A/AAAA` or `SRV`.
        kind: &'static str,
        /// The name looked up.
        name: String,
    },
    /// The name exists without records of the kind asked.
    #[error("DNS {kind} lookup of `{name}`: the name has no {kind} records")]
    NoRecords {
        /// `A/AAAA` or `SRV`.
        kind: &'static str,
        /// The name looked up.
        name: String,
    },
    /// No name server answered a query.
    #[error("DNS {kind} lookup of `{name}`: the name servers did not answer (timed out)")]
    NoAnswer {
        /// `A/AAAA` or `SRV`.
        kind: &'static str,
        /// The name looked up.
        name: String,
    },
    /// Any other failure of the lookup.
    #[error("DNS {kind} lookup of `{name}` failed: {error}")]
    Failed {
        /// `A/AAAA` or `SRV`.
        kind: &'static str,
        /// The name looked up.
        name: String,
        /// hickory's error.
        error: Box<NetError>,
    },
    /// An answer without a single address.
    #[error("DNS A/AAAA lookup of `{0}`: no addresses")]
    NoAddresses(String),
    /// An SRV answer without SRV records.
    #[error("DNS SRV lookup of `{0}`: no SRV records")]
    NoSrvRecords(String),
    /// Every SRV record of the lowest priority has the target `.`.
    #[error(
        "DNS SRV lookup of `{0}`: the SRV records say the service is not available (target `.`)"
    )]
    ServiceNotAvailable(String),
    /// No SRV target resolved; why each did not.
    #[error("DNS SRV lookup of `{name}`: no target resolved to an address ({})", join(.failures))]
    NoTargetResolved {
        /// The SRV name.
        name: String,
        /// Why each target failed.
        failures: Vec<DnsError>,
    },
    /// The task looking up an SRV target ended without an answer.
    #[error("a target lookup task failed")]
    LookupTask,
}

/// `a; b; c` for a message.
fn join(errors: &[DnsError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A DNS resolver built once per upstream.
///
/// It keeps no cache: discovery re-resolves on its own interval and must see a change on the
/// very next round, whatever TTL the zone publishes. The interval already rate-limits queries
/// (one per upstream per interval), so a cache would only add staleness.
pub struct DnsResolver {
    resolver: TokioResolver,
    timeout: Duration,
}

impl fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolver")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// Builds a resolver; `timeout` bounds each `resolve_*` call as a whole (all its queries).
    pub fn new(ns: &Nameservers, timeout: Duration) -> Result<Self, DnsError> {
        if timeout.is_zero() {
            return Err(DnsError::ZeroTimeout);
        }
        let mut builder = match ns {
            Nameservers::System => {
                TokioResolver::builder_tokio().map_err(|e| DnsError::SystemConfig(Box::new(e)))?
            }
            Nameservers::Explicit(addrs) => {
                if addrs.is_empty() {
                    return Err(DnsError::NoNameServers);
                }
                let servers = addrs.iter().map(|a| name_server(*a)).collect();
                let mut builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    TokioRuntimeProvider::default(),
                );
                // Explicit servers are the source of truth; /etc/hosts must not shadow them.
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                builder
            }
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // No caching (see the type's doc). Zero capacity is the switch; capping TTLs at zero
        // guards it, since a size-bounded cache may evict lazily (at housekeeping) rather than
        // refuse an insert, and an entry that slips in is then already expired. The minimums
        // are cleared because clamping with a minimum above the maximum would panic.
        opts.cache_size = 0;
        opts.positive_min_ttl = None;
        opts.negative_min_ttl = None;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        let resolver = builder.build().map_err(|e| DnsError::Build(Box::new(e)))?;
        Ok(Self { resolver, timeout })
    }

    /// A/AAAA of `host`, each with `port` and weight 1 (hostname = Some(host)); sorted, deduped.
    /// Err when the name doesn't resolve (NXDOMAIN / no records / timeout), naming the host.
    pub async fn resolve_a(&self, host: &str, port: u16) -> Result<Vec<Endpoint>, DnsError> {
        let lookup = tokio::time::timeout(self.timeout, self.resolver.lookup_ip(host))
            .await
            .map_err(|_| timed_out("A/AAAA", host, self.timeout))?
            .map_err(|e| lookup_failed("A/AAAA", host, e))?;
        let mut endpoints: Vec<Endpoint> = lookup
            .iter()
            .map(|ip| Endpoint {
                address: SocketAddr::new(ip, port),
                weight: 1,
                hostname: Some(host.to_string()),
            })
            .collect();
        if endpoints.is_empty() {
            return Err(DnsError::NoAddresses(host.to_string()));
        }
        endpoints.sort();
        endpoints.dedup();
        Ok(endpoints)
    }

    /// SRV records of `name` (e.g. "_http._tcp.users.service"), each target host resolved to
    /// A/AAAA, port and weight from the record (weight 0 → 1; only the lowest priority value
    /// present is used). Sorted, deduped.
    ///
    /// A target that does not resolve is skipped with a warning; the call fails only when no
    /// target of the chosen priority resolves.
    pub async fn resolve_srv(&self, name: &str) -> Result<Vec<Endpoint>, DnsError> {
        tokio::time::timeout(self.timeout, self.resolve_srv_unbounded(name))
            .await
            .map_err(|_| timed_out("SRV", name, self.timeout))?
    }

    async fn resolve_srv_unbounded(&self, name: &str) -> Result<Vec<Endpoint>, DnsError> {
        let lookup = self
            .resolver
            .srv_lookup(name)
            .await
            .map_err(|e| lookup_failed("SRV", name, e))?;
        let records: Vec<(u16, u16, u16, Name)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.clone())),
                _ => None,
            })
            .collect();
        let targets = lowest_priority_targets(name, &records)?;

        // Targets are independent, so resolve them concurrently; the caller's timeout covers
        // them all, and dropping the set on timeout aborts whatever is still running.
        let mut lookups = JoinSet::new();
        for target in targets.keys() {
            let resolver = self.resolver.clone();
            let target = target.clone();
            lookups.spawn(async move {
                let result = resolver.lookup_ip(target.clone()).await;
                (target, result)
            });
        }
        let mut endpoints = Vec::new();
        let mut failures = Vec::new();
        while let Some(joined) = lookups.join_next().await {
            let Ok((target, result)) = joined else {
                // A lookup task only ends early by panicking inside the resolver; count it as
                // a failed target rather than losing the whole set.
                failures.push(DnsError::LookupTask);
                continue;
            };
            let host = display_name(&target);
            match result {
                Ok(ips) => {
                    for ip in ips.iter() {
                        for &(port, weight) in targets.get(&target).into_iter().flatten() {
                            endpoints.push(Endpoint {
                                address: SocketAddr::new(ip, port),
                                weight,
                                hostname: Some(host.clone()),
                            });
                        }
                    }
                }
                Err(e) => {
                    let why = lookup_failed("A/AAAA", &host, e);
                    tracing::warn!(srv = name, target = %host, "skipping SRV target: {why}");
                    failures.push(why);
                }
            }
        }
        if endpoints.is_empty() {
            return Err(DnsError::NoTargetResolved {
                name: name.to_string(),
                failures,
            });
        }
        endpoints.sort();
        endpoints.dedup();
        Ok(endpoints)
    }
}

/// A name server at `addr`, asked over UDP first and TCP for truncated answers.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// The (port, weight) pairs per target host of the lowest priority value present.
type SrvTargets = BTreeMap<Name, Vec<(u16, u32)>>;

/// Picks the records of the lowest priority value from (priority, weight, port, target) tuples
/// of the SRV name `name`.
fn lowest_priority_targets(
    name: &str,
    records: &[(u16, u16, u16, Name)],
) -> Result<SrvTargets, DnsError> {
    let Some(lowest) = records.iter().map(|r| r.0).min() else {
        return Err(DnsError::NoSrvRecords(name.to_string()));
    };
    let mut targets = SrvTargets::new();
    for (_, weight, port, target) in records.iter().filter(|r| r.0 == lowest) {
        // RFC 2782: a target of "." means the service is decidedly not available there.
        if target.is_root() {
            continue;
        }
        // Weight 0 means "rarely" in RFC 2782; the balancer has no such notion, so it gets the
        // smallest real share instead of none.
        let weight = u32::from(*weight).max(1);
        targets
            .entry(target.clone())
            .or_default()
            .push((*port, weight));
    }
    if targets.is_empty() {
        return Err(DnsError::ServiceNotAvailable(name.to_string()));
    }
    Ok(targets)
}

/// A name for messages and `Endpoint::hostname`: no trailing dot, as SNI and Host want it.
fn display_name(name: &Name) -> String {
    let mut s = name.to_utf8();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

fn timed_out(kind: &'static str, name: &str, timeout: Duration) -> DnsError {
    DnsError::TimedOut {
        kind,
        name: name.to_string(),
        timeout,
    }
}

/// What a failed lookup of `name` means for a person.
fn lookup_failed(kind: &'static str, name: &str, err: NetError) -> DnsError {
    let name = name.to_string();
    match err {
        NetError::Dns(NoAnswer::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            DnsError::NoSuchName { kind, name }
        }
        NetError::Dns(NoAnswer::NoRecordsFound(_)) => DnsError::NoRecords { kind, name },
        NetError::Timeout => DnsError::NoAnswer { kind, name },
        error => DnsError::Failed {
            kind,
            name,
            error: Box::new(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_uses_only_the_lowest_priority_and_lifts_zero_weights() {
        let a: Name = "a.svc.test.".parse().unwrap();
        let b: Name = "b.svc.test.".parse().unwrap();
        let c: Name = "c.svc.test.".parse().unwrap();
        let records = vec![
            (10, 0, 80, a.clone()),
            (10, 7, 81, b.clone()),
            (20, 5, 82, c.clone()),
            (10, 3, 83, a.clone()),
        ];
        let targets = lowest_priority_targets("s", &records).unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[&a], vec![(80, 1), (83, 3)]);
        assert_eq!(targets[&b], vec![(81, 7)]);
        assert_eq!(
            lowest_priority_targets("_x._tcp.s", &[])
                .unwrap_err()
                .to_string(),
            "DNS SRV lookup of `_x._tcp.s`: no SRV records"
        );
        assert_eq!(
            lowest_priority_targets("s", &[(0, 0, 0, Name::root())])
                .unwrap_err()
                .to_string(),
            "DNS SRV lookup of `s`: the SRV records say the service is not available (target `.`)"
        );
    }

    #[test]
    fn failed_targets_are_listed_in_the_message() {
        let e = DnsError::NoTargetResolved {
            name: "_http._tcp.s".into(),
            failures: vec![
                DnsError::NoSuchName {
                    kind: "A/AAAA",
                    name: "a.s".into(),
                },
                DnsError::LookupTask,
            ],
        };
        assert_eq!(
            e.to_string(),
            "DNS SRV lookup of `_http._tcp.s`: no target resolved to an address \
             (DNS A/AAAA lookup of `a.s`: the name does not exist (NXDOMAIN); \
             a target lookup task failed)"
        );
    }
}
