//! Every response the gateway makes itself to a gRPC client is a trailers-only gRPC response —
//! on HTTP/2 one HEADERS frame with END_STREAM carrying `grpc-status` — over h2c and over TLS h2,
//! with the codes docs/grpc.md promises: no route, plugin denials, rate limits, body limits,
//! unreachable or unhealthy upstreams, upstream timeouts and the client's `grpc-timeout`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, Upstream};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;

/// A tonic server with the health service.
async fn grpc_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::Serving)
        .await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

/// The gateway under test: the harness's h2c listener and a TLS listener with h2, routes told
/// apart by authority. Returns the gateway, the TLS port and the listener's certificate (PEM).
struct Setup {
    gw: Gateway,
    tls_port: u16,
    cert_pem: String,
    // Kept alive for the gateway's routes.
    _hanging: Upstream,
}

async fn setup() -> Setup {
    let grpc = grpc_upstream().await;
    // Accepts calls and never answers: the upstream timeouts.
    let hanging = Upstream::start(|_req| async move {
        std::future::pending::<()>().await;
        common::json_response(200, &serde_json::json!({}))
    })
    .await;
    let down = common::closed_addr();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem())
        .expect("write key");
    let tls_port = common::free_port();
    let key_sha = hex::encode(sha2::Sha256::digest(b"open-sesame"));
    let hanging_addr = hanging.addr;
    let cfg = format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:{tls_port}"
tls = {{ cert_file = "cert.pem", key_file = "key.pem", h2 = true }}

[upstreams.grpc]
targets = ["{grpc}"]
protocol = "h2c"

[upstreams.down]
targets = ["{down}"]
protocol = "h2c"

[upstreams.unhealthy]
targets = ["{down}"]
protocol = "h2c"
panic_mode = false
health_check = {{ type = "tcp", interval = "1h" }}

[upstreams.slow]
targets = ["{hanging_addr}"]
protocol = "h2c"
read_timeout = "300ms"

[upstreams.hanging]
targets = ["{hanging_addr}"]
protocol = "h2c"

[routes.grpc]
prefix = "/"
host = "grpc.internal"
upstream = "grpc"

[routes.denied]
prefix = "/"
host = "denied.internal"
upstream = "grpc"
plugins.ip-restriction = {{ deny = ["127.0.0.0/8"] }}

[routes.keyed]
prefix = "/"
host = "keyed.internal"
upstream = "grpc"
plugins.key-auth = {{ consumers = [{{ name = "shop", key_sha256 = "{key_sha}" }}] }}

[routes.limited]
prefix = "/"
host = "limited.internal"
upstream = "grpc"
plugins.rate-limit = {{ limits = [{{ rate = "1/min", burst = 1 }}] }}

[routes.small]
prefix = "/"
host = "small.internal"
upstream = "grpc"
plugins.body-limit = {{ max_bytes = 8 }}

[routes.down]
prefix = "/"
host = "down.internal"
upstream = "down"

[routes.unhealthy]
prefix = "/"
host = "unhealthy.internal"
upstream = "unhealthy"

[routes.slow]
prefix = "/"
host = "slow.internal"
upstream = "slow"

[routes.hanging]
prefix = "/"
host = "hanging.internal"
upstream = "hanging"
"#
    );
    let gw = Gateway::start_in(dir, &cfg).await;
    Setup {
        gw,
        tls_port,
        cert_pem: cert.cert.pem(),
        _hanging: hanging,
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    H2c,
    TlsH2,
}

type Io = Box<dyn Stream>;
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection to the gateway: plaintext (h2c by prior knowledge) or TLS with ALPN h2.
async fn connect(s: &Setup, transport: Transport) -> Io {
    match transport {
        Transport::H2c => Box::new(
            tokio::net::TcpStream::connect(s.gw.addr)
                .await
                .expect("connect"),
        ),
        Transport::TlsH2 => {
            common::install_crypto();
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            let der = rustls::pki_types::CertificateDer::from_pem_slice(s.cert_pem.as_bytes())
                .expect("pem");
            roots.add(der).expect("root");
            let mut config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.tls_port))
                .await
                .expect("connect tls");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .expect("tls handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            Box::new(tls)
        }
    }
}

