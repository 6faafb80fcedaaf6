//! Active health-check probes against real servers on ephemeral 127.0.0.1 ports: hyper
//! HTTP/1.1 and h2c servers whose status the test flips, a listener that never answers, a closed
//! port, a real tonic server with tonic-health, and a hand-written h2c server for gRPC answers
//! tonic would never send (malformed frames, wrong content type).
//!
//! Every probe call is wrapped in a generous outer timeout that only catches hangs; no test
//! asserts how fast anything is.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tollgate::upstream::probe::{probe, ProbeKind};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Long enough for any probe here on a loaded 2-core machine; the silent-server tests use their
/// own short timeout.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a probe, failing the test if it ignores its own timeout.
async fn run(kind: &ProbeKind, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(
        timeout + Duration::from_secs(10),
        probe(kind, target, timeout, None),
    )
    .await
    .expect("probe must finish within its own timeout")
    .map_err(|e| e.to_string())
}

/// A GET probe of `path` over HTTP/1.1, expecting 2xx.
fn http(path: &str) -> ProbeKind {
    ProbeKind::Http {
        path: path.to_string(),
        method: Method::GET,
        host: None,
        expected: vec![(200, 299)],
        h2c: false,
    }
}

/// The same over h2c.
fn h2c(path: &str) -> ProbeKind {
    ProbeKind::Http {
        path: path.to_string(),
        method: Method::GET,
        host: None,
        expected: vec![(200, 299)],
        h2c: true,
    }
}

fn grpc(service: &str) -> ProbeKind {
    ProbeKind::Grpc {
        service: service.to_string(),
        authority: None,
    }
}

/// A port with nothing listening: bound to get a free number, then released.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// HTTP fixture
// ---------------------------------------------------------------------------------------------

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path_and_query: String,
    version: Version,
    host: Option<String>,
    authority: Option<String>,
    user_agent: Option<String>,
}

/// A hyper server answering every request with the current `status`; `/big` answers with a
/// 1 MiB body.
struct HttpServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpServer {
    async fn start(h2: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (status2, seen2) = (status.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (status, seen) = (status2.clone(), seen2.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (status, seen) = (status.clone(), seen.clone());
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_string())
                        };
                        seen.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            path_and_query: req.uri().path_and_query().unwrap().to_string(),
                            version: req.version(),
                            host: header("host"),
                            authority: req.uri().authority().map(|a| a.to_string()),
                            user_agent: header("user-agent"),
                        });
                        let body = if req.uri().path() == "/big" {
                            Bytes::from(vec![b'x'; 1024 * 1024])
                        } else {
                            Bytes::from_static(b"ok")
                        };
                        let code = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                        let mut response = Response::new(Full::new(body));
                        *response.status_mut() = code;
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        Self { addr, status, seen }
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request")
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http1_200_is_healthy_and_sends_path_host_and_user_agent() {
    let server = HttpServer::start(false).await;
    assert_eq!(
        run(&http("/healthz?deep=1"), server.addr, TIMEOUT).await,
        Ok(())
    );
    let seen = server.last_seen();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path_and_query, "/healthz?deep=1");
    assert_eq!(seen.version, Version::HTTP_11);
    // No configured host: the target address, as a client connecting to it would send.
    assert_eq!(seen.host.as_deref(), Some(server.addr.to_string().as_str()));
    assert_eq!(seen.user_agent.as_deref(), Some("tollgate-health-check"));
}

#[tokio::test]
async fn http1_sends_the_configured_method_and_host() {
    let server = HttpServer::start(false).await;
    let kind = ProbeKind::Http {
        path: "/status".to_string(),
        method: Method::HEAD,
        host: Some("api.internal.test".to_string()),
        expected: vec![(200, 299)],
        h2c: false,
    };
    assert_eq!(run(&kind, server.addr, TIMEOUT).await, Ok(()));
    let seen = server.last_seen();
    assert_eq!(seen.method, Method::HEAD);
    assert_eq!(seen.path_and_query, "/status");
    assert_eq!(seen.host.as_deref(), Some("api.internal.test"));
}

