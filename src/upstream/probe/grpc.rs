//! The gRPC health check: one `grpc.health.v1.Health/Check` call, its messages written with
//! prost, its framing and status read with the gRPC engine's own (`crate::grpc`).

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use std::net::SocketAddr;

use super::{build_request, exchange, ProbeError, BODY_LIMIT};
use crate::grpc::framing::{self, FrameDecoder, HEADER_LEN};
use crate::grpc::GrpcStatus;

/// Path of the standard gRPC health check method.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Longest server-supplied `grpc-message` kept in a reason; reasons end up in logs and the admin
/// view, and the upstream decides what it sends.
const MAX_MESSAGE_CHARS: usize = 200;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    /// The service asked about; empty for the whole server.
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// A `ServingStatus`; values the enum does not list are kept as numbers.
    #[prost(enumeration = "ServingStatus", tag = "1")]
    status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// The name as the .proto file spells it.
    fn name(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Serving => "SERVING",
            Self::NotServing => "NOT_SERVING",
            Self::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

/// One `grpc.health.v1.Health/Check` call over h2c; healthy only when the answer is SERVING.
pub(super) async fn check(
    target: SocketAddr,
    service: &str,
    authority: Option<&str>,
) -> Result<(), ProbeError> {
    let authority = authority.map_or_else(|| target.to_string(), str::to_string);
    let message = HealthCheckRequest {
        service: service.to_string(),
    }
    .encode_to_vec();
    let mut body = BytesMut::new();
    framing::encode(0, &message, &mut body);
    let mut request = build_request(
        Method::POST,
        GRPC_HEALTH_CHECK,
        &authority,
        true,
        body.freeze(),
    )?;
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    // Required by gRPC: it tells proxies in between that the client understands trailers,
    // which is where the call's status comes.
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    exchange(target, true, request, read_response).await
}

/// Judges a Health/Check response: the gRPC status (from the headers of a trailers-only
/// response, else the trailers), then the one message's serving status.
async fn read_response(response: Response<Incoming>) -> Result<(), ProbeError> {
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(ProbeError::NotGrpcStatus(parts.status.as_u16()));
    }
    // A trailers-only response (how servers send most errors) has its status here and no body.
    let in_headers = call_status(&parts.headers).transpose()?.is_some();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/grpc") {
        return Err(ProbeError::NotGrpcContentType(content_type.to_string()));
    }
    let (data, trailers) = read_body(body).await?;
    match trailers.as_ref().and_then(call_status) {
        Some(result) => result?,
        None if in_headers => {}
        None => return Err(ProbeError::NoGrpcStatus),
    }
    let response =
        HealthCheckResponse::decode(unary_message(&data)?).map_err(ProbeError::Decode)?;
    match ServingStatus::try_from(response.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(ProbeError::NotServing(other.name().to_string())),
        Err(_) => Err(ProbeError::NotServing(response.status.to_string())),
    }
}