/// A tonic health client talking to the gateway as `authority`.
async fn health_client(
    s: &Setup,
    transport: Transport,
    authority: &str,
) -> HealthClient<tonic::transport::Channel> {
    let io = std::sync::Mutex::new(Some(connect(s, transport).await));
    let connector = tower_service_fn(move || {
        io.lock()
            .expect("lock")
            .take()
            .map(hyper_util::rt::TokioIo::new)
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .expect("endpoint")
        .connect_with_connector(connector)
        .await
        .expect("channel through the gateway");
    HealthClient::new(channel)
}

/// A connector handing out one prepared connection (tonic connects once per channel).
fn tower_service_fn<F>(
    take: F,
) -> impl tower_service::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<Io>,
    Error = std::io::Error,
    Future = std::future::Ready<std::io::Result<hyper_util::rt::TokioIo<Io>>>,
> + Clone
       + Send
       + 'static
where
    F: Fn() -> Option<hyper_util::rt::TokioIo<Io>> + Send + Sync + 'static,
{
    struct Once<F>(Arc<F>);
    impl<F> Clone for Once<F> {
        fn clone(&self) -> Self {
            Once(self.0.clone())
        }
    }
    impl<F> tower_service::Service<http::Uri> for Once<F>
    where
        F: Fn() -> Option<hyper_util::rt::TokioIo<Io>>,
    {
        type Response = hyper_util::rt::TokioIo<Io>;
        type Error = std::io::Error;
        type Future = std::future::Ready<std::io::Result<Self::Response>>;
        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _uri: http::Uri) -> Self::Future {
            std::future::ready(
                (self.0)().ok_or_else(|| {
                    std::io::Error::other("the test's one connection is already used")
                }),
            )
        }
    }
    Once(Arc::new(take))
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: "shop.v1.Orders".to_string(),
    }
}

