//! Consul discovery: the health API's passing instances of a service, with blocking queries.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tollgate_plugin_api::error_chain;

use super::{ConsulQuery, Endpoint};

/// A failed query, naming the service and the agent asked.
#[derive(Debug, thiserror::Error)]
#[error("consul service `{service}` at {base}: {problem}")]
pub struct ConsulError {
    /// The service asked for.
    pub service: String,
    /// The agent's address.
    pub base: http::Uri,
    /// What went wrong.
    pub problem: ConsulProblem,
}

/// What went wrong with one Consul query.
#[derive(Debug, thiserror::Error)]
pub enum ConsulProblem {
    /// The address has a scheme other than http.
    #[error("scheme `{0}` is not supported; give the agent's plain http:// address")]
    UnsupportedScheme(String),
    /// The address is only a path.
    #[error("the address needs a scheme and host, e.g. http://127.0.0.1:8500")]
    NoScheme,
    /// The address has no host.
    #[error("the address has no host, e.g. http://127.0.0.1:8500")]
    NoHost,
    /// An empty service name.
    #[error("the service name is empty")]
    EmptyService,
    /// The query's URI does not parse.
    #[error("cannot build the query URI `{uri}`: {error}")]
    BadUri {
        /// The URI as written.
        uri: String,
        /// Why it does not parse.
        error: http::uri::InvalidUri,
    },
    /// The ACL token cannot be a header value.
    #[error("the ACL token contains characters not allowed in a header")]
    BadToken,
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    BuildRequest(http::Error),
    /// Connecting or sending failed.
    #[error("request failed: {}", error_chain(.0))]
    Request(hyper_util::client::legacy::Error),
    /// The body could not be read (or is over the limit).
    #[error("reading the response failed: {0}")]
    ReadBody(Box<dyn std::error::Error + Send + Sync>),
    /// No whole answer within the query's budget.
    #[error("no complete answer within {0:?}")]
    TimedOut(Duration),
    /// The agent answered with a status other than 200.
    #[error("HTTP {status}: {snippet}")]
    Status {
        /// Its status.
        status: http::StatusCode,
        /// The start of its body, where Consul explains.
        snippet: String,
    },
    /// No `X-Consul-Index` header.
    #[error("the response has no X-Consul-Index header (is this a Consul agent?)")]
    NoIndex,
    /// `X-Consul-Index` is not a number.
    #[error("X-Consul-Index `{0}` is not a number")]
    BadIndex(String),
    /// The body is not the health API's answer.
    #[error("the answer is not the health API's JSON array: {0}")]
    NotHealthJson(serde_json::Error),
}

/// Why one instance of an answer is skipped.
#[derive(Debug, thiserror::Error)]
enum SkipReason {
    #[error("no Service object")]
    NoService,
    #[error("neither Service.Address nor Node.Address is set")]
    NoAddress,
    #[error("address `{0}` is not an IP address")]
    NotAnIp(String),
    #[error("Service.Port {0} is not a usable port")]
    BadPort(u64),
    #[error("no Service.Port")]
    NoPort,
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
    ) -> Result<(Vec<Endpoint>, u64), ConsulError> {
        let failed = |problem| ConsulError {
            service: q.service.clone(),
            base: q.base.clone(),
            problem,
        };
        // Index 0 is Consul's "no index yet": the query would not block anyway.
        let blocking_index = index.filter(|i| *i > 0);
        let wait = wait.clamp(CONSUL_MIN_WAIT, CONSUL_MAX_WAIT);
        let uri = health_uri(q, blocking_index.map(|i| (i, wait))).map_err(failed)?;

        let mut request = http::Request::get(uri);
        if let Some(token) = &q.token {
            let mut value = http::HeaderValue::from_str(token.expose())
                .map_err(|_| failed(ConsulProblem::BadToken))?;
            // Kept out of HTTP/2 header tables and printed as `Sensitive` by `Debug`.
            value.set_sensitive(true);
            request = request.header("X-Consul-Token", value);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| failed(ConsulProblem::BuildRequest(e)))?;

        let budget = match blocking_index {
            Some(_) => wait + wait / 16 + CONSUL_MARGIN,
            None => CONSUL_MARGIN,
        };
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(ConsulProblem::Request)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, CONSUL_MAX_BODY)
                .collect()
                .await
                .map_err(ConsulProblem::ReadBody)?
                .to_bytes();
            Ok::<_, ConsulProblem>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(budget, exchange)
            .await
            .map_err(|_| failed(ConsulProblem::TimedOut(budget)))?
            .map_err(failed)?;

        if parts.status != http::StatusCode::OK {
            return Err(failed(ConsulProblem::Status {
                status: parts.status,
                snippet: body_snippet(&body),
            }));
        }
        let returned = parse_index_header(parts.headers.get("X-Consul-Index")).map_err(failed)?;
        let endpoints = parse_health(&q.service, &body).map_err(failed)?;
        Ok((endpoints, next_index(index, returned)))
    }
}

/// The health query URI; `blocking` carries the index and wait of a blocking query.
fn health_uri(
    q: &ConsulQuery,
    blocking: Option<(u64, Duration)>,
) -> Result<http::Uri, ConsulProblem> {
    match q.base.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(ConsulProblem::UnsupportedScheme(other.to_string())),
        None => return Err(ConsulProblem::NoScheme),
    }
    let Some(authority) = q.base.authority() else {
        return Err(ConsulProblem::NoHost);
    };
    if q.service.is_empty() {
        return Err(ConsulProblem::EmptyService);
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
        .map_err(|error| ConsulProblem::BadUri { uri, error })
}

/// Consul's duration syntax: whole seconds as `Ns`, anything finer in milliseconds.
fn format_wait(wait: Duration) -> String {
    if wait.subsec_millis() == 0 {
        format!("{}s", wait.as_secs())
    } else {
        format!("{}ms", wait.as_millis())
    }
}

fn parse_index_header(value: Option<&http::HeaderValue>) -> Result<u64, ConsulProblem> {
    let Some(value) = value else {
        return Err(ConsulProblem::NoIndex);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ConsulProblem::BadIndex(String::from_utf8_lossy(value.as_bytes()).into_owned())
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
fn parse_health(service: &str, body: &[u8]) -> Result<Vec<Endpoint>, ConsulProblem> {
    let entries: Vec<HealthEntry> =
        serde_json::from_slice(body).map_err(ConsulProblem::NotHealthJson)?;
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

fn endpoint_of(entry: &HealthEntry) -> Result<Endpoint, SkipReason> {
    let Some(service) = &entry.service else {
        return Err(SkipReason::NoService);
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
        return Err(SkipReason::NoAddress);
    }
    // Node names would need a DNS round trip per instance; discovery does not do that.
    let ip: IpAddr = address
        .parse()
        .map_err(|_| SkipReason::NotAnIp(address.to_string()))?;
    let port = match service.port {
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(SkipReason::BadPort(port))?,
        None => return Err(SkipReason::NoPort),
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
            let err = parse_health("s", body).unwrap_err().to_string();
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
            .to_string()
            .contains("X-Consul-Index"));
        for bad in ["", "-1", "abc", "1.5", "99999999999999999999999"] {
            let err = parse_index_header(Some(&http::HeaderValue::from_str(bad).unwrap()))
                .unwrap_err()
                .to_string();
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
            .to_string()
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
