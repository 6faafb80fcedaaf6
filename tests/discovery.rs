//! Service discovery against real servers on ephemeral 127.0.0.1 ports; nothing beyond loopback.
//!
//! DNS: a real hickory-server 0.26 authoritative server for `svc.test.` over UDP and TCP, whose
//! in-memory zone the tests edit while it runs.
//!
//! Consul: Consul itself cannot be installed here, so the test server is a small hyper server
//! that speaks Consul's documented health API (`GET /v1/health/service/:service?passing`, the
//! documented JSON shape, the `X-Consul-Index` header) including real blocking-query semantics:
//! a request whose `index` is not behind the current one is held until the data changes or its
//! `wait` runs out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate::upstream::discovery::*;

// ---------------------------------------------------------------------------------------------
// DNS fixture
// ---------------------------------------------------------------------------------------------

/// A long TTL on purpose: the resolver must see changes anyway, because it does not cache.
const TTL: u32 = 300;
const SERIAL: u32 = 1;
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// An authoritative server for `svc.test.`; stops when dropped.
struct DnsServer {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    _server: Server<Catalog>,
}

impl DnsServer {
    /// The zone:
    /// - users.svc.test.   A 127.0.0.10, A 127.0.0.11, AAAA fd00::10
    /// - a/b/c.svc.test.   A 127.0.0.20 / .21 / .22
    /// - _http._tcp.users.svc.test. SRV 10 5 8080 a, 10 1 8081 b, 10 0 8082 a, 20 9 9090 c
    /// - _http._tcp.partial.svc.test. SRV 10 2 8080 a, 10 2 8080 missing (no such host)
    async fn start() -> DnsServer {
        let origin = name("svc.test.");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            name("ns.svc.test."),
            name("admin.svc.test."),
            SERIAL,
            3600,
            600,
            86400,
            TTL,
        );
        let mut records = vec![Record::from_rdata(origin.clone(), TTL, RData::SOA(soa))];
        records.extend(a_records(
            "users.svc.test.",
            &[[127, 0, 0, 10], [127, 0, 0, 11]],
        ));
        records.push(Record::from_rdata(
            name("users.svc.test."),
            TTL,
            RData::AAAA(AAAA("fd00::10".parse().unwrap())),
        ));
        records.extend(a_records("a.svc.test.", &[[127, 0, 0, 20]]));
        records.extend(a_records("b.svc.test.", &[[127, 0, 0, 21]]));
        records.extend(a_records("c.svc.test.", &[[127, 0, 0, 22]]));
        records.extend(srv_records(
            "_http._tcp.users.svc.test.",
            &[
                (10, 5, 8080, "a.svc.test."),
                (10, 1, 8081, "b.svc.test."),
                (10, 0, 8082, "a.svc.test."),
                (20, 9, 9090, "c.svc.test."),
            ],
        ));
        records.extend(srv_records(
            "_http._tcp.partial.svc.test.",
            &[
                (10, 2, 8080, "a.svc.test."),
                (10, 2, 8080, "missing.svc.test."),
            ],
        ));
        for record in records {
            assert!(zone.upsert_mut(record, SERIAL));
        }
        let zone = Arc::new(zone);

        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = zone.clone();
        catalog.upsert(LowerName::from(&origin), vec![handler]);

        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        DnsServer {
            addr,
            zone,
            _server: server,
        }
    }

    fn resolver(&self) -> DnsResolver {
        DnsResolver::new(&Nameservers::Explicit(vec![self.addr]), DNS_TIMEOUT).unwrap()
    }

    /// Replaces every record of `rtype` at `owner` with `records` while the server runs.
    async fn replace(&self, owner: &str, rtype: RecordType, records: Vec<Record>) {
        let key = RrKey::new(LowerName::from(&name(owner)), rtype);
        self.zone.records_mut().await.remove(&key);
        for record in records {
            assert!(self.zone.upsert(record, SERIAL).await);
        }
    }
}

