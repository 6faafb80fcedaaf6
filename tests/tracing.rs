//! Tracing end to end: the trace module's API against real OTLP receivers on ephemeral ports —
//! tonic serving the collector's `TraceService` (gRPC) and a hyper server taking
//! `POST /v1/traces` (HTTP/protobuf) — asserting what a collector would store.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use pingora_http::RequestHeader;
use prost::Message;
use tokio::sync::{mpsc, Mutex};
use tollgate::telemetry::trace::{self, RequestSpan, TracingSection};

/// The pipeline is process-wide: tests that start one take turns.
static PIPELINE: Mutex<()> = Mutex::const_new(());

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
/// Protects the hang-catching timeouts from a slow, shared CI machine.
const NO_HANG: Duration = Duration::from_secs(30);

/// One export as the receiver saw it.
struct Received {
    request: ExportTraceServiceRequest,
    headers: http::HeaderMap,
    /// The HTTP path, or `grpc`.
    path: String,
}

/// A span as a collector stores it, with its resource and scope.
#[derive(Debug, Clone)]
struct Stored {
    span: Span,
    service_name: String,
    scope: String,
}

struct Receiver {
    endpoint: String,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    /// Everything received so far (call after a flush: exports are answered only after the
    /// receiver has queued them).
    fn drain(&mut self) -> (Vec<Stored>, Vec<Received>) {
        let mut exports = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            exports.push(r);
        }
        (stored(&exports), exports)
    }
}

fn stored(exports: &[Received]) -> Vec<Stored> {
    let mut out = Vec::new();
    for export in exports {
        for rs in &export.request.resource_spans {
            let service_name = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for span in &ss.spans {
                    out.push(Stored {
                        span: span.clone(),
                        service_name: service_name.clone(),
                        scope: scope.clone(),
                    });
                }
            }
        }
    }
    out
}

struct GrpcCollector(mpsc::UnboundedSender<Received>);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let _ = self.0.send(Received {
            request: request.into_inner(),
            headers,
            path: "grpc".into(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcCollector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Receiver {
        endpoint: format!("http://{addr}"),
        rx,
    }
}

async fn http_receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel::<Received>();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(request) => {
                                    let _ = tx.send(Received {
                                        request,
                                        headers: parts.headers,
                                        path: parts.uri.path().to_string(),
                                    });
                                    200
                                }
                                Err(_) => 400,
                            };
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver {
        endpoint: format!("http://{addr}"),
        rx,
    }
}

/// Starts the pipeline from a `[tracing]` table, as the gateway does at startup.
fn start_pipeline(table: &str) {
    let section: TracingSection = toml::from_str(table).unwrap();
    let settings = section.validate().unwrap();
    assert!(settings.enabled());
    trace::init(&settings).unwrap();
}

/// Exports everything finished so far and waits for the receiver's answer.
async fn flush() {
    tokio::task::spawn_blocking(trace::force_flush)
        .await
        .unwrap()
        .unwrap();
}

async fn stop() {
    tokio::task::spawn_blocking(trace::shutdown).await.unwrap();
}

fn incoming(method: &str, path: &str, traceparent: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
    req.insert_header("host", "api.example.com:8443").unwrap();
    if let Some(tp) = traceparent {
        req.insert_header("traceparent", tp.to_string()).unwrap();
        req.insert_header("tracestate", "vendor=abc").unwrap();
    }
    req
}

fn client_ip() -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)))
}

fn header(req: &RequestHeader, name: &str) -> Option<String> {
    req.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(span: &Span, key: &str) -> Option<String> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        Some(other) => panic!("{key} is not a string: {other:?}"),
        None => None,
    }
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(i)) => Some(*i),
        Some(other) => panic!("{key} is not an int: {other:?}"),
        None => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn status_code(span: &Span) -> StatusCode {
    let code = span.status.as_ref().map_or(0, |s| s.code);
    StatusCode::try_from(code).unwrap()
}

