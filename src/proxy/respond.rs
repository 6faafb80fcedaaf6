//! The one place where the gateway makes responses itself: errors, and the answers of plugins.
//!
//! An error is rendered in the shape its client reads (`ErrorWire`): the JSON error shape for
//! HTTP clients; for gRPC clients (any `application/grpc*` content type) a *trailers-only*
//! response — HTTP 200 with `grpc-status` and `grpc-message` in the one header block, which on
//! HTTP/2 goes out as a single HEADERS frame with END_STREAM. Every such response made inside
//! the request pipeline goes through the plugins' response phase too.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use pingora_core::protocols::http::HttpTask;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tollgate_plugin_api::{ErrorBody, Response};

use crate::error::GatewayError;

use super::context::RequestState;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const EXPOSE_HEADERS: HeaderName = HeaderName::from_static("access-control-expose-headers");

/// How a client expects the gateway's own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorWire {
    /// The JSON error shape with the error's HTTP status.
    Json,
    /// Native gRPC: a trailers-only response.
    Grpc,
    /// gRPC-Web: a trailers-only response (status in the headers, which gRPC-Web clients read
    /// when the body has no trailer frame); `text` for `application/grpc-web-text`.
    GrpcWeb { text: bool },
}

impl ErrorWire {
    /// The wire a request's headers ask for.
    pub fn of(headers: &HeaderMap) -> Self {
        headers
            .get(CONTENT_TYPE)
            .map_or(Self::Json, |ct| Self::of_content_type(ct.as_bytes()))
    }

    /// The wire a request's `content-type` value asks for.
    pub fn of_content_type(ct: &[u8]) -> Self {
        let ct = trim_ascii(ct);
        let starts = |prefix: &[u8]| {
            ct.len() >= prefix.len() && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        if starts(b"application/grpc-web-text") {
            Self::GrpcWeb { text: true }
        } else if starts(b"application/grpc-web") {
            Self::GrpcWeb { text: false }
        } else if starts(b"application/grpc") {
            Self::Grpc
        } else {
            Self::Json
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// An error rendered for one client: the response the client gets and its body.
pub struct Rendered {
    /// The HTTP status on the wire (200 for gRPC, whose status travels in `grpc-status`).
    pub status: StatusCode,
    /// Headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body (empty for gRPC).
    pub body: Bytes,
}

/// Renders `err` for a client that reads `wire`.
pub fn render(err: &GatewayError, wire: ErrorWire, request_id: &str) -> Rendered {
    let mut headers = err.headers().to_vec();
    let message = err.to_string();
    match wire {
        ErrorWire::Json => {
            headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
            let status = err.status();
            let body = ErrorBody::new(status.as_u16(), err.code(), &message, request_id).to_json();
            Rendered {
                status,
                headers,
                body: Bytes::from(body),
            }
        }
        ErrorWire::Grpc | ErrorWire::GrpcWeb { .. } => {
            let message = format!("{message} ({})", err.code());
            let content_type = match wire {
                ErrorWire::GrpcWeb { text: true } => "application/grpc-web-text+proto",
                ErrorWire::GrpcWeb { text: false } => "application/grpc-web+proto",
                _ => "application/grpc",
            };
            headers.push((CONTENT_TYPE, HeaderValue::from_static(content_type)));
            headers.push((GRPC_STATUS, HeaderValue::from(err.grpc_code())));
            if let Ok(v) = HeaderValue::from_str(&crate::grpc::encode_message(&message)) {
                headers.push((GRPC_MESSAGE, v));
            }
            if matches!(wire, ErrorWire::GrpcWeb { .. }) {
                // Browsers hide response headers from scripts unless exposed.
                headers.push((
                    EXPOSE_HEADERS,
                    HeaderValue::from_static("grpc-status, grpc-message"),
                ));
            }
            Rendered {
                status: StatusCode::OK,
                headers,
                body: Bytes::new(),
            }
        }
    }
}

/// Sends `err` in the shape the client reads. Returns the gateway's status of the error (the
/// HTTP status a JSON client would have seen; also for gRPC, where the wire says 200), or 0 when
/// the client could not be written to.
pub async fn send_error(session: &mut Session, st: &mut RequestState, err: &GatewayError) -> u16 {
    st.gateway_code = Some(err.code());
    let wire = ErrorWire::of(&session.req_header().headers);
    let rendered = render(err, wire, &st.ctx.request_id);
    let resp = Response {
        status: rendered.status,
        headers: rendered.headers,
        body: rendered.body,
    };
    if send(session, st, resp).await == 0 {
        return 0;
    }
    // Metrics and logs keep the gateway's decision, whatever status the wire carried.
    st.gateway_status = err.status().as_u16();
    st.gateway_status
}

/// Ends a gRPC response that had started when the call failed (the upstream broke off
/// mid-stream) with trailers carrying the error's gRPC status: over HTTP/2 a client then reads a
/// status (e.g. UNAVAILABLE) instead of a stream reset (CANCELLED). Other responses are left to
/// pingora, which cuts them off, since a half-sent body cannot be completed.
pub async fn end_grpc_stream(session: &mut Session, err: &GatewayError) {
    if session.req_header().version != http::Version::HTTP_2
        || ErrorWire::of(&session.req_header().headers) != ErrorWire::Grpc
    {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS, HeaderValue::from(err.grpc_code()));
    let message = format!("{err} ({})", err.code());
    if let Ok(v) = HeaderValue::from_str(&crate::grpc::encode_message(&message)) {
        trailers.insert(GRPC_MESSAGE, v);
    }
    let _ = session
        .write_response_tasks(vec![HttpTask::Trailer(Some(Box::new(trailers)))])
        .await;
}

/// Sends a response made by a plugin or the gateway. Returns the status sent (0 if the client
/// could not be written to).
///
/// Header and body go to pingora as one list of tasks: that is the only way to end an HTTP/2
/// stream with the HEADERS frame itself (a bodiless answer, e.g. gRPC trailers-only), which
/// gRPC clients require; on HTTP/1.1 it also writes head and body with one write.
pub async fn send(session: &mut Session, st: &mut RequestState, resp: Response) -> u16 {
    let status = resp.status.as_u16();
    let Ok(mut header) = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2)) else {
        return 0;
    };
    for (name, value) in resp.headers {
        // append, not insert: a plugin may send several values of one header.
        let _ = header.append_header(name, value);
    }
    let _ = header.insert_header(CONTENT_LENGTH, resp.body.len());
    super::chain::on_response(st, &mut header);
    let head_only = session.req_header().method == http::Method::HEAD;
    let tasks = if resp.body.is_empty() || head_only {
        vec![HttpTask::Header(Box::new(header), true)]
    } else {
        vec![
            HttpTask::Header(Box::new(header), false),
            HttpTask::Body(Some(resp.body), true),
        ]
    };
    if session.write_response_tasks(tasks).await.is_err() {
        return 0;
    }
    st.gateway_status = status;
    status
}