/// One call with a real gRPC client; the status it ends with.
async fn call_status(s: &Setup, transport: Transport, authority: &str) -> tonic::Status {
    let mut c = health_client(s, transport, authority).await;
    let call = tokio::time::timeout(Duration::from_secs(20), c.check(check()));
    match call.await.expect("the gateway answers in time") {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[tokio::test]
async fn gateway_errors_reach_grpc_clients_with_their_codes() {
    let s = setup().await;
    for transport in [Transport::H2c, Transport::TlsH2] {
        let cases = [
            (
                "unknown.internal",
                tonic::Code::Unimplemented,
                "route_not_found",
            ),
            (
                "denied.internal",
                tonic::Code::PermissionDenied,
                "ip_forbidden",
            ),
            (
                "keyed.internal",
                tonic::Code::Unauthenticated,
                "missing_api_key",
            ),
            (
                "small.internal",
                tonic::Code::ResourceExhausted,
                "body_too_large",
            ),
            (
                "down.internal",
                tonic::Code::Unavailable,
                "upstream_unreachable",
            ),
            (
                "unhealthy.internal",
                tonic::Code::Unavailable,
                "no_healthy_target",
            ),
            (
                "slow.internal",
                tonic::Code::DeadlineExceeded,
                "upstream_timeout",
            ),
        ];
        for (authority, code, gateway_code) in cases {
            eprintln!("case {transport:?} {authority}");
            let status = call_status(&s, transport, authority).await;
            assert_eq!(status.code(), code, "{transport:?} {authority}: {status:?}");
            assert!(
                status.message().contains(gateway_code),
                "{transport:?} {authority}: {status:?}"
            );
        }
    }
}

#[tokio::test]
async fn rate_limited_grpc_calls_are_resource_exhausted() {
    let s = setup().await;
    // Burst 1 at 1/min: the first call passes, every later one in the test is limited.
    let first = call_status(&s, Transport::H2c, "limited.internal").await;
    assert_eq!(first.code(), tonic::Code::Ok, "{first:?}");
    for transport in [Transport::H2c, Transport::TlsH2] {
        let status = call_status(&s, transport, "limited.internal").await;
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{transport:?}: {status:?}"
        );
    }
}

#[tokio::test]
async fn passing_calls_still_reach_the_upstream() {
    let s = setup().await;
    for transport in [Transport::H2c, Transport::TlsH2] {
        let status = call_status(&s, transport, "grpc.internal").await;
        assert_eq!(status.code(), tonic::Code::Ok, "{transport:?}: {status:?}");
        let mut c = health_client(&s, transport, "keyed.internal").await;
        let mut req = tonic::Request::new(check());
        req.metadata_mut()
            .insert("x-api-key", "open-sesame".parse().expect("metadata"));
        c.check(req).await.expect("a call with the key passes");
    }
}

// ---- the wire shape, frame by frame ----

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", no Huffman; short strings only.
fn hpack_literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// Sends one gRPC call on stream 1 over a raw HTTP/2 connection and returns the frames the
/// gateway sent on that stream, as (type, flags), until the stream ended.
async fn raw_call_frames(mut io: Io, authority: &str, extra: &[(&str, &str)]) -> Vec<(u8, u8)> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        hpack_literal(&mut block, n, v);
    }
    out.extend(frame(HEADERS, END_HEADERS, 1, &block));
    // One empty gRPC message (uncompressed, length 0), ending the request.
    out.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    io.write_all(&out).await.expect("write");

    let read = async {
        let mut seen = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if io.read_exact(&mut head).await.is_err() {
                return seen;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.expect("frame payload");
            if kind == SETTINGS && flags & ACK == 0 {
                io.write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .expect("settings ack");
            }
            if kind == GOAWAY {
                return seen;
            }
            if stream != 1 {
                continue;
            }
            seen.push((kind, flags));
            if kind == RST_STREAM || flags & END_STREAM != 0 {
                return seen;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ends in time")
}

#[tokio::test]
async fn gateway_errors_are_one_headers_frame_ending_the_stream() {
    let s = setup().await;
    for transport in [Transport::H2c, Transport::TlsH2] {
        for (authority, extra) in [
            ("unknown.internal", &[][..]),
            ("denied.internal", &[][..]),
            ("down.internal", &[][..]),
            ("slow.internal", &[][..]),
            // The client's deadline bounds the wait for a silent upstream.
            ("hanging.internal", &[("grpc-timeout", "300m")][..]),
        ] {
            let io = connect(&s, transport).await;
            let frames = raw_call_frames(io, authority, extra).await;
            assert_eq!(
                frames,
                vec![(HEADERS, END_HEADERS | END_STREAM)],
                "{transport:?} {authority}: a trailers-only response is one HEADERS frame \
                 with END_STREAM (no DATA frame, no RST_STREAM)"
            );
        }
    }
}

#[tokio::test]
async fn the_clients_grpc_timeout_is_deadline_exceeded() {
    let s = setup().await;
    for transport in [Transport::H2c, Transport::TlsH2] {
        let io = connect(&s, transport).await;
        let (mut send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(conn);
        let req = http::Request::post("http://hanging.internal/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "300m")
            .body(())
            .expect("request");
        let (resp, mut body) = send.send_request(req, false).expect("send");
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("body");
        let resp = tokio::time::timeout(Duration::from_secs(20), resp)
            .await
            .expect("answered in time")
            .expect("response");
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc", "{transport:?}");
        assert_eq!(h["grpc-status"], "4", "{transport:?}: DEADLINE_EXCEEDED");
        let message = h["grpc-message"].to_str().expect("ascii");
        assert!(message.contains("upstream_timeout"), "{message}");
    }
}

/// An h2 upstream that answers a call's headers and one message, then resets the stream when
/// told to: the upstream breaking off mid-call.
async fn breaking_upstream(reset: Arc<tokio::sync::Notify>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let reset = reset.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let reset = reset.clone();
                    tokio::spawn(async move {
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("head");
                        let Ok(mut send) = respond.send_response(head, false) else {
                            return;
                        };
                        let _ = send
                            .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]), false);
                        reset.notified().await;
                        send.send_reset(h2::Reason::CANCEL);
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_call_the_upstream_breaks_off_ends_with_a_status_not_a_reset() {
    let reset = Arc::new(tokio::sync::Notify::new());
    let up = breaking_upstream(reset.clone()).await;
    let gw = Gateway::start(&format!(
        "[upstreams.breaking]\ntargets = [\"{up}\"]\nprotocol = \"h2c\"\n\
         [routes.breaking]\nprefix = \"/\"\nupstream = \"breaking\"\n"
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post("http://breaking.internal/shop.v1.Orders/Watch")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut body) = send.send_request(req, false).expect("send");
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("body");
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("answered in time")
        .expect("response headers");
    assert_eq!(resp.status(), 200);
    let mut data = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(20), data.data())
        .await
        .expect("the first message in time")
        .expect("a message")
        .expect("data");
    assert_eq!(&first[..], &[0, 0, 0, 0, 2, 8, 1]);
    // Now the upstream breaks off.
    reset.notify_one();
    let trailers = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = data.data().await {
            chunk.expect("no reset, only more data");
        }
        data.trailers().await
    })
    .await
    .expect("the stream ends in time")
    .expect("trailers, not a stream reset")
    .expect("trailers");
    assert_eq!(trailers["grpc-status"], "14", "UNAVAILABLE: {trailers:?}");
}