/// OTLP span flags: the parent context's is-remote bit is known (0x100) and set (0x200).
const PARENT_IS_REMOTE_KNOWN: u32 = 0x100;
const PARENT_IS_REMOTE: u32 = 0x200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_has_server_and_attempt_spans_linked_to_the_callers_trace() {
    let _turn = PIPELINE.lock().await;
    let mut receiver = grpc_receiver().await;
    start_pipeline(&format!(
        r#"
        enabled = true
        protocol = "grpc"
        endpoint = "{}"
        service_name = "tollgate-test"
        sampler = "parentbased_traceidratio"
        ratio = 1.0
        headers = {{ "x-api-key" = "test-key" }}
        "#,
        receiver.endpoint
    ));

    let req = incoming(
        "GET",
        "/api/users/42?token=secret",
        Some(&format!("00-{TRACE}-{PARENT}-01")),
    );
    let mut span = RequestSpan::start(&req, client_ip(), Some("api.example.com:8443"), "1.1")
        .expect("tracing is on");
    assert_eq!(span.trace_id().as_deref(), Some(TRACE));
    span.set_route("/api/users/{id}", "users", "user-svc");

    // Two attempts: the first fails to connect, the retry gets a 200.
    let first = span.start_attempt("10.0.0.7:8080".parse().expect("address"), 1);
    let mut first_upstream = req.clone();
    first.inject(&mut first_upstream);
    first.finish(None, Some("connect_refused"));
    let second = span.start_attempt("10.0.0.8:8080".parse().expect("address"), 2);
    let mut second_upstream = req.clone();
    second.inject(&mut second_upstream);
    second.finish(Some(200), None);
    span.finish(200, None);
    flush().await;

    let (spans, exports) = receiver.drain();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(exports.iter().all(|e| e.path == "grpc"));
    assert!(exports
        .iter()
        .all(|e| e.headers.get("x-api-key").unwrap() == "test-key"));
    assert!(spans
        .iter()
        .all(|s| s.service_name == "tollgate-test" && s.scope == "tollgate"));

    let server = &spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("a server span")
        .span;
    assert_eq!(server.name, "GET /api/users/{id}");
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(
        server.flags & (PARENT_IS_REMOTE_KNOWN | PARENT_IS_REMOTE),
        PARENT_IS_REMOTE_KNOWN | PARENT_IS_REMOTE
    );
    assert_eq!(
        str_attr(server, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        str_attr(server, "url.path").as_deref(),
        Some("/api/users/42")
    );
    assert_eq!(
        str_attr(server, "url.query"),
        None,
        "queries may hold secrets"
    );
    assert_eq!(
        str_attr(server, "http.route").as_deref(),
        Some("/api/users/{id}")
    );
    assert_eq!(int_attr(server, "http.response.status_code"), Some(200));
    assert_eq!(
        str_attr(server, "client.address").as_deref(),
        Some("203.0.113.9")
    );
    assert_eq!(
        str_attr(server, "server.address").as_deref(),
        Some("api.example.com")
    );
    assert_eq!(int_attr(server, "server.port"), Some(8443));
    assert_eq!(
        str_attr(server, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(str_attr(server, "tollgate.route").as_deref(), Some("users"));
    assert_eq!(
        str_attr(server, "tollgate.upstream").as_deref(),
        Some("user-svc")
    );
    assert_eq!(str_attr(server, "error.type"), None);
    assert_eq!(status_code(server), StatusCode::Unset);

    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Client as i32)
        .map(|s| &s.span)
        .collect();
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.name, "GET");
        assert_eq!(hex(&attempt.trace_id), TRACE);
        assert_eq!(
            attempt.parent_span_id, server.span_id,
            "child of the server span"
        );
        assert_eq!(
            attempt.flags & (PARENT_IS_REMOTE_KNOWN | PARENT_IS_REMOTE),
            PARENT_IS_REMOTE_KNOWN,
            "a local parent"
        );
        assert_eq!(
            str_attr(attempt, "http.request.method").as_deref(),
            Some("GET")
        );
        assert_eq!(int_attr(attempt, "server.port"), Some(8080));
    }
    let by_attempt = |n: i64| {
        *attempts
            .iter()
            .find(|s| int_attr(s, "tollgate.attempt") == Some(n))
            .unwrap()
    };
    let (failed, retried) = (by_attempt(1), by_attempt(2));
    assert_eq!(
        str_attr(failed, "server.address").as_deref(),
        Some("10.0.0.7")
    );
    assert_eq!(
        str_attr(failed, "error.type").as_deref(),
        Some("connect_refused")
    );
    assert_eq!(int_attr(failed, "http.response.status_code"), None);
    assert_eq!(status_code(failed), StatusCode::Error);
    assert_eq!(int_attr(failed, "http.request.resend_count"), None);
    assert_eq!(
        str_attr(retried, "server.address").as_deref(),
        Some("10.0.0.8")
    );
    assert_eq!(int_attr(retried, "http.response.status_code"), Some(200));
    assert_eq!(int_attr(retried, "http.request.resend_count"), Some(1));
    assert_eq!(status_code(retried), StatusCode::Unset);

    // Each upstream request names its own attempt as the parent, replacing the caller's id.
    for (upstream, attempt) in [(&first_upstream, failed), (&second_upstream, retried)] {
        assert_eq!(
            header(upstream, "traceparent").unwrap(),
            format!("00-{TRACE}-{}-01", hex(&attempt.span_id))
        );
        assert_eq!(
            header(upstream, "tracestate").as_deref(),
            Some("vendor=abc")
        );
    }
    stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_posts_to_v1_traces_with_configured_headers() {
    let _turn = PIPELINE.lock().await;
    let mut receiver = http_receiver().await;
    // The base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT: `/v1/traces` is appended.
    start_pipeline(&format!(
        r#"
        enabled = true
        protocol = "http/protobuf"
        endpoint = "{}"
        service_name = "tollgate-http"
        headers = {{ "x-api-key" = "http-key" }}
        "#,
        receiver.endpoint
    ));

    // No traceparent: the gateway starts the trace.
    let req = incoming("POST", "/orders", None);
    let mut span = RequestSpan::start(&req, client_ip(), Some("[2001:db8::1]:443"), "2").unwrap();
    span.set_route("/orders", "orders", "order-svc");
    let attempt = span.start_attempt("[2001:db8::2]:9000".parse().expect("address"), 1);
    let mut upstream = req.clone();
    attempt.inject(&mut upstream);
    attempt.finish(Some(503), None);
    span.finish(503, None);
    flush().await;

    let (spans, exports) = receiver.drain();
    assert!(!exports.is_empty());
    for export in &exports {
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(
            export.headers.get("content-type").unwrap(),
            "application/x-protobuf"
        );
        assert_eq!(export.headers.get("x-api-key").unwrap(), "http-key");
    }
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.service_name == "tollgate-http"));
    let server = &spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .unwrap()
        .span;
    let client = &spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Client as i32)
        .unwrap()
        .span;
    assert_eq!(server.name, "POST /orders");
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        str_attr(server, "server.address").as_deref(),
        Some("2001:db8::1")
    );
    assert_eq!(int_attr(server, "server.port"), Some(443));
    assert_eq!(
        str_attr(server, "network.protocol.version").as_deref(),
        Some("2")
    );
    // A 5xx without a reason is recorded with the status code as the error type.
    assert_eq!(str_attr(server, "error.type").as_deref(), Some("503"));
    assert_eq!(status_code(server), StatusCode::Error);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(
        str_attr(client, "server.address").as_deref(),
        Some("2001:db8::2")
    );
    assert_eq!(int_attr(client, "server.port"), Some(9000));
    assert_eq!(str_attr(client, "error.type").as_deref(), Some("503"));
    assert_eq!(
        header(&upstream, "traceparent").unwrap(),
        format!("00-{}-{}-01", hex(&client.trace_id), hex(&client.span_id))
    );
    assert_eq!(header(&upstream, "tracestate"), None);
    stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_caller_exports_nothing_but_the_upstream_still_gets_flag_00() {
    let _turn = PIPELINE.lock().await;
    let mut receiver = grpc_receiver().await;
    start_pipeline(&format!(
        "enabled = true\nprotocol = \"grpc\"\nendpoint = \"{}\"\nratio = 1.0",
        receiver.endpoint
    ));

    let req = incoming("GET", "/a", Some(&format!("00-{TRACE}-{PARENT}-00")));
    let mut span = RequestSpan::start(&req, client_ip(), None, "1.1")
        .expect("an unsampled request still gets a span, for propagation");
    assert_eq!(span.trace_id().as_deref(), Some(TRACE));
    span.set_route("/a", "a", "a-svc");
    let attempt = span.start_attempt("10.0.0.7:8080".parse().expect("address"), 1);
    let mut upstream = req.clone();
    attempt.inject(&mut upstream);
    attempt.finish(Some(200), None);
    span.finish(200, None);

    let traceparent = header(&upstream, "traceparent").unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "00"),
        "{traceparent}"
    );
    assert_ne!(parts[2], PARENT, "the gateway's own span id");
    assert_eq!(
        header(&upstream, "tracestate").as_deref(),
        Some("vendor=abc")
    );

    // A sampled request afterwards proves the pipeline works and has flushed everything
    // before it: only that request may arrive.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let req = incoming("GET", "/b", Some(&format!("00-{other}-{PARENT}-01")));
    let span = RequestSpan::start(&req, client_ip(), None, "1.1").unwrap();
    span.start_attempt("10.0.0.7:8080".parse().expect("address"), 1)
        .finish(Some(200), None);
    span.finish(200, None);
    flush().await;

    let (spans, _) = receiver.drain();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| hex(&s.span.trace_id) == other));
    stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_caller_is_kept_even_with_ratio_zero_and_new_traces_are_not() {
    let _turn = PIPELINE.lock().await;
    let mut receiver = grpc_receiver().await;
    start_pipeline(&format!(
        "enabled = true\nprotocol = \"grpc\"\nendpoint = \"{}\"\n\
         sampler = \"parentbased_traceidratio\"\nratio = 0.0",
        receiver.endpoint
    ));

    // No caller decision: ratio 0 drops it, and the upstream learns so.
    let root = incoming("GET", "/new", None);
    let span = RequestSpan::start(&root, client_ip(), None, "1.1").unwrap();
    let root_trace = span.trace_id().unwrap();
    let attempt = span.start_attempt("10.0.0.7:8080".parse().expect("address"), 1);
    let mut upstream = root.clone();
    attempt.inject(&mut upstream);
    attempt.finish(Some(200), None);
    span.finish(200, None);
    let traceparent = header(&upstream, "traceparent").unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{root_trace}-")),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-00"), "{traceparent}");

    // The caller sampled: parent-based keeps it despite the ratio.
    let req = incoming("GET", "/kept", Some(&format!("00-{TRACE}-{PARENT}-01")));
    let span = RequestSpan::start(&req, client_ip(), None, "1.1").unwrap();
    let attempt = span.start_attempt("10.0.0.7:8080".parse().expect("address"), 1);
    let mut upstream = req.clone();
    attempt.inject(&mut upstream);
    attempt.finish(Some(200), None);
    span.finish(200, None);
    assert!(header(&upstream, "traceparent").unwrap().ends_with("-01"));
    flush().await;

    let (spans, _) = receiver.drain();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| hex(&s.span.trace_id) == TRACE));
    stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_collector_never_holds_up_a_request() {
    let _turn = PIPELINE.lock().await;
    // A port that was just free: connections are refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for protocol in ["grpc", "http/protobuf"] {
        start_pipeline(&format!(
            r#"
            enabled = true
            protocol = "{protocol}"
            endpoint = "http://{closed}"
            timeout = "500ms"
            max_queue_size = 16
            scheduled_delay = "10ms"
            "#
        ));
        let requests = tokio::task::spawn_blocking(|| {
            let started = Instant::now();
            for i in 0..2000u32 {
                let req = incoming("GET", "/x", Some(&format!("00-{TRACE}-{PARENT}-01")));
                let mut span = RequestSpan::start(&req, client_ip(), None, "1.1").unwrap();
                span.set_route("/x", "x", "x-svc");
                let attempt =
                    span.start_attempt("10.0.0.7:8080".parse().expect("address"), i % 3 + 1);
                let mut upstream = req.clone();
                attempt.inject(&mut upstream);
                attempt.finish(Some(200), None);
                span.finish(200, None);
            }
            started.elapsed()
        });
        let took = tokio::time::timeout(NO_HANG, requests)
            .await
            .unwrap_or_else(|_| panic!("{protocol}: requests hung on a dead collector"))
            .unwrap();
        eprintln!("{protocol}: 2000 traced requests against a dead collector took {took:?}");
        tokio::time::timeout(NO_HANG, stop())
            .await
            .unwrap_or_else(|_| panic!("{protocol}: shutdown hung on a dead collector"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_again_moves_exports_to_the_new_collector_and_off_switches_it_off() {
    let _turn = PIPELINE.lock().await;
    let mut old = http_receiver().await;
    let mut new = grpc_receiver().await;
    start_pipeline(&format!(
        "enabled = true\nprotocol = \"http/protobuf\"\nendpoint = \"{}\"",
        old.endpoint
    ));
    let before = RequestSpan::start(&incoming("GET", "/1", None), None, None, "1.1").unwrap();
    before.finish(200, None);

    // As a reload would: new settings, from a thread that is not on any runtime (tonic's
    // channel needs one at build time: the pipeline brings its own). The replaced pipeline
    // flushes what it holds to the old collector.
    let table = format!(
        "enabled = true\nprotocol = \"grpc\"\nendpoint = \"{}\"",
        new.endpoint
    );
    std::thread::spawn(move || start_pipeline(&table))
        .join()
        .unwrap();
    let after = RequestSpan::start(&incoming("GET", "/2", None), None, None, "1.1").unwrap();
    after.finish(200, None);
    flush().await;

    let (spans, _) = new.drain();
    assert_eq!(spans.len(), 1);
    assert_eq!(str_attr(&spans[0].span, "url.path").as_deref(), Some("/2"));
    let flushed = tokio::time::timeout(NO_HANG, old.rx.recv())
        .await
        .expect("the replaced pipeline flushes to its collector")
        .unwrap();
    let spans = stored(&[flushed]);
    assert_eq!(spans.len(), 1);
    assert_eq!(str_attr(&spans[0].span, "url.path").as_deref(), Some("/1"));

    // Tracing off: no spans, and the client's traceparent is left for the proxy to forward.
    let off: TracingSection = toml::from_str("enabled = false").unwrap();
    trace::init(&off.validate().unwrap()).unwrap();
    let req = incoming("GET", "/3", Some(&format!("00-{TRACE}-{PARENT}-01")));
    assert!(RequestSpan::start(&req, None, None, "1.1").is_none());
    stop().await;
}

// ---------------------------------------------------------------------------------------------
// Through the real gateway
// ---------------------------------------------------------------------------------------------

#[path = "common/brokers.rs"]
mod brokers;
#[path = "common/mod.rs"]
mod common;

/// Polls the receiver until `want` spans of `trace_id` arrived (or the hang catcher fires).
async fn spans_of(rx: &mut Receiver, trace_id: &str, want: usize) -> Vec<Stored> {
    let deadline = Instant::now() + NO_HANG;
    let mut all = Vec::new();
    loop {
        let (spans, _) = rx.drain();
        all.extend(spans);
        let mine: Vec<Stored> = all
            .iter()
            .filter(|s| hex(&s.span.trace_id) == trace_id)
            .cloned()
            .collect();
        if mine.len() >= want || Instant::now() > deadline {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_exports_server_and_attempt_spans_and_propagates_the_trace() {
    let mut rx = grpc_receiver().await;
    let up = common::Upstream::echo("svc").await;
    let gw = common::Gateway::start(&format!(
        r#"
[tracing]
enabled = true
protocol = "grpc"
endpoint = "{}"
scheduled_delay = "100ms"

[upstreams.svc]
targets = ["{}"]

[routes.api]
prefix = "/api"
upstream = "svc"
"#,
        rx.endpoint, up.addr
    ))
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let v: serde_json::Value = common::client()
        .get(gw.url("/api/items?x=1"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upstream_tp = v["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        upstream_tp.starts_with(&format!("00-{trace_id}-")),
        "{upstream_tp}"
    );
    assert!(upstream_tp.ends_with("-01"), "{upstream_tp}");
    let spans = spans_of(&mut rx, trace_id, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("server span");
    let client = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Client as i32)
        .expect("client span");
    assert_eq!(server.span.name, "GET /api/*");
    assert_eq!(hex(&server.span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        str_attr(&server.span, "http.route").as_deref(),
        Some("/api/*")
    );
    assert_eq!(
        str_attr(&server.span, "tollgate.route").as_deref(),
        Some("api")
    );
    assert_eq!(
        str_attr(&server.span, "tollgate.upstream").as_deref(),
        Some("svc")
    );
    assert_eq!(
        int_attr(&server.span, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(hex(&client.span.parent_span_id), hex(&server.span.span_id));
    // The upstream saw the attempt span as its parent.
    assert!(
        upstream_tp.contains(&hex(&client.span.span_id)),
        "{upstream_tp}"
    );

    // An unsampled caller: nothing exported, the flag passed on.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let c = common::client();
    let v: serde_json::Value = c
        .get(gw.url("/api/items"))
        .header("traceparent", format!("00-{unsampled}-b7ad6b7169203331-00"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tp = v["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        tp.starts_with(&format!("00-{unsampled}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    // Then a sampled request on the same keep-alive connection (so its spans end after the
    // unsampled one's): once they have arrived, spans of the unsampled request would have too,
    // from the same export queue. No time is guessed.
    let marker = "5a3c1e0f9b2d4c6e8f7a1b3c5d7e9f01";
    let resp = c
        .get(gw.url("/api/items"))
        .header("traceparent", format!("00-{marker}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + NO_HANG;
    let mut later = Vec::new();
    while later
        .iter()
        .filter(|s: &&Stored| hex(&s.span.trace_id) == marker)
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the sampled request's spans never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        later.extend(rx.drain().0);
    }
    assert!(
        later.iter().all(|s| hex(&s.span.trace_id) != unsampled),
        "an unsampled trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_io_has_client_spans_in_the_requests_trace() {
    use jsonwebtoken::{encode, jwk::Jwk, Algorithm, DecodingKey, EncodingKey, Header};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
    let read = |name: &str| std::fs::read(format!("{fixtures}/{name}")).expect("fixture");
    let jwk = |pem: &str, kid: &str| {
        let key = DecodingKey::from_rsa_pem(&read(pem)).expect("pem");
        let mut jwk = Jwk::from_decoding_key(&key, None).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).expect("json")
    };
    // The first fetch (before the route serves) knows k1; later ones k1 and k2, so a token
    // signed with k2 makes the gateway fetch again while the request waits.
    let first = serde_json::json!({ "keys": [jwk("rsa1.pub.pem", "k1")] });
    let later =
        serde_json::json!({ "keys": [jwk("rsa1.pub.pem", "k1"), jwk("rsa2.pub.pem", "k2")] });
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let jwks = common::Upstream::start(move |_req| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        let body = if n == 0 { first.clone() } else { later.clone() };
        async move { common::json_response(200, &body) }
    })
    .await;
    let redis = common::RedisServer::start();
    let mut rx = grpc_receiver().await;
    let up = common::Upstream::echo("svc").await;
    let gw = common::Gateway::start(&format!(
        r#"
[tracing]
enabled = true
protocol = "grpc"
endpoint = "{}"
scheduled_delay = "100ms"

[upstreams.svc]
targets = ["{}"]

[routes.api]
prefix = "/api"
upstream = "svc"

[routes.api.plugins.jwt-auth]
providers = [{{ issuer = "https://idp.test", jwks_url = "http://{}/jwks.json" }}]

[routes.api.plugins.rate-limit]
limits = [{{ rate = "1000/s", burst = 1000, key = "client_ip" }}]

[routes.api.plugins.rate-limit.backend.redis]
url = "redis://127.0.0.1:{}"
"#,
        rx.endpoint, up.addr, jwks.addr, redis.port
    ))
    .await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    let claims = serde_json::json!({
        "iss": "https://idp.test",
        "sub": "alice",
        "exp": jsonwebtoken::get_current_timestamp() + 300,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k2".to_owned());
    let key = EncodingKey::from_rsa_pem(&read("rsa2.key.pem")).expect("key");
    let token = encode(&header, &claims, &key).expect("token");

    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let resp = common::client()
        .get(gw.url("/api/items"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "the unknown kid caused one fetch"
    );

    // Server span, the JWKS GET, the Redis EVALSHA and the upstream attempt.
    let spans = spans_of(&mut rx, trace_id, 4).await;
    let server = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("server span");
    let server_id = hex(&server.span.span_id);
    let jwks_span = spans
        .iter()
        .find(|s| str_attr(&s.span, "tollgate.plugin").as_deref() == Some("jwt-auth"))
        .unwrap_or_else(|| panic!("no JWKS span: {spans:#?}"));
    assert_eq!(jwks_span.span.name, "GET");
    assert_eq!(jwks_span.span.kind, SpanKind::Client as i32);
    assert_eq!(hex(&jwks_span.span.parent_span_id), server_id);
    assert_eq!(
        str_attr(&jwks_span.span, "url.full"),
        Some(format!("http://{}/jwks.json", jwks.addr))
    );
    assert_eq!(int_attr(&jwks_span.span, "tollgate.jwks.keys"), Some(2));
    let redis_span = spans
        .iter()
        .find(|s| str_attr(&s.span, "db.system.name").as_deref() == Some("redis"))
        .unwrap_or_else(|| panic!("no Redis span: {spans:#?}"));
    assert_eq!(redis_span.span.name, "EVALSHA");
    assert_eq!(hex(&redis_span.span.parent_span_id), server_id);
    assert_eq!(
        int_attr(&redis_span.span, "server.port"),
        Some(i64::from(redis.port))
    );

    // Redis gone: the span records the failure (the limit fails open by default).
    drop(redis);
    let failing = "6bf92f3577b34da6a3ce929d0e0e4738";
    let resp = common::client()
        .get(gw.url("/api/items"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{failing}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let spans = spans_of(&mut rx, failing, 3).await;
    let redis_span = spans
        .iter()
        .find(|s| str_attr(&s.span, "db.system.name").as_deref() == Some("redis"))
        .unwrap_or_else(|| panic!("no Redis span: {spans:#?}"));
    assert!(
        str_attr(&redis_span.span, "error.type").is_some(),
        "{redis_span:#?}"
    );
    assert_eq!(
        redis_span.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    // The cached token needed no second JWKS fetch, so no JWKS span in this trace.
    assert!(!spans
        .iter()
        .any(|s| str_attr(&s.span, "tollgate.plugin").as_deref() == Some("jwt-auth")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_carries_the_producer_span_that_continues_the_trace() {
    let mut rx = grpc_receiver().await;
    let nats = brokers::Nats::shared().await;
    let stream = brokers::unique("TRACED");
    let subject = brokers::unique("traced");
    nats.create_stream(&stream, &[&subject]).await;
    let gw = common::Gateway::start(&format!(
        r#"
[tracing]
enabled = true
protocol = "grpc"
endpoint = "{}"
scheduled_delay = "100ms"

[brokers.nats]
kind = "nats"
servers = ["{}"]

[routes.events]
exact = "/events"
[routes.events.publish]
broker = "nats"
subject = "{subject}"
"#,
        rx.endpoint,
        nats.url()
    ))
    .await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let resp = common::client()
        .post(gw.url("/events"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body("traced")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let spans = spans_of(&mut rx, trace_id, 2).await;
    let server = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("server span");
    let producer = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Producer as i32)
        .expect("producer span");
    assert_eq!(producer.span.name, format!("send {subject}"));
    assert_eq!(
        hex(&producer.span.parent_span_id),
        hex(&server.span.span_id)
    );
    assert_eq!(
        str_attr(&producer.span, "messaging.system").as_deref(),
        Some("nats")
    );
    assert_eq!(
        str_attr(&producer.span, "messaging.destination.name").as_deref(),
        Some(subject.as_str())
    );
    assert_eq!(
        str_attr(&producer.span, "messaging.operation.type").as_deref(),
        Some("send")
    );
    // The consumer continues the trace from the producer span.
    let stored = nats.read_stream(&stream, 1).await;
    let headers = stored[0].headers.as_ref().expect("message headers");
    let tp = headers
        .get("traceparent")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert_eq!(
        tp,
        format!("00-{trace_id}-{}-01", hex(&producer.span.span_id)),
        "{tp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_queue_carries_the_producer_span_to_the_responder() {
    use futures_util::StreamExt;
    let mut rx = grpc_receiver().await;
    let nats = brokers::Nats::shared().await;
    let subject = brokers::unique("traced-rpc");
    // The responder answers with the trace context its request carried.
    let responder = nats.connect().await;
    let mut requests = responder
        .subscribe(subject.clone())
        .await
        .expect("subscribe");
    responder.flush().await.expect("flush");
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let tp = m
                .headers
                .as_ref()
                .and_then(|h| h.get("traceparent"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, tp.into()).await;
            }
        }
    });
    let gw = common::Gateway::start(&format!(
        r#"
[tracing]
enabled = true
protocol = "grpc"
endpoint = "{}"
scheduled_delay = "100ms"

[brokers.nats]
kind = "nats"
servers = ["{}"]

[routes.rpc]
exact = "/rpc"
[routes.rpc.request_reply]
broker = "nats"
subject = "{subject}"
timeout = "30s"
"#,
        rx.endpoint,
        nats.url()
    ))
    .await;
    let trace_id = "6cf92f3577b34da6a3ce929d0e0e4738";
    let resp = common::client()
        .post(gw.url("/rpc"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body("traced")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seen = resp.text().await.unwrap();
    let spans = spans_of(&mut rx, trace_id, 2).await;
    let server = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("server span");
    let producer = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Producer as i32)
        .expect("producer span");
    assert_eq!(producer.span.name, format!("send {subject}"));
    assert_eq!(
        hex(&producer.span.parent_span_id),
        hex(&server.span.span_id)
    );
    assert_eq!(str_attr(&producer.span, "error.type"), None);
    assert_eq!(
        seen,
        format!("00-{trace_id}-{}-01", hex(&producer.span.span_id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_streamed_to_a_subscriber_gets_a_receive_span_in_the_producers_trace() {
    let mut rx = grpc_receiver().await;
    let nats = brokers::Nats::shared().await;
    let stream = brokers::unique("RECEIVED");
    let subject = brokers::unique("received");
    nats.create_stream(&stream, &[&subject]).await;
    let gw = common::Gateway::start(&format!(
        r#"
[tracing]
enabled = true
protocol = "grpc"
endpoint = "{}"
scheduled_delay = "100ms"

[brokers.nats]
kind = "nats"
servers = ["{}"]

[routes.events]
exact = "/events"
[routes.events.publish]
broker = "nats"
subject = "{subject}"

[routes.stream]
exact = "/stream"
[routes.stream.subscribe]
broker = "nats"
subject = "{subject}"
"#,
        rx.endpoint,
        nats.url()
    ))
    .await;
    let sse = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut sub = sse.get(gw.url("/stream")).send().await.unwrap();
    assert_eq!(sub.status().as_u16(), 200);
    // The opening comment says the subscription is in place.
    let first = sub.chunk().await.unwrap().unwrap_or_default();
    assert!(first.starts_with(b": subscribed"), "{first:?}");
    let trace_id = "7df92f3577b34da6a3ce929d0e0e4739";
    let resp = common::client()
        .post(gw.url("/events"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body("traced")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data: traced") {
        let chunk = tokio::time::timeout(Duration::from_secs(60), sub.chunk())
            .await
            .expect("the event")
            .unwrap()
            .expect("the stream goes on");
        got.extend_from_slice(&chunk);
    }
    // The span ended once the event was written (the stream was asked for more).
    drop(sub);
    let spans = spans_of(&mut rx, trace_id, 3).await;
    let producer = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Producer as i32)
        .expect("producer span");
    let consumer = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Consumer as i32)
        .expect("consumer span");
    assert_eq!(consumer.span.name, format!("receive {subject}"));
    assert_eq!(
        hex(&consumer.span.parent_span_id),
        hex(&producer.span.span_id)
    );
    assert_eq!(
        str_attr(&consumer.span, "messaging.operation.type").as_deref(),
        Some("receive")
    );
    assert_eq!(
        str_attr(&consumer.span, "messaging.system").as_deref(),
        Some("nats")
    );
}
