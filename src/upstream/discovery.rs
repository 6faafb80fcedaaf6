//! Service discovery for upstream targets: DNS (A/AAAA and SRV) through a hickory resolver, and
//! Consul's health API with blocking queries.
//!
//! Every call returns the complete current set of endpoints, sorted and deduplicated, so callers
//! can compare sets cheaply. Deciding when to ask again, what to do on an error (typically: keep
//! the last good set) and swapping the set into a cluster belong to the caller.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::task::JoinSet;

/// The discovery settings this module runs on are config data, defined with the model.
pub use crate::config::{ConsulQuery, Nameservers};

/// One discovered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share of traffic; never 0.
    pub weight: u32,
    /// The DNS name the address came from (for SNI / Host), when there was one.
    pub hostname: Option<String>,
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
    pub fn new(ns: &Nameservers, timeout: Duration) -> Result<Self, String> {
        if timeout.is_zero() {
            return Err("DNS resolver: the timeout must be greater than zero".to_string());
        }
        let mut builder = match ns {
            Nameservers::System => TokioResolver::builder_tokio().map_err(|e| {
                format!(
                    "DNS resolver: cannot read the system configuration (/etc/resolv.conf): {e}"
                )
            })?,
            Nameservers::Explicit(addrs) => {
                if addrs.is_empty() {
                    return Err("DNS resolver: the list of name servers is empty".to_string());
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
        let resolver = builder
            .build()
            .map_err(|e| format!("DNS resolver: cannot be built: {e}"))?;
        Ok(Self { resolver, timeout })
    }

    /// A/AAAA of `host`, each with `port` and weight 1 (hostname = Some(host)); sorted, deduped.
    /// Err when the name doesn't resolve (NXDOMAIN / no records / timeout), naming the host.
    pub async fn resolve_a(&self, host: &str, port: u16) -> Result<Vec<Endpoint>, String> {
        let lookup = tokio::time::timeout(self.timeout, self.resolver.lookup_ip(host))
            .await
            .map_err(|_| timed_out("A/AAAA", host, self.timeout))?
            .map_err(|e| describe_dns_error("A/AAAA", host, &e))?;
        let mut endpoints: Vec<Endpoint> = lookup
            .iter()
            .map(|ip| Endpoint {
                address: SocketAddr::new(ip, port),
                weight: 1,
                hostname: Some(host.to_string()),
            })
            .collect();
        if endpoints.is_empty() {
            return Err(format!("DNS A/AAAA lookup of `{host}`: no addresses"));
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
    pub async fn resolve_srv(&self, name: &str) -> Result<Vec<Endpoint>, String> {
        tokio::time::timeout(self.timeout, self.resolve_srv_unbounded(name))
            .await
            .map_err(|_| timed_out("SRV", name, self.timeout))?
    }

    async fn resolve_srv_unbounded(&self, name: &str) -> Result<Vec<Endpoint>, String> {
        let lookup = self
            .resolver
            .srv_lookup(name)
            .await
            .map_err(|e| describe_dns_error("SRV", name, &e))?;
        let records: Vec<(u16, u16, u16, Name)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.clone())),
                _ => None,
            })
            .collect();
        let targets = lowest_priority_targets(&records)
            .map_err(|why| format!("DNS SRV lookup of `{name}`: {why}"))?;

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
                failures.push("a target lookup task failed".to_string());
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
                    let why = describe_dns_error("A/AAAA", &host, &e);
                    tracing::warn!(srv = name, target = %host, "skipping SRV target: {why}");
                    failures.push(why);
                }
            }
        }
        if endpoints.is_empty() {
            return Err(format!(
                "DNS SRV lookup of `{name}`: no target resolved to an address ({})",
                failures.join("; ")
            ));
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

/// Picks the records of the lowest priority value from (priority, weight, port, target) tuples.
fn lowest_priority_targets(records: &[(u16, u16, u16, Name)]) -> Result<SrvTargets, String> {
    let Some(lowest) = records.iter().map(|r| r.0).min() else {
        return Err("no SRV records".to_string());
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
        return Err("the SRV records say the service is not available (target `.`)".to_string());
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

fn timed_out(kind: &str, name: &str, timeout: Duration) -> String {
    format!("DNS {kind} lookup of `{name}`: no answer within {timeout:?} (timed out)")
}

/// An actionable message for a failed lookup of `name`.
fn describe_dns_error(kind: &str, name: &str, err: &NetError) -> String {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            format!("DNS {kind} lookup of `{name}`: the name does not exist (NXDOMAIN)")
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => {
            format!("DNS {kind} lookup of `{name}`: the name has no {kind} records")
        }
        NetError::Timeout => {
            format!("DNS {kind} lookup of `{name}`: the name servers did not answer (timed out)")
        }
        other => format!("DNS {kind} lookup of `{name}` failed: {other}"),
    }
}

/// Time allowed beyond a blocking query's wait (and its jitter) for connecting and transfer,
/// and the whole budget of a non-blocking query.
const CONSUL_MARGIN: Duration = Duration::from_secs(10);
/// Consul caps `wait` at 10 minutes.
const CONSUL_MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul treats a zero `wait` as its 5-minute default, which would outlive our budget.
const CONSUL_MIN_WAIT: Duration = Duration::from_millis(1);
const CONSUL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Health answers are a few hundred bytes per instance; this allows tens of thousands.
const CONSUL_MAX_BODY: usize = 16 * 1024 * 1024;
/// Everything but RFC 3986 unreserved characters, so a value can't escape its path segment or
/// query parameter.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Consul health API: GET {base}/v1/health/service/{service}?passing[&index=N&wait=..s][&dc=..][&tag=..]
pub struct ConsulClient {
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient").finish_non_exhaustive()
    }
}

impl Default for ConsulClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsulClient {
    /// A client over plain HTTP; connections are pooled across queries.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONSUL_CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Self { http }
    }

    /// One (blocking) query. `index` = last X-Consul-Index seen (None for the first). Returns
    /// the passing endpoints and the index to send next.
    ///
    /// Endpoints: Service.Address, falling back to Node.Address when empty; Service.Port;
    /// weight from Service.Weights.Passing (default 1); hostname `None`. An instance without a
    /// usable IP literal or port is skipped with a warning. An empty list is a valid answer (no
    /// passing instances). The call is bounded by `wait` + Consul's jitter (wait/16) + a margin
    /// when blocking, by the margin alone otherwise. Consul's index rules apply: an index that
    /// went backwards returns 0 (start over with a non-blocking query), an index of 0 becomes 1.
    pub async fn fetch(
        &self,
        q: &ConsulQuery,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<Endpoint>, u64), String> {
        let ctx = format!("consul service `{}` at {}", q.service, q.base);
        // Index 0 is Consul's "no index yet": the query would not block anyway.
        let blocking_index = index.filter(|i| *i > 0);
        let wait = wait.clamp(CONSUL_MIN_WAIT, CONSUL_MAX_WAIT);
        let uri = health_uri(q, blocking_index.map(|i| (i, wait)))
            .map_err(|why| format!("{ctx}: {why}"))?;

        let mut request = http::Request::get(uri);
        if let Some(token) = &q.token {
            let mut value = http::HeaderValue::from_str(token.expose()).map_err(|_| {
                format!("{ctx}: the ACL token contains characters not allowed in a header")
            })?;
            // Kept out of HTTP/2 header tables and printed as `Sensitive` by `Debug`.
            value.set_sensitive(true);
            request = request.header("X-Consul-Token", value);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("{ctx}: cannot build the request: {e}"))?;

        let budget = match blocking_index {
            Some(_) => wait + wait / 16 + CONSUL_MARGIN,
            None => CONSUL_MARGIN,
        };
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| format!("{ctx}: request failed: {}", error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, CONSUL_MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{ctx}: reading the response failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(budget, exchange)
            .await
            .map_err(|_| format!("{ctx}: no complete answer within {budget:?}"))??;

        if parts.status != http::StatusCode::OK {
            return Err(format!(
                "{ctx}: HTTP {}: {}",
                parts.status,
                body_snippet(&body)
            ));
        }
        let returned = parse_index_header(parts.headers.get("X-Consul-Index"))
            .map_err(|why| format!("{ctx}: {why}"))?;
        let endpoints = parse_health(&q.service, &body).map_err(|why| format!("{ctx}: {why}"))?;
        Ok((endpoints, next_index(index, returned)))
    }
}

/// The health query URI; `blocking` carries the index and wait of a blocking query.
fn health_uri(q: &ConsulQuery, blocking: Option<(u64, Duration)>) -> Result<http::Uri, String> {
    match q.base.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "scheme `{other}` is not supported; give the agent's plain http:// address"
            ))
        }
        None => {
            return Err("the address needs a scheme and host, e.g. http://127.0.0.1:8500".into())
        }
    }
    let Some(authority) = q.base.authority() else {
        return Err("the address has no host, e.g. http://127.0.0.1:8500".into());
    };
    if q.service.is_empty() {
        return Err("the service name is empty".into());
    }
    let prefix = q.base.path().trim_end_matches('/');
    let mut uri = format!(
        "http://{authority}{prefix}/v1/health/service/{}?passing",
        utf8_percent_encode(&q.service, URL_COMPONENT)
    );
    // Writing to a String cannot fail.
    if let Some(dc) = &q.datacenter {
        let _ = write!(uri, "&dc={}", utf8_percent_encode(dc, URL_COMPONENT));
    }
    if let Some(tag) = &q.tag {
        let _ = write!(uri, "&tag={}", utf8_percent_encode(tag, URL_COMPONENT));
    }
    if let Some((index, wait)) = blocking {
        let _ = write!(uri, "&index={index}&wait={}", format_wait(wait));
    }
    uri.parse()
        .map_err(|e| format!("cannot build the query URI `{uri}`: {e}"))
}

