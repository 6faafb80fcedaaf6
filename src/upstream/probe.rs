//! Active health-check probes: one check of one target, answering healthy or a short reason a
//! person can act on. When to check, thresholds, and what a result does to a target belong to
//! `tasks` and `health`.
//!
//! Every probe opens a fresh connection on purpose: a pooled one would keep a target looking
//! healthy after it stopped accepting new connections, which is exactly what requests would hit.
//! Nothing is spawned and nothing outlives the call: the connection is driven inside the probe's
//! own future, so the overall timeout dropping that future closes the socket too.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// What a check does is config data, defined with the model.
pub use crate::config::ProbeKind;

/// Sent on every HTTP and gRPC probe so upstream logs can tell checks from traffic.
const USER_AGENT: &str = "tollgate-health-check";

/// Most of a response body a probe reads. Health endpoints answer with little; a probe pointed at
/// a large page must not buffer or wait for all of it.
const BODY_LIMIT: usize = 64 * 1024;

/// Path of the standard gRPC health check method.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Longest server-supplied `grpc-message` kept in a reason; reasons end up in logs and the admin
/// view, and the upstream decides what it sends.
const MAX_MESSAGE_CHARS: usize = 200;

/// Runs one probe against `target` with an overall `timeout`. Ok(()) = healthy; Err = a short
/// human-readable reason ("status 503 not in 200-299", "connect refused", "timed out after 1s",
/// "grpc status NOT_SERVING", "grpc-status 12: unimplemented" ...).
pub async fn probe(kind: &ProbeKind, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let check = async {
        match kind {
            ProbeKind::Tcp => connect(target).await.map(drop),
            ProbeKind::Http {
                path,
                method,
                host,
                expected,
                h2c,
            } => http_check(target, path, method, host.as_deref(), expected, *h2c).await,
            ProbeKind::Grpc { service, authority } => {
                grpc_check(target, service, authority.as_deref()).await
            }
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Opens the probe's own TCP connection.
async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(target)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => "connect refused".to_string(),
            _ => format!("connect failed: {e}"),
        })
}

/// One HTTP request; healthy when the status is expected and the body (up to the limit) arrives.
async fn http_check(
    target: SocketAddr,
    path: &str,
    method: &Method,
    host: Option<&str>,
    expected: &[(u16, u16)],
    h2c: bool,
) -> Result<(), String> {
    let authority = host.map_or_else(|| target.to_string(), str::to_string);
    let request = build_request(method.clone(), path, &authority, h2c, Bytes::new())?;
    exchange(target, h2c, request, |response| async move {
        let status = response.status().as_u16();
        if !status_expected(status, expected) {
            return Err(format!(
                "status {status} not in {}",
                describe_ranges(expected)
            ));
        }
        drain(response.into_body()).await
    })
    .await
}

/// One `grpc.health.v1.Health/Check` call over h2c; healthy only when the answer is SERVING.
async fn grpc_check(
    target: SocketAddr,
    service: &str,
    authority: Option<&str>,
) -> Result<(), String> {
    let authority = authority.map_or_else(|| target.to_string(), str::to_string);
    let body = grpc_frame(&encode_health_request(service))?;
    let mut request = build_request(Method::POST, GRPC_HEALTH_CHECK, &authority, true, body)?;
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    // Required by gRPC: it tells proxies in between that the client understands trailers,
    // which is where the call's status comes.
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    exchange(target, true, request, read_grpc_response).await
}

/// Builds a probe request. HTTP/1.1 gets an origin-form URI and a `Host` header; HTTP/2 carries
/// the authority in the URI, which becomes `:authority` (h2 rejects a request without one).
fn build_request(
    method: Method,
    path: &str,
    authority: &str,
    h2: bool,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let uri: Uri = if h2 {
        format!("http://{authority}{path}").parse()
    } else {
        path.parse()
    }
    .map_err(|_| format!("invalid request target `{authority}` `{path}`"))?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, USER_AGENT)
        .body(Full::new(body))
        .map_err(|e| format!("invalid request: {e}"))?;
    if !h2 {
        let host =
            HeaderValue::from_str(authority).map_err(|_| format!("invalid host `{authority}`"))?;
        request.headers_mut().insert(header::HOST, host);
    }
    Ok(request)
}