#[tokio::test]
async fn http1_probe_follows_the_status_as_it_flips() {
    let server = HttpServer::start(false).await;
    let kind = http("/");
    assert_eq!(run(&kind, server.addr, TIMEOUT).await, Ok(()));

    server.set_status(503);
    assert_eq!(
        run(&kind, server.addr, TIMEOUT).await,
        Err("status 503 not in 200-299".to_string())
    );

    server.set_status(204);
    assert_eq!(run(&kind, server.addr, TIMEOUT).await, Ok(()));
    // One fresh connection per probe.
    assert_eq!(server.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn expected_ranges_decide_what_is_healthy() {
    let server = HttpServer::start(false).await;
    let with = |expected: Vec<(u16, u16)>| ProbeKind::Http {
        path: "/".to_string(),
        method: Method::GET,
        host: None,
        expected,
        h2c: false,
    };

    server.set_status(302);
    assert!(run(&http("/"), server.addr, TIMEOUT).await.is_err());
    assert_eq!(
        run(&with(vec![(200, 399)]), server.addr, TIMEOUT).await,
        Ok(())
    );

    server.set_status(404);
    assert_eq!(
        run(&with(vec![(200, 399)]), server.addr, TIMEOUT).await,
        Err("status 404 not in 200-399".to_string())
    );
    assert_eq!(
        run(&with(vec![(200, 299), (404, 404)]), server.addr, TIMEOUT).await,
        Ok(())
    );
}

#[tokio::test]
async fn a_large_body_is_read_only_up_to_the_limit() {
    let server = HttpServer::start(false).await;
    assert_eq!(run(&http("/big"), server.addr, TIMEOUT).await, Ok(()));
    let h2_server = HttpServer::start(true).await;
    assert_eq!(run(&h2c("/big"), h2_server.addr, TIMEOUT).await, Ok(()));
}

// ---------------------------------------------------------------------------------------------
// h2c
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_probe_speaks_http2_with_the_authority() {
    let server = HttpServer::start(true).await;
    assert_eq!(run(&h2c("/healthz"), server.addr, TIMEOUT).await, Ok(()));
    let seen = server.last_seen();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.path_and_query, "/healthz");
    assert_eq!(
        seen.authority.as_deref(),
        Some(server.addr.to_string().as_str())
    );
    assert_eq!(seen.user_agent.as_deref(), Some("tollgate-health-check"));

    let kind = ProbeKind::Http {
        path: "/ready".to_string(),
        method: Method::POST,
        host: Some("grpc.internal.test:8443".to_string()),
        expected: vec![(200, 200)],
        h2c: true,
    };
    assert_eq!(run(&kind, server.addr, TIMEOUT).await, Ok(()));
    let seen = server.last_seen();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.authority.as_deref(), Some("grpc.internal.test:8443"));
}

#[tokio::test]
async fn h2c_probe_follows_the_status() {
    let server = HttpServer::start(true).await;
    server.set_status(503);
    assert_eq!(
        run(&h2c("/"), server.addr, TIMEOUT).await,
        Err("status 503 not in 200-299".to_string())
    );
    server.set_status(200);
    assert_eq!(run(&h2c("/"), server.addr, TIMEOUT).await, Ok(()));
}

#[tokio::test]
async fn a_protocol_mismatch_is_unhealthy_not_a_hang() {
    let h1 = HttpServer::start(false).await;
    let h2 = HttpServer::start(true).await;
    let h2c_on_h1 = run(&h2c("/"), h1.addr, TIMEOUT).await;
    assert!(h2c_on_h1.is_err(), "{h2c_on_h1:?}");
    let h1_on_h2 = run(&http("/"), h2.addr, TIMEOUT).await;
    assert!(h1_on_h2.is_err(), "{h1_on_h2:?}");
}

// ---------------------------------------------------------------------------------------------
// Servers that fail
// ---------------------------------------------------------------------------------------------

