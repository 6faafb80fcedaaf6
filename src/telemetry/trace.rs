//! OpenTelemetry tracing: a server span per request, a client span per upstream attempt, W3C
//! trace context in and out, OTLP export (gRPC or HTTP/protobuf) off the request path.
//!
//! The proxy calls, per request: [`RequestSpan::start`] when the request arrives,
//! [`RequestSpan::set_route`] once it is routed, [`RequestSpan::start_attempt`] and
//! [`AttemptSpan::inject`] for each upstream attempt, [`AttemptSpan::finish`] when that attempt
//! has its response header or has failed, and [`RequestSpan::finish`] in the logging phase.
//! Spans carry their parent explicitly (never the thread-local "current" context), because a
//! request's phases run on whichever worker thread polls them.
//!
//! Files: `settings.rs` reads the `[tracing]` table and the `OTEL_*` variables,
//! `pipeline.rs` runs the exporter, `error.rs` says what went wrong with either; this file is
//! what a request sees.

mod error;
mod pipeline;
mod settings;

use std::net::IpAddr;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, TraceFlags, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};
use opentelemetry_semantic_conventions::trace as semconv;
use pingora_http::RequestHeader;

pub use error::{PipelineError, SettingProblem, SettingsError};
pub use pipeline::{force_flush, init, shutdown};
pub use settings::{Protocol, TracingSection, TracingSettings, SAMPLERS};

/// The server span of one request.
pub struct RequestSpan {
    /// Holds the server span, so the attempts' client spans get it as their (local) parent.
    cx: Context,
    /// The tracer of the pipeline the request started on; a reload mid-request doesn't split
    /// a request's spans over two pipelines.
    tracer: SdkTracer,
    /// `GET` … `PATCH`, or `HTTP` for a method outside the semantic conventions' list.
    method: &'static str,
}

impl RequestSpan {
    /// Starts the span for a request (extracting `traceparent`/`tracestate`); `None` when
    /// tracing is off. A request that is not sampled still gets a (non-recording) span, so
    /// its trace id and sampled flag still reach the upstream.
    pub fn start(
        req: &RequestHeader,
        client: Option<IpAddr>,
        server_address: Option<&str>,
        protocol_version: &str,
    ) -> Option<Self> {
        let tracer = pipeline::tracer()?;
        // Most requests come without a context: skip the propagator's lookups for them.
        let parent = if req.headers.contains_key(TRACEPARENT) {
            TraceContextPropagator::new()
                .extract_with_context(&Context::new(), &HeaderExtractor(&req.headers))
        } else {
            Context::new()
        };
        let (method, method_attr) = method_label(&req.method);
        let mut span = tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .start_with_context(&tracer, &parent);
        // Attributes cost allocations; an unsampled request skips them (the samplers here
        // don't look at attributes).
        if span.is_recording() {
            let mut attrs = Vec::with_capacity(8);
            attrs.push(KeyValue::new(semconv::HTTP_REQUEST_METHOD, method_attr));
            if method_attr == OTHER_METHOD {
                attrs.push(KeyValue::new(
                    semconv::HTTP_REQUEST_METHOD_ORIGINAL,
                    req.method.as_str().to_string(),
                ));
            }
            // The query is left out on purpose: it often carries tokens and personal data.
            attrs.push(KeyValue::new(semconv::URL_PATH, req.uri.path().to_string()));
            if let Some(ip) = client {
                attrs.push(KeyValue::new(semconv::CLIENT_ADDRESS, ip.to_string()));
            }
            if let Some(address) = server_address.filter(|a| !a.is_empty()) {
                let (host, port) = split_host_port(address);
                attrs.push(KeyValue::new(semconv::SERVER_ADDRESS, host.to_string()));
                if let Some(port) = port {
                    attrs.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
                }
            }
            if !protocol_version.is_empty() {
                attrs.push(KeyValue::new(
                    semconv::NETWORK_PROTOCOL_VERSION,
                    protocol_version.to_string(),
                ));
            }
            span.set_attributes(attrs);
        }
        Some(RequestSpan {
            cx: parent.with_span(span),
            tracer,
            method,
        })
    }