/// Sends `request` over a fresh connection to `target` and returns what `read` makes of the
/// response. `read` runs while the connection is still being driven, so it can read the body.
async fn exchange<T, F, Fut>(
    target: SocketAddr,
    h2: bool,
    request: Request<Full<Bytes>>,
    read: F,
) -> Result<T, String>
where
    F: FnOnce(Response<Incoming>) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let io = TokioIo::new(connect(target).await?);
    if h2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("http/2 handshake failed: {}", error_chain(&e)))?;
        drive(conn, async move {
            let response = sender.send_request(request).await.map_err(request_failed)?;
            read(response).await
        })
        .await
    } else {
        let (mut sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| format!("http/1.1 handshake failed: {}", error_chain(&e)))?;
        drive(conn, async move {
            let response = sender.send_request(request).await.map_err(request_failed)?;
            read(response).await
        })
        .await
    }
}

fn request_failed(e: hyper::Error) -> String {
    format!("request failed: {}", error_chain(&e))
}

/// `e` with its sources: hyper's own message is often just "connection error", and the cause
/// (a GOAWAY reason, a reset) is what tells a person what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their cause in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs `exchange` while driving `conn`, the connection it talks over.
async fn drive<T>(
    conn: impl Future<Output = hyper::Result<()>>,
    exchange: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let mut exchange = pin!(exchange);
    tokio::select! {
        result = &mut exchange => result,
        // The connection can end first, e.g. a server that closes right after its response.
        // What was received is still readable, and a request cut short fails on its own, so
        // the exchange decides the result either way.
        _ = conn => exchange.await,
    }
}

/// Reads and drops up to `BODY_LIMIT` of a body, so the response is complete before the probe
/// closes the connection, without letting a large page cost more than that.
async fn drain(mut body: Incoming) -> Result<(), String> {
    let mut read = 0;
    while read < BODY_LIMIT {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(format!("reading body: {}", error_chain(&e))),
        }
    }
    Ok(())
}

fn status_expected(status: u16, expected: &[(u16, u16)]) -> bool {
    expected
        .iter()
        .any(|&(low, high)| (low..=high).contains(&status))
}

/// "200-299, 404" for error messages.
fn describe_ranges(expected: &[(u16, u16)]) -> String {
    if expected.is_empty() {
        return "(no expected statuses)".to_string();
    }
    expected
        .iter()
        .map(|&(low, high)| {
            if low == high {
                low.to_string()
            } else {
                format!("{low}-{high}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Judges a Health/Check response: the gRPC status (from the headers of a trailers-only
/// response, else the trailers), then the one message's serving status.
async fn read_grpc_response(response: Response<Incoming>) -> Result<(), String> {
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(format!("http status {} (not gRPC)", parts.status.as_u16()));
    }
    // A trailers-only response (how servers send most errors) has its status here and no body.
    let in_headers = grpc_status(&parts.headers);
    if let Some(result) = &in_headers {
        result.clone()?;
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/grpc") {
        return Err(format!("content-type `{content_type}` is not gRPC"));
    }
    let (data, trailers) = read_grpc_body(body).await?;
    match trailers.as_ref().and_then(grpc_status) {
        Some(result) => result?,
        None if in_headers.is_some() => {}
        None => return Err("response has no grpc-status".to_string()),
    }
    let message = grpc_unframe(&data)?;
    match decode_health_response(message)? {
        1 => Ok(()),
        status => Err(format!("grpc status {}", serving_status_name(status))),
    }
}

/// Collects the data (at most `BODY_LIMIT`) and trailers of a gRPC response.
async fn read_grpc_body(mut body: Incoming) -> Result<(BytesMut, Option<HeaderMap>), String> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading response: {}", error_chain(&e)))?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > BODY_LIMIT {
                    return Err("response larger than 64 KiB".to_string());
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok((data, trailers))
}

/// The call's outcome from `grpc-status` / `grpc-message`, when `headers` carry one.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), String>> {
    let value = headers.get("grpc-status")?;
    let Some(code) = value.to_str().ok().and_then(|v| v.parse::<u32>().ok()) else {
        return Some(Err(format!("invalid grpc-status {value:?}")));
    };
    if code == 0 {
        return Some(Ok(()));
    }
    // grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec).
    let message: String = headers
        .get("grpc-message")
        .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy())
        .unwrap_or_default()
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .collect();
    let message = if message.is_empty() {
        grpc_code_name(code).to_string()
    } else {
        message
    };
    Some(Err(format!("grpc-status {code}: {message}")))
}

/// Names of the gRPC status codes, for reasons when the server sent no message.
fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "ok",
        1 => "cancelled",
        2 => "unknown",
        3 => "invalid argument",
        4 => "deadline exceeded",
        5 => "not found",
        6 => "already exists",
        7 => "permission denied",
        8 => "resource exhausted",
        9 => "failed precondition",
        10 => "aborted",
        11 => "out of range",
        12 => "unimplemented",
        13 => "internal",
        14 => "unavailable",
        15 => "data loss",
        16 => "unauthenticated",
        _ => "unrecognised code",
    }
}