/// Consul's duration syntax: whole seconds as `Ns`, anything finer in milliseconds.
fn format_wait(wait: Duration) -> String {
    if wait.subsec_millis() == 0 {
        format!("{}s", wait.as_secs())
    } else {
        format!("{}ms", wait.as_millis())
    }
}

fn parse_index_header(value: Option<&http::HeaderValue>) -> Result<u64, String> {
    let Some(value) = value else {
        return Err("the response has no X-Consul-Index header (is this a Consul agent?)".into());
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            format!(
                "X-Consul-Index `{}` is not a number",
                String::from_utf8_lossy(value.as_bytes())
            )
        })
}

/// The index to send next, per Consul's blocking-query rules.
fn next_index(previous: Option<u64>, returned: u64) -> u64 {
    match previous {
        // Indexes can go backwards (a restored snapshot, a new leader, an agent restart);
        // Consul's docs say to reset to 0, i.e. start over with a non-blocking query.
        Some(previous) if returned < previous => 0,
        // An index of 0 would make every following blocking query return at once, a busy loop;
        // the docs say to use 1 instead.
        _ if returned == 0 => 1,
        _ => returned,
    }
}

/// One element of the health API's answer; only the fields discovery reads.
#[derive(Debug, Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: Option<NodeInfo>,
    #[serde(rename = "Service")]
    service: Option<ServiceInfo>,
}