fn a_records(owner: &str, ips: &[[u8; 4]]) -> Vec<Record> {
    ips.iter()
        .map(|ip| Record::from_rdata(name(owner), TTL, RData::A(A(Ipv4Addr::from(*ip)))))
        .collect()
}

fn srv_records(owner: &str, srvs: &[(u16, u16, u16, &str)]) -> Vec<Record> {
    srvs.iter()
        .map(|(priority, weight, port, target)| {
            let srv = SRV::new(*priority, *weight, *port, name(target));
            Record::from_rdata(name(owner), TTL, RData::SRV(srv))
        })
        .collect()
}

/// A UDP socket and a TCP listener on the same ephemeral port (retrying if TCP's is taken).
async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn ep(addr: &str, weight: u32, hostname: &str) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        weight,
        hostname: Some(hostname.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// DNS tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn resolve_a_returns_every_a_and_aaaa_address_with_the_port() {
    let dns = DnsServer::start().await;
    let got = dns
        .resolver()
        .resolve_a("users.svc.test", 80)
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            ep("127.0.0.10:80", 1, "users.svc.test"),
            ep("127.0.0.11:80", 1, "users.svc.test"),
            ep("[fd00::10]:80", 1, "users.svc.test"),
        ]
    );
}

#[tokio::test]
async fn resolve_srv_uses_record_ports_and_weights_of_the_lowest_priority() {
    let dns = DnsServer::start().await;
    let got = dns
        .resolver()
        .resolve_srv("_http._tcp.users.svc.test")
        .await
        .unwrap();
    // c.svc.test (priority 20) is ignored; weight 0 became 1.
    assert_eq!(
        got,
        vec![
            ep("127.0.0.20:8080", 5, "a.svc.test"),
            ep("127.0.0.20:8082", 1, "a.svc.test"),
            ep("127.0.0.21:8081", 1, "b.svc.test"),
        ]
    );
}

#[tokio::test]
async fn srv_target_that_does_not_resolve_is_skipped() {
    let dns = DnsServer::start().await;
    let got = dns
        .resolver()
        .resolve_srv("_http._tcp.partial.svc.test.")
        .await
        .unwrap();
    assert_eq!(got, vec![ep("127.0.0.20:8080", 2, "a.svc.test")]);
}

#[tokio::test]
async fn nonexistent_name_is_an_error_naming_it() {
    let dns = DnsServer::start().await;
    let resolver = dns.resolver();
    let err = resolver
        .resolve_a("nobody.svc.test", 80)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`nobody.svc.test`"), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    let err = resolver
        .resolve_srv("_http._tcp.nobody.svc.test")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`_http._tcp.nobody.svc.test`"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn name_without_addresses_is_an_error() {
    let dns = DnsServer::start().await;
    // The SRV owner exists but holds no A/AAAA records.
    let err = dns
        .resolver()
        .resolve_a("_http._tcp.users.svc.test", 80)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`_http._tcp.users.svc.test`"), "{err}");
    assert!(err.contains("no A/AAAA records"), "{err}");
}

#[tokio::test]
async fn a_record_changes_are_seen_on_the_next_resolve_despite_the_ttl() {
    let dns = DnsServer::start().await;
    let resolver = dns.resolver();
    assert_eq!(
        resolver
            .resolve_a("users.svc.test", 80)
            .await
            .unwrap()
            .len(),
        3
    );

    dns.replace(
        "users.svc.test.",
        RecordType::A,
        a_records(
            "users.svc.test.",
            &[[127, 0, 0, 12], [127, 0, 0, 13], [127, 0, 0, 14]],
        ),
    )
    .await;
    dns.replace("users.svc.test.", RecordType::AAAA, vec![])
        .await;
    let got = resolver.resolve_a("users.svc.test", 80).await.unwrap();
    assert_eq!(
        got,
        vec![
            ep("127.0.0.12:80", 1, "users.svc.test"),
            ep("127.0.0.13:80", 1, "users.svc.test"),
            ep("127.0.0.14:80", 1, "users.svc.test"),
        ]
    );

    // And a name that disappears is reported, not served from a cache.
    dns.replace("users.svc.test.", RecordType::A, vec![]).await;
    let err = resolver
        .resolve_a("users.svc.test", 80)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("users.svc.test"), "{err}");
}