    /// Names the span `{method} {http_route}` and records the route and upstream.
    pub fn set_route(&mut self, http_route: &str, route: &str, upstream: &str) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.update_name(format!("{} {http_route}", self.method));
        span.set_attributes([
            KeyValue::new(semconv::HTTP_ROUTE, http_route.to_string()),
            KeyValue::new("tollgate.route", route.to_string()),
            KeyValue::new("tollgate.upstream", upstream.to_string()),
        ]);
    }

    /// Starts a client span for one upstream attempt (each retry its own); `attempt` counts
    /// from 1, and `peer` is the target's `host:port`.
    /// The peer is formatted only for a recorded span: most requests are not sampled, and
    /// formatting an address costs as much as the rest of the attempt's tracing.
    pub fn start_attempt(&self, peer: std::net::SocketAddr, attempt: u32) -> AttemptSpan {
        let mut span = self
            .tracer
            .span_builder(self.method)
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &self.cx);
        if span.is_recording() {
            let mut attrs = Vec::with_capacity(5);
            attrs.push(KeyValue::new(
                semconv::HTTP_REQUEST_METHOD,
                method_attr_of(self.method),
            ));
            attrs.push(KeyValue::new(
                semconv::SERVER_ADDRESS,
                peer.ip().to_canonical().to_string(),
            ));
            attrs.push(KeyValue::new(semconv::SERVER_PORT, i64::from(peer.port())));
            attrs.push(KeyValue::new("tollgate.attempt", i64::from(attempt)));
            if attempt > 1 {
                attrs.push(KeyValue::new(
                    semconv::HTTP_REQUEST_RESEND_COUNT,
                    i64::from(attempt - 1),
                ));
            }
            span.set_attributes(attrs);
        }
        AttemptSpan { span }
    }

    /// The parent of plugins' I/O spans, when this request is sampled.
    pub fn plugin_parent(&self) -> Option<tollgate_plugin_api::TraceParent> {
        self.cx
            .span()
            .is_recording()
            .then(|| tollgate_plugin_api::TraceParent::new(self.cx.clone()))
    }

    /// The trace id (32 hex digits) for log correlation, also when the trace is not sampled.
    pub fn trace_id(&self) -> Option<String> {
        let span = self.cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    /// Ends the span with the status sent to the client (`0` if none was sent) and, for a
    /// failure, a short low-cardinality reason (`"upstream_timeout"`); a 5xx without one is
    /// recorded with the status code as its `error.type`.
    pub fn finish(self, status: u16, error_type: Option<&str>) {
        let span = self.cx.span();
        if span.is_recording() {
            if status != 0 {
                span.set_attribute(KeyValue::new(
                    semconv::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(status),
                ));
            }
            // A server span's 4xx is the client's mistake, not an error of this span.
            let error = error_type
                .map(str::to_string)
                .or_else(|| (status >= 500).then(|| status.to_string()));
            if let Some(error) = error {
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

/// The client span of one upstream attempt.
pub struct AttemptSpan {
    span: SdkSpan,
}

impl AttemptSpan {
    /// Writes `traceparent` (and `tracestate`) of this attempt into the upstream request,
    /// replacing what the client sent. The span id is this attempt's, the sampled flag the
    /// request's: an unsampled request passes `-00` on.
    pub fn inject(&self, req: &mut RequestHeader) {
        let sc = self.span.span_context();
        let Some(v) = traceparent(sc) else {
            return;
        };
        let _ = req.insert_header("traceparent", v);
        let state = sc.trace_state().header();
        if state.is_empty() {
            // "No tracestate": the client's must not go on beside our traceparent.
            if req.headers.contains_key(TRACESTATE) {
                req.remove_header(&TRACESTATE);
            }
        } else {
            HeaderInjector(req).set("tracestate", state);
        }
    }

    /// Ends the span with the upstream's status, or the error that ended the attempt.
    pub fn finish(self, status: Option<u16>, error_type: Option<&str>) {
        let mut span = self.span;
        if span.is_recording() {
            if let Some(status) = status {
                span.set_attribute(KeyValue::new(
                    semconv::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(status),
                ));
            }
            // For a client span a 4xx is an error too: the call did not do what was asked.
            let error = error_type
                .map(str::to_string)
                .or_else(|| status.filter(|s| *s >= 400).map(|s| s.to_string()));
            if let Some(error) = error {
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

/// `http.request.method` of a method outside the known list, which would otherwise let clients
/// mint unbounded span names.
const OTHER_METHOD: &str = "_OTHER";

/// The span-name method and the `http.request.method` value of a request method.
fn method_label(method: &http::Method) -> (&'static str, &'static str) {
    const KNOWN: [&str; 10] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    ];
    match KNOWN.iter().find(|m| **m == method.as_str()) {
        Some(m) => (m, m),
        None => ("HTTP", OTHER_METHOD),
    }
}

fn method_attr_of(name: &'static str) -> &'static str {
    if name == "HTTP" {
        OTHER_METHOD
    } else {
        name
    }
}

/// Splits `host:port`, `[v6]:port`, `host` or a bare IPv6 address; the host comes back without
/// brackets, as `server.address` wants it.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (s, None),
        },
        _ => (s, None),
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut RequestHeader);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty tracestate means "none": the client's must not go on beside our traceparent.
        if value.is_empty() {
            self.0.remove_header(key);
            return;
        }
        // Values are hex digits and a tracestate that already parsed as a header; the owned
        // key keeps pingora's header-case bookkeeping simple.
        let _ = self.0.insert_header(key.to_string(), value);
    }
}

/// The `traceparent` value of a span context (`None` for an invalid one).
fn traceparent(sc: &opentelemetry::trace::SpanContext) -> Option<http::HeaderValue> {
    if !sc.is_valid() {
        return None;
    }
    // Written by hand rather than through `TraceContextPropagator`, which formats the ids
    // with `format!` and hands over owned header names: ~5k instructions of every traced
    // request (BENCHMARKS.md, scenario b). Same bytes: `00-{trace}-{span}-{flags}`.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'-'; 55];
    buf[0] = b'0';
    buf[1] = b'0';
    let flags = [(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()];
    let parts: [(&[u8], usize); 3] = [
        (&sc.trace_id().to_bytes(), 3),
        (&sc.span_id().to_bytes(), 36),
        (&flags, 53),
    ];
    for (bytes, at) in parts {
        for (i, b) in bytes.iter().enumerate() {
            buf[at + 2 * i] = HEX[usize::from(b >> 4)];
            buf[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    }
    http::HeaderValue::from_bytes(&buf).ok()
}

/// The producer span of one published message (messaging semantic conventions), a child of
/// the request's span; its context goes into the message's headers so that a consumer
/// continues the trace.
pub struct MessagingSpan(SdkSpan);

impl MessagingSpan {
    /// Starts `send {destination}` when the request is traced and sampled.
    pub fn start(
        parent: Option<&tollgate_plugin_api::TraceParent>,
        system: &'static str,
        destination: &str,
    ) -> Option<Self> {
        let tracer = pipeline::tracer()?;
        let cx = parent?.get::<Context>()?;
        let span = tracer
            .span_builder(format!("send {destination}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", system),
                KeyValue::new("messaging.destination.name", destination.to_owned()),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "send"),
            ])
            .start_with_context(&tracer, cx);
        span.is_recording().then_some(Self(span))
    }

    /// Starts `receive {destination}` for a message handed to a subscriber, continuing the
    /// trace its headers carry (`traceparent`, `tracestate`: a producer's span); `None` when
    /// tracing is off, the message carries no context, or its trace is not sampled.
    pub fn receive(
        headers: &[(String, bytes::Bytes)],
        system: &'static str,
        destination: &str,
    ) -> Option<Self> {
        let tracer = pipeline::tracer()?;
        let mut carried = http::HeaderMap::new();
        for (name, value) in headers {
            let name = match name.as_str() {
                "traceparent" => TRACEPARENT,
                "tracestate" => TRACESTATE,
                _ => continue,
            };
            if let Ok(v) = http::HeaderValue::from_bytes(value) {
                carried.insert(name, v);
            }
        }
        if !carried.contains_key(TRACEPARENT) {
            return None;
        }
        let parent = TraceContextPropagator::new()
            .extract_with_context(&Context::new(), &HeaderExtractor(&carried));
        let span = tracer
            .span_builder(format!("receive {destination}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", system),
                KeyValue::new("messaging.destination.name", destination.to_owned()),
                KeyValue::new("messaging.operation.type", "receive"),
                KeyValue::new("messaging.operation.name", "receive"),
            ])
            .start_with_context(&tracer, &parent);
        span.is_recording().then_some(Self(span))
    }

    /// `traceparent` and `tracestate` for the message's headers.
    pub fn context_headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let sc = self.0.span_context();
        let mut out = Vec::with_capacity(2);
        if let Some(v) = traceparent(sc) {
            out.push((TRACEPARENT, v));
        }
        let state = sc.trace_state().header();
        if let Ok(v) = http::HeaderValue::from_str(&state) {
            if !state.is_empty() {
                out.push((TRACESTATE, v));
            }
        }
        out
    }

    /// Ends the span; `error` is the error code when the message was not published.
    pub fn finish(mut self, error: Option<&str>, message_id: Option<String>) {
        if let Some(id) = message_id {
            self.0
                .set_attribute(KeyValue::new("messaging.message.id", id));
        }
        if let Some(error) = error {
            self.0
                .set_attribute(KeyValue::new(semconv::ERROR_TYPE, error.to_string()));
            self.0.set_status(Status::error(""));
        }
        self.0.end();
    }
}

// The proxy keeps both in its per-request context, which pingora moves between threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RequestSpan>();
    assert_send_sync::<AttemptSpan>();
};

/// Makes the plugins' I/O spans (`tollgate_plugin_api::IoSpan`) with the current pipeline.
struct PluginSpans;

/// Lets plugins trace their I/O; called once at start-up.
pub fn install_plugin_spans() {
    tollgate_plugin_api::trace::install_span_sink(Box::new(PluginSpans));
}

impl tollgate_plugin_api::trace::SpanSink for PluginSpans {
    fn start(
        &self,
        parent: Option<&tollgate_plugin_api::TraceParent>,
        name: &str,
        attributes: Vec<(&'static str, String)>,
    ) -> Option<Box<dyn tollgate_plugin_api::trace::ActiveSpan>> {
        let tracer = pipeline::tracer()?;
        let root = Context::new();
        let cx = match parent {
            Some(p) => p.get::<Context>()?,
            None => &root,
        };
        let span = tracer
            .span_builder(name.to_string())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)))
            .start_with_context(&tracer, cx);
        span.is_recording()
            .then(|| Box::new(PluginSpan(span)) as Box<dyn tollgate_plugin_api::trace::ActiveSpan>)
    }
}