/// Names of `grpc.health.v1.HealthCheckResponse.ServingStatus` values.
fn serving_status_name(status: i32) -> String {
    match status {
        0 => "UNKNOWN".to_string(),
        1 => "SERVING".to_string(),
        2 => "NOT_SERVING".to_string(),
        3 => "SERVICE_UNKNOWN".to_string(),
        other => other.to_string(),
    }
}

/// Appends `value` as a protobuf base-128 varint.
fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a protobuf varint from the start of `buf`: the value and how many bytes it took.
fn decode_varint(buf: &[u8]) -> Result<(u64, usize), String> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        // The 10th byte holds bit 63 only; anything more does not fit in 64 bits.
        if i == 9 && byte > 1 {
            return Err("protobuf varint overflows 64 bits".to_string());
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() >= 10 {
        Err("protobuf varint longer than 10 bytes".to_string())
    } else {
        Err("truncated protobuf varint".to_string())
    }
}

/// `grpc.health.v1.HealthCheckRequest { string service = 1; }`, encoded. proto3 leaves a default
/// (empty) field out, so the whole-server check is an empty message.
fn encode_health_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        out.push(0x0a); // field 1, wire type 2 (length-delimited)
        encode_varint(service.len() as u64, &mut out);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// Wraps one message in gRPC's length-prefixed framing: an uncompressed flag (0) and a 4-byte
/// big-endian length.
fn grpc_frame(message: &[u8]) -> Result<Bytes, String> {
    let len = u32::try_from(message.len()).map_err(|_| "gRPC message too large".to_string())?;
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(len);
    out.put_slice(message);
    Ok(out.freeze())
}