#[tokio::test]
async fn srv_record_changes_are_seen_on_the_next_resolve() {
    let dns = DnsServer::start().await;
    let resolver = dns.resolver();
    assert_eq!(
        resolver
            .resolve_srv("_http._tcp.users.svc.test")
            .await
            .unwrap()
            .len(),
        3
    );

    dns.replace(
        "_http._tcp.users.svc.test.",
        RecordType::SRV,
        srv_records(
            "_http._tcp.users.svc.test.",
            &[(1, 3, 7000, "c.svc.test."), (5, 1, 7001, "a.svc.test.")],
        ),
    )
    .await;
    let got = resolver
        .resolve_srv("_http._tcp.users.svc.test")
        .await
        .unwrap();
    assert_eq!(got, vec![ep("127.0.0.22:7000", 3, "c.svc.test")]);
}

#[tokio::test]
async fn silent_name_server_fails_within_the_timeout() {
    // Bound but never read: queries go unanswered. TCP on that port is refused.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let timeout = Duration::from_millis(300);
    let resolver = DnsResolver::new(
        &Nameservers::Explicit(vec![silent.local_addr().unwrap()]),
        timeout,
    )
    .unwrap();
    let started = Instant::now();
    let err = resolver
        .resolve_a("users.svc.test", 80)
        .await
        .unwrap_err()
        .to_string();
    // Unanswered queries would wait forever: this catches that, not how fast the timeout fires.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("`users.svc.test`"), "{err}");

    let started = Instant::now();
    let err = resolver
        .resolve_srv("_http._tcp.users.svc.test")
        .await
        .unwrap_err()
        .to_string();
    // Unanswered queries would wait forever: this catches that, not how fast the timeout fires.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("`_http._tcp.users.svc.test`"), "{err}");
}