#[derive(Debug, Deserialize)]
struct NodeInfo {
    #[serde(rename = "Node")]
    name: Option<String>,
    #[serde(rename = "Address")]
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ServiceInfo {
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(rename = "Address")]
    address: Option<String>,
    // Wider than u16 so an out-of-range port skips one instance instead of failing the answer.
    #[serde(rename = "Port")]
    port: Option<u64>,
    #[serde(rename = "Weights")]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    #[serde(rename = "Passing")]
    passing: Option<u32>,
}

/// Endpoints from a health API body. The body must be a JSON array of entries; an entry
/// without a usable address or port is skipped with a warning rather than failing the rest.
fn parse_health(service: &str, body: &[u8]) -> Result<Vec<Endpoint>, String> {
    let entries: Vec<HealthEntry> = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not the health API's JSON array: {e}"))?;
    let mut endpoints = Vec::with_capacity(entries.len());
    for entry in entries {
        match endpoint_of(&entry) {
            Ok(endpoint) => endpoints.push(endpoint),
            Err(why) => {
                let node = entry.node.as_ref().and_then(|n| n.name.as_deref());
                let id = entry.service.as_ref().and_then(|s| s.id.as_deref());
                tracing::warn!(
                    service,
                    node = node.unwrap_or("?"),
                    instance = id.unwrap_or("?"),
                    "consul: skipping instance: {why}"
                );
            }
        }
    }
    endpoints.sort();
    endpoints.dedup();
    Ok(endpoints)
}