/// Accepts connections and holds them open without reading or writing a byte.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let addr = silent_server().await;
    let short = Duration::from_millis(300);
    for kind in [http("/"), h2c("/"), grpc("")] {
        assert_eq!(
            run(&kind, addr, short).await,
            Err("timed out after 300ms".to_string()),
            "{kind:?}"
        );
    }
    // Accepting connections is all a TCP probe asks.
    assert_eq!(run(&ProbeKind::Tcp, addr, short).await, Ok(()));
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    let addr = closed_port().await;
    for kind in [http("/"), h2c("/"), grpc(""), ProbeKind::Tcp] {
        assert_eq!(
            run(&kind, addr, TIMEOUT).await,
            Err("connect refused".to_string()),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn tcp_probe_follows_the_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert_eq!(run(&ProbeKind::Tcp, addr, TIMEOUT).await, Ok(()));
    drop(listener);
    assert_eq!(
        run(&ProbeKind::Tcp, addr, TIMEOUT).await,
        Err("connect refused".to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// gRPC against tonic
// ---------------------------------------------------------------------------------------------

/// A real tonic server with tonic-health's service, or with no service at all.
async fn tonic_server(with_health: bool) -> (SocketAddr, HealthReporter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        let mut builder = tonic::transport::Server::builder();
        let router = if with_health {
            builder.add_service(health)
        } else {
            builder.add_routes(tonic::service::Routes::default())
        };
        router.serve_with_incoming(incoming).await
    });
    (addr, reporter)
}

#[tokio::test]
async fn grpc_whole_server_check_is_serving_by_default() {
    // tonic-health registers "" (the whole server) as SERVING when the reporter is made.
    let (addr, _reporter) = tonic_server(true).await;
    assert_eq!(run(&grpc(""), addr, TIMEOUT).await, Ok(()));
}

#[tokio::test]
async fn grpc_probe_follows_a_named_service() {
    let (addr, reporter) = tonic_server(true).await;
    let kind = grpc("shop.v1.Orders");

    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::Serving)
        .await;
    assert_eq!(run(&kind, addr, TIMEOUT).await, Ok(()));

    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::NotServing)
        .await;
    assert_eq!(
        run(&kind, addr, TIMEOUT).await,
        Err("grpc status NOT_SERVING".to_string())
    );

    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::Unknown)
        .await;
    assert_eq!(
        run(&kind, addr, TIMEOUT).await,
        Err("grpc status UNKNOWN".to_string())
    );

    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::Serving)
        .await;
    assert_eq!(run(&kind, addr, TIMEOUT).await, Ok(()));
    // The whole server is unaffected by a service's status.
    assert_eq!(run(&grpc(""), addr, TIMEOUT).await, Ok(()));
}

#[tokio::test]
async fn grpc_unknown_service_is_not_found() {
    let (addr, _reporter) = tonic_server(true).await;
    assert_eq!(
        run(&grpc("no.such.Service"), addr, TIMEOUT).await,
        Err("grpc-status 5: service not registered".to_string())
    );
}

#[tokio::test]
async fn grpc_server_without_health_service_is_unimplemented() {
    let (addr, _reporter) = tonic_server(false).await;
    assert_eq!(
        run(&grpc(""), addr, TIMEOUT).await,
        Err("grpc-status 12: unimplemented".to_string())
    );
}

#[tokio::test]
async fn grpc_probe_against_plain_http_servers_is_unhealthy() {
    let h1 = HttpServer::start(false).await;
    let on_h1 = run(&grpc(""), h1.addr, TIMEOUT).await;
    assert!(on_h1.is_err(), "{on_h1:?}");

    let h2 = HttpServer::start(true).await;
    assert_eq!(
        run(&grpc(""), h2.addr, TIMEOUT).await,
        Err("content-type `` is not gRPC".to_string())
    );
    h2.set_status(404);
    assert_eq!(
        run(&grpc(""), h2.addr, TIMEOUT).await,
        Err("http status 404 (not gRPC)".to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// gRPC against a scripted h2c server
// ---------------------------------------------------------------------------------------------

/// What the scripted server saw of one gRPC request.
#[derive(Debug, Clone)]
struct GrpcSeen {
    path: String,
    authority: Option<String>,
    content_type: Option<String>,
    te: Option<String>,
    body: Bytes,
}

type Body = BoxBody<Bytes, Infallible>;

/// How a scripted server answers every request.
type Responder = fn() -> Response<Body>;

/// An h2c server that records each request and answers with `respond()`.
async fn scripted_grpc_server(respond: Responder) -> (SocketAddr, Arc<Mutex<Vec<GrpcSeen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen2.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    let mut record = GrpcSeen {
                        path: req.uri().path().to_string(),
                        authority: req.uri().authority().map(|a| a.to_string()),
                        content_type: header("content-type"),
                        te: header("te"),
                        body: Bytes::new(),
                    };
                    record.body = req.into_body().collect().await.unwrap().to_bytes();
                    seen.lock().unwrap().push(record);
                    Ok::<_, Infallible>(respond())
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A gRPC response: `data` as the body, then trailers with `grpc-status: status`.
fn grpc_response(data: &'static [u8], status: &'static str) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    Response::builder()
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(body))
        .unwrap()
}

const SERVING: &[u8] = &[0, 0, 0, 0, 2, 0x08, 0x01];

#[tokio::test]
async fn grpc_request_is_the_standard_health_check() {
    let (addr, seen) = scripted_grpc_server(|| grpc_response(SERVING, "0")).await;
    let kind = ProbeKind::Grpc {
        service: "shop.v1.Orders".to_string(),
        authority: Some("orders.internal.test".to_string()),
    };
    assert_eq!(run(&kind, addr, TIMEOUT).await, Ok(()));
    let seen = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.path, "/grpc.health.v1.Health/Check");
    assert_eq!(seen.authority.as_deref(), Some("orders.internal.test"));
    assert_eq!(seen.content_type.as_deref(), Some("application/grpc"));
    assert_eq!(seen.te.as_deref(), Some("trailers"));
    let mut expected = vec![0, 0, 0, 0, 16, 0x0a, 14];
    expected.extend_from_slice(b"shop.v1.Orders");
    assert_eq!(seen.body.as_ref(), expected.as_slice());
}

#[tokio::test]
async fn grpc_whole_server_request_is_an_empty_message() {
    let (addr, seen) = scripted_grpc_server(|| grpc_response(SERVING, "0")).await;
    assert_eq!(run(&grpc(""), addr, TIMEOUT).await, Ok(()));
    let seen = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.body.as_ref(), &[0, 0, 0, 0, 0]);
    assert_eq!(seen.authority.as_deref(), Some(addr.to_string().as_str()));
}