#[tokio::test]
async fn resolver_configuration_is_validated() {
    let err = DnsResolver::new(&Nameservers::Explicit(vec![]), DNS_TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let err = DnsResolver::new(&Nameservers::Explicit(vec![addr]), Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(err.contains("timeout"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Consul fixture
// ---------------------------------------------------------------------------------------------

/// What the fake agent serves for `users`.
#[derive(Clone)]
struct ConsulState {
    index: u64,
    status: u16,
    body: String,
    /// `None` leaves the header out.
    index_header: Option<String>,
}

impl ConsulState {
    fn healthy(index: u64, entries: serde_json::Value) -> Self {
        ConsulState {
            index,
            status: 200,
            body: entries.to_string(),
            index_header: Some(index.to_string()),
        }
    }
}

/// A request as the fake agent saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
    token: Option<String>,
}

/// A fake Consul agent; stops when dropped.
struct FakeConsul {
    addr: SocketAddr,
    state: watch::Sender<ConsulState>,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept_loop: JoinHandle<()>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl FakeConsul {
    async fn start(initial: ConsulState) -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = watch::channel(initial);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (state2, seen2) = (state.clone(), seen.clone());
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, seen) = (state2.clone(), seen2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, state.clone(), seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeConsul {
            addr,
            state,
            seen,
            accept_loop,
        }
    }

    fn query(&self) -> ConsulQuery {
        ConsulQuery {
            base: format!("http://{}", self.addr).parse().unwrap(),
            service: "users".into(),
            datacenter: None,
            tag: None,
            token: None,
        }
    }

    /// Changes the data and wakes blocked queries, as a catalog change in Consul would.
    fn set(&self, state: ConsulState) {
        self.state.send_replace(state);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Consul's duration syntax, as much of it as the client sends.
fn parse_wait(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    s.strip_suffix('s')?.parse().ok().map(Duration::from_secs)
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

async fn answer(
    req: Request<Incoming>,
    state: watch::Sender<ConsulState>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect();
    seen.lock().unwrap().push(Seen {
        path: req.uri().path().to_string(),
        query: query.clone(),
        token: req
            .headers()
            .get("X-Consul-Token")
            .map(|v| v.to_str().unwrap().to_string()),
    });
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if req.uri().path() != "/v1/health/service/users" {
        return Ok(reply(404, "no such service".into()));
    }
    if !query.contains_key("passing") {
        return Ok(reply(
            400,
            "test agent: discovery must ask for passing only".into(),
        ));
    }

    // Blocking query, as Consul does it: hold while the current index is not greater than the
    // client's (index 0 never blocks), at most `wait` (default 5 minutes).
    let mut rx = state.subscribe();
    if let Some(index) = query.get("index").and_then(|i| i.parse::<u64>().ok()) {
        let wait = query
            .get("wait")
            .and_then(|w| parse_wait(w))
            .unwrap_or(Duration::from_secs(300));
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.index > index)).await;
    }
    let current = rx.borrow().clone();
    let mut response = reply(current.status, current.body);
    if let Some(index) = current.index_header {
        response
            .headers_mut()
            .insert("X-Consul-Index", index.parse().unwrap());
    }
    response
        .headers_mut()
        .insert("Content-Type", "application/json".parse().unwrap());
    Ok(response)
}

/// One element of the health API's answer, shaped as Consul documents it.
fn instance(
    node_address: &str,
    address: &str,
    port: u16,
    weights: Option<(u32, u32)>,
) -> serde_json::Value {
    let mut service = json!({
        "ID": format!("users-{address}-{port}"),
        "Service": "users",
        "Tags": ["primary", "v1"],
        "Address": address,
        "TaggedAddresses": {
            "lan": {"address": address, "port": port},
            "wan": {"address": address, "port": port}
        },
        "Meta": {"version": "1"},
        "Port": port,
        "Namespace": "default"
    });
    if let Some((passing, warning)) = weights {
        service["Weights"] = json!({"Passing": passing, "Warning": warning});
    }
    json!({
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": format!("node-{node_address}"),
            "Address": node_address,
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": node_address, "wan": node_address},
            "Meta": {"instance_type": "t2.medium"}
        },
        "Service": service,
        "Checks": [
            {
                "Node": format!("node-{node_address}"),
                "CheckID": "service:users",
                "Name": "Service 'users' check",
                "Status": "passing",
                "Notes": "",
                "Output": "",
                "ServiceID": "users",
                "ServiceName": "users",
                "ServiceTags": ["primary"],
                "Namespace": "default"
            },
            {
                "Node": format!("node-{node_address}"),
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "Notes": "",
                "Output": "",
                "ServiceID": "",
                "ServiceName": "",
                "ServiceTags": [],
                "Namespace": "default"
            }
        ]
    })
}

fn plain(addr: &str, weight: u32) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        weight,
        hostname: None,
    }
}

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Consul tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn first_consul_fetch_returns_endpoints_and_index() {
    let consul = FakeConsul::start(ConsulState::healthy(
        7,
        json!([
            instance("10.0.0.1", "127.0.0.30", 8080, None),
            instance("10.0.0.2", "127.0.0.31", 8080, None)
        ]),
    ))
    .await;
    let client = ConsulClient::new();
    let (endpoints, index) = client.fetch(&consul.query(), None, WAIT).await.unwrap();
    assert_eq!(index, 7);
    assert_eq!(
        endpoints,
        vec![plain("127.0.0.30:8080", 1), plain("127.0.0.31:8080", 1)]
    );
    let seen = consul.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/health/service/users");
    assert!(seen[0].query.contains_key("passing"));
    // The first query must not block.
    assert!(!seen[0].query.contains_key("index"), "{:?}", seen[0]);
}

#[tokio::test]
async fn blocking_fetch_returns_as_soon_as_the_data_changes() {
    let consul = FakeConsul::start(ConsulState::healthy(
        7,
        json!([instance("10.0.0.1", "127.0.0.30", 8080, None)]),
    ))
    .await;
    let client = Arc::new(ConsulClient::new());
    let (_, index) = client.fetch(&consul.query(), None, WAIT).await.unwrap();

    let started = Instant::now();
    let blocked = {
        let (client, query) = (client.clone(), consul.query());
        tokio::spawn(async move { client.fetch(&query, Some(index), WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !blocked.is_finished(),
        "the query must block while nothing changes"
    );

    consul.set(ConsulState::healthy(
        8,
        json!([
            instance("10.0.0.1", "127.0.0.30", 8080, None),
            instance("10.0.0.3", "127.0.0.32", 9000, Some((4, 1)))
        ]),
    ));
    let (endpoints, index) = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the blocked query returns once the data changes")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(index, 8);
    assert_eq!(
        endpoints,
        vec![plain("127.0.0.30:8080", 1), plain("127.0.0.32:9000", 4)]
    );
    let seen = consul.seen();
    assert_eq!(seen[1].query.get("index").map(String::as_str), Some("7"));
    assert_eq!(seen[1].query.get("wait").map(String::as_str), Some("30s"));
}

#[tokio::test]
async fn blocking_fetch_without_change_returns_the_same_data_after_wait() {
    let consul = FakeConsul::start(ConsulState::healthy(
        7,
        json!([instance("10.0.0.1", "127.0.0.30", 8080, None)]),
    ))
    .await;
    let client = ConsulClient::new();
    let started = Instant::now();
    let (endpoints, index) = client
        .fetch(&consul.query(), Some(7), Duration::from_millis(400))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(index, 7);
    assert_eq!(endpoints, vec![plain("127.0.0.30:8080", 1)]);
    assert_eq!(
        consul.seen()[0].query.get("wait").map(String::as_str),
        Some("400ms")
    );
}

#[tokio::test]
async fn weights_come_from_passing_and_empty_service_address_falls_back_to_node() {
    let consul = FakeConsul::start(ConsulState::healthy(
        3,
        json!([
            instance("127.0.0.40", "", 8080, Some((10, 1))),
            instance("10.0.0.2", "127.0.0.41", 8081, Some((2, 1))),
            instance("10.0.0.3", "::1", 8082, None),
            // A node name is not resolved: skipped with a warning.
            instance("10.0.0.4", "users.node.dc1.consul", 8083, None)
        ]),
    ))
    .await;
    let (endpoints, _) = ConsulClient::new()
        .fetch(&consul.query(), None, WAIT)
        .await
        .unwrap();
    assert_eq!(
        endpoints,
        vec![
            plain("127.0.0.40:8080", 10),
            plain("127.0.0.41:8081", 2),
            plain("[::1]:8082", 1),
        ]
    );
}

#[tokio::test]
async fn consul_http_500_is_an_error_with_its_message() {
    let consul = FakeConsul::start(ConsulState {
        index: 1,
        status: 500,
        body: "rpc error making call: No cluster leader".into(),
        index_header: None,
    })
    .await;
    let err = ConsulClient::new()
        .fetch(&consul.query(), None, WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("500"), "{err}");
    assert!(err.contains("No cluster leader"), "{err}");
    assert!(err.contains("`users`"), "{err}");
}

#[tokio::test]
async fn consul_bad_json_is_an_error() {
    let consul = FakeConsul::start(ConsulState {
        index: 1,
        status: 200,
        body: "[{\"Node\": {\"Address\": \"10.0.0.1\"}, \"Service\": ".into(),
        index_header: Some("1".into()),
    })
    .await;
    let err = ConsulClient::new()
        .fetch(&consul.query(), None, WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("JSON"), "{err}");
}

#[tokio::test]
async fn consul_missing_or_invalid_index_is_an_error() {
    let mut state = ConsulState::healthy(1, json!([]));
    state.index_header = None;
    let consul = FakeConsul::start(state.clone()).await;
    let client = ConsulClient::new();
    let err = client
        .fetch(&consul.query(), None, WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("X-Consul-Index"), "{err}");

    state.index_header = Some("soon".into());
    consul.set(state);
    let err = client
        .fetch(&consul.query(), None, WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("X-Consul-Index") && err.contains("soon"),
        "{err}"
    );
}

#[tokio::test]
async fn consul_index_going_backwards_resets_to_zero() {
    let consul = FakeConsul::start(ConsulState::healthy(
        100,
        json!([instance("10.0.0.1", "127.0.0.30", 8080, None)]),
    ))
    .await;
    let client = ConsulClient::new();
    let (_, index) = client.fetch(&consul.query(), None, WAIT).await.unwrap();
    assert_eq!(index, 100);

    // A restored snapshot: the data changes and the index is lower than the client's. Like
    // Consul, the agent then holds the query for the whole wait, since 5 is not above 100.
    consul.set(ConsulState::healthy(
        5,
        json!([instance("10.0.0.1", "127.0.0.33", 8080, None)]),
    ));
    let (endpoints, index) = client
        .fetch(&consul.query(), Some(100), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(index, 0, "the caller must start over");
    assert_eq!(endpoints, vec![plain("127.0.0.33:8080", 1)]);

    // Starting over is a non-blocking query that returns the new index.
    let (_, index) = client.fetch(&consul.query(), Some(0), WAIT).await.unwrap();
    assert_eq!(index, 5);
    assert!(!consul.seen()[2].query.contains_key("index"));
}

#[tokio::test]
async fn consul_token_datacenter_and_tag_are_sent() {
    let consul = FakeConsul::start(ConsulState::healthy(1, json!([]))).await;
    let mut query = consul.query();
    query.token = Some(tollgate_plugin_api::Secret::new("b1gs33cr3t".to_string()));
    query.datacenter = Some("eu-west".into());
    query.tag = Some("v1 canary".into());
    let (endpoints, index) = ConsulClient::new().fetch(&query, None, WAIT).await.unwrap();
    assert!(endpoints.is_empty());
    assert_eq!(index, 1);
    let seen = consul.seen();
    assert_eq!(seen[0].token.as_deref(), Some("b1gs33cr3t"));
    assert_eq!(seen[0].query.get("dc").map(String::as_str), Some("eu-west"));
    assert_eq!(
        seen[0].query.get("tag").map(String::as_str),
        Some("v1 canary")
    );
}

#[tokio::test]
async fn unknown_service_and_unreachable_agent_are_errors() {
    let consul = FakeConsul::start(ConsulState::healthy(1, json!([]))).await;
    let mut query = consul.query();
    query.service = "orders/v2".into();
    let err = ConsulClient::new()
        .fetch(&query, None, WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404"), "{err}");
    // The slash was encoded, so it stayed one path segment.
    assert_eq!(consul.seen()[0].path, "/v1/health/service/orders%2Fv2");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut query = consul.query();
    query.base = format!("http://{closed}").parse().unwrap();
    let started = Instant::now();
    let err = ConsulClient::new()
        .fetch(&query, None, WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.contains("request failed"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Through the gateway: an upstream whose targets come from DNS or Consul follows changes.
// ---------------------------------------------------------------------------------------------

#[path = "common/mod.rs"]
mod common;

/// Two upstreams on the same port, one on 127.0.0.1 and one on 127.0.0.2 (DNS A discovery puts
/// every address on one port).
async fn twin_upstreams() -> (common::Upstream, common::Upstream, u16) {
    for _ in 0..20 {
        let port = common::free_port();
        let Ok(probe) = std::net::TcpListener::bind(("127.0.0.2", port)) else {
            continue;
        };
        drop(probe);
        let a = common::Upstream::start_on(([127, 0, 0, 1], port).into(), |req| async move {
            common::describe("one", req).await
        })
        .await;
        let b = common::Upstream::start_on(([127, 0, 0, 2], port).into(), |req| async move {
            common::describe("two", req).await
        })
        .await;
        return (a, b, port);
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

async fn answered_by(gw: &common::Gateway) -> String {
    let v: serde_json::Value = common::client()
        .get(gw.url("/who"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["upstream"].as_str().unwrap_or_default().to_string()
}

async fn until_answered_by(gw: &common::Gateway, want: &str) {
    for _ in 0..200 {
        if answered_by(gw).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never switched to `{want}`");
}

#[tokio::test]
async fn gateway_follows_dns_a_record_changes() {
    let dns = DnsServer::start().await;
    let (_one, _two, port) = twin_upstreams().await;
    dns.replace(
        "users.svc.test.",
        RecordType::A,
        a_records("users.svc.test.", &[[127, 0, 0, 1]]),
    )
    .await;
    dns.replace("users.svc.test.", RecordType::AAAA, Vec::new())
        .await;
    let gw = common::Gateway::start(&format!(
        r#"
[upstreams.svc]
discovery = {{ type = "dns", name = "users.svc.test", port = {port}, nameservers = ["{}"], interval = "100ms" }}

[routes.all]
prefix = "/"
upstream = "svc"
"#,
        dns.addr
    ))
    .await;
    // Discovered before the first request.
    assert_eq!(answered_by(&gw).await, "one");
    dns.replace(
        "users.svc.test.",
        RecordType::A,
        a_records("users.svc.test.", &[[127, 0, 0, 2]]),
    )
    .await;
    until_answered_by(&gw, "two").await;
}

#[tokio::test]
async fn gateway_follows_consul_catalog_changes() {
    let (_one, _two, port) = twin_upstreams().await;
    let consul = FakeConsul::start(ConsulState::healthy(
        3,
        json!([instance("10.9.9.9", "127.0.0.1", port, None)]),
    ))
    .await;
    let gw = common::Gateway::start(&format!(
        r#"
[upstreams.svc]
discovery = {{ type = "consul", address = "http://{}", service = "users", wait = "5s" }}

[routes.all]
prefix = "/"
upstream = "svc"
"#,
        consul.addr
    ))
    .await;
    assert_eq!(answered_by(&gw).await, "one");
    // A catalog change wakes the gateway's blocking query.
    consul.set(ConsulState::healthy(
        4,
        json!([instance("10.9.9.9", "127.0.0.2", port, None)]),
    ));
    until_answered_by(&gw, "two").await;
}

#[tokio::test]
async fn unresolvable_host_name_at_startup_is_reported_and_retried() {
    let dns = DnsServer::start().await;
    let (_one, _two, port) = twin_upstreams().await;
    let gw = common::Gateway::start(&format!(
        r#"
[upstreams.svc]
discovery = {{ type = "dns", name = "later.svc.test", port = {port}, nameservers = ["{}"], interval = "100ms" }}
panic_mode = false

[routes.all]
prefix = "/"
upstream = "svc"
"#,
        dns.addr
    ))
    .await;
    let resp = common::client().get(gw.url("/who")).send().await.unwrap();
    common::expect_error(resp, 503, "no_healthy_target").await;
    assert!(gw.logs().contains("later.svc.test"), "{}", gw.logs());
    dns.replace(
        "later.svc.test.",
        RecordType::A,
        a_records("later.svc.test.", &[[127, 0, 0, 2]]),
    )
    .await;
    until_answered_by(&gw, "two").await;
}