/// A plugin's I/O span; the SDK span ends (and is queued for export) when this is dropped.
struct PluginSpan(SdkSpan);

impl tollgate_plugin_api::trace::ActiveSpan for PluginSpan {
    fn set_attribute(&mut self, key: &'static str, value: String) {
        self.0.set_attribute(KeyValue::new(key, value));
    }

    fn set_int(&mut self, key: &'static str, value: i64) {
        self.0.set_attribute(KeyValue::new(key, value));
    }

    fn set_error(&mut self, error_type: &str, message: &str) {
        self.0
            .set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_string()));
        self.0.set_status(Status::error(message.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split_for_every_address_form() {
        assert_eq!(
            split_host_port("api.example.com:8443"),
            ("api.example.com", Some(8443))
        );
        assert_eq!(
            split_host_port("api.example.com"),
            ("api.example.com", None)
        );
        assert_eq!(split_host_port("10.0.0.7:8080"), ("10.0.0.7", Some(8080)));
        assert_eq!(split_host_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("host:notaport"), ("host:notaport", None));
    }

    #[test]
    fn unknown_methods_are_folded_into_other() {
        assert_eq!(method_label(&http::Method::GET), ("GET", "GET"));
        let odd = http::Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_label(&odd), ("HTTP", "_OTHER"));
        assert_eq!(method_attr_of("HTTP"), "_OTHER");
    }

    #[test]
    fn with_tracing_off_no_span_is_started() {
        // Nothing in this test binary initialises the pipeline.
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(RequestSpan::start(&req, None, None, "1.1").is_none());
    }
}