#[tokio::test]
async fn grpc_status_in_trailers_overrides_a_serving_message() {
    let (addr, _) = scripted_grpc_server(|| grpc_response(SERVING, "14")).await;
    assert_eq!(
        run(&grpc(""), addr, TIMEOUT).await,
        Err("grpc-status 14: unavailable".to_string())
    );
}

#[tokio::test]
async fn grpc_trailers_only_error_is_read_from_the_headers() {
    let (addr, _) = scripted_grpc_server(|| {
        Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "7")
            .header("grpc-message", "go%20away")
            .body(BodyExt::boxed(Full::new(Bytes::new())))
            .unwrap()
    })
    .await;
    assert_eq!(
        run(&grpc(""), addr, TIMEOUT).await,
        Err("grpc-status 7: go away".to_string())
    );
}

#[tokio::test]
async fn malformed_grpc_answers_are_unhealthy() {
    // Each answer is a separate server because the responder is a plain fn.
    let cases: [(Responder, &str); 6] = [
        // Frame header cut short.
        (
            || grpc_response(&[0, 0, 0], "0"),
            "truncated gRPC frame header",
        ),
        // Declares 9 bytes, sends 2.
        (
            || grpc_response(&[0, 0, 0, 0, 9, 0x08, 0x01], "0"),
            "truncated gRPC message: 2 of 9 bytes",
        ),
        // Message with a truncated varint.
        (
            || grpc_response(&[0, 0, 0, 0, 2, 0x08, 0x80], "0"),
            "failed to decode Protobuf message: HealthCheckResponse.status: invalid varint",
        ),
        // Compressed flag that was never negotiated.
        (
            || grpc_response(&[1, 0, 0, 0, 2, 0x08, 0x01], "0"),
            "gRPC response is compressed, which was not offered",
        ),
        // OK status but no message.
        (|| grpc_response(&[], "0"), "gRPC response has no message"),
        // No grpc-status anywhere.
        (
            || {
                Response::builder()
                    .header("content-type", "application/grpc")
                    .body(BodyExt::boxed(Full::new(Bytes::from_static(SERVING))))
                    .unwrap()
            },
            "response has no grpc-status",
        ),
    ];
    for (respond, reason) in cases {
        let (addr, _) = scripted_grpc_server(respond).await;
        assert_eq!(run(&grpc(""), addr, TIMEOUT).await, Err(reason.to_string()));
    }
}

/// An HTTP check of a TLS upstream goes over TLS and speaks HTTP/2 when the target picks `h2`
/// by ALPN; a certificate for another name fails the check at the handshake.
#[tokio::test]
async fn an_http_check_of_a_tls_target_goes_over_tls() {
    use rustls::pki_types::ServerName;
    use tollgate::upstream::probe::ProbeTls;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    if let Ok(mut v) = seen.lock() {
                        v.push(req.version());
                    }
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let (front, der, _) = common::tls_front(backend).await;
    let tls = |name: &str| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).expect("root");
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        ProbeTls {
            config: Arc::new(config),
            server_name: ServerName::try_from(name.to_string()).expect("name"),
        }
    };
    let check = |tls: ProbeTls| async move {
        tokio::time::timeout(
            TIMEOUT + Duration::from_secs(10),
            probe(&http("/health"), front, TIMEOUT, Some(&tls)),
        )
        .await
        .expect("probe must finish within its own timeout")
        .map_err(|e| e.to_string())
    };
    assert_eq!(check(tls("localhost")).await, Ok(()));
    assert_eq!(
        versions.lock().map(|v| v.clone()).unwrap_or_default(),
        [Version::HTTP_2]
    );
    let wrong = check(tls("other.example")).await.expect_err("wrong name");
    assert!(wrong.starts_with("TLS handshake failed"), "{wrong}");
}