fn endpoint_of(entry: &HealthEntry) -> Result<Endpoint, String> {
    let Some(service) = &entry.service else {
        return Err("no Service object".into());
    };
    let service_address = service.address.as_deref().unwrap_or("");
    // An empty Service.Address means "the node's address", as Consul's docs say.
    let address = if service_address.is_empty() {
        entry
            .node
            .as_ref()
            .and_then(|n| n.address.as_deref())
            .unwrap_or("")
    } else {
        service_address
    };
    if address.is_empty() {
        return Err("neither Service.Address nor Node.Address is set".into());
    }
    // Node names would need a DNS round trip per instance; discovery does not do that.
    let ip: IpAddr = address
        .parse()
        .map_err(|_| format!("address `{address}` is not an IP address"))?;
    let port = match service.port {
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("Service.Port {port} is not a usable port"))?,
        None => return Err("no Service.Port".into()),
    };
    let weight = service
        .weights
        .as_ref()
        .and_then(|w| w.passing)
        .unwrap_or(1)
        // Consul refuses a passing weight of 0; should one appear, don't starve the instance.
        .max(1);
    Ok(Endpoint {
        address: SocketAddr::new(ip, port),
        weight,
        hostname: None,
    })
}

/// The start of an error body, for a message; Consul explains refusals in plain text there.
fn body_snippet(body: &[u8]) -> String {
    const MAX_CHARS: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut snippet: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_CHARS {
        snippet.push('…');
    }
    snippet
}