/// Collects the data (at most `BODY_LIMIT`) and trailers of a gRPC response.
async fn read_body(mut body: Incoming) -> Result<(BytesMut, Option<HeaderMap>), ProbeError> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ProbeError::GrpcBody)?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > BODY_LIMIT {
                    return Err(ProbeError::ResponseTooLarge);
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
fn call_status(headers: &HeaderMap) -> Option<Result<(), ProbeError>> {
    let value = headers.get("grpc-status")?;
    let Some(status) = GrpcStatus::from_headers(headers) else {
        return Some(Err(ProbeError::InvalidGrpcStatus(value.clone())));
    };
    if status.code == crate::grpc::code::OK {
        return Some(Ok(()));
    }
    Some(Err(ProbeError::GrpcStatus {
        code: status.code,
        message: status.message.chars().take(MAX_MESSAGE_CHARS).collect(),
    }))
}

/// The single message of a unary gRPC response body.
fn unary_message(data: &[u8]) -> Result<Bytes, ProbeError> {
    if data.is_empty() {
        return Err(ProbeError::NoMessage);
    }
    if data.len() < HEADER_LEN {
        return Err(ProbeError::TruncatedFrameHeader);
    }
    // The body is already bounded by `BODY_LIMIT`, so a frame declaring more cannot be whole.
    let mut frames = FrameDecoder::new(BODY_LIMIT);
    frames.push(data);
    let truncated = |len| ProbeError::TruncatedMessage {
        got: data.len() - HEADER_LEN,
        len,
    };
    let frame = match frames.next_frame() {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(truncated(frames.declared_len().unwrap_or_default())),
        Err(framing::FrameError::TooLarge { len, .. }) => return Err(truncated(len)),
        Err(framing::FrameError::Truncated) => return Err(ProbeError::TruncatedFrameHeader),
    };
    match frame.flags {
        0 => {}
        // We send no grpc-accept-encoding, so a compressed answer breaks the protocol.
        framing::COMPRESSED => return Err(ProbeError::Compressed),
        other => return Err(ProbeError::BadFrameFlag(other)),
    }
    if frames.buffered() > 0 {
        return Err(ProbeError::ExtraMessages);
    }
    Ok(frame.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        framing::encode(0, message, &mut out);
        out.to_vec()
    }

    fn status_of(message: &[u8]) -> Result<i32, prost::DecodeError> {
        HealthCheckResponse::decode(message).map(|r| r.status)
    }

    #[test]
    fn health_request_is_field_one_string() {
        let encode = |service: &str| {
            HealthCheckRequest {
                service: service.to_string(),
            }
            .encode_to_vec()
        };
        // proto3 leaves the default (empty) field out: the whole-server check is empty.
        assert_eq!(encode(""), Vec::<u8>::new());
        assert_eq!(encode("ab"), [0x0a, 0x02, b'a', b'b']);
        let encoded = encode(&"s".repeat(200));
        assert_eq!(&encoded[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(encoded.len(), 3 + 200);
    }

    #[test]
    fn health_response_status_is_decoded() {
        assert_eq!(status_of(&[0x08, 0x01]).unwrap(), 1);
        assert_eq!(status_of(&[0x08, 0x03]).unwrap(), 3);
        // proto3 omits the default: an empty message is UNKNOWN.
        assert_eq!(status_of(&[]).unwrap(), 0);
        // The last occurrence wins; unknown fields are skipped.
        assert_eq!(status_of(&[0x08, 0x02, 0x08, 0x01]).unwrap(), 1);
        assert_eq!(status_of(&[0x10, 0x96, 0x01, 0x08, 0x01]).unwrap(), 1);
        // A truncated varint and a status of the wrong wire type are errors.
        assert!(status_of(&[0x08, 0x80]).is_err());
        assert!(status_of(&[0x0a, 0x01, 0x01]).is_err());
    }

    #[test]
    fn unary_message_is_the_single_frame() {
        assert_eq!(
            &unary_message(&framed(&[0x08, 0x01])).unwrap()[..],
            &[0x08, 0x01]
        );
        assert_eq!(&unary_message(&[0, 0, 0, 0, 0]).unwrap()[..], &[] as &[u8]);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let reason = |data: &[u8]| unary_message(data).unwrap_err().to_string();
        assert_eq!(reason(&[]), "gRPC response has no message");
        assert_eq!(reason(&[0, 0, 0]), "truncated gRPC frame header");
        assert_eq!(
            reason(&[0, 0, 0, 0, 2, 0x08]),
            "truncated gRPC message: 1 of 2 bytes"
        );
        assert_eq!(
            reason(&[0, 0xff, 0xff, 0xff, 0xff, 0x08]),
            "truncated gRPC message: 1 of 4294967295 bytes"
        );
        assert_eq!(
            reason(&[1, 0, 0, 0, 0]),
            "gRPC response is compressed, which was not offered"
        );
        assert_eq!(reason(&[7, 0, 0, 0, 0]), "bad gRPC frame flag 7");
        assert_eq!(
            reason(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            "unary gRPC response has more than one message"
        );
    }

    #[test]
    fn grpc_status_comes_with_its_message() {
        let reason =
            |headers: &HeaderMap| call_status(headers).map(|r| r.map_err(|e| e.to_string()));
        let mut headers = HeaderMap::new();
        assert_eq!(reason(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(reason(&headers), Some(Ok(())));
        headers.insert("grpc-status", HeaderValue::from_static("12"));
        assert_eq!(
            reason(&headers),
            Some(Err("grpc-status 12: unimplemented".to_string()))
        );
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("service%20not%20registered"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(
            reason(&headers),
            Some(Err("grpc-status 5: service not registered".to_string()))
        );
        headers.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(
            reason(&headers),
            Some(Err("invalid grpc-status \"x\"".to_string()))
        );
    }

    #[test]
    fn long_server_messages_are_cut() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        let long = "x".repeat(500);
        headers.insert("grpc-message", HeaderValue::from_str(&long).unwrap());
        let Some(Err(ProbeError::GrpcStatus { message, .. })) = call_status(&headers) else {
            panic!("expected a status error");
        };
        assert_eq!(message.len(), MAX_MESSAGE_CHARS);
    }
}