/// The single message of a unary gRPC response body.
fn grpc_unframe(data: &[u8]) -> Result<&[u8], String> {
    if data.is_empty() {
        return Err("gRPC response has no message".to_string());
    }
    let Some((&[flag, a, b, c, d], rest)) = data.split_first_chunk::<5>() else {
        return Err("truncated gRPC frame header".to_string());
    };
    match flag {
        0 => {}
        // We send no grpc-accept-encoding, so a compressed answer breaks the protocol.
        1 => return Err("gRPC response is compressed, which was not offered".to_string()),
        other => return Err(format!("bad gRPC frame flag {other}")),
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let Some((message, extra)) = rest.split_at_checked(len) else {
        return Err(format!(
            "truncated gRPC message: {} of {len} bytes",
            rest.len()
        ));
    };
    if !extra.is_empty() {
        return Err("unary gRPC response has more than one message".to_string());
    }
    Ok(message)
}

/// `grpc.health.v1.HealthCheckResponse { ServingStatus status = 1; }`: the status value.
/// Unknown fields are skipped, as protobuf requires; a missing status is proto3's default, 0
/// (UNKNOWN).
fn decode_health_response(mut buf: &[u8]) -> Result<i32, String> {
    let mut status = 0;
    while !buf.is_empty() {
        let (key, n) = decode_varint(buf)?;
        buf = advance(buf, n)?;
        let field = key >> 3;
        let wire_type = key & 7;
        if field == 0 {
            return Err("protobuf field number 0".to_string());
        }
        buf = match wire_type {
            0 => {
                let (value, n) = decode_varint(buf)?;
                if field == 1 {
                    // proto3 enums are int32 on the wire; truncating to 32 bits is how
                    // protobuf itself reads them (negative values are sign-extended).
                    status = value as i32;
                }
                advance(buf, n)?
            }
            _ if field == 1 => {
                return Err(format!(
                    "HealthCheckResponse.status has wire type {wire_type}, expected varint"
                ))
            }
            1 => advance(buf, 8)?,
            2 => {
                let (len, n) = decode_varint(buf)?;
                let len = usize::try_from(len)
                    .map_err(|_| "protobuf field length too large".to_string())?;
                advance(advance(buf, n)?, len)?
            }
            5 => advance(buf, 4)?,
            other => return Err(format!("unsupported protobuf wire type {other}")),
        };
    }
    Ok(status)
}

/// `buf` without its first `n` bytes, or an error when it is shorter.
fn advance(buf: &[u8], n: usize) -> Result<&[u8], String> {
    buf.get(n..)
        .ok_or_else(|| "truncated protobuf message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_varint(value, &mut out);
        out
    }

    #[test]
    fn varints_encode_as_protobuf_does() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(u64::MAX).len(), 10);
    }

    #[test]
    fn varints_round_trip() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let bytes = varint(value);
            assert_eq!(decode_varint(&bytes), Ok((value, bytes.len())), "{value}");
        }
    }

    #[test]
    fn varint_decode_stops_at_the_first_final_byte() {
        assert_eq!(decode_varint(&[0xac, 0x02, 0xff, 0xff]), Ok((300, 2)));
    }

    #[test]
    fn malformed_varints_are_errors() {
        assert!(decode_varint(&[]).is_err());
        assert!(decode_varint(&[0x80]).is_err());
        assert!(decode_varint(&[0xff, 0xff, 0xff]).is_err());
        // 10 continuation bytes: too long.
        assert!(decode_varint(&[0xff; 10]).is_err());
        assert!(decode_varint(&[0xff; 11]).is_err());
        // 10th byte with more than bit 63.
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert!(decode_varint(&too_big).is_err());
    }

    #[test]
    fn health_request_is_field_one_string() {
        assert_eq!(encode_health_request(""), Vec::<u8>::new());
        assert_eq!(encode_health_request("ab"), [0x0a, 0x02, b'a', b'b']);
        let long = "s".repeat(200);
        let encoded = encode_health_request(&long);
        assert_eq!(&encoded[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(encoded.len(), 3 + 200);
    }

    #[test]
    fn grpc_frames_are_flag_length_message() {
        assert_eq!(grpc_frame(&[]).unwrap().as_ref(), &[0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_frame(&[0x0a, 0x01, b'x']).unwrap().as_ref(),
            &[0, 0, 0, 0, 3, 0x0a, 0x01, b'x']
        );
    }

    #[test]
    fn unframe_returns_the_single_message() {
        let framed = grpc_frame(&[0x08, 0x01]).unwrap();
        assert_eq!(grpc_unframe(&framed), Ok(&[0x08, 0x01][..]));
        assert_eq!(grpc_unframe(&[0, 0, 0, 0, 0]), Ok(&[][..]));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(grpc_unframe(&[]).is_err());
        assert!(grpc_unframe(&[0, 0, 0]).is_err());
        // Declares 2 bytes, has 1.
        assert!(grpc_unframe(&[0, 0, 0, 0, 2, 0x08]).is_err());
        // Declares 4 GiB.
        assert!(grpc_unframe(&[0, 0xff, 0xff, 0xff, 0xff, 0x08]).is_err());
        // Compressed, or an unknown flag.
        assert!(grpc_unframe(&[1, 0, 0, 0, 0]).is_err());
        assert!(grpc_unframe(&[7, 0, 0, 0, 0]).is_err());
        // Two messages in a unary response.
        assert!(grpc_unframe(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn health_response_status_is_decoded() {
        assert_eq!(decode_health_response(&[0x08, 0x01]), Ok(1));
        assert_eq!(decode_health_response(&[0x08, 0x02]), Ok(2));
        assert_eq!(decode_health_response(&[0x08, 0x03]), Ok(3));
        // proto3 omits the default: an empty message is UNKNOWN.
        assert_eq!(decode_health_response(&[]), Ok(0));
        // The last occurrence wins.
        assert_eq!(decode_health_response(&[0x08, 0x02, 0x08, 0x01]), Ok(1));
        // A negative enum value is a sign-extended 10-byte varint.
        let mut negative = vec![0x08];
        encode_varint(-1i64 as u64, &mut negative);
        assert_eq!(decode_health_response(&negative), Ok(-1));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let message = [
            0x10, 0x96, 0x01, // field 2 varint
            0x19, 1, 2, 3, 4, 5, 6, 7, 8, // field 3 fixed64
            0x22, 0x02, b'h', b'i', // field 4 bytes
            0x2d, 1, 2, 3, 4, // field 5 fixed32
            0x08, 0x01, // status SERVING
        ];
        assert_eq!(decode_health_response(&message), Ok(1));
    }

    #[test]
    fn malformed_health_responses_are_errors() {
        // Key without a value.
        assert!(decode_health_response(&[0x08]).is_err());
        // Truncated key.
        assert!(decode_health_response(&[0x88]).is_err());
        // Status with the wrong wire type.
        assert!(decode_health_response(&[0x0a, 0x01, 0x01]).is_err());
        // Field number 0.
        assert!(decode_health_response(&[0x00, 0x01]).is_err());
        // Length-delimited field longer than the message.
        assert!(decode_health_response(&[0x22, 0x05, b'h']).is_err());
        // Huge declared length.
        let mut huge = vec![0x22];
        encode_varint(u64::MAX, &mut huge);
        assert!(decode_health_response(&huge).is_err());
        // Truncated fixed64 / fixed32.
        assert!(decode_health_response(&[0x19, 1, 2]).is_err());
        assert!(decode_health_response(&[0x2d, 1]).is_err());
        // Groups (wire types 3, 4) and invalid wire types.
        assert!(decode_health_response(&[0x1b]).is_err());
        assert!(decode_health_response(&[0x1c]).is_err());
        assert!(decode_health_response(&[0x1e]).is_err());
    }

    #[test]
    fn decoders_never_panic_on_short_garbage() {
        // Every byte string up to 3 bytes long, and some longer patterns.
        let mut inputs: Vec<Vec<u8>> = vec![vec![]];
        for a in 0..=255u8 {
            inputs.push(vec![a]);
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                inputs.push(vec![a, b]);
                inputs.push(vec![a, b, 0x80]);
                inputs.push(vec![0, 0, 0, a, b]);
            }
        }
        for input in &inputs {
            let _ = decode_varint(input);
            let _ = decode_health_response(input);
            let _ = grpc_unframe(input);
        }
    }

    #[test]
    fn status_ranges_are_inclusive() {
        let expected = [(200, 299), (404, 404)];
        assert!(status_expected(200, &expected));
        assert!(status_expected(299, &expected));
        assert!(status_expected(404, &expected));
        assert!(!status_expected(300, &expected));
        assert!(!status_expected(199, &expected));
        assert!(!status_expected(200, &[]));
        assert_eq!(describe_ranges(&expected), "200-299, 404");
    }

    #[test]
    fn grpc_status_comes_with_its_message() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers), Some(Ok(())));
        headers.insert("grpc-status", HeaderValue::from_static("12"));
        assert_eq!(
            grpc_status(&headers),
            Some(Err("grpc-status 12: unimplemented".to_string()))
        );
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("service%20not%20registered"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(
            grpc_status(&headers),
            Some(Err("grpc-status 5: service not registered".to_string()))
        );
        headers.insert("grpc-status", HeaderValue::from_static("x"));
        assert!(matches!(grpc_status(&headers), Some(Err(_))));
    }

    #[test]
    fn http1_requests_carry_host_and_h2_requests_an_authority() {
        let r =
            build_request(Method::GET, "/healthz?x=1", "api.test", false, Bytes::new()).unwrap();
        assert_eq!(r.uri(), "/healthz?x=1");
        assert_eq!(r.headers()[header::HOST], "api.test");
        assert_eq!(r.headers()[header::USER_AGENT], USER_AGENT);
        let r =
            build_request(Method::GET, "/healthz", "api.test:8080", true, Bytes::new()).unwrap();
        assert_eq!(r.uri(), "http://api.test:8080/healthz");
        assert!(r.headers().get(header::HOST).is_none());
        assert!(build_request(Method::GET, "no slash", "h", false, Bytes::new()).is_err());
        assert!(build_request(Method::GET, "/", "bad host", true, Bytes::new()).is_err());
    }
}