/// An error and its sources, because hyper's top-level client error says only "client error".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(out, ": {cause}");
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_plugin_api::Secret;

    fn ep(addr: &str, weight: u32) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            weight,
            hostname: None,
        }
    }

    #[test]
    fn health_json_gives_service_address_port_and_passing_weight() {
        let body = br#"[
          {"Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
           "Service": {"ID": "users-1", "Service": "users", "Address": "10.1.0.1", "Port": 8080,
                       "Weights": {"Passing": 5, "Warning": 1}, "Tags": ["v1"]},
           "Checks": [{"Status": "passing"}]},
          {"Node": {"Node": "n2", "Address": "10.0.0.2"},
           "Service": {"ID": "users-2", "Address": "", "Port": 8081},
           "Checks": []}
        ]"#;
        let got = parse_health("users", body).unwrap();
        assert_eq!(got, vec![ep("10.0.0.2:8081", 1), ep("10.1.0.1:8080", 5)]);
    }

    #[test]
    fn missing_service_address_falls_back_to_node_address() {
        let body = br#"[{"Node": {"Address": "fd00::7"}, "Service": {"Port": 9000}}]"#;
        assert_eq!(
            parse_health("s", body).unwrap(),
            vec![ep("[fd00::7]:9000", 1)]
        );
    }

    #[test]
    fn entries_without_usable_address_or_port_are_skipped() {
        let body = br#"[
          {"Node": {"Address": "10.0.0.1"}, "Service": {"Address": "users.node.consul", "Port": 80}},
          {"Node": {"Address": ""}, "Service": {"Address": "", "Port": 80}},
          {"Node": {"Address": "10.0.0.3"}},
          {"Node": {"Address": "10.0.0.4"}, "Service": {"Address": "10.0.0.4"}},
          {"Node": {"Address": "10.0.0.5"}, "Service": {"Port": 0}},
          {"Node": {"Address": "10.0.0.6"}, "Service": {"Port": 70000}},
          {"Service": {"Port": 80}},
          {"Node": {"Address": "10.0.0.9"}, "Service": {"Port": 99, "Weights": {"Passing": 0}}}
        ]"#;
        assert_eq!(parse_health("s", body).unwrap(), vec![ep("10.0.0.9:99", 1)]);
    }

    #[test]
    fn empty_array_is_a_valid_answer() {
        assert_eq!(parse_health("s", b"[]").unwrap(), vec![]);
    }

    #[test]
    fn malformed_json_is_an_error() {
        for body in [
            &b""[..],
            b"not json",
            b"[{\"Service\": {\"Port\": 80}",
            b"{\"Service\": {}}",
            b"null",
            b"[{\"Service\": {\"Port\": \"80\"}}]",
            b"[{\"Service\": {\"Port\": -1}}]",
            b"[{\"Service\": {\"Weights\": {\"Passing\": \"x\"}}}]",
        ] {
            let err = parse_health("s", body).unwrap_err();
            assert!(err.contains("JSON"), "{err}");
        }
    }

    #[test]
    fn duplicates_are_removed_and_result_is_sorted() {
        let body = br#"[
          {"Service": {"Address": "10.0.0.2", "Port": 80}},
          {"Service": {"Address": "10.0.0.1", "Port": 80}},
          {"Service": {"Address": "10.0.0.2", "Port": 80}}
        ]"#;
        assert_eq!(
            parse_health("s", body).unwrap(),
            vec![ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1)]
        );
    }

    #[test]
    fn index_rules_follow_consul_docs() {
        assert_eq!(next_index(None, 42), 42);
        assert_eq!(next_index(Some(42), 43), 43);
        assert_eq!(next_index(Some(42), 42), 42);
        assert_eq!(next_index(Some(42), 7), 0, "backwards resets to 0");
        assert_eq!(next_index(None, 0), 1, "zero becomes 1");
        assert_eq!(next_index(Some(0), 0), 1);
    }

    #[test]
    fn index_header_must_be_a_number() {
        assert_eq!(
            parse_index_header(Some(&http::HeaderValue::from_static("17"))).unwrap(),
            17
        );
        assert!(parse_index_header(None)
            .unwrap_err()
            .contains("X-Consul-Index"));
        for bad in ["", "-1", "abc", "1.5", "99999999999999999999999"] {
            let err =
                parse_index_header(Some(&http::HeaderValue::from_str(bad).unwrap())).unwrap_err();
            assert!(err.contains("not a number"), "{bad}: {err}");
        }
    }

    fn query(base: &str, service: &str) -> ConsulQuery {
        ConsulQuery {
            base: base.parse().unwrap(),
            service: service.into(),
            datacenter: None,
            tag: None,
            token: None,
        }
    }

    #[test]
    fn health_uri_encodes_service_and_parameters() {
        let mut q = query("http://127.0.0.1:8500", "users api/v1");
        q.datacenter = Some("eu west".into());
        q.tag = Some("a&b=c".into());
        let uri = health_uri(&q, Some((12, Duration::from_secs(30)))).unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:8500/v1/health/service/users%20api%2Fv1\
             ?passing&dc=eu%20west&tag=a%26b%3Dc&index=12&wait=30s"
        );
        let uri = health_uri(&query("http://consul:8500/prefix/", "users"), None).unwrap();
        assert_eq!(
            uri.to_string(),
            "http://consul:8500/prefix/v1/health/service/users?passing"
        );
    }

    #[test]
    fn health_uri_rejects_unusable_bases() {
        assert!(health_uri(&query("https://c:8501", "s"), None)
            .unwrap_err()
            .contains("https"));
        assert!(health_uri(&query("/just/a/path", "s"), None).is_err());
        assert!(health_uri(&query("http://c:8500", ""), None).is_err());
    }

    #[test]
    fn wait_is_formatted_for_consul() {
        assert_eq!(format_wait(Duration::from_secs(300)), "300s");
        assert_eq!(format_wait(Duration::from_millis(1500)), "1500ms");
    }

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
        let targets = lowest_priority_targets(&records).unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[&a], vec![(80, 1), (83, 3)]);
        assert_eq!(targets[&b], vec![(81, 7)]);
        assert!(lowest_priority_targets(&[]).is_err());
        assert!(lowest_priority_targets(&[(0, 0, 0, Name::root())]).is_err());
    }

    #[test]
    fn query_debug_hides_the_token() {
        let mut q = query("http://c:8500", "s");
        q.token = Some(Secret::new("secret-token".to_string()));
        assert!(!format!("{q:?}").contains("secret-token"));
    }

    #[test]
    fn error_snippet_is_bounded_and_single_line() {
        let long = "x".repeat(1000);
        assert_eq!(body_snippet(long.as_bytes()).chars().count(), 201);
        assert_eq!(body_snippet(b"ACL not found\n"), "ACL not found");
        assert_eq!(body_snippet(b"a\nb"), "a b");
        assert_eq!(body_snippet(b""), "(empty body)");
    }
}
